//! The naming server against a private `dbus-daemon`: lookup latency,
//! lookups per second with 1, 16 and 256 concurrent client connections, and
//! resident memory per idle connection, all in one run.
//!
//! The bench binary re-executes itself (`std::env::current_exe()`) with
//! [`ROLE_VAR`] set for its two helpers:
//!
//! * `server`: [`NameServer::bind`] + [`NameServer::run`] on a socket under
//!   `std::env::temp_dir()`, with limits raised for the benchmark
//!   (`max_connections_per_uid` 100000, `idle_timeout` 600 s, so the 256
//!   and 1000 connections are neither refused nor closed for idling);
//! * `service`: one [`NameClient`] that registers `bench/sink` (accepts every
//!   client connection and drops it at once) and `bench/echo` (accepts one,
//!   echoes one message on it, drops it).
//!
//! Both end when their standard input closes (the parent drops it, or dies).
//!
//! What is measured, ipckit side (clients are threads of the bench process):
//!
//! * `ipckit stat (table)`: [`NameClient::stat`] of `bench/sink`, the plain
//!   "who owns this name" query (the counterpart of D-Bus's `GetNameOwner`),
//!   answered from the client's read-only mapping of the server's name table
//!   for its class (no system call);
//! * `ipckit stat (server)`: the same query as a round trip to the server
//!   ([`NameClient::with_table`]`(false)`);
//! * `ipckit lookup (direct)`: [`NameClient::lookup`] of `bench/sink`: the
//!   table gives the service's own socket and the client connects to it
//!   (the service checks the caller's kernel credentials on accept);
//! * `ipckit lookup (brokered)`: the server makes a socket pair and passes
//!   one end to each side (the only path without the table);
//! * `ipckit lookup+rtt`: direct lookup of `bench/echo`, then one 8-byte
//!   message to the service and its echo back;
//! * `ipckit connect+lookup`: a fresh [`NameClient::connect`] + lookup
//!   (which fetches the table: one round trip) + direct connect.
//!
//! D-Bus side: `dbus-daemon --session --nofork --print-address
//! --address=unix:path=<temp>` (skipped with a note when `dbus-daemon` is not
//! on `PATH`). One connection owns `org.ipckit.Bench`; clients ask
//! `org.freedesktop.DBus.GetNameOwner("org.ipckit.Bench")`:
//!
//! * `dbus zbus`: through `zbus` (blocking API), the pure-Rust client;
//! * `dbus raw`: through a minimal hand-written client in this file (EXTERNAL
//!   authentication, `Hello`, one method call at a time, no threads), so the
//!   daemon's own cost shows without a client library's: the fairer
//!   reference for the daemon, and the one used for D-Bus's idle connections;
//! * `dbus connect+GetNameOwner`: a fresh raw connection (auth + `Hello`) + the query.
//!
//! Latency: all variants interleaved in rounds, every call timed; median,
//! p99 and mean. Throughput: N client threads, each with its own connection,
//! call in a loop for a fixed window after a warm-up; besides calls/s the
//! server's CPU time per call (sum of its threads' `/proc/<pid>/task/*/schedstat`)
//! is reported: with 2 cores shared by clients and server, it is the
//! client-independent measure of the server's cost. Memory: a fresh server
//! (and a fresh daemon), `VmRSS` from `/proc/<pid>/status` before and after
//! opening N connections that each made one request (so the server has
//! accepted and registered every one), well within the idle timeout.
//!
//! ```text
//! cargo bench -p ipckit --bench naming
//! IPCKIT_BENCH_PIN=1 cargo bench -p ipckit --bench naming
//! ```
//!
//! With `IPCKIT_BENCH_PIN=1` the servers (naming server, its service helper,
//! `dbus-daemon`) run on CPU 1 and every client thread on CPU 0; otherwise
//! the scheduler places everything.
//!
//! For profiling, `IPCKIT_BENCH_PROBE=<lookup|stat|zbus|raw>:<connections>:<seconds>`
//! runs only that throughput scenario; it prints the server's pid to stderr
//! and waits a second before the load starts, e.g.
//! `IPCKIT_BENCH_PROBE=lookup:16:5 target/release/deps/naming-* --bench` and
//! `perf stat -p <pid>` / `strace -c -f -p <pid>` from another shell.

use std::error::Error;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::black_box;
use ipckit::naming::{NameClient, NameServer, Policy, ServerConfig};

mod common;
use common::Reaped;

/// Tells the re-executed binary which helper to be.
const ROLE_VAR: &str = "IPCKIT_BENCH_ROLE";
/// The naming server's socket path, for the helpers.
const PATH_VAR: &str = "IPCKIT_BENCH_NAMING_PATH";
/// Runs one throughput scenario for profiling.
const PROBE_VAR: &str = "IPCKIT_BENCH_PROBE";
/// Pins servers to CPU 1 and clients to CPU 0.
const PIN_VAR: &str = "IPCKIT_BENCH_PIN";

/// Pins process (or thread) `pid` (0: the calling thread) to `cpu`, if pinning was asked for.
fn pin(pid: u32, cpu: usize) {
    if std::env::var_os(PIN_VAR).is_none_or(|v| v == "0") {
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let who = rustix::process::Pid::from_raw(pid as i32);
    if let Err(e) = rustix::thread::sched_setaffinity(who, &set) {
        eprintln!("note: cannot pin pid {pid} to CPU {cpu}: {e}");
    }
}

fn pinned() -> bool {
    std::env::var_os(PIN_VAR).is_some_and(|v| v != "0")
}

const SINK: &str = "bench/sink";
const ECHO: &str = "bench/echo";
const DBUS_NAME: &str = "org.ipckit.Bench";
const DBUS_DEST: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

const PAYLOAD: [u8; 8] = *b"ping-8by";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a helper gets to exit once told to.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// How much of everything one run does.
struct Scale {
    rounds: usize,
    /// Latency ops per round: cheap queries, and those that open a connection.
    batch: usize,
    connect_batch: usize,
    warm_up: Duration,
    window: Duration,
    concurrency: &'static [usize],
    idle_conns: usize,
}

const FULL: Scale = Scale {
    rounds: 30,
    batch: 400,
    connect_batch: 40,
    warm_up: Duration::from_millis(400),
    window: Duration::from_millis(2000),
    concurrency: &[1, 16, 256],
    idle_conns: 1000,
};

/// `cargo test --benches` runs the binary without `--bench`: a smoke run.
const QUICK: Scale = Scale {
    rounds: 2,
    batch: 20,
    connect_batch: 4,
    warm_up: Duration::from_millis(20),
    window: Duration::from_millis(50),
    concurrency: &[1, 4],
    idle_conns: 20,
};

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        common::exit_child("naming bench helper", &role, child_main(&role));
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let scale = if benchmarking { FULL } else { QUICK };
    let dir = TempDir::new().expect("temporary directory");
    if let Ok(spec) = std::env::var(PROBE_VAR) {
        probe(&spec, &dir);
        return;
    }
    run(&scale, &dir);
}

// ---------------------------------------------------------------------------
// Processes, paths and /proc
// ---------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()` for this run's sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<TempDir> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("ipckit-bench-naming-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, stopped and reaped on drop (also when a panic unwinds):
/// its standard input is closed (our helpers exit on that), a `SIGTERM`
/// follows (for `dbus-daemon`), then `SIGKILL` after [`EXIT_GRACE`].
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    label: String,
    /// The first line the child printed (its readiness, or the bus address).
    first_line: String,
}

impl Proc {
    /// Starts `cmd` with piped stdin/stdout and waits for its first line on stdout.
    /// Its standard error goes to `log` when given (and is shown if it fails to start), else to ours.
    fn start(mut cmd: Command, label: &str, log: Option<&Path>) -> Result<Proc, Box<dyn Error>> {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::inherit(),
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Should the bench die without unwinding, the child goes too.
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting {label}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut p = Proc { child: Some(child), stdin, label: label.to_owned(), first_line: String::new() };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim().is_empty() {
            let said = log.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            return Err(format!("{label} exited before it was ready: {}", said.trim()).into());
        }
        p.first_line = line.trim().to_owned();
        Ok(p)
    }

    /// Re-executes this binary as helper `role`, serving or using the naming socket `path`.
    fn helper(role: &str, path: &Path) -> Result<Proc, Box<dyn Error>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_VAR, role).env(PATH_VAR, path);
        Proc::start(cmd, role, None)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + EXIT_GRACE;
        if let Reaped::Killed = common::wait_or_kill(&mut child, deadline, Duration::from_millis(2)) {
            eprintln!("{} did not exit: killing it", self.label);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A naming server helper and the service helper registered with it.
struct Naming {
    path: PathBuf,
    // Declared first: dropped (stopped) before the server.
    service: Option<Proc>,
    server: Proc,
}

impl Naming {
    fn start(dir: &TempDir, tag: &str, with_service: bool) -> Result<Naming, Box<dyn Error>> {
        let path = dir.path(&format!("naming-{tag}.sock"));
        let server = Proc::helper("server", &path)?;
        let service = if with_service { Some(Proc::helper("service", &path)?) } else { None };
        Ok(Naming { path, service, server })
    }
}

/// `dbus-daemon` on a socket of its own, and (optionally) the connection owning [`DBUS_NAME`].
struct Bus {
    path: PathBuf,
    address: String,
    // Held (the name is its while it lives); declared first: closed before the daemon stops.
    _owner: Option<zbus::blocking::Connection>,
    owner_unique: String,
    daemon: Proc,
}

impl Bus {
    fn start(dir: &TempDir, tag: &str, with_owner: bool) -> Result<Bus, Box<dyn Error>> {
        let path = dir.path(&format!("dbus-{tag}.sock"));
        let mut cmd = Command::new("dbus-daemon");
        cmd.args(["--session", "--nofork", "--print-address", "--nopidfile"])
            .arg(format!("--address=unix:path={}", path.display()));
        // Its stderr goes to a file: as root in a sandbox it warns that it may not raise its fd limit.
        let daemon = Proc::start(cmd, "dbus-daemon", Some(&dir.path(&format!("dbus-{tag}.log"))))?;
        let address = daemon.first_line.clone();
        let (owner, owner_unique) = if with_owner {
            let conn = zbus::blocking::connection::Builder::address(address.as_str())?.build()?;
            conn.request_name(DBUS_NAME)?;
            let unique = conn.unique_name().map(|n| n.to_string()).unwrap_or_default();
            (Some(conn), unique)
        } else {
            (None, String::new())
        };
        Ok(Bus { path, address, _owner: owner, owner_unique, daemon })
    }
}

fn dbus_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("dbus-daemon").is_file()))
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of every thread of `pid` so far, in ns (`/proc/<pid>/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// A minimal D-Bus client: EXTERNAL auth, Hello, one call at a time
// ---------------------------------------------------------------------------

struct RawBus {
    sock: UnixStream,
    buf: Vec<u8>,
    serial: u32,
}

fn pad(buf: &mut Vec<u8>, align: usize) {
    while buf.len() % align != 0 {
        buf.push(0);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A little-endian method call to the bus driver: `member(arg)` or `member()`.
fn method_call(serial: u32, member: &str, arg: Option<&str>) -> Vec<u8> {
    let mut m = vec![b'l', 1, 0, 1, 0, 0, 0, 0];
    m.extend(serial.to_le_bytes());
    m.extend([0u8; 4]); // header field array length, patched below
    let field = |m: &mut Vec<u8>, code: u8, sig: u8, value: &str| {
        pad(m, 8);
        m.extend([code, 1, sig, 0]);
        if sig == b'g' {
            m.push(value.len() as u8);
        } else {
            pad(m, 4);
            m.extend((value.len() as u32).to_le_bytes());
        }
        m.extend(value.as_bytes());
        m.push(0);
    };
    field(&mut m, 1, b'o', DBUS_PATH);
    field(&mut m, 2, b's', DBUS_DEST);
    field(&mut m, 3, b's', member);
    field(&mut m, 6, b's', DBUS_DEST);
    if arg.is_some() {
        field(&mut m, 8, b'g', "s");
    }
    let fields_len = (m.len() - 16) as u32;
    m[12..16].copy_from_slice(&fields_len.to_le_bytes());
    pad(&mut m, 8);
    let body_start = m.len();
    if let Some(a) = arg {
        m.extend((a.len() as u32).to_le_bytes());
        m.extend(a.as_bytes());
        m.push(0);
    }
    let body_len = (m.len() - body_start) as u32;
    m[4..8].copy_from_slice(&body_len.to_le_bytes());
    m
}

impl RawBus {
    /// Connects, authenticates (EXTERNAL, our uid) and says `Hello`.
    fn connect(path: &Path) -> io::Result<RawBus> {
        let mut sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let uid = ipckit::euid().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        sock.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut bus = RawBus { sock, buf: Vec::with_capacity(4096), serial: 0 };
        let line = bus.read_line()?;
        if !line.starts_with("OK ") {
            return Err(io::Error::other(format!("D-Bus authentication refused: {line}")));
        }
        bus.sock.write_all(b"BEGIN\r\n")?;
        bus.call("Hello", None)?;
        Ok(bus)
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.sock.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// The next whole message.
    fn read_message(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if self.buf.len() >= 16 {
                if self.buf[0] != b'l' {
                    return Err(io::Error::other("big-endian D-Bus message: not handled"));
                }
                let body = u32_at(&self.buf, 4) as usize;
                let fields = u32_at(&self.buf, 12) as usize;
                let total = 16 + fields.next_multiple_of(8) + body;
                if self.buf.len() >= total {
                    return Ok(self.buf.drain(..total).collect());
                }
            }
            self.fill()?;
        }
    }

    /// Calls `member` on the bus driver; the reply's first argument when it is a string.
    fn call(&mut self, member: &str, arg: Option<&str>) -> io::Result<String> {
        self.serial += 1;
        self.sock.write_all(&method_call(self.serial, member, arg))?;
        loop {
            let msg = self.read_message()?;
            // Signals (NameAcquired after Hello) are skipped; calls are one at a time.
            let kind = msg[1];
            if kind != 2 && kind != 3 {
                continue;
            }
            let body = 16 + (u32_at(&msg, 12) as usize).next_multiple_of(8);
            let text = if msg.len() >= body + 4 {
                let n = u32_at(&msg, body) as usize;
                msg.get(body + 4..body + 4 + n).map(|s| String::from_utf8_lossy(s).into_owned())
            } else {
                None
            };
            return match kind {
                2 => Ok(text.unwrap_or_default()),
                _ => Err(io::Error::other(format!("D-Bus error reply to {member}: {text:?}"))),
            };
        }
    }

    fn get_name_owner(&mut self, name: &str) -> io::Result<String> {
        self.call("GetNameOwner", Some(name))
    }
}

fn zbus_connect(address: &str) -> zbus::Result<zbus::blocking::Connection> {
    zbus::blocking::connection::Builder::address(address)?.build()
}

fn zbus_get_name_owner(conn: &zbus::blocking::Connection, name: &str) -> zbus::Result<String> {
    let reply = conn.call_method(Some(DBUS_DEST), DBUS_PATH, Some(DBUS_DEST), "GetNameOwner", &(name,))?;
    reply.body().deserialize::<String>()
}

// ---------------------------------------------------------------------------
// The scenarios' single operations
// ---------------------------------------------------------------------------

fn ipckit_lookup(client: &NameClient) {
    let conn = client.lookup(SINK).expect("lookup");
    black_box(conn);
}

/// A client that asks the server for everything (no name table).
fn server_only(path: &Path) -> NameClient {
    NameClient::connect(path).expect("connect to the naming server").with_table(false)
}

fn ipckit_lookup_rtt(client: &NameClient) {
    let mut conn = client.lookup(ECHO).expect("lookup");
    conn.send_timeout(&PAYLOAD, IO_TIMEOUT).expect("send to the service");
    let reply = conn.recv_timeout(IO_TIMEOUT).expect("echo from the service");
    assert_eq!(reply.bytes(), PAYLOAD);
}

fn ipckit_stat(client: &NameClient) {
    let e = client.stat(SINK).expect("stat");
    black_box(e.pid);
}

// ---------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------

struct Latency {
    name: &'static str,
    /// Every call, in ns.
    samples: Vec<f64>,
}

impl Latency {
    fn median(&self) -> f64 {
        common::percentile_rounded(&self.samples, 0.5)
    }

    fn p99(&self) -> f64 {
        common::percentile_rounded(&self.samples, 0.99)
    }

    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }
}

type Op<'a> = (&'static str, usize, Box<dyn FnMut() + 'a>);

/// Every op `rounds` times a batch, interleaved (rotating which goes first).
fn latencies(scale: &Scale, naming: &Naming, bus: Option<&Bus>) -> Vec<Latency> {
    let client = NameClient::connect(&naming.path).expect("connect to the naming server");
    let brokered = server_only(&naming.path);
    let zbus_client = bus.map(|b| zbus_connect(&b.address).expect("zbus connect"));
    let mut raw_client = bus.map(|b| RawBus::connect(&b.path).expect("raw D-Bus connect"));
    let (b, cb) = (scale.batch, scale.connect_batch);
    let mut ops: Vec<Op<'_>> = vec![
        ("ipckit stat (table)", b, Box::new(|| ipckit_stat(&client))),
        ("ipckit stat (server)", b, Box::new(|| ipckit_stat(&brokered))),
        ("ipckit lookup (direct)", b, Box::new(|| ipckit_lookup(&client))),
        ("ipckit lookup (brokered)", b, Box::new(|| ipckit_lookup(&brokered))),
        ("ipckit lookup+rtt", b, Box::new(|| ipckit_lookup_rtt(&client))),
        (
            "ipckit connect+lookup",
            cb,
            Box::new(|| {
                let c = NameClient::connect(&naming.path).expect("connect");
                ipckit_lookup(&c);
            }),
        ),
    ];
    if let (Some(bus), Some(z), Some(raw)) = (bus, zbus_client.as_ref(), raw_client.as_mut()) {
        let owner = bus.owner_unique.clone();
        let owner2 = owner.clone();
        ops.push((
            "dbus zbus GetNameOwner",
            b,
            Box::new(move || {
                let got = zbus_get_name_owner(z, DBUS_NAME).expect("zbus GetNameOwner");
                debug_assert_eq!(got, owner);
            }),
        ));
        ops.push((
            "dbus raw GetNameOwner",
            b,
            Box::new(move || {
                let got = raw.get_name_owner(DBUS_NAME).expect("GetNameOwner");
                debug_assert_eq!(got, owner2);
            }),
        ));
        ops.push((
            "dbus raw connect+GetNameOwner",
            cb,
            Box::new(|| {
                let mut c = RawBus::connect(&bus.path).expect("raw D-Bus connect");
                black_box(c.get_name_owner(DBUS_NAME).expect("GetNameOwner"));
            }),
        ));
    }
    // Warm-up: a batch of each.
    for (_, n, f) in &mut ops {
        for _ in 0..*n {
            f();
        }
    }
    let mut out: Vec<Latency> = ops
        .iter()
        .map(|(name, n, _)| Latency { name, samples: Vec::with_capacity(n * scale.rounds) })
        .collect();
    let k = ops.len();
    for round in 0..scale.rounds {
        for j in 0..k {
            let i = (round + j) % k;
            let (_, n, f) = &mut ops[i];
            for _ in 0..*n {
                let t0 = Instant::now();
                f();
                out[i].samples.push(t0.elapsed().as_nanos() as f64);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lookup,
    LookupBrokered,
    Stat,
    StatServer,
    Zbus,
    Raw,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Lookup => "ipckit lookup (direct)",
            Kind::LookupBrokered => "ipckit lookup (brokered)",
            Kind::Stat => "ipckit stat (table)",
            Kind::StatServer => "ipckit stat (server)",
            Kind::Zbus => "dbus zbus GetNameOwner",
            Kind::Raw => "dbus raw GetNameOwner",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "lookup" => Kind::Lookup,
            "brokered" => Kind::LookupBrokered,
            "stat" => Kind::Stat,
            "statserver" => Kind::StatServer,
            "zbus" => Kind::Zbus,
            "raw" => Kind::Raw,
            _ => return None,
        })
    }

    fn is_dbus(self) -> bool {
        matches!(self, Kind::Zbus | Kind::Raw)
    }

    fn uses_table(self) -> bool {
        matches!(self, Kind::Lookup | Kind::Stat)
    }

    fn is_lookup(self) -> bool {
        matches!(self, Kind::Lookup | Kind::LookupBrokered)
    }
}

struct Rate {
    kind: Kind,
    conns: usize,
    per_sec: f64,
    /// Server (naming server / dbus-daemon) CPU per call, in µs.
    server_us: f64,
    /// The service helper's CPU per call (lookups only), in µs.
    service_us: f64,
    /// The bench process's (clients') CPU per call, in µs.
    client_us: f64,
    errors: u64,
}

/// Says what the first failed call of a run said (the count is in the table).
fn first_error(kind: Kind, e: &ipckit::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("  {}: first error: {e}", kind.name());
    }
}

/// `conns` threads, each with its own connection, calling in a loop.
fn throughput(
    kind: Kind,
    conns: usize,
    scale: &Scale,
    naming: &Naming,
    bus: Option<&Bus>,
) -> Result<Rate, Box<dyn Error>> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (done, errors, stop, ready) = (done.clone(), errors.clone(), stop.clone(), ready.clone());
        let path = naming.path.clone();
        let (bus_path, address) = bus.map(|b| (b.path.clone(), b.address.clone())).unzip();
        let t = std::thread::Builder::new().stack_size(256 << 10).spawn(move || {
            let count = |ok: bool| {
                let c = if ok { &done } else { &errors };
                c.fetch_add(1, Ordering::Relaxed);
            };
            match kind {
                Kind::Lookup | Kind::LookupBrokered | Kind::Stat | Kind::StatServer => {
                    let client = NameClient::connect(&path)
                        .expect("connect to the naming server")
                        .with_table(kind.uses_table());
                    // Fetch the table before the clock starts.
                    let _ = client.stat(SINK);
                    ready.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = if kind.is_lookup() {
                            client.lookup(SINK).map(drop)
                        } else {
                            client.stat(SINK).map(drop)
                        };
                        if let Err(e) = &outcome {
                            first_error(kind, e);
                        }
                        count(outcome.is_ok());
                    }
                }
                Kind::Zbus => {
                    let conn = zbus_connect(&address.expect("bus")).expect("zbus connect");
                    ready.wait();
                    while !stop.load(Ordering::Relaxed) {
                        count(zbus_get_name_owner(&conn, DBUS_NAME).is_ok());
                    }
                }
                Kind::Raw => {
                    let mut conn = RawBus::connect(&bus_path.expect("bus")).expect("raw D-Bus connect");
                    ready.wait();
                    while !stop.load(Ordering::Relaxed) {
                        count(conn.get_name_owner(DBUS_NAME).is_ok());
                    }
                }
            }
        })?;
        threads.push(t);
    }
    ready.wait();
    let server = if kind.is_dbus() { bus.expect("bus").daemon.pid() } else { naming.server.pid() };
    let service = if kind.is_lookup() { naming.service.as_ref().map_or(0, Proc::pid) } else { 0 };
    let me = std::process::id();
    std::thread::sleep(scale.warm_up);
    let (n0, e0, s0, v0, c0, t0) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu_ns(server),
        cpu_ns(service),
        cpu_ns(me),
        Instant::now(),
    );
    std::thread::sleep(scale.window);
    let (n1, e1, s1, v1, c1, t1) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu_ns(server),
        cpu_ns(service),
        cpu_ns(me),
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "a client thread panicked")?;
    }
    let calls = (n1 - n0).max(1) as f64;
    let per_call_us = |a: u64, b: u64| b.saturating_sub(a) as f64 / calls / 1e3;
    Ok(Rate {
        kind,
        conns,
        per_sec: (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        server_us: per_call_us(s0, s1),
        service_us: if service == 0 { f64::NAN } else { per_call_us(v0, v1) },
        client_us: per_call_us(c0, c1),
        errors: e1 - e0,
    })
}

// ---------------------------------------------------------------------------
// Resident memory per connection
// ---------------------------------------------------------------------------

struct Memory {
    what: &'static str,
    conns: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Memory {
    fn per_conn(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) * 1024.0 / self.conns as f64
    }
}

/// A fresh naming server; `n` connections that each made one request.
fn ipckit_memory(n: usize, dir: &TempDir) -> Result<Memory, Box<dyn Error>> {
    let naming = Naming::start(dir, "rss", false)?;
    let pid = naming.server.pid();
    drop(NameClient::connect(&naming.path)?.list()?);
    std::thread::sleep(Duration::from_millis(100));
    let before_kib = rss_kib(pid).ok_or("no VmRSS for the server")?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let c = NameClient::connect(&naming.path)?;
        c.list()?;
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after_kib = rss_kib(pid).ok_or("no VmRSS for the server")?;
    // The last client still gets answers: nothing was closed for idling.
    held.last().map(NameClient::list).transpose()?;
    drop(held);
    Ok(Memory { what: "ipckit naming server", conns: n, before_kib, after_kib })
}

/// A fresh `dbus-daemon`; `n` raw connections, each authenticated and registered (`Hello`).
fn dbus_memory(n: usize, dir: &TempDir) -> Result<Memory, Box<dyn Error>> {
    let bus = Bus::start(dir, "rss", false)?;
    let pid = bus.daemon.pid();
    drop(RawBus::connect(&bus.path)?);
    std::thread::sleep(Duration::from_millis(100));
    let before_kib = rss_kib(pid).ok_or("no VmRSS for dbus-daemon")?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(RawBus::connect(&bus.path)?);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after_kib = rss_kib(pid).ok_or("no VmRSS for dbus-daemon")?;
    drop(held);
    Ok(Memory { what: "dbus-daemon", conns: n, before_kib, after_kib })
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

fn run(scale: &Scale, dir: &TempDir) {
    let started = Instant::now();
    let naming = Naming::start(dir, "main", true).expect("start the naming server and the service");
    let bus = if dbus_available() {
        Some(Bus::start(dir, "main", true).expect("start dbus-daemon"))
    } else {
        eprintln!(
            "note: dbus-daemon is not on PATH: skipping the D-Bus rows \
             (Debian: apt-get install -y dbus-daemon)"
        );
        None
    };
    if pinned() {
        pin(naming.server.pid(), 1);
        if let Some(s) = &naming.service {
            pin(s.pid(), 1);
        }
        if let Some(b) = &bus {
            pin(b.daemon.pid(), 1);
        }
        // Client threads are created by this one and inherit its CPU.
        pin(0, 0);
        eprintln!("pinned: servers on CPU 1, clients on CPU 0");
    }
    eprintln!(
        "naming server pid {}, service pid {}{}",
        naming.server.pid(),
        naming.service.as_ref().map_or(0, Proc::pid),
        bus.as_ref().map(|b| format!(", dbus-daemon pid {}", b.daemon.pid())).unwrap_or_default()
    );

    eprintln!("latency: {} rounds, interleaved ...", scale.rounds);
    let lat = latencies(scale, &naming, bus.as_ref());

    let mut kinds = vec![Kind::Stat, Kind::StatServer, Kind::Lookup, Kind::LookupBrokered];
    if bus.is_some() {
        kinds.extend([Kind::Zbus, Kind::Raw]);
    }
    let mut rates = Vec::new();
    for &conns in scale.concurrency {
        for &kind in &kinds {
            eprintln!("throughput: {} x {conns} ...", kind.name());
            match throughput(kind, conns, scale, &naming, bus.as_ref()) {
                Ok(r) => rates.push(r),
                Err(e) => eprintln!("  failed: {e}"),
            }
        }
    }
    drop(bus);
    drop(naming);

    eprintln!("memory: {} connections ...", scale.idle_conns);
    let mut mem = Vec::new();
    match ipckit_memory(scale.idle_conns, dir) {
        Ok(m) => mem.push(m),
        Err(e) => eprintln!("  ipckit memory: {e}"),
    }
    if dbus_available() {
        match dbus_memory(scale.idle_conns, dir) {
            Ok(m) => mem.push(m),
            Err(e) => eprintln!("  dbus memory: {e}"),
        }
    }

    report(scale, &lat, &rates, &mem);
    eprintln!("(whole run {:.1} s)", started.elapsed().as_secs_f64());
}

fn report(scale: &Scale, lat: &[Latency], rates: &[Rate], mem: &[Memory]) {
    let find = |name: &str| lat.iter().find(|l| l.name == name);
    println!();
    println!("Naming: latency of one call (every call timed; {} rounds, variants interleaved)", scale.rounds);
    println!("{:<31}|{:>8} {:>10} {:>10} {:>10}", "variant", "calls", "median us", "p99 us", "mean us");
    for l in lat {
        println!(
            "{:<31}|{:>8} {:>10.2} {:>10.2} {:>10.2}",
            l.name,
            l.samples.len(),
            l.median() / 1e3,
            l.p99() / 1e3,
            l.mean() / 1e3
        );
    }
    let pairs = [
        ("ipckit stat (table)", "dbus zbus GetNameOwner"),
        ("ipckit stat (table)", "dbus raw GetNameOwner"),
        ("ipckit stat (server)", "dbus raw GetNameOwner"),
        ("ipckit lookup (direct)", "dbus raw GetNameOwner"),
        ("ipckit lookup (brokered)", "dbus raw GetNameOwner"),
        ("ipckit connect+lookup", "dbus raw connect+GetNameOwner"),
    ];
    for (ours, theirs) in pairs {
        if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
            println!(
                "  {theirs} / {ours}: median {:.2}x, p99 {:.2}x  (>1: ipckit faster)",
                b.median() / a.median(),
                b.p99() / a.p99()
            );
        }
    }

    println!();
    println!(
        "Naming: calls per second, N client threads each with its own connection \
         ({:.1} s window after {:.1} s warm-up); cpu: CPU time per call",
        scale.window.as_secs_f64(),
        scale.warm_up.as_secs_f64()
    );
    println!(
        "{:<24}|{:>5} |{:>10} |{:>10} {:>10} {:>10} |{:>6}",
        "variant", "N", "calls/s", "server us", "service us", "client us", "errors"
    );
    for r in rates {
        println!(
            "{:<24}|{:>5} |{:>10.0} |{:>10.2} {:>10} {:>10.2} |{:>6}",
            r.kind.name(),
            r.conns,
            r.per_sec,
            r.server_us,
            if r.service_us.is_nan() { "-".to_owned() } else { format!("{:.2}", r.service_us) },
            r.client_us,
            r.errors
        );
    }
    let rate = |k: Kind, n: usize| rates.iter().find(|r| r.kind == k && r.conns == n);
    println!("ratios ipckit / D-Bus calls per second (goal: ipckit lookups >= 5x D-Bus's):");
    println!(
        "{:>5} |{:>12} {:>12} {:>12} {:>12} {:>12} |{:>10} {:>10}",
        "N", "stat-t/zbus", "stat-t/raw", "stat-s/raw", "lkp-d/raw", "lkp-b/raw", "cpu s/raw", "cpu b/raw"
    );
    for &n in scale.concurrency {
        let ratio = |a: Kind, b: Kind| match (rate(a, n), rate(b, n)) {
            (Some(x), Some(y)) => format!("{:.2}x", x.per_sec / y.per_sec),
            _ => "-".to_owned(),
        };
        let cpu = |a: Kind, b: Kind| match (rate(a, n), rate(b, n)) {
            (Some(x), Some(y)) => format!("{:.2}x", y.server_us / x.server_us),
            _ => "-".to_owned(),
        };
        let met = |a: Kind, b: Kind| match (rate(a, n), rate(b, n)) {
            (Some(x), Some(y)) if x.per_sec >= 5.0 * y.per_sec => "met",
            (Some(_), Some(_)) => "NOT met",
            _ => "-",
        };
        println!(
            "{:>5} |{:>12} {:>12} {:>12} {:>12} {:>12} |{:>10} {:>10}  goal: resolve vs raw {}, lookup+connect vs raw {}",
            n,
            ratio(Kind::Stat, Kind::Zbus),
            ratio(Kind::Stat, Kind::Raw),
            ratio(Kind::StatServer, Kind::Raw),
            ratio(Kind::Lookup, Kind::Raw),
            ratio(Kind::LookupBrokered, Kind::Raw),
            cpu(Kind::StatServer, Kind::Raw),
            cpu(Kind::LookupBrokered, Kind::Raw),
            met(Kind::Stat, Kind::Raw),
            met(Kind::Lookup, Kind::Raw),
        );
    }
    println!(
        "stat-t: stat from the name table; stat-s: stat asking the server; lkp-d: lookup connecting \
         straight to the service's socket; lkp-b: brokered lookup"
    );
    println!(
        "cpu: dbus-daemon CPU per GetNameOwner / naming server CPU per call (client-independent); \
         2 cores are shared by clients, server (and service){}",
        if pinned() { "; pinned: servers on CPU 1, clients on CPU 0" } else { "; unpinned" }
    );

    println!();
    println!("Naming: resident memory of the server per open connection (VmRSS, fresh server)");
    println!(
        "{:<22}|{:>7} |{:>10} {:>10} |{:>12}",
        "server", "conns", "before KiB", "after KiB", "bytes/conn"
    );
    for m in mem {
        println!(
            "{:<22}|{:>7} |{:>10} {:>10} |{:>12.0}",
            m.what,
            m.conns,
            m.before_kib,
            m.after_kib,
            m.per_conn()
        );
    }
    if let [a, b] = mem {
        println!("  dbus-daemon / ipckit bytes per connection: {:.2}x", b.per_conn() / a.per_conn());
    }
    println!("(user-space memory only: socket buffers are kernel memory, not in VmRSS)");
}

/// `IPCKIT_BENCH_PROBE=<lookup|stat|zbus|raw>:<connections>:<seconds>`.
fn probe(spec: &str, dir: &TempDir) {
    let mut parts = spec.split(':');
    let kind = parts.next().and_then(Kind::parse).unwrap_or_else(|| panic!("{PROBE_VAR}: unknown kind"));
    let conns: usize = parts.next().map_or(16, |s| s.parse().expect("connections"));
    let secs: f64 = parts.next().map_or(5.0, |s| s.parse().expect("seconds"));
    let naming = Naming::start(dir, "probe", true).expect("start the naming server");
    let bus = kind.is_dbus().then(|| Bus::start(dir, "probe", true).expect("start dbus-daemon"));
    let pid = bus.as_ref().map_or(naming.server.pid(), |b| b.daemon.pid());
    eprintln!("probe {spec}: server pid {pid}");
    std::thread::sleep(Duration::from_secs(1));
    let scale = Scale { window: Duration::from_secs_f64(secs), warm_up: Duration::from_millis(200), ..FULL };
    let r = throughput(kind, conns, &scale, &naming, bus.as_ref()).expect("throughput");
    eprintln!(
        "probe {spec}: {:.0} calls/s, server {:.2} us/call, client {:.2} us/call, {} errors",
        r.per_sec, r.server_us, r.client_us, r.errors
    );
}

// ---------------------------------------------------------------------------
// Helpers (re-executed children)
// ---------------------------------------------------------------------------

/// A flag set when standard input reaches end-of-file (the parent let go of us).
fn stdin_closed() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        f.store(true, Ordering::Relaxed);
    });
    flag
}

fn child_main(role: &str) -> Result<(), Box<dyn Error>> {
    let path = PathBuf::from(std::env::var_os(PATH_VAR).ok_or("no socket path")?);
    match role {
        "server" => {
            let config = ServerConfig {
                max_connections_per_uid: 100_000,
                max_names_per_uid: 1_000,
                idle_timeout: Duration::from_secs(600),
                ..ServerConfig::default()
            };
            let mut server = NameServer::bind(&path, config)?;
            let stop = stdin_closed();
            common::say_ready()?;
            server.run(&stop)?;
            Ok(())
        }
        "service" => {
            let client = NameClient::connect(&path)?;
            let mut sink = client.register(SINK, Policy::mode(0o666))?;
            let mut echo = client.register(ECHO, Policy::mode(0o666))?;
            let stop = stdin_closed();
            let stop2 = stop.clone();
            let sinker = std::thread::spawn(move || -> Result<(), String> {
                while !stop2.load(Ordering::Relaxed) {
                    match sink.accept_timeout(Duration::from_millis(100)) {
                        Ok((conn, _who)) => drop(conn),
                        Err(ipckit::Error::Timeout) => {}
                        Err(e) => return Err(format!("sink: {e}")),
                    }
                }
                Ok(())
            });
            common::say_ready()?;
            while !stop.load(Ordering::Relaxed) {
                let mut conn = match echo.accept_timeout(Duration::from_millis(100)) {
                    Ok((conn, _who)) => conn,
                    Err(ipckit::Error::Timeout) => continue,
                    Err(e) => return Err(format!("echo: {e}").into()),
                };
                if let Ok(msg) = conn.recv_timeout(IO_TIMEOUT) {
                    let _ = conn.send_timeout(msg, IO_TIMEOUT);
                }
            }
            sinker.join().map_err(|_| "sink thread panicked")??;
            drop(client);
            Ok(())
        }
        other => Err(format!("unknown role {other:?}").into()),
    }
}
