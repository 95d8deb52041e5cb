//! Cases (e'), (f) and (g) of the shared-memory benchmark (issue 3), run by
//! `benches/shm.rs` after its own summary, in the same `cargo bench` run:
//!
//! * (e') `e_mpmc_{spin,block}`: an 8-byte round trip over two ipckit MPMC
//!   channels (request + reply) between two processes, `WaitMode::Spin` and
//!   `WaitMode::Block` on both sides;
//! * `c8_rpc_spin`: the 8-byte two-slot RPC round trip (`WaitMode::Spin`),
//!   measured here again as the reference of (f) (the two alternate, three
//!   times each, each time with a fresh child and segment);
//! * (f) `f_loan_hdr`: a 1 MiB zero-copy loan round trip over the two-slot
//!   RPC (`WaitMode::Spin`, the same transport, harness and pinning as c8,
//!   in a segment with 1 MiB slots): the parent borrows the 1 MiB request
//!   slot in place (`RpcClient::loan`), writes its first 8 bytes and calls
//!   with a 1 MiB request; the child takes a view of it in place
//!   (`RpcServer::recv_view`, no copy), reads those 8 bytes, lets the
//!   request go and answers with an 8-byte reply. Goal: within 2x of
//!   `c8_rpc_spin`.
//!   Context rows: `f_pool_rpc`, a `LoanPool` buffer of 1 MiB whose 12-byte
//!   token travels as the request of the same RPC (loan, token, redeem,
//!   release: the loan that works over any channel); `f_pool_spsc`, that
//!   token and the answer over two SPSC channels; `f_pool_local`, the pool
//!   machinery in one process; `f_loan_touch` writes and reads one byte in
//!   every 4 KiB page of the in-place request (256 cache lines each way) and
//!   `f_loan_full` every byte (touching 1 MiB twice): what the payload costs,
//!   which no IPC mechanism can make within 2x of an 8-byte round trip.
//!   `IPCKIT_SHM_BENCH_F=<pairs>` runs (f) alone;
//! * (g) one-way copy throughput at 64 B, 4 KiB, 64 KiB and 1 MiB: an ipckit
//!   SPSC channel (`send_bytes` / `recv_into`, spinning) against a raw
//!   single-producer single-consumer ring written here (no ipckit code: one
//!   copy in, one copy out, a length word per slot) and against one `memcpy`
//!   of the same size in one process. Goal: ipckit >= 90% of the raw ring.
//!   The ipckit and raw repetitions alternate, each with a fresh ring and
//!   child and a warm-up run first.
//!
//! Both processes are pinned to different CPUs when two are allowed. Every
//! segment and shm object is removed by a guard, also on error; every child
//! is reaped (killed after a grace period) and dies with its parent.

use std::error::Error;
use std::io::{self, BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::black_box;
use ipckit::shm::channel::{Config, ShmChannel, ShmReceiver, ShmSender};
use ipckit::shm::rpc::{RpcClient, RpcServer};
use ipckit::shm::{LoanPool, Segment, Token, WaitMode};
use ipckit::RecvTimeoutError;
use rustix::fs::Mode;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::shm::OFlags;
use rustix::thread::CpuSet;

type Res<T> = Result<T, Box<dyn Error>>;

/// `"<role> <name> <cpu or -> <parent pid> [args...]"`: tells the re-executed binary to be an extra child.
pub const ROLE_VAR: &str = "IPCKIT_SHM_BENCH_EXTRA";
/// `IPCKIT_SHM_BENCH_F=<pairs>`: run case (f) only (see [`run_f`]).
pub const F_VAR: &str = "IPCKIT_SHM_BENCH_F";

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CHILD_IDLE: Duration = Duration::from_secs(60);
const EXIT_GRACE: Duration = Duration::from_secs(5);
const PAYLOAD: [u8; 8] = *b"ping-8by";
const QUIT: [u8; 8] = *b"cmd-quit";
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Round-trip cases: RTT_ROUNDS batches of about RTT_BATCH each, after RTT_WARMUP round trips.
const RTT_ROUNDS: usize = 21;
const RTT_BATCH: Duration = Duration::from_millis(5);
const RTT_WARMUP: usize = 2_000;
/// c8 and f_loan_hdr are measured this many times each, alternating.
const F_PAIRS: usize = 9;
/// Throughput: THR_REPS repetitions of about THR_BYTES each per size and implementation.
const THR_REPS: usize = 7;
const THR_BYTES: usize = 128 * MIB;
const SIZES: [usize; 4] = [64, 4 * 1024, 64 * 1024, MIB];

fn unique(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("shmbench-x-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn one_cpu(cpu: usize) -> CpuSet {
    let mut set = CpuSet::new();
    set.set(cpu);
    set
}

/// Slots of a ring carrying messages of `size` bytes: about 8 MiB of ring, 4 to 256 slots.
fn ring_slots(size: usize) -> usize {
    (8 * MIB / size).clamp(4, 256)
}

/// Messages per throughput repetition.
fn thr_count(size: usize) -> usize {
    (THR_BYTES / size).clamp(256, 2_000_000)
}

// ---------------------------------------------------------------------------
// Guards: names to remove, children to reap
// ---------------------------------------------------------------------------

/// Removes every ipckit segment and raw shm object it names when dropped.
#[derive(Default)]
struct Names {
    kit: Vec<String>,
    raw: Vec<String>,
}

impl Drop for Names {
    fn drop(&mut self) {
        for n in &self.kit {
            let _ = Segment::remove(n);
        }
        for n in &self.raw {
            let _ = rustix::shm::unlink(format!("/{n}"));
        }
    }
}

/// A child running `role`; reaped on drop (killed if it does not exit in time).
struct Kid {
    child: Option<Child>,
    label: String,
}

impl Kid {
    /// Starts the child and waits for its "ready" line.
    fn spawn(role: &str, name: &str, cpu: Option<usize>, args: &[String]) -> Res<Kid> {
        let cpu = cpu.map_or("-".to_owned(), |c| c.to_string());
        let spec = format!("{role} {name} {cpu} {} {}", std::process::id(), args.join(" "));
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE_VAR, spec.trim_end())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().expect("stdout is piped");
        let kid = Kid { child: Some(child), label: role.to_owned() };
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("extra child {role} did not start (said {line:?})").into());
        }
        Ok(kid)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        eprintln!("extra child {} exited with {st}", self.label);
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                _ => {
                    eprintln!("extra child {} did not exit: killing it", self.label);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A raw shared mapping and ring (no ipckit code)
// ---------------------------------------------------------------------------

/// A `shm_open` + `mmap` mapping of `len` bytes.
struct RawMap {
    base: NonNull<u8>,
    len: usize,
}

impl RawMap {
    /// Creates object `/name` (0600, exclusive) of `len` bytes and maps it. The caller
    /// has put `name` in a [`Names`] guard first.
    fn create(name: &str, len: usize) -> io::Result<RawMap> {
        let fd = rustix::shm::open(
            format!("/{name}"),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        Self::map(&fd, len)
    }

    fn open(name: &str) -> io::Result<RawMap> {
        let fd = rustix::shm::open(format!("/{name}"), OFlags::RDWR, Mode::empty())?;
        let len = usize::try_from(rustix::fs::fstat(&fd)?.st_size).map_err(io::Error::other)?;
        Self::map(&fd, len)
    }

    fn map(fd: &OwnedFd, len: usize) -> io::Result<RawMap> {
        // SAFETY: a new shared mapping of `len` bytes of `fd` (that long) at an
        // address the kernel chooses: it overlaps no Rust object.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        Ok(RawMap { base: NonNull::new(p.cast()).expect("mmap does not return null"), len })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: inside the mapping (asserted), 8-byte aligned (page-aligned base);
        // lives as long as `self`; every access to this word is atomic.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: as for `u64_at`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: mapped by `map` with `len` bytes; nothing borrowed from it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A Lamport single-producer single-consumer ring in a [`RawMap`]: head
/// (consumer) at 0, tail (producer) at 128, slots from 256, each a u32
/// length and the data, 64-byte aligned. Each side caches the other's index.
struct RawRing {
    map: RawMap,
    slots: u64,
    size: usize,
    stride: usize,
    cached: u64,
    mine: u64,
}

const R_HEAD: usize = 0;
const R_TAIL: usize = 128;
const R_SLOTS: usize = 256;

impl RawRing {
    fn stride(size: usize) -> usize {
        (8 + size).div_ceil(64) * 64
    }

    fn bytes(slots: usize, size: usize) -> usize {
        R_SLOTS + slots * Self::stride(size)
    }

    fn new(map: RawMap, slots: usize, size: usize) -> Res<RawRing> {
        if map.len < Self::bytes(slots, size) {
            return Err("raw ring mapping too small".into());
        }
        Ok(RawRing { map, slots: slots as u64, size, stride: Self::stride(size), cached: 0, mine: 0 })
    }

    fn slot(&self, pos: u64) -> usize {
        R_SLOTS + (pos % self.slots) as usize * self.stride
    }

    /// Producer: copies `data` into the next slot, spinning while the ring is full.
    fn push(&mut self, data: &[u8]) -> Res<()> {
        assert!(data.len() <= self.size);
        let pos = self.mine;
        if pos - self.cached >= self.slots {
            let head = self.map.u64_at(R_HEAD);
            spin(|| {
                self.cached = head.load(Ordering::Acquire);
                pos - self.cached < self.slots
            })?;
        }
        let at = self.slot(pos);
        self.map.u32_at(at).store(data.len() as u32, Ordering::Relaxed);
        // SAFETY: the slot's data area [at + 8, at + 8 + size) is inside the mapping
        // (checked in `new`); the consumer does not touch this slot until `tail` passes
        // `pos` (Release below), and `data` is local memory, not overlapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.base.as_ptr().add(at + 8), data.len())
        };
        self.mine = pos + 1;
        self.map.u64_at(R_TAIL).store(self.mine, Ordering::Release);
        Ok(())
    }

    /// Consumer: copies the next message into `out`, spinning while the ring is empty.
    fn pop(&mut self, out: &mut Vec<u8>) -> Res<()> {
        let pos = self.mine;
        if pos >= self.cached {
            let tail = self.map.u64_at(R_TAIL);
            spin(|| {
                self.cached = tail.load(Ordering::Acquire);
                pos < self.cached
            })?;
        }
        let at = self.slot(pos);
        let len = (self.map.u32_at(at).load(Ordering::Relaxed) as usize).min(self.size);
        out.resize(len, 0);
        // SAFETY: the data area is inside the mapping (checked in `new`), `len` is at
        // most the slot size, the producer published it (Acquire above) and does not
        // reuse the slot until `head` passes `pos` (Release below).
        unsafe { std::ptr::copy_nonoverlapping(self.map.base.as_ptr().add(at + 8), out.as_mut_ptr(), len) };
        self.mine = pos + 1;
        self.map.u64_at(R_HEAD).store(self.mine, Ordering::Release);
        Ok(())
    }
}

/// Spins until `ready()`, failing after IO_TIMEOUT (checked every 64 Ki spins).
#[inline]
fn spin(mut ready: impl FnMut() -> bool) -> Res<()> {
    let mut n = 0u32;
    let mut since: Option<Instant> = None;
    while !ready() {
        n = n.wrapping_add(1);
        if n % (1 << 16) == 0 && since.get_or_insert_with(Instant::now).elapsed() > IO_TIMEOUT {
            return Err("raw ring: the other side made no progress".into());
        }
        std::hint::spin_loop();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// Times `op` in RTT_ROUNDS batches of about RTT_BATCH; returns the median ns per call.
fn time_rtt(mut op: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..RTT_WARMUP {
        op()?;
    }
    let t0 = Instant::now();
    let mut probe = 0usize;
    while t0.elapsed() < Duration::from_millis(2) || probe < 10 {
        op()?;
        probe += 1;
    }
    let per = t0.elapsed().as_secs_f64() / probe as f64;
    let batch = ((RTT_BATCH.as_secs_f64() / per) as usize).clamp(20, 200_000);
    let mut means = Vec::with_capacity(RTT_ROUNDS);
    for _ in 0..RTT_ROUNDS {
        let t = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        means.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    Ok(median(&means))
}

/// The 8-byte two-slot RPC round trip, WaitMode::Spin (the reference of (f)).
fn rpc8(cpu: Option<usize>) -> Res<f64> {
    let mut names = Names::default();
    let name = unique("rpc");
    names.kit.push(name.clone());
    let _kid = Kid::spawn("rpc", &name, cpu, &[])?;
    let mut client = RpcClient::open(&name)?.with_wait(WaitMode::Spin);
    let mut out = Vec::with_capacity(64);
    let r = time_rtt(|| {
        client.call_into(&PAYLOAD, &mut out, IO_TIMEOUT)?;
        black_box(&out);
        Ok(())
    });
    let _ = client.call_into(&QUIT, &mut out, IO_TIMEOUT);
    r
}

/// The request and reply channels of a round-trip case, made by the parent.
fn channel_pair(names: &mut Names, config: &Config, base: &str) -> Res<(String, ShmChannel, ShmChannel)> {
    let base = base.to_owned();
    let (req, rep) = (format!("{base}-req"), format!("{base}-rep"));
    names.kit.push(req.clone());
    names.kit.push(rep.clone());
    Ok((base, ShmChannel::create(&req, config)?, ShmChannel::create(&rep, config)?))
}

/// (e') 8-byte round trip over two MPMC channels.
fn mpmc(cpu: Option<usize>, mode: WaitMode, role: &str) -> Res<f64> {
    channel_rtt(cpu, mode, role, &Config::mpmc(8, 64))
}

/// An 8-byte round trip over two channels made with `config` (the child
/// echoes whatever arrives, whatever the flavour).
fn channel_rtt(cpu: Option<usize>, mode: WaitMode, role: &str, config: &Config) -> Res<f64> {
    let mut names = Names::default();
    let (base, req, rep) = channel_pair(&mut names, config, &unique("ch"))?;
    let mut tx = req.sender()?.with_wait(mode);
    let mut rx = rep.receiver()?.with_wait(mode);
    let _kid = Kid::spawn(role, &base, cpu, &[])?;
    let mut buf = Vec::with_capacity(64);
    let r = time_rtt(|| {
        tx.send_bytes(&PAYLOAD, Some(IO_TIMEOUT))?;
        rx.recv_into(&mut buf, Some(IO_TIMEOUT))?;
        black_box(&buf);
        Ok(())
    });
    let _ = tx.send_bytes(&QUIT, Some(IO_TIMEOUT));
    r
}

/// How much of a loaned 1 MiB buffer each side writes / reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Touch {
    /// The first 8 bytes.
    Header,
    /// One byte per 4 KiB page.
    Pages,
    /// Every byte.
    Full,
}

impl Touch {
    fn name(self) -> &'static str {
        match self {
            Touch::Header => "hdr",
            Touch::Pages => "touch",
            Touch::Full => "full",
        }
    }
}

/// Where (f)'s 1 MiB buffer lives and what carries it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The two-slot RPC's own request slot, lent in place (the case (f)).
    InPlace,
    /// A pool buffer whose token is the request of one two-slot RPC call.
    Rpc,
    /// A pool buffer whose token and answer go over an SPSC channel each way.
    Spsc,
}

/// Fills the loaned buffer as `touch` says.
fn fill(b: &mut [u8], touch: Touch, seq: u8, src: &[u8]) {
    match touch {
        Touch::Full => b[..MIB].copy_from_slice(src),
        Touch::Pages => {
            for p in (0..MIB).step_by(PAGE) {
                b[p] = seq;
            }
        }
        Touch::Header => b[..8].copy_from_slice(&u64::from(seq).to_le_bytes()),
    }
}

/// (f) 1 MiB loan round trip, touching the buffer as `touch` says, the
/// token travelling as `via` says.
fn loan(cpu: Option<usize>, touch: Touch, via: Via) -> Res<f64> {
    let mut names = Names::default();
    let base = unique("loan");
    let src = vec![0x5au8; MIB];
    let mut buf = Vec::with_capacity(16);
    let mut seq = 0u8;
    if via == Via::InPlace {
        names.kit.push(base.clone());
        let _kid = Kid::spawn(&format!("loan-inplace-{}", touch.name()), &base, cpu, &[])?;
        let mut client = RpcClient::open(&base)?.with_wait(WaitMode::Spin);
        let r = time_rtt(|| {
            let mut req = client.loan_timeout(IO_TIMEOUT)?;
            seq = seq.wrapping_add(1);
            fill(&mut req, touch, seq, &src);
            req.call_into(MIB, &mut buf, IO_TIMEOUT)?;
            black_box(&buf);
            Ok(())
        });
        let _ = client.call_into(&QUIT, &mut buf, IO_TIMEOUT);
        return r;
    }
    let pool_name = format!("{base}-pool");
    names.kit.push(pool_name.clone());
    let pool = LoanPool::create(&pool_name, 4, MIB, 0o600)?;
    match via {
        Via::InPlace => unreachable!("handled above"),
        Via::Rpc => {
            names.kit.push(base.clone());
            let _kid = Kid::spawn(&format!("loan-rpc-{}", touch.name()), &base, cpu, &[])?;
            let mut client = RpcClient::open(&base)?.with_wait(WaitMode::Spin);
            let r = time_rtt(|| {
                let mut b = pool.loan_timeout(IO_TIMEOUT)?;
                seq = seq.wrapping_add(1);
                fill(&mut b, touch, seq, &src);
                let token = b.send(MIB);
                client.call_into(&token.to_bytes(), &mut buf, IO_TIMEOUT)?;
                black_box(&buf);
                Ok(())
            });
            let _ = client.call_into(&QUIT, &mut buf, IO_TIMEOUT);
            r
        }
        Via::Spsc => {
            let (_, req, rep) = channel_pair(&mut names, &Config::spsc(8, 16), &base)?;
            let mut tx = req.sender()?.with_wait(WaitMode::Spin);
            let mut rx = rep.receiver()?.with_wait(WaitMode::Spin);
            let _kid = Kid::spawn(&format!("loan-spsc-{}", touch.name()), &base, cpu, &[])?;
            let r = time_rtt(|| {
                let mut b = pool.loan_timeout(IO_TIMEOUT)?;
                seq = seq.wrapping_add(1);
                fill(&mut b, touch, seq, &src);
                let token = b.send(MIB);
                tx.send_bytes(&token.to_bytes(), Some(IO_TIMEOUT))?;
                rx.recv_into(&mut buf, Some(IO_TIMEOUT))?;
                black_box(&buf);
                Ok(())
            });
            let _ = tx.send_bytes(&QUIT, Some(IO_TIMEOUT));
            r
        }
    }
}

/// The loan machinery's own work, in one process (no line moves between
/// CPUs): loan, write 8 bytes, send, redeem, read 8 bytes, drop.
fn loan_local() -> Res<f64> {
    let mut names = Names::default();
    let name = unique("loan-local");
    names.kit.push(name.clone());
    let pool = LoanPool::create(&name, 4, MIB, 0o600)?;
    let mut seq = 0u64;
    time_rtt(|| {
        let mut b = pool.loan_timeout(IO_TIMEOUT)?;
        seq += 1;
        b[..8].copy_from_slice(&seq.to_le_bytes());
        let token = Token::from_bytes(&b.send(MIB).to_bytes())?;
        let view = pool.redeem(token)?;
        black_box(u64::from_le_bytes(view[..8].try_into().expect("8 bytes")));
        Ok(())
    })
}

/// Which one-way path a throughput run measures.
#[derive(Clone, Copy, Debug)]
enum Path {
    Kit,
    Raw,
}

/// (g) one-way: `reps` repetitions of thr_count(size) messages through one
/// ring and one child; bytes/s of each.
fn throughput(cpu: Option<usize>, path: Path, size: usize, reps: usize) -> Res<Vec<f64>> {
    let mut names = Names::default();
    let (slots, n) = (ring_slots(size), thr_count(size));
    let args = [size.to_string(), n.to_string(), reps.to_string()];
    let data = vec![0xa5u8; size];
    let mut secs = Vec::with_capacity(reps);
    match path {
        Path::Kit => {
            let (base, req, rep) = channel_pair(&mut names, &Config::spsc(slots, size), &unique("ch"))?;
            let mut tx = req.sender()?.with_wait(WaitMode::Spin);
            let mut done = rep.receiver()?.with_wait(WaitMode::Spin);
            let _kid = Kid::spawn("thr-kit", &base, cpu, &args)?;
            let mut ack = Vec::with_capacity(16);
            for _ in 0..reps {
                let t = Instant::now();
                for _ in 0..n {
                    tx.send_bytes(&data, Some(IO_TIMEOUT))?;
                }
                done.recv_into(&mut ack, Some(IO_TIMEOUT))?;
                secs.push(t.elapsed().as_secs_f64());
            }
        }
        Path::Raw => {
            let name = unique("ring");
            names.raw.push(name.clone());
            let mut ring = RawRing::new(RawMap::create(&name, RawRing::bytes(slots, size))?, slots, size)?;
            let _kid = Kid::spawn("thr-raw", &name, cpu, &args)?;
            for rep in 0..reps {
                let t = Instant::now();
                for _ in 0..n {
                    ring.push(&data)?;
                }
                let end = ((rep + 1) * n) as u64;
                let head = ring.map.u64_at(R_HEAD);
                spin(|| head.load(Ordering::Acquire) >= end)?;
                secs.push(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(secs.iter().map(|t| (n * size) as f64 / t).collect())
}

/// One memcpy of `size` bytes in one process, repeated; median bytes/s.
fn memcpy(size: usize) -> f64 {
    let n = thr_count(size);
    let src = vec![0xa5u8; size];
    let mut dst = vec![0u8; size];
    let mut secs = Vec::with_capacity(THR_REPS);
    for _ in 0..THR_REPS {
        let t = Instant::now();
        for _ in 0..n {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        secs.push(t.elapsed().as_secs_f64());
    }
    (n * size) as f64 / median(&secs)
}

fn us(r: Res<f64>, what: &str) -> f64 {
    match r {
        Ok(ns) => ns / 1e3,
        Err(e) => {
            eprintln!("extra case {what} failed: {e}");
            f64::NAN
        }
    }
}

/// (f)'s figures, in microseconds.
struct FFigures {
    pairs: usize,
    c8: f64,
    hdr: f64,
    paired: f64,
    pool: f64,
    spsc: f64,
    local: f64,
    touch: f64,
    full: f64,
}

/// (f): c8 and f_loan_hdr alternate `pairs` times (each a fresh child and
/// segment, same harness, same pinning), so a burst of load on this shared
/// machine hits both; then the context rows.
fn f_cases(cpu: Option<usize>, pairs: usize) -> FFigures {
    let (mut c8s, mut hdrs) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        c8s.push(us(rpc8(cpu), "c8_rpc_spin"));
        hdrs.push(us(loan(cpu, Touch::Header, Via::InPlace), "f_loan_hdr"));
    }
    let paired = median(&hdrs.iter().zip(&c8s).map(|(f, c)| f / c).collect::<Vec<_>>());
    FFigures {
        pairs,
        c8: median(&c8s),
        hdr: median(&hdrs),
        paired,
        pool: us(loan(cpu, Touch::Header, Via::Rpc), "f_pool_rpc"),
        spsc: us(loan(cpu, Touch::Header, Via::Spsc), "f_pool_spsc"),
        local: us(loan_local(), "f_pool_local"),
        touch: us(loan(cpu, Touch::Pages, Via::InPlace), "f_loan_touch"),
        full: us(loan(cpu, Touch::Full, Via::InPlace), "f_loan_full"),
    }
}

impl FFigures {
    fn print(&self) {
        let FFigures { pairs, c8, hdr, paired, pool, spsc, local, touch, full } = *self;
        println!("  {:<46}{:>10.3}", "c8_rpc_spin   two-slot RPC, 8 B, Spin", c8);
        println!("  {:<46}{:>10.3}", "f_loan_hdr    1 MiB RPC request in place, 8 B w+r", hdr);
        println!("  {:<46}{:>10.3}", "f_pool_rpc    1 MiB pool loan, token as RPC request", pool);
        println!("  {:<46}{:>10.3}", "f_pool_spsc   the same over two SPSC rings", spsc);
        println!("  {:<46}{:>10.3}", "f_pool_local  loan+send+redeem+drop, 1 process", local);
        println!("  {:<46}{:>10.3}", "f_loan_touch  1 MiB in place, 1 byte/page", touch);
        println!("  {:<46}{:>10.3}", "f_loan_full   1 MiB in place, every byte", full);
        let verdict = if hdr / c8 <= 2.0 { "ok" } else { "OVER" };
        println!(
            "  f_hdr / c8    {:>8.3}  goal <= 2: {verdict} ({pairs} alternating pairs, \
             median of the per-pair ratios {paired:.3})",
            hdr / c8
        );
        println!(
            "  f_pool / c8   {:>8.3}  (context: a pool buffer, its token as the RPC request)",
            pool / c8
        );
        println!("  f_spsc / c8   {:>8.3}  (context: the pool token over two SPSC rings)", spsc / c8);
        println!("  f_touch / c8  {:>8.3}  (plus 256 cache lines each way)", touch / c8);
        println!("  f_full / c8   {:>8.3}  (touches 2 MiB; context only)", full / c8);
    }
}

/// Only (f), `pairs` alternating pairs (`IPCKIT_SHM_BENCH_F=<pairs>`): a
/// quick check of its ratio (a few seconds).
pub fn run_f(original: &CpuSet, pairs: usize) {
    let cpu = pin_parent(original);
    let f = f_cases(cpu, pairs.max(1));
    let _ = rustix::thread::sched_setaffinity(None, original);
    let place = if cpu.is_some() { "pinned to two CPUs" } else { "unpinned" };
    println!("Case f ({place}), round trips, median of {RTT_ROUNDS} batch means (us):");
    f.print();
}

/// Pins this process to the first allowed CPU; returns the child's CPU.
fn pin_parent(original: &CpuSet) -> Option<usize> {
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| original.is_set(c)).collect();
    match cpus[..] {
        [parent, child, ..] => {
            if let Err(e) = rustix::thread::sched_setaffinity(None, &one_cpu(parent)) {
                eprintln!("extra cases: cannot pin the parent ({e}): unpinned");
                None
            } else {
                Some(child)
            }
        }
        _ => None,
    }
}

/// Runs (e'), (f) and (g) and prints their table and ratios.
pub fn run(original: &CpuSet) {
    let child_cpu = pin_parent(original);
    let started = Instant::now();
    let f = f_cases(child_cpu, F_PAIRS);
    let e_spin = us(mpmc(child_cpu, WaitMode::Spin, "mpmc-spin"), "e_mpmc_spin");
    // The channels (f)'s SPSC context row sends its token and answer over, without the loan.
    let e_spsc = us(channel_rtt(child_cpu, WaitMode::Spin, "mpmc-spin", &Config::spsc(8, 16)), "e_spsc_spin");
    let e_block = us(mpmc(child_cpu, WaitMode::Block, "mpmc-block"), "e_mpmc_block");

    let gb = |r: Res<f64>, what: &str| match r {
        Ok(bps) => bps / 1e9,
        Err(e) => {
            eprintln!("extra case {what} failed: {e}");
            f64::NAN
        }
    };
    // Kit and raw alternate repetition by repetition (each with a fresh
    // ring and child, so each also lands on other pages): a burst of load
    // on this shared machine then hits both about equally instead of one
    // whole side.
    let rows: Vec<(usize, f64, f64, f64, f64)> = SIZES
        .iter()
        .map(|&s| {
            let (mut kit, mut raw) = (Vec::with_capacity(THR_REPS), Vec::with_capacity(THR_REPS));
            for rep in 0..THR_REPS {
                // Two repetitions per fresh pair, the first one warming
                // up (page faults of the new ring and buffers, the child's
                // start): the second one counts.
                let one = |path| {
                    let warm = throughput(child_cpu, path, s, 2)
                        .and_then(|v| v.last().copied().ok_or("no run".into()));
                    gb(warm, &format!("g_{path:?}_{s}"))
                };
                if rep % 2 == 0 {
                    kit.push(one(Path::Kit));
                    raw.push(one(Path::Raw));
                } else {
                    raw.push(one(Path::Raw));
                    kit.push(one(Path::Kit));
                }
            }
            let paired: Vec<f64> = kit.iter().zip(&raw).map(|(k, r)| k / r).collect();
            (s, median(&kit), median(&raw), memcpy(s) / 1e9, median(&paired))
        })
        .collect();
    let _ = rustix::thread::sched_setaffinity(None, original);

    let place = if child_cpu.is_some() { "pinned to two CPUs" } else { "unpinned" };
    println!();
    println!("Cases e', f, g ({place}; {:.1} s)", started.elapsed().as_secs_f64());
    println!("Round trips between two processes, median of {RTT_ROUNDS} batch means (us):");
    println!("  {:<44}{:>10.3}", "e_mpmc_spin   MPMC req+reply, 8 B, Spin", e_spin);
    println!("  {:<44}{:>10.3}", "e_mpmc_block  MPMC req+reply, 8 B, Block", e_block);
    println!("  {:<44}{:>10.3}", "e_spsc_spin   SPSC req+reply, 8 B, Spin", e_spsc);
    println!("  e_spin / c8   {:>8.3}", e_spin / f.c8);
    f.print();
    let verdict = |ok: bool| if ok { "ok" } else { "OVER" };
    println!(
        "One-way copy throughput (GB/s, median of {THR_REPS} runs of ~{} MiB, kit and raw alternating):",
        THR_BYTES / MIB
    );
    println!(
        "  {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "size", "ipckit", "raw ring", "memcpy", "kit/raw", "kit/memcpy", "paired"
    );
    for (s, kit, raw, mem, paired) in rows {
        let size = if s >= MIB {
            format!("{} MiB", s / MIB)
        } else if s >= 1024 {
            format!("{} KiB", s / 1024)
        } else {
            format!("{s} B")
        };
        println!(
            "  {size:>8} {kit:>10.3} {raw:>10.3} {mem:>10.3} {:>6.3} {:<3} {:>10.3} {paired:>8.3}",
            kit / raw,
            verdict(kit / raw >= 0.9),
            kit / mem
        );
    }
    println!(
        "  goal: kit/raw >= 0.9; raw ring = one copy in + one copy out, spinning, per-slot length word; \
         paired = median of the per-repetition ratios"
    );
}

// ---------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------

/// The extra child's entry point: returns the exit code.
pub fn child_exit(spec: &str) -> i32 {
    match child(spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shm bench extra child ({spec}): {e}");
            1
        }
    }
}

fn ready() -> io::Result<()> {
    use std::io::Write;
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()
}

fn child(spec: &str) -> Res<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let parts: Vec<&str> = spec.split(' ').collect();
    let [role, name, cpu, parent, args @ ..] = &parts[..] else { return Err("bad spec".into()) };
    let parent: i32 = parent.parse()?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        return Err("the parent is gone".into());
    }
    if *cpu != "-" {
        rustix::thread::sched_setaffinity(None, &one_cpu(cpu.parse()?))?;
    }
    let arg = |i: usize| -> Res<usize> { Ok(args.get(i).ok_or("missing argument")?.parse()?) };
    match *role {
        "rpc" => {
            let mut server = RpcServer::create(name, 64, 0o600)?.with_wait(WaitMode::Spin);
            ready()?;
            let mut buf = Vec::with_capacity(64);
            let r = loop {
                match server.recv_into(&mut buf, Some(CHILD_IDLE)) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Disconnected) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
                if let Err(e) = server.reply(&buf) {
                    break Err(e.into());
                }
                if buf[..] == QUIT {
                    break Ok(());
                }
            };
            let _ = Segment::remove(name);
            r
        }
        "mpmc-spin" | "mpmc-block" => {
            let mode = if *role == "mpmc-spin" { WaitMode::Spin } else { WaitMode::Block };
            let (mut rx, mut tx) = ends(name, mode)?;
            ready()?;
            let mut buf = Vec::with_capacity(64);
            loop {
                match rx.recv_into(&mut buf, Some(CHILD_IDLE)) {
                    Ok(()) if buf[..] == QUIT => return Ok(()),
                    Ok(()) => tx.send_bytes(&buf, Some(IO_TIMEOUT))?,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        "loan-inplace-hdr" | "loan-inplace-touch" | "loan-inplace-full" => {
            let touch = &role["loan-inplace-".len()..];
            let mut server = RpcServer::create(name, MIB, 0o600)?.with_wait(WaitMode::Spin);
            ready()?;
            let r = loop {
                let view = match server.recv_view(Some(CHILD_IDLE)) {
                    Ok(view) => view,
                    Err(RecvTimeoutError::Disconnected) => break Ok(()),
                    Err(e) => break Err(e.into()),
                };
                if view[..] == QUIT {
                    let _ = view.reply(&QUIT);
                    break Ok(());
                }
                let sum = read_loan(&view, touch);
                if let Err(e) = view.reply(&sum.to_le_bytes()) {
                    break Err(e.into());
                }
            };
            let _ = Segment::remove(name);
            r
        }
        "loan-rpc-hdr" | "loan-rpc-touch" | "loan-rpc-full" => {
            let touch = &role["loan-rpc-".len()..];
            let pool = LoanPool::open(&format!("{name}-pool"))?;
            let mut server = RpcServer::create(name, 64, 0o600)?.with_wait(WaitMode::Spin);
            ready()?;
            let mut buf = Vec::with_capacity(64);
            let r = loop {
                match server.recv_into(&mut buf, Some(CHILD_IDLE)) {
                    Ok(()) if buf[..] == QUIT => {
                        let _ = server.reply(&QUIT);
                        break Ok(());
                    }
                    Ok(()) => {}
                    Err(RecvTimeoutError::Disconnected) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
                let sum = match Token::from_bytes(&buf).and_then(|t| pool.redeem(t)) {
                    Ok(view) => read_loan(&view, touch),
                    Err(e) => break Err(e.into()),
                };
                if let Err(e) = server.reply(&sum.to_le_bytes()) {
                    break Err(e.into());
                }
            };
            let _ = Segment::remove(name);
            r
        }
        "loan-spsc-hdr" | "loan-spsc-touch" | "loan-spsc-full" => {
            let touch = &role["loan-spsc-".len()..];
            let pool = LoanPool::open(&format!("{name}-pool"))?;
            let (mut rx, mut tx) = ends(name, WaitMode::Spin)?;
            ready()?;
            let mut buf = Vec::with_capacity(16);
            loop {
                match rx.recv_into(&mut buf, Some(CHILD_IDLE)) {
                    Ok(()) if buf[..] == QUIT => return Ok(()),
                    Ok(()) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                let sum = read_loan(&pool.redeem(Token::from_bytes(&buf)?)?, touch);
                tx.send_bytes(&sum.to_le_bytes(), Some(IO_TIMEOUT))?;
            }
        }
        "thr-kit" => {
            let (size, n, reps) = (arg(0)?, arg(1)?, arg(2)?);
            let (mut rx, mut tx) = ends(name, WaitMode::Spin)?;
            ready()?;
            let mut buf = Vec::with_capacity(size);
            for _ in 0..reps {
                for _ in 0..n {
                    rx.recv_into(&mut buf, Some(IO_TIMEOUT))?;
                    black_box(&buf);
                }
                tx.send_bytes(b"done", Some(IO_TIMEOUT))?;
            }
            Ok(())
        }
        "thr-raw" => {
            let (size, n, reps) = (arg(0)?, arg(1)?, arg(2)?);
            let mut ring = RawRing::new(RawMap::open(name)?, ring_slots(size), size)?;
            ready()?;
            let mut buf = Vec::with_capacity(size);
            for _ in 0..n * reps {
                ring.pop(&mut buf)?;
                black_box(&buf);
            }
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Reads a redeemed loan in place as `touch` ("hdr", "touch", "full") says;
/// the view is dropped (the buffer returns to the pool) by the caller.
fn read_loan(view: &[u8], touch: &str) -> u64 {
    match touch {
        "hdr" => u64::from_le_bytes(view[..8].try_into().expect("8 bytes")),
        "full" => view
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .fold(0, u64::wrapping_add),
        _ => view.iter().step_by(PAGE).map(|&b| u64::from(b)).sum(),
    }
}

/// The child's ends of a channel pair: receiver of `-req`, sender of `-rep`.
fn ends(base: &str, mode: WaitMode) -> Res<(ShmReceiver, ShmSender)> {
    let rx = ShmChannel::open(&format!("{base}-req"))?.receiver()?.with_wait(mode);
    let tx = ShmChannel::open(&format!("{base}-rep"))?.sender()?.with_wait(mode);
    Ok((rx, tx))
}
