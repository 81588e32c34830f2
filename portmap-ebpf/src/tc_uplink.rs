//! `tc_uplink`: the uplink's translation at TC ingress, for uplinks where native XDP costs more
//! than it saves. A veth, for one, copies every skb that is cloned or has less than 256 bytes of
//! headroom into a fresh page before it can run XDP; TC works on the skb that exists anyway. The
//! translated packet goes straight to the container's bridge, as `tc_forward` sends XDP's.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use portmap_common::Reason;

use crate::{
    parse,
    redirect::{self, Verdict},
    rewrite::Skb,
    translate::{self, Translated},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Verdict {
    if !parse::pull_headers(ctx) {
        return Verdict::pass(Reason::UplinkPassTruncated);
    }
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut translated = Translated::none();
    match translate::uplink(
        ctx,
        &Skb(ctx),
        ifindex,
        ctx.len().into(),
        true,
        &mut translated,
    ) {
        Ok(()) if translated.forwardable && !translated.vlan_tagged => Verdict {
            reason: Reason::UplinkTranslated,
            action: redirect::to_onlink(translated.egress_ifindex, translated.nexthop),
        },
        // Translated, but the stack forwards it: its TTL expires here (the stack sends the
        // ICMP), or its VLAN tag lives outside the frame at TC.
        Ok(()) => Verdict::pass(Reason::UplinkTranslated),
        Err(reason @ (Reason::UplinkDropWriteFailed | Reason::UplinkDropLoopback)) => Verdict {
            reason,
            action: TC_ACT_SHOT,
        },
        Err(reason) => Verdict::pass(reason),
    }
}
