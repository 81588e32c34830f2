//! `xdp_uplink`: the uplink's translation at XDP, in the NIC driver before any skb exists.
//! A translated frame goes up with a note that `tc_forward` turns into a redirect to the bridge
//! (XDP itself cannot send to a bridge: it has no `ndo_xdp_xmit`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_meta,
    programs::XdpContext,
};
use portmap_common::{Reason, XDP_META_MAGIC, XdpMeta};

use crate::{
    rewrite::InPlace,
    stats,
    translate::{self, Translated},
};

/// What became of the packet, and the XDP action: everything goes up but a loopback
/// destination from the wire, which is dropped. A translated packet is forwarded by
/// `tc_forward`; anything else is the stack's business.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> (Reason, u32) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let mut translated = Translated::none();
    let ifindex = ctx.ingress_ifindex() as u32;
    match translate::uplink(ctx, &InPlace, ifindex, len, false, &mut translated) {
        Ok(()) => {}
        Err(reason @ Reason::UplinkDropLoopback) => return (reason, XDP_DROP),
        Err(reason) => return (reason, XDP_PASS),
    }
    // A tagged frame is left to the VLAN device and the stack: at TC the tag has been moved out
    // of the frame, and the note with it.
    if !translated.vlan_tagged && !write_meta(ctx, translated.egress_ifindex) {
        stats::count(Reason::XdpMetaFailed);
    }
    (Reason::UplinkTranslated, XDP_PASS)
}

/// Puts an [`XdpMeta`] in front of the frame. Reuses one already there (`BPF_PROG_TEST_RUN`
/// with `repeat` runs the program again on its own output).
#[inline(always)]
fn write_meta(ctx: &XdpContext, egress_ifindex: u32) -> bool {
    const LEN: usize = size_of::<XdpMeta>();
    if ctx.data() - ctx.metadata() != LEN {
        // SAFETY: `ctx.ctx` is the program's own context pointer.
        if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(LEN as i32)) } != 0 {
            return false;
        }
    }
    let meta = ctx.metadata();
    if meta + LEN > ctx.data() {
        return false;
    }
    // SAFETY: bounds-checked against `data` just above, as the verifier requires.
    unsafe {
        *(meta as *mut XdpMeta) = XdpMeta {
            magic: XDP_META_MAGIC,
            egress_ifindex,
        };
    }
    true
}
