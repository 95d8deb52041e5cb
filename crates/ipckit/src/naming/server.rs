//! The naming server: one thread, one poll loop, every decision on
//! kernel-verified credentials.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::protocol::{
    self, Code, Entry, EntryKind, Envelope, Event, Policy, Reply, Request, PROTOCOL_VERSION,
};
use crate::connection::Connection;
use crate::error::{Error, RecvTimeoutError, Result};
use crate::message::Message;
use crate::perm::{self, Access, Caller, Owner};
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
    body: Body,
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
    let owner = Owner { uid: named.entry.uid, gid: named.entry.gid, mode: named.entry.mode };
    perm::allowed(&owner, caller, want)
        || named.policy.allow_uids.contains(&caller.uid)
        || named.policy.allow_gids.contains(&caller.gid)
        || caller.groups.iter().any(|g| named.policy.allow_gids.contains(g))
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
        Ok(NameServer {
            rpc: Server::with_listener(listener),
            path,
            config,
            names: BTreeMap::new(),
            clients: HashMap::new(),
            watchers: Vec::new(),
            pending: Vec::new(),
            last_sweep: Instant::now(),
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

    fn handle(&mut self, req: RpcRequest) {
        let Some(cred) = req.peer_cred() else { return };
        let client = req.client_id();
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
            other => self.dispatch(other, client, cred, &caller),
        };
        let mut msg = Message::new(protocol::encode(&reply));
        if let Some(conn) = handle {
            match msg.with(conn) {
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
    ) -> (Reply, Option<Connection>) {
        let none = |r| (r, None);
        match request {
            Request::Register { name, policy } => {
                self.register(name, policy, client, cred, EntryKind::Service, 0)
            }
            Request::CreateMailbox { name, policy, capacity } => {
                self.register(name, policy, client, cred, EntryKind::Mailbox, capacity)
            }
            Request::Unregister { name } | Request::Remove { name } => {
                none(self.remove(&name, client, caller))
            }
            Request::Lookup { name } => self.lookup(&name, cred, caller),
            Request::Watch { name } => self.watch(name, caller),
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

    fn register(
        &mut self,
        name: String,
        policy: Policy,
        client: u64,
        cred: PeerCred,
        kind: EntryKind,
        capacity: u32,
    ) -> (Reply, Option<Connection>) {
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
        self.names.insert(name.clone(), Named { entry, policy, owner: client, body });
        self.notify(&name, true);
        (if handle.is_some() { Reply::Handle } else { Reply::Done }, handle)
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
        if self.names.remove(name).is_some() {
            tracing::info!(%name, "released");
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
        n.entry.last_activity = now_secs();
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
        Ok(got)
    }

    fn client_gone(&mut self, id: u64) {
        self.clients.remove(&id);
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
            if !self.clients.contains_key(&id) {
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
