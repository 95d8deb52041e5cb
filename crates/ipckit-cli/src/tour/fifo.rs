//! Scene 2, the chapter's `mkfifo` + `cat testfifo` example: a reader opens a
//! named pipe and blocks in `open()` until a writer opens it too, then blocks
//! again in `read()` until data comes.

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use ipckit::spawn::Inherit;
use ipckit::{fifo, RecvTimeoutError};

use super::child::TourChild;
use super::narrate::{fmt_duration, heading, Actor};
use super::procfs;
use super::scratch::Scratch;
use crate::error::{fail, Context, Result};

/// How long the writer keeps the reader waiting in `open()`.
const OPEN_DELAY: Duration = Duration::from_secs(1);
/// How long the writer then keeps the reader waiting in `read()`.
const READ_DELAY: Duration = Duration::from_millis(300);
/// What travels through the FIFO.
const LINES: [&str; 2] = ["hello through the FIFO", "bye"];
/// How long the reader waits for each message before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's (parent's) side of the scene.
pub fn run(number: usize, scratch: &Scratch) -> Result<()> {
    heading(number, "Named pipe (FIFO): the reader blocks until a writer comes");
    let me = Actor::me("tour");
    let path = scratch.path().join("testfifo");
    fifo::create(&path, 0o600).context(format!("creating the FIFO {}", path.display()))?;
    let meta = std::fs::metadata(&path).context("looking at the FIFO")?;
    me.say(format!(
        "fifo::create (mkfifo(3)): {} is {} (as `ls -l` shows it): a name for a pipe, \
         no data is ever stored in the file system",
        path.display(),
        ls_mode(meta.file_type().is_fifo(), meta.permissions().mode())
    ));

    let mut child =
        TourChild::spawn("fifo-reader", &[OsStr::new("fifo-reader"), path.as_os_str()], Inherit::new())?;
    me.say(format!(
        "spawned fifo-reader, pid {}, with nothing but the FIFO's name; I wait {} before opening",
        child.pid(),
        fmt_duration(OPEN_DELAY)
    ));
    std::thread::sleep(OPEN_DELAY);
    if let Some(status) = child.try_status()? {
        fail!("the fifo-reader ended early: {}", super::child::describe(status));
    }
    me.say(format!(
        "the reader is blocked in open(): the kernel says pid {}: {}",
        child.pid(),
        procfs::describe_wait(child.pid())
    ));

    let mut tx =
        fifo::open_sender_timeout(&path, Duration::from_secs(5)).context("opening the FIFO to write")?;
    me.say("fifo::open_sender: opened the FIFO for writing; that completes the reader's open() too");
    std::thread::sleep(READ_DELAY);
    me.say(format!(
        "{} later, no data yet: the reader is blocked waiting for data; the kernel says: {}",
        fmt_duration(READ_DELAY),
        procfs::describe_wait(child.pid())
    ));
    for line in LINES {
        tx.send_timeout(line, Duration::from_secs(2)).context("writing to the FIFO")?;
        me.say(format!("write: {line:?}"));
    }
    drop(tx);
    me.say("closed my end: the reader will see end-of-file");

    child.wait_success(READ_TIMEOUT * 2)?;
    me.say(format!("reaped fifo-reader {}: it exited with status 0", child.pid()));
    fifo::remove(&path).context("removing the FIFO")?;
    me.say(format!("fifo::remove: {} is gone", path.display()));
    Ok(())
}

/// The reader's (child's) side: a blocking open, then reads until end-of-file.
pub fn reader(path: &Path) -> Result<()> {
    let me = Actor::me("fifo-reader");
    me.say(format!(
        "fifo::open_receiver({}): open(2) for reading blocks until a writer opens it",
        path.display()
    ));
    let t0 = Instant::now();
    // A plain blocking open, as `cat testfifo` does; the tour kills this
    // process if no writer ever comes.
    let mut rx = fifo::open_receiver(path).context("opening the FIFO to read")?;
    me.say(format!(
        "open() returned: I was blocked in open() for {} until a writer came",
        fmt_duration(t0.elapsed())
    ));

    let mut first = true;
    loop {
        let t1 = Instant::now();
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(msg) => {
                let text = String::from_utf8_lossy(msg.bytes()).into_owned();
                if first {
                    let waited = fmt_duration(t1.elapsed());
                    me.say(format!("blocked waiting for data for {waited}, then read: {text:?}"));
                    first = false;
                } else {
                    me.say(format!("read: {text:?}"));
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => fail!("nothing arrived within {READ_TIMEOUT:?}"),
            Err(e) => return Err(e).context("reading the FIFO"),
        }
    }
    me.say("end-of-file: the writer closed the FIFO; exiting");
    Ok(())
}

/// `prw-------`: the file type and permission bits as `ls -l` prints them.
fn ls_mode(is_fifo: bool, mode: u32) -> String {
    let mut s = String::from(if is_fifo { "p" } else { "?" });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
