//! Zero-copy requests over the two-slot RPC: the client writes a request
//! in place (`RpcClient::loan`), the server reads it in place
//! (`RpcServer::recv_view`). Real processes for the traffic and the
//! crashes; threads where the test must order the two sides exactly.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::rpc::{RpcClient, RpcServer, WaitMode};
use ipckit::shm::Offset;
use ipckit::{CallError, RecvTimeoutError};

mod support;

use support::{role_command, unique_name, Cleanup, Kid};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SHM_RPC_ZC_ROLE";
const MIB: usize = 1 << 20;

fn name(tag: &str) -> String {
    unique_name("t-rpczc", tag)
}

/// Request `i`'s bytes: its length varies from 1 byte to 1 MiB, its bytes
/// from its number.
fn request(i: u32) -> Vec<u8> {
    let len = match i % 4 {
        0 => 1 + (i as usize * 7) % 20,
        1 => 21 + (i as usize * 131) % 4000,
        2 => MIB,
        _ => 4096 + (i as usize * 65_537) % (MIB - 4096),
    };
    (0..len).map(|k| (i as u8).wrapping_mul(29) ^ (k as u8).wrapping_add((k >> 8) as u8)).collect()
}

/// The answer to a request: its length and an FNV-1a hash of its bytes.
fn digest(bytes: &[u8]) -> Vec<u8> {
    let h =
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    [(bytes.len() as u64).to_le_bytes(), h.to_le_bytes()].concat()
}

fn open_client(n: &str) -> RpcClient {
    let until = Instant::now() + LONG;
    loop {
        match RpcClient::open(n) {
            Ok(c) => return c,
            Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, n) = role.split_once(':').unwrap();
    match role {
        // Answer every request, read in place, with its digest, until idle.
        "digest" => {
            let mut s = RpcServer::create(n, MIB, 0o600).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
            loop {
                match s.recv_view(Some(LONG)) {
                    Ok(view) => {
                        let d = digest(&view);
                        view.reply(&d).unwrap();
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("server: {e}"),
                }
            }
        }
        // Echo every request in place: one copy, request view to reply slot.
        "echo" => {
            let mut s = RpcServer::create(n, MIB, 0o600).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
            loop {
                match s.recv_view(Some(LONG)) {
                    Ok(view) => {
                        let len = view.len();
                        view.reply_with(len, |req, rep| rep.copy_from_slice(req)).unwrap();
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("server: {e}"),
                }
            }
        }
        // Take one request in place and keep it until killed.
        "hold" => {
            let mut s = RpcServer::create(n, 4096, 0o600).unwrap().with_wait(WaitMode::Block);
            let view = s.recv_view(Some(LONG)).unwrap();
            thread::sleep(LONG * 10);
            drop(view);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn requests_up_to_1_mib_written_and_read_in_place_between_processes() {
    let n = name("digest");
    let _c = Cleanup(n.clone());
    let _kid = Kid(role_command(ROLE, format!("digest:{n}")).spawn().unwrap());
    let mut client = open_client(&n).with_wait(WaitMode::SpinThenBlock(2000)).with_timeout(LONG);
    let calls = if cfg!(debug_assertions) { 120 } else { 600 };
    let mut out = Vec::new();
    for i in 0..calls {
        let want = request(i);
        if i % 5 == 4 {
            // A copied request to the same in-place server.
            client.call_into(&want, &mut out, LONG).unwrap();
        } else {
            let mut slot = client.loan_timeout(LONG).unwrap();
            assert_eq!(slot.len(), MIB, "the slot is the segment's capacity");
            slot[..want.len()].copy_from_slice(&want);
            slot.call_into(want.len(), &mut out, LONG).unwrap();
        }
        assert_eq!(out, digest(&want), "call {i} ({} bytes)", want.len());
    }
    // Too long for the slot: refused before anything is sent.
    let slot = client.loan_timeout(LONG).unwrap();
    assert!(matches!(slot.call(MIB + 1), Err(CallError::TooLarge { len, max: MIB }) if len == MIB + 1));
    assert_eq!(client.call_timeout(b"after", LONG).unwrap(), digest(b"after"));
}

/// A call that timed out while the server holds its request in place: the
/// client may not write the slot again (a loan or a copied call waits, and
/// times out) until the server lets the request go, and the server's view
/// never changes meanwhile.
#[test]
fn a_held_request_is_not_overwritten_by_a_client_that_gave_up() {
    let n = name("held");
    let _c = Cleanup(n.clone());
    let server = RpcServer::create(&n, 8192, 0o600).unwrap();
    let mut client = RpcClient::open(&n).unwrap();
    let first = request(3)[..5000].to_vec();
    let (held_tx, held_rx) = mpsc::channel();
    let (tried_tx, tried_rx) = mpsc::channel::<()>();
    let want = first.clone();
    let t = thread::spawn(move || {
        let mut server = server;
        {
            let view = server.recv_view(Some(LONG)).unwrap();
            assert_eq!(&view[..], &want[..]);
            held_tx.send(()).unwrap();
            tried_rx.recv_timeout(LONG).unwrap();
            assert_eq!(&view[..], &want[..], "the held request changed under the server");
        }
        // Then serve the client's next call.
        let view = server.recv_view(Some(LONG)).unwrap();
        let d = digest(&view);
        view.reply(&d).unwrap();
    });
    let mut slot = client.loan_timeout(LONG).unwrap();
    slot[..first.len()].copy_from_slice(&first);
    // The server answers only after it was told; this call gives up first.
    let r = slot.call_into(first.len(), &mut Vec::new(), Duration::from_millis(100));
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    held_rx.recv_timeout(LONG).unwrap();
    let short = Duration::from_millis(100);
    assert!(matches!(client.loan_timeout(short), Err(CallError::Timeout)), "lent while held");
    assert!(matches!(client.call_timeout(b"copy", short), Err(CallError::Timeout)), "written while held");
    tried_tx.send(()).unwrap();
    let mut slot = client.loan_timeout(LONG).unwrap();
    slot[..3].copy_from_slice(b"new");
    assert_eq!(slot.call_into_vec(3), digest(b"new"));
    t.join().unwrap();
}

/// Calls with tiny timeouts against a server that holds each request for a
/// while and reads it twice: it never sees a request change, and every
/// reply a call returns is the answer to that call.
#[test]
fn timeouts_racing_views_never_change_a_held_request() {
    let n = name("race");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, MIB, 0o600).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
    let mut client = RpcClient::open(&n).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
    let calls = if cfg!(debug_assertions) { 300 } else { 1500 };
    let t = thread::spawn(move || {
        let mut served = 0u32;
        loop {
            let view = match server.recv_view(Some(Duration::from_millis(500))) {
                Ok(v) => v,
                Err(RecvTimeoutError::Timeout) => return served,
                Err(e) => panic!("server: {e}"),
            };
            let i = u32::from_le_bytes(view[..4].try_into().unwrap());
            let d = digest(&view);
            assert_eq!(d, digest(&tagged(i)), "request {i} torn");
            if i % 4 == 0 {
                thread::sleep(Duration::from_micros(300));
            }
            assert_eq!(digest(&view), d, "request {i} changed while held");
            view.reply(&d).unwrap();
            served += 1;
        }
    });
    let mut ok = 0;
    let mut out = Vec::new();
    for i in 0..calls {
        let req = tagged(i);
        let timeout = Duration::from_micros(if i % 3 == 0 { 20 } else { 5000 });
        let r = match client.loan_timeout(timeout) {
            Ok(mut slot) => {
                slot[..req.len()].copy_from_slice(&req);
                slot.call_into(req.len(), &mut out, timeout)
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                assert_eq!(out, digest(&req), "call {i} got another call's reply");
                ok += 1;
            }
            Err(CallError::Timeout) => {}
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    let served = t.join().unwrap();
    assert!(ok > 0 && served >= ok, "ok {ok} served {served}");
}

/// `request(i)` with `i` in its first four bytes (at least 4 bytes long).
fn tagged(i: u32) -> Vec<u8> {
    let mut v = request(i);
    v.resize(v.len().max(4), 0);
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// A server killed while it holds a request: the client, which may not
/// write the slot until the hold is released, learns that the server is
/// gone instead of waiting out its timeout.
#[test]
fn a_server_killed_while_holding_a_request_disconnects_the_client() {
    let n = name("kill-holder");
    let _c = Cleanup(n.clone());
    let mut kid = Kid(role_command(ROLE, format!("hold:{n}")).spawn().unwrap());
    let mut client = open_client(&n);
    let r = client.call_timeout(b"keep me", Duration::from_millis(200));
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    let _ = kid.0.kill();
    let _ = kid.0.wait();
    let start = Instant::now();
    let r = client.loan_timeout(Duration::from_secs(60));
    assert!(matches!(r, Err(CallError::Disconnected)), "{:?}", r.map(|_| ()));
    assert!(start.elapsed() < LONG, "took {:?}", start.elapsed());
}

/// Hostile bytes: a published length over the slot size is a frame error
/// for `recv_view` (the server keeps serving); a hold word a hostile server
/// never clears makes the client time out, not hang.
#[test]
fn hostile_lengths_and_hold_words_are_errors_not_hangs() {
    let n = name("hostile");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 64, 0o600).unwrap();
    let mut client = RpcClient::open(&n).unwrap();
    let view = server.segment().clone();
    // Request slot (user-area offsets): state at 64, len at 72.
    view.atomic_u32(Offset::new(64 + 8)).unwrap().store(1 << 30, Ordering::Relaxed);
    view.atomic_u32(Offset::new(64)).unwrap().store(9, Ordering::SeqCst);
    assert!(matches!(server.recv_view(Some(LONG)), Err(RecvTimeoutError::Frame(_))));
    let t = thread::spawn(move || {
        let v = server.recv_view(Some(LONG)).unwrap();
        let d = digest(&v);
        v.reply(&d).unwrap();
        server
    });
    let mut slot = client.loan_timeout(LONG).unwrap();
    slot[..2].copy_from_slice(b"ok");
    assert_eq!(slot.call_into_vec(2), digest(b"ok"));
    let server = t.join().unwrap();
    // The hold word: the first word of the line after the request area
    // (64-byte slots: request slot at 64, its area to 128 + 64, hold at 192).
    let hold = view.atomic_u32(Offset::new(192)).unwrap();
    hold.store(12345, Ordering::SeqCst);
    // A call that did not complete makes the next one look at the hold.
    assert!(matches!(client.call_timeout(b"x", Duration::from_millis(50)), Err(CallError::Timeout)));
    let start = Instant::now();
    assert!(matches!(client.loan_timeout(Duration::from_millis(200)), Err(CallError::Timeout)));
    assert!(start.elapsed() < LONG);
    drop(server);
}

trait CallVec {
    fn call_into_vec(self, len: usize) -> Vec<u8>;
}

impl CallVec for ipckit::shm::rpc::RequestLoan<'_> {
    fn call_into_vec(self, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.call_into(len, &mut out, LONG).unwrap();
        out
    }
}

/// Both directions in place between processes: the client writes the
/// request in the slot and reads the echo where the server wrote it, for
/// inline (up to `INLINE` bytes) and out-of-line lengths up to 1 MiB.
#[test]
fn echoes_written_and_read_in_place_both_ways_between_processes() {
    let n = name("echo");
    let _c = Cleanup(n.clone());
    let _kid = Kid(role_command(ROLE, format!("echo:{n}")).spawn().unwrap());
    let mut client = open_client(&n).with_wait(WaitMode::SpinThenBlock(2000));
    let calls = if cfg!(debug_assertions) { 120 } else { 600 };
    for i in 0..calls {
        let want = request(i);
        let mut slot = client.loan_timeout(LONG).unwrap();
        slot[..want.len()].copy_from_slice(&want);
        let reply = slot.call_view(want.len(), LONG).unwrap();
        assert!(reply[..] == want[..], "call {i}: {} bytes back for {}", reply.len(), want.len());
    }
    // A copied call gets the in-place echo as a copy.
    assert_eq!(client.call_timeout(b"copied", LONG).unwrap(), b"copied");
}

/// `RpcServer::reply_with` answers a copied request in place; a reply
/// length over the slot size is refused, and a hostile one published by
/// hand is a frame error for `call_view`, not a read out of bounds.
#[test]
fn in_place_replies_and_hostile_reply_lengths() {
    let n = name("reply-with");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 4096, 0o600).unwrap();
    let mut client = RpcClient::open(&n).unwrap();
    let view = server.segment().clone();
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        assert!(matches!(server.reply_with(4097, |_| ()), Err(ipckit::ReplyError::TooLarge { .. })));
        server.reply_with(3000, |rep| rep.fill(req[0])).unwrap();
        // Answer the next call with a length no slot holds, by hand.
        let v = server.recv_view(Some(LONG)).unwrap();
        let seq = v.seq();
        drop(v);
        // Reply slot words (user-area offsets): state at 64 + 12, len at 64 + 20.
        view.atomic_u32(Offset::new(64 + 20)).unwrap().store(1 << 30, Ordering::Relaxed);
        view.atomic_u32(Offset::new(64 + 12)).unwrap().store(seq, Ordering::SeqCst);
        server
    });
    assert_eq!(client.call_timeout(&[7], LONG).unwrap(), vec![7u8; 3000]);
    let slot = client.loan_timeout(LONG).unwrap();
    let r = slot.call_view(1, LONG).map(|v| v.len());
    assert!(matches!(r, Err(CallError::Frame(_))), "{r:?}");
    drop(t.join().unwrap());
}
