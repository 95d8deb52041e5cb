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
/// Spins (reads of the lock word, a `pause` each) before the first sleep
/// on a held lock: about 10-40 us, less than a futex wake-up across CPUs
/// costs, and more than the lock is held (a few hundred nanoseconds, a few
/// microseconds while a long text is copied).
const SPINS: u32 = 256;

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
            // Test, then test-and-set: a waiter that only reads leaves the
            // line (which holds the data the holder works on) with the
            // holder until the unlocking store; a CAS per spin would pull
            // it away on every iteration.
            let mut owner = self.word.load(Ordering::Relaxed);
            if owner == 0 {
                match self.word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return Ok(Taken::Clean),
                    Err(o) => owner = o,
                }
                if owner == 0 {
                    continue;
                }
            }
            // Spin first (with more than one CPU): the clock is read only
            // every 64 rounds, the holder's life only after a nap.
            if spins < SPINS && spin_pays() {
                spins += 1;
                std::hint::spin_loop();
                if spins % 64 != 0 {
                    continue;
                }
            }
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
            if spins < SPINS && spin_pays() {
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

/// Whether spinning while waiting for another process can pay at all:
/// only when more than one CPU is online (on one CPU the other process
/// cannot run while we spin). Read once per process.
pub(crate) fn spin_pays() -> bool {
    static MANY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MANY.get_or_init(|| match std::fs::read_to_string("/sys/devices/system/cpu/online") {
        Ok(s) => online_cpus(s.trim()) > 1,
        Err(_) => std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
    })
}

/// Counts the CPUs of a kernel CPU list such as `0-3,6`.
fn online_cpus(list: &str) -> usize {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()?.saturating_sub(a.parse().ok()?) + 1),
            None => part.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

/// A short, bounded, adaptive spin before sleeping, kept per process and
/// object: it spins for at most [`Spin::MAX_NS`], halves its limit each
/// time spinning did not help and grows it back when it did; at a limit of
/// zero it only probes (2 us) on every 16th wait. So two processes on
/// different CPUs hand over without a futex call, and a process that shares
/// its CPU with the one it waits for (where spinning only delays it) soon
/// stops spinning. Never spins when only one CPU is online.
#[derive(Debug)]
pub(crate) struct Spin {
    limit_ns: AtomicU32,
    waits: AtomicU32,
}

impl Spin {
    /// The longest spin: less than a cross-CPU futex wake-up costs (25-50 us).
    pub(crate) const MAX_NS: u32 = 20_000;

    pub(crate) fn new() -> Spin {
        Spin { limit_ns: AtomicU32::new(Self::MAX_NS), waits: AtomicU32::new(0) }
    }

    /// Whether spinning has paid lately (its limit is above zero): when it
    /// has not, the partner most likely shares our CPU.
    pub(crate) fn paying(&self) -> bool {
        spin_pays() && self.limit_ns.load(Ordering::Relaxed) > 0
    }

    /// Spins until `done()` says so (returns `true`) or the limit passes.
    pub(crate) fn spin(&self, mut done: impl FnMut() -> bool) -> bool {
        if !spin_pays() {
            return false;
        }
        let mut limit = self.limit_ns.load(Ordering::Relaxed);
        if limit == 0 {
            if self.waits.fetch_add(1, Ordering::Relaxed) % 16 != 0 {
                return false;
            }
            limit = 2_000;
        }
        let t0 = Instant::now();
        loop {
            for _ in 0..32 {
                if done() {
                    let grown = limit.saturating_mul(2).clamp(4_000, Self::MAX_NS);
                    self.limit_ns.store(grown, Ordering::Relaxed);
                    return true;
                }
                std::hint::spin_loop();
            }
            if t0.elapsed() >= Duration::from_nanos(u64::from(limit)) {
                break;
            }
        }
        let shrunk = if limit < 1_000 { 0 } else { limit / 2 };
        self.limit_ns.store(shrunk, Ordering::Relaxed);
        false
    }
}

/// Giving the CPU away before sleeping, kept per process and object: for a
/// partner that shares our CPU (where spinning cannot help, see [`Spin`]),
/// `sched_yield(2)` lets it run at once, and when it has done its part the
/// wait is over without either side making a futex call (a sleep and a
/// wake-up are two system calls and a timer; a yield is one cheap call).
///
/// [`Yield::wait`] yields only for a process that can run on one CPU alone
/// (one CPU online, or its affinity allows one; looked at again every 4096
/// waits): one that can run anywhere has its partner on another CPU as
/// often as not, and a yield there hands the CPU to whatever else is
/// runnable, for a whole time slice. [`Yield::now`] is for a caller with
/// other evidence that its partner shares its CPU. At most [`Yield::TRIES`] yields per wait; after
/// [`Yield::GIVE_UP`] waits in a row that yielding did not end, it only
/// tries on every 16th wait, so a process whose partner is busy elsewhere
/// soon goes straight to sleep.
#[derive(Debug)]
pub(crate) struct Yield {
    misses: AtomicU32,
    waits: AtomicU32,
    /// 0: not known yet; 1: runs on one CPU alone; 2: on several.
    one_cpu: AtomicU32,
}

impl Yield {
    /// Yields per wait.
    pub(crate) const TRIES: u32 = 2;
    /// Misses in a row after which yielding is only probed.
    pub(crate) const GIVE_UP: u32 = 4;

    pub(crate) fn new() -> Yield {
        // Not yet known to help.
        Yield { misses: AtomicU32::new(1), waits: AtomicU32::new(0), one_cpu: AtomicU32::new(0) }
    }

    /// Whether this process can only run on one CPU now.
    fn confined(&self, waits: u32) -> bool {
        let mut known = self.one_cpu.load(Ordering::Relaxed);
        if known == 0 || waits % 4096 == 0 {
            let one =
                !spin_pays() || rustix::thread::sched_getaffinity(None).is_ok_and(|set| set.count() == 1);
            known = if one { 1 } else { 2 };
            self.one_cpu.store(known, Ordering::Relaxed);
        }
        known == 1
    }

    /// Whether the last wait ended by yielding: the partner shares our CPU,
    /// so spinning before yielding would only delay it.
    pub(crate) fn helps(&self) -> bool {
        self.misses.load(Ordering::Relaxed) == 0
    }

    /// Yields until `done()` says so (returns `true`), at most [`Yield::TRIES`] times.
    pub(crate) fn wait(&self, done: impl FnMut() -> bool) -> bool {
        let waits = self.waits.load(Ordering::Relaxed);
        if !self.confined(waits) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.now(done)
    }

    /// As [`Yield::wait`], for a caller that has reason to believe its
    /// partner shares its CPU whatever CPUs it may run on (spinning has not
    /// paid lately, or yielding did last time).
    pub(crate) fn now(&self, mut done: impl FnMut() -> bool) -> bool {
        let waits = self.waits.fetch_add(1, Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        if misses >= Self::GIVE_UP && waits % 16 != 0 {
            return false;
        }
        for _ in 0..Self::TRIES {
            rustix::thread::sched_yield();
            if done() {
                self.misses.store(0, Ordering::Relaxed);
                return true;
            }
        }
        self.misses.store(misses.saturating_add(1), Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(super::online_cpus("0"), 1);
        assert_eq!(super::online_cpus("0-1"), 2);
        assert_eq!(super::online_cpus("0-3,6,8-9"), 7);
        assert_eq!(super::online_cpus(""), 0);
    }
}
