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
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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

/// Per signal: whether a registration takes it on the direct path
/// (`sigtimedwait`), trusting that every thread blocks it.
static DIRECT: [AtomicBool; MAX_SIGNAL + 1] = [const { AtomicBool::new(false) }; MAX_SIGNAL + 1];

/// Per signal: whether the handler wrote a record to the pipe while the
/// signal was on the direct path (the rare fallback below).
static SPILLED: [AtomicBool; MAX_SIGNAL + 1] = [const { AtomicBool::new(false) }; MAX_SIGNAL + 1];

fn slot<T>(table: &'static [T; MAX_SIGNAL + 1], sig: i32) -> Option<&'static T> {
    usize::try_from(sig).ok().and_then(|i| table.get(i))
}

/// Sets the pipe the handler writes `sig`'s records to.
pub(crate) fn set_pipe(sig: i32, fd: i32) {
    if let Some(slot) = slot(&PIPES, sig) {
        slot.store(fd, Ordering::SeqCst);
    }
}

/// Marks `sig` as taken on the direct path (or not any more).
pub(crate) fn set_direct(sig: i32, direct: bool) {
    if let Some(slot) = slot(&DIRECT, sig) {
        slot.store(direct, Ordering::SeqCst);
    }
}

/// Whether the handler wrote records for any of `signals` to their pipes
/// while they were on the direct path; clears the marks.
pub(crate) fn take_spilled(signals: &[i32]) -> bool {
    let mut any = false;
    for &s in signals {
        if let Some(slot) = slot(&SPILLED, s) {
            // Load first: the common case writes nothing to the shared line.
            if slot.load(Ordering::Relaxed) && slot.swap(false, Ordering::AcqRel) {
                any = true;
            }
        }
    }
    any
}

/// The fields a record carries, from a `siginfo_t` the kernel filled:
/// signal, pid, uid, code, value. Async-signal-safe (reads memory only).
///
/// # Safety
///
/// `info` points to a valid `siginfo_t` filled by the kernel.
unsafe fn fields_of(sig: i32, info: *const libc::siginfo_t) -> Fields {
    // SAFETY: the caller passes a valid siginfo_t; the accessors read fields
    // of it (the union members are plain integers).
    let (pid, uid, code, value) = unsafe {
        ((*info).si_pid(), (*info).si_uid(), (*info).si_code, (*info).si_value().sival_ptr as usize as i32)
    };
    let (pid, uid) = if names_sender(sig, code) { (pid, uid as i32) } else { (0, 0) };
    [sig, pid, uid, code, value]
}

/// The `si_code` of a relay (see [`on_signal`]): a wake-up for the direct
/// path, which says "a record waits in the pipe", never a signal of its own.
/// Negative (a code user space may send) and used by nobody else.
pub(crate) const RELAY: i32 = -0x4b49;

/// `rt_sigqueueinfo(2)` of a relay for `sig` to this process.
/// Async-signal-safe (one system call). Returns whether the kernel took it.
fn relay(sig: i32) -> bool {
    // SAFETY: all-zero is a valid siginfo_t; the fields set are public.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = RELAY;
    // SAFETY: getpid is async-signal-safe; rt_sigqueueinfo(2) is a system
    // call reading the valid local `info`.
    unsafe { libc::syscall(libc::SYS_rt_sigqueueinfo, libc::getpid(), sig, &info) == 0 }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: __errno_location is async-signal-safe and returns this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    on_signal_inner(sig, info, ctx);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn on_signal_inner(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let is_relay = unsafe { (*info).si_code } == RELAY;
    let direct = slot(&DIRECT, sig).is_some_and(|d| d.load(Ordering::Relaxed));
    if direct && !ctx.is_null() {
        // The direct path expects every thread to block `sig`, and this one
        // lets it in (it unblocked it after the registration). Block it here
        // from now on (sigreturn puts back the mask saved in `ctx`), so this
        // happens at most once per thread and cannot loop.
        // SAFETY: with SA_SIGINFO the kernel passes a valid ucontext_t as
        // `ctx`; sigaddset edits its saved mask (plain memory).
        unsafe { libc::sigaddset(&mut (*ctx.cast::<libc::ucontext_t>()).uc_sigmask, sig) };
    }
    if is_relay {
        // Not a signal: pass the wake-up on (this thread took it instead of
        // the receiver), or drop it when nobody takes the direct path.
        if direct {
            relay(sig);
        }
        return;
    }
    let fd = slot(&PIPES, sig).map_or(-1, |p| p.load(Ordering::Relaxed));
    if fd < 0 {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
    let fields = unsafe { fields_of(sig, info) };
    let mut rec = [0u8; RECORD];
    for (i, v) in fields.into_iter().enumerate() {
        rec[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // A record (20 bytes < PIPE_BUF) is written whole or not at all; if
    // the pipe is full the signal is dropped, as the kernel drops a
    // pending standard signal.
    // SAFETY: write(2) is async-signal-safe; `rec` is a local buffer.
    let n = unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
    if direct && n == RECORD as isize {
        // The receiver sleeps in sigtimedwait, blind to the pipe: mark the
        // record and wake it with a relay (it ends up with the receiver:
        // this thread blocks `sig` until the handler returns, and for good
        // afterwards). For a standard signal the relay coalesces with a
        // pending instance, as the kernel coalesces such signals anyway.
        if let Some(s) = slot(&SPILLED, sig) {
            s.store(true, Ordering::Release);
        }
        relay(sig);
    }
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

/// A set of signals, for [`wait`].
#[derive(Clone, Copy)]
pub(crate) struct SigSet(libc::sigset_t);

impl std::fmt::Debug for SigSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigSet")
    }
}

impl SigSet {
    pub(crate) fn new(signals: &[i32]) -> SigSet {
        SigSet(sigset(signals))
    }
}

/// `sigtimedwait(2)`: takes one pending signal of `set` (from the process's
/// queue or this thread's), sleeping until `deadline`; `None` when it
/// passes. The signals in `set` are let in on this thread only while it
/// waits.
pub(crate) fn wait(set: &SigSet, deadline: super::Deadline) -> io::Result<Option<Fields>> {
    loop {
        let ts =
            deadline.remaining().map(|t| libc::timespec { tv_sec: t.tv_sec as _, tv_nsec: t.tv_nsec as _ });
        let tp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: all-zero is valid storage for the siginfo_t the kernel fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // The system call itself: glibc's sigtimedwait reports SI_TKILL as SI_USER.
        // SAFETY: `set` and `info` are valid; `tp` is null or a valid
        // timespec; the kernel's sigset is 8 bytes (the start of sigset_t).
        let sig = unsafe { libc::syscall(libc::SYS_rt_sigtimedwait, &set.0, &mut info, tp, 8usize) };
        if sig > 0 {
            // SAFETY: the kernel filled `info` for `sig`.
            return Ok(Some(unsafe { fields_of(sig as i32, &info) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            // A handler for another signal ran on this thread.
            Some(libc::EINTR) if !deadline.expired() => {}
            Some(libc::EINTR) => return Ok(None),
            _ => return Err(e),
        }
    }
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
