//! `xdp_uplink`: a client's packet to a published host address and port is rewritten toward its
//! container. Parse, look up, rewrite, record, then leave a note for `tc_forward`.

use core::mem::size_of;

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_meta, programs::XdpContext};
use aya_log_ebpf::warn;
use portmap_common::{BindingKeyV4, FlowKeyV4, FlowV4, Reason, XDP_META_MAGIC, XdpMeta};

use crate::{
    flow, lookup,
    parse::{self, Endpoint, Refusal},
    rewrite::{self, InPlace, Side, Ttl},
    stats,
};

/// What became of the packet. XDP passes everything up: a translated packet is forwarded by
/// `tc_forward`, anything else is the stack's business.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Reason {
    let pkt = match parse::ipv4_l4(ctx) {
        Ok(pkt) => pkt,
        Err(refusal) => return refused(refusal),
    };
    let client = pkt.src();
    let host = pkt.dst();
    if host.addr[0] == 127 {
        // Loopback never arrives from a wire; a crafted one must not reach a binding published
        // on 127.0.0.1 (moby #45610). The stack drops it as a martian.
        return Reason::XdpPassNoBinding;
    }
    let Some(binding) = lookup::binding(BindingKeyV4 {
        addr: host.addr,
        port: host.port,
        proto: pkt.proto,
        _pad: 0,
    }) else {
        return Reason::XdpPassNoBinding;
    };

    let container = Endpoint {
        addr: binding.addr,
        port: binding.port,
    };
    // In-place updates cannot fail.
    let _ = rewrite::v4_endpoint(&InPlace, &pkt, Side::Dst, container, Ttl::Keep);
    stats::to_container(binding.id, (ctx.data_end() - ctx.data()) as u64);

    let key = FlowKeyV4 {
        container_addr: container.addr,
        client_addr: client.addr,
        container_port: container.port,
        client_port: client.port,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let value = FlowV4 {
        host_addr: host.addr,
        host_port: host.port,
        _pad: [0; 2],
        binding_id: binding.id,
        ingress_ifindex: ctx.ingress_ifindex() as u32,
    };
    if let Err(errno) = flow::record(&key, &value) {
        // Rare (an LRU evicts rather than fills up), and it breaks the flow's replies: say so.
        stats::count(Reason::XdpFlowRecordFailed);
        warn!(
            ctx,
            "flow table refused {:i}:{} -> {:i}:{} (errno {}); its replies will not be translated",
            client.addr,
            u16::from_be_bytes(client.port),
            container.addr,
            u16::from_be_bytes(container.port),
            -errno
        );
    }

    // A tagged frame is left to the VLAN device and the stack: at TC the tag has been moved out
    // of the frame, and the note with it.
    if !pkt.vlan_tagged && !write_meta(ctx, binding.egress_ifindex) {
        stats::count(Reason::XdpMetaFailed);
    }
    Reason::XdpTranslated
}

#[inline(always)]
fn refused(refusal: Refusal) -> Reason {
    match refusal {
        Refusal::NotIp => Reason::XdpPassNotIp,
        Refusal::Ipv6 => Reason::XdpPassIpv6,
        Refusal::IpOptions => Reason::XdpPassIpOptions,
        Refusal::Fragment => Reason::XdpPassFragment,
        Refusal::NotTcpUdp => Reason::XdpPassNotTcpUdp,
        Refusal::Truncated => Reason::XdpPassTruncated,
    }
}

/// Puts an [`XdpMeta`] in front of the frame. Reuses one already there (`BPF_PROG_TEST_RUN`
/// with `repeat` runs the program again on its own output).
#[inline(always)]
fn write_meta(ctx: &XdpContext, egress_ifindex: u32) -> bool {
    const LEN: usize = size_of::<XdpMeta>();
    if ctx.data() - ctx.metadata() != LEN {
        // SAFETY: `ctx.ctx` is the program's own context pointer.
        if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(LEN as i32)) } != 0 {
            return false;
        }
    }
    let meta = ctx.metadata();
    if meta + LEN > ctx.data() {
        return false;
    }
    // SAFETY: bounds-checked against `data` just above, as the verifier requires.
    unsafe {
        *(meta as *mut XdpMeta) = XdpMeta {
            magic: XDP_META_MAGIC,
            egress_ifindex,
        };
    }
    true
}
