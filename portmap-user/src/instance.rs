//! A running instance: the dataplane, what it publishes and where each binding came from, and
//! the reservations that hold the host ports. Every change applies completely or not at all.

use std::{collections::HashMap, str::FromStr as _};

use anyhow::anyhow;

use crate::{
    control::{BindingInfo, Counters, Request, Response},
    dataplane::{Dataplane, Published},
    netdev::Interface,
    plan::{Binding, Plan, PlanError, PortPool, Request as PlanRequest, StaticAddrs},
    reserve::{self, Reservation, ReserveError},
    spec::{ContainerAddr, HostSelector, Proto, Publish},
};

/// Why a change was refused: the input (exit 2) or the system (exit 1).
#[derive(Debug)]
pub enum Refused {
    BadInput(anyhow::Error),
    Runtime(anyhow::Error),
}

impl Refused {
    pub fn into_response(self) -> Response {
        match self {
            Self::BadInput(e) => Response::failed(format!("{e:#}"), true),
            Self::Runtime(e) => Response::failed(format!("{e:#}"), false),
        }
    }
}

impl From<PlanError> for Refused {
    fn from(error: PlanError) -> Self {
        if error.is_bad_input() {
            Self::BadInput(error.into())
        } else {
            Self::Runtime(error.into())
        }
    }
}

impl From<ReserveError> for Refused {
    fn from(error: ReserveError) -> Self {
        if error.is_bad_input() {
            Self::BadInput(error.into())
        } else {
            Self::Runtime(error.into())
        }
    }
}

/// One published binding, who asked for it, and what holds its host port.
struct Live {
    published: Published,
    /// Who publishes it, when something other than the command line does (a Docker container,
    /// a CNI container id): removing by owner withdraws all of its bindings.
    owner: Option<String>,
    /// `None` where another party holds the port already (Docker's own proxy or reservation).
    _reservation: Option<Reservation>,
}

pub struct Instance {
    dataplane: Dataplane,
    /// Boxed, so that growing the list moves pointers, not ten thousand bindings: the first
    /// `add` after a bulk publication would otherwise copy megabytes.
    #[expect(
        clippy::vec_box,
        reason = "growth must not move the bindings themselves"
    )]
    live: Vec<Box<Live>>,
    /// `--container` addresses given to `run`, for services named by later `add`s.
    containers: Vec<ContainerAddr>,
    /// The bridge `run` was given: where bindings go unless an `add` names another.
    bridge: Interface,
    /// What the last publication added, until [`Instance::take_just_published`].
    just_published: Vec<Binding>,
}

/// How to publish a set of bindings.
#[derive(Clone, Debug, Default)]
pub struct Publication {
    /// Who publishes them (see [`Instance::withdraw_owner`]).
    pub owner: Option<String>,
    /// Whether to hold their host ports against other processes.
    pub hold_ports: bool,
    /// Whether a binding already on one of their host ports is withdrawn instead of being a
    /// conflict (re-pointing).
    pub replace: bool,
}

/// Holds every binding's host port, or none.
fn reserve_all(bindings: &[Binding], hold: bool) -> Result<Vec<Option<Reservation>>, ReserveError> {
    bindings
        .iter()
        .map(|binding| {
            if hold {
                reserve::reserve(binding).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect()
}

impl Instance {
    /// Holds the plan's host ports, then publishes it; all or nothing.
    ///
    /// # Errors
    ///
    /// A port held by another process (bad input), or a dataplane failure.
    pub fn start(
        mut dataplane: Dataplane,
        plan: &Plan,
        bridge: &Interface,
        containers: Vec<ContainerAddr>,
    ) -> Result<Self, Refused> {
        let reservations = reserve_all(&plan.bindings, true)?;
        let published = dataplane
            .publish(&plan.bindings, bridge)
            .map_err(Refused::Runtime)?;
        Ok(Self {
            dataplane,
            live: published
                .into_iter()
                .zip(reservations)
                .map(|(published, reservation)| {
                    Box::new(Live {
                        published,
                        owner: None,
                        _reservation: reservation,
                    })
                })
                .collect(),
            containers,
            bridge: bridge.clone(),
            just_published: Vec::new(),
        })
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The bridge `run` was given.
    pub fn default_bridge(&self) -> &Interface {
        &self.bridge
    }

    pub fn published(&self) -> impl Iterator<Item = &Published> {
        self.live.iter().map(|live| &live.published)
    }

    /// Every binding with its owner.
    pub fn published_with_owner(&self) -> impl Iterator<Item = (&Published, Option<&str>)> {
        self.live
            .iter()
            .map(|live| (&live.published, live.owner.as_deref()))
    }

    /// Answers one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        let listed = |bindings: &[(Published, Option<String>)]| {
            bindings
                .iter()
                .map(|(p, owner)| info(p, owner.as_deref()))
                .collect()
        };
        let result = match request {
            Request::Ls => Ok(Response {
                bindings: self
                    .published_with_owner()
                    .map(|(p, o)| info(p, o))
                    .collect(),
                ..Response::default()
            }),
            Request::Stats => self.stats(),
            Request::Add {
                specs,
                containers,
                replace,
                bridge,
                owner,
                hold_ports,
            } => {
                let publication = Publication {
                    owner,
                    hold_ports,
                    replace,
                };
                self.add(&specs, &containers, bridge.as_deref(), &publication)
                    .map(|added| Response {
                        bindings: added
                            .iter()
                            .map(|p| info(p, publication.owner.as_deref()))
                            .collect(),
                        ..Response::default()
                    })
            }
            Request::Rm { selectors, owner } => {
                let removed = match owner {
                    Some(owner) if selectors.is_empty() => self.withdraw_owner(&owner),
                    Some(_) => Err(Refused::BadInput(anyhow!(
                        "rm takes selectors or an owner, not both"
                    ))),
                    None => self.remove(&selectors),
                };
                removed.map(|removed| Response {
                    bindings: listed(&removed),
                    ..Response::default()
                })
            }
        };
        result.unwrap_or_else(Refused::into_response)
    }

    /// Publishes `specs`, whose containers hang off `bridge` (`run`'s bridge by default),
    /// beside what is published; see [`Instance::publish`].
    ///
    /// # Errors
    ///
    /// Malformed specs and an unknown bridge are bad input; as [`Instance::publish`].
    pub fn add(
        &mut self,
        specs: &[String],
        containers: &[String],
        bridge: Option<&str>,
        publication: &Publication,
    ) -> Result<Vec<Published>, Refused> {
        let bridge = match bridge {
            None => self.bridge.clone(),
            Some(name) => {
                Interface::by_name(name).map_err(|e| Refused::BadInput(e.context("--bridge")))?
            }
        };
        let publishes = specs
            .iter()
            .map(|spec| Publish::from_str(spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refused::BadInput(e.into()))?;
        let mut known = self.containers.clone();
        for container in containers {
            known.push(
                ContainerAddr::from_str(container).map_err(|e| Refused::BadInput(anyhow!(e)))?,
            );
        }
        let requests: Vec<PlanRequest> = publishes.iter().map(PlanRequest::from).collect();
        // Ports this instance holds show up as in use, so an ephemeral pick avoids them.
        let plan = Plan::build(&requests, &StaticAddrs::new(&known), PortPool::from_system)?;
        if plan.bindings.is_empty() {
            return Err(Refused::BadInput(anyhow!(
                "nothing to publish in {specs:?}"
            )));
        }
        self.publish(&plan.bindings, &bridge, publication)
    }

    /// Publishes `bindings` toward `bridge` beside what is published. A host port that a
    /// binding already holds is a conflict naming both, unless `publication.replace`, which
    /// withdraws that binding in the same step (its flows end with it). Nothing changes on
    /// failure.
    ///
    /// # Errors
    ///
    /// Conflicts and ports held by other processes are bad input; dataplane failures are not.
    pub fn publish(
        &mut self,
        bindings: &[Binding],
        bridge: &Interface,
        publication: &Publication,
    ) -> Result<Vec<Published>, Refused> {
        // Which live binding each new one overlaps. Most live bindings are on ports no new one
        // wants, and a bitmap of the new ports skips each of those with one bit test; the rest
        // are looked up among the new ones sorted by what an overlap needs equal. (Pairwise,
        // 10,000 new against 10,000 live would be 10^8 comparisons.)
        let mut new_ports = PortSet::default();
        let mut news: Vec<(OverlapKey, usize)> = bindings
            .iter()
            .enumerate()
            .map(|(j, new)| {
                new_ports.insert(new.host_port);
                (overlap_key(new), j)
            })
            .collect();
        news.sort_unstable();
        let mut overlaps: Vec<(usize, usize)> = Vec::new();
        for (i, live) in self.live.iter().enumerate() {
            let old = &live.published.binding;
            if !new_ports.contains(old.host_port) {
                continue;
            }
            overlaps.extend(
                sorted_equal(&news, &overlap_key(old))
                    .filter(|&j| old.overlaps(&bindings[j]))
                    .map(|j| (j, i)),
            );
        }
        if !publication.replace
            && let Some(&(j, i)) = overlaps.iter().min()
        {
            // The first new binding in order that conflicts, with its first live one.
            let (old, new) = (&self.live[i].published.binding, &bindings[j]);
            return Err(PlanError::Conflict {
                first: old.origin.clone(),
                second: new.origin.clone(),
                port: new.host_port,
                proto: new.proto,
            }
            .into());
        }
        let mut displaced: Vec<usize> = overlaps.into_iter().map(|(_, i)| i).collect();
        // The displaced bindings let go of their ports first, so the new ones can hold them;
        // if anything below fails, they take them back.
        displaced.sort_unstable();
        displaced.dedup();
        let displaced: Vec<(Published, Option<String>, bool)> = displaced
            .into_iter()
            .rev()
            .map(|i| {
                let live = *self.live.remove(i);
                let held = live._reservation.is_some();
                (live.published, live.owner, held)
            })
            .collect();
        match self.swap_in(bindings, &displaced, bridge, publication) {
            Ok(added) => Ok(added),
            Err(refused) => {
                self.restore(displaced);
                Err(refused)
            }
        }
    }

    fn swap_in(
        &mut self,
        bindings: &[Binding],
        displaced: &[(Published, Option<String>, bool)],
        bridge: &Interface,
        publication: &Publication,
    ) -> Result<Vec<Published>, Refused> {
        let reservations = reserve_all(bindings, publication.hold_ports)?;
        if !displaced.is_empty() {
            let ids: Vec<u32> = displaced.iter().map(|(p, _, _)| p.id).collect();
            self.dataplane.remove(&ids).map_err(Refused::Runtime)?;
        }
        let added = self
            .dataplane
            .add(bindings, bridge)
            .map_err(Refused::Runtime)?;
        self.live
            .extend(
                added
                    .iter()
                    .cloned()
                    .zip(reservations)
                    .map(|(published, reservation)| {
                        Box::new(Live {
                            published,
                            owner: publication.owner.clone(),
                            _reservation: reservation,
                        })
                    }),
            );
        self.just_published = added.iter().map(|p| p.binding.clone()).collect();
        Ok(added)
    }

    /// The bindings the last publication added (once), for work that follows a publication
    /// without holding up its answer.
    pub fn take_just_published(&mut self) -> Vec<Binding> {
        std::mem::take(&mut self.just_published)
    }

    /// Puts displaced bindings back after a failed replacement, as far as the system lets it.
    fn restore(&mut self, displaced: Vec<(Published, Option<String>, bool)>) {
        let still_published: Vec<u32> = self.dataplane.published().iter().map(|p| p.id).collect();
        for (published, owner, held) in displaced {
            let reservation = if held {
                match reserve::reserve(&published.binding) {
                    Ok(reservation) => Some(reservation),
                    Err(error) => {
                        log::error!(
                            "could not take back the host port of {}: {error}",
                            published.binding
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            let published = if still_published.contains(&published.id) {
                published
            } else {
                match self
                    .dataplane
                    .add(std::slice::from_ref(&published.binding), &published.bridge)
                {
                    Ok(mut again) => again.remove(0),
                    Err(error) => {
                        log::error!("could not publish {} again: {error:#}", published.binding);
                        continue;
                    }
                }
            };
            self.live.push(Box::new(Live {
                published,
                owner,
                _reservation: reservation,
            }));
        }
    }

    /// Withdraws the bindings `selectors` name; every selector must name at least one.
    ///
    /// # Errors
    ///
    /// A malformed selector, or one that names nothing (bad input); a dataplane failure.
    pub fn remove(
        &mut self,
        selectors: &[String],
    ) -> Result<Vec<(Published, Option<String>)>, Refused> {
        let parsed = selectors
            .iter()
            .map(|text| HostSelector::from_str(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refused::BadInput(e.into()))?;
        // One pass over what is published, the selectors sorted by port to be looked up: 10,000
        // selectors against 20,000 bindings would be 2 * 10^8 matches pairwise.
        let mut by_port: Vec<((u16, Proto), usize)> = parsed
            .iter()
            .enumerate()
            .map(|(k, selector)| ((selector.host_port, selector.proto), k))
            .collect();
        by_port.sort_unstable();
        let mut matched = vec![false; parsed.len()];
        let mut ids = Vec::new();
        for published in self.published() {
            let binding = &published.binding;
            let mut named = false;
            for k in sorted_equal(&by_port, &(binding.host_port, binding.proto)) {
                if parsed[k].matches(binding) {
                    matched[k] = true;
                    named = true;
                }
            }
            if named {
                ids.push(published.id);
            }
        }
        if let Some(k) = matched.iter().position(|m| !m) {
            return Err(Refused::BadInput(anyhow!(
                "no published binding matches {:?} (see `portmap ls`)",
                selectors[k]
            )));
        }
        self.withdraw(&ids)
    }

    /// Withdraws every binding `owner` published; none is no error (a repeated removal, as
    /// CNI's DEL may be).
    ///
    /// # Errors
    ///
    /// A dataplane failure.
    pub fn withdraw_owner(
        &mut self,
        owner: &str,
    ) -> Result<Vec<(Published, Option<String>)>, Refused> {
        let ids: Vec<u32> = self
            .live
            .iter()
            .filter(|live| live.owner.as_deref() == Some(owner))
            .map(|live| live.published.id)
            .collect();
        self.withdraw(&ids)
    }

    fn withdraw(&mut self, ids: &[u32]) -> Result<Vec<(Published, Option<String>)>, Refused> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.dataplane.remove(ids).map_err(Refused::Runtime)?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        let gone: Vec<Box<Live>> = self
            .live
            .extract_if(.., |live| ids.binary_search(&live.published.id).is_ok())
            .collect();
        // The withdrawn bindings' flows are dead already (their generation is gone); the
        // periodic expiry deletes them, so a removal does not wait on a walk of the flow table.
        // Dropping `gone` releases the host ports it held.
        Ok(gone
            .into_iter()
            .map(|live| {
                let Live {
                    published, owner, ..
                } = *live;
                (published, owner)
            })
            .collect())
    }

    fn stats(&self) -> Result<Response, Refused> {
        let v4 = self.dataplane.flows_v4().map_err(Refused::Runtime)?;
        let v6 = self.dataplane.flows_v6().map_err(Refused::Runtime)?;
        let flows = v4
            .iter()
            .map(|(_, f)| (f.binding_id, f.generation))
            .chain(v6.iter().map(|(_, f)| (f.binding_id, f.generation)));
        let mut per_binding: HashMap<u32, u64> = HashMap::new();
        let live: HashMap<u32, u32> = self.published().map(|p| (p.id, p.generation)).collect();
        let mut total = 0;
        for (binding_id, generation) in flows {
            if live.get(&binding_id) == Some(&generation) {
                *per_binding.entry(binding_id).or_default() += 1;
                total += 1;
            }
        }
        let mut bindings = Vec::new();
        for (published, owner) in self.published_with_owner() {
            let s = self
                .dataplane
                .binding_stats(published.id)
                .map_err(Refused::Runtime)?;
            let mut binding = info(published, owner);
            binding.counters = Some(Counters {
                to_container_packets: s.to_container_packets,
                to_container_bytes: s.to_container_bytes,
                to_client_packets: s.to_client_packets,
                to_client_bytes: s.to_client_bytes,
                flows: per_binding.get(&published.id).copied().unwrap_or(0),
            });
            bindings.push(binding);
        }
        let reasons = self
            .dataplane
            .reason_stats()
            .map_err(Refused::Runtime)?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason.name().to_owned(), n))
            .collect();
        Ok(Response {
            bindings,
            flows: total,
            reasons,
            ..Response::default()
        })
    }
}

/// A set of host ports, a bit each.
struct PortSet(Vec<u64>);

impl Default for PortSet {
    fn default() -> Self {
        Self(vec![0; 1 << 10])
    }
}

impl PortSet {
    fn insert(&mut self, port: u16) {
        self.0[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port >> 6)] & 1 << (port & 63) != 0
    }
}

/// What two bindings must share to overlap: protocol, port and family.
type OverlapKey = (Proto, u16, bool);

fn overlap_key(binding: &Binding) -> OverlapKey {
    (binding.proto, binding.host_port, binding.is_ipv6())
}

/// The indices paired with `key` in `sorted`, which is sorted by key.
fn sorted_equal<'a, K: Ord>(
    sorted: &'a [(K, usize)],
    key: &'a K,
) -> impl Iterator<Item = usize> + 'a {
    let start = sorted.partition_point(|(k, _)| k < key);
    sorted[start..]
        .iter()
        .take_while(move |(k, _)| k == key)
        .map(|&(_, index)| index)
}

/// A binding as `ls` reports it.
pub fn info(published: &Published, owner: Option<&str>) -> BindingInfo {
    let Binding {
        host_ip: _,
        host_port,
        proto,
        container,
        origin,
    } = &published.binding;
    BindingInfo {
        id: published.id,
        proto: proto.to_string(),
        host_ip: published.binding.host().ip().to_string(),
        host_port: *host_port,
        container_ip: container.ip().to_string(),
        container_port: container.port(),
        source: origin.clone(),
        bridge: published.bridge.name.clone(),
        owner: owner.map(str::to_owned),
        counters: None,
    }
}
