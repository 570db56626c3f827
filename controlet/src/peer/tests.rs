use std::time::Duration;

use tokio::net::TcpListener;

use super::*;

async fn bound() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn messages_arrive_in_order_tagged_with_their_sender() {
    let shutdown = CancellationToken::new();
    let ((la, aa), (lb, ab)) = (bound().await, bound().await);
    let (a, mut a_in) = Transport::<(u32, String)>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    let (b, mut b_in) = Transport::<(u32, String)>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    for i in 0..2000 {
        a.send(NodeId(2), (i, format!("from a {i}"))).await;
        b.send(NodeId(1), (i, format!("from b {i}"))).await;
    }
    for i in 0..2000 {
        let got = b_in.recv().await.unwrap();
        let sent = Incoming::Message((i, format!("from a {i}")));
        assert_eq!(got, (NodeId(1), sent));
        let got = a_in.recv().await.unwrap();
        let sent = Incoming::Message((i, format!("from b {i}")));
        assert_eq!(got, (NodeId(2), sent));
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_sender_retries_until_its_peer_listens() {
    let shutdown = CancellationToken::new();
    let (la, aa) = bound().await;
    // Reserve an address for b, then close it: b is not listening yet.
    let (probe, ab) = bound().await;
    drop(probe);
    let (a, _a_in) = Transport::<u64>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    for i in 0..10 {
        a.send(NodeId(2), i).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let lb = TcpListener::bind(ab).await.unwrap();
    let (_b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    for i in 0..10 {
        let got = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
        assert_eq!(got.unwrap(), Some((NodeId(1), Incoming::Message(i))));
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_connection_that_does_not_say_hello_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let shutdown = CancellationToken::new();
    let (lb, ab) = bound().await;
    let (_b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[],
        LinkConfig::default(),
        shutdown.clone(),
    );
    let mut raw = TcpStream::connect(ab).await.unwrap();
    let frame = encode(&Frame::Message {
        n: 1,
        message: 7u64,
    });
    raw.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&frame).await.unwrap();
    let got = tokio::time::timeout(Duration::from_millis(200), b_in.recv()).await;
    assert!(
        got.is_err(),
        "a message from an unnamed sender was accepted: {got:?}"
    );
    shutdown.cancel();
}

#[test]
fn numbering_drops_duplicates_and_reports_gaps() {
    let expected = Expected::default();
    let a = NodeId(1);
    assert!(matches!(admit(&expected, a, 10, 1), Admit::Next));
    assert!(matches!(admit(&expected, a, 10, 2), Admit::Next));
    // A message resent after a reconnection.
    assert!(matches!(admit(&expected, a, 10, 2), Admit::Duplicate));
    // Messages 3 and 4 never arrived.
    assert!(matches!(admit(&expected, a, 10, 5), Admit::AfterGap));
    assert!(matches!(admit(&expected, a, 10, 6), Admit::Next));
    // A restarted sender numbers from 1 again.
    assert!(matches!(admit(&expected, a, 11, 1), Admit::Next));
    // Senders are counted apart.
    assert!(matches!(admit(&expected, NodeId(2), 3, 1), Admit::Next));
}

#[tokio::test]
async fn outbound_links_are_bound_to_the_peer_address_ip() {
    let shutdown = CancellationToken::new();
    let la = TcpListener::bind("127.0.0.21:0").await.unwrap();
    let target = std::net::TcpListener::bind("127.0.0.22:0").unwrap();
    let ab = target.local_addr().unwrap();
    let (a, _a_in) = Transport::<u64>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    a.send(NodeId(2), 1).await;
    let (_conn, from) = tokio::task::spawn_blocking(move || target.accept().unwrap())
        .await
        .unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.21");
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_too_large_for_a_frame_is_skipped_and_seen_as_a_gap() {
    let shutdown = CancellationToken::new();
    let ((la, aa), (lb, ab)) = (bound().await, bound().await);
    let small = LinkConfig {
        cluster: 9,
        max_frame_bytes: 1024,
        ..LinkConfig::default()
    };
    let (a, _a_in) = Transport::<Vec<u8>>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        small.clone(),
        shutdown.clone(),
    );
    let (_b, mut b_in) = Transport::<Vec<u8>>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        small,
        shutdown.clone(),
    );
    a.send(NodeId(2), vec![1; 10]).await;
    a.send(NodeId(2), vec![2; 4096]).await;
    a.send(NodeId(2), vec![3; 10]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let next = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
        got.push(
            next.expect("the link goes on after the large message")
                .unwrap()
                .1,
        );
    }
    assert_eq!(
        got,
        vec![
            Incoming::Message(vec![1; 10]),
            Incoming::Gap,
            Incoming::Message(vec![3; 10]),
        ]
    );
    shutdown.cancel();
}

/// Sends `frames` on a raw connection to `to`, each length-prefixed.
async fn send_raw(to: SocketAddr, frames: &[Bytes]) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut raw = TcpStream::connect(to).await.unwrap();
    for frame in frames {
        raw.write_all(&(frame.len() as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(frame).await.unwrap();
    }
    raw
}

#[tokio::test]
async fn strangers_on_the_peer_port_do_not_disturb_a_peers_numbering() {
    let shutdown = CancellationToken::new();
    let ((la, aa), (lb, ab)) = (bound().await, bound().await);
    let config = LinkConfig {
        cluster: 77,
        max_frame_bytes: MAX_FRAME_BYTES,
        ..LinkConfig::default()
    };
    let session = new_session();
    let (a, _a_in) = Transport::<u64>::start(
        NodeId(1),
        session,
        la,
        &[(NodeId(2), ab)],
        config.clone(),
        shutdown.clone(),
    );
    let (_b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        config,
        shutdown.clone(),
    );
    a.send(NodeId(2), 1).await;
    let first = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
    assert_eq!(first.unwrap(), Some((NodeId(1), Incoming::Message(1))));
    let hello = |from: u16, session: u64, cluster: u64| {
        encode(&Frame::<u64>::Hello {
            from: NodeId(from),
            session,
            cluster,
            proof: None,
        })
    };
    let message = |n: u64| encode(&Frame::Message { n, message: 666u64 });
    let strangers = [
        // Garbage.
        vec![Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")],
        // Another cluster's node 1, newer run.
        vec![hello(1, session + 1, 78), message(5)],
        // An older run of node 1.
        vec![hello(1, session - 1, 77), message(5)],
    ];
    let mut held = Vec::new();
    for frames in &strangers {
        held.push(send_raw(ab, frames).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Node 1's own messages still arrive in order, with no gap and nothing of the strangers.
    a.send(NodeId(2), 2).await;
    let next = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
    assert_eq!(next.unwrap(), Some((NodeId(1), Incoming::Message(2))));
    let more = tokio::time::timeout(Duration::from_millis(200), b_in.recv()).await;
    assert!(more.is_err(), "a stranger was heard: {more:?}");
    // A node of the cluster that is not a peer yet (one asking to join) is heard as itself,
    // never as node 1, and node 1's numbering goes on undisturbed.
    held.push(send_raw(ab, &[hello(9, session + 1, 77), message(5)]).await);
    for expected in [Incoming::Gap, Incoming::Message(666)] {
        let joiner = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
        assert_eq!(joiner.unwrap(), Some((NodeId(9), expected)));
    }
    a.send(NodeId(2), 3).await;
    let next = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
    assert_eq!(next.unwrap(), Some((NodeId(1), Incoming::Message(3))));
    drop(held);
    shutdown.cancel();
}

#[tokio::test]
async fn a_message_dropped_for_a_peer_shows_as_a_gap_in_its_place() {
    let shutdown = CancellationToken::new();
    let (la, aa) = bound().await;
    // Reserve an address for b, then close it: b is not listening, so a's queue fills.
    let (probe, ab) = bound().await;
    drop(probe);
    let (a, _a_in) = Transport::<u64>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    assert_eq!(a.try_send(NodeId(2), 1), Ok(()));
    assert_eq!(a.try_send(NodeId(2), 2), Ok(()));
    // Dropped instead of sent: 3, and then 4 and 5 in one run.
    a.dropped(NodeId(2));
    assert_eq!(a.try_send(NodeId(2), 6), Ok(()));
    a.dropped(NodeId(2));
    a.dropped(NodeId(2));
    assert_eq!(a.try_send(NodeId(2), 7), Ok(()));
    let lb = TcpListener::bind(ab).await.unwrap();
    let (_b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    let mut got = Vec::new();
    for _ in 0..6 {
        let next = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
        got.push(next.unwrap().unwrap().1);
    }
    assert_eq!(
        got,
        vec![
            Incoming::Message(1),
            Incoming::Message(2),
            Incoming::Gap,
            Incoming::Message(6),
            Incoming::Gap,
            Incoming::Message(7),
        ]
    );
    shutdown.cancel();
}

#[test]
fn drops_are_counted_where_they_fall_among_queued_messages() {
    let drops = Drops::default();
    assert!(drops.queue(|| true)); // 1st queued
    drops.drop_one();
    drops.drop_one();
    assert!(drops.queue(|| true)); // 2nd
    assert!(!drops.queue(|| false)); // not queued: no place taken
    drops.drop_one();
    assert_eq!(drops.before(1), 0);
    assert_eq!(drops.before(2), 2);
    assert_eq!(
        drops.before(3),
        1,
        "the drop after the 2nd comes before a 3rd"
    );
    assert_eq!(drops.before(4), 0);
}

/// A peer's queue holds bytes, not a count of messages: with the peer unreachable, a few
/// large messages fill it where many small ones fit, and a message larger than the whole
/// queue still passes once the queue is empty.
#[tokio::test]
async fn a_peers_queue_is_bounded_in_bytes() {
    let shutdown = CancellationToken::new();
    let (la, _) = bound().await;
    // Nobody listens there: nothing leaves the queue.
    let (gone, gone_addr) = bound().await;
    drop(gone);
    let config = LinkConfig {
        queue_bytes: 1 << 20,
        ..LinkConfig::default()
    };
    let start = |listener| {
        Transport::<Bytes>::start(
            NodeId(1),
            1,
            listener,
            &[(NodeId(2), gone_addr)],
            config.clone(),
            shutdown.clone(),
        )
    };
    let (a, _a_in) = start(la);
    let large = Bytes::from(vec![7u8; 100 << 10]);
    let mut taken = 0;
    while a.try_send(NodeId(2), large.clone()).is_ok() {
        taken += 1;
        assert!(taken <= 10, "more than 1 MiB of 100 KiB messages queued");
    }
    assert_eq!(taken, 10, "1 MiB holds ten messages of 100 KiB");

    let (lb, _) = bound().await;
    let (b, _b_in) = start(lb);
    let small = Bytes::from_static(b"x");
    let mut small_taken = 0;
    while b.try_send(NodeId(2), small.clone()).is_ok() {
        small_taken += 1;
    }
    assert!(
        small_taken > 10_000,
        "small messages: only {small_taken} fit"
    );

    let (lc, _) = bound().await;
    let (c, _c_in) = start(lc);
    let huge = Bytes::from(vec![1u8; 4 << 20]);
    assert!(
        c.try_send(NodeId(2), huge.clone()).is_ok(),
        "alone, it passes"
    );
    assert!(c.try_send(NodeId(2), small).is_err(), "it fills the queue");
    shutdown.cancel();
}

/// The inbox holds bytes too: when the protocol stops taking messages, the readers stop
/// reading once the inbox is full, TCP pushes back, and the sender waits, rather than
/// received messages piling up without bound.
#[tokio::test]
async fn a_full_inbox_pushes_back_to_the_sender() {
    let shutdown = CancellationToken::new();
    let ((la, aa), (lb, ab)) = (bound().await, bound().await);
    let config = LinkConfig {
        queue_bytes: 1 << 20,
        inbox_bytes: 1 << 20,
        ..LinkConfig::default()
    };
    let peers = [(NodeId(2), ab)];
    let (a, _a_in) =
        Transport::<Bytes>::start(NodeId(1), 1, la, &peers, config.clone(), shutdown.clone());
    let peers = [(NodeId(1), aa)];
    let (_b, b_in) = Transport::<Bytes>::start(NodeId(2), 2, lb, &peers, config, shutdown.clone());
    // 64 MiB: more than the inbox, the queue and the kernel's buffers hold together.
    let sender = tokio::spawn(async move {
        let message = Bytes::from(vec![3u8; 64 << 10]);
        for _ in 0..1024 {
            a.send(NodeId(2), message.clone()).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "the sender never had to wait");
    let held = b_in.queue.len();
    assert!(
        (1..=16).contains(&held),
        "the inbox holds {held} messages of 64 KiB, past its 1 MiB"
    );
    sender.abort();
    shutdown.cancel();
}

/// A CA and nodes' TLS, for the tests of mutual TLS.
struct TestCa {
    certs: tls::Certs,
    ca: String,
}

impl TestCa {
    fn new() -> Self {
        let certs = tls::Certs::new_ca().unwrap();
        let ca = certs.ca_cert_pem().unwrap();
        TestCa { certs, ca }
    }

    /// TLS with a certificate for node `cert_for` (a transport may use it under another id:
    /// an impostor).
    fn tls(&self, cert_for: u16) -> Arc<tls::PeerTls> {
        let (cert, key) = self.certs.node(NodeId(cert_for)).unwrap();
        tls::PeerTls::from_pem(
            NodeId(cert_for),
            cert.as_bytes(),
            key.as_bytes(),
            self.ca.as_bytes(),
        )
        .unwrap()
    }
}

fn tls_config(tls: Arc<tls::PeerTls>) -> LinkConfig {
    LinkConfig {
        cluster: 77,
        tls: Some(tls),
        ..LinkConfig::default()
    }
}

#[tokio::test]
async fn members_with_certificates_from_the_cluster_ca_talk_over_tls() {
    let ca = TestCa::new();
    members_talk_and_a_joiner_is_heard(|node| tls_config(ca.tls(node)), 500).await;
}

/// Nodes 1 and 2, each with the link configuration `config` gives it, exchange `n` messages
/// each way, in order; then node 3, a member of neither's list, is heard asking to join.
async fn members_talk_and_a_joiner_is_heard(config: impl Fn(u16) -> LinkConfig, n: u32) {
    let shutdown = CancellationToken::new();
    let ((la, aa), (lb, ab)) = (bound().await, bound().await);
    let (a, mut a_in) = Transport::<(u32, String)>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        config(1),
        shutdown.clone(),
    );
    let (b, mut b_in) = Transport::<(u32, String)>::start(
        NodeId(2),
        2,
        lb,
        &[(NodeId(1), aa)],
        config(2),
        shutdown.clone(),
    );
    for i in 0..n {
        a.send(NodeId(2), (i, format!("from a {i}"))).await;
        b.send(NodeId(1), (i, format!("from b {i}"))).await;
    }
    for i in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(10), b_in.recv()).await;
        assert_eq!(
            got.unwrap().unwrap(),
            (NodeId(1), Incoming::Message((i, format!("from a {i}"))))
        );
        let got = tokio::time::timeout(Duration::from_secs(10), a_in.recv()).await;
        assert_eq!(
            got.unwrap().unwrap(),
            (NodeId(2), Incoming::Message((i, format!("from b {i}"))))
        );
    }
    assert!(a.is_up(NodeId(2)) && b.is_up(NodeId(1)));
    assert_eq!((a.refused(), b.refused()), (0, 0));
    // A node asking to join, known to the member only by address, is heard too.
    let (lc, _) = bound().await;
    let (c, _c_in) =
        Transport::<(u32, String)>::start(NodeId(3), 3, lc, &[], config(3), shutdown.clone());
    c.send_once(ab, 5, 1, &(9, "let me in".to_string()))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), b_in.recv()).await;
    assert_eq!(
        got.unwrap().unwrap(),
        (NodeId(3), Incoming::Message((9, "let me in".to_string())))
    );
    shutdown.cancel();
}

/// With TLS on, nothing reaches the protocol from a connection without a certificate of the
/// cluster's CA, nor from a member's certificate whose hello names another node; and a writer
/// sends nothing to a listener that cannot prove it is the peer it wants.
#[tokio::test]
async fn only_certified_members_are_heard_each_as_the_node_its_certificate_names() {
    let shutdown = CancellationToken::new();
    let ca = TestCa::new();
    let (lb, ab) = bound().await;
    let (_b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[],
        tls_config(ca.tls(2)),
        shutdown.clone(),
    );
    let nothing = |b_in: &mut Inbox<u64>| {
        let got = b_in.try_recv();
        assert!(got.is_none(), "a stranger was heard: {got:?}");
    };
    let hello = |from: u16| {
        encode(&Frame::<u64>::Hello {
            from: NodeId(from),
            session: new_session(),
            cluster: 77,
            proof: None,
        })
    };
    let message = encode(&Frame::Message {
        n: 1,
        message: 666u64,
    });

    // 1. The right protocol in the clear: no TLS handshake, so nothing is read.
    let plain = send_raw(ab, &[hello(1), message.clone()]).await;
    // 2. TLS with a certificate from another CA, as node 1.
    let other = TestCa::new();
    let (la, _) = bound().await;
    let (stranger, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        tls_config(other.tls(1)),
        shutdown.clone(),
    );
    stranger.send(NodeId(2), 666).await;
    // 3. A member's certificate (node 3's), claiming to be node 1.
    let (lc, _) = bound().await;
    let (impostor, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        lc,
        &[(NodeId(2), ab)],
        tls_config(ca.tls(3)),
        shutdown.clone(),
    );
    impostor.send(NodeId(2), 666).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nothing(&mut b_in);
    assert!(!stranger.is_up(NodeId(2)), "another CA's node got a link");
    drop(plain);

    // 4. A writer that wants node 2 at an address where node 3 listens sends nothing.
    let (l3, a3) = bound().await;
    let (_three, mut three_in) = Transport::<u64>::start(
        NodeId(3),
        3,
        l3,
        &[],
        tls_config(ca.tls(3)),
        shutdown.clone(),
    );
    let (l1, _) = bound().await;
    let (one, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        l1,
        &[(NodeId(2), a3)],
        tls_config(ca.tls(1)),
        shutdown.clone(),
    );
    one.send(NodeId(2), 5).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = three_in.try_recv();
    assert!(
        got.is_none(),
        "sent to a node other than the one named: {got:?}"
    );
    assert!(!one.is_up(NodeId(2)));
    shutdown.cancel();
}

/// A stranger holding many silent connections from its address is refused past
/// `UNHEARD_PER_IP` of them, and a member connecting from its own address is still heard;
/// once the stranger's connections close, its address may connect again.
#[tokio::test]
async fn silent_connections_from_one_address_do_not_lock_members_out() {
    let shutdown = CancellationToken::new();
    let (lb, ab) = bound().await;
    let (b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[],
        LinkConfig::default(),
        shutdown.clone(),
    );
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(ab).await.unwrap());
    }
    // A member on 127.0.0.3: its outbound links are bound to its listener's address.
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let (a, _a_in) = Transport::<u64>::start(
        NodeId(1),
        1,
        listener,
        &[(NodeId(2), ab)],
        LinkConfig::default(),
        shutdown.clone(),
    );
    a.send(NodeId(2), 7).await;
    let got = tokio::time::timeout(Duration::from_secs(5), b_in.recv()).await;
    assert_eq!(got.unwrap(), Some((NodeId(1), Incoming::Message(7))));
    assert!(
        b.refused() >= (100 - UNHEARD_PER_IP) as u64,
        "only {} refused",
        b.refused()
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = b.refused();
    let again: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..UNHEARD_PER_IP {
            v.push(TcpStream::connect(ab).await.unwrap());
        }
        v
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.refused(), refused, "the address's count went back down");
    drop(again);
    shutdown.cancel();
}

fn secret_config(secret: &[u8]) -> LinkConfig {
    LinkConfig {
        cluster: 77,
        secret: Some(Arc::new(secret::PeerSecret::new(secret).unwrap())),
        ..LinkConfig::default()
    }
}

const SECRET: &[u8] = b"the cluster's own secret, 32+ B\n";

#[tokio::test]
async fn members_sharing_a_secret_talk_and_a_joining_node_is_heard() {
    members_talk_and_a_joiner_is_heard(|_| secret_config(SECRET), 200).await;
}

/// With a shared secret, nothing reaches the protocol from a node without it, with another
/// secret, or replaying a proof made for another challenge; and a writer sends nothing to a
/// listener that cannot prove it holds the secret.
#[tokio::test]
async fn only_holders_of_the_secret_are_heard_and_spoken_to() {
    use tokio::io::AsyncReadExt;
    let shutdown = CancellationToken::new();
    let (lb, ab) = bound().await;
    let (b, mut b_in) = Transport::<u64>::start(
        NodeId(2),
        2,
        lb,
        &[],
        secret_config(SECRET),
        shutdown.clone(),
    );
    // 1. A transport without the secret, and one with another.
    let (la, _) = bound().await;
    let (plain, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        la,
        &[(NodeId(2), ab)],
        LinkConfig {
            cluster: 77,
            ..LinkConfig::default()
        },
        shutdown.clone(),
    );
    plain.send(NodeId(2), 666).await;
    let (lc, _) = bound().await;
    let (other, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        lc,
        &[(NodeId(2), ab)],
        secret_config(b"another secret, just as long!!"),
        shutdown.clone(),
    );
    other.send(NodeId(2), 666).await;
    // 2. A proof that was right for another challenge (a replayed hello).
    let secret = secret::PeerSecret::new(SECRET).unwrap();
    let session = new_session();
    let old = secret.prove_hello(
        &secret::PeerSecret::random(),
        secret::PeerSecret::random(),
        (NodeId(1), session, 77),
    );
    let replayed = encode(&Frame::<u64>::Hello {
        from: NodeId(1),
        session,
        cluster: 77,
        proof: Some(old),
    });
    let mut raw = send_raw(
        ab,
        &[
            replayed,
            encode(&Frame::Message {
                n: 1,
                message: 666u64,
            }),
        ],
    )
    .await;
    // The member sent its challenge, then closed the connection.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the member kept the replaying connection open"
    );
    let challenge: secret::Answer = postcard::from_bytes(&got[4..]).unwrap();
    assert!(
        matches!(challenge, secret::Answer::Challenge(_)),
        "{challenge:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let heard = b_in.try_recv();
    assert!(heard.is_none(), "a stranger was heard: {heard:?}");
    // (A transport without a secret cannot tell it is refused until the member closes the
    // connection; one with a secret waits for a welcome that never comes.)
    assert!(
        !other.is_up(NodeId(2)),
        "a link up without the right secret"
    );
    drop(plain);
    assert!(b.refused() >= 3, "only {} refused", b.refused());

    // 3. A writer with the secret, at an address where a node with another secret listens.
    let (l3, a3) = bound().await;
    let (_three, mut three_in) = Transport::<u64>::start(
        NodeId(3),
        3,
        l3,
        &[],
        secret_config(b"another secret, just as long!!"),
        shutdown.clone(),
    );
    let (l1, _) = bound().await;
    let (one, _) = Transport::<u64>::start(
        NodeId(1),
        1,
        l1,
        &[(NodeId(2), a3)],
        secret_config(SECRET),
        shutdown.clone(),
    );
    one.send(NodeId(2), 5).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = three_in.try_recv();
    assert!(got.is_none(), "heard without the secret: {got:?}");
    assert!(
        !one.is_up(NodeId(2)),
        "a link up to a listener without the secret"
    );
    shutdown.cancel();
}
