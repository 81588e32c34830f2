//! Port specs: what the user wrote, parsed without I/O into [`PortSpec`], [`Publish`] and
//! [`ContainerAddr`].
//!
//! The grammar is Docker's `-p`: `[[HOST_IP:][HOST_PORT]:]CONTAINER_PORT[/PROTO]`, split and
//! checked the way docker/go-connections `nat.ParsePortSpec` does, with the meaning the Docker
//! daemon then gives each part:
//!
//! - the parts are split on `:`; with more than three, everything before the last two is the
//!   host IP, so an unbracketed IPv6 address works (`::1:6000:6000`); a bracketed one too
//!   (`[::1]:6001:6001`). `::6000` is three parts (no IP, no host port), not the address `::`;
//! - a missing host port, or host port 0, asks for an ephemeral port;
//! - a missing host IP means every local address of both families, with one host port for both;
//!   `0.0.0.0` means IPv4 only and `::` IPv6 only (moby's bridge driver);
//! - ranges (`a-b`) of equal length map pairwise; a host range with a single container port is
//!   an allocation window: one binding, on some free port of the window;
//! - ports are decimal digits, 0 to 65535, leading zeros allowed.

use std::{fmt, net::IpAddr, str::FromStr};

/// IPPROTO_SCTP: portmap-common only names the protocols the kernel side serves.
pub const IPPROTO_SCTP: u8 = 132;

/// The transport protocol of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// Docker accepts it; the dataplane does not serve it (`run` refuses it).
    Sctp,
}

impl Proto {
    /// The IP protocol number, as the kernel side keys bindings.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => portmap_common::proto::TCP,
            Self::Udp => portmap_common::proto::UDP,
            Self::Sctp => IPPROTO_SCTP,
        }
    }

    /// Parses a protocol name, case-insensitively; empty means tcp, as in `1234/`.
    ///
    /// # Errors
    ///
    /// A reason naming the text when it is not tcp, udp or sctp.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "sctp" => Ok(Self::Sctp),
            _ => Err(format!("protocol {text:?} is not tcp, udp or sctp")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        })
    }
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    /// How many ports it holds (never none).
    pub const fn count(self) -> u32 {
        self.end as u32 - self.start as u32 + 1
    }

    pub const fn is_single(self) -> bool {
        self.start == self.end
    }

    pub fn contains(self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }

    /// Parses `PORT` or `START-END`; `what` names the part in errors ("host port").
    ///
    /// # Errors
    ///
    /// A reason naming the text: not a number, out of range, or a range that runs backwards.
    pub fn parse(text: &str, what: &str) -> Result<Self, String> {
        let Some((start, end)) = text.split_once('-') else {
            return parse_port(text, what).map(Self::single);
        };
        let range = |reason: String| format!("{what} range {text:?}: {reason}");
        if start.is_empty() {
            return Err(range("no start port".into()));
        }
        let first = parse_port(start, "start").map_err(range)?;
        // Docker compares the two halves as text first, so `80-80` is the single port 80.
        if start == end {
            return Ok(Self::single(first));
        }
        if end.is_empty() {
            return Err(range("no end port".into()));
        }
        let last = parse_port(end, "end").map_err(range)?;
        if last < first {
            return Err(format!("{what} range {text:?} ends before it starts"));
        }
        Ok(Self {
            start: first,
            end: last,
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A port number: decimal digits only (Docker's `strconv.ParseUint`: no sign, no spaces),
/// leading zeros allowed, 0 to 65535.
fn parse_port(text: &str, what: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err(format!("no {what}"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a number"));
    }
    let significant = text.trim_start_matches('0');
    if significant.is_empty() {
        return Ok(0);
    }
    significant
        .parse::<u16>()
        .map_err(|_| format!("{what} {text:?} is out of range (0-65535)"))
}

/// The host port one container port asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostPort {
    /// Any free port of the ephemeral range: no host port, or host port 0.
    Ephemeral,
    Fixed(u16),
    /// Any free port of this window (`80-90:8080`).
    Window(PortRange),
}

impl fmt::Display for HostPort {
    /// As `check` shows a port not chosen yet: `0` for ephemeral, the window as a range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ephemeral => f.write_str("0"),
            Self::Fixed(port) => write!(f, "{port}"),
            Self::Window(range) => write!(f, "{range}"),
        }
    }
}

/// One container port of a spec with the host side it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// `None`: every local address of both families.
    pub host_ip: Option<IpAddr>,
    pub host_port: HostPort,
    pub container_port: u16,
    pub proto: Proto,
}

/// One `docker run -p` entry: where on the host, to which container ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None` publishes on every local address of both families, as Docker's empty `HostIp`
    /// does; `0.0.0.0` is every IPv4 address only, `::` every IPv6 address only.
    pub host_ip: Option<IpAddr>,
    /// `None` asks for an ephemeral host port.
    pub host_ports: Option<PortRange>,
    pub container_ports: PortRange,
    pub proto: Proto,
}

impl PortSpec {
    /// Checks that the parts go together, as Docker does.
    ///
    /// # Errors
    ///
    /// Container port 0 (the daemon refuses `0/tcp`), host and container ranges of different
    /// lengths (go-connections' "invalid ranges specified"), or a window starting at 0 (the
    /// port allocator's "invalid port range").
    pub fn new(
        host_ip: Option<IpAddr>,
        host_ports: Option<PortRange>,
        container_ports: PortRange,
        proto: Proto,
    ) -> Result<Self, String> {
        if container_ports.start == 0 {
            return Err("container port 0 is not a port (Docker refuses \"0/tcp\")".into());
        }
        if let Some(host) = host_ports
            && host.count() != container_ports.count()
        {
            if !container_ports.is_single() {
                return Err(format!(
                    "host ports {host} and container ports {container_ports} differ in length: \
                     ranges on both sides map pairwise"
                ));
            }
            if host.start == 0 {
                return Err(format!(
                    "host port window {host} starts at 0 (host port 0 alone asks for an \
                     ephemeral port)"
                ));
            }
        }
        Ok(Self {
            host_ip: host_ip.map(|ip| ip.to_canonical()),
            host_ports,
            container_ports,
            proto,
        })
    }

    /// One mapping per container port: pairwise over equal ranges, a window for a single
    /// container port behind a host range, ephemeral without a host port or with port 0.
    pub fn mappings(&self) -> Vec<PortMapping> {
        let mapping = |host_port, container_port| PortMapping {
            host_ip: self.host_ip,
            host_port,
            container_port,
            proto: self.proto,
        };
        match self.host_ports {
            Some(host) if host.count() != self.container_ports.count() => {
                vec![mapping(HostPort::Window(host), self.container_ports.start)]
            }
            Some(host) => host
                .ports()
                .zip(self.container_ports.ports())
                .map(|(h, c)| {
                    let host_port = if h == 0 {
                        HostPort::Ephemeral
                    } else {
                        HostPort::Fixed(h)
                    };
                    mapping(host_port, c)
                })
                .collect(),
            None => self
                .container_ports
                .ports()
                .map(|c| mapping(HostPort::Ephemeral, c))
                .collect(),
        }
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_port_spec(text).map_err(|reason| SpecError {
            input: text.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for PortSpec {
    /// The canonical short syntax: `[IP:][HOST_PORT:]CONTAINER_PORT/PROTO`, IPv6 bracketed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_ports) {
            (None, None) => {}
            (None, Some(host)) => write!(f, "{host}:")?,
            (Some(ip), host) => {
                match ip {
                    IpAddr::V4(ip) => write!(f, "{ip}:")?,
                    IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
                }
                if let Some(host) = host {
                    write!(f, "{host}")?;
                }
                f.write_str(":")?;
            }
        }
        write!(f, "{}/{}", self.container_ports, self.proto)
    }
}

const LONG_FORM: &str = "Docker's long form (target=...,published=...) is not accepted here; \
                         write [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]";

/// `docker run --publish target=80,published=8080`: Docker's CSV form, which has no place for
/// a target here.
fn is_long_form(text: &str) -> bool {
    text.contains(',')
        || ["target=", "published=", "mode=", "protocol=", "host_ip="]
            .iter()
            .any(|key| text.starts_with(key))
}

/// Splits on `:` as go-connections' `splitParts` does: up to three parts name themselves,
/// beyond that everything before the last two is the host IP.
fn split_parts(text: &str) -> (&str, &str, &str) {
    let colons: Vec<usize> = text.match_indices(':').map(|(i, _)| i).collect();
    match colons[..] {
        [] => ("", "", text),
        [one] => ("", &text[..one], &text[one + 1..]),
        [.., before_last, last] => (
            &text[..before_last],
            &text[before_last + 1..last],
            &text[last + 1..],
        ),
    }
}

fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    if text.contains(['=', ',']) {
        return Err(LONG_FORM.into());
    }
    let (ip, host_port, container) = split_parts(text);
    // Only the first '/' splits, so `80/tcp/x` has the protocol "tcp/x" and is refused.
    let (container_port, proto) = container.split_once('/').unwrap_or((container, ""));
    if container_port.is_empty() {
        return Err(if text.is_empty() {
            "empty: no container port".into()
        } else {
            "no container port".into()
        });
    }
    let proto = Proto::parse(proto)?;
    let host_ip = parse_host_ip(ip)?;
    let container_ports = PortRange::parse(container_port, "container port")?;
    let host_ports = match host_port {
        "" => None,
        port => Some(PortRange::parse(port, "host port")?),
    };
    PortSpec::new(host_ip, host_ports, container_ports, proto)
}

/// The host IP part: empty, an IP address, or one in brackets (`[::1]`; Docker strips the
/// brackets whatever is inside, so `[]` is empty and `[127.0.0.1]` is IPv4). No hostnames.
fn parse_host_ip(text: &str) -> Result<Option<IpAddr>, String> {
    let bare = match text.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .filter(|inner| !inner.contains(['[', ']']))
            .ok_or_else(|| format!("host IP {text:?} is not an IP address in brackets"))?,
        None => text,
    };
    if bare.is_empty() {
        return Ok(None);
    }
    bare.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|_| format!("host IP {text:?} is not an IP address (hostnames are not accepted)"))
}

/// Where a spec's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A container's address.
    Addr(IpAddr),
    /// A compose service, whose address `--container SERVICE=IP` gives.
    Service(String),
}

impl Target {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("no target after '=' (a container IP or a service name)".into());
        }
        if let Some(ip) = parse_ip(text) {
            return Ok(Self::Addr(ip));
        }
        // Digits and dots only: an address with a typo, not a service name.
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') || text.contains(':') {
            return Err(format!("container address {text:?} is not an IP address"));
        }
        if !is_service_name(text) {
            return Err(format!(
                "target {text:?} is neither an IP address nor a service name ([a-zA-Z0-9._-])"
            ));
        }
        Ok(Self::Service(text.to_owned()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::Service(name) => f.write_str(name),
        }
    }
}

/// A bare or bracketed IP address, IPv4-mapped IPv6 unmapped (as Docker does).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The characters the Compose schema allows in a service name.
pub fn is_service_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `SPEC[=TARGET]`, as given to `portmap check`: the target is optional there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecArg {
    /// The text as the user wrote it, for error messages.
    pub text: String,
    pub spec: PortSpec,
    pub target: Option<Target>,
}

impl FromStr for SpecArg {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SpecError {
            input: text.to_owned(),
            reason,
        };
        if is_long_form(text) {
            return Err(fail(LONG_FORM.into()));
        }
        // The last '=': a spec has none, so everything after it is the target.
        let (spec, target) = match text.rsplit_once('=') {
            Some((spec, target)) => (spec, Some(Target::parse(target.trim()).map_err(fail)?)),
            None => (text, None),
        };
        let spec = parse_port_spec(spec).map_err(fail)?;
        Ok(Self {
            text: text.to_owned(),
            spec,
            target,
        })
    }
}

/// `SPEC=TARGET`, as given to `run --publish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The text as the user wrote it, for error messages.
    pub text: String,
    pub spec: PortSpec,
    pub target: Target,
}

impl FromStr for Publish {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !text.contains('=') {
            return Err(SpecError {
                input: text.to_owned(),
                reason: "expected SPEC=TARGET, e.g. 8080:80=172.17.0.2 or 8080:80=web (TARGET: \
                         a container IP or a compose service)"
                    .into(),
            });
        }
        let SpecArg { text, spec, target } = text.parse()?;
        let target = target.expect("a text with '=' has a target");
        Ok(Self { text, spec, target })
    }
}

/// `SERVICE=IP`, as given to `--container`: the address of a compose service's one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerAddr {
    pub service: String,
    pub addr: IpAddr,
}

impl FromStr for ContainerAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (service, addr) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not SERVICE=IP, e.g. web=172.17.0.2"))?;
        if !is_service_name(service) {
            return Err(format!(
                "{service:?} is not a service name (letters, digits, '.', '_', '-')"
            ));
        }
        let addr = parse_ip(addr).ok_or_else(|| format!("{addr:?} is not an IP address"))?;
        Ok(Self {
            service: service.to_owned(),
            addr,
        })
    }
}

/// `[HOST_IP:]HOST_PORT[/PROTO]`, as given to `portmap rm`: the host side of published
/// bindings. Without an address it names the port on every address; `0.0.0.0` names only the
/// binding published on every address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSelector {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: Proto,
}

impl HostSelector {
    /// Whether `binding` is one this selector names.
    pub fn matches(&self, binding: &crate::plan::Binding) -> bool {
        let address = match self.host_ip {
            None => true,
            Some(ip) if ip.is_unspecified() => {
                binding.host_ip.is_none() && binding.is_ipv6() == ip.is_ipv6()
            }
            Some(ip) => binding.host_ip == Some(ip),
        };
        address && binding.host_port == self.host_port && binding.proto == self.proto
    }
}

impl FromStr for HostSelector {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SpecError {
            input: text.to_owned(),
            reason,
        };
        let (host, proto) = match text.rsplit_once('/') {
            Some((host, proto)) => (host, Proto::parse(proto).map_err(fail)?),
            None => (text, Proto::Tcp),
        };
        let (ip, port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let bare = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let ip = parse_ip(bare)
                    .ok_or_else(|| fail(format!("host IP {ip:?} is not an IP address")))?;
                (Some(ip), port)
            }
            None => (None, host),
        };
        let host_port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                fail(format!(
                    "host port {port:?} is not a number from 1 to 65535"
                ))
            })?;
        Ok(Self {
            host_ip: ip,
            host_port,
            proto,
        })
    }
}

/// Brackets an IPv6 address, as `docker port` prints one: `[::]:8080`.
pub fn host_and_port(ip: IpAddr, port: impl fmt::Display) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// Why a spec does not parse; the message names the input and the offending part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub input: String,
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid port spec {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for SpecError {}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn host_selector_forms() {
        let sel = |t: &str| HostSelector::from_str(t).unwrap();
        assert_eq!(
            sel("8080"),
            HostSelector {
                host_ip: None,
                host_port: 8080,
                proto: Proto::Tcp
            }
        );
        assert_eq!(sel("8080/UDP").proto, Proto::Udp);
        assert_eq!(
            sel("127.0.0.1:5000").host_ip,
            Some(Ipv4Addr::LOCALHOST.into())
        );
        assert_eq!(sel("[::1]:5000/tcp").host_ip, Some("::1".parse().unwrap()));
        let err = |t: &str| HostSelector::from_str(t).unwrap_err().to_string();
        assert_eq!(
            err("http"),
            r#"invalid port spec "http": host port "http" is not a number from 1 to 65535"#
        );
        assert!(err("host:80").contains(r#"host IP "host""#));
        assert!(err("80/icmp").contains(r#"protocol "icmp""#));
    }

    /// A mapping as `HOST_IP:HOST_PORT->CONTAINER_PORT/PROTO`: no host IP shows as nothing
    /// before the ':', an ephemeral port as 0, a window as its range.
    fn show(m: &PortMapping) -> String {
        let ip = match m.host_ip {
            None => String::new(),
            Some(IpAddr::V4(ip)) => ip.to_string(),
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        };
        format!("{ip}:{}->{}/{}", m.host_port, m.container_port, m.proto)
    }

    fn mappings(text: &str) -> Vec<String> {
        let spec: PortSpec = text
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
        spec.mappings().iter().map(show).collect()
    }

    fn spec_error(text: &str) -> String {
        text.parse::<PortSpec>()
            .expect_err(&format!("{text:?} should not parse"))
            .to_string()
    }

    // Every form Docker accepts, with the bindings it means.
    #[test]
    fn spec_forms_expand_to_docker_bindings() {
        let table: &[(&str, &[&str])] = &[
            // CPORT alone: an ephemeral host port on every address.
            ("3000", &[":0->3000/tcp"]),
            ("80", &[":0->80/tcp"]),
            // HPORT:CPORT.
            ("8080:80", &[":8080->80/tcp"]),
            ("9999:8000", &[":9999->8000/tcp"]),
            // IP:HPORT:CPORT and IP::CPORT.
            ("127.0.0.1:5000:5000", &["127.0.0.1:5000->5000/tcp"]),
            ("127.0.0.1::5000", &["127.0.0.1:0->5000/tcp"]),
            ("192.168.1.100::80", &["192.168.1.100:0->80/tcp"]),
            ("0.0.0.0:8080:80", &["0.0.0.0:8080->80/tcp"]),
            // An empty IP part is no IP: `::6000` is three empty-ish parts, not the address ::.
            (":8080:6000/tcp", &[":8080->6000/tcp"]),
            ("::6000", &[":0->6000/tcp"]),
            (":80", &[":0->80/tcp"]),
            // Host port 0 is ephemeral, as the daemon treats it; `0-0` is the single port 0.
            ("0:80", &[":0->80/tcp"]),
            ("0-0:80", &[":0->80/tcp"]),
            // Protocols, case-insensitive; `1234/` is tcp.
            ("127.0.0.1:5000:5000/udp", &["127.0.0.1:5000->5000/udp"]),
            ("53:53/UDP", &[":53->53/udp"]),
            ("1234/", &[":0->1234/tcp"]),
            ("80:80/", &[":80->80/tcp"]),
            ("3456:3456/sctp", &[":3456->3456/sctp"]),
            ("192.168.1.100::6000/SCTP", &["192.168.1.100:0->6000/sctp"]),
            ("6060:6060/udp", &[":6060->6060/udp"]),
            ("80/Tcp", &[":0->80/tcp"]),
            // Leading zeros are decimal.
            ("0080:00080", &[":80->80/tcp"]),
            ("0123", &[":0->123/tcp"]),
            ("65535:65535", &[":65535->65535/tcp"]),
            // Ranges of equal length map pairwise.
            (
                "9090-9091:8080-8081",
                &[":9090->8080/tcp", ":9091->8081/tcp"],
            ),
            (
                "0.0.0.0:1234-1235:3333-3334/tcp",
                &["0.0.0.0:1234->3333/tcp", "0.0.0.0:1235->3334/tcp"],
            ),
            (
                "127.0.0.1:5000-5002:5000-5002",
                &[
                    "127.0.0.1:5000->5000/tcp",
                    "127.0.0.1:5001->5001/tcp",
                    "127.0.0.1:5002->5002/tcp",
                ],
            ),
            // A container range alone: each port ephemeral.
            (
                "3000-3002",
                &[":0->3000/tcp", ":0->3001/tcp", ":0->3002/tcp"],
            ),
            (
                "127.0.0.1::5000-5001/udp",
                &["127.0.0.1:0->5000/udp", "127.0.0.1:0->5001/udp"],
            ),
            // Host 0 in a pairwise range is ephemeral for that port only.
            ("0-1:80-81", &[":0->80/tcp", ":1->81/tcp"]),
            // A host range with one container port is one binding, allocated in the window.
            ("8000-9000:80", &[":8000-9000->80/tcp"]),
            ("80-90:8080", &[":80-90->8080/tcp"]),
            ("127.0.0.1:8083-9000:443", &["127.0.0.1:8083-9000->443/tcp"]),
            // `a-a` is a single port on either side.
            ("80-80:8080", &[":80->8080/tcp"]),
            ("8080:80-80", &[":8080->80/tcp"]),
            ("80-80:80-80", &[":80->80/tcp"]),
            // IPv6 host IPs, bracketed or not (everything before the last two parts).
            ("[::1]:6001:6001", &["[::1]:6001->6001/tcp"]),
            ("::1:6000:6000", &["[::1]:6000->6000/tcp"]),
            ("[::1]:80:80", &["[::1]:80->80/tcp"]),
            (
                "[2001:4860:0:2001::68]::333",
                &["[2001:4860:0:2001::68]:0->333/tcp"],
            ),
            (
                "2001:4860:0:2001::68::333",
                &["[2001:4860:0:2001::68]:0->333/tcp"],
            ),
            ("::::80", &["[::]:0->80/tcp"]),
            ("[::1]::6000/udp", &["[::1]:0->6000/udp"]),
            ("::1:8080:6000/udp", &["[::1]:8080->6000/udp"]),
            ("[::]:80:80", &["[::]:80->80/tcp"]),
            // Docker strips brackets whatever is inside: `[]` is no IP, `[1.2.3.4]` is IPv4.
            ("[]:80:80", &[":80->80/tcp"]),
            ("[127.0.0.1]:80:80", &["127.0.0.1:80->80/tcp"]),
            // An IPv4-mapped address is IPv4 (the daemon unmaps it).
            ("::ffff:10.0.0.1:80:80", &["10.0.0.1:80->80/tcp"]),
        ];
        for (text, expected) in table {
            assert_eq!(mappings(text), *expected, "{text:?}");
        }
    }

    // Every spec the seeds use (SCENARIOS.md "Port specs the seeds use"), with its meaning.
    #[test]
    fn seed_specs_parse_with_docker_meaning() {
        let table: &[(&str, &[&str])] = &[
            ("5000:5000", &[":5000->5000/tcp"]),
            ("80:5000", &[":80->5000/tcp"]),
            ("127.0.0.1:5000:5000", &["127.0.0.1:5000->5000/tcp"]),
            ("127.0.0.1::5000", &["127.0.0.1:0->5000/tcp"]),
            ("127.0.0.1:5000:5000/udp", &["127.0.0.1:5000->5000/udp"]),
            ("1913:80", &[":1913->80/tcp"]),
            ("4000:80", &[":4000->80/tcp"]),
            ("9999:8000", &[":9999->8000/tcp"]),
            ("8212:5000", &[":8212->5000/tcp"]),
            ("6379:6379", &[":6379->6379/tcp"]),
            ("8080:8080", &[":8080->8080/tcp"]),
            ("3000", &[":0->3000/tcp"]),
            (
                "9090-9091:8080-8081",
                &[":9090->8080/tcp", ":9091->8081/tcp"],
            ),
            ("8000-9000:80", &[":8000-9000->80/tcp"]),
            ("[::1]:6001:6001", &["[::1]:6001->6001/tcp"]),
            ("::1:6000:6000", &["[::1]:6000->6000/tcp"]),
        ];
        for (text, expected) in table {
            assert_eq!(mappings(text), *expected, "{text:?}");
        }
        // `puerto_host:puerto_contenedor/protocolo` is the seed's template, not a spec.
        assert_eq!(
            spec_error("puerto_host:puerto_contenedor/protocolo"),
            r#"invalid port spec "puerto_host:puerto_contenedor/protocolo": protocol "protocolo" is not tcp, udp or sctp"#
        );
        assert_eq!(
            spec_error("puerto_host:puerto_contenedor"),
            r#"invalid port spec "puerto_host:puerto_contenedor": container port "puerto_contenedor" is not a number"#
        );
    }

    // Everything Docker refuses, each with the exact message.
    #[test]
    fn spec_errors_name_input_and_part() {
        let table: &[(&str, &str)] = &[
            // No port (go-connections: "no port specified").
            ("", "empty: no container port"),
            ("0.0.0.0:1234-1235:", "no container port"),
            ("0.0.0.0:1234-1235:/tcp", "no container port"),
            ("/udp", "no container port"),
            ("80:", "no container port"),
            // A bad protocol (go-connections: "invalid proto").
            ("80:80/foo", r#"protocol "foo" is not tcp, udp or sctp"#),
            (
                "80/tcp/udp",
                r#"protocol "tcp/udp" is not tcp, udp or sctp"#,
            ),
            ("80/icmp", r#"protocol "icmp" is not tcp, udp or sctp"#),
            // A bad IP (go-connections: "invalid IP address"); hostnames are refused.
            (
                "localhost:1234:1234/tcp",
                r#"host IP "localhost" is not an IP address (hostnames are not accepted)"#,
            ),
            (
                "host:80:80",
                r#"host IP "host" is not an IP address (hostnames are not accepted)"#,
            ),
            (
                "256.0.0.1:80:80",
                r#"host IP "256.0.0.1" is not an IP address (hostnames are not accepted)"#,
            ),
            (
                "[::1:80:80",
                r#"host IP "[::1" is not an IP address in brackets"#,
            ),
            (
                "[::1]x:80:80",
                r#"host IP "[::1]x" is not an IP address in brackets"#,
            ),
            // `[::1]:80` is four parts: the IP is "[:" (Docker refuses it the same way).
            (
                "[::1]:80",
                r#"host IP "[:" is not an IP address in brackets"#,
            ),
            (
                "::1:6000",
                r#"host IP ":" is not an IP address (hostnames are not accepted)"#,
            ),
            (
                "fe80::1%eth0:80:80",
                r#"host IP "fe80::1%eth0" is not an IP address (hostnames are not accepted)"#,
            ),
            // Not numbers; no sign, no spaces.
            ("80:abc", r#"container port "abc" is not a number"#),
            ("8080:http", r#"container port "http" is not a number"#),
            ("abc:80", r#"host port "abc" is not a number"#),
            ("+80:80", r#"host port "+80" is not a number"#),
            ("80: 80", r#"container port " 80" is not a number"#),
            ("1.2.3.4:80", r#"host port "1.2.3.4" is not a number"#),
            (
                "192.168.1.100",
                r#"container port "192.168.1.100" is not a number"#,
            ),
            // Out of range.
            ("70000:80", r#"host port "70000" is out of range (0-65535)"#),
            (
                "80:65536",
                r#"container port "65536" is out of range (0-65535)"#,
            ),
            (
                "99999999999999999999",
                r#"container port "99999999999999999999" is out of range (0-65535)"#,
            ),
            // Negative ports read as ranges with no start.
            (
                "192.168.1.100:-1:-1",
                r#"container port range "-1": no start port"#,
            ),
            // Bad ranges (go-connections: "invalid port range", "invalid ranges specified").
            (
                "90-80",
                r#"container port range "90-80" ends before it starts"#,
            ),
            (
                "8081-8080:80",
                r#"host port range "8081-8080" ends before it starts"#,
            ),
            ("80-", r#"container port range "80-": no end port"#),
            (
                "1-2-3",
                r#"container port range "1-2-3": end "2-3" is not a number"#,
            ),
            (
                "80-x:80",
                r#"host port range "80-x": end "x" is not a number"#,
            ),
            (
                "1234-1242:80-70000",
                r#"container port range "80-70000": end "70000" is out of range (0-65535)"#,
            ),
            (
                "8080:80-81",
                "host ports 8080 and container ports 80-81 differ in length: ranges on both sides map pairwise",
            ),
            (
                "8080-8082:80-81",
                "host ports 8080-8082 and container ports 80-81 differ in length: ranges on both sides map pairwise",
            ),
            // Container port 0: go-connections parses it, the daemon refuses "0/tcp".
            (
                "0",
                r#"container port 0 is not a port (Docker refuses "0/tcp")"#,
            ),
            (
                "8080:0",
                r#"container port 0 is not a port (Docker refuses "0/tcp")"#,
            ),
            (
                "0-5",
                r#"container port 0 is not a port (Docker refuses "0/tcp")"#,
            ),
            // A window from 0: the daemon's allocator refuses "invalid port range: 0-100".
            (
                "0-100:80",
                "host port window 0-100 starts at 0 (host port 0 alone asks for an ephemeral port)",
            ),
            // Docker's CSV long form.
            (
                "target=80,published=8080",
                "Docker's long form (target=...,published=...) is not accepted here; write [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]",
            ),
        ];
        for (text, reason) in table {
            assert_eq!(
                spec_error(text),
                format!("invalid port spec {text:?}: {reason}"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn spec_display_is_canonical_short_syntax() {
        for (text, canonical) in [
            ("8080:80", "8080:80/tcp"),
            ("127.0.0.1::5000", "127.0.0.1::5000/tcp"),
            ("::1:6000:6000/UDP", "[::1]:6000:6000/udp"),
            ("3000-3005", "3000-3005/tcp"),
            ("8000-9000:80", "8000-9000:80/tcp"),
            ("[::]::80", "[::]::80/tcp"),
        ] {
            let spec: PortSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), canonical, "{text:?}");
            assert_eq!(
                canonical.parse::<PortSpec>().unwrap(),
                spec,
                "{canonical:?}"
            );
        }
    }

    #[test]
    fn publish_splits_on_the_last_equals_and_takes_ip_or_service() {
        let p: Publish = "8080:80=172.17.0.2".parse().unwrap();
        assert_eq!(p.target, Target::Addr(Ipv4Addr::new(172, 17, 0, 2).into()));
        assert_eq!(p.spec.to_string(), "8080:80/tcp");
        let p: Publish = "9999:8000=webapp-flet".parse().unwrap();
        assert_eq!(p.target, Target::Service("webapp-flet".into()));
        let p: Publish = "[::1]:80:80=[fd00::2]".parse().unwrap();
        assert_eq!(p.target, Target::Addr("fd00::2".parse().unwrap()));
        let p: Publish = "::1:80:80=fd00::2".parse().unwrap();
        assert_eq!(p.spec.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(p.target, Target::Addr("fd00::2".parse().unwrap()));
        let p: Publish = "53:53/udp= 172.17.0.5 ".parse().unwrap();
        assert_eq!(p.target, Target::Addr(Ipv4Addr::new(172, 17, 0, 5).into()));
    }

    #[test]
    fn publish_errors_name_the_input() {
        let error = |text: &str| text.parse::<Publish>().unwrap_err().to_string();
        assert_eq!(
            error("80:80"),
            r#"invalid port spec "80:80": expected SPEC=TARGET, e.g. 8080:80=172.17.0.2 or 8080:80=web (TARGET: a container IP or a compose service)"#
        );
        assert_eq!(
            error("80:80="),
            r#"invalid port spec "80:80=": no target after '=' (a container IP or a service name)"#
        );
        assert_eq!(
            error("80:80=172.17.0"),
            r#"invalid port spec "80:80=172.17.0": container address "172.17.0" is not an IP address"#
        );
        assert_eq!(
            error("80:80=we b"),
            r#"invalid port spec "80:80=we b": target "we b" is neither an IP address nor a service name ([a-zA-Z0-9._-])"#
        );
        assert_eq!(
            error("80:abc=172.17.0.2"),
            r#"invalid port spec "80:abc=172.17.0.2": container port "abc" is not a number"#
        );
        assert_eq!(
            error("target=80,published=8080"),
            r#"invalid port spec "target=80,published=8080": Docker's long form (target=...,published=...) is not accepted here; write [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]"#
        );
    }

    #[test]
    fn spec_arg_target_is_optional() {
        let arg: SpecArg = "9999:8000".parse().unwrap();
        assert_eq!(arg.target, None);
        let arg: SpecArg = "9999:8000=web".parse().unwrap();
        assert_eq!(arg.target, Some(Target::Service("web".into())));
    }

    #[test]
    fn container_addr_is_service_equals_ip() {
        let c: ContainerAddr = "webapp-flet=172.17.0.2".parse().unwrap();
        assert_eq!(c.service, "webapp-flet");
        assert_eq!(c.addr, IpAddr::from(Ipv4Addr::new(172, 17, 0, 2)));
        assert_eq!(
            "web".parse::<ContainerAddr>().unwrap_err(),
            r#""web" is not SERVICE=IP, e.g. web=172.17.0.2"#
        );
        assert_eq!(
            "web=db".parse::<ContainerAddr>().unwrap_err(),
            r#""db" is not an IP address"#
        );
        assert_eq!(
            "w b=1.2.3.4".parse::<ContainerAddr>().unwrap_err(),
            r#""w b" is not a service name (letters, digits, '.', '_', '-')"#
        );
    }
}
