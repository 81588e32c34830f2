//! The command line: arguments as typed (no I/O while parsing), then each command.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs::{self, File},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::XdpMode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    compose::{self, ComposeError, LoadError},
    dataplane::{self, Dataplane, KernelBinding, Pinned, Published, UplinkHook},
    netdev::{self, Interface},
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
    /// Show a running instance's bindings, counters and flows.
    Stats(StatsArgs),
}

const RUN_EXAMPLES: &str = "\
Examples:
  portmap run --iface ens160 --publish 8080:80=172.17.0.2
  portmap run --iface ens160 --bridge docker0 \\
      -p 8000:8000=172.17.0.2 -p 5000:8000=172.17.0.3 -p 127.0.0.1:3306:3306=172.17.0.4 \\
      -p 5353:53/udp=172.17.0.5
  portmap run --iface ens160 --compose compose.yml --container webapp-flet=172.17.0.2";

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
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "SPEC=TARGET",
        required_unless_present = "compose"
    )]
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

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The uplink the instance serves (finds its pins under /sys/fs/bpf/portmap/IFACE).
    #[arg(long, value_name = "IFACE", required_unless_present = "pin_dir")]
    pub iface: Option<String>,

    /// The pin directory the instance was started with.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
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
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(&args),
        Command::Stats(args) => stats(&args).map_err(Failure::Runtime),
    }
}

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join("portmap").join(iface)
}

/// Everything `run` needs, resolved and checked before the kernel is touched.
struct RunConfig {
    uplink: Interface,
    bridge: Interface,
    plan: Plan,
    local_addrs: Vec<Ipv4Addr>,
    hook: UplinkHook,
    pin_dir: PathBuf,
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
        } = args;
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
        if plan.bindings.is_empty() {
            return Err(Failure::BadInput(anyhow!(
                "nothing to publish: the compose files list no ports"
            )));
        }
        // The IPv6 twins of wildcard specs: Docker would publish them, the dataplane cannot yet.
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
            log::info!("IPv6 not served yet, left out: {listed}");
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
            Ok((uplink, bridge, netdev::local_ipv4_addrs()?))
        };
        let (uplink, bridge, local_addrs) = interfaces().map_err(Failure::BadInput)?;
        Ok(Self {
            pin_dir: pin_dir.unwrap_or_else(|| default_pin_dir(&uplink.name)),
            uplink,
            bridge,
            plan,
            local_addrs,
            hook,
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

async fn run(args: RunArgs) -> Result<(), Failure> {
    let config = RunConfig::from_args(args)?;
    let _lock = lock_instance(&config.pin_dir).map_err(Failure::BadInput)?;
    prepare_pin_dir(&config.pin_dir).map_err(Failure::Runtime)?;

    let result = serve(&config).await;
    if let Err(error) = dataplane::unpin(&config.pin_dir) {
        log::warn!(
            "could not remove pins under {}: {error}",
            config.pin_dir.display()
        );
    }
    result.map_err(Failure::Runtime)
}

/// Loads, fills, pins and attaches, then serves until a signal. Returning drops the dataplane,
/// which detaches every program.
async fn serve(config: &RunConfig) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load()?;
    let logger = aya_log::EbpfLogger::init(dataplane.ebpf_mut());
    let published = dataplane.publish(&config.plan.bindings, &config.bridge)?;
    dataplane.set_local_addrs(&config.local_addrs)?;
    dataplane.pin_maps(&config.pin_dir)?;
    dataplane.attach(&config.uplink, &config.bridge, config.hook)?;

    println!(
        "portmap: serving {} binding(s) on {} ({}), replies from {}; maps pinned at {}",
        published.len(),
        config.uplink.name,
        config.hook,
        config.bridge.name,
        config.pin_dir.display()
    );
    for entry in &published {
        println!("  {}", entry.binding);
    }

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let forward_logs = async {
        match logger {
            // SAFETY: the AsyncFd owns the logger, so the ring buffer's fd stays open for as
            // long as it is registered.
            Ok(logger) => {
                match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
                    Ok(mut fd) => loop {
                        if let Ok(mut guard) = fd.readable_mut().await {
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    },
                    Err(error) => log::warn!("kernel-side logs unavailable: {error}"),
                }
            }
            Err(error) => log::warn!("kernel-side logs unavailable: {error}"),
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = sigint.recv() => log::info!("SIGINT: detaching"),
        _ = sigterm.recv() => log::info!("SIGTERM: detaching"),
        () = forward_logs => {}
    }

    println!("{}", final_report(&dataplane, &published));
    Ok(())
}

fn final_report(dataplane: &Dataplane, published: &[Published]) -> String {
    let mut out = String::from("portmap: final counters\n");
    for entry in published {
        match dataplane.binding_stats(entry.id) {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "  {}  in {} pkts {} B, out {} pkts {} B",
                    entry.binding,
                    s.to_container_packets,
                    s.to_container_bytes,
                    s.to_client_packets,
                    s.to_client_bytes
                );
            }
            Err(error) => {
                let _ = writeln!(out, "  {}  (counters unreadable: {error})", entry.binding);
            }
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// One instance per pin directory: a second would overwrite the first's pins and fight over
/// the interfaces. The lock lives in /run (bpffs holds no regular files) and dies with us.
fn lock_instance(pin_dir: &Path) -> anyhow::Result<File> {
    let lock_dir = Path::new("/run/portmap");
    fs::create_dir_all(lock_dir).with_context(|| format!("creating {}", lock_dir.display()))?;
    let name = pin_dir.to_string_lossy().replace('/', "_");
    let path = lock_dir.join(format!("{name}.lock"));
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another portmap is already serving with pins at {} (lock {} is held)",
            pin_dir.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Makes sure `dir` can take pins: on a bpffs (mounting the standard one if nothing is mounted
/// at /sys/fs/bpf, as bpftool does) and free of a crashed instance's leftovers.
fn prepare_pin_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.starts_with(BPFFS_ROOT) && !is_bpffs(Path::new(BPFFS_ROOT)) {
        mount_bpffs(Path::new(BPFFS_ROOT))?;
    }
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(existing) {
        bail!(
            "pin directory {} is not on a bpffs; mount one with `mount -t bpf bpf DIR`",
            dir.display()
        );
    }
    if dir.exists() {
        // We hold the instance lock, so whoever pinned these is gone.
        log::info!("removing stale pins under {}", dir.display());
        dataplane::unpin(dir)
            .with_context(|| format!("removing stale pins under {}", dir.display()))?;
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> anyhow::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("mounting a bpffs at {}", at.display()));
    }
    Ok(())
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
        println!("{json}");
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
            Some(limitation) => println!("{endpoint}  ({limitation})"),
            None => println!("{endpoint}"),
        }
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

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let dir = match (&args.pin_dir, &args.iface) {
        (Some(dir), _) => dir.clone(),
        (None, Some(iface)) => default_pin_dir(iface),
        (None, None) => unreachable!("clap requires --iface or --pin-dir"),
    };
    let pinned = Pinned::open(&dir)?;
    print!(
        "{}",
        stats_table(
            &pinned.bindings()?,
            pinned.flow_count()?,
            &pinned.reasons()?
        )
    );
    Ok(())
}

fn stats_table(
    bindings: &[KernelBinding],
    flows: usize,
    reasons: &[(portmap_common::Reason, u64)],
) -> String {
    let mut out = format!(
        "{:<36} {:>10} {:>12} {:>10} {:>12}\n",
        "BINDING", "IN_PKTS", "IN_BYTES", "OUT_PKTS", "OUT_BYTES"
    );
    for b in bindings {
        let proto = if b.key.proto == portmap_common::proto::UDP {
            "udp"
        } else {
            "tcp"
        };
        // A wildcard binding is one kernel key per local address.
        let host = if b.keys > 1 {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::from(b.key.addr)
        };
        let name = format!(
            "{}:{}/{} => {}:{}",
            host,
            u16::from_be_bytes(b.key.port),
            proto,
            Ipv4Addr::from(b.value.addr),
            u16::from_be_bytes(b.value.port)
        );
        let _ = writeln!(
            out,
            "{name:<36} {:>10} {:>12} {:>10} {:>12}",
            b.stats.to_container_packets,
            b.stats.to_container_bytes,
            b.stats.to_client_packets,
            b.stats.to_client_bytes
        );
    }
    let _ = writeln!(out, "flows: {flows}");
    for (reason, count) in reasons.iter().filter(|(_, n)| *n > 0) {
        let _ = writeln!(out, "{:<36} {count:>10}", reason.name());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portmap").chain(args.iter().copied()))
    }

    #[test]
    fn run_needs_publish_or_compose() {
        assert!(parse(&["run", "--iface", "ens160"]).is_err());
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
