//! The node's dataplane: one `portmap run` per uplink, started by the first invocation that
//! needs it and reused by every one after, and the lock that serialises invocations.
//!
//! A runtime may run the plugin for many containers at once (a node starting twenty pods).
//! Each invocation takes the node lock (an `flock` on `<stateDir>/lock`) around everything it
//! does: find or start the instance, send its requests, update the state file. The instance
//! applies requests one at a time anyway; the lock makes "is there an instance? no: start one"
//! and the state file's read-modify-write safe too.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::net::UnixStream,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portmap_user::control::{self, InstancePaths, Request, Response};

use crate::{
    config::{Cgroup, Hook},
    error::{CniError, code},
    state,
};

/// How long an invocation waits for the others before asking the runtime to retry. Starting an
/// instance (load, verify, attach) takes a second or two; each request after that milliseconds.
const LOCK_TIMEOUT: Duration = Duration::from_secs(90);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// How long a freshly started instance may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_POLL: Duration = Duration::from_millis(20);
/// How long an instance seen exiting may take to be gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `portmap --version` may take when checking the binary.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a failed instance's log an error quotes.
const LOG_TAIL: u64 = 2048;

/// The node lock, held until dropped (closing the file releases the `flock`).
pub struct Lock {
    _file: File,
}

/// Takes the node lock, waiting a bounded time for other invocations.
///
/// # Errors
///
/// The state directory cannot be created (5), or the wait ran out (11).
pub fn lock(state_dir: &Path) -> Result<Lock, CniError> {
    fs::create_dir_all(state_dir).map_err(|e| io_error(state_dir, "creating", &e))?;
    let path = state_dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, "opening", &e))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock { _file: file });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error(&path, "locking", &error));
        }
        if Instant::now() >= deadline {
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!(
                    "the node lock {} stayed taken for {} s",
                    path.display(),
                    LOCK_TIMEOUT.as_secs()
                ),
                "other portmap-ebpf invocations are still running; try again",
            ));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// How to start the instance for one uplink.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub uplink: &'a str,
    /// The bridge `run` starts with; later containers name theirs in each request.
    pub bridge: &'a str,
    pub hook: Hook,
    pub state_dir: &'a Path,
    pub cgroup: Option<&'a Cgroup>,
}

/// Whether an instance serves at `paths`: something accepts on its socket. A socket file with
/// nobody behind it is a dead instance's.
///
/// # Errors
///
/// When connecting fails for another reason than nobody listening (5).
pub fn alive(paths: &InstancePaths) -> Result<bool, CniError> {
    match UnixStream::connect(&paths.socket) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(io_error(&paths.socket, "connecting to", &e)),
    }
}

/// The instance at `paths`, started (and refilled from the state files) when none serves.
/// One that serves no CNI binding at all is refilled too: an operator may run the instance
/// under a service manager, which restarts it empty.
///
/// # Errors
///
/// As [`start`], or the running instance does not answer (5).
pub fn ensure(paths: &InstancePaths, launch: &Launch<'_>) -> Result<(), CniError> {
    let listed = if alive(paths)? { listing(paths)? } else { None };
    let Some(listed) = listed else {
        start(paths, launch)?;
        refill(paths, launch.state_dir);
        return Ok(());
    };
    let serves_cni = listed.bindings.iter().any(|b| {
        b.owner
            .as_deref()
            .is_some_and(|o| o.starts_with(OWNER_PREFIX))
    });
    if !serves_cni {
        refill(paths, launch.state_dir);
    }
    Ok(())
}

/// The running instance's bindings, or `None` when it turns out to be exiting. A killed
/// instance's sockets close one by one as the kernel tears it down, so its control socket may
/// still accept a connection that it then closes unanswered; it is gone once its instance lock
/// is free, which is waited for (bounded) so that a new one can take it.
fn listing(paths: &InstancePaths) -> Result<Option<Response>, CniError> {
    let asked = match control::call(paths, &Request::Ls) {
        Ok(response) => return call_answered(paths, response).map(Some),
        Err(error) => error,
    };
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(paths)? && lock_free(&paths.lock) {
            return Ok(None);
        }
        std::thread::sleep(START_POLL);
    }
    Err(CniError::new(
        code::IO_FAILURE,
        format!("reaching the node's portmap: {asked:#}"),
        format!("control socket {}", paths.socket.display()),
    ))
}

/// Whether nobody holds the instance lock at `path` (a missing file: nobody does).
fn lock_free(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return true;
    };
    // SAFETY: flock on a descriptor we own; closing it releases the probe's lock.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Where an instance's log and pid file go: beside the state, named like its socket.
pub fn instance_file(state_dir: &Path, paths: &InstancePaths, extension: &str) -> PathBuf {
    let stem = paths
        .socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "instance".into());
    state_dir.join(format!("{stem}.{extension}"))
}

/// Starts `portmap run` detached (its own session, output to a log file, nothing inherited
/// that the runtime waits on), records its pid, and waits a bounded time until it answers.
///
/// # Errors
///
/// The binary is missing or not portmap's, or the instance exited or did not answer in time
/// (5, quoting its log).
pub fn start(paths: &InstancePaths, launch: &Launch<'_>) -> Result<(), CniError> {
    check_binary(launch.binary)?;
    let log_path = instance_file(launch.state_dir, paths, "log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io_error(&log_path, "opening", &e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| io_error(&log_path, "opening", &e))?;
    let mut command = Command::new(launch.binary);
    command
        .args(["run", "--iface", launch.uplink, "--bridge", launch.bridge])
        .arg("--pin-dir")
        .arg(&paths.pin_dir);
    match launch.cgroup {
        None => {}
        Some(Cgroup::None) => {
            command.arg("--no-cgroup");
        }
        Some(Cgroup::Dir(dir)) => {
            command.arg("--cgroup").arg(dir);
        }
    }
    match launch.hook {
        Hook::Xdp { skb: false } => {}
        Hook::Xdp { skb: true } => {
            command.args(["--xdp-mode", "skb"]);
        }
        Hook::Tc => {
            command.args(["--hook", "tc"]);
        }
    }
    // The runtime reads the plugin's stdout to its end: the instance must not hold it open.
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent. A session of its
    // own keeps the instance out of the runtime's process group and terminal signals.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("starting {}: {e}", launch.binary.display()),
            "set portmapBinary to portmap's own binary",
        )
    })?;
    let pid_path = instance_file(launch.state_dir, paths, "pid");
    if let Err(e) = fs::write(&pid_path, format!("{}\n", child.id())) {
        eprintln!(
            "portmap-ebpf: could not record the instance's pid in {}: {e}",
            pid_path.display()
        );
    }
    let failed = |what: String| {
        CniError::new(
            code::IO_FAILURE,
            format!(
                "the node's portmap ({} run --iface {} --bridge {}) {what}",
                launch.binary.display(),
                launch.uplink,
                launch.bridge
            ),
            format!(
                "its log, {}: {}",
                log_path.display(),
                log_tail(&log_path, log_start)
            ),
        )
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(&pid_path);
            return Err(failed(format!("exited at start ({status})")));
        }
        // The socket accepts before the programs are attached; the first answer comes after.
        if alive(paths)? {
            match control::call(paths, &Request::Ls) {
                Ok(_) => return Ok(()),
                Err(error) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let _ = fs::remove_file(&pid_path);
                        return Err(failed(format!("exited at start ({status}): {error:#}")));
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            // Not ours to leave half-started: it would hold the pin directory.
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&pid_path);
            return Err(failed(format!(
                "did not answer within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(START_POLL);
    }
}

/// The name `portmap` is also the reference CNI plugin's: make sure this is portmap's own
/// binary before running it as an instance (`portmap --version` prints `portmap VERSION`).
fn check_binary(binary: &Path) -> Result<(), CniError> {
    let not_ours = |why: String| {
        CniError::new(
            code::IO_FAILURE,
            format!("{} is not portmap's binary: {why}", binary.display()),
            "the reference CNI plugin is also called portmap; install portmap's binary elsewhere \
             (or beside portmap-ebpf outside the CNI bin directory) and set portmapBinary",
        )
    };
    let mut child = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| not_ours(format!("it cannot be run ({e})")))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(START_POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(not_ours("`--version` did not finish".into()));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if status.success() && out.starts_with("portmap ") {
        Ok(())
    } else {
        Err(not_ours(format!(
            "`--version` printed {:?}",
            out.lines().next().unwrap_or("")
        )))
    }
}

/// Publishes every container the state files record for this instance again, after a start.
/// A container that can no longer be published (its bridge is gone with it, or its port is
/// taken meanwhile) is dropped from its state file and named on stderr, which runtimes log.
fn refill(paths: &InstancePaths, state_dir: &Path) {
    let recorded = match state::served_by(state_dir, &paths.pin_dir) {
        Ok(recorded) => recorded,
        Err(e) => {
            eprintln!(
                "portmap-ebpf: could not read the state in {}: {e}",
                state_dir.display()
            );
            return;
        }
    };
    for (file, id, container) in recorded {
        let request = Request::Add {
            specs: container.specs.clone(),
            containers: Vec::new(),
            replace: false,
            bridge: Some(container.bridge.clone()),
            owner: Some(owner(&id)),
            hold_ports: container.hold_ports,
        };
        if let Err(error) = call(paths, &request) {
            eprintln!(
                "portmap-ebpf: dropping container {id} from {}: publishing it again failed: {}",
                file.display(),
                error.msg
            );
            let forget = || -> io::Result<()> {
                let mut state = state::load(&file)?;
                state.containers.remove(&id);
                state::save(&file, &state)
            };
            if let Err(e) = forget() {
                eprintln!("portmap-ebpf: {}: {e}", file.display());
            }
        }
    }
}

/// What every CNI owner label starts with.
const OWNER_PREFIX: &str = "cni:";

/// The owner label a container's bindings carry, which `portmap ls` shows.
pub fn owner(container_id: &str) -> String {
    format!("{OWNER_PREFIX}{container_id}")
}

/// Sends one request; a refusal becomes the matching CNI error.
///
/// # Errors
///
/// The instance could not be reached (5), or refused: bad input (100), or a runtime failure (5).
pub fn call(paths: &InstancePaths, request: &Request) -> Result<Response, CniError> {
    let response = control::call(paths, request).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("reaching the node's portmap: {e:#}"),
            format!("control socket {}", paths.socket.display()),
        )
    })?;
    call_answered(paths, response)
}

/// An answer, or its refusal as the matching CNI error.
fn call_answered(paths: &InstancePaths, response: Response) -> Result<Response, CniError> {
    match &response.error {
        None => Ok(response),
        Some(error) => Err(CniError::new(
            if response.bad_input {
                code::REFUSED
            } else {
                code::IO_FAILURE
            },
            format!("the node's portmap refused: {error}"),
            format!(
                "nothing was applied; instance at {}",
                paths.socket.display()
            ),
        )),
    }
}

fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(unreadable)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.read_to_string(&mut text);
    }
    let text = text.trim();
    if text.is_empty() {
        "(empty)".into()
    } else {
        text.to_owned()
    }
}

fn io_error(path: &Path, doing: &str, error: &io::Error) -> CniError {
    CniError::new(
        code::IO_FAILURE,
        format!("{doing} {}: {error}", path.display()),
        "the plugin runs as root in the host's namespaces",
    )
}
