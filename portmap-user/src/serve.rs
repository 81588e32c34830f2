//! `portmap run` once its arguments are resolved: take the instance lock, load and publish,
//! pin the maps, attach, then serve control requests until a signal, and clean up.

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::programs::Program;
use portmap_common::programs;
use tokio::{
    io::{
        AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest,
        unix::AsyncFd,
    },
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::{Failure, RunConfig},
    conntrack,
    control::{InstancePaths, Request, Response},
    dataplane::{self, Dataplane, FlowTimeouts},
    docker::{self, Follower},
    instance::{Instance, Refused},
    netdev::{AddrWatch, HostAddrs},
    plan::Binding,
};

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The largest control request read: ten thousand specs fit many times over.
const MAX_REQUEST: usize = 64 << 20;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs an instance until SIGINT or SIGTERM.
///
/// # Errors
///
/// A [`Failure`]: bad input (another instance, a port held elsewhere) or a runtime failure.
pub async fn run(config: RunConfig) -> Result<(), Failure> {
    let paths = InstancePaths::new(&config.pin_dir);
    let _lock = lock_instance(&paths).map_err(Failure::BadInput)?;
    prepare_pin_dir(&paths.pin_dir).map_err(Failure::Runtime)?;

    let result = serve(&config, &paths).await;
    if let Err(error) = dataplane::unpin(&paths.pin_dir) {
        log::warn!(
            "could not remove pins under {}: {error}",
            paths.pin_dir.display()
        );
    }
    let _ = fs::remove_file(&paths.socket);
    result
}

/// How many Docker updates may wait for the run loop before the event task waits in turn.
const DOCKER_BACKLOG: usize = 64;
/// With `--docker`, how long the reply program outlives the uplink's on SIGTERM or SIGINT (see
/// [`detach_uplink_first`]): requests portmap translated just before the switch are answered.
const HANDOVER: Duration = Duration::from_secs(1);

fn refused(refused: Refused) -> Failure {
    match refused {
        Refused::BadInput(e) => Failure::BadInput(e),
        Refused::Runtime(e) => Failure::Runtime(e),
    }
}

/// Loads, fills, pins and attaches, then serves until a signal. Returning drops the instance,
/// which detaches every program and frees every host port.
async fn serve(config: &RunConfig, paths: &InstancePaths) -> Result<(), Failure> {
    // The engine first: one that cannot be reached fails the start before anything is loaded,
    // and a port both it and the command line publish is refused naming both (before the
    // command line's ports are held, which would fail on Docker's own hold with a vaguer
    // message).
    let docker = match &config.docker {
        Some(host) => {
            let (source, snapshot) = docker::connect(host).await.map_err(Failure::Runtime)?;
            docker::check_against(&config.plan.bindings, &snapshot)
                .map_err(|e| Failure::BadInput(e.into()))?;
            Some((Follower::new(host.clone()), source, snapshot))
        }
        None => None,
    };
    // Before anything is loaded, pinned or attached (the engine's answer may take a while, and
    // a signal during it just ends the process): a signal from here on waits until the start is
    // complete and is then served like any other, so a supervisor that stops portmap as soon as
    // it says it serves still gets the clean-up.
    let signals = || -> anyhow::Result<_> {
        Ok((
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        ))
    };
    let (mut sigint, mut sigterm) = signals().map_err(Failure::Runtime)?;
    let mut dataplane = Dataplane::load().map_err(Failure::Runtime)?;
    let logger = aya_log::EbpfLogger::init(dataplane.ebpf_mut());
    dataplane
        .set_host_addrs(config.host_addrs.clone())
        .map_err(Failure::Runtime)?;
    let mut instance = Instance::start(
        dataplane,
        &config.plan,
        &config.bridge,
        config.containers.clone(),
    )
    .map_err(refused)?;
    // The containers' bindings go in before the programs are attached, so the first packet
    // already finds them; events from now on wait in the stream until the loop runs.
    let (updates_tx, mut updates) = mpsc::channel(DOCKER_BACKLOG);
    let mut follower = match docker {
        Some((mut follower, source, snapshot)) => {
            follower.start(&mut instance, snapshot).map_err(refused)?;
            tokio::spawn(docker::follow(source, updates_tx));
            Some(follower)
        }
        None => None,
    };
    let listener = listen(paths).map_err(Failure::Runtime)?;
    let mut ready = || -> anyhow::Result<()> {
        instance.dataplane().pin_maps(&paths.pin_dir)?;
        instance
            .dataplane_mut()
            .attach(&config.uplink, &config.bridge, config.hook)
    };
    ready().map_err(Failure::Runtime)?;
    let releaser = Releaser::start();
    releaser.release(all_bindings(&instance), local_addrs(&instance));
    let mut cgroup = config.cgroup.as_deref();
    if let Some(dir) = cgroup {
        match instance.dataplane_mut().attach_cgroup(dir) {
            Ok(()) => {}
            Err(error) if config.cgroup_explicit => return Err(Failure::Runtime(error)),
            Err(error) => {
                log::warn!("the host's own connections are not translated: {error:#}");
                cgroup = None;
            }
        }
    }

    if let Some(follower) = &follower {
        say!(
            "portmap: following the Docker engine at {}: {} running container(s) publish ports",
            follower.host(),
            follower.containers()
        );
    }
    let published: Vec<_> = instance
        .published_with_owner()
        .map(|(p, owner)| (p.binding.clone(), owner.map(str::to_owned)))
        .collect();
    say!(
        "portmap: serving {} binding(s) on {} ({}), replies from {}; control at {}",
        published.len(),
        config.uplink.name,
        config.hook,
        config.bridge.name,
        paths.socket.display()
    );
    match cgroup {
        Some(dir) => say!(
            "  host-local connections translated for cgroup {}",
            dir.display()
        ),
        None => say!("  host-local connections not translated"),
    };
    for (binding, owner) in &published {
        match owner {
            Some(owner) => say!("  {binding}  ({owner})"),
            None => say!("  {binding}"),
        };
    }
    if published.is_empty() {
        say!("  (none yet: add some with `portmap add`)");
    }

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
    tokio::pin!(forward_logs);
    let mut addr_watch = AddrWatch::new()
        .context("watching the host's addresses and links (rtnetlink)")
        .map_err(Failure::Runtime)?;
    // A port added since the programs were attached, before the watch began.
    instance.dataplane_mut().sync_ports();
    let mut expiry = FlowExpiry::new(&mut instance, config.timeouts);
    let mut expiry_tick = tokio::time::interval(expiry.interval());
    expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); break; }
            () = &mut forward_logs => {}
            changed = addr_watch.changed() => match changed {
                Ok(()) => {
                    follow_addrs(&mut instance);
                    instance.dataplane_mut().sync_ports();
                }
                Err(error) => log::warn!("address watch: {error}"),
            },
            _ = expiry_tick.tick() => expiry.run(&mut instance),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    answer(&mut instance, stream).await;
                    releaser.release(instance.take_just_published(), local_addrs(&instance));
                }
                Err(error) => log::warn!("control socket: {error}"),
            },
            update = updates.recv(), if follower.is_some() => match (update, follower.as_mut()) {
                (Some(update), Some(follower)) => {
                    let published = follower.apply(&mut instance, update);
                    // The follower returns what it published; the instance's own note of it
                    // would release them twice.
                    let _ = instance.take_just_published();
                    releaser.release(published, local_addrs(&instance));
                }
                // The event task ended (it only does when the loop is gone); stop asking.
                _ => follower = None,
            },
        }
    }

    releaser.finish();
    let handover = if config.docker.is_some() {
        HANDOVER
    } else {
        Duration::ZERO
    };
    detach_uplink_first(&mut instance, handover).await;
    say!("{}", final_report(&instance));
    Ok(())
}

/// Detaches the programs in the order that hands every packet cleanly back to the kernel's own
/// path (Docker's rules, beside Docker): first the uplink's translation, so no new packet is
/// translated; then `tc_forward`, once nothing is left for it to send on; the replies last
/// (`tc_port`, then `tc_reply`), after `handover`, so that the answer to a request translated
/// a moment ago is still translated back (conntrack never saw that request, so nothing else would). Dropping the
/// programs would detach them in no particular order; a packet translated at XDP with
/// `tc_forward` already gone would reach the container through the stack, outside both paths.
/// (A SIGKILL leaves the order to the kernel.)
async fn detach_uplink_first(instance: &mut Instance, handover: Duration) {
    let mut unload = |name: &str| {
        let unloaded = match instance.dataplane_mut().ebpf_mut().program_mut(name) {
            Some(Program::Xdp(program)) => program.unload(),
            Some(Program::SchedClassifier(program)) => program.unload(),
            _ => Ok(()),
        };
        if let Err(error) = unloaded {
            log::debug!("detaching {name}: {error}");
        }
    };
    for name in [
        programs::XDP_UPLINK,
        programs::TC_UPLINK,
        programs::TC_FORWARD,
    ] {
        unload(name);
    }
    if !handover.is_zero() {
        log::info!(
            "new connections now take Docker's rules; answering flows in progress for {handover:?}"
        );
        tokio::time::sleep(handover).await;
    }
    unload(programs::TC_PORT);
    unload(programs::TC_REPLY);
}

fn local_addrs(instance: &Instance) -> Vec<IpAddr> {
    instance.dataplane().host_addrs().local()
}

fn all_bindings(instance: &Instance) -> Vec<Binding> {
    instance.published().map(|p| p.binding.clone()).collect()
}

/// How long publications must pause before a conntrack pass starts. A pass is a few
/// milliseconds of kernel time that does not yield, even on a table with few entries (the dump
/// walks every bucket); requests that come in a burst, such as an `add` and the `rm` after it,
/// should not wait behind one on a busy CPU.
const RELEASE_QUIET: Duration = Duration::from_millis(250);
/// The longest a pass is put off by publications that keep coming.
const RELEASE_MAX_DELAY: Duration = Duration::from_secs(2);

/// Marks the TCP connections conntrack tracks for bindings just published, so that conntrack
/// takes them back when portmap stops (see [`conntrack`]). On a thread of its own: a pass reads
/// the whole conntrack table, which must not hold up the next control request; publications
/// that arrive close together, or during a pass, are taken together in one. A failure costs
/// only that, so it is logged (loudly once).
struct Releaser {
    queue: std::sync::mpsc::Sender<(Vec<Binding>, Vec<IpAddr>)>,
    worker: std::thread::JoinHandle<()>,
}

impl Releaser {
    fn start() -> Self {
        let (queue, published) = std::sync::mpsc::channel::<(Vec<Binding>, Vec<IpAddr>)>();
        let worker = std::thread::spawn(move || {
            while let Ok((mut bindings, mut local_addrs)) = published.recv() {
                let latest = Instant::now() + RELEASE_MAX_DELAY;
                loop {
                    let wait = RELEASE_QUIET.min(latest.saturating_duration_since(Instant::now()));
                    match published.recv_timeout(wait) {
                        Ok((more, addrs)) => {
                            bindings.extend(more);
                            local_addrs = addrs;
                        }
                        // Quiet for long enough, waited long enough, or stopping: pass now.
                        Err(_) => break,
                    }
                }
                release_now(&bindings, &local_addrs);
            }
        });
        Self { queue, worker }
    }

    fn release(&self, bindings: Vec<Binding>, local_addrs: Vec<IpAddr>) {
        if !bindings.is_empty() {
            // The worker only ends after `finish`.
            let _ = self.queue.send((bindings, local_addrs));
        }
    }

    /// Waits for the passes asked for so far (each bounded in time): when portmap stops, the
    /// connections it was asked to hand back must be marked first.
    fn finish(self) {
        drop(self.queue);
        let _ = self.worker.join();
    }
}

fn release_now(bindings: &[Binding], local_addrs: &[IpAddr]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match conntrack::release(bindings, local_addrs) {
        Ok(0) => {}
        Ok(n) => log::debug!("conntrack: {n} tracked connection(s) to published ports marked"),
        Err(error) if !WARNED.swap(true, Ordering::Relaxed) => log::warn!(
            "conntrack: could not mark the connections it tracks to published ports ({error}); \
             those Docker's rules translated before portmap may be reset when portmap stops"
        ),
        Err(error) => log::debug!("conntrack: {error}"),
    }
}

/// Takes in the host's addresses after rtnetlink said they changed: wildcard bindings cover the
/// new set, and bridges' own addresses follow.
fn follow_addrs(instance: &mut Instance) {
    let addrs = match HostAddrs::read() {
        Ok(addrs) => addrs,
        Err(error) => {
            log::warn!("reading the host's addresses: {error:#}");
            return;
        }
    };
    let before = instance.dataplane().host_addrs().local();
    let after = addrs.local();
    if let Err(error) = instance.dataplane_mut().set_host_addrs(addrs) {
        log::warn!("following the host's addresses: {error:#}");
        return;
    }
    let added: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .map(ToString::to_string)
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|a| !after.contains(a))
        .map(ToString::to_string)
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        log::info!(
            "local addresses changed: added [{}], removed [{}]",
            added.join(", "),
            removed.join(", ")
        );
    }
}

/// Forgets idle flows. Flows are stamped with the kernel's jiffies, whose rate (HZ: 100, 250,
/// 300 or 1000) the kernel does not tell userspace: it is measured against the monotonic clock
/// over the first ticks.
struct FlowExpiry {
    timeouts: FlowTimeouts,
    started: Option<(Instant, u32)>,
    hz: Option<u32>,
}

impl FlowExpiry {
    fn new(instance: &mut Instance, timeouts: FlowTimeouts) -> Self {
        let started = match instance.dataplane_mut().jiffies() {
            Ok(jiffies) => Some((Instant::now(), jiffies)),
            Err(error) => {
                log::warn!("idle flows will not expire: {error:#}");
                None
            }
        };
        Self {
            timeouts,
            started,
            hz: None,
        }
    }

    /// Half the shortest timeout, within 1 to 30 seconds.
    fn interval(&self) -> Duration {
        let shortest = self
            .timeouts
            .udp
            .min(self.timeouts.tcp)
            .min(self.timeouts.tcp_closing);
        (shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    fn run(&mut self, instance: &mut Instance) {
        let Some(hz) = self.hz(instance) else {
            return;
        };
        match instance.dataplane_mut().expire_flows(&self.timeouts, hz) {
            Ok(0) => {}
            Ok(n) => log::debug!("forgot {n} flows, idle or of withdrawn bindings"),
            Err(error) => log::warn!("expiring flows: {error:#}"),
        }
    }

    /// HZ, once a second has passed since the start: the value Linux allows nearest to the
    /// rate the jiffies advanced at.
    fn hz(&mut self, instance: &mut Instance) -> Option<u32> {
        if self.hz.is_some() {
            return self.hz;
        }
        let (at, then) = self.started?;
        let elapsed = at.elapsed().as_secs_f64();
        if elapsed < 1.0 {
            return None;
        }
        let now = instance.dataplane_mut().jiffies().ok()?;
        let rate = f64::from(now.wrapping_sub(then)) / elapsed;
        let hz = [100u32, 250, 300, 1000].into_iter().min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })?;
        log::debug!("kernel clock: {rate:.0} jiffies/s, so HZ={hz}");
        self.hz = Some(hz);
        self.hz
    }
}

/// Reads one request from `stream`, applies it, writes the answer.
async fn answer(instance: &mut Instance, stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(reader)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line),
    )
    .await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => instance.handle(request),
            Err(error) => Response::failed(format!("malformed request: {error}"), true),
        },
        Ok(Err(error)) => Response::failed(format!("reading the request: {error}"), false),
        Err(_) => Response::failed("no request within 10 s", true),
    };
    let mut json = serde_json::to_string(&response)
        .unwrap_or_else(|e| format!(r#"{{"error":"encoding the answer: {e}","bad_input":false}}"#));
    json.push('\n');
    if let Err(error) = writer.write_all(json.as_bytes()).await {
        log::debug!("control client went away before its answer: {error}");
    }
}

/// The control socket, readable and writable by root only.
fn listen(paths: &InstancePaths) -> anyhow::Result<UnixListener> {
    // We hold the instance lock: a socket file here is a crashed instance's.
    let _ = fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket)
        .with_context(|| format!("listening on {}", paths.socket.display()))?;
    fs::set_permissions(&paths.socket, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn final_report(instance: &Instance) -> String {
    let mut out = String::from("portmap: final counters\n");
    for entry in instance.published() {
        match instance.dataplane().binding_stats(entry.id) {
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
fn lock_instance(paths: &InstancePaths) -> anyhow::Result<File> {
    let dir = Path::new(InstancePaths::RUN_DIR);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file =
        File::create(&paths.lock).with_context(|| format!("creating {}", paths.lock.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another portmap is already serving with pins at {} (lock {} is held)",
            paths.pin_dir.display(),
            paths.lock.display()
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
