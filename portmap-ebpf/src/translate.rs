//! The uplink's translation, whichever hook runs it (`xdp_uplink` or `tc_uplink`): parse, look
//! up, rewrite, record. Forwarding the result is the hook's business.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use portmap_common::{BindingKeyV4, FlowKeyV4, FlowV4, Reason};

use crate::{
    flow, lookup,
    parse::{self, Endpoint, Frame, Refusal},
    rewrite::{self, Checksums, Side, Ttl},
    stats,
};

/// A packet rewritten toward its container.
pub struct Translated {
    /// The bridge the binding sends to.
    pub egress_ifindex: u32,
    /// The container's address, as on the wire: its own next hop on that bridge.
    pub container: [u16; 2],
    pub vlan_tagged: bool,
    /// Whether the TTL was decremented, as forwarding requires; not when it would expire,
    /// which is left to the stack and its ICMP.
    pub forwardable: bool,
}

/// Translates a client's packet to a published host address and port.
///
/// `forward` asks for the TTL to be decremented too (the hook forwards the packet itself);
/// `len` is what the binding's byte counter is charged.
///
/// # Errors
///
/// Why the packet is not translated; it is then untouched.
#[inline(always)]
pub fn v4<C: Frame + EbpfContext>(
    ctx: &C,
    csums: &impl Checksums,
    ingress_ifindex: u32,
    len: u64,
    forward: bool,
) -> Result<Translated, Reason> {
    let pkt = parse::ipv4_l4(ctx).map_err(refused)?;
    let client = pkt.src();
    let host = pkt.dst();
    if host.addr_bytes()[0] == 127 {
        // Loopback never arrives from a wire; a crafted one must not reach a binding published
        // on 127.0.0.1 (moby #45610). The stack drops it as a martian.
        return Err(Reason::UplinkPassNoBinding);
    }
    let binding = lookup::binding(BindingKeyV4 {
        addr: host.addr_bytes(),
        port: host.port_bytes(),
        proto: pkt.proto,
        _pad: 0,
    })
    .ok_or(Reason::UplinkPassNoBinding)?;

    let container = Endpoint::from_wire(binding.addr, binding.port);
    let forwardable = forward && pkt.ttl() > 1;
    let ttl = if forwardable {
        Ttl::Decrement
    } else {
        Ttl::Keep
    };
    rewrite::v4_endpoint(csums, &pkt, Side::Dst, container, ttl)
        .map_err(|_| Reason::UplinkDropWriteFailed)?;
    stats::to_container(binding.id, len);

    let key = FlowKeyV4 {
        container_addr: binding.addr,
        client_addr: client.addr_bytes(),
        container_port: binding.port,
        client_port: client.port_bytes(),
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let value = FlowV4 {
        host_addr: host.addr_bytes(),
        host_port: host.port_bytes(),
        _pad: [0; 2],
        binding_id: binding.id,
        ingress_ifindex,
        generation: binding.generation,
    };
    if let Err(errno) = flow::record(&key, &value) {
        // Rare (an LRU evicts rather than fills up), and it breaks the flow's replies: say so.
        stats::count(Reason::UplinkFlowRecordFailed);
        warn!(
            ctx,
            "flow table refused {:i}:{} -> {:i}:{} (errno {}); its replies will not be translated",
            client.addr_bytes(),
            u16::from_be(client.port),
            binding.addr,
            u16::from_be_bytes(binding.port),
            -errno
        );
    }
    Ok(Translated {
        egress_ifindex: binding.egress_ifindex,
        container: container.addr,
        vlan_tagged: pkt.vlan_tagged,
        forwardable,
    })
}

#[inline(always)]
fn refused(refusal: Refusal) -> Reason {
    match refusal {
        Refusal::NotIp => Reason::UplinkPassNotIp,
        Refusal::Ipv6 => Reason::UplinkPassIpv6,
        Refusal::IpOptions => Reason::UplinkPassIpOptions,
        Refusal::Fragment => Reason::UplinkPassFragment,
        Refusal::NotTcpUdp => Reason::UplinkPassNotTcpUdp,
        Refusal::Truncated => Reason::UplinkPassTruncated,
    }
}
