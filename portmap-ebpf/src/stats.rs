//! Counters: one per reason, and packets/bytes per binding, all per CPU so that no packet
//! waits on another CPU's cache line.

use portmap_common::Reason;

use crate::maps::{BINDING_STATS, REASON_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(slot) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only ever touched by programs running on this CPU, and
        // programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn to_container(binding_id: u32, bytes: u64) {
    if let Some(slot) = BINDING_STATS.get_ptr_mut(binding_id) {
        // SAFETY: as in `count`.
        unsafe {
            (*slot).to_container_packets += 1;
            (*slot).to_container_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn to_client(binding_id: u32, bytes: u64) {
    if let Some(slot) = BINDING_STATS.get_ptr_mut(binding_id) {
        // SAFETY: as in `count`.
        unsafe {
            (*slot).to_client_packets += 1;
            (*slot).to_client_bytes += bytes;
        }
    }
}
