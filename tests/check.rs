//! `portmap check` on the seeds' compose files and port specs: the real binary, run directly
//! (check needs no root, no namespace and no kernel), each output compared whole.
//!
//! Fixtures: `fixtures/compose/004-listing-NN.yml` are the thesis's compose listings (seed 004,
//! code listings 1-3, 7-10, 12, 13, 16; the others are Dockerfiles and Python), `000-*.yml` the
//! compose snippets of seed 000 (its indentation restored), `compose-spec-ports.yml` the Compose
//! specification's `ports` examples.

use std::{path::PathBuf, process::Command};

use portmap_tests::process::portmap_bin;

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/compose")
}

/// `portmap check ARGS...` from the fixtures directory, so file names print bare.
fn check(args: &[&str]) -> Checked {
    let out = Command::new(portmap_bin())
        .arg("check")
        .args(args)
        .current_dir(fixtures())
        .output()
        .expect("running portmap check");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 0 and exactly `expected` on stdout.
fn assert_prints(args: &[&str], expected: &str) {
    let checked = check(args);
    assert_eq!(
        checked.code,
        Some(0),
        "portmap check {args:?} failed: {}",
        checked.stderr
    );
    assert_eq!(checked.stdout, expected, "portmap check {args:?}");
}

/// Exit 2, nothing on stdout, and exactly `expected` (then the summary line) on stderr.
fn assert_refuses(args: &[&str], expected: &str) {
    let checked = check(args);
    assert_eq!(
        checked.code,
        Some(2),
        "bad input exits 2: {}",
        checked.stderr
    );
    assert_eq!(checked.stdout, "", "nothing is printed as published");
    let problems = expected.lines().count();
    let noun = if problems == 1 { "problem" } else { "problems" };
    assert_eq!(
        checked.stderr,
        format!(
            "{expected}portmap: error: {problems} {noun} in the input; nothing would be published\n"
        ),
        "portmap check {args:?}"
    );
}

const REPLICAS: &str = "containers, but a published port goes to exactly one container (portmap does not balance \
     across replicas; run one)";

// Seed 000's demo: `- 9999:8000` unquoted is the string "9999:8000" (YAML 1.2), published on
// every IPv4 and IPv6 address.
#[test]
fn check_seed_000_demo_puertos_prints_docker_port_lines() {
    assert_prints(
        &["000-demo-puertos.yml"],
        "8000/tcp -> 0.0.0.0:9999 => webapp-flet:8000\n\
         8000/tcp -> [::]:9999 => webapp-flet:8000\n",
    );
}

// With the container's address, the address replaces the service name.
#[test]
fn check_seed_000_demo_puertos_with_container_address() {
    assert_prints(
        &[
            "000-demo-puertos.yml",
            "--container",
            "webapp-flet=172.17.0.2",
        ],
        "8000/tcp -> 0.0.0.0:9999 => 172.17.0.2:8000\n\
         8000/tcp -> [::]:9999 => 172.17.0.2:8000  (the container has no IPv6 address)\n",
    );
}

// Seed 000's syntax templates hold placeholders, not ports: refused by name and line.
#[test]
fn check_seed_000_templates_are_refused_by_line_and_entry() {
    assert_refuses(
        &["000-template-ports.yml"],
        "000-template-ports.yml:5: services.servicio_ip.ports[0] \"puerto_host:puerto_contenedor\": \
         container port \"puerto_contenedor\" is not a number\n",
    );
    assert_refuses(
        &["000-template-protocol.yml"],
        "000-template-protocol.yml:5: services.servicio_ip.ports[0] \
         \"puerto_host:puerto_contenedor/protocolo\": protocol \"protocolo\" is not tcp, udp or \
         sctp\n",
    );
}

// Listings 1, 7, 8, 9, 10 and 16 run several replicas behind one published port (a swarm's
// ingress balances them); portmap sends a port to one container and says so, naming the line.
#[test]
fn check_seed_004_replicated_listings_are_refused_naming_the_service() {
    for (file, line, service, replicas) in [
        ("004-listing-01.yml", 6, "my_website", 3),
        ("004-listing-07.yml", 6, "web", 3),
        ("004-listing-08.yml", 6, "web", 5),
        ("004-listing-09.yml", 7, "web", 5),
        ("004-listing-10.yml", 7, "web", 5),
        ("004-listing-16.yml", 9, "web", 6),
    ] {
        assert_refuses(
            &[file],
            &format!("{file}:{line}: services.{service}.deploy.replicas: {replicas} {REPLICAS}\n"),
        );
    }
}

// Listing 2: `mode: global` is one container per node, one on a single host; the
// service-level `resources` (not allowed there by the spec) is ignored.
#[test]
fn check_seed_004_listing_02_global_service() {
    assert_prints(
        &["004-listing-02.yml"],
        "80/tcp -> 0.0.0.0:80 => my_website:80\n\
         80/tcp -> [::]:80 => my_website:80\n",
    );
}

// Listing 3: single-quoted short syntax.
#[test]
fn check_seed_004_listing_03_healthcheck_service() {
    assert_prints(
        &["004-listing-03.yml"],
        "5000/tcp -> 0.0.0.0:8212 => web:5000\n\
         5000/tcp -> [::]:8212 => web:5000\n",
    );
}

// Listings 12 and 13 publish nothing: nothing on stdout, a note on stderr, success.
#[test]
fn check_seed_004_listings_without_ports_publish_nothing() {
    for file in ["004-listing-12.yml", "004-listing-13.yml"] {
        let checked = check(&[file]);
        assert_eq!(checked.code, Some(0), "{file}: {}", checked.stderr);
        assert_eq!(checked.stdout, "", "{file}");
        assert_eq!(checked.stderr, "portmap: no port is published\n", "{file}");
    }
}

// Two fixtures at once, in argument order.
#[test]
fn check_several_files_print_in_order() {
    assert_prints(
        &["004-listing-02.yml", "004-listing-03.yml"],
        "80/tcp -> 0.0.0.0:80 => my_website:80\n\
         80/tcp -> [::]:80 => my_website:80\n\
         5000/tcp -> 0.0.0.0:8212 => web:5000\n\
         5000/tcp -> [::]:8212 => web:5000\n",
    );
}

// Every example of the Compose specification's `ports` section.
#[test]
fn check_compose_spec_examples() {
    let mut expected = String::from(
        "3000/tcp -> 0.0.0.0:0 => short:3000\n\
         3000/tcp -> [::]:0 => short:3000\n",
    );
    for port in 3000..=3005 {
        expected += &format!(
            "{port}/tcp -> 0.0.0.0:0 => short:{port}\n\
             {port}/tcp -> [::]:0 => short:{port}\n"
        );
    }
    expected += "\
8000/tcp -> 0.0.0.0:8000 => short:8000
8000/tcp -> [::]:8000 => short:8000
8080/tcp -> 0.0.0.0:9090 => short:8080
8080/tcp -> [::]:9090 => short:8080
8081/tcp -> 0.0.0.0:9091 => short:8081
8081/tcp -> [::]:9091 => short:8081
22/tcp -> 0.0.0.0:49100 => short:22
22/tcp -> [::]:49100 => short:22
80/tcp -> 0.0.0.0:8000-9000 => short:80
80/tcp -> [::]:8000-9000 => short:80
8001/tcp -> 127.0.0.1:8001 => short:8001
";
    for port in 5000..=5010 {
        expected += &format!("{port}/tcp -> 127.0.0.1:{port} => short:{port}\n");
    }
    expected += "\
6000/tcp -> [::1]:6000 => short:6000
6001/tcp -> [::1]:6001 => short:6001
6060/udp -> 0.0.0.0:6060 => short:6060
6060/udp -> [::]:6060 => short:6060
22/tcp -> 0.0.0.0:22 => short:22
22/tcp -> [::]:22 => short:22
80/tcp -> 127.0.0.1:8080 => long:80
443/tcp -> 127.0.0.1:8083-9000 => long:443
";
    assert_prints(&["compose-spec-ports.yml"], &expected);
}

// The seeds' `docker run -p` specs (SCENARIOS.md), as arguments, with and without a target.
#[test]
fn check_seed_run_specs() {
    assert_prints(
        &[
            "5000:5000",
            "80:5000=172.17.0.2",
            "127.0.0.1:5001:5000",
            "127.0.0.1::5000",
            "127.0.0.1:5000:5000/udp",
            "1913:80=friendlyhello",
            "4000:80=172.17.0.3",
        ],
        "5000/tcp -> 0.0.0.0:5000\n\
         5000/tcp -> [::]:5000\n\
         5000/tcp -> 0.0.0.0:80 => 172.17.0.2:5000\n\
         5000/tcp -> [::]:80 => 172.17.0.2:5000  (the container has no IPv6 address)\n\
         5000/tcp -> 127.0.0.1:5001\n\
         5000/tcp -> 127.0.0.1:0\n\
         5000/udp -> 127.0.0.1:5000\n\
         80/tcp -> 0.0.0.0:1913 => friendlyhello:80\n\
         80/tcp -> [::]:1913 => friendlyhello:80\n\
         80/tcp -> 0.0.0.0:4000 => 172.17.0.3:80\n\
         80/tcp -> [::]:4000 => 172.17.0.3:80  (the container has no IPv6 address)\n",
    );
}

// sctp parses, as Docker accepts it; check shows that run will not serve it.
#[test]
fn check_sctp_is_shown_as_not_served() {
    assert_prints(
        &["0.0.0.0:3868:3868/sctp"],
        "3868/sctp -> 0.0.0.0:3868  (sctp: the dataplane serves tcp and udp)\n",
    );
}

// Every bad argument is reported, each naming the input and the part.
#[test]
fn check_bad_specs_are_all_named() {
    assert_refuses(
        &[
            "80:abc",
            "localhost:80:80",
            "80/icmp",
            "8080:80-81",
            "compse.yml",
        ],
        "invalid port spec \"80:abc\": container port \"abc\" is not a number\n\
         invalid port spec \"localhost:80:80\": host IP \"localhost\" is not an IP address \
         (hostnames are not accepted)\n\
         invalid port spec \"80/icmp\": protocol \"icmp\" is not tcp, udp or sctp\n\
         invalid port spec \"8080:80-81\": host ports 8080 and container ports 80-81 differ in \
         length: ranges on both sides map pairwise\n\
         no such file \"compse.yml\", nor a port spec: container port \"compse.yml\" is not a \
         number\n",
    );
}

// A compose entry and an argument that claim one host port: both are named.
#[test]
fn check_conflict_between_file_and_argument_names_both() {
    assert_refuses(
        &["000-demo-puertos.yml", "9999:80=db"],
        "host port 9999/tcp is published twice: by \"000-demo-puertos.yml:7: \
         services.webapp-flet.ports[0] 9999:8000\" and by \"9999:80=db\"\n",
    );
}

// -P needs image metadata portmap does not have.
#[test]
fn check_publish_all_is_refused_with_the_alternative() {
    let checked = check(&["-P"]);
    assert_eq!(checked.code, Some(2));
    assert_eq!(
        checked.stderr,
        "portmap: error: -P (publish every EXPOSEd port) needs the image's metadata, which \
         portmap does not have: publish each port instead; -p CONTAINER_PORT=TARGET gives it an \
         ephemeral host port, as -P does\n"
    );
}

// A file that exists but cannot be read is the system's fault: exit 1.
#[test]
fn check_unreadable_file_exits_1() {
    let checked = check(&["."]);
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);
    assert!(
        checked
            .stderr
            .starts_with("portmap: error: reading compose file .: "),
        "{}",
        checked.stderr
    );
}

// The JSON shape is an interface (README "Port specs"): compared whole.
#[test]
fn check_json_bindings_shape() {
    assert_prints(
        &[
            "--json",
            "000-demo-puertos.yml",
            "--container",
            "webapp-flet=172.17.0.2",
            "80-90:8080",
        ],
        r#"{
  "bindings": [
    {
      "container_port": 8000,
      "proto": "tcp",
      "host_ip": "0.0.0.0",
      "host_port": 9999,
      "host_port_range": null,
      "service": "webapp-flet",
      "container_ip": "172.17.0.2",
      "source": "000-demo-puertos.yml:7",
      "entry": "services.webapp-flet.ports[0]",
      "spec": "9999:8000",
      "served": true,
      "limitation": null
    },
    {
      "container_port": 8000,
      "proto": "tcp",
      "host_ip": "::",
      "host_port": 9999,
      "host_port_range": null,
      "service": "webapp-flet",
      "container_ip": "172.17.0.2",
      "source": "000-demo-puertos.yml:7",
      "entry": "services.webapp-flet.ports[0]",
      "spec": "9999:8000",
      "served": false,
      "limitation": "the container has no IPv6 address"
    },
    {
      "container_port": 8080,
      "proto": "tcp",
      "host_ip": "0.0.0.0",
      "host_port": 0,
      "host_port_range": {
        "start": 80,
        "end": 90
      },
      "service": null,
      "container_ip": null,
      "source": "command line",
      "entry": null,
      "spec": "80-90:8080",
      "served": true,
      "limitation": null
    },
    {
      "container_port": 8080,
      "proto": "tcp",
      "host_ip": "::",
      "host_port": 0,
      "host_port_range": {
        "start": 80,
        "end": 90
      },
      "service": null,
      "container_ip": null,
      "source": "command line",
      "entry": null,
      "spec": "80-90:8080",
      "served": true,
      "limitation": null
    }
  ],
  "errors": []
}
"#,
    );
}

// Errors in JSON go to stdout with the same fields, and the exit code is still 2.
#[test]
fn check_json_errors_shape() {
    let checked = check(&["--json", "000-template-ports.yml", "80:abc"]);
    assert_eq!(checked.code, Some(2));
    assert_eq!(
        checked.stdout,
        r#"{
  "bindings": [],
  "errors": [
    {
      "source": "000-template-ports.yml:5",
      "entry": "services.servicio_ip.ports[0]",
      "spec": "puerto_host:puerto_contenedor",
      "message": "container port \"puerto_contenedor\" is not a number"
    },
    {
      "source": "command line",
      "entry": null,
      "spec": "80:abc",
      "message": "container port \"abc\" is not a number"
    }
  ]
}
"#
    );
}
