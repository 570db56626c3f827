//! One client connection: a read buffer, a [`Decoder`], and an [`Out`] buffer.
//!
//! The loop decodes and executes every request already buffered, then writes all their replies
//! at once, then reads again. So a packet of pipelined requests gets its replies in order with
//! one `write`, and a client that stops reading its replies stops being read from: memory per
//! connection stays bounded by the largest request plus the write high-water mark. A client
//! that disconnects mid-request leaves nothing behind: its partial request dies with the
//! connection. One that stays silent mid-request for `--partial-request-timeout` (60 s) is
//! closed, so a stalled sender cannot hold a buffer of up to an item's size for good; an idle
//! one is closed after `--idle-timeout` if that is set (memcached's `idle_timeout`, off by
//! default). Both count as `idle_kicks`, which `stats` shows when an idle timeout is set, as
//! memcached does.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tailorkv_common::codec::binary::{BinaryDecoder, REQUEST_MAGIC};
use tailorkv_common::codec::Decoder;
use tailorkv_datalet::Datalet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::cmd::{binary, execute, Context, Flow};
use crate::conns::State;
use crate::out::Out;
use crate::stats::Counts;
use crate::stats::Latencies;

/// Bytes the read buffer grows by when it runs out of room.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How long the client may stay silent now: `--partial-request-timeout` in the middle of a
/// request, else `--idle-timeout` (none if 0).
fn silence_allowed(config: &crate::Config, mid_request: bool) -> Option<Duration> {
    if mid_request {
        Some(Duration::from_secs(config.partial_request_timeout))
    } else {
        (config.idle_timeout > 0).then(|| Duration::from_secs(config.idle_timeout))
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// Serves one client until it leaves, sends `quit`, sends input that closes the connection, or
/// the server shuts down.
pub async fn serve<D: Datalet>(
    mut stream: TcpStream,
    ctx: Arc<Context<D>>,
    shutdown: CancellationToken,
) {
    let mut counts = Counts::default();
    let registered = {
        use std::os::fd::AsRawFd;
        let addr = stream.peer_addr();
        addr.ok()
            .map(|addr| ctx.conns.register(stream.as_raw_fd(), addr))
    };
    let conn = registered.as_ref().map(|r| &*r.conn);
    let served = match &ctx.tls {
        Some(tls) => match tls.accept(stream).await {
            Ok(stream) => {
                let (reader, writer) = tokio::io::split(stream);
                serve_inner(reader, writer, &ctx, conn, &shutdown, &mut counts).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "a client's TLS handshake failed");
                Ok(())
            }
        },
        None => {
            let (reader, writer) = stream.split();
            serve_inner(reader, writer, &ctx, conn, &shutdown, &mut counts).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    ctx.counts.absorb(&mut counts);
}

async fn serve_inner<D: Datalet, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut reader: R,
    writer: W,
    ctx: &Context<D>,
    conn: Option<&crate::conns::Conn>,
    shutdown: &CancellationToken,
    counts: &mut Counts,
) -> std::io::Result<()> {
    let mut out = Out::new(writer);
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut decoder = Decoder::new(ctx.config.item_size_max);
    if ctx.config.disable_flush_all {
        decoder = decoder.without_flush_all();
    }
    let mut latencies = Latencies::default();
    // With an auth file, a connection authenticates before its first command.
    let mut unauthenticated = ctx.auth.as_ref().map(|_| crate::auth::Pending::default());
    // The protocol, once the first byte has arrived (see [`Protocol`]).
    let mut protocol = match ctx.config.protocol.as_deref() {
        Some("ascii") => Some(Protocol::Text),
        Some("binary") => Some(binary(ctx)),
        _ => None,
    };
    loop {
        let mut closing = false;
        if protocol.is_none() && !input.is_empty() {
            protocol = Some(if input[0] == REQUEST_MAGIC {
                binary(ctx)
            } else {
                Protocol::Text
            });
        }
        if let Some(Protocol::Binary(decoder, session)) = protocol.as_mut() {
            while !closing {
                let request = match decoder.decode(&mut input) {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "closing connection");
                        closing = true;
                        break;
                    }
                };
                if let Some(conn) = conn {
                    conn.command(&ctx.conns);
                }
                let started = std::time::Instant::now();
                let flow = binary::execute(ctx, request, session, &mut out.buf, counts).await;
                latencies.record(2, started.elapsed().as_micros() as u64);
                if session.authenticated {
                    decoder.authenticated();
                }
                closing = flow == Flow::Close;
                out.flush_if_full().await?;
            }
        }
        while let (Some(Protocol::Text), Some(pending), Some(file)) =
            (&protocol, unauthenticated.as_mut(), ctx.auth.as_deref())
        {
            match pending.step(&mut input, file, counts) {
                crate::auth::Step::More => break,
                crate::auth::Step::Reply(reply) => out.buf.extend_from_slice(reply),
                crate::auth::Step::Authenticated => {
                    out.buf.extend_from_slice(b"STORED\r\n");
                    unauthenticated = None;
                }
                crate::auth::Step::Close => {
                    closing = true;
                    break;
                }
            }
        }
        while matches!(protocol, Some(Protocol::Text)) && unauthenticated.is_none() && !closing {
            let request = match decoder.decode(&mut input) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "closing connection");
                    closing = true;
                    break;
                }
            };
            if let Some(conn) = conn {
                conn.command(&ctx.conns);
            }
            let mark = out.buf.len();
            let kind = latency_kind(&request.command);
            let started = std::time::Instant::now();
            let flow = execute(ctx, request.command, &mut out, counts).await?;
            latencies.record(kind, started.elapsed().as_micros() as u64);
            if request.noreply {
                out.buf.truncate(mark);
            }
            if flow == Flow::Close {
                closing = true;
                break;
            }
            out.flush_if_full().await?;
        }
        ctx.counts.absorb(counts);
        ctx.latencies.absorb(&mut latencies);
        out.flush().await?;
        counts.bytes_written += std::mem::take(&mut out.written);
        if closing {
            // A TLS client is told the connection ends (`close_notify`); a TCP one gets FIN.
            return out.into_inner().shutdown().await;
        }
        if input.capacity() - input.len() < READ_CHUNK_BYTES / 4 {
            input.reserve(READ_CHUNK_BYTES);
        }
        let mid_request = !input.is_empty()
            || decoder.is_mid_request()
            || matches!(&protocol, Some(Protocol::Binary(d, _)) if d.is_mid_request());
        if let Some(conn) = conn {
            let state = if mid_request {
                State::NRead
            } else {
                State::Read
            };
            conn.set(state);
        }
        let wait = silence_allowed(&ctx.config, mid_request);
        let n = tokio::select! {
            read = reader.read_buf(&mut input) => read?,
            () = sleep_or_forever(wait) => {
                tracing::debug!(?wait, "closing a connection silent for too long");
                counts.timed_out_connections += 1;
                return Ok(());
            }
            () = shutdown.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        counts.bytes_read += n as u64;
    }
}

/// What a connection speaks: with `-B auto` (the default), binary if its first byte is the
/// binary protocol's request magic (0x80), else text, for its whole life, as memcached
/// decides.
enum Protocol {
    Text,
    Binary(BinaryDecoder, binary::Session),
}

/// A binary connection's state: it must authenticate through SASL if users are configured.
fn binary<D>(ctx: &Context<D>) -> Protocol {
    let mut decoder = BinaryDecoder::new(ctx.config.item_size_max);
    if ctx.auth.is_some() {
        decoder = decoder.with_sasl();
    }
    Protocol::Binary(decoder, binary::Session::default())
}

/// Which of [`crate::stats::LATENCY_KINDS`] a command's latency counts under.
fn latency_kind(command: &tailorkv_common::codec::Command) -> usize {
    use tailorkv_common::codec::Command;
    match command {
        Command::Get { .. } | Command::GetAndTouch { .. } => 0,
        Command::Store { .. } => 1,
        _ => 2,
    }
}
