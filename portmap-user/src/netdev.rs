//! What the host's network looks like: interface indices and local addresses.

use std::{ffi::CString, io, net::Ipv4Addr};

use anyhow::{Context as _, bail};

/// A network interface, resolved in the caller's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Every IPv4 address configured on any interface of this network namespace: what Docker's
/// `--dst-type LOCAL` matches, loopback excepted (it never arrives on an uplink).
///
/// # Errors
///
/// When `getifaddrs(3)` fails.
pub fn local_ipv4_addrs() -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut addrs = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list getifaddrs returned, which stays valid until freed.
        let entry = unsafe { &*cursor };
        let addr = entry.ifa_addr;
        // SAFETY: `addr`, when not null, points at a sockaddr whose family says its real type.
        if !addr.is_null() && i32::from(unsafe { (*addr).sa_family }) == libc::AF_INET {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*(addr as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}
