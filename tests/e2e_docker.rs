//! `portmap run --docker` beside a real Docker engine (Debian's 20.10), in namespaces: the
//! engine's published ports served through the BPF path, containers followed as they start,
//! stop and move, portmap stopped and restarted under load without a failed request, and an
//! engine that is missing at start-up or goes away while portmap runs.
//!
//! Each test starts its own engine ([`Dockerd`]) in a namespace of its own, with a LAN client
//! joined to it by a veth pair; everything is removed when the test ends, pass or fail.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::unix::net::UnixListener,
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use portmap_tests::{
    dockerd::{ContainerServers, Dockerd, bounded},
    netns::Netns,
    process::{Portmap, portmap_bin, require_root},
    servers::{self, Answer},
    topology::{CLIENT_IP, HOST_IP, UPLINK},
};
use portmap_user::control::{self, BindingInfo, InstancePaths, Request, Response};

/// How long portmap may take to follow an event: the issue's bound.
const FOLLOW: Duration = Duration::from_secs(1);

/// An engine and a LAN client in front of it.
struct Bed {
    client: Netns,
    engine: Dockerd,
}

fn bed() -> Bed {
    require_root();
    let engine = Dockerd::start().expect("a Docker engine starts in a namespace");
    let client = engine.lan_client().expect("the LAN client");
    Bed { client, engine }
}

/// `portmap run --docker` against the bed's engine, in its namespace.
fn follow(bed: &Bed) -> Portmap {
    let url = bed.engine.url();
    Portmap::start(
        &bed.engine.ns,
        &[
            "--docker",
            "--docker-host",
            &url,
            "--iface",
            UPLINK,
            "--bridge",
            "docker0",
        ],
    )
    .expect("portmap run --docker starts")
}

fn call(instance: &Portmap, request: &Request) -> Response {
    let response = control::call(&InstancePaths::new(&instance.pin_dir), request)
        .expect("the instance answers");
    assert_eq!(response.error, None, "{request:?}");
    response
}

fn ls(instance: &Portmap) -> Vec<BindingInfo> {
    call(instance, &Request::Ls).bindings
}

fn binding(bindings: &[BindingInfo], port: u16, proto: &str) -> Option<BindingInfo> {
    bindings
        .iter()
        .find(|b| b.host_port == port && b.proto == proto)
        .cloned()
}

/// Polls `ls` until `done` holds; how long that took. Panics after `timeout`, showing `ls`.
fn wait_ls(
    instance: &Portmap,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[BindingInfo]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let bindings = ls(instance);
        if done(&bindings) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; ls: {bindings:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET /cgi-bin/who` on a fresh connection: which container answered and whom it saw.
/// Call it in the client's namespace.
fn http_who(to: SocketAddrV4) -> anyhow::Result<Answer> {
    let mut conn = servers::tcp_connect(None, to)?;
    conn.write_all(b"GET /cgi-bin/who HTTP/1.0\r\nHost: portmap\r\n\r\n")?;
    let mut text = String::new();
    conn.take(64 << 10)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the answer from {to}"))?;
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        bail!("{to} answered {text:?}");
    }
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(" saw "))
        .with_context(|| format!("no answer line in {text:?}"))?;
    let (server, peer) = line.split_once(" saw ").expect("found above");
    // busybox httpd shows an IPv4 peer of its dual-stack socket as [::ffff:A.B.C.D].
    let (ip, port) = peer
        .rsplit_once(':')
        .with_context(|| format!("malformed peer in {line:?}"))?;
    let ip = ip.trim_matches(['[', ']']).trim_start_matches("::ffff:");
    Ok(Answer {
        server: server.to_owned(),
        saw: SocketAddrV4::new(
            ip.parse().with_context(|| format!("peer in {line:?}"))?,
            port.parse().with_context(|| format!("peer in {line:?}"))?,
        ),
    })
}

/// One UDP request from `CLIENT_IP:from_port`; the answer must come from `to` itself.
fn udp_who(from_port: u16, to: SocketAddrV4) -> anyhow::Result<Answer> {
    let (answer, source) = servers::udp_ask(SocketAddrV4::new(CLIENT_IP, from_port), to)?;
    if source != SocketAddr::V4(to) {
        bail!("the answer to {to} came from {source}");
    }
    Ok(answer)
}

fn expect(answer: anyhow::Result<Answer>, server: &str) -> anyhow::Result<Answer> {
    let answer = answer?;
    if answer.server != server || *answer.saw.ip() != CLIENT_IP {
        bail!("expected {server} to see {CLIENT_IP}, got {answer:?}");
    }
    Ok(answer)
}

fn container_ip(engine: &Dockerd, name: &str) -> Ipv4Addr {
    let text = engine
        .docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ])
        .unwrap();
    text.split_whitespace()
        .next()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("{name} has no IPv4 address: {text:?}"))
}

fn short(id: &str) -> &str {
    &id[..12]
}

/// `portmap ARGS...` in `ns`, bounded in time.
fn portmap_in(ns: &Netns, args: &[&str]) -> Output {
    bounded(
        ns.command(portmap_bin()).unwrap().args(args),
        Duration::from_secs(60),
    )
    .expect("portmap finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The counters of the binding on `port`/`proto`.
fn counters(instance: &Portmap, port: u16, proto: &str) -> control::Counters {
    binding(&call(instance, &Request::Stats).bindings, port, proto)
        .and_then(|b| b.counters)
        .unwrap_or_else(|| panic!("no counters for {port}/{proto}"))
}

// Two containers publish a TCP and a UDP port; portmap finds both and serves them: every
// answer comes from the right container, which saw the client's own address; portmap's
// counters show the packets, and Docker's DNAT rules see none of them. When portmap stops,
// Docker's rules carry new connections again.
#[test]
fn docker_published_ports_are_served_through_bpf() {
    let bed = bed();
    let engine = &bed.engine;
    let web_id = engine.run("web", &["-p", "8080:80"], &[]).unwrap();
    let app_id = engine
        .run("app", &["-p", "5353:53/udp"], &["sleep", "600"])
        .unwrap();
    let _servers = ContainerServers::start(engine.pid("app").unwrap(), "app", None, Some(53))
        .expect("a UDP server in app");
    let (web_ip, app_ip) = (container_ip(engine, "web"), container_ip(engine, "app"));
    let web = SocketAddrV4::new(HOST_IP, 8080);
    let dns = SocketAddrV4::new(HOST_IP, 5353);

    // Docker's own path first: the bed is sound.
    bed.client
        .run(|| expect(http_who(web), "web"))
        .expect("Docker's path serves web");
    bed.client
        .run(|| expect(udp_who(40_000, dns), "app"))
        .expect("Docker's path serves app");

    let instance = follow(&bed);
    for line in [
        format!(
            "80/tcp -> 0.0.0.0:8080 => {web_ip}:80  (docker:web ({}))",
            short(&web_id)
        ),
        format!(
            "53/udp -> 0.0.0.0:5353 => {app_ip}:53  (docker:app ({}))",
            short(&app_id)
        ),
    ] {
        assert!(
            instance.banner.contains(&line),
            "{line}\n{}",
            instance.banner
        );
    }
    let dnat = || {
        (
            engine.dnat_packets("tcp", 8080).unwrap(),
            engine.dnat_packets("udp", 5353).unwrap(),
        )
    };
    let before = dnat();
    const N: u16 = 20;
    bed.client.run(|| {
        for i in 0..N {
            expect(http_who(web), "web").expect("web through portmap");
            let answer = expect(udp_who(41_000 + i, dns), "app").expect("app through portmap");
            assert_eq!(answer.saw.port(), 41_000 + i, "the client's own port");
        }
    });
    assert_eq!(dnat(), before, "Docker's DNAT rules saw no new connection");

    let web_counters = counters(&instance, 8080, "tcp");
    let dns_counters = counters(&instance, 5353, "udp");
    // A connection is at least SYN, ACK, request, ACK, FIN, ACK: 20 of them, each way.
    assert!(
        web_counters.to_container_packets >= u64::from(N) * 4
            && web_counters.to_client_packets >= u64::from(N) * 3,
        "{web_counters:?}"
    );
    assert_eq!(
        (
            dns_counters.to_container_packets,
            dns_counters.to_client_packets
        ),
        (u64::from(N), u64::from(N)),
        "every datagram each way"
    );
    let stats = call(&instance, &Request::Stats);
    let reason = |name: &str| {
        stats
            .reasons
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    };
    assert!(reason("uplink.translated") >= u64::from(N) * 5, "{stats:?}");
    // Docker's veths are ports of its bridge: replies leave through `tc_port` on them.
    assert!(
        reason("tc_port.translated") >= u64::from(N) * 4,
        "{stats:?}"
    );

    // `ls` says where each binding came from: the container, by name and id.
    let pin_dir = instance.pin_dir.to_string_lossy().into_owned();
    let listed = portmap_in(&engine.ns, &["ls", "--pin-dir", &pin_dir]);
    let listed = text(&listed.stdout);
    for expected in [
        format!(
            "80/tcp -> 0.0.0.0:8080 => {web_ip}:80  (docker:web ({}): container web 0.0.0.0:8080->80/tcp)",
            short(&web_id)
        ),
        format!(
            "53/udp -> 0.0.0.0:5353 => {app_ip}:53  (docker:app ({}): container app 0.0.0.0:5353->53/udp)",
            short(&app_id)
        ),
    ] {
        assert!(listed.contains(&expected), "{expected}\nin:\n{listed}");
    }
    let shown = portmap_in(&engine.ns, &["stats", "--pin-dir", &pin_dir]);
    println!("{}", text(&shown.stdout));

    let stopped = instance.stop().unwrap();
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    // Docker's rules carry new connections again.
    bed.client.run(|| {
        expect(http_who(web), "web").expect("web through Docker again");
        expect(udp_who(42_000, dns), "app").expect("app through Docker again");
    });
    let after = dnat();
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "Docker's DNAT carried them: {before:?} -> {after:?}"
    );
}

// Containers stop, start again on another address, restart, join and leave networks, are
// renamed and removed while portmap runs: each time the bindings follow within a second, and
// a stopped container's port is refused at once rather than sent to a dead address.
#[test]
fn bindings_follow_containers_as_they_start_stop_and_move() {
    let bed = bed();
    let engine = &bed.engine;
    let web_id = engine.run("web", &["-p", "8080:80"], &[]).unwrap();
    let first_ip = container_ip(engine, "web");
    let instance = follow(&bed);
    let web = SocketAddrV4::new(HOST_IP, 8080);
    let ask = |to| bed.client.run(|| http_who(to));
    expect(ask(web), "web").expect("web at its first address");
    let points_to = |ip: Ipv4Addr| {
        move |bindings: &[BindingInfo]| {
            binding(bindings, 8080, "tcp").is_some_and(|b| b.container_ip == ip.to_string())
        }
    };

    // Stopped: withdrawn, and the port refused at once (Docker's rules are gone too).
    engine.docker(&["stop", "-t", "1", "web"]).unwrap();
    let took = wait_ls(&instance, "stop withdraws", FOLLOW, |b| {
        binding(b, 8080, "tcp").is_none()
    });
    println!("stop followed in {took:?}");
    let refused = ask(web).expect_err("nothing serves a stopped container");
    assert!(
        refused
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "refused at once, not sent to a dead address: {refused:#}"
    );

    // Started again after another container took its address: the binding moves.
    engine.run("filler", &[], &["sleep", "600"]).unwrap();
    assert_eq!(container_ip(engine, "filler"), first_ip);
    engine.docker(&["start", "web"]).unwrap();
    let second_ip = container_ip(engine, "web");
    assert_ne!(second_ip, first_ip, "web moved");
    let took = wait_ls(
        &instance,
        "start follows the new address",
        FOLLOW,
        points_to(second_ip),
    );
    println!("start on a new address followed in {took:?}");
    let answer = expect(ask(web), "web").expect("web at its new address");
    println!("web at {second_ip}: {answer:?}");

    // Restarted: withdrawn and published again, which zeroes the binding's counters.
    assert!(counters(&instance, 8080, "tcp").to_container_packets > 0);
    engine.docker(&["restart", "-t", "1", "web"]).unwrap();
    let restarted_ip = container_ip(engine, "web").to_string();
    let start = Instant::now();
    loop {
        let now = binding(&call(&instance, &Request::Stats).bindings, 8080, "tcp");
        if now.as_ref().is_some_and(|b| {
            b.container_ip == restarted_ip
                && b.counters.is_some_and(|c| c.to_container_packets == 0)
        }) {
            break;
        }
        assert!(start.elapsed() < FOLLOW, "restart not followed: {now:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("restart followed in {:?}", start.elapsed());
    expect(ask(web), "web").expect("web after its restart");

    // A user network: its own bridge, br-<id>, which gets the reply program.
    let net_id = engine.docker(&["network", "create", "pmnet"]).unwrap();
    let web2 = SocketAddrV4::new(HOST_IP, 8081);
    engine
        .run("web2", &["--network", "pmnet", "-p", "8081:80"], &[])
        .unwrap();
    let web2_ip = container_ip(engine, "web2");
    let took = wait_ls(&instance, "a container on a user network", FOLLOW, |b| {
        binding(b, 8081, "tcp").is_some_and(|b| {
            b.container_ip == web2_ip.to_string() && b.bridge == format!("br-{}", short(&net_id))
        })
    });
    println!("user network followed in {took:?}");
    expect(ask(web2), "web2").expect("web2 on its user network");
    assert!(
        counters(&instance, 8081, "tcp").to_client_packets > 0,
        "through portmap"
    );

    // Connected to the default network as well: Docker moves the published ports to it (its
    // gateway endpoint), and so does portmap; disconnected, they move back.
    let docker_target = |port: u16| {
        let rules = text(
            &engine
                .ns
                .exec("iptables", &["-t", "nat", "-S", "DOCKER"])
                .unwrap()
                .stdout,
        );
        rules
            .lines()
            .find(|l| l.contains(&format!("--dport {port} ")))
            .and_then(|l| l.split("--to-destination ").nth(1))
            .map(|to| to.trim().to_owned())
    };
    for (action, why) in [("connect", "joins bridge"), ("disconnect", "leaves bridge")] {
        engine
            .docker(&["network", action, "bridge", "web2"])
            .unwrap();
        let target = docker_target(8081).expect("Docker's DNAT rule for 8081");
        let took = wait_ls(&instance, why, FOLLOW, |b| {
            binding(b, 8081, "tcp")
                .is_some_and(|b| format!("{}:{}", b.container_ip, b.container_port) == target)
        });
        println!("web2 {why} ({target}) followed in {took:?}");
        expect(ask(web2), "web2").unwrap_or_else(|e| panic!("web2 after it {why}: {e:#}"));
    }

    // Renamed: the owner says so.
    engine.docker(&["rename", "web", "www"]).unwrap();
    let owner = format!("docker:www ({})", short(&web_id));
    wait_ls(&instance, "rename", FOLLOW, |b| {
        binding(b, 8080, "tcp").is_some_and(|b| b.owner.as_deref() == Some(owner.as_str()))
    });
    expect(ask(web), "web").expect("www still answers");

    // Removed.
    engine.docker(&["rm", "-f", "web2"]).unwrap();
    wait_ls(&instance, "removal withdraws", FOLLOW, |b| {
        binding(b, 8081, "tcp").is_none()
    });
    assert_eq!(ls(&instance).len(), 1, "only www's binding is left");
    drop(instance);
}

/// A client loop on its own thread: fresh TCP connections and UDP requests (from a fresh port
/// each) to app, alternately, until stopped; bounded in count and time. app answers at once,
/// so no exchange is left waiting for its answer when portmap is killed (see
/// `stopping_and_restarting_portmap_fails_no_request`).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Netns, tcp: SocketAddrV4, udp: SocketAddrV4) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (flag, good, bad) = (stop.clone(), ok.clone(), errors.clone());
        let thread = client.spawn(move || {
            let start = Instant::now();
            let mut port = 20_000u16;
            for i in 0..200_000u32 {
                if flag.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(180) {
                    break;
                }
                let result = if i % 2 == 0 {
                    expect(servers::tcp_ask(None, tcp), "app")
                } else {
                    port = if port >= 60_000 { 20_000 } else { port + 1 };
                    expect(udp_who(port, udp), "app")
                };
                match result {
                    Ok(_) => {
                        good.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => bad
                        .lock()
                        .unwrap()
                        .push(format!("request {i} at {:?}: {error:#}", start.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            ok,
            errors,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the loop; the answered count and the failures.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (self.answered(), self.errors.lock().unwrap().clone())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asks on an open connection; the server must be app and see the connection's own address.
fn ask_on(conn: &mut TcpStream, what: &str) {
    let local = conn.local_addr().unwrap();
    let answer = servers::tcp_ask_on(conn).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_eq!(answer.server, "app", "{what}");
    assert_eq!(
        SocketAddr::V4(answer.saw),
        local,
        "{what}: app saw the client"
    );
}

// portmap is stopped (SIGTERM), started again, killed (SIGKILL) and started again while a
// client loop opens fresh TCP connections and sends UDP requests: not one fails, since
// Docker's rules carry whatever portmap does not. Connections open at each switch keep
// working: one opened through Docker's path before portmap started moves to the BPF path
// (the mid-stream packets are translated and recorded, so its replies are too) and back when
// portmap goes (its conntrack entry was marked to take it back); one opened through portmap
// is picked up by conntrack mid-stream and translated by Docker's DNAT rule. A request that
// portmap translated just before a SIGTERM is answered through it (the reply program stays a
// moment longer). (After a SIGKILL, an answer sent more than a few milliseconds later finds
// neither path: the README's "Beside Docker" says why.)
#[test]
fn stopping_and_restarting_portmap_fails_no_request() {
    let bed = bed();
    let engine = &bed.engine;
    engine.run("web", &["-p", "8080:80"], &[]).unwrap();
    engine
        .run(
            "app",
            &["-p", "7000:7000", "-p", "5353:53/udp"],
            &["sleep", "600"],
        )
        .unwrap();
    let _servers = ContainerServers::start(engine.pid("app").unwrap(), "app", Some(7000), Some(53))
        .expect("servers in app");
    let web = SocketAddrV4::new(HOST_IP, 8080);
    let dns = SocketAddrV4::new(HOST_IP, 5353);
    let app = SocketAddrV4::new(HOST_IP, 7000);
    let connect = || bed.client.run(|| servers::tcp_connect(None, app)).unwrap();

    // Opened through Docker's path, before portmap.
    let mut before = connect();
    ask_on(&mut before, "before portmap, through Docker");
    let traffic = Traffic::start(&bed.client, app, dns);
    let mut phases = Vec::new();
    let mut mark = |name: &str, traffic: &Traffic| {
        phases.push((name.to_owned(), traffic.answered()));
    };
    std::thread::sleep(Duration::from_millis(500));
    mark("Docker", &traffic);

    // portmap takes over; the connection opened before it moves to the BPF path, both ways.
    let instance = follow(&bed);
    ask_on(&mut before, "the Docker-path connection, portmap running");
    let moved = counters(&instance, 7000, "tcp");
    assert!(
        moved.to_container_packets > 0 && moved.to_client_packets > 0 && moved.flows > 0,
        "its packets and replies went through portmap: {moved:?}"
    );
    let mut during = connect();
    ask_on(&mut during, "opened through portmap");
    std::thread::sleep(Duration::from_secs(1));
    mark("portmap 1", &traffic);

    // SIGTERM: Docker's rules take both connections over. A slow request sent just before
    // is answered through portmap's reply program, which outlives the uplink's a moment.
    let dnat_before = engine.dnat_packets("tcp", 7000).unwrap();
    let slow = bed.client.spawn(move || {
        let mut conn = servers::tcp_connect(None, web)?;
        conn.write_all(b"GET /cgi-bin/who?0.5 HTTP/1.0\r\nHost: portmap\r\n\r\n")?;
        let mut text = String::new();
        conn.take(64 << 10).read_to_string(&mut text)?;
        anyhow::Ok(text)
    });
    std::thread::sleep(Duration::from_millis(100));
    let stopped = instance.stop().unwrap();
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let slow = slow
        .join()
        .unwrap()
        .expect("the request in flight at SIGTERM");
    assert!(slow.contains("web saw"), "{slow}");
    ask_on(&mut before, "the Docker-path connection after SIGTERM");
    ask_on(&mut during, "the portmap connection after SIGTERM");
    assert!(
        engine.dnat_packets("tcp", 7000).unwrap() > dnat_before,
        "conntrack picked the portmap connection up and Docker's DNAT rule translated it"
    );
    std::thread::sleep(Duration::from_secs(1));
    mark("Docker after SIGTERM", &traffic);

    // Started again: the connections move back to the BPF path.
    let instance = follow(&bed);
    ask_on(&mut before, "the Docker-path connection, portmap again");
    ask_on(&mut during, "the portmap connection, portmap again");
    assert!(counters(&instance, 7000, "tcp").to_client_packets >= 2);
    let mut during2 = connect();
    ask_on(&mut during2, "opened through the second portmap");
    std::thread::sleep(Duration::from_secs(1));
    mark("portmap 2", &traffic);

    // SIGKILL: no clean-up runs, the kernel detaches the programs as their links close.
    let pid = instance.pid().expect("running") as i32;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(instance); // reaps it, and removes the pins a killed instance leaves
    for (conn, what) in [
        (&mut before, "the Docker-path connection after SIGKILL"),
        (&mut during, "the first portmap connection after SIGKILL"),
        (&mut during2, "the second portmap connection after SIGKILL"),
    ] {
        ask_on(conn, what);
    }
    std::thread::sleep(Duration::from_secs(1));
    mark("Docker after SIGKILL", &traffic);

    let instance = follow(&bed);
    for (conn, what) in [
        (&mut before, "the Docker-path connection, third portmap"),
        (&mut during, "the first portmap connection, third portmap"),
        (&mut during2, "the second portmap connection, third portmap"),
    ] {
        ask_on(conn, what);
    }
    std::thread::sleep(Duration::from_secs(1));
    mark("portmap 3", &traffic);

    let (answered, failures) = traffic.finish();
    println!("answered {answered}; by phase (cumulative): {phases:?}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        answered + failures.len() as u64,
        failures.join("\n")
    );
    for pair in phases.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "requests were answered during {:?}: {phases:?}",
            pair[1].0
        );
    }
    let last = counters(&instance, 5353, "udp");
    assert!(
        last.to_client_packets > 0,
        "the loop went through portmap 3: {last:?}"
    );
    drop(instance);
}

// An engine that is not there fails the start with the socket's name and the reason, as does
// a port given to portmap that a container publishes too (naming both). An engine that goes
// away while portmap runs leaves the bindings serving; portmap reconnects with backoff, and
// what changed while it was away (a container stopped, another started) is picked up by
// listing again; events are followed again afterwards.
#[test]
fn an_engine_missing_at_start_or_gone_for_a_while() {
    let mut bed = bed();
    // On a user network, whose bridge (br-<id>) portmap learns from the engine.
    bed.engine.docker(&["network", "create", "pmnet"]).unwrap();
    bed.engine
        .run("web", &["--network", "pmnet", "-p", "8080:80"], &[])
        .unwrap();
    bed.engine
        .run(
            "app",
            &["--network", "pmnet", "-p", "5353:53/udp"],
            &["sleep", "600"],
        )
        .unwrap();
    let _servers = ContainerServers::start(bed.engine.pid("app").unwrap(), "app", None, Some(53))
        .expect("a UDP server in app");
    let web = SocketAddrV4::new(HOST_IP, 8080);
    let dns = SocketAddrV4::new(HOST_IP, 5353);

    // Start-up failures: each names its input and leaves nothing behind.
    let engine = &bed.engine;
    let missing = engine.dir.join("missing.sock");
    let stale = engine.dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap()); // the file stays; nothing listens
    let pin_dir = format!("/sys/fs/bpf/portmap-test/{}-refused", engine.ns.name());
    let given = format!("8080:80={}", container_ip(engine, "web"));
    for (extra, code, says) in [
        (
            vec![
                "--docker-host".to_owned(),
                format!("unix://{}", missing.display()),
            ],
            1,
            format!("{} does not exist", missing.display()),
        ),
        (
            vec![
                "--docker-host".to_owned(),
                format!("unix://{}", stale.display()),
            ],
            1,
            format!(
                "nothing listens on {}: the engine is not running",
                stale.display()
            ),
        ),
        (
            vec![
                "--docker-host".to_owned(),
                "tcp://127.0.0.1:2375".to_owned(),
            ],
            2,
            "only unix:// sockets are supported".to_owned(),
        ),
        (
            vec![
                "--docker-host".to_owned(),
                engine.url(),
                "--publish".to_owned(),
                given.clone(),
            ],
            2,
            format!(
                r#"host port 8080/tcp is published twice: by "{given}" and by "container web 0.0.0.0:8080->80/tcp""#
            ),
        ),
    ] {
        let mut args = vec!["run", "--docker", "--iface", UPLINK, "--pin-dir", &pin_dir];
        args.extend(extra.iter().map(String::as_str));
        let out = portmap_in(&engine.ns, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(&says), "{args:?}: {says}\nin: {stderr}");
        assert!(
            !std::path::Path::new(&pin_dir).exists(),
            "{args:?} left pins behind"
        );
    }
    // The instance lock in /run/portmap outlives a refused start (it is only ever locked).
    let _ = std::fs::remove_file(portmap_user::control::InstancePaths::new(pin_dir.as_ref()).lock);

    let instance = follow(&bed);
    assert_eq!(ls(&instance).len(), 2);

    // The engine goes away (its containers live on): the bindings stay and serve.
    bed.engine.stop_daemon().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let served_before = counters(&instance, 8080, "tcp").to_client_packets;
    bed.client.run(|| {
        for i in 0..5 {
            expect(http_who(web), "web").expect("web while the engine is away");
            expect(udp_who(44_000 + i, dns), "app").expect("app while the engine is away");
        }
    });
    assert!(
        counters(&instance, 8080, "tcp").to_client_packets > served_before,
        "served by portmap meanwhile"
    );
    assert_eq!(ls(&instance).len(), 2, "the bindings are kept");

    // Changes while portmap cannot reach the engine: the daemon comes back on another socket
    // only, a container stops and another starts.
    let admin = bed.engine.admin_socket();
    bed.engine
        .start_daemon(std::slice::from_ref(&admin))
        .unwrap();
    bed.engine
        .docker_at(&admin, &["stop", "-t", "1", "app"])
        .unwrap();
    bed.engine
        .docker_at(
            &admin,
            &[
                "run",
                "-d",
                "--init",
                "--name",
                "web2",
                "--hostname",
                "web2",
                "--network",
                "pmnet",
                "-p",
                "8081:80",
                portmap_tests::dockerd::IMAGE,
            ],
        )
        .unwrap();
    let addresses = bed
        .engine
        .docker_at(
            &admin,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "web",
                "web2",
            ],
        )
        .unwrap();
    let addresses: Vec<&str> = addresses.lines().collect();
    assert_ne!(addresses[0], addresses[1], "Docker gave web2 web's address");
    bed.engine.stop_daemon().unwrap();
    assert!(
        binding(&ls(&instance), 5353, "udp").is_some(),
        "portmap has not seen the changes yet"
    );

    // Back on its socket: portmap reconnects (backoff of at most 5 s) and lists again.
    let back = Instant::now();
    let sockets = [bed.engine.socket(), admin];
    bed.engine.start_daemon(&sockets).unwrap();
    let took = wait_ls(
        &instance,
        "the changes made while away",
        Duration::from_secs(10),
        |b| binding(b, 5353, "udp").is_none() && binding(b, 8081, "tcp").is_some(),
    );
    println!(
        "picked up {took:?} after the engine came back ({:?} since its start)",
        back.elapsed()
    );
    let web2 = SocketAddrV4::new(HOST_IP, 8081);
    bed.client
        .run(|| expect(http_who(web2), "web2"))
        .expect("web2 through portmap");
    assert!(counters(&instance, 8081, "tcp").to_client_packets > 0);
    bed.client
        .run(|| expect(http_who(web), "web"))
        .expect("web still");

    // And events are followed again.
    bed.engine.docker(&["stop", "-t", "1", "web2"]).unwrap();
    wait_ls(&instance, "an event after reconnecting", FOLLOW, |b| {
        binding(b, 8081, "tcp").is_none()
    });

    let stopped = instance.stop().unwrap();
    let stderr = text(&stopped.stderr);
    assert!(stderr.contains("docker: lost the engine at"), "{stderr}");
    assert!(stderr.contains("docker: reconnected to"), "{stderr}");
}
