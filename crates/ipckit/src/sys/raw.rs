//! The system calls rustix does not wrap, made through `libc`.
//!
//! # Safety
//!
//! Each call here takes only integers and returns an integer: no memory is
//! shared with the kernel, so the calls cannot break Rust's memory rules.
//! They are also async-signal-safe, which [`mark_cloexec_from`] needs because
//! it runs between `fork` and `exec`.
#![allow(unsafe_code)]

use std::io;

/// `sched_getcpu(3)`: the CPU this thread runs on now, `None` if unknown
/// (glibc reads it from the thread's rseq area or the vDSO: no system call).
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let c = unsafe { libc::sched_getcpu() };
    u32::try_from(c).ok()
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks every descriptor
/// numbered `first` or above close-on-exec.
///
/// Used in a child between `fork` and `exec`, so it allocates nothing. On
/// kernels older than 5.11 (no `CLOSE_RANGE_CLOEXEC`) it falls back to
/// setting the flag one descriptor at a time up to the descriptor limit.
pub(crate) fn mark_cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes three integers and touches no user memory;
    // with CLOSE_RANGE_CLOEXEC it closes nothing, it only sets a flag.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // SAFETY: sysconf takes an integer and returns one.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = if max <= 0 { 1024 } else { max.min(1 << 20) as i32 };
    for fd in first as i32..max {
        // SAFETY: fcntl(F_SETFD) on a number that may not be an open
        // descriptor only returns EBADF; it reads and writes no memory.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// Arranges for `cmd`'s child to keep exactly the descriptors in `keep`
/// (besides stdin, stdout and stderr) across `exec`: every other descriptor
/// is marked close-on-exec, whoever opened it.
pub(crate) fn keep_only_across_exec(cmd: &mut std::process::Command, keep: Vec<i32>) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> io::Result<()> {
        mark_cloexec_from(3)?;
        for &fd in &keep {
            // SAFETY: fcntl(F_SETFD, 0) takes integers only; `fd` is a
            // descriptor the parent holds open and the child inherited.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // The hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: fcntl and close_range calls, a read
    // of a Vec allocated before the fork, no allocation (last_os_error does not).
    // SAFETY: as just said, the hook does only async-signal-safe work.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Takes ownership of a descriptor this process inherited from its parent,
/// after checking that it is open, and marks it close-on-exec again so it
/// does not leak further.
///
/// The caller guarantees nothing else in the process owns `fd` (the
/// inheritance table hands each number out once).
pub(crate) fn take_inherited_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to take stdio as a handle"));
    }
    // SAFETY: fcntl(F_SETFD) takes integers; it fails with EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked just above), and the inheritance table
    // hands each inherited number out at most once, so this OwnedFd is its
    // only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Marks a descriptor this process inherited close-on-exec without taking it.
pub(crate) fn seal_inherited_fd(fd: i32) {
    if fd >= 3 {
        // SAFETY: fcntl(F_SETFD) takes integers; on a closed number it only fails.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// `getsockopt(SO_PEERGROUPS)` (Linux 4.13+): the supplementary groups the
/// peer had when it connected, from the kernel. `None` where unsupported.
pub(crate) fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> Option<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: `groups` is a writable buffer of `len` bytes; the kernel
        // writes at most `len` bytes and reports the size it needed.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / 4);
            return Some(groups);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && groups.len() < 1 << 16 {
            groups.resize((len as usize / 4).max(groups.len() * 2), 0);
            continue;
        }
        return None;
    }
}

/// Runs `reset` in the child after every `fork(2)` of this process
/// (`pthread_atfork`), for caches that a fork makes stale. `reset` must be
/// async-signal-safe (it runs in the child of a possibly multithreaded
/// parent): a store to an atomic is.
pub(crate) fn on_fork_in_child(reset: fn()) {
    static RESET: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
    extern "C" fn child() {
        if let Some(f) = RESET.get() {
            f();
        }
    }
    if RESET.set(reset).is_ok() {
        // SAFETY: registers a plain function pointer; `child` only reads an
        // initialised OnceLock and calls an async-signal-safe store.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    }
}
