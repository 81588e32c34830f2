//! `cargo xtask vm-test`: the real object on the kernels Docker hosts run, each booted under
//! qemu (TCG; no KVM needed) from a small initramfs.
//!
//! 1. Kernels are Debian's cloud flavour, fetched with a private apt configuration under
//!    `target/vm/apt/` (the machine's own apt sources stay untouched) and cached, reduced to
//!    the vmlinuz and the modules the attach test needs, under `target/vm/kernels/SERIES/`.
//! 2. The guest side is static (musl): `vm-guest` (tests/src/bin/vm-guest.rs) and the
//!    `packets` and `verifier` test binaries, in a newc cpio written here with busybox-static.
//! 3. Each guest reports on its second serial port, one `VM ...` line per fact; its console
//!    goes to `target/vm/runs/SERIES/console.log`. The table is built from those lines only.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{setup, workspace_root};

/// Every kernel `vm-test` knows, oldest first; all of them run by default.
pub const KERNELS: [&str; 4] = ["5.10", "6.1", "6.12", "7.2"];

const MUSL: &str = "x86_64-unknown-linux-musl";
/// Debian packages `vm-test` needs beyond `setup`'s, installed by `vm-test` only so that the
/// ordinary test path stays as fast as it was.
const APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils"];
/// Modules the attach test needs (veth pair; cls_bpf and clsact's sch_ingress for the netlink
/// TC path before 6.6). Debian's cloud kernels build all three as modules.
const MODULES: &[&str] = &["veth", "cls_bpf", "sch_ingress"];
/// The flow table alone preallocates 262,144 LRU entries.
const GUEST_MEMORY: &str = "1024";
/// A guest takes 3 to 5 minutes under TCG, two sharing 2 cores (7.2 the longest, its packet
/// tables the bulk); this bounds a hung one with room for a slower CI machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(720);
const APT_TIMEOUT: &str = "600";
/// A cold musl build of the guest side takes about a minute here.
const CARGO_TIMEOUT: &str = "1800";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where a kernel series comes from.
struct Kernel {
    series: &'static str,
    /// The private apt configuration (under `target/vm/apt/`) whose sources carry it.
    repo: &'static str,
}

const SOURCES: &[(&str, &[&str])] = &[
    (
        "bullseye",
        &[
            "http://deb.debian.org/debian bullseye main",
            "http://deb.debian.org/debian-security bullseye-security main",
        ],
    ),
    (
        "bookworm",
        &[
            "http://deb.debian.org/debian bookworm main",
            "http://deb.debian.org/debian-security bookworm-security main",
        ],
    ),
    ("sid", &["http://deb.debian.org/debian sid main"]),
];

fn kernel(series: &str) -> Option<Kernel> {
    let (series, repo) = match series {
        "5.10" => ("5.10", "bullseye"),
        "6.1" => ("6.1", "bookworm"),
        // Debian 12's security suite carries 6.12 for bookworm.
        "6.12" => ("6.12", "bookworm"),
        "7.2" => ("7.2", "sid"),
        _ => return None,
    };
    Some(Kernel { series, repo })
}

/// Runs the whole thing for `series` (every known kernel when empty).
pub fn run(series: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut wanted: Vec<String> = if series.is_empty() {
        KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        series
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut seen = BTreeSet::new();
    wanted.retain(|s| seen.insert(s.clone()));
    let kernels = wanted
        .iter()
        .map(|s| {
            kernel(s).ok_or_else(|| anyhow!("unknown kernel {s:?}; known: {}", KERNELS.join(",")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    setup::ensure()?;
    ensure_tools()?;
    let vm = workspace_root().join("target/vm");
    fs::create_dir_all(&vm)?;

    // Downloads overlap the musl build: one is network, the other CPU.
    let (fetched, built) = std::thread::scope(|scope| {
        let fetcher = scope.spawn(|| fetch_kernels(&vm, &kernels));
        let built = build_guest();
        let fetched = fetcher
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the kernel download thread panicked")));
        (fetched, built)
    });
    let kernel_dirs = fetched?;
    let guest = built?;
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;

    // One qemu is one TCG thread: two guests at a time use both cores of a CI machine.
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let queue = Mutex::new(kernels.iter().zip(&kernel_dirs).collect::<Vec<_>>());
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let Some((kernel, dir)) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    let report = boot(&vm, kernel, dir, &guest, &busybox).unwrap_or_else(|e| {
                        let mut report = Report::new(kernel.series);
                        report.problems.push(format!("{e:#}"));
                        report
                    });
                    println!(
                        "vm-test: {} finished in {:.0?}: {}",
                        kernel.series,
                        report.elapsed,
                        if report.ok() { "ok" } else { "FAILED" }
                    );
                    reports.lock().expect("reports").push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports");
    reports.sort_by_key(|r| KERNELS.iter().position(|k| *k == r.series));

    print!("{}", table(&reports));
    for report in &reports {
        print!("{}", report.details());
    }
    let (passed, failed) = reports.iter().fold((0, 0), |(p, f), r| {
        let (rp, rf) = r.checks();
        (p + rp, f + rf)
    });
    println!("vm-test: total {:.0?}", started.elapsed());
    // Every test, program load and attach, across kernels.
    println!("vm-test: {passed} passed, {failed} failed");
    let bad: Vec<&str> = reports
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.series)
        .collect();
    if !bad.is_empty() {
        bail!("vm-test failed on {}", bad.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tools

fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("vm-test: installing {}", missing.join(" "));
        let install = || {
            run_quiet(
                Command::new("timeout")
                    .args([APT_TIMEOUT, "apt-get", "install", "-y", "-q"])
                    .arg("--no-install-recommends")
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        // The machine's package lists may be missing or stale: update once, then retry.
        if install().is_err() {
            run_quiet(Command::new("timeout").args([APT_TIMEOUT, "apt-get", "update", "-q"]))?;
            install()?;
        }
    }
    let targets =
        capture(Command::new("timeout").args(["60", "rustup", "target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l.trim() == MUSL) {
        println!("vm-test: adding the {MUSL} target");
        run_quiet(Command::new("timeout").args(["600", "rustup", "target", "add", MUSL]))?;
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("timeout")
        .args(["60", "dpkg-query", "-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

// ---------------------------------------------------------------------------------------
// Kernels

fn fetch_kernels(vm: &Path, kernels: &[Kernel]) -> anyhow::Result<Vec<PathBuf>> {
    let mut updated = BTreeSet::new();
    let dirs = kernels
        .iter()
        .map(|k| fetch_kernel(vm, k, &mut updated).with_context(|| format!("kernel {}", k.series)))
        .collect();
    // The package lists (hundreds of MB unpacked) are fetched afresh whenever a kernel is
    // missing, so they are not worth keeping.
    for repo in updated {
        let _ = fs::remove_dir_all(vm.join("apt").join(repo).join("state/lists"));
        let _ = fs::remove_dir_all(vm.join("apt").join(repo).join("cache"));
    }
    dirs
}

/// `target/vm/kernels/SERIES/`: `vmlinuz`, `release`, `package` and `modules/NN-NAME.ko` in
/// load order. Reused when present.
fn fetch_kernel(
    vm: &Path,
    kernel: &Kernel,
    updated: &mut BTreeSet<&'static str>,
) -> anyhow::Result<PathBuf> {
    let dir = vm.join("kernels").join(kernel.series);
    if dir.join("release").exists() {
        return Ok(dir);
    }
    let apt = Apt::new(vm, kernel.repo)?;
    if updated.insert(kernel.repo) {
        println!(
            "vm-test: {}: apt-get update ({})",
            kernel.series, kernel.repo
        );
        apt.run("apt-get", &["update", "-q"])?;
    }
    // linux-image-6.1.0-52-cloud-amd64, linux-image-6.12.117+deb12-cloud-amd64, ...
    let names = apt.run(
        "apt-cache",
        &["pkgnames", &format!("linux-image-{}.", kernel.series)],
    )?;
    let image = names
        .lines()
        .map(str::trim)
        .filter(|n| n.ends_with("-cloud-amd64"))
        .max_by_key(|n| version_key(n))
        .ok_or_else(|| {
            anyhow!(
                "no linux-image-{}.*-cloud-amd64 in {}",
                kernel.series,
                kernel.repo
            )
        })?
        .to_owned();
    let abi = image.trim_start_matches("linux-image-");
    let show = apt.run("apt-cache", &["show", "--no-all-versions", &image])?;
    let field = |name: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let version = field("Version:");
    // Newer packaging splits the image into a metapackage, the binary and the modules.
    let depends = field("Depends:");
    let mut packages = vec![image.clone()];
    for part in ["linux-binary-", "linux-modules-"] {
        let name = format!("{part}{abi}");
        if depends
            .split([',', '|'])
            .any(|d| d.split_whitespace().next() == Some(&name))
        {
            packages.push(name);
        }
    }
    println!(
        "vm-test: {}: downloading {} {version}",
        kernel.series,
        packages.join(" ")
    );
    let debs = vm.join("debs").join(kernel.series);
    fs::create_dir_all(&debs)?;
    let mut args = vec!["download"];
    args.extend(packages.iter().map(String::as_str));
    apt.run_in("apt-get", &args, &debs)?;
    // apt names them NAME_VERSION_ARCH.deb, an epoch's colon escaped.
    let version_in_name = version.replace(':', "%3a");
    let files: Vec<PathBuf> = deb_files(&debs)?
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            packages
                .iter()
                .any(|p| name.starts_with(&format!("{p}_{version_in_name}_")))
        })
        .collect();
    if files.len() != packages.len() {
        bail!(
            "expected {} .deb files for {packages:?}, found {files:?}",
            packages.len()
        );
    }

    let extract = vm.join(format!("extract-{}", kernel.series));
    let staging = vm.join(format!("kernels/{}.new", kernel.series));
    let result = unpack_kernel(&files, &extract, &staging, &format!("{image} {version}"));
    let _ = fs::remove_dir_all(&extract);
    if let Err(error) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir)?;
    Ok(dir)
}

fn deb_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            files.push(path);
        }
    }
    Ok(files)
}

/// Sorts `linux-image-6.1.0-9-...` below `linux-image-6.1.0-52-...`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

fn unpack_kernel(
    debs: &[PathBuf],
    extract: &Path,
    staging: &Path,
    package: &str,
) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(extract);
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(extract)?;
    fs::create_dir_all(staging.join("modules"))?;
    for deb in debs {
        run_quiet(
            Command::new("timeout")
                .args(["300", "dpkg-deb", "-x"])
                .arg(deb)
                .arg(extract),
        )?;
    }
    // Modules live in lib/modules (older) or usr/lib/modules (merged /usr); the vmlinuz in boot/
    // or, with the split packaging, beside the modules.
    let mut module_dir = None;
    for base in ["lib/modules", "usr/lib/modules"] {
        if let Ok(entries) = fs::read_dir(extract.join(base)) {
            for entry in entries {
                let path = entry?.path();
                if path.join("kernel").is_dir() {
                    module_dir = Some(path);
                }
            }
        }
    }
    let module_dir =
        module_dir.ok_or_else(|| anyhow!("no lib/modules/RELEASE/kernel in {debs:?}"))?;
    let release = module_dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let vmlinuz = [
        extract.join(format!("boot/vmlinuz-{release}")),
        module_dir.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| anyhow!("no vmlinuz for {release} in {debs:?}"))?;
    fs::copy(&vmlinuz, staging.join("vmlinuz"))?;

    let builtin = fs::read_to_string(module_dir.join("modules.builtin")).unwrap_or_default();
    let mut available = Vec::new();
    walk(&module_dir.join("kernel"), &mut available)?;
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    for module in MODULES {
        add_module(module, &available, &builtin, &mut order)?;
    }
    for (i, (name, bytes)) in order.iter().enumerate() {
        fs::write(staging.join(format!("modules/{i:02}-{name}.ko")), bytes)?;
    }
    fs::write(staging.join("package"), format!("{package}\n"))?;
    fs::write(staging.join("release"), format!("{release}\n"))?;
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// A module and, first, what it depends on (its `.modinfo` `depends=`); nothing for a
/// built-in one. Compressed modules are decompressed here: busybox's insmod takes plain ELF.
fn add_module(
    name: &str,
    available: &[PathBuf],
    builtin: &str,
    order: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let canonical = name.replace('-', "_");
    if order.iter().any(|(n, _)| *n == canonical) {
        return Ok(());
    }
    let file_name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let matches = |file: &str| {
        let stem = file.split(".ko").next().unwrap_or_default();
        file.contains(".ko") && stem.replace('-', "_") == canonical
    };
    let Some(path) = available.iter().find(|p| matches(&file_name(p))) else {
        if builtin
            .lines()
            .any(|l| matches(l.rsplit('/').next().unwrap_or(l)))
        {
            return Ok(());
        }
        bail!("module {name} is neither in the package nor built in");
    };
    let file = file_name(path);
    let bytes = if file.ends_with(".ko") {
        fs::read(path)?
    } else {
        let tool = match file.rsplit('.').next() {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            Some("gz") => "gzip",
            other => bail!("module {file}: unknown compression {other:?}"),
        };
        let out = Command::new("timeout")
            .args(["60", tool, "-dc"])
            .arg(path)
            .output()
            .with_context(|| format!("running {tool} -dc on {file}"))?;
        if !out.status.success() {
            bail!(
                "{tool} -dc {file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.stdout
    };
    for dep in modinfo_depends(&bytes) {
        add_module(&dep, available, builtin, order)?;
    }
    order.push((canonical, bytes));
    Ok(())
}

/// The `depends=a,b` string of a module's `.modinfo` section.
fn modinfo_depends(elf: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(start) = elf.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &elf[start + key.len()..];
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A private apt configuration: its own sources, lists and caches under `target/vm/apt/REPO`,
/// and none of the machine's configuration, so nothing of the machine's apt changes.
struct Apt {
    config: PathBuf,
}

impl Apt {
    fn new(vm: &Path, repo: &str) -> anyhow::Result<Self> {
        let (_, lines) = SOURCES
            .iter()
            .find(|(name, _)| *name == repo)
            .ok_or_else(|| anyhow!("no sources for {repo}"))?;
        let dir = vm.join("apt").join(repo);
        for sub in [
            "apt.conf.d",
            "sources.list.d",
            "preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mut sources = String::new();
        for line in *lines {
            let (uri, rest) = line.split_once(' ').expect("URI SUITE COMPONENTS");
            writeln!(sources, "deb [signed-by={KEYRING}] {uri} {rest}")?;
        }
        fs::write(dir.join("sources.list"), sources)?;
        fs::write(dir.join("status"), "")?;
        fs::write(dir.join("empty.conf"), "")?;
        let d = dir.display();
        // APT_CONFIG is read before the parts directory and the main file, so these keep the
        // machine's apt.conf.d (hooks, extra index targets) out as well. Like the machine's
        // own configuration, no Valid-Until/date check: the archive this machine reaches may
        // serve Release files older than its clock. Signatures are still checked.
        let config = format!(
            "Dir::Etc::main \"{d}/empty.conf\";\n\
             Dir::Etc::parts \"{d}/apt.conf.d\";\n\
             Dir::Etc::sourcelist \"{d}/sources.list\";\n\
             Dir::Etc::sourceparts \"{d}/sources.list.d\";\n\
             Dir::Etc::preferences \"{d}/preferences\";\n\
             Dir::Etc::preferencesparts \"{d}/preferences.d\";\n\
             Dir::State \"{d}/state\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::Check-Valid-Until \"false\";\n\
             Acquire::Check-Date \"false\";\n\
             APT::Sandbox::User \"root\";\n"
        );
        let path = dir.join("apt.conf");
        fs::write(&path, config)?;
        Ok(Self { config: path })
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        self.run_in(tool, args, Path::new("."))
    }

    fn run_in(&self, tool: &str, args: &[&str], cwd: &Path) -> anyhow::Result<String> {
        capture(
            Command::new("timeout")
                .arg(APT_TIMEOUT)
                .arg(tool)
                .args(args)
                .current_dir(cwd)
                .env("APT_CONFIG", &self.config),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Guest binaries and initramfs

struct Guest {
    runner: Vec<u8>,
    /// (suite name, binary)
    suites: Vec<(String, Vec<u8>)>,
}

fn build_guest() -> anyhow::Result<Guest> {
    println!("vm-test: building the guest binaries for {MUSL}");
    let tests = cargo_artifacts(&[
        "test",
        "--no-run",
        "--target",
        MUSL,
        "-p",
        "portmap-tests",
        "--test",
        "packets",
        "--test",
        "packets_paths",
        "--test",
        "verifier",
    ])?;
    let runner = cargo_artifacts(&[
        "build",
        "--target",
        MUSL,
        "-p",
        "portmap-tests",
        "--bin",
        "vm-guest",
    ])?;
    let read = |name: &str, artifacts: &[(String, PathBuf)]| {
        let path = &artifacts
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("cargo built no {name}"))?
            .1;
        fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(Guest {
        runner: read("vm-guest", &runner)?,
        suites: vec![
            ("packets".into(), read("packets", &tests)?),
            ("packets_paths".into(), read("packets_paths", &tests)?),
            ("verifier".into(), read("verifier", &tests)?),
        ],
    })
}

/// Runs cargo with JSON messages and returns each executable it produced, by target name.
fn cargo_artifacts(args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut command = Command::new("timeout");
    command
        .arg(CARGO_TIMEOUT)
        .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .arg("--message-format=json-render-diagnostics")
        // Debug info would make the initramfs ten times larger and the build slower; the guest
        // needs none. Only the musl target's flags: host builds keep their artifacts.
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                MUSL.to_uppercase().replace('-', "_")
            ),
            "-C debuginfo=0 -C strip=debuginfo",
        )
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let name = line
            .split_once("\"target\":{")
            .and_then(|(_, t)| json_string(t, "name"));
        if let (Some(name), Some(exe)) = (name, json_string(&line, "executable")) {
            artifacts.push((name, PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(artifacts)
}

/// The first `"key":"value"` string in a line of cargo's JSON (paths here hold no escapes).
fn json_string(json: &str, key: &str) -> Option<String> {
    let (_, rest) = json.split_once(&format!("\"{key}\":\""))?;
    rest.split_once('"').map(|(value, _)| value.to_owned())
}

const INIT: &str = r#"#!/bin/busybox sh
# portmap vm-test guest: mount what the tests need, load the modules, run vm-guest, power off.
# Results go to the second serial port, everything else to the console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
{
    echo "VM boot"
    for m in /modules/*.ko; do
        [ -e "$m" ] || continue
        if insmod "$m"; then echo "VM module ${m##*/} ok"; else echo "VM module ${m##*/} failed"; fi
    done
    /bin/vm-guest
    echo "VM exit $?"
} > /dev/ttyS1
poweroff -f
"#;

fn initramfs(kernel_dir: &Path, guest: &Guest, busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "modules", "tests"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("portmap-vm-guest", 0o644, b"");
    cpio.file("bin/vm-guest", 0o755, &guest.runner);
    for (name, bytes) in &guest.suites {
        cpio.file(&format!("tests/{name}"), 0o755, bytes);
    }
    let mut modules: Vec<PathBuf> = fs::read_dir(kernel_dir.join("modules"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    modules.sort();
    for path in modules {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        cpio.file(&format!("modules/{name}"), 0o644, &fs::read(&path)?);
    }
    Ok(cpio.finish())
}

/// A newc (`070701`) cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, 0, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 0, 0, data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, major, minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev_major: u32, rdev_minor: u32, data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040_000 != 0 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev_major,
            rdev_minor,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, 0, &[]);
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

// ---------------------------------------------------------------------------------------
// Booting and reading what the guest said

fn boot(
    vm: &Path,
    kernel: &Kernel,
    kernel_dir: &Path,
    guest: &Guest,
    busybox: &[u8],
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run_dir = vm.join("runs").join(kernel.series);
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let initrd = run_dir.join("initramfs.cpio");
    fs::write(&initrd, initramfs(kernel_dir, guest, busybox)?)?;
    let console = run_dir.join("console.log");
    let results = run_dir.join("results.log");
    let package = fs::read_to_string(kernel_dir.join("package")).unwrap_or_default();
    println!("vm-test: {}: booting {}", kernel.series, package.trim());
    let status = Command::new("timeout")
        .args(["--kill-after=10", &GUEST_TIMEOUT.as_secs().to_string()])
        .arg("qemu-system-x86_64")
        // KVM is not usable on these machines (guests die in early boot); TCG is.
        .args(["-accel", "tcg", "-m", GUEST_MEMORY, "-smp", "1"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel_dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .output()
        .context("running qemu-system-x86_64")?;
    // The initramfs is big and rebuilt every run; the logs stay for a look afterwards.
    let _ = fs::remove_file(&initrd);
    let mut report = Report::new(kernel.series);
    report.package = package.trim().to_owned();
    report.console = console;
    let said = fs::read_to_string(&results).unwrap_or_default();
    report.parse(&said);
    report.elapsed = started.elapsed();
    if !status.status.success() {
        let code = status.status.code();
        report.problems.push(match code {
            Some(124) | Some(137) => format!("qemu timed out after {GUEST_TIMEOUT:?}"),
            _ => format!(
                "qemu exited with {}: {}",
                status.status,
                String::from_utf8_lossy(&status.stderr).trim()
            ),
        });
    }
    Ok(report)
}

#[derive(Default)]
struct Program {
    name: String,
    /// `Some(Ok(instructions))` or `Some(Err(why))`.
    load: Option<Result<String, String>>,
    verifier_tail: Vec<String>,
    attach: Option<Result<String, String>>,
    /// Whether real frames on the veth pair reached it, and its counters.
    ran: Option<bool>,
    ran_detail: String,
}

#[derive(Default)]
struct Suite {
    name: String,
    passed: u32,
    failed: Vec<String>,
    ignored: u32,
    exit: Option<String>,
}

#[derive(Default)]
struct Report {
    series: &'static str,
    package: String,
    release: String,
    programs: Vec<Program>,
    maps_ok: Option<bool>,
    modules: Vec<(String, bool)>,
    suites: Vec<Suite>,
    done: bool,
    exit: Option<String>,
    problems: Vec<String>,
    console: PathBuf,
    elapsed: Duration,
}

impl Report {
    fn new(series: &'static str) -> Self {
        Self {
            series,
            ..Self::default()
        }
    }

    fn program(&mut self, name: &str) -> &mut Program {
        if let Some(i) = self.programs.iter().position(|p| p.name == name) {
            return &mut self.programs[i];
        }
        self.programs.push(Program {
            name: name.to_owned(),
            ..Program::default()
        });
        self.programs.last_mut().expect("just pushed")
    }

    fn suite(&mut self, name: &str) -> &mut Suite {
        if let Some(i) = self.suites.iter().position(|s| s.name == name) {
            return &mut self.suites[i];
        }
        self.suites.push(Suite {
            name: name.to_owned(),
            ..Suite::default()
        });
        self.suites.last_mut().expect("just pushed")
    }

    /// Reads the guest's `VM ...` lines (see tests/src/bin/vm-guest.rs).
    fn parse(&mut self, said: &str) {
        for line in said.lines() {
            let line = line.trim_end_matches('\r');
            let Some(rest) = line.strip_prefix("VM ") else {
                continue;
            };
            let words: Vec<&str> = rest.splitn(4, ' ').collect();
            let word = |i: usize| words.get(i).copied().unwrap_or_default();
            let tail = |i: usize| words.get(i..).map(|w| w.join(" ")).unwrap_or_default();
            match word(0) {
                "kernel" => self.release = tail(1),
                "module" => self.modules.push((word(1).to_owned(), word(2) == "ok")),
                "maps" => self.maps_ok = Some(word(1) == "ok"),
                "load" => {
                    let outcome = if word(2) == "ok" {
                        Ok(word(3).to_owned())
                    } else {
                        Err(tail(3))
                    };
                    self.program(word(1)).load = Some(outcome);
                }
                "log" => {
                    let name = word(1).to_owned();
                    let text = tail(2);
                    self.program(&name).verifier_tail.push(text);
                }
                "attach" => {
                    let outcome = if word(2) == "ok" {
                        Ok(word(3).to_owned())
                    } else {
                        Err(tail(3))
                    };
                    // tc_reply is attached once per uplink hook: a failure in either stands.
                    let program = self.program(word(1));
                    if !matches!(program.attach, Some(Err(_))) {
                        program.attach = Some(outcome);
                    }
                }
                "attach-error" => self.problems.push(format!("attach test: {}", tail(1))),
                "ran" => {
                    let program = self.program(word(1));
                    program.ran = Some(program.ran.unwrap_or(true) && word(2) == "yes");
                    if !program.ran_detail.is_empty() {
                        program.ran_detail.push(' ');
                    }
                    program.ran_detail.push_str(word(3));
                }
                "test" => {
                    // VM test SUITE NAME OUTCOME: names have no spaces, outcomes are one word.
                    let suite = word(1).to_owned();
                    let rest = tail(2);
                    let (name, outcome) = rest.rsplit_once(' ').unwrap_or((&rest, ""));
                    let (name, outcome) = (name.to_owned(), outcome.to_owned());
                    let suite = self.suite(&suite);
                    match outcome.as_str() {
                        "ok" => suite.passed += 1,
                        "ignored" => suite.ignored += 1,
                        _ => suite.failed.push(name),
                    }
                }
                "suite" if word(2) == "exit" => self.suite(word(1)).exit = Some(tail(3)),
                "suite-error" => self.problems.push(tail(1)),
                "done" => self.done = true,
                "exit" => self.exit = Some(tail(1)),
                _ => {}
            }
        }
    }

    fn suite_ok(suite: &Suite) -> bool {
        suite.failed.is_empty() && suite.passed > 0 && suite.exit.as_deref() == Some("0")
    }

    fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.done
            && self.exit.as_deref() == Some("0")
            && self.maps_ok == Some(true)
            && self.modules.iter().all(|(_, ok)| *ok)
            && !self.programs.is_empty()
            && self.programs.iter().all(|p| {
                matches!(p.load, Some(Ok(_)))
                    && (!attached_in_guest(&p.name)
                        || (matches!(p.attach, Some(Ok(_))) && p.ran == Some(true)))
            })
            && ["packets", "packets_paths", "verifier"].iter().all(|name| {
                self.suites
                    .iter()
                    .any(|s| s.name == *name && Self::suite_ok(s))
            })
    }

    /// (passed, failed): every test, program load and attach.
    fn checks(&self) -> (usize, usize) {
        let mut passed = 0;
        let mut failed = 0;
        for suite in &self.suites {
            passed += suite.passed as usize;
            failed += suite.failed.len();
        }
        for program in &self.programs {
            let mut checks = vec![matches!(program.load, Some(Ok(_)))];
            if attached_in_guest(&program.name) {
                checks.push(matches!(program.attach, Some(Ok(_))) && program.ran == Some(true));
            }
            for ok in checks {
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        if !self.ok() && failed == 0 {
            failed += 1;
        }
        (passed, failed)
    }

    fn suite_cell(&self, name: &str) -> String {
        match self.suites.iter().find(|s| s.name == name) {
            Some(s) => {
                let total = s.passed as usize + s.failed.len();
                let mut cell = format!("{}/{total}", s.passed);
                if s.exit.as_deref() != Some("0") && s.failed.is_empty() {
                    let _ = write!(cell, " (exit {})", s.exit.as_deref().unwrap_or("?"));
                }
                cell
            }
            None => "not run".into(),
        }
    }

    /// What went wrong, in detail: verifier tails, failed tests, the console's last lines.
    fn details(&self) -> String {
        if self.ok() {
            return String::new();
        }
        let mut out = format!("\n--- {} ({}) FAILED\n", self.series, self.package);
        for problem in &self.problems {
            let _ = writeln!(out, "  {problem}");
        }
        for (module, ok) in &self.modules {
            if !ok {
                let _ = writeln!(out, "  insmod {module} failed");
            }
        }
        for program in &self.programs {
            if let Some(Err(why)) = &program.load {
                let _ = writeln!(
                    out,
                    "  {} rejected: {why}; the verifier's last lines:",
                    program.name
                );
                for line in &program.verifier_tail {
                    let _ = writeln!(out, "    {line}");
                }
            }
            if let Some(Err(why)) = &program.attach {
                let _ = writeln!(out, "  {} attach failed: {why}", program.name);
            }
            if program.ran == Some(false) {
                let _ = writeln!(
                    out,
                    "  {} attached but did not count the test frames: {}",
                    program.name, program.ran_detail
                );
            }
        }
        for suite in &self.suites {
            for test in &suite.failed {
                let _ = writeln!(out, "  {} test failed: {test}", suite.name);
            }
        }
        if !self.done {
            let _ = writeln!(out, "  the guest did not finish");
        }
        let _ = writeln!(out, "  console log: {}", self.console.display());
        if let Ok(console) = fs::read_to_string(&self.console) {
            let lines: Vec<&str> = console.lines().collect();
            for line in &lines[lines.len().saturating_sub(40)..] {
                let _ = writeln!(out, "  | {}", line.trim_end_matches('\r'));
            }
        }
        out
    }
}

fn table(reports: &[Report]) -> String {
    let header = [
        "KERNEL",
        "RELEASE",
        "PROGRAM",
        "LOAD",
        "INSNS",
        "PACKET TESTS",
        "VERIFIER TEST",
        "ATTACH",
        "TRAFFIC",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for report in reports {
        // Both packet tables in one cell: the IPv4 core, then every path of both families.
        let packets = format!(
            "{} + {}",
            report.suite_cell("packets"),
            report.suite_cell("packets_paths")
        );
        let verifier = report.suite_cell("verifier");
        if report.programs.is_empty() {
            rows.push(vec![
                report.series.into(),
                report.release.clone(),
                "-".into(),
                "not run".into(),
                "-".into(),
                packets,
                verifier,
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        for program in &report.programs {
            let (load, insns) = match &program.load {
                Some(Ok(n)) => ("loaded".to_owned(), n.clone()),
                Some(Err(_)) => ("REJECTED".to_owned(), "-".to_owned()),
                None => ("not run".to_owned(), "-".to_owned()),
            };
            let attach = match &program.attach {
                Some(Ok(how)) => format!("ok ({how})"),
                Some(Err(_)) => "FAILED".to_owned(),
                None if !attached_in_guest(&program.name) => "-".to_owned(),
                None => "not run".to_owned(),
            };
            let traffic = match program.ran {
                Some(true) => "passed+translated",
                Some(false) => "NOT SEEN",
                None => "-",
            };
            rows.push(vec![
                report.series.into(),
                report.release.clone(),
                program.name.clone(),
                load,
                insns,
                packets.clone(),
                verifier.clone(),
                attach,
                traffic.to_owned(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::from("\n");
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------
// Processes

/// Runs a command to completion, returning its stdout; on failure its output is in the error.
fn capture(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    check(command, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_quiet(command: &mut Command) -> anyhow::Result<()> {
    capture(command).map(drop)
}

fn check(command: &Command, out: &Output) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let what = if out.status.code() == Some(124) {
        "timed out".to_owned()
    } else {
        out.status.to_string()
    };
    bail!(
        "{command:?} {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The programs the guest attaches to a veth pair and sends frames through. The others (the
/// cgroup socket programs, the clock) are loaded through the verifier only: scoping the socket
/// programs to a namespace needs 5.14, and the host's suites exercise them.
fn attached_in_guest(program: &str) -> bool {
    matches!(
        program,
        "xdp_uplink" | "tc_forward" | "tc_uplink" | "tc_reply"
    )
}
