//! Installing what building and testing portmap needs, idempotently.
//!
//! The facts behind it, measured on Debian 12: the eBPF code builds with a nightly rustc (for
//! `-Z build-std=core`), whose LLVM is 22; bpf-linker must link that same LLVM major, and a
//! plain `cargo install bpf-linker` finds Debian's default llvm-14 instead, so it is built
//! against Debian's llvm-22-dev explicitly.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::exec;

/// The toolchain that builds the eBPF object; `portmap-user/build.rs` names the same one.
pub const NIGHTLY: &str = "nightly";
/// The LLVM major of that nightly, which bpf-linker must be built against.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: the LLVM bpf-linker links, and the tools the tests drive.
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "iproute2", "ethtool", "iptables", "procps"];

/// Installs whatever is missing.
pub fn install() -> anyhow::Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages present");
    } else {
        println!("setup: installing {}", missing.join(" "));
        exec(Command::new("apt-get").arg("update").arg("-q"))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
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
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .context("running dpkg-query (is this Debian?)")?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push(*package);
        }
    }
    Ok(missing)
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
