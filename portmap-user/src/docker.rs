//! Following a Docker engine: every port its running containers publish, served through the
//! BPF path, and kept in step with the engine's event stream.
//!
//! - **The client.** The Engine API is HTTP/1.1 over the engine's Unix socket. A small client
//!   here speaks it (one connection per request, `Connection: close`; the event stream decoded
//!   chunk by chunk) rather than bollard, which would bring hyper, tower and their kin for the
//!   five kinds of GET request portmap makes. The API version is negotiated: `/_ping` says the
//!   engine's, and portmap uses it, or 1.41 if the engine is newer (an engine answers a client
//!   asking for a newer version than its own with 400).
//! - **Subscribe, then list.** [`connect`] opens `/events` first, asking for the last few
//!   seconds again (`since`), and only then lists the containers, so no change falls between
//!   the list and the stream: a change before the list is in the list, one after it comes
//!   through the stream. Every event is answered by inspecting that container (`GET
//!   /containers/{id}/json`) at once and again [`RECHECK`] later, since the engine sends some
//!   events (network `connect`, `disconnect`) a moment before the container shows the change.
//!   What counts is the container's state, not the event, so repeated or replayed events are
//!   harmless and the end state is the engine's.
//! - **One task, one loop.** [`follow`] runs as its own task and sends [`Update`]s over a
//!   channel; the run loop applies them with [`Follower::apply`], so the instance is only ever
//!   changed from the loop.
//! - **The engine going away.** The bindings stay (the containers usually keep running, and a
//!   daemon restart with `live-restore` keeps them all), and [`follow`] reconnects with backoff,
//!   0.25 s doubling to 5 s; on reconnecting it lists again and [`Follower::apply`] reconciles:
//!   containers gone meanwhile are withdrawn, new or changed ones published.
//!
//! **What is published.** Each `Ports` entry of a running container with a public port:
//! same host address (`0.0.0.0` is every address) and port, protocol, and the container's
//! address and port on the network Docker publishes through. Docker sends published ports to
//! one endpoint, the sandbox's gateway endpoint; portmap picks it as Docker orders the
//! candidates: a network that is not `internal` first, then by name. That network's bridge is
//! `com.docker.network.bridge.name` from its options (`docker0` for the default one), else
//! `br-` and the first 12 characters of its id. IPv6 host addresses (Docker's `[::]` twin) and
//! sctp are left to Docker, as the dataplane serves IPv4 TCP and UDP.
//!
//! **Owners and sources.** A container's bindings are owned by `docker:NAME (SHORT_ID)`, e.g.
//! `docker:web (3f2a9c1b8d7e)`, and each binding's source reads `container NAME
//! HOST_IP:HOST_PORT->PORT/PROTO`, as `docker ps` shows the port; so `portmap ls` names the
//! container, and a conflict with a `--publish` or compose binding names both sides. Docker
//! holds its published ports itself (docker-proxy, or its port allocator), so portmap does not.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::mpsc,
};

use crate::{
    instance::{Instance, Publication, Refused},
    netdev::Interface,
    plan::{Binding, PlanError},
    spec::Proto,
};

/// Where the engine listens unless `--docker-host` or `DOCKER_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// The newest API version this client is written against: Docker 20.10's.
const NEWEST_API: (u32, u32) = (1, 41);
/// The oldest it accepts: every field read here exists since.
const OLDEST_API: (u32, u32) = (1, 24);
/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on what the engine sends, so a confused peer cannot make portmap grow without end.
const MAX_HEAD: u64 = 64 << 10;
const MAX_BODY: usize = 256 << 20;
const MAX_CHUNK: usize = 16 << 20;
const MAX_EVENT: usize = 1 << 20;
/// Seconds of past events the engine replays on subscribing: they cover the moment between the
/// engine answering the subscription and registering it (it does these in that order).
const REPLAY_SECS: u64 = 5;
/// The first wait before reconnecting to an engine that went away, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// When a container an event named is looked at again (see [`stream_updates`]).
const RECHECK: Duration = Duration::from_millis(300);
/// The events that can change what a container publishes. Others (exec, health, attach, ...)
/// are not asked for.
const EVENTS: [&str; 8] = [
    "start",
    "restart",
    "die",
    "stop",
    "destroy",
    "rename",
    "connect",
    "disconnect",
];

/// A Docker engine's socket, `unix:///PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerHost {
    socket: PathBuf,
}

impl DockerHost {
    /// Parses `unix:///PATH`, the only transport portmap speaks (the engine runs on the host
    /// whose ports it publishes).
    ///
    /// # Errors
    ///
    /// Another scheme, or a path that is not absolute, quoting the input.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(path) = url.strip_prefix("unix://") else {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            return Err(if scheme.is_empty() {
                format!("{url:?} is not a Docker host: write unix:///PATH/TO/docker.sock")
            } else {
                format!(
                    "{url:?}: only unix:// sockets are supported (the engine must run on this \
                     host), not {scheme}://"
                )
            });
        };
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: the socket path must be absolute, as in unix:///var/run/docker.sock"
            ));
        }
        Ok(Self {
            socket: PathBuf::from(path),
        })
    }

    /// `DOCKER_HOST` when set, else [`DEFAULT_HOST`], as the docker CLI does.
    ///
    /// # Errors
    ///
    /// A `DOCKER_HOST` that [`DockerHost::parse`] refuses, saying it came from there.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("DOCKER_HOST") {
            Ok(url) if !url.is_empty() => {
                Self::parse(&url).map_err(|e| format!("DOCKER_HOST: {e}"))
            }
            _ => Self::parse(DEFAULT_HOST),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.socket.display())
    }
}

// ---------------------------------------------------------------------------------------------
// What the Engine API returns, the fields portmap reads.

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerSummary {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    ports: Vec<PortEntry>,
    #[serde(default)]
    network_settings: Option<SummaryNetworks>,
}

#[derive(Clone, Debug, Deserialize)]
struct PortEntry {
    #[serde(rename = "IP", default)]
    ip: Option<String>,
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    #[serde(rename = "PublicPort", default)]
    public_port: Option<u16>,
    #[serde(rename = "Type")]
    proto: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SummaryNetworks {
    #[serde(default)]
    networks: Option<BTreeMap<String, EndpointSettings>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointSettings {
    #[serde(rename = "NetworkID", default)]
    network_id: String,
    #[serde(rename = "IPAddress", default)]
    ip_address: String,
}

/// `GET /containers/{id}/json`: the container itself (the list reads a replica of it, which
/// the engine updates a moment after some of its changes).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: Option<InspectedState>,
    #[serde(default)]
    network_settings: Option<InspectedNetworks>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    #[serde(default)]
    running: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedNetworks {
    /// `"80/tcp"` to its host bindings (`null` when exposed only).
    #[serde(default)]
    ports: Option<BTreeMap<String, Option<Vec<HostBinding>>>>,
    #[serde(default)]
    networks: Option<BTreeMap<String, EndpointSettings>>,
}

#[derive(Clone, Debug, Deserialize)]
struct HostBinding {
    #[serde(rename = "HostIp", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: String,
}

impl Inspected {
    /// The same container as the list shows it, when it runs.
    fn summary(self) -> Option<ContainerSummary> {
        if !self.state.is_some_and(|s| s.running) {
            return None;
        }
        let settings = self.network_settings.unwrap_or_default();
        let mut ports = Vec::new();
        for (key, bindings) in settings.ports.into_iter().flatten() {
            let (port, proto) = key.split_once('/').unwrap_or((&key, "tcp"));
            let Ok(private_port) = port.parse() else {
                continue;
            };
            for binding in bindings.into_iter().flatten() {
                ports.push(PortEntry {
                    ip: Some(binding.host_ip),
                    private_port,
                    public_port: binding.host_port.parse().ok(),
                    proto: proto.to_owned(),
                });
            }
        }
        Some(ContainerSummary {
            id: self.id,
            names: vec![self.name],
            ports,
            network_settings: Some(SummaryNetworks {
                networks: settings.networks,
            }),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Network {
    id: String,
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

impl Network {
    /// The Linux bridge of a bridge-driver network.
    fn bridge(&self) -> String {
        self.options
            .as_ref()
            .and_then(|options| options.get("com.docker.network.bridge.name"))
            .filter(|name| !name.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("br-{}", short(&self.id)))
    }
}

#[derive(Clone, Debug, Deserialize)]
struct Event {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: Actor,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Actor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: HashMap<String, String>,
}

impl Event {
    /// The container whose published ports this event may have changed.
    fn container(&self) -> Option<&str> {
        let id = match self.kind.as_str() {
            "container" => Some(self.actor.id.as_str()),
            "network" => self.actor.attributes.get("container").map(String::as_str),
            _ => None,
        };
        id.filter(|id| !id.is_empty() && EVENTS.contains(&self.action.as_str()))
    }
}

/// The first 12 characters of an id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

// ---------------------------------------------------------------------------------------------
// From containers to bindings.

/// What one running container publishes through portmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub id: String,
    pub name: String,
    /// `docker:NAME (SHORT_ID)`: who owns the bindings in the instance.
    pub owner: String,
    /// The bridge its published network hangs off.
    pub bridge: String,
    /// Sorted, so that two listings of the same state compare equal.
    pub bindings: Vec<Binding>,
}

impl Desired {
    fn label(&self) -> String {
        format!("{} ({})", self.name, short(&self.id))
    }
}

/// A container's name as `docker ps` shows it: the one without a link path in it.
fn name_of(container: &ContainerSummary) -> String {
    let names = || container.names.iter().map(|n| n.trim_start_matches('/'));
    names()
        .find(|name| !name.contains('/'))
        .or_else(|| names().next())
        .map_or_else(|| short(&container.id).to_owned(), str::to_owned)
}

/// The owner label of a container's bindings.
pub fn owner_label(name: &str, id: &str) -> String {
    format!("docker:{name} ({})", short(id))
}

/// What a running container publishes: `Ok(None)` when it publishes nothing portmap serves,
/// `Err` (the reason) when it publishes ports portmap cannot serve.
fn translate(
    container: &ContainerSummary,
    networks: &HashMap<String, Network>,
) -> Result<Option<Desired>, String> {
    let name = name_of(container);
    let mut wanted = Vec::new();
    for port in &container.ports {
        let Some(public) = port.public_port else {
            continue; // exposed, not published
        };
        let proto = match port.proto.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                log::debug!("docker: {name}: {other} port {public} left to Docker");
                continue;
            }
        };
        let ip = port.ip.as_deref().unwrap_or("");
        let host_ip = match ip {
            "" | "0.0.0.0" => None,
            text => match text.parse::<Ipv4Addr>() {
                Ok(addr) => Some(addr),
                // Docker's IPv6 twin of every published port: not served yet.
                Err(_) => continue,
            },
        };
        wanted.push((host_ip, public, proto, port.private_port));
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let (network, addr) = published_network(container, networks)
        .map_err(|reason| format!("container {name} ({}): {reason}", short(&container.id)))?;
    let mut bindings: Vec<Binding> = wanted
        .into_iter()
        .map(|(host_ip, host_port, proto, port)| {
            let host = SocketAddrV4::new(host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), host_port);
            Binding {
                host_ip: host_ip.map(IpAddr::V4),
                host_port,
                proto,
                container: SocketAddr::V4(SocketAddrV4::new(addr, port)),
                origin: format!("container {name} {host}->{port}/{proto}"),
            }
        })
        .collect();
    bindings.sort_by(|a, b| {
        (a.proto.number(), a.host_port, a.host_ip, a.container).cmp(&(
            b.proto.number(),
            b.host_port,
            b.host_ip,
            b.container,
        ))
    });
    bindings.dedup();
    Ok(Some(Desired {
        owner: owner_label(&name, &container.id),
        id: container.id.clone(),
        name,
        bridge: network.bridge(),
        bindings,
    }))
}

/// The network Docker publishes a container's ports through, and its address there.
fn published_network<'a>(
    container: &ContainerSummary,
    networks: &'a HashMap<String, Network>,
) -> Result<(&'a Network, Ipv4Addr), String> {
    let endpoints = container
        .network_settings
        .as_ref()
        .and_then(|settings| settings.networks.as_ref());
    let mut candidates: Vec<(&Network, Ipv4Addr)> = Vec::new();
    for (name, endpoint) in endpoints.into_iter().flatten() {
        let Ok(addr) = endpoint.ip_address.parse::<Ipv4Addr>() else {
            continue; // no IPv4 address on this network
        };
        let network = networks.get(&endpoint.network_id).ok_or_else(|| {
            format!(
                "network {name} ({}) is unknown",
                short(&endpoint.network_id)
            )
        })?;
        candidates.push((network, addr));
    }
    // Docker's order for the gateway endpoint, which gets the published ports.
    candidates.sort_by(|(a, _), (b, _)| (a.internal, &a.name).cmp(&(b.internal, &b.name)));
    let Some(&(network, addr)) = candidates.first() else {
        return Err("it publishes ports but has no IPv4 address on any network".into());
    };
    if network.driver != "bridge" {
        return Err(format!(
            "its ports are published through network {} (driver {:?}), which has no Linux \
             bridge for portmap to send to",
            network.name, network.driver
        ));
    }
    Ok((network, addr))
}

/// The engine's state: every running container that publishes something portmap serves.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub containers: Vec<Desired>,
    /// Containers that publish ports portmap cannot serve, and why; Docker's own rules serve
    /// them.
    pub skipped: Vec<String>,
}

/// What [`follow`] tells the run loop.
#[derive(Debug)]
pub enum Update {
    /// The whole state, after reconnecting.
    Snapshot(Snapshot),
    /// One container's state now: `Ok(None)` when it is not running or publishes nothing.
    Container {
        id: String,
        state: Result<Option<Desired>, String>,
    },
    /// The engine went away (the reason); the bindings stay, and [`follow`] reconnects.
    Lost(String),
    /// Back after [`Update::Lost`]; the snapshot follows.
    Reconnected,
}

/// A conflict between a binding given to `run` and one a container publishes, naming both.
///
/// # Errors
///
/// The first conflict.
pub fn check_against(given: &[Binding], snapshot: &Snapshot) -> Result<(), PlanError> {
    for container in &snapshot.containers {
        for binding in &container.bindings {
            if let Some(other) = given.iter().find(|g| g.overlaps(binding)) {
                return Err(PlanError::Conflict {
                    first: other.origin.clone(),
                    second: binding.origin.clone(),
                    port: binding.host_port,
                    proto: binding.proto,
                });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over the Unix socket.

/// A response's status line and headers.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Why the engine's socket could not be reached, in words: the path, and what that means.
fn unreachable(host: &DockerHost, error: &io::Error) -> anyhow::Error {
    let path = host.socket.display();
    let why = match error.kind() {
        io::ErrorKind::NotFound => format!(
            "{path} does not exist; is dockerd running, and is that its socket? (--docker-host \
             or DOCKER_HOST names it)"
        ),
        io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {path}: the engine is not running")
        }
        io::ErrorKind::PermissionDenied => format!("permission denied on {path}"),
        _ => format!("connecting to {path}: {error}"),
    };
    anyhow!("cannot reach the Docker engine at {host}: {why}")
}

/// Connects to the engine's socket.
async fn open(host: &DockerHost) -> anyhow::Result<UnixStream> {
    UnixStream::connect(&host.socket)
        .await
        .map_err(|e| unreachable(host, &e))
}

/// Sends `GET target` on `stream`.
async fn send(
    host: &DockerHost,
    mut stream: UnixStream,
    target: &str,
) -> anyhow::Result<BufReader<UnixStream>> {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: portmap/{}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("sending GET {target} to {host}"))?;
    Ok(BufReader::new(stream))
}

/// One line, CRLF or LF ended, at most `limit` bytes.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: u64,
) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = (&mut *reader).take(limit).read_line(&mut line).await?;
    if n == 0 {
        bail!("the connection closed");
    }
    if !line.ends_with('\n') {
        bail!("a line longer than {limit} bytes");
    }
    line.truncate(line.trim_end_matches(['\r', '\n']).len());
    Ok(line)
}

async fn read_head<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> anyhow::Result<Head> {
    let status_line = read_line(reader, MAX_HEAD).await?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {status_line:?}"))?;
    let mut headers = Vec::new();
    let mut total = status_line.len() as u64;
    loop {
        let line = read_line(reader, MAX_HEAD).await?;
        total += line.len() as u64;
        if total > MAX_HEAD {
            bail!("response headers longer than {MAX_HEAD} bytes");
        }
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Head { status, headers })
}

/// One chunk of a chunked body; `None` after the last.
async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let line = read_line(reader, 1024).await?;
    let size_text = line.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size_text, 16)
        .with_context(|| format!("malformed chunk size {line:?}"))?;
    if size == 0 {
        // Trailers, then the empty line.
        while !read_line(reader, MAX_HEAD).await?.is_empty() {}
        return Ok(None);
    }
    if size > MAX_CHUNK {
        bail!("a chunk of {size} bytes (more than {MAX_CHUNK})");
    }
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk).await?;
    if !read_line(reader, 2).await?.is_empty() {
        bail!("no CRLF after a chunk");
    }
    Ok(Some(chunk))
}

async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    head: &Head,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked() {
        while let Some(chunk) = read_chunk(reader).await? {
            if body.len() + chunk.len() > MAX_BODY {
                bail!("a response larger than {MAX_BODY} bytes");
            }
            body.extend(chunk);
        }
    } else if let Some(length) = head.header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("malformed Content-Length {length:?}"))?;
        if length > MAX_BODY {
            bail!("a response of {length} bytes (more than {MAX_BODY})");
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else {
        reader
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .await?;
        if body.len() > MAX_BODY {
            bail!("a response larger than {MAX_BODY} bytes");
        }
    }
    Ok(body)
}

/// `GET target`, the whole answer, within [`REQUEST_TIMEOUT`].
async fn get(host: &DockerHost, target: &str) -> anyhow::Result<(Head, Vec<u8>)> {
    // Connecting fails fast and says why by itself; the rest is named by its request.
    let stream = open(host).await?;
    let exchange = async {
        let mut reader = send(host, stream, target).await?;
        let head = read_head(&mut reader).await?;
        let body = read_body(&mut reader, &head).await?;
        anyhow::Ok((head, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "the Docker engine at {host} did not answer GET {target} within {REQUEST_TIMEOUT:?}"
            )
        })?
        .with_context(|| format!("GET {target} from {host}"))
}

/// The engine's message for a failed request, or the status.
fn failure(host: &DockerHost, target: &str, head: &Head, body: &[u8]) -> anyhow::Error {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let message = serde_json::from_slice::<Message>(body)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned());
    anyhow!(
        "the Docker engine at {host} answered GET {target} with {}: {message}",
        head.status
    )
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `"1.41"` as (1, 41).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// The engine.

/// A reachable engine, its API version settled, and the networks portmap knows of.
struct Engine {
    host: DockerHost,
    /// `/v1.41`: the path prefix of every request.
    prefix: String,
    networks: HashMap<String, Network>,
}

impl Engine {
    /// Pings the engine and settles the API version.
    async fn connect(host: &DockerHost) -> anyhow::Result<Self> {
        let (head, body) = get(host, "/_ping").await?;
        if head.status != 200 {
            return Err(failure(host, "/_ping", &head, &body));
        }
        let theirs = head.header("api-version").and_then(parse_version);
        let version = match theirs {
            Some(theirs) if theirs < OLDEST_API => bail!(
                "the Docker engine at {host} speaks API {}.{}; portmap needs {}.{} or later",
                theirs.0,
                theirs.1,
                OLDEST_API.0,
                OLDEST_API.1
            ),
            Some(theirs) => theirs.min(NEWEST_API),
            // An engine that does not say is old, but not older than the oldest that pings.
            None => OLDEST_API,
        };
        log::debug!(
            "docker: engine at {host} speaks API {theirs:?}; using {}.{}",
            version.0,
            version.1
        );
        Ok(Self {
            host: host.clone(),
            prefix: format!("/v{}.{}", version.0, version.1),
            networks: HashMap::new(),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_json_or_missing(path)
            .await?
            .ok_or_else(|| anyhow!("the Docker engine at {} has no {path}", self.host))
    }

    /// As [`Engine::get_json`], with `None` for a 404 (a container removed meanwhile).
    async fn get_json_or_missing<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let target = format!("{}{path}", self.prefix);
        let (head, body) = get(&self.host, &target).await?;
        if head.status == 404 {
            return Ok(None);
        }
        if head.status != 200 {
            return Err(failure(&self.host, &target, &head, &body));
        }
        serde_json::from_slice(&body).map(Some).with_context(|| {
            format!(
                "the Docker engine at {} answered GET {target} with malformed JSON",
                self.host
            )
        })
    }

    async fn refresh_networks(&mut self) -> anyhow::Result<()> {
        let networks: Vec<Network> = self.get_json("/networks").await?;
        self.networks = networks.into_iter().map(|n| (n.id.clone(), n)).collect();
        Ok(())
    }

    /// Translates `container`, first learning the networks if it is on one not seen yet.
    async fn translate(
        &mut self,
        container: &ContainerSummary,
    ) -> anyhow::Result<Result<Option<Desired>, String>> {
        let unknown = container
            .network_settings
            .as_ref()
            .and_then(|s| s.networks.as_ref())
            .into_iter()
            .flatten()
            .any(|(_, endpoint)| {
                !endpoint.network_id.is_empty() && !self.networks.contains_key(&endpoint.network_id)
            });
        if unknown {
            self.refresh_networks().await?;
        }
        Ok(translate(container, &self.networks))
    }

    /// Every running container's bindings.
    async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        self.refresh_networks().await?;
        let mut snapshot = Snapshot::default();
        let running: Vec<ContainerSummary> = self.get_json("/containers/json").await?;
        for container in running {
            match self.translate(&container).await? {
                Ok(Some(desired)) => snapshot.containers.push(desired),
                Ok(None) => {}
                Err(reason) => snapshot.skipped.push(reason),
            }
        }
        Ok(snapshot)
    }

    /// One container's state now.
    async fn container(&mut self, id: &str) -> anyhow::Result<Result<Option<Desired>, String>> {
        let inspected: Option<Inspected> = self
            .get_json_or_missing(&format!("/containers/{}/json", encode(id)))
            .await?;
        match inspected.and_then(Inspected::summary) {
            Some(container) => self.translate(&container).await,
            None => Ok(Ok(None)),
        }
    }

    /// Opens the event stream, replaying the last few seconds.
    async fn subscribe(&self) -> anyhow::Result<Events> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(REPLAY_SECS);
        let filters = serde_json::json!({
            "type": ["container", "network"],
            "event": EVENTS,
        });
        let target = format!(
            "{}/events?since={since}&filters={}",
            self.prefix,
            encode(&filters.to_string())
        );
        let stream = open(&self.host).await?;
        let opened = async {
            let mut reader = send(&self.host, stream, &target).await?;
            let head = read_head(&mut reader).await?;
            anyhow::Ok((reader, head))
        };
        let (mut reader, head) = tokio::time::timeout(REQUEST_TIMEOUT, opened)
            .await
            .map_err(|_| anyhow!("the Docker engine at {} did not open /events", self.host))??;
        if head.status != 200 {
            let body = read_body(&mut reader, &head).await.unwrap_or_default();
            return Err(failure(&self.host, &target, &head, &body));
        }
        Ok(Events {
            chunked: head.chunked(),
            reader,
            pending: Vec::new(),
        })
    }
}

/// The engine's event stream: JSON objects, one a line, in HTTP chunks.
struct Events {
    reader: BufReader<UnixStream>,
    chunked: bool,
    /// Bytes received and not yet a whole line.
    pending: Vec<u8>,
}

impl Events {
    /// The next whole line already received, if any.
    fn buffered(&mut self) -> Option<Vec<u8>> {
        let end = self.pending.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        Some(line)
    }

    /// The next event line; an error when the stream ends (the engine went away).
    async fn next_line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(line) = self.buffered() {
                return Ok(line);
            }
            if self.pending.len() > MAX_EVENT {
                bail!("an event longer than {MAX_EVENT} bytes");
            }
            if self.chunked {
                match read_chunk(&mut self.reader).await? {
                    Some(chunk) => self.pending.extend(chunk),
                    None => bail!("the engine ended the event stream"),
                }
            } else {
                let mut buf = [0u8; 8192];
                let n = self.reader.read(&mut buf).await?;
                if n == 0 {
                    bail!("the engine closed the event stream");
                }
                self.pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// The ids of the containers `line` (an event) may have changed, added to `ids` once each.
fn note_event(line: &[u8], ids: &mut Vec<String>) {
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return;
    }
    match serde_json::from_str::<Event>(&text) {
        Ok(event) => {
            if let Some(id) = event.container() {
                log::debug!(
                    "docker: event {} {} for {}",
                    event.kind,
                    event.action,
                    short(id)
                );
                if !ids.iter().any(|known| known == id) {
                    ids.push(id.to_owned());
                }
            }
        }
        Err(error) => log::debug!("docker: ignoring a malformed event ({error}): {text}"),
    }
}

/// A connected engine: its event stream is open, and what it ran when it was listed.
pub struct Source {
    engine: Engine,
    events: Events,
}

/// Connects to the engine at `host`, subscribes to its events, then lists what runs.
///
/// # Errors
///
/// An engine that cannot be reached (naming the socket and why), or that answers badly.
pub async fn connect(host: &DockerHost) -> anyhow::Result<(Source, Snapshot)> {
    let mut engine = Engine::connect(host).await?;
    let events = engine.subscribe().await?;
    let snapshot = engine.snapshot().await?;
    Ok((Source { engine, events }, snapshot))
}

/// Follows the engine until the receiver goes away: each event becomes the state of its
/// container; an engine that goes away is reconnected to with backoff, then listed again.
pub async fn follow(source: Source, updates: mpsc::Sender<Update>) {
    let Source {
        mut engine,
        mut events,
    } = source;
    loop {
        let reason = match stream_updates(&mut engine, events, &updates).await {
            Ok(()) => return, // the run loop is gone
            Err(error) => format!("{error:#}"),
        };
        if updates.send(Update::Lost(reason)).await.is_err() {
            return;
        }
        let mut delay = RETRY_FIRST;
        let (again, snapshot) = loop {
            tokio::time::sleep(delay).await;
            match connect(&engine.host).await {
                Ok(connected) => break connected,
                Err(error) => {
                    log::debug!("docker: still away, next try in {delay:?}: {error:#}");
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        };
        (engine, events) = (again.engine, again.events);
        if updates.send(Update::Reconnected).await.is_err()
            || updates.send(Update::Snapshot(snapshot)).await.is_err()
        {
            return;
        }
    }
}

/// Reads the event stream on a task of its own, so that waiting for the next event can be cut
/// short (for a recheck) without losing what was half read.
async fn read_events(mut events: Events, lines: mpsc::Sender<anyhow::Result<Vec<u8>>>) {
    loop {
        let line = events.next_line().await;
        let ended = line.is_err();
        if lines.send(line).await.is_err() || ended {
            return;
        }
    }
}

/// Aborts a task when dropped: the event reader goes with the stream it serves.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads events and sends each changed container's state; `Ok` only when the run loop is gone.
///
/// Each container an event names is inspected at once, and again [`RECHECK`] later: the engine
/// sends some events (`network connect` and `disconnect`) a moment before the container shows
/// the change, and no later event would tell.
async fn stream_updates(
    engine: &mut Engine,
    events: Events,
    updates: &mpsc::Sender<Update>,
) -> anyhow::Result<()> {
    let (lines_tx, mut lines) = mpsc::channel(256);
    let _reader = AbortOnDrop(tokio::spawn(read_events(events, lines_tx)));
    let mut recheck: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        let next_recheck = recheck.values().min().copied();
        let mut ids = Vec::new();
        tokio::select! {
            line = lines.recv() => {
                let line = line.context("the event reader stopped")??;
                note_event(&line, &mut ids);
                // Whatever else has arrived already is handled with it: one look per container
                // for a burst of events (a restart is kill, die, disconnect, stop, connect,
                // start).
                while let Ok(line) = lines.try_recv() {
                    note_event(&line?, &mut ids);
                }
                let due = tokio::time::Instant::now() + RECHECK;
                for id in &ids {
                    recheck.insert(id.clone(), due);
                }
            }
            () = tokio::time::sleep_until(next_recheck.unwrap_or_else(tokio::time::Instant::now)),
                if next_recheck.is_some() =>
            {
                let now = tokio::time::Instant::now();
                recheck.retain(|id, due| {
                    if *due <= now {
                        ids.push(id.clone());
                    }
                    *due > now
                });
            }
        }
        for id in ids {
            let state = engine.container(&id).await?;
            if updates.send(Update::Container { id, state }).await.is_err() {
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run loop's side.

/// What the instance publishes for the engine's containers, by container id; changed only from
/// the run loop.
pub struct Follower {
    host: DockerHost,
    live: BTreeMap<String, Desired>,
}

impl Follower {
    pub fn new(host: DockerHost) -> Self {
        Self {
            host,
            live: BTreeMap::new(),
        }
    }

    pub fn host(&self) -> &DockerHost {
        &self.host
    }

    /// Containers whose ports are published.
    pub fn containers(&self) -> usize {
        self.live.len()
    }

    /// Publishes the snapshot taken at start-up; the first container that cannot be published
    /// fails the start.
    ///
    /// # Errors
    ///
    /// As [`Instance::publish`], naming the container.
    pub fn start(&mut self, instance: &mut Instance, snapshot: Snapshot) -> Result<(), Refused> {
        for reason in &snapshot.skipped {
            log::warn!("docker: left to Docker's own rules: {reason}");
        }
        for desired in snapshot.containers {
            let id = desired.id.clone();
            self.set(instance, &id, Some(desired))?;
        }
        Ok(())
    }

    /// Applies one update; what cannot be applied is logged and left to Docker's own rules.
    /// Returns the bindings it published.
    pub fn apply(&mut self, instance: &mut Instance, update: Update) -> Vec<Binding> {
        let mut published = Vec::new();
        match update {
            Update::Lost(reason) => log::warn!(
                "docker: lost the engine at {}: {reason}; keeping {} container(s) published, \
                 reconnecting",
                self.host,
                self.live.len()
            ),
            Update::Reconnected => {
                log::info!("docker: reconnected to {}; listing again", self.host);
            }
            Update::Snapshot(snapshot) => {
                for reason in &snapshot.skipped {
                    log::warn!("docker: left to Docker's own rules: {reason}");
                }
                // Withdrawals first, so a port that moved to another container is free.
                let gone: Vec<String> = self
                    .live
                    .keys()
                    .filter(|id| !snapshot.containers.iter().any(|d| &d.id == *id))
                    .cloned()
                    .collect();
                for id in gone {
                    published.extend(self.set_logged(instance, &id, None));
                }
                for desired in snapshot.containers {
                    let id = desired.id.clone();
                    published.extend(self.set_logged(instance, &id, Some(desired)));
                }
            }
            Update::Container { id, state } => match state {
                Ok(desired) => published.extend(self.set_logged(instance, &id, desired)),
                Err(reason) => {
                    log::warn!("docker: left to Docker's own rules: {reason}");
                    published.extend(self.set_logged(instance, &id, None));
                }
            },
        }
        published
    }

    fn set_logged(
        &mut self,
        instance: &mut Instance,
        id: &str,
        desired: Option<Desired>,
    ) -> Vec<Binding> {
        let label = desired
            .as_ref()
            .or_else(|| self.live.get(id))
            .map_or_else(|| short(id).to_owned(), Desired::label);
        self.set(instance, id, desired).unwrap_or_else(|refused| {
            let (Refused::BadInput(error) | Refused::Runtime(error)) = refused;
            log::error!(
                "docker: container {label} is not served by portmap (Docker's own rules still \
                 serve it): {error:#}"
            );
            Vec::new()
        })
    }

    /// Makes the instance publish `desired` for container `id`: unchanged state is left alone;
    /// a change withdraws the old bindings (ending their flows) and publishes the new ones,
    /// which it returns. Between the two, packets meet Docker's own rules rather than nothing.
    fn set(
        &mut self,
        instance: &mut Instance,
        id: &str,
        desired: Option<Desired>,
    ) -> Result<Vec<Binding>, Refused> {
        let desired = desired.filter(|d| !d.bindings.is_empty());
        if self.live.get(id) == desired.as_ref() {
            return Ok(Vec::new());
        }
        if let Some(old) = self.live.get(id) {
            let removed = instance.withdraw_owner(&old.owner)?;
            log::info!(
                "docker: withdrew container {} ({} binding(s))",
                old.label(),
                removed.len()
            );
            self.live.remove(id);
        }
        let Some(new) = desired else {
            return Ok(Vec::new());
        };
        let bridge = Interface::by_name(&new.bridge).map_err(|error| {
            Refused::Runtime(
                error.context(format!("the bridge of container {}'s network", new.label())),
            )
        })?;
        let publication = Publication {
            owner: Some(new.owner.clone()),
            hold_ports: false,
            replace: false,
        };
        let published = instance.publish(&new.bindings, &bridge, &publication)?;
        for entry in &published {
            log::info!(
                "docker: published {}  ({}, via {})",
                entry.binding,
                new.owner,
                new.bridge
            );
        }
        self.live.insert(id.to_owned(), new);
        Ok(published.into_iter().map(|p| p.binding).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(id: &str, name: &str, driver: &str, bridge: Option<&str>) -> Network {
        Network {
            id: id.into(),
            name: name.into(),
            driver: driver.into(),
            internal: false,
            options: bridge.map(|b| {
                [("com.docker.network.bridge.name".to_owned(), b.to_owned())]
                    .into_iter()
                    .collect()
            }),
        }
    }

    fn networks() -> HashMap<String, Network> {
        [
            network(&"d0".repeat(32), "bridge", "bridge", Some("docker0")),
            network(&"3bb9d2ec9283".repeat(5), "app", "bridge", None),
            network(&"aa".repeat(32), "lan", "macvlan", None),
        ]
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect()
    }

    /// A container as `GET /containers/json` returns it (Docker 20.10).
    fn container(json: &str) -> ContainerSummary {
        serde_json::from_str(json).unwrap()
    }

    const WEB: &str = r#"{
        "Id": "3035736c9a446f35d4121ae1c0ddd54d56c7e2e3bc174b99760a7c81f1f4851c",
        "Names": ["/other/alias", "/web"],
        "Ports": [
            {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
            {"PrivatePort": 443, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 9, "PublicPort": 9, "Type": "sctp"}
        ],
        "State": "running",
        "NetworkSettings": {"Networks": {"bridge": {
            "NetworkID": "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0",
            "IPAddress": "172.17.0.2", "IPPrefixLen": 16
        }}}
    }"#;

    #[test]
    fn a_container_publishes_its_ipv4_tcp_and_udp_ports_to_its_address() {
        let desired = translate(&container(WEB), &networks()).unwrap().unwrap();
        assert_eq!(desired.name, "web");
        assert_eq!(desired.owner, "docker:web (3035736c9a44)");
        assert_eq!(desired.bridge, "docker0");
        let shown: Vec<String> = desired
            .bindings
            .iter()
            .map(|b| format!("{b}  [{}]", b.origin))
            .collect();
        assert_eq!(
            shown,
            [
                "80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80  [container web 0.0.0.0:8080->80/tcp]",
                "53/udp -> 127.0.0.1:5353 => 172.17.0.2:53  [container web 127.0.0.1:5353->53/udp]",
            ]
        );
        assert_eq!(
            desired.bindings[0].host_ip, None,
            "0.0.0.0 is every address"
        );
    }

    #[test]
    fn a_user_network_without_a_bridge_name_uses_br_and_its_short_id() {
        let json = WEB
            .replace(r#""bridge": {"#, r#""app": {"#)
            .replace(&"d0".repeat(32), &"3bb9d2ec9283".repeat(5));
        let desired = translate(&container(&json), &networks()).unwrap().unwrap();
        assert_eq!(desired.bridge, "br-3bb9d2ec9283");
    }

    #[test]
    fn the_published_network_is_the_first_non_internal_one_by_name() {
        let mut nets = networks();
        let json = r#"{
            "Id": "ab", "Names": ["/two"],
            "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 80, "Type": "tcp"}],
            "NetworkSettings": {"Networks": {
                "bridge": {"NetworkID": "NET_B", "IPAddress": "172.17.0.5"},
                "app": {"NetworkID": "NET_A", "IPAddress": "172.18.0.5"}
            }}
        }"#;
        let json = json
            .replace("NET_B", &"d0".repeat(32))
            .replace("NET_A", &"3bb9d2ec9283".repeat(5));
        let desired = translate(&container(&json), &nets).unwrap().unwrap();
        assert_eq!(desired.bridge, "br-3bb9d2ec9283", "app sorts before bridge");
        assert_eq!(
            desired.bindings[0].container.ip(),
            IpAddr::V4(Ipv4Addr::new(172, 18, 0, 5))
        );
        nets.get_mut(&"3bb9d2ec9283".repeat(5)).unwrap().internal = true;
        let desired = translate(&container(&json), &nets).unwrap().unwrap();
        assert_eq!(
            desired.bridge, "docker0",
            "an internal network publishes nothing"
        );
    }

    #[test]
    fn ports_on_a_network_without_a_bridge_are_left_to_docker_with_the_reason() {
        let json = WEB.replace(
            "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0",
            &"aa".repeat(32),
        );
        let reason = translate(&container(&json), &networks()).unwrap_err();
        assert!(
            reason.contains("container web (3035736c9a44)") && reason.contains("macvlan"),
            "{reason}"
        );
    }

    #[test]
    fn a_container_that_publishes_nothing_or_only_ipv6_is_nothing() {
        let json = r#"{"Id": "ab", "Names": ["/quiet"],
            "Ports": [{"IP": "::", "PrivatePort": 80, "PublicPort": 80, "Type": "tcp"},
                      {"PrivatePort": 81, "Type": "tcp"}],
            "NetworkSettings": {"Networks": {}}}"#;
        assert_eq!(translate(&container(json), &networks()), Ok(None));
    }

    #[test]
    fn an_inspected_container_is_read_as_the_list_shows_it() {
        let json = r#"{
            "Id": "3035736c9a446f35d4121ae1c0ddd54d56c7e2e3bc174b99760a7c81f1f4851c",
            "Name": "/web",
            "State": {"Status": "running", "Running": true, "Pid": 812},
            "NetworkSettings": {
                "Ports": {
                    "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                               {"HostIp": "::", "HostPort": "8080"}],
                    "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
                    "443/tcp": null
                },
                "Networks": {"bridge": {
                    "NetworkID": "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0",
                    "IPAddress": "172.17.0.2"
                }}
            }
        }"#;
        let inspected: Inspected = serde_json::from_str(json).unwrap();
        let from_inspect = translate(&inspected.clone().summary().unwrap(), &networks());
        let from_list = translate(&container(WEB), &networks());
        assert_eq!(from_inspect, from_list);
        let stopped = json.replace(r#""Running": true"#, r#""Running": false"#);
        let stopped: Inspected = serde_json::from_str(&stopped).unwrap();
        assert!(
            stopped.summary().is_none(),
            "a stopped container publishes nothing"
        );
    }

    #[test]
    fn events_name_the_container_they_may_change() {
        let mut ids = Vec::new();
        for line in [
            r#"{"status":"start","id":"c1","Type":"container","Action":"start","Actor":{"ID":"c1","Attributes":{"name":"web"}}}"#,
            r#"{"Type":"network","Action":"connect","Actor":{"ID":"n1","Attributes":{"container":"c2","name":"bridge"}}}"#,
            r#"{"Type":"network","Action":"destroy","Actor":{"ID":"n1","Attributes":{"name":"x"}}}"#,
            r#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"c3"}}"#,
            r#"{"Type":"container","Action":"die","Actor":{"ID":"c1"}}"#,
            "not json",
            "",
        ] {
            note_event(line.as_bytes(), &mut ids);
        }
        assert_eq!(ids, ["c1", "c2"]);
    }

    #[test]
    fn docker_hosts_are_unix_sockets() {
        assert_eq!(
            DockerHost::parse("unix:///run/d.sock").unwrap().socket(),
            Path::new("/run/d.sock")
        );
        assert_eq!(
            DockerHost::parse("unix:///run/d.sock").unwrap().to_string(),
            "unix:///run/d.sock"
        );
        let tcp = DockerHost::parse("tcp://10.0.0.1:2375").unwrap_err();
        assert!(
            tcp.contains("only unix://") && tcp.contains("tcp://"),
            "{tcp}"
        );
        assert!(DockerHost::parse("unix://run/d.sock").is_err());
        assert!(
            DockerHost::parse("/run/d.sock")
                .unwrap_err()
                .contains("unix:///")
        );
    }

    #[test]
    fn versions_and_query_values() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(
            parse_version("1.43").map(|v| v.min(NEWEST_API)),
            Some((1, 41))
        );
        assert_eq!(parse_version("x"), None);
        assert_eq!(
            encode(r#"{"id":["a b"]}"#),
            "%7B%22id%22%3A%5B%22a%20b%22%5D%7D"
        );
    }

    #[test]
    fn a_conflict_with_a_given_binding_names_both() {
        let desired = translate(&container(WEB), &networks()).unwrap().unwrap();
        let given = Binding {
            host_ip: None,
            host_port: 8080,
            proto: Proto::Tcp,
            container: "172.17.0.9:80".parse().unwrap(),
            origin: "8080:80=172.17.0.9".into(),
        };
        let snapshot = Snapshot {
            containers: vec![desired],
            skipped: Vec::new(),
        };
        let error = check_against(&[given], &snapshot).unwrap_err().to_string();
        assert_eq!(
            error,
            r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.9" and by "container web 0.0.0.0:8080->80/tcp""#
        );
    }

    /// The chunked decoder on a stream cut at awkward places.
    #[tokio::test]
    async fn chunked_events_are_split_into_lines() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let body = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\n{\"a\":\r\n4\r\n1}\n{\r\n6\r\n\"b\":2}\r\n1\r\n\n\r\n0\r\n\r\n";
        server.write_all(body.as_bytes()).await.unwrap();
        drop(server);
        let mut reader = BufReader::new(client);
        let head = read_head(&mut reader).await.unwrap();
        assert!(head.chunked());
        let mut events = Events {
            reader,
            chunked: true,
            pending: Vec::new(),
        };
        assert_eq!(events.next_line().await.unwrap(), b"{\"a\":1}\n");
        assert_eq!(events.next_line().await.unwrap(), b"{\"b\":2}\n");
        let end = events.next_line().await.unwrap_err().to_string();
        assert!(end.contains("ended the event stream"), "{end}");
    }
}
