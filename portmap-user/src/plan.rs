//! The binding plan: what should be published, resolved from specs and checked as a whole
//! before anything touches the kernel.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use crate::spec::{Proto, Publish, Target};

/// One published port, resolved: exactly what the kernel's binding map will hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `None`: every local address (a wildcard binding).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container: SocketAddrV4,
    /// The spec it came from, as the user wrote it.
    pub origin: String,
}

impl Binding {
    /// Whether two bindings want the same host port: same protocol and port, and the same
    /// address or either on every address (Docker refuses `0.0.0.0:80` beside `10.0.0.1:80`).
    pub fn overlaps(&self, other: &Self) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// The host side as `docker port` prints it: `0.0.0.0:8080`.
    pub fn host(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
        )
    }
}

impl fmt::Display for Binding {
    /// `docker port` style: `80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {} => {}",
            self.container.port(),
            self.proto,
            self.host(),
            self.container
        )
    }
}

/// Why a set of specs cannot be published; nothing is applied when there is one.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Two specs want the same host port.
    Conflict {
        first: String,
        second: String,
        port: u16,
        proto: Proto,
    },
    /// Something the dataplane cannot do yet.
    Unsupported { spec: String, reason: String },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict {
                first,
                second,
                port,
                proto,
            } => write!(
                f,
                "host port {port}/{proto} is published twice: by {first:?} and by {second:?}"
            ),
            Self::Unsupported { spec, reason } => write!(f, "cannot publish {spec:?}: {reason}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// Everything to publish, free of conflicts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub bindings: Vec<Binding>,
}

impl Plan {
    /// Resolves and checks `publishes` as a whole.
    ///
    /// # Errors
    ///
    /// The first conflict or unsupported spec, naming the specs involved.
    pub fn new(publishes: &[Publish]) -> Result<Self, PlanError> {
        let mut bindings: Vec<Binding> = Vec::with_capacity(publishes.len());
        for publish in publishes {
            let binding = resolve(publish)?;
            if let Some(earlier) = bindings.iter().find(|b| b.overlaps(&binding)) {
                return Err(PlanError::Conflict {
                    first: earlier.origin.clone(),
                    second: binding.origin,
                    port: binding.host_port,
                    proto: binding.proto,
                });
            }
            bindings.push(binding);
        }
        Ok(Self { bindings })
    }
}

fn resolve(publish: &Publish) -> Result<Binding, PlanError> {
    let unsupported = |reason: &str| PlanError::Unsupported {
        spec: publish.text.clone(),
        reason: reason.to_owned(),
    };
    let spec = &publish.spec;
    let host_ip = match spec.host_ip {
        None => None,
        Some(IpAddr::V4(ip)) if ip.is_unspecified() => None,
        Some(IpAddr::V4(ip)) => Some(ip),
        Some(IpAddr::V6(_)) => {
            return Err(unsupported("IPv6 host addresses are not supported yet"));
        }
    };
    let Target::Addr(IpAddr::V4(container_ip)) = publish.target else {
        return Err(unsupported(
            "IPv6 container addresses are not supported yet",
        ));
    };
    let (Some(host_ports), container_ports) = (spec.host_ports, spec.container_ports) else {
        return Err(unsupported("an ephemeral host port is not supported yet"));
    };
    if host_ports.start != host_ports.end || container_ports.start != container_ports.end {
        return Err(unsupported("port ranges are not supported yet"));
    }
    Ok(Binding {
        host_ip,
        host_port: host_ports.start,
        proto: spec.proto,
        container: SocketAddrV4::new(container_ip, container_ports.start),
        origin: publish.text.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(specs: &[&str]) -> Result<Plan, PlanError> {
        let publishes: Vec<Publish> = specs.iter().map(|s| s.parse().unwrap()).collect();
        Plan::new(&publishes)
    }

    #[test]
    fn same_container_port_behind_two_host_ports_is_fine() {
        let plan = plan(&["8080:80=172.17.0.2", "9090:80=172.17.0.2"]).unwrap();
        assert_eq!(plan.bindings.len(), 2);
        assert_eq!(
            plan.bindings[0].to_string(),
            "80/tcp -> 0.0.0.0:8080 => 172.17.0.2:80"
        );
    }

    #[test]
    fn tcp_and_udp_on_one_port_do_not_conflict() {
        assert!(plan(&["53:53=172.17.0.2", "53:53/udp=172.17.0.2"]).is_ok());
    }

    #[test]
    fn duplicate_host_port_names_both_specs() {
        let err = plan(&["8080:80=172.17.0.2", "8080:81=172.17.0.3"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"host port 8080/tcp is published twice: by "8080:80=172.17.0.2" and by "8080:81=172.17.0.3""#
        );
    }

    #[test]
    fn wildcard_conflicts_with_a_specific_address() {
        let err = plan(&["10.0.0.1:80:80=172.17.0.2", "0.0.0.0:80:80=172.17.0.3"]).unwrap_err();
        assert!(matches!(err, PlanError::Conflict { port: 80, .. }), "{err}");
    }

    #[test]
    fn two_specific_addresses_share_a_port() {
        assert!(plan(&["10.0.0.1:80:80=172.17.0.2", "10.0.0.2:80:80=172.17.0.3"]).is_ok());
    }

    #[test]
    fn ipv6_is_refused_by_name() {
        let err = plan(&["[::1]:80:80=172.17.0.2"]).unwrap_err();
        assert!(err.to_string().contains("IPv6 host addresses"), "{err}");
    }
}
