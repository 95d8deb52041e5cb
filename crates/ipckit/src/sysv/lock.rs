//! A lock in shared memory that survives its holder's death.
//!
//! The lock word holds the holder's pid (0: free). A process that finds the
//! lock held by a pid that no longer exists (or is a zombie) takes it over
//! and is told so, so it can repair whatever the dead holder left half done.
//! Waiters sleep on the lock word (futex) for at most 10 ms at a time, then
//! look at the holder again; unlocking wakes one sleeper only if some
//! process announced it was sleeping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::Fault;
use crate::sys::{self, Deadline};

const NAP: Duration = Duration::from_millis(10);
/// Spins before the first sleep on a held lock.
const SPINS: u32 = 100;

/// A robust lock: the lock word and its waiter count, both in shared memory.
pub(crate) struct RobustLock<'a> {
    pub(crate) word: &'a AtomicU32,
    pub(crate) waiters: &'a AtomicU32,
}

/// How the lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// From a live holder, or free: the protected data is consistent.
    Clean,
    /// From a holder that died holding it: the data may need repair.
    FromTheDead,
}

impl RobustLock<'_> {
    /// Takes the lock, waiting until `deadline`.
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<Taken, Fault> {
        self.lock_as(sys::pid(), deadline)
    }

    /// As [`RobustLock::lock`], for a caller that already knows its pid
    /// (`me`), so the uncontended path makes no system call at all.
    pub(crate) fn lock_as(&self, me: u32, deadline: Deadline) -> Result<Taken, Fault> {
        let mut spins = 0u32;
        // The holder seen, and since when: only one that has held the lock
        // for a whole nap is checked for life (a check costs ~10 us).
        let mut seen: Option<(u32, Instant)> = None;
        loop {
            let owner = match self.word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(Taken::Clean),
                Err(owner) => owner,
            };
            match seen {
                Some((o, since)) if o == owner => {
                    if owner != me && since.elapsed() >= NAP && !sys::process_alive(owner) {
                        if self.word.compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
                        {
                            tracing::warn!(dead = owner, "took over a lock whose holder died; repairing");
                            return Ok(Taken::FromTheDead);
                        }
                        continue;
                    }
                }
                _ => seen = Some((owner, Instant::now())),
            }
            // Locks are held for a few hundred nanoseconds: spin a little
            // before sleeping (pointless on one CPU, so keep it short).
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if deadline.expired() {
                return Err(Fault::Timeout);
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if self.word.load(Ordering::SeqCst) == owner {
                let mut nap = NAP;
                if let Deadline::At(at) = deadline {
                    nap = nap.min(at.saturating_duration_since(Instant::now()));
                }
                sys::futex_wait(self.word, owner, Some(nap.max(Duration::from_micros(1))));
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Releases the lock (the caller holds it).
    pub(crate) fn unlock(&self) {
        self.word.store(0, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.word, 1);
        }
    }
}

/// Seconds since the Unix epoch, for the `msgctl`-style timestamps.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
