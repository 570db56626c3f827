//! Base64 keys of the meta protocol (`b`), read and written exactly as memcached 1.6.18's
//! `base64.c` does. Its decoder is lenient in its own way, and a key must mean the same item
//! here as there, so the rules are copied rather than taken from a strict decoder: bytes
//! outside the alphabet are skipped, `=` counts as a digit of value 0, the digits must come in
//! fours, and decoding stops after the first group that holds padding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A byte's value as a base64 digit, `=` as 0; `None` for a byte the decoder skips.
fn digit(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// memcached's `base64_decode`: `None` where it returns 0 (no digits, a count of digits not a
/// multiple of four, padding of three or more in a group, or nothing decoded).
pub fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&b| digit(b).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let mut block = [0u8; 4];
    let mut filled = 0;
    let mut pad = 0;
    for &b in src {
        let Some(d) = digit(b) else { continue };
        if b == b'=' {
            pad += 1;
        }
        block[filled] = d;
        filled += 1;
        if filled == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            filled = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// memcached's `base64_encode`: the standard alphabet, padded, on one line.
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let table = |i: u8| ALPHABET[usize::from(i & 0x3f)];
    let mut chunks = src.chunks_exact(3);
    for c in &mut chunks {
        out.extend_from_slice(&[
            table(c[0] >> 2),
            table((c[0] << 4) | (c[1] >> 4)),
            table((c[1] << 2) | (c[2] >> 6)),
            table(c[2]),
        ]);
    }
    match *chunks.remainder() {
        [a] => out.extend_from_slice(&[table(a >> 2), table(a << 4), b'=', b'=']),
        [a, b] => out.extend_from_slice(&[
            table(a >> 2),
            table((a << 4) | (b >> 4)),
            table(b << 2),
            b'=',
        ]),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(src, &mut out);
        out
    }

    #[test]
    fn round_trips_every_length() {
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            let text = encoded(&data);
            assert_eq!(text.len(), data.len().div_ceil(3) * 4);
            if len > 0 {
                assert_eq!(decode(&text), Some(data));
            }
        }
        assert_eq!(encoded(b"foo"), b"Zm9v");
        assert_eq!(encoded(b"fo"), b"Zm8=");
        assert_eq!(encoded(b"f"), b"Zg==");
    }

    #[test]
    fn decodes_as_leniently_as_memcached() {
        // Bytes outside the alphabet are skipped.
        assert_eq!(decode(b"Zm9v!"), Some(b"foo".to_vec()));
        assert_eq!(decode(b"Z m9v"), Some(b"foo".to_vec()));
        // Digits must come in fours.
        assert_eq!(decode(b"Zm9"), None);
        assert_eq!(decode(b"!!!!"), None);
        assert_eq!(decode(b""), None);
        // Decoding stops after the first padded group.
        assert_eq!(decode(b"Zg==Zm9v"), Some(b"f".to_vec()));
        // Three pads in a group are refused; `=` alone decodes to a zero byte... then is cut.
        assert_eq!(decode(b"Z==="), None);
        assert_eq!(decode(b"===="), None);
        assert_eq!(decode(b"AA=="), Some(vec![0]));
    }
}
