//! `tc_forward`: TC ingress on the uplink, beside `xdp_uplink`. A frame that `xdp_uplink`
//! translated goes straight to the container's bridge, as a router would send it (TTL minus
//! one), without the host's netfilter.

use core::mem::size_of;

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use portmap_common::{Reason, XDP_META_MAGIC, XdpMeta};

use crate::{
    family::{Family, V4, V6},
    parse::{self, Packet, Version},
    redirect::{self, Verdict},
    rewrite::{self, Skb},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Verdict {
    let Some(egress_ifindex) = take_meta(ctx) else {
        return Verdict::pass(Reason::FwdNotOurs);
    };
    // `xdp_uplink` only notes untagged IP frames it could parse.
    let mut pkt = Packet::empty();
    match parse::ip(ctx, &mut pkt) {
        Ok(Version::V4) => forward::<4, V4>(ctx, &pkt, egress_ifindex),
        Ok(Version::V6) => forward::<16, V6>(ctx, &pkt, egress_ifindex),
        Err(_) => Verdict::pass(Reason::FwdNotOurs),
    }
}

#[inline(always)]
fn forward<const N: usize, F: Family<N>>(
    ctx: &TcContext,
    pkt: &Packet,
    egress_ifindex: u32,
) -> Verdict {
    // SAFETY: the parser bounds-checked the IP header.
    let (ttl, container) = unsafe { (*F::ttl_word(pkt.l3).cast::<u8>(), (*F::dst(pkt.l3)).get()) };
    if ttl <= 1 {
        return Verdict::pass(Reason::FwdTtlExpired);
    }
    if rewrite::ttl_decrement::<N, F>(&Skb(ctx), pkt.l3, pkt.l3_off).is_err() {
        return Verdict {
            reason: Reason::FwdNotOurs,
            action: TC_ACT_SHOT,
        };
    }
    Verdict {
        reason: Reason::FwdRedirected,
        action: redirect::to_onlink(egress_ifindex, F::nexthop(container)),
    }
}

/// The bridge `xdp_uplink` chose, if this frame carries its note; the note is used up.
#[inline(always)]
fn take_meta(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading a field of the program's own context.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + size_of::<XdpMeta>() > ctx.data() {
        return None;
    }
    // SAFETY: bounds-checked against `data` just above.
    let note = unsafe { &mut *(meta as *mut XdpMeta) };
    if note.magic != XDP_META_MAGIC {
        return None;
    }
    // The metadata stays with the skb after the redirect; a packet that came back to this hook
    // (a loop, a hairpin) must not be sent on again by a stale note.
    note.magic = 0;
    Some(note.egress_ifindex)
}
