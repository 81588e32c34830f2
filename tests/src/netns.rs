//! Network namespaces that clean up after themselves.
//!
//! Every test builds its topology from these. Names are unique per process and call, so two
//! runs never collide; `Drop` kills what runs inside and deletes the namespace even when the
//! test panics. Nothing here touches the root namespace: veth pairs are created inside a
//! namespace with their peer placed straight into another.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace this process created.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named for this process, a counter and `role` (kept short: it shows
    /// up in `ip netns list` when something goes wrong).
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!(
            "pm{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, with ARGS split on whitespace.
    pub fn ip(&self, args: &str) -> anyhow::Result<()> {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))?;
        Ok(())
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`), failing on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// A command that runs with this namespace as its network namespace and nothing else
    /// changed: unlike `ip netns exec` it keeps the caller's mounts, so bpffs pins stay shared.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let handle = self.handle()?;
        let mut command = Command::new(program);
        // SAFETY: `setns` is async-signal-safe, and the closure only uses a raw fd the parent
        // keeps open until the child has exec'd (the handle moves into the closure).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `work` on a thread whose network namespace is this one. Sockets keep the namespace
    /// they were created in, so what `work` opens stays here.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let handle = self.handle().expect("opening the namespace handle");
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&handle);
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::run`], for work that outlives the call (servers).
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let handle = self.handle().expect("opening the namespace handle");
        thread::spawn(move || {
            enter(&handle);
            work()
        })
    }

    fn handle(&self) -> anyhow::Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }
}

fn enter(handle: &File) {
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: sending a signal has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let ok = deleted.as_ref().is_ok_and(|o| o.status.success());
        if !ok && !thread::panicking() {
            eprintln!("warning: could not delete netns {}: {deleted:?}", self.name);
        }
    }
}

/// Runs a command to completion, turning a failure into an error that quotes it.
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("spawning {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}
