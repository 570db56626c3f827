//! A shared cluster secret for peer links when TLS is off (`--peer-secret-file`).
//!
//! Every member reads the same secret from a file. A connection then opens with a
//! challenge-response in both directions, before anything it carries is heard:
//!
//! 1. The receiving member sends a fresh random challenge (32 bytes).
//! 2. The connecting node answers with its hello, which carries a nonce of its own and an
//!    HMAC-SHA256, keyed by the secret, over both, the cluster, and the id and run the hello
//!    names. A hello without a valid one is refused and the connection closed.
//! 3. The receiving member answers with a welcome: an HMAC over both random values and the
//!    sender's id. The connecting node sends nothing more until it has checked it, so it
//!    never talks to a listener that does not hold the secret either.
//!
//! The secret itself never crosses the wire, and a recorded hello cannot be replayed (the
//! challenge is new each time). What a secret proves is membership: any holder can claim
//! any member's id, whereas a certificate ([`super::tls`]) names one node. Nor does it
//! protect messages from someone on the path between members, who could read or alter the
//! stream after the handshake; TLS does both.

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;

/// Bytes of a challenge, a nonce, and an HMAC-SHA256.
pub const LEN: usize = 32;

/// The shortest secret accepted, in bytes (after surrounding whitespace is trimmed).
pub const MIN_SECRET_BYTES: usize = 16;

/// What a hello carries when the links share a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The sender's own random value, which the welcome must cover.
    pub nonce: [u8; LEN],
    /// HMAC of the challenge, `nonce`, and the hello's fields.
    pub mac: [u8; LEN],
}

/// What a receiving member sends back on a connection when the links share a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Sent at once on every accepted connection.
    Challenge([u8; LEN]),
    /// Sent once the hello's proof checked out: the receiver's own proof.
    Welcome([u8; LEN]),
}

/// Why a secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the peer secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the peer secret is {0} bytes; at least {MIN_SECRET_BYTES} are needed \
         (for example: head -c 32 /dev/urandom | base64 > FILE)"
    )]
    TooShort(usize),
}

/// The cluster's shared secret, as an HMAC key.
pub struct PeerSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// The secret in `path`: its bytes with surrounding whitespace (a trailing newline) taken
    /// off.
    pub fn load(path: &Path) -> Result<PeerSecret, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the peer secret file can be read by other users; chmod 600 it"
                    );
                }
            }
        }
        PeerSecret::new(&bytes)
    }

    /// The secret `bytes`, with surrounding whitespace taken off.
    pub fn new(bytes: &[u8]) -> Result<PeerSecret, SecretError> {
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        Ok(PeerSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A fresh random value for a challenge or a nonce.
    pub fn random() -> [u8; LEN] {
        let mut out = [0; LEN];
        // The system's random source does not fail on Linux once booted.
        SystemRandom::new()
            .fill(&mut out)
            .expect("the system's random source failed");
        out
    }

    /// What a hello naming `from`, run `session`, of `cluster` carries in answer to
    /// `challenge`, with the sender's own `nonce`.
    pub fn prove_hello(&self, challenge: &[u8; LEN], nonce: [u8; LEN], fields: Fields) -> Proof {
        let tag = hmac::sign(&self.key, &hello(challenge, &nonce, fields));
        let mut mac = [0; LEN];
        mac.copy_from_slice(tag.as_ref());
        Proof { nonce, mac }
    }

    /// Whether `proof` answers `challenge` for a hello naming these fields (compared in
    /// constant time).
    pub fn checks_hello(&self, challenge: &[u8; LEN], proof: &Proof, fields: Fields) -> bool {
        let signed = hello(challenge, &proof.nonce, fields);
        hmac::verify(&self.key, &signed, &proof.mac).is_ok()
    }

    /// The receiver's welcome for a hello from `from` that answered `challenge` with `nonce`.
    pub fn welcome(&self, challenge: &[u8; LEN], nonce: &[u8; LEN], from: NodeId) -> [u8; LEN] {
        let tag = hmac::sign(&self.key, &welcome(challenge, nonce, from));
        let mut mac = [0; LEN];
        mac.copy_from_slice(tag.as_ref());
        mac
    }

    /// Whether `mac` is the receiver's welcome for this exchange (compared in constant time).
    pub fn checks_welcome(
        &self,
        challenge: &[u8; LEN],
        nonce: &[u8; LEN],
        from: NodeId,
        mac: &[u8; LEN],
    ) -> bool {
        hmac::verify(&self.key, &welcome(challenge, nonce, from), mac).is_ok()
    }
}

/// What a hello's proof covers: the sender's id, its run, and its cluster.
pub type Fields = (NodeId, u64, u64);

/// What a hello's MAC is computed over.
fn hello(challenge: &[u8; LEN], nonce: &[u8; LEN], (from, session, cluster): Fields) -> Vec<u8> {
    let mut out = signed(b"tailorkv peer hello", challenge, nonce);
    out.extend_from_slice(&from.0.to_be_bytes());
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&cluster.to_be_bytes());
    out
}

/// What a welcome's MAC is computed over.
fn welcome(challenge: &[u8; LEN], nonce: &[u8; LEN], from: NodeId) -> Vec<u8> {
    let mut out = signed(b"tailorkv peer welcome", challenge, nonce);
    out.extend_from_slice(&from.0.to_be_bytes());
    out
}

/// The start of what either MAC covers: which of the two it is, then both random values.
fn signed(what: &[u8], challenge: &[u8; LEN], nonce: &[u8; LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(what.len() + 2 * LEN + 24);
    out.extend_from_slice(what);
    out.extend_from_slice(challenge);
    out.extend_from_slice(nonce);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_secret_challenge_and_fields() {
        let secret = PeerSecret::new(b"correct horse battery staple\n").unwrap();
        let other = PeerSecret::new(b"correct horse battery stapler").unwrap();
        let challenge = PeerSecret::random();
        let fields = (NodeId(1), 5, 77);
        let proof = secret.prove_hello(&challenge, PeerSecret::random(), fields);
        assert!(secret.checks_hello(&challenge, &proof, fields));
        assert!(!other.checks_hello(&challenge, &proof, fields));
        assert!(!secret.checks_hello(&PeerSecret::random(), &proof, fields));
        assert!(!secret.checks_hello(&challenge, &proof, (NodeId(2), 5, 77)));
        assert!(!secret.checks_hello(&challenge, &proof, (NodeId(1), 6, 77)));
        assert!(!secret.checks_hello(&challenge, &proof, (NodeId(1), 5, 78)));
        let welcome = secret.welcome(&challenge, &proof.nonce, NodeId(1));
        assert!(secret.checks_welcome(&challenge, &proof.nonce, NodeId(1), &welcome));
        assert!(!other.checks_welcome(&challenge, &proof.nonce, NodeId(1), &welcome));
        assert!(!secret.checks_welcome(&challenge, &proof.nonce, NodeId(2), &welcome));
        // A hello's MAC is not a welcome.
        assert!(!secret.checks_welcome(&challenge, &proof.nonce, NodeId(1), &proof.mac));
    }

    #[test]
    fn short_secrets_are_refused_and_whitespace_is_trimmed() {
        assert!(matches!(
            PeerSecret::new(b"  short secret \n"),
            Err(SecretError::TooShort(12))
        ));
        let a = PeerSecret::new(b"0123456789abcdef").unwrap();
        let b = PeerSecret::new(b"\t0123456789abcdef\r\n").unwrap();
        let challenge = [7; LEN];
        let fields = (NodeId(3), 1, 2);
        let proof = a.prove_hello(&challenge, [9; LEN], fields);
        assert!(b.checks_hello(&challenge, &proof, fields));
    }
}
