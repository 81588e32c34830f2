//! `tc_reply`: TC ingress on the bridge. A container's reply to a translated flow gets back the
//! exact host address and port its client sent to, and leaves through the interface the client's
//! packets came in on.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use aya_log_ebpf::error;
use portmap_common::{FlowKeyV4, Reason};

use crate::{
    lookup, parse,
    rewrite::{self, Side, Skb, Ttl},
    stats,
    tc_forward::{Verdict, pass, redirect_neigh},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> Verdict {
    if !parse::pull_headers(ctx) {
        return pass(Reason::ReplyPassNotOurs);
    }
    let pkt = match parse::ipv4_l4(ctx) {
        Ok(pkt) if !pkt.vlan_tagged => pkt,
        _ => return pass(Reason::ReplyPassNotOurs),
    };
    let container = pkt.src();
    let client = pkt.dst();
    let Some(flow) = lookup::live_flow(&FlowKeyV4 {
        container_addr: container.addr_bytes(),
        client_addr: client.addr_bytes(),
        container_port: container.port_bytes(),
        client_port: client.port_bytes(),
        proto: pkt.proto,
        _pad: [0; 3],
    }) else {
        return pass(Reason::ReplyPassNoFlow);
    };
    if pkt.ttl() <= 1 {
        return pass(Reason::ReplyTtlExpired);
    }

    let host = parse::Endpoint::from_wire(flow.host_addr, flow.host_port);
    if rewrite::v4_endpoint(&Skb(ctx), &pkt, Side::Src, host, Ttl::Decrement).is_err() {
        error!(
            ctx,
            "could not rewrite a reply from {:i}:{}; dropped",
            container.addr_bytes(),
            u16::from_be(container.port)
        );
        return Verdict {
            reason: Reason::ReplyDropWriteFailed,
            action: TC_ACT_SHOT,
        };
    }
    stats::to_client(flow.binding_id, ctx.len() as u64);
    Verdict {
        reason: Reason::ReplyTranslated,
        action: redirect_neigh(flow.ingress_ifindex),
    }
}
