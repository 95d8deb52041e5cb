//! The lock-free core of the shared-memory channels: a bounded MPMC ring
//! (Dmitry Vyukov's sequence-numbered slots) made robust against processes
//! that die in the middle of an operation, and against corrupted memory.
//!
//! Not a stable API: this module is public (and hidden from the docs) only
//! so that the `loom` model in `tests/shm_channel.rs` can run this exact code
//! over loom's atomics. The algorithm is written once, generic over
//! [`RingMem`]; [`channel`](super::channel) implements it over a segment.
//!
//! # The algorithm
//!
//! `N` slots (a power of two); counters `head` and `tail` only grow. Slot
//! `i` has a sequence word `seq`, an ownership word `claim` (a pid, or 0),
//! a length and the data. For position `pos` (slot `pos % N`):
//!
//! - `seq == pos`: free for the producer of `pos` (or claimed by it and
//!   not yet published, once `tail > pos`);
//! - `seq == pos + 1`: published, for the consumer of `pos`;
//! - `seq == pos + N`: released, free for the producer of `pos + N`.
//!
//! **MPMC.** A producer reads `tail = pos`, checks `seq == pos`, takes the
//! slot's `claim` word (CAS `0 -> pid`: its pid is recorded *before* it
//! claims the position), re-checks `seq` and `tail` under the claim, claims
//! the position (CAS `tail: pos -> pos+1`), writes the data and the length,
//! publishes `seq = pos + 1` (Release) and releases `claim`. A consumer
//! reads `head = pos`, checks `seq == pos + 1`, takes `claim`, re-checks,
//! copies the data out, claims the position (CAS `head`), releases the slot
//! (`seq = pos + N`, Release) and `claim`. `head` and `tail` move from
//! `pos` only under the claim of slot `pos % N`, so the claim word is also
//! what tells a survivor who was in the middle of what.
//!
//! **SPSC** ([`spsc_push`]/[`spsc_pop`]): a Lamport ring whose "not
//! empty" signal lives in the slot (as in FastForward): no claim words and
//! no CAS, and nobody writes a slot back. The single producer writes the
//! data and the length, publishes `seq = pos + 1` (Release; the same cache
//! line as the length and the first 48 bytes), then stores `tail`. The
//! single consumer waits for `seq == pos + 1` in its next slot, reads the
//! message, then stores `head` (Release). Each end keeps a [`Cursor`]: the
//! producer reads `head` only when its cached copy says the ring is full,
//! and the consumer never reads `tail` on its fast path, so the counters'
//! cache lines stay with their writers and a small message moves one cache
//! line. (`tail` is for [`Cursor::producer`] after a takeover, for
//! `len()`, and for the consumer's periodic cross-check.)
//!
//! # What a death leaves behind, and who repairs it
//!
//! Repairs run only on the slow path (`repair == true`, a periodic check
//! of a waiting side) and only after taking over the claim word from a
//! process that [`RingMem::alive`] says is dead, then re-checking the slot.
//!
//! | died while | state | repaired by | message |
//! |---|---|---|---|
//! | producer holding `claim`, before `tail` moved | claim = dead pid | next producer takes the claim over | never sent |
//! | producer after `tail` moved, before publishing | `seq == pos`, `tail > pos` | consumer: skips the slot (a tombstone) | never sent (`send` had not returned) |
//! | producer after publishing, before releasing `claim` | published | consumer takes the claim over and reads it | delivered once |
//! | consumer before `head` moved | published, claim = dead pid | next consumer takes over, reads it | delivered once |
//! | consumer between moving `head` and releasing `seq` (two instructions) | `seq == pos + 1 - N`-style, `head > pos` | producer frees the slot | **lost** (it was taken, never returned) |
//! | SPSC producer before publishing `seq` | `tail == pos`, slot not published | the next producer overwrites the slot | never sent |
//! | SPSC producer between `seq` and `tail` | `tail == pos`, `seq == pos + 1` | the next producer starts at `pos + 1` | delivered once (send had not returned) |
//! | SPSC consumer before storing `head` | `head == pos` | the next consumer reads it again | delivered once (recv had not returned) |
//!
//! In the SPSC ring one store commits each operation (`seq` for the
//! producer, `head` for the consumer), so a death leaves nothing
//! half-done to repair: the next end to attach starts from the counters.
//!
//! A pid that is reused by a new process before the repair makes the dead
//! holder look alive: the slot then waits until that process exits.
//!
//! # Corruption
//!
//! Every value read is checked against what the algorithm can produce at
//! that moment (re-reading the counter to rule out a stale view); anything
//! else is [`Push::Corrupt`]/[`Pop::Corrupt`]. Lengths are checked against
//! the maximum. Each call gives up after a bounded number of retries
//! ([`Push::Busy`]), so a hostile writer changing words under it cannot
//! keep it looping.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Retries of one call before it reports [`Push::Busy`] / [`Pop::Busy`].
const MAX_RETRIES: u32 = 10_000;

/// A 64-bit atomic word (std's, loom's, or one in shared memory).
pub trait Word64 {
    /// As [`AtomicU64::load`].
    fn load(&self, o: Ordering) -> u64;
    /// As [`AtomicU64::store`].
    fn store(&self, v: u64, o: Ordering);
    /// As [`AtomicU64::compare_exchange`].
    ///
    /// # Errors
    ///
    /// The current value, when it is not `cur`.
    fn compare_exchange(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64>;
}

/// A 32-bit atomic word.
pub trait Word32 {
    /// As [`AtomicU32::load`].
    fn load(&self, o: Ordering) -> u32;
    /// As [`AtomicU32::store`].
    fn store(&self, v: u32, o: Ordering);
    /// As [`AtomicU32::compare_exchange`].
    ///
    /// # Errors
    ///
    /// The current value, when it is not `cur`.
    fn compare_exchange(&self, cur: u32, new: u32, s: Ordering, f: Ordering) -> Result<u32, u32>;
}

impl Word64 for AtomicU64 {
    fn load(&self, o: Ordering) -> u64 {
        AtomicU64::load(self, o)
    }
    fn store(&self, v: u64, o: Ordering) {
        AtomicU64::store(self, v, o)
    }
    fn compare_exchange(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, cur, new, s, f)
    }
}

impl Word32 for AtomicU32 {
    fn load(&self, o: Ordering) -> u32 {
        AtomicU32::load(self, o)
    }
    fn store(&self, v: u32, o: Ordering) {
        AtomicU32::store(self, v, o)
    }
    fn compare_exchange(&self, cur: u32, new: u32, s: Ordering, f: Ordering) -> Result<u32, u32> {
        AtomicU32::compare_exchange(self, cur, new, s, f)
    }
}

/// The memory of a ring. Slot indexes passed in are always `< slots()`.
pub trait RingMem {
    /// The 64-bit word type.
    type W64: Word64;
    /// The 32-bit word type.
    type W32: Word32;
    /// `N`, a power of two (validated by the implementation).
    fn slots(&self) -> u64;
    /// Whether this is the single-producer single-consumer protocol (then
    /// only [`spsc_push`]/[`spsc_pop`] may be used on it; `seq` and `claim`
    /// are unused).
    fn spsc(&self) -> bool;
    /// The consumers' counter.
    fn head(&self) -> &Self::W64;
    /// The producers' counter.
    fn tail(&self) -> &Self::W64;
    /// Slot `i`'s sequence word.
    fn seq(&self, i: usize) -> &Self::W64;
    /// Slot `i`'s claim word (pid of the process working on it, or 0).
    fn claim(&self, i: usize) -> &Self::W32;
    /// Slot `i`'s length word.
    fn len(&self, i: usize) -> &Self::W32;
    /// Copies `data` (at most the maximum message) into slot `i`.
    fn write(&self, i: usize, data: &[u8]);
    /// Copies `out.len()` bytes (at most the maximum) out of slot `i`.
    fn read(&self, i: usize, out: &mut [u8]);
    /// The largest message a slot holds.
    fn max(&self) -> usize;
    /// Whether process `pid` is alive (only called on the repair path).
    fn alive(&self, pid: u32) -> bool;
}

/// What [`push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The message is in the ring and published.
    Sent,
    /// No free slot.
    Full,
    /// Another party is working on the slot needed next; retry soon.
    Busy,
    /// The ring holds values the algorithm cannot produce.
    Corrupt(&'static str),
}

/// What [`pop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop {
    /// A message was copied into `out`.
    Got,
    /// Nothing published.
    Empty,
    /// Another party is working on the slot needed next; retry soon.
    Busy,
    /// A message announced a length over the maximum; it was dropped.
    TooLong(usize),
    /// The ring holds values the algorithm cannot produce.
    Corrupt(&'static str),
}

/// Takes slot `i`'s claim word for `me`, or over from a dead holder when
/// `repair`; returns whether it did.
fn take_claim<M: RingMem>(m: &M, i: usize, me: u32, repair: bool) -> bool {
    match m.claim(i).compare_exchange(0, me, Acquire, Acquire) {
        Ok(_) => true,
        Err(cur) => {
            repair
                && cur != me
                && !m.alive(cur)
                && m.claim(i).compare_exchange(cur, me, Acquire, Acquire).is_ok()
        }
    }
}

fn drop_claim<M: RingMem>(m: &M, i: usize) {
    m.claim(i).store(0, Release);
}

/// Sends `data` (`data.len() <= m.max()`, checked by the caller) as
/// process `me` into an MPMC ring; never waits. `skipped` counts slots freed from dead consumers.
pub fn push<M: RingMem>(m: &M, me: u32, data: &[u8], repair: bool) -> Push {
    let n = m.slots();
    let mask = n - 1;
    for _ in 0..MAX_RETRIES {
        let pos = m.tail().load(Acquire);
        let i = (pos & mask) as usize;
        let seq = m.seq(i).load(Acquire);
        let d = seq.wrapping_sub(pos) as i64;
        if d > 0 {
            if m.tail().load(Acquire) != pos {
                continue; // another producer got there first
            }
            return Push::Corrupt("slot sequence ahead of the tail");
        }
        if d < 0 {
            let prev = pos.wrapping_sub(n);
            if seq == prev.wrapping_add(1) || seq == prev {
                // The slot still holds the previous lap's message (or its
                // producer is still writing it): full, unless its consumer
                // took it and died before releasing it.
                if repair && seq == prev.wrapping_add(1) && free_taken(m, i, me, prev) {
                    continue;
                }
                return Push::Full;
            }
            if m.tail().load(Acquire) != pos {
                continue;
            }
            return Push::Corrupt("slot sequence behind the tail by more than a lap");
        }
        if !take_claim(m, i, me, repair) {
            return Push::Busy;
        }
        // Under the claim nobody else moves `tail` from `pos` or changes `seq`.
        if m.seq(i).load(Acquire) != pos
            || m.tail().compare_exchange(pos, pos.wrapping_add(1), AcqRel, Acquire).is_err()
        {
            drop_claim(m, i);
            continue;
        }
        m.write(i, data);
        m.len(i).store(data.len() as u32, Relaxed);
        m.seq(i).store(pos.wrapping_add(1), Release);
        drop_claim(m, i);
        return Push::Sent;
    }
    Push::Busy
}

/// The slot of position `prev` is published and `head` has moved past it:
/// a consumer took it. If that consumer is dead, free the slot (its message
/// is lost with it). Returns whether the slot was freed.
fn free_taken<M: RingMem>(m: &M, i: usize, me: u32, prev: u64) -> bool {
    let head = m.head().load(Acquire);
    if head.wrapping_sub(prev) as i64 <= 0 {
        return false; // not taken: the ring is simply full
    }
    let holder = m.claim(i).load(Acquire);
    if holder != 0 && m.alive(holder) {
        return false; // being read right now
    }
    if !take_claim(m, i, me, true) {
        return false;
    }
    let freed = m.seq(i).load(Acquire) == prev.wrapping_add(1) && m.head().load(Acquire) != prev;
    if freed {
        m.seq(i).store(prev.wrapping_add(m.slots()), Release);
    }
    drop_claim(m, i);
    freed
}

/// Receives into `out` as process `me` from an MPMC ring; never waits. Slots whose producer
/// died before publishing are skipped when `repair`.
pub fn pop<M: RingMem>(m: &M, me: u32, out: &mut Vec<u8>, repair: bool) -> Pop {
    let n = m.slots();
    let mask = n - 1;
    for _ in 0..MAX_RETRIES {
        let pos = m.head().load(Acquire);
        let i = (pos & mask) as usize;
        let seq = m.seq(i).load(Acquire);
        let next = pos.wrapping_add(1);
        let d = seq.wrapping_sub(next) as i64;
        if d == 0 {
            if !take_claim(m, i, me, repair) {
                return Pop::Busy;
            }
            if m.seq(i).load(Acquire) != next || m.head().load(Acquire) != pos {
                drop_claim(m, i);
                continue;
            }
            let r = take(m, i, out);
            if m.head().compare_exchange(pos, next, AcqRel, Acquire).is_err() {
                drop_claim(m, i);
                continue;
            }
            m.seq(i).store(pos.wrapping_add(n), Release);
            drop_claim(m, i);
            return r;
        }
        if d < 0 {
            let prev_lap = seq == pos.wrapping_sub(n).wrapping_add(1);
            if seq != pos && !prev_lap {
                if m.head().load(Acquire) != pos {
                    continue;
                }
                return Pop::Corrupt("slot sequence behind the head by more than a lap");
            }
            if prev_lap {
                // The previous lap's consumer is still releasing it (then the
                // ring is empty), or nothing was published here yet.
                return Pop::Empty;
            }
            let tail = m.tail().load(Acquire);
            if tail == pos {
                return Pop::Empty;
            }
            if tail.wrapping_sub(pos) as i64 <= 0 {
                if m.head().load(Acquire) != pos {
                    continue;
                }
                return Pop::Corrupt("head ahead of tail");
            }
            // Claimed by a producer that has not published yet.
            if !repair {
                return Pop::Busy;
            }
            let holder = m.claim(i).load(Acquire);
            if holder != 0 && m.alive(holder) {
                return Pop::Busy;
            }
            // Its producer died (or nobody owns it): skip the slot.
            if !take_claim(m, i, me, true) {
                return Pop::Busy;
            }
            if m.seq(i).load(Acquire) == pos
                && m.tail().load(Acquire) != pos
                && m.head().compare_exchange(pos, next, AcqRel, Acquire).is_ok()
            {
                m.seq(i).store(pos.wrapping_add(n), Release);
            }
            drop_claim(m, i);
            continue;
        }
        // d > 0
        if m.head().load(Acquire) != pos {
            continue;
        }
        return Pop::Corrupt("slot sequence ahead of the head");
    }
    Pop::Busy
}

/// Copies slot `i`'s message out, checking its length.
fn take<M: RingMem>(m: &M, i: usize, out: &mut Vec<u8>) -> Pop {
    let len = m.len(i).load(Relaxed) as usize;
    if len > m.max() {
        return Pop::TooLong(len);
    }
    // `read` overwrites all of `out`: resizing without clearing first
    // zero-fills only bytes the buffer grows by (none, when reused).
    out.resize(len, 0);
    m.read(i, out);
    Pop::Got
}

/// One end's private view of an SPSC ring: its own position and (the
/// producer's) cached copy of `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    mine: u64,
    other: u64,
}

impl Cursor {
    /// The producer's cursor, starting at `tail` as it is (or one further
    /// when the last producer published its slot but died before moving
    /// `tail`).
    ///
    /// # Errors
    ///
    /// When `head` and `tail` are not at most a lap apart.
    pub fn producer<M: RingMem>(m: &M) -> Result<Cursor, &'static str> {
        let mut tail = m.tail().load(Acquire);
        let n = m.slots();
        if m.seq((tail & (n - 1)) as usize).load(Acquire) == tail.wrapping_add(1) {
            tail = tail.wrapping_add(1);
            m.tail().store(tail, Release);
        }
        let head = m.head().load(Acquire);
        if tail.wrapping_sub(head) > n {
            return Err("tail not within a lap ahead of head");
        }
        Ok(Cursor { mine: tail, other: head })
    }

    /// The consumer's cursor, starting at `head` as it is.
    ///
    /// # Errors
    ///
    /// As [`Cursor::producer`].
    pub fn consumer<M: RingMem>(m: &M) -> Result<Cursor, &'static str> {
        let head = m.head().load(Acquire);
        let tail = m.tail().load(Acquire);
        if tail.wrapping_sub(head) > m.slots() {
            return Err("tail not within a lap ahead of head");
        }
        Ok(Cursor { mine: head, other: tail })
    }
}

/// Sends `data` (`data.len() <= m.max()`, checked by the caller) into an
/// SPSC ring as its only producer; never waits. Reads `head` only when
/// the cursor's copy says the ring is full.
pub fn spsc_push<M: RingMem>(m: &M, c: &mut Cursor, data: &[u8]) -> Push {
    let n = m.slots();
    if c.mine.wrapping_sub(c.other) >= n {
        let head = m.head().load(Acquire);
        let used = c.mine.wrapping_sub(head);
        if used > n {
            return Push::Corrupt("head ahead of the tail or more than a lap behind it");
        }
        c.other = head;
        if used == n {
            return Push::Full;
        }
    }
    let i = (c.mine & (n - 1)) as usize;
    m.write(i, data);
    m.len(i).store(data.len() as u32, Relaxed);
    c.mine = c.mine.wrapping_add(1);
    m.seq(i).store(c.mine, Release);
    m.tail().store(c.mine, Release);
    Push::Sent
}

/// Receives into `out` from an SPSC ring as its only consumer; never
/// waits. Looks only at its next slot's `seq`; `check` (a periodic slow
/// path) also cross-checks `tail`, so a committed message whose slot was
/// scribbled over is reported as corruption rather than waited for.
pub fn spsc_pop<M: RingMem>(m: &M, c: &mut Cursor, out: &mut Vec<u8>, check: bool) -> Pop {
    let n = m.slots();
    let i = (c.mine & (n - 1)) as usize;
    let want = c.mine.wrapping_add(1);
    if m.seq(i).load(Acquire) != want {
        if check {
            // `tail` may lag behind messages already read (their `seq` was
            // published first), but by less than a lap.
            let tail = m.tail().load(Acquire);
            let avail = tail.wrapping_sub(c.mine) as i64;
            if avail > n as i64 || avail < -(n as i64) {
                return Pop::Corrupt("tail more than a lap away from the head");
            }
            // `seq` is published before `tail`: a message counted in `tail` is visible.
            if avail > 0 && m.seq(i).load(Acquire) != want {
                return Pop::Corrupt("a committed message's slot is not published");
            }
        }
        if m.seq(i).load(Acquire) != want {
            return Pop::Empty;
        }
    }
    let r = take(m, i, out);
    c.mine = want;
    c.other = want;
    m.head().store(want, Release);
    r
}
