//! Tests of the total-order broadcast.
//!
//! Here, focused tests of the core's rules, driven by hand; in `script`, more of them as text
//! scripts (`scripts/*.txt`) of commands and what they print. In `simulation`, the core in the
//! seeded cluster simulation ([`crate::sim`]) with unique numbers as operations, under every
//! kind of fault. In `regressions`, the defects the simulation found, each reduced to a few
//! hand-driven steps, with the shortest seeds that showed them.

mod regressions;
mod script;
mod simulation;

use super::*;

pub(super) type Op = u64;

pub(super) fn ids(n: u16) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

/// Hands every queued message to its destination at once, and pays owed acks, until quiet.
pub(super) fn route(nodes: &mut [Tob<Op>]) {
    loop {
        let mut any = false;
        for i in 0..nodes.len() {
            for env in nodes[i].take_messages() {
                any = true;
                let malformed = env.message.malformed(env.from);
                assert_eq!(malformed, None, "a correct node sent {:?}", env.message);
                let to = env.to.0 as usize - 1;
                nodes[to].step(env.from, env.incarnation, env.message);
            }
        }
        for node in nodes.iter_mut() {
            node.ack();
        }
        if !any {
            return;
        }
    }
}

/// `n` nodes (incarnation 1) that formed their first view over an instant network, with
/// nothing left to send or carry out.
pub(super) fn formed(n: u16) -> Vec<Tob<Op>> {
    let universe = ids(n);
    let mut nodes: Vec<Tob<Op>> = universe
        .iter()
        .map(|&id| Tob::new(id, 1, &universe, 0, Timing::default()))
        .collect();
    for _ in 0..10_000 {
        if nodes.iter().all(|t| t.state() == NodeState::Serving) {
            break;
        }
        for node in nodes.iter_mut() {
            node.tick();
        }
        route(&mut nodes);
    }
    route(&mut nodes);
    for node in nodes.iter_mut() {
        assert_eq!(node.state(), NodeState::Serving);
        assert_eq!(node.view().epoch, 1);
        assert_eq!(node.view().members.len(), n as usize);
        let events = node.take_events();
        assert_eq!(events, vec![Event::Serving { epoch: 1 }]);
    }
    nodes
}

/// Ticks every node and routes at once, until `done` (at most 5,000 times).
fn tick_until(nodes: &mut [Tob<Op>], mut done: impl FnMut(&mut [Tob<Op>]) -> bool) {
    for _ in 0..5_000 {
        for node in nodes.iter_mut() {
            node.tick();
        }
        route(nodes);
        if done(nodes) {
            return;
        }
    }
}

/// The last snapshot `node` was told to await, among its events (which it takes).
fn awaited_state(node: &mut Tob<Op>) -> Option<(u64, u64)> {
    node.take_events().into_iter().rev().find_map(|e| match e {
        Event::AwaitState { epoch, seq, .. } => Some((epoch, seq)),
        _ => None,
    })
}

pub(super) fn delivered_ops(events: &[Event<Op>]) -> Vec<(u64, Op)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Deliver(d) => Some((d.seq, d.op)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_single_node_forms_its_view_and_delivers_at_once() {
    let mut tob = Tob::<Op>::new(NodeId(1), 1, &[NodeId(1)], 0, Timing::default());
    assert_eq!(tob.state(), NodeState::Booting);
    tob.tick();
    assert_eq!(tob.state(), NodeState::Serving);
    assert_eq!(tob.take_events(), vec![Event::Serving { epoch: 1 }]);
    tob.propose(7);
    tob.propose(8);
    tob.flush();
    assert_eq!(delivered_ops(&tob.take_events()), vec![(1, 7), (2, 8)]);
    assert!(tob.take_messages().is_empty(), "nobody to tell");
    assert_eq!(tob.delivered(), 2);
}

#[test]
fn a_single_node_continues_from_what_it_delivered_before() {
    let mut tob = Tob::<Op>::new(NodeId(1), 2, &[NodeId(1)], 5, Timing::default());
    tob.tick();
    tob.propose(9);
    tob.flush();
    let events = tob.take_events();
    assert_eq!(delivered_ops(&events), vec![(6, 9)]);
}

#[test]
fn batches_carry_many_operations_in_one_message_per_peer() {
    let mut nodes = formed(3);
    for op in 0..100 {
        nodes[0].propose(op);
    }
    assert!(
        nodes[0].take_messages().is_empty(),
        "nothing sent before flush"
    );
    nodes[0].flush();
    let sent = nodes[0].take_messages();
    assert_eq!(sent.len(), 2, "one broadcast per peer for 100 operations");
    let mut to: Vec<NodeId> = sent.iter().map(|e| e.to).collect();
    to.sort();
    assert_eq!(to, vec![NodeId(2), NodeId(3)]);
    for env in &sent {
        assert!(
            matches!(&env.message, Message::Broadcast { ops, epoch: 1, .. } if *ops == (0..100).collect::<Vec<_>>())
        );
    }
}

#[test]
fn a_quiet_member_sends_heartbeats_after_the_heartbeat_interval() {
    let mut nodes = formed(2);
    let heartbeat = Timing::default().heartbeat;
    // Tick until something is sent: from then on the member is quiet.
    let mut ticks = 0;
    loop {
        nodes[1].tick();
        ticks += 1;
        if !nodes[1].take_messages().is_empty() {
            break;
        }
        assert!(ticks <= heartbeat, "no heartbeat within {heartbeat} ticks");
    }
    for _ in 0..heartbeat - 1 {
        nodes[1].tick();
        assert!(
            nodes[1].take_messages().is_empty(),
            "acks only when owed or after a quiet spell"
        );
    }
    nodes[1].tick();
    let sent = nodes[1].take_messages();
    assert_eq!(sent.len(), 1, "heartbeat");
    assert!(matches!(sent[0].message, Message::Ack { epoch: 1, .. }));
    assert_eq!(sent[0].to, NodeId(1));
}

#[test]
fn own_bytes_fall_as_proposals_are_delivered() {
    let mut nodes = formed(3);
    for op in 0..5 {
        nodes[1].propose(op);
    }
    assert_eq!(nodes[1].own_bytes(), 40);
    nodes[1].flush();
    route(&mut nodes);
    assert_eq!(delivered_ops(&nodes[1].take_events()).len(), 5);
    assert_eq!(nodes[1].own_bytes(), 0);
}

#[test]
fn a_member_that_asks_to_resync_is_given_a_snapshot_while_the_others_go_on() {
    let mut nodes = formed(3);
    nodes[1].resync();
    assert_eq!(nodes[1].state(), NodeState::CatchingUp);
    // The others still deliver: the resyncing member keeps acknowledging broadcasts.
    nodes[0].propose(7);
    nodes[0].flush();
    route(&mut nodes);
    assert_eq!(delivered_ops(&nodes[0].take_events()), vec![(1, 7)]);
    assert!(delivered_ops(&nodes[1].take_events()).is_empty());
    // It asks for a view change in which it is a member to be given the state.
    let mut awaited = None;
    let mut sent = None;
    tick_until(&mut nodes, |nodes| {
        awaited = awaited_state(&mut nodes[1]).or(awaited);
        for i in [0, 2] {
            for event in nodes[i].take_events() {
                if let Event::SendState { epoch, seq, to } = event {
                    assert_eq!(to, vec![NodeId(2)]);
                    sent = Some((epoch, seq));
                }
            }
        }
        awaited.is_some() && sent.is_some()
    });
    assert_eq!(awaited, Some((2, 1)), "a view that gives it state at seq 1");
    assert_eq!(sent, awaited);
    nodes[1].state_installed(2, 1);
    assert_eq!(nodes[1].state(), NodeState::Serving);
}

#[test]
fn proposals_not_yet_broadcast_can_be_withdrawn() {
    let mut nodes = formed(3);
    nodes[0].resync(); // not serving: proposals wait in the buffer
    for op in 0..4 {
        nodes[0].propose(op);
    }
    nodes[0].flush();
    assert_eq!(nodes[0].proposed_len(), 4);
    assert_eq!(nodes[0].own_bytes(), 32);
    nodes[0].withdraw(|&op| op % 2 == 0);
    assert_eq!(nodes[0].proposed_len(), 2);
    assert_eq!(nodes[0].own_bytes(), 16);
}

#[test]
fn a_member_that_is_not_synced_promises_with_no_pending_batches() {
    let mut nodes = formed(3);
    // Node 2 holds a broadcast of node 1 undelivered (node 3 has not seen it).
    nodes[0].propose(9);
    nodes[0].flush();
    for env in nodes[0].take_messages() {
        if env.to == NodeId(2) {
            nodes[1].step(env.from, env.incarnation, env.message);
        }
    }
    let _ = nodes[1].take_messages();
    // While synced, node 2 would report it; once resyncing, it reports nothing.
    nodes[1].resync();
    nodes[0].force_next_view();
    nodes[0].tick();
    let prepare: Vec<_> = nodes[0]
        .take_messages()
        .into_iter()
        .filter(|env| env.to == NodeId(2) && matches!(env.message, Message::Prepare { .. }))
        .collect();
    assert_eq!(prepare.len(), 1, "node 1 leads a view change");
    for env in prepare {
        nodes[1].step(env.from, env.incarnation, env.message);
    }
    let promises: Vec<Standing<Op>> = nodes[1]
        .take_messages()
        .into_iter()
        .filter_map(|env| match env.message {
            Message::Promise { standing, .. } => Some(standing),
            _ => None,
        })
        .collect();
    assert_eq!(promises.len(), 1);
    assert!(!promises[0].synced);
    assert!(
        promises[0].pending.is_empty(),
        "a member catching up sent its backlog: {:?}",
        promises[0].pending
    );
}

/// Messages of a later epoch are kept up to [`EARLY_BYTES`], however few: past that, the
/// sender's link counts as broken for that epoch (so a view holding it changes) rather than
/// the node keeping whatever arrives.
#[test]
fn early_messages_are_bounded_in_bytes() {
    let mut nodes = formed(3);
    let incarnation = nodes[1].incarnation;
    // Broadcasts of just over 8 MiB each: seven fit in 64 MiB, the eighth does not.
    let ops: Vec<Op> = vec![7; (8 << 20) / 8];
    for i in 0..10u64 {
        let message = Message::Broadcast {
            epoch: 2,
            ts: 1_000 + i,
            received: Vec::new(),
            ops: ops.clone(),
        };
        nodes[2].step(NodeId(2), incarnation, message);
    }
    assert!(nodes[2].early_bytes <= EARLY_BYTES);
    assert_eq!(
        nodes[2].early.len(),
        7,
        "64 MiB holds seven broadcasts of 8 MiB"
    );
    assert_eq!(nodes[2].early_lost.get(&NodeId(2)), Some(&2));
}

/// A node catching up holds everything broadcast while it waits for its snapshot. Past
/// [`Tob::set_catch_up_bytes`] it stops reporting receipts, so the others deliver no further
/// (their proposers then stop at the driver's in-flight bound) and what it holds stays
/// bounded; once its snapshot is installed it delivers the backlog and reports again.
#[test]
fn a_node_catching_up_holds_a_bounded_backlog() {
    let mut nodes = formed(3);
    // A broadcast of one operation weighs 16 bytes: the third passes 40.
    nodes[1].set_catch_up_bytes(40);
    nodes[1].resync();
    let broadcast = |nodes: &mut Vec<Tob<Op>>, ops: std::ops::Range<Op>| {
        for op in ops {
            nodes[0].propose(op);
            nodes[0].flush();
            route(nodes);
        }
    };
    broadcast(&mut nodes, 0..10);
    assert_eq!(
        delivered_ops(&nodes[0].take_events()),
        vec![(1, 0), (2, 1)],
        "delivery stops at the receipts node 2 reported before its backlog passed the bound"
    );
    // The view change that gives node 2 its snapshot delivers the rest from the tail.
    let mut awaited = None;
    tick_until(&mut nodes, |nodes| {
        awaited = awaited_state(&mut nodes[1]).or(awaited);
        awaited.is_some()
    });
    let (epoch, seq) = awaited.expect("a view that gives node 2 its state");
    assert_eq!(seq, 10);
    let tail = delivered_ops(&nodes[0].take_events());
    assert_eq!(tail.len(), 8, "{tail:?}");
    // Waiting for its snapshot in the new view, it holds back again.
    broadcast(&mut nodes, 100..110);
    assert_eq!(
        delivered_ops(&nodes[0].take_events()),
        vec![(11, 100), (12, 101)]
    );
    nodes[1].state_installed(epoch, seq);
    nodes[1].ack();
    route(&mut nodes);
    let expected: Vec<(u64, Op)> = (100..110).map(|op| (op - 89, op)).collect();
    assert_eq!(
        delivered_ops(&nodes[1].take_events()),
        expected,
        "node 2 delivers its backlog"
    );
    assert_eq!(
        delivered_ops(&nodes[0].take_events()),
        expected[2..],
        "and reports it, so the others deliver the rest"
    );
}

/// Safety. Two of three nodes restart empty while the third, still in the view, holds every
/// delivered batch; its messages are slow. Before: the restarted pair, both at epoch 0,
/// formed a first view of their own as soon as they had each other's promises, and started
/// the cluster over empty beside the survivor (split brain, every write lost). Now a first
/// view waits for every node it hears from: they learn the survivor's view instead, and
/// the cluster waits for the operator ([`Tob::force_next_view`] on the survivor), which then
/// brings them in with the survivor's state.
#[test]
fn nodes_that_restart_empty_beside_a_survivor_do_not_start_over() {
    let mut nodes = formed(3);
    nodes[2].propose(5);
    nodes[2].flush();
    route(&mut nodes);
    let universe = ids(3);
    nodes[0] = Tob::new(NodeId(1), 2, &universe, 0, Timing::default());
    nodes[1] = Tob::new(NodeId(2), 2, &universe, 0, Timing::default());
    let _ = nodes[2].take_events();
    // The survivor's messages take 50 ticks (longer than a coordinator waits for the rest
    // once it has a majority); the others' are instant.
    let mut slow: Vec<(u64, Envelope<Op>)> = Vec::new();
    let mut now = 0;
    let mut run = |nodes: &mut Vec<Tob<Op>>, ticks: u64| {
        for _ in 0..ticks {
            now += 1;
            let t = now;
            for node in nodes.iter_mut() {
                node.tick();
            }
            for _ in 0..3 {
                for i in 0..3 {
                    for env in nodes[i].take_messages() {
                        if env.from == NodeId(3) {
                            slow.push((t + 50, env));
                        } else {
                            let to = env.to.0 as usize - 1;
                            nodes[to].step(env.from, env.incarnation, env.message);
                        }
                    }
                }
                let (due, later): (Vec<_>, Vec<_>) = slow.drain(..).partition(|(at, _)| *at <= t);
                slow = later;
                for (_, env) in due {
                    let to = env.to.0 as usize - 1;
                    nodes[to].step(env.from, env.incarnation, env.message);
                }
                for node in nodes.iter_mut() {
                    node.ack();
                }
            }
        }
    };
    for _ in 0..300 {
        run(&mut nodes, 10);
        for (i, node) in nodes.iter_mut().take(2).enumerate() {
            assert_ne!(
                node.state(),
                NodeState::Serving,
                "node {} formed a view without the survivor: {:?}",
                i + 1,
                node.view()
            );
            let events = node.take_events();
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, Event::Serving { .. } | Event::Deliver(_))),
                "{events:?}"
            );
        }
    }
    assert_eq!(
        nodes[2].view().epoch,
        1,
        "the survivor alone changes nothing"
    );
    // The operator tells the survivor to go on: all three serve, from its state.
    nodes[2].force_next_view();
    let mut first_state = None;
    for _ in 0..50 {
        run(&mut nodes, 100);
        for i in 0..3 {
            for event in nodes[i].take_events() {
                if let Event::SendState { epoch, seq, to } = event {
                    first_state.get_or_insert((i, seq));
                    for j in to {
                        nodes[j.0 as usize - 1].state_installed(epoch, seq);
                    }
                }
            }
        }
        let epochs: Vec<u64> = nodes.iter().map(|n| n.view().epoch).collect();
        let all_serving = nodes.iter().all(|n| n.state() == NodeState::Serving);
        if all_serving && epochs.iter().all(|&e| e == epochs[0]) {
            assert_eq!(nodes[0].view().members.len(), 3);
            assert_eq!(
                first_state,
                Some((2, 1)),
                "the survivor sends its state, which holds the delivered operation"
            );
            return;
        }
    }
    panic!("the three nodes never served together after the survivor was told to go on");
}

/// Hands queued messages on like [`route`], except to and from the nodes in `dead` (0-based).
fn route_except(nodes: &mut [Tob<Op>], dead: &[usize]) {
    loop {
        let mut any = false;
        for i in 0..nodes.len() {
            let messages = nodes[i].take_messages();
            if dead.contains(&i) {
                continue;
            }
            for env in messages {
                let to = env.to.0 as usize - 1;
                if dead.contains(&to) {
                    continue;
                }
                any = true;
                nodes[to].step(env.from, env.incarnation, env.message);
            }
        }
        for node in nodes.iter_mut() {
            node.ack();
        }
        if !any {
            return;
        }
    }
}

/// Ticks the live nodes and routes among them until `done` (at most 5,000 times).
fn tick_live_until(
    nodes: &mut [Tob<Op>],
    dead: &[usize],
    mut done: impl FnMut(&mut [Tob<Op>]) -> bool,
) -> bool {
    for _ in 0..5_000 {
        for (i, node) in nodes.iter_mut().enumerate() {
            if !dead.contains(&i) {
                node.tick();
            }
        }
        route_except(nodes, dead);
        if done(nodes) {
            return true;
        }
    }
    false
}

fn member_ids(node: &Tob<Op>) -> Vec<u16> {
    node.view().ids().map(|n| n.0).collect()
}

/// Node 2 of a two-member group is replaced by node 3 (the target becomes {1, 3}): node 3 is
/// let in and given a snapshot, and node 2 stays in the view until node 3 has installed it;
/// then a view change leaves node 2 out, and node 2 learns it is outside.
#[test]
fn a_member_is_replaced_only_once_its_replacement_holds_the_state() {
    let mut nodes = formed(2);
    nodes.push(Tob::new(
        NodeId(3),
        1,
        &[NodeId(1), NodeId(3)],
        0,
        Timing::default(),
    ));
    let target = [NodeId(1), NodeId(3)];
    nodes[0].set_target(&target);
    nodes[1].set_target(&target);
    nodes[0].propose(5);
    nodes[0].flush();
    let mut sent = None;
    assert!(tick_live_until(&mut nodes, &[], |nodes| {
        for event in nodes[0].take_events() {
            if let Event::SendState { epoch, seq, to } = event {
                assert_eq!(to, vec![NodeId(3)]);
                sent = Some((epoch, seq));
            }
        }
        sent.is_some()
    }));
    let (epoch, seq) = sent.unwrap();
    assert_eq!(
        member_ids(&nodes[0]),
        vec![1, 2, 3],
        "node 2 stays while node 3 catches up"
    );
    assert_eq!(nodes[2].state(), NodeState::CatchingUp);
    // However long the transfer takes, node 2 is not dropped before it ends.
    tick_live_until(&mut nodes, &[], |_| false);
    assert_eq!(member_ids(&nodes[0]), vec![1, 2, 3]);
    assert_eq!(nodes[0].view().epoch, epoch);
    nodes[2].state_installed(epoch, seq);
    assert!(tick_live_until(&mut nodes, &[], |nodes| member_ids(
        &nodes[0]
    ) == [1, 3]));
    assert!(nodes[0].is_settled());
    assert_eq!(nodes[2].state(), NodeState::Serving);
    assert!(tick_live_until(&mut nodes, &[], |nodes| nodes[1].state()
        == NodeState::Outside));
    assert!(nodes[1]
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Excluded { .. })));
}

/// A group of two whose other member died cannot change its view by a majority (it would need
/// both); once the agreed membership removes the dead member and names a replacement, the
/// survivor's vote is a quorum and the replacement is let in.
#[test]
fn the_survivor_of_two_takes_a_replacement_once_the_dead_member_is_removed() {
    let mut nodes = formed(2);
    nodes.push(Tob::new(
        NodeId(3),
        1,
        &[NodeId(1), NodeId(3)],
        0,
        Timing::default(),
    ));
    let dead = [1];
    let replaced = tick_live_until(&mut nodes, &dead, |nodes| nodes[0].view().epoch > 1);
    assert!(
        !replaced,
        "a majority of two is two: no view without node 2"
    );
    assert!(!nodes[0].is_serving());
    nodes[0].set_target(&[NodeId(1), NodeId(3)]);
    assert!(tick_live_until(&mut nodes, &dead, |nodes| {
        member_ids(&nodes[0]) == [1, 3]
    }));
    assert!(nodes[0].is_serving());
    // Node 2 alone could not have formed a view of its own: it needs node 1's vote.
    nodes[1].set_target(&[NodeId(1), NodeId(3)]);
    let alone = tick_live_until(&mut nodes, &[0, 2], |nodes| nodes[1].view().epoch > 1);
    assert!(!alone);
}

/// Messages no correct member sends are dropped unread and counted: a member's view, state,
/// and what it sends and does stay as they were. The well-formed plan beside them is taken,
/// so the test can tell.
#[test]
fn malformed_messages_change_nothing() {
    let mut nodes = formed(3);
    let plan = |epoch: u64| Plan::<Op> {
        view: View {
            epoch,
            members: vec![(NodeId(1), 1), (NodeId(2), 1), (NodeId(3), 1)],
        },
        tail: vec![],
        synced: ids(3),
        source: NodeId(2),
        start_seq: 0,
    };
    let ballot = |epoch, round, node| Ballot {
        epoch,
        round,
        node: NodeId(node),
    };
    let batch = |ts| Batch::<Op> {
        ts,
        origin: NodeId(2),
        ops: vec![1],
    };
    let bad: Vec<Message<Op>> = vec![
        Message::Install {
            plan: plan(MAX_EPOCH + 1),
        },
        Message::Install {
            plan: Plan {
                source: NodeId(4),
                ..plan(2)
            },
        },
        Message::Install {
            plan: Plan {
                synced: vec![NodeId(2), NodeId(1)],
                ..plan(2)
            },
        },
        Message::Install {
            plan: Plan {
                view: View {
                    epoch: 2,
                    members: vec![(NodeId(2), 1), (NodeId(1), 1), (NodeId(3), 1)],
                },
                ..plan(2)
            },
        },
        Message::Install {
            plan: Plan {
                tail: vec![batch(9), batch(9)],
                ..plan(2)
            },
        },
        Message::Prepare {
            ballot: ballot(2, 1, 3),
        },
        Message::Prepare {
            ballot: ballot(2, 0, 2),
        },
        Message::Accept {
            ballot: ballot(2, 1, 2),
            plan: Plan {
                synced: vec![],
                ..plan(2)
            },
        },
        Message::Broadcast {
            epoch: 1,
            ts: 100,
            received: vec![(NodeId(3), 5), (NodeId(1), 5)],
            ops: vec![7],
        },
        Message::Alive { epoch: u64::MAX },
        Message::Promise {
            ballot: ballot(2, 1, 1),
            standing: Standing {
                epoch: 1,
                synced: true,
                delivered: 0,
                last: (0, NodeId(0)),
                pending: vec![batch(9), batch(3)],
                accepted: None,
            },
        },
    ];
    let count = bad.len() as u64;
    for message in bad {
        assert!(message.malformed(NodeId(2)).is_some(), "{message:?}");
        nodes[0].step(NodeId(2), 1, message);
        for _ in 0..3 {
            nodes[0].tick();
        }
    }
    assert_eq!(nodes[0].rejected(), count);
    assert_eq!(nodes[0].view().epoch, 1);
    assert_eq!(nodes[0].state(), NodeState::Serving);
    assert_eq!(nodes[0].take_events(), vec![]);
    // A well-formed plan of a later view is installed.
    nodes[0].step(NodeId(2), 1, Message::Install { plan: plan(2) });
    assert_eq!(nodes[0].view().epoch, 2);
    assert_eq!(nodes[0].rejected(), count);
}

fn reads_ready(events: &[Event<Op>]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReadReady { id } => Some(*id),
            _ => None,
        })
        .collect()
}

/// A read takes one round of `ReadIndex` to the other members and their answers, and no
/// broadcast; reads asked while a round is out wait for the next one, which serves them all.
#[test]
fn a_read_is_confirmed_by_one_round_and_nothing_is_broadcast() {
    let mut nodes = formed(3);
    nodes[1].read(1);
    let sent = nodes[1].take_messages();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent
        .iter()
        .all(|e| matches!(e.message, Message::ReadIndex { epoch: 1, .. })));
    nodes[1].read(2);
    nodes[1].read(3);
    assert!(nodes[1].take_messages().is_empty(), "one round at a time");
    for env in sent {
        let to = env.to.0 as usize - 1;
        nodes[to].step(env.from, env.incarnation, env.message);
    }
    // One answer makes a majority of three with the reader itself.
    let answer = nodes[0].take_messages().pop().unwrap();
    assert!(matches!(
        answer.message,
        Message::ReadIndexOk { epoch: 1, .. }
    ));
    nodes[1].step(answer.from, answer.incarnation, answer.message);
    assert_eq!(reads_ready(&nodes[1].take_events()), vec![1]);
    // The next round, for reads 2 and 3, went out with the first one's confirmation.
    route(&mut nodes);
    assert_eq!(reads_ready(&nodes[1].take_events()), vec![2, 3]);
    assert_eq!(nodes[1].reads_waiting(), 0);
    assert!(nodes
        .iter_mut()
        .all(|n| delivered_ops(&n.take_events()).is_empty()));
}

/// The `ReadIndex` requests `node` sent since its messages were last taken, with their receivers.
fn read_index_to(node: &mut Tob<Op>) -> Vec<(NodeId, Envelope<Op>)> {
    node.take_messages()
        .into_iter()
        .filter(|e| matches!(e.message, Message::ReadIndex { .. }))
        .map(|e| (e.to, e))
        .collect()
}

/// Answers `requests` at their receivers and gives the answers to node `i`.
fn answer_reads(nodes: &mut [Tob<Op>], i: usize, requests: Vec<(NodeId, Envelope<Op>)>) {
    for (to, env) in requests {
        let at = to.0 as usize - 1;
        nodes[at].step(env.from, env.incarnation, env.message);
        for answer in nodes[at].take_messages() {
            if matches!(answer.message, Message::ReadIndexOk { .. }) {
                nodes[i].step(answer.from, answer.incarnation, answer.message);
            }
        }
    }
}

/// A round asks only as many members as a majority needs, those that confirmed the last
/// round; if they stay silent for `READ_FALLBACK` ticks it asks the others too, and the
/// first to answer is asked next time.
#[test]
fn a_read_round_asks_the_members_that_answered_last_and_the_rest_if_they_are_silent() {
    let mut nodes = formed(3);
    // Nobody answered yet: both others are asked; node 1 answers.
    nodes[1].read(1);
    let asked = read_index_to(&mut nodes[1]);
    let to: Vec<NodeId> = asked.iter().map(|(to, _)| *to).collect();
    assert_eq!(to, vec![NodeId(1), NodeId(3)]);
    let first: Vec<_> = asked
        .into_iter()
        .filter(|(to, _)| *to == NodeId(1))
        .collect();
    answer_reads(&mut nodes, 1, first);
    assert_eq!(reads_ready(&nodes[1].take_events()), vec![1]);

    // Now only node 1 is asked, and it stays silent.
    nodes[1].read(2);
    let asked = read_index_to(&mut nodes[1]);
    assert_eq!(
        asked.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![NodeId(1)]
    );
    for _ in 1..reads::READ_FALLBACK {
        nodes[1].tick();
        assert!(read_index_to(&mut nodes[1]).is_empty());
    }
    nodes[1].tick();
    let rest = read_index_to(&mut nodes[1]);
    assert_eq!(
        rest.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![NodeId(3)]
    );
    answer_reads(&mut nodes, 1, rest);
    assert_eq!(reads_ready(&nodes[1].take_events()), vec![2]);

    // Node 3 answered: it is the one asked next.
    nodes[1].read(3);
    let asked = read_index_to(&mut nodes[1]);
    assert_eq!(
        asked.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        vec![NodeId(3)]
    );
    answer_reads(&mut nodes, 1, asked);
    assert_eq!(reads_ready(&nodes[1].take_events()), vec![3]);

    // Of five, a round asks the two that made the last majority.
    let mut nodes = formed(5);
    nodes[0].read(1);
    let asked = read_index_to(&mut nodes[0]);
    assert_eq!(asked.len(), 4);
    let two: Vec<_> = asked
        .into_iter()
        .filter(|(to, _)| *to == NodeId(3) || *to == NodeId(5))
        .collect();
    answer_reads(&mut nodes, 0, two);
    assert_eq!(reads_ready(&nodes[0].take_events()), vec![1]);
    nodes[0].read(2);
    let mut to: Vec<NodeId> = read_index_to(&mut nodes[0])
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    to.sort();
    assert_eq!(to, vec![NodeId(3), NodeId(5)]);
}

/// A read waits for what its node had received when the round started: node 2 holds node 1's
/// write, which it cannot deliver before node 3 has it too; the read is answered only after.
#[test]
fn a_read_waits_for_the_writes_its_node_had_received() {
    let mut nodes = formed(3);
    nodes[0].propose(9);
    nodes[0].flush();
    let mut to_three = Vec::new();
    for env in nodes[0].take_messages() {
        if env.to == NodeId(3) {
            to_three.push(env);
        } else {
            nodes[1].step(env.from, env.incarnation, env.message);
        }
    }
    nodes[1].take_messages();
    nodes[1].read(1);
    route(&mut nodes);
    let events = nodes[1].take_events();
    assert!(reads_ready(&events).is_empty(), "{events:?}");
    assert_eq!(nodes[1].reads_waiting(), 1);
    for env in to_three {
        nodes[2].step(env.from, env.incarnation, env.message);
    }
    route(&mut nodes);
    nodes[2].ack();
    route(&mut nodes);
    let events = nodes[1].take_events();
    assert_eq!(delivered_ops(&events), vec![(1, 9)]);
    assert!(matches!(events.last(), Some(Event::ReadReady { id: 1 })));
}

/// A member cut off from the others answers none of its reads, however long it waits; the
/// others, a majority, go on answering theirs. A member that promised a ballot of the next
/// epoch confirms no round of its view.
#[test]
fn a_member_cut_off_answers_no_read_and_a_frozen_one_confirms_none() {
    let mut nodes = formed(3);
    nodes[2].read(1);
    nodes[0].read(2);
    let dead = [2];
    tick_live_until(&mut nodes, &dead, |_| false);
    assert!(reads_ready(&nodes[2].take_events()).is_empty());
    assert_eq!(nodes[2].reads_waiting(), 1);
    assert!(reads_ready(&nodes[0].take_events()).contains(&2));

    let mut nodes = formed(3);
    nodes[0].promised = Ballot {
        epoch: 2,
        round: 1,
        node: NodeId(2),
    };
    nodes[0].frozen_at = Some(nodes[0].now);
    nodes[0].step(NodeId(2), 1, Message::ReadIndex { epoch: 1, round: 1 });
    assert!(nodes[0].take_messages().is_empty());
}
