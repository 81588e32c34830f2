//! Frames for the packet tests: built with correct checksums, and read back with every
//! checksum verified from scratch (RFC 1071), independently of the code under test.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

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
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.src.port().to_be_bytes());
        l4.extend_from_slice(&self.dst.port().to_be_bytes());
        if self.proto == TCP {
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
            l4.extend_from_slice(&64240u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0, 0]); // checksum
            l4.extend_from_slice(&[0, 0]); // urgent
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let check_at = if self.proto == TCP { 16 } else { 6 };
        if !(self.proto == UDP && self.udp_no_checksum) {
            let mut sum = pseudo_sum(*self.src.ip(), *self.dst.ip(), self.proto, l4.len());
            sum = add(sum, &l4);
            let mut check = !fold(sum);
            if self.proto == UDP && check == 0 {
                check = 0xffff;
            }
            l4[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        }
        l4
    }

    /// The IPv4 header and everything after it.
    pub fn ip_packet(&self) -> Vec<u8> {
        let l4 = self.l4();
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
        let total = (ihl * 4 + l4.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&self.src.ip().octets());
        ip.extend_from_slice(&self.dst.ip().octets());
        ip.extend_from_slice(&self.options);
        let check = !fold(add(0, &ip));
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }

    /// The whole Ethernet frame, client to host.
    pub fn frame(&self) -> Vec<u8> {
        let mut frame = eth_header(HOST_MAC, CLIENT_MAC, self.vlan);
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.extend_from_slice(&self.ip_packet());
        frame
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
