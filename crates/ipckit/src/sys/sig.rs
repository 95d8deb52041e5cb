//! Signal dispositions, the one real signal handler, signal masks and
//! `signalfd`, through `libc` (rustix does not wrap `sigaction`,
//! `pthread_sigmask`, `signalfd`, `tgkill` or `sigqueue`).
//!
//! # Safety
//!
//! The handler installed here runs in signal context, where only
//! async-signal-safe functions may be called. It reads one atomic integer
//! (the write end of a pipe that is never closed), copies four fields out of
//! the `siginfo_t` the kernel passed, and calls `write(2)` once, saving and
//! restoring `errno` around it. It takes no lock, allocates nothing and
//! touches no other state, so it cannot deadlock or corrupt the interrupted
//! code, whatever that code was doing (the chapter's reentrancy rule: the
//! handler itself does no work; the work happens later on a normal thread).
//!
//! A `signalfd` is read on a normal thread with `read(2)`; its records are
//! decoded from bytes at the offsets of `libc::signalfd_siginfo`.
#![allow(unsafe_code)]

use std::io;
use std::mem::offset_of;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

/// Bytes per record the handler writes: signal, pid, uid, code, value (5 x i32).
pub(crate) const RECORD: usize = 20;

/// Signal numbers go up to 64 on Linux.
pub(crate) const MAX_SIGNAL: usize = 64;

/// Per signal, the write end of that signal's pipe (-1: none yet). A pipe,
/// once made, is never closed, so a handler that loaded the number just
/// before a registration ended still writes into the right pipe.
static PIPES: [AtomicI32; MAX_SIGNAL + 1] = [const { AtomicI32::new(-1) }; MAX_SIGNAL + 1];

/// Sets the pipe the handler writes `sig`'s records to.
pub(crate) fn set_pipe(sig: i32, fd: i32) {
    if let Some(slot) = usize::try_from(sig).ok().and_then(|i| PIPES.get(i)) {
        slot.store(fd, Ordering::SeqCst);
    }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location is async-signal-safe and returns this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    let fd = usize::try_from(sig).ok().and_then(|i| PIPES.get(i)).map_or(-1, |p| p.load(Ordering::Relaxed));
    if fd >= 0 && !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO; the
        // accessors read fields of it (the union members are plain integers).
        let (pid, uid, code, value) = unsafe {
            (
                (*info).si_pid(),
                (*info).si_uid(),
                (*info).si_code,
                (*info).si_value().sival_ptr as usize as i32,
            )
        };
        let (pid, uid) = if names_sender(sig, code) { (pid, uid) } else { (0, 0) };
        let mut rec = [0u8; RECORD];
        for (i, v) in [sig, pid, uid as i32, code, value].into_iter().enumerate() {
            rec[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        // A record (20 bytes < PIPE_BUF) is written whole or not at all; if
        // the pipe is full the signal is dropped, as the kernel drops a
        // pending standard signal.
        // SAFETY: write(2) is async-signal-safe; `rec` is a local buffer.
        unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A signal's previous disposition, to put back.
pub(crate) struct OldAction(libc::sigaction);

impl std::fmt::Debug for OldAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OldAction")
    }
}

fn sigaction(sig: i32, new: &libc::sigaction) -> io::Result<OldAction> {
    // SAFETY: all-zero is a valid sigaction (the out-parameter is overwritten).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid sigaction structs for the call.
    if unsafe { libc::sigaction(sig, new, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OldAction(old))
}

fn action(handler: usize, flags: i32) -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction; fields are set below.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = handler;
    a.sa_flags = flags;
    // SAFETY: sa_mask is a valid sigset_t to clear.
    unsafe { libc::sigemptyset(&mut a.sa_mask) };
    a
}

/// Installs ipckit's handler for `sig`; returns the old disposition.
pub(crate) fn install(sig: i32) -> io::Result<OldAction> {
    let handler = on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sigaction(sig, &action(handler, libc::SA_SIGINFO | libc::SA_RESTART))
}

/// Sets `sig` to be ignored (`SIG_IGN`); returns the old disposition.
pub(crate) fn ignore(sig: i32) -> io::Result<OldAction> {
    sigaction(sig, &action(libc::SIG_IGN, 0))
}

/// Sets `sig` to the kernel's default (`SIG_DFL`); returns the old disposition.
pub(crate) fn default(sig: i32) -> io::Result<OldAction> {
    sigaction(sig, &action(libc::SIG_DFL, 0))
}

/// Puts an old disposition back.
pub(crate) fn restore(sig: i32, old: &OldAction) -> io::Result<()> {
    sigaction(sig, &old.0).map(|_| ())
}

/// `tgkill(2)`: a signal to one thread of process `pid`.
pub(crate) fn tgkill(pid: u32, tid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid as libc::pid_t, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sigqueue(3)`: a signal with an integer value to process `pid`.
pub(crate) fn sigqueue(pid: u32, sig: i32, value: i32) -> io::Result<()> {
    let v = libc::sigval { sival_ptr: value as isize as *mut libc::c_void };
    // SAFETY: sigqueue takes integers and a sigval by value.
    if unsafe { libc::sigqueue(pid as libc::pid_t, sig, v) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SIGRTMIN`, as this C library defines it.
pub(crate) fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// `SIGRTMAX`.
pub(crate) fn sigrtmax() -> i32 {
    libc::SIGRTMAX()
}

/// Whether `si_pid` / `si_uid` name a sending process for this signal and
/// `si_code`: a process sent it (`kill`, `sigqueue`, `tgkill`, ... have
/// codes <= 0) or it is `SIGCHLD` (the child). For other kernel-generated
/// signals (`SIGIO` with `POLL_IN`, say) those bytes hold other union
/// members, so no sender is reported. Async-signal-safe (pure).
pub(crate) fn names_sender(sig: i32, code: i32) -> bool {
    code <= 0 || sig == libc::SIGCHLD
}

/// A `sigset_t` holding `signals`.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: all-zero is valid storage for a sigset_t; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; an invalid number makes sigaddset fail, which changes nothing.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// `pthread_sigmask(how)` on the calling thread.
fn thread_mask(how: libc::c_int, signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is a valid sigset_t; no old mask is asked for.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// `pthread_sigmask(SIG_BLOCK)`: blocks `signals` in the calling thread
/// (threads it starts later inherit its mask).
pub(crate) fn block(signals: &[i32]) -> io::Result<()> {
    thread_mask(libc::SIG_BLOCK, signals)
}

/// `pthread_sigmask(SIG_UNBLOCK)` on the calling thread.
pub(crate) fn unblock(signals: &[i32]) -> io::Result<()> {
    thread_mask(libc::SIG_UNBLOCK, signals)
}

/// Whether every thread of this process blocks all of `signals`, from the
/// `SigBlk` line of each `/proc/self/task/<tid>/status`. A thread that ends
/// while being looked at is skipped.
pub(crate) fn blocked_in_every_thread(signals: &[i32]) -> io::Result<bool> {
    let want = signals.iter().fold(0u64, |m, &s| if (1..=64).contains(&s) { m | 1 << (s - 1) } else { m });
    for task in std::fs::read_dir("/proc/self/task")? {
        let status = match std::fs::read_to_string(task?.path().join("status")) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .ok_or_else(|| io::Error::other("no SigBlk line in /proc/self/task/*/status"))?;
        if blocked & want != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `signalfd(2)` (non-blocking, close-on-exec) for `signals`: readable while
/// one of them is pending for the reading thread or for the process.
pub(crate) fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: -1 asks for a new descriptor; `set` is a valid sigset_t.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bytes per `signalfd` record.
pub(crate) const SIGNALFD_RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();

/// One record decoded: signal, pid, uid, code, value (as the handler's).
pub(crate) type Fields = [i32; 5];

/// Decodes one `signalfd_siginfo` (native byte order) into the handler's fields.
pub(crate) fn decode_signalfd(rec: &[u8]) -> Fields {
    let at = |off: usize| i32::from_ne_bytes(rec[off..off + 4].try_into().expect("4 bytes"));
    let sig = at(offset_of!(libc::signalfd_siginfo, ssi_signo));
    let code = at(offset_of!(libc::signalfd_siginfo, ssi_code));
    let (pid, uid) = if names_sender(sig, code) {
        (at(offset_of!(libc::signalfd_siginfo, ssi_pid)), at(offset_of!(libc::signalfd_siginfo, ssi_uid)))
    } else {
        (0, 0)
    };
    [sig, pid, uid, code, at(offset_of!(libc::signalfd_siginfo, ssi_int))]
}

/// One non-blocking `read(2)`: `Ok(0)` when nothing is there.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// What one `poll(2)` said.
pub(crate) enum Polled {
    /// Bit `i` set: `fds[i]` is readable (or hung up).
    Ready(u128),
    /// The timeout passed.
    Timeout,
    /// A signal handler ran on this thread (`EINTR`).
    Interrupted,
}

/// One `poll(2)` for readability of `fds` (at most 128) until `deadline`,
/// with no allocation for up to 8 descriptors.
pub(crate) fn poll_once(fds: &[std::sync::Arc<OwnedFd>], deadline: super::Deadline) -> io::Result<Polled> {
    const INLINE: usize = 8;
    assert!(!fds.is_empty() && fds.len() <= 128, "poll_once: 1 to 128 descriptors");
    let entry = |i: usize| PollFd::new(&*fds[i.min(fds.len() - 1)], PollFlags::IN);
    let mut inline: [PollFd<'_>; INLINE];
    let mut heap: Vec<PollFd<'_>>;
    let set: &mut [PollFd<'_>] = if fds.len() <= INLINE {
        inline = std::array::from_fn(entry);
        &mut inline[..fds.len()]
    } else {
        heap = (0..fds.len()).map(entry).collect();
        &mut heap
    };
    match rustix::event::poll(set, deadline.remaining().as_ref()) {
        Ok(0) => Ok(Polled::Timeout),
        Ok(_) => Ok(Polled::Ready(
            set.iter().enumerate().filter(|(_, p)| !p.revents().is_empty()).fold(0, |m, (i, _)| m | 1 << i),
        )),
        Err(Errno::INTR) => Ok(Polled::Interrupted),
        Err(e) => Err(e.into()),
    }
}
