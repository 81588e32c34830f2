//! An IP address as the maps hold it and the programs carry it: its bytes in network order.
//!
//! It is 4-byte aligned and the BPF side only reads it a 32-bit word at a time, never a byte:
//! LLVM then moves an IPv6 address as four words rather than sixteen bytes. That matters
//! because a BPF program has 512 bytes of stack, and every value live across a helper call
//! spills into it.

/// An address of `N` bytes (4 or 16), in network byte order.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug)]
pub struct Addr<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for Addr<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

impl<const N: usize> Addr<N> {
    /// The `i`th 32-bit word, as a native load reads it.
    #[inline(always)]
    pub const fn word(&self, i: usize) -> u32 {
        assert!(4 * i + 4 <= N);
        // SAFETY: in bounds (asserted) and aligned (the type is 4-byte aligned, the offset a
        // multiple of 4); any bit pattern is a valid u32.
        unsafe { *self.0.as_ptr().add(4 * i).cast::<u32>() }
    }

    /// Whether this is `0.0.0.0` or `::`: the address of a wildcard binding's key.
    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        let mut set = 0;
        let mut i = 0;
        while i < N / 4 {
            set |= self.word(i);
            i += 1;
        }
        set == 0
    }
}

impl<const N: usize> PartialEq for Addr<N> {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let mut differ = 0;
        let mut i = 0;
        while i < N / 4 {
            differ |= self.word(i) ^ other.word(i);
            i += 1;
        }
        differ == 0
    }
}

impl<const N: usize> Eq for Addr<N> {}

// By the bytes, which agree with the word-wise equality above.
impl<const N: usize> core::hash::Hash for Addr<N> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl<const N: usize> PartialOrd for Addr<N> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Addr<N> {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn equal_only_when_every_word_is() {
        let a = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(a, a);
        for i in 0..16 {
            let mut b = a;
            b.0[i] ^= 0x80;
            assert_ne!(a, b, "byte {i}");
        }
    }

    #[test]
    fn unspecified_only_when_every_byte_is_zero() {
        assert!(Addr([0u8; 4]).is_unspecified());
        assert!(Addr([0u8; 16]).is_unspecified());
        for i in 0..16 {
            let mut a = Addr([0u8; 16]);
            a.0[i] = 1;
            assert!(!a.is_unspecified(), "byte {i}");
        }
    }
}
