//! What the fuzz targets (`fuzz/`, `cargo fuzz`) run on each input, here so that the
//! committed corpora and every crash kept as a regression case also run as ordinary tests
//! (`tests/tests/fuzz_corpus.rs`), without a nightly toolchain. Each function takes arbitrary
//! bytes, must not panic on any, and checks what must hold whatever the bytes.

use bytes::BytesMut;
use tailorkv_common::codec::Decoder;
use tailorkv_common::NodeId;

use crate::tob::{Event, Message, NodeState, Timing, Tob};

/// The client protocol's decoder: requests are decoded from any bytes, in any number of
/// pieces, without a panic; a request consumes bytes, and the buffer never grows.
pub fn client_codec(data: &[u8]) {
    // The first byte picks where the input is cut in two, as if it arrived in two reads.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let mut decoder = Decoder::new(1024 * 1024);
    let mut buf = BytesMut::new();
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before, "a request consumed nothing"),
                Ok(None) => break,
                // The connection would be closed.
                Err(_) => return,
            }
            assert!(buf.len() <= before);
        }
    }
}

/// The binary protocol's decoder: requests decoded from any bytes, in two pieces, without a
/// panic; a request consumes bytes (or starts discarding a refused body), and the buffer
/// never grows. The second byte of the input says whether SASL is required.
pub fn binary_codec(data: &[u8]) {
    use tailorkv_common::codec::binary::BinaryDecoder;
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let Some((&sasl, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let mut decoder = BinaryDecoder::new(64 * 1024);
    if sasl & 1 == 1 {
        decoder = decoder.with_sasl();
    }
    let mut buf = BytesMut::new();
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => assert!(
                    buf.len() < before || decoder.is_mid_request(),
                    "a request consumed nothing"
                ),
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.len() <= before);
        }
    }
}

/// The reply parser the `memcached://` datalet and loadgen use: any bytes, for each kind of
/// request, without a panic; a reply consumes bytes.
pub fn client_replies(data: &[u8]) {
    use tailorkv_common::client::{decode, Expect};
    let Some((&kind, data)) = data.split_first() else {
        return;
    };
    let expect = match kind % 6 {
        0 => Expect::Status,
        1 => Expect::Get,
        2 => Expect::Gets,
        3 => Expect::GetsMany,
        4 => Expect::Meta,
        _ => Expect::Stats,
    };
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf, expect) {
            Ok(Some(_)) => assert!(buf.len() < before, "a reply consumed nothing"),
            Ok(None) | Err(_) => return,
        }
    }
}

/// A peer frame as a member's reader decodes it: any bytes, without a panic.
pub fn peer_frame(data: &[u8]) {
    use crate::peer::Frame;
    use crate::replication::PeerMsg;
    use crate::shard::mux::Wire;
    let _ = postcard::from_bytes::<Frame<Wire<PeerMsg>>>(data);
}

/// A member of a 3-node group fed arbitrary messages from arbitrary senders and runs, with
/// ticks between them, its driver's part played as the driver plays it (a snapshot it waits
/// for is installed at once): no panic, and after every step what a member must keep
/// whatever it hears: deliveries numbered one after another from where it was (or from the
/// snapshot it installed), its count of them agreeing, epochs never going back, and a
/// serving member a member of its own view.
pub fn tob_step(data: &[u8]) {
    let nodes = [NodeId(1), NodeId(2), NodeId(3)];
    let mut tob: Tob<u64> = Tob::new(nodes[0], 1, &nodes, 0, Timing::default());
    let mut delivered = tob.delivered();
    let mut epoch = tob.view().epoch;
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;
        match control % 8 {
            0 => tob.tick(),
            1 => tob.propose(len as u64),
            2 => tob.flush(),
            _ => {
                let Ok(message) = postcard::from_bytes::<Message<u64>>(message) else {
                    continue;
                };
                // Senders 1 to 4: the members, and one stranger.
                let from = NodeId(u16::from(control >> 3) % 4 + 1);
                let incarnation = u64::from(control >> 5);
                tob.step(from, incarnation, message);
            }
        }
        for event in tob.take_events() {
            match event {
                Event::Deliver(d) => {
                    assert_eq!(d.seq, delivered + 1, "deliveries skip or repeat");
                    delivered = d.seq;
                }
                Event::AwaitState { epoch, seq, .. } => {
                    tob.state_installed(epoch, seq);
                    delivered = seq;
                }
                _ => {}
            }
        }
        let _ = tob.take_messages();
        assert_eq!(tob.delivered(), delivered, "its count of deliveries is off");
        let now = tob.view().epoch;
        assert!(now >= epoch, "the epoch went back from {epoch} to {now}");
        epoch = now;
        if tob.state() == NodeState::Serving {
            assert!(
                tob.view().ids().any(|n| n == nodes[0]),
                "serving in a view without itself"
            );
        }
    }
}
