//! One file per command; [`execute`] dispatches a parsed [`Command`] to its file.
//!
//! A command appends its reply to the connection's [`Out`] buffer and counts itself in the
//! connection's [`Counts`]; it never touches the socket itself, except that a long multi-get
//! may ask [`Out`] to write what it has so far. `noreply` is applied by the caller, which drops
//! whatever the command appended.

mod admin;
mod arith;
pub mod binary;
mod delete;
mod flush;
mod get;
mod lru_crawler;
mod meta;
mod stats;
mod store;
mod touch;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tailorkv_common::codec::Command;
use tailorkv_datalet::Datalet;
use tokio::io::AsyncWrite;

use crate::config::Config;
use crate::engine::Engine;
use crate::out::Out;
use crate::stats::{Counts, SharedCounts};
use arith::Arith;

/// What the server shares with every connection.
pub struct Context<D> {
    pub engine: Engine<D>,
    pub counts: Arc<SharedCounts>,
    /// Command latencies, for `/metrics`.
    pub latencies: Arc<crate::stats::SharedLatencies>,
    pub config: Config,
    pub started: Instant,
    pub curr_connections: Arc<AtomicU64>,
    /// The client port and its open connections, for `stats conns`.
    pub conns: Arc<crate::conns::Conns>,
    /// Per-prefix statistics, for `stats detail`.
    pub prefixes: Arc<crate::stats::Prefixes>,
    /// Where this node's status is read from (`/status`, and its peers' requests for it).
    pub status: Arc<crate::status::Sources<D>>,
    /// TLS on the client port (`--tls-cert`), if it is on.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// The users a connection must authenticate as (`--auth-file`), if any.
    pub auth: Option<Arc<crate::auth::AuthFile>>,
}

impl<D> Context<D> {
    /// The CAS unique clients see for an item at `version`: 0 with `-C`.
    pub fn cas(&self, version: tailorkv_common::Version) -> u64 {
        if self.config.disable_cas {
            0
        } else {
            version.cas()
        }
    }

    /// The unique a client's compare-and-swap compares with. With `-C` items have none
    /// (memcached reads it as 0), so a compare against anything but 0 must fail: it is
    /// turned into a unique no item holds.
    pub fn compared(&self, unique: u64) -> u64 {
        if self.config.disable_cas && unique != 0 {
            tailorkv_common::version::NO_MATCH_CAS
        } else {
            unique
        }
    }
}

/// Whether the connection goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// `quit`: close once earlier replies are written.
    Close,
}

/// Carries out one command.
pub async fn execute<D: Datalet, W: AsyncWrite + Unpin>(
    ctx: &Context<D>,
    command: Command,
    out: &mut Out<W>,
    counts: &mut Counts,
) -> std::io::Result<Flow> {
    match command {
        Command::Get { keys, with_cas } => get::get(ctx, keys, with_cas, out, counts).await?,
        Command::GetAndTouch {
            exptime,
            keys,
            with_cas,
        } => get::gat(ctx, exptime, keys, with_cas, out, counts).await?,
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
        } => {
            let reply = store::store(ctx, mode, key, flags, exptime, value, counts).await;
            reply.encode(&mut out.buf);
        }
        Command::Delete { key } => delete::delete(ctx, key, counts).await.encode(&mut out.buf),
        Command::Incr { key, delta } => arith::arith(ctx, Arith::Incr, key, delta, counts)
            .await
            .encode(&mut out.buf),
        Command::Decr { key, delta } => arith::arith(ctx, Arith::Decr, key, delta, counts)
            .await
            .encode(&mut out.buf),
        Command::Touch { key, exptime } => touch::touch(ctx, key, exptime, counts)
            .await
            .encode(&mut out.buf),
        Command::FlushAll { delay } => flush::flush_all(ctx, delay, counts)
            .await
            .encode(&mut out.buf),
        Command::Stats(group) => stats::stats(ctx, group, counts, &mut out.buf).await,
        Command::Version => admin::version().encode(&mut out.buf),
        Command::Verbosity => admin::verbosity().encode(&mut out.buf),
        Command::RefreshCerts { noreply } => {
            let mark = out.buf.len();
            let tls_on = admin::refresh_certs(ctx, &mut out.buf);
            if noreply && tls_on {
                out.buf.truncate(mark);
            }
        }
        Command::CacheMemlimit { megabytes } => {
            admin::cache_memlimit(ctx, megabytes).encode(&mut out.buf)
        }
        Command::Metadump { classes } => lru_crawler::metadump(ctx, classes, out).await?,
        Command::Meta(which, request) => {
            meta::meta(ctx, which, &request, &mut out.buf, counts).await
        }
        Command::MetaDebug { key } => meta::debug(ctx, &key, &mut out.buf, counts).await,
        Command::Quit => return Ok(Flow::Close),
        Command::Shutdown { valid } => {
            if !ctx.config.enable_shutdown {
                out.buf
                    .extend_from_slice(b"ERROR: shutdown not enabled\r\n");
            } else if !valid {
                out.buf
                    .extend_from_slice(b"CLIENT_ERROR invalid shutdown mode\r\n");
            } else {
                // As memcached: the connection closes and the process signals itself, so
                // the server stops as on SIGINT (finishing the requests it has read).
                tracing::info!("shutdown command: stopping");
                // SAFETY: raise only sends a signal to this process.
                unsafe { libc::raise(libc::SIGINT) };
                return Ok(Flow::Close);
            }
        }
        Command::SetTooLarge { causal_flag, .. } if causal_flag && !ctx.engine.is_causal() => {
            // As memcached answers a flag it does not know, before it looks at the size.
            tailorkv_common::codec::Response::ClientError("invalid flag").encode(&mut out.buf)
        }
        Command::SetTooLarge { key, .. } => {
            counts.store_too_large += 1;
            ctx.prefixes.set(&key);
            store::drop_old_value(ctx, &key).await;
            tailorkv_common::codec::Response::ServerError(
                tailorkv_common::codec::SERVER_ERROR_TOO_LARGE,
            )
            .encode(&mut out.buf)
        }
        Command::Reply(reply) => {
            count_refusal(&reply, counts);
            reply.encode(&mut out.buf)
        }
    }
    Ok(Flow::Continue)
}

/// Requests the parser answered alone still count where memcached counts them.
fn count_refusal(reply: &tailorkv_common::codec::Response, counts: &mut Counts) {
    use tailorkv_common::codec::{
        Response, CLIENT_ERROR_BAD_CHUNK, CLIENT_ERROR_FLUSH_DISABLED, SERVER_ERROR_TOO_LARGE,
    };
    match reply {
        Response::ServerError(SERVER_ERROR_TOO_LARGE) => counts.store_too_large += 1,
        // memcached counts a refused `flush_all` too.
        Response::ClientError(CLIENT_ERROR_FLUSH_DISABLED) => counts.cmd_flush += 1,
        Response::ClientError(CLIENT_ERROR_BAD_CHUNK) => counts.cmd_set += 1,
        _ => {}
    }
}
