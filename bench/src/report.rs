//! What a run measured: the table on the terminal, `results.md`, the chart, and the bar.

use std::{fmt::Write as _, path::Path, time::Duration};

use plotters::prelude::*;

use crate::{
    modes::{Memory, Mode},
    progrun::PathCost,
};

/// One round's figures.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub conn_rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub udp_pps: f64,
    pub gbps: f64,
}

/// One mode at one N.
pub struct Cell {
    pub mode: Mode,
    pub n: usize,
    pub samples: Vec<Sample>,
    pub failed_connections: u64,
    /// Each install's time, in the order measured.
    pub installs: Vec<Duration>,
    pub cold_start: Option<Duration>,
    pub add_remove: Option<(Duration, Duration)>,
    pub memory: Option<Memory>,
}

/// A metric read off the samples, with which way is better.
#[derive(Clone, Copy)]
pub struct Metric {
    pub title: &'static str,
    pub unit: &'static str,
    pub read: fn(&Sample) -> f64,
    pub higher_is_better: bool,
}

pub const METRICS: [Metric; 5] = [
    Metric {
        title: "new TCP connections/s",
        unit: "conn/s",
        read: |s| s.conn_rate,
        higher_is_better: true,
    },
    Metric {
        title: "fresh-connection latency p50",
        unit: "µs",
        read: |s| s.p50_us,
        higher_is_better: false,
    },
    Metric {
        title: "fresh-connection latency p99",
        unit: "µs",
        read: |s| s.p99_us,
        higher_is_better: false,
    },
    Metric {
        title: "UDP packets/s, a new flow each",
        unit: "pkt/s",
        read: |s| s.udp_pps,
        higher_is_better: true,
    },
    Metric {
        title: "single-stream TCP",
        unit: "Gbit/s",
        read: |s| s.gbps,
        higher_is_better: true,
    },
];

/// Median, min and max of a metric over a cell's rounds.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Cell {
    pub fn spread(&self, metric: &Metric) -> Spread {
        let mut values: Vec<f64> = self.samples.iter().map(metric.read).collect();
        values.sort_by(f64::total_cmp);
        Spread {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        for metric in &METRICS {
            let _ = write!(
                out,
                "{} {} {}; ",
                metric.title,
                fmt_num(self.spread(metric).median),
                metric.unit
            );
        }
        if let Some(install) = self.install() {
            let _ = write!(out, "install {}", fmt_duration(install));
        }
        out
    }

    /// The median install time.
    pub fn install(&self) -> Option<Duration> {
        let (_, median, _) = self.install_spread()?;
        Some(median)
    }

    /// The fastest, median and slowest install.
    fn install_spread(&self) -> Option<(Duration, Duration, Duration)> {
        let mut sorted = self.installs.clone();
        sorted.sort_unstable();
        Some((*sorted.first()?, sorted[sorted.len() / 2], *sorted.last()?))
    }
}

/// Everything one run measured.
pub struct Run {
    pub cells: Vec<Cell>,
    pub paths: Vec<PathCost>,
    pub rounds: usize,
    pub seconds: f64,
}

/// Short numbers for table cells: 25.8k, 1.18M.
fn fmt_short(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        let mut s = format!("{v:.0}");
        let mut i = s.len() as isize - 3;
        while i > 0 {
            s.insert(i as usize, ',');
            i -= 3;
        }
        s
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

impl Run {
    fn ns(&self) -> Vec<usize> {
        let mut ns: Vec<usize> = self.cells.iter().map(|c| c.n).collect();
        ns.dedup();
        ns
    }

    fn cell(&self, mode: Mode, n: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.mode == mode && c.n == n)
    }

    fn modes(&self) -> Vec<Mode> {
        Mode::ALL
            .into_iter()
            .filter(|m| self.cells.iter().any(|c| c.mode == *m))
            .collect()
    }

    /// One table per metric: N down, modes across, `median [min–max]`.
    pub fn table(&self) -> String {
        let modes = self.modes();
        let header = |out: &mut String| {
            let _ = write!(out, "{:>6}", "N");
            for mode in &modes {
                let _ = write!(out, " | {:>22}", mode.to_string());
            }
            out.push('\n');
        };
        let mut out = String::new();
        for metric in &METRICS {
            let _ = writeln!(
                out,
                "\n{} ({}), median [min–max] of {} rounds",
                metric.title, metric.unit, self.rounds
            );
            header(&mut out);
            for n in self.ns() {
                let _ = write!(out, "{n:>6}");
                for mode in &modes {
                    let text = self.cell(*mode, n).map_or("–".into(), |c| {
                        let s = c.spread(metric);
                        format!(
                            "{} [{}–{}]",
                            fmt_short(s.median),
                            fmt_short(s.min),
                            fmt_short(s.max)
                        )
                    });
                    let _ = write!(out, " | {text:>22}");
                }
                out.push('\n');
            }
        }
        let _ = writeln!(
            out,
            "\ninstall N bindings until traffic flows (ms), each time from nothing installed: median [min–max] of {} installs (the CNI plugin: one)",
            self.rounds
        );
        header(&mut out);
        for n in self.ns() {
            let _ = write!(out, "{n:>6}");
            for mode in &modes {
                let text = self.cell(*mode, n).and_then(Cell::install_spread).map_or(
                    "–".into(),
                    |(min, median, max)| {
                        let ms = |d: Duration| fmt_num(d.as_secs_f64() * 1e3);
                        format!("{} [{}–{}]", ms(median), ms(min), ms(max))
                    },
                );
                let _ = write!(out, " | {text:>22}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nadd one binding; remove it (medians of 5, once the install settled)"
        );
        header(&mut out);
        for n in self.ns() {
            let _ = write!(out, "{n:>6}");
            for mode in &modes {
                let text = self
                    .cell(*mode, n)
                    .and_then(|c| c.add_remove)
                    .map_or("–".into(), |(add, remove)| {
                        format!("{}; {}", fmt_duration(add), fmt_duration(remove))
                    });
                let _ = write!(out, " | {text:>22}");
            }
            out.push('\n');
        }
        for cell in self
            .cells
            .iter()
            .filter(|c| c.mode.is_portmap() && c.n == self.ns()[0])
        {
            if let Some(cold) = cell.cold_start {
                let _ = writeln!(
                    out,
                    "{}: process start to serving (nothing published) {}",
                    cell.mode,
                    fmt_duration(cold)
                );
            }
        }
        let failed: u64 = self.cells.iter().map(|c| c.failed_connections).sum();
        let _ = writeln!(out, "\nfailed connections over the whole run: {failed}");
        let last = *self.ns().last().expect("measured N");
        for cell in self
            .cells
            .iter()
            .filter(|c| c.memory.is_some() && c.n == last && c.mode.is_portmap())
        {
            let m = cell.memory.as_ref().expect("filtered");
            let _ = writeln!(
                out,
                "{} memory at N = {}: RSS {} KiB, maps {} KiB, programs {} KiB",
                cell.mode, cell.n, m.rss_kib, m.maps_kib, m.programs_kib
            );
        }
        let _ = writeln!(
            out,
            "\nBPF_PROG_TEST_RUN, ns per packet (10,000 bindings loaded)"
        );
        for path in &self.paths {
            let _ = writeln!(out, "  {:<48} {:>6.1}", path.path, path.ns_per_packet);
        }
        out
    }

    /// The issue's bar, as ratios from this run, for each portmap hook.
    pub fn bar(&self) -> String {
        let mut out = String::from("The bar:\n");
        let median = |mode, n, metric: &Metric| self.cell(mode, n).map(|c| c.spread(metric).median);
        let ns = self.ns();
        let (first, last) = (ns[0], ns[ns.len() - 1]);
        let [conns, _, p99, udp, _] = &METRICS;
        for mode in [Mode::PortmapXdp, Mode::PortmapTc] {
            if !self.cells.iter().any(|c| c.mode == mode) {
                continue;
            }
            let _ = writeln!(out, "  {mode}:");
            let mut check = |ok: bool, text: String| {
                let _ = writeln!(out, "    [{}] {text}", if ok { "met" } else { "NOT met" });
            };
            if let (Some(pm1), Some(pm), Some(floor)) = (
                median(mode, first, conns),
                median(mode, last, conns),
                median(Mode::Floor, last, conns),
            ) {
                check(
                    pm >= 0.95 * pm1,
                    format!(
                        "new conn/s at N={last} is {:.2} × its own N={first} (≥ 0.95)",
                        pm / pm1
                    ),
                );
                check(
                    pm >= 0.9 * floor,
                    format!(
                        "new conn/s at N={last} is {:.2} × the floor (≥ 0.9)",
                        pm / floor
                    ),
                );
            }
            if let (Some(pm), Some(floor)) =
                (median(mode, last, udp), median(Mode::Floor, last, udp))
            {
                check(
                    pm >= 0.9 * floor,
                    format!(
                        "UDP new-flow pkt/s at N={last} is {:.2} × the floor (≥ 0.9)",
                        pm / floor
                    ),
                );
            }
            if let (Some(pm), Some(floor)) =
                (median(mode, last, p99), median(Mode::Floor, last, p99))
            {
                check(
                    pm <= 1.2 * floor,
                    format!("p99 at N={last} is {:.2} × the floor (≤ 1.2)", pm / floor),
                );
            }
            let mut behind = Vec::new();
            for &n in &ns {
                for metric in &METRICS {
                    if let (Some(pm), Some(nft)) =
                        (median(mode, n, metric), median(Mode::NftMap, n, metric))
                    {
                        let ahead = if metric.higher_is_better {
                            pm > nft
                        } else {
                            pm < nft
                        };
                        if !ahead {
                            behind.push(format!(
                                "{} at N={n} ({} vs {})",
                                metric.title,
                                fmt_num(pm),
                                fmt_num(nft)
                            ));
                        }
                    }
                }
            }
            check(
                behind.is_empty(),
                if behind.is_empty() {
                    "ahead of the nftables map on every metric at every N".into()
                } else {
                    format!("ahead of the nftables map except: {}", behind.join("; "))
                },
            );
            if let (Some(pm), Some(nft)) = (
                self.cell(mode, last).and_then(Cell::install),
                self.cell(Mode::NftMap, last).and_then(Cell::install),
            ) {
                check(
                    pm < Duration::from_millis(20) && pm < nft,
                    format!(
                        "N={last} installed and serving in {} (median; < 20 ms; the nftables map: {})",
                        fmt_duration(pm),
                        fmt_duration(nft)
                    ),
                );
            }
            if let Some((add, remove)) = self.cell(mode, last).and_then(|c| c.add_remove) {
                check(
                    add < Duration::from_millis(1) && remove < Duration::from_millis(1),
                    format!(
                        "one binding added in {}, removed in {} (medians; < 1 ms)",
                        fmt_duration(add),
                        fmt_duration(remove)
                    ),
                );
            }
        }
        if let Some(hit) = self
            .paths
            .iter()
            .find(|p| p.path == "xdp_uplink hit, exact binding, established flow")
        {
            let _ = writeln!(
                out,
                "  [{}] XDP hit path (an established flow) {:.1} ns/packet (< 30)",
                if hit.ns_per_packet < 30.0 {
                    "met"
                } else {
                    "NOT met"
                },
                hit.ns_per_packet
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("# portmap benchmark results\n\n");
        let _ = writeln!(out, "Machine: {}\n", machine_line());
        let _ = writeln!(
            out,
            "`cargo xtask bench`: {} rounds of {} s per metric (UDP gets half), everything on CPU 0, fresh namespaces per mode, conntrack and portmap's flow tables flushed before each metric of a round. Modes: the no-NAT floor (the client addresses containers directly), Docker's iptables rules (nft backend, moby's layout, measured port last), one nftables DNAT through a map, and portmap beside Docker's base rules. The chart is `results.svg`.\n",
            self.rounds, self.seconds
        );
        out.push_str("```\n");
        out.push_str(self.table().trim());
        out.push_str("\n```\n\n```\n");
        out.push_str(self.bar().trim());
        out.push_str("\n```\n");
        out
    }
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The machine's CPUs, not this process's: the bench pins itself to one.
    // SAFETY: sysconf reads a constant and has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}, {date}", kernel.trim())
}

/// One panel per metric, N on a log axis, a line per mode.
pub fn chart(run: &Run, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1500, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 3));
    let ns = run.ns();
    let (x_min, x_max) = (
        ns[0].max(1) as f64 / 1.5,
        *ns.last().expect("measured N") as f64 * 1.5,
    );
    let colors = [
        BLACK,
        RGBColor(150, 150, 150),
        RED,
        BLUE,
        RGBColor(0, 150, 0),
        RGBColor(200, 120, 0),
    ];
    let install = Metric {
        title: "install N bindings until traffic flows",
        unit: "ms",
        read: |_| 0.0,
        higher_is_better: false,
    };
    for (panel, metric) in panels
        .iter()
        .zip(METRICS.iter().chain(std::iter::once(&install)))
    {
        let is_install = metric.title == install.title;
        let series: Vec<(Mode, Vec<(f64, f64)>)> = Mode::ALL
            .iter()
            .map(|&mode| {
                let points = ns
                    .iter()
                    .filter_map(|&n| {
                        let cell = run.cell(mode, n)?;
                        let y = if is_install {
                            cell.install()?.as_secs_f64() * 1e3
                        } else {
                            cell.spread(metric).median
                        };
                        (y.is_finite() && y > 0.0).then_some((n as f64, y))
                    })
                    .collect();
                (mode, points)
            })
            .filter(|(_, points): &(Mode, Vec<(f64, f64)>)| !points.is_empty())
            .collect();
        let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
        let (y_min, y_max) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if y_min > y_max {
            continue;
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{} ({})", metric.title, metric.unit),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_min..x_max).log_scale(),
                (y_min / 1.5..y_max * 1.5).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("published ports (N)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| fmt_num(*y))
            .draw()?;
        for (mode, points) in series {
            // A mode keeps its colour on every panel.
            let color =
                colors[Mode::ALL.iter().position(|m| *m == mode).unwrap_or(0) % colors.len()];
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(mode.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, style.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
