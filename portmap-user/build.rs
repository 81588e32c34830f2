//! Builds the eBPF object that `dataplane.rs` embeds, so that `cargo build`, `cargo test` and
//! `cargo clippy` of this crate work without a separate step. The object needs the nightly
//! toolchain (for `-Z build-std=core`) and bpf-linker; `cargo xtask setup` installs both.
//!
//! An artifact dependency would express this better, but cargo's are not usable yet
//! (<https://github.com/rust-lang/cargo/issues/12374>, 12375, 12385); `aya-build` wraps the
//! nested cargo invocation they would replace.

use anyhow::Context as _;

/// The toolchain that builds the eBPF code. Its LLVM major must match bpf-linker's; `cargo xtask
/// setup` checks that, so this stays the one place that names it.
const EBPF_TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PORTMAP_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("PORTMAP_EBPF_TOOLCHAIN").unwrap_or(EBPF_TOOLCHAIN.into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../portmap-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to portmap-ebpf")?;
    println!("cargo:rerun-if-changed={manifest_dir}/../portmap-common/src");
    // The nested cargo's progress lines would each surface as a `cargo:warning`; keep only its
    // diagnostics.
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "portmap-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context(
        "building the eBPF object (run `cargo xtask setup` if nightly or bpf-linker is missing)",
    )
}
