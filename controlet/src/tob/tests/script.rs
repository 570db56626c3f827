//! Scenarios of the order as text scripts (`tob/tests/scripts/*.txt`), each a sequence of
//! blocks: commands, a line `---`, and what they print, up to a blank line. Lines starting
//! with `#` are comments. A run prints every message a node sends (`n1→n2 Broadcast ...`) and
//! every event it reports (`n1 deliver seq=1 op=7 from n1`) as they happen, and fails where the
//! output differs from the script's; `UPDATE_GOLDENFILES=1` writes the output into the script
//! instead, to be read and checked by eye.
//!
//! The commands, on nodes numbered from 1 over a network that holds every message until told:
//!
//! - `cluster N`: N nodes that formed their first view.
//! - `batch_bytes NODE BYTES`: the most bytes of operations in one broadcast of NODE.
//! - `propose NODE OP...`: buffers operations (numbers) at NODE; `flush NODE` broadcasts them.
//! - `deliver [from=N] [to=N]`: steps every message held (from N, to N), in the order sent.
//! - `ack NODE...`: pays the acks owed; `tick [NODE...] [count=K]`: ticks (every node, once).
//! - `stabilize`: delivers everything and pays every ack, until nothing more is sent.
//! - `partition NODE...`: cuts these nodes off the others (what crosses waits); `heal`.
//! - `status [NODE...]`: where each node stands.

use std::fmt::Write as _;
use std::path::Path;

use super::*;

/// Nodes, and the messages they sent that nobody has stepped yet.
#[derive(Default)]
struct Scenario {
    nodes: Vec<Tob<Op>>,
    /// Messages sent and not stepped yet, in the order sent.
    held: Vec<Envelope<Op>>,
    /// Per node: on the cut side of a partition.
    cut: Vec<bool>,
}

/// A command's arguments: positional words, and `key=value` pairs.
struct Args<'a> {
    words: Vec<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(line: &'a str) -> (&'a str, Args<'a>) {
        let mut parts = line.split_whitespace();
        let command = parts.next().unwrap_or("");
        let (pairs, words): (Vec<&str>, Vec<&str>) = parts.partition(|p| p.contains('='));
        let pairs = pairs.iter().filter_map(|p| p.split_once('=')).collect();
        (command, Args { words, pairs })
    }

    fn numbers(&self) -> Vec<u64> {
        let number = |w: &&str| w.parse().unwrap_or_else(|_| panic!("not a number: {w}"));
        self.words.iter().map(number).collect()
    }

    /// The nodes named (indexes), or every node of `n` if none is.
    fn nodes(&self, n: usize) -> Vec<usize> {
        let named: Vec<usize> = self.numbers().iter().map(|&id| id as usize - 1).collect();
        if named.is_empty() {
            (0..n).collect()
        } else {
            named
        }
    }

    fn pair(&self, key: &str) -> Option<u64> {
        let (_, value) = self.pairs.iter().find(|(k, _)| *k == key)?;
        Some(value.parse().unwrap_or_else(|_| panic!("{key}={value}")))
    }
}

impl Scenario {
    /// Runs one command line; what it printed.
    fn run(&mut self, line: &str) -> String {
        let (command, args) = Args::parse(line);
        let mut out = String::new();
        match command {
            "cluster" => {
                let n = args.numbers()[0] as u16;
                self.nodes = formed(n);
                self.cut = vec![false; n as usize];
                let view = format_view(self.nodes[0].view());
                writeln!(out, "{n} nodes serving in epoch 1 {view}").unwrap();
            }
            "batch_bytes" => {
                let [node, bytes] = args.numbers()[..] else {
                    panic!("batch_bytes NODE BYTES");
                };
                self.nodes[node as usize - 1].set_batch_bytes(bytes as usize);
            }
            "propose" => {
                let numbers = args.numbers();
                let node = &mut self.nodes[numbers[0] as usize - 1];
                for &op in &numbers[1..] {
                    node.propose(op);
                }
            }
            "flush" => {
                for i in args.nodes(self.nodes.len()) {
                    self.nodes[i].flush();
                }
            }
            "deliver" => {
                let (from, to) = (args.pair("from"), args.pair("to"));
                let picked = |env: &Envelope<Op>| {
                    from.is_none_or(|f| env.from.0 as u64 == f)
                        && to.is_none_or(|t| env.to.0 as u64 == t)
                };
                self.deliver(picked, &mut out);
            }
            "ack" => {
                for i in args.nodes(self.nodes.len()) {
                    self.nodes[i].ack();
                }
            }
            "tick" => {
                for _ in 0..args.pair("count").unwrap_or(1) {
                    for i in args.nodes(self.nodes.len()) {
                        self.nodes[i].tick();
                    }
                    self.collect(&mut out);
                }
            }
            "stabilize" => loop {
                self.deliver(|_| true, &mut out);
                for node in self.nodes.iter_mut() {
                    node.ack();
                }
                self.collect(&mut out);
                if self.held.iter().all(|e| self.crosses(e)) {
                    break;
                }
            },
            "partition" => {
                let cut = args.nodes(self.nodes.len());
                for (i, side) in self.cut.iter_mut().enumerate() {
                    *side = cut.contains(&i);
                }
            }
            "heal" => self.cut.iter_mut().for_each(|side| *side = false),
            "status" => {
                for i in args.nodes(self.nodes.len()) {
                    let t = &self.nodes[i];
                    writeln!(
                        out,
                        "n{}: {} in epoch {} {}, delivered {}, proposed {}, own bytes {}",
                        i + 1,
                        t.state().name(),
                        t.view().epoch,
                        format_view(t.view()),
                        t.delivered(),
                        t.proposed_len(),
                        t.own_bytes()
                    )
                    .unwrap();
                }
            }
            other => panic!("unknown command {other:?}"),
        }
        self.collect(&mut out);
        out
    }

    /// Whether a message waits for a partition to heal.
    fn crosses(&self, env: &Envelope<Op>) -> bool {
        self.cut[env.from.0 as usize - 1] != self.cut[env.to.0 as usize - 1]
    }

    /// Steps the messages held that `picked` picks and no partition holds, in the order sent;
    /// prints what each receiver says.
    fn deliver(&mut self, picked: impl Fn(&Envelope<Op>) -> bool, out: &mut String) {
        let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|env| picked(env) && !self.crosses(env));
        self.held = stay;
        for env in go {
            let to = env.to.0 as usize - 1;
            self.nodes[to].step(env.from, env.incarnation, env.message);
            self.collect(out);
        }
    }

    /// Takes what every node sent and reported, in node order: holds the messages and prints
    /// them, with the events.
    fn collect(&mut self, out: &mut String) {
        for node in self.nodes.iter_mut() {
            let id = node.id().0;
            for env in node.take_messages() {
                writeln!(out, "n{id}→n{} {}", env.to.0, format_message(&env.message)).unwrap();
                self.held.push(env);
            }
            for event in node.take_events() {
                writeln!(out, "n{id} {}", format_event(&event)).unwrap();
            }
        }
    }
}

fn format_view(view: &View) -> String {
    let members: Vec<String> = view
        .members
        .iter()
        .map(|(id, inc)| format!("n{}@{inc}", id.0))
        .collect();
    format!("[{}]", members.join(" "))
}

fn format_receipts(received: &[(NodeId, Ts)]) -> String {
    let receipts: Vec<String> = received
        .iter()
        .map(|(id, ts)| format!("n{}:{ts}", id.0))
        .collect();
    format!("[{}]", receipts.join(" "))
}

fn format_message(message: &Message<Op>) -> String {
    match message {
        Message::Broadcast {
            epoch,
            ts,
            received,
            ops,
        } => format!(
            "Broadcast epoch={epoch} ts={ts} received={} ops={ops:?}",
            format_receipts(received)
        ),
        Message::Ack {
            epoch,
            ts,
            received,
            synced,
        } => format!(
            "Ack epoch={epoch} ts={ts} received={}{}",
            format_receipts(received),
            if *synced { "" } else { " catching-up" }
        ),
        other => format!("{other:?}"),
    }
}

fn format_event(event: &Event<Op>) -> String {
    match event {
        Event::Deliver(d) => format!("deliver seq={} op={} from n{}", d.seq, d.op, d.origin.0),
        other => format!("{other:?}"),
    }
}

/// Runs the script `name` of `scripts/`, block by block, and compares what each block printed
/// with what the script says it prints.
fn run_script(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/tob/tests/scripts")
        .join(name);
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut scenario = Scenario::default();
    let mut written = String::new();
    let mut lines = script.lines().peekable();
    while let Some(line) = lines.next() {
        written.push_str(line);
        written.push('\n');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut printed = scenario.run(line);
        while let Some(&next) = lines.peek() {
            lines.next();
            written.push_str(next);
            written.push('\n');
            if next == "---" {
                break;
            }
            printed += &scenario.run(next);
        }
        // The expected output, which the actual one replaces.
        while lines.next_if(|l| !l.is_empty()).is_some() {}
        written += if printed.is_empty() { "ok\n" } else { &printed };
    }
    if std::env::var("UPDATE_GOLDENFILES").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &written).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        return;
    }
    if written != script {
        let at = written
            .lines()
            .zip(script.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(written.lines().count().min(script.lines().count()));
        let expected = script.lines().nth(at).unwrap_or("(the end)");
        let shown: Vec<&str> = written
            .lines()
            .skip(at.saturating_sub(3))
            .take(12)
            .collect();
        panic!(
            "{name}: the output differs from the script at line {}, which says\n{expected}\nIt prints:\n{}\n(UPDATE_GOLDENFILES=1 writes the output into the script)",
            at + 1,
            shown.join("\n")
        );
    }
}

/// A batch is delivered once every other member reported receiving it, and not before.
#[test]
fn nothing_is_delivered_until_every_member_reported_receipt() {
    run_script("receipts.txt");
}

/// An ack is owed after a burst of broadcasts and paid once, by `ack` or the next tick.
#[test]
fn ack_pays_what_is_owed_once_per_burst() {
    run_script("acks.txt");
}

/// A flush splits what was proposed into broadcasts of at most the batch bytes.
#[test]
fn a_flush_splits_proposals_into_broadcasts_bounded_in_bytes() {
    run_script("batches.txt");
}

/// Nothing is delivered while a member's receipts are held by a partition; all of it once it
/// heals.
#[test]
fn a_partition_holds_deliveries_until_it_heals() {
    run_script("partition.txt");
}
