//! `vm-guest`: what `cargo xtask vm-test` runs inside each kernel under qemu, right after the
//! guest's `/init` has mounted the pseudo filesystems and loaded the modules.
//!
//! It reports on stdout, one `VM ...` line per fact, which the host parses (see
//! `xtask/src/vm.rs`); everything else, the suites' own output included, goes to stderr, the
//! guest's console log:
//!
//! - every program of the real object loaded one by one: loaded with the instructions the
//!   verifier processed, or rejected with the verifier's last lines;
//! - every test binary under `/tests` run with `--test-threads=1`, each test's outcome;
//! - `Dataplane::attach` on veth pairs (the uplink and the bridge), once with each uplink hook
//!   (`xdp_uplink` with `tc_forward`, and `tc_uplink`), then frames each way to show that every
//!   attached program runs on its hook: ARP passes, a SYN to a published port is translated
//!   (and, with XDP, handed on by `tc_forward` through the metadata note), and the container's
//!   answer is translated back by `tc_reply`.

use std::{
    io::{self, BufRead as _, BufReader},
    mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    EbpfLoader,
    programs::{Program, ProgramError, XdpMode},
    util::KernelVersion,
};
use portmap_common::{Reason, names, programs};
use portmap_tests::packet;
use portmap_user::{
    dataplane::{Dataplane, EBPF_OBJECT, UplinkHook},
    netdev::Interface,
    plan::Plan,
    spec::Publish,
};

/// Only the initramfs that `cargo xtask vm-test` builds has this file: the veth pair below
/// must never be made in a real host's network namespace.
const GUEST_MARKER: &str = "/portmap-vm-guest";
/// Where the host puts the test binaries to run.
const SUITES: &str = "/tests";
/// Two veth pairs: the uplink and the LAN side it faces, the bridge and a container behind
/// it. Redirected packets leave through the far ends and never come back to a program.
const UPLINK: &str = "pm-up";
const LAN: &str = "pm-lan";
const BRIDGE: &str = "pm-br";
const CONTAINER_SIDE: &str = "pm-ctr";
/// The attach test's traffic; it never leaves the guest, which has no network card.
const PUBLISH: &str = "8080:80=172.17.0.2";
const HOST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 8080);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
const CONTAINER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(172, 17, 0, 2), 80);
/// Verifier lines shown for a rejected program: the error and the state that led to it.
const LOG_TAIL: usize = 25;

fn main() -> ExitCode {
    if !Path::new(GUEST_MARKER).exists() {
        eprintln!("vm-guest runs only inside `cargo xtask vm-test`'s virtual machines");
        return ExitCode::from(2);
    }
    println!("VM kernel {}", release());
    lift_memlock();
    let mut ok = load_each_program();
    ok &= run_suites();
    match attach() {
        Ok(attached) => ok &= attached,
        Err(error) => {
            println!("VM attach-error {}", one_line(&format!("{error:#}")));
            ok = false;
        }
    }
    println!("VM done {}", if ok { "ok" } else { "failed" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; the guest runs as root.
fn lift_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        eprintln!("vm-guest: setrlimit: {}", io::Error::last_os_error());
    }
}

/// Loads the embedded object's maps, then each program on its own, so that one rejection
/// does not hide the others' results (`Dataplane::load` stops at the first).
fn load_each_program() -> bool {
    let mut ebpf = match EbpfLoader::new().load(EBPF_OBJECT) {
        Ok(ebpf) => ebpf,
        Err(error) => {
            println!("VM maps failed {}", one_line(&format!("{error:#}")));
            return false;
        }
    };
    let mut ok = true;
    for name in names::ALL {
        if ebpf.map(name).is_none() {
            println!("VM maps missing {name}");
            ok = false;
        }
    }
    if ok {
        println!("VM maps ok");
    }
    for name in programs::ALL {
        let Some(program) = ebpf.program_mut(name) else {
            println!("VM load {name} rejected not in the object");
            ok = false;
            continue;
        };
        let loaded = match program {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            other => {
                println!("VM load {name} rejected type {:?}", other.prog_type());
                ok = false;
                continue;
            }
        };
        match loaded {
            Ok(()) => {
                // `verified_insns` is in bpf_prog_info from 5.16 on.
                let processed = program
                    .info()
                    .ok()
                    .and_then(|info| info.verified_instruction_count())
                    .map_or_else(|| "n/a".to_owned(), |n| n.to_string());
                println!("VM load {name} ok {processed}");
            }
            Err(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                ok = false;
                println!("VM load {name} rejected {io_error}");
                let log = verifier_log.to_string();
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    println!("VM log {name} {line}");
                }
            }
            Err(error) => {
                ok = false;
                println!("VM load {name} rejected {}", one_line(&error.to_string()));
            }
        }
    }
    ok
}

/// Runs every test binary under [`SUITES`], one test at a time, reporting each test.
fn run_suites() -> bool {
    let mut suites: Vec<_> = match std::fs::read_dir(SUITES) {
        Ok(dir) => dir.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(error) => {
            println!("VM suite-error reading {SUITES}: {error}");
            return false;
        }
    };
    suites.sort();
    let mut ok = true;
    for path in suites {
        ok &= run_suite(&path);
    }
    ok
}

fn run_suite(path: &Path) -> bool {
    let suite = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let child = Command::new(path)
        .arg("--test-threads=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            println!(
                "VM suite {suite} exit spawn-failed {}",
                one_line(&error.to_string())
            );
            return false;
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        eprintln!("{line}");
        // libtest: `test NAME ... ok|FAILED|ignored`
        if let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            println!("VM test {suite} {name} {}", outcome.trim());
        }
    }
    match child.wait() {
        Ok(status) => {
            let code = status
                .code()
                .map_or_else(|| format!("signal-{status}"), |c| c.to_string());
            println!("VM suite {suite} exit {code}");
            status.success()
        }
        Err(error) => {
            println!("VM suite {suite} exit wait-failed {error}");
            false
        }
    }
}

/// One way `portmap run` attaches: which programs, how, where, and what each must count.
struct Round {
    hook: UplinkHook,
    /// In `Dataplane::attach`'s order: (program, how, interface); the first failure stops it.
    order: Vec<(&'static str, &'static str, &'static str)>,
    /// Per program: a reason for the frame it passes, one for the frame it translates.
    expected: Vec<(&'static str, [Reason; 2])>,
}

/// The attach paths `portmap run` takes (XDP with `tc_forward`, and TC alone), each on veth
/// pairs standing in for the uplink and the bridge; then frames into each end that every
/// program must count: one it passes and one it translates. True when every program attached
/// and did both.
fn attach() -> anyhow::Result<bool> {
    veth_pair(UPLINK, LAN)?;
    veth_pair(BRIDGE, CONTAINER_SIDE)?;
    for name in [UPLINK, LAN, BRIDGE, CONTAINER_SIDE] {
        ip(&["link", "set", name, "up"])?;
    }
    // Dataplane::attach adds a clsact qdisc and attaches through netlink before 6.6, where
    // aya has no tcx.
    let tc = if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
        "netlink-clsact"
    } else {
        "tcx"
    };
    let reply = (
        programs::TC_REPLY,
        [Reason::ReplyPassNotOurs, Reason::ReplyTranslated],
    );
    let rounds = [
        Round {
            hook: UplinkHook::Xdp(XdpMode::Driver),
            order: vec![
                (programs::TC_REPLY, tc, BRIDGE),
                (programs::TC_FORWARD, tc, UPLINK),
                (programs::XDP_UPLINK, "xdp-driver", UPLINK),
            ],
            // tc_forward must find the note xdp_uplink left in the metadata.
            expected: vec![
                (
                    programs::XDP_UPLINK,
                    [Reason::UplinkPassNotIp, Reason::UplinkTranslated],
                ),
                (
                    programs::TC_FORWARD,
                    [Reason::FwdNotOurs, Reason::FwdRedirected],
                ),
                reply,
            ],
        },
        Round {
            hook: UplinkHook::Tc,
            order: vec![
                (programs::TC_REPLY, tc, BRIDGE),
                (programs::TC_UPLINK, tc, UPLINK),
            ],
            expected: vec![
                (
                    programs::TC_UPLINK,
                    [Reason::UplinkPassNotIp, Reason::UplinkTranslated],
                ),
                reply,
            ],
        },
    ];
    let mut ok = true;
    for round in &rounds {
        ok &= attach_round(round)?;
    }
    Ok(ok)
}

fn attach_round(round: &Round) -> anyhow::Result<bool> {
    let uplink = Interface::by_name(UPLINK)?;
    let bridge = Interface::by_name(BRIDGE)?;
    let lan = Interface::by_name(LAN)?;
    let container_side = Interface::by_name(CONTAINER_SIDE)?;
    // A fresh load per round: its counters are this round's alone, and dropping it detaches.
    let mut dataplane = Dataplane::load().context("Dataplane::load")?;
    if let Err(error) = dataplane.attach(&uplink, &bridge, round.hook) {
        let text = format!("{error:#}");
        // Name the program that failed: the error names it, or the interface whose clsact
        // qdisc could not be added.
        let failed = round
            .order
            .iter()
            .position(|(name, _, _)| text.contains(name))
            .or_else(|| {
                round
                    .order
                    .iter()
                    .position(|(_, _, iface)| text.contains(&format!("clsact to {iface}")))
            })
            .unwrap_or(0);
        for (i, (name, how, _)) in round.order.iter().enumerate() {
            match i.cmp(&failed) {
                std::cmp::Ordering::Less => println!("VM attach {name} ok {how}"),
                std::cmp::Ordering::Equal => {
                    println!("VM attach {name} failed {}", one_line(&text));
                }
                std::cmp::Ordering::Greater => println!("VM attach {name} failed not tried"),
            }
        }
        return Ok(false);
    }
    for (name, how, _) in &round.order {
        println!("VM attach {name} ok {how}");
    }

    // A published port, as `portmap run` would fill it, so that a real packet is translated.
    let publish: Publish = PUBLISH.parse().map_err(|e| anyhow!("{PUBLISH}: {e}"))?;
    let plan = Plan::new(&[publish]).map_err(|e| anyhow!("{PUBLISH}: {e}"))?;
    dataplane.publish(&plan.bindings, &bridge)?;
    dataplane.set_local_addrs(&[(*HOST.ip()).into()])?;

    // Into the uplink (sent on its peer): ARP and a SYN to the published port. Into the
    // bridge: ARP and the container's answer, which tc_reply translates back through the flow
    // the SYN recorded.
    let arp = packet::arp_request(*CLIENT.ip(), *HOST.ip());
    let syn = packet::V4::tcp_syn(CLIENT, HOST).frame();
    let answer = packet::V4::tcp_syn(CONTAINER, CLIENT).frame();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut counts = Vec::new();
    let seen = |counts: &[(Reason, u64)], reason: &Reason| {
        counts
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    };
    let all_seen = |counts: &[(Reason, u64)]| {
        round
            .expected
            .iter()
            .all(|(_, reasons)| reasons.iter().all(|r| seen(counts, r) > 0))
    };
    while Instant::now() < deadline && !all_seen(&counts) {
        send_frame(lan.index, &arp).context("sending into the uplink")?;
        send_frame(lan.index, &syn).context("sending into the uplink")?;
        std::thread::sleep(Duration::from_millis(100));
        send_frame(container_side.index, &arp).context("sending into the bridge")?;
        send_frame(container_side.index, &answer).context("sending into the bridge")?;
        std::thread::sleep(Duration::from_millis(200));
        counts = dataplane.reason_stats()?;
    }
    for (name, reasons) in &round.expected {
        let ran = reasons.iter().all(|r| seen(&counts, r) > 0);
        let detail: Vec<String> = reasons
            .iter()
            .map(|r| format!("{}={}", r.name(), seen(&counts, r)))
            .collect();
        println!(
            "VM ran {name} {} {}",
            if ran { "yes" } else { "no" },
            detail.join(",")
        );
    }
    Ok(all_seen(&counts))
}

/// A veth pair `name`–`peer_name`, with busybox's `ip`, which names the peer itself.
fn veth_pair(name: &str, peer_name: &str) -> anyhow::Result<()> {
    ip(&["link", "add", name, "type", "veth"])?;
    let iflink = std::fs::read_to_string(format!("/sys/class/net/{name}/iflink"))
        .context("the veth's peer index")?;
    let peer_index: u32 = iflink.trim().parse().context("parsing iflink")?;
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(peer_index, name.as_mut_ptr()) };
    if found.is_null() {
        bail!(
            "no interface with index {peer_index}: {}",
            io::Error::last_os_error()
        );
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
    let peer = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    ip(&["link", "set", &peer, "name", peer_name])
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Transmits `frame` as is on interface `ifindex` through a packet socket.
fn send_frame(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain integers; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `addr` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Error chains on one line, for the line protocol.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
