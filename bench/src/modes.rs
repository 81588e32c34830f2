//! The four ways a Docker host can get a client to a container, each installed for N published
//! ports through its own normal interface, with the measured binding the worst case for it:
//! last in a chain, one entry among N in a map.

use std::{
    fmt, fs,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use portmap_tests::{
    netns::{Netns, run},
    process::Portmap,
    topology::{BRIDGE, BRIDGE_SUBNET, DockerHost, HOST_IP, UPLINK, docker_rules},
};

use portmap_user::control::{InstancePaths, Outcome, Request};

use crate::load::Servers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// The client addresses the containers directly; no rules at all.
    Floor,
    /// The floor with portmap attached but publishing nothing the traffic uses: what native
    /// XDP on the veth uplink costs by itself (a diagnostic, not a contender).
    FloorXdp,
    /// Docker's own path: moby's iptables rules (nft backend) with one DNAT rule per port.
    Iptables,
    /// One `dnat` through an nftables map keyed by protocol and port: netfilter's best.
    NftMap,
    /// The real `portmap` binary beside Docker's base rules, translating at XDP.
    PortmapXdp,
    /// The same, translating at TC ingress (`--hook tc`).
    PortmapTc,
    /// The reference CNI `portmap` plugin (Kubernetes' hostPort): per-container DNAT chains.
    CniPortmap,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Floor,
        Mode::FloorXdp,
        Mode::Iptables,
        Mode::NftMap,
        Mode::PortmapXdp,
        Mode::PortmapTc,
        Mode::CniPortmap,
    ];

    /// The name `--modes` takes.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::FloorXdp => "floor-xdp",
            Mode::Iptables => "iptables",
            Mode::NftMap => "nftmap",
            Mode::PortmapXdp => "portmap-xdp",
            Mode::PortmapTc => "portmap-tc",
            Mode::CniPortmap => "cni-portmap",
        }
    }

    pub fn is_portmap(self) -> bool {
        matches!(self, Mode::PortmapXdp | Mode::PortmapTc)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Floor => "no-NAT floor",
            Mode::FloorXdp => "floor + idle XDP",
            Mode::Iptables => "iptables (Docker)",
            Mode::NftMap => "nftables map",
            Mode::PortmapXdp => "portmap (XDP)",
            Mode::PortmapTc => "portmap (TC)",
            Mode::CniPortmap => "CNI portmap (iptables)",
        })
    }
}

/// Container ports the servers listen on, and the host ports that publish them.
pub const RR_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5353;
pub const STREAM_PORT: u16 = 9000;
const RR_HOST_PORT: u16 = 8080;
const FILLER_BASE: u16 = 10_000;
/// A port outside every filler range, for the add/remove measurement.
const SPARE_PORT: u16 = 40_000;

/// One published port.
#[derive(Clone, Copy)]
struct Port {
    proto: &'static str,
    host: u16,
    container: SocketAddrV4,
}

impl Port {
    /// As `portmap add` takes it.
    fn spec(&self) -> String {
        format!(
            "{}:{}/{}={}",
            self.host,
            self.container.port(),
            self.proto,
            self.container.ip()
        )
    }
}

/// The N published ports: N - 1 fillers, then the three measured ones, the fresh-connection and
/// UDP bindings last (the stream is established before it is measured, so its position does
/// not matter).
fn ports(n: usize, c1: Ipv4Addr, c2: Ipv4Addr) -> Vec<Port> {
    let mut ports = vec![Port {
        proto: "tcp",
        host: STREAM_PORT,
        container: SocketAddrV4::new(c1, STREAM_PORT),
    }];
    ports.extend((0..n.saturating_sub(1)).map(|i| {
        let port = FILLER_BASE + i as u16;
        Port {
            proto: "tcp",
            host: port,
            container: SocketAddrV4::new(c1, port),
        }
    }));
    ports.push(Port {
        proto: "tcp",
        host: RR_HOST_PORT,
        container: SocketAddrV4::new(c1, RR_PORT),
    });
    ports.push(Port {
        proto: "udp",
        host: UDP_PORT,
        container: SocketAddrV4::new(c2, UDP_PORT),
    });
    ports
}

/// A mode installed on a fresh topology, with its servers running.
pub struct Deployed {
    pub net: DockerHost,
    pub rr: SocketAddrV4,
    pub udp: SocketAddrV4,
    pub stream: SocketAddrV4,
    /// From issuing the install until the measured binding answers (portmap: N bindings added
    /// to a running instance, as `nft -f` loads into a running kernel), once per install: each
    /// from nothing installed, the same way.
    pub installs: Vec<Duration>,
    /// portmap only: from starting the process until it serves (nothing published yet).
    pub cold_start: Option<Duration>,
    /// Adding, then removing, one binding while N are loaded.
    pub add_remove: Option<(Duration, Duration)>,
    pub portmap: Option<Portmap>,
    pub servers: Vec<Servers>,
}

/// Builds the topology and installs `mode` with `n` published ports, `installs` times over
/// (the CNI plugin once: a thousand of its mappings take half a minute).
pub fn deploy(mode: Mode, n: usize, installs: usize) -> anyhow::Result<Deployed> {
    let net = DockerHost::build(&portmap_tests::topology::Options {
        containers: &["c1", "c2"],
        extra_client_addrs: 64,
        // Portmap runs beside Docker's base rules; the iptables mode installs its own full set.
        docker_rules: mode.is_portmap(),
        container_csum_offload: true,
        ..Default::default()
    })?;
    // Fresh connections at tens of thousands per second: reuse TIME_WAIT ports.
    net.client
        .exec("sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    net.client.exec(
        "sysctl",
        &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    // The UDP load writes its own IP headers (IP_HDRINCL), and the kernel caches no route for
    // that to an on-link destination: a route allocated and freed per packet, which the
    // floor's (through a gateway, to the containers) does not pay. A host route through the
    // host itself makes the client's side cost the same in every mode (portmap's TC UDP rate
    // went from 264k to 302k pkt/s, the floor's did not move).
    net.client.ip(&format!(
        "route add {HOST_IP}/32 via {HOST_IP} dev eth0 onlink"
    ))?;
    let (c1, c2) = (net.containers[0].addr, net.containers[1].addr);
    let servers = vec![
        crate::load::tcp_rr_server(&net.containers[0].ns, RR_PORT, 4)?,
        crate::load::tcp_sink(&net.containers[0].ns, STREAM_PORT)?,
        crate::load::udp_sink(&net.containers[1].ns, UDP_PORT)?,
    ];
    let published = |port: u16| SocketAddrV4::new(HOST_IP, port);
    let mut deployed = Deployed {
        rr: published(RR_HOST_PORT),
        udp: published(UDP_PORT),
        stream: published(STREAM_PORT),
        installs: Vec::new(),
        cold_start: None,
        add_remove: None,
        portmap: None,
        servers,
        net,
    };
    let ports = ports(n, c1, c2);
    match mode {
        Mode::Floor | Mode::FloorXdp => {
            if mode == Mode::FloorXdp {
                let args = [
                    "--iface",
                    UPLINK,
                    "--bridge",
                    BRIDGE,
                    "--publish",
                    "1:1=172.17.0.9",
                ];
                deployed.portmap = Some(Portmap::start(&deployed.net.host, &args)?);
            }
            deployed.rr = SocketAddrV4::new(c1, RR_PORT);
            deployed.udp = SocketAddrV4::new(c2, UDP_PORT);
            deployed.stream = SocketAddrV4::new(c1, STREAM_PORT);
        }
        Mode::Iptables => {
            let file = tmp_file(&deployed.net.host, "iptables", &iptables_restore(&ports))?;
            for round in 0..installs {
                if round > 0 {
                    deployed.net.host.exec("iptables", &["-t", "nat", "-F"])?;
                    deployed.net.host.exec("iptables", &["-t", "nat", "-X"])?;
                    deployed
                        .net
                        .host
                        .exec("iptables", &["-t", "filter", "-F"])?;
                    deployed
                        .net
                        .host
                        .exec("iptables", &["-t", "filter", "-X"])?;
                    crate::wait_until_idle();
                }
                let began = Instant::now();
                deployed.net.host.exec("iptables-restore", &[&file])?;
                deployed
                    .installs
                    .push(began.elapsed() + until_answers(&deployed)?);
            }
            let spare = spare(c1);
            deployed.add_remove = Some(add_remove(
                || iptables_port(&deployed.net.host, "-I", &spare),
                || iptables_port(&deployed.net.host, "-D", &spare),
            )?);
            let _ = fs::remove_file(file);
        }
        Mode::NftMap => {
            let file = tmp_file(&deployed.net.host, "nft", &nft_ruleset(&ports))?;
            for round in 0..installs {
                if round > 0 {
                    deployed
                        .net
                        .host
                        .exec("nft", &["delete", "table", "ip", "pmbench"])?;
                    crate::wait_until_idle();
                }
                let began = Instant::now();
                deployed.net.host.exec("nft", &["-f", &file])?;
                deployed
                    .installs
                    .push(began.elapsed() + until_answers(&deployed)?);
            }
            let spare = spare(c1);
            let element = format!(
                "{{ tcp . {} : {} . {} }}",
                spare.host,
                spare.container.ip(),
                spare.container.port()
            );
            let key = format!("{{ tcp . {} }}", spare.host);
            let host = &deployed.net.host;
            deployed.add_remove = Some(add_remove(
                || {
                    host.exec(
                        "nft",
                        &["add", "element", "ip", "pmbench", "ports", &element],
                    )
                    .map(drop)
                },
                || {
                    host.exec(
                        "nft",
                        &["delete", "element", "ip", "pmbench", "ports", &key],
                    )
                    .map(drop)
                },
            )?);
            let _ = fs::remove_file(file);
        }
        Mode::PortmapXdp | Mode::PortmapTc => {
            let hook = if mode == Mode::PortmapXdp {
                "xdp"
            } else {
                "tc"
            };
            let args = ["--iface", UPLINK, "--bridge", BRIDGE, "--hook", hook];
            for round in 0..installs {
                if round > 0 {
                    // A fresh instance each time: stopped (its ports freed, its programs
                    // detached) and started again, outside the time.
                    drop(deployed.portmap.take());
                    crate::wait_until_idle();
                }
                let began = Instant::now();
                let portmap = Portmap::start(&deployed.net.host, &args)?;
                deployed.cold_start.get_or_insert(began.elapsed());
                let paths = InstancePaths::new(&portmap.pin_dir);
                deployed.portmap = Some(portmap);
                crate::wait_until_idle();
                let specs = ports.iter().map(|p| p.spec()).collect();
                let began = Instant::now();
                control(
                    &paths,
                    Request::Add {
                        specs,
                        containers: Vec::new(),
                        replace: false,
                        bridge: None,
                        owner: None,
                        hold_ports: true,
                    },
                )?;
                deployed
                    .installs
                    .push(began.elapsed() + until_answers(&deployed)?);
            }
            let paths = InstancePaths::new(
                &deployed
                    .portmap
                    .as_ref()
                    .context("a portmap instance")?
                    .pin_dir,
            );
            let spare = spare(c1);
            deployed.add_remove = Some(add_remove(
                || {
                    control(
                        &paths,
                        Request::Add {
                            specs: vec![spare.spec()],
                            containers: Vec::new(),
                            replace: false,
                            bridge: None,
                            owner: None,
                            hold_ports: true,
                        },
                    )
                },
                || {
                    control(
                        &paths,
                        Request::Rm {
                            selectors: vec![spare.host.to_string()],
                            owner: None,
                        },
                    )
                },
            )?);
        }
        Mode::CniPortmap => {
            let mapped = |p: &Port| (p.proto, p.host, p.container);
            let began = Instant::now();
            crate::cni::publish(&deployed.net, ports.iter().map(mapped))?;
            deployed
                .installs
                .push(began.elapsed() + until_answers(&deployed)?);
            let spare = mapped(&spare(c1));
            deployed.add_remove = Some(add_remove(
                || crate::cni::add_spare(&deployed.net, spare),
                || crate::cni::remove_spare(&deployed.net, spare),
            )?);
        }
    }
    Ok(deployed)
}

/// One request to a running portmap, through its control socket: what `portmap add` and
/// `portmap rm` send, without the process start around them.
fn control(paths: &InstancePaths, request: Request) -> anyhow::Result<()> {
    // Like a controller, the bench only needs to know the request succeeded.
    let outcome: Outcome = portmap_user::control::call_as(paths, &request)?;
    match outcome.error {
        Some(error) => bail!("portmap refused {request:?}: {error}"),
        None => Ok(()),
    }
}

fn spare(c1: Ipv4Addr) -> Port {
    Port {
        proto: "tcp",
        host: SPARE_PORT,
        container: SocketAddrV4::new(c1, SPARE_PORT),
    }
}

/// How many times one binding is added and removed; the report gives the median of each.
const ADD_REMOVE_CYCLES: usize = 5;

/// The median time to `add` one binding and to `remove` it again, over
/// [`ADD_REMOVE_CYCLES`] cycles, once the install has settled: on the bench's single CPU, the
/// work an install leaves behind would otherwise be timed as part of the first request.
fn add_remove(
    add: impl Fn() -> anyhow::Result<()>,
    remove: impl Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    std::thread::sleep(Duration::from_millis(200));
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..ADD_REMOVE_CYCLES {
        adds.push(timed(&add)?);
        removes.push(timed(&remove)?);
    }
    adds.sort_unstable();
    removes.sort_unstable();
    Ok((adds[adds.len() / 2], removes[removes.len() / 2]))
}

fn timed(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let began = Instant::now();
    work()?;
    Ok(began.elapsed())
}

/// How long until a fresh connection through the measured binding is answered.
fn until_answers(deployed: &Deployed) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let target = deployed.rr;
    deployed.net.client.run(|| {
        while began.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect_timeout(&target.into(), Duration::from_millis(200))
                .is_ok()
            {
                return Ok(began.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        bail!("{target} did not answer within 30 s of installing")
    })
}

fn tmp_file(ns: &Netns, what: &str, contents: &str) -> anyhow::Result<String> {
    let path = format!("/tmp/{}-{what}.rules", ns.name());
    fs::write(&path, contents).with_context(|| format!("writing {path}"))?;
    Ok(path)
}

/// moby's two rules for one published port: the DNAT, and the ACCEPT that lets the translated
/// packet past the bridge's isolation rule.
fn moby_rules(port: &Port) -> (String, String) {
    let Port {
        proto,
        host,
        container,
    } = port;
    (
        format!(
            "-A DOCKER ! -i {BRIDGE} -p {proto} -m {proto} --dport {host} -j DNAT --to-destination {container}"
        ),
        format!(
            "-A DOCKER -d {}/32 ! -i {BRIDGE} -o {BRIDGE} -p {proto} -m {proto} --dport {} -j ACCEPT",
            container.ip(),
            container.port()
        ),
    )
}

fn iptables_port(host: &Netns, op: &str, port: &Port) -> anyhow::Result<()> {
    let (dnat, accept) = moby_rules(port);
    // The ACCEPT must stay ahead of the isolation DROP: insert it at the top.
    let (dnat, accept) = match op {
        "-I" => (dnat, accept.replacen("-A DOCKER", "-I DOCKER 1", 1)),
        _ => (
            dnat.replacen("-A DOCKER", "-D DOCKER", 1),
            accept.replacen("-A DOCKER", "-D DOCKER", 1),
        ),
    };
    let nat: Vec<&str> = ["-t", "nat"]
        .into_iter()
        .chain(dnat.split_whitespace())
        .collect();
    host.exec("iptables", &nat)?;
    host.exec("iptables", &accept.split_whitespace().collect::<Vec<_>>())?;
    Ok(())
}

/// Docker's base rules plus moby's per-port rules, in `iptables-restore` form.
fn iptables_restore(ports: &[Port]) -> String {
    let mut filter_chains = Vec::new();
    let mut nat_chains = Vec::new();
    let mut filter = Vec::new();
    let mut nat = Vec::new();
    for rule in docker_rules(BRIDGE, BRIDGE_SUBNET) {
        let (table, rule) = match rule.strip_prefix("-t nat ") {
            Some(rule) => ("nat", rule.to_owned()),
            None => ("filter", rule),
        };
        let (chains, rules) = if table == "nat" {
            (&mut nat_chains, &mut nat)
        } else {
            (&mut filter_chains, &mut filter)
        };
        if let Some(policy) = rule.strip_prefix("-P ") {
            chains.push(format!(":{policy} [0:0]"));
        } else if let Some(chain) = rule.strip_prefix("-N ") {
            chains.push(format!(":{chain} - [0:0]"));
        } else {
            rules.push(rule);
        }
    }
    let isolation = filter
        .iter()
        .position(|r| r.starts_with("-A DOCKER !") && r.ends_with("-j DROP"))
        .expect("moby's isolation rule");
    for (i, port) in ports.iter().enumerate() {
        let (dnat, accept) = moby_rules(port);
        nat.push(dnat);
        filter.insert(isolation + i, accept);
    }
    format!(
        "*filter\n{}\n{}\nCOMMIT\n*nat\n{}\n{}\nCOMMIT\n",
        filter_chains.join("\n"),
        filter.join("\n"),
        nat_chains.join("\n"),
        nat.join("\n")
    )
}

/// One nat chain whose single rule DNATs through a map keyed by protocol and port.
fn nft_ruleset(ports: &[Port]) -> String {
    let elements: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{} . {} : {} . {}",
                p.proto,
                p.host,
                p.container.ip(),
                p.container.port()
            )
        })
        .collect();
    format!(
        "table ip pmbench {{\n  map ports {{\n    type inet_proto . inet_service : ipv4_addr . inet_service\n    elements = {{ {} }}\n  }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local dnat ip to meta l4proto . th dport map @ports\n  }}\n}}\n",
        elements.join(",\n      ")
    )
}

/// Starts a round from the same state in every mode: conntrack's table emptied, and portmap's
/// flow tables too (its connection state, which a round left full of the last round's flows).
pub fn flush_state(deployed: &Deployed) -> anyhow::Result<()> {
    let _ = run(Command::new("ip").args([
        "netns",
        "exec",
        deployed.net.host.name(),
        "conntrack",
        "-F",
    ]));
    if let Some(portmap) = &deployed.portmap {
        portmap_user::dataplane::forget_pinned_flows(&portmap.pin_dir)?;
    }
    Ok(())
}

/// portmap's resident memory and the kernel memory of its maps and programs.
pub struct Memory {
    pub rss_kib: u64,
    pub maps_kib: u64,
    pub programs_kib: u64,
}

pub fn portmap_memory(pid: u32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    let (mut maps, mut programs) = (0u64, 0u64);
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let fd = fd?;
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Ok(info) = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let memlock: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if link.contains("bpf-map") {
            maps += memlock;
        } else if link.contains("bpf-prog") {
            programs += memlock;
        }
    }
    Ok(Memory {
        rss_kib,
        maps_kib: maps / 1024,
        programs_kib: programs / 1024,
    })
}
