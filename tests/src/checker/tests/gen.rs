//! Random histories from simulated correct systems, and mutations that surely break them.
//!
//! [`linearizable`] simulates one atomic memcached: each op takes effect at a random moment
//! of its interval. [`sequential`] simulates the sequential mode: one log of writes per key,
//! each client reading from a copy that only moves forward. Both use their own tiny model of
//! memcached, not the checkers' register, so a bug in that register cannot hide itself.
//!
//! Written values are unique multiples of 2^32, in decimal: `incr` (by small deltas) never
//! makes one, so a read of such a value names the one write that stored it.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::checker::{ClientId, History, Op, OpKind, OpResult, Outcome, Time, Value};

/// The shape of a generated history.
#[derive(Clone, Debug)]
pub(super) struct Shape {
    pub clients: u32,
    pub ops_per_client: usize,
    pub keys: usize,
    /// Chance that an op gets no reply (it then takes effect or not, evenly).
    pub indeterminate: f64,
    pub incr: bool,
    /// Mostly `incr`s and `get`s, as on a counter, instead of a mix of every kind.
    pub counter: bool,
    /// Longest pause between a client's ops, and longest op.
    pub max_gap: Time,
    pub max_latency: Time,
}

impl Shape {
    /// A small random shape.
    pub(super) fn random(rng: &mut SmallRng) -> Self {
        Shape {
            clients: rng.random_range(1..=7),
            ops_per_client: rng.random_range(1..=40),
            keys: rng.random_range(1..=3),
            indeterminate: [0.0, 0.05, 0.15, 0.3][rng.random_range(0..4)],
            incr: rng.random_bool(0.5),
            counter: false,
            max_gap: rng.random_range(1..=20),
            max_latency: rng.random_range(1..=40),
        }
    }
}

/// A unique value.
fn fresh(counter: &mut u64) -> Value {
    *counter += 1;
    Value::from(*counter << 32)
}

fn random_kind(rng: &mut SmallRng, shape: &Shape, counter: &mut u64) -> OpKind {
    if shape.counter {
        return match rng.random_range(0..100) {
            0..10 => OpKind::Set(fresh(counter)),
            10..45 => OpKind::Get,
            _ => OpKind::Incr(rng.random_range(1..=3)),
        };
    }
    match rng.random_range(0..100) {
        0..35 => OpKind::Set(fresh(counter)),
        35..70 => OpKind::Get,
        70..77 => OpKind::Delete,
        77..87 => OpKind::Add(fresh(counter)),
        _ if shape.incr => OpKind::Incr(rng.random_range(1..=5)),
        _ => OpKind::Get,
    }
}

/// memcached on one key, simply: what `kind` does to `value`.
fn apply(value: &mut Option<Vec<u8>>, kind: &OpKind) -> OpResult {
    match kind {
        OpKind::Set(v) => {
            *value = Some(v.0.clone());
            OpResult::Stored
        }
        OpKind::Get => value
            .as_ref()
            .map_or(OpResult::Miss, |v| OpResult::Hit(Value(v.clone()))),
        OpKind::Delete => match value.take() {
            Some(_) => OpResult::Deleted,
            None => OpResult::NotFound,
        },
        OpKind::Add(v) if value.is_none() => {
            *value = Some(v.0.clone());
            OpResult::Stored
        }
        OpKind::Add(_) => OpResult::NotStored,
        OpKind::Incr(delta) => {
            let Some(old) = value.as_mut() else {
                return OpResult::NotFound;
            };
            let n: u64 = std::str::from_utf8(old)
                .unwrap()
                .trim_end()
                .parse()
                .unwrap();
            let n = n + delta;
            *old = n.to_string().into_bytes();
            OpResult::Incremented(n)
        }
    }
}

/// A planned op of the linearizable simulation.
struct Planned {
    op: Op,
    /// When it takes effect; `None` if it never does.
    effect: Option<Time>,
}

/// A history of a linearizable memcached under random concurrent clients.
pub(super) fn linearizable(rng: &mut SmallRng, shape: &Shape) -> History {
    let mut counter = 0;
    let mut planned = Vec::new();
    for client in 0..shape.clients {
        let mut now = rng.random_range(0..=shape.max_gap);
        for _ in 0..shape.ops_per_client {
            let invoked = now + rng.random_range(0..=shape.max_gap);
            let completed = invoked + rng.random_range(0..=shape.max_latency);
            let effect = rng.random_range(invoked..=completed);
            let lost = rng.random_bool(shape.indeterminate);
            let kind = random_kind(rng, shape, &mut counter);
            let key = format!("k{}", rng.random_range(0..shape.keys));
            planned.push(Planned {
                op: op(client, key, kind, invoked, completed),
                effect: (!lost || rng.random_bool(0.5)).then_some(effect),
            });
            if lost {
                planned.last_mut().unwrap().op.outcome = Outcome::Indeterminate;
            }
            now = completed + 1;
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].effect, i));
    let mut store: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for i in order {
        let Some(_) = planned[i].effect else { continue };
        let op = &mut planned[i].op;
        let result = apply(store.entry(op.key.clone()).or_default(), &op.kind);
        if let Outcome::Completed { result: r, .. } = &mut op.outcome {
            *r = result;
        }
    }
    History::from_ops(planned.into_iter().map(|p| p.op).collect())
}

/// A completed op with a placeholder result (the simulation fills it in).
fn op(client: ClientId, key: String, kind: OpKind, invoked: Time, completed: Time) -> Op {
    let result = match kind {
        OpKind::Get => OpResult::Miss,
        OpKind::Delete | OpKind::Incr(_) => OpResult::NotFound,
        OpKind::Set(_) | OpKind::Add(_) => OpResult::Stored,
    };
    let outcome = Outcome::Completed {
        at: completed,
        result,
    };
    Op {
        id: 0,
        client,
        key,
        kind,
        invoked,
        outcome,
    }
}

/// A history of the sequential mode: per key, one log of writes; each client reads from a
/// position in it that never moves back and is never behind the client's own writes. Clients
/// take turns at random (times are turn numbers, so they say nothing useful about overlap).
/// No `incr`.
pub(super) fn sequential(rng: &mut SmallRng, shape: &Shape) -> History {
    let shape = Shape {
        incr: false,
        ..shape.clone()
    };
    let mut counter = 0;
    let mut logs: HashMap<String, Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut seen: HashMap<(ClientId, String), usize> = HashMap::new();
    let mut left: Vec<usize> = vec![shape.ops_per_client; shape.clients as usize];
    let mut history = History::new();
    let mut turn: Time = 0;
    while let Some(client) = pick_client(rng, &left) {
        left[client as usize] -= 1;
        turn += 10;
        let key = format!("k{}", rng.random_range(0..shape.keys));
        let kind = random_kind(rng, &shape, &mut counter);
        let log = logs.entry(key.clone()).or_insert_with(|| vec![None]);
        let mine = seen.entry((client, key.clone())).or_default();
        let lost = rng.random_bool(shape.indeterminate);
        let result = if kind == OpKind::Get {
            *mine = rng.random_range(*mine..log.len());
            apply(&mut log[*mine].clone(), &kind)
        } else if lost && rng.random_bool(0.5) {
            OpResult::Miss // never applied; the client gets no reply anyway
        } else {
            let mut value = log.last().unwrap().clone();
            let result = apply(&mut value, &kind);
            if matches!(result, OpResult::Stored | OpResult::Deleted) {
                log.push(value);
            }
            if !lost {
                *mine = log.len() - 1;
            }
            result
        };
        let outcome = if lost {
            Outcome::Indeterminate
        } else {
            Outcome::Completed {
                at: turn + 5,
                result,
            }
        };
        history.push(client, key, kind, turn, outcome);
    }
    history
}

fn pick_client(rng: &mut SmallRng, left: &[usize]) -> Option<ClientId> {
    let ready: Vec<usize> = (0..left.len()).filter(|&c| left[c] > 0).collect();
    (!ready.is_empty()).then(|| ready[rng.random_range(0..ready.len())] as ClientId)
}

/// Whether `op` surely changed its key (in every valid order).
fn surely_writes(op: &Op) -> bool {
    matches!(
        (&op.kind, op.result()),
        (OpKind::Set(_), Some(_))
            | (
                _,
                Some(OpResult::Stored | OpResult::Deleted | OpResult::Incremented(_))
            )
    )
}

/// The history with op `id`'s result replaced.
fn with_result(history: &History, id: usize, result: OpResult) -> History {
    let mut ops = history.clone().into_ops();
    let Outcome::Completed { at, .. } = ops[id].outcome else {
        panic!("op #{id} has no result to replace");
    };
    ops[id].outcome = Outcome::Completed { at, result };
    History::from_ops(ops)
}

/// A read changed to return the value of a write `w` such that `w` completed before another
/// write `w2` was invoked, and `w2` completed before the read was invoked: no order can
/// explain it (only `w` wrote that value).
pub(super) fn stale_read(rng: &mut SmallRng, history: &History) -> Option<History> {
    let ops = history.ops();
    let mut choices = Vec::new();
    for read in ops.iter().filter(|op| op.kind == OpKind::Get) {
        let Some(_) = read.result() else { continue };
        let before =
            |op: &&Op, t: Time| op.key == read.key && op.completed().is_some_and(|c| c < t);
        let Some(w2) = ops
            .iter()
            .filter(|op| before(op, read.invoked) && surely_writes(op))
            .max_by_key(|op| op.invoked)
        else {
            continue;
        };
        for w in ops.iter().filter(|op| before(op, w2.invoked)) {
            if let (OpKind::Set(v) | OpKind::Add(v), Some(OpResult::Stored)) = (&w.kind, w.result())
            {
                choices.push((read.id, v.clone()));
            }
        }
    }
    let (id, value) = choices
        .get(rng.random_range(0..choices.len().max(1)))?
        .clone();
    Some(with_result(history, id, OpResult::Hit(value)))
}

/// A read changed to return a value nobody wrote.
pub(super) fn never_written(rng: &mut SmallRng, history: &History) -> Option<History> {
    let reads: Vec<&Op> = history
        .ops()
        .iter()
        .filter(|op| op.kind == OpKind::Get && op.result().is_some())
        .collect();
    let read = reads.get(rng.random_range(0..reads.len().max(1)))?;
    Some(with_result(history, read.id, OpResult::Hit("never".into())))
}

/// On a key never deleted, a read that started after a write completed changed to a miss.
pub(super) fn lost_write(rng: &mut SmallRng, history: &History) -> Option<History> {
    let ops = history.ops();
    let deleted = |key: &str| {
        ops.iter()
            .any(|op| op.key == key && op.kind == OpKind::Delete)
    };
    let reads: Vec<&Op> = ops
        .iter()
        .filter(|r| r.kind == OpKind::Get && r.result().is_some() && !deleted(&r.key))
        .filter(|r| {
            ops.iter().any(|w| {
                w.key == r.key && surely_writes(w) && w.completed().is_some_and(|c| c < r.invoked)
            })
        })
        .collect();
    let read = reads.get(rng.random_range(0..reads.len().max(1)))?;
    Some(with_result(history, read.id, OpResult::Miss))
}

/// A client going back in time: one of its reads changed to a value it saw (or wrote)
/// before it saw (or wrote) a different one.
pub(super) fn back_in_time(rng: &mut SmallRng, history: &History) -> Option<History> {
    let mut choices = Vec::new();
    for mine in by_client_and_key(history).values() {
        let mut first_named: Option<&Value> = None;
        let mut moved_on = false;
        for op in mine {
            if let (Some(old), true, OpKind::Get) = (first_named, moved_on, &op.kind) {
                choices.push((op.id, old.clone()));
            }
            let named = match (&op.kind, op.result()) {
                (_, Some(OpResult::Hit(v))) => Some(v),
                (OpKind::Set(v) | OpKind::Add(v), Some(OpResult::Stored)) => Some(v),
                _ => None,
            };
            match (first_named, named) {
                (None, Some(v)) => first_named = Some(v),
                (Some(old), Some(v)) if old != v => moved_on = true,
                _ => {}
            }
        }
    }
    let (id, value) = choices
        .get(rng.random_range(0..choices.len().max(1)))?
        .clone();
    Some(with_result(history, id, OpResult::Hit(value)))
}

/// Each client's completed ops on each key, in invocation order.
fn by_client_and_key(history: &History) -> HashMap<(ClientId, &str), Vec<&Op>> {
    let mut groups: HashMap<(ClientId, &str), Vec<&Op>> = HashMap::new();
    for op in history.ops().iter().filter(|op| !op.is_indeterminate()) {
        groups.entry((op.client, &op.key)).or_default().push(op);
    }
    for ops in groups.values_mut() {
        ops.sort_by_key(|op| (op.invoked, op.id));
    }
    groups
}
