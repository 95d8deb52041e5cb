//! The one layer where ipckit makes system calls.
//!
//! Everything here is a thin wrapper over [`rustix`]; the rest of the crate
//! never names a system call. Descriptors are created close-on-exec. Waits
//! happen in the kernel where it can time them (`SO_RCVTIMEO` on sockets, a
//! plain blocking `read(2)` on a pipe with no deadline) and otherwise in
//! `poll(2)`; attempts that must not wait say so per call (`MSG_DONTWAIT`,
//! `RWF_NOWAIT`), so every blocking operation honours a deadline.
//!
//! The only raw calls (`close_range(2)` and `fcntl(2)` between `fork` and
//! `exec`, which rustix does not cover) live in [`raw`].

mod map;
pub(crate) mod naming;
mod raw;
pub(crate) mod sig;

pub(crate) use map::Mapping;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

pub(crate) use raw::{current_cpu, keep_only_across_exec, peer_groups, seal_inherited_fd, take_inherited_fd};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// When a blocking operation gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Do not block at all (the `try_` form).
    Now,
    /// Block until this instant (the `_timeout` and `_deadline` forms).
    At(Instant),
    /// Block for as long as it takes.
    Never,
}

impl Deadline {
    pub(crate) fn after(timeout: std::time::Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(at) => Deadline::At(at),
            None => Deadline::Never,
        }
    }

    /// The `poll(2)` timeout left, or `None` to wait forever.
    pub(crate) fn remaining(self) -> Option<Timespec> {
        match self {
            Deadline::Now => Some(Timespec { tv_sec: 0, tv_nsec: 0 }),
            Deadline::Never => None,
            Deadline::At(at) => {
                let left = at.saturating_duration_since(Instant::now());
                Some(Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) })
            }
        }
    }

    pub(crate) fn expired(self) -> bool {
        match self {
            Deadline::Now => true,
            Deadline::Never => false,
            Deadline::At(at) => Instant::now() >= at,
        }
    }
}

/// What a descriptor is waited for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Interest {
    Read,
    Write,
}

impl Interest {
    fn flags(self) -> PollFlags {
        match self {
            Interest::Read => PollFlags::IN,
            Interest::Write => PollFlags::OUT,
        }
    }
}

/// `poll(2)` on one descriptor until it is ready or the deadline passes.
///
/// Returns `Ok(true)` when ready (including hang-up and error, which the
/// following read or write reports), `Ok(false)` on timeout.
pub(crate) fn wait(fd: BorrowedFd<'_>, interest: Interest, deadline: Deadline) -> io::Result<bool> {
    loop {
        let mut fds = [PollFd::from_borrowed_fd(fd, interest.flags())];
        match poll(&mut fds, deadline.remaining().as_ref()) {
            Ok(0) => {
                if deadline.expired() {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `poll(2)` on many descriptors; readiness is left in each `PollFd`.
pub(crate) fn wait_many(fds: &mut [PollFd<'_>], deadline: Deadline) -> io::Result<usize> {
    loop {
        match poll(fds, deadline.remaining().as_ref()) {
            Ok(0) if !deadline.expired() => {}
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

pub(crate) use rustix::event::{PollFd as PollEntry, PollFlags as Ready};

/// Waits until any of `fds`, or `extra`, is readable (or hung up).
///
/// Returns the positions of the ready ones in `fds` and whether `extra` is
/// ready, or `None` when the deadline passes first.
pub(crate) fn wait_readable_any<'a>(
    fds: impl Iterator<Item = BorrowedFd<'a>>,
    extra: Option<BorrowedFd<'a>>,
    deadline: Deadline,
) -> io::Result<Option<(Vec<usize>, bool)>> {
    let mut set: Vec<PollFd<'a>> = fds.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)).collect();
    let n = set.len();
    if let Some(fd) = extra {
        set.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
    }
    if wait_many(&mut set, deadline)? == 0 {
        return Ok(None);
    }
    let ready = (0..n).filter(|&i| !set[i].revents().is_empty()).collect();
    Ok(Some((ready, extra.is_some() && !set[n].revents().is_empty())))
}

/// `pipe2(2)` with `O_CLOEXEC | O_NONBLOCK`: returns (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    grow_pipe(w.as_fd());
    let nonblock = !pipes_block();
    set_nonblocking(&r, nonblock)?;
    set_nonblocking(&w, nonblock)?;
    Ok((r, w))
}

/// `fcntl(F_SETPIPE_SZ)`: asks for a 1 MiB pipe buffer (the unprivileged
/// maximum by default), so a large message and its 16-byte header fit in one
/// write instead of stalling until the reader makes room. Pages are only
/// used as data is written; if the kernel refuses, the default (64 KiB) stays.
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
}

/// Whether ipckit's pipes (and FIFOs) are left blocking.
///
/// On kernels whose pipes honour `RWF_NOWAIT` (5.x and later), pipe
/// descriptors block: a receive with no deadline is one `read(2)` that sleeps
/// in the kernel, and the attempts that must not wait use `preadv2` /
/// `pwritev2` with `RWF_NOWAIT`. Elsewhere they are `O_NONBLOCK` and every
/// wait is a `poll(2)`. Probed once per process.
pub(crate) fn pipes_block() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NOWAIT: AtomicU8 = AtomicU8::new(0);
    match NOWAIT.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).is_ok_and(|(r, _w)| {
                let mut b = [0u8; 1];
                let mut iov = [io::IoSliceMut::new(&mut b)];
                rustix::io::preadv2(&r, &mut iov, u64::MAX, rustix::io::ReadWriteFlags::NOWAIT)
                    == Err(Errno::AGAIN)
            });
            NOWAIT.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// `mkfifo(3)`: creates a named pipe at `path` with permission bits `mode`.
pub(crate) fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::from_raw_mode(mode))?;
    // mkfifo applies the umask; the caller asked for exactly `mode`.
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Whether `path` names a FIFO.
pub(crate) fn is_fifo(path: &Path) -> io::Result<bool> {
    let st = rustix::fs::stat(path)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo)
}

/// `open(2)` of a FIFO, for reading or writing, close-on-exec.
///
/// With `nonblock` the open itself does not wait for the other side
/// (a writer then fails with `ENXIO` while no reader has it open).
pub(crate) fn open_fifo(path: &Path, write: bool, nonblock: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::CLOEXEC | if write { OFlags::WRONLY } else { OFlags::RDONLY };
    if nonblock {
        flags |= OFlags::NONBLOCK;
    }
    loop {
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `fcntl(F_SETFL, O_NONBLOCK)` on or off.
pub(crate) fn set_nonblocking(fd: impl AsFd, on: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on)?;
    Ok(())
}

/// The two UNIX socket types ipckit speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_STREAM`: a byte stream; ipckit frames messages on it.
    Stream,
    /// `SOCK_SEQPACKET`: reliable, ordered, and the kernel keeps message boundaries.
    SeqPacket,
}

impl SocketKind {
    fn raw(self) -> SocketType {
        match self {
            SocketKind::Stream => SocketType::STREAM,
            SocketKind::SeqPacket => SocketType::SEQPACKET,
        }
    }
}

/// Listening sockets are non-blocking (accept loops until `EAGAIN`).
const LISTEN_FLAGS: SocketFlags = SocketFlags::CLOEXEC.union(SocketFlags::NONBLOCK);
/// Connected sockets block: receives wait in the kernel with `SO_RCVTIMEO`,
/// and every attempt that must not wait passes `MSG_DONTWAIT`.
const CONN_FLAGS: SocketFlags = SocketFlags::CLOEXEC;

/// `socket(2)` + `bind(2)` + `listen(2)` on a filesystem path.
pub(crate) fn unix_listen(path: &Path, kind: SocketKind, backlog: i32) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind.raw(), LISTEN_FLAGS, None)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// `socket(2)` + `connect(2)` to a filesystem path.
///
/// A UNIX-domain connect completes at once or fails (`ECONNREFUSED` when
/// nobody listens, `EAGAIN` when the backlog is full).
pub(crate) fn unix_connect(path: &Path, kind: SocketKind) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind.raw(), CONN_FLAGS, None)?;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// `accept4(2)`: `Ok(None)` when no connection is pending.
pub(crate) fn unix_accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    loop {
        match rustix::net::accept_with(listener, CONN_FLAGS) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::AGAIN) => return Ok(None),
            // The connecting process died before we got to it: not our error.
            Err(Errno::INTR) | Err(Errno::CONNABORTED) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `shutdown(SHUT_RDWR)`: both ends of the connection see end-of-stream.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::shutdown(fd, rustix::net::Shutdown::Both)?)
}

/// `setsockopt(SO_RCVTIMEO)`: how long a blocking receive waits (`None`: forever).
pub(crate) fn set_recv_timeout(fd: BorrowedFd<'_>, t: Option<std::time::Duration>) -> io::Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    Ok(set_socket_timeout(fd, Timeout::Recv, t)?)
}

/// `socketpair(2)`.
pub(crate) fn socketpair(kind: SocketKind) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, kind.raw(), CONN_FLAGS, None)?)
}

/// A peer process's identity, as the kernel recorded it (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's process id when it connected (or created the pair).
    pub pid: u32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

/// `getsockopt(SO_PEERCRED)`.
pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let c = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(PeerCred { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw(), gid: c.gid.as_raw() })
}

/// Whether `fd` is a socket (so it can carry descriptors).
pub(crate) fn is_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .unwrap_or(false)
}

/// Outcome of a non-blocking transfer.
pub(crate) enum Xfer {
    /// This many bytes moved (0 on a read means end of stream).
    Done(usize),
    /// The descriptor is not ready.
    WouldBlock,
}

fn xfer(r: rustix::io::Result<usize>) -> io::Result<Xfer> {
    match r {
        Ok(n) => Ok(Xfer::Done(n)),
        Err(Errno::AGAIN) => Ok(Xfer::WouldBlock),
        Err(e) => Err(e.into()),
    }
}

/// `read(2)` once on a pipe, retrying `EINTR`: with `block`, as the
/// descriptor says; without, `preadv2(RWF_NOWAIT)` so it never sleeps.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8], block: bool) -> io::Result<Xfer> {
    let nowait = !block && pipes_block();
    loop {
        let r = if nowait {
            let mut iov = [io::IoSliceMut::new(&mut *buf)];
            rustix::io::preadv2(fd, &mut iov, u64::MAX, rustix::io::ReadWriteFlags::NOWAIT)
        } else {
            rustix::io::read(fd, &mut *buf)
        };
        match r {
            Err(Errno::INTR) => {}
            // This descriptor (a FIFO, say) does not take RWF_NOWAIT: make it
            // non-blocking for good; waits then go through poll(2).
            Err(Errno::OPNOTSUPP) if nowait => {
                set_nonblocking(fd, true)?;
                return read(fd, buf, true);
            }
            r => return xfer(r),
        }
    }
}

/// `writev(2)` once (or `sendmsg(2)` with `MSG_NOSIGNAL | MSG_DONTWAIT` on a
/// socket), retrying `EINTR`. On a pipe without `block` it is
/// `pwritev2(RWF_NOWAIT)`, which writes what fits and never sleeps.
pub(crate) fn writev(
    fd: BorrowedFd<'_>,
    socket: bool,
    bufs: &[io::IoSlice<'_>],
    block: bool,
) -> io::Result<Xfer> {
    let nowait = !block && !socket && pipes_block();
    loop {
        let r = if socket {
            let mut control = SendAncillaryBuffer::default();
            rustix::net::sendmsg(fd, bufs, &mut control, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
        } else if nowait {
            rustix::io::pwritev2(fd, bufs, u64::MAX, rustix::io::ReadWriteFlags::NOWAIT)
        } else {
            rustix::io::writev(fd, bufs)
        };
        match r {
            Err(Errno::INTR) => {}
            Err(Errno::OPNOTSUPP) if nowait => {
                set_nonblocking(fd, true)?;
                return writev(fd, socket, bufs, true);
            }
            r => return xfer(r),
        }
    }
}

/// `sendmsg(2)` with `SCM_RIGHTS`, retrying `EINTR`.
pub(crate) fn sendmsg_fds(
    fd: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<Xfer> {
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
        }
        match rustix::net::sendmsg(fd, bufs, &mut control, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Err(Errno::INTR) => {}
            r => return xfer(r),
        }
    }
}

/// What one `recvmsg(2)` brought.
pub(crate) struct Received {
    pub(crate) xfer: Xfer,
    /// The datagram was longer than the buffer (`MSG_TRUNC`); its tail is gone.
    pub(crate) truncated: bool,
    /// Descriptors were dropped because the control buffer was too small.
    pub(crate) fds_lost: bool,
}

/// `recvmsg(2)` with room for [`MAX_FDS_PER_MESSAGE`] descriptors, which are
/// appended to `fds` (close-on-exec). Retries `EINTR`. Without `block` it
/// passes `MSG_DONTWAIT`; with it, it waits as the socket's `SO_RCVTIMEO` says.
pub(crate) fn recvmsg_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    block: bool,
) -> io::Result<Received> {
    let flags = if block { RecvFlags::CMSG_CLOEXEC } else { RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT };
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut reset_seen = false;
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut *buf)];
        // After a reset, do not wait: what is queued is all there will be.
        let flags = if reset_seen { flags | RecvFlags::DONTWAIT } else { flags };
        let r = rustix::net::recvmsg(fd, &mut iov, &mut control, flags);
        match r {
            Err(Errno::INTR) => continue,
            // A peer that closes with unread data of its own makes the kernel
            // report ECONNRESET once, ahead of what it had already sent to
            // us; read on to get that data (then end-of-stream).
            Err(Errno::CONNRESET) if !reset_seen => {
                reset_seen = true;
                continue;
            }
            Err(Errno::AGAIN) if reset_seen => {
                return Ok(Received { xfer: Xfer::Done(0), truncated: false, fds_lost: false })
            }
            Err(Errno::AGAIN) => {
                return Ok(Received { xfer: Xfer::WouldBlock, truncated: false, fds_lost: false })
            }
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        fds.extend(rights);
                    }
                }
                return Ok(Received {
                    xfer: Xfer::Done(msg.bytes.min(buf.len())),
                    truncated: msg.flags.contains(ReturnFlags::TRUNC),
                    fds_lost: msg.flags.contains(ReturnFlags::CTRUNC),
                });
            }
        }
    }
}

/// `getpid(2)`, cached: the pid is read once per process (a fork resets the
/// cache), so hot paths that record "who did this" make no system call.
pub fn pid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PID: AtomicU32 = AtomicU32::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    HOOK.call_once(|| raw::on_fork_in_child(|| PID.store(0, Ordering::Relaxed)));
    let p = rustix::process::getpid().as_raw_nonzero().get() as u32;
    PID.store(p, Ordering::Relaxed);
    p
}

/// `geteuid(2)`.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `getegid(2)`.
pub fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a copy numbered at least `min`.
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: i32) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, min)?)
}

/// Where POSIX shared-memory objects live on Linux.
const SHM_DIR: &str = "/dev/shm";

/// `shm_open(3)` with `O_CREAT | O_EXCL`: a new shared-memory object named
/// `name` (no slash), permission bits exactly `mode`.
///
/// Like glibc's `shm_open`, this is `open(2)` in `/dev/shm`, with
/// `O_NOFOLLOW` (a symlink planted under the name is refused) and
/// `O_CLOEXEC`.
pub(crate) fn shm_create(name: &str, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(format!("{SHM_DIR}/{name}"), flags, Mode::from_raw_mode(mode))?;
    // The umask applies at creation; the caller asked for exactly `mode`.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(fd)
}

/// Whole seconds since the Unix epoch from `CLOCK_REALTIME_COARSE` (read
/// through the vDSO: no system call, and cheaper than the precise clock),
/// for `sem_otime`-style timestamps.
pub(crate) fn coarse_now_secs() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0)
}

/// `fchown(2)` (only if the owner changes) and `fchmod(2)`: gives the
/// object at `fd` owner `uid`:`gid` and permission bits exactly `mode`.
pub(crate) fn set_file_owner(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if st.st_uid != uid || st.st_gid != gid {
        let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::fchown(fd, Some(u), Some(g))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// `shm_open(3)` of an existing object, read-write or read-only. Anyone may
/// create files in `/dev/shm`, so the name is not trusted: a symlink is
/// refused (`O_NOFOLLOW`), a FIFO does not block the open (`O_NONBLOCK`),
/// and anything but a regular file is an error.
pub(crate) fn shm_open(name: &str, write: bool) -> io::Result<OwnedFd> {
    let rw = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let flags = rw | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(format!("{SHM_DIR}/{name}"), flags, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a shared-memory object (not a regular file)",
        ));
    }
    Ok(fd)
}

/// `lstat(2)` of a name in `/dev/shm`: the owner uid of whatever is there,
/// without following a symlink or opening a FIFO.
pub(crate) fn shm_owner(name: &str) -> io::Result<u32> {
    let st = rustix::fs::statat(
        rustix::fs::CWD,
        format!("{SHM_DIR}/{name}"),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(st.st_uid)
}

/// `shm_unlink(3)`.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(format!("{SHM_DIR}/{name}"))?)
}

/// `ftruncate(2)`.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, len)?)
}

/// `fstat(2)`: size, owner uid, owner gid and permission bits.
pub(crate) fn file_info(fd: BorrowedFd<'_>) -> io::Result<(u64, u32, u32, u32)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_size as u64, st.st_uid, st.st_gid, st.st_mode & 0o7777))
}

/// `kill(pid, 0)`: whether a process with this id exists.
///
/// A zombie (killed, not yet reaped by its parent) counts as dead: it will
/// never release anything it held.
///
/// Pids are often read from shared memory, where anything may be written:
/// one that does not fit a positive `pid_t` is "not alive" (never a
/// process group, never a debug assertion).
pub fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    let Some(p) = rustix::process::Pid::from_raw(raw) else { return false };
    if matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH)) {
        return false;
    }
    // /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ')'.
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.iter().rposition(|&b| b == b')') {
            Some(i) => !matches!(stat.get(i + 2), Some(b'Z' | b'X')),
            None => true,
        },
        Err(_) => true,
    }
}

/// The caller's supplementary groups (`getgroups(2)`).
pub(crate) fn groups() -> Vec<u32> {
    rustix::process::getgroups().map(|g| g.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default()
}

/// `futex(FUTEX_WAIT)` on a word in shared memory (not process-private):
/// sleeps while `*word == expected`, at most `timeout`. Returns on a wake,
/// a changed value, a signal or the timeout alike: callers re-check.
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) {
    use rustix::thread::futex;
    let ts = timeout.map(|t| Timespec { tv_sec: t.as_secs() as i64, tv_nsec: i64::from(t.subsec_nanos()) });
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// `futex(FUTEX_WAKE)` on a word in shared memory: wakes up to `n` waiters.
///
/// The kernel reads the count as a signed `int`: `u32::MAX` would arrive as
/// -1 and wake only one waiter, so counts are capped at `i32::MAX` (what
/// "wake all" means to the kernel, and what glibc passes).
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, n: u32) {
    let n = n.min(i32::MAX as u32);
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), n);
}

/// `open(2)` with `O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC`, permission bits exactly `mode`.
pub(crate) fn file_create(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(fd)
}

/// `open(2)` of an existing file, read-write, close-on-exec.
pub(crate) fn file_open(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?)
}

/// This boot's identity (`/proc/sys/kernel/random/boot_id`), hashed: pids
/// recorded before a reboot mean nothing after it.
pub(crate) fn boot_id() -> u64 {
    let id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Another process's supplementary groups, as the kernel records them
/// (`Groups:` in `/proc/<pid>/status`); empty if it cannot be read.
pub(crate) fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}
