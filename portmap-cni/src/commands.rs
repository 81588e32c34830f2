//! ADD, CHECK and DEL: from the configuration and the previous result to requests to the
//! node's instance.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use portmap_user::{
    control::{BindingInfo, InstancePaths, Request, Response},
    netdev::Interface,
    spec::Publish,
};
use serde_json::{Map, Value};

use crate::{
    config::{self, NetConf},
    error::{CniError, code},
    node::{self, Launch},
    state::{self, ContainerState},
};

/// The `CNI_*` variables a command runs with.
#[derive(Clone, Debug)]
pub struct Env {
    pub container_id: String,
    pub ifname: String,
}

/// One binding as `portmap ls` reports it, reduced to what a mapping decides.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    proto: String,
    host_ip: String,
    host_port: u16,
    container_ip: String,
    container_port: u16,
}

impl From<&BindingInfo> for Expected {
    fn from(b: &BindingInfo) -> Self {
        Self {
            proto: b.proto.clone(),
            host_ip: b.host_ip.clone(),
            host_port: b.host_port,
            container_ip: b.container_ip.clone(),
            container_port: b.container_port,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{} => {}:{}",
            self.host_ip, self.host_port, self.proto, self.container_ip, self.container_port
        )
    }
}

/// What one container wants published, and by which instance.
struct Wanted {
    bridge: String,
    uplink: String,
    pin_dir: PathBuf,
    specs: Vec<String>,
    expected: BTreeSet<Expected>,
}

/// ADD: publishes the container's mappings and passes the previous result through.
///
/// # Errors
///
/// A configuration without prevResult or container address (7), a refusal (100), a failure to
/// reach or start the instance (5), a lock held too long (11).
pub fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(no_prev_result)?;
    let output = pass_through(prev, &conf.cni_version);
    let Some(wanted) = wanted(env, conf, prev)? else {
        return Ok(output);
    };
    let _lock = node::lock(&conf.state_dir)?;
    let paths = InstancePaths::new(&wanted.pin_dir);
    node::ensure(&paths, &launch(conf, &wanted)?)?;
    let owner = node::owner(&env.container_id);
    let file = state::path(&conf.state_dir, &conf.name);
    let mut recorded = state::load(&file).map_err(|e| state_error(&file, &e))?;

    let listed = node::call(&paths, &Request::Ls)?;
    let mine = owned(&listed, &owner);
    if mine != wanted.expected {
        // A repeated ADD with other mappings replaces the container's bindings.
        if !mine.is_empty() {
            node::call(&paths, &withdraw(&owner))?;
        }
        let published = node::call(
            &paths,
            &Request::Add {
                specs: wanted.specs.clone(),
                containers: Vec::new(),
                replace: false,
                bridge: Some(wanted.bridge.clone()),
                owner: Some(owner.clone()),
                hold_ports: conf.hold_ports,
            },
        );
        if let Err(mut error) = published {
            if !mine.is_empty()
                && let Some(old) = recorded.containers.get(&env.container_id)
            {
                restore(&paths, &owner, old);
            }
            if error.code == code::REFUSED {
                error.details = holders(&listed, &owner, &wanted.expected, &error.details);
            }
            return Err(error);
        }
    }
    recorded.containers.insert(
        env.container_id.clone(),
        ContainerState {
            ifname: env.ifname.clone(),
            pin_dir: wanted.pin_dir.clone(),
            uplink: wanted.uplink.clone(),
            bridge: wanted.bridge.clone(),
            specs: wanted.specs.clone(),
            hold_ports: conf.hold_ports,
        },
    );
    if let Err(e) = state::save(&file, &recorded) {
        // Unrecorded bindings would not come back after a restart: undo rather than half-apply.
        let _ = node::call(&paths, &withdraw(&owner));
        return Err(state_error(&file, &e));
    }
    Ok(output)
}

/// CHECK: the container's bindings are exactly in place (a dead instance is restarted and
/// refilled first, as on ADD).
///
/// # Errors
///
/// No prevResult (7), bindings missing or different (101), as [`add`] otherwise.
pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(no_prev_result)?;
    let Some(wanted) = wanted(env, conf, prev)? else {
        return Ok(());
    };
    let _lock = node::lock(&conf.state_dir)?;
    let paths = InstancePaths::new(&wanted.pin_dir);
    node::ensure(&paths, &launch(conf, &wanted)?)?;
    let mine = owned(
        &node::call(&paths, &Request::Ls)?,
        &node::owner(&env.container_id),
    );
    if mine == wanted.expected {
        return Ok(());
    }
    let list = |set: Vec<&Expected>| {
        set.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<&Expected> = wanted.expected.difference(&mine).collect();
    let extra: Vec<&Expected> = mine.difference(&wanted.expected).collect();
    Err(CniError::new(
        code::NOT_IN_PLACE,
        format!(
            "container {}'s bindings are not in place: missing [{}], unexpected [{}]",
            env.container_id,
            list(missing),
            list(extra)
        ),
        format!(
            "`portmap ls --pin-dir {}` shows what is published",
            wanted.pin_dir.display()
        ),
    ))
}

/// DEL: withdraws every binding the container published, if anything still serves them, and
/// forgets it. Idempotent: no instance, no bindings, no state, no prevResult are all success.
///
/// # Errors
///
/// The instance refused or could not be reached while it runs (5), the state could not be
/// written (5), the lock was held too long (11).
pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let _lock = node::lock(&conf.state_dir)?;
    let file = state::path(&conf.state_dir, &conf.name);
    let mut recorded = state::load(&file).map_err(|e| state_error(&file, &e))?;
    let entry = recorded.containers.remove(&env.container_id);
    // The instance that served it: the recorded one, and the one this configuration names
    // (for an ADD that published but could not record).
    let mut pin_dirs: Vec<PathBuf> = entry.iter().map(|c| c.pin_dir.clone()).collect();
    match (conf.uplink.clone().or_else(default_uplink), &conf.pin_dir) {
        (Some(uplink), _) => pin_dirs.push(config::pin_dir_for(conf, &uplink)),
        (None, Some(pin_dir)) => pin_dirs.push(pin_dir.clone()),
        (None, None) => {}
    }
    pin_dirs.dedup();
    let owner = node::owner(&env.container_id);
    for pin_dir in pin_dirs {
        let paths = InstancePaths::new(&pin_dir);
        if node::alive(&paths)? {
            node::call(&paths, &withdraw(&owner))?;
        }
    }
    if entry.is_some() {
        state::save(&file, &recorded).map_err(|e| state_error(&file, &e))?;
    }
    Ok(())
}

/// The container's address, bridge, uplink and specs; `None` when it publishes nothing.
fn wanted(
    env: &Env,
    conf: &NetConf,
    prev: &Map<String, Value>,
) -> Result<Option<Wanted>, CniError> {
    if conf.mappings.is_empty() {
        return Ok(None);
    }
    let ip = config::container_ipv4(prev, &env.ifname).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "prevResult gives interface {:?} no IPv4 address: portmap-ebpf publishes to IPv4 containers",
                env.ifname
            ),
            "run portmap-ebpf after the plugin that assigns the address (bridge, ptp, ...)",
        )
    })?;
    let host_side = config::host_interfaces(prev);
    let bridge = config::reply_interface(&host_side, is_bridge).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "prevResult names no host-side bridge (host-side interfaces: {host_side:?})"
            ),
            "portmap-ebpf needs the interface the container's replies come back on: the bridge plugin's bridge, or ptp's veth",
        )
    })?;
    Interface::by_name(&bridge).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult's bridge {bridge:?}: {e:#}"),
            "the plugin runs in the host's network namespace, where the bridge lives",
        )
    })?;
    let uplink = match &conf.uplink {
        Some(uplink) => uplink.clone(),
        None => default_uplink().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "no \"uplinks\" given and this node has no default route to take the uplink from",
                "name the interface clients' packets arrive on: \"uplinks\": [\"eth0\"]",
            )
        })?,
    };
    Interface::by_name(&uplink).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("uplink {uplink:?}: {e:#}"),
            "name the interface clients' packets arrive on in \"uplinks\"",
        )
    })?;
    let mut specs = Vec::new();
    let mut expected = BTreeSet::new();
    for mapping in &conf.mappings {
        // An IPv6 host address cannot reach an IPv4 container: skipped, as the reference
        // plugin skips entries of the other family.
        let Some(spec) = mapping.spec(ip) else {
            continue;
        };
        // The instance would refuse a bad spec too; refusing here starts nothing.
        Publish::from_str(&spec).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.portMappings: {e}"),
                "",
            )
        })?;
        specs.push(spec);
        expected.insert(Expected {
            proto: mapping.protocol.clone(),
            host_ip: mapping.host_ip_text(),
            host_port: mapping.host_port,
            container_ip: ip.to_string(),
            container_port: mapping.container_port,
        });
    }
    if specs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Wanted {
        pin_dir: config::pin_dir_for(conf, &uplink),
        bridge,
        uplink,
        specs,
        expected,
    }))
}

fn launch<'a>(conf: &'a NetConf, wanted: &'a Wanted) -> Result<Launch<'a>, CniError> {
    Ok(Launch {
        binary: match &conf.portmap_binary {
            Some(binary) => binary,
            None => beside_plugin()?,
        },
        uplink: &wanted.uplink,
        bridge: &wanted.bridge,
        hook: conf.hook,
        state_dir: &conf.state_dir,
        cgroup: conf.cgroup.as_ref(),
    })
}

/// `portmap` in the plugin's own directory.
fn beside_plugin() -> Result<&'static Path, CniError> {
    static BESIDE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BESIDE
        .get_or_init(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("portmap")))
        })
        .as_deref()
        .ok_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                "cannot tell where the plugin's binary lives, to find portmap beside it",
                "set portmapBinary",
            )
        })
}

/// The instance's refusal names the specs that clash; the runtime's user wants the container
/// too: who else holds the host ports this container asked for.
fn holders(listed: &Response, owner: &str, wanted: &BTreeSet<Expected>, details: &str) -> String {
    // Every address: it overlaps any other on the same port, as the instance judges it.
    const ANY: &str = "0.0.0.0";
    let mut held: Vec<String> = listed
        .bindings
        .iter()
        .filter(|b| b.owner.as_deref() != Some(owner))
        .filter(|b| {
            wanted.iter().any(|w| {
                w.proto == b.proto
                    && w.host_port == b.host_port
                    && (w.host_ip == b.host_ip || w.host_ip == ANY || b.host_ip == ANY)
            })
        })
        .map(|b| {
            format!(
                "{}:{}/{} is published by {}",
                b.host_ip,
                b.host_port,
                b.proto,
                b.owner.as_deref().unwrap_or("the command line")
            )
        })
        .collect();
    held.dedup();
    if held.is_empty() {
        details.to_owned()
    } else {
        format!("{}; {details}", held.join(", "))
    }
}

/// Who publishes what, as the instance lists it.
fn owned(listed: &Response, owner: &str) -> BTreeSet<Expected> {
    listed
        .bindings
        .iter()
        .filter(|b| b.owner.as_deref() == Some(owner))
        .map(Expected::from)
        .collect()
}

fn withdraw(owner: &str) -> Request {
    Request::Rm {
        selectors: Vec::new(),
        owner: Some(owner.to_owned()),
    }
}

/// After a failed replacement, puts the container's previous bindings back, as far as it goes.
fn restore(paths: &InstancePaths, owner: &str, old: &ContainerState) {
    let again = Request::Add {
        specs: old.specs.clone(),
        containers: Vec::new(),
        replace: false,
        bridge: Some(old.bridge.clone()),
        owner: Some(owner.to_owned()),
        hold_ports: old.hold_ports,
    };
    if let Err(error) = node::call(paths, &again) {
        eprintln!(
            "portmap-ebpf: could not publish {owner}'s previous bindings again: {}",
            error.msg
        );
    }
}

fn is_bridge(name: &str) -> bool {
    // The plugin runs in the host's network namespace, whose interfaces sysfs shows.
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

fn default_uplink() -> Option<String> {
    config::default_route_interface(&fs::read_to_string("/proc/net/route").ok()?)
}

/// The previous result as this plugin's own, in the configuration's version.
fn pass_through(prev: &Map<String, Value>, cni_version: &str) -> String {
    let mut result = prev.clone();
    result.insert("cniVersion".into(), Value::String(cni_version.to_owned()));
    Value::Object(result).to_string()
}

fn no_prev_result() -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        "the network configuration has no prevResult: portmap-ebpf must be chained after the plugin that connects the container",
        "list it in a conflist's \"plugins\" after bridge (or ptp, ...), as the reference portmap plugin is",
    )
}

fn state_error(path: &Path, error: &std::io::Error) -> CniError {
    CniError::new(
        code::IO_FAILURE,
        format!("state file {}: {error}", path.display()),
        "the state directory must be writable by the plugin",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_result_passes_through_in_the_configurations_version() {
        let prev: Map<String, Value> =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#)
                .unwrap();
        let out: Value = serde_json::from_str(&pass_through(&prev, "0.4.0")).unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");
    }

    #[test]
    fn bindings_are_compared_by_what_a_mapping_decides() {
        let binding = BindingInfo {
            id: 3,
            proto: "udp".into(),
            host_ip: "0.0.0.0".into(),
            host_port: 5353,
            container_ip: "10.88.0.2".into(),
            container_port: 53,
            source: "5353:53/udp=10.88.0.2".into(),
            bridge: "cni0".into(),
            owner: Some("cni:abc".into()),
            counters: None,
        };
        let other = BindingInfo {
            owner: Some("cni:def".into()),
            ..binding.clone()
        };
        let listed = Response {
            bindings: vec![binding, other],
            ..Response::default()
        };
        let mine = owned(&listed, "cni:abc");
        assert_eq!(mine.len(), 1);
        assert_eq!(
            mine.first().unwrap().to_string(),
            "0.0.0.0:5353/udp => 10.88.0.2:53"
        );
    }
}
