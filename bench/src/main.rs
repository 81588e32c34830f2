//! `cargo xtask bench`: portmap against Docker's netfilter paths and the no-NAT floor, as ratios
//! from one run, on a topology the benchmark builds in its own namespaces.
//!
//! Everything runs on CPU 0 (the process pins itself; threads and children inherit it, and the
//! veth softirq path runs where a packet is sent): waking a process on the other CPU costs more
//! than the paths being compared on these VMs. Each mode gets fresh namespaces, and connection
//! tracking is flushed between rounds.

mod cni;
mod load;
mod modes;
mod progrun;
mod report;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;

use crate::{
    modes::Mode,
    report::{Cell, Sample},
};

/// Benchmark portmap against iptables (Docker), an nftables map, and the no-NAT floor.
#[derive(Debug, Parser)]
struct Args {
    /// Published-port counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    ns: Vec<usize>,
    /// Seconds per fresh-connection and stream measurement (UDP gets half).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per metric; the report gives the median and the min–max spread.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Modes to measure (floor, floor-xdp, iptables, nftmap, portmap-xdp, portmap-tc,
    /// cni-portmap).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,floor-xdp,iptables,nftmap,portmap-xdp,portmap-tc,cni-portmap"
    )]
    modes: Vec<String>,
    /// Every mode at N = 1 and 100, one second, one round; writes no results (for CI).
    #[arg(long)]
    smoke: bool,
    /// Where to write results.md and results.svg.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The largest N the reference CNI plugin is measured at.
const CNI_MAX_N: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.ns = vec![1, 100];
        args.seconds = 1.0;
        args.rounds = 1;
        args.out = None;
    }
    if let Some(unknown) = args
        .modes
        .iter()
        .find(|name| !Mode::ALL.iter().any(|m| m.key() == *name))
    {
        anyhow::bail!("--modes: unknown mode {unknown:?}");
    }
    portmap_tests::process::require_root();
    pin_to_cpu0()?;
    let seconds = Duration::from_secs_f64(args.seconds);

    let mut cells = Vec::new();
    for &n in &args.ns {
        for mode in Mode::ALL
            .into_iter()
            .filter(|m| args.modes.iter().any(|name| *name == m.key()))
        {
            if mode == Mode::CniPortmap && n > CNI_MAX_N {
                // The reference plugin installs three iptables rules per mapping, a process
                // each: 10,000 mappings take minutes to install, past this run's budget.
                eprintln!("bench: {mode} at N = {n}: not measured (above N = {CNI_MAX_N})");
                continue;
            }
            eprintln!("bench: {mode} at N = {n}");
            // The last mode's namespaces and sockets are torn down in the background: that
            // work must not land on this one's install.
            wait_until_idle();
            let cell = measure(mode, n, seconds, args.rounds)
                .with_context(|| format!("{mode} at N = {n}"))?;
            eprintln!("bench:   {}", cell.summary());
            cells.push(cell);
        }
    }
    let repeat = if args.smoke { 100_000 } else { 1_000_000 };
    eprintln!("bench: BPF_PROG_TEST_RUN, {repeat} runs per path");
    let paths = progrun::measure(repeat)?;

    let run = report::Run {
        cells,
        paths,
        rounds: args.rounds,
        seconds: args.seconds,
    };
    println!("{}", run.table());
    println!("{}", run.bar());
    if let Some(out) = args.out {
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("results.md"), run.markdown())?;
        report::chart(&run, &out.join("results.svg"))?;
        eprintln!(
            "bench: wrote {} and {}",
            out.join("results.md").display(),
            out.join("results.svg").display()
        );
    }
    Ok(())
}

fn measure(mode: Mode, n: usize, seconds: Duration, rounds: usize) -> anyhow::Result<Cell> {
    let deployed = modes::deploy(mode, n, rounds)?;
    let net = &deployed.net;
    let sources = &net.client_addrs[1..];
    let udp_ns = &net.containers[1].ns;
    let half = seconds / 2;
    let mut samples = Vec::new();
    let mut failed = 0;
    for _ in 0..rounds {
        modes::flush_state(&deployed)?;
        let conns = load::tcp_connections(&net.client, deployed.rr, sources, 4, seconds);
        failed += conns.failed;

        modes::flush_state(&deployed)?;
        let before = load::udp_delivered(udp_ns)?;
        let began = std::time::Instant::now();
        load::udp_new_flows(&net.client, deployed.udp, sources, half)?;
        let udp_elapsed = began.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let delivered = load::udp_delivered(udp_ns)? - before;

        let sink = &deployed.servers[1].received;
        let bytes_before = sink.load(std::sync::atomic::Ordering::Relaxed);
        // The whole time: over half of it, one stream's rate on one CPU varied by a third
        // between rounds.
        load::tcp_stream(&net.client, deployed.stream, seconds)?;
        std::thread::sleep(Duration::from_millis(50));
        let bytes = sink.load(std::sync::atomic::Ordering::Relaxed) - bytes_before;

        let mut latencies = conns.latencies;
        latencies.sort_unstable();
        samples.push(Sample {
            conn_rate: conns.completed as f64 / conns.elapsed.as_secs_f64(),
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            udp_pps: delivered as f64 / udp_elapsed.as_secs_f64(),
            gbps: bytes as f64 * 8.0 / seconds.as_secs_f64() / 1e9,
        });
    }
    let memory = match &deployed.portmap {
        Some(portmap) => portmap.pid().map(modes::portmap_memory).transpose()?,
        None => None,
    };
    Ok(Cell {
        mode,
        n,
        samples,
        failed_connections: failed,
        installs: deployed.installs,
        cold_start: deployed.cold_start,
        add_remove: deployed.add_remove,
        memory,
    })
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

/// Waits (up to 5 s) until the machine is idle: nine tenths of its CPU time idle over 100 ms.
pub(crate) fn wait_until_idle() {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut before = cpu_times();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_times();
        let (total, idle) = (now.0 - before.0, now.1 - before.1);
        if total > 0 && idle * 10 >= total * 9 {
            return;
        }
        before = now;
    }
}

/// All CPU time and idle time so far, in ticks, from /proc/stat (zero if unreadable).
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are idle.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (ticks.iter().take(8).sum(), idle)
}

/// Pins this process, and so every thread and child it starts afterwards, to CPU 0.
fn pin_to_cpu0() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get valid
    // pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning to CPU 0");
        }
    }
    Ok(())
}
