//! A running instance changed while traffic flows: `portmap add`, `rm`, `add --replace`, `ls`
//! and `stats`, through the real binary, against real TCP and UDP exchanges in namespaces.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use portmap_tests::{
    netns::Netns,
    process::{Portmap, portmap, require_root},
    servers,
    topology::{BRIDGE, CLIENT_IP, DockerHost, HOST_IP, Options, UPLINK},
};

fn setup(publish: &[&str]) -> (DockerHost, Portmap, Vec<servers::Server>) {
    require_root();
    let net = DockerHost::build(&Options::default()).expect("topology");
    let (c1, c2) = (&net.containers[0], &net.containers[1]);
    let servers = vec![
        servers::tcp(&c1.ns, "c1", 80).unwrap(),
        servers::udp(&c1.ns, "c1", 53).unwrap(),
        servers::tcp(&c2.ns, "c2", 80).unwrap(),
        servers::udp(&c2.ns, "c2", 53).unwrap(),
    ];
    let mut args = vec!["--iface", UPLINK, "--bridge", BRIDGE];
    for spec in publish {
        args.extend(["--publish", spec]);
    }
    let portmap = Portmap::start(&net.host, &args).expect("portmap run starts");
    (net, portmap, servers)
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

/// A client loop on its own thread: asks again and again until stopped or its time is up,
/// counting answers from `expect` and everything else.
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(client: &Netns, udp: bool, to: SocketAddrV4, expect: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (flag, good, bad) = (stop.clone(), ok.clone(), failed.clone());
        let thread = client.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut port = 41_000u16;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let answer = if udp {
                    port += 1;
                    servers::udp_ask(SocketAddrV4::new(CLIENT_IP, port), to).map(|(a, _)| a)
                } else {
                    servers::tcp_ask(None, to)
                };
                match answer {
                    Ok(a) if a.server == expect => good.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (answered as expected, anything else).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

// Bindings come and go and one is re-pointed while TCP and UDP loops run on two others: the
// others lose nothing, an added binding answers at once, a removed one stops at once.
#[test]
fn live_add_rm_and_replace_leave_other_bindings_untouched() {
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2", "5353:53/udp=172.17.0.2"]);
    let tcp = Loop::start(&net.client, false, SocketAddrV4::new(HOST_IP, 8080), "c1");
    let udp = Loop::start(&net.client, true, SocketAddrV4::new(HOST_IP, 5353), "c1");
    let to_9090 = SocketAddrV4::new(HOST_IP, 9090);

    for round in 0..5 {
        let added = ctl(
            &net,
            &instance,
            &["add", "9090:80=172.17.0.3", "6000:53/udp=172.17.0.3"],
        );
        assert!(
            added.status.success(),
            "round {round}: add: {}",
            stderr(&added)
        );
        assert!(
            stdout(&added).contains("added 80/tcp -> 0.0.0.0:9090 => 172.17.0.3:80"),
            "{}",
            stdout(&added)
        );
        let answer = net.client.run(|| servers::tcp_ask(None, to_9090));
        assert_eq!(
            answer.expect("an added binding answers at once").server,
            "c2"
        );

        let replaced = ctl(&net, &instance, &["add", "--replace", "9090:80=172.17.0.2"]);
        assert!(
            replaced.status.success(),
            "round {round}: replace: {}",
            stderr(&replaced)
        );
        let answer = net.client.run(|| servers::tcp_ask(None, to_9090));
        assert_eq!(
            answer.expect("re-pointed").server,
            "c1",
            "round {round}: 9090 now goes to c1"
        );

        let removed = ctl(&net, &instance, &["rm", "9090", "6000/udp"]);
        assert!(
            removed.status.success(),
            "round {round}: rm: {}",
            stderr(&removed)
        );
        let refused = net.client.run(|| servers::tcp_ask(None, to_9090));
        assert!(
            refused.is_err(),
            "round {round}: a removed binding stops at once"
        );
    }

    let (tcp_ok, tcp_failed) = tcp.finish();
    let (udp_ok, udp_failed) = udp.finish();
    assert_eq!(
        (tcp_failed, udp_failed),
        (0, 0),
        "the untouched bindings lost nothing"
    );
    assert!(
        tcp_ok > 10 && udp_ok > 10,
        "the loops ran: tcp {tcp_ok}, udp {udp_ok}"
    );
    let ls = stdout(&ctl(&net, &instance, &["ls"]));
    assert_eq!(ls.lines().count(), 2, "back to the two bindings:\n{ls}");
}

// A UDP flow to a binding that is re-pointed follows the new container at once: no stale
// translation keeps it on the old one (moby #8795, #53384).
#[test]
fn live_replace_moves_an_ongoing_udp_flow_to_the_new_container() {
    let (net, instance, _servers) = setup(&["6000:53/udp=172.17.0.2"]);
    let to = SocketAddrV4::new(HOST_IP, 6000);
    let from = SocketAddrV4::new(CLIENT_IP, 33_333);
    let socket = net.client.run(|| UdpSocket::bind(from)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let ask = |socket: &UdpSocket| {
        socket.send_to(b"who", to).unwrap();
        let mut buf = [0u8; 256];
        let (n, source) = socket.recv_from(&mut buf).expect("an answer");
        assert_eq!(
            source,
            SocketAddr::V4(to),
            "answered from the published port"
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&socket).starts_with("c1 saw"), "before: c1");
    let replaced = ctl(
        &net,
        &instance,
        &["add", "--replace", "6000:53/udp=172.17.0.3"],
    );
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    for _ in 0..3 {
        assert!(
            ask(&socket).starts_with("c2 saw"),
            "the same flow now reaches c2"
        );
    }
    let stats = stdout(&ctl(&net, &instance, &["stats"]));
    assert!(
        stats.lines().any(|l| l.contains("=> 172.17.0.3:53")),
        "{stats}"
    );
}

// A published port is held: another process on the host cannot bind it, and publishing a
// port another process holds is refused naming that process.
#[test]
fn live_published_ports_are_reserved_and_taken_ports_are_refused() {
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2", "5353:53/udp=172.17.0.2"]);
    let taken_tcp = net
        .host
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)));
    assert!(taken_tcp.is_err(), "8080/tcp is held by portmap");
    let taken_udp = net
        .host
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)));
    assert!(taken_udp.is_err(), "5353/udp is held by portmap");

    // This test process holds 7070; publishing it must fail and name us.
    let _ours = net
        .host
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7070)))
        .unwrap();
    let refused = ctl(&net, &instance, &["add", "7070:80=172.17.0.2"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("host port 7070/tcp is already in use by"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "names the holder: {message}"
    );

    let after = stdout(&ctl(&net, &instance, &["ls"]));
    assert_eq!(after.lines().count(), 2, "nothing half-applied:\n{after}");
}

// A port that finished connections left in TIME_WAIT is published and held all the same: a
// plain bind is refused there, so the hold falls back to SO_REUSEADDR and listening, and other
// programs still cannot bind the port.
#[test]
fn live_a_port_in_time_wait_is_published_and_held() {
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2"]);
    net.host.run(|| {
        // The server side closes first: its end of the connection, port 7171, waits.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7171)).unwrap();
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, 7171)).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(server);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server closed");
    });
    assert!(
        net.host.run(|| time_wait_on(7171)),
        "a connection on port 7171 is in TIME_WAIT"
    );

    let added = ctl(&net, &instance, &["add", "7171:80=172.17.0.2"]);
    assert!(added.status.success(), "{}", stderr(&added));
    let taken = net
        .host
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7171)));
    assert!(taken.is_err(), "7171/tcp is held by portmap");
    let answer = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 7171)));
    assert_eq!(answer.expect("7171 answers").server, "c1");
}

/// Whether this thread's network namespace has a TCP connection in TIME_WAIT on local `port`.
fn time_wait_on(port: u16) -> bool {
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(3) == Some(&TIME_WAIT)
            && fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .is_some_and(|p| u16::from_str_radix(p, 16) == Ok(port))
    })
}

// A bulk add over bindings on every address and on one: without --replace the first new binding
// that overlaps is named and nothing changes; with it, every binding overlapped goes, and the
// new ones answer.
#[test]
fn live_bulk_add_names_its_first_overlap_and_replace_displaces_every_one() {
    let on_host = format!("{HOST_IP}:9090:80=172.17.0.2");
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2", &on_host]);
    let specific_8080 = format!("{HOST_IP}:8080:80=172.17.0.3");
    let specs = ["7000:80=172.17.0.3", &specific_8080, "9090:80=172.17.0.3"];
    let before = stdout(&ctl(&net, &instance, &["ls"]));

    let mut add = vec!["add"];
    add.extend(specs);
    let conflict = ctl(&net, &instance, &add);
    assert_eq!(conflict.status.code(), Some(2), "{}", stderr(&conflict));
    let expected = format!(
        r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.2" and by "{specific_8080}""#
    );
    assert!(
        stderr(&conflict).contains(&expected),
        "{}",
        stderr(&conflict)
    );
    assert_eq!(
        stdout(&ctl(&net, &instance, &["ls"])),
        before,
        "nothing changed"
    );

    add.insert(1, "--replace");
    let replaced = ctl(&net, &instance, &add);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    let listed = stdout(&ctl(&net, &instance, &["ls"]));
    assert!(
        !listed.contains("172.17.0.2:"),
        "both overlapped bindings are gone:\n{listed}"
    );
    for port in [7000, 8080, 9090] {
        let answer = net
            .client
            .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, port)));
        assert_eq!(
            answer.expect("a new binding answers").server,
            "c2",
            "port {port}"
        );
    }
}

// Conflicts and unknown selectors are refused whole, naming what is wrong.
#[test]
fn live_conflicting_add_and_unknown_rm_change_nothing() {
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2"]);
    let before = stdout(&ctl(&net, &instance, &["ls"]));

    let conflict = ctl(
        &net,
        &instance,
        &["add", "9191:80=172.17.0.3", "8080:81=172.17.0.3"],
    );
    assert_eq!(conflict.status.code(), Some(2));
    assert!(
        stderr(&conflict).contains(r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.2" and by "8080:81=172.17.0.3""#),
        "{}",
        stderr(&conflict)
    );
    let unknown = ctl(&net, &instance, &["rm", "8080", "8081"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains(r#"no published binding matches "8081""#),
        "{}",
        stderr(&unknown)
    );
    let malformed = ctl(&net, &instance, &["add", "90:abc=172.17.0.3"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains(r#"container port "abc""#),
        "{}",
        stderr(&malformed)
    );

    assert_eq!(
        stdout(&ctl(&net, &instance, &["ls"])),
        before,
        "nothing changed"
    );
    let answer = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 9191)));
    assert!(
        answer.is_err(),
        "the good half of a refused add was not applied"
    );
}

// `ls` prints docker-port lines with their source, `--json` a stable shape; `stats` counts
// per binding and `--watch --count N` prints N tables.
#[test]
fn live_ls_and_stats_report_each_binding() {
    let (net, instance, _servers) =
        setup(&["8080:80=172.17.0.2", "127.0.0.1:5353:53/udp=172.17.0.3"]);
    net.client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8080)))
        .unwrap();

    let ls = stdout(&ctl(&net, &instance, &["ls"]));
    assert!(
        ls.contains("80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80  (8080:80=172.17.0.2)"),
        "{ls}"
    );
    assert!(
        ls.contains("53/udp -> 127.0.0.1:5353 => 172.17.0.3:53"),
        "{ls}"
    );

    let json = stdout(&ctl(&net, &instance, &["ls", "--json"]));
    let json = json.trim();
    assert!(json.starts_with(r#"{"bindings":[{"id":0,"proto":"tcp","host_ip":"0.0.0.0","host_port":8080,"container_ip":"172.17.0.2","container_port":80,"source":"8080:80=172.17.0.2","bridge":"docker0"}"#), "{json}");

    let stats = stdout(&ctl(&net, &instance, &["stats"]));
    let line = stats
        .lines()
        .find(|l| l.contains("-> 0.0.0.0:8080 =>"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(5)
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        numbers[0] >= 3 && numbers[2] >= 2,
        "packets both ways: {stats}"
    );
    assert_eq!(numbers[4], 1, "one live flow: {stats}");

    let watch = ctl(
        &net,
        &instance,
        &["stats", "--watch", "--interval", "0.2", "--count", "3"],
    );
    assert!(watch.status.success(), "{}", stderr(&watch));
    assert_eq!(
        stdout(&watch).matches("BINDING").count(),
        3,
        "{}",
        stdout(&watch)
    );
}

// `portmap stats --watch | head -1`: once its reader is gone, the watch ends, quietly and with
// success, instead of panicking on the closed pipe or writing into it forever.
#[test]
fn live_stats_watch_ends_when_its_reader_goes_away() {
    use std::io::BufRead as _;
    let (net, instance, _servers) = setup(&["8080:80=172.17.0.2"]);
    let pin_dir = instance.pin_dir.to_string_lossy().into_owned();
    let mut watch = net
        .host
        .command(portmap_tests::process::portmap_bin())
        .unwrap()
        .args([
            "stats",
            "--watch",
            "--interval",
            "0.1",
            "--pin-dir",
            &pin_dir,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut first = String::new();
        std::io::BufReader::new(watch.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("BINDING"), "{first}");
    } // The reader goes away here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = watch.kill();
            panic!("stats --watch still runs 5 s after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = watch.wait_with_output().unwrap();
    assert!(status.success(), "{status}: {}", stderr(&out));
}

// A binding on a second bridge (a Docker user network): the bridge gets the reply program when
// its first binding arrives, and its container answers with the client's own address seen.
#[test]
fn live_add_on_a_second_bridge_serves_its_containers() {
    let (net, instance, _servers) = setup(&[]);
    net.host.ip("link add br-net2 type bridge").unwrap();
    net.host.ip("addr add 172.18.0.1/16 dev br-net2").unwrap();
    net.host.ip("link set br-net2 up").unwrap();
    let c3 = Netns::new("c3").unwrap();
    c3.ip(&format!(
        "link add eth0 type veth peer name vethn2 netns {}",
        net.host.name()
    ))
    .unwrap();
    c3.ip("addr add 172.18.0.2/16 dev eth0").unwrap();
    c3.ip("link set eth0 up").unwrap();
    c3.ip("route add default via 172.18.0.1").unwrap();
    c3.exec("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
    net.host.ip("link set vethn2 master br-net2").unwrap();
    net.host.ip("link set vethn2 up").unwrap();
    let _server = servers::tcp(&c3, "c3", 80).unwrap();

    let added = ctl(
        &net,
        &instance,
        &["add", "--bridge", "br-net2", "7070:80=172.18.0.2"],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    let answer = net
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 7070)))
        .expect("an answer from the second network");
    assert_eq!(answer.server, "c3");
    assert_eq!(*answer.saw.ip(), CLIENT_IP);
    let ls = stdout(&ctl(&net, &instance, &["ls", "--json"]));
    assert!(ls.contains(r#""bridge":"br-net2""#), "{ls}");

    let unknown = ctl(
        &net,
        &instance,
        &["add", "--bridge", "br-nope", "7171:80=172.18.0.2"],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains(r#"no network interface named "br-nope""#),
        "{}",
        stderr(&unknown)
    );
}
