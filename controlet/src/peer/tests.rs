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
    let (a, mut a_in) =
        Transport::<(u32, String)>::start(NodeId(1), 1, la, &[(NodeId(2), ab)], shutdown.clone());
    let (b, mut b_in) =
        Transport::<(u32, String)>::start(NodeId(2), 2, lb, &[(NodeId(1), aa)], shutdown.clone());
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
    let (la, _) = bound().await;
    // Reserve an address for b, then close it: b is not listening yet.
    let (probe, ab) = bound().await;
    drop(probe);
    let (a, _a_in) =
        Transport::<u64>::start(NodeId(1), 1, la, &[(NodeId(2), ab)], shutdown.clone());
    for i in 0..10 {
        a.send(NodeId(2), i).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let lb = TcpListener::bind(ab).await.unwrap();
    let (_b, mut b_in) = Transport::<u64>::start(NodeId(2), 2, lb, &[], shutdown.clone());
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
    let (_b, mut b_in) = Transport::<u64>::start(NodeId(2), 2, lb, &[], shutdown.clone());
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
    let (a, _a_in) =
        Transport::<u64>::start(NodeId(1), 1, la, &[(NodeId(2), ab)], shutdown.clone());
    a.send(NodeId(2), 1).await;
    let (_conn, from) = tokio::task::spawn_blocking(move || target.accept().unwrap())
        .await
        .unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.21");
    shutdown.cancel();
}
