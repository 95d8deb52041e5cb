//! Handles inside messages (`SCM_RIGHTS`): a receiver, a connection and a
//! plain descriptor travel to a child over an inherited connection.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use ipckit::spawn::{self, Inherit};
use ipckit::{pipe, Capacity, Connection, HandleKind, Message, Receiver, RecvTimeoutError, SendTimeoutError};
use ipckit::{SocketKind, TrySendError};

use super::harness::{report, spawn, Kid, TempDir, LONG};

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.bytes()).into_owned()
}

/// A child in `role` with one end of a `kind` socket pair inherited as "ctl"; the other end.
fn child_with_ctl(role: &str, kind: SocketKind) -> (Kid, Connection) {
    let (mine, theirs) = Connection::pair(kind).unwrap();
    let mut kit = Inherit::new();
    kit.pass("ctl", theirs).unwrap();
    (spawn(role, &[], kit), mine)
}

/// Child: takes a receiver out of the first message on "ctl", drains it, and
/// sends back what it got and how the stream ended.
pub(super) fn child_take_receiver() {
    let mut ctl: Connection = spawn::inherited("ctl").expect("inherited ctl");
    let mut msg = ctl.recv_timeout(LONG).expect("recv on ctl");
    let kinds: Vec<String> = msg.handles().iter().map(|h| format!("{:?}", h.kind())).collect();
    report(format!("message {} with {}", text(&msg), kinds.join(",")));
    let mut rx: Receiver = msg.take().expect("take the receiver");
    let mut got = Vec::new();
    let end = loop {
        match rx.recv_timeout(LONG) {
            Ok(m) => got.push(text(&m)),
            Err(RecvTimeoutError::Disconnected) => break "Disconnected".to_owned(),
            Err(e) => break format!("{e:?}"),
        }
    };
    ctl.send_timeout(format!("{}|{end}", got.join(",")), LONG).expect("send on ctl");
}

#[test]
fn a_receiver_moves_to_a_child_mid_stream() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        for cap in [Capacity::Kernel, Capacity::Bounded(2)] {
            let (mut kid, mut ctl) = child_with_ctl("scm-receiver", kind);
            let (mut tx, mut rx) = pipe::channel(cap).unwrap();
            // Two messages in, one taken: the second may already sit in the
            // receiver's buffer and must travel with it.
            tx.send_timeout("m0", LONG).unwrap();
            tx.send_timeout("m1", LONG).unwrap();
            assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"m0");
            ctl.send_timeout(Message::new("here").with(rx).unwrap(), LONG).unwrap();
            assert_eq!(kid.expect("message"), "here with Receiver", "{kind:?} {cap:?}");
            for i in 2..10 {
                tx.send_timeout(format!("m{i}"), LONG)
                    .unwrap_or_else(|e| panic!("{kind:?} {cap:?} {i}: {e:?}"));
            }
            drop(tx);
            let back = ctl.recv_timeout(LONG).unwrap();
            assert_eq!(text(&back), "m1,m2,m3,m4,m5,m6,m7,m8,m9|Disconnected", "{kind:?} {cap:?}");
            kid.wait_success();
        }
    }
}

/// Child: takes a descriptor out of the first message on "ctl" and writes to it.
pub(super) fn child_take_fd() {
    let mut ctl: Connection = spawn::inherited("ctl").expect("inherited ctl");
    let mut msg = ctl.recv_timeout(LONG).expect("recv on ctl");
    let kinds: Vec<String> = msg.handles().iter().map(|h| format!("{:?}", h.kind())).collect();
    report(format!("message {} with {}", text(&msg), kinds.join(",")));
    let fd: OwnedFd = msg.take().expect("take the descriptor");
    let mut file = File::from(fd);
    write!(file, "written by child {}", std::process::id()).expect("write");
    drop(file);
    ctl.send_timeout("written", LONG).expect("send on ctl");
}

#[test]
fn a_file_descriptor_moves_to_a_child() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let dir = TempDir::new("scm-fd");
        let path = dir.join("out.txt");
        let (mut kid, mut ctl) = child_with_ctl("scm-fd", kind);
        let file = File::create(&path).unwrap();
        ctl.send_timeout(Message::new("file").with(OwnedFd::from(file)).unwrap(), LONG).unwrap();
        assert_eq!(kid.expect("message"), format!("file with {:?}", HandleKind::Fd));
        assert_eq!(ctl.recv_timeout(LONG).unwrap().bytes(), b"written");
        kid.wait_success();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("written by child {}", kid.id()), "{kind:?}");
    }
}

/// Child: takes a connection out of the first message on "ctl" and answers
/// everything on it in upper case until the parent hangs up.
pub(super) fn child_take_connection() {
    let mut ctl: Connection = spawn::inherited("ctl").expect("inherited ctl");
    let mut msg = ctl.recv_timeout(LONG).expect("recv on ctl");
    let mut conn: Connection = msg.take().expect("take the connection");
    drop(ctl);
    loop {
        match conn.recv_timeout(LONG) {
            Ok(m) => conn.send_timeout(m.bytes().to_ascii_uppercase(), LONG).expect("send"),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("recv: {e:?}"),
        }
    }
    report("hung up");
}

#[test]
fn a_connection_moves_to_a_child() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let (mut kid, mut ctl) = child_with_ctl("scm-conn", kind);
        let (mut mine, theirs) = Connection::pair(kind).unwrap();
        ctl.send_timeout(Message::new("conn").with(theirs).unwrap(), LONG).unwrap();
        // The child closes its end of ctl once it has the new connection.
        assert!(matches!(ctl.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
        for word in ["alpha", "beta", "gamma"] {
            mine.send_timeout(word, LONG).unwrap();
            assert_eq!(mine.recv_timeout(LONG).unwrap().bytes(), word.to_ascii_uppercase().as_bytes());
        }
        drop(mine);
        assert_eq!(kid.report(), "hung up");
        kid.wait_success();
    }
}

#[test]
fn handles_over_a_pipe_are_an_error_not_a_crash() {
    let with_fd = || Message::new("with fd").with(OwnedFd::from(File::open("/dev/null").unwrap())).unwrap();

    let (mut a, mut b) = pipe::duplex().unwrap();
    match a.send_timeout(with_fd(), LONG) {
        Err(SendTimeoutError::Io { msg: mut back, source }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::Unsupported, "{source}");
            // The message, handle and all, is handed back.
            assert_eq!(back.bytes(), b"with fd");
            back.take::<OwnedFd>().expect("the descriptor is handed back");
        }
        other => panic!("sending a handle over a pipe: {other:?}"),
    }
    a.send_timeout("still works", LONG).unwrap();
    assert_eq!(b.recv_timeout(LONG).unwrap().bytes(), b"still works");

    let (mut tx, mut rx) = pipe::channel(Capacity::Kernel).unwrap();
    match tx.try_send(with_fd()) {
        Err(TrySendError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::Unsupported),
        other => panic!("sending a handle over a pipe channel: {other:?}"),
    }
    tx.send_timeout("still works", LONG).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"still works");
}

/// Child: takes every descriptor out of the first message on "ctl" and
/// writes its index into each (they are pipe write ends).
pub(super) fn child_take_many_fds() {
    let mut ctl: Connection = spawn::inherited("ctl").expect("inherited ctl");
    let mut msg = ctl.recv_timeout(LONG).expect("recv on ctl");
    let n = msg.handles().len();
    for i in 0..n {
        let fd: OwnedFd = msg.take().expect("take a descriptor");
        write!(File::from(fd), "{i}").expect("write");
    }
    report(format!("took {n}"));
}

#[test]
fn a_message_carries_sixty_four_descriptors_but_not_more() {
    const MAX: usize = 64;
    let pipes: Vec<(OwnedFd, OwnedFd)> =
        (0..=MAX).map(|_| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()).collect();
    let (mut kid, mut ctl) = child_with_ctl("scm-many-fds", SocketKind::SeqPacket);
    let with = |n: usize| {
        pipes[..n].iter().fold(Message::new("many"), |m, (_, w)| m.with(w.try_clone().unwrap()).unwrap())
    };
    // One over the limit: an error, and the message comes back whole.
    match ctl.send_timeout(with(MAX + 1), LONG) {
        Err(SendTimeoutError::Io { msg, source }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{source}");
            assert_eq!(msg.handles().len(), MAX + 1);
        }
        other => panic!("a message with {} handles: {other:?}", MAX + 1),
    }
    ctl.send_timeout(with(MAX), LONG).unwrap();
    assert_eq!(kid.expect("took"), MAX.to_string());
    kid.wait_success();
    for (i, (r, w)) in pipes.into_iter().enumerate() {
        drop(w);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut File::from(r), &mut got).unwrap();
        let want = if i < MAX { i.to_string() } else { String::new() };
        assert_eq!(got, want, "pipe {i}");
    }
}
