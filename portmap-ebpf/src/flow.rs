//! The flow table: what `xdp_uplink` remembers so that `tc_reply` can restore the exact address
//! and port each client used.

use portmap_common::{FlowKeyV4, FlowV4};

use crate::{lookup, maps::FLOWS_V4};

/// Remembers a translated flow. Most packets belong to a flow already recorded with the same
/// values; they only pay a lookup (which also marks the entry recently used), not a write.
#[inline(always)]
pub fn record(key: &FlowKeyV4, flow: &FlowV4) -> Result<(), i32> {
    if lookup::flow(key).as_ref() == Some(flow) {
        return Ok(());
    }
    FLOWS_V4.insert(key, flow, 0)
}
