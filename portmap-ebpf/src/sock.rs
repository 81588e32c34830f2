//! The host's own connections to published ports (S7): `localhost:8080`, `0.0.0.0:8080` or the
//! host's address. They never cross the uplink, so no packet program sees them; instead the
//! socket is pointed at the container when it connects or sends (cgroup `sock_addr` hooks),
//! and no packet of it is ever rewritten.
//!
//! - `connect`/`sendmsg`: a destination that a binding publishes becomes the container, and the
//!   socket remembers, by its cookie and the container, the address the process used;
//! - `recvmsg`/`getpeername`: the container shown to the process becomes that address again.
//!
//! A cgroup's programs see its processes in every network namespace; only sockets of the
//! namespace portmap serves are touched (netns cookies).

use aya_ebpf::{
    Global,
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use portmap_common::{Addr, BindingKey, Reason, SockKey, SockOrig, proto};

use crate::{
    family::{Family, V4, V6},
    lookup,
    maps::{SOCK_REVNAT_V4, SOCK_REVNAT_V6},
};

/// The cookie of the network namespace served; set by the loader. 0 serves every namespace.
#[unsafe(no_mangle)]
static NETNS_COOKIE: Global<u64> = Global::new(0);

/// What a cgroup `sock_addr` program returns to let the call go on.
const ALLOW: i32 = 1;

/// The address fields of `bpf_sock_addr` of one family, which the kernel lets a program read
/// and write only as whole 32-bit words.
trait SockFamily<const N: usize>: Family<N> {
    /// The address the process gave, as a map key wants it.
    ///
    /// # Safety
    ///
    /// `ctx` is the program's context.
    unsafe fn user_addr(ctx: *mut bpf_sock_addr) -> Addr<N>;
    /// Writes the address the call goes on with.
    ///
    /// # Safety
    ///
    /// As [`SockFamily::user_addr`].
    unsafe fn set_user_addr(ctx: *mut bpf_sock_addr, addr: &Addr<N>);
    /// The address a connect to "any" (`0.0.0.0`, `::`) reaches: this host's loopback.
    fn any_is_loopback(addr: Addr<N>) -> Addr<N>;
    fn revnat() -> &'static aya_ebpf::maps::LruHashMap<SockKey<N>, SockOrig<N>>;
}

impl SockFamily<4> for V4 {
    unsafe fn user_addr(ctx: *mut bpf_sock_addr) -> Addr<4> {
        // SAFETY: the caller's contract.
        Addr(unsafe { (*ctx).user_ip4 }.to_ne_bytes())
    }
    unsafe fn set_user_addr(ctx: *mut bpf_sock_addr, addr: &Addr<4>) {
        // SAFETY: the caller's contract.
        unsafe { (*ctx).user_ip4 = addr.word(0) };
    }
    fn any_is_loopback(addr: Addr<4>) -> Addr<4> {
        if addr.word(0) == 0 {
            Addr([127, 0, 0, 1])
        } else {
            addr
        }
    }
    fn revnat() -> &'static aya_ebpf::maps::LruHashMap<SockKey<4>, SockOrig<4>> {
        &SOCK_REVNAT_V4
    }
}

impl SockFamily<16> for V6 {
    unsafe fn user_addr(ctx: *mut bpf_sock_addr) -> Addr<16> {
        // SAFETY: the caller's contract; each word is read whole.
        let w = unsafe { (*ctx).user_ip6 };
        let mut addr = Addr([0; 16]);
        for (i, word) in w.iter().enumerate() {
            addr.0[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        addr
    }
    unsafe fn set_user_addr(ctx: *mut bpf_sock_addr, addr: &Addr<16>) {
        // SAFETY: the caller's contract; each word is written whole.
        unsafe {
            (*ctx).user_ip6[0] = addr.word(0);
            (*ctx).user_ip6[1] = addr.word(1);
            (*ctx).user_ip6[2] = addr.word(2);
            (*ctx).user_ip6[3] = addr.word(3);
        }
    }
    fn any_is_loopback(addr: Addr<16>) -> Addr<16> {
        let any = addr.word(0) | addr.word(1) | addr.word(2) | addr.word(3) == 0;
        if any {
            let mut loopback = Addr([0; 16]);
            loopback.0[15] = 1;
            loopback
        } else {
            addr
        }
    }
    fn revnat() -> &'static aya_ebpf::maps::LruHashMap<SockKey<16>, SockOrig<16>> {
        &SOCK_REVNAT_V6
    }
}

/// Whether the socket belongs to the namespace portmap serves.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let served = NETNS_COOKIE.load();
    // SAFETY: the helper takes the program's own context.
    served == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } == served
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> [u8; 8] {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }.to_ne_bytes()
}

/// `connect` and `sendmsg`: a published destination becomes its container. `asked` is the
/// destination as family `F` looks it up; `on_socket` writes an address of that family as the
/// socket's family `S` holds it (the same, or IPv4 inside an IPv4-mapped IPv6 address).
#[inline(always)]
fn to_container<const N: usize, F: SockFamily<N>, const M: usize, S: SockFamily<M>>(
    ctx: &SockAddrContext,
    asked: Addr<N>,
    on_socket: impl Fn(&Addr<N>) -> Addr<M>,
) -> Reason {
    if !ours(ctx) {
        return Reason::SockPassOtherNetns;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the program's own context; fields are read as the kernel allows.
    let (port, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    let protocol = match protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return Reason::SockPassNoBinding,
    };
    // The port is in network order in the low-addressed 16 bits of the word.
    let port = (port as u16).to_ne_bytes();
    // "Any" reaches this host: the process sees it as loopback, as the kernel would show it.
    let asked = F::any_is_loopback(asked);
    let Some(binding) = lookup::binding::<N, F>(&BindingKey {
        addr: asked,
        port,
        proto: protocol,
        _pad: 0,
    }) else {
        return Reason::SockPassNoBinding;
    };
    let container = on_socket(&binding.addr);
    let key = SockKey {
        cookie: cookie(ctx),
        addr: container,
        port: binding.port,
        _pad: [0; 2],
    };
    let orig = SockOrig {
        addr: on_socket(&asked),
        port,
        _pad: [0; 2],
    };
    // A full LRU evicts; a refusal only means the process would see the container's address.
    let _ = S::revnat().insert(key, orig, 0);
    // SAFETY: as above; the kernel lets both fields be written here.
    unsafe {
        S::set_user_addr(sa, &container);
        (*sa).user_port = u32::from(u16::from_ne_bytes(binding.port));
    }
    Reason::SockTranslated
}

/// The IPv4 address inside an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`), which a dual-stack
/// socket (Java's, for one) connects to for an IPv4 destination.
#[inline(always)]
fn unmapped(addr: &Addr<16>) -> Option<Addr<4>> {
    let prefix =
        addr.word(0) | addr.word(1) == 0 && addr.word(2) == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    prefix.then(|| Addr(addr.word(3).to_ne_bytes()))
}

/// `addr` as an IPv4-mapped IPv6 address.
#[inline(always)]
fn mapped(addr: &Addr<4>) -> Addr<16> {
    let mut out = Addr([0; 16]);
    out.0[10] = 0xff;
    out.0[11] = 0xff;
    out.0[12..].copy_from_slice(&addr.0);
    out
}

/// `recvmsg` and `getpeername`: the container becomes the address the process used.
#[inline(always)]
fn to_published<const N: usize, F: SockFamily<N>>(ctx: &SockAddrContext) -> Option<Reason> {
    if !ours(ctx) {
        return None;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the program's own context.
    let (addr, port) = unsafe { (F::user_addr(sa), (*sa).user_port) };
    let key = SockKey {
        cookie: cookie(ctx),
        addr,
        port: (port as u16).to_ne_bytes(),
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let orig = unsafe { F::revnat().get(key) }.copied()?;
    // SAFETY: as above.
    unsafe {
        F::set_user_addr(sa, &orig.addr);
        (*sa).user_port = u32::from(u16::from_ne_bytes(orig.port));
    }
    Some(Reason::SockRestored)
}

#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> (Reason, i32) {
    // SAFETY: the program's own context.
    let asked = unsafe { V4::user_addr(ctx.sock_addr) };
    (to_container::<4, V4, 4, V4>(ctx, asked, |a| *a), ALLOW)
}

#[inline(always)]
pub fn connect6(ctx: &SockAddrContext) -> (Reason, i32) {
    // SAFETY: the program's own context.
    let asked = unsafe { V6::user_addr(ctx.sock_addr) };
    let reason = match unmapped(&asked) {
        Some(v4) => to_container::<4, V4, 16, V6>(ctx, v4, mapped),
        None => to_container::<16, V6, 16, V6>(ctx, asked, |a| *a),
    };
    (reason, ALLOW)
}

/// Restores and says why, or says nothing: most datagrams and peers are not ours, and a
/// counter bumped for each would only measure the host's other traffic.
#[inline(always)]
pub fn restore4(ctx: &SockAddrContext) -> (Option<Reason>, i32) {
    (to_published::<4, V4>(ctx), ALLOW)
}

#[inline(always)]
pub fn restore6(ctx: &SockAddrContext) -> (Option<Reason>, i32) {
    (to_published::<16, V6>(ctx), ALLOW)
}
