//! The dataplane handle: load the eBPF object, fill its maps, attach its programs, pin its maps
//! for other `portmap` commands, and read its counters.

use std::{
    borrow::Borrow,
    collections::HashMap as StdHashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::Path,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType,
        TestRun as _, TestRunOptions, Xdp, XdpMode,
        tc::SchedClassifierLinkId,
        tc::{self, TcError},
    },
    util::{KernelVersion, nr_cpus},
};
use portmap_common::{
    Addr, BindingKey, BindingStats, BindingTarget, BridgeAddrs, FlowKey, FlowKeyV4, FlowKeyV6,
    FlowState, FlowV4, FlowV6, MAX_BINDINGS, MAX_LOCAL_ADDRS, MAX_TCP_FLOWS, Reason, globals,
    names, programs,
};

use crate::{
    batch,
    netdev::{self, HostAddrs, Interface},
    plan::Binding,
};

/// The eBPF object, built by `build.rs` from `portmap-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmap-bpf"));

/// Loaded programs and maps. Dropping it detaches every program it attached.
pub struct Dataplane {
    ebpf: Ebpf,
    /// What is published, with counter slots.
    published: Vec<Published>,
    /// The host's addresses: the local ones wildcard bindings match, and each bridge's own,
    /// which hairpinned connections get as source.
    addrs: HostAddrs,
    /// Bridges bindings send to, each with `tc_reply` once attached.
    bridges: Vec<Interface>,
    /// Whether the programs are attached: from then on, a new bridge gets `tc_reply` at once.
    attached: bool,
    /// The bridge ports `tc_port` is attached to, with its link there.
    ports: Vec<(Interface, SchedClassifierLinkId)>,
    /// Binding ids: handed out from `next_id` up, reused once released.
    ids: IdPool,
    /// The cookie of the network namespace served, which the socket programs compare; `None`
    /// where the kernel cannot tell it (before 5.14).
    netns_cookie: Option<u64>,
    /// What the binding maps hold now, so that a change writes only what it changes.
    entries: Entries,
}

/// The binding maps' contents, as last written.
#[derive(Default)]
struct Entries {
    v4: KeyMap<4>,
    v6: KeyMap<16>,
    /// Whether two bindings want one key (which the planner refuses): removing one must then
    /// recompute what the other gets.
    shared: bool,
}

/// How long an idle flow is remembered, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// UDP: no datagram either way for this long ends the flow.
    pub udp: std::time::Duration,
    /// Established TCP.
    pub tcp: std::time::Duration,
    /// TCP after a FIN or RST.
    pub tcp_closing: std::time::Duration,
}

impl Default for FlowTimeouts {
    /// UDP 120 s and closing TCP 10 s, as conntrack's `udp_timeout_stream` and Cilium's close
    /// timeout; established TCP a day (conntrack keeps it five; a day bounds what a client
    /// that vanished without a FIN keeps in the table).
    fn default() -> Self {
        Self {
            udp: std::time::Duration::from_secs(120),
            tcp: std::time::Duration::from_secs(86_400),
            tcp_closing: std::time::Duration::from_secs(10),
        }
    }
}

/// Binding ids and their generations.
#[derive(Default)]
struct IdPool {
    next_id: u32,
    released: Vec<u32>,
    /// Each id's current generation, as [`names::BINDING_GEN`] holds it.
    gens: StdHashMap<u32, u32>,
}

impl IdPool {
    fn take(&mut self) -> Option<u32> {
        self.released.pop().or_else(|| {
            (self.next_id < MAX_BINDINGS).then(|| {
                self.next_id += 1;
                self.next_id - 1
            })
        })
    }

    /// For an id published before, its next generation, recorded as current; `None` for one
    /// never used (generation 0, as the map starts), now recorded as used.
    fn reuse(&mut self, id: u32) -> Option<u32> {
        if let std::collections::hash_map::Entry::Vacant(first) = self.gens.entry(id) {
            first.insert(0);
            return None;
        }
        Some(self.bump(id))
    }

    /// The id's next generation, recorded as current.
    fn bump(&mut self, id: u32) -> u32 {
        let generation = self.gens.entry(id).or_default();
        *generation = generation.wrapping_add(1);
        *generation
    }
}

/// Where the uplink's translation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkHook {
    /// `xdp_uplink` in the given mode, with `tc_forward` sending on what it translated.
    Xdp(XdpMode),
    /// `tc_uplink` at TC ingress: for uplinks where native XDP costs a copy per packet (veth).
    Tc,
}

impl std::fmt::Display for UplinkHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Xdp(XdpMode::Skb) => f.write_str("XDP, generic mode"),
            Self::Xdp(XdpMode::Hardware) => f.write_str("XDP, offloaded"),
            Self::Xdp(_) => f.write_str("XDP, driver mode"),
            Self::Tc => f.write_str("TC ingress"),
        }
    }
}

/// A binding as the kernel holds it, with the counter slot it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub binding: Binding,
    pub id: u32,
    /// The id's generation for this binding: its flows carry it.
    pub generation: u32,
    /// The bridge its container hangs off: translated packets go there.
    pub bridge: Interface,
}

/// A binding map's entries as userspace keeps them. Tens of thousands of keys are hashed
/// several times per publication; a fast hasher (the keys are ours, not an attacker's)
/// takes a few milliseconds off publishing 10,000 bindings.
type KeyMap<const N: usize> =
    StdHashMap<BindingKey<N>, BindingTarget<N>, foldhash::fast::FixedState>;

/// The kernel's binding entries of one family (`N` is its address length) for `published`: one
/// key per binding, a wildcard's with the all-zero address. Should two bindings want one key
/// (the planner refuses that, as Docker does), the one published last has it.
pub fn binding_entries<const N: usize>(published: &[Published]) -> KeyMap<N> {
    let mut entries =
        KeyMap::with_capacity_and_hasher(published.len(), foldhash::fast::FixedState::default());
    for published in published {
        let Binding {
            host_ip,
            host_port,
            proto,
            container,
            origin: _,
        } = &published.binding;
        let Some(container_ip) = octets::<N>(container.ip()) else {
            continue;
        };
        let host_addr = host_ip.map_or(Some([0; N]), octets::<N>);
        let host_addr = host_addr.expect("the planner keeps one family per binding");
        entries.insert(
            BindingKey::new(host_addr, *host_port, proto.number()),
            BindingTarget::new(
                container_ip,
                container.port(),
                published.id,
                published.bridge.index,
                published.generation,
            ),
        );
    }
    entries
}

/// How many of `published` are of the family whose addresses are `N` bytes long: the keys they
/// take if none shares one.
fn key_count<const N: usize>(published: &[Published]) -> usize {
    published
        .iter()
        .filter(|p| octets::<N>(p.binding.container.ip()).is_some())
        .count()
}

/// The bytes of `ip` if it is of the family whose addresses are `N` bytes long.
fn octets<const N: usize>(ip: IpAddr) -> Option<[u8; N]> {
    match ip {
        IpAddr::V4(v4) => v4.octets().as_slice().try_into().ok(),
        IpAddr::V6(v6) => v6.octets().as_slice().try_into().ok(),
    }
}

/// An address from map bytes of either length.
fn ip_of<const N: usize>(addr: &Addr<N>) -> IpAddr {
    match N {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&addr.0[..]).expect("N is 4"),
        )),
        _ => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&addr.0[..]).expect("N is 16"),
        )),
    }
}

impl Dataplane {
    /// Loads every program and map into the kernel; the verifier runs here. Attaches nothing.
    ///
    /// # Errors
    ///
    /// When the kernel refuses a map or a program; a verifier rejection carries its log.
    pub fn load() -> anyhow::Result<Self> {
        warn_if_memlock_limited();
        // bpf_redirect_neigh took a next hop from 5.11 (commit ba452c9e996d).
        let nexthop_params =
            u32::from(KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)));
        let netns_cookie = netns_cookie();
        let mut ebpf = EbpfLoader::new()
            // The programs use no CO-RE relocations, so the kernel's BTF is not needed; parsing
            // it would add ~40 ms to every start.
            .btf(None)
            .override_global(globals::NEXTHOP_PARAMS, &nexthop_params, true)
            .override_global(globals::NETNS_COOKIE, &netns_cookie.unwrap_or(0), true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object's maps")?;
        for name in programs::ALL {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the eBPF object has no program {name:?}"))?;
            let loaded = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                other => bail!(
                    "program {name:?} has unexpected type {:?}",
                    other.prog_type()
                ),
            };
            loaded.with_context(|| format!("the kernel refused program {name:?}"))?;
        }
        Ok(Self {
            ebpf,
            published: Vec::new(),
            addrs: HostAddrs::default(),
            bridges: Vec::new(),
            attached: false,
            ports: Vec::new(),
            ids: IdPool::default(),
            netns_cookie,
            entries: Entries::default(),
        })
    }

    /// Attaches the socket programs to the cgroup (v2) at `cgroup`: its processes' connects and
    /// sends to published ports go to the containers, in this network namespace only. Beside
    /// any programs already there. Detached when `self` is dropped.
    ///
    /// # Errors
    ///
    /// When the kernel cannot tell this namespace's cookie (before 5.14: the programs would
    /// translate in every namespace of the cgroup), `cgroup` is not a cgroup v2 directory, or
    /// an attach fails.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        if self.netns_cookie.is_none() {
            bail!(
                "this kernel cannot tell a network namespace's cookie (SO_NETNS_COOKIE, 5.14), \
                 so host-local connections would be translated in every namespace of {}",
                cgroup.display()
            );
        }
        let dir = fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in programs::SOCKET {
            let program: &mut CgroupSockAddr = self.program(name)?;
            // Attached as a bpf_link (5.7 and later; 5.14 is needed anyway), which always
            // runs beside other programs of the cgroup and takes no mode flag: `Single` is
            // the one that passes none.
            program
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        }
        Ok(())
    }

    /// The kernel's jiffies (their low 32 bits), the clock flows are stamped with.
    ///
    /// # Errors
    ///
    /// When the clock program cannot be run.
    pub fn jiffies(&mut self) -> anyhow::Result<u32> {
        let program: &mut Xdp = self.program(programs::CLOCK)?;
        // The smallest frame a test run takes: an Ethernet header.
        let frame = [0u8; 14];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        let ran = program
            .test_run(opts)
            .context("reading the kernel's jiffies")?;
        Ok(ran.return_value)
    }

    /// Deletes the flows whose binding is gone or re-pointed, and those idle longer than
    /// `timeouts` at `hz` jiffies a second; returns how many.
    ///
    /// # Errors
    ///
    /// When the maps cannot be read.
    pub fn expire_flows(&mut self, timeouts: &FlowTimeouts, hz: u32) -> anyhow::Result<usize> {
        let now = self.jiffies()?;
        let live: StdHashMap<u32, u32> = self
            .published
            .iter()
            .map(|p| (p.id, p.generation))
            .collect();
        let limit = |d: std::time::Duration| {
            u32::try_from(d.as_secs().saturating_mul(u64::from(hz))).unwrap_or(u32::MAX / 2)
        };
        let (udp, tcp, closing) = (
            limit(timeouts.udp),
            limit(timeouts.tcp),
            limit(timeouts.tcp_closing),
        );
        let expired = |proto: u8, flags: u8, seen: u32, binding: u32, generation: u32| {
            let idle = now.wrapping_sub(seen);
            let timeout = match proto {
                _ if flags & portmap_common::FLOW_CLOSING != 0 => closing,
                portmap_common::proto::TCP => tcp,
                _ => udp,
            };
            // A `seen` a little ahead of `now` (another CPU stamped it meanwhile) wraps to a
            // huge idle time: only ages under half the clock's range count.
            live.get(&binding) != Some(&generation) || (idle > timeout && idle < u32::MAX / 2)
        };
        sweep_all(&mut self.ebpf, &expired)
    }

    /// The loaded object, for tests that run its programs directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Publishes `bindings` toward `bridge`, all or nothing: the first publication of a
    /// dataplane. Wildcard bindings match the local addresses of the last
    /// [`Dataplane::set_host_addrs`].
    ///
    /// # Errors
    ///
    /// As [`Dataplane::add`].
    pub fn publish(
        &mut self,
        bindings: &[Binding],
        bridge: &Interface,
    ) -> anyhow::Result<Vec<Published>> {
        self.add(bindings, bridge)
    }

    /// Adds `bindings`, whose containers hang off `bridge`, beside what is published, all or
    /// nothing: each gets a counter slot (zeroed) and a fresh generation, and only the kernel
    /// entries that are new are written. A bridge not served yet gets `tc_reply` first.
    ///
    /// # Errors
    ///
    /// When the ids run out, the bridge cannot be served, or a map write fails; nothing stays
    /// written then.
    pub fn add(
        &mut self,
        bindings: &[Binding],
        bridge: &Interface,
    ) -> anyhow::Result<Vec<Published>> {
        self.serve_bridge(bridge)?;
        let mut added = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let Some(id) = self.ids.take() else {
                self.ids
                    .released
                    .extend(added.iter().map(|p: &Published| p.id));
                bail!("no room for {binding}: {MAX_BINDINGS} bindings are published already");
            };
            added.push(Published {
                binding: binding.clone(),
                id,
                generation: 0,
                bridge: bridge.clone(),
            });
        }
        let written = self.write_added(&mut added);
        if written.is_err() {
            self.ids.released.extend(added.iter().map(|p| p.id));
        }
        written?;
        self.published.extend(added.iter().cloned());
        Ok(added)
    }

    fn write_added(&mut self, added: &mut [Published]) -> anyhow::Result<()> {
        let cpus = nr_cpus().map_err(|(what, e)| anyhow!(e).context(what))?;
        let [stats, gens] = self
            .ebpf
            .maps_disjoint_mut([names::BINDING_STATS, names::BINDING_GEN]);
        let mut stats: PerCpuArray<_, BindingStats> = typed(stats, names::BINDING_STATS)?;
        let mut gens: Array<_, u32> = typed(gens, names::BINDING_GEN)?;
        for entry in added.iter_mut() {
            // An id never used before has generation 0 and zero counters, as the maps were
            // created: nothing to write (ten thousand bindings would take twenty thousand
            // calls). A reused one gets the next generation, in place before the binding is
            // visible so that its first flow already carries it, and its counters zeroed.
            let Some(generation) = self.ids.reuse(entry.id) else {
                entry.generation = 0;
                continue;
            };
            entry.generation = generation;
            gens.set(entry.id, entry.generation, 0)
                .with_context(|| format!("setting the generation of {}", entry.binding))?;
            stats
                .set(entry.id, zeroed_stats(cpus)?, 0)
                .with_context(|| format!("zeroing the counters of {}", entry.binding))?;
        }
        self.apply_added(added)
    }

    /// Withdraws the bindings with these ids. Their kernel entries go first, so no new packet is
    /// translated for them; then their generation moves on, which ends every flow they had at
    /// once (the replies of a UDP flow to a removed or re-pointed binding are not translated
    /// again). [`Dataplane::sweep_flows`] clears the dead flows out of the table later.
    ///
    /// # Errors
    ///
    /// When a map write fails.
    pub fn remove(&mut self, ids: &[u32]) -> anyhow::Result<Vec<Published>> {
        // Only the removed move; the rest stay where they are (10,000 moves cost a removal more
        // than its map writes).
        let mut kept = std::mem::take(&mut self.published);
        // Sorted and searched: as cheap as a scan for one id, and no pairwise walk for many.
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        let removed: Vec<Published> = kept
            .extract_if(.., |p| ids.binary_search(&p.id).is_ok())
            .collect();
        let applied = self.apply_removed(&removed, &kept);
        self.published = kept;
        if let Err(error) = applied {
            self.published.extend(removed);
            return Err(error);
        }
        let mut gens: Array<_, u32> =
            typed(self.ebpf.map_mut(names::BINDING_GEN), names::BINDING_GEN)?;
        for entry in &removed {
            let generation = self.ids.bump(entry.id);
            gens.set(entry.id, generation, 0)
                .with_context(|| format!("ending the flows of {}", entry.binding))?;
            self.ids.released.push(entry.id);
        }
        Ok(removed)
    }

    /// Deletes the flows whose binding is gone or re-pointed; returns how many.
    ///
    /// # Errors
    ///
    /// When the maps cannot be read.
    pub fn sweep_flows(&mut self) -> anyhow::Result<usize> {
        let live: StdHashMap<u32, u32> = self
            .published
            .iter()
            .map(|p| (p.id, p.generation))
            .collect();
        let dead = |_: u8, _: u8, _: u32, binding: u32, generation: u32| {
            live.get(&binding) != Some(&generation)
        };
        sweep_all(&mut self.ebpf, &dead)
    }

    /// What is published now.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// Takes in the host's addresses: wildcard bindings match its local ones (only those that
    /// come or go are written), and each served bridge's own are what hairpinned connections get
    /// as source.
    ///
    /// # Errors
    ///
    /// When a map write fails; the previous addresses then stay in force.
    pub fn set_host_addrs(&mut self, addrs: HostAddrs) -> anyhow::Result<()> {
        let (before, after) = (self.addrs.local(), addrs.local());
        self.apply_local::<4>(names::LOCAL_ADDRS_V4, &before, &after)?;
        if let Err(error) = self.apply_local::<16>(names::LOCAL_ADDRS_V6, &before, &after) {
            let _ = self.apply_local::<4>(names::LOCAL_ADDRS_V4, &after, &before);
            return Err(error);
        }
        self.addrs = addrs;
        for bridge in self.bridges.clone() {
            self.describe_bridge(&bridge)?;
        }
        Ok(())
    }

    /// Moves the local-address map `name` of one family from `before` to `after`; on a failed
    /// write, what was written is undone.
    fn apply_local<const N: usize>(
        &mut self,
        name: &str,
        before: &[IpAddr],
        after: &[IpAddr],
    ) -> anyhow::Result<()>
    where
        Addr<N>: aya::Pod,
    {
        let of_family = |list: &[IpAddr]| -> std::collections::HashSet<IpAddr> {
            list.iter()
                .copied()
                .filter(|ip| octets::<N>(*ip).is_some())
                .collect()
        };
        let (before, after) = (of_family(before), of_family(after));
        let mut map: HashMap<_, Addr<N>, u8> = typed(self.ebpf.map_mut(name), name)?;
        let key = |ip: IpAddr| Addr(octets::<N>(ip).expect("filtered on the family"));
        let mut done: Vec<(IpAddr, bool)> = Vec::new();
        // Those gone first: no address that stays is touched, and the map never holds both the
        // old and the new addresses at once.
        let changes = before
            .difference(&after)
            .map(|ip| (*ip, false))
            .chain(after.difference(&before).map(|ip| (*ip, true)));
        for (ip, added) in changes {
            let written = if added {
                map.insert(key(ip), 1, 0)
            } else {
                map.remove(&key(ip))
            };
            if let Err(error) = written {
                // Backwards, so that the room the new addresses took is free again first.
                for (ip, added) in done.into_iter().rev() {
                    let _ = if added {
                        map.remove(&key(ip))
                    } else {
                        map.insert(key(ip), 1, 0)
                    };
                }
                let what = if added { "adding" } else { "removing" };
                return Err(anyhow!(error)).with_context(|| {
                    format!(
                        "{what} local address {ip} in {name} (the host has {} of the family, \
                         the map room for {MAX_LOCAL_ADDRS})",
                        after.len()
                    )
                });
            }
            done.push((ip, added));
        }
        Ok(())
    }

    /// The host's addresses last taken in.
    pub fn host_addrs(&self) -> &HostAddrs {
        &self.addrs
    }

    /// Sets just the local addresses (for tests that describe no bridge).
    ///
    /// # Errors
    ///
    /// As [`Dataplane::set_host_addrs`].
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> anyhow::Result<()> {
        let list = addrs.iter().map(|ip| ("lo".to_string(), *ip)).collect();
        self.set_host_addrs(HostAddrs::from_list(list))
    }

    /// Writes the entries of `added` (published beside what is) and nothing else, unless one of
    /// their keys is taken already: then every entry is recomputed.
    fn apply_added(&mut self, added: &[Published]) -> anyhow::Result<()> {
        let (new4, new6) = (binding_entries::<4>(added), binding_entries::<16>(added));
        let taken = new4.keys().any(|k| self.entries.v4.contains_key(k))
            || new6.keys().any(|k| self.entries.v6.contains_key(k))
            || new4.len() != key_count::<4>(added)
            || new6.len() != key_count::<16>(added);
        if taken {
            let mut all = std::mem::take(&mut self.published);
            let before = all.len();
            all.extend(added.iter().cloned());
            let applied = self.apply_all(&all);
            all.truncate(before);
            self.published = all;
            return applied;
        }
        self.apply_both(&KeyMap::default(), &new4, &KeyMap::default(), &new6)?;
        self.entries.v4.extend(new4);
        self.entries.v6.extend(new6);
        Ok(())
    }

    /// Deletes the entries of `removed`, unless two bindings share a key: then every entry
    /// `kept` wants is recomputed.
    fn apply_removed(&mut self, removed: &[Published], kept: &[Published]) -> anyhow::Result<()> {
        if self.entries.shared {
            return self.apply_all(kept);
        }
        let (old4, old6) = (
            binding_entries::<4>(removed),
            binding_entries::<16>(removed),
        );
        self.apply_both(&old4, &KeyMap::default(), &old6, &KeyMap::default())?;
        for key in old4.keys() {
            self.entries.v4.remove(key);
        }
        for key in old6.keys() {
            self.entries.v6.remove(key);
        }
        Ok(())
    }

    /// Moves both binding maps to what `published` wants, every entry computed.
    fn apply_all(&mut self, published: &[Published]) -> anyhow::Result<()> {
        let (new4, new6) = (
            binding_entries::<4>(published),
            binding_entries::<16>(published),
        );
        let (old4, old6) = (
            std::mem::take(&mut self.entries.v4),
            std::mem::take(&mut self.entries.v6),
        );
        if let Err(error) = self.apply_both(&old4, &new4, &old6, &new6) {
            self.entries.v4 = old4;
            self.entries.v6 = old6;
            return Err(error);
        }
        self.entries.shared =
            new4.len() != key_count::<4>(published) || new6.len() != key_count::<16>(published);
        self.entries.v4 = new4;
        self.entries.v6 = new6;
        Ok(())
    }

    /// Moves each binding map from its `old` entries to its `new` ones; IPv6 is undone if IPv4
    /// then fails.
    fn apply_both(
        &mut self,
        old4: &KeyMap<4>,
        new4: &KeyMap<4>,
        old6: &KeyMap<16>,
        new6: &KeyMap<16>,
    ) -> anyhow::Result<()> {
        self.apply_entries(names::BINDINGS_V6, old6, new6)?;
        let written = self.apply_entries(names::BINDINGS_V4, old4, new4);
        if written.is_err() {
            let _ = self.apply_entries(names::BINDINGS_V6, new6, old6);
        }
        written
    }

    /// Moves a binding map from `before` to `after`: new and changed keys first, then stale
    /// ones removed, so no key that stays is ever missing. On a failed write, what was written
    /// is undone.
    fn apply_entries<const N: usize>(
        &mut self,
        name: &str,
        before: &KeyMap<N>,
        after: &KeyMap<N>,
    ) -> anyhow::Result<()>
    where
        BindingKey<N>: aya::Pod,
        BindingTarget<N>: aya::Pod,
    {
        if before == after {
            return Ok(());
        }
        let (keys, values): (Vec<BindingKey<N>>, Vec<BindingTarget<N>>) = after
            .iter()
            .filter(|(key, value)| before.get(key) != Some(value))
            .map(|(key, value)| (*key, *value))
            .unzip();
        let stale: Vec<BindingKey<N>> = before
            .keys()
            .filter(|key| !after.contains_key(key))
            .copied()
            .collect();
        let mut map: HashMap<_, BindingKey<N>, BindingTarget<N>> =
            typed(self.ebpf.map_mut(name), name)?;
        let written = match batch::update(map_fd(&map), &keys, &values) {
            Ok(()) => Ok(keys.len()),
            // A kernel without batch calls (before 5.6): one entry at a time.
            Err(stopped) if stopped.done == 0 && unsupported(&stopped.error) => {
                write_each(&mut map, &keys, &values)
            }
            Err(stopped) => Err(stopped),
        };
        if let Err(stopped) = written {
            for key in &keys[..stopped.done] {
                let _ = match before.get(key) {
                    Some(old) => map.insert(key, old, 0),
                    None => map.remove(key),
                };
            }
            let key = &keys[stopped.done.min(keys.len() - 1)];
            return Err(anyhow!(stopped.error)).with_context(|| {
                format!(
                    "writing {} port {} to {name} ({} entries)",
                    ip_of(&key.addr),
                    u16::from_be_bytes(key.port),
                    after.len()
                )
            });
        }
        // Stale keys last, so no key that stays is ever missing; one that is gone already
        // (a concurrent change) stops a batch, and the rest go one at a time.
        if let Err(stopped) = batch::delete(map_fd(&map), &stale) {
            for key in &stale[stopped.done..] {
                let _ = map.remove(key);
            }
        }
        Ok(())
    }

    /// Tells the programs `bridge`'s own addresses, from the last host addresses taken in.
    fn describe_bridge(&mut self, bridge: &Interface) -> anyhow::Result<()> {
        let (v4, v6) = self.addrs.of(&bridge.name);
        let addrs = BridgeAddrs {
            v4: Addr(v4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets()),
            v6: Addr(v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets()),
            has_v4: u8::from(v4.is_some()),
            has_v6: u8::from(v6.is_some()),
            _pad: [0; 2],
        };
        let mut map: HashMap<_, u32, BridgeAddrs> =
            typed(self.ebpf.map_mut(names::BRIDGES), names::BRIDGES)?;
        map.insert(bridge.index, addrs, 0)
            .with_context(|| format!("describing bridge {} to the programs", bridge.name))
    }

    /// Attaches `tc_reply` to every bridge bindings send to (and `bridge`), then the uplink's
    /// translation: the reverse path is in place before the first packet is translated.
    ///
    /// # Errors
    ///
    /// When an attach fails; programs already attached stay attached until `self` is dropped.
    pub fn attach(
        &mut self,
        uplink: &Interface,
        bridge: &Interface,
        hook: UplinkHook,
    ) -> anyhow::Result<()> {
        if !self.bridges.contains(bridge) {
            self.bridges.push(bridge.clone());
        }
        for bridge in self.bridges.clone() {
            self.attach_tc(programs::TC_REPLY, &bridge)?;
        }
        self.attached = true;
        self.sync_ports();
        warn_if_flows_cramped(uplink, hook);
        let mode = match hook {
            UplinkHook::Tc => return self.attach_tc(programs::TC_UPLINK, uplink).map(drop),
            UplinkHook::Xdp(mode) => mode,
        };
        self.attach_tc(programs::TC_FORWARD, uplink)?;
        let xdp: &mut Xdp = self.program(programs::XDP_UPLINK)?;
        xdp.attach_to_if_index(uplink.index, mode).map_err(|error| {
            let hint = match mode {
                XdpMode::Skb => "",
                _ => " (the driver may lack native XDP: retry with `--xdp-mode skb` or `--hook tc`)",
            };
            anyhow!(error).context(format!(
                "attaching {} to {} in {mode:?} mode{hint}",
                programs::XDP_UPLINK,
                uplink.name
            ))
        })?;
        Ok(())
    }

    /// Makes `bridge` one that replies are translated on: now if the programs are attached,
    /// else when they are.
    fn serve_bridge(&mut self, bridge: &Interface) -> anyhow::Result<()> {
        if self.bridges.contains(bridge) {
            return Ok(());
        }
        self.describe_bridge(bridge)?;
        if self.attached {
            self.attach_tc(programs::TC_REPLY, bridge)?;
        }
        self.bridges.push(bridge.clone());
        if self.attached {
            self.sync_ports();
        }
        Ok(())
    }

    /// Puts `tc_port` on every port of the served bridges, and forgets ports that are gone
    /// (their link went with them). Called once attached and whenever links change. A port
    /// that cannot take it is only slower (its replies are translated on the bridge), so a
    /// failure is logged, not fatal.
    pub fn sync_ports(&mut self) {
        let mut now = std::collections::HashSet::new();
        for bridge in &self.bridges {
            match netdev::ports_of(bridge.index) {
                Ok(ports) => now.extend(ports),
                Err(error) => log::warn!("listing the ports of {}: {error}", bridge.name),
            }
        }
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ports)
            .into_iter()
            .partition(|(port, _)| now.contains(port));
        self.ports = kept;
        let attached: std::collections::HashSet<Interface> =
            self.ports.iter().map(|(port, _)| port.clone()).collect();
        if let Ok(program) = self.program::<SchedClassifier>(programs::TC_PORT) {
            for (_, link) in gone {
                // A deleted port took its link along (this only forgets it); one that left the
                // bridge loses `tc_port` here.
                let _ = program.detach(link);
            }
        }
        for port in now {
            if attached.contains(&port) {
                continue;
            }
            match self.attach_tc(programs::TC_PORT, &port) {
                Ok(link) => {
                    log::debug!("tc_port on {} (ifindex {})", port.name, port.index);
                    self.ports.push((port, link));
                }
                // A port that went away meanwhile is no loss.
                Err(error) => log::warn!(
                    "{error:#}: replies from {} are translated on the bridge instead",
                    port.name
                ),
            }
        }
    }

    /// The bridge ports `tc_port` is attached to.
    pub fn ports(&self) -> impl Iterator<Item = &Interface> {
        self.ports.iter().map(|(port, _)| port)
    }

    fn attach_tc(
        &mut self,
        name: &str,
        iface: &Interface,
    ) -> anyhow::Result<SchedClassifierLinkId> {
        // Before tcx (6.6) a classifier needs the clsact qdisc; aya uses tcx when it can.
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
            match tc::qdisc_add_clsact(&iface.name) {
                Ok(()) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("adding clsact to {}", iface.name));
                }
            }
        }
        let program: &mut SchedClassifier = self.program(name)?;
        program
            .attach(&iface.name, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {} ingress", iface.name))
    }

    fn program<'a, T>(&'a mut self, name: &str) -> anyhow::Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name:?}"))?;
        Ok(program.try_into()?)
    }

    /// Pins every map under `dir` so that `portmap stats` can read a running instance.
    ///
    /// # Errors
    ///
    /// When `dir` cannot be created on a bpffs or a map cannot be pinned.
    pub fn pin_maps(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating pin directory {}", dir.display()))?;
        for name in names::ALL {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name:?}"))?;
            map.pin(dir.join(name))
                .with_context(|| format!("pinning {name} under {}", dir.display()))?;
        }
        Ok(())
    }

    /// Counters summed over CPUs, per binding id.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn binding_stats(&self, id: u32) -> anyhow::Result<BindingStats> {
        let map: PerCpuArray<_, BindingStats> =
            typed(self.ebpf.map(names::BINDING_STATS), names::BINDING_STATS)?;
        sum_binding_stats(&map, id)
    }

    /// Every reason's counter, summed over CPUs.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn reason_stats(&self) -> anyhow::Result<Vec<(Reason, u64)>> {
        let map: PerCpuArray<_, u64> =
            typed(self.ebpf.map(names::REASON_STATS), names::REASON_STATS)?;
        sum_reasons(&map)
    }

    /// IPv4 flows currently remembered.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn flows_v4(&self) -> anyhow::Result<Vec<(FlowKeyV4, FlowV4)>> {
        flows(&self.ebpf, names::FLOWS_V4)
    }

    /// IPv6 flows currently remembered.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn flows_v6(&self) -> anyhow::Result<Vec<(FlowKeyV6, FlowV6)>> {
        flows(&self.ebpf, names::FLOWS_V6)
    }
}

/// The flows of every table in `tables`, in that order.
fn flows<const N: usize>(
    ebpf: &Ebpf,
    tables: [&str; 2],
) -> anyhow::Result<Vec<(FlowKey<N>, FlowState<N>)>>
where
    FlowKey<N>: aya::Pod,
    FlowState<N>: aya::Pod,
{
    let mut all = Vec::new();
    for name in tables {
        let map: HashMap<_, FlowKey<N>, FlowState<N>> = typed(ebpf.map(name), name)?;
        all.extend(read_all(&map, name)?);
    }
    Ok(all)
}

/// Every entry of a hash map: in chunks where the kernel can (5.6), one at a time otherwise.
fn read_all<T: Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &HashMap<T, K, V>,
    name: &str,
) -> anyhow::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    read_each(map, name, |key, value| entries.push((*key, *value)))?;
    Ok(entries)
}

/// Hands every entry of a hash map to `visit`, as [`read_all`] reads them. The flow table is
/// read this way every few seconds: two calls per flow would cost the CPU that the flows'
/// packets need (half a second per full table), and a copy of it all would stay in the
/// allocator's hands.
fn read_each<T: Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &HashMap<T, K, V>,
    name: &str,
    mut visit: impl FnMut(&K, &V),
) -> anyhow::Result<()> {
    let chunked = batch::read_each(map_fd(map), |keys: &[K], values: &[V]| {
        for (key, value) in keys.iter().zip(values) {
            visit(key, value);
        }
    });
    match chunked {
        Ok(()) => Ok(()),
        Err(stopped) if stopped.done == 0 && unsupported(&stopped.error) => {
            for (key, value) in map.iter().filter_map(Result::ok) {
                visit(&key, &value);
            }
            Ok(())
        }
        Err(stopped) => Err(anyhow!(stopped.error)).with_context(|| format!("reading {name}")),
    }
}

/// Deletes the flows of every table that `expired` says are over, as [`sweep`]; returns how
/// many.
fn sweep_all(
    ebpf: &mut Ebpf,
    expired: &dyn Fn(u8, u8, u32, u32, u32) -> bool,
) -> anyhow::Result<usize> {
    let mut swept = 0;
    for name in names::FLOWS_V4 {
        swept += sweep::<4>(ebpf, name, expired)?;
    }
    for name in names::FLOWS_V6 {
        swept += sweep::<16>(ebpf, name, expired)?;
    }
    Ok(swept)
}

/// Deletes the flows of one table that `expired(proto, flags, seen, binding_id, generation)`
/// says are over; returns how many.
fn sweep<const N: usize>(
    ebpf: &mut Ebpf,
    name: &str,
    expired: &dyn Fn(u8, u8, u32, u32, u32) -> bool,
) -> anyhow::Result<usize>
where
    FlowKey<N>: aya::Pod,
    FlowState<N>: aya::Pod,
{
    let mut flows: HashMap<_, FlowKey<N>, FlowState<N>> = typed(ebpf.map_mut(name), name)?;
    sweep_map(&mut flows, name, expired)
}

/// [`sweep`], on a flow table however it was opened.
fn sweep_map<const N: usize, T: std::borrow::BorrowMut<MapData>>(
    flows: &mut HashMap<T, FlowKey<N>, FlowState<N>>,
    name: &str,
    expired: &dyn Fn(u8, u8, u32, u32, u32) -> bool,
) -> anyhow::Result<usize>
where
    FlowKey<N>: aya::Pod,
    FlowState<N>: aya::Pod,
{
    let mut stale: Vec<FlowKey<N>> = Vec::new();
    read_each(flows, name, |key, flow| {
        if expired(
            key.proto,
            flow.flags,
            flow.seen,
            flow.binding_id,
            flow.generation,
        ) {
            stale.push(*key);
        }
    })?;
    // A flow the LRU evicted meanwhile is already gone: it stops a batch, and is skipped.
    let mut rest = &stale[..];
    while let Err(stopped) = batch::delete(map_fd(flows), rest) {
        if stopped.done == 0 && unsupported(&stopped.error) {
            for key in rest {
                let _ = flows.remove(key);
            }
            break;
        }
        rest = &rest[(stopped.done + 1).min(rest.len())..];
    }
    Ok(stale.len())
}

/// The file descriptor of a typed map, for the batch calls.
fn map_fd<T: Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    map: &HashMap<T, K, V>,
) -> std::os::fd::BorrowedFd<'_> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    map.map().fd().as_fd()
}

/// Whether a batch call failed because this kernel has none.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        // ENOTSUPP (524) is the kernel's own, not in libc.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | 524)
    )
}

/// Writes the entries one call each; on a failure, how many were written.
fn write_each<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<usize, batch::Stopped> {
    for (done, (key, value)) in keys.iter().zip(values).enumerate() {
        if let Err(error) = map.insert(key, value, 0) {
            return Err(batch::Stopped {
                done,
                error: io::Error::other(error.to_string()),
            });
        }
    }
    Ok(keys.len())
}

/// This network namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14), if the kernel tells it.
fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid out-pointers of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}

fn zeroed_stats(cpus: usize) -> Result<PerCpuValues<BindingStats>, io::Error> {
    PerCpuValues::try_from(vec![BindingStats::default(); cpus])
}

/// A map of the object as its typed view, or an error naming it.
fn typed<M, T>(map: Option<M>, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<M, Error = aya::maps::MapError>,
{
    let map = map.ok_or_else(|| anyhow!("the eBPF object has no map {name:?}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn sum_binding_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, BindingStats>,
    id: u32,
) -> anyhow::Result<BindingStats> {
    let mut total = BindingStats::default();
    for cpu in map.get(&id, 0)?.iter() {
        total.add(cpu);
    }
    Ok(total)
}

fn sum_reasons<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> anyhow::Result<Vec<(Reason, u64)>> {
    Reason::ALL
        .iter()
        .map(|&reason| Ok((reason, map.get(&(reason as u32), 0)?.iter().sum())))
        .collect()
}

/// Empties the flow tables of the instance whose maps are pinned at `dir`, as `conntrack -F`
/// empties conntrack's: every flow's next packet is recorded afresh, and the replies of a flow
/// in between are not translated. For benchmarks, so that each round starts from the same state
/// in every mode. Returns how many flows there were.
///
/// # Errors
///
/// A flow table that is not pinned there, or that cannot be read.
pub fn forget_pinned_flows(dir: &Path) -> anyhow::Result<usize> {
    fn forget<const N: usize>(dir: &Path, name: &str) -> anyhow::Result<usize>
    where
        FlowKey<N>: aya::Pod,
        FlowState<N>: aya::Pod,
    {
        let path = dir.join(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned {}", path.display()))?;
        let map = aya::maps::Map::from_map_data(data)
            .with_context(|| format!("opening the pinned {}", path.display()))?;
        let mut flows: HashMap<_, FlowKey<N>, FlowState<N>> = typed(Some(map), name)?;
        sweep_map(&mut flows, name, &|_, _, _, _, _| true)
    }
    let mut forgotten = 0;
    for name in names::FLOWS_V4 {
        forgotten += forget::<4>(dir, name)?;
    }
    for name in names::FLOWS_V6 {
        forgotten += forget::<16>(dir, name)?;
    }
    Ok(forgotten)
}

/// Unpins every map under `dir` and removes it; leaves nothing behind on the bpffs.
pub fn unpin(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Warns when an uplink's connections can reach only part of the TCP flow table: it keeps a
/// share per CPU, and a connection takes its entry from the CPU that receives it.
fn warn_if_flows_cramped(uplink: &Interface, hook: UplinkHook) {
    let (Some(spread), Ok(cpus)) = (netdev::receive_spread(uplink), nr_cpus()) else {
        return;
    };
    let spread_by_rps = spread.rps && hook == UplinkHook::Tc;
    if spread_by_rps || spread.queues == 0 || spread.queues >= cpus {
        return;
    }
    let share = MAX_TCP_FLOWS as usize / cpus;
    let remedy = match hook {
        UplinkHook::Tc => "more queues (`ethtool -L`) or RPS",
        UplinkHook::Xdp(_) => "more queues (`ethtool -L`), or `--hook tc` with RPS",
    };
    log::warn!(
        "{} has {} receive queue(s) for {cpus} CPUs{}: the TCP flow table keeps {share} \
         connections per CPU, so this uplink's fit in {} of its {MAX_TCP_FLOWS}; {remedy} \
         would spread them",
        uplink.name,
        spread.queues,
        if spread.rps {
            " (RPS comes after XDP)"
        } else {
            " and no RPS"
        },
        share * spread.queues,
    );
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Raising it needs CAP_SYS_RESOURCE,
/// which containers and some sandboxes lack; on newer kernels memory is charged to the cgroup
/// and the limit is irrelevant, so a refusal is worth a warning, never a failure.
fn warn_if_memlock_limited() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let error = io::Error::last_os_error();
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0)) {
            log::warn!("could not lift RLIMIT_MEMLOCK ({error}); loading may fail on this kernel");
        } else {
            log::debug!("could not lift RLIMIT_MEMLOCK ({error}); not needed on this kernel");
        }
    }
}
