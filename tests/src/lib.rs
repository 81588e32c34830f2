//! What every portmap test shares: namespaces that clean up after themselves, the Docker-host
//! topology of SCENARIOS.md, servers that report whom they saw, the real `portmap` binary, a
//! CNI chain replayed by hand, and frames for `BPF_PROG_TEST_RUN`.
//!
//! The tests share kernel state (bpffs, the BPF program table, CPU time for timing-sensitive
//! exchanges) and run one at a time: `cargo xtask test` passes `--test-threads=1`.

pub mod cgroup;
pub mod cni;
pub mod dockerd;
pub mod netns;
pub mod packet;
pub mod process;
pub mod raw;
pub mod servers;
pub mod testrun;
pub mod topology;
