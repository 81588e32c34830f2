//! Compose files: the `ports` of every service, read as Compose reads them, each entry with its
//! file, line and path for messages.
//!
//! YAML is read by saphyr (YAML 1.2: an unquoted `22:22` is the string "22:22", not YAML 1.1's
//! sexagesimal 1342) into nodes that keep their line. Only what publishing needs is looked at
//! (`services.*.ports`, `scale`, `deploy.replicas`, `deploy.mode`, `network_mode`); every other
//! key is ignored, wherever it is, so files that put keys where the specification does not
//! allow them (the thesis's service-level `resources`) still load. Merge keys (`<<: *base`) are
//! followed, as compose-go's YAML parser does.
//!
//! A `ports` entry is, as in compose-go:
//! - a number or a string: the short syntax, parsed as `docker run -p` parses it;
//! - a mapping: the long syntax (`target`, `published`, `host_ip`, `protocol`, `mode`, `name`,
//!   `app_protocol`, and `x-*` extensions, which are ignored); any other key is refused, as the
//!   Compose schema does.

use std::{fmt, fs, io, net::IpAddr, path::Path};

use saphyr::{LoadableYamlNode as _, MarkedYaml, Scalar, YamlData};

use crate::{
    plan::{Request, Source},
    spec::{PortRange, PortSpec, Proto, Target},
};

/// One `ports` entry of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub line: usize,
    /// `services.web.ports[0]`.
    pub entry: String,
    /// The short syntax as written, or the long syntax in canonical short form.
    pub text: String,
    pub spec: PortSpec,
}

/// A service that publishes ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub ports: Vec<PortEntry>,
}

/// The ports a compose file publishes, service by service in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeFile {
    /// The file as the user named it.
    pub name: String,
    pub services: Vec<Service>,
}

impl ComposeFile {
    /// One request per `ports` entry, each targeting its service.
    pub fn requests(&self) -> Vec<Request> {
        self.services
            .iter()
            .flat_map(|service| {
                service.ports.iter().map(|port| Request {
                    spec: port.spec.clone(),
                    target: Some(Target::Service(service.name.clone())),
                    source: Source::Compose {
                        file: self.name.clone(),
                        line: port.line,
                        entry: port.entry.clone(),
                        spec: port.text.clone(),
                    },
                })
            })
            .collect()
    }
}

/// What is wrong with one place of a compose file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeError {
    pub file: String,
    pub line: usize,
    /// The path of the entry, e.g. `services.web.ports[1]`.
    pub entry: String,
    /// The short-syntax text of the entry, when it is one.
    pub spec: Option<String>,
    pub reason: String,
}

impl fmt::Display for ComposeError {
    /// `compose.yml:12: services.web.ports[1] "80:abc": container port "abc" is not a number`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.entry)?;
        if let Some(spec) = &self.spec {
            write!(f, " {spec:?}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ComposeError {}

/// Why a compose file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read (the system's fault).
    Read { file: String, error: io::Error },
    /// The file is not valid: every problem found.
    Invalid(Vec<ComposeError>),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { file, error } => write!(f, "reading compose file {file}: {error}"),
            Self::Invalid(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and parses the compose file at `path`.
///
/// # Errors
///
/// [`LoadError::Read`] when it cannot be read, [`LoadError::Invalid`] with every problem found.
pub fn load(path: &Path) -> Result<ComposeFile, LoadError> {
    let name = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|error| LoadError::Read {
        file: name.clone(),
        error,
    })?;
    parse(&name, &text).map_err(LoadError::Invalid)
}

/// Parses compose YAML; `name` is the file as messages name it.
///
/// # Errors
///
/// Every problem found: YAML syntax, a `ports` entry Docker would refuse, a service with
/// published ports that runs other than one container.
pub fn parse(name: &str, text: &str) -> Result<ComposeFile, Vec<ComposeError>> {
    let mut reader = Reader {
        file: name,
        errors: Vec::new(),
    };
    let documents = match MarkedYaml::load_from_str(text) {
        Ok(documents) => documents,
        Err(error) => {
            return Err(vec![ComposeError {
                file: name.to_owned(),
                line: error.marker().line(),
                entry: "YAML".into(),
                spec: None,
                reason: error.info().to_owned(),
            }]);
        }
    };
    let mut services = Vec::new();
    for document in &documents {
        services.extend(reader.document(document));
    }
    if reader.errors.is_empty() {
        Ok(ComposeFile {
            name: name.to_owned(),
            services,
        })
    } else {
        Err(reader.errors)
    }
}

type Node<'input> = MarkedYaml<'input>;

/// Walks the nodes, collecting every error instead of stopping at the first.
struct Reader<'a> {
    file: &'a str,
    errors: Vec<ComposeError>,
}

impl Reader<'_> {
    fn error(&mut self, node: &Node<'_>, entry: &str, spec: Option<&str>, reason: String) {
        self.errors.push(ComposeError {
            file: self.file.to_owned(),
            line: line_of(node),
            entry: entry.to_owned(),
            spec: spec.map(str::to_owned),
            reason,
        });
    }

    fn document(&mut self, root: &Node<'_>) -> Vec<Service> {
        let root = untagged(root);
        if is_null(root) {
            return Vec::new();
        }
        let Some(top) = entries(root) else {
            let reason = format!("the top level is {}, not a mapping", kind(root));
            self.error(root, "(top level)", None, reason);
            return Vec::new();
        };
        let Some((_, services)) = top.iter().find(|(key, _)| key == "services") else {
            return Vec::new();
        };
        if is_null(services) {
            return Vec::new();
        }
        let Some(services) = entries(services) else {
            let reason = format!("is {}, not a mapping of services", kind(services));
            self.error(services, "services", None, reason);
            return Vec::new();
        };
        services
            .iter()
            .filter_map(|(name, service)| self.service(name, service))
            .collect()
    }

    fn service(&mut self, name: &str, node: &Node<'_>) -> Option<Service> {
        let path = format!("services.{name}");
        if is_null(node) {
            return None;
        }
        let Some(keys) = entries(node) else {
            let reason = format!("a service is a mapping, not {}", kind(node));
            self.error(node, &path, None, reason);
            return None;
        };
        let get = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let ports_node = get("ports").filter(|node| !is_null(node))?;
        let ports_path = format!("{path}.ports");
        let Some(items) = sequence(ports_node) else {
            let reason = format!("is {}, not a list of ports", kind(ports_node));
            self.error(ports_node, &ports_path, None, reason);
            return None;
        };
        let ports: Vec<PortEntry> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.port(&format!("{ports_path}[{i}]"), item))
            .collect();
        if items.is_empty() || self.containers(&path, &keys) == Some(0) {
            // No ports, or no container (scale or replicas 0): Docker publishes nothing.
            return None;
        }
        if let Some(mode) = get("network_mode")
            && scalar_text(mode).as_deref() == Some("host")
        {
            // The Compose specification: port mapping with host networking is a runtime error.
            let reason =
                "ports with network_mode: host (the container is on the host's network already; \
                 Compose refuses port mapping there)"
                    .to_owned();
            self.error(ports_node, &ports_path, None, reason);
            return None;
        }
        Some(Service {
            name: name.to_owned(),
            ports,
        })
    }

    /// How many containers the service runs, when it says; more than one is an error, since a
    /// published port goes to exactly one container (no load balancing here).
    fn containers(&mut self, path: &str, keys: &[(String, &Node<'_>)]) -> Option<u64> {
        let mut counts = Vec::new();
        if let Some((_, scale)) = keys.iter().find(|(k, _)| k == "scale") {
            counts.push((format!("{path}.scale"), *scale));
        }
        if let Some((_, deploy)) = keys.iter().find(|(k, _)| k == "deploy") {
            // `global` runs one container per node: one on a single host.
            let global = field(deploy, "mode")
                .and_then(scalar_text)
                .is_some_and(|mode| mode.starts_with("global"));
            if let Some(replicas) = field(deploy, "replicas").filter(|_| !global) {
                counts.push((format!("{path}.deploy.replicas"), replicas));
            }
        }
        let mut result = None;
        for (entry, node) in counts {
            match count(node) {
                Some(n) if n > 1 => {
                    let reason = format!(
                        "{n} containers, but a published port goes to exactly one container \
                         (portmap does not balance across replicas; run one)"
                    );
                    self.error(node, &entry, None, reason);
                    return None;
                }
                Some(n) => result = Some(result.map_or(n, |r: u64| r.min(n))),
                None => {
                    let reason = format!("is {}, not a number of containers", kind(node));
                    self.error(node, &entry, None, reason);
                    return None;
                }
            }
        }
        result
    }

    fn port(&mut self, entry: &str, node: &Node<'_>) -> Option<PortEntry> {
        let node = untagged(node);
        let text = match &node.data {
            // compose-go formats a number and parses it as the short syntax.
            YamlData::Value(Scalar::Integer(n)) => n.to_string(),
            YamlData::Value(Scalar::String(text)) => text.to_string(),
            YamlData::Mapping(_) => return self.long_port(entry, node),
            _ => {
                let reason = format!(
                    "a port is a number, a string or a mapping, not {}",
                    kind(node)
                );
                self.error(node, entry, None, reason);
                return None;
            }
        };
        if text.contains('$') {
            let reason = "variables are not interpolated: portmap reads the file as written".into();
            self.error(node, entry, Some(&text), reason);
            return None;
        }
        match text.parse::<PortSpec>() {
            Ok(spec) => Some(PortEntry {
                line: line_of(node),
                entry: entry.to_owned(),
                text,
                spec,
            }),
            Err(error) => {
                self.error(node, entry, Some(&text), error.reason);
                None
            }
        }
    }

    /// The long syntax. Each field's error names the field's own path and line.
    fn long_port(&mut self, entry: &str, node: &Node<'_>) -> Option<PortEntry> {
        let keys = entries(node).unwrap_or_default();
        let mut target = None;
        let mut published = None;
        let mut host_ip = None;
        let mut proto = Proto::Tcp;
        let mut ok = true;
        for (key, value) in &keys {
            let field = format!("{entry}.{key}");
            let mut fail = |reason: String| {
                self.error(value, &field, None, reason);
                ok = false;
            };
            match key.as_str() {
                "target" => match port_text(value).map(|t| PortRange::parse(&t, "target")) {
                    Some(Ok(port)) if port.is_single() => target = Some(port),
                    Some(Ok(port)) => fail(format!("target {port} is a range, not one port")),
                    Some(Err(reason)) => fail(reason),
                    None => fail(format!("target is {}, not a port", kind(value))),
                },
                "published" => match port_text(value) {
                    // An empty string asks for an ephemeral port, like no `published`.
                    Some(text) if text.is_empty() => {}
                    Some(text) => match PortRange::parse(&text, "published port") {
                        Ok(range) => published = Some(range),
                        Err(reason) => fail(reason),
                    },
                    None => fail(format!("published is {}, not a port or range", kind(value))),
                },
                // compose-go checks it with net.ParseIP: an address, no brackets.
                "host_ip" => match scalar_text(value).map(|t| (t.parse::<IpAddr>(), t)) {
                    Some((Ok(ip), _)) => host_ip = Some(ip),
                    Some((Err(_), text)) => fail(format!("{text:?} is not an IP address")),
                    None => fail(format!("host_ip is {}, not an IP address", kind(value))),
                },
                "protocol" => match scalar_text(value).map(|t| Proto::parse(&t)) {
                    Some(Ok(parsed)) => proto = parsed,
                    Some(Err(reason)) => fail(reason),
                    None => fail(format!("protocol is {}, not a name", kind(value))),
                },
                // `ingress` is a swarm's routing mesh (every node answers), `host` the node
                // running the task; on one host without a swarm both publish on this host.
                "mode" => match scalar_text(value).as_deref() {
                    Some("ingress" | "host") => {}
                    Some(other) => fail(format!("mode {other:?} is not host or ingress")),
                    None => fail(format!("mode is {}, not host or ingress", kind(value))),
                },
                "name" | "app_protocol" => {
                    if !matches!(untagged(value).data, YamlData::Value(Scalar::String(_))) {
                        fail(format!("{key} is {}, not a string", kind(value)));
                    }
                }
                extension if extension.starts_with("x-") => {}
                other => fail(format!(
                    "unknown key {other:?} (a long-syntax port has target, published, host_ip, \
                     protocol, mode, name, app_protocol)"
                )),
            }
        }
        if !ok {
            return None;
        }
        let Some(target) = target else {
            let reason = "no target: the long syntax needs the container port".into();
            self.error(node, entry, None, reason);
            return None;
        };
        match PortSpec::new(host_ip, published, target, proto) {
            Ok(spec) => Some(PortEntry {
                line: line_of(node),
                entry: entry.to_owned(),
                text: spec.to_string(),
                spec,
            }),
            Err(reason) => {
                self.error(node, entry, None, reason);
                None
            }
        }
    }
}

fn line_of(node: &Node<'_>) -> usize {
    node.span.start.line()
}

/// The node under any tag (`!!str 80`).
fn untagged<'n, 'input>(node: &'n Node<'input>) -> &'n Node<'input> {
    match &node.data {
        YamlData::Tagged(_, inner) => untagged(inner),
        _ => node,
    }
}

fn is_null(node: &Node<'_>) -> bool {
    matches!(untagged(node).data, YamlData::Value(Scalar::Null))
}

fn sequence<'n, 'input>(node: &'n Node<'input>) -> Option<&'n [Node<'input>]> {
    match &untagged(node).data {
        YamlData::Sequence(items) => Some(items),
        _ => None,
    }
}

/// A mapping's entries with scalar keys as text, merge keys (`<<`) followed: a key of the
/// mapping itself wins over a merged one, an earlier merged mapping over a later one.
fn entries<'n, 'input>(node: &'n Node<'input>) -> Option<Vec<(String, &'n Node<'input>)>> {
    let YamlData::Mapping(map) = &untagged(node).data else {
        return None;
    };
    let mut own: Vec<(String, &Node<'_>)> = Vec::new();
    let mut merged: Vec<&Node<'_>> = Vec::new();
    for (key, value) in map {
        match scalar_text(key) {
            Some(key) if key == "<<" => match &untagged(value).data {
                YamlData::Sequence(sources) => merged.extend(sources),
                _ => merged.push(value),
            },
            Some(key) => own.push((key, value)),
            None => {}
        }
    }
    for source in merged {
        for (key, value) in entries(source).unwrap_or_default() {
            if !own.iter().any(|(k, _)| *k == key) {
                own.push((key, value));
            }
        }
    }
    Some(own)
}

/// The value of `key` in a mapping (merge keys followed).
fn field<'n, 'input>(node: &'n Node<'input>, key: &str) -> Option<&'n Node<'input>> {
    entries(node)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value)
}

/// A scalar as text (strings as they are, numbers and booleans formatted).
fn scalar_text(node: &Node<'_>) -> Option<String> {
    match &untagged(node).data {
        YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
        YamlData::Value(Scalar::Integer(n)) => Some(n.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Value(Scalar::FloatingPoint(x)) => Some(x.to_string()),
        _ => None,
    }
}

/// A port field, integer or string (compose-go accepts both).
fn port_text(node: &Node<'_>) -> Option<String> {
    match &untagged(node).data {
        YamlData::Value(Scalar::String(text)) => Some(text.to_string()),
        YamlData::Value(Scalar::Integer(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A count of containers: a non-negative integer, or its digits as a string.
fn count(node: &Node<'_>) -> Option<u64> {
    match &untagged(node).data {
        YamlData::Value(Scalar::Integer(n)) => u64::try_from(*n).ok(),
        YamlData::Value(Scalar::String(text)) => text.parse().ok(),
        _ => None,
    }
}

fn kind(node: &Node<'_>) -> &'static str {
    match &untagged(node).data {
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a decimal number",
        YamlData::Value(Scalar::String(_)) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        _ => "an unreadable value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each published entry as `SERVICE LINE ENTRY TEXT => canonical spec`.
    fn ports(yaml: &str) -> Vec<String> {
        let file = parse("compose.yml", yaml).unwrap_or_else(|errors| {
            panic!(
                "should load: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        file.services
            .iter()
            .flat_map(|service| {
                service.ports.iter().map(|p| {
                    format!(
                        "{} {} {} {} => {}",
                        service.name, p.line, p.entry, p.text, p.spec
                    )
                })
            })
            .collect()
    }

    fn errors(yaml: &str) -> Vec<String> {
        parse("compose.yml", yaml)
            .expect_err("should not load")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn short_syntax_strings_and_numbers() {
        let yaml = "\
services:
  web:
    image: nginx
    ports:
      - 3000
      - \"3000\"
      - 9999:8000
      - 22:22
      - '8212:5000'
      - \"127.0.0.1::5000\"
      - 6060:6060/udp
      - \"[::1]:6001:6001\"
      - ::1:6000:6000
      - \"9090-9091:8080-8081\"
      - 0x1F90
";
        assert_eq!(
            ports(yaml),
            [
                "web 5 services.web.ports[0] 3000 => 3000/tcp",
                "web 6 services.web.ports[1] 3000 => 3000/tcp",
                // YAML 1.2: unquoted, still a string; not base-60 (599880 / 1342).
                "web 7 services.web.ports[2] 9999:8000 => 9999:8000/tcp",
                "web 8 services.web.ports[3] 22:22 => 22:22/tcp",
                "web 9 services.web.ports[4] 8212:5000 => 8212:5000/tcp",
                "web 10 services.web.ports[5] 127.0.0.1::5000 => 127.0.0.1::5000/tcp",
                "web 11 services.web.ports[6] 6060:6060/udp => 6060:6060/udp",
                "web 12 services.web.ports[7] [::1]:6001:6001 => [::1]:6001:6001/tcp",
                "web 13 services.web.ports[8] ::1:6000:6000 => [::1]:6000:6000/tcp",
                "web 14 services.web.ports[9] 9090-9091:8080-8081 => 9090-9091:8080-8081/tcp",
                // A YAML 1.2 hex integer is a number like any other.
                "web 15 services.web.ports[10] 8080 => 8080/tcp",
            ]
        );
    }

    #[test]
    fn long_syntax_every_field() {
        let yaml = "\
services:
  web:
    ports:
      - name: web
        target: 80
        host_ip: 127.0.0.1
        published: \"8080\"
        protocol: tcp
        app_protocol: http
        mode: host
        x-note: ignored
      - name: web-secured
        target: 443
        host_ip: 127.0.0.1
        published: \"8083-9000\"
        protocol: TCP
        mode: ingress
      - target: \"53\"
        published: 5353
        protocol: udp
      - target: 8000
      - target: 8001
        published: \"\"
      - target: 8002
        host_ip: \"::1\"
        published: 0
";
        assert_eq!(
            ports(yaml),
            [
                "web 4 services.web.ports[0] 127.0.0.1:8080:80/tcp => 127.0.0.1:8080:80/tcp",
                "web 12 services.web.ports[1] 127.0.0.1:8083-9000:443/tcp => 127.0.0.1:8083-9000:443/tcp",
                "web 18 services.web.ports[2] 5353:53/udp => 5353:53/udp",
                "web 21 services.web.ports[3] 8000/tcp => 8000/tcp",
                "web 22 services.web.ports[4] 8001/tcp => 8001/tcp",
                "web 24 services.web.ports[5] [::1]:0:8002/tcp => [::1]:0:8002/tcp",
            ]
        );
    }

    // Unknown keys outside `ports` are ignored wherever they are (the thesis's service-level
    // `resources`, top-level `x-*`, `version`).
    #[test]
    fn unknown_keys_elsewhere_are_ignored() {
        let yaml = "\
version: \"3\"
x-anything: {a: 1}
services:
  my_website:
    image: nginx:1.20.2
    resources:
      limits:
        cpus: \"1\"
    frobnicate: [1, 2]
    ports:
      - \"80:80\"
networks:
  webnet:
";
        assert_eq!(
            ports(yaml),
            ["my_website 11 services.my_website.ports[0] 80:80 => 80:80/tcp"]
        );
    }

    #[test]
    fn merge_keys_are_followed() {
        let yaml = "\
x-base: &base
  ports:
    - \"8080:80\"
  deploy:
    replicas: 1
services:
  web:
    <<: *base
    image: nginx
  api:
    <<: *base
    ports:
      - target: 9000
        <<: {published: 9001}
";
        assert_eq!(
            ports(yaml),
            [
                "web 3 services.web.ports[0] 8080:80 => 8080:80/tcp",
                "api 13 services.api.ports[0] 9001:9000/tcp => 9001:9000/tcp",
            ]
        );
    }

    #[test]
    fn services_without_ports_or_containers_publish_nothing() {
        let yaml = "\
services:
  bash:
    image: bash-examples
    deploy:
      replicas: 4
  idle:
    scale: 0
    ports:
      - \"80:80\"
  empty:
  none:
    ports:
";
        assert_eq!(ports(yaml), Vec::<String>::new());
        assert_eq!(ports(""), Vec::<String>::new());
        assert_eq!(ports("networks: {}\n"), Vec::<String>::new());
    }

    // One container per service: more is named; `global` is one per node, one here.
    #[test]
    fn replicas_and_scale_above_one_are_errors_naming_the_service() {
        let yaml = "\
services:
  web:
    deploy:
      replicas: 3
    ports:
      - \"4000:80\"
  api:
    scale: 2
    ports:
      - \"5000:80\"
  global:
    deploy:
      mode: global
      replicas: 5
    ports:
      - \"6000:80\"
  one:
    scale: 1
    deploy:
      replicas: \"1\"
    ports:
      - \"7000:80\"
";
        assert_eq!(
            errors(yaml),
            [
                "compose.yml:4: services.web.deploy.replicas: 3 containers, but a published port goes to exactly one container (portmap does not balance across replicas; run one)",
                "compose.yml:8: services.api.scale: 2 containers, but a published port goes to exactly one container (portmap does not balance across replicas; run one)",
            ]
        );
    }

    #[test]
    fn host_network_mode_with_ports_is_an_error() {
        let yaml = "\
services:
  web:
    network_mode: host
    ports:
      - \"80:80\"
";
        assert_eq!(
            errors(yaml),
            [
                "compose.yml:5: services.web.ports: ports with network_mode: host (the container is on the host's network already; Compose refuses port mapping there)"
            ]
        );
    }

    // Every bad entry is reported, with file, line, entry and the reason.
    #[test]
    fn entry_errors_name_file_line_entry_and_reason() {
        let yaml = "\
services:
  web:
    ports:
      - \"8080:80\"
      - \"80:abc\"
      - localhost:80:80
      - 80:80/icmp
      - 1.5
      - true
      - [80, 81]
      - \"${WEB_PORT}:80\"
      - 70000
      - \"8080:80-81\"
  long:
    ports:
      - published: 8080
      - target: 80
        publish: 8080
      - target: 80-81
      - target: 0
      - target: 80
        host_ip: \"[::1]\"
      - target: 80
        published: abc
      - target: 80
        protocol: icmp
      - target: 80
        mode: global
      - target: 80
        published: 0-100
      - target: [80]
      - target: 80
        name: 7
";
        assert_eq!(
            errors(yaml),
            [
                r#"compose.yml:5: services.web.ports[1] "80:abc": container port "abc" is not a number"#,
                r#"compose.yml:6: services.web.ports[2] "localhost:80:80": host IP "localhost" is not an IP address (hostnames are not accepted)"#,
                r#"compose.yml:7: services.web.ports[3] "80:80/icmp": protocol "icmp" is not tcp, udp or sctp"#,
                "compose.yml:8: services.web.ports[4]: a port is a number, a string or a mapping, not a decimal number",
                "compose.yml:9: services.web.ports[5]: a port is a number, a string or a mapping, not a boolean",
                "compose.yml:10: services.web.ports[6]: a port is a number, a string or a mapping, not a list",
                r#"compose.yml:11: services.web.ports[7] "${WEB_PORT}:80": variables are not interpolated: portmap reads the file as written"#,
                r#"compose.yml:12: services.web.ports[8] "70000": container port "70000" is out of range (0-65535)"#,
                r#"compose.yml:13: services.web.ports[9] "8080:80-81": host ports 8080 and container ports 80-81 differ in length: ranges on both sides map pairwise"#,
                "compose.yml:16: services.long.ports[0]: no target: the long syntax needs the container port",
                r#"compose.yml:18: services.long.ports[1].publish: unknown key "publish" (a long-syntax port has target, published, host_ip, protocol, mode, name, app_protocol)"#,
                "compose.yml:19: services.long.ports[2].target: target 80-81 is a range, not one port",
                r#"compose.yml:20: services.long.ports[3]: container port 0 is not a port (Docker refuses "0/tcp")"#,
                r#"compose.yml:22: services.long.ports[4].host_ip: "[::1]" is not an IP address"#,
                r#"compose.yml:24: services.long.ports[5].published: published port "abc" is not a number"#,
                r#"compose.yml:26: services.long.ports[6].protocol: protocol "icmp" is not tcp, udp or sctp"#,
                r#"compose.yml:28: services.long.ports[7].mode: mode "global" is not host or ingress"#,
                "compose.yml:29: services.long.ports[8]: host port window 0-100 starts at 0 (host port 0 alone asks for an ephemeral port)",
                "compose.yml:31: services.long.ports[9].target: target is a list, not a port",
                "compose.yml:33: services.long.ports[10].name: name is an integer, not a string",
            ]
        );
    }

    #[test]
    fn structure_errors_name_the_path() {
        assert_eq!(
            errors("- a\n- b\n"),
            ["compose.yml:1: (top level): the top level is a list, not a mapping"]
        );
        assert_eq!(
            errors("services: [web]\n"),
            ["compose.yml:1: services: is a list, not a mapping of services"]
        );
        assert_eq!(
            errors("services:\n  web: nginx\n"),
            ["compose.yml:2: services.web: a service is a mapping, not a string"]
        );
        assert_eq!(
            errors("services:\n  web:\n    ports: \"80:80\"\n"),
            ["compose.yml:3: services.web.ports: is a string, not a list of ports"]
        );
        assert_eq!(
            errors("services:\n  web:\n    deploy:\n      replicas: many\n    ports: [80]\n"),
            [
                "compose.yml:4: services.web.deploy.replicas: is a string, not a number of containers"
            ]
        );
    }

    #[test]
    fn yaml_errors_carry_the_line() {
        let errors = errors("services:\n  web:\n    ports:\n      - \"80:80\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("compose.yml:"), "{errors:?}");
        assert!(errors[0].contains(": YAML: "), "{errors:?}");
        assert_eq!(
            self::errors("services:\n  web: {}\n  web: {}\n"),
            ["compose.yml:3: YAML: duplicated key in mapping"]
        );
    }

    #[test]
    fn requests_target_the_service() {
        let file = parse("c.yml", "services:\n  db:\n    ports: [\"3306:3306\"]\n").unwrap();
        let requests = file.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].target, Some(Target::Service("db".into())));
        assert_eq!(
            requests[0].source.origin(),
            "c.yml:3: services.db.ports[0] 3306:3306"
        );
    }
}
