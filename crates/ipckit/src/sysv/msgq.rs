//! System V-style typed message queues, in shared memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock::{now_secs, RobustLock, Taken};
use crate::error::{Error, Fault, FrameError, RecvError, RecvTimeoutError, Result, SendError};
use crate::error::{SendTimeoutError, TryRecvError, TrySendError};
use crate::perm::{self, Access, Caller, Owner};
use crate::shm::{Segment, SegmentKind, HEADER_LEN};
use crate::sys::{self, Deadline, Mapping};

// Queue header (offsets from the start of the mapping).
const Q: usize = HEADER_LEN;
const LOCK: usize = Q;
const LOCK_WAITERS: usize = Q + 4;
const CHANGE: usize = Q + 8;
const CHANGE_WAITERS: usize = Q + 12;
const REMOVED: usize = Q + 16;
const NCHUNKS: usize = Q + 20;
const QNUM: usize = Q + 24;
const CBYTES: usize = Q + 28;
const QBYTES: usize = Q + 32;
const MAXMSG: usize = Q + 36;
const HEAD: usize = Q + 40;
const TAIL: usize = Q + 44;
const FREE: usize = Q + 48;
const BUMP: usize = Q + 52;
const LSPID: usize = Q + 56;
const LRPID: usize = Q + 60;
const STIME: usize = Q + 64;
const RTIME: usize = Q + 72;
const CTIME: usize = Q + 80;
const UID: usize = Q + 88;
const GID: usize = Q + 92;
const MODE: usize = Q + 96;
const CUID: usize = Q + 100;
const CGID: usize = Q + 104;
const USED: usize = Q + 108;
const MAXCAP: usize = Q + 112;
const BOOT: usize = Q + 120;
const CHUNKS: usize = Q + 128;

// Chunks: 64 bytes. A message is a header chunk plus a chain of data chunks.
const CHUNK: usize = 64;
const DATA: usize = 60;
const C_NEXT: usize = 0;
const C_DATA: usize = 4;
const C_TYPE: usize = 8;
const C_LEN: usize = 16;

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
///   consistent: every operation commits with one store while holding a
///   lock, and the next process to take the lock from a dead holder rebuilds
///   the bookkeeping from what was committed (the message is fully there or
///   not at all), so nobody waits on the dead.
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
    caller: Caller,
    /// For a durable queue: its file, and when to write it out.
    durable: Option<(std::path::PathBuf, Flush)>,
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

impl MessageQueue {
    /// Creates queue `name`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`] (also for a bad
    /// configuration), [`Error::PermissionDenied`], [`Error::Io`].
    pub fn create(name: &str, config: QueueConfig) -> Result<MessageQueue> {
        let (chunks, size) = geometry(name, &config)?;
        let seg = Segment::create_kind(name, size, file_mode(config.mode & 0o777), SegmentKind::MsgQueue)?;
        Ok(MessageQueue::init(seg, chunks, &config, None))
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
        let (chunks, size) = geometry(&path.display().to_string(), &config)?;
        let seg = Segment::create_file(path, size, file_mode(config.mode & 0o777), SegmentKind::MsgQueue)?;
        let q = MessageQueue::init(seg, chunks, &config, Some((path.to_owned(), flush)));
        q.seg.flush()?;
        Ok(q)
    }

    /// Opens a durable queue. After a reboot, the pids recorded in it mean
    /// nothing: its lock is reset and its bookkeeping rebuilt from the
    /// committed messages.
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
            for off in [LOCK, LOCK_WAITERS, CHANGE_WAITERS] {
                u32_at(q.map(), off).store(0, Ordering::SeqCst);
            }
            let g = q.lock(Deadline::Never).map_err(fault_error)?;
            g.repair();
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

    fn init(
        seg: Segment,
        chunks: usize,
        config: &QueueConfig,
        durable: Option<(std::path::PathBuf, Flush)>,
    ) -> MessageQueue {
        let m = seg.mapping();
        let w = |off, v: u32| u32_at(m, off).store(v, Ordering::Relaxed);
        w(NCHUNKS, chunks as u32);
        w(QBYTES, config.capacity as u32);
        w(MAXMSG, config.max_message as u32);
        w(MAXCAP, config.max_capacity.max(config.capacity) as u32);
        w(UID, sys::euid());
        w(GID, sys::egid());
        w(CUID, sys::euid());
        w(CGID, sys::egid());
        w(MODE, config.mode & 0o777);
        u64_at(m, CTIME).store(now_secs(), Ordering::Relaxed);
        u64_at(m, BOOT).store(sys::boot_id(), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        MessageQueue { seg, chunks, caller: Caller::current(), durable }
    }

    /// Checks an opened segment's geometry and the caller's `access`.
    fn adopt(
        seg: Segment,
        durable: Option<(std::path::PathBuf, Flush)>,
        access: Access,
    ) -> Result<MessageQueue> {
        let chunks = u32_at(seg.mapping(), NCHUNKS).load(Ordering::Acquire) as usize;
        if chunks == 0 || CHUNKS + chunks * CHUNK > seg.mapping().len() {
            return Err(Error::Corrupted(format!(
                "queue {:?}: its chunk count does not fit its segment",
                seg.name()
            )));
        }
        let q = MessageQueue { seg, chunks, caller: Caller::current(), durable };
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

    fn owner(&self) -> Owner {
        let m = self.map();
        Owner {
            uid: u32_at(m, UID).load(Ordering::Relaxed),
            gid: u32_at(m, GID).load(Ordering::Relaxed),
            mode: u32_at(m, MODE).load(Ordering::Relaxed),
        }
    }

    fn lock(&self, deadline: Deadline) -> Result<Guard<'_>, Fault> {
        let m = self.map();
        let lock = RobustLock { word: u32_at(m, LOCK), waiters: u32_at(m, LOCK_WAITERS) };
        let taken = lock.lock(deadline)?;
        let g = Guard { q: self, lock, wake: std::cell::Cell::new(false) };
        if taken == Taken::FromTheDead {
            g.repair();
        }
        Ok(g)
    }

    /// Sleeps until something changes (or 10 ms, or the deadline).
    fn wait_change(&self, seen: u32, deadline: Deadline) -> Result<(), Fault> {
        if deadline.expired() {
            return Err(Fault::Timeout);
        }
        let m = self.map();
        let (word, waiters) = (u32_at(m, CHANGE), u32_at(m, CHANGE_WAITERS));
        waiters.fetch_add(1, Ordering::SeqCst);
        if word.load(Ordering::SeqCst) == seen {
            let mut nap = Duration::from_millis(10);
            if let Deadline::At(at) = deadline {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            if !nap.is_zero() {
                sys::futex_wait(word, seen, Some(nap));
            }
        }
        waiters.fetch_sub(1, Ordering::SeqCst);
        Ok(())
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
        loop {
            let g = self.lock(deadline)?;
            g.check(Access::Write)?;
            let max = g.get(MAXMSG) as usize;
            if data.len() > max {
                return Err(Fault::TooLarge { len: data.len(), max });
            }
            if g.try_append(mtype, data) {
                return Ok(());
            }
            let seen = g.get(CHANGE);
            drop(g);
            if deadline == Deadline::Now {
                return Err(Fault::Timeout);
            }
            self.wait_change(seen, deadline)?;
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
        self.recv_inner(select, max_len, Deadline::Never).map_err(RecvError::from_fault)
    }

    /// `msgrcv(2)` with `IPC_NOWAIT`.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing matches, otherwise as [`MessageQueue::recv`].
    pub fn try_recv(&self, select: Select, max_len: usize) -> Result<(i64, Vec<u8>), TryRecvError> {
        self.recv_inner(select, max_len, Deadline::Now).map_err(TryRecvError::from_fault)
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
        self.recv_inner(select, max_len, Deadline::At(deadline)).map_err(RecvTimeoutError::from_fault)
    }

    fn recv_inner(
        &self,
        select: Select,
        max_len: usize,
        deadline: Deadline,
    ) -> Result<(i64, Vec<u8>), Fault> {
        loop {
            let g = self.lock(deadline)?;
            g.check(Access::Read)?;
            if let Some(found) = g.take(select, max_len)? {
                return Ok(found);
            }
            let seen = g.get(CHANGE);
            drop(g);
            if deadline == Deadline::Now {
                return Err(Fault::Timeout);
            }
            self.wait_change(seen, deadline)?;
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
        Ok(QueueStat {
            messages: r(QNUM) as usize,
            bytes: r(CBYTES) as usize,
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

/// Checks a configuration; returns the chunk count and the segment size.
fn geometry(name: &str, config: &QueueConfig) -> Result<(usize, usize)> {
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
    Ok((chunks, CHUNKS - HEADER_LEN + chunks * CHUNK))
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

/// The queue, locked. Everything that reads or changes the list goes through here.
struct Guard<'a> {
    q: &'a MessageQueue,
    lock: RobustLock<'a>,
    /// Something changed: wake the sleepers, after unlocking (a sleeper
    /// woken while we still hold the lock would only go back to sleep on it).
    wake: std::cell::Cell<bool>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
        let m = self.q.map();
        if self.wake.get() && u32_at(m, CHANGE_WAITERS).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(u32_at(m, CHANGE), u32::MAX);
        }
    }
}

impl Guard<'_> {
    fn get(&self, off: usize) -> u32 {
        u32_at(self.q.map(), off).load(Ordering::Relaxed)
    }

    fn put(&self, off: usize, v: u32) {
        u32_at(self.q.map(), off).store(v, Ordering::Relaxed);
    }

    /// With [`Flush::EveryOperation`], writes the committed change to disk
    /// before the operation returns.
    fn durable_commit(&self) {
        if let Some((path, Flush::EveryOperation)) = &self.q.durable {
            if let Err(e) = self.q.seg.flush() {
                tracing::error!(path = %path.display(), error = %e, "msync failed: the change may not survive a reboot");
            }
        }
    }

    /// Wakes every sleeper: each re-checks its own condition.
    fn changed(&self) {
        u32_at(self.q.map(), CHANGE).fetch_add(1, Ordering::SeqCst);
        self.wake.set(true);
    }

    fn check(&self, want: Access) -> Result<(), Fault> {
        if self.get(REMOVED) != 0 {
            return Err(Fault::Disconnected);
        }
        if perm::allowed(&self.q.owner(), &self.q.caller, want) {
            Ok(())
        } else {
            Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "queue permission denied",
            )))
        }
    }

    fn check_owner(&self) -> Result<(), Fault> {
        if self.get(REMOVED) != 0 {
            return Err(Fault::Disconnected);
        }
        let me = self.q.caller.uid;
        if me == 0 || me == self.get(UID) || me == self.get(CUID) {
            Ok(())
        } else {
            Err(Fault::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not the queue's owner")))
        }
    }

    /// Chunk `i` (1-based) field at `off`, or `None` if `i` is out of range.
    fn chunk(&self, i: u32, off: usize) -> Option<&AtomicU32> {
        if i == 0 || i as usize > self.q.chunks {
            return None;
        }
        self.q.map().u32_at(CHUNKS + (i as usize - 1) * CHUNK + off)
    }

    fn link(&self, i: u32, off: usize) -> Result<u32, Fault> {
        self.chunk(i, off).map(|w| w.load(Ordering::Relaxed)).ok_or_else(corrupt)
    }

    fn mtype(&self, i: u32) -> Result<i64, Fault> {
        let at = CHUNKS + (i as usize - 1) * CHUNK + C_TYPE;
        self.q.map().u64_at(at).map(|w| w.load(Ordering::Relaxed) as i64).ok_or_else(corrupt)
    }

    fn alloc(&self) -> Option<u32> {
        let free = self.get(FREE);
        if free != 0 {
            let next = self.chunk(free, C_NEXT)?.load(Ordering::Relaxed);
            self.put(FREE, next);
            return Some(free);
        }
        let bump = self.get(BUMP);
        if (bump as usize) < self.q.chunks {
            self.put(BUMP, bump + 1);
            return Some(bump + 1);
        }
        None
    }

    fn release(&self, i: u32) {
        if let Some(w) = self.chunk(i, C_NEXT) {
            w.store(self.get(FREE), Ordering::Relaxed);
            self.put(FREE, i);
        }
    }

    /// Appends a message if it fits; the store linking it in is the commit.
    fn try_append(&self, mtype: i64, data: &[u8]) -> bool {
        let (qnum, cbytes, qbytes) = (self.get(QNUM), self.get(CBYTES) as usize, self.get(QBYTES) as usize);
        let need = 1 + data.len().div_ceil(DATA);
        let used = self.get(USED) as usize;
        if cbytes + data.len() > qbytes || qnum as usize + 1 > qbytes || used + need > self.q.chunks {
            return false;
        }
        let Some(head) = self.alloc() else { return false };
        let m = self.q.map();
        let base = |i: u32| CHUNKS + (i as usize - 1) * CHUNK;
        let mut prev = head;
        let mut first = 0;
        for part in data.chunks(DATA) {
            let Some(c) = self.alloc() else { return false };
            m.write(base(c) + C_DATA, part);
            self.chunk(c, C_NEXT).expect("allocated").store(0, Ordering::Relaxed);
            if first == 0 {
                first = c;
            } else {
                self.chunk(prev, C_NEXT).expect("allocated").store(c, Ordering::Relaxed);
            }
            prev = c;
        }
        self.chunk(head, C_NEXT).expect("allocated").store(0, Ordering::Relaxed);
        self.chunk(head, C_DATA).expect("allocated").store(first, Ordering::Relaxed);
        m.u64_at(base(head) + C_TYPE).expect("allocated").store(mtype as u64, Ordering::Relaxed);
        self.chunk(head, C_LEN).expect("allocated").store(data.len() as u32, Ordering::Relaxed);
        // Commit: link the message in.
        let tail = self.get(TAIL);
        match self.chunk(tail, C_NEXT) {
            Some(t) => t.store(head, Ordering::Relaxed),
            None => self.put(HEAD, head),
        }
        self.put(TAIL, head);
        self.put(QNUM, qnum + 1);
        self.put(CBYTES, (cbytes + data.len()) as u32);
        self.put(USED, (used + need) as u32);
        self.put(LSPID, sys::pid());
        u64_at(m, STIME).store(now_secs(), Ordering::Relaxed);
        self.durable_commit();
        self.changed();
        true
    }

    /// Finds the message `select` picks: (previous, message).
    fn find(&self, select: Select) -> Result<Option<(u32, u32)>, Fault> {
        let mut best: Option<(u32, u32, i64)> = None;
        let (mut prev, mut cur) = (0u32, self.get(HEAD));
        for _ in 0..=self.q.chunks {
            if cur == 0 {
                return Ok(best.map(|(p, c, _)| (p, c)));
            }
            let t = self.mtype(cur)?;
            if select.mtype < 0 {
                if t <= -select.mtype && best.is_none_or(|(_, _, bt)| t < bt) {
                    best = Some((prev, cur, t));
                }
            } else if select.matches_first(t) {
                return Ok(Some((prev, cur)));
            }
            prev = cur;
            cur = self.link(cur, C_NEXT)?;
        }
        Err(corrupt())
    }

    /// Takes the selected message out, if any; the unlinking store is the commit.
    fn take(&self, select: Select, max_len: usize) -> Result<Option<(i64, Vec<u8>)>, Fault> {
        let found = match self.find(select) {
            Ok(f) => f,
            Err(_) => {
                self.repair();
                self.find(select)?
            }
        };
        let Some((prev, msg)) = found else { return Ok(None) };
        let len = self.link(msg, C_LEN)? as usize;
        if len > max_len && !select.truncate {
            return Err(Fault::Frame(FrameError::TooLarge { len, max: max_len }));
        }
        let mtype = self.mtype(msg)?;
        let keep = len.min(max_len);
        let mut out = Vec::with_capacity(keep);
        let mut chunks = vec![msg];
        let mut c = self.link(msg, C_DATA)?;
        let mut left = len;
        while left > 0 {
            if c == 0 || chunks.len() > self.q.chunks {
                self.repair();
                return Err(corrupt());
            }
            let n = left.min(DATA);
            if out.len() < keep {
                let mut part = vec![0u8; n.min(keep - out.len())];
                self.q.map().read(CHUNKS + (c as usize - 1) * CHUNK + C_DATA, &mut part);
                out.extend_from_slice(&part);
            }
            chunks.push(c);
            left -= n;
            c = self.link(c, C_NEXT)?;
        }
        // Commit: unlink the message.
        let next = self.link(msg, C_NEXT)?;
        match self.chunk(prev, C_NEXT) {
            Some(p) => p.store(next, Ordering::Relaxed),
            None => self.put(HEAD, next),
        }
        if self.get(TAIL) == msg {
            self.put(TAIL, prev);
        }
        self.put(QNUM, self.get(QNUM).saturating_sub(1));
        self.put(CBYTES, (self.get(CBYTES) as usize).saturating_sub(len) as u32);
        self.put(USED, (self.get(USED) as usize).saturating_sub(chunks.len()) as u32);
        for c in chunks {
            self.release(c);
        }
        self.put(LRPID, sys::pid());
        u64_at(self.q.map(), RTIME).store(now_secs(), Ordering::Relaxed);
        self.durable_commit();
        self.changed();
        Ok(Some((mtype, out)))
    }

    /// Rebuilds the bookkeeping from the committed list: what a dead lock
    /// holder (or a stray write) left half done is dropped, every message
    /// that was linked in survives whole, and lost chunks are freed.
    fn repair(&self) {
        let n = self.q.chunks;
        let max = self.get(MAXMSG) as usize;
        let mut seen = vec![false; n + 1];
        let (mut count, mut bytes, mut used, mut last) = (0u32, 0usize, 0usize, 0u32);
        let mut cur = self.get(HEAD);
        let cut = |at: u32| match self.chunk(at, C_NEXT) {
            Some(w) => w.store(0, Ordering::Relaxed),
            None => self.put(HEAD, 0),
        };
        loop {
            if cur == 0 {
                break;
            }
            let ok = (cur as usize) <= n && !seen[cur as usize] && {
                let len = self.link(cur, C_LEN).unwrap_or(u32::MAX) as usize;
                let mut c = self.link(cur, C_DATA).unwrap_or(0);
                let mut chain = Vec::new();
                let mut good = len <= max;
                for _ in 0..len.div_ceil(DATA) {
                    if !good || c == 0 || c as usize > n || seen[c as usize] || chain.contains(&c) {
                        good = false;
                        break;
                    }
                    chain.push(c);
                    c = self.link(c, C_NEXT).unwrap_or(0);
                }
                if good {
                    seen[cur as usize] = true;
                    for &c in &chain {
                        seen[c as usize] = true;
                    }
                    count += 1;
                    bytes += len;
                    used += 1 + chain.len();
                }
                good
            };
            if !ok {
                cut(last);
                break;
            }
            last = cur;
            cur = self.link(cur, C_NEXT).unwrap_or(0);
        }
        self.put(TAIL, last);
        self.put(QNUM, count);
        self.put(CBYTES, bytes as u32);
        self.put(USED, used as u32);
        let bump = (self.get(BUMP) as usize).min(n);
        self.put(BUMP, bump as u32);
        self.put(FREE, 0);
        for i in (1..=bump).rev() {
            if !seen[i] {
                self.release(i as u32);
            }
        }
        self.changed();
    }
}

fn corrupt() -> Fault {
    Fault::Frame(FrameError::BadHandles("the queue's message list is corrupted"))
}
