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

use crate::parse::{Endpoint, Ipv4Hdr, Ipv4L4};

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

/// Folding a change into a packet's checksums. A change is a [`csum::diff`], computed once per
/// field and applied to every checksum that covers it (as Cilium's NAT does).
///
/// Implementations may move packet data: callers write every field first, then update checksums,
/// and use only offsets from then on.
pub trait Checksums {
    /// The IPv4 header checksum.
    fn l3(&self, pkt: &Ipv4L4, diff: u32) -> Result<(), ChecksumError>;

    /// The TCP/UDP checksum: `pseudo` changed pseudo-header fields (addresses), `header`
    /// changed fields of the L4 header itself (ports). Offloaded checksums only cover the
    /// former, which is why the two are kept apart.
    fn l4(&self, pkt: &Ipv4L4, pseudo: u32, header: u32) -> Result<(), ChecksumError>;
}

/// The TTL and protocol bytes, the 16-bit word the header checksum covers the TTL in.
#[inline(always)]
fn ttl_word(ip: *mut Ipv4Hdr) -> *mut u16 {
    // SAFETY: a field projection; the caller bounds-checked the header.
    unsafe { (&raw mut (*ip).ttl).cast() }
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
    // frame; nothing has moved packet data since, and fields are written before any helper
    // (which may move it) runs.
    let ttl_diff = unsafe {
        let old = *ttl_word(pkt.ip);
        if ttl == Ttl::Decrement {
            (*pkt.ip).ttl = (*pkt.ip).ttl.wrapping_sub(1);
        }
        match side {
            Side::Src => {
                (*pkt.ip).src = to.addr;
                (*pkt.l4).src = to.port;
            }
            Side::Dst => {
                (*pkt.ip).dst = to.addr;
                (*pkt.l4).dst = to.port;
            }
        }
        csum::diff([old], [*ttl_word(pkt.ip)])
    };
    let addr = csum::diff(from.addr, to.addr);
    csums.l4(pkt, addr, csum::diff([from.port], [to.port]))?;
    csums.l3(pkt, addr + ttl_diff)
}

/// Decrements the TTL of an IPv4 header and fixes its checksum, through the skb helpers.
#[inline(always)]
pub fn v4_ttl_decrement(
    ctx: &TcContext,
    ip: *mut Ipv4Hdr,
    l3_off: u32,
) -> Result<(), ChecksumError> {
    // SAFETY: the caller bounds-checked the whole IPv4 header.
    let diff = unsafe {
        let old = *ttl_word(ip);
        (*ip).ttl = (*ip).ttl.wrapping_sub(1);
        csum::diff([old], [*ttl_word(ip)])
    };
    l3_apply(ctx, l3_off, diff)
}

/// Checksums of a frame in XDP: complete, on the wire, updated in place.
pub struct InPlace;

impl Checksums for InPlace {
    #[inline(always)]
    fn l3(&self, pkt: &Ipv4L4, diff: u32) -> Result<(), ChecksumError> {
        // SAFETY: the IPv4 header was bounds-checked by the parser and XDP never moves data.
        unsafe { (*pkt.ip).check = csum::apply((*pkt.ip).check, diff) };
        Ok(())
    }

    #[inline(always)]
    fn l4(&self, pkt: &Ipv4L4, pseudo: u32, header: u32) -> Result<(), ChecksumError> {
        // SAFETY: the parser proved 20 bytes of TCP or 8 of UDP, which hold the checksum field.
        unsafe {
            let check = pkt.l4.cast::<u8>().add(pkt.l4_check_off()).cast::<u16>();
            *check = if pkt.is_udp() {
                csum::apply_udp(*check, pseudo + header)
            } else {
                csum::apply(*check, pseudo + header)
            };
        }
        Ok(())
    }
}

/// Checksums of an skb in TC, through `bpf_l3_csum_replace`/`bpf_l4_csum_replace` in their
/// "diff" form (size 0), which also keep `CHECKSUM_PARTIAL` seeds and `CHECKSUM_COMPLETE` sums
/// right.
pub struct Skb<'a>(pub &'a TcContext);

impl Checksums for Skb<'_> {
    #[inline(always)]
    fn l3(&self, pkt: &Ipv4L4, diff: u32) -> Result<(), ChecksumError> {
        l3_apply(self.0, pkt.l3_off, diff)
    }

    #[inline(always)]
    fn l4(&self, pkt: &Ipv4L4, pseudo: u32, header: u32) -> Result<(), ChecksumError> {
        // A zero UDP checksum stays zero; a computed zero is written as 0xffff.
        let mangled = if pkt.is_udp() {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let offset = (pkt.l4_off + pkt.l4_check_off() as u32) as usize;
        self.0
            .l4_csum_replace(offset, 0, pseudo.into(), BPF_F_PSEUDO_HDR as u64 | mangled)
            .and_then(|()| self.0.l4_csum_replace(offset, 0, header.into(), mangled))
            .map_err(|_| ChecksumError)
    }
}

#[inline(always)]
fn l3_apply(ctx: &TcContext, l3_off: u32, diff: u32) -> Result<(), ChecksumError> {
    ctx.l3_csum_replace((l3_off + IP_CHECK_OFF) as usize, 0, diff.into(), 0)
        .map_err(|_| ChecksumError)
}
