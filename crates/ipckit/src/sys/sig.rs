//! Signal dispositions and the one real signal handler, through `libc`
//! (rustix does not wrap `sigaction`, `tgkill` or `sigqueue`).
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
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

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
