//! System V-style semaphore sets, in shared memory.
//!
//! Layout (after the segment header): a fixed header; the semaphores (value
//! and last pid, 8 bytes each); a table of blocked waiters (for the
//! `semncnt`/`semzcnt` counts and to know whether a change must wake
//! anyone); the undo records (a pid, a count of non-zero adjustments and one
//! adjustment per semaphore); and a redo journal.
//!
//! Every change is computed on a private copy, written to the journal, made
//! valid with one store (the commit), then applied. A process killed while
//! holding the lock leaves either nothing or a complete journal behind; the
//! next process takes the lock from the dead and replays it, so an
//! operation is never half applied.
//!
//! One operation on one semaphore without undo (the common P or V) does not
//! take the lock while no process holds undo adjustments: it is one
//! compare-and-swap on the semaphore's value word. The lock holder first
//! freezes every semaphore it reads or writes by setting the value word's
//! busy bit ([`BUSY`]), so those semaphores stand still for it; the
//! lock-free path leaves a frozen semaphore alone and takes the lock
//! instead. A commit writes the new values still frozen and thaws them only
//! once the journal is retired, so a replay after the holder's death never
//! overwrites a lock-free change; taking the lock from the dead thaws every
//! semaphore. Waking stays exact: a blocked caller announces itself (SeqCst)
//! and then looks at the value again before sleeping, and a lock-free
//! change reads the announcements (SeqCst) after its compare-and-swap.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock::{now_secs, RobustLock, Spin, Taken, Yield};
use crate::error::{Error, Fault, Result};
use crate::perm::{self, Access, Caller, Owner};
use crate::shm::{Segment, SegmentKind, HEADER_LEN};
use crate::sys::{self, Deadline, Mapping};

/// The largest value a semaphore can hold (`SEMVMX`).
pub const SEM_VALUE_MAX: u16 = 32767;
/// The most operations one [`SemaphoreSet::op`] call takes (`SEMOPM`).
pub const SEM_OPS_MAX: usize = 500;
/// The most semaphores in one set (`SEMMSL`).
pub const SEM_COUNT_MAX: usize = 32000;
/// How many processes can hold undo adjustments on one set at once.
pub const SEM_UNDO_RECORDS: usize = 64;

const VMX: i32 = SEM_VALUE_MAX as i32;
/// An undo adjustment stays within `-(SEMAEM + 1)..=SEMAEM`, as the kernel's does.
const AEM: i32 = VMX;
/// Blocked callers counted in `semncnt`/`semzcnt` (more still wait, uncounted).
const WAIT_SLOTS: usize = 128;
const NAP: Duration = Duration::from_millis(10);
/// How long a call that does not block (`try_op`, queries, control) waits
/// for the lock before calling the set corrupted: holders never sleep
/// holding it, so only a stopped holder or a stray write can keep it longer.
const PATIENCE: Duration = Duration::from_secs(5);
/// A journal entry that means "clear every undo record" (for `SETALL`).
const CLEAR_UNDO: u32 = u32::MAX;
/// Set in a semaphore's value word while the lock holder works on it: the
/// lock-free path (one compare-and-swap on the value word, see
/// [`SemaphoreSet::fast_op`]) leaves such a semaphore alone and takes the
/// lock instead, so a locked operation sees its semaphores stand still.
const BUSY: u32 = 1 << 31;
/// How many changes of its value a blocked lock-free caller watches for
/// (spinning or yielding) before it registers and sleeps.
const FAST_WATCHES: u32 = 4;

// Set header (offsets from the start of the mapping).
const S: usize = HEADER_LEN;
const LOCK: usize = S;
const LOCK_WAITERS: usize = S + 4;
const CHANGE: usize = S + 8;
const SPILL: usize = S + 12;
const REMOVED: usize = S + 16;
const NSEMS: usize = S + 20;
const NUNDO: usize = S + 24;
const NSLOTS: usize = S + 28;
const UID: usize = S + 32;
const GID: usize = S + 36;
const MODE: usize = S + 40;
const CUID: usize = S + 44;
const CGID: usize = S + 48;
const WAITING: usize = S + 52;
const USED: usize = S + 56;
const JLEN: usize = S + 60;
const JCAP: usize = S + 64;
const SCAN: usize = S + 68;
const OTIME: usize = S + 72;
const CTIME: usize = S + 80;
const SEMS: usize = S + 128;

/// Where everything of a set with `n` semaphores is.
#[derive(Clone, Copy, Debug)]
struct Layout {
    n: usize,
    waits: usize,
    undo: usize,
    rec: usize,
    journal: usize,
    jcap: usize,
    end: usize,
}

impl Layout {
    fn new(n: usize) -> Layout {
        let waits = SEMS + 8 * n;
        let undo = waits + 8 * WAIT_SLOTS;
        let rec = 8 + 4 * n;
        let journal = undo + SEM_UNDO_RECORDS * rec;
        // A semop touches at most n semaphores (value, pid, adjustment each)
        // plus its record; SETVAL clears one column of every record.
        let jcap = 3 * n + 4 * SEM_UNDO_RECORDS + 16;
        Layout { n, waits, undo, rec, journal, jcap, end: journal + 8 * jcap }
    }

    fn val(&self, i: usize) -> usize {
        SEMS + 8 * i
    }

    /// Whether `off` is a semaphore's value word.
    fn is_val(&self, off: usize) -> bool {
        off >= SEMS && off < self.waits && (off - SEMS) % 8 == 0
    }

    fn spid(&self, i: usize) -> usize {
        SEMS + 8 * i + 4
    }

    fn slot(&self, s: usize) -> usize {
        self.waits + 8 * s
    }

    fn rec_pid(&self, r: usize) -> usize {
        self.undo + r * self.rec
    }

    fn rec_nz(&self, r: usize) -> usize {
        self.undo + r * self.rec + 4
    }

    fn adj(&self, r: usize, i: usize) -> usize {
        self.undo + r * self.rec + 8 + 4 * i
    }

    /// Whether a journal entry may write at `off`.
    fn journaled(&self, off: u32) -> bool {
        let o = off as usize;
        off == CLEAR_UNDO || o == USED || (o >= SEMS && o < self.journal && o % 4 == 0)
    }
}

/// One operation of [`SemaphoreSet::op`], as `struct sembuf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemOp {
    /// Which semaphore (`sem_num`).
    pub index: usize,
    /// `sem_op`: > 0 adds (V); < 0 waits until the value is at least `-op`,
    /// then subtracts (P); 0 waits until the value is zero.
    pub op: i16,
    /// `SEM_UNDO`: when this process dies, the change is reversed.
    pub undo: bool,
}

impl SemOp {
    /// `sem_op = op` on semaphore `index`, without undo.
    pub fn new(index: usize, op: i16) -> SemOp {
        SemOp { index, op, undo: false }
    }

    /// P: wait until semaphore `index` is at least 1, then take 1.
    pub fn p(index: usize) -> SemOp {
        SemOp::new(index, -1)
    }

    /// V: add 1 to semaphore `index`.
    pub fn v(index: usize) -> SemOp {
        SemOp::new(index, 1)
    }

    /// Wait until semaphore `index` is zero.
    pub fn zero(index: usize) -> SemOp {
        SemOp::new(index, 0)
    }

    /// The same operation with `SEM_UNDO`.
    pub fn with_undo(mut self) -> SemOp {
        self.undo = true;
        self
    }
}

/// Why a [`SemaphoreSet`] operation failed (the `errno` of `semop(2)` or
/// `semctl(2)` each variant stands for is given). A failed operation
/// changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SemError {
    /// `EAGAIN` with `IPC_NOWAIT`: [`SemaphoreSet::try_op`] could not proceed at once.
    #[error("the semaphore operation would block")]
    WouldBlock,
    /// `EAGAIN` from `semtimedop(2)`: the deadline passed first.
    #[error("timed out waiting for the semaphores")]
    Timeout,
    /// `EIDRM`: the set was removed (also while waiting).
    #[error("the semaphore set was removed")]
    Removed,
    /// `EFBIG` (`semop`) or `EINVAL` (`semctl`): no semaphore with that index.
    #[error("semaphore {index} does not exist (the set has {count})")]
    BadIndex {
        /// The index asked for.
        index: usize,
        /// Semaphores in the set.
        count: usize,
    },
    /// `ERANGE`: a value would leave `0..=SEM_VALUE_MAX`, or an undo
    /// adjustment its range.
    #[error("semaphore {index}: {why}")]
    OutOfRange {
        /// The semaphore concerned.
        index: usize,
        /// What would go out of range.
        why: &'static str,
    },
    /// `E2BIG`: more than [`SEM_OPS_MAX`] operations in one call.
    #[error("{len} operations in one call, at most {max}")]
    TooManyOps {
        /// Operations given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `EINVAL`: the request itself is invalid (the message says why).
    #[error("invalid semaphore request: {0}")]
    Invalid(String),
    /// `EACCES`: the set's owner and mode do not allow this.
    #[error("semaphore set permission denied")]
    PermissionDenied,
    /// Too many processes hold undo adjustments on this set (the kernel
    /// would say `ENOMEM`); the operation was not done.
    #[error("the undo table is full: {0} processes hold undo adjustments on this set")]
    UndoFull(usize),
    /// The shared memory holds something no valid set can (the message says what).
    #[error("semaphore set corrupted: {0}")]
    Corrupted(String),
}

impl From<SemError> for Error {
    fn from(e: SemError) -> Error {
        match e {
            SemError::WouldBlock | SemError::Timeout => Error::Timeout,
            SemError::Removed => Error::NotFound("the semaphore set was removed".into()),
            SemError::PermissionDenied => Error::PermissionDenied("semaphore set".into()),
            SemError::Corrupted(why) => Error::Corrupted(why),
            other => Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, other)),
        }
    }
}

fn fault(f: Fault) -> SemError {
    match f {
        Fault::Timeout => SemError::Timeout,
        Fault::Disconnected => SemError::Removed,
        other => SemError::Invalid(format!("{other:?}")),
    }
}

/// `semctl(IPC_STAT)`: a set's size, owner, times and last users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemStat {
    /// Semaphores in the set (`sem_nsems`).
    pub count: usize,
    /// Owner and permission bits (changeable with [`SemaphoreSet::set`]).
    pub owner: Owner,
    /// The creator's uid and gid.
    pub creator: (u32, u32),
    /// Seconds since the epoch of the last successful operation (`sem_otime`), 0 if none.
    pub op_time: u64,
    /// Of creation or the last change of values, owner or mode (`sem_ctime`).
    pub change_time: u64,
    /// For each semaphore, the pid of the last process that operated on it (`GETPID`).
    pub last_pids: Vec<u32>,
    /// Processes that hold undo adjustments now.
    pub undo_records: usize,
}

/// `semctl(IPC_SET)`: what the owner may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemChange {
    /// New owner uid.
    pub uid: Option<u32>,
    /// New owner gid.
    pub gid: Option<u32>,
    /// New permission bits.
    pub mode: Option<u32>,
}

/// `GETNCNT` and `GETZCNT`: callers blocked on one semaphore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitCounts {
    /// Blocked waiting for the value to grow (`semncnt`).
    pub increase: usize,
    /// Blocked waiting for the value to be zero (`semzcnt`).
    pub zero: usize,
}

/// A named set of counting semaphores with the semantics of System V
/// `semget`, `semop` and `semctl`, kept in shared memory so that an
/// uncontended operation makes no system call.
///
/// - each semaphore holds `0..=SEM_VALUE_MAX`; [`SemOp`]s add (V), wait and
///   subtract (P) or wait for zero;
/// - the operations of one call are applied all or none, in order, exactly
///   as `semop(2)` does (later operations see earlier ones); the call blocks
///   until all can proceed, with `try_` (`IPC_NOWAIT`), `_timeout` and
///   `_deadline` forms; a call that fails changes nothing;
/// - undo (`SEM_UNDO`): each process that uses it has a record of
///   adjustments in the set; when it dies (`SIGKILL` included, zombies
///   count as dead) they are applied, clamped to `0..=SEM_VALUE_MAX` as the
///   kernel does, and the semaphores' last pid becomes the dead process's.
///   Since nothing can hook a process's exit, this happens lazily, but
///   before anyone can observe the difference: an operation first settles
///   the records of other processes that hold adjustments on the
///   semaphores it touches, value and stat queries settle all records, and
///   blocked callers look for dead processes at every 10 ms nap;
/// - a process killed in the middle of any operation leaves the set
///   consistent (see the module notes on the journal), and nobody waits on
///   a lock the dead held;
/// - the set persists until removed; removal wakes blocked callers with
///   [`SemError::Removed`].
///
/// Permission checks use the set's owner, group and mode (which the owner
/// may change) against the caller's kernel identity, as the kernel does:
/// operations that change a value need write ("alter") permission;
/// wait-for-zero alone, value queries and stat need read permission.
///
/// A handle records the pid of the process that opened it (so that the
/// lock needs no `getpid(2)`): after `fork(2)` the child must open the set
/// again rather than use an inherited handle.
///
/// Wakeups are not FIFO: a change that can let a blocked caller proceed (a
/// semaphore some caller waits to decrease is now positive, or one some
/// caller waits on for zero is now zero) wakes all of them, and each
/// re-checks its own operations; other changes wake nobody. Before it
/// sleeps, a blocked caller watches its semaphore's value for a short,
/// adaptive while (at most 20 us, only with more than one CPU online), so a
/// partner on another CPU hands over without a futex call; a caller that
/// can only run on one CPU, or whose spinning has not paid lately (the
/// scheduler keeps it and its partner on one CPU), yields it instead
/// (adaptively, twice at most), so a partner on the same CPU runs at once,
/// again without a futex call.
///
/// A single operation without undo ([`SemOp::p`], [`SemOp::v`], any other
/// `op` alone, or [`SemOp::zero`]) is one compare-and-swap (or load) on the semaphore
/// while no process holds undo adjustments on the set; everything else
/// takes the set's lock.
///
/// # Examples
///
/// ```
/// use ipckit::sysv::{SemOp, SemaphoreSet};
/// let name = format!("doc-sem-{}", std::process::id());
/// // Two semaphores, each starting at 1.
/// let set = SemaphoreSet::create(&name, 2, 1, 0o600)?;
/// // Take both at once (all or nothing), undone if this process dies.
/// set.op(&[SemOp::p(0).with_undo(), SemOp::p(1).with_undo()])?;
/// assert!(set.try_op(&[SemOp::p(0)]).is_err()); // would block
/// set.op(&[SemOp::v(0).with_undo(), SemOp::v(1).with_undo()])?;
/// assert_eq!(set.values()?, [1, 1]);
/// set.remove()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SemaphoreSet {
    seg: Segment,
    at: Layout,
    caller: Caller,
    me: u32,
    /// The adaptive spin of a blocked caller before it sleeps.
    spin: Spin,
    /// Then its adaptive yielding, for a partner on the same CPU.
    yielding: Yield,
}

/// The file mode that lets everyone who has any access map the set read-write.
fn file_mode(mode: u32) -> u32 {
    (0..3).map(|k| if (mode >> (3 * k)) & 7 != 0 { 6 << (3 * k) } else { 0 }).sum()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn corrupt(why: String) -> SemError {
    SemError::Corrupted(why)
}

impl SemaphoreSet {
    /// `semget(IPC_CREAT | IPC_EXCL)`: creates set `name` of `count`
    /// semaphores, each set to `initial`, owned by the caller with
    /// permission bits `mode`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`] (also for `count`
    /// outside `1..=SEM_COUNT_MAX` or `initial > SEM_VALUE_MAX`),
    /// [`Error::PermissionDenied`], [`Error::Io`].
    pub fn create(name: &str, count: usize, initial: u16, mode: u32) -> Result<SemaphoreSet> {
        if count == 0 || count > SEM_COUNT_MAX || initial > SEM_VALUE_MAX {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                why: "a set has 1..=32000 semaphores with values 0..=32767",
            });
        }
        let at = Layout::new(count);
        let seg =
            Segment::create_kind(name, at.end - HEADER_LEN, file_mode(mode & 0o777), SegmentKind::SemSet)?;
        let m = seg.mapping();
        let w = |off, v: u32| word(m, off).store(v, Ordering::Relaxed);
        w(NSEMS, count as u32);
        w(NUNDO, SEM_UNDO_RECORDS as u32);
        w(NSLOTS, WAIT_SLOTS as u32);
        w(JCAP, at.jcap as u32);
        w(UID, sys::euid());
        w(GID, sys::egid());
        w(CUID, sys::euid());
        w(CGID, sys::egid());
        w(MODE, mode & 0o777);
        for i in 0..count {
            w(at.val(i), u32::from(initial));
        }
        word64(m, CTIME).store(now_secs(), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        Ok(SemaphoreSet::attach(seg, at))
    }

    /// This process's handle on a validated set: its credentials and pid,
    /// fresh spin and yield state.
    fn attach(seg: Segment, at: Layout) -> SemaphoreSet {
        SemaphoreSet {
            seg,
            at,
            caller: Caller::current(),
            me: sys::pid(),
            spin: Spin::new(),
            yielding: Yield::new(),
        }
    }

    /// `semget`: opens set `name` for `access` (checked against its owner
    /// and mode now, and again on every operation): [`Access::Read`] to
    /// query and wait for zero, [`Access::Write`] to change values.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::Corrupted`].
    pub fn open(name: &str, access: Access) -> Result<SemaphoreSet> {
        let seg = Segment::open_kind(name, SegmentKind::SemSet)?;
        let m = seg.mapping();
        let r = |off| word(m, off).load(Ordering::Acquire) as usize;
        let n = r(NSEMS);
        let bad = |why: &str| Err(Error::Corrupted(format!("semaphore set {name:?}: {why}")));
        if n == 0 || n > SEM_COUNT_MAX {
            return bad("its semaphore count is out of range");
        }
        let at = Layout::new(n);
        if r(NUNDO) != SEM_UNDO_RECORDS || r(NSLOTS) != WAIT_SLOTS || r(JCAP) != at.jcap {
            return bad("its table sizes are not this build's");
        }
        if at.end > m.len() {
            return bad("its semaphore count does not fit its segment");
        }
        let set = SemaphoreSet::attach(seg, at);
        if !perm::allowed(&set.owner(), &set.caller, access) {
            return Err(Error::PermissionDenied(name.to_owned()));
        }
        Ok(set)
    }

    /// `semget(IPC_CREAT)`: opens set `name`, creating it as
    /// [`SemaphoreSet::create`] does if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`SemaphoreSet::create`] and [`SemaphoreSet::open`];
    /// [`Error::InvalidName`] if the existing set has fewer than `count`
    /// semaphores (`EINVAL`).
    pub fn open_or_create(name: &str, count: usize, initial: u16, mode: u32) -> Result<SemaphoreSet> {
        match SemaphoreSet::create(name, count, initial, mode) {
            Err(Error::AlreadyExists(_)) => {
                let set = SemaphoreSet::open(name, Access::ReadWrite)?;
                if set.count() < count {
                    return Err(Error::InvalidName {
                        name: name.to_owned(),
                        why: "the existing set has fewer semaphores",
                    });
                }
                Ok(set)
            }
            other => other,
        }
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    /// How many semaphores the set has (`sem_nsems`).
    pub fn count(&self) -> usize {
        self.at.n
    }

    fn map(&self) -> &Mapping {
        self.seg.mapping()
    }

    fn w(&self, off: usize) -> &AtomicU32 {
        word(self.map(), off)
    }

    fn owner(&self) -> Owner {
        Owner {
            uid: self.w(UID).load(Ordering::Relaxed),
            gid: self.w(GID).load(Ordering::Relaxed),
            mode: self.w(MODE).load(Ordering::Relaxed) & 0o777,
        }
    }

    fn lock(&self, deadline: Deadline) -> Result<Guard<'_>, SemError> {
        let lock = RobustLock { word: self.w(LOCK), waiters: self.w(LOCK_WAITERS) };
        let taken = lock.lock_as(self.me, deadline).map_err(fault)?;
        let g = Guard { s: self, lock, wake: std::cell::Cell::new(false) };
        if taken == Taken::FromTheDead {
            g.repair()?;
        }
        Ok(g)
    }

    /// Locks for a call that must not block: see [`PATIENCE`].
    fn lock_patiently(&self) -> Result<Guard<'_>, SemError> {
        self.lock(Deadline::after(PATIENCE)).map_err(|e| match e {
            SemError::Timeout => corrupt(format!(
                "the lock has been held for over {PATIENCE:?} by process {} (stopped, or a stray write)",
                self.w(LOCK).load(Ordering::Relaxed)
            )),
            other => other,
        })
    }

    /// Locks, fails on a removed set or a missing permission, and first
    /// settles every undo record of a dead process.
    fn control(&self, want: Access) -> Result<Guard<'_>, SemError> {
        let dead = self.dead_pids(true, false);
        let g = self.lock_patiently()?;
        g.check(want)?;
        g.reap(&dead)?;
        Ok(g)
    }

    /// `semop(2)`: applies all of `ops` at once, blocking until they can all proceed.
    ///
    /// # Errors
    ///
    /// [`SemError::Removed`], [`SemError::BadIndex`], [`SemError::OutOfRange`],
    /// [`SemError::TooManyOps`], [`SemError::Invalid`] (no operations),
    /// [`SemError::PermissionDenied`], [`SemError::UndoFull`], [`SemError::Corrupted`].
    pub fn op(&self, ops: &[SemOp]) -> Result<(), SemError> {
        self.op_inner(ops, Deadline::Never)
    }

    /// `semop(2)` with `IPC_NOWAIT`: applies all of `ops` if they can all
    /// proceed now, and otherwise changes nothing.
    ///
    /// # Errors
    ///
    /// [`SemError::WouldBlock`] when it would block, otherwise as [`SemaphoreSet::op`].
    pub fn try_op(&self, ops: &[SemOp]) -> Result<(), SemError> {
        self.op_inner(ops, Deadline::Now)
    }

    /// `semtimedop(2)`: as [`SemaphoreSet::op`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`SemError::Timeout`] (nothing was changed), otherwise as [`SemaphoreSet::op`].
    pub fn op_timeout(&self, ops: &[SemOp], timeout: Duration) -> Result<(), SemError> {
        match Instant::now().checked_add(timeout) {
            Some(at) => self.op_deadline(ops, at),
            None => self.op(ops),
        }
    }

    /// As [`SemaphoreSet::op`], waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`SemaphoreSet::op_timeout`].
    pub fn op_deadline(&self, ops: &[SemOp], deadline: Instant) -> Result<(), SemError> {
        self.op_inner(ops, Deadline::At(deadline))
    }

    fn op_inner(&self, ops: &[SemOp], deadline: Deadline) -> Result<(), SemError> {
        // The kernel's order of checks: count of operations, indexes, permission.
        if ops.is_empty() {
            return Err(SemError::Invalid("no operations".into()));
        }
        if ops.len() > SEM_OPS_MAX {
            return Err(SemError::TooManyOps { len: ops.len(), max: SEM_OPS_MAX });
        }
        if let Some(bad) = ops.iter().find(|o| o.index >= self.at.n) {
            return Err(SemError::BadIndex { index: bad.index, count: self.at.n });
        }
        // Whether to spin (once per sleep) before registering to sleep.
        let mut spin = true;
        let single = match ops {
            [o] if !o.undo => Some(*o),
            _ => None,
        };
        if let Some(o) = single {
            let mut watches = 0;
            loop {
                match self.fast_op(o) {
                    Fast::Done => return Ok(()),
                    Fast::Locked => break,
                    Fast::Blocked(_) if deadline == Deadline::Now => return Err(SemError::WouldBlock),
                    Fast::Blocked(_) if deadline.expired() => return Err(SemError::Timeout),
                    // The value keeps moving, never far enough for us (others
                    // take and give back while we wait for more): sleep.
                    Fast::Blocked(_) if watches == FAST_WATCHES => break,
                    Fast::Blocked(seen) => {
                        watches += 1;
                        // Watch the value word for a short, adaptive while
                        // (a ping-pong partner on another CPU changes it
                        // within microseconds); nobody needs to wake a
                        // spinner, so its partner makes no system call.
                        spin = false;
                        let value = self.w(self.at.val(o.index));
                        let mut moved = || value.load(Ordering::Relaxed) != seen;
                        let watched = if self.yielding.helps() || !self.spin.paying() {
                            // The partner ran on our CPU last time, or
                            // spinning has not paid lately (as when the
                            // scheduler keeps both on one CPU): spinning would
                            // only keep it from running, a yield lets it run.
                            self.yielding.now(&mut moved) || self.spin.spin(&mut moved)
                        } else {
                            self.spin.spin(&mut moved) || self.yielding.wait(&mut moved)
                        };
                        if !watched {
                            break;
                        }
                    }
                }
            }
        }
        let want = if ops.iter().any(|o| o.op != 0) { Access::Write } else { Access::Read };
        let mut slot = None;
        let mut first = true;
        let mut dead = Vec::new();
        let mut reaped_for_room = false;
        loop {
            // A `try_` call still waits for the lock: holders never sleep holding it.
            let locked = if deadline == Deadline::Now { self.lock_patiently() } else { self.lock(deadline) };
            let g = match locked {
                Ok(g) => g,
                Err(e) => {
                    if slot.is_some() {
                        if let Ok(g) = self.lock(Deadline::Never) {
                            g.unregister(&mut slot);
                        }
                    }
                    return Err(e);
                }
            };
            let step = (|| {
                if first {
                    g.check(want)?;
                    g.settle(ops)?;
                } else if g.get(REMOVED) != 0 {
                    return Err(SemError::Removed);
                }
                g.reap(&dead)?;
                g.attempt(ops)
            })();
            first = false;
            dead.clear();
            let blocked = match step {
                Ok(None) => {
                    g.unregister(&mut slot);
                    return Ok(());
                }
                Ok(Some(blocked)) => blocked,
                Err(SemError::UndoFull(_)) if !reaped_for_room => {
                    // Room may be held by the dead: look for them and try again.
                    drop(g);
                    reaped_for_room = true;
                    dead = self.dead_pids(true, false);
                    continue;
                }
                Err(e) => {
                    g.unregister(&mut slot);
                    return Err(e);
                }
            };
            if deadline == Deadline::Now {
                return Err(SemError::WouldBlock);
            }
            if deadline.expired() {
                g.unregister(&mut slot);
                return Err(SemError::Timeout);
            }
            if slot.is_none() && sys::pid() != self.me {
                return Err(SemError::Invalid("a handle opened before fork(2) used in the child".into()));
            }
            let value = self.w(self.at.val(blocked.index));
            if spin && slot.is_none() {
                // As above: watch the value word (not the lock's line).
                drop(g);
                spin = self.spin.spin(|| {
                    value.load(Ordering::Relaxed) != blocked.seen
                        || self.w(REMOVED).load(Ordering::Relaxed) != 0
                });
                continue;
            }
            spin = true;
            g.register(&mut slot, blocked.index, blocked.zero);
            let uncounted = slot.is_none();
            if uncounted {
                // Atomic: sleepers leave SPILL without the lock.
                self.w(SPILL).fetch_add(1, Ordering::SeqCst);
            }
            let seen = g.get(CHANGE);
            drop(g);
            // After announcing ourselves (SeqCst), look at the value once
            // more: a lock-free change made before it saw our announcement
            // shows here, one made after wakes us (see `fast_op`).
            if value.load(Ordering::SeqCst) == blocked.seen {
                self.sleep(seen, deadline);
            }
            if uncounted {
                let _ = self.w(SPILL).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
            }
            dead = self.nap_scan();
        }
    }

    /// One operation on one semaphore without undo, lock-free: one
    /// compare-and-swap on its value word (one load for wait-for-zero), when the lock holder is not
    /// working on that semaphore and no undo records are held (which a dead
    /// holder's would need settling first).
    ///
    /// Crash safety: the change is the compare-and-swap, all or nothing;
    /// the last pid and the operation time follow it (a process killed in
    /// between leaves the previous pid, and a caller it should have woken
    /// to its 10 ms nap, nothing else). Waking: after the
    /// change, `WAITING` and `SPILL` are read (SeqCst, as a blocked caller
    /// announces itself and then re-reads the value); if a blocked caller
    /// may now proceed, `CHANGE` is bumped and the futex woken.
    fn fast_op(&self, o: SemOp) -> Fast {
        let d = i32::from(o.op);
        let value = self.w(self.at.val(o.index));
        let mut v = value.load(Ordering::Relaxed);
        let want = if d == 0 { Access::Read } else { Access::Write };
        if self.w(REMOVED).load(Ordering::Relaxed) != 0
            || self.w(USED).load(Ordering::Relaxed) != 0
            || !perm::allowed(&self.owner(), &self.caller, want)
        {
            // Let the locked path settle, refuse or report it.
            return Fast::Locked;
        }
        let r = loop {
            if v & BUSY != 0 || v > VMX as u32 {
                // Frozen by the lock holder, or corrupted.
                return Fast::Locked;
            }
            if d == 0 {
                // Wait for zero: done at this load if the value is zero.
                if v != 0 {
                    return Fast::Blocked(v);
                }
                break 0;
            }
            let r = v as i32 + d;
            if r < 0 {
                return Fast::Blocked(v);
            }
            if r > VMX {
                return Fast::Locked;
            }
            match value.compare_exchange_weak(v, r as u32, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break r,
                Err(now) => v = now,
            }
        };
        let pid = self.w(self.at.spid(o.index));
        if pid.load(Ordering::Relaxed) != self.me {
            pid.store(self.me, Ordering::Relaxed);
        }
        let otime = word64(self.map(), OTIME);
        let now = sys::coarse_now_secs();
        if otime.load(Ordering::Relaxed) != now {
            otime.store(now, Ordering::Relaxed);
        }
        if d != 0 && (r > v as i32 || r == 0) {
            self.wake_for(o.index, r);
        }
        Fast::Done
    }

    /// After a lock-free change left semaphore `index` at `val`: wakes the
    /// blocked callers if one of them may now proceed (as
    /// [`Guard::values_changed`]) or some are blocked uncounted.
    fn wake_for(&self, index: usize, val: i32) {
        let waiting = self.w(WAITING).load(Ordering::SeqCst);
        let mut wake = self.w(SPILL).load(Ordering::SeqCst) > 0;
        if !wake && waiting > 0 {
            let mut left = waiting;
            for s in 0..WAIT_SLOTS {
                if self.w(self.at.slot(s)).load(Ordering::Acquire) == 0 {
                    continue;
                }
                let info = self.w(self.at.slot(s) + 4).load(Ordering::Relaxed);
                if (info & 0x7fff_ffff) as usize == index && if info >> 31 != 0 { val == 0 } else { val > 0 }
                {
                    wake = true;
                    break;
                }
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        if wake {
            self.w(CHANGE).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.w(CHANGE), u32::MAX);
        }
    }

    /// Sleeps until something changes (or 10 ms, or the deadline). The
    /// caller announced itself under the lock (a waiter slot, or `SPILL`),
    /// so a change made after it saw `seen` wakes it.
    fn sleep(&self, seen: u32, deadline: Deadline) {
        let change = self.w(CHANGE);
        if change.load(Ordering::Relaxed) == seen {
            let mut nap = NAP;
            if let Deadline::At(at) = deadline {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            if !nap.is_zero() {
                sys::futex_wait(change, seen, Some(nap));
            }
        }
    }

    /// The dead among the processes that hold undo records (`undo`) or
    /// waiter slots (`waiters`). Reads without the lock (the answer is only
    /// a list of candidates, checked again under the lock); makes a system
    /// call or two per process.
    fn dead_pids(&self, undo: bool, waiters: bool) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut add = |off| {
            let p = self.w(off).load(Ordering::Relaxed);
            if p != 0 && p != self.me && !pids.contains(&p) {
                pids.push(p);
            }
        };
        if undo && self.w(USED).load(Ordering::Relaxed) != 0 {
            (0..SEM_UNDO_RECORDS).for_each(|r| add(self.at.rec_pid(r)));
        }
        if waiters && self.w(WAITING).load(Ordering::Relaxed) != 0 {
            (0..WAIT_SLOTS).for_each(|s| add(self.at.slot(s)));
        }
        pids.retain(|&p| !sys::process_alive(p));
        pids
    }

    /// [`Self::dead_pids`] for a blocked caller, at most once per 10 ms for the whole set.
    fn nap_scan(&self) -> Vec<u32> {
        let now = now_ms() as u32;
        let last = self.w(SCAN).load(Ordering::Relaxed);
        if now.wrapping_sub(last) < NAP.as_millis() as u32
            || self.w(SCAN).compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return Vec::new();
        }
        self.dead_pids(true, true)
    }

    /// `semctl(GETVAL)`: the value of semaphore `index`.
    ///
    /// # Errors
    ///
    /// [`SemError::BadIndex`], [`SemError::PermissionDenied`] without read
    /// permission, [`SemError::Removed`], [`SemError::Corrupted`].
    pub fn value(&self, index: usize) -> Result<u16, SemError> {
        self.check_index(index)?;
        let g = self.control(Access::Read)?;
        g.value(index).map(|v| v as u16)
    }

    /// `semctl(GETALL)`: every semaphore's value.
    ///
    /// # Errors
    ///
    /// As [`SemaphoreSet::value`].
    pub fn values(&self) -> Result<Vec<u16>, SemError> {
        let g = self.control(Access::Read)?;
        // Frozen, so that the values are one moment's, as the kernel's are.
        let frozen: Vec<_> = (0..self.at.n).map(|i| g.freeze(i)).collect();
        for (i, v) in frozen.iter().enumerate() {
            if v.is_ok() {
                g.thaw(i);
            }
        }
        frozen.into_iter().map(|v| v.map(|v| v as u16)).collect()
    }

    /// `semctl(SETVAL)`: sets semaphore `index` to `value`, clears every
    /// process's undo adjustment for it, and wakes whoever that lets proceed.
    ///
    /// # Errors
    ///
    /// [`SemError::OutOfRange`] for a value outside `0..=SEM_VALUE_MAX`,
    /// [`SemError::BadIndex`], [`SemError::PermissionDenied`] without write
    /// permission, [`SemError::Removed`], [`SemError::Corrupted`].
    pub fn set_value(&self, index: usize, value: i32) -> Result<(), SemError> {
        if !(0..=VMX).contains(&value) {
            return Err(SemError::OutOfRange { index, why: "SETVAL value outside 0..=32767" });
        }
        self.check_index(index)?;
        let g = self.control(Access::Write)?;
        let at = &self.at;
        let mut j = vec![(at.val(index), value as u32), (at.spid(index), self.me)];
        let mut used = g.get(USED);
        for r in 0..SEM_UNDO_RECORDS {
            if g.get(at.rec_pid(r)) == 0 || g.adj(r, index)? == 0 {
                continue;
            }
            let nz = g.nonzero(r)?.saturating_sub(1);
            j.push((at.adj(r, index), 0));
            j.push((at.rec_nz(r), nz));
            if nz == 0 {
                j.push((at.rec_pid(r), 0));
                used = used.saturating_sub(1);
            }
        }
        j.push((USED, used));
        g.freeze_any(index);
        g.commit(&j);
        word64(self.map(), CTIME).store(now_secs(), Ordering::Relaxed);
        g.changed();
        Ok(())
    }

    /// `semctl(SETALL)`: sets every semaphore (`values.len()` must be the
    /// set's count), clears all undo adjustments, and wakes whoever that
    /// lets proceed.
    ///
    /// # Errors
    ///
    /// [`SemError::Invalid`] for the wrong number of values,
    /// [`SemError::OutOfRange`] for a value above `SEM_VALUE_MAX`, otherwise
    /// as [`SemaphoreSet::set_value`].
    pub fn set_all(&self, values: &[u16]) -> Result<(), SemError> {
        if values.len() != self.at.n {
            return Err(SemError::Invalid(format!("{} values for {} semaphores", values.len(), self.at.n)));
        }
        let g = self.control(Access::Write)?;
        if let Some(i) = values.iter().position(|&v| v > SEM_VALUE_MAX) {
            return Err(SemError::OutOfRange { index: i, why: "SETALL value above 32767" });
        }
        let mut j: Vec<(usize, u32)> = Vec::with_capacity(2 * values.len() + 1);
        for (i, &v) in values.iter().enumerate() {
            j.push((self.at.val(i), u32::from(v)));
            j.push((self.at.spid(i), self.me));
        }
        j.push((CLEAR_UNDO as usize, 0));
        (0..self.at.n).for_each(|i| g.freeze_any(i));
        g.commit(&j);
        word64(self.map(), CTIME).store(now_secs(), Ordering::Relaxed);
        g.changed();
        Ok(())
    }

    /// `semctl(GETNCNT)` and `semctl(GETZCNT)`: how many callers are blocked
    /// on semaphore `index` (each counted on the operation that blocked it,
    /// as the kernel does; at most 128 blocked callers per set are counted).
    ///
    /// # Errors
    ///
    /// As [`SemaphoreSet::value`].
    pub fn waiting(&self, index: usize) -> Result<WaitCounts, SemError> {
        self.check_index(index)?;
        let dead = self.dead_pids(false, true);
        let g = self.lock_patiently()?;
        g.check(Access::Read)?;
        g.reap(&dead)?;
        let mut counts = WaitCounts::default();
        for s in 0..WAIT_SLOTS {
            let at = self.at.slot(s);
            if g.get(at) != 0 && g.get(at + 4) & 0x7fff_ffff == index as u32 {
                if g.get(at + 4) >> 31 == 1 {
                    counts.zero += 1;
                } else {
                    counts.increase += 1;
                }
            }
        }
        Ok(counts)
    }

    fn check_index(&self, index: usize) -> Result<(), SemError> {
        if index >= self.at.n {
            return Err(SemError::BadIndex { index, count: self.at.n });
        }
        Ok(())
    }

    /// `semctl(IPC_STAT)`.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] without read permission; [`Error::NotFound`]
    /// once removed; [`Error::Corrupted`].
    pub fn stat(&self) -> Result<SemStat> {
        let g = self.control(Access::Read)?;
        let t = |off| word64(self.map(), off).load(Ordering::Relaxed);
        Ok(SemStat {
            count: self.at.n,
            owner: self.owner(),
            creator: (g.get(CUID), g.get(CGID)),
            op_time: t(OTIME),
            change_time: t(CTIME),
            last_pids: (0..self.at.n).map(|i| g.get(self.at.spid(i))).collect(),
            undo_records: (0..SEM_UNDO_RECORDS).filter(|&r| g.get(self.at.rec_pid(r)) != 0).count(),
        })
    }

    /// `semctl(IPC_SET)`: the owner, the creator or root may change the
    /// owner and the mode.
    ///
    /// The shared-memory object's own owner and file mode follow, so the
    /// change decides who can open the set at all. Unlike the kernel's
    /// `IPC_SET`, giving the set to another uid therefore needs the right to
    /// `chown(2)` (root); and once the owner changed, only the file's
    /// owner (or root) can make further changes.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`], [`Error::NotFound`] once removed, [`Error::Io`].
    pub fn set(&self, change: SemChange) -> Result<()> {
        let g = self.lock_patiently()?;
        g.check_owner()?;
        let old = self.owner();
        let uid = change.uid.unwrap_or(old.uid);
        let gid = change.gid.unwrap_or(old.gid);
        let mode = change.mode.map_or(old.mode, |m| m & 0o777);
        self.seg.set_owner(Owner { uid, gid, mode: file_mode(mode) })?;
        g.put(UID, uid);
        g.put(GID, gid);
        g.put(MODE, mode);
        word64(self.map(), CTIME).store(now_secs(), Ordering::Relaxed);
        Ok(())
    }

    /// `semctl(IPC_RMID)`: removes the set. Blocked callers wake with
    /// [`SemError::Removed`]; the name is free at once.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] unless owner, creator or root; [`Error::NotFound`].
    pub fn remove(self) -> Result<()> {
        let g = self.lock_patiently()?;
        g.check_owner()?;
        g.put(REMOVED, 1);
        g.changed();
        drop(g);
        let full = format!("{}{}", crate::shm::PREFIX, self.name());
        sys::shm_unlink(&full).map_err(|e| Error::io(self.name(), e))
    }

    /// Removes set `name` by name (as [`SemaphoreSet::remove`]).
    ///
    /// # Errors
    ///
    /// As [`SemaphoreSet::open`] and [`SemaphoreSet::remove`].
    pub fn remove_name(name: &str) -> Result<()> {
        SemaphoreSet::open(name, Access::Read).or_else(|_| SemaphoreSet::open(name, Access::Write))?.remove()
    }
}

fn word(m: &Mapping, off: usize) -> &AtomicU32 {
    m.u32_at(off).expect("offset inside the set's validated layout")
}

fn word64(m: &Mapping, off: usize) -> &AtomicU64 {
    m.u64_at(off).expect("offset inside the set's validated layout")
}

/// The set, locked. Everything that reads or changes values goes through here.
struct Guard<'a> {
    s: &'a SemaphoreSet,
    lock: RobustLock<'a>,
    /// Blocked callers to wake once the lock is released (woken while we
    /// still held it, they would only go back to sleep on the lock).
    wake: std::cell::Cell<bool>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
        if self.wake.get() {
            sys::futex_wake(self.s.w(CHANGE), u32::MAX);
        }
    }
}

/// A list that lives on the stack while it is short (the common case of a
/// few operations), so an uncontended operation does not allocate.
struct Buf<T: Copy + Default, const N: usize> {
    inline: [T; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Buf<T, N> {
    fn new() -> Self {
        Buf { inline: [T::default(); N], len: 0, spill: Vec::new() }
    }

    fn push(&mut self, v: T) {
        if self.spill.is_empty() && self.len < N {
            self.inline[self.len] = v;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.push(v);
        }
    }

    fn as_slice(&self) -> &[T] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        if self.spill.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spill
        }
    }
}

/// What [`SemaphoreSet::fast_op`] did.
#[derive(Clone, Copy, Debug)]
enum Fast {
    /// The operation is done.
    Done,
    /// It must wait: the value word was this.
    Blocked(u32),
    /// The locked path must do it (or report why not).
    Locked,
}

/// Why an operation must wait: the semaphore, whether it waits for zero
/// (else to decrease), and the value that made it wait.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    index: usize,
    zero: bool,
    seen: u32,
}

/// One semaphore an operation touches: before and after.
#[derive(Clone, Copy, Default)]
struct Touch {
    index: usize,
    old: i32,
    val: i32,
    adj_old: i32,
    adj: i32,
}

impl Guard<'_> {
    fn get(&self, off: usize) -> u32 {
        self.s.w(off).load(Ordering::Relaxed)
    }

    fn put(&self, off: usize, v: u32) {
        self.s.w(off).store(v, Ordering::Relaxed);
    }

    /// Semaphore `i`'s value, as one load (the lock-free path may change it
    /// at any time unless it is frozen).
    fn value(&self, i: usize) -> Result<i32, SemError> {
        let v = self.s.w(self.s.at.val(i)).load(Ordering::Acquire) & !BUSY;
        if v > VMX as u32 {
            return Err(corrupt(format!("semaphore {i} holds {v}, above SEMVMX")));
        }
        Ok(v as i32)
    }

    /// Freezes semaphore `i` (sets [`BUSY`]: the lock-free path leaves it
    /// alone until [`Guard::thaw`] or a commit writes it) and returns its value.
    fn freeze(&self, i: usize) -> Result<i32, SemError> {
        let raw = self.s.w(self.s.at.val(i)).fetch_or(BUSY, Ordering::Acquire);
        let v = raw & !BUSY;
        if v > VMX as u32 {
            self.thaw(i);
            return Err(corrupt(format!("semaphore {i} holds {v}, above SEMVMX")));
        }
        Ok(v as i32)
    }

    /// Freezes semaphore `i` whatever it holds (for a write of a new value).
    fn freeze_any(&self, i: usize) {
        self.s.w(self.s.at.val(i)).fetch_or(BUSY, Ordering::Acquire);
    }

    /// Lets the lock-free path at semaphore `i` again (its value unchanged).
    fn thaw(&self, i: usize) {
        self.s.w(self.s.at.val(i)).fetch_and(!BUSY, Ordering::Release);
    }

    fn adj(&self, r: usize, i: usize) -> Result<i32, SemError> {
        let a = self.get(self.s.at.adj(r, i)) as i32;
        if !(-AEM - 1..=AEM).contains(&a) {
            return Err(corrupt(format!("undo record {r} holds adjustment {a} for semaphore {i}")));
        }
        Ok(a)
    }

    fn nonzero(&self, r: usize) -> Result<u32, SemError> {
        let nz = self.get(self.s.at.rec_nz(r));
        if nz as usize > self.s.at.n {
            return Err(corrupt(format!("undo record {r} counts {nz} adjustments")));
        }
        Ok(nz)
    }

    fn check(&self, want: Access) -> Result<(), SemError> {
        if self.get(REMOVED) != 0 {
            return Err(SemError::Removed);
        }
        if !perm::allowed(&self.s.owner(), &self.s.caller, want) {
            return Err(SemError::PermissionDenied);
        }
        Ok(())
    }

    fn check_owner(&self) -> Result<()> {
        if self.get(REMOVED) != 0 {
            return Err(Error::NotFound("the semaphore set was removed".into()));
        }
        let me = self.s.caller.uid;
        if me == 0 || me == self.get(UID) || me == self.get(CUID) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!("{}: not the set's owner", self.s.name())))
        }
    }

    /// Wakes every blocked caller (each re-checks its own operations), but
    /// only makes the system call if some caller is blocked. Blocked callers
    /// announce themselves under the lock, which we hold (`CHANGE` is also
    /// bumped by the lock-free path, hence the atomic add).
    fn changed(&self) {
        self.s.w(CHANGE).fetch_add(1, Ordering::SeqCst);
        if self.get(WAITING) > 0 || self.get(SPILL) > 0 {
            self.wake.set(true);
        }
    }

    /// After an operation changed semaphore values (`touched`): wakes the
    /// blocked callers only if one of them may now proceed (one waiting to
    /// decrease a semaphore that is now positive, or for zero on one that is
    /// now zero), or if some are blocked uncounted. Waking the others would
    /// only cost them a futex call and a trip through the lock (on one CPU,
    /// each such trip is a context switch).
    fn values_changed(&self, touched: &[Touch]) {
        if self.get(SPILL) > 0 {
            return self.changed();
        }
        let mut left = self.get(WAITING);
        if left == 0 {
            return;
        }
        let at = &self.s.at;
        for s in 0..WAIT_SLOTS {
            if self.get(at.slot(s)) == 0 {
                continue;
            }
            let info = self.get(at.slot(s) + 4);
            let (index, zero) = ((info & 0x7fff_ffff) as usize, info >> 31 != 0);
            let ready = touched.iter().any(|x| x.index == index && if zero { x.val == 0 } else { x.val > 0 });
            if ready {
                return self.changed();
            }
            left -= 1;
            if left == 0 {
                return;
            }
        }
    }

    /// Writes `stores` to the journal, commits it with one store, applies
    /// it. Every semaphore whose value `stores` writes must be frozen; it is
    /// thawed (written without [`BUSY`]) once the journal is retired.
    fn commit(&self, stores: &[(usize, u32)]) {
        let at = &self.s.at;
        debug_assert!(stores.len() <= at.jcap, "journal capacity");
        for (k, &(off, v)) in stores.iter().enumerate() {
            self.put(at.journal + 8 * k, off as u32);
            self.put(at.journal + 8 * k + 4, v);
        }
        self.s.w(JLEN).store(stores.len() as u32, Ordering::Release);
        for &(off, v) in stores {
            // Values stay frozen until the journal is retired: a replay
            // after our death must not overwrite a lock-free change made
            // in between.
            if at.is_val(off) {
                self.put(off, v | BUSY);
            } else {
                self.apply(off as u32, v);
            }
        }
        self.s.w(JLEN).store(0, Ordering::Release);
        for &(off, v) in stores.iter().filter(|(off, _)| at.is_val(*off)) {
            self.s.w(off).store(v, Ordering::Release);
        }
    }

    fn apply(&self, off: u32, v: u32) {
        if off != CLEAR_UNDO {
            self.put(off as usize, v);
            return;
        }
        let at = &self.s.at;
        for r in 0..SEM_UNDO_RECORDS {
            if self.get(at.rec_pid(r)) != 0 {
                (0..at.n).for_each(|i| self.put(at.adj(r, i), 0));
                self.put(at.rec_nz(r), 0);
                self.put(at.rec_pid(r), 0);
            }
        }
        self.put(USED, 0);
    }

    /// After taking the lock from a dead holder: finishes its committed
    /// change (if any) and recounts what it may have left half updated.
    fn repair(&self) -> Result<(), SemError> {
        let at = &self.s.at;
        let mut bad = None;
        let len = self.s.w(JLEN).load(Ordering::Acquire) as usize;
        if len > at.jcap {
            bad = Some(format!("journal length {len} beyond its capacity"));
        } else {
            for k in 0..len {
                let (off, v) = (self.get(at.journal + 8 * k), self.get(at.journal + 8 * k + 4));
                if at.journaled(off) {
                    self.apply(off, v);
                } else {
                    bad = Some(format!("journal entry {k} writes at {off}"));
                }
            }
        }
        self.s.w(JLEN).store(0, Ordering::Release);
        // The dead holder may have left semaphores frozen.
        (0..at.n).for_each(|i| self.thaw(i));
        let mut used = 0;
        for r in 0..SEM_UNDO_RECORDS {
            if self.get(at.rec_pid(r)) == 0 {
                continue;
            }
            let nz = (0..at.n).filter(|&i| self.get(at.adj(r, i)) != 0).count();
            self.put(at.rec_nz(r), nz as u32);
            if nz == 0 {
                self.put(at.rec_pid(r), 0);
            } else {
                used += 1;
            }
        }
        self.put(USED, used);
        let waiting = (0..WAIT_SLOTS).filter(|&s| self.get(at.slot(s)) != 0).count();
        self.s.w(WAITING).store(waiting as u32, Ordering::SeqCst);
        self.changed();
        match bad {
            Some(why) => Err(corrupt(why)),
            None => Ok(()),
        }
    }

    /// Applies the undo record `r` of dead process `pid` (clamping values to
    /// `0..=SEMVMX`, as `exit_sem` does) and frees it.
    fn apply_dead(&self, r: usize, pid: u32) -> Result<(), SemError> {
        let at = &self.s.at;
        let mut adjs = Vec::new();
        for i in 0..at.n {
            let a = self.adj(r, i)?;
            if a != 0 {
                adjs.push((i, a));
            }
        }
        // Freeze the semaphores, then compute their values (a bad value
        // thaws what was frozen and fails).
        let mut j = Vec::with_capacity(3 * adjs.len() + 3);
        for (k, &(i, a)) in adjs.iter().enumerate() {
            match self.freeze(i) {
                Ok(v) => j.extend([
                    (at.val(i), (v + a).clamp(0, VMX) as u32),
                    (at.spid(i), pid),
                    (at.adj(r, i), 0),
                ]),
                Err(e) => {
                    adjs[..k].iter().for_each(|&(q, _)| self.thaw(q));
                    return Err(e);
                }
            }
        }
        tracing::debug!(pid, adjusted = j.len() / 3, "applying a dead process's semaphore undo record");
        j.extend([(at.rec_nz(r), 0), (at.rec_pid(r), 0), (USED, self.get(USED).saturating_sub(1))]);
        self.commit(&j);
        self.changed();
        Ok(())
    }

    /// Applies the undo records of other processes that hold adjustments on
    /// the semaphores `ops` touch, if those processes are dead: what the
    /// kernel would have done when they exited, before this call.
    fn settle(&self, ops: &[SemOp]) -> Result<(), SemError> {
        if self.get(USED) == 0 {
            return Ok(());
        }
        let at = &self.s.at;
        for r in 0..SEM_UNDO_RECORDS {
            let pid = self.get(at.rec_pid(r));
            if pid == 0 || pid == self.s.me || self.get(at.rec_nz(r)) == 0 {
                continue;
            }
            if ops.iter().any(|o| self.get(at.adj(r, o.index)) != 0) && !sys::process_alive(pid) {
                self.apply_dead(r, pid)?;
            }
        }
        Ok(())
    }

    /// Settles the undo records and frees the waiter slots of `dead` processes.
    fn reap(&self, dead: &[u32]) -> Result<(), SemError> {
        if dead.is_empty() {
            return Ok(());
        }
        let at = &self.s.at;
        for r in 0..SEM_UNDO_RECORDS {
            let pid = self.get(at.rec_pid(r));
            if pid != 0 && dead.contains(&pid) {
                self.apply_dead(r, pid)?;
            }
        }
        for s in 0..WAIT_SLOTS {
            if dead.contains(&self.get(at.slot(s))) {
                self.put(at.slot(s), 0);
                self.leave();
            }
        }
        Ok(())
    }

    fn find_record(&self, pid: u32) -> Option<usize> {
        if self.get(USED) == 0 {
            return None;
        }
        (0..SEM_UNDO_RECORDS).find(|&r| self.get(self.s.at.rec_pid(r)) == pid)
    }

    /// Applies `ops` if they can all proceed: `Ok(None)`; or `Ok(Some(_))`
    /// naming the operation that must wait (and changing nothing). The
    /// semaphores are frozen while it decides (see [`BUSY`]).
    fn attempt(&self, ops: &[SemOp]) -> Result<Option<Blocked>, SemError> {
        let mut touched: Buf<Touch, 8> = Buf::new();
        let r = self.attempt_frozen(ops, &mut touched);
        // A commit thawed the semaphores it changed; thaw the others.
        let committed = matches!(r, Ok(None));
        for x in touched.as_slice() {
            if !committed || x.val == x.old {
                self.thaw(x.index);
            }
        }
        r
    }

    /// [`Guard::attempt`], freezing each semaphore it reads into `touched`.
    fn attempt_frozen(
        &self,
        ops: &[SemOp],
        touched: &mut Buf<Touch, 8>,
    ) -> Result<Option<Blocked>, SemError> {
        let at = &self.s.at;
        let me = self.s.me;
        let mine = self.find_record(me);
        for o in ops {
            let k = match touched.as_slice().iter().position(|x| x.index == o.index) {
                Some(k) => k,
                None => {
                    let v = self.freeze(o.index)?;
                    let a = match mine {
                        Some(r) => self.adj(r, o.index)?,
                        None => 0,
                    };
                    touched.push(Touch { index: o.index, old: v, val: v, adj_old: a, adj: a });
                    touched.as_slice().len() - 1
                }
            };
            let x = &mut touched.as_mut_slice()[k];
            let op = i32::from(o.op);
            if op == 0 {
                if x.val != 0 {
                    return Ok(Some(Blocked { index: o.index, zero: true, seen: x.old as u32 }));
                }
                continue;
            }
            let r = x.val + op;
            if r < 0 {
                return Ok(Some(Blocked { index: o.index, zero: false, seen: x.old as u32 }));
            }
            if r > VMX {
                return Err(SemError::OutOfRange { index: o.index, why: "the value would exceed 32767" });
            }
            if o.undo {
                let u = x.adj - op;
                if !(-AEM - 1..=AEM).contains(&u) {
                    return Err(SemError::OutOfRange {
                        index: o.index,
                        why: "the undo adjustment would leave -32768..=32767",
                    });
                }
                x.adj = u;
            }
            x.val = r;
        }
        // Everything can proceed: commit.
        let t = touched.as_slice();
        let mut j: Buf<(usize, u32), 32> = Buf::new();
        let mut wake = false;
        for x in t {
            if x.val != x.old {
                j.push((at.val(x.index), x.val as u32));
                wake |= x.val > x.old || x.val == 0;
            }
            j.push((at.spid(x.index), me));
        }
        if t.iter().any(|x| x.adj != x.adj_old) {
            let (r, nz) = match mine {
                Some(r) => (r, i64::from(self.nonzero(r)?)),
                None => {
                    let free = (0..SEM_UNDO_RECORDS).find(|&r| self.get(at.rec_pid(r)) == 0);
                    let r = free.ok_or(SemError::UndoFull(SEM_UNDO_RECORDS))?;
                    j.push((at.rec_pid(r), me));
                    j.push((USED, self.get(USED).saturating_add(1)));
                    (r, 0)
                }
            };
            let nz = nz + t.iter().map(|x| i64::from(x.adj != 0) - i64::from(x.adj_old != 0)).sum::<i64>();
            for x in t.iter().filter(|x| x.adj != x.adj_old) {
                j.push((at.adj(r, x.index), x.adj as u32));
            }
            if nz < 0 {
                return Err(corrupt(format!("undo record {r} miscounts its adjustments")));
            }
            j.push((at.rec_nz(r), nz as u32));
            if nz == 0 {
                // Nothing left to undo: free the record.
                let used =
                    j.as_slice().iter().rev().find(|(o, _)| *o == USED).map_or(self.get(USED), |&(_, v)| v);
                j.push((at.rec_pid(r), 0));
                j.push((USED, used.saturating_sub(1)));
            }
        }
        self.commit(j.as_slice());
        word64(self.s.map(), OTIME).store(sys::coarse_now_secs(), Ordering::Relaxed);
        if wake {
            self.values_changed(t);
        }
        Ok(None)
    }

    /// Records that this caller is blocked on `index` (for the counts, and
    /// so that changes wake it); keeps `slot` if it already has one.
    fn register(&self, slot: &mut Option<usize>, index: usize, zero: bool) {
        let at = &self.s.at;
        let info = index as u32 | (u32::from(zero) << 31);
        if let Some(s) = *slot {
            if self.get(at.slot(s)) == self.s.me {
                self.put(at.slot(s) + 4, info);
                return;
            }
        }
        *slot = (0..WAIT_SLOTS).find(|&s| self.get(at.slot(s)) == 0);
        if let Some(s) = *slot {
            self.put(at.slot(s) + 4, info);
            self.put(at.slot(s), self.s.me);
            // SeqCst, as the lock-free path's change and load of WAITING:
            // either it sees us, or our re-check before sleeping sees it.
            self.s.w(WAITING).fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One counted waiter fewer.
    fn leave(&self) {
        let _ = self.s.w(WAITING).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
    }

    fn unregister(&self, slot: &mut Option<usize>) {
        if let Some(s) = slot.take() {
            if self.get(self.s.at.slot(s)) == self.s.me {
                self.put(self.s.at.slot(s), 0);
                self.leave();
            }
        }
    }
}
