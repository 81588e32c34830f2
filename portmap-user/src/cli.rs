//! The command line: arguments as typed (no I/O while parsing), then each command.

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::XdpMode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    dataplane::{self, Dataplane, KernelBinding, Pinned, Published},
    netdev::{self, Interface},
    plan::Plan,
    spec::Publish,
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
    /// Show a running instance's bindings, counters and flows.
    Stats(StatsArgs),
}

const RUN_EXAMPLES: &str = "\
Examples:
  portmap run --iface ens160 --publish 8080:80=172.17.0.2
  portmap run --iface ens160 --bridge docker0 \\
      -p 8000:8000=172.17.0.2 -p 5000:8000=172.17.0.3 -p 127.0.0.1:3306:3306=172.17.0.4 \\
      -p 5353:53/udp=172.17.0.5";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The uplink clients' packets arrive on; it gets the XDP program.
    #[arg(long, value_name = "IFACE")]
    pub iface: String,

    /// The bridge the containers hang off; it gets the reply program.
    #[arg(long, value_name = "BRIDGE", default_value = "docker0")]
    pub bridge: String,

    /// A port to publish, as `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]=CONTAINER_IP`.
    ///
    /// Without HOST_IP the port is published on every address of the host, as `docker run -p`
    /// does. Repeat the flag for more ports; two specs that want the same host port are refused.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "SPEC=TARGET",
        required = true
    )]
    pub publish: Vec<Publish>,

    /// How to attach XDP: `driver` runs in the NIC driver (fast; most NICs and veth support
    /// it), `skb` in the generic stack (works everywhere, slower).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = XdpModeArg::Driver)]
    pub xdp_mode: XdpModeArg,

    /// Where to pin the maps for `portmap stats` [default: /sys/fs/bpf/portmap/IFACE].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
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
    mode: XdpMode,
    pin_dir: PathBuf,
}

impl RunConfig {
    fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let RunArgs {
            iface,
            bridge,
            publish,
            xdp_mode,
            pin_dir,
        } = args;
        let plan = Plan::new(&publish)?;
        let uplink = Interface::by_name(&iface).context("--iface")?;
        let bridge = Interface::by_name(&bridge).context("--bridge")?;
        if uplink == bridge {
            bail!(
                "--iface and --bridge are both {:?}; the uplink and the bridge must differ",
                uplink.name
            );
        }
        Ok(Self {
            pin_dir: pin_dir.unwrap_or_else(|| default_pin_dir(&uplink.name)),
            uplink,
            bridge,
            plan,
            local_addrs: netdev::local_ipv4_addrs()?,
            mode: xdp_mode.into(),
        })
    }
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let config = RunConfig::from_args(args).map_err(Failure::BadInput)?;
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
    dataplane.attach(&config.uplink, &config.bridge, config.mode)?;

    println!(
        "portmap: serving {} binding(s) on {} (XDP {:?} mode), replies from {}; maps pinned at {}",
        published.len(),
        config.uplink.name,
        config.mode,
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
        let name = format!(
            "{}:{}/{} => {}:{}",
            Ipv4Addr::from(b.key.addr),
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
