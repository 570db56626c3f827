//! The driver task: owns the [`Tob`], the peer transport and the apply loop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tailorkv_common::{NodeId, Version};
use tailorkv_datalet::Datalet;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use std::sync::atomic::Ordering::Relaxed;

use super::{Counters, Op, Proposal, Replicator, Reply, Request, REQUEST_QUEUE};
use crate::peer::{Inbox, Transport};
use crate::tob::{Delivery, Message, Tob};

/// How often the TOB is ticked.
pub const TICK: Duration = Duration::from_millis(1);

/// This member and the whole group.
#[derive(Clone, Debug)]
pub struct Members {
    pub me: NodeId,
    /// Every member, this one included, with its peer address.
    pub all: Vec<(NodeId, SocketAddr)>,
}

/// Starts the driver on `listener` (this member's peer address); returns the handle commands
/// use.
pub fn spawn_driver<D: Datalet>(
    members: Members,
    listener: TcpListener,
    datalet: Arc<D>,
    shutdown: CancellationToken,
) -> Replicator {
    let ids: Vec<NodeId> = members.all.iter().map(|&(id, _)| id).collect();
    let peers: Vec<(NodeId, SocketAddr)> = members
        .all
        .iter()
        .copied()
        .filter(|&(id, _)| id != members.me)
        .collect();
    let (transport, inbox) =
        Transport::<Message<Proposal>>::start(members.me, listener, &peers, shutdown.clone());
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    let counters = Arc::new(Counters::default());
    let driver = Driver {
        counters: Arc::clone(&counters),
        me: members.me,
        tob: Tob::new(members.me, &ids),
        transport,
        datalet,
        waiting: HashMap::new(),
        next_request: 0,
        overflow: BTreeMap::new(),
    };
    tokio::spawn(driver.run(requests_rx, inbox, shutdown));
    Replicator { requests, counters }
}

struct Driver<D> {
    counters: Arc<Counters>,
    me: NodeId,
    tob: Tob<Proposal>,
    transport: Transport<Message<Proposal>>,
    datalet: Arc<D>,
    /// Replies owed to this member's clients, by request id.
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    next_request: u64,
    /// Messages a full peer queue could not take yet, per peer, in order.
    overflow: BTreeMap<NodeId, VecDeque<Message<Proposal>>>,
}

impl<D: Datalet> Driver<D> {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbox: Inbox<Message<Proposal>>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let can_accept = self.overflow.values().all(VecDeque::is_empty);
            tokio::select! {
                Some(request) = requests.recv(), if can_accept => {
                    self.propose(request);
                    while let Ok(request) = requests.try_recv() {
                        self.propose(request);
                    }
                    self.tob.flush();
                }
                Some((from, message)) = inbox.recv() => {
                    self.tob.step(from, message);
                    while let Ok((from, message)) = inbox.try_recv() {
                        self.tob.step(from, message);
                    }
                    self.tob.ack();
                }
                _ = ticker.tick() => self.tob.tick(),
                () = shutdown.cancelled() => return,
            }
            self.send();
            for delivery in self.tob.take_deliveries() {
                self.apply(delivery).await;
            }
        }
    }

    fn propose(&mut self, request: Request) {
        self.counters.ops_proposed.fetch_add(1, Relaxed);
        self.next_request += 1;
        self.waiting.insert(self.next_request, request.reply);
        self.tob.propose(Proposal {
            request: self.next_request,
            now: request.now,
            op: request.op,
        });
    }

    /// Hands the TOB's messages to the transport without ever waiting on it.
    fn send(&mut self) {
        let messages = self.tob.take_messages();
        self.counters
            .peer_messages_sent
            .fetch_add(messages.len() as u64, Relaxed);
        for envelope in messages {
            self.overflow
                .entry(envelope.to)
                .or_default()
                .push_back(envelope.message);
        }
        for (&to, queue) in self.overflow.iter_mut() {
            while let Some(message) = queue.pop_front() {
                if let Err(message) = self.transport.try_send(to, message) {
                    queue.push_front(message);
                    break;
                }
            }
        }
    }

    /// Applies one delivered operation, and answers its client if it was proposed here.
    async fn apply(&mut self, delivery: Delivery<Proposal>) {
        self.counters.ops_applied.fetch_add(1, Relaxed);
        let Proposal { request, now, op } = delivery.op;
        let version = Version::new(delivery.seq, NodeId(0));
        let mine = delivery.origin == self.me;
        let reply = match op {
            Op::Mutate { key, mutation } => {
                Reply::Mutated(self.datalet.apply(&key, mutation, version, now).await)
            }
            Op::Get { key } if mine => Reply::Read(self.datalet.get(&key, now).await),
            Op::Get { .. } => return,
            Op::Flush { at } => Reply::Flushed(self.datalet.flush_all(at, now).await),
        };
        if mine {
            if let Some(waiter) = self.waiting.remove(&request) {
                let _ = waiter.send(reply);
            }
        }
    }
}
