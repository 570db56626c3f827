//! Convergence for the eventual mode: once writes stop and propagation settles, every replica
//! holds the same items, and each key holds its highest-version write.
//!
//! The eventual mode resolves conflicting writes by version (last writer wins, versions being
//! `(lamport timestamp, node id)` and never equal for two writes). So given each replica's
//! final items and the writes made, with their versions, the final state is determined:
//!
//! 1. All replicas hold the same key set, with the same value and version for each key.
//! 2. Each key holds what its highest-version write left: its value at its version, or
//!    nothing for a delete. Replicas hold live items only (no tombstones).
//!
//! A write whose reply never came ([`Write::version`] is `None`) may or may not have been
//! applied, at a version nobody learned. A key may hold its value (values are unique per
//! key, so the value names the write) only at a version above every known write's; a key
//! may be absent if such a write was a delete.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use tailorkv_common::Version;

use super::history::{Key, Value};

/// A replica's final items: key -> (value, version).
pub type ReplicaState = BTreeMap<Key, (Value, Version)>;

/// What a key holds on a replica.
pub type Held = Option<(Value, Version)>;

/// A write of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: Key,
    /// The value stored, `None` for a delete.
    pub value: Option<Value>,
    /// The version it was applied at; `None` for an indeterminate write (no reply).
    pub version: Option<Version>,
}

/// The first key (in key order) whose replicas have not converged correctly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// Replicas disagree: what each one holds, by replica index.
    ReplicasDiffer { key: Key, held: Vec<Held> },
    /// Every replica holds `held`, but the highest-version write left `expected`.
    NotNewest {
        key: Key,
        held: Held,
        expected: Held,
    },
    /// Every replica holds a value no write of the key could have left there.
    NeverWritten { key: Key, held: (Value, Version) },
}

/// Checks that `replicas` agree and hold, for each key, its highest-version write.
///
/// Panics if two known writes of one key share a version: versions are unique, so the input
/// is wrong.
pub fn check_converged(replicas: &[ReplicaState], writes: &[Write]) -> Result<(), Divergence> {
    converged(replicas, writes, false)
}

/// [`check_converged`] for a store that evicts: a key may also be absent from every replica
/// (evicted everywhere). Replicas must still agree, and a key they hold must hold its
/// newest write: an eviction removes, it never brings back an older value.
pub fn check_converged_evicting(
    replicas: &[ReplicaState],
    writes: &[Write],
) -> Result<(), Divergence> {
    converged(replicas, writes, true)
}

fn converged(
    replicas: &[ReplicaState],
    writes: &[Write],
    evictions: bool,
) -> Result<(), Divergence> {
    let mut by_key: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for write in writes {
        by_key.entry(write.key.as_str()).or_default().push(write);
    }
    let keys: BTreeSet<&str> = replicas
        .iter()
        .flat_map(|r| r.keys().map(String::as_str))
        .chain(by_key.keys().copied())
        .collect();
    for key in keys {
        let held = agreed(key, replicas)?;
        if evictions && held.is_none() {
            continue;
        }
        check_key(key, held, by_key.get(key).map_or(&[], Vec::as_slice))?;
    }
    Ok(())
}

/// What every replica holds for `key`, if they all hold the same.
fn agreed(key: &str, replicas: &[ReplicaState]) -> Result<Held, Divergence> {
    let held: Vec<Held> = replicas.iter().map(|r| r.get(key).cloned()).collect();
    match held.split_first() {
        None => Ok(None),
        Some((first, rest)) if rest.iter().all(|h| h == first) => Ok(first.clone()),
        Some(_) => Err(Divergence::ReplicasDiffer {
            key: key.to_string(),
            held,
        }),
    }
}

/// Checks the state all replicas agree on against the key's writes.
fn check_key(key: &str, held: Held, writes: &[&Write]) -> Result<(), Divergence> {
    let newest = newest_known(key, writes);
    let expected: Held = newest.and_then(|w| Some((w.value.clone()?, w.version?)));
    if held == expected {
        return Ok(());
    }
    let newest_version = newest.and_then(|w| w.version);
    let unknown = writes.iter().filter(|w| w.version.is_none());
    let explained = match &held {
        // Absent: an indeterminate delete may be newer than every known write.
        None => unknown.clone().any(|w| w.value.is_none()),
        // An indeterminate write of this value, newer than every known write.
        Some((value, version)) => {
            let newer = newest_version.is_none_or(|newest| newest < *version);
            newer && unknown.clone().any(|w| w.value.as_ref() == Some(value))
        }
    };
    if explained {
        return Ok(());
    }
    let written = |v: &Value| writes.iter().any(|w| w.value.as_ref() == Some(v));
    match held {
        Some((value, version)) if !written(&value) => Err(Divergence::NeverWritten {
            key: key.to_string(),
            held: (value, version),
        }),
        held => Err(Divergence::NotNewest {
            key: key.to_string(),
            held,
            expected,
        }),
    }
}

/// The key's known write with the highest version. Panics on two known writes with one
/// version.
fn newest_known<'a>(key: &str, writes: &[&'a Write]) -> Option<&'a Write> {
    let mut versions = BTreeSet::new();
    for version in writes.iter().filter_map(|w| w.version) {
        assert!(
            versions.insert(version),
            "key {key:?}: two writes at version {version:?}"
        );
    }
    writes
        .iter()
        .copied()
        .filter(|w| w.version.is_some())
        .max_by_key(|w| w.version)
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |h: &Held| match h {
            Some((v, ver)) => format!("{v} at {ver:?}"),
            None => "nothing".to_string(),
        };
        match self {
            Divergence::ReplicasDiffer { key, held } => {
                write!(f, "key {key:?}: replicas differ:")?;
                for (replica, h) in held.iter().enumerate() {
                    write!(f, " replica {replica} holds {};", show(h))?;
                }
                Ok(())
            }
            Divergence::NotNewest {
                key,
                held,
                expected,
            } => write!(
                f,
                "key {key:?}: replicas hold {}, but the newest write left {}",
                show(held),
                show(expected)
            ),
            Divergence::NeverWritten { key, held } => write!(
                f,
                "key {key:?}: replicas hold {} at {:?}, which no write wrote",
                held.0, held.1
            ),
        }
    }
}
