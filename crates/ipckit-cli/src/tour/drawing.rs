//! Scene 6, the chapter's drawing service: a service registers the name
//! "draw" with the naming server under an access policy; a client allowed
//! by the policy looks it up and draws; a client of another uid is refused.
//! Every decision is made on the kernel's word about who is asking
//! (`SO_PEERCRED`), never on anything the client says.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ipckit::naming::{EmbeddedServer, NameClient, NameEvent, Policy, ServerConfig};
use ipckit::rpc::{Client, Server};
use ipckit::spawn::Inherit;

use super::child::{describe, TourChild};
use super::narrate::{fmt_duration, heading, Actor};
use super::scratch::Scratch;
use crate::error::{fail, Context, Result};

/// How long the tour waits for the service to register.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for a drawing.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any child may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(15);
/// The service gives up when nobody comes for this long (the tour is gone).
const IDLE_EXIT: Duration = Duration::from_secs(20);
/// The policy's permission bits: owner and group may use it, others not.
const MODE: u32 = 0o660;
/// The unprivileged identity the refused client takes (nobody).
const NOBODY: u32 = 65534;

/// The tour's side: the naming server (embedded), the service, two clients.
pub fn run(number: usize, scratch: &Scratch) -> Result<()> {
    heading(number, "The drawing service: a name, a policy, an allowed and a refused client");
    let me = Actor::me("tour");
    let socket = scratch.path().join("naming.sock");
    let _server =
        EmbeddedServer::start(&socket, ServerConfig::default()).context("starting the naming server")?;
    me.say(format!(
        "naming server running on a thread of mine (EmbeddedServer) at {}; the socket is 0666: \
         who may do what is decided per name",
        socket.display()
    ));
    let names = NameClient::connect(&socket).context("connecting to the naming server")?;
    let mut watch = names.watch("draw").context("watching the name \"draw\"")?;

    let mut service =
        TourChild::spawn("draw-service", &[OsStr::new("draw-service"), socket.as_os_str()], Inherit::new())?;
    me.say(format!("spawned draw-service, pid {}", service.pid()));
    match watch.next_timeout(READY_TIMEOUT) {
        Ok(NameEvent::Appeared(name)) => me.say(format!("watch: {name:?} appeared")),
        Ok(other) => fail!("expected \"draw\" to appear, got {other:?}"),
        Err(e) => {
            let state = service.try_status()?.map(describe).unwrap_or_else(|| "is running".into());
            fail!("\"draw\" was not registered within {READY_TIMEOUT:?} (the service {state}): {e}");
        }
    }
    let entry = names.stat("draw").context("stat \"draw\"")?;
    me.say(format!(
        "stat(\"draw\"): owner uid {} gid {} (the kernel's word about the registering process), \
         mode {:o}, registered by pid {}",
        entry.uid, entry.gid, entry.mode, entry.pid
    ));

    // A client the policy allows: same uid as the service.
    let mut client = TourChild::spawn(
        "draw-client",
        &[OsStr::new("draw-client"), socket.as_os_str(), OsStr::new("a circle")],
        Inherit::new(),
    )?;
    me.say(format!("spawned draw-client, pid {}, uid {} like the service", client.pid(), ipckit::euid()));
    client.wait_success(CHILD_TIMEOUT)?;
    me.say("draw-client drew and exited");

    // A client of another uid: only root can make one.
    if ipckit::euid() == 0 {
        // The child must reach the socket: let others through the scratch
        // directory (not list it); the name's policy does the refusing.
        std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .context("opening the scratch directory to other users")?;
        let mut stranger = TourChild::spawn_with(
            "draw-stranger",
            &[OsStr::new("draw-stranger"), socket.as_os_str()],
            Inherit::new(),
            |cmd| {
                cmd.uid(NOBODY).gid(NOBODY);
            },
        )?;
        me.say(format!(
            "spawned draw-stranger, pid {}, as uid {NOBODY} gid {NOBODY} (nobody): not the owner, \
             not in the group, and mode {MODE:o} gives others nothing",
            stranger.pid()
        ));
        let done = stranger.wait_success(CHILD_TIMEOUT);
        std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .context("closing the scratch directory again")?;
        done?;
        me.say("draw-stranger was refused, as the policy says");
    } else {
        me.say(format!(
            "skipping the refused client: making a process of another uid needs root, and I run as \
             uid {}",
            ipckit::euid()
        ));
    }

    // The owner dies: the name is released at once.
    let status = service.kill()?;
    me.say(format!("killed draw-service {}: it {}", service.pid(), describe(status)));
    let t = Instant::now();
    match watch.next_timeout(READY_TIMEOUT) {
        Ok(NameEvent::Disappeared(name)) => me.say(format!(
            "watch: {name:?} disappeared {} later: the naming server saw the owner's connection close",
            fmt_duration(t.elapsed())
        )),
        Ok(other) => fail!("expected \"draw\" to disappear, got {other:?}"),
        Err(e) => fail!("\"draw\" was not released within {READY_TIMEOUT:?}: {e}"),
    }
    match names.lookup("draw") {
        Err(ipckit::Error::NotFound(_)) => me.say("lookup(\"draw\") -> NotFound: nobody holds the name now"),
        Ok(_) => fail!("a dead service's name still resolves"),
        Err(e) => fail!("expected NotFound for a released name, got: {e}"),
    }
    Ok(())
}

/// The drawing service (a child): registers "draw" and answers each client.
pub fn service(socket: &Path) -> Result<()> {
    let me = Actor::me("draw-service");
    let names = NameClient::connect(socket).context("connecting to the naming server")?;
    let policy = Policy { mode: MODE, allow_uids: Vec::new(), allow_gids: Vec::new() };
    let mut service = names.register("draw", policy).context("registering \"draw\"")?;
    me.say(format!(
        "registered \"draw\" with Policy {{ mode: 0o{MODE:o} }}: owner and group may draw, others may not"
    ));
    loop {
        let (conn, who) = match service.accept_timeout(IDLE_EXIT) {
            Ok(x) => x,
            Err(ipckit::Error::Timeout) => return Ok(()),
            Err(e) => return Err(e).context("waiting for a client"),
        };
        me.say(format!(
            "a client arrived through the naming server: pid {}, uid {}, gid {} (kernel-verified, \
             SO_PEERCRED, passed on by the server)",
            who.pid, who.uid, who.gid
        ));
        let mut rpc = Server::new();
        rpc.add(conn);
        match rpc.recv_timeout(CALL_TIMEOUT) {
            Ok(req) => {
                let shape = String::from_utf8_lossy(req.bytes()).into_owned();
                let picture = format!("drew {shape} for pid {}", who.pid);
                me.say(format!("request {shape:?}: replying {picture:?}"));
                if let Err(e) = req.reply(picture) {
                    tracing::warn!(error = %e, "reply not delivered");
                }
            }
            Err(e) => tracing::warn!(error = %e, "a client said nothing"),
        }
    }
}

/// A client (a child): looks "draw" up and asks for `shape`.
pub fn client(socket: &Path, shape: &str) -> Result<()> {
    let me = Actor::me("draw-client");
    let names = NameClient::connect(socket).context("connecting to the naming server")?;
    let t = Instant::now();
    let conn = names.lookup("draw").context("looking up \"draw\"")?;
    me.say(format!(
        "lookup(\"draw\") as uid {} gid {}: allowed; got a connection straight to the service in {}",
        ipckit::euid(),
        ipckit::egid(),
        fmt_duration(t.elapsed())
    ));
    let rpc = Client::new(conn);
    if let Some(peer) = rpc.peer_cred() {
        me.say(format!(
            "SO_PEERCRED on this connection names pid {} (uid {}): the naming server, which made the \
             socket pair and passed me one end",
            peer.pid, peer.uid
        ));
    }
    let reply = rpc.call_timeout(shape, CALL_TIMEOUT).context("calling the drawing service")?;
    me.say(format!("call({shape:?}) -> {:?}", String::from_utf8_lossy(reply.bytes())));
    Ok(())
}

/// A client of another uid (a child): its lookup must be refused.
pub fn stranger(socket: &Path) -> Result<()> {
    let me = Actor::me("draw-stranger");
    let names = NameClient::connect(socket).context("connecting to the naming server")?;
    match names.lookup("draw") {
        Err(ipckit::Error::PermissionDenied(why)) => {
            me.say(format!(
                "lookup(\"draw\") as uid {} gid {} -> PermissionDenied ({why}): the server read my \
                 uid and gid from the kernel (SO_PEERCRED); nothing I could claim would change that",
                ipckit::euid(),
                ipckit::egid()
            ));
            Ok(())
        }
        Ok(_) => fail!("uid {} was let through a mode {MODE:o} policy", ipckit::euid()),
        Err(e) => fail!("expected PermissionDenied, got: {e}"),
    }
}
