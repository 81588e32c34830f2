//! End to end: a LAN client, a Docker-like host and containers in namespaces, the real `portmap`
//! binary, real TCP and UDP. Every server reports whom it saw, so each test checks where a
//! request went and the source address the container saw.
//!
//! Scenario ids (S1...) are those of SCENARIOS.md.

use std::net::{SocketAddr, SocketAddrV4};

use portmap_tests::{
    netns::Netns,
    process::{Portmap, portmap as portmap_cli, require_root},
    servers::{self, Answer},
    topology::{BRIDGE, BRIDGE_IP, CLIENT_IP, DockerHost, HOST_IP, Options, UPLINK},
};

/// Where `portmap run` translates on the uplink.
#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
}

fn start(host: &DockerHost, publish: &[&str]) -> Portmap {
    start_with(host, Hook::Xdp, publish)
}

fn start_with(host: &DockerHost, hook: Hook, publish: &[&str]) -> Portmap {
    let hook = match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
    };
    let mut args = vec!["--iface", UPLINK, "--bridge", BRIDGE, "--hook", hook];
    for spec in publish {
        args.extend(["--publish", spec]);
    }
    Portmap::start(&host.host, &args).expect("portmap run starts")
}

fn topology(options: &Options<'_>) -> DockerHost {
    require_root();
    DockerHost::build(options).expect("building the namespace topology")
}

/// The numbers of the stats line of the binding whose host side is `host` (`0.0.0.0:8080`):
/// packets and bytes in, packets and bytes out, flows.
fn counters(stats: &str, host: &str) -> Vec<u64> {
    let line = stats
        .lines()
        .find(|l| l.contains(&format!("-> {host} =>")))
        .unwrap_or_else(|| panic!("no stats line for {host} in\n{stats}"));
    // `80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80  IN_PKTS ...`
    line.split_whitespace()
        .skip(5)
        .map(|n| n.parse().unwrap())
        .collect()
}

// S1: a LAN client's TCP request to host:published reaches the container, which sees the
// client's own address; the reply completes the handshake from host:published.
#[test]
fn s1_tcp_lan_client_reaches_container_with_its_own_source() {
    s1(Hook::Xdp);
}

// S1 with the translation at TC ingress instead of XDP.
#[test]
fn s1_tcp_lan_client_reaches_container_with_its_own_source_via_tc_hook() {
    s1(Hook::Tc);
}

fn s1(hook: Hook) {
    let net = topology(&Options::default());
    let c1 = &net.containers[0];
    let _server = servers::tcp(&c1.ns, "c1", 80).unwrap();
    let portmap = start_with(&net, hook, &["8080:80=172.17.0.2"]);

    let answer = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8080)))
        .expect("an answer through host:8080");
    assert_eq!(answer.server, "c1");
    assert_eq!(
        *answer.saw.ip(),
        CLIENT_IP,
        "the container sees the client's real address"
    );

    let stats = portmap.stats(&net.host).unwrap();
    let n = counters(&stats, "0.0.0.0:8080");
    assert!(
        n[0] >= 3 && n[2] >= 2,
        "packets both ways are counted: {stats}"
    );
    let forwarded_by = match hook {
        Hook::Xdp => "tc_forward.redirected",
        Hook::Tc => "uplink.translated",
    };
    assert!(stats.contains(forwarded_by), "{stats}");
    let out = portmap.stop().unwrap();
    assert!(out.status.success(), "clean exit on SIGTERM: {out:?}");
}

// S2: UDP to a /udp binding, for many flows from several client addresses and ports; every
// reply comes from exactly host:published, and the container saw each flow's own source.
#[test]
fn s2_udp_many_flows_each_answered_from_the_published_port() {
    s2(Hook::Xdp);
}

// S2 with the translation at TC ingress instead of XDP.
#[test]
fn s2_udp_many_flows_each_answered_from_the_published_port_via_tc_hook() {
    s2(Hook::Tc);
}

fn s2(hook: Hook) {
    let net = topology(&Options {
        extra_client_addrs: 3,
        ..Options::default()
    });
    let c2 = &net.containers[1];
    let _server = servers::udp(&c2.ns, "c2", 53).unwrap();
    let _portmap = start_with(&net, hook, &["5353:53/udp=172.17.0.3"]);
    let published = SocketAddrV4::new(HOST_IP, 5353);

    let flows: Vec<SocketAddrV4> = net
        .client_addrs
        .iter()
        .flat_map(|&addr| (0..64).map(move |i| SocketAddrV4::new(addr, 20000 + i)))
        .collect();
    let results = net.client.run(|| {
        flows
            .iter()
            .map(|&from| servers::udp_ask(from, published).map(|r| (from, r)))
            .collect::<Result<Vec<_>, _>>()
    });
    let results = results.expect("every flow answered");
    assert_eq!(results.len(), 256);
    for (from, (answer, source)) in results {
        assert_eq!(
            source,
            SocketAddr::V4(published),
            "reply source for flow {from}"
        );
        assert_eq!(
            answer,
            Answer {
                server: "c2".into(),
                saw: from
            },
            "flow {from}"
        );
    }
}

// S3: an unpublished port is not translated (the host refuses it), and under Docker's rules a
// LAN client cannot reach a container's address directly.
#[test]
fn s3_unpublished_port_and_direct_container_address_are_not_translated() {
    let net = topology(&Options {
        docker_rules: true,
        ..Options::default()
    });
    let c1 = &net.containers[0];
    let _server = servers::tcp(&c1.ns, "c1", 80).unwrap();
    let portmap = start(&net, &["8080:80=172.17.0.2"]);

    let refused = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8081)))
        .expect_err("nothing listens on host:8081");
    assert!(format!("{refused:#}").contains("refused"), "{refused:#}");

    let direct = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(c1.addr, 80)))
        .expect_err("Docker's isolation rule drops direct access");
    assert!(format!("{direct:#}").contains("timed out"), "{direct:#}");

    let stats = portmap.stats(&net.host).unwrap();
    assert!(
        !stats.contains("uplink.translated"),
        "nothing was translated:\n{stats}"
    );
    assert!(stats.contains("uplink.pass.no_binding"), "{stats}");
}

// S4: two services listen on the same container port behind different host ports; each host
// port reaches its own container.
#[test]
fn s4_two_services_same_container_port_each_reached_by_its_host_port() {
    let net = topology(&Options {
        containers: &["frontend", "backend"],
        ..Options::default()
    });
    let _front = servers::tcp(&net.container("frontend").ns, "frontend", 8000).unwrap();
    let _back = servers::tcp(&net.container("backend").ns, "backend", 8000).unwrap();
    let _portmap = start(&net, &["8000:8000=172.17.0.2", "5000:8000=172.17.0.3"]);

    for (port, expected) in [(8000, "frontend"), (5000, "backend"), (8000, "frontend")] {
        let answer = net
            .client
            .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, port)))
            .unwrap_or_else(|e| panic!("host:{port}: {e:#}"));
        assert_eq!(answer.server, expected, "host:{port}");
        assert_eq!(*answer.saw.ip(), CLIENT_IP);
    }
}

// S5: one container behind two host ports; a reply leaves through the port its flow came in
// on. UDP makes it visible: the client's socket checks each reply's source.
#[test]
fn s5_one_container_two_host_ports_replies_keep_their_port() {
    let net = topology(&Options::default());
    let c1 = &net.containers[0];
    let _udp = servers::udp(&c1.ns, "c1", 80).unwrap();
    let _tcp = servers::tcp(&c1.ns, "c1", 80).unwrap();
    let _portmap = start(
        &net,
        &[
            "8080:80/udp=172.17.0.2",
            "9090:80/udp=172.17.0.2",
            "8080:80=172.17.0.2",
            "9090:80=172.17.0.2",
        ],
    );

    for (i, port) in [8080, 9090, 8080, 9090].into_iter().enumerate() {
        let to = SocketAddrV4::new(HOST_IP, port);
        let from = SocketAddrV4::new(CLIENT_IP, 30000 + i as u16);
        let (answer, source) = net.client.run(|| servers::udp_ask(from, to)).unwrap();
        assert_eq!(
            source,
            SocketAddr::V4(to),
            "UDP reply source for a flow to {port}"
        );
        assert_eq!(answer.saw, from);
        let answer = net.client.run(|| servers::tcp_ask(None, to)).unwrap();
        assert_eq!(answer.server, "c1", "TCP through {port}");
    }
}

// S9: container to container by address is untouched, even with a binding on that port: the
// target sees the caller's own address.
#[test]
fn s9_container_to_container_direct_is_untouched() {
    let net = topology(&Options::default());
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let _server = servers::tcp(&c2.ns, "c2", 80).unwrap();
    let portmap = start(&net, &["80:80=172.17.0.3"]);

    let answer = c1
        .ns
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(c2.addr, 80)))
        .unwrap();
    assert_eq!(answer.server, "c2");
    assert_eq!(*answer.saw.ip(), c1.addr, "source kept");
    let stats = portmap.stats(&net.host).unwrap();
    assert!(!stats.contains("tc_reply.translated"), "{stats}");
    assert!(!stats.contains("tc_port.translated"), "{stats}");
}

/// The count `portmap stats` shows for `name` (0 when it shows none).
fn reason_count(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

// A container whose veth joins the bridge after `run` started gets `tc_port` too: its replies
// are translated on its port (counted as `tc_port.translated`), none on the bridge.
#[test]
fn late_container_replies_are_translated_on_its_bridge_port() {
    let net = topology(&Options::default());
    let portmap = start(&net, &["8080:80=172.17.0.2"]);
    let pin_dir = portmap.pin_dir.to_string_lossy().into_owned();
    // Answered from the serving loop: `run` has listed the bridge's ports already.
    let listed = portmap_cli(&net.host, &["ls", "--pin-dir", &pin_dir]).unwrap();
    assert!(listed.status.success(), "ls: {listed:?}");
    let late = Netns::new("late").unwrap();
    late.ip(&format!(
        "link add eth0 type veth peer name vethlate netns {}",
        net.host.name()
    ))
    .unwrap();
    late.ip("addr add 172.17.0.9/16 dev eth0").unwrap();
    late.ip("link set eth0 up").unwrap();
    late.ip(&format!("route add default via {BRIDGE_IP}"))
        .unwrap();
    late.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
    net.host
        .ip(&format!("link set vethlate master {BRIDGE}"))
        .unwrap();
    net.host.ip("link set vethlate up").unwrap();
    let _server = servers::tcp(&late, "late", 80).unwrap();
    let added = portmap_cli(
        &net.host,
        &["add", "--pin-dir", &pin_dir, "9090:80=172.17.0.9"],
    )
    .unwrap();
    assert!(added.status.success(), "add: {added:?}");

    let answer = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 9090)))
        .expect("an answer through host:9090");
    assert_eq!(answer.server, "late");
    assert_eq!(*answer.saw.ip(), CLIENT_IP);
    let stats = portmap.stats(&net.host).unwrap();
    assert!(
        reason_count(&stats, "tc_port.translated") >= 2,
        "the late port translates: {stats}"
    );
    assert_eq!(
        reason_count(&stats, "tc_reply.translated"),
        0,
        "nothing left to the bridge: {stats}"
    );
}

// 200 TCP connections open at once, from several client addresses, each answered by the
// container with its own source address.
#[test]
fn tcp_200_concurrent_connections_all_answered() {
    let net = topology(&Options {
        extra_client_addrs: 3,
        ..Options::default()
    });
    let c1 = &net.containers[0];
    let _server = servers::tcp(&c1.ns, "c1", 80).unwrap();
    let portmap = start(&net, &["8080:80=172.17.0.2"]);
    let to = SocketAddrV4::new(HOST_IP, 8080);
    let addrs = net.client_addrs.clone();

    let answers = net
        .client
        .run(|| -> anyhow::Result<Vec<(SocketAddr, Answer)>> {
            let mut conns = Vec::new();
            for i in 0..200 {
                conns.push(servers::tcp_connect(Some(addrs[i % addrs.len()]), to)?);
            }
            conns
                .iter_mut()
                .map(|c| Ok((c.local_addr()?, servers::tcp_ask_on(c)?)))
                .collect()
        });
    let answers = answers.expect("200 concurrent connections answered");
    assert_eq!(answers.len(), 200);
    for (local, answer) in &answers {
        assert_eq!(answer.server, "c1");
        assert_eq!(
            SocketAddr::V4(answer.saw),
            *local,
            "the container saw this connection's source"
        );
    }
    let stats = portmap.stats(&net.host).unwrap();
    let flows: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("flows: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(flows >= 200, "one flow per connection: {stats}");
}

// With Docker's filter rules in place (FORWARD policy DROP, no per-port ACCEPT) and Docker's
// default checksum offload in the containers, translated traffic still reaches the container
// and comes back, TCP and UDP, while the rules keep dropping direct access.
#[test]
fn docker_rules_translated_traffic_flows_while_direct_access_is_dropped() {
    docker_rules(Hook::Xdp);
}

// The same beside Docker's rules, with the translation at TC ingress; the client keeps its
// checksum offload too, which only the TC hook's checksum helpers can follow.
#[test]
fn docker_rules_translated_traffic_flows_while_direct_access_is_dropped_via_tc_hook() {
    docker_rules(Hook::Tc);
}

fn docker_rules(hook: Hook) {
    let net = topology(&Options {
        docker_rules: true,
        container_csum_offload: true,
        ..Options::default()
    });
    if matches!(hook, Hook::Tc) {
        net.client
            .exec("ethtool", &["-K", "eth0", "tx", "on"])
            .unwrap();
    }
    let c1 = &net.containers[0];
    let _tcp = servers::tcp(&c1.ns, "c1", 80).unwrap();
    let _udp = servers::udp(&c1.ns, "c1", 53).unwrap();
    let _portmap = start_with(
        &net,
        hook,
        &["8080:80=172.17.0.2", "5353:53/udp=172.17.0.2"],
    );

    for _ in 0..20 {
        let answer = net
            .client
            .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8080)))
            .expect("TCP through portmap despite FORWARD DROP");
        assert_eq!(*answer.saw.ip(), CLIENT_IP);
    }
    let from = SocketAddrV4::new(CLIENT_IP, 31000);
    let (answer, source) = net
        .client
        .run(|| servers::udp_ask(from, SocketAddrV4::new(HOST_IP, 5353)))
        .expect("UDP through portmap despite FORWARD DROP");
    assert_eq!(answer.saw, from);
    assert_eq!(source, SocketAddr::V4(SocketAddrV4::new(HOST_IP, 5353)));

    let direct = net.client.run(|| {
        let to = SocketAddrV4::new(c1.addr, 80);
        servers::tcp_connect(None, to).map(|_| ())
    });
    assert!(
        direct.is_err(),
        "the rules are live: direct access to the container is dropped"
    );

    // The FORWARD chain never saw the translated flows: its DROP policy counter covers only
    // the direct attempt.
    let rules = net
        .host
        .exec("iptables", &["-L", "DOCKER", "-v", "-n", "-x"])
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let dropped: u64 = rules
        .lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the isolation rule's counter");
    assert!(
        (1..10).contains(&dropped),
        "only the direct SYNs hit the isolation rule:\n{rules}"
    );
}

/// A run's files outside its pins: its lock and control socket in /run/portmap, named after
/// its pin directory, and the pin directory itself where this process sees it. Removed on drop,
/// pass or fail, as the `Portmap` helper does for the runs it starts.
struct RunFiles(portmap_user::control::InstancePaths);

impl RunFiles {
    /// A pin directory of `ns`'s own, so that two test runs never share a lock.
    fn of(ns: &Netns) -> Self {
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/portmap-test/{}", ns.name()));
        Self(portmap_user::control::InstancePaths::new(&pin_dir))
    }

    fn pin_dir(&self) -> String {
        self.0.pin_dir.to_string_lossy().into_owned()
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.pin_dir);
        // The shared parent goes when the last test leaves it empty.
        if let Some(parent) = self.0.pin_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        let _ = std::fs::remove_file(&self.0.lock);
        let _ = std::fs::remove_file(&self.0.socket);
    }
}

/// Starts `portmap run ARGS...` in `ns` through `ip netns exec`, whose fresh sysfs shows the
/// namespace's own links (a plain `setns` keeps the root's), and returns its stderr once it
/// served and stopped. Its pins go to a bpffs mounted in that command's private mounts.
fn stderr_of_run_with_own_sysfs(ns: &Netns, args: &[&str]) -> String {
    use std::io::{BufRead as _, Read as _};
    let command = format!(
        "mount -t bpf bpf /sys/fs/bpf && exec {} run --no-cgroup {}",
        portmap_tests::process::portmap_bin().display(),
        args.join(" ")
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c", &command])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning portmap run");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let served = stdout
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.starts_with("portmap: serving"));
    // SAFETY: signalling our own child (`exec` made it portmap).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // Its final counters go to stdout: read them, or it would write into a closed pipe.
    stdout.for_each(drop);
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr);
    let status = child.wait().expect("waiting for portmap");
    assert!(
        served && status.success(),
        "portmap run {args:?}: {status}\n{stderr}"
    );
    stderr
}

// The TCP flow table keeps a share per CPU, and a connection takes its entry from the CPU that
// receives it: an uplink with fewer receive queues than CPUs (and no RPS, where RPS helps) is
// told how much of the table its connections can use.
#[test]
fn an_uplink_with_fewer_receive_queues_than_cpus_is_warned_about() {
    require_root();
    let cpus = aya::util::nr_cpus().expect("the CPU count");
    assert!(
        cpus >= 2,
        "one receive queue is fewer than the CPUs only with two or more"
    );
    let ns = Netns::new("queues").unwrap();
    ns.ip("link add br0 type bridge").unwrap();
    ns.ip("link add one type veth peer name one-peer").unwrap();
    ns.ip(&format!(
        "link add many numrxqueues {cpus} numtxqueues {cpus} type veth peer name many-peer \
         numrxqueues {cpus} numtxqueues {cpus}"
    ))
    .unwrap();
    for link in ["br0", "one", "one-peer", "many", "many-peer"] {
        ns.ip(&format!("link set {link} up")).unwrap();
    }
    let files = RunFiles::of(&ns);
    let pin_dir = files.pin_dir();
    let run = |iface: &str, hook: &str| {
        stderr_of_run_with_own_sysfs(
            &ns,
            &[
                "--iface",
                iface,
                "--bridge",
                "br0",
                "--hook",
                hook,
                "--pin-dir",
                &pin_dir,
            ],
        )
    };
    let one_queue = format!("one has 1 receive queue(s) for {cpus} CPUs");
    let stderr = run("one", "xdp");
    assert!(stderr.contains(&one_queue), "one queue, XDP: {stderr}");
    let stderr = run("one", "tc");
    assert!(
        stderr.contains(&one_queue),
        "one queue, TC, no RPS: {stderr}"
    );
    let stderr = run("many", "xdp");
    assert!(
        !stderr.contains("receive queue"),
        "a queue per CPU: {stderr}"
    );
    // RPS hands packets on after XDP and before TC.
    ns.exec(
        "sh",
        &["-c", "echo 3 > /sys/class/net/one/queues/rx-0/rps_cpus"],
    )
    .unwrap();
    let stderr = run("one", "tc");
    assert!(
        !stderr.contains("receive queue"),
        "one queue, TC, RPS on: {stderr}"
    );
    let stderr = run("one", "xdp");
    assert!(
        stderr.contains(&one_queue),
        "one queue, XDP, RPS on: {stderr}"
    );
}

// `portmap run | head -1`: a reader that goes away takes nothing down, and SIGTERM still stops
// the run cleanly, pins and all, though its final counters have nowhere to go.
#[test]
fn a_run_whose_stdout_reader_went_away_still_stops_cleanly() {
    use std::io::BufRead as _;
    require_root();
    let ns = Netns::new("closed").unwrap();
    ns.ip("link add br0 type bridge").unwrap();
    ns.ip("link add up0 type veth peer name up1").unwrap();
    for link in ["br0", "up0", "up1"] {
        ns.ip(&format!("link set {link} up")).unwrap();
    }
    let files = RunFiles::of(&ns);
    let pin_dir = files.0.pin_dir.clone();
    let mut child = ns
        .command(portmap_tests::process::portmap_bin())
        .unwrap()
        .args([
            "run",
            "--no-cgroup",
            "--iface",
            "up0",
            "--bridge",
            "br0",
            "--hook",
            "tc",
        ])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning portmap run");
    {
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let served = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("portmap: serving"));
        assert!(served, "portmap run did not say it serves");
    } // The reader goes away here, before the final counters are written.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("waiting for portmap");
    let pinned = pin_dir.exists();
    assert!(
        out.status.success(),
        "a clean exit: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pinned, "its pins are removed");
}
