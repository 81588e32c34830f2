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
pub use portmap_common::Addr;
use portmap_common::proto;

/// A big-endian constant as a native load of its wire bytes reads it.
pub const fn wire16(value: u16) -> u16 {
    u16::from_ne_bytes(value.to_be_bytes())
}

const ETH_P_IP: u16 = wire16(0x0800);
const ETH_P_IPV6: u16 = wire16(0x86dd);
const ETH_P_8021Q: u16 = wire16(0x8100);
const ETH_P_8021AD: u16 = wire16(0x88a8);
/// The IPv4 "more fragments" flag and fragment offset.
const IP_MF_OFFSET: u16 = wire16(0x3fff);
const IP_OFFSET: u16 = wire16(0x1fff);
/// IPv6's fragment offset within the fragment header's 16-bit word (the low 3 bits are flags).
const IP6_OFFSET: u16 = wire16(0xfff8);
const IPPROTO_FRAGMENT: u8 = 44;
const VLAN_HLEN: usize = 4;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// An ICMP error: 8 bytes of ICMP header, then the start of the offending packet.
const ICMP_HLEN: usize = 8;

/// An address as it sits in a header: 2-byte aligned (frames start so), so that reading or
/// writing it moves 16-bit words, not bytes.
#[repr(C, align(2))]
pub struct WireAddr<const N: usize>([u8; N]);

impl<const N: usize> WireAddr<N> {
    #[inline(always)]
    pub fn get(&self) -> Addr<N> {
        Addr(self.0)
    }

    #[inline(always)]
    pub fn set(&mut self, addr: &Addr<N>) {
        self.0 = addr.0;
    }
}

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
    pub src: WireAddr<4>,
    pub dst: WireAddr<4>,
}

/// The fixed IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vcf: [u16; 2],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: WireAddr<16>,
    pub dst: WireAddr<16>,
}

/// IPv6's fragment extension header.
#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    pub offset_flags: u16,
    pub id: [u16; 2],
}

const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(size_of::<Ipv6FragHdr>() == 8);

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

/// Why a frame is not an IP packet that can be translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotIp,
    /// IPv4 options, or IPv6 extension headers other than one fragment header.
    IpOptions,
    NotTcpUdp,
    Truncated,
}

/// Where a packet stands among its datagram's pieces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A datagram on its own.
    Whole,
    /// The first fragment: it carries the ports.
    First,
    /// A later fragment: no ports, only what its first fragment's translation says.
    Later,
}

/// An IP packet whose headers are proven to lie inside the frame.
///
/// Holds pointers (for reads and direct writes) and offsets (for skb helpers, which invalidate
/// pointers): both describe the same bytes.
#[repr(C)]
pub struct Packet {
    /// The fixed IP header.
    pub l3: *mut u8,
    /// The TCP, UDP or ICMP header: at least [`TCP_HLEN`], [`UDP_HLEN`] or [`ICMP_HLEN`] bytes
    /// are in the frame. For a [`Piece::Later`] fragment, which has none, the IP header.
    pub l4: *mut Ports,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: u32,
    /// Offset of the transport header from the start of the frame.
    pub l4_off: u32,
    /// The transport protocol (after any IPv6 fragment header).
    pub proto: u8,
    /// Whether an 802.1Q/802.1ad tag sits between Ethernet and IP.
    pub vlan_tagged: bool,
    pub piece: Piece,
    /// The datagram's identification, for fragments.
    pub id: [u8; 4],
    /// The frame's end, as the parser saw it.
    pub end: usize,
}

impl Packet {
    /// A slot for [`ip`] to fill in.
    #[inline(always)]
    pub const fn empty() -> Self {
        Self {
            l3: core::ptr::null_mut(),
            l4: core::ptr::null_mut(),
            l3_off: 0,
            l4_off: 0,
            proto: 0,
            vlan_tagged: false,
            piece: Piece::Whole,
            id: [0; 4],
            end: 0,
        }
    }

    /// A `T` `off` bytes into the transport header, if the frame holds all of it.
    ///
    /// The parser checked the header's length for its protocol, but a verifier (5.10's) does
    /// not always carry that per-protocol check to code that branches on the protocol again: a
    /// read past the 8 bytes every header has is checked again here, where it happens.
    #[inline(always)]
    pub fn l4_at<T>(&self, off: usize) -> Option<*mut T> {
        let at = self.l4 as usize + off;
        (at + size_of::<T>() <= self.end).then_some(at as *mut T)
    }
}

/// An address and port as loaded from the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<const N: usize> {
    pub addr: Addr<N>,
    /// Network byte order, as loaded.
    pub port: u16,
}

impl<const N: usize> Endpoint<N> {
    #[inline(always)]
    pub fn port_bytes(&self) -> [u8; 2] {
        self.port.to_ne_bytes()
    }
}

/// What a rewrite puts in a packet: an address borrowed from where it is kept (a map value, a
/// key being built), so that it is loaded where it is written rather than carried in registers
/// across helper calls, and a port as on the wire.
#[derive(Clone, Copy)]
pub struct To<'a, const N: usize> {
    pub addr: &'a Addr<N>,
    pub port: [u8; 2],
}

impl<const N: usize> To<'_, N> {
    /// The port as a native load of its wire bytes.
    #[inline(always)]
    pub fn port(&self) -> u16 {
        u16::from_ne_bytes(self.port)
    }
}

/// The IP version of a parsed packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V6,
}

/// A pointer to a `T` at `off` bytes into the frame, if all of it lies inside.
#[inline(always)]
pub fn ptr_at<T>(frame: &impl Frame, off: usize) -> Result<*mut T, Refusal> {
    let start = frame.data() + off;
    if start + size_of::<T>() > frame.data_end() {
        return Err(Refusal::Truncated);
    }
    Ok(start as *mut T)
}

/// Finds the IP and transport headers behind Ethernet and at most one VLAN tag.
///
/// IPv4 options and IPv6 extension headers (but a fragment header) are refused up front, as
/// Katran does, so that every later offset is a constant the verifier can follow.
///
/// The packet is written to `pkt`, a slot the caller owns and hands on by reference: built in
/// place, its pointers stay whole 64-bit stores, as the verifier wants a spilled packet pointer
/// (moved out of an enum, LLVM split them into 32-bit halves, which it rejects).
#[inline(always)]
pub fn ip(frame: &impl Frame, pkt: &mut Packet) -> Result<Version, Refusal> {
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
        ETH_P_IP => v4(frame, pkt, l3_off, vlan_tagged).map(|()| Version::V4),
        ETH_P_IPV6 => v6(frame, pkt, l3_off, vlan_tagged).map(|()| Version::V6),
        _ => Err(Refusal::NotIp),
    }
}

#[inline(always)]
fn v4(
    frame: &impl Frame,
    pkt: &mut Packet,
    l3_off: usize,
    vlan_tagged: bool,
) -> Result<(), Refusal> {
    let hdr: *mut Ipv4Hdr = ptr_at(frame, l3_off)?;
    // SAFETY: `ptr_at` proved the 20-byte IPv4 header is inside the frame.
    let (vihl, frag, proto, id) = unsafe { ((*hdr).vihl, (*hdr).frag, (*hdr).proto, (*hdr).id) };
    if vihl != 0x45 {
        // Version 4 with IHL 5 only; anything else has options or is not IPv4.
        return Err(Refusal::IpOptions);
    }
    let piece = if frag & IP_MF_OFFSET == 0 {
        Piece::Whole
    } else if frag & IP_OFFSET == 0 {
        Piece::First
    } else {
        Piece::Later
    };
    let id = id.to_ne_bytes();
    transport(
        frame,
        pkt,
        l3_off,
        l3_off + size_of::<Ipv4Hdr>(),
        proto,
        piece,
        [id[0], id[1], 0, 0],
        vlan_tagged,
    )
}

#[inline(always)]
fn v6(
    frame: &impl Frame,
    pkt: &mut Packet,
    l3_off: usize,
    vlan_tagged: bool,
) -> Result<(), Refusal> {
    let hdr: *mut Ipv6Hdr = ptr_at(frame, l3_off)?;
    // SAFETY: `ptr_at` proved the 40-byte IPv6 header is inside the frame.
    let next = unsafe { (*hdr).next_hdr };
    let l4_off = l3_off + size_of::<Ipv6Hdr>();
    if next != IPPROTO_FRAGMENT {
        return transport(
            frame,
            pkt,
            l3_off,
            l4_off,
            next,
            Piece::Whole,
            [0; 4],
            vlan_tagged,
        );
    }
    let frag: *mut Ipv6FragHdr = ptr_at(frame, l4_off)?;
    // SAFETY: bounds-checked just above.
    let (next, offset_flags, id) = unsafe { ((*frag).next_hdr, (*frag).offset_flags, (*frag).id) };
    let piece = if offset_flags & IP6_OFFSET != 0 {
        Piece::Later
    } else {
        Piece::First
    };
    // SAFETY: same size, any bit pattern is valid for both.
    let id = unsafe { core::mem::transmute::<[u16; 2], [u8; 4]>(id) };
    let l4_off = l4_off + size_of::<Ipv6FragHdr>();
    transport(frame, pkt, l3_off, l4_off, next, piece, id, vlan_tagged)
}

/// The transport header at `l4_off`, bounds-checked for what the programs read of it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transport(
    frame: &impl Frame,
    pkt: &mut Packet,
    l3_off: usize,
    l4_off: usize,
    proto: u8,
    piece: Piece,
    id: [u8; 4],
    vlan_tagged: bool,
) -> Result<(), Refusal> {
    let l3 = (frame.data() + l3_off) as *mut u8;
    let l4: *mut Ports = match (piece, proto) {
        // A later fragment's payload is the middle of a datagram, not a header. It gets the IP
        // header instead of a null: never read as ports, but a valid pointer to 8 checked
        // bytes, so that no verifier (5.10's does) finds a path reading through a null.
        (Piece::Later, proto::TCP | proto::UDP) => l3 as *mut Ports,
        (_, proto::TCP) => ptr_at::<[u8; TCP_HLEN]>(frame, l4_off)? as *mut Ports,
        (_, proto::UDP) => ptr_at::<[u8; UDP_HLEN]>(frame, l4_off)? as *mut Ports,
        (Piece::Whole, proto::ICMP | proto::ICMPV6) => {
            ptr_at::<[u8; ICMP_HLEN]>(frame, l4_off)? as *mut Ports
        }
        _ => return Err(Refusal::NotTcpUdp),
    };
    *pkt = Packet {
        l3,
        l4,
        l3_off: l3_off as u32,
        l4_off: l4_off as u32,
        proto,
        vlan_tagged,
        piece,
        id,
        end: frame.data_end(),
    };
    Ok(())
}

/// Makes sure the headers [`ip`] reads are in an skb's linear part, where direct packet access
/// can see them. False when the kernel cannot (the packet is then left alone).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) -> bool {
    let want = HEADERS_MAX.min(ctx.len());
    ((ctx.data_end() - ctx.data()) as u32) >= want || ctx.pull_data(want).is_ok()
}

/// How many bytes from the start of the frame the parsers may read: a tagged Ethernet header,
/// an IPv6 header with a fragment header, an ICMP header and the offending packet's IPv6 and
/// TCP headers inside it (ICMP errors are parsed that deep).
pub const HEADERS_MAX: u32 = (size_of::<EthHdr>()
    + VLAN_HLEN
    + size_of::<Ipv6Hdr>()
    + size_of::<Ipv6FragHdr>()
    + ICMP_HLEN
    + size_of::<Ipv6Hdr>()
    + TCP_HLEN) as u32;
