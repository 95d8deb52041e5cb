//! Publish-subscribe over shared memory: every subscriber sees every message.
//!
//! One [`Publisher`] writes into a ring of slots; any number of
//! [`Subscriber`]s (up to the segment's table size) read it, each at its own
//! cursor. A subscriber that joins late starts with up to `history` of the
//! most recent messages. When a subscriber falls a whole ring behind, the
//! publisher's [`Overflow`] policy decides: `Block` (the publisher waits for
//! the slowest live subscriber) or `DropOldest` (the subscriber loses its
//! oldest messages and is told how many, [`Subscriber::lost`]).
//!
//! Layout (user area): a header, a subscriber table (pid and cursor per
//! entry), then the slots, each with a seqlock stamp (`2s+1` while message
//! `s` is written, `2s+2` once it is complete) so a reader that was lapped
//! mid-copy notices and retries instead of returning torn bytes. Lengths,
//! stamps and cursors read from the segment are validated. Subscribers and
//! publisher record their pids; a dead subscriber never blocks the
//! publisher, and subscribers see `Disconnected` once the publisher is gone
//! and they have read everything.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::rpc::WaitMode;
use super::segment::{Segment, SegmentKind, HEADER_LEN};
use crate::error::{Error, Fault, Result};
use crate::message::Message;
use crate::sys::{self, Deadline, Mapping};

/// What the publisher does when a subscriber is a whole ring behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Wait until the slowest live subscriber has made room.
    Block,
    /// Overwrite: the slow subscriber loses its oldest messages (and is told).
    DropOldest,
}

const H: usize = HEADER_LEN;
const SLOTS: usize = H;
const MAX: usize = H + 4;
const SUBS: usize = H + 8;
const POLICY: usize = H + 12;
const PUB_PID: usize = H + 16;
const SUB_WAITERS: usize = H + 20;
const PUB_WAITERS: usize = H + 24;
const WRITE_SEQ: usize = H + 64;
const PUBLISHED: usize = H + 128; // futex word: bumped on every publish
const CONSUMED: usize = H + 132; // futex word: bumped when a subscriber advances
const TABLE: usize = H + 192;
const ENTRY: usize = 64;
const SLOT_HEADER: usize = 64;
const CHECK: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
struct Layout {
    slots: usize,
    max: usize,
    subs: usize,
    first_slot: usize,
    stride: usize,
}

impl Layout {
    fn new(slots: usize, max: usize, subs: usize) -> Layout {
        let first_slot = TABLE + subs * ENTRY;
        Layout { slots, max, subs, first_slot, stride: SLOT_HEADER + max.div_ceil(64) * 64 }
    }

    fn end(&self) -> usize {
        self.first_slot + self.slots * self.stride
    }

    fn slot(&self, seq: u64) -> usize {
        self.first_slot + (seq % self.slots as u64) as usize * self.stride
    }
}

fn u32_at(m: &Mapping, off: usize) -> &AtomicU32 {
    m.u32_at(off).expect("offset inside a validated layout")
}

fn u64_at(m: &Mapping, off: usize) -> &AtomicU64 {
    m.u64_at(off).expect("offset inside a validated layout")
}

/// Waits until `ready()` holds, sleeping on `word` (with `waiters` counted)
/// as `mode` says; checks `alive()` every 10 ms.
fn wait_until(
    m: &Mapping,
    word: usize,
    waiters: usize,
    mode: WaitMode,
    deadline: Deadline,
    mut ready: impl FnMut() -> Result<bool, Fault>,
    mut alive: impl FnMut() -> bool,
) -> Result<(), Fault> {
    let spins = match mode {
        WaitMode::Spin => u32::MAX,
        WaitMode::SpinThenBlock(n) => n,
        WaitMode::Block => 0,
    };
    let (word, waiters) = (u32_at(m, word), u32_at(m, waiters));
    let mut spun = 0u32;
    let mut next_check = Instant::now() + CHECK;
    loop {
        let seen = word.load(Ordering::SeqCst);
        if ready()? {
            return Ok(());
        }
        if spun < spins {
            spun += 1;
            std::hint::spin_loop();
            if spun % 256 != 0 {
                continue;
            }
        } else if deadline != Deadline::Now {
            waiters.fetch_add(1, Ordering::SeqCst);
            if !ready()? && word.load(Ordering::SeqCst) == seen {
                let mut nap = CHECK;
                if let Deadline::At(at) = deadline {
                    nap = nap.min(at.saturating_duration_since(Instant::now()));
                }
                if !nap.is_zero() {
                    sys::futex_wait(word, seen, Some(nap));
                }
            }
            waiters.fetch_sub(1, Ordering::SeqCst);
        }
        if ready()? {
            return Ok(());
        }
        if deadline.expired() {
            return Err(Fault::Timeout);
        }
        let now = Instant::now();
        if now >= next_check {
            if !alive() {
                return Err(Fault::Disconnected);
            }
            next_check = now + CHECK;
        }
    }
}

fn bump(m: &Mapping, word: usize, waiters: usize) {
    u32_at(m, word).fetch_add(1, Ordering::SeqCst);
    if u32_at(m, waiters).load(Ordering::SeqCst) > 0 {
        sys::futex_wake(u32_at(m, word), u32::MAX);
    }
}

/// The writing side of a publish-subscribe segment (it creates the segment).
///
/// # Examples
///
/// ```
/// use ipckit::shm::pubsub::{Overflow, Publisher, Subscriber};
/// let name = format!("doc-pubsub-{}", std::process::id());
/// let mut publisher = Publisher::create(&name, 8, 64, 4, Overflow::DropOldest, 0o600)?;
/// publisher.send("before anyone listened")?;
/// let mut a = Subscriber::subscribe(&name, 8)?; // sees the history
/// let mut b = Subscriber::subscribe(&name, 0)?; // only what comes next
/// publisher.send("news")?;
/// assert_eq!(a.recv()?.bytes(), b"before anyone listened");
/// assert_eq!(a.recv()?.bytes(), b"news");
/// assert_eq!(b.recv()?.bytes(), b"news");
/// ipckit::shm::Segment::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Publisher {
    seg: Segment,
    layout: Layout,
    overflow: Overflow,
    wait: WaitMode,
}

impl Publisher {
    /// Creates segment `name`: a ring of `slots` messages of up to
    /// `max_message` bytes, with room for `max_subscribers`.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`]; [`Error::InvalidName`] for a zero or
    /// oversized geometry.
    pub fn create(
        name: &str,
        slots: usize,
        max_message: usize,
        max_subscribers: usize,
        overflow: Overflow,
        mode: u32,
    ) -> Result<Publisher> {
        let ok = (1..=1 << 20).contains(&slots)
            && (1..=1 << 30).contains(&max_message)
            && (1..=1024).contains(&max_subscribers);
        if !ok {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                why: "1..2^20 slots of 1 byte..1 GiB, 1..1024 subscribers",
            });
        }
        let layout = Layout::new(slots, max_message, max_subscribers);
        let seg = Segment::create_kind(name, layout.end() - H, mode, SegmentKind::PubSub)?;
        let m = seg.mapping();
        u32_at(m, MAX).store(max_message as u32, Ordering::Relaxed);
        u32_at(m, SUBS).store(max_subscribers as u32, Ordering::Relaxed);
        u32_at(m, POLICY).store(overflow as u32, Ordering::Relaxed);
        u32_at(m, PUB_PID).store(sys::pid(), Ordering::Relaxed);
        u32_at(m, SLOTS).store(slots as u32, Ordering::Release);
        Ok(Publisher { seg, layout, overflow, wait: WaitMode::default() })
    }

    /// Sets how the publisher waits for room under [`Overflow::Block`].
    pub fn with_wait(mut self, wait: WaitMode) -> Self {
        self.wait = wait;
        self
    }

    /// How many subscribers are attached and alive.
    pub fn subscribers(&self) -> usize {
        let m = self.seg.mapping();
        (0..self.layout.subs)
            .filter(|&i| {
                let pid = u32_at(m, TABLE + i * ENTRY).load(Ordering::Acquire);
                pid != 0 && sys::process_alive(pid)
            })
            .count()
    }

    send_forms!();

    /// The lowest cursor among attached subscribers (`None`: nobody to wait for).
    fn slowest(m: &Mapping, subs: usize) -> Option<u64> {
        (0..subs)
            .filter(|&i| u32_at(m, TABLE + i * ENTRY).load(Ordering::Acquire) != 0)
            .map(|i| u64_at(m, TABLE + i * ENTRY + 8).load(Ordering::Acquire))
            .min()
    }

    /// Detaches subscribers whose process is gone, so they hold nobody up.
    fn reap(m: &Mapping, subs: usize) {
        for i in 0..subs {
            let pid = u32_at(m, TABLE + i * ENTRY);
            let cur = pid.load(Ordering::Acquire);
            if cur != 0 && !sys::process_alive(cur) {
                let _ = pid.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    fn send_inner(&mut self, msg: &Message, deadline: Deadline) -> Result<(), Fault> {
        let data = msg.bytes();
        if data.len() > self.layout.max {
            return Err(Fault::TooLarge { len: data.len(), max: self.layout.max });
        }
        let m = self.seg.mapping().clone();
        let s = u64_at(&m, WRITE_SEQ).load(Ordering::Relaxed);
        let n = self.layout.slots as u64;
        if self.overflow == Overflow::Block && s >= n {
            // Room means: the slowest live subscriber has read message s - n.
            let subs = self.layout.subs;
            let room = || Ok(Publisher::slowest(&m, subs).is_none_or(|c| c + n > s));
            Publisher::reap(&m, subs);
            let reap = || {
                Publisher::reap(&m, subs);
                true
            };
            wait_until(&m, CONSUMED, PUB_WAITERS, self.wait, deadline, room, reap)?;
        }
        let at = self.layout.slot(s);
        let stamp = u64_at(&m, at);
        stamp.store(2 * s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        u32_at(&m, at + 8).store(data.len() as u32, Ordering::Relaxed);
        let wrote = m.write(at + SLOT_HEADER, data);
        debug_assert!(wrote, "length checked against the slot size");
        stamp.store(2 * s + 2, Ordering::Release);
        u64_at(&m, WRITE_SEQ).store(s + 1, Ordering::Release);
        bump(&m, PUBLISHED, SUB_WAITERS);
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let m = self.seg.mapping();
        let _ = u32_at(m, PUB_PID).compare_exchange(sys::pid(), 0, Ordering::AcqRel, Ordering::Relaxed);
        bump(m, PUBLISHED, SUB_WAITERS);
    }
}

/// A reading side of a publish-subscribe segment.
#[derive(Debug)]
pub struct Subscriber {
    seg: Segment,
    layout: Layout,
    entry: usize,
    cursor: u64,
    lost: u64,
    wait: WaitMode,
}

impl Subscriber {
    /// Attaches to publisher segment `name`, starting with up to `history`
    /// of the most recent messages.
    ///
    /// # Errors
    ///
    /// As [`Segment::open`]; [`Error::Corrupted`] for a bad layout;
    /// [`Error::AlreadyExists`] when the subscriber table is full.
    pub fn subscribe(name: &str, history: usize) -> Result<Subscriber> {
        let seg = Segment::open_kind(name, SegmentKind::PubSub)?;
        let m = seg.mapping().clone();
        let slots = u32_at(&m, SLOTS).load(Ordering::Acquire) as usize;
        let max = u32_at(&m, MAX).load(Ordering::Relaxed) as usize;
        let subs = u32_at(&m, SUBS).load(Ordering::Relaxed) as usize;
        let layout = Layout::new(slots, max, subs);
        if slots == 0 || max == 0 || subs == 0 || subs > 1024 || layout.end() > m.len() {
            return Err(Error::Corrupted(format!("publish-subscribe segment {name:?}: bad geometry")));
        }
        let me = sys::pid();
        let entry = (0..subs)
            .find(|&i| {
                let pid = u32_at(&m, TABLE + i * ENTRY);
                let cur = pid.load(Ordering::Acquire);
                (cur == 0 || !sys::process_alive(cur))
                    && pid.compare_exchange(cur, me, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            })
            .ok_or_else(|| {
                Error::AlreadyExists(format!("{name}: all {subs} subscriber entries are taken"))
            })?;
        let w = u64_at(&m, WRITE_SEQ).load(Ordering::Acquire);
        let cursor = w.saturating_sub(history.min(slots) as u64);
        u64_at(&m, TABLE + entry * ENTRY + 8).store(cursor, Ordering::Release);
        Ok(Subscriber { seg, layout, entry, cursor, lost: 0, wait: WaitMode::default() })
    }

    /// Sets how the subscriber waits for messages.
    pub fn with_wait(mut self, wait: WaitMode) -> Self {
        self.wait = wait;
        self
    }

    /// Messages this subscriber lost so far because the publisher overwrote
    /// them before it read them ([`Overflow::DropOldest`]).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    recv_forms!(Message);

    fn recv_inner(&mut self, deadline: Deadline) -> Result<Message, Fault> {
        let m = self.seg.mapping().clone();
        let n = self.layout.slots as u64;
        loop {
            let cursor = self.cursor;
            let published = || Ok(u64_at(&m, WRITE_SEQ).load(Ordering::Acquire) > cursor);
            let publisher = || {
                let pid = u32_at(&m, PUB_PID).load(Ordering::Acquire);
                pid != 0 && sys::process_alive(pid)
            };
            if !published()? {
                if !publisher() {
                    return Err(Fault::Disconnected);
                }
                wait_until(&m, PUBLISHED, SUB_WAITERS, self.wait, deadline, published, publisher)?;
            }
            let w = u64_at(&m, WRITE_SEQ).load(Ordering::Acquire);
            if w < self.cursor {
                return Err(Fault::Frame(crate::FrameError::BadHandles("publisher sequence went backwards")));
            }
            if w - self.cursor > n {
                // Lapped: the oldest messages are gone.
                self.lost += w - self.cursor - n;
                self.cursor = w - n;
            }
            let s = self.cursor;
            let at = self.layout.slot(s);
            let stamp = u64_at(&m, at);
            let before = stamp.load(Ordering::Acquire);
            if before != 2 * s + 2 {
                if before > 2 * s + 2 {
                    continue; // overwritten since we looked: recompute
                }
                // Still being written (cannot be, once published) or garbage.
                return Err(Fault::Frame(crate::FrameError::BadHandles(
                    "slot stamp does not match its sequence",
                )));
            }
            let len = u32_at(&m, at + 8).load(Ordering::Relaxed) as usize;
            if len > self.layout.max {
                self.advance(&m, s + 1);
                return Err(Fault::Frame(crate::FrameError::TooLarge { len, max: self.layout.max }));
            }
            let mut data = vec![0u8; len];
            m.read(at + SLOT_HEADER, &mut data);
            fence(Ordering::Acquire);
            if stamp.load(Ordering::Relaxed) != before {
                continue; // lapped while copying: those bytes may be torn
            }
            self.advance(&m, s + 1);
            return Ok(Message::new(data));
        }
    }

    fn advance(&mut self, m: &Mapping, to: u64) {
        self.cursor = to;
        u64_at(m, TABLE + self.entry * ENTRY + 8).store(to, Ordering::Release);
        bump(m, CONSUMED, PUB_WAITERS);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let m = self.seg.mapping();
        let _ = u32_at(m, TABLE + self.entry * ENTRY).compare_exchange(
            sys::pid(),
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        bump(m, CONSUMED, PUB_WAITERS);
    }
}
