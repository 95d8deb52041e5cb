//! Scene 7, the chapter's signals: the tour handles SIGIO and SIGUSR1 (the
//! handlers run on a normal thread; the real signal handler only records
//! the delivery), another process sends them and the kernel reports who
//! did; then a parent stops all its children, one process group, with one
//! signal.

use std::ffi::OsStr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::signal::{self, SignalInfo, SIGIO, SIGTERM, SIGUSR1};
use ipckit::spawn::Inherit;

use super::child::{describe, TourChild};
use super::narrate::{fmt_duration, heading, Actor};
use super::scratch::Scratch;
use crate::error::{fail, Context, Result};

/// How long the tour waits for a signal or a child.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A group member that gets no signal gives up after this long.
const MEMBER_PATIENCE: Duration = Duration::from_secs(20);
/// How many children share the process group.
const MEMBERS: usize = 3;

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGIO => "SIGIO",
        SIGUSR1 => "SIGUSR1",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The tour's side of the scene.
pub fn run(number: usize, scratch: &Scratch) -> Result<()> {
    heading(number, "Signals: handlers for SIGIO and SIGUSR1; one signal stops a process group");
    let me = Actor::me("tour");

    let (tx, rx) = mpsc::channel::<SignalInfo>();
    let handler = signal::handle(&[SIGIO, SIGUSR1], move |info| {
        // A normal thread: printing and sending are fine here.
        Actor::me("tour").say(format!(
            "handler (on thread {}): {} arrived",
            signal::thread_id(),
            signal_name(info.signal)
        ));
        let _ = tx.send(info);
    })
    .context("registering handlers for SIGIO and SIGUSR1")?;
    me.say(format!(
        "registered handlers for SIGIO and SIGUSR1 (thread {}); a normal thread runs the closures: it \
         waits in sigtimedwait, and when the kernel gives a signal to another thread the real signal \
         handler there only writes a record to a pipe and wakes it (async-signal-safe)",
        signal::thread_id()
    ));

    let mut sender = TourChild::spawn(
        "signal-sender",
        &[OsStr::new("signal-sender"), OsStr::new(&std::process::id().to_string())],
        Inherit::new(),
    )?;
    me.say(format!("spawned signal-sender, pid {}", sender.pid()));
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while seen.len() < 2 {
        let info = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(info) => info,
            Err(_) => fail!("the signals did not arrive within {TIMEOUT:?} (got {})", seen.len()),
        };
        let who = if info.pid == sender.pid() { ": the signal-sender child" } else { "" };
        me.say(format!(
            "{} (signal {}) reported: sent by pid {}{who}, uid {}, si_code {} (the kernel's siginfo, \
             not the sender's claim)",
            signal_name(info.signal),
            info.signal,
            info.pid,
            info.uid,
            info.code
        ));
        if info.pid != sender.pid() {
            fail!("{} came from pid {}, expected {}", signal_name(info.signal), info.pid, sender.pid());
        }
        seen.push(info.signal);
    }
    sender.wait_success(TIMEOUT)?;
    drop(handler);
    me.say("handlers dropped: SIGIO and SIGUSR1 have their previous dispositions back");

    // Three children in one new process group, stopped by one signal.
    let mut members: Vec<TourChild> = Vec::new();
    let mut pgid = 0;
    for i in 0..MEMBERS {
        let ready = ready_file(scratch, i);
        let group = pgid;
        let child = TourChild::spawn_with(
            "group-member",
            &[OsStr::new("group-member"), ready.as_os_str()],
            Inherit::new(),
            move |cmd| {
                // The first child leads a new group; the others join it.
                cmd.process_group(i32::try_from(group).unwrap_or(0));
            },
        )?;
        if i == 0 {
            pgid = child.pid();
        }
        members.push(child);
    }
    me.say(format!(
        "spawned {MEMBERS} group-member children ({}) in a new process group {pgid}",
        members.iter().map(|c| c.pid().to_string()).collect::<Vec<_>>().join(", ")
    ));
    let deadline = Instant::now() + TIMEOUT;
    while !(0..MEMBERS).all(|i| ready_file(scratch, i).exists()) {
        for m in &mut members {
            if let Some(status) = m.try_status()? {
                fail!("group-member {} {} before it was ready", m.pid(), describe(status));
            }
        }
        if Instant::now() >= deadline {
            fail!("the group members were not ready within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    me.say(format!(
        "all {MEMBERS} are waiting; send_group({pgid}, SIGTERM): kill(-{pgid}, SIGTERM), one call"
    ));
    let t = Instant::now();
    signal::send_group(pgid, SIGTERM).context(format!("signalling process group {pgid}"))?;
    for m in &mut members {
        let status = m.wait_status(TIMEOUT)?;
        me.say(format!(
            "group-member {} {} ({} after the signal); reaped",
            m.pid(),
            describe(status),
            fmt_duration(t.elapsed())
        ));
        if status.signal() != Some(SIGTERM) {
            fail!("group-member {} {}, expected death by SIGTERM", m.pid(), describe(status));
        }
    }
    me.say(format!(
        "one signal to the group stopped all {MEMBERS} children; I, in another group, was not hit"
    ));
    Ok(())
}

fn ready_file(scratch: &Scratch, i: usize) -> PathBuf {
    scratch.path().join(format!("group-member-{i}.ready"))
}

/// The sender (a child): SIGIO, then SIGUSR1, to process `to`.
pub fn sender(to: u32) -> Result<()> {
    let me = Actor::me("signal-sender");
    for sig in [SIGIO, SIGUSR1] {
        me.say(format!("kill({to}, {})", signal_name(sig)));
        signal::send(to, sig).context(format!("sending {} to {to}", signal_name(sig)))?;
        // Distinct signals do not coalesce, but a pause keeps the story in order.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A group member (a child): says which group it is in, marks itself ready,
/// and waits for the signal (the default action for SIGTERM: terminate).
pub fn member(ready: &Path) -> Result<()> {
    let me = Actor::me("group-member");
    let pgid = rustix::process::getpgrp().as_raw_nonzero().get();
    me.say(format!("I am in process group {pgid}; waiting (SIGTERM's default action: terminate)"));
    std::fs::write(ready, b"").context("marking myself ready")?;
    std::thread::sleep(MEMBER_PATIENCE);
    fail!("no signal came within {MEMBER_PATIENCE:?}")
}
