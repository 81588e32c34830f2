//! Map names, sizes, and the layout of every key and value.
//!
//! The eBPF side declares each map as a static whose identifier is the name below; the loader
//! finds maps by these names, and the test that loads the real object checks that every name
//! here exists in it, so a rename on one side fails a test instead of a deployment.

use core::mem::size_of;

use crate::Addr;

/// Names of the maps in the eBPF object.
pub mod names {
    /// `HashMap<BindingKeyV4, BindingV4>`: published ports on IPv4 addresses.
    pub const BINDINGS_V4: &str = "BINDINGS_V4";
    /// `HashMap<BindingKeyV6, BindingV6>`: published ports on IPv6 addresses.
    pub const BINDINGS_V6: &str = "BINDINGS_V6";
    /// `HashMap<Addr<4>, u8>`: the host's own IPv4 addresses, the only ones a wildcard binding
    /// matches.
    pub const LOCAL_ADDRS_V4: &str = "LOCAL_ADDRS_V4";
    /// `HashMap<Addr<16>, u8>`: the same for IPv6.
    pub const LOCAL_ADDRS_V6: &str = "LOCAL_ADDRS_V6";
    /// `LruHashMap<FlowKeyV4, FlowV4>`: translated TCP flows, keyed as the container's replies
    /// look.
    pub const TCP_FLOWS_V4: &str = "TCP_FLOWS_V4";
    /// `LruHashMap<FlowKeyV6, FlowV6>`: the same for IPv6.
    pub const TCP_FLOWS_V6: &str = "TCP_FLOWS_V6";
    /// `LruHashMap<FlowKeyV4, FlowV4>`: translated UDP flows, apart from TCP's so that a flood
    /// of new datagrams cannot evict the connections.
    pub const UDP_FLOWS_V4: &str = "UDP_FLOWS_V4";
    /// `LruHashMap<FlowKeyV6, FlowV6>`: the same for IPv6.
    pub const UDP_FLOWS_V6: &str = "UDP_FLOWS_V6";
    /// The IPv4 flow tables.
    pub const FLOWS_V4: [&str; 2] = [TCP_FLOWS_V4, UDP_FLOWS_V4];
    /// The IPv6 flow tables.
    pub const FLOWS_V6: [&str; 2] = [TCP_FLOWS_V6, UDP_FLOWS_V6];

    /// The table that holds the flows of `proto` (TCP or UDP) with `N`-byte addresses.
    #[must_use]
    pub const fn flows<const N: usize>(proto: u8) -> &'static str {
        match (N, proto) {
            (4, crate::proto::TCP) => TCP_FLOWS_V4,
            (4, _) => UDP_FLOWS_V4,
            (_, crate::proto::TCP) => TCP_FLOWS_V6,
            _ => UDP_FLOWS_V6,
        }
    }
    /// `LruHashMap<FragKeyV4, FragV4>`: how the first fragment of a datagram was translated,
    /// for the fragments after it, which carry no ports.
    pub const FRAGS_V4: &str = "FRAGS_V4";
    /// `LruHashMap<FragKeyV6, FragV6>`: the same for IPv6.
    pub const FRAGS_V6: &str = "FRAGS_V6";
    /// `PerCpuArray<BindingStats>`: per-binding counters, indexed by binding id.
    pub const BINDING_STATS: &str = "BINDING_STATS";
    /// `PerCpuArray<u64>`: why packets went the way they did, indexed by [`crate::Reason`].
    pub const REASON_STATS: &str = "REASON_STATS";
    /// `Array<u32>`: each binding id's current generation. A flow recorded under an older one
    /// belongs to a binding since removed or re-pointed, and is ignored.
    pub const BINDING_GEN: &str = "BINDING_GEN";
    /// `HashMap<u32, BridgeAddrs>`: each served bridge's own addresses, by ifindex: the source
    /// a hairpin connection gets.
    pub const BRIDGES: &str = "BRIDGES";

    /// `LruHashMap<SockKeyV4, SockOrigV4>`: for each host socket whose connect or send was
    /// translated, the published address it used, by the container it went to; what
    /// `recvmsg` and `getpeername` show the process instead.
    pub const SOCK_REVNAT_V4: &str = "SOCK_REVNAT_V4";
    /// `LruHashMap<SockKeyV6, SockOrigV6>`: the same for IPv6.
    pub const SOCK_REVNAT_V6: &str = "SOCK_REVNAT_V6";

    /// `PerCpuArray<RecentV4>`: the uplink's recent translations, direct-mapped by a hash of
    /// the packet's addresses and ports, so that a flow's packets after its first skip both
    /// hash lookups.
    pub const RECENT_V4: &str = "RECENT_V4";
    /// `PerCpuArray<RecentV6>`: the same for IPv6.
    pub const RECENT_V6: &str = "RECENT_V6";

    /// Every map the loader expects to find.
    pub const ALL: [&str; 18] = [
        RECENT_V4,
        RECENT_V6,
        SOCK_REVNAT_V4,
        SOCK_REVNAT_V6,
        BRIDGES,
        BINDINGS_V4,
        BINDINGS_V6,
        LOCAL_ADDRS_V4,
        LOCAL_ADDRS_V6,
        TCP_FLOWS_V4,
        TCP_FLOWS_V6,
        UDP_FLOWS_V4,
        UDP_FLOWS_V6,
        FRAGS_V4,
        FRAGS_V6,
        BINDING_STATS,
        REASON_STATS,
        BINDING_GEN,
    ];
}

/// Names of the programs in the eBPF object (the Rust function names).
pub mod programs {
    /// XDP on the uplink: client → host_ip:host_port becomes client → container_ip:port.
    pub const XDP_UPLINK: &str = "xdp_uplink";
    /// TC ingress on the uplink: hands what `xdp_uplink` translated straight to the bridge.
    pub const TC_FORWARD: &str = "tc_forward";
    /// TC ingress on the uplink, instead of the two above: translates and forwards itself.
    pub const TC_UPLINK: &str = "tc_uplink";
    /// TC ingress on the bridge: container replies get host_ip:host_port back as source.
    pub const TC_REPLY: &str = "tc_reply";
    /// TC ingress on each port of such a bridge (a container's veth, host side): the replies
    /// of flows from the uplink, translated before the bridge takes them.
    pub const TC_PORT: &str = "tc_port";

    /// Cgroup socket hooks: a host process's connect or send to a published port goes to the
    /// container instead, and what it reads back shows the published address.
    pub const CONNECT4: &str = "sock_connect4";
    pub const CONNECT6: &str = "sock_connect6";
    pub const SENDMSG4: &str = "sock_sendmsg4";
    pub const SENDMSG6: &str = "sock_sendmsg6";
    pub const RECVMSG4: &str = "sock_recvmsg4";
    pub const RECVMSG6: &str = "sock_recvmsg6";
    pub const GETPEERNAME4: &str = "sock_getpeername4";
    pub const GETPEERNAME6: &str = "sock_getpeername6";

    /// Never attached: the loader runs it to read the kernel's jiffies, which flows are
    /// stamped with.
    pub const CLOCK: &str = "clock";

    /// The packet programs.
    pub const PACKET: [&str; 5] = [XDP_UPLINK, TC_FORWARD, TC_UPLINK, TC_REPLY, TC_PORT];
    /// The socket programs.
    pub const SOCKET: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
    /// Every program.
    pub const ALL: [&str; 14] = [
        CLOCK,
        XDP_UPLINK,
        TC_FORWARD,
        TC_UPLINK,
        TC_REPLY,
        TC_PORT,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}

/// Published ports the kernel can count, each with its own per-CPU counter slot, and each one
/// key in its family's binding map. Docker hosts with tens of thousands of published ports exist.
pub const MAX_BINDINGS: u32 = 65_536;

/// Addresses of the host a wildcard binding matches, per family: hosts that serve many
/// addresses have hundreds.
pub const MAX_LOCAL_ADDRS: u32 = 4_096;

/// TCP connections remembered for the reverse path, per family. An LRU as large as Cilium's
/// and Katran's default connection tables, split evenly between the CPUs as Katran's is: a
/// connection is kept in the list of the CPU that saw its first packet, and a full list evicts
/// that CPU's least recently used connection, never fails. The NIC's receive queues spread
/// connections over the CPUs; an uplink with one queue and no RPS fills one CPU's share only.
pub const MAX_TCP_FLOWS: u32 = 262_144;

/// UDP flows remembered for the reverse path, per family: half of TCP's, as Cilium sizes its
/// non-TCP table. One LRU list for all CPUs, which takes free entries in batches: on one CPU
/// that carries 8-10% more new flows a second than a list per CPU does.
pub const MAX_UDP_FLOWS: u32 = 131_072;

/// Datagrams in flight in pieces, per family: a first fragment is remembered until its later
/// fragments have passed, or the LRU needs the room.
pub const MAX_FRAGS: u32 = 8_192;

/// Bridges the loader can describe to the programs.
pub const MAX_BRIDGES: u32 = 256;

/// Slots of each CPU's recent-translation cache, per family (a power of two).
pub const RECENT_SLOTS: u32 = 1_024;

/// Host sockets whose translated destination is remembered, per family; an LRU, so a host with
/// more live translated sockets than this forgets the oldest (their `getpeername` then shows
/// the container).
pub const MAX_SOCKS: u32 = 65_536;

/// A bridge's own addresses: the value of [`names::BRIDGES`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BridgeAddrs {
    /// Network byte order; meaningful when `has_v4` is 1.
    pub v4: Addr<4>,
    /// Network byte order; meaningful when `has_v6` is 1.
    pub v6: Addr<16>,
    pub has_v4: u8,
    pub has_v6: u8,
    pub _pad: [u8; 2],
}

/// The address lengths of the two families.
pub const V4: usize = 4;
pub const V6: usize = 16;

/// Where a client sends: the key of a binding map. `N` is the address length.
///
/// A wildcard binding (`0.0.0.0`/`::`, Docker's empty `HostIp`) has the all-zero address: it
/// serves a destination no specific key holds, if that destination is one of the host's own
/// addresses ([`names::LOCAL_ADDRS_V4`]), as Docker's `--dst-type LOCAL` does. So publishing a
/// binding writes one key, and an address coming or going writes one.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindingKey<const N: usize> {
    /// Host address, network byte order.
    pub addr: Addr<N>,
    /// Host port, network byte order.
    pub port: [u8; 2],
    /// [`crate::proto::TCP`] or [`crate::proto::UDP`].
    pub proto: u8,
    pub _pad: u8,
}

/// Where a binding sends: the value of a binding map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingTarget<const N: usize> {
    /// Container address, network byte order.
    pub addr: Addr<N>,
    /// Container port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// Index into [`names::BINDING_STATS`] and [`names::BINDING_GEN`] (host order); the loader
    /// hands ids out and zeroes the counters.
    pub id: u32,
    /// The bridge the container hangs off (host order); translated packets are sent there.
    pub egress_ifindex: u32,
    /// The id's generation when this binding was published (host order).
    pub generation: u32,
}

/// A translated flow as the container's reply shows it: the key of a flow map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey<const N: usize> {
    /// Reply source: the container, network byte order.
    pub container_addr: Addr<N>,
    /// Reply destination, network byte order: the client, or for a hairpin flow the bridge's
    /// own address the caller's source was translated to.
    pub client_addr: Addr<N>,
    /// Network byte order.
    pub container_port: [u8; 2],
    /// Network byte order.
    pub client_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// What a reply's source must become, and what to charge it to: the value of a flow map.
///
/// Keeping the exact host address and port the client used (rather than reversing the binding)
/// is what lets one container behind two host ports (`8080:80`, `9090:80`) answer each flow
/// through the port it came in on.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState<const N: usize> {
    /// The address the client sent to, network byte order (never the wildcard).
    pub host_addr: Addr<N>,
    /// The port the client sent to, network byte order.
    pub host_port: [u8; 2],
    /// [`FLOW_CLOSING`], [`FLOW_HAIRPIN`].
    pub flags: u8,
    pub _pad: u8,
    /// The binding the flow came in through (host order); its counters take the replies.
    pub binding_id: u32,
    /// Where the client's packets arrived (host order); replies leave the same way.
    pub ingress_ifindex: u32,
    /// The binding's generation when the flow was recorded (host order): once the binding is
    /// removed or re-pointed, [`names::BINDING_GEN`] moves on and the flow is dead at once,
    /// however many flows there are.
    pub generation: u32,
    /// When a packet of the flow last passed, in jiffies (the low 32 bits; host order). Updated
    /// at most once a jiffy, so an established flow does not write its entry on every packet.
    pub seen: u32,
    /// For a hairpin flow, the calling container's own address and port (network byte order),
    /// which replies are sent back to; zero otherwise.
    pub client_addr: Addr<N>,
    pub client_port: [u8; 2],
    pub _pad2: [u8; 2],
}

/// [`FlowState::flags`]: a FIN or RST passed; the flow is reclaimed once idle for the TCP close
/// timeout rather than the established one.
pub const FLOW_CLOSING: u8 = 1;
/// [`FlowState::flags`]: a container reached a published port of its own host; replies are
/// sent back to [`FlowState::client_addr`].
pub const FLOW_HAIRPIN: u8 = 2;

/// A datagram's fragments, as they arrive before translation: the key of a fragment map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey<const N: usize> {
    pub src: Addr<N>,
    pub dst: Addr<N>,
    /// The IP identification (IPv4's 16 bits, zero-extended, or IPv6's 32), as on the wire.
    pub id: [u8; 4],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// How a datagram's first fragment was translated: what its later fragments get.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragTarget<const N: usize> {
    /// What the fragments' source becomes when [`FragTarget::rewrite`] has [`FRAG_SRC`],
    /// network byte order.
    pub src: Addr<N>,
    /// What their destination becomes when it has [`FRAG_DST`].
    pub dst: Addr<N>,
    /// [`FRAG_SRC`], [`FRAG_DST`], or both (a hairpin).
    pub rewrite: u8,
    /// Which way the datagram goes: [`FRAG_PATH_UPLINK`], [`FRAG_PATH_REPLY`] or
    /// [`FRAG_PATH_HAIRPIN`]; each program follows only its own.
    pub path: u8,
    pub _pad: [u8; 2],
    /// Where the fragments are sent on (host order).
    pub ifindex: u32,
    /// The binding charged (host order).
    pub binding_id: u32,
}

/// [`FragTarget::rewrite`]: the destination changes (to the container).
pub const FRAG_DST: u8 = 1;
/// [`FragTarget::rewrite`]: the source changes (to the host address).
pub const FRAG_SRC: u8 = 2;

/// [`FragTarget::path`]: a client's datagram on the uplink.
pub const FRAG_PATH_UPLINK: u8 = 0;
/// [`FragTarget::path`]: a container's reply, or a hairpinned target's reply to its caller.
pub const FRAG_PATH_REPLY: u8 = 1;
/// [`FragTarget::path`]: a container's datagram hairpinned to a published port.
pub const FRAG_PATH_HAIRPIN: u8 = 2;

/// A host socket and the container a connect or send of it was sent to: the key of a socket
/// reverse map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey<const N: usize> {
    /// The socket's cookie (`bpf_get_socket_cookie`), its native bytes.
    pub cookie: [u8; 8],
    /// The container, network byte order.
    pub addr: Addr<N>,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// What the process asked for: the value of a socket reverse map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOrig<const N: usize> {
    /// The published address the process used, network byte order.
    pub addr: Addr<N>,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// A translation the uplink made recently, in one slot of a CPU's cache: the packet as it
/// arrived (client, host) and what it became (container), with the binding's generation and
/// when the flow table last confirmed the flow. The value of [`names::RECENT_V4`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recent<const N: usize> {
    pub client: Addr<N>,
    pub host: Addr<N>,
    pub container: Addr<N>,
    pub client_port: [u8; 2],
    pub host_port: [u8; 2],
    pub container_port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
    pub binding_id: u32,
    pub generation: u32,
    pub egress_ifindex: u32,
    /// When the slow path last found the flow recorded, in jiffies (low 32 bits).
    pub confirmed: u32,
}

pub type RecentV4 = Recent<V4>;
pub type RecentV6 = Recent<V6>;

pub type SockKeyV4 = SockKey<V4>;
pub type SockKeyV6 = SockKey<V6>;
pub type SockOrigV4 = SockOrig<V4>;
pub type SockOrigV6 = SockOrig<V6>;

pub type BindingKeyV4 = BindingKey<V4>;
pub type BindingKeyV6 = BindingKey<V6>;
pub type BindingV4 = BindingTarget<V4>;
pub type BindingV6 = BindingTarget<V6>;
pub type FlowKeyV4 = FlowKey<V4>;
pub type FlowKeyV6 = FlowKey<V6>;
pub type FlowV4 = FlowState<V4>;
pub type FlowV6 = FlowState<V6>;
pub type FragKeyV4 = FragKey<V4>;
pub type FragKeyV6 = FragKey<V6>;
pub type FragV4 = FragTarget<V4>;
pub type FragV6 = FragTarget<V6>;

/// Per-binding counters, one slot per CPU: the value of [`names::BINDING_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BindingStats {
    /// Client → container packets translated.
    pub to_container_packets: u64,
    /// Their bytes, Ethernet frame included.
    pub to_container_bytes: u64,
    /// Container → client replies translated.
    pub to_client_packets: u64,
    /// Their bytes, from the IP header on (TC sees no Ethernet header of ours).
    pub to_client_bytes: u64,
}

impl BindingStats {
    /// Adds another CPU's slot.
    pub fn add(&mut self, other: &Self) {
        let Self {
            to_container_packets,
            to_container_bytes,
            to_client_packets,
            to_client_bytes,
        } = other;
        self.to_container_packets += to_container_packets;
        self.to_container_bytes += to_container_bytes;
        self.to_client_packets += to_client_packets;
        self.to_client_bytes += to_client_bytes;
    }
}

/// What `xdp_uplink` leaves in front of a translated frame for `tc_forward`.
///
/// XDP cannot send to a bridge (no `ndo_xdp_xmit`), so the frame goes up as `XDP_PASS`; this
/// note lets the TC program on the same device hand it to the bridge without a second lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct XdpMeta {
    /// [`XDP_META_MAGIC`]; anything else is not ours.
    pub magic: u32,
    /// Host order.
    pub egress_ifindex: u32,
}

/// "pmap" — marks [`XdpMeta`] as written by `xdp_uplink`.
pub const XDP_META_MAGIC: u32 = 0x706d_6170;

// Keys and values are 4-byte aligned (`align(4)`) so that the BPF code loads and stores their
// addresses and ports as words; with byte-array fields alone LLVM would move them byte by byte.
// Every padding byte is a named field: the sizes below leave none for the compiler.
const _: () = assert!(size_of::<BindingKeyV4>() == 8);
const _: () = assert!(size_of::<BindingKeyV6>() == 20);
const _: () = assert!(size_of::<BindingV4>() == 20);
const _: () = assert!(size_of::<BindingV6>() == 32);
const _: () = assert!(size_of::<FlowKeyV4>() == 16);
const _: () = assert!(size_of::<FlowKeyV6>() == 40);
const _: () = assert!(size_of::<FlowV4>() == 32);
const _: () = assert!(size_of::<FlowV6>() == 56);
const _: () = assert!(size_of::<FragKeyV4>() == 16);
const _: () = assert!(size_of::<FragKeyV6>() == 40);
const _: () = assert!(size_of::<FragV4>() == 20);
const _: () = assert!(size_of::<FragV6>() == 44);
const _: () = assert!(size_of::<BindingStats>() == 32);
const _: () = assert!(size_of::<XdpMeta>() == 8);
const _: () = assert!(size_of::<BridgeAddrs>() == 24);
const _: () = assert!(size_of::<RecentV4>() == 36);
const _: () = assert!(size_of::<RecentV6>() == 72);
const _: () = assert!(size_of::<SockKeyV4>() == 16);
const _: () = assert!(size_of::<SockKeyV6>() == 28);
const _: () = assert!(size_of::<SockOrigV4>() == 8);
const _: () = assert!(size_of::<SockOrigV6>() == 20);

impl<const N: usize> BindingKey<N> {
    pub const fn new(addr: [u8; N], port: u16, proto: u8) -> Self {
        Self {
            addr: Addr(addr),
            port: port.to_be_bytes(),
            proto,
            _pad: 0,
        }
    }
}

impl<const N: usize> BindingTarget<N> {
    pub const fn new(
        addr: [u8; N],
        port: u16,
        id: u32,
        egress_ifindex: u32,
        generation: u32,
    ) -> Self {
        Self {
            addr: Addr(addr),
            port: port.to_be_bytes(),
            _pad: [0; 2],
            id,
            egress_ifindex,
            generation,
        }
    }
}

impl<const N: usize> FlowState<N> {
    /// Whether `other` describes the same flow: all but the time it was last seen and the
    /// closing mark, which change as packets pass.
    pub fn same_flow(&self, other: &Self) -> bool {
        self.host_addr == other.host_addr
            && self.host_port == other.host_port
            && self.binding_id == other.binding_id
            && self.ingress_ifindex == other.ingress_ifindex
            && self.generation == other.generation
            && self.client_addr == other.client_addr
            && self.client_port == other.client_port
            && self.flags & FLOW_HAIRPIN == other.flags & FLOW_HAIRPIN
    }
}

/// All-zero values, as a fresh map slot holds them.
macro_rules! zeroed_default {
    ($($ty:ident { $($field:ident: $zero:expr),* $(,)? })*) => {$(
        impl<const N: usize> Default for $ty<N> {
            fn default() -> Self {
                Self { $($field: $zero),* }
            }
        }
    )*};
}

zeroed_default! {
    BindingKey { addr: Addr([0; N]), port: [0; 2], proto: 0, _pad: 0 }
    BindingTarget { addr: Addr([0; N]), port: [0; 2], _pad: [0; 2], id: 0, egress_ifindex: 0, generation: 0 }
    FlowKey { container_addr: Addr([0; N]), client_addr: Addr([0; N]), container_port: [0; 2], client_port: [0; 2], proto: 0, _pad: [0; 3] }
    FlowState {
        host_addr: Addr([0; N]), host_port: [0; 2], flags: 0, _pad: 0, binding_id: 0, ingress_ifindex: 0,
        generation: 0, seen: 0, client_addr: Addr([0; N]), client_port: [0; 2], _pad2: [0; 2],
    }
    FragKey { src: Addr([0; N]), dst: Addr([0; N]), id: [0; 4], proto: 0, _pad: [0; 3] }
    FragTarget {
        src: Addr([0; N]), dst: Addr([0; N]), rewrite: 0, path: 0, _pad: [0; 2], ifindex: 0,
        binding_id: 0,
    }
    SockKey { cookie: [0; 8], addr: Addr([0; N]), port: [0; 2], _pad: [0; 2] }
    SockOrig { addr: Addr([0; N]), port: [0; 2], _pad: [0; 2] }
    Recent {
        client: Addr([0; N]), host: Addr([0; N]), container: Addr([0; N]), client_port: [0; 2],
        host_port: [0; 2], container_port: [0; 2], proto: 0, _pad: 0, binding_id: 0,
        generation: 0, egress_ifindex: 0, confirmed: 0,
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY (every impl here): the types are `#[repr(C)]`, made only of integers and byte
    // arrays (an `Addr` is one, of a multiple of its alignment), with every padding byte spelled out as a field for the address lengths used (the
    // size asserts above pin that), so any bit pattern is valid and none is uninitialised.
    // Only for the two address lengths in use: another length could leave padding.
    macro_rules! pod {
        ($($ty:ident),*) => {$(
            // SAFETY: see above.
            unsafe impl bytemuck::Zeroable for $ty<V4> {}
            // SAFETY: see above.
            unsafe impl bytemuck::Pod for $ty<V4> {}
            // SAFETY: see above.
            unsafe impl aya::Pod for $ty<V4> {}
            // SAFETY: see above.
            unsafe impl bytemuck::Zeroable for $ty<V6> {}
            // SAFETY: see above.
            unsafe impl bytemuck::Pod for $ty<V6> {}
            // SAFETY: see above.
            unsafe impl aya::Pod for $ty<V6> {}
        )*};
    }
    pod!(
        Addr,
        BindingKey,
        BindingTarget,
        FlowKey,
        FlowState,
        FragKey,
        FragTarget,
        SockKey,
        SockOrig,
        Recent
    );

    // SAFETY: see above.
    unsafe impl aya::Pod for BindingStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for BridgeAddrs {}
}
