//! The Docker host of SCENARIOS.md, built in namespaces:
//!
//! ```text
//! client 198.51.100.2 (+ more) ── ens160 198.51.100.1 [host] docker0 172.17.0.1/16 ── containers 172.17.0.2, .3, ...
//! ```
//!
//! The host routes between its uplink and the bridge like a Docker host does (forwarding on);
//! containers default-route via the bridge address, the client via the host's uplink address.

use std::net::Ipv4Addr;

use crate::netns::Netns;

pub const UPLINK: &str = "ens160";
pub const BRIDGE: &str = "docker0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const BRIDGE_SUBNET: &str = "172.17.0.0/16";

/// One container: a namespace with `eth0` on the bridge.
pub struct Container {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
}

/// A LAN client, a host with an uplink and a bridge, and containers behind it.
pub struct DockerHost {
    pub client: Netns,
    pub host: Netns,
    pub containers: Vec<Container>,
    /// Every source address the client has: [`CLIENT_IP`] first.
    pub client_addrs: Vec<Ipv4Addr>,
}

/// How to build a [`DockerHost`].
pub struct Options<'a> {
    pub containers: &'a [&'a str],
    /// Extra client source addresses beyond [`CLIENT_IP`] (198.51.100.10 and up).
    pub extra_client_addrs: u8,
    /// Install Docker's filter and nat rules for the bridge in the host namespace.
    pub docker_rules: bool,
    /// Leave TX checksum offload on in the containers, as Docker does. Off (the default for
    /// tests), every reply carries a complete checksum that the client's kernel verifies.
    pub container_csum_offload: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            containers: &["c1", "c2"],
            extra_client_addrs: 0,
            docker_rules: false,
            container_csum_offload: false,
        }
    }
}

impl DockerHost {
    pub fn build(options: &Options<'_>) -> anyhow::Result<Self> {
        let client = Netns::new("cli")?;
        let host = Netns::new("host")?;

        // The uplink: the client's eth0 and the host's ens160.
        client.ip(&format!(
            "link add eth0 type veth peer name {UPLINK} netns {}",
            host.name()
        ))?;
        client.ip(&format!("addr add {CLIENT_IP}/24 dev eth0"))?;
        let mut client_addrs = vec![CLIENT_IP];
        for i in 0..options.extra_client_addrs {
            let addr = Ipv4Addr::new(198, 51, 100, 10 + i);
            client.ip(&format!("addr add {addr}/24 dev eth0"))?;
            client_addrs.push(addr);
        }
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add default via {HOST_IP}"))?;
        // A physical NIC hands XDP complete checksums; a veth peer would hand it offloaded
        // (CHECKSUM_PARTIAL) seeds instead. Make the client behave like a wire.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;

        host.ip(&format!("addr add {HOST_IP}/24 dev {UPLINK}"))?;
        host.ip(&format!("link set {UPLINK} up"))?;
        host.ip(&format!("link add {BRIDGE} type bridge"))?;
        host.ip(&format!("addr add {BRIDGE_IP}/16 dev {BRIDGE}"))?;
        host.ip(&format!("link set {BRIDGE} up"))?;
        host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;

        let mut containers = Vec::new();
        for (i, name) in options.containers.iter().enumerate() {
            let addr = Ipv4Addr::new(172, 17, 0, 2 + i as u8);
            let ns = Netns::new(name)?;
            let host_end = format!("veth{i}");
            ns.ip(&format!(
                "link add eth0 type veth peer name {host_end} netns {}",
                host.name()
            ))?;
            ns.ip(&format!("addr add {addr}/16 dev eth0"))?;
            ns.ip("link set eth0 up")?;
            ns.ip(&format!("route add default via {BRIDGE_IP}"))?;
            if !options.container_csum_offload {
                ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
            }
            host.ip(&format!("link set {host_end} master {BRIDGE}"))?;
            host.ip(&format!("link set {host_end} up"))?;
            containers.push(Container {
                name: (*name).to_owned(),
                addr,
                ns,
            });
        }

        if options.docker_rules {
            for rule in docker_rules(BRIDGE, BRIDGE_SUBNET) {
                let args: Vec<&str> = rule.split_whitespace().collect();
                host.exec("iptables", &args)?;
            }
        }

        Ok(Self {
            client,
            host,
            containers,
            client_addrs,
        })
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name:?} in this topology"))
    }
}

/// Docker's iptables rules for one bridge network, in the layout moby 28 installs, and none of
/// the per-port rules: FORWARD policy DROP, DOCKER-USER and DOCKER-FORWARD, the established
/// accept, the `! -i BRIDGE -o BRIDGE -j DROP` isolation rule, and the nat chains with
/// MASQUERADE. Each entry is one `iptables` argument list.
pub fn docker_rules(bridge: &str, subnet: &str) -> Vec<String> {
    [
        "-P FORWARD DROP",
        "-N DOCKER-USER",
        "-N DOCKER-FORWARD",
        "-N DOCKER-CT",
        "-N DOCKER-BRIDGE",
        "-N DOCKER",
        "-N DOCKER-ISOLATION-STAGE-1",
        "-N DOCKER-ISOLATION-STAGE-2",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-FORWARD",
        "-A DOCKER-USER -j RETURN",
        "-A DOCKER-FORWARD -j DOCKER-CT",
        "-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1",
        "-A DOCKER-FORWARD -j DOCKER-BRIDGE",
        "-A DOCKER-FORWARD -i {br} -j ACCEPT",
        "-A DOCKER-CT -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A DOCKER-BRIDGE -o {br} -j DOCKER",
        "-A DOCKER ! -i {br} -o {br} -j DROP",
        "-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2",
        "-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP",
        "-t nat -N DOCKER",
        "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-t nat -A POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE",
        "-t nat -A DOCKER -i {br} -j RETURN",
    ]
    .iter()
    .map(|rule| rule.replace("{br}", bridge).replace("{subnet}", subnet))
    .collect()
}
