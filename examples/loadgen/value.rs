//! The contents of the values loadgen writes: self-describing, so that any value read back
//! can be checked against the key it was read from without remembering what was written.
//!
//! # Layout
//!
//! ```text
//! rrrrrrrr wwwwwwww ssssssssssssssss cccccccc  body ...
//! run      writer   seq              check     (value_size - 40 bytes)
//! ```
//!
//! The 40-byte header is lowercase hex with no separators: the run id (random per loadgen
//! run), the writer (the connection that wrote it), the writer's sequence number for this write,
//! and a check word. The body is a pseudo-random stream of printable bytes. Check word and body
//! are both derived from a seed that hashes the key together with run, writer and seq.
//!
//! # Why this design
//!
//! Any number of connections may write the same key at once, so a reader cannot know *which*
//! write it will see. It does not need to: every value names its own writer and version, and
//! [`decode`] recomputes the check word and body from that name and the key it asked for. A value
//! written for another key, a torn mix of two writes, a truncated value or flipped bytes all fail
//! the recomputation. Whether the named write could have happened in this run is judged
//! separately, by [`crate::verify::Ledger`].
//!
//! The check word covers the header and key in every read (40 bytes, cheap); comparing the body
//! is the costly part, so it is done for a sampled fraction of reads.

use thiserror::Error;

/// Bytes of header at the start of every value: the smallest `--value-size`.
pub const HEADER_LEN: usize = 40;

/// Who wrote a value: a write's identity, unique within a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The loadgen run, random per run.
    pub run: u32,
    /// The connection that wrote it.
    pub writer: u32,
    /// The writer's count of sets sent, this one included: 1 for its first.
    pub seq: u64,
}

/// What is wrong with a value, as far as its own contents tell.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Corrupt {
    #[error("{len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("header is not loadgen's hex header: {0:?}")]
    BadHeader(String),
    #[error("check word does not match the key and header (value of another key, or damaged)")]
    CheckMismatch,
    #[error("body differs from what {tag:?} wrote, first at byte {at}")]
    BodyMismatch { tag: Tag, at: usize },
}

/// Appends the `len`-byte value that write `tag` stores under `key`. `len >= HEADER_LEN`.
pub fn encode(key: &[u8], tag: Tag, len: usize, out: &mut Vec<u8>) {
    assert!(
        len >= HEADER_LEN,
        "value of {len} bytes cannot hold a header"
    );
    let seed = seed(key, tag);
    push_hex(out, tag.run.into(), 8);
    push_hex(out, tag.writer.into(), 8);
    push_hex(out, tag.seq, 16);
    push_hex(out, check_word(seed).into(), 8);
    let start = out.len();
    out.resize(start + len - HEADER_LEN, 0);
    fill_body(seed, &mut out[start..]);
}

/// The write that `data`, read from `key`, says it is; checked against its check word, and
/// byte for byte against its body if `check_body`.
pub fn decode(key: &[u8], data: &[u8], check_body: bool) -> Result<Tag, Corrupt> {
    let header = data
        .get(..HEADER_LEN)
        .ok_or(Corrupt::TooShort { len: data.len() })?;
    let bad = || Corrupt::BadHeader(String::from_utf8_lossy(header).into_owned());
    let field = |range: std::ops::Range<usize>| parse_hex(&header[range]).ok_or_else(bad);
    let tag = Tag {
        run: field(0..8)? as u32,
        writer: field(8..16)? as u32,
        seq: field(16..32)?,
    };
    let seed = seed(key, tag);
    if field(32..40)? != u64::from(check_word(seed)) {
        return Err(Corrupt::CheckMismatch);
    }
    if check_body {
        let body = &data[HEADER_LEN..];
        let mut want = vec![0; body.len()];
        fill_body(seed, &mut want);
        if let Some(at) = body.iter().zip(&want).position(|(a, b)| a != b) {
            let at = at + HEADER_LEN;
            return Err(Corrupt::BodyMismatch { tag, at });
        }
    }
    Ok(tag)
}

/// The body's alphabet: 64 printable bytes, so a value reads well in a packet capture.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn seed(key: &[u8], tag: Tag) -> u64 {
    let who = (u64::from(tag.run) << 32) | u64::from(tag.writer);
    mix(fnv1a(key) ^ mix(who ^ mix(tag.seq)))
}

fn check_word(seed: u64) -> u32 {
    (mix(seed ^ 0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// The body: splitmix64's stream from `seed`, each output byte mapped into [`ALPHABET`].
fn fill_body(seed: u64, body: &mut [u8]) {
    let mut state = seed;
    for chunk in body.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let word = mix(state).to_le_bytes();
        for (out, byte) in chunk.iter_mut().zip(word) {
            *out = ALPHABET[usize::from(byte & 63)];
        }
    }
}

/// splitmix64's finalizer: a strong 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn push_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize]);
    }
}

/// Lowercase hex only: the header is written one way, so any other spelling is damage.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u64::from(nibble))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: Tag = Tag {
        run: 0xdead_beef,
        writer: 7,
        seq: 12345,
    };

    fn value(key: &[u8], tag: Tag, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode(key, tag, len, &mut out);
        out
    }

    #[test]
    fn a_value_decodes_to_the_write_that_made_it() {
        for len in [HEADER_LEN, HEADER_LEN + 1, 100, 4099] {
            let data = value(b"k:1", TAG, len);
            assert_eq!(data.len(), len);
            assert_eq!(decode(b"k:1", &data, true), Ok(TAG));
        }
        assert!(value(b"k", TAG, 100).iter().all(u8::is_ascii_graphic));
    }

    #[test]
    fn values_differ_by_key_and_by_write() {
        let base = value(b"k:1", TAG, 100);
        assert_ne!(base, value(b"k:2", TAG, 100));
        assert_ne!(base, value(b"k:1", Tag { seq: 12346, ..TAG }, 100));
        assert_ne!(base, value(b"k:1", Tag { writer: 8, ..TAG }, 100));
    }

    #[test]
    fn a_value_read_from_another_key_fails_its_check_word() {
        let data = value(b"k:1", TAG, 100);
        assert_eq!(decode(b"k:2", &data, false), Err(Corrupt::CheckMismatch));
    }

    #[test]
    fn a_flipped_header_byte_is_caught_without_the_body() {
        for at in 0..HEADER_LEN {
            let mut data = value(b"k", TAG, 64);
            data[at] = if data[at] == b'0' { b'1' } else { b'0' };
            assert!(decode(b"k", &data, false).is_err(), "flip at {at} missed");
        }
    }

    #[test]
    fn a_flipped_body_byte_is_caught_when_the_body_is_checked() {
        let mut data = value(b"k", TAG, 100);
        data[70] ^= 1;
        assert_eq!(decode(b"k", &data, false), Ok(TAG));
        assert_eq!(
            decode(b"k", &data, true),
            Err(Corrupt::BodyMismatch { tag: TAG, at: 70 })
        );
    }

    #[test]
    fn a_torn_value_made_of_two_writes_is_caught() {
        let first = value(b"k", TAG, 100);
        let second = value(b"k", Tag { seq: 99, ..TAG }, 100);
        let torn = [&first[..60], &second[60..]].concat();
        assert!(matches!(
            decode(b"k", &torn, true),
            Err(Corrupt::BodyMismatch { at: 60, .. })
        ));
    }

    #[test]
    fn garbage_and_short_values_are_corrupt() {
        assert_eq!(
            decode(b"k", b"hello", true),
            Err(Corrupt::TooShort { len: 5 })
        );
        let garbage = [b'x'; 100];
        assert!(matches!(
            decode(b"k", &garbage, true),
            Err(Corrupt::BadHeader(_))
        ));
        let mut upper = value(b"k", TAG, 100);
        upper[..8].make_ascii_uppercase();
        assert!(matches!(
            decode(b"k", &upper, true),
            Err(Corrupt::BadHeader(_))
        ));
    }
}
