//! Everything the kernel side and the loader must agree on: map names and sizes, the layout of
//! every key and value, the XDP→TC metadata, and the counter indices.
//!
//! Byte order: every address and port is stored as it appears on the wire (network byte order),
//! as byte arrays ([`Addr`] for addresses), so the eBPF side compares and copies them without
//! swapping and nothing here has an ambiguous integer byte order. Counters and indices are
//! host-order integers.
#![no_std]

pub mod addr;
pub mod maps;
pub mod reason;

pub use addr::Addr;
pub use maps::*;
pub use reason::Reason;

/// Globals of the eBPF object that the loader sets before loading, by name.
pub mod globals {
    /// `u32`, 1 when the kernel's `bpf_redirect_neigh` takes a next hop (5.11 and later);
    /// 0 makes the programs let the kernel look the route up instead.
    pub const NEXTHOP_PARAMS: &str = "NEXTHOP_PARAMS";
    /// `u64`, the cookie of the network namespace portmap serves: the socket programs leave
    /// sockets of other namespaces alone (a cgroup spans namespaces). 0 matches every one,
    /// for kernels that cannot tell the loader its cookie (before 5.14).
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
}

/// IP protocol numbers as they appear in the IPv4 `protocol` / IPv6 `next header` field.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}
