//! Signals: one-way asynchronous notifications, handled safely.
//!
//! A signal interrupts whatever a thread is doing, so a handler may only do
//! async-signal-safe work: no locks, no allocation, nothing that the
//! interrupted code might be in the middle of (the chapter's reentrancy
//! rule). ipckit's own handler does only that: it writes a 20-byte record
//! (signal, sender pid and uid from the kernel's `siginfo_t`, code, value)
//! to a pipe. A dispatcher thread reads the pipe and hands each
//! [`SignalInfo`] to the registration for that signal: a [`Signals`]
//! receiver (with the four `recv` forms) or a closure run by
//! [`handle`] on a normal thread, where anything may be done.
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
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, RecvError, RecvTimeoutError, Result, TryRecvError};
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

type Routes = HashMap<i32, mpsc::Sender<SignalInfo>>;

/// Where each handled signal's records go; the dispatcher thread reads the pipe.
fn routes() -> Result<&'static Mutex<Routes>> {
    static ROUTES: OnceLock<std::result::Result<Mutex<Routes>, String>> = OnceLock::new();
    ROUTES
        .get_or_init(|| {
            let (r, w) = sys::pipe().map_err(|e| e.to_string())?;
            // The handler must never block: the write end is non-blocking.
            sys::set_nonblocking(&w, true).map_err(|e| e.to_string())?;
            sig::set_pipe(w.into_raw_fd());
            std::thread::Builder::new()
                .name("ipckit-signals".into())
                .spawn(move || dispatch(r))
                .map_err(|e| e.to_string())?;
            Ok(Mutex::new(HashMap::new()))
        })
        .as_ref()
        .map_err(|e| Error::Io(std::io::Error::other(e.clone())))
}

fn dispatch(pipe: OwnedFd) {
    let mut buf = [0u8; sig::RECORD * 64];
    let mut have = 0;
    loop {
        match sys::read(pipe.as_fd(), &mut buf[have..], true) {
            Ok(sys::Xfer::Done(0)) | Err(_) => return,
            Ok(sys::Xfer::Done(n)) => have += n,
            Ok(sys::Xfer::WouldBlock) => {
                let _ = sys::wait(pipe.as_fd(), sys::Interest::Read, sys::Deadline::Never);
                continue;
            }
        }
        let whole = have / sig::RECORD * sig::RECORD;
        for rec in buf[..whole].chunks(sig::RECORD) {
            let f = |i: usize| i32::from_ne_bytes(rec[4 * i..4 * i + 4].try_into().expect("4 bytes"));
            let info = SignalInfo {
                signal: f(0),
                pid: f(1) as u32,
                uid: f(2) as u32,
                code: f(3),
                value: (f(3) == libc::SI_QUEUE).then(|| f(4)),
            };
            let routes = routes().expect("initialised before the thread");
            let map = routes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = map.get(&info.signal) {
                let _ = tx.send(info);
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
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
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::Receiver<SignalInfo>,
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
        let routes = routes()?;
        let (tx, rx) = mpsc::channel();
        let mut map = routes.lock().unwrap_or_else(|e| e.into_inner());
        for &s in signals {
            check_signal(s)?;
            if map.contains_key(&s) {
                return Err(Error::AlreadyExists(format!("a handler for signal {s}")));
            }
        }
        let mut old = Vec::new();
        for &s in signals {
            map.insert(s, tx.clone());
            match sig::install(s) {
                Ok(o) => old.push((s, o)),
                Err(e) => {
                    drop(map);
                    drop(Signals { rx, old });
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(Signals { rx, old })
    }

    fn recv_inner(
        &mut self,
        deadline: Option<Instant>,
    ) -> std::result::Result<SignalInfo, mpsc::RecvTimeoutError> {
        match deadline {
            None => self.rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => self.rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        }
    }

    /// Waits for the next signal.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] if the dispatcher is gone (never, in practice).
    pub fn recv(&mut self) -> std::result::Result<SignalInfo, RecvError> {
        self.recv_inner(None).map_err(|_| RecvError::Disconnected)
    }

    /// Takes a signal that arrived, if any.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when none did.
    pub fn try_recv(&mut self) -> std::result::Result<SignalInfo, TryRecvError> {
        self.rx.try_recv().map_err(|e| match e {
            mpsc::TryRecvError::Empty => TryRecvError::Empty,
            mpsc::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// Waits at most `timeout` for a signal.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> std::result::Result<SignalInfo, RecvTimeoutError> {
        self.recv_deadline(Instant::now() + timeout)
    }

    /// Waits until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`].
    pub fn recv_deadline(&mut self, deadline: Instant) -> std::result::Result<SignalInfo, RecvTimeoutError> {
        self.recv_inner(Some(deadline)).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
            mpsc::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
        })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let Ok(routes) = routes() else { return };
        let mut map = routes.lock().unwrap_or_else(|e| e.into_inner());
        for (s, old) in self.old.drain(..) {
            if let Err(e) = sig::restore(s, &old) {
                tracing::warn!(signal = s, error = %e, "could not restore the old disposition");
            }
            map.remove(&s);
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
