//! The flow table: what the uplink's translation remembers so that `tc_reply` can restore the
//! exact address and port each client used, and how long ago each flow was last seen (for
//! the userspace sweep's timeouts).

use aya_ebpf::helpers::generated::bpf_jiffies64;
use portmap_common::{Addr, FLOW_CLOSING, FlowKey, FlowState, FragKey, FragTarget, proto};

use crate::{family::Family, lookup, parse::Packet};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Now, in jiffies: a memory load, cheap enough for every packet (`bpf_ktime_get_ns` reads a
/// clock, which costs tens of nanoseconds in a VM).
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: no arguments, no side effects.
    unsafe { bpf_jiffies64() as u32 }
}

/// Whether a TCP packet ends its connection (FIN or RST).
#[inline(always)]
pub fn closes(pkt: &Packet) -> bool {
    if pkt.proto != proto::TCP {
        return false;
    }
    // Flags are byte 13 of the TCP header.
    let Some(flags) = pkt.l4_at::<u8>(13) else {
        return false;
    };
    // SAFETY: bounds-checked by `l4_at`.
    unsafe { *flags & (TCP_FIN | TCP_RST) != 0 }
}

/// Marks a flow seen now, and closing if `closing`. Writes only what changed, so that an
/// established flow's entry is written at most once a jiffy.
#[inline(always)]
pub fn touch<const N: usize>(flow: *mut FlowState<N>, closing: bool) {
    let now = now();
    // SAFETY: a pointer into a live map value.
    unsafe {
        if (*flow).seen != now {
            (*flow).seen = now;
        }
        if closing && (*flow).flags & FLOW_CLOSING == 0 {
            (*flow).flags |= FLOW_CLOSING;
        }
    }
}

/// Remembers a translated flow. Most packets belong to a flow already recorded with the same
/// values; they only pay a lookup (which also marks the entry recently used) and, at most once
/// a jiffy, a write of the time. `flow` gets its time and closing mark here.
#[inline(always)]
pub fn record<const N: usize, F: Family<N>>(
    key: &FlowKey<N>,
    flow: &mut FlowState<N>,
    closing: bool,
) -> Result<(), i32> {
    if let Some(existing) = lookup::flow::<N, F>(key) {
        // SAFETY: a pointer into a live map value.
        if unsafe { (*existing).same_flow(flow) } {
            touch(existing, closing);
            return Ok(());
        }
    }
    flow.seen = now();
    if closing {
        flow.flags |= FLOW_CLOSING;
    }
    // Each table at its own call site, so that the verifier can call its map's code directly
    // (`bpftool prog dump xlated`: it does in the uplink programs; in tc_reply's hairpin path
    // LLVM merges the two into one call, which the kernel then makes through the map's ops).
    if key.proto == proto::TCP {
        F::tcp_flows().insert(key, flow, 0)
    } else {
        F::udp_flows().insert(key, flow, 0)
    }
}

/// The key a datagram's fragments share: its addresses as they arrive, IP id and protocol.
#[inline(always)]
pub fn fragment_key<const N: usize>(pkt: &Packet, src: Addr<N>, dst: Addr<N>) -> FragKey<N> {
    FragKey {
        src,
        dst,
        id: pkt.id,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// [`fragment_key`] of the packet at hand, whose addresses are still as they arrived.
#[inline(always)]
pub fn arrived_fragment_key<const N: usize, F: Family<N>>(pkt: &Packet) -> FragKey<N> {
    // SAFETY: `parse::ip` bounds-checked the IP header.
    let (src, dst) = unsafe { ((*F::src(pkt.l3)).get(), (*F::dst(pkt.l3)).get()) };
    fragment_key(pkt, src, dst)
}

/// Remembers how a first fragment was translated, for the fragments after it.
#[inline(always)]
pub fn record_fragment<const N: usize, F: Family<N>>(key: &FragKey<N>, target: &FragTarget<N>) {
    // A full LRU evicts; a refusal only means later fragments pass untranslated (counted).
    let _ = F::frags().insert(key, target, 0);
}
