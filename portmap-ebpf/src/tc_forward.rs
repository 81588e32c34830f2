//! `tc_forward`: TC ingress on the uplink. A frame that `xdp_uplink` translated goes straight to
//! the container's bridge, as a router would send it, without the host's netfilter: Docker's
//! FORWARD chain (policy DROP, no per-port ACCEPT for ports portmap publishes) never sees it,
//! and neither does conntrack.

use core::mem::size_of;

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::generated::bpf_redirect_neigh,
    programs::TcContext,
};

const AF_INET: u32 = 2;
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
    // SAFETY: as above; read before the checksum helper may move packet data.
    let container = unsafe { (*ip).dst };
    if rewrite::v4_ttl_decrement(ctx, ip, parse::ETH_HLEN).is_err() {
        return Verdict {
            reason: Reason::FwdNotOurs,
            action: TC_ACT_SHOT,
        };
    }
    Verdict {
        reason: Reason::FwdRedirected,
        action: redirect_neigh_to(egress_ifindex, container),
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

/// Whether `bpf_redirect_neigh` takes a next hop on this kernel; set by the loader.
#[unsafe(no_mangle)]
static NEXTHOP_PARAMS: Global<u32> = Global::new(0);

/// Hands the packet to `ifindex`, resolving the next hop by a route lookup and its MAC through
/// the neighbour table.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: no parameters are passed; the kernel does the FIB and neighbour lookups.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// [`redirect_neigh`] to a destination on `ifindex`'s own link, which is its own next hop: a
/// container on its bridge. Skips the route lookup where the kernel allows.
#[inline(always)]
pub fn redirect_neigh_to(ifindex: u32, onlink: [u16; 2]) -> i32 {
    if NEXTHOP_PARAMS.load() == 0 {
        return redirect_neigh(ifindex);
    }
    let mut params = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            // SAFETY: same size; the kernel wants the address as it is on the wire.
            ipv4_nh: unsafe { core::mem::transmute::<[u16; 2], u32>(onlink) },
        },
    };
    // SAFETY: `params` outlives the call and its size is passed with it.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut params,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

#[inline(always)]
pub fn pass(reason: Reason) -> Verdict {
    Verdict {
        reason,
        action: TC_ACT_OK,
    }
}
