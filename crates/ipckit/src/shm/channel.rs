//! Message channels over shared memory: a bounded ring of slots in a
//! segment, multi-producer multi-consumer or single-producer single-consumer,
//! or a rendezvous (capacity 0) table of offers.
//!
//! Flavours, one private file each:
//! - MPMC: [`ring::push`]/[`ring::pop`] (Vyukov's sequence-numbered slots,
//!   made robust against deaths);
//! - SPSC: [`ring::spsc_push`]/[`ring::spsc_pop`] (a Lamport ring with the
//!   "published" word in the slot: one cache line per small message);
//! - rendezvous (`Config::rendezvous`, `slots == 0`): `rendezvous.rs`;
//!   `send` returns once a receiver took the message, a timed-out send
//!   withdraws it (never delivered), up to 32 senders offer at once and
//!   receivers serve them in the order they offered.
//!
//! [`ShmChannel::create`] makes the segment (slot count, largest message,
//! permission bits, flavour); [`ShmChannel::open`] attaches to it from any
//! process. Ends come from [`ShmChannel::sender`] and
//! [`ShmChannel::receiver`]: each has the four forms of its operation
//! (`send`, `try_send`, `send_timeout`, `send_deadline`; the same for
//! `recv`) and waits as its [`WaitMode`] says. The fast path (a free slot,
//! nobody asleep) makes no system call.
//!
//! # Layout (offsets in the user area)
//!
//! ```text
//! 0     config: slots, max message, slot size, flavour, ready;
//!       attached producers/consumers, "ever attached" flags,
//!       the "not empty" and "not full" futex words and their waiter counts
//! 64    head (u64, its own cache line)
//! 128   tail (u64, its own cache line)
//! 192   producer table: 32 x u64 (pid << 32 | handles)
//! 448   consumer table: 32 x u64
//! 704   N slots of align64(16 + max) bytes: seq u64, claim u32, len u32, data
//!       (SPSC: only len and data are used)
//!       rendezvous: 32 offer slots of align64(64 + max) bytes (state, owner,
//!       len, ticket on their own line, then the data); the ticket counter
//!       is where `head` is
//! ```
//!
//! The algorithm and what each kind of death leaves behind are in
//! [`ring`].
//!
//! # Guarantees
//!
//! - While every process lives, each message a `send` reported as sent is
//!   received exactly once; messages from one sender arrive in the order it
//!   sent them (MPMC across several senders: no global order is promised
//!   beyond each sender's).
//! - A producer killed at any instant (even `SIGKILL` mid-copy) never
//!   wedges the ring: a slot it claimed but did not publish is skipped by
//!   a consumer within [`LIVENESS_CHECK`] of noticing; every message its
//!   `send` had returned `Ok` for is still delivered, once. A message whose
//!   `send` had not returned may or may not be delivered (it was published,
//!   or it was not).
//! - A consumer killed mid-`recv` never wedges the ring: a slot it held is
//!   taken over. Its message is delivered to another consumer, except in
//!   the two-instruction window between taking the position and releasing
//!   the slot (MPMC), where it is lost with the consumer.
//! - A receiver blocked on an empty ring returns `Disconnected` within about
//!   [`LIVENESS_CHECK`] once every producer that ever attached is gone
//!   (dropped or dead); a sender blocked on a full ring likewise once every
//!   consumer is gone. Before any has attached, they wait.
//! - Nothing read from the segment is trusted: a corrupted ring gives
//!   errors (or well-formed messages), never an access outside the
//!   mapping, a panic or an endless loop.
//!
//! Not guaranteed: liveness is `kill(pid, 0)`, so a dead process whose pid
//! is reused before anyone notices looks alive (its slot then waits for the
//! new process to exit). At most 32 processes attach to each side (any
//! number of handles per process). The capacity is rounded up to a power of
//! two, at least 2 (or is 0: rendezvous). Messages cannot carry handles. An
//! end that switches from [`WaitMode::Spin`] to a sleeping mode while its
//! peer is notifying may see that one notification up to
//! [`LIVENESS_CHECK`] late (a notifier skips its fence while no end of the
//! waiting side can sleep).
//!
//! A [`ShmChannel`] itself is [`Transferable`]: it can be handed to a child
//! with [`crate::spawn::Inherit`] or sent over a UNIX socket, and the
//! receiving process makes its own ends from it.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ring::{self, Cursor, Pop, Push, RingMem};
use super::segment::{Segment, SegmentKind, HEADER_LEN};
use super::wait::{wait_event, Attempt, Event};
pub use super::wait::{WaitMode, LIVENESS_CHECK};
use crate::error::{Error, Fault, FrameError, Result};
use crate::message::{Handle, Message, Transferable};
use crate::sys::{self, Deadline, Mapping};
use crate::wire::{HandleKind, HandleMeta};

const U: usize = HEADER_LEN;
const CFG_SLOTS: usize = U;
const CFG_MAX: usize = U + 4;
const CFG_SLOT_SIZE: usize = U + 8;
const CFG_FLAVOR: usize = U + 12;
const CFG_READY: usize = U + 16;
const HAD: [usize; 2] = [U + 20, U + 24];
const ATTACHED: [usize; 2] = [U + 28, U + 32];
const NOT_EMPTY: usize = U + 36;
const NOT_EMPTY_WAITERS: usize = U + 40;
const NOT_FULL: usize = U + 44;
const NOT_FULL_WAITERS: usize = U + 48;
/// Rendezvous: how many receivers are waiting in `recv` right now.
const RECEIVING: usize = U + 52;
/// How many ends of each side may sleep (not [`WaitMode::Spin`]): a side
/// with none asleep-capable is never woken, so its peer skips the fence.
const SLEEPY: [usize; 2] = [U + 56, U + 60];
/// Rendezvous: the next offer's ticket (the ring's head counter is unused).
const TICKET: usize = U + 64;
const HEAD: usize = U + 64;
const TAIL: usize = U + 128;
const TABLE: [usize; 2] = [U + 192, U + 448];
const TABLE_LEN: usize = 32;
const SLOTS: usize = U + 704;
const SLOT_HEADER: usize = 16;
/// The most slots a channel may have.
pub const MAX_SLOTS: usize = 1 << 24;

pub(super) const PRODUCERS: usize = 0;
pub(super) const CONSUMERS: usize = 1;
/// The flavour word of a rendezvous channel.
const FLAVOR_RENDEZVOUS: u32 = 2;

/// Which protocol a channel's ends follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Any number of senders and receivers, in any processes.
    #[default]
    Mpmc,
    /// One sender and one receiver at a time (a second live one is
    /// refused): no compare-and-swap on the path, the fastest flavour.
    Spsc,
}

/// What [`ShmChannel::create`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Messages the ring holds (rounded up to a power of two, at least 2:
    /// the sequence-number algorithm cannot tell states apart with one
    /// slot); 0 makes a rendezvous channel (any flavour: see
    /// [`Config::rendezvous`]).
    pub slots: usize,
    /// The largest message, in bytes.
    pub max_message: usize,
    /// Permission bits of the segment (e.g. `0o600`).
    pub mode: u32,
    /// MPMC or SPSC.
    pub flavor: Flavor,
}

impl Default for Config {
    fn default() -> Self {
        Config { slots: 64, max_message: 4096, mode: 0o600, flavor: Flavor::Mpmc }
    }
}

impl Config {
    /// An MPMC channel of `slots` messages of at most `max_message` bytes, mode `0o600`.
    pub fn mpmc(slots: usize, max_message: usize) -> Self {
        Config { slots, max_message, ..Config::default() }
    }

    /// A rendezvous channel (capacity 0, `slots == 0`) for messages of at
    /// most `max_message` bytes, mode `0o600`: `send` returns once a
    /// receiver has taken the message; up to 32 senders offer at once
    /// (more wait for a free offer slot).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ipckit::shm::channel::{Config, ShmChannel};
    /// use ipckit::SendTimeoutError;
    /// let name = format!("doc-rdv-{}", std::process::id());
    /// let chan = ShmChannel::create(&name, &Config::rendezvous(256))?;
    /// let mut tx = chan.sender()?;
    /// let mut rx = ShmChannel::open(&name)?.receiver()?;
    /// // Nobody is receiving: the offer is withdrawn and handed back.
    /// let err = tx.send_timeout(&b"early"[..], Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, SendTimeoutError::Timeout(ref m) if m.bytes() == b"early"));
    /// // With a receiver waiting, send returns once it has taken the message.
    /// let t = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(5)).map(|m| m.bytes().to_vec()));
    /// tx.send_timeout(&b"render frame 7"[..], Duration::from_secs(5))?;
    /// assert_eq!(t.join().unwrap()?, b"render frame 7");
    /// ShmChannel::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rendezvous(max_message: usize) -> Self {
        Config { slots: 0, max_message, ..Config::default() }
    }

    /// An SPSC channel of `slots` messages of at most `max_message` bytes, mode `0o600`.
    pub fn spsc(slots: usize, max_message: usize) -> Self {
        Config { slots, max_message, flavor: Flavor::Spsc, ..Config::default() }
    }

    /// The same, with permission bits `mode`.
    pub fn with_mode(self, mode: u32) -> Self {
        Config { mode, ..self }
    }
}

fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// Bytes before a slot's data.
fn slot_header(rendezvous: bool) -> usize {
    if rendezvous {
        super::rendezvous::OFFER_HEADER
    } else {
        SLOT_HEADER
    }
}

/// The mapped ring, its shape validated once at create/open and then kept
/// here (never re-read from the segment).
pub(super) struct Ring {
    seg: Segment,
    pub(super) map: Arc<Mapping>,
    /// Ring slots, or offer slots of a rendezvous channel.
    pub(super) slots: u64,
    pub(super) max: usize,
    slot_size: usize,
    spsc: bool,
    rendezvous: bool,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("segment", &self.seg.name())
            .field("slots", &self.slots)
            .field("max", &self.max)
            .field("spsc", &self.spsc)
            .finish()
    }
}

impl Ring {
    fn w32(&self, off: usize) -> &AtomicU32 {
        // Every fixed offset is below SLOTS, which fits every ring segment (checked).
        self.map.u32_at(off).expect("fixed header offset inside the validated mapping")
    }

    fn w64(&self, off: usize) -> &AtomicU64 {
        self.map.u64_at(off).expect("fixed header offset inside the validated mapping")
    }

    pub(super) fn slot(&self, i: usize) -> usize {
        SLOTS + i * self.slot_size
    }

    /// What receivers wait for (woken by senders).
    pub(super) fn not_empty(&self) -> Event<'_> {
        Event {
            word: self.w32(NOT_EMPTY),
            waiters: self.w32(NOT_EMPTY_WAITERS),
            sleepy: self.w32(SLEEPY[CONSUMERS]),
        }
    }

    /// What senders wait for (woken by receivers).
    pub(super) fn not_full(&self) -> Event<'_> {
        Event {
            word: self.w32(NOT_FULL),
            waiters: self.w32(NOT_FULL_WAITERS),
            sleepy: self.w32(SLEEPY[PRODUCERS]),
        }
    }

    /// Rendezvous: receivers waiting in `recv` now.
    pub(super) fn receiving(&self) -> &AtomicU32 {
        self.w32(RECEIVING)
    }

    /// Rendezvous: the ticket counter.
    pub(super) fn ticket(&self) -> &AtomicU64 {
        self.w64(TICKET)
    }

    /// Counts one more (`+1`) or one fewer (`-1`) end of `side` that may sleep.
    fn sleepy(&self, side: usize, delta: i32) {
        let c = self.w32(SLEEPY[side]);
        if delta > 0 {
            c.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_sub(1)));
        }
    }

    fn entry(&self, side: usize, k: usize) -> &AtomicU64 {
        self.w64(TABLE[side] + 8 * k)
    }

    /// Subtracts `n` from a side's attached count, never below zero.
    fn sub_attached(&self, side: usize, n: u32) {
        let c = self.w32(ATTACHED[side]);
        let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
    }

    /// Records one more handle of this process on `side`.
    fn attach(&self, side: usize) -> Result<()> {
        let me = sys::pid();
        let mine = |v: u64| (v >> 32) as u32 == me && v as u32 > 0;
        let slots = if self.spsc { 1 } else { TABLE_LEN };
        'retry: loop {
            if !self.spsc {
                for k in 0..slots {
                    let e = self.entry(side, k);
                    let v = e.load(Ordering::Acquire);
                    if mine(v) {
                        if e.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                            continue 'retry;
                        }
                        self.w32(ATTACHED[side]).fetch_add(1, Ordering::AcqRel);
                        return Ok(());
                    }
                }
            }
            for k in 0..slots {
                let e = self.entry(side, k);
                let v = e.load(Ordering::Acquire);
                let (pid, count) = ((v >> 32) as u32, v as u32);
                if count > 0 && sys::process_alive(pid) {
                    if self.spsc {
                        let who = if side == PRODUCERS { "producer" } else { "consumer" };
                        return Err(Error::AlreadyExists(format!(
                            "{}: the single-{who} channel already has a {who} (pid {pid})",
                            self.seg.name()
                        )));
                    }
                    continue;
                }
                if e.compare_exchange(v, (u64::from(me) << 32) | 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue 'retry;
                }
                // A dead process's handles no longer count.
                self.sub_attached(side, count);
                self.w32(ATTACHED[side]).fetch_add(1, Ordering::AcqRel);
                self.w32(HAD[side]).store(1, Ordering::Release);
                return Ok(());
            }
            return Err(Error::Unsupported("more than 32 processes on one side of a shared-memory channel"));
        }
    }

    /// Forgets one handle of this process on `side`.
    fn detach(&self, side: usize) {
        let me = sys::pid();
        for k in 0..TABLE_LEN.min(if self.spsc { 1 } else { TABLE_LEN }) {
            let e = self.entry(side, k);
            let v = e.load(Ordering::Acquire);
            if (v >> 32) as u32 == me && v as u32 > 0 {
                let new = if v as u32 == 1 { 0 } else { v - 1 };
                if e.compare_exchange(v, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.sub_attached(side, 1);
                    return;
                }
            }
        }
    }

    /// An SPSC end's cursor (`None` for the other flavours).
    fn cursor(&self, side: usize) -> Result<Option<Cursor>> {
        if !self.spsc {
            return Ok(None);
        }
        let c = if side == PRODUCERS { Cursor::producer(self) } else { Cursor::consumer(self) };
        c.map(Some).map_err(|why| Error::Corrupted(format!("channel {:?}: {why}", self.seg.name())))
    }

    /// Whether every process that attached to `side` is gone. Cheap (one
    /// load) unless `scan`, which also checks each recorded pid is alive
    /// and forgets the dead ones.
    pub(super) fn gone(&self, side: usize, scan: bool) -> bool {
        if self.w32(HAD[side]).load(Ordering::Acquire) == 0 {
            return false;
        }
        if self.w32(ATTACHED[side]).load(Ordering::Acquire) == 0 {
            return true;
        }
        if !scan {
            return false;
        }
        let mut any = false;
        for k in 0..TABLE_LEN {
            let e = self.entry(side, k);
            let v = e.load(Ordering::Acquire);
            let (pid, count) = ((v >> 32) as u32, v as u32);
            if count == 0 {
                continue;
            }
            if sys::process_alive(pid) {
                any = true;
            } else if e.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.sub_attached(side, count);
            }
        }
        !any
    }
}

impl RingMem for Ring {
    type W64 = AtomicU64;
    type W32 = AtomicU32;

    fn slots(&self) -> u64 {
        self.slots
    }
    fn spsc(&self) -> bool {
        self.spsc
    }
    fn head(&self) -> &AtomicU64 {
        self.w64(HEAD)
    }
    fn tail(&self) -> &AtomicU64 {
        self.w64(TAIL)
    }
    fn seq(&self, i: usize) -> &AtomicU64 {
        // i < slots and the slots fit the mapping (validated at open).
        self.map.u64_at(self.slot(i)).expect("slot inside the validated mapping")
    }
    fn claim(&self, i: usize) -> &AtomicU32 {
        self.map.u32_at(self.slot(i) + 8).expect("slot inside the validated mapping")
    }
    fn len(&self, i: usize) -> &AtomicU32 {
        self.map.u32_at(self.slot(i) + 12).expect("slot inside the validated mapping")
    }
    fn write(&self, i: usize, data: &[u8]) {
        let ok = self.map.write(self.slot(i) + SLOT_HEADER, data);
        debug_assert!(ok, "length checked against the maximum");
    }
    fn read(&self, i: usize, out: &mut [u8]) {
        let ok = self.map.read(self.slot(i) + SLOT_HEADER, out);
        debug_assert!(ok, "length checked against the maximum");
    }
    fn max(&self) -> usize {
        self.max
    }
    fn alive(&self, pid: u32) -> bool {
        sys::process_alive(pid)
    }
}

pub(super) fn corrupt(why: &str) -> Fault {
    Fault::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("corrupted shared-memory channel: {why}"),
    ))
}

/// A named shared-memory channel: the segment and its ring, from which
/// senders and receivers are made.
///
/// # Examples
///
/// ```
/// use ipckit::shm::channel::{Config, ShmChannel};
/// let name = format!("doc-chan-{}", std::process::id());
/// let chan = ShmChannel::create(&name, &Config::mpmc(8, 256))?;
/// let mut tx = chan.sender()?;
/// // Another process would do `ShmChannel::open(&name)?.receiver()?`.
/// let mut rx = ShmChannel::open(&name)?.receiver()?;
/// tx.send(&b"hello"[..])?;
/// assert_eq!(rx.recv()?.bytes(), b"hello");
/// ShmChannel::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ShmChannel {
    ring: Arc<Ring>,
}

impl ShmChannel {
    /// Creates segment `name` holding an empty ring as `config` says.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`]; [`Error::InvalidName`] when the slot count is
    /// over [`MAX_SLOTS`] or the maximum message over 1 GiB.
    pub fn create(name: &str, config: &Config) -> Result<ShmChannel> {
        let rendezvous = config.slots == 0;
        let slots = if rendezvous {
            super::rendezvous::OFFERS
        } else {
            config.slots.max(2).checked_next_power_of_two().unwrap_or(usize::MAX)
        };
        let max = config.max_message.max(1);
        if slots > MAX_SLOTS || max > 1 << 30 {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                why: "a channel has at most 2^24 slots of at most 1 GiB",
            });
        }
        let slot_size = align64(slot_header(rendezvous) + max);
        let size = slots
            .checked_mul(slot_size)
            .and_then(|s| s.checked_add(SLOTS - U))
            .filter(|&s| s <= super::MAX_SEGMENT)
            .ok_or(Error::InvalidName { name: name.to_owned(), why: "the ring would exceed 1 TiB" })?;
        let seg = Segment::create_kind(name, size, config.mode, SegmentKind::Ring)?;
        let map = seg.mapping().clone();
        let spsc = !rendezvous && config.flavor == Flavor::Spsc;
        let ring = Ring { seg, map, slots: slots as u64, max, slot_size, spsc, rendezvous };
        let flavor = if rendezvous { FLAVOR_RENDEZVOUS } else { u32::from(spsc) };
        ring.w32(CFG_SLOTS).store(slots as u32, Ordering::Relaxed);
        ring.w32(CFG_MAX).store(max as u32, Ordering::Relaxed);
        ring.w32(CFG_SLOT_SIZE).store(slot_size as u32, Ordering::Relaxed);
        ring.w32(CFG_FLAVOR).store(flavor, Ordering::Relaxed);
        if !rendezvous {
            for i in 0..slots {
                ring.seq(i).store(i as u64, Ordering::Relaxed);
            }
        }
        ring.w32(CFG_READY).store(1, Ordering::Release);
        Ok(ShmChannel { ring: Arc::new(ring) })
    }

    /// Opens the channel in segment `name`, checking its shape.
    ///
    /// # Errors
    ///
    /// As [`Segment::open`]; [`Error::Corrupted`] when the segment is not a
    /// channel or its configuration is not valid.
    pub fn open(name: &str) -> Result<ShmChannel> {
        ShmChannel::from_segment(Segment::open_kind(name, SegmentKind::Ring)?)
    }

    /// Checks the shape of the ring in `seg` (opened, or adopted from a handle).
    fn from_segment(seg: Segment) -> Result<ShmChannel> {
        let name = seg.name().to_owned();
        let bad = |why: String| Error::Corrupted(format!("channel {name:?}: {why}"));
        let map = seg.mapping().clone();
        if map.len() < SLOTS {
            return Err(bad("too small for a ring header".into()));
        }
        let w = |off| map.u32_at(off).expect("checked against SLOTS").load(Ordering::Acquire);
        let until = Instant::now() + Duration::from_secs(1);
        while w(CFG_READY) != 1 {
            if Instant::now() > until {
                return Err(bad("never became ready (its creator died while creating it?)".into()));
            }
            std::thread::yield_now();
        }
        let (slots, max, slot_size, flavor) =
            (w(CFG_SLOTS) as usize, w(CFG_MAX) as usize, w(CFG_SLOT_SIZE) as usize, w(CFG_FLAVOR));
        if !slots.is_power_of_two() || !(2..=MAX_SLOTS).contains(&slots) {
            return Err(bad(format!("{slots} slots is not a power of two from 2 to 2^24")));
        }
        if flavor > FLAVOR_RENDEZVOUS {
            return Err(bad(format!("unknown flavour {flavor}")));
        }
        let rendezvous = flavor == FLAVOR_RENDEZVOUS;
        if max == 0 || max > 1 << 30 || slot_size != align64(slot_header(rendezvous) + max) {
            return Err(bad(format!("slot size {slot_size} does not fit messages of {max} bytes")));
        }
        match slots.checked_mul(slot_size).and_then(|s| s.checked_add(SLOTS)) {
            Some(end) if end <= map.len() => {}
            _ => return Err(bad(format!("{slots} slots of {slot_size} bytes do not fit the segment"))),
        }
        let ring = Ring { seg, map, slots: slots as u64, max, slot_size, spsc: flavor == 1, rendezvous };
        Ok(ShmChannel { ring: Arc::new(ring) })
    }

    /// Opens channel `name`, creating it (as [`ShmChannel::create`]) if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`ShmChannel::create`] and [`ShmChannel::open`].
    pub fn open_or_create(name: &str, config: &Config) -> Result<ShmChannel> {
        match ShmChannel::create(name, config) {
            Err(Error::AlreadyExists(_)) => ShmChannel::open(name),
            other => other,
        }
    }

    /// Removes segment `name` (as [`Segment::remove`]); attached ends keep working.
    ///
    /// # Errors
    ///
    /// As [`Segment::remove`].
    pub fn remove(name: &str) -> Result<()> {
        Segment::remove(name)
    }

    /// A new sending end, attached as a producer of this process.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] for an SPSC channel that has a live
    /// producer; [`Error::Unsupported`] when 32 processes already produce.
    pub fn sender(&self) -> Result<ShmSender> {
        let cursor = self.ring.cursor(PRODUCERS)?;
        self.ring.attach(PRODUCERS)?;
        let mode = WaitMode::default();
        self.ring.sleepy(PRODUCERS, 1);
        Ok(ShmSender { ring: self.ring.clone(), mode, last_check: Instant::now(), cursor })
    }

    /// A new receiving end, attached as a consumer of this process.
    ///
    /// # Errors
    ///
    /// As [`ShmChannel::sender`], for consumers.
    pub fn receiver(&self) -> Result<ShmReceiver> {
        let cursor = self.ring.cursor(CONSUMERS)?;
        self.ring.attach(CONSUMERS)?;
        self.ring.sleepy(CONSUMERS, 1);
        Ok(ShmReceiver {
            ring: self.ring.clone(),
            mode: WaitMode::default(),
            last_check: Instant::now(),
            buf: Vec::new(),
            cursor,
        })
    }

    /// How many messages the ring holds: 0 for a rendezvous channel.
    pub fn capacity(&self) -> usize {
        if self.ring.rendezvous {
            0
        } else {
            self.ring.slots as usize
        }
    }

    /// Whether this is a rendezvous (capacity 0) channel.
    pub fn is_rendezvous(&self) -> bool {
        self.ring.rendezvous
    }

    /// The largest message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.ring.max
    }

    /// MPMC or SPSC.
    pub fn flavor(&self) -> Flavor {
        if self.ring.spsc {
            Flavor::Spsc
        } else {
            Flavor::Mpmc
        }
    }

    /// About how many messages are queued (a snapshot; never over the
    /// capacity; for a rendezvous channel, how many senders are offering).
    pub fn len(&self) -> usize {
        if self.ring.rendezvous {
            return super::rendezvous::offered(&self.ring);
        }
        let head = self.ring.head().load(Ordering::Acquire);
        let tail = self.ring.tail().load(Ordering::Acquire);
        (tail.saturating_sub(head) as usize).min(self.capacity())
    }

    /// Whether no message is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segment underneath.
    pub fn segment(&self) -> &Segment {
        &self.ring.seg
    }
}

/// The channel travels as its segment's descriptor plus its name; the
/// receiving process validates the ring's shape again, and attaches its
/// own ends with [`ShmChannel::sender`] / [`ShmChannel::receiver`]. Ends
/// already made in this process stay here.
impl Transferable for ShmChannel {
    fn into_handle(self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::ShmChannel, 1);
        meta.pending = self.ring.seg.name().as_bytes().to_vec();
        Ok(Handle { meta, fds: vec![self.ring.seg.dup_fd()?] })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::ShmChannel)?;
        let Handle { meta, fds } = handle;
        let name = String::from_utf8(meta.pending)
            .map_err(|_| Error::BadHandle("shared-memory channel name".into()))?;
        let fd = fds.into_iter().next().expect("checked count");
        ShmChannel::from_segment(Segment::adopt(name, fd, SegmentKind::Ring)?)
    }
}

/// The sending end of a [`ShmChannel`]. Several may exist (MPMC), in
/// any processes; each may move to another thread.
#[derive(Debug)]
pub struct ShmSender {
    ring: Arc<Ring>,
    mode: WaitMode,
    last_check: Instant,
    /// SPSC: this producer's position and cached `head`.
    cursor: Option<Cursor>,
}

/// Keeps a side's count of ends that may sleep right when `from` becomes `to`.
fn switch_mode(ring: &Ring, side: usize, from: WaitMode, to: WaitMode) {
    match (from == WaitMode::Spin, to == WaitMode::Spin) {
        (true, false) => ring.sleepy(side, 1),
        (false, true) => ring.sleepy(side, -1),
        _ => {}
    }
}

impl ShmSender {
    /// Sets how this end waits while the ring is full, or for a rendezvous
    /// channel until a receiver takes the message (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        self.set_wait(mode);
        self
    }

    /// The largest message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.ring.max
    }

    pub(super) fn set_wait(&mut self, mode: WaitMode) {
        switch_mode(&self.ring, PRODUCERS, self.mode, mode);
        self.mode = mode;
    }

    /// Whether every receiver that ever attached is gone (checking the
    /// recorded pids are alive).
    pub(super) fn peer_gone(&self) -> bool {
        self.ring.gone(CONSUMERS, true)
    }

    send_forms!();

    /// Sends the bytes of `data` (no allocation), waiting at most `timeout`
    /// (`None`: as long as it takes).
    ///
    /// # Errors
    ///
    /// As [`ShmSender::send_timeout`], handing nothing back.
    pub fn send_bytes(
        &mut self,
        data: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), crate::SendTimeoutError<()>> {
        // A free slot needs no deadline: the clock is read only when waiting.
        if self.send_now(data) {
            return Ok(());
        }
        let deadline = timeout.map_or(Deadline::Never, Deadline::after);
        self.send_slice(data, deadline).map_err(|f| crate::SendTimeoutError::from_fault(f, ()))
    }

    /// One attempt to put `data` into a ring slot at once; `false` when
    /// that is not simply possible (full, busy, anything to report, or a
    /// rendezvous channel): then the caller takes the slow path.
    fn send_now(&mut self, data: &[u8]) -> bool {
        let ring = &*self.ring;
        if ring.rendezvous || data.len() > ring.max || ring.gone(CONSUMERS, false) {
            return false;
        }
        let pushed = match &mut self.cursor {
            Some(c) => ring::spsc_push(ring, c, data),
            None => ring::push(ring, sys::pid(), data, false),
        };
        if pushed == Push::Sent {
            ring.not_empty().notify();
            return true;
        }
        false
    }

    fn send_inner(&mut self, msg: &Message, deadline: Deadline) -> Result<(), Fault> {
        if !msg.handles().is_empty() {
            return Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "handles cannot travel through shared memory",
            )));
        }
        self.send_slice(msg.bytes(), deadline)
    }

    pub(super) fn send_slice(&mut self, data: &[u8], deadline: Deadline) -> Result<(), Fault> {
        let ring = &*self.ring;
        if data.len() > ring.max {
            return Err(Fault::TooLarge { len: data.len(), max: ring.max });
        }
        if ring.gone(CONSUMERS, false) {
            return Err(Fault::Disconnected);
        }
        if ring.rendezvous {
            return super::rendezvous::send(ring, data, self.mode, deadline);
        }
        let me = sys::pid();
        let cursor = &mut self.cursor;
        wait_event(ring.not_full(), self.mode, deadline, &mut self.last_check, |check| {
            let pushed = match cursor {
                Some(c) => ring::spsc_push(ring, c, data),
                None => ring::push(ring, me, data, check),
            };
            match pushed {
                Push::Sent => {
                    ring.not_empty().notify();
                    Attempt::Ready(Ok(()))
                }
                Push::Corrupt(why) => Attempt::Ready(Err(corrupt(why))),
                _ if ring.gone(CONSUMERS, check) => Attempt::Ready(Err(Fault::Disconnected)),
                Push::Full => Attempt::Wait,
                Push::Busy => Attempt::Busy,
            }
        })
    }
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        if self.mode != WaitMode::Spin {
            self.ring.sleepy(PRODUCERS, -1);
        }
        self.ring.detach(PRODUCERS);
        // Receivers asleep on an empty ring re-check whether anyone is left.
        self.ring.not_empty().notify_all();
    }
}

/// The receiving end of a [`ShmChannel`]. Several may exist (MPMC), in
/// any processes; each may move to another thread.
#[derive(Debug)]
pub struct ShmReceiver {
    ring: Arc<Ring>,
    mode: WaitMode,
    last_check: Instant,
    buf: Vec<u8>,
    /// SPSC: this consumer's position and cached `tail`.
    cursor: Option<Cursor>,
}

impl ShmReceiver {
    /// Sets how this end waits while the ring is empty (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        self.set_wait(mode);
        self
    }

    /// The largest message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.ring.max
    }

    pub(super) fn set_wait(&mut self, mode: WaitMode) {
        switch_mode(&self.ring, CONSUMERS, self.mode, mode);
        self.mode = mode;
    }

    recv_forms!(Message);

    /// Receives the next message into `buf` (no allocation once `buf` is
    /// big enough), waiting at most `timeout` (`None`: as long as it takes).
    ///
    /// # Errors
    ///
    /// As [`ShmReceiver::recv_timeout`].
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), crate::RecvTimeoutError> {
        // A published message needs no deadline: the clock is read only when waiting.
        if let Some(r) = self.recv_now(buf) {
            return r.map_err(crate::RecvTimeoutError::from_fault);
        }
        let deadline = timeout.map_or(Deadline::Never, Deadline::after);
        self.recv_vec(buf, deadline).map_err(crate::RecvTimeoutError::from_fault)
    }

    /// One attempt to take a message out of a ring slot at once; `None`
    /// when there is none to take simply (then the caller takes the slow
    /// path, which also reports disconnection and corruption).
    fn recv_now(&mut self, buf: &mut Vec<u8>) -> Option<Result<(), Fault>> {
        let ring = &*self.ring;
        if ring.rendezvous {
            return None;
        }
        let popped = match &mut self.cursor {
            Some(c) => ring::spsc_pop(ring, c, buf, false),
            None => ring::pop(ring, sys::pid(), buf, false),
        };
        match popped {
            Pop::Got => {
                ring.not_full().notify();
                Some(Ok(()))
            }
            Pop::TooLong(len) => {
                ring.not_full().notify();
                Some(Err(Fault::Frame(FrameError::TooLarge { len, max: ring.max })))
            }
            _ => None,
        }
    }

    fn recv_inner(&mut self, deadline: Deadline) -> Result<Message, Fault> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.recv_vec(&mut buf, deadline);
        match r {
            Ok(()) => Ok(Message::new(buf)),
            Err(e) => {
                self.buf = buf;
                Err(e)
            }
        }
    }

    pub(super) fn recv_vec(&mut self, buf: &mut Vec<u8>, deadline: Deadline) -> Result<(), Fault> {
        let ring = &*self.ring;
        if ring.rendezvous {
            return super::rendezvous::recv(ring, buf, self.mode, deadline, &mut self.last_check);
        }
        let me = sys::pid();
        let cursor = &mut self.cursor;
        let mut pop = |buf: &mut Vec<u8>, repair: bool| match cursor {
            Some(c) => ring::spsc_pop(ring, c, buf, repair),
            None => ring::pop(ring, me, buf, repair),
        };
        wait_event(ring.not_empty(), self.mode, deadline, &mut self.last_check, |check| {
            let got = |r: Pop| match r {
                Pop::Got => {
                    ring.not_full().notify();
                    Some(Ok(()))
                }
                Pop::TooLong(len) => {
                    ring.not_full().notify();
                    Some(Err(Fault::Frame(FrameError::TooLarge { len, max: ring.max })))
                }
                Pop::Corrupt(why) => Some(Err(corrupt(why))),
                Pop::Empty | Pop::Busy => None,
            };
            let r = pop(buf, check);
            if let Some(done) = got(r) {
                return Attempt::Ready(done);
            }
            let busy = r == Pop::Busy;
            if ring.gone(PRODUCERS, check) {
                // Whatever the last producer published before leaving is
                // visible now; a slot a dead one left half-written is skipped.
                let r = pop(buf, true);
                return match got(r) {
                    Some(done) => Attempt::Ready(done),
                    None if r == Pop::Busy => Attempt::Busy,
                    None => Attempt::Ready(Err(Fault::Disconnected)),
                };
            }
            if busy {
                Attempt::Busy
            } else {
                Attempt::Wait
            }
        })
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if self.mode != WaitMode::Spin {
            self.ring.sleepy(CONSUMERS, -1);
        }
        self.ring.detach(CONSUMERS);
        self.ring.not_full().notify_all();
    }
}
