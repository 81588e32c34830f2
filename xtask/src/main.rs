//! `cargo xtask`: everything beyond a plain `cargo build`, in one place.
//!
//! This crate depends on nothing of portmap's, so it builds on a machine that has none of the
//! eBPF toolchain yet: `setup` is what installs it.

mod setup;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test portmap")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test tools (idempotent): Debian packages, rust-src for
    /// the nightly toolchain, and bpf-linker built against the same LLVM as that nightly.
    Setup,
    /// Build the `portmap` binary (release), with the eBPF object embedded.
    Build,
    /// Build, then run `portmap run ARGS...` (running setup first if a piece is missing).
    ///
    /// Example: cargo xtask run -- --iface ens160 --publish 8080:80=172.17.0.2
    Run {
        /// Arguments for `portmap run`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Run every test: unit tests, the packet table, the verifier test and the end-to-end
    /// suites in network namespaces (needs root).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Build a Docker-like sandbox in namespaces, publish three services through portmap,
    /// send real requests through each, print what happened, and tear it all down.
    Demo,
    /// Measure portmap against Docker's netfilter paths (iptables DNAT, an nftables map) and
    /// the no-NAT floor, in namespaces, at 1 to 10,000 published ports; writes
    /// bench/results.md and bench/results.svg. Release build; run it on an idle machine.
    ///
    /// Example: cargo xtask bench -- --smoke (a quick run of every mode at N=1 and 100)
    Bench {
        /// Arguments for `portmap-bench` (see `-- --help`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Boot Debian's kernels under qemu and, in each, load every program (verifier), run the
    /// packet table and attach XDP and TC to a veth pair; prints a kernel × program table.
    VmTest {
        /// Kernel series to test, comma-separated (default: all of them).
        #[arg(long, value_delimiter = ',', value_name = "SERIES", default_values_t = vm::KERNELS.map(String::from))]
        kernel: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::install(),
        Task::Build => {
            setup::ensure()?;
            cargo(&["build", "--release", "-p", "portmap-user"])
        }
        Task::Run { args } => {
            setup::ensure()?;
            cargo(&["build", "--release", "-p", "portmap-user"])?;
            let bin = workspace_root().join("target/release/portmap");
            exec(Command::new(bin).arg("run").args(args))
        }
        Task::Test { args } => {
            setup::ensure()?;
            test(&args)
        }
        Task::Demo => {
            setup::ensure()?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "portmap-user",
                "-p",
                "portmap-tests",
            ])?;
            let root = workspace_root();
            exec(
                Command::new(root.join("target/release/portmap-demo"))
                    .env("PORTMAP_BIN", root.join("target/release/portmap")),
            )
        }
        Task::Bench { args } => {
            setup::ensure()?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "portmap-user",
                "-p",
                "portmap-bench",
            ])?;
            let root = workspace_root();
            let mut command = Command::new(root.join("target/release/portmap-bench"));
            command.env("PORTMAP_BIN", root.join("target/release/portmap"));
            // A full run writes its report beside the harness; a smoke run only prints.
            let smoke = args.iter().any(|a| a == "--smoke");
            let has_out = args.iter().any(|a| a == "--out");
            if !smoke && !has_out {
                command.arg("--out").arg(root.join("bench"));
            }
            exec(command.args(args))
        }
        Task::VmTest { kernel } => vm::run(&kernel),
    }
}

fn test(args: &[OsString]) -> anyhow::Result<()> {
    // The end-to-end tests run the real binary of this build.
    cargo(&["build", "-p", "portmap-user", "-p", "portmap-cni"])?;
    let mut tally = Tally::default();
    // The eBPF crate's pure functions (checksums) run as host unit tests.
    let unit = tally.run(cargo_command(&["test", "-p", "portmap-ebpf", "--lib"]));
    // One test at a time: the tests share kernel state (bpffs pins, attached programs) and
    // the timing of real exchanges across namespaces suffers on a loaded 2-core machine.
    let mut command = cargo_command(&["test", "--workspace", "--exclude", "portmap-ebpf"]);
    command.arg("--").arg("--test-threads=1").args(args);
    let rest = tally.run(command);
    // One closing line for the whole run: cargo's own last line is a doc-test binary's.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    unit.and(rest)
}

/// Sums cargo's `test result:` lines while passing its output through.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Tally {
    fn run(&mut self, mut command: Command) -> anyhow::Result<()> {
        use std::io::{BufRead as _, BufReader};
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {command:?}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(summary) = line.strip_prefix("test result: ") {
                for part in summary.split(['.', ';']) {
                    let mut words = part.split_whitespace();
                    if let (Some(n), Some(what)) = (words.next(), words.next()) {
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "passed" => self.passed += n,
                            "failed" => self.failed += n,
                            "ignored" => self.skipped += n,
                            _ => {}
                        }
                    }
                }
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{command:?} failed: {status}");
        }
        Ok(())
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo_command(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root());
    command
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    exec(&mut cargo_command(args))
}

/// Runs a command with inherited stdio, failing on a non-zero exit.
fn exec(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
