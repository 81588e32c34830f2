//! portmap's kernel side. A packet's path, one file each:
//!
//! - client → container: [`translate`] (parse → lookup → rewrite → record, for either
//!   [`family`]), run by [`xdp_uplink`], after which [`tc_forward`] on the same uplink hands
//!   the packet to the bridge; or, on uplinks where native XDP does not pay, run by
//!   [`tc_uplink`] at TC ingress, which forwards it itself ([`redirect`]);
//! - container → client: [`tc_reply`] on the bridge (parse → flow lookup → rewrite back), which
//!   also carries hairpin connections; the same code runs first on each bridge port
//!   (`tc_port`), where a plain reply leaves before the bridge takes it;
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
mod recent;
mod redirect;
mod rewrite;
mod sock;
mod stats;
mod tc_forward;
mod tc_reply;
mod tc_uplink;
mod translate;
mod xdp_uplink;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
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

#[classifier]
pub fn tc_port(ctx: TcContext) -> i32 {
    match tc_reply::at_port(&ctx) {
        Some(verdict) => {
            stats::count(verdict.reason);
            verdict.action
        }
        // Not counted: the bridge's `tc_reply` sees it next, and counts it.
        None => aya_ebpf::bindings::TC_ACT_OK,
    }
}

/// Never attached: run by the loader (`BPF_PROG_TEST_RUN`) to read the kernel's jiffies, the
/// clock flows are stamped with, so that it can tell how long each has been idle.
#[xdp]
pub fn clock(_ctx: XdpContext) -> u32 {
    // SAFETY: no arguments, no side effects.
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() as u32 }
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    counted(sock::connect4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    counted(sock::connect6(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    counted(sock::connect4(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    counted(sock::connect6(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    counted_if(sock::restore4(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    counted_if(sock::restore6(&ctx))
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    counted_if(sock::restore4(&ctx))
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    counted_if(sock::restore6(&ctx))
}

#[inline(always)]
fn counted((reason, verdict): (portmap_common::Reason, i32)) -> i32 {
    stats::count(reason);
    verdict
}

#[inline(always)]
fn counted_if((reason, verdict): (Option<portmap_common::Reason>, i32)) -> i32 {
    if let Some(reason) = reason {
        stats::count(reason);
    }
    verdict
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
