//! A node's budget for moving data (`--rebalance-rate`): a token bucket shared by every
//! transfer the node sends, so the rate holds for the node, however many groups move at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The span of sending a chunk is sized for (see [`RateLimit::chunk_bytes`]).
pub const CHUNK_SPAN: Duration = Duration::from_millis(250);
/// The smallest chunk, whatever the rate.
pub const MIN_CHUNK: usize = 16 << 10;

/// Bytes per second, with a burst of at most `burst` bytes saved up while idle (none at
/// first).
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    /// Tokens (bytes) available, and when they were last counted. May go below zero: a
    /// transfer spends what it sent, and waits for the debt to be paid back.
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64, burst: usize) -> Self {
        RateLimit {
            rate: bytes_per_sec.max(1) as f64,
            burst: burst as f64,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let earned = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + earned).min(self.burst);
        state.1 = now;
    }

    /// Whether a transfer may send more now (no debt outstanding).
    pub fn ready(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        self.refill(&mut state);
        state.0 >= 0.0
    }

    /// Records `bytes` sent.
    pub fn spend(&self, bytes: u64) {
        let mut state = self.state.lock().unwrap();
        self.refill(&mut state);
        state.0 -= bytes as f64;
    }

    /// The size of a transfer's chunks under this budget: what it earns in
    /// [`CHUNK_SPAN`], at least [`MIN_CHUNK`] and at most `most`. Sending one chunk and then
    /// waiting for its debt keeps the rate within about that span, where a chunk of a whole
    /// `most` bytes at a low rate would go out at once and be followed by seconds of silence.
    pub fn chunk_bytes(&self, most: usize) -> usize {
        ((self.rate * CHUNK_SPAN.as_secs_f64()) as usize).clamp(MIN_CHUNK.min(most), most)
    }

    /// How long until [`RateLimit::ready`].
    pub fn wait(&self) -> Duration {
        let mut state = self.state.lock().unwrap();
        self.refill(&mut state);
        if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_a_quarter_second_of_the_rate_within_bounds() {
        let most = 1 << 20;
        assert_eq!(RateLimit::new(200_000, most).chunk_bytes(most), 50_000);
        assert_eq!(RateLimit::new(100_000_000, most).chunk_bytes(most), most);
        assert_eq!(RateLimit::new(1_000, most).chunk_bytes(most), MIN_CHUNK);
        assert_eq!(RateLimit::new(1_000, most).chunk_bytes(1_000), 1_000);
    }

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let limit = RateLimit::new(1_000_000, 1_000);
        assert!(limit.ready());
        limit.spend(100_000);
        assert!(!limit.ready());
        let wait = limit.wait();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limit.ready());
    }
}
