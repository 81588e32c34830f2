//! A container runtime's CNI chain, replayed by hand inside namespaces: the reference plugins
//! (`bridge`, `host-local`, `portmap`, from Debian's containernetworking-plugins) and
//! `portmap-ebpf`, each run the way a runtime runs it, with `CNI_*` variables and its network
//! configuration on stdin, inside the node's namespace.
//!
//! ```text
//! client 198.51.100.2 ── ens160 198.51.100.1 [node] cni0 10.88.0.1/16 ── containers 10.88.0.x
//! ```
//!
//! The node namespace stands for a Kubernetes node: the plugins run there (`ip netns exec`), so
//! the bridge, the veths, iptables rules and the `portmap run` instance `portmap-ebpf` starts
//! all live there. Each [`CniNode`] has a directory of its own, /run/portmap-cni-test-UNIQUE,
//! holding host-local's leases, portmap-ebpf's state, and a bpffs for the instance's pins:
//! `ip netns exec` remounts /sys privately, so pins under /sys/fs/bpf made by one invocation's
//! instance would be invisible to the next invocation. Dropping the node stops the instance,
//! unmounts the bpffs, removes the directory, then deletes the namespaces.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use portmap_user::control::{BindingInfo, InstancePaths};
use serde_json::{Value, json};

use crate::{
    netns::Netns,
    process::{portmap, portmap_bin},
    topology::{CLIENT_IP, HOST_IP, UPLINK},
};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
/// The network every chain here belongs to.
pub const NETWORK: &str = "pmtest";
pub const BRIDGE: &str = "cni0";
pub const SUBNET: &str = "10.88.0.0/16";
/// How long one plugin invocation may take (the first portmap-ebpf ADD starts the instance).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped instance may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The port-publishing plugin a chain ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publisher {
    /// The reference `portmap` (iptables DNAT chains).
    Reference,
    /// `portmap-ebpf`, this project's.
    Ours,
}

impl Publisher {
    pub fn program(self) -> PathBuf {
        match self {
            Self::Reference => Path::new(REFERENCE_DIR).join("portmap"),
            Self::Ours => ours(),
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            Self::Reference => "portmap",
            Self::Ours => "portmap-ebpf",
        }
    }
}

/// The `portmap-ebpf` binary of this build, beside `portmap` (`cargo xtask test` builds both).
pub fn ours() -> PathBuf {
    let bin = portmap_bin()
        .parent()
        .expect("portmap lives in a directory")
        .join("portmap-ebpf");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p portmap-cni`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// One `runtimeConfig.portMappings` entry.
pub fn mapping(host_port: u16, container_port: u16, protocol: &str) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": protocol})
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The specification's error object, checked for its shape.
#[derive(Debug)]
pub struct CniError {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

impl Outcome {
    /// The result of a successful command (ADD), parsed.
    pub fn result(&self) -> Value {
        assert!(
            self.status.success(),
            "the plugin failed ({}): {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("the result is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts success (a DEL or CHECK prints nothing then).
    pub fn ok(&self) {
        assert!(
            self.status.success(),
            "the plugin failed ({}): {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Asserts a failure shaped as the specification says: a non-zero exit and exactly
    /// `cniVersion`, `code`, `msg` and `details` on stdout.
    pub fn error(&self) -> CniError {
        assert!(
            !self.status.success(),
            "the plugin should have failed: {}",
            self.stdout
        );
        let value: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("the error is not JSON ({e}): {:?}", self.stdout));
        let object = value.as_object().expect("the error is a JSON object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{value}");
        assert!(value["cniVersion"].is_string(), "{value}");
        assert!(value["details"].is_string(), "{value}");
        let msg = value["msg"].as_str().expect("msg is a string").to_owned();
        assert!(!msg.is_empty(), "{value}");
        CniError {
            code: value["code"].as_u64().expect("code is a number"),
            msg,
            details: value["details"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

/// How to run one plugin.
pub struct Invocation<'a> {
    pub program: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    /// The container's namespace (CNI_NETNS); `None` leaves CNI_NETNS out.
    pub container: Option<&'a Netns>,
    pub stdin: &'a [u8],
    /// How long it may take ([`PLUGIN_TIMEOUT`] unless it has a lot to do).
    pub timeout: Duration,
}

/// Runs a plugin inside `node` as a runtime does, within the invocation's timeout.
pub fn run_plugin(node: &Netns, invocation: &Invocation<'_>) -> anyhow::Result<Outcome> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", node.name()])
        .arg(invocation.program)
        .env("CNI_COMMAND", invocation.command)
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_DIR)
        .env_remove("CNI_NETNS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(container) = invocation.container {
        command.env("CNI_NETNS", format!("/run/netns/{}", container.name()));
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running {}", invocation.program.display()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(invocation.stdin)?;
    drop(stdin);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + invocation.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {} did not finish within {:?}",
                invocation.program.display(),
                invocation.command,
                invocation.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A node, its LAN client, and container namespaces the chain connects.
pub struct CniNode {
    /// This node's own directory under /run.
    pub dir: PathBuf,
    mounted: bool,
    pub client: Netns,
    pub host: Netns,
    pub containers: Vec<Netns>,
}

impl CniNode {
    /// Builds the client and the node, joined by the uplink; with `default_route`, the node's
    /// default route goes out of the uplink (for portmap-ebpf to find it by itself).
    pub fn build(default_route: bool) -> anyhow::Result<Self> {
        let dir = PathBuf::from(format!(
            "/run/portmap-cni-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let client = Netns::new("cli")?;
        let host = Netns::new("node")?;
        let mut node = Self {
            dir,
            mounted: false,
            client,
            host,
            containers: Vec::new(),
        };
        fs::create_dir_all(node.bpffs())?;
        crate::netns::run(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(node.bpffs()),
        )?;
        node.mounted = true;

        let (client, host) = (&node.client, &node.host);
        client.ip(&format!(
            "link add eth0 type veth peer name {UPLINK} netns {}",
            host.name()
        ))?;
        client.ip(&format!("addr add {CLIENT_IP}/24 dev eth0"))?;
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add default via {HOST_IP}"))?;
        // A physical NIC hands XDP complete checksums; make the client's veth behave so.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        host.ip(&format!("addr add {HOST_IP}/24 dev {UPLINK}"))?;
        host.ip(&format!("link set {UPLINK} up"))?;
        if default_route {
            host.ip(&format!("route add default via {CLIENT_IP} dev {UPLINK}"))?;
        }
        Ok(node)
    }

    /// A new, empty container namespace; the chain gives it its interface.
    pub fn container(&mut self, role: &str) -> anyhow::Result<usize> {
        self.containers.push(Netns::new(role)?);
        Ok(self.containers.len() - 1)
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// The instance's pin directory, on this node's own bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs().join("cni")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// portmap-ebpf's state file of [`NETWORK`], parsed (`None` when there is none).
    pub fn state(&self) -> Option<Value> {
        let text = fs::read_to_string(self.state_dir().join(format!("{NETWORK}.json"))).ok()?;
        Some(serde_json::from_str(&text).expect("the state file is JSON"))
    }

    /// The `bridge` plugin's configuration, with host-local leases in this node's directory.
    pub fn bridge_conf(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "name": NETWORK,
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.join("ipam"),
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        })
    }

    /// The publishing plugin's configuration: `prevResult` and `runtimeConfig.portMappings` as
    /// a runtime fills them in, and for portmap-ebpf this node's pin and state directories.
    pub fn publisher_conf(
        &self,
        publisher: Publisher,
        cni_version: &str,
        prev: Option<&Value>,
        mappings: &[Value],
    ) -> Value {
        let mut conf = json!({
            "cniVersion": cni_version,
            "name": NETWORK,
            "type": publisher.type_name(),
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if publisher == Publisher::Ours {
            conf["pinDir"] = json!(self.pin_dir());
            conf["stateDir"] = json!(self.state_dir());
            // A test attaches socket programs only to a cgroup it made.
            conf["cgroup"] = json!("none");
        }
        conf
    }

    /// Runs `program` for container `index` in this node.
    pub fn run(
        &self,
        program: &Path,
        command: &str,
        container_id: &str,
        container: Option<usize>,
        conf: &Value,
    ) -> anyhow::Result<Outcome> {
        run_plugin(
            &self.host,
            &Invocation {
                program,
                command,
                container_id,
                container: container.map(|i| &self.containers[i]),
                stdin: conf.to_string().as_bytes(),
                timeout: PLUGIN_TIMEOUT,
            },
        )
    }

    /// `bridge` + `host-local` ADD for container `index`: its result, the next plugin's
    /// prevResult.
    pub fn connect(
        &self,
        container_id: &str,
        index: usize,
        cni_version: &str,
    ) -> anyhow::Result<Value> {
        let bridge = Path::new(REFERENCE_DIR).join("bridge");
        let out = self.run(
            &bridge,
            "ADD",
            container_id,
            Some(index),
            &self.bridge_conf(cni_version),
        )?;
        if !out.status.success() {
            bail!(
                "bridge ADD for {container_id}: {}{}",
                out.stdout,
                out.stderr
            );
        }
        Ok(serde_json::from_str(&out.stdout)?)
    }

    /// The instance's bindings, `portmap ls --json`.
    pub fn ls(&self) -> anyhow::Result<Vec<BindingInfo>> {
        let pin_dir = self.pin_dir().to_string_lossy().into_owned();
        let out = portmap(&self.host, &["ls", "--json", "--pin-dir", &pin_dir])?;
        if !out.status.success() {
            bail!("portmap ls: {}", String::from_utf8_lossy(&out.stderr));
        }
        let listing: Value = serde_json::from_slice(&out.stdout)?;
        Ok(serde_json::from_value(listing["bindings"].clone())?)
    }

    /// `portmap ls` as an operator reads it.
    pub fn ls_text(&self) -> anyhow::Result<String> {
        let pin_dir = self.pin_dir().to_string_lossy().into_owned();
        let out = portmap(&self.host, &["ls", "--pin-dir", &pin_dir])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pids of the instances portmap-ebpf started here that still run: their pid files,
    /// each checked against the process's command line so a reused pid is never taken for one.
    pub fn instance_pids(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        let pin_dir = self.pin_dir().to_string_lossy().into_owned();
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|ext| ext == "pid"))
            .filter_map(|e| {
                fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse::<i32>()
                    .ok()
            })
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let args: Vec<String> = cmdline
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    args.iter().any(|a| a == "run") && args.contains(&pin_dir) && running(*pid)
                })
            })
            .collect()
    }

    /// Stops every instance started here: SIGTERM (it detaches, unpins and removes its socket),
    /// then SIGKILL for one that does not exit within [`STOP_TIMEOUT`].
    pub fn stop_instances(&self) -> anyhow::Result<()> {
        let pids = self.instance_pids();
        for &pid in &pids {
            // SAFETY: signalling a process whose command line we just checked.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids.iter().any(|&pid| running(pid)) {
            if Instant::now() > deadline {
                for &pid in pids.iter().filter(|&&pid| running(pid)) {
                    // SAFETY: as above; it ignored SIGTERM for too long.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                bail!("portmap run {pids:?} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Whether `pid` runs: one of its threads exists and is no zombie (the instance is not our
/// child: whoever inherited it reaps it). A killed process's leader turns zombie while its
/// other threads still exit, holding its sockets and programs, so every thread is looked at.
pub fn running(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) STATE ...`: the state follows the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    })
}

impl Drop for CniNode {
    fn drop(&mut self) {
        if let Err(error) = self.stop_instances() {
            eprintln!("warning: {error:#}");
        }
        // A killed instance leaves its socket and lock; other tests look for sockets there.
        let paths = InstancePaths::new(&self.pin_dir());
        let _ = fs::remove_file(&paths.socket);
        let _ = fs::remove_file(&paths.lock);
        if self.mounted {
            let _ = Command::new("umount").arg(self.bpffs()).output();
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The namespaces go after this, with whatever still runs in them.
    }
}
