//! End to end, every path a packet can take besides the LAN client's plain request, for IPv4
//! and IPv6: loopback bindings and crafted loopback frames (S6), host processes through the
//! cgroup socket programs (S7), hairpin (S8), container to container (S9), wildcard bindings
//! following the host's addresses (S10), ephemeral ports and conflicts (S11, S12), removal,
//! re-publishing and flow expiry (S13), fragments and ICMP errors with PMTU discovery (S14),
//! and UDP checksum 0 (S15). Real sockets in namespaces, the real `portmap` binary.
//!
//! Scenario ids (S6...) are those of SCENARIOS.md. Every wait is bounded.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use portmap_tests::{
    cgroup::TestCgroup,
    packet,
    process::{Portmap, portmap, portmap_bin, require_root},
    raw::{self, Capture},
    servers::{self, AnswerAt, Server},
    topology::{
        BRIDGE, DockerHost, Family, HOST_IP, Options, ROUTER_WAN_IP, ROUTER_WAN_IP6, UPLINK,
        mac_of, spec_ip,
    },
};
use socket2::{Domain, Protocol, Socket, Type};

/// How long a single ask may wait when the answer is expected.
const ASK: Duration = Duration::from_secs(3);
/// How long to wait for an answer that must not come.
const NO_ANSWER: Duration = Duration::from_millis(700);

// --- Setting up ---

/// Where `portmap run` translates on the uplink.
#[derive(Clone, Copy, Debug)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    fn arg(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

fn topology(options: &Options<'_>) -> DockerHost {
    require_root();
    DockerHost::build(options).expect("building the namespace topology")
}

/// Two containers, both families.
fn dual_stack() -> DockerHost {
    topology(&Options {
        ipv6: true,
        ..Options::default()
    })
}

/// `portmap run --iface ens160 --bridge docker0 --hook HOOK --publish SPEC... EXTRA...`.
fn start(net: &DockerHost, hook: Hook, publish: &[String], extra: &[&str]) -> Portmap {
    let mut args = vec!["--iface", UPLINK, "--bridge", BRIDGE, "--hook", hook.arg()];
    for spec in publish {
        args.extend(["--publish", spec.as_str()]);
    }
    args.extend_from_slice(extra);
    Portmap::start(&net.host, &args).expect("portmap run starts")
}

/// `portmap ARGS... --pin-dir <the instance's>` in the host namespace.
fn ctl(net: &DockerHost, instance: &Portmap, args: &[&str]) -> Output {
    let pin_dir = instance.pin_dir.to_string_lossy().into_owned();
    let mut full = args.to_vec();
    full.extend(["--pin-dir", &pin_dir]);
    portmap(&net.host, &full).unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `portmap stats --json` of the instance.
fn stats(net: &DockerHost, instance: &Portmap) -> serde_json::Value {
    let out = ctl(net, instance, &["stats", "--json"]);
    assert!(out.status.success(), "stats --json: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("stats --json prints JSON")
}

/// A reason counter of `stats --json` (0 when it is not listed).
fn reason(stats: &serde_json::Value, name: &str) -> u64 {
    stats["reasons"]
        .as_array()
        .expect("a reasons array")
        .iter()
        .find(|r| r[0] == name)
        .map_or(0, |r| r[1].as_u64().unwrap())
}

/// The live flows of the binding whose host side is `host` (`0.0.0.0:8080`, `[::]:8080`) and
/// protocol `proto`.
fn binding_flows(stats: &serde_json::Value, proto: &str, host: SocketAddr) -> u64 {
    let bindings = stats["bindings"].as_array().expect("a bindings array");
    let binding = bindings
        .iter()
        .find(|b| {
            b["proto"] == proto
                && b["host_port"] == host.port()
                && b["host_ip"]
                    .as_str()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    == Some(host.ip())
        })
        .unwrap_or_else(|| panic!("no {proto} binding on {host} in {stats}"));
    binding["counters"]["flows"].as_u64().unwrap()
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// `HOST_PORT:CONTAINER_PORT[/udp]=CONTAINER_IP`, published on every address of the family.
fn wildcard(host_port: u16, container_port: u16, udp: bool, container: IpAddr) -> String {
    let proto = if udp { "/udp" } else { "" };
    format!("{host_port}:{container_port}{proto}={container}")
}

/// The unspecified address of `family` on `port`, where servers listen.
fn any(family: Family, port: u16) -> SocketAddr {
    at(family.unspecified(), port)
}

/// The peer a server saw, with an IPv4-mapped IPv6 address shown as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Waits a moment for packets in flight, then returns how many entries `server` logged.
fn settled_count(server: &Server) -> usize {
    std::thread::sleep(Duration::from_millis(300));
    server.seen().len()
}

// --- Host processes (S6, S7, S11) ---

/// What `pm-sock-client` printed: `key=value` lines.
#[derive(Debug)]
struct HostAnswer {
    fields: BTreeMap<String, String>,
    ok: bool,
}

impl HostAnswer {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.fields))
    }

    fn addr(&self, key: &str) -> SocketAddr {
        self.get(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}={}: {e}", self.get(key)))
    }

    fn answer(&self) -> AnswerAt {
        AnswerAt::parse(self.get("answer")).unwrap()
    }
}

/// Runs `pm-sock-client MODE TO` as a host process (the host's namespace), in `cgroup` if
/// given, waiting at most `timeout` for its answer.
fn host_process(
    net: &DockerHost,
    cgroup: Option<&TestCgroup>,
    mode: &str,
    to: SocketAddr,
    timeout: Duration,
) -> HostAnswer {
    let mut command = net
        .host
        .command(env!("CARGO_BIN_EXE_pm-sock-client"))
        .unwrap();
    command.args([
        mode,
        &to.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
    ]);
    if let Some(cgroup) = cgroup {
        cgroup.enter(&mut command);
    }
    let out = command.output().expect("running pm-sock-client");
    let fields = stdout(&out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    HostAnswer {
        fields,
        ok: out.status.success(),
    }
}

// --- S6: loopback-only bindings ---

// S6, IPv4, XDP: `127.0.0.1:5000:5000` serves host processes only; the LAN cannot reach it,
// not even with a frame crafted to 127.0.0.1.
#[test]
fn s6_v4_xdp_loopback_binding_serves_host_not_lan_and_crafted_frames_drop() {
    s6(Family::V4, Hook::Xdp);
}

// S6, IPv4, TC hook.
#[test]
fn s6_v4_tc_loopback_binding_serves_host_not_lan_and_crafted_frames_drop() {
    s6(Family::V4, Hook::Tc);
}

// S6, IPv6: `[::1]:5000:5000`.
#[test]
fn s6_v6_xdp_loopback_binding_serves_host_not_lan_and_crafted_frames_drop() {
    s6(Family::V6, Hook::Xdp);
}

// S6, IPv6, TC hook.
#[test]
fn s6_v6_tc_loopback_binding_serves_host_not_lan_and_crafted_frames_drop() {
    s6(Family::V6, Hook::Tc);
}

fn s6(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let tcp = servers::tcp_at(&c1.ns, "c1", any(family, 5000)).unwrap();
    let udp = servers::udp_at(&c1.ns, "c1", any(family, 5000)).unwrap();
    let cgroup = TestCgroup::new("s6").unwrap();
    let cgroup_path = cgroup.path().to_string_lossy().into_owned();
    let lo = spec_ip(family.loopback());
    let target = c1.ip(family);
    let instance = start(
        &net,
        hook,
        &[
            format!("{lo}:5000:5000={target}"),
            format!("{lo}:5000:5000/udp={target}"),
        ],
        &["--cgroup", &cgroup_path],
    );
    let published = at(family.loopback(), 5000);

    // A host process reaches it, TCP and UDP, and sees the published address.
    for mode in ["tcp", "udp"] {
        let got = host_process(&net, Some(&cgroup), mode, published, ASK);
        assert!(got.ok, "host process over {mode}: {got:?}");
        let answer = got.answer();
        assert_eq!(answer.server, "c1", "{mode}");
        assert_eq!(
            answer.saw.ip(),
            net.bridge_ip(family),
            "{mode}: the container sees the host's bridge address"
        );
        let shown = if mode == "tcp" { "peer" } else { "from" };
        assert_eq!(
            got.addr(shown),
            published,
            "{mode}: {shown} shows the binding"
        );
    }
    let (tcp_before, udp_before) = (tcp.seen().len(), udp.seen().len());
    // A binding on loopback only is not one on the host's other addresses, for host processes
    // either.
    let host = at(net.host_ip(family), 5000);
    let got = host_process(&net, Some(&cgroup), "tcp", host, NO_ANSWER);
    assert!(!got.ok, "host process to {host}: {got:?}");

    // The LAN client cannot, on the host's address...
    let client_ip = net.client_ip(family);
    let lan = net
        .client
        .run(|| servers::tcp_ask_at(None, host, NO_ANSWER));
    assert!(lan.is_err(), "TCP from the LAN to {host}: {lan:?}");
    let lan = net
        .client
        .run(|| servers::udp_ask_at(at(client_ip, 0), host, NO_ANSWER));
    assert!(lan.is_err(), "UDP from the LAN to {host}: {lan:?}");

    // ...nor with frames crafted to loopback and sent to the host's MAC.
    let host_mac = net.host_mac().unwrap();
    let client_mac = mac_of(&net.client, "eth0").unwrap();
    let from = at(client_ip, 40_000);
    let (ether_type, packets) = match (from, published) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => (
            packet::ETH_P_IP,
            vec![
                packet::V4::udp(from, to, b"crafted").ip_packet(),
                packet::V4::tcp_syn(from, to).ip_packet(),
            ],
        ),
        (SocketAddr::V6(from), SocketAddr::V6(to)) => (
            packet::ETH_P_IPV6,
            vec![
                packet::V6::udp(from, to, b"crafted").ip_packet(),
                packet::V6::tcp_syn(from, to).ip_packet(),
            ],
        ),
        _ => unreachable!(),
    };
    let frames: Vec<Vec<u8>> = (0..3)
        .flat_map(|_| packets.iter())
        .map(|ip| raw::ethernet(host_mac, client_mac, ether_type, ip))
        .collect();
    let before = reason(&stats(&net, &instance), "uplink.drop.loopback");
    raw::inject(&net.client, "eth0", &frames).unwrap();
    assert_eq!(
        settled_count(&udp),
        udp_before,
        "no crafted datagram arrived"
    );
    assert_eq!(tcp.seen().len(), tcp_before, "no crafted SYN was accepted");
    let stats = stats(&net, &instance);
    assert_eq!(
        reason(&stats, "uplink.drop.loopback") - before,
        frames.len() as u64,
        "every crafted frame is counted as dropped: {stats}"
    );
}

// --- S7: host processes ---

// S7, IPv4: a host process in the cgroup reaches the container through `127.0.0.1`,
// `0.0.0.0`, the uplink's and the bridge's address, TCP and UDP (sendto and connected), and
// its socket shows the published address; a process outside the cgroup is not translated.
#[test]
fn s7_v4_host_process_in_cgroup_reaches_container_on_every_local_address() {
    s7(Family::V4);
}

// S7, IPv6: `::1`, `::`, the uplink's and the bridge's IPv6 address.
#[test]
fn s7_v6_host_process_in_cgroup_reaches_container_on_every_local_address() {
    s7(Family::V6);
}

fn s7(family: Family) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let tcp = servers::tcp_at(&c1.ns, "c1", any(family, 80)).unwrap();
    let udp = servers::udp_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let cgroup = TestCgroup::new("s7").unwrap();
    let cgroup_path = cgroup.path().to_string_lossy().into_owned();
    // One dual-stack service: each family's binding goes to the container's own address.
    let c1_v4 = c1.ip(Family::V4).to_string();
    let c1_v6 = c1.ip(Family::V6).to_string();
    let web4 = format!("web={c1_v4}");
    let web6 = format!("web={c1_v6}");
    let instance = start(
        &net,
        Hook::Xdp,
        &["8080:80=web".to_owned(), "5353:53/udp=web".to_owned()],
        &[
            "--container",
            &web4,
            "--container",
            &web6,
            "--cgroup",
            &cgroup_path,
        ],
    );
    let addrs = [
        family.loopback(),
        family.unspecified(),
        net.host_ip(family),
        net.bridge_ip(family),
    ];
    for ip in addrs {
        let (tcp_to, udp_to) = (at(ip, 8080), at(ip, 5353));
        // What the process must see as its peer: what it asked for, and for "any" loopback, as
        // the kernel itself shows a connect to 0.0.0.0 or `::`.
        let shown_ok = |shown: SocketAddr, asked: SocketAddr| {
            if asked.ip().is_unspecified() {
                shown == at(family.loopback(), asked.port())
            } else {
                shown == asked
            }
        };

        let got = host_process(&net, Some(&cgroup), "tcp", tcp_to, ASK);
        assert!(got.ok, "TCP to {tcp_to}: {got:?}");
        let answer = got.answer();
        assert_eq!(answer.server, "c1", "TCP to {tcp_to}");
        assert_eq!(answer.saw.ip(), net.bridge_ip(family), "TCP to {tcp_to}");
        assert_eq!(
            canonical(answer.saw),
            got.addr("local"),
            "the container saw the process's own socket"
        );
        assert!(
            shown_ok(got.addr("peer"), tcp_to),
            "getpeername after connecting to {tcp_to} shows {}",
            got.get("peer")
        );

        let got = host_process(&net, Some(&cgroup), "udp", udp_to, ASK);
        assert!(got.ok, "UDP sendto {udp_to}: {got:?}");
        assert_eq!(got.answer().server, "c1", "UDP to {udp_to}");
        assert_eq!(got.answer().saw.ip(), net.bridge_ip(family));
        assert!(
            shown_ok(got.addr("from"), udp_to),
            "recvfrom after sending to {udp_to} shows {}",
            got.get("from")
        );

        let got = host_process(&net, Some(&cgroup), "udp-connected", udp_to, ASK);
        assert!(got.ok, "connected UDP to {udp_to}: {got:?}");
        assert_eq!(got.answer().server, "c1", "connected UDP to {udp_to}");
        assert!(
            shown_ok(got.addr("peer"), udp_to),
            "getpeername of a UDP socket connected to {udp_to} shows {}",
            got.get("peer")
        );
    }
    let stats_in = stats(&net, &instance);
    assert!(
        reason(&stats_in, "sock.translated") >= 12,
        "every connect and send was translated at the socket: {stats_in}"
    );
    assert!(reason(&stats_in, "sock.restored") >= 8, "{stats_in}");

    // Outside the cgroup: the same asks are not translated and never reach the container.
    let (tcp_before, udp_before) = (tcp.seen().len(), udp.seen().len());
    for ip in [family.loopback(), net.host_ip(family)] {
        for (mode, port) in [("tcp", 8080), ("udp", 5353)] {
            let got = host_process(&net, None, mode, at(ip, port), NO_ANSWER);
            assert!(
                !got.ok,
                "{mode} to {ip}:{port} from outside the cgroup: {got:?}"
            );
        }
    }
    assert_eq!(
        settled_count(&tcp),
        tcp_before,
        "no connection from outside"
    );
    assert_eq!(udp.seen().len(), udp_before, "no datagram from outside");
    let stats_out = stats(&net, &instance);
    assert_eq!(
        reason(&stats_out, "sock.translated"),
        reason(&stats_in, "sock.translated"),
        "nothing outside the cgroup was translated"
    );
}

// --- S8: hairpin ---

// S8, IPv4: c2 reaches c1 through the bridge's address and the uplink's address on the
// published port, and c1 reaches itself the same ways; c1 sees the bridge's address as source;
// TCP and UDP, answers back through the translation (UDP answers come from the published
// address).
#[test]
fn s8_v4_hairpin_to_neighbour_and_self_via_bridge_and_uplink_address() {
    s8(Family::V4);
}

// S8, IPv6.
#[test]
fn s8_v6_hairpin_to_neighbour_and_self_via_bridge_and_uplink_address() {
    s8(Family::V6);
}

fn s8(family: Family) {
    let net = dual_stack();
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let _tcp = servers::tcp_at(&c1.ns, "c1", any(family, 80)).unwrap();
    let udp = servers::udp_echo_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let target = c1.ip(family);
    let instance = start(
        &net,
        Hook::Xdp,
        &[
            wildcard(8080, 80, false, target),
            wildcard(5353, 53, true, target),
        ],
        &[],
    );
    let bridge = net.bridge_ip(family);
    let mut asked = 0;
    for caller in [c2, c1] {
        let caller_ip = caller.ip(family);
        for via in [bridge, net.host_ip(family)] {
            let what = format!("{} -> {via}", caller.name);
            let answer = caller
                .ns
                .run(|| servers::tcp_ask_at(None, at(via, 8080), ASK))
                .unwrap_or_else(|e| panic!("{what}:8080 over TCP: {e:#}"));
            assert_eq!(answer.server, "c1", "{what}");
            assert_eq!(
                answer.saw.ip(),
                bridge,
                "{what}: the source is the bridge's"
            );

            let published = at(via, 5353);
            let (answer, source) = caller
                .ns
                .run(|| servers::udp_ask_at(at(caller_ip, 0), published, ASK))
                .unwrap_or_else(|e| panic!("{what}:5353 over UDP: {e:#}"));
            assert_eq!(answer.server, "c1", "{what}");
            assert_eq!(
                answer.saw.ip(),
                bridge,
                "{what}: the source is the bridge's"
            );
            assert_eq!(
                source, published,
                "{what}: the answer comes from where it went"
            );
            asked += 2;
        }
    }

    // A datagram larger than the MTU, hairpinned: its fragments follow the first one to c1,
    // and c1's as large answer returns to c2 in fragments too.
    let before = udp.seen().len();
    let published = at(bridge, 5353);
    let c2_ip = c2.ip(family);
    let payload = pattern(4000, 7);
    let (local, reply, source) = c2.ns.run(|| {
        let socket = Socket::new(domain_of(family), Type::DGRAM, Some(Protocol::UDP)).unwrap();
        if family == Family::V4 {
            setsockopt_int(
                &socket,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            );
        }
        socket.bind(&at(c2_ip, 0).into()).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        let socket: UdpSocket = socket.into();
        socket.send_to(&payload, published).unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, source) = socket
            .recv_from(&mut buf)
            .expect("an answer to a fragmented hairpin datagram");
        buf.truncate(n);
        (socket.local_addr().unwrap(), buf, source)
    });
    assert_eq!(source, published);
    let line_end = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
    let answer = AnswerAt::parse(&String::from_utf8_lossy(&reply[..line_end])).unwrap();
    assert_eq!(answer.server, "c1");
    assert_eq!(
        answer.saw,
        at(bridge, local.port()),
        "the bridge's address, c2's port"
    );
    assert!(
        reply[line_end..] == payload[..],
        "the answer came back whole"
    );
    let seen = udp.seen();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen[before].len, payload.len(), "c1 got the datagram whole");
    let stats = stats(&net, &instance);
    assert!(
        reason(&stats, "tc_reply.hairpin") >= asked,
        "each exchange went through the hairpin path: {stats}"
    );
    assert_eq!(reason(&stats, "tc_reply.hairpin.port_busy"), 0, "{stats}");
}

// --- S9: container to container ---

// S9, IPv6: container to container by address is untouched, even with a binding on that port:
// the target sees the caller's own address and nothing is translated.
#[test]
fn s9_v6_container_to_container_direct_is_untouched() {
    let net = dual_stack();
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let _tcp = servers::tcp_at(&c2.ns, "c2", any(Family::V6, 80)).unwrap();
    let _udp = servers::udp_at(&c2.ns, "c2", any(Family::V6, 80)).unwrap();
    let c2_ip = c2.ip(Family::V6);
    let c1_ip = c1.ip(Family::V6);
    let instance = start(
        &net,
        Hook::Xdp,
        &[
            wildcard(80, 80, false, c2_ip),
            wildcard(80, 80, true, c2_ip),
        ],
        &[],
    );
    let answer = c1
        .ns
        .run(|| servers::tcp_ask_at(None, at(c2_ip, 80), ASK))
        .unwrap();
    assert_eq!(answer.server, "c2");
    assert_eq!(answer.saw.ip(), c1_ip, "source kept");
    let (answer, source) = c1
        .ns
        .run(|| servers::udp_ask_at(at(c1_ip, 0), at(c2_ip, 80), ASK))
        .unwrap();
    assert_eq!((answer.server.as_str(), answer.saw.ip()), ("c2", c1_ip));
    assert_eq!(source, at(c2_ip, 80));
    let stats = stats(&net, &instance);
    for untouched in [
        "tc_reply.translated",
        "tc_port.translated",
        "tc_reply.hairpin",
        "uplink.translated",
    ] {
        assert_eq!(reason(&stats, untouched), 0, "{untouched}: {stats}");
    }
}

// --- S10: wildcard bindings follow the host's addresses ---

// S10, IPv4, XDP: a wildcard binding answers on the uplink's address, on the bridge's address
// (routed from the client), on an address added to the uplink while running (and stops on it
// once it is removed), and on an address of another interface.
#[test]
fn s10_v4_xdp_wildcard_follows_uplink_bridge_and_added_removed_addresses() {
    s10(Family::V4, Hook::Xdp);
}

// S10, IPv4, TC hook.
#[test]
fn s10_v4_tc_wildcard_follows_uplink_bridge_and_added_removed_addresses() {
    s10(Family::V4, Hook::Tc);
}

// S10, IPv6 (`[::]`), XDP.
#[test]
fn s10_v6_xdp_wildcard_follows_uplink_bridge_and_added_removed_addresses() {
    s10(Family::V6, Hook::Xdp);
}

// S10, IPv6, TC hook.
#[test]
fn s10_v6_tc_wildcard_follows_uplink_bridge_and_added_removed_addresses() {
    s10(Family::V6, Hook::Tc);
}

/// Asks `to` over UDP from the client every 100 ms or so until `want` says the outcome is the
/// one wanted, for at most `limit`; returns how long it took.
fn poll_udp(
    net: &DockerHost,
    family: Family,
    to: SocketAddr,
    limit: Duration,
    want: impl Fn(&anyhow::Result<(AnswerAt, SocketAddr)>) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    let from = at(net.client_ip(family), 0);
    while started.elapsed() < limit {
        let got = net
            .client
            .run(|| servers::udp_ask_at(from, to, Duration::from_millis(150)));
        if want(&got) {
            return Some(started.elapsed());
        }
    }
    None
}

fn s10(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let tcp = servers::tcp_at(&c1.ns, "c1", any(family, 80)).unwrap();
    let udp = servers::udp_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let target = c1.ip(family);
    let _instance = start(
        &net,
        hook,
        &[
            wildcard(8080, 80, false, target),
            wildcard(5353, 53, true, target),
        ],
        &[],
    );
    let client_ip = net.client_ip(family);
    let ask_both = |ip: IpAddr, what: &str| {
        let answer = net
            .client
            .run(|| servers::tcp_ask_at(None, at(ip, 8080), ASK))
            .unwrap_or_else(|e| panic!("TCP to {what} {ip}: {e:#}"));
        assert_eq!((answer.server.as_str(), answer.saw.ip()), ("c1", client_ip));
        let (answer, source) = net
            .client
            .run(|| servers::udp_ask_at(at(client_ip, 0), at(ip, 5353), ASK))
            .unwrap_or_else(|e| panic!("UDP to {what} {ip}: {e:#}"));
        assert_eq!((answer.server.as_str(), answer.saw.ip()), ("c1", client_ip));
        assert_eq!(source, at(ip, 5353), "UDP to {what}: answered from there");
    };
    ask_both(net.host_ip(family), "the uplink's address");
    ask_both(net.bridge_ip(family), "the bridge's address");

    // An address added to the uplink while portmap runs. The client's neighbour entry for it
    // is pinned to the host, so that after its removal the client's frames still reach the
    // host's uplink (and a stale translation would show).
    let (extra, prefix): (IpAddr, u8) = match family {
        Family::V4 => (Ipv4Addr::new(198, 51, 100, 77).into(), 24),
        Family::V6 => (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77).into(), 64),
    };
    let host_mac = net.host_mac().unwrap();
    let mac = host_mac.map(|b| format!("{b:02x}")).join(":");
    net.client
        .ip(&format!(
            "{} neigh replace {extra} lladdr {mac} dev eth0 nud permanent",
            family.ip_flag()
        ))
        .unwrap();
    let nodad = if family.is_v6() { " nodad" } else { "" };
    net.host
        .ip(&format!("addr add {extra}/{prefix} dev {UPLINK}{nodad}"))
        .unwrap();
    let answered = poll_udp(&net, family, at(extra, 5353), Duration::from_secs(3), |r| {
        r.is_ok()
    });
    let took = answered.expect("the added address answers within 3 s");
    assert!(
        took < Duration::from_millis(1500),
        "the added address is followed live (took {took:?})"
    );
    ask_both(extra, "the added address");

    net.host
        .ip(&format!("addr del {extra}/{prefix} dev {UPLINK}"))
        .unwrap();
    let stopped = poll_udp(&net, family, at(extra, 5353), Duration::from_secs(3), |r| {
        r.is_err()
    });
    let took = stopped.expect("the removed address stops answering within 3 s");
    assert!(
        took < Duration::from_millis(1500),
        "the removal is followed live (took {took:?})"
    );
    let (tcp_before, udp_before) = (tcp.seen().len(), udp.seen().len());
    let tcp_after = net
        .client
        .run(|| servers::tcp_ask_at(None, at(extra, 8080), NO_ANSWER));
    assert!(
        tcp_after.is_err(),
        "TCP to the removed address: {tcp_after:?}"
    );
    let udp_after = poll_udp(&net, family, at(extra, 5353), NO_ANSWER, |r| r.is_ok());
    assert!(udp_after.is_none(), "UDP to the removed address answered");
    assert_eq!(settled_count(&tcp), tcp_before, "no connection reached c1");
    assert_eq!(udp.seen().len(), udp_before, "no datagram reached c1");
    // An address on another interface of the host (a spare veth), routed to from the client:
    // every local address is covered, not only the uplink's and the bridge's.
    let (other, other_prefix): (IpAddr, u8) = match family {
        Family::V4 => (Ipv4Addr::new(203, 0, 113, 50).into(), 32),
        Family::V6 => (
            Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 0x50).into(),
            128,
        ),
    };
    net.host
        .ip("link add side0 type veth peer name side1")
        .unwrap();
    net.host
        .ip(&format!("addr add {other}/{other_prefix} dev side0{nodad}"))
        .unwrap();
    net.host.ip("link set side0 up").unwrap();
    net.host.ip("link set side1 up").unwrap();
    poll_udp(&net, family, at(other, 5353), Duration::from_secs(3), |r| {
        r.is_ok()
    })
    .expect("an address on another interface answers within 3 s");
    ask_both(other, "an address on another interface");

    // The uplink's own address still works.
    ask_both(
        net.host_ip(family),
        "the uplink's address, after the change",
    );
}

// --- S11, S12: ephemeral ports and conflicts, IPv6 ---

/// `portmap ARGS...` in the host namespace, for a command that should end by itself (a refused
/// `run`): killed after 15 s if it does not, so that a regression fails rather than hangs.
fn run_bounded(net: &DockerHost, args: &[&str]) -> Output {
    let mut child = net
        .host
        .command(portmap_bin())
        .unwrap()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning portmap");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        // SAFETY: signalling our own child; SIGTERM lets `run` detach and unpin.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    child.wait_with_output().expect("portmap's output")
}

// S11: `[::1]::5000` (and `127.0.0.1::5000`) takes a free port from ip_local_port_range, which
// `portmap ls` reports, and a host process reaches the container through it.
#[test]
fn s11_ephemeral_loopback_port_reported_by_ls_and_served_both_families() {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let cgroup = TestCgroup::new("s11").unwrap();
    let cgroup_path = cgroup.path().to_string_lossy().into_owned();
    let _servers: Vec<Server> = Family::BOTH
        .iter()
        .map(|&f| servers::tcp_at(&c1.ns, "c1", any(f, 5000)).unwrap())
        .collect();
    let specs: Vec<String> = Family::BOTH
        .iter()
        .map(|&f| format!("{}::5000={}", spec_ip(f.loopback()), c1.ip(f)))
        .collect();
    let instance = start(&net, Hook::Xdp, &specs, &["--cgroup", &cgroup_path]);

    let range = net
        .host
        .exec("sysctl", &["-n", "net.ipv4.ip_local_port_range"])
        .unwrap();
    let range: Vec<u16> = stdout(&range)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let ls = ctl(&net, &instance, &["ls", "--json"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let plain = stdout(&ctl(&net, &instance, &["ls"]));
    for family in Family::BOTH {
        let binding = ls["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["host_ip"] == family.loopback().to_string())
            .unwrap_or_else(|| panic!("no binding on {} in {ls}", family.loopback()));
        let port = u16::try_from(binding["host_port"].as_u64().unwrap()).unwrap();
        assert!(
            (range[0]..=range[1]).contains(&port),
            "{family:?}: port {port} is from ip_local_port_range {range:?}"
        );
        assert_eq!(binding["container_port"], 5000);
        assert_eq!(binding["container_ip"], c1.ip(family).to_string());
        let published = at(family.loopback(), port);
        let line = format!("5000/tcp -> {published} => {}", at(c1.ip(family), 5000));
        assert!(
            instance.banner.contains(&line),
            "run announces {line:?}:\n{}",
            instance.banner
        );
        if !family.is_v6() {
            // IPv6 lines: see s11_v6_ls_prints_ipv6_addresses_bracketed_as_docker_port_does.
            assert!(plain.contains(&line), "ls shows {line:?}:\n{plain}");
        }

        let got = host_process(&net, Some(&cgroup), "tcp", published, ASK);
        assert!(got.ok, "{published}: {got:?}");
        assert_eq!(got.answer().server, "c1");
        assert_eq!(got.addr("peer"), published);
    }
}

// S11/S12 reporting: `portmap ls` (and `add`, `rm`, the `stats` table) print an IPv6 binding
// as `docker port` does and as `run` announces it, `5000/tcp -> [::1]:PORT =>
// [2001:db8:2::2]:5000`, so the address and the port can be told apart.
#[test]
fn s11_v6_ls_prints_ipv6_addresses_bracketed_as_docker_port_does() {
    let net = dual_stack();
    let c1_6 = net.containers[0].ip(Family::V6);
    let instance = start(
        &net,
        Hook::Xdp,
        &[format!("[::1]:5000:5000={c1_6}"), format!("8080:80={c1_6}")],
        &[],
    );
    let ls = stdout(&ctl(&net, &instance, &["ls"]));
    for line in [
        "5000/tcp -> [::1]:5000 => [2001:db8:2::2]:5000",
        "80/tcp -> [::]:8080 => [2001:db8:2::2]:80",
    ] {
        assert!(instance.banner.contains(line), "run: {}", instance.banner);
        assert!(ls.contains(line), "ls shows {line:?}:\n{ls}");
    }
    let stats = stdout(&ctl(&net, &instance, &["stats"]));
    assert!(
        stats.contains("80/tcp -> [::]:8080 => [2001:db8:2::2]:80"),
        "{stats}"
    );
}

// S12: two specs claiming one IPv6 host port are refused naming both, with nothing attached or
// pinned, at start and on a running instance; IPv4 and IPv6 on the same port are no conflict,
// and each family reaches its own container.
#[test]
fn s12_v6_same_host_port_twice_refused_naming_both_but_v4_and_v6_coexist() {
    let net = dual_stack();
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let (c1_6, c2_6) = (c1.ip(Family::V6), c2.ip(Family::V6));
    let first = format!("[::]:8080:80={c1_6}");
    let second = format!("[2001:db8::1]:8080:81={c2_6}");
    let pin_dir = format!("/sys/fs/bpf/portmap-test/{}-refused", net.host.name());
    let out = run_bounded(
        &net,
        &[
            "run",
            "--iface",
            UPLINK,
            "--bridge",
            BRIDGE,
            "--publish",
            &first,
            "--publish",
            &second,
            "--pin-dir",
            &pin_dir,
            "--no-cgroup",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = format!("host port 8080/tcp is published twice: by {first:?} and by {second:?}");
    assert!(stderr(&out).contains(&message), "{}", stderr(&out));
    let link = net
        .host
        .exec("ip", &["-d", "link", "show", UPLINK])
        .unwrap();
    assert!(!stdout(&link).contains("xdp"), "nothing attached");
    assert!(!std::path::Path::new(&pin_dir).exists(), "nothing pinned");

    let _s1 = servers::tcp_at(&c1.ns, "c1", any(Family::V4, 80)).unwrap();
    let _s2 = servers::tcp_at(&c2.ns, "c2", any(Family::V6, 80)).unwrap();
    let instance = start(
        &net,
        Hook::Xdp,
        &[
            format!("0.0.0.0:8080:80={}", c1.ip(Family::V4)),
            format!("[::]:8080:80={c2_6}"),
        ],
        &[],
    );
    let before = stdout(&ctl(&net, &instance, &["ls"]));
    assert_eq!(before.lines().count(), 2, "{before}");
    let refused = ctl(&net, &instance, &["add", &format!("[::1]:8080:81={c1_6}")]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = format!(
        "host port 8080/tcp is published twice: by \"[::]:8080:80={c2_6}\" and by \"[::1]:8080:81={c1_6}\""
    );
    assert!(stderr(&refused).contains(&message), "{}", stderr(&refused));
    assert_eq!(
        stdout(&ctl(&net, &instance, &["ls"])),
        before,
        "nothing changed"
    );

    for (family, expected) in [(Family::V4, "c1"), (Family::V6, "c2")] {
        let to = at(net.host_ip(family), 8080);
        let answer = net
            .client
            .run(|| servers::tcp_ask_at(None, to, ASK))
            .unwrap_or_else(|e| panic!("{to}: {e:#}"));
        assert_eq!(answer.server, expected, "{to}");
        assert_eq!(answer.saw.ip(), net.client_ip(family));
    }
}

// --- S13: removal, re-publishing, expiry ---

// S13, IPv4, XDP: a UDP client keeps sending on one socket while its binding is removed and
// published again toward another container: nothing sent after the removal returned reaches
// the old container, and everything sent after the re-publishing reaches the new one, whose
// answers come from the published address (moby #8795).
#[test]
fn s13_v4_xdp_udp_stream_follows_rm_then_add_to_another_container() {
    s13_rm_add(Family::V4, Hook::Xdp);
}

// S13, IPv4, TC hook.
#[test]
fn s13_v4_tc_udp_stream_follows_rm_then_add_to_another_container() {
    s13_rm_add(Family::V4, Hook::Tc);
}

// S13, IPv6, XDP.
#[test]
fn s13_v6_xdp_udp_stream_follows_rm_then_add_to_another_container() {
    s13_rm_add(Family::V6, Hook::Xdp);
}

// S13, IPv6, TC hook.
#[test]
fn s13_v6_tc_udp_stream_follows_rm_then_add_to_another_container() {
    s13_rm_add(Family::V6, Hook::Tc);
}

/// When each datagram of a stream started and finished being sent, by sequence number, and
/// the answers it got (source, text).
#[derive(Default)]
struct Stream {
    sent: Vec<(Instant, Instant)>,
    answers: Vec<(SocketAddr, String)>,
    /// The sending socket's own address.
    local: Option<SocketAddr>,
}

fn seq_of(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head)
        .strip_prefix("seq ")?
        .trim()
        .parse()
        .ok()
}

fn s13_rm_add(family: Family, hook: Hook) {
    let net = dual_stack();
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let old = servers::udp_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let new = servers::udp_at(&c2.ns, "c2", any(family, 53)).unwrap();
    let instance = start(&net, hook, &[wildcard(5353, 53, true, c1.ip(family))], &[]);
    let published = at(net.host_ip(family), 5353);
    let client_ip = net.client_ip(family);

    let stream = Arc::new(Mutex::new(Stream::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stream, stop) = (stream.clone(), stop.clone());
        net.client.spawn(move || {
            let socket = UdpSocket::bind(at(client_ip, 0)).unwrap();
            socket.set_nonblocking(true).unwrap();
            stream.lock().unwrap().local = Some(socket.local_addr().unwrap());
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut buf = [0u8; 256];
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let start = Instant::now();
                let _ = socket.send_to(format!("seq {seq}").as_bytes(), published);
                let end = Instant::now();
                let mut stream = stream.lock().unwrap();
                stream.sent.push((start, end));
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    stream.answers.push((from, text));
                }
                drop(stream);
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !old.seen().is_empty(),
        "the stream reaches c1 before the change"
    );
    let removed = ctl(&net, &instance, &["rm", "5353/udp"]);
    let removed_at = Instant::now();
    assert!(removed.status.success(), "rm: {}", stderr(&removed));
    // A late answer from the old container to the client's socket: its flow ended with the
    // binding, so it must not be translated to come from the published port.
    let client_local = stream.lock().unwrap().local.unwrap();
    let late = match (at(c1.ip(family), 53), client_local) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => (
            packet::ETH_P_IP,
            packet::V4::udp(from, to, b"late c1").ip_packet(),
        ),
        (SocketAddr::V6(from), SocketAddr::V6(to)) => (
            packet::ETH_P_IPV6,
            packet::V6::udp(from, to, b"late c1").ip_packet(),
        ),
        _ => unreachable!(),
    };
    let bridge_mac = mac_of(&net.host, BRIDGE).unwrap();
    let c1_mac = mac_of(&c1.ns, "eth0").unwrap();
    raw::inject(
        &c1.ns,
        "eth0",
        &[raw::ethernet(bridge_mac, c1_mac, late.0, &late.1)],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let adding_at = Instant::now();
    let spec = wildcard(5353, 53, true, c2.ip(family));
    let added = ctl(&net, &instance, &["add", &spec]);
    let added_at = Instant::now();
    assert!(added.status.success(), "add: {}", stderr(&added));
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let stream = stream.lock().unwrap();
    let to_old: Vec<usize> = old.seen().iter().filter_map(|s| seq_of(&s.head)).collect();
    let to_new: Vec<usize> = new.seen().iter().filter_map(|s| seq_of(&s.head)).collect();
    let late: Vec<usize> = to_old
        .iter()
        .copied()
        .filter(|&seq| stream.sent[seq].0 >= removed_at)
        .collect();
    assert!(
        late.is_empty(),
        "datagrams sent after `rm` returned reached the old container: {late:?}"
    );
    let early: Vec<usize> = to_new
        .iter()
        .copied()
        .filter(|&seq| stream.sent[seq].1 <= adding_at)
        .collect();
    assert!(
        early.is_empty(),
        "datagrams sent before `add` reached the new container: {early:?}"
    );
    for seen in new.seen() {
        assert_eq!(
            seen.peer.ip(),
            client_ip,
            "c2 sees the client's own address"
        );
    }
    let after: Vec<usize> = (0..stream.sent.len())
        .filter(|&seq| stream.sent[seq].0 > added_at)
        .collect();
    let missing: Vec<usize> = after
        .iter()
        .copied()
        .filter(|seq| !to_new.contains(seq))
        .collect();
    assert!(
        after.len() > 20,
        "the stream ran after the add: {}",
        after.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} datagrams sent after `add` returned did not reach c2: {missing:?}",
        missing.len(),
        after.len()
    );
    let from_new: Vec<&(SocketAddr, String)> = stream
        .answers
        .iter()
        .filter(|(_, text)| text.starts_with("c2 saw"))
        .collect();
    assert!(!from_new.is_empty(), "c2's answers reach the client");
    // c1's answer to a datagram that reached it just before `rm` may leave after the binding
    // is gone: correctly untranslated then. The stream sends every 2 ms, so only one or two can
    // be caught that way.
    let mut raced_rm = 0;
    for (source, text) in &stream.answers {
        if text == "late c1" {
            assert_eq!(
                *source,
                at(c1.ip(family), 53),
                "the old container's late answer is not translated"
            );
        } else if text.starts_with("c1 saw") && *source == at(c1.ip(family), 53) {
            raced_rm += 1;
        } else {
            assert_eq!(
                *source, published,
                "answer {text:?} comes from the published port"
            );
        }
    }
    assert!(
        raced_rm <= 2,
        "{raced_rm} of c1's answers left untranslated: more than were in flight at `rm`"
    );
    assert!(
        stream.answers.iter().any(|(_, text)| text == "late c1"),
        "the late answer reached the client untranslated (the host routes it)"
    );
}

// S13, IPv4, XDP: with `--udp-timeout 2s` an idle UDP flow leaves `stats` within ~6 s, TCP
// connections closed with FIN or aborted with RST leave within `--tcp-close-timeout 2s` (plus a
// sweep), an open one stays, and both bindings keep serving afterwards.
#[test]
fn s13_v4_xdp_idle_udp_and_closed_tcp_flows_expire_open_tcp_stays() {
    s13_expiry(Family::V4, Hook::Xdp);
}

// S13 expiry, IPv6, with the TC hook recording the flows.
#[test]
fn s13_v6_tc_idle_udp_and_closed_tcp_flows_expire_open_tcp_stays() {
    s13_expiry(Family::V6, Hook::Tc);
}

fn s13_expiry(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let _tcp = servers::tcp_at(&c1.ns, "c1", any(family, 80)).unwrap();
    let _udp = servers::udp_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let target = c1.ip(family);
    let instance = start(
        &net,
        hook,
        &[
            wildcard(8080, 80, false, target),
            wildcard(5353, 53, true, target),
        ],
        &["--udp-timeout", "2s", "--tcp-close-timeout", "2s"],
    );
    let (tcp_host, udp_host) = (any(family, 8080), any(family, 5353));
    let client_ip = net.client_ip(family);
    let published_udp = at(net.host_ip(family), 5353);
    let published_tcp = at(net.host_ip(family), 8080);

    let udp = net
        .client
        .run(|| UdpSocket::bind(at(client_ip, 0)))
        .unwrap();
    udp.set_read_timeout(Some(ASK)).unwrap();
    let ask_udp = |udp: &UdpSocket| {
        udp.send_to(b"who", published_udp).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = udp.recv_from(&mut buf).expect("a UDP answer");
        assert_eq!(from, published_udp);
        AnswerAt::parse(&String::from_utf8_lossy(&buf[..n])).unwrap()
    };
    assert_eq!(ask_udp(&udp).server, "c1");
    let mut open = net
        .client
        .run(|| servers::tcp_connect_at(None, published_tcp, ASK))
        .unwrap();
    servers::tcp_ask_on_at(&mut open).unwrap();
    let mut closed = net
        .client
        .run(|| servers::tcp_connect_at(None, published_tcp, ASK))
        .unwrap();
    servers::tcp_ask_on_at(&mut closed).unwrap();
    closed.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    closed
        .read_to_end(&mut rest)
        .expect("the server closes its side");
    drop(closed);
    // And one aborted with a RST (SO_LINGER 0).
    let mut reset = net
        .client
        .run(|| servers::tcp_connect_at(None, published_tcp, ASK))
        .unwrap();
    servers::tcp_ask_on_at(&mut reset).unwrap();
    Socket::from(reset)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let idle_from = Instant::now();

    let first = stats(&net, &instance);
    assert_eq!(binding_flows(&first, "udp", udp_host), 1, "{first}");
    assert_eq!(binding_flows(&first, "tcp", tcp_host), 3, "{first}");

    let (mut udp_gone, mut closed_gone) = (None, None);
    while idle_from.elapsed() < Duration::from_secs(9)
        && (udp_gone.is_none() || closed_gone.is_none())
    {
        std::thread::sleep(Duration::from_millis(200));
        let now = stats(&net, &instance);
        if udp_gone.is_none() && binding_flows(&now, "udp", udp_host) == 0 {
            udp_gone = Some(idle_from.elapsed());
        }
        if closed_gone.is_none() && binding_flows(&now, "tcp", tcp_host) == 1 {
            closed_gone = Some(idle_from.elapsed());
        }
    }
    let udp_gone = udp_gone.expect("the idle UDP flow expires within 9 s");
    let closed_gone = closed_gone.expect("the closed TCP flows expire within 9 s");
    assert!(
        udp_gone >= Duration::from_millis(1500) && udp_gone <= Duration::from_secs(6),
        "the idle UDP flow went after {udp_gone:?} (timeout 2 s)"
    );
    assert!(
        closed_gone >= Duration::from_millis(1500) && closed_gone <= Duration::from_secs(5),
        "the closed TCP flow went after {closed_gone:?} (close timeout 2 s)"
    );
    let last = stats(&net, &instance);
    assert_eq!(
        binding_flows(&last, "tcp", tcp_host),
        1,
        "the open connection's flow stays: {last}"
    );

    // Both still serve: the open connection, and the same UDP socket (a new flow).
    let answer = servers::tcp_ask_on_at(&mut open).expect("the open connection still answers");
    assert_eq!((answer.server.as_str(), answer.saw.ip()), ("c1", client_ip));
    let answer = ask_udp(&udp);
    assert_eq!(answer.saw, udp.local_addr().unwrap());
    let again = stats(&net, &instance);
    assert_eq!(binding_flows(&again, "udp", udp_host), 1, "{again}");
}

// --- S14: fragments ---

// S14, IPv4, XDP: UDP datagrams larger than the MTU, sent without DF (so the client's kernel
// fragments them), reach the container whole, and its as large answers (fragmented by the
// container) reach the client whole, from the published port.
#[test]
fn s14_v4_xdp_fragmented_udp_reaches_container_whole_and_answer_returns_whole() {
    s14_fragments(Family::V4, Hook::Xdp);
}

// S14 fragments, IPv4, TC hook.
#[test]
fn s14_v4_tc_fragmented_udp_reaches_container_whole_and_answer_returns_whole() {
    s14_fragments(Family::V4, Hook::Tc);
}

// S14 fragments, IPv6 (the sender fragments itself), XDP.
#[test]
fn s14_v6_xdp_fragmented_udp_reaches_container_whole_and_answer_returns_whole() {
    s14_fragments(Family::V6, Hook::Xdp);
}

// S14 fragments, IPv6, TC hook.
#[test]
fn s14_v6_tc_fragmented_udp_reaches_container_whole_and_answer_returns_whole() {
    s14_fragments(Family::V6, Hook::Tc);
}

/// The source and destination of a frame that carries an IP fragment (IPv4 with MF or an
/// offset, IPv6 with a fragment header), and whether it is the first.
fn fragment_of(frame: &[u8]) -> Option<(IpAddr, IpAddr, bool)> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ether_type {
        0x0800 if ip.len() >= 20 => {
            let word = u16::from_be_bytes([ip[6], ip[7]]);
            let (more, offset) = (word & 0x2000 != 0, word & 0x1fff);
            let src: [u8; 4] = ip[12..16].try_into().ok()?;
            let dst: [u8; 4] = ip[16..20].try_into().ok()?;
            (more || offset != 0).then(|| (src.into(), dst.into(), offset == 0))
        }
        0x86dd if ip.len() >= 48 && ip[6] == packet::IPV6_FRAGMENT => {
            let offset = u16::from_be_bytes([ip[42], ip[43]]) >> 3;
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            Some((src.into(), dst.into(), offset == 0))
        }
        _ => None,
    }
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 241) as u8 ^ salt).collect()
}

fn setsockopt_int(socket: &Socket, level: i32, name: i32, value: i32) {
    // SAFETY: setting an int option of the right size on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

fn s14_fragments(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let server = servers::udp_echo_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let _instance = start(&net, hook, &[wildcard(5353, 53, true, c1.ip(family))], &[]);
    let published = at(net.host_ip(family), 5353);
    let client_ip = net.client_ip(family);
    let at_container = Capture::start(&c1.ns, "eth0").unwrap();
    let at_client = Capture::start(&net.client, "eth0").unwrap();

    let sizes = [1600usize, 3000, 8000];
    let local = net.client.run(|| {
        let socket = Socket::new(domain_of(family), Type::DGRAM, Some(Protocol::UDP)).unwrap();
        if family == Family::V4 {
            // No DF: the client's kernel fragments what exceeds the MTU.
            setsockopt_int(
                &socket,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            );
        }
        socket.bind(&at(client_ip, 0).into()).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        let socket: UdpSocket = socket.into();
        let local = socket.local_addr().unwrap();
        for (i, &size) in sizes.iter().enumerate() {
            let payload = pattern(size, i as u8);
            socket.send_to(&payload, published).unwrap();
            let mut buf = vec![0u8; 65536];
            let (n, from) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer to {size} bytes: {e}"));
            assert_eq!(from, published, "the answer comes from the published port");
            let reply = &buf[..n];
            let line_end = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
            let answer = AnswerAt::parse(&String::from_utf8_lossy(&reply[..line_end])).unwrap();
            assert_eq!(answer.server, "c1");
            assert_eq!(
                answer.saw, local,
                "the container saw the client's own address"
            );
            assert_eq!(
                reply.len() - line_end,
                size,
                "the answer to {size} bytes came whole"
            );
            assert!(
                reply[line_end..] == payload[..],
                "the echo of {size} bytes is intact"
            );
        }
        local
    });
    let lens: Vec<usize> = server.seen().iter().map(|s| s.len).collect();
    assert_eq!(lens, sizes, "the container got each datagram whole");
    for seen in server.seen() {
        assert_eq!(seen.peer, local);
    }

    // They did travel as fragments, both ways, each translated.
    let c1_ip = c1.ip(family);
    let host_ip = net.host_ip(family);
    let in_container: Vec<(IpAddr, IpAddr, bool)> = at_container
        .finish()
        .unwrap()
        .iter()
        .filter(|f| f.incoming())
        .filter_map(|f| fragment_of(&f.data))
        .collect();
    let in_client: Vec<(IpAddr, IpAddr, bool)> = at_client
        .finish()
        .unwrap()
        .iter()
        .filter(|f| f.incoming())
        .filter_map(|f| fragment_of(&f.data))
        .collect();
    assert!(
        in_container.len() >= 2 * sizes.len(),
        "fragments reached the container: {in_container:?}"
    );
    assert!(
        in_container
            .iter()
            .all(|&(s, d, _)| (s, d) == (client_ip, c1_ip)),
        "every fragment the container got was translated to it: {in_container:?}"
    );
    assert!(
        in_client.len() >= 2 * sizes.len(),
        "the answers reached the client as fragments: {in_client:?}"
    );
    assert!(
        in_client
            .iter()
            .all(|&(s, d, _)| (s, d) == (host_ip, client_ip)),
        "every answer fragment comes from the host's address: {in_client:?}"
    );
}

fn domain_of(family: Family) -> Domain {
    match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    }
}

// --- S14: ICMP errors ---

// S14, IPv4, XDP: behind a router whose link to the client has MTU 1280, a 200 kB TCP download
// from the container completes with DF set: the router's "fragmentation needed" about the
// container's segment (sent to the published address) is translated back to the container,
// whose route cache then shows MTU 1280.
#[test]
fn s14_v4_xdp_pmtu_discovery_through_translation_completes_download() {
    s14_pmtu(Family::V4, Hook::Xdp);
}

// S14 PMTU, IPv4, TC hook.
#[test]
fn s14_v4_tc_pmtu_discovery_through_translation_completes_download() {
    s14_pmtu(Family::V4, Hook::Tc);
}

// S14 PMTU, IPv6 ("packet too big"), XDP.
#[test]
fn s14_v6_xdp_pmtu_discovery_through_translation_completes_download() {
    s14_pmtu(Family::V6, Hook::Xdp);
}

// S14 PMTU, IPv6, TC hook.
#[test]
fn s14_v6_tc_pmtu_discovery_through_translation_completes_download() {
    s14_pmtu(Family::V6, Hook::Tc);
}

const DOWNLOAD: usize = 200_000;

fn s14_pmtu(family: Family, hook: Hook) {
    let net = topology(&Options {
        containers: &["c1"],
        ipv6: true,
        router_mtu: Some(1280),
        ..Options::default()
    });
    let c1 = &net.containers[0];
    let _server = servers::tcp_download_at(&c1.ns, any(family, 80), DOWNLOAD).unwrap();
    let _instance = start(&net, hook, &[wildcard(8080, 80, false, c1.ip(family))], &[]);
    let published = at(net.host_ip(family), 8080);
    let client_ip = net.client_ip(family);
    let capture = Capture::start(&c1.ns, "eth0").unwrap();

    let (local, body) = net.client.run(|| {
        let mut conn = servers::tcp_connect_at(None, published, ASK).unwrap();
        let local = conn.local_addr().unwrap();
        conn.write_all(b"get\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut body = Vec::new();
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) => panic!("download: {e}"),
            }
        }
        (local, body)
    });
    assert_eq!(
        body.len(),
        DOWNLOAD,
        "the download completes through a 1280-byte link"
    );
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == servers::download_byte(i)),
        "the download is intact"
    );

    let route = c1
        .ns
        .exec(
            "ip",
            &[family.ip_flag(), "route", "get", &client_ip.to_string()],
        )
        .unwrap();
    assert!(
        stdout(&route).contains("mtu 1280"),
        "the container learned the path MTU: {}",
        stdout(&route)
    );

    // What the container got: the router's error, translated inside and out, checksums right.
    let errors: Vec<packet::SeenIcmpError> = capture
        .finish()
        .unwrap()
        .iter()
        .filter(|f| f.incoming() && is_icmp_error(&f.data))
        .map(|f| packet::read_icmp_error(&f.data))
        .collect();
    let error = errors.first().expect("an ICMP error reached the container");
    let router = match family {
        Family::V4 => IpAddr::from(ROUTER_WAN_IP),
        Family::V6 => ROUTER_WAN_IP6.into(),
    };
    assert_eq!((error.src, error.dst), (router, c1.ip(family)), "{error:?}");
    assert_eq!(error.mtu, Some(1280), "{error:?}");
    assert!(
        error.ip_check_ok && error.icmp_check_ok,
        "checksums: {error:?}"
    );
    assert_eq!(
        error.quoted.src,
        at(c1.ip(family), 80),
        "inner source: {error:?}"
    );
    assert_eq!(error.quoted.dst, local, "inner destination: {error:?}");
    assert!(error.quoted.ip_check_ok, "inner IP checksum: {error:?}");
}

/// Whether a frame is an ICMP or ICMPv6 error (not an echo, not neighbour discovery).
fn is_icmp_error(frame: &[u8]) -> bool {
    let Some(ether_type) = frame.get(12..14) else {
        return false;
    };
    match u16::from_be_bytes([ether_type[0], ether_type[1]]) {
        0x0800 => {
            let Some(ip) = frame.get(14..) else {
                return false;
            };
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            ip.get(9) == Some(&packet::ICMP)
                && ip
                    .get(ihl)
                    .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12))
        }
        0x86dd => frame.get(20) == Some(&packet::ICMPV6) && frame.get(54).is_some_and(|&t| t < 128),
        _ => false,
    }
}

// S14, IPv4, XDP: a datagram to a published port whose container has nothing listening makes
// the container answer "port unreachable", which reaches the client translated (from the host,
// quoting the client's datagram to the published port): a connected socket gets ECONNREFUSED.
#[test]
fn s14_v4_xdp_port_unreachable_from_container_reaches_client_translated() {
    s14_unreachable(Family::V4, Hook::Xdp);
}

// S14 port unreachable, IPv4, TC hook.
#[test]
fn s14_v4_tc_port_unreachable_from_container_reaches_client_translated() {
    s14_unreachable(Family::V4, Hook::Tc);
}

// S14 port unreachable, IPv6, XDP.
#[test]
fn s14_v6_xdp_port_unreachable_from_container_reaches_client_translated() {
    s14_unreachable(Family::V6, Hook::Xdp);
}

// S14 port unreachable, IPv6, TC hook.
#[test]
fn s14_v6_tc_port_unreachable_from_container_reaches_client_translated() {
    s14_unreachable(Family::V6, Hook::Tc);
}

fn s14_unreachable(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let instance = start(
        &net,
        hook,
        &[wildcard(6000, 7000, true, c1.ip(family))],
        &[],
    );
    let published = at(net.host_ip(family), 6000);
    let client_ip = net.client_ip(family);
    let capture = Capture::start(&net.client, "eth0").unwrap();

    let (local, refused) = net.client.run(|| {
        let socket = UdpSocket::bind(at(client_ip, 0)).unwrap();
        socket.connect(published).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut refused = None;
        for _ in 0..3 {
            let _ = socket.send(b"anyone?");
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    refused = Some(e);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                other => panic!("unexpected: {other:?}"),
            }
        }
        (socket.local_addr().unwrap(), refused)
    });
    assert!(refused.is_some(), "the connected socket got ECONNREFUSED");

    let errors: Vec<packet::SeenIcmpError> = capture
        .finish()
        .unwrap()
        .iter()
        .filter(|f| f.incoming() && is_icmp_error(&f.data))
        .map(|f| packet::read_icmp_error(&f.data))
        .collect();
    let error = errors.first().expect("an ICMP error reached the client");
    let (icmp_type, code) = match family {
        Family::V4 => (3, 3),
        Family::V6 => (1, 4),
    };
    assert_eq!(
        (error.icmp_type, error.code),
        (icmp_type, code),
        "{error:?}"
    );
    assert_eq!(
        (error.src, error.dst),
        (net.host_ip(family), client_ip),
        "from the host's address: {error:?}"
    );
    assert!(
        error.ip_check_ok && error.icmp_check_ok,
        "checksums: {error:?}"
    );
    assert_eq!(error.quoted.src, local, "inner source: {error:?}");
    assert_eq!(error.quoted.dst, published, "inner destination: {error:?}");
    assert!(error.quoted.ip_check_ok, "inner IP checksum: {error:?}");
    let stats = stats(&net, &instance);
    assert!(reason(&stats, "tc_reply.translated") >= 1, "{stats}");
}

// --- S15: UDP checksum 0 ---

// S15, IPv4, XDP: a datagram sent with checksum 0 ("none", SO_NO_CHECK) reaches the container
// with checksum still 0 (so the container's kernel accepts it), and the container's answer,
// sent with checksum 0 too, reaches the client with 0.
#[test]
fn s15_v4_xdp_udp_checksum_zero_stays_zero_and_is_answered() {
    s15_zero(Hook::Xdp);
}

// S15 checksum 0, TC hook.
#[test]
fn s15_v4_tc_udp_checksum_zero_stays_zero_and_is_answered() {
    s15_zero(Hook::Tc);
}

const SO_NO_CHECK: i32 = 11;

/// The UDP checksum fields of incoming frames to `to`, captured.
fn udp_checks_to(frames: &[raw::Frame], to: SocketAddr) -> Vec<u16> {
    frames
        .iter()
        .filter(|f| f.incoming())
        .filter(|f| fragment_of(&f.data).is_none())
        .filter_map(|f| {
            let (_, dport, check) = raw::udp_ports_and_check(&f.data)?;
            let seen = packet::read_ip(&f.data);
            (seen.dst == to && dport == to.port()).then_some(check)
        })
        .collect()
}

fn s15_zero(hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_53 = at(c1.ip(Family::V4), 53);
    let _instance = start(
        &net,
        hook,
        &[wildcard(5353, 53, true, c1.ip(Family::V4))],
        &[],
    );
    let published = at(net.host_ip(Family::V4), 5353);
    let client_ip = net.client_ip(Family::V4);
    /// A UDP socket that sends with checksum 0.
    fn no_check_socket(bind: SocketAddr) -> UdpSocket {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        setsockopt_int(&socket, libc::SOL_SOCKET, SO_NO_CHECK, 1);
        socket.bind(&bind.into()).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        socket.into()
    }
    // The container answers with checksum 0 too.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let container = c1.ns.spawn(move || {
        let socket = no_check_socket(any(Family::V4, 53));
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 256];
        let (n, peer) = socket.recv_from(&mut buf).expect("the datagram reaches c1");
        socket
            .send_to(format!("c1 saw {peer}\n").as_bytes(), peer)
            .unwrap();
        (peer, buf[..n].to_vec())
    });
    ready_rx.recv_timeout(ASK).unwrap();
    let at_container = Capture::start(&c1.ns, "eth0").unwrap();
    let at_client = Capture::start(&net.client, "eth0").unwrap();
    let (local, answer, from) = net.client.run(|| {
        let socket = no_check_socket(at(client_ip, 0));
        socket.send_to(b"who", published).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = socket.recv_from(&mut buf).expect("an answer");
        let answer = AnswerAt::parse(&String::from_utf8_lossy(&buf[..n])).unwrap();
        (socket.local_addr().unwrap(), answer, from)
    });
    let (peer, got) = container.join().unwrap();
    assert_eq!((peer, got.as_slice()), (local, &b"who"[..]));
    assert_eq!((answer.server.as_str(), answer.saw), ("c1", local));
    assert_eq!(from, published);
    let checks = udp_checks_to(&at_container.finish().unwrap(), c1_53);
    assert_eq!(checks, [0], "the container got checksum 0, as sent");
    let checks = udp_checks_to(&at_client.finish().unwrap(), local);
    assert_eq!(
        checks,
        [0],
        "the client got the answer's checksum 0, as sent"
    );
}

// S15, IPv4, XDP: a datagram whose checksum, once translated, computes to 0 reaches the
// container with 0xffff (0 would mean "none"), and is answered.
#[test]
fn s15_v4_xdp_checksum_computing_to_zero_is_sent_as_ffff() {
    s15_ffff(Family::V4, Hook::Xdp);
}

// S15 0xffff, IPv4, TC hook.
#[test]
fn s15_v4_tc_checksum_computing_to_zero_is_sent_as_ffff() {
    s15_ffff(Family::V4, Hook::Tc);
}

// S15 0xffff, IPv6, where 0 is not allowed at all: the container's kernel would drop it.
#[test]
fn s15_v6_xdp_checksum_computing_to_zero_is_sent_as_ffff() {
    s15_ffff(Family::V6, Hook::Xdp);
}

// S15 0xffff, IPv6, TC hook.
#[test]
fn s15_v6_tc_checksum_computing_to_zero_is_sent_as_ffff() {
    s15_ffff(Family::V6, Hook::Tc);
}

/// The 16-bit ones' complement sum of `data` added to `sum` (RFC 1071), unfolded.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `base` (even length) and two more bytes chosen so that the UDP checksum of the datagram
/// from `src` to `dst` carrying them computes to 0.
fn payload_whose_checksum_is_zero(src: SocketAddr, dst: SocketAddr, base: &[u8]) -> Vec<u8> {
    assert!(base.len().is_multiple_of(2));
    let udp_len = 8 + base.len() + 2;
    let mut sum = 0u32;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
            sum = ones_sum(sum, &[0, packet::UDP]);
            sum = ones_sum(sum, &(udp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
            sum = ones_sum(sum, &(udp_len as u32).to_be_bytes());
            sum = ones_sum(sum, &[0, 0, 0, packet::UDP]);
        }
        _ => unreachable!(),
    }
    sum = ones_sum(sum, &src.port().to_be_bytes());
    sum = ones_sum(sum, &dst.port().to_be_bytes());
    sum = ones_sum(sum, &(udp_len as u16).to_be_bytes());
    sum = ones_sum(sum, base);
    // With this word the sum is 0xffff, whose complement, the checksum, is 0.
    let word = !fold(sum);
    let mut payload = base.to_vec();
    payload.extend_from_slice(&word.to_be_bytes());
    payload
}

fn s15_ffff(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let server = servers::udp_at(&c1.ns, "c1", any(family, 53)).unwrap();
    let _instance = start(&net, hook, &[wildcard(5353, 53, true, c1.ip(family))], &[]);
    let published = at(net.host_ip(family), 5353);
    let from = at(net.client_ip(family), 41_234);
    let to = at(c1.ip(family), 53);
    let payload = payload_whose_checksum_is_zero(from, to, b"zero-sum");
    let capture = Capture::start(&c1.ns, "eth0").unwrap();
    let (answer, source) = net.client.run(|| {
        let socket = UdpSocket::bind(from).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        socket.send_to(&payload, published).unwrap();
        let mut buf = [0u8; 256];
        let (n, source) = socket
            .recv_from(&mut buf)
            .expect("the container answers the datagram");
        (
            AnswerAt::parse(&String::from_utf8_lossy(&buf[..n])).unwrap(),
            source,
        )
    });
    assert_eq!((answer.server.as_str(), answer.saw), ("c1", from));
    assert_eq!(source, published);
    assert_eq!(
        server.seen()[0].head,
        payload,
        "the payload arrived as sent"
    );
    let checks = udp_checks_to(&capture.finish().unwrap(), to);
    assert_eq!(checks, [0xffff], "a computed 0 is sent as 0xffff");
}

// S7: a host process whose socket is IPv6 but talks IPv4 through a v4-mapped address (as
// Java's, and other dual-stack runtimes', sockets do for `localhost` and IPv4 literals)
// reaches the container like an IPv4 socket does: the kernel sends IPv4, and with Docker's
// proxy or DNAT rules it gets through.
#[test]
fn s7_v4_mapped_ipv6_socket_in_cgroup_reaches_container() {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let _tcp = servers::tcp_at(&c1.ns, "c1", any(Family::V4, 80)).unwrap();
    let _udp = servers::udp_at(&c1.ns, "c1", any(Family::V4, 53)).unwrap();
    let cgroup = TestCgroup::new("s7m").unwrap();
    let cgroup_path = cgroup.path().to_string_lossy().into_owned();
    let target = c1.ip(Family::V4);
    let _instance = start(
        &net,
        Hook::Xdp,
        &[
            wildcard(8080, 80, false, target),
            wildcard(5353, 53, true, target),
        ],
        &["--cgroup", &cgroup_path],
    );
    for ip in [Ipv4Addr::LOCALHOST, HOST_IP] {
        let mapped = IpAddr::V6(ip.to_ipv6_mapped());
        for (mode, port) in [("tcp", 8080), ("udp", 5353)] {
            let to = at(mapped, port);
            let got = host_process(&net, Some(&cgroup), mode, to, Duration::from_millis(1500));
            assert!(got.ok, "{mode} to {to}: {got:?}");
            assert_eq!(got.answer().server, "c1", "{mode} to {to}");
        }
    }
}

// S14, IPv4, XDP: the other direction: the client's own "port unreachable" about a datagram the
// container sent it through the translation (the client's socket is gone) reaches the container
// translated, so the container's connected socket gets ECONNREFUSED.
#[test]
fn s14_v4_xdp_port_unreachable_from_client_reaches_container_translated() {
    s14_unreachable_back(Family::V4, Hook::Xdp);
}

// S14, the client's port unreachable, IPv4, TC hook.
#[test]
fn s14_v4_tc_port_unreachable_from_client_reaches_container_translated() {
    s14_unreachable_back(Family::V4, Hook::Tc);
}

// S14, the client's port unreachable, IPv6, XDP.
#[test]
fn s14_v6_xdp_port_unreachable_from_client_reaches_container_translated() {
    s14_unreachable_back(Family::V6, Hook::Xdp);
}

// S14, the client's port unreachable, IPv6, TC hook.
#[test]
fn s14_v6_tc_port_unreachable_from_client_reaches_container_translated() {
    s14_unreachable_back(Family::V6, Hook::Tc);
}

fn s14_unreachable_back(family: Family, hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_ip = c1.ip(family);
    let _instance = start(&net, hook, &[wildcard(5353, 53, true, c1_ip)], &[]);
    let published = at(net.host_ip(family), 5353);
    let client_ip = net.client_ip(family);

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
    let container = c1.ns.spawn(move || {
        let socket = UdpSocket::bind(any(family, 53)).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 256];
        let (_, peer) = socket.recv_from(&mut buf).expect("the client's datagram");
        socket.connect(peer).unwrap();
        socket.send(b"hello").unwrap();
        gone_rx
            .recv_timeout(ASK)
            .expect("the client closes its socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        for _ in 0..3 {
            let _ = socket.send(b"still there?");
            match socket.recv(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return (peer, true),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                other => panic!("unexpected: {other:?}"),
            }
        }
        (peer, false)
    });
    ready_rx.recv_timeout(ASK).unwrap();
    let capture = Capture::start(&c1.ns, "eth0").unwrap();
    let local = net.client.run(|| {
        let socket = UdpSocket::bind(at(client_ip, 0)).unwrap();
        socket.set_read_timeout(Some(ASK)).unwrap();
        socket.send_to(b"hi", published).unwrap();
        let mut buf = [0u8; 64];
        let (_, from) = socket.recv_from(&mut buf).expect("the container's hello");
        assert_eq!(from, published);
        socket.local_addr().unwrap()
    });
    // The client's socket is closed: what the container sends now is answered by the
    // client's kernel with "port unreachable".
    gone_tx.send(()).unwrap();
    let (peer, refused) = container.join().unwrap();
    assert_eq!(peer, local, "the container saw the client's own address");
    assert!(refused, "the container's connected socket got ECONNREFUSED");

    let errors: Vec<packet::SeenIcmpError> = capture
        .finish()
        .unwrap()
        .iter()
        .filter(|f| f.incoming() && is_icmp_error(&f.data))
        .map(|f| packet::read_icmp_error(&f.data))
        .collect();
    let error = errors.first().expect("an ICMP error reached the container");
    assert_eq!((error.src, error.dst), (client_ip, c1_ip), "{error:?}");
    assert!(
        error.ip_check_ok && error.icmp_check_ok,
        "checksums: {error:?}"
    );
    assert_eq!(error.quoted.src, at(c1_ip, 53), "inner source: {error:?}");
    assert_eq!(error.quoted.dst, local, "inner destination: {error:?}");
    assert!(error.quoted.ip_check_ok, "inner IP checksum: {error:?}");
}

// S13, IPv6: `portmap rm` takes IPv6 host sides as selectors (`[::1]:5000`,
// `[2001:db8::1]:5001/udp`, `[::]:8080`), and each removed binding stops at once.
#[test]
fn s13_v6_rm_by_ipv6_host_address_selectors() {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_6 = c1.ip(Family::V6);
    let _tcp = servers::tcp_at(&c1.ns, "c1", any(Family::V6, 80)).unwrap();
    let _udp = servers::udp_at(&c1.ns, "c1", any(Family::V6, 5001)).unwrap();
    let instance = start(
        &net,
        Hook::Xdp,
        &[
            format!("[::1]:5000:5000={c1_6}"),
            format!("[2001:db8::1]:5001:5001/udp={c1_6}"),
            format!("8080:80={c1_6}"),
        ],
        &[],
    );
    let host = net.host_ip(Family::V6);
    let client = net.client_ip(Family::V6);
    net.client
        .run(|| servers::udp_ask_at(at(client, 0), at(host, 5001), ASK))
        .expect("5001/udp answers before");
    net.client
        .run(|| servers::tcp_ask_at(None, at(host, 8080), ASK))
        .expect("8080 answers before");
    for selector in ["[::1]:5000", "[2001:db8::1]:5001/udp", "[::]:8080"] {
        let out = ctl(&net, &instance, &["rm", selector]);
        assert!(out.status.success(), "rm {selector}: {}", stderr(&out));
    }
    let ls = stdout(&ctl(&net, &instance, &["ls"]));
    assert!(ls.trim().is_empty(), "everything removed:\n{ls}");
    let udp = net
        .client
        .run(|| servers::udp_ask_at(at(client, 0), at(host, 5001), NO_ANSWER));
    assert!(udp.is_err(), "5001/udp stopped: {udp:?}");
    let tcp = net
        .client
        .run(|| servers::tcp_ask_at(None, at(host, 8080), NO_ANSWER));
    assert!(tcp.is_err(), "8080 stopped: {tcp:?}");
}

// S11: a dual-stack spec without a host port (`80=web`, web with both an IPv4 and an IPv6
// address) gets one ephemeral port, the same on `0.0.0.0` and `[::]`, as Docker does, and the
// LAN client reaches the container through it in both families.
#[test]
fn s11_dual_stack_ephemeral_port_is_the_same_for_both_families() {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let _servers: Vec<Server> = Family::BOTH
        .iter()
        .map(|&f| servers::tcp_at(&c1.ns, "c1", any(f, 80)).unwrap())
        .collect();
    let web4 = format!("web={}", c1.ip(Family::V4));
    let web6 = format!("web={}", c1.ip(Family::V6));
    let instance = start(
        &net,
        Hook::Xdp,
        &["80=web".to_owned()],
        &["--container", &web4, "--container", &web6],
    );
    let ls = ctl(&net, &instance, &["ls", "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let bindings = ls["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 2, "one binding per family: {ls}");
    let ports: Vec<u64> = bindings
        .iter()
        .map(|b| b["host_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports[0], ports[1], "the same port for both families: {ls}");
    assert_ne!(ports[0], 0);
    let hosts: Vec<&str> = bindings
        .iter()
        .map(|b| b["host_ip"].as_str().unwrap())
        .collect();
    assert!(hosts.contains(&"0.0.0.0") && hosts.contains(&"::"), "{ls}");
    let port = u16::try_from(ports[0]).unwrap();
    for family in Family::BOTH {
        let to = at(net.host_ip(family), port);
        let answer = net
            .client
            .run(|| servers::tcp_ask_at(None, to, ASK))
            .unwrap_or_else(|e| panic!("{to}: {e:#}"));
        assert_eq!(
            (answer.server.as_str(), answer.saw.ip()),
            ("c1", net.client_ip(family))
        );
    }
}

// S13, IPv4: a TCP connection open when its binding is removed is not carried on: its next
// request gets no answer from the container (the translation ended with the binding).
#[test]
fn s13_v4_open_tcp_connection_ends_with_its_binding() {
    s13_open_tcp(Family::V4);
}

// S13, IPv6.
#[test]
fn s13_v6_open_tcp_connection_ends_with_its_binding() {
    s13_open_tcp(Family::V6);
}

fn s13_open_tcp(family: Family) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let tcp = servers::tcp_at(&c1.ns, "c1", any(family, 80)).unwrap();
    let instance = start(
        &net,
        Hook::Xdp,
        &[wildcard(8080, 80, false, c1.ip(family))],
        &[],
    );
    let published = at(net.host_ip(family), 8080);
    let mut conn = net
        .client
        .run(|| servers::tcp_connect_at(None, published, NO_ANSWER))
        .unwrap();
    servers::tcp_ask_on_at(&mut conn).expect("answered before the removal");
    let removed = ctl(&net, &instance, &["rm", "8080"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let after = servers::tcp_ask_on_at(&mut conn);
    assert!(after.is_err(), "answered after the removal: {after:?}");
    assert_eq!(tcp.seen().len(), 1, "one connection, and no new one");
    let flows = stats(&net, &instance)["flows"].as_u64().unwrap();
    assert_eq!(flows, 0, "no flow is left");
}

// --- S1-S5, IPv6: the LAN client's own requests ---

/// A counter (`to_container_packets`, `to_client_packets`, `flows`...) of the binding whose host
/// side is `host` and protocol `proto`, from `stats --json`.
fn binding_counter(stats: &serde_json::Value, proto: &str, host: SocketAddr, name: &str) -> u64 {
    let bindings = stats["bindings"].as_array().expect("a bindings array");
    let binding = bindings
        .iter()
        .find(|b| {
            b["proto"] == proto
                && b["host_port"] == host.port()
                && b["host_ip"]
                    .as_str()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    == Some(host.ip())
        })
        .unwrap_or_else(|| panic!("no {proto} binding on {host} in {stats}"));
    binding["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} on {proto} {host} in {stats}"))
}

/// The IPv6 packets of protocol `proto` (TCP or UDP, no extension header) that the captured
/// interface received, read back with their checksums verified.
fn incoming_v6(frames: &[raw::Frame], proto: u8) -> Vec<packet::SeenIp> {
    frames
        .iter()
        .filter(|f| {
            f.incoming()
                && f.data.len() >= 14 + 40 + 8
                && u16::from_be_bytes([f.data[12], f.data[13]]) == packet::ETH_P_IPV6
                && f.data[14 + 6] == proto
        })
        .map(|f| packet::read_ip(&f.data))
        .collect()
}

/// Sends one datagram to `to` on an open socket and waits (its read timeout) for the answer;
/// returns it and the address it came from.
fn udp_ask_on(socket: &UdpSocket, to: SocketAddr) -> anyhow::Result<(AnswerAt, SocketAddr)> {
    socket.send_to(b"who", to)?;
    let mut buf = [0u8; 2048];
    let (n, source) = socket.recv_from(&mut buf)?;
    Ok((
        AnswerAt::parse(&String::from_utf8_lossy(&buf[..n]))?,
        source,
    ))
}

// S1, IPv6, XDP: the LAN client's TCP connection to [2001:db8::1]:8080, published to
// [c1]:80, carries requests and answers both ways; the container sees the client's own
// address and port; every segment the client receives comes from [2001:db8::1]:8080, with a
// right checksum, and none from the container's address.
#[test]
fn s1_v6_xdp_tcp_lan_client_reaches_container_with_its_own_source() {
    s1_v6(Hook::Xdp);
}

// S1, IPv6, TC hook.
#[test]
fn s1_v6_tc_tcp_lan_client_reaches_container_with_its_own_source() {
    s1_v6(Hook::Tc);
}

fn s1_v6(hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_ip = c1.ip(Family::V6);
    let server = servers::tcp_at(&c1.ns, "c1", any(Family::V6, 80)).unwrap();
    let instance = start(&net, hook, &[wildcard(8080, 80, false, c1_ip)], &[]);
    let published = at(net.host_ip(Family::V6), 8080);
    let client_ip = net.client_ip(Family::V6);

    let at_client = Capture::start(&net.client, "eth0").unwrap();
    let at_container = Capture::start(&c1.ns, "eth0").unwrap();
    const ASKS: usize = 5;
    let (local, peer, answers) = net.client.run(|| {
        let mut conn = servers::tcp_connect_at(None, published, ASK)
            .unwrap_or_else(|e| panic!("connecting to {published}: {e:#}"));
        let answers: Vec<AnswerAt> = (0..ASKS)
            .map(|i| {
                servers::tcp_ask_on_at(&mut conn)
                    .unwrap_or_else(|e| panic!("ask {i} on the connection to {published}: {e:#}"))
            })
            .collect();
        (
            conn.local_addr().unwrap(),
            conn.peer_addr().unwrap(),
            answers,
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let (at_client, at_container) = (at_client.finish().unwrap(), at_container.finish().unwrap());

    assert_eq!(
        local.ip(),
        client_ip,
        "the client connected from its own address"
    );
    assert_eq!(
        peer, published,
        "the client's socket is connected to the published address"
    );
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.server, "c1", "ask {i} reached c1");
        assert_eq!(
            answer.saw, local,
            "ask {i}: the container sees the client's own address and port"
        );
    }
    assert_eq!(server.seen().len(), 1, "one connection reached c1");

    // What the client received: all from the published address, checksums right.
    let received: Vec<_> = incoming_v6(&at_client, packet::TCP)
        .into_iter()
        .filter(|p| p.dst == local)
        .collect();
    assert!(
        received.len() > ASKS,
        "the SYN-ACK and {ASKS} answers reached the client: {received:?}"
    );
    for p in &received {
        assert_eq!(
            p.src, published,
            "a segment to the client comes from {}",
            p.src
        );
        assert_eq!(
            p.l4_check_ok,
            Some(true),
            "TCP checksum at the client: {p:?}"
        );
    }
    // What the container received: all from the client's own socket, to c1:80.
    let delivered: Vec<_> = incoming_v6(&at_container, packet::TCP)
        .into_iter()
        .filter(|p| p.dst == at(c1_ip, 80))
        .collect();
    assert!(
        delivered.len() > ASKS,
        "the SYN and {ASKS} requests reached the container: {delivered:?}"
    );
    for p in &delivered {
        assert_eq!(
            p.src, local,
            "a segment to c1 comes from the client's socket"
        );
        assert_eq!(p.l4_check_ok, Some(true), "TCP checksum at c1: {p:?}");
    }

    let stats = stats(&net, &instance);
    let host_side = any(Family::V6, 8080);
    assert!(
        binding_counter(&stats, "tcp", host_side, "to_container_packets") > ASKS as u64,
        "packets to the container are counted: {stats}"
    );
    assert!(
        binding_counter(&stats, "tcp", host_side, "to_client_packets") > ASKS as u64,
        "packets to the client are counted: {stats}"
    );
    let forwarded_by = match hook {
        Hook::Xdp => "tc_forward.redirected",
        Hook::Tc => "uplink.translated",
    };
    assert!(
        reason(&stats, forwarded_by) > ASKS as u64,
        "{forwarded_by} counts the client's segments: {stats}"
    );
    assert!(
        reason(&stats, "tc_port.translated") > ASKS as u64,
        "tc_port.translated counts the container's segments, on its bridge port: {stats}"
    );
}

// S2, IPv6, XDP: 256 UDP flows (4 client addresses x 64 source ports) to [2001:db8::1]:5353,
// published to [c1]:53: every one is answered from exactly [2001:db8::1]:5353, c1 saw each
// flow's own source, and each is one live flow of the binding.
#[test]
fn s2_v6_xdp_udp_many_flows_each_answered_from_the_published_port() {
    s2_v6(Hook::Xdp);
}

// S2, IPv6, TC hook.
#[test]
fn s2_v6_tc_udp_many_flows_each_answered_from_the_published_port() {
    s2_v6(Hook::Tc);
}

fn s2_v6(hook: Hook) {
    let net = topology(&Options {
        ipv6: true,
        extra_client_addrs: 3,
        ..Options::default()
    });
    let c1 = &net.containers[0];
    let server = servers::udp_at(&c1.ns, "c1", any(Family::V6, 53)).unwrap();
    let instance = start(
        &net,
        hook,
        &[wildcard(5353, 53, true, c1.ip(Family::V6))],
        &[],
    );
    let published = at(net.host_ip(Family::V6), 5353);
    assert_eq!(net.client_addrs6.len(), 4, "four client addresses");
    let flows: Vec<SocketAddr> = net
        .client_addrs6
        .iter()
        .flat_map(|&ip| (0..64).map(move |i| at(IpAddr::V6(ip), 20_000 + i)))
        .collect();

    let started = Instant::now();
    // The first flow that gets no answer ends the loop: at most one ASK is waited for.
    let results = net.client.run(|| {
        flows
            .iter()
            .map(|&from| {
                servers::udp_ask_at(from, published, ASK)
                    .map(|r| (from, r))
                    .map_err(|e| anyhow::anyhow!("flow {from}: {e:#}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    });
    let results = results.unwrap_or_else(|e| panic!("every flow is answered: {e:#}"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "256 flows took {:?}",
        started.elapsed()
    );
    assert_eq!(results.len(), 256);
    for (from, (answer, source)) in &results {
        assert_eq!(
            *source, published,
            "flow {from}: the answer comes from the published address"
        );
        assert_eq!(answer.server, "c1", "flow {from}: c1 answered");
        assert_eq!(
            answer.saw, *from,
            "flow {from}: c1 saw the flow's own source"
        );
    }
    let mut seen: Vec<SocketAddr> = server.seen().iter().map(|s| s.peer).collect();
    seen.sort();
    let mut sent = flows.clone();
    sent.sort();
    assert_eq!(seen, sent, "c1 got exactly one datagram from each flow");

    let stats = stats(&net, &instance);
    let host_side = any(Family::V6, 5353);
    assert_eq!(
        binding_flows(&stats, "udp", host_side),
        256,
        "one live flow per source: {stats}"
    );
    assert_eq!(
        binding_counter(&stats, "udp", host_side, "to_client_packets"),
        256,
        "every answer went back through the binding: {stats}"
    );
}

// S3, IPv6, XDP: the client's requests to ports the host does not publish ([2001:db8::1]:8081,
// and :80, the container's port) are not translated (TCP refused by the host, UDP unanswered,
// nothing reaches c1); the client's requests straight to c1's address, routed by the host, are
// not translated either: c1 sees the client, its answer comes from its own address. With
// Docker's ip6tables rules in place, that direct access is dropped, as Docker does, while the
// published port keeps working.
#[test]
fn s3_v6_unpublished_port_and_direct_container_address_are_not_translated() {
    s3_v6(Hook::Xdp);
}

// S3, IPv6, TC hook.
#[test]
fn s3_v6_tc_unpublished_port_and_direct_container_address_are_not_translated() {
    s3_v6(Hook::Tc);
}

fn s3_v6(hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_ip = c1.ip(Family::V6);
    let tcp = servers::tcp_at(&c1.ns, "c1", any(Family::V6, 80)).unwrap();
    let udp = servers::udp_at(&c1.ns, "c1", any(Family::V6, 53)).unwrap();
    let instance = start(
        &net,
        hook,
        &[
            wildcard(8080, 80, false, c1_ip),
            wildcard(5353, 53, true, c1_ip),
        ],
        &[],
    );
    let host = net.host_ip(Family::V6);
    let client_ip = net.client_ip(Family::V6);

    for port in [8081, 80] {
        let refused = net
            .client
            .run(|| servers::tcp_ask_at(None, at(host, port), ASK))
            .expect_err("nothing listens on an unpublished port of the host");
        assert!(
            format!("{refused:#}").contains("refused"),
            "TCP to [{host}]:{port} is refused by the host: {refused:#}"
        );
    }
    for port in [5354, 53] {
        let unanswered = net
            .client
            .run(|| servers::udp_ask_at(at(client_ip, 0), at(host, port), NO_ANSWER));
        assert!(
            unanswered.is_err(),
            "UDP to [{host}]:{port} is not answered: {unanswered:?}"
        );
    }
    assert_eq!(
        settled_count(&tcp),
        0,
        "no connection to an unpublished port reached c1"
    );
    assert_eq!(
        udp.seen().len(),
        0,
        "no datagram to an unpublished port reached c1"
    );

    // Straight to the container's address, no Docker rules: routed, untouched.
    let (local, answer) = net.client.run(|| {
        let mut conn = servers::tcp_connect_at(None, at(c1_ip, 80), ASK)
            .unwrap_or_else(|e| panic!("direct TCP to [{c1_ip}]:80: {e:#}"));
        let answer = servers::tcp_ask_on_at(&mut conn).expect("an answer on the direct connection");
        (conn.local_addr().unwrap(), answer)
    });
    assert_eq!(answer.server, "c1", "direct TCP reaches c1");
    assert_eq!(
        answer.saw, local,
        "direct TCP: c1 sees the client's own socket"
    );
    let from = at(client_ip, 31_000);
    let (answer, source) = net
        .client
        .run(|| servers::udp_ask_at(from, at(c1_ip, 53), ASK))
        .unwrap_or_else(|e| panic!("direct UDP to [{c1_ip}]:53: {e:#}"));
    assert_eq!(
        answer.saw, from,
        "direct UDP: c1 sees the client's own socket"
    );
    assert_eq!(
        source,
        at(c1_ip, 53),
        "direct UDP: the answer comes from c1's own address, not the published one"
    );

    let untranslated = stats(&net, &instance);
    for reason_name in [
        "uplink.translated",
        "tc_forward.redirected",
        "tc_reply.translated",
        "tc_port.translated",
    ] {
        assert_eq!(
            reason(&untranslated, reason_name),
            0,
            "{reason_name}: nothing was translated: {untranslated}"
        );
    }
    assert!(
        reason(&untranslated, "uplink.pass.no_binding") >= 6,
        "the uplink hook passed each request as no binding's: {untranslated}"
    );
    assert_eq!(
        untranslated["flows"], 0,
        "no flow was recorded: {untranslated}"
    );

    // Docker's ip6tables rules for the bridge: direct access from outside is dropped.
    let subnet = portmap_tests::topology::BRIDGE_SUBNET6;
    for rule in portmap_tests::topology::docker_rules(BRIDGE, subnet) {
        let rule = rule.replace("127.0.0.0/8", "::1/128");
        let args: Vec<&str> = rule.split_whitespace().collect();
        net.host
            .exec("ip6tables", &args)
            .unwrap_or_else(|e| panic!("ip6tables {rule}: {e:#}"));
    }
    let (tcp_before, udp_before) = (tcp.seen().len(), udp.seen().len());
    let dropped = net
        .client
        .run(|| servers::tcp_ask_at(None, at(c1_ip, 80), NO_ANSWER))
        .expect_err("Docker's isolation rule drops direct access");
    assert!(
        format!("{dropped:#}").contains("timed out"),
        "direct TCP is dropped, not refused: {dropped:#}"
    );
    let dropped = net
        .client
        .run(|| servers::udp_ask_at(at(client_ip, 0), at(c1_ip, 53), NO_ANSWER));
    assert!(dropped.is_err(), "direct UDP is dropped: {dropped:?}");
    assert_eq!(
        settled_count(&tcp),
        tcp_before,
        "no direct connection reached c1"
    );
    assert_eq!(
        udp.seen().len(),
        udp_before,
        "no direct datagram reached c1"
    );

    let answer = net
        .client
        .run(|| servers::tcp_ask_at(None, at(host, 8080), ASK))
        .unwrap_or_else(|e| panic!("the published port under Docker's rules: {e:#}"));
    assert_eq!(
        (answer.server.as_str(), answer.saw.ip()),
        ("c1", client_ip),
        "the published port still reaches c1 with the client's address"
    );
}

// S4, IPv6, XDP: `[::]:8000:8000` to frontend and `[::]:5000:8000` to backend, both serving on
// port 8000, TCP and UDP: with a connection (and a socket) open to each host port at once and
// used in turn, each host port reaches its own container, which sees the client, and each UDP
// answer comes from the host port its datagram went to.
#[test]
fn s4_v6_two_services_same_container_port_each_reached_by_its_host_port() {
    s4_v6(Hook::Xdp);
}

// S4, IPv6, TC hook.
#[test]
fn s4_v6_tc_two_services_same_container_port_each_reached_by_its_host_port() {
    s4_v6(Hook::Tc);
}

fn s4_v6(hook: Hook) {
    let net = topology(&Options {
        ipv6: true,
        containers: &["frontend", "backend"],
        ..Options::default()
    });
    let (front, back) = (net.container("frontend"), net.container("backend"));
    let (front_ip, back_ip) = (front.ip(Family::V6), back.ip(Family::V6));
    let _servers: Vec<Server> = [front, back]
        .iter()
        .flat_map(|c| {
            [
                servers::tcp_at(&c.ns, &c.name, any(Family::V6, 8000)).unwrap(),
                servers::udp_at(&c.ns, &c.name, any(Family::V6, 8000)).unwrap(),
            ]
        })
        .collect();
    let instance = start(
        &net,
        hook,
        &[
            format!("[::]:8000:8000={front_ip}"),
            format!("[::]:5000:8000={back_ip}"),
            format!("[::]:8000:8000/udp={front_ip}"),
            format!("[::]:5000:8000/udp={back_ip}"),
        ],
        &[],
    );
    for line in [
        format!("8000/tcp -> [::]:8000 => [{front_ip}]:8000"),
        format!("8000/tcp -> [::]:5000 => [{back_ip}]:8000"),
        format!("8000/udp -> [::]:8000 => [{front_ip}]:8000"),
        format!("8000/udp -> [::]:5000 => [{back_ip}]:8000"),
    ] {
        assert!(
            instance.banner.contains(&line),
            "run announces {line:?}:\n{}",
            instance.banner
        );
    }
    let host = net.host_ip(Family::V6);
    let client_ip = net.client_ip(Family::V6);
    let routes = [(8000, "frontend"), (5000, "backend")];

    let mut conns: Vec<_> = routes
        .iter()
        .map(|&(port, _)| {
            net.client
                .run(|| servers::tcp_connect_at(None, at(host, port), ASK))
                .unwrap_or_else(|e| panic!("TCP to [{host}]:{port}: {e:#}"))
        })
        .collect();
    let sockets: Vec<UdpSocket> = routes
        .iter()
        .map(|_| {
            net.client.run(|| {
                let socket = UdpSocket::bind(at(client_ip, 0)).unwrap();
                socket.set_read_timeout(Some(ASK)).unwrap();
                socket
            })
        })
        .collect();
    for round in 0..3 {
        for (i, &(port, expected)) in routes.iter().enumerate() {
            let to = at(host, port);
            let answer = servers::tcp_ask_on_at(&mut conns[i])
                .unwrap_or_else(|e| panic!("round {round}, TCP to {to}: {e:#}"));
            assert_eq!(answer.server, expected, "round {round}: TCP to {to}");
            assert_eq!(
                answer.saw,
                conns[i].local_addr().unwrap(),
                "round {round}: TCP to {to}: {expected} sees the client's socket"
            );
            let (answer, source) = udp_ask_on(&sockets[i], to)
                .unwrap_or_else(|e| panic!("round {round}, UDP to {to}: {e:#}"));
            assert_eq!(answer.server, expected, "round {round}: UDP to {to}");
            assert_eq!(
                answer.saw,
                sockets[i].local_addr().unwrap(),
                "round {round}: UDP to {to}: {expected} sees the client's socket"
            );
            assert_eq!(source, to, "round {round}: the UDP answer comes from {to}");
        }
    }
}

// S5, IPv6, XDP: `8080:80` and `9090:80` to the same container, TCP and UDP: with a
// connection (and a socket) open through each host port at once and used in turn, every reply
// leaves through the port its flow came in on, which takes flow state, not a reverse rule;
// each binding counts its own replies.
#[test]
fn s5_v6_one_container_two_host_ports_replies_keep_their_port() {
    s5_v6(Hook::Xdp);
}

// S5, IPv6, TC hook.
#[test]
fn s5_v6_tc_one_container_two_host_ports_replies_keep_their_port() {
    s5_v6(Hook::Tc);
}

fn s5_v6(hook: Hook) {
    let net = dual_stack();
    let c1 = &net.containers[0];
    let c1_ip = c1.ip(Family::V6);
    let tcp = servers::tcp_at(&c1.ns, "c1", any(Family::V6, 80)).unwrap();
    let _udp = servers::udp_at(&c1.ns, "c1", any(Family::V6, 80)).unwrap();
    let instance = start(
        &net,
        hook,
        &[
            wildcard(8080, 80, false, c1_ip),
            wildcard(9090, 80, false, c1_ip),
            wildcard(8080, 80, true, c1_ip),
            wildcard(9090, 80, true, c1_ip),
        ],
        &[],
    );
    let host = net.host_ip(Family::V6);
    let client_ip = net.client_ip(Family::V6);
    let ports = [8080, 9090];
    const ROUNDS: u64 = 3;

    let mut conns: Vec<_> = ports
        .iter()
        .map(|&port| {
            net.client
                .run(|| servers::tcp_connect_at(None, at(host, port), ASK))
                .unwrap_or_else(|e| panic!("TCP to [{host}]:{port}: {e:#}"))
        })
        .collect();
    let sockets: Vec<UdpSocket> = ports
        .iter()
        .map(|_| {
            net.client.run(|| {
                let socket = UdpSocket::bind(at(client_ip, 0)).unwrap();
                socket.set_read_timeout(Some(ASK)).unwrap();
                socket
            })
        })
        .collect();
    for round in 0..ROUNDS {
        for (i, &port) in ports.iter().enumerate() {
            let to = at(host, port);
            assert_eq!(
                conns[i].peer_addr().unwrap(),
                to,
                "the connection is to {to}"
            );
            let answer = servers::tcp_ask_on_at(&mut conns[i])
                .unwrap_or_else(|e| panic!("round {round}, TCP through {port}: {e:#}"));
            assert_eq!(answer.server, "c1", "round {round}: TCP through {port}");
            assert_eq!(
                answer.saw,
                conns[i].local_addr().unwrap(),
                "round {round}: TCP through {port}: c1 sees the client's socket"
            );
            let (answer, source) = udp_ask_on(&sockets[i], to)
                .unwrap_or_else(|e| panic!("round {round}, UDP through {port}: {e:#}"));
            assert_eq!(
                source, to,
                "round {round}: the UDP reply to a flow through {port} comes from {to}"
            );
            assert_eq!(
                answer.saw,
                sockets[i].local_addr().unwrap(),
                "round {round}: UDP through {port}: c1 sees the client's socket"
            );
        }
    }
    assert_eq!(tcp.seen().len(), 2, "two connections reached c1");

    let stats = stats(&net, &instance);
    for port in ports {
        let host_side = any(Family::V6, port);
        assert_eq!(
            binding_counter(&stats, "udp", host_side, "to_client_packets"),
            ROUNDS,
            "the UDP replies of {port}'s flow are counted on {port}: {stats}"
        );
        assert!(
            binding_counter(&stats, "tcp", host_side, "to_client_packets") >= ROUNDS,
            "the TCP replies of {port}'s connection are counted on {port}: {stats}"
        );
        assert_eq!(
            binding_flows(&stats, "tcp", host_side),
            1,
            "one live TCP flow on {port}: {stats}"
        );
    }
}
