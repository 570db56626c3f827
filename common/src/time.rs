//! Time as memcached counts it: whole seconds since the Unix epoch.
//!
//! Nothing here reads a clock on its own; callers pass `now` in, taken from a [`Clock`].
//! Tests use [`ManualClock`] to move time by hand instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Whole seconds since the Unix epoch.
pub type UnixSecs = u64;

/// An exptime up to this many seconds (30 days) is relative to now; a larger one is a Unix
/// time. Same rule and same bound as memcached's `REALTIME_MAXDELTA`.
pub const MAX_RELATIVE_EXPTIME_SECS: i64 = 60 * 60 * 24 * 30;

/// When an item stops being visible.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Expiry {
    #[default]
    Never,
    /// Expired once the clock reads this second or later.
    At(UnixSecs),
}

impl Expiry {
    /// Converts a client's exptime as memcached does: 0 never expires, a negative value is
    /// already expired, up to 30 days is relative to `now`, anything larger is a Unix time.
    pub fn from_exptime(exptime: i32, now: UnixSecs) -> Self {
        let exptime = i64::from(exptime);
        if exptime == 0 {
            Expiry::Never
        } else if exptime < 0 {
            Expiry::At(0)
        } else if exptime <= MAX_RELATIVE_EXPTIME_SECS {
            Expiry::At(now + exptime as u64)
        } else {
            Expiry::At(exptime as u64)
        }
    }

    pub fn is_expired(self, now: UnixSecs) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(at) => at <= now,
        }
    }
}

/// A source of the current time in seconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixSecs;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSecs {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests of expiry without sleeping.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: UnixSecs) -> Self {
        ManualClock(AtomicU64::new(now))
    }

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn set(&self, now: UnixSecs) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixSecs {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_follows_memcached_rules() {
        let now = 1_700_000_000;
        assert_eq!(Expiry::from_exptime(0, now), Expiry::Never);
        assert!(Expiry::from_exptime(-1, now).is_expired(now));
        assert_eq!(Expiry::from_exptime(10, now), Expiry::At(now + 10));
        let month = MAX_RELATIVE_EXPTIME_SECS as i32;
        assert_eq!(
            Expiry::from_exptime(month, now),
            Expiry::At(now + month as u64)
        );
        assert_eq!(
            Expiry::from_exptime(month + 1, now),
            Expiry::At(month as u64 + 1)
        );
        assert!(Expiry::from_exptime(month + 1, now).is_expired(now));
        assert!(!Expiry::At(now + 1).is_expired(now));
        assert!(Expiry::At(now + 1).is_expired(now + 1));
        assert!(!Expiry::Never.is_expired(u64::MAX));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.now(), 100);
        clock.advance(5);
        assert_eq!(clock.now(), 105);
        clock.set(7);
        assert_eq!(clock.now(), 7);
    }
}
