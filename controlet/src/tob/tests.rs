//! Deterministic tests: several members driven through a simulated network that delays and
//! reorders messages across links (each link stays FIFO, as TCP is). Every run is seeded and
//! a failure names its seed. Each invariant is its own check.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

type Op = u64;

/// A link's messages in flight, with the time each arrives, in send order.
type InFlight = VecDeque<(u64, Message<Op>)>;

struct Sim {
    nodes: Vec<Tob<Op>>,
    links: BTreeMap<(NodeId, NodeId), InFlight>,
    now: u64,
    rng: StdRng,
    max_delay: u64,
    /// Per link, the timestamps sent, to check clock monotonicity.
    sent_ts: BTreeMap<(NodeId, NodeId), Vec<Ts>>,
    delivered: Vec<Vec<Delivery<Op>>>,
    proposed: Vec<Op>,
}

impl Sim {
    fn new(n: u16, seed: u64, max_delay: u64) -> Sim {
        let members: Vec<NodeId> = (1..=n).map(NodeId).collect();
        Sim {
            nodes: members.iter().map(|&id| Tob::new(id, &members)).collect(),
            links: BTreeMap::new(),
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            max_delay,
            sent_ts: BTreeMap::new(),
            delivered: vec![Vec::new(); n as usize],
            proposed: Vec::new(),
        }
    }

    fn collect(&mut self, i: usize) {
        for env in self.nodes[i].take_messages() {
            let link = (env.from, env.to);
            self.sent_ts.entry(link).or_default().push(env.message.ts());
            let queue = self.links.entry(link).or_default();
            let earliest = queue.back().map_or(0, |(at, _)| *at);
            let at = (self.now + self.rng.random_range(1..=self.max_delay)).max(earliest);
            queue.push_back((at, env.message));
        }
        let got = self.nodes[i].take_deliveries();
        self.delivered[i].extend(got);
    }

    /// One time step: maybe propose, deliver due messages, tick everyone.
    fn step(&mut self, propose: bool) {
        self.now += 1;
        if propose {
            for i in 0..self.nodes.len() {
                if self.rng.random_bool(0.3) {
                    for _ in 0..self.rng.random_range(1..4) {
                        let op = self.proposed.len() as u64 + 1;
                        self.proposed.push(op);
                        self.nodes[i].propose(op);
                    }
                    if self.rng.random_bool(0.7) {
                        self.nodes[i].flush();
                    }
                }
                self.collect(i);
            }
        }
        let links: Vec<_> = self.links.keys().copied().collect();
        for link in links {
            while let Some((at, _)) = self.links[&link].front() {
                if *at > self.now {
                    break;
                }
                let (_, message) = self.links.get_mut(&link).unwrap().pop_front().unwrap();
                let to = (link.1 .0 - 1) as usize;
                self.nodes[to].step(link.0, message);
                self.collect(to);
            }
        }
        for i in 0..self.nodes.len() {
            if !propose {
                self.nodes[i].flush();
            }
            self.nodes[i].tick();
            self.collect(i);
        }
    }

    fn run(&mut self, busy_steps: u64) {
        for _ in 0..busy_steps {
            self.step(true);
        }
        let total = self.proposed.len();
        for _ in 0..10_000 {
            if self.delivered.iter().all(|d| d.len() == total) {
                return;
            }
            self.step(false);
        }
    }
}

fn check(seed: u64, sim: &Sim) {
    let reference = &sim.delivered[0];
    // Agreement: every member delivered the same sequence.
    for (i, d) in sim.delivered.iter().enumerate() {
        assert_eq!(
            d,
            reference,
            "seed {seed}: member {} disagrees with member 1",
            i + 1
        );
    }
    // Sequence numbers are 1, 2, 3, ...
    for (i, d) in reference.iter().enumerate() {
        assert_eq!(d.seq, i as u64 + 1, "seed {seed}: sequence numbers skip");
    }
    // No loss, no duplicates.
    let ops: Vec<Op> = reference.iter().map(|d| d.op).collect();
    let unique: HashSet<Op> = ops.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ops.len(),
        "seed {seed}: an operation was delivered twice"
    );
    assert_eq!(
        unique,
        sim.proposed.iter().copied().collect(),
        "seed {seed}: an operation was lost"
    );
    // Clock monotonicity: on every link, timestamps strictly increase.
    for (link, ts) in &sim.sent_ts {
        assert!(
            ts.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: timestamps on {link:?} do not increase: {ts:?}"
        );
    }
}

#[test]
fn members_deliver_the_same_order_with_no_loss_or_duplicates() {
    for seed in 0..300 {
        let n = 2 + (seed % 4) as u16;
        let mut sim = Sim::new(n, seed, 1 + seed % 20);
        sim.run(100);
        check(seed, &sim);
    }
}

#[test]
fn a_single_member_delivers_at_once() {
    let mut tob = Tob::new(NodeId(1), &[NodeId(1)]);
    tob.propose(7);
    tob.propose(8);
    tob.flush();
    let seqs: Vec<_> = tob
        .take_deliveries()
        .iter()
        .map(|d| (d.seq, d.op))
        .collect();
    assert_eq!(seqs, vec![(1, 7), (2, 8)]);
    assert!(tob.take_messages().is_empty());
}

#[test]
fn nothing_is_delivered_until_every_member_is_heard_past_it() {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut a = Tob::new(NodeId(1), &members);
    a.propose(1);
    a.flush();
    assert!(
        a.take_deliveries().is_empty(),
        "delivered without hearing from 2 and 3"
    );
    let ts = a.clock();
    a.step(NodeId(2), Message::Ack { ts: ts + 1 });
    assert!(
        a.take_deliveries().is_empty(),
        "delivered without hearing from 3"
    );
    a.step(NodeId(3), Message::Ack { ts: ts + 1 });
    assert_eq!(a.take_deliveries().len(), 1);
}

#[test]
fn batches_carry_many_operations_in_one_message() {
    let members = [NodeId(1), NodeId(2), NodeId(3)];
    let mut a = Tob::new(NodeId(1), &members);
    for op in 0..100 {
        a.propose(op);
    }
    a.flush();
    let sent = a.take_messages();
    assert_eq!(sent.len(), 2, "one broadcast per peer for 100 operations");
    assert!(matches!(&sent[0].message, Message::Broadcast { ops, .. } if ops.len() == 100));
}

#[test]
fn ack_pays_what_is_owed_at_once_and_only_then() {
    let members = [NodeId(1), NodeId(2)];
    let mut b = Tob::<Op>::new(NodeId(2), &members);
    b.ack();
    assert!(b.take_messages().is_empty(), "nothing owed, nothing sent");
    b.step(
        NodeId(1),
        Message::Broadcast {
            ts: 5,
            ops: vec![1],
        },
    );
    b.step(
        NodeId(1),
        Message::Broadcast {
            ts: 6,
            ops: vec![2],
        },
    );
    b.ack();
    let sent = b.take_messages();
    assert_eq!(sent.len(), 1, "one ack for the burst");
    assert!(matches!(sent[0].message, Message::Ack { ts } if ts > 6));
}

#[test]
fn a_quiet_member_sends_heartbeats_and_acks_owed_broadcasts() {
    let members = [NodeId(1), NodeId(2)];
    let mut b = Tob::<Op>::new(NodeId(2), &members);
    b.step(
        NodeId(1),
        Message::Broadcast {
            ts: 5,
            ops: vec![1],
        },
    );
    b.tick();
    let sent = b.take_messages();
    assert_eq!(sent.len(), 1);
    assert!(matches!(sent[0].message, Message::Ack { ts } if ts > 5));
    for _ in 0..HEARTBEAT_TICKS - 1 {
        b.tick();
        assert!(
            b.take_messages().is_empty(),
            "acks only when owed or after a quiet spell"
        );
    }
    b.tick();
    assert_eq!(b.take_messages().len(), 1, "heartbeat");
}
