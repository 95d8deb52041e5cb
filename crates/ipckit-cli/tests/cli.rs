//! Runs the built `ipckit` binary as a user would and checks what it says.
//!
//! Every run is bounded: a process that outlives [`LIMIT`] is killed and the
//! test fails, so a hang shows up as a failure, never as a stuck test run.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one run may take (the tour needs a few seconds).
const LIMIT: Duration = Duration::from_secs(60);

/// What a run of the binary produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `ipckit <args>`, killing it if it takes longer than [`LIMIT`].
fn ipckit(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipckit"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ipckit");
    // Read both pipes on threads so a full pipe cannot stall the child.
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
        std::thread::sleep(Duration::from_millis(20));
    };
    // A child process of ipckit left holding the pipes would keep them open:
    // bound the wait for end-of-file too.
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
    let stdout = out.recv_timeout(left).expect("ipckit's stdout was not closed: a child outlived it");
    let stderr = err.recv_timeout(left).expect("ipckit's stderr was not closed: a child outlived it");
    Run { status, stdout, stderr }
}

/// Fails, showing the whole output, when stdout does not contain `needle`.
#[track_caller]
fn assert_says(run: &Run, needle: &str) {
    assert!(
        run.stdout.contains(needle),
        "expected {needle:?} in the output\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn help_lists_the_tour_and_hides_internal_commands() {
    let run = ipckit(&["--help"]);
    assert!(run.status.success(), "--help failed: {}", run.stderr);
    assert_says(&run, "tour");
    assert_says(&run, "Run the IPC chapter's examples (pipe, FIFO, RPC, queue, semaphore, drawing, signals)");
    assert!(!run.stdout.contains("__tour-child"), "the internal subcommand is listed:\n{}", run.stdout);
}

#[test]
fn tour_help_lists_the_scenes() {
    let run = ipckit(&["tour", "--help"]);
    assert!(run.status.success(), "tour --help failed: {}", run.stderr);
    for scene in ["pipe", "fifo", "rpc", "queue", "semaphore", "drawing", "signals"] {
        assert_says(&run, scene);
    }
}

#[test]
fn the_tour_runs_every_scene_with_real_processes() {
    let run = ipckit(&["tour"]);
    assert!(
        run.status.success(),
        "the tour failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );

    // Scene 1: ten messages through an anonymous pipe, then end-of-file.
    for i in 0..10 {
        assert_says(&run, &format!("read: \"the {i} message.\""));
    }
    assert_says(&run, "read 10 messages, then end-of-file (RecvError::Disconnected)");
    assert_says(&run, "the write end did not leak into me");

    // Scene 2: the FIFO reader blocked in open(), then got the data.
    assert_says(&run, "I was blocked in open() for");
    assert_says(&run, "then read: \"hello through the FIFO\"");
    assert_says(&run, "end-of-file: the writer closed the FIFO");

    // Scene 3: RPC replies, a timeout, a dead server.
    assert_says(&run, "call(\"hello\") -> reply \"HELLO\"");
    assert_says(&run, "call(\"ping\") -> reply \"PING\"");
    assert_says(&run, "the kernel vouches for the server (SO_PEERCRED)");
    assert_says(&run, "I will never answer it");
    assert_says(&run, "CallError::Timeout after");
    assert_eq!(run.stdout.matches("CallError::Disconnected").count(), 2, "{}", run.stdout);

    // Scene 4: the typed message queue.
    assert_says(&run, "recv(type 1) #3 -> \"render frame 3\"");
    assert_says(&run, "recv(type 2) #3 -> \"log: all frames queued\"");

    // Scene 5: semaphores, and a killed holder's P undone.
    assert_says(&run, "never two inside at once");
    assert_says(&run, "the dead holder's P was undone (SEM_UNDO)");

    // Scenes 6 and 7: the drawing service and signals (details in tests/naming.rs).
    assert_says(&run, "call(\"a circle\") -> \"drew a circle for pid");
    assert_says(&run, "one signal to the group stopped all 3 children");

    // Scene 8: microkernel endpoints.
    // (Which call the worker answers depends on the order the calls arrive.)
    assert_says(&run, "recv: \"alice: hello\" through the capability with badge 1 (alice)");
    assert_says(&run, "recv: \"bob: hello\" through the capability with badge 2 (bob)");
    assert_eq!(run.stdout.matches(", your badge is ").count(), 3, "{}", run.stdout);
    assert_says(&run, "-> \"answered by the worker, pid");
    assert_eq!(
        run.stdout.matches("refused (call failed: capabilities need the grant right)").count(),
        2,
        "{}",
        run.stdout
    );
    assert_says(&run, "recv says Disconnected");

    assert_says(&run, "tour complete: 8 scene(s)");
    let scratch = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("FIFOs and sockets go in ").map(|(_, p)| p.trim().to_owned()))
        .expect("the tour names its scratch directory");
    assert!(!std::path::Path::new(&scratch).exists(), "{scratch} was not removed");
}

#[test]
fn a_single_scene_can_be_chosen() {
    let run = ipckit(&["tour", "pipe"]);
    assert!(run.status.success(), "tour pipe failed: {}", run.stderr);
    assert_says(&run, "1. Anonymous pipe");
    assert!(!run.stdout.contains("2. Named pipe"), "ran the FIFO scene too:\n{}", run.stdout);
    assert_says(&run, "tour complete: 1 scene(s)");
}

#[test]
fn an_unknown_scene_is_refused() {
    let run = ipckit(&["tour", "carrier-pigeon"]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("carrier-pigeon"), "{}", run.stderr);
}

#[test]
fn a_tour_child_without_its_parent_fails_clearly() {
    let run = ipckit(&["__tour-child", "pipe-reader", "--expect", "10"]);
    assert!(!run.status.success(), "a pipe-reader with no pipe succeeded:\n{}", run.stdout);
    assert!(run.stderr.contains("ipckit: error:") && run.stderr.contains("messages"), "{}", run.stderr);
}
