//! What a client asked for, parsed.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Response;

/// One parsed request. `noreply` is set exactly where memcached sets it: a request that
/// carries it gets no reply at all, not even an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub noreply: bool,
}

/// How a storage command treats an existing item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key holds no item.
    Add,
    /// Store only if the key holds an item.
    Replace,
    /// Add the data after the existing item's; keep its flags and expiry.
    Append,
    /// Add the data before the existing item's; keep its flags and expiry.
    Prepend,
    /// Store only if the item's CAS unique is still this one.
    Cas(u64),
}

/// The commands of memcached's classic text protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `get`/`gets <key>*`: a VALUE block per hit, then `END`.
    Get { keys: Vec<Bytes>, with_cas: bool },
    /// `gat`/`gats <exptime> <key>*`: like get, and sets each hit's expiry.
    GetAndTouch {
        exptime: i32,
        keys: Vec<Bytes>,
        with_cas: bool,
    },
    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes>`, or `cas` with its
    /// unique, followed by the data block.
    Store {
        mode: StoreMode,
        key: Bytes,
        flags: u32,
        exptime: i32,
        value: Bytes,
    },
    /// A `set` whose value is too large for `item_size_max` (its data discarded): answered
    /// `SERVER_ERROR object too large for cache`, and the key's old value is deleted, as
    /// memcached deletes it. `causal_flag`: an `ms` that carried the `Y` flag, which only
    /// the causal mode knows (elsewhere the request is refused as an invalid flag instead).
    SetTooLarge { key: Bytes, causal_flag: bool },
    /// `delete <key>`.
    Delete { key: Bytes },
    /// `incr <key> <delta>`: wraps at 2^64.
    Incr { key: Bytes, delta: u64 },
    /// `decr <key> <delta>`: stops at 0.
    Decr { key: Bytes, delta: u64 },
    /// `touch <key> <exptime>`.
    Touch { key: Bytes, exptime: i32 },
    /// `flush_all [delay]`: a delay of 0 or less flushes now.
    FlushAll { delay: i32 },
    /// `stats [group]`.
    Stats(StatsGroup),
    /// `version`.
    Version,
    /// `verbosity <level>`: accepted and answered `OK`.
    Verbosity,
    /// `refresh_certs [noreply]`: reads the TLS certificate, key and CA files again.
    /// `noreply` silences the reply only when TLS is on, as in memcached.
    RefreshCerts { noreply: bool },
    /// `cache_memlimit <megabytes>`, already checked to be in memcached's range.
    CacheMemlimit { megabytes: u32 },
    /// `lru_crawler metadump all|hash|<class id>[,<class id>]*`: a line per live item, then
    /// `END`: the items of the slab classes whose bits are set in `classes` (bit `i` for
    /// class `i`; every bit for `all` and `hash`). The other `lru_crawler` subcommands are
    /// answered by the parser.
    Metadump { classes: u64 },
    /// `mg`, `ms`, `md` or `ma`, its flags read (`ms` with its data).
    Meta(super::MetaCommand, Box<super::MetaRequest>),
    /// `me <key> [b]`: the item's metadata, for debugging.
    MetaDebug { key: Bytes },
    /// `quit`: close the connection once earlier replies are written.
    Quit,
    /// `shutdown [graceful]`: stop the server, if it was started with `-A`. `valid` is false
    /// for any other form, which memcached answers `CLIENT_ERROR invalid shutdown mode` (when
    /// shutdown is enabled at all).
    Shutdown { valid: bool },
    /// A request the parser answers by itself: a malformed line, a rejected value.
    Reply(Response),
}

/// The groups `stats` can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsGroup {
    /// `stats`: the general counters.
    General,
    /// `stats settings`.
    Settings,
    /// `stats reset`: zero the counters.
    Reset,
    /// `stats placement`: which nodes hold which keys (a sharded cluster's placement).
    Placement,
    /// `stats sizes`: memcached 1.6 tracks item sizes only with `-o track_sizes`, which is
    /// off by default; this answers as memcached then does, `STAT sizes_status disabled`.
    Sizes,
    /// `stats conns`: the client port and its open connections.
    Conns,
    /// `stats items`: per slab class, the items and their evictions.
    Items,
    /// `stats slabs`: per slab class, the chunks the items take and the requests that hit.
    Slabs,
    /// `stats cachedump`: memcached internals that have no counterpart here; answered with
    /// an empty list.
    Empty,
    /// `stats detail on|off`: per-prefix statistics kept or not.
    Detail(bool),
    /// `stats detail dump`: the per-prefix statistics.
    DetailDump,
}
