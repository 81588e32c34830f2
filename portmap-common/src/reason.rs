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
    /// IPv4 TCP/UDP to an address and port that no binding publishes.
    UplinkPassNoBinding = "uplink.pass.no_binding",
    /// Not IP at all: ARP, LLDP, ...
    UplinkPassNotIp = "uplink.pass.not_ip",
    /// IPv6 is not translated yet.
    UplinkPassIpv6 = "uplink.pass.ipv6",
    /// IPv4 options (IHL > 5): passed untouched, so later offsets stay constant.
    UplinkPassIpOptions = "uplink.pass.ip_options",
    /// A fragment: only a first fragment carries ports, so none is translated yet.
    UplinkPassFragment = "uplink.pass.fragment",
    /// IPv4 but neither TCP nor UDP.
    UplinkPassNotTcpUdp = "uplink.pass.not_tcp_udp",
    /// A header ended before the frame claimed it would.
    UplinkPassTruncated = "uplink.pass.truncated",
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
    /// IPv4 TCP/UDP from the bridge that belongs to no translated flow.
    ReplyPassNoFlow = "tc_reply.pass.no_flow",
    /// Not IPv4 TCP/UDP without options or fragmentation.
    ReplyPassNotOurs = "tc_reply.pass.not_ours",
    /// TTL would reach zero: left to the stack.
    ReplyTtlExpired = "tc_reply.ttl_expired",
    /// A kernel helper refused to rewrite the packet; it was dropped rather than leak the
    /// container's address.
    ReplyDropWriteFailed = "tc_reply.drop.write_failed",
}

/// How many reasons there are: the size of [`crate::names::REASON_STATS`].
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;
