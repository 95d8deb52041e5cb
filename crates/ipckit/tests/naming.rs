//! The naming server with real processes: registration, permission-checked
//! lookups on kernel credentials (children that drop to other uids and
//! groups), names released when their owner dies, watchers, mailboxes, and
//! clients that misbehave.

use std::io::BufRead;
use std::process::{Command, Stdio};
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
        // Register `extra`, hand the connection to a child that keeps it
        // open, say the child's pid, and exit.
        "register-hand-off" => {
            let c = NameClient::connect(path).unwrap();
            let _svc = c.register(extra, Policy::mode(0o666)).unwrap();
            let mut inherit = ipckit::spawn::Inherit::new();
            inherit.pass("ns", c.try_clone_socket().unwrap()).unwrap();
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
                .env(ROLE, format!("holder|{path}|"))
                .stdout(Stdio::piped());
            // Left running on purpose (the test kills it): it outlives us.
            #[allow(clippy::zombie_processes)]
            let mut holder = inherit.spawn(&mut cmd).unwrap();
            // Exit only once the holder has the connection in hand.
            let ready = std::io::BufReader::new(holder.stdout.take().unwrap())
                .lines()
                .map_while(|l| l.ok())
                .any(|l| l.contains("holding"));
            assert!(ready, "the holder took the connection");
            println!("holder={}", holder.id());
            0
        }
        // Keep the inherited connection open for a while.
        "holder" => {
            let _ns: std::os::fd::OwnedFd = ipckit::spawn::inherited("ns").unwrap();
            println!("holding");
            thread::sleep(LONG);
            0
        }
        // As uid:gid from `extra`, use the names "public" (0o666) and
        // "private" (0o600) owned by root, through the table, and try every
        // service socket on the machine directly: print what happened.
        "direct-as" => {
            let mut f = extra.split(':');
            let uid: u32 = f.next().unwrap().parse().unwrap();
            let gid: u32 = f.next().unwrap().parse().unwrap();
            become_user(uid, gid, &[]);
            let c = NameClient::connect(path).unwrap();
            let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
            println!("list={}", names.join(","));
            let stat = |n: &str| match c.stat(n) {
                Ok(e) => format!("uid{}", e.uid),
                Err(Error::PermissionDenied(_)) => "denied".into(),
                Err(e) => format!("error {e}"),
            };
            println!("stat-public={} stat-private={}", stat("public"), stat("private"));
            let mut conn = c.lookup("public").unwrap();
            conn.send("hi").unwrap();
            println!("public-reply={}", String::from_utf8_lossy(conn.recv_timeout(LONG).unwrap().bytes()));
            println!("lookup-private={}", matches!(c.lookup("private"), Err(Error::PermissionDenied(_))));
            // A client that skips the table: connect to every ipckit service
            // socket listed in /proc/net/unix, say hello, count the answers.
            let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
            let mut answered = 0;
            for addr in unix.lines().filter_map(|l| l.split_whitespace().nth(7)) {
                let Some(name) = addr.strip_prefix("@ipckit-svc-") else { continue };
                let full = format!("ipckit-svc-{name}");
                use std::os::linux::net::SocketAddrExt;
                let sa = std::os::unix::net::SocketAddr::from_abstract_name(full.as_bytes()).unwrap();
                let Ok(mut s) = std::os::unix::net::UnixStream::connect_addr(&sa) else { continue };
                // A service that lets us in waits for a request; one that
                // refuses us closes the connection at once.
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut byte = [0u8; 1];
                use std::io::Read;
                if matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                    answered += 1;
                }
            }
            println!("raw-answers={answered}");
            0
        }
        // A naming server of its own, until killed.
        "server" => {
            let mut server = ipckit::naming::NameServer::bind(path, ServerConfig::default()).unwrap();
            println!("serving");
            server.run(&std::sync::atomic::AtomicBool::new(false)).unwrap();
            0
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

#[test]
fn a_name_goes_when_its_registering_process_dies_even_if_a_child_keeps_the_connection() {
    let f = Fixture::new(ServerConfig::default());
    let watcher = f.client();
    let mut watch = watcher.watch("held").unwrap();
    let mut p = Kid(Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("register-hand-off|{}|held", f.path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let out = std::io::BufReader::new(p.0.stdout.take().unwrap());
    let holder: u32 = out
        .lines()
        .map_while(|l| l.ok())
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("holder=")?.parse().ok()))
        .expect("the child names its holder");
    assert_eq!(exit_code(&mut p), 0);
    assert_eq!(watch.next_timeout(LONG).unwrap(), NameEvent::Appeared("held".into()));
    // The registering process is gone, the connection is not (the holder has it).
    assert_eq!(watch.next_timeout(LONG).unwrap(), NameEvent::Disappeared("held".into()));
    let holder_pid = rustix::process::Pid::from_raw(holder as i32).unwrap();
    let state = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap_or_default();
    let state = state.rsplit(')').next().unwrap_or_default().split_whitespace().next().unwrap_or("gone");
    assert!(!matches!(state, "Z" | "X" | "gone"), "the holder keeps the connection open (state {state})");
    let c = f.client();
    assert!(matches!(c.stat("held"), Err(Error::NotFound(_))));
    assert!(matches!(c.lookup("held"), Err(Error::NotFound(_))));
    let _ = rustix::process::kill_process(holder_pid, rustix::process::Signal::KILL);
}

#[test]
fn tables_show_each_class_only_its_names_and_services_check_direct_callers() {
    if ipckit::euid() != 0 {
        eprintln!("not root: skipping the other-uid cases");
        return;
    }
    let f = Fixture::new(ServerConfig::default());
    let owner = f.client();
    let serve = |mut svc: ipckit::naming::Service| {
        thread::spawn(move || {
            // Answer whoever gets through, until the test ends.
            while let Ok((mut conn, _who)) = svc.accept_timeout(LONG) {
                thread::spawn(move || {
                    if let Ok(m) = conn.recv_timeout(LONG) {
                        let _ = conn.send(format!("{} back", String::from_utf8_lossy(m.bytes())));
                    }
                });
            }
        })
    };
    let _public = serve(owner.register("public", Policy::mode(0o666)).unwrap());
    let _private = serve(owner.register("private", Policy::mode(0o600)).unwrap());
    // Root sees both, from its table.
    let all: Vec<String> = owner.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(all, ["private", "public"]);
    let mut k = Kid(Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("direct-as|{}|5000:5000", f.path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let out: Vec<String> =
        std::io::BufReader::new(k.0.stdout.take().unwrap()).lines().map_while(|l| l.ok()).collect();
    assert_eq!(exit_code(&mut k), 0, "{out:?}");
    let said = |key: &str| {
        out.iter().find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key))).unwrap_or_default()
    };
    assert_eq!(said("list="), "public", "the other uid's table holds only what it may see");
    assert_eq!(said("stat-public="), "uid0");
    assert_eq!(said("stat-private="), "denied");
    assert_eq!(said("public-reply="), "hi");
    assert_eq!(said("lookup-private="), "true");
    // Of the two service sockets, only the public one answers a stranger
    // who skipped the table: the private service closes the connection.
    assert_eq!(said("raw-answers="), "1", "{out:?}");
}

#[test]
fn a_table_that_grows_is_replaced_and_clients_follow() {
    let f = Fixture::new(ServerConfig::default());
    let owner = f.client();
    let reader = f.client();
    owner.create_mailbox("first", Policy::mode(0o644), 1).unwrap();
    // The reader maps its class's table now (it holds room for 32 names).
    assert_eq!(reader.stat("first").unwrap().name, "first");
    for i in 0..100 {
        owner.create_mailbox(&format!("box/{i}"), Policy::mode(0o644), 1).unwrap();
    }
    // The table was replaced by bigger ones; the reader notices and follows.
    assert_eq!(reader.stat("box/99").unwrap().capacity, 1);
    assert_eq!(reader.list().unwrap().len(), 101);
    owner.send("box/7", b"x").unwrap();
    assert_eq!(reader.stat("box/7").unwrap().messages, 1, "the table is updated before the reply");
    owner.remove("box/7").unwrap();
    assert!(matches!(reader.stat("box/7"), Err(Error::NotFound(_))));
}

#[test]
fn a_table_whose_server_died_stops_answering() {
    let dir = std::env::temp_dir().join(format!("ipckit-ns-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ns.sock");
    let mut server = Kid(Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("server|{}|", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let out = std::io::BufReader::new(server.0.stdout.take().unwrap());
    assert!(out.lines().map_while(|l| l.ok()).any(|l| l.contains("serving")));
    let owner = NameClient::connect(&path).unwrap();
    owner.create_mailbox("m", Policy::mode(0o644), 1).unwrap();
    let reader = NameClient::connect(&path).unwrap();
    assert_eq!(reader.stat("m").unwrap().name, "m", "answered from the table");
    let _ = server.0.kill();
    let _ = server.0.wait();
    // No more heartbeat: within a couple of seconds the table is stale and
    // the client asks the (gone) server instead of answering from old data.
    wait_for(|| matches!(reader.stat("m"), Err(Error::NotListening(_) | Error::Io(_))));
    let _ = std::fs::remove_dir_all(&dir);
}
