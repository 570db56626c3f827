//! The clock reservation ([`crate::Datalet::load_clock`], [`crate::Datalet::save_clock`]),
//! kept in the remote server under [`CLOCK_KEY`]: a header (version `(ts, 0)`, no expiry)
//! and `ts` in decimal. The stored value only ever goes up, so controlets sharing one server,
//! or a save that comes late, never lower it: each resumes past the highest reservation.

use tailorkv_common::client::{Hit, Request, StoreCommand};
use tailorkv_common::codec::strtoull;
use tailorkv_common::{Expiry, Ts, Version};

use super::conn::Conn;
use super::header::Header;
use super::ops::{gets, written, OpError, Written, MAX_RACES};
use super::state::Shared;
use crate::DataletError;

/// The key the clock reservation is kept under.
pub const CLOCK_KEY: &[u8] = b"__tailorkv_clock";

pub async fn load_clock(s: &Shared, conn: &mut Conn) -> Result<Ts, OpError> {
    let ts = match gets(conn, CLOCK_KEY).await? {
        None => 0,
        Some(remote) => clock_of(&remote).ok_or_else(|| {
            let why = "the clock key holds something that is not a clock".to_string();
            OpError::Refused(DataletError::Unavailable(why))
        })?,
    };
    s.clock_was_saved(ts);
    Ok(ts)
}

/// The reservation the clock key holds now, if it holds one; `None` too for a value that is
/// not a clock.
pub async fn held_clock(conn: &mut Conn) -> Result<Option<Ts>, OpError> {
    Ok(gets(conn, CLOCK_KEY).await?.as_ref().and_then(clock_of))
}

/// Raises the saved clock to `ts`; never lowers it.
pub async fn save_clock(s: &Shared, conn: &mut Conn, ts: Ts) -> Result<(), OpError> {
    for _ in 0..MAX_RACES {
        let remote = gets(conn, CLOCK_KEY).await?;
        let unique = remote.as_ref().map(|r| r.cas);
        if remote.as_ref().and_then(clock_of) >= Some(ts) {
            s.clock_was_saved(ts);
            return Ok(());
        }
        let command = unique.map_or(StoreCommand::Add, StoreCommand::Cas);
        let header = Header {
            version: Version::new(ts, Default::default()),
            expiry: Expiry::Never,
            stored_at: 0,
            marks: crate::Marks::default(),
        };
        let digits = ts.to_string();
        let head = header.encode();
        let request = Request::Store {
            command,
            key: CLOCK_KEY,
            flags: 0,
            exptime: 0,
            head: &head,
            body: digits.as_bytes(),
        };
        if written(conn.call(request).await?)? == Written::Stored {
            s.clock_was_saved(ts);
            return Ok(());
        }
    }
    let why = "the clock key kept changing; gave up".to_string();
    Err(OpError::Refused(DataletError::Unavailable(why)))
}

/// Puts the clock back after something that may have erased it. A refusal is logged and
/// ignored: the connection itself is fine.
pub async fn resave_clock(s: &Shared, conn: &mut Conn, ts: Ts) -> Result<(), OpError> {
    match save_clock(s, conn, ts).await {
        Err(OpError::Refused(e)) => {
            tracing::warn!(error = %e, ts, "cannot put the clock reservation back");
            Ok(())
        }
        other => other,
    }
}

fn clock_of(remote: &Hit) -> Option<Ts> {
    let (_, digits) = Header::decode(&remote.data).ok()?;
    strtoull(&digits)
}
