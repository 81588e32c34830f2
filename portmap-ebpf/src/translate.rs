//! The uplink's translation, whichever hook runs it (`xdp_uplink` or `tc_uplink`) and whichever
//! family: parse, look up, rewrite, record. Forwarding the result is the hook's business.

use aya_ebpf::{EbpfContext, bindings::bpf_redir_neigh};
use aya_log_ebpf::warn;
use portmap_common::{
    Addr, BindingKey, BindingTarget, FRAG_DST, FRAG_PATH_UPLINK, FlowKey, FlowState, FragTarget,
    Reason,
};

use crate::{
    family::{Family, V4, V6},
    flow, icmp, lookup,
    parse::{self, Frame, Packet, Piece, Refusal, To, Version},
    recent,
    rewrite::{self, Checksums, Side, Ttl},
    stats,
};

/// A packet rewritten toward its container: written through the caller's `out` on the paths
/// that translate, never returned inside a `Result`. A returned struct's fields are undefined on
/// the error paths, and LLVM may then reload them from stack slots those paths never wrote; 5.10's
/// verifier rejects such a read even when the value goes unused.
pub struct Translated {
    /// The bridge the binding sends to.
    pub egress_ifindex: u32,
    /// The container, as `bpf_redirect_neigh`'s next hop: it is on that bridge's link.
    pub nexthop: bpf_redir_neigh,
    pub vlan_tagged: bool,
    /// Whether the TTL was decremented, as forwarding requires; not when it would expire,
    /// which is left to the stack and its ICMP.
    pub forwardable: bool,
}

impl Translated {
    /// `pkt`, rewritten toward `container` on the bridge `egress_ifindex`.
    #[inline(always)]
    pub fn toward<const N: usize, F: Family<N>>(
        egress_ifindex: u32,
        container: Addr<N>,
        pkt: &Packet,
        forwardable: bool,
    ) -> Self {
        Self {
            egress_ifindex,
            nexthop: F::nexthop(container),
            vlan_tagged: pkt.vlan_tagged,
            forwardable,
        }
    }

    /// Where a hook starts: defined on every path, translated or not.
    #[inline(always)]
    pub fn none() -> Self {
        Self {
            egress_ifindex: 0,
            // SAFETY: a plain C struct of integers; all zeroes is a valid value.
            nexthop: unsafe { core::mem::zeroed() },
            vlan_tagged: false,
            forwardable: false,
        }
    }
}

/// Whether the hook forwards `pkt` itself (`forward`), which decrements its TTL, and what the
/// rewrite does to the TTL: one that would expire is left to the stack and its ICMP.
#[inline(always)]
pub fn forwarding<const N: usize, F: Family<N>>(pkt: &Packet, forward: bool) -> (bool, Ttl) {
    let forwardable = forward && !rewrite::ttl_expires::<N, F>(pkt);
    let ttl = if forwardable {
        Ttl::Decrement
    } else {
        Ttl::Keep
    };
    (forwardable, ttl)
}

/// Translates a client's packet to a published host address and port, of either family.
///
/// `forward` asks for the TTL to be decremented too (the hook forwards the packet itself);
/// `len` is what the binding's byte counter is charged.
///
/// # Errors
///
/// Why the packet is not translated; it is then untouched.
#[inline(always)]
pub fn uplink<C: Frame + EbpfContext>(
    ctx: &C,
    csums: &impl Checksums,
    ingress_ifindex: u32,
    len: u64,
    forward: bool,
    out: &mut Translated,
) -> Result<(), Reason> {
    let mut pkt = Packet::empty();
    match parse::ip(ctx, &mut pkt).map_err(refused)? {
        Version::V4 => packet::<4, V4, _>(ctx, csums, &pkt, ingress_ifindex, len, forward, out),
        Version::V6 => packet::<16, V6, _>(ctx, csums, &pkt, ingress_ifindex, len, forward, out),
    }
}

/// Sends a packet down its path: a later fragment follows its first, an ICMP error is
/// translated inside and out, and anything with ports goes to [`ports`].
#[inline(always)]
fn packet<const N: usize, F: Family<N>, C: Frame + EbpfContext>(
    ctx: &C,
    csums: &impl Checksums,
    pkt: &Packet,
    ingress_ifindex: u32,
    len: u64,
    forward: bool,
    out: &mut Translated,
) -> Result<(), Reason> {
    if pkt.piece == Piece::Later {
        return later_fragment::<N, F>(csums, pkt, len, forward, out);
    }
    if pkt.proto == F::ICMP {
        return icmp::from_client::<N, F>(csums, pkt, ctx.data(), ctx.data_end(), forward, out);
    }
    ports::<N, F, C>(ctx, csums, pkt, ingress_ifindex, len, forward, out)
}

/// A TCP or UDP packet (or a datagram's first fragment) to a published port.
#[inline(always)]
fn ports<const N: usize, F: Family<N>, C: Frame + EbpfContext>(
    ctx: &C,
    csums: &impl Checksums,
    pkt: &Packet,
    ingress_ifindex: u32,
    len: u64,
    forward: bool,
    out: &mut Translated,
) -> Result<(), Reason> {
    // Addresses are read from the packet (or the keys, once built) where they are needed,
    // not held in registers across helper calls: they would spill to a small stack.
    // SAFETY: `parse::ip` bounds-checked the IP header and the ports.
    let host = unsafe {
        BindingKey {
            addr: (*F::dst(pkt.l3)).get(),
            port: (*pkt.l4).dst.to_ne_bytes(),
            proto: pkt.proto,
            _pad: 0,
        }
    };
    if F::is_loopback(&host.addr) {
        // Loopback never arrives from a wire; a crafted one must not reach a binding published
        // on 127.0.0.1 (moby #45610).
        return Err(Reason::UplinkDropLoopback);
    }
    // SAFETY: as above.
    let (client, client_port) = unsafe { ((*F::src(pkt.l3)).get(), (*pkt.l4).src) };
    let (forwardable, ttl) = forwarding::<N, F>(pkt, forward);
    let slot = recent::slot::<N, F>(pkt, &host, &client, client_port);
    if let Some(slot) = slot
        && recent::fresh(slot, pkt, &host, &client, client_port.to_ne_bytes())
    {
        // SAFETY: this CPU's slot, just checked to be this packet's translation.
        let recent = unsafe { &*slot };
        let container = To {
            addr: &recent.container,
            port: recent.container_port,
        };
        rewrite::endpoint::<N, F>(csums, pkt, Side::Dst, container, ttl)
            .map_err(|_| Reason::UplinkDropWriteFailed)?;
        stats::to_container(recent.binding_id, len);
        *out =
            Translated::toward::<N, F>(recent.egress_ifindex, recent.container, pkt, forwardable);
        return Ok(());
    }

    let binding = lookup::binding::<N, F>(&host).ok_or(Reason::UplinkPassNoBinding)?;
    if pkt.piece == Piece::First {
        // Before the flow's keys exist, whose stack slots these then share.
        first_fragment::<N, F>(pkt, binding);
    }

    // The flow as it will be recorded, built while the packet still shows the client's view.
    // SAFETY: as above; a map lookup does not move packet data.
    let key = FlowKey {
        container_addr: binding.addr,
        client_addr: client,
        container_port: binding.port,
        client_port: client_port.to_ne_bytes(),
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let mut value = FlowState {
        host_addr: host.addr,
        host_port: host.port,
        binding_id: binding.id,
        ingress_ifindex,
        generation: binding.generation,
        ..FlowState::default()
    };
    let closing = flow::closes(pkt);
    let container = To {
        addr: &binding.addr,
        port: binding.port,
    };
    rewrite::endpoint::<N, F>(csums, pkt, Side::Dst, container, ttl)
        .map_err(|_| Reason::UplinkDropWriteFailed)?;
    stats::to_container(binding.id, len);

    match flow::record::<N, F>(&key, &mut value, closing) {
        Ok(()) => {
            if let Some(slot) = slot {
                recent::remember(slot, &key, &value, binding.egress_ifindex);
            }
        }
        Err(errno) => record_failed(ctx, key.container_port, errno),
    }
    *out = Translated::toward::<N, F>(binding.egress_ifindex, binding.addr, pkt, forwardable);
    Ok(())
}

/// Rare (an LRU evicts rather than fills up), and it breaks the flow's replies: say so.
#[cold]
#[inline(never)]
fn record_failed<C: EbpfContext>(ctx: &C, container_port: [u8; 2], errno: i32) {
    stats::count(Reason::UplinkFlowRecordFailed);
    warn!(
        ctx,
        "flow table refused a flow to port {} (errno {}); its replies will not be translated",
        u16::from_be_bytes(container_port),
        -errno
    );
}

/// Remembers how a datagram's first fragment is translated, for the fragments after it, keyed
/// as they arrive: from the client to the host address. Called before the rewrite, while the
/// packet still shows both.
#[inline(always)]
fn first_fragment<const N: usize, F: Family<N>>(pkt: &Packet, binding: &BindingTarget<N>) {
    let key = flow::arrived_fragment_key::<N, F>(pkt);
    flow::record_fragment::<N, F>(
        &key,
        &FragTarget {
            dst: binding.addr,
            rewrite: FRAG_DST,
            path: FRAG_PATH_UPLINK,
            ifindex: binding.egress_ifindex,
            binding_id: binding.id,
            ..FragTarget::default()
        },
    );
}

/// A later fragment of a client's datagram: it follows its first fragment's translation, or,
/// if that was not seen (out of order, or not ours), passes untranslated.
#[inline(always)]
fn later_fragment<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    len: u64,
    forward: bool,
    out: &mut Translated,
) -> Result<(), Reason> {
    let key = flow::arrived_fragment_key::<N, F>(pkt);
    let target = lookup::fragment::<N, F>(&key)
        .filter(|t| t.path == FRAG_PATH_UPLINK)
        .ok_or(Reason::UplinkPassFragmentUnknown)?;
    let (forwardable, ttl) = forwarding::<N, F>(pkt, forward);
    rewrite::fragment_addrs::<N, F>(csums, pkt, &target, ttl)
        .map_err(|_| Reason::UplinkDropWriteFailed)?;
    stats::to_container(target.binding_id, len);
    *out = Translated::toward::<N, F>(target.ifindex, target.dst, pkt, forwardable);
    Ok(())
}

#[inline(always)]
fn refused(refusal: Refusal) -> Reason {
    match refusal {
        Refusal::NotIp => Reason::UplinkPassNotIp,
        Refusal::IpOptions => Reason::UplinkPassIpOptions,
        Refusal::NotTcpUdp => Reason::UplinkPassNotTcpUdp,
        Refusal::Truncated => Reason::UplinkPassTruncated,
    }
}
