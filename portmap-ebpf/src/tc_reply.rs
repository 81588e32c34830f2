//! `tc_reply`: TC ingress on a bridge, for what containers send into the host.
//!
//! - A reply of a translated flow gets back the exact host address and port its client used,
//!   and leaves through the interface the client's packets came in on; so do its later
//!   fragments and ICMP errors a container sends about the flow.
//! - A hairpin connection (a container to a published port of its own host, at the bridge's
//!   address or any other local one) is sent to the target container from the bridge's own
//!   address, as Docker's hairpin masquerade does; its replies come back here and return to
//!   the caller from the published address.
//! - Anything else is the stack's.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::error;
use portmap_common::{
    BindingKey, FLOW_HAIRPIN, FRAG_DST, FRAG_PATH_HAIRPIN, FRAG_PATH_REPLY, FRAG_PATH_UPLINK,
    FRAG_SRC, FlowKey, FlowState, FragTarget, Reason,
};

use crate::{
    family::{Family, V4, V6},
    flow, icmp, lookup,
    maps::BRIDGES,
    parse::{self, Packet, Piece, To, Version},
    redirect::{self, Verdict},
    rewrite::{self, Side, Skb, Ttl},
    stats,
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Verdict {
    if !parse::pull_headers(ctx) {
        return Verdict::pass(Reason::ReplyPassNotOurs);
    }
    let mut pkt = Packet::empty();
    match parse::ip(ctx, &mut pkt) {
        Ok(Version::V4) if !pkt.vlan_tagged => packet::<4, V4>(ctx, &pkt),
        Ok(Version::V6) if !pkt.vlan_tagged => packet::<16, V6>(ctx, &pkt),
        _ => Verdict::pass(Reason::ReplyPassNotOurs),
    }
}

/// `tc_port`: the same translation at a bridge port's ingress (the host side of a container's
/// veth), for the common case only: a reply of a flow from the uplink. It leaves before the
/// bridge takes it, so it skips the bridge and what Docker hooks on it (br_netfilter and with it
/// conntrack, about a tenth of a new connection's cost). Anything else (no flow, hairpin,
/// fragments after the first, ICMP) goes on into the bridge untouched (`None`), where
/// `tc_reply` handles it as before.
#[inline(always)]
pub fn at_port(ctx: &TcContext) -> Option<Verdict> {
    if !parse::pull_headers(ctx) {
        return None;
    }
    let mut pkt = Packet::empty();
    match parse::ip(ctx, &mut pkt) {
        Ok(Version::V4) if !pkt.vlan_tagged => port_reply::<4, V4>(ctx, &pkt),
        Ok(Version::V6) if !pkt.vlan_tagged => port_reply::<16, V6>(ctx, &pkt),
        _ => None,
    }
}

#[inline(always)]
fn port_reply<const N: usize, F: Family<N>>(ctx: &TcContext, pkt: &Packet) -> Option<Verdict> {
    if pkt.piece == Piece::Later || pkt.proto == F::ICMP {
        return None;
    }
    let key = reply_key::<N, F>(pkt);
    let flow = lookup::live_flow::<N, F>(&key)?;
    // SAFETY: a pointer into a live map value.
    if unsafe { (*flow).flags } & FLOW_HAIRPIN != 0 {
        return None;
    }
    let verdict = reply::<N, F>(ctx, pkt, &key, flow);
    match verdict.reason {
        Reason::ReplyTranslated => Some(Verdict {
            reason: Reason::PortTranslated,
            action: verdict.action,
        }),
        // Untouched (its TTL expires): the bridge's `tc_reply` passes and counts it.
        _ if verdict.action == TC_ACT_OK => None,
        _ => Some(verdict),
    }
}

/// The flow a container's packet would be a reply of, keyed as replies are.
#[inline(always)]
fn reply_key<const N: usize, F: Family<N>>(pkt: &Packet) -> FlowKey<N> {
    // SAFETY: `parse::ip` bounds-checked the IP header and the ports.
    unsafe {
        FlowKey {
            container_addr: (*F::src(pkt.l3)).get(),
            client_addr: (*F::dst(pkt.l3)).get(),
            container_port: (*pkt.l4).src.to_ne_bytes(),
            client_port: (*pkt.l4).dst.to_ne_bytes(),
            proto: pkt.proto,
            _pad: [0; 3],
        }
    }
}

#[inline(always)]
fn dropped(reason: Reason) -> Verdict {
    Verdict {
        reason,
        action: TC_ACT_SHOT,
    }
}

#[inline(always)]
fn packet<const N: usize, F: Family<N>>(ctx: &TcContext, pkt: &Packet) -> Verdict {
    if pkt.piece == Piece::Later {
        return later_fragment::<N, F>(ctx, pkt);
    }
    if pkt.proto == F::ICMP {
        return match icmp::from_container::<N, F>(&Skb(ctx), pkt, ctx.data(), ctx.data_end()) {
            Ok(ifindex) => Verdict {
                reason: Reason::ReplyTranslated,
                action: redirect::via_route(ifindex),
            },
            Err(Reason::UplinkDropWriteFailed) => dropped(Reason::ReplyDropWriteFailed),
            Err(reason) => Verdict::pass(reason),
        };
    }
    let key = reply_key::<N, F>(pkt);
    match lookup::live_flow::<N, F>(&key) {
        Some(flow) => reply::<N, F>(ctx, pkt, &key, flow),
        None => hairpin::<N, F>(ctx, pkt),
    }
}

/// A reply of a translated flow: its source becomes the host address and port the client used
/// (and, for a hairpin flow, its destination the calling container again).
#[inline(always)]
fn reply<const N: usize, F: Family<N>>(
    ctx: &TcContext,
    pkt: &Packet,
    key: &FlowKey<N>,
    flow: *mut FlowState<N>,
) -> Verdict {
    flow::touch(flow, flow::closes(pkt));
    if rewrite::ttl_expires::<N, F>(pkt) {
        return Verdict::pass(Reason::ReplyTtlExpired);
    }
    // SAFETY: `flow` points into a live map value; fields are read where they are needed.
    let flow = unsafe { &*flow };
    let host = To {
        addr: &flow.host_addr,
        port: flow.host_port,
    };
    let hairpin = flow.flags & FLOW_HAIRPIN != 0;
    let written = if hairpin {
        let caller = To {
            addr: &flow.client_addr,
            port: flow.client_port,
        };
        rewrite::endpoints::<N, F>(&Skb(ctx), pkt, host, caller, Ttl::Decrement)
    } else {
        rewrite::endpoint::<N, F>(&Skb(ctx), pkt, Side::Src, host, Ttl::Decrement)
    };
    if written.is_err() {
        error!(
            ctx,
            "could not rewrite a reply to port {}; dropped",
            u16::from_be_bytes(flow.host_port)
        );
        return dropped(Reason::ReplyDropWriteFailed);
    }
    if pkt.piece == Piece::First {
        // Keyed as the datagram arrived (from the container to the client, or for a hairpin
        // flow the bridge), which is how its later fragments arrive.
        flow::record_fragment::<N, F>(
            &flow::fragment_key(pkt, key.container_addr, key.client_addr),
            &FragTarget {
                src: flow.host_addr,
                // A hairpin flow's replies go back to the calling container, too.
                dst: flow.client_addr,
                rewrite: if hairpin {
                    FRAG_SRC | FRAG_DST
                } else {
                    FRAG_SRC
                },
                path: FRAG_PATH_REPLY,
                ifindex: flow.ingress_ifindex,
                binding_id: flow.binding_id,
                ..FragTarget::default()
            },
        );
    }
    stats::to_client(flow.binding_id, ctx.len().into());
    let action = if hairpin {
        redirect::to_onlink(flow.ingress_ifindex, F::nexthop(flow.client_addr))
    } else {
        redirect::via_route(flow.ingress_ifindex)
    };
    Verdict {
        reason: Reason::ReplyTranslated,
        action,
    }
}

/// A container to a published port of its own host: the destination becomes the target
/// container and the source the bridge's own address (keeping the port), so that the target's
/// reply comes back here rather than straight to the caller.
#[inline(always)]
fn hairpin<const N: usize, F: Family<N>>(ctx: &TcContext, pkt: &Packet) -> Verdict {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The flow as its replies will show it (`key`), and what they must become (`value`),
    // filled in straight from the packet and the maps. They live on the stack anyway, for the
    // map helpers; holding the same addresses in registers across helper calls as well would
    // spill them a second time.
    let mut key = FlowKey::<N> {
        proto: pkt.proto,
        ..FlowKey::default()
    };
    let mut value = FlowState::<N> {
        flags: FLOW_HAIRPIN,
        ingress_ifindex: ifindex,
        ..FlowState::default()
    };
    // SAFETY: `parse::ip` bounds-checked the IP header and the ports.
    unsafe {
        value.host_addr = (*F::dst(pkt.l3)).get();
        value.host_port = (*pkt.l4).dst.to_ne_bytes();
        value.client_addr = (*F::src(pkt.l3)).get();
        value.client_port = (*pkt.l4).src.to_ne_bytes();
        key.client_port = value.client_port;
    }
    let Some(binding) = lookup::binding::<N, F>(&BindingKey {
        addr: value.host_addr,
        port: value.host_port,
        proto: pkt.proto,
        _pad: 0,
    }) else {
        return Verdict::pass(Reason::ReplyPassNoFlow);
    };
    // SAFETY: a reference into a map value, read at once.
    let Some(bridge) = unsafe { BRIDGES.get(ifindex) }.and_then(F::bridge_addr) else {
        return Verdict::pass(Reason::ReplyPassNoFlow);
    };
    if rewrite::ttl_expires::<N, F>(pkt) {
        return Verdict::pass(Reason::ReplyTtlExpired);
    }
    key.client_addr = bridge;
    key.container_addr = binding.addr;
    key.container_port = binding.port;
    value.binding_id = binding.id;
    value.generation = binding.generation;
    // Two callers with the same source port to the same target would share the translated
    // source; the second is left to the stack rather than take the first one's replies.
    if let Some(existing) = lookup::live_flow::<N, F>(&key) {
        // SAFETY: a pointer into a live map value.
        if !unsafe { (*existing).same_flow(&value) } {
            return Verdict::pass(Reason::ReplyHairpinPortBusy);
        }
    }
    let closing = flow::closes(pkt);
    if pkt.piece == Piece::First {
        // Keyed as the datagram arrived: from the caller to the published address.
        flow::record_fragment::<N, F>(
            &flow::fragment_key(pkt, value.client_addr, value.host_addr),
            &FragTarget {
                src: key.client_addr,
                dst: key.container_addr,
                rewrite: FRAG_SRC | FRAG_DST,
                path: FRAG_PATH_HAIRPIN,
                ifindex: binding.egress_ifindex,
                binding_id: binding.id,
                ..FragTarget::default()
            },
        );
    }
    let translated_src = To {
        addr: &key.client_addr,
        port: key.client_port,
    };
    let target = To {
        addr: &key.container_addr,
        port: key.container_port,
    };
    if rewrite::endpoints::<N, F>(&Skb(ctx), pkt, translated_src, target, Ttl::Decrement).is_err() {
        return dropped(Reason::ReplyDropWriteFailed);
    }
    let _ = flow::record::<N, F>(&key, &mut value, closing);
    stats::to_container(value.binding_id, ctx.len().into());
    Verdict {
        reason: Reason::ReplyHairpin,
        action: redirect::to_onlink(binding.egress_ifindex, F::nexthop(key.container_addr)),
    }
}

/// A later fragment of a container's datagram: it follows its first fragment's translation.
#[inline(always)]
fn later_fragment<const N: usize, F: Family<N>>(ctx: &TcContext, pkt: &Packet) -> Verdict {
    let key = flow::arrived_fragment_key::<N, F>(pkt);
    let Some(target) = lookup::fragment::<N, F>(&key).filter(|t| t.path != FRAG_PATH_UPLINK) else {
        return Verdict::pass(Reason::ReplyPassFragmentUnknown);
    };
    if rewrite::ttl_expires::<N, F>(pkt) {
        return Verdict::pass(Reason::ReplyTtlExpired);
    }
    if rewrite::fragment_addrs::<N, F>(&Skb(ctx), pkt, &target, Ttl::Decrement).is_err() {
        return dropped(Reason::ReplyDropWriteFailed);
    }
    let hairpin = target.path == FRAG_PATH_HAIRPIN;
    if hairpin {
        stats::to_container(target.binding_id, ctx.len().into());
    } else {
        stats::to_client(target.binding_id, ctx.len().into());
    }
    // A destination rewritten is a container on the bridge: its own next hop.
    let action = if target.rewrite & FRAG_DST != 0 {
        redirect::to_onlink(target.ifindex, F::nexthop(target.dst))
    } else {
        redirect::via_route(target.ifindex)
    };
    Verdict {
        reason: if hairpin {
            Reason::ReplyHairpin
        } else {
            Reason::ReplyTranslated
        },
        action,
    }
}
