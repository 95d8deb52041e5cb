//! The two-slot shared-memory RPC: semantics on threads, crash behaviour
//! with real processes (the server or the client killed with SIGKILL), and
//! hostile bytes written into the slots.

use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::rpc::{RpcClient, RpcServer, WaitMode};
use ipckit::shm::{Offset, Segment};
use ipckit::{CallError, Error, RecvTimeoutError};

mod support;

use support::{unique_name, Cleanup};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SHM_RPC_ROLE";
const MODES: [WaitMode; 3] = [WaitMode::Spin, WaitMode::SpinThenBlock(500), WaitMode::Block];

fn name(tag: &str) -> String {
    unique_name("t-rpc", tag)
}

/// A child process running this test binary in a role; killed and reaped on drop.
struct Kid(Child);

impl Kid {
    fn spawn(role: &str, arg: &str) -> Kid {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("{role}:{arg}"))
            .spawn()
            .unwrap();
        Kid(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, arg) = role.split_once(':').unwrap();
    match role {
        // Serve echo+1 until told to hang (then never answer).
        "server" => {
            let mut s = RpcServer::create(arg, 64, 0o600).unwrap().with_wait(WaitMode::Block);
            loop {
                match s.recv_timeout(LONG) {
                    Ok(req) if req == b"hang" => thread::sleep(LONG * 10),
                    Ok(req) => s.reply(&req.iter().map(|b| b + 1).collect::<Vec<_>>()).unwrap(),
                    Err(_) => std::process::exit(0),
                }
            }
        }
        // Attach as the client, make one call, then wait to be killed.
        "client" => {
            let mut c = RpcClient::open(arg).unwrap();
            assert_eq!(c.call(&[1]).unwrap(), [2]);
            thread::sleep(LONG * 10);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn echo_server(mut s: RpcServer, n: usize) -> thread::JoinHandle<RpcServer> {
    thread::spawn(move || {
        for _ in 0..n {
            let req = s.recv_timeout(LONG).unwrap();
            let mut rep = req.clone();
            rep.reverse();
            s.reply(&rep).unwrap();
        }
        s
    })
}

#[test]
fn calls_round_trip_in_every_wait_mode() {
    for mode in MODES {
        let n = name("echo");
        let _c = Cleanup(n.clone());
        let server = echo_server(RpcServer::create(&n, 1024, 0o600).unwrap().with_wait(mode), 2000);
        let mut client = RpcClient::open(&n).unwrap().with_wait(mode).with_timeout(LONG);
        let mut out = Vec::new();
        for i in 0..2000u32 {
            let req: Vec<u8> = i.to_le_bytes().iter().copied().cycle().take((i % 1000) as usize).collect();
            client.call_into(&req, &mut out, LONG).unwrap();
            let mut want = req.clone();
            want.reverse();
            assert_eq!(out, want, "{mode:?} call {i}");
        }
        server.join().unwrap();
    }
}

#[test]
fn a_call_nobody_answers_times_out_and_its_late_reply_is_dropped() {
    let n = name("late");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 64, 0o600).unwrap();
    let mut client = RpcClient::open(&n).unwrap();
    let start = Instant::now();
    let r = client.call_timeout(b"first", Duration::from_millis(100));
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(100));
    // The server answers the abandoned call late, then a fresh one.
    assert_eq!(server.recv_timeout(LONG).unwrap(), b"first");
    server.reply(b"late").unwrap();
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        server.reply(&[req, b"!".to_vec()].concat()).unwrap();
        server
    });
    assert_eq!(client.call_timeout(b"second", LONG).unwrap(), b"second!");
    t.join().unwrap();
}

#[test]
fn limits_and_single_client() {
    let n = name("limits");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 16, 0o600).unwrap();
    let mut client = RpcClient::open(&n).unwrap();
    assert!(matches!(client.call(&[0; 17]), Err(CallError::TooLarge { len: 17, max: 16 })));
    assert!(matches!(RpcClient::open(&n), Err(Error::AlreadyExists(_))), "a second live client");
    assert!(matches!(server.try_recv(), Err(ipckit::TryRecvError::Empty)));
    assert!(matches!(server.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
    drop(client);
    // The slot is free again once the client leaves.
    let _again = RpcClient::open(&n).unwrap();
    drop(server);
    assert!(matches!(RpcClient::open(&n), Err(Error::NotListening(_)) | Err(Error::AlreadyExists(_))));
}

#[test]
fn a_raw_segment_is_not_an_rpc_segment() {
    let n = name("kind");
    let _c = Cleanup(n.clone());
    let _seg = Segment::create(&n, 4096, 0o600).unwrap();
    assert!(matches!(RpcClient::open(&n), Err(Error::Corrupted(_))));
}

#[test]
fn a_server_killed_mid_call_fails_the_call_at_once() {
    for mode in MODES {
        let n = name("kill-server");
        let _c = Cleanup(n.clone());
        let mut kid = Kid::spawn("server", &n);
        let until = Instant::now() + LONG;
        let mut client = loop {
            match RpcClient::open(&n) {
                Ok(c) => break c.with_wait(mode),
                Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(client.call_timeout(&[1, 2], LONG).unwrap(), [2, 3]);
        let pending = thread::spawn(move || {
            let start = Instant::now();
            (client.call_timeout(b"hang", Duration::from_secs(60)), start.elapsed())
        });
        thread::sleep(Duration::from_millis(100));
        kid.kill();
        let (r, took) = pending.join().unwrap();
        assert!(matches!(r, Err(CallError::Disconnected)), "{mode:?}: {r:?}");
        assert!(
            took < Duration::from_secs(30),
            "{mode:?}: waited {took:?}, not bounded by the liveness check"
        );
    }
}

#[test]
fn a_client_killed_mid_session_is_seen_by_the_server() {
    let n = name("kill-client");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 64, 0o600).unwrap().with_wait(WaitMode::Block);
    let mut kid = Kid::spawn("client", &n);
    let req = server.recv_timeout(LONG).unwrap();
    server.reply(&[req[0] + 1]).unwrap();
    let pid = kid.pid();
    kid.kill();
    let r = server.recv_timeout(LONG);
    assert!(matches!(r, Err(RecvTimeoutError::Disconnected)), "{r:?} (client pid {pid})");
    // A new client can attach afterwards.
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        server.reply(&req).unwrap();
    });
    let mut c = RpcClient::open(&n).unwrap();
    assert_eq!(c.call_timeout(b"new", LONG).unwrap(), b"new");
    t.join().unwrap();
}

#[test]
fn hostile_slot_contents_are_errors_not_crashes() {
    let n = name("hostile");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 32, 0o600).unwrap();
    let raw = Segment::open_or_create(&n, 1, 0o600);
    assert!(matches!(raw, Err(Error::Corrupted(_))), "the raw view refuses an RPC segment");
    let mut client = RpcClient::open(&n).unwrap();
    // Play a hostile client by hand: a request claiming 1 GiB in a 32-byte slot.
    // Slot layout (user-area offsets): request slot at 64: state (a sequence
    // number), waiters, len, -, inline bytes.
    let view = server.segment().clone();
    view.atomic_u32(Offset::new(64 + 8)).unwrap().store(1 << 30, Ordering::Relaxed);
    view.atomic_u32(Offset::new(64)).unwrap().store(1, Ordering::SeqCst);
    let r = server.recv_timeout(LONG);
    assert!(matches!(r, Err(RecvTimeoutError::Frame(_))), "{r:?}");
    // A forged sequence number with the same bad length.
    view.atomic_u32(Offset::new(64)).unwrap().store(77, Ordering::SeqCst);
    assert!(server.recv_timeout(Duration::from_millis(100)).is_err());
    // The same forged number again is not a new request: nothing to take.
    view.atomic_u32(Offset::new(64 + 8)).unwrap().store(0, Ordering::SeqCst);
    assert!(matches!(server.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
    // The server is still usable.
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        server.reply(&req).unwrap();
    });
    assert_eq!(client.call_timeout(b"ok", LONG).unwrap(), b"ok");
    t.join().unwrap();
}

/// A request of call `i`: its number, then bytes derived from it; inline
/// (up to 48 bytes) and out-of-line sizes alternate.
fn patterned(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 37) % 200;
    let mut v = i.to_le_bytes().to_vec();
    v.extend((4..len).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)));
    v
}

/// Calls with tiny timeouts against a server that is sometimes slow:
/// calls time out while the server copies their request or writes their
/// reply, and the next call overwrites the request slot. The server never
/// sees a torn request (the seqlock re-reads it), and every reply a call
/// returns is the answer to that call, never to an earlier one.
#[test]
fn timeouts_racing_the_server_never_mix_requests_or_replies() {
    let n = name("race");
    let _c = Cleanup(n.clone());
    let mut server = RpcServer::create(&n, 256, 0o600).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
    let mut client = RpcClient::open(&n).unwrap().with_wait(WaitMode::SpinThenBlock(2000));
    let calls = if cfg!(debug_assertions) { 1000 } else { 4000 };
    let t = thread::spawn(move || {
        let mut served = 0u32;
        loop {
            let req = match server.recv_timeout(Duration::from_millis(500)) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => return served,
                Err(e) => panic!("server: {e}"),
            };
            let i = u32::from_le_bytes(req[..4].try_into().unwrap());
            assert_eq!(req, patterned(i), "a torn request {i}");
            if i % 5 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
            let mut rep = req;
            rep.reverse();
            server.reply(&rep).unwrap();
            served += 1;
        }
    });
    let mut ok = 0;
    let mut out = Vec::new();
    for i in 0..calls {
        let timeout = Duration::from_micros(if i % 3 == 0 { 5 } else { 2000 });
        match client.call_into(&patterned(i), &mut out, timeout) {
            Ok(()) => {
                let mut want = patterned(i);
                want.reverse();
                assert_eq!(out, want, "call {i} got another call's reply");
                ok += 1;
            }
            Err(CallError::Timeout) => {}
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    let served = t.join().unwrap();
    assert!(ok > 0 && served >= ok, "ok {ok} served {served}");
}
