//! Types shared by every tailorkv crate.
//!
//! # Layout
//!
//! - [`version`]: the `(timestamp, node)` version that travels with every write, and the CAS
//!   unique a client sees, derived from it.
//! - [`time`]: seconds, clocks (a real one and a manual one for tests), and memcached's
//!   exptime rules.
//! - [`codec`]: the memcached text protocol, server side: bytes in, [`codec::Request`] out;
//!   [`codec::Response`] and VALUE blocks back to bytes. Pure: no I/O, no clock.
//! - [`hash`]: the stable hash of keys that partitions and anti-entropy buckets derive from.
//! - [`slabs`]: memcached's slab classes, for what an item is charged and `stats items`.
//! - [`client`]: the same protocol, client side: [`client::Request`] to bytes, bytes to
//!   [`client::Reply`]. Pure too; for talking to any memcached-compatible server.

pub mod client;
pub mod codec;
pub mod hash;
pub mod slabs;
pub mod time;
pub mod version;

pub use time::{Clock, Expiry, ManualClock, SystemClock, UnixSecs};
pub use version::{NodeId, Ts, Version};
