//! The datalet's operations as memcached requests on one connection.
//!
//! # How a mutation is carried out
//!
//! A plain `set` is one `set` request: it does not depend on what was there. Every other
//! mutation is a read-modify-write:
//!
//! 1. `gets` the key: the remote value and the remote server's CAS unique.
//! 2. [`see`] it: a valid header that is neither expired nor flushed makes it the live item;
//!    anything else (no value, an expired or flushed one, a foreign one) is no item.
//! 3. [`decide`] what the mutation does to that item, exactly as every other backend does.
//! 4. Write the change back conditionally: `cas` on the unique read in step 1 when the remote
//!    held a value, `add` when it held none; a removal is a `delete`, or a `cas` of an empty,
//!    already expired value when it must be conditional (a stored item that is already
//!    expired, as `touch` with a past time makes).
//! 5. If another client changed the key in between (`EXISTS`, `NOT_FOUND`, `NOT_STORED`),
//!    start again from step 1, at most [`MAX_RACES`] times.
//!
//! [`apply`] runs these steps alone on a connection; the pool instead sends step 1 of many
//! read-modify-writes in one batch and step 4 of all of them in the next write
//! ([`plan_read`], [`plan_write`], [`write_done`]), and only a race falls back to [`apply`].
//!
//! So a writer that does not go through this datalet, or another controlet on the same remote
//! server, never has its update lost: a write back only lands on the value it was decided on.
//! A `delete` is not conditional (memcached has no compare-and-delete in its text protocol);
//! it is still correct, because a delete's outcome depends only on there being an item.

use bytes::{Bytes, BytesMut};
use tailorkv_common::client::{Expect, Hit, ProtocolError, Reply, Request, StoreCommand};
use tailorkv_common::codec::{StoreMode, SERVER_ERROR_TOO_LARGE};
use tailorkv_common::{Clock, SystemClock, UnixSecs, Version};

use super::clock;
use super::conn::{Conn, ConnError};
use super::exptime::remote_exptime;
use super::header::Header;
use super::state::{Counter, Shared};
use crate::mutate::{dead, decide, Change, Dead};
use crate::{DataletError, Item, Mutation, Outcome};

/// Times a read-modify-write starts again after losing a race before giving up.
pub const MAX_RACES: usize = 64;

/// How an operation failed.
#[derive(Debug)]
pub enum OpError {
    /// The connection failed: drop it and reconnect.
    Conn(ConnError),
    /// The remote server answered, refusing: the connection is fine.
    Refused(DataletError),
    /// There is no connection now and none was tried: the last attempt failed recently.
    Down(String),
}

impl From<ConnError> for OpError {
    fn from(e: ConnError) -> Self {
        OpError::Conn(e)
    }
}

/// What a remote value is to us at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Foreign,
    Dead(Dead),
    Live(Item),
}

/// Reads a remote value through its header.
pub fn see(remote: Option<&Hit>, flush_at: UnixSecs, now: UnixSecs) -> Seen {
    let Some(remote) = remote else {
        return Seen::Absent;
    };
    let Ok((header, value)) = Header::decode(&remote.data) else {
        return Seen::Foreign;
    };
    let item = Item {
        value,
        flags: remote.flags,
        expiry: header.expiry,
        version: header.version,
        marks: header.marks,
    };
    match dead(&item, header.stored_at, flush_at, now) {
        Some(why) => Seen::Dead(why),
        None => Seen::Live(item),
    }
}

/// Many `get`s as one request, for a pipeline: one `gets` of all the keys, which must be
/// distinct; the hits of its reply are each read by [`got`].
pub fn plan_gets(out: &mut BytesMut, keys: &[Bytes]) -> Expect {
    let request = Request::GetsMany { keys };
    request.encode(out);
    request.expect()
}

/// What the reply to a `get`'s `gets` means at `now`. A dead item is counted as an expired
/// or flushed read when `counted` (a client's read; not a scan's).
pub fn got(
    s: &Shared,
    reply: Reply,
    now: UnixSecs,
    counted: bool,
) -> Result<Option<Item>, OpError> {
    let remote = match reply {
        Reply::Value(hit) => hit,
        other => return Err(refusal(other)),
    };
    match see(remote.as_ref(), s.flush_at(), now) {
        Seen::Live(item) => return Ok(Some(item)),
        Seen::Dead(Dead::Expired) if counted => s.count(Counter::GetExpired),
        Seen::Dead(Dead::Flushed) if counted => s.count(Counter::GetFlushed),
        Seen::Dead(_) | Seen::Absent | Seen::Foreign => {}
    }
    Ok(None)
}

/// Whether `mutation` is carried out as exactly one request, whose outcome does not depend on
/// what the key held: a plain `set`. Such a mutation can be pipelined ([`plan_set`]); every
/// other one is a read-modify-write ([`apply`]).
pub fn single_request(mutation: &Mutation) -> bool {
    matches!(
        mutation,
        Mutation::Store {
            mode: StoreMode::Set,
            ..
        }
    )
}

/// A `set` planned as one request.
pub enum SetPlan {
    /// Decided without asking the remote server (too large to store).
    Done(Outcome),
    /// A request was encoded; its reply goes to [`set_done`] with this.
    Sent { expect: Expect, pending: PendingSet },
}

/// A `set` waiting for its reply.
pub struct PendingSet {
    outcome: Outcome,
    /// A `delete` was sent: the item was stored already expired.
    deleting: bool,
}

/// Encodes a `set` (see [`single_request`]) into `out`: a `set` request, or a `delete` for an
/// item stored already expired.
pub fn plan_set(
    s: &Shared,
    out: &mut BytesMut,
    key: &[u8],
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
) -> SetPlan {
    if let Mutation::Store { flags, value, .. } = &mutation {
        if !s.fits(key, *flags, value.len()) {
            return SetPlan::Done(Outcome::NotStored);
        }
    }
    let (Change::Put(item), outcome) = decide(key, None, mutation, version, s.decide_limit())
    else {
        unreachable!("a set always stores");
    };
    let (request, deleting);
    let head;
    match remote_exptime(item.expiry, now, wall_clock()) {
        None => {
            request = Request::Delete { key };
            deleting = true;
        }
        Some(exptime) => {
            head = Header {
                version: item.version,
                expiry: item.expiry,
                stored_at: now,
                marks: item.marks,
            }
            .encode();
            request = Request::Store {
                command: StoreCommand::Set,
                key,
                flags: item.flags,
                exptime,
                head: &head,
                body: &item.value,
            };
            deleting = false;
        }
    }
    request.encode(out);
    let expect = request.expect();
    let pending = PendingSet { outcome, deleting };
    SetPlan::Sent { expect, pending }
}

/// The outcome of a `set` from the reply to its request.
pub fn set_done(s: &Shared, pending: PendingSet, reply: Reply) -> Result<Outcome, OpError> {
    if pending.deleting {
        deleted(reply)?;
        return Ok(pending.outcome);
    }
    match written(reply)? {
        Written::Stored => {
            s.count(Counter::TotalItems);
            Ok(pending.outcome)
        }
        Written::TooLarge => Ok(Outcome::NotStored),
        Written::Raced => Err(unexpected(Reply::NotStored).into()),
    }
}

pub async fn apply(
    s: &Shared,
    conn: &mut Conn,
    key: &Bytes,
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
) -> Result<Outcome, OpError> {
    if let Some(outcome) = refused_early(s, key, &mutation) {
        return Ok(outcome);
    }
    if single_request(&mutation) {
        return set(s, conn, key, mutation, version, now).await;
    }
    for _ in 0..MAX_RACES {
        if let Some(outcome) = try_apply(s, conn, key, mutation.clone(), version, now).await? {
            return Ok(outcome);
        }
    }
    let why = format!("key changed by other writers {MAX_RACES} times in a row; gave up");
    Err(OpError::Refused(DataletError::Unavailable(why)))
}

/// The outcome of a mutation decided without asking the remote server: a store (other than
/// an append or prepend, which add to what is there) too large to keep.
pub fn refused_early(s: &Shared, key: &[u8], mutation: &Mutation) -> Option<Outcome> {
    let Mutation::Store {
        mode, flags, value, ..
    } = mutation
    else {
        return None;
    };
    let joins = matches!(mode, StoreMode::Append | StoreMode::Prepend);
    (!joins && !s.fits(key, *flags, value.len())).then_some(Outcome::NotStored)
}

/// One read-modify-write; `None` when another writer got in between.
async fn try_apply(
    s: &Shared,
    conn: &mut Conn,
    key: &[u8],
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
) -> Result<Option<Outcome>, OpError> {
    let remote = gets(conn, key).await?;
    match plan_write(
        s,
        conn.batch(),
        key,
        remote.as_ref(),
        mutation,
        version,
        now,
    ) {
        WritePlan::Done(outcome) => Ok(Some(outcome)),
        WritePlan::Sent { expect, pending } => {
            let reply = exchange_one(conn, expect).await?;
            write_done(s, pending, reply)
        }
    }
}

/// The write of a read-modify-write, planned from what its read found.
pub enum WritePlan {
    /// Nothing to write: the outcome.
    Done(Outcome),
    /// A request was encoded; its reply goes to [`write_done`] with this.
    Sent {
        expect: Expect,
        pending: PendingWrite,
    },
}

/// A read-modify-write's write waiting for its reply.
pub struct PendingWrite {
    outcome: Outcome,
    write: WriteKind,
}

enum WriteKind {
    /// `delete`.
    Delete,
    /// `cas`, or `add` where the read found nothing; a new item when `counts`.
    Put { counts: bool },
    /// A `cas` that stores the item already expired, so it vanishes.
    RemoveIfUnchanged,
}

/// Decides `mutation` on what the key's `gets` returned (`remote`) and encodes the write that
/// carries it out into `out`: conditional on the CAS unique read, so a write by anyone else
/// in between makes it fail rather than be lost.
pub fn plan_write(
    s: &Shared,
    out: &mut BytesMut,
    key: &[u8],
    remote: Option<&Hit>,
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
) -> WritePlan {
    let unique = remote.map(|r| r.cas);
    let current = match see(remote, s.flush_at(), now) {
        Seen::Live(item) => Some(item),
        _ => None,
    };
    let (change, outcome) = decide(key, current.as_ref(), mutation, version, s.decide_limit());
    let write = match change {
        Change::Keep => return WritePlan::Done(outcome),
        Change::Remove => {
            Request::Delete { key }.encode(out);
            WriteKind::Delete
        }
        Change::Put(item) => match remote_exptime(item.expiry, now, wall_clock()) {
            Some(exptime) => {
                let command = unique.map_or(StoreCommand::Add, StoreCommand::Cas);
                let head = Header {
                    version: item.version,
                    expiry: item.expiry,
                    stored_at: now,
                    marks: item.marks,
                }
                .encode();
                Request::Store {
                    command,
                    key,
                    flags: item.flags,
                    exptime,
                    head: &head,
                    body: &item.value,
                }
                .encode(out);
                let counts = !matches!(outcome, Outcome::Touched(_));
                WriteKind::Put { counts }
            }
            // Stored already expired: it must vanish, if it is there to see at all. A `cas`
            // of an empty value with a negative exptime, which memcached stores as already
            // expired, so the key reads as a miss and its memory is reclaimed.
            None => match (current, unique) {
                (Some(_), Some(unique)) => {
                    Request::Store {
                        command: StoreCommand::Cas(unique),
                        key,
                        flags: 0,
                        exptime: -1,
                        head: &[],
                        body: &[],
                    }
                    .encode(out);
                    WriteKind::RemoveIfUnchanged
                }
                _ => return WritePlan::Done(outcome),
            },
        },
    };
    let pending = PendingWrite { outcome, write };
    WritePlan::Sent {
        expect: Expect::Status,
        pending,
    }
}

/// The outcome of a read-modify-write from the reply to its write; `None` when another
/// writer got in between, so it must start again.
pub fn write_done(
    s: &Shared,
    pending: PendingWrite,
    reply: Reply,
) -> Result<Option<Outcome>, OpError> {
    let written = match pending.write {
        WriteKind::Delete => deleted(reply)?,
        WriteKind::RemoveIfUnchanged => written(reply)?,
        WriteKind::Put { counts } => {
            let written = written(reply)?;
            if written == Written::Stored && counts {
                s.count(Counter::TotalItems);
            }
            written
        }
    };
    Ok(match written {
        Written::Stored => Some(pending.outcome),
        Written::TooLarge => Some(Outcome::NotStored),
        Written::Raced => None,
    })
}

/// A read-modify-write's read, for a pipeline: `gets` of the key, its reply read by [`read`].
pub fn plan_read(out: &mut BytesMut, key: &[u8]) -> Expect {
    let request = Request::Gets { key };
    request.encode(out);
    request.expect()
}

/// What the reply to a one-key `gets` found.
pub fn read(reply: Reply) -> Result<Option<Hit>, OpError> {
    match reply {
        Reply::Value(hit) => Ok(hit),
        other => Err(refusal(other)),
    }
}

/// Sends the one request encoded into [`Conn::batch`] and returns its reply.
async fn exchange_one(conn: &mut Conn, expect: Expect) -> Result<Reply, ConnError> {
    let mut reply = None;
    conn.pipeline(&[expect], |_, r| {
        reply = Some(r);
        Ok(())
    })
    .await?;
    Ok(reply.expect("one reply for one request"))
}

/// `set`: no read needed, one request. An item stored already expired is a delete.
async fn set(
    s: &Shared,
    conn: &mut Conn,
    key: &[u8],
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
) -> Result<Outcome, OpError> {
    match plan_set(s, conn.batch(), key, mutation, version, now) {
        SetPlan::Done(outcome) => Ok(outcome),
        SetPlan::Sent { expect, pending } => {
            let reply = exchange_one(conn, expect).await?;
            set_done(s, pending, reply)
        }
    }
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// Another writer changed the key since it was read.
    Raced,
    /// The remote server's item size limit is below ours.
    TooLarge,
}

pub(super) fn written(reply: Reply) -> Result<Written, OpError> {
    match reply {
        Reply::Stored => Ok(Written::Stored),
        Reply::Exists | Reply::NotFound | Reply::NotStored => Ok(Written::Raced),
        Reply::ServerError(msg) if msg == SERVER_ERROR_TOO_LARGE => Ok(Written::TooLarge),
        other => Err(refusal(other)),
    }
}

fn deleted(reply: Reply) -> Result<Written, OpError> {
    match reply {
        Reply::Deleted => Ok(Written::Stored),
        Reply::NotFound => Ok(Written::Raced),
        other => Err(refusal(other)),
    }
}

pub(super) async fn gets(conn: &mut Conn, key: &[u8]) -> Result<Option<Hit>, OpError> {
    read(conn.call(Request::Gets { key }).await?)
}

/// The error for a reply that is not a success: a full store, a server error, or a reply that
/// makes no sense here, after which the connection is not trusted.
fn refusal(reply: Reply) -> OpError {
    match reply {
        Reply::ServerError(msg) if msg.to_ascii_lowercase().contains("out of memory") => {
            OpError::Refused(DataletError::OutOfMemory)
        }
        Reply::ServerError(msg) => OpError::Refused(DataletError::Unavailable(format!(
            "remote server error: {msg}"
        ))),
        other => unexpected(other).into(),
    }
}

fn unexpected(reply: Reply) -> ConnError {
    let line = reply.status_line().unwrap_or_else(|| format!("{reply:?}"));
    ConnError::Protocol(ProtocolError::Unexpected(line))
}

/// `flush_all` at the remote server, timed like ours (see the module doc of `remote`), then
/// the flush point here. An immediate flush erases the clock key, so it is put back at once;
/// after a delayed one, the pool puts it back when the flush comes due.
pub async fn flush_all(
    s: &Shared,
    conn: &mut Conn,
    at: UnixSecs,
    now: UnixSecs,
) -> Result<(), OpError> {
    let delay = (at > now).then(|| at - now + 1);
    match conn.call(Request::FlushAll { delay }).await? {
        Reply::Ok => {}
        other => return Err(refusal(other)),
    }
    s.set_flush_at(at);
    let saved = s.clock_saved();
    if delay.is_none() && saved > 0 {
        clock::resave_clock(s, conn, saved).await?;
    }
    Ok(())
}

/// Empties the remote server with an immediate `flush_all` (which also replaces a delayed
/// one pending there) and forgets the flush point here; then puts back the clock reservation,
/// the higher of the one saved here and the one the clock key held before the flush, so a
/// reservation saved by an earlier process survives too. A reservation that cannot be put
/// back fails the reset, which can be repeated.
pub async fn reset(s: &Shared, conn: &mut Conn) -> Result<(), OpError> {
    if let Some(held) = clock::held_clock(conn).await? {
        s.clock_was_saved(held);
    }
    match conn.call(Request::FlushAll { delay: None }).await? {
        Reply::Ok => {}
        other => return Err(refusal(other)),
    }
    s.set_flush_at(0);
    let saved = s.clock_saved();
    if saved > 0 {
        clock::save_clock(s, conn, saved).await?;
    }
    Ok(())
}

/// `cache_memlimit`: a remote server that refuses (memcached takes no less than 8 MiB) keeps
/// its limit, and the refusal is logged.
pub async fn cache_memlimit(conn: &mut Conn, megabytes: u64) -> Result<(), OpError> {
    match conn.call(Request::CacheMemlimit { megabytes }).await? {
        Reply::Ok => {}
        other => tracing::warn!(?other, megabytes, "remote server kept its memory limit"),
    }
    Ok(())
}

pub async fn refresh_stats(s: &Shared, conn: &mut Conn) -> Result<(), OpError> {
    match conn.call(Request::Stats).await? {
        Reply::Stats(stats) => {
            s.absorb_remote_stats(&stats);
            Ok(())
        }
        other => Err(refusal(other)),
    }
}

fn wall_clock() -> UnixSecs {
    SystemClock.now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Marks;
    use tailorkv_common::{Expiry, NodeId};

    fn remote(data: Bytes) -> Hit {
        Hit {
            key: Bytes::from_static(b"k"),
            flags: 9,
            cas: 1,
            data,
        }
    }

    #[test]
    fn the_header_decides_what_a_remote_value_is() {
        let header = Header {
            version: Version::new(3, NodeId(2)),
            expiry: Expiry::At(100),
            stored_at: 50,
            marks: Marks::default(),
        };
        let value = remote(header.join(b"data"));
        let item = Item {
            value: Bytes::from_static(b"data"),
            flags: 9,
            expiry: Expiry::At(100),
            version: Version::new(3, NodeId(2)),
            marks: Marks::default(),
        };
        assert_eq!(see(None, 0, 60), Seen::Absent);
        assert_eq!(see(Some(&value), 0, 99), Seen::Live(item));
        assert_eq!(see(Some(&value), 0, 100), Seen::Dead(Dead::Expired));
        assert_eq!(see(Some(&value), 50, 60), Seen::Dead(Dead::Flushed));
        assert!(matches!(see(Some(&value), 49, 60), Seen::Live(_)));
        let foreign = remote(Bytes::from_static(b"written by someone else"));
        assert_eq!(see(Some(&foreign), 0, 60), Seen::Foreign);
    }
}
