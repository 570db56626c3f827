//! Shards: a node of a sharded cluster hosts several replica groups (see
//! [`crate::placement`]) over one set of peer links, and forwards requests for keys it does
//! not hold to their owners.
//!
//! - [`mux`]: the node's transport carries every group's messages, each tagged with its
//!   group, and forwarded requests; one task hands each to its taker.
//! - [`forward`]: requests for another group's keys, sent to one of its owners and answered
//!   over the same links.

pub mod forward;
pub mod mux;
