//! ICMP errors about translated flows: destination unreachable (fragmentation needed among
//! them), packet too big, time exceeded, parameter problem. Each quotes the start of the packet
//! it is about, so both the outer and the quoted (inner) headers carry addresses to translate,
//! and the outer IPv4, inner IPv4, inner transport and ICMP checksums all change. A receiving
//! kernel drops an error whose ICMP checksum is stale, so every change is folded in.
//!
//! - From the client side, arriving on the uplink: the error quotes a reply we sent, from
//!   host:port. The binding for host:port gives the container; the error goes there.
//! - From the container side, arriving on the bridge: the error quotes the client's packet, to
//!   container:port. The flow gives host:port; the error goes to the client from there.

use portmap_common::{BindingKey, FlowKey, Reason, proto};
use portmap_ebpf::csum;

use crate::{
    family::Family,
    lookup,
    parse::{Endpoint, Packet, Ports, To},
    rewrite::{self, Checksums, Side, Ttl},
    translate::{self, Translated},
};

/// Offset of the ICMP checksum in the ICMP header, and of the quoted packet after it.
const ICMP_CHECK_OFF: u32 = 2;
const ICMP_HLEN: u32 = 8;

/// The packet an error quotes, bounds-checked: its IP header and the first 8 bytes of its
/// transport header (the ports, and UDP's checksum).
struct Quoted<const N: usize> {
    l3: *mut u8,
    l4: *mut Ports,
    proto: u8,
    /// The frame's end.
    end: usize,
}

impl<const N: usize> Quoted<N> {
    /// Its transport checksum, if that lies inside the frame (always for UDP; for TCP when the
    /// error quotes 18 bytes or more of it, as Linux's do). Checked where it is used, so that
    /// every verifier (5.10's too) sees the check on the pointer it then reads.
    #[inline(always)]
    fn l4_check(&self) -> Option<*mut u16> {
        let at = self.l4 as usize + rewrite::l4_check_off(self.proto) as usize;
        (at + 2 <= self.end).then_some(at as *mut u16)
    }
}

/// Whether `pkt` is an ICMP error of the family, and the packet it quotes.
#[inline(always)]
fn quoted<const N: usize, F: Family<N>>(
    pkt: &Packet,
    data: usize,
    data_end: usize,
) -> Option<Quoted<N>> {
    // SAFETY: the parser proved the 8-byte ICMP header is inside the frame.
    let kind = unsafe { *pkt.l4.cast::<u8>() };
    if !F::is_icmp_error(kind) {
        return None;
    }
    let l3_off = pkt.l4_off + ICMP_HLEN;
    let l3 = data + l3_off as usize;
    let l4_off = l3_off + F::HDR_LEN as u32;
    let l4 = data + l4_off as usize;
    if l4 + 8 > data_end {
        return None;
    }
    let l3 = l3 as *mut u8;
    // SAFETY: bounds-checked just above: the whole quoted IP header and 8 bytes after it.
    let (plain, proto) = unsafe { (F::plain(l3), F::proto(l3)) };
    if !plain || (proto != proto::TCP && proto != proto::UDP) {
        return None;
    }
    Some(Quoted {
        l3,
        l4: l4 as *mut Ports,
        proto,
        end: data_end,
    })
}

/// Translates an error: the quoted packet's endpoint on `quoted_side` becomes `to`, and the
/// outer address on `outer_side` too if it is the same address (the host or container that the
/// error is about; a router's own address stays). Every checksum follows: the quoted IPv4 and
/// transport checksums in place (they are plain payload bytes), then the ICMP checksum (with
/// its pseudo-header for ICMPv6) and the outer IPv4 checksum. All fields are written before
/// any checksum helper runs, since a helper may move packet data.
#[inline(always)]
fn translate_error<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    q: &Quoted<N>,
    quoted_side: Side,
    outer_side: Side,
    to: To<'_, N>,
    ttl: Ttl,
) -> Result<(), Reason> {
    let inplace = rewrite::InPlace;
    // SAFETY: `quoted` bounds-checked the quoted IP header, 8 bytes of transport header, and
    // the transport checksum where `l4_check` says so; the parser the outer and ICMP headers. Nothing
    // has moved packet data yet.
    let (payload, outer, ttl_diff) = unsafe {
        let (q_addr, q_port) = match quoted_side {
            Side::Src => (F::src(q.l3), &raw mut (*q.l4).src),
            Side::Dst => (F::dst(q.l3), &raw mut (*q.l4).dst),
        };
        let o_addr = match outer_side {
            Side::Src => F::src(pkt.l3),
            Side::Dst => F::dst(pkt.l3),
        };
        let outer_too = (*o_addr).get() == (*q_addr).get();
        let addr = rewrite::replace_addr(q_addr, to.addr);
        let port = csum::diff([*q_port], [to.port()]);
        *q_port = to.port();
        let mut payload = addr + port;
        if F::L3_CHECKSUM {
            let check = F::l3_check(q.l3);
            let old = *check;
            let _ = inplace.l3(check, 0, addr);
            payload += csum::diff([old], [*check]);
        }
        if let Some(check) = q.l4_check() {
            let old = *check;
            let _ = inplace.l4(check, 0, q.proto, addr, port);
            payload += csum::diff([old], [*check]);
        }

        let outer = if outer_too {
            rewrite::replace_addr(o_addr, to.addr)
        } else {
            0
        };
        (payload, outer, rewrite::step_ttl::<N, F>(pkt.l3, ttl))
    };
    // ICMPv6's checksum covers the outer addresses (its pseudo-header); ICMPv4's does not.
    let pseudo = if F::L3_CHECKSUM { 0 } else { outer };
    // SAFETY: pointer arithmetic inside the ICMP header the parser bounds-checked.
    let icmp_check = unsafe {
        pkt.l4
            .cast::<u8>()
            .add(ICMP_CHECK_OFF as usize)
            .cast::<u16>()
    };
    let fail = |_| Reason::UplinkDropWriteFailed;
    csums
        .l4(
            icmp_check,
            pkt.l4_off + ICMP_CHECK_OFF,
            F::ICMP,
            pseudo,
            payload,
        )
        .map_err(fail)?;
    rewrite::l3_fold::<N, F>(csums, pkt.l3, pkt.l3_off, outer + ttl_diff).map_err(fail)
}

/// An ICMP error from the client side about a reply of a translated flow: sent on to the
/// container, with the quoted reply's source and the outer destination translated back.
#[inline(always)]
pub fn from_client<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    data: usize,
    data_end: usize,
    forward: bool,
    out: &mut Translated,
) -> Result<(), Reason> {
    let q = quoted::<N, F>(pkt, data, data_end).ok_or(Reason::UplinkPassNotTcpUdp)?;
    // SAFETY: `quoted` bounds-checked the quoted headers; the outer header was by the parser.
    let (host, outer_dst) = unsafe {
        (
            Endpoint {
                addr: (*F::src(q.l3)).get(),
                port: (*q.l4).src,
            },
            (*F::dst(pkt.l3)).get(),
        )
    };
    if outer_dst != host.addr {
        // Not about a packet we sent from this address.
        return Err(Reason::UplinkPassNoBinding);
    }
    let binding = lookup::binding::<N, F>(&BindingKey {
        addr: host.addr,
        port: host.port_bytes(),
        proto: q.proto,
        _pad: 0,
    })
    .ok_or(Reason::UplinkPassNoBinding)?;
    // SAFETY: as above; a map lookup does not move packet data.
    let flow = unsafe {
        FlowKey {
            container_addr: binding.addr,
            client_addr: (*F::dst(q.l3)).get(),
            container_port: binding.port,
            client_port: (*q.l4).dst.to_ne_bytes(),
            proto: q.proto,
            _pad: [0; 3],
        }
    };
    lookup::live_flow::<N, F>(&flow).ok_or(Reason::UplinkPassNoFlow)?;
    let container = To {
        addr: &binding.addr,
        port: binding.port,
    };
    let (forwardable, ttl) = translate::forwarding::<N, F>(pkt, forward);
    // The quoted reply's source, and the outer destination that mirrors it.
    translate_error::<N, F>(csums, pkt, &q, Side::Src, Side::Dst, container, ttl)?;
    *out = Translated::toward::<N, F>(binding.egress_ifindex, binding.addr, pkt, forwardable);
    Ok(())
}

/// An ICMP error from a container about a client's packet of a translated flow: sent on to the
/// client, from the host address and port the client used. Returns where the client's packets
/// came in, which the error leaves through.
#[inline(always)]
pub fn from_container<const N: usize, F: Family<N>>(
    csums: &impl Checksums,
    pkt: &Packet,
    data: usize,
    data_end: usize,
) -> Result<u32, Reason> {
    let q = quoted::<N, F>(pkt, data, data_end).ok_or(Reason::ReplyPassNotOurs)?;
    // SAFETY: as in `from_client`.
    let (client, container) = unsafe {
        (
            Endpoint::<N> {
                addr: (*F::src(q.l3)).get(),
                port: (*q.l4).src,
            },
            Endpoint::<N> {
                addr: (*F::dst(q.l3)).get(),
                port: (*q.l4).dst,
            },
        )
    };
    let flow = lookup::live_flow::<N, F>(&FlowKey {
        container_addr: container.addr,
        client_addr: client.addr,
        container_port: container.port_bytes(),
        client_port: client.port_bytes(),
        proto: q.proto,
        _pad: [0; 3],
    })
    .ok_or(Reason::ReplyPassNoFlow)?;
    // SAFETY: a pointer into a live map value; fields are read where they are needed.
    let flow = unsafe { &*flow };
    if rewrite::ttl_expires::<N, F>(pkt) {
        return Err(Reason::ReplyTtlExpired);
    }
    let host = To {
        addr: &flow.host_addr,
        port: flow.host_port,
    };
    // The quoted packet's destination, and the outer source that mirrors it.
    translate_error::<N, F>(csums, pkt, &q, Side::Dst, Side::Src, host, Ttl::Decrement)?;
    Ok(flow.ingress_ifindex)
}
