//! `ipckit mq ...`, `ipckit sem ...` and the tour's queue and semaphore
//! scenes, run end to end through the built binary.
//!
//! Every run is bounded: a process that outlives [`LIMIT`] is killed and the
//! test fails. Every object a test makes has a name unique to the test and
//! this process, and is removed when the test ends, pass or fail.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one run may take.
const LIMIT: Duration = Duration::from_secs(60);
/// An unprivileged identity to run as when the tests run as root (nobody).
const NOBODY: u32 = 65534;

/// What a run of the binary produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// How to run the binary.
#[derive(Default)]
struct Opts<'a> {
    stdin: Option<&'a [u8]>,
    /// Run as this uid and gid (needs root).
    as_user: Option<u32>,
}

fn command(args: &[&str], opts: &Opts<'_>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipckit"));
    cmd.args(args)
        .stdin(if opts.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(id) = opts.as_user {
        cmd.uid(id).gid(id);
    }
    cmd
}

/// Starts `ipckit <args>`; finish it with [`finish`].
fn start(args: &[&str], opts: &Opts<'_>) -> std::io::Result<Child> {
    let mut child = command(args, opts).spawn()?;
    if let Some(bytes) = opts.stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).expect("writing ipckit's stdin");
    }
    Ok(child)
}

/// Waits for a started run, killing it after [`LIMIT`].
fn finish(mut child: Child, args: &[&str]) -> Run {
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
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ipckit") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ipckit {args:?} did not finish within {LIMIT:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    let stdout = out.recv_timeout(left).expect("ipckit's stdout was not closed: a child outlived it");
    let stderr = err.recv_timeout(left).expect("ipckit's stderr was not closed: a child outlived it");
    Run { status, stdout, stderr }
}

fn ipckit_with(args: &[&str], opts: &Opts<'_>) -> Run {
    finish(start(args, opts).expect("spawning ipckit"), args)
}

fn ipckit(args: &[&str]) -> Run {
    ipckit_with(args, &Opts::default())
}

/// Runs and requires exit status 0; returns stdout.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let run = ipckit(args);
    assert_eq!(run.code(), Some(0), "ipckit {args:?} failed: {run:?}");
    run.stdout
}

/// Runs and requires exit status `code` and `stderr` to be exactly `line` (plus a newline).
#[track_caller]
fn fails(args: &[&str], code: i32, line: &str) -> Run {
    let run = ipckit(args);
    assert_eq!(run.code(), Some(code), "ipckit {args:?}: {run:?}");
    assert_eq!(run.stderr, format!("{line}\n"), "ipckit {args:?}: {run:?}");
    run
}

/// A name unique to this test process and `tag`; the queue or semaphore set
/// of that name is removed from `/dev/shm` when this is dropped.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Self {
        Name(format!("cli-test-{}-{tag}", std::process::id()))
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/ipckit.{}", self.0));
    }
}

/// A private temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ipckit-cli-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("creating a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------- mq

#[test]
fn mq_sends_and_receives_by_type_as_msgrcv_selects() {
    let q = Name::new("select");
    ok(&["mq", "create", &q]);
    for (t, text) in [("1", "a1"), ("2", "b2"), ("1", "a3"), ("3", "c4"), ("5", "e5")] {
        ok(&["mq", "send", &q, t, text]);
    }
    // A positive type: the first of that type.
    assert_eq!(ok(&["mq", "recv", &q, "--type", "2"]), "2\tb2\n");
    // A negative type: the lowest type <= 4, first of those.
    assert_eq!(ok(&["mq", "recv", &q, "--type", "-4"]), "1\ta1\n");
    assert_eq!(ok(&["mq", "recv", &q, "--type=-4"]), "1\ta3\n");
    // Except: the first message not of type 3.
    assert_eq!(ok(&["mq", "recv", &q, "--type", "3", "--except"]), "5\te5\n");
    // Type 0: the first message.
    assert_eq!(ok(&["mq", "recv", &q, "--nowait"]), "3\tc4\n");
    // Nothing left: --nowait exits with 2 and says so.
    fails(&["mq", "recv", &q, "--nowait"], 2, &format!("ipckit: queue {}: no message of that type", &*q));
    ok(&["mq", "send", &q, "1", "one"]);
    fails(
        &["mq", "recv", &q, "--type", "2", "--nowait"],
        2,
        &format!("ipckit: queue {}: no message of that type", &*q),
    );
    let run = ipckit(&["mq", "recv", &q, "--type", "7", "--timeout", "0.2"]);
    assert_eq!(run.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("no message of that type within 0.2 s"), "{run:?}");
    assert_eq!(ok(&["mq", "recv", &q, "--type", "1"]), "1\tone\n");
    ok(&["mq", "rm", &q]);
    fails(&["mq", "rm", &q], 1, &format!("ipckit: error: queue {}: not found", &*q));
}

#[test]
fn mq_blocking_recv_is_woken_by_its_type_only() {
    let q = Name::new("wake");
    ok(&["mq", "create", &q]);
    let args = ["mq", "recv", &*q, "--type", "7", "--timeout", "20"];
    let waiter = start(&args, &Opts::default()).expect("spawning ipckit");
    std::thread::sleep(Duration::from_millis(200));
    ok(&["mq", "send", &q, "3", "not for you"]);
    ok(&["mq", "send", &q, "7", "for the waiter"]);
    let run = finish(waiter, &args);
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, "7\tfor the waiter\n");
    assert_eq!(ok(&["mq", "recv", &q, "--nowait"]), "3\tnot for you\n");
    ok(&["mq", "rm", &q]);
}

#[test]
fn mq_stat_shows_every_field_and_its_json_parses() {
    let q = Name::new("stat");
    ok(&["mq", "create", &q, "--mode", "640", "--capacity", "1000", "--max-message", "100"]);
    ok(&["mq", "send", &q, "4", "hello"]);
    ok(&["mq", "send", &q, "9", "world!"]);

    let json = ok(&["mq", "stat", &q, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("stat --json is JSON");
    assert_eq!(v["name"], &*q);
    assert_eq!(v["durable"], false);
    assert_eq!(v["messages"], 2);
    assert_eq!(v["bytes"], 11);
    assert_eq!(v["capacity"], 1000);
    assert_eq!(v["max_message"], 100);
    assert_eq!(v["mode"], 0o640);
    assert_eq!(v["perms"], "640");
    assert_eq!(v["last_receiver_pid"], 0);
    assert_eq!(v["recv_time"], 0);
    assert!(v["last_sender_pid"].as_u64().unwrap() > 0, "{json}");
    assert!(v["send_time"].as_u64().unwrap() > 1_600_000_000, "{json}");
    assert!(v["change_time"].as_u64().unwrap() > 1_600_000_000, "{json}");
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(v["uid"], uid);
    assert_eq!(v["cuid"], uid);
    assert!(v["owner"].is_string() && v["group"].is_string(), "{json}");

    ok(&["mq", "recv", &q]);
    let text = ok(&["mq", "stat", &q]);
    for line in [
        format!("queue         {}", &*q),
        "messages      1".to_owned(),
        "bytes         6 of 1000 (capacity, msg_qbytes)".to_owned(),
        "max message   100 bytes".to_owned(),
        "perms         640 (rw-r-----)".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    for field in ["last send     20", "last receive  20", "last change   20", "owner", "group", "creator"] {
        assert!(text.contains(field), "no {field:?} in\n{text}");
    }
    assert!(text.contains(" UTC (") && text.contains(" by pid "), "{text}");
    ok(&["mq", "rm", &q]);
}

#[test]
fn mq_errors_are_one_clear_line() {
    let q = Name::new("errors");
    fails(&["mq", "send", &q, "1", "x"], 1, &format!("ipckit: error: queue {}: not found", &*q));
    fails(&["mq", "recv", &q], 1, &format!("ipckit: error: queue {}: not found", &*q));
    fails(&["mq", "stat", &q], 1, &format!("ipckit: error: queue {}: not found", &*q));
    ok(&["mq", "create", &q, "--capacity", "100", "--max-message", "50"]);
    fails(&["mq", "create", &q], 1, &format!("ipckit: error: queue {}: already exists", &*q));
    fails(
        &["mq", "send", &q, "1", &"x".repeat(51)],
        1,
        &format!(
            "ipckit: error: queue {}: a message of 51 bytes exceeds the queue's maximum message of 50 bytes",
            &*q
        ),
    );
    // Full: --nowait and --timeout exit with 2.
    ok(&["mq", "send", &q, "1", &"x".repeat(50)]);
    ok(&["mq", "send", &q, "1", &"y".repeat(50)]);
    fails(
        &["mq", "send", &q, "1", "z", "--nowait"],
        2,
        &format!("ipckit: queue {}: full: message not sent", &*q),
    );
    let run = ipckit(&["mq", "send", &q, "1", "z", "--timeout", "0.1"]);
    assert_eq!(run.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("still full after 0.1 s"), "{run:?}");
    // A message longer than the buffer stays queued unless --truncate.
    let run = ipckit(&["mq", "recv", &q, "--max", "3"]);
    assert_eq!(run.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("the message is 50 bytes, longer than the 3-byte buffer"), "{run:?}");
    assert_eq!(ok(&["mq", "recv", &q, "--max", "3", "--truncate"]), "1\txxx\n");
    // Bad command lines exit with 1, never with 2 (which means "would block").
    for args in [&["mq", "send", &*q, "0", "x"][..], &["mq", "recv"], &["mq", "create", &q, "--mode", "999"]]
    {
        let run = ipckit(args);
        assert_eq!(run.code(), Some(1), "{args:?}: {run:?}");
    }
    fails(
        &["mq", "recv", &q, "--except"],
        1,
        &format!(
            "ipckit: error: queue {}: --except needs --type T with T > 0 (the first message not of type T)",
            &*q
        ),
    );
    let run = ipckit(&["mq", "create", "bad..name"]);
    assert_eq!(run.code(), Some(1), "{run:?}");
    assert!(run.stderr.starts_with("ipckit: error: queue bad..name: invalid: "), "{run:?}");
    ok(&["mq", "rm", &q]);
}

#[test]
fn mq_permissions_are_checked_with_a_clear_message() {
    let q = Name::new("perm");
    let denied = format!("ipckit: error: queue {}: permission denied\n", &*q);
    if is_root() {
        // Root may do anything: try as nobody instead.
        ok(&["mq", "create", &q, "--mode", "644"]);
        ok(&["mq", "send", &q, "1", "for everyone to read"]);
        let as_nobody = |args: &[&str]| -> Option<Run> {
            match start(args, &Opts { as_user: Some(NOBODY), ..Opts::default() }) {
                Ok(child) => Some(finish(child, args)),
                Err(e) => {
                    eprintln!("skipping the check as uid {NOBODY}: cannot run ipckit as it: {e}");
                    None
                }
            }
        };
        let Some(run) = as_nobody(&["mq", "send", &q, "1", "x"]) else { return };
        assert_eq!((run.code(), run.stderr.as_str()), (Some(1), denied.as_str()), "{run:?}");
        let Some(run) = as_nobody(&["mq", "rm", &q]) else { return };
        assert_eq!((run.code(), run.stderr.as_str()), (Some(1), denied.as_str()), "{run:?}");
        ok(&["mq", "rm", &q]);
        // Mode 600: not even readable by others.
        ok(&["mq", "create", &q, "--mode", "600"]);
        let Some(run) = as_nobody(&["mq", "recv", &q, "--nowait"]) else { return };
        assert_eq!((run.code(), run.stderr.as_str()), (Some(1), denied.as_str()), "{run:?}");
        let Some(run) = as_nobody(&["mq", "stat", &q]) else { return };
        assert_eq!((run.code(), run.stderr.as_str()), (Some(1), denied.as_str()), "{run:?}");
    } else {
        // The owner's own bits decide for the owner: write-only cannot receive.
        ok(&["mq", "create", &q, "--mode", "200"]);
        ok(&["mq", "send", &q, "1", "x"]);
        let run = ipckit(&["mq", "recv", &q, "--nowait"]);
        assert_eq!((run.code(), run.stderr.as_str()), (Some(1), denied.as_str()), "{run:?}");
    }
    ok(&["mq", "rm", &q]);
}

#[test]
fn mq_carries_bytes_from_stdin_and_shows_them_in_hex() {
    let q = Name::new("bytes");
    ok(&["mq", "create", &q]);
    let bytes = [0u8, 0xff, b'a', b'\n'];
    let run = ipckit_with(&["mq", "send", &q, "42", "--stdin"], &Opts { stdin: Some(&bytes), as_user: None });
    assert_eq!(run.code(), Some(0), "{run:?}");
    let run = ipckit_with(&["mq", "send", &q, "42", "--stdin"], &Opts { stdin: Some(&bytes), as_user: None });
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert_eq!(ok(&["mq", "recv", &q, "--hex"]), "42\t00ff610a\n");
    // Without --hex: lossy UTF-8.
    assert_eq!(ok(&["mq", "recv", &q]), "42\t\u{0}\u{fffd}a\n\n");
    ok(&["mq", "rm", &q]);
}

#[test]
fn mq_durable_queues_are_addressed_by_path() {
    let dir = TempDir::new("durable");
    let path = dir.0.join("jobs.q");
    let p = path.to_str().expect("a UTF-8 temporary path");
    ok(&["mq", "create", p, "--capacity", "4096"]);
    assert!(path.is_file(), "no file at {p}");
    ok(&["mq", "send", p, "2", "kept on disk"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&["mq", "stat", p, "--json"])).expect("JSON");
    assert_eq!((v["durable"].as_bool(), v["messages"].as_u64()), (Some(true), Some(1)), "{v}");
    assert!(ok(&["mq", "stat", p]).contains("(durable, in a file)"));
    assert_eq!(ok(&["mq", "recv", p]), "2\tkept on disk\n");
    ok(&["mq", "rm", p]);
    assert!(!path.exists(), "{p} is still there after rm");
    fails(&["mq", "stat", p], 1, &format!("ipckit: error: queue {p}: not found"));
}

#[test]
fn mq_help_documents_names_and_exit_codes() {
    let top = ok(&["--help"]);
    assert!(top.contains("mq") && top.contains("typed message queues"), "{top}");
    let help = ok(&["mq", "recv", "--help"]);
    for needle in ["A NAME containing '/'", "durable", "2 nothing done", "no message of that type", "--hex"] {
        assert!(help.contains(needle), "no {needle:?} in\n{help}");
    }
}

// ---------------------------------------------------------------- tour

/// The tour's pid, from its first line of narration.
fn tour_pid(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.split_once("I am the tour process, pid ").map(|(_, p)| p.trim().to_owned()))
        .expect("the tour says its pid")
}

/// The lines of `run` that contain `needle`, in order.
fn lines_with<'a>(run: &'a Run, needle: &str) -> Vec<&'a str> {
    run.stdout.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn the_queue_scene_runs_two_typed_receivers() {
    let run = ipckit(&["tour", "queue"]);
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert!(run.stdout.contains("== 4. Typed message queue"), "{run:?}");
    // Each receiver got its own type only, in the order sent.
    let render = lines_with(&run, "[render-receiver ");
    let got: Vec<_> = render.iter().filter_map(|l| l.split_once("recv(type 1) #").map(|x| x.1)).collect();
    assert_eq!(
        got,
        ["1 -> \"render frame 1\"", "2 -> \"render frame 2\"", "3 -> \"render frame 3\""],
        "{run:?}"
    );
    let log = lines_with(&run, "[log-receiver ");
    let got: Vec<_> = log.iter().filter_map(|l| l.split_once("recv(type 2) #").map(|x| x.1)).collect();
    assert_eq!(
        got,
        ["1 -> \"log: frame 1 queued\"", "2 -> \"log: frame 2 queued\"", "3 -> \"log: all frames queued\""],
        "{run:?}"
    );
    assert!(
        !render.iter().any(|l| l.contains("log:")) && !log.iter().any(|l| l.contains("render")),
        "{run:?}"
    );
    assert_eq!(lines_with(&run, "exited with status 0 after").len(), 2, "{run:?}");
    // Lowest type first with a negative type.
    let neg: Vec<_> = lines_with(&run, "recv(type -3) -> type ");
    assert_eq!(neg.len(), 3, "{run:?}");
    for (line, t) in neg.iter().zip(["type 1,", "type 2,", "type 3,"]) {
        assert!(line.contains(t), "{line:?} should take {t}");
    }
    // Stat: counts, last sender and receiver.
    let pid = tour_pid(&run);
    assert!(
        run.stdout.contains(&format!("3 message(s), 66 bytes (of 16384), last sender pid {pid}")),
        "{run:?}"
    );
    assert!(run.stdout.contains(&format!("last receiver pid {pid}, owner")), "{run:?}");
    assert!(run.stdout.contains("MessageQueue::remove (msgctl IPC_RMID): removed"), "{run:?}");
    let name = format!("/dev/shm/ipckit.ipckit-tour-{pid}-queue");
    assert!(!std::path::Path::new(&name).exists(), "{name} is left behind");
    assert!(run.stdout.contains("tour complete: 1 scene(s)"), "{run:?}");
}

#[test]
fn the_semaphore_scene_survives_a_killed_holder() {
    let run = ipckit(&["tour", "semaphore"]);
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert!(run.stdout.contains("== 5. Semaphore"), "{run:?}");
    // Part 1: 3 workers x 2 rounds, strictly alternating enter and leave.
    let section: Vec<_> = run
        .stdout
        .lines()
        .filter(|l| {
            l.contains("P: entered the critical section") || l.contains("V: leaving the critical section")
        })
        .collect();
    assert_eq!(section.len(), 2 * (6 + 2), "{run:?}");
    for pair in section.chunks(2) {
        let who = |l: &str| l.split(']').next().unwrap_or_default().to_owned();
        assert!(pair[0].contains("P: entered") && pair[1].contains("V: leaving"), "{pair:?}");
        assert_eq!(who(pair[0]), who(pair[1]), "someone else left: {pair:?}");
    }
    assert!(run.stdout.contains("semctl(GETNCNT): 3 processes blocked in P"), "{run:?}");
    assert!(run.stdout.contains("6 entries, never two inside at once; value is 1 again"), "{run:?}");
    // Part 2: the holder is killed inside; its P is undone; the waiters get in.
    assert!(run.stdout.contains("P with undo: I hold the semaphore"), "{run:?}");
    assert!(run.stdout.contains("semctl(GETNCNT): 2 processes blocked in P; the value is 0"), "{run:?}");
    assert!(run.stdout.contains("was killed by signal 9 (SIGKILL); it never did its V"), "{run:?}");
    assert!(run.stdout.contains("the dead holder's P was undone (SEM_UNDO)"), "{run:?}");
    assert!(run.stdout.contains("value 1, 0 process(es) hold undo adjustments"), "{run:?}");
    assert!(run.stdout.contains("SemaphoreSet::remove (semctl IPC_RMID): removed"), "{run:?}");
    let name = format!("/dev/shm/ipckit.ipckit-tour-{}-sem", tour_pid(&run));
    assert!(!std::path::Path::new(&name).exists(), "{name} is left behind");
}

// ---------------------------------------------------------------- sem

/// `ipckit sem stat --json`, parsed.
fn sem_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["sem", "stat", name, "--json"])).expect("sem stat --json is JSON")
}

/// Each semaphore's value, from `sem stat --json`.
fn sem_values(name: &str) -> Vec<u64> {
    let v = sem_json(name);
    v["semaphores"]
        .as_array()
        .expect("a semaphores array")
        .iter()
        .map(|s| s["value"].as_u64().unwrap())
        .collect()
}

#[test]
fn sem_ops_apply_all_at_once_or_not_at_all() {
    let s = Name::new("semops");
    ok(&["sem", "create", &s, "3", "--value", "1"]);
    assert_eq!(sem_values(&s), [1, 1, 1]);
    ok(&["sem", "op", &s, "0:-1", "1:+1", "2:+2"]);
    assert_eq!(sem_values(&s), [0, 2, 3]);
    // 1:-1 could proceed, 0:-1 cannot: nothing changes, exit 2.
    let what = format!("ipckit: semaphore set {}", &*s);
    fails(
        &["sem", "op", &s, "1:-1", "0:-1", "--nowait"],
        2,
        &format!("{what}: 1:-1 0:-1 cannot proceed now: nothing changed"),
    );
    let run = ipckit(&["sem", "op", &s, "1:-1", "0:-1", "--timeout", "0.2"]);
    assert_eq!(run.code(), Some(2), "{run:?}");
    assert!(run.stderr.contains("could not proceed within 0.2 s: nothing changed"), "{run:?}");
    assert_eq!(sem_values(&s), [0, 2, 3]);
    // Wait-for-zero proceeds on a zero value.
    ok(&["sem", "op", &s, "0:0", "--nowait"]);
    // Undo: reversed when `ipckit sem op` exits.
    ok(&["sem", "op", &s, "2:-3:undo"]);
    assert_eq!(sem_values(&s), [0, 2, 3]);
    ok(&["sem", "rm", &s]);
}

#[test]
fn sem_blocking_op_is_released_by_another_process() {
    let s = Name::new("semwake");
    ok(&["sem", "create", &s, "1"]);
    let args = ["sem", "op", &*s, "0:-2", "--timeout", "20"];
    let waiter = start(&args, &Opts::default()).expect("spawning ipckit");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sem_json(&s)["semaphores"][0]["ncount"] != 1 {
        assert!(Instant::now() < deadline, "the waiter never blocked");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&["sem", "op", &s, "0:+1"]);
    ok(&["sem", "op", &s, "0:+1"]);
    let run = finish(waiter, &args);
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert_eq!(sem_values(&s), [0]);
    ok(&["sem", "rm", &s]);
}

#[test]
fn sem_stat_shows_every_field() {
    let s = Name::new("semstat");
    ok(&["sem", "create", &s, "2", "--value", "5", "--mode", "640"]);
    let v = sem_json(&s);
    assert_eq!(v["name"], &*s);
    assert_eq!(v["count"], 2);
    assert_eq!(v["mode"], 0o640);
    assert_eq!(v["perms"], "640");
    assert_eq!(v["op_time"], 0);
    assert_eq!(v["undo_records"], 0);
    assert!(v["change_time"].as_u64().unwrap() > 1_600_000_000, "{v}");
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!((v["uid"].as_u64(), v["cuid"].as_u64()), (Some(uid.into()), Some(uid.into())), "{v}");
    assert!(v["owner"].is_string() && v["group"].is_string(), "{v}");
    assert_eq!(
        v["semaphores"][1],
        serde_json::json!({"index": 1, "value": 5, "last_pid": 0, "ncount": 0, "zcount": 0})
    );
    ok(&["sem", "op", &s, "1:-2"]);
    let v = sem_json(&s);
    assert!(v["op_time"].as_u64().unwrap() > 1_600_000_000, "{v}");
    assert!(v["semaphores"][1]["last_pid"].as_u64().unwrap() > 0, "{v}");
    let text = ok(&["sem", "stat", &s]);
    for line in [
        format!("semaphore set {}", &*s),
        "semaphores    2".to_owned(),
        "perms         640 (rw-r-----)".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    assert!(text.contains("semnum    value  ncount  zcount      pid"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("1             3       0       0 ")), "{text}");
    ok(&["sem", "rm", &s]);
}

#[test]
fn sem_errors_are_one_clear_line() {
    let s = Name::new("semerr");
    let what = format!("ipckit: error: semaphore set {}", &*s);
    fails(&["sem", "op", &s, "0:+1"], 1, &format!("{what}: not found"));
    fails(&["sem", "stat", &s], 1, &format!("{what}: not found"));
    fails(&["sem", "rm", &s], 1, &format!("{what}: not found"));
    ok(&["sem", "create", &s, "2", "--mode", "644"]);
    fails(&["sem", "create", &s, "2"], 1, &format!("{what}: already exists"));
    fails(&["sem", "op", &s, "2:+1"], 1, &format!("{what}: semaphore 2 does not exist (the set has 2)"));
    for args in [
        &["sem", "op", &*s][..],
        &["sem", "op", &s, "0:x"],
        &["sem", "op", &s, "0:1:redo"],
        &["sem", "create", "x", "0"],
    ] {
        let run = ipckit(args);
        assert_eq!(run.code(), Some(1), "{args:?}: {run:?}");
    }
    if is_root() {
        let run = match start(&["sem", "op", &s, "0:+1"], &Opts { as_user: Some(NOBODY), ..Opts::default() })
        {
            Ok(child) => finish(child, &["sem", "op"]),
            Err(e) => {
                eprintln!("skipping the check as uid {NOBODY}: {e}");
                return;
            }
        };
        assert_eq!(run.code(), Some(1), "{run:?}");
        assert_eq!(run.stderr, format!("{what}: permission denied\n"), "{run:?}");
    }
    ok(&["sem", "rm", &s]);
}

#[test]
fn sem_help_documents_ops_and_exit_codes() {
    let help = ok(&["sem", "op", "--help"]);
    for needle in
        ["INDEX:DELTA[:undo]", "SEM_UNDO", "all at once or none", "2 nothing done", "--nowait", "--timeout"]
    {
        assert!(help.contains(needle), "no {needle:?} in\n{help}");
    }
}
