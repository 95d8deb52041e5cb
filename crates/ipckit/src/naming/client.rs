//! The client side: register, look up, watch, list, and use mailboxes.

use std::path::Path;
use std::time::Duration;

use super::protocol::{self, Code, Entry, Envelope, Event, Policy, Reply, Request, PROTOCOL_VERSION};
use crate::connection::Connection;
use crate::error::{CallError, Error, Result};
use crate::message::Message;
use crate::rpc;
use crate::sys::{PeerCred, SocketKind};
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
#[derive(Debug)]
pub struct NameClient {
    rpc: rpc::Client,
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
        Ok(NameClient { rpc: rpc::Client::new(conn) })
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

    /// Registers service `name`. The name is this connection's until it is
    /// dropped (or the process exits or dies); clients that look it up
    /// arrive through [`Service::accept`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::InvalidName`], [`Error::LimitExceeded`].
    pub fn register(&self, name: &str, policy: Policy) -> Result<Service> {
        let events = self.ask_handle(Request::Register { name: name.to_owned(), policy })?;
        Ok(Service { name: name.to_owned(), events })
    }

    /// Looks service `name` up and returns a connection to it, if the
    /// caller's kernel credentials are allowed to use it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`].
    pub fn lookup(&self, name: &str) -> Result<Connection> {
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

/// A registered service: clients arrive here as connections.
#[derive(Debug)]
pub struct Service {
    name: String,
    events: Connection,
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
        let mut msg = self.events.recv_timeout(timeout).map_err(|e| match e {
            crate::RecvTimeoutError::Timeout => Error::Timeout,
            crate::RecvTimeoutError::Disconnected => {
                Error::NotListening("the naming server went away".into())
            }
            other => Error::Io(std::io::Error::other(other.to_string())),
        })?;
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
