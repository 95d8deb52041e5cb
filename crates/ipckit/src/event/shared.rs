//! A named event in shared memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Fault, RecvError, RecvTimeoutError, Result, TryRecvError};
use crate::message::{Handle, Transferable};
use crate::shm::{Segment, SegmentKind, HEADER_LEN};
use crate::sys::{self, Deadline, Mapping};
use crate::wire::{HandleKind, HandleMeta};

/// How an [`Event`] counts notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventMode {
    /// Like a Windows auto-reset event: a notification is one "signalled"
    /// flag (notifications before a wait coalesce); the one waiter that
    /// takes it resets it.
    AutoReset = 0,
    /// Stays signalled until [`Event::reset`]: every wait returns at once.
    ManualReset = 1,
    /// Like `eventfd(EFD_SEMAPHORE)`: every notification is a token; each
    /// wait takes one.
    Counting = 2,
}

const MODE: usize = HEADER_LEN;
const COUNT: usize = HEADER_LEN + 4;
const GEN: usize = HEADER_LEN + 8;
const SEQ: usize = HEADER_LEN + 12;
const WAITERS: usize = HEADER_LEN + 16;
const SIZE: usize = 64;
const NAP: Duration = Duration::from_millis(50);

/// A cross-process event, named and permission-checked like every ipckit
/// object, and handed to children or over sockets like any handle.
///
/// `notify_one` releases one waiter (or, with nobody waiting, leaves the
/// event signalled for the next); `notify_all` releases every process and
/// thread waiting at that moment. The fast path is atomics only: a futex
/// wake is made only when a waiter has announced itself.
///
/// # Examples
///
/// ```
/// use ipckit::event::{Event, EventMode};
/// let name = format!("doc-event-{}", std::process::id());
/// let ev = Event::create(&name, EventMode::Counting, 0o600)?;
/// ev.notify_one();
/// ev.notify_one();
/// assert!(ev.try_wait().is_ok());
/// assert!(ev.try_wait().is_ok());
/// assert!(ev.try_wait().is_err()); // no tokens left
/// Event::remove(&name)?;
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    seg: Segment,
    mode: EventMode,
}

fn word(m: &Mapping, off: usize) -> &AtomicU32 {
    m.u32_at(off).expect("event words are inside every event segment")
}

impl Event {
    /// Creates event `name` in `mode`, with permission bits `perm` (e.g. `0o600`).
    ///
    /// # Errors
    ///
    /// As [`Segment::create`].
    pub fn create(name: &str, mode: EventMode, perm: u32) -> Result<Event> {
        let seg = Segment::create_kind(name, SIZE, perm, SegmentKind::Event)?;
        word(seg.mapping(), MODE).store(mode as u32, Ordering::Release);
        Ok(Event { seg, mode })
    }

    /// Opens event `name` (read and write permission needed).
    ///
    /// # Errors
    ///
    /// As [`Segment::open`]; [`Error::Corrupted`] for an unknown mode.
    pub fn open(name: &str) -> Result<Event> {
        Event::from_segment(Segment::open_kind(name, SegmentKind::Event)?)
    }

    /// Opens event `name`, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`Event::create`] and [`Event::open`].
    pub fn open_or_create(name: &str, mode: EventMode, perm: u32) -> Result<Event> {
        match Event::create(name, mode, perm) {
            Err(Error::AlreadyExists(_)) => Event::open(name),
            other => other,
        }
    }

    /// Removes event `name` (owner or root); processes that have it keep using it.
    ///
    /// # Errors
    ///
    /// As [`Segment::remove`].
    pub fn remove(name: &str) -> Result<()> {
        Segment::remove(name)
    }

    fn from_segment(seg: Segment) -> Result<Event> {
        let mode = match word(seg.mapping(), MODE).load(Ordering::Acquire) {
            0 => EventMode::AutoReset,
            1 => EventMode::ManualReset,
            2 => EventMode::Counting,
            m => return Err(Error::Corrupted(format!("event {:?}: unknown mode {m}", seg.name()))),
        };
        Ok(Event { seg, mode })
    }

    /// The event's mode.
    pub fn mode(&self) -> EventMode {
        self.mode
    }

    fn w(&self, off: usize) -> &AtomicU32 {
        word(self.seg.mapping(), off)
    }

    /// Wakes up to `n` sleepers (only if any announced itself).
    fn wake(&self, n: u32) {
        self.w(SEQ).fetch_add(1, Ordering::SeqCst);
        if self.w(WAITERS).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.w(SEQ), n);
        }
    }

    /// Signals the event once: one waiter is released (auto-reset,
    /// counting), or all of them, now and later until [`Event::reset`] (manual).
    pub fn notify_one(&self) {
        match self.mode {
            EventMode::ManualReset | EventMode::AutoReset => self.w(COUNT).store(1, Ordering::SeqCst),
            EventMode::Counting => {
                let _ = self.w(COUNT).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_add(1));
            }
        }
        self.wake(if self.mode == EventMode::ManualReset { u32::MAX } else { 1 });
    }

    /// Releases every waiter waiting now (manual-reset: and sets the event).
    pub fn notify_all(&self) {
        match self.mode {
            EventMode::ManualReset => self.w(COUNT).store(1, Ordering::SeqCst),
            _ => {
                self.w(GEN).fetch_add(1, Ordering::SeqCst);
            }
        }
        self.wake(u32::MAX);
    }

    /// Clears a manual-reset event (and drops the pending notification or
    /// tokens of the other modes).
    pub fn reset(&self) {
        self.w(COUNT).store(0, Ordering::SeqCst);
    }

    /// Pending tokens (counting), or 1 if signalled (the other modes).
    pub fn value(&self) -> u32 {
        self.w(COUNT).load(Ordering::SeqCst)
    }

    /// Takes a notification if one is there.
    fn consume(&self, gen: u32) -> bool {
        if self.w(GEN).load(Ordering::SeqCst) != gen {
            return true;
        }
        let count = self.w(COUNT);
        match self.mode {
            EventMode::ManualReset => count.load(Ordering::SeqCst) != 0,
            EventMode::AutoReset => count.compare_exchange(1, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok(),
            EventMode::Counting => {
                count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)).is_ok()
            }
        }
    }

    fn wait_inner(&self, deadline: Deadline) -> Result<(), Fault> {
        let gen = self.w(GEN).load(Ordering::SeqCst);
        loop {
            if self.consume(gen) {
                return Ok(());
            }
            if deadline.expired() {
                return Err(Fault::Timeout);
            }
            let seq = self.w(SEQ).load(Ordering::SeqCst);
            self.w(WAITERS).fetch_add(1, Ordering::SeqCst);
            if self.consume(gen) {
                self.w(WAITERS).fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            let mut nap = NAP;
            if let Deadline::At(at) = deadline {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            if !nap.is_zero() {
                sys::futex_wait(self.w(SEQ), seq, Some(nap));
            }
            self.w(WAITERS).fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until notified.
    ///
    /// # Errors
    ///
    /// None today (the error type is shared with the other four-form waits).
    pub fn wait(&self) -> Result<(), RecvError> {
        self.wait_inner(Deadline::Never).map_err(RecvError::from_fault)
    }

    /// Takes a notification if one is pending.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when none is.
    pub fn try_wait(&self) -> Result<(), TryRecvError> {
        self.wait_inner(Deadline::Now).map_err(TryRecvError::from_fault)
    }

    /// Waits at most `timeout` for a notification.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), RecvTimeoutError> {
        self.wait_inner(Deadline::after(timeout)).map_err(RecvTimeoutError::from_fault)
    }

    /// Waits until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn wait_deadline(&self, deadline: Instant) -> Result<(), RecvTimeoutError> {
        self.wait_inner(Deadline::At(deadline)).map_err(RecvTimeoutError::from_fault)
    }
}

impl Transferable for Event {
    fn into_handle(self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::Event, 1);
        meta.pending = self.seg.name().as_bytes().to_vec();
        Ok(Handle { meta, fds: vec![self.seg.dup_fd()?] })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Event)?;
        let Handle { meta, fds } = handle;
        let name = String::from_utf8(meta.pending).map_err(|_| Error::BadHandle("event name".into()))?;
        let fd = fds.into_iter().next().expect("checked count");
        Event::from_segment(Segment::adopt(name, fd, SegmentKind::Event)?)
    }
}
