//! How `portmap add`, `rm`, `ls` and `stats` reach a running `portmap run`: a Unix socket the
//! instance serves, one JSON request and one JSON response per connection, each on one line.
//!
//! The running instance owns the state (it holds the port reservations, which must live as
//! long as the bindings), so changes go through it rather than straight to the pinned maps.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Where an instance keeps its lock and control socket: beside each other in /run, named after
/// its pin directory (one instance per pin directory).
#[derive(Clone, Debug)]
pub struct InstancePaths {
    pub pin_dir: PathBuf,
    pub lock: PathBuf,
    pub socket: PathBuf,
}

impl InstancePaths {
    pub const RUN_DIR: &str = "/run/portmap";

    pub fn new(pin_dir: &Path) -> Self {
        let name = pin_dir
            .to_string_lossy()
            .trim_matches('/')
            .replace('/', "_");
        let run = Path::new(Self::RUN_DIR);
        Self {
            pin_dir: pin_dir.to_owned(),
            lock: run.join(format!("{name}.lock")),
            socket: run.join(format!("{name}.sock")),
        }
    }
}

/// What a command asks of the instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The bindings.
    Ls,
    /// The bindings with their counters, the flow count and the outcome counters.
    Stats,
    /// Publish `specs` (`SPEC=TARGET`), all or none. With `replace`, a binding that already
    /// holds one of the host ports is withdrawn in the same step (re-pointing).
    Add {
        specs: Vec<String>,
        #[serde(default)]
        containers: Vec<String>,
        #[serde(default)]
        replace: bool,
        /// The bridge the containers hang off, when not the instance's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bridge: Option<String>,
        /// Who publishes them (a CNI container id, say); `rm` by owner withdraws them all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// Whether to hold the host ports against other processes (not where another party,
        /// such as Docker, holds them already).
        #[serde(default = "yes")]
        hold_ports: bool,
    },
    /// Withdraw the bindings that `selectors` (`[HOST_IP:]HOST_PORT[/PROTO]`) name, all or
    /// none; or, with no selectors, every binding `owner` published (none is no error).
    Rm {
        #[serde(default)]
        selectors: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// One binding as `ls` and `stats` report it. The JSON shape is an interface: fields are added,
/// never renamed or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    /// The binding's counter slot; reused after removal.
    pub id: u32,
    pub proto: String,
    /// `0.0.0.0` for every local address.
    pub host_ip: String,
    pub host_port: u16,
    pub container_ip: String,
    pub container_port: u16,
    /// Where it came from: the spec as written, or `FILE:LINE: ENTRY SPEC` for compose.
    pub source: String,
    /// The bridge its container hangs off.
    pub bridge: String,
    /// Who published it, when not the command line (`docker:NAME`, `cni:CONTAINER_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Counters, in `stats` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub to_container_packets: u64,
    pub to_container_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Flows recorded for this binding.
    pub flows: u64,
}

/// The instance's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Set when the request failed; nothing was changed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the failure is the request's fault (exit 2) rather than the system's (exit 1).
    #[serde(default)]
    pub bad_input: bool,
    /// `ls`, `stats`: every binding. `add`: the ones added. `rm`: the ones removed.
    #[serde(default)]
    pub bindings: Vec<BindingInfo>,
    /// `stats`: live flows in the table.
    #[serde(default)]
    pub flows: u64,
    /// `stats`: each outcome counter that is not zero, by name.
    #[serde(default)]
    pub reasons: Vec<(String, u64)>,
}

impl Response {
    pub fn failed(error: impl std::fmt::Display, bad_input: bool) -> Self {
        Self {
            error: Some(error.to_string()),
            bad_input,
            ..Self::default()
        }
    }
}

/// Whether a request succeeded: [`Response`] without what it lists.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Outcome {
    /// As [`Response::error`].
    #[serde(default)]
    pub error: Option<String>,
}

/// How long a command waits for the instance.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request` to the instance at `paths` and returns its answer.
///
/// # Errors
///
/// When no instance listens there, or it does not answer in time.
pub fn call(paths: &InstancePaths, request: &Request) -> anyhow::Result<Response> {
    call_as(paths, request)
}

/// [`call`], with the answer read as `T`: a caller that only needs [`Outcome`] skips building
/// the answer's bindings (two megabytes of JSON for ten thousand of them).
///
/// # Errors
///
/// As [`call`].
pub fn call_as<T: DeserializeOwned>(paths: &InstancePaths, request: &Request) -> anyhow::Result<T> {
    let mut stream = match UnixStream::connect(&paths.socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no running portmap found: nothing listens on {} (is `portmap run` serving with pins at {}?)",
                paths.socket.display(),
                paths.pin_dir.display()
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", paths.socket.display()));
        }
    };
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::with_capacity(64 << 10, &stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer from {}", paths.socket.display()))?;
    serde_json::from_str(&answer).with_context(|| {
        format!(
            "malformed answer from {}: {answer:?}",
            paths.socket.display()
        )
    })
}
