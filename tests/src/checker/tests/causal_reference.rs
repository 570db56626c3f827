//! The causal check's definition, checked directly: happens-before as a full transitive
//! closure, and each rule tried on every write and every source of absence. Cubic, so for
//! small histories only; the fast check must agree with it on each.
//!
//! It takes the same view of indeterminate ops as the fast check (see `causal.rs`), and does
//! not support keys with `incr`s or with repeated values.

use std::collections::HashMap;

use crate::checker::{History, Op, OpKind, OpResult};

/// What the definition rules out first, in the fast check's order: a read of a value never
/// written (first by op id), then a cycle, then stale reads and misses (first by op id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finding {
    NeverWritten(usize),
    Cycle,
    StaleRead(usize),
    LostWrite(usize),
}

/// Rows of bits: `hb[a]` holds every node that `a` happens before.
struct Closure {
    rows: Vec<Vec<u64>>,
}

impl Closure {
    fn new(n: usize, edges: &[(usize, usize)]) -> Self {
        let mut rows = vec![vec![0u64; n.div_ceil(64)]; n];
        for &(a, b) in edges {
            rows[a][b / 64] |= 1 << (b % 64);
        }
        for k in 0..n {
            let through = rows[k].clone();
            for row in rows.iter_mut() {
                if row[k / 64] >> (k % 64) & 1 == 1 {
                    for (bits, more) in row.iter_mut().zip(&through) {
                        *bits |= more;
                    }
                }
            }
        }
        Closure { rows }
    }

    fn before(&self, a: usize, b: usize) -> bool {
        self.rows[a][b / 64] >> (b % 64) & 1 == 1
    }
}

/// Checks `history` against the definition.
pub(super) fn check(history: &History) -> Option<Finding> {
    let ops = history.ops();
    let completed = |op: &Op| !op.is_indeterminate();
    let value = |op: &Op| match &op.kind {
        OpKind::Set(v) | OpKind::Add(v) => Some(v.clone()),
        _ => None,
    };
    let writes_value =
        |op: &Op| value(op).is_some() && matches!(op.result(), None | Some(OpResult::Stored));
    let mut writer = HashMap::new();
    for op in ops.iter().filter(|op| writes_value(op)) {
        let fresh = writer.insert((op.key.clone(), value(op).unwrap()), op.id);
        assert!(fresh.is_none(), "repeated value");
    }
    let mut source = HashMap::new();
    for op in ops.iter().filter(|op| op.kind == OpKind::Get) {
        if let Some(OpResult::Hit(v)) = op.result() {
            match writer.get(&(op.key.clone(), v.clone())) {
                Some(&w) => source.insert(op.id, w),
                None => return Some(Finding::NeverWritten(op.id)),
            };
        }
    }
    // Nodes: completed ops, and indeterminate writes someone read. Indices are op ids.
    let node = |op: &Op| completed(op) || source.values().any(|&w| w == op.id);
    let session_before = |a: &Op, b: &Op| {
        a.client == b.client && completed(a) && (a.invoked, a.id) < (b.invoked, b.id)
    };
    let mut edges = Vec::new();
    for a in ops.iter().filter(|op| node(op)) {
        for b in ops.iter().filter(|op| node(op) && session_before(a, op)) {
            edges.push((a.id, b.id));
        }
    }
    edges.extend(source.iter().map(|(&r, &w)| (w, r)));
    let hb = Closure::new(ops.len(), &edges);
    if (0..ops.len()).any(|a| hb.before(a, a)) {
        return Some(Finding::Cycle);
    }
    let is_write =
        |op: &Op| node(op) && (writes_value(op) || op.result() == Some(&OpResult::Deleted));
    for r in ops.iter().filter(|op| completed(op)) {
        let key_writes = || ops.iter().filter(|w| w.key == r.key && is_write(w));
        // Whether a write of the key other than `s` lies between `s` and `r`.
        let hidden = |s: usize| {
            key_writes().any(|w| w.id != s && hb.before(s, w.id) && hb.before(w.id, r.id))
        };
        if let Some(&w) = source.get(&r.id) {
            if hidden(w) {
                return Some(Finding::StaleRead(r.id));
            }
        }
        let absent = matches!(r.result(), Some(OpResult::Miss | OpResult::NotFound));
        if !absent || history.evictions() {
            continue;
        }
        let initial = !key_writes().any(|w| hb.before(w.id, r.id));
        let deleted = ops
            .iter()
            .filter(|d| d.key == r.key && d.kind == OpKind::Delete);
        let explained = initial
            || deleted.clone().any(|d| {
                d.result() == Some(&OpResult::Deleted) && !hb.before(r.id, d.id) && !hidden(d.id)
            })
            || deleted.filter(|d| d.is_indeterminate()).any(|d| {
                !ops.iter()
                    .any(|a| session_before(a, d) && (a.id == r.id || hb.before(r.id, a.id)))
            });
        if !explained {
            return Some(Finding::LostWrite(r.id));
        }
    }
    None
}
