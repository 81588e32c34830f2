//! Sending a packet on from TC, as a router would, without the host's netfilter: Docker's
//! FORWARD chain (policy DROP, no per-port ACCEPT for ports portmap publishes) never sees it,
//! and neither does conntrack.

use aya_ebpf::{
    Global,
    bindings::{TC_ACT_OK, bpf_redir_neigh},
    helpers::generated::bpf_redirect_neigh,
};
use portmap_common::Reason;

/// What a TC program decided, and why.
pub struct Verdict {
    pub reason: Reason,
    pub action: i32,
}

impl Verdict {
    /// Left to the stack.
    #[inline(always)]
    pub fn pass(reason: Reason) -> Self {
        Self {
            reason,
            action: TC_ACT_OK,
        }
    }
}

/// Whether `bpf_redirect_neigh` takes a next hop on this kernel; set by the loader.
#[unsafe(no_mangle)]
static NEXTHOP_PARAMS: Global<u32> = Global::new(0);

/// Hands the packet to `ifindex`, resolving the next hop by a route lookup and its MAC through
/// the neighbour table.
#[inline(always)]
pub fn via_route(ifindex: u32) -> i32 {
    // SAFETY: no parameters are passed; the kernel does the FIB and neighbour lookups.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Hands the packet to `ifindex` for a destination on that link, which is its own next hop (a
/// container on its bridge): only the neighbour table is consulted, where the kernel allows it
/// (5.11 and later); before, the route is looked up.
#[inline(always)]
pub fn to_onlink(ifindex: u32, mut nexthop: bpf_redir_neigh) -> i32 {
    if NEXTHOP_PARAMS.load() == 0 {
        return via_route(ifindex);
    }
    // SAFETY: `nexthop` outlives the call and its size is passed with it.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut nexthop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}
