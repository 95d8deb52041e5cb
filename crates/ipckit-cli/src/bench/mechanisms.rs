//! The measured mechanisms: the parent (timing) end of each, and the child
//! (answering) end run by `ipckit __bench-child <mechanism> ...`.
//!
//! Protocol, the same for every mechanism that carries bytes: the first byte
//! of a message is a tag. [`ECHO`] asks the child to send the message back
//! (a round trip); [`SINK`] asks for nothing (one-way throughput). A stream
//! of sink messages ends with one echo message, so the parent knows every
//! earlier message was taken. Mechanisms without a payload (the floors,
//! events, eventfd) measure round trips only. A child lives until the parent
//! kills it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ipckit::endpoint::{Cap, Endpoint, Rights};
use ipckit::event::{Event, EventMode};
use ipckit::naming::{EmbeddedServer, NameClient, Policy, ServerConfig};
use ipckit::shm::channel::{Config, ShmChannel, ShmReceiver, ShmSender};
use ipckit::shm::rpc::{RpcClient, RpcServer};
use ipckit::shm::{LoanPool, Offset, Segment, Token, WaitMode};
use ipckit::signal::{Signals, SIGUSR1, SIGUSR2};
use ipckit::sysv::{MessageQueue, QueueConfig, Select, SemOp, SemaphoreSet};
use ipckit::{spawn, Connection, SocketKind};
use rustix::thread::futex;

use super::raw::{posix_mq, raw_sig, sysv_raw, sysv_sem};
use crate::error::{fail, Context, Result};

/// Tag: send this message back.
pub const ECHO: u8 = 1;
/// Tag: take this message, send nothing back.
pub const SINK: u8 = 0;

/// How long any single wait of the parent or a child may take.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How a receiver learns of a message: the class whose floor it is compared to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Busy-polls memory.
    Polling,
    /// Sleeps in the kernel until woken.
    Blocking,
    /// In-process memory copy (the bandwidth ceiling).
    Memory,
}

impl Class {
    /// The class as written in the outputs.
    pub fn name(self) -> &'static str {
        match self {
            Class::Polling => "polling",
            Class::Blocking => "blocking",
            Class::Memory => "memory",
        }
    }
}

/// One measured mechanism.
#[derive(Clone, Copy, Debug)]
pub struct Mechanism {
    /// Its name (the `--filter` matches it).
    pub name: &'static str,
    /// Polling or blocking.
    pub class: Class,
    /// The largest message it is measured with.
    pub max_size: usize,
    /// Whether round-trip latency is measured.
    pub latency: bool,
    /// Whether one-way throughput is measured.
    pub throughput: bool,
    /// A line on what exactly is measured.
    pub what: &'static str,
}

const MIB: usize = 1 << 20;

/// Every mechanism, in the order they run: the floors first, then each raw
/// kernel primitive right before the ipckit mechanisms compared with it.
pub const ALL: &[Mechanism] = &[
    m("floor-spin", Class::Polling, 8, true, false, "busy-spin ping-pong on one shared cache line"),
    m("floor-futex", Class::Blocking, 8, true, false, "futex wait/wake ping-pong on shared words"),
    m("raw-pipe", Class::Blocking, MIB, true, true, "two pipe(2)s, read/write of fixed-size messages"),
    m("ipckit-pipe", Class::Blocking, MIB, true, true, "ipckit::pipe::duplex Connection send/recv"),
    m("ipckit-fifo", Class::Blocking, MIB, true, true, "two ipckit FIFOs (named pipes), framed send/recv"),
    m("raw-socketpair", Class::Blocking, MIB, true, true, "socketpair(AF_UNIX, SOCK_STREAM), fixed size"),
    m("ipckit-unix-stream", Class::Blocking, MIB, true, true, "Connection::pair(Stream) send/recv"),
    // A seqpacket datagram must fit the socket's send buffer (~208 KiB by default).
    m(
        "raw-seqpacket",
        Class::Blocking,
        65536,
        true,
        true,
        "socketpair(AF_UNIX, SOCK_SEQPACKET), one send/recv per message",
    ),
    m("ipckit-seqpacket", Class::Blocking, 65536, true, true, "Connection::pair(SeqPacket) send/recv"),
    m("raw-tcp", Class::Blocking, MIB, true, true, "TCP over 127.0.0.1, TCP_NODELAY, fixed size"),
    m(
        "ipckit-endpoint",
        Class::Blocking,
        MIB,
        true,
        false,
        "microkernel endpoint: Cap::call with a one-shot reply capability, Endpoint::reply_recv",
    ),
    m(
        "ipckit-shm-rpc-spin",
        Class::Polling,
        MIB,
        true,
        false,
        "shm two-slot RpcClient/RpcServer, WaitMode::Spin",
    ),
    m("ipckit-shm-rpc-block", Class::Blocking, MIB, true, false, "shm two-slot RPC, WaitMode::Block"),
    m(
        "ipckit-shm-rpc-loan",
        Class::Polling,
        MIB,
        true,
        false,
        "shm two-slot RPC in place (loan / recv_view / reply_with / call_view), WaitMode::Spin",
    ),
    m("ipckit-shm-ring-spin", Class::Polling, MIB, true, true, "two SPSC ShmChannels, WaitMode::Spin"),
    m("ipckit-shm-ring-block", Class::Blocking, MIB, true, true, "two SPSC ShmChannels, WaitMode::Block"),
    m(
        "ipckit-loan",
        Class::Blocking,
        MIB,
        true,
        true,
        "LoanPool zero-copy loans, 12-byte tokens on blocking shm rings",
    ),
    m("raw-eventfd", Class::Blocking, 8, true, false, "two eventfds, write/read of the counter"),
    m("ipckit-event", Class::Blocking, 8, true, false, "two auto-reset ipckit Events, notify/wait"),
    m(
        "raw-sysv-sem",
        Class::Blocking,
        8,
        true,
        false,
        "semget/semop via libc, set of 2: V(0) P(1) ping-pong",
    ),
    m("ipckit-semaphore", Class::Blocking, 8, true, false, "ipckit SemaphoreSet of 2: V(0) P(1) ping-pong"),
    m("raw-sysv-msgq", Class::Blocking, 8192, true, true, "msgget/msgsnd/msgrcv via libc, types 1 and 2"),
    m("ipckit-typed-queue", Class::Blocking, 65536, true, true, "sysv::MessageQueue, types 1 and 2"),
    m("raw-posix-mq", Class::Blocking, 8192, true, true, "mq_open/mq_send/mq_receive via libc, two queues"),
    m(
        "raw-signal",
        Class::Blocking,
        8,
        true,
        false,
        "kill(2) + sigwaitinfo(2) with the signals blocked, USR1/USR2",
    ),
    m(
        "ipckit-signal",
        Class::Blocking,
        8,
        true,
        false,
        "ipckit Signals + signal::send: SIGUSR1 there, SIGUSR2 back",
    ),
    m(
        "ipckit-signal-blocked",
        Class::Blocking,
        8,
        true,
        false,
        "ipckit Signals after signal::block (the direct sigtimedwait path), USR1/USR2",
    ),
    m(
        "ipckit-naming-stat",
        Class::Blocking,
        8,
        true,
        false,
        "NameClient::stat: read from the client's name table (no server round trip)",
    ),
    m(
        "ipckit-naming-stat-server",
        Class::Blocking,
        8,
        true,
        false,
        "NameClient::stat asked of the naming server in the peer process (with_table(false))",
    ),
    m(
        "ipckit-naming-lookup",
        Class::Blocking,
        8,
        true,
        false,
        "NameClient::lookup of the peer's service (server in the peer process; gets a Connection)",
    ),
    #[cfg(feature = "peers")]
    m(
        "peer-ipc-channel",
        Class::Blocking,
        MIB,
        true,
        true,
        "ipc-channel bytes_channel pair (crates.io, feature peers)",
    ),
    #[cfg(feature = "peers")]
    m(
        "peer-interprocess",
        Class::Blocking,
        MIB,
        true,
        true,
        "interprocess local_socket Stream, fixed size (crates.io, feature peers)",
    ),
    #[cfg(feature = "peers")]
    m(
        "peer-iceoryx2-rr",
        Class::Polling,
        MIB,
        true,
        true,
        "iceoryx2 request-response, [u8] slices, polled (crates.io, feature peers)",
    ),
    #[cfg(feature = "peers")]
    m(
        "peer-iceoryx2-pubsub",
        Class::Polling,
        MIB,
        true,
        true,
        "iceoryx2 publish-subscribe, ping/pong services, polled (crates.io, feature peers)",
    ),
    m("memcpy", Class::Memory, MIB, false, true, "in-process copy_from_slice (bandwidth ceiling)"),
];

const fn m(
    name: &'static str,
    class: Class,
    max_size: usize,
    latency: bool,
    throughput: bool,
    what: &'static str,
) -> Mechanism {
    Mechanism { name, class, max_size, latency, throughput, what }
}

/// The mechanism called `name`.
#[cfg(test)]
pub fn by_name(name: &str) -> Option<&'static Mechanism> {
    ALL.iter().find(|m| m.name == name)
}

/// The parent's end of a running measurement.
pub trait Link {
    /// Sends `msg` (its tag byte is [`ECHO`]) and waits for it to come back into `msg`.
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()>;
    /// Sends `msg` (its tag byte is [`SINK`]) without waiting for an answer.
    fn send(&mut self, msg: &[u8]) -> Result<()>;
}

/// The child's arguments (`ipckit __bench-child`).
#[derive(Debug, Args)]
pub struct ChildArgs {
    /// The mechanism to answer for.
    pub mechanism: String,
    /// Message size in bytes.
    #[arg(long)]
    pub size: usize,
    /// Pin to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Name of a shared object, or a port, or a System V id.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// A running child and the parent's end of the link to it; dropping it kills
/// and reaps the child and removes the shared objects it used.
pub struct Session {
    /// The parent's end.
    pub link: Box<dyn Link>,
    child: Option<Child>,
    cleanup: Vec<Box<dyn FnOnce()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for f in self.cleanup.drain(..) {
            f();
        }
    }
}

/// A name for a shared object unique to this run.
fn unique(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("ipckit-bench-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Spawns the child for `mech`, handing it `kit`, and waits for its "ready".
fn spawn_child(
    mech: &Mechanism,
    size: usize,
    cpu: Option<usize>,
    name: &str,
    kit: spawn::Inherit,
) -> Result<Child> {
    let exe = std::env::current_exe().context("finding this program's own path")?;
    let mut cmd = Command::new(exe);
    cmd.arg("__bench-child").arg(mech.name).arg("--size").arg(size.to_string());
    if let Some(cpu) = cpu {
        cmd.arg("--cpu").arg(cpu.to_string());
    }
    if !name.is_empty() {
        cmd.arg("--name").arg(name);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = kit.spawn(&mut cmd).context(format!("spawning the {} child", mech.name))?;
    let stdout: ChildStdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let got = BufReader::new(stdout).read_line(&mut line);
    if !matches!(got, Ok(n) if n > 0) || line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        fail!("the {} child did not get ready", mech.name);
    }
    Ok(child)
}

/// Connects to a child once it is ready (for the mechanisms whose child creates the
/// object, or whose parent end needs the child's pid).
type Connect = Box<dyn FnOnce(u32) -> Result<Box<dyn Link>>>;

/// Starts a child for `mech` with messages of `size` bytes (child pinned to `cpu`).
pub fn open(mech: &Mechanism, size: usize, cpu: Option<usize>) -> Result<Session> {
    let mut kit = spawn::Inherit::new();
    let mut cleanup: Vec<Box<dyn FnOnce()>> = Vec::new();
    let mut name = String::new();
    let mut pending: Option<Connect> = None;
    let link: Option<Box<dyn Link>> = match mech.name {
        "floor-spin" | "floor-futex" => {
            name = unique("word");
            let seg = Segment::create(&name, 128, 0o600).context("creating the shared words")?;
            let n = name.clone();
            cleanup.push(Box::new(move || drop(Segment::remove(&n))));
            Some(Box::new(Words { seg, spin: mech.name == "floor-spin", seq: 0 }))
        }
        "raw-pipe" => {
            let flags = rustix::pipe::PipeFlags::CLOEXEC;
            let (child_rd, parent_wr) = rustix::pipe::pipe_with(flags).context("pipe")?;
            let (parent_rd, child_wr) = rustix::pipe::pipe_with(flags).context("pipe")?;
            kit.pass("rd", child_rd).context("passing the pipe")?;
            kit.pass("wr", child_wr).context("passing the pipe")?;
            Some(Box::new(Stream { rd: std::fs::File::from(parent_rd), wr: std::fs::File::from(parent_wr) }))
        }
        "raw-socketpair" => {
            let (parent, child) = UnixStream::pair().context("socketpair")?;
            kit.pass("sock", OwnedFd::from(child)).context("passing the socket")?;
            Some(Box::new(Stream { rd: parent.try_clone().context("dup")?, wr: parent }))
        }
        "raw-seqpacket" => {
            use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
            let (parent, child) =
                socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                    .context("socketpair")?;
            kit.pass("sock", child).context("passing the socket")?;
            Some(Box::new(Packets { fd: parent, buf: vec![0; size] }))
        }
        "raw-tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
            name = listener.local_addr().context("local address")?.port().to_string();
            pending = Some(Box::new(move |_| {
                let (s, _) = listener.accept().context("accepting the child's connection")?;
                s.set_nodelay(true).context("TCP_NODELAY")?;
                Ok(Box::new(Stream { rd: s.try_clone().context("dup")?, wr: s }) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-pipe" | "ipckit-unix-stream" | "ipckit-seqpacket" => {
            let (parent, child) = match mech.name {
                "ipckit-pipe" => ipckit::pipe::duplex().context("ipckit pipe")?,
                "ipckit-unix-stream" => Connection::pair(SocketKind::Stream).context("ipckit socket pair")?,
                _ => Connection::pair(SocketKind::SeqPacket).context("ipckit socket pair")?,
            };
            kit.pass("conn", child).context("passing the connection")?;
            Some(Box::new(Conn(parent)))
        }
        "ipckit-endpoint" => {
            // The child owns the endpoint and sends a capability back.
            let (parent, child) = Connection::pair(SocketKind::Stream).context("ipckit socket pair")?;
            kit.pass("conn", child).context("passing the connection")?;
            pending = Some(Box::new(move |_| {
                let mut parent = parent;
                let mut msg = parent.recv_timeout(IO_TIMEOUT).context("the child's capability")?;
                let cap: Cap = msg.take().context("taking the capability")?;
                Ok(Box::new(EndpointLink(cap.with_timeout(IO_TIMEOUT))) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-shm-rpc-spin" | "ipckit-shm-rpc-block" => {
            name = unique("rpc");
            let n = name.clone();
            cleanup.push(Box::new(move || drop(Segment::remove(&n))));
            let n = name.clone();
            let mode = if mech.name.ends_with("spin") { WaitMode::Spin } else { WaitMode::Block };
            pending = Some(Box::new(move |_| {
                let client = RpcClient::open(&n).context("opening the RPC segment")?.with_wait(mode);
                Ok(Box::new(ShmRpc { client, out: Vec::new() }) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-shm-rpc-loan" => {
            name = unique("rpc-loan");
            let n = name.clone();
            cleanup.push(Box::new(move || drop(Segment::remove(&n))));
            let n = name.clone();
            pending = Some(Box::new(move |_| {
                let client =
                    RpcClient::open(&n).context("opening the RPC segment")?.with_wait(WaitMode::Spin);
                Ok(Box::new(ShmRpcLoan { client }) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-shm-ring-spin" | "ipckit-shm-ring-block" => {
            name = unique("ring");
            let mode = if mech.name.ends_with("spin") { WaitMode::Spin } else { WaitMode::Block };
            let slots = ((8 * MIB) / size.max(1)).clamp(4, 64).next_power_of_two();
            let (to, from) = (format!("{name}-to"), format!("{name}-from"));
            let up = ShmChannel::create(&to, &Config::spsc(slots, size)).context("creating a ring")?;
            let down = ShmChannel::create(&from, &Config::spsc(slots, size)).context("creating a ring")?;
            cleanup.push(Box::new(move || {
                let _ = ShmChannel::remove(&to);
                let _ = ShmChannel::remove(&from);
            }));
            let tx = up.sender().context("ring sender")?.with_wait(mode);
            let rx = down.receiver().context("ring receiver")?.with_wait(mode);
            Some(Box::new(Ring { tx, rx, buf: Vec::new(), _keep: (up, down) }))
        }
        "ipckit-typed-queue" => {
            name = unique("queue");
            let cap = (4 * size).max(16384);
            let config = QueueConfig { capacity: cap, max_message: size, max_capacity: cap, mode: 0o600 };
            let q = MessageQueue::create(&name, config).context("creating the queue")?;
            let n = name.clone();
            cleanup.push(Box::new(move || drop(MessageQueue::remove_name(&n))));
            Some(Box::new(TypedQueue { q, buf: vec![0; size] }))
        }
        "raw-sysv-msgq" => {
            let id = sysv_raw::create().context("msgget")?;
            name = id.to_string();
            cleanup.push(Box::new(move || sysv_raw::remove(id)));
            Some(Box::new(RawMsgq { id, size, buf: Vec::new() }))
        }
        "ipckit-event" => {
            name = unique("event");
            let (ping, pong) = (format!("{name}-ping"), format!("{name}-pong"));
            let a = Event::create(&ping, EventMode::AutoReset, 0o600).context("creating an event")?;
            let b = Event::create(&pong, EventMode::AutoReset, 0o600).context("creating an event")?;
            cleanup.push(Box::new(move || {
                let _ = Event::remove(&ping);
                let _ = Event::remove(&pong);
            }));
            Some(Box::new(Events { ping: a, pong: b }))
        }
        "raw-eventfd" => {
            use rustix::event::{eventfd, EventfdFlags};
            let ping = eventfd(0, EventfdFlags::CLOEXEC).context("eventfd")?;
            let pong = eventfd(0, EventfdFlags::CLOEXEC).context("eventfd")?;
            kit.pass("ping", ping.try_clone().context("dup")?).context("passing an eventfd")?;
            kit.pass("pong", pong.try_clone().context("dup")?).context("passing an eventfd")?;
            Some(Box::new(EventFds { ping, pong }))
        }
        "ipckit-fifo" => {
            let dir = std::env::temp_dir();
            name = dir.join(unique("fifo")).to_string_lossy().into_owned();
            let (to, from) = (format!("{name}-to"), format!("{name}-from"));
            ipckit::fifo::create(&to, 0o600).context("mkfifo")?;
            ipckit::fifo::create(&from, 0o600).context("mkfifo")?;
            let (t, f) = (to.clone(), from.clone());
            cleanup.push(Box::new(move || {
                let _ = ipckit::fifo::remove(&t);
                let _ = ipckit::fifo::remove(&f);
            }));
            pending = Some(Box::new(move |_| {
                let tx = ipckit::fifo::open_sender_timeout(&to, IO_TIMEOUT).context("opening a FIFO")?;
                let rx = ipckit::fifo::open_receiver_timeout(&from, IO_TIMEOUT).context("opening a FIFO")?;
                Ok(Box::new(Fifo { tx, rx }) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-semaphore" => {
            name = unique("sem");
            let set = SemaphoreSet::create(&name, 2, 0, 0o600).context("creating the semaphore set")?;
            let n = name.clone();
            cleanup.push(Box::new(move || drop(SemaphoreSet::remove_name(&n))));
            Some(Box::new(Sems(set)))
        }
        "raw-sysv-sem" => {
            let id = sysv_sem::create().context("semget")?;
            name = id.to_string();
            cleanup.push(Box::new(move || sysv_sem::remove(id)));
            Some(Box::new(RawSems(id)))
        }
        "raw-posix-mq" => {
            name = format!("/{}", unique("mq"));
            let to = posix_mq::open(&format!("{name}-to"), Some(size)).context("mq_open")?;
            let from = posix_mq::open(&format!("{name}-from"), Some(size)).context("mq_open")?;
            let n = name.clone();
            cleanup.push(Box::new(move || {
                posix_mq::unlink(&format!("{n}-to"));
                posix_mq::unlink(&format!("{n}-from"));
            }));
            Some(Box::new(PosixMq { to, from, buf: vec![0; size] }))
        }
        "ipckit-signal" | "ipckit-signal-blocked" => {
            let blocked = mech.name == "ipckit-signal-blocked";
            if blocked {
                // As an application would, first thing: the bench runs no other thread here.
                ipckit::signal::block(&[SIGUSR2]).context("signal::block")?;
            }
            let signals = Signals::new(&[SIGUSR2]).context("catching SIGUSR2")?;
            pending =
                Some(Box::new(move |pid| Ok(Box::new(IpcSignal { pid, signals, blocked }) as Box<dyn Link>)));
            None
        }
        "raw-signal" => {
            // SIGUSR2 comes back process-directed: with another thread here
            // (that does not block it) the kernel could deliver it there.
            let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
            if threads != 1 {
                fail!("the bench has {threads} threads, not 1: raw kill+sigwaitinfo skipped");
            }
            let blocked = raw_sig::Blocked::new(SIGUSR2).context("blocking SIGUSR2")?;
            pending = Some(Box::new(move |pid| {
                Ok(Box::new(RawSignal { pid: pid as i32, _blocked: blocked }) as Box<dyn Link>)
            }));
            None
        }
        "ipckit-loan" => {
            name = unique("loan");
            let (pool_name, to, from) =
                (format!("{name}-pool"), format!("{name}-to"), format!("{name}-from"));
            let buffers = ((8 * MIB) / size.max(1)).clamp(4, 16);
            let pool =
                LoanPool::create(&pool_name, buffers, size, 0o600).context("creating the loan pool")?;
            let up = ShmChannel::create(&to, &Config::spsc(16, 12)).context("creating a ring")?;
            let down = ShmChannel::create(&from, &Config::spsc(16, 12)).context("creating a ring")?;
            cleanup.push(Box::new(move || {
                let _ = Segment::remove(&pool_name);
                let _ = ShmChannel::remove(&to);
                let _ = ShmChannel::remove(&from);
            }));
            let tx = up.sender().context("ring sender")?.with_wait(WaitMode::Block);
            let rx = down.receiver().context("ring receiver")?.with_wait(WaitMode::Block);
            Some(Box::new(Loans { pool, tx, rx, buf: Vec::new(), _keep: (up, down) }))
        }
        "ipckit-naming-stat" | "ipckit-naming-stat-server" | "ipckit-naming-lookup" => {
            // The server runs in the child (placed like every other peer), with
            // the service it registers; this process is only the client.
            let path = std::env::temp_dir().join(format!("{}.sock", unique("naming")));
            name = path.to_string_lossy().into_owned();
            let p = path.clone();
            cleanup.push(Box::new(move || drop(std::fs::remove_file(&p))));
            let lookup = mech.name.ends_with("lookup");
            let table = mech.name != "ipckit-naming-stat-server";
            pending = Some(Box::new(move |_| {
                let client =
                    NameClient::connect(&path).context("connecting to the naming server")?.with_table(table);
                Ok(Box::new(Naming { client, lookup }) as Box<dyn Link>)
            }));
            None
        }
        #[cfg(feature = "peers")]
        "peer-ipc-channel" => {
            let (server, server_name) =
                super::peers::IpcOneShotServer::new().context("ipc-channel one-shot server")?;
            name = server_name;
            pending = Some(Box::new(move |_| {
                let (_, (tx, rx)) = server.accept().context("ipc-channel accept")?;
                Ok(Box::new(super::peers::IpcChannel { tx, rx }) as Box<dyn Link>)
            }));
            None
        }
        #[cfg(feature = "peers")]
        "peer-interprocess" => {
            let path = std::env::temp_dir().join(format!("{}.sock", unique("interprocess")));
            let listener = super::peers::listen(&path).context("interprocess listener")?;
            name = path.to_string_lossy().into_owned();
            cleanup.push(Box::new(move || drop(std::fs::remove_file(&path))));
            pending = Some(Box::new(move |_| {
                let s = super::peers::accept(&listener).context("interprocess accept")?;
                Ok(Box::new(super::peers::LocalSocket(s)) as Box<dyn Link>)
            }));
            None
        }
        #[cfg(feature = "peers")]
        "peer-iceoryx2-rr" | "peer-iceoryx2-pubsub" => {
            name = format!("ipckit-bench/{}", unique("iceoryx2"));
            cleanup.push(Box::new(super::peers::iox2::cleanup));
            if mech.name.ends_with("rr") {
                Some(Box::new(super::peers::iox2::RequestResponse::create(&name, size)?))
            } else {
                Some(Box::new(super::peers::iox2::PubSubLink::create(&name, size)?))
            }
        }
        other => fail!("{other}: not a two-process mechanism"),
    };
    let mut child = match spawn_child(mech, size, cpu, &name, kit) {
        Ok(child) => child,
        Err(e) => {
            drop(link);
            for f in cleanup {
                f();
            }
            return Err(e);
        }
    };
    let link = match (link, pending) {
        (Some(link), _) => link,
        (None, Some(finish)) => match finish(child.id()) {
            Ok(link) => link,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                for f in cleanup {
                    f();
                }
                return Err(e);
            }
        },
        (None, None) => unreachable!("every mechanism makes a link"),
    };
    Ok(Session { link, child: Some(child), cleanup })
}

// ---------------------------------------------------------------------------
// Parent ends
// ---------------------------------------------------------------------------

/// Offsets of the two words: the spin floor uses only the first.
const PING: Offset<AtomicU32> = Offset::new(0);
const PONG: Offset<AtomicU32> = Offset::new(64);

struct Words {
    seg: Segment,
    spin: bool,
    seq: u32,
}

/// Waits until `word` holds `want`: spinning, or sleeping on the futex.
fn await_word(word: &AtomicU32, want: u32, spin: bool) -> Result<()> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        let now = word.load(Ordering::Acquire);
        if now == want {
            return Ok(());
        }
        if spin {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n % 4096 == 0 {
                if start.elapsed() > IO_TIMEOUT {
                    fail!("no answer on the shared word within {IO_TIMEOUT:?}");
                }
                if n % (1 << 20) == 0 {
                    std::thread::yield_now();
                }
            }
        } else {
            let ts = rustix::fs::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
            let _ = futex::wait(word, futex::Flags::empty(), now, Some(&ts));
            if start.elapsed() > IO_TIMEOUT {
                fail!("no answer on the futex within {IO_TIMEOUT:?}");
            }
        }
    }
}

impl Link for Words {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        self.seq = self.seq.wrapping_add(2);
        let ping = self.seg.atomic_u32(PING).context("shared word")?;
        if self.spin {
            // One word, one cache line: odd from the parent, even back from the child.
            ping.store(self.seq.wrapping_sub(1), Ordering::Release);
            await_word(ping, self.seq, true)
        } else {
            let pong = self.seg.atomic_u32(PONG).context("shared word")?;
            ping.store(self.seq, Ordering::Release);
            futex::wake(ping, futex::Flags::empty(), 1).context("futex wake")?;
            await_word(pong, self.seq, false)
        }
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

/// A byte stream carrying fixed-size messages.
struct Stream<R, W> {
    rd: R,
    wr: W,
}

impl<R: Read, W: Write> Link for Stream<R, W> {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.wr.write_all(msg).context("write")?;
        self.rd.read_exact(msg).context("read")
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.wr.write_all(msg).context("write")
    }
}

/// A seqpacket socket: one datagram per message.
struct Packets {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Link for Packets {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let n = packet_recv(&self.fd, &mut self.buf).context("recv")?;
        if n != msg.len() {
            fail!("reply of {n} bytes, not {}", msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        packet_send(&self.fd, msg).context("send")
    }
}

/// send(2) of one datagram, again on EINTR.
fn packet_send(fd: &OwnedFd, msg: &[u8]) -> rustix::io::Result<()> {
    loop {
        match rustix::net::send(fd, msg, rustix::net::SendFlags::empty()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// recv(2) of one datagram into `buf`, again on EINTR; its length.
fn packet_recv(fd: &OwnedFd, buf: &mut [u8]) -> rustix::io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, rustix::net::RecvFlags::empty()) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

struct Conn(Connection);

impl Link for Conn {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.0.send_timeout(&msg[..], IO_TIMEOUT).map_err(|e| crate::error::Failure::new(e.to_string()))?;
        let reply = self.0.recv_timeout(IO_TIMEOUT).context("recv")?;
        if reply.bytes().len() != msg.len() {
            fail!("reply of {} bytes, not {}", reply.bytes().len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.0.send_timeout(msg, IO_TIMEOUT).map_err(|e| crate::error::Failure::new(e.to_string()))
    }
}

/// A call through a microkernel-style capability (the reply comes on a
/// fresh one-shot reply socket each time).
struct EndpointLink(Cap);

impl Link for EndpointLink {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        let reply = self.0.call(msg.to_vec()).context("endpoint call")?;
        if reply.bytes().len() != msg.len() {
            fail!("reply of {} bytes, not {}", reply.bytes().len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("request-response only")
    }
}

struct ShmRpc {
    client: RpcClient,
    out: Vec<u8>,
}

impl Link for ShmRpc {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.client.call_into(msg, &mut self.out, IO_TIMEOUT).context("shm call")?;
        if self.out.len() != msg.len() {
            fail!("reply of {} bytes, not {}", self.out.len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("request-response only")
    }
}

/// The two-slot RPC with both messages in place, as iceoryx2's
/// request-response does with its loans: the request is written into the
/// slot (one copy), the server echoes it into the reply slot (one copy),
/// the reply is read where it lies.
struct ShmRpcLoan {
    client: RpcClient,
}

impl Link for ShmRpcLoan {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        let mut slot = self.client.loan_timeout(IO_TIMEOUT).context("shm loan")?;
        slot[..msg.len()].copy_from_slice(msg);
        let reply = slot.call_view(msg.len(), IO_TIMEOUT).context("shm call")?;
        if reply.len() != msg.len() {
            fail!("reply of {} bytes, not {}", reply.len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("request-response only")
    }
}

struct Ring {
    tx: ShmSender,
    rx: ShmReceiver,
    buf: Vec<u8>,
    _keep: (ShmChannel, ShmChannel),
}

impl Link for Ring {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        self.rx.recv_into(&mut self.buf, Some(IO_TIMEOUT)).context("ring recv")?;
        if self.buf.len() != msg.len() {
            fail!("reply of {} bytes, not {}", self.buf.len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.tx
            .send_bytes(msg, Some(IO_TIMEOUT))
            .map_err(|e| crate::error::Failure::new(format!("ring send: {e}")))
    }
}

struct TypedQueue {
    q: MessageQueue,
    buf: Vec<u8>,
}

impl Link for TypedQueue {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let (_, n) =
            self.q.recv_into_timeout(Select::of(2), &mut self.buf, IO_TIMEOUT).context("queue recv")?;
        if n != msg.len() {
            fail!("reply of {n} bytes, not {}", msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.q
            .send_timeout(1, msg, IO_TIMEOUT)
            .map_err(|e| crate::error::Failure::new(format!("queue send: {e}")))
    }
}

struct RawMsgq {
    id: i32,
    size: usize,
    buf: Vec<u8>,
}

impl Link for RawMsgq {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let n = sysv_raw::recv(self.id, 2, &mut self.buf, self.size).context("msgrcv")?;
        if n != msg.len() {
            fail!("reply of {n} bytes, not {}", msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        sysv_raw::send(self.id, 1, msg, &mut self.buf).context("msgsnd")
    }
}

struct Events {
    ping: Event,
    pong: Event,
}

impl Link for Events {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        self.ping.notify_one();
        self.pong.wait_timeout(IO_TIMEOUT).context("event wait")
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

struct EventFds {
    ping: OwnedFd,
    pong: OwnedFd,
}

impl Link for EventFds {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        rustix::io::write(&self.ping, &1u64.to_ne_bytes()).context("eventfd write")?;
        let mut b = [0u8; 8];
        rustix::io::read(&self.pong, &mut b).context("eventfd read")?;
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

struct Fifo {
    tx: ipckit::Sender,
    rx: ipckit::Receiver,
}

impl Link for Fifo {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let reply = self.rx.recv_timeout(IO_TIMEOUT).context("FIFO recv")?;
        if reply.bytes().len() != msg.len() {
            fail!("reply of {} bytes, not {}", reply.bytes().len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.tx.send_timeout(msg, IO_TIMEOUT).map_err(|e| crate::error::Failure::new(e.to_string()))
    }
}

struct Sems(SemaphoreSet);

impl Link for Sems {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        self.0.op(&[SemOp::v(0)]).context("semop V")?;
        self.0.op_timeout(&[SemOp::p(1)], IO_TIMEOUT).context("semop P")
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

struct RawSems(i32);

impl Link for RawSems {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        sysv_sem::op(self.0, 0, 1, None).context("semop V")?;
        if !sysv_sem::op(self.0, 1, -1, Some(IO_TIMEOUT)).context("semtimedop P")? {
            fail!("no V within {IO_TIMEOUT:?}");
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

struct PosixMq {
    to: posix_mq::Mqd,
    from: posix_mq::Mqd,
    buf: Vec<u8>,
}

impl Link for PosixMq {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let n = posix_mq::receive(self.from, &mut self.buf).context("mq_receive")?;
        if n != msg.len() {
            fail!("reply of {n} bytes, not {}", msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        posix_mq::send(self.to, msg).context("mq_send")
    }
}

impl Drop for PosixMq {
    fn drop(&mut self) {
        posix_mq::close(self.to);
        posix_mq::close(self.from);
    }
}

struct IpcSignal {
    pid: u32,
    signals: Signals,
    /// SIGUSR2 was blocked with `signal::block` for this row: unblocked on drop.
    blocked: bool,
}

impl Drop for IpcSignal {
    fn drop(&mut self) {
        if self.blocked {
            let _ = ipckit::signal::unblock(&[SIGUSR2]);
        }
    }
}

impl Link for IpcSignal {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        ipckit::signal::send(self.pid, SIGUSR1).context("signal::send")?;
        self.signals.recv_timeout(IO_TIMEOUT).context("waiting for SIGUSR2")?;
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

struct RawSignal {
    pid: i32,
    _blocked: raw_sig::Blocked,
}

impl Link for RawSignal {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        raw_sig::kill(self.pid, SIGUSR1).context("kill")?;
        if !raw_sig::wait(SIGUSR2, Some(IO_TIMEOUT)).context("sigtimedwait")? {
            fail!("no SIGUSR2 within {IO_TIMEOUT:?}");
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

/// Reads every byte of `b` (a loaned buffer is touched, not copied).
fn touch(b: &[u8]) -> u8 {
    std::hint::black_box(b.iter().fold(0u8, |a, &x| a ^ x))
}

struct Loans {
    pool: LoanPool,
    tx: ShmSender,
    rx: ShmReceiver,
    buf: Vec<u8>,
    _keep: (ShmChannel, ShmChannel),
}

impl Link for Loans {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        self.rx.recv_into(&mut self.buf, Some(IO_TIMEOUT)).context("ring recv")?;
        let token = Token::from_bytes(&self.buf).context("token")?;
        let view = self.pool.redeem(token).context("redeeming the reply")?;
        touch(&view);
        if view.len() != msg.len() {
            fail!("reply of {} bytes, not {}", view.len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        let mut loan = self.pool.loan_timeout(IO_TIMEOUT).context("loan")?;
        loan[..msg.len()].copy_from_slice(msg);
        let token = loan.send(msg.len());
        self.tx
            .send_bytes(&token.to_bytes(), Some(IO_TIMEOUT))
            .map_err(|e| crate::error::Failure::new(format!("ring send: {e}")))
    }
}

/// The name the naming child registers.
const SERVICE: &str = "ipckit-bench-service";

struct Naming {
    client: NameClient,
    lookup: bool,
}

impl Link for Naming {
    fn round_trip(&mut self, _msg: &mut [u8]) -> Result<()> {
        if self.lookup {
            drop(self.client.lookup(SERVICE).context("lookup")?);
        } else {
            self.client.stat(SERVICE).context("stat")?;
        }
        Ok(())
    }

    fn send(&mut self, _msg: &[u8]) -> Result<()> {
        fail!("no payload: round trips only")
    }
}

// ---------------------------------------------------------------------------
// Child ends
// ---------------------------------------------------------------------------

/// Tells the parent this child is ready (one line on stdout).
pub(crate) fn ready() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").context("stdout")?;
    out.flush().context("stdout")
}

/// `ipckit __bench-child`: answers for one mechanism until killed (or until
/// the parent's end closes).
pub fn run_child(args: &ChildArgs) -> Result<()> {
    if args.mechanism == "raw-signal" {
        // First, before any thread exists: every later thread inherits it.
        raw_sig::block(SIGUSR1).context("blocking SIGUSR1")?;
    }
    if args.mechanism == "ipckit-signal-blocked" {
        // The same, through ipckit: its receiver then takes SIGUSR1 directly.
        ipckit::signal::block(&[SIGUSR1]).context("signal::block")?;
    }
    // A child never outlives the bench.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("PR_SET_PDEATHSIG")?;
    if let Some(cpu) = args.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).context("pinning the child")?;
    }
    let size = args.size.max(1);
    match args.mechanism.as_str() {
        "floor-spin" | "floor-futex" => {
            let seg = Segment::open(&args.name).context("opening the shared words")?;
            let ping = seg.atomic_u32(PING).context("shared word")?;
            let pong = seg.atomic_u32(PONG).context("shared word")?;
            let spin = args.mechanism == "floor-spin";
            ready()?;
            let mut seq = 0u32;
            loop {
                seq = seq.wrapping_add(2);
                if spin {
                    wait_forever(ping, seq.wrapping_sub(1), true);
                    ping.store(seq, Ordering::Release);
                } else {
                    wait_forever(ping, seq, false);
                    pong.store(seq, Ordering::Release);
                    futex::wake(pong, futex::Flags::empty(), 1).context("futex wake")?;
                }
            }
        }
        "raw-pipe" => {
            let rd: OwnedFd = spawn::inherited("rd").context("inherited pipe")?;
            let wr: OwnedFd = spawn::inherited("wr").context("inherited pipe")?;
            ready()?;
            stream_echo(std::fs::File::from(rd), std::fs::File::from(wr), size)
        }
        "raw-socketpair" => {
            let sock: OwnedFd = spawn::inherited("sock").context("inherited socket")?;
            let s = UnixStream::from(sock);
            ready()?;
            stream_echo(s.try_clone().context("dup")?, s, size)
        }
        "raw-seqpacket" => {
            let sock: OwnedFd = spawn::inherited("sock").context("inherited socket")?;
            ready()?;
            let mut buf = vec![0u8; size];
            loop {
                let Ok(n) = packet_recv(&sock, &mut buf) else { return Ok(()) };
                if n == 0 {
                    return Ok(());
                }
                if buf[0] == ECHO && packet_send(&sock, &buf[..n]).is_err() {
                    return Ok(());
                }
            }
        }
        "raw-tcp" => {
            let port: u16 = args.name.parse().context("port")?;
            ready()?;
            let s = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
            s.set_nodelay(true).context("TCP_NODELAY")?;
            stream_echo(s.try_clone().context("dup")?, s, size)
        }
        "ipckit-pipe" | "ipckit-unix-stream" | "ipckit-seqpacket" => {
            let mut conn: Connection = spawn::inherited("conn").context("inherited connection")?;
            ready()?;
            loop {
                let Ok(msg) = conn.recv() else { return Ok(()) };
                if msg.bytes().first() == Some(&ECHO) && conn.send(msg).is_err() {
                    return Ok(());
                }
            }
        }
        "ipckit-endpoint" => {
            let mut conn: Connection = spawn::inherited("conn").context("inherited connection")?;
            let mut ep = Endpoint::new();
            let cap = ep.mint(1, Rights::SEND).context("minting")?;
            conn.send(ipckit::Message::new(Vec::new()).with(cap).context("attaching the capability")?)
                .map_err(|e| crate::error::Failure::new(e.to_string()))?;
            ready()?;
            let Ok(mut got) = ep.recv() else { return Ok(()) };
            loop {
                let Some(reply) = got.reply.take() else { return Ok(()) };
                let echo = got.message.into_bytes();
                match ep.reply_recv(reply, echo) {
                    Ok(next) => got = next,
                    Err(_) => return Ok(()),
                }
            }
        }
        "ipckit-shm-rpc-spin" | "ipckit-shm-rpc-block" => {
            let mode = if args.mechanism.ends_with("spin") { WaitMode::Spin } else { WaitMode::Block };
            let mut server = RpcServer::create(&args.name, size, 0o600)
                .context("creating the RPC segment")?
                .with_wait(mode);
            ready()?;
            let mut buf = Vec::new();
            loop {
                match server.recv_into(&mut buf, Some(Duration::from_secs(3600))) {
                    Ok(()) => server.reply(&buf).context("reply")?,
                    Err(_) => continue,
                }
            }
        }
        "ipckit-shm-rpc-loan" => {
            let mut server = RpcServer::create(&args.name, size, 0o600)
                .context("creating the RPC segment")?
                .with_wait(WaitMode::Spin);
            ready()?;
            loop {
                if let Ok(view) = server.recv_view(Some(Duration::from_secs(3600))) {
                    let len = view.len();
                    view.reply_with(len, |req, rep| rep.copy_from_slice(req)).context("reply")?;
                }
            }
        }
        "ipckit-shm-ring-spin" | "ipckit-shm-ring-block" => {
            let mode = if args.mechanism.ends_with("spin") { WaitMode::Spin } else { WaitMode::Block };
            let up = ShmChannel::open(&format!("{}-to", args.name)).context("opening a ring")?;
            let down = ShmChannel::open(&format!("{}-from", args.name)).context("opening a ring")?;
            let mut rx = up.receiver().context("ring receiver")?.with_wait(mode);
            let mut tx = down.sender().context("ring sender")?.with_wait(mode);
            ready()?;
            let mut buf = Vec::new();
            loop {
                if rx.recv_into(&mut buf, Some(Duration::from_secs(3600))).is_err() {
                    continue;
                }
                if buf.first() == Some(&ECHO) {
                    let _ = tx.send_bytes(&buf, Some(IO_TIMEOUT));
                }
            }
        }
        "ipckit-typed-queue" => {
            let q = MessageQueue::open(&args.name, ipckit::perm::Access::ReadWrite)
                .context("opening the queue")?;
            ready()?;
            let mut buf = vec![0u8; size];
            loop {
                let Ok((_, n)) = q.recv_into(Select::of(1), &mut buf) else { continue };
                if buf[..n].first() == Some(&ECHO) {
                    let _ = q.send(2, &buf[..n]);
                }
            }
        }
        "raw-sysv-msgq" => {
            let id: i32 = args.name.parse().context("queue id")?;
            ready()?;
            let (mut buf, mut out) = (Vec::new(), Vec::new());
            loop {
                let n = sysv_raw::recv(id, 1, &mut buf, size).context("msgrcv")?;
                let text = sysv_raw::text(&buf, n);
                if text.first() == Some(&ECHO) {
                    sysv_raw::send(id, 2, text, &mut out).context("msgsnd")?;
                }
            }
        }
        "ipckit-event" => {
            let ping = Event::open(&format!("{}-ping", args.name)).context("opening an event")?;
            let pong = Event::open(&format!("{}-pong", args.name)).context("opening an event")?;
            ready()?;
            loop {
                if ping.wait_timeout(Duration::from_secs(3600)).is_ok() {
                    pong.notify_one();
                }
            }
        }
        "raw-eventfd" => {
            let ping: OwnedFd = spawn::inherited("ping").context("inherited eventfd")?;
            let pong: OwnedFd = spawn::inherited("pong").context("inherited eventfd")?;
            ready()?;
            let mut b = [0u8; 8];
            loop {
                rustix::io::read(&ping, &mut b).context("eventfd read")?;
                rustix::io::write(&pong, &1u64.to_ne_bytes()).context("eventfd write")?;
            }
        }
        "ipckit-fifo" => {
            ready()?;
            let mut rx = ipckit::fifo::open_receiver_timeout(format!("{}-to", args.name), IO_TIMEOUT)
                .context("opening a FIFO")?;
            let mut tx = ipckit::fifo::open_sender_timeout(format!("{}-from", args.name), IO_TIMEOUT)
                .context("opening a FIFO")?;
            loop {
                let Ok(msg) = rx.recv() else { return Ok(()) };
                if msg.bytes().first() == Some(&ECHO) && tx.send(msg).is_err() {
                    return Ok(());
                }
            }
        }
        "ipckit-semaphore" => {
            let set =
                SemaphoreSet::open(&args.name, ipckit::perm::Access::ReadWrite).context("opening the set")?;
            ready()?;
            loop {
                if set.op_timeout(&[SemOp::p(0)], Duration::from_secs(3600)).is_ok() {
                    set.op(&[SemOp::v(1)]).context("semop V")?;
                }
            }
        }
        "raw-sysv-sem" => {
            let id: i32 = args.name.parse().context("semaphore set id")?;
            ready()?;
            loop {
                sysv_sem::op(id, 0, -1, None).context("semop P")?;
                sysv_sem::op(id, 1, 1, None).context("semop V")?;
            }
        }
        "raw-posix-mq" => {
            let to = posix_mq::open(&format!("{}-to", args.name), None).context("mq_open")?;
            let from = posix_mq::open(&format!("{}-from", args.name), None).context("mq_open")?;
            ready()?;
            let mut buf = vec![0u8; size];
            loop {
                let n = posix_mq::receive(to, &mut buf).context("mq_receive")?;
                if buf[..n].first() == Some(&ECHO) {
                    posix_mq::send(from, &buf[..n]).context("mq_send")?;
                }
            }
        }
        "ipckit-signal" | "ipckit-signal-blocked" => {
            let mut signals = Signals::new(&[SIGUSR1]).context("catching SIGUSR1")?;
            let parent = std::os::unix::process::parent_id();
            ready()?;
            loop {
                if signals.recv().is_ok() {
                    ipckit::signal::send(parent, SIGUSR2).context("signal::send")?;
                }
            }
        }
        "raw-signal" => {
            let parent = std::os::unix::process::parent_id() as i32;
            ready()?;
            loop {
                if raw_sig::wait(SIGUSR1, None).context("sigwaitinfo")? {
                    raw_sig::kill(parent, SIGUSR2).context("kill")?;
                }
            }
        }
        "ipckit-loan" => {
            let pool = LoanPool::open(&format!("{}-pool", args.name)).context("opening the loan pool")?;
            let up = ShmChannel::open(&format!("{}-to", args.name)).context("opening a ring")?;
            let down = ShmChannel::open(&format!("{}-from", args.name)).context("opening a ring")?;
            let mut rx = up.receiver().context("ring receiver")?.with_wait(WaitMode::Block);
            let mut tx = down.sender().context("ring sender")?.with_wait(WaitMode::Block);
            ready()?;
            let mut buf = Vec::new();
            loop {
                if rx.recv_into(&mut buf, Some(Duration::from_secs(3600))).is_err() {
                    continue;
                }
                let token = Token::from_bytes(&buf).context("token")?;
                let view = pool.redeem(token).context("redeeming a loan")?;
                touch(&view);
                let (tag, len) = (view.first().copied(), view.len());
                drop(view);
                if tag == Some(ECHO) {
                    let mut reply = pool.loan_timeout(IO_TIMEOUT).context("loan")?;
                    reply[..len].fill(0x5a);
                    reply[0] = ECHO;
                    let token = reply.send(len);
                    let _ = tx.send_bytes(&token.to_bytes(), Some(IO_TIMEOUT));
                }
            }
        }
        "ipckit-naming-stat" | "ipckit-naming-stat-server" | "ipckit-naming-lookup" => {
            // The server's thread inherits this process's CPU.
            let _server = EmbeddedServer::start(&args.name, ServerConfig::default())
                .context("starting the naming server")?;
            let client = NameClient::connect(&args.name).context("connecting to the naming server")?;
            let mut service = client.register(SERVICE, Policy::mode(0o600)).context("registering")?;
            ready()?;
            loop {
                match service.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => return Ok(()),
                }
            }
        }
        #[cfg(feature = "peers")]
        "peer-ipc-channel" => super::peers::child(&args.name),
        #[cfg(feature = "peers")]
        "peer-interprocess" => super::peers::interprocess_child(&args.name, size),
        #[cfg(feature = "peers")]
        "peer-iceoryx2-rr" => super::peers::iox2::request_response_child(&args.name, size),
        #[cfg(feature = "peers")]
        "peer-iceoryx2-pubsub" => super::peers::iox2::pubsub_child(&args.name, size),
        other => fail!("unknown bench mechanism {other:?}"),
    }
}

/// The child's wait on a shared word: no deadline (the parent kills it).
fn wait_forever(word: &AtomicU32, want: u32, spin: bool) {
    let mut n = 0u32;
    loop {
        let now = word.load(Ordering::Acquire);
        if now == want {
            return;
        }
        if spin {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n % (1 << 20) == 0 {
                std::thread::yield_now();
            }
        } else {
            let _ = futex::wait(word, futex::Flags::empty(), now, None);
        }
    }
}

/// Reads fixed-size messages and echoes those tagged [`ECHO`], until end-of-file.
pub(crate) fn stream_echo(mut rd: impl Read, mut wr: impl Write, size: usize) -> Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        if rd.read_exact(&mut buf).is_err() {
            return Ok(());
        }
        if buf[0] == ECHO && wr.write_all(&buf).is_err() {
            return Ok(());
        }
    }
}
