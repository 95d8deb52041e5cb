//! `ipckit serve`, `ls`, `stat`, `rm`, `call`, `send`, `recv`: the naming
//! server and every named ipckit object, from the shell.
//!
//! Names come from two places: the naming server (services and mailboxes,
//! listed with the caller's kernel credentials, so a caller sees only what
//! it may see) and shared memory (`/dev/shm/ipckit.*`: segments, queues,
//! semaphore sets, rings, RPC slots, publish-subscribe rings, pools,
//! events), whose owner, mode and creator come from the file and from
//! ipckit's header in it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ipckit::naming::{self, Entry, EntryKind, NameClient, NameServer, ServerConfig};
use ipckit::perm::{Access, Caller, Owner};
use ipckit::signal::{Signals, SIGINT, SIGTERM};
use ipckit::CallError;
use serde_json::json;

use crate::error::{fail, Context, Failure, Result};
use crate::object::{failure, fmt_perms, fmt_time, group_name, parse_secs, print_line, user_name};

/// Where shared-memory objects live.
const SHM_DIR: &str = "/dev/shm";
/// ipckit's header: magic `IPCKSHM1` (little-endian u64) at offset 0.
const MAGIC: u64 = u64::from_le_bytes(*b"IPCKSHM1");
/// Bytes of ipckit's header that `ls` reads (up to the creator pid).
const HEADER_READ: usize = 40;
/// "Wait forever" for `recv` without `--timeout` (the protocol's maximum, ~49 days).
const FOREVER: Duration = Duration::from_millis(u32::MAX as u64);

/// Which naming server to talk to.
#[derive(Debug, Args)]
pub struct SocketArg {
    /// The naming server's socket (default: $IPCKIT_NAMING_SOCKET, else
    /// $XDG_RUNTIME_DIR/ipckit/naming.sock, else /tmp/ipckit-<uid>/naming.sock)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket path: the flag, else the library's default.
    fn path(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => naming::default_socket_path().map_err(|e| failure("the naming server's socket", &e)),
        }
    }

    /// Connects to the naming server, with a clear error when none runs.
    fn connect(&self) -> Result<NameClient> {
        let path = self.path()?;
        NameClient::connect(&path).map_err(|e| match e {
            ipckit::Error::NotFound(_) | ipckit::Error::NotListening(_) => Failure::new(format!(
                "no naming server is running at {} (start one with `ipckit serve`)",
                path.display()
            )),
            other => failure(&format!("connecting to the naming server at {}", path.display()), &other),
        })
    }

    /// Connects if a server runs; `None` (after saying so on stderr) if not.
    fn try_connect(&self) -> Option<NameClient> {
        match self.connect() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("ipckit: {e}; showing shared-memory objects only");
                None
            }
        }
    }
}

/// Options of `ipckit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// One JSON array of objects instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// A name at the naming server, else a shared-memory object (without the `ipckit.` prefix)
    name: String,
    /// One JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// A name at the naming server, else a shared-memory object
    #[arg(required_unless_present = "stale", conflicts_with = "stale")]
    name: Option<String>,
    /// Remove every shared-memory object whose creating process is gone
    #[arg(long)]
    stale: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The service's name
    service: String,
    /// The request, sent as bytes
    payload: String,
    /// Seconds to wait for the reply (fractions allowed); exit status 2 when it runs out
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    timeout: Duration,
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The mailbox's name
    mailbox: String,
    /// The message, sent as bytes
    message: String,
    #[command(flatten)]
    socket: SocketArg,
}

/// Options of `ipckit recv`.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// The mailbox's name
    mailbox: String,
    /// Seconds to wait for a message (default: wait until one comes); exit status 2 when it runs out
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    #[command(flatten)]
    socket: SocketArg,
}

// ---------------------------------------------------------------- serve

/// Runs the naming server in the foreground until SIGTERM or SIGINT.
///
/// # Errors
///
/// When the socket cannot be bound (a server already runs there) or fails.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let path = args.socket.path()?;
    let mut server = NameServer::bind(&path, ServerConfig::default())
        .map_err(|e| failure(&format!("listening at {}", path.display()), &e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new(&[SIGTERM, SIGINT]).context("catching SIGTERM and SIGINT")?;
    let flag = stop.clone();
    let watcher = std::thread::Builder::new()
        .name("ipckit-serve-signals".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Ok(info) = signals.recv_timeout(Duration::from_millis(200)) {
                    let name = if info.signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    tracing::info!(signal = name, from_pid = info.pid, from_uid = info.uid, "stopping");
                    flag.store(true, Ordering::Relaxed);
                }
            }
            // `signals` drops here: the previous dispositions come back.
        })
        .context("starting the signal thread")?;
    tracing::info!(pid = std::process::id(), socket = %path.display(), "ipckit naming server started");
    let result = server.run(&stop);
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    drop(server); // removes the socket
    if path.exists() {
        let _ = std::fs::remove_file(&path);
    }
    tracing::info!(socket = %path.display(), "naming server stopped; socket removed");
    result.map_err(|e| failure("the naming server", &e))
}

// ---------------------------------------------------------------- objects

/// One live object, as `ls` shows it.
#[derive(Clone, Debug)]
struct Object {
    kind: &'static str,
    name: String,
    uid: u32,
    gid: u32,
    mode: u32,
    /// Bytes (shm objects) or messages waiting (mailboxes).
    size: Option<u64>,
    messages: Option<u32>,
    capacity: Option<u32>,
    /// Semaphores in a set.
    semaphores: Option<usize>,
    creator: Option<u32>,
    created: Option<u64>,
    last_activity: Option<u64>,
    stale: bool,
    /// Where it lives: `naming` or the shm file path.
    source: String,
}

impl Object {
    fn from_entry(e: &Entry) -> Object {
        let mailbox = e.kind == EntryKind::Mailbox;
        Object {
            kind: if mailbox { "mailbox" } else { "service" },
            name: e.name.clone(),
            uid: e.uid,
            gid: e.gid,
            mode: e.mode & 0o777,
            size: None,
            messages: mailbox.then_some(e.messages),
            capacity: mailbox.then_some(e.capacity),
            semaphores: None,
            creator: Some(e.pid),
            created: Some(e.created),
            last_activity: Some(e.last_activity),
            // The server drops a name the moment its owner's connection closes.
            stale: false,
            source: "naming server".to_owned(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "owner": user_name(self.uid),
            "gid": self.gid,
            "group": group_name(self.gid),
            "mode": format!("{:o}", self.mode),
            "size": self.size,
            "messages": self.messages,
            "capacity": self.capacity,
            "semaphores": self.semaphores,
            "creator_pid": self.creator,
            "created": self.created,
            "last_activity": self.last_activity,
            "stale": self.stale,
            "source": self.source,
        })
    }

    /// Whether the caller may see it (read permission, as `ipcs` shows).
    fn visible_to(&self, caller: &Caller) -> bool {
        ipckit::perm::allowed(&Owner { uid: self.uid, gid: self.gid, mode: self.mode }, caller, Access::Read)
    }
}

/// The kind recorded in an ipckit header.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        0 => "segment",
        1 => "rpc",
        2 => "ring",
        3 => "pool",
        4 => "pubsub",
        5 => "queue",
        6 => "semaphore",
        7 => "event",
        _ => "unknown",
    }
}

/// Whether process `pid` exists (a zombie counts: it has not been reaped).
fn process_alive(pid: u32) -> bool {
    pid != 0 && i32::try_from(pid).is_ok() && Path::new("/proc").join(pid.to_string()).exists()
}

/// Reads what `ls` needs of `/dev/shm/ipckit.<name>` without mapping it:
/// `fstat` for owner, mode and size, and ipckit's header when readable.
fn shm_object(name: &str) -> std::io::Result<Object> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(SHM_DIR).join(format!("{}{name}", ipckit::shm::PREFIX));
    let meta = std::fs::symlink_metadata(&path)?;
    let mut obj = Object {
        kind: "unknown",
        name: name.to_owned(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o777,
        size: Some(meta.size()),
        messages: None,
        capacity: None,
        semaphores: None,
        creator: None,
        created: None,
        last_activity: u64::try_from(meta.mtime()).ok(),
        stale: false,
        source: path.display().to_string(),
    };
    if !meta.is_file() {
        return Ok(obj);
    }
    let mut header = [0u8; HEADER_READ];
    let read = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_ok() && u64::from_le_bytes(header[0..8].try_into().expect("8 bytes")) == MAGIC {
        let u32_at = |off: usize| u32::from_le_bytes(header[off..off + 4].try_into().expect("4 bytes"));
        obj.kind = kind_name(u32_at(12));
        // ipckit's own owner and mode, as the library checks them.
        obj.uid = u32_at(24);
        obj.gid = u32_at(28);
        obj.mode = u32_at(32) & 0o777;
        let pid = u32_at(36);
        obj.creator = Some(pid);
        // Queues and semaphore sets outlive their creators by design (as
        // System V objects do, until removed): they are never stale.
        let persistent = matches!(u32_at(12), 5 | 6);
        obj.stale = !persistent && !process_alive(pid);
        add_sysv_stat(&mut obj);
    }
    Ok(obj)
}

/// For a queue or a semaphore set the caller may read, what `msgctl` /
/// `semctl` `IPC_STAT` say: messages waiting, semaphores, last activity.
fn add_sysv_stat(obj: &mut Object) {
    use ipckit::sysv::{MessageQueue, SemaphoreSet};
    if !obj.visible_to(&Caller::current()) {
        return;
    }
    match obj.kind {
        "queue" => {
            if let Ok(st) = MessageQueue::open(&obj.name, Access::Read).and_then(|q| q.stat()) {
                obj.messages = u32::try_from(st.messages).ok();
                let last = st.send_time.max(st.recv_time).max(st.change_time);
                obj.last_activity = Some(last).filter(|&t| t > 0).or(obj.last_activity);
            }
        }
        "semaphore" => {
            if let Ok(st) = SemaphoreSet::open(&obj.name, Access::Read).and_then(|s| s.stat()) {
                obj.semaphores = Some(st.count);
                let last = st.op_time.max(st.change_time);
                obj.last_activity = Some(last).filter(|&t| t > 0).or(obj.last_activity);
            }
        }
        _ => {}
    }
}

/// Every `ipckit.*` object in `/dev/shm`, sorted by name.
fn shm_objects() -> Result<Vec<Object>> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(SHM_DIR).context(format!("reading {SHM_DIR}"))?;
    for entry in dir.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_prefix(ipckit::shm::PREFIX)) else { continue };
        match shm_object(name) {
            Ok(obj) => out.push(obj),
            Err(e) => tracing::debug!(name, error = %e, "skipping a shm object that went away"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every object the caller may see: the naming server's names first.
fn all_objects(socket: &SocketArg) -> Result<Vec<Object>> {
    let mut objects = Vec::new();
    if let Some(client) = socket.try_connect() {
        let entries = client.list().map_err(|e| failure("listing the naming server's names", &e))?;
        objects.extend(entries.iter().map(Object::from_entry));
    }
    let caller = Caller::current();
    objects.extend(shm_objects()?.into_iter().filter(|o| o.visible_to(&caller)));
    Ok(objects)
}

// ---------------------------------------------------------------- ls, stat, rm

/// `ipckit ls`: the table (or JSON) of every live object the caller may see.
///
/// # Errors
///
/// When `/dev/shm` cannot be read or stdout is closed.
pub fn ls(args: &LsArgs) -> Result<()> {
    let objects = all_objects(&args.socket)?;
    if args.json {
        let list: Vec<_> = objects.iter().map(Object::json).collect();
        return print_line(&serde_json::Value::Array(list).to_string(), true);
    }
    let header = ["KIND", "NAME", "OWNER", "GROUP", "MODE", "SIZE/MSGS", "PID", "LAST ACTIVITY", "STALE"];
    let mut rows: Vec<[String; 9]> = vec![header.map(str::to_owned)];
    for o in &objects {
        let size = match (o.size, o.messages, o.capacity, o.semaphores) {
            (_, Some(m), Some(c), _) => format!("{m}/{c} msgs"),
            (_, Some(m), None, _) => format!("{m} msgs"),
            (_, _, _, Some(n)) => format!("{n} sems"),
            (Some(s), ..) => s.to_string(),
            _ => "-".to_owned(),
        };
        let activity = o.last_activity.map_or_else(|| "-".to_owned(), ago);
        rows.push([
            o.kind.to_owned(),
            o.name.clone(),
            user_name(o.uid),
            group_name(o.gid),
            fmt_perms(o.mode).0,
            size,
            o.creator.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            activity,
            if o.stale { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        print_line(line.trim_end(), true)?;
    }
    if objects.is_empty() {
        print_line("(no ipckit objects)", true)?;
    }
    Ok(())
}

/// `"12 s ago"`: the relative part of [`fmt_time`].
fn ago(secs: u64) -> String {
    let full = fmt_time(secs);
    match (full.find('('), full.rfind(')')) {
        (Some(a), Some(b)) if a < b => full[a + 1..b].to_owned(),
        _ => full,
    }
}

/// Finds `name`: at the naming server, else in shared memory.
fn find(name: &str, socket: &SocketArg) -> Result<Object> {
    let mut server_said = None;
    if let Some(client) = socket.try_connect() {
        match client.stat(name) {
            Ok(entry) => return Ok(Object::from_entry(&entry)),
            Err(ipckit::Error::NotFound(_)) => {}
            Err(e) => server_said = Some(e),
        }
    }
    let valid = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    match valid.then(|| shm_object(name)) {
        Some(Ok(obj)) if obj.visible_to(&Caller::current()) => Ok(obj),
        Some(Ok(_)) => fail!("{name}: permission denied"),
        _ => match server_said {
            Some(e) => Err(failure(name, &e)),
            None => fail!("{name}: not found (neither at the naming server nor in {SHM_DIR})"),
        },
    }
}

/// `ipckit stat NAME`.
///
/// # Errors
///
/// Not found, permission denied.
pub fn stat(args: &StatArgs) -> Result<()> {
    let o = find(&args.name, &args.socket)?;
    if args.json {
        return print_line(&o.json().to_string(), true);
    }
    let (octal, rwx) = fmt_perms(o.mode);
    let mut lines = vec![
        format!("name:          {}", o.name),
        format!("kind:          {}", o.kind),
        format!("where:         {}", o.source),
        format!("owner:         {} (uid {})", user_name(o.uid), o.uid),
        format!("group:         {} (gid {})", group_name(o.gid), o.gid),
        format!("mode:          {octal} ({rwx})"),
    ];
    if let Some(s) = o.size {
        lines.push(format!("size:          {s} bytes"));
    }
    match (o.messages, o.capacity) {
        (Some(m), Some(c)) => lines.push(format!("messages:      {m} waiting (capacity {c})")),
        (Some(m), None) => lines.push(format!("messages:      {m} waiting")),
        _ => {}
    }
    if let Some(n) = o.semaphores {
        lines.push(format!("semaphores:    {n}"));
    }
    if let Some(p) = o.creator {
        let state = if o.stale { "gone: the object is stale" } else { "alive" };
        lines.push(format!("creator pid:   {p} ({state})"));
    }
    if let Some(c) = o.created {
        lines.push(format!("created:       {}", fmt_time(c)));
    }
    if let Some(a) = o.last_activity {
        lines.push(format!("last activity: {}", fmt_time(a)));
    }
    print_line(&lines.join("\n"), true)
}

/// `ipckit rm NAME` / `ipckit rm --stale`.
///
/// # Errors
///
/// Not found, permission denied (only the owner or root may remove).
pub fn rm(args: &RmArgs) -> Result<()> {
    if args.stale {
        let mut removed = 0;
        let mut failed = Vec::new();
        for o in shm_objects()?.into_iter().filter(|o| o.stale) {
            match ipckit::shm::Segment::remove(&o.name) {
                Ok(()) => {
                    removed += 1;
                    let pid = o.creator.unwrap_or(0);
                    print_line(
                        &format!("removed {} {} (its creator, pid {pid}, is gone)", o.kind, o.name),
                        true,
                    )?;
                }
                Err(e) => failed.push(failure(&format!("{} {}", o.kind, o.name), &e).to_string()),
            }
        }
        if removed == 0 && failed.is_empty() {
            print_line("no stale objects", true)?;
        }
        if !failed.is_empty() {
            fail!("could not remove: {}", failed.join("; "));
        }
        return Ok(());
    }
    let Some(name) = &args.name else { fail!("name an object to remove, or use --stale") };
    if let Some(client) = args.socket.try_connect() {
        match client.remove(name) {
            Ok(()) => return print_line(&format!("removed {name} from the naming server"), true),
            Err(ipckit::Error::NotFound(_)) => {}
            Err(e) => return Err(failure(name, &e)),
        }
    }
    let obj = match shm_object(name) {
        Ok(o) => o,
        Err(_) => fail!("{name}: not found (neither at the naming server nor in {SHM_DIR})"),
    };
    ipckit::shm::Segment::remove(name).map_err(|e| failure(&format!("{} {name}", obj.kind), &e))?;
    print_line(&format!("removed {} {name} ({SHM_DIR}/{}{name})", obj.kind, ipckit::shm::PREFIX), true)
}

// ---------------------------------------------------------------- call, send, recv

/// `ipckit call SERVICE PAYLOAD`: one RPC through the naming server.
///
/// # Errors
///
/// Not found, permission denied, the service went away; a timeout exits 2.
pub fn call(args: &CallArgs) -> Result<()> {
    let client = args.socket.connect()?;
    let conn = client.lookup(&args.service).map_err(|e| failure(&format!("service {}", args.service), &e))?;
    let rpc = ipckit::rpc::Client::new(conn);
    match rpc.call_timeout(args.payload.as_bytes(), args.timeout) {
        Ok(reply) => print_line(&String::from_utf8_lossy(reply.bytes()), true),
        Err(CallError::Timeout) => Err(Failure::would_block(format!(
            "service {}: no reply within {}",
            args.service,
            crate::object::fmt_secs(args.timeout)
        ))),
        Err(CallError::Disconnected) => {
            fail!("service {}: it closed the connection without replying", args.service)
        }
        Err(e) => fail!("calling service {}: {e}", args.service),
    }
}

/// `ipckit send MAILBOX MESSAGE`.
///
/// # Errors
///
/// Not found, permission denied, full.
pub fn send(args: &SendArgs) -> Result<()> {
    let client = args.socket.connect()?;
    client
        .send(&args.mailbox, args.message.as_bytes())
        .map_err(|e| failure(&format!("mailbox {}", args.mailbox), &e))
}

/// `ipckit recv MAILBOX`: prints one message.
///
/// # Errors
///
/// Not found, permission denied; a timeout exits 2.
pub fn recv(args: &RecvArgs) -> Result<()> {
    let client = args.socket.connect()?;
    match client.recv(&args.mailbox, args.timeout.unwrap_or(FOREVER)) {
        Ok(bytes) => print_line(&String::from_utf8_lossy(&bytes), true),
        Err(ipckit::Error::Timeout) => Err(Failure::would_block(format!(
            "mailbox {}: no message within {}",
            args.mailbox,
            crate::object::fmt_secs(args.timeout.unwrap_or(FOREVER))
        ))),
        Err(e) => Err(failure(&format!("mailbox {}", args.mailbox), &e)),
    }
}
