//! Signals: one-way asynchronous notifications, handled safely.
//!
//! A signal interrupts whatever a thread is doing, so a handler may only do
//! async-signal-safe work: no locks, no allocation, nothing that the
//! interrupted code might be in the middle of (the chapter's reentrancy
//! rule). ipckit's own handler does only that: it writes a 20-byte record
//! (signal, sender pid and uid from the kernel's `siginfo_t`, code, value)
//! to that signal's pipe. The registration reads the pipe as a
//! [`SignalInfo`]: a [`Signals`] receiver (with the four `recv` forms) on
//! whatever thread calls it, or a closure run by [`handle`] on a normal
//! thread, where anything may be done.
//!
//! The kernel's three choices per signal are all here: handle
//! ([`Signals::new`], [`handle`]), [`ignore`], and [`default`]. Each returns
//! a guard that puts the previous disposition back when dropped.
//!
//! Standard signals coalesce (the kernel keeps one pending instance); real-
//! time signals (`SIGRTMIN..=SIGRTMAX`) queue, each with its value
//! ([`queue`]).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use ipckit::signal::{self, Signals, SIGUSR1};
//! let mut signals = Signals::new(&[SIGUSR1])?;
//! signal::send(std::process::id(), SIGUSR1)?;
//! let info = signals.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!((info.signal, info.pid), (SIGUSR1, std::process::id()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::collections::VecDeque;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Fault, RecvError, RecvTimeoutError, Result, TryRecvError};
use crate::sys::{self, sig};

pub use libc::{SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGIO, SIGPIPE, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// The first real-time signal.
pub fn sigrtmin() -> i32 {
    sig::sigrtmin()
}

/// The last real-time signal.
pub fn sigrtmax() -> i32 {
    sig::sigrtmax()
}

/// One delivered signal, with what the kernel says about its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalInfo {
    /// The signal number.
    pub signal: i32,
    /// The sending process (`si_pid`; 0 for signals from the kernel).
    pub pid: u32,
    /// The sender's real uid (`si_uid`).
    pub uid: u32,
    /// `si_code`: `SI_USER` (`kill`), `SI_QUEUE` (`sigqueue`), `SI_TKILL`, kernel codes...
    pub code: i32,
    /// The value sent with [`queue`] (`si_value`), when `code` is `SI_QUEUE`.
    pub value: Option<i32>,
}

/// Per signal: the read end of its pipe (the write end's number is in
/// `sys::sig`), and whether a registration holds it.
struct Pipe {
    read: Arc<OwnedFd>,
    taken: bool,
}

fn pipes() -> &'static Mutex<HashMap<i32, Pipe>> {
    static PIPES: OnceLock<Mutex<HashMap<i32, Pipe>>> = OnceLock::new();
    PIPES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Decodes whole records from `buf` into `out`.
fn decode(buf: &[u8], out: &mut VecDeque<SignalInfo>) {
    for rec in buf.chunks_exact(sig::RECORD) {
        let f = |i: usize| i32::from_ne_bytes(rec[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        out.push_back(SignalInfo {
            signal: f(0),
            pid: f(1) as u32,
            uid: f(2) as u32,
            code: f(3),
            value: (f(3) == libc::SI_QUEUE).then(|| f(4)),
        });
    }
}

/// Reads every record waiting in `fd` (non-blocking). Writes are whole
/// 20-byte records, so a pipe always holds whole records.
fn drain(fd: &OwnedFd, out: &mut VecDeque<SignalInfo>) {
    let mut buf = [0u8; sig::RECORD * 64];
    while let Ok(sys::Xfer::Done(n)) = sys::read(fd.as_fd(), &mut buf, false) {
        if n == 0 {
            return;
        }
        decode(&buf[..n - n % sig::RECORD], out);
        if n < buf.len() {
            return;
        }
    }
}

fn check_signal(signal: i32) -> Result<()> {
    let forbidden = [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];
    if signal <= 0 || signal > sig::sigrtmax() || forbidden.contains(&signal) {
        return Err(Error::InvalidName {
            name: format!("signal {signal}"),
            why: "not a signal that can be handled here (KILL and STOP cannot; SEGV, BUS, ILL, FPE must not)",
        });
    }
    Ok(())
}

/// A registration for some signals: they are caught, and each delivery is
/// received here (on whatever thread calls `recv`). Dropping it puts the
/// previous dispositions back.
///
/// Each signal has a pipe of its own that the real handler writes to;
/// `recv` reads it directly (no thread in between).
#[derive(Debug)]
pub struct Signals {
    fds: Vec<Arc<OwnedFd>>,
    ready: VecDeque<SignalInfo>,
    old: Vec<(i32, sig::OldAction)>,
}

impl Signals {
    /// Catches `signals` (one registration per signal at a time).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a signal that cannot be handled,
    /// [`Error::AlreadyExists`] when another registration has one of them.
    pub fn new(signals: &[i32]) -> Result<Signals> {
        let mut map = pipes().lock().unwrap_or_else(|e| e.into_inner());
        for &s in signals {
            check_signal(s)?;
            if map.get(&s).is_some_and(|p| p.taken) {
                return Err(Error::AlreadyExists(format!("a handler for signal {s}")));
            }
        }
        let mut me = Signals { fds: Vec::new(), ready: VecDeque::new(), old: Vec::new() };
        for &s in signals {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(s) {
                let (r, w) = sys::pipe()?;
                // The handler must never block, and `recv` polls.
                sys::set_nonblocking(&w, true)?;
                sys::set_nonblocking(&r, true)?;
                sig::set_pipe(s, w.into_raw_fd());
                slot.insert(Pipe { read: Arc::new(r), taken: false });
            }
            let pipe = map.get_mut(&s).expect("inserted above");
            // Records left from an earlier registration are not ours.
            drain(&pipe.read, &mut VecDeque::new());
            pipe.taken = true;
            me.fds.push(pipe.read.clone());
            match sig::install(s) {
                Ok(o) => me.old.push((s, o)),
                Err(e) => {
                    pipe.taken = false;
                    drop(map);
                    drop(me);
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(me)
    }

    fn recv_inner(&mut self, deadline: sys::Deadline) -> std::result::Result<SignalInfo, Fault> {
        loop {
            if let Some(info) = self.ready.pop_front() {
                return Ok(info);
            }
            for fd in &self.fds {
                drain(fd, &mut self.ready);
            }
            if !self.ready.is_empty() {
                continue;
            }
            if self.fds.is_empty() {
                return Err(Fault::Disconnected);
            }
            if sys::wait_readable_any(self.fds.iter().map(|f| f.as_fd()), None, deadline)?.is_none() {
                return Err(Fault::Timeout);
            }
        }
    }

    /// Waits for the next signal.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] for a registration of no signals.
    pub fn recv(&mut self) -> std::result::Result<SignalInfo, RecvError> {
        self.recv_inner(sys::Deadline::Never).map_err(RecvError::from_fault)
    }

    /// Takes a signal that arrived, if any.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when none did.
    pub fn try_recv(&mut self) -> std::result::Result<SignalInfo, TryRecvError> {
        self.recv_inner(sys::Deadline::Now).map_err(TryRecvError::from_fault)
    }

    /// Waits at most `timeout` for a signal.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> std::result::Result<SignalInfo, RecvTimeoutError> {
        self.recv_inner(sys::Deadline::after(timeout)).map_err(RecvTimeoutError::from_fault)
    }

    /// Waits until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn recv_deadline(&mut self, deadline: Instant) -> std::result::Result<SignalInfo, RecvTimeoutError> {
        self.recv_inner(sys::Deadline::At(deadline)).map_err(RecvTimeoutError::from_fault)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let mut map = pipes().lock().unwrap_or_else(|e| e.into_inner());
        for (s, old) in self.old.drain(..) {
            if let Err(e) = sig::restore(s, &old) {
                tracing::warn!(signal = s, error = %e, "could not restore the old disposition");
            }
            if let Some(p) = map.get_mut(&s) {
                p.taken = false;
            }
        }
    }
}

/// A closure handling signals on a thread of its own; dropping it stops the
/// thread and restores the previous dispositions.
#[derive(Debug)]
pub struct Handler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Runs `f` for every delivery of `signals`, on a normal thread (so `f` may
/// lock, allocate, print, send messages).
///
/// # Errors
///
/// As [`Signals::new`].
pub fn handle(signals: &[i32], mut f: impl FnMut(SignalInfo) + Send + 'static) -> Result<Handler> {
    let mut rx = Signals::new(signals)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new().name("ipckit-signal-handler".into()).spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(info) = rx.recv_timeout(Duration::from_millis(50)) {
                f(info);
            }
        }
    })?;
    Ok(Handler { stop, thread: Some(thread) })
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A disposition set by [`ignore`] or [`default`]; dropping it restores the previous one.
#[derive(Debug)]
pub struct Restore {
    signal: i32,
    old: Option<sig::OldAction>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = sig::restore(self.signal, &old);
        }
    }
}

/// `sigaction(SIG_IGN)`: the kernel discards `signal` until the guard drops.
///
/// # Errors
///
/// As [`Signals::new`].
pub fn ignore(signal: i32) -> Result<Restore> {
    check_signal(signal)?;
    Ok(Restore { signal, old: Some(sig::ignore(signal)?) })
}

/// `sigaction(SIG_DFL)`: the kernel's default action for `signal` (often:
/// terminate) until the guard drops.
///
/// # Errors
///
/// As [`Signals::new`].
pub fn default(signal: i32) -> Result<Restore> {
    check_signal(signal)?;
    Ok(Restore { signal, old: Some(sig::default(signal)?) })
}

fn pid_of(pid: u32) -> Result<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| Error::NotFound(format!("process {pid}")))
}

fn signal_of(signal: i32) -> Result<rustix::process::Signal> {
    // from_named_raw only accepts signals that have names;
    // real-time ones go through `queue`/raw kill below.
    rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| Error::InvalidName { name: format!("signal {signal}"), why: "unknown signal" })
}

/// `kill(2)`: sends `signal` to process `pid`.
///
/// # Errors
///
/// [`Error::NotFound`] (no such process), [`Error::PermissionDenied`].
pub fn send(pid: u32, signal: i32) -> Result<()> {
    if signal >= sig::sigrtmin() {
        return queue(pid, signal, 0);
    }
    rustix::process::kill_process(pid_of(pid)?, signal_of(signal)?)
        .map_err(|e| Error::io(format!("process {pid}"), e.into()))
}

/// `kill(-pgid)`: sends `signal` to every process in process group `pgid`.
///
/// # Errors
///
/// As [`send`].
pub fn send_group(pgid: u32, signal: i32) -> Result<()> {
    rustix::process::kill_process_group(pid_of(pgid)?, signal_of(signal)?)
        .map_err(|e| Error::io(format!("process group {pgid}"), e.into()))
}

/// `tgkill(2)`: sends `signal` to thread `tid` of process `pid`.
///
/// # Errors
///
/// As [`send`].
pub fn send_thread(pid: u32, tid: u32, signal: i32) -> Result<()> {
    sig::tgkill(pid, tid, signal).map_err(|e| Error::io(format!("thread {tid} of {pid}"), e))
}

/// `sigqueue(3)`: sends `signal` with an integer `value` (a one-way message
/// carrying an integer; real-time signals queue instead of coalescing).
///
/// # Errors
///
/// As [`send`]; `EAGAIN` (as [`Error::Io`]) when the receiver's queue is full.
pub fn queue(pid: u32, signal: i32, value: i32) -> Result<()> {
    sig::sigqueue(pid, signal, value).map_err(|e| Error::io(format!("process {pid}"), e))
}

/// This thread's id (`gettid(2)`), for [`send_thread`].
pub fn thread_id() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}
