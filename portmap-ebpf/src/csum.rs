//! Incremental Internet checksum updates (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
//!
//! A NAT changes a handful of bytes; recomputing a checksum over the whole packet would cost a
//! loop over the payload. These functions fold the change of one field into an existing checksum
//! instead. Checksums and fields are taken as the bytes on the wire.

/// Adds the 16-bit big-endian words of `bytes` into a 32-bit accumulator. `N` is even.
#[inline(always)]
const fn add_words<const N: usize>(mut acc: u32, bytes: &[u8; N], complement: bool) -> u32 {
    let mut i = 0;
    while i < N {
        let word = u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        acc += if complement { !word } else { word } as u32;
        i += 2;
    }
    acc
}

/// Folds the carries of a 32-bit accumulator into 16 bits. Two rounds suffice for a sum of
/// fewer than 65,536 words.
#[inline(always)]
pub const fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum after a covered field changed from `old` to `new`.
#[inline(always)]
pub const fn replace<const N: usize>(check: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    let acc = !u16::from_be_bytes(check) as u32;
    let acc = add_words(acc, old, true);
    let acc = add_words(acc, new, false);
    (!fold(acc)).to_be_bytes()
}

/// [`replace`] for a UDP checksum over IPv4: a zero checksum means "none" and stays zero, and a
/// result of zero is sent as `0xffff`, its one's-complement twin (RFC 768).
#[inline(always)]
pub const fn replace_udp<const N: usize>(check: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    if check[0] == 0 && check[1] == 0 {
        return check;
    }
    let updated = replace(check, old, new);
    if updated[0] == 0 && updated[1] == 0 {
        [0xff, 0xff]
    } else {
        updated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of `bytes` computed from scratch (RFC 1071), with its field zeroed.
    fn full(bytes: &[u8]) -> [u8; 2] {
        let mut acc = 0u32;
        for pair in bytes.chunks(2) {
            let hi = pair[0];
            let lo = pair.get(1).copied().unwrap_or(0);
            acc += u16::from_be_bytes([hi, lo]) as u32;
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        (!(acc as u16)).to_be_bytes()
    }

    /// xorshift: deterministic inputs without a dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn replace_matches_recomputation_for_addresses_and_ports() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            let mut header = [0u8; 20];
            for byte in header.iter_mut() {
                *byte = rng(&mut state) as u8;
            }
            header[10] = 0;
            header[11] = 0;
            let check = full(&header);

            let old_addr: [u8; 4] = header[16..20].try_into().unwrap();
            let new_addr = (rng(&mut state) as u32).to_be_bytes();
            let old_port: [u8; 2] = header[2..4].try_into().unwrap();
            let new_port = (rng(&mut state) as u16).to_be_bytes();
            header[16..20].copy_from_slice(&new_addr);
            header[2..4].copy_from_slice(&new_port);

            let incremental = replace(replace(check, &old_addr, &new_addr), &old_port, &new_port);
            let recomputed = full(&header);
            // 0x0000 and 0xffff are both zero in one's complement; RFC 1624 eq. 3 never yields
            // 0x0000 from a valid checksum, a from-scratch sum may yield either.
            let same = incremental == recomputed
                || (incremental == [0xff, 0xff] && recomputed == [0, 0])
                || (incremental == [0, 0] && recomputed == [0xff, 0xff]);
            assert!(
                same,
                "{header:02x?}: incremental {incremental:02x?}, full {recomputed:02x?}"
            );
        }
    }

    #[test]
    fn replace_of_identical_field_changes_nothing() {
        assert_eq!(
            replace([0x12, 0x34], &[1, 2, 3, 4], &[1, 2, 3, 4]),
            [0x12, 0x34]
        );
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(
            replace_udp([0, 0], &[10, 0, 0, 1], &[172, 17, 0, 2]),
            [0, 0]
        );
    }

    #[test]
    fn udp_computed_zero_becomes_ffff() {
        // Pick `new` so that the one's-complement sum becomes 0xffff, i.e. the checksum 0.
        let check = [0x00, 0x01];
        let old = [0x00, 0x00];
        // ~0x0001 = 0xfffe; + ~0x0000 = 0xfffe + 0xffff -> 0xfffe (after fold); need + new = 0xffff
        let new = [0x00, 0x01];
        assert_eq!(
            replace(check, &old, &new),
            [0, 0],
            "precondition: plain replace gives 0"
        );
        assert_eq!(replace_udp(check, &old, &new), [0xff, 0xff]);
    }

    #[test]
    fn ttl_decrement_updates_header_checksum() {
        let mut header = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 2, 203, 0, 113, 1,
        ];
        let check = full(&header);
        let old = [header[8], header[9]];
        header[8] -= 1;
        let new = [header[8], header[9]];
        assert_eq!(replace(check, &old, &new), full(&header));
    }
}
