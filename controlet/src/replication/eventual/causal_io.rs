//! The causal mode's tasks and messages on an eventual-mode node: the stream sent to each
//! peer, peers' writes made visible in causal order, refills taken and merged. The rules
//! are in [`causal`](super::causal).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tailorkv_common::NodeId;
use tailorkv_datalet::Datalet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::causal::{Causal, Context, Next, ACK_EVERY};
use super::{Eventual, Message, Update, BATCH, MESSAGE_BYTES};

/// How long a refill waits for room in a peer's queue before it is given up and tried again
/// later (the peer is down or cut off).
const REFILL_PATIENCE: Duration = Duration::from_secs(5);
/// How often tombstones past their grace period are dropped.
const TOMBSTONE_SWEEP: Duration = Duration::from_secs(10);
/// How often the stream task looks for work when nothing woke it.
const STREAM_TICK: Duration = Duration::from_millis(5);

impl<D: Datalet> Eventual<D> {
    /// The causal side, in that mode.
    pub fn causal(&self) -> Option<&Arc<Causal>> {
        self.causal.as_ref()
    }

    /// The stream task: sends each peer this node's writes in order (and refills when its
    /// log cannot), and acknowledges what this replica shows of each peer's stream.
    pub(super) async fn send_stream(
        self: Arc<Self>,
        causal: Arc<Causal>,
        mut peers: watch::Receiver<Vec<NodeId>>,
        shutdown: CancellationToken,
    ) {
        let mut heartbeat = Instant::now();
        let mut collected = Instant::now();
        loop {
            tokio::select! {
                () = causal.wake.notified() => {}
                () = tokio::time::sleep(STREAM_TICK) => {}
                () = shutdown.cancelled() => return,
            }
            if peers.has_changed().unwrap_or(false) {
                causal.set_peers(&peers.borrow_and_update());
            }
            if collected.elapsed() >= TOMBSTONE_SWEEP {
                // (The eventual mode's anti-entropy rounds do this; the causal mode has none.)
                collected = Instant::now();
                self.collect_tombstones(self.clock_source.now());
            }
            let peers_now = peers.borrow().clone();
            let beat = heartbeat.elapsed() >= ACK_EVERY;
            if beat {
                heartbeat = Instant::now();
            }
            for (peer, of, seq) in causal.acks_due(beat) {
                let ack = Message::CausalAck {
                    run: causal.me.run,
                    of,
                    seq,
                    resend: false,
                };
                let _ = self.link.try_send(peer, ack);
            }
            for peer in peers_now {
                loop {
                    match causal.next_for(peer, BATCH, MESSAGE_BYTES) {
                        Next::Send(writes) => {
                            let last = writes.last().map_or(0, |w| w.seq);
                            let message = Message::CausalWrites {
                                run: causal.me.run,
                                writes,
                            };
                            if self.link.try_send(peer, message).is_err() {
                                break;
                            }
                            causal.sent(peer, last);
                        }
                        Next::Refill => {
                            // Not for a peer this node cannot reach: the snapshot holds every
                            // client back while it is read.
                            if !self.link.is_up(peer) || !self.send_refill(&causal, peer).await {
                                causal.refill_failed(peer);
                                break;
                            }
                        }
                        Next::Nothing => break,
                    }
                }
            }
        }
    }

    /// Sends `peer` this replica's whole state, read with the gate held alone (no write half
    /// done), with the context it covers; whether it all went into the peer's queue.
    async fn send_refill(&self, causal: &Causal, peer: NodeId) -> bool {
        let started = Instant::now();
        let (context, updates) = {
            let _alone = causal.exclusive().await;
            let context = causal.visible();
            let now = self.clock_source.now();
            let mut keys: Vec<bytes::Bytes> = match self.datalet.scan(now).await {
                Ok(items) => items.into_iter().map(|(k, _)| k).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the store to send a refill");
                    return false;
                }
            };
            keys.extend(self.tombstones.lock().unwrap().keys().cloned());
            let mut updates = self.current_all(keys).await;
            if let Some(flush) = self.flushed.lock().unwrap().clone() {
                updates.insert(0, flush);
            }
            (context, updates)
        };
        let upto = context.get(causal.me);
        let entries = updates.len();
        let mut parts: Vec<Vec<Update>> = Vec::new();
        let mut part = Vec::new();
        let mut bytes = 0;
        for update in updates {
            if !part.is_empty() && bytes + update.size() > MESSAGE_BYTES {
                parts.push(std::mem::take(&mut part));
                bytes = 0;
            }
            bytes += update.size();
            part.push(update);
        }
        parts.push(part);
        let count = parts.len();
        let total: u64 = parts
            .iter()
            .flatten()
            .map(|update| update.size() as u64)
            .sum();
        for (i, updates) in parts.into_iter().enumerate() {
            let mut message = Message::Refill {
                run: causal.me.run,
                context: context.clone(),
                updates,
                first: i == 0,
                last: i + 1 == count,
            };
            let deadline = Instant::now() + REFILL_PATIENCE;
            loop {
                match self.link.try_send(peer, message) {
                    Ok(()) => break,
                    Err(back) if Instant::now() < deadline => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        // The peer sees a gap where the parts were; the refill is sent whole
                        // again later.
                        self.link.dropped(peer);
                        return false;
                    }
                }
            }
        }
        causal.refill_sent(peer, upto, total);
        tracing::info!(
            to = peer.0,
            entries,
            ms = started.elapsed().as_millis() as u64,
            "causal refill sent"
        );
        true
    }

    /// A causal-mode message from `from`; `None` for a gap (messages from it were lost).
    pub(super) async fn take_causal(
        &self,
        causal: &Causal,
        from: NodeId,
        message: Option<Message>,
    ) {
        match message {
            Some(Message::CausalWrites { run, writes }) => {
                causal.receive(from, run, writes);
                self.show_ready(causal).await;
            }
            Some(Message::CausalAck {
                run,
                of,
                seq,
                resend,
            }) => causal.ack(from, run, of, seq, resend),
            Some(Message::Refill {
                run,
                context,
                updates,
                first,
                last,
            }) => {
                if let Some(all) = causal.refill_part(from, updates, first, last) {
                    self.merge_refill(causal, from, run, &context, all).await;
                    self.show_ready(causal).await;
                }
            }
            Some(_) => {}
            None => {
                causal.lost(from);
                // Ask for the stream again from what this replica shows of it.
                if let Some((of, seq)) = causal.shown_of(from) {
                    let ack = Message::CausalAck {
                        run: causal.me.run,
                        of,
                        seq,
                        resend: true,
                    };
                    let _ = self.link.try_send(from, ack);
                }
            }
        }
    }

    /// Merges a refill into the store as one step: with the gate held alone, every entry is
    /// kept where it is newer, and the refill's context joins this replica's.
    async fn merge_refill(
        &self,
        causal: &Causal,
        from: NodeId,
        run: u64,
        context: &Context,
        updates: Vec<Update>,
    ) {
        let started = Instant::now();
        let entries = updates.len();
        {
            let _alone = causal.exclusive().await;
            for update in updates {
                if let Err(e) = self.receive(update).await {
                    tracing::warn!(error = %e, "could not apply part of a refill");
                }
            }
            causal.merged(from, run, context);
        }
        if self
            .filling
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::info!(from = from.0, "sent a whole copy of a group: serving it");
        }
        tracing::info!(
            from = from.0,
            entries,
            ms = started.elapsed().as_millis() as u64,
            "causal refill merged"
        );
        self.evict_to_limit().await;
    }

    /// Makes visible every peer's write whose turn has come and whose dependencies are all
    /// visible here.
    async fn show_ready(&self, causal: &Causal) {
        let mut any = false;
        while let Some((origin, write)) = causal.next_ready() {
            // Shown and counted visible under one hold of the gate, so a refill's snapshot
            // never holds its effect without it in its context.
            let _shared = causal.read_gate().await;
            if let Some(update) = write.update {
                if let Err(e) = self.receive(update).await {
                    tracing::warn!(error = %e, "could not apply a peer's write");
                }
            }
            causal.applied(origin, write.seq);
            any = true;
        }
        if any {
            self.evict_to_limit().await;
        }
    }
}
