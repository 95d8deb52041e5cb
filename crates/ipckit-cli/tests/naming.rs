//! `ipckit serve`, `ls`, `stat`, `rm`, `call`, `send`, `recv`, and the tour's
//! drawing and signals scenes, end to end through the built binary.
//!
//! Every process is bounded: one that outlives [`LIMIT`] is killed and the
//! test fails. Names are unique to this test process; shared-memory objects
//! are removed when the test ends, pass or fail.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::naming::{NameClient, Policy};
use ipckit::signal::{self, SIGTERM};

/// How long any one process may take.
const LIMIT: Duration = Duration::from_secs(60);
/// An unprivileged identity to run as when the tests run as root (nobody).
const NOBODY: u32 = 65534;

/// What a run of the binary produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `ipckit <args>` (as `uid` if given), killing it after [`LIMIT`].
fn ipckit_as(args: &[&str], uid: Option<u32>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipckit"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(id) = uid {
        cmd.uid(id).gid(id);
    }
    let mut child = cmd.spawn().expect("spawning ipckit");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        rx
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_bounded(&mut child, &format!("ipckit {args:?}"));
    let left = Duration::from_secs(10);
    let stdout = out.recv_timeout(left).expect("ipckit's stdout was not closed: a child outlived it");
    let stderr = err.recv_timeout(left).expect("ipckit's stderr was not closed: a child outlived it");
    Run { status, stdout, stderr }
}

fn ipckit(args: &[&str]) -> Run {
    ipckit_as(args, None)
}

/// Waits for `child`, killing it (and failing) after [`LIMIT`].
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {LIMIT:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs and requires exit status 0; returns stdout.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let run = ipckit(args);
    assert_eq!(run.status.code(), Some(0), "ipckit {args:?} failed: {run:?}");
    run.stdout
}

/// A running `ipckit serve`, killed (and its directory removed) on drop.
struct Served {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Served {
    fn start(tag: &str) -> Served {
        let dir = std::env::temp_dir().join(format!("ipckit-naming-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("creating the test directory");
        // Others may pass through (the tests run some commands as nobody).
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let socket = dir.join("naming.sock");
        let log = std::fs::File::create(dir.join("serve.log")).expect("creating the log");
        let child = Command::new(env!("CARGO_BIN_EXE_ipckit"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning ipckit serve");
        let mut served = Served { child, dir, socket };
        let deadline = Instant::now() + LIMIT;
        while NameClient::connect(&served.socket).is_err() {
            if let Some(status) = served.child.try_wait().expect("checking on ipckit serve") {
                panic!("ipckit serve {status} before listening: {}", served.log());
            }
            assert!(Instant::now() < deadline, "ipckit serve did not listen within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        served
    }

    fn sock(&self) -> &str {
        self.socket.to_str().expect("a UTF-8 path")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (bounded).
    fn stop(&mut self) -> ExitStatus {
        signal::send(self.child.id(), SIGTERM).expect("sending SIGTERM to ipckit serve");
        wait_bounded(&mut self.child, "ipckit serve after SIGTERM")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shared-memory object of this test, removed on drop.
struct Shm(String);

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(format!("ipckit.{}", self.0)));
    }
}

fn json_objects(text: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(items)) => items,
        other => panic!("ls --json did not print an array: {other:?}\n{text}"),
    }
}

fn find<'a>(objects: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    objects.iter().find(|o| o["name"] == name)
}

#[test]
fn serve_ls_stat_rm_call_send_recv_end_to_end() {
    let mut served = Served::start("e2e");
    let sock = served.sock().to_owned();
    let pid = std::process::id();
    let service = format!("t-draw-{pid}");
    let mailbox = format!("t-box-{pid}");

    // A service (answering in upper case) and a mailbox, held by this process.
    let names = NameClient::connect(&served.socket).expect("connecting");
    let mut registered = names.register(&service, Policy::mode(0o600)).expect("registering");
    names.create_mailbox(&mailbox, Policy::mode(0o600), 8).expect("creating the mailbox");
    let server = std::thread::spawn(move || {
        let mut rpc = ipckit::rpc::Server::new();
        for _ in 0..1 {
            let (conn, _who) = registered.accept_timeout(LIMIT).expect("a client");
            rpc.add(conn);
            let req = rpc.recv_timeout(LIMIT).expect("a request");
            let answer = String::from_utf8_lossy(req.bytes()).to_uppercase();
            req.reply(answer).expect("replying");
        }
        registered
    });

    // Shared memory: a live segment (our own), a queue whose creator exited
    // (queues persist: never stale), and a segment whose creator is dead.
    let seg = Shm(format!("t-seg-{pid}"));
    let _segment = ipckit::shm::Segment::create(&seg.0, 4096, 0o600).expect("creating a segment");
    let queue = Shm(format!("t-queue-{pid}"));
    ok(&["mq", "create", &queue.0]);
    ok(&["mq", "send", &queue.0, "1", "left behind"]);
    let stale = Shm(format!("t-stale-{pid}"));
    drop(ipckit::shm::Segment::create(&stale.0, 4096, 0o600).expect("creating a segment"));
    let dead = {
        let mut c = std::process::Command::new("true").spawn().expect("spawning true");
        c.wait().expect("reaping true");
        c.id()
    };
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new("/dev/shm").join(format!("ipckit.{}", stale.0)))
            .expect("opening the segment file");
        f.seek(SeekFrom::Start(36)).expect("seeking to the creator pid");
        f.write_all(&dead.to_le_bytes()).expect("writing a dead creator pid");
    }

    // ls --json: everything, with kinds and staleness.
    let all = json_objects(&ok(&["ls", "--json", "--socket", &sock]));
    let s = find(&all, &service).expect("the service is listed");
    assert_eq!(s["kind"], "service");
    assert_eq!(s["mode"], "600");
    assert_eq!(s["creator_pid"], pid);
    let m = find(&all, &mailbox).expect("the mailbox is listed");
    assert_eq!(
        (m["kind"].as_str(), m["messages"].as_u64(), m["capacity"].as_u64()),
        (Some("mailbox"), Some(0), Some(8))
    );
    let g = find(&all, &seg.0).expect("the segment is listed");
    assert_eq!(
        (g["kind"].as_str(), g["stale"].as_bool(), g["creator_pid"].as_u64()),
        (Some("segment"), Some(false), Some(u64::from(pid)))
    );
    let q = find(&all, &queue.0).expect("the queue is listed");
    assert_eq!(
        (q["kind"].as_str(), q["stale"].as_bool(), q["messages"].as_u64()),
        (Some("queue"), Some(false), Some(1))
    );
    let d = find(&all, &stale.0).expect("the dead creator's segment is listed");
    assert_eq!((d["kind"].as_str(), d["stale"].as_bool()), (Some("segment"), Some(true)));

    // The human table.
    let table = ok(&["ls", "--socket", &sock]);
    assert!(table.starts_with("KIND"), "{table}");
    for name in [&service, &mailbox, &seg.0, &queue.0, &stale.0] {
        assert!(table.contains(name.as_str()), "{name} missing from\n{table}");
    }

    // stat.
    let st = ok(&["stat", &service, "--socket", &sock]);
    assert!(
        st.contains("kind:          service") && st.contains(&format!("creator pid:   {pid} (alive)")),
        "{st}"
    );
    let st = ok(&["stat", &seg.0, "--socket", &sock]);
    assert!(st.contains("kind:          segment") && st.contains("mode:          600 (rw-------)"), "{st}");
    let run = ipckit(&["stat", "no-such-name", "--socket", &sock]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("not found"), "{run:?}");

    // call.
    assert_eq!(ok(&["call", &service, "hello draw", "--socket", &sock]), "HELLO DRAW\n");
    let _registered = server.join().expect("the service thread");
    let run = ipckit(&["call", "no-such-service", "x", "--socket", &sock]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(run.stderr, "ipckit: error: service no-such-service: not found\n", "{run:?}");
    // A service that never answers: the timeout, exit status 2.
    let run = ipckit(&["call", &service, "anyone?", "--timeout", "0.3", "--socket", &sock]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("no reply within 0.3 s"), "{run:?}");

    // send / recv.
    assert_eq!(ok(&["send", &mailbox, "first", "--socket", &sock]), "");
    assert_eq!(ok(&["send", &mailbox, "second", "--socket", &sock]), "");
    let all = json_objects(&ok(&["ls", "--json", "--socket", &sock]));
    assert_eq!(find(&all, &mailbox).expect("listed")["messages"], 2);
    assert_eq!(ok(&["recv", &mailbox, "--timeout", "5", "--socket", &sock]), "first\n");
    assert_eq!(ok(&["recv", &mailbox, "--socket", &sock]), "second\n");
    let run = ipckit(&["recv", &mailbox, "--timeout", "0.2", "--socket", &sock]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("no message within 0.2 s"), "{run:?}");

    // Permissions: another uid sees none of these 0600 objects and may remove none.
    if ipckit::euid() == 0 {
        let run = ipckit_as(&["ls", "--json", "--socket", &sock], Some(NOBODY));
        assert_eq!(run.status.code(), Some(0), "{run:?}");
        let theirs = json_objects(&run.stdout);
        for name in [&service, &mailbox, &seg.0] {
            assert!(find(&theirs, name).is_none(), "nobody sees {name}: {run:?}");
        }
        for name in [&mailbox, &seg.0] {
            let run = ipckit_as(&["rm", name, "--socket", &sock], Some(NOBODY));
            assert_eq!(run.status.code(), Some(1), "{run:?}");
            assert!(run.stderr.contains("permission denied"), "{run:?}");
        }
        let run = ipckit_as(&["send", &mailbox, "intruder", "--socket", &sock], Some(NOBODY));
        assert_eq!(run.status.code(), Some(1), "{run:?}");
        assert!(run.stderr.contains("permission denied"), "{run:?}");
    }

    // rm: a name at the server, then --stale, then a shm object by name.
    let out = ok(&["rm", &mailbox, "--socket", &sock]);
    assert!(out.contains(&format!("removed {mailbox} from the naming server")), "{out}");
    assert_eq!(ipckit(&["stat", &mailbox, "--socket", &sock]).status.code(), Some(1));
    let out = ok(&["rm", "--stale", "--socket", &sock]);
    assert!(out.contains(&format!("removed segment {}", stale.0)), "{out}");
    assert!(!out.contains(&seg.0), "a live segment was removed as stale: {out}");
    assert!(!out.contains(&queue.0), "a queue was removed as stale: {out}");
    ok(&["mq", "rm", &queue.0]);
    assert!(!Path::new("/dev/shm").join(format!("ipckit.{}", stale.0)).exists());
    let out = ok(&["rm", &seg.0, "--socket", &sock]);
    assert!(out.contains(&format!("removed segment {}", seg.0)), "{out}");
    assert!(!Path::new("/dev/shm").join(format!("ipckit.{}", seg.0)).exists());
    let run = ipckit(&["rm", &seg.0, "--socket", &sock]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");

    // SIGTERM: a clean exit, and the socket is gone.
    drop(names);
    let status = served.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "ipckit serve ended with {status:?} (signal {:?}): {}",
        status.signal(),
        served.log()
    );
    assert!(!served.socket.exists(), "ipckit serve left its socket behind");
    let log = served.log();
    assert!(log.contains("naming server stopped; socket removed"), "{log}");
}

#[test]
fn ls_without_a_server_says_so_and_lists_shared_memory() {
    let run = ipckit(&["ls", "--socket", "/nonexistent-ipckit-dir/naming.sock"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(
        run.stderr.contains("no naming server is running at /nonexistent-ipckit-dir/naming.sock"),
        "{run:?}"
    );
    assert!(run.stdout.starts_with("KIND"), "{run:?}");
    let run = ipckit(&["call", "draw", "x", "--socket", "/nonexistent-ipckit-dir/naming.sock"]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("no naming server is running"), "{run:?}");
}

#[test]
fn serve_refuses_a_socket_already_served_and_stops_on_sigint() {
    let mut served = Served::start("twice");
    let run = ipckit(&["serve", "--socket", served.sock()]);
    assert_eq!(run.status.code(), Some(1), "a second server started: {run:?}");
    assert!(served.socket.exists(), "the second server removed the first one's socket");
    signal::send(served.child.id(), ipckit::signal::SIGINT).expect("SIGINT");
    let status = wait_bounded(&mut served.child, "ipckit serve after SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}: {}", served.log());
    assert!(!served.socket.exists());
}

#[test]
fn the_tour_draws_and_signals() {
    let run = ipckit(&["tour", "drawing", "signals"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let says = |needle: &str| assert!(run.stdout.contains(needle), "expected {needle:?} in {run:?}");
    says("== 6. The drawing service");
    says("registered \"draw\" with Policy { mode: 0o660 }");
    says("watch: \"draw\" appeared");
    says("call(\"a circle\") -> \"drew a circle for pid");
    says("(kernel-verified, SO_PEERCRED, passed on by the server)");
    if ipckit::euid() == 0 {
        says("as uid 65534 gid 65534 -> PermissionDenied");
        says("draw-stranger was refused");
    } else {
        says("skipping the refused client");
    }
    says("watch: \"draw\" disappeared");
    says("lookup(\"draw\") -> NotFound");
    says("== 7. Signals");
    says("SIGIO (signal 29) reported: sent by pid");
    says("SIGUSR1 (signal 10) reported: sent by pid");
    assert_eq!(run.stdout.matches(": the signal-sender child, uid").count(), 2, "{run:?}");
    assert_eq!(run.stdout.matches("was killed by signal 15 (SIGTERM)").count(), 3, "{run:?}");
    says("one signal to the group stopped all 3 children");
    says("tour complete: 2 scene(s)");
}
