//! Flow control with several sender processes: a rendezvous channel lets no
//! send return before the receiver took that message; a bounded channel
//! lets a sender get exactly `capacity` messages ahead.

use std::time::{Duration, Instant};

use ipckit::spawn::{self, Inherit};
use ipckit::{unix, Capacity, Receiver, RecvTimeoutError, SendTimeoutError, Sender, SocketKind};

use super::harness::{param, param_num, report, spawn, Kid, TempDir, CHILD_DEADLINE, LONG};

const PER_SENDER: u32 = 20;

/// Child: connects to `SOCK` and sends `COUNT` messages "ID:i", reporting
/// "sent n" after each send returns.
pub(super) fn child_sender() {
    let kind = if param("KIND") == "stream" { SocketKind::Stream } else { SocketKind::SeqPacket };
    let id: u32 = param_num("ID");
    let count: u32 = param_num("COUNT");
    let mut tx = unix::connect_sender(param("SOCK"), kind).expect("connect_sender");
    for i in 0..count {
        tx.send_timeout(format!("{id}:{i}"), CHILD_DEADLINE).unwrap_or_else(|e| panic!("send {i}: {e:?}"));
        report(format!("sent {}", i + 1));
    }
    report("done");
}

/// One sender process and what the parent knows about it.
struct Sending {
    kid: Kid,
    /// Sends the child reported complete.
    completed: u32,
    /// Messages from it the parent received.
    received: u32,
    done: bool,
}

impl Sending {
    fn start(sock: &str, kind: SocketKind, id: u32) -> Self {
        let kind = if kind == SocketKind::Stream { "stream" } else { "seqpacket" };
        let env =
            [("SOCK", sock), ("KIND", kind), ("ID", &id.to_string()), ("COUNT", &PER_SENDER.to_string())];
        let kid = spawn("rdv-sender", &env, Inherit::new());
        Sending { kid, completed: 0, received: 0, done: false }
    }

    fn take_report(&mut self, r: &str) {
        if r == "done" {
            self.done = true;
        } else if let Some(n) = r.strip_prefix("sent ") {
            self.completed = n.parse().expect("sent count");
        } else {
            panic!("unexpected report {r:?}");
        }
    }

    /// Takes in the reports that arrived so far.
    fn update(&mut self) {
        for r in self.kid.drain() {
            self.take_report(&r);
        }
    }

    /// Waits for the child's last report and its exit.
    fn finish(&mut self) {
        while !self.done {
            let r = self.kid.report();
            self.take_report(&r);
        }
        self.kid.wait_success();
    }
}

/// Receives one message, checking it is the next from its sender.
fn recv_next(rx: &mut Receiver, senders: &mut [Sending]) {
    let m = rx.recv_timeout(LONG).unwrap_or_else(|e| panic!("recv: {e:?}"));
    let from = m.sender_cred().map(|c| c.pid);
    let text = String::from_utf8(m.into_bytes()).unwrap();
    let (id, i) = text.split_once(':').expect("id:i");
    let (id, i): (usize, u32) = (id.parse().unwrap(), i.parse().unwrap());
    let s = &mut senders[id];
    assert_eq!(from, Some(s.kid.id()), "message {text} carries its sender's pid");
    assert_eq!(i, s.received, "sender {id}'s messages arrive in order");
    s.received += 1;
}

fn rendezvous_with_three_processes(kind: SocketKind) {
    let dir = TempDir::new("rdv");
    let sock = dir.join("rdv.sock");
    let mut rx = unix::bind_receiver(&sock, kind, Capacity::RENDEZVOUS).unwrap();
    let sock = sock.to_str().unwrap();
    let mut senders: Vec<Sending> = (0..3).map(|id| Sending::start(sock, kind, id)).collect();

    for _ in 0..10 {
        recv_next(&mut rx, &mut senders);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stop taking: no sender may get further than what was taken.
    std::thread::sleep(Duration::from_millis(500));
    senders.iter_mut().for_each(Sending::update);
    let completed: u32 = senders.iter().map(|s| s.completed).sum();
    let received: u32 = senders.iter().map(|s| s.received).sum();
    assert!(
        completed <= received + 1,
        "{kind:?}: {completed} sends returned but only {received} messages were taken"
    );
    for (id, s) in senders.iter().enumerate() {
        assert!(
            s.completed <= s.received + 1,
            "{kind:?}: sender {id}: {} sent, {} taken",
            s.completed,
            s.received
        );
    }

    while senders.iter().map(|s| s.received).sum::<u32>() < 3 * PER_SENDER {
        recv_next(&mut rx, &mut senders);
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in &mut senders {
        s.finish();
        assert!(s.done && s.completed == PER_SENDER && s.received == PER_SENDER);
    }
    assert!(rx.try_recv().is_err(), "nothing beyond the 60 messages");
}

#[test]
fn rendezvous_with_three_sender_processes_over_stream() {
    rendezvous_with_three_processes(SocketKind::Stream);
}

#[test]
fn rendezvous_with_three_sender_processes_over_seqpacket() {
    rendezvous_with_three_processes(SocketKind::SeqPacket);
}

#[test]
fn a_bounded_channel_holds_a_sender_process_at_its_capacity() {
    const CAP: u32 = 4;
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let dir = TempDir::new("bounded");
        let sock = dir.join("bounded.sock");
        let mut rx = unix::bind_receiver(&sock, kind, Capacity::Bounded(CAP as usize)).unwrap();
        let mut senders = vec![Sending::start(sock.to_str().unwrap(), kind, 0)];
        let s = &mut senders[0];
        // The sender may run ahead by the capacity without waiting for us
        // (the receiver's acceptor greets it while we are not receiving)...
        let deadline = Instant::now() + LONG;
        while s.completed < CAP && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            s.update();
        }
        assert!(s.completed >= CAP, "{kind:?}: only {} sends returned with room for {CAP}", s.completed);
        // ...and no further while we take nothing.
        std::thread::sleep(Duration::from_millis(500));
        s.update();
        assert!(
            s.completed <= s.received + CAP,
            "{kind:?}: {} sends returned with {} taken and capacity {CAP}",
            s.completed,
            s.received
        );
        while senders[0].received < PER_SENDER {
            recv_next(&mut rx, &mut senders);
        }
        let s = &mut senders[0];
        s.finish();
        assert!(s.done && s.completed == PER_SENDER);
    }
}

/// Child: sends "first", then "withdrawn" with a short timeout while nobody
/// receives, then "third"; reports each outcome.
pub(super) fn child_withdraw() {
    let mut tx = unix::connect_sender(param("SOCK"), SocketKind::Stream).expect("connect_sender");
    tx.send_timeout("first", LONG).expect("send first");
    report("sent first");
    match tx.send_timeout("withdrawn", Duration::from_millis(300)) {
        Err(SendTimeoutError::Timeout(m)) => {
            report(format!("withdrawn Timeout {}", String::from_utf8_lossy(m.bytes())))
        }
        other => report(format!("withdrawn {other:?}")),
    }
    tx.send_timeout("third", LONG).expect("send third");
    report("sent third");
}

#[test]
fn a_rendezvous_send_that_times_out_is_never_delivered() {
    let dir = TempDir::new("rdv-cancel");
    let sock = dir.join("rdv.sock");
    let mut rx = unix::bind_receiver(&sock, SocketKind::Stream, Capacity::RENDEZVOUS).unwrap();
    let mut kid = spawn("rdv-withdraw", &[("SOCK", sock.to_str().unwrap())], Inherit::new());
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"first");
    assert_eq!(kid.report(), "sent first");
    // Nobody receives while the second send waits: it must time out...
    assert_eq!(kid.expect("withdrawn"), "Timeout withdrawn");
    // ...and its message must not turn up later.
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"third");
    assert_eq!(kid.report(), "sent third");
    kid.wait_success();
    assert!(matches!(rx.recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Timeout)));
}

/// Child: takes the sender "tx" and sends "c{FROM}".."c{TO - 1}" on it.
pub(super) fn child_continue() {
    let mut tx: Sender = spawn::inherited("tx").expect("inherited tx");
    for i in param_num::<u32>("FROM")..param_num("TO") {
        tx.send_timeout(format!("c{i}"), LONG).unwrap_or_else(|e| panic!("send {i}: {e:?}"));
    }
    report("done");
}

#[test]
fn a_connected_sender_moves_to_a_child_mid_stream() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        for cap in [Capacity::Kernel, Capacity::Bounded(2), Capacity::RENDEZVOUS] {
            let dir = TempDir::new("rdv-move");
            let sock = dir.join("move.sock");
            let mut rx = unix::bind_receiver(&sock, kind, cap).unwrap();
            // This process sends the first three (learning the capacity and
            // collecting credits), then hands the sender to a child.
            let first = std::thread::spawn(move || {
                let mut tx = unix::connect_sender(&sock, kind).unwrap();
                for i in 0..3 {
                    tx.send_timeout(format!("c{i}"), LONG).unwrap();
                }
                tx
            });
            for i in 0..3 {
                let m = rx.recv_timeout(LONG).unwrap_or_else(|e| panic!("{kind:?} {cap:?} c{i}: {e:?}"));
                assert_eq!(m.bytes(), format!("c{i}").as_bytes());
            }
            let tx = first.join().unwrap();
            assert_eq!(tx.capacity(), Some(cap));
            let mut kit = Inherit::new();
            kit.pass("tx", tx).unwrap();
            let mut kid = spawn("rdv-continue", &[("FROM", "3"), ("TO", "12")], kit);
            for i in 3..12 {
                let m = rx.recv_timeout(LONG).unwrap_or_else(|e| panic!("{kind:?} {cap:?} c{i}: {e:?}"));
                assert_eq!(m.bytes(), format!("c{i}").as_bytes(), "{kind:?} {cap:?}");
            }
            assert_eq!(kid.report(), "done");
            kid.wait_success();
            assert!(matches!(rx.recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Timeout)));
        }
    }
}
