//! Header parsing shared by the XDP and TC programs. It finds the headers and bounds-checks every
//! read; it decides nothing, except to refuse what no program here translates.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use portmap_common::proto;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_HLEN: u32 = size_of::<EthHdr>() as u32;
const VLAN_HLEN: usize = 4;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// The IPv4 "more fragments" flag and fragment offset, as one big-endian word.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// The bytes of a frame, however the program type exposes them. Both XDP and TC (at ingress,
/// where `cls_bpf` pushes the MAC header back) start at the Ethernet header.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// Why a frame is not an IPv4 TCP/UDP packet that can be translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotIp,
    Ipv6,
    IpOptions,
    Fragment,
    NotTcpUdp,
    Truncated,
}

/// An untagged-or-single-tagged IPv4 packet without options or fragmentation, carrying TCP or
/// UDP, with every header it names proven to lie inside the frame.
///
/// Holds pointers (for reads and direct writes) and offsets (for skb helpers, which invalidate
/// pointers): both describe the same bytes.
pub struct Ipv4L4 {
    pub ip: *mut Ipv4Hdr,
    /// The TCP or UDP header; at least [`TCP_HLEN`] or [`UDP_HLEN`] bytes are in the frame.
    pub l4: *mut u8,
    /// Offset of the IPv4 header from the start of the frame.
    pub l3_off: u32,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: u32,
    pub proto: u8,
    /// Whether an 802.1Q/802.1ad tag sits between Ethernet and IPv4.
    pub vlan_tagged: bool,
}

/// A frame's IPv4 address and port, as on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 4],
    pub port: [u8; 2],
}

impl Ipv4L4 {
    #[inline(always)]
    pub fn src(&self) -> Endpoint {
        // SAFETY: `ip` and `l4` were bounds-checked by `ipv4_l4` for the whole header.
        unsafe {
            Endpoint {
                addr: (*self.ip).src_addr,
                port: *(self.l4 as *const [u8; 2]),
            }
        }
    }

    #[inline(always)]
    pub fn dst(&self) -> Endpoint {
        // SAFETY: as in `src`.
        unsafe {
            Endpoint {
                addr: (*self.ip).dst_addr,
                port: *(self.l4.add(2) as *const [u8; 2]),
            }
        }
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        // SAFETY: as in `src`.
        unsafe { (*self.ip).ttl }
    }

    /// Offset of the L4 checksum field within the L4 header.
    #[inline(always)]
    pub fn l4_check_off(&self) -> usize {
        if self.proto == proto::TCP { 16 } else { 6 }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == proto::UDP
    }
}

/// A pointer to a `T` at `off` bytes into the frame, if all of it lies inside.
#[inline(always)]
fn ptr_at<T>(frame: &impl Frame, off: usize) -> Result<*mut T, Refusal> {
    let start = frame.data() + off;
    if start + size_of::<T>() > frame.data_end() {
        return Err(Refusal::Truncated);
    }
    Ok(start as *mut T)
}

/// Finds the IPv4 and TCP/UDP headers behind Ethernet and at most one VLAN tag.
///
/// Options and fragments are refused up front (as Katran does) so that every later offset is a
/// constant the verifier can follow; fragments need state to translate and come later.
#[inline(always)]
pub fn ipv4_l4(frame: &impl Frame) -> Result<Ipv4L4, Refusal> {
    let eth: *mut EthHdr = ptr_at(frame, 0)?;
    // SAFETY: `ptr_at` proved the Ethernet header is inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_off = size_of::<EthHdr>();
    let mut vlan_tagged = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The tag is TCI (2 bytes) then the inner ethertype (2 bytes).
        let inner: *mut [u8; 2] = ptr_at(frame, l3_off + 2)?;
        // SAFETY: bounds-checked just above.
        ether_type = u16::from_be_bytes(unsafe { *inner });
        l3_off += VLAN_HLEN;
        vlan_tagged = true;
    }
    match ether_type {
        ETH_P_IP => {}
        ETH_P_IPV6 => return Err(Refusal::Ipv6),
        _ => return Err(Refusal::NotIp),
    }

    let ip: *mut Ipv4Hdr = ptr_at(frame, l3_off)?;
    // SAFETY: `ptr_at` proved the 20-byte IPv4 header is inside the frame.
    let (vihl, frags, ip_proto) = unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto) };
    if vihl != 0x45 {
        // Version 4 with IHL 5 only; anything else has options or is not IPv4.
        return Err(Refusal::IpOptions);
    }
    if u16::from_be_bytes(frags) & IP_MF_OFFSET_MASK != 0 {
        return Err(Refusal::Fragment);
    }

    let l4_off = l3_off + size_of::<Ipv4Hdr>();
    let l4: *mut u8 = match ip_proto {
        proto::TCP => ptr_at::<[u8; TCP_HLEN]>(frame, l4_off)? as *mut u8,
        proto::UDP => ptr_at::<[u8; UDP_HLEN]>(frame, l4_off)? as *mut u8,
        _ => return Err(Refusal::NotTcpUdp),
    };

    Ok(Ipv4L4 {
        ip,
        l4,
        l3_off: l3_off as u32,
        l4_off: l4_off as u32,
        proto: ip_proto,
        vlan_tagged,
    })
}

/// The IPv4 header of an untagged frame, for programs that only touch L3.
#[inline(always)]
pub fn ipv4_untagged(frame: &impl Frame) -> Option<*mut Ipv4Hdr> {
    let eth: *mut EthHdr = ptr_at(frame, 0).ok()?;
    // SAFETY: bounds-checked by `ptr_at`.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return None;
    }
    ptr_at(frame, size_of::<EthHdr>()).ok()
}

/// How many bytes from the start of the frame the parsers above may read: enough for a tagged
/// Ethernet header, an IPv4 header without options and a TCP header.
pub const HEADERS_MAX: u32 =
    (size_of::<EthHdr>() + VLAN_HLEN + size_of::<Ipv4Hdr>() + TCP_HLEN) as u32;
