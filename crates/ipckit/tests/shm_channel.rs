//! Shared-memory channels (`ipckit::shm::channel`): semantics on threads,
//! real processes (SPSC and MPMC with checksums, producers killed with
//! SIGKILL mid-stream, consumers killed mid-stream), random bytes written
//! over a live ring, and a `loom` model of the ring's memory ordering.
//!
//! Children are this test binary run again with `--exact child_main` and a
//! role in `IPCKIT_SHM_CHAN_ROLE`; they report on stdout lines starting
//! with `@chan `. Every blocking call has a timeout, every child is killed
//! and reaped on drop, and every segment is removed by a guard.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;

use ipckit::shm::channel::{Config, Flavor, ShmChannel};
use ipckit::shm::{Offset, Segment, WaitMode};
use ipckit::{Error, RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

const LONG: Duration = Duration::from_secs(30);
const ROLE: &str = "IPCKIT_SHM_CHAN_ROLE";
const REPORT: &str = "@chan ";
const MODES: [WaitMode; 3] = [WaitMode::Spin, WaitMode::SpinThenBlock(200), WaitMode::Block];

fn name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-chan-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Removes the segments when the test ends, however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Segment::remove(n);
        }
    }
}

fn create(tag: &str, config: &Config) -> (ShmChannel, Cleanup) {
    let n = name(tag);
    let chan = ShmChannel::create(&n, config).unwrap();
    (chan, Cleanup(vec![n]))
}

/// A message: producer id, sequence number, and a payload derived from both.
fn encode(id: u32, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    let extra = (mix(u64::from(id) << 40 ^ seq) % 40) as usize;
    v.extend((0..extra).map(|k| (seq as u8).wrapping_add(k as u8).wrapping_mul(id as u8 | 1)));
    v
}

/// Checks the payload and returns (id, seq).
fn decode(b: &[u8]) -> (u32, u64) {
    assert!(b.len() >= 12, "short message {b:?}");
    let id = u32::from_le_bytes(b[..4].try_into().unwrap());
    let seq = u64::from_le_bytes(b[4..12].try_into().unwrap());
    assert_eq!(b, &encode(id, seq)[..], "payload of ({id}, {seq}) corrupted");
    (id, seq)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// What one consumer saw of each producer: count, sum of hashes, last seq.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    hash: u64,
    last: Option<u64>,
}

impl Tally {
    /// Records `seq`, checking it comes after the last one from that producer.
    fn see(&mut self, id: u32, seq: u64) {
        if let Some(last) = self.last {
            assert!(seq > last, "producer {id}: seq {seq} after {last} (reordered or duplicated)");
        }
        self.last = Some(seq);
        self.count += 1;
        self.hash = self.hash.wrapping_add(mix(seq));
    }

    fn expected(n: u64) -> (u64, u64) {
        (n, (0..n).fold(0u64, |h, s| h.wrapping_add(mix(s))))
    }
}

// ---------------------------------------------------------------- threads

#[test]
fn spsc_order_and_content_on_threads() {
    for mode in MODES {
        let (chan, _c) = create("spsc", &Config::spsc(8, 64));
        assert_eq!(chan.flavor(), Flavor::Spsc);
        let mut tx = chan.sender().unwrap().with_wait(mode);
        let mut rx = chan.receiver().unwrap().with_wait(mode);
        let n = 20_000u64;
        let t = thread::spawn(move || {
            for s in 0..n {
                tx.send_timeout(encode(1, s), LONG).unwrap();
            }
        });
        for s in 0..n {
            let m = rx.recv_timeout(LONG).unwrap();
            assert_eq!(decode(m.bytes()), (1, s));
        }
        t.join().unwrap();
    }
}

#[test]
fn mpmc_order_and_content_on_threads() {
    for mode in MODES {
        let (chan, _c) = create("mpmc", &Config::mpmc(16, 64));
        let (producers, consumers, per) = (4u32, 3, 10_000u64);
        let mut handles = Vec::new();
        for id in 0..producers {
            let mut tx = chan.sender().unwrap().with_wait(mode);
            handles.push(thread::spawn(move || {
                for s in 0..per {
                    tx.send_timeout(encode(id, s), LONG).unwrap();
                }
            }));
        }
        let mut readers = Vec::new();
        for _ in 0..consumers {
            let mut rx = chan.receiver().unwrap().with_wait(mode);
            readers.push(thread::spawn(move || {
                let mut tallies: HashMap<u32, Tally> = HashMap::new();
                loop {
                    match rx.recv_timeout(LONG) {
                        Ok(m) => {
                            let (id, s) = decode(m.bytes());
                            tallies.entry(id).or_default().see(id, s);
                        }
                        Err(RecvTimeoutError::Disconnected) => return tallies,
                        Err(e) => panic!("recv: {e}"),
                    }
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        let mut total: HashMap<u32, (u64, u64)> = HashMap::new();
        for r in readers {
            for (id, t) in r.join().unwrap() {
                let e = total.entry(id).or_default();
                e.0 += t.count;
                e.1 = e.1.wrapping_add(t.hash);
            }
        }
        for id in 0..producers {
            assert_eq!(total.get(&id).copied().unwrap_or_default(), Tally::expected(per), "producer {id}");
        }
    }
}

#[test]
fn full_empty_timeouts_and_too_large() {
    for flavor in [Flavor::Mpmc, Flavor::Spsc] {
        let (chan, _c) = create("full", &Config { slots: 3, max_message: 16, mode: 0o600, flavor });
        assert_eq!(chan.capacity(), 4, "rounded up to a power of two");
        let mut tx = chan.sender().unwrap();
        let mut rx = chan.receiver().unwrap();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        let t0 = Instant::now();
        assert!(matches!(rx.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        for i in 0..4u8 {
            tx.try_send(vec![i]).unwrap();
        }
        assert_eq!(chan.len(), 4);
        match tx.try_send(vec![9]) {
            Err(TrySendError::Full(m)) => assert_eq!(m.bytes(), [9]),
            other => panic!("expected Full, got {other:?}"),
        }
        match tx.send_timeout(vec![8], Duration::from_millis(30)) {
            Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.bytes(), [8]),
            other => panic!("expected Timeout, got {other:?}"),
        }
        match tx.try_send(vec![0u8; 17]) {
            Err(TrySendError::TooLarge { msg, len: 17, max: 16 }) => assert_eq!(msg.bytes().len(), 17),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        for i in 0..4u8 {
            assert_eq!(rx.try_recv().unwrap().bytes(), [i]);
        }
        // An empty message and one of exactly the maximum.
        tx.send(Vec::new()).unwrap();
        tx.send(vec![7u8; 16]).unwrap();
        assert!(rx.recv().unwrap().bytes().is_empty());
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, Some(LONG)).unwrap();
        assert_eq!(buf, [7u8; 16]);
        tx.send_bytes(b"abc", None).unwrap();
        assert_eq!(rx.recv_deadline(Instant::now() + LONG).unwrap().bytes(), b"abc");
    }
}

#[test]
fn a_blocked_send_or_recv_wakes_up() {
    for mode in MODES {
        let (chan, _c) = create("wake", &Config::mpmc(1, 8));
        let mut tx = chan.sender().unwrap().with_wait(mode);
        let mut rx = chan.receiver().unwrap().with_wait(mode);
        assert_eq!(chan.capacity(), 2);
        tx.send(vec![1]).unwrap();
        tx.send(vec![2]).unwrap();
        let t = thread::spawn(move || {
            tx.send_timeout(vec![3], LONG).unwrap(); // blocks: full
            tx
        });
        thread::sleep(Duration::from_millis(20));
        for i in 1..=3 {
            assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), [i]);
        }
        let mut tx = t.join().unwrap();
        let t = thread::spawn(move || rx.recv_timeout(LONG).unwrap().into_bytes());
        thread::sleep(Duration::from_millis(20));
        tx.send(vec![4]).unwrap();
        assert_eq!(t.join().unwrap(), [4]);
    }
}

#[test]
fn disconnection_when_the_other_side_drops() {
    let (chan, _c) = create("disc", &Config::mpmc(4, 8));
    let mut rx = chan.receiver().unwrap();
    // No producer ever attached: just empty.
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let mut tx = chan.sender().unwrap();
    let tx2 = chan.sender().unwrap();
    tx.send(vec![1]).unwrap();
    drop(tx);
    drop(tx2);
    // What was sent is still delivered, then Disconnected.
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), [1]);
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    // A blocked receiver is woken by the last sender leaving.
    let tx = chan.sender().unwrap();
    let t = thread::spawn(move || rx.recv_timeout(LONG));
    thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    drop(tx);
    assert!(matches!(t.join().unwrap(), Err(RecvTimeoutError::Disconnected)));
    assert!(t0.elapsed() < Duration::from_secs(5));
    // And senders see the receivers leave.
    let mut tx = chan.sender().unwrap();
    match tx.send(vec![5]) {
        Err(e) => assert!(e.is_disconnected(), "{e:?}"),
        Ok(()) => panic!("sent with no receiver left"),
    }
}

#[test]
fn spsc_refuses_a_second_live_end_and_accepts_one_after() {
    let (chan, _c) = create("spsc1", &Config::spsc(4, 8));
    let tx = chan.sender().unwrap();
    assert!(matches!(chan.sender(), Err(Error::AlreadyExists(_))));
    let rx = chan.receiver().unwrap();
    assert!(matches!(
        ShmChannel::open(chan.segment().name()).unwrap().receiver(),
        Err(Error::AlreadyExists(_))
    ));
    drop(tx);
    drop(rx);
    let mut tx = chan.sender().unwrap();
    let mut rx = chan.receiver().unwrap();
    tx.send(vec![1]).unwrap();
    assert_eq!(rx.recv().unwrap().bytes(), [1]);
}

#[test]
fn open_checks_the_kind_and_shape() {
    let n = name("raw");
    let _c = Cleanup(vec![n.clone()]);
    Segment::create(&n, 4096, 0o600).unwrap();
    assert!(matches!(ShmChannel::open(&n), Err(Error::Corrupted(_))));
    let (chan, _c2) = create("shape", &Config::mpmc(8, 100));
    let other = ShmChannel::open(chan.segment().name()).unwrap();
    assert_eq!((other.capacity(), other.max_message_size(), other.flavor()), (8, 100, Flavor::Mpmc));
    // A slot count that is not a power of two.
    chan.segment().write(Offset::new(0), &6u32.to_ne_bytes()).unwrap();
    assert!(matches!(ShmChannel::open(chan.segment().name()), Err(Error::Corrupted(_))));
    // Slots that do not fit.
    chan.segment().write(Offset::new(0), &(1u32 << 20).to_ne_bytes()).unwrap();
    assert!(matches!(ShmChannel::open(chan.segment().name()), Err(Error::Corrupted(_))));
    assert!(matches!(ShmChannel::open("t-chan-does-not-exist"), Err(Error::NotFound(_))));
    assert!(matches!(
        ShmChannel::create(chan.segment().name(), &Config::default()),
        Err(Error::AlreadyExists(_))
    ));
}

// ---------------------------------------------------------------- processes

/// A child process running this test binary in a role; killed and reaped on drop.
struct Kid {
    child: Child,
    reports: mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str, args: &[String]) -> Kid {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("{role} {}", args.join(" ")))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(REPORT) {
                    let _ = tx.send(line[at + REPORT.len()..].to_owned());
                }
            }
        });
        Kid { child, reports }
    }

    fn report(&self) -> String {
        self.reports.recv_timeout(LONG * 2).expect("child sent no report in time")
    }

    fn wait_success(&mut self) {
        let until = Instant::now() + LONG * 2;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "child failed: {st}");
                return;
            }
            assert!(Instant::now() < until, "child still running");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT}{line}").unwrap();
    out.flush().unwrap();
}

fn mode_of(s: &str) -> WaitMode {
    match s {
        "spin" => WaitMode::Spin,
        "block" => WaitMode::Block,
        _ => WaitMode::SpinThenBlock(500),
    }
}

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let args: Vec<&str> = role.split(' ').collect();
    match args[0] {
        // produce NAME ID COUNT MODE [PROGRESS]: sends COUNT messages (forever if 0),
        // recording how many were sent in segment PROGRESS at 8 * ID.
        "produce" => {
            let chan = ShmChannel::open(args[1]).unwrap();
            let id: u32 = args[2].parse().unwrap();
            let count: u64 = args[3].parse().unwrap();
            let mut tx = chan.sender().unwrap().with_wait(mode_of(args[4]));
            let progress = args.get(5).map(|p| Segment::open(p).unwrap());
            let cell = progress.as_ref().map(|p| p.atomic_u64(Offset::new(8 * id as usize)).unwrap());
            say("ready");
            let mut s = 0u64;
            while count == 0 || s < count {
                tx.send_timeout(encode(id, s), LONG).unwrap();
                s += 1;
                if let Some(c) = cell {
                    c.store(s, Ordering::Release);
                }
            }
            say(format!("sent {s}"));
        }
        // consume NAME MODE: receives until Disconnected; reports "id count hash" lines.
        "consume" => {
            let chan = ShmChannel::open(args[1]).unwrap();
            let mut rx = chan.receiver().unwrap().with_wait(mode_of(args[2]));
            say("ready");
            let mut tallies: HashMap<u32, Tally> = HashMap::new();
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(m) => {
                        let (id, s) = decode(m.bytes());
                        tallies.entry(id).or_default().see(id, s);
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("consumer: {e}"),
                }
            }
            for (id, t) in tallies {
                say(format!("tally {id} {} {}", t.count, t.hash));
            }
            say("done");
        }
        // hold-recv NAME: receives forever (to be killed).
        "hold-recv" => {
            let chan = ShmChannel::open(args[1]).unwrap();
            let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Spin);
            say("ready");
            loop {
                let _ = rx.recv_timeout(LONG);
            }
        }
        other => panic!("unknown role {other:?}"),
    }
    std::process::exit(0);
}

/// Scales message counts down in debug builds.
fn scaled(n: u64) -> u64 {
    if cfg!(debug_assertions) {
        n / 10
    } else {
        n
    }
}

fn run_processes(config: Config, producers: u32, consumers: u32, total: u64, mode: &str) {
    let (chan, _c) = create("proc", &config);
    let n = chan.segment().name().to_owned();
    // The test holds a sender until every producer has finished, so no
    // consumer sees "disconnected" before the last producer attached.
    let holder = if config.flavor == Flavor::Mpmc { Some(chan.sender().unwrap()) } else { None };
    let per = total / u64::from(producers);
    let mut cons: Vec<Kid> =
        (0..consumers).map(|_| Kid::spawn("consume", &[n.clone(), mode.into()])).collect();
    for c in &cons {
        assert_eq!(c.report(), "ready");
    }
    let mut prods: Vec<Kid> = (0..producers)
        .map(|id| Kid::spawn("produce", &[n.clone(), id.to_string(), per.to_string(), mode.into()]))
        .collect();
    for p in &mut prods {
        assert_eq!(p.report(), "ready");
    }
    for p in &mut prods {
        assert_eq!(p.report(), format!("sent {per}"));
        p.wait_success();
    }
    drop(holder);
    let mut total: HashMap<u32, (u64, u64)> = HashMap::new();
    for c in &mut cons {
        loop {
            let r = c.report();
            if r == "done" {
                break;
            }
            let f: Vec<u64> = r.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
            let e = total.entry(f[0] as u32).or_default();
            e.0 += f[1];
            e.1 = e.1.wrapping_add(f[2]);
        }
        c.wait_success();
    }
    for id in 0..producers {
        assert_eq!(total.get(&id).copied().unwrap_or_default(), Tally::expected(per), "producer {id}");
    }
}

#[test]
fn spsc_between_processes() {
    run_processes(Config::spsc(256, 64), 1, 1, scaled(1_000_000), "spin-block");
}

#[test]
fn mpmc_three_producer_and_two_consumer_processes() {
    run_processes(Config::mpmc(256, 64), 3, 2, scaled(1_000_000), "spin-block");
}

#[test]
fn mpmc_processes_in_block_mode() {
    run_processes(Config::mpmc(16, 64), 3, 2, scaled(100_000), "block");
}

/// A tiny xorshift, so random instants need no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn producers_killed_mid_stream_lose_nothing_they_committed() {
    let (chan, mut cleanup) = create("kill", &Config::mpmc(8, 64));
    let n = chan.segment().name().to_owned();
    let pname = name("progress");
    let progress = Segment::create(&pname, 8 * 64, 0o600).unwrap();
    cleanup.0.push(pname.clone());
    let rounds = if cfg!(debug_assertions) { 12 } else { 30 };
    // The parent consumes on a thread while producers come and die.
    let done = Arc::new(AtomicBool::new(false));
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::SpinThenBlock(100));
    let d = done.clone();
    let consumer = thread::spawn(move || {
        let mut seen: HashMap<u32, Tally> = HashMap::new();
        let mut slow = Rng(7);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => {
                    let (id, s) = decode(m.bytes());
                    let t = seen.entry(id).or_default();
                    // One consumer: every producer's stream arrives whole and in order.
                    assert_eq!(s, t.last.map_or(0, |l| l + 1), "producer {id}: gap or duplicate");
                    t.see(id, s);
                    if slow.below(1000) == 0 {
                        thread::sleep(Duration::from_millis(2)); // let the ring fill up at times
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
                    if d.load(Ordering::Acquire) =>
                {
                    return seen
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                Err(e) => panic!("consumer: {e}"),
            }
        }
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    // Two producers at a time, killed at random instants; a third runs through.
    let mut committed = HashMap::new();
    let keeper = 1000u32;
    let mut steady =
        Kid::spawn("produce", &[n.clone(), keeper.to_string(), scaled(200_000).to_string(), "spin".into()]);
    assert_eq!(steady.report(), "ready");
    for round in 0..rounds {
        let ids = [2 * round, 2 * round + 1];
        let mut kids: Vec<Kid> = ids
            .iter()
            .map(|id| {
                Kid::spawn("produce", &[n.clone(), id.to_string(), "0".into(), "spin".into(), pname.clone()])
            })
            .collect();
        for k in &kids {
            assert_eq!(k.report(), "ready");
        }
        thread::sleep(Duration::from_micros(rng.below(20_000)));
        for (k, id) in kids.iter_mut().zip(ids) {
            k.kill();
            let c = progress.atomic_u64(Offset::new(8 * id as usize)).unwrap().load(Ordering::Acquire);
            committed.insert(id, c);
            thread::sleep(Duration::from_micros(rng.below(3_000)));
        }
    }
    assert_eq!(steady.report(), format!("sent {}", scaled(200_000)));
    steady.wait_success();
    // Give the consumer time to drain, then stop it.
    let until = Instant::now() + LONG;
    while !chan.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    let seen = consumer.join().unwrap();
    assert_eq!(seen.get(&keeper).map(|t| t.count), Some(scaled(200_000)), "the surviving producer");
    let mut total = 0;
    for (id, c) in committed {
        let got = seen.get(&id).map_or(0, |t| t.count);
        // Every committed message arrived; at most the one in flight at the kill besides.
        assert!(got == c || got == c + 1, "producer {id}: committed {c}, received {got}");
        total += got;
    }
    assert!(total > 0, "the killed producers sent nothing at all");
}

#[test]
fn consumers_killed_mid_stream_do_not_wedge_the_ring() {
    let (chan, _c) = create("killc", &Config::mpmc(4, 64));
    let n = chan.segment().name().to_owned();
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::SpinThenBlock(100));
    // An idle receiver here keeps the channel connected between the children.
    let _idle = chan.receiver().unwrap();
    // The producer runs until the kills are over, then sends 100 more.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let producer = thread::spawn(move || {
        let mut s = 0;
        let mut extra = 100;
        while extra > 0 {
            tx.send_timeout(encode(1, s), LONG).unwrap();
            s += 1;
            if st.load(Ordering::Acquire) {
                extra -= 1;
            }
        }
        s
    });
    let mut rng = Rng(0x1234_5678 ^ u64::from(std::process::id()));
    for _ in 0..if cfg!(debug_assertions) { 8 } else { 20 } {
        let mut k = Kid::spawn("hold-recv", std::slice::from_ref(&n));
        assert_eq!(k.report(), "ready");
        thread::sleep(Duration::from_micros(rng.below(10_000)));
        k.kill();
    }
    stop.store(true, Ordering::Release);
    // The last word: a consumer here drains what is left, in order, up to
    // the producer's last message (the ring was not left wedged).
    let mut rx = chan.receiver().unwrap();
    let mut last: Option<u64> = None;
    let sent = loop {
        if producer.is_finished() && chan.is_empty() {
            break producer.join().unwrap();
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                let (_, s) = decode(m.bytes());
                assert!(!matches!(last, Some(l) if s <= l), "{s} after {last:?}");
                last = Some(s);
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The producer finished and dropped its sender: all was drained.
            Err(RecvTimeoutError::Disconnected) => break producer.join().unwrap(),
            Err(e) => panic!("drain: {e}"),
        }
    };
    assert_eq!(last, Some(sent - 1));
}

/// SPSC: producer processes killed at random instants, one after another
/// (the next attaches once the last is dead), then consumer processes
/// likewise: nothing committed is lost, nothing is duplicated, each
/// stream arrives in order, and the ring never wedges.
#[test]
fn spsc_ends_killed_mid_stream_are_taken_over() {
    let (chan, mut cleanup) = create("killspsc", &Config::spsc(8, 64));
    let n = chan.segment().name().to_owned();
    let pname = name("progress");
    let progress = Segment::create(&pname, 8 * 64, 0o600).unwrap();
    cleanup.0.push(pname.clone());
    let rounds = if cfg!(debug_assertions) { 6 } else { 15 };
    let done = Arc::new(AtomicBool::new(false));
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::SpinThenBlock(100));
    let d = done.clone();
    let consumer = thread::spawn(move || {
        let mut seen: HashMap<u32, Tally> = HashMap::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => {
                    let (id, s) = decode(m.bytes());
                    let t = seen.entry(id).or_default();
                    assert_eq!(s, t.last.map_or(0, |l| l + 1), "producer {id}: gap or duplicate");
                    t.see(id, s);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
                    if d.load(Ordering::Acquire) =>
                {
                    return (seen, rx)
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                Err(e) => panic!("consumer: {e}"),
            }
        }
    });
    let mut rng = Rng(0x5151_7c15 ^ u64::from(std::process::id()));
    let mut committed = HashMap::new();
    for id in 0..rounds {
        let mut k =
            Kid::spawn("produce", &[n.clone(), id.to_string(), "0".into(), "spin".into(), pname.clone()]);
        assert_eq!(k.report(), "ready");
        thread::sleep(Duration::from_micros(rng.below(20_000)));
        k.kill();
        committed
            .insert(id, progress.atomic_u64(Offset::new(8 * id as usize)).unwrap().load(Ordering::Acquire));
    }
    let until = Instant::now() + LONG;
    while !chan.is_empty() && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    let (seen, rx) = consumer.join().unwrap();
    let mut total = 0;
    for (id, c) in committed {
        let got = seen.get(&id).map_or(0, |t| t.count);
        assert!(got == c || got == c + 1, "producer {id}: committed {c}, received {got}");
        total += got;
    }
    assert!(total > 0, "the killed producers sent nothing at all");
    drop(rx);

    // Now the consumers die: a producer thread here keeps sending (a
    // moment with no consumer at all is Disconnected: it retries).
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::SpinThenBlock(100));
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let producer = thread::spawn(move || {
        let (mut s, mut extra) = (0u64, 100);
        while extra > 0 {
            match tx.send_timeout(encode(1, s), LONG) {
                Ok(()) => s += 1,
                Err(SendTimeoutError::Disconnected(_)) => thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("producer: {e}"),
            }
            if st.load(Ordering::Acquire) {
                extra -= 1;
            }
        }
        (s, tx)
    });
    for _ in 0..rounds {
        let mut k = Kid::spawn("hold-recv", std::slice::from_ref(&n));
        assert_eq!(k.report(), "ready");
        thread::sleep(Duration::from_micros(rng.below(10_000)));
        k.kill();
    }
    let mut rx = chan.receiver().unwrap();
    stop.store(true, Ordering::Release);
    let mut last: Option<u64> = None;
    let until = Instant::now() + LONG;
    loop {
        if producer.is_finished() && chan.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "the ring wedged");
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                let (_, s) = decode(m.bytes());
                assert!(!matches!(last, Some(l) if s <= l), "{s} after {last:?}");
                last = Some(s);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("drain: {e}"),
        }
    }
    let (sent, _tx) = producer.join().unwrap();
    assert_eq!(last, Some(sent - 1));
}

// ---------------------------------------------------------------- corruption

/// Random bytes written at random places of a live ring, while a producer
/// and a consumer thread work on it: every call returns (an error or a
/// well-formed message) within its timeout; nothing panics or hangs.
#[test]
fn random_bytes_over_a_live_ring() {
    use proptest::prelude::*;
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..Default::default() });
    let strategy = (
        prop::collection::vec((0usize..2000, prop::collection::vec(any::<u8>(), 1..16)), 1..40),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(writes, spsc)| {
            let config = if spsc { Config::spsc(8, 48) } else { Config::mpmc(8, 48) };
            let (chan, _c) = create("scribble", &config);
            support::scribble_under_traffic(&chan, &writes, 48, |s| encode(3, u64::from(s)));
            // New ends on the scribbled ring behave too.
            if let Ok(other) = ShmChannel::open(chan.segment().name()) {
                if let Ok(mut tx) = other.sender() {
                    let _ = tx.send_timeout(vec![1u8; 4], Duration::from_millis(5));
                }
                if let Ok(mut rx) = other.receiver() {
                    let _ = rx.recv_timeout(Duration::from_millis(5));
                }
                let _ = other.len();
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------- loom

/// The ring's claim/publish/consume ordering under loom: the exact code of
/// `ipckit::shm::ring` (generic over its memory), run over loom's atomics.
/// Two producers each send one message into a two-slot ring; one consumer
/// takes both: each arrives once, with the data its producer wrote.
mod model {
    use std::sync::atomic::Ordering;

    use ipckit::shm::ring::{pop, push, spsc_pop, spsc_push, Cursor, Pop, Push, RingMem, Word32, Word64};
    use loom::sync::atomic::{AtomicU32, AtomicU64};
    use loom::sync::Arc;

    pub struct L64(AtomicU64);
    pub struct L32(AtomicU32);

    impl Word64 for L64 {
        fn load(&self, o: Ordering) -> u64 {
            self.0.load(o)
        }
        fn store(&self, v: u64, o: Ordering) {
            self.0.store(v, o)
        }
        fn compare_exchange(&self, c: u64, n: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
            self.0.compare_exchange(c, n, s, f)
        }
    }

    impl Word32 for L32 {
        fn load(&self, o: Ordering) -> u32 {
            self.0.load(o)
        }
        fn store(&self, v: u32, o: Ordering) {
            self.0.store(v, o)
        }
        fn compare_exchange(&self, c: u32, n: u32, s: Ordering, f: Ordering) -> Result<u32, u32> {
            self.0.compare_exchange(c, n, s, f)
        }
    }

    /// A ring whose 8-byte payloads are relaxed atomics: a consumer that
    /// could read before the producer's writes are visible would see 0.
    pub struct LoomRing {
        spsc: bool,
        head: L64,
        tail: L64,
        seq: Vec<L64>,
        claim: Vec<L32>,
        len: Vec<L32>,
        data: Vec<AtomicU64>,
    }

    impl LoomRing {
        pub fn new(n: usize, spsc: bool) -> Self {
            LoomRing {
                spsc,
                head: L64(AtomicU64::new(0)),
                tail: L64(AtomicU64::new(0)),
                seq: (0..n).map(|i| L64(AtomicU64::new(i as u64))).collect(),
                claim: (0..n).map(|_| L32(AtomicU32::new(0))).collect(),
                len: (0..n).map(|_| L32(AtomicU32::new(0))).collect(),
                data: (0..n).map(|_| AtomicU64::new(0)).collect(),
            }
        }
    }

    impl RingMem for LoomRing {
        type W64 = L64;
        type W32 = L32;
        fn slots(&self) -> u64 {
            self.seq.len() as u64
        }
        fn spsc(&self) -> bool {
            self.spsc
        }
        fn head(&self) -> &L64 {
            &self.head
        }
        fn tail(&self) -> &L64 {
            &self.tail
        }
        fn seq(&self, i: usize) -> &L64 {
            &self.seq[i]
        }
        fn claim(&self, i: usize) -> &L32 {
            &self.claim[i]
        }
        fn len(&self, i: usize) -> &L32 {
            &self.len[i]
        }
        fn write(&self, i: usize, d: &[u8]) {
            self.data[i].store(u64::from_le_bytes(d.try_into().unwrap()), Ordering::Relaxed);
        }
        fn read(&self, i: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.data[i].load(Ordering::Relaxed).to_le_bytes());
        }
        fn max(&self) -> usize {
            8
        }
        fn alive(&self, _pid: u32) -> bool {
            true
        }
    }

    /// The preemption bound: `default`, or `LOOM_MAX_PREEMPTIONS` for a deeper run.
    fn bound(default: usize) -> usize {
        std::env::var("LOOM_MAX_PREEMPTIONS").map_or(default, |v| v.parse().expect("a number"))
    }

    pub fn send(r: &LoomRing, pid: u32, v: u64) {
        loop {
            match push(r, pid, &v.to_le_bytes(), false) {
                Push::Sent => return,
                Push::Full | Push::Busy => loom::thread::yield_now(),
                Push::Corrupt(why) => panic!("corrupt: {why}"),
            }
        }
    }

    /// The SPSC producer: the Lamport ring with its private cursor.
    pub fn spsc_send(r: &LoomRing, c: &mut Cursor, v: u64) {
        loop {
            match spsc_push(r, c, &v.to_le_bytes()) {
                Push::Sent => return,
                Push::Full | Push::Busy => loom::thread::yield_now(),
                Push::Corrupt(why) => panic!("corrupt: {why}"),
            }
        }
    }

    pub fn recv(r: &LoomRing, pid: u32) -> u64 {
        let mut out = Vec::new();
        loop {
            match pop(r, pid, &mut out, false) {
                Pop::Got => return u64::from_le_bytes(out[..].try_into().unwrap()),
                Pop::Empty | Pop::Busy => loom::thread::yield_now(),
                other => panic!("pop: {other:?}"),
            }
        }
    }

    pub fn spsc_recv(r: &LoomRing, c: &mut Cursor) -> u64 {
        let mut out = Vec::new();
        loop {
            // Every pop also runs the periodic cross-check of `tail`: it
            // must never call a correct ring corrupt.
            match spsc_pop(r, c, &mut out, true) {
                Pop::Got => return u64::from_le_bytes(out[..].try_into().unwrap()),
                Pop::Empty | Pop::Busy => loom::thread::yield_now(),
                other => panic!("pop: {other:?}"),
            }
        }
    }

    /// The SPSC Lamport ring: one producer sends four messages through a
    /// two-slot ring (two laps) to one consumer; every one
    /// arrives once, in order, with the data written (the payloads are
    /// relaxed atomics, so only the seq/head Release/Acquire pairs order
    /// them), and the producer's cached `head` never lets it overrun the
    /// consumer.
    pub fn spsc_lamport() {
        let mut b = loom::model::Builder::new();
        // Two preemptions in a debug build (CI time), three in release.
        b.preemption_bound = Some(bound(if cfg!(debug_assertions) { 2 } else { 3 }));
        b.max_branches = 100_000;
        b.check(move || {
            let r = Arc::new(LoomRing::new(2, true));
            let r2 = r.clone();
            let mut pc = Cursor::producer(&*r).unwrap();
            let mut cc = Cursor::consumer(&*r).unwrap();
            let p = loom::thread::spawn(move || {
                for v in 1..=4u64 {
                    spsc_send(&r2, &mut pc, v);
                }
            });
            for v in 1..=4u64 {
                assert_eq!(spsc_recv(&r, &mut cc), v);
            }
            p.join().unwrap();
        });
    }

    pub fn two_producers_one_consumer() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound(1));
        b.max_branches = 100_000;
        b.check(move || {
            let r = Arc::new(LoomRing::new(2, false));
            let producers: Vec<_> = [11u64, 22]
                .into_iter()
                .enumerate()
                .map(|(k, v)| {
                    let r = r.clone();
                    loom::thread::spawn(move || send(&r, 100 + k as u32, v))
                })
                .collect();
            let mut got = vec![recv(&r, 200), recv(&r, 200)];
            for p in producers {
                p.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, vec![11, 22]);
        });
    }

    /// More than a lap: one producer sends three messages through a
    /// two-slot MPMC ring to one consumer (slot reuse: release then reclaim).
    pub fn wraparound() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound(3));
        b.max_branches = 100_000;
        b.check(move || {
            let r = Arc::new(LoomRing::new(2, false));
            let r2 = r.clone();
            let p = loom::thread::spawn(move || {
                for v in 1..=3u64 {
                    send(&r2, 100, v);
                }
            });
            for v in 1..=3u64 {
                assert_eq!(recv(&r, 200), v);
            }
            p.join().unwrap();
        });
    }
}

#[test]
fn loom_mpmc_two_producers_one_consumer() {
    model::two_producers_one_consumer();
}

#[test]
fn loom_spsc_lamport_ring() {
    model::spsc_lamport();
}

#[test]
fn loom_wraparound() {
    model::wraparound();
}

// ---------------------------------------------------------------- typed messages

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u64,
    name: String,
    weights: Vec<f32>,
}

fn job(id: u64) -> Job {
    Job { id, name: format!("job-{id}"), weights: (0..(id % 7)).map(|k| k as f32 * 0.5).collect() }
}

#[test]
fn typed_values_across_threads_hand_back_and_survive_bad_messages() {
    use ipckit::shm::{ShmTypedReceiver, ShmTypedSender};
    use ipckit::{RecvError, SendError};
    let (chan, _c) = create("typed", &Config::mpmc(8, 128));
    let mut tx = ShmTypedSender::<Job>::new(chan.sender().unwrap().with_wait(WaitMode::Block));
    let rx_end = chan.receiver().unwrap().with_wait(WaitMode::Block);
    let total = 2_000u64;
    let reader = thread::spawn(move || {
        let mut rx = ShmTypedReceiver::<Job>::new(rx_end);
        for i in 0..total {
            assert_eq!(rx.recv_timeout(LONG).unwrap(), job(i));
        }
        rx
    });
    for i in 0..total {
        tx.send_timeout(job(i), LONG).unwrap();
    }
    let mut rx = reader.join().unwrap();

    // Too large for a slot: TooLarge, and the value comes back.
    let big = Job { id: 1, name: "x".repeat(500), weights: vec![] };
    match tx.send(big.clone()) {
        Err(e @ SendError::TooLarge { .. }) => assert_eq!(e.into_inner(), big),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Full: try_send hands the value back.
    for i in 0..chan.capacity() as u64 {
        tx.try_send(job(i)).unwrap();
    }
    match tx.try_send(job(99)) {
        Err(e @ TrySendError::Full(_)) => assert_eq!(e.into_inner(), job(99)),
        other => panic!("expected Full, got {other:?}"),
    }
    for i in 0..chan.capacity() as u64 {
        assert_eq!(rx.try_recv().unwrap(), job(i));
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // Bytes that are not a Job: a Decode error, consumed; the next value still arrives.
    let mut raw = chan.sender().unwrap();
    raw.send(&[0xff_u8, 0xff, 0xff][..]).unwrap();
    tx.send(job(5)).unwrap();
    assert!(matches!(rx.recv(), Err(RecvError::Decode(_))));
    assert_eq!(rx.recv().unwrap(), job(5));

    // Every sender gone: Disconnected.
    drop(raw);
    drop(tx.into_inner());
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
}

const TYPED_ROLE: &str = "IPCKIT_SHM_CHAN_TYPED_ROLE";

/// Child of `typed_values_across_processes`: echoes each `Job` back with
/// `id + 1` until its senders are gone. Returns at once in a normal run.
#[test]
fn typed_child_main() {
    use ipckit::shm::{ShmTypedReceiver, ShmTypedSender};
    let Ok(role) = std::env::var(TYPED_ROLE) else { return };
    let (req, rep) = role.split_once(' ').unwrap();
    let mut rx = ShmTypedReceiver::<Job>::new(ShmChannel::open(req).unwrap().receiver().unwrap());
    let mut tx = ShmTypedSender::<Job>::new(ShmChannel::open(rep).unwrap().sender().unwrap());
    say("ready");
    loop {
        match rx.recv_timeout(LONG) {
            Ok(mut j) => {
                j.id += 1;
                tx.send_timeout(j, LONG).unwrap();
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("typed child: {e}"),
        }
    }
    say("done");
    std::process::exit(0);
}

#[test]
fn typed_values_across_processes() {
    use ipckit::shm::{ShmTypedReceiver, ShmTypedSender};
    let (req, _c1) = create("typed-req", &Config::spsc(4, 256));
    let (rep, _c2) = create("typed-rep", &Config::spsc(4, 256));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "typed_child_main", "--nocapture", "--test-threads=1"])
        .env(TYPED_ROLE, format!("{} {}", req.segment().name(), rep.segment().name()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (rtx, reports) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find(REPORT) {
                let _ = rtx.send(line[at + REPORT.len()..].to_owned());
            }
        }
    });
    let mut kid = Kid { child, reports };
    let mut tx = ShmTypedSender::<Job>::new(req.sender().unwrap());
    let mut rx = ShmTypedReceiver::<Job>::new(rep.receiver().unwrap());
    assert_eq!(kid.report(), "ready");
    for i in 0..scaled(2_000) {
        tx.send_timeout(job(i), LONG).unwrap();
        let mut want = job(i);
        want.id += 1;
        assert_eq!(rx.recv_timeout(LONG).unwrap(), want);
    }
    drop(tx);
    assert_eq!(kid.report(), "done");
    kid.wait_success();
}

const INHERIT_ROLE: &str = "IPCKIT_SHM_CHAN_INHERIT_ROLE";

/// Child of `a_channel_handed_to_a_child_with_inherit`: takes the two
/// channels its parent passed, echoes each message reversed until the
/// parent's sender is gone. Returns at once in a normal run.
#[test]
fn inherit_child_main() {
    if std::env::var(INHERIT_ROLE).is_err() {
        return;
    }
    let req: ShmChannel = ipckit::spawn::inherited("req").unwrap();
    let rep: ShmChannel = ipckit::spawn::inherited("rep").unwrap();
    let mut rx = req.receiver().unwrap();
    let mut tx = rep.sender().unwrap();
    say("ready");
    loop {
        match rx.recv_timeout(LONG) {
            Ok(m) => {
                let mut b = m.into_bytes();
                b.reverse();
                tx.send_timeout(b, LONG).unwrap();
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("inherit child: {e}"),
        }
    }
    say("done");
    std::process::exit(0);
}

#[test]
fn a_channel_handed_to_a_child_with_inherit() {
    use ipckit::Transferable;
    let (req, _c1) = create("inh-req", &Config::spsc(4, 256));
    let (rep, _c2) = create("inh-rep", &Config::mpmc(4, 256));
    // A handle of the wrong kind is refused; the right one round-trips.
    let h = req.clone().into_handle().unwrap();
    assert_eq!(h.kind(), ipckit::HandleKind::ShmChannel);
    let back = ShmChannel::from_handle(h).unwrap();
    assert_eq!(back.capacity(), 4);
    assert_eq!(back.flavor(), Flavor::Spsc);
    assert!(matches!(Segment::from_handle(rep.clone().into_handle().unwrap()), Err(Error::BadHandle(_))));

    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "inherit_child_main", "--nocapture", "--test-threads=1"])
        .env(INHERIT_ROLE, "1")
        .stdout(Stdio::piped());
    let mut kit = ipckit::spawn::Inherit::new();
    kit.pass("req", req.clone()).unwrap();
    kit.pass("rep", rep.clone()).unwrap();
    let mut child = kit.spawn(&mut cmd).unwrap();
    let out = child.stdout.take().unwrap();
    let (rtx, reports) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find(REPORT) {
                let _ = rtx.send(line[at + REPORT.len()..].to_owned());
            }
        }
    });
    let mut kid = Kid { child, reports };
    let mut tx = req.sender().unwrap();
    let mut rx = rep.receiver().unwrap();
    assert_eq!(kid.report(), "ready");
    for i in 0..scaled(500) {
        let msg = encode(7, i);
        tx.send_timeout(msg.clone(), LONG).unwrap();
        let mut want = msg;
        want.reverse();
        assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), &want[..]);
    }
    drop(tx);
    assert_eq!(kid.report(), "done");
    kid.wait_success();
}

#[test]
fn a_channel_sent_over_a_unix_socket() {
    let (chan, _c) = create("sock", &Config::mpmc(8, 64));
    let (mut a, mut b) = ipckit::Connection::pair(ipckit::SocketKind::SeqPacket).unwrap();
    let mut tx = chan.sender().unwrap();
    a.send_timeout(ipckit::Message::new(b"ring".to_vec()).with(chan.clone()).unwrap(), LONG).unwrap();
    let mut m = b.recv_timeout(LONG).unwrap();
    assert_eq!(m.bytes(), b"ring");
    let got: ShmChannel = m.take().unwrap();
    assert_eq!(got.segment().name(), chan.segment().name());
    assert_eq!((got.capacity(), got.max_message_size(), got.flavor()), (8, 64, Flavor::Mpmc));
    let mut rx = got.receiver().unwrap();
    tx.send_timeout(&b"through the socket"[..], LONG).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap().bytes(), b"through the socket");
}
