//! The RPC conformance suite: `call`/`reply` behaviour written once and run
//! over every two-way transport (socketpair stream and seqpacket, a pipe
//! pair, and a listener at a path). Cross-process cases (a server killed
//! mid-call, hostile raw clients) are in `tests/process.rs`.

mod suite;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::rpc::{Client, Request, Server};
use ipckit::{pipe, unix, CallError, Connection, RecvTimeoutError, SocketKind};
use suite::{TempDir, LONG};

#[derive(Clone, Copy, Debug)]
enum Link {
    PairStream,
    PairSeqPacket,
    Pipes,
    ListenerStream,
    ListenerSeqPacket,
}

/// A connected client and server (the temp dir keeps a listener's path alive).
struct Rig {
    client: Client,
    server: Server,
    _dir: TempDir,
}

impl Link {
    fn rig(self) -> Rig {
        let dir = TempDir::new("rpc");
        let (client, server) = match self {
            Link::PairStream | Link::PairSeqPacket => {
                let kind =
                    if matches!(self, Link::PairStream) { SocketKind::Stream } else { SocketKind::SeqPacket };
                let (a, b) = Connection::pair(kind).unwrap();
                let mut s = Server::new();
                s.add(b);
                (Client::new(a), s)
            }
            Link::Pipes => {
                let (a, b) = pipe::duplex().unwrap();
                let mut s = Server::new();
                s.add(b);
                (Client::new(a), s)
            }
            Link::ListenerStream | Link::ListenerSeqPacket => {
                let kind = if matches!(self, Link::ListenerStream) {
                    SocketKind::Stream
                } else {
                    SocketKind::SeqPacket
                };
                let path = dir.join("svc.sock");
                let s = Server::with_listener(unix::Listener::bind(&path, kind).unwrap());
                (Client::new(unix::connect(&path, kind).unwrap()), s)
            }
        };
        Rig { client, server, _dir: dir }
    }
}

macro_rules! for_link {
    ($name:ident, $l:expr) => {
        mod $name {
            #[test]
            fn echo_from_many_threads() {
                super::echo_from_many_threads($l)
            }
            #[test]
            fn out_of_order_replies_reach_their_calls() {
                super::out_of_order_replies_reach_their_calls($l)
            }
            #[test]
            fn late_reply_is_dropped() {
                super::late_reply_is_dropped($l)
            }
            #[test]
            fn server_gone_fails_pending_calls_at_once() {
                super::server_gone_fails_pending_calls_at_once($l)
            }
            #[test]
            fn oversized_request_is_refused() {
                super::oversized_request_is_refused($l)
            }
            #[test]
            fn typed_calls() {
                super::typed_calls($l)
            }
        }
    };
}

for_link!(pair_stream, super::Link::PairStream);
for_link!(pair_seqpacket, super::Link::PairSeqPacket);
for_link!(pipes, super::Link::Pipes);
for_link!(listener_stream, super::Link::ListenerStream);
for_link!(listener_seqpacket, super::Link::ListenerSeqPacket);

/// Serves reversed echoes on a thread until its clients are gone.
fn spawn_echo(mut server: Server) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let deadline = Instant::now() + LONG;
        let mut served = false;
        while Instant::now() < deadline {
            match server.recv_timeout(Duration::from_millis(50)) {
                Ok(req) => {
                    served = true;
                    let mut out = req.bytes().to_vec();
                    out.reverse();
                    req.reply(out).unwrap();
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if served && server.clients() == 0 => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
}

fn echo_from_many_threads(l: Link) {
    let rig = l.rig();
    let server = spawn_echo(rig.server);
    let client = Arc::new(rig.client.with_timeout(LONG));
    let callers: Vec<_> = (0..4u8)
        .map(|t| {
            let c = client.clone();
            thread::spawn(move || {
                for i in 0..300u16 {
                    let req = [t, (i >> 8) as u8, i as u8, 0xAA];
                    let rep = c.call(req.to_vec()).unwrap();
                    assert_eq!(
                        rep.bytes(),
                        [0xAA, i as u8, (i >> 8) as u8, t],
                        "reply matched to the wrong call"
                    );
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
    assert_eq!(client.late_replies(), 0);
    drop(client);
    server.join().unwrap();
}

fn out_of_order_replies_reach_their_calls(l: Link) {
    let mut rig = l.rig();
    let client = Arc::new(rig.client.with_timeout(LONG));
    let start = Arc::new(Barrier::new(4));
    let callers: Vec<_> = (0..3u8)
        .map(|t| {
            let (c, b) = (client.clone(), start.clone());
            thread::spawn(move || {
                b.wait();
                thread::sleep(Duration::from_millis(20 * u64::from(t)));
                let rep = c.call(vec![t]).unwrap();
                assert_eq!(rep.bytes(), [t, t]);
            })
        })
        .collect();
    start.wait();
    let mut reqs: Vec<Request> = (0..3).map(|_| rig.server.recv_timeout(LONG).unwrap()).collect();
    // Reply in reverse order, each from a thread of its own.
    reqs.reverse();
    let repliers: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            thread::spawn(move || {
                let b = r.bytes()[0];
                r.reply(vec![b, b]).unwrap();
            })
        })
        .collect();
    for r in repliers {
        r.join().unwrap();
    }
    for c in callers {
        c.join().unwrap();
    }
}

fn late_reply_is_dropped(l: Link) {
    let mut rig = l.rig();
    let client = rig.client;
    let t = thread::spawn(move || {
        let r = client.call_timeout("slow", Duration::from_millis(100));
        assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
        client
    });
    let slow = rig.server.recv_timeout(LONG).unwrap();
    assert_eq!(slow.bytes(), b"slow");
    let client = t.join().unwrap();
    // Answer the call that already gave up, then serve a new one.
    slow.reply("late").unwrap();
    let t = thread::spawn(move || {
        let r = client.call_timeout("fresh", LONG).unwrap();
        (client, r)
    });
    let fresh = rig.server.recv_timeout(LONG).unwrap();
    assert_eq!(fresh.bytes(), b"fresh");
    fresh.reply("fresh reply").unwrap();
    let (client, r) = t.join().unwrap();
    assert_eq!(r.bytes(), b"fresh reply", "a late reply was handed to another call");
    assert_eq!(client.late_replies(), 1);
}

fn server_gone_fails_pending_calls_at_once(l: Link) {
    let mut rig = l.rig();
    let client = Arc::new(rig.client);
    let callers: Vec<_> = (0..3)
        .map(|i| {
            let c = client.clone();
            thread::spawn(move || {
                let start = Instant::now();
                let r = c.call_timeout(vec![i], Duration::from_secs(60));
                (r, start.elapsed())
            })
        })
        .collect();
    // Take the requests, then vanish without answering.
    for _ in 0..3 {
        rig.server.recv_timeout(LONG).unwrap();
    }
    drop(rig.server);
    for c in callers {
        let (r, took) = c.join().unwrap();
        assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
        assert!(took < Duration::from_secs(30), "waited {took:?} instead of failing at once");
    }
    assert!(matches!(client.call("again"), Err(CallError::Disconnected)));
}

fn oversized_request_is_refused(l: Link) {
    let rig = l.rig();
    let server = spawn_echo(rig.server);
    let client = rig.client.with_timeout(LONG);
    let big = vec![0u8; ipckit::DEFAULT_MAX_MESSAGE + 1];
    assert!(matches!(client.call(big), Err(CallError::TooLarge { .. })));
    assert_eq!(client.call("ok").unwrap().bytes(), b"ko");
    drop(client);
    server.join().unwrap();
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
enum Shape {
    Circle { r: f32 },
    Line(i32, i32, i32, i32),
}

fn typed_calls(l: Link) {
    let mut rig = l.rig();
    let t = thread::spawn(move || {
        for _ in 0..2 {
            let req = rig.server.recv_timeout(LONG).unwrap();
            let shape: Shape = req.decode().unwrap();
            let area = match shape {
                Shape::Circle { r } => 3.0 * r * r,
                Shape::Line(..) => 0.0,
            };
            req.reply_typed(&area).unwrap();
        }
    });
    let client = rig.client.with_timeout(LONG);
    let a: f32 = client.call_typed(&Shape::Circle { r: 2.0 }).unwrap();
    assert_eq!(a, 12.0);
    let a: f32 = client.call_typed(&Shape::Line(0, 0, 1, 1)).unwrap();
    assert_eq!(a, 0.0);
    t.join().unwrap();
}
