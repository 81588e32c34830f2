//! The maps, declared once. Their names, key and value layouts and sizes come from
//! `portmap-common`, which the loader reads too.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use portmap_common::{
    Addr, BindingKey, BindingStats, BindingTarget, BridgeAddrs, FlowKey, FlowState, FragKey,
    FragTarget, MAX_BINDINGS, MAX_BRIDGES, MAX_FRAGS, MAX_LOCAL_ADDRS, MAX_SOCKS, MAX_TCP_FLOWS,
    MAX_UDP_FLOWS, RECENT_SLOTS, Recent, SockKey, SockOrig, V4, V6, reason::REASON_COUNT,
};

/// Published ports. Not preallocated, so that an entry replaced while a packet reads it is
/// freed after an RCU grace period instead of being reused under the reader.
#[map]
pub static BINDINGS_V4: HashMap<BindingKey<V4>, BindingTarget<V4>> =
    HashMap::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);
#[map]
pub static BINDINGS_V6: HashMap<BindingKey<V6>, BindingTarget<V6>> =
    HashMap::with_max_entries(MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// The host's own addresses, for wildcard bindings. Not preallocated, for the same reason.
#[map]
pub static LOCAL_ADDRS_V4: HashMap<Addr<V4>, u8> =
    HashMap::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);
#[map]
pub static LOCAL_ADDRS_V6: HashMap<Addr<V6>, u8> =
    HashMap::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

/// Translated TCP connections, keyed as the container's replies look. Each CPU keeps its own
/// LRU list: with one list shared by all, a CPU takes 128 free entries at a time under a global
/// lock, and that batch, walked through cold memory, was the fresh-connection p99 (1.6x the
/// no-NAT floor; 1.0x with a list per CPU).
#[map]
pub static TCP_FLOWS_V4: LruHashMap<FlowKey<V4>, FlowState<V4>> =
    LruHashMap::with_max_entries(MAX_TCP_FLOWS, BPF_F_NO_COMMON_LRU);
#[map]
pub static TCP_FLOWS_V6: LruHashMap<FlowKey<V6>, FlowState<V6>> =
    LruHashMap::with_max_entries(MAX_TCP_FLOWS, BPF_F_NO_COMMON_LRU);

/// Translated UDP flows, in one LRU list for all CPUs: see [`MAX_UDP_FLOWS`].
#[map]
pub static UDP_FLOWS_V4: LruHashMap<FlowKey<V4>, FlowState<V4>> =
    LruHashMap::with_max_entries(MAX_UDP_FLOWS, 0);
#[map]
pub static UDP_FLOWS_V6: LruHashMap<FlowKey<V6>, FlowState<V6>> =
    LruHashMap::with_max_entries(MAX_UDP_FLOWS, 0);

/// First fragments' translations, for the fragments after them.
#[map]
pub static FRAGS_V4: LruHashMap<FragKey<V4>, FragTarget<V4>> =
    LruHashMap::with_max_entries(MAX_FRAGS, 0);
#[map]
pub static FRAGS_V6: LruHashMap<FragKey<V6>, FragTarget<V6>> =
    LruHashMap::with_max_entries(MAX_FRAGS, 0);

#[map]
pub static BINDING_STATS: PerCpuArray<BindingStats> =
    PerCpuArray::with_max_entries(MAX_BINDINGS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map]
pub static BINDING_GEN: Array<u32> = Array::with_max_entries(MAX_BINDINGS, 0);

#[map]
pub static BRIDGES: HashMap<u32, BridgeAddrs> =
    HashMap::with_max_entries(MAX_BRIDGES, BPF_F_NO_PREALLOC);

/// Host sockets the socket programs pointed at a container: what the process asked for.
#[map]
pub static SOCK_REVNAT_V4: LruHashMap<SockKey<V4>, SockOrig<V4>> =
    LruHashMap::with_max_entries(MAX_SOCKS, 0);
#[map]
pub static SOCK_REVNAT_V6: LruHashMap<SockKey<V6>, SockOrig<V6>> =
    LruHashMap::with_max_entries(MAX_SOCKS, 0);

/// Each CPU's recent translations (see `recent.rs`).
#[map]
pub static RECENT_V4: PerCpuArray<Recent<V4>> = PerCpuArray::with_max_entries(RECENT_SLOTS, 0);
#[map]
pub static RECENT_V6: PerCpuArray<Recent<V6>> = PerCpuArray::with_max_entries(RECENT_SLOTS, 0);
