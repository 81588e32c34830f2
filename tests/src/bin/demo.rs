//! `cargo xtask demo`: the seeds' example host, in namespaces, with no Docker and no spare NIC.
//!
//! A LAN client, a host with an uplink and a `docker0` bridge, and three containers — frontend
//! (8000:8000), backend (5000:8000) and db (3306:3306) — published through the real `portmap`.
//! Every binding gets real requests; the table shows what answered and which source address each
//! container saw. Everything is torn down on the way out, also on failure.

use std::{net::SocketAddrV4, process::ExitCode};

use portmap_tests::{
    process::{Portmap, require_root},
    servers,
    topology::{BRIDGE, CLIENT_IP, DockerHost, HOST_IP, Options, UPLINK},
};

const REQUESTS: usize = 20;

struct Service {
    container: &'static str,
    port: u16,
    host_port: u16,
}

const SERVICES: [Service; 3] = [
    Service {
        container: "frontend",
        port: 8000,
        host_port: 8000,
    },
    Service {
        container: "backend",
        port: 8000,
        host_port: 5000,
    },
    Service {
        container: "db",
        port: 3306,
        host_port: 3306,
    },
];

fn main() -> ExitCode {
    require_root();
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("demo: some requests were not answered as they should be");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> anyhow::Result<bool> {
    println!(
        "Building the sandbox: client {CLIENT_IP} -> host {HOST_IP} ({UPLINK}) -> {BRIDGE} -> 3 containers"
    );
    let net = DockerHost::build(&Options {
        containers: &["frontend", "backend", "db"],
        ..Options::default()
    })?;
    let mut _servers = Vec::new();
    let mut args = vec![
        "--iface".to_owned(),
        UPLINK.to_owned(),
        "--bridge".to_owned(),
        BRIDGE.to_owned(),
    ];
    for service in &SERVICES {
        let container = net.container(service.container);
        _servers.push(servers::tcp(
            &container.ns,
            service.container,
            service.port,
        )?);
        args.push("--publish".to_owned());
        args.push(format!(
            "{}:{}={}",
            service.host_port, service.port, container.addr
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    println!("$ portmap run {}", args.join(" "));
    let portmap = Portmap::start(&net.host, &args)?;
    print!("{}", portmap.banner);

    println!();
    println!(
        "{:<34} {:>5} {:>9}  {:<16} {:>8} {:>9}",
        "BINDING", "SENT", "ANSWERED", "CONTAINER SAW", "IN_PKTS", "OUT_PKTS"
    );
    let mut all_good = true;
    let mut rows = Vec::new();
    for service in &SERVICES {
        let to = SocketAddrV4::new(HOST_IP, service.host_port);
        let answers: Vec<_> = net
            .client
            .run(|| (0..REQUESTS).map(|_| servers::tcp_ask(None, to)).collect());
        let good: Vec<_> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .filter(|a| a.server == service.container)
            .collect();
        let saw = good
            .first()
            .map_or("-".to_owned(), |a| a.saw.ip().to_string());
        all_good &= good.len() == REQUESTS && good.iter().all(|a| *a.saw.ip() == CLIENT_IP);
        rows.push((service, good.len(), saw));
    }
    let stats = portmap.stats(&net.host)?;
    for (service, answered, saw) in rows {
        let key = format!("0.0.0.0:{}/tcp", service.host_port);
        let host = format!("-> 0.0.0.0:{} =>", service.host_port);
        let counters: Vec<&str> = stats
            .lines()
            .find(|l| l.contains(&host))
            .map(|l| l.split_whitespace().skip(5).collect())
            .unwrap_or_default();
        let binding = format!("{key} -> {}:{}", service.container, service.port);
        println!(
            "{binding:<34} {REQUESTS:>5} {answered:>9}  {saw:<16} {:>8} {:>9}",
            counters.first().unwrap_or(&"?"),
            counters.get(2).unwrap_or(&"?")
        );
    }
    println!();
    println!("portmap stats:");
    print!("{stats}");
    let stopped = portmap.stop()?;
    print!("{}", String::from_utf8_lossy(&stopped.stdout));
    println!("Tearing down the sandbox.");
    Ok(all_good)
}
