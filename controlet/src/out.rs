//! A connection's outgoing bytes: replies are appended to a buffer and written once per batch
//! of requests, so pipelined requests cost one `write` for all their replies.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Past this many buffered bytes, replies are written out before the batch ends, so a huge
/// multi-get never holds more than about this much of its reply in memory.
pub const WRITE_HIGH_WATER_BYTES: usize = 256 * 1024;

pub struct Out<W> {
    pub buf: BytesMut,
    writer: W,
    /// Bytes written since last counted.
    pub written: u64,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    pub fn new(writer: W) -> Self {
        Out {
            buf: BytesMut::with_capacity(16 * 1024),
            writer,
            written: 0,
        }
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.writer.write_all(&self.buf).await?;
            // A TLS stream holds records until flushed; a TCP stream's flush does nothing.
            self.writer.flush().await?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the buffer out if it has grown past the high-water mark.
    pub async fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= WRITE_HIGH_WATER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.writer
    }
}
