//! The uplink's fast path: each CPU remembers the translations it made recently, in a small
//! direct-mapped cache indexed by a hash of the packet's addresses and ports.
//!
//! A flow's first packet takes the slow path: the binding lookup, then the flow table's lookup
//! (and insert). Those are two hash-table lookups, most of a translated packet's cost. The
//! packets after it find their translation here with one array access, as long as:
//! - the binding's generation has not moved on (removed or re-pointed: [`lookup::live_flow`]'s
//!   rule), checked on every packet;
//! - the slow path confirmed the flow in the flow table within the last [`CONFIRM_JIFFIES`], so
//!   that an entry the LRU evicted, or the sweep expired, is recorded again within that time,
//!   and the flow's entry keeps being marked recently used;
//! - the packet is a whole datagram, and for TCP neither a SYN (a new connection on an old
//!   tuple) nor a FIN or RST (which the flow table must record).
//!
//! [`lookup::live_flow`]: crate::lookup::live_flow

use portmap_common::{Addr, BindingKey, FlowKey, FlowState, RECENT_SLOTS, Recent, proto};

use crate::{
    family::Family,
    flow,
    maps::BINDING_GEN,
    parse::{Packet, Piece},
};

/// How long a remembered translation is used before the slow path looks at the flow table
/// again: 50 jiffies, 0.2 s at the usual HZ of 250 (0.05 s at 1000, 0.5 s at 100), well under
/// the shortest flow timeout, so that a flow in use is never expired for want of being seen.
const CONFIRM_JIFFIES: u32 = 50;

const TCP_SYN_FIN_RST: u8 = 0x07;

/// The slot `pkt` maps to in this CPU's cache, if the packet may take the fast path at all.
#[inline(always)]
pub fn slot<const N: usize, F: Family<N>>(
    pkt: &Packet,
    host: &BindingKey<N>,
    client: &Addr<N>,
    client_port: u16,
) -> Option<*mut Recent<N>> {
    if pkt.piece != Piece::Whole {
        return None;
    }
    if pkt.proto == proto::TCP {
        // SAFETY: bounds-checked by `l4_at`; the flags are byte 13.
        let flags = unsafe { *pkt.l4_at::<u8>(13)? };
        if flags & TCP_SYN_FIN_RST != 0 {
            return None;
        }
    }
    let mut h = u32::from(client_port) << 16 | u32::from(u16::from_ne_bytes(host.port));
    h = h.wrapping_mul(0x9e37_79b1) ^ u32::from(pkt.proto);
    let mut i = 0;
    while i < N / 4 {
        h = (h ^ client.word(i)).wrapping_mul(0x85eb_ca77);
        h = (h ^ host.addr.word(i)).wrapping_mul(0xc2b2_ae3d);
        i += 1;
    }
    F::recent().get_ptr_mut((h >> 16) & (RECENT_SLOTS - 1))
}

/// The translation in `slot`, if it is `pkt`'s and still good.
#[inline(always)]
pub fn fresh<const N: usize>(
    slot: *mut Recent<N>,
    pkt: &Packet,
    host: &BindingKey<N>,
    client: &Addr<N>,
    client_port: [u8; 2],
) -> bool {
    // SAFETY: a pointer into this CPU's slot of a per-CPU array, which only programs on this
    // CPU touch, one at a time.
    let r = unsafe { &*slot };
    let ours = r.proto == pkt.proto
        && r.host_port == host.port
        && r.client_port == client_port
        && r.host == host.addr
        && r.client == *client;
    ours && BINDING_GEN.get(r.binding_id) == Some(&r.generation)
        && flow::now().wrapping_sub(r.confirmed) < CONFIRM_JIFFIES
}

/// Remembers in `slot` the translation the slow path just made and recorded.
#[inline(always)]
pub fn remember<const N: usize>(
    slot: *mut Recent<N>,
    key: &FlowKey<N>,
    state: &FlowState<N>,
    egress_ifindex: u32,
) {
    // SAFETY: as in `fresh`.
    unsafe {
        *slot = Recent {
            client: key.client_addr,
            host: state.host_addr,
            container: key.container_addr,
            client_port: key.client_port,
            host_port: state.host_port,
            container_port: key.container_port,
            proto: key.proto,
            _pad: 0,
            binding_id: state.binding_id,
            generation: state.generation,
            egress_ifindex,
            confirmed: flow::now(),
        };
    }
}
