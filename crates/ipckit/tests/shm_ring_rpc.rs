//! RPC over the multi-client shared-memory rings (`ipckit::shm::ring_rpc`):
//! many client threads and a client process against one server, timeouts
//! and late replies, a server killed with SIGKILL, and reply rings cleaned up.
//!
//! Children are this test binary run again with `--exact child_main` and a
//! role in `IPCKIT_RING_RPC_ROLE`; they report on stdout lines starting
//! with `@rrpc `. Every blocking call has a timeout, every child is killed
//! and reaped on drop, and every segment is removed by a guard.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::ring_rpc::{RingRpcClient, RingRpcConfig, RingRpcServer};
use ipckit::shm::{Segment, PREFIX};
use ipckit::{CallError, RecvTimeoutError, ReplyError};

const LONG: Duration = Duration::from_secs(30);
const ROLE: &str = "IPCKIT_RING_RPC_ROLE";
const REPORT: &str = "@rrpc ";

fn name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-rrpc-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Removes the segment when the test ends, however it ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Segment::remove(&self.0);
    }
}

fn shm_exists(n: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{PREFIX}{n}")).exists()
}

/// The server's answer: the request reversed, then its length.
fn answer(req: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = req.iter().rev().copied().collect();
    v.push(req.len() as u8);
    v
}

fn request(client: u32, i: u32) -> Vec<u8> {
    let mut v = client.to_le_bytes().to_vec();
    v.extend_from_slice(&i.to_le_bytes());
    v.extend((0..(i % 50) as u8).map(|k| k ^ client as u8));
    v
}

/// Serves until `stop`, answering every request.
fn serve(mut server: RingRpcServer, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        match server.recv_timeout(Duration::from_millis(20)) {
            Ok(req) => {
                let a = answer(req.bytes());
                match server.reply(&req, &a) {
                    Ok(()) | Err(ReplyError::Disconnected) => n += 1,
                    Err(e) => panic!("reply: {e}"),
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("server recv: {e}"),
        }
    }
    n
}

/// A child process running this test binary in a role; killed and reaped on drop.
struct Kid {
    child: Child,
    reports: mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str, arg: &str) -> Kid {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("{role} {arg}"))
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
            thread::sleep(Duration::from_millis(10));
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
    println!("{REPORT}{line}");
}

/// The child roles. Returns at once in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, arg) = role.split_once(' ').unwrap();
    match role {
        // Calls the server `arg` 300 times, checking every answer.
        "client" => {
            let mut c = RingRpcClient::connect(arg).unwrap();
            for i in 0..300 {
                let r = request(1000, i);
                assert_eq!(c.call_timeout(&r, LONG).unwrap(), answer(&r));
            }
            let ring = c.reply_ring().to_owned();
            drop(c);
            assert!(!shm_exists(&ring), "the reply ring was not removed");
            say("done");
        }
        // Serves `arg` until killed.
        "server" => {
            let server = RingRpcServer::create(arg, &RingRpcConfig::default()).unwrap();
            say("ready");
            serve(server, Arc::new(AtomicBool::new(false)));
        }
        // Takes one request, never answers.
        "mute" => {
            let mut server = RingRpcServer::create(arg, &RingRpcConfig::default()).unwrap();
            say("ready");
            let _req = server.recv_timeout(LONG).unwrap();
            say("got");
            thread::sleep(LONG * 10);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn many_client_threads_and_a_client_process_share_one_server() {
    let n = name("many");
    let _c = Cleanup(n.clone());
    let server =
        RingRpcServer::create(&n, &RingRpcConfig { slots: 8, max_message: 512, mode: 0o600 }).unwrap();
    assert_eq!(server.max_message_size(), 512);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let srv = thread::spawn(move || serve(server, st));
    let mut kid = Kid::spawn("client", &n);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let n = n.clone();
            thread::spawn(move || {
                let mut c = RingRpcClient::connect(&n).unwrap();
                assert!(c.reply_ring().starts_with(&format!("{n}-r{}-", std::process::id())));
                for i in 0..500 {
                    let r = request(t, i);
                    assert_eq!(c.call(&r).unwrap(), answer(&r));
                }
                // Too large is refused before anything is sent.
                let big = vec![0; c.max_message_size() + 1];
                assert!(matches!(c.call(&big), Err(CallError::TooLarge { .. })));
                c.reply_ring().to_owned()
            })
        })
        .collect();
    let rings: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(kid.report(), "done");
    kid.wait_success();
    stop.store(true, Ordering::Release);
    assert_eq!(srv.join().unwrap(), 4 * 500 + 300);
    for r in rings {
        assert!(!shm_exists(&r), "reply ring {r} left behind");
    }
}

#[test]
fn a_call_times_out_and_its_late_reply_is_dropped() {
    let n = name("late");
    let _c = Cleanup(n.clone());
    let mut server = RingRpcServer::create(&n, &RingRpcConfig::default()).unwrap();
    let mut c = RingRpcClient::connect(&n).unwrap().with_timeout(Duration::from_millis(100));
    let t0 = Instant::now();
    assert!(matches!(c.call(b"first"), Err(CallError::Timeout)));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
    // The server answers the abandoned call late, then the next one.
    let first = server.recv_timeout(LONG).unwrap();
    assert_eq!(first.bytes(), b"first");
    server.reply(&first, b"late").unwrap();
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        server.reply(&req, &answer(req.bytes())).unwrap();
        server
    });
    assert_eq!(c.call_deadline(b"second", Instant::now() + LONG).unwrap(), answer(b"second"));
    let mut server = t.join().unwrap();
    // try_recv / too-large reply.
    assert!(matches!(server.try_recv(), Err(ipckit::TryRecvError::Empty)));
    let t = thread::spawn(move || {
        let req = server.recv_timeout(LONG).unwrap();
        let big = vec![0; server.max_message_size() + 1];
        assert!(matches!(server.reply(&req, &big), Err(ReplyError::TooLarge { .. })));
        server.reply(&req, b"ok").unwrap();
    });
    assert_eq!(c.call_timeout(b"x", LONG).unwrap(), b"ok");
    t.join().unwrap();
}

#[test]
fn a_killed_server_gives_disconnected_in_bounded_time() {
    let n = name("kill");
    let _c = Cleanup(n.clone());
    let mut kid = Kid::spawn("server", &n);
    assert_eq!(kid.report(), "ready");
    // One client whose reply ring the server has opened, one it never saw.
    let mut seen = RingRpcClient::connect(&n).unwrap();
    assert_eq!(seen.call(b"abc").unwrap(), answer(b"abc"));
    let mut unseen = RingRpcClient::connect(&n).unwrap();
    kid.kill();
    for c in [&mut seen, &mut unseen] {
        let t0 = Instant::now();
        assert!(matches!(c.call_timeout(b"hello?", LONG), Err(CallError::Disconnected)));
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
    }
    // A call blocked while the server dies also returns.
    let _ = Segment::remove(&n);
    let mut kid = Kid::spawn("mute", &n);
    assert_eq!(kid.report(), "ready");
    let mut c = RingRpcClient::connect(&n).unwrap();
    let waiter = thread::spawn(move || c.call_timeout(b"unanswered", LONG));
    assert_eq!(kid.report(), "got");
    kid.kill();
    let killed = Instant::now();
    assert!(matches!(waiter.join().unwrap(), Err(CallError::Disconnected)));
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?}", killed.elapsed());
    // Connecting to a dead server is refused.
    assert!(RingRpcClient::connect(&n).is_err());
}
