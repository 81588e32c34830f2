//! The real `portmap` binary, run inside a namespace the way an operator runs it.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// How long `portmap run` may take to load, fill and attach.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `portmap` binary of this build: `$PORTMAP_BIN`, or the one in the same target profile
/// directory as the running executable (a test in `target/<profile>/deps`, or a binary such as
/// the demo in `target/<profile>`).
pub fn portmap_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTMAP_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps lives in the profile directory");
    }
    let bin = dir.join("portmap");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p portmap-user`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Runs `portmap ARGS...` in `ns` to completion.
pub fn portmap(ns: &Netns, args: &[&str]) -> anyhow::Result<Output> {
    ns.command(portmap_bin())?
        .args(args)
        .output()
        .context("running portmap")
}

/// A `portmap run` serving in a namespace, with its own pin directory. Stops on drop.
pub struct Portmap {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    /// What it printed on stdout before it said it was serving.
    pub banner: String,
    stdout_rest: Option<mpsc::Receiver<String>>,
}

impl Portmap {
    /// Starts `portmap run ARGS... --pin-dir <unique>` in `ns` and waits until it serves;
    /// with `--no-cgroup` unless ARGS name a `--cgroup`.
    pub fn start(ns: &Netns, args: &[&str]) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/portmap-test/{}", ns.name()));
        // A test attaches socket programs only to a cgroup it made, and says which.
        let cgroup: &[&str] = if args.contains(&"--cgroup") {
            &[]
        } else {
            &["--no-cgroup"]
        };
        let mut child = ns
            .command(portmap_bin())?
            .arg("run")
            .args(args)
            .args(cgroup)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning portmap run")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut this = Self {
            child: Some(child),
            pin_dir,
            banner: String::new(),
            stdout_rest: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    this.banner.push_str(&line);
                    this.banner.push('\n');
                    if line.starts_with("portmap: serving") {
                        // The binding lines follow at once; collect what is already there.
                        std::thread::sleep(Duration::from_millis(50));
                        while let Ok(line) = rx.try_recv() {
                            this.banner.push_str(&line);
                            this.banner.push('\n');
                        }
                        this.stdout_rest = Some(rx);
                        return Ok(this);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if left > Duration::ZERO => {}
                Err(_) => {
                    let output = this.stop_child()?;
                    bail!(
                        "portmap run {args:?} did not start serving: {}\n{}{}",
                        output.status,
                        this.banner,
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `portmap stats` for this instance.
    pub fn stats(&self, ns: &Netns) -> anyhow::Result<String> {
        let pin_dir = self.pin_dir.to_string_lossy().into_owned();
        let out = portmap(ns, &["stats", "--pin-dir", &pin_dir])?;
        if !out.status.success() {
            bail!(
                "portmap stats failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM, then waits; returns everything it printed after starting.
    pub fn stop(mut self) -> anyhow::Result<Output> {
        let mut output = self.stop_child()?;
        if let Some(rx) = self.stdout_rest.take() {
            let rest: Vec<String> = rx.try_iter().collect();
            output.stdout = (rest.join("\n") + "\n").into_bytes();
        }
        Ok(output)
    }

    fn stop_child(&mut self) -> anyhow::Result<Output> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped");
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("portmap did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The stdout reader thread drains until EOF, which follows exit.
        std::thread::sleep(Duration::from_millis(50));
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_end(&mut stderr);
        }
        Ok(Output {
            status,
            stdout: Vec::new(),
            stderr,
        })
    }
}

impl Drop for Portmap {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_child();
        }
        // Normally portmap removes its pins; after a crash this does. The shared parent goes
        // when the last test leaves it empty.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if let Some(parent) = self.pin_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        // Its control socket and lock in /run/portmap, named after the pin directory.
        let paths = portmap_user::control::InstancePaths::new(&self.pin_dir);
        let _ = std::fs::remove_file(&paths.socket);
        let _ = std::fs::remove_file(&paths.lock);
    }
}

/// Fails unless running as root: every test here needs the kernel, and a test that cannot run
/// says so and fails rather than passing silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load BPF programs and create network namespaces: run them as root (`sudo cargo xtask test`)"
    );
}

/// Runs `command`, returning its output even when it fails.
pub fn output(command: &mut Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("spawning {command:?}"))
}
