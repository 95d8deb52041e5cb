//! The naming server with real processes: registration, permission-checked
//! lookups on kernel credentials (children that drop to other uids and
//! groups), names released when their owner dies, watchers, mailboxes, and
//! clients that misbehave.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::naming::{EmbeddedServer, NameClient, NameEvent, Policy, ServerConfig};
use ipckit::{rpc, unix, Error, SocketKind};

mod support;

use support::Kid;

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_NAMING_ROLE";

struct Fixture {
    _server: EmbeddedServer,
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new(config: ServerConfig) -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ipckit-ns-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = dir.join("ns.sock");
        let server = EmbeddedServer::start(&path, config).unwrap();
        Fixture { _server: server, path, dir }
    }

    fn client(&self) -> NameClient {
        NameClient::connect(&self.path).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kid(role: &str, path: &std::path::Path, extra: &str) -> Kid {
    Kid(Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}|{}|{extra}", path.display()))
        .spawn()
        .unwrap())
}

fn exit_code(k: &mut Kid) -> i32 {
    k.code_within(LONG)
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < until, "condition not met in time");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Drops this thread (and so the process, which is single-threaded here) to `uid`/`gid`.
fn become_user(uid: u32, gid: u32, groups: &[u32]) {
    let g = rustix::process::Gid::from_raw(gid);
    let gs: Vec<_> = groups.iter().map(|&g| rustix::process::Gid::from_raw(g)).collect();
    rustix::thread::set_thread_groups(&gs).unwrap();
    rustix::thread::set_thread_res_gid(g, g, g).unwrap();
    let u = rustix::process::Uid::from_raw(uid);
    rustix::thread::set_thread_res_uid(u, u, u).unwrap();
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let mut parts = role.splitn(3, '|');
    let (role, path, extra) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let code = match role {
        // Register a service, answer one client, then wait to be killed.
        "service" => {
            let c = NameClient::connect(path).unwrap();
            let mut svc = c.register(extra, Policy::mode(0o666)).unwrap();
            println!("registered");
            let (conn, _who) = svc.accept_timeout(LONG).unwrap();
            let mut server = rpc::Server::new();
            server.add(conn);
            let req = server.recv_timeout(LONG).unwrap();
            let reply = format!("drew {}", String::from_utf8_lossy(req.bytes()));
            req.reply(reply).unwrap();
            thread::sleep(LONG * 10);
            0
        }
        // As uid/gid from `extra` ("uid:gid:groups,..."), look up "draw": print the outcome.
        "lookup-as" => {
            let mut f = extra.split(':');
            let uid: u32 = f.next().unwrap().parse().unwrap();
            let gid: u32 = f.next().unwrap().parse().unwrap();
            let groups: Vec<u32> =
                f.next().unwrap().split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
            become_user(uid, gid, &groups);
            let c = NameClient::connect(path).unwrap();
            match c.lookup("draw") {
                Ok(_) => 0,
                Err(Error::PermissionDenied(_)) => 3,
                Err(e) => {
                    eprintln!("lookup: {e}");
                    4
                }
            }
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

#[test]
fn a_service_in_another_process_is_found_called_and_released_when_it_dies() {
    let f = Fixture::new(ServerConfig::default());
    let watcher = f.client();
    let mut watch = watcher.watch("draw").unwrap();
    let mut svc = kid("service", &f.path, "draw");
    assert_eq!(watch.next_timeout(LONG).unwrap(), NameEvent::Appeared("draw".into()));
    let client = f.client();
    let conn = client.lookup("draw").unwrap();
    let entry = client.stat("draw").unwrap();
    assert_eq!(entry.pid, svc.0.id());
    let rpc = rpc::Client::new(conn).with_timeout(LONG);
    assert_eq!(rpc.call("circle").unwrap().bytes(), b"drew circle");
    let _ = svc.0.kill();
    let _ = svc.0.wait();
    assert_eq!(watch.next_timeout(LONG).unwrap(), NameEvent::Disappeared("draw".into()));
    assert!(matches!(client.lookup("draw"), Err(Error::NotFound(_))));
    // The name is free for someone else at once.
    let _again = f.client().register("draw", Policy::mode(0o600)).unwrap();
}

#[test]
fn lookups_are_decided_on_kernel_credentials() {
    if ipckit::euid() != 0 {
        eprintln!("not root: skipping the other-uid cases");
        return;
    }
    let f = Fixture::new(ServerConfig::default());
    let owner = f.client();
    // Root owns "draw"; the policy: group 4242 may use it, others may not,
    // uid 5001 is allowed by name.
    let policy = Policy { mode: 0o660, allow_uids: vec![5001], allow_gids: vec![] };
    let _svc = owner.register("draw", policy).unwrap();
    let try_as = |who: &str| exit_code(&mut kid("lookup-as", &f.path, who));
    // A stranger: refused.
    assert_eq!(try_as("5000:5000:"), 3);
    // The owner's group as primary group... root's group is 0: a member of group 0 by supplementary group.
    assert_eq!(try_as("5000:5000:0"), 0, "supplementary group member");
    assert_eq!(try_as("5000:0:"), 0, "primary group member");
    // The allow-list.
    assert_eq!(try_as("5001:5001:"), 0);
    // What the client says about itself does not matter: only the kernel's view.
    assert_eq!(try_as("65534:65534:"), 3);
}

#[test]
fn listing_shows_only_what_the_caller_may_see_and_names_are_validated() {
    let f = Fixture::new(ServerConfig::default());
    let c = f.client();
    let _a = c.register("public", Policy::mode(0o644)).unwrap();
    let _b = c.register("private", Policy::mode(0o600)).unwrap();
    c.create_mailbox("inbox", Policy::mode(0o622), 4).unwrap();
    let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["inbox", "private", "public"], "root (or the owner) sees all");
    assert!(matches!(c.register("public", Policy::mode(0o644)), Err(Error::AlreadyExists(_))));
    for bad in ["", "../etc", "/abs", "a//b", "sp ace", "x".repeat(129).as_str(), "tail/"] {
        assert!(matches!(c.register(bad, Policy::mode(0o600)), Err(Error::InvalidName { .. })), "{bad:?}");
    }
    assert!(matches!(c.stat("nope"), Err(Error::NotFound(_))));
}

#[test]
fn mailboxes_pass_messages_between_many() {
    let f = Fixture::new(ServerConfig::default());
    let owner = f.client();
    owner.create_mailbox("jobs", Policy::mode(0o666), 3).unwrap();
    let (a, b) = (f.client(), f.client());
    a.send("jobs", b"one").unwrap();
    b.send("jobs", b"two").unwrap();
    a.send("jobs", b"three").unwrap();
    assert!(matches!(b.send("jobs", b"four"), Err(Error::LimitExceeded(_))), "full");
    assert_eq!(owner.stat("jobs").unwrap().messages, 3);
    assert_eq!(b.recv("jobs", LONG).unwrap(), b"one");
    assert_eq!(a.recv("jobs", LONG).unwrap(), b"two");
    assert_eq!(a.recv("jobs", LONG).unwrap(), b"three");
    assert!(matches!(a.recv("jobs", Duration::from_millis(100)), Err(Error::Timeout)));
    // A receiver waiting in the server gets a message sent later.
    let path = f.path.clone();
    let waiter = thread::spawn(move || NameClient::connect(&path).unwrap().recv("jobs", LONG));
    thread::sleep(Duration::from_millis(100));
    b.send("jobs", b"late").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), b"late");
    // The mailbox goes with its owner.
    drop(owner);
    wait_for(|| matches!(a.send("jobs", b"x"), Err(Error::NotFound(_))));
}

#[test]
fn bad_clients_do_not_hurt_good_ones() {
    use std::io::Write;
    let config = ServerConfig { idle_timeout: Duration::from_millis(300), ..ServerConfig::default() };
    let f = Fixture::new(config);
    let good = f.client();
    good.create_mailbox("box", Policy::mode(0o666), 100).unwrap();
    // Garbage bytes, an oversized frame header, and a valid frame with a bad request.
    let mut garbage = std::os::unix::net::UnixStream::connect(&f.path).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut huge = std::os::unix::net::UnixStream::connect(&f.path).unwrap();
    let mut h = b"IK\x01\x04".to_vec();
    h.extend((1u32 << 30).to_le_bytes());
    h.extend(1u64.to_le_bytes());
    huge.write_all(&h).unwrap();
    let raw = rpc::Client::new(unix::connect(&f.path, SocketKind::Stream).unwrap()).with_timeout(LONG);
    assert!(
        raw.call(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 9, 9]).is_ok(),
        "a malformed request gets an answer"
    );
    // A client of another protocol version gets a clear error.
    let old = NameClientRaw::new(&f.path);
    assert!(old.list_with_version(99).contains("VersionMismatch"));
    // A silent client is closed after the idle timeout.
    let silent = unix::connect(&f.path, SocketKind::Stream).unwrap();
    let silent = rpc::Client::new(silent);
    thread::sleep(Duration::from_millis(800));
    assert!(silent.call_timeout(vec![], Duration::from_secs(2)).is_err(), "the idle connection was closed");
    // Meanwhile the good client never noticed.
    for i in 0..50u8 {
        good.send("box", &[i]).unwrap();
        assert_eq!(good.recv("box", LONG).unwrap(), [i]);
    }
}

/// Speaks the protocol by hand, to send what a real client never would.
struct NameClientRaw(rpc::Client);

impl NameClientRaw {
    fn new(path: &std::path::Path) -> Self {
        NameClientRaw(rpc::Client::new(unix::connect(path, SocketKind::Stream).unwrap()).with_timeout(LONG))
    }

    /// An `Envelope { version, request: List }` in postcard: varint version, variant 4.
    fn list_with_version(&self, version: u8) -> String {
        let reply = self.0.call(vec![version, 4]).unwrap();
        format!("{:?}", reply.bytes()).replace(", ", ",") + &debug_reply(reply.bytes())
    }
}

fn debug_reply(b: &[u8]) -> String {
    // Reply::Failed is variant 5; its code VersionMismatch is variant 4.
    if b.first() == Some(&5) && b.get(1) == Some(&4) {
        "VersionMismatch".into()
    } else {
        String::new()
    }
}

#[test]
fn limits_per_uid_are_enforced_but_not_for_root_and_the_decoder_survives_garbage() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..512), |bytes| {
            let _ = ipckit::naming::fuzz_decode_request(&bytes);
            Ok(())
        })
        .unwrap();
    let f = Fixture::new(ServerConfig { max_names_per_uid: 2, ..ServerConfig::default() });
    let c = f.client();
    for i in 0..5 {
        // Root is not limited, as on Linux.
        c.create_mailbox(&format!("m{i}"), Policy::mode(0o600), 1).unwrap();
    }
}
