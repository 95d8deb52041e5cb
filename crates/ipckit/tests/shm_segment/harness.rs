//! Children, unique segment names, and cleanup.
//!
//! Copied (trimmed) from `tests/process/harness.rs`: [`spawn`] starts this
//! test binary again in a role and returns a [`Kid`] that reads the child's
//! reports, waits for it with a deadline, and kills and reaps it when dropped.
//! Added here: [`Named`], a segment name that is removed from `/dev/shm`
//! when the test ends, whether it passed or not.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ipckit::shm::{Segment, PREFIX};
use ipckit::spawn::Inherit;
use ipckit::Error;

/// The environment variable that names a child's role.
pub const ROLE_VAR: &str = "IPCKIT_TEST_ROLE";
/// How long any single blocking step may take before the test fails.
pub const LONG: Duration = Duration::from_secs(20);
/// How long a child may run before it is killed and the test fails.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(60);
/// What starts a report line on a child's stdout (libtest prints there too).
const REPORT_PREFIX: &str = "@ipckit-report ";

/// A segment name unique to this process, test and call, removed (with
/// whatever file sits under it in `/dev/shm`) when dropped.
pub struct Named(String);

impl Named {
    /// `t-<pid>-<test>-<counter>`.
    pub fn new(test: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t-{}-{test}-{n}", std::process::id());
        let named = Named(name);
        named.clean();
        named
    }

    /// Like [`Named::new`], padded with `x` to exactly `len` bytes.
    pub fn padded(test: &str, len: usize) -> Self {
        let mut named = Named::new(test);
        assert!(named.0.len() <= len, "{} is already longer than {len}", named.0);
        while named.0.len() < len {
            named.0.push('x');
        }
        named.clean();
        named
    }

    /// The segment name (without ipckit's prefix).
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The object's path in `/dev/shm`.
    pub fn path(&self) -> PathBuf {
        shm_path(&self.0)
    }

    fn clean(&self) {
        // Only a regular file goes through ipckit: opening a FIFO could block.
        if std::fs::symlink_metadata(self.path()).is_ok_and(|m| m.file_type().is_file()) {
            let _ = Segment::remove(&self.0);
        }
        // Whatever else a test put there by hand (a FIFO, a symlink, a directory).
        let _ = std::fs::remove_file(self.path());
        let _ = std::fs::remove_dir(self.path());
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Where segment `name` lives.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/{PREFIX}{name}"))
}

/// The variant of an ipckit error, as a word children report and tests compare.
pub fn what(r: &Result<impl Sized, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::InvalidName { .. }) => "InvalidName".into(),
        Err(Error::NotFound(_)) => "NotFound".into(),
        Err(Error::AlreadyExists(_)) => "AlreadyExists".into(),
        Err(Error::PermissionDenied(_)) => "PermissionDenied".into(),
        Err(Error::Corrupted(_)) => "Corrupted".into(),
        Err(Error::BadHandle(_)) => "BadHandle".into(),
        Err(e) => format!("other({e})"),
    }
}

/// A running child process; killed and reaped on drop if still running.
pub struct Kid {
    role: String,
    child: Child,
    reports: mpsc::Receiver<String>,
    /// Everything else the child wrote (stderr, and stdout that is not a report).
    log: Arc<Mutex<String>>,
}

/// Starts this test binary again in `role`, with `env` and the handles in `kit`.
pub fn spawn(role: &str, env: &[(&str, &str)], kit: Inherit) -> Kid {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = kit.spawn(&mut cmd).unwrap_or_else(|e| panic!("spawning role {role}: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, reports) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    let out_log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // libtest's "test child_main ... " has no newline: a report may follow it.
            match line.find(REPORT_PREFIX) {
                Some(at) => {
                    push_log(&out_log, &line[..at]);
                    let _ = tx.send(line[at + REPORT_PREFIX.len()..].to_owned());
                }
                None => push_log(&out_log, &line),
            }
        }
    });
    let mut err = child.stderr.take().expect("piped stderr");
    let err_log = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = err.read(&mut buf) {
            err_log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Kid { role: role.to_owned(), child, reports, log }
}

fn push_log(log: &Mutex<String>, line: &str) {
    let mut l = log.lock().unwrap();
    l.push_str(line);
    l.push('\n');
}

impl Kid {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote besides its reports (for failure messages).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next report; fails the test if none comes within [`LONG`].
    pub fn report(&mut self) -> String {
        match self.reports.recv_timeout(LONG) {
            Ok(r) => r,
            Err(_) => {
                panic!("child {} sent no report within {LONG:?}; its output:\n{}", self.role, self.log())
            }
        }
    }

    /// The next report, which must start with `prefix`; returns the rest.
    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.report();
        match r.strip_prefix(prefix) {
            Some(rest) => rest.trim_start().to_owned(),
            None => panic!(
                "child {}: expected a {prefix:?} report, got {r:?}; output:\n{}",
                self.role,
                self.log()
            ),
        }
    }

    /// Waits for the child to exit, at most [`CHILD_DEADLINE`]; then kills it and fails.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + CHILD_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("child {} still running after {CHILD_DEADLINE:?}; output:\n{}", self.role, self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child and fails the test unless it exited with status 0.
    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(status.success(), "child {} failed ({status}); output:\n{}", self.role, self.log());
    }

    /// `SIGKILL`s the child and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
        }
    }
}

/// Child side: sends one report line to the parent.
pub fn report(line: impl Display) {
    // Straight to the descriptor, past libtest's output capture.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT_PREFIX}{line}").expect("report");
    out.flush().expect("flush report");
}

/// Child side: a parameter the parent passed in the environment.
pub fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child started without {name}"))
}

/// Polls `cond` until it holds or [`LONG`] passes; `false` on timeout.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}
