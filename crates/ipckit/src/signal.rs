//! Signals: one-way asynchronous notifications, handled safely.
//!
//! The kernel's three choices per signal are all here: handle
//! ([`Signals::new`], [`handle`]), [`ignore`], and [`default`]. Each returns
//! a guard that puts the previous disposition back when dropped. Sending:
//! [`send`] (`kill`), [`send_group`] (`kill(-pgid)`), [`send_thread`]
//! (`tgkill`), [`queue`] (`sigqueue`, an integer with it). Standard signals
//! coalesce (the kernel keeps one pending instance); real-time signals
//! (`SIGRTMIN..=SIGRTMAX`) queue, each with its value. Every delivery
//! carries the sender's pid and uid as the kernel recorded them.
//!
//! # How a signal reaches a [`Signals`] receiver
//!
//! [`Signals::recv`] waits in `sigtimedwait(2)`, as a `sigwait`-based
//! program does (the kernel lets the signals in on the waiting thread while
//! it waits). A signal then takes one of two ways:
//!
//! * **Direct**: the kernel gives it to the receiver in `sigtimedwait`, with
//!   its `siginfo`, and no handler runs (the same system calls as a raw
//!   `kill` + `sigwaitinfo`). The kernel does so when the receiver waits
//!   and is the thread the signal was sent to (for `kill(pid)`: the main
//!   thread), or when every other thread blocks the signal (then a signal
//!   sent while nobody waits stays pending for the next `recv`). An
//!   application gets the second for sure by calling [`block`] for its
//!   signals at the start of `main`, before it starts any thread (a thread
//!   inherits the mask of the thread that creates it), as `sigwait`-based
//!   programs do; [`blocked_in_every_thread`] tells whether that holds.
//! * **Handler**: the kernel gives it to a thread that does not block it
//!   and is not waiting in `recv` (the receiver between two `recv`s
//!   included). ipckit's real handler runs there, writes a 20-byte record
//!   (signal, sender pid and uid, code, value) to that signal's pipe and, if
//!   a receiver sleeps in `sigtimedwait`, wakes it with a *relay*: a signal
//!   of the same number queued to the receiver's thread with a private
//!   `si_code`, which `recv` never returns; `recv` reads the record.
//!
//! Either way each signal is taken from the kernel exactly once, nothing is
//! lost, and a signal is never left to its default action while the
//! registration lives (the handler stays installed, whichever thread
//! changes its mask). Caveats: a signal sent to one *thread*
//! ([`send_thread`]) that blocks it waits in that thread's own queue until
//! that thread receives it or lets it in; a relay for a real-time signal
//! can be refused when the user's queue of pending signals is full
//! (`RLIMIT_SIGPENDING`), in which case the record waits in the pipe until
//! the receiver's next wake-up (another signal, or its deadline); and a
//! relay that reaches a receiving thread which blocks the signal just after
//! its wait ended stays pending there: the next `recv` on that thread skips
//! it, ipckit's handler ignores it, but a thread that lets the signal in
//! after the registration is gone gets it with the restored disposition.
//!
//! # Reentrancy (the chapter's rules, and how the API keeps them)
//!
//! A handler can interrupt any code at any instruction, itself included, so
//! the chapter asks a handler to be reentrant: use no static data unless it
//! is read-only, prefer local data, guard shared globals without risking a
//! deadlock, never modify its own code, and call no non-reentrant function
//! (such as `malloc`). Rust closures cannot be checked for that, so ipckit
//! never runs user code in signal context:
//!
//! 1. The only real handler is ipckit's own (`sys::sig`). It loads atomic
//!    integers (the pipe's descriptor, written before the handler is
//!    installed, pipes are never closed; the waiting thread's id), copies
//!    fields from the kernel's `siginfo_t` into a local buffer, and makes at
//!    most four async-signal-safe system calls (`write(2)` to the pipe,
//!    `gettid(2)`, `getpid(2)` and `rt_tgsigqueueinfo(2)` for the relay), saving and
//!    restoring `errno`. No lock, no allocation, only atomic loads and
//!    stores of global state: nested or concurrent invocations on several
//!    threads cannot interfere (a 20-byte write to a pipe is atomic). In one
//!    case it also edits the signal mask the kernel saved for the
//!    interrupted code: when it runs on the receiver's own thread in the
//!    instant between `recv` announcing its wait and entering
//!    `sigtimedwait`, it keeps the signal blocked there until that wait
//!    ends, so that its relay is taken by that wait (`recv` then lets the
//!    signal in again); the thread's mask is otherwise left alone.
//! 2. Your code runs on a normal thread: the thread that calls
//!    [`Signals::recv`], or the thread [`handle`] starts for a closure. There
//!    it may lock, allocate, print, send messages, and a signal arriving
//!    meanwhile simply waits in the pipe or the kernel's queue for the next
//!    `recv` (signals arriving while a closure runs are not lost, and do not
//!    interrupt it).
//! 3. On the direct path no handler runs at all: the signal is a message
//!    the kernel hands to a thread that asked for it.
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
//!
//! The direct path, in a program that blocks its signals first:
//!
//! ```no_run
//! use ipckit::signal::{self, Signals, SIGTERM, SIGUSR1};
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main, before any thread starts.
//!     signal::block(&[SIGUSR1, SIGTERM])?;
//!     let mut signals = Signals::new(&[SIGUSR1, SIGTERM])?;
//!     // Threads started from here on inherit the mask.
//!     assert!(signal::blocked_in_every_thread(&[SIGUSR1, SIGTERM])?);
//!     while let Ok(info) = signals.recv() {
//!         if info.signal == SIGTERM {
//!             break;
//!         }
//!     }
//!     Ok(())
//! }
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

fn info_of([signal, pid, uid, code, value]: sig::Fields) -> SignalInfo {
    SignalInfo {
        signal,
        pid: pid as u32,
        uid: uid as u32,
        code,
        value: (code == libc::SI_QUEUE).then_some(value),
    }
}

/// Reads every record waiting in the pipe `fd` (non-blocking). Writes are
/// whole 20-byte records, so a pipe always holds whole records. Returns
/// whether it found any.
fn drain_pipe(fd: &OwnedFd, out: &mut VecDeque<SignalInfo>) -> std::io::Result<bool> {
    let mut buf = [0u8; sig::RECORD * 64];
    let mut any = false;
    loop {
        let n = sig::read_some(fd.as_fd(), &mut buf)?;
        for rec in buf[..n - n % sig::RECORD].chunks_exact(sig::RECORD) {
            let f = |i: usize| i32::from_ne_bytes(rec[4 * i..4 * i + 4].try_into().expect("4 bytes"));
            out.push_back(info_of([f(0), f(1), f(2), f(3), f(4)]));
            any = true;
        }
        if n < buf.len() {
            return Ok(any);
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
/// `recv` waits in `sigtimedwait`, and each signal has a pipe that the real
/// handler writes to when the kernel gives the signal to another thread
/// (see the [module docs](self)); no thread in between.
#[derive(Debug)]
pub struct Signals {
    /// Each signal's pipe.
    pipes: Vec<Arc<OwnedFd>>,
    signals: Vec<i32>,
    set: sig::SigSet,
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
        let mut unique: Vec<i32> = Vec::with_capacity(signals.len());
        for &s in signals {
            check_signal(s)?;
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        let mut map = pipes().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = unique.iter().find(|s| map.get(s).is_some_and(|p| p.taken)) {
            return Err(Error::AlreadyExists(format!("a handler for signal {s}")));
        }
        let mut me = Signals {
            pipes: Vec::new(),
            signals: Vec::new(),
            set: sig::SigSet::new(&unique),
            ready: VecDeque::new(),
            old: Vec::new(),
        };
        let outcome = me.register(&mut map, &unique);
        // On failure `me` is dropped (undoing what was done) after the lock is released.
        drop(map);
        outcome.map(|()| me)
    }

    fn register(&mut self, map: &mut HashMap<i32, Pipe>, signals: &[i32]) -> Result<()> {
        for &s in signals {
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(s) {
                let (r, w) = sys::pipe()?;
                // The handler must never block, and `recv` reads without waiting.
                sys::set_nonblocking(&w, true)?;
                sys::set_nonblocking(&r, true)?;
                sig::set_pipe(s, w.into_raw_fd());
                slot.insert(Pipe { read: Arc::new(r), taken: false });
            }
            let pipe = map.get_mut(&s).expect("inserted above");
            // Records left from an earlier registration are not ours.
            let _ = drain_pipe(&pipe.read, &mut VecDeque::new());
            sig::take_spilled(&[s]);
            let old = sig::install(s).map_err(Error::Io)?;
            pipe.taken = true;
            self.pipes.push(pipe.read.clone());
            self.signals.push(s);
            self.old.push((s, old));
        }
        Ok(())
    }

    fn recv_inner(&mut self, deadline: sys::Deadline) -> std::result::Result<SignalInfo, Fault> {
        loop {
            if let Some(info) = self.ready.pop_front() {
                return Ok(info);
            }
            if self.signals.is_empty() {
                return Err(Fault::Disconnected);
            }
            match sig::wait(&self.set, &self.signals, deadline)? {
                sig::Waited::Signal(fields) => return Ok(info_of(fields)),
                sig::Waited::Spilled => {
                    for p in &self.pipes {
                        drain_pipe(p, &mut self.ready)?;
                    }
                }
                sig::Waited::Timeout => return Err(Fault::Timeout),
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

/// `pthread_sigmask(SIG_BLOCK)`: blocks `signals` in the calling thread,
/// and so in every thread it starts afterwards (a new thread inherits its
/// creator's mask).
///
/// Called at the start of `main`, before any thread exists, it blocks them
/// process-wide: the kernel then runs no handler for them and keeps them
/// pending until a [`Signals`] receiver takes them in `sigtimedwait` (the
/// direct path in the [module docs](self): the same system calls as a raw
/// `sigwaitinfo`). A blocked signal nobody registered for stays pending.
/// Programs started with `std::process::Command` begin with no signal
/// blocked (the standard library clears the mask in the child).
///
/// # Errors
///
/// [`Error::InvalidName`] for a signal that cannot be handled (as [`Signals::new`]).
pub fn block(signals: &[i32]) -> Result<()> {
    signals.iter().try_for_each(|&s| check_signal(s))?;
    sig::block(signals).map_err(Error::Io)
}

/// `pthread_sigmask(SIG_UNBLOCK)`: lets `signals` in on the calling thread
/// again. A pending one is then delivered at once: to the handler of a live
/// registration, or with its disposition (the default action, for example).
///
/// # Errors
///
/// As [`block`].
pub fn unblock(signals: &[i32]) -> Result<()> {
    signals.iter().try_for_each(|&s| check_signal(s))?;
    sig::unblock(signals).map_err(Error::Io)
}

/// Whether every thread of this process blocks all of `signals` right now
/// (read from `/proc/self/task/*/status`): then the kernel keeps them for a
/// [`Signals`] receiver, which takes them on the direct path, with no
/// handler (see the [module docs](self)).
/// A thread waiting in [`Signals::recv`] for one of them counts as blocking it.
///
/// # Errors
///
/// [`Error::Io`] when `/proc` cannot be read.
pub fn blocked_in_every_thread(signals: &[i32]) -> Result<bool> {
    sig::blocked_in_every_thread(signals).map_err(Error::Io)
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
