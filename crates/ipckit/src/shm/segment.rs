//! Named shared-memory segments.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Offset;
use crate::error::{Error, Result};
use crate::message::{Handle, Transferable};
use crate::perm::{self, Access, Caller, Owner};
use crate::sys::{self, Mapping};
use crate::wire::{HandleKind, HandleMeta};

const MAGIC: u64 = u64::from_le_bytes(*b"IPCKSHM1");
/// The layout version: 2 since the queue's lock-free send path, the two-slot
/// RPC's exchange line and the loan pool's in-buffer descriptors (objects made
/// by a version-1 build are refused with a clear error, never misread); 3 since
/// long queue texts in an arena on the lock-free ring; 4 since the semaphores'
/// lock-free path (a busy bit in each value word); 5 since queue receivers no
/// longer write ring slots (a slot is free for the next lap once the head has
/// passed it); 6 since a two-slot RPC request lies contiguously from inside
/// the exchange line (zero-copy requests, a server hold word) and an
/// in-flight loan's descriptor carries its generation; 7 since a queue's
/// list counters left its lock's cache line (and a flag word marks queues
/// with fence-free senders).
const VERSION: u32 = 7;
/// Bytes of ipckit's header at the start of every segment; the user area follows.
pub const HEADER_LEN: usize = 64;
/// The largest segment ipckit creates (1 TiB).
pub const MAX_SEGMENT: usize = 1 << 40;
/// The prefix of every ipckit object in `/dev/shm`.
pub const PREFIX: &str = "ipckit.";

// Header fields (offsets).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_KIND: usize = 12;
const H_SIZE: usize = 16;
const H_UID: usize = 24;
const H_GID: usize = 28;
const H_MODE: usize = 32;
const H_CREATOR: usize = 36;
const H_READY: usize = 40;

/// What a segment holds, recorded in its header so that one kind of object
/// is never opened as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SegmentKind {
    /// Plain bytes for the user.
    Raw = 0,
    /// The two-slot RPC of [`crate::shm::rpc`].
    TwoSlotRpc = 1,
    /// A message ring of [`crate::shm::channel`].
    Ring = 2,
    /// A pool of loanable buffers ([`crate::shm::LoanPool`]).
    LoanPool = 3,
    /// A publish-subscribe ring ([`crate::shm::pubsub`]).
    PubSub = 4,
    /// A System V-style message queue ([`crate::sysv::MessageQueue`]).
    MsgQueue = 5,
    /// A System V-style semaphore set ([`crate::sysv::SemaphoreSet`]).
    SemSet = 6,
    /// A cross-process event ([`crate::event::Event`]).
    Event = 7,
}

/// A named shared-memory segment (POSIX `shm_open(3)` + `mmap(2)`).
///
/// Each process maps a segment at its own address, so nothing in it may be a
/// pointer: data refers to data by [`Offset`], checked against the bounds on
/// every use. Nothing read from a segment is trusted: another process (or a
/// corrupted file) can write anything, and a bad header or offset is an
/// error, never an access outside the mapping.
///
/// Segments persist until [`Segment::remove`]d, like System V shared memory.
///
/// # Examples
///
/// ```
/// use ipckit::shm::{Offset, Segment};
/// let name = format!("doc-{}", std::process::id());
/// let seg = Segment::create(&name, 4096, 0o600)?;
/// seg.write(Offset::new(100), b"hello")?;
/// let other = Segment::open(&name)?; // another process would do this
/// let mut buf = [0u8; 5];
/// other.read(Offset::new(100), &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// Segment::remove(&name)?;
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Segment {
    name: String,
    fd: Arc<OwnedFd>,
    map: Arc<Mapping>,
}

impl Segment {
    /// Creates segment `name` with `size` usable bytes (zeroed), owned by the
    /// caller, with permission bits `mode` (e.g. `0o600`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::PermissionDenied`], [`Error::Io`].
    pub fn create(name: &str, size: usize, mode: u32) -> Result<Segment> {
        Segment::create_kind(name, size, mode, SegmentKind::Raw)
    }

    /// Opens an existing segment for reading and writing.
    ///
    /// Both the kernel's file permissions and ipckit's own owner/group/mode
    /// check (on the header) must allow read and write.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::Corrupted`]
    /// when the header is not a valid ipckit header, [`Error::InvalidName`].
    pub fn open(name: &str) -> Result<Segment> {
        Segment::open_kind(name, SegmentKind::Raw)
    }

    /// Opens segment `name`, creating it (as [`Segment::create`]) if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`] and [`Segment::open`].
    pub fn open_or_create(name: &str, size: usize, mode: u32) -> Result<Segment> {
        match Segment::create(name, size, mode) {
            Err(Error::AlreadyExists(_)) => Segment::open(name),
            other => other,
        }
    }

    /// Removes segment `name` (`shm_unlink(3)`): the name is free at once;
    /// processes that have it mapped keep their mapping. Only the owner (or
    /// root) may remove it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::InvalidName`].
    pub fn remove(name: &str) -> Result<()> {
        check_name(name)?;
        let full = format!("{PREFIX}{name}");
        // Look at whatever is under the name without opening it (it may be a
        // FIFO or a symlink someone planted): only its owner matters here.
        let uid = sys::shm_owner(&full).map_err(|e| Error::io(name, e))?;
        let me = sys::euid();
        if me != 0 && me != uid {
            return Err(Error::PermissionDenied(name.to_owned()));
        }
        sys::shm_unlink(&full).map_err(|e| Error::io(name, e))
    }

    pub(crate) fn create_kind(name: &str, size: usize, mode: u32, kind: SegmentKind) -> Result<Segment> {
        check_name(name)?;
        if size == 0 || size > MAX_SEGMENT {
            return Err(Error::InvalidName { name: name.to_owned(), why: "size must be 1 byte to 1 TiB" });
        }
        let full = format!("{PREFIX}{name}");
        let fd = sys::shm_create(&full, mode & 0o777).map_err(|e| Error::io(name, e))?;
        let made = Segment::init(fd, name, size, mode, kind);
        if made.is_err() {
            let _ = sys::shm_unlink(&full);
        }
        made
    }

    /// Sizes, maps and writes the header of a freshly created object.
    fn init(fd: OwnedFd, name: &str, size: usize, mode: u32, kind: SegmentKind) -> Result<Segment> {
        let total = HEADER_LEN + size;
        sys::set_len(fd.as_fd(), total as u64)?;
        let map = Mapping::map(&fd, total)?;
        let seg = Segment { name: name.to_owned(), fd: Arc::new(fd), map: Arc::new(map) };
        let h = &seg.map;
        let w32 = |off, v| h.u32_at(off).expect("header in bounds").store(v, Ordering::Relaxed);
        h.u64_at(H_MAGIC).expect("header").store(MAGIC, Ordering::Relaxed);
        w32(H_VERSION, VERSION);
        w32(H_KIND, kind as u32);
        h.u64_at(H_SIZE).expect("header").store(total as u64, Ordering::Relaxed);
        w32(H_UID, sys::euid());
        w32(H_GID, sys::egid());
        w32(H_MODE, mode & 0o777);
        w32(H_CREATOR, sys::pid());
        // Publish: everything above happens-before a reader that sees READY.
        h.u32_at(H_READY).expect("header").store(1, Ordering::Release);
        Ok(seg)
    }

    /// As `create_kind`, but in a regular file at `path` (survives a reboot).
    pub(crate) fn create_file(path: &Path, size: usize, mode: u32, kind: SegmentKind) -> Result<Segment> {
        if size == 0 || size > MAX_SEGMENT {
            return Err(Error::InvalidName {
                name: path.display().to_string(),
                why: "size must be 1 byte to 1 TiB",
            });
        }
        let fd = sys::file_create(path, mode & 0o777).map_err(|e| Error::io(path.display(), e))?;
        let made = Segment::init(fd, &path.display().to_string(), size, mode, kind);
        if made.is_err() {
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// As `open_kind`, for a segment in a regular file.
    pub(crate) fn open_file(path: &Path, kind: SegmentKind) -> Result<Segment> {
        let fd = sys::file_open(path).map_err(|e| Error::io(path.display(), e))?;
        let seg = Segment::from_fd(path.display().to_string(), fd)?;
        seg.expect_kind(kind)?;
        if !perm::allowed(&seg.owner(), &Caller::current(), Access::ReadWrite) {
            return Err(Error::PermissionDenied(path.display().to_string()));
        }
        Ok(seg)
    }

    /// `msync(2)`: writes the segment's pages to its file (for a segment in
    /// a regular file; a no-op cost for shared memory).
    pub(crate) fn flush(&self) -> Result<()> {
        Ok(self.map.flush()?)
    }

    pub(crate) fn open_kind(name: &str, kind: SegmentKind) -> Result<Segment> {
        check_name(name)?;
        let full = format!("{PREFIX}{name}");
        let fd = sys::shm_open(&full, true).map_err(|e| open_error(name, e))?;
        let seg = Segment::from_fd(name.to_owned(), fd)?;
        seg.expect_kind(kind)?;
        if !perm::allowed(&seg.owner(), &Caller::current(), Access::ReadWrite) {
            return Err(Error::PermissionDenied(name.to_owned()));
        }
        Ok(seg)
    }

    /// Rebuilds a segment of `kind` from a descriptor handed over by another process.
    pub(crate) fn adopt(name: String, fd: OwnedFd, kind: SegmentKind) -> Result<Segment> {
        let seg = Segment::from_fd(name, fd)?;
        seg.expect_kind(kind)?;
        Ok(seg)
    }

    /// The descriptor, duplicated (for handing the segment to another process).
    pub(crate) fn dup_fd(&self) -> Result<OwnedFd> {
        Ok(self.fd.as_ref().try_clone()?)
    }

    /// Gives the object a new owner and permission bits, on the file and in
    /// the header alike (for `IPC_SET` on the objects built on segments).
    pub(crate) fn set_owner(&self, owner: Owner) -> Result<()> {
        let mode = owner.mode & 0o777;
        sys::set_file_owner(self.fd.as_fd(), owner.uid, owner.gid, mode)
            .map_err(|e| Error::io(&self.name, e))?;
        self.header32(H_UID).store(owner.uid, Ordering::Relaxed);
        self.header32(H_GID).store(owner.gid, Ordering::Relaxed);
        self.header32(H_MODE).store(mode, Ordering::Relaxed);
        Ok(())
    }

    /// Maps `fd` and checks its header as input from a stranger.
    fn from_fd(name: String, fd: OwnedFd) -> Result<Segment> {
        let corrupt = |why: &str| Error::Corrupted(format!("segment {name:?}: {why}"));
        // The creator may still be creating it: an object is empty between
        // `shm_open(O_CREAT)` and `ftruncate`, then its header is written.
        let until = Instant::now() + Duration::from_secs(1);
        let (mut len, _, _, _) = sys::file_info(fd.as_fd())?;
        while len == 0 && Instant::now() <= until {
            std::thread::yield_now();
            len = sys::file_info(fd.as_fd())?.0;
        }
        if len < HEADER_LEN as u64 || len > (HEADER_LEN + MAX_SEGMENT) as u64 {
            return Err(corrupt("too small or too large to be an ipckit segment"));
        }
        let map = Mapping::map(&fd, len as usize)?;
        let seg = Segment { name: name.clone(), fd: Arc::new(fd), map: Arc::new(map) };
        while seg.header32(H_READY).load(Ordering::Acquire) != 1 {
            if seg.header32(H_READY).load(Ordering::Acquire) > 1 {
                return Err(corrupt("the header's ready word holds garbage"));
            }
            if Instant::now() > until {
                return Err(corrupt("header never became ready (creator died while creating it?)"));
            }
            std::thread::yield_now();
        }
        if seg.map.u64_at(H_MAGIC).expect("header").load(Ordering::Relaxed) != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let v = seg.header32(H_VERSION).load(Ordering::Relaxed);
        if v != VERSION {
            return Err(corrupt(&format!("layout version {v}, this build reads {VERSION}")));
        }
        if seg.map.u64_at(H_SIZE).expect("header").load(Ordering::Relaxed) != len {
            return Err(corrupt("recorded size does not match the object's size"));
        }
        Ok(seg)
    }

    fn expect_kind(&self, kind: SegmentKind) -> Result<()> {
        let k = self.header32(H_KIND).load(Ordering::Relaxed);
        if k != kind as u32 {
            return Err(Error::Corrupted(format!(
                "segment {:?} holds kind {k}, expected {:?} ({})",
                self.name, kind, kind as u32
            )));
        }
        Ok(())
    }

    fn header32(&self, off: usize) -> &AtomicU32 {
        self.map.u32_at(off).expect("the header is inside every mapping")
    }

    /// The segment's name (without ipckit's prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Usable bytes (after ipckit's header).
    pub fn len(&self) -> usize {
        self.map.len() - HEADER_LEN
    }

    /// Whether the segment has no usable bytes (never, for one ipckit made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Owner and mode as recorded at creation.
    pub fn owner(&self) -> Owner {
        Owner {
            uid: self.header32(H_UID).load(Ordering::Relaxed),
            gid: self.header32(H_GID).load(Ordering::Relaxed),
            mode: self.header32(H_MODE).load(Ordering::Relaxed) & 0o777,
        }
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.header32(H_CREATOR).load(Ordering::Relaxed)
    }

    /// Whether the creating process is gone (the segment may be left over).
    pub fn is_stale(&self) -> bool {
        // The header is untrusted: a value no pid can have (above i32::MAX)
        // is no process, not a negative pid (a process group) for kill(2).
        let pid = self.creator_pid();
        i32::try_from(pid).is_err() || !sys::process_alive(pid)
    }

    /// The 32-bit atomic word at `off` in the user area.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when `off` is out of bounds or not 4-byte aligned.
    pub fn atomic_u32(&self, off: Offset<AtomicU32>) -> Result<&AtomicU32> {
        HEADER_LEN
            .checked_add(off.get())
            .and_then(|o| self.map.u32_at(o))
            .ok_or_else(|| self.bad_offset(off.get(), 4))
    }

    /// The 64-bit atomic word at `off` in the user area.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when `off` is out of bounds or not 8-byte aligned.
    pub fn atomic_u64(&self, off: Offset<AtomicU64>) -> Result<&AtomicU64> {
        HEADER_LEN
            .checked_add(off.get())
            .and_then(|o| self.map.u64_at(o))
            .ok_or_else(|| self.bad_offset(off.get(), 8))
    }

    /// Copies `dst.len()` bytes out of the user area at `off`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when the range is out of bounds.
    pub fn read(&self, off: Offset<[u8]>, dst: &mut [u8]) -> Result<()> {
        match HEADER_LEN.checked_add(off.get()) {
            Some(o) if self.map.read(o, dst) => Ok(()),
            _ => Err(self.bad_offset(off.get(), dst.len())),
        }
    }

    /// Copies `src` into the user area at `off`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when the range is out of bounds.
    pub fn write(&self, off: Offset<[u8]>, src: &[u8]) -> Result<()> {
        match HEADER_LEN.checked_add(off.get()) {
            Some(o) if self.map.write(o, src) => Ok(()),
            _ => Err(self.bad_offset(off.get(), src.len())),
        }
    }

    fn bad_offset(&self, off: usize, len: usize) -> Error {
        Error::Corrupted(format!(
            "segment {:?}: offset {off} (+{len} bytes) is outside its {} bytes or misaligned",
            self.name,
            self.len()
        ))
    }

    /// The whole mapping (header included), for ipckit's own layouts.
    pub(crate) fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }
}

impl Transferable for Segment {
    fn into_handle(self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::Segment, 1);
        meta.pending = self.name.as_bytes().to_vec();
        let fd = self.fd.as_ref().try_clone()?;
        Ok(Handle { meta, fds: vec![fd] })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Segment)?;
        let Handle { meta, fds } = handle;
        let name = String::from_utf8(meta.pending).map_err(|_| Error::BadHandle("segment name".into()))?;
        check_name(&name)?;
        let fd = fds.into_iter().next().expect("checked count");
        let seg = Segment::from_fd(name, fd)?;
        // Only a plain segment travels as a `Segment`: a queue, ring or RPC
        // segment opened raw could be corrupted by accident.
        seg.expect_kind(SegmentKind::Raw)?;
        Ok(seg)
    }
}

/// An open that found something other than a segment under the name is `Corrupted`.
fn open_error(name: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Error::Corrupted(format!("segment {name:?}: {e}"))
    } else {
        Error::io(name, e)
    }
}

/// Segment names: 1-200 letters, digits, `_`, `-`, `.`; no `/`, no `..`, no NUL.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > 200 {
        "longer than 200 bytes"
    } else if name.contains("..") {
        "contains '..'"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        "use only letters, digits, '_', '-' and '.' (no '/', no NUL)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_owned(), why })
}
