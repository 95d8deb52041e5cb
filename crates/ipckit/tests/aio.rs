//! `ipckit::aio` (feature `tokio`): async connections against blocking
//! peers in other processes (sockets and pipes handed over at spawn),
//! large frames written in many parts, cancellation, peer death.
//!
//! Run with `cargo test -p ipckit --features tokio --test aio`.

use std::process::Command;
use std::time::Duration;

use ipckit::aio::{AsyncClient, AsyncConnection, AsyncListener};
use ipckit::rpc::{Client, Server};
use ipckit::spawn::{self, Inherit};
use ipckit::CallError;
use ipckit::{Connection, Message, RecvError, SendError, SocketKind};
use tokio::time::timeout;

mod support;

use support::Kid;

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_AIO_ROLE";
const MIB: usize = 1 << 20;

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    if let Some(path) = role.strip_prefix("connect:") {
        // Connect to an async server by path, make 50 calls, exit 0 if all were right.
        let conn = ipckit::unix::connect(path, SocketKind::Stream).unwrap();
        let client = Client::new(conn).with_timeout(LONG);
        for i in 0..50u32 {
            let got = client.call(i.to_le_bytes().to_vec()).unwrap();
            let want = [i.to_le_bytes().to_vec(), std::process::id().to_le_bytes().to_vec()].concat();
            assert_eq!(got.bytes(), &want[..], "call {i}");
        }
        std::process::exit(0);
    }
    let mut conn: Connection = spawn::inherited("conn").unwrap();
    match role.as_str() {
        // Echo every message back, reversed, until the parent hangs up.
        "echo" => {
            while let Ok(m) = conn.recv() {
                let mut v = m.into_bytes();
                v.reverse();
                conn.send(v).unwrap();
            }
        }
        // Never read: the parent's sends fill the socket buffer.
        "deaf" => std::thread::sleep(LONG * 10),
        // Send a burst of small messages at once, then wait to be killed.
        "burst" => {
            for i in 0..200u32 {
                conn.send(i.to_le_bytes().to_vec()).unwrap();
            }
            std::thread::sleep(LONG * 10);
        }
        // A blocking RPC server: echo reversed; "slow" answers after 300 ms;
        // typed requests ("square", u32) are answered with the square (u64).
        "rpc-server" => {
            let mut server = Server::new();
            server.add(conn);
            server
                .serve(|req| {
                    if req.bytes() == b"slow" {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    if let Ok((tag, n)) = req.decode::<(String, u32)>() {
                        if tag == "square" {
                            return Message::new(
                                postcard::to_stdvec(&(u64::from(n) * u64::from(n))).unwrap(),
                            );
                        }
                    }
                    let mut v = req.bytes().to_vec();
                    v.reverse();
                    Message::new(v)
                })
                .unwrap();
            std::process::exit(0);
        }
        // A blocking RPC client: 300 calls, each answer checked; exit 0 if all right.
        "rpc-client" => {
            let client = Client::new(conn).with_timeout(LONG);
            for i in 0..300usize {
                let req = pattern(i, [3, 5000, 300_000][i % 3]);
                let got = client.call(req.clone()).unwrap();
                let want: Vec<u8> = req.iter().map(|b| b.wrapping_add(1)).collect();
                assert_eq!(got.bytes(), &want[..], "call {i}");
            }
            std::process::exit(0);
        }
        // Send one message, then exit (the parent then sees the end).
        "once" => conn.send("bye").unwrap(),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Spawns this test binary in `role` with `theirs` as its connection.
fn child(role: &str, theirs: Connection) -> Kid {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"]).env(ROLE, role);
    let mut inherit = Inherit::new();
    inherit.pass("conn", theirs).unwrap();
    Kid(inherit.spawn(&mut cmd).unwrap())
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as u8).wrapping_mul(13) ^ (k as u8) ^ (k >> 9) as u8).collect()
}

/// Sizes from empty to 4 MiB (a 4 MiB frame needs many writes and reads
/// through a socket buffer of about 200 KiB, or a pipe's 1 MiB).
const SIZES: [usize; 7] = [0, 1, 100, 4096, 65_536 + 3, MIB, 4 * MIB];

async fn echo_round_trips(conn: Connection, role: &str) {
    let mut a = AsyncConnection::new(conn.with_max_message_size(8 * MIB)).unwrap();
    for (i, &len) in SIZES.iter().cycle().take(3 * SIZES.len()).enumerate() {
        let sent = pattern(i, len);
        timeout(LONG, a.send(sent.clone())).await.expect("send in time").unwrap();
        let got = timeout(LONG, a.recv()).await.expect("recv in time").unwrap();
        let mut want = sent;
        want.reverse();
        assert!(got.bytes() == &want[..], "{role}: message {i} ({len} bytes) came back wrong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_socket_round_trips_with_a_blocking_process() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let (ours, theirs) = Connection::pair(kind).unwrap();
        let _kid = child("echo", theirs.with_max_message_size(8 * MIB));
        if kind == SocketKind::SeqPacket {
            // One datagram per message: keep to what fits a socket buffer.
            let mut a = AsyncConnection::new(ours).unwrap();
            for (i, len) in [0usize, 1, 100, 4096, 60_000].into_iter().enumerate() {
                timeout(LONG, a.send(pattern(i, len))).await.unwrap().unwrap();
                let got = timeout(LONG, a.recv()).await.unwrap().unwrap();
                assert_eq!(got.bytes().len(), len);
            }
            assert!(a.peer_cred().is_some(), "the kernel's credentials of the peer");
        } else {
            echo_round_trips(ours, "stream").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pipe_round_trips_with_a_blocking_process() {
    let (ours, theirs) = ipckit::pipe::duplex().unwrap();
    let _kid = child("echo", theirs.with_max_message_size(8 * MIB));
    echo_round_trips(ours, "pipes").await;
}

/// Several connections served at once by one runtime thread: none blocks
/// the others.
#[tokio::test(flavor = "current_thread")]
async fn many_connections_on_one_thread() {
    let mut kids = Vec::new();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
        kids.push(child("echo", theirs.with_max_message_size(8 * MIB)));
        let mut a = AsyncConnection::new(ours.with_max_message_size(8 * MIB)).unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let len = [10, 70_000, MIB][(i + t) % 3];
                let sent = pattern(i, len);
                a.send(sent.clone()).await.unwrap();
                let got = a.recv().await.unwrap();
                assert_eq!(got.bytes().len(), len);
                assert_eq!(got.bytes()[0], sent[len - 1], "task {t} message {i}");
            }
        }));
    }
    for t in tasks {
        timeout(LONG, t).await.expect("tasks finish in time").unwrap();
    }
}

/// A `recv` cancelled by a timeout loses nothing: the next one gets the
/// whole message, also when part of it had been read already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_recv_loses_nothing() {
    let (ours, mut theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let mut a = AsyncConnection::new(ours.with_max_message_size(8 * MIB)).unwrap();
    assert!(timeout(Duration::from_millis(50), a.recv()).await.is_err(), "nothing sent yet");
    let big = pattern(7, 4 * MIB);
    let want = big.clone();
    let writer = std::thread::spawn(move || {
        theirs = theirs.with_max_message_size(8 * MIB);
        theirs.send(big).unwrap();
        theirs
    });
    // Cancel reads part-way through the 4 MiB frame, many times over.
    let mut got = None;
    for _ in 0..10_000 {
        match timeout(Duration::from_micros(200), a.recv()).await {
            Ok(m) => {
                got = Some(m.unwrap());
                break;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    let got = match got {
        Some(m) => m,
        None => timeout(LONG, a.recv()).await.unwrap().unwrap(),
    };
    assert!(got.bytes() == &want[..], "the message came through intact");
    drop(writer.join().unwrap());
}

/// A `send` cancelled after part of its frame went out leaves the stream
/// without a frame boundary: later sends are refused, not garbled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cancelled_mid_frame_refuses_later_sends() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let _kid = child("deaf", theirs);
    let mut a = AsyncConnection::new(ours.with_max_message_size(64 * MIB)).unwrap();
    let r = timeout(Duration::from_millis(200), a.send(vec![1u8; 32 * MIB])).await;
    assert!(r.is_err(), "a 32 MiB frame cannot fit an unread socket");
    let r = timeout(LONG, a.send("next")).await.unwrap();
    assert!(matches!(r, Err(SendError::Disconnected(_))), "{r:?}");
}

/// The peer exits: the message it sent first is received, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_exits_ends_the_connection() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let mut kid = child("once", theirs);
    let mut a = AsyncConnection::new(ours).unwrap();
    let first: Message = timeout(LONG, a.recv()).await.unwrap().unwrap();
    assert_eq!(first.bytes(), b"bye");
    assert_eq!(kid.code_within(LONG), 0);
    let r = timeout(LONG, a.recv()).await.expect("the end is seen in time");
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    // Too large for this end: refused before anything is written.
    let r = a.send(vec![0u8; a.max_message_size() + 1]).await;
    assert!(matches!(r, Err(SendError::TooLarge { .. })), "{r:?}");
}

/// Many frames arrive in one read: each `recv` after the first finds its
/// frame already buffered and must not wait for the descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_buffered_by_one_read_are_all_received() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let _kid = child("burst", theirs);
    let mut a = AsyncConnection::new(ours).unwrap();
    // Let the whole burst reach our socket first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..200u32 {
        let m = timeout(LONG, a.recv()).await.unwrap_or_else(|_| panic!("message {i} never came")).unwrap();
        assert_eq!(m.bytes(), i.to_le_bytes());
    }
}

/// An async client calling a blocking RPC server in another process: byte
/// and typed calls, and a call that times out, whose late reply is dropped
/// instead of answering the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_client_against_a_blocking_server_process() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let _kid = child("rpc-server", theirs.with_max_message_size(8 * MIB));
    let conn = AsyncConnection::new(ours.with_max_message_size(8 * MIB)).unwrap();
    let mut client = AsyncClient::new(conn).with_timeout(LONG);
    assert!(client.peer_cred().is_some());
    for i in 0..100usize {
        let req = pattern(i, [6, 70_000, MIB][i % 3]);
        let got = client.call(req.clone()).await.unwrap();
        let mut want = req;
        want.reverse();
        assert!(got.bytes() == &want[..], "call {i}");
    }
    let sq: u64 = client.call_typed(&("square", 1234u32)).await.unwrap();
    assert_eq!(sq, 1234 * 1234);
    let r = client.call_timeout("slow", Duration::from_millis(100)).await;
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    // The slow reply arrives while this call waits for its own: dropped.
    let got = client.call(b"after".to_vec()).await.unwrap();
    assert_eq!(got.bytes(), b"retfa");
    assert_eq!(client.late_replies(), 1);
}

/// An async task serving a blocking RPC client in another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_server_task_answers_a_blocking_client_process() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let mut kid = child("rpc-client", theirs.with_max_message_size(8 * MIB));
    let mut conn = AsyncConnection::new(ours.with_max_message_size(8 * MIB)).unwrap();
    let served = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let req = match conn.recv_request().await {
                Ok(r) => r,
                Err(RecvError::Disconnected) => return n,
                Err(e) => panic!("{e}"),
            };
            let reply: Vec<u8> = req.bytes().iter().map(|b| b.wrapping_add(1)).collect();
            conn.reply(req.id(), reply).await.unwrap();
            n += 1;
        }
    });
    let n = timeout(LONG, served).await.expect("the client finishes in time").unwrap();
    assert_eq!(n, 300);
    assert_eq!(kid.code_within(LONG), 0, "the client saw a wrong answer");
}

/// An async server on a UNIX socket path: one task per accepted client
/// process; each reply carries the pid the kernel reported for that
/// connection (`SO_PEERCRED`), which the client checks against its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_listener_serves_client_processes_with_their_credentials() {
    let dir = std::env::temp_dir().join(format!("ipckit-aio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("srv.sock");
    let listener =
        AsyncListener::new(ipckit::unix::Listener::bind(&path, SocketKind::Stream).unwrap()).unwrap();
    let mut kids = Vec::new();
    for _ in 0..3 {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("connect:{}", path.display()));
        kids.push(Kid(cmd.spawn().unwrap()));
    }
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let mut conn = listener.accept().await.unwrap();
            let pid = conn.peer_cred().expect("a socket has credentials").pid;
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while let Ok(req) = conn.recv_request().await {
                    let reply = [req.bytes().to_vec(), pid.to_le_bytes().to_vec()].concat();
                    conn.reply(req.id(), reply).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let total = timeout(LONG, server).await.expect("served in time").unwrap();
    assert_eq!(total, 150);
    for mut k in kids {
        assert_eq!(k.code_within(LONG), 0, "a client saw a wrong answer");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
