//! Why a packet went the way it did. Every verdict the programs return bumps exactly one of
//! these, per CPU, in [`crate::names::REASON_STATS`]; `portmap stats` prints them by name.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Index into [`crate::names::REASON_STATS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// A stable dotted name: program, then outcome.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    /// A client packet hit a binding and was rewritten toward the container (by whichever hook
    /// translates on the uplink: `xdp_uplink` or `tc_uplink`).
    UplinkTranslated = "uplink.translated",
    /// TCP/UDP to an address and port that no binding publishes.
    UplinkPassNoBinding = "uplink.pass.no_binding",
    /// Not IP at all: ARP, LLDP, ...
    UplinkPassNotIp = "uplink.pass.not_ip",
    /// IPv4 options (IHL > 5) or IPv6 extension headers other than a fragment header: passed
    /// untouched, so later offsets stay constant.
    UplinkPassIpOptions = "uplink.pass.ip_options",
    /// A later fragment whose first fragment was not seen (out of order, or not ours): it
    /// passes untranslated.
    UplinkPassFragmentUnknown = "uplink.pass.fragment_unknown",
    /// IP, but neither TCP, UDP nor an ICMP error about a translated flow.
    UplinkPassNotTcpUdp = "uplink.pass.not_tcp_udp",
    /// A packet from the wire to a loopback address (127.0.0.0/8, ::1): dropped, so that no
    /// crafted packet reaches a binding published on loopback (moby #45610).
    UplinkDropLoopback = "uplink.drop.loopback",
    /// A header ended before the frame claimed it would.
    UplinkPassTruncated = "uplink.pass.truncated",
    /// An ICMP error quoting a packet from a published port to a client no translated flow
    /// knows: left to the stack, as conntrack would leave an error about no connection.
    UplinkPassNoFlow = "uplink.pass.no_flow",
    /// The flow could not be recorded; the packet still went to the container, but its replies
    /// will not be translated.
    UplinkFlowRecordFailed = "uplink.flow_record_failed",
    /// A kernel helper refused to rewrite a packet at TC; it was dropped, half rewritten.
    UplinkDropWriteFailed = "uplink.drop.write_failed",
    /// No room in front of the frame for the forwarding note; the stack routes the packet.
    XdpMetaFailed = "xdp.meta_failed",
    /// A packet `xdp_uplink` translated, handed to the container's bridge.
    FwdRedirected = "tc_forward.redirected",
    /// Not translated by `xdp_uplink`: left to the stack.
    FwdNotOurs = "tc_forward.not_ours",
    /// TTL would reach zero: left to the stack, which answers with ICMP time exceeded.
    FwdTtlExpired = "tc_forward.ttl_expired",
    /// A container reply rewritten back to host_ip:host_port and sent to the uplink.
    ReplyTranslated = "tc_reply.translated",
    /// TCP/UDP from the bridge that belongs to no translated flow and is to no published port.
    ReplyPassNoFlow = "tc_reply.pass.no_flow",
    /// Not TCP, UDP or an ICMP error about a translated flow.
    ReplyPassNotOurs = "tc_reply.pass.not_ours",
    /// A later fragment of a container's datagram whose first fragment was not seen.
    ReplyPassFragmentUnknown = "tc_reply.pass.fragment_unknown",
    /// A container reached a published port of its own host (the bridge's address or
    /// another local one): sent to the target container from the bridge's address.
    ReplyHairpin = "tc_reply.hairpin",
    /// A hairpin connection whose translated source (the bridge's address and the caller's
    /// port) another caller's connection to the same target already has: left to the stack.
    ReplyHairpinPortBusy = "tc_reply.hairpin.port_busy",
    /// TTL would reach zero: left to the stack.
    ReplyTtlExpired = "tc_reply.ttl_expired",
    /// A kernel helper refused to rewrite the packet; it was dropped rather than leak the
    /// container's address.
    ReplyDropWriteFailed = "tc_reply.drop.write_failed",
    /// A container reply rewritten back and sent to the uplink by `tc_port`, on the bridge port
    /// it came in by, before the bridge (and the netfilter calls Docker enables on it) saw it.
    PortTranslated = "tc_port.translated",
    /// A process of the host connected (or sent a datagram) to a published port: the socket
    /// now goes to the container (cgroup `connect`/`sendmsg`).
    SockTranslated = "sock.translated",
    /// A connect or send to an address and port no binding publishes.
    SockPassNoBinding = "sock.pass.no_binding",
    /// A socket of another network namespace than the one portmap serves: left alone.
    SockPassOtherNetns = "sock.pass.other_netns",
    /// A datagram's source or a socket's peer shown to the process as the published address
    /// it used rather than the container's (cgroup `recvmsg`/`getpeername`).
    SockRestored = "sock.restored",
}

/// How many reasons there are: the size of [`crate::names::REASON_STATS`].
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;
