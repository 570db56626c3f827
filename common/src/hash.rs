//! The stable hash of keys: FNV-1a 64 with MurmurHash3's finalizer. The same in every
//! process, on every platform and in every build, so whatever is derived from it (the
//! anti-entropy buckets, the partition a key belongs to) is too.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of `key`.
pub fn key_hash(key: &[u8]) -> u64 {
    avalanche(fnv1a(FNV_OFFSET, key))
}

/// FNV-1a 64 of a sequence of byte strings, each in turn (without their lengths).
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    avalanche(parts.into_iter().fold(FNV_OFFSET, fnv1a))
}

/// FNV-1a 64 of `bytes`, continuing from `h`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable() {
        // Pinned: a change here moves every key to another partition and bucket, which
        // a cluster of mixed builds cannot survive.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(key_hash(b""), avalanche(FNV_OFFSET));
        assert_eq!(key_hash(b"foo"), 0xaf85_ea55_6958_1d4c);
        assert_eq!(hash_parts([&b"fo"[..], b"o"]), key_hash(b"foo"));
    }
}
