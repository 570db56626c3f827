//! Listing the remote server's keys, for [`crate::Datalet::scan`].
//!
//! memcached's text protocol has one command that lists keys: `lru_crawler metadump`. Its
//! reply is one line per item, ended by `\n` alone,
//!
//! ```text
//! key=<key, URL-encoded> exp=<exptime or -1> la=<last access> cas=<unique> fetch=<yes|no> cls=<slab class> size=<bytes>
//! ```
//!
//! then `END\r\n`. Expired and flushed items are left out. It comes in two modes:
//!
//! - `lru_crawler metadump hash` walks the hash table, and so lists every item linked in it
//!   while the walk passes its bucket, once. memcached 1.6.18 has it; an older one answers
//!   `BADCLASS`.
//! - `lru_crawler metadump all` walks the LRUs, and misses an item that memcached's LRU
//!   maintainer moves from one LRU to another while the walk passes: a few of 200,000 items
//!   just written, in a run against memcached 1.6.18. So it is used only when the hash mode is
//!   refused, and then run again until a pass finds no key the earlier passes missed
//!   ([`MAX_LRU_PASSES`] at most), which makes a miss unlikely but not impossible.
//!
//! memcached runs one crawl at a time, its own background crawls included: while one runs,
//! the dump is answered `BUSY ...` and is tried again, for up to [`BUSY_WAIT`]. memcached wants
//! a dump to be the only request in flight on its connection, so [`dump_keys`] opens a
//! connection of its own, which also keeps the pool's connections free while a large dump
//! streams. The reply is read line by line as it comes, under a timeout on progress only
//! ([`Conn::lines`]), so a dump of millions of keys is never cut off for being long.
//!
//! A server that does not know the command (another tailorkv node, which answers `ERROR`), or
//! that refuses it (memcached started with `-X`, or without the LRU crawler), cannot be
//! scanned: the scan fails with [`DataletError::Unavailable`].
//!
//! The keys are only a list of candidates: the scan then reads each with `gets`, through the
//! pool, and keeps what reads as a live item of ours.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::client::ProtocolError;
use tokio::time::Instant;

use super::conn::{Conn, ConnError};
use super::state::Shared;
use crate::DataletError;

/// How long a dump is retried while the remote server's crawler is busy.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The most passes of `lru_crawler metadump all`, when the hash mode is refused.
pub const MAX_LRU_PASSES: usize = 4;

/// Keys whose `gets` are queued on the pool at once by a scan: enough to fill every
/// connection's pipeline a few times over, few enough that a scan does not queue the whole
/// key space ahead of other callers' operations.
pub const READ_BATCH: usize = 4096;

/// The wait before the first retry of a busy dump; it doubles up to [`BUSY_BACKOFF_MAX`].
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Which walk a dump makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Hash,
    Lru,
}

impl Mode {
    fn request(self) -> &'static [u8] {
        match self {
            Mode::Hash => b"lru_crawler metadump hash\r\n",
            Mode::Lru => b"lru_crawler metadump all\r\n",
        }
    }
}

/// How one dump ended.
#[derive(Debug, PartialEq, Eq)]
enum Dumped {
    /// Every key it listed was handed over.
    Done,
    /// Another crawl is running: try again.
    Busy,
    /// The server refuses this dump; the line it answered.
    Refused(String),
}

/// Every key the remote server lists, once each, in no particular order: reserved and foreign
/// keys included, for the caller to sort out.
pub async fn dump_keys(s: &Shared) -> Result<Vec<Bytes>, DataletError> {
    let o = &s.options;
    let mut conn = Conn::connect(&s.addr, o.connect_timeout, o.request_timeout)
        .await
        .map_err(unavailable)?;
    let mut keys = HashSet::new();
    let Some(refusal) = dump_when_free(&mut conn, Mode::Hash, &mut keys).await? else {
        return Ok(keys.into_iter().collect());
    };
    tracing::debug!(%refusal, remote = %s.addr, "no hash-table dump; walking the LRUs");
    for pass in 0..MAX_LRU_PASSES {
        let before = keys.len();
        if let Some(refusal) = dump_when_free(&mut conn, Mode::Lru, &mut keys).await? {
            return Err(DataletError::Unavailable(format!(
                "the remote server {} cannot list its keys: `lru_crawler metadump` answered \
                 {refusal:?}",
                s.addr
            )));
        }
        if pass > 0 && keys.len() == before {
            break;
        }
    }
    Ok(keys.into_iter().collect())
}

fn unavailable(e: ConnError) -> DataletError {
    DataletError::Unavailable(e.to_string())
}

/// One dump into `keys`, tried again while the crawler is busy; the line it was refused with,
/// if refused.
async fn dump_when_free(
    conn: &mut Conn,
    mode: Mode,
    keys: &mut HashSet<Bytes>,
) -> Result<Option<String>, DataletError> {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut backoff = BUSY_BACKOFF;
    loop {
        match dump(conn, mode, keys).await.map_err(unavailable)? {
            Dumped::Done => return Ok(None),
            Dumped::Refused(line) => return Ok(Some(line)),
            Dumped::Busy if Instant::now() + backoff > deadline => {
                return Err(DataletError::Unavailable(format!(
                    "cannot list the remote server's keys: its crawler stayed busy for \
                     {BUSY_WAIT:?}"
                )));
            }
            Dumped::Busy => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
            }
        }
    }
}

/// One `lru_crawler metadump`, its keys added to `keys`.
async fn dump(conn: &mut Conn, mode: Mode, keys: &mut HashSet<Bytes>) -> Result<Dumped, ConnError> {
    let mut ended = Dumped::Done;
    let mut first = true;
    conn.lines(mode.request(), |line| {
        let is_first = std::mem::replace(&mut first, false);
        match parse_line(line, is_first) {
            Line::Key(key) => {
                keys.insert(key);
                Ok(true)
            }
            Line::End => Ok(false),
            Line::Busy => {
                ended = Dumped::Busy;
                Ok(false)
            }
            Line::Refused => {
                ended = Dumped::Refused(String::from_utf8_lossy(line).into_owned());
                Ok(false)
            }
            Line::Bad => {
                let line = String::from_utf8_lossy(line).into_owned();
                Err(ProtocolError::Unexpected(line).into())
            }
        }
    })
    .await?;
    Ok(ended)
}

/// What one line of a metadump reply is.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Key(Bytes),
    End,
    Busy,
    /// A refusal, which only comes as the first line: unknown command, dumps disabled, no
    /// such mode.
    Refused,
    Bad,
}

/// Reads one line of a metadump reply (without its line ending); `first` when it is the
/// reply's first line, the only one that may be a refusal.
fn parse_line(line: &[u8], first: bool) -> Line {
    if line == b"END" {
        return Line::End;
    }
    if let Some(rest) = line.strip_prefix(b"key=") {
        let encoded = rest.split(|&b| b == b' ').next().unwrap_or_default();
        return match url_decode(encoded) {
            Some(key) if !key.is_empty() => Line::Key(Bytes::from(key)),
            _ => Line::Bad,
        };
    }
    if !first {
        return Line::Bad;
    }
    if line.starts_with(b"BUSY") {
        Line::Busy
    } else if line.starts_with(b"NOTSTARTED") {
        // "no items to crawl": nothing to list.
        Line::End
    } else {
        Line::Refused
    }
}

/// `%XX` escapes to bytes; `None` for a malformed escape.
fn url_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::remote::RemoteOptions;
    use crate::Limits;

    #[test]
    fn metadump_lines_give_their_url_decoded_keys() {
        let line = b"key=a%2520b exp=-1 la=1795246463 cas=1 fetch=no cls=1 size=71";
        assert_eq!(
            parse_line(line, true),
            Line::Key(Bytes::from_static(b"a%20b"))
        );
        let utf8 = b"key=k%C3%A9y exp=1795246563 la=1 cas=2 fetch=no cls=1 size=70";
        assert_eq!(parse_line(utf8, false), Line::Key(Bytes::from("k\u{e9}y")));
        assert_eq!(parse_line(b"key=plain", false), Line::Key("plain".into()));
        assert_eq!(parse_line(b"END", false), Line::End);
        assert_eq!(
            parse_line(b"BUSY currently processing crawler request", true),
            Line::Busy
        );
        assert_eq!(parse_line(b"NOTSTARTED no items to crawl", true), Line::End);
        for refusal in [
            &b"ERROR"[..],
            b"ERROR metadump not allowed",
            b"CLIENT_ERROR lru crawler disabled",
            b"BADCLASS invalid class id",
        ] {
            assert_eq!(parse_line(refusal, true), Line::Refused);
            assert_eq!(parse_line(refusal, false), Line::Bad, "only first");
        }
        for bad in [&b"key=bad%2"[..], b"key=%zz", b"key=", b"key= exp=1"] {
            assert_eq!(parse_line(bad, false), Line::Bad, "{bad:?}");
        }
    }

    /// A server that answers the request lines it gets with `replies`, in order, then closes.
    async fn scripted(replies: Vec<&'static [u8]>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            for reply in replies {
                let Ok(Some(line)) = lines.next_line().await else {
                    return;
                };
                log.lock().unwrap().push(line);
                write.write_all(reply).await.unwrap();
            }
        });
        (addr, seen)
    }

    fn shared(addr: String) -> Shared {
        Shared::new(addr, Limits::default(), RemoteOptions::default())
    }

    fn sorted(keys: Vec<Bytes>) -> Vec<Bytes> {
        let mut keys = keys;
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn a_busy_crawler_is_waited_for_and_the_hash_dump_is_enough() {
        let (addr, seen) = scripted(vec![
            b"BUSY currently processing crawler request\r\n",
            b"key=a exp=-1 la=1 cas=1 fetch=no cls=1 size=1\nkey=b%20c exp=-1\nEND\r\n",
        ])
        .await;
        let keys = dump_keys(&shared(addr)).await.unwrap();
        assert_eq!(sorted(keys), vec![Bytes::from("a"), Bytes::from("b c")]);
        let hash = "lru_crawler metadump hash".to_string();
        assert_eq!(*seen.lock().unwrap(), vec![hash.clone(), hash]);
    }

    #[tokio::test]
    async fn without_the_hash_mode_the_lrus_are_walked_until_a_pass_adds_nothing() {
        let (addr, seen) = scripted(vec![
            b"BADCLASS invalid class id\r\n",
            b"key=a exp=-1\nEND\r\n",
            b"key=a exp=-1\nkey=b exp=-1\nEND\r\n",
            b"BUSY currently processing crawler request\r\n",
            b"key=b exp=-1\nEND\r\n",
        ])
        .await;
        let keys = dump_keys(&shared(addr)).await.unwrap();
        assert_eq!(sorted(keys), vec![Bytes::from("a"), Bytes::from("b")]);
        let requests = seen.lock().unwrap().clone();
        assert_eq!(requests[0], "lru_crawler metadump hash");
        assert_eq!(requests[1..], ["lru_crawler metadump all"; 4]);
    }

    #[tokio::test]
    async fn a_server_without_metadump_cannot_be_scanned() {
        let (addr, _) = scripted(vec![b"ERROR\r\n", b"ERROR\r\n"]).await;
        let e = dump_keys(&shared(addr)).await.unwrap_err();
        let DataletError::Unavailable(why) = e else {
            panic!("expected unavailable, got {e:?}");
        };
        assert!(why.contains("cannot list its keys"), "{why}");
    }
}
