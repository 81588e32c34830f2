//! Handing flows back to conntrack: what makes a TCP connection survive portmap stopping when
//! conntrack already tracked it.
//!
//! A connection Docker's rules translated before portmap carried it has a conntrack entry, with
//! the sequence numbers of each side as conntrack last saw them. While portmap carries the
//! connection, netfilter sees none of its packets, so when portmap stops, the client's next
//! segment acknowledges data conntrack never saw; TCP window tracking calls it INVALID, the DNAT
//! is not applied, and the segment meets the host's own socket (docker-proxy), which resets the
//! connection. (A connection portmap carried from its start has no entry; conntrack picks it up
//! afresh, and Docker's DNAT rule translates it.)
//!
//! So once bindings are published, every TCP entry conntrack holds for them (destination NAT
//! to one of their host ports) is told to check that connection's windows liberally
//! (`IP_CT_TCP_FLAG_BE_LIBERAL` on both directions, what `nf_conntrack_tcp_be_liberal` does
//! for every connection, here for those alone). This goes through ctnetlink, as conntrackd
//! does, in the namespace portmap runs in.

use std::{
    collections::HashSet,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::{plan::Binding, spec::Proto};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const IPS_DST_NAT: u32 = 1 << 5;
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
const IPPROTO_TCP: u8 = 6;

/// Bounds on one pass, so that a huge table cannot hold the run loop for long.
const MAX_ENTRIES: usize = 1 << 20;
const MAX_TIME: Duration = Duration::from_secs(5);

/// A connection's original direction, as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

/// Marks every destination-NATed TCP connection to one of `bindings`' host ports (on
/// `local_addrs` for a binding on every address) to have its windows checked liberally; how
/// many it marked.
///
/// # Errors
///
/// When ctnetlink cannot be reached or answers with an error.
pub fn release(bindings: &[Binding], local_addrs: &[IpAddr]) -> io::Result<usize> {
    let local_v4: Vec<Ipv4Addr> = local_addrs
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    // IPv4 only: Docker's own IPv6 path is its proxy, which conntrack does not carry.
    let wanted: HashSet<(Ipv4Addr, u16)> = bindings
        .iter()
        .filter(|b| b.proto == Proto::Tcp && !b.is_ipv6())
        .flat_map(|b| match b.host_ip {
            Some(IpAddr::V4(ip)) => vec![(ip, b.host_port)],
            Some(IpAddr::V6(_)) => vec![],
            None => local_v4.iter().map(|ip| (*ip, b.host_port)).collect(),
        })
        .collect();
    if wanted.is_empty() || tracked_here() == 0 {
        return Ok(0);
    }
    let socket = Socket::open()?;
    let deadline = Instant::now() + MAX_TIME;
    let tuples: Vec<Tuple> = socket
        .dump(deadline)?
        .into_iter()
        .filter(|t| wanted.contains(&(t.dst, t.dport)))
        .collect();
    let mut marked = 0;
    for tuple in &tuples {
        if Instant::now() > deadline {
            break;
        }
        match socket.mark_liberal(tuple) {
            Ok(()) => marked += 1,
            // Ended meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(marked)
}

/// How many connections conntrack tracks in this namespace (0 without conntrack). A dump walks
/// the whole hash table, every namespace's buckets, for milliseconds of kernel time that no
/// priority can preempt; a namespace that tracks nothing (no NAT rules, no Docker) skips it.
fn tracked_here() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A ctnetlink socket.
struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid descriptor and a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: `message` is valid for its length; a zeroed sockaddr_nl addresses the kernel.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Every destination-NATed IPv4 TCP connection's original tuple.
    fn dump(&self, deadline: Instant) -> io::Result<Vec<Tuple>> {
        self.send(&message(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            &[],
        ))?;
        let mut tuples = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if Instant::now() > deadline || tuples.len() > MAX_ENTRIES {
                // What was read so far is used; the rest of the dump is left unread on a
                // socket about to close.
                return Ok(tuples);
            }
            let n = self.recv(&mut buf)?;
            for (kind, payload) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => return Ok(tuples),
                    NLMSG_ERROR => check_ack(payload)?,
                    _ => tuples.extend(nat_tcp_tuple(payload.get(NFGENMSG_LEN..).unwrap_or(&[]))),
                }
            }
        }
    }

    /// Sets the liberal flag on both directions of `tuple`'s connection.
    fn mark_liberal(&self, tuple: &Tuple) -> io::Result<()> {
        let flags = [IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL];
        let mut tcp = Vec::new();
        attr(&mut tcp, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &flags);
        attr(&mut tcp, CTA_PROTOINFO_TCP_FLAGS_REPLY, &flags);
        let mut protoinfo = Vec::new();
        attr(&mut protoinfo, CTA_PROTOINFO_TCP | NLA_F_NESTED, &tcp);
        let mut attrs = Vec::new();
        attr(
            &mut attrs,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &encode_tuple(tuple),
        );
        attr(&mut attrs, CTA_PROTOINFO | NLA_F_NESTED, &protoinfo);
        self.send(&message(
            IPCTNL_MSG_CT_NEW,
            NLM_F_REQUEST | NLM_F_ACK,
            2,
            &attrs,
        ))?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR {
                return check_ack(payload);
            }
        }
        Ok(())
    }
}

/// A ctnetlink request: header, `nfgenmsg` for IPv4, attributes.
fn message(kind: u16, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend((len as u32).to_ne_bytes());
    out.extend(((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0.
    out.extend([libc::AF_INET as u8, 0, 0, 0]);
    out.extend(attrs);
    out
}

/// Appends one attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend((len as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn encode_tuple(tuple: &Tuple) -> Vec<u8> {
    let mut ip = Vec::new();
    attr(&mut ip, CTA_IP_V4_SRC, &tuple.src.octets());
    attr(&mut ip, CTA_IP_V4_DST, &tuple.dst.octets());
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[IPPROTO_TCP]);
    attr(&mut proto, CTA_PROTO_SRC_PORT, &tuple.sport.to_be_bytes());
    attr(&mut proto, CTA_PROTO_DST_PORT, &tuple.dport.to_be_bytes());
    let mut out = Vec::new();
    attr(&mut out, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut out, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    out
}

/// The netlink messages in `buf`: (type, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push((kind, &buf[NLMSG_HDRLEN..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The attributes in `buf`: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// The original tuple of a conntrack entry (its attributes), if it is IPv4 TCP with
/// destination NAT.
fn nat_tcp_tuple(entry: &[u8]) -> Option<Tuple> {
    let entry = attrs(entry);
    let status = u32::from_be_bytes(find(&entry, CTA_STATUS)?.try_into().ok()?);
    if status & IPS_DST_NAT == 0 {
        return None;
    }
    let orig = attrs(find(&entry, CTA_TUPLE_ORIG)?);
    let ip = attrs(find(&orig, CTA_TUPLE_IP)?);
    let proto = attrs(find(&orig, CTA_TUPLE_PROTO)?);
    if find(&proto, CTA_PROTO_NUM)? != [IPPROTO_TCP] {
        return None;
    }
    let v4 = |kind| -> Option<Ipv4Addr> {
        let octets: [u8; 4] = find(&ip, kind)?.try_into().ok()?;
        Some(Ipv4Addr::from(octets))
    };
    let port =
        |kind| -> Option<u16> { Some(u16::from_be_bytes(find(&proto, kind)?.try_into().ok()?)) };
    Some(Tuple {
        src: v4(CTA_IP_V4_SRC)?,
        dst: v4(CTA_IP_V4_DST)?,
        sport: port(CTA_PROTO_SRC_PORT)?,
        dport: port(CTA_PROTO_DST_PORT)?,
    })
}

/// An `NLMSG_ERROR` payload: an error code, 0 for an acknowledgement.
fn check_ack(payload: &[u8]) -> io::Result<()> {
    let code = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes);
    if code < 0 {
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuple_survives_encoding_as_an_entry() {
        let tuple = Tuple {
            src: Ipv4Addr::new(198, 51, 100, 2),
            dst: Ipv4Addr::new(198, 51, 100, 1),
            sport: 40_000,
            dport: 8080,
        };
        let mut entry = Vec::new();
        attr(
            &mut entry,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &encode_tuple(&tuple),
        );
        let mut with_status = entry.clone();
        attr(
            &mut with_status,
            CTA_STATUS,
            &(IPS_DST_NAT | 0x8).to_be_bytes(),
        );
        assert_eq!(nat_tcp_tuple(&with_status), Some(tuple));
        attr(&mut entry, CTA_STATUS, &0x8u32.to_be_bytes());
        assert_eq!(nat_tcp_tuple(&entry), None, "not destination-NATed");
    }

    #[test]
    fn messages_are_split_and_padded() {
        let one = message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST, 7, &[1, 2, 3, 4]);
        assert_eq!(one.len(), 24);
        assert_eq!(u32::from_ne_bytes(one[0..4].try_into().unwrap()), 24);
        let mut two = one.clone();
        two.extend(&one);
        let split = messages(&two);
        assert_eq!(split.len(), 2);
        assert_eq!(split[1].1, &[libc::AF_INET as u8, 0, 0, 0, 1, 2, 3, 4]);
        let mut padded = Vec::new();
        attr(&mut padded, 1, &[9]);
        attr(&mut padded, 2, &[8, 7]);
        assert_eq!(padded.len(), 16);
        assert_eq!(attrs(&padded), [(1, &[9][..]), (2, &[8, 7][..])]);
    }
}
