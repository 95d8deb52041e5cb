//! System V IPC between real processes: the kernel's own message queue
//! (`msgsnd`/`msgrcv`) and semaphores (`semop`) against ipckit's
//! [`MessageQueue`] and [`SemaphoreSet`], with the same semantics.
//!
//! The bench binary re-executes itself (`std::env::current_exe()`) with
//! [`ROLE_VAR`] set; those children are the senders and echo sides. Every
//! child dies with its parent (`PR_SET_PDEATHSIG`), and every kernel object
//! (`msgctl`/`semctl(IPC_RMID)`) and ipckit object (`remove()`) is removed by
//! a guard, also on error; a watchdog thread removes the object of a
//! scenario that hangs, which wakes everyone blocked on it.
//!
//! Measured, with 64-byte messages unless said otherwise and the same `msg_qbytes` (16384, the
//! kernel's default) on both sides, blocking calls only; both receive into
//! the caller's buffer (`msgrcv`, [`MessageQueue::recv_into`]):
//!
//! * `1->1 type 0`: throughput, one sender process (type 1) and one receiver
//!   (the parent, `msgtyp` 0);
//! * `1->1 type 2`: the same with selection: 8 type-1 messages are parked at
//!   the head of the queue, the sender sends type 2, the receiver asks for
//!   type 2 (every receive looks past the parked messages);
//! * `4->1 type 0`: four sender processes, one receiver;
//! * `1->1 long`: as `1->1 type 0` with 4 KiB texts (ipckit keeps texts over
//!   104 bytes in its arena, not in a ring slot); the goal there is to be at
//!   least as fast as the kernel (1x), not 10x;
//! * `round trip`: request type 1, reply type 2 through the same queue (the
//!   classic `msgq` ping-pong), parent and one echo child;
//! * `sem ping-pong`: a set of two semaphores at 0; the parent does V(0) then
//!   P(1), the child P(0) then V(1).
//!
//! A throughput round: the senders are spawned, open the queue, say they are
//! ready and wait for the word (their stdin closing); each then sends for
//! [`SEND_TIME`] and ends with one end marker. The receiver's clock runs from
//! the first message to the last end marker. Round trips are timed in
//! batches of at least [`BATCH_TIME`], kernel and ipckit interleaved.
//!
//! Placements: `pinned` (parent on the first allowed CPU, children on the
//! second), `unpinned` (the scheduler decides) and `samecpu` (everyone on the
//! first CPU). The summary prints medians, the ratio ipckit/kernel (how many
//! times ipckit is faster: messages/s over messages/s, or kernel time over
//! ipckit time) and context switches per message (receiver and senders),
//! which show how often each side had to sleep.
//!
//! ```text
//! cargo bench -p ipckit --bench sysv
//! ```
//!
//! `IPCKIT_SYSV_BENCH_ONLY=ping` runs the round-trip scenarios only.
//!
//! For profiling, `IPCKIT_SYSV_BENCH_PROBE=<tput1|tsel|tput4|tlong1|tlong4|rtt|sem>:<kernel|ipckit>[:placement[:N]]`
//! runs one scenario once (N: milliseconds of sending for the throughput
//! kinds, default 1000; round trips for `rtt`/`sem`, default 20000) and
//! prints the message count; `tlong1`/`tlong4` are 1->1 and 4->1 with long
//! texts, 4096 bytes or `IPCKIT_SYSV_BENCH_LEN`. E.g.
//! `IPCKIT_SYSV_BENCH_PROBE=tput1:ipckit:pinned strace -f -c -e trace=futex target/release/deps/sysv-* --bench`.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipckit::perm::Access;
use ipckit::sysv::{MessageQueue, QueueConfig, Select, SemError, SemOp, SemaphoreSet};
use ipckit::RecvError;
use rustix::thread::CpuSet;

mod common;
use common::{median, one_cpu, Placement, Reaped};

/// Tells the re-executed binary which child to be.
const ROLE_VAR: &str = "IPCKIT_SYSV_BENCH_ROLE";
/// The object: a kernel id, or an ipckit name.
const OBJ_VAR: &str = "IPCKIT_SYSV_BENCH_OBJ";
/// The type a sender sends.
const MTYPE_VAR: &str = "IPCKIT_SYSV_BENCH_MTYPE";
/// Message text length (a sender's).
const LEN_VAR: &str = "IPCKIT_SYSV_BENCH_LEN";
/// How long a sender sends, in milliseconds.
const MS_VAR: &str = "IPCKIT_SYSV_BENCH_MS";
/// Which CPU a child pins itself to (unset: not pinned).
const CPU_VAR: &str = "IPCKIT_SYSV_BENCH_CPU";
/// The parent's pid (a child whose parent is already gone exits).
const PARENT_VAR: &str = "IPCKIT_SYSV_BENCH_PARENT";
/// Runs one scenario once, without the summary (for strace/perf).
const PROBE_VAR: &str = "IPCKIT_SYSV_BENCH_PROBE";

/// Message text length (short messages).
const MSG: usize = 64;
/// Text length of the long-message scenarios (unless [`LEN_VAR`] is set in
/// the bench's environment: 16..=8192).
const LONG: usize = 4096;
/// `msg_qbytes` of both queues (the kernel's default `MSGMNB`).
const QBYTES: usize = 16384;
/// Type-1 messages parked at the head of the queue in the selection scenario.
const PARKED: usize = 8;
/// First byte of a sender's last message.
const END: u8 = 0xEE;

/// How long each sender sends in one throughput round.
const SEND_TIME: Duration = Duration::from_millis(200);
/// Throughput rounds per scenario and implementation (interleaved). Each
/// round is a fresh queue and sender process, and the rate of one pinned
/// pair moves by +-30 % from round to round with where its lines land (as
/// the shared-memory floor does): 15 rounds make the median a property of
/// the code rather than of one draw.
const TPUT_ROUNDS: usize = 15;
/// Least duration of one round-trip batch.
const BATCH_TIME: Duration = Duration::from_millis(20);
/// Round-trip batches per scenario and implementation (interleaved).
const LAT_ROUNDS: usize = 25;
/// Longer than any scenario should take: then the watchdog removes its objects.
const HANG: Duration = Duration::from_secs(20);
/// How long a finished child gets to exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Kernel,
    Ipckit,
}

const IMPLS: [Impl; 2] = [Impl::Kernel, Impl::Ipckit];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Kernel => "kernel",
            Impl::Ipckit => "ipckit",
        }
    }
}

/// The throughput scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    One,
    Select,
    Four,
    /// 1->1 type 0 with long texts.
    Long,
    /// 4->1 type 0 with long texts (probe only).
    LongFour,
}

/// What a full run measures.
const FLOWS: [Flow; 4] = [Flow::One, Flow::Select, Flow::Four, Flow::Long];
/// What a probe may name.
const PROBE_FLOWS: [Flow; 5] = [Flow::One, Flow::Select, Flow::Four, Flow::Long, Flow::LongFour];

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::One => "1->1 type 0",
            Flow::Select => "1->1 type 2",
            Flow::Four => "4->1 type 0",
            Flow::Long => "1->1 long",
            Flow::LongFour => "4->1 long",
        }
    }

    fn probe_name(self) -> &'static str {
        match self {
            Flow::One => "tput1",
            Flow::Select => "tsel",
            Flow::Four => "tput4",
            Flow::Long => "tlong1",
            Flow::LongFour => "tlong4",
        }
    }

    fn senders(self) -> usize {
        if matches!(self, Flow::Four | Flow::LongFour) {
            4
        } else {
            1
        }
    }

    /// Text length: [`MSG`], or for the long flows [`LONG`] ([`LEN_VAR`] if
    /// set, at least 16: a sender numbers its messages).
    fn len(self) -> usize {
        match self {
            Flow::One | Flow::Select | Flow::Four => MSG,
            Flow::Long | Flow::LongFour => {
                std::env::var(LEN_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(LONG).clamp(16, 8192)
            }
        }
    }

    /// The ipckit/kernel throughput ratio aimed at.
    fn goal(self) -> f64 {
        match self {
            Flow::Long | Flow::LongFour => 1.0,
            _ => 10.0,
        }
    }

    /// (type sent, type received, messages parked at the head).
    fn types(self) -> (i64, i64, usize) {
        match self {
            Flow::One | Flow::Four | Flow::Long | Flow::LongFour => (1, 0, 0),
            Flow::Select => (2, 2, PARKED),
        }
    }
}

/// The round-trip scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ping {
    Queue,
    Sem,
}

impl Ping {
    fn name(self) -> &'static str {
        match self {
            Ping::Queue => "msgq round trip",
            Ping::Sem => "sem ping-pong",
        }
    }
}

// ---------------------------------------------------------------------------
// The two implementations behind one interface
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Fail {
    /// The object was removed (the normal end of an echo child; a watchdog
    /// removal for the parent).
    Removed,
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Removed => f.write_str("the object was removed"),
            Fail::Other(s) => f.write_str(s),
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Other(e.to_string())
    }
}

impl From<ipckit::Error> for Fail {
    fn from(e: ipckit::Error) -> Fail {
        Fail::Other(e.to_string())
    }
}

type R<T> = Result<T, Fail>;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A message as `msgsnd`/`msgrcv` read and write it: the type (a `long`),
/// then the text. The kernel's side sends and receives it in place; ipckit's
/// uses the text part, so neither side copies more than its API requires.
struct Msg(Vec<u8>);

/// Bytes before the text: the type.
const HDR: usize = std::mem::size_of::<libc::c_long>();

impl Msg {
    fn new(len: usize, fill: u8) -> Msg {
        let mut v = vec![fill; HDR + len];
        v[..HDR].fill(0);
        Msg(v)
    }

    fn len(&self) -> usize {
        self.0.len() - HDR
    }

    fn text(&self) -> &[u8] {
        &self.0[HDR..]
    }

    fn text_mut(&mut self) -> &mut [u8] {
        &mut self.0[HDR..]
    }
}

/// Blocking send and receive of one message of a fixed length.
trait Mq {
    fn send(&self, mtype: i64, msg: &mut Msg) -> R<()>;
    /// `mtype` selects as `msgrcv`'s `msgtyp` does; the message must fill `out`'s text.
    fn recv(&self, mtype: i64, out: &mut Msg) -> R<()>;
}

/// The kernel's queue, by id.
#[derive(Clone, Copy)]
struct KMq(i32);

impl Mq for KMq {
    fn send(&self, mtype: i64, msg: &mut Msg) -> R<()> {
        msg.0[..HDR].copy_from_slice(&(mtype as libc::c_long).to_ne_bytes());
        loop {
            // SAFETY: `msg` is a long followed by `msg.len()` bytes, as msgsnd reads.
            let r = unsafe { libc::msgsnd(self.0, msg.0.as_ptr().cast(), msg.len(), 0) };
            if r == 0 {
                return Ok(());
            }
            match errno() {
                libc::EINTR => {}
                libc::EIDRM | libc::EINVAL => return Err(Fail::Removed),
                e => return Err(Fail::Other(format!("msgsnd: {}", io::Error::from_raw_os_error(e)))),
            }
        }
    }

    fn recv(&self, mtype: i64, out: &mut Msg) -> R<()> {
        let len = out.len();
        loop {
            // SAFETY: `out` has room for a long and `len` bytes, as msgrcv writes.
            let r = unsafe { libc::msgrcv(self.0, out.0.as_mut_ptr().cast(), len, mtype as libc::c_long, 0) };
            if r == len as isize {
                return Ok(());
            }
            if r >= 0 {
                return Err(Fail::Other(format!("msgrcv: {r} bytes, not {len}")));
            }
            match errno() {
                libc::EINTR => {}
                libc::EIDRM | libc::EINVAL => return Err(Fail::Removed),
                e => return Err(Fail::Other(format!("msgrcv: {}", io::Error::from_raw_os_error(e)))),
            }
        }
    }
}

impl Mq for MessageQueue {
    fn send(&self, mtype: i64, msg: &mut Msg) -> R<()> {
        MessageQueue::send(self, mtype, msg.text()).map_err(|e| {
            if e.is_disconnected() {
                Fail::Removed
            } else {
                Fail::Other(format!("send: {e}"))
            }
        })
    }

    fn recv(&self, mtype: i64, out: &mut Msg) -> R<()> {
        // Into the caller's buffer, as msgrcv does (no allocation).
        let len = out.len();
        match MessageQueue::recv_into(self, Select::of(mtype), out.text_mut()) {
            Ok((_, n)) if n == len => Ok(()),
            Ok((_, n)) => Err(Fail::Other(format!("recv: {n} bytes, not {len}"))),
            Err(RecvError::Disconnected) => Err(Fail::Removed),
            Err(e) => Err(Fail::Other(format!("recv: {e}"))),
        }
    }
}

/// One semaphore operation, blocking.
trait Sem {
    fn op(&self, index: u16, op: i16) -> R<()>;
}

/// The kernel's semaphore set, by id.
#[derive(Clone, Copy)]
struct KSem(i32);

impl Sem for KSem {
    fn op(&self, index: u16, op: i16) -> R<()> {
        let mut b = libc::sembuf { sem_num: index, sem_op: op, sem_flg: 0 };
        loop {
            // SAFETY: one valid sembuf.
            if unsafe { libc::semop(self.0, &mut b, 1) } == 0 {
                return Ok(());
            }
            match errno() {
                libc::EINTR => {}
                libc::EIDRM | libc::EINVAL => return Err(Fail::Removed),
                e => return Err(Fail::Other(format!("semop: {}", io::Error::from_raw_os_error(e)))),
            }
        }
    }
}

impl Sem for SemaphoreSet {
    fn op(&self, index: u16, op: i16) -> R<()> {
        match SemaphoreSet::op(self, &[SemOp::new(usize::from(index), op)]) {
            Ok(()) => Ok(()),
            Err(SemError::Removed) => Err(Fail::Removed),
            Err(e) => Err(Fail::Other(format!("semaphore op: {e}"))),
        }
    }
}

// ---------------------------------------------------------------------------
// Owned objects: created by the parent, removed on drop
// ---------------------------------------------------------------------------

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("bench-sysv-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn kernel_msgq_remove(id: i32) {
    // SAFETY: IPC_RMID ignores the buffer argument.
    unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

fn kernel_sem_remove(id: i32) {
    // SAFETY: IPC_RMID takes no fourth argument.
    unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
}

/// Removes an ipckit object whose removal may already have happened (watchdog).
fn quiet<E: std::fmt::Display>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        let s = e.to_string();
        if !s.contains("removed") && !s.contains("not found") && !s.contains("NotFound") {
            eprintln!("removing {what}: {s}");
        }
    }
}

/// A queue of either kind.
enum Queue {
    Kernel(i32),
    Ipckit(Option<MessageQueue>),
}

impl Queue {
    fn create(imp: Impl, tag: &str) -> R<Queue> {
        match imp {
            Impl::Kernel => {
                // SAFETY: msgget takes integers; IPC_PRIVATE makes a fresh queue.
                let id = unsafe { libc::msgget(libc::IPC_PRIVATE, 0o600 | libc::IPC_CREAT) };
                if id < 0 {
                    return Err(Fail::Other(format!("msgget: {}", io::Error::last_os_error())));
                }
                let q = Queue::Kernel(id);
                // SAFETY: msqid_ds is plain data; all-zero is valid and msgctl fills it.
                let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: `ds` is a valid, writable msqid_ds.
                if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } != 0 {
                    return Err(Fail::Other(format!("IPC_STAT: {}", io::Error::last_os_error())));
                }
                ds.msg_qbytes = QBYTES as _;
                // SAFETY: `ds` came from IPC_STAT.
                if unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } != 0 {
                    return Err(Fail::Other(format!("IPC_SET: {}", io::Error::last_os_error())));
                }
                Ok(q)
            }
            Impl::Ipckit => {
                let config =
                    QueueConfig { capacity: QBYTES, max_message: 8192, max_capacity: QBYTES, mode: 0o600 };
                Ok(Queue::Ipckit(Some(MessageQueue::create(&unique(tag), config)?)))
            }
        }
    }

    /// What a child needs to find the queue.
    fn env(&self) -> String {
        match self {
            Queue::Kernel(id) => id.to_string(),
            Queue::Ipckit(q) => q.as_ref().expect("not removed").name().to_owned(),
        }
    }

    /// Messages in the queue.
    fn messages(&self) -> R<usize> {
        match self {
            Queue::Kernel(id) => {
                // SAFETY: as in `create`.
                let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
                // SAFETY: `ds` is a valid, writable msqid_ds.
                if unsafe { libc::msgctl(*id, libc::IPC_STAT, &mut ds) } != 0 {
                    return Err(Fail::Other(format!("IPC_STAT: {}", io::Error::last_os_error())));
                }
                Ok(ds.msg_qnum as usize)
            }
            Queue::Ipckit(q) => Ok(q.as_ref().expect("not removed").stat()?.messages),
        }
    }

    /// For the watchdog: removes the queue from another thread.
    fn remover(&self) -> Box<dyn FnOnce() + Send> {
        match self {
            Queue::Kernel(id) => {
                let id = *id;
                Box::new(move || kernel_msgq_remove(id))
            }
            Queue::Ipckit(q) => {
                let name = q.as_ref().expect("not removed").name().to_owned();
                Box::new(move || quiet(&name, MessageQueue::remove_name(&name)))
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        match self {
            Queue::Kernel(id) => kernel_msgq_remove(*id),
            Queue::Ipckit(q) => {
                if let Some(q) = q.take() {
                    let name = q.name().to_owned();
                    quiet(&name, q.remove());
                }
            }
        }
    }
}

/// Runs `$body` with `$q` bound to the queue as a concrete [`Mq`].
macro_rules! with_q {
    ($queue:expr, $q:ident => $body:expr) => {
        match $queue {
            Queue::Kernel(id) => {
                let $q = &KMq(*id);
                $body
            }
            Queue::Ipckit(q) => {
                let $q: &MessageQueue = q.as_ref().expect("not removed");
                $body
            }
        }
    };
}

/// A set of two semaphores (both 0) of either kind.
enum SemSet {
    Kernel(i32),
    Ipckit(Option<SemaphoreSet>),
}

impl SemSet {
    fn create(imp: Impl, tag: &str) -> R<SemSet> {
        match imp {
            Impl::Kernel => {
                // SAFETY: semget takes integers; a new Linux set starts at zero.
                let id = unsafe { libc::semget(libc::IPC_PRIVATE, 2, 0o600 | libc::IPC_CREAT) };
                if id < 0 {
                    return Err(Fail::Other(format!("semget: {}", io::Error::last_os_error())));
                }
                Ok(SemSet::Kernel(id))
            }
            Impl::Ipckit => Ok(SemSet::Ipckit(Some(SemaphoreSet::create(&unique(tag), 2, 0, 0o600)?))),
        }
    }

    fn env(&self) -> String {
        match self {
            SemSet::Kernel(id) => id.to_string(),
            SemSet::Ipckit(s) => s.as_ref().expect("not removed").name().to_owned(),
        }
    }

    fn remover(&self) -> Box<dyn FnOnce() + Send> {
        match self {
            SemSet::Kernel(id) => {
                let id = *id;
                Box::new(move || kernel_sem_remove(id))
            }
            SemSet::Ipckit(s) => {
                let name = s.as_ref().expect("not removed").name().to_owned();
                Box::new(move || quiet(&name, SemaphoreSet::remove_name(&name)))
            }
        }
    }
}

impl Drop for SemSet {
    fn drop(&mut self) {
        match self {
            SemSet::Kernel(id) => kernel_sem_remove(*id),
            SemSet::Ipckit(s) => {
                if let Some(s) = s.take() {
                    let name = s.name().to_owned();
                    quiet(&name, s.remove());
                }
            }
        }
    }
}

macro_rules! with_sem {
    ($set:expr, $s:ident => $body:expr) => {
        match $set {
            SemSet::Kernel(id) => {
                let $s = &KSem(*id);
                $body
            }
            SemSet::Ipckit(s) => {
                let $s: &SemaphoreSet = s.as_ref().expect("not removed");
                $body
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Child processes, reaped (killed after a grace period if need be) on drop.
#[derive(Default)]
struct Kids(Vec<Kid>);

impl Kids {
    /// Spawns one child per entry of `cpus` and waits until each says it is ready.
    fn spawn(
        &mut self,
        role: &str,
        obj: &str,
        mtype: i64,
        len: usize,
        ms: u64,
        cpus: &[Option<usize>],
    ) -> R<()> {
        let exe = std::env::current_exe()?;
        for cpu in cpus {
            let mut cmd = Command::new(&exe);
            cmd.env(ROLE_VAR, role)
                .env(OBJ_VAR, obj)
                .env(MTYPE_VAR, mtype.to_string())
                .env(LEN_VAR, len.to_string())
                .env(MS_VAR, ms.to_string())
                .env(PARENT_VAR, std::process::id().to_string())
                .env_remove(PROBE_VAR)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            common::set_cpu_env(&mut cmd, CPU_VAR, *cpu);
            let mut child = cmd.spawn()?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            self.0.push(Kid { child, stdin });
            let mut line = String::new();
            BufReader::new(stdout.expect("piped stdout")).read_line(&mut line)?;
            if line.trim() != "ready" {
                return Err(Fail::Other(format!("child {role} did not get ready (said {line:?})")));
            }
        }
        Ok(())
    }

    /// Tells every child to start (closes their stdin).
    fn go(&mut self) {
        for k in &mut self.0 {
            drop(k.stdin.take());
        }
    }

    /// Waits for every child to exit; kills those that do not within the grace period.
    fn reap(&mut self) -> R<()> {
        self.go();
        let mut bad = Vec::new();
        let deadline = Instant::now() + EXIT_GRACE;
        for mut k in self.0.drain(..) {
            match common::wait_or_kill(&mut k.child, deadline, Duration::from_millis(1)) {
                Reaped::Exited(status) if !status.success() => {
                    bad.push(format!("child {} exited with {status}", k.child.id()))
                }
                Reaped::Exited(_) => {}
                Reaped::Killed => bad.push(format!("child {} did not exit: killed", k.child.id())),
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Fail::Other(bad.join("; ")))
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        if let Err(e) = self.reap() {
            eprintln!("{e}");
        }
    }
}

/// Removes a hung scenario's objects, so every blocked party wakes with an error.
#[derive(Clone)]
struct Watchdog {
    armed: Arc<Mutex<Option<Armed>>>,
}

struct Armed {
    at: Instant,
    what: String,
    removers: Vec<Box<dyn FnOnce() + Send>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let dog = Watchdog { armed: Arc::new(Mutex::new(None)) };
        let d = dog.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            let mut g = d.armed.lock().unwrap_or_else(|e| e.into_inner());
            if g.as_ref().is_some_and(|a| Instant::now() >= a.at) {
                let a = g.take().expect("armed");
                drop(g);
                eprintln!("watchdog: {} is hung after {HANG:?}: removing its objects", a.what);
                for r in a.removers {
                    r();
                }
            }
        });
        dog
    }

    fn arm(&self, what: String, removers: Vec<Box<dyn FnOnce() + Send>>) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Armed { at: Instant::now() + HANG, what, removers });
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn child_main(role: &str) -> R<()> {
    // Die with the parent, so nobody is left blocked on a queue forever.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let parent: u32 = var(PARENT_VAR)?;
    // SAFETY: getppid has no arguments.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(Fail::Other("the parent is gone".into()));
    }
    if let Ok(cpu) = std::env::var(CPU_VAR) {
        let cpu = cpu.parse().map_err(|_| Fail::Other(format!("{CPU_VAR}={cpu}")))?;
        rustix::thread::sched_setaffinity(None, &one_cpu(cpu)).map_err(io::Error::from)?;
    }
    let obj = std::env::var(OBJ_VAR).map_err(|_| Fail::Other(format!("{OBJ_VAR} unset")))?;
    let mtype: i64 = var(MTYPE_VAR)?;
    let len: usize = var(LEN_VAR)?;
    let send_for = Duration::from_millis(var(MS_VAR)?);
    let id = || obj.parse::<i32>().map_err(|_| Fail::Other(format!("{OBJ_VAR}={obj}")));
    match role {
        "k-send" => {
            let q = KMq(id()?);
            ready_then_go()?;
            send_stream(&q, mtype, len, send_for)
        }
        "i-send" => {
            let q = MessageQueue::open(&obj, Access::Write)?;
            ready_then_go()?;
            send_stream(&q, mtype, len, send_for)
        }
        "k-echo" => {
            let q = KMq(id()?);
            ready_then_go()?;
            echo(&q)
        }
        "i-echo" => {
            let q = MessageQueue::open(&obj, Access::ReadWrite)?;
            ready_then_go()?;
            echo(&q)
        }
        "k-sem" => {
            let s = KSem(id()?);
            ready_then_go()?;
            sem_echo(&s)
        }
        "i-sem" => {
            let s = SemaphoreSet::open(&obj, Access::ReadWrite)?;
            ready_then_go()?;
            sem_echo(&s)
        }
        other => Err(Fail::Other(format!("unknown role {other:?}"))),
    }
}

fn var<T: std::str::FromStr>(name: &str) -> R<T> {
    let v = std::env::var(name).map_err(|_| Fail::Other(format!("{name} unset")))?;
    v.parse().map_err(|_| Fail::Other(format!("{name}={v}: not a number")))
}

/// Says "ready" on stdout, then waits until the parent closes our stdin.
fn ready_then_go() -> R<()> {
    common::say_ready()?;
    let mut sink = Vec::new();
    io::stdin().lock().read_to_end(&mut sink)?;
    Ok(())
}

/// A sender: 64-byte messages of type `mtype` for `send_for`, then one end marker.
fn send_stream<Q: Mq>(q: &Q, mtype: i64, len: usize, send_for: Duration) -> R<()> {
    let mut msg = Msg::new(len, 0x5a);
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..64 {
            msg.text_mut()[8..16].copy_from_slice(&n.to_ne_bytes());
            q.send(mtype, &mut msg)?;
            n += 1;
        }
        if t0.elapsed() >= send_for {
            break;
        }
    }
    msg.text_mut()[0] = END;
    q.send(mtype, &mut msg)
}

/// The echo child: takes type-1 requests, answers each with type 2, until the queue goes.
fn echo<Q: Mq>(q: &Q) -> R<()> {
    let mut buf = Msg::new(MSG, 0);
    loop {
        match q.recv(1, &mut buf).and_then(|()| q.send(2, &mut buf)) {
            Ok(()) => {}
            Err(Fail::Removed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The semaphore child: P(0) then V(1), until the set goes.
fn sem_echo<S: Sem>(s: &S) -> R<()> {
    loop {
        match s.op(0, -1).and_then(|()| s.op(1, 1)) {
            Ok(()) => {}
            Err(Fail::Removed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------

/// Voluntary + involuntary context switches of `who` so far.
fn context_switches(who: i32) -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(who, &mut ru) };
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// The receiving end of a throughput round, measured from the first message.
struct Stream {
    messages: u64,
    elapsed: Duration,
    /// The receiver's context switches.
    csw: u64,
}

fn receive_stream<Q: Mq>(q: &Q, mtype: i64, len: usize, senders: usize) -> R<Stream> {
    let mut msg = Msg::new(len, 0);
    q.recv(mtype, &mut msg)?;
    let t0 = Instant::now();
    let csw0 = context_switches(libc::RUSAGE_THREAD);
    let mut ends = usize::from(msg.text()[0] == END);
    let mut next = 1u64;
    let mut messages = 0u64;
    while ends < senders {
        q.recv(mtype, &mut msg)?;
        let buf = msg.text();
        if buf[0] == END {
            ends += 1;
            continue;
        }
        messages += 1;
        if senders == 1 {
            // One sender: the queue is FIFO per type, so the numbers follow each other.
            let seq = u64::from_ne_bytes(buf[8..16].try_into().expect("8 bytes"));
            if seq != next {
                return Err(Fail::Other(format!("message {seq} arrived where {next} was due")));
            }
            next += 1;
        }
    }
    Ok(Stream { messages, elapsed: t0.elapsed(), csw: context_switches(libc::RUSAGE_THREAD) - csw0 })
}

/// One throughput round's result.
#[derive(Clone, Copy, Debug)]
struct Tput {
    rate: f64,
    messages: u64,
    rcv_csw: f64,
    snd_csw: f64,
}

fn throughput(imp: Impl, flow: Flow, place: Placement, send_for: Duration, dog: &Watchdog) -> R<Tput> {
    /// Field order matters: the queue is removed (waking any blocked child) before the children are reaped.
    struct Run {
        queue: Queue,
        kids: Kids,
    }
    let (send_type, recv_type, parked) = flow.types();
    let mut run = Run { queue: Queue::create(imp, "tput")?, kids: Kids::default() };
    with_q!(&run.queue, q => {
        for _ in 0..parked {
            Mq::send(q, 1, &mut Msg::new(flow.len(), 0x11))?;
        }
    });
    let role = match imp {
        Impl::Kernel => "k-send",
        Impl::Ipckit => "i-send",
    };
    let cpus = vec![place.child_cpu(); flow.senders()];
    run.kids.spawn(role, &run.queue.env(), send_type, flow.len(), send_for.as_millis() as u64, &cpus)?;
    let what = format!("{} {} {} throughput", flow.name(), imp.name(), place.name());
    dog.arm(what, vec![run.queue.remover()]);
    let children0 = context_switches(libc::RUSAGE_CHILDREN);
    run.kids.go();
    let got = with_q!(&run.queue, q => receive_stream(q, recv_type, flow.len(), flow.senders()));
    dog.disarm();
    let s = got?;
    run.kids.reap()?;
    let snd = context_switches(libc::RUSAGE_CHILDREN) - children0;
    let left = run.queue.messages()?;
    if left != parked {
        return Err(Fail::Other(format!("{left} messages left in the queue, {parked} expected")));
    }
    let n = s.messages.max(1) as f64;
    Ok(Tput {
        rate: s.messages as f64 / s.elapsed.as_secs_f64(),
        messages: s.messages,
        rcv_csw: s.csw as f64 / n,
        snd_csw: snd as f64 / n,
    })
}

/// A ping-pong partner: a child and the object between it and the parent.
enum Partner {
    Queue { queue: Queue, kids: Kids },
    Sem { set: SemSet, kids: Kids },
}

impl Partner {
    fn start(ping: Ping, imp: Impl, place: Placement) -> R<Partner> {
        let cpus = [place.child_cpu()];
        let mut p = match ping {
            Ping::Queue => Partner::Queue { queue: Queue::create(imp, "rtt")?, kids: Kids::default() },
            Ping::Sem => Partner::Sem { set: SemSet::create(imp, "sem")?, kids: Kids::default() },
        };
        let role = match (ping, imp) {
            (Ping::Queue, Impl::Kernel) => "k-echo",
            (Ping::Queue, Impl::Ipckit) => "i-echo",
            (Ping::Sem, Impl::Kernel) => "k-sem",
            (Ping::Sem, Impl::Ipckit) => "i-sem",
        };
        match &mut p {
            Partner::Queue { queue, kids } => kids.spawn(role, &queue.env(), 0, MSG, 0, &cpus)?,
            Partner::Sem { set, kids } => kids.spawn(role, &set.env(), 0, MSG, 0, &cpus)?,
        }
        match &mut p {
            Partner::Queue { kids, .. } | Partner::Sem { kids, .. } => kids.go(),
        }
        Ok(p)
    }

    fn remover(&self) -> Box<dyn FnOnce() + Send> {
        match self {
            Partner::Queue { queue, .. } => queue.remover(),
            Partner::Sem { set, .. } => set.remover(),
        }
    }

    /// Round trips for at least `min` (or exactly `count`, if given): (round trips, time).
    fn batch(&self, min: Duration, count: Option<u64>) -> R<(u64, Duration)> {
        match self {
            Partner::Queue { queue, .. } => with_q!(queue, q => timed(min, count, || {
                let mut req = Msg::new(MSG, 0x42);
                let mut reply = Msg::new(MSG, 0);
                Mq::send(q, 1, &mut req)?;
                Mq::recv(q, 2, &mut reply)?;
                if reply.text() != req.text() {
                    return Err(Fail::Other("the reply is not the request".into()));
                }
                Ok(())
            })),
            Partner::Sem { set, .. } => with_sem!(set, s => timed(min, count, || {
                Sem::op(s, 0, 1)?;
                Sem::op(s, 1, -1)
            })),
        }
    }

    /// Removes the object (the child wakes and exits), then reaps the child.
    fn finish(self) -> R<()> {
        match self {
            Partner::Queue { queue, mut kids } => {
                drop(queue);
                kids.reap()
            }
            Partner::Sem { set, mut kids } => {
                drop(set);
                kids.reap()
            }
        }
    }
}

fn timed(min: Duration, count: Option<u64>, mut one: impl FnMut() -> R<()>) -> R<(u64, Duration)> {
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..8 {
            one()?;
        }
        n += 8;
        let e = t0.elapsed();
        match count {
            Some(c) if n >= c => return Ok((n, e)),
            None if e >= min => return Ok((n, e)),
            _ => {}
        }
    }
}

/// Per implementation: median round trip (ns); and the median per-round ratio kernel/ipckit.
struct PingRow {
    ping: Ping,
    place: Placement,
    median_ns: [f64; 2],
    paired: f64,
}

fn ping_scenario(ping: Ping, place: Placement, rounds: usize, batch: Duration, dog: &Watchdog) -> R<PingRow> {
    let partners = [Partner::start(ping, Impl::Kernel, place)?, Partner::start(ping, Impl::Ipckit, place)?];
    let what = format!("{} {}", ping.name(), place.name());
    dog.arm(what, partners.iter().map(Partner::remover).collect());
    let measured = (|| -> R<[Vec<f64>; 2]> {
        for p in &partners {
            p.batch(batch * 2, None)?; // warm-up
        }
        let mut means: [Vec<f64>; 2] = Default::default();
        for round in 0..rounds {
            for k in 0..2 {
                let i = (round + k) % 2;
                let (n, e) = partners[i].batch(batch, None)?;
                means[i].push(e.as_nanos() as f64 / n as f64);
            }
        }
        Ok(means)
    })();
    dog.disarm();
    let mut reaped = Ok(());
    for p in partners {
        if let Err(e) = p.finish() {
            reaped = Err(e);
        }
    }
    let means = measured?;
    reaped?;
    let ratios: Vec<f64> = means[0].iter().zip(&means[1]).map(|(k, i)| k / i).collect();
    Ok(PingRow { ping, place, median_ns: [median(&means[0]), median(&means[1])], paired: median(&ratios) })
}

struct TputRow {
    flow: Flow,
    place: Placement,
    /// Per implementation: median rate, median context switches per message (receiver, senders).
    rate: [f64; 2],
    rcv_csw: [f64; 2],
    snd_csw: [f64; 2],
    /// Median over rounds of ipckit rate / kernel rate.
    paired: f64,
}

fn tput_scenario(
    flow: Flow,
    place: Placement,
    rounds: usize,
    send_for: Duration,
    dog: &Watchdog,
) -> R<TputRow> {
    let mut runs: [Vec<Tput>; 2] = Default::default();
    for round in 0..rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            runs[i].push(throughput(IMPLS[i], flow, place, send_for, dog)?);
        }
    }
    let pick = |i: usize, f: fn(&Tput) -> f64| median(&runs[i].iter().map(f).collect::<Vec<_>>());
    let ratios: Vec<f64> = runs[1].iter().zip(&runs[0]).map(|(i, k)| i.rate / k.rate).collect();
    Ok(TputRow {
        flow,
        place,
        rate: [pick(0, |t| t.rate), pick(1, |t| t.rate)],
        rcv_csw: [pick(0, |t| t.rcv_csw), pick(1, |t| t.rcv_csw)],
        snd_csw: [pick(0, |t| t.snd_csw), pick(1, |t| t.snd_csw)],
        paired: median(&ratios),
    })
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        common::exit_child("sysv bench child", &role, child_main(&role));
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let original = common::original_affinity();
    let cpus = common::allowed_cpus(&original);
    let placements = common::placements(&original, "the pinned scenarios");
    let dog = Watchdog::start();

    if let Ok(probe) = std::env::var(PROBE_VAR) {
        probe_main(&probe, &placements, &original, &dog);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then
    // every scenario runs once, briefly, as a smoke test.
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let (tput_rounds, send_for, lat_rounds, batch) = if full {
        (TPUT_ROUNDS, SEND_TIME, LAT_ROUNDS, BATCH_TIME)
    } else {
        (1, Duration::from_millis(20), 2, Duration::from_millis(5))
    };
    let started = Instant::now();
    let load0 = common::loadavg();
    eprintln!(
        "sysv bench: {} CPU(s) allowed {cpus:?}; {tput_rounds} throughput rounds of {send_for:?} and \
         {lat_rounds} round-trip batches of >= {batch:?} per scenario and implementation; loadavg {load0}",
        cpus.len()
    );

    let mut failed = Vec::new();
    let mut tput_rows = Vec::new();
    // `IPCKIT_SYSV_BENCH_ONLY=ping`: the round trips only (about 7 s).
    let pings_only = std::env::var("IPCKIT_SYSV_BENCH_ONLY").is_ok_and(|v| v == "ping");
    for flow in FLOWS.into_iter().filter(|_| !pings_only) {
        for &place in &placements {
            common::place_self(place, &original);
            // The long rows are an addition: fewer rounds keep the run short.
            let rounds = if flow == Flow::Long { tput_rounds.min(5) } else { tput_rounds };
            match tput_scenario(flow, place, rounds, send_for, &dog) {
                Ok(row) => tput_rows.push(row),
                Err(e) => failed.push(format!("{} {}: {e}", flow.name(), place.name())),
            }
        }
    }
    let mut ping_rows = Vec::new();
    for ping in [Ping::Queue, Ping::Sem] {
        for &place in &placements {
            common::place_self(place, &original);
            match ping_scenario(ping, place, lat_rounds, batch, &dog) {
                Ok(row) => ping_rows.push(row),
                Err(e) => failed.push(format!("{} {}: {e}", ping.name(), place.name())),
            }
        }
    }
    common::restore_affinity(&original);

    println!();
    println!(
        "System V IPC between processes, kernel vs ipckit: 64-byte messages ({} bytes in `1->1 long`), \
         msg_qbytes {QBYTES} on both, blocking calls (run took {:.1?}; loadavg before {load0}, after {})",
        Flow::Long.len(),
        started.elapsed(),
        common::loadavg()
    );
    println!();
    println!(
        "Throughput, messages/s (median of {tput_rounds} rounds of ~{send_for:?}, kernel and ipckit interleaved)"
    );
    println!(
        "{:<12} {:<9}|{:>12} {:>12}|{:>8} {:>8}| {:<8}|{:>14} {:>14}",
        "scenario", "cpus", "kernel", "ipckit", "i/k", "pair i/k", "goal", "csw/msg k r/s", "csw/msg i r/s"
    );
    for r in &tput_rows {
        let ratio = r.rate[1] / r.rate[0];
        println!(
            "{:<12} {:<9}|{:>12.0} {:>12.0}|{:>8.2} {:>8.2}| {:<8}|{:>14} {:>14}",
            r.flow.name(),
            r.place.name(),
            r.rate[0],
            r.rate[1],
            ratio,
            r.paired,
            if ratio >= r.flow.goal() { "met" } else { "MISSED" },
            format!("{:.2}/{:.2}", r.rcv_csw[0], r.snd_csw[0]),
            format!("{:.2}/{:.2}", r.rcv_csw[1], r.snd_csw[1]),
        );
    }
    println!(
        "1->1 type 2: {PARKED} type-1 messages parked at the head, sender type 2, receiver msgtyp 2. \
         i/k: ipckit/kernel rate (x faster); pair: median of per-round ratios; goal: i/k >= 10 \
         (>= 1 with long texts); \
         csw/msg r/s: context switches per message of the receiver / of all senders"
    );
    println!();
    println!(
        "Round trips, us (median of {lat_rounds} batches of >= {batch:?}, kernel and ipckit interleaved)"
    );
    println!(
        "{:<16} {:<9}|{:>10} {:>10}|{:>8} {:>8}|{:>12} {:>12}",
        "scenario", "cpus", "kernel us", "ipckit us", "k/i", "pair k/i", "kernel rt/s", "ipckit rt/s"
    );
    for r in &ping_rows {
        println!(
            "{:<16} {:<9}|{:>10.2} {:>10.2}|{:>8.2} {:>8.2}|{:>12.0} {:>12.0}",
            r.ping.name(),
            r.place.name(),
            r.median_ns[0] / 1e3,
            r.median_ns[1] / 1e3,
            r.median_ns[0] / r.median_ns[1],
            r.paired,
            1e9 / r.median_ns[0],
            1e9 / r.median_ns[1],
        );
    }
    println!(
        "msgq round trip: request type 1, reply type 2, same queue. sem ping-pong: parent V(0) P(1), \
         child P(0) V(1). k/i: kernel time / ipckit time (x faster)"
    );
    if !failed.is_empty() {
        eprintln!("\nFAILED scenarios:");
        for f in &failed {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}

/// `IPCKIT_SYSV_BENCH_PROBE=<tput1|tsel|tput4|tlong1|tlong4|rtt|sem>:<kernel|ipckit>[:placement[:N]]`.
fn probe_main(spec: &str, placements: &[Placement], original: &CpuSet, dog: &Watchdog) {
    let mut parts = spec.split(':');
    let kind = parts.next().unwrap_or("");
    let imp = match parts.next() {
        Some("kernel") => Impl::Kernel,
        Some("ipckit") => Impl::Ipckit,
        other => panic!("{PROBE_VAR}: unknown implementation {other:?}"),
    };
    let place_name = parts.next().unwrap_or("unpinned");
    let place = common::find_placement(placements, place_name, PROBE_VAR);
    let n: Option<u64> = parts.next().map(|s| s.parse().expect("a number"));
    common::place_self(place, original);
    if let Some(flow) = PROBE_FLOWS.iter().find(|f| f.probe_name() == kind) {
        let send_for = Duration::from_millis(n.unwrap_or(1000));
        match throughput(imp, *flow, place, send_for, dog) {
            Ok(t) => eprintln!(
                "probe {spec}: {} messages, {:.0} messages/s, context switches per message: \
                 receiver {:.3}, senders {:.3}",
                t.messages, t.rate, t.rcv_csw, t.snd_csw
            ),
            Err(e) => eprintln!("probe {spec}: failed: {e}"),
        }
        return;
    }
    let ping = match kind {
        "rtt" => Ping::Queue,
        "sem" => Ping::Sem,
        other => panic!("{PROBE_VAR}: unknown scenario {other:?}"),
    };
    let count = n.unwrap_or(20_000);
    let partner = Partner::start(ping, imp, place).expect("start the partner");
    dog.arm(format!("probe {spec}"), vec![partner.remover()]);
    let got = partner.batch(Duration::ZERO, Some(count));
    dog.disarm();
    if let Err(e) = partner.finish() {
        eprintln!("probe {spec}: {e}");
    }
    match got {
        Ok((n, e)) => {
            eprintln!("probe {spec}: {n} round trips, {:.2} us each", e.as_nanos() as f64 / n as f64 / 1e3)
        }
        Err(e) => eprintln!("probe {spec}: failed: {e}"),
    }
}
