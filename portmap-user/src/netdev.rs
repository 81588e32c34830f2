//! What the host's network looks like: interface indices and local addresses.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};

/// A network interface, resolved in the caller's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

impl Interface {
    /// Looks up `name`.
    ///
    /// # Errors
    ///
    /// When no interface has that name here, saying so by name.
    pub fn by_name(name: &str) -> anyhow::Result<Self> {
        let c_name = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            bail!("no network interface named {name:?} in this network namespace (see `ip link`)");
        }
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }
}

/// How the packets arriving on an interface are spread over the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveSpread {
    /// Receive queues, each handled by the CPU its interrupt goes to.
    pub queues: usize,
    /// Whether RPS hands them on to other CPUs: after XDP, before TC and the stack.
    pub rps: bool,
}

/// How `iface` spreads what it receives, from sysfs; `None` where sysfs does not show it
/// (sysfs shows the network namespace it was mounted in, which may not be the caller's).
pub fn receive_spread(iface: &Interface) -> Option<ReceiveSpread> {
    let dir = std::path::Path::new("/sys/class/net").join(&iface.name);
    let index: u32 = std::fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if index != iface.index {
        return None;
    }
    let mut spread = ReceiveSpread {
        queues: 0,
        rps: false,
    };
    for entry in std::fs::read_dir(dir.join("queues")).ok()? {
        let entry = entry.ok()?;
        if !entry.file_name().to_string_lossy().starts_with("rx-") {
            continue;
        }
        spread.queues += 1;
        // A CPU mask in hex words ("00000000,00000003"): any CPU in it turns RPS on.
        spread.rps |= std::fs::read_to_string(entry.path().join("rps_cpus")).is_ok_and(|mask| {
            mask.trim()
                .chars()
                .any(|c| c.is_ascii_hexdigit() && c != '0')
        });
    }
    Some(spread)
}

/// The ports of the bridge with index `master` (the interfaces enslaved to it: containers'
/// veths), from an rtnetlink dump of this network namespace's links.
///
/// # Errors
///
/// When the netlink socket fails or the kernel answers with an error.
pub fn ports_of(master: u32) -> io::Result<Vec<Interface>> {
    use std::os::fd::AsRawFd as _;
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MASTER: u16 = 10;
    const HEADER: usize = 16;
    const IFINFO: usize = 16;
    let socket = rtnetlink_socket(0)?;
    // nlmsghdr, then an all-zero ifinfomsg: every link, of every family.
    let mut request = [0u8; HEADER + IFINFO];
    request[0..4].copy_from_slice(&((HEADER + IFINFO) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: sending from a live buffer of the length passed.
    if unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let half = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let mut ports = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: receiving into a live buffer of the length passed.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut at = 0;
        while at + HEADER <= data.len() {
            let len = word(data, at) as usize;
            if len < HEADER || at + len > data.len() {
                return Err(io::Error::other("a truncated rtnetlink message"));
            }
            let message = &data[at..at + len];
            match half(message, 4) {
                NLMSG_DONE => return Ok(ports),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(message[16..20].try_into().unwrap_or([0; 4]));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWLINK if message.len() >= HEADER + IFINFO => {
                    let index = word(message, HEADER + 4);
                    let (mut name, mut enslaved_to) = (None, None);
                    let mut attr = HEADER + IFINFO;
                    while attr + 4 <= message.len() {
                        let attr_len = usize::from(half(message, attr));
                        if attr_len < 4 || attr + attr_len > message.len() {
                            break;
                        }
                        let payload = &message[attr + 4..attr + attr_len];
                        match half(message, attr + 2) {
                            IFLA_IFNAME => {
                                let end = payload.iter().position(|&b| b == 0);
                                name = Some(
                                    String::from_utf8_lossy(
                                        &payload[..end.unwrap_or(payload.len())],
                                    )
                                    .into_owned(),
                                );
                            }
                            IFLA_MASTER if payload.len() >= 4 => {
                                enslaved_to = Some(word(payload, 0))
                            }
                            _ => {}
                        }
                        attr += attr_len.next_multiple_of(4);
                    }
                    if let (Some(name), Some(master_index)) = (name, enslaved_to)
                        && master_index == master
                    {
                        ports.push(Interface { name, index });
                    }
                }
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// A rtnetlink socket of this network namespace, with `flags` (`SOCK_NONBLOCK`) besides
/// close-on-exec.
fn rtnetlink_socket(flags: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The addresses configured in this network namespace, by interface: read whole each time
/// (`getifaddrs(3)`), which is cheap and never out of step with the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddrs {
    by_iface: Vec<(String, IpAddr)>,
}

impl HostAddrs {
    /// Reads them now.
    ///
    /// # Errors
    ///
    /// When `getifaddrs(3)` fails.
    pub fn read() -> anyhow::Result<Self> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; the list is freed below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error()).context("getifaddrs");
        }
        let mut by_iface = Vec::new();
        let mut cursor = head;
        while !cursor.is_null() {
            // SAFETY: `cursor` walks the list getifaddrs returned, valid until freed.
            let entry = unsafe { &*cursor };
            // SAFETY: `ifa_addr`, when not null, points at a sockaddr of the family it names,
            // and `ifa_name` at a NUL-terminated name.
            let found = unsafe { ip_of(entry.ifa_addr) }.map(|ip| {
                let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
                (name.to_string_lossy().into_owned(), ip)
            });
            if let Some(found) = found.filter(|f| !by_iface.contains(f)) {
                by_iface.push(found);
            }
            cursor = entry.ifa_next;
        }
        // SAFETY: `head` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(Self { by_iface })
    }

    /// From a list, for tests.
    pub fn from_list(by_iface: Vec<(String, IpAddr)>) -> Self {
        Self { by_iface }
    }

    /// Every local address, loopback included: what Docker's `--dst-type LOCAL` matches, and
    /// what the host's own connections reach (a crafted loopback destination from the wire is
    /// dropped by the uplink's program).
    pub fn local(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for (_, ip) in &self.by_iface {
            if !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
        addrs
    }

    /// An interface's own addresses: its first IPv4 and its first IPv6 that is not link-local
    /// (a hairpinned connection gets one as its source).
    pub fn of(&self, iface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let mine = || self.by_iface.iter().filter(move |(name, _)| name == iface);
        let v4 = mine().find_map(|(_, ip)| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        });
        let v6 = mine().find_map(|(_, ip)| match ip {
            IpAddr::V6(ip) if !ip.is_unicast_link_local() => Some(*ip),
            _ => None,
        });
        (v4, v6)
    }
}

/// The IP address in a `sockaddr`, if it is one.
///
/// # Safety
///
/// `addr` is null or points at a valid sockaddr of the family it names.
unsafe fn ip_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller's contract; the family says the real type.
    unsafe {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let sin = &*addr.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// Tells when an address is added to or removed from any interface of this network namespace,
/// or a link changes (rtnetlink's address and link groups), so that wildcard bindings follow
/// the host's addresses, and `tc_port` the bridges' ports, without a restart.
pub struct AddrWatch {
    socket: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl AddrWatch {
    /// Subscribes.
    ///
    /// # Errors
    ///
    /// When the netlink socket cannot be opened or bound.
    pub fn new() -> io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        const RTMGRP_LINK: u32 = 0x1;
        const RTMGRP_IPV4_IFADDR: u32 = 0x10;
        const RTMGRP_IPV6_IFADDR: u32 = 0x100;
        let socket = rtnetlink_socket(libc::SOCK_NONBLOCK)?;
        let fd = socket.as_raw_fd();
        // SAFETY: all-zero is a valid sockaddr_nl; the fields that matter are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the socket, so the fd stays open while it is registered.
        let socket = unsafe { tokio::io::unix::AsyncFd::register(socket) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { socket })
    }

    /// Waits for the next change, then takes every notice queued with it: one burst of
    /// changes (an interface coming up with several addresses) is one wake-up. The notices
    /// themselves are not parsed; the caller reads the addresses afresh.
    ///
    /// # Errors
    ///
    /// When the socket fails. A lost notice (the queue overflowed) counts as a change.
    pub async fn changed(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let mut buf = [0u8; 8192];
        let mut guard = self.socket.readable().await?;
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                continue;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN) => {
                    guard.clear_ready();
                    return Ok(());
                }
                Some(libc::ENOBUFS) => continue,
                _ => return Err(error),
            }
        }
    }
}
