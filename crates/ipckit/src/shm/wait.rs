//! How a side of a shared-memory structure waits for the other: the
//! chapter's "message check mode", shared by [`rpc`](super::rpc) and
//! [`channel`](super::channel).
//!
//! Two patterns, both with the same rule: the fast path (nobody asleep)
//! makes no system call. A side that goes to sleep first announces itself
//! in a waiter count, then re-checks its condition, then sleeps on a futex
//! word; a side that changes the condition does so, then (after a `SeqCst`
//! fence, the Dekker pattern) reads the waiter count and makes a
//! `futex(FUTEX_WAKE)` only when it is non-zero. Every sleep is at most
//! [`LIVENESS_CHECK`] long, so a sleeper notices a dead peer in bounded time.
//!
//! - [`wait_until`]/[`publish`]: one status word that holds the condition
//!   itself (the two-slot RPC's sequence numbers).
//! - [`Event`]/[`wait_event`]: a condition spread over several words (a
//!   ring's head, tail and slot sequences); the futex word is a counter the
//!   notifier bumps.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::Fault;
use crate::sys::{self, Deadline};

/// How often a waiting side checks that the other side is still alive.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// How a side waits for the other's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Busy-poll the status word: the lowest latency, one CPU kept busy.
    Spin,
    /// Poll this many times, then sleep on the word (futex).
    SpinThenBlock(u32),
    /// Sleep on the word (futex) at once: no CPU used while waiting.
    Block,
}

impl Default for WaitMode {
    fn default() -> Self {
        WaitMode::SpinThenBlock(200)
    }
}

impl WaitMode {
    fn spins(self) -> u32 {
        match self {
            WaitMode::Spin => u32::MAX,
            WaitMode::SpinThenBlock(n) => n,
            WaitMode::Block => 0,
        }
    }
}

/// The longest nap before `deadline` (and never longer than [`LIVENESS_CHECK`]).
fn nap(deadline: Deadline) -> Duration {
    match deadline {
        Deadline::Now => Duration::ZERO,
        Deadline::Never => LIVENESS_CHECK,
        Deadline::At(at) => LIVENESS_CHECK.min(at.saturating_duration_since(Instant::now())),
    }
}

/// Stores `value` into the status word and wakes sleepers, if any: with no
/// sleeper this is one store and one load, no system call.
#[inline]
pub(crate) fn publish(state: &AtomicU32, waiters: &AtomicU32, value: u32) {
    state.store(value, Ordering::SeqCst);
    if waiters.load(Ordering::SeqCst) > 0 {
        sys::futex_wake(state, u32::MAX);
    }
}

/// A deadline that may still be a timeout not yet started: the clock is
/// read the first time the deadline matters (a wait that is over at once
/// reads no clock), so a timeout counts from a few microseconds late.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due {
    /// A deadline already fixed.
    At(Deadline),
    /// This long from when it is first needed.
    After(Duration),
}

impl Due {
    /// `timeout` (`None`: never).
    pub(crate) fn after(timeout: Option<Duration>) -> Due {
        match timeout {
            Some(t) => Due::After(t),
            None => Due::At(Deadline::Never),
        }
    }

    pub(crate) fn resolve(&mut self) -> Deadline {
        match *self {
            Due::At(d) => d,
            Due::After(t) => {
                let d = if t.is_zero() { Deadline::Now } else { Deadline::after(t) };
                *self = Due::At(d);
                d
            }
        }
    }
}

/// Waits until `done(state)`, as `mode` says, until `deadline`, failing
/// with `Disconnected` once `peer_alive` says the other side is gone;
/// returns the value that satisfied `done`.
#[inline]
pub(crate) fn wait_until(
    state: &AtomicU32,
    waiters: &AtomicU32,
    mode: WaitMode,
    due: &mut Due,
    mut done: impl FnMut(u32) -> bool,
    mut peer_alive: impl FnMut() -> bool,
) -> Result<u32, Fault> {
    // Neither the fast path (the word is already there) nor the first 256
    // spins read the clock.
    let seen = state.load(Ordering::Acquire);
    if done(seen) {
        return Ok(seen);
    }
    if matches!(*due, Due::At(Deadline::Now)) {
        return Err(Fault::Timeout);
    }
    let spins = mode.spins();
    let mut next_check: Option<Instant> = None;
    let mut spun = 0u32;
    loop {
        let seen = state.load(Ordering::Acquire);
        if done(seen) {
            return Ok(seen);
        }
        if spun < spins {
            spun += 1;
            std::hint::spin_loop();
            if spun % 256 != 0 {
                continue;
            }
        } else {
            // Sleep on the word; re-check after announcing ourselves so a
            // publish between the check and the sleep cannot be missed.
            waiters.fetch_add(1, Ordering::SeqCst);
            if state.load(Ordering::SeqCst) == seen {
                let nap = nap(due.resolve());
                if !nap.is_zero() {
                    sys::futex_wait(state, seen, Some(nap));
                }
            }
            waiters.fetch_sub(1, Ordering::SeqCst);
            let now = state.load(Ordering::Acquire);
            if done(now) {
                return Ok(now);
            }
        }
        let now = Instant::now();
        if due.resolve().expired() {
            return Err(Fault::Timeout);
        }
        let check_at = *next_check.get_or_insert(now + LIVENESS_CHECK);
        if now >= check_at {
            if !peer_alive() {
                return Err(Fault::Disconnected);
            }
            next_check = Some(now + LIVENESS_CHECK);
        }
    }
}

/// As [`publish`], for a status word whose reader never sleeps
/// (`peer_sleepy` false, as read from the peer's flag before the message
/// was written): then a plain Release store, no fence and no look at the
/// waiter count.
#[inline]
pub(crate) fn publish_to(state: &AtomicU32, waiters: &AtomicU32, peer_sleepy: bool, value: u32) {
    if !peer_sleepy {
        state.store(value, Ordering::Release);
    } else {
        publish(state, waiters, value);
    }
}

/// A condition another side can wait for: a futex word the notifier bumps,
/// the number of sleepers, and the number of waiting parties that may
/// sleep at all (not [`WaitMode::Spin`]).
#[derive(Clone, Copy)]
pub(crate) struct Event<'a> {
    pub(crate) word: &'a AtomicU32,
    pub(crate) waiters: &'a AtomicU32,
    pub(crate) sleepy: &'a AtomicU32,
}

impl Event<'_> {
    /// Wakes every sleeper, if there is any. Call after making the
    /// condition true. When no party of the waiting side may sleep (all
    /// are [`WaitMode::Spin`]) this is one load of a read-mostly word;
    /// otherwise a fence and a load, and a system call only when somebody
    /// sleeps.
    ///
    /// The `sleepy` count is read without a fence: a party that switches
    /// from `Spin` to a sleeping mode announces itself first, but a notify
    /// racing with that switch may miss it, and that party then sees the
    /// condition at the end of its first nap ([`LIVENESS_CHECK`]) at worst.
    pub(crate) fn notify(&self) {
        if self.sleepy.load(Ordering::Relaxed) == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.word.fetch_add(1, Ordering::Release);
            sys::futex_wake(self.word, u32::MAX);
        }
    }

    /// Wakes every sleeper unconditionally (used when a peer leaves, so
    /// sleepers re-check at once whether anybody is left).
    pub(crate) fn notify_all(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.word, u32::MAX);
    }
}

/// What one attempt of a [`wait_event`] loop found.
pub(crate) enum Attempt<T> {
    /// Done (successfully or not).
    Ready(Result<T, Fault>),
    /// Not possible until the other side acts (and notifies `event`).
    Wait,
    /// Another party of the same side is in the middle of the same step
    /// (it will finish in a moment, and does not notify): retry soon.
    Busy,
}

/// Calls `attempt` until it is ready, waiting between attempts as `mode`
/// says: spinning, then sleeping on `event`. `attempt(true)` is a periodic
/// check (at most every [`LIVENESS_CHECK`], but at once on the first
/// failure when `*last_check` is old): the place for liveness checks and
/// repairs that cost system calls.
pub(crate) fn wait_event<T>(
    event: Event<'_>,
    mode: WaitMode,
    deadline: Deadline,
    last_check: &mut Instant,
    mut attempt: impl FnMut(bool) -> Attempt<T>,
) -> Result<T, Fault> {
    let spins = mode.spins();
    let mut spun = 0u32;
    let mut busy = 0u32;
    let mut failed = 0u32;
    let mut check = false;
    let mut checked = false;
    loop {
        let state = match attempt(check) {
            Attempt::Ready(r) => return r,
            other => other,
        };
        check = false;
        failed = failed.wrapping_add(1);
        // The clock is read on the `try_` path, before sleeping, and every
        // 64 failed attempts: a spinning wait stays a tight loop.
        let sleeping_next = matches!(state, Attempt::Wait) && spun >= spins;
        if matches!(deadline, Deadline::Now) || sleeping_next || failed % 64 == 0 {
            let now = Instant::now();
            let expired = deadline.expired();
            // One periodic check even on the `try_` path; after that an
            // expired deadline wins, so a wait that stays busy (a word a
            // hostile peer forged) cannot skip its deadline by landing on a
            // liveness check every time (64 slow attempts can take longer
            // than LIVENESS_CHECK on a loaded machine).
            if now.duration_since(*last_check) >= LIVENESS_CHECK && !(expired && checked) {
                *last_check = now;
                check = true;
                checked = true;
                continue;
            }
            if expired {
                return Err(Fault::Timeout);
            }
        }
        if matches!(state, Attempt::Busy) {
            busy += 1;
            if busy % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        if spun < spins {
            spun += 1;
            std::hint::spin_loop();
            continue;
        }
        // Announce, re-check, sleep: a notify after the re-check sees the
        // waiter count (SeqCst fences on both sides) and bumps the word,
        // so the futex sleep returns at once.
        event.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let seen = event.word.load(Ordering::Acquire);
        let again = attempt(false);
        if let Attempt::Wait = again {
            let nap = nap(deadline);
            if !nap.is_zero() {
                sys::futex_wait(event.word, seen, Some(nap));
            }
        }
        event.waiters.fetch_sub(1, Ordering::SeqCst);
        if let Attempt::Ready(r) = again {
            return r;
        }
    }
}
