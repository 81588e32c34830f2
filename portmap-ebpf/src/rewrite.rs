//! The one rewrite path, for both directions and both families: replace a packet's source or
//! destination address and port, optionally decrement the TTL (hop limit), and fold each change
//! into the checksums.
//!
//! How a checksum is updated depends on the program type, so that part sits behind
//! [`Checksums`]: XDP sees wire bytes whose checksums are complete and updates them in place;
//! TC sees an skb whose L4 checksum may be only the pseudo-header seed of an offloaded
//! (`CHECKSUM_PARTIAL`) packet, which only the kernel's helpers know how to update.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use portmap_common::{FRAG_DST, FRAG_SRC, FragTarget, proto};
use portmap_ebpf::csum;

use crate::{
    family::Family,
    parse::{Addr, Packet, To, WireAddr},
};

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

/// Whether forwarding `pkt` would expire its TTL (hop limit): such a packet is left to the
/// stack, which answers with the ICMP error.
#[inline(always)]
pub fn ttl_expires<const N: usize, F: Family<N>>(pkt: &Packet) -> bool {
    // SAFETY: `parse::ip` bounds-checked the IP header.
    unsafe { *F::ttl_word(pkt.l3).cast::<u8>() <= 1 }
}

/// A kernel helper refused a checksum update; the packet may be half rewritten.
pub struct ChecksumError;

/// Where a transport header keeps its checksum, for the protocols rewritten here.
#[inline(always)]
pub fn l4_check_off(proto: u8) -> u32 {
    match proto {
        proto::TCP => 16,
        proto::UDP => 6,
        // ICMP and ICMPv6
        _ => 2,
    }
}

/// Folding a change into a packet's checksums. A change is a [`csum::diff`], computed once per
/// field and applied to every checksum that covers it (as Cilium's NAT does).
///
/// Implementations may move packet data: callers write every field first, then update checksums,
/// and use only offsets from then on.
pub trait Checksums {
    /// IPv4's header checksum at `l3`, `l3_off` bytes into the frame.
    fn l3(&self, l3: *mut u16, l3_off: u32, diff: u32) -> Result<(), ChecksumError>;

    /// The transport checksum of `proto` at `check`, `check_off` bytes into the frame: `pseudo`
    /// changed pseudo-header fields (addresses), `header` fields of the transport header
    /// itself (ports). Offloaded checksums only cover the former, which is why they are apart.
    fn l4(
        &self,
        check: *mut u16,
        check_off: u32,
        proto: u8,
        pseudo: u32,
        header: u32,
    ) -> Result<(), ChecksumError>;
}

/// Writes `to` over the address field `at` and returns what that changes in a checksum that
/// covers it ([`csum::diff`]).
///
/// An IPv6 address is diffed by the kernel (`bpf_csum_diff`), straight from the packet and from
/// wherever `to` is kept. Diffed in registers, LLVM loads both addresses whole before any of the
/// arithmetic, and with four registers surviving a helper call they spill to a stack of 512
/// bytes, which the IPv6 paths then outgrow.
///
/// # Safety
///
/// `at` points at an address field inside a bounds-checked header.
#[inline(always)]
pub unsafe fn replace_addr<const N: usize>(at: *mut WireAddr<N>, to: &Addr<N>) -> u32 {
    // SAFETY: the caller's contract; `to` is N readable bytes.
    unsafe {
        let diff = if N == 4 {
            csum::diff_addr(&(*at).get(), to)
        } else {
            let to = (to as *const Addr<N>).cast_mut().cast();
            // Cannot fail: both sizes are the same multiple of 4.
            let wsum = bpf_csum_diff(at.cast(), N as u32, to, N as u32, 0);
            u32::from(csum::fold(wsum as u32))
        };
        (*at).set(to);
        diff
    }
}

/// Decrements the TTL (hop limit) of the IP header at `l3` if `ttl` says so; returns what that
/// changes in IPv4's header checksum.
///
/// # Safety
///
/// `l3` points at a whole IP header of the family, bounds-checked.
#[inline(always)]
pub unsafe fn step_ttl<const N: usize, F: Family<N>>(l3: *mut u8, ttl: Ttl) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        let word = F::ttl_word(l3);
        let old = *word;
        if ttl == Ttl::Decrement {
            let ttl = word.cast::<u8>();
            *ttl = (*ttl).wrapping_sub(1);
        }
        csum::diff([old], [*word])
    }
}

/// Folds the changes of a rewrite into the transport checksum at `check` and, for IPv4, the
/// header checksum. Runs after every field is written: a helper may move packet data.
#[inline(always)]
fn fold_in<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    check: *mut u16,
    addr: u32,
    port: u32,
    ttl_diff: u32,
) -> Result<(), ChecksumError> {
    let check_off = pkt.l4_off + l4_check_off(pkt.proto);
    csums.l4(check, check_off, pkt.proto, addr, port)?;
    l3_fold::<N, F>(csums, pkt.l3, pkt.l3_off, addr + ttl_diff)
}

/// Folds `diff` into IPv4's header checksum, of the header at `l3`, `l3_off` bytes into the
/// frame; IPv6 has none.
#[inline(always)]
pub fn l3_fold<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    l3: *mut u8,
    l3_off: u32,
    diff: u32,
) -> Result<(), ChecksumError> {
    if F::L3_CHECKSUM {
        // SAFETY: inside the IPv4 header the caller bounds-checked.
        let check = unsafe { F::l3_check(l3) };
        csums.l3(check, l3_off + IP_CHECK_OFF, diff)?;
    }
    Ok(())
}

/// Replaces one endpoint of `pkt` with `to` and fixes the checksums.
#[inline(always)]
pub fn endpoint<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    side: Side,
    to: To<'_, N>,
    ttl: Ttl,
) -> Result<(), ChecksumError> {
    // Found before anything is written: a transport header too short for it (which the parser
    // rules out) leaves the packet untouched.
    let check = pkt
        .l4_at::<u16>(l4_check_off(pkt.proto) as usize)
        .ok_or(ChecksumError)?;
    // SAFETY: `parse::ip` proved the IP header and 8+ bytes of transport header are inside the
    // frame; nothing has moved packet data since, and fields are written before any helper
    // (which may move it) runs.
    let (addr, port, ttl_diff) = unsafe {
        let (addr, port) = match side {
            Side::Src => (F::src(pkt.l3), &raw mut (*pkt.l4).src),
            Side::Dst => (F::dst(pkt.l3), &raw mut (*pkt.l4).dst),
        };
        let addr_diff = replace_addr(addr, to.addr);
        let port_diff = csum::diff([*port], [to.port()]);
        *port = to.port();
        (addr_diff, port_diff, step_ttl::<N, F>(pkt.l3, ttl))
    };
    fold_in::<N, F>(csums, pkt, check, addr, port, ttl_diff)
}

/// Replaces both endpoints of `pkt` (a hairpin connection: the source becomes the bridge, the
/// destination the target container, or back) and fixes the checksums; all fields are written
/// before any checksum helper runs.
#[inline(always)]
pub fn endpoints<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    src: To<'_, N>,
    dst: To<'_, N>,
    ttl: Ttl,
) -> Result<(), ChecksumError> {
    let check = pkt
        .l4_at::<u16>(l4_check_off(pkt.proto) as usize)
        .ok_or(ChecksumError)?;
    // SAFETY: as in `endpoint`. One field at a time, each read, diffed and written before the
    // next, so that only one address is held in registers at once.
    let (addr, port, ttl_diff) = unsafe {
        let src_addr = F::src(pkt.l3);
        let addr = replace_addr(src_addr, src.addr) + replace_addr(F::dst(pkt.l3), dst.addr);
        let (src_port, dst_port) = (&raw mut (*pkt.l4).src, &raw mut (*pkt.l4).dst);
        let port = csum::diff([*src_port, *dst_port], [src.port(), dst.port()]);
        *src_port = src.port();
        *dst_port = dst.port();
        (addr, port, step_ttl::<N, F>(pkt.l3, ttl))
    };
    fold_in::<N, F>(csums, pkt, check, addr, port, ttl_diff)
}

/// Gives a later fragment, which has no transport header, the addresses its first fragment got
/// (`target`): only IPv4's header checksum covers them (the datagram's transport checksum was
/// fixed with its first fragment).
#[inline(always)]
pub fn fragment_addrs<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    target: &FragTarget<N>,
    ttl: Ttl,
) -> Result<(), ChecksumError> {
    // SAFETY: as in `endpoint`, for the IP header alone.
    let (addr, ttl_diff) = unsafe {
        let mut addr = 0;
        if target.rewrite & FRAG_SRC != 0 {
            addr += replace_addr(F::src(pkt.l3), &target.src);
        }
        if target.rewrite & FRAG_DST != 0 {
            addr += replace_addr(F::dst(pkt.l3), &target.dst);
        }
        (addr, step_ttl::<N, F>(pkt.l3, ttl))
    };
    l3_fold::<N, F>(csums, pkt.l3, pkt.l3_off, addr + ttl_diff)
}

/// Decrements the TTL (hop limit) of the IP header at `l3` and fixes IPv4's checksum.
#[inline(always)]
pub fn ttl_decrement<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    l3: *mut u8,
    l3_off: u32,
) -> Result<(), ChecksumError> {
    // SAFETY: the caller bounds-checked the whole IP header.
    let diff = unsafe { step_ttl::<N, F>(l3, Ttl::Decrement) };
    l3_fold::<N, F>(csums, l3, l3_off, diff)
}

/// Checksums of a frame in XDP: complete, on the wire, updated in place.
pub struct InPlace;

impl Checksums for InPlace {
    #[inline(always)]
    fn l3(&self, check: *mut u16, _off: u32, diff: u32) -> Result<(), ChecksumError> {
        // SAFETY: callers pass a checksum field inside a bounds-checked header; XDP never moves
        // packet data.
        unsafe { *check = csum::apply(*check, diff) };
        Ok(())
    }

    #[inline(always)]
    fn l4(
        &self,
        check: *mut u16,
        _off: u32,
        proto: u8,
        pseudo: u32,
        header: u32,
    ) -> Result<(), ChecksumError> {
        // SAFETY: as in `l3`.
        unsafe {
            *check = if proto == proto::UDP {
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
    fn l3(&self, _check: *mut u16, off: u32, diff: u32) -> Result<(), ChecksumError> {
        self.0
            .l3_csum_replace(off as usize, 0, diff.into(), 0)
            .map_err(|_| ChecksumError)
    }

    #[inline(always)]
    fn l4(
        &self,
        _check: *mut u16,
        off: u32,
        proto: u8,
        pseudo: u32,
        header: u32,
    ) -> Result<(), ChecksumError> {
        // A zero UDP checksum stays zero; a computed zero is written as 0xffff.
        let mangled = if proto == proto::UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        };
        let off = off as usize;
        // ICMPv4's checksum has no pseudo-header; every other one here does.
        let pseudo_flag = if proto == proto::ICMP {
            0
        } else {
            BPF_F_PSEUDO_HDR as u64
        };
        self.0
            .l4_csum_replace(off, 0, pseudo.into(), pseudo_flag | mangled)
            .and_then(|()| self.0.l4_csum_replace(off, 0, header.into(), mangled))
            .map_err(|_| ChecksumError)
    }
}
