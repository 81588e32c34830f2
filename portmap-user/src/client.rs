//! `portmap add`, `rm`, `ls` and `stats`: requests to a running instance over its control
//! socket, and how their answers are printed.

use std::{fmt::Write as _, io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail};

use crate::{
    cli::{Failure, InstanceArgs},
    control::{self, BindingInfo, InstancePaths, Request, Response},
};

/// The instance a command talks to: the one `--iface` or `--pin-dir` names, or the only one
/// running.
fn instance(args: &InstanceArgs) -> Result<InstancePaths, Failure> {
    let pin_dir = match (&args.pin_dir, &args.iface) {
        (Some(dir), _) => dir.clone(),
        (None, Some(iface)) => crate::cli::default_pin_dir(iface),
        (None, None) => return only_instance(),
    };
    Ok(InstancePaths::new(&pin_dir))
}

fn only_instance() -> Result<InstancePaths, Failure> {
    let sockets: Vec<PathBuf> = std::fs::read_dir(InstancePaths::RUN_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match &sockets[..] {
        [socket] => Ok(InstancePaths {
            pin_dir: PathBuf::from("(the only running instance)"),
            lock: socket.with_extension("lock"),
            socket: socket.clone(),
        }),
        [] => Err(Failure::Runtime(anyhow!(
            "no running portmap found (no control socket in {})",
            InstancePaths::RUN_DIR
        ))),
        several => Err(Failure::BadInput(anyhow!(
            "{} portmap instances are running: name one with --iface or --pin-dir (sockets: {})",
            several.len(),
            several
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Sends `request` and turns a refusal into the matching [`Failure`].
fn call(args: &InstanceArgs, request: &Request) -> Result<Response, Failure> {
    let paths = instance(args)?;
    let response = control::call(&paths, request).map_err(Failure::Runtime)?;
    match &response.error {
        None => Ok(response),
        Some(error) if response.bad_input => Err(Failure::BadInput(anyhow!("{error}"))),
        Some(error) => Err(Failure::Runtime(anyhow!("{error}"))),
    }
}

/// `docker port` style, then the container: `80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80`.
pub fn line(binding: &BindingInfo) -> String {
    // IPv6 addresses in brackets, as `docker port` prints them.
    let endpoint = |ip: &str, port: u16| match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => crate::spec::host_and_port(ip, port),
        Err(_) => format!("{ip}:{port}"),
    };
    format!(
        "{}/{} -> {} => {}",
        binding.container_port,
        binding.proto,
        endpoint(&binding.host_ip, binding.host_port),
        endpoint(&binding.container_ip, binding.container_port)
    )
}

pub fn add(
    args: &InstanceArgs,
    specs: &[String],
    containers: &[String],
    replace: bool,
    bridge: Option<&str>,
) -> Result<(), Failure> {
    let response = call(
        args,
        &Request::Add {
            specs: specs.to_vec(),
            containers: containers.to_vec(),
            replace,
            bridge: bridge.map(str::to_owned),
            owner: None,
            hold_ports: true,
        },
    )?;
    for binding in &response.bindings {
        say!("added {}", line(binding));
    }
    Ok(())
}

pub fn rm(args: &InstanceArgs, selectors: &[String]) -> Result<(), Failure> {
    let response = call(
        args,
        &Request::Rm {
            selectors: selectors.to_vec(),
            owner: None,
        },
    )?;
    for binding in &response.bindings {
        say!("removed {}", line(binding));
    }
    Ok(())
}

pub fn ls(args: &InstanceArgs, json: bool) -> Result<(), Failure> {
    let response = call(args, &Request::Ls)?;
    if json {
        // A struct, not `json!`, so the fields keep their documented order.
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            bindings: &'a [BindingInfo],
        }
        print_json(&Listing {
            bindings: &response.bindings,
        })?;
        return Ok(());
    }
    for binding in &response.bindings {
        match &binding.owner {
            Some(owner) => say!("{}  ({owner}: {})", line(binding), binding.source),
            None => say!("{}  ({})", line(binding), binding.source),
        };
    }
    Ok(())
}

/// How `stats --watch` refreshes.
pub struct Watch {
    pub interval: Duration,
    /// Stop after this many tables; `None` runs until interrupted.
    pub count: Option<u64>,
}

pub fn stats(args: &InstanceArgs, json: bool, watch: Option<Watch>) -> Result<(), Failure> {
    let Some(watch) = watch else {
        let response = call(args, &Request::Stats)?;
        if json {
            print_json(&response)?;
        } else {
            crate::write_out(format_args!("{}", stats_table(&response)));
        }
        return Ok(());
    };
    // Refreshed in place on a terminal; one table after another anywhere else.
    let in_place = std::io::stdout().is_terminal() && !json;
    let mut shown = 0;
    loop {
        let response = call(args, &Request::Stats)?;
        let read = if json {
            print_json(&response)?
        } else if in_place {
            crate::write_out(format_args!("\x1b[H\x1b[2J{}", stats_table(&response)))
        } else {
            say!("{}", stats_table(&response))
        };
        // A reader that went away (`| head`) has seen what it wanted.
        if !read {
            return Ok(());
        }
        shown += 1;
        if watch.count.is_some_and(|count| shown >= count) {
            return Ok(());
        }
        std::thread::sleep(watch.interval);
    }
}

/// Prints `value` as one line of JSON; `false` once the reader is gone.
fn print_json(value: &impl serde::Serialize) -> Result<bool, Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure::Runtime(e.into()))?;
    Ok(say!("{text}"))
}

/// One line per binding with its counters, the live flows, then every outcome counter that is
/// not zero.
pub fn stats_table(response: &Response) -> String {
    let mut out = format!(
        "{:<48} {:>10} {:>12} {:>10} {:>12} {:>8}\n",
        "BINDING", "IN_PKTS", "IN_BYTES", "OUT_PKTS", "OUT_BYTES", "FLOWS"
    );
    for binding in &response.bindings {
        let c = binding.counters.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<48} {:>10} {:>12} {:>10} {:>12} {:>8}",
            line(binding),
            c.to_container_packets,
            c.to_container_bytes,
            c.to_client_packets,
            c.to_client_bytes,
            c.flows
        );
    }
    let _ = writeln!(out, "flows: {}", response.flows);
    for (reason, count) in &response.reasons {
        let _ = writeln!(out, "{reason:<48} {count:>10}");
    }
    out
}

/// Whether the interval a user gave is one a watch can use.
///
/// # Errors
///
/// Zero or negative seconds, naming the flag.
pub fn interval(seconds: f64) -> anyhow::Result<Duration> {
    if !(seconds > 0.0 && seconds.is_finite()) {
        bail!("--interval {seconds}: give a number of seconds above 0");
    }
    Ok(Duration::from_secs_f64(seconds))
}
