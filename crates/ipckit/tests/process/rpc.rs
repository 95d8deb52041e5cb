//! RPC against a server in another process: call timeouts, late replies,
//! the server dying under pending calls, and hostile clients (garbage, lying
//! headers, stalls, floods of requests whose replies are never read) on the
//! same server as a well-behaved one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ipckit::rpc::{Client, Server};
use ipckit::unix::{self, Listener};
use ipckit::{CallError, RecvTimeoutError, SocketKind};

use super::harness::{param, report, spawn, Kid, TempDir, CHILD_DEADLINE, LONG};

/// Child: an RPC server at `SOCK`. It echoes, except:
/// "ignore" gets no reply; "hang" is kept unanswered (reported as "hanging n");
/// "slow" is answered after 500 ms from another thread; "after-slow" is
/// answered once that slow reply is out; "whoami" is answered with the
/// caller's kernel-verified pid, uid and gid; "quit" ends the process.
pub(super) fn child_server() {
    let listener = Listener::bind(param("SOCK"), SocketKind::Stream).expect("bind");
    let mut server = Server::with_listener(listener);
    report("ready");
    let mut hanging = Vec::new();
    let mut slow = None;
    loop {
        let req = match server.recv_timeout(CHILD_DEADLINE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return, // the parent is gone
            Err(e) => panic!("server recv: {e:?}"),
        };
        match req.bytes() {
            b"ignore" => drop(req),
            b"hang" => {
                hanging.push(req);
                report(format!("hanging {}", hanging.len()));
            }
            b"slow" => {
                slow = Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(500));
                    let _ = req.reply("slow-done");
                }))
            }
            b"after-slow" => {
                if let Some(t) = slow.take() {
                    t.join().expect("slow replier");
                }
                let _ = req.reply("after-slow-done");
            }
            b"whoami" => {
                let cred = req.peer_cred().expect("a socket request has peer credentials");
                let _ = req.reply(format!("{} {} {}", cred.pid, cred.uid, cred.gid));
            }
            b"quit" => {
                let _ = req.reply("bye");
                return;
            }
            other => {
                let reply = [b"echo:", other].concat();
                let _ = req.reply(reply);
            }
        }
    }
}

struct Running {
    kid: Kid,
    sock: PathBuf,
    _dir: TempDir,
}

fn start_server(tag: &str) -> Running {
    let dir = TempDir::new(tag);
    let sock = dir.join("rpc.sock");
    let mut kid = spawn("rpc-server", &[("SOCK", sock.to_str().unwrap())], Default::default());
    assert_eq!(kid.report(), "ready");
    Running { kid, sock, _dir: dir }
}

impl Running {
    fn client(&self) -> Client {
        Client::new(unix::connect(&self.sock, SocketKind::Stream).unwrap())
    }

    fn quit(mut self, client: &Client) {
        assert_eq!(client.call_timeout("quit", LONG).unwrap().bytes(), b"bye");
        self.kid.wait_success();
    }
}

fn echo(client: &Client, what: &str) {
    let r = client.call_timeout(what, LONG).unwrap_or_else(|e| panic!("call {what}: {e:?}"));
    assert_eq!(r.bytes(), format!("echo:{what}").as_bytes());
}

#[test]
fn a_call_the_server_never_answers_times_out() {
    let server = start_server("rpc-timeout");
    let client = server.client();
    echo(&client, "before");
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let r = client.call_timeout("ignore", timeout);
    let took = start.elapsed();
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    assert!(took >= timeout - Duration::from_millis(50), "gave up early, after {took:?}");
    assert!(took < timeout + Duration::from_secs(5), "took {took:?} to time out");
    echo(&client, "after");
    let me = format!("{} {} {}", std::process::id(), ipckit::euid(), ipckit::egid());
    assert_eq!(client.call_timeout("whoami", LONG).unwrap().bytes(), me.as_bytes());
    assert_eq!(client.peer_cred().map(|c| c.pid), Some(server.kid.id()), "the client knows the server too");
    server.quit(&client);
}

#[test]
fn a_late_reply_goes_to_nobody() {
    let server = start_server("rpc-late");
    let client = server.client();
    let r = client.call_timeout("slow", Duration::from_millis(100));
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    // The server answers this only after the late reply is on the wire, so
    // the client must read past it to find its own.
    let r = client.call_timeout("after-slow", LONG).unwrap();
    assert_eq!(r.bytes(), b"after-slow-done");
    let deadline = Instant::now() + LONG;
    while client.late_replies() == 0 && Instant::now() < deadline {
        echo(&client, "poll");
    }
    assert_eq!(client.late_replies(), 1);
    for i in 0..20 {
        echo(&client, &format!("next-{i}"));
    }
    assert_eq!(client.late_replies(), 1);
    server.quit(&client);
}

#[test]
fn pending_calls_fail_at_once_when_the_server_dies() {
    for callers in [1, 4] {
        let mut server = start_server("rpc-death");
        let client = Arc::new(server.client());
        let (done_tx, done) = mpsc::channel();
        let threads: Vec<_> = (0..callers)
            .map(|_| {
                let (client, done_tx) = (client.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    let r = client.call_timeout("hang", Duration::from_secs(30));
                    let _ = done_tx.send((r.map(|m| m.into_bytes()), Instant::now()));
                })
            })
            .collect();
        for n in 1..=callers {
            assert_eq!(server.kid.expect("hanging"), n.to_string());
        }
        assert!(done.recv_timeout(Duration::from_millis(200)).is_err(), "a hanging call returned");
        let killed_at = Instant::now();
        server.kid.kill();
        for _ in 0..callers {
            let (r, at) = done.recv_timeout(Duration::from_secs(40)).expect("a pending call returned");
            assert!(matches!(r, Err(CallError::Disconnected)), "{callers} callers: {r:?}");
            let took = at.saturating_duration_since(killed_at);
            assert!(took < LONG, "{callers} callers: the call noticed the death after {took:?}");
        }
        for t in threads {
            t.join().unwrap();
        }
        let r = client.call_timeout("anyone?", LONG);
        assert!(matches!(r, Err(CallError::Disconnected)), "a call after the death: {r:?}");
    }
}

/// A frame header as documented in `wire`: magic, version, kind, length, id.
fn header(version: u8, kind: u8, len: u32, id: u64) -> Vec<u8> {
    let mut h = b"IK".to_vec();
    h.extend_from_slice(&[version, kind]);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h
}

const REQUEST: u8 = 4;
const REPLY: u8 = 5;

/// Connects a raw socket that sends `bytes`, and checks the server hangs up on it.
fn hung_up_on(sock: &PathBuf, bytes: &[u8], what: &str) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the server did not hang up on a client that sent {what}: {other:?}"),
    }
}

#[test]
fn hostile_clients_do_not_disturb_a_well_behaved_one() {
    let server = start_server("rpc-hostile");
    let client = Arc::new(server.client());
    for i in 0..100 {
        echo(&client, &format!("before-{i}"));
    }
    // A well-behaved caller keeps calling through everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let background = {
        let (client, stop, calls) = (client.clone(), stop.clone(), calls.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                echo(&client, &format!("bg-{n}"));
            }
        })
    };
    let progress = |what: &str| {
        let from = calls.load(Ordering::Relaxed);
        let deadline = Instant::now() + LONG;
        while calls.load(Ordering::Relaxed) < from + 5 {
            assert!(Instant::now() < deadline, "the background caller is stuck ({what})");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    progress("before the hostile clients");

    hung_up_on(&server.sock, b"GET / HTTP/1.1\r\nHost: ipckit\r\n\r\n", "garbage");
    hung_up_on(&server.sock, &header(1, REQUEST, 1 << 30, 1), "a header announcing 1 GiB");
    hung_up_on(&server.sock, &header(9, REQUEST, 4, 1), "a header of an unknown version");
    hung_up_on(&server.sock, &[header(1, REPLY, 2, 1), b"hi".to_vec()].concat(), "a reply to a server");
    // A client that connects and says nothing, and one that stalls mid-frame.
    let _silent = UnixStream::connect(&server.sock).unwrap();
    let payload = b"0123456789".repeat(10);
    let mut stalled = UnixStream::connect(&server.sock).unwrap();
    stalled.write_all(&header(1, REQUEST, payload.len() as u32, 7)).unwrap();
    stalled.write_all(&payload[..50]).unwrap();
    for i in 0..100 {
        echo(&client, &format!("during-{i}"));
    }
    // The stalled client finishes its frame: the server answers it like any other.
    stalled.write_all(&payload[50..]).unwrap();
    stalled.set_read_timeout(Some(LONG)).unwrap();
    let mut head = [0u8; 16];
    stalled.read_exact(&mut head).expect("a reply to the completed frame");
    let want_body = [b"echo:".as_slice(), &payload].concat();
    assert_eq!(head.to_vec(), header(1, REPLY, want_body.len() as u32, 7));
    let mut body = vec![0u8; want_body.len()];
    stalled.read_exact(&mut body).unwrap();
    assert_eq!(body, want_body);
    progress("with a silent client connected");
    drop(stalled);

    stop.store(true, Ordering::Relaxed);
    background.join().expect("the background caller never failed");
    for i in 0..100 {
        echo(&client, &format!("after-{i}"));
    }
    server.quit(&client);
}

#[test]
fn a_client_that_never_reads_its_replies_cannot_stall_the_server() {
    let server = start_server("rpc-flood");
    let client = server.client();
    echo(&client, "before");
    // The flooder writes requests and never reads a reply: soon the server's
    // replies to it cannot be written, and the server stops reading it.
    let written = Arc::new(AtomicU32::new(0));
    let flooder = {
        let (sock, written) = (server.sock.clone(), written.clone());
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(sock).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let frame = [header(1, REQUEST, 1, 0), b"x".to_vec()].concat();
            loop {
                if let Err(e) = s.write_all(&frame) {
                    return e;
                }
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Wait until the flood is stuck (the server no longer reads it).
    let deadline = Instant::now() + LONG;
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(Ordering::Relaxed);
        if now > 0 && now == last {
            break;
        }
        assert!(Instant::now() < deadline, "the flood never stalled ({now} requests written)");
        last = now;
    }
    // A well-behaved client may have to wait out one reply timeout, not one per flooded request.
    for i in 0..3 {
        let r = client.call_timeout(format!("during-{i}"), Duration::from_secs(30));
        assert_eq!(r.map(|m| m.into_bytes()).ok(), Some(format!("echo:during-{i}").into_bytes()));
    }
    // And the flooder has lost its connection.
    let e = flooder.join().unwrap();
    assert!(
        matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
        "the flooder's writes ended with {e:?}, not a closed connection"
    );
    server.quit(&client);
}
