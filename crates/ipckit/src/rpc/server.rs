//! The serving side of RPC.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::{Fault, RecvError, ReplyError};
use crate::link::{Reader, Writer};
use crate::message::Message;
use crate::sys::{self, Deadline, PeerCred};
use crate::unix::Listener;
use crate::wire::Kind;

/// How long a reply may wait for a client that does not read before the
/// client is abandoned (so one stuck client cannot block a server thread
/// forever, nor for this long again with every request it has queued).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct ClientConn {
    id: u64,
    reader: Reader,
    writer: Arc<Mutex<Writer>>,
    peer: Option<PeerCred>,
}

/// One request, to be answered with [`Request::reply`] (from any thread, in any order).
///
/// Dropping a request without replying leaves its caller to time out.
#[derive(Debug)]
pub struct Request {
    id: u64,
    client: u64,
    msg: Message,
    writer: Arc<Mutex<Writer>>,
    peer: Option<PeerCred>,
}

impl Request {
    /// The request's payload.
    pub fn bytes(&self) -> &[u8] {
        self.msg.bytes()
    }

    /// The request message (payload and handles).
    pub fn message(&mut self) -> &mut Message {
        &mut self.msg
    }

    /// Decodes the payload as a `T` (postcard).
    ///
    /// # Errors
    ///
    /// When the payload is not a valid `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(self.msg.bytes())
    }

    /// Which connection the request came on (unique for the server's life;
    /// see [`Server::closed`]).
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The caller's credentials as the kernel recorded them (`SO_PEERCRED`);
    /// `None` over pipes.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.peer
    }

    /// Sends the reply, waiting at most [`REPLY_TIMEOUT`] for the client to make room.
    ///
    /// # Errors
    ///
    /// [`ReplyError::Disconnected`] when the caller is gone, [`ReplyError::TooLarge`],
    /// [`ReplyError::Timeout`] when the client does not read, [`ReplyError::Io`].
    pub fn reply(self, reply: impl Into<Message>) -> Result<(), ReplyError> {
        self.reply_timeout(reply, REPLY_TIMEOUT)
    }

    /// Sends the reply, waiting at most `timeout` for the client to make room.
    ///
    /// A client that does not make room in time loses its connection (as one
    /// that sends garbage does): later replies to it fail at once with
    /// [`ReplyError::Disconnected`], and its calls end with `Disconnected`.
    ///
    /// # Errors
    ///
    /// As [`Request::reply`].
    pub fn reply_timeout(self, reply: impl Into<Message>, timeout: Duration) -> Result<(), ReplyError> {
        let reply = reply.into();
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let r = w.send(Kind::Reply, self.id, &reply, Deadline::after(timeout));
        if matches!(r, Err(Fault::Timeout)) {
            w.abandon();
        }
        r.map_err(ReplyError::from_fault)
    }

    /// Encodes `value` with postcard and sends it as the reply.
    ///
    /// # Errors
    ///
    /// As [`Request::reply`], plus [`ReplyError::Codec`].
    pub fn reply_typed<T: Serialize>(self, value: &T) -> Result<(), ReplyError> {
        let bytes = postcard::to_stdvec(value)?;
        self.reply(bytes)
    }
}

/// Receives requests from any number of client connections.
///
/// Give it a [`Listener`] ([`Server::with_listener`]) to accept clients as
/// they come, or [`Server::add`] connections by hand. A connection that sends
/// a malformed or oversized frame is closed and logged; the rest go on.
#[derive(Debug, Default)]
pub struct Server {
    listener: Option<Listener>,
    conns: Vec<ClientConn>,
    queue: VecDeque<Request>,
    next_id: u64,
    closed: Vec<u64>,
}

impl Server {
    /// A server with no connections yet.
    pub fn new() -> Self {
        Server::default()
    }

    /// A server accepting clients from `listener`.
    pub fn with_listener(listener: Listener) -> Self {
        Server { listener: Some(listener), ..Server::default() }
    }

    /// Serves one more connection.
    pub fn add(&mut self, conn: Connection) -> u64 {
        let Connection { reader, writer, peer } = conn;
        self.next_id += 1;
        let id = self.next_id;
        self.conns.push(ClientConn { id, reader, writer: Arc::new(Mutex::new(writer)), peer });
        id
    }

    /// The ids of the connections closed (by the client, or dropped for
    /// misbehaving) since the last call: what a server uses to release what
    /// a client held, as soon as it is gone.
    pub fn closed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.closed)
    }

    /// Closes connection `id` (a client over its limits, say). Requests from
    /// it already received can still be answered (the answer is dropped).
    pub fn disconnect(&mut self, id: u64) {
        if let Some(i) = self.conns.iter().position(|c| c.id == id) {
            self.drop_conn(i);
        }
    }

    /// The supplementary groups the client of connection `id` had when it
    /// connected (`SO_PEERGROUPS`), if the connection is open and the
    /// kernel tells.
    pub fn peer_groups_of(&self, id: u64) -> Option<Vec<u32>> {
        self.conns.iter().find(|c| c.id == id).and_then(|c| sys::peer_groups(c.reader.fd()))
    }

    /// The ids of the open connections.
    pub fn client_ids(&self) -> Vec<u64> {
        self.conns.iter().map(|c| c.id).collect()
    }

    /// The credentials of connection `id`, if it is open.
    pub fn peer_of(&self, id: u64) -> Option<PeerCred> {
        self.conns.iter().find(|c| c.id == id).and_then(|c| c.peer)
    }

    fn drop_conn(&mut self, i: usize) {
        let c = self.conns.remove(i);
        self.closed.push(c.id);
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.conns.len()
    }

    recv_forms!(Request);

    /// Answers every request with `handler` until no client is left (forever
    /// with a listener). Errors replying to one client are logged and skipped.
    ///
    /// # Errors
    ///
    /// As [`Server::recv`], except `Disconnected`, which ends the loop with `Ok`.
    pub fn serve(&mut self, mut handler: impl FnMut(&Request) -> Message) -> Result<(), RecvError> {
        loop {
            let req = match self.recv() {
                Ok(r) => r,
                Err(RecvError::Disconnected) => return Ok(()),
                Err(e) => return Err(e),
            };
            let reply = handler(&req);
            if let Err(e) = req.reply(reply) {
                tracing::debug!(error = %e, "reply not delivered");
            }
        }
    }

    fn recv_inner(&mut self, deadline: Deadline) -> Result<Request, Fault> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Ok(r);
            }
            if self.conns.is_empty() && self.listener.is_none() {
                return Err(Fault::Disconnected);
            }
            if self.conns.len() == 1 && self.listener.is_none() {
                // One client: wait in its receive (no poll set to build, and a
                // socket blocks in the kernel, which wakes faster than poll).
                match self.conns[0].reader.recv(deadline) {
                    Err(Fault::Timeout) => return Err(Fault::Timeout),
                    r => self.take(0, r),
                }
                continue;
            }
            let mut got = false;
            for i in (0..self.conns.len()).rev() {
                while self.conns.get(i).is_some_and(|c| c.reader.has_frame()) {
                    self.read_from(i);
                    got = true;
                }
            }
            if got {
                continue;
            }
            let fds = self.conns.iter().map(|c| c.reader.fd());
            let Some((ready, listener_ready)) =
                sys::wait_readable_any(fds, self.listener.as_ref().map(|l| l.as_fd()), deadline)?
            else {
                return Err(Fault::Timeout);
            };
            for &i in ready.iter().rev() {
                self.read_from(i);
            }
            if listener_ready {
                self.accept_all();
            }
        }
    }

    fn accept_all(&mut self) {
        let Some(l) = &self.listener else { return };
        let mut fresh = Vec::new();
        loop {
            match l.accept_raw() {
                Ok(Some(fd)) => fresh.push(Connection::from_socket(fd, l.kind(), l.max_message_size())),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            }
        }
        for c in fresh {
            self.add(c);
        }
    }

    /// Reads one frame from connection `i` without blocking; a connection
    /// that breaks the protocol is closed so the others go on.
    fn read_from(&mut self, i: usize) {
        let r = self.conns[i].reader.recv(Deadline::Now);
        self.take(i, r);
    }

    /// Queues what was read from connection `i`, or drops the connection.
    fn take(&mut self, i: usize, r: Result<crate::link::Frame, Fault>) {
        let c = &mut self.conns[i];
        match r {
            Ok(frame) if frame.kind == Kind::Request => {
                self.queue.push_back(Request {
                    id: frame.id,
                    client: c.id,
                    msg: frame.msg,
                    writer: c.writer.clone(),
                    peer: c.peer,
                });
            }
            Ok(frame) => {
                tracing::warn!(kind = frame.kind as u8, peer = ?c.peer, "closing a client that sent a non-request frame");
                self.drop_conn(i);
            }
            Err(Fault::Timeout) => {}
            Err(Fault::Disconnected) => {
                self.drop_conn(i);
            }
            Err(Fault::Frame(e)) if c.reader.mode().packet => {
                tracing::warn!(error = %e, peer = ?c.peer, "skipping a bad datagram");
            }
            Err(e) => {
                tracing::warn!(error = ?e, peer = ?c.peer, "closing a client that sent a bad frame");
                self.drop_conn(i);
            }
        }
    }
}
