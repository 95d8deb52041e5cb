//! The naming server: one thread, one poll loop, every decision on
//! kernel-verified credentials.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::death::DeathWatcher;
use super::protocol::{
    self, Code, Entry, EntryKind, Envelope, Event, Policy, Reply, Request, PROTOCOL_VERSION,
};
use super::table::{self, Found, TableWriter, WriteError};
use crate::connection::Connection;
use crate::error::{Error, RecvTimeoutError, Result};
use crate::event::ProcessWatch;
use crate::message::Message;
use crate::perm::{Access, Caller};
use crate::rpc::{Request as RpcRequest, Server};
use crate::sys::{self, PeerCred, SocketKind};
use crate::unix::Listener;

/// Limits that protect the server (and its other clients) from a bad one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request (and mailbox message), in bytes.
    pub max_request: usize,
    /// Most names (services and mailboxes) one uid may hold.
    pub max_names_per_uid: usize,
    /// Most connections one uid may have open to the server.
    pub max_connections_per_uid: usize,
    /// A connection that holds nothing and says nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Most messages a mailbox may hold.
    pub max_mailbox_capacity: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request: 64 << 10,
            max_names_per_uid: 256,
            max_connections_per_uid: 128,
            idle_timeout: Duration::from_secs(30),
            max_mailbox_capacity: 4096,
        }
    }
}

enum Body {
    Service { events: Connection },
    Mailbox { queue: VecDeque<Vec<u8>>, capacity: u32 },
}

struct Named {
    entry: Entry,
    policy: Policy,
    owner: u64,
    /// The pidfd watch on the registering process (see [`DeathWatcher`]).
    watch: Option<u64>,
    /// The service's own listening socket (an abstract name), for direct connects.
    addr: Option<Vec<u8>>,
    body: Body,
}

/// One visibility class: callers with the same kernel-verified uid, gid and
/// groups (root is one class), and the table of what they may see.
type ClassKey = (u32, u32, Vec<u32>);

fn class_key(c: &Caller) -> ClassKey {
    if c.uid == 0 {
        return (0, 0, Vec::new());
    }
    let mut g = c.groups.clone();
    g.sort_unstable();
    g.dedup();
    (c.uid, c.gid, g)
}

struct ClassTable {
    caller: Caller,
    writer: TableWriter,
    users: usize,
}

/// What a reply carries besides its bytes.
enum Attach {
    Conn(Connection),
    Fd(OwnedFd),
}

struct ClientInfo {
    uid: u32,
    last_seen: Instant,
}

struct PendingRecv {
    name: String,
    req: RpcRequest,
    deadline: Instant,
}

/// The naming server. Run it in a process of its own (`ipckit serve`) or
/// embedded in a thread ([`EmbeddedServer`]).
pub struct NameServer {
    rpc: Server,
    path: PathBuf,
    config: ServerConfig,
    names: BTreeMap<String, Named>,
    clients: HashMap<u64, ClientInfo>,
    watchers: Vec<(String, Connection)>,
    pending: Vec<PendingRecv>,
    last_sweep: Instant,
    last_beat: Instant,
    tables: HashMap<ClassKey, ClassTable>,
    /// Which class's table each client connection was given.
    client_class: HashMap<u64, ClassKey>,
    deaths: DeathWatcher,
    /// The connection on which `deaths` reports (not a client).
    deaths_id: u64,
    next_watch: u64,
}

impl std::fmt::Debug for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameServer").field("path", &self.path).field("names", &self.names.len()).finish()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The caller's identity: uid and gid from `SO_PEERCRED`, supplementary
/// groups from `SO_PEERGROUPS` (both as the kernel recorded them when the
/// client connected), or from `/proc/<pid>/status` where that is missing.
fn caller_of(cred: PeerCred, groups: Option<Vec<u32>>) -> Caller {
    Caller { uid: cred.uid, gid: cred.gid, groups: groups.unwrap_or_else(|| sys::groups_of(cred.pid)) }
}

fn allowed(named: &Named, caller: &Caller, want: Access) -> bool {
    super::policy_allows(named.entry.uid, named.entry.gid, &named.policy, caller, want)
}

/// `named` as `caller`'s class sees it in its table; `None` if it may not see it.
fn found_for(named: &Named, caller: &Caller) -> Option<Found> {
    if !allowed(named, caller, Access::Read) {
        return None;
    }
    let write = allowed(named, caller, Access::Write);
    Some(Found {
        entry: named.entry.clone(),
        access: table::CAN_READ | if write { table::CAN_WRITE } else { 0 },
        addr: if write { named.addr.clone() } else { None },
    })
}

/// A new table for `caller`'s class, holding every name it may see.
fn build_table(names: &BTreeMap<String, Named>, caller: &Caller) -> std::io::Result<TableWriter> {
    let visible: Vec<Found> = names.values().filter_map(|n| found_for(n, caller)).collect();
    let mut w = TableWriter::new(visible.len() * 2)?;
    for f in &visible {
        if let Err(WriteError::Full) = w.put(f) {
            return Err(std::io::Error::other("a new name table is full"));
        }
    }
    Ok(w)
}

fn fail(code: Code, message: impl Into<String>) -> Reply {
    Reply::Failed { code, message: message.into(), server_version: PROTOCOL_VERSION }
}

impl NameServer {
    /// Binds the server's socket at `path` (mode 0666: who may do what is
    /// decided per name, on the caller's kernel credentials).
    ///
    /// # Errors
    ///
    /// As [`Listener::bind`]: `AlreadyExists` when a server is running there.
    pub fn bind(path: impl AsRef<Path>, config: ServerConfig) -> Result<NameServer> {
        let path = path.as_ref().to_owned();
        let listener =
            Listener::bind(&path, SocketKind::Stream)?.with_max_message_size(config.max_request + 1024);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        let mut rpc = Server::with_listener(listener);
        let (deaths, deaths_conn) = DeathWatcher::start()?;
        let deaths_id = rpc.add(deaths_conn);
        Ok(NameServer {
            rpc,
            path,
            config,
            names: BTreeMap::new(),
            clients: HashMap::new(),
            watchers: Vec::new(),
            pending: Vec::new(),
            last_sweep: Instant::now(),
            last_beat: Instant::now(),
            tables: HashMap::new(),
            client_class: HashMap::new(),
            deaths,
            deaths_id,
            next_watch: 0,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `stop` becomes true (checked at least every 100 ms).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the listening socket fails.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        tracing::info!(path = %self.path.display(), "naming server listening");
        while !stop.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(100))?;
        }
        tracing::info!("naming server stopping");
        Ok(())
    }

    /// Handles what arrives within `wait`, then the housekeeping.
    fn step(&mut self, wait: Duration) -> Result<()> {
        let now = Instant::now();
        let wait =
            self.pending.iter().map(|p| p.deadline.saturating_duration_since(now)).fold(wait, Duration::min);
        match self.rpc.recv_timeout(wait) {
            Ok(req) => self.handle(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Io(e)) => return Err(Error::Io(e)),
            Err(e) => tracing::warn!(error = %e, "receive failed"),
        }
        for id in self.rpc.closed() {
            self.client_gone(id);
        }
        let now = Instant::now();
        if now.duration_since(self.last_beat) >= table::HEARTBEAT / 2 {
            self.last_beat = now;
            for t in self.tables.values() {
                t.writer.beat();
            }
        }
        // Housekeeping walks every client and watcher: do it every 100 ms
        // (or when a receive deadline is due), not after every request.
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= Duration::from_millis(100)
            || self.pending.iter().any(|p| p.deadline <= now)
        {
            self.last_sweep = now;
            self.expire();
        }
        Ok(())
    }

    fn handle(&mut self, mut req: RpcRequest) {
        let client = req.client_id();
        if client == self.deaths_id {
            if let Ok(token) = <[u8; 8]>::try_from(req.bytes()) {
                self.owner_died(u64::from_le_bytes(token));
            }
            let _ = req.reply(Vec::new());
            return;
        }
        let Some(cred) = req.peer_cred() else { return };
        let is_new = !self.clients.contains_key(&client);
        if is_new {
            let open = self.clients.values().filter(|c| c.uid == cred.uid).count();
            if open >= self.config.max_connections_per_uid && cred.uid != 0 {
                let _ = req
                    .reply(protocol::encode(&fail(Code::LimitExceeded, "too many connections for this uid")));
                self.rpc.disconnect(client);
                return;
            }
        }
        self.clients.insert(client, ClientInfo { uid: cred.uid, last_seen: Instant::now() });
        let env: Envelope = match protocol::decode(req.bytes()) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %e, pid = cred.pid, "malformed request; closing the connection");
                let _ =
                    req.reply(protocol::encode(&fail(Code::BadRequest, format!("malformed request: {e}"))));
                self.rpc.disconnect(client);
                return;
            }
        };
        if env.version != PROTOCOL_VERSION {
            let msg = format!("client speaks protocol {}, server speaks {PROTOCOL_VERSION}", env.version);
            let _ = req.reply(protocol::encode(&fail(Code::VersionMismatch, msg)));
            return;
        }
        let caller = caller_of(cred, self.rpc.peer_groups_of(client));
        // A service's own listening socket travels with its registration.
        let listener = match env.request {
            Request::Register { .. } => req.message().take::<OwnedFd>().ok(),
            _ => None,
        };
        let (reply, handle) = match env.request {
            Request::Recv { name, timeout_ms } => match self.recv(&name, &caller) {
                Ok(Some(data)) => (Reply::Message(data), None),
                Ok(None) if timeout_ms == 0 => (fail(Code::Timeout, "the mailbox is empty"), None),
                Ok(None) => {
                    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
                    self.pending.push(PendingRecv { name, req, deadline });
                    return;
                }
                Err(r) => (r, None),
            },
            other => self.dispatch(other, client, cred, &caller, listener),
        };
        let mut msg = Message::new(protocol::encode(&reply));
        if let Some(attach) = handle {
            let with = match attach {
                Attach::Conn(c) => msg.with(c),
                Attach::Fd(fd) => msg.with(fd),
            };
            match with {
                Ok(m) => msg = m,
                Err(e) => msg = Message::new(protocol::encode(&fail(Code::Unavailable, e.to_string()))),
            }
        }
        if let Err(e) = req.reply(msg) {
            tracing::debug!(error = %e, "reply not delivered");
        }
    }

    fn dispatch(
        &mut self,
        request: Request,
        client: u64,
        cred: PeerCred,
        caller: &Caller,
        listener: Option<OwnedFd>,
    ) -> (Reply, Option<Attach>) {
        let none = |r| (r, None);
        match request {
            Request::Register { name, policy } => {
                let addr = match listener.map(|fd| sys::naming::abstract_name_of_listener(fd.as_fd())) {
                    None => None,
                    Some(Ok(a)) if a.len() <= table::MAX_ADDR => Some(a),
                    Some(Ok(_)) => return none(fail(Code::BadRequest, "the service's address is too long")),
                    Some(Err(e)) => {
                        return none(fail(Code::BadRequest, format!("the service's socket: {e}")))
                    }
                };
                self.register(name, policy, client, cred, EntryKind::Service, 0, addr)
            }
            Request::CreateMailbox { name, policy, capacity } => {
                self.register(name, policy, client, cred, EntryKind::Mailbox, capacity, None)
            }
            Request::Table => match self.table_for(client, caller) {
                Ok(fd) => (Reply::Handle, Some(Attach::Fd(fd))),
                Err(e) => none(fail(Code::Unavailable, format!("no name table: {e}"))),
            },
            Request::Unregister { name } | Request::Remove { name } => {
                none(self.remove(&name, client, caller))
            }
            Request::Lookup { name } => {
                let (r, c) = self.lookup(&name, cred, caller);
                (r, c.map(Attach::Conn))
            }
            Request::Watch { name } => {
                let (r, c) = self.watch(name, caller);
                (r, c.map(Attach::Conn))
            }
            Request::List => none(Reply::Entries(
                self.names
                    .values()
                    .filter(|n| allowed(n, caller, Access::Read))
                    .map(|n| n.entry.clone())
                    .collect(),
            )),
            Request::Stat { name } => none(match self.names.get(&name) {
                Some(n) if allowed(n, caller, Access::Read) => Reply::Entry(n.entry.clone()),
                Some(_) => fail(Code::PermissionDenied, format!("{name}: permission denied")),
                None => fail(Code::NotFound, format!("{name}: not found")),
            }),
            Request::Send { name, data } => none(self.send(&name, data, caller)),
            Request::Recv { .. } => unreachable!("handled before"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        name: String,
        policy: Policy,
        client: u64,
        cred: PeerCred,
        kind: EntryKind,
        capacity: u32,
        addr: Option<Vec<u8>>,
    ) -> (Reply, Option<Attach>) {
        if let Err(e) = super::check_name(&name) {
            return (fail(Code::InvalidName, e.to_string()), None);
        }
        if self.names.contains_key(&name) {
            return (fail(Code::AlreadyExists, format!("{name}: already registered")), None);
        }
        let held = self.names.values().filter(|n| n.entry.uid == cred.uid).count();
        if held >= self.config.max_names_per_uid && cred.uid != 0 {
            return (fail(Code::LimitExceeded, "too many names for this uid"), None);
        }
        let (body, handle) = match kind {
            EntryKind::Service => match Connection::pair(SocketKind::Stream) {
                Ok((ours, theirs)) => (Body::Service { events: ours }, Some(theirs)),
                Err(e) => return (fail(Code::Unavailable, e.to_string()), None),
            },
            EntryKind::Mailbox => {
                if capacity == 0 || capacity > self.config.max_mailbox_capacity {
                    return (fail(Code::LimitExceeded, "mailbox capacity out of range"), None);
                }
                (Body::Mailbox { queue: VecDeque::new(), capacity }, None)
            }
        };
        // The name is the registering process's: watch it (pidfd), so the name
        // goes when it dies even if its connection lives on in a child.
        let watch = match ProcessWatch::new(cred.pid) {
            Ok(w) => {
                self.next_watch += 1;
                self.deaths.watch(self.next_watch, w);
                Some(self.next_watch)
            }
            Err(_) if !sys::process_alive(cred.pid) => {
                let msg = format!(
                    "the process that opened this connection (pid {}) has exited: \
                     register over a connection of your own",
                    cred.pid
                );
                return (fail(Code::Unavailable, msg), None);
            }
            Err(e) => {
                // No pidfd (an old kernel, or a descriptor limit): the name
                // still goes when the connection closes.
                tracing::warn!(error = %e, pid = cred.pid, "cannot watch the registering process");
                None
            }
        };
        let entry = Entry {
            name: name.clone(),
            kind,
            uid: cred.uid,
            gid: cred.gid,
            mode: policy.mode & 0o777,
            pid: cred.pid,
            created: now_secs(),
            last_activity: now_secs(),
            messages: 0,
            capacity,
        };
        tracing::info!(%name, ?kind, pid = cred.pid, uid = cred.uid, "registered");
        self.names.insert(name.clone(), Named { entry, policy, owner: client, watch, addr, body });
        self.publish(&name);
        self.notify(&name, true);
        (if handle.is_some() { Reply::Handle } else { Reply::Done }, handle.map(Attach::Conn))
    }

    fn remove(&mut self, name: &str, client: u64, caller: &Caller) -> Reply {
        match self.names.get(name) {
            None => fail(Code::NotFound, format!("{name}: not found")),
            Some(n) if n.owner != client && caller.uid != 0 && caller.uid != n.entry.uid => {
                fail(Code::PermissionDenied, format!("{name}: only its owner or root may remove it"))
            }
            Some(_) => {
                self.drop_name(name);
                Reply::Done
            }
        }
    }

    fn drop_name(&mut self, name: &str) {
        if let Some(gone) = self.names.remove(name) {
            tracing::info!(%name, "released");
            if let Some(t) = gone.watch {
                self.deaths.forget(t);
            }
            self.publish(name);
            self.notify(name, false);
            // Receivers waiting on a mailbox that is gone learn it at once.
            let (gone, keep): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.name == name);
            self.pending = keep;
            for p in gone {
                let _ = p.req.reply(protocol::encode(&fail(Code::NotFound, format!("{name}: removed"))));
            }
        }
    }

    fn lookup(&mut self, name: &str, cred: PeerCred, caller: &Caller) -> (Reply, Option<Connection>) {
        let Some(n) = self.names.get_mut(name) else {
            return (fail(Code::NotFound, format!("{name}: not found")), None);
        };
        if !allowed(n, caller, Access::Write) {
            tracing::info!(%name, uid = caller.uid, "lookup refused");
            return (fail(Code::PermissionDenied, format!("{name}: permission denied")), None);
        }
        let Body::Service { events } = &mut n.body else {
            return (fail(Code::BadRequest, format!("{name} is a mailbox, not a service")), None);
        };
        let (for_client, for_service) = match Connection::pair(SocketKind::Stream) {
            Ok(p) => p,
            Err(e) => return (fail(Code::Unavailable, e.to_string()), None),
        };
        let event = Message::new(protocol::encode(&Event::incoming(cred))).with(for_service);
        let sent = event
            .map_err(|e| e.to_string())
            .and_then(|m| events.send_timeout(m, Duration::from_millis(200)).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            return (fail(Code::Unavailable, format!("{name}: the service is not accepting ({e})")), None);
        }
        let now = now_secs();
        if n.entry.last_activity != now {
            n.entry.last_activity = now;
            self.publish(name);
        }
        (Reply::Handle, Some(for_client))
    }

    fn watch(&mut self, name: String, caller: &Caller) -> (Reply, Option<Connection>) {
        if let Err(e) = super::check_name(&name) {
            return (fail(Code::InvalidName, e.to_string()), None);
        }
        let (mut ours, theirs) = match Connection::pair(SocketKind::Stream) {
            Ok(p) => p,
            Err(e) => return (fail(Code::Unavailable, e.to_string()), None),
        };
        if self.names.get(&name).is_some_and(|n| allowed(n, caller, Access::Read)) {
            let _ = ours.try_send(protocol::encode(&Event::Appeared { name: name.clone() }));
        }
        self.watchers.push((name, ours));
        (Reply::Handle, Some(theirs))
    }

    fn notify(&mut self, name: &str, appeared: bool) {
        let event = if appeared {
            Event::Appeared { name: name.to_owned() }
        } else {
            Event::Disappeared { name: name.to_owned() }
        };
        let bytes = protocol::encode(&event);
        self.watchers.retain_mut(|(n, conn)| {
            n != name || conn.send_timeout(bytes.clone(), Duration::from_millis(50)).is_ok()
        });
    }

    fn send(&mut self, name: &str, data: Vec<u8>, caller: &Caller) -> Reply {
        let Some(n) = self.names.get_mut(name) else {
            return fail(Code::NotFound, format!("{name}: not found"));
        };
        if !allowed(n, caller, Access::Write) {
            return fail(Code::PermissionDenied, format!("{name}: permission denied"));
        }
        let Body::Mailbox { queue, capacity } = &mut n.body else {
            return fail(Code::BadRequest, format!("{name} is a service, not a mailbox"));
        };
        if queue.len() >= *capacity as usize {
            return fail(Code::Full, format!("{name}: the mailbox is full"));
        }
        n.entry.last_activity = now_secs();
        // A receiver already waiting gets it straight away.
        if let Some(i) = self.pending.iter().position(|p| p.name == name) {
            let p = self.pending.remove(i);
            if p.req.reply(protocol::encode(&Reply::Message(data.clone()))).is_ok() {
                return Reply::Done;
            }
        }
        let Some(Named { body: Body::Mailbox { queue, .. }, entry, .. }) = self.names.get_mut(name) else {
            return Reply::Done;
        };
        queue.push_back(data);
        entry.messages = queue.len() as u32;
        self.publish(name);
        Reply::Done
    }

    fn recv(&mut self, name: &str, caller: &Caller) -> std::result::Result<Option<Vec<u8>>, Reply> {
        let Some(n) = self.names.get_mut(name) else {
            return Err(fail(Code::NotFound, format!("{name}: not found")));
        };
        if !allowed(n, caller, Access::Read) {
            return Err(fail(Code::PermissionDenied, format!("{name}: permission denied")));
        }
        let Body::Mailbox { queue, .. } = &mut n.body else {
            return Err(fail(Code::BadRequest, format!("{name} is a service, not a mailbox")));
        };
        let got = queue.pop_front();
        n.entry.messages = queue.len() as u32;
        n.entry.last_activity = now_secs();
        self.publish(name);
        Ok(got)
    }

    /// The table of `caller`'s class (made on first use), for connection `client`.
    fn table_for(&mut self, client: u64, caller: &Caller) -> std::io::Result<OwnedFd> {
        let key = class_key(caller);
        if !self.tables.contains_key(&key) {
            let writer = build_table(&self.names, caller)?;
            self.tables.insert(key.clone(), ClassTable { caller: caller.clone(), writer, users: 0 });
        }
        let t = self.tables.get_mut(&key).expect("inserted above");
        let fd = t.writer.reader_fd()?;
        if self.client_class.insert(client, key).is_none() {
            t.users += 1;
        }
        Ok(fd)
    }

    /// Writes `name`'s current state (or its absence) into every class's table.
    fn publish(&mut self, name: &str) {
        let named = self.names.get(name);
        let mut full = Vec::new();
        for (key, t) in &mut self.tables {
            match named.and_then(|n| found_for(n, &t.caller)) {
                Some(f) => {
                    if let Err(WriteError::Full) = t.writer.put(&f) {
                        full.push(key.clone());
                    }
                }
                None => t.writer.remove(name),
            }
        }
        // A full table is replaced by a bigger one; its readers see it
        // retired and fetch the new one.
        for key in full {
            let Some(old) = self.tables.remove(&key) else { continue };
            old.writer.retire();
            match build_table(&self.names, &old.caller) {
                Ok(writer) => {
                    tracing::debug!(names = writer.len(), "name table grown");
                    self.tables.insert(key, ClassTable { writer, ..old });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot grow a name table; its clients ask the server");
                    self.client_class.retain(|_, k| *k != key);
                }
            }
        }
    }

    /// The registering process behind watch `token` exited: release its names.
    fn owner_died(&mut self, token: u64) {
        let owned: Vec<String> =
            self.names.iter().filter(|(_, n)| n.watch == Some(token)).map(|(k, _)| k.clone()).collect();
        for name in owned {
            tracing::info!(%name, "its registering process died");
            self.drop_name(&name);
        }
    }

    fn client_gone(&mut self, id: u64) {
        self.clients.remove(&id);
        if let Some(key) = self.client_class.remove(&id) {
            if let Some(t) = self.tables.get_mut(&key) {
                t.users -= 1;
                if t.users == 0 {
                    t.writer.retire();
                    self.tables.remove(&key);
                }
            }
        }
        let owned: Vec<String> =
            self.names.iter().filter(|(_, n)| n.owner == id).map(|(k, _)| k.clone()).collect();
        for name in owned {
            self.drop_name(&name);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.deadline <= now);
        self.pending = keep;
        for p in due {
            let _ = p.req.reply(protocol::encode(&fail(Code::Timeout, "no message arrived in time")));
        }
        // Watchers whose far end closed.
        self.watchers
            .retain_mut(|(_, conn)| !matches!(conn.try_recv(), Err(crate::TryRecvError::Disconnected)));
        // Connections that hold nothing, wait for nothing and say nothing
        // (a connection that never said anything is timed from when we first saw it).
        for id in self.rpc.client_ids() {
            if id != self.deaths_id && !self.clients.contains_key(&id) {
                let uid = self.rpc.peer_of(id).map_or(u32::MAX, |c| c.uid);
                let open = self.clients.values().filter(|c| c.uid == uid).count();
                if open >= self.config.max_connections_per_uid && uid != 0 {
                    tracing::warn!(uid, "too many connections for this uid; closing one");
                    self.rpc.disconnect(id);
                    continue;
                }
                self.clients.insert(id, ClientInfo { uid, last_seen: now });
            }
        }
        let waiting: Vec<u64> = self.pending.iter().map(|p| p.req.client_id()).collect();
        let idle: Vec<u64> = self
            .clients
            .iter()
            .filter(|(id, c)| {
                now.duration_since(c.last_seen) > self.config.idle_timeout
                    && !self.names.values().any(|n| n.owner == **id)
                    && !self.client_class.contains_key(id)
                    && !waiting.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            tracing::info!(client = id, "closing an idle connection");
            self.clients.remove(&id);
            self.rpc.disconnect(id);
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        // Readers of our tables ask the server from now on (and learn it is gone).
        for t in self.tables.values() {
            t.writer.retire();
        }
    }
}

/// A naming server running on a thread of this process, stopped on drop.
#[derive(Debug)]
pub struct EmbeddedServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl EmbeddedServer {
    /// Starts a server at `path` on a thread.
    ///
    /// # Errors
    ///
    /// As [`NameServer::bind`].
    pub fn start(path: impl AsRef<Path>, config: ServerConfig) -> Result<EmbeddedServer> {
        let mut server = NameServer::bind(path, config)?;
        let path = server.path().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("ipckit-naming".into()).spawn(move || {
            if let Err(e) = server.run(&flag) {
                tracing::error!(error = %e, "embedded naming server failed");
            }
        })?;
        Ok(EmbeddedServer { stop, thread: Some(thread), path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
