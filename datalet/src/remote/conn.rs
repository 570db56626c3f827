//! One TCP connection to the remote server: a stream, a read buffer, a write buffer, and the
//! codec of [`super::client`]. A request is written whole, then its reply is read whole;
//! every step is under a timeout, so nothing waits on a dead or stalled server for long.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::client::{decode, ProtocolError, Reply, Request};

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
