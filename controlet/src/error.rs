//! Why the controlet could not carry out a client's request: its datalet failed, or its
//! cluster refused. Each becomes a `SERVER_ERROR` reply ([`crate::cmd`]).

use tailorkv_datalet::DataletError;

/// Why a request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The datalet could not carry it out.
    #[error(transparent)]
    Datalet(#[from] DataletError),
    /// The cluster refused the operation: this node is not serving in a view with a majority
    /// (cut off, catching up, or the operation timed out waiting for one). The text is the
    /// reason a client is given; whether a write took effect is unknown.
    #[error("{0}")]
    Refused(&'static str),
}
