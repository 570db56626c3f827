//! The causal core by hand: dependencies hold writes back, streams resend and refill.

use bytes::Bytes;
use tailorkv_common::{Expiry, Version};
use tailorkv_datalet::Marks;

use super::*;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn item(key: &str, ts: u64, node: NodeId) -> Update {
    Update::Item {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        flags: 0,
        expiry: Expiry::Never,
        version: Version::new(ts, node),
        marks: Marks::default(),
    }
}

fn origin(node: NodeId) -> Origin {
    Origin { node, run: 7 }
}

fn node(me: NodeId, skip: bool) -> Causal {
    let peers: Vec<NodeId> = [A, B, C].into_iter().filter(|&n| n != me).collect();
    Causal::new(origin(me), &peers, skip, false)
}

/// Changes `n`'s stream to `peer` by hand, as time passing would.
fn with_stream(n: &Causal, peer: NodeId, change: impl FnOnce(&mut Stream)) {
    change(n.state.lock().unwrap().streams.get_mut(&peer).unwrap());
}

/// A local write on `n`, done at once; the write as its stream carries it.
async fn write(n: &Causal, key: &str, ts: u64) -> Write {
    let ticket = n.begin().await;
    n.end(ticket, Some(item(key, ts, n.me.node)));
    match n.next_for(NodeId(99), 1, usize::MAX) {
        Next::Nothing => {}
        other => panic!("no stream to an unknown peer: {other:?}"),
    }
    let s = n.state.lock().unwrap();
    s.log.values().last().unwrap().clone()
}

/// Applies everything ready on `n`; the origins and numbers made visible, in order.
fn show(n: &Causal) -> Vec<(NodeId, u64)> {
    let mut shown = Vec::new();
    while let Some((o, w)) = n.next_ready() {
        n.applied(o, w.seq);
        shown.push((o.node, w.seq));
    }
    shown
}

#[tokio::test]
async fn a_write_waits_for_what_it_depends_on() {
    let (a, b, c) = (node(A, false), node(B, false), node(C, false));
    // A writes x; B sees it, then writes y, which depends on it.
    let wx = write(&a, "x", 10).await;
    b.receive(A, 7, vec![wx.clone()]);
    assert_eq!(show(&b), vec![(A, 1)]);
    let wy = write(&b, "y", 11).await;
    assert_eq!(wy.deps.get(origin(A)), 1, "y depends on x");
    // C hears y first: it waits, and goes once x is visible.
    c.receive(B, 7, vec![wy]);
    assert_eq!(show(&c), vec![]);
    assert!(!c.visible().covers(&b.visible()));
    c.receive(A, 7, vec![wx]);
    assert_eq!(show(&c), vec![(A, 1), (B, 1)]);
    assert_eq!(c.visible(), b.visible());
}

#[tokio::test]
async fn the_planted_bug_shows_a_write_before_its_dependency() {
    let (a, b, c) = (node(A, false), node(B, false), node(C, true));
    let wx = write(&a, "x", 10).await;
    b.receive(A, 7, vec![wx]);
    show(&b);
    let wy = write(&b, "y", 11).await;
    c.receive(B, 7, vec![wy]);
    assert_eq!(show(&c), vec![(B, 1)], "shown without x");
}

#[tokio::test]
async fn a_stream_is_taken_in_order_once_and_gaps_wait() {
    let (a, b) = (node(A, false), node(B, false));
    let w1 = write(&a, "k", 10).await;
    let w2 = write(&a, "k", 11).await;
    let w3 = write(&a, "k", 12).await;
    b.receive(A, 7, vec![w3.clone(), w2.clone()]);
    assert_eq!(show(&b), vec![], "write 1 is missing");
    b.receive(A, 7, vec![w1.clone(), w2, w3]);
    assert_eq!(show(&b), vec![(A, 1), (A, 2), (A, 3)]);
    b.receive(A, 7, vec![w1]);
    assert_eq!(show(&b), vec![], "a resent write is not shown twice");
}

#[tokio::test]
async fn a_local_write_in_flight_holds_back_the_ones_after_it() {
    let a = node(A, false);
    let first = a.begin().await;
    let second = a.begin().await;
    a.end(second, Some(item("y", 11, A)));
    assert_eq!(
        a.visible().get(origin(A)),
        0,
        "write 2 is done, write 1 is not"
    );
    assert_eq!(
        a.context().get(origin(A)),
        2,
        "both count for what clients may see"
    );
    // Nothing to send yet: the stream goes in order.
    a.ack(B, 5, 0, 0, false);
    a.state.lock().unwrap().streams.get_mut(&B).unwrap().refill = false;
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Nothing);
    a.end(first, None);
    assert_eq!(a.visible().get(origin(A)), 2);
    match a.next_for(B, 10, usize::MAX) {
        Next::Send(writes) => {
            let seqs: Vec<u64> = writes.iter().map(|w| w.seq).collect();
            assert_eq!(seqs, vec![1, 2]);
            assert!(
                writes[0].update.is_none(),
                "a write that changed nothing keeps its number"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_new_run_gets_a_refill_and_the_stream_goes_on_after_it() {
    let a = node(A, false);
    for i in 0..3 {
        write(&a, "k", 10 + i).await;
    }
    // B's run is first heard: it is sent the whole state, then the stream after it.
    a.ack(B, 5, 0, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    a.refill_sent(B, 3, 0);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Nothing);
    write(&a, "k", 20).await;
    match a.next_for(B, 10, usize::MAX) {
        Next::Send(w) => assert_eq!(w.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![4]),
        other => panic!("{other:?}"),
    }
    a.sent(B, 4);
    // B restarts: a new run, a new refill.
    a.ack(B, 6, 0, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    // A late acknowledgement from the old run changes nothing.
    a.ack(B, 5, 7, 4, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
}

#[tokio::test]
async fn the_log_keeps_what_a_peer_has_not_acknowledged_and_resends_it() {
    let a = node(A, false);
    for peer in [B, C] {
        a.ack(peer, 5, 7, 0, false);
        a.refill_sent(peer, 0, 0);
        a.ack(peer, 5, 7, 0, false);
    }
    for i in 0..5 {
        write(&a, "k", 10 + i).await;
    }
    for peer in [B, C] {
        match a.next_for(peer, 10, usize::MAX) {
            Next::Send(w) => a.sent(peer, w.last().unwrap().seq),
            other => panic!("{other:?}"),
        }
    }
    a.ack(B, 5, 7, 5, false);
    assert_eq!(a.stats().log, 5, "C has not acknowledged");
    a.ack(C, 5, 7, 2, false);
    assert_eq!(a.stats().log, 3, "both have 1 and 2");
    // C lost what came after 2: it asks again.
    a.ack(C, 5, 7, 2, true);
    match a.next_for(C, 10, usize::MAX) {
        Next::Send(w) => assert_eq!(w.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![3, 4, 5]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_merged_refill_covers_its_context_and_releases_waiting_writes() {
    let (a, b, c) = (node(A, false), node(B, false), node(C, false));
    let wx = write(&a, "x", 10).await;
    b.receive(A, 7, vec![wx]);
    show(&b);
    let wy = write(&b, "y", 11).await;
    c.receive(B, 7, vec![wy]);
    assert_eq!(show(&c), vec![]);
    // C gets a refill from A covering x instead of A's stream.
    assert!(c.refill_part(A, vec![], true, false).is_none());
    let all = c
        .refill_part(A, vec![item("x", 10, A)], false, true)
        .unwrap();
    assert_eq!(all.len(), 1);
    c.merged(A, 7, &a.visible());
    assert_eq!(show(&c), vec![(B, 1)]);
    // A part whose start was lost is not taken.
    assert!(c.refill_part(B, vec![], false, true).is_none());
}

#[test]
fn tokens_round_trip_and_bad_ones_are_refused() {
    let mut context = Context::default();
    assert_eq!(
        Context::from_token(context.to_token().as_bytes()),
        Some(context.clone())
    );
    context.raise(
        Origin {
            node: A,
            run: 0x18ee9,
        },
        42,
    );
    context.raise(Origin { node: C, run: 1 }, 7);
    let token = context.to_token();
    assert_eq!(token, "1.18ee9.42,3.1.7");
    assert_eq!(Context::from_token(token.as_bytes()), Some(context));
    for bad in [
        "",
        "1.2",
        "1.2.3.4",
        "x.1.1",
        "1.zz.1",
        "1.1.-1",
        "70000.1.1",
    ] {
        assert_eq!(Context::from_token(bad.as_bytes()), None, "{bad:?}");
    }
    let long: Vec<String> = (0..=TOKEN_ENTRIES).map(|i| format!("1.{i:x}.1")).collect();
    assert_eq!(Context::from_token(long.join(",").as_bytes()), None);
}

#[tokio::test]
async fn reach_waits_for_the_context_and_gives_up_in_time() {
    let (a, b) = (node(A, false), std::sync::Arc::new(node(B, false)));
    let wx = write(&a, "x", 10).await;
    let want = a.visible();
    assert!(!b.reach(&want, Duration::from_millis(20)).await);
    let waiter = {
        let b = std::sync::Arc::clone(&b);
        let want = want.clone();
        tokio::spawn(async move { b.reach(&want, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.receive(A, 7, vec![wx]);
    show(&b);
    assert!(waiter.await.unwrap());
}

#[tokio::test]
async fn a_store_kept_from_before_is_the_first_write_and_only_a_refill_carries_it() {
    let peers = [B, C];
    let a = Causal::new(origin(A), &peers, false, true);
    assert_eq!(a.visible().get(origin(A)), 1);
    // Every peer needs it, even before it is heard from.
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    let kept = a.visible();
    let w = write(&a, "k", 10).await;
    assert_eq!(w.seq, 2);
    // A peer's write made after merging a refill of it depends on it.
    let b = node(B, false);
    b.merged(A, 7, &kept);
    let wb = write(&b, "j", 11).await;
    assert_eq!(wb.deps.get(origin(A)), 1);
}

#[tokio::test]
async fn a_merged_refill_lets_the_stream_resend_again() {
    let a = node(A, false);
    a.ack(B, 5, 7, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    a.refill_sent(B, 0, 0);
    // B merged it: its acknowledgement shows nothing new of the stream, yet the refill is
    // done, and a loss it reports is resent at once.
    a.ack(B, 5, 7, 0, false);
    write(&a, "k", 10).await;
    match a.next_for(B, 10, usize::MAX) {
        Next::Send(w) => a.sent(B, w.last().unwrap().seq),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Nothing);
    a.ack(B, 5, 7, 0, true);
    match a.next_for(B, 10, usize::MAX) {
        Next::Send(w) => assert_eq!(w[0].seq, 1),
        other => panic!("resend after a reported loss: {other:?}"),
    }
}

#[tokio::test]
async fn a_refill_with_parts_lost_between_is_not_merged() {
    let c = node(C, false);
    assert!(c
        .refill_part(A, vec![item("x", 1, A)], true, false)
        .is_none());
    // Messages from A were lost (a gap): the parts so far are dropped, and the rest of
    // this refill is not taken on its own.
    c.lost(A);
    assert!(c
        .refill_part(A, vec![item("y", 2, A)], false, true)
        .is_none());
    // Sent again whole, it is merged whole.
    assert!(c
        .refill_part(A, vec![item("x", 1, A)], true, false)
        .is_none());
    let all = c
        .refill_part(A, vec![item("y", 2, A)], false, true)
        .unwrap();
    assert_eq!(all.len(), 2);
}

#[tokio::test]
async fn a_refill_that_could_not_be_sent_waits_before_the_next_try() {
    let a = node(A, false);
    a.ack(B, 5, 7, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    a.refill_failed(B);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Nothing);
    with_stream(&a, B, |s| {
        s.refill_after = Some(Instant::now() - Duration::from_millis(1))
    });
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
}

#[tokio::test]
async fn a_peer_that_acknowledges_yet_takes_nothing_gets_a_refill() {
    let a = node(A, false);
    a.ack(B, 5, 7, 0, false);
    a.refill_sent(B, 0, 0);
    a.ack(B, 5, 7, 0, false);
    write(&a, "k", 10).await;
    match a.next_for(B, 10, usize::MAX) {
        Next::Send(w) => a.sent(B, w.last().unwrap().seq),
        other => panic!("{other:?}"),
    }
    // B keeps acknowledging, but not write 1 (it waits for a dependency it cannot get).
    with_stream(&a, B, |s| {
        s.acked_at = Instant::now() - STALLED - Duration::from_millis(1)
    });
    a.ack(B, 5, 7, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
}

#[tokio::test]
async fn past_the_pending_bound_the_next_write_of_an_origin_is_still_taken() {
    let (a, b) = (node(A, false), node(B, false));
    let w1 = write(&a, "k", 10).await;
    b.state.lock().unwrap().pending_bytes = PENDING_BYTES;
    b.receive(A, 7, vec![w1]);
    assert_eq!(show(&b), vec![(A, 1)]);
}

#[tokio::test]
async fn an_unacknowledged_refill_is_sent_again_after_a_wait_that_grows_with_its_size() {
    let a = node(A, false);
    a.ack(B, 5, 7, 0, false);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
    let bytes = 4 * REFILL_RETRY_RATE; // four seconds more than an empty one
    let sent = Instant::now();
    a.refill_sent(B, 0, bytes);
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Nothing);
    let retry_at = |a: &Causal| {
        a.state.lock().unwrap().streams[&B]
            .refill_sent
            .expect("a refill in flight")
            .1
    };
    let wait = retry_at(&a) - sent;
    assert!(
        wait >= REFILL_RETRY + Duration::from_secs(4)
            && wait < REFILL_RETRY + Duration::from_secs(5),
        "{wait:?}"
    );
    // Lost on the way (no acknowledgement covers it): once the wait is over, sent again.
    with_stream(&a, B, |s| {
        s.refill_sent = Some((0, Instant::now() - Duration::from_millis(1)))
    });
    assert_eq!(a.next_for(B, 10, usize::MAX), Next::Refill);
}
