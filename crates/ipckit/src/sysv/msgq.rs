//! System V-style typed message queues, in shared memory.
//!
//! Three parts share one segment: a lock-free ring that senders append to
//! (`msgq/ring.rs`, where the protocol and its crash cases are described),
//! a circular byte arena for the texts too long for a ring slot
//! (`msgq/arena.rs`), and a list of 64-byte chunks under a robust lock
//! (`msgq/guard.rs`), where messages go when a receive selects past the
//! ring's head. Receivers hold the lock; senders never do, except when
//! every ring slot is taken. Here: the layout, the public type, the
//! senders' lock-free path and the waiting. `msgq/tests.rs` makes each
//! crash state by hand.

mod arena;
mod guard;
mod ring;

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::arena::Arena;
use self::guard::Guard;
use self::ring::{pack, unpack, Ring, INLINE, SLOT};
use super::lock::{now_secs, spin_pays, RobustLock, Spin, Taken, Yield};
use crate::error::{Error, Fault, FrameError, RecvError, RecvTimeoutError, Result, SendError};
use crate::error::{SendTimeoutError, TryRecvError, TrySendError};
use crate::perm::{self, Access, Caller, Owner};
use crate::shm::{Segment, SegmentKind, HEADER_LEN};
use crate::sys::{self, Deadline, Mapping};

// Queue header (offsets from the start of the mapping), one cache line per
// writer: the lock holder's, read-mostly settings, the receivers', the
// senders', the sleepers'.
const Q: usize = HEADER_LEN;
const LOCK: usize = Q;
const LOCK_WAITERS: usize = Q + 4;
const NCHUNKS: usize = Q + 8;
const NSLOTS: usize = Q + 12;
const HEAD: usize = Q + 24;
const TAIL: usize = Q + 28;
const FREE: usize = Q + 32;
const BUMP: usize = Q + 36;
const USED: usize = Q + 40;
const REMOVED: usize = Q + 64;
const QBYTES: usize = Q + 68;
const MAXMSG: usize = Q + 72;
const UID: usize = Q + 76;
const GID: usize = Q + 80;
const MODE: usize = Q + 84;
const CUID: usize = Q + 88;
const CGID: usize = Q + 92;
const MAXCAP: usize = Q + 96;
/// Bytes in the long texts' arena (`msgq/arena.rs`).
const ARENA: usize = Q + 100;
const CTIME: usize = Q + 104;
/// Nonzero once a sender published a slot without a fence (see
/// `Ring::publish`): receivers then issue the fence's other half before
/// they sleep. (Until then they need not: a queue used only for round
/// trips, whose answers keep the fence, never pays for it.)
const LIGHT: usize = Q + 112;
const BOOT: usize = Q + 120;
/// Ring head position and bytes taken out of the ring.
const HEADW: usize = Q + 128;
const RTIME: usize = Q + 136;
const LRPID: usize = Q + 144;
/// Messages (low 32 bits) and bytes (high 32) in the locked list: on the
/// receivers' line, not the lock's, so that a sender reading the queue's
/// counts pulls one line away from the receiver, and never the lock's
/// (the receiver's lock CAS and unlocking swap would wait for it).
const LISTW: usize = Q + 152;
/// Ring tail position and bytes ever sent.
const TAILW: usize = Q + 192;
const STIME: usize = Q + 200;
const LSPID: usize = Q + 208;
/// Bumped when a message arrives (receivers sleep on it), and its sleepers.
const MSG_EVT: usize = Q + 256;
const MSG_WAITERS: usize = Q + 260;
/// Bumped when room is freed (senders sleep on it), and its sleepers.
const ROOM_EVT: usize = Q + 264;
const ROOM_WAITERS: usize = Q + 268;
/// How many slots ahead of its own a sender prefetches (only while
/// messages are queued: a sender streaming to a receiver that trails it).
/// Measured on the 2-vCPU VM, 1 -> 1 pinned: 7.0-8.2 M msg/s without,
/// 12.2-14.4 M with 16 or 32; 2 and 4 were slower (the line was still
/// being read), and the round trip (an empty queue) is unchanged.
const AHEAD: u32 = 16;
/// A sender waiting for room while spinning skips this many spins
/// (`pause`s, ~14 ns each on the bench's CPU) per receive it still waits
/// for before it looks at the receivers' counters again.
const ROOM_SKIP: u32 = 3;
/// The CPU (+ 1; 0: none yet) a receiver, and a sender, last waited on.
const MSG_CPU: usize = Q + 272;
const ROOM_CPU: usize = Q + 276;
const SLOTS: usize = Q + 320;

// Chunks: 64 bytes. A message is a header chunk plus a chain of data chunks.
const CHUNK: usize = 64;
const DATA: usize = 60;
const C_NEXT: usize = 0;
const C_DATA: usize = 4;
const C_TYPE: usize = 8;
const C_LEN: usize = 16;
/// The ring position a drained message came from, and whether it did (1).
const C_ORIG: usize = 20;
const C_FROM: usize = 24;

/// The longest sleep of a receiver whose `membarrier` the kernel refused
/// (it cannot be sure that a sender publishing without a fence saw it).
const FENCELESS_NAP: Duration = Duration::from_millis(1);

/// Whether this process may publish ring slots without a fence: it is
/// registered for `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which
/// every receiver issues before it sleeps (see `Ring::publish`). Asked
/// once per process (a forked child registers again: the pid changes).
fn light_publish() -> bool {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};
    /// The pid that registered (0: none), and whether it could.
    static REGISTERED: AtomicU64 = AtomicU64::new(0);
    let me = sys::pid();
    let r = REGISTERED.load(Ordering::Relaxed);
    if r as u32 == me {
        return r >> 32 != 0;
    }
    let ok = membarrier_query().contains_command(MembarrierCommand::GlobalExpedited)
        && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
    REGISTERED.store(pack(me, u32::from(ok)), Ordering::Relaxed);
    ok
}

/// A receiver about to sleep: a full barrier on every CPU that runs a
/// process registered by [`light_publish`]. Whether the kernel did it.
fn sys_membarrier() -> bool {
    use rustix::thread::{membarrier, MembarrierCommand};
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}

/// How long a party waits on a sender that is filling a slot before it
/// asks whether that sender is still alive.
const NAP: Duration = Duration::from_millis(10);

/// Which message [`MessageQueue::recv`] takes, as `msgrcv(2)`'s `msgtyp` and flags say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Select {
    /// 0: the first message; > 0: the first of this type (or, with
    /// `except`, the first not of it); < 0: the first of the lowest type
    /// that is at most `-mtype`.
    pub mtype: i64,
    /// `MSG_EXCEPT`: with `mtype > 0`, take the first message *not* of that type.
    pub except: bool,
    /// `MSG_NOERROR`: a message longer than the receiver's limit is cut to
    /// it (the rest is lost) instead of being an error.
    pub truncate: bool,
}

impl Select {
    /// The first message, whatever its type.
    pub const ANY: Select = Select { mtype: 0, except: false, truncate: false };

    /// The first message of type `t` (`t > 0`), or per `msgrcv` for `t <= 0`.
    pub fn of(t: i64) -> Select {
        Select { mtype: t, except: false, truncate: false }
    }

    /// The first message not of type `t` (`MSG_EXCEPT`).
    pub fn except(t: i64) -> Select {
        Select { mtype: t, except: true, truncate: false }
    }

    /// The same selection, truncating long messages (`MSG_NOERROR`).
    pub fn truncating(mut self) -> Select {
        self.truncate = true;
        self
    }

    fn matches_first(&self, t: i64) -> bool {
        match self.mtype {
            0 => true,
            m if m > 0 && !self.except => t == m,
            m if m > 0 => t != m,
            _ => false,
        }
    }
}

/// How to make a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// `msg_qbytes`: most bytes of message text held at once (default 16384).
    pub capacity: usize,
    /// Largest message text (default 8192).
    pub max_message: usize,
    /// The largest `capacity` this queue can ever be given with
    /// [`MessageQueue::set`] (storage is sized for it; default: `capacity`).
    pub max_capacity: usize,
    /// Permission bits (read to receive, write to send), e.g. `0o600`.
    pub mode: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { capacity: 16384, max_message: 8192, max_capacity: 16384, mode: 0o600 }
    }
}

/// `msgctl(IPC_STAT)`: a queue's counts, limits, last users and times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStat {
    /// Messages in the queue (`msg_qnum`).
    pub messages: usize,
    /// Bytes of message text in the queue (`msg_cbytes`).
    pub bytes: usize,
    /// Most bytes of text allowed (`msg_qbytes`).
    pub capacity: usize,
    /// Largest message text.
    pub max_message: usize,
    /// The pid of the last sender (`msg_lspid`), 0 if none.
    pub last_sender: u32,
    /// The pid of the last receiver (`msg_lrpid`), 0 if none.
    pub last_receiver: u32,
    /// Seconds since the epoch of the last send (`msg_stime`), 0 if none.
    pub send_time: u64,
    /// Of the last receive (`msg_rtime`).
    pub recv_time: u64,
    /// Of creation or the last [`MessageQueue::set`] (`msg_ctime`).
    pub change_time: u64,
    /// Owner and permission bits (changeable with [`MessageQueue::set`]).
    pub owner: Owner,
    /// The creator's uid and gid.
    pub creator: (u32, u32),
}

/// `msgctl(IPC_SET)`: what the owner may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSet {
    /// New `msg_qbytes` (at most the queue's `max_capacity`).
    pub capacity: Option<usize>,
    /// New owner uid.
    pub uid: Option<u32>,
    /// New owner gid.
    pub gid: Option<u32>,
    /// New permission bits.
    pub mode: Option<u32>,
}

/// A named, typed message queue with the semantics of System V `msgget`,
/// `msgsnd`, `msgrcv` and `msgctl`, kept in shared memory so that the
/// uncontended path makes no system call.
///
/// - every message has a type > 0; [`Select`] picks what a receive takes;
/// - `send` blocks while the queue is full (in bytes or, as the kernel
///   counts, in messages), `recv` while nothing matches; each has `try_`,
///   `_timeout` and `_deadline` forms (`try_` is `IPC_NOWAIT`);
/// - any number of processes send and receive at once; every change wakes
///   the sleepers, and each rechecks its own selection, so a receiver
///   waiting for type 7 is woken by a type-7 message whatever the others wait for;
/// - messages persist until received or the queue is removed, also when no
///   process has the queue open (it lives in `/dev/shm` until removed);
/// - a process killed in the middle of a send or a receive leaves the queue
///   consistent: the message is fully there or not at all, and nobody waits
///   on the dead (see below).
///
/// # How it is fast
///
/// Senders append texts of up to 104 bytes to a lock-free ring in the
/// queue's segment (one CAS that claims the slot, a plain store that moves
/// the senders' counter, a publishing swap, or, for a sender streaming
/// where the kernel has `membarrier`, a plain store whose fence receivers
/// supply before they sleep: see `Ring::publish`); a receiver holds the queue's
/// robust lock, which in the one-receiver case never leaves its CPU, and
/// takes the ring's head directly when its selection matches it and
/// nothing older waits in the locked list. A head it does not select is
/// left where it is when it is the ring's only message (a round trip's
/// request, seen by the requester waiting for the reply). Otherwise it
/// moves the ring's messages, in order, to the list and selects there, as
/// `msgrcv` does. Longer texts take the same lock-free
/// path: the ring slot holds the type and length, the text goes in one
/// contiguous run of a circular byte arena at the position the senders'
/// byte counter gives it (the counter's move that admits the message
/// allots its bytes; the head's counter moving past it frees them), so a 4 KiB text is
/// one copy in and one copy out. The counts (`msg_qnum`,
/// `msg_cbytes`) are exact: senders and receivers keep their counters on
/// separate cache lines and read each other's only when their cached view
/// says the queue is full. A party about to sleep first spins a little
/// (adaptively, and only with more than one CPU online); a wake-up costs a
/// `futex` call only when somebody sleeps. A receiver that keeps finding
/// the ring empty just before a streaming sender fills the next slot
/// pauses before it looks (adaptively), so that the sender fills a batch
/// of slots without the receiver pulling their lines away mid-write.
///
/// # Crashes
///
/// Receivers work under a robust lock: whoever takes it from a dead holder
/// finishes what the holder left (a drained message linked but not
/// counted; a receive that did not move the head left the message queued,
/// since receivers never write a ring slot) and rebuilds the
/// list's bookkeeping from what was committed. A sender killed after
/// reserving a ring position but before publishing it leaves a slot that
/// the receiver reaching it skips once the sender's pid is gone (its bytes
/// are given back); one killed while claiming a slot is taken over by the
/// next sender. Either way the message is not there, and `send` had not
/// returned.
///
/// Permission checks use the queue's owner, group and mode (which the owner
/// may change) against the caller's kernel identity: read to receive, write
/// to send, checked when opening and on every operation.
///
/// # Examples
///
/// ```
/// use ipckit::sysv::{MessageQueue, QueueConfig, Select};
/// let name = format!("doc-mq-{}", std::process::id());
/// let q = MessageQueue::create(&name, QueueConfig::default())?;
/// q.send(2, b"second kind")?;
/// q.send(1, b"first kind")?;
/// assert_eq!(q.recv(Select::of(1), 100)?, (1, b"first kind".to_vec()));
/// assert_eq!(q.recv(Select::of(-5), 100)?, (2, b"second kind".to_vec()));
/// q.remove()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MessageQueue {
    seg: Segment,
    chunks: usize,
    /// Ring slots (a power of two).
    slots: u32,
    /// Offset of the first chunk.
    chunks_at: usize,
    /// Bytes in the long texts' arena, which follows the chunks.
    arena: usize,
    caller: Caller,
    /// For a durable queue: its file, and when to write it out.
    durable: Option<(std::path::PathBuf, Flush)>,
    /// A sender's last view of `HEADW` and `LISTW` (see `msgq/ring.rs`),
    /// and the `TAILW` it saw right after reading them.
    view: [AtomicU64; 3],
    /// The adaptive spin before sleeping.
    spin: Spin,
    /// The adaptive yield, for a partner on the same CPU.
    yielding: Yield,
    /// A receiver's pause before it first looks for a message that is
    /// not there yet.
    backoff: Backoff,
}

/// When a durable queue's changes are written to its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// After every committed send and receive (`msync(MS_SYNC)` before the
    /// operation returns): a message [`MessageQueue::send`] reported as sent
    /// survives a crash of the machine. Costs a disk write per operation.
    EveryOperation,
    /// Only when [`MessageQueue::flush`] is called (and whenever the kernel
    /// writes dirty pages back on its own, within about 30 s): survives any
    /// process crash at once, a machine crash up to the last flush.
    Manual,
}

fn u32_at(m: &Mapping, off: usize) -> &AtomicU32 {
    m.u32_at(off).expect("queue header inside the mapping")
}

fn u64_at(m: &Mapping, off: usize) -> &AtomicU64 {
    m.u64_at(off).expect("queue header inside the mapping")
}

/// The file mode that lets everyone who has any access map the queue read-write.
fn file_mode(mode: u32) -> u32 {
    (0..3).map(|k| if (mode >> (3 * k)) & 7 != 0 { 6 << (3 * k) } else { 0 }).sum()
}

/// What one attempt to put a message in the ring did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    Sent,
    /// Not within `msg_qbytes` (bytes or messages), as the queue was in
    /// this snapshot (what a sleeping sender waits to see change).
    Full(Snap),
    /// Within `msg_qbytes`, but every ring slot is taken: drain the ring.
    NoSlot,
    /// Position `pos` is being worked on by pid `pid` (0: by a receiver).
    Busy {
        pos: u32,
        pid: u32,
    },
}

/// What changes when a sleeper may proceed: the ring's counters, the
/// list's, the capacity and the removed flag.
type Snap = [u64; 4];

impl MessageQueue {
    /// Creates queue `name`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`] (also for a bad
    /// configuration), [`Error::PermissionDenied`], [`Error::Io`].
    pub fn create(name: &str, config: QueueConfig) -> Result<MessageQueue> {
        let g = geometry(name, &config)?;
        let seg = Segment::create_kind(name, g.size, file_mode(config.mode & 0o777), SegmentKind::MsgQueue)?;
        Ok(MessageQueue::init(seg, g, &config, None))
    }

    /// Creates a durable queue in a regular file at `path`: it survives a
    /// reboot as well as every process exiting. `flush` says when changes
    /// reach the disk (see [`Flush`]).
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::create`] (`AlreadyExists` when the file exists).
    pub fn create_durable(
        path: impl AsRef<std::path::Path>,
        config: QueueConfig,
        flush: Flush,
    ) -> Result<MessageQueue> {
        let path = path.as_ref();
        let g = geometry(&path.display().to_string(), &config)?;
        let seg = Segment::create_file(path, g.size, file_mode(config.mode & 0o777), SegmentKind::MsgQueue)?;
        let q = MessageQueue::init(seg, g, &config, Some((path.to_owned(), flush)));
        q.seg.flush()?;
        Ok(q)
    }

    /// Opens a durable queue. After a reboot, the pids recorded in it mean
    /// nothing: its lock is reset, every ring slot a sender was still
    /// filling is given up, and its bookkeeping rebuilt from the committed
    /// messages.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::open`].
    pub fn open_durable(
        path: impl AsRef<std::path::Path>,
        access: Access,
        flush: Flush,
    ) -> Result<MessageQueue> {
        let path = path.as_ref();
        let seg = Segment::open_file(path, SegmentKind::MsgQueue)?;
        let q = MessageQueue::adopt(seg, Some((path.to_owned(), flush)), access)?;
        let boot = u64_at(q.map(), BOOT);
        if boot.load(Ordering::Acquire) != sys::boot_id() {
            for off in [LOCK, LOCK_WAITERS, MSG_WAITERS, ROOM_WAITERS] {
                u32_at(q.map(), off).store(0, Ordering::SeqCst);
            }
            let g = q.lock(Deadline::Never).map_err(fault_error)?;
            g.repair(true);
            boot.store(sys::boot_id(), Ordering::Release);
            drop(g);
            q.seg.flush()?;
        }
        Ok(q)
    }

    /// Writes a durable queue's changes to disk now (`msync`); nothing to do
    /// for a queue in shared memory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the kernel cannot write the file.
    pub fn flush(&self) -> Result<()> {
        if self.durable.is_some() {
            self.seg.flush()?;
        }
        Ok(())
    }

    fn new(
        seg: Segment,
        chunks: usize,
        slots: u32,
        arena: usize,
        durable: Option<(std::path::PathBuf, Flush)>,
    ) -> Self {
        MessageQueue {
            seg,
            chunks,
            slots,
            chunks_at: SLOTS + slots as usize * SLOT,
            arena,
            caller: Caller::current(),
            durable,
            view: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            spin: Spin::new(),
            yielding: Yield::new(),
            backoff: Backoff::default(),
        }
    }

    fn init(
        seg: Segment,
        g: Geometry,
        config: &QueueConfig,
        durable: Option<(std::path::PathBuf, Flush)>,
    ) -> Self {
        let m = seg.mapping();
        let w = |off, v: u32| u32_at(m, off).store(v, Ordering::Relaxed);
        w(NCHUNKS, g.chunks as u32);
        w(NSLOTS, g.slots);
        w(QBYTES, config.capacity as u32);
        w(MAXMSG, config.max_message as u32);
        w(MAXCAP, config.max_capacity.max(config.capacity) as u32);
        w(ARENA, g.arena as u32);
        w(UID, sys::euid());
        w(GID, sys::egid());
        w(CUID, sys::euid());
        w(CGID, sys::egid());
        w(MODE, config.mode & 0o777);
        u64_at(m, CTIME).store(now_secs(), Ordering::Relaxed);
        u64_at(m, BOOT).store(sys::boot_id(), Ordering::Relaxed);
        let q = MessageQueue::new(seg, g.chunks, g.slots, g.arena, durable);
        q.ring().init();
        fence(Ordering::Release);
        q
    }

    /// Checks an opened segment's geometry and the caller's `access`.
    fn adopt(
        seg: Segment,
        durable: Option<(std::path::PathBuf, Flush)>,
        access: Access,
    ) -> Result<MessageQueue> {
        let chunks = u32_at(seg.mapping(), NCHUNKS).load(Ordering::Acquire) as usize;
        let slots = u32_at(seg.mapping(), NSLOTS).load(Ordering::Acquire);
        let arena = u32_at(seg.mapping(), ARENA).load(Ordering::Acquire) as usize;
        let need = (SLOTS + slots as usize * SLOT)
            .checked_add(chunks.saturating_mul(CHUNK))
            .and_then(|n| n.checked_add(arena));
        if chunks == 0
            || !slots.is_power_of_two()
            || !(MIN_SLOTS..=MAX_SLOTS).contains(&slots)
            || !(arena == 0 || arena.is_power_of_two())
            || need.is_none_or(|n| n > seg.mapping().len())
        {
            return Err(Error::Corrupted(format!(
                "queue {:?}: its chunk, slot and arena sizes do not fit its segment",
                seg.name()
            )));
        }
        let q = MessageQueue::new(seg, chunks, slots, arena, durable);
        if !perm::allowed(&q.owner(), &q.caller, access) {
            return Err(Error::PermissionDenied(q.name().to_owned()));
        }
        Ok(q)
    }

    /// Opens queue `name` for `access` (checked against its owner and mode now,
    /// and again on every operation).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::Corrupted`].
    pub fn open(name: &str, access: Access) -> Result<MessageQueue> {
        MessageQueue::adopt(Segment::open_kind(name, SegmentKind::MsgQueue)?, None, access)
    }

    /// Opens queue `name`, creating it with `config` if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::create`] and [`MessageQueue::open`].
    pub fn open_or_create(name: &str, config: QueueConfig) -> Result<MessageQueue> {
        match MessageQueue::create(name, config) {
            Err(Error::AlreadyExists(_)) => MessageQueue::open(name, Access::ReadWrite),
            other => other,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.seg.name()
    }

    fn map(&self) -> &Mapping {
        self.seg.mapping()
    }

    fn ring(&self) -> Ring<'_> {
        Ring { m: self.map(), base: SLOTS, n: self.slots }
    }

    fn arena(&self) -> Arena<'_> {
        Arena { m: self.map(), base: self.chunks_at + self.chunks * CHUNK, size: self.arena }
    }

    fn owner(&self) -> Owner {
        let m = self.map();
        Owner {
            uid: u32_at(m, UID).load(Ordering::Relaxed),
            gid: u32_at(m, GID).load(Ordering::Relaxed),
            mode: u32_at(m, MODE).load(Ordering::Relaxed),
        }
    }

    /// Not removed, and `want` allowed to the caller (without the lock).
    fn check(&self, want: Access) -> Result<(), Fault> {
        if u32_at(self.map(), REMOVED).load(Ordering::Acquire) != 0 {
            return Err(Fault::Disconnected);
        }
        if perm::allowed(&self.owner(), &self.caller, want) {
            Ok(())
        } else {
            Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "queue permission denied",
            )))
        }
    }

    /// The lock, if it is free now (the uncontended case: one CAS, no
    /// waiting, nothing to repair); `None` otherwise.
    #[inline]
    fn try_lock(&self) -> Option<Guard<'_>> {
        let m = self.map();
        let lock = RobustLock { word: u32_at(m, LOCK), waiters: u32_at(m, LOCK_WAITERS) };
        lock.word.compare_exchange(0, sys::pid(), Ordering::Acquire, Ordering::Relaxed).ok()?;
        Some(Guard {
            q: self,
            lock,
            wake: std::cell::Cell::new(0),
            quick: std::cell::Cell::new(false),
            passed: std::cell::Cell::new(0),
        })
    }

    fn lock(&self, deadline: Deadline) -> Result<Guard<'_>, Fault> {
        let m = self.map();
        let lock = RobustLock { word: u32_at(m, LOCK), waiters: u32_at(m, LOCK_WAITERS) };
        let taken = lock.lock(deadline)?;
        // Every receive that finds nothing reads the tail (`Guard::tail`).
        let g = Guard {
            q: self,
            lock,
            wake: std::cell::Cell::new(0),
            quick: std::cell::Cell::new(false),
            passed: std::cell::Cell::new(0),
        };
        if taken == Taken::FromTheDead {
            g.repair(false);
        }
        Ok(g)
    }

    fn snap(&self) -> Snap {
        let m = self.map();
        let settings = u64::from(u32_at(m, QBYTES).load(Ordering::Acquire)) << 1
            | u64::from(u32_at(m, REMOVED).load(Ordering::Acquire) != 0);
        [
            u64_at(m, TAILW).load(Ordering::Acquire),
            u64_at(m, HEADW).load(Ordering::Acquire),
            u64_at(m, LISTW).load(Ordering::Acquire),
            settings,
        ]
    }

    /// Wakes the sleepers, if there are any (the Dekker pattern with
    /// [`MessageQueue::wait_change`]): called right after a `SeqCst`
    /// read-modify-write or store that made the change visible (the slot's
    /// publishing swap, the unlocking store), which orders the change
    /// before the load of the sleeper count as a fence would.
    fn notify_after_barrier(&self, ev: Ev) {
        let m = self.map();
        let (word, waiters) = ev.words(m);
        // The waker, not the sleeper, resets the count: until a woken
        // sleeper gets to run (on one CPU: not before the waker sleeps),
        // further changes make no futex call. A sleeper that left without
        // being woken leaves the count up, which costs one spare wake-up.
        if waiters.load(Ordering::SeqCst) > 0 && waiters.swap(0, Ordering::SeqCst) > 0 {
            word.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(word, u32::MAX);
        }
    }

    /// Waits until the queue changes (or the deadline): a short adaptive
    /// spin until `moved()` says something changed (it reads only what the
    /// waiting side needs, so that the spin pulls no cache line the other
    /// side is writing), then a futex sleep if `unchanged()` still says
    /// nothing that the waiter waits for changed since it looked.
    fn wait_change(
        &self,
        ev: Ev,
        unchanged: impl FnOnce() -> bool,
        deadline: Deadline,
        mut moved: impl FnMut() -> bool,
    ) -> Result<(), Fault> {
        if deadline.expired() {
            return Err(Fault::Timeout);
        }
        let m = self.map();
        // The other side last waited on this CPU, or yielding ended our
        // last wait, or spinning has not paid lately (two parties the
        // scheduler keeps on one CPU, such as the two ends of a round trip,
        // which both wait as receivers): the other side is most likely
        // runnable here, and can neither be spun for nor needs a wake-up to
        // run. Yielding lets it work through the whole queue now; sleeping
        // instead (and being woken, which on one CPU preempts the waker)
        // would hand over one message at a time.
        let here = self.peer_here(ev) || self.yielding.helps() || !self.spin.paying();
        let watched = if here {
            self.yielding.now(&mut moved) || self.spin.spin(&mut moved)
        } else {
            self.spin.spin(&mut moved) || self.yielding.wait(&mut moved)
        };
        if watched {
            return Ok(());
        }
        let (word, waiters) = ev.words(m);
        // The word before announcing ourselves: a waker that resets the
        // count we add to bumps the word after that, so the sleep below
        // cannot outlast a wake-up meant for us.
        let c = word.load(Ordering::SeqCst);
        waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // A receiver's half of the asymmetric fence that senders publish
        // without (see `Ring::publish`): a sender that did not see our
        // count has its message visible to `unchanged` below. Should the
        // kernel refuse it, the sleep is bounded instead.
        let mut cap = None;
        if matches!(ev, Ev::Msg) && u32_at(m, LIGHT).load(Ordering::SeqCst) != 0 && !sys_membarrier() {
            cap = Some(FENCELESS_NAP);
        }
        if unchanged() {
            // No periodic wake-up without a deadline: nothing a sleeper
            // waits for depends on another process staying alive (a dead
            // sender's half-filled slot is waited out by a receiver that is
            // awake, never asleep), every change that can help wakes it, and
            // removal wakes everybody. A kernel timer per sleep would cost
            // a good part of a one-CPU round trip.
            match deadline {
                Deadline::Never => sys::futex_wait(word, c, cap),
                Deadline::At(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        sys::futex_wait(word, c, Some(cap.map_or(left, |c| c.min(left))));
                    }
                }
                Deadline::Now => {}
            }
        }
        Ok(())
    }

    /// Records the CPU this waiter is on; says whether the other side
    /// (senders for a receiver, receivers for a sender) last waited on it too.
    fn peer_here(&self, ev: Ev) -> bool {
        let Some(cpu) = sys::current_cpu() else { return false };
        let m = self.map();
        let (mine, peers) = match ev {
            Ev::Msg => (u32_at(m, MSG_CPU), u32_at(m, ROOM_CPU)),
            Ev::Room => (u32_at(m, ROOM_CPU), u32_at(m, MSG_CPU)),
        };
        let me = cpu.wrapping_add(1);
        if mine.load(Ordering::Relaxed) != me {
            mine.store(me, Ordering::Relaxed);
        }
        peers.load(Ordering::Relaxed) == me
    }

    /// Reads `HEADW`, then `LISTW` (in that order: see `msgq/ring.rs`) and
    /// remembers them as this process's view, with the tail as it was then.
    fn refresh_view(&self) -> (u64, u64) {
        let m = self.map();
        let h = u64_at(m, HEADW).load(Ordering::Acquire);
        let l = u64_at(m, LISTW).load(Ordering::Acquire);
        self.view[0].store(h, Ordering::Relaxed);
        self.view[1].store(l, Ordering::Relaxed);
        self.view[2].store(u64_at(m, TAILW).load(Ordering::Acquire), Ordering::Relaxed);
        (h, l)
    }

    /// The cached view, if it is recent enough to be compared with tail
    /// `t` without the 32-bit counters wrapping: less than a lap of the
    /// ring and 1 GiB of text old.
    fn cached_view(&self, t: u64) -> Option<(u64, u64)> {
        let (vt, vb) = unpack(self.view[2].load(Ordering::Relaxed));
        let (tpos, tbytes) = unpack(t);
        if tpos.wrapping_sub(vt) > self.slots || tbytes.wrapping_sub(vb) > 1 << 30 {
            return None;
        }
        Some((self.view[0].load(Ordering::Relaxed), self.view[1].load(Ordering::Relaxed)))
    }

    /// One lock-free attempt to append a message to the ring: its text
    /// inline in the slot, or (longer than [`INLINE`]) in the arena at the
    /// byte count the tail's move gives it (`msgq/arena.rs`).
    fn push(&self, mtype: i64, data: &[u8]) -> Pushed {
        let len = data.len();
        let m = self.map();
        let ring = self.ring();
        let me = sys::pid();
        // Whether this handle may publish without a fence: not an answer
        // (a handle that received since its last send: a receiver most
        // likely waits for it, and a fence on its own side is cheaper than
        // making every sleeper fence). Asked before anything is claimed:
        // the first call of a process makes system calls (a sender killed
        // in them holds no slot).
        let may_light = !self.backoff.got.load(Ordering::Relaxed) && light_publish();
        let tailw = u64_at(m, TAILW);
        let mut qbytes = u64::from(u32_at(m, QBYTES).load(Ordering::Acquire));
        if len > INLINE {
            // What keeps a long text off every queued one (`msgq/arena.rs`),
            // also when a forged `msg_qbytes` exceeds the arena.
            qbytes = qbytes.min(self.arena as u64);
        }
        let mut fresh = false;
        for _ in 0..1000 {
            // The view first, then the tail: the head never passes the tail.
            let (h, l, t) = if fresh {
                let (h, l) = self.refresh_view();
                (h, l, tailw.load(Ordering::Acquire))
            } else {
                let t = tailw.load(Ordering::Acquire);
                let Some((h, l)) = self.cached_view(t) else {
                    fresh = true;
                    continue;
                };
                (h, l, t)
            };
            let ((tpos, tbytes), (hpos, hbytes), (ln, lb)) = (unpack(t), unpack(h), unpack(l));
            let in_ring = tpos.wrapping_sub(hpos);
            let qnum = u64::from(in_ring) + u64::from(ln);
            let cbytes = u64::from(tbytes.wrapping_sub(hbytes)) + u64::from(lb);
            let fits = cbytes + len as u64 <= qbytes && qnum < qbytes;
            if !fits || in_ring >= self.slots {
                if !fresh {
                    fresh = true;
                    continue;
                }
                if !fits {
                    return Pushed::Full([t, h, l, qbytes << 1]);
                }
                if in_ring > self.slots {
                    // The head moved between the two reads: look again.
                    continue;
                }
                return Pushed::NoSlot;
            }
            // The head has passed `tpos - N` (`in_ring < N`): the slot is
            // free unless another sender claimed it for `tpos`. The claim
            // is tried at once on what the last lap most likely left (a
            // message taken): a load first would fetch the line shared,
            // then the CAS would have to fetch it again, exclusive.
            let likely = ring.taken_word(tpos);
            if len <= INLINE {
                ring.prefetch_text(tpos, len);
            }
            if in_ring > 0 && in_ring + AHEAD < self.slots {
                // A slot AHEAD positions on, whose last message the
                // receivers already took (by our view of the head, which
                // only lags): fetch its lines for writing now, so that the
                // claim there finds them here instead of waiting for the
                // receiver's CPU to give them up. A hint: no memory changes.
                ring.prefetch_slot(tpos.wrapping_add(AHEAD));
            }
            if let Err(w) = ring.claim_from(tpos, likely, me) {
                if !ring.free_for(tpos, w) {
                    if tailw.load(Ordering::Acquire) != t {
                        continue;
                    }
                    // A sender claiming it (or a forged word: pid 0, and
                    // the lock holder's repair is asked to look).
                    let (seq, claim) = unpack(w);
                    return Pushed::Busy { pos: tpos, pid: if seq == tpos { claim } else { 0 } };
                }
                if ring.claim_from(tpos, w, me).is_err() {
                    continue;
                }
            }
            // Under the claim, nobody else moves the tail from `tpos` (a
            // sender moves it only from the position it holds the claim
            // of), so once it is still `t`, `t` stays the tail until this
            // store: the admission above was exact, and the move needs no
            // locked instruction. (The claim's CAS is ordered before it,
            // as are the slot's header stores: a receiver that sees the
            // tail past `tpos` sees the claim.)
            if tailw.load(Ordering::Acquire) != t {
                ring.unclaim(tpos);
                continue;
            }
            // Without a fence only while streaming (messages queued, by our
            // view): then the receivers are told first, once (the flag's
            // RMW is a full barrier before any fenceless publish).
            let light = may_light && in_ring > 0;
            if light {
                let flag = u32_at(m, LIGHT);
                if flag.load(Ordering::Relaxed) == 0 {
                    flag.fetch_or(1, Ordering::SeqCst);
                }
            }
            ring.describe(tpos, mtype, len, 0);
            tailw.store(pack(tpos.wrapping_add(1), tbytes.wrapping_add(len as u32)), Ordering::Release);
            if len > INLINE {
                // The tail's move allotted it arena bytes `tbytes..`; the
                // slot is ours to fill (a receiver reaching it waits).
                self.arena().write(tbytes, data);
                ring.publish(tpos, &[], false, light);
            } else {
                // The ring was empty (by our view, which only ever
                // overestimates what is queued): a receiver may be
                // waiting for just this message.
                ring.publish(tpos, data, in_ring == 0, light);
            }
            self.sent_by(me);
            return Pushed::Sent;
        }
        Pushed::Busy { pos: unpack(tailw.load(Ordering::Relaxed)).0, pid: 0 }
    }

    /// Records a send by `me`: `msg_lspid`, `msg_stime`.
    fn sent_by(&self, me: u32) {
        let m = self.map();
        let lspid = u32_at(m, LSPID);
        if lspid.load(Ordering::Relaxed) != me {
            lspid.store(me, Ordering::Relaxed);
        }
        let now = sys::coarse_now_secs();
        let stime = u64_at(m, STIME);
        if stime.load(Ordering::Relaxed) != now {
            stime.store(now, Ordering::Relaxed);
        }
    }

    /// `msgsnd(2)`: sends `data` with type `mtype` (> 0), blocking while the queue is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Disconnected`] when the queue was removed,
    /// [`SendError::TooLarge`] over the maximum message size,
    /// [`SendError::Io`] (`InvalidInput` for `mtype <= 0`, `PermissionDenied`).
    pub fn send(&self, mtype: i64, data: &[u8]) -> Result<(), SendError<Vec<u8>>> {
        self.send_inner(mtype, data, Deadline::Never).map_err(|f| SendError::from_fault(f, data.to_vec()))
    }

    /// `msgsnd(2)` with `IPC_NOWAIT`.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] when it would block, otherwise as [`MessageQueue::send`].
    pub fn try_send(&self, mtype: i64, data: &[u8]) -> Result<(), TrySendError<Vec<u8>>> {
        self.send_inner(mtype, data, Deadline::Now).map_err(|f| TrySendError::from_fault(f, data.to_vec()))
    }

    /// `msgsnd(2)`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`], otherwise as [`MessageQueue::send`].
    pub fn send_timeout(
        &self,
        mtype: i64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<Vec<u8>>> {
        self.send_deadline(mtype, data, Instant::now() + timeout)
    }

    /// `msgsnd(2)`, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::send_timeout`].
    pub fn send_deadline(
        &self,
        mtype: i64,
        data: &[u8],
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<Vec<u8>>> {
        self.send_inner(mtype, data, Deadline::At(deadline))
            .map_err(|f| SendTimeoutError::from_fault(f, data.to_vec()))
    }

    fn send_inner(&self, mtype: i64, data: &[u8], deadline: Deadline) -> Result<(), Fault> {
        if mtype <= 0 {
            return Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "message type must be > 0",
            )));
        }
        let mut busy = Busy::default();
        loop {
            self.check(Access::Write)?;
            let max = u32_at(self.map(), MAXMSG).load(Ordering::Relaxed) as usize;
            if data.len() > max {
                return Err(Fault::TooLarge { len: data.len(), max });
            }
            // Every slot taken: drain the ring under the lock, then push
            // (the guard is a temporary).
            let pushed = match self.push(mtype, data) {
                Pushed::NoSlot => self.lock(deadline)?.push_drained(mtype, data)?,
                other => other,
            };
            match pushed {
                Pushed::Sent => {
                    self.backoff.sent();
                    self.durable_commit();
                    self.notify_after_barrier(Ev::Msg);
                    return Ok(());
                }
                Pushed::Full(seen) => {
                    if deadline == Deadline::Now {
                        return Err(Fault::Timeout);
                    }
                    let m = self.map();
                    // While spinning, wait for a batch of receives (an
                    // eighth of the ring), not one: retrying after every
                    // single receive would pull the receivers' line over
                    // once per message. (Asleep, any change wakes us.)
                    let batch = (self.slots / 8).max(1);
                    // And look only now and then: every look pulls the
                    // receivers' line (`HEADW`) and the lock's (`LISTW`)
                    // away from the receiver, which then has to fetch
                    // them back for its next receive (1 -> 1, queue full:
                    // the receiver spent a third of its time there).
                    let mut skip = 0u32;
                    let room = move || {
                        if skip > 0 {
                            skip -= 1;
                            return false;
                        }
                        let h = u64_at(m, HEADW).load(Ordering::Relaxed);
                        let taken = unpack(h).0.wrapping_sub(unpack(seen[1]).0);
                        if taken >= batch
                            || (h != seen[1] && data.len() > INLINE)
                            || u64_at(m, LISTW).load(Ordering::Relaxed) != seen[2]
                            || u32_at(m, QBYTES).load(Ordering::Relaxed) as u64 != seen[3] >> 1
                            || u32_at(m, REMOVED).load(Ordering::Relaxed) != 0
                        {
                            return true;
                        }
                        // About the time the receivers take for what is missing.
                        skip = (batch - taken) * ROOM_SKIP;
                        false
                    };
                    self.wait_change(Ev::Room, || self.snap() == seen, deadline, room)?;
                }
                Pushed::NoSlot => {}
                Pushed::Busy { pos, pid } => {
                    self.refresh_view();
                    if busy.wait(deadline)? {
                        self.unstick(pos, pid, deadline)?;
                    }
                }
            }
        }
    }

    /// Position `pos` has been busy for a while: take a dead sender's
    /// claim back, or take the lock (which repairs after a dead receiver).
    fn unstick(&self, pos: u32, pid: u32, deadline: Deadline) -> Result<(), Fault> {
        if pid != 0 {
            // Only a claim whose (dead) sender never moved the tail is
            // given back: behind the tail, a free and unclaimed slot would
            // read as the end of the ring (see `Ring::head`); the receiver
            // skips such a slot instead.
            let tail = || unpack(u64_at(self.map(), TAILW).load(Ordering::SeqCst)).0;
            if !sys::process_alive(pid) && tail() == pos {
                self.ring()
                    .word(pos)
                    .compare_exchange(pack(pos, pid), pack(pos, 0), Ordering::AcqRel, Ordering::Relaxed)
                    .ok();
            }
            return Ok(());
        }
        drop(self.lock(deadline)?);
        Ok(())
    }

    /// With [`Flush::EveryOperation`], writes the committed change to disk
    /// before the operation returns.
    fn durable_commit(&self) {
        if let Some((path, Flush::EveryOperation)) = &self.durable {
            if let Err(e) = self.seg.flush() {
                tracing::error!(path = %path.display(), error = %e, "msync failed: the change may not survive a reboot");
            }
        }
    }

    /// `msgrcv(2)`: takes the message `select` picks, blocking until there is
    /// one. Returns its type and text; `max_len` is the receiver's buffer size.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the queue was removed;
    /// [`RecvError::Frame`] (`TooLarge`) when the message is longer than
    /// `max_len` and `select.truncate` is off (the message stays queued);
    /// [`RecvError::Io`] (`PermissionDenied`).
    pub fn recv(&self, select: Select, max_len: usize) -> Result<(i64, Vec<u8>), RecvError> {
        self.recv_vec(select, max_len, Deadline::Never).map_err(RecvError::from_fault)
    }

    /// `msgrcv(2)` with `IPC_NOWAIT`.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing matches, otherwise as [`MessageQueue::recv`].
    pub fn try_recv(&self, select: Select, max_len: usize) -> Result<(i64, Vec<u8>), TryRecvError> {
        self.recv_vec(select, max_len, Deadline::Now).map_err(TryRecvError::from_fault)
    }

    /// `msgrcv(2)`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], otherwise as [`MessageQueue::recv`].
    pub fn recv_timeout(
        &self,
        select: Select,
        max_len: usize,
        timeout: Duration,
    ) -> Result<(i64, Vec<u8>), RecvTimeoutError> {
        self.recv_deadline(select, max_len, Instant::now() + timeout)
    }

    /// `msgrcv(2)`, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::recv_timeout`].
    pub fn recv_deadline(
        &self,
        select: Select,
        max_len: usize,
        deadline: Instant,
    ) -> Result<(i64, Vec<u8>), RecvTimeoutError> {
        self.recv_vec(select, max_len, Deadline::At(deadline)).map_err(RecvTimeoutError::from_fault)
    }

    /// `msgrcv(2)` into the caller's buffer, as `msgrcv` itself does (no
    /// allocation): takes the message `select` picks, blocking until there
    /// is one, and returns its type and how many bytes of `buf` it filled.
    /// `buf.len()` is the receiver's limit (`msgsz`).
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::recv`].
    pub fn recv_into(&self, select: Select, buf: &mut [u8]) -> Result<(i64, usize), RecvError> {
        self.recv_inner(select, buf.len(), Deadline::Never, &mut Out::Buf(buf)).map_err(RecvError::from_fault)
    }

    /// [`MessageQueue::recv_into`] with `IPC_NOWAIT`.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::try_recv`].
    pub fn try_recv_into(&self, select: Select, buf: &mut [u8]) -> Result<(i64, usize), TryRecvError> {
        self.recv_inner(select, buf.len(), Deadline::Now, &mut Out::Buf(buf))
            .map_err(TryRecvError::from_fault)
    }

    /// [`MessageQueue::recv_into`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::recv_timeout`].
    pub fn recv_into_timeout(
        &self,
        select: Select,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<(i64, usize), RecvTimeoutError> {
        self.recv_into_deadline(select, buf, Instant::now() + timeout)
    }

    /// [`MessageQueue::recv_into`], waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::recv_timeout`].
    pub fn recv_into_deadline(
        &self,
        select: Select,
        buf: &mut [u8],
        deadline: Instant,
    ) -> Result<(i64, usize), RecvTimeoutError> {
        self.recv_inner(select, buf.len(), Deadline::At(deadline), &mut Out::Buf(buf))
            .map_err(RecvTimeoutError::from_fault)
    }

    fn recv_vec(&self, select: Select, max_len: usize, deadline: Deadline) -> Result<(i64, Vec<u8>), Fault> {
        let mut text = Vec::new();
        let (mtype, _) = self.recv_inner(select, max_len, deadline, &mut Out::Vec(&mut text))?;
        Ok((mtype, text))
    }

    fn recv_inner(
        &self,
        select: Select,
        max_len: usize,
        deadline: Deadline,
        out: &mut Out<'_>,
    ) -> Result<(i64, usize), Fault> {
        let m = self.map();
        let ring = self.ring();
        // A receive that does not wait also waits out a sender that moved
        // the tail and is filling the head slot (see `Ring::head`).
        let mut quick = deadline != Deadline::Now;
        let mut first = true;
        let answer = self.backoff.answer();
        loop {
            let g = match self.try_lock() {
                Some(g) => g,
                None => self.lock(deadline)?,
            };
            if first {
                // The common case first, without the general path's
                // bookkeeping (it falls through to it for anything else).
                first = false;
                let streaming = self.backoff.queued.load(Ordering::Relaxed);
                if let Some(found) = g.take_head(select, max_len, out, streaming) {
                    if !streaming {
                        self.backoff.queued.store(true, Ordering::Relaxed);
                    }
                    self.backoff.got();
                    return Ok(found);
                }
                if streaming {
                    self.backoff.queued.store(false, Ordering::Relaxed);
                }
            }
            g.quick.set(quick);
            g.check(Access::Read)?;
            if let Some(found) = g.take(select, max_len, deadline, out)? {
                self.backoff.got();
                return Ok(found);
            }
            // What the receive found: the head slot (the next message
            // there changes its word: a sender claims it, then publishes
            // it) and the list. A slot published since is taken at once.
            // (With the head passed over, what comes after it.)
            let hpos = g.headw().0.wrapping_add(g.passed.get());
            let list = u64_at(m, LISTW).load(Ordering::Relaxed);
            let head = ring.word(hpos).load(Ordering::Acquire);
            drop(g);
            if unpack(head).0 == hpos.wrapping_add(1) {
                continue;
            }
            if deadline == Deadline::Now {
                return Err(Fault::Timeout);
            }
            // Spin on the head slot (the line the sender writes anyway),
            // not the tail, until it is published: a sender's claim is
            // not waited on (looking again then would only pull the line
            // away from the sender filling it).
            //
            // A sender streaming faster than we receive is right behind
            // us: each look at its slot while it fills it costs it a fetch
            // of the line back. So after a wait that a look or two ended
            // (the sender was busy filling that slot), the next wait
            // starts with a pause that lets it run ahead and fill a batch
            // undisturbed, which we then take at our own pace; a wait that
            // takes longer (a round trip: the other side is not streaming)
            // shrinks the pause back to nothing (see `Backoff`).
            // (Nor when the last wait ended by yielding: the sender shares
            // our CPU, and cannot fill anything while we pause.)
            let pause = self.backoff.start(answer || self.yielding.helps());
            let looks = std::cell::Cell::new(0u32);
            let published = || {
                looks.set(looks.get() + 1);
                unpack(ring.word(hpos).load(Ordering::Relaxed)).0 == hpos.wrapping_add(1)
            };
            let arrived = || {
                published()
                    || u64_at(m, LISTW).load(Ordering::Relaxed) != list
                    || u32_at(m, REMOVED).load(Ordering::Relaxed) != 0
            };
            // Before sleeping, also the tail: it is at the head when the
            // ring is empty (a tail ahead of an unpublished head slot is a
            // sender filling it, or a forged word: not slept on).
            let unchanged = || !arrived() && unpack(u64_at(m, TAILW).load(Ordering::SeqCst)).0 == hpos;
            self.wait_change(Ev::Msg, unchanged, deadline, arrived)?;
            // Spun out or woken without a message at the head: look at the
            // tail too on the next round (see `Ring::head`).
            quick = published();
            // Only a wait that the message at the head ended tells how far
            // ahead its sender was (not one that a change of the list ended,
            // as a round trip's partner taking a drained request does).
            self.backoff.adapt(pause, if quick { looks.get() } else { u32::MAX });
        }
    }

    /// `msgctl(IPC_STAT)`.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] without read permission; [`Error::NotFound`] once removed.
    pub fn stat(&self) -> Result<QueueStat> {
        let g = self.lock(Deadline::Never).map_err(fault_error)?;
        g.check(Access::Read).map_err(fault_error)?;
        let m = self.map();
        let r = |off| g.get(off);
        let t = |off| u64_at(m, off).load(Ordering::Relaxed);
        // Under the lock no receiver moves the head or the list: together
        // with one read of the tail, the counts are a snapshot.
        let (hpos, hbytes) = unpack(t(HEADW));
        let (ln, lb) = unpack(t(LISTW));
        let (tpos, tbytes) = unpack(u64_at(m, TAILW).load(Ordering::Acquire));
        // Slots whose sender died between moving the tail and publishing
        // hold no message: not counted (receivers skip them).
        let (dead, dead_bytes) = g.dead_claims(hpos, tpos);
        Ok(QueueStat {
            messages: (tpos.wrapping_sub(hpos) as usize + ln as usize).saturating_sub(dead),
            bytes: (tbytes.wrapping_sub(hbytes) as usize + lb as usize).saturating_sub(dead_bytes),
            capacity: r(QBYTES) as usize,
            max_message: r(MAXMSG) as usize,
            last_sender: r(LSPID),
            last_receiver: r(LRPID),
            send_time: t(STIME),
            recv_time: t(RTIME),
            change_time: t(CTIME),
            owner: self.owner(),
            creator: (r(CUID), r(CGID)),
        })
    }

    /// `msgctl(IPC_SET)`: the owner, the creator or root may change the
    /// capacity (up to the queue's `max_capacity`), the owner and the mode.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`], [`Error::InvalidName`] for a capacity
    /// outside `1..=max_capacity`, [`Error::NotFound`] once removed.
    pub fn set(&self, change: QueueSet) -> Result<()> {
        let g = self.lock(Deadline::Never).map_err(fault_error)?;
        g.check_owner().map_err(fault_error)?;
        if let Some(c) = change.capacity {
            if c == 0 || c > g.get(MAXCAP) as usize {
                return Err(Error::InvalidName {
                    name: self.name().to_owned(),
                    why: "capacity beyond max_capacity",
                });
            }
            g.put(QBYTES, c as u32);
        }
        if let Some(uid) = change.uid {
            g.put(UID, uid);
        }
        if let Some(gid) = change.gid {
            g.put(GID, gid);
        }
        if let Some(mode) = change.mode {
            g.put(MODE, mode & 0o777);
        }
        // The object in /dev/shm must let the new owner and classes map it.
        let (uid, gid, mode) = (g.get(UID), g.get(GID), g.get(MODE));
        if change.uid.is_some() || change.gid.is_some() || change.mode.is_some() {
            self.seg.set_owner(Owner { uid, gid, mode: file_mode(mode) })?;
        }
        u64_at(self.map(), CTIME).store(now_secs(), Ordering::Relaxed);
        g.changed();
        Ok(())
    }

    /// `msgctl(IPC_RMID)`: removes the queue. Blocked senders and receivers
    /// wake with `Disconnected`; the name is free at once.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] unless owner, creator or root.
    pub fn remove(self) -> Result<()> {
        let g = self.lock(Deadline::Never).map_err(fault_error)?;
        g.check_owner().map_err(fault_error)?;
        g.put(REMOVED, 1);
        g.changed();
        drop(g);
        // Wake every sleeper unconditionally: each sees the flag.
        for ev in [Ev::Msg, Ev::Room] {
            let (word, _) = ev.words(self.map());
            word.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(word, u32::MAX);
        }
        if let Some((path, _)) = &self.durable {
            return std::fs::remove_file(path).map_err(|e| Error::io(path.display(), e));
        }
        let full = format!("{}{}", crate::shm::PREFIX, self.name());
        sys::shm_unlink(&full).map_err(|e| Error::io(self.name(), e))
    }

    /// Removes queue `name` by name (as [`MessageQueue::remove`]).
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::open`] and [`MessageQueue::remove`].
    pub fn remove_name(name: &str) -> Result<()> {
        MessageQueue::open(name, Access::Read).or_else(|_| MessageQueue::open(name, Access::Write))?.remove()
    }
}

/// What a sleeper waits for.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// A message (receivers).
    Msg,
    /// Room (senders).
    Room,
}

impl Ev {
    /// The futex word and the sleeper count.
    fn words(self, m: &Mapping) -> (&AtomicU32, &AtomicU32) {
        match self {
            Ev::Msg => (u32_at(m, MSG_EVT), u32_at(m, MSG_WAITERS)),
            Ev::Room => (u32_at(m, ROOM_EVT), u32_at(m, ROOM_WAITERS)),
        }
    }
}

/// Where a receive puts the text.
enum Out<'b> {
    /// A vector, sized to the text.
    Vec(&'b mut Vec<u8>),
    /// The caller's buffer.
    Buf(&'b mut [u8]),
}

impl Out<'_> {
    /// Room for `keep` bytes (`keep` is at most the buffer's length).
    fn room(&mut self, keep: usize) -> &mut [u8] {
        match self {
            Out::Vec(v) => {
                v.clear();
                v.resize(keep, 0);
                v
            }
            Out::Buf(b) => &mut b[..keep],
        }
    }
}

/// How long a receiver that finds the ring empty waits before it looks at
/// the head slot (in `pause`s, ~14 ns each on the bench's VM), adapted to
/// what the last waits found: a message at the first look or two (a
/// sender streaming right behind: pause longer next time, up to
/// [`Backoff::MAX`]), or only after many looks (a message that was not on
/// its way: a round trip's reply, a sender that paused; shrink).
#[derive(Debug, Default)]
struct Backoff {
    pauses: AtomicU32,
    /// This handle sent a message since its last wait for one: the
    /// message awaited now is most likely an answer to it (a round trip,
    /// whose latency a pause would only add to), not part of a stream.
    sent: std::sync::atomic::AtomicBool,
    /// The last receive found its message at the head at once: messages
    /// are queued behind it, most likely.
    queued: std::sync::atomic::AtomicBool,
    /// This handle received a message since its last send: its next send
    /// is most likely an answer, which a receiver waits for.
    got: std::sync::atomic::AtomicBool,
}

impl Backoff {
    /// At most ~1 us: a sender streaming 64-byte messages fills a few
    /// dozen slots meanwhile, an eighth of the smallest ring's.
    const MAX: u32 = 64;

    /// Records a send through this handle.
    fn sent(&self) {
        if !self.sent.load(Ordering::Relaxed) {
            self.sent.store(true, Ordering::Relaxed);
        }
        if self.got.load(Ordering::Relaxed) {
            self.got.store(false, Ordering::Relaxed);
        }
    }

    /// Records a receive through this handle.
    fn got(&self) {
        if !self.got.load(Ordering::Relaxed) {
            self.got.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this handle sent since its last receive (and forgets it):
    /// then this receive most likely waits for an answer.
    fn answer(&self) -> bool {
        let sent = self.sent.load(Ordering::Relaxed);
        if sent {
            self.sent.store(false, Ordering::Relaxed);
        }
        sent
    }

    /// Pauses (only where spinning pays, and not for a round trip's
    /// answer); returns how many it paused (`u32::MAX`: none, for an answer).
    fn start(&self, answer: bool) -> u32 {
        if answer {
            return u32::MAX;
        }
        let n = self.pauses.load(Ordering::Relaxed);
        if n > 0 && spin_pays() {
            for _ in 0..n {
                std::hint::spin_loop();
            }
        }
        n
    }

    /// After a wait that paused `paused` and then looked `looks` times.
    fn adapt(&self, paused: u32, looks: u32) {
        if paused == u32::MAX {
            return;
        }
        let next = match looks {
            0..=2 => (paused * 2).clamp(4, Self::MAX),
            3..=8 => paused,
            _ => paused / 4,
        };
        if next != paused {
            self.pauses.store(next, Ordering::Relaxed);
        }
    }
}

/// Waiting out a position another party is working on: spin, then yield;
/// `wait` says `true` every [`NAP`], when it is time to ask whether that
/// party is still alive.
#[derive(Default)]
struct Busy {
    spins: u32,
    since: Option<Instant>,
}

impl Busy {
    fn wait(&mut self, deadline: Deadline) -> Result<bool, Fault> {
        self.spins += 1;
        if self.spins < 200 && spin_pays() {
            std::hint::spin_loop();
            return Ok(false);
        }
        std::thread::yield_now();
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= NAP {
            self.since = Some(Instant::now());
            if deadline.expired() {
                return Err(Fault::Timeout);
            }
            return Ok(true);
        }
        Ok(false)
    }
}

const MIN_SLOTS: u32 = 16;
const MAX_SLOTS: u32 = 1024;

/// Where everything of a queue is.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    chunks: usize,
    slots: u32,
    arena: usize,
    size: usize,
}

/// Checks a configuration; returns the chunk and slot counts, the arena's
/// size and the segment's.
fn geometry(name: &str, config: &QueueConfig) -> Result<Geometry> {
    let max_capacity = config.max_capacity.max(config.capacity);
    if config.max_message == 0
        || config.max_message > 1 << 24
        || config.capacity == 0
        || max_capacity > 1 << 26
    {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            why: "message size 1 byte..16 MiB, capacity 1 byte..64 MiB",
        });
    }
    // Worst case: max_capacity one-byte messages (a header chunk and a data
    // chunk each), or text spread over data chunks.
    let chunks = (2 * max_capacity).max(max_capacity.div_ceil(DATA) + 1 + config.max_message.div_ceil(DATA));
    // A ring slot per 64 bytes of capacity (as many as 64-byte messages fit).
    let slots = (max_capacity / 64).next_power_of_two().clamp(MIN_SLOTS as usize, MAX_SLOTS as usize) as u32;
    // Long texts: an arena as large as the most bytes ever queued at once
    // (a power of two, see `msgq/arena.rs`); none if no text is long.
    let arena = if config.max_message > INLINE { max_capacity.next_power_of_two() } else { 0 };
    let size = SLOTS - HEADER_LEN + slots as usize * SLOT + chunks * CHUNK + arena;
    Ok(Geometry { chunks, slots, arena, size })
}

fn fault_error(f: Fault) -> Error {
    match f {
        Fault::Disconnected => Error::NotFound("the queue was removed".into()),
        Fault::Timeout => Error::Timeout,
        Fault::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Error::PermissionDenied(e.to_string())
        }
        Fault::Io(e) => Error::Io(e),
        Fault::Frame(e) => Error::Frame(e),
        Fault::TooLarge { len, max } => Error::Frame(FrameError::TooLarge { len, max }),
    }
}

#[cfg(test)]
mod tests;
