//! System calls for the naming server's fast paths: sealed `memfd` name
//! tables that clients map read-only, services' own listening sockets in
//! the abstract namespace, and the eventfd that wakes the server's death
//! watcher.
//!
//! # Safety
//!
//! A [`ReadMapping`] owns a `PROT_READ`, `MAP_SHARED` region from `mmap(2)`
//! for its whole life, so its base pointer and length stay valid until
//! `Drop`. It maps only descriptors whose size is sealed
//! ([`table_len_if_sealed`]: `F_SEAL_SHRINK`), so no page of it can vanish
//! under us (no `SIGBUS`). Another process (the naming server) writes the
//! region at any time, so nothing here hands out a reference into it: 64-bit
//! words are read one at a time as atomic loads (an aligned atomic load of
//! at most the native word size is sound on read-only memory), after a bounds
//! and alignment check. A check that fails is `None`, never an
//! out-of-bounds access.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::Mapping;

/// The seals a name table carries: nobody may resize it, nobody but the
/// mapping its creator made before sealing may write it, and the seals
/// themselves are final.
const TABLE_SEALS: SealFlags =
    SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::FUTURE_WRITE).union(SealFlags::SEAL);

/// `memfd_create(2)` + `ftruncate(2)` + `mmap(2)` + `F_ADD_SEALS`: a
/// `len`-byte table the caller writes through the returned mapping, and a
/// read-only descriptor of it for readers.
///
/// The seals (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE |
/// F_SEAL_SEAL`) are added after the writable mapping is made, so only that
/// mapping can write; the readers' descriptor is also reopened `O_RDONLY`
/// (through `/proc/self/fd`) where `/proc` is mounted.
pub(crate) fn sealed_table(name: &str, len: usize) -> io::Result<(Mapping, OwnedFd)> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    let map = Mapping::map(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, TABLE_SEALS)?;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let ro = match rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(ro) => ro,
        // The seals alone still forbid writing and resizing.
        Err(_) => fd,
    };
    Ok((map, ro))
}

/// The size of a table descriptor received from the naming server, if it is
/// a sealed memfd that nobody can shrink, grow or write through a new
/// mapping (so mapping it can never fault and never be written by a peer).
pub(crate) fn table_len_if_sealed(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a sealed memfd: {e}")))?;
    let need = SealFlags::SHRINK | SealFlags::GROW;
    if !seals.contains(need) || !seals.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("table seals {seals:?} are missing some"),
        ));
    }
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// A `MAP_SHARED`, read-only mapping of a sealed table.
#[derive(Debug)]
pub(crate) struct ReadMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only memory shared with other processes; all
// access is bounds-checked atomic loads, which are as safe from several
// threads as from several processes.
unsafe impl Send for ReadMapping {}
// SAFETY: as above: `&ReadMapping` only allows atomic loads.
unsafe impl Sync for ReadMapping {}

impl ReadMapping {
    /// `mmap(2)` the first `len` bytes of `fd`, shared and read-only. The
    /// caller has checked (with [`table_len_if_sealed`]) that the object is
    /// at least `len` bytes long and cannot shrink.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map zero bytes"));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias any Rust object; the fd is valid for the call.
        let p =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(ReadMapping { ptr, len })
    }

    /// Loads the 64-bit word at `off` (8-byte aligned, in bounds); `None` otherwise.
    pub(crate) fn load(&self, off: usize, order: Ordering) -> Option<u64> {
        let end = off.checked_add(8)?;
        if end > self.len || off % 8 != 0 {
            return None;
        }
        // SAFETY: `off + 8 <= len`, `off` 8-aligned, page-aligned base: the word is inside
        // the mapping, which lives as long as `&self`; AtomicU64 has u64's layout, every
        // bit pattern is valid, and only a load is made, which read-only memory allows.
        let word = unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) };
        Some(word.load(order))
    }
}

impl Drop for ReadMapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `map` with this length and nothing
        // borrowed from it outlives `&self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds: the same clock in every
/// process of the machine (outside time namespaces).
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// A non-blocking, close-on-exec UNIX stream socket (`socket(2)`).
fn nonblocking_stream_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// `socket(2)` + `bind(2)` + `listen(2)` on abstract address `name` (no
/// filesystem entry; gone when the socket closes): non-blocking, close-on-exec.
pub(crate) fn abstract_listen(name: &[u8], backlog: i32) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = nonblocking_stream_socket()?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// The abstract name `fd` listens on, if it is a listening UNIX stream
/// socket bound to one (`getsockname(2)`, `SO_ACCEPTCONN`, `SO_TYPE`).
pub(crate) fn abstract_name_of_listener(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    if rustix::net::sockopt::socket_type(fd)? != SocketType::STREAM {
        return Err(bad("not a stream socket"));
    }
    if !rustix::net::sockopt::socket_acceptconn(fd)? {
        return Err(bad("not listening"));
    }
    let addr =
        SocketAddrUnix::try_from(rustix::net::getsockname(fd)?).map_err(|_| bad("not a UNIX socket"))?;
    addr.abstract_name().map(<[u8]>::to_vec).ok_or_else(|| bad("not bound to an abstract name"))
}

/// `socket(2)` + `connect(2)` to abstract address `name`. When the
/// listener's backlog is full the connect waits for room, at most `wait`
/// (`SO_SNDTIMEO`, reset afterwards): `WouldBlock` if none came.
/// `ConnectionRefused` when nobody listens. The connected socket is returned
/// blocking, like every ipckit connection.
pub(crate) fn abstract_connect(name: &[u8], wait: std::time::Duration) -> io::Result<OwnedFd> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = nonblocking_stream_socket()?;
    let mut waited = false;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            // The backlog is full: wait for the service to take some (once).
            Err(Errno::AGAIN) if !waited && !wait.is_zero() => {
                waited = true;
                super::set_nonblocking(&fd, false)?;
                set_socket_timeout(&fd, Timeout::Send, Some(wait))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if waited {
        set_socket_timeout(&fd, Timeout::Send, None)?;
    } else {
        super::set_nonblocking(&fd, false)?;
    }
    Ok(fd)
}

/// `accept4(2)` on a non-blocking listener: `Ok(None)` when nobody waits.
pub(crate) fn accept_pending(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    super::unix_accept(listener)
}

/// `eventfd(2)`, non-blocking and close-on-exec: a descriptor to wake a
/// thread blocked in `poll(2)`.
pub(crate) fn wake_fd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Makes a [`wake_fd`] readable.
pub(crate) fn wake(fd: impl AsFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets a [`wake_fd`].
pub(crate) fn drain_wake(fd: impl AsFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}
