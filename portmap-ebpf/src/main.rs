//! portmap's kernel side. A packet's path, one file each:
//!
//! - client → container: [`translate`] (parse → lookup → rewrite → record, for either
//!   [`family`]), run by [`xdp_uplink`], after which [`tc_forward`] on the same uplink hands
//!   the packet to the bridge; or, on uplinks where native XDP does not pay, run by
//!   [`tc_uplink`] at TC ingress, which forwards it itself ([`redirect`]);
//! - container → client: [`tc_reply`] on the bridge (parse → flow lookup → rewrite back), which
//!   also carries hairpin connections;
//! - both ways: later fragments follow their first ([`flow`]), and ICMP errors about a flow are
//!   translated inside and out ([`icmp`]).
//!
//! The entry points below only run those and count why.
#![cfg_attr(target_arch = "bpf", no_std)]
// On the host (clippy, `cargo test --workspace`) this is an ordinary, empty binary.
#![cfg_attr(target_arch = "bpf", no_main)]

mod family;
mod flow;
mod icmp;
mod lookup;
mod maps;
mod parse;
mod redirect;
mod rewrite;
mod stats;
mod tc_forward;
mod tc_reply;
mod tc_uplink;
mod translate;
mod xdp_uplink;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    let (reason, action) = xdp_uplink::run(&ctx);
    stats::count(reason);
    action
}

#[classifier]
pub fn tc_forward(ctx: TcContext) -> i32 {
    let verdict = tc_forward::run(&ctx);
    stats::count(verdict.reason);
    verdict.action
}

#[classifier]
pub fn tc_uplink(ctx: TcContext) -> i32 {
    let verdict = tc_uplink::run(&ctx);
    stats::count(verdict.reason);
    verdict.action
}

#[classifier]
pub fn tc_reply(ctx: TcContext) -> i32 {
    let verdict = tc_reply::run(&ctx);
    stats::count(verdict.reason);
    verdict.action
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
