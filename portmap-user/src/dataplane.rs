//! The dataplane handle: load the eBPF object, fill its maps, attach its programs, pin its maps
//! for other `portmap` commands, and read its counters.

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, TcError},
    },
    util::{KernelVersion, nr_cpus},
};
use portmap_common::{
    BindingKeyV4, BindingStats, BindingV4, FlowKeyV4, FlowV4, Reason, names, programs,
};

use crate::{netdev::Interface, plan::Binding};

/// The eBPF object, built by `build.rs` from `portmap-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmap"));

/// Loaded programs and maps. Dropping it detaches every program it attached.
pub struct Dataplane {
    ebpf: Ebpf,
}

/// A binding as the kernel holds it, with the counter slot it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub binding: Binding,
    pub id: u32,
}

impl Dataplane {
    /// Loads every program and map into the kernel; the verifier runs here. Attaches nothing.
    ///
    /// # Errors
    ///
    /// When the kernel refuses a map or a program; a verifier rejection carries its log.
    pub fn load() -> anyhow::Result<Self> {
        warn_if_memlock_limited();
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the eBPF object's maps")?;
        for name in programs::ALL {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the eBPF object has no program {name:?}"))?;
            let loaded = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                other => bail!(
                    "program {name:?} has unexpected type {:?}",
                    other.prog_type()
                ),
            };
            loaded.with_context(|| format!("the kernel refused program {name:?}"))?;
        }
        Ok(Self { ebpf })
    }

    /// The loaded object, for tests that run its programs directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Writes every binding of `bindings` to the kernel, with counter slots from 0 up, all or
    /// nothing: on failure the entries already written are removed again.
    ///
    /// # Errors
    ///
    /// When a map write fails (the map is full, or the kernel refuses).
    pub fn publish(
        &mut self,
        bindings: &[Binding],
        bridge: &Interface,
    ) -> anyhow::Result<Vec<Published>> {
        let published: Vec<Published> = bindings
            .iter()
            .enumerate()
            .map(|(id, binding)| Published {
                binding: binding.clone(),
                id: id as u32,
            })
            .collect();
        let cpus = nr_cpus().map_err(|(what, e)| anyhow!(e).context(what))?;
        let [map, stats] = self
            .ebpf
            .maps_disjoint_mut([names::BINDINGS_V4, names::BINDING_STATS]);
        let mut map: HashMap<_, BindingKeyV4, BindingV4> = typed(map, names::BINDINGS_V4)?;
        let mut stats: PerCpuArray<_, BindingStats> = typed(stats, names::BINDING_STATS)?;
        for (done, entry) in published.iter().enumerate() {
            let (key, value) = kernel_entry(entry, bridge.index);
            let written = stats
                .set(entry.id, zeroed_stats(cpus)?, 0)
                .and_then(|()| map.insert(key, value, 0));
            if let Err(error) = written {
                for undo in &published[..done] {
                    let _ = map.remove(&kernel_entry(undo, bridge.index).0);
                }
                return Err(error).with_context(|| {
                    format!(
                        "writing binding {} to {}",
                        entry.binding,
                        names::BINDINGS_V4
                    )
                });
            }
        }
        Ok(published)
    }

    /// Replaces the set of local addresses a wildcard binding covers.
    ///
    /// # Errors
    ///
    /// When a map write fails.
    pub fn set_local_addrs(&mut self, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
        let mut map: HashMap<_, [u8; 4], u32> =
            typed(self.ebpf.map_mut(names::LOCAL_V4), names::LOCAL_V4)?;
        let stale: Vec<[u8; 4]> = map.keys().filter_map(Result::ok).collect();
        for addr in addrs {
            map.insert(addr.octets(), 0, 0)
                .with_context(|| format!("adding local address {addr} to {}", names::LOCAL_V4))?;
        }
        for old in stale
            .iter()
            .filter(|old| !addrs.contains(&Ipv4Addr::from(**old)))
        {
            let _ = map.remove(old);
        }
        Ok(())
    }

    /// Attaches `tc_reply` to the bridge, `tc_forward` and then `xdp_uplink` to the uplink: the
    /// reverse path is in place before the first packet is translated.
    ///
    /// # Errors
    ///
    /// When an attach fails; programs already attached stay attached until `self` is dropped.
    pub fn attach(
        &mut self,
        uplink: &Interface,
        bridge: &Interface,
        mode: XdpMode,
    ) -> anyhow::Result<()> {
        self.attach_tc(programs::TC_REPLY, bridge)?;
        self.attach_tc(programs::TC_FORWARD, uplink)?;
        let xdp: &mut Xdp = self.program(programs::XDP_UPLINK)?;
        xdp.attach_to_if_index(uplink.index, mode)
            .map_err(|error| {
                let hint = match mode {
                    XdpMode::Skb => "",
                    _ => " (the driver may lack native XDP: retry with `--xdp-mode skb`)",
                };
                anyhow!(error).context(format!(
                    "attaching {} to {} in {mode:?} mode{hint}",
                    programs::XDP_UPLINK,
                    uplink.name
                ))
            })?;
        Ok(())
    }

    fn attach_tc(&mut self, name: &str, iface: &Interface) -> anyhow::Result<()> {
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
            .with_context(|| format!("attaching {name} to {} ingress", iface.name))?;
        Ok(())
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

    /// Translated flows currently remembered.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn flows(&self) -> anyhow::Result<Vec<(FlowKeyV4, FlowV4)>> {
        let map: HashMap<_, FlowKeyV4, FlowV4> =
            typed(self.ebpf.map(names::FLOWS_V4), names::FLOWS_V4)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }
}

fn zeroed_stats(cpus: usize) -> Result<PerCpuValues<BindingStats>, io::Error> {
    PerCpuValues::try_from(vec![BindingStats::default(); cpus])
}

fn kernel_entry(entry: &Published, bridge_index: u32) -> (BindingKeyV4, BindingV4) {
    let Binding {
        host_ip,
        host_port,
        proto,
        container,
        origin: _,
    } = &entry.binding;
    let key = BindingKeyV4::new(
        host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
        *host_port,
        proto.number(),
    );
    let value = BindingV4::new(
        container.ip().octets(),
        container.port(),
        entry.id,
        bridge_index,
    );
    (key, value)
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

/// A running instance's maps, opened through their pins.
pub struct Pinned {
    dir: PathBuf,
}

/// A published binding read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBinding {
    pub key: BindingKeyV4,
    pub value: BindingV4,
    pub stats: BindingStats,
}

impl Pinned {
    /// Opens the pins of the instance serving under `dir`.
    ///
    /// # Errors
    ///
    /// When `dir` holds no portmap pins.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let probe = dir.join(names::BINDINGS_V4);
        if !probe.exists() {
            bail!(
                "no running portmap found: {} does not exist (is `portmap run` serving this interface?)",
                probe.display()
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn map(&self, name: &str) -> anyhow::Result<Map> {
        let path = self.dir.join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Map::from_map_data(data)?)
    }

    /// Every binding with its counters summed over CPUs.
    ///
    /// # Errors
    ///
    /// When a map cannot be read.
    pub fn bindings(&self) -> anyhow::Result<Vec<KernelBinding>> {
        let map: HashMap<_, BindingKeyV4, BindingV4> = self.map(names::BINDINGS_V4)?.try_into()?;
        let stats: PerCpuArray<_, BindingStats> = self.map(names::BINDING_STATS)?.try_into()?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (key, value) = entry?;
            let stats = sum_binding_stats(&stats, value.id)?;
            out.push(KernelBinding { key, value, stats });
        }
        out.sort_by_key(|b| (u16::from_be_bytes(b.key.port), b.key.proto, b.key.addr));
        Ok(out)
    }

    /// Every reason's counter, summed over CPUs.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn reasons(&self) -> anyhow::Result<Vec<(Reason, u64)>> {
        let map: PerCpuArray<_, u64> = self.map(names::REASON_STATS)?.try_into()?;
        sum_reasons(&map)
    }

    /// How many flows are remembered.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn flow_count(&self) -> anyhow::Result<usize> {
        let map: HashMap<_, FlowKeyV4, FlowV4> = self.map(names::FLOWS_V4)?.try_into()?;
        Ok(map.keys().filter(Result::is_ok).count())
    }
}

/// Unpins every map under `dir` and removes it; leaves nothing behind on the bpffs.
pub fn unpin(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
