//! System V-style message queues: a differential test against the kernel's
//! own System V queue, selection semantics, blocking, permissions, removal,
//! persistence and crashes in the middle of an operation.

use std::process::{Child, Command};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::perm::Access;
use ipckit::sysv::{MessageQueue, QueueConfig, QueueSet, Select};
use ipckit::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

mod support;

use support::{unique_name, Cleanup};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SYSV_MSGQ_ROLE";

fn name(tag: &str) -> String {
    unique_name("t-mq", tag)
}

/// The kernel's System V queue, driven through libc (the reference).
struct Kernel(i32);

impl Kernel {
    fn new(qbytes: usize) -> Kernel {
        // SAFETY: msgget takes integers; IPC_PRIVATE makes a fresh queue.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, 0o600 | libc::IPC_CREAT) };
        assert!(id >= 0, "msgget: {}", std::io::Error::last_os_error());
        let k = Kernel(id);
        k.set_qbytes(qbytes);
        k
    }

    fn stat(&self) -> libc::msqid_ds {
        // SAFETY: msqid_ds is plain data (all-zero is valid); msgctl fills it.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: `ds` is a valid, writable msqid_ds.
        let r = unsafe { libc::msgctl(self.0, libc::IPC_STAT, &mut ds) };
        assert_eq!(r, 0, "IPC_STAT: {}", std::io::Error::last_os_error());
        ds
    }

    fn set_qbytes(&self, qbytes: usize) {
        let mut ds = self.stat();
        ds.msg_qbytes = qbytes as _;
        // SAFETY: `ds` is a valid msqid_ds from IPC_STAT.
        let r = unsafe { libc::msgctl(self.0, libc::IPC_SET, &mut ds) };
        assert_eq!(r, 0, "IPC_SET: {}", std::io::Error::last_os_error());
    }

    /// msgsnd with IPC_NOWAIT: Ok, or the errno.
    fn send(&self, mtype: i64, data: &[u8]) -> Result<(), i32> {
        let mut buf = mtype.to_ne_bytes().to_vec();
        buf.extend_from_slice(data);
        // SAFETY: `buf` holds a long followed by `data.len()` bytes, as msgsnd reads.
        let r = unsafe { libc::msgsnd(self.0, buf.as_ptr().cast(), data.len(), libc::IPC_NOWAIT) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap())
        }
    }

    /// msgrcv with IPC_NOWAIT.
    fn recv(&self, sel: Select, max: usize) -> Result<(i64, Vec<u8>), i32> {
        let mut buf = vec![0u8; 8 + max];
        let mut flags = libc::IPC_NOWAIT;
        if sel.except {
            flags |= libc::MSG_EXCEPT;
        }
        if sel.truncate {
            flags |= libc::MSG_NOERROR;
        }
        // SAFETY: `buf` has room for a long and `max` bytes, as msgrcv writes.
        let r = unsafe { libc::msgrcv(self.0, buf.as_mut_ptr().cast(), max, sel.mtype, flags) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap());
        Ok((mtype, buf[8..8 + r as usize].to_vec()))
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID ignores the buffer argument.
        unsafe { libc::msgctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// A small deterministic generator (xorshift64*), so the test is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn the_same_operations_give_the_same_results_as_the_kernel() {
    let n = name("diff");
    let _c = Cleanup(n.clone());
    // Texts up to msgmax (8192) and capacities up to msgmnb (16384), so
    // that long texts fill the queue, cross the end of ipckit's arena and
    // get drained into its list by selective receives.
    let config = QueueConfig { capacity: 2048, max_message: 8192, max_capacity: 16384, mode: 0o600 };
    let ours = MessageQueue::create(&n, config).unwrap();
    let theirs = Kernel::new(2048);
    let mut rng = Rng(0x1d1f_f5ee_d0ff_1ce5);
    // Sends, full, receives, empty, too long, capacity changes, texts of
    // over 1 KiB received.
    let mut counts = [0usize; 7];
    for step in 0..20_000 {
        match rng.below(10) {
            0..=4 => {
                let mtype = 1 + rng.below(5) as i64;
                let big = rng.below(4) == 0;
                let len = rng.below(if big { 8193 } else { 200 }) as usize;
                let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ step) as u8).collect();
                let k = theirs.send(mtype, &data);
                let o = ours.try_send(mtype, &data);
                match (&k, &o) {
                    (Ok(()), Ok(())) => counts[0] += 1,
                    (Err(libc::EAGAIN), Err(TrySendError::Full(_))) => counts[1] += 1,
                    _ => panic!("step {step}: send({mtype}, {len}) kernel {k:?} ipckit {o:?}"),
                }
            }
            5..=8 => {
                let t = rng.below(11) as i64 - 5;
                let sel =
                    Select { mtype: t, except: t > 0 && rng.below(3) == 0, truncate: rng.below(3) == 0 };
                let limit = if rng.below(3) == 0 { 8193 } else { 250 };
                let max = rng.below(limit) as usize;
                let k = theirs.recv(sel, max);
                let o = ours.try_recv(sel, max);
                match (&k, &o) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(a, b, "step {step}: recv({sel:?}, {max})");
                        counts[2] += 1;
                        counts[6] += usize::from(a.1.len() > 1024);
                    }
                    (Err(libc::ENOMSG), Err(TryRecvError::Empty)) => counts[3] += 1,
                    (Err(libc::E2BIG), Err(TryRecvError::Frame(ipckit::FrameError::TooLarge { .. }))) => {
                        counts[4] += 1
                    }
                    _ => panic!("step {step}: recv({sel:?}, {max}) kernel {k:?} ipckit {o:?}"),
                }
            }
            _ => {
                let cap = 256 + rng.below(16384 - 256) as usize;
                theirs.set_qbytes(cap);
                ours.set(QueueSet { capacity: Some(cap), ..QueueSet::default() }).unwrap();
                counts[5] += 1;
            }
        }
        let (k, o) = (theirs.stat(), ours.stat().unwrap());
        assert_eq!(
            (k.msg_qnum as usize, k.__msg_cbytes as usize, k.msg_qbytes as usize),
            (o.messages, o.bytes, o.capacity),
            "step {step}: statistics differ"
        );
    }
    // Every kind of outcome happened, so the comparison meant something.
    assert!(counts.iter().all(|&c| c > 100), "outcomes: {counts:?}");
}

/// The same comparison with tiny messages, so that the ring's slots run
/// out long before `msg_qbytes` does (the path where a sender drains the
/// ring into the locked list) and the message-count limit is reached.
#[test]
fn tiny_messages_give_the_same_results_as_the_kernel() {
    let n = name("difftiny");
    let _c = Cleanup(n.clone());
    let config = QueueConfig { capacity: 300, max_message: 64, max_capacity: 1024, mode: 0o600 };
    let ours = MessageQueue::create(&n, config).unwrap();
    let theirs = Kernel::new(300);
    let mut rng = Rng(0x7e57_0f5a_11ed_5eed);
    let mut counts = [0usize; 4];
    for step in 0..10_000u64 {
        if rng.below(100) < 55 {
            let mtype = 1 + rng.below(3) as i64;
            let data = vec![step as u8; rng.below(3) as usize];
            match (theirs.send(mtype, &data), ours.try_send(mtype, &data)) {
                (Ok(()), Ok(())) => counts[0] += 1,
                (Err(libc::EAGAIN), Err(TrySendError::Full(_))) => counts[1] += 1,
                (k, o) => panic!("step {step}: send kernel {k:?} ipckit {o:?}"),
            }
        } else {
            let t = rng.below(7) as i64 - 3;
            let sel = Select { mtype: t, except: t > 0 && rng.below(4) == 0, truncate: true };
            match (theirs.recv(sel, 8), ours.try_recv(sel, 8)) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "step {step}: recv({sel:?})");
                    counts[2] += 1;
                }
                (Err(libc::ENOMSG), Err(TryRecvError::Empty)) => counts[3] += 1,
                (k, o) => panic!("step {step}: recv({sel:?}) kernel {k:?} ipckit {o:?}"),
            }
        }
        let (k, o) = (theirs.stat(), ours.stat().unwrap());
        assert_eq!(
            (k.msg_qnum as usize, k.__msg_cbytes as usize),
            (o.messages, o.bytes),
            "step {step}: statistics differ"
        );
    }
    assert!(counts.iter().all(|&c| c > 100), "outcomes: {counts:?}");
}

/// Many senders and receivers at once (threads of one process and other
/// processes alike go through the same shared memory): every message
/// arrives exactly once, each receiver sees each sender's messages of a
/// type in the order they were sent, and the counts end at zero.
#[test]
fn concurrent_senders_and_receivers_lose_and_duplicate_nothing() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 20_000;
    let n = name("stress");
    let _c = Cleanup(n.clone());
    // Small: the queue is full, the ring wraps and drains all the time.
    let config = QueueConfig { capacity: 2048, max_message: 256, max_capacity: 2048, mode: 0o600 };
    let q = Arc::new(MessageQueue::create(&n, config).unwrap());
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..EACH {
                    let mtype = 1 + ((i + s) % 3) as i64;
                    // Mostly inline texts; every 50th too long for a ring slot.
                    let len = if i % 50 == 0 { 200 } else { 16 + (i % 40) as usize };
                    let mut text = vec![0u8; len];
                    text[..8].copy_from_slice(&(s << 32 | i).to_le_bytes());
                    if i % 7 == 0 {
                        while let Err(e) = q.try_send(mtype, &text) {
                            assert!(matches!(e, TrySendError::Full(_)), "{e}");
                            thread::yield_now();
                        }
                    } else {
                        q.send_timeout(mtype, &text, LONG).unwrap();
                    }
                }
            })
        })
        .collect();
    // Receivers: one takes anything, one type 2, one the lowest type <= 3,
    // one anything but type 1.
    let selects = [Select::ANY, Select::of(2), Select::of(-3), Select::except(1)];
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receivers: Vec<_> = selects
        .into_iter()
        .map(|sel| {
            let (q, done) = (q.clone(), done.clone());
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                loop {
                    match q.recv_into_timeout(sel, &mut buf, Duration::from_millis(20)) {
                        Ok((t, len)) => {
                            let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
                            let (s, i) = (id >> 32, id & 0xffff_ffff);
                            assert_eq!(t, 1 + ((i + s) % 3) as i64, "type of {s}/{i}");
                            let want = if i % 50 == 0 { 200 } else { 16 + (i % 40) as usize };
                            assert_eq!(len, want, "length of {s}/{i}");
                            got.push((s, i, t));
                        }
                        Err(RecvTimeoutError::Timeout) if done.load(std::sync::atomic::Ordering::SeqCst) => {
                            return got
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = vec![false; (SENDERS * EACH) as usize];
    for r in receivers {
        let got = r.join().unwrap();
        let mut last = std::collections::HashMap::new();
        for (s, i, t) in got {
            let k = (s * EACH + i) as usize;
            assert!(!seen[k], "{s}/{i} received twice");
            seen[k] = true;
            if let Some(prev) = last.insert((s, t), i) {
                assert!(prev < i, "sender {s} type {t}: {i} after {prev}");
            }
        }
    }
    let missing = seen.iter().filter(|&&x| !x).count();
    assert_eq!(missing, 0, "messages lost");
    let st = q.stat().unwrap();
    assert_eq!((st.messages, st.bytes), (0, 0));
}

#[test]
fn selection_follows_msgrcv() {
    let n = name("select");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(&n, QueueConfig::default()).unwrap();
    for (t, m) in [(3, "a"), (1, "b"), (2, "c"), (1, "d"), (5, "e")] {
        q.send(t, m.as_bytes()).unwrap();
    }
    let r = |s: Select| q.try_recv(s, 64).unwrap();
    assert_eq!(r(Select::of(1)), (1, b"b".to_vec()));
    assert_eq!(r(Select::except(3)), (2, b"c".to_vec()));
    assert_eq!(r(Select::of(-4)), (1, b"d".to_vec()));
    assert_eq!(r(Select::ANY), (3, b"a".to_vec()));
    assert!(matches!(q.try_recv(Select::of(-4), 64), Err(TryRecvError::Empty)));
    assert!(matches!(q.try_recv(Select::of(5), 0), Err(TryRecvError::Frame(_))), "E2BIG");
    assert_eq!(q.try_recv(Select::of(5).truncating(), 0).unwrap(), (5, vec![]), "MSG_NOERROR");
    assert!(matches!(q.try_send(0, b"x"), Err(TrySendError::Io { .. })), "type must be > 0");
    let st = q.stat().unwrap();
    assert_eq!(
        (st.messages, st.bytes, st.last_sender, st.last_receiver),
        (0, 0, std::process::id(), std::process::id())
    );
    assert!(st.send_time > 0 && st.recv_time > 0 && st.change_time > 0);
}

#[test]
fn a_receiver_of_type_seven_is_woken_by_type_seven() {
    let n = name("wake");
    let _c = Cleanup(n.clone());
    let q = Arc::new(MessageQueue::create(&n, QueueConfig::default()).unwrap());
    let waiters: Vec<_> = [7i64, 3, 9]
        .into_iter()
        .map(|t| {
            let q = q.clone();
            thread::spawn(move || q.recv_timeout(Select::of(t), 64, LONG).map(|(mt, _)| mt))
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    for t in [9, 7, 3] {
        q.send(t, b"x").unwrap();
    }
    let got: Vec<i64> = waiters.into_iter().map(|w| w.join().unwrap().unwrap()).collect();
    assert_eq!(got, [7, 3, 9]);
}

#[test]
fn blocking_send_and_receive_with_deadlines() {
    let n = name("block");
    let _c = Cleanup(n.clone());
    let q = Arc::new(
        MessageQueue::create(
            &n,
            QueueConfig { capacity: 100, max_message: 100, max_capacity: 100, mode: 0o600 },
        )
        .unwrap(),
    );
    q.send(1, &[0; 100]).unwrap();
    let start = Instant::now();
    assert!(matches!(q.send_timeout(1, &[1], Duration::from_millis(100)), Err(SendTimeoutError::Timeout(_))));
    assert!(start.elapsed() >= Duration::from_millis(100));
    let q2 = q.clone();
    let sender = thread::spawn(move || q2.send_timeout(2, b"later", LONG));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(q.recv_timeout(Select::of(1), 100, LONG).unwrap().0, 1);
    sender.join().unwrap().unwrap();
    assert!(matches!(
        q.recv_timeout(Select::of(9), 100, Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
}

#[test]
fn removal_wakes_everyone_and_frees_the_name() {
    let n = name("rm");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(&n, QueueConfig::default()).unwrap();
    let other = MessageQueue::open(&n, Access::ReadWrite).unwrap();
    let t = thread::spawn(move || other.recv_timeout(Select::ANY, 10, LONG));
    thread::sleep(Duration::from_millis(50));
    q.remove().unwrap();
    assert!(matches!(t.join().unwrap(), Err(RecvTimeoutError::Disconnected)));
    assert!(matches!(MessageQueue::open(&n, Access::Read), Err(ipckit::Error::NotFound(_))));
    let again = MessageQueue::create(&n, QueueConfig::default()).unwrap();
    assert_eq!(again.stat().unwrap().messages, 0);
}

fn spawn_child(role: &str, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{arg}"))
        .spawn()
        .unwrap()
}

fn wait_ok(mut c: Child) {
    let until = Instant::now() + LONG;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            return;
        }
        if Instant::now() > until {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child timed out");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, arg) = role.split_once(':').unwrap();
    match role {
        "fill" => {
            let q = MessageQueue::open(arg, Access::Write).unwrap();
            for i in 0..10u8 {
                q.send(1 + i64::from(i % 3), &[i; 10]).unwrap();
            }
        }
        "hammer" => {
            // Send and receive as fast as possible until killed.
            let q = MessageQueue::open(arg, Access::ReadWrite).unwrap();
            let mut i = 0u32;
            loop {
                let _ = q.send_timeout(
                    1 + i64::from(i % 4),
                    &i.to_le_bytes().repeat(1 + (i % 50) as usize),
                    LONG,
                );
                if i % 2 == 0 {
                    let _ = q.try_recv(Select::ANY, 1000);
                }
                i = i.wrapping_add(1);
            }
        }
        "tiny" => {
            // Texts a ring slot holds (the lock-free path), as fast as
            // possible until killed; with an argument suffix ":recv" it
            // also receives with every kind of selection.
            let (name, recv) = match arg.split_once(':') {
                Some((n, _)) => (n, true),
                None => (arg, false),
            };
            let q = MessageQueue::open(name, Access::ReadWrite).unwrap();
            let mut buf = [0u8; 128];
            let mut i = 0u32;
            loop {
                let text = i.to_le_bytes().repeat(1 + (i % 25) as usize);
                let _ = q.send_timeout(1 + i64::from(i % 4), &text, LONG);
                if recv && i % 2 == 0 {
                    let sel =
                        [Select::ANY, Select::of(2), Select::of(-3), Select::except(1)][(i / 2 % 4) as usize];
                    let _ = q.try_recv_into(sel, &mut buf);
                }
                i = i.wrapping_add(1);
            }
        }
        "long" => {
            // Long texts (up to msgmax, in the queue's arena), sent and
            // received with every kind of selection as fast as possible
            // until killed: deaths land while a text is copied in or out.
            let q = MessageQueue::open(arg, Access::ReadWrite).unwrap();
            let mut buf = vec![0u8; 8192];
            let mut i = 0u32;
            loop {
                let _ = q.send_timeout(1 + i64::from(i % 4), &long_for(i), LONG);
                if i % 2 == 0 {
                    let sel =
                        [Select::ANY, Select::of(2), Select::of(-3), Select::except(1)][(i / 2 % 4) as usize];
                    let _ = q.try_recv_into(sel, &mut buf);
                }
                i = i.wrapping_add(1);
            }
        }
        "intruder" => {
            // Drop to nobody, then try both directions.
            let gid = rustix::process::Gid::from_raw(65534);
            let uid = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
            let r = MessageQueue::open(arg, Access::Read);
            std::process::exit(match r {
                Err(ipckit::Error::PermissionDenied(_)) => 0,
                other => {
                    eprintln!("expected PermissionDenied, got {other:?}");
                    1
                }
            });
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn messages_outlive_the_processes_that_sent_them() {
    let n = name("persist");
    let _c = Cleanup(n.clone());
    drop(MessageQueue::create(&n, QueueConfig::default()).unwrap());
    wait_ok(spawn_child("fill", &n));
    // Nobody has the queue open now; its messages are still there.
    let q = MessageQueue::open(&n, Access::Read).unwrap();
    assert_eq!(q.stat().unwrap().messages, 10);
    for i in [0u8, 3, 6, 9] {
        assert_eq!(q.try_recv(Select::of(1), 64).unwrap(), (1, vec![i; 10]));
    }
}

#[test]
fn a_process_killed_mid_operation_leaves_the_queue_consistent() {
    let n = name("kill");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(
        &n,
        QueueConfig { capacity: 4096, max_message: 1000, max_capacity: 4096, mode: 0o600 },
    )
    .unwrap();
    for round in 0..20 {
        let mut kid = spawn_child("hammer", &n);
        thread::sleep(Duration::from_millis(20 + (round * 7) % 30));
        let _ = kid.kill();
        let _ = kid.wait();
        // Nobody is stuck on the dead process's lock, and every message is whole.
        let st = q.stat().unwrap();
        let mut bytes = 0;
        let mut count = 0;
        while let Ok((t, data)) = q.recv_timeout(Select::ANY, 1000, Duration::from_millis(100)) {
            assert!((1..=4).contains(&t));
            assert!(!data.is_empty() && data.len() % 4 == 0, "a torn message");
            let first = &data[..4];
            assert!(data.chunks(4).all(|c| c == first), "a torn message");
            bytes += data.len();
            count += 1;
        }
        assert_eq!(
            (count, bytes),
            (st.messages, st.bytes),
            "round {round}: statistics disagree with contents"
        );
        q.send_timeout(1, b"still works", LONG).unwrap();
        assert_eq!(q.recv_timeout(Select::ANY, 100, LONG).unwrap().1, b"still works");
    }
}

/// SIGKILL lands in the lock-free path: senders between claiming a slot,
/// moving the tail and publishing; a receiver between taking the head and
/// moving it. Survivors skip or repair what they left, the counts stay
/// exact and no message is torn or seen twice.
#[test]
fn a_process_killed_on_the_fast_path_leaves_the_queue_consistent() {
    let n = name("killfast");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(
        &n,
        QueueConfig { capacity: 4096, max_message: 128, max_capacity: 4096, mode: 0o600 },
    )
    .unwrap();
    for round in 0..20u64 {
        let mut kids = [spawn_child("tiny", &n), spawn_child("tiny", &format!("{n}:recv"))];
        thread::sleep(Duration::from_millis(15 + (round * 11) % 40));
        for kid in &mut kids {
            let _ = kid.kill();
        }
        for kid in &mut kids {
            let _ = kid.wait();
        }
        let st = q.stat().unwrap();
        let mut bytes = 0;
        let mut count = 0;
        let mut buf = [0u8; 128];
        while let Ok((t, len)) = q.recv_into_timeout(Select::ANY, &mut buf, Duration::from_millis(100)) {
            let data = &buf[..len];
            assert!((1..=4).contains(&t));
            assert!(!data.is_empty() && data.len() % 4 == 0, "round {round}: a torn message");
            let first = &data[..4];
            assert!(data.chunks(4).all(|c| c == first), "round {round}: a torn message");
            let i = u32::from_le_bytes(first.try_into().unwrap());
            assert_eq!((t, len), (1 + i64::from(i % 4), 4 * (1 + (i % 25) as usize)), "round {round}");
            bytes += data.len();
            count += 1;
        }
        assert_eq!(
            (count, bytes),
            (st.messages, st.bytes),
            "round {round}: statistics disagree with contents"
        );
        assert_eq!((q.stat().unwrap().messages, q.stat().unwrap().bytes), (0, 0));
        q.send_timeout(1, b"still works", LONG).unwrap();
        assert_eq!(q.recv_timeout(Select::ANY, 100, LONG).unwrap().1, b"still works");
    }
}

/// Message `i` of the "long" child: its number, repeated, 108 to 8192 bytes.
fn long_for(i: u32) -> Vec<u8> {
    i.to_le_bytes().repeat(27 + (i.wrapping_mul(37) % 2022) as usize)
}

/// SIGKILL lands while long texts are copied into or out of the arena, by
/// two processes sending and receiving at once: survivors skip what a dead
/// sender left, no text is torn or seen twice, the counts stay exact.
#[test]
fn a_process_killed_copying_long_texts_leaves_the_queue_consistent() {
    let n = name("killlong");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(&n, QueueConfig::default()).unwrap();
    let mut buf = vec![0u8; 8192];
    for round in 0..20u64 {
        let mut kids = [spawn_child("long", &n), spawn_child("long", &n)];
        thread::sleep(Duration::from_millis(15 + (round * 11) % 40));
        for kid in &mut kids {
            let _ = kid.kill();
        }
        for kid in &mut kids {
            let _ = kid.wait();
        }
        let st = q.stat().unwrap();
        let (mut count, mut bytes) = (0, 0);
        while let Ok((t, len)) = q.recv_into_timeout(Select::ANY, &mut buf, Duration::from_millis(100)) {
            let data = &buf[..len];
            assert!(data.len() >= 108 && data.len() % 4 == 0, "round {round}: a torn message");
            let first = &data[..4];
            assert!(data.chunks(4).all(|c| c == first), "round {round}: a torn message");
            let i = u32::from_le_bytes(first.try_into().unwrap());
            assert_eq!((t, data), (1 + i64::from(i % 4), &long_for(i)[..]), "round {round}");
            bytes += len;
            count += 1;
        }
        assert_eq!(
            (count, bytes),
            (st.messages, st.bytes),
            "round {round}: statistics disagree with contents"
        );
        assert_eq!((q.stat().unwrap().messages, q.stat().unwrap().bytes), (0, 0));
        q.send_timeout(1, &long_for(7), LONG).unwrap();
        assert_eq!(q.recv_timeout(Select::ANY, 8192, LONG).unwrap().1, long_for(7));
    }
}

#[test]
fn permissions_are_checked_against_the_kernel_identity() {
    if ipckit::euid() != 0 {
        eprintln!("not root: skipping the other-uid case");
        return;
    }
    let n = name("perm");
    let _c = Cleanup(n.clone());
    let q = MessageQueue::create(&n, QueueConfig { mode: 0o600, ..QueueConfig::default() }).unwrap();
    wait_ok(spawn_child("intruder", &n));
    // The owner opens it up to others for writing only: reading stays denied.
    q.set(QueueSet { mode: Some(0o622), ..QueueSet::default() }).unwrap();
    assert_eq!(q.stat().unwrap().owner.mode, 0o622);
    wait_ok(spawn_child("intruder", &n));
}

/// 6000 bytes that say where each one is.
fn long_text() -> Vec<u8> {
    (0..6000u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

#[test]
fn a_durable_queue_survives_in_its_file_and_a_reboot_resets_its_lock() {
    use ipckit::sysv::Flush;
    use std::io::{Seek, SeekFrom, Write};
    let dir = std::env::temp_dir().join(name("durable"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jobs.mq");
    {
        let q = MessageQueue::create_durable(&path, QueueConfig::default(), Flush::EveryOperation).unwrap();
        // A long text that crosses the end of the queue's arena (texts
        // over 104 bytes live there, at the senders' byte count).
        for i in 0..3u8 {
            q.send(9, &[i; 5000]).unwrap();
            assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (9, vec![i; 5000]));
        }
        q.send(4, b"survive me").unwrap();
        q.send(2, b"and me").unwrap();
        q.send(3, &long_text()).unwrap();
    }
    assert!(MessageQueue::create_durable(&path, QueueConfig::default(), Flush::Manual).is_err(), "exists");
    // Pretend the machine rebooted while pid 1 held the lock: the recorded
    // boot id no longer matches, and pid 1 is alive (but is not our holder).
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(64)).unwrap();
        f.write_all(&1u32.to_ne_bytes()).unwrap();
        f.seek(SeekFrom::Start(64 + 120)).unwrap();
        f.write_all(&0u64.to_ne_bytes()).unwrap();
    }
    let q = MessageQueue::open_durable(&path, Access::ReadWrite, Flush::Manual).unwrap();
    assert_eq!(q.try_recv(Select::of(-10), 64).unwrap(), (2, b"and me".to_vec()));
    assert_eq!(q.recv_timeout(Select::ANY, 64, LONG).unwrap(), (4, b"survive me".to_vec()));
    assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (3, long_text()));
    q.send(1, b"x").unwrap();
    q.flush().unwrap();
    q.remove().unwrap();
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
