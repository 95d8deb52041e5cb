//! Scene 3, the chapter's `RPC(req, resp)` / `Reply(resp)` and its timeout:
//! calls to an echo service over a UNIX socket, a call to a service that never
//! answers (the timeout is the defence against that denial of service), and
//! calls to services that died.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipckit::rpc::{Client, Request, Server};
use ipckit::spawn::Inherit;
use ipckit::unix::{self, Listener};
use ipckit::{CallError, Connection, RecvTimeoutError, SocketKind};

use super::child::{describe, TourChild};
use super::narrate::{fmt_duration, heading, Actor};
use super::scratch::Scratch;
use crate::error::{fail, Context, Result};

/// How long the tour waits for a server to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The echo client's timeout per call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The timeout of the call to the silent server.
const SILENT_TIMEOUT: Duration = Duration::from_millis(500);
/// A server with no request for this long exits (in case the tour is gone).
const IDLE_EXIT: Duration = Duration::from_secs(20);
/// What the tour asks the echo server.
const REQUESTS: [&str; 3] = ["hello", "ping", "rpc blocks the caller until the reply"];

/// The caller's (parent's) side of the scene.
pub fn run(number: usize, scratch: &Scratch) -> Result<()> {
    heading(number, "RPC over a UNIX socket: replies, a timeout, a dead server");
    let me = Actor::me("tour");

    // An echo service in its own process.
    let echo_path = scratch.path().join("echo.sock");
    let mut echo = spawn_server("echo-server", &echo_path)?;
    let conn = connect_when_ready(&me, &mut echo, &echo_path)?;
    let client = Client::new(conn).with_timeout(CALL_TIMEOUT);
    show_peer(&me, &client, &echo)?;
    for req in REQUESTS {
        let t = Instant::now();
        let reply = client.call(req).context(format!("calling the echo server with {req:?}"))?;
        let rtt = t.elapsed();
        me.say(format!(
            "call({req:?}) -> reply {:?}, round trip {}",
            String::from_utf8_lossy(reply.bytes()),
            fmt_duration(rtt)
        ));
    }

    // A service that takes requests and never answers.
    let silent_path = scratch.path().join("silent.sock");
    let mut silent = spawn_server("silent-server", &silent_path)?;
    let silent_client = Client::new(connect_when_ready(&me, &mut silent, &silent_path)?);
    me.say(format!(
        "call_timeout(\"are you there?\", {}) to the silent server...",
        fmt_duration(SILENT_TIMEOUT)
    ));
    let t = Instant::now();
    match silent_client.call_timeout("are you there?", SILENT_TIMEOUT) {
        Err(CallError::Timeout) => me.say(format!(
            "CallError::Timeout after {}: no reply came, and the call gave up instead of hanging; \
             a peer that never answers cannot block the caller (the denial-of-service defence)",
            fmt_duration(t.elapsed())
        )),
        Ok(reply) => fail!("the silent server answered {:?}", String::from_utf8_lossy(reply.bytes())),
        Err(e) => return Err(e).context("calling the silent server"),
    }

    // Both servers die; calls to them fail at once.
    for (server, client) in [(&mut echo, &client), (&mut silent, &silent_client)] {
        let status = server.kill()?;
        me.say(format!("killed {} {}: it {}; reaped", server.role(), server.pid(), describe(status)));
        let t = Instant::now();
        match client.call("hello again") {
            Err(CallError::Disconnected) => me.say(format!(
                "call(\"hello again\") -> CallError::Disconnected after {}: at once, without waiting \
                 for the {} timeout: the kernel closed the dead server's end of the socket",
                fmt_duration(t.elapsed()),
                fmt_duration(client.timeout())
            )),
            Ok(_) => fail!("a dead server answered"),
            Err(e) => fail!("expected CallError::Disconnected from a dead server, got: {e}"),
        }
    }
    let left = if echo_path.exists() {
        "the socket file is still there (a killed server cannot remove it), but nobody listens"
    } else {
        "nobody listens there any more"
    };
    match unix::connect(&echo_path, SocketKind::Stream) {
        Err(e) => me.say(format!("a new unix::connect to echo.sock fails: {e}; {left}")),
        Ok(_) => fail!("connected to a dead server's socket"),
    }
    Ok(())
}

/// Starts a server child that binds `path`.
fn spawn_server(role: &'static str, path: &Path) -> Result<TourChild> {
    let child = TourChild::spawn(role, &[OsStr::new(role), path.as_os_str()], Inherit::new())?;
    Actor::me("tour").say(format!("spawned {role}, pid {}, to serve at {}", child.pid(), path.display()));
    Ok(child)
}

/// Connects to `path` as soon as the server listens there (it needs a moment
/// to start), giving up after [`READY_TIMEOUT`] or if the server dies.
fn connect_when_ready(me: &Actor, server: &mut TourChild, path: &Path) -> Result<Connection> {
    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match unix::connect(path, SocketKind::Stream) {
            Ok(conn) => {
                let note = if tries > 1 {
                    format!(", try {tries}: the server needed a moment to start")
                } else {
                    String::new()
                };
                me.say(format!("unix::connect: connected after {}{note}", fmt_duration(t.elapsed())));
                return Ok(conn);
            }
            Err(ipckit::Error::NotFound(_) | ipckit::Error::NotListening(_)) => {}
            Err(e) => return Err(e).context(format!("connecting to {}", path.display())),
        }
        if let Some(status) = server.try_status()? {
            fail!("the server at {} {} before listening", path.display(), describe(status));
        }
        if t.elapsed() > READY_TIMEOUT {
            fail!("nothing listened at {} within {READY_TIMEOUT:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Shows who the kernel says the server is, and checks it is our child.
fn show_peer(me: &Actor, client: &Client, server: &TourChild) -> Result<()> {
    let Some(peer) = client.peer_cred() else { fail!("the kernel gave no peer credentials") };
    me.say(format!(
        "the kernel vouches for the server (SO_PEERCRED): pid {}, uid {}, gid {}{}",
        peer.pid,
        peer.uid,
        peer.gid,
        if peer.pid == server.pid() { ": the child I spawned" } else { "" }
    ));
    if peer.pid != server.pid() {
        fail!("the server's pid is {}, expected {}", peer.pid, server.pid());
    }
    Ok(())
}

/// The echo server (a child): answers each request with its text in upper case.
pub fn echo_server(path: &Path) -> Result<()> {
    let me = Actor::me("echo-server");
    let mut server = bind(&me, path)?;
    loop {
        let Some(req) = next_request(&mut server)? else { return Ok(()) };
        let text = String::from_utf8_lossy(req.bytes()).into_owned();
        let answer = text.to_uppercase();
        me.say(format!("request {text:?} from {}: replying {answer:?}", caller(&req)));
        if let Err(e) = req.reply(answer) {
            tracing::warn!(error = %e, "reply not delivered");
        }
    }
}

/// The silent server (a child): takes requests and never answers them.
pub fn silent_server(path: &Path) -> Result<()> {
    let me = Actor::me("silent-server");
    let mut server = bind(&me, path)?;
    let mut ignored = Vec::new();
    loop {
        let Some(req) = next_request(&mut server)? else { return Ok(()) };
        let text = String::from_utf8_lossy(req.bytes()).into_owned();
        me.say(format!("request {text:?} from {}: I will never answer it", caller(&req)));
        ignored.push(req);
    }
}

/// Binds the listening socket and wraps it in an RPC server.
fn bind(me: &Actor, path: &Path) -> Result<Server> {
    let listener = Listener::bind(path, SocketKind::Stream).context(format!("binding {}", path.display()))?;
    me.say(format!("unix::Listener::bind({}): listening", path.display()));
    Ok(Server::with_listener(listener))
}

/// The next request; `None` when none came for [`IDLE_EXIT`] (the tour is gone).
fn next_request(server: &mut Server) -> Result<Option<Request>> {
    match server.recv_timeout(IDLE_EXIT) {
        Ok(req) => Ok(Some(req)),
        Err(RecvTimeoutError::Timeout) => {
            tracing::info!("no request for {IDLE_EXIT:?}; exiting");
            Ok(None)
        }
        Err(e) => Err(e).context("receiving a request"),
    }
}

/// `pid 123 (uid 1000)`: who sent a request, as the kernel says.
fn caller(req: &Request) -> String {
    match req.peer_cred() {
        Some(p) => format!("pid {} (uid {})", p.pid, p.uid),
        None => "an unknown caller".to_owned(),
    }
}
