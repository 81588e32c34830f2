//! `portmap-ebpf`: portmap as a chained CNI plugin. A runtime (containerd, CRI-O, Kubernetes
//! through either, nerdctl) runs it after the plugin that connects the container, with the
//! `portMappings` capability; it publishes the container's host ports through the node's
//! `portmap run` instead of iptables DNAT chains.
//!
//! The protocol is the CNI specification's, 1.0.0 (0.4.0 accepted): the command and the
//! container in `CNI_*` environment variables, the network configuration on stdin, a result or
//! an error object on stdout, and a non-zero exit on error. See the README, "On a cluster".

mod commands;
mod config;
mod error;
mod node;
mod state;

use std::{
    io::{IsTerminal as _, Read as _},
    process::ExitCode,
};

use crate::{
    commands::Env,
    config::Strictness,
    error::{CniError, code},
};

/// The largest configuration read: ten thousand port mappings fit many times over.
const MAX_STDIN: u64 = 64 << 20;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command.is_empty() && std::io::stdin().is_terminal() {
        eprintln!(
            "portmap-ebpf {}: a CNI plugin (type \"portmap-ebpf\"), run by a container runtime with \
             CNI_COMMAND and the network configuration on stdin. CNI versions: {}.",
            env!("CARGO_PKG_VERSION"),
            config::SUPPORTED_VERSIONS.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        let error = CniError::new(code::IO_FAILURE, format!("reading stdin: {e}"), "");
        println!("{}", error.to_json(config::NEWEST_VERSION));
        return ExitCode::FAILURE;
    }
    let version = config::version_of(&stdin);
    match run(&command, &stdin, &version) {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            println!("{}", error.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(command: &str, stdin: &[u8], version: &str) -> Result<Option<String>, CniError> {
    match command {
        "VERSION" => Ok(Some(
            serde_json::json!({
                "cniVersion": version,
                "supportedVersions": config::SUPPORTED_VERSIONS,
            })
            .to_string(),
        )),
        "ADD" => {
            let env = env(true)?;
            let conf = config::parse(stdin, Strictness::Strict)?;
            commands::add(&env, &conf).map(Some)
        }
        "CHECK" => {
            let env = env(true)?;
            let conf = config::parse(stdin, Strictness::Strict)?;
            commands::check(&env, &conf).map(|()| None)
        }
        "DEL" => {
            let env = env(false)?;
            let conf = config::parse(stdin, Strictness::Lenient)?;
            commands::del(&env, &conf).map(|()| None)
        }
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "a runtime sets it to ADD, DEL, CHECK or VERSION",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"),
            format!(
                "portmap-ebpf speaks CNI {}",
                config::SUPPORTED_VERSIONS.join(", ")
            ),
        )),
    }
}

/// The container's variables. CNI_NETNS is required for ADD and CHECK only (the specification
/// lets a DEL come after the namespace is gone); the plugin itself works from prevResult.
fn env(needs_netns: bool) -> Result<Env, CniError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut missing = Vec::new();
    let container_id = var("CNI_CONTAINERID");
    let ifname = var("CNI_IFNAME");
    if container_id.is_none() {
        missing.push("CNI_CONTAINERID");
    }
    if ifname.is_none() {
        missing.push("CNI_IFNAME");
    }
    if needs_netns && var("CNI_NETNS").is_none() {
        missing.push("CNI_NETNS");
    }
    match (container_id, ifname) {
        (Some(container_id), Some(ifname)) if missing.is_empty() => Ok(Env {
            container_id,
            ifname,
        }),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "required environment variables missing: {}",
                missing.join(", ")
            ),
            "a runtime sets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH",
        )),
    }
}
