//! The `cni-portmap` mode: ports published by the reference CNI `portmap` plugin (Debian's
//! containernetworking-plugins 1.1.1), as containerd, CRI-O and Kubernetes publish them, with
//! its default options (`snat` on: a hairpin mark rule, a localhost mark rule and a DNAT rule
//! per mapping, in a chain per container behind `CNI-HOSTPORT-DNAT`).
//!
//! The plugin runs in the benchmark host's namespace the way a runtime runs it, chained after a
//! network plugin: the benchmark's containers are already on the bridge, so the previous
//! result it gets is written here (the container's address on `eth0`, the bridge host-side)
//! rather than produced by `bridge` + `host-local`.
//!
//! One container per mapping, as a cluster would have them, is impractical at N = 10,000
//! (ten thousand namespaces and ADDs); instead each benchmark container gets all of its
//! mappings in one ADD: the stream, the N - 1 fillers and the fresh-connection mapping last for
//! the first container, the UDP mapping for the second, added after it. The plugin appends
//! each container's jump to `CNI-HOSTPORT-DNAT`, so the measured packets walk every filler's
//! rules first: the measured mapping is last, as in the other modes.

use std::{net::SocketAddrV4, path::Path, time::Duration};

use anyhow::bail;
use portmap_tests::{
    cni::{Invocation, REFERENCE_DIR, run_plugin},
    topology::{BRIDGE, DockerHost},
};

/// One published port: protocol, host port, container address and port.
pub type Mapping = (&'static str, u16, SocketAddrV4);

/// The network name the plugin's chains carry.
const NETWORK: &str = "pmbench";
/// The container id of the add/remove measurement's extra mapping.
const SPARE_ID: &str = "bench-spare";
/// The reference plugin runs `iptables` twice per rule (a check, then an append), each reading
/// the whole table: installing N = 10,000 mappings takes long. Bounded all the same.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Publishes `mappings`, one ADD per container in the order the containers first appear.
///
/// # Errors
///
/// When the plugin fails, quoting its error object.
pub fn publish(net: &DockerHost, mappings: impl Iterator<Item = Mapping>) -> anyhow::Result<()> {
    let mut per_container: Vec<(SocketAddrV4, Vec<Mapping>)> = Vec::new();
    for mapping in mappings {
        let ip = *mapping.2.ip();
        match per_container.iter_mut().find(|(c, _)| c.ip() == &ip) {
            Some((_, list)) => list.push(mapping),
            None => per_container.push((mapping.2, vec![mapping])),
        }
    }
    for (i, (container, list)) in per_container.iter().enumerate() {
        plugin(net, "ADD", &format!("bench-c{}", i + 1), container, list)?;
    }
    Ok(())
}

/// ADDs one more container with the one mapping `spare` (a pod starting on a busy node).
///
/// # Errors
///
/// When the plugin fails.
pub fn add_spare(net: &DockerHost, spare: Mapping) -> anyhow::Result<()> {
    plugin(net, "ADD", SPARE_ID, &spare.2, &[spare])
}

/// DELs that container again.
///
/// # Errors
///
/// When the plugin fails.
pub fn remove_spare(net: &DockerHost, spare: Mapping) -> anyhow::Result<()> {
    plugin(net, "DEL", SPARE_ID, &spare.2, &[spare])
}

/// Runs the reference plugin for the benchmark container whose address is `container`.
fn plugin(
    net: &DockerHost,
    command: &str,
    container_id: &str,
    container: &SocketAddrV4,
    mappings: &[Mapping],
) -> anyhow::Result<()> {
    let Some(ns) = net
        .containers
        .iter()
        .find(|c| c.addr == *container.ip())
        .map(|c| &c.ns)
    else {
        bail!("no benchmark container has the address {}", container.ip());
    };
    let conf = config(ns.name(), container, mappings);
    let program = Path::new(REFERENCE_DIR).join("portmap");
    let out = run_plugin(
        &net.host,
        &Invocation {
            program: &program,
            command,
            container_id,
            container: Some(ns),
            stdin: conf.as_bytes(),
            timeout: INSTALL_TIMEOUT,
        },
    )?;
    if !out.status.success() {
        bail!(
            "the reference portmap plugin's {command} for {container_id} failed: {}{}",
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    Ok(())
}

/// The plugin's network configuration with `runtimeConfig.portMappings`, and the previous
/// result a bridge plugin would have given: the container's `eth0` in its namespace, the bridge
/// on the host. Written by hand: every value is a number, an address or a fixed name.
fn config(netns: &str, container: &SocketAddrV4, mappings: &[Mapping]) -> String {
    let entries: Vec<String> = mappings
        .iter()
        .map(|(proto, host, to)| {
            format!(
                r#"{{"hostPort":{host},"containerPort":{},"protocol":"{proto}"}}"#,
                to.port()
            )
        })
        .collect();
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{NETWORK}","type":"portmap","capabilities":{{"portMappings":true}},"runtimeConfig":{{"portMappings":[{}]}},"prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"{BRIDGE}"}},{{"name":"eth0","sandbox":"/run/netns/{netns}"}}],"ips":[{{"interface":1,"address":"{}/16"}}]}}}}"#,
        entries.join(","),
        container.ip()
    )
}
