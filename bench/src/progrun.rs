//! Metric 7: ns per packet of each program path, from `BPF_PROG_TEST_RUN` on the real object
//! with 10,000 bindings loaded.
//!
//! A test run repeats the program on its own output. So that every repetition takes the path
//! being measured, the hit paths ping-pong: the binding (or flow) that rewrites A into B has a
//! twin that rewrites B back into A, and both are real entries among the 10,000.
//!
//! The XDP hit is measured twice: for a flow's packets after its first (UDP here, which has no
//! SYN: each CPU's cache of recent translations serves them, `recent.rs`), and for a TCP SYN,
//! which always takes the slow path (the binding lookup, then the flow table's).

use std::net::{Ipv4Addr, SocketAddrV4};

use portmap_tests::{
    packet::{self, V4},
    testrun,
};
use portmap_user::{dataplane::Dataplane, netdev::Interface, plan::Binding, spec::Proto};

const HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
const FILLERS: u16 = 10_000;

/// One program path and its cost.
pub struct PathCost {
    pub path: &'static str,
    pub ns_per_packet: f64,
}

fn binding(host_ip: Option<Ipv4Addr>, host_port: u16, to: SocketAddrV4) -> Binding {
    binding_of(Proto::Tcp, host_ip, host_port, to)
}

fn binding_of(
    proto: Proto,
    host_ip: Option<Ipv4Addr>,
    host_port: u16,
    to: SocketAddrV4,
) -> Binding {
    Binding {
        host_ip: host_ip.map(Into::into),
        host_port,
        proto,
        container: to.into(),
        origin: format!("{host_port}"),
    }
}

fn loaded(mut bindings: Vec<Binding>, local: &[Ipv4Addr]) -> anyhow::Result<Dataplane> {
    bindings
        .extend((0..FILLERS).map(|i| binding(None, 10_000 + i, SocketAddrV4::new(C1, 10_000 + i))));
    let mut dataplane = Dataplane::load()?;
    let bridge = Interface {
        name: "docker0".into(),
        index: 42,
    };
    dataplane.publish(&bindings, &bridge)?;
    let local: Vec<std::net::IpAddr> = local.iter().map(|a| (*a).into()).collect();
    dataplane.set_local_addrs(&local)?;
    Ok(dataplane)
}

/// Measures every path; `repeat` runs each (XDP in one call, TC in calls of 200 so the TTL the
/// reply path decrements never runs out).
pub fn measure(repeat: u32) -> anyhow::Result<Vec<PathCost>> {
    let host_8080 = SocketAddrV4::new(HOST, 8080);
    let c1_80 = SocketAddrV4::new(C1, 80);
    let syn = V4::tcp_syn(CLIENT, host_8080).frame();
    let mut costs = Vec::new();

    // Exact bindings, ping-pong: HOST:8080 -> C1:80 -> HOST:8080.
    let mut exact = loaded(
        vec![
            binding(Some(HOST), 8080, c1_80),
            binding(Some(C1), 80, host_8080),
            binding_of(Proto::Udp, Some(HOST), 8080, c1_80),
            binding_of(Proto::Udp, Some(C1), 80, host_8080),
        ],
        &[HOST],
    )?;
    let datagram = V4::udp(CLIENT, host_8080, b"established").frame();
    costs.push(PathCost {
        path: "xdp_uplink hit, exact binding, established flow",
        ns_per_packet: ns(testrun::xdp(&mut exact, &datagram, repeat).per_run),
    });
    costs.push(PathCost {
        path: "xdp_uplink hit, exact binding, a flow's first packet (SYN)",
        ns_per_packet: ns(testrun::xdp(&mut exact, &syn, repeat).per_run),
    });
    costs.push(PathCost {
        path: "xdp_uplink miss (an unpublished port)",
        ns_per_packet: ns(testrun::xdp(
            &mut exact,
            &V4::tcp_syn(CLIENT, SocketAddrV4::new(HOST, 9999)).frame(),
            repeat,
        )
        .per_run),
    });
    costs.push(PathCost {
        path: "xdp_uplink non-IP (ARP)",
        ns_per_packet: ns(testrun::xdp(
            &mut exact,
            &packet::arp_request(*CLIENT.ip(), HOST),
            repeat,
        )
        .per_run),
    });

    // The reply path: flows recorded by the XDP runs above, ping-ponging C1:80 <-> HOST:8080.
    let reply = V4 {
        ttl: 255,
        ..V4::tcp_syn(c1_80, CLIENT)
    }
    .frame();
    const TC_BATCH: u32 = 200;
    let calls = (repeat / TC_BATCH).max(1);
    let mut total = 0.0;
    for _ in 0..calls {
        total += ns(testrun::tc(
            &mut exact,
            portmap_common::programs::TC_REPLY,
            &reply,
            TC_BATCH,
        )
        .per_run);
    }
    costs.push(PathCost {
        path: "tc_reply hit (flow lookup, rewrite, redirect)",
        ns_per_packet: total / f64::from(calls),
    });
    costs.push(PathCost {
        path: "tc_forward without a note",
        ns_per_packet: ns(testrun::tc(
            &mut exact,
            portmap_common::programs::TC_FORWARD,
            &syn,
            repeat,
        )
        .per_run),
    });

    // Wildcard bindings, ping-pong through the wildcard and the local-address check.
    let mut wildcard = loaded(
        vec![
            binding_of(Proto::Udp, None, 8080, c1_80),
            binding_of(Proto::Udp, None, 80, host_8080),
        ],
        &[HOST, C1],
    )?;
    costs.push(PathCost {
        path: "xdp_uplink hit, wildcard binding, established flow",
        ns_per_packet: ns(testrun::xdp(&mut wildcard, &datagram, repeat).per_run),
    });
    Ok(costs)
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64
}
