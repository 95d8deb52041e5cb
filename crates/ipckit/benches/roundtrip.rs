//! Round-trip latency of an 8-byte request and its 8-byte reply between two
//! real processes: raw system calls against ipckit's `Connection` and RPC.
//!
//! The bench binary re-executes itself (`std::env::current_exe()`) with
//! [`ROLE_VAR`] set; that child is the echo side. For every transport (a pipe
//! pair, a UNIX stream socket) and every placement three echo servers are
//! measured:
//!
//! * `raw`: blocking descriptors from `rustix`, `write(2)` 8 bytes, `read(2)` 8
//!   bytes back; no framing, no ipckit code in the loop;
//! * `ipckit_conn`: `Connection::send_timeout` + `Connection::recv_timeout`
//!   against a child that echoes each message;
//! * `ipckit_rpc`: `rpc::Client::call` against a child running `rpc::Server`.
//!
//! Placements: `pinned` (parent on the first allowed CPU, child on the second,
//! both with `sched_setaffinity`), `unpinned` (the scheduler decides) and, as
//! an extra, `samecpu` (both on the first CPU: no cross-CPU wake-up, so the
//! software cost of each round trip shows most clearly).
//!
//! Criterion runs first (groups `rtt_{pipe,unix}_{pinned,unpinned,samecpu}`),
//! then a summary loop of its own interleaves raw/conn/rpc batches (so
//! background noise hits all of them alike) and prints the median round trip
//! and the ipckit/raw ratios. The summary also times a diagnostic fourth
//! variant, `conn_nodl`: `Connection::send` + `Connection::recv` with no
//! deadline on either side, to separate the cost of timed waits.
//!
//! ```text
//! cargo bench -p ipckit --bench roundtrip
//! ```
//!
//! For syscall counting, `IPCKIT_BENCH_PROBE=<pipe|unix>:<raw|conn|rpc|conn_nodl>[:N[:placement]]`
//! skips criterion and performs exactly N (default 10000) round trips of one
//! scenario (placement default `unpinned`), e.g.
//! `IPCKIT_BENCH_PROBE=pipe:conn:20000 perf stat -e raw_syscalls:sys_enter target/release/deps/roundtrip-* --bench`.

use std::error::Error;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use ipckit::{rpc, spawn, Connection, RecvError, RecvTimeoutError, SocketKind};
use rustix::io::Errno;
use rustix::thread::CpuSet;

mod common;
use common::Placement;

/// Tells the re-executed binary which echo server to be.
const ROLE_VAR: &str = "IPCKIT_BENCH_ROLE";
/// Tells the child which CPU to pin itself to (unset: not pinned).
const CPU_VAR: &str = "IPCKIT_BENCH_CPU";
/// Runs one scenario a fixed number of times without criterion (for strace/perf).
const PROBE_VAR: &str = "IPCKIT_BENCH_PROBE";

/// Longest a parent waits for one ipckit send or reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A child that hears nothing for this long gives up and exits.
const CHILD_IDLE: Duration = Duration::from_secs(60);
/// How long a finished child gets to exit after its end is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The summary loop: ROUNDS x BATCH round trips per scenario.
const ROUNDS: usize = 40;
const BATCH: usize = 500;
const WARMUP_RTTS: usize = 2_000;

const REQUEST: [u8; 8] = *b"ping-8by";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Pipe,
    Unix,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Pipe => "pipe",
            Transport::Unix => "unix",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Raw,
    Conn,
    Rpc,
    /// Diagnostic only: `send`/`recv` without deadlines on both sides.
    ConnNoDeadline,
}

/// What criterion measures.
const BENCH_VARIANTS: [Variant; 3] = [Variant::Raw, Variant::Conn, Variant::Rpc];
/// What the summary loop measures (raw first: the ratios are against it).
const SUMMARY_VARIANTS: [Variant; 4] = [Variant::Raw, Variant::Conn, Variant::Rpc, Variant::ConnNoDeadline];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Conn => "ipckit_conn",
            Variant::Rpc => "ipckit_rpc",
            Variant::ConnNoDeadline => "ipckit_conn_nodl",
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        common::exit_child("roundtrip echo child", &role, child_main(&role));
    }

    let original = common::original_affinity();
    let placements = common::placements(&original, "the pinned scenarios");

    if let Ok(probe) = std::env::var(PROBE_VAR) {
        probe_main(&probe, &placements, &original);
        return;
    }

    let mut c = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
        .configure_from_args();

    for transport in [Transport::Pipe, Transport::Unix] {
        for &place in &placements {
            common::place_self(place, &original);
            let mut group = c.benchmark_group(format!("rtt_{}_{}", transport.name(), place.name()));
            for variant in BENCH_VARIANTS {
                let mut echo = Echo::spawn(transport, variant, place).expect("spawn echo child");
                group.bench_function(variant.name(), |b| b.iter(|| echo.round_trip()));
                echo.finish();
            }
            group.finish();
        }
    }
    common::restore_affinity(&original);
    c.final_summary();

    // `cargo test --benches` runs this binary without `--bench` (criterion's
    // test mode): the long summary loop is only for real benchmark runs.
    if common::criterion_benchmarking() {
        summary(&placements, &original);
    }
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// The parent's end of one echo scenario.
enum Side {
    /// Blocking descriptors; for a socket `wr` is `None` and `rd` does both.
    Raw {
        rd: OwnedFd,
        wr: Option<OwnedFd>,
    },
    /// `deadline`: use the `_timeout` forms.
    Conn {
        conn: Connection,
        deadline: bool,
    },
    Rpc(rpc::Client),
}

/// A running echo child and the parent's end of the link to it.
struct Echo {
    side: Option<Side>,
    child: Option<Child>,
    label: String,
}

impl Echo {
    fn spawn(transport: Transport, variant: Variant, place: Placement) -> Result<Echo, Box<dyn Error>> {
        let mut kit = spawn::Inherit::new();
        let (side, role) = match (transport, variant) {
            (Transport::Pipe, Variant::Raw) => {
                // Blocking pipes straight from rustix: parent->child and child->parent.
                let flags = rustix::pipe::PipeFlags::CLOEXEC;
                let (child_rd, parent_wr) = rustix::pipe::pipe_with(flags).map_err(io::Error::from)?;
                let (parent_rd, child_wr) = rustix::pipe::pipe_with(flags).map_err(io::Error::from)?;
                kit.pass("rd", child_rd)?;
                kit.pass("wr", child_wr)?;
                (Side::Raw { rd: parent_rd, wr: Some(parent_wr) }, "raw-pipe")
            }
            (Transport::Unix, Variant::Raw) => {
                let (parent, child) = rustix::net::socketpair(
                    rustix::net::AddressFamily::UNIX,
                    rustix::net::SocketType::STREAM,
                    rustix::net::SocketFlags::CLOEXEC,
                    None,
                )
                .map_err(io::Error::from)?;
                kit.pass("sock", child)?;
                (Side::Raw { rd: parent, wr: None }, "raw-unix")
            }
            (_, Variant::Conn | Variant::Rpc | Variant::ConnNoDeadline) => {
                let (parent, child) = match transport {
                    Transport::Pipe => ipckit::pipe::duplex()?,
                    Transport::Unix => Connection::pair(SocketKind::Stream)?,
                };
                kit.pass("conn", child)?;
                match variant {
                    Variant::Conn => (Side::Conn { conn: parent, deadline: true }, "conn"),
                    Variant::ConnNoDeadline => (Side::Conn { conn: parent, deadline: false }, "conn-nodl"),
                    _ => (Side::Rpc(rpc::Client::new(parent).with_timeout(IO_TIMEOUT)), "rpc"),
                }
            }
        };
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_VAR, role).stdin(Stdio::null()).stdout(Stdio::null());
        common::set_cpu_env(&mut cmd, CPU_VAR, place.child_cpu());
        let child = kit.spawn(&mut cmd)?;
        let label = format!("{}/{}/{}", transport.name(), variant.name(), place.name());
        Ok(Echo { side: Some(side), child: Some(child), label })
    }

    /// One 8-byte request and its 8-byte reply.
    #[inline]
    fn round_trip(&mut self) {
        match self.side.as_mut().expect("echo still running") {
            Side::Raw { rd, wr } => {
                let wr = wr.as_ref().unwrap_or(rd);
                write_all(wr.as_fd(), &REQUEST).expect("raw write");
                let mut reply = [0u8; 8];
                match read_exact(rd.as_fd(), &mut reply) {
                    Ok(true) => {}
                    Ok(false) => panic!("raw echo child closed its end"),
                    Err(e) => panic!("raw read: {e}"),
                }
                black_box(reply);
            }
            Side::Conn { conn, deadline: true } => {
                conn.send_timeout(&REQUEST, IO_TIMEOUT).expect("conn send");
                let reply = conn.recv_timeout(IO_TIMEOUT).expect("conn recv");
                assert_eq!(reply.bytes().len(), REQUEST.len());
                black_box(reply);
            }
            Side::Conn { conn, deadline: false } => {
                // No deadline: like the raw reads, relies on end-of-file if the child dies.
                conn.send(&REQUEST).expect("conn send");
                let reply = conn.recv().expect("conn recv");
                assert_eq!(reply.bytes().len(), REQUEST.len());
                black_box(reply);
            }
            Side::Rpc(client) => {
                let reply = client.call(&REQUEST).expect("rpc call");
                assert_eq!(reply.bytes().len(), REQUEST.len());
                black_box(reply);
            }
        }
    }

    /// Whether the child last ran on the CPU the parent is on now (`/proc/<pid>/stat`).
    fn shares_cpu(&self) -> Option<bool> {
        common::shares_cpu_with(self.child.as_ref()?.id())
    }

    /// Closes the parent's end (the child sees end-of-file and exits) and reaps the child.
    fn finish(&mut self) {
        drop(self.side.take());
        if let Some(child) = self.child.take() {
            common::reap(child, EXIT_GRACE, &format!("echo child {}", self.label));
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Summary: ROUNDS rounds, each timing one batch of BATCH round trips per
/// variant (all variants interleaved, rotating which goes first).
fn summary(placements: &[Placement], original: &CpuSet) {
    const NV: usize = SUMMARY_VARIANTS.len();
    struct Row {
        transport: Transport,
        place: Placement,
        /// Median of batch means per variant, in ns.
        median: [f64; NV],
        /// Median over rounds of (variant batch mean / raw batch mean of the same round).
        paired: [f64; NV],
        /// Share of batches after which parent and child were on the same CPU.
        same_cpu: [f64; NV],
    }
    eprintln!(
        "\nsummary loop: {ROUNDS} rounds x {BATCH} round trips per scenario and variant \
         (after {WARMUP_RTTS} warm-up), variants interleaved"
    );
    let mut rows = Vec::new();
    for transport in [Transport::Pipe, Transport::Unix] {
        for &place in placements {
            common::place_self(place, original);
            let mut echoes: Vec<Echo> = SUMMARY_VARIANTS
                .iter()
                .map(|&v| Echo::spawn(transport, v, place).expect("spawn echo child"))
                .collect();
            for e in &mut echoes {
                for _ in 0..WARMUP_RTTS {
                    e.round_trip();
                }
            }
            let mut means: [Vec<f64>; NV] = Default::default();
            let mut same = [0usize; NV];
            for round in 0..ROUNDS {
                for k in 0..NV {
                    let v = (round + k) % NV;
                    let e = &mut echoes[v];
                    let t0 = Instant::now();
                    for _ in 0..BATCH {
                        e.round_trip();
                    }
                    means[v].push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
                    same[v] += usize::from(e.shares_cpu() == Some(true));
                }
            }
            drop(echoes);
            let paired = |v: usize| {
                common::median(&means[v].iter().zip(&means[0]).map(|(x, r)| x / r).collect::<Vec<_>>())
            };
            rows.push(Row {
                transport,
                place,
                median: std::array::from_fn(|v| common::median(&means[v])),
                paired: std::array::from_fn(paired),
                same_cpu: std::array::from_fn(|v| same[v] as f64 / ROUNDS as f64),
            });
        }
    }
    common::restore_affinity(original);

    println!();
    println!(
        "Round trip of an 8-byte request + 8-byte reply between two processes \
         (median of {ROUNDS} batch means of {BATCH} round trips, variants interleaved)"
    );
    println!(
        "{:<5} {:<9}|{:>8} {:>8} {:>8}|{:>9} {:>8}|{:>8} {:>8}|{:>8} {:>8}| {:<17}| goal <= 1.10",
        "link",
        "cpus",
        "raw us",
        "conn us",
        "rpc us",
        "conn/raw",
        "rpc/raw",
        "pair c/r",
        "pair r/r",
        "nodl us",
        "nodl/raw",
        "same-cpu % r/c/r"
    );
    for r in &rows {
        let ok = |x: f64| if x <= 1.10 { "ok" } else { "OVER" };
        let m = &r.median;
        println!(
            "{:<5} {:<9}|{:>8.2} {:>8.2} {:>8.2}|{:>9.3} {:>8.3}|{:>8.3} {:>8.3}|{:>8.2} {:>8.3}| {:<17}| conn {} rpc {}",
            r.transport.name(),
            r.place.name(),
            m[0] / 1e3,
            m[1] / 1e3,
            m[2] / 1e3,
            m[1] / m[0],
            m[2] / m[0],
            r.paired[1],
            r.paired[2],
            m[3] / 1e3,
            m[3] / m[0],
            format!("{:.0}/{:.0}/{:.0}", r.same_cpu[0] * 100.0, r.same_cpu[1] * 100.0, r.same_cpu[2] * 100.0),
            ok(m[1] / m[0]),
            ok(m[2] / m[0]),
        );
    }
    println!(
        "conn/raw, rpc/raw: ratio of the medians; pair: median over rounds of the per-round ratio; \
         nodl: conn with send()/recv() (no deadline), diagnostic; same-cpu %: batches after which \
         parent and child sat on one CPU (raw/conn/rpc), what decides the unpinned numbers"
    );
}

/// `IPCKIT_BENCH_PROBE=<pipe|unix>:<raw|conn|rpc|conn_nodl>[:N[:placement]]`: exactly N round trips.
fn probe_main(spec: &str, placements: &[Placement], original: &CpuSet) {
    let mut parts = spec.split(':');
    let transport = match parts.next() {
        Some("pipe") => Transport::Pipe,
        Some("unix") => Transport::Unix,
        other => panic!("{PROBE_VAR}: unknown transport {other:?}"),
    };
    let variant = match parts.next() {
        Some("raw") => Variant::Raw,
        Some("conn") => Variant::Conn,
        Some("rpc") => Variant::Rpc,
        Some("conn_nodl") => Variant::ConnNoDeadline,
        other => panic!("{PROBE_VAR}: unknown variant {other:?}"),
    };
    let n: usize = parts.next().map_or(10_000, |s| s.parse().expect("round trip count"));
    let place_name = parts.next().unwrap_or("unpinned");
    let place = common::find_placement(placements, place_name, PROBE_VAR);
    common::place_self(place, original);
    let mut echo = Echo::spawn(transport, variant, place).expect("spawn echo child");
    let t0 = Instant::now();
    for _ in 0..n {
        echo.round_trip();
    }
    let per = t0.elapsed().as_nanos() as f64 / n.max(1) as f64;
    echo.finish();
    eprintln!("probe {spec}: {n} round trips, {:.2} us each", per / 1e3);
}

// ---------------------------------------------------------------------------
// Child side: the echo servers
// ---------------------------------------------------------------------------

fn child_main(role: &str) -> Result<(), Box<dyn Error>> {
    common::pin_from_env(CPU_VAR)?;
    match role {
        "raw-pipe" => {
            let rd: OwnedFd = spawn::inherited("rd")?;
            let wr: OwnedFd = spawn::inherited("wr")?;
            raw_echo(rd.as_fd(), wr.as_fd())
        }
        "raw-unix" => {
            let sock: OwnedFd = spawn::inherited("sock")?;
            raw_echo(sock.as_fd(), sock.as_fd())
        }
        "conn" => {
            let mut conn: Connection = spawn::inherited("conn")?;
            loop {
                let msg = match conn.recv_timeout(CHILD_IDLE) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                if let Err(e) = conn.send_timeout(msg, IO_TIMEOUT) {
                    // The parent may close its end right after its last reply.
                    return if e.is_disconnected() { Ok(()) } else { Err(e.to_string().into()) };
                }
            }
        }
        "conn-nodl" => {
            // Diagnostic twin of "conn" without deadlines; ends at end-of-file like the raw echo.
            let mut conn: Connection = spawn::inherited("conn")?;
            loop {
                let msg = match conn.recv() {
                    Ok(m) => m,
                    Err(RecvError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                if let Err(e) = conn.send(msg) {
                    return if e.is_disconnected() { Ok(()) } else { Err(e.to_string().into()) };
                }
            }
        }
        "rpc" => {
            let conn: Connection = spawn::inherited("conn")?;
            let mut server = rpc::Server::new();
            server.add(conn);
            loop {
                let mut req = match server.recv_timeout(CHILD_IDLE) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let body = std::mem::take(req.message());
                // A failed reply means the parent went away; recv reports it next.
                let _ = req.reply_timeout(body, IO_TIMEOUT);
            }
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Reads 8 bytes, writes them back, until end-of-file.
fn raw_echo(rd: BorrowedFd<'_>, wr: BorrowedFd<'_>) -> Result<(), Box<dyn Error>> {
    let mut buf = [0u8; 8];
    loop {
        if !read_exact(rd, &mut buf)? {
            return Ok(());
        }
        match write_all(wr, &buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Fills `buf` with blocking `read(2)`s; `Ok(false)` on end-of-file before the first byte.
fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(Errno::CONNRESET) if got == 0 => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Writes all of `buf` with blocking `write(2)`s.
fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::write(fd, &buf[done..]) {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
