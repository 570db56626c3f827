//! Judging a value read back: was it one this run could have written for that key?
//!
//! # How it works
//!
//! [`crate::value::decode`] tells whether a value is internally consistent for its key and names
//! the write ([`Tag`]) that made it. The [`Ledger`], shared by all connections, holds what the
//! run has done so far, to judge whether that write could have happened:
//!
//! - `issued[w]`: the highest seq writer `w` has sent. A value of this run naming a writer that
//!   does not exist, or a seq not yet sent, is made up.
//! - `written`: one bit per key, set once any set of this run to the key was answered `STORED`.
//!
//! A value from *another* run (another run id) is legitimate on a key this run has not written
//! yet: it is left over from an earlier loadgen run, and counts as [`Verdict::Foreign`], not as an
//! error. Once a set of this run was acknowledged before the get was sent, every later read must
//! see a value of this run: an older run's value then is a lost write.
//!
//! Caveats: two loadgen runs writing the same keys at once would flag each other's values as lost
//! writes; give concurrent runs different `--key-prefix`es. Staleness among this run's own writes
//! (reading an older version of the run after a newer one was acknowledged) is not judged: with
//! concurrent writers to a key, which version a read must see is not defined by its send time
//! alone, so that would take a linearizability checker, not a ledger.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::value::{self, Corrupt, Tag};

/// What a value that passed the checks is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Written by this run.
    Ours,
    /// Left over from another loadgen run, on a key this run had not yet written.
    Foreign,
}

/// A value this run could not have written for the key it was read from.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WrongValue {
    #[error("reply is for key {got:?}")]
    OtherKey { got: String },
    #[error("flags {0}, but loadgen writes 0")]
    Flags(u32),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("{got} bytes, but this run writes {want}")]
    WrongLength { got: usize, want: usize },
    #[error("names writer {writer}, which this run does not have")]
    UnknownWriter { writer: u32 },
    #[error("names seq {seq} of writer {writer}, which has only sent {issued}")]
    NotYetWritten { writer: u32, seq: u64, issued: u64 },
    #[error(
        "value of run {run:08x} after this run's write to the key was acknowledged (lost write)"
    )]
    LostWrite { run: u32 },
}

/// What the run has written so far: see the module docs.
pub struct Ledger {
    run: u32,
    value_size: usize,
    issued: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
}

impl Ledger {
    /// A ledger for run `run`, with `writers` connections writing `value_size`-byte values to
    /// `keys` keys.
    pub fn new(run: u32, writers: u32, keys: u64, value_size: usize) -> Self {
        let words = keys.div_ceil(64) as usize;
        Ledger {
            run,
            value_size,
            issued: (0..writers).map(|_| AtomicU64::new(0)).collect(),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The tag for writer `writer`'s set number `seq`, recorded as sent. Call before sending.
    pub fn issue(&self, writer: u32, seq: u64) -> Tag {
        self.issued[writer as usize].fetch_max(seq, Ordering::Release);
        Tag {
            run: self.run,
            writer,
            seq,
        }
    }

    /// Records that a set to key `index` was answered `STORED`.
    pub fn mark_written(&self, index: u64) {
        let bit = 1 << (index % 64);
        self.written[(index / 64) as usize].fetch_or(bit, Ordering::Release);
    }

    /// Whether a set to key `index` has been answered `STORED` yet. Read when a get is sent.
    pub fn was_written(&self, index: u64) -> bool {
        let bit = 1 << (index % 64);
        self.written[(index / 64) as usize].load(Ordering::Acquire) & bit != 0
    }

    /// Judges `data`, read from `key` (number `index`) by a get sent when
    /// [`was_written`](Self::was_written) said `written_before`. The body is compared only if
    /// `check_body`.
    pub fn judge(
        &self,
        key: &[u8],
        data: &[u8],
        written_before: bool,
        check_body: bool,
    ) -> Result<Verdict, WrongValue> {
        let tag = value::decode(key, data, check_body)?;
        if tag.run != self.run {
            return match written_before {
                true => Err(WrongValue::LostWrite { run: tag.run }),
                false => Ok(Verdict::Foreign),
            };
        }
        if data.len() != self.value_size {
            let (got, want) = (data.len(), self.value_size);
            return Err(WrongValue::WrongLength { got, want });
        }
        let writer = tag.writer;
        let issued = self
            .issued
            .get(writer as usize)
            .ok_or(WrongValue::UnknownWriter { writer })?
            .load(Ordering::Acquire);
        if tag.seq == 0 || tag.seq > issued {
            let seq = tag.seq;
            return Err(WrongValue::NotYetWritten {
                writer,
                seq,
                issued,
            });
        }
        Ok(Verdict::Ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u32 = 0x1234_5678;

    fn value(key: &[u8], tag: Tag, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        value::encode(key, tag, len, &mut out);
        out
    }

    #[test]
    fn a_sent_write_of_this_run_is_ours() {
        let ledger = Ledger::new(RUN, 2, 10, 64);
        let tag = ledger.issue(1, 3);
        assert_eq!(
            ledger.judge(b"k", &value(b"k", tag, 64), false, true),
            Ok(Verdict::Ours)
        );
        assert_eq!(
            ledger.judge(b"k", &value(b"k", tag, 64), true, true),
            Ok(Verdict::Ours)
        );
    }

    #[test]
    fn concurrent_writers_to_one_key_all_verify() {
        let ledger = Ledger::new(RUN, 4, 1, 64);
        for writer in 0..4 {
            let tag = ledger.issue(writer, 1);
            let data = value(b"hot", tag, 64);
            assert_eq!(ledger.judge(b"hot", &data, true, true), Ok(Verdict::Ours));
        }
    }

    #[test]
    fn writes_this_run_never_sent_are_made_up() {
        let ledger = Ledger::new(RUN, 2, 10, 64);
        ledger.issue(0, 5);
        let future = Tag {
            run: RUN,
            writer: 0,
            seq: 6,
        };
        let ghost = Tag {
            writer: 9,
            ..future
        };
        assert!(matches!(
            ledger.judge(b"k", &value(b"k", future, 64), false, true),
            Err(WrongValue::NotYetWritten {
                seq: 6,
                issued: 5,
                ..
            })
        ));
        assert_eq!(
            ledger.judge(b"k", &value(b"k", ghost, 64), false, true),
            Err(WrongValue::UnknownWriter { writer: 9 })
        );
    }

    #[test]
    fn another_runs_value_is_foreign_until_this_run_wrote_the_key() {
        let ledger = Ledger::new(RUN, 1, 100, 64);
        let old = Tag {
            run: 7,
            writer: 0,
            seq: 1,
        };
        // An older run may have used another value size: still a well-formed value.
        let data = value(b"k", old, 200);
        assert!(!ledger.was_written(42));
        assert_eq!(ledger.judge(b"k", &data, false, true), Ok(Verdict::Foreign));
        ledger.mark_written(42);
        assert!(ledger.was_written(42) && !ledger.was_written(41));
        assert_eq!(
            ledger.judge(b"k", &data, ledger.was_written(42), true),
            Err(WrongValue::LostWrite { run: 7 })
        );
    }

    #[test]
    fn damage_and_wrong_sizes_are_wrong_values() {
        let ledger = Ledger::new(RUN, 1, 1, 64);
        let tag = ledger.issue(0, 1);
        assert_eq!(
            ledger.judge(b"k", &value(b"k", tag, 65), false, true),
            Err(WrongValue::WrongLength { got: 65, want: 64 })
        );
        assert_eq!(
            ledger.judge(b"other", &value(b"k", tag, 64), false, true),
            Err(WrongValue::Corrupt(Corrupt::CheckMismatch))
        );
        assert!(ledger.judge(b"k", b"garbage", false, true).is_err());
    }
}
