//! The one rewrite path, for both directions: replace a packet's source or destination address
//! and port, optionally decrement the TTL, and fold each change into the checksums.
//!
//! How a checksum is updated depends on the program type, so that part sits behind
//! [`Checksums`]: XDP sees wire bytes whose checksums are complete and updates them in place;
//! TC sees an skb whose L4 checksum may be only the pseudo-header seed of an offloaded
//! (`CHECKSUM_PARTIAL`) packet, which only the kernel's helpers know how to update.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use portmap_ebpf::csum;

use crate::parse::{Endpoint, Ipv4L4};

/// Offset of the header checksum within the IPv4 header.
const IP_CHECK_OFF: u32 = 10;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Whether the rewrite also forwards the packet, as a router does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Keep,
    Decrement,
}

/// A kernel helper refused a checksum update; the packet may be half rewritten.
pub struct ChecksumError;

/// Folding a field's change into a packet's checksums.
///
/// Implementations may move packet data: callers write every field first, then update checksums,
/// and use only offsets from then on.
pub trait Checksums {
    /// The IPv4 header checksum.
    fn l3<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
    ) -> Result<(), ChecksumError>;

    /// The TCP/UDP checksum; `pseudo` says the field is in the pseudo-header (an address) rather
    /// than the L4 header itself (a port).
    fn l4<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
        pseudo: bool,
    ) -> Result<(), ChecksumError>;
}

/// Replaces one endpoint of `pkt` with `to` and fixes both checksums.
#[inline(always)]
pub fn v4_endpoint(
    csums: &impl Checksums,
    pkt: &Ipv4L4,
    side: Side,
    to: Endpoint,
    ttl: Ttl,
) -> Result<(), ChecksumError> {
    let from = match side {
        Side::Src => pkt.src(),
        Side::Dst => pkt.dst(),
    };
    // SAFETY: `parse::ipv4_l4` proved the IPv4 header and 8+ bytes of L4 header are inside the
    // frame; nothing has moved packet data since.
    let old_ttl_word = unsafe { [(*pkt.ip).ttl, (*pkt.ip).proto] };
    let new_ttl_word = match ttl {
        Ttl::Keep => old_ttl_word,
        Ttl::Decrement => [old_ttl_word[0].wrapping_sub(1), old_ttl_word[1]],
    };
    if from == to && old_ttl_word == new_ttl_word {
        return Ok(());
    }

    // SAFETY: as above; the fields are written before any helper may move the data.
    unsafe {
        let (addr, port) = match side {
            Side::Src => (&raw mut (*pkt.ip).src_addr, pkt.l4 as *mut [u8; 2]),
            Side::Dst => (&raw mut (*pkt.ip).dst_addr, pkt.l4.add(2) as *mut [u8; 2]),
        };
        *addr = to.addr;
        *port = to.port;
        (*pkt.ip).ttl = new_ttl_word[0];
    }

    csums.l4(pkt, from.addr, to.addr, true)?;
    csums.l4(pkt, from.port, to.port, false)?;
    csums.l3(pkt, from.addr, to.addr)?;
    csums.l3(pkt, old_ttl_word, new_ttl_word)
}

/// Decrements the TTL of an IPv4 header and fixes its checksum, through the skb helpers.
#[inline(always)]
pub fn v4_ttl_decrement(
    ctx: &TcContext,
    ip: *mut network_types::ip::Ipv4Hdr,
    l3_off: u32,
) -> Result<(), ChecksumError> {
    // SAFETY: the caller bounds-checked the whole IPv4 header.
    let old = unsafe { [(*ip).ttl, (*ip).proto] };
    let new = [old[0].wrapping_sub(1), old[1]];
    // SAFETY: as above.
    unsafe { (*ip).ttl = new[0] };
    l3_replace(ctx, l3_off, old, new)
}

/// Checksums of a frame in XDP: complete, on the wire, updated in place.
pub struct InPlace;

impl Checksums for InPlace {
    #[inline(always)]
    fn l3<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
    ) -> Result<(), ChecksumError> {
        // SAFETY: the IPv4 header was bounds-checked by the parser and XDP never moves data.
        unsafe { (*pkt.ip).check = csum::replace((*pkt.ip).check, &old, &new) };
        Ok(())
    }

    #[inline(always)]
    fn l4<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
        _pseudo: bool,
    ) -> Result<(), ChecksumError> {
        // SAFETY: the parser proved 20 bytes of TCP or 8 of UDP, which hold the checksum field.
        unsafe {
            let check = pkt.l4.add(pkt.l4_check_off()) as *mut [u8; 2];
            *check = if pkt.is_udp() {
                csum::replace_udp(*check, &old, &new)
            } else {
                csum::replace(*check, &old, &new)
            };
        }
        Ok(())
    }
}

/// Checksums of an skb in TC, through `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which also
/// keep `CHECKSUM_PARTIAL` seeds and `CHECKSUM_COMPLETE` sums right.
pub struct Skb<'a>(pub &'a TcContext);

impl Checksums for Skb<'_> {
    #[inline(always)]
    fn l3<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
    ) -> Result<(), ChecksumError> {
        l3_replace(self.0, pkt.l3_off, old, new)
    }

    #[inline(always)]
    fn l4<const N: usize>(
        &self,
        pkt: &Ipv4L4,
        old: [u8; N],
        new: [u8; N],
        pseudo: bool,
    ) -> Result<(), ChecksumError> {
        if old == new {
            return Ok(());
        }
        let mut flags = N as u64;
        if pseudo {
            flags |= BPF_F_PSEUDO_HDR as u64;
        }
        if pkt.is_udp() {
            // A zero UDP checksum stays zero; a computed zero is written as 0xffff.
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        let offset = pkt.l4_off + pkt.l4_check_off() as u32;
        self.0
            .l4_csum_replace(offset as usize, word(old), word(new), flags)
            .map_err(|_| ChecksumError)
    }
}

#[inline(always)]
fn l3_replace<const N: usize>(
    ctx: &TcContext,
    l3_off: u32,
    old: [u8; N],
    new: [u8; N],
) -> Result<(), ChecksumError> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(
        (l3_off + IP_CHECK_OFF) as usize,
        word(old),
        word(new),
        N as u64,
    )
    .map_err(|_| ChecksumError)
}

/// A 2- or 4-byte field as the helpers take it: its bytes in memory order, read as an integer.
#[inline(always)]
fn word<const N: usize>(bytes: [u8; N]) -> u64 {
    let mut raw = [0u8; 8];
    let mut i = 0;
    while i < N {
        raw[i] = bytes[i];
        i += 1;
    }
    // Little-endian hosts put the first byte lowest, exactly as a load of the field would.
    u64::from_ne_bytes(raw)
}
