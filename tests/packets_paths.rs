//! The packet table for every path, both families: IPv6 parity (S1/S2/S5), loopback drops
//! (S6), hairpin (S8), wildcard bindings and local addresses (S10), removal and re-pointing
//! (S13), fragments and ICMP errors (S14), and UDP checksum 0 (S15). Crafted frames go through
//! the real object's programs with `BPF_PROG_TEST_RUN`.
//!
//! Each test checks the verdict, every rewritten field, every checksum recomputed from scratch
//! (`packet::read_ip`, `packet::read_icmp_error`), and then that the frame is byte for byte the
//! one built independently with the expected fields (so nothing else, the payload included,
//! changed); then the reason counters (exactly those expected, every other one zero), binding
//! counters and flow state.
//!
//! Names read `scenario_hook_family_proto_outcome`. One scenario body usually serves both
//! families: IPv4 and IPv6 tests differ only in the [`Net`] they pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portmap_common::{
    Addr, FLOW_HAIRPIN, FlowKey, FlowState, MAX_LOCAL_ADDRS, Reason, XDP_META_MAGIC, programs,
};
use portmap_tests::{
    packet::{self, Icmp4Error, Icmp6Error, Quote, TCP, UDP, V4, V6},
    process::require_root,
    testrun::{self, Ran},
};
use portmap_user::{
    dataplane::Dataplane,
    netdev::{HostAddrs, Interface},
    plan::{Binding, Plan},
    spec::Publish,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The containers' bridge. Index 1 is the loopback device, which is the device of every skb in
/// a TC test run: `tc_reply` finds the bridge's own addresses (its `BRIDGES` entry) by it, and
/// every hook records it as the flow's ingress.
const BRIDGE_INDEX: u32 = 1;
const BRIDGE_NAME: &str = "docker0";
const UPLINK_NAME: &str = "eth0";

/// The addresses of one family that the scenarios use.
struct Net {
    /// The host's uplink addresses.
    host: IpAddr,
    host_2: IpAddr,
    /// Routed through the host, not local.
    not_local: IpAddr,
    /// Not local until a test adds it.
    extra: IpAddr,
    client: SocketAddr,
    /// A router between the host and the client.
    router: IpAddr,
    /// The bridge's own address: the source hairpinned connections get.
    bridge: IpAddr,
    c1: IpAddr,
    c2: IpAddr,
    c3: IpAddr,
    loopback: IpAddr,
}

const fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn ip6(net: u16, last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, last))
}

const NET4: Net = Net {
    host: ip4(198, 51, 100, 1),
    host_2: ip4(198, 51, 100, 5),
    not_local: ip4(203, 0, 113, 9),
    extra: ip4(198, 51, 100, 77),
    client: SocketAddr::new(ip4(198, 51, 100, 2), 40000),
    router: ip4(203, 0, 113, 254),
    bridge: ip4(172, 17, 0, 1),
    c1: ip4(172, 17, 0, 2),
    c2: ip4(172, 17, 0, 3),
    c3: ip4(172, 17, 0, 4),
    loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
};

const NET6: Net = Net {
    host: ip6(0, 1),
    host_2: ip6(0, 5),
    not_local: ip6(0xff, 9),
    extra: ip6(0, 0x77),
    client: SocketAddr::new(ip6(0, 2), 40000),
    router: ip6(0xfe, 1),
    bridge: ip6(1, 1),
    c1: ip6(1, 2),
    c2: ip6(1, 3),
    c3: ip6(1, 4),
    loopback: IpAddr::V6(Ipv6Addr::LOCALHOST),
};

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An address as a publish spec writes a host IP: IPv6 in brackets.
fn spec_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

// --- The dataplane ---

fn bridge() -> Interface {
    Interface {
        name: BRIDGE_NAME.into(),
        index: BRIDGE_INDEX,
    }
}

fn bindings<S: AsRef<str>>(specs: &[S]) -> Vec<Binding> {
    let publishes: Vec<Publish> = specs.iter().map(|s| s.as_ref().parse().unwrap()).collect();
    Plan::new(&publishes).expect("a valid plan").bindings
}

/// The host's addresses in every test: both uplink addresses and the bridge's own of each
/// family, and loopback (local too, as on a real host).
fn host_addrs() -> HostAddrs {
    let mut list = Vec::new();
    for net in [&NET4, &NET6] {
        list.push((UPLINK_NAME.to_string(), net.host));
        list.push((UPLINK_NAME.to_string(), net.host_2));
        list.push((BRIDGE_NAME.to_string(), net.bridge));
        list.push(("lo".to_string(), net.loopback));
    }
    HostAddrs::from_list(list)
}

/// A dataplane loaded into the kernel (not attached) with `specs` published toward the bridge,
/// binding ids from 0 in order, and [`host_addrs`] taken in.
fn dataplane<S: AsRef<str>>(specs: &[S]) -> Dataplane {
    require_root();
    let mut dataplane = Dataplane::load().expect("loading the object");
    dataplane
        .publish(&bindings(specs), &bridge())
        .expect("publishing");
    dataplane
        .set_host_addrs(host_addrs())
        .expect("host addresses");
    dataplane
}

// --- Running the hooks ---

fn xdp(dp: &mut Dataplane, frame: &[u8]) -> Ran {
    testrun::xdp(dp, frame, 1)
}

fn tc_reply(dp: &mut Dataplane, frame: &[u8]) -> Ran {
    testrun::tc(dp, programs::TC_REPLY, frame, 1)
}

/// The two hooks that translate on the uplink; most uplink scenarios run through both.
#[derive(Clone, Copy, Debug)]
enum Uplink {
    Xdp,
    Tc,
}

impl Uplink {
    fn run(self, dp: &mut Dataplane, frame: &[u8]) -> Ran {
        match self {
            Self::Xdp => xdp(dp, frame),
            Self::Tc => testrun::tc(dp, programs::TC_UPLINK, frame, 1),
        }
    }

    /// The verdict on a translated packet: XDP passes it up with a note for `tc_forward`,
    /// `tc_uplink` redirects it to the bridge itself.
    fn translated(self) -> u32 {
        match self {
            Self::Xdp => XDP_PASS,
            Self::Tc => TC_ACT_REDIRECT,
        }
    }

    /// The verdict on a packet left to the stack.
    fn passed(self) -> u32 {
        match self {
            Self::Xdp => XDP_PASS,
            Self::Tc => TC_ACT_OK,
        }
    }

    fn dropped(self) -> u32 {
        match self {
            Self::Xdp => XDP_DROP,
            Self::Tc => TC_ACT_SHOT,
        }
    }

    /// The TTL a translated packet leaves with: XDP leaves the decrement to `tc_forward`,
    /// `tc_uplink` forwards the packet itself.
    fn ttl_after(self, ttl: u8) -> u8 {
        match self {
            Self::Xdp => ttl,
            Self::Tc => ttl - 1,
        }
    }

    /// The forwarding note for `tc_forward` on a translated XDP frame (where the kernel can show
    /// it: see `testrun::xdp`).
    fn assert_note(self, ran: &Ran, what: &str) {
        if let Self::Xdp = self
            && ran.meta_visible
        {
            let meta = ran
                .meta
                .unwrap_or_else(|| panic!("{what}: no forwarding note"));
            assert_eq!(meta.magic, XDP_META_MAGIC, "{what}: note magic");
            assert_eq!(meta.egress_ifindex, BRIDGE_INDEX, "{what}: note egress");
        }
    }
}

// --- Packets of either family ---

/// A TCP SYN or UDP datagram of either family, so that one scenario body serves both.
#[derive(Clone, Debug)]
enum Pkt {
    V4(V4),
    V6(V6),
}

impl Pkt {
    fn tcp_syn(src: SocketAddr, dst: SocketAddr) -> Self {
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Self::V4(V4::tcp_syn(s, d)),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => Self::V6(V6::tcp_syn(s, d)),
            _ => panic!("{src} and {dst} are of different families"),
        }
    }

    fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Self::V4(V4::udp(s, d, payload)),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => Self::V6(V6::udp(s, d, payload)),
            _ => panic!("{src} and {dst} are of different families"),
        }
    }

    /// A TCP SYN or a small UDP datagram.
    fn of(proto: u8, src: SocketAddr, dst: SocketAddr) -> Self {
        if proto == TCP {
            Self::tcp_syn(src, dst)
        } else {
            Self::udp(src, dst, b"datagram")
        }
    }

    /// A UDP datagram that [`Pkt::fragments`] cuts in three: no DF (a router could not have
    /// fragmented it otherwise, and the reassembled header then matches it byte for byte).
    fn big_udp(src: SocketAddr, dst: SocketAddr) -> Self {
        match Self::udp(src, dst, &payload(300)) {
            Self::V4(p) => Self::V4(V4 { frag: 0, ..p }),
            v6 => v6,
        }
    }

    fn src(&self) -> SocketAddr {
        match self {
            Self::V4(p) => p.src.into(),
            Self::V6(p) => p.src.into(),
        }
    }

    fn dst(&self) -> SocketAddr {
        match self {
            Self::V4(p) => p.dst.into(),
            Self::V6(p) => p.dst.into(),
        }
    }

    fn ttl(&self) -> u8 {
        match self {
            Self::V4(p) => p.ttl,
            Self::V6(p) => p.hop_limit,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Self::V4(p) => &p.payload,
            Self::V6(p) => &p.payload,
        }
    }

    fn with_src(&self, src: SocketAddr) -> Self {
        match (self, src) {
            (Self::V4(p), SocketAddr::V4(src)) => Self::V4(V4 { src, ..p.clone() }),
            (Self::V6(p), SocketAddr::V6(src)) => Self::V6(V6 { src, ..p.clone() }),
            _ => panic!("{src} is of the other family"),
        }
    }

    fn with_dst(&self, dst: SocketAddr) -> Self {
        match (self, dst) {
            (Self::V4(p), SocketAddr::V4(dst)) => Self::V4(V4 { dst, ..p.clone() }),
            (Self::V6(p), SocketAddr::V6(dst)) => Self::V6(V6 { dst, ..p.clone() }),
            _ => panic!("{dst} is of the other family"),
        }
    }

    fn with_ttl(&self, ttl: u8) -> Self {
        match self {
            Self::V4(p) => Self::V4(V4 { ttl, ..p.clone() }),
            Self::V6(p) => Self::V6(V6 {
                hop_limit: ttl,
                ..p.clone()
            }),
        }
    }

    fn with_payload(&self, payload: Vec<u8>) -> Self {
        match self {
            Self::V4(p) => Self::V4(V4 {
                payload,
                ..p.clone()
            }),
            Self::V6(p) => Self::V6(V6 {
                payload,
                ..p.clone()
            }),
        }
    }

    fn ip_packet(&self) -> Vec<u8> {
        match self {
            Self::V4(p) => p.ip_packet(),
            Self::V6(p) => p.ip_packet(),
        }
    }

    fn frame(&self) -> Vec<u8> {
        match self {
            Self::V4(p) => p.frame(),
            Self::V6(p) => p.frame(),
        }
    }

    /// The datagram in three fragments: IPv4 at an MTU of 128 (104 + 104 + 100 bytes of UDP),
    /// IPv6 at 160 (112 + 112 + 84), identification [`FRAG_ID`].
    fn fragments(&self) -> Vec<Vec<u8>> {
        let frames = match self {
            Self::V4(p) => packet::fragments_v4(
                &V4 {
                    id: FRAG_ID as u16,
                    ..p.clone()
                },
                128,
            ),
            Self::V6(p) => packet::fragments_v6(p, FRAG_ID, 160),
        };
        assert_eq!(frames.len(), 3, "precondition: three fragments");
        frames
    }

    /// The whole datagram as [`packet::reassemble`] rebuilds it from [`Pkt::fragments`].
    fn reassembled(&self) -> Self {
        match self {
            Self::V4(p) => Self::V4(V4 {
                id: FRAG_ID as u16,
                ..p.clone()
            }),
            v6 => v6.clone(),
        }
    }
}

/// The fragment identification of [`Pkt::fragments`] (16 bits of it for IPv4).
const FRAG_ID: u32 = 0x0000_4321;

/// A payload whose bytes differ from their neighbours, so that a misplaced slice shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

// --- Assertions ---

/// Asserts that `got` is `want` byte for byte, showing where they first differ.
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |frame: &[u8]| frame[at.saturating_sub(8)..(at + 8).min(frame.len())].to_vec();
    panic!(
        "{what}: frame differs from byte {at} on (lengths {} and {})\n got: {:02x?}\nwant: {:02x?}",
        got.len(),
        want.len(),
        window(got),
        window(want),
    );
}

/// Asserts a rewritten TCP/UDP frame field by field (checksums verified from scratch), then
/// byte for byte against `want` built independently.
fn assert_rewritten(frame: &[u8], want: &Pkt, what: &str) {
    let seen = packet::read_ip(frame);
    assert_eq!(seen.src, want.src(), "{what}: source");
    assert_eq!(seen.dst, want.dst(), "{what}: destination");
    assert_eq!(seen.ttl, want.ttl(), "{what}: TTL / hop limit");
    assert!(seen.ip_check_ok, "{what}: IPv4 header checksum");
    assert_eq!(
        seen.l4_check_ok,
        Some(true),
        "{what}: L4 checksum {:#06x?}",
        seen.l4_check
    );
    assert_eq!(seen.payload, want.payload(), "{what}: payload");
    assert_frame(frame, &want.frame(), what);
}

/// Asserts that a frame came out exactly as it went in, with `verdict`.
fn assert_untouched(ran: &Ran, input: &[u8], verdict: u32, what: &str) {
    assert_eq!(ran.verdict, verdict, "{what}: verdict");
    assert_frame(&ran.frame, input, what);
    assert_eq!(ran.meta, None, "{what}: no forwarding note");
}

/// Asserts the reason counters: exactly `expected`, every other one zero.
fn assert_reasons(dp: &Dataplane, expected: &[(Reason, u64)]) {
    let got: Vec<(&str, u64)> = dp
        .reason_stats()
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(r, n)| (r.name(), n))
        .collect();
    let want: Vec<(&str, u64)> = Reason::ALL
        .iter()
        .filter_map(|r| {
            let n: u64 = expected
                .iter()
                .filter(|(e, _)| e == r)
                .map(|(_, n)| n)
                .sum();
            (n != 0).then_some((r.name(), n))
        })
        .collect();
    assert_eq!(got, want, "reason counters");
}

/// A flow as the maps hold it, in addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FlowSeen {
    /// Reply source.
    container: SocketAddr,
    /// Reply destination: the client, or for a hairpin flow the bridge's address.
    client: SocketAddr,
    proto: u8,
    /// What the reply's source becomes: the exact address and port the client used.
    host: SocketAddr,
    /// For a hairpin flow, the calling container, whom the replies go back to.
    caller: Option<SocketAddr>,
    binding_id: u32,
    ingress_ifindex: u32,
}

/// An ordinary (not hairpin) flow of binding `binding_id`, in through the test run's device.
fn flow(
    container: SocketAddr,
    client: SocketAddr,
    proto: u8,
    host: SocketAddr,
    binding_id: u32,
) -> FlowSeen {
    FlowSeen {
        container,
        client,
        proto,
        host,
        caller: None,
        binding_id,
        ingress_ifindex: BRIDGE_INDEX,
    }
}

fn ip_of<const N: usize>(addr: &Addr<N>) -> IpAddr {
    match N {
        4 => IpAddr::from(<[u8; 4]>::try_from(&addr.0[..]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&addr.0[..]).unwrap()),
    }
}

fn flow_seen<const N: usize>((key, flow): (FlowKey<N>, FlowState<N>)) -> FlowSeen {
    let sock = |addr, port| SocketAddr::new(ip_of(addr), u16::from_be_bytes(port));
    FlowSeen {
        container: sock(&key.container_addr, key.container_port),
        client: sock(&key.client_addr, key.client_port),
        proto: key.proto,
        host: sock(&flow.host_addr, flow.host_port),
        caller: (flow.flags & FLOW_HAIRPIN != 0).then(|| sock(&flow.client_addr, flow.client_port)),
        binding_id: flow.binding_id,
        ingress_ifindex: flow.ingress_ifindex,
    }
}

/// Every flow of both families, sorted.
fn flows(dp: &Dataplane) -> Vec<FlowSeen> {
    let mut all: Vec<FlowSeen> = dp.flows_v4().unwrap().into_iter().map(flow_seen).collect();
    all.extend(dp.flows_v6().unwrap().into_iter().map(flow_seen));
    all.sort();
    all
}

// --- S1/S2: IPv6 parity ---

// xdp_uplink translates an IPv6 TCP SYN: destination, checksum over the new pseudo-header,
// hop limit left to tc_forward, and the flow records the exact host address the client used.
#[test]
fn s1_xdp_v6_tcp_rewrites_dst_and_records_flow() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let syn = Pkt::tcp_syn(n.client, at(n.host_2, 8080));
    let frame = syn.frame();
    let ran = xdp(&mut dp, &frame);
    assert_eq!(ran.verdict, XDP_PASS, "verdict");
    assert_rewritten(&ran.frame, &syn.with_dst(at(n.c1, 80)), "SYN");
    Uplink::Xdp.assert_note(&ran, "SYN");
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 1)]);
    let stats = dp.binding_stats(0).unwrap();
    assert_eq!(stats.to_container_packets, 1);
    assert_eq!(stats.to_container_bytes, frame.len() as u64);
    assert_eq!(
        flows(&dp),
        [flow(at(n.c1, 80), n.client, TCP, at(n.host_2, 8080), 0)],
        "the flow, with the exact host address"
    );
}

// xdp_uplink translates an IPv6 UDP datagram, its mandatory checksum updated.
#[test]
fn s1_xdp_v6_udp_rewrites_dst_and_records_flow() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let query = Pkt::udp(n.client, at(n.host, 5353), b"query payload");
    let ran = xdp(&mut dp, &query.frame());
    assert_eq!(ran.verdict, XDP_PASS, "verdict");
    assert_rewritten(&ran.frame, &query.with_dst(at(n.c2, 53)), "datagram");
    Uplink::Xdp.assert_note(&ran, "datagram");
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 1)]);
    assert_eq!(dp.binding_stats(0).unwrap().to_container_packets, 1);
    assert_eq!(
        flows(&dp),
        [flow(at(n.c2, 53), n.client, UDP, at(n.host, 5353), 0)]
    );
}

// A binding published on one IPv6 address does not cover another local one.
#[test]
fn s1_xdp_v6_tcp_passes_on_address_miss_for_specific_binding() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("{}:8080:80={}", spec_ip(n.host), n.c1)]);
    let frame = Pkt::tcp_syn(n.client, at(n.host_2, 8080)).frame();
    assert_untouched(&xdp(&mut dp, &frame), &frame, XDP_PASS, "other address");
    let frame = Pkt::tcp_syn(n.client, at(n.host, 8080)).frame();
    assert_eq!(xdp(&mut dp, &frame).verdict, XDP_PASS);
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkPassNoBinding, 1),
            (Reason::UplinkTranslated, 1),
        ],
    );
    assert_eq!(flows(&dp).len(), 1, "only the published address");
}

/// tc_uplink on a packet of the IPv6 binding: translated, hop limit - 1, redirected.
fn tc_uplink_v6_case(proto: u8) {
    let n = &NET6;
    let spec = if proto == TCP {
        "8080:80"
    } else {
        "8080:80/udp"
    };
    let mut dp = dataplane(&[format!("{spec}={}", n.c1)]);
    let packet = Pkt::of(proto, n.client, at(n.host_2, 8080));
    let ran = Uplink::Tc.run(&mut dp, &packet.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "verdict");
    let want = packet.with_dst(at(n.c1, 80)).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "forwarded packet");
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 1)]);
    assert_eq!(dp.binding_stats(0).unwrap().to_container_packets, 1);
    assert_eq!(
        flows(&dp),
        [flow(at(n.c1, 80), n.client, proto, at(n.host_2, 8080), 0)]
    );
}

#[test]
fn s2_tc_uplink_v6_tcp_rewrites_dst_decrements_hop_limit_and_redirects() {
    tc_uplink_v6_case(TCP);
}

#[test]
fn s2_tc_uplink_v6_udp_rewrites_dst_decrements_hop_limit_and_redirects() {
    tc_uplink_v6_case(UDP);
}

// A hop limit that would expire: translated, but left to the stack (which sends the ICMPv6
// time exceeded), not decremented.
#[test]
fn s2_tc_uplink_v6_tcp_passes_translated_when_hop_limit_expires() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let syn = Pkt::tcp_syn(n.client, at(n.host, 8080)).with_ttl(1);
    let ran = Uplink::Tc.run(&mut dp, &syn.frame());
    assert_eq!(ran.verdict, TC_ACT_OK, "verdict");
    assert_rewritten(&ran.frame, &syn.with_dst(at(n.c1, 80)), "SYN");
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 1)]);
}

/// A flow of the IPv6 binding from the client to `host_2`, then the container's reply through
/// tc_reply: its source becomes host_2:8080 again, hop limit - 1, redirected.
fn tc_reply_v6_case(proto: u8) {
    let n = &NET6;
    let spec = if proto == TCP {
        "8080:80"
    } else {
        "8080:80/udp"
    };
    let mut dp = dataplane(&[format!("{spec}={}", n.c1)]);
    xdp(
        &mut dp,
        &Pkt::of(proto, n.client, at(n.host_2, 8080)).frame(),
    );
    let answer = Pkt::of(proto, at(n.c1, 80), n.client);
    let ran = tc_reply(&mut dp, &answer.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "verdict");
    let want = answer.with_src(at(n.host_2, 8080)).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "reply");
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 1), (Reason::ReplyTranslated, 1)],
    );
    let stats = dp.binding_stats(0).unwrap();
    assert_eq!(
        (stats.to_container_packets, stats.to_client_packets),
        (1, 1)
    );
}

#[test]
fn s1_tc_reply_v6_tcp_restores_host_src_and_redirects() {
    tc_reply_v6_case(TCP);
}

#[test]
fn s1_tc_reply_v6_udp_restores_host_src_and_redirects() {
    tc_reply_v6_case(UDP);
}

// A reply whose hop limit would expire is the stack's, untouched.
#[test]
fn s1_tc_reply_v6_tcp_passes_when_hop_limit_expires() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    xdp(&mut dp, &Pkt::tcp_syn(n.client, at(n.host, 8080)).frame());
    let frame = Pkt::tcp_syn(at(n.c1, 80), n.client).with_ttl(1).frame();
    assert_untouched(&tc_reply(&mut dp, &frame), &frame, TC_ACT_OK, "reply");
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 1), (Reason::ReplyTtlExpired, 1)],
    );
}

// A container's IPv6 packet that belongs to no flow (outbound traffic) is the stack's.
#[test]
fn s1_tc_reply_v6_tcp_passes_when_no_flow() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let frame = Pkt::tcp_syn(at(n.c1, 80), n.client).frame();
    assert_untouched(&tc_reply(&mut dp, &frame), &frame, TC_ACT_OK, "reply");
    assert_reasons(&dp, &[(Reason::ReplyPassNoFlow, 1)]);
}

// --- tc_port: the same translation on a bridge port ---

fn tc_port(dp: &mut Dataplane, frame: &[u8]) -> Ran {
    testrun::tc(dp, programs::TC_PORT, frame, 1)
}

/// On a bridge port, a plain reply is translated as on the bridge and counted as tc_port's;
/// what the bridge must handle (no flow, a TTL about to expire, a hairpin flow's reply) goes
/// on untouched and uncounted, for tc_reply to see next.
fn tc_port_case(n: &Net, proto: u8) {
    let spec = if proto == TCP {
        "8080:80"
    } else {
        "8080:80/udp"
    };
    let mut dp = dataplane(&[format!("{spec}={}", n.c1)]);
    let lone = Pkt::of(proto, at(n.c1, 80), n.client).frame();
    assert_untouched(&tc_port(&mut dp, &lone), &lone, TC_ACT_OK, "no flow");
    assert_reasons(&dp, &[]);

    xdp(
        &mut dp,
        &Pkt::of(proto, n.client, at(n.host_2, 8080)).frame(),
    );
    let answer = Pkt::of(proto, at(n.c1, 80), n.client);
    let ran = tc_port(&mut dp, &answer.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "reply: verdict");
    let want = answer.with_src(at(n.host_2, 8080)).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "reply");
    let expiring = answer.with_ttl(1).frame();
    assert_untouched(
        &tc_port(&mut dp, &expiring),
        &expiring,
        TC_ACT_OK,
        "expiring",
    );
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 1), (Reason::PortTranslated, 1)],
    );

    // A hairpin flow's replies return into the bridge, so they are the bridge's.
    let caller = at(n.c2, 45000);
    let hairpinned = tc_reply(&mut dp, &Pkt::of(proto, caller, at(n.bridge, 8080)).frame());
    assert_eq!(hairpinned.verdict, TC_ACT_REDIRECT, "precondition: hairpin");
    let back = Pkt::of(proto, at(n.c1, 80), at(n.bridge, 45000)).frame();
    assert_untouched(&tc_port(&mut dp, &back), &back, TC_ACT_OK, "hairpin reply");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 1),
            (Reason::PortTranslated, 1),
            (Reason::ReplyHairpin, 1),
        ],
    );
    let stats = dp.binding_stats(0).unwrap();
    assert_eq!(stats.to_client_packets, 1, "one reply counted");
}

#[test]
fn tc_port_v4_tcp_translates_replies_and_leaves_the_rest_to_the_bridge() {
    tc_port_case(&NET4, TCP);
}

#[test]
fn tc_port_v4_udp_translates_replies_and_leaves_the_rest_to_the_bridge() {
    tc_port_case(&NET4, UDP);
}

#[test]
fn tc_port_v6_tcp_translates_replies_and_leaves_the_rest_to_the_bridge() {
    tc_port_case(&NET6, TCP);
}

#[test]
fn tc_port_v6_udp_translates_replies_and_leaves_the_rest_to_the_bridge() {
    tc_port_case(&NET6, UDP);
}

// --- S5: one container behind two host ports ---

// Each flow's replies leave through the host port its client used.
#[test]
fn s5_tc_reply_v6_tcp_each_reply_leaves_through_its_own_host_port() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1), format!("9090:80={}", n.c1)]);
    let client_b = at(n.client.ip(), 40001);
    for (client, port) in [(n.client, 8080), (client_b, 9090)] {
        let syn = Pkt::tcp_syn(client, at(n.host, port));
        let ran = xdp(&mut dp, &syn.frame());
        assert_rewritten(&ran.frame, &syn.with_dst(at(n.c1, 80)), "SYN");
    }
    assert_eq!(
        flows(&dp),
        [
            flow(at(n.c1, 80), n.client, TCP, at(n.host, 8080), 0),
            flow(at(n.c1, 80), client_b, TCP, at(n.host, 9090), 1),
        ]
    );
    for (client, port, id) in [(n.client, 8080, 0), (client_b, 9090, 1)] {
        let answer = Pkt::tcp_syn(at(n.c1, 80), client);
        let ran = tc_reply(&mut dp, &answer.frame());
        assert_eq!(ran.verdict, TC_ACT_REDIRECT, "reply to {client}");
        let want = answer.with_src(at(n.host, port)).with_ttl(63);
        assert_rewritten(&ran.frame, &want, &format!("reply to {client}"));
        let stats = dp.binding_stats(id).unwrap();
        assert_eq!(
            (stats.to_container_packets, stats.to_client_packets),
            (1, 1),
            "binding {id}"
        );
    }
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 2), (Reason::ReplyTranslated, 2)],
    );
}

// --- S6: loopback destinations from the wire ---

/// Packets to loopback from the wire are dropped, even to a port published on loopback (a
/// specific binding) or on every local address (a wildcard, which covers loopback too), and
/// whatever the port: the check comes before any lookup (moby #45610).
fn loopback_case(hook: Uplink, n: &Net) {
    let mut dp = dataplane(&[
        format!("{}:5000:5000={}", spec_ip(n.loopback), n.c1),
        format!("5001:80={}", n.c1),
    ]);
    // The wildcard binding is live: it translates the host's own address.
    let live = Pkt::tcp_syn(n.client, at(n.host, 5001));
    let ran = hook.run(&mut dp, &live.frame());
    assert_eq!(ran.verdict, hook.translated(), "precondition: bound");
    let mut crafted = vec![
        (
            "specific loopback binding",
            Pkt::tcp_syn(n.client, at(n.loopback, 5000)),
        ),
        (
            "wildcard binding",
            Pkt::tcp_syn(n.client, at(n.loopback, 5001)),
        ),
        (
            "UDP, unbound",
            Pkt::udp(n.client, at(n.loopback, 5000), b"x"),
        ),
    ];
    if n.loopback.is_ipv4() {
        let elsewhere = ip4(127, 1, 2, 3);
        crafted.push((
            "elsewhere in 127/8",
            Pkt::tcp_syn(n.client, at(elsewhere, 5000)),
        ));
    }
    for (what, packet) in &crafted {
        let ran = hook.run(&mut dp, &packet.frame());
        assert_eq!(ran.verdict, hook.dropped(), "{what}: verdict");
        assert_eq!(ran.meta, None, "{what}: no forwarding note");
    }
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 1),
            (Reason::UplinkDropLoopback, crafted.len() as u64),
        ],
    );
    assert_eq!(
        dp.binding_stats(0).unwrap().to_container_packets,
        0,
        "the loopback binding took nothing"
    );
    assert_eq!(flows(&dp).len(), 1, "no flow but the live one");
}

#[test]
fn s6_xdp_v4_tcp_udp_drops_loopback_dst_even_when_bound() {
    loopback_case(Uplink::Xdp, &NET4);
}

#[test]
fn s6_xdp_v6_tcp_udp_drops_loopback_dst_even_when_bound() {
    loopback_case(Uplink::Xdp, &NET6);
}

#[test]
fn s6_tc_uplink_v4_tcp_udp_drops_loopback_dst_even_when_bound() {
    loopback_case(Uplink::Tc, &NET4);
}

#[test]
fn s6_tc_uplink_v6_tcp_udp_drops_loopback_dst_even_when_bound() {
    loopback_case(Uplink::Tc, &NET6);
}

// --- S8: hairpin ---

/// A container (`caller`) reaches the port published for c1 on a local address (`via`): the
/// packet goes to c1 from the bridge's address, keeping the caller's port, and c1's reply
/// goes back to the caller from the published address. Then the caller's next packet reuses
/// the flow.
fn hairpin_case(n: &Net, proto: u8, caller: IpAddr, via: IpAddr) {
    let spec = if proto == TCP {
        "8080:80"
    } else {
        "8080:80/udp"
    };
    let mut dp = dataplane(&[format!("{spec}={}", n.c1)]);
    let (caller, published) = (at(caller, 45000), at(via, 8080));
    let (target, translated_src) = (at(n.c1, 80), at(n.bridge, 45000));

    let out = Pkt::of(proto, caller, published);
    let ran = tc_reply(&mut dp, &out.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "caller → target: verdict");
    let want = out.with_src(translated_src).with_dst(target).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "caller → target");
    assert_reasons(&dp, &[(Reason::ReplyHairpin, 1)]);
    assert_eq!(
        flows(&dp),
        [FlowSeen {
            caller: Some(caller),
            ..flow(target, translated_src, proto, published, 0)
        }],
        "a hairpin flow, keyed as the target's replies look"
    );

    let back = Pkt::of(proto, target, translated_src);
    let ran = tc_reply(&mut dp, &back.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "target → caller: verdict");
    let want = back.with_src(published).with_dst(caller).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "target → caller");
    assert_reasons(
        &dp,
        &[(Reason::ReplyHairpin, 1), (Reason::ReplyTranslated, 1)],
    );

    let again = tc_reply(&mut dp, &out.frame());
    assert_eq!(again.verdict, TC_ACT_REDIRECT, "the caller's next packet");
    assert_eq!(flows(&dp).len(), 1, "the same flow");
    let stats = dp.binding_stats(0).unwrap();
    assert_eq!(
        (stats.to_container_packets, stats.to_client_packets),
        (2, 1)
    );
}

#[test]
fn s8_tc_reply_v4_tcp_hairpin_via_bridge_addr_round_trip() {
    hairpin_case(&NET4, TCP, NET4.c2, NET4.bridge);
}

#[test]
fn s8_tc_reply_v6_tcp_hairpin_via_bridge_addr_round_trip() {
    hairpin_case(&NET6, TCP, NET6.c2, NET6.bridge);
}

#[test]
fn s8_tc_reply_v4_udp_hairpin_via_host_addr_round_trip() {
    hairpin_case(&NET4, UDP, NET4.c2, NET4.host);
}

#[test]
fn s8_tc_reply_v6_udp_hairpin_via_host_addr_round_trip() {
    hairpin_case(&NET6, UDP, NET6.c2, NET6.host);
}

// A container reaching its own published port: the same rewrite, to itself.
#[test]
fn s8_tc_reply_v4_tcp_hairpin_to_itself_round_trip() {
    hairpin_case(&NET4, TCP, NET4.c1, NET4.bridge);
}

#[test]
fn s8_tc_reply_v6_tcp_hairpin_to_itself_round_trip() {
    hairpin_case(&NET6, TCP, NET6.c1, NET6.bridge);
}

/// Two callers with the same source port to the same target would share the translated source
/// (bridge:port): the second is left to the stack, untouched, and the first keeps its replies.
/// Another port is free.
fn hairpin_port_busy_case(n: &Net) {
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let published = at(n.bridge, 8080);
    let first = Pkt::tcp_syn(at(n.c2, 45000), published);
    assert_eq!(
        tc_reply(&mut dp, &first.frame()).verdict,
        TC_ACT_REDIRECT,
        "precondition: the first caller is hairpinned"
    );

    let second = Pkt::tcp_syn(at(n.c3, 45000), published).frame();
    let ran = tc_reply(&mut dp, &second);
    assert_untouched(&ran, &second, TC_ACT_OK, "second caller, same port");
    assert_reasons(
        &dp,
        &[(Reason::ReplyHairpin, 1), (Reason::ReplyHairpinPortBusy, 1)],
    );

    let back = Pkt::tcp_syn(at(n.c1, 80), at(n.bridge, 45000));
    let ran = tc_reply(&mut dp, &back.frame());
    let want = back
        .with_src(published)
        .with_dst(at(n.c2, 45000))
        .with_ttl(63);
    assert_rewritten(
        &ran.frame,
        &want,
        "the target's reply still goes to the first caller",
    );

    let other_port = Pkt::tcp_syn(at(n.c3, 45001), published);
    let ran = tc_reply(&mut dp, &other_port.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "another port is free");
    let want = other_port
        .with_src(at(n.bridge, 45001))
        .with_dst(at(n.c1, 80))
        .with_ttl(63);
    assert_rewritten(&ran.frame, &want, "second caller, another port");
    assert_eq!(flows(&dp).len(), 2);
}

#[test]
fn s8_tc_reply_v4_tcp_hairpin_port_busy_leaves_second_caller_untouched() {
    hairpin_port_busy_case(&NET4);
}

#[test]
fn s8_tc_reply_v6_tcp_hairpin_port_busy_leaves_second_caller_untouched() {
    hairpin_port_busy_case(&NET6);
}

// --- S10: wildcard bindings and the local addresses ---

/// A wildcard binding covers every local address of its family, the bridge's own included,
/// and nothing else.
fn wildcard_case(n: &Net) {
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    for local in [n.host, n.host_2, n.bridge] {
        let syn = Pkt::tcp_syn(n.client, at(local, 8080));
        let ran = xdp(&mut dp, &syn.frame());
        assert_eq!(ran.verdict, XDP_PASS, "to {local}: verdict");
        assert_rewritten(
            &ran.frame,
            &syn.with_dst(at(n.c1, 80)),
            &format!("to {local}"),
        );
    }
    let routed = Pkt::tcp_syn(n.client, at(n.not_local, 8080)).frame();
    assert_untouched(&xdp(&mut dp, &routed), &routed, XDP_PASS, "not local");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 3),
            (Reason::UplinkPassNoBinding, 1),
        ],
    );
}

#[test]
fn s10_xdp_v4_tcp_wildcard_matches_every_local_addr_only() {
    wildcard_case(&NET4);
}

#[test]
fn s10_xdp_v6_tcp_wildcard_matches_every_local_addr_only() {
    wildcard_case(&NET6);
}

/// A wildcard binding's key has the unspecified address (`0.0.0.0`, `::`), but a packet sent to
/// that address is not the host's and is not translated.
fn wildcard_unspecified_case(n: &Net) {
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let unspecified = match n.host {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let frame = Pkt::tcp_syn(n.client, at(unspecified, 8080)).frame();
    assert_untouched(
        &xdp(&mut dp, &frame),
        &frame,
        XDP_PASS,
        "to the unspecified address",
    );
    assert_reasons(&dp, &[(Reason::UplinkPassNoBinding, 1)]);
}

#[test]
fn s10_xdp_v4_tcp_wildcard_does_not_match_the_unspecified_addr() {
    wildcard_unspecified_case(&NET4);
}

#[test]
fn s10_xdp_v6_tcp_wildcard_does_not_match_the_unspecified_addr() {
    wildcard_unspecified_case(&NET6);
}

/// A wildcard binding follows the local addresses: an address added is matched at once, and
/// once removed is not.
fn wildcard_follows_local_addrs_case(n: &Net) {
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let to_extra = Pkt::tcp_syn(n.client, at(n.extra, 8080));
    let to_host = Pkt::tcp_syn(n.client, at(n.host, 8080));
    let frame = to_extra.frame();
    assert_untouched(
        &xdp(&mut dp, &frame),
        &frame,
        XDP_PASS,
        "before it is local",
    );

    dp.set_local_addrs(&[n.host, n.host_2, n.extra]).unwrap();
    let ran = xdp(&mut dp, &frame);
    assert_rewritten(&ran.frame, &to_extra.with_dst(at(n.c1, 80)), "once local");
    let ran = xdp(&mut dp, &to_host.frame());
    assert_rewritten(
        &ran.frame,
        &to_host.with_dst(at(n.c1, 80)),
        "the others stay",
    );

    dp.set_local_addrs(&[n.host, n.host_2]).unwrap();
    assert_untouched(&xdp(&mut dp, &frame), &frame, XDP_PASS, "once removed");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 2),
            (Reason::UplinkPassNoBinding, 2),
        ],
    );
}

/// More local addresses than the map holds are refused, naming the map, and the addresses
/// before stay in force, none of the new ones half-written. As many as it holds replace the
/// old ones whole: the old go before the new come.
#[test]
fn s10_xdp_v6_local_addrs_up_to_what_the_map_holds() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let many: Vec<IpAddr> = (0..=MAX_LOCAL_ADDRS)
        .map(|i| {
            let i = u16::try_from(i).expect("fits");
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xfff, 0, 0, 0, 1, i))
        })
        .collect();
    let translated = |dp: &mut Dataplane, dst: IpAddr| {
        let syn = Pkt::tcp_syn(n.client, at(dst, 8080));
        let ran = xdp(dp, &syn.frame());
        if ran.frame == syn.frame() {
            return false;
        }
        assert_rewritten(&ran.frame, &syn.with_dst(at(n.c1, 80)), &format!("{dst}"));
        true
    };

    let error = dp.set_local_addrs(&many).expect_err("one address too many");
    assert!(
        format!("{error:#}").contains("LOCAL_ADDRS_V6"),
        "the error names the map: {error:#}"
    );
    assert!(translated(&mut dp, n.host), "the old addresses stay");
    for &dst in &many {
        assert!(!translated(&mut dp, dst), "{dst} was not written");
    }

    let fits = &many[..MAX_LOCAL_ADDRS as usize];
    dp.set_local_addrs(fits).expect("as many as the map holds");
    assert!(!translated(&mut dp, n.host), "the old addresses are gone");
    assert!(translated(&mut dp, fits[0]) && translated(&mut dp, fits[fits.len() - 1]));
}

#[test]
fn s10_xdp_v4_tcp_wildcard_follows_set_local_addrs() {
    wildcard_follows_local_addrs_case(&NET4);
}

#[test]
fn s10_xdp_v6_tcp_wildcard_follows_set_local_addrs() {
    wildcard_follows_local_addrs_case(&NET6);
}

// --- S13: removing and re-pointing bindings ---

/// Removing a binding ends its flows at once: its old flow's reply is no longer translated,
/// its port no longer published, and the sweep deletes the flow. A binding of the other family
/// (`other`, on its own port: the planner refuses one port toward two containers, even of two
/// families) is not affected.
fn removed_binding_case(n: &Net, other: &Net) {
    let mut dp = dataplane(&[
        format!("5353:53/udp={}", n.c2),
        format!("5354:53/udp={}", other.c2),
    ]);
    for (net, port) in [(n, 5353), (other, 5354)] {
        let ran = xdp(
            &mut dp,
            &Pkt::udp(net.client, at(net.host, port), b"q").frame(),
        );
        assert_eq!(ran.verdict, XDP_PASS);
    }
    let answer = Pkt::udp(at(n.c2, 53), n.client, b"answer").frame();
    let other_answer = Pkt::udp(at(other.c2, 53), other.client, b"answer").frame();
    assert_eq!(
        tc_reply(&mut dp, &answer).verdict,
        TC_ACT_REDIRECT,
        "precondition: translated while the binding lives"
    );

    dp.remove(&[0]).expect("removing the binding");
    assert_eq!(flows(&dp).len(), 2, "the flow is still in the table");
    assert_untouched(
        &tc_reply(&mut dp, &answer),
        &answer,
        TC_ACT_OK,
        "late reply",
    );
    assert_eq!(
        tc_reply(&mut dp, &other_answer).verdict,
        TC_ACT_REDIRECT,
        "the other binding's flow lives"
    );
    let query = Pkt::udp(n.client, at(n.host, 5353), b"q").frame();
    assert_untouched(&xdp(&mut dp, &query), &query, XDP_PASS, "the port is gone");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 2),
            (Reason::ReplyTranslated, 2),
            (Reason::ReplyPassNoFlow, 1),
            (Reason::UplinkPassNoBinding, 1),
        ],
    );

    assert_eq!(
        dp.sweep_flows().unwrap(),
        1,
        "the sweep deletes the dead flow"
    );
    assert_eq!(
        flows(&dp),
        [flow(
            at(other.c2, 53),
            other.client,
            UDP,
            at(other.host, 5354),
            1
        )],
        "only the other binding's flow is left"
    );
}

#[test]
fn s13_tc_reply_v4_udp_passes_after_remove_and_sweep_deletes_flow() {
    removed_binding_case(&NET4, &NET6);
}

#[test]
fn s13_tc_reply_v6_udp_passes_after_remove_and_sweep_deletes_flow() {
    removed_binding_case(&NET6, &NET4);
}

/// Re-pointing a port (remove, then publish it toward another container): new flows go to the
/// new container and its replies are translated; the old container's flow stays dead.
fn repointed_binding_case(n: &Net) {
    let mut dp = dataplane(&[format!("8080:80={}", n.c1)]);
    let old_client = at(n.client.ip(), 40100);
    xdp(&mut dp, &Pkt::tcp_syn(old_client, at(n.host, 8080)).frame());
    dp.remove(&[0]).unwrap();
    let added = dp
        .add(&bindings(&[format!("8080:80={}", n.c2)]), &bridge())
        .unwrap();
    assert_eq!(added[0].id, 0, "the id is reused");

    let syn = Pkt::tcp_syn(n.client, at(n.host, 8080));
    let ran = xdp(&mut dp, &syn.frame());
    assert_rewritten(&ran.frame, &syn.with_dst(at(n.c2, 80)), "a new flow");

    let stale = Pkt::tcp_syn(at(n.c1, 80), old_client).frame();
    assert_untouched(
        &tc_reply(&mut dp, &stale),
        &stale,
        TC_ACT_OK,
        "old container",
    );
    let live = Pkt::tcp_syn(at(n.c2, 80), n.client);
    let ran = tc_reply(&mut dp, &live.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "new container: verdict");
    let want = live.with_src(at(n.host, 8080)).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "new container's reply");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 2),
            (Reason::ReplyPassNoFlow, 1),
            (Reason::ReplyTranslated, 1),
        ],
    );

    assert_eq!(dp.sweep_flows().unwrap(), 1, "the old flow is swept");
    assert_eq!(
        flows(&dp),
        [flow(at(n.c2, 80), n.client, TCP, at(n.host, 8080), 0)]
    );
}

#[test]
fn s13_xdp_tc_reply_v4_tcp_repointed_binding_translates_only_new_flows() {
    repointed_binding_case(&NET4);
}

#[test]
fn s13_xdp_tc_reply_v6_tcp_repointed_binding_translates_only_new_flows() {
    repointed_binding_case(&NET6);
}

// --- S14: fragments ---

/// A client's UDP datagram in three fragments, in order: each is translated to the container
/// (the later ones by their first's record, IPv4 header checksum fixed), and reassembled they
/// are the datagram to the container, checksum right and payload intact.
fn uplink_fragments_case(hook: Uplink, n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let dgram = Pkt::big_udp(n.client, at(n.host, 5353));
    let frames = dgram.fragments();
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let what = format!("fragment {i}");
        let ran = hook.run(&mut dp, frame);
        assert_eq!(ran.verdict, hook.translated(), "{what}: verdict");
        hook.assert_note(&ran, &what);
        let (before, seen) = (packet::read_ip(frame), packet::read_ip(&ran.frame));
        assert_eq!(seen.dst.ip(), n.c2, "{what}: destination");
        assert_eq!(seen.src.ip(), n.client.ip(), "{what}: source");
        assert_eq!(seen.ttl, hook.ttl_after(before.ttl), "{what}: TTL");
        assert!(seen.ip_check_ok, "{what}: IPv4 header checksum");
        assert_eq!(seen.frag, before.frag, "{what}: fragment fields");
        assert_eq!(seen.payload, before.payload, "{what}: data");
        out.push(ran.frame);
    }
    let want = dgram
        .reassembled()
        .with_dst(at(n.c2, 53))
        .with_ttl(hook.ttl_after(dgram.ttl()));
    assert_rewritten(&packet::reassemble(&out), &want, "reassembled");
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 3)]);
    assert_eq!(dp.binding_stats(0).unwrap().to_container_packets, 3);
    assert_eq!(
        flows(&dp),
        [flow(at(n.c2, 53), n.client, UDP, at(n.host, 5353), 0)]
    );
}

#[test]
fn s14_xdp_v4_udp_fragments_all_translated() {
    uplink_fragments_case(Uplink::Xdp, &NET4);
}

#[test]
fn s14_xdp_v6_udp_fragments_all_translated() {
    uplink_fragments_case(Uplink::Xdp, &NET6);
}

#[test]
fn s14_tc_uplink_v4_udp_fragments_all_translated_and_redirected() {
    uplink_fragments_case(Uplink::Tc, &NET4);
}

#[test]
fn s14_tc_uplink_v6_udp_fragments_all_translated_and_redirected() {
    uplink_fragments_case(Uplink::Tc, &NET6);
}

/// A later fragment before its first (out of order) passes untouched, counted; once the first
/// has passed, the same later fragment is translated.
fn uplink_fragment_first_unseen_case(hook: Uplink, n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let frames = Pkt::big_udp(n.client, at(n.host, 5353)).fragments();
    let ran = hook.run(&mut dp, &frames[1]);
    assert_untouched(&ran, &frames[1], hook.passed(), "later fragment first");
    assert_reasons(&dp, &[(Reason::UplinkPassFragmentUnknown, 1)]);
    assert!(flows(&dp).is_empty(), "no flow");

    for (i, frame) in frames.iter().enumerate() {
        let ran = hook.run(&mut dp, frame);
        assert_eq!(
            ran.verdict,
            hook.translated(),
            "fragment {i} after the first"
        );
        assert_eq!(packet::read_ip(&ran.frame).dst.ip(), n.c2, "fragment {i}");
    }
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkPassFragmentUnknown, 1),
            (Reason::UplinkTranslated, 3),
        ],
    );
}

#[test]
fn s14_xdp_v4_udp_later_fragment_passes_when_first_unseen() {
    uplink_fragment_first_unseen_case(Uplink::Xdp, &NET4);
}

#[test]
fn s14_xdp_v6_udp_later_fragment_passes_when_first_unseen() {
    uplink_fragment_first_unseen_case(Uplink::Xdp, &NET6);
}

#[test]
fn s14_tc_uplink_v4_udp_later_fragment_passes_when_first_unseen() {
    uplink_fragment_first_unseen_case(Uplink::Tc, &NET4);
}

#[test]
fn s14_tc_uplink_v6_udp_later_fragment_passes_when_first_unseen() {
    uplink_fragment_first_unseen_case(Uplink::Tc, &NET6);
}

/// A container's fragmented reply: every fragment gets the host address the client used
/// (host_2) as source, TTL - 1, redirected; reassembled, the datagram is from host_2:5353 with
/// its checksum right.
fn reply_fragments_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    xdp(
        &mut dp,
        &Pkt::udp(n.client, at(n.host_2, 5353), b"q").frame(),
    );
    let answer = Pkt::big_udp(at(n.c2, 53), n.client);
    let mut out = Vec::new();
    for (i, frame) in answer.fragments().iter().enumerate() {
        let what = format!("fragment {i}");
        let ran = tc_reply(&mut dp, frame);
        assert_eq!(ran.verdict, TC_ACT_REDIRECT, "{what}: verdict");
        let (before, seen) = (packet::read_ip(frame), packet::read_ip(&ran.frame));
        assert_eq!(seen.src.ip(), n.host_2, "{what}: source");
        assert_eq!(seen.dst.ip(), n.client.ip(), "{what}: destination");
        assert_eq!(seen.ttl, before.ttl - 1, "{what}: TTL");
        assert!(seen.ip_check_ok, "{what}: IPv4 header checksum");
        assert_eq!(seen.frag, before.frag, "{what}: fragment fields");
        assert_eq!(seen.payload, before.payload, "{what}: data");
        out.push(ran.frame);
    }
    let want = answer
        .reassembled()
        .with_src(at(n.host_2, 5353))
        .with_ttl(63);
    assert_rewritten(&packet::reassemble(&out), &want, "reassembled");
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 1), (Reason::ReplyTranslated, 3)],
    );
    assert_eq!(dp.binding_stats(0).unwrap().to_client_packets, 3);
}

#[test]
fn s14_tc_reply_v4_udp_fragments_restored_to_host_addr() {
    reply_fragments_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_udp_fragments_restored_to_host_addr() {
    reply_fragments_case(&NET6);
}

/// A later fragment of a container's datagram whose first was not seen passes untouched.
fn reply_fragment_first_unseen_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    xdp(&mut dp, &Pkt::udp(n.client, at(n.host, 5353), b"q").frame());
    let frames = Pkt::big_udp(at(n.c2, 53), n.client).fragments();
    let ran = tc_reply(&mut dp, &frames[2]);
    assert_untouched(&ran, &frames[2], TC_ACT_OK, "later fragment first");
    assert_reasons(
        &dp,
        &[
            (Reason::UplinkTranslated, 1),
            (Reason::ReplyPassFragmentUnknown, 1),
        ],
    );
}

#[test]
fn s14_tc_reply_v4_udp_later_fragment_passes_when_first_unseen() {
    reply_fragment_first_unseen_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_udp_later_fragment_passes_when_first_unseen() {
    reply_fragment_first_unseen_case(&NET6);
}

/// A hairpinned datagram in fragments (a container to c1's published UDP port on the bridge's
/// address): every fragment should reach c1 from the bridge's address, as its first does.
fn hairpin_fragments_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c1)]);
    let dgram = Pkt::big_udp(at(n.c2, 45000), at(n.bridge, 5353));
    let mut out = Vec::new();
    for (i, frame) in dgram.fragments().iter().enumerate() {
        let ran = tc_reply(&mut dp, frame);
        let seen = packet::read_ip(&ran.frame);
        assert_eq!(
            (ran.verdict, seen.src.ip(), seen.dst.ip()),
            (TC_ACT_REDIRECT, n.bridge, n.c1),
            "fragment {i}: verdict, source, destination"
        );
        out.push(ran.frame);
    }
    let want = dgram
        .reassembled()
        .with_src(at(n.bridge, 45000))
        .with_dst(at(n.c1, 53))
        .with_ttl(63);
    assert_rewritten(&packet::reassemble(&out), &want, "reassembled");
}

#[test]
fn s14_tc_reply_v4_udp_hairpin_fragments_all_reach_target() {
    hairpin_fragments_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_udp_hairpin_fragments_all_reach_target() {
    hairpin_fragments_case(&NET6);
}

/// The target's fragmented reply to a caller hairpinned through the host's address: every
/// fragment should go back to the caller from the published address, as its first does.
fn hairpin_reply_fragments_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c1)]);
    let (caller, published) = (at(n.c2, 45000), at(n.host, 5353));
    let query = Pkt::udp(caller, published, b"q").frame();
    assert_eq!(
        tc_reply(&mut dp, &query).verdict,
        TC_ACT_REDIRECT,
        "precondition: hairpinned"
    );
    let answer = Pkt::big_udp(at(n.c1, 53), at(n.bridge, 45000));
    let mut out = Vec::new();
    for (i, frame) in answer.fragments().iter().enumerate() {
        let ran = tc_reply(&mut dp, frame);
        let seen = packet::read_ip(&ran.frame);
        assert_eq!(
            (ran.verdict, seen.src.ip(), seen.dst.ip()),
            (TC_ACT_REDIRECT, published.ip(), caller.ip()),
            "fragment {i}: verdict, source, destination"
        );
        out.push(ran.frame);
    }
    let want = answer
        .reassembled()
        .with_src(published)
        .with_dst(caller)
        .with_ttl(63);
    assert_rewritten(&packet::reassemble(&out), &want, "reassembled");
}

#[test]
fn s14_tc_reply_v4_udp_hairpin_reply_fragments_all_reach_caller() {
    hairpin_reply_fragments_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_udp_hairpin_reply_fragments_all_reach_caller() {
    hairpin_reply_fragments_case(&NET6);
}

// --- S14: ICMP errors ---

/// An ICMP error of either family.
#[derive(Clone, Debug)]
enum IcmpErr {
    V4(Icmp4Error),
    V6(Icmp6Error),
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("{ip} is not IPv4"),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(ip) => ip,
        IpAddr::V4(ip) => panic!("{ip} is not IPv6"),
    }
}

impl IcmpErr {
    fn frame(&self) -> Vec<u8> {
        match self {
            Self::V4(e) => e.frame(),
            Self::V6(e) => e.frame(),
        }
    }

    fn ttl(&self) -> u8 {
        match self {
            Self::V4(e) => e.ttl,
            Self::V6(e) => e.hop_limit,
        }
    }

    /// The same error (type, code, MTU, how much it quotes) with other outer addresses and
    /// TTL, quoting `quoted`: what a translator must turn it into.
    fn rewritten(&self, src: IpAddr, dst: IpAddr, ttl: u8, quoted: Vec<u8>) -> Self {
        match self {
            Self::V4(e) => Self::V4(Icmp4Error {
                src: v4(src),
                dst: v4(dst),
                ttl,
                quoted,
                ..e.clone()
            }),
            Self::V6(e) => Self::V6(Icmp6Error {
                src: v6(src),
                dst: v6(dst),
                hop_limit: ttl,
                quoted,
                ..e.clone()
            }),
        }
    }

    /// Destination unreachable, port unreachable, quoting as Linux does (as much as fits).
    fn port_unreachable(src: IpAddr, dst: IpAddr, quoted: &[u8]) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Self::V4(Icmp4Error {
                quote: Quote::WithinPacket(packet::ICMP4_QUOTE_LIMIT),
                ..Icmp4Error::port_unreachable(s, d, quoted)
            }),
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Self::V6(Icmp6Error::dest_unreachable(s, d, 4, quoted))
            }
            _ => panic!("{src} and {dst} are of different families"),
        }
    }
}

/// Asserts a translated ICMP error field by field with every checksum verified (outer IPv4,
/// ICMP with ICMPv6's pseudo-header, quoted IPv4, quoted L4 as far as the quote reaches),
/// then byte for byte against `want`. `original` is the whole packet the error first quoted;
/// `quoted_src` and `quoted_dst` what its endpoints must have become.
fn assert_icmp_rewritten(
    frame: &[u8],
    input: &IcmpErr,
    want: &IcmpErr,
    original: &Pkt,
    quoted_src: SocketAddr,
    quoted_dst: SocketAddr,
) {
    let before = packet::read_icmp_error(&input.frame());
    let expected = packet::read_icmp_error(&want.frame());
    let seen = packet::read_icmp_error(frame);
    assert_eq!(
        (seen.src, seen.dst),
        (expected.src, expected.dst),
        "outer addresses"
    );
    assert_eq!(seen.ttl, expected.ttl, "outer TTL");
    assert_eq!(
        (seen.icmp_type, seen.code, seen.mtu),
        (before.icmp_type, before.code, before.mtu),
        "type, code, MTU"
    );
    assert!(seen.ip_check_ok, "outer IPv4 checksum");
    assert!(seen.icmp_check_ok, "ICMP checksum");
    let quoted = &seen.quoted;
    assert_eq!(
        (quoted.src, quoted.dst),
        (quoted_src, quoted_dst),
        "quoted endpoints"
    );
    assert!(quoted.ip_check_ok, "quoted IPv4 checksum");
    let want_l4 = before
        .quoted
        .l4_check
        .map(|_| packet::expected_inner_l4_check(&original.ip_packet(), quoted_src, quoted_dst));
    assert_eq!(quoted.l4_check, want_l4, "quoted L4 checksum");
    assert_eq!(
        quoted.l4_check_ok, before.quoted.l4_check_ok,
        "a whole quote stays verifiable"
    );
    assert_eq!(
        quoted.bytes.len(),
        before.quoted.bytes.len(),
        "quote length"
    );
    assert_frame(frame, &want.frame(), "ICMP error");
}

/// An ICMP error from the client side (`error`, to the host) about `reply`, a reply that left
/// from host:port, through `hook`: it goes to the container (`container`, what the binding
/// `spec` publishes), the quoted reply's source becoming the container.
fn icmp_from_client_case(
    hook: Uplink,
    spec: &str,
    error: &IcmpErr,
    reply: &Pkt,
    container: SocketAddr,
) {
    let mut dp = dataplane(&[spec]);
    // The flow the error is about: the client's packet that the quoted reply answered. An
    // error about no translated flow is left to the stack (see the next test).
    let proto = packet::read_ip(&reply.frame()).proto;
    let opening = Pkt::of(proto, reply.dst(), reply.src());
    hook.run(&mut dp, &opening.frame());
    let flows_before = flows(&dp).len();
    let ran = hook.run(&mut dp, &error.frame());
    assert_eq!(ran.verdict, hook.translated(), "verdict");
    hook.assert_note(&ran, "ICMP error");
    let router = packet::read_icmp_error(&error.frame()).src;
    let quoted = reply.with_src(container).ip_packet();
    let want = error.rewritten(router, container.ip(), hook.ttl_after(error.ttl()), quoted);
    assert_icmp_rewritten(&ran.frame, error, &want, reply, container, reply.dst());
    assert_reasons(&dp, &[(Reason::UplinkTranslated, 2)]);
    assert_eq!(flows(&dp).len(), flows_before, "an error records no flow");
}

/// A TCP reply that left the host from host:8080, with `len` bytes of data.
fn tcp_reply(n: &Net, len: usize) -> Pkt {
    Pkt::tcp_syn(at(n.host, 8080), n.client)
        .with_payload(payload(len))
        .with_ttl(63)
}

/// A UDP reply that left the host from host:5353.
fn udp_reply(n: &Net, len: usize) -> Pkt {
    Pkt::udp(at(n.host, 5353), n.client, &payload(len)).with_ttl(63)
}

/// "Fragmentation needed" from a router about a big TCP reply, quoting as Linux does (576
/// bytes): the quote is cut, but holds the TCP checksum, which must be updated.
fn icmp4_frag_needed_case(hook: Uplink) {
    let n = &NET4;
    let reply = tcp_reply(n, 1400);
    let error = IcmpErr::V4(Icmp4Error {
        quote: Quote::WithinPacket(packet::ICMP4_QUOTE_LIMIT),
        ..Icmp4Error::frag_needed(v4(n.router), v4(n.host), 1400, &reply.ip_packet())
    });
    let spec = format!("8080:80={}", n.c1);
    icmp_from_client_case(hook, &spec, &error, &reply, at(n.c1, 80));
}

#[test]
fn s14_xdp_v4_icmp_frag_needed_translated_to_container() {
    icmp4_frag_needed_case(Uplink::Xdp);
}

#[test]
fn s14_tc_uplink_v4_icmp_frag_needed_translated_to_container() {
    icmp4_frag_needed_case(Uplink::Tc);
}

/// "Time exceeded" from a router about a UDP reply, quoting the header and 8 bytes (RFC 792):
/// the UDP checksum is in the quote and must be updated for the whole datagram.
fn icmp4_time_exceeded_case(hook: Uplink) {
    let n = &NET4;
    let reply = udp_reply(n, 100);
    let error = IcmpErr::V4(Icmp4Error::time_exceeded(
        v4(n.router),
        v4(n.host),
        &reply.ip_packet(),
    ));
    let spec = format!("5353:53/udp={}", n.c2);
    icmp_from_client_case(hook, &spec, &error, &reply, at(n.c2, 53));
}

#[test]
fn s14_xdp_v4_icmp_time_exceeded_translated_to_container() {
    icmp4_time_exceeded_case(Uplink::Xdp);
}

#[test]
fn s14_tc_uplink_v4_icmp_time_exceeded_translated_to_container() {
    icmp4_time_exceeded_case(Uplink::Tc);
}

/// "Port unreachable" from the client itself about a UDP reply, quoting all of it.
fn icmp4_port_unreachable_case(hook: Uplink) {
    let n = &NET4;
    let reply = udp_reply(n, 40);
    let error = IcmpErr::port_unreachable(n.client.ip(), n.host, &reply.ip_packet());
    let spec = format!("5353:53/udp={}", n.c2);
    icmp_from_client_case(hook, &spec, &error, &reply, at(n.c2, 53));
}

#[test]
fn s14_xdp_v4_icmp_port_unreachable_translated_to_container() {
    icmp4_port_unreachable_case(Uplink::Xdp);
}

#[test]
fn s14_tc_uplink_v4_icmp_port_unreachable_translated_to_container() {
    icmp4_port_unreachable_case(Uplink::Tc);
}

/// ICMPv6 "packet too big" from a router about a big TCP reply, cut to fit 1280 bytes; the
/// ICMPv6 checksum covers the outer destination (pseudo-header), which changes.
fn icmp6_packet_too_big_case(hook: Uplink) {
    let n = &NET6;
    let reply = tcp_reply(n, 2000);
    let error = IcmpErr::V6(Icmp6Error::packet_too_big(
        v6(n.router),
        v6(n.host),
        1280,
        &reply.ip_packet(),
    ));
    let spec = format!("8080:80={}", n.c1);
    icmp_from_client_case(hook, &spec, &error, &reply, at(n.c1, 80));
}

#[test]
fn s14_xdp_v6_icmp_packet_too_big_translated_to_container() {
    icmp6_packet_too_big_case(Uplink::Xdp);
}

#[test]
fn s14_tc_uplink_v6_icmp_packet_too_big_translated_to_container() {
    icmp6_packet_too_big_case(Uplink::Tc);
}

/// ICMPv6 "time exceeded" from a router about a UDP reply, quoting all of it.
fn icmp6_time_exceeded_case(hook: Uplink) {
    let n = &NET6;
    let reply = udp_reply(n, 100);
    let error = IcmpErr::V6(Icmp6Error::time_exceeded(
        v6(n.router),
        v6(n.host),
        &reply.ip_packet(),
    ));
    let spec = format!("5353:53/udp={}", n.c2);
    icmp_from_client_case(hook, &spec, &error, &reply, at(n.c2, 53));
}

#[test]
fn s14_xdp_v6_icmp_time_exceeded_translated_to_container() {
    icmp6_time_exceeded_case(Uplink::Xdp);
}

#[test]
fn s14_tc_uplink_v6_icmp_time_exceeded_translated_to_container() {
    icmp6_time_exceeded_case(Uplink::Tc);
}

/// An error from the client side about a reply from a port nothing publishes passes untouched.
fn icmp_from_client_unbound_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let reply = Pkt::udp(at(n.host, 9999), n.client, b"not ours");
    let frame = IcmpErr::port_unreachable(n.client.ip(), n.host, &reply.ip_packet()).frame();
    assert_untouched(&xdp(&mut dp, &frame), &frame, XDP_PASS, "ICMP error");
    assert_reasons(&dp, &[(Reason::UplinkPassNoBinding, 1)]);
}

#[test]
fn s14_xdp_v4_icmp_passes_when_quoted_port_unbound() {
    icmp_from_client_unbound_case(&NET4);
}

#[test]
fn s14_xdp_v6_icmp_passes_when_quoted_port_unbound() {
    icmp_from_client_unbound_case(&NET6);
}

/// An error quoting a reply from a published port to a client that no flow knows (nothing was
/// translated to it, or the flow is gone) passes untouched, as conntrack leaves an error about
/// no connection alone.
fn icmp_from_client_no_flow_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let reply = Pkt::udp(at(n.host, 5353), n.client, b"never asked");
    let frame = IcmpErr::port_unreachable(n.client.ip(), n.host, &reply.ip_packet()).frame();
    assert_untouched(&xdp(&mut dp, &frame), &frame, XDP_PASS, "ICMP error");
    assert_reasons(&dp, &[(Reason::UplinkPassNoFlow, 1)]);
}

#[test]
fn s14_xdp_v4_icmp_passes_when_no_flow() {
    icmp_from_client_no_flow_case(&NET4);
}

#[test]
fn s14_xdp_v6_icmp_passes_when_no_flow() {
    icmp_from_client_no_flow_case(&NET6);
}

/// A container's "port unreachable" about a client's datagram as it was delivered (to the
/// container): it leaves from host_2 (the address the client used), quoting the datagram as
/// the client sent it (to host_2:5353), TTL - 1, redirected.
fn icmp_from_container_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let query = Pkt::udp(n.client, at(n.host_2, 5353), b"query payload");
    xdp(&mut dp, &query.frame());
    let delivered = query.with_dst(at(n.c2, 53)).with_ttl(63);
    let error = IcmpErr::port_unreachable(n.c2, n.client.ip(), &delivered.ip_packet());
    let ran = tc_reply(&mut dp, &error.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "verdict");
    let host = at(n.host_2, 5353);
    let quoted = delivered.with_dst(host).ip_packet();
    let want = error.rewritten(n.host_2, n.client.ip(), error.ttl() - 1, quoted);
    assert_icmp_rewritten(&ran.frame, &error, &want, &delivered, n.client, host);
    assert_reasons(
        &dp,
        &[(Reason::UplinkTranslated, 1), (Reason::ReplyTranslated, 1)],
    );
}

#[test]
fn s14_tc_reply_v4_icmp_port_unreachable_translated_to_host_addr() {
    icmp_from_container_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_icmp_port_unreachable_translated_to_host_addr() {
    icmp_from_container_case(&NET6);
}

/// A container's error about a datagram of no known flow passes untouched.
fn icmp_from_container_no_flow_case(n: &Net) {
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let delivered = Pkt::udp(n.client, at(n.c2, 53), b"query").with_ttl(63);
    let frame = IcmpErr::port_unreachable(n.c2, n.client.ip(), &delivered.ip_packet()).frame();
    assert_untouched(&tc_reply(&mut dp, &frame), &frame, TC_ACT_OK, "ICMP error");
    assert_reasons(&dp, &[(Reason::ReplyPassNoFlow, 1)]);
}

#[test]
fn s14_tc_reply_v4_icmp_passes_when_no_flow() {
    icmp_from_container_no_flow_case(&NET4);
}

#[test]
fn s14_tc_reply_v6_icmp_passes_when_no_flow() {
    icmp_from_container_no_flow_case(&NET6);
}

// --- S15: UDP checksum 0 ---

/// An IPv4 UDP datagram without a checksum (0, "none").
fn no_checksum(src: SocketAddr, dst: SocketAddr) -> Pkt {
    match Pkt::udp(src, dst, b"no checksum") {
        Pkt::V4(p) => Pkt::V4(V4 {
            udp_no_checksum: true,
            ..p
        }),
        Pkt::V6(_) => panic!("IPv6 UDP always has a checksum"),
    }
}

/// A client's datagram without a checksum through an uplink hook: still none.
fn v4_zero_checksum_uplink_case(hook: Uplink) {
    let n = &NET4;
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let dgram = no_checksum(n.client, at(n.host, 5353));
    let ran = hook.run(&mut dp, &dgram.frame());
    assert_eq!(ran.verdict, hook.translated(), "verdict");
    assert_eq!(
        packet::read_ip(&ran.frame).l4_check,
        Some(0),
        "zero stays zero"
    );
    let want = dgram.with_dst(at(n.c2, 53)).with_ttl(hook.ttl_after(64));
    assert_rewritten(&ran.frame, &want, "datagram");
}

#[test]
fn s15_xdp_v4_udp_zero_checksum_stays_zero() {
    v4_zero_checksum_uplink_case(Uplink::Xdp);
}

#[test]
fn s15_tc_uplink_v4_udp_zero_checksum_stays_zero() {
    v4_zero_checksum_uplink_case(Uplink::Tc);
}

#[test]
fn s15_tc_reply_v4_udp_zero_checksum_stays_zero() {
    let n = &NET4;
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    xdp(&mut dp, &Pkt::udp(n.client, at(n.host, 5353), b"q").frame());
    let answer = no_checksum(at(n.c2, 53), n.client);
    let ran = tc_reply(&mut dp, &answer.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "verdict");
    assert_eq!(
        packet::read_ip(&ran.frame).l4_check,
        Some(0),
        "zero stays zero"
    );
    let want = answer.with_src(at(n.host, 5353)).with_ttl(63);
    assert_rewritten(&ran.frame, &want, "reply");
}

// An ICMP error quoting a datagram without a checksum: the quoted checksum stays 0.
#[test]
fn s15_xdp_v4_icmp_quoted_udp_zero_checksum_stays_zero() {
    let n = &NET4;
    let reply = no_checksum(at(n.host, 5353), n.client).with_ttl(63);
    let error = IcmpErr::port_unreachable(n.client.ip(), n.host, &reply.ip_packet());
    let spec = format!("5353:53/udp={}", n.c2);
    icmp_from_client_case(Uplink::Xdp, &spec, &error, &reply, at(n.c2, 53));
}

/// `packet` (IPv6 UDP) with a 2-byte payload chosen so that its checksum, once its endpoints
/// are `src` and `dst`, computes to zero: a translator must write 0xffff, since 0 is not
/// allowed over IPv6 (RFC 8200 8.1).
fn v6_udp_whose_checksum_becomes_zero(packet: &Pkt, src: SocketAddr, dst: SocketAddr) -> Pkt {
    let translated = packet.with_src(src).with_dst(dst).with_payload(vec![0, 0]);
    let check = packet::read_ip(&translated.frame()).l4_check.unwrap();
    // The checksum is the complement of the sum; adding the checksum itself as a data word
    // makes the sum 0xffff, whose complement is 0.
    let chosen = packet.with_payload(check.to_be_bytes().to_vec());
    let after = packet::read_ip(&chosen.with_src(src).with_dst(dst).frame());
    assert_eq!(
        after.l4_check,
        Some(0xffff),
        "precondition: computes to zero"
    );
    chosen
}

/// A client's IPv6 datagram whose translated checksum computes to zero: 0xffff goes out.
fn v6_checksum_zero_uplink_case(hook: Uplink) {
    let n = &NET6;
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    let to = at(n.c2, 53);
    let dgram = v6_udp_whose_checksum_becomes_zero(
        &Pkt::udp(n.client, at(n.host, 5353), b""),
        n.client,
        to,
    );
    let ran = hook.run(&mut dp, &dgram.frame());
    assert_eq!(ran.verdict, hook.translated(), "verdict");
    assert_eq!(
        packet::read_ip(&ran.frame).l4_check,
        Some(0xffff),
        "never 0"
    );
    let want = dgram.with_dst(to).with_ttl(hook.ttl_after(64));
    assert_rewritten(&ran.frame, &want, "datagram");
}

#[test]
fn s15_xdp_v6_udp_checksum_computing_to_zero_written_ffff() {
    v6_checksum_zero_uplink_case(Uplink::Xdp);
}

#[test]
fn s15_tc_uplink_v6_udp_checksum_computing_to_zero_written_ffff() {
    v6_checksum_zero_uplink_case(Uplink::Tc);
}

#[test]
fn s15_tc_reply_v6_udp_checksum_computing_to_zero_written_ffff() {
    let n = &NET6;
    let mut dp = dataplane(&[format!("5353:53/udp={}", n.c2)]);
    xdp(&mut dp, &Pkt::udp(n.client, at(n.host, 5353), b"q").frame());
    let host = at(n.host, 5353);
    let answer =
        v6_udp_whose_checksum_becomes_zero(&Pkt::udp(at(n.c2, 53), n.client, b""), host, n.client);
    let ran = tc_reply(&mut dp, &answer.frame());
    assert_eq!(ran.verdict, TC_ACT_REDIRECT, "verdict");
    assert_eq!(
        packet::read_ip(&ran.frame).l4_check,
        Some(0xffff),
        "never 0"
    );
    assert_rewritten(&ran.frame, &answer.with_src(host).with_ttl(63), "reply");
}
