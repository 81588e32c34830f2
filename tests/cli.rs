//! The `portmap` command as an operator meets it: bad input is refused with an error that names
//! it and exit code 2, and leaves nothing attached and nothing pinned.

use portmap_tests::{
    netns::Netns,
    process::{portmap, require_root},
};

/// A namespace with an uplink and a bridge, and what `portmap run ARGS...` did there.
struct Refused {
    code: Option<i32>,
    stderr: String,
    xdp_attached: bool,
    pinned: bool,
}

fn run_refused(args: &[&str]) -> Refused {
    require_root();
    let ns = Netns::new("cli").unwrap();
    ns.ip("link add ens160 type veth peer name peer0").unwrap();
    ns.ip("link add docker0 type bridge").unwrap();
    let pin_dir = format!("/sys/fs/bpf/portmap-test/{}", ns.name());
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    full.extend(["--pin-dir", &pin_dir, "--no-cgroup"]);
    let out = portmap(&ns, &full).unwrap();
    let link = ns.exec("ip", &["-d", "link", "show", "ens160"]).unwrap();
    Refused {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        xdp_attached: String::from_utf8_lossy(&link.stdout).contains("xdp"),
        pinned: std::path::Path::new(&pin_dir).exists(),
    }
}

fn assert_refused(refused: &Refused, expected: &str) {
    assert_eq!(
        refused.code,
        Some(2),
        "bad input exits 2: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(expected),
        "error should say {expected:?}:\n{}",
        refused.stderr
    );
    assert!(!refused.xdp_attached, "nothing attached");
    assert!(!refused.pinned, "nothing pinned");
}

// A malformed spec is named, with the part that is wrong.
#[test]
fn cli_run_refuses_malformed_spec_by_name() {
    let refused = run_refused(&["--iface", "ens160", "--publish", "8080:http=172.17.0.2"]);
    assert_refused(
        &refused,
        r#"invalid port spec "8080:http=172.17.0.2": container port "http""#,
    );
    assert!(
        refused.stderr.contains("--publish"),
        "names the flag: {}",
        refused.stderr
    );
}

// An interface that does not exist is named.
#[test]
fn cli_run_refuses_unknown_interface_by_name() {
    let refused = run_refused(&["--iface", "ens999", "--publish", "8080:80=172.17.0.2"]);
    assert_refused(&refused, r#"--iface: no network interface named "ens999""#);
    let refused = run_refused(&[
        "--iface",
        "ens160",
        "--bridge",
        "br-nope",
        "--publish",
        "8080:80=172.17.0.2",
    ]);
    assert_refused(
        &refused,
        r#"--bridge: no network interface named "br-nope""#,
    );
}

// Two specs for one host port: both are named, nothing is applied.
#[test]
fn cli_run_refuses_duplicate_host_port_naming_both() {
    let refused = run_refused(&[
        "--iface",
        "ens160",
        "--publish",
        "8080:80=172.17.0.2",
        "--publish",
        "0.0.0.0:8080:81=172.17.0.3",
    ]);
    assert_refused(
        &refused,
        r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.2" and by "0.0.0.0:8080:81=172.17.0.3""#,
    );
}

// `portmap run --help` explains the spec and shows examples.
#[test]
fn cli_run_help_shows_spec_grammar_and_examples() {
    require_root();
    let ns = Netns::new("help").unwrap();
    let out = portmap(&ns, &["run", "--help"]).unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]=CONTAINER_IP"),
        "{help}"
    );
    assert!(
        help.contains("portmap run --iface ens160 --publish 8080:80=172.17.0.2"),
        "{help}"
    );
    assert!(help.contains("--xdp-mode"), "{help}");
}

// `portmap stats` without a running instance says so and fails.
#[test]
fn cli_stats_without_instance_says_none_running() {
    require_root();
    let ns = Netns::new("stats").unwrap();
    let out = portmap(
        &ns,
        &["stats", "--pin-dir", "/sys/fs/bpf/portmap-test/none"],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running portmap found"));
}
