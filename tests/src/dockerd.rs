//! A real Docker engine inside a network namespace, for the tests that follow one.
//!
//! [`Dockerd::start`] runs Debian's dockerd (20.10) in a namespace of its own, so its bridge,
//! its iptables rules and its docker-proxy processes stay there, and keeps everything else it
//! writes under one unique temporary directory:
//!
//! - `--data-root`, `--exec-root`, `--pidfile` and its sockets are in the directory;
//! - it runs in a private mount namespace, made once per engine by `ip netns exec` and kept by
//!   a holder process, so that a restarted daemon finds the mounts the last one made (its
//!   containers' network namespaces are bind mounts; without them a live restore loses the
//!   containers' endpoints and hands their addresses out again). There the directory's `etc/`
//!   is bound over /etc/docker (where it would write key.json) and its `run/` over /run (where
//!   containerd keeps its shims' sockets and dockerd its plugin directory); `ip netns exec`
//!   remounts /sys, hiding the cgroup mounts, so the v1 controllers and cgroup2 are mounted
//!   again there;
//! - its containers' cgroups live under a parent named for the test (`--cgroup-parent`), which
//!   is also how leftover container processes are found;
//! - it runs with `--live-restore`, so that a test can stop the daemon while its containers
//!   keep running, as a daemon upgrade does.
//!
//! The image is built once per engine without a registry: a root filesystem of Debian's
//! busybox-static (sh, httpd, hostname, sleep), with a CGI script that says who answered and
//! whom it saw, imported with `docker import`. Containers run with `--init`, since busybox as
//! PID 1 ignores SIGTERM.
//!
//! Dropping the guard (also when a test panics) removes the containers, stops the daemon and
//! its containerd, kills whatever is left of them (by cgroup and by namespace), removes their
//! cgroups and the directory, and deletes the namespace. Every wait is bounded.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    netns::{self, Netns},
    topology::{CLIENT_IP, HOST_IP, UPLINK},
};

/// The image every test container runs; its default command serves `/www` on port 80, and
/// `GET /cgi-bin/who` answers `HOSTNAME saw [PEER_IP]:PEER_PORT` (`who?SECS` after SECS
/// seconds).
pub const IMAGE: &str = "portmap-test/busybox:local";
/// The Docker CLI of Debian's docker.io, which speaks the engine's API version; another
/// `docker` earlier in PATH may be of any version.
const DOCKER_CLI: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const BUSYBOX: &str = "/bin/busybox";
/// How long the daemon may take to answer its first ping, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one docker CLI command may take (`docker stop` waits for the container, too).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a server in a container looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long the holder of the engine's mount namespace lives at most; dropping the engine ends
/// it long before.
const HOLD_SECS: &str = "3600";

/// The mounts dockerd needs in its private mount namespace, then the holder that keeps the
/// namespace. `$1` is the engine's directory.
const HOLDER: &str = r#"set -e
dir=$1
mount --bind "$dir/etc" /etc/docker
mount --bind "$dir/run" /run
mount -t tmpfs cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir /sys/fs/cgroup/$c
    mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir /sys/fs/cgroup/systemd
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir /sys/fs/cgroup/unified
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
exec sleep "$2"
"#;

/// The CGI script: who answered, and the peer it saw; `who?SECS` answers after SECS seconds.
const WHO: &str = r#"#!/bin/sh
[ -n "$QUERY_STRING" ] && sleep "$QUERY_STRING"
echo 'Content-Type: text/plain'
echo
echo "$(hostname) saw $REMOTE_ADDR:$REMOTE_PORT"
"#;

/// A Docker engine in its own network namespace. Dropping it removes everything it made.
pub struct Dockerd {
    /// The engine's network namespace: its bridges, its iptables rules, and (with
    /// [`Dockerd::lan_client`]) the host's uplink.
    pub ns: Netns,
    /// Everything the engine writes.
    pub dir: PathBuf,
    /// `--cgroup-parent`: one name per engine.
    cgroup_parent: String,
    /// The process that keeps the engine's mount namespace.
    holder: Option<Child>,
    /// The running daemon.
    daemon: Option<Child>,
    /// The sockets the running daemon listens on.
    sockets: Vec<PathBuf>,
}

impl Dockerd {
    /// Starts an engine listening on [`Dockerd::socket`] and builds [`IMAGE`] in it.
    ///
    /// # Errors
    ///
    /// When docker.io or busybox-static is missing, or the engine does not come up (its log
    /// tail is in the error).
    pub fn start() -> anyhow::Result<Self> {
        for (path, package) in [
            (DOCKERD, "docker.io"),
            (DOCKER_CLI, "docker.io"),
            (BUSYBOX, "busybox-static"),
        ] {
            if !Path::new(path).exists() {
                bail!("{path} is missing: install {package} (`cargo xtask setup` does)");
            }
        }
        let unique = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("portmap-dockerd-{unique}"));
        let ns = Netns::new("eng")?;
        // From here on, a failure drops `engine`, which cleans up.
        let mut engine = Self {
            ns,
            dir,
            cgroup_parent: format!("portmap-test-{unique}"),
            holder: None,
            daemon: None,
            sockets: Vec::new(),
        };
        for sub in ["etc", "run", "data", "exec", "cli"] {
            fs::create_dir_all(engine.dir.join(sub))
                .with_context(|| format!("creating {}", engine.dir.join(sub).display()))?;
        }
        engine.hold_mounts()?;
        engine.start_daemon(&[engine.socket()])?;
        engine.build_image()?;
        Ok(engine)
    }

    /// The main socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Another socket a restarted daemon may listen on instead (see [`Dockerd::start_daemon`]).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `unix://` and the main socket: what `--docker-host` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Makes the engine's mount namespace and waits until its holder has mounted everything.
    fn hold_mounts(&mut self) -> anyhow::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "sh", "-c", HOLDER, "sh"])
            .arg(&self.dir)
            .arg(HOLD_SECS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the holder of the engine's mounts")?;
        let pid = child.id();
        self.holder = Some(child);
        // `ip` becomes sh, which becomes sleep once every mount is in place.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Ok(());
            }
            if let Some(holder) = self.holder.as_mut()
                && let Some(status) = holder.try_wait()?
            {
                let mut stderr = String::new();
                if let Some(mut pipe) = holder.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                self.holder = None;
                bail!("mounting the engine's namespace failed ({status}): {stderr}");
            }
            if Instant::now() > deadline {
                bail!("the engine's mounts were not ready within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the daemon listening on `sockets` (the main one, or another so that the main one
    /// stays unreachable) and waits until it answers a ping.
    ///
    /// # Errors
    ///
    /// When it is running already, or does not answer within 30 s.
    pub fn start_daemon(&mut self, sockets: &[PathBuf]) -> anyhow::Result<()> {
        if self.daemon.is_some() {
            bail!("the daemon is running already");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .context("opening dockerd.log")?;
        let holder = self
            .holder
            .as_ref()
            .context("the engine's mount namespace is gone")?
            .id();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={holder}"))
            .args(["--mount", "--net", "--"])
            .arg(DOCKERD)
            .arg("--live-restore")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.cgroup_parent));
        for socket in sockets {
            command
                .arg("-H")
                .arg(format!("unix://{}", socket.display()));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd")?;
        self.daemon = Some(child);
        self.sockets = sockets.to_vec();
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = sockets.first().context("dockerd needs a socket")?;
        loop {
            if ping(socket) {
                return Ok(());
            }
            if let Some(child) = self.daemon.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.daemon = None;
                bail!("dockerd exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer on {} within {START_TIMEOUT:?}:\n{}",
                    socket.display(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon (SIGTERM, SIGKILL after 20 s). Its containers keep running
    /// (`--live-restore`); its sockets go away.
    ///
    /// # Errors
    ///
    /// When it is not running.
    pub fn stop_daemon(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.daemon.take() else {
            bail!("the daemon is not running");
        };
        // SAFETY: signalling our own child, which nsenter exec'd into dockerd.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dockerd did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.sockets.clear();
        Ok(())
    }

    /// The end of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `docker ARGS...` against the main socket; its trimmed stdout.
    ///
    /// # Errors
    ///
    /// A non-zero exit (with its stderr), or one that takes longer than a minute.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        self.docker_at(&self.socket(), args)
    }

    /// `docker ARGS...` against `socket`.
    ///
    /// # Errors
    ///
    /// As [`Dockerd::docker`].
    pub fn docker_at(&self, socket: &Path, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(DOCKER_CLI);
        command
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            // The CLI's config and its "current context" stay out of the machine's ~/.docker.
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        let output = bounded(&mut command, CLI_TIMEOUT)?;
        if !output.status.success() {
            bail!(
                "docker {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `docker run -d --init --name NAME --hostname NAME EXTRA... IMAGE COMMAND...`; the
    /// container's id.
    ///
    /// # Errors
    ///
    /// As [`Dockerd::docker`].
    pub fn run(&self, name: &str, extra: &[&str], command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "-d", "--init", "--name", name, "--hostname", name];
        args.extend(extra);
        args.push(IMAGE);
        args.extend(command);
        self.docker(&args)
    }

    /// A running container's main process, whose namespaces are the container's.
    ///
    /// # Errors
    ///
    /// When the container is not running.
    pub fn pid(&self, container: &str) -> anyhow::Result<u32> {
        let pid: u32 = self
            .docker(&["inspect", "-f", "{{.State.Pid}}", container])?
            .parse()
            .with_context(|| format!("the pid of {container}"))?;
        if pid == 0 {
            bail!("container {container} is not running");
        }
        Ok(pid)
    }

    /// A container's full id.
    ///
    /// # Errors
    ///
    /// When there is no such container.
    pub fn id(&self, container: &str) -> anyhow::Result<String> {
        self.docker(&["inspect", "-f", "{{.Id}}", container])
    }

    /// The packet counters of Docker's DNAT rules, as `(proto, host port, packets)`: what
    /// carries a new connection on Docker's own path.
    ///
    /// # Errors
    ///
    /// When iptables fails.
    pub fn dnat_counters(&self) -> anyhow::Result<Vec<(String, u16, u64)>> {
        let out = self
            .ns
            .exec("iptables", &["-t", "nat", "-L", "DOCKER", "-v", "-n", "-x"])?;
        let mut counters = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(2) != Some(&"DNAT") {
                continue;
            }
            let packets: u64 = fields[0].parse().context("a DNAT rule's packet count")?;
            for proto in ["tcp", "udp"] {
                if let Some(port) = fields
                    .windows(2)
                    .find(|w| w[0] == proto && w[1].starts_with("dpt:"))
                    .and_then(|w| w[1]["dpt:".len()..].parse().ok())
                {
                    counters.push((proto.to_owned(), port, packets));
                }
            }
        }
        Ok(counters)
    }

    /// The packets Docker's DNAT rule for `proto` `port` has translated.
    ///
    /// # Errors
    ///
    /// When there is no such rule.
    pub fn dnat_packets(&self, proto: &str, port: u16) -> anyhow::Result<u64> {
        self.dnat_counters()?
            .into_iter()
            .find(|(p, n, _)| p == proto && *n == port)
            .map(|(_, _, packets)| packets)
            .with_context(|| format!("no DNAT rule for {port}/{proto}"))
    }

    /// A LAN client: a namespace joined to the engine's by a veth pair, the engine's end named
    /// [`UPLINK`] with [`HOST_IP`], the client's [`CLIENT_IP`]. Call it once per engine.
    ///
    /// # Errors
    ///
    /// When a link or address cannot be set up.
    pub fn lan_client(&self) -> anyhow::Result<Netns> {
        let client = Netns::new("lan")?;
        client.ip(&format!(
            "link add eth0 type veth peer name {UPLINK} netns {}",
            self.ns.name()
        ))?;
        client.ip(&format!("addr add {CLIENT_IP}/24 dev eth0"))?;
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add default via {HOST_IP}"))?;
        // A wire hands XDP complete checksums; a veth peer computing them lazily would not
        // (README, "Beside Docker's firewall").
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        self.ns.ip(&format!("addr add {HOST_IP}/24 dev {UPLINK}"))?;
        self.ns.ip(&format!("link set {UPLINK} up"))?;
        Ok(client)
    }

    fn build_image(&self) -> anyhow::Result<()> {
        let root = self.dir.join("rootfs");
        for sub in ["bin", "tmp", "etc", "www/cgi-bin"] {
            fs::create_dir_all(root.join(sub))?;
        }
        fs::copy(BUSYBOX, root.join("bin/busybox"))
            .with_context(|| format!("copying {BUSYBOX}"))?;
        for applet in ["sh", "httpd", "hostname", "sleep", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        fs::write(root.join("www/index.html"), "portmap test\n")?;
        let who = root.join("www/cgi-bin/who");
        fs::write(&who, WHO)?;
        fs::set_permissions(&who, fs::Permissions::from_mode(0o755))?;
        let tar = self.dir.join("rootfs.tar");
        netns::run(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        self.docker(&[
            "import",
            "-c",
            r#"CMD ["httpd", "-f", "-p", "80", "-h", "/www"]"#,
            &tar.to_string_lossy(),
            IMAGE,
        ])?;
        Ok(())
    }

    /// Kills what is left of the engine: its containers' processes (found by cgroup, as they
    /// have namespaces of their own), then everything in its network namespace (the daemon,
    /// containerd, the shims, docker-proxy).
    fn kill_leftovers(&self) {
        let marker = format!(":/{}/", self.cgroup_parent);
        for pass in 0..3 {
            let mut found = false;
            for pid in pids_where(|cgroup| cgroup.contains(&marker)) {
                found = true;
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", self.ns.name()])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        found = true;
                        // SAFETY: as above.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            if !found {
                return;
            }
            thread::sleep(Duration::from_millis(100 * (pass + 1)));
        }
    }

    /// Removes the containers' cgroups and their parent from every hierarchy the machine has
    /// mounted (they are shared with the engine's mounts).
    fn remove_cgroups(&self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for hierarchy in hierarchies.filter_map(Result::ok) {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            if let Ok(children) = fs::read_dir(&parent) {
                for child in children.filter_map(Result::ok) {
                    if child.path().is_dir() {
                        let _ = fs::remove_dir(child.path());
                    }
                }
            }
            let _ = fs::remove_dir(&parent);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // With the daemon stopped by a test, the containers it left running are killed below.
        if self.daemon.is_some()
            && let Ok(ids) = self.docker(&["ps", "-aq"])
        {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(&ids);
                if let Err(error) = self.docker(&args) {
                    eprintln!("warning: removing the test containers: {error:#}");
                }
            }
        }
        if self.daemon.is_some()
            && let Err(error) = self.stop_daemon()
        {
            eprintln!("warning: stopping dockerd: {error:#}");
        }
        self.kill_leftovers();
        if let Some(mut holder) = self.holder.take() {
            // Killed with the rest of the namespace; this reaps it.
            let _ = holder.kill();
            let _ = holder.wait();
        }
        self.remove_cgroups();
        // The engine's mounts lived in its own mount namespace, gone with its last process; what
        // is left is plain files (a moment may pass before the kernel lets go of them).
        for attempt in 0..10 {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) if attempt == 9 => {
                    eprintln!("warning: could not remove {}: {error}", self.dir.display());
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Whether an engine answers `GET /_ping` on `socket`.
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}

/// Processes whose `/proc/PID/cgroup` satisfies `matches`.
fn pids_where(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| matches(&text))
        })
        .collect()
}

/// Runs `command` to completion within `timeout`, killing it after that.
///
/// # Errors
///
/// When it cannot be spawned, or runs too long.
pub fn bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    // Read both pipes on their own threads, so a chatty command cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Servers a test runs inside a container's network namespace (busybox has no UDP server and
/// no line-echoing TCP server): every answer is `NAME saw PEER_IP:PEER_PORT`, as
/// [`crate::servers`] answers, so the test learns which container answered and whom it saw.
/// Stops and joins on drop.
pub struct ContainerServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ContainerServers {
    /// Starts a TCP server on `tcp` and a UDP server on `udp` (each optional) in the network
    /// namespace of process `pid` (a container's, see [`Dockerd::pid`]).
    ///
    /// # Errors
    ///
    /// When the namespace cannot be entered or a port cannot be bound.
    pub fn start(pid: u32, name: &str, tcp: Option<u16>, udp: Option<u16>) -> anyhow::Result<Self> {
        let mut this = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let ns_path = format!("/proc/{pid}/ns/net");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let wanted = usize::from(tcp.is_some()) + usize::from(udp.is_some());
        for (port, is_tcp) in [(tcp, true), (udp, false)] {
            let Some(port) = port else { continue };
            let handle = fs::File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
            let (stop, ready, name) = (this.stop.clone(), ready_tx.clone(), name.to_owned());
            this.threads.push(thread::spawn(move || {
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = std::io::Error::last_os_error();
                    let _ = ready.send(Err(error).context("entering the container's namespace"));
                    return;
                }
                if is_tcp {
                    serve_tcp(port, &name, stop, &ready);
                } else {
                    serve_udp(port, &name, &stop, &ready);
                }
            }));
        }
        for _ in 0..wanted {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .context("a server in the container did not start")??;
        }
        Ok(this)
    }
}

impl Drop for ContainerServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve_tcp(
    port: u16,
    name: &str,
    stop: Arc<AtomicBool>,
    ready: &std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let listen = || -> anyhow::Result<Socket> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        socket.listen(1024)?;
        // accept(2) honours SO_RCVTIMEO, which bounds each wait for the stop flag.
        socket.set_read_timeout(Some(POLL))?;
        Ok(socket)
    };
    let listener = match listen() {
        Ok(listener) => {
            let _ = ready.send(Ok(()));
            listener
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut workers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok((conn, _)) = listener.accept() {
            let conn: TcpStream = conn.into();
            let (name, stop) = (name.to_owned(), stop.clone());
            workers.push(thread::spawn(move || answer_lines(&conn, &name, &stop)));
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Answers each line on `conn` until it closes or the server stops. Connections may stay
/// quiet for long (tests keep some open across a portmap restart), so a read only waits
/// [`POLL`] before looking at the stop flag again.
fn answer_lines(conn: &TcpStream, name: &str, stop: &AtomicBool) {
    let Ok(peer) = conn.peer_addr() else { return };
    let _ = conn.set_read_timeout(Some(POLL));
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            // A timeout keeps what was read of the line so far; the read goes on after it.
            Ok(_) if !line.ends_with('\n') => {}
            Ok(_) => {
                if (&*conn)
                    .write_all(format!("{name} saw {peer}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(
    port: u16,
    name: &str,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let socket = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .and_then(|s| s.set_read_timeout(Some(POLL)).map(|()| s))
    {
        Ok(socket) => {
            let _ = ready.send(Ok(()));
            socket
        }
        Err(error) => {
            let _ = ready.send(Err(error.into()));
            return;
        }
    };
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{name} saw {peer}\n").as_bytes(), peer);
        }
    }
}
