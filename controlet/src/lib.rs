//! The controlet: speaks memcached's text protocol to clients and stores into a datalet.
//!
//! # Layout
//!
//! - [`config`]: the command line.
//! - [`server`]: the accept loop, connection limits, shutdown.
//! - [`connection`]: one client: read, decode, execute, write replies once per batch.
//! - [`cmd`]: one file per command; each appends its reply to an [`out::Out`] buffer.
//! - [`engine`]: where commands' effects on data are carried out: on a single node each
//!   mutation gets the next local version and is applied to the datalet; in a cluster the
//!   engine hands it to the replication of the cluster's mode, which orders it (the strong
//!   modes) or applies and propagates it (the eventual mode).
//! - [`error`]: why a request was not carried out: the datalet failed, or the cluster
//!   refused.
//! - [`stats`]: the counters behind `stats`; [`metrics`]: the same, and the replication's, as
//!   Prometheus metrics over HTTP (`--http-listen`).
//! - [`tob`]: total-order broadcast on Lamport clocks, sans-IO: the core of the strong modes.
//! - [`peer`]: the transport between controlets: TCP, length-delimited postcard frames.
//! - [`replication`]: the driver that orders operations through the TOB and applies them.
//! - `sim` (with the `sim` feature, and in tests): a seeded simulation of a cluster on the
//!   total order, generic over what runs on each node.
//! - [`process`]: logging and signal handling shared by the `controlet` and `datalet`
//!   binaries (`src/bin/datalet.rs` serves one store over the memcached protocol).
//!
//! The protocol codec itself is pure and lives in `tailorkv_common::codec`.

pub mod auth;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod conns;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod membership;
pub mod metrics;
pub mod out;
pub mod peer;
pub mod placement;
pub mod process;
pub mod rate;
pub mod replication;
pub mod server;
pub mod shard;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stats;
pub mod status;
pub mod tls;
pub mod tob;
pub mod weigh;

pub use config::Config;
pub use server::{run, run_configured};
