//! The maps, declared once. Their names, key and value layouts and sizes come from
//! `portmap-common`, which the loader reads too.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use portmap_common::{
    BindingKeyV4, BindingStats, BindingV4, FlowKeyV4, FlowV4, MAX_BINDING_KEYS, MAX_BINDINGS,
    MAX_FLOWS, reason::REASON_COUNT,
};

/// Published ports. Not preallocated, so that an entry replaced while a packet reads it is
/// freed after an RCU grace period instead of being reused under the reader.
#[map]
pub static BINDINGS_V4: HashMap<BindingKeyV4, BindingV4> =
    HashMap::with_max_entries(MAX_BINDING_KEYS, BPF_F_NO_PREALLOC);

/// Translated flows, keyed as the container's replies look.
#[map]
pub static FLOWS_V4: LruHashMap<FlowKeyV4, FlowV4> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static BINDING_STATS: PerCpuArray<BindingStats> =
    PerCpuArray::with_max_entries(MAX_BINDINGS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map]
pub static BINDING_GEN: Array<u32> = Array::with_max_entries(MAX_BINDINGS, 0);
