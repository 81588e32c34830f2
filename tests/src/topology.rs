//! The Docker host of SCENARIOS.md, built in namespaces:
//!
//! ```text
//! client 198.51.100.2 (+ more) ── ens160 198.51.100.1 [host] docker0 172.17.0.1/16 ── containers 172.17.0.2, .3, ...
//! ```
//!
//! The host routes between its uplink and the bridge like a Docker host does (forwarding on);
//! containers default-route via the bridge address, the client via the host's uplink address.
//!
//! With [`Options::ipv6`] every link gets an IPv6 address too (2001:db8::/64 on the uplink,
//! 2001:db8:2::/64 on the bridge), added `nodad` so it is usable at once, and duplicate address
//! detection is off in every namespace (link-local addresses too). With
//! [`Options::router_mtu`] a router sits between the client and the host:
//!
//! ```text
//! client 203.0.113.2 ── lan0 203.0.113.1 [router] wan0 198.51.100.254 ── ens160 198.51.100.1 [host] ...
//!        2001:db8:ff::2      2001:db8:ff::1          2001:db8::fe              2001:db8::1
//! ```
//!
//! and the router's link toward the client has the lower MTU (the client's own end keeps 1500,
//! so the client advertises a full-size MSS and the router has to say "fragmentation needed" /
//! "packet too big" about what the host sends it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

pub const UPLINK: &str = "ens160";
pub const BRIDGE: &str = "docker0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const BRIDGE_SUBNET: &str = "172.17.0.0/16";

/// The IPv6 twins of the addresses above ([`Options::ipv6`]).
pub const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const BRIDGE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const BRIDGE_SUBNET6: &str = "2001:db8:2::/64";

/// With a router ([`Options::router_mtu`]): the router's end of the host's uplink link.
pub const ROUTER_WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
pub const ROUTER_WAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// With a router: its end of the client's link, and the client behind it.
pub const ROUTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ROUTER_LAN_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const ROUTED_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);

/// An address family, for tests that run once per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// `127.0.0.1` or `::1`.
    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::LOCALHOST.into(),
            Family::V6 => Ipv6Addr::LOCALHOST.into(),
        }
    }

    /// `0.0.0.0` or `::`.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    /// `-4` or `-6`, for `ip`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// An address as a publish spec writes a host IP: IPv6 in brackets.
pub fn spec_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// One container: a namespace with `eth0` on the bridge.
pub struct Container {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address (2001:db8:2::2 and up), with [`Options::ipv6`].
    pub addr6: Option<Ipv6Addr>,
    pub ns: Netns,
}

impl Container {
    /// Its address of `family`.
    ///
    /// # Panics
    ///
    /// For IPv6 when the topology was built without [`Options::ipv6`].
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.addr.into(),
            Family::V6 => self
                .addr6
                .unwrap_or_else(|| panic!("container {} has no IPv6 address", self.name))
                .into(),
        }
    }
}

/// A LAN client, a host with an uplink and a bridge, and containers behind it.
pub struct DockerHost {
    pub client: Netns,
    pub host: Netns,
    pub containers: Vec<Container>,
    /// Every source address the client has: [`CLIENT_IP`] first ([`ROUTED_CLIENT_IP`] behind a
    /// router).
    pub client_addrs: Vec<Ipv4Addr>,
    /// The client's IPv6 addresses, with [`Options::ipv6`]: [`CLIENT_IP6`] (or
    /// [`ROUTED_CLIENT_IP6`]) first.
    pub client_addrs6: Vec<Ipv6Addr>,
    /// The router between the client and the host, with [`Options::router_mtu`].
    pub router: Option<Netns>,
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
    /// Give every link an IPv6 address too (`nodad`), and turn IPv6 forwarding on.
    pub ipv6: bool,
    /// Put a router between the client and the host whose link toward the client has this
    /// MTU; the client then lives in 203.0.113.0/24 (2001:db8:ff::/64).
    pub router_mtu: Option<u32>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            containers: &["c1", "c2"],
            extra_client_addrs: 0,
            docker_rules: false,
            container_csum_offload: false,
            ipv6: false,
            router_mtu: None,
        }
    }
}

impl DockerHost {
    pub fn build(options: &Options<'_>) -> anyhow::Result<Self> {
        let client = Netns::new("cli")?;
        let host = Netns::new("host")?;
        let router = match options.router_mtu {
            Some(_) => Some(Netns::new("rtr")?),
            None => None,
        };
        if options.ipv6 {
            // Link-local addresses would otherwise be tentative for a second or two after a
            // link comes up, and a router (the host, forwarding to a container) sends no
            // neighbour solicitation without one: the first packets to each container would be
            // lost. A long-running host is past that; so are these namespaces, at once.
            for ns in [Some(&client), Some(&host), router.as_ref()]
                .into_iter()
                .flatten()
            {
                no_dad(ns)?;
            }
        }

        // The uplink: the client's eth0 and the host's ens160, or the router's wan0 and the
        // host's ens160 and the client's eth0 and the router's lan0.
        let (client_ip, client_ip6, client_gw, client_gw6) = match &router {
            None => {
                client.ip(&format!(
                    "link add eth0 type veth peer name {UPLINK} netns {}",
                    host.name()
                ))?;
                (CLIENT_IP, CLIENT_IP6, HOST_IP, HOST_IP6)
            }
            Some(router) => {
                router.ip(&format!(
                    "link add wan0 type veth peer name {UPLINK} netns {}",
                    host.name()
                ))?;
                router.ip(&format!(
                    "link add lan0 type veth peer name eth0 netns {}",
                    client.name()
                ))?;
                router.ip(&format!("addr add {ROUTER_WAN_IP}/24 dev wan0"))?;
                router.ip(&format!("addr add {ROUTER_LAN_IP}/24 dev lan0"))?;
                if options.ipv6 {
                    router.ip(&format!("addr add {ROUTER_WAN_IP6}/64 dev wan0 nodad"))?;
                    router.ip(&format!("addr add {ROUTER_LAN_IP6}/64 dev lan0 nodad"))?;
                    router.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
                }
                if let Some(mtu) = options.router_mtu {
                    router.ip(&format!("link set lan0 mtu {mtu}"))?;
                }
                router.ip("link set wan0 up")?;
                router.ip("link set lan0 up")?;
                router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
                (
                    ROUTED_CLIENT_IP,
                    ROUTED_CLIENT_IP6,
                    ROUTER_LAN_IP,
                    ROUTER_LAN_IP6,
                )
            }
        };
        let client_prefix = client_ip.octets()[..3].to_vec();
        client.ip(&format!("addr add {client_ip}/24 dev eth0"))?;
        let mut client_addrs = vec![client_ip];
        for i in 0..options.extra_client_addrs {
            let addr = Ipv4Addr::new(client_prefix[0], client_prefix[1], client_prefix[2], 10 + i);
            client.ip(&format!("addr add {addr}/24 dev eth0"))?;
            client_addrs.push(addr);
        }
        let mut client_addrs6 = Vec::new();
        if options.ipv6 {
            client.ip(&format!("addr add {client_ip6}/64 dev eth0 nodad"))?;
            client_addrs6.push(client_ip6);
            for i in 0..options.extra_client_addrs {
                let mut segments = client_ip6.segments();
                segments[7] = 0x10 + u16::from(i);
                let addr = Ipv6Addr::from(segments);
                client.ip(&format!("addr add {addr}/64 dev eth0 nodad"))?;
                client_addrs6.push(addr);
            }
        }
        client.ip("link set eth0 up")?;
        client.ip(&format!("route add default via {client_gw}"))?;
        if options.ipv6 {
            client.ip(&format!("-6 route add default via {client_gw6}"))?;
        }
        // A physical NIC hands XDP complete checksums; a veth peer would hand it offloaded
        // (CHECKSUM_PARTIAL) seeds instead. Make the client behave like a wire.
        client.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        if let Some(router) = &router {
            router.exec("ethtool", &["-K", "wan0", "tx", "off"])?;
            router.exec("ethtool", &["-K", "lan0", "tx", "off"])?;
        }

        host.ip(&format!("addr add {HOST_IP}/24 dev {UPLINK}"))?;
        host.ip(&format!("link set {UPLINK} up"))?;
        host.ip(&format!("link add {BRIDGE} type bridge"))?;
        host.ip(&format!("addr add {BRIDGE_IP}/16 dev {BRIDGE}"))?;
        host.ip(&format!("link set {BRIDGE} up"))?;
        host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        if options.ipv6 {
            host.ip(&format!("addr add {HOST_IP6}/64 dev {UPLINK} nodad"))?;
            host.ip(&format!("addr add {BRIDGE_IP6}/64 dev {BRIDGE} nodad"))?;
            host.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        if router.is_some() {
            host.ip(&format!("route add 203.0.113.0/24 via {ROUTER_WAN_IP}"))?;
            if options.ipv6 {
                host.ip(&format!(
                    "-6 route add 2001:db8:ff::/64 via {ROUTER_WAN_IP6}"
                ))?;
            }
        }

        let mut containers = Vec::new();
        for (i, name) in options.containers.iter().enumerate() {
            let addr = Ipv4Addr::new(172, 17, 0, 2 + i as u8);
            let ns = Netns::new(name)?;
            if options.ipv6 {
                no_dad(&ns)?;
            }
            let host_end = format!("veth{i}");
            ns.ip(&format!(
                "link add eth0 type veth peer name {host_end} netns {}",
                host.name()
            ))?;
            ns.ip(&format!("addr add {addr}/16 dev eth0"))?;
            ns.ip("link set eth0 up")?;
            ns.ip(&format!("route add default via {BRIDGE_IP}"))?;
            let addr6 = if options.ipv6 {
                let addr6 = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2 + i as u16);
                ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"))?;
                ns.ip(&format!("-6 route add default via {BRIDGE_IP6}"))?;
                Some(addr6)
            } else {
                None
            };
            if !options.container_csum_offload {
                ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
            }
            host.ip(&format!("link set {host_end} master {BRIDGE}"))?;
            host.ip(&format!("link set {host_end} up"))?;
            containers.push(Container {
                name: (*name).to_owned(),
                addr,
                addr6,
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
            client_addrs6,
            router,
        })
    }

    /// The client's (first) address of `family`.
    ///
    /// # Panics
    ///
    /// For IPv6 when the topology was built without [`Options::ipv6`].
    pub fn client_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.client_addrs[0].into(),
            Family::V6 => (*self
                .client_addrs6
                .first()
                .expect("the topology was built without IPv6"))
            .into(),
        }
    }

    /// The host's uplink address of `family`.
    pub fn host_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => HOST_IP.into(),
            Family::V6 => HOST_IP6.into(),
        }
    }

    /// The bridge's own address of `family`.
    pub fn bridge_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => BRIDGE_IP.into(),
            Family::V6 => BRIDGE_IP6.into(),
        }
    }

    /// The MAC address of the host's uplink, as a crafted frame from the client needs it.
    pub fn host_mac(&self) -> anyhow::Result<[u8; 6]> {
        mac_of(&self.host, UPLINK)
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

/// Turns duplicate address detection off for the links made in `ns` from now on.
fn no_dad(ns: &Netns) -> anyhow::Result<()> {
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ],
    )?;
    Ok(())
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec("ip", &["-br", "link", "show", "dev", iface])?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `ens160@if2  UP  aa:bb:cc:dd:ee:ff <BROADCAST,...>`
    let mac = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow::anyhow!("no MAC address in {text:?}"))?;
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut bytes {
        let part = parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("malformed MAC address {mac:?}"))?;
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(bytes)
}
