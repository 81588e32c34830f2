//! The command line: arguments as typed (no I/O while parsing), then each command.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::XdpMode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    client,
    compose::{self, ComposeError, LoadError},
    dataplane::{FlowTimeouts, UplinkHook},
    docker::DockerHost,
    netdev::{HostAddrs, Interface},
    plan::{self, Endpoint, Plan, PlanError, PortPool, Request, Source, StaticAddrs},
    spec::{ContainerAddr, HostPort, Publish, SpecArg, SpecError, Target},
};

/// Publish container ports through an eBPF fast path: XDP rewrites host_ip:host_port to the
/// container on the uplink, TC rewrites the replies back on the bridge.
#[derive(Debug, Parser)]
#[command(name = "portmap", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish ports and serve them until Ctrl-C or SIGTERM.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Parse port specs and compose files and print the bindings they would publish.
    ///
    /// Needs no root and no kernel: nothing is loaded, no port is picked (an ephemeral host
    /// port shows as 0, a window as its range). Bad input exits 2, an unreadable file 1.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Publish more ports on a running instance, all or none.
    #[command(after_help = ADD_EXAMPLES)]
    Add(AddArgs),
    /// Withdraw published ports from a running instance, all or none; their flows end at once.
    #[command(after_help = RM_EXAMPLES)]
    Rm(RmArgs),
    /// List a running instance's bindings, one per line as `docker port` prints them.
    Ls(LsArgs),
    /// Show a running instance's bindings with packets, bytes and live flows, and why packets
    /// went the way they did.
    Stats(StatsArgs),
}

const ADD_EXAMPLES: &str = "\
Examples:
  portmap add 9090:80=172.17.0.2
  portmap add --iface ens160 127.0.0.1::5000/udp=172.17.0.3
  portmap add --replace 8080:80=172.17.0.4        # re-point 8080 to another container
  portmap add 8000:8000=web --container web=172.17.0.5";

const RM_EXAMPLES: &str = "\
Examples:
  portmap rm 8080               # tcp 8080 on whichever address it is published
  portmap rm 5353/udp 127.0.0.1:5000";

const RUN_EXAMPLES: &str = "\
Examples:
  portmap run --iface ens160 --publish 8080:80=172.17.0.2
  portmap run --iface ens160 --bridge docker0 \\
      -p 8000:8000=172.17.0.2 -p 5000:8000=172.17.0.3 -p 127.0.0.1:3306:3306=172.17.0.4 \\
      -p 5353:53/udp=172.17.0.5
  portmap run --iface ens160 --compose compose.yml --container webapp-flet=172.17.0.2
  portmap run --iface ens160 --docker              # every port Docker publishes
  portmap run --iface ens160 --docker --docker-host unix:///run/user-docker.sock";

const CHECK_EXAMPLES: &str = "\
Examples:
  portmap check compose.yml
  portmap check 8080:80 127.0.0.1::5000/udp '[::1]:6001:6001=web'
  portmap check --json compose.yml --container webapp-flet=172.17.0.2";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The uplink clients' packets arrive on; it gets the XDP program.
    #[arg(long, value_name = "IFACE")]
    pub iface: String,

    /// The bridge the containers hang off; it gets the reply program.
    #[arg(long, value_name = "BRIDGE", default_value = "docker0")]
    pub bridge: String,

    /// A port to publish, as `SPEC=TARGET`, e.g. `8080:80=172.17.0.2`.
    ///
    /// Most often `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]=CONTAINER_IP`. SPEC is
    /// Docker's whole `-p` grammar, `[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTO]`: ranges
    /// map pairwise (`8080-8081:80-81`), a host range with one container port takes one free
    /// port of that window (`8000-9000:80`), and no host port (`127.0.0.1::5000`, `5000`) or
    /// host port 0 takes an ephemeral one. Without HOST_IP the port is published on every
    /// address of the host, as `docker run -p` does. TARGET is the container's IP address, or
    /// a service name whose address --container gives. Repeat the flag for more ports; two
    /// specs that want the same host port are refused.
    /// Without --publish or --compose the instance starts with nothing published, for
    /// `portmap add` to fill.
    #[arg(short = 'p', long = "publish", value_name = "SPEC=TARGET")]
    pub publish: Vec<Publish>,

    /// A compose file whose services' `ports` to publish (repeatable).
    ///
    /// Each service needs its container's address: --container SERVICE=IP. Files are not
    /// merged as `docker compose -f a -f b` merges them: a port two files both list is a
    /// conflict.
    #[arg(long = "compose", value_name = "FILE")]
    pub compose: Vec<PathBuf>,

    /// The address of a service's one container, as `SERVICE=IP` (repeatable).
    #[arg(long = "container", value_name = "SERVICE=IP")]
    pub containers: Vec<ContainerAddr>,

    /// Docker's "publish every EXPOSEd port": refused, portmap has no image metadata.
    ///
    /// Publish each port instead: `-p CONTAINER_PORT=TARGET` gives it an ephemeral host port,
    /// as -P does.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,

    /// Where the uplink's translation runs: `xdp` or `tc` (TC ingress).
    ///
    /// XDP runs in the NIC driver before the kernel builds a packet buffer: the fast path on
    /// physical NICs. On virtual uplinks (veth, and some virtual NICs) native XDP copies every
    /// packet first, and TC ingress is cheaper.
    #[arg(long, value_enum, value_name = "HOOK", default_value_t = HookArg::Xdp)]
    pub hook: HookArg,

    /// How to attach XDP: `driver` (native, the default) or `skb` (generic: works on every
    /// driver, slower). Only with `--hook xdp`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpModeArg>,

    /// Where to pin the maps for `portmap stats` [default: /sys/fs/bpf/portmap/IFACE].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// Follow a Docker engine: publish every port its running containers publish, and keep
    /// in step as containers start, stop and move.
    ///
    /// Docker's own rules stay in place and carry the traffic again when portmap stops. Each
    /// container's bindings are owned by `docker:NAME (SHORT_ID)`. --publish and --compose
    /// bindings may be used beside it; one on a port a container publishes is refused, naming
    /// both.
    #[arg(long)]
    pub docker: bool,

    /// The engine's socket [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, value_name = "unix:///PATH", requires = "docker")]
    pub docker_host: Option<String>,

    /// The cgroup (v2) whose processes' connections to published ports are translated at the
    /// socket: `localhost:PORT`, `0.0.0.0:PORT`, the host's own address. Only sockets of this
    /// network namespace are touched (Linux 5.14 or later). [default: the cgroup v2 root]
    #[arg(long, value_name = "DIR", conflicts_with = "no_cgroup")]
    pub cgroup: Option<PathBuf>,

    /// Leave the host's own connections alone (no cgroup programs).
    #[arg(long)]
    pub no_cgroup: bool,

    /// How long a UDP flow may be idle before it is forgotten (its replies are then not
    /// translated): `120s`, `5m`, `1h`.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub udp_timeout: std::time::Duration,

    /// How long an established TCP flow may be idle before it is forgotten.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub tcp_timeout: std::time::Duration,

    /// How long a TCP flow is kept after a FIN or RST.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub tcp_close_timeout: std::time::Duration,
}

/// `90`, `90s`, `5m`, `2h`, `1d`: a whole number of seconds, minutes, hours or days.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: the unit is s, m, h or d (e.g. 120s, 5m)"
            ));
        }
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a whole number then a unit, e.g. 120s"))?;
    if count == 0 {
        return Err(format!("{text:?}: a timeout must be longer than zero"));
    }
    count
        .checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HookArg {
    Xdp,
    Tc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Driver,
    Skb,
}

impl From<XdpModeArg> for XdpMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Driver => Self::Driver,
            XdpModeArg::Skb => Self::Skb,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Compose files and port specs to check.
    ///
    /// An argument naming an existing file is read as a compose file; anything else is a port
    /// spec, `SPEC[=TARGET]`, the target optional here.
    #[arg(value_name = "FILE|SPEC", required_unless_present = "publish_all")]
    pub inputs: Vec<String>,

    /// Print JSON instead: `{"bindings":[...],"errors":[...]}` (README, "Port specs").
    #[arg(long)]
    pub json: bool,

    /// A service's container address, `SERVICE=IP`, shown instead of its name (repeatable).
    #[arg(long = "container", value_name = "SERVICE=IP")]
    pub containers: Vec<ContainerAddr>,

    /// Docker's "publish every EXPOSEd port": refused, portmap has no image metadata.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
}

/// Which running instance a command talks to.
#[derive(Debug, Args)]
pub struct InstanceArgs {
    /// The uplink the instance serves. Without this or --pin-dir: the only running instance.
    #[arg(long, value_name = "IFACE", global = true)]
    pub iface: Option<String>,

    /// The pin directory the instance was started with.
    #[arg(long, value_name = "DIR", global = true, conflicts_with = "iface")]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,

    /// Ports to publish, `SPEC=TARGET` as for `run --publish`.
    #[arg(value_name = "SPEC=TARGET", required = true)]
    pub specs: Vec<String>,

    /// A service's container address, `SERVICE=IP`, for TARGETs that name a service.
    #[arg(long = "container", value_name = "SERVICE=IP")]
    pub containers: Vec<String>,

    /// Re-point: a binding that already holds one of these host ports is withdrawn in the same
    /// step, its flows ending with it, instead of being a conflict.
    #[arg(long)]
    pub replace: bool,

    /// The bridge these containers hang off, when not the one `run` was given (a Docker user
    /// network, say); it gets the reply program if it has none yet.
    #[arg(long, value_name = "BRIDGE")]
    pub bridge: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,

    /// Host sides of the bindings to withdraw, `[HOST_IP:]HOST_PORT[/PROTO]` (tcp by default;
    /// without HOST_IP, on every address it is published on).
    #[arg(value_name = "[HOST_IP:]HOST_PORT[/PROTO]", required = true)]
    pub selectors: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,

    /// Print `{"bindings":[...]}` (README, "Running instances").
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,

    /// Print the counters as JSON (README, "Running instances").
    #[arg(long)]
    pub json: bool,

    /// Keep refreshing (in place on a terminal) until interrupted or --count tables.
    #[arg(long)]
    pub watch: bool,

    /// Seconds between refreshes with --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
    pub interval: f64,

    /// Stop --watch after this many tables.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
}

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The input is wrong (exit 2): fix the command line.
    BadInput(anyhow::Error),
    /// The input was fine but the system refused (exit 1).
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) => 2,
            Self::Runtime(_) => 1,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::BadInput(e) | Self::Runtime(e) => e,
        }
    }
}

/// Runs the command `cli` names.
///
/// # Errors
///
/// A [`Failure`] saying whether the input or the system was at fault.
pub async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => crate::serve::run(RunConfig::from_args(args)?).await,
        Command::Check(args) => check(&args),
        Command::Add(args) => client::add(
            &args.instance,
            &args.specs,
            &args.containers,
            args.replace,
            args.bridge.as_deref(),
        ),
        Command::Rm(args) => client::rm(&args.instance, &args.selectors),
        Command::Ls(args) => client::ls(&args.instance, args.json),
        Command::Stats(args) => {
            let watch = match args.watch {
                false => None,
                true => Some(client::Watch {
                    interval: client::interval(args.interval).map_err(Failure::BadInput)?,
                    count: args.count,
                }),
            };
            client::stats(&args.instance, args.json, watch)
        }
    }
}

/// Where an instance serving `iface` pins its maps unless told otherwise.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/portmap").join(iface)
}

/// Everything `run` needs, resolved and checked before the kernel is touched.
pub struct RunConfig {
    pub uplink: Interface,
    pub bridge: Interface,
    pub plan: Plan,
    /// The host's addresses when `run` started (kept current while it serves).
    pub host_addrs: HostAddrs,
    pub hook: UplinkHook,
    pub pin_dir: PathBuf,
    /// `--container` addresses, kept for services named by later `portmap add`s.
    pub containers: Vec<ContainerAddr>,
    /// `--docker`: the engine to follow.
    pub docker: Option<DockerHost>,
    /// Where the socket programs go; `None` with `--no-cgroup`.
    pub cgroup: Option<PathBuf>,
    /// Whether `--cgroup` named it: then a failure to attach fails `run`; the default only
    /// warns (on a kernel that cannot scope the programs to a namespace, before 5.14).
    pub cgroup_explicit: bool,
    pub timeouts: FlowTimeouts,
}

impl RunConfig {
    fn from_args(args: RunArgs) -> Result<Self, Failure> {
        let RunArgs {
            iface,
            bridge,
            publish,
            compose,
            containers,
            publish_all,
            hook,
            xdp_mode,
            pin_dir,
            docker,
            docker_host,
            cgroup,
            no_cgroup,
            udp_timeout,
            tcp_timeout,
            tcp_close_timeout,
        } = args;
        let docker = match (docker, docker_host) {
            (false, _) => None,
            (true, Some(url)) => Some(
                DockerHost::parse(&url)
                    .map_err(|e| Failure::BadInput(anyhow!("--docker-host {e}")))?,
            ),
            (true, None) => {
                Some(DockerHost::from_env().map_err(|e| Failure::BadInput(anyhow!(e)))?)
            }
        };
        let cgroup_explicit = cgroup.is_some();
        let cgroup = match (no_cgroup, cgroup) {
            (true, _) => None,
            (false, Some(dir)) => Some(dir),
            (false, None) => match crate::cgroup::v2_root() {
                Some(root) => Some(root),
                None => {
                    log::warn!(
                        "no cgroup v2 hierarchy is mounted: the host's own connections to \
                         published ports are not translated (give --cgroup DIR, or --no-cgroup \
                         to silence this)"
                    );
                    None
                }
            },
        };
        let timeouts = FlowTimeouts {
            udp: udp_timeout,
            tcp: tcp_timeout,
            tcp_closing: tcp_close_timeout,
        };
        let hook = match (hook, xdp_mode) {
            (HookArg::Xdp, mode) => UplinkHook::Xdp(mode.unwrap_or(XdpModeArg::Driver).into()),
            (HookArg::Tc, None) => UplinkHook::Tc,
            (HookArg::Tc, Some(_)) => {
                return Err(Failure::BadInput(anyhow!(
                    "--xdp-mode applies to --hook xdp only; drop it or use --hook xdp"
                )));
            }
        };
        if publish_all {
            return Err(Failure::BadInput(publish_all_refused()));
        }
        let mut requests: Vec<Request> = publish.iter().map(Request::from).collect();
        for path in &compose {
            match compose::load(path) {
                Ok(file) => requests.extend(file.requests()),
                Err(error @ LoadError::Read { .. }) => return Err(Failure::Runtime(error.into())),
                Err(error @ LoadError::Invalid(_)) => {
                    return Err(Failure::BadInput(error.into()));
                }
            }
        }
        let addrs = StaticAddrs::new(&containers);
        for warning in unused_containers(&addrs, &requests) {
            log::warn!("{warning}");
        }
        let plan = Plan::build(&requests, &addrs, PortPool::from_system).map_err(plan_failure)?;
        if plan.bindings.is_empty() && !compose.is_empty() {
            return Err(Failure::BadInput(anyhow!(
                "nothing to publish: the compose files list no ports"
            )));
        }
        // Twins of wildcard specs in a family the container has no address of: Docker would
        // publish them (through its proxy); a translation cannot cross families.
        let twins: Vec<String> = plan
            .unserved()
            .map(|e| {
                format!(
                    "{}/{}",
                    crate::spec::host_and_port(e.host_ip, e.host_port),
                    e.proto
                )
            })
            .collect();
        if !twins.is_empty() {
            // Thousands of specs must not make thousands of words: name a few, count the rest.
            const SHOWN: usize = 5;
            let more = twins.len().saturating_sub(SHOWN);
            let mut listed = twins[..twins.len().min(SHOWN)].join(", ");
            if more > 0 {
                listed.push_str(&format!(" and {more} more"));
            }
            log::info!("not published, the container has no address of that family: {listed}");
        }
        let interfaces = || -> anyhow::Result<_> {
            let uplink = Interface::by_name(&iface).context("--iface")?;
            let bridge = Interface::by_name(&bridge).context("--bridge")?;
            if uplink == bridge {
                bail!(
                    "--iface and --bridge are both {:?}; the uplink and the bridge must differ",
                    uplink.name
                );
            }
            Ok((uplink, bridge, HostAddrs::read()?))
        };
        let (uplink, bridge, host_addrs) = interfaces().map_err(Failure::BadInput)?;
        Ok(Self {
            pin_dir: pin_dir.unwrap_or_else(|| default_pin_dir(&uplink.name)),
            uplink,
            bridge,
            plan,
            host_addrs,
            hook,
            containers,
            docker,
            cgroup,
            cgroup_explicit,
            timeouts,
        })
    }
}

fn plan_failure(error: PlanError) -> Failure {
    if error.is_bad_input() {
        Failure::BadInput(error.into())
    } else {
        Failure::Runtime(error.into())
    }
}

fn publish_all_refused() -> anyhow::Error {
    anyhow!(
        "-P (publish every EXPOSEd port) needs the image's metadata, which portmap does not \
         have: publish each port instead; -p CONTAINER_PORT=TARGET gives it an ephemeral host \
         port, as -P does"
    )
}

/// A `--container` no spec targets is most likely a typo; it is harmless, so only say so.
fn unused_containers(addrs: &StaticAddrs, requests: &[Request]) -> Vec<String> {
    let targeted: BTreeSet<&str> = requests
        .iter()
        .filter_map(|r| match &r.target {
            Some(Target::Service(service)) => Some(service.as_str()),
            _ => None,
        })
        .collect();
    addrs
        .services()
        .filter(|s| !targeted.contains(s))
        .map(|service| {
            format!("--container {service}=...: no published port targets service {service:?}")
        })
        .collect()
}

/// What `check --json` prints; README "Port specs" documents it as a stable interface.
#[derive(Debug, Serialize)]
struct CheckReport {
    bindings: Vec<JsonBinding>,
    errors: Vec<Problem>,
}

/// One endpoint: one container port on one host address (a spec without host IP gives two,
/// `0.0.0.0` and `::`, as Docker publishes both).
#[derive(Debug, Serialize)]
struct JsonBinding {
    container_port: u16,
    proto: String,
    /// `0.0.0.0` or `::` for every local address of that family.
    host_ip: String,
    /// 0 when `run` picks it: an ephemeral port, or one of `host_port_range`.
    host_port: u16,
    /// The window `run` picks the port from (`8000-9000:80`); null otherwise.
    host_port_range: Option<JsonRange>,
    /// The compose service or `=SERVICE` target; null for a target given as an address.
    service: Option<String>,
    /// null while unresolved (no `--container` for the service, or no target).
    container_ip: Option<String>,
    /// `FILE:LINE` for a compose entry, `command line` for an argument.
    source: String,
    /// The compose path (`services.web.ports[0]`); null for an argument.
    entry: Option<String>,
    /// The spec as written (a long-syntax entry in canonical short form).
    spec: String,
    /// Whether `run` serves it today.
    served: bool,
    /// Why not, when it does not (IPv6, sctp).
    limitation: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct JsonRange {
    start: u16,
    end: u16,
}

/// One thing wrong with the input, for text (`line`) and JSON (the other fields).
#[derive(Debug, Serialize)]
struct Problem {
    source: Option<String>,
    entry: Option<String>,
    spec: Option<String>,
    message: String,
    #[serde(skip)]
    line: String,
}

impl From<ComposeError> for Problem {
    fn from(error: ComposeError) -> Self {
        Self {
            source: Some(format!("{}:{}", error.file, error.line)),
            entry: Some(error.entry.clone()),
            spec: error.spec.clone(),
            line: error.to_string(),
            message: error.reason,
        }
    }
}

impl From<SpecError> for Problem {
    fn from(error: SpecError) -> Self {
        Self {
            source: Some(COMMAND_LINE.into()),
            entry: None,
            spec: Some(error.input.clone()),
            line: error.to_string(),
            message: error.reason,
        }
    }
}

impl From<PlanError> for Problem {
    fn from(error: PlanError) -> Self {
        Self {
            source: None,
            entry: None,
            spec: None,
            message: error.to_string(),
            line: error.to_string(),
        }
    }
}

const COMMAND_LINE: &str = "command line";

impl From<&Endpoint> for JsonBinding {
    fn from(endpoint: &Endpoint) -> Self {
        let (source, entry, spec) = match &endpoint.source {
            Source::Arg(text) => (COMMAND_LINE.to_owned(), None, text.clone()),
            Source::Compose {
                file,
                line,
                entry,
                spec,
            } => (format!("{file}:{line}"), Some(entry.clone()), spec.clone()),
        };
        Self {
            container_port: endpoint.container_port,
            proto: endpoint.proto.to_string(),
            host_ip: endpoint.host_ip.to_string(),
            host_port: endpoint.host_port,
            host_port_range: match endpoint.asked {
                HostPort::Window(range) => Some(JsonRange {
                    start: range.start,
                    end: range.end,
                }),
                HostPort::Ephemeral | HostPort::Fixed(_) => None,
            },
            service: endpoint.service.clone(),
            container_ip: endpoint.container_ip.map(|ip| ip.to_string()),
            source,
            entry,
            spec,
            served: endpoint.unserved().is_none(),
            limitation: endpoint.unserved(),
        }
    }
}

/// `portmap check`: parses everything, reports every problem, prints what would be published.
fn check(args: &CheckArgs) -> Result<(), Failure> {
    if args.publish_all {
        return Err(Failure::BadInput(publish_all_refused()));
    }
    let mut requests = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    for input in &args.inputs {
        let path = Path::new(input);
        if path.exists() {
            match compose::load(path) {
                Ok(file) => requests.extend(file.requests()),
                Err(error @ LoadError::Read { .. }) => return Err(Failure::Runtime(error.into())),
                Err(LoadError::Invalid(errors)) => {
                    problems.extend(errors.into_iter().map(Problem::from));
                }
            }
            continue;
        }
        match input.parse::<SpecArg>() {
            Ok(SpecArg { text, spec, target }) => requests.push(Request {
                spec,
                target,
                source: Source::Arg(text),
            }),
            Err(error) if looks_like_a_file(input) => problems.push(Problem {
                source: Some(COMMAND_LINE.into()),
                entry: None,
                spec: Some(input.clone()),
                message: format!("no such file, nor a port spec: {}", error.reason),
                line: format!("no such file {input:?}, nor a port spec: {}", error.reason),
            }),
            Err(error) => problems.push(error.into()),
        }
    }
    let addrs = StaticAddrs::new(&args.containers);
    for warning in unused_containers(&addrs, &requests) {
        eprintln!("portmap: warning: {warning}");
    }
    let endpoints = if problems.is_empty() {
        plan::preview(&requests, &addrs).unwrap_or_else(|error| {
            problems.push(error.into());
            Vec::new()
        })
    } else {
        Vec::new()
    };

    if args.json {
        let report = CheckReport {
            bindings: endpoints.iter().map(JsonBinding::from).collect(),
            errors: problems,
        };
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Runtime(anyhow!(e).context("formatting the JSON report")))?;
        say!("{json}");
        return match report.errors.len() {
            0 => Ok(()),
            n => Err(Failure::BadInput(invalid_entries(n))),
        };
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{}", problem.line);
        }
        return Err(Failure::BadInput(invalid_entries(problems.len())));
    }
    if endpoints.is_empty() {
        eprintln!("portmap: no port is published");
    }
    for endpoint in &endpoints {
        match endpoint.unserved() {
            Some(limitation) => say!("{endpoint}  ({limitation})"),
            None => say!("{endpoint}"),
        };
    }
    Ok(())
}

fn invalid_entries(count: usize) -> anyhow::Error {
    let noun = if count == 1 { "problem" } else { "problems" };
    anyhow!("{count} {noun} in the input; nothing would be published")
}

/// Whether an argument that is no existing file was probably meant as one.
fn looks_like_a_file(input: &str) -> bool {
    [".yml", ".yaml", ".json"]
        .iter()
        .any(|ext| input.ends_with(ext))
        || ["./", "../", "~/"].iter().any(|p| input.starts_with(p))
        || input.starts_with('/') && input.matches('/').count() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portmap").chain(args.iter().copied()))
    }

    #[test]
    fn run_may_start_empty_or_from_compose() {
        // Empty: an instance for `portmap add` to fill.
        assert!(parse(&["run", "--iface", "ens160"]).is_ok());
        let Command::Run(args) = parse(&[
            "run",
            "--iface",
            "ens160",
            "--compose",
            "compose.yml",
            "--container",
            "web=172.17.0.2",
        ])
        .unwrap()
        .command
        else {
            panic!("a run command");
        };
        assert_eq!(args.compose, [PathBuf::from("compose.yml")]);
        assert_eq!(args.containers[0].service, "web");
        assert!(args.publish.is_empty());
    }

    #[test]
    fn run_publish_takes_the_full_grammar_and_service_targets() {
        let Command::Run(args) = parse(&[
            "run",
            "--iface",
            "ens160",
            "-p",
            "[::1]:6001:6001=web",
            "-p",
            "8000-9000:80=172.17.0.2",
            "-p",
            "127.0.0.1::5000/udp=db",
        ])
        .unwrap()
        .command
        else {
            panic!("a run command");
        };
        assert_eq!(args.publish.len(), 3);
        assert_eq!(args.publish[0].target, Target::Service("web".into()));
    }

    #[test]
    fn run_publish_error_names_the_flag_and_the_spec() {
        let error = parse(&["run", "--iface", "ens160", "-p", "8080:http=172.17.0.2"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--publish"), "{error}");
        assert!(
            error.contains(
                r#"invalid port spec "8080:http=172.17.0.2": container port "http" is not a number"#
            ),
            "{error}"
        );
    }

    #[test]
    fn run_docker_host_comes_with_docker() {
        assert!(
            parse(&[
                "run",
                "--iface",
                "ens160",
                "--docker-host",
                "unix:///d.sock"
            ])
            .is_err()
        );
        let Command::Run(args) = parse(&[
            "run",
            "--iface",
            "ens160",
            "--docker",
            "--docker-host",
            "unix:///d.sock",
        ])
        .unwrap()
        .command
        else {
            panic!("a run command");
        };
        assert!(args.docker);
        assert_eq!(args.docker_host.as_deref(), Some("unix:///d.sock"));
    }

    #[test]
    fn check_takes_files_and_specs_and_publish_all_alone() {
        let Command::Check(args) = parse(&["check", "compose.yml", "8080:80", "--json"])
            .unwrap()
            .command
        else {
            panic!("a check command");
        };
        assert_eq!(args.inputs, ["compose.yml", "8080:80"]);
        assert!(args.json);
        assert!(parse(&["check"]).is_err());
        assert!(parse(&["check", "-P"]).is_ok());
    }

    #[test]
    fn a_file_name_that_is_not_a_file_is_told_apart_from_a_spec() {
        for input in ["compose.yml", "x.yaml", "./compose", "/srv/app/compose"] {
            assert!(looks_like_a_file(input), "{input}");
        }
        for input in ["80:80", "80/udp", "/udp", "::1:80:80"] {
            assert!(!looks_like_a_file(input), "{input}");
        }
    }
}

#[cfg(test)]
mod instance_args_tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn rm_needs_a_selector_and_takes_the_instance() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("portmap").chain(args.iter().copied()))
        };
        assert!(parse(&["rm"]).is_err(), "a selector is required");
        let Command::Rm(args) = parse(&["rm", "--iface", "ens160", "8080", "5353/udp"])
            .unwrap()
            .command
        else {
            panic!("an rm command");
        };
        assert_eq!(args.instance.iface.as_deref(), Some("ens160"));
        assert_eq!(args.selectors, ["8080", "5353/udp"]);
        assert!(
            parse(&["ls", "--iface", "a", "--pin-dir", "/x"]).is_err(),
            "one instance at a time"
        );
        assert!(
            parse(&["stats", "--count", "3"]).is_err(),
            "--count only with --watch"
        );
    }
}
