//! Signal dispositions, the one real signal handler, signal masks and
//! `sigtimedwait`, through `libc` (rustix does not wrap `sigaction`,
//! `pthread_sigmask`, `sigtimedwait`, `tgkill` or `sigqueue`).
//!
//! # Safety
//!
//! The handler installed here runs in signal context, where only
//! async-signal-safe functions may be called. It loads atomic integers
//! (the write end of the signal's pipe, which is never closed, and the
//! thread waiting for the signal), stores atomic flags, copies five fields
//! out of the `siginfo_t` the kernel passed into a local buffer, and makes
//! at most four system calls: `write(2)` of that buffer to the pipe, and
//! `gettid(2)`, `getpid(2)` and `rt_tgsigqueueinfo(2)` to wake the waiting
//! thread; in one case it also edits the signal mask the kernel saved in
//! the `ucontext_t` it passed (see `record`). It saves and restores `errno`
//! around all that. It takes no lock, allocates nothing and touches no
//! other state, so it cannot deadlock or corrupt the interrupted code,
//! whatever that code was doing, and any number of invocations may nest or
//! run at once on several threads (the chapter's reentrancy rules: the
//! handler itself does no work; the work happens later on a normal thread).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Bytes per record the handler writes: signal, pid, uid, code, value (5 x i32).
pub(crate) const RECORD: usize = 20;

/// Signal numbers go up to 64 on Linux.
pub(crate) const MAX_SIGNAL: usize = 64;

/// Per signal, the write end of that signal's pipe (-1: none yet). A pipe,
/// once made, is never closed, so a handler that loaded the number just
/// before a registration ended still writes into the right pipe.
static PIPES: [AtomicI32; MAX_SIGNAL + 1] = [const { AtomicI32::new(-1) }; MAX_SIGNAL + 1];

/// Per signal, the thread sleeping in [`wait`] for it (0: none).
static WAITER: [AtomicI32; MAX_SIGNAL + 1] = [const { AtomicI32::new(0) }; MAX_SIGNAL + 1];

/// Per signal: the handler wrote a record to the pipe that nobody read yet.
static SPILLED: [AtomicBool; MAX_SIGNAL + 1] = [const { AtomicBool::new(false) }; MAX_SIGNAL + 1];

/// Per signal: the handler blocked it on the waiting thread (see `record`),
/// which lets it in again when its wait ends.
static REBLOCKED: [AtomicBool; MAX_SIGNAL + 1] = [const { AtomicBool::new(false) }; MAX_SIGNAL + 1];

/// The `si_code` of a relay (see [`on_signal`]): a wake-up that says "a
/// record waits in the pipe", never a signal of its own. Negative (a code
/// user space may send to its own process) and used by nobody else.
pub(crate) const RELAY: i32 = -0x4b49;

fn slot<T>(table: &'static [T; MAX_SIGNAL + 1], sig: i32) -> Option<&'static T> {
    usize::try_from(sig).ok().and_then(|i| table.get(i))
}

/// Sets the pipe the handler writes `sig`'s records to.
pub(crate) fn set_pipe(sig: i32, fd: i32) {
    if let Some(slot) = slot(&PIPES, sig) {
        slot.store(fd, Ordering::SeqCst);
    }
}

/// Whether the handler wrote records for any of `signals` to their pipes;
/// clears the marks (the caller then reads the pipes).
pub(crate) fn take_spilled(signals: &[i32]) -> bool {
    let mut any = false;
    for &s in signals {
        if let Some(slot) = slot(&SPILLED, s) {
            // Load first: the common case writes nothing to the shared line.
            if slot.load(Ordering::SeqCst) && slot.swap(false, Ordering::SeqCst) {
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

/// One record decoded: signal, pid, uid, code, value.
pub(crate) type Fields = [i32; 5];

/// `rt_tgsigqueueinfo(2)` of a relay for `sig` to thread `tid` of this
/// process. Async-signal-safe (two system calls).
fn relay(sig: i32, tid: i32) {
    // SAFETY: all-zero is a valid siginfo_t; the fields set are public.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = RELAY;
    // SAFETY: getpid is async-signal-safe; rt_tgsigqueueinfo(2) is a system
    // call reading the valid local `info`. A refusal (the real-time queue is
    // full) leaves the record in the pipe for the waiter's next look.
    unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), tid, sig, &info) };
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: __errno_location is async-signal-safe and returns this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    record(sig, info, ctx);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The handler's work: the record to the pipe, and a relay to the waiting
/// thread, if any (it sleeps in `sigtimedwait`, blind to the pipe).
fn record(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let is_relay = unsafe { (*info).si_code } == RELAY;
    if !is_relay && !write_record(sig, info) {
        return;
    }
    // `wait` publishes its thread, then looks at SPILLED (both sequentially
    // consistent), and `write_record` set SPILLED before this looks at
    // WAITER: either the waiter sees the record and does not sleep, or this
    // sees the waiter and wakes it.
    let waiter = slot(&WAITER, sig).map_or(0, |w| w.load(Ordering::SeqCst));
    if waiter <= 0 {
        // Nobody waits (or a relay came after its waiter left): the next
        // `recv` finds the record.
        return;
    }
    if waiter == rustix::thread::gettid().as_raw_nonzero().get() {
        if ctx.is_null() {
            return;
        }
        // The waiter's own thread, between publishing itself and entering
        // `sigtimedwait`: block `sig` here until its wait ends (sigreturn
        // puts back the mask saved in `ctx`), so that the relay queued to
        // this thread below waits for that `sigtimedwait`.
        // SAFETY: with SA_SIGINFO the kernel passes a valid ucontext_t as
        // `ctx`; sigaddset edits its saved mask (plain memory).
        unsafe { libc::sigaddset(&mut (*ctx.cast::<libc::ucontext_t>()).uc_sigmask, sig) };
        if let Some(r) = slot(&REBLOCKED, sig) {
            r.store(true, Ordering::SeqCst);
        }
        relay(sig, waiter);
    } else if !is_relay {
        relay(sig, waiter);
    }
}

/// Writes the record of a delivery to `sig`'s pipe and marks it; returns
/// whether it did.
fn write_record(sig: libc::c_int, info: *mut libc::siginfo_t) -> bool {
    let fd = slot(&PIPES, sig).map_or(-1, |p| p.load(Ordering::Relaxed));
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
    let fields = unsafe { fields_of(sig, info) };
    let mut rec = [0u8; RECORD];
    for (i, v) in fields.into_iter().enumerate() {
        rec[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // A record (20 bytes < PIPE_BUF) is written whole or not at all; if the
    // pipe is full the signal is dropped, as the kernel drops a pending
    // standard signal.
    // SAFETY: write(2) is async-signal-safe; `rec` is a local buffer.
    if unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) } != RECORD as isize {
        return false;
    }
    if let Some(s) = slot(&SPILLED, sig) {
        s.store(true, Ordering::SeqCst);
    }
    true
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
/// `SigBlk` line of each `/proc/self/task/<tid>/status`. A thread waiting
/// in [`wait`] for one of them counts as blocking it (`sigtimedwait` lets it
/// in only for the wait, which takes it directly). A thread that ends while
/// being looked at is skipped.
pub(crate) fn blocked_in_every_thread(signals: &[i32]) -> io::Result<bool> {
    let bit = |s: i32| if (1..=64).contains(&s) { 1u64 << (s - 1) } else { 0 };
    let want = signals.iter().fold(0u64, |m, &s| m | bit(s));
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let tid: i32 = task.file_name().to_str().and_then(|t| t.parse().ok()).unwrap_or(0);
        let status = match std::fs::read_to_string(task.path().join("status")) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .ok_or_else(|| io::Error::other("no SigBlk line in /proc/self/task/*/status"))?;
        let waiting = signals
            .iter()
            .filter(|&&s| slot(&WAITER, s).is_some_and(|w| w.load(Ordering::SeqCst) == tid))
            .fold(0u64, |m, &s| m | bit(s));
        if (blocked | waiting) & want != want {
            return Ok(false);
        }
    }
    Ok(true)
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

thread_local! {
    /// This thread's id, asked once.
    static TID: Cell<i32> = const { Cell::new(0) };
}

/// `gettid(2)`, remembered per thread.
pub(crate) fn tid() -> i32 {
    TID.with(|t| {
        if t.get() == 0 {
            t.set(rustix::thread::gettid().as_raw_nonzero().get());
        }
        t.get()
    })
}

/// Publishes (or withdraws, with 0) the thread waiting for `signals`.
fn set_waiter(signals: &[i32], tid: i32) {
    for &s in signals {
        if let Some(w) = slot(&WAITER, s) {
            w.store(tid, Ordering::SeqCst);
        }
    }
}

/// What [`wait`] got.
pub(crate) enum Waited {
    /// A signal, taken from the kernel's queue.
    Signal(Fields),
    /// The handler put records in the pipes: read them.
    Spilled,
    /// The deadline passed.
    Timeout,
}

/// `rt_sigtimedwait(2)`: takes one pending signal of `set` (`signals`)
/// from the process's queue or this thread's, sleeping until `deadline`,
/// unless the handler has left records in their pipes.
pub(crate) fn wait(set: &SigSet, signals: &[i32], deadline: super::Deadline) -> io::Result<Waited> {
    set_waiter(signals, tid());
    let got = wait_published(set, signals, deadline);
    set_waiter(signals, 0);
    // Let in again what the handler blocked on this thread for this wait.
    for &s in signals {
        if slot(&REBLOCKED, s).is_some_and(|r| r.load(Ordering::SeqCst) && r.swap(false, Ordering::SeqCst)) {
            unblock(&[s])?;
        }
    }
    got
}

fn wait_published(set: &SigSet, signals: &[i32], deadline: super::Deadline) -> io::Result<Waited> {
    loop {
        if take_spilled(signals) {
            return Ok(Waited::Spilled);
        }
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
            let fields = unsafe { fields_of(sig as i32, &info) };
            if fields[3] == RELAY {
                // The handler ran on another thread: look at the pipes.
                continue;
            }
            return Ok(Waited::Signal(fields));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                return Ok(if take_spilled(signals) { Waited::Spilled } else { Waited::Timeout })
            }
            // A handler for another signal ran on this thread.
            Some(libc::EINTR) if !deadline.expired() => {}
            Some(libc::EINTR) => {
                return Ok(if take_spilled(signals) { Waited::Spilled } else { Waited::Timeout })
            }
            _ => return Err(e),
        }
    }
}

/// One non-blocking `read(2)`: `Ok(0)` when nothing is there.
pub(crate) fn read_some(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}
