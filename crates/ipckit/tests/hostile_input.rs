//! Bytes from a stranger: random and adversarial input on the wire must give
//! errors on that connection (or valid messages), never a panic, a hang, an
//! out-of-bounds read, or memory sized by what the peer claims.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ipckit::{Connection, RecvTimeoutError, SocketKind};
use proptest::prelude::*;

const SHORT: Duration = Duration::from_millis(20);

fn header(kind: u8, len: u32, id: u64) -> Vec<u8> {
    let mut h = b"IK".to_vec();
    h.push(1);
    h.push(kind);
    h.extend(len.to_le_bytes());
    h.extend(id.to_le_bytes());
    h
}

/// Feeds `bytes` to a Connection and drains it until it errors or runs dry.
fn feed(bytes: &[u8], kind: SocketKind) -> Vec<Result<Vec<u8>, String>> {
    let (ours, theirs) = match kind {
        SocketKind::Stream => {
            let (a, b) = UnixStream::pair().unwrap();
            (a.into(), b)
        }
        SocketKind::SeqPacket => unreachable!(),
    };
    let mut conn = Connection::from_fd(ours, kind).unwrap().with_max_message_size(1 << 16);
    let mut theirs = theirs;
    theirs.write_all(bytes).unwrap();
    drop(theirs);
    let mut out = Vec::new();
    for _ in 0..(bytes.len() / 16 + 4) {
        match conn.recv_timeout(SHORT) {
            Ok(m) => out.push(Ok(m.into_bytes())),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => {
                out.push(Err(e.to_string()));
                // A byte stream cannot resynchronise: the error must repeat, not hang.
                assert!(conn.recv_timeout(SHORT).is_err());
                break;
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed(&bytes, SocketKind::Stream);
    }

    #[test]
    fn valid_headers_with_random_bodies(kind in 0u8..=255, len in 0u32..4096, id: u64,
                                       body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut bytes = header(kind, len, id);
        bytes.extend(&body);
        let got = feed(&bytes, SocketKind::Stream);
        if kind == 1 && body.len() >= len as usize {
            prop_assert_eq!(got.first().cloned(), Some(Ok(body[..len as usize].to_vec())));
        }
    }

    #[test]
    fn random_handle_tables_are_rejected_cleanly(table in proptest::collection::vec(any::<u8>(), 0..300)) {
        // HAS_HANDLES set but no descriptors arrive: always an error.
        let mut bytes = header(0x81, table.len() as u32, 0);
        bytes.extend(&table);
        let got = feed(&bytes, SocketKind::Stream);
        prop_assert!(got.iter().all(|r| r.is_err()), "{:?}", got);
    }
}

#[test]
fn oversized_announcement_is_refused_without_allocating() {
    let got = feed(&header(1, u32::MAX, 0), SocketKind::Stream);
    assert!(matches!(got.as_slice(), [Err(e)] if e.contains("exceeds")), "{got:?}");
}

#[test]
fn wrong_version_is_a_version_mismatch() {
    let mut h = header(1, 0, 0);
    h[2] = 9;
    let got = feed(&h, SocketKind::Stream);
    assert!(matches!(got.as_slice(), [Err(e)] if e.contains("version mismatch")), "{got:?}");
}

#[test]
fn truncated_frame_is_reported() {
    let mut bytes = header(1, 100, 0);
    bytes.extend([0u8; 40]);
    let got = feed(&bytes, SocketKind::Stream);
    assert!(matches!(got.as_slice(), [Err(e)] if e.contains("middle of a frame")), "{got:?}");
}

#[test]
fn seqpacket_oversized_datagram_is_skipped_and_the_link_goes_on() {
    let (a, b) = Connection::pair(SocketKind::SeqPacket).unwrap();
    let mut small = b.with_max_message_size(100);
    let mut a = a;
    a.send(vec![1u8; 1000]).unwrap();
    a.send(vec![2u8; 10]).unwrap();
    let err = small.recv_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(matches!(err, RecvTimeoutError::Frame(ipckit::FrameError::TooLarge { .. })), "{err:?}");
    assert_eq!(small.recv_timeout(Duration::from_secs(10)).unwrap().bytes(), [2u8; 10]);
}
