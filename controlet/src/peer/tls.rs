//! Mutual TLS on peer links (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`): only the
//! cluster's members are heard, each as the node its certificate names.
//!
//! Every member holds a certificate signed by the cluster's CA that names it: the DNS names
//! `node-<id>.tailorkv` ([`node_name`]) and [`MEMBER_NAME`]. Both ends of a link check the
//! other's:
//!
//! - A writer connects to peer N as a TLS client asking for the server name
//!   `node-N.tailorkv`, so it sends nothing to a process that cannot prove it is node N (a
//!   node that knows a member only by address, asking to join, asks for [`MEMBER_NAME`]:
//!   any member). It presents its own certificate as its client certificate.
//! - The accepting side requires a client certificate from the CA, and the connection's
//!   hello must name the node that certificate is for. So a sender's id comes from its
//!   certificate, never from its claim alone; a connection that fails either check is closed
//!   before anything it carries reaches the protocol.
//!
//! [`Certs`] makes a CA and node certificates (`tailorkv-admin certs`), for tests and for
//! clusters without a PKI of their own; any CA will do if its node certificates carry these
//! names and allow both server and client authentication.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tailorkv_common::NodeId;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every member's certificate carries besides its own.
pub const MEMBER_NAME: &str = "member.tailorkv";

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS name a certificate for node `id` carries.
pub fn node_name(id: NodeId) -> String {
    format!("node-{}.tailorkv", id.0)
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{0}")]
    Invalid(String),
}

/// This node's side of mutual TLS: its certificate and key, and the cluster's CA.
pub struct PeerTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// *ring*'s provider: its ciphers and key exchanges are what links between members need,
/// and it builds with a C compiler alone (rustls deprecates it only for lacking
/// post-quantum key exchange).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of `path`, or why they cannot be read.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// Every certificate in a PEM text.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

/// The private key in a PEM text.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Invalid(format!("{what}: {e}")))
}

/// Whether `cert` is valid for `name` (its DNS names; the chain is checked by TLS itself).
fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

impl PeerTls {
    /// Node `me`'s TLS from PEM files: its certificate (chain), its key, and the CA.
    pub fn load(me: NodeId, cert: &Path, key: &Path, ca: &Path) -> Result<Arc<Self>, TlsError> {
        Self::from_pem(me, &read(cert)?, &read(key)?, &read(ca)?).map_err(|e| match e {
            TlsError::Invalid(why) => TlsError::Invalid(format!(
                "peer TLS ({}, {}, {}): {why}",
                cert.display(),
                key.display(),
                ca.display()
            )),
            e => e,
        })
    }

    /// Node `me`'s TLS from PEM texts. Refuses a certificate that does not name `me`.
    pub fn from_pem(me: NodeId, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Arc<Self>, TlsError> {
        let chain = certs_from_pem(cert, "the certificate")?;
        let key = key_from_pem(key, "the key")?;
        let mut roots = RootCertStore::empty();
        for root in certs_from_pem(ca, "the CA")? {
            roots
                .add(root)
                .map_err(|e| TlsError::Invalid(format!("the CA: {e}")))?;
        }
        if !names(&chain[0], &node_name(me)) {
            return Err(TlsError::Invalid(format!(
                "the certificate does not name this node (node {}): it must carry the DNS name {}",
                me.0,
                node_name(me)
            )));
        }
        let roots = Arc::new(roots);
        let invalid = |e: rustls::Error| TlsError::Invalid(e.to_string());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(invalid)?;
        // A link carries data one way: no tickets travel back on it.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(invalid)?;
        Ok(Arc::new(PeerTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        }))
    }

    /// The client side of a link to `peer` (any member when `None`) over `stream`.
    pub(super) async fn connect(
        &self,
        stream: TcpStream,
        peer: Option<NodeId>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match peer {
            Some(peer) => node_name(peer),
            None => MEMBER_NAME.to_string(),
        };
        let name = ServerName::try_from(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// The server side of a link over `stream`.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Whether the client certificate of an accepted connection names `node`.
pub(super) fn certifies(stream: &tokio_rustls::server::TlsStream<TcpStream>, node: NodeId) -> bool {
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .is_some_and(|cert| names(cert, &node_name(node)))
}

/// A cluster CA and the node certificates it signs, as PEM texts.
pub struct Certs {
    ca_key: rcgen::KeyPair,
}

/// The parameters of the CA whose key is `key`: the same each time, so a CA key read back
/// from its file signs certificates the CA certificate made earlier verifies. Its name
/// carries a digest of its public key, so two CAs never share a name.
fn ca_params(key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let digest = tailorkv_common::hash::key_hash(key.public_key_raw());
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("tailorkv cluster CA {digest:016x}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl Certs {
    /// A new CA, with a fresh key.
    pub fn new_ca() -> Result<Self, rcgen::Error> {
        Ok(Certs {
            ca_key: rcgen::KeyPair::generate()?,
        })
    }

    /// The CA whose key is `pem` (as [`Certs::ca_key_pem`] wrote it).
    pub fn from_ca_key(pem: &str) -> Result<Self, rcgen::Error> {
        Ok(Certs {
            ca_key: rcgen::KeyPair::from_pem(pem)?,
        })
    }

    /// The CA's certificate.
    pub fn ca_cert_pem(&self) -> Result<String, rcgen::Error> {
        Ok(ca_params(&self.ca_key)?.self_signed(&self.ca_key)?.pem())
    }

    /// The CA's private key: whoever holds it can make members.
    pub fn ca_key_pem(&self) -> String {
        self.ca_key.serialize_pem()
    }

    /// A certificate for node `id` and its private key, signed by the CA.
    pub fn node(&self, id: NodeId) -> Result<(String, String), rcgen::Error> {
        self.leaf(
            &[node_name(id), MEMBER_NAME.to_string()],
            &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A certificate for the client port (`--tls-cert`) valid for `names` (host names or
    /// IP addresses), and its key.
    pub fn server(&self, names: &[String]) -> Result<(String, String), rcgen::Error> {
        self.leaf(names, &[rcgen::ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A client certificate for `name` (for `--tls-ca`), and its key.
    pub fn client(&self, name: &str) -> Result<(String, String), rcgen::Error> {
        self.leaf(
            &[name.to_string()],
            &[rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// A certificate for `names` (the first also its common name) with `usages`, and its key.
    fn leaf(
        &self,
        names: &[String],
        usages: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> Result<(String, String), rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = rcgen::KeyPair::generate()?;
        let issuer = rcgen::Issuer::new(ca_params(&self.ca_key)?, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_any_member() {
        let ca = Certs::new_ca().unwrap();
        let (cert, key) = ca.node(NodeId(3)).unwrap();
        let ca_pem = ca.ca_cert_pem().unwrap();
        let der = certs_from_pem(cert.as_bytes(), "cert").unwrap();
        assert!(names(&der[0], "node-3.tailorkv"));
        assert!(names(&der[0], MEMBER_NAME));
        assert!(!names(&der[0], "node-2.tailorkv"));
        assert!(PeerTls::from_pem(
            NodeId(3),
            cert.as_bytes(),
            key.as_bytes(),
            ca_pem.as_bytes()
        )
        .is_ok());
        let err = PeerTls::from_pem(
            NodeId(2),
            cert.as_bytes(),
            key.as_bytes(),
            ca_pem.as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("node-2.tailorkv"), "{err}");
    }

    #[test]
    fn a_ca_read_back_from_its_key_signs_what_its_certificate_verifies() {
        let ca = Certs::new_ca().unwrap();
        let ca_pem = ca.ca_cert_pem().unwrap();
        let again = Certs::from_ca_key(&ca.ca_key_pem()).unwrap();
        let (cert, key) = again.node(NodeId(7)).unwrap();
        // Both ends of a handshake are tested by the transport's tests; here the chain.
        let tls = PeerTls::from_pem(
            NodeId(7),
            cert.as_bytes(),
            key.as_bytes(),
            ca_pem.as_bytes(),
        );
        assert!(tls.is_ok());
        let der = certs_from_pem(cert.as_bytes(), "cert").unwrap();
        let roots = certs_from_pem(ca_pem.as_bytes(), "ca").unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&roots[0]).unwrap();
        let ee = webpki::EndEntityCert::try_from(&der[0]).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        ee.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("signed by the CA");
    }
}
