//! The raw kernel primitives that rustix does not wrap (System V message
//! queues and semaphores, POSIX message queues, signal masks and waits),
//! called through libc for the bench's `raw-*` rows: the baselines ipckit
//! is compared with, with no ipckit code in between.
//!
//! # Safety
//!
//! Each call passes only buffers and structures it owns, sized as the call
//! expects; every `unsafe` block says so above it.

// ---------------------------------------------------------------------------
// Raw System V semaphores (libc)
// ---------------------------------------------------------------------------

/// After a failed timed wait: `Ok(true)` for EINTR (retry), `Ok(false)` for
/// EAGAIN (the time ran out), the error otherwise.
fn interrupted_or_timed_out() -> std::io::Result<bool> {
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINTR) => Ok(true),
        Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

#[allow(unsafe_code)]
pub mod sysv_sem {
    use std::io;
    use std::time::Duration;

    /// A new private set of two semaphores (both 0 on Linux).
    pub fn create() -> io::Result<i32> {
        // SAFETY: semget takes no pointers.
        let id = unsafe { libc::semget(libc::IPC_PRIVATE, 2, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(id)
    }

    /// Removes set `id`.
    pub fn remove(id: i32) {
        // SAFETY: IPC_RMID takes no further argument.
        unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
    }

    /// Adds `delta` to semaphore `num` (semop, or semtimedop with a timeout);
    /// false when it timed out.
    pub fn op(id: i32, num: u16, delta: i16, timeout: Option<Duration>) -> io::Result<bool> {
        let mut sop = libc::sembuf { sem_num: num, sem_op: delta, sem_flg: 0 };
        loop {
            let r = match timeout {
                // SAFETY: `sop` is one valid sembuf.
                None => unsafe { libc::semop(id, &mut sop, 1) },
                Some(t) => {
                    let ts = libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ };
                    // SAFETY: `sop` is one valid sembuf; `ts` a valid timespec (libc has
                    // no semtimedop wrapper, hence the raw system call).
                    unsafe {
                        libc::syscall(libc::SYS_semtimedop, id, &mut sop as *mut libc::sembuf, 1usize, &ts)
                            as i32
                    }
                }
            };
            if r == 0 {
                return Ok(true);
            }
            match super::interrupted_or_timed_out()? {
                true => continue,
                false => return Ok(false),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw signals (libc)
// ---------------------------------------------------------------------------

#[allow(unsafe_code)]
pub mod raw_sig {
    use std::io;
    use std::time::Duration;

    fn set_of(sig: i32) -> libc::sigset_t {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
        let mut s: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `s` is a valid sigset_t.
        unsafe {
            libc::sigemptyset(&mut s);
            libc::sigaddset(&mut s, sig);
        }
        s
    }

    fn mask(how: i32, sig: i32) -> io::Result<()> {
        let s = set_of(sig);
        // SAFETY: `s` is an initialised set; the old mask is not wanted.
        let r = unsafe { libc::pthread_sigmask(how, &s, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    /// Blocks `sig` in the calling thread (do it before creating any thread).
    pub fn block(sig: i32) -> io::Result<()> {
        mask(libc::SIG_BLOCK, sig)
    }

    /// `sig` blocked in this thread until dropped; a pending one is taken
    /// before it is unblocked (so its default action never runs).
    pub struct Blocked(i32);

    impl Blocked {
        pub fn new(sig: i32) -> io::Result<Blocked> {
            block(sig)?;
            Ok(Blocked(sig))
        }
    }

    impl Drop for Blocked {
        fn drop(&mut self) {
            while matches!(wait(self.0, Some(Duration::ZERO)), Ok(true)) {}
            let _ = mask(libc::SIG_UNBLOCK, self.0);
        }
    }

    /// kill(2).
    pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
        // SAFETY: kill takes no pointers.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes blocked `sig`: sigwaitinfo(2) without a timeout, sigtimedwait(2)
    /// with one; false when it timed out.
    pub fn wait(sig: i32, timeout: Option<Duration>) -> io::Result<bool> {
        let s = set_of(sig);
        loop {
            // SAFETY: `s` is an initialised set; siginfo is not wanted (null is allowed).
            let r = match timeout {
                None => unsafe { libc::sigwaitinfo(&s, std::ptr::null_mut()) },
                Some(t) => {
                    let ts = libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ };
                    // SAFETY: as above; `ts` is a valid timespec.
                    unsafe { libc::sigtimedwait(&s, std::ptr::null_mut(), &ts) }
                }
            };
            if r == sig {
                return Ok(true);
            }
            match super::interrupted_or_timed_out()? {
                true => continue,
                false => return Ok(false),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw POSIX message queues (libc)
// ---------------------------------------------------------------------------

#[allow(unsafe_code)]
pub mod posix_mq {
    use std::ffi::CString;
    use std::io;

    /// A message queue descriptor.
    pub type Mqd = libc::mqd_t;

    fn cname(name: &str) -> io::Result<CString> {
        CString::new(name).map_err(|_| io::ErrorKind::InvalidInput.into())
    }

    /// Opens queue `name` read-write; with `Some(size)`, creates it (exclusively)
    /// with 10 messages of `size` bytes.
    pub fn open(name: &str, create: Option<usize>) -> io::Result<Mqd> {
        let c = cname(name)?;
        let mqd = match create {
            Some(size) => {
                // SAFETY: an all-zero mq_attr is valid; the fields set are plain integers.
                let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
                attr.mq_maxmsg = 10;
                attr.mq_msgsize = size as _;
                let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                // SAFETY: `c` is a C string; mode and attr are the variadic arguments O_CREAT takes.
                unsafe {
                    libc::mq_open(c.as_ptr(), flags, 0o600 as libc::mode_t, &attr as *const libc::mq_attr)
                }
            }
            // SAFETY: `c` is a C string.
            None => unsafe { libc::mq_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) },
        };
        if mqd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(mqd)
    }

    /// Sends `data` (priority 0).
    pub fn send(mqd: Mqd, data: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `data` is a valid buffer of its length.
            if unsafe { libc::mq_send(mqd, data.as_ptr().cast(), data.len(), 0) } == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one message into `buf` (at least the queue's message size); its length.
    pub fn receive(mqd: Mqd, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid writable buffer of its length; the priority is not wanted.
            let r =
                unsafe { libc::mq_receive(mqd, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut()) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Closes `mqd`.
    pub fn close(mqd: Mqd) {
        // SAFETY: closes a descriptor this program opened and no longer uses.
        unsafe { libc::mq_close(mqd) };
    }

    /// Removes queue `name`.
    pub fn unlink(name: &str) {
        if let Ok(c) = cname(name) {
            // SAFETY: `c` is a C string.
            unsafe { libc::mq_unlink(c.as_ptr()) };
        }
    }
}

// ---------------------------------------------------------------------------
// Raw System V message queues (libc)
// ---------------------------------------------------------------------------

#[allow(unsafe_code)]
pub mod sysv_raw {
    use std::io;

    /// A new private queue.
    pub fn create() -> io::Result<i32> {
        // SAFETY: msgget takes no pointers.
        let id = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(id)
    }

    /// Removes queue `id`.
    pub fn remove(id: i32) {
        // SAFETY: IPC_RMID ignores the buffer argument.
        unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }

    /// Sends `data` with type `mtype`, building the msgbuf in `buf`.
    pub fn send(id: i32, mtype: i64, data: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.extend_from_slice(&(mtype as libc::c_long).to_ne_bytes());
        buf.extend_from_slice(data);
        loop {
            // SAFETY: `buf` holds a long then `data.len()` bytes of text.
            let r = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), data.len(), 0) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives a message of type `mtype` (at most `max` bytes) into `buf`; its length.
    pub fn recv(id: i32, mtype: i64, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let head = std::mem::size_of::<libc::c_long>();
        buf.resize(head + max, 0);
        loop {
            // SAFETY: `buf` has room for a long and `max` bytes of text.
            let r = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), max, mtype as libc::c_long, 0) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The text of the message last received into `buf`.
    pub fn text(buf: &[u8], len: usize) -> &[u8] {
        let head = std::mem::size_of::<libc::c_long>();
        &buf[head..head + len]
    }
}
