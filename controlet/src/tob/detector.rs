//! An eventually perfect failure detector, sans-IO.
//!
//! Every message from a node is evidence that it is alive. A node silent for longer than its
//! timeout is suspected. A suspected node that is heard again is trusted again and its
//! timeout grows by [`Detector::increment`], so a node that is only slow stops being
//! suspected after a few false suspicions: in a run where delays are eventually bounded,
//! every timeout eventually exceeds them and only crashed nodes stay suspected.

use std::collections::BTreeMap;

use tailorkv_common::NodeId;

#[derive(Clone, Copy, Debug)]
struct Watch {
    last_heard: u64,
    timeout: u64,
    suspected: bool,
}

/// Watches a set of nodes; time is ticks.
#[derive(Debug)]
pub struct Detector {
    watches: BTreeMap<NodeId, Watch>,
    initial: u64,
    increment: u64,
    now: u64,
    /// Times a trusted node came to be suspected.
    suspicions: u64,
}

impl Detector {
    /// Watches `nodes` from tick `now`, suspecting each after `timeout` ticks of silence;
    /// each false suspicion adds `increment` to that node's timeout.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, timeout: u64, increment: u64) -> Self {
        Detector {
            watches: nodes
                .into_iter()
                .map(|n| {
                    let watch = Watch {
                        last_heard: 0,
                        timeout,
                        suspected: false,
                    };
                    (n, watch)
                })
                .collect(),
            initial: timeout,
            increment,
            now: 0,
            suspicions: 0,
        }
    }

    /// Watches exactly `nodes` from now on: new ones start trusted, as if just heard from;
    /// the others keep what they had.
    pub fn watch_only(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        let nodes: std::collections::BTreeSet<NodeId> = nodes.into_iter().collect();
        self.watches.retain(|n, _| nodes.contains(n));
        for node in nodes {
            self.watches.entry(node).or_insert(Watch {
                last_heard: self.now,
                timeout: self.initial,
                suspected: false,
            });
        }
    }

    /// The timeout a node starts with.
    pub fn initial_timeout(&self) -> u64 {
        self.initial
    }

    /// How much a false suspicion adds to a node's timeout.
    pub fn increment(&self) -> u64 {
        self.increment
    }

    /// Records a message from `node`. Returns true if it was suspected and is trusted again.
    pub fn heard(&mut self, node: NodeId) -> bool {
        let now = self.now;
        let Some(w) = self.watches.get_mut(&node) else {
            return false;
        };
        w.last_heard = now;
        if w.suspected {
            w.suspected = false;
            w.timeout += self.increment;
            return true;
        }
        false
    }

    /// Suspects `node` at once: it is known to have failed (it restarted, or messages from it
    /// were lost).
    pub fn suspect(&mut self, node: NodeId) {
        if let Some(w) = self.watches.get_mut(&node) {
            if !w.suspected {
                self.suspicions += 1;
            }
            w.suspected = true;
            // Heard again only by a message after this moment.
            w.last_heard = self.now;
        }
    }

    /// Advances time by one tick; returns the nodes newly suspected.
    pub fn tick(&mut self) -> Vec<NodeId> {
        self.now += 1;
        let now = self.now;
        let mut newly = Vec::new();
        for (&node, w) in self.watches.iter_mut() {
            if !w.suspected && now.saturating_sub(w.last_heard) > w.timeout {
                w.suspected = true;
                newly.push(node);
            }
        }
        self.suspicions += newly.len() as u64;
        newly
    }

    /// Times a trusted node came to be suspected, since the detector started.
    pub fn suspicions(&self) -> u64 {
        self.suspicions
    }

    pub fn is_suspected(&self, node: NodeId) -> bool {
        self.watches.get(&node).is_some_and(|w| w.suspected)
    }

    /// The current timeout of `node`, in ticks.
    pub fn timeout(&self, node: NodeId) -> Option<u64> {
        self.watches.get(&node).map(|w| w.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_suspected() {
        let mut d = Detector::new([NodeId(2), NodeId(3)], 5, 3);
        for _ in 0..5 {
            assert!(d.tick().is_empty());
            d.heard(NodeId(3));
        }
        assert_eq!(d.tick(), vec![NodeId(2)]);
        assert!(d.is_suspected(NodeId(2)));
        assert!(!d.is_suspected(NodeId(3)));
        assert!(d.tick().is_empty(), "suspected once, reported once");
        assert_eq!(d.suspicions(), 1);
    }

    #[test]
    fn a_false_suspicion_is_withdrawn_and_the_timeout_grows() {
        let mut d = Detector::new([NodeId(2)], 5, 3);
        for _ in 0..6 {
            d.tick();
        }
        assert!(d.is_suspected(NodeId(2)));
        assert!(d.heard(NodeId(2)), "heard again: trusted again");
        assert!(!d.is_suspected(NodeId(2)));
        assert_eq!(d.timeout(NodeId(2)), Some(8));
        for _ in 0..8 {
            assert!(d.tick().is_empty(), "the grown timeout applies");
        }
        assert_eq!(d.tick(), vec![NodeId(2)]);
    }

    #[test]
    fn an_eventually_timely_node_stops_being_suspected() {
        // A node that answers every 20 ticks: false suspicions until the timeout passes 20.
        let mut d = Detector::new([NodeId(2)], 5, 4);
        let mut suspicions = 0;
        for t in 1..=1000u64 {
            suspicions += d.tick().len();
            if t % 20 == 0 {
                d.heard(NodeId(2));
            }
        }
        assert!(suspicions > 0 && suspicions <= 4, "{suspicions} suspicions");
        assert!(!d.is_suspected(NodeId(2)));
    }

    #[test]
    fn a_known_failure_is_suspected_at_once() {
        let mut d = Detector::new([NodeId(2)], 50, 10);
        d.suspect(NodeId(2));
        d.suspect(NodeId(2));
        assert!(d.is_suspected(NodeId(2)));
        assert_eq!(
            d.suspicions(),
            1,
            "suspected once, however often it is said"
        );
        assert!(d.heard(NodeId(2)));
    }
}
