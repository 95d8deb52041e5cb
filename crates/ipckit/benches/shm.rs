//! Round trip through shared memory between two real processes: ipckit's
//! two-slot RPC against raw baselines written here (no ipckit code in them).
//!
//! The bench binary re-executes itself (`std::env::current_exe()`) with
//! [`ROLE_VAR`] set; that child is the echo side. Cases:
//!
//! * (a) `a_spin_raw`: busy-spin ping-pong on one `AtomicU32` in a mapping made
//!   here (`shm_open` + `ftruncate` + `mmap`): the floor;
//! * (b) `b_futex_raw`: the same word, but each side sleeps in `futex(FUTEX_WAIT)`
//!   (shared, no timeout) and the other always calls `futex(FUTEX_WAKE)`: the
//!   blocking floor;
//! * (c) `c_ipckit_spin`: `RpcClient::call_into` / `RpcServer::recv_into` +
//!   `reply` with an 8-byte payload, `WaitMode::Spin` on both sides;
//! * (d) `d_ipckit_block`: the same with `WaitMode::Block`;
//! * (e) `e_ipckit_spin_then_block`: the same with the default
//!   `WaitMode::SpinThenBlock`;
//! * diagnostic, summary only: `bt_futex_raw_timed`, (b) with the 10 ms timeout
//!   ipckit puts on every futex wait (to separate the cost of the timer).
//!
//! Placements: `pinned` (parent on the first allowed CPU, child on the second),
//! `unpinned` (the scheduler decides) and `samecpu` (both on the first CPU).
//! The spinning cases (a) and (c) run pinned only: a busy-spinning pair that
//! shares a CPU makes progress only when the scheduler preempts the spinner, so
//! it measures the time slice, not the IPC (and unpinned on 2 vCPUs the pair
//! would often be stacked on one).
//!
//! Criterion runs first (groups `shm_rtt_{pinned,unpinned,samecpu}`), then a
//! summary loop of its own interleaves batches of every case of a placement
//! (the spinning children are parked on a futex while another case is timed,
//! so they do not steal the CPU) and prints medians and the ratios
//! (c)/(a) (goal <= 1.5), (d)/(b) (goal <= 1.3), (e)/(a) and (e)/(b). The
//! spinning cases (a) and (c) each run on three segments (three pairs of
//! processes) in that loop, and their figure is the mean of the three
//! medians: the latency of one pair depends on where its cache line lands.
//!
//! ```text
//! cargo bench -p ipckit --bench shm
//! ```
//!
//! For syscall counting, `IPCKIT_SHM_BENCH_PROBE=<a|b|bt|c|d|e>[:N[:placement]]`
//! skips criterion and performs exactly N (default 20000) round trips of one
//! case (placement default `pinned`), e.g.
//! `IPCKIT_SHM_BENCH_PROBE=d:20000 perf stat -e raw_syscalls:sys_enter -a target/release/deps/shm-* --bench`.
//! `IPCKIT_SHM_BENCH_PROBE=c/a[:ROUNDS[:placement]]` (cases separated by `/`)
//! runs the summary loop for those cases only (default 400 rounds of 0.5 ms
//! batches, interleaved as in the summary) and prints their medians, 10th
//! percentiles and the ratios of the first to the second: a quick,
//! load-tolerant check of one ratio (a few seconds).
//! `IPCKIT_SHM_BENCH_F=<pairs>` skips everything but case (f) of
//! `shm_extra` (c8 and f_loan_hdr alternating `pairs` times, then its
//! context rows).

use std::error::Error;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use ipckit::shm::rpc::{RpcClient, RpcServer, WaitMode};
use ipckit::shm::Segment;
use ipckit::RecvTimeoutError;
use rustix::fs::Mode;
use rustix::shm::OFlags;
use rustix::thread::{futex, CpuSet};
use rustix::time::Timespec;

mod common;
use common::{median, Placement};
// Cases (e'), (f) and (g): shm_extra/mod.rs.
mod shm_extra;

/// Tells the re-executed binary which echo side to be.
const ROLE_VAR: &str = "IPCKIT_SHM_BENCH_ROLE";
/// The shared-memory object the child uses (raw: the `shm_open` name without
/// `/`; ipckit: the segment name the child creates).
const NAME_VAR: &str = "IPCKIT_SHM_BENCH_NAME";
/// Tells the child which CPU to pin itself to (unset: not pinned).
const CPU_VAR: &str = "IPCKIT_SHM_BENCH_CPU";
/// The parent's pid: the child checks it is still its parent after arming PR_SET_PDEATHSIG.
const PARENT_VAR: &str = "IPCKIT_SHM_BENCH_PARENT";
/// Runs one case a fixed number of times without criterion (for strace/perf).
const PROBE_VAR: &str = "IPCKIT_SHM_BENCH_PROBE";

/// Longest the parent waits for one reply before it declares the child dead.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle ipckit child waits in one `recv_into` before it looks again.
const CHILD_IDLE: Duration = Duration::from_secs(60);
/// How long a finished child gets to exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The timeout ipckit puts on each futex wait (its `LIVENESS_CHECK`), for `bt_futex_raw_timed`.
const NAP: Timespec = Timespec { tv_sec: 0, tv_nsec: 10_000_000 };

/// The summary loop: ROUNDS rounds of one batch per case, each batch about BATCH_TIME long.
/// The spinning cases (a) and (c) run on SPIN_SEGMENTS segments each: the
/// round trip of one pair depends on where its cache line lands (up to
/// +-20 % from one segment to the next on this VM), and one segment per
/// case made their ratio a draw.
const ROUNDS: usize = 50;
const SPIN_SEGMENTS: usize = 3;
const BATCH_TIME: Duration = Duration::from_millis(5);
const WARMUP_RTTS: usize = 2_000;
/// The interleaved probe: shorter batches (fewer of them hit by a preemption
/// on a loaded machine), more rounds.
const PROBE_ROUNDS: usize = 400;
const PROBE_BATCH_TIME: Duration = Duration::from_micros(500);

/// The 8-byte request the ipckit cases send (and get back).
const PAYLOAD: [u8; 8] = *b"ping-8by";
/// ipckit child commands (also 8 bytes): park = wait in Block mode until unparked.
const CMD_PARK: [u8; 8] = *b"cmd-park";
const CMD_UNPARK: [u8; 8] = *b"cmd-unpk";
const CMD_QUIT: [u8; 8] = *b"cmd-quit";

// The raw mapping: the ping-pong word and the stop flag, each on a cache line of its own.
const RAW_LEN: usize = 4096;
const PING: usize = 0;
const STOP: usize = 64;

// Values of the ping word. The parent writes REQ, PARK and WAKE; the child REP, PARKED and DEAD.
const IDLE: u32 = 0;
const REQ: u32 = 1;
const REP: u32 = 2;
const PARK: u32 = 3;
const PARKED: u32 = 4;
/// "Look at the stop flag."
const WAKE: u32 = 5;
/// The child is gone.
const DEAD: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    SpinRaw,
    FutexRaw,
    FutexTimed,
    KitSpin,
    KitBlock,
    KitSpinBlock,
}

/// What criterion measures.
const BENCH_CASES: [Case; 5] =
    [Case::SpinRaw, Case::FutexRaw, Case::KitSpin, Case::KitBlock, Case::KitSpinBlock];
/// What the summary loop measures.
const SUMMARY_CASES: [Case; 6] =
    [Case::SpinRaw, Case::FutexRaw, Case::FutexTimed, Case::KitSpin, Case::KitBlock, Case::KitSpinBlock];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::SpinRaw => "a_spin_raw",
            Case::FutexRaw => "b_futex_raw",
            Case::FutexTimed => "bt_futex_raw_timed",
            Case::KitSpin => "c_ipckit_spin",
            Case::KitBlock => "d_ipckit_block",
            Case::KitSpinBlock => "e_ipckit_spin_then_block",
        }
    }

    /// The short name used by the probe and the summary.
    fn tag(self) -> &'static str {
        match self {
            Case::SpinRaw => "a",
            Case::FutexRaw => "b",
            Case::FutexTimed => "bt",
            Case::KitSpin => "c",
            Case::KitBlock => "d",
            Case::KitSpinBlock => "e",
        }
    }

    /// The ipckit wait mode of both sides; `None` for the raw baselines.
    fn mode(self) -> Option<WaitMode> {
        match self {
            Case::SpinRaw | Case::FutexRaw | Case::FutexTimed => None,
            Case::KitSpin => Some(WaitMode::Spin),
            Case::KitBlock => Some(WaitMode::Block),
            Case::KitSpinBlock => Some(WaitMode::default()),
        }
    }

    /// Whether the child busy-waits for ever between requests (and so must be
    /// parked while another case is timed).
    fn spins_forever(self) -> bool {
        matches!(self, Case::SpinRaw | Case::KitSpin)
    }

    fn runs_in(self, place: Placement) -> bool {
        match self {
            Case::SpinRaw | Case::KitSpin => matches!(place, Placement::Pinned { .. }),
            Case::KitSpinBlock => !matches!(place, Placement::SameCpu { .. }),
            Case::FutexRaw | Case::FutexTimed | Case::KitBlock => true,
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(shm_extra::ROLE_VAR) {
        std::process::exit(shm_extra::child_exit(&spec));
    }
    if let Ok(role) = std::env::var(ROLE_VAR) {
        common::exit_child("shm bench child", &role, child_main(&role));
    }

    let original = common::original_affinity();
    let placements = common::placements(&original, "the pinned scenarios (and so the spinning cases)");

    if let Ok(probe) = std::env::var(PROBE_VAR) {
        probe_main(&probe, &placements, &original);
        return;
    }
    if let Ok(pairs) = std::env::var(shm_extra::F_VAR) {
        shm_extra::run_f(&original, pairs.parse().unwrap_or(3));
        return;
    }

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
        .without_plots()
        .configure_from_args();

    for &place in &placements {
        common::place_self(place, &original);
        let mut group = c.benchmark_group(format!("shm_rtt_{}", place.name()));
        for case in BENCH_CASES.into_iter().filter(|c| c.runs_in(place)) {
            let mut peer = Peer::spawn(case, place).expect("spawn echo child");
            group.bench_function(case.name(), |b| b.iter(|| peer.round_trip()));
            peer.finish();
        }
        group.finish();
    }
    common::restore_affinity(&original);
    c.final_summary();

    // `cargo test --benches` runs this binary without `--bench` (criterion's
    // test mode): the summary loop is only for real benchmark runs.
    if common::criterion_benchmarking() {
        summary(&placements, &original);
        shm_extra::run(&original);
    }
}

/// A unique name for a shared-memory object of this run.
fn unique_name(what: &str) -> String {
    common::unique_name("shmbench", what)
}

// ---------------------------------------------------------------------------
// The raw shared mapping (no ipckit code)
// ---------------------------------------------------------------------------

/// A `shm_open` + `mmap` mapping of RAW_LEN bytes; the creator unlinks the name.
struct RawShm {
    base: NonNull<u8>,
    /// `Some` while this side still has to `shm_unlink` the object.
    owned: Option<String>,
}

impl RawShm {
    /// Creates object `/name` (0600, exclusive) and maps it.
    fn create(name: &str) -> io::Result<RawShm> {
        let path = format!("/{name}");
        let fd = rustix::shm::open(
            &path,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )?;
        let made = rustix::fs::ftruncate(&fd, RAW_LEN as u64)
            .map_err(io::Error::from)
            .and_then(|()| common::map_shared(fd.as_fd(), RAW_LEN));
        match made {
            Ok(base) => Ok(RawShm { base, owned: Some(path) }),
            Err(e) => {
                let _ = rustix::shm::unlink(&path);
                Err(e)
            }
        }
    }

    /// Opens and maps object `/name`, which the parent created RAW_LEN bytes long.
    fn open(name: &str) -> io::Result<RawShm> {
        let fd = rustix::shm::open(format!("/{name}"), OFlags::RDWR, Mode::empty())?;
        if rustix::fs::fstat(&fd)?.st_size < RAW_LEN as i64 {
            return Err(io::Error::other("raw shared-memory object is too small"));
        }
        Ok(RawShm { base: common::map_shared(fd.as_fd(), RAW_LEN)?, owned: None })
    }

    /// The 32-bit word at byte `off`.
    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= RAW_LEN);
        // SAFETY: `off` is inside the mapping (asserted) and 4-byte aligned
        // (the base is page-aligned); the mapping lives as long as `self`, and
        // every access to it, from either process, goes through atomics.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// Removes the name (the mappings stay valid).
    fn unlink(&mut self) {
        if let Some(path) = self.owned.take() {
            let _ = rustix::shm::unlink(&path);
        }
    }
}

impl Drop for RawShm {
    fn drop(&mut self) {
        self.unlink();
        // SAFETY: `base` was mapped by `map` with RAW_LEN bytes, and nothing
        // borrowed from it (`word` borrows `self`) outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), RAW_LEN) };
    }
}

/// Wakes one sleeper on `word` (a shared futex: no FUTEX_PRIVATE_FLAG).
#[inline]
fn wake(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

/// Busy-waits until `word` holds `want`. Panics if the child says it died or
/// nothing happens for IO_TIMEOUT (checked every 64 Ki spins only).
#[inline]
fn spin_until(word: &AtomicU32, want: u32) {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == want {
            return;
        }
        spins = spins.wrapping_add(1);
        if spins % (1 << 16) == 0 {
            check_stuck(v, &mut since);
        }
        std::hint::spin_loop();
    }
}

/// Sleeps on `word` (futex) until it holds `want`.
#[inline]
fn futex_until(word: &AtomicU32, want: u32, timeout: Option<&Timespec>) {
    let mut since: Option<Instant> = None;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == want {
            return;
        }
        if v == DEAD {
            check_stuck(v, &mut since);
        }
        let _ = futex::wait(word, futex::Flags::empty(), v, timeout);
        if timeout.is_some() {
            check_stuck(v, &mut since);
        }
    }
}

#[cold]
fn check_stuck(seen: u32, since: &mut Option<Instant>) {
    assert!(seen != DEAD, "the raw echo child died");
    let t = *since.get_or_insert_with(Instant::now);
    assert!(t.elapsed() < IO_TIMEOUT, "no reply from the raw echo child for {IO_TIMEOUT:?}");
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

enum Link {
    Raw(RawShm),
    Kit { client: RpcClient, out: Vec<u8> },
}

/// A running echo child and the parent's end of the link to it.
struct Peer {
    case: Case,
    link: Option<Link>,
    child: Option<Child>,
    /// An ipckit segment name this side still has to remove.
    segment: Option<String>,
    label: String,
}

impl Peer {
    fn spawn(case: Case, place: Placement) -> Result<Peer, Box<dyn Error>> {
        let label = format!("{}/{}", case.name(), place.name());
        let mut peer = Peer { case, link: None, child: None, segment: None, label };
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(PARENT_VAR, std::process::id().to_string()).stdin(Stdio::null()).stdout(Stdio::piped());
        common::set_cpu_env(&mut cmd, CPU_VAR, place.child_cpu());
        let role = match case {
            Case::SpinRaw => "spin",
            Case::FutexRaw => "futex",
            Case::FutexTimed => "futex-timed",
            Case::KitSpin => "kit-spin",
            Case::KitBlock => "kit-block",
            Case::KitSpinBlock => "kit-stb",
        };
        cmd.env(ROLE_VAR, role);
        let name = if case.mode().is_some() {
            // The child creates the segment (RpcServer::create); `segment` makes
            // sure it is removed even if the child never gets to it.
            let name = unique_name("rpc");
            peer.segment = Some(name.clone());
            name
        } else {
            let name = unique_name("raw");
            peer.link = Some(Link::Raw(RawShm::create(&name)?));
            name
        };
        cmd.env(NAME_VAR, &name);
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        peer.child = Some(child);
        // Dropping `peer` on an error below reaps the child and removes the objects.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim_end() != "ready" {
            return Err(format!("{}: the child did not start", peer.label).into());
        }
        match case.mode() {
            None => match &mut peer.link {
                // The child has it mapped: the name is no longer needed.
                Some(Link::Raw(shm)) => shm.unlink(),
                _ => unreachable!("raw link made above"),
            },
            Some(mode) => {
                let client = RpcClient::open(&name)?.with_wait(mode).with_timeout(IO_TIMEOUT);
                peer.link = Some(Link::Kit { client, out: Vec::with_capacity(64) });
                // Both sides have it mapped: remove the name now.
                if let Some(seg) = peer.segment.take() {
                    Segment::remove(&seg)?;
                }
            }
        }
        Ok(peer)
    }

    /// One request and its reply.
    #[inline]
    fn round_trip(&mut self) {
        match self.link.as_mut().expect("echo child still running") {
            Link::Raw(shm) => {
                let ping = shm.word(PING);
                ping.store(REQ, Ordering::Release);
                match self.case {
                    Case::SpinRaw => spin_until(ping, REP),
                    Case::FutexRaw => {
                        wake(ping);
                        futex_until(ping, REP, None);
                    }
                    _ => {
                        wake(ping);
                        futex_until(ping, REP, Some(&NAP));
                    }
                }
            }
            Link::Kit { client, out } => {
                client.call_into(&PAYLOAD, out, IO_TIMEOUT).expect("ipckit call");
                debug_assert_eq!(out[..], PAYLOAD);
                black_box(&out);
            }
        }
    }

    /// Makes a spinning child sleep (on a futex) until [`Peer::resume`].
    fn pause(&mut self) {
        if !self.case.spins_forever() {
            return;
        }
        match self.link.as_mut().expect("echo child still running") {
            Link::Raw(shm) => {
                let ping = shm.word(PING);
                ping.store(PARK, Ordering::Release);
                spin_until(ping, PARKED);
            }
            Link::Kit { client, out } => client.call_into(&CMD_PARK, out, IO_TIMEOUT).expect("ipckit park"),
        }
    }

    /// Undoes [`Peer::pause`] (one round trip, with a wake-up).
    fn resume(&mut self) {
        if !self.case.spins_forever() {
            return;
        }
        match self.link.as_mut().expect("echo child still running") {
            Link::Raw(shm) => {
                let ping = shm.word(PING);
                ping.store(REQ, Ordering::Release);
                wake(ping);
                spin_until(ping, REP);
            }
            Link::Kit { client, out } => {
                client.call_into(&CMD_UNPARK, out, IO_TIMEOUT).expect("ipckit unpark")
            }
        }
    }

    /// Whether the child last ran on the CPU the parent is on now (`/proc/<pid>/stat`).
    fn shares_cpu(&self) -> Option<bool> {
        common::shares_cpu_with(self.child.as_ref()?.id())
    }

    /// Tells the child to stop, reaps it and removes what is left.
    fn finish(&mut self) {
        match self.link.take() {
            Some(Link::Raw(shm)) => {
                shm.word(STOP).store(1, Ordering::SeqCst);
                let ping = shm.word(PING);
                ping.store(WAKE, Ordering::SeqCst);
                wake(ping);
                self.reap();
            }
            Some(Link::Kit { mut client, mut out }) => {
                // The server replies, then returns; an error means it is gone already.
                let _ = client.call_into(&CMD_QUIT, &mut out, EXIT_GRACE);
                drop(client);
                self.reap();
            }
            None => self.reap(),
        }
        if let Some(seg) = self.segment.take() {
            let _ = Segment::remove(&seg);
        }
    }

    fn reap(&mut self) {
        if let Some(child) = self.child.take() {
            common::reap(child, EXIT_GRACE, &format!("echo child {}", self.label));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.finish();
    }
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

/// One placement's batch means (ns per round trip), per case, round by round.
struct Row {
    place: Placement,
    cases: Vec<Case>,
    means: Vec<Vec<f64>>,
    /// Share of batches after which parent and child sat on one CPU.
    same_cpu: Vec<f64>,
}

impl Row {
    /// Where `case` was measured (several segments for the spinning cases).
    fn positions(&self, case: Case) -> Vec<usize> {
        (0..self.cases.len()).filter(|&i| self.cases[i] == case).collect()
    }

    /// The mean over `case`'s segments of `f(batch means of one segment)`.
    fn over_segments(&self, case: Case, f: impl Fn(&[f64]) -> f64) -> Option<f64> {
        let at = self.positions(case);
        (!at.is_empty()).then(|| at.iter().map(|&i| f(&self.means[i])).sum::<f64>() / at.len() as f64)
    }

    /// The mean over `case`'s segments of their medians.
    fn median(&self, case: Case) -> Option<f64> {
        self.over_segments(case, median)
    }

    /// Round by round, the mean over `case`'s segments of their batch means.
    fn combined(&self, case: Case) -> Option<Vec<f64>> {
        let at = self.positions(case);
        let rounds = self.means.first()?.len();
        (!at.is_empty()).then(|| {
            (0..rounds).map(|r| at.iter().map(|&i| self.means[i][r]).sum::<f64>() / at.len() as f64).collect()
        })
    }

    /// Median over rounds of the per-round ratio `num / den`.
    fn paired(&self, num: Case, den: Case) -> Option<f64> {
        let (n, d) = (self.combined(num)?, self.combined(den)?);
        Some(median(&n.iter().zip(&d).map(|(x, y)| x / y).collect::<Vec<_>>()))
    }

    /// Share of `case`'s batches after which parent and child sat on one CPU.
    fn same(&self, case: Case) -> Option<f64> {
        let at = self.positions(case);
        (!at.is_empty()).then(|| at.iter().map(|&i| self.same_cpu[i]).sum::<f64>() / at.len() as f64)
    }
}

/// The summary's list: the spinning cases SPIN_SEGMENTS times (each a pair
/// of processes with a segment of its own), the others once.
fn summary_list() -> Vec<Case> {
    SUMMARY_CASES
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, if c.spins_forever() { SPIN_SEGMENTS } else { 1 }))
        .collect()
}

/// `rounds` rounds, each timing one batch per case (rotating which goes first).
fn measure_placement(
    place: Placement,
    original: &CpuSet,
    wanted: &[Case],
    rounds: usize,
    batch_time: Duration,
) -> Result<Row, Box<dyn Error>> {
    common::place_self(place, original);
    let cases: Vec<Case> = wanted.iter().copied().filter(|c| c.runs_in(place)).collect();
    let mut peers = Vec::new();
    for &case in &cases {
        let mut peer = Peer::spawn(case, place)?;
        peer.pause();
        peers.push(peer);
    }
    // Batch sizes: about BATCH_TIME each.
    let mut batch = Vec::new();
    for peer in &mut peers {
        peer.resume();
        for _ in 0..WARMUP_RTTS {
            peer.round_trip();
        }
        let t0 = Instant::now();
        for _ in 0..500 {
            peer.round_trip();
        }
        let per = t0.elapsed().as_secs_f64() / 500.0;
        peer.pause();
        batch.push(((batch_time.as_secs_f64() / per) as usize).clamp(50, 200_000));
    }
    let n = cases.len();
    let mut means = vec![Vec::with_capacity(rounds); n];
    let mut same = vec![0usize; n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let peer = &mut peers[i];
            peer.resume();
            for _ in 0..(batch[i] / 10).max(20) {
                peer.round_trip();
            }
            let t0 = Instant::now();
            for _ in 0..batch[i] {
                peer.round_trip();
            }
            means[i].push(t0.elapsed().as_nanos() as f64 / batch[i] as f64);
            same[i] += usize::from(peer.shares_cpu() == Some(true));
            peer.pause();
        }
    }
    drop(peers);
    let same_cpu = same.iter().map(|&s| s as f64 / rounds as f64).collect();
    Ok(Row { place, cases, means, same_cpu })
}

fn summary(placements: &[Placement], original: &CpuSet) {
    eprintln!(
        "\nsummary loop: {ROUNDS} rounds x one batch of ~{BATCH_TIME:?} per case and placement \
         (after {WARMUP_RTTS} warm-up round trips), cases interleaved"
    );
    let load_before = common::load_note();
    let rows: Vec<Row> = placements
        .iter()
        .map(|&p| {
            measure_placement(p, original, &summary_list(), ROUNDS, BATCH_TIME)
                .unwrap_or_else(|e| panic!("summary ({}): {e}", p.name()))
        })
        .collect();
    common::restore_affinity(original);
    let load_after = common::load_note();

    println!();
    println!("machine load before / after the summary loop: {load_before} / {load_after}");
    println!(
        "Shared-memory round trip between two processes, median of {ROUNDS} batch means (us; a and c: \
         the mean of the medians of {SPIN_SEGMENTS} segments each); ipckit cases carry an 8-byte request and reply"
    );
    print!("{:<26}", "case");
    for r in &rows {
        print!("|{:>10} {:>6}", r.place.name(), "same%");
    }
    println!();
    for case in SUMMARY_CASES {
        print!("{:<26}", case.name());
        for r in &rows {
            match (r.median(case), r.same(case)) {
                (Some(m), Some(same)) => print!("|{:>10.3} {:>6.0}", m / 1e3, same * 100.0),
                _ => print!("|{:>10} {:>6}", "-", "-"),
            }
        }
        println!();
    }
    println!(
        "same%: batches after which parent and child sat on one CPU. a and c run pinned only: \
         spinning on one CPU (or on 2 vCPUs the scheduler may stack) measures the time slice, not IPC."
    );

    let pinned_a = rows.iter().find_map(|r| r.median(Case::SpinRaw));
    let ratios: [(&str, Case, Case, Option<f64>); 6] = [
        ("c/a  ipckit spin / spin", Case::KitSpin, Case::SpinRaw, Some(1.5)),
        ("d/b  ipckit block / futex", Case::KitBlock, Case::FutexRaw, Some(1.3)),
        ("e/a  ipckit s-t-b / spin", Case::KitSpinBlock, Case::SpinRaw, None),
        ("e/b  ipckit s-t-b / futex", Case::KitSpinBlock, Case::FutexRaw, None),
        ("bt/b futex timed / futex", Case::FutexTimed, Case::FutexRaw, None),
        ("d/bt ipckit block / timed", Case::KitBlock, Case::FutexTimed, None),
    ];
    println!();
    println!("Ratios: ratio of the medians (median of per-round ratios)");
    print!("{:<27}{:>6}", "ratio", "goal");
    for r in &rows {
        print!("|{:>22}", r.place.name());
    }
    println!();
    for (label, num, den, goal) in ratios {
        print!("{label:<27}{:>6}", goal.map_or(String::new(), |g| format!("<={g}")));
        for r in &rows {
            let cell = match (r.median(num), r.median(den)) {
                (Some(x), Some(y)) => {
                    let ratio = x / y;
                    let verdict = goal.map_or("", |g| if ratio <= g { " ok" } else { " OVER" });
                    format!("{ratio:.3} ({:.3}){verdict}", r.paired(num, den).unwrap_or(f64::NAN))
                }
                // (a) runs pinned only: compare with the pinned floor.
                (Some(x), None) if den == Case::SpinRaw && pinned_a.is_some() => {
                    format!("{:.3} vs pinned a", x / pinned_a.unwrap_or(f64::NAN))
                }
                _ => "-".to_owned(),
            };
            print!("|{cell:>22}");
        }
        println!();
    }
    // On a loaded machine a batch in which a spinning side was preempted is
    // slow, and the median moves with the load: the 10th percentiles are the
    // figures least touched by it.
    for r in &rows {
        let low = |c: Case| r.over_segments(c, |m| percentile(m, 0.1));
        if let (Some(pc), Some(pa)) = (low(Case::KitSpin), low(Case::SpinRaw)) {
            println!(
                "c/a by the 10th percentiles of the batch means ({}): {:.3} / {:.3} us = {:.3}",
                r.place.name(),
                pc / 1e3,
                pa / 1e3,
                pc / pa
            );
        }
    }
    println!(
        "b: futex wait (no timeout) + always wake; bt: the same with ipckit's 10 ms timeout on each wait \
         (diagnostic); s-t-b: WaitMode::SpinThenBlock({}) on both sides",
        match WaitMode::default() {
            WaitMode::SpinThenBlock(n) => n,
            _ => 0,
        }
    );
}

/// The `q` quantile (0..=1, nearest rank) of `xs` (NaN when empty).
fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[((n - 1) as f64 * q).round() as usize],
    }
}

/// The case named `tag` (short or long name).
fn find_case(tag: &str) -> Case {
    *SUMMARY_CASES
        .iter()
        .find(|c| c.tag() == tag || c.name() == tag)
        .unwrap_or_else(|| panic!("{PROBE_VAR}: unknown case {tag:?}"))
}

/// `IPCKIT_SHM_BENCH_PROBE=<a|b|bt|c|d|e>[:N[:placement]]`: exactly N round trips;
/// `<case>/<case>[/...][:ROUNDS[:placement]]`: the summary loop's interleaved
/// batches for those cases only, with the medians and the paired ratio of the
/// first to the second.
fn probe_main(spec: &str, placements: &[Placement], original: &CpuSet) {
    let mut parts = spec.split(':');
    let tags = parts.next().unwrap_or_default();
    if tags.contains('/') {
        let cases: Vec<Case> = tags.split('/').map(find_case).collect();
        assert!(cases.len() >= 2, "{PROBE_VAR}: give at least two cases, as in c/a");
        let rounds: usize = parts.next().map_or(PROBE_ROUNDS, |s| s.parse().expect("round count"));
        let place = common::find_placement(placements, parts.next().unwrap_or("pinned"), PROBE_VAR);
        let load_before = common::load_note();
        let row =
            measure_placement(place, original, &cases, rounds, PROBE_BATCH_TIME).expect("interleaved probe");
        common::restore_affinity(original);
        let load_after = common::load_note();
        // By position: the same case may be given twice (two peers, two
        // segments: how much the placement of the shared line alone matters).
        let med: Vec<f64> = row.means.iter().map(|m| median(m)).collect();
        // On a loaded machine a batch in which a spinning side was preempted
        // is slow: the 10th percentile of the batch means is the figure least
        // touched by that.
        let low: Vec<f64> = row.means.iter().map(|m| percentile(m, 0.1)).collect();
        let meds: Vec<String> = (0..row.cases.len())
            .map(|i| format!("{} {:.3} (p10 {:.3}) us", row.cases[i].tag(), med[i] / 1e3, low[i] / 1e3))
            .collect();
        let paired: Vec<f64> = row.means[0].iter().zip(&row.means[1]).map(|(x, y)| x / y).collect();
        eprintln!(
            "probe {spec} ({}): {rounds} rounds: {}; first/second: medians {:.3}, paired {:.3}, p10 {:.3}; \
             load {load_before} / {load_after}",
            place.name(),
            meds.join(", "),
            med[0] / med[1],
            median(&paired),
            low[0] / low[1],
        );
        return;
    }
    let case = find_case(tags);
    let n: usize = parts.next().map_or(20_000, |s| s.parse().expect("round trip count"));
    let place_name = parts.next().unwrap_or("pinned");
    let place = common::find_placement(placements, place_name, PROBE_VAR);
    common::place_self(place, original);
    let mut peer = Peer::spawn(case, place).expect("spawn echo child");
    for _ in 0..WARMUP_RTTS.min(n) {
        peer.round_trip();
    }
    let t0 = Instant::now();
    for _ in 0..n {
        peer.round_trip();
    }
    let per = t0.elapsed().as_nanos() as f64 / n.max(1) as f64;
    peer.finish();
    eprintln!("probe {spec}: {n} round trips (+ warm-up), {:.3} us each", per / 1e3);
}

// ---------------------------------------------------------------------------
// Child side: the echo servers
// ---------------------------------------------------------------------------

fn child_main(role: &str) -> Result<(), Box<dyn Error>> {
    // Die with the parent, whatever happens to it (then check it is not gone already).
    common::die_with_parent(PARENT_VAR, "the parent is gone")?;
    common::pin_from_env(CPU_VAR)?;
    let name = std::env::var(NAME_VAR)?;
    match role {
        "spin" => raw_child(&name, RawWait::Spin),
        "futex" => raw_child(&name, RawWait::Futex(None)),
        "futex-timed" => raw_child(&name, RawWait::Futex(Some(NAP))),
        "kit-spin" => kit_child(&name, WaitMode::Spin),
        "kit-block" => kit_child(&name, WaitMode::Block),
        "kit-stb" => kit_child(&name, WaitMode::default()),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

#[derive(Clone, Copy)]
enum RawWait {
    Spin,
    Futex(Option<Timespec>),
}

/// Sets the ping word to DEAD (and wakes the parent) when the raw child leaves, however it leaves.
struct DeadOnDrop<'a>(&'a AtomicU32);

impl Drop for DeadOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(DEAD, Ordering::SeqCst);
        wake(self.0);
    }
}

/// Answers REQ with REP on the ping word until the stop flag is set.
fn raw_child(name: &str, how: RawWait) -> Result<(), Box<dyn Error>> {
    let shm = RawShm::open(name)?;
    let ping = shm.word(PING);
    let stop = shm.word(STOP);
    let _dead = DeadOnDrop(ping);
    common::say_ready()?;
    loop {
        // Wait for anything but our own reply.
        let v = match how {
            RawWait::Spin => loop {
                let v = ping.load(Ordering::Acquire);
                if v != REP && v != IDLE {
                    break v;
                }
                std::hint::spin_loop();
            },
            RawWait::Futex(timeout) => loop {
                let v = ping.load(Ordering::Acquire);
                if v != REP && v != IDLE {
                    break v;
                }
                let _ = futex::wait(ping, futex::Flags::empty(), v, timeout.as_ref());
            },
        };
        match v {
            REQ => {
                ping.store(REP, Ordering::Release);
                if let RawWait::Futex(_) = how {
                    wake(ping);
                }
            }
            PARK => {
                ping.store(PARKED, Ordering::Release);
                while ping.load(Ordering::Acquire) == PARKED {
                    let _ = futex::wait(ping, futex::Flags::empty(), PARKED, None);
                }
            }
            _ if stop.load(Ordering::Acquire) != 0 => return Ok(()),
            other => return Err(format!("unexpected ping word {other}").into()),
        }
    }
}

/// Creates the two-slot segment and echoes requests until told to quit.
fn kit_child(name: &str, mode: WaitMode) -> Result<(), Box<dyn Error>> {
    let server = RpcServer::create(name, 64, 0o600)?.with_wait(mode);
    let served = common::say_ready().map_err(Into::into).and_then(|()| serve(server, mode));
    // The parent normally removed the name already.
    let _ = Segment::remove(name);
    served
}

fn serve(mut server: RpcServer, mode: WaitMode) -> Result<(), Box<dyn Error>> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match server.recv_into(&mut buf, Some(CHILD_IDLE)) {
            Ok(()) => {}
            // The client died (a client that detaches cleanly is not reported:
            // the parent says "quit"; PR_SET_PDEATHSIG covers a dead parent).
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        }
        server.reply(&buf)?;
        if buf[..] == PAYLOAD {
            continue;
        }
        match <[u8; 8]>::try_from(&buf[..]) {
            Ok(CMD_PARK) => server = server.with_wait(WaitMode::Block),
            Ok(CMD_UNPARK) => server = server.with_wait(mode),
            Ok(CMD_QUIT) => return Ok(()),
            _ => return Err(format!("unexpected request {buf:?}").into()),
        }
    }
}
