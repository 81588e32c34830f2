//! Map names, sizes, and the layout of every key and value.
//!
//! The eBPF side declares each map as a static whose identifier is the name below; the loader
//! finds maps by these names, and the test that loads the real object checks that every name
//! here exists in it, so a rename on one side fails a test instead of a deployment.

use core::mem::size_of;

/// Names of the maps in the eBPF object.
pub mod names {
    /// `HashMap<BindingKeyV4, BindingV4>`: published ports.
    pub const BINDINGS_V4: &str = "BINDINGS_V4";
    /// `LruHashMap<FlowKeyV4, FlowV4>`: translated flows, keyed as the container's replies look.
    pub const FLOWS_V4: &str = "FLOWS_V4";
    /// `PerCpuArray<BindingStats>`: per-binding counters, indexed by [`super::BindingV4::id`].
    pub const BINDING_STATS: &str = "BINDING_STATS";
    /// `PerCpuArray<u64>`: why packets went the way they did, indexed by [`crate::Reason`].
    pub const REASON_STATS: &str = "REASON_STATS";
    /// `Array<u32>`: each binding id's current generation. A flow recorded under an older one
    /// belongs to a binding since removed or re-pointed, and is ignored.
    pub const BINDING_GEN: &str = "BINDING_GEN";

    /// Every map the loader expects to find.
    pub const ALL: [&str; 5] = [
        BINDINGS_V4,
        FLOWS_V4,
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

    pub const ALL: [&str; 4] = [XDP_UPLINK, TC_FORWARD, TC_UPLINK, TC_REPLY];
}

/// Published ports the kernel can count, each with its own per-CPU counter slot. Docker hosts
/// with tens of thousands of published ports exist.
pub const MAX_BINDINGS: u32 = 65_536;

/// Keys in [`names::BINDINGS_V4`]: a wildcard binding takes one per local address.
pub const MAX_BINDING_KEYS: u32 = 262_144;

/// Translated flows remembered for the reverse path. An LRU as large as Cilium's and Katran's
/// default connection tables: a full table evicts the least recently used flow, never fails.
pub const MAX_FLOWS: u32 = 262_144;

/// Where a client sends: the key of [`names::BINDINGS_V4`].
///
/// Always a specific address: the loader publishes a wildcard binding (`0.0.0.0`, Docker's
/// empty `HostIp`) as one key per local address, so the kernel does one exact lookup per packet
/// and a wildcard matches only the host's own addresses, as Docker's `--dst-type LOCAL` does.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BindingKeyV4 {
    /// Host address, network byte order.
    pub addr: [u8; 4],
    /// Host port, network byte order.
    pub port: [u8; 2],
    /// [`crate::proto::TCP`] or [`crate::proto::UDP`].
    pub proto: u8,
    pub _pad: u8,
}

/// Where a binding sends: the value of [`names::BINDINGS_V4`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BindingV4 {
    /// Container address, network byte order.
    pub addr: [u8; 4],
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

/// A translated flow as the container's reply shows it: the key of [`names::FLOWS_V4`].
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKeyV4 {
    /// Reply source: the container, network byte order.
    pub container_addr: [u8; 4],
    /// Reply destination: the client, network byte order.
    pub client_addr: [u8; 4],
    /// Network byte order.
    pub container_port: [u8; 2],
    /// Network byte order.
    pub client_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// What a reply's source must become, and what to charge it to: the value of
/// [`names::FLOWS_V4`].
///
/// Keeping the exact host address and port the client used (rather than reversing the binding)
/// is what lets one container behind two host ports (`8080:80`, `9090:80`) answer each flow
/// through the port it came in on.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowV4 {
    /// The address the client sent to, network byte order (never the wildcard).
    pub host_addr: [u8; 4],
    /// The port the client sent to, network byte order.
    pub host_port: [u8; 2],
    pub _pad: [u8; 2],
    /// The binding the flow came in through (host order); its counters take the replies.
    pub binding_id: u32,
    /// Where the client's packets arrived (host order); replies leave the same way.
    pub ingress_ifindex: u32,
    /// The binding's generation when the flow was recorded (host order): once the binding is
    /// removed or re-pointed, [`names::BINDING_GEN`] moves on and the flow is dead at once,
    /// however many flows there are.
    pub generation: u32,
}

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
const _: () = assert!(size_of::<BindingKeyV4>() == 8);
const _: () = assert!(size_of::<BindingV4>() == 20);
const _: () = assert!(size_of::<FlowKeyV4>() == 16);
const _: () = assert!(size_of::<FlowV4>() == 20);
const _: () = assert!(size_of::<BindingStats>() == 32);
const _: () = assert!(size_of::<XdpMeta>() == 8);

impl BindingKeyV4 {
    /// Whichever of two keys has the lower address.
    pub fn min_by_addr(self, other: Self) -> Self {
        if other.addr < self.addr { other } else { self }
    }

    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            proto,
            _pad: 0,
        }
    }
}

impl BindingV4 {
    pub const fn new(
        addr: [u8; 4],
        port: u16,
        id: u32,
        egress_ifindex: u32,
        generation: u32,
    ) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            _pad: [0; 2],
            id,
            egress_ifindex,
            generation,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field (the size asserts above pin that), so any bit pattern
    // is valid and none is uninitialised.
    unsafe impl aya::Pod for super::BindingKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BindingV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BindingStats {}
}
