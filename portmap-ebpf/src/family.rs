//! What differs between IPv4 and IPv6, behind one trait, so that parsing, lookups, rewriting
//! and recording are written once. `N` is the address length (4 or 16), which the map layouts
//! in `portmap-common` take too.

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use portmap_common::{
    BindingKey, BindingTarget, BridgeAddrs, FlowKey, FlowState, FragKey, FragTarget, Recent, proto,
};

use crate::{
    maps::{
        BINDINGS_V4, BINDINGS_V6, FRAGS_V4, FRAGS_V6, LOCAL_ADDRS_V4, LOCAL_ADDRS_V6, RECENT_V4,
        RECENT_V6, TCP_FLOWS_V4, TCP_FLOWS_V6, UDP_FLOWS_V4, UDP_FLOWS_V6,
    },
    parse::{Addr, Ipv4Hdr, Ipv6Hdr, WireAddr},
};

pub trait Family<const N: usize> {
    /// Whether the IP header has a checksum of its own (IPv4) to fold changes into.
    const L3_CHECKSUM: bool;
    /// The ICMP protocol of the family.
    const ICMP: u8;

    fn bindings() -> &'static HashMap<BindingKey<N>, BindingTarget<N>>;
    /// The host's own addresses, which wildcard bindings match.
    fn local_addrs() -> &'static HashMap<portmap_common::Addr<N>, u8>;
    /// The TCP connections' flow table.
    fn tcp_flows() -> &'static LruHashMap<FlowKey<N>, FlowState<N>>;
    /// The UDP flows' table.
    fn udp_flows() -> &'static LruHashMap<FlowKey<N>, FlowState<N>>;
    fn frags() -> &'static LruHashMap<FragKey<N>, FragTarget<N>>;
    fn recent() -> &'static PerCpuArray<Recent<N>>;

    /// The source address field of the IP header at `l3`.
    ///
    /// # Safety
    ///
    /// `l3` points at a whole header of the family inside the packet.
    unsafe fn src(l3: *mut u8) -> *mut WireAddr<N>;
    /// The destination address field; as [`Family::src`].
    unsafe fn dst(l3: *mut u8) -> *mut WireAddr<N>;
    /// The 16-bit word holding the TTL (IPv4, with the protocol) or hop limit (IPv6, with the
    /// next header), which a router decrements: the TTL is its first byte either way.
    unsafe fn ttl_word(l3: *mut u8) -> *mut u16;
    /// IPv4's header checksum (never called for IPv6).
    unsafe fn l3_check(l3: *mut u8) -> *mut u16;

    /// The length of the fixed IP header.
    const HDR_LEN: usize;
    /// Whether an ICMP(v6) type is an error that quotes the packet it is about (destination
    /// unreachable, fragmentation needed / packet too big, time exceeded, parameter problem).
    fn is_icmp_error(kind: u8) -> bool;
    /// Whether the IP header at `l3` is one the programs read past: IPv4 without options, or
    /// IPv6 (whose extension headers the callers see as an unknown protocol).
    unsafe fn plain(l3: *mut u8) -> bool;
    /// The transport protocol of the IP header at `l3`.
    unsafe fn proto(l3: *mut u8) -> u8;

    /// The bridge's own address of the family, if it has one.
    fn bridge_addr(bridge: &BridgeAddrs) -> Option<Addr<N>>;

    /// 127.0.0.0/8 or ::1: addresses that never arrive from a wire.
    fn is_loopback(addr: &Addr<N>) -> bool;
    /// `bpf_redirect_neigh`'s next hop for an on-link address.
    fn nexthop(addr: Addr<N>) -> bpf_redir_neigh;
}

pub struct V4;
pub struct V6;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

impl Family<4> for V4 {
    const L3_CHECKSUM: bool = true;
    const ICMP: u8 = proto::ICMP;
    const HDR_LEN: usize = core::mem::size_of::<Ipv4Hdr>();

    fn is_icmp_error(kind: u8) -> bool {
        // Destination unreachable (fragmentation needed is one of its codes), time exceeded,
        // parameter problem.
        matches!(kind, 3 | 11 | 12)
    }
    unsafe fn plain(l3: *mut u8) -> bool {
        // SAFETY: the caller's contract.
        unsafe { (*l3.cast::<Ipv4Hdr>()).vihl == 0x45 }
    }
    unsafe fn proto(l3: *mut u8) -> u8 {
        // SAFETY: the caller's contract.
        unsafe { (*l3.cast::<Ipv4Hdr>()).proto }
    }

    fn bindings() -> &'static HashMap<BindingKey<4>, BindingTarget<4>> {
        &BINDINGS_V4
    }
    fn local_addrs() -> &'static HashMap<portmap_common::Addr<4>, u8> {
        &LOCAL_ADDRS_V4
    }
    fn tcp_flows() -> &'static LruHashMap<FlowKey<4>, FlowState<4>> {
        &TCP_FLOWS_V4
    }
    fn udp_flows() -> &'static LruHashMap<FlowKey<4>, FlowState<4>> {
        &UDP_FLOWS_V4
    }
    fn frags() -> &'static LruHashMap<FragKey<4>, FragTarget<4>> {
        &FRAGS_V4
    }
    fn recent() -> &'static PerCpuArray<Recent<4>> {
        &RECENT_V4
    }
    unsafe fn src(l3: *mut u8) -> *mut WireAddr<4> {
        // SAFETY: the caller's contract.
        unsafe { &raw mut (*l3.cast::<Ipv4Hdr>()).src }
    }
    unsafe fn dst(l3: *mut u8) -> *mut WireAddr<4> {
        // SAFETY: the caller's contract.
        unsafe { &raw mut (*l3.cast::<Ipv4Hdr>()).dst }
    }
    unsafe fn ttl_word(l3: *mut u8) -> *mut u16 {
        // SAFETY: the caller's contract; TTL and protocol are bytes 8 and 9.
        unsafe { (&raw mut (*l3.cast::<Ipv4Hdr>()).ttl).cast() }
    }
    unsafe fn l3_check(l3: *mut u8) -> *mut u16 {
        // SAFETY: the caller's contract.
        unsafe { &raw mut (*l3.cast::<Ipv4Hdr>()).check }
    }
    fn bridge_addr(bridge: &BridgeAddrs) -> Option<Addr<4>> {
        (bridge.has_v4 != 0).then_some(bridge.v4)
    }
    fn is_loopback(addr: &Addr<4>) -> bool {
        // The first byte, whichever end of the native word holds it.
        u32::from_be(addr.word(0)) >> 24 == 127
    }
    fn nexthop(addr: Addr<4>) -> bpf_redir_neigh {
        bpf_redir_neigh {
            nh_family: AF_INET,
            // `ipv4_nh` is the union's first word. Every byte is written: left undefined, LLVM
            // may fill the rest with whatever a register held, a pointer even, and the verifier
            // refuses a pointer stored in pieces.
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv6_nh: [addr.word(0), 0, 0, 0],
            },
        }
    }
}

impl Family<16> for V6 {
    const L3_CHECKSUM: bool = false;
    const ICMP: u8 = proto::ICMPV6;
    const HDR_LEN: usize = core::mem::size_of::<Ipv6Hdr>();

    fn is_icmp_error(kind: u8) -> bool {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(kind, 1..=4)
    }
    unsafe fn plain(l3: *mut u8) -> bool {
        // SAFETY: the caller's contract; the version is the top nibble of the first byte.
        unsafe { *l3 >> 4 == 6 }
    }
    unsafe fn proto(l3: *mut u8) -> u8 {
        // SAFETY: the caller's contract.
        unsafe { (*l3.cast::<Ipv6Hdr>()).next_hdr }
    }

    fn bindings() -> &'static HashMap<BindingKey<16>, BindingTarget<16>> {
        &BINDINGS_V6
    }
    fn local_addrs() -> &'static HashMap<portmap_common::Addr<16>, u8> {
        &LOCAL_ADDRS_V6
    }
    fn tcp_flows() -> &'static LruHashMap<FlowKey<16>, FlowState<16>> {
        &TCP_FLOWS_V6
    }
    fn udp_flows() -> &'static LruHashMap<FlowKey<16>, FlowState<16>> {
        &UDP_FLOWS_V6
    }
    fn frags() -> &'static LruHashMap<FragKey<16>, FragTarget<16>> {
        &FRAGS_V6
    }
    fn recent() -> &'static PerCpuArray<Recent<16>> {
        &RECENT_V6
    }
    unsafe fn src(l3: *mut u8) -> *mut WireAddr<16> {
        // SAFETY: the caller's contract.
        unsafe { &raw mut (*l3.cast::<Ipv6Hdr>()).src }
    }
    unsafe fn dst(l3: *mut u8) -> *mut WireAddr<16> {
        // SAFETY: the caller's contract.
        unsafe { &raw mut (*l3.cast::<Ipv6Hdr>()).dst }
    }
    unsafe fn ttl_word(l3: *mut u8) -> *mut u16 {
        // SAFETY: the caller's contract. The hop limit is byte 7; this word is bytes 7 and 8,
        // of which no checksum covers either, so only the first byte is ever changed.
        unsafe { (&raw mut (*l3.cast::<Ipv6Hdr>()).hop_limit).cast() }
    }
    unsafe fn l3_check(_l3: *mut u8) -> *mut u16 {
        core::ptr::null_mut()
    }
    fn bridge_addr(bridge: &BridgeAddrs) -> Option<Addr<16>> {
        (bridge.has_v6 != 0).then_some(bridge.v6)
    }
    fn is_loopback(addr: &Addr<16>) -> bool {
        let w = |i| addr.word(i);
        w(0) | w(1) | w(2) == 0 && u32::from_be(w(3)) == 1
    }
    fn nexthop(addr: Addr<16>) -> bpf_redir_neigh {
        // The kernel takes the address as it is on the wire.
        let w = |i| addr.word(i);
        bpf_redir_neigh {
            nh_family: AF_INET6,
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv6_nh: [w(0), w(1), w(2), w(3)],
            },
        }
    }
}
