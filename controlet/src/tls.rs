//! TLS for clients (`--tls-cert`, `--tls-key`, and `--tls-ca` to require client
//! certificates), as memcached's `-Z` with `ssl_chain_cert`, `ssl_key` and `ssl_ca_cert`
//! offers: with it, the client port speaks only TLS.
//!
//! The files are read again, without a restart, by the `refresh_certs` command (memcached's)
//! or `SIGHUP`: connections made since use the new certificate, those already open keep
//! theirs. If the new files do not load, the old ones stay in use and the command says why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::peer::tls::{certs_from_pem, key_from_pem, read, TlsError};

/// How long a client's TLS handshake may take before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files TLS is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA, if given.
    pub ca: Option<PathBuf>,
}

/// The client port's TLS: the current configuration and what `stats` shows of it.
pub struct ClientTls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    refreshed: RwLock<Instant>,
    handshake_errors: AtomicU64,
}

/// A server configuration from the files.
fn configure(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let what = |path: &Path| path.display().to_string();
    let chain = certs_from_pem(&read(&files.cert)?, &what(&files.cert))?;
    let key = key_from_pem(&read(&files.key)?, &what(&files.key))?;
    let provider = crate::peer::tls::provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for root in certs_from_pem(&read(ca)?, &what(ca))? {
                roots
                    .add(root)
                    .map_err(|e| TlsError::Invalid(format!("{}: {e}", what(ca))))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", what(&files.cert))))?;
    Ok(Arc::new(config))
}

impl ClientTls {
    /// TLS from `files`; fails if they do not load.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = configure(&files)?;
        Ok(Arc::new(ClientTls {
            files,
            config: RwLock::new(config),
            refreshed: RwLock::new(Instant::now()),
            handshake_errors: AtomicU64::new(0),
        }))
    }

    /// Reads the files again; keeps the current configuration if they do not load.
    pub fn refresh(&self) -> Result<(), TlsError> {
        let config = configure(&self.files)?;
        *self.config.write().unwrap() = config;
        *self.refreshed.write().unwrap() = Instant::now();
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates read again");
        Ok(())
    }

    /// The TLS handshake of a new client connection.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config.read().unwrap()));
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            });
        if accepted.is_err() {
            self.handshake_errors.fetch_add(1, Ordering::Relaxed);
        }
        accepted
    }

    /// Handshakes that failed (memcached's `ssl_handshake_errors`).
    pub fn handshake_errors(&self) -> u64 {
        self.handshake_errors.load(Ordering::Relaxed)
    }

    /// Seconds since the files were last read (memcached's `time_since_server_cert_refresh`).
    pub fn since_refresh(&self) -> u64 {
        self.refreshed.read().unwrap().elapsed().as_secs()
    }

    /// Whether clients must present a certificate.
    pub fn verifies_clients(&self) -> bool {
        self.files.ca.is_some()
    }
}
