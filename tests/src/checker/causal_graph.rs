//! The happens-before graph behind [`check_causal`](super::check_causal): sessions as chains,
//! reads-from edges, and a vector clock per op.
//!
//! Each completed op is a node of its client's *chain*: the session, in invocation order. An
//! indeterminate `set` or `add` whose value some read returned took effect, after its
//! client's earlier ops, but perhaps only after the client's later ones too (the request may
//! have arrived late, on a connection since given up): it is a chain of its own, one node
//! long, whose one node comes after the session's last completed op before it. Other
//! indeterminate ops are not nodes; the check keeps the `delete`s aside, as possible reasons
//! for a miss.
//!
//! Edges: each node comes after its predecessor in its session, and each read after the write
//! it read from. The clock of node `b` holds, for each chain, how many of that chain's nodes
//! are in `b`'s causal past, `b` itself included. Node `a` happens before `b` (or is `b`)
//! exactly when `a`'s position in its chain is below `b`'s entry for that chain: each
//! question costs O(1), the clocks O(nodes × chains) to compute and to keep.

use std::collections::{BTreeMap, HashMap};

use super::causal::{CausalLink, CausalStep, CausalViolation, Unsupported};
use super::history::{ClientId, History, Op, OpId, OpKind, OpResult, Value};

/// A node's index in [`Graph::nodes`].
pub(super) type Node = usize;

/// What a node does to its key, as far as the causal check goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Stores a value: a `set`, an `add` that stored, or an indeterminate one whose value a
    /// read returned.
    Write,
    /// Makes the key absent: a `delete` that deleted.
    Delete,
    /// Returned the value that this write node stored.
    ReadsValue(Node),
    /// Found the key absent: a `get` miss, a `delete` that found nothing.
    ReadsAbsent,
    /// Nothing the check uses: an `add` that did not store, any op on an unchecked key.
    Other,
}

/// One op in the graph.
pub(super) struct NodeInfo {
    pub op: OpId,
    /// The key's index in [`Graph::keys`].
    pub key: usize,
    pub role: Role,
    pub chain: usize,
    /// Its position in its chain.
    pub pos: u32,
    /// Its session's previous completed op.
    pub pred: Option<Node>,
}

/// Where a key's writes are.
#[derive(Default)]
pub(super) struct KeyWrites {
    /// The chains that write the key, each with its writes' positions, deletes included.
    pub chains: Vec<ChainWrites>,
    /// The key's indeterminate `delete`s, each with its session's last completed op before
    /// it: it may have taken effect at any moment after that op, or never.
    pub unsure_deletes: Vec<Option<Node>>,
}

/// One chain's writes of one key, by position.
pub(super) struct ChainWrites {
    pub chain: usize,
    /// Positions of its writes (`set`s, stored `add`s, `delete`s), ascending.
    pub writes: Vec<u32>,
    /// Positions of its `delete`s, ascending.
    pub deletes: Vec<u32>,
}

/// A history's ops as a happens-before graph, with a clock per node.
pub(super) struct Graph<'h> {
    pub ops: &'h [Op],
    pub nodes: Vec<NodeInfo>,
    /// Each op's node, if it has one.
    pub node_of: Vec<Option<Node>>,
    /// Each chain's nodes, in order.
    pub chains: Vec<Vec<Node>>,
    pub keys: Vec<KeyWrites>,
    /// The first key the check cannot judge, and why.
    pub unsupported: Option<Unsupported>,
    /// Node `b`'s clock is `clocks[b * chains.len()..][..chains.len()]`.
    clocks: Vec<u32>,
}

impl<'h> Graph<'h> {
    /// The graph of `history`, or the first read of a value never written, or a cycle.
    pub(super) fn build(history: &'h History) -> Result<Self, Box<CausalViolation>> {
        let ops = history.ops();
        let keys = Keys::new(ops);
        let mut source = vec![None; ops.len()];
        let mut was_read = vec![false; ops.len()];
        for op in ops {
            if let Some(write) = keys.source(op)? {
                source[op.id] = Some(write);
                was_read[write] = true;
            }
        }
        let mut graph = Graph {
            ops,
            nodes: Vec::new(),
            node_of: vec![None; ops.len()],
            chains: Vec::new(),
            keys: (0..keys.supported.len())
                .map(|_| KeyWrites::default())
                .collect(),
            unsupported: keys.unsupported.clone(),
            clocks: Vec::new(),
        };
        graph.add_sessions(&keys, &was_read);
        for node in 0..graph.nodes.len() {
            let op = &ops[graph.nodes[node].op];
            let supported = keys.supported[graph.nodes[node].key];
            let source = source[op.id].and_then(|w| graph.node_of[w]);
            graph.nodes[node].role = role(op, supported, source);
        }
        graph.index_writes();
        let order = graph.topological_order()?;
        graph.compute_clocks(&order);
        Ok(graph)
    }

    /// Adds each session's chain, and a one-node chain for each indeterminate write read.
    fn add_sessions(&mut self, keys: &Keys, was_read: &[bool]) {
        let mut sessions: BTreeMap<ClientId, Vec<&Op>> = BTreeMap::new();
        for op in self.ops {
            sessions.entry(op.client).or_default().push(op);
        }
        for mut mine in sessions.into_values() {
            mine.sort_by_key(|op| (op.invoked, op.id));
            let chain = self.new_chain();
            let mut last = None;
            for op in mine {
                let key = keys.index[op.key.as_str()];
                if !op.is_indeterminate() {
                    last = Some(self.add_node(op, key, chain, last));
                } else if was_read[op.id] {
                    let alone = self.new_chain();
                    self.add_node(op, key, alone, last);
                } else if op.kind == OpKind::Delete && keys.supported[key] {
                    self.keys[key].unsure_deletes.push(last);
                }
            }
        }
    }

    fn new_chain(&mut self) -> usize {
        self.chains.push(Vec::new());
        self.chains.len() - 1
    }

    fn add_node(&mut self, op: &Op, key: usize, chain: usize, pred: Option<Node>) -> Node {
        let node = self.nodes.len();
        let pos = u32::try_from(self.chains[chain].len()).expect("fewer than 2^32 ops");
        self.nodes.push(NodeInfo {
            op: op.id,
            key,
            role: Role::Other,
            chain,
            pos,
            pred,
        });
        self.chains[chain].push(node);
        self.node_of[op.id] = Some(node);
        node
    }

    /// Fills [`Graph::keys`]' chains.
    fn index_writes(&mut self) {
        for (chain, nodes) in self.chains.iter().enumerate() {
            let mut mine: BTreeMap<usize, ChainWrites> = BTreeMap::new();
            for &n in nodes {
                let node = &self.nodes[n];
                if !matches!(node.role, Role::Write | Role::Delete) {
                    continue;
                }
                let writes = mine.entry(node.key).or_insert_with(|| ChainWrites {
                    chain,
                    writes: Vec::new(),
                    deletes: Vec::new(),
                });
                writes.writes.push(node.pos);
                if node.role == Role::Delete {
                    writes.deletes.push(node.pos);
                }
            }
            for (key, writes) in mine {
                self.keys[key].chains.push(writes);
            }
        }
    }

    /// The nodes whose edges lead into `node`, and how: its session predecessor, and the
    /// write it read from.
    fn incoming(&self, node: Node) -> impl Iterator<Item = (Node, CausalLink)> {
        let info = &self.nodes[node];
        let read = match info.role {
            Role::ReadsValue(write) => Some((write, CausalLink::ReadsFrom)),
            _ => None,
        };
        info.pred
            .map(|p| (p, CausalLink::Session))
            .into_iter()
            .chain(read)
    }

    /// The nodes in an order that keeps every edge, or a cycle.
    fn topological_order(&self) -> Result<Vec<Node>, Box<CausalViolation>> {
        let n = self.nodes.len();
        let mut out: Vec<Vec<Node>> = vec![Vec::new(); n];
        let mut waiting = vec![0u8; n];
        for (node, waits) in waiting.iter_mut().enumerate() {
            for (from, _) in self.incoming(node) {
                out[from].push(node);
                *waits += 1;
            }
        }
        let mut ready: Vec<Node> = (0..n).filter(|&v| waiting[v] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(node) = ready.pop() {
            order.push(node);
            for &next in &out[node] {
                waiting[next] -= 1;
                if waiting[next] == 0 {
                    ready.push(next);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        let steps = self.cycle(&waiting);
        Err(Box::new(CausalViolation::Cycle { steps }))
    }

    /// A cycle among the nodes still `waiting` for a predecessor after a topological sort:
    /// each has one that waits too, so walking back from any meets itself again.
    fn cycle(&self, waiting: &[u8]) -> Vec<CausalStep> {
        let start = (0..waiting.len())
            .find(|&v| waiting[v] > 0)
            .expect("a node left over");
        // (node, the link from the next entry's node into it), walking back.
        let mut back: Vec<(Node, CausalLink)> = Vec::new();
        let mut seen: HashMap<Node, usize> = HashMap::new();
        let mut node = start;
        let first = loop {
            if let Some(&i) = seen.get(&node) {
                break i;
            }
            seen.insert(node, back.len());
            let (pred, link) = self
                .incoming(node)
                .find(|&(p, _)| waiting[p] > 0)
                .expect("a waiting node has a waiting predecessor");
            back.push((node, link));
            node = pred;
        };
        let mut steps = vec![self.step(node, CausalLink::First)];
        for &(n, link) in back[first..].iter().rev() {
            steps.push(self.step(n, link));
        }
        compress(steps)
    }

    /// Computes each node's clock, in `order`.
    fn compute_clocks(&mut self, order: &[Node]) {
        let dims = self.chains.len();
        let mut clocks = vec![0u32; self.nodes.len() * dims];
        let mut row = vec![0u32; dims];
        for &node in order {
            row.fill(0);
            for (from, _) in self.incoming(node) {
                let theirs = &clocks[from * dims..][..dims];
                for (mine, &theirs) in row.iter_mut().zip(theirs) {
                    *mine = (*mine).max(theirs);
                }
            }
            let info = &self.nodes[node];
            row[info.chain] = info.pos + 1;
            clocks[node * dims..][..dims].copy_from_slice(&row);
        }
        self.clocks = clocks;
    }

    /// How many of `chain`'s nodes are in `node`'s causal past, itself included.
    pub(super) fn seen(&self, node: Node, chain: usize) -> u32 {
        self.clocks[node * self.chains.len() + chain]
    }

    /// Whether `a` happens before `b`, or is `b`.
    pub(super) fn precedes_eq(&self, a: Node, b: Node) -> bool {
        let a = &self.nodes[a];
        a.pos < self.seen(b, a.chain)
    }

    /// The position of `chain`'s first node that `a` happens before (or is): the nodes from
    /// there on are after `a`, those before are not.
    pub(super) fn first_after(&self, chain: usize, a: Node) -> u32 {
        let first = self.chains[chain].partition_point(|&n| !self.precedes_eq(a, n));
        u32::try_from(first).expect("fewer than 2^32 ops")
    }

    /// Edges leading from `from` to `to`, which `from` must precede (or be). Walking back
    /// from `to`: to the first node of its chain that `from` precedes, then across the one
    /// edge into that node that comes from `from`'s future.
    pub(super) fn path(&self, from: Node, to: Node) -> Vec<CausalStep> {
        assert!(self.precedes_eq(from, to), "no path from {from} to {to}");
        let mut back: Vec<(Node, CausalLink)> = Vec::new();
        let mut node = to;
        loop {
            let info = &self.nodes[node];
            let chain = &self.chains[info.chain][..=info.pos as usize];
            let earliest = chain[chain.partition_point(|&n| !self.precedes_eq(from, n))];
            if earliest != node {
                back.push((node, CausalLink::Session));
            }
            if earliest == from {
                back.push((from, CausalLink::First));
                break;
            }
            let (pred, link) = self
                .incoming(earliest)
                .find(|&(p, _)| self.precedes_eq(from, p))
                .expect("a node after `from` has a predecessor after it");
            back.push((earliest, link));
            node = pred;
        }
        compress(back.iter().rev().map(|&(n, l)| self.step(n, l)).collect())
    }

    fn step(&self, node: Node, link: CausalLink) -> CausalStep {
        CausalStep {
            op: self.ops[self.nodes[node].op].clone(),
            link,
        }
    }
}

/// `steps` without the session steps that another session step follows: the session's
/// order carries over them.
fn compress(steps: Vec<CausalStep>) -> Vec<CausalStep> {
    let mut kept: Vec<CausalStep> = Vec::with_capacity(steps.len());
    for step in steps {
        let merge = step.link == CausalLink::Session
            && kept
                .last()
                .is_some_and(|last| last.link == CausalLink::Session);
        if merge {
            kept.pop();
        }
        kept.push(step);
    }
    kept
}

/// What `op` does, given whether its key is checked and the write node it read from.
fn role(op: &Op, supported: bool, source: Option<Node>) -> Role {
    if !supported {
        return Role::Other;
    }
    if let Some(write) = source {
        return Role::ReadsValue(write);
    }
    match (&op.kind, op.result()) {
        (OpKind::Set(_), _) | (OpKind::Add(_), None | Some(OpResult::Stored)) => Role::Write,
        (OpKind::Delete, Some(OpResult::Deleted)) => Role::Delete,
        (OpKind::Get, Some(OpResult::Miss)) | (OpKind::Delete, Some(OpResult::NotFound)) => {
            Role::ReadsAbsent
        }
        _ => Role::Other,
    }
}

/// A history's keys: which can be checked, and which write each written value names.
struct Keys<'h> {
    index: HashMap<&'h str, usize>,
    supported: Vec<bool>,
    /// The op that wrote each (key, value).
    writer: HashMap<(usize, &'h Value), OpId>,
    /// The first key found unsupported, and why.
    unsupported: Option<Unsupported>,
}

impl<'h> Keys<'h> {
    fn new(ops: &'h [Op]) -> Self {
        let mut keys = Keys {
            index: HashMap::new(),
            supported: Vec::new(),
            writer: HashMap::new(),
            unsupported: None,
        };
        for op in ops {
            let next = keys.index.len();
            let key = *keys.index.entry(op.key.as_str()).or_insert(next);
            if key == next {
                keys.supported.push(true);
            }
            match &op.kind {
                OpKind::Incr(_) => keys.refuse(key, Unsupported::Incr { op: op.clone() }),
                OpKind::Set(v) | OpKind::Add(v) if may_write(op) => {
                    if let Some(first) = keys.writer.insert((key, v), op.id) {
                        let first = ops[first].clone();
                        let second = op.clone();
                        keys.refuse(key, Unsupported::DuplicateValue { first, second });
                    }
                }
                _ => {}
            }
        }
        keys
    }

    fn refuse(&mut self, key: usize, why: Unsupported) {
        self.supported[key] = false;
        self.unsupported.get_or_insert(why);
    }

    /// The write whose value `op` returned, if it is a completed `get` that hit on a checked
    /// key; a violation if no write stored that value.
    fn source(&self, op: &Op) -> Result<Option<OpId>, Box<CausalViolation>> {
        let key = self.index[op.key.as_str()];
        let (OpKind::Get, Some(OpResult::Hit(value)), true) =
            (&op.kind, op.result(), self.supported[key])
        else {
            return Ok(None);
        };
        match self.writer.get(&(key, value)) {
            Some(&write) => Ok(Some(write)),
            None => Err(Box::new(CausalViolation::NeverWritten { read: op.clone() })),
        }
    }
}

/// Whether `op` stores, or may have stored, its value.
fn may_write(op: &Op) -> bool {
    match (&op.kind, op.result()) {
        (OpKind::Set(_), _) => true,
        (OpKind::Add(_), result) => matches!(result, None | Some(OpResult::Stored)),
        _ => false,
    }
}
