//! End of stream across processes: a reader sees every message and then
//! `Disconnected`; a writer whose reader died gets `Disconnected`, not a hang
//! and not death by `SIGPIPE`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::spawn::{self, Inherit};
use ipckit::{pipe, unix, Capacity, Receiver, RecvTimeoutError, SendTimeoutError, SocketKind};

use super::harness::{param, param_num, report, spawn, TempDir, LONG};

/// Message `i`: a tag plus a body that grows, so the later ones overflow the pipe buffer.
fn message(i: usize) -> Vec<u8> {
    let mut m = format!("msg-{i}-").into_bytes();
    m.resize(m.len() + i * 997, b'a' + (i % 26) as u8);
    m
}

/// Child: receives `COUNT` messages in order, then expects the end of the stream.
/// Exit status 2: a message was wrong; 3: the end was not `Disconnected`.
pub(super) fn child_recv_n() {
    let count: usize = param_num("COUNT");
    let mut rx: Receiver = spawn::inherited("jobs").expect("inherited jobs");
    for i in 0..count {
        match rx.recv_timeout(LONG) {
            Ok(m) if m.bytes() == message(i) => {}
            Ok(m) => {
                report(format!("wrong message {i}: {} bytes", m.bytes().len()));
                std::process::exit(2);
            }
            Err(e) => {
                report(format!("error at {i}: {e:?}"));
                std::process::exit(2);
            }
        }
    }
    report(format!("received {count} in order"));
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => report("end Disconnected"),
        other => {
            report(format!("end {other:?}"));
            std::process::exit(3);
        }
    }
}

#[test]
fn a_child_receives_everything_then_disconnected() {
    const COUNT: usize = 60;
    for cap in [Capacity::Kernel, Capacity::Bounded(3), Capacity::RENDEZVOUS] {
        let (mut tx, rx) = pipe::channel(cap).unwrap();
        let mut kit = Inherit::new();
        kit.pass("jobs", rx).unwrap();
        let mut kid = spawn("eof-recv-n", &[("COUNT", &COUNT.to_string())], kit);
        for i in 0..COUNT {
            tx.send_timeout(message(i), LONG).unwrap_or_else(|e| panic!("{cap:?}: send {i}: {e:?}"));
        }
        drop(tx);
        assert_eq!(kid.expect("received"), format!("{COUNT} in order"), "{cap:?}");
        assert_eq!(kid.expect("end"), "Disconnected", "{cap:?}");
        assert_eq!(kid.wait().code(), Some(0), "{cap:?}: {}", kid.log());
    }
}

/// Child: takes the receiver, says so, and never reads.
pub(super) fn child_hold() {
    let _rx: Receiver = spawn::inherited("jobs").expect("inherited jobs");
    report("ready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn sending_to_a_killed_child_is_disconnected() {
    for cap in [Capacity::Kernel, Capacity::Bounded(2)] {
        let (mut tx, rx) = pipe::channel(cap).unwrap();
        let mut kit = Inherit::new();
        kit.pass("jobs", rx).unwrap();
        let mut kid = spawn("eof-hold", &[], kit);
        assert_eq!(kid.report(), "ready");
        kid.kill();
        // A sibling test's child may hold a copy of the read end for the
        // instant between its fork and exec, so a send may still land; the
        // pipe must report the dead reader soon after.
        let start = Instant::now();
        loop {
            match tx.send_timeout("anyone there?", LONG) {
                Ok(()) if start.elapsed() < LONG => std::thread::sleep(Duration::from_millis(10)),
                Ok(()) => panic!("{cap:?}: sends still succeed {LONG:?} after the reader was killed"),
                Err(SendTimeoutError::Disconnected(m)) => {
                    assert_eq!(m.bytes(), b"anyone there?", "the message is handed back");
                    break;
                }
                Err(e) => panic!("{cap:?}: expected Disconnected, got {e:?}"),
            }
        }
    }
}

#[test]
fn a_blocked_sender_sees_its_reader_die() {
    // Kernel: one message larger than the pipe buffer blocks the write.
    // Bounded(2): the third message waits for credit that never comes.
    // Rendezvous: the first message waits for a grant that never comes.
    let cases =
        [(Capacity::Kernel, 1 << 20, 0), (Capacity::Bounded(2), 16, 2), (Capacity::RENDEZVOUS, 16, 0)];
    for (cap, size, before) in cases {
        let (mut tx, rx) = pipe::channel(cap).unwrap();
        let mut kit = Inherit::new();
        kit.pass("jobs", rx).unwrap();
        let mut kid = spawn("eof-hold", &[], kit);
        assert_eq!(kid.report(), "ready");
        for _ in 0..before {
            tx.send_timeout(vec![0u8; size], LONG).unwrap();
        }
        let (done_tx, done) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            let r = tx.send_timeout(vec![7u8; size], Duration::from_secs(30));
            let _ = done_tx.send((r.map_err(|e| format!("{e:?}")), Instant::now()));
        });
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "{cap:?}: the send did not block although the reader takes nothing"
        );
        let killed_at = Instant::now();
        kid.kill();
        let (r, at) = done.recv_timeout(Duration::from_secs(40)).expect("the sender thread finished");
        sender.join().unwrap();
        match r {
            Err(e) => assert!(e.starts_with("SendTimeoutError::Disconnected"), "{cap:?}: {e}"),
            Ok(()) => panic!("{cap:?}: a send to a dead reader succeeded"),
        }
        let took = at.saturating_duration_since(killed_at);
        assert!(took < LONG, "{cap:?}: the send noticed the death only after {took:?}");
    }
}

/// Child: binds a channel receiver at `SOCK` (`KIND`, capacity `CAP`, 0 for
/// rendezvous), says so, and never receives.
pub(super) fn child_bind_hold() {
    let kind = if param("KIND") == "stream" { SocketKind::Stream } else { SocketKind::SeqPacket };
    let _rx = unix::bind_receiver(param("SOCK"), kind, Capacity::Bounded(param_num("CAP"))).expect("bind");
    report("ready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_socket_sender_blocked_on_a_receiver_process_sees_it_die() {
    for (kind, kind_name) in [(SocketKind::Stream, "stream"), (SocketKind::SeqPacket, "seqpacket")] {
        for cap in ["0", "2"] {
            let dir = TempDir::new("eof-sock");
            let sock = dir.join("rx.sock");
            let env = [("SOCK", sock.to_str().unwrap()), ("KIND", kind_name), ("CAP", cap)];
            let mut kid = spawn("eof-bind-hold", &env, Inherit::new());
            assert_eq!(kid.report(), "ready");
            // The receiver never receives: a bounded sender fills its window,
            // then waits for credit; a rendezvous sender waits for a grant.
            let mut tx = unix::connect_sender(&sock, kind).unwrap();
            for i in 0..cap.parse().unwrap() {
                tx.send_timeout(format!("fill {i}"), LONG).unwrap();
            }
            let (done_tx, done) = mpsc::channel();
            let sender = std::thread::spawn(move || {
                let r = tx.send_timeout("hello?", Duration::from_secs(30));
                let _ = done_tx.send((r.map_err(|e| format!("{e:?}")), Instant::now()));
            });
            if let Ok(early) = done.recv_timeout(Duration::from_millis(300)) {
                panic!(
                    "{kind:?} cap {cap}: the send did not wait for the receiver: {early:?}\n{}",
                    kid.log()
                );
            }
            let killed_at = Instant::now();
            kid.kill();
            let (r, at) = done.recv_timeout(Duration::from_secs(40)).expect("the sender thread finished");
            sender.join().unwrap();
            match r {
                Err(e) => assert!(e.starts_with("SendTimeoutError::Disconnected"), "{kind:?} cap {cap}: {e}"),
                Ok(()) => panic!("{kind:?} cap {cap}: a send to a dead receiver succeeded"),
            }
            let took = at.saturating_duration_since(killed_at);
            assert!(took < LONG, "{kind:?} cap {cap}: the send noticed the death only after {took:?}");
        }
    }
}
