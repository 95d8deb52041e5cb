//! `ipckit mq`: System V-style typed message queues from the shell
//! (`create`, `send`, `recv`, `stat`, `rm`), over [`ipckit::sysv::MessageQueue`].
//!
//! A NAME is a queue in shared memory; a NAME with a `/` in it is a durable
//! queue in that file (see [`Location`]). Durable queues are opened with
//! [`Flush::EveryOperation`]: when `send` or `recv` returns, the change is on disk.

use std::io::Read;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipckit::perm::Access;
use ipckit::sysv::{Flush, MessageQueue, QueueConfig, QueueStat, Select};
use ipckit::{FrameError, SendTimeoutError, TrySendError};

use crate::error::{fail, Context, Failure, Result};
use crate::object::{self, fmt_perms, fmt_secs, fmt_time, parse_location, parse_mode, parse_secs, Location};

/// What `--help` says about naming and exit codes, for every `mq` command.
const NAMES_AND_EXIT_CODES: &str = "\
NAME is a queue in shared memory (/dev/shm/ipckit.NAME): letters, digits, '_', '-', '.'. \
A NAME containing '/' (./jobs.q, /var/lib/app/jobs.q) is a durable queue kept in that file: \
it survives a reboot, and every send and receive reaches the disk before the command returns.

Exit status: 0 done; 1 error (one line on stderr, e.g. \"ipckit: error: queue jobs: permission \
denied\"); 2 nothing done because it would have had to wait: with --nowait, no message of that \
type to receive or no room to send; with --timeout, none came (no room came) in time.";

/// Options of `ipckit mq`.
#[derive(Debug, Args)]
pub struct MqArgs {
    #[command(subcommand)]
    command: MqCommand,
}

/// The `mq` subcommands.
#[derive(Debug, Subcommand)]
enum MqCommand {
    /// Create a queue (msgget with IPC_CREAT | IPC_EXCL)
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Create(CreateArgs),
    /// Send one message of a type (msgsnd); blocks while the queue is full
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Send(SendArgs),
    /// Receive one message, selected by type (msgrcv); blocks until one matches
    #[command(
        long_about = "Receive one message, selected by type (msgrcv); blocks until one matches.\n\n\
            Prints \"TYPE<TAB>TEXT\" and a newline: the text as UTF-8 (invalid bytes shown as \
            U+FFFD), or with --hex as hexadecimal.\n\n\
            Selection, as msgrcv(2): --type 0 (the default) takes the first message; --type T > 0 \
            the first of type T (with --except, the first NOT of type T); --type -T the first \
            message of the lowest type <= T.",
        after_long_help = NAMES_AND_EXIT_CODES
    )]
    Recv(RecvArgs),
    /// Show a queue's counts, limits, last sender and receiver, times, owner and mode (msgctl IPC_STAT)
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Stat(StatArgs),
    /// Remove a queue (msgctl IPC_RMID); its messages are lost, blocked users fail
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Rm(RmArgs),
}

/// Options of `ipckit mq create`.
#[derive(Debug, Args)]
struct CreateArgs {
    /// The queue: a name, or a path (with '/') for a durable queue in a file
    #[arg(value_name = "NAME", value_parser = parse_location)]
    queue: Location,
    /// Most bytes of message text held at once (msg_qbytes)
    #[arg(long, value_name = "BYTES", default_value_t = QueueConfig::default().capacity)]
    capacity: usize,
    /// Largest message text accepted [default: 8192, or --capacity if that is smaller]
    #[arg(long, value_name = "BYTES")]
    max_message: Option<usize>,
    /// Permission bits in octal: read to receive, write to send
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    mode: u32,
}

/// Options of `ipckit mq send`.
#[derive(Debug, Args)]
struct SendArgs {
    /// The queue: a name, or a path (with '/') for a durable queue
    #[arg(value_name = "NAME", value_parser = parse_location)]
    queue: Location,
    /// The message type, 1 or more
    #[arg(value_name = "TYPE", value_parser = clap::value_parser!(i64).range(1..))]
    mtype: i64,
    /// The message text (or use --stdin)
    #[arg(value_name = "MESSAGE", required_unless_present = "stdin", conflicts_with = "stdin")]
    message: Option<String>,
    /// Send the bytes read from standard input (to end-of-file) as the message
    #[arg(long)]
    stdin: bool,
    /// Do not wait if the queue is full: exit with status 2 (IPC_NOWAIT)
    #[arg(long, conflicts_with = "timeout")]
    nowait: bool,
    /// Wait at most this long for room, then exit with status 2
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
}

/// Options of `ipckit mq recv`.
#[derive(Debug, Args)]
struct RecvArgs {
    /// The queue: a name, or a path (with '/') for a durable queue
    #[arg(value_name = "NAME", value_parser = parse_location)]
    queue: Location,
    /// Which message: 0 the first, T > 0 the first of type T, -T the lowest type <= T first
    #[arg(long = "type", value_name = "T", default_value_t = 0, allow_negative_numbers = true)]
    mtype: i64,
    /// With --type T > 0: take the first message NOT of type T (MSG_EXCEPT)
    #[arg(long)]
    except: bool,
    /// Cut a message longer than --max to --max bytes instead of failing (MSG_NOERROR)
    #[arg(long)]
    truncate: bool,
    /// The receive buffer: longest message text accepted (default: the queue's maximum message)
    #[arg(long, value_name = "BYTES")]
    max: Option<usize>,
    /// Do not wait if no message matches: exit with status 2 (IPC_NOWAIT)
    #[arg(long, conflicts_with = "timeout")]
    nowait: bool,
    /// Wait at most this long for a matching message, then exit with status 2
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Print the text as hexadecimal bytes instead of UTF-8
    #[arg(long)]
    hex: bool,
}

/// Options of `ipckit mq stat`.
#[derive(Debug, Args)]
struct StatArgs {
    /// The queue: a name, or a path (with '/') for a durable queue
    #[arg(value_name = "NAME", value_parser = parse_location)]
    queue: Location,
    /// Print one JSON object (times in seconds since the epoch, 0 = never; pids 0 = none)
    #[arg(long)]
    json: bool,
}

/// Options of `ipckit mq rm`.
#[derive(Debug, Args)]
struct RmArgs {
    /// The queue: a name, or a path (with '/') for a durable queue
    #[arg(value_name = "NAME", value_parser = parse_location)]
    queue: Location,
}

/// Runs an `ipckit mq` command.
///
/// # Errors
///
/// A [`Failure`] with a one-line message; [`Failure::would_block`] when
/// `--nowait` or `--timeout` stopped the operation.
pub fn run(args: MqArgs) -> Result<()> {
    match args.command {
        MqCommand::Create(a) => create(&a),
        MqCommand::Send(a) => send(a),
        MqCommand::Recv(a) => recv(&a),
        MqCommand::Stat(a) => stat(&a),
        MqCommand::Rm(a) => rm(&a),
    }
}

/// `"queue jobs"`: how messages name the queue.
fn what(q: &Location) -> String {
    format!("queue {q}")
}

/// Opens the queue for `access`.
fn open(q: &Location, access: Access) -> Result<MessageQueue> {
    match q {
        Location::Shm(name) => MessageQueue::open(name, access),
        Location::File(path) => MessageQueue::open_durable(path, access, Flush::EveryOperation),
    }
    .map_err(|e| object::failure(&what(q), &e))
}

fn create(a: &CreateArgs) -> Result<()> {
    let max_message = a.max_message.unwrap_or(QueueConfig::default().max_message.min(a.capacity));
    if max_message > a.capacity {
        fail!(
            "{}: --max-message {max_message} is larger than --capacity {}: it could never be sent",
            what(&a.queue),
            a.capacity
        );
    }
    let config = QueueConfig { capacity: a.capacity, max_message, max_capacity: a.capacity, mode: a.mode };
    let made = match &a.queue {
        Location::Shm(name) => MessageQueue::create(name, config),
        Location::File(path) => MessageQueue::create_durable(path, config, Flush::EveryOperation),
    };
    made.map(drop).map_err(|e| object::failure(&what(&a.queue), &e))
}

/// Why a send did not happen, whichever form was used.
enum SendFail {
    WouldBlock,
    Removed,
    TooLarge { len: usize, max: usize },
    Io(std::io::Error),
}

impl<T> From<TrySendError<T>> for SendFail {
    fn from(e: TrySendError<T>) -> Self {
        match e {
            TrySendError::Full(_) => SendFail::WouldBlock,
            TrySendError::Disconnected(_) => SendFail::Removed,
            TrySendError::TooLarge { len, max, .. } => SendFail::TooLarge { len, max },
            TrySendError::Io { source, .. } => SendFail::Io(source),
        }
    }
}

impl<T> From<SendTimeoutError<T>> for SendFail {
    fn from(e: SendTimeoutError<T>) -> Self {
        match e {
            SendTimeoutError::Timeout(_) => SendFail::WouldBlock,
            SendTimeoutError::Disconnected(_) => SendFail::Removed,
            SendTimeoutError::TooLarge { len, max, .. } => SendFail::TooLarge { len, max },
            SendTimeoutError::Io { source, .. } => SendFail::Io(source),
        }
    }
}

impl<T> From<ipckit::SendError<T>> for SendFail {
    fn from(e: ipckit::SendError<T>) -> Self {
        match e {
            ipckit::SendError::Disconnected(_) => SendFail::Removed,
            ipckit::SendError::TooLarge { len, max, .. } => SendFail::TooLarge { len, max },
            ipckit::SendError::Io { source, .. } => SendFail::Io(source),
        }
    }
}

fn send(a: SendArgs) -> Result<()> {
    let data = match a.message {
        Some(text) => text.into_bytes(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading the message from standard input")?;
            bytes
        }
    };
    let q = open(&a.queue, Access::Write)?;
    let sent: Result<(), SendFail> = if a.nowait {
        q.try_send(a.mtype, &data).map_err(Into::into)
    } else if let Some(t) = a.timeout {
        q.send_timeout(a.mtype, &data, t).map_err(Into::into)
    } else {
        q.send(a.mtype, &data).map_err(Into::into)
    };
    let w = what(&a.queue);
    match sent {
        Ok(()) => Ok(()),
        Err(SendFail::WouldBlock) => Err(Failure::would_block(match a.timeout {
            Some(t) => format!("{w}: still full after {}: message not sent", fmt_secs(t)),
            None => format!("{w}: full: message not sent"),
        })),
        Err(SendFail::Removed) => fail!("{w}: removed"),
        Err(SendFail::TooLarge { len, max }) => {
            fail!("{w}: a message of {len} bytes exceeds the queue's maximum message of {max} bytes")
        }
        Err(SendFail::Io(e)) => fail!("{w}: {}", object::io_reason(&e)),
    }
}

/// Why a receive returned nothing, whichever form was used.
enum RecvFail {
    WouldBlock,
    Removed,
    TooLarge { len: usize, max: usize },
    Other(String),
}

macro_rules! recv_fail_from {
    ($ty:ident $(, $empty:ident)?) => {
        impl From<ipckit::$ty> for RecvFail {
            fn from(e: ipckit::$ty) -> Self {
                match e {
                    $(ipckit::$ty::$empty => RecvFail::WouldBlock,)?
                    ipckit::$ty::Disconnected => RecvFail::Removed,
                    ipckit::$ty::Frame(FrameError::TooLarge { len, max }) => RecvFail::TooLarge { len, max },
                    ipckit::$ty::Io(e) => RecvFail::Other(object::io_reason(&e)),
                    other => RecvFail::Other(other.to_string()),
                }
            }
        }
    };
}
recv_fail_from!(RecvError);
recv_fail_from!(TryRecvError, Empty);
recv_fail_from!(RecvTimeoutError, Timeout);

fn recv(a: &RecvArgs) -> Result<()> {
    let w = what(&a.queue);
    if a.except && a.mtype <= 0 {
        fail!("{w}: --except needs --type T with T > 0 (the first message not of type T)");
    }
    let q = open(&a.queue, Access::Read)?;
    let max = match a.max {
        Some(m) => m,
        None => q.stat().map_err(|e| object::failure(&w, &e))?.max_message,
    };
    let select = Select { mtype: a.mtype, except: a.except, truncate: a.truncate };
    let got: Result<(i64, Vec<u8>), RecvFail> = if a.nowait {
        q.try_recv(select, max).map_err(Into::into)
    } else if let Some(t) = a.timeout {
        q.recv_timeout(select, max, t).map_err(Into::into)
    } else {
        q.recv(select, max).map_err(Into::into)
    };
    let (mtype, text) = match got {
        Ok(m) => m,
        Err(RecvFail::WouldBlock) => {
            return Err(Failure::would_block(match a.timeout {
                Some(t) => format!("{w}: no message of that type within {}", fmt_secs(t)),
                None => format!("{w}: no message of that type"),
            }))
        }
        Err(RecvFail::Removed) => fail!("{w}: removed"),
        Err(RecvFail::TooLarge { len, max }) => fail!(
            "{w}: the message is {len} bytes, longer than the {max}-byte buffer (--max); \
             it stays queued (--truncate takes it cut to {max} bytes)"
        ),
        Err(RecvFail::Other(why)) => fail!("{w}: {why}"),
    };
    let shown = if a.hex {
        text.iter().map(|b| format!("{b:02x}")).collect::<String>()
    } else {
        String::from_utf8_lossy(&text).into_owned()
    };
    // The message is taken: failing to print it is an error (it is lost).
    object::print_line(&format!("{mtype}\t{shown}"), false)
}

fn stat(a: &StatArgs) -> Result<()> {
    let w = what(&a.queue);
    let q = open(&a.queue, Access::Read)?;
    let s = q.stat().map_err(|e| object::failure(&w, &e))?;
    let text = if a.json { stat_json(&a.queue, &s) } else { stat_text(&a.queue, &s) };
    object::print_line(&text, true)
}

/// `ipckit mq stat` as lines of `field  value`.
fn stat_text(q: &Location, s: &QueueStat) -> String {
    let (octal, rwx) = fmt_perms(s.owner.mode);
    let by = |pid: u32| if pid == 0 { String::new() } else { format!(" by pid {pid}") };
    let lines = [
        ("queue", if q.is_durable() { format!("{q} (durable, in a file)") } else { q.to_string() }),
        ("messages", s.messages.to_string()),
        ("bytes", format!("{} of {} (capacity, msg_qbytes)", s.bytes, s.capacity)),
        ("max message", format!("{} bytes", s.max_message)),
        ("last send", format!("{}{}", fmt_time(s.send_time), by(s.last_sender))),
        ("last receive", format!("{}{}", fmt_time(s.recv_time), by(s.last_receiver))),
        ("last change", fmt_time(s.change_time)),
        ("owner", object::fmt_user(s.owner.uid)),
        ("group", object::fmt_group(s.owner.gid)),
        ("perms", format!("{octal} ({rwx})")),
        ("creator", format!("{}, {}", object::fmt_user(s.creator.0), object::fmt_group(s.creator.1))),
    ];
    lines.iter().map(|(k, v)| format!("{k:<13} {v}")).collect::<Vec<_>>().join("\n")
}

/// `ipckit mq stat --json`: every [`QueueStat`] field, as `msqid_ds` names them where it can.
fn stat_json(q: &Location, s: &QueueStat) -> String {
    let (octal, _) = fmt_perms(s.owner.mode);
    serde_json::json!({
        "name": q.to_string(),
        "durable": q.is_durable(),
        "messages": s.messages,
        "bytes": s.bytes,
        "capacity": s.capacity,
        "max_message": s.max_message,
        "last_sender_pid": s.last_sender,
        "last_receiver_pid": s.last_receiver,
        "send_time": s.send_time,
        "recv_time": s.recv_time,
        "change_time": s.change_time,
        "uid": s.owner.uid,
        "gid": s.owner.gid,
        "owner": object::user_name(s.owner.uid),
        "group": object::group_name(s.owner.gid),
        "mode": s.owner.mode,
        "perms": octal,
        "cuid": s.creator.0,
        "cgid": s.creator.1,
    })
    .to_string()
}

fn rm(a: &RmArgs) -> Result<()> {
    let w = what(&a.queue);
    match &a.queue {
        Location::Shm(name) => MessageQueue::remove_name(name),
        Location::File(_) => {
            open(&a.queue, Access::Read).or_else(|_| open(&a.queue, Access::Write))?.remove()
        }
    }
    .map_err(|e| object::failure(&w, &e))
}
