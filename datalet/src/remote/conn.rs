//! One TCP connection to the remote server: a stream, a read buffer, a write buffer, and the
//! codec of [`tailorkv_common::client`]. Either one request is written whole and its reply
//! read whole ([`Conn::call`]), or a batch of requests is written in one go while their
//! replies are read in order as they come ([`Conn::pipeline`]): memcached answers the requests
//! of one connection in the order they came. Every exchange is under a timeout, so nothing
//! waits on a dead or stalled server for long.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use tailorkv_common::client::{
    decode, Expect, ProtocolError, Reply, Request, MAX_REPLY_LINE_BYTES,
};

/// Why a connection failed. After any of these the connection is dropped: a request may have
/// been half sent or its reply half read.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no connection to {addr} within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("remote server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("remote server closed the connection")]
    Closed,
    #[error("no reply from the remote server within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

pub struct Conn {
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
    request_timeout: Duration,
}

impl Conn {
    pub async fn connect(
        addr: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let stream = match timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                let addr = addr.to_string();
                return Err(ConnError::Connect { addr, source });
            }
            Err(_) => {
                let addr = addr.to_string();
                let timeout = connect_timeout;
                return Err(ConnError::ConnectTimeout { addr, timeout });
            }
        };
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            request_timeout,
        })
    }

    /// Sends `request` and reads its reply, within the request timeout.
    pub async fn call(&mut self, request: Request<'_>) -> Result<Reply, ConnError> {
        let limit = self.request_timeout;
        match timeout(limit, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::Timeout(limit)),
        }
    }

    /// The write buffer, emptied, for a batch of requests to be encoded into and then sent by
    /// [`Conn::pipeline`].
    pub fn batch(&mut self) -> &mut BytesMut {
        self.output.clear();
        &mut self.output
    }

    /// Sends the requests encoded into [`Conn::batch`] in one write and hands their replies to
    /// `each` in order, one for each of `expects` (the shape of each request's reply), as each
    /// arrives; all within the request timeout. Replies are read while the requests are still
    /// being written, so large values either way never deadlock the two sides. `each` fails
    /// when a reply leaves the connection untrustworthy; that stops the exchange. On an error
    /// the replies not yet handed over are lost: the connection must be dropped.
    pub async fn pipeline<F>(&mut self, expects: &[Expect], each: F) -> Result<(), ConnError>
    where
        F: FnMut(usize, Reply) -> Result<(), ConnError>,
    {
        let limit = self.request_timeout;
        match timeout(limit, self.exchange_many(expects, each)).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::Timeout(limit)),
        }
    }

    /// Sends the request line `request` (its line ending included) and hands each line of the
    /// reply to `each`, without its line ending, until `each` answers that the reply is over
    /// (`Ok(false)`): for replies of any length, read and handed over as they come, such as
    /// `lru_crawler metadump`'s. The timeout is on progress, not on the whole reply: each
    /// read must bring bytes within the request timeout, so a long reply that keeps coming
    /// is never cut off. On an error the connection must be dropped.
    pub async fn lines<F>(&mut self, request: &[u8], mut each: F) -> Result<(), ConnError>
    where
        F: FnMut(&[u8]) -> Result<bool, ConnError>,
    {
        let limit = self.request_timeout;
        match timeout(limit, self.stream.write_all(request)).await {
            Ok(written) => written?,
            Err(_) => return Err(ConnError::Timeout(limit)),
        }
        loop {
            while let Some(nl) = self.input.iter().position(|&b| b == b'\n') {
                let line = self.input.split_to(nl + 1);
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if !each(text)? {
                    return Ok(());
                }
            }
            if self.input.len() > MAX_REPLY_LINE_BYTES {
                return Err(ProtocolError::LineTooLong.into());
            }
            if self.input.capacity() - self.input.len() < 4096 {
                self.input.reserve(16 * 1024);
            }
            match timeout(limit, self.stream.read_buf(&mut self.input)).await {
                Ok(Ok(0)) => return Err(ConnError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError::Timeout(limit)),
            }
        }
    }

    async fn exchange_many<F>(&mut self, expects: &[Expect], mut each: F) -> Result<(), ConnError>
    where
        F: FnMut(usize, Reply) -> Result<(), ConnError>,
    {
        let (mut reader, mut writer) = self.stream.split();
        let output = &self.output;
        let input = &mut self.input;
        let write = async {
            writer.write_all(output).await?;
            Ok::<(), ConnError>(())
        };
        let read = async {
            for (i, &expect) in expects.iter().enumerate() {
                loop {
                    if let Some(reply) = decode(input, expect)? {
                        each(i, reply)?;
                        break;
                    }
                    if input.capacity() - input.len() < 4096 {
                        input.reserve(16 * 1024);
                    }
                    if reader.read_buf(input).await? == 0 {
                        return Err(ConnError::Closed);
                    }
                }
            }
            Ok(())
        };
        tokio::try_join!(write, read).map(|_| ())
    }

    async fn exchange(&mut self, request: Request<'_>) -> Result<Reply, ConnError> {
        self.output.clear();
        request.encode(&mut self.output);
        self.stream.write_all(&self.output).await?;
        let expect = request.expect();
        loop {
            if let Some(reply) = decode(&mut self.input, expect)? {
                return Ok(reply);
            }
            if self.input.capacity() - self.input.len() < 4096 {
                self.input.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }
}
