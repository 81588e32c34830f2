//! portmap as a chained CNI plugin: the reference `bridge` + `host-local`, then `portmap-ebpf`,
//! run as a runtime runs them inside a node namespace; the reference `portmap` plugin through
//! the same checks as the comparison; twenty containers at once; refusals shaped as the CNI
//! specification says, leaving nothing behind; a dead instance brought back by the next CHECK,
//! and one still exiting waited for.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::{fd::AsRawFd as _, unix::net::UnixListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use portmap_tests::{
    cni::{BRIDGE, CniNode, Publisher, mapping, running},
    process::{portmap, require_root},
    servers::{self, Server},
    topology::{CLIENT_IP, HOST_IP, UPLINK},
};
use portmap_user::control::InstancePaths;
use serde_json::{Value, json};

fn node(default_route: bool) -> CniNode {
    require_root();
    CniNode::build(default_route).expect("building the CNI node")
}

/// TCP 80 and UDP 53 servers in container `index`, answering as `name`.
fn serve(node: &CniNode, index: usize, name: &str) -> Vec<Server> {
    let ns = &node.containers[index];
    vec![
        servers::tcp(ns, name, 80).expect("tcp server"),
        servers::udp(ns, name, 53).expect("udp server"),
    ]
}

/// The client reaches `name` through host TCP `tcp` and UDP `udp`, and the container sees the
/// client's own address; the UDP answer comes from the published port.
fn assert_reaches(node: &CniNode, tcp: u16, udp: u16, name: &str) {
    let answer = node
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, tcp)))
        .unwrap_or_else(|e| panic!("tcp {tcp} -> {name}: {e:#}"));
    assert_eq!(answer.server, name, "tcp {tcp}");
    assert_eq!(
        *answer.saw.ip(),
        CLIENT_IP,
        "tcp {tcp}: the client's own address"
    );
    let to = SocketAddrV4::new(HOST_IP, udp);
    let (answer, source) = node
        .client
        .run(|| servers::udp_ask(SocketAddrV4::new(CLIENT_IP, 0), to))
        .unwrap_or_else(|e| panic!("udp {udp} -> {name}: {e:#}"));
    assert_eq!(answer.server, name, "udp {udp}");
    assert_eq!(
        *answer.saw.ip(),
        CLIENT_IP,
        "udp {udp}: the client's own address"
    );
    assert_eq!(
        source,
        SocketAddr::V4(to),
        "udp {udp}: answered from the published port"
    );
}

fn assert_tcp_closed(node: &CniNode, port: u16) {
    let answer = node
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, port)));
    assert!(
        answer.is_err(),
        "tcp {port} should be published no more: {answer:?}"
    );
}

/// The container's address from a `bridge` result.
fn address(prev: &Value) -> String {
    let cidr = prev["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().to_owned()
}

/// ADD prints the previous result through, in the configuration's version.
fn assert_passed_through(result: &Value, prev: &Value, version: &str) {
    assert_eq!(result["cniVersion"], version);
    assert_eq!(result["ips"], prev["ips"]);
    assert_eq!(result["interfaces"], prev["interfaces"]);
}

/// The bindings per owner, as `portmap ls` reports them: `HOST_PORT/PROTO => IP:PORT`.
fn by_owner(node: &CniNode) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in node.ls().expect("portmap ls") {
        owners
            .entry(b.owner.clone().unwrap_or_default())
            .or_default()
            .push(format!(
                "{}/{} => {}:{}",
                b.host_port, b.proto, b.container_ip, b.container_port
            ));
    }
    for bindings in owners.values_mut() {
        bindings.sort();
    }
    owners
}

/// The reference chain's scenario, ending with `publisher`: two containers with TCP and UDP
/// mappings (the second chain in CNI 0.4.0), traffic with the client's real address, CHECK,
/// then DEL of one leaving the other serving, and a second DEL.
fn two_containers(publisher: Publisher) {
    let mut node = node(true);
    let program = publisher.program();
    let (c1, c2) = (node.container("c1").unwrap(), node.container("c2").unwrap());
    let chains = [
        (c1, "ctr-c1", "1.0.0", 8080, 5353),
        (c2, "ctr-c2", "0.4.0", 8081, 5354),
    ];
    let mut confs = Vec::new();
    for &(index, id, version, tcp, udp) in &chains {
        let prev = node.connect(id, index, version).expect("bridge ADD");
        let conf = node.publisher_conf(
            publisher,
            version,
            Some(&prev),
            &[mapping(tcp, 80, "tcp"), mapping(udp, 53, "udp")],
        );
        let result = node
            .run(&program, "ADD", id, Some(index), &conf)
            .unwrap()
            .result();
        assert_passed_through(&result, &prev, version);
        confs.push((prev, conf));
    }
    let (ip1, ip2) = (address(&confs[0].0), address(&confs[1].0));
    let _servers = [serve(&node, c1, "c1"), serve(&node, c2, "c2")];
    assert_reaches(&node, 8080, 5353, "c1");
    assert_reaches(&node, 8081, 5354, "c2");
    if publisher == Publisher::Ours {
        let owners = by_owner(&node);
        assert_eq!(
            owners,
            BTreeMap::from([
                (
                    "cni:ctr-c1".to_owned(),
                    vec![
                        format!("5353/udp => {ip1}:53"),
                        format!("8080/tcp => {ip1}:80")
                    ]
                ),
                (
                    "cni:ctr-c2".to_owned(),
                    vec![
                        format!("5354/udp => {ip2}:53"),
                        format!("8081/tcp => {ip2}:80")
                    ]
                ),
            ])
        );
        let text = node.ls_text().unwrap();
        assert!(
            text.contains(&format!(
                "80/tcp -> 0.0.0.0:8080 => {ip1}:80  (cni:ctr-c1: 8080:80/tcp={ip1})"
            )),
            "portmap ls names the container:\n{text}"
        );
    }
    // The reference plugin's CHECK (1.1.1) fails on a node without ip6tables chains for an
    // IPv4-only container ("could not check ipv6 dnat"), so only ours is checked here.
    if publisher == Publisher::Ours {
        for (&(index, id, ..), (_, conf)) in chains.iter().zip(&confs) {
            node.run(&program, "CHECK", id, Some(index), conf)
                .unwrap()
                .ok();
        }
    }

    node.run(&program, "DEL", "ctr-c1", Some(c1), &confs[0].1)
        .unwrap()
        .ok();
    assert_tcp_closed(&node, 8080);
    assert_reaches(&node, 8081, 5354, "c2");
    // DEL again, and once more as a runtime may send it after the namespace is gone: no
    // prevResult, no mappings, no CNI_NETNS.
    node.run(&program, "DEL", "ctr-c1", Some(c1), &confs[0].1)
        .unwrap()
        .ok();
    let bare = json!({"cniVersion": "1.0.0", "name": portmap_tests::cni::NETWORK,
        "type": publisher.type_name()});
    let bare = match publisher {
        Publisher::Ours => {
            let mut bare = bare;
            bare["pinDir"] = json!(node.pin_dir());
            bare["stateDir"] = json!(node.state_dir());
            bare
        }
        Publisher::Reference => bare,
    };
    node.run(&program, "DEL", "ctr-c1", None, &bare)
        .unwrap()
        .ok();
    assert_reaches(&node, 8081, 5354, "c2");

    if publisher == Publisher::Ours {
        let owners = by_owner(&node);
        assert_eq!(
            owners.keys().collect::<Vec<_>>(),
            ["cni:ctr-c2"],
            "{owners:?}"
        );
        let error = node
            .run(&program, "CHECK", "ctr-c1", Some(c1), &confs[0].1)
            .unwrap()
            .error();
        assert_eq!(error.code, 101, "{error:?}");
        assert!(error.msg.contains("ctr-c1"), "{error:?}");
        let state = node.state().expect("a state file");
        assert_eq!(
            state["containers"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["ctr-c2"]
        );
    }
    node.run(&program, "DEL", "ctr-c2", Some(c2), &confs[1].1)
        .unwrap()
        .ok();
    assert_tcp_closed(&node, 8081);
    if publisher == Publisher::Ours {
        assert!(node.ls().unwrap().is_empty());
        assert!(
            node.state().is_none(),
            "an empty network leaves no state file"
        );
        assert_eq!(node.instance_pids().len(), 1, "one instance served it all");
    }
}

// The reference chain, `bridge` + `host-local` + `portmap`, then the same with `portmap-ebpf`
// in portmap's place: both publish the two containers' TCP and UDP ports with the client's
// real address, and DEL takes away exactly one container's ports, twice without error.
#[test]
fn cni_chain_publishes_like_the_reference_portmap_plugin() {
    let began = Instant::now();
    two_containers(Publisher::Reference);
    let reference = began.elapsed();
    two_containers(Publisher::Ours);
    eprintln!(
        "reference portmap: {reference:?}; portmap-ebpf: {:?}",
        began.elapsed() - reference
    );
}

// Twenty pods start at once and stop at once: one instance is started, every binding is there
// exactly once with its owner, and DEL in parallel leaves nothing.
#[test]
fn cni_twenty_containers_added_and_deleted_in_parallel() {
    const N: usize = 20;
    let mut node = node(false);
    let program = Publisher::Ours.program();
    let mut confs = Vec::new();
    for i in 0..N {
        let index = node.container(&format!("p{i}")).unwrap();
        let prev = node.connect(&format!("pod-{i}"), index, "1.0.0").unwrap();
        let mut conf = node.publisher_conf(
            Publisher::Ours,
            "1.0.0",
            Some(&prev),
            &[
                mapping(20_000 + i as u16, 80, "tcp"),
                mapping(21_000 + i as u16, 53, "udp"),
            ],
        );
        conf["uplinks"] = json!([UPLINK]);
        confs.push((address(&prev), conf));
    }
    let run_all = |command: &str| {
        std::thread::scope(|scope| {
            let runs: Vec<_> = confs
                .iter()
                .enumerate()
                .map(|(i, (_, conf))| {
                    let (node, program) = (&node, &program);
                    scope.spawn(move || {
                        node.run(program, command, &format!("pod-{i}"), Some(i), conf)
                            .unwrap()
                    })
                })
                .collect();
            for (i, run) in runs.into_iter().enumerate() {
                let out = run.join().unwrap();
                assert!(
                    out.status.success(),
                    "{command} pod-{i}: {}{}",
                    out.stdout,
                    out.stderr
                );
            }
        });
    };

    let began = Instant::now();
    run_all("ADD");
    eprintln!("{N} parallel ADDs: {:?}", began.elapsed());
    let owners = by_owner(&node);
    let expected: BTreeMap<String, Vec<String>> = confs
        .iter()
        .enumerate()
        .map(|(i, (ip, _))| {
            (
                format!("cni:pod-{i}"),
                vec![
                    format!("{}/tcp => {ip}:80", 20_000 + i),
                    format!("{}/udp => {ip}:53", 21_000 + i),
                ],
            )
        })
        .collect();
    assert_eq!(owners, expected, "every binding once, with its owner");
    assert_eq!(node.instance_pids().len(), 1, "one instance for the node");
    let state = node.state().expect("a state file");
    assert_eq!(state["containers"].as_object().unwrap().len(), N);
    for i in [0, N / 2, N - 1] {
        let _servers = serve(&node, i, &format!("p{i}"));
        assert_reaches(
            &node,
            20_000 + i as u16,
            21_000 + i as u16,
            &format!("p{i}"),
        );
    }

    let began = Instant::now();
    run_all("DEL");
    eprintln!("{N} parallel DELs: {:?}", began.elapsed());
    assert!(node.ls().unwrap().is_empty(), "{:?}", by_owner(&node));
    assert!(node.state().is_none(), "nothing recorded");
}

// Bad configurations, a missing prevResult or CNI_NETNS, and a host port another container
// publishes: each is the specification's error object with a fitting code, and nothing is
// published, started or recorded by the refused command.
#[test]
fn cni_refusals_are_spec_errors_and_apply_nothing() {
    let mut node = node(false);
    let program = Publisher::Ours.program();
    let (c1, c2) = (node.container("c1").unwrap(), node.container("c2").unwrap());
    let prev1 = node.connect("ctr-c1", c1, "1.0.0").unwrap();
    let prev2 = node.connect("ctr-c2", c2, "1.0.0").unwrap();
    let conf = |prev: Option<&Value>, mappings: &[Value]| {
        let mut conf = node.publisher_conf(Publisher::Ours, "1.0.0", prev, mappings);
        conf["uplinks"] = json!([UPLINK]);
        conf
    };
    let good = conf(Some(&prev1), &[mapping(8080, 80, "tcp")]);
    let with = |key: &str, value: Value| {
        let mut conf = good.clone();
        conf[key] = value;
        conf
    };
    let mut bad_port = good.clone();
    bad_port["runtimeConfig"]["portMappings"][0]["hostPort"] = json!(0);
    let cases: Vec<(&str, Value, Option<usize>, u64, &str)> = vec![
        (
            "not JSON",
            Value::String("{".into()),
            Some(c1),
            6,
            "not JSON",
        ),
        (
            "CNI 0.3.1",
            with("cniVersion", json!("0.3.1")),
            Some(c1),
            1,
            "0.3.1",
        ),
        (
            "masqAll",
            with("masqAll", json!(true)),
            Some(c1),
            2,
            "masqAll",
        ),
        (
            "conditionsV4",
            with("conditionsV4", json!(["-s", "1.2.3.4"])),
            Some(c1),
            2,
            "conditionsV4",
        ),
        (
            "two uplinks",
            with("uplinks", json!(["ens160", "eth1"])),
            Some(c1),
            2,
            "uplinks",
        ),
        (
            "no such uplink",
            with("uplinks", json!(["nope0"])),
            Some(c1),
            7,
            "nope0",
        ),
        ("host port 0", bad_port, Some(c1), 7, "hostPort: 0"),
        (
            "no prevResult",
            conf(None, &[mapping(8080, 80, "tcp")]),
            Some(c1),
            7,
            "prevResult",
        ),
        ("no CNI_NETNS", good.clone(), None, 4, "CNI_NETNS"),
    ];
    for (what, conf, container, code, names) in cases {
        let stdin = match &conf {
            Value::String(raw) => raw.clone(),
            other => other.to_string(),
        };
        let out = portmap_tests::cni::run_plugin(
            &node.host,
            &portmap_tests::cni::Invocation {
                program: &program,
                command: "ADD",
                container_id: "ctr-c1",
                container: container.map(|i| &node.containers[i]),
                stdin: stdin.as_bytes(),
                timeout: portmap_tests::cni::PLUGIN_TIMEOUT,
            },
        )
        .unwrap();
        let error = out.error();
        assert_eq!(error.code, code, "{what}: {error:?}");
        assert!(
            error.msg.contains(names),
            "{what}: {error:?} should name {names:?}"
        );
        assert!(
            node.instance_pids().is_empty(),
            "{what}: no instance started"
        );
        assert!(node.state().is_none(), "{what}: nothing recorded");
    }

    // A host port conflict between two containers: the second ADD is refused whole.
    node.run(
        &program,
        "ADD",
        "ctr-c1",
        Some(c1),
        &conf(
            Some(&prev1),
            &[mapping(8080, 80, "tcp"), mapping(9090, 80, "tcp")],
        ),
    )
    .unwrap()
    .result();
    let before = by_owner(&node);
    let clash = conf(
        Some(&prev2),
        &[mapping(7070, 80, "tcp"), mapping(8080, 80, "tcp")],
    );
    let error = node
        .run(&program, "ADD", "ctr-c2", Some(c2), &clash)
        .unwrap()
        .error();
    assert_eq!(error.code, 100, "{error:?}");
    assert!(error.msg.contains("8080"), "names the port: {error:?}");
    assert!(
        error
            .details
            .contains("0.0.0.0:8080/tcp is published by cni:ctr-c1"),
        "names the container holding it: {error:?}"
    );
    assert_eq!(by_owner(&node), before, "nothing of ctr-c2 applied");
    let state = node.state().unwrap();
    assert_eq!(
        state["containers"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["ctr-c1"]
    );
    let _servers = [serve(&node, c1, "c1"), serve(&node, c2, "c2")];
    let answer = node
        .client
        .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8080)))
        .unwrap();
    assert_eq!(answer.server, "c1", "8080 stays with the first container");
    assert_tcp_closed(&node, 7070);
    let error = node
        .run(&program, "CHECK", "ctr-c2", Some(c2), &clash)
        .unwrap()
        .error();
    assert_eq!(error.code, 101, "{error:?}");
    // The runtime cleans up after a failed ADD: a DEL that touches nobody else.
    node.run(&program, "DEL", "ctr-c2", Some(c2), &clash)
        .unwrap()
        .ok();
    assert_eq!(by_owner(&node), before);
}

// The node's instance dies: the next CHECK starts a new one and publishes every recorded
// container again, held ports included. An instance someone else restarts empty is filled too.
#[test]
fn cni_a_dead_instance_is_restarted_and_refilled() {
    let mut node = node(true);
    let program = Publisher::Ours.program();
    let (c1, c2) = (node.container("c1").unwrap(), node.container("c2").unwrap());
    let mut confs = Vec::new();
    for (index, id, tcp, udp, hold) in [
        (c1, "ctr-c1", 8080, 5353, false),
        (c2, "ctr-c2", 8081, 5354, true),
    ] {
        let prev = node.connect(id, index, "1.0.0").unwrap();
        let mut conf = node.publisher_conf(
            Publisher::Ours,
            "1.0.0",
            Some(&prev),
            &[mapping(tcp, 80, "tcp"), mapping(udp, 53, "udp")],
        );
        conf["holdPorts"] = json!(hold);
        node.run(&program, "ADD", id, Some(index), &conf)
            .unwrap()
            .result();
        confs.push(conf);
    }
    let held = |port: u16| {
        node.host
            .run(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_err())
    };
    assert!(held(8081), "holdPorts: true holds the host port");
    assert!(!held(8080), "holdPorts: false (the default) leaves it free");
    let _servers = [serve(&node, c1, "c1"), serve(&node, c2, "c2")];
    assert_reaches(&node, 8080, 5353, "c1");
    let before = by_owner(&node);

    let pids = node.instance_pids();
    assert_eq!(pids.len(), 1);
    // SAFETY: signalling the instance whose command line instance_pids checked.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pids[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(pids[0]), "the instance is gone");
    assert_tcp_closed(&node, 8080);

    node.run(&program, "CHECK", "ctr-c1", Some(c1), &confs[0])
        .unwrap()
        .ok();
    let after = node.instance_pids();
    assert_eq!(after.len(), 1);
    assert_ne!(after, pids, "a new instance");
    assert_eq!(by_owner(&node), before, "every container published again");
    assert_reaches(&node, 8080, 5353, "c1");
    assert_reaches(&node, 8081, 5354, "c2");
    assert!(held(8081), "and its port held again");
    node.run(&program, "CHECK", "ctr-c2", Some(c2), &confs[1])
        .unwrap()
        .ok();

    // An operator's service manager restarts the instance, empty: the next CHECK fills it.
    node.stop_instances().unwrap();
    let pin_dir = node.pin_dir().to_string_lossy().into_owned();
    let own = Operated(
        node.host
            .command(portmap_tests::process::portmap_bin())
            .unwrap()
            .args([
                "run",
                "--iface",
                UPLINK,
                "--bridge",
                BRIDGE,
                "--pin-dir",
                &pin_dir,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.ls().is_ok_and(|b| b.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the operator's instance did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.run(&program, "CHECK", "ctr-c2", Some(c2), &confs[1])
        .unwrap()
        .ok();
    assert_eq!(by_owner(&node), before, "every container published again");
    assert_reaches(&node, 8080, 5353, "c1");
    drop(own);
}

// A killed instance's threads close its sockets one by one: its control socket may still
// accept and then close without an answer while its lock is held. ADD waits for such an
// instance to be gone and starts a new one; one that never goes is an error naming the socket
// after a bounded wait, and nothing is started.
#[test]
fn cni_an_exiting_instance_is_waited_for_then_replaced() {
    let mut node = node(true);
    let program = Publisher::Ours.program();
    let c1 = node.container("c1").unwrap();
    let prev = node.connect("ctr-c1", c1, "1.0.0").unwrap();
    let conf = node.publisher_conf(
        Publisher::Ours,
        "1.0.0",
        Some(&prev),
        &[mapping(8080, 80, "tcp"), mapping(5353, 53, "udp")],
    );
    let paths = InstancePaths::new(&node.pin_dir());

    let stuck = Exiting::start(&paths, None);
    let began = Instant::now();
    let error = node
        .run(&program, "ADD", "ctr-c1", Some(c1), &conf)
        .unwrap()
        .error();
    assert!(
        began.elapsed() >= Duration::from_secs(9),
        "gave up after {:?}, before its bound",
        began.elapsed()
    );
    assert!(
        error.msg.contains("reaching the node's portmap"),
        "{error:?}"
    );
    assert!(
        error.details.contains(&paths.socket.display().to_string()),
        "{error:?}"
    );
    // One connection to see it is there, then the request it closes unanswered.
    assert!(stuck.unanswered() >= 2, "the plugin asked the exiting one");
    assert!(node.instance_pids().is_empty(), "no instance started");
    drop(stuck);

    let exiting = Exiting::start(&paths, Some(Duration::from_millis(1500)));
    let began = Instant::now();
    node.run(&program, "ADD", "ctr-c1", Some(c1), &conf)
        .unwrap()
        .result();
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "ADD went on after {:?}, while the old instance held its lock",
        began.elapsed()
    );
    assert!(
        exiting.unanswered() >= 1,
        "the plugin asked the exiting one"
    );
    assert_eq!(node.instance_pids().len(), 1, "a new instance");
    let _servers = serve(&node, c1, "c1");
    assert_reaches(&node, 8080, 5353, "c1");
}

/// Stands in for an instance being killed: holds its lock and accepts on its control socket,
/// closing every connection unanswered, for `lasts` (or until dropped); then it is gone, its
/// socket file left behind as a killed process leaves it.
struct Exiting {
    stop: Arc<AtomicBool>,
    unanswered: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Exiting {
    fn start(paths: &InstancePaths, lasts: Option<Duration>) -> Self {
        fs::create_dir_all(InstancePaths::RUN_DIR).unwrap();
        let lock = File::create(&paths.lock).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0,
            "the instance lock is free"
        );
        let _ = fs::remove_file(&paths.socket);
        let listener = UnixListener::bind(&paths.socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, unanswered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (flag, count) = (stop.clone(), unanswered.clone());
        let ends = lasts.map(|lasts| Instant::now() + lasts);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) && ends.is_none_or(|at| Instant::now() < at) {
                match listener.accept() {
                    Ok((connection, _)) => {
                        drop(connection);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(listener);
            drop(lock);
        });
        Self {
            stop,
            unanswered,
            thread: Some(thread),
        }
    }

    /// Connections it closed without an answer.
    fn unanswered(&self) -> usize {
        self.unanswered.load(Ordering::Relaxed)
    }
}

impl Drop for Exiting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A `portmap run` the test started itself, stopped (SIGTERM, then SIGKILL) when dropped.
struct Operated(std::process::Child);

impl Drop for Operated {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().is_ok_and(|s| s.is_none()) {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `uplink.translated` from the instance's `portmap stats --json`.
fn translated(node: &CniNode) -> u64 {
    let pin_dir = node.pin_dir().to_string_lossy().into_owned();
    let out = portmap(&node.host, &["stats", "--json", "--pin-dir", &pin_dir]).unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).expect("stats --json");
    stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "uplink.translated")
        .map_or(0, |r| r[1].as_u64().unwrap())
}

// portmap translates what arrives on the uplink only: the node's own connections to a host
// port are not. Chaining the reference plugin as well serves those through iptables, while the
// uplink's traffic keeps taking the eBPF path (XDP runs before netfilter sees the packet).
#[test]
fn cni_beside_the_reference_plugin_for_node_local_traffic() {
    let mut node = node(true);
    let c1 = node.container("c1").unwrap();
    let prev = node.connect("ctr-c1", c1, "1.0.0").unwrap();
    let mappings = [mapping(8080, 80, "tcp"), mapping(5353, 53, "udp")];
    let ours = node.publisher_conf(Publisher::Ours, "1.0.0", Some(&prev), &mappings);
    node.run(&Publisher::Ours.program(), "ADD", "ctr-c1", Some(c1), &ours)
        .unwrap()
        .result();
    let _servers = serve(&node, c1, "c1");
    let local = || {
        node.host
            .run(|| servers::tcp_ask(None, SocketAddrV4::new(HOST_IP, 8080)))
    };
    assert!(local().is_err(), "node-local traffic is not portmap's");

    let reference = node.publisher_conf(Publisher::Reference, "1.0.0", Some(&prev), &mappings);
    node.run(
        &Publisher::Reference.program(),
        "ADD",
        "ctr-c1",
        Some(c1),
        &reference,
    )
    .unwrap()
    .result();
    assert_eq!(local().expect("through iptables now").server, "c1");
    let before = translated(&node);
    assert_reaches(&node, 8080, 5353, "c1");
    let after = translated(&node);
    // The TCP exchange's every packet and the datagram: at least three.
    assert!(
        after >= before + 3,
        "the client's packets were translated by portmap, not iptables: {before} -> {after}"
    );

    for publisher in [Publisher::Reference, Publisher::Ours] {
        let conf = if publisher == Publisher::Ours {
            &ours
        } else {
            &reference
        };
        node.run(&publisher.program(), "DEL", "ctr-c1", Some(c1), conf)
            .unwrap()
            .ok();
    }
    assert!(local().is_err());
    assert_tcp_closed(&node, 8080);
}
