//! The driver's part, as `replication::driver` plays it: send what the core queued, carry out
//! its events in order, hand snapshots over, and check what it is told as it goes.

use tailorkv_common::NodeId;

use super::net::Wire;
use super::{App, Kind, Replica, Sim, Snapshot, Who};
use crate::tob::{Event, Message};

impl<A: App> Sim<A> {
    /// Sends what node `i`'s core queued and carries out its events, in order, until it has
    /// nothing more (as the driver's `carry_out`); checks the view it ends in.
    pub fn carry_out(&mut self, app: &mut A, i: usize) {
        loop {
            let Some(tob) = self.nodes[i].tob.as_mut() else {
                return;
            };
            let messages = tob.take_messages();
            let events = tob.take_events();
            for env in messages {
                if let Message::Accept { plan, .. } | Message::Install { plan } = &env.message {
                    self.check.planned(plan.view.epoch, &plan.view.members);
                }
                debug_assert_eq!(env.from, self.universe[i]);
                debug_assert_eq!(env.incarnation, self.nodes[i].incarnation);
                let to = env.to.0 as usize - 1;
                let wire = Wire::Tob {
                    incarnation: env.incarnation,
                    message: env.message,
                };
                self.send(i, to, wire);
            }
            if events.is_empty() {
                break;
            }
            for event in events {
                self.on_event(app, i, event);
                if self.failure.is_some() {
                    return;
                }
            }
        }
        if let Err(e) = self.check_view(i) {
            return self.fail(Kind::Safety, e);
        }
        app.carried_out(self, i);
    }

    /// One view per epoch, whoever installs it.
    fn check_view(&mut self, i: usize) -> Result<(), String> {
        let Some(tob) = self.nodes[i].tob.as_ref() else {
            return Ok(());
        };
        let view = tob.view();
        if view.epoch == self.nodes[i].epoch {
            return Ok(());
        }
        let (epoch, members) = (view.epoch, view.members.clone());
        self.nodes[i].epoch = epoch;
        let who = Who(i, self.nodes[i].incarnation);
        self.log(1, || format!("{who} is in epoch {epoch}: {members:?}"));
        if epoch == 0 {
            return Ok(());
        }
        self.stats.max_epoch = self.stats.max_epoch.max(epoch);
        self.check.view(&who, epoch, &members)
    }

    fn on_event(&mut self, app: &mut A, i: usize, event: Event<A::Op>) {
        let who = Who(i, self.nodes[i].incarnation);
        match event {
            Event::Deliver(d) => app.deliver(self, i, d),
            Event::Serving { epoch } => {
                let seq = self.nodes[i].replica.applied();
                self.log(1, || format!("{who} serves in epoch {epoch} at seq {seq}"));
                self.nodes[i].synced_once = true;
                if self.nodes[i].awaiting.is_some() {
                    let what = format!("{who} serves while waiting for a snapshot");
                    return self.fail(Kind::Safety, what);
                }
                if let Err(e) = self.check.start(&who, epoch, seq) {
                    self.fail(Kind::Safety, e);
                }
            }
            Event::SendState { epoch, seq, to } => {
                self.log(1, || {
                    format!("{who} sends state of epoch {epoch} at seq {seq} to {to:?}")
                });
                let have = self.nodes[i].replica.applied();
                if have != seq || self.nodes[i].awaiting.is_some() {
                    let what = format!(
                        "{who} must send a snapshot at seq {seq} (epoch {epoch}) but has applied {have}"
                    );
                    return self.fail(Kind::Safety, what);
                }
                if let Err(e) = self.check.start(&who, epoch, seq) {
                    return self.fail(Kind::Safety, e);
                }
                for node in to {
                    let state = self.nodes[i].replica.snapshot();
                    let snapshot = Snapshot { epoch, seq, state };
                    self.send(i, node.0 as usize - 1, Wire::State(snapshot));
                }
            }
            Event::AwaitState { epoch, source, seq } => {
                self.log(1, || {
                    format!("{who} awaits state of epoch {epoch} at seq {seq} from {source:?}")
                });
                if let Err(e) = self.check.start(&who, epoch, seq) {
                    return self.fail(Kind::Safety, e);
                }
                app.await_state(self, i);
                self.nodes[i].awaiting = Some((epoch, seq));
                for snapshot in std::mem::take(&mut self.nodes[i].early) {
                    if self.nodes[i].awaiting == Some((snapshot.epoch, snapshot.seq)) {
                        self.install_snapshot(app, i, snapshot);
                    } else if snapshot.epoch > epoch {
                        self.nodes[i].early.push(snapshot);
                    }
                }
            }
            Event::ReadReady { id } => app.read_ready(self, i, id),
            Event::Excluded { epoch } => {
                self.log(1, || format!("{who} is excluded from epoch {epoch}"));
                self.nodes[i].awaiting = None;
                app.excluded(self, i);
            }
        }
    }

    /// Node `i` applies `op` at `seq`, if that is in order: not while it waits for a snapshot,
    /// right after what it applied, something proposed, and what every other node applied at
    /// `seq`. Then the application applies it ([`App::apply`]).
    pub fn apply(&mut self, app: &mut A, i: usize, seq: u64, origin: NodeId, op: A::Op) {
        let node = &self.nodes[i];
        let who = Who(i, node.incarnation);
        if self.trace >= 1 {
            println!(
                "[{:>6}] {who} delivers seq {seq} from {origin:?}: {op:?}",
                self.now
            );
        }
        if let Some(a) = node.awaiting {
            let what = format!("{who} delivered seq {seq} while waiting for the snapshot {a:?}");
            return self.fail(Kind::Safety, what);
        }
        let applied = node.replica.applied();
        if seq != applied + 1 {
            let what = format!("{who} delivered seq {seq} after applying {applied}");
            return self.fail(Kind::Safety, what);
        }
        if !app.proposed(&op) {
            let what = format!("{who} delivered {op:?} at seq {seq}, which nobody proposed");
            return self.fail(Kind::Safety, what);
        }
        if let Err(e) = self.check.applied(&who, seq, A::uid(&op)) {
            return self.fail(Kind::Safety, e);
        }
        app.apply(self, i, seq, origin, op);
    }

    /// A snapshot from node `from` arrives at node `i`: installed if it is the one awaited,
    /// kept if its view is not installed here yet.
    pub(super) fn receive_state(&mut self, app: &mut A, i: usize, from: usize, s: Snapshot<A>) {
        let (epoch, seq) = (s.epoch, s.seq);
        self.log(1, || {
            format!(
                "node {} receives a snapshot from node {} for epoch {epoch} at seq {seq}",
                i + 1,
                from + 1
            )
        });
        let node = &mut self.nodes[i];
        if node.awaiting == Some((epoch, seq)) {
            self.install_snapshot(app, i, s);
        } else if node.tob.as_ref().is_some_and(|t| epoch > t.view().epoch) {
            node.early.push(s);
        }
    }

    fn install_snapshot(&mut self, app: &mut A, i: usize, snapshot: Snapshot<A>) {
        if let Err(e) = app.check_snapshot(self, i, &snapshot) {
            return self.fail(Kind::Safety, e);
        }
        let Snapshot { epoch, seq, state } = snapshot;
        let who = Who(i, self.nodes[i].incarnation);
        self.log(1, || {
            format!("{who} installs the snapshot of epoch {epoch} at seq {seq}")
        });
        self.stats.snapshots += 1;
        let node = &mut self.nodes[i];
        node.replica.install(seq, state);
        node.awaiting = None;
        if let Some(tob) = node.tob.as_mut() {
            tob.state_installed(epoch, seq);
        }
    }
}
