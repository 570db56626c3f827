//! Number parsing with the exact rules of memcached's `safe_strto*` helpers.
//!
//! memcached parses numbers with C's `strtol`/`strtoul`/`strtoull` and then checks what
//! follows. Clients see the consequences, so we copy them: leading whitespace and a sign are
//! accepted, a number may be followed by whitespace inside its token, `-0` is zero, and 32-bit
//! fields take the low 32 bits of a 64-bit parse (`4294967297` as flags is `1`).

/// C's `isspace` in the "C" locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The result of scanning `[space*][sign][digits]`: `None` when there are no digits.
struct Scan {
    negative: bool,
    /// `None` when the digits overflow 64 bits (C's `ERANGE`).
    magnitude: Option<u64>,
    /// Index just past the last digit.
    end: usize,
}

fn scan(s: &[u8]) -> Option<Scan> {
    let mut i = s.iter().take_while(|&&b| is_c_space(b)).count();
    let negative = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let magnitude = s[i..i + digits].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(Scan {
        negative,
        magnitude,
        end: i + digits,
    })
}

/// What may follow a number: the end of the token, a NUL (where C's string ends), or
/// whitespace.
fn tail_ok(s: &[u8], end: usize) -> bool {
    end == s.len() || s[end] == 0 || is_c_space(s[end])
}

/// memcached's `safe_strtoull`: a 64-bit unsigned number; a negative one is refused unless it
/// is small enough to wrap to a value below 2^63 (as `-0` does).
pub fn strtoull(s: &[u8]) -> Option<u64> {
    let scan = scan(s)?;
    let magnitude = scan.magnitude?;
    if !tail_ok(s, scan.end) {
        return None;
    }
    let value = if scan.negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    };
    if (value as i64) < 0 && scan.negative {
        return None;
    }
    Some(value)
}

/// memcached's `safe_strtoul` into a `uint32_t`: parsed as 64 bits, truncated to 32.
pub fn strtoul_u32(s: &[u8]) -> Option<u32> {
    strtoull(s).map(|v| v as u32)
}

/// memcached's `safe_strtol` into an `int32_t`: parsed as a 64-bit `long`, truncated to 32.
pub fn strtol_i32(s: &[u8]) -> Option<i32> {
    let scan = scan(s)?;
    let magnitude = scan.magnitude?;
    if !tail_ok(s, scan.end) {
        return None;
    }
    let value: i64 = if scan.negative {
        if magnitude > 1 << 63 {
            return None;
        }
        (magnitude as i64).wrapping_neg()
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoull_matches_memcached() {
        assert_eq!(strtoull(b"0"), Some(0));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"+5"), Some(5));
        assert_eq!(strtoull(b"-0"), Some(0));
        assert_eq!(strtoull(b"-1"), None);
        assert_eq!(strtoull(b" 12"), Some(12));
        assert_eq!(strtoull(b"12 "), Some(12));
        assert_eq!(strtoull(b"12\t"), Some(12));
        assert_eq!(strtoull(b"12abc"), None);
        assert_eq!(strtoull(b"abc"), None);
        assert_eq!(strtoull(b""), None);
        assert_eq!(strtoull(b" "), None);
        assert_eq!(strtoull(b"-"), None);
    }

    #[test]
    fn thirty_two_bit_fields_truncate_like_c() {
        assert_eq!(strtoul_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(strtoul_u32(b"4294967296"), Some(0));
        assert_eq!(strtoul_u32(b"4294967297"), Some(1));
        assert_eq!(strtoul_u32(b"-1"), None);
        assert_eq!(strtol_i32(b"-1"), Some(-1));
        assert_eq!(strtol_i32(b"2147483648"), Some(i32::MIN));
        assert_eq!(strtol_i32(b"4294967296"), Some(0));
        assert_eq!(strtol_i32(b"-2147483649"), Some(i32::MAX));
        assert_eq!(strtol_i32(b"9223372036854775808"), None);
        assert_eq!(strtol_i32(b"-9223372036854775808"), Some(0));
        assert_eq!(strtol_i32(b"1x"), None);
    }
}
