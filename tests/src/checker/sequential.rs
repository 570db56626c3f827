//! The write-order check for the sequential mode: one order of writes per key that every
//! client's observations follow, never going back in time.
//!
//! In the sequential mode writes go through the total-order broadcast and reads are served
//! from the connected node's copy. So, per key, there is one order of the writes, and each
//! client (each connection) sees a copy that only moves forward in it: it never reads an
//! older write after a newer one it read or wrote itself.
//!
//! # How it works
//!
//! Writes carry unique values (per key), so a read names the write it saw. For each key:
//!
//! - The *writes* are the `set`s, the `add`s that stored and the `delete`s that deleted, plus
//!   any indeterminate ones (they may be in the order), and the key's *initial absence*,
//!   which comes before them all.
//! - Each client's *observations*, in its program order, are the writes it made and the
//!   writes its reads saw. A `get` miss observes the initial absence, if the key has no
//!   `delete` at all and the store does not evict ([`History::allow_evictions`]); otherwise a
//!   miss is ambiguous and skipped (skipping an observation only loses constraints, it never
//!   invents one).
//! - When a client observes write `a` and next observes a different write `b`, `a` comes
//!   before `b` in the order: an edge `a → b`.
//!
//! A single order that every client's observations follow exists exactly when this graph has
//! no cycle (then any topological order will do). A cycle is the violation, reported edge by
//! edge with the client and ops behind each. A cycle of one client's edges is that client
//! going back in time; a cycle across clients is clients disagreeing on the order.
//!
//! Also reported: a read of a value no write wrote, and a client reading its own write before
//! making it. Keys with `incr` are not checked (an `incr` writes a value nobody named; use
//! [`check_sequential`](super::check_sequential)), nor keys where two writes share a value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::budget::UnknownReason;
use super::history::{ClientId, History, Key, Op, OpKind, OpResult, Value};

/// The answer of [`check_write_order`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderVerdict {
    /// Every key has an order of writes that every client's observations follow.
    Consistent,
    Inconsistent(Box<OrderViolation>),
    /// No key failed, but this one could not be checked.
    Unknown {
        key: Key,
        reason: UnknownReason,
    },
}

impl OrderVerdict {
    pub fn is_consistent(&self) -> bool {
        *self == OrderVerdict::Consistent
    }
}

/// A key whose observations fit no order of its writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderViolation {
    /// `read` returned a value that no write of the key wrote.
    NeverWritten { key: Key, read: Op },
    /// `read` saw `write`, which its own client made only later.
    FutureWrite { key: Key, read: Op, write: Op },
    /// The writes would have to precede themselves: each edge forces one step of the cycle.
    Cycle { key: Key, edges: Vec<OrderEdge> },
}

/// One forced step of the order: `earlier` before `later`. `None` is the key's initial
/// absence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderEdge {
    pub earlier: Option<Op>,
    pub later: Option<Op>,
    /// Who forces it; `None` when it is the initial absence preceding a write.
    pub witness: Option<Witness>,
}

/// A client that observed one write at op `first` and another at its next observation `then`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    pub client: ClientId,
    pub first: Op,
    pub then: Op,
}

/// Checks each key of `history` for one order of writes that all clients' observations
/// follow.
pub fn check_write_order(history: &History) -> OrderVerdict {
    let mut unknown = None;
    for (key, ops) in history.by_key() {
        if let Some(reason) = unsupported(&ops) {
            unknown.get_or_insert(OrderVerdict::Unknown {
                key: key.to_string(),
                reason: UnknownReason::Unsupported(reason),
            });
        } else if let Err(violation) = check_key(key, &ops, history.evictions()) {
            return OrderVerdict::Inconsistent(violation);
        }
    }
    unknown.unwrap_or(OrderVerdict::Consistent)
}

/// Why a key cannot be checked, if it cannot.
fn unsupported(ops: &[&Op]) -> Option<String> {
    if ops.iter().any(|op| matches!(op.kind, OpKind::Incr(_))) {
        return Some("the key has incr ops, whose values nobody named".into());
    }
    let mut values = HashMap::new();
    for op in ops.iter().filter(|op| writes(op)) {
        if let OpKind::Set(v) | OpKind::Add(v) = &op.kind {
            if let Some(other) = values.insert(v, op.id) {
                return Some(format!(
                    "ops #{other} and #{} write the same value {v}",
                    op.id
                ));
            }
        }
    }
    None
}

/// Whether `op` is, or may be, a write.
fn writes(op: &Op) -> bool {
    match (&op.kind, op.result()) {
        (OpKind::Set(_), _) => true,
        (OpKind::Add(_) | OpKind::Delete, None) => true,
        (OpKind::Add(_), Some(r)) => *r == OpResult::Stored,
        (OpKind::Delete, Some(r)) => *r == OpResult::Deleted,
        _ => false,
    }
}

/// Checks one key that [`unsupported`] accepts.
fn check_key(key: &str, ops: &[&Op], evictions: bool) -> Result<(), Box<OrderViolation>> {
    let graph = Graph::new(ops, evictions);
    let mut by_client: BTreeMap<ClientId, Vec<&Op>> = BTreeMap::new();
    for &op in ops.iter().filter(|op| !op.is_indeterminate()) {
        by_client.entry(op.client).or_default().push(op);
    }
    let mut edges = graph.initial_edges();
    for (client, mut mine) in by_client {
        mine.sort_by_key(|op| (op.invoked, op.id));
        let mut last: Option<(usize, &Op)> = None;
        for op in mine {
            let Some(node) = graph.observed(key, op)? else {
                continue;
            };
            if let Some((prev, first)) = last.filter(|&(prev, _)| prev != node) {
                let witness = Witness {
                    client,
                    first: first.clone(),
                    then: op.clone(),
                };
                edges.push((prev, node, Some(witness)));
            }
            last = Some((node, op));
        }
    }
    match find_cycle(graph.writes.len(), &edges) {
        None => Ok(()),
        Some(cycle) => Err(Box::new(OrderViolation::Cycle {
            key: key.to_string(),
            edges: cycle.into_iter().map(|e| graph.edge(&edges[e])).collect(),
        })),
    }
}

/// An edge from write node to write node, and who forces it.
type Edge = (usize, usize, Option<Witness>);

/// A key's writes as nodes: node 0 is the initial absence, node `i` is `writes[i]`.
struct Graph<'a> {
    writes: Vec<Option<&'a Op>>,
    by_value: HashMap<&'a Value, usize>,
    by_op: HashMap<usize, usize>,
    has_deletes: bool,
}

impl<'a> Graph<'a> {
    /// With `evictions`, a miss is ambiguous as after a `delete`.
    fn new(ops: &[&'a Op], evictions: bool) -> Self {
        let writes: Vec<Option<&Op>> = [None]
            .into_iter()
            .chain(ops.iter().copied().filter(|op| writes(op)).map(Some))
            .collect();
        let mut by_value = HashMap::new();
        let mut by_op = HashMap::new();
        for (node, op) in writes.iter().enumerate().skip(1) {
            let op = op.expect("every node but the first is a write");
            by_op.insert(op.id, node);
            if let OpKind::Set(v) | OpKind::Add(v) = &op.kind {
                by_value.insert(v, node);
            }
        }
        let has_deletes = evictions || ops.iter().any(|op| op.kind == OpKind::Delete);
        Graph {
            writes,
            by_value,
            by_op,
            has_deletes,
        }
    }

    /// The initial absence precedes every write.
    fn initial_edges(&self) -> Vec<Edge> {
        (1..self.writes.len()).map(|w| (0, w, None)).collect()
    }

    /// The write `op` (completed) observed, if it names one; a violation if it is impossible.
    fn observed(&self, key: &str, op: &'a Op) -> Result<Option<usize>, Box<OrderViolation>> {
        if let Some(&node) = self.by_op.get(&op.id) {
            return Ok(Some(node));
        }
        match op.result() {
            Some(OpResult::Hit(v)) => {
                let Some(&node) = self.by_value.get(v) else {
                    let read = op.clone();
                    let key = key.to_string();
                    return Err(Box::new(OrderViolation::NeverWritten { key, read }));
                };
                let write = self.writes[node].expect("a value node is a write");
                if write.client == op.client && (write.invoked, write.id) > (op.invoked, op.id) {
                    return Err(Box::new(OrderViolation::FutureWrite {
                        key: key.to_string(),
                        read: op.clone(),
                        write: write.clone(),
                    }));
                }
                Ok(Some(node))
            }
            Some(OpResult::Miss) if !self.has_deletes => Ok(Some(0)),
            _ => Ok(None),
        }
    }

    fn edge(&self, &(from, to, ref witness): &Edge) -> OrderEdge {
        OrderEdge {
            earlier: self.writes[from].cloned(),
            later: self.writes[to].cloned(),
            witness: witness.clone(),
        }
    }
}

/// The indices of the edges of a cycle, in cycle order, if the graph has one.
fn find_cycle(nodes: usize, edges: &[Edge]) -> Option<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); nodes];
    for (e, &(from, _, _)) in edges.iter().enumerate() {
        out[from].push(e);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        New,
        Open,
        Done,
    }
    let mut color = vec![Color::New; nodes];
    // The edge that led to each open node, for rebuilding the cycle.
    let mut via = vec![usize::MAX; nodes];
    for root in 0..nodes {
        if color[root] != Color::New {
            continue;
        }
        color[root] = Color::Open;
        let mut stack = vec![(root, 0)];
        while let Some((node, i)) = stack.pop() {
            let Some(&e) = out[node].get(i) else {
                color[node] = Color::Done;
                continue;
            };
            stack.push((node, i + 1));
            let to = edges[e].1;
            match color[to] {
                Color::New => {
                    color[to] = Color::Open;
                    via[to] = e;
                    stack.push((to, 0));
                }
                Color::Open => return Some(rebuild(edges, &via, e)),
                Color::Done => {}
            }
        }
    }
    None
}

/// The cycle closed by edge `last`: walk back from its source along `via` to its target.
fn rebuild(edges: &[Edge], via: &[usize], last: usize) -> Vec<usize> {
    let target = edges[last].1;
    let mut cycle = vec![last];
    let mut node = edges[last].0;
    while node != target {
        let e = via[node];
        cycle.push(e);
        node = edges[e].0;
    }
    cycle.reverse();
    cycle
}

impl fmt::Display for OrderVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderVerdict::Consistent => write!(f, "one write order per key fits every client"),
            OrderVerdict::Inconsistent(violation) => write!(f, "{violation}"),
            OrderVerdict::Unknown { key, reason } => write!(f, "key {key:?} unchecked: {reason}"),
        }
    }
}

impl fmt::Display for OrderViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderViolation::NeverWritten { key, read } => {
                write!(f, "key {key:?}: read of a value never written: {read}")
            }
            OrderViolation::FutureWrite { key, read, write } => write!(
                f,
                "key {key:?}: client {} read its own write before making it: {read} saw {write}",
                read.client
            ),
            OrderViolation::Cycle { key, edges } => {
                writeln!(f, "key {key:?}: no order of writes fits every client:")?;
                for edge in edges {
                    writeln!(f, "  {edge}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for OrderEdge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |w: &Option<Op>| match w {
            Some(op) => format!("write #{}", op.id),
            None => "the initial absence".to_string(),
        };
        write!(f, "{} before {}", name(&self.earlier), name(&self.later))?;
        match &self.witness {
            Some(w) => write!(f, ": client {} saw {} then {}", w.client, w.first, w.then),
            None => write!(f, ": the key starts absent"),
        }
    }
}
