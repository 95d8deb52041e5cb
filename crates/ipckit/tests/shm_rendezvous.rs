//! Rendezvous (capacity 0) shared-memory channels: `send` returns only
//! once a receiver took that message; a sender that times out withdraws its
//! message (never delivered); many senders, threads and processes, wait at
//! once; a dead receiver or sender is noticed in bounded time; random bytes
//! over the offer table give errors, never a hang.
//!
//! Children are this test binary run again with `--exact child_main` and a
//! role in `IPCKIT_SHM_RDV_ROLE`; they print `ready` once attached. Every
//! blocking call has a timeout, every child is killed and reaped on drop,
//! and every segment is removed by a guard.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::channel::{Config, ShmChannel};
use ipckit::shm::{Offset, ShmTypedReceiver, ShmTypedSender, WaitMode};
use ipckit::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};
use support::{role_command, unique_name, Cleanup, Kid};

const LONG: Duration = Duration::from_secs(30);
const ROLE: &str = "IPCKIT_SHM_RDV_ROLE";
const MODES: [WaitMode; 3] = [WaitMode::Spin, WaitMode::SpinThenBlock(200), WaitMode::Block];

fn create() -> (ShmChannel, Cleanup) {
    let n = unique_name("t-rdv", "chan");
    let chan = ShmChannel::create(&n, &Config::rendezvous(64)).unwrap();
    (chan, Cleanup(n))
}

fn msg(id: u32, seq: u32) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend(std::iter::repeat_n((id ^ seq) as u8, (seq % 50) as usize));
    v
}

fn unmsg(b: &[u8]) -> (u32, u32) {
    let id = u32::from_le_bytes(b[..4].try_into().unwrap());
    let seq = u32::from_le_bytes(b[4..8].try_into().unwrap());
    assert_eq!(&b[8..], &vec![(id ^ seq) as u8; (seq % 50) as usize][..], "payload of {id}/{seq}");
    (id, seq)
}

#[test]
fn shape() {
    let (chan, _c) = create();
    assert_eq!(chan.capacity(), 0);
    assert!(chan.is_rendezvous());
    let other = ShmChannel::open(chan.segment().name()).unwrap();
    assert!(other.is_rendezvous());
    assert_eq!(other.max_message_size(), 64);
    assert!(other.is_empty());
}

#[test]
fn nothing_is_buffered_and_a_timed_out_send_is_withdrawn() {
    for mode in MODES {
        let (chan, _c) = create();
        let mut tx = chan.sender().unwrap().with_wait(mode);
        let mut rx = chan.receiver().unwrap().with_wait(mode);
        // No receiver waiting: try_send refuses, a timed send times out
        // and hands its message back.
        assert!(matches!(tx.try_send(&b"x"[..]), Err(TrySendError::Full(_))));
        let t0 = Instant::now();
        match tx.send_timeout(&b"withdrawn"[..], Duration::from_millis(50)) {
            Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.bytes(), b"withdrawn"),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // ... and it is never delivered.
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(rx.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
        assert!(chan.is_empty());
        // Too large: handed back at once.
        assert!(matches!(tx.try_send(vec![0u8; 65]), Err(TrySendError::TooLarge { len: 65, .. })));
    }
}

#[test]
fn send_returns_only_after_a_receiver_took_it() {
    for mode in MODES {
        let (chan, _c) = create();
        let mut tx = chan.sender().unwrap().with_wait(mode);
        let mut rx = chan.receiver().unwrap().with_wait(mode);
        let taken = Arc::new(AtomicBool::new(false));
        let t = taken.clone();
        let r = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let m = rx.recv_timeout(LONG).unwrap();
            t.store(true, Ordering::SeqCst);
            (m, rx)
        });
        tx.send_timeout(&b"hand over"[..], LONG).unwrap();
        let (m, mut rx) = r.join().unwrap();
        assert_eq!(m.bytes(), b"hand over");
        // Taken before send returned: the flag is set right after recv
        // returns, which is after the take; allow that instant by joining first.
        assert!(taken.load(Ordering::SeqCst));
        // try_send succeeds while a receiver is waiting in recv.
        let r = thread::spawn(move || rx.recv_timeout(LONG).map(|m| m.bytes().to_vec()));
        let until = Instant::now() + LONG;
        loop {
            match tx.try_send(&b"try"[..]) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) if Instant::now() < until => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{mode:?}: {e:?}"),
            }
        }
        assert_eq!(r.join().unwrap().unwrap(), b"try");
    }
}

#[test]
fn the_receiver_sees_an_offer_only_while_its_sender_waits() {
    let (chan, _c) = create();
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::Block);
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Block);
    let s = thread::spawn(move || tx.send_timeout(&b"offer"[..], LONG).map_err(|e| e.to_string()));
    let until = Instant::now() + LONG;
    while chan.is_empty() {
        assert!(Instant::now() < until, "the offer never appeared");
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rx.try_recv().unwrap().bytes(), b"offer");
    s.join().unwrap().unwrap();
    // Its only sender is gone now.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
}

/// Four sender threads (different wait modes), each with many messages,
/// one receiver taking them while some time out and withdraw: every
/// message a send reported as sent arrives exactly once and in each
/// sender's order; every withdrawn one never arrives.
#[test]
fn many_senders_wait_at_once() {
    let (chan, _c) = create();
    let per = if cfg!(debug_assertions) { 300 } else { 3000 };
    let senders: Vec<_> = (0..4u32)
        .map(|id| {
            let mut tx = chan.sender().unwrap().with_wait(MODES[id as usize % 3]);
            thread::spawn(move || {
                let mut sent = Vec::new();
                for s in 0..per {
                    // Every seventh message has a tiny timeout: some are withdrawn.
                    let timeout = if s % 7 == 3 { Duration::from_micros(50) } else { LONG };
                    match tx.send_timeout(msg(id, s), timeout) {
                        Ok(()) => sent.push(s),
                        Err(SendTimeoutError::Timeout(m)) => assert_eq!(unmsg(m.bytes()), (id, s)),
                        Err(e) => panic!("sender {id}: {e}"),
                    }
                }
                sent
            })
        })
        .collect();
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::SpinThenBlock(100));
    let mut got: HashMap<u32, Vec<u32>> = HashMap::new();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let waiter = thread::spawn(move || {
        let sent: Vec<Vec<u32>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        d.store(true, Ordering::SeqCst);
        sent
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => {
                let (id, s) = unmsg(m.bytes());
                got.entry(id).or_default().push(s);
            }
            Err(RecvTimeoutError::Timeout) if done.load(Ordering::SeqCst) => break,
            // Every sender dropped its end.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("receiver: {e}"),
        }
    }
    let sent = waiter.join().unwrap();
    for (id, sent) in sent.into_iter().enumerate() {
        assert_eq!(got.remove(&(id as u32)).unwrap_or_default(), sent, "sender {id}");
    }
    assert!(got.is_empty());
}

#[test]
fn typed_values_over_a_rendezvous_channel() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Job {
        id: u32,
        name: String,
    }
    let (chan, _c) = create();
    let mut tx = ShmTypedSender::<Job>::new(chan.sender().unwrap());
    let mut rx = ShmTypedReceiver::<Job>::new(chan.receiver().unwrap());
    let r = thread::spawn(move || (0..10).map(|_| rx.recv_timeout(LONG).unwrap()).collect::<Vec<_>>());
    for id in 0..10 {
        tx.send_timeout(Job { id, name: format!("job {id}") }, LONG).unwrap();
    }
    let got = r.join().unwrap();
    assert_eq!(got, (0..10).map(|id| Job { id, name: format!("job {id}") }).collect::<Vec<_>>());
    // A value that does not fit is handed back.
    let big = Job { id: 1, name: "x".repeat(100) };
    match tx.try_send(big) {
        Err(TrySendError::TooLarge { msg, .. }) => assert_eq!(msg.id, 1),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- processes

/// Starts a child in `role` and waits for its `ready` line.
fn spawn(role: &str) -> Kid {
    let mut child = role_command(ROLE, role).stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let kid = Kid(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // libtest prints "test child_main ... " before the child's output.
            if line.trim_end().ends_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(LONG).expect("the child never said ready");
    kid
}

fn ready() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
}

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let args: Vec<&str> = role.split(' ').collect();
    let chan = ShmChannel::open(args[1]).unwrap();
    match args[0] {
        // send NAME ID COUNT: sends COUNT messages, each with a long timeout.
        "send" => {
            let id: u32 = args[2].parse().unwrap();
            let count: u32 = args[3].parse().unwrap();
            let mut tx = chan.sender().unwrap().with_wait(MODES[id as usize % 3]);
            ready();
            for s in 0..count {
                tx.send_timeout(msg(id, s), LONG).unwrap();
            }
        }
        // offer NAME: offers one message and waits (to be killed).
        "offer" => {
            let mut tx = chan.sender().unwrap().with_wait(WaitMode::Block);
            ready();
            let _ = tx.send_timeout(msg(9, 9), LONG);
        }
        // take NAME: waits in recv (to be killed).
        "take" => {
            let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Block);
            ready();
            loop {
                let _ = rx.recv_timeout(LONG);
            }
        }
        other => panic!("unknown role {other:?}"),
    }
    std::process::exit(0);
}

/// Three sender processes at once, one receiver (this process): every
/// message arrives once, in each sender's order, and each sender exits
/// (its sends returned) only after the receiver took its last message.
#[test]
fn sender_processes_rendezvous_with_a_receiver() {
    let (chan, _c) = create();
    let n = chan.segment().name().to_owned();
    let per = if cfg!(debug_assertions) { 500 } else { 5000 };
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::SpinThenBlock(200));
    let mut kids: Vec<Kid> = (0..3).map(|id| spawn(&format!("send {n} {id} {per}"))).collect();
    let mut next = [0u32; 3];
    for _ in 0..3 * per {
        let m = rx.recv_timeout(LONG).unwrap();
        let (id, s) = unmsg(m.bytes());
        assert_eq!(s, next[id as usize], "sender {id} out of order");
        next[id as usize] += 1;
    }
    for k in &mut kids {
        assert_eq!(k.code_within(LONG), 0);
    }
    assert_eq!(next, [per; 3]);
    // Every sender is gone: nothing more, and Disconnected.
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
}

/// A sender waiting for a receiver that is killed gets `Disconnected`
/// (its message handed back) within bounded time.
#[test]
fn a_killed_receiver_disconnects_a_waiting_sender() {
    let (chan, _c) = create();
    let n = chan.segment().name().to_owned();
    let mut kid = spawn(&format!("take {n}"));
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::Block);
    // The receiver takes one.
    tx.send_timeout(&b"first"[..], LONG).unwrap();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        kid.0.kill().unwrap();
        let _ = kid.0.wait();
        Instant::now()
    });
    // It takes more while it lives; once killed, the next send fails.
    let t0 = Instant::now();
    let err = loop {
        match tx.send_timeout(&b"more"[..], LONG) {
            Ok(()) => assert!(t0.elapsed() < LONG),
            Err(e) => break e,
        }
    };
    let killed = killer.join().unwrap();
    match err {
        SendTimeoutError::Disconnected(m) => assert_eq!(m.bytes(), b"more"),
        other => panic!("{other:?}"),
    }
    assert!(killed.elapsed() < Duration::from_secs(2), "noticed after {:?}", killed.elapsed());
}

/// A receiver waiting for senders gets `Disconnected` once the only sender
/// process is killed mid-offer (having received its offer, or not).
#[test]
fn a_killed_sender_disconnects_a_waiting_receiver_and_frees_its_slot() {
    let (chan, _c) = create();
    let n = chan.segment().name().to_owned();
    let mut kid = spawn(&format!("offer {n}"));
    let until = Instant::now() + LONG;
    while chan.is_empty() {
        assert!(Instant::now() < until, "the offer never appeared");
        thread::sleep(Duration::from_millis(1));
    }
    kid.0.kill().unwrap();
    let _ = kid.0.wait();
    let killed = Instant::now();
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Block);
    let mut got = 0;
    loop {
        match rx.recv_timeout(LONG) {
            // A dead sender's unreported message may be delivered, at most once.
            Ok(m) => {
                assert_eq!(unmsg(m.bytes()), (9, 9));
                got += 1;
                assert_eq!(got, 1);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(killed.elapsed() < Duration::from_secs(2), "noticed after {:?}", killed.elapsed());
    // The dead sender's slot is free again: a new sender and receiver work.
    let mut tx = chan.sender().unwrap();
    let r = thread::spawn(move || rx.recv_timeout(LONG).map(|m| m.bytes().to_vec()));
    tx.send_timeout(&b"after"[..], LONG).unwrap();
    assert_eq!(r.join().unwrap().unwrap(), b"after");
    assert!(chan.is_empty());
}

/// Random bytes written over the offer table while a sender and a
/// receiver work: every call returns within its timeout.
#[test]
fn random_bytes_over_the_offer_table() {
    use proptest::prelude::*;
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 16, ..Default::default() });
    let strategy = prop::collection::vec((0usize..4096, prop::collection::vec(any::<u8>(), 1..16)), 1..40);
    runner
        .run(&strategy, |writes| {
            let (chan, _c) = create();
            support::scribble_under_traffic(&chan, &writes, 64, |s| msg(1, s));
            Ok(())
        })
        .unwrap();
}

/// A receiver that dies while taking an offer (forged here: the offer's
/// state word is switched to "taking" by a pid that is dead) leaves it to
/// be offered again: the waiting sender's periodic check undoes the claim
/// and a live receiver gets the message; the sender's `send` returns `Ok`
/// only then.
#[test]
fn an_offer_half_taken_by_a_dead_receiver_is_offered_again() {
    let (chan, _c) = create();
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::Block);
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Block);
    let s = thread::spawn(move || tx.send_timeout(&b"again"[..], LONG).map_err(|e| e.to_string()));
    let until = Instant::now() + LONG;
    while chan.is_empty() {
        assert!(Instant::now() < until, "the offer never appeared");
        thread::sleep(Duration::from_millis(1));
    }
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    // Offer slots start at user offset 704, 128 bytes each for 64-byte
    // messages; the state word is (pid << 32) | kind, kind 2 = offered,
    // 3 = taking.
    let seg = chan.segment();
    let mut forged = false;
    for i in 0..32 {
        let w = seg.atomic_u64(Offset::new(704 + 128 * i)).unwrap();
        let cur = w.load(Ordering::Acquire);
        if cur as u32 == 2 {
            let taking = (u64::from(dead_pid) << 32) | 3;
            forged = w.compare_exchange(cur, taking, Ordering::AcqRel, Ordering::Acquire).is_ok();
            break;
        }
    }
    assert!(forged, "no offer found to forge");
    assert!(chan.is_empty(), "a taken offer is not on offer");
    // Within a liveness check or two the sender offers it again.
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"again");
    s.join().unwrap().unwrap();
}
