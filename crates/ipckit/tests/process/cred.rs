//! Peer credentials (`SO_PEERCRED`): what the kernel says about the process
//! at the other end, not what that process claims.

use std::os::unix::fs::PermissionsExt;

use ipckit::unix::{self, Listener};
use ipckit::SocketKind;
use rustix::process::{Gid, Uid};

use super::harness::{param, report, spawn, TempDir, LONG};

/// The unprivileged identity a child drops to (`nobody`/`nogroup`).
const NOBODY: u32 = 65534;

fn kind_of(s: &str) -> SocketKind {
    match s {
        "stream" => SocketKind::Stream,
        "seqpacket" => SocketKind::SeqPacket,
        other => panic!("unknown socket kind {other}"),
    }
}

/// Child: optionally drops to `DROP_TO` (uid = gid), connects to `SOCK`,
/// sends what it believes its identity is, and waits for the parent's "bye".
pub(super) fn child_connect() {
    if let Ok(id) = std::env::var("DROP_TO") {
        let id: u32 = id.parse().expect("DROP_TO");
        // Credentials are per thread in Linux, and the connect below runs on
        // this thread, so that is where the drop must happen (groups first,
        // then gid, then uid, which ends the right to change them).
        rustix::thread::set_thread_groups(&[]).expect("setgroups");
        rustix::thread::set_thread_gid(Gid::from_raw(id)).expect("setgid");
        rustix::thread::set_thread_uid(Uid::from_raw(id)).expect("setuid");
    }
    let mut conn = unix::connect(param("SOCK"), kind_of(&param("KIND"))).expect("connect");
    let me = format!("{} {} {}", ipckit::pid(), ipckit::euid(), ipckit::egid());
    conn.send_timeout(me, LONG).expect("send");
    let bye = conn.recv_timeout(LONG).expect("recv bye");
    report(format!("parent said {}", String::from_utf8_lossy(bye.bytes())));
}

/// Binds a listener, runs a child that connects, and returns the accepted
/// connection's credentials and the child's own claim, after checking the pid.
fn connect_from_child(tag: &str, kind: SocketKind, drop_to: Option<u32>) -> (ipckit::PeerCred, String) {
    let dir = TempDir::new(tag);
    let path = dir.join("cred.sock");
    let listener = Listener::bind(&path, kind).unwrap();
    if drop_to.is_some() {
        // The unprivileged child must reach the directory and write to the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let kind_name = if kind == SocketKind::Stream { "stream" } else { "seqpacket" };
    let drop_str = drop_to.map(|d| d.to_string());
    let mut env = vec![("SOCK", path.to_str().unwrap()), ("KIND", kind_name)];
    if let Some(d) = &drop_str {
        env.push(("DROP_TO", d));
    }
    let mut kid = spawn("cred-connect", &env, Default::default());
    let mut conn = listener.accept_timeout(LONG).unwrap_or_else(|e| panic!("accept: {e}\n{}", kid.log()));
    let cred = conn.peer_cred().expect("a socket connection has peer credentials");
    assert_eq!(cred.pid, kid.id(), "peer pid is the child's");
    let claim = conn.recv_timeout(LONG).unwrap();
    assert_eq!(claim.sender_cred(), Some(cred), "a received message carries the same credentials");
    conn.send_timeout("bye", LONG).unwrap();
    assert_eq!(kid.expect("parent said"), "bye");
    kid.wait_success();
    (cred, String::from_utf8_lossy(claim.bytes()).into_owned())
}

#[test]
fn an_accepted_connection_knows_the_child() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let (cred, claim) = connect_from_child("cred", kind, None);
        assert_eq!((cred.uid, cred.gid), (ipckit::euid(), ipckit::egid()), "{kind:?}");
        assert_eq!(claim, format!("{} {} {}", cred.pid, cred.uid, cred.gid), "{kind:?}");
    }
}

#[test]
fn an_unprivileged_child_is_seen_as_unprivileged() {
    if ipckit::euid() != 0 {
        eprintln!("note: skipping the privilege-drop case: it needs root to change uid");
        return;
    }
    let (cred, claim) = connect_from_child("cred-drop", SocketKind::Stream, Some(NOBODY));
    assert_eq!((cred.uid, cred.gid), (NOBODY, NOBODY));
    assert_eq!(claim, format!("{} {NOBODY} {NOBODY}", cred.pid));
}
