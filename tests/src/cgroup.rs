//! Cgroups (v2) that tests create for the socket programs, and remove after themselves. A test
//! never attaches to a cgroup it did not create: a cgroup's programs see every process in it,
//! whatever its namespace.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::Context as _;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A child cgroup of the v2 root, named for this process and a counter.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates one.
    ///
    /// # Errors
    ///
    /// When no cgroup v2 hierarchy is mounted or the directory cannot be made.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let root = portmap_user::cgroup::v2_root().context("no cgroup v2 hierarchy mounted")?;
        let path = root.join(format!(
            "portmap-test-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `command`'s process join this cgroup before it execs, so that it and everything
    /// it starts run inside.
    pub fn enter(&self, command: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        // SAFETY: the closure writes one file and allocates nothing the child would share
        // with the parent's threads.
        unsafe {
            command.pre_exec(move || fs::write(&procs, b"0"));
        }
    }
}

impl Drop for TestCgroup {
    /// Removes the cgroup once its processes are gone (a killed child takes a moment to leave).
    fn drop(&mut self) {
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    thread::sleep(Duration::from_millis(100));
                }
                _ => return,
            }
        }
        eprintln!("could not remove cgroup {}", self.path.display());
    }
}
