//! Scene 5, System V semaphores: workers compete for a semaphore of value 1
//! that guards a critical section (P to enter, V to leave); then a holder is
//! killed with `SIGKILL` inside the section, and its P, taken with undo
//! (`SEM_UNDO`), is reversed so the processes waiting behind it get in.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipckit::perm::Access;
use ipckit::spawn::Inherit;
use ipckit::sysv::{SemError, SemOp, SemaphoreSet};

use super::child::{describe, TourChild};
use super::narrate::{fmt_duration, heading, Actor};
use super::scratch::Scratch;
use crate::error::{fail, Context, Result};

/// Workers competing in the first part.
const WORKERS: usize = 3;
/// Times each worker enters the critical section.
const ROUNDS: usize = 2;
/// How long a worker stays inside.
const HOLD: Duration = Duration::from_millis(60);
/// Workers that wait behind the holder that gets killed.
const WAITERS: usize = 2;
/// How long anyone waits for the semaphore (or the tour for a condition) before giving up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A holder that was not killed by then gives up (the tour is gone or broken).
const HOLDER_GIVES_UP: Duration = Duration::from_secs(30);
/// The file that exists while someone is inside: a second process finding
/// it there would prove the semaphore failed to exclude.
const INSIDE: &str = "inside-critical-section";

/// Removes the set when dropped unless it was removed already.
struct RemoveOnDrop<'a> {
    name: &'a str,
    armed: bool,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = SemaphoreSet::remove_name(self.name) {
                tracing::warn!(name = self.name, error = %e, "could not remove the tour's semaphore set");
            }
        }
    }
}

/// The tour's (parent's) side of the scene.
pub fn run(number: usize, scratch: &Scratch) -> Result<()> {
    heading(number, "Semaphore: mutual exclusion, and undo when a holder is killed");
    let me = Actor::me("tour");
    let name = format!("ipckit-tour-{}-sem", me.pid);
    let set =
        SemaphoreSet::create(&name, 1, 1, 0o600).context(format!("creating the semaphore set {name:?}"))?;
    // Declared before the children: dropped after them (they are killed first).
    let mut cleanup = RemoveOnDrop { name: &name, armed: true };
    me.say(format!(
        "SemaphoreSet::create({name:?}, 1 semaphore, value 1) (semget): a lock for one process at a time; \
         P (-1) enters, V (+1) leaves"
    ));
    let marker = scratch.path().join(INSIDE);

    // Part 1: workers compete. The tour holds the semaphore while they
    // start, so that they all begin blocked in P.
    set.op_timeout(&[SemOp::p(0)], STEP_TIMEOUT).context("P on the semaphore")?;
    me.say("P: I take the semaphore myself first (value 0), so that the workers all start blocked");
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(spawn_worker(&name, &marker, ROUNDS)?);
    }
    me.say(format!(
        "spawned {WORKERS} workers (pids {}); each enters the critical section {ROUNDS} times",
        pids(&workers)
    ));
    wait_for(&mut workers, "the workers to block in P", || Ok(blocked(&set)? == WORKERS))?;
    me.say(format!("semctl(GETNCNT): {WORKERS} processes blocked in P; V: I let them compete"));
    set.op(&[SemOp::v(0)]).context("V on the semaphore")?;
    for w in &mut workers {
        w.wait_success(STEP_TIMEOUT * 2)?;
    }
    me.say(format!(
        "reaped the {WORKERS} workers: {} entries, never two inside at once; value is {} again",
        WORKERS * ROUNDS,
        value(&set)?
    ));

    // Part 2: a holder dies inside.
    let mut holder =
        TourChild::spawn("sem-holder", &[OsStr::new("sem-holder"), OsStr::new(&name)], Inherit::new())?;
    me.say(format!(
        "spawned sem-holder, pid {}: it takes the semaphore with undo and keeps it",
        holder.pid()
    ));
    wait_for(
        std::slice::from_mut(&mut holder),
        "the holder to take the semaphore",
        || Ok(value(&set)? == 0),
    )?;
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        waiters.push(spawn_worker(&name, &marker, 1)?);
    }
    me.say(format!("spawned {WAITERS} more workers (pids {}); they queue behind the holder", pids(&waiters)));
    waiters.push(holder);
    wait_for(&mut waiters, "the workers to block in P", || Ok(blocked(&set)? == WAITERS))?;
    let mut holder = waiters.pop().expect("the holder was pushed last");
    let st = set.stat().context("reading the set's status")?;
    me.say(format!(
        "semctl(GETNCNT): {WAITERS} processes blocked in P; the value is {}; the last pid to operate is {}; \
         {} process(es) hold undo adjustments",
        value(&set)?,
        st.last_pids[0],
        st.undo_records
    ));
    let status = holder.kill()?;
    let killed = Instant::now();
    me.say(format!(
        "killed sem-holder {} inside the critical section: it {}; it never did its V",
        holder.pid(),
        describe(status)
    ));
    for w in &mut waiters {
        w.wait_success(STEP_TIMEOUT * 2)?;
    }
    me.say(format!(
        "reaped both workers {} after the kill: the dead holder's P was undone (SEM_UNDO), \
         so nobody stayed blocked behind it",
        fmt_duration(killed.elapsed())
    ));
    let st = set.stat().context("reading the set's status")?;
    me.say(format!(
        "stat (semctl IPC_STAT): value {}, {} process(es) hold undo adjustments, owner uid {}, mode {:o}",
        value(&set)?,
        st.undo_records,
        st.owner.uid,
        st.owner.mode
    ));
    if value(&set)? != 1 {
        fail!("the semaphore's value is {} at the end, expected 1", value(&set)?);
    }

    set.remove().context("removing the semaphore set")?;
    cleanup.armed = false;
    match SemaphoreSet::open(&name, Access::Read) {
        Err(e) => {
            me.say(format!("SemaphoreSet::remove (semctl IPC_RMID): removed; opening it again fails: {e}"))
        }
        Ok(_) => fail!("the semaphore set {name:?} is still there after remove"),
    }
    Ok(())
}

fn spawn_worker(name: &str, marker: &Path, rounds: usize) -> Result<TourChild> {
    let rounds = rounds.to_string();
    let args = [
        OsStr::new("sem-worker"),
        OsStr::new(name),
        OsStr::new("--rounds"),
        OsStr::new(&rounds),
        OsStr::new("--marker"),
        marker.as_os_str(),
    ];
    TourChild::spawn("sem-worker", &args, Inherit::new())
}

fn pids(children: &[TourChild]) -> String {
    children.iter().map(|c| c.pid().to_string()).collect::<Vec<_>>().join(", ")
}

/// `semctl(GETNCNT)`: processes blocked waiting for semaphore 0 to grow.
fn blocked(set: &SemaphoreSet) -> Result<usize> {
    Ok(set.waiting(0).context("counting the blocked processes (GETNCNT)")?.increase)
}

fn value(set: &SemaphoreSet) -> Result<u16> {
    set.value(0).context("reading the semaphore's value")
}

/// Polls `ready` until it holds, failing after [`STEP_TIMEOUT`] or if one of `children` exits.
fn wait_for(children: &mut [TourChild], what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if ready()? {
            return Ok(());
        }
        for child in children.iter_mut() {
            if let Some(status) = child.try_status()? {
                fail!("waiting for {what}: the {} child {} {}", child.role(), child.pid(), describe(status));
            }
        }
        if Instant::now() >= deadline {
            fail!("waiting for {what}: nothing happened within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// P on semaphore 0 with undo, with the scene's timeout.
fn enter(set: &SemaphoreSet) -> Result<Duration> {
    let t = Instant::now();
    match set.op_timeout(&[SemOp::p(0).with_undo()], STEP_TIMEOUT) {
        Ok(()) => Ok(t.elapsed()),
        Err(SemError::Timeout) => fail!("P did not get the semaphore within {STEP_TIMEOUT:?}"),
        Err(e) => Err(e).context("P on the semaphore"),
    }
}

/// A worker (a child): `rounds` times P (with undo), a moment inside, V.
pub fn worker(name: &str, rounds: usize, marker: &Path) -> Result<()> {
    let me = Actor::me("sem-worker");
    let set = SemaphoreSet::open(name, Access::ReadWrite).context(format!("opening the set {name:?}"))?;
    for _ in 0..rounds {
        let waited = enter(&set)?;
        // Nobody else may be inside: the marker must not exist.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .context("entering the critical section (is someone else inside?)")?;
        me.say(format!("P: entered the critical section after waiting {}", fmt_duration(waited)));
        std::thread::sleep(HOLD);
        me.say("V: leaving the critical section");
        std::fs::remove_file(marker).context("leaving the critical section")?;
        set.op(&[SemOp::v(0).with_undo()]).context("V on the semaphore")?;
        // Give the others a chance: wakeups are not FIFO.
        std::thread::sleep(HOLD / 2);
    }
    Ok(())
}

/// The holder (a child): P with undo, then hold the semaphore until killed.
pub fn holder(name: &str) -> Result<()> {
    let me = Actor::me("sem-holder");
    let set = SemaphoreSet::open(name, Access::ReadWrite).context(format!("opening the set {name:?}"))?;
    enter(&set)?;
    me.say("P with undo: I hold the semaphore and will not let go; kill me");
    std::thread::sleep(HOLDER_GIVES_UP);
    fail!("nobody killed me within {HOLDER_GIVES_UP:?}")
}
