//! Header parsing shared by the XDP and TC programs. It finds the headers and bounds-checks every
//! read; it decides nothing, except to refuse what no program here translates.
//!
//! Multi-byte fields are read as native words holding the wire bytes, as the kernel's `__be16`
//! and `__be32` are: they are copied, compared and checksummed (RFC 1071 sums do not care about
//! byte order) but never interpreted, so nothing is swapped on the fast path. Frames start
//! 2-byte aligned in every driver and in the skb path, and so do these 16-bit fields.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::eth::EthHdr;
use portmap_common::proto;

/// A big-endian constant as a native load of its wire bytes reads it.
const fn wire16(value: u16) -> u16 {
    u16::from_ne_bytes(value.to_be_bytes())
}

const ETH_P_IP: u16 = wire16(0x0800);
const ETH_P_IPV6: u16 = wire16(0x86dd);
const ETH_P_8021Q: u16 = wire16(0x8100);
const ETH_P_8021AD: u16 = wire16(0x88a8);
/// The IPv4 "more fragments" flag and fragment offset.
const IP_MF_OFFSET: u16 = wire16(0x3fff);
pub const ETH_HLEN: u32 = size_of::<EthHdr>() as u32;
const VLAN_HLEN: usize = 4;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// The IPv4 header without options, fields as loaded (see the module docs).
#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: [u16; 2],
    pub dst: [u16; 2],
}

const _: () = assert!(size_of::<Ipv4Hdr>() == 20);

/// The ports that open both TCP and UDP headers.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

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
    pub l4: *mut Ports,
    /// Offset of the IPv4 header from the start of the frame.
    pub l3_off: u32,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: u32,
    pub proto: u8,
    /// Whether an 802.1Q/802.1ad tag sits between Ethernet and IPv4.
    pub vlan_tagged: bool,
}

/// An IPv4 address and port as loaded from the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u16; 2],
    pub port: u16,
}

impl Endpoint {
    /// From the byte arrays of the map layouts, which hold the same wire bytes.
    #[inline(always)]
    pub fn from_wire(addr: [u8; 4], port: [u8; 2]) -> Self {
        Self {
            // SAFETY: same size, and any bit pattern is valid for both.
            addr: unsafe { core::mem::transmute::<[u8; 4], [u16; 2]>(addr) },
            port: u16::from_ne_bytes(port),
        }
    }

    #[inline(always)]
    pub fn addr_bytes(&self) -> [u8; 4] {
        // SAFETY: as in `from_wire`.
        unsafe { core::mem::transmute::<[u16; 2], [u8; 4]>(self.addr) }
    }

    #[inline(always)]
    pub fn port_bytes(&self) -> [u8; 2] {
        self.port.to_ne_bytes()
    }
}

impl Ipv4L4 {
    #[inline(always)]
    pub fn src(&self) -> Endpoint {
        // SAFETY: `ip` and `l4` were bounds-checked by `ipv4_l4` for the whole header.
        unsafe {
            Endpoint {
                addr: (*self.ip).src,
                port: (*self.l4).src,
            }
        }
    }

    #[inline(always)]
    pub fn dst(&self) -> Endpoint {
        // SAFETY: as in `src`.
        unsafe {
            Endpoint {
                addr: (*self.ip).dst,
                port: (*self.l4).dst,
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
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_off = size_of::<EthHdr>();
    let mut vlan_tagged = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The tag is TCI (2 bytes) then the inner ethertype (2 bytes).
        let inner: *mut u16 = ptr_at(frame, l3_off + 2)?;
        // SAFETY: bounds-checked just above.
        ether_type = unsafe { *inner };
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
    let (vihl, frag, ip_proto) = unsafe { ((*ip).vihl, (*ip).frag, (*ip).proto) };
    if vihl != 0x45 {
        // Version 4 with IHL 5 only; anything else has options or is not IPv4.
        return Err(Refusal::IpOptions);
    }
    if frag & IP_MF_OFFSET != 0 {
        return Err(Refusal::Fragment);
    }

    let l4_off = l3_off + size_of::<Ipv4Hdr>();
    let l4: *mut Ports = match ip_proto {
        proto::TCP => ptr_at::<[u8; TCP_HLEN]>(frame, l4_off)? as *mut Ports,
        proto::UDP => ptr_at::<[u8; UDP_HLEN]>(frame, l4_off)? as *mut Ports,
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
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return None;
    }
    ptr_at(frame, size_of::<EthHdr>()).ok()
}

/// Makes sure the headers [`ipv4_l4`] reads are in an skb's linear part, where direct packet
/// access can see them. False when the kernel cannot (the packet is then left alone).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) -> bool {
    let want = HEADERS_MAX.min(ctx.len());
    ((ctx.data_end() - ctx.data()) as u32) >= want || ctx.pull_data(want).is_ok()
}

/// How many bytes from the start of the frame the parsers above may read: enough for a tagged
/// Ethernet header, an IPv4 header without options and a TCP header.
pub const HEADERS_MAX: u32 =
    (size_of::<EthHdr>() + VLAN_HLEN + size_of::<Ipv4Hdr>() + TCP_HLEN) as u32;
