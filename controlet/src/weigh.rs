//! What a message costs in memory while it waits: the measure every queue and buffer of peer
//! messages is bounded by, so a few large values cannot take what thousands of small ones
//! would be allowed.

use bytes::Bytes;

/// A value's size in bytes as it travels (its payload: keys, values, and what carries them),
/// an estimate cheap enough to take for every message.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for u64 {
    fn weight(&self) -> usize {
        8
    }
}

impl Weigh for u8 {
    fn weight(&self) -> usize {
        1
    }
}

impl Weigh for u32 {
    fn weight(&self) -> usize {
        4
    }
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl<T: Weigh> Weigh for Vec<T> {
    fn weight(&self) -> usize {
        self.iter().map(Weigh::weight).sum::<usize>() + 8
    }
}

impl<A: Weigh, B: Weigh> Weigh for (A, B) {
    fn weight(&self) -> usize {
        self.0.weight() + self.1.weight()
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn weight(&self) -> usize {
        self.as_ref().map_or(1, Weigh::weight)
    }
}
