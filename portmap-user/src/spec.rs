//! Port specs: what the user wrote, parsed without I/O into [`PortSpec`] and [`Publish`].
//!
//! The grammar here is `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]=CONTAINER_IP`. The types
//! already carry what Docker's full `-p` grammar needs (ranges, an ephemeral host port, a host IP
//! of either family, a container named rather than addressed), so the grammar can grow into them
//! without changing the code that consumes a spec.

use std::{fmt, net::IpAddr, str::FromStr};

/// The transport protocol of a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as the kernel side keys bindings.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => portmap_common::proto::TCP,
            Self::Udp => portmap_common::proto::UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
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

/// One `docker run -p` entry: where on the host, to which container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None` publishes on every local address, as Docker's empty `HostIp` does.
    pub host_ip: Option<IpAddr>,
    /// `None` asks for an ephemeral host port.
    pub host_ports: Option<PortRange>,
    pub container_ports: PortRange,
    pub proto: Proto,
}

/// Where a spec's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(IpAddr),
}

/// `SPEC=TARGET`, as given to `--publish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The text as the user wrote it, for error messages.
    pub text: String,
    pub spec: PortSpec,
    pub target: Target,
}

/// Why a `--publish` value does not parse; the message names the offending part.
#[derive(Debug, PartialEq, Eq)]
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

impl FromStr for Publish {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SpecError {
            input: text.to_owned(),
            reason,
        };
        let (spec, target) = text
            .rsplit_once('=')
            .ok_or_else(|| fail("expected SPEC=CONTAINER_IP, e.g. 8080:80=172.17.0.2".into()))?;
        let target = target.trim();
        let target = match target.parse::<IpAddr>() {
            Ok(addr) => Target::Addr(addr),
            Err(_) if target.is_empty() => {
                return Err(fail("no container address after '='".into()));
            }
            Err(_) => {
                return Err(fail(format!(
                    "container address {target:?} is not an IP address"
                )));
            }
        };
        let spec = parse_port_spec(spec).map_err(fail)?;
        Ok(Self {
            text: text.to_owned(),
            spec,
            target,
        })
    }
}

/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`.
fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    let (ports, proto) = match text.rsplit_once('/') {
        Some((ports, proto)) => (ports, parse_proto(proto)?),
        None => (text, Proto::Tcp),
    };
    let (host_ip, host_port, container_port) = match ports.rsplitn(3, ':').collect::<Vec<_>>()[..] {
        [container, host] => (None, host, container),
        [container, host, ip] => (Some(parse_host_ip(ip)?), host, container),
        _ => {
            return Err(format!(
                "{ports:?} is not HOST_PORT:CONTAINER_PORT or HOST_IP:HOST_PORT:CONTAINER_PORT"
            ));
        }
    };
    Ok(PortSpec {
        host_ip,
        host_ports: Some(PortRange::single(parse_port(host_port, "host port")?)),
        container_ports: PortRange::single(parse_port(container_port, "container port")?),
        proto,
    })
}

fn parse_proto(text: &str) -> Result<Proto, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" | "" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!("protocol {other:?} is not tcp or udp")),
    }
}

fn parse_host_ip(text: &str) -> Result<IpAddr, String> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("host IP {text:?} is not an IP address"))
}

fn parse_port(text: &str, what: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err(format!("no {what}"));
    }
    let port: u16 = text
        .parse()
        .map_err(|_| format!("{what} {text:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{what} 0 is not a port"));
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn publish(text: &str) -> Publish {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn error(text: &str) -> String {
        text.parse::<Publish>()
            .expect_err(&format!("{text:?} should not parse"))
            .to_string()
    }

    #[test]
    fn host_port_container_port_target() {
        let p = publish("8080:80=172.17.0.2");
        assert_eq!(
            p.spec,
            PortSpec {
                host_ip: None,
                host_ports: Some(PortRange::single(8080)),
                container_ports: PortRange::single(80),
                proto: Proto::Tcp,
            }
        );
        assert_eq!(p.target, Target::Addr(Ipv4Addr::new(172, 17, 0, 2).into()));
    }

    #[test]
    fn host_ip_and_udp() {
        let p = publish("127.0.0.1:5000:5000/udp=172.17.0.3");
        assert_eq!(p.spec.host_ip, Some(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(p.spec.proto, Proto::Udp);
    }

    #[test]
    fn protocol_is_case_insensitive_and_empty_means_tcp() {
        assert_eq!(publish("53:53/UDP=10.0.0.1").spec.proto, Proto::Udp);
        assert_eq!(publish("80:80/=10.0.0.1").spec.proto, Proto::Tcp);
    }

    #[test]
    fn errors_name_the_input_and_the_part() {
        assert_eq!(
            error("80:abc=172.17.0.2"),
            r#"invalid port spec "80:abc=172.17.0.2": container port "abc" is not a number from 1 to 65535"#
        );
        assert!(error("80:80").contains("expected SPEC=CONTAINER_IP"));
        assert!(error("80:80=db").contains(r#"container address "db" is not an IP address"#));
        assert!(error("80:80/sctpx=1.2.3.4").contains(r#"protocol "sctpx""#));
        assert!(error("host:80:80=1.2.3.4").contains(r#"host IP "host""#));
        assert!(error("70000:80=1.2.3.4").contains(r#"host port "70000""#));
        assert!(error("80=1.2.3.4").contains("is not HOST_PORT:CONTAINER_PORT"));
        assert!(error("0:80=1.2.3.4").contains("host port 0 is not a port"));
        assert!(error(":80=1.2.3.4").contains("no host port"));
    }
}
