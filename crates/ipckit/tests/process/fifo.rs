//! Named pipes: opening blocks until the other side opens, as the kernel's
//! does, and the `_timeout` opens give up cleanly.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ipckit::{fifo, Error, RecvTimeoutError};

use super::harness::{param, param_num, report, spawn, TempDir, LONG};

/// How long the parent waits before opening its end.
const DELAY: Duration = Duration::from_millis(400);
/// The least blocking time a child must have seen (DELAY less generous slack).
const MIN_BLOCKED_MS: u128 = 300;

/// Child: opens the FIFO at `FIFO` for reading (blocking) and reports how long that took.
pub(super) fn child_reader() {
    let path = param("FIFO");
    report("opening");
    let start = Instant::now();
    let mut rx = fifo::open_receiver(&path).expect("open_receiver");
    report(format!("opened-after-ms {}", start.elapsed().as_millis()));
    let m = rx.recv_timeout(LONG).expect("recv");
    report(format!("got {}", String::from_utf8_lossy(m.bytes())));
    match rx.recv_timeout(LONG) {
        Err(RecvTimeoutError::Disconnected) => report("end Disconnected"),
        other => report(format!("end {other:?}")),
    }
}

/// Child: opens the FIFO at `FIFO` for writing (blocking) and reports how long that took.
pub(super) fn child_writer() {
    let path = param("FIFO");
    report("opening");
    let start = Instant::now();
    let mut tx = fifo::open_sender(&path).expect("open_sender");
    report(format!("opened-after-ms {}", start.elapsed().as_millis()));
    tx.send_timeout("from the child", LONG).expect("send");
}

fn make_fifo(dir: &TempDir) -> String {
    let path = dir.join("fifo");
    fifo::create(&path, 0o600).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "the FIFO has exactly the mode asked for");
    path.to_str().unwrap().to_owned()
}

#[test]
fn opening_for_reading_blocks_until_a_writer_opens() {
    let dir = TempDir::new("fifo-r");
    let path = make_fifo(&dir);
    let mut kid = spawn("fifo-reader", &[("FIFO", &path)], Default::default());
    assert_eq!(kid.report(), "opening");
    std::thread::sleep(DELAY);
    assert!(kid.drain().is_empty(), "the reader's open returned while no writer had the FIFO open");
    let mut tx = fifo::open_sender_timeout(&path, LONG).unwrap();
    tx.send_timeout("through the fifo", LONG).unwrap();
    drop(tx);
    let blocked: u128 = kid.expect("opened-after-ms").parse().unwrap();
    assert!(blocked >= MIN_BLOCKED_MS, "the open blocked only {blocked} ms");
    assert_eq!(kid.expect("got"), "through the fifo");
    assert_eq!(kid.expect("end"), "Disconnected");
    kid.wait_success();
}

#[test]
fn opening_for_writing_blocks_until_a_reader_opens() {
    let dir = TempDir::new("fifo-w");
    let path = make_fifo(&dir);
    let mut kid = spawn("fifo-writer", &[("FIFO", &path)], Default::default());
    assert_eq!(kid.report(), "opening");
    std::thread::sleep(DELAY);
    assert!(kid.drain().is_empty(), "the writer's open returned while no reader had the FIFO open");
    let mut rx = fifo::open_receiver_timeout(&path, LONG).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"from the child");
    let blocked: u128 = kid.expect("opened-after-ms").parse().unwrap();
    assert!(blocked >= MIN_BLOCKED_MS, "the open blocked only {blocked} ms");
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    kid.wait_success();
}

#[test]
fn opens_without_a_peer_time_out() {
    let dir = TempDir::new("fifo-t");
    let path = make_fifo(&dir);
    let timeout = Duration::from_millis(300);
    let slack = Duration::from_secs(3);

    let start = Instant::now();
    let r = fifo::open_sender_timeout(&path, timeout);
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::Timeout)), "open_sender_timeout without a reader: {r:?}");
    assert!(took >= timeout - Duration::from_millis(50), "gave up early, after {took:?}");
    assert!(took < timeout + slack, "took {took:?} to time out");

    let start = Instant::now();
    let r = fifo::open_receiver_timeout(&path, timeout);
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::Timeout)), "open_receiver_timeout without a writer: {r:?}");
    assert!(took >= timeout - Duration::from_millis(50), "gave up early, after {took:?}");
    assert!(took < timeout + slack, "took {took:?} to time out");

    // The timed-out opens left nothing behind: a real pair still works.
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let mut rx = fifo::open_receiver_timeout(&reader_path, LONG).unwrap();
        let m = rx.recv_timeout(LONG).unwrap();
        (m.into_bytes(), rx.recv_timeout(LONG).unwrap_err())
    });
    let mut tx = fifo::open_sender_timeout(&path, LONG).unwrap();
    tx.send_timeout("after the timeouts", LONG).unwrap();
    drop(tx);
    let (got, end) = reader.join().unwrap();
    assert_eq!(got, b"after the timeouts");
    assert!(matches!(end, RecvTimeoutError::Disconnected), "{end:?}");
}

#[test]
fn a_timed_out_open_is_not_fooled_by_processes_spawned_meanwhile() {
    // A child being spawned by another thread holds copies of every
    // descriptor this process has, close-on-exec or not, until it execs,
    // including the write end a timed-out open uses to release its helper:
    // the open must still see that no writer came. (Each round uses a fresh
    // FIFO: on a reused one, such a lingering copy from the previous round
    // is a writer as far as the kernel is concerned.)
    let dir = TempDir::new("fifo-spawns");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("true").status();
            }
        })
    };
    let mut wrong = Vec::new();
    for round in 0..40 {
        let path = dir.join(&format!("fifo-{round}"));
        fifo::create(&path, 0o600).unwrap();
        match fifo::open_receiver_timeout(&path, Duration::from_millis(20)) {
            Err(Error::Timeout) => {}
            Err(e) => wrong.push(format!("{e:?}")),
            Ok(_) => wrong.push("Ok".to_owned()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.join().unwrap();
    assert!(wrong.is_empty(), "{} of 40 opens without a writer did not time out: {wrong:?}", wrong.len());
}

/// The message writer `id` sends as its `i`th: under `PIPE_BUF` with its
/// frame header, so writes from several processes never interleave.
fn many_message(id: u32, i: u32) -> Vec<u8> {
    let mut m = format!("{id}:{i}:").into_bytes();
    m.resize(1000 + (i as usize * 37) % 2000, b'a' + id as u8);
    m
}

/// Child: opens the FIFO at `FIFO` for writing and sends `COUNT` messages as writer `ID`.
pub(super) fn child_many_writer() {
    let id: u32 = param_num("ID");
    let count: u32 = param_num("COUNT");
    let mut tx = fifo::open_sender_timeout(param("FIFO"), LONG).expect("open_sender");
    for i in 0..count {
        tx.send_timeout(many_message(id, i), LONG).unwrap_or_else(|e| panic!("send {i}: {e:?}"));
    }
    report("done");
}

#[test]
fn several_writer_processes_share_one_fifo() {
    const WRITERS: u32 = 3;
    const COUNT: u32 = 200;
    let dir = TempDir::new("fifo-many");
    let path = make_fifo(&dir);
    // This process holds a write end too, so the reader sees no end of
    // stream between one writer closing and the next opening.
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || fifo::open_receiver_timeout(&reader_path, LONG).unwrap());
    let own = fifo::open_sender_timeout(&path, LONG).unwrap();
    let mut rx = reader.join().unwrap();
    let mut kids: Vec<_> = (0..WRITERS)
        .map(|id| {
            let env = [("FIFO", path.as_str()), ("ID", &id.to_string()), ("COUNT", &COUNT.to_string())];
            spawn("fifo-many", &env, Default::default())
        })
        .collect();
    let mut next = [0u32; WRITERS as usize];
    for _ in 0..WRITERS * COUNT {
        let m = rx.recv_timeout(LONG).unwrap_or_else(|e| panic!("recv after {next:?}: {e:?}"));
        let text = String::from_utf8_lossy(m.bytes());
        let mut parts = text.splitn(3, ':');
        let id: u32 = parts.next().unwrap().parse().unwrap();
        let i: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(i, next[id as usize], "writer {id}'s messages arrive in order");
        assert_eq!(m.bytes(), many_message(id, i), "message {id}:{i} arrives whole");
        next[id as usize] += 1;
    }
    for kid in &mut kids {
        assert_eq!(kid.report(), "done");
        kid.wait_success();
    }
    drop(own);
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
}
