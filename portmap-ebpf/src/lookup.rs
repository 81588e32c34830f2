//! Map lookups, and nothing else: which binding a destination hits, and which flow a reply
//! belongs to.

use portmap_common::{BindingKeyV4, BindingV4, FlowKeyV4, FlowV4};

use crate::maps::{BINDING_GEN, BINDINGS_V4, FLOWS_V4};

/// The binding for a destination. One exact lookup serves every binding: the loader publishes a
/// wildcard binding as one key per local address, which is also what makes it match only the
/// host's own addresses, as Docker's `--dst-type LOCAL` does.
#[inline(always)]
pub fn binding(key: BindingKeyV4) -> Option<BindingV4> {
    // SAFETY: the value is copied out at once; a concurrent update frees the old entry only
    // after an RCU grace period (the map is not preallocated).
    unsafe { BINDINGS_V4.get(key) }.copied()
}

/// The flow a container's reply belongs to, whatever its binding's fate.
#[inline(always)]
pub fn flow(key: &FlowKeyV4) -> Option<FlowV4> {
    // SAFETY: copied out at once; an LRU eviction in between can at worst hand back another
    // flow's whole value, which the caller treats like any lookup result.
    unsafe { FLOWS_V4.get(key) }.copied()
}

/// The flow a container's reply belongs to, if its binding is still the one that recorded it:
/// removing or re-pointing a binding moves its generation on, which ends all its flows at once.
#[inline(always)]
pub fn live_flow(key: &FlowKeyV4) -> Option<FlowV4> {
    let flow = flow(key)?;
    (BINDING_GEN.get(flow.binding_id) == Some(&flow.generation)).then_some(flow)
}
