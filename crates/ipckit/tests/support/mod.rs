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

/// Writes `writes` (offset, bytes) over `chan`'s segment, 200 us apart, while
/// a sender thread sends `make(seq)` and a receiver thread receives, each call
/// with a 5 ms timeout: every call must return (an error or a message of at
/// most `max_len` bytes); nothing may panic or hang.
pub fn scribble_under_traffic(
    chan: &ipckit::shm::channel::ShmChannel,
    writes: &[(usize, Vec<u8>)],
    max_len: usize,
    make: impl Fn(u32) -> Vec<u8> + Send + 'static,
) {
    use ipckit::shm::rpc::WaitMode;
    use ipckit::shm::Offset;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tx = chan.sender().unwrap().with_wait(WaitMode::SpinThenBlock(50));
    let mut rx = chan.receiver().unwrap().with_wait(WaitMode::Block);
    let st = stop.clone();
    let p = thread::spawn(move || {
        let mut s = 0;
        while !st.load(Ordering::Relaxed) {
            let _ = tx.send_timeout(make(s), Duration::from_millis(5));
            s = s.wrapping_add(1);
        }
    });
    let st = stop.clone();
    let c = thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(5)) {
                assert!(m.bytes().len() <= max_len);
            }
        }
    });
    let seg = chan.segment().clone();
    for (off, bytes) in writes {
        let _ = seg.write(Offset::new(*off), bytes);
        thread::sleep(Duration::from_micros(200));
    }
    thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    p.join().unwrap();
    c.join().unwrap();
}
