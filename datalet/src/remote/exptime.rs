//! The exptime a remote server is given, so that it reclaims expired items by itself.
//!
//! The header's expiry decides whether an item is visible, by the caller's clock (`now`): the
//! remote server's exptime only lets it free the memory. So the remote must never drop an item
//! before the header says it expires, and a little later is harmless. Two things make that so:
//!
//! - The exptime is the wall clock plus the time the item has left by the caller's clock, not
//!   the expiry second itself: a caller whose clock is not the wall clock (a test's fixed
//!   `now`, a replica applying a write late) still gives the item its full lifetime.
//! - [`SLACK_SECS`] is added, because memcached's clock ticks on its own and may turn to the
//!   next second up to a second before ours.
//!
//! The exptime is an absolute Unix time, which memcached reads as such because it is past
//! 30 days. memcached reads exptimes as 32-bit signed numbers, so an expiry past 2038 is sent
//! as 0 (never): the header still expires the item on time.

use tailorkv_common::{Expiry, UnixSecs};

/// Seconds the remote keeps an item past its expiry.
pub const SLACK_SECS: u64 = 1;

/// The largest exptime memcached reads correctly.
const MAX_EXPTIME: u64 = i32::MAX as u64;

/// The exptime for an item expiring at `expiry`, when the caller's clock reads `now` and the
/// wall clock `wall`; `None` when the item is already expired and must not be stored.
pub fn remote_exptime(expiry: Expiry, now: UnixSecs, wall: UnixSecs) -> Option<i64> {
    match expiry {
        Expiry::Never => Some(0),
        Expiry::At(at) if at <= now => None,
        Expiry::At(at) => {
            let remote = wall.saturating_add(at - now).saturating_add(SLACK_SECS);
            Some(if remote > MAX_EXPTIME {
                0
            } else {
                remote as i64
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: UnixSecs = 1_750_000_000;

    #[test]
    fn never_is_zero_and_the_past_is_not_stored() {
        assert_eq!(remote_exptime(Expiry::Never, 5, WALL), Some(0));
        assert_eq!(remote_exptime(Expiry::At(5), 5, WALL), None);
        assert_eq!(remote_exptime(Expiry::At(0), 5, WALL), None);
    }

    #[test]
    fn the_remaining_lifetime_counts_from_the_wall_clock() {
        let now = 1_700_000_000;
        let exptime = remote_exptime(Expiry::At(now + 100), now, WALL);
        assert_eq!(exptime, Some((WALL + 100 + SLACK_SECS) as i64));
        assert_eq!(
            remote_exptime(Expiry::At(WALL + 1), WALL, WALL),
            Some((WALL + 1 + SLACK_SECS) as i64)
        );
    }

    #[test]
    fn past_2038_the_remote_keeps_it_and_the_header_expires_it() {
        let now = WALL;
        assert_eq!(remote_exptime(Expiry::At(u64::MAX), now, WALL), Some(0));
        let last = MAX_EXPTIME - SLACK_SECS;
        assert_eq!(
            remote_exptime(Expiry::At(last), now, WALL),
            Some(i32::MAX as i64)
        );
        assert_eq!(remote_exptime(Expiry::At(last + 1), now, WALL), Some(0));
    }
}
