//! What the cross-process test binaries share: unique object names, a guard
//! that removes a shared-memory object, and a child process that is killed
//! and reaped however the test ends.

#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name no other test (in this process or another) uses: `prefix-pid-tag-n`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Removes a shared-memory object when the test ends, however it ends.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ipckit::shm::Segment::remove(&self.0);
    }
}

/// This test binary re-run as a child: only `child_main` runs, with
/// `var=value` telling it its role.
pub fn role_command(var: &str, value: impl Into<String>) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_main", "--nocapture", "--test-threads=1"]).env(var, value.into());
    c
}

/// A child process, killed and reaped on drop.
pub struct Kid(pub Child);

impl Kid {
    /// Waits for the child to exit, failing the test after `limit`.
    pub fn status_within(&mut self, limit: Duration) -> ExitStatus {
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < until, "child did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// As [`Kid::status_within`], the exit code (-1 when killed by a signal).
    pub fn code_within(&mut self, limit: Duration) -> i32 {
        self.status_within(limit).code().unwrap_or(-1)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
