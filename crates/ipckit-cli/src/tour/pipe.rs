//! Scene 1, the chapter's `pipe()` + `fork()` example: the parent writes ten
//! messages into an anonymous pipe, the child reads them until end-of-file.
//!
//! Unlike the C example, the child is a fresh program (`exec`), not a `fork`
//! copy: it gets the pipe's read end through [`ipckit::spawn::Inherit`], and
//! nothing else. That matters: if the write end leaked into the child, the
//! child would hold a writer itself and never see end-of-file.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use ipckit::spawn::{self, Inherit};
use ipckit::{pipe, Capacity, RecvTimeoutError};

use super::child::TourChild;
use super::narrate::{fmt_duration, heading, Actor};
use super::procfs::{self, OpenFd};
use crate::error::{fail, Context, Result};

/// The name the read end is handed to the child under.
const HANDLE: &str = "messages";
/// How many messages the parent writes (as in the chapter).
const MESSAGES: usize = 10;
/// How long the reader waits for any one message before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The parent's side of the scene.
pub fn run(number: usize) -> Result<()> {
    heading(number, "Anonymous pipe: a parent writes, its child reads until end-of-file");
    let me = Actor::me("tour");
    let (mut tx, rx) = pipe::channel(Capacity::Kernel).context("creating the pipe")?;
    me.say("pipe::channel(Capacity::Kernel): pipe(2) gave me both ends of a new pipe");
    let fds = procfs::own_fds().context("listing my descriptors")?;
    me.say(format!("my descriptors now: {}", summarize(&fds)));

    let mut kit = Inherit::new();
    kit.pass(HANDLE, rx).context("preparing the read end for the child")?;
    let expect = MESSAGES.to_string();
    let args = [OsStr::new("pipe-reader"), OsStr::new("--expect"), OsStr::new(&expect)];
    let mut child = TourChild::spawn("pipe-reader", &args, kit)?;
    me.say(format!(
        "spawned pipe-reader, pid {}, handing it the read end as {HANDLE:?} (spawn::Inherit); \
         every other descriptor of mine, the write end included, is close-on-exec for it",
        child.pid()
    ));
    me.say("my own copy of the read end is closed now: the child holds the only one");

    for i in 0..MESSAGES {
        let text = format!("the {i} message.");
        tx.send_timeout(text.as_str(), Duration::from_secs(2)).context("writing to the pipe")?;
        me.say(format!("write: {text:?}"));
    }
    me.say("the messages wait in the kernel's pipe buffer: writing did not wait for the reader");
    drop(tx);
    me.say("dropped my Sender: no process holds a write end now, so the reader gets end-of-file");

    let lived = child.wait_success(READ_TIMEOUT * 2)?;
    me.say(format!(
        "reaped pipe-reader {}: it exited with status 0, {} after spawn",
        child.pid(),
        fmt_duration(lived)
    ));
    Ok(())
}

/// The child's side: take the inherited read end, show the descriptors held,
/// read until end-of-file.
pub fn reader(expect: usize) -> Result<()> {
    let me = Actor::me("pipe-reader");
    let mut rx: ipckit::Receiver = spawn::inherited(HANDLE)
        .context("pipe-reader is started by `ipckit tour`, which hands it the pipe")?;
    me.say(format!("took the read end my parent passed as {HANDLE:?} (spawn::inherited)"));
    report_fds(&me)?;

    let started = Instant::now();
    let mut got = 0;
    loop {
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(msg) => {
                got += 1;
                me.say(format!("read: {:?}", String::from_utf8_lossy(msg.bytes())));
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => fail!("no message and no end-of-file within {READ_TIMEOUT:?}"),
            Err(e) => return Err(e).context("reading the pipe"),
        }
    }
    me.say(format!(
        "read {got} messages, then end-of-file (RecvError::Disconnected): every write end is closed; \
         {} of reading",
        fmt_duration(started.elapsed())
    ));
    if got != expect {
        fail!("expected {expect} messages before end-of-file, got {got}");
    }
    Ok(())
}

/// Prints this process's descriptors and checks that besides stdio it holds
/// exactly one: the inherited pipe's read end.
fn report_fds(me: &Actor) -> Result<()> {
    let fds = procfs::own_fds().context("listing my descriptors in /proc/self/fd")?;
    me.say("my descriptors, from /proc/self/fd:");
    for f in &fds {
        let role = match f.fd {
            0 => "stdin".to_owned(),
            1 => "stdout, shared with the tour".to_owned(),
            2 => "stderr, shared with the tour".to_owned(),
            _ if f.transient => "read_dir's own handle on /proc/self/fd: open only while listing".to_owned(),
            _ if f.target.starts_with("pipe:") && f.access == Some("read") => {
                format!("the pipe's read end, inherited as {HANDLE:?}")
            }
            _ => "NOT handed to me: leaked".to_owned(),
        };
        me.say(format!("  fd {} -> {}: {role}", f.fd, f.target));
    }
    let extra: Vec<&OpenFd> = fds.iter().filter(|f| f.fd > 2 && !f.transient).collect();
    match extra.as_slice() {
        [only] if only.target.starts_with("pipe:") => me.say(
            "so I hold exactly stdin, stdout, stderr and the pipe's read end (plus the listing's \
             transient one): the write end did not leak into me",
        ),
        _ => me.say(format!(
            "besides stdio I hold {} descriptors, expected just the read end: something leaked",
            extra.len()
        )),
    }
    Ok(())
}

/// `0 1 2 (stdio), 3 -> pipe:[123] (read), ...` for a descriptor list.
fn summarize(fds: &[OpenFd]) -> String {
    let mut parts = vec!["0 1 2 (stdio)".to_owned()];
    for f in fds.iter().filter(|f| f.fd > 2) {
        if f.transient {
            parts.push(format!("{} (this listing's own, transient)", f.fd));
        } else {
            let access = f.access.map(|a| format!(" ({a})")).unwrap_or_default();
            parts.push(format!("{} -> {}{access}", f.fd, f.target));
        }
    }
    parts.join(", ")
}
