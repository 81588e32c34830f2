use which::which;

/// Building this crate depends on the `bpf-linker` binary, which cargo cannot see. Rerunning the
/// build when the linker changes is the best a build script can do until cargo's artifact
/// dependencies are usable (<https://github.com/rust-lang/cargo/issues/12385>).
fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        // Host builds of the library (unit tests of `csum`) do not link BPF code.
        Err(_) => println!("cargo:warning=bpf-linker not found; only the host library builds"),
    }
}
