//! The network configuration a runtime hands the plugin on stdin: its own options, the
//! reference `portmap` plugin's options (accepted, refused or ignored, each for a reason the
//! README gives), the `portMappings` capability, and the previous plugin's result.
//!
//! Fields are read from a JSON value one by one, rather than through a derived struct, so that
//! every error names the key and what is wrong with its value.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use crate::error::{CniError, code};

/// The CNI versions this plugin speaks. 0.4.0 is the first with CHECK; 1.0.0 is the current
/// specification.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];
/// The version errors are reported in when the configuration gives none we can use.
pub const NEWEST_VERSION: &str = "1.0.0";
/// Where instances, the lock, logs and per-network state live unless `stateDir` says otherwise:
/// /run, because everything recorded there (bindings of running containers, the instance that
/// serves them) is gone after a reboot too.
pub const DEFAULT_STATE_DIR: &str = "/run/portmap/cni";
/// Where instances pin their maps unless `pinDir` says otherwise: one per uplink.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/portmap";

/// `"cgroup"`: a cgroup v2 directory, or `"none"` to leave the node's own connections alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroup {
    Dir(PathBuf),
    None,
}

/// The uplink's translation hook for an instance this plugin starts (`portmap run --hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP, in `driver` (native) or `skb` (generic) mode.
    Xdp { skb: bool },
    /// TC ingress: cheaper on virtual uplinks (veth).
    Tc,
}

/// One entry of `runtimeConfig.portMappings` (CNI CONVENTIONS, "Port mappings").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`, lower case.
    pub protocol: String,
    /// `None`: every address of the host.
    pub host_ip: Option<IpAddr>,
}

/// The parsed configuration. Only what a command needs is checked strictly: DEL is lenient
/// (see [`parse`]).
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The uplink named in `uplinks`; `None`: the interface of the default route.
    pub uplink: Option<String>,
    pub hold_ports: bool,
    pub portmap_binary: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Where the instance translates the node's own connections to host ports (`portmap run
    /// --cgroup`); `None`: portmap's default, the cgroup v2 root.
    pub cgroup: Option<Cgroup>,
    pub hook: Hook,
    pub mappings: Vec<PortMapping>,
    /// The previous plugin's result, passed through on ADD.
    pub prev_result: Option<Map<String, Value>>,
}

/// What the configuration is read for: DEL must clean up after any ADD, even one whose
/// configuration was refused, so it does not refuse options or mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    Strict,
    Lenient,
}

/// The version to report an error in: the configuration's, when it is one we speak.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| NEWEST_VERSION.to_owned())
}

/// Reads the configuration.
///
/// # Errors
///
/// Not JSON (6), an unsupported version (1), a malformed field (7), a reference option whose
/// value portmap cannot honour (2, strict only).
pub fn parse(stdin: &[u8], strictness: Strictness) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the network configuration on stdin is not JSON: {e}"),
            "the runtime passes the network's configuration as one JSON object",
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(invalid("the network configuration is not a JSON object"));
    };
    let cni_version = opt_str(&obj, "cniVersion")?
        .ok_or_else(|| invalid("the network configuration has no \"cniVersion\""))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {cni_version:?} is not supported"),
            format!("portmap-ebpf supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let name = opt_str(&obj, "name")?
        .ok_or_else(|| invalid("the network configuration has no \"name\""))?;
    check_network_name(&name)?;

    let uplinks = opt_str_list(&obj, "uplinks")?;
    let uplink = match uplinks.as_deref() {
        None | Some([]) => None,
        Some([one]) => {
            check_interface_name("uplinks", one)?;
            Some(one.clone())
        }
        Some(several) => {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "\"uplinks\": {several:?} names {} interfaces; portmap-ebpf serves one uplink per network",
                    several.len()
                ),
                "list the interface clients' packets arrive on, or leave uplinks out for the default route's",
            ));
        }
    };
    let xdp_mode = opt_str(&obj, "xdpMode")?;
    let hook = match opt_str(&obj, "hook")?.as_deref().unwrap_or("xdp") {
        "xdp" => match xdp_mode.as_deref().unwrap_or("driver") {
            "driver" => Hook::Xdp { skb: false },
            "skb" => Hook::Xdp { skb: true },
            mode => {
                return Err(invalid(format!(
                    "\"xdpMode\": {mode:?} is not \"driver\" or \"skb\""
                )));
            }
        },
        "tc" => match xdp_mode {
            None => Hook::Tc,
            Some(mode) => {
                return Err(invalid(format!(
                    "\"xdpMode\": {mode:?} applies to \"hook\": \"xdp\" only"
                )));
            }
        },
        hook => {
            return Err(invalid(format!(
                "\"hook\": {hook:?} is not \"xdp\" or \"tc\""
            )));
        }
    };
    let conf = NetConf {
        hold_ports: opt_bool(&obj, "holdPorts")?.unwrap_or(false),
        portmap_binary: opt_path(&obj, "portmapBinary")?,
        pin_dir: opt_path(&obj, "pinDir")?,
        state_dir: opt_path(&obj, "stateDir")?.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        cgroup: match opt_str(&obj, "cgroup")?.as_deref() {
            None => None,
            Some("none") => Some(Cgroup::None),
            Some(_) => opt_path(&obj, "cgroup")?.map(Cgroup::Dir),
        },
        hook,
        mappings: match strictness {
            Strictness::Strict => port_mappings(&obj)?,
            // DEL withdraws by container, whatever the mappings were.
            Strictness::Lenient => port_mappings(&obj).unwrap_or_default(),
        },
        prev_result: match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(prev)) => Some(prev.clone()),
            Some(other) => {
                return Err(invalid(format!(
                    "\"prevResult\" is not a JSON object: {other}"
                )));
            }
        },
        cni_version,
        name,
        uplink,
    };
    if strictness == Strictness::Strict {
        reference_options(&obj)?;
    }
    Ok(conf)
}

/// The reference `portmap` plugin's options, so that a configuration written for it can switch
/// `type` and keep them. Each is honoured, refused or ignored as the README's table says.
fn reference_options(obj: &Map<String, Value>) -> Result<(), CniError> {
    // `snat` masquerades hairpin (a container to its own host port) and localhost-originated
    // traffic. portmap translates only what arrives on the uplink, so there is nothing of that
    // kind for it to masquerade: either value is accepted.
    let _snat = opt_bool(obj, "snat")?;
    // `masqAll` masquerades every forwarded connection, hiding the client from the container.
    // portmap always keeps the client's address, so `true` cannot be honoured.
    if opt_bool(obj, "masqAll")? == Some(true) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "\"masqAll\": true is not supported: portmap always keeps the client's address",
            "remove masqAll (or set it to false); keep the reference portmap plugin for networks that need it",
        ));
    }
    // `markMasqBit` and `externalSetMarkChain` configure how `snat`'s mark-and-masquerade is
    // done. They are checked as the reference plugin checks them, so a configuration valid for
    // one is valid for the other, and otherwise have nothing to act on.
    let mark_bit = opt_int(obj, "markMasqBit")?;
    let external = opt_str(obj, "externalSetMarkChain")?;
    if mark_bit.is_some() && external.is_some() {
        return Err(invalid(
            "\"markMasqBit\" and \"externalSetMarkChain\" exclude each other",
        ));
    }
    if let Some(bit) = mark_bit
        && !(0..=31).contains(&bit)
    {
        return Err(invalid(format!(
            "\"markMasqBit\": {bit} is not a bit number (0-31)"
        )));
    }
    // `conditionsV4`/`V6` are iptables matches added to the container's rules; the eBPF
    // dataplane has no iptables rules to add them to, and cannot evaluate arbitrary matches.
    for key in ["conditionsV4", "conditionsV6"] {
        if let Some(conditions) = opt_str_list(obj, key)?
            && !conditions.is_empty()
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "{key:?}: {conditions:?} is not supported: portmap-ebpf publishes through eBPF maps, not iptables rules"
                ),
                "remove the conditions, or keep the reference portmap plugin for this network",
            ));
        }
    }
    Ok(())
}

fn port_mappings(obj: &Map<String, Value>) -> Result<Vec<PortMapping>, CniError> {
    let Some(runtime) = obj.get("runtimeConfig") else {
        return Ok(Vec::new());
    };
    let Value::Object(runtime) = runtime else {
        return Err(invalid(format!(
            "\"runtimeConfig\" is not a JSON object: {runtime}"
        )));
    };
    let entries = match runtime.get("portMappings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(other) => {
            return Err(invalid(format!(
                "\"runtimeConfig.portMappings\" is not an array: {other}"
            )));
        }
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| port_mapping(i, entry))
        .collect()
}

fn port_mapping(i: usize, entry: &Value) -> Result<PortMapping, CniError> {
    let at = format!("runtimeConfig.portMappings[{i}]");
    let Value::Object(entry) = entry else {
        return Err(invalid(format!("{at}: {entry} is not a JSON object")));
    };
    let port = |key: &str| -> Result<u16, CniError> {
        let value = entry
            .get(key)
            .ok_or_else(|| invalid(format!("{at}: no \"{key}\"")))?;
        value
            .as_i64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or_else(|| invalid(format!("{at}.{key}: {value} is not a port (1-65535)")))
    };
    let protocol = match entry.get("protocol") {
        None | Some(Value::Null) => "tcp".to_owned(),
        Some(Value::String(p)) if p.is_empty() => "tcp".to_owned(),
        Some(Value::String(p)) => p.to_ascii_lowercase(),
        Some(other) => return Err(invalid(format!("{at}.protocol: {other} is not a string"))),
    };
    match protocol.as_str() {
        "tcp" | "udp" => {}
        "sctp" => {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "{at}.protocol: \"sctp\" is not supported: portmap's dataplane serves tcp and udp"
                ),
                "publish sctp ports through the reference portmap plugin",
            ));
        }
        other => {
            return Err(invalid(format!(
                "{at}.protocol: {other:?} is not tcp, udp or sctp"
            )));
        }
    }
    let host_ip = match entry.get("hostIP") {
        None | Some(Value::Null) => None,
        Some(Value::String(ip)) if ip.is_empty() => None,
        Some(Value::String(ip)) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{at}.hostIP: {ip:?} is not an IP address")))?,
        ),
        Some(other) => return Err(invalid(format!("{at}.hostIP: {other} is not a string"))),
    };
    Ok(PortMapping {
        host_port: port("hostPort")?,
        container_port: port("containerPort")?,
        protocol,
        host_ip,
    })
}

impl PortMapping {
    /// The `Request::Add` spec for this mapping to `container`:
    /// `[HOST_IP:]HOST_PORT:CONTAINER_PORT/PROTO=CONTAINER_IP`. `None` for an IPv6 host
    /// address, which an IPv4 container cannot be reached through (the reference plugin skips
    /// such entries too).
    pub fn spec(&self, container: Ipv4Addr) -> Option<String> {
        let Self {
            host_port,
            container_port,
            protocol,
            host_ip,
        } = self;
        match host_ip {
            None => Some(format!(
                "{host_port}:{container_port}/{protocol}={container}"
            )),
            Some(IpAddr::V4(ip)) => Some(format!(
                "{ip}:{host_port}:{container_port}/{protocol}={container}"
            )),
            Some(IpAddr::V6(_)) => None,
        }
    }

    /// The host address as `portmap ls` reports it: `0.0.0.0` for every address.
    pub fn host_ip_text(&self) -> String {
        match self.host_ip {
            Some(IpAddr::V4(ip)) => ip.to_string(),
            _ => Ipv4Addr::UNSPECIFIED.to_string(),
        }
    }
}

/// The container's IPv4 address on `ifname`, from prevResult's `ips` and `interfaces`: an
/// address whose interface is `ifname` inside the sandbox, or one that names no interface.
pub fn container_ipv4(prev: &Map<String, Value>, ifname: &str) -> Option<Ipv4Addr> {
    let interfaces = prev.get("interfaces").and_then(Value::as_array);
    let ips = prev.get("ips").and_then(Value::as_array)?;
    ips.iter().find_map(|ip| {
        let address = ip.get("address")?.as_str()?;
        let addr: Ipv4Addr = address.split('/').next()?.parse().ok()?;
        match ip.get("interface").and_then(Value::as_u64) {
            None => Some(addr),
            Some(index) => {
                let iface = interfaces?.get(usize::try_from(index).ok()?)?;
                let in_sandbox = iface
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                (in_sandbox && iface.get("name").and_then(Value::as_str) == Some(ifname))
                    .then_some(addr)
            }
        }
    })
}

/// The host-side interfaces prevResult lists (no `sandbox`): the bridge and the container's
/// veth peer for `bridge`; the veth alone for `ptp`.
pub fn host_interfaces(prev: &Map<String, Value>) -> Vec<String> {
    prev.get("interfaces")
        .and_then(Value::as_array)
        .map(|interfaces| {
            interfaces
                .iter()
                .filter(|iface| {
                    iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                })
                .filter_map(|iface| iface.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The interface replies come back on: the host-side bridge when there is one (the `bridge`
/// plugin lists it beside the container's veth peer), else the only host-side interface
/// (`ptp`'s veth). `is_bridge` tells bridges apart (sysfs, in the caller).
pub fn reply_interface(host_side: &[String], is_bridge: impl Fn(&str) -> bool) -> Option<String> {
    host_side
        .iter()
        .find(|name| is_bridge(name))
        .or(match host_side {
            [only] => Some(only),
            _ => None,
        })
        .cloned()
}

/// The default route's interface in /proc/net/route's format: the lowest metric wins.
pub fn default_route_interface(route_table: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) = (
                *fields.first()?,
                *fields.get(1)?,
                u32::from_str_radix(fields.get(3)?, 16).ok()?,
                fields.get(6)?.parse::<u32>().ok()?,
                *fields.get(7)?,
            );
            (dest == "00000000" && mask == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, iface.to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The pin directory of the instance serving `uplink`, unless `pinDir` names one.
pub fn pin_dir_for(conf: &NetConf, uplink: &str) -> PathBuf {
    conf.pin_dir
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_PIN_ROOT).join(format!("cni-{uplink}")))
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        msg,
        "see the README, \"On a cluster\", for portmap-ebpf's configuration",
    )
}

/// Network names become file names under the state directory: the specification's character
/// set, which leaves no room for `/` or `..`.
fn check_network_name(name: &str) -> Result<(), CniError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "\"name\": {name:?} is not a network name (letters, digits, '_', '.', '-'; a letter or digit first)"
        )))
    }
}

fn check_interface_name(key: &str, name: &str) -> Result<(), CniError> {
    // IFNAMSIZ is 16 with the NUL; the kernel refuses '/' and whitespace in names.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(invalid(format!(
            "{key:?}: {name:?} is not an interface name"
        )));
    }
    Ok(())
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{key:?}: {other} is not a string"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(format!("{key:?}: {other} is not true or false"))),
    }
}

fn opt_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("{key:?}: {value} is not an integer"))),
    }
}

fn opt_str_list(obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("{key:?}: {item} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(invalid(format!(
            "{key:?}: {other} is not a list of strings"
        ))),
    }
}

fn opt_path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    let Some(path) = opt_str(obj, key)? else {
        return Ok(None);
    };
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "{key:?}: {path:?} is not an absolute path"
        )));
    }
    Ok(Some(path.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"net","type":"portmap-ebpf"{extra}}}"#);
        parse(text.as_bytes(), Strictness::Strict)
    }

    #[test]
    fn defaults_are_the_reference_plugins_and_the_default_route() {
        let conf = conf("").unwrap();
        assert_eq!(conf.uplink, None);
        assert!(!conf.hold_ports, "the reference plugin does not hold ports");
        assert_eq!(conf.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(conf.hook, Hook::Xdp { skb: false });
        assert_eq!(
            pin_dir_for(&conf, "eth0"),
            Path::new("/sys/fs/bpf/portmap/cni-eth0")
        );
        assert!(conf.mappings.is_empty());
    }

    #[test]
    fn port_mappings_are_read_with_their_host_address() {
        let conf = conf(
            r#","runtimeConfig":{"portMappings":[
                {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
                {"hostPort":9000,"containerPort":90,"protocol":"tcp","hostIP":"::"}]}"#,
        )
        .unwrap();
        let ip = Ipv4Addr::new(10, 88, 0, 2);
        let specs: Vec<Option<String>> = conf.mappings.iter().map(|m| m.spec(ip)).collect();
        assert_eq!(
            specs,
            [
                Some("8080:80/tcp=10.88.0.2".to_owned()),
                Some("127.0.0.1:5353:53/udp=10.88.0.2".to_owned()),
                None,
            ]
        );
        assert_eq!(conf.mappings[0].host_ip_text(), "0.0.0.0");
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let cases = [
            (
                r#","uplinks":["a","b"]"#,
                code::UNSUPPORTED_FIELD,
                "uplinks",
            ),
            (r#","masqAll":true"#, code::UNSUPPORTED_FIELD, "masqAll"),
            (
                r#","conditionsV4":["-s","1.2.3.4"]"#,
                code::UNSUPPORTED_FIELD,
                "conditionsV4",
            ),
            (r#","markMasqBit":40"#, code::INVALID_CONFIG, "markMasqBit"),
            (r#","holdPorts":"yes""#, code::INVALID_CONFIG, "holdPorts"),
            (r#","hook":"nic""#, code::INVALID_CONFIG, "hook"),
            (
                r#","hook":"tc","xdpMode":"skb""#,
                code::INVALID_CONFIG,
                "xdpMode",
            ),
            (r#","pinDir":"relative""#, code::INVALID_CONFIG, "pinDir"),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}"#,
                code::INVALID_CONFIG,
                "portMappings[0].hostPort: 0",
            ),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":80,"protocol":"sctp"}]}"#,
                code::UNSUPPORTED_FIELD,
                "sctp",
            ),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":70000}]}"#,
                code::INVALID_CONFIG,
                "containerPort: 70000",
            ),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":1,"hostIP":"host"}]}"#,
                code::INVALID_CONFIG,
                "hostIP: \"host\"",
            ),
        ];
        for (extra, code, names) in cases {
            let error = conf(extra).unwrap_err();
            assert_eq!(error.code, code, "{extra}: {error}");
            assert!(error.msg.contains(names), "{extra}: {error}");
        }
        let both = conf(r#","markMasqBit":1,"externalSetMarkChain":"KUBE-MARK-MASQ""#).unwrap_err();
        assert_eq!(both.code, code::INVALID_CONFIG);
    }

    #[test]
    fn versions_names_and_json_are_checked_first() {
        let parse = |text: &str| parse(text.as_bytes(), Strictness::Strict).unwrap_err().code;
        assert_eq!(parse("{"), code::DECODE);
        assert_eq!(
            parse(r#"{"cniVersion":"0.3.1","name":"n"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(parse(r#"{"cniVersion":"1.0.0"}"#), code::INVALID_CONFIG);
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"../etc"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(version_of(b"{"), NEWEST_VERSION);
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
    }

    #[test]
    fn del_reads_past_what_add_refuses() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","masqAll":true,
            "runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}"#;
        assert!(parse(text.as_bytes(), Strictness::Strict).is_err());
        let conf = parse(text.as_bytes(), Strictness::Lenient).unwrap();
        assert!(conf.mappings.is_empty());
    }

    fn prev(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_bridge_plugins_result_gives_the_container_and_the_bridge() {
        // As `bridge` + `host-local` 1.1.1 print it (1.0.0).
        let result = prev(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"3a:87:86:8c:84:cd"},
            {"name":"vethd10b4d89","mac":"be:e3:b1:f7:dc:05"},
            {"name":"eth0","mac":"8a:18:29:24:36:72","sandbox":"/var/run/netns/c1"}],
            "ips":[{"interface":2,"address":"10.88.0.2/16","gateway":"10.88.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        );
        assert_eq!(
            container_ipv4(&result, "eth0"),
            Some(Ipv4Addr::new(10, 88, 0, 2))
        );
        assert_eq!(container_ipv4(&result, "net1"), None);
        let host = host_interfaces(&result);
        assert_eq!(host, ["cni0", "vethd10b4d89"]);
        assert_eq!(
            reply_interface(&host, |name| name == "cni0").as_deref(),
            Some("cni0")
        );
        // ptp: the host-side veth alone.
        assert_eq!(
            reply_interface(&["veth1".to_owned()], |_| false).as_deref(),
            Some("veth1")
        );
        assert_eq!(reply_interface(&host, |_| false), None);
    }

    #[test]
    fn a_0_4_0_result_and_an_ipv6_first_result_give_the_ipv4_address() {
        let result = prev(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"version":"6","interface":0,"address":"fd00::2/64"},
                   {"version":"4","interface":0,"address":"10.1.0.5/24"}]}"#,
        );
        assert_eq!(
            container_ipv4(&result, "eth0"),
            Some(Ipv4Addr::new(10, 1, 0, 5))
        );
    }

    #[test]
    fn the_default_route_is_read_from_proc_net_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            ens5\t00000000\t0100A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            ens4\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            ens4\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("ens4"));
        assert_eq!(default_route_interface(table.lines().next().unwrap()), None);
    }
}
