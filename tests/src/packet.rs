//! Frames for the packet tests: built with correct checksums, and read back with every
//! checksum verified from scratch (RFC 1071), independently of the code under test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
/// The IPv6 next-header value that announces a fragment header.
pub const IPV6_FRAGMENT: u8 = 44;

/// An IPv4 TCP or UDP packet to put in a frame.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset, as the 16-bit header word.
    pub frag: u16,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
    /// For UDP: send checksum 0 ("none").
    pub udp_no_checksum: bool,
}

impl V4 {
    pub fn tcp_syn(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            src,
            dst,
            proto: TCP,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000, // DF
            options: Vec::new(),
            vlan: None,
            payload: Vec::new(),
            udp_no_checksum: false,
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self {
            proto: UDP,
            payload: payload.to_vec(),
            ..Self::tcp_syn(src, dst)
        }
    }

    /// The L4 header and payload, with a correct checksum.
    fn l4(&self) -> Vec<u8> {
        let mut l4 = l4_unchecked(self.src.port(), self.dst.port(), self.proto, &self.payload);
        if !(self.proto == UDP && self.udp_no_checksum) {
            let pseudo = pseudo_sum(*self.src.ip(), *self.dst.ip(), self.proto, l4.len());
            fill_l4_check(&mut l4, self.proto, pseudo);
        }
        l4
    }

    /// The IPv4 header and everything after it.
    pub fn ip_packet(&self) -> Vec<u8> {
        let l4 = self.l4();
        let fields = Ipv4Fields {
            src: *self.src.ip(),
            dst: *self.dst.ip(),
            proto: self.proto,
            ttl: self.ttl,
            id: self.id,
            frag: self.frag,
            options: &self.options,
        };
        let mut ip = fields.header(l4.len());
        ip.extend_from_slice(&l4);
        ip
    }

    /// The whole Ethernet frame, client to host.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.vlan, ETH_P_IP, &self.ip_packet())
    }
}

/// The fields of an IPv4 header that the builders choose; the rest (version, length,
/// checksum) follows from them.
struct Ipv4Fields<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    id: u16,
    frag: u16,
    options: &'a [u8],
}

impl Ipv4Fields<'_> {
    /// The header of a packet carrying `l4_len` bytes after it, with a correct checksum.
    fn header(&self, l4_len: usize) -> Vec<u8> {
        let ihl = 5 + self.options.len() / 4;
        let mut ip = vec![
            0x40 | ihl as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            self.ttl,
            self.proto,
            0,
            0,
        ];
        let total = (ihl * 4 + l4_len) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(self.options);
        set_ipv4_check(&mut ip);
        ip
    }
}

/// Zeroes then fills in the checksum of the IPv4 header `header` (exactly the header).
fn set_ipv4_check(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let check = !fold(add(0, header));
    header[10..12].copy_from_slice(&check.to_be_bytes());
}

/// A TCP SYN (no options) or UDP header with `payload`, checksum field zero. Anything but
/// TCP gets the UDP layout, which is what a test of an odd protocol number wants: ports first.
fn l4_unchecked(sport: u16, dport: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0u32.to_be_bytes()); // ack
        l4.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
        l4.extend_from_slice(&64240u16.to_be_bytes()); // window
        l4.extend_from_slice(&[0, 0]); // checksum
        l4.extend_from_slice(&[0, 0]); // urgent
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    l4
}

/// Where the checksum sits in the L4 header.
fn check_offset(proto: u8) -> usize {
    if proto == TCP { 16 } else { 6 }
}

/// Writes the checksum of `l4` (whose checksum field is zero) given its pseudo-header sum.
/// A UDP checksum that comes out as 0 goes out as 0xffff: 0 means "none" (RFC 768).
fn fill_l4_check(l4: &mut [u8], proto: u8, pseudo: u32) {
    let at = check_offset(proto);
    let mut check = !fold(add(pseudo, l4));
    if proto == UDP && check == 0 {
        check = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// The Ethernet frame, client to host, around an IP packet.
fn ethernet(vlan: Option<u16>, ether_type: u16, ip: &[u8]) -> Vec<u8> {
    let mut frame = eth_header(HOST_MAC, CLIENT_MAC, vlan);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(ip);
    frame
}

/// An IPv6 fragment header's fields (RFC 8200 4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6Frag {
    pub id: u32,
    /// Where this fragment's data starts in the fragmentable part, in 8-byte units.
    pub offset_units: u16,
    /// The M flag: more fragments follow.
    pub more: bool,
}

impl V6Frag {
    /// The 8-byte fragment header, announcing `next_header` after it.
    fn header(&self, next_header: u8) -> [u8; 8] {
        assert!(self.offset_units < 1 << 13, "fragment offset over 13 bits");
        let [o1, o2] = (self.offset_units << 3 | u16::from(self.more)).to_be_bytes();
        let [i1, i2, i3, i4] = self.id.to_be_bytes();
        [next_header, 0, o1, o2, i1, i2, i3, i4]
    }
}

/// An IPv6 TCP or UDP packet to put in a frame. There is no "no checksum" switch: the UDP
/// checksum is mandatory over IPv6 (RFC 8200 8.1). The flow label is 0; the addresses'
/// `flowinfo` and `scope_id` are ignored.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub proto: u8,
    pub hop_limit: u8,
    /// A fragment header between the IPv6 header and the L4 bytes (which stay whole: to
    /// split a datagram, use [`fragments_v6`]). With offset 0 and no M flag it is an atomic
    /// fragment (RFC 6946).
    pub frag: Option<V6Frag>,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
}

impl V6 {
    pub fn tcp_syn(src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        Self {
            src,
            dst,
            proto: TCP,
            hop_limit: 64,
            frag: None,
            vlan: None,
            payload: Vec::new(),
        }
    }

    pub fn udp(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Self {
        Self {
            proto: UDP,
            payload: payload.to_vec(),
            ..Self::tcp_syn(src, dst)
        }
    }

    /// The L4 header and payload, with a correct checksum over the IPv6 pseudo-header (the
    /// fragment header is not part of the upper-layer length).
    fn l4(&self) -> Vec<u8> {
        let mut l4 = l4_unchecked(self.src.port(), self.dst.port(), self.proto, &self.payload);
        let pseudo = pseudo_sum_v6(*self.src.ip(), *self.dst.ip(), self.proto, l4.len());
        fill_l4_check(&mut l4, self.proto, pseudo);
        l4
    }

    /// The IPv6 header and everything after it.
    pub fn ip_packet(&self) -> Vec<u8> {
        self.packet_around(self.frag, &self.l4())
    }

    /// The whole Ethernet frame, client to host.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.vlan, ETH_P_IPV6, &self.ip_packet())
    }

    /// This packet's IPv6 header, then a fragment header when `frag` is given, then `body`.
    fn packet_around(&self, frag: Option<V6Frag>, body: &[u8]) -> Vec<u8> {
        let ext_len = if frag.is_some() { 8 } else { 0 };
        let next = if frag.is_some() {
            IPV6_FRAGMENT
        } else {
            self.proto
        };
        let payload_len = u16::try_from(ext_len + body.len()).expect("IPv6 payload over 64 KiB");
        let mut ip = Vec::with_capacity(40 + ext_len + body.len());
        ip.extend_from_slice(&[0x60, 0, 0, 0]);
        ip.extend_from_slice(&payload_len.to_be_bytes());
        ip.extend_from_slice(&[next, self.hop_limit]);
        ip.extend_from_slice(&self.src.ip().octets());
        ip.extend_from_slice(&self.dst.ip().octets());
        if let Some(frag) = frag {
            ip.extend_from_slice(&frag.header(self.proto));
        }
        ip.extend_from_slice(body);
        ip
    }
}

/// How many bytes of data each fragment carries when `header_len` bytes of headers must fit
/// with it in `mtu`: a multiple of 8, since offsets count 8-byte units.
fn fragment_step(mtu: usize, header_len: usize) -> usize {
    let step = mtu.saturating_sub(header_len) / 8 * 8;
    assert!(
        step >= 8,
        "an MTU of {mtu} leaves no room for 8 bytes of data after {header_len} bytes of headers"
    );
    step
}

/// The IPv4 packets a router with next-hop MTU `mtu` would make of the whole datagram
/// `packet`: at most `mtu` bytes each, the same id, offsets in 8-byte units, MF on all but
/// the last. The first carries the L4 header, with the checksum of the whole datagram.
///
/// DF is cleared (a router could not have fragmented the datagram otherwise), and as Linux
/// does (`ip_options_fragment`), later fragments keep only the options whose "copied" bit is
/// set, the others overwritten with NOPs so every header keeps the same length.
///
/// # Panics
///
/// When `packet` is already a fragment, or `mtu` has no room for 8 bytes of data.
pub fn fragment_packets_v4(packet: &V4, mtu: usize) -> Vec<Vec<u8>> {
    assert_eq!(
        packet.frag & 0x3fff,
        0,
        "the datagram to fragment is a fragment already"
    );
    let whole = packet.ip_packet();
    let ihl = usize::from(whole[0] & 0x0f) * 4;
    let (first_header, data) = whole.split_at(ihl);
    let later_header = header_for_later_fragments_v4(first_header);
    let step = fragment_step(mtu, ihl);
    data.chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * step;
            let more = offset + chunk.len() < data.len();
            let header = if i == 0 { first_header } else { &later_header };
            ipv4_fragment(header, offset, more, chunk)
        })
        .collect()
}

/// [`fragment_packets_v4`], each in its frame.
pub fn fragments_v4(packet: &V4, mtu: usize) -> Vec<Vec<u8>> {
    let packets = fragment_packets_v4(packet, mtu);
    packets
        .iter()
        .map(|ip| ethernet(packet.vlan, ETH_P_IP, ip))
        .collect()
}

/// Fragment number `index` (from 0) of [`fragments_v4`] alone, to send out of order.
pub fn fragment_v4(packet: &V4, mtu: usize, index: usize) -> Vec<u8> {
    fragments_v4(packet, mtu).swap_remove(index)
}

/// The first fragment's header with the options that are not to be copied overwritten by
/// NOPs (RFC 791: the "copied" flag, the top bit of the option type).
fn header_for_later_fragments_v4(first: &[u8]) -> Vec<u8> {
    let mut header = first.to_vec();
    let mut at = 20;
    while at < header.len() {
        match header[at] {
            0 => break, // end of option list: the rest is padding
            1 => at += 1,
            kind => {
                let len = usize::from(*header.get(at + 1).expect("IPv4 option without a length"));
                assert!(
                    len >= 2 && at + len <= header.len(),
                    "bad IPv4 option length {len}"
                );
                if kind & 0x80 == 0 {
                    header[at..at + len].fill(1);
                }
                at += len;
            }
        }
    }
    header
}

/// One IPv4 fragment: `header` with its length, offset, MF and checksum set, then `data`.
fn ipv4_fragment(header: &[u8], offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = header.to_vec();
    let total = (header.len() + data.len()) as u16;
    let word = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&word.to_be_bytes());
    set_ipv4_check(&mut ip);
    ip.extend_from_slice(data);
    ip
}

/// The IPv6 packets a source with path MTU `mtu` would make of the whole datagram `packet`
/// (RFC 8200 4.5): each the IPv6 header, a fragment header with identification `id`, and at
/// most `mtu` bytes in all. The first carries the L4 header, with the checksum of the whole
/// datagram.
///
/// # Panics
///
/// When `packet` already has a fragment header, or `mtu` has no room for 8 bytes of data.
pub fn fragment_packets_v6(packet: &V6, id: u32, mtu: usize) -> Vec<Vec<u8>> {
    assert!(
        packet.frag.is_none(),
        "the datagram to fragment has a fragment header already"
    );
    let l4 = packet.l4();
    let step = fragment_step(mtu, 40 + 8);
    l4.chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * step;
            let frag = V6Frag {
                id,
                offset_units: (offset / 8) as u16,
                more: offset + chunk.len() < l4.len(),
            };
            packet.packet_around(Some(frag), chunk)
        })
        .collect()
}

/// [`fragment_packets_v6`], each in its frame.
pub fn fragments_v6(packet: &V6, id: u32, mtu: usize) -> Vec<Vec<u8>> {
    let packets = fragment_packets_v6(packet, id, mtu);
    packets
        .iter()
        .map(|ip| ethernet(packet.vlan, ETH_P_IPV6, ip))
        .collect()
}

/// Fragment number `index` (from 0) of [`fragments_v6`] alone, to send out of order.
pub fn fragment_v6(packet: &V6, id: u32, mtu: usize, index: usize) -> Vec<u8> {
    fragments_v6(packet, id, mtu).swap_remove(index)
}

/// The whole frame that the fragment frames `frames` (IPv4 or IPv6, in any order) make up:
/// the first fragment's Ethernet and IP headers (IPv4: flags and offset zeroed, length and
/// checksum recomputed; IPv6: the fragment header removed), then the data in offset order.
/// Read the fragments with [`read_ip`] first: this checks only that they belong together
/// and cover the datagram exactly once, and then [`read_ip`] on the result verifies the L4
/// checksum over the whole datagram.
///
/// # Panics
///
/// When a frame is not a fragment, they are of different datagrams, or there is a gap, an
/// overlap, or no single last fragment.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut pieces: Vec<(&[u8], usize, Net)> = frames
        .iter()
        .map(|frame| {
            let start = ip_start(frame).1;
            (frame.as_slice(), start, parse_frame(frame))
        })
        .collect();
    pieces.sort_by_key(|(_, _, net)| net.frag.map(|frag| frag.offset_units));
    let (first_frame, first_start, first) = pieces.first().expect("no fragments to reassemble");
    let id = first.frag.expect("a whole packet among the fragments").id;
    let mut data = Vec::new();
    for (i, (_, _, net)) in pieces.iter().enumerate() {
        let frag = net.frag.expect("a whole packet among the fragments");
        assert_eq!(
            (net.src, net.dst, net.proto, frag.id),
            (first.src, first.dst, first.proto, id),
            "a fragment of another datagram"
        );
        assert_eq!(frag.offset_bytes(), data.len(), "a gap or an overlap");
        assert_eq!(
            frag.more,
            i + 1 < pieces.len(),
            "MF wrong for fragment {i} by offset"
        );
        data.extend_from_slice(net.l4);
    }
    let mut frame = first_frame[..*first_start].to_vec();
    frame.extend_from_slice(&unfragmented_header(
        &first_frame[*first_start..],
        first,
        data.len(),
    ));
    frame.extend_from_slice(&data);
    frame
}

/// The IP header of the whole datagram whose first fragment is `ip`, for `data_len` bytes
/// of upper layer.
fn unfragmented_header(ip: &[u8], first: &Net, data_len: usize) -> Vec<u8> {
    if first.src.is_ipv4() {
        let mut header = ip[..first.header_len].to_vec();
        let total = u16::try_from(header.len() + data_len).expect("datagram over 64 KiB");
        header[2..4].copy_from_slice(&total.to_be_bytes());
        header[6..8].copy_from_slice(&[0, 0]);
        set_ipv4_check(&mut header);
        header
    } else {
        assert_eq!(
            ip[6], IPV6_FRAGMENT,
            "extension headers before the fragment header"
        );
        let mut header = ip[..40].to_vec();
        let payload_len = u16::try_from(data_len).expect("datagram over 64 KiB");
        header[4..6].copy_from_slice(&payload_len.to_be_bytes());
        header[6] = first.proto;
        header
    }
}

/// How much of the offending packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quote {
    /// The IP header (IPv6: with its fragment header, if any) and the first 8 bytes of data,
    /// as RFC 792 asks: the ports, and for UDP the length and checksum, but not TCP's.
    HeaderPlus8,
    /// As much as keeps the whole error within this many bytes of IP packet: 576 is what
    /// Linux does for ICMPv4 (RFC 1812 4.3.2.3, [`ICMP4_QUOTE_LIMIT`]), 1280 what RFC 4443
    /// 2.4 (c) asks of ICMPv6 ([`IPV6_MIN_MTU`]).
    WithinPacket(usize),
    /// The first this many bytes (all of them when the packet is shorter).
    Bytes(usize),
}

/// The size of IP packet Linux keeps an ICMPv4 error within (`icmp_send`).
pub const ICMP4_QUOTE_LIMIT: usize = 576;
/// The IPv6 minimum MTU, which an ICMPv6 error must fit (RFC 4443 2.4 (c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// The first bytes of `quoted` that `quote` asks for, under an outer header of
/// `outer_header_len` bytes.
fn quoted_part(quote: Quote, quoted: &[u8], outer_header_len: usize) -> &[u8] {
    let len = match quote {
        Quote::HeaderPlus8 => parse_ip(quoted, true).header_len + 8,
        Quote::WithinPacket(limit) => limit.saturating_sub(outer_header_len + 8),
        Quote::Bytes(len) => len,
    };
    &quoted[..len.min(quoted.len())]
}

/// An ICMP message: type, code, checksum (over `pseudo`, 0 for ICMPv4, and the message),
/// the 4 type-specific bytes, then the quote.
fn icmp_message(icmp_type: u8, code: u8, rest: [u8; 4], quote: &[u8], pseudo: u32) -> Vec<u8> {
    let mut msg = vec![icmp_type, code, 0, 0];
    msg.extend_from_slice(&rest);
    msg.extend_from_slice(quote);
    let check = !fold(add(pseudo, &msg));
    msg[2..4].copy_from_slice(&check.to_be_bytes());
    msg
}

/// An ICMPv4 error about `quoted`, from `src` (a router, or the destination host) to `dst`.
#[derive(Clone, Debug)]
pub struct Icmp4Error {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// ICMP header bytes 4-7: unused (zero), or for "fragmentation needed" the next-hop MTU
    /// in bytes 6-7 (RFC 1191).
    pub rest: [u8; 4],
    /// The offending IP packet, whole (e.g. [`V4::ip_packet`]); `quote` says how much of it
    /// the error carries.
    pub quoted: Vec<u8>,
    pub quote: Quote,
    pub vlan: Option<u16>,
}

impl Icmp4Error {
    /// An error of any type and code, quoting the IP header and 8 bytes.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, quoted: &[u8]) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            icmp_type,
            code,
            rest: [0; 4],
            quoted: quoted.to_vec(),
            quote: Quote::HeaderPlus8,
            vlan: None,
        }
    }

    /// Destination unreachable, fragmentation needed and DF set (3/4), the PMTU signal.
    pub fn frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, quoted: &[u8]) -> Self {
        let [m1, m2] = mtu.to_be_bytes();
        Self {
            rest: [0, 0, m1, m2],
            ..Self::new(src, dst, 3, 4, quoted)
        }
    }

    /// Destination unreachable, port unreachable (3/3).
    pub fn port_unreachable(src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Self {
        Self::new(src, dst, 3, 3, quoted)
    }

    /// Time exceeded in transit (11/0).
    pub fn time_exceeded(src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Self {
        Self::new(src, dst, 11, 0, quoted)
    }

    /// The IPv4 header and the ICMP message.
    pub fn ip_packet(&self) -> Vec<u8> {
        let quote = quoted_part(self.quote, &self.quoted, 20);
        let msg = icmp_message(self.icmp_type, self.code, self.rest, quote, 0);
        let fields = Ipv4Fields {
            src: self.src,
            dst: self.dst,
            proto: ICMP,
            ttl: self.ttl,
            id: 0,
            frag: 0,
            options: &[],
        };
        let mut ip = fields.header(msg.len());
        ip.extend_from_slice(&msg);
        ip
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.vlan, ETH_P_IP, &self.ip_packet())
    }
}

/// An ICMPv6 error about `quoted`, from `src` to `dst`.
#[derive(Clone, Debug)]
pub struct Icmp6Error {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// ICMPv6 header bytes 4-7: unused (zero), or for "packet too big" the MTU.
    pub rest: [u8; 4],
    /// The offending IP packet, whole (e.g. [`V6::ip_packet`]).
    pub quoted: Vec<u8>,
    pub quote: Quote,
    pub vlan: Option<u16>,
}

impl Icmp6Error {
    /// An error of any type and code, quoting as much as fits in 1280 bytes (RFC 4443).
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, code: u8, quoted: &[u8]) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
            icmp_type,
            code,
            rest: [0; 4],
            quoted: quoted.to_vec(),
            quote: Quote::WithinPacket(IPV6_MIN_MTU),
            vlan: None,
        }
    }

    /// Destination unreachable (type 1) with `code`, e.g. 4 for port unreachable.
    pub fn dest_unreachable(src: Ipv6Addr, dst: Ipv6Addr, code: u8, quoted: &[u8]) -> Self {
        Self::new(src, dst, 1, code, quoted)
    }

    /// Packet too big (type 2), the PMTU signal, with the MTU in bytes 4-7.
    pub fn packet_too_big(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, quoted: &[u8]) -> Self {
        Self {
            rest: mtu.to_be_bytes(),
            ..Self::new(src, dst, 2, 0, quoted)
        }
    }

    /// Time exceeded, hop limit exceeded in transit (3/0).
    pub fn time_exceeded(src: Ipv6Addr, dst: Ipv6Addr, quoted: &[u8]) -> Self {
        Self::new(src, dst, 3, 0, quoted)
    }

    /// The IPv6 header and the ICMPv6 message, checksummed over the IPv6 pseudo-header.
    pub fn ip_packet(&self) -> Vec<u8> {
        let quote = quoted_part(self.quote, &self.quoted, 40);
        let pseudo = pseudo_sum_v6(self.src, self.dst, ICMPV6, 8 + quote.len());
        let msg = icmp_message(self.icmp_type, self.code, self.rest, quote, pseudo);
        let carrier = V6 {
            proto: ICMPV6,
            hop_limit: self.hop_limit,
            ..V6::tcp_syn(
                SocketAddrV6::new(self.src, 0, 0, 0),
                SocketAddrV6::new(self.dst, 0, 0, 0),
            )
        };
        carrier.packet_around(None, &msg)
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.vlan, ETH_P_IPV6, &self.ip_packet())
    }
}

fn eth_header(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    if let Some(vid) = vlan {
        frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame
}

/// A who-has ARP request.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = eth_header([0xff; 6], CLIENT_MAC, None);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// An IPv6 TCP SYN header chain (the payload is not checksummed: it must pass untouched).
pub fn ipv6_tcp_syn(dport: u16) -> Vec<u8> {
    let mut frame = eth_header(HOST_MAC, CLIENT_MAC, None);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, TCP, 64]);
    frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    frame
}

fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut sum = add(0, &src.octets());
    sum = add(sum, &dst.octets());
    sum += u32::from(proto);
    sum + len as u32
}

/// A frame read back, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ttl: u8,
    /// Whether the IPv4 header checksum sums to zero over the header.
    pub ip_check_ok: bool,
    pub l4_check: u16,
    /// Whether the L4 checksum is right over the pseudo-header, header and payload (a UDP
    /// checksum of 0 means "none" and counts as right).
    pub l4_check_ok: bool,
    pub payload: Vec<u8>,
}

/// Reads an Ethernet (optionally 802.1Q-tagged) IPv4 TCP/UDP frame.
///
/// # Panics
///
/// When the frame is not one; the message names the header that does not fit.
pub fn read(frame: &[u8]) -> Seen {
    let mut off = 12;
    let mut ether_type = u16::from_be_bytes([frame[off], frame[off + 1]]);
    off += 2;
    if ether_type == ETH_P_8021Q {
        ether_type = u16::from_be_bytes([frame[off + 2], frame[off + 3]]);
        off += 4;
    }
    assert_eq!(ether_type, ETH_P_IP, "frame is not IPv4: {frame:02x?}");
    let ip = &frame[off..];
    assert!(ip.len() >= 20, "frame doesn't fit an IPv4 header");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert!(
        ip.len() >= total,
        "frame shorter than the IPv4 total length"
    );
    let proto = ip[9];
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..total];
    let hdr = if proto == TCP { 20 } else { 8 };
    assert!(l4.len() >= hdr, "frame doesn't fit its L4 header");
    let check_at = if proto == TCP { 16 } else { 6 };
    let l4_check = u16::from_be_bytes([l4[check_at], l4[check_at + 1]]);
    let l4_sum = add(pseudo_sum(src_ip, dst_ip, proto, l4.len()), l4);
    Seen {
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([l4[2], l4[3]])),
        proto,
        ttl: ip[8],
        ip_check_ok: fold(add(0, &ip[..ihl])) == 0xffff,
        l4_check,
        l4_check_ok: (proto == UDP && l4_check == 0) || fold(l4_sum) == 0xffff,
        payload: l4[hdr..].to_vec(),
    }
}

/// A payload word that makes the UDP checksum of `packet`, once its destination is `rewritten`,
/// come out as zero, so a translator must send 0xffff. Returns the packet with that payload.
pub fn udp_whose_checksum_becomes_zero(packet: &V4, rewritten: SocketAddrV4) -> V4 {
    let mut after = packet.clone();
    after.dst = rewritten;
    after.payload = vec![0, 0];
    let l4 = after.l4();
    // Sum of everything but the checksum field and the payload word.
    let mut zeroed = l4.clone();
    zeroed[6] = 0;
    zeroed[7] = 0;
    let sum = fold(add(
        pseudo_sum(*after.src.ip(), *after.dst.ip(), UDP, zeroed.len()),
        &zeroed,
    ));
    // Adding `!sum` makes the total 0xffff, whose complement, the checksum, is 0.
    let word = !sum;
    V4 {
        payload: word.to_be_bytes().to_vec(),
        ..packet.clone()
    }
}

fn pseudo_sum_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> u32 {
    let mut sum = add(0, &src.octets());
    sum = add(sum, &dst.octets());
    sum = add(sum, &(len as u32).to_be_bytes());
    sum + u32::from(next_header)
}

/// The pseudo-header sum for either family (RFC 768/793 for IPv4, RFC 8200 8.1 for IPv6).
fn pseudo_sum_ip(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => pseudo_sum(src, dst, proto, len),
        (IpAddr::V6(src), IpAddr::V6(dst)) => pseudo_sum_v6(src, dst, proto, len),
        _ => panic!("a pseudo-header from {src} to {dst} mixes families"),
    }
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Fragment fields of a packet read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenFrag {
    /// The identification: 16 bits for IPv4, 32 for IPv6.
    pub id: u32,
    /// In 8-byte units, as on the wire.
    pub offset_units: u16,
    /// MF (IPv4), M (IPv6): more fragments follow.
    pub more: bool,
}

impl SeenFrag {
    pub fn offset_bytes(&self) -> usize {
        usize::from(self.offset_units) * 8
    }
}

/// An IPv4 or IPv6 frame read back, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenIp {
    /// With port 0 on a later fragment, which has no L4 header.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The upper-layer protocol: for IPv6, the one after the fragment header.
    pub proto: u8,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Whether the IPv4 header checksum sums to zero over the header; IPv6 has none: true.
    pub ip_check_ok: bool,
    /// IPv4 with MF or an offset; IPv6 with a fragment header (even an atomic one).
    pub frag: Option<SeenFrag>,
    /// The L4 checksum field, when the packet holds the L4 header (not on a later fragment).
    pub l4_check: Option<u16>,
    /// Whether the L4 checksum is right over the pseudo-header, header and payload; `None`
    /// for a fragment, whose checksum covers bytes it does not hold. A UDP checksum of 0
    /// means "none" over IPv4 (right), but is not allowed over IPv6 (wrong).
    pub l4_check_ok: Option<bool>,
    /// What follows the L4 header; for a later fragment, all its data.
    pub payload: Vec<u8>,
}

/// Reads an Ethernet (optionally 802.1Q-tagged) IPv4 or IPv6 TCP/UDP frame, whole or a
/// fragment.
///
/// # Panics
///
/// When the frame is not one; the message names the header that does not fit.
pub fn read_ip(frame: &[u8]) -> SeenIp {
    let net = parse_frame(frame);
    let l4 = read_l4(&net);
    SeenIp {
        src: SocketAddr::new(net.src, l4.sport),
        dst: SocketAddr::new(net.dst, l4.dport),
        proto: net.proto,
        ttl: net.ttl,
        ip_check_ok: net.ip_check_ok,
        frag: net.frag,
        l4_check: l4.check,
        l4_check_ok: l4.check_ok,
        payload: l4.payload.to_vec(),
    }
}

/// An ICMP or ICMPv6 error read back, with its checksums and its quote's verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenIcmpError {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// The MTU an ICMPv4 "fragmentation needed" (3/4, bytes 6-7) or an ICMPv6 "packet too
    /// big" (type 2, bytes 4-7) announces.
    pub mtu: Option<u32>,
    /// Whether the outer IPv4 header checksum is right; true for IPv6.
    pub ip_check_ok: bool,
    /// Whether the checksum is right over the whole ICMP message (ICMPv6: and the IPv6
    /// pseudo-header).
    pub icmp_check_ok: bool,
    pub quoted: SeenQuote,
}

/// The packet an ICMP error quotes, as far as the quote goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenQuote {
    /// With port 0 when the quoted packet is a later fragment.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub ttl: u8,
    /// Whether the quoted IPv4 header checksum is right; true for IPv6.
    pub ip_check_ok: bool,
    pub frag: Option<SeenFrag>,
    /// The L4 checksum field, when the quote reaches it (an 8-byte quote of TCP does not).
    pub l4_check: Option<u16>,
    /// Whether the L4 checksum is right; `None` unless the quote holds the whole quoted
    /// datagram (check a cut one with [`expected_inner_l4_check`]).
    pub l4_check_ok: Option<bool>,
    /// The quote, as carried.
    pub bytes: Vec<u8>,
}

/// Reads an Ethernet (optionally 802.1Q-tagged) ICMPv4 or ICMPv6 error frame.
///
/// # Panics
///
/// When the frame is not one (an echo is not an error), or the quote does not reach the
/// quoted packet's ports.
pub fn read_icmp_error(frame: &[u8]) -> SeenIcmpError {
    let outer = parse_frame(frame);
    assert!(outer.whole_datagram(), "the ICMP error is fragmented");
    let v6 = outer.src.is_ipv6();
    assert_eq!(
        outer.proto,
        if v6 { ICMPV6 } else { ICMP },
        "frame is not ICMP"
    );
    let msg = outer.l4;
    assert!(msg.len() >= 8, "frame doesn't fit an ICMP header");
    let (icmp_type, code) = (msg[0], msg[1]);
    let is_error = if v6 {
        icmp_type < 128
    } else {
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    };
    assert!(is_error, "ICMP type {icmp_type} is not an error");
    let pseudo = if v6 {
        pseudo_sum_ip(outer.src, outer.dst, ICMPV6, msg.len())
    } else {
        0
    };
    let mtu = match (v6, icmp_type, code) {
        (false, 3, 4) => Some(u32::from(be16(msg, 6))),
        (true, 2, _) => Some(u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]])),
        _ => None,
    };
    let quote = &msg[8..];
    let inner = parse_ip(quote, true);
    assert_eq!(
        inner.src.is_ipv6(),
        v6,
        "the quoted packet is of the other family"
    );
    let l4 = read_l4(&inner);
    SeenIcmpError {
        src: outer.src,
        dst: outer.dst,
        ttl: outer.ttl,
        icmp_type,
        code,
        mtu,
        ip_check_ok: outer.ip_check_ok,
        icmp_check_ok: fold(add(pseudo, msg)) == 0xffff,
        quoted: SeenQuote {
            src: SocketAddr::new(inner.src, l4.sport),
            dst: SocketAddr::new(inner.dst, l4.dport),
            proto: inner.proto,
            ttl: inner.ttl,
            ip_check_ok: inner.ip_check_ok,
            frag: inner.frag,
            l4_check: l4.check,
            l4_check_ok: l4.check_ok,
            bytes: quote.to_vec(),
        },
    }
}

/// The L4 checksum that the whole TCP/UDP packet `original_ip_packet` would carry with its
/// addresses and ports changed to `new_src` and `new_dst`: what a translator that rewrites
/// a quoted packet must leave in the quote, updated incrementally (RFC 1624) since the
/// quote may be cut short. With the original whole, recomputing is the same answer, got
/// independently. A UDP/IPv4 "no checksum" 0 stays 0.
///
/// # Panics
///
/// When `original_ip_packet` is not a whole TCP/UDP datagram, or the families differ.
pub fn expected_inner_l4_check(
    original_ip_packet: &[u8],
    new_src: SocketAddr,
    new_dst: SocketAddr,
) -> u16 {
    let net = parse_ip(original_ip_packet, false);
    assert!(
        net.whole_datagram(),
        "the original packet must be a whole datagram"
    );
    assert!(
        matches!(net.proto, TCP | UDP),
        "the original packet is not TCP/UDP"
    );
    assert_eq!(
        net.src.is_ipv6(),
        new_src.is_ipv6(),
        "new_src is of the other family"
    );
    let at = check_offset(net.proto);
    let mut l4 = net.l4.to_vec();
    if net.proto == UDP && net.src.is_ipv4() && be16(&l4, at) == 0 {
        return 0;
    }
    l4[0..2].copy_from_slice(&new_src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&new_dst.port().to_be_bytes());
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_sum_ip(new_src.ip(), new_dst.ip(), net.proto, l4.len());
    fill_l4_check(&mut l4, net.proto, pseudo);
    be16(&l4, at)
}

/// The ethertype after at most one 802.1Q tag, and where the IP packet starts.
fn ip_start(frame: &[u8]) -> (u16, usize) {
    assert!(frame.len() >= 14, "frame doesn't fit an Ethernet header");
    let ether_type = be16(frame, 12);
    if ether_type != ETH_P_8021Q {
        return (ether_type, 14);
    }
    assert!(frame.len() >= 18, "frame doesn't fit its 802.1Q tag");
    (be16(frame, 16), 18)
}

/// The network layer of an IP packet in a frame, which must be whole (not cut short).
fn parse_frame(frame: &[u8]) -> Net<'_> {
    let (ether_type, start) = ip_start(frame);
    let net = match ether_type {
        ETH_P_IP | ETH_P_IPV6 => parse_ip(&frame[start..], false),
        _ => panic!("frame is not IP (ethertype {ether_type:#06x}): {frame:02x?}"),
    };
    assert_eq!(
        net.src.is_ipv6(),
        ether_type == ETH_P_IPV6,
        "IP version against ethertype"
    );
    net
}

/// The network layer of an IP packet, either family.
struct Net<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// The upper-layer protocol, after any IPv6 fragment header.
    proto: u8,
    ttl: u8,
    ip_check_ok: bool,
    frag: Option<SeenFrag>,
    /// The bytes before the upper layer: the IPv4 header, or the IPv6 and fragment headers.
    header_len: usize,
    /// The upper-layer bytes present: up to the length the header says, or to the end of a
    /// quote cut short.
    l4: &'a [u8],
    /// Whether the packet ends before the length its header says (only a quote may).
    cut: bool,
}

impl Net<'_> {
    /// Whether `l4` is the whole upper-layer datagram, so its checksum can be verified.
    fn whole_datagram(&self) -> bool {
        !self.cut
            && self
                .frag
                .is_none_or(|frag| frag.offset_units == 0 && !frag.more)
    }
}

/// Reads an IPv4 or IPv6 header chain; `may_be_cut` allows the packet to end before its
/// stated length, as in an ICMP error's quote (the headers themselves must be there).
fn parse_ip(ip: &[u8], may_be_cut: bool) -> Net<'_> {
    assert!(!ip.is_empty(), "no IP packet");
    match ip[0] >> 4 {
        4 => parse_v4(ip, may_be_cut),
        6 => parse_v6(ip, may_be_cut),
        version => panic!("IP version {version}: {ip:02x?}"),
    }
}

fn parse_v4(ip: &[u8], may_be_cut: bool) -> Net<'_> {
    assert!(ip.len() >= 20, "doesn't fit an IPv4 header");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert!(
        ihl >= 20 && ip.len() >= ihl,
        "doesn't fit its IPv4 header with options"
    );
    let total = usize::from(be16(ip, 2));
    assert!(total >= ihl, "IPv4 total length shorter than the header");
    let cut = ip.len() < total;
    assert!(!cut || may_be_cut, "shorter than the IPv4 total length");
    let word = be16(ip, 6);
    let frag = (word & 0x3fff != 0).then(|| SeenFrag {
        id: u32::from(be16(ip, 4)),
        offset_units: word & 0x1fff,
        more: word & 0x2000 != 0,
    });
    Net {
        src: IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
        dst: IpAddr::from([ip[16], ip[17], ip[18], ip[19]]),
        proto: ip[9],
        ttl: ip[8],
        ip_check_ok: fold(add(0, &ip[..ihl])) == 0xffff,
        frag,
        header_len: ihl,
        l4: &ip[ihl..total.min(ip.len())],
        cut,
    }
}

/// Reads the IPv6 header and a fragment header right after it, if any; other extension
/// headers are taken for the upper layer (no builder makes them).
fn parse_v6(ip: &[u8], may_be_cut: bool) -> Net<'_> {
    assert!(ip.len() >= 40, "doesn't fit an IPv6 header");
    let payload_len = usize::from(be16(ip, 4));
    assert_ne!(payload_len, 0, "IPv6 jumbograms are not read");
    let end = 40 + payload_len;
    let cut = ip.len() < end;
    assert!(!cut || may_be_cut, "shorter than the IPv6 payload length");
    let octets = |at: usize| -> [u8; 16] { ip[at..at + 16].try_into().unwrap() };
    let (proto, frag, header_len) = if ip[6] == IPV6_FRAGMENT {
        assert!(
            ip.len() >= 48 && end >= 48,
            "doesn't fit the IPv6 fragment header"
        );
        let word = be16(ip, 42);
        let frag = SeenFrag {
            id: u32::from_be_bytes([ip[44], ip[45], ip[46], ip[47]]),
            offset_units: word >> 3,
            more: word & 1 != 0,
        };
        (ip[40], Some(frag), 48)
    } else {
        (ip[6], None, 40)
    };
    Net {
        src: IpAddr::from(octets(8)),
        dst: IpAddr::from(octets(24)),
        proto,
        ttl: ip[7],
        ip_check_ok: true,
        frag,
        header_len,
        l4: &ip[header_len..end.min(ip.len())],
        cut,
    }
}

/// The L4 header fields of a packet read back.
struct L4Seen<'a> {
    sport: u16,
    dport: u16,
    check: Option<u16>,
    check_ok: Option<bool>,
    payload: &'a [u8],
}

/// Reads the TCP/UDP header, if the packet holds it, and verifies the checksum if the
/// packet holds the whole datagram.
fn read_l4<'a>(net: &Net<'a>) -> L4Seen<'a> {
    if net.frag.is_some_and(|frag| frag.offset_units != 0) {
        let none = L4Seen {
            sport: 0,
            dport: 0,
            check: None,
            check_ok: None,
            payload: net.l4,
        };
        return none;
    }
    let proto = net.proto;
    assert!(
        matches!(proto, TCP | UDP),
        "protocol {proto} is not TCP or UDP"
    );
    let l4 = net.l4;
    assert!(l4.len() >= 4, "doesn't fit the ports");
    let at = check_offset(proto);
    let check = (l4.len() >= at + 2).then(|| be16(l4, at));
    let header_len = match (proto, l4.get(12)) {
        (TCP, Some(offset)) => usize::from(offset >> 4) * 4,
        (TCP, None) => 20,
        _ => 8,
    };
    let check_ok = net.whole_datagram().then(|| {
        assert!(l4.len() >= header_len, "doesn't fit its L4 header");
        match check {
            Some(0) if proto == UDP => net.src.is_ipv4(),
            _ => fold(add(pseudo_sum_ip(net.src, net.dst, proto, l4.len()), l4)) == 0xffff,
        }
    });
    L4Seen {
        sport: be16(l4, 0),
        dport: be16(l4, 2),
        check,
        check_ok,
        payload: l4.get(header_len..).unwrap_or(&[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
    const HOST4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 8080);
    const CONTAINER4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(172, 17, 0, 2), 80);
    const ROUTER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
    const CLIENT6: SocketAddrV6 =
        SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 2), 40000, 0, 0);
    const HOST6: SocketAddrV6 =
        SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1), 8080, 0, 0);
    const CONTAINER6: SocketAddrV6 =
        SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0x17, 0, 0, 0, 2), 80, 0, 0);
    const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0xfe, 0, 0, 0, 1);

    /// A payload whose bytes all differ from their neighbours, so a misplaced slice shows.
    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// An IP packet in an untagged frame, by its version.
    fn framed(ip: &[u8]) -> Vec<u8> {
        let ether_type = if ip[0] >> 4 == 4 {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        ethernet(None, ether_type, ip)
    }

    /// Where the IP packet starts in an untagged frame.
    const ETH: usize = 14;

    // --- Checksums against vectors known independently of this code ---

    // The worked example of the IPv4 header checksum (Wikipedia, "Internet checksum";
    // "IPv4 header checksum"): 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
    #[test]
    fn ipv4_header_is_the_known_example() {
        let known: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let mut zeroed = known;
        zeroed[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(!fold(add(0, &zeroed)), 0xb861);
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 1);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 199), 2);
        let dgram = V4 {
            id: 0,
            ..V4::udp(src, dst, &[0; 0x73 - 28])
        };
        assert_eq!(dgram.ip_packet()[..20], known);
        assert!(read_ip(&dgram.frame()).ip_check_ok);
        assert!(read(&dgram.frame()).ip_check_ok);
    }

    // [2001:db8::1]:1234 -> [2001:db8::2]:53, UDP, payload "abc" (odd: the last byte is
    // padded with a zero), by hand in 16-bit words:
    //   pseudo-header  src  2001+0db8+0001            = 2dba
    //                  dst  2001+0db8+0002            = 2dbb
    //                  upper-layer length 0000+000b, next header 0011
    //   UDP header     04d2 (1234) + 0035 (53) + 000b (length) + 0000 (checksum)
    //   payload        6162 ("ab") + 6300 ("c", padded)
    //   2dba+2dbb = 5b75; +000b = 5b80; +0011 = 5b91; +04d2 = 6063; +0035 = 6098;
    //   +000b = 60a3; +6162 = c205; +6300 = 12505, folded 2505+1 = 2506; one's complement
    //   daf9. (Cross-checked with a separate Python sum.)
    #[test]
    fn ipv6_udp_checksum_is_the_hand_computed_one() {
        let ip = |last| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
        let src = SocketAddrV6::new(ip(1), 1234, 0, 0);
        let dst = SocketAddrV6::new(ip(2), 53, 0, 0);
        let dgram = V6::udp(src, dst, b"abc");
        assert_eq!(dgram.ip_packet()[40 + 6..40 + 8], [0xda, 0xf9]);
        let seen = read_ip(&dgram.frame());
        assert_eq!(seen.l4_check, Some(0xdaf9));
        assert_eq!(seen.l4_check_ok, Some(true));
    }

    // --- Build, then read back ---

    #[test]
    fn v4_tcp_and_udp_round_trip_and_agree_with_read() {
        let with_options = V4 {
            options: vec![0x94, 0x04, 0, 0], // router alert
            vlan: Some(7),
            ttl: 9,
            ..V4::udp(CLIENT4, HOST4, &payload(33))
        };
        for packet in [
            V4::tcp_syn(CLIENT4, HOST4),
            V4::udp(CLIENT4, HOST4, b"hi"),
            with_options,
        ] {
            let frame = packet.frame();
            let seen = read_ip(&frame);
            let old = read(&frame);
            assert_eq!(seen.src, SocketAddr::V4(packet.src));
            assert_eq!(seen.dst, SocketAddr::V4(packet.dst));
            assert_eq!(seen.proto, packet.proto);
            assert_eq!(seen.ttl, packet.ttl);
            assert!(seen.ip_check_ok);
            assert_eq!(seen.frag, None);
            assert_eq!(seen.l4_check_ok, Some(true));
            assert_eq!(seen.payload, packet.payload);
            assert_eq!(
                (old.src, old.dst, old.ttl),
                (packet.src, packet.dst, packet.ttl)
            );
            assert_eq!(Some(old.l4_check), seen.l4_check);
            assert!(old.ip_check_ok && old.l4_check_ok);
            assert_eq!(old.payload, seen.payload);
        }
    }

    #[test]
    fn v6_tcp_and_udp_round_trip() {
        let tagged = V6 {
            vlan: Some(100),
            hop_limit: 3,
            ..V6::udp(CLIENT6, HOST6, &payload(101))
        };
        for packet in [
            V6::tcp_syn(CLIENT6, HOST6),
            V6::udp(CLIENT6, HOST6, b"hello"),
            tagged,
        ] {
            let frame = packet.frame();
            let at = if packet.vlan.is_some() { 16 } else { 12 };
            assert_eq!(frame[at..at + 2], ETH_P_IPV6.to_be_bytes());
            let seen = read_ip(&frame);
            assert_eq!(seen.src, SocketAddr::V6(packet.src));
            assert_eq!(seen.dst, SocketAddr::V6(packet.dst));
            assert_eq!(seen.proto, packet.proto);
            assert_eq!(seen.ttl, packet.hop_limit);
            assert!(seen.ip_check_ok);
            assert_eq!(seen.frag, None);
            assert_eq!(seen.l4_check_ok, Some(true));
            assert_eq!(seen.payload, packet.payload);
        }
    }

    #[test]
    fn v6_atomic_fragment_is_checkable_and_shows_its_header() {
        let frag = V6Frag {
            id: 0xdead_beef,
            offset_units: 0,
            more: false,
        };
        let packet = V6 {
            frag: Some(frag),
            ..V6::udp(CLIENT6, HOST6, b"atomic")
        };
        let ip = packet.ip_packet();
        assert_eq!(ip[6], IPV6_FRAGMENT);
        assert_eq!(ip[40], UDP);
        assert_eq!(usize::from(be16(&ip, 4)), 8 + 8 + 6);
        let seen = read_ip(&packet.frame());
        assert_eq!(seen.proto, UDP);
        assert_eq!(
            seen.frag,
            Some(SeenFrag {
                id: 0xdead_beef,
                offset_units: 0,
                more: false
            })
        );
        assert_eq!(seen.l4_check_ok, Some(true));
        // The fragment header is outside the checksum: the same as without it.
        assert_eq!(
            seen.l4_check,
            read_ip(
                &V6 {
                    frag: None,
                    ..packet
                }
                .frame()
            )
            .l4_check
        );
    }

    // --- Fragments ---

    #[test]
    fn v4_fragments_are_well_formed_and_reassemble_byte_exactly() {
        let dgram = V4 {
            frag: 0, // no DF, so the reassembled header is the original's byte for byte
            ..V4::udp(CLIENT4, HOST4, &payload(3000))
        };
        let whole = read_ip(&dgram.frame());
        let frames = fragments_v4(&dgram, 1500);
        // 3008 bytes of UDP in steps of (1500 - 20) / 8 * 8 = 1480.
        assert_eq!(frames.len(), 3);
        let expected = [(0, true, 1480), (185, true, 1480), (370, false, 48)];
        for (frame, (offset_units, more, len)) in frames.iter().zip(expected) {
            let ip = &frame[ETH..];
            assert!(ip.len() <= 1500);
            assert_eq!(ip.len(), 20 + len);
            let seen = read_ip(frame);
            assert!(seen.ip_check_ok);
            let id = u32::from(dgram.id);
            assert_eq!(
                seen.frag,
                Some(SeenFrag {
                    id,
                    offset_units,
                    more
                })
            );
            assert_eq!(seen.l4_check_ok, None);
        }
        let first = read_ip(&frames[0]);
        assert_eq!((first.src, first.dst), (whole.src, whole.dst));
        assert_eq!(
            first.l4_check, whole.l4_check,
            "the whole datagram's checksum"
        );
        let later = read_ip(&frames[1]);
        assert_eq!(later.src, SocketAddr::new(IpAddr::V4(*CLIENT4.ip()), 0));
        assert_eq!(later.l4_check, None);
        assert_eq!(later.payload.len(), 1480);

        assert_eq!(reassemble(&frames), dgram.frame());
        let mut shuffled = frames.clone();
        shuffled.rotate_left(1);
        assert_eq!(reassemble(&shuffled), dgram.frame());
        assert_eq!(fragment_v4(&dgram, 1500, 2), frames[2]);
        let reassembled = read_ip(&reassemble(&frames));
        assert_eq!(reassembled.payload, dgram.payload);
        assert_eq!(reassembled.l4_check_ok, Some(true));
    }

    #[test]
    fn v4_fragments_clear_df_and_copy_only_copied_options() {
        // Router alert (copied), then record route (not copied) with one slot, then padding.
        let options = vec![0x94, 4, 0, 0, 0x07, 7, 4, 0, 0, 0, 0, 0];
        let dgram = V4 {
            options: options.clone(),
            vlan: Some(5),
            ..V4::udp(CLIENT4, HOST4, &payload(100))
        };
        assert_eq!(dgram.frag, 0x4000, "built with DF");
        let frames = fragments_v4(&dgram, 64);
        let ip = |frame: &[u8]| frame[18..].to_vec();
        assert_eq!(ip(&frames[0])[20..32], options);
        for frame in &frames[1..] {
            assert_eq!(ip(frame)[20..32], [0x94, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]);
        }
        for frame in &frames {
            assert_eq!(be16(&ip(frame), 6) & 0x4000, 0, "DF cleared");
            assert!(ip(frame).len() <= 64);
            assert!(read_ip(frame).ip_check_ok);
        }
        let reassembled = reassemble(&frames);
        let expected = V4 { frag: 0, ..dgram };
        assert_eq!(reassembled, expected.frame());
    }

    #[test]
    fn v6_fragments_are_well_formed_and_reassemble_byte_exactly() {
        let dgram = V6::udp(CLIENT6, HOST6, &payload(3000));
        let whole = read_ip(&dgram.frame());
        let frames = fragments_v6(&dgram, 0x0102_0304, 1280);
        // 3008 bytes of UDP in steps of (1280 - 48) / 8 * 8 = 1232.
        assert_eq!(frames.len(), 3);
        let expected = [(0, true, 1232), (154, true, 1232), (308, false, 544)];
        for (frame, (offset_units, more, len)) in frames.iter().zip(expected) {
            let ip = &frame[ETH..];
            assert!(ip.len() <= 1280);
            assert_eq!(ip.len(), 48 + len);
            assert_eq!((ip[6], ip[40]), (IPV6_FRAGMENT, UDP));
            let seen = read_ip(frame);
            assert_eq!(seen.proto, UDP);
            assert_eq!(
                seen.frag,
                Some(SeenFrag {
                    id: 0x0102_0304,
                    offset_units,
                    more
                })
            );
            assert_eq!(seen.l4_check_ok, None);
        }
        let first = read_ip(&frames[0]);
        assert_eq!((first.src, first.dst), (whole.src, whole.dst));
        assert_eq!(
            first.l4_check, whole.l4_check,
            "the whole datagram's checksum"
        );
        assert_eq!(read_ip(&frames[2]).dst.port(), 0);

        assert_eq!(reassemble(&frames), dgram.frame());
        let reversed: Vec<_> = frames.iter().rev().cloned().collect();
        assert_eq!(reassemble(&reversed), dgram.frame());
        assert_eq!(fragment_v6(&dgram, 0x0102_0304, 1280, 1), frames[1]);
    }

    #[test]
    #[should_panic(expected = "a gap or an overlap")]
    fn reassembling_with_a_fragment_missing_panics() {
        let frames = fragments_v4(&V4::udp(CLIENT4, HOST4, &payload(100)), 60);
        reassemble(&[frames[0].clone(), frames[2].clone()]);
    }

    #[test]
    #[should_panic(expected = "MF wrong")]
    fn reassembling_without_the_last_fragment_panics() {
        let frames = fragments_v6(&V6::udp(CLIENT6, HOST6, &payload(100)), 1, 80);
        reassemble(&frames[..2]);
    }

    // --- ICMP errors ---

    #[test]
    fn icmp4_frag_needed_quotes_header_and_8_bytes() {
        let offending = V4::udp(HOST4, CLIENT4, &payload(1400)).ip_packet();
        let error = Icmp4Error::frag_needed(ROUTER4, *HOST4.ip(), 1400, &offending);
        let frame = error.frame();
        assert_eq!(frame.len(), ETH + 20 + 8 + 28);
        let seen = read_icmp_error(&frame);
        assert_eq!(
            (seen.src, seen.dst),
            (IpAddr::V4(ROUTER4), IpAddr::V4(*HOST4.ip()))
        );
        assert_eq!((seen.icmp_type, seen.code, seen.mtu), (3, 4, Some(1400)));
        assert_eq!(frame[ETH + 20 + 4..ETH + 20 + 8], [0, 0, 0x05, 0x78]);
        assert!(seen.ip_check_ok && seen.icmp_check_ok);
        let quoted = &seen.quoted;
        assert_eq!(
            (quoted.src, quoted.dst),
            (SocketAddr::V4(HOST4), SocketAddr::V4(CLIENT4))
        );
        assert_eq!(quoted.proto, UDP);
        assert!(quoted.ip_check_ok);
        assert_eq!(quoted.l4_check, Some(be16(&offending, 26)));
        assert_eq!(quoted.l4_check_ok, None, "the quote holds 8 of 1408 bytes");
        assert_eq!(quoted.bytes, offending[..28]);
    }

    #[test]
    fn icmp4_quotes_as_much_as_linux_when_asked() {
        let short = V4::udp(HOST4, CLIENT4, b"short").ip_packet();
        let error = Icmp4Error {
            quote: Quote::WithinPacket(ICMP4_QUOTE_LIMIT),
            ..Icmp4Error::port_unreachable(*CLIENT4.ip(), *HOST4.ip(), &short)
        };
        let seen = read_icmp_error(&error.frame());
        assert_eq!((seen.icmp_type, seen.code, seen.mtu), (3, 3, None));
        assert!(seen.icmp_check_ok);
        assert_eq!(seen.quoted.bytes, short, "whole");
        assert_eq!(seen.quoted.l4_check_ok, Some(true));

        let long = V4::udp(HOST4, CLIENT4, &payload(1000)).ip_packet();
        let error = Icmp4Error {
            quote: Quote::WithinPacket(ICMP4_QUOTE_LIMIT),
            ..Icmp4Error::port_unreachable(*CLIENT4.ip(), *HOST4.ip(), &long)
        };
        assert_eq!(error.ip_packet().len(), 576);
        let seen = read_icmp_error(&error.frame());
        assert!(seen.icmp_check_ok);
        assert_eq!(seen.quoted.bytes, long[..576 - 28]);
        assert_eq!(seen.quoted.l4_check_ok, None);
    }

    #[test]
    fn icmp4_time_exceeded_quoting_tcp_reaches_the_ports_but_not_the_checksum() {
        let syn = V4 {
            ttl: 1,
            ..V4::tcp_syn(CLIENT4, CONTAINER4)
        }
        .ip_packet();
        let error = Icmp4Error::time_exceeded(ROUTER4, *CLIENT4.ip(), &syn);
        let seen = read_icmp_error(&error.frame());
        assert_eq!((seen.icmp_type, seen.code, seen.ttl), (11, 0, 64));
        assert!(seen.icmp_check_ok);
        assert_eq!(seen.quoted.src, SocketAddr::V4(CLIENT4));
        assert_eq!(seen.quoted.dst, SocketAddr::V4(CONTAINER4));
        assert_eq!((seen.quoted.proto, seen.quoted.ttl), (TCP, 1));
        assert_eq!(
            (seen.quoted.l4_check, seen.quoted.l4_check_ok),
            (None, None)
        );
        let whole = Icmp4Error {
            quote: Quote::Bytes(usize::MAX),
            ..error
        };
        let seen = read_icmp_error(&whole.frame());
        assert_eq!(seen.quoted.l4_check, Some(be16(&syn, 36)));
        assert_eq!(seen.quoted.l4_check_ok, Some(true));
    }

    #[test]
    fn icmp4_quoting_a_fragment_reads_its_fragment_fields() {
        let dgram = V4::udp(HOST4, CLIENT4, &payload(200));
        let first = fragment_packets_v4(&dgram, 100).swap_remove(0);
        let error = Icmp4Error {
            quote: Quote::Bytes(usize::MAX),
            ..Icmp4Error::frag_needed(ROUTER4, *HOST4.ip(), 68, &first)
        };
        let quoted = read_icmp_error(&error.frame()).quoted;
        assert_eq!(quoted.bytes, first, "the whole fragment");
        assert_eq!(quoted.frag.map(|frag| frag.more), Some(true));
        assert_eq!(quoted.src, SocketAddr::V4(HOST4));
        assert_eq!(
            quoted.l4_check_ok, None,
            "a fragment's checksum covers more"
        );
    }

    #[test]
    fn icmp6_packet_too_big_carries_the_mtu_and_fits_1280() {
        let short = V6::udp(HOST6, CLIENT6, &payload(100)).ip_packet();
        let error = Icmp6Error::packet_too_big(ROUTER6, *HOST6.ip(), 1280, &short);
        let frame = error.frame();
        assert_eq!(frame[ETH + 40 + 4..ETH + 48], 1280u32.to_be_bytes());
        let seen = read_icmp_error(&frame);
        assert_eq!(
            (seen.src, seen.dst),
            (IpAddr::V6(ROUTER6), IpAddr::V6(*HOST6.ip()))
        );
        assert_eq!((seen.icmp_type, seen.code, seen.mtu), (2, 0, Some(1280)));
        assert!(seen.ip_check_ok && seen.icmp_check_ok);
        assert_eq!(seen.quoted.src, SocketAddr::V6(HOST6));
        assert_eq!(seen.quoted.dst, SocketAddr::V6(CLIENT6));
        assert_eq!(seen.quoted.bytes, short);
        assert_eq!(seen.quoted.l4_check_ok, Some(true));

        let long = V6::udp(HOST6, CLIENT6, &payload(2000)).ip_packet();
        let error = Icmp6Error::packet_too_big(ROUTER6, *HOST6.ip(), 1280, &long);
        assert_eq!(error.ip_packet().len(), IPV6_MIN_MTU);
        let seen = read_icmp_error(&error.frame());
        assert!(seen.icmp_check_ok);
        assert_eq!(seen.quoted.bytes, long[..1280 - 48]);
        assert_eq!(seen.quoted.l4_check, Some(be16(&long, 46)));
        assert_eq!(seen.quoted.l4_check_ok, None);
    }

    #[test]
    fn icmp6_unreachable_and_time_exceeded_round_trip() {
        let syn = V6::tcp_syn(CLIENT6, CONTAINER6).ip_packet();
        let unreachable = Icmp6Error::dest_unreachable(*CONTAINER6.ip(), *CLIENT6.ip(), 4, &syn);
        let exceeded = Icmp6Error {
            quote: Quote::HeaderPlus8,
            vlan: Some(9),
            ..Icmp6Error::time_exceeded(ROUTER6, *CLIENT6.ip(), &syn)
        };
        for (error, kind, quoted_len) in [(unreachable, (1, 4), syn.len()), (exceeded, (3, 0), 48)]
        {
            let seen = read_icmp_error(&error.frame());
            assert_eq!((seen.icmp_type, seen.code), kind);
            assert_eq!(seen.dst, IpAddr::V6(*CLIENT6.ip()));
            assert!(seen.icmp_check_ok);
            assert_eq!(seen.quoted.bytes, syn[..quoted_len]);
            assert_eq!(seen.quoted.src, SocketAddr::V6(CLIENT6));
            assert_eq!(seen.quoted.dst, SocketAddr::V6(CONTAINER6));
        }
    }

    // --- The incremental check of a translated quote ---

    /// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), over each 16-bit word that changes: an
    /// algorithm independent of the full recomputation in `expected_inner_l4_check`.
    fn rfc1624(check: u16, old: &[u8], new: &[u8]) -> u16 {
        let mut sum = u32::from(!check);
        for (m, m_new) in old.chunks(2).zip(new.chunks(2)) {
            sum += u32::from(!be16(m, 0)) + u32::from(be16(m_new, 0));
        }
        !fold(sum)
    }

    /// The address and port bytes the pseudo-header and L4 header hold.
    fn endpoints(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let octets = |addr: SocketAddr| match addr.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        let mut bytes = octets(src);
        bytes.extend(octets(dst));
        bytes.extend(src.port().to_be_bytes());
        bytes.extend(dst.port().to_be_bytes());
        bytes
    }

    #[test]
    fn expected_inner_check_is_the_translated_packets_and_rfc_1624s() {
        let v4 = |proto| V4 {
            proto,
            ..V4::udp(CONTAINER4, CLIENT4, &payload(77))
        };
        let v6 = |proto| V6 {
            proto,
            ..V6::udp(CONTAINER6, CLIENT6, &payload(77))
        };
        let translated_v4 = |proto| V4 {
            src: HOST4,
            ..v4(proto)
        };
        let translated_v6 = |proto| V6 {
            src: HOST6,
            ..v6(proto)
        };
        let cases = [
            (v4(UDP).ip_packet(), translated_v4(UDP).frame()),
            (v4(TCP).ip_packet(), translated_v4(TCP).frame()),
            (v6(UDP).ip_packet(), translated_v6(UDP).frame()),
            (v6(TCP).ip_packet(), translated_v6(TCP).frame()),
        ];
        for (original, translated) in cases {
            let before = read_ip(&framed(&original));
            let after = read_ip(&translated);
            let expected = expected_inner_l4_check(&original, after.src, after.dst);
            assert_eq!(Some(expected), after.l4_check);
            let incremental = rfc1624(
                before.l4_check.unwrap(),
                &endpoints(before.src, before.dst),
                &endpoints(after.src, after.dst),
            );
            assert_eq!(expected, incremental);
        }
    }

    #[test]
    fn expected_inner_check_keeps_a_v4_udp_none() {
        let original = V4 {
            udp_no_checksum: true,
            ..V4::udp(CONTAINER4, CLIENT4, b"x")
        };
        let check = expected_inner_l4_check(
            &original.ip_packet(),
            SocketAddr::V4(HOST4),
            SocketAddr::V4(CLIENT4),
        );
        assert_eq!(check, 0);
    }

    // --- Corruption is seen ---

    #[test]
    fn corrupt_v4_bytes_are_seen() {
        for packet in [
            V4::udp(CLIENT4, HOST4, b"payload"),
            V4::tcp_syn(CLIENT4, HOST4),
        ] {
            let good = packet.frame();
            let mut ttl = good.clone();
            ttl[ETH + 8] ^= 1;
            let seen = read_ip(&ttl);
            assert!(!seen.ip_check_ok);
            assert_eq!(
                seen.l4_check_ok,
                Some(true),
                "the TTL is outside the pseudo-header"
            );
            let mut src = good.clone();
            src[ETH + 12] ^= 1;
            let seen = read_ip(&src);
            assert!(!seen.ip_check_ok);
            assert_eq!(
                seen.l4_check_ok,
                Some(false),
                "the source is in the pseudo-header"
            );
            let mut last = good.clone();
            *last.last_mut().unwrap() ^= 0x80;
            let seen = read_ip(&last);
            assert!(seen.ip_check_ok);
            assert_eq!(seen.l4_check_ok, Some(false));
        }
    }

    #[test]
    fn corrupt_v6_bytes_are_seen() {
        for packet in [
            V6::udp(CLIENT6, HOST6, b"payload"),
            V6::tcp_syn(CLIENT6, HOST6),
        ] {
            let good = packet.frame();
            let mut dst = good.clone();
            dst[ETH + 24 + 15] ^= 1;
            assert_eq!(
                read_ip(&dst).l4_check_ok,
                Some(false),
                "the pseudo-header counts"
            );
            let mut last = good.clone();
            *last.last_mut().unwrap() ^= 1;
            assert_eq!(read_ip(&last).l4_check_ok, Some(false));
        }
    }

    #[test]
    fn udp_checksum_zero_is_none_over_v4_and_wrong_over_v6() {
        let v4 = V4 {
            udp_no_checksum: true,
            ..V4::udp(CLIENT4, HOST4, b"x")
        };
        let seen = read_ip(&v4.frame());
        assert_eq!((seen.l4_check, seen.l4_check_ok), (Some(0), Some(true)));
        let mut v6 = V6::udp(CLIENT6, HOST6, b"x").frame();
        v6[ETH + 40 + 6..ETH + 40 + 8].copy_from_slice(&[0, 0]);
        let seen = read_ip(&v6);
        assert_eq!((seen.l4_check, seen.l4_check_ok), (Some(0), Some(false)));
    }

    #[test]
    fn corrupt_fragments_are_seen() {
        let dgram = V4::udp(CLIENT4, HOST4, &payload(300));
        let mut frames = fragments_v4(&dgram, 100);
        frames[1][ETH + 8] ^= 1;
        assert!(!read_ip(&frames[1]).ip_check_ok);
        frames[1][ETH + 8] ^= 1;
        *frames[2].last_mut().unwrap() ^= 1;
        assert!(
            read_ip(&frames[2]).ip_check_ok,
            "the data is outside the header checksum"
        );
        assert_eq!(read_ip(&reassemble(&frames)).l4_check_ok, Some(false));
    }

    #[test]
    fn corrupt_icmp_errors_are_seen() {
        let offending = V4::udp(HOST4, CLIENT4, b"quoted").ip_packet();
        let error = Icmp4Error {
            quote: Quote::WithinPacket(ICMP4_QUOTE_LIMIT),
            ..Icmp4Error::port_unreachable(*CLIENT4.ip(), *HOST4.ip(), &offending)
        };
        let good = error.frame();
        let quote = ETH + 20 + 8;
        let mut outer_ttl = good.clone();
        outer_ttl[ETH + 8] ^= 1;
        let seen = read_icmp_error(&outer_ttl);
        assert!(!seen.ip_check_ok && seen.icmp_check_ok);
        let mut inner_ttl = good.clone();
        inner_ttl[quote + 8] ^= 1;
        let seen = read_icmp_error(&inner_ttl);
        assert!(seen.ip_check_ok && !seen.icmp_check_ok);
        assert!(!seen.quoted.ip_check_ok);
        assert_eq!(seen.quoted.l4_check_ok, Some(true));
        let mut inner_payload = good.clone();
        *inner_payload.last_mut().unwrap() ^= 1;
        let seen = read_icmp_error(&inner_payload);
        assert!(!seen.icmp_check_ok && seen.quoted.ip_check_ok);
        assert_eq!(seen.quoted.l4_check_ok, Some(false));

        let offending = V6::udp(HOST6, CLIENT6, b"quoted").ip_packet();
        let good = Icmp6Error::dest_unreachable(ROUTER6, *HOST6.ip(), 4, &offending).frame();
        let mut outer_src = good.clone();
        outer_src[ETH + 8] ^= 1;
        assert!(
            !read_icmp_error(&outer_src).icmp_check_ok,
            "the pseudo-header counts"
        );
        let mut inner_payload = good.clone();
        *inner_payload.last_mut().unwrap() ^= 1;
        let seen = read_icmp_error(&inner_payload);
        assert!(!seen.icmp_check_ok);
        assert_eq!(seen.quoted.l4_check_ok, Some(false));
    }
}
