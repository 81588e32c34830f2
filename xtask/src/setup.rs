//! Installing what building and testing portmap needs, idempotently.
//!
//! The facts behind it, measured on Debian 12: the eBPF code builds with a nightly rustc (for
//! `-Z build-std=core`), whose LLVM is 22; bpf-linker must link that same LLVM major, and a
//! plain `cargo install bpf-linker` finds Debian's default llvm-14 instead, so it is built
//! against Debian's llvm-22-dev explicitly.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::exec;

/// The toolchain that builds the eBPF object; `portmap-user/build.rs` names the same one.
pub const NIGHTLY: &str = "nightly";
/// The LLVM major of that nightly, which bpf-linker must be built against.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: the LLVM bpf-linker links, and the tools the tests drive. `docker.io` (the
/// engine, containerd and runc; installed without starting, and masked) and `busybox-static`
/// (the test image's one binary) are for `e2e_docker`, which runs its own engine inside a
/// namespace.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "iptables",
    "procps",
    "docker.io",
    "busybox-static",
    // The reference CNI plugins (bridge, host-local, portmap) `e2e_cni` chains portmap-ebpf
    // with and compares it to, and the bench's `cni-portmap` mode runs.
    "containernetworking-plugins",
    // The bench's nftables-map mode, and its conntrack flush between runs.
    "nftables",
    "conntrack",
];

/// Debian's `policy-rc.d` convention: while `/usr/sbin/policy-rc.d` exits 101, package scripts
/// start no service (`invoke-rc.d` and `deb-systemd-invoke` ask it). Put in place for the
/// install, removed after it, and left alone if the machine already has one.
struct NoServiceStarts {
    ours: bool,
}

impl NoServiceStarts {
    const PATH: &str = "/usr/sbin/policy-rc.d";

    fn new() -> anyhow::Result<Self> {
        if Path::new(Self::PATH).exists() {
            return Ok(Self { ours: false });
        }
        std::fs::write(
            Self::PATH,
            "#!/bin/sh\n# cargo xtask setup: no service starts during install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", Self::PATH))?;
        std::fs::set_permissions(
            Self::PATH,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .with_context(|| format!("making {} executable", Self::PATH))?;
        Ok(Self { ours: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::remove_file(Self::PATH);
        }
    }
}

/// Installs whatever is missing.
pub fn install() -> anyhow::Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        // docker.io's maintainer scripts would start the engine on a systemd host, and an
        // engine in the root namespace makes docker0 and iptables rules there. The tests run
        // their own engine inside a namespace; this one must never start.
        let _no_services = NoServiceStarts::new()?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if missing.contains(&"docker.io") && Path::new("/run/systemd/system").exists() {
            // Nor at the next boot or socket activation: this engine is the tests' alone.
            exec(Command::new("systemctl").args([
                "mask",
                "--now",
                "docker.service",
                "docker.socket",
            ]))?;
        }
    }

    if !has_nightly()? {
        println!("setup: installing the {NIGHTLY} toolchain");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    if !has_rust_src()? {
        println!("setup: adding rust-src to {NIGHTLY}");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    let llvm = nightly_llvm_major()?;
    if llvm != LLVM_MAJOR {
        bail!(
            "the {NIGHTLY} toolchain uses LLVM {llvm}, but bpf-linker is built against LLVM \
             {LLVM_MAJOR}; install a nightly with LLVM {LLVM_MAJOR} or update LLVM_MAJOR and \
             the llvm-{LLVM_MAJOR}-dev package in xtask/src/setup.rs together"
        );
    }

    if has_bpf_linker() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 2 minutes)"
        );
        exec(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--locked", "--no-default-features"])
                .args(["--version", BPF_LINKER_VERSION])
                .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")),
        )?;
    }
    println!("setup: done");
    Ok(())
}

/// Runs [`install`] if any piece is missing; costs a few process spawns otherwise.
pub fn ensure() -> anyhow::Result<()> {
    let ready =
        missing_packages()?.is_empty() && has_nightly()? && has_rust_src()? && has_bpf_linker();
    if ready { Ok(()) } else { install() }
}

fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for package in APT_PACKAGES {
        if !installed(package)? {
            missing.push(*package);
        }
    }
    // A machine with Docker's own packages keeps them: docker.io would replace them.
    if let Some(other) = ["docker-ce", "moby-engine"]
        .into_iter()
        .find(|p| installed(p).unwrap_or(false))
    {
        missing.retain(|p| *p != "docker.io");
        println!(
            "setup: {other} is installed, so Debian's docker.io is not; e2e_docker needs \
             /usr/sbin/dockerd from docker.io and fails without it"
        );
    }
    Ok(missing)
}

fn installed(package: &str) -> anyhow::Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn stdout(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_nightly() -> anyhow::Result<bool> {
    let list = stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    Ok(list.lines().any(|l| l.starts_with(&format!("{NIGHTLY}-"))))
}

fn has_rust_src() -> anyhow::Result<bool> {
    let list = stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    Ok(list.lines().any(|l| l.starts_with("rust-src")))
}

fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = stdout(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +{NIGHTLY} -vV`:\n{version}"))
}

fn has_bpf_linker() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION))
}
