//! The client side: register, look up, watch, list, and use mailboxes.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::protocol::{
    self, Code, Entry, EntryKind, Envelope, Event, Policy, Reply, Request, PROTOCOL_VERSION,
};
use super::table::{self, Found, ReadError, TableReader};
use crate::connection::Connection;
use crate::error::{CallError, Error, Result};
use crate::message::Message;
use crate::perm::{Access, Caller};
use crate::rpc;
use crate::sys::naming as sysn;
use crate::sys::{self, Deadline, PeerCred, PollEntry, Ready, SocketKind};
use crate::unix;

/// A connection to a naming server.
///
/// # Examples
///
/// ```
/// use ipckit::naming::{EmbeddedServer, NameClient, Policy, ServerConfig};
/// let path = std::env::temp_dir().join(format!("ipckit-doc-ns-{}.sock", std::process::id()));
/// let _server = EmbeddedServer::start(&path, ServerConfig::default())?;
/// let owner = NameClient::connect(&path)?;
/// let mut service = owner.register("draw", Policy::mode(0o666))?;
/// let client = NameClient::connect(&path)?;
/// let mut conn = client.lookup("draw")?;       // a connection straight to the service
/// let (mut incoming, who) = service.accept_timeout(std::time::Duration::from_secs(5))?;
/// assert_eq!(who.pid, std::process::id());
/// conn.send("circle")?;
/// assert_eq!(incoming.recv()?.bytes(), b"circle");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Fast paths
///
/// [`stat`](NameClient::stat), [`lookup`](NameClient::lookup) and
/// [`list`](NameClient::list) read the server's name table for this
/// caller's class, mapped read-only (fetched once, on first use), instead
/// of asking the server: a name the table shows is answered without a
/// round trip, and a service's connection is made straight to the
/// service's own socket. Anything the table cannot answer (a name it does
/// not show, a table that is stale, busy or malformed) goes to the server,
/// which gives the same answers as before.
#[derive(Debug)]
pub struct NameClient {
    rpc: rpc::Client,
    table: Mutex<TableState>,
}

#[derive(Debug, Default)]
enum TableState {
    #[default]
    Unfetched,
    Mapped(Arc<TableReader>),
    /// The server has none for us (or gave a bad one): ask it every time.
    Refused,
}

fn call_error(e: CallError) -> Error {
    match e {
        CallError::Timeout => Error::Timeout,
        CallError::Disconnected => Error::NotListening("the naming server went away".into()),
        CallError::Frame(f) => Error::Frame(f),
        CallError::Io(e) => Error::Io(e),
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}

fn failure(code: Code, message: String, server_version: u32) -> Error {
    match code {
        Code::NotFound => Error::NotFound(message),
        Code::PermissionDenied => Error::PermissionDenied(message),
        Code::AlreadyExists => Error::AlreadyExists(message),
        Code::InvalidName => Error::InvalidName { name: message, why: "refused by the naming server" },
        Code::VersionMismatch => Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: server_version },
        Code::LimitExceeded => Error::LimitExceeded(message),
        Code::Timeout => Error::Timeout,
        Code::Full => Error::LimitExceeded(message),
        Code::BadRequest | Code::Unavailable => Error::Io(std::io::Error::other(message)),
    }
}

impl NameClient {
    /// Connects to the server at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] / [`Error::NotListening`] when no server runs there.
    pub fn connect(path: impl AsRef<Path>) -> Result<NameClient> {
        let conn = unix::connect(path, SocketKind::Stream)?.with_max_message_size(1 << 20);
        Ok(NameClient { rpc: rpc::Client::new(conn), table: Mutex::new(TableState::Unfetched) })
    }

    /// Whether to use the name table (the default) or ask the server for
    /// every `stat`, `lookup` and `list` (and have every lookup brokered).
    pub fn with_table(self, use_table: bool) -> Self {
        let state = if use_table { TableState::Unfetched } else { TableState::Refused };
        *self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        self
    }

    /// The name table, fetched from the server on first use.
    fn table(&self) -> Option<Arc<TableReader>> {
        let mut state = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*state {
            TableState::Mapped(t) => return Some(t.clone()),
            TableState::Refused => return None,
            TableState::Unfetched => {}
        }
        let fetched = self.ask_fd(Request::Table).and_then(|fd| Ok(TableReader::open(fd)?));
        match fetched {
            Ok(t) => {
                let t = Arc::new(t);
                *state = TableState::Mapped(t.clone());
                Some(t)
            }
            // The server is unreachable: try again next time.
            Err(Error::NotListening(_) | Error::Timeout) => None,
            Err(e) => {
                tracing::debug!(error = %e, "no name table: asking the server every time");
                *state = TableState::Refused;
                None
            }
        }
    }

    /// Runs `read` on the name table; `None` when the table cannot answer
    /// (the caller then asks the server).
    fn read_table<T>(&self, read: impl Fn(&TableReader) -> std::result::Result<T, ReadError>) -> Option<T> {
        for _ in 0..2 {
            let t = self.table()?;
            match read(&t) {
                Ok(v) => return Some(v),
                Err(ReadError::Retired) => {
                    let mut state = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if matches!(&*state, TableState::Mapped(m) if Arc::ptr_eq(m, &t)) {
                        *state = TableState::Unfetched;
                    }
                }
                Err(ReadError::Stale | ReadError::Busy) => return None,
                Err(ReadError::Corrupt(why)) => {
                    tracing::warn!(
                        why,
                        server = t.server_pid(),
                        "the name table is malformed; asking the server"
                    );
                    return None;
                }
            }
        }
        None
    }

    /// Connects to the server at [`super::default_socket_path`].
    ///
    /// # Errors
    ///
    /// As [`NameClient::connect`].
    pub fn connect_default() -> Result<NameClient> {
        NameClient::connect(super::default_socket_path()?)
    }

    /// The server's credentials, from the kernel.
    pub fn server_cred(&self) -> Option<PeerCred> {
        self.rpc.peer_cred()
    }

    /// A duplicate of this client's connection to the server, for example
    /// to hand to a child ([`crate::spawn::Inherit::pass`]). Names
    /// registered over the connection still belong to the process that
    /// opened it, and go when that process exits even if a child keeps the
    /// connection open (the server watches it with a pidfd).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the descriptor cannot be duplicated.
    pub fn try_clone_socket(&self) -> Result<OwnedFd> {
        Ok(self.rpc.dup_fd()?)
    }

    fn ask(&self, request: Request, timeout: Duration) -> Result<(Reply, Message)> {
        let env = Envelope { version: PROTOCOL_VERSION, request };
        let msg = self.rpc.call_timeout(protocol::encode(&env), timeout).map_err(call_error)?;
        let reply: Reply = protocol::decode(msg.bytes()).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        match reply {
            Reply::Failed { code, message, server_version } => Err(failure(code, message, server_version)),
            other => Ok((other, msg)),
        }
    }

    fn ask_handle(&self, request: Request) -> Result<Connection> {
        let (reply, mut msg) = self.ask(request, self.rpc.timeout())?;
        match reply {
            Reply::Handle => msg.take::<Connection>(),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }

    fn ask_fd(&self, request: Request) -> Result<OwnedFd> {
        let (reply, mut msg) = self.ask(request, self.rpc.timeout())?;
        match reply {
            Reply::Handle => msg.take::<OwnedFd>(),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }

    /// Registers service `name`. The name is this connection's until it is
    /// dropped (or the process exits or dies); clients that look it up
    /// arrive through [`Service::accept`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::LimitExceeded`].
    pub fn register(&self, name: &str, policy: Policy) -> Result<Service> {
        // The service's own socket, which clients that may use the name
        // connect to directly (the server learns its address from the kernel).
        let listener = sysn::abstract_listen(random_address().as_bytes(), 4096)
            .map_err(|e| tracing::debug!(error = %e, "no direct socket: lookups are brokered"))
            .ok();
        let env = Envelope {
            version: PROTOCOL_VERSION,
            request: Request::Register { name: name.to_owned(), policy: policy.clone() },
        };
        let mut msg = Message::new(protocol::encode(&env));
        if let Some(l) = &listener {
            msg = msg.with(l.as_fd().try_clone_to_owned()?)?;
        }
        let mut reply = self.rpc.call_timeout(msg, self.rpc.timeout()).map_err(call_error)?;
        let events = match protocol::decode::<Reply>(reply.bytes()) {
            Ok(Reply::Handle) => reply.take::<Connection>()?,
            Ok(Reply::Failed { code, message, server_version }) => {
                return Err(failure(code, message, server_version))
            }
            other => return Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        };
        let direct = listener.map(|listener| Direct { listener, uid: sys::euid(), gid: sys::egid(), policy });
        Ok(Service { name: name.to_owned(), events, direct })
    }

    /// Looks service `name` up and returns a connection to it, if the
    /// caller's kernel credentials are allowed to use it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`].
    pub fn lookup(&self, name: &str) -> Result<Connection> {
        if let Some(Some(found)) = self.read_table(|t| t.get(name)) {
            if found.access & table::CAN_WRITE == 0 {
                return Err(Error::PermissionDenied(format!("{name}: permission denied")));
            }
            if found.entry.kind == EntryKind::Mailbox {
                return Err(Error::Io(std::io::Error::other(format!("{name} is a mailbox, not a service"))));
            }
            if let Some(conn) = direct_connect(&found, self.rpc.timeout()) {
                return Ok(conn);
            }
        }
        self.ask_handle(Request::Lookup { name: name.to_owned() })
    }

    /// Watches `name`: the returned [`Watch`] reports when it appears and
    /// disappears (an `Appeared` first if it exists now).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn watch(&self, name: &str) -> Result<Watch> {
        Ok(Watch { events: self.ask_handle(Request::Watch { name: name.to_owned() })? })
    }

    /// Every name the caller may see.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub fn list(&self) -> Result<Vec<Entry>> {
        if let Some(all) = self.read_table(TableReader::list) {
            return Ok(all.into_iter().map(|f| f.entry).collect());
        }
        match self.ask(Request::List, self.rpc.timeout())?.0 {
            Reply::Entries(e) => Ok(e),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }

    /// What the server knows of `name`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`].
    pub fn stat(&self, name: &str) -> Result<Entry> {
        if let Some(Some(found)) = self.read_table(|t| t.get(name)) {
            return Ok(found.entry);
        }
        match self.ask(Request::Stat { name: name.to_owned() }, self.rpc.timeout())?.0 {
            Reply::Entry(e) => Ok(e),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }

    /// Removes `name` (its owner, or root).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`].
    pub fn remove(&self, name: &str) -> Result<()> {
        self.ask(Request::Remove { name: name.to_owned() }, self.rpc.timeout()).map(|_| ())
    }

    /// Creates mailbox `name` holding up to `capacity` messages; it lives as
    /// long as this connection.
    ///
    /// # Errors
    ///
    /// As [`NameClient::register`].
    pub fn create_mailbox(&self, name: &str, policy: Policy, capacity: u32) -> Result<()> {
        self.ask(Request::CreateMailbox { name: name.to_owned(), policy, capacity }, self.rpc.timeout())
            .map(|_| ())
    }

    /// Sends `data` to mailbox `name`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::LimitExceeded`] when full.
    pub fn send(&self, name: &str, data: &[u8]) -> Result<()> {
        self.ask(Request::Send { name: name.to_owned(), data: data.to_vec() }, self.rpc.timeout()).map(|_| ())
    }

    /// Receives from mailbox `name`, waiting at most `timeout` for a message.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came, [`Error::NotFound`], [`Error::PermissionDenied`].
    pub fn recv(&self, name: &str, timeout: Duration) -> Result<Vec<u8>> {
        let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let (reply, _) =
            self.ask(Request::Recv { name: name.to_owned(), timeout_ms: ms }, timeout + self.rpc.timeout())?;
        match reply {
            Reply::Message(m) => Ok(m),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }
}

/// A fresh abstract socket name for a service: unguessable, so nobody can
/// take it first (and clients check who answers anyway).
fn random_address() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        h.finish()
    };
    format!("ipckit-svc-{:016x}{:016x}", word(), word())
}

/// Connects straight to a service's own socket, if it answers and is the
/// process the table names (uid and pid from `SO_PEERCRED`).
fn direct_connect(found: &Found, wait: Duration) -> Option<Connection> {
    let addr = found.addr.as_deref()?;
    let fd = match sysn::abstract_connect(addr, wait) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, name = %found.entry.name, "direct connect failed; asking the server");
            return None;
        }
    };
    let conn = Connection::from_socket(fd, SocketKind::Stream, crate::DEFAULT_MAX_MESSAGE);
    match conn.peer {
        Some(p) if p.uid == found.entry.uid && p.pid == found.entry.pid => Some(conn),
        other => {
            tracing::warn!(peer = ?other, name = %found.entry.name, "a service's socket is not its owner's");
            None
        }
    }
}

/// A service's own listening socket and the policy it applies there.
#[derive(Debug)]
struct Direct {
    listener: OwnedFd,
    uid: u32,
    gid: u32,
    policy: Policy,
}

impl Direct {
    /// The next client on the socket that the policy lets in; others are
    /// closed at once. `Ok(None)` when nobody is waiting.
    fn accept(&self) -> Result<Option<(Connection, PeerCred)>> {
        while let Some(fd) = sysn::accept_pending(self.listener.as_fd())? {
            let conn = Connection::from_socket(fd, SocketKind::Stream, crate::DEFAULT_MAX_MESSAGE);
            let Some(cred) = conn.peer else { continue };
            // Supplementary groups (one more system call) only when they can
            // change the answer.
            let mode = self.policy.mode;
            let groups_matter = cred.uid != self.uid
                && cred.gid != self.gid
                && ((mode >> 3) & 7 != mode & 7 || !self.policy.allow_gids.is_empty());
            let groups = if groups_matter {
                sys::peer_groups(conn.reader.fd()).unwrap_or_else(|| sys::groups_of(cred.pid))
            } else {
                Vec::new()
            };
            let caller = Caller { uid: cred.uid, gid: cred.gid, groups };
            if super::policy_allows(self.uid, self.gid, &self.policy, &caller, Access::Write) {
                return Ok(Some((conn, cred)));
            }
            tracing::info!(pid = cred.pid, uid = cred.uid, "refused a direct connection");
        }
        Ok(None)
    }
}

/// A registered service: clients arrive here as connections, brokered by
/// the server or straight on the service's own socket (where the service
/// applies the same policy to the caller's kernel credentials).
#[derive(Debug)]
pub struct Service {
    name: String,
    events: Connection,
    direct: Option<Direct>,
}

impl Service {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the next client: its connection and its credentials (which
    /// the naming server read from the kernel).
    ///
    /// # Errors
    ///
    /// [`Error::NotListening`] when the naming server went away.
    pub fn accept(&mut self) -> Result<(Connection, PeerCred)> {
        self.accept_timeout(Duration::from_secs(u64::from(u32::MAX)))
    }

    /// As [`Service::accept`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], otherwise as [`Service::accept`].
    pub fn accept_timeout(&mut self, timeout: Duration) -> Result<(Connection, PeerCred)> {
        let deadline = Instant::now().checked_add(timeout).map_or(Deadline::Never, Deadline::At);
        let Some(direct) = &self.direct else {
            let msg = self.events.recv_timeout(timeout).map_err(|e| match e {
                crate::RecvTimeoutError::Timeout => Error::Timeout,
                crate::RecvTimeoutError::Disconnected => {
                    Error::NotListening("the naming server went away".into())
                }
                other => Error::Io(std::io::Error::other(other.to_string())),
            })?;
            return Self::incoming(msg);
        };
        // Brokered clients come as messages on `events`, direct ones on the
        // listener: look at both without a system call wasted on an empty one.
        let mut events_ready = self.events.reader.has_frame();
        loop {
            if events_ready {
                match self.events.try_recv() {
                    Ok(msg) => return Self::incoming(msg),
                    Err(crate::TryRecvError::Empty) => {}
                    Err(crate::TryRecvError::Disconnected) => {
                        return Err(Error::NotListening("the naming server went away".into()))
                    }
                    Err(other) => return Err(Error::Io(std::io::Error::other(other.to_string()))),
                }
            }
            if let Some(got) = direct.accept()? {
                return Ok(got);
            }
            let events = self.events.reader.fd();
            let mut set =
                [PollEntry::from_borrowed_fd(events, Ready::IN), PollEntry::new(&direct.listener, Ready::IN)];
            if sys::wait_many(&mut set, deadline)? == 0 {
                return Err(Error::Timeout);
            }
            events_ready = !set[0].revents().is_empty();
        }
    }

    fn incoming(mut msg: Message) -> Result<(Connection, PeerCred)> {
        match protocol::decode::<Event>(msg.bytes()) {
            Ok(Event::Incoming { pid, uid, gid }) => {
                Ok((msg.take::<Connection>()?, PeerCred { pid, uid, gid }))
            }
            other => Err(Error::Io(std::io::Error::other(format!("unexpected event {other:?}")))),
        }
    }
}

/// What a [`Watch`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameEvent {
    /// The name is registered.
    Appeared(String),
    /// The name went away.
    Disappeared(String),
}

/// Notifications about a name.
#[derive(Debug)]
pub struct Watch {
    events: Connection,
}

impl Watch {
    /// Waits at most `timeout` for the next change.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`]; [`Error::NotListening`] when the server went away.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<NameEvent> {
        let msg = self.events.recv_timeout(timeout).map_err(|e| match e {
            crate::RecvTimeoutError::Timeout => Error::Timeout,
            _ => Error::NotListening("the naming server went away".into()),
        })?;
        match protocol::decode::<Event>(msg.bytes()) {
            Ok(Event::Appeared { name }) => Ok(NameEvent::Appeared(name)),
            Ok(Event::Disappeared { name }) => Ok(NameEvent::Disappeared(name)),
            other => Err(Error::Io(std::io::Error::other(format!("unexpected event {other:?}")))),
        }
    }
}
