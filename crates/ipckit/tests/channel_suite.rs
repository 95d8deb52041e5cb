//! The channel conformance suite: every behaviour of [`Sender`]/[`Receiver`]
//! written once and run against every transport (pipe, FIFO, UNIX stream,
//! UNIX seqpacket), in the manner of iceoryx2's conformance tests and
//! ipc-channel's single platform suite. Cross-process behaviour is in
//! `tests/process.rs`; these run both ends in one process, on threads.

mod suite;

use std::thread;
use std::time::{Duration, Instant};

use ipckit::{
    Capacity, Message, RecvError, RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError,
    TypedReceiver, TypedSender,
};

use suite::{Transport, LONG};

/// Instantiates every test below for one transport.
macro_rules! for_transport {
    ($name:ident, $t:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn order_and_content() {
                super::order_and_content($t)
            }
            #[test]
            fn empty_and_timeout() {
                super::empty_and_timeout($t)
            }
            #[test]
            fn sender_drop_ends_the_stream() {
                super::sender_drop_ends_the_stream($t)
            }
            #[test]
            fn receiver_drop_is_seen_by_the_sender() {
                super::receiver_drop_is_seen_by_the_sender($t)
            }
            #[test]
            fn oversized_message_is_handed_back() {
                super::oversized_message_is_handed_back($t)
            }
            #[test]
            fn bounded_blocks_when_full() {
                super::bounded_blocks_when_full($t)
            }
            #[test]
            fn rendezvous_send_waits_for_the_receiver() {
                super::rendezvous_send_waits_for_the_receiver($t)
            }
            #[test]
            fn rendezvous_timeout_withdraws_the_message() {
                super::rendezvous_timeout_withdraws_the_message($t)
            }
            #[test]
            fn streaming_with_checksums() {
                super::streaming_with_checksums($t)
            }
            #[test]
            fn typed_messages() {
                super::typed_messages($t)
            }
        }
    };
}

for_transport!(pipe, Transport::Pipe);
for_transport!(fifo, Transport::Fifo);
for_transport!(unix_stream, Transport::UnixStream);
for_transport!(unix_seqpacket, Transport::UnixSeqPacket);

fn order_and_content(t: Transport) {
    let sizes = [0usize, 1, 7, 16, 1000, 4080, 4096, 65_536, 150_000];
    let sizes: Vec<usize> = sizes.into_iter().filter(|&n| n <= t.max_payload()).collect();
    let mut ch = t.open(Capacity::Kernel);
    let mut tx = ch.sender();
    let expected = sizes.clone();
    let writer = thread::spawn(move || {
        for (i, n) in expected.iter().enumerate() {
            let body: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
            tx.send_timeout(body, LONG).unwrap();
        }
        tx
    });
    for (i, n) in sizes.iter().enumerate() {
        let m = ch.rx().recv_timeout(LONG).unwrap();
        // Sockets say who sent each message, from the kernel; pipes cannot.
        let who = m.sender_cred().map(|c| (c.pid, c.uid));
        assert_eq!(who, t.listens().then(|| (std::process::id(), ipckit::euid())));
        assert_eq!(m.bytes().len(), *n, "message {i}");
        assert!(m.bytes().iter().enumerate().all(|(j, &b)| b == (i * 31 + j) as u8), "message {i} corrupted");
    }
    drop(writer.join().unwrap());
}

fn empty_and_timeout(t: Transport) {
    let mut ch = t.open(Capacity::Kernel);
    let _tx = ch.sender();
    assert!(matches!(ch.rx().try_recv(), Err(TryRecvError::Empty)));
    let start = Instant::now();
    assert!(matches!(ch.rx().recv_timeout(Duration::from_millis(150)), Err(RecvTimeoutError::Timeout)));
    assert!(start.elapsed() >= Duration::from_millis(140), "returned early: {:?}", start.elapsed());
    let deadline = Instant::now() + Duration::from_millis(50);
    assert!(matches!(ch.rx().recv_deadline(deadline), Err(RecvTimeoutError::Timeout)));
    assert!(Instant::now() >= deadline);
}

fn sender_drop_ends_the_stream(t: Transport) {
    let mut ch = t.open(Capacity::Kernel);
    let mut tx = ch.sender();
    for i in 0..10u8 {
        tx.send_timeout(vec![i], LONG).unwrap();
    }
    drop(tx);
    for i in 0..10u8 {
        assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), [i]);
    }
    if t.listens() {
        // A receiver bound to a path waits for new senders: no disconnection.
        assert!(matches!(ch.rx().recv_timeout(Duration::from_millis(100)), Err(RecvTimeoutError::Timeout)));
        assert_eq!(ch.rx().senders(), 0);
    } else {
        assert!(matches!(ch.rx().recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
        assert!(matches!(ch.rx().recv(), Err(RecvError::Disconnected)));
    }
}

fn receiver_drop_is_seen_by_the_sender(t: Transport) {
    let mut ch = t.open(Capacity::Kernel);
    let mut tx = ch.sender();
    tx.send_timeout("first", LONG).unwrap();
    assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), b"first");
    drop(ch);
    // The kernel may still accept a write or two into a buffer nobody reads;
    // within a few sends the sender must learn the receiver is gone.
    let mut seen = None;
    for _ in 0..100 {
        match tx.send_timeout("more", LONG) {
            Ok(()) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                seen = Some(e);
                break;
            }
        }
    }
    match seen {
        Some(SendTimeoutError::Disconnected(m)) => assert_eq!(m.bytes(), b"more"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

fn oversized_message_is_handed_back(t: Transport) {
    let mut ch = t.open(Capacity::Kernel);
    let mut tx = ch.sender();
    let max = tx.max_message_size();
    let big = vec![7u8; max + 1];
    match tx.try_send(big) {
        Err(TrySendError::TooLarge { msg, len, max: m }) => {
            assert_eq!((msg.bytes().len(), len, m), (max + 1, max + 1, max));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The channel is unharmed.
    tx.send_timeout("after", LONG).unwrap();
    assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), b"after");
}

fn bounded_blocks_when_full(t: Transport) {
    if !t.flow_control() {
        return;
    }
    let mut ch = t.open(Capacity::Bounded(3));
    let mut tx = ch.sender();
    ch.prime(&mut tx);
    let mut sent = 0;
    loop {
        match tx.send_timeout(vec![sent as u8], Duration::from_millis(100)) {
            Ok(()) => sent += 1,
            Err(SendTimeoutError::Timeout(m)) => {
                assert_eq!(m.bytes(), [sent as u8], "the message is handed back");
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(sent <= 3, "a channel of capacity 3 took a 4th message");
    }
    assert_eq!(sent, 3);
    assert!(matches!(tx.try_send("x"), Err(TrySendError::Full(_))));
    // Taking messages makes room again.
    for i in 0..3u8 {
        assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), [i]);
    }
    tx.send_timeout("room", LONG).unwrap();
    assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), b"room");
}

fn rendezvous_send_waits_for_the_receiver(t: Transport) {
    if !t.flow_control() {
        return;
    }
    let mut ch = t.open(Capacity::RENDEZVOUS);
    let mut tx = ch.sender();
    let sender = thread::spawn(move || {
        let mut returned = Vec::new();
        for i in 0..3u8 {
            tx.send_timeout(vec![i], LONG).unwrap();
            returned.push(Instant::now());
        }
        returned
    });
    let mut asked = Vec::new();
    for i in 0..3u8 {
        thread::sleep(Duration::from_millis(150));
        asked.push(Instant::now());
        assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), [i]);
    }
    let returned = sender.join().unwrap();
    for i in 0..3 {
        assert!(returned[i] >= asked[i], "send {i} returned before the receiver asked for it");
    }
}

fn rendezvous_timeout_withdraws_the_message(t: Transport) {
    if !t.flow_control() {
        return;
    }
    let mut ch = t.open(Capacity::RENDEZVOUS);
    let mut tx = ch.sender();
    ch.prime(&mut tx);
    // Nobody is receiving: the send times out and gets its message back.
    match tx.send_timeout("withdrawn", Duration::from_millis(100)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.bytes(), b"withdrawn"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(matches!(tx.try_send("nobody waits"), Err(TrySendError::Full(_))));
    // The withdrawn message is never delivered.
    assert!(matches!(ch.rx().recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Timeout)));
    let sender = thread::spawn(move || tx.send_timeout("delivered", LONG).map(|_| tx));
    assert_eq!(ch.rx().recv_timeout(LONG).unwrap().bytes(), b"delivered");
    sender.join().unwrap().unwrap();
}

fn streaming_with_checksums(t: Transport) {
    for cap in [Capacity::Kernel, Capacity::Bounded(8), Capacity::RENDEZVOUS] {
        if cap != Capacity::Kernel && !t.flow_control() {
            continue;
        }
        let n: u32 = if cap == Capacity::RENDEZVOUS { 500 } else { 5000 };
        let mut ch = t.open(cap);
        let mut tx = ch.sender();
        let writer = thread::spawn(move || {
            let mut sum = 0u64;
            for i in 0..n {
                let len = (i as usize * 7919) % 300;
                let body: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                sum = sum.wrapping_add(body.iter().map(|&b| u64::from(b)).sum::<u64>() + u64::from(i));
                let mut m = i.to_le_bytes().to_vec();
                m.extend(body);
                tx.send_timeout(m, LONG).unwrap();
            }
            sum
        });
        let mut sum = 0u64;
        for i in 0..n {
            let m = ch.rx().recv_timeout(LONG).unwrap_or_else(|e| panic!("{cap:?} message {i}: {e}"));
            let (seq, body) = m.bytes().split_at(4);
            assert_eq!(u32::from_le_bytes(seq.try_into().unwrap()), i, "{cap:?}: out of order");
            sum = sum.wrapping_add(body.iter().map(|&b| u64::from(b)).sum::<u64>() + u64::from(i));
        }
        assert_eq!(sum, writer.join().unwrap(), "{cap:?}: checksum");
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Draw {
    shape: String,
    points: Vec<(i32, i32)>,
    color: Option<u32>,
}

fn typed_messages(t: Transport) {
    let mut ch = t.open(Capacity::Kernel);
    let mut raw = ch.sender();
    raw.send_timeout(Message::new(vec![0xff; 3]), LONG).unwrap();
    let mut tx = TypedSender::<Draw>::new(raw);
    let d = Draw { shape: "polygon".into(), points: vec![(0, 0), (10, -4), (3, 9)], color: Some(0xff00ff) };
    tx.send_timeout(d.clone(), LONG).unwrap();
    let mut rx = TypedReceiver::<Draw>::new(ch.take_rx());
    // Bytes that are not a Draw: a decode error, and the channel goes on.
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Decode(_))));
    assert_eq!(rx.recv_timeout(LONG).unwrap(), d);
    ch.put_rx(rx.into_inner());
}
