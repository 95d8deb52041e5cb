//! ipckit-nats against a real `nats-server` (JetStream on), started per test
//! on a free port with its own store directory; receivers and servers run
//! as separate processes. CI installs the server (`apt-get install -y
//! nats-server`); without it these tests fail and say so.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::{CallError, Message, RecvTimeoutError, SendTimeoutError, TrySendError};
use ipckit_nats::{Error, MailboxConfig, Nats};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_NATS_ROLE";

/// A `nats-server` process with JetStream, killed (and its store removed) on drop.
struct Server {
    child: Child,
    port: u16,
    store: PathBuf,
    keep_store: bool,
}

fn server_binary() -> String {
    for b in ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Command::new(b).arg("--version").stdout(Stdio::null()).status().is_ok() {
            return b.to_owned();
        }
    }
    panic!("nats-server is not installed: `apt-get install -y nats-server` (CI does this in .ci/run)");
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = std::env::temp_dir().join(format!("ipckit-nats-{}-{port}", std::process::id()));
        Server::start_at(port, store)
    }

    fn start_at(port: u16, store: PathBuf) -> Server {
        std::fs::create_dir_all(&store).unwrap();
        let child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + LONG;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "nats-server did not start on port {port}");
            thread::sleep(Duration::from_millis(20));
        }
        Server { child, port, store, keep_store: false }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server, keeping its store (for a restart).
    fn kill(mut self) -> (u16, PathBuf) {
        self.keep_store = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.store.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_store {
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }
}

/// A child process running this test binary in a role; killed on drop.
/// Its stdout lines arrive through a channel.
struct Kid {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Kid {
    fn spawn(role: &str) -> Kid {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Kid { child, lines }
    }

    /// Spawns `role` and waits for its "ready" line (it subscribed).
    fn ready(role: &str) -> Kid {
        let kid = Kid::spawn(role);
        let until = Instant::now() + LONG;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match kid.lines.recv_timeout(left) {
                Ok(l) if l == "ready" => return kid,
                Ok(_) => {}
                Err(e) => panic!("child {role} never got ready: {e}"),
            }
        }
    }

    /// The lines starting with `tag` the child printed, once it has exited (within LONG).
    fn lines(mut self, tag: &str) -> Vec<String> {
        let until = Instant::now() + LONG;
        let mut v = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(tag) => v.push(l),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("the child did not finish in time: {e}"),
            }
        }
        let st = self.child.wait().unwrap();
        assert!(st.success(), "child failed: {st}");
        v
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let parts: Vec<&str> = role.split('|').collect();
    let nats = Nats::connect(parts[1]).unwrap();
    match parts[0] {
        // Take messages (u32 ids) until none came for 4 s; print each.
        "recv" => {
            let mb = nats.mailbox(parts[2], &MailboxConfig::default()).unwrap();
            println!("ready");
            loop {
                match mb.recv_typed_timeout::<u32>(Duration::from_secs(4)) {
                    Ok(id) => println!("got {id}"),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        // Serve echo-reversed (a "slow" request after 500 ms) until killed;
        // tag each reply with this process's pid.
        "serve" => {
            let mut server = nats.rpc_server(parts[2]).unwrap();
            println!("ready");
            let me = std::process::id().to_le_bytes();
            loop {
                // Idle for LONG: the test is over (it kills us when done).
                let Ok(req) = server.recv_timeout(LONG) else { break };
                if req.bytes() == b"slow" {
                    thread::sleep(Duration::from_millis(500));
                }
                let mut v = req.bytes().to_vec();
                v.reverse();
                v.extend_from_slice(&me);
                req.reply(v).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Two sender threads (each its own connection) and two receiver
/// processes share one mailbox: every message is taken exactly once.
#[test]
fn a_mailbox_shared_by_senders_and_receiver_processes_delivers_each_message_once() {
    let srv = Server::start();
    let url = srv.url();
    let nats = Nats::connect(&url).unwrap();
    let _mb = nats.mailbox("work", &MailboxConfig::default()).unwrap();
    let kids: Vec<Kid> = (0..2).map(|_| Kid::ready(&format!("recv|{url}|work"))).collect();
    let senders: Vec<_> = (0..2u32)
        .map(|s| {
            let url = url.clone();
            thread::spawn(move || {
                let nats = Nats::connect(&url).unwrap();
                let mb = nats.mailbox("work", &MailboxConfig::default()).unwrap();
                for i in 0..250u32 {
                    mb.send_typed(&(s * 1000 + i)).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut all = Vec::new();
    for k in kids {
        all.extend(k.lines("got ").into_iter().map(|l| l[4..].parse::<u32>().unwrap()));
    }
    let set: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(set.len(), all.len(), "a message was delivered twice");
    let want: BTreeSet<u32> = (0..2).flat_map(|s| (0..250).map(move |i| s * 1000 + i)).collect();
    assert_eq!(set, want, "messages lost");
}

/// A durable mailbox keeps its messages after the sender is gone and
/// across a restart of the NATS server, and hands them out in order.
#[test]
fn messages_outlive_their_sender_and_a_server_restart() {
    let srv = Server::start();
    {
        let nats = Nats::connect(&srv.url()).unwrap();
        let mb = nats.mailbox("keep", &MailboxConfig::default()).unwrap();
        for i in 0..20u32 {
            mb.send_typed(&i).unwrap();
        }
    }
    let (port, store) = srv.kill();
    let srv = Server::start_at(port, store);
    let nats = Nats::connect(&srv.url()).unwrap();
    let mb = nats.mailbox("keep", &MailboxConfig::default()).unwrap();
    for i in 0..20u32 {
        assert_eq!(mb.recv_typed_timeout::<u32>(LONG).unwrap(), i);
    }
    assert!(matches!(mb.try_recv(), Err(ipckit::TryRecvError::Empty)));
    nats.remove_mailbox("keep").unwrap();
}

/// A full mailbox: `try_send` says Full, `send_timeout` times out; a
/// receive makes room. Limits and bad input are clear errors.
#[test]
fn capacity_limits_and_bad_input() {
    let srv = Server::start();
    let nats = Nats::connect(&srv.url()).unwrap();
    let config =
        MailboxConfig { capacity: 8192, max_message: 1024, durable: false, ..MailboxConfig::default() };
    let mb = nats.mailbox("small", &config).unwrap();
    let mut sent = 0;
    loop {
        match mb.try_send(vec![7u8; 1000]) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(m)) => {
                assert_eq!(m.bytes().len(), 1000, "the message is handed back");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 100, "an 8 KiB mailbox never filled");
    }
    assert!(sent >= 4, "only {sent} messages fit 8 KiB");
    let t = Instant::now();
    let r = mb.send_timeout(vec![7u8; 1000], Duration::from_millis(200));
    assert!(matches!(r, Err(SendTimeoutError::Timeout(_))), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < LONG);
    assert_eq!(mb.recv_timeout(LONG).unwrap().bytes().len(), 1000);
    mb.send_timeout(vec![8u8; 1000], LONG).unwrap();
    // Too large, handles, names.
    assert!(matches!(mb.try_send(vec![0u8; 1025]), Err(TrySendError::TooLarge { len: 1025, max: 1024, .. })));
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let with_fd = Message::new(b"fd".to_vec()).with(std::os::fd::OwnedFd::from(a)).unwrap();
    assert!(matches!(mb.try_send(with_fd), Err(TrySendError::Io { .. })));
    for bad in ["", "a.b", "a b", "x*", &"n".repeat(65)] {
        assert!(matches!(nats.mailbox(bad, &config), Err(Error::InvalidName { .. })), "{bad:?}");
        assert!(matches!(nats.rpc_client(bad), Err(Error::InvalidName { .. })), "{bad:?}");
    }
    // An empty mailbox: a bounded wait.
    let empty = nats.mailbox("empty", &config).unwrap();
    let t = Instant::now();
    assert!(matches!(empty.recv_timeout(Duration::from_millis(300)), Err(RecvTimeoutError::Timeout)));
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < LONG);
}

/// RPC between processes: calls answered by two server processes sharing
/// the service, a slow call that times out, and a call with nobody serving
/// that fails at once.
#[test]
fn rpc_across_processes_with_timeouts_and_no_responders() {
    let srv = Server::start();
    let url = srv.url();
    let nats = Nats::connect(&url).unwrap();
    let client = nats.rpc_client("draw").unwrap().with_timeout(LONG);
    let t = Instant::now();
    let r = client.call("nobody");
    assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "no responders is reported at once");
    let kids: Vec<Kid> = (0..2).map(|_| Kid::ready(&format!("serve|{url}|draw"))).collect();
    let pids: Vec<u32> = kids.iter().map(|k| k.child.id()).collect();
    let mut by = BTreeSet::new();
    for i in 0..100u32 {
        let req = format!("call {i}").into_bytes();
        let got = client.call(req.clone()).unwrap();
        let (body, pid) = got.bytes().split_at(got.bytes().len() - 4);
        let mut want = req;
        want.reverse();
        assert_eq!(body, &want[..], "call {i}");
        let pid = u32::from_le_bytes(pid.try_into().unwrap());
        assert!(pids.contains(&pid), "answered by {pid}");
        by.insert(pid);
    }
    assert_eq!(by.len(), 2, "both servers of the service took calls");
    let r = client.call_timeout("slow", Duration::from_millis(100));
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    // (No "quit" call: a queue group may hand it to a server that has just
    // exited, and core NATS drops it; the servers are killed instead.)
    drop(kids);
    // Connecting to nothing fails promptly.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = Instant::now();
    assert!(matches!(Nats::connect(&format!("nats://127.0.0.1:{dead}")), Err(Error::Connect { .. })));
    assert!(t.elapsed() < LONG);
}

/// The async forms, from a tokio runtime: a mailbox and a service used by
/// tasks of one program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_forms_from_a_tokio_runtime() {
    let srv = Server::start();
    let nats = Nats::connect_async(&srv.url()).await.unwrap();
    let mb = nats
        .mailbox_async("async", &MailboxConfig { durable: false, ..MailboxConfig::default() })
        .await
        .unwrap();
    for i in 0..50u32 {
        mb.send_async(i.to_le_bytes().to_vec()).await.unwrap();
    }
    for i in 0..50u32 {
        let m = tokio::time::timeout(LONG, mb.recv_async()).await.unwrap().unwrap();
        assert_eq!(m.bytes(), i.to_le_bytes());
    }
    let mut server = nats.rpc_server_async("echo").await.unwrap();
    let serving = tokio::spawn(async move {
        for _ in 0..20 {
            let req = server.recv_async().await.unwrap();
            let body = req.bytes().to_vec();
            req.reply_async(body).await.unwrap();
        }
    });
    let client = nats.rpc_client("echo").unwrap();
    for i in 0..20u32 {
        let got = client.call_async(i.to_le_bytes().to_vec()).await.unwrap();
        assert_eq!(got.bytes(), i.to_le_bytes());
    }
    tokio::time::timeout(LONG, serving).await.unwrap().unwrap();
}
