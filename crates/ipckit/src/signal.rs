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
//! A registration has two ways in, and [`Signals::recv`] waits on both with
//! one `poll(2)`:
//!
//! * **Direct** (`signalfd`): when every thread of the process blocks the
//!   signal, the kernel runs no handler and keeps the signal pending; the
//!   registration's `signalfd` becomes readable and `recv` reads the
//!   `siginfo` from it, on the receiving thread, as `sigwaitinfo(2)` would.
//!   An application gets this path by calling [`block`] for its signals at
//!   the start of `main`, before it starts any thread (every thread inherits
//!   the mask of the thread that creates it), as `sigwait`-based programs
//!   do; [`blocked_in_every_thread`] tells whether it holds.
//! * **Handler** (self-pipe): when some thread does not block the signal,
//!   the kernel interrupts that thread and runs ipckit's real handler there,
//!   which writes a 20-byte record (signal, sender pid and uid, code, value)
//!   to that signal's pipe; `recv` reads the record.
//!
//! The two never lose or duplicate a signal, whichever applies and even when
//! a thread changes its mask later: the handler stays installed for as long
//! as the registration lives, so a signal some thread does not block is
//! caught (never the default action), and each pending signal is taken from
//! the kernel exactly once, by the handler or by the `signalfd` read. One
//! caveat of the direct path: a signal sent to one *thread* ([`send_thread`])
//! that blocks it waits in that thread's own queue, which only that thread
//! can take (by calling `recv`, or by unblocking it); signals sent to the
//! process go to whichever way is open.
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
//! 1. The only real handler is ipckit's own (`sys::sig`). It reads one
//!    atomic integer (the pipe's descriptor, written before the handler is
//!    installed; pipes are never closed), copies fields from the kernel's
//!    `siginfo_t` into a local buffer and makes one `write(2)` (async-signal-
//!    safe), saving and restoring `errno`. No lock, no allocation, no other
//!    global state: nested or concurrent invocations on several threads
//!    cannot interfere (a 20-byte write to a pipe is atomic).
//! 2. Your code runs on a normal thread: the thread that calls
//!    [`Signals::recv`], or the thread [`handle`] starts for a closure. There
//!    it may lock, allocate, print, send messages, and a signal arriving
//!    meanwhile simply waits in the pipe or the kernel's queue for the next
//!    `recv` (signals arriving while a closure runs are not lost, and do not
//!    interrupt it).
//! 3. On the direct path no handler runs at all: the signal is a message
//!    read from a descriptor.
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

/// Reads every signal the `signalfd` `fd` has for this thread (non-blocking):
/// each read takes them from the kernel's pending set. Returns whether it
/// found any.
fn drain_signalfd(fd: &OwnedFd, out: &mut VecDeque<SignalInfo>) -> std::io::Result<bool> {
    let mut buf = [0u8; sig::SIGNALFD_RECORD * 8];
    let mut any = false;
    loop {
        let n = sig::read_some(fd.as_fd(), &mut buf)?;
        for rec in buf[..n - n % sig::SIGNALFD_RECORD].chunks_exact(sig::SIGNALFD_RECORD) {
            let fields = sig::decode_signalfd(rec);
            // A relay left from a direct registration is no signal.
            if fields[3] != sig::RELAY {
                out.push_back(info_of(fields));
                any = true;
            }
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
/// Each signal has a pipe of its own that the real handler writes to, and
/// the registration has a `signalfd` for the signals that every thread
/// blocks (see the [module docs](self)); `recv` reads both directly (no
/// thread in between).
#[derive(Debug)]
pub struct Signals {
    /// The registration's `signalfd` first, then each signal's pipe.
    fds: Vec<Arc<OwnedFd>>,
    /// The signals, and for the direct path their set.
    signals: Vec<i32>,
    direct: Option<sig::SigSet>,
    ready: VecDeque<SignalInfo>,
    old: Vec<(i32, sig::OldAction)>,
}

/// Positions in `Signals::fds`: the `signalfd`, then the pipes.
const SIGNALFD: usize = 0;

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
            fds: Vec::new(),
            signals: Vec::new(),
            direct: None,
            ready: VecDeque::new(),
            old: Vec::new(),
        };
        if unique.is_empty() {
            return Ok(me);
        }
        // Blocked in every thread: the kernel will run no handler, so the
        // receiver takes them with sigtimedwait.
        me.direct = sig::blocked_in_every_thread(&unique).unwrap_or(false).then(|| sig::SigSet::new(&unique));
        let outcome = me.register(&mut map, &unique);
        // On failure `me` is dropped (undoing what was done) after the lock is released.
        drop(map);
        outcome.map(|()| me)
    }

    fn register(&mut self, map: &mut HashMap<i32, Pipe>, signals: &[i32]) -> Result<()> {
        self.fds.push(Arc::new(sig::signalfd(signals)?));
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
            let _ = drain_pipe(&pipe.read, &mut VecDeque::new());
            sig::take_spilled(&[s]);
            sig::set_direct(s, self.direct.is_some());
            match sig::install(s) {
                Ok(o) => {
                    pipe.taken = true;
                    self.fds.push(pipe.read.clone());
                    self.signals.push(s);
                    self.old.push((s, o));
                }
                Err(e) => {
                    sig::set_direct(s, false);
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(())
    }

    /// Takes what the descriptors in the bit set `which` hold; `Ok(false)` if nothing.
    fn take(&mut self, which: u128) -> std::io::Result<bool> {
        let mut any = false;
        for i in (0..self.fds.len()).filter(|&i| which & 1 << i != 0) {
            any |= if i == SIGNALFD {
                drain_signalfd(&self.fds[i], &mut self.ready)?
            } else {
                drain_pipe(&self.fds[i], &mut self.ready)?
            };
        }
        Ok(any)
    }

    /// Whether this registration takes its signals on the direct path (they
    /// were blocked in every thread when it was made; see the
    /// [module docs](self)): `recv` is then one `sigtimedwait(2)`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The direct path: `sigtimedwait`, and the pipes when the handler had
    /// to keep a signal there.
    fn recv_direct(
        &mut self,
        set: sig::SigSet,
        deadline: sys::Deadline,
    ) -> std::result::Result<SignalInfo, Fault> {
        let pipes = !1u128;
        loop {
            if let Some(info) = self.ready.pop_front() {
                return Ok(info);
            }
            if sig::take_spilled(&self.signals) {
                self.take(pipes)?;
                continue;
            }
            match sig::wait(&set, deadline)? {
                // A wake-up from the handler: the record is in a pipe.
                Some(fields) if fields[3] == sig::RELAY => {}
                Some(fields) => return Ok(info_of(fields)),
                None if sig::take_spilled(&self.signals) => {
                    self.take(pipes)?;
                }
                None => return Err(Fault::Timeout),
            }
        }
    }

    fn recv_inner(&mut self, deadline: sys::Deadline) -> std::result::Result<SignalInfo, Fault> {
        if let Some(set) = self.direct {
            return self.recv_direct(set, deadline);
        }
        loop {
            if let Some(info) = self.ready.pop_front() {
                return Ok(info);
            }
            if self.fds.is_empty() {
                return Err(Fault::Disconnected);
            }
            // Wait first: what is already there makes poll return at once,
            // and a ping-pong makes one poll and one read per signal.
            let ready = match sig::poll_once(&self.fds, deadline)? {
                sig::Polled::Ready(ready) => ready,
                sig::Polled::Interrupted => 0,
                sig::Polled::Timeout if deadline.expired() => {
                    // A last look: a handler may have written since poll looked.
                    if !self.take(u128::MAX)? {
                        return Err(Fault::Timeout);
                    }
                    continue;
                }
                sig::Polled::Timeout => continue,
            };
            // Nothing where poll said: the signal went the other way (a
            // handler on this thread took it after poll saw it pending, or
            // interrupted poll): look at every other descriptor.
            if !self.take(ready)? {
                self.take(!ready)?;
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
            sig::set_direct(s, false);
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
/// pending, and a [`Signals`] registration takes them directly from its
/// `signalfd` (the direct path in the [module docs](self): the same system
/// calls as `sigwaitinfo`). A blocked signal nobody registered for stays
/// pending; blocking changes nothing for signals that are sent while no
/// thread blocks them.
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
/// (read from `/proc/self/task/*/status`): then a [`Signals`] registration
/// takes them on the direct path, with no handler.
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
