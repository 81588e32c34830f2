//! Everything the kernel side and the loader must agree on: map names and sizes, the layout of
//! every key and value, the XDP→TC metadata, and the counter indices.
//!
//! Byte order: every address and port is stored as it appears on the wire (network byte order),
//! as raw byte arrays, so the eBPF side compares and copies them without swapping and nothing
//! here has an ambiguous integer byte order. Counters and indices are host-order integers.
#![no_std]

pub mod maps;
pub mod reason;

pub use maps::*;
pub use reason::Reason;

/// IP protocol numbers as they appear in the IPv4 `protocol` field.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}
