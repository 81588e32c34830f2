//! Incremental Internet checksum updates (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
//!
//! A NAT changes a handful of bytes; recomputing a checksum over the whole packet would cost a
//! loop over the payload. These functions fold the change of one field into an existing checksum
//! instead.
//!
//! They work on 16-bit words exactly as a native load of the packet bytes gives them: the
//! one's-complement sum is independent of byte order (RFC 1071, section 2(B)), so the programs
//! never swap bytes, and the result is stored back with a native store.

use portmap_common::Addr;

/// Folds the carries of a 32-bit accumulator into 16 bits. Two rounds suffice for a sum of
/// fewer than 65,536 words.
#[inline(always)]
pub const fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// What changing the words `old` into `new` adds to a one's-complement sum, unfolded. Compute
/// it once per field and apply it to every checksum that covers the field.
#[inline(always)]
pub const fn diff<const N: usize>(old: [u16; N], new: [u16; N]) -> u32 {
    let mut acc = 0u32;
    let mut i = 0;
    while i < N {
        acc += (!old[i]) as u32 + new[i] as u32;
        i += 1;
    }
    acc
}

/// [`diff`] for an address of either family: its 16-bit words as a native load reads them,
/// taken two at a time (their halves add up the same in either byte order).
#[inline(always)]
pub const fn diff_addr<const N: usize>(old: &Addr<N>, new: &Addr<N>) -> u32 {
    let mut acc = 0u32;
    let mut i = 0;
    while i < N / 4 {
        let o = !old.word(i);
        let n = new.word(i);
        acc += (o & 0xffff) + (o >> 16) + (n & 0xffff) + (n >> 16);
        i += 1;
    }
    acc
}

/// The checksum after its covered data changed by `diff` (a sum of [`diff`]s of at most a few
/// words, so the accumulator cannot overflow).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    !fold(!check as u32 + diff)
}

/// [`apply`] for a UDP checksum over IPv4: a zero checksum means "none" and stays zero, and a
/// result of zero is sent as `0xffff`, its one's-complement twin (RFC 768). Both values read
/// the same in either byte order.
#[inline(always)]
pub const fn apply_udp(check: u16, diff: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, diff) {
        0 => 0xffff,
        updated => updated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of `bytes` computed from scratch (RFC 1071) in network byte order.
    fn full(bytes: &[u8]) -> u16 {
        let mut acc = 0u32;
        for pair in bytes.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// The words of `bytes` as a native load sees them.
    fn words<const N: usize>(bytes: &[u8]) -> [u16; N] {
        std::array::from_fn(|i| u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]))
    }

    /// xorshift: deterministic inputs without a dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Whether two checksums are the same one's-complement number (0x0000 and 0xffff both mean
    /// zero; RFC 1624 eq. 3 never turns a valid checksum into 0x0000, a full sum may give
    /// either).
    fn same(a: u16, b: u16) -> bool {
        a == b || (a | b == 0xffff && (a == 0 || b == 0))
    }

    #[test]
    fn diffs_match_recomputation_for_addresses_and_ports() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            let mut header = [0u8; 20];
            for byte in header.iter_mut() {
                *byte = rng(&mut state) as u8;
            }
            header[10] = 0;
            header[11] = 0;
            let check = full(&header);

            let old_addr: [u16; 2] = words(&header[16..20]);
            let old_port: [u16; 1] = words(&header[2..4]);
            header[16..20].copy_from_slice(&(rng(&mut state) as u32).to_be_bytes());
            header[2..4].copy_from_slice(&(rng(&mut state) as u16).to_be_bytes());
            let new_addr: [u16; 2] = words(&header[16..20]);
            let new_port: [u16; 1] = words(&header[2..4]);

            // As the programs do it: native words in, one combined diff, native word out.
            let native = u16::from_ne_bytes(check.to_be_bytes());
            let native = apply(native, diff(old_addr, new_addr) + diff(old_port, new_port));
            let incremental = u16::from_be_bytes(native.to_ne_bytes());
            let recomputed = full(&header);
            assert!(
                same(incremental, recomputed),
                "{header:02x?}: incremental {incremental:#06x}, full {recomputed:#06x}"
            );
        }
    }

    #[test]
    fn address_diffs_equal_word_diffs() {
        let old = [198, 51, 100, 1];
        let new = [172, 17, 0, 2];
        assert_eq!(
            diff_addr(&Addr(old), &Addr(new)),
            diff(words::<2>(&old), words::<2>(&new))
        );
        let old: [u8; 16] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let new: [u8; 16] = std::array::from_fn(|i| (i * 101 + 250) as u8);
        assert_eq!(
            diff_addr(&Addr(old), &Addr(new)),
            diff(words::<8>(&old), words::<8>(&new))
        );
    }

    #[test]
    fn identical_field_changes_nothing() {
        assert_eq!(apply(0x1234, diff([1, 2], [1, 2])), 0x1234);
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(apply_udp(0, diff([0x0aff, 0x0001], [0x11ac, 0x0200])), 0);
    }

    #[test]
    fn udp_computed_zero_becomes_ffff() {
        // ~0x0001 + ~0x0000 + 0x0001 folds to 0xffff, whose complement is 0.
        let d = diff([0x0000], [0x0001]);
        assert_eq!(apply(0x0001, d), 0, "precondition: a plain update gives 0");
        assert_eq!(apply_udp(0x0001, d), 0xffff);
    }

    #[test]
    fn ttl_decrement_updates_header_checksum() {
        let mut header = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 2, 203, 0, 113, 1,
        ];
        let check = u16::from_ne_bytes(full(&header).to_be_bytes());
        let old: [u16; 1] = words(&header[8..10]);
        header[8] -= 1;
        let new: [u16; 1] = words(&header[8..10]);
        let updated = u16::from_be_bytes(apply(check, diff(old, new)).to_ne_bytes());
        assert_eq!(updated, full(&header));
    }
}
