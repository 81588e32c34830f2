//! `tc_forward`: TC ingress on the uplink. A frame that `xdp_uplink` translated goes straight to
//! the container's bridge, as a router would send it, without the host's netfilter: Docker's
//! FORWARD chain (policy DROP, no per-port ACCEPT for ports portmap publishes) never sees it,
//! and neither does conntrack.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_redirect_neigh,
    programs::TcContext,
};
use portmap_common::{Reason, XDP_META_MAGIC, XdpMeta};

use crate::{parse, rewrite};

pub struct Verdict {
    pub reason: Reason,
    pub action: i32,
}

#[inline(always)]
pub fn run(ctx: &TcContext) -> Verdict {
    let Some(egress_ifindex) = take_meta(ctx) else {
        return pass(Reason::FwdNotOurs);
    };
    // `xdp_uplink` only notes untagged IPv4 frames without options.
    let Some(ip) = parse::ipv4_untagged(ctx) else {
        return pass(Reason::FwdNotOurs);
    };
    // SAFETY: `ipv4_untagged` bounds-checked the IPv4 header.
    if unsafe { (*ip).ttl } <= 1 {
        return pass(Reason::FwdTtlExpired);
    }
    if rewrite::v4_ttl_decrement(ctx, ip, parse::ETH_HLEN).is_err() {
        return Verdict {
            reason: Reason::FwdNotOurs,
            action: TC_ACT_SHOT,
        };
    }
    Verdict {
        reason: Reason::FwdRedirected,
        action: redirect_neigh(egress_ifindex),
    }
}

/// The bridge `xdp_uplink` chose, if this frame carries its note.
#[inline(always)]
fn take_meta(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading a field of the program's own context.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + size_of::<XdpMeta>() > ctx.data() {
        return None;
    }
    // SAFETY: bounds-checked against `data` just above.
    let note = unsafe { *(meta as *const XdpMeta) };
    (note.magic == XDP_META_MAGIC).then_some(note.egress_ifindex)
}

/// Hands the packet to `ifindex`, resolving the next hop's MAC through the neighbour table.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: no parameters are passed; the kernel does the FIB and neighbour lookups.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[inline(always)]
pub fn pass(reason: Reason) -> Verdict {
    Verdict {
        reason,
        action: TC_ACT_OK,
    }
}
