//! Notification latency between two real processes: ipckit's `Event` and
//! `Signals` against the raw primitives under them (issue 6).
//!
//! The bench binary re-executes itself (`std::env::current_exe()`) with
//! [`ROLE_VAR`] set; those children are the far side. Every case is a
//! ping-pong: A notifies B, B notifies A back, and one round trip is timed.
//!
//! Notification (group `notify_<placement>`):
//!
//! * `eventfd_raw`: two `eventfd`s (one per direction) inherited by the child;
//!   blocking `write(2)` / `read(2)` of 8-byte counters; no ipckit code;
//! * `futex_raw`: one 32-bit word in a `shm_open` + `mmap` mapping made here;
//!   each side stores the next value, calls `futex(FUTEX_WAKE)` unconditionally
//!   and sleeps in `futex(FUTEX_WAIT)` (shared, no timeout) until the word moves;
//! * `ipckit_event`: two `ipckit::event::Event`s in `EventMode::AutoReset`
//!   (one per direction), `notify_one()` + `wait()`, handed to the child with
//!   `spawn::Inherit`.
//!
//! Signals (group `signal_<placement>`):
//!
//! * `kill_sigwaitinfo_raw`: `kill(SIGUSR1)` and `sigwaitinfo(SIGUSR2)` against
//!   an echo doing `sigwaitinfo(SIGUSR1)` + `kill(si_pid, SIGUSR2)`. Both ends
//!   are freshly spawned children that block the two signals at the very start
//!   of `main`, before any thread exists (so no thread can take them); the
//!   driving child times itself and sends the times back over its stdout;
//! * `ipckit_signals` (the handler path): this process sends SIGUSR1 with
//!   `signal::send` and takes SIGUSR2 from a `Signals` receiver; the child
//!   takes SIGUSR1 with `Signals::recv` and answers the sender's pid
//!   (`SignalInfo::pid`). Neither blocks the signals: a signal that arrives
//!   while the receiver waits in `sigtimedwait` goes straight to it; one that
//!   arrives before (the receiver was preempted between its send and its
//!   wait) runs ipckit's handler, which writes a record to the signal's pipe;
//! * `ipckit_signals_blocked` (the direct path): as `kill_sigwaitinfo_raw`,
//!   two fresh children, which call `signal::block(&[SIGUSR1, SIGUSR2])`
//!   at the very start of `main`, then use `Signals::new` + `recv` and
//!   `signal::send`: the kernel keeps each signal pending until the
//!   receiver's `sigtimedwait` takes it, no handler runs.
//!
//! Placements: `pinned` (the two ends on two different CPUs, with
//! `sched_setaffinity` on every thread of each process), `unpinned` (the
//! scheduler decides) and `samecpu` (both ends on the first CPU).
//!
//! Criterion runs first (`iter_custom`, so the remote raw-signal driver can
//! time itself), then a summary loop of its own interleaves batches of all six
//! cases of a placement (rotating which goes first, so background noise hits
//! them alike), times every single round trip and prints median and p99 and the
//! ratios event/eventfd, event/futex and signals/raw-signals (goal <= 1.2).
//!
//! ```text
//! cargo bench -p ipckit --bench notify
//! ```
//!
//! For syscall counting, `IPCKIT_NOTIFY_BENCH_PROBE=<eventfd|futex|event|rawsig|kitsig|kitblk>[:N[:placement]]`
//! skips criterion and performs exactly N (default 20000) round trips of one
//! case (placement default `pinned`), e.g.
//! `IPCKIT_NOTIFY_BENCH_PROBE=kitsig:20000 strace -f -c target/release/deps/notify-* --bench`.
//!
//! Clean-up: every child exits at end-of-file on its stdin (when the bench
//! closes it) and has `PR_SET_PDEATHSIG(SIGKILL)` armed (should the bench
//! die); shared-memory objects are removed as soon as the child has them, on
//! drop when a panic unwinds, and by a watchdog that ends the run if nothing
//! progresses for [`STALL`] (a child died mid-wait).

use std::error::Error;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use ipckit::event::{Event, EventMode};
use ipckit::signal::{self, Signals, SIGUSR1, SIGUSR2};
use ipckit::spawn;
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::shm::OFlags;
use rustix::thread::{futex, CpuSet};

mod common;
use common::{one_cpu, Placement};

/// Tells the re-executed binary which far side to be.
const ROLE_VAR: &str = "IPCKIT_NOTIFY_BENCH_ROLE";
/// Tells the child which CPU to pin itself to (unset: not pinned).
const CPU_VAR: &str = "IPCKIT_NOTIFY_BENCH_CPU";
/// The raw-signal driver: the pid of the raw-signal echo.
const PEER_VAR: &str = "IPCKIT_NOTIFY_BENCH_PEER";
/// The bench's pid: a child checks it is still its parent after arming PR_SET_PDEATHSIG.
const PARENT_VAR: &str = "IPCKIT_NOTIFY_BENCH_PARENT";
/// Runs one case a fixed number of times without criterion (for strace/perf).
const PROBE_VAR: &str = "IPCKIT_NOTIFY_BENCH_PROBE";

/// The watchdog ends the run when nothing progresses for this long.
const STALL: Duration = Duration::from_secs(20);
/// How long a child gets to exit once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The summary loop: ROUNDS rounds of one batch of BATCH round trips per case.
const ROUNDS: usize = 30;
const BATCH: u64 = 500;
const WARMUP_RTTS: u64 = 2_000;
/// ipckit against the raw primitive under it.
const GOAL: f64 = 1.2;

/// The raw futex mapping (one word used, at offset 0).
const RAW_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Eventfd,
    Futex,
    Event,
    RawSignal,
    KitSignal,
    KitBlocked,
}

/// In summary order (the indices below are positions in it).
const CASES: [Case; 6] =
    [Case::Eventfd, Case::Futex, Case::Event, Case::RawSignal, Case::KitSignal, Case::KitBlocked];
const EFD: usize = 0;
const FTX: usize = 1;
const EVT: usize = 2;
const RSIG: usize = 3;
const KSIG: usize = 4;
const KBLK: usize = 5;

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Eventfd => "eventfd_raw",
            Case::Futex => "futex_raw",
            Case::Event => "ipckit_event",
            Case::RawSignal => "kill_sigwaitinfo_raw",
            Case::KitSignal => "ipckit_signals",
            Case::KitBlocked => "ipckit_signals_blocked",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Case::Eventfd => "eventfd",
            Case::Futex => "futex",
            Case::Event => "event",
            Case::RawSignal => "rawsig",
            Case::KitSignal => "kitsig",
            Case::KitBlocked => "kitblk",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Case::Eventfd | Case::Futex | Case::Event => "notify",
            Case::RawSignal | Case::KitSignal | Case::KitBlocked => "signal",
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        // The raw-signal ends block their signals before anything else runs:
        // no thread exists yet, and every thread made later inherits the mask.
        if role.starts_with("rawsig") {
            if let Err(e) = block_raw_signals() {
                eprintln!("notify bench child ({role}): pthread_sigmask: {e}");
                std::process::exit(1);
            }
        }
        // The ipckit direct path: the same, through ipckit's API.
        if role.starts_with("kitblk") {
            if let Err(e) = signal::block(&[SIGUSR1, SIGUSR2]) {
                eprintln!("notify bench child ({role}): signal::block: {e}");
                std::process::exit(1);
            }
        }
        // Should the bench die without closing our stdin (or while the raw
        // driver is stuck in sigwaitinfo), this child goes too.
        if let Err(e) = common::die_with_parent(PARENT_VAR, "the bench exited before this child started") {
            eprintln!("notify bench child ({role}): {e}");
            std::process::exit(1);
        }
        common::exit_child("notify bench child", &role, child_main(&role));
    }

    let original = common::original_affinity();
    let placements = common::placements(&original, "the pinned scenarios");

    start_watchdog();

    if let Ok(probe) = std::env::var(PROBE_VAR) {
        probe_main(&probe, &placements, &original);
        return;
    }

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .without_plots()
        .configure_from_args();

    for &place in &placements {
        for group_cases in [&CASES[..RSIG], &CASES[RSIG..]] {
            place_self(place, &original);
            let mut group = c.benchmark_group(format!("{}_{}", group_cases[0].group(), place.name()));
            for &case in group_cases {
                let mut peer = Peer::spawn(case, place).expect("spawn the far side");
                group.bench_function(case.name(), |b| b.iter_custom(|iters| peer.run(iters, None)));
                peer.finish();
            }
            group.finish();
        }
    }
    place_self(Placement::Unpinned, &original);
    c.final_summary();

    // `cargo test --benches` runs this binary without `--bench` (criterion's
    // test mode): the summary loop is only for real benchmark runs.
    if common::criterion_benchmarking() {
        summary(&placements, &original);
    }
}

/// Pins every thread of this process (the signal dispatcher included) for
/// `place`, or gives them back the original mask.
fn place_self(place: Placement, original: &CpuSet) {
    let set = place.parent_cpu().map_or(*original, one_cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity (parent)");
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let tid =
                t.file_name().to_str().and_then(|s| s.parse().ok()).and_then(rustix::process::Pid::from_raw);
            if let Some(tid) = tid {
                // A thread may have exited meanwhile: nothing to pin then.
                let _ = rustix::thread::sched_setaffinity(Some(tid), &set);
            }
        }
    }
}

/// A unique name for a shared-memory object of this run.
fn unique_name(what: &str) -> String {
    common::unique_name("notifybench", what)
}

// ---------------------------------------------------------------------------
// Clean-up: live shared-memory names and the watchdog
// ---------------------------------------------------------------------------

/// A shared-memory object this run created.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ShmName {
    /// An ipckit event (removed with `Event::remove`).
    Kit(String),
    /// A raw `shm_open` path (removed with `shm_unlink`).
    Raw(String),
}

impl ShmName {
    fn remove(&self) {
        match self {
            ShmName::Kit(name) => {
                if let Err(e) = Event::remove(name) {
                    eprintln!("notify bench: removing event {name:?}: {e}");
                }
            }
            ShmName::Raw(path) => {
                if let Err(e) = rustix::shm::unlink(path) {
                    eprintln!("notify bench: shm_unlink {path:?}: {e}");
                }
            }
        }
    }
}

/// Names created and not removed yet: the watchdog removes them before it ends the run.
static LIVE: Mutex<Vec<ShmName>> = Mutex::new(Vec::new());

/// Removes its name when dropped (or earlier, with [`NameGuard::remove`]).
struct NameGuard(Option<ShmName>);

impl NameGuard {
    /// Takes charge of a name that was just created.
    fn new(name: ShmName) -> NameGuard {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(name.clone());
        NameGuard(Some(name))
    }

    fn remove(&mut self) {
        if let Some(name) = self.0.take() {
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            name.remove();
            live.retain(|n| n != &name);
        }
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Bumped by every timed batch; the watchdog looks at it.
static BEAT: AtomicU64 = AtomicU64::new(0);

fn beat() {
    BEAT.fetch_add(1, Ordering::Relaxed);
}

/// A thread that ends the run if nothing progresses for STALL: the blocking
/// waits have no timeout (like the raw primitives), so a dead child would
/// otherwise hang the bench. It removes the live names first; the children
/// see end-of-file on stdin when this process is gone and exit.
fn start_watchdog() {
    std::thread::Builder::new()
        .name("notify-watchdog".into())
        .spawn(|| {
            let mut last = BEAT.load(Ordering::Relaxed);
            let mut since = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = BEAT.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > STALL {
                    eprintln!(
                        "notify bench: no progress for {STALL:?} (a child died?): cleaning up, exiting"
                    );
                    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
                    live.iter().for_each(ShmName::remove);
                    std::process::exit(2);
                }
            }
        })
        .expect("spawn the watchdog");
}

// ---------------------------------------------------------------------------
// The raw primitives (no ipckit code)
// ---------------------------------------------------------------------------

/// A shared mapping of RAW_LEN bytes of a `shm_open` object.
struct RawShm {
    base: NonNull<u8>,
}

impl RawShm {
    fn map(fd: BorrowedFd<'_>) -> io::Result<RawShm> {
        if rustix::fs::fstat(fd)?.st_size < RAW_LEN as i64 {
            return Err(io::Error::other("raw shared-memory object is too small"));
        }
        // At least RAW_LEN bytes long: checked above.
        Ok(RawShm { base: common::map_shared(fd, RAW_LEN)? })
    }

    /// The ping-pong word.
    fn word(&self) -> &AtomicU32 {
        // SAFETY: offset 0 of a live, page-aligned mapping of RAW_LEN bytes;
        // the mapping lives as long as `self`, and every access to the word,
        // from either process, goes through atomics.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().cast()) }
    }
}

impl Drop for RawShm {
    fn drop(&mut self) {
        // SAFETY: `base` was mapped with RAW_LEN bytes by `map`, and nothing
        // borrowed from it (`word` borrows `self`) outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), RAW_LEN) };
    }
}

/// One futex round trip from the parent: the word goes `seq` -> `seq+1`
/// (ping, odd) -> `seq+2` (pong, written by the child).
#[inline]
fn futex_round_trip(word: &AtomicU32, seq: &mut u32) {
    let ping = seq.wrapping_add(1);
    word.store(ping, Ordering::Release);
    let _ = futex::wake(word, futex::Flags::empty(), 1);
    while word.load(Ordering::Acquire) == ping {
        // EAGAIN (the word moved) and EINTR alike: look again.
        let _ = futex::wait(word, futex::Flags::empty(), ping, None);
    }
    *seq = ping.wrapping_add(1);
}

/// Adds 1 to an eventfd counter.
#[inline]
fn efd_post(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(8) => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("eventfd write of {n} bytes"))),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes (and zeroes) an eventfd counter, sleeping while it is zero.
#[inline]
fn efd_take(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => return Ok(u64::from_ne_bytes(buf)),
            Ok(n) => return Err(io::Error::other(format!("eventfd read of {n} bytes"))),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: all-zero is valid storage for a sigset_t; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks SIGUSR1 and SIGUSR2 in the calling thread (and every thread it makes later).
fn block_raw_signals() -> io::Result<()> {
    let set = sigset(&[SIGUSR1, SIGUSR2]);
    // SAFETY: `set` is a valid sigset_t; no old mask is asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// `sigwaitinfo(2)`: takes one of the (blocked) signals in `set`; returns the sender's pid.
#[inline]
fn raw_sigwait(set: &libc::sigset_t) -> io::Result<i32> {
    loop {
        // SAFETY: all-zero is valid storage for the siginfo_t the kernel fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        if unsafe { libc::sigwaitinfo(set, &mut info) } >= 0 {
            // SAFETY: for a signal sent with kill(2) (SI_USER) si_pid is the set union member.
            return Ok(unsafe { info.si_pid() });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `kill(2)`.
#[inline]
fn raw_kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Performs `n` round trips with `rt`; with `samples`, times each one into it.
/// Returns the total time. The same code times the parent's cases and the
/// raw-signal driver child.
#[inline]
fn drive(n: u64, samples: Option<&mut Vec<u64>>, mut rt: impl FnMut()) -> Duration {
    let t0 = Instant::now();
    match samples {
        None => {
            for _ in 0..n {
                rt();
            }
        }
        Some(s) => {
            s.reserve(n as usize);
            let mut t = t0;
            for _ in 0..n {
                rt();
                let now = Instant::now();
                s.push((now - t).as_nanos() as u64);
                t = now;
            }
        }
    }
    t0.elapsed()
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// A child process with piped stdin/stdout; it exits when its stdin closes.
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    label: String,
}

impl Proc {
    /// Spawns `cmd` (through `kit` when handles go with it) and waits for its "ready" line.
    fn start(mut cmd: Command, kit: Option<spawn::Inherit>, label: String) -> Result<Proc, Box<dyn Error>> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = match kit {
            Some(kit) => kit.spawn(&mut cmd)?,
            None => cmd.spawn()?,
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        let mut p = Proc { child: Some(child), stdin, stdout, label };
        let mut line = String::new();
        p.stdout.as_mut().expect("piped stdout").read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("{} did not start (said {line:?})", p.label).into());
        }
        Ok(p)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("child running").id()
    }

    /// The CPU the child's main thread last ran on (`/proc/<pid>/stat`, field 39).
    fn last_cpu(&self) -> Option<usize> {
        common::last_cpu_of(self.child.as_ref()?.id())
    }

    /// Closes stdin (the child exits) and reaps the child, killing it after EXIT_GRACE.
    fn finish(&mut self) {
        drop(self.stdin.take());
        drop(self.stdout.take());
        if let Some(child) = self.child.take() {
            common::reap(child, EXIT_GRACE, &format!("child {}", self.label));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.finish();
    }
}

fn child_cmd(role: &str, cpu: Option<usize>) -> io::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_VAR, role)
        .env(PARENT_VAR, std::process::id().to_string())
        .env_remove(PROBE_VAR)
        .env_remove(PEER_VAR);
    common::set_cpu_env(&mut cmd, CPU_VAR, cpu);
    Ok(cmd)
}

/// This process's end of one case.
enum Side {
    Eventfd {
        ping: OwnedFd,
        pong: OwnedFd,
    },
    Futex {
        shm: RawShm,
        seq: u32,
    },
    Event {
        ping: Event,
        pong: Event,
    },
    KitSignal {
        signals: Signals,
        child: u32,
    },
    /// Driven by the driver child (the last `Proc`).
    Remote,
}

/// One running case: this process's end and the children.
struct Peer {
    side: Option<Side>,
    /// The far side (for RawSignal: the echo, then the driver).
    procs: Vec<Proc>,
}

impl Peer {
    fn spawn(case: Case, place: Placement) -> Result<Peer, Box<dyn Error>> {
        let label = format!("{}/{}", case.tag(), place.name());
        let far = child_cmd(case.tag(), place.child_cpu())?;
        let mut kit = spawn::Inherit::new();
        let (side, procs) = match case {
            Case::Eventfd => {
                let flags = rustix::event::EventfdFlags::CLOEXEC;
                let ping = rustix::event::eventfd(0, flags).map_err(io::Error::from)?;
                let pong = rustix::event::eventfd(0, flags).map_err(io::Error::from)?;
                kit.pass("ping", ping.try_clone()?)?;
                kit.pass("pong", pong.try_clone()?)?;
                let p = Proc::start(far, Some(kit), label)?;
                (Side::Eventfd { ping, pong }, vec![p])
            }
            Case::Futex => {
                let path = format!("/{}", unique_name("futex"));
                let fd = rustix::shm::open(
                    &path,
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io::Error::from)?;
                let mut name = NameGuard::new(ShmName::Raw(path));
                rustix::fs::ftruncate(&fd, RAW_LEN as u64).map_err(io::Error::from)?;
                let shm = RawShm::map(fd.as_fd())?;
                kit.pass("shm", fd)?;
                let p = Proc::start(far, Some(kit), label)?;
                // The child has its mapping: the name is not needed any more.
                name.remove();
                (Side::Futex { shm, seq: 0 }, vec![p])
            }
            Case::Event => {
                let (ping_name, pong_name) = (unique_name("ping"), unique_name("pong"));
                let ping = Event::create(&ping_name, EventMode::AutoReset, 0o600)?;
                let mut g1 = NameGuard::new(ShmName::Kit(ping_name));
                let pong = Event::create(&pong_name, EventMode::AutoReset, 0o600)?;
                let mut g2 = NameGuard::new(ShmName::Kit(pong_name));
                kit.pass("ping", ping.clone())?;
                kit.pass("pong", pong.clone())?;
                let p = Proc::start(far, Some(kit), label)?;
                g1.remove();
                g2.remove();
                (Side::Event { ping, pong }, vec![p])
            }
            Case::KitSignal => {
                // Registered before the child exists: its first answer finds the handler.
                let signals = Signals::new(&[SIGUSR2])?;
                let p = Proc::start(far, None, label)?;
                (Side::KitSignal { signals, child: p.pid() }, vec![p])
            }
            Case::RawSignal | Case::KitBlocked => {
                let tag = case.tag();
                let echo = Proc::start(
                    child_cmd(&format!("{tag}-echo"), place.child_cpu())?,
                    None,
                    format!("{label}/echo"),
                )?;
                let mut cmd = child_cmd(&format!("{tag}-drive"), place.parent_cpu())?;
                cmd.env(PEER_VAR, echo.pid().to_string());
                let driver = Proc::start(cmd, None, format!("{label}/driver"))?;
                (Side::Remote, vec![echo, driver])
            }
        };
        Ok(Peer { side: Some(side), procs })
    }

    /// `n` round trips; with `samples`, each one timed into it. Returns the total time.
    fn run(&mut self, n: u64, samples: Option<&mut Vec<u64>>) -> Duration {
        beat();
        let took = match self.side.as_mut().expect("peer running") {
            Side::Eventfd { ping, pong } => drive(n, samples, || {
                efd_post(ping.as_fd()).expect("eventfd write");
                black_box(efd_take(pong.as_fd()).expect("eventfd read"));
            }),
            Side::Futex { shm, seq } => {
                let word = shm.word();
                drive(n, samples, || futex_round_trip(word, seq))
            }
            Side::Event { ping, pong } => drive(n, samples, || {
                ping.notify_one();
                pong.wait().expect("event wait");
            }),
            Side::KitSignal { signals, child } => drive(n, samples, || {
                signal::send(*child, SIGUSR1).expect("signal::send");
                black_box(signals.recv().expect("Signals::recv"));
            }),
            Side::Remote => {
                let driver = self.procs.last_mut().expect("driver");
                remote_run(driver, n, samples).expect("signal driver")
            }
        };
        beat();
        took
    }

    /// Whether the two ends last ran on one CPU.
    fn shares_cpu(&self) -> Option<bool> {
        match self.side.as_ref()? {
            Side::Remote => Some(self.procs[0].last_cpu()? == self.procs[1].last_cpu()?),
            _ => Some(self.procs[0].last_cpu()? == rustix::thread::sched_getcpu()),
        }
    }

    /// Stops the children first (the ipckit signal child must be gone before
    /// SIGUSR2 goes back to its default, fatal disposition), then this end.
    fn finish(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.finish();
        }
        self.procs.clear();
        drop(self.side.take());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Asks the raw-signal driver for `n` round trips: 16 bytes (n, whether to
/// send each time) in, the total in nanoseconds (and the times) back.
fn remote_run(driver: &mut Proc, n: u64, samples: Option<&mut Vec<u64>>) -> io::Result<Duration> {
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&n.to_le_bytes());
    cmd[8..].copy_from_slice(&u64::from(samples.is_some()).to_le_bytes());
    let stdin = driver.stdin.as_mut().expect("driver stdin");
    stdin.write_all(&cmd)?;
    stdin.flush()?;
    let out = driver.stdout.as_mut().expect("driver stdout");
    let mut word = [0u8; 8];
    out.read_exact(&mut word)?;
    let total = Duration::from_nanos(u64::from_le_bytes(word));
    if let Some(s) = samples {
        let mut buf = vec![0u8; 8 * n as usize];
        out.read_exact(&mut buf)?;
        s.extend(buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))));
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Stat {
    /// Median and 99th percentile of single round trips, ns.
    median: f64,
    p99: f64,
    /// Share of batches after which both ends sat on one CPU.
    same_cpu: f64,
}

struct Row {
    place: Placement,
    stat: [Stat; 6],
    /// Median over rounds of the per-round ratio of batch medians: event/eventfd, event/futex,
    /// kitsig/rawsig, kitblk/rawsig.
    paired: [f64; 4],
}

fn summary(placements: &[Placement], original: &CpuSet) {
    const NC: usize = CASES.len();
    eprintln!(
        "\nsummary loop: {ROUNDS} rounds x {BATCH} round trips per case and placement \
         (after {WARMUP_RTTS} warm-up), cases interleaved"
    );
    let mut rows = Vec::new();
    for &place in placements {
        place_self(place, original);
        let mut peers: Vec<Peer> =
            CASES.iter().map(|&c| Peer::spawn(c, place).expect("spawn the far side")).collect();
        for p in &mut peers {
            p.run(WARMUP_RTTS, None);
        }
        let mut samples: [Vec<u64>; NC] = Default::default();
        let mut batch_medians: [Vec<f64>; NC] = Default::default();
        let mut same = [0usize; NC];
        for round in 0..ROUNDS {
            for k in 0..NC {
                let c = (round + k) % NC;
                let before = samples[c].len();
                peers[c].run(BATCH, Some(&mut samples[c]));
                let mut batch: Vec<f64> = samples[c][before..].iter().map(|&x| x as f64).collect();
                batch_medians[c].push(common::median_in_place(&mut batch));
                same[c] += usize::from(peers[c].shares_cpu() == Some(true));
            }
        }
        drop(peers);
        let paired = |a: usize, b: usize| {
            let (xs, ys) = (&batch_medians[a], &batch_medians[b]);
            common::median_in_place(&mut xs.iter().zip(ys).map(|(x, y)| x / y).collect::<Vec<_>>())
        };
        let paired = [paired(EVT, EFD), paired(EVT, FTX), paired(KSIG, RSIG), paired(KBLK, RSIG)];
        let stat = std::array::from_fn(|c| {
            let mut s: Vec<f64> = samples[c].iter().map(|&x| x as f64).collect();
            s.sort_by(f64::total_cmp);
            Stat {
                median: common::median_in_place(&mut s),
                p99: common::percentile_nearest_rank(&s, 0.99),
                same_cpu: same[c] as f64 / ROUNDS as f64,
            }
        });
        rows.push(Row { place, stat, paired });
    }
    place_self(Placement::Unpinned, original);

    let ok = |x: f64| if x <= GOAL { "ok" } else { "OVER" };
    let us = |ns: f64| ns / 1e3;
    println!();
    println!(
        "Notification round trip between two processes (A notifies B, B notifies A back): \
         median / p99 of {} single round trips per case, us",
        ROUNDS * BATCH as usize
    );
    println!(
        "{:<9}|{:>8} {:>8}|{:>8} {:>8}|{:>8} {:>8}|{:>7} {:>7}|{:>7} {:>7}| {:<11}| goal <= {GOAL}",
        "cpus",
        "efd med",
        "p99",
        "ftx med",
        "p99",
        "evt med",
        "p99",
        "ev/efd",
        "ev/ftx",
        "pair/e",
        "pair/f",
        "same-cpu %"
    );
    for r in &rows {
        let s = &r.stat;
        let (re, rf) = (s[EVT].median / s[EFD].median, s[EVT].median / s[FTX].median);
        println!(
            "{:<9}|{:>8.2} {:>8.2}|{:>8.2} {:>8.2}|{:>8.2} {:>8.2}|{:>7.3} {:>7.3}|{:>7.3} {:>7.3}| {:<11}| \
             ev/efd {} ev/ftx {}",
            r.place.name(),
            us(s[EFD].median),
            us(s[EFD].p99),
            us(s[FTX].median),
            us(s[FTX].p99),
            us(s[EVT].median),
            us(s[EVT].p99),
            re,
            rf,
            r.paired[0],
            r.paired[1],
            format!(
                "{:.0}/{:.0}/{:.0}",
                s[EFD].same_cpu * 100.0,
                s[FTX].same_cpu * 100.0,
                s[EVT].same_cpu * 100.0
            ),
            ok(re),
            ok(rf),
        );
    }
    println!();
    println!("Signal round trip between two processes (SIGUSR1 there, SIGUSR2 back): median / p99, us");
    println!(
        "{:<9}|{:>8} {:>8}|{:>8} {:>8}|{:>8} {:>8}|{:>7} {:>7}|{:>7} {:>7}| {:<11}| goal <= {GOAL}",
        "cpus",
        "raw med",
        "p99",
        "blk med",
        "p99",
        "hnd med",
        "p99",
        "blk/raw",
        "pair",
        "hnd/raw",
        "pair",
        "same-cpu %"
    );
    for r in &rows {
        let s = &r.stat;
        let (rb, rh) = (s[KBLK].median / s[RSIG].median, s[KSIG].median / s[RSIG].median);
        println!(
            "{:<9}|{:>8.2} {:>8.2}|{:>8.2} {:>8.2}|{:>8.2} {:>8.2}|{:>7.3} {:>7.3}|{:>7.3} {:>7.3}| {:<11}| \
             blocked {} handler {}",
            r.place.name(),
            us(s[RSIG].median),
            us(s[RSIG].p99),
            us(s[KBLK].median),
            us(s[KBLK].p99),
            us(s[KSIG].median),
            us(s[KSIG].p99),
            rb,
            r.paired[3],
            rh,
            r.paired[2],
            format!(
                "{:.0}/{:.0}/{:.0}",
                s[RSIG].same_cpu * 100.0,
                s[KBLK].same_cpu * 100.0,
                s[KSIG].same_cpu * 100.0
            ),
            ok(rb),
            ok(rh),
        );
    }
    println!(
        "efd: eventfd_raw, ftx: futex_raw, evt: ipckit_event (AutoReset, notify_one + wait); raw: kill + \
         sigwaitinfo (signals blocked), blk: ipckit signal::send + Signals::recv with the signals blocked \
         (signal::block: the kernel keeps them for sigtimedwait), hnd: the same with the signals not \
         blocked (the kernel may give one to a thread that is not waiting: the handler path). Ratios: of the medians; pair: median over rounds of the per-round ratio of batch \
         medians (robust to preemption by other load). same-cpu %: batches after which both ends sat on \
         one CPU (what decides the unpinned numbers)."
    );
}

/// `IPCKIT_NOTIFY_BENCH_PROBE=<case>[:N[:placement]]`: exactly N round trips of one case.
fn probe_main(spec: &str, placements: &[Placement], original: &CpuSet) {
    let mut parts = spec.split(':');
    let tag = parts.next().unwrap_or_default();
    let case = *CASES.iter().find(|c| c.tag() == tag).unwrap_or_else(|| {
        panic!("{PROBE_VAR}: unknown case {tag:?} (eventfd, futex, event, rawsig, kitsig, kitblk)")
    });
    let n: u64 = parts.next().map_or(20_000, |s| s.parse().expect("round trip count"));
    let place_name = parts.next().unwrap_or("pinned");
    let place = common::find_placement(placements, place_name, PROBE_VAR);
    place_self(place, original);
    let mut peer = Peer::spawn(case, place).expect("spawn the far side");
    // In chunks, so that the watchdog sees progress however large N is.
    let (mut left, mut took) = (n, Duration::ZERO);
    while left > 0 {
        let k = left.min(10_000);
        took += peer.run(k, None);
        left -= k;
    }
    peer.finish();
    eprintln!("probe {spec}: {n} round trips, {:.2} us each", took.as_nanos() as f64 / n.max(1) as f64 / 1e3);
}

// ---------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------

fn child_main(role: &str) -> Result<(), Box<dyn Error>> {
    // Pin first: every thread made later (ipckit's signal dispatcher, the
    // stdin watcher) inherits the mask.
    common::pin_from_env(CPU_VAR)?;
    match role {
        "eventfd" => {
            let ping: OwnedFd = spawn::inherited("ping")?;
            let pong: OwnedFd = spawn::inherited("pong")?;
            ready()?;
            loop {
                efd_take(ping.as_fd())?;
                efd_post(pong.as_fd())?;
            }
        }
        "futex" => {
            let fd: OwnedFd = spawn::inherited("shm")?;
            let shm = RawShm::map(fd.as_fd())?;
            drop(fd);
            let word = shm.word();
            let mut last = word.load(Ordering::Acquire);
            ready()?;
            loop {
                let v = word.load(Ordering::Acquire);
                if v == last {
                    let _ = futex::wait(word, futex::Flags::empty(), last, None);
                    continue;
                }
                last = v.wrapping_add(1);
                word.store(last, Ordering::Release);
                let _ = futex::wake(word, futex::Flags::empty(), 1);
            }
        }
        "event" => {
            let ping: Event = spawn::inherited("ping")?;
            let pong: Event = spawn::inherited("pong")?;
            ready()?;
            loop {
                ping.wait()?;
                pong.notify_one();
            }
        }
        "kitsig" => {
            let mut signals = Signals::new(&[SIGUSR1])?;
            ready()?;
            loop {
                let info = signals.recv()?;
                signal::send(info.pid, SIGUSR2)?;
            }
        }
        "rawsig-echo" => {
            let usr1 = sigset(&[SIGUSR1]);
            ready()?;
            loop {
                let from = raw_sigwait(&usr1)?;
                raw_kill(from, SIGUSR2)?;
            }
        }
        "rawsig-drive" => {
            let echo: i32 = std::env::var(PEER_VAR)?.parse()?;
            let usr2 = sigset(&[SIGUSR2]);
            signal_driver(|| {
                raw_kill(echo, SIGUSR1).expect("kill");
                black_box(raw_sigwait(&usr2).expect("sigwaitinfo"));
            })
        }
        "kitblk-echo" => {
            let mut signals = Signals::new(&[SIGUSR1])?;
            if !signal::blocked_in_every_thread(&[SIGUSR1, SIGUSR2])? {
                return Err("signals not blocked in every thread".into());
            }
            ready()?;
            loop {
                let info = signals.recv()?;
                signal::send(info.pid, SIGUSR2)?;
            }
        }
        "kitblk-drive" => {
            let echo: u32 = std::env::var(PEER_VAR)?.parse()?;
            let mut signals = Signals::new(&[SIGUSR2])?;
            signal_driver(|| {
                signal::send(echo, SIGUSR1).expect("signal::send");
                black_box(signals.recv().expect("Signals::recv"));
            })
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Says "ready" on stdout and starts a thread that ends the process at
/// end-of-file on stdin (the parent is done, or gone).
fn ready() -> io::Result<()> {
    std::thread::Builder::new().name("stdin-watch".into()).spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => std::process::exit(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => std::process::exit(0),
            }
        }
    })?;
    common::say_ready()
}

/// A signal driver child: for each 16-byte command on stdin, `n` round trips
/// of `rt` (SIGUSR1 to the echo, SIGUSR2 back); answers the total in
/// nanoseconds and, if asked, every round trip's time. Ends at end-of-file.
fn signal_driver(mut rt: impl FnMut()) -> Result<(), Box<dyn Error>> {
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut samples = Vec::new();
    loop {
        let mut cmd = [0u8; 16];
        match stdin.read_exact(&mut cmd) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let n = u64::from_le_bytes(cmd[..8].try_into()?);
        let want = u64::from_le_bytes(cmd[8..].try_into()?) != 0;
        samples.clear();
        let took = drive(n, want.then_some(&mut samples), &mut rt);
        let mut out = Vec::with_capacity(8 + 8 * samples.len());
        out.extend_from_slice(&(took.as_nanos() as u64).to_le_bytes());
        samples.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
        stdout.write_all(&out)?;
        stdout.flush()?;
    }
}
