//! Map lookups, and nothing else: which binding a destination hits, which flow a reply belongs
//! to, and how a fragmented datagram's first piece was translated.

use portmap_common::{
    Addr, BindingKey, BindingTarget, FlowKey, FlowState, FragKey, FragTarget, proto,
};

use crate::{family::Family, maps::BINDING_GEN};

/// The binding for a destination: the specific binding on its address if there is one, else
/// the wildcard binding on its port, if the address is the host's own (Docker's
/// `--dst-type LOCAL`). A destination that is itself `0.0.0.0`/`::` matches nothing, though
/// the wildcard's key has that address.
///
/// A reference into the map rather than a copy, so that the caller reads each field where it
/// needs it instead of holding them all across helper calls (on the stack, which is small).
#[inline(always)]
pub fn binding<const N: usize, F: Family<N>>(
    key: &BindingKey<N>,
) -> Option<&'static BindingTarget<N>> {
    if key.addr.is_unspecified() {
        return None;
    }
    // SAFETY (each lookup): the maps are not preallocated: an update or delete replaces the
    // entry and frees the old one only after an RCU grace period, so it stays whole while this
    // program runs.
    if let Some(specific) = unsafe { F::bindings().get(key) } {
        return Some(specific);
    }
    let wildcard = BindingKey {
        addr: Addr::default(),
        ..*key
    };
    // The wildcard's key before the address check: most destinations without a specific
    // binding have no binding at all, and this way they cost one lookup less.
    let binding = unsafe { F::bindings().get(wildcard) }?;
    unsafe { F::local_addrs().get(key.addr) }.map(|_| binding)
}

/// The flow a container's reply belongs to, if its binding is still the one that recorded it:
/// removing or re-pointing a binding moves its generation on, which ends all its flows at once.
/// A pointer, so that the caller can mark the flow seen.
#[inline(always)]
pub fn live_flow<const N: usize, F: Family<N>>(key: &FlowKey<N>) -> Option<*mut FlowState<N>> {
    let flow = flow::<N, F>(key)?;
    // SAFETY: a pointer into a map value the kernel keeps alive for this program run; an LRU
    // eviction in between can at worst hand back another flow's whole value.
    let (binding_id, generation) = unsafe { ((*flow).binding_id, (*flow).generation) };
    (BINDING_GEN.get(binding_id) == Some(&generation)).then_some(flow)
}

/// The flow recorded under `key`, in its protocol's table, whatever its generation.
#[inline(always)]
pub fn flow<const N: usize, F: Family<N>>(key: &FlowKey<N>) -> Option<*mut FlowState<N>> {
    // Each table at its own call site, so that the verifier can call its map's code directly.
    if key.proto == proto::TCP {
        F::tcp_flows().get_ptr_mut(key)
    } else {
        F::udp_flows().get_ptr_mut(key)
    }
}

/// How a datagram's first fragment was translated.
#[inline(always)]
pub fn fragment<const N: usize, F: Family<N>>(key: &FragKey<N>) -> Option<FragTarget<N>> {
    // SAFETY: copied out at once.
    unsafe { F::frags().get(key) }.copied()
}
