//! The binding plan: what should be published, resolved from requests and checked as a whole
//! before anything touches the kernel.
//!
//! A [`Request`] is a spec, its target and where it came from (a `--publish` value or a compose
//! entry). Planning expands each into [`Endpoint`]s the way the Docker daemon does (one per
//! container port and address family), resolves services to container addresses through
//! [`ContainerAddrs`], refuses two claims on one host port, then picks ephemeral and window
//! ports from a [`PortPool`]. `check` ([`preview`]) stops before the picking, so it needs no
//! addresses, no root and no /proc.
//!
//! The dataplane translates TCP and UDP within one family (IPv4 to IPv4, IPv6 to IPv6), so
//! `run` ([`Plan::build`]):
//! - publishes a spec without host IP on every local address of each family the container has
//!   an address of (Docker publishes `[::]` beside `0.0.0.0`, on the same port); a twin whose
//!   family the container lacks stays in [`Plan::endpoints`], noted as not served;
//! - refuses, naming the spec, a host address whose family the container has no address of,
//!   and sctp.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::spec::{ContainerAddr, HostPort, PortRange, PortSpec, Proto, Publish, Target};

/// One published port, resolved: exactly what the kernel's binding map will hold. The host
/// address and the container are of one family, which the container's address gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `None`: every local address of the family (a wildcard binding).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container: SocketAddr,
    /// The spec it came from, as the user wrote it (or its compose file, line and entry).
    pub origin: String,
}

impl Binding {
    /// Whether two bindings want the same host port: same protocol, port and family, and the
    /// same address or either on every address (Docker refuses `0.0.0.0:80` beside
    /// `10.0.0.1:80`).
    pub fn overlaps(&self, other: &Self) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && self.is_ipv6() == other.is_ipv6()
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    pub fn is_ipv6(&self) -> bool {
        self.container.is_ipv6()
    }

    /// The host side as `docker port` prints it: `0.0.0.0:8080`, `[::]:8080`.
    pub fn host(&self) -> SocketAddr {
        let unspecified = if self.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        SocketAddr::new(self.host_ip.unwrap_or(unspecified), self.host_port)
    }
}

impl fmt::Display for Binding {
    /// `docker port` style: `80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {} => {}",
            self.container.port(),
            self.proto,
            self.host(),
            self.container
        )
    }
}

/// Where a request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line value, as written.
    Arg(String),
    /// A compose file's `ports` entry.
    Compose {
        file: String,
        line: usize,
        /// `services.web.ports[0]`.
        entry: String,
        /// The short syntax as written, or the long syntax in canonical short form.
        spec: String,
    },
}

impl Source {
    /// How messages name it: the text as written, or `FILE:LINE: ENTRY SPEC`.
    pub fn origin(&self) -> String {
        match self {
            Self::Arg(text) => text.clone(),
            Self::Compose {
                file,
                line,
                entry,
                spec,
            } => format!("{file}:{line}: {entry} {spec}"),
        }
    }
}

/// A spec to publish, with its target and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub spec: PortSpec,
    /// `None` only in `check`, for a spec given without `=TARGET`.
    pub target: Option<Target>,
    pub source: Source,
}

impl From<&Publish> for Request {
    fn from(publish: &Publish) -> Self {
        Self {
            spec: publish.spec.clone(),
            target: Some(publish.target.clone()),
            source: Source::Arg(publish.text.clone()),
        }
    }
}

/// A container's addresses: one per family at most (a dual-stack container has both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl ContainerIps {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self {
                v4: Some(v4),
                v6: None,
            },
            IpAddr::V6(v6) => Self {
                v4: None,
                v6: Some(v6),
            },
        }
    }

    /// The address of the family of `host`.
    pub fn like(&self, host: IpAddr) -> Option<IpAddr> {
        match host {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }

    /// The IPv4 address if there is one, else the IPv6 one.
    pub fn first(&self) -> Option<IpAddr> {
        self.v4.map(IpAddr::V4).or(self.v6.map(IpAddr::V6))
    }
}

/// Where service names get their container's address. `--container SERVICE=IP` is one source
/// ([`StaticAddrs`]); a Docker Engine query can be another.
pub trait ContainerAddrs {
    /// The address of the one container behind `service`, or `None` when this source does not
    /// know the service.
    ///
    /// # Errors
    ///
    /// A reason when the service has no single container (several addresses, replicas).
    fn addr_of(&self, service: &str) -> Result<Option<IpAddr>, String>;

    /// Every address of that container, one per family: what a dual-stack source overrides.
    ///
    /// # Errors
    ///
    /// As [`ContainerAddrs::addr_of`].
    fn addrs_of(&self, service: &str) -> Result<Option<ContainerIps>, String> {
        Ok(self.addr_of(service)?.map(ContainerIps::of))
    }
}

/// Addresses given on the command line with `--container SERVICE=IP`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticAddrs {
    by_service: BTreeMap<String, Vec<IpAddr>>,
}

impl StaticAddrs {
    pub fn new(given: &[ContainerAddr]) -> Self {
        let mut by_service: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for ContainerAddr { service, addr } in given {
            let addrs = by_service.entry(service.clone()).or_default();
            // The same address twice is one container; only differing ones are ambiguous.
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        Self { by_service }
    }

    /// The services given an address, for spotting names no spec uses.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }
}

impl ContainerAddrs for StaticAddrs {
    fn addr_of(&self, service: &str) -> Result<Option<IpAddr>, String> {
        Ok(self.addrs_of(service)?.and_then(|ips| ips.first()))
    }

    /// One address per family: `--container web=172.17.0.2 --container web=2001:db8::2` is
    /// one dual-stack container.
    fn addrs_of(&self, service: &str) -> Result<Option<ContainerIps>, String> {
        let Some(addrs) = self.by_service.get(service).filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let v4: Vec<Ipv4Addr> = addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        let several = |family: &str, addrs: &[String]| {
            format!(
                "--container gives it several {family} addresses ({}), but a published port goes \
                 to one container (one address per family)",
                addrs.join(", ")
            )
        };
        let shown = |addrs: &[IpAddr]| addrs.iter().map(ToString::to_string).collect::<Vec<_>>();
        if v4.len() > 1 {
            return Err(several(
                "IPv4",
                &shown(&v4.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>()),
            ));
        }
        if v6.len() > 1 {
            return Err(several(
                "IPv6",
                &shown(&v6.iter().map(|a| IpAddr::V6(*a)).collect::<Vec<_>>()),
            ));
        }
        Ok(Some(ContainerIps {
            v4: v4.first().copied(),
            v6: v6.first().copied(),
        }))
    }
}

/// One host address and port Docker would publish, for one container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address it listens on; `0.0.0.0` or `::` for every local address of that family.
    pub host_ip: IpAddr,
    /// The chosen host port; 0 while an ephemeral or window port is not picked yet (`check`).
    pub host_port: u16,
    /// What the spec asked for.
    pub asked: HostPort,
    pub proto: Proto,
    pub container_port: u16,
    /// The compose service or `=SERVICE` target, if the target was a name.
    pub service: Option<String>,
    /// The container's address of the host address's family; without one, its other address
    /// (shown, not served). `None` while a service is unresolved (`check` without
    /// `--container`).
    pub container_ip: Option<IpAddr>,
    /// One of the two endpoints of a spec without host IP (`0.0.0.0` and Docker's implicit
    /// `[::]`): either may go unserved when the container lacks that family.
    pub twin: bool,
    pub source: Source,
    /// Endpoints of one mapping (IPv4 and its IPv6 twin) share a host port.
    group: usize,
}

impl Endpoint {
    /// Why the dataplane does not serve this endpoint, if it does not.
    pub fn unserved(&self) -> Option<&'static str> {
        let mismatched = self
            .container_ip
            .is_some_and(|ip| ip.is_ipv6() != self.host_ip.is_ipv6());
        if self.proto == Proto::Sctp {
            Some("sctp: the dataplane serves tcp and udp")
        } else if mismatched && self.host_ip.is_ipv6() {
            Some("the container has no IPv6 address")
        } else if mismatched {
            Some("the container has no IPv4 address")
        } else {
            None
        }
    }

    /// The host port as `check` shows it: the port, `0` for ephemeral, the window's range.
    pub fn host_port_text(&self) -> String {
        match (self.host_port, self.asked) {
            (0, asked) => asked.to_string(),
            (port, _) => port.to_string(),
        }
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && self.host_ip.is_ipv4() == other.host_ip.is_ipv4()
            && (self.host_ip.is_unspecified()
                || other.host_ip.is_unspecified()
                || self.host_ip == other.host_ip)
    }
}

impl fmt::Display for Endpoint {
    /// `docker port` style, then the container: `8000/tcp -> 0.0.0.0:9999 => web:8000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {}",
            self.container_port,
            self.proto,
            crate::spec::host_and_port(self.host_ip, self.host_port_text())
        )?;
        match (&self.container_ip, &self.service) {
            (Some(ip), _) => write!(
                f,
                " => {}",
                crate::spec::host_and_port(*ip, self.container_port)
            ),
            (None, Some(service)) => write!(f, " => {service}:{}", self.container_port),
            (None, None) => Ok(()),
        }
    }
}

/// Why a set of requests cannot be published; nothing is applied when there is one.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Two specs want the same host port.
    Conflict {
        first: String,
        second: String,
        port: u16,
        proto: Proto,
    },
    /// Something the dataplane cannot do yet.
    Unsupported { spec: String, reason: String },
    /// A service target with no known container address.
    Unresolved { spec: String, service: String },
    /// A spec without a target where one is needed.
    NoTarget { spec: String },
    /// The address source refused a service.
    Container { service: String, reason: String },
    /// No free port left for an ephemeral or window request.
    NoFreePort {
        spec: String,
        proto: Proto,
        range: PortRange,
    },
    /// The system's port state could not be read (not the input's fault).
    System(String),
}

impl PlanError {
    /// Whether the input is at fault (exit 2) rather than the system (exit 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::System(_))
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict {
                first,
                second,
                port,
                proto,
            } => write!(
                f,
                "host port {port}/{proto} is published twice: by {first:?} and by {second:?}"
            ),
            Self::Unsupported { spec, reason } => write!(f, "cannot publish {spec:?}: {reason}"),
            Self::Unresolved { spec, service } => write!(
                f,
                "{spec:?} publishes to service {service:?}, which has no container address: \
                 give it with --container {service}=IP"
            ),
            Self::NoTarget { spec } => write!(
                f,
                "{spec:?} has no target: write SPEC=CONTAINER_IP or SPEC=SERVICE"
            ),
            Self::Container { service, reason } => write!(f, "service {service:?}: {reason}"),
            Self::NoFreePort { spec, proto, range } => write!(
                f,
                "no free host port for {spec:?}: every port of {range}/{proto} is reserved, in \
                 use, or taken by another binding"
            ),
            Self::System(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for PlanError {}

/// Everything to publish, free of conflicts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What the kernel serves.
    pub bindings: Vec<Binding>,
    /// Everything Docker would publish, ports chosen, including twins not served (a family
    /// the container has no address of).
    pub endpoints: Vec<Endpoint>,
}

impl Plan {
    /// Plans `publishes` (which name containers by address), picking any ephemeral port from
    /// this host's free ports.
    ///
    /// # Errors
    ///
    /// As [`Plan::build`].
    pub fn new(publishes: &[Publish]) -> Result<Self, PlanError> {
        let requests: Vec<Request> = publishes.iter().map(Request::from).collect();
        Self::build(&requests, &StaticAddrs::default(), PortPool::from_system)
    }

    /// Resolves, checks and allocates `requests` as a whole, for `run`. `pool` is called only
    /// when some request needs a port picked.
    ///
    /// # Errors
    ///
    /// The first unresolved target, unsupported spec, conflict or exhausted range, naming the
    /// specs involved; [`PlanError::System`] when `pool` fails.
    pub fn build(
        requests: &[Request],
        addrs: &dyn ContainerAddrs,
        pool: impl FnOnce() -> io::Result<PortPool>,
    ) -> Result<Self, PlanError> {
        let mut endpoints = expand(requests, addrs, true)?;
        refuse_unserved(&endpoints)?;
        check_conflicts(&endpoints)?;
        if endpoints.iter().any(|e| e.host_port == 0) {
            let pool = pool().map_err(|e| PlanError::System(e.to_string()))?;
            allocate(&mut endpoints, &pool)?;
        }
        let bindings = endpoints.iter().filter_map(kernel_binding).collect();
        Ok(Self {
            bindings,
            endpoints,
        })
    }

    /// The endpoints the dataplane does not serve (twins of a family the container lacks), for
    /// a note.
    pub fn unserved(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.unserved().is_some())
    }
}

/// What `check` shows: every endpoint, services resolved where `addrs` knows them, fixed ports
/// checked for conflicts, ephemeral and window ports not picked (0).
///
/// # Errors
///
/// A conflict between fixed ports, or a service `addrs` refuses.
pub fn preview(
    requests: &[Request],
    addrs: &dyn ContainerAddrs,
) -> Result<Vec<Endpoint>, PlanError> {
    let endpoints = expand(requests, addrs, false)?;
    check_conflicts(&endpoints)?;
    Ok(endpoints)
}

/// One endpoint per container port and family: a spec without host IP gets an IPv4 endpoint
/// on `0.0.0.0` and its IPv6 twin on `::`, sharing one host port (moby's `sortAndNormPBs`).
fn expand(
    requests: &[Request],
    addrs: &dyn ContainerAddrs,
    resolve_all: bool,
) -> Result<Vec<Endpoint>, PlanError> {
    let mut endpoints = Vec::new();
    let mut group = 0;
    for request in requests {
        let origin = || request.source.origin();
        let (service, container_ips) = match &request.target {
            Some(Target::Addr(ip)) => (None, Some(ContainerIps::of(*ip))),
            Some(Target::Service(name)) => {
                let ip = addrs
                    .addrs_of(name)
                    .map_err(|reason| PlanError::Container {
                        service: name.clone(),
                        reason,
                    })?;
                if ip.is_none() && resolve_all {
                    return Err(PlanError::Unresolved {
                        spec: origin(),
                        service: name.clone(),
                    });
                }
                (Some(name.clone()), ip)
            }
            None if resolve_all => return Err(PlanError::NoTarget { spec: origin() }),
            None => (None, None),
        };
        for mapping in request.spec.mappings() {
            let host_ips: &[IpAddr] = match mapping.host_ip {
                Some(ip) => &[ip],
                None => &[
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                ],
            };
            let twin = mapping.host_ip.is_none();
            for &host_ip in host_ips {
                let container_ip = container_ips.and_then(|ips| ips.like(host_ip).or(ips.first()));
                endpoints.push(Endpoint {
                    host_ip,
                    host_port: match mapping.host_port {
                        HostPort::Fixed(port) => port,
                        HostPort::Ephemeral | HostPort::Window(_) => 0,
                    },
                    asked: mapping.host_port,
                    proto: mapping.proto,
                    container_port: mapping.container_port,
                    service: service.clone(),
                    container_ip,
                    twin,
                    source: request.source.clone(),
                    group,
                });
            }
            group += 1;
        }
    }
    Ok(endpoints)
}

/// `run` refuses what the dataplane cannot serve: sctp, and a host address of a family the
/// container has no address of, unless it is the twin of a spec without host IP whose other
/// twin is served (a single-stack container behind `8080:80` is published on its family).
fn refuse_unserved(endpoints: &[Endpoint]) -> Result<(), PlanError> {
    let served_groups: std::collections::HashSet<_> = endpoints
        .iter()
        .filter(|e| e.unserved().is_none())
        .map(|e| e.group)
        .collect();
    for endpoint in endpoints {
        if endpoint.unserved().is_none() {
            continue;
        }
        if endpoint.twin && served_groups.contains(&endpoint.group) {
            continue;
        }
        let reason = if endpoint.proto == Proto::Sctp {
            "sctp is not served: the dataplane handles tcp and udp only".to_string()
        } else {
            let (host, container) = if endpoint.host_ip.is_ipv6() {
                ("IPv6", "IPv4")
            } else {
                ("IPv4", "IPv6")
            };
            format!(
                "the host address is {host} and the container's {container}; a published port \
                 is translated within one family"
            )
        };
        return Err(PlanError::Unsupported {
            spec: endpoint.source.origin(),
            reason,
        });
    }
    Ok(())
}

/// Two fixed claims on one host port (same protocol, port and family; the same address or
/// either the wildcard) are refused, naming both. Claims are grouped by port first, so that
/// ten thousand specs cost ten thousand steps, not fifty million comparisons.
fn check_conflicts(endpoints: &[Endpoint]) -> Result<(), PlanError> {
    let mut by_port: std::collections::HashMap<(Proto, u16, bool), Vec<&Endpoint>> =
        std::collections::HashMap::new();
    // A twin of a family its container has no address of is not published, and claims
    // nothing: `8080:80=IPV4` leaves `[::]:8080` free for another container's IPv6.
    let claims_port = |e: &&Endpoint| e.host_port != 0 && !(e.twin && e.unserved().is_some());
    for later in endpoints.iter().filter(claims_port) {
        let claims = by_port
            .entry((later.proto, later.host_port, later.host_ip.is_ipv4()))
            .or_default();
        if let Some(earlier) = claims.iter().find(|e| e.overlaps(later)) {
            return Err(PlanError::Conflict {
                first: earlier.source.origin(),
                second: later.source.origin(),
                port: later.host_port,
                proto: later.proto,
            });
        }
        claims.push(later);
    }
    Ok(())
}

/// Picks a host port for every ephemeral and window group, the same port for both families
/// of a group, the lowest free one first (what Docker's allocator picks first).
fn allocate(endpoints: &mut [Endpoint], pool: &PortPool) -> Result<(), PlanError> {
    // Any claim on (proto, port) by this plan rules the port out, whatever the address: simpler
    // than Docker's per-address books, and never wrong, only sometimes more cautious.
    let mut taken: BTreeSet<(Proto, u16)> = endpoints
        .iter()
        .filter(|e| e.host_port != 0)
        .map(|e| (e.proto, e.host_port))
        .collect();
    let mut i = 0;
    while i < endpoints.len() {
        let group = endpoints[i].group;
        let members = endpoints[i..]
            .iter()
            .take_while(|e| e.group == group)
            .count();
        let first = &endpoints[i];
        if first.host_port == 0 {
            let proto = first.proto;
            // Docker skips ip_local_reserved_ports only for the ephemeral range: an explicit
            // window is honoured as given, like an explicit port.
            let (range, skip_reserved) = match first.asked {
                HostPort::Window(window) => (window, false),
                HostPort::Ephemeral | HostPort::Fixed(_) => (pool.ephemeral, true),
            };
            let unavailable = |port: u16| {
                port == 0
                    || (skip_reserved && pool.is_reserved(port))
                    || pool.is_in_use(proto, port)
                    || taken.contains(&(proto, port))
            };
            let port = range
                .ports()
                .find(|&port| !unavailable(port))
                .ok_or_else(|| PlanError::NoFreePort {
                    spec: first.source.origin(),
                    proto,
                    range,
                })?;
            taken.insert((proto, port));
            for member in &mut endpoints[i..i + members] {
                member.host_port = port;
            }
        }
        i += members;
    }
    Ok(())
}

fn kernel_binding(endpoint: &Endpoint) -> Option<Binding> {
    let container_ip = endpoint.container_ip?;
    if endpoint.unserved().is_some() {
        return None;
    }
    Some(Binding {
        host_ip: (!endpoint.host_ip.is_unspecified()).then_some(endpoint.host_ip),
        host_port: endpoint.host_port,
        proto: endpoint.proto,
        container: SocketAddr::new(container_ip, endpoint.container_port),
        origin: endpoint.source.origin(),
    })
}

/// The host's free ports, as the allocator sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPool {
    /// Where ephemeral ports come from: `ip_local_port_range`.
    pub ephemeral: PortRange,
    /// `ip_local_reserved_ports`: the kernel keeps them out of its own picks, and so do we.
    pub reserved: Vec<PortRange>,
    /// Ports some local socket already has, per protocol.
    pub in_use: BTreeSet<(Proto, u16)>,
}

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const SOCKET_TABLES: [(&str, Proto); 4] = [
    ("/proc/net/tcp", Proto::Tcp),
    ("/proc/net/tcp6", Proto::Tcp),
    ("/proc/net/udp", Proto::Udp),
    ("/proc/net/udp6", Proto::Udp),
];

impl PortPool {
    /// This network namespace's ranges and sockets, from /proc.
    ///
    /// # Errors
    ///
    /// When a file cannot be read or parsed, naming it; a missing IPv6 table is no error.
    pub fn from_system() -> io::Result<Self> {
        let read = |path: &str| {
            fs::read_to_string(path)
                .map_err(|e| io::Error::new(e.kind(), format!("reading {path}: {e}")))
        };
        let invalid = |path: &str, reason: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {reason}"))
        };
        let ephemeral = parse_port_range(&read(PORT_RANGE)?).map_err(|r| invalid(PORT_RANGE, r))?;
        let reserved =
            parse_reserved_ports(&read(RESERVED_PORTS)?).map_err(|r| invalid(RESERVED_PORTS, r))?;
        let mut in_use = BTreeSet::new();
        for (path, proto) in SOCKET_TABLES {
            let table = match fs::read_to_string(Path::new(path)) {
                Ok(table) => table,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
            };
            let ports = parse_socket_table(&table).map_err(|r| invalid(path, r))?;
            in_use.extend(ports.into_iter().map(|port| (proto, port)));
        }
        Ok(Self {
            ephemeral,
            reserved,
            in_use,
        })
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|range| range.contains(port))
    }

    fn is_in_use(&self, proto: Proto, port: u16) -> bool {
        self.in_use.contains(&(proto, port))
    }
}

/// `ip_local_port_range`: two numbers, tab-separated.
fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let numbers: Vec<&str> = text.split_whitespace().collect();
    let [start, end] = numbers[..] else {
        return Err(format!("expected two port numbers, found {text:?}"));
    };
    let port = |n: &str| {
        n.parse::<u16>()
            .map_err(|_| format!("{n:?} is not a port number"))
    };
    let (start, end) = (port(start)?, port(end)?);
    if end < start {
        return Err(format!("range {start}-{end} ends before it starts"));
    }
    Ok(PortRange { start, end })
}

/// `ip_local_reserved_ports`: a comma-separated list of ports and ranges, maybe empty.
fn parse_reserved_ports(text: &str) -> Result<Vec<PortRange>, String> {
    text.trim()
        .split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| PortRange::parse(entry, "reserved port"))
        .collect()
}

/// The local ports of a `/proc/net/{tcp,udp}[6]` table: the second column is
/// `ADDRESS:PORT`, both hex.
fn parse_socket_table(text: &str) -> Result<BTreeSet<u16>, String> {
    let mut ports = BTreeSet::new();
    for line in text.lines().skip(1) {
        let Some(local) = line.split_whitespace().nth(1) else {
            continue;
        };
        let port = local
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            .ok_or_else(|| format!("unexpected local address {local:?}"))?;
        ports.insert(port);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecArg;

    fn requests(specs: &[&str]) -> Vec<Request> {
        specs
            .iter()
            .map(|s| {
                let arg: SpecArg = s.parse().unwrap_or_else(|e| panic!("{e}"));
                Request {
                    spec: arg.spec,
                    target: arg.target,
                    source: Source::Arg(arg.text),
                }
            })
            .collect()
    }

    /// A pool with ephemeral ports 100-109, 101 and 104-105 reserved, tcp 100 and 102 in use.
    fn pool() -> PortPool {
        PortPool {
            ephemeral: PortRange {
                start: 100,
                end: 109,
            },
            reserved: vec![
                PortRange::single(101),
                PortRange {
                    start: 104,
                    end: 105,
                },
            ],
            in_use: [(Proto::Tcp, 100), (Proto::Tcp, 102)].into(),
        }
    }

    fn build(specs: &[&str]) -> Result<Plan, PlanError> {
        build_with(specs, &StaticAddrs::default())
    }

    fn build_with(specs: &[&str], addrs: &StaticAddrs) -> Result<Plan, PlanError> {
        Plan::build(&requests(specs), addrs, || Ok(pool()))
    }

    fn shown(plan: &Plan) -> Vec<String> {
        plan.endpoints.iter().map(ToString::to_string).collect()
    }

    fn plan(specs: &[&str]) -> Result<Plan, PlanError> {
        let publishes: Vec<Publish> = specs.iter().map(|s| s.parse().unwrap()).collect();
        Plan::new(&publishes)
    }

    #[test]
    fn same_container_port_behind_two_host_ports_is_fine() {
        let plan = plan(&["8080:80=172.17.0.2", "9090:80=172.17.0.2"]).unwrap();
        assert_eq!(plan.bindings.len(), 2);
        assert_eq!(
            plan.bindings[0].to_string(),
            "80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80"
        );
    }

    #[test]
    fn tcp_and_udp_on_one_port_do_not_conflict() {
        assert!(plan(&["53:53=172.17.0.2", "53:53/udp=172.17.0.2"]).is_ok());
    }

    #[test]
    fn duplicate_host_port_names_both_specs() {
        let err = plan(&["8080:80=172.17.0.2", "8080:81=172.17.0.3"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.2" and by "8080:81=172.17.0.3""#
        );
    }

    #[test]
    fn wildcard_conflicts_with_a_specific_address() {
        let err = plan(&["10.0.0.1:80:80=172.17.0.2", "0.0.0.0:80:80=172.17.0.3"]).unwrap_err();
        assert!(matches!(err, PlanError::Conflict { port: 80, .. }), "{err}");
        let err = plan(&["10.0.0.1:80:80=172.17.0.2", "80:80=172.17.0.3"]).unwrap_err();
        assert!(matches!(err, PlanError::Conflict { port: 80, .. }), "{err}");
    }

    #[test]
    fn two_specific_addresses_share_a_port() {
        assert!(plan(&["10.0.0.1:80:80=172.17.0.2", "10.0.0.2:80:80=172.17.0.3"]).is_ok());
    }

    // Families are separate: 0.0.0.0 is IPv4 only and :: IPv6 only; no host IP is both.
    #[test]
    fn families_conflict_only_within_themselves() {
        let ok = preview(
            &requests(&["0.0.0.0:80:80=web", "[::]:80:80=db"]),
            &StaticAddrs::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = preview(
            &requests(&["80:80=web", "[::1]:80:81=db"]),
            &StaticAddrs::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"host port 80/tcp is published twice: by "80:80=web" and by "[::1]:80:81=db""#
        );
    }

    // A translation stays within one family: a host address of the other family than the
    // container's is refused, naming the spec.
    #[test]
    fn host_and_container_of_different_families_are_refused_by_name() {
        let err = plan(&["[::1]:80:80=172.17.0.2"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot publish "[::1]:80:80=172.17.0.2": the host address is IPv6 and the container's IPv4; a published port is translated within one family"#
        );
        let err = plan(&["127.0.0.1:80:80=2001:db8:1::2"]).unwrap_err();
        assert!(err.to_string().contains("host address is IPv4"), "{err}");
    }

    #[test]
    fn ipv6_host_and_container_are_published() {
        let plan = plan(&[
            "[2001:db8::1]:8080:80=2001:db8:1::2",
            "[::1]:5000:5000/udp=2001:db8:1::3",
        ])
        .unwrap();
        let shown: Vec<String> = plan.bindings.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "80/tcp -> [2001:db8::1]:8080 => [2001:db8:1::2]:80",
                "5000/udp -> [::1]:5000 => [2001:db8:1::3]:5000",
            ]
        );
    }

    // A spec without host IP and an IPv6-only container: published on `[::]`, and the IPv4
    // twin noted as not served.
    #[test]
    fn wildcard_to_an_ipv6_container_publishes_the_ipv6_twin() {
        let plan = build(&["8080:80=2001:db8:1::2"]).unwrap();
        let shown: Vec<String> = plan.bindings.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["80/tcp -> [::]:8080 => [2001:db8:1::2]:80"]);
        assert_eq!(plan.bindings[0].host_ip, None);
        let unserved: Vec<_> = plan.unserved().collect();
        assert_eq!(unserved.len(), 1);
        assert_eq!(
            unserved[0].unserved(),
            Some("the container has no IPv4 address")
        );
    }

    // A dual-stack container (one address per family): a spec without host IP is published
    // on both families, on the same port.
    #[test]
    fn wildcard_to_a_dual_stack_service_publishes_both_families() {
        let addrs = StaticAddrs::new(&[
            "web=172.17.0.2".parse().unwrap(),
            "web=2001:db8:1::2".parse().unwrap(),
        ]);
        let plan = build_with(&["8080:80=web", "0:81=web"], &addrs).unwrap();
        let shown: Vec<String> = plan.bindings.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80",
                "80/tcp -> [::]:8080 => [2001:db8:1::2]:80",
                "81/tcp -> 0.0.0.0:103 => 172.17.0.2:81",
                "81/tcp -> [::]:103 => [2001:db8:1::2]:81",
            ]
        );
        assert_eq!(plan.unserved().count(), 0);
    }

    #[test]
    fn sctp_parses_but_run_refuses_it() {
        let err = build(&["3868:3868/sctp=172.17.0.2"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot publish "3868:3868/sctp=172.17.0.2": sctp is not served: the dataplane handles tcp and udp only"#
        );
        let shown: Vec<String> = preview(
            &requests(&["3868:3868/sctp=172.17.0.2"]),
            &StaticAddrs::default(),
        )
        .unwrap()
        .iter()
        .map(|e| format!("{e} ({})", e.unserved().unwrap()))
        .collect();
        assert_eq!(
            shown,
            [
                "3868/sctp -> 0.0.0.0:3868 => 172.17.0.2:3868 (sctp: the dataplane serves tcp and udp)",
                "3868/sctp -> [::]:3868 => 172.17.0.2:3868 (sctp: the dataplane serves tcp and udp)",
            ]
        );
    }

    // A wildcard spec: the IPv4 binding is served, its IPv6 twin is planned but not served.
    #[test]
    fn wildcard_to_an_ipv4_container_keeps_the_ipv6_twin_unserved() {
        let plan = build(&["8080:80=172.17.0.2"]).unwrap();
        assert_eq!(
            plan.bindings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80"]
        );
        assert_eq!(
            shown(&plan),
            [
                "80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80",
                "80/tcp -> [::]:8080 => 172.17.0.2:80",
            ]
        );
        let unserved: Vec<_> = plan.unserved().collect();
        assert_eq!(unserved.len(), 1);
        assert!(unserved[0].twin);
        assert_eq!(
            unserved[0].unserved(),
            Some("the container has no IPv6 address")
        );
    }

    #[test]
    fn explicit_ipv4_wildcard_has_no_ipv6_twin() {
        let plan = build(&["0.0.0.0:8080:80=172.17.0.2"]).unwrap();
        assert_eq!(shown(&plan), ["80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80"]);
        assert_eq!(plan.bindings[0].host_ip, None);
    }

    #[test]
    fn pairwise_range_is_one_binding_per_port() {
        let plan = build(&["127.0.0.1:5000-5001:6000-6001/udp=172.17.0.3"]).unwrap();
        assert_eq!(
            plan.bindings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "6000/udp -> 127.0.0.1:5000 => 172.17.0.3:6000",
                "6001/udp -> 127.0.0.1:5001 => 172.17.0.3:6001",
            ]
        );
    }

    // Ephemeral: the lowest port of the range that is not reserved, in use or already taken,
    // the same for both families.
    #[test]
    fn allocation_ephemeral_skips_reserved_in_use_and_taken() {
        let plan = build(&[
            "80=172.17.0.2",
            "127.0.0.1::81=172.17.0.2",
            "103:82=172.17.0.2",
        ])
        .unwrap();
        assert_eq!(
            shown(&plan),
            [
                // 100 in use, 101 reserved, 102 in use, 103 taken by the fixed spec.
                "80/tcp -> 0.0.0.0:106 => 172.17.0.2:80",
                "80/tcp -> [::]:106 => 172.17.0.2:80",
                "81/tcp -> 127.0.0.1:107 => 172.17.0.2:81",
                "82/tcp -> 0.0.0.0:103 => 172.17.0.2:82",
                "82/tcp -> [::]:103 => 172.17.0.2:82",
            ]
        );
    }

    #[test]
    fn allocation_is_per_protocol() {
        let plan = build(&["53/udp=172.17.0.2", "53=172.17.0.2"]).unwrap();
        // udp 100 is free; tcp 100 and 102 are in use, 101 reserved.
        assert_eq!(plan.bindings[0].host_port, 100);
        assert_eq!(plan.bindings[1].host_port, 103);
    }

    #[test]
    fn allocation_host_port_zero_is_ephemeral() {
        let plan = build(&["0:80=172.17.0.2"]).unwrap();
        assert_eq!(plan.bindings[0].host_port, 103);
    }

    // A window is honoured as given (reserved ports too, as Docker does), minus in-use ports.
    #[test]
    fn allocation_window_takes_one_free_port_of_the_window() {
        let plan = build(&["100-105:8080=172.17.0.2"]).unwrap();
        assert_eq!(plan.bindings.len(), 1);
        assert_eq!(plan.bindings[0].host_port, 101);
        let plan = build(&["101:80=172.17.0.2", "100-105:8080=172.17.0.2"]).unwrap();
        assert_eq!(plan.bindings[1].host_port, 103);
    }

    #[test]
    fn allocation_names_the_spec_when_nothing_is_free() {
        // 100 is in use, 101 taken by the first spec.
        let err = build(&["101:80=172.17.0.2", "100-101:8080=172.17.0.2"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"no free host port for "100-101:8080=172.17.0.2": every port of 100-101/tcp is reserved, in use, or taken by another binding"#
        );
        let eight: Vec<String> = (0..8).map(|i| format!("{}=172.17.0.2", 80 + i)).collect();
        let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
        // 100-109 less 100, 101, 102, 104, 105: five free ports for eight requests.
        let err = build(&eight).unwrap_err();
        assert!(
            matches!(err, PlanError::NoFreePort { ref spec, .. } if spec == "85=172.17.0.2"),
            "{err}"
        );
    }

    #[test]
    fn pool_is_read_only_when_a_port_must_be_picked() {
        let plan = Plan::build(
            &requests(&["8080:80=172.17.0.2"]),
            &StaticAddrs::default(),
            || Err(io::Error::other("must not be called")),
        );
        assert!(plan.is_ok());
        let err = Plan::build(
            &requests(&["80=172.17.0.2"]),
            &StaticAddrs::default(),
            || {
                Err(io::Error::other(
                    "reading /proc/sys/net/ipv4/ip_local_port_range: denied",
                ))
            },
        )
        .unwrap_err();
        assert!(!err.is_bad_input());
    }

    #[test]
    fn services_resolve_through_container_addrs() {
        let addrs = StaticAddrs::new(&["web=172.17.0.2".parse().unwrap()]);
        let plan = build_with(&["9999:8000=web"], &addrs).unwrap();
        assert_eq!(
            plan.bindings[0].to_string(),
            "8000/tcp -> 0.0.0.0:9999 => 172.17.0.2:8000"
        );
        assert_eq!(plan.endpoints[0].service.as_deref(), Some("web"));

        let err = build_with(&["9999:8000=db"], &addrs).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""9999:8000=db" publishes to service "db", which has no container address: give it with --container db=IP"#
        );

        let twice = StaticAddrs::new(&[
            "web=172.17.0.2".parse().unwrap(),
            "web=172.17.0.2".parse().unwrap(),
        ]);
        assert!(build_with(&["9999:8000=web"], &twice).is_ok());
        let several = StaticAddrs::new(&[
            "web=172.17.0.2".parse().unwrap(),
            "web=172.17.0.3".parse().unwrap(),
        ]);
        let err = build_with(&["9999:8000=web"], &several).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"service "web": --container gives it several IPv4 addresses (172.17.0.2, 172.17.0.3), but a published port goes to one container (one address per family)"#
        );
    }

    #[test]
    fn preview_leaves_services_and_ephemeral_ports_open() {
        let endpoints = preview(
            &requests(&["9999:8000=webapp-flet", "127.0.0.1::5000", "80-90:8080=web"]),
            &StaticAddrs::default(),
        )
        .unwrap();
        let shown: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "8000/tcp -> 0.0.0.0:9999 => webapp-flet:8000",
                "8000/tcp -> [::]:9999 => webapp-flet:8000",
                "5000/tcp -> 127.0.0.1:0",
                "8080/tcp -> 0.0.0.0:80-90 => web:8080",
                "8080/tcp -> [::]:80-90 => web:8080",
            ]
        );
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_port_range("32768\t60999\n").unwrap(),
            PortRange {
                start: 32768,
                end: 60999
            }
        );
        assert!(parse_port_range("32768\n").is_err());
        assert_eq!(parse_reserved_ports("\n").unwrap(), []);
        assert_eq!(
            parse_reserved_ports("8080,30000-32767\n").unwrap(),
            [
                PortRange::single(8080),
                PortRange {
                    start: 30000,
                    end: 32767
                }
            ]
        );
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 20641 1 0000000000000000 100 0 0 10 0\n   \
                   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20642 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_socket_table(tcp).unwrap(), [3306, 8080].into());
        let tcp6 = "  sl  local_address                         remote_address                        st\n   \
                    0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(parse_socket_table(tcp6).unwrap(), [22].into());
    }

    #[test]
    fn system_pool_reads_this_namespace() {
        let pool = PortPool::from_system().expect("/proc is readable");
        assert!(pool.ephemeral.start <= pool.ephemeral.end);
    }
}
