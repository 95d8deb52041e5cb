//! Async integration (feature `tokio`): a [`Connection`] driven by the tokio
//! reactor instead of a blocked thread.
//!
//! [`AsyncConnection`] wraps any `Connection` (a UNIX stream or seqpacket
//! socket, a pair of pipes; from [`crate::unix::connect`],
//! [`crate::unix::Listener::accept`], [`Connection::pair`],
//! [`crate::pipe::duplex`] or a handle inherited at spawn) and speaks the
//! same frames, so its peer may be a blocking `Connection` in another
//! process. `send` and `recv` wait with `epoll` through
//! [`tokio::io::unix::AsyncFd`]; every read and write underneath is the
//! blocking connection's own code asked not to wait (`MSG_DONTWAIT`,
//! `RWF_NOWAIT`), so framing, size limits, handle passing and peer
//! credentials behave exactly as they do there.
//!
//! Timeouts are tokio's: wrap a call in [`tokio::time::timeout`].
//! [`AsyncConnection::recv`] is cancel-safe (a frame read in part stays
//! buffered for the next call). [`AsyncConnection::send`] is not: a send
//! dropped after part of its frame went out leaves a byte stream without
//! a frame boundary, so the connection refuses further sends
//! (`Disconnected`) rather than sending garbage; a send dropped before
//! any byte went out changes nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ipckit::aio::AsyncConnection;
//! use ipckit::{Connection, SocketKind};
//! let (a, mut b) = Connection::pair(SocketKind::Stream)?;
//! let mut a = AsyncConnection::new(a)?;
//! std::thread::spawn(move || {
//!     let m = b.recv().unwrap();
//!     b.send(m).unwrap();
//! });
//! a.send("ping").await?;
//! let reply = tokio::time::timeout(std::time::Duration::from_secs(5), a.recv()).await??;
//! assert_eq!(reply.bytes(), b"ping");
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::connection::Connection;
use crate::error::{CallError, Fault, FrameError, RecvError, ReplyError, SendError};
use crate::link::{frame_fds, Frame};
use crate::message::Message;
use crate::sys::{Deadline, PeerCred};
use crate::unix::Listener;
use crate::wire::Kind;

/// A shared descriptor, as tokio registers it.
#[derive(Debug)]
struct Fd(Arc<OwnedFd>);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers a descriptor with the current runtime's reactor.
fn register(fd: Arc<OwnedFd>, interest: Interest) -> std::io::Result<AsyncFd<Fd>> {
    // SAFETY: `Fd` holds a strong reference to the `OwnedFd`, so the
    // descriptor stays open, and is the same one, for as long as the
    // `AsyncFd` owns it (tokio's requirement); `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Fd(fd), interest) }.map_err(|e| e.into_parts().1)
}

/// A [`Connection`] whose `send` and `recv` are `async`: see the module docs.
#[derive(Debug)]
pub struct AsyncConnection {
    conn: Connection,
    /// The descriptor read from (for a socket, also written to).
    read: AsyncFd<Fd>,
    /// The descriptor written to, when it is another one (pipes).
    write: Option<AsyncFd<Fd>>,
}

impl AsyncConnection {
    /// Registers `conn`'s descriptors with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Io`] when the reactor refuses them.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as [`AsyncFd::new`]).
    pub fn new(conn: Connection) -> crate::Result<AsyncConnection> {
        let rfd = conn.reader.shared_fd();
        let wfd = conn.writer.shared_fd();
        let same = Arc::ptr_eq(&rfd, &wfd);
        let read = if same {
            register(rfd, Interest::READABLE | Interest::WRITABLE)?
        } else {
            register(rfd, Interest::READABLE)?
        };
        let write = if same { None } else { Some(register(wfd, Interest::WRITABLE)?) };
        Ok(AsyncConnection { conn, read, write })
    }

    /// The blocking connection back (its descriptors leave the reactor).
    pub fn into_inner(self) -> Connection {
        self.conn
    }

    /// The peer's pid, uid and gid as the kernel recorded them
    /// (`SO_PEERCRED`); `None` for pipes.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.conn.peer_cred()
    }

    /// The largest message this end sends or accepts.
    pub fn max_message_size(&self) -> usize {
        self.conn.max_message_size()
    }

    /// Sends a message, waiting (without blocking the thread) while the
    /// kernel's buffer is full.
    ///
    /// # Errors
    ///
    /// As [`Connection::send`]; the message is handed back.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<(), SendError<Message>> {
        let msg = msg.into();
        match self.send_inner(&msg).await {
            Ok(()) => Ok(()),
            Err(f) => Err(SendError::from_fault(f, msg)),
        }
    }

    async fn send_inner(&mut self, msg: &Message) -> Result<(), Fault> {
        self.send_frame(Kind::Data, 0, msg).await
    }

    /// Writes `msg` as one frame of `kind` numbered `id`.
    async fn send_frame(&mut self, kind: Kind, id: u64, msg: &Message) -> Result<(), Fault> {
        let mut out = self.conn.writer.outgoing(kind, id, msg)?;
        let fds = frame_fds(msg);
        // Dropped (cancelled) after part of the frame went out: the stream
        // has lost its frame boundary, so no later send may follow.
        let mut guard = MidFrame { conn: &mut self.conn, armed: false };
        let afd = self.write.as_ref().unwrap_or(&self.read);
        loop {
            let mut ready = afd.writable().await?;
            let before = out.written();
            let r = guard.conn.writer.write_some(&mut out, &msg.data, &fds, false);
            guard.armed = out.started();
            match r {
                Ok(true) => {
                    guard.armed = false;
                    return Ok(());
                }
                // Nothing taken: the kernel's buffer is full; wait for room.
                // (After a partial write, try again before waiting.)
                Ok(false) if out.written() == before => ready.clear_ready(),
                Ok(false) => {}
                Err(e) => {
                    guard.armed = false;
                    return Err(e);
                }
            }
        }
    }

    /// Receives the next message, waiting (without blocking the thread)
    /// until one is complete. Cancel-safe.
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`].
    pub async fn recv(&mut self) -> Result<Message, RecvError> {
        let frame = self.recv_frame().await.map_err(RecvError::from_fault)?;
        match frame.kind {
            Kind::Data => {
                let mut msg = frame.msg;
                msg.peer = self.conn.peer;
                Ok(msg)
            }
            other => Err(RecvError::from_fault(Fault::Frame(FrameError::Unexpected(other as u8)))),
        }
    }

    /// Receives the next RPC request (sent by a blocking
    /// [`crate::rpc::Client`] or an [`AsyncClient`]); answer it with
    /// [`AsyncConnection::reply`]. Cancel-safe.
    ///
    /// # Errors
    ///
    /// As [`AsyncConnection::recv`]; a frame that is not a request is a
    /// [`RecvError::Frame`].
    pub async fn recv_request(&mut self) -> Result<AsyncRequest, RecvError> {
        let frame = self.recv_frame().await.map_err(RecvError::from_fault)?;
        match frame.kind {
            Kind::Request => {
                let mut msg = frame.msg;
                msg.peer = self.conn.peer;
                Ok(AsyncRequest { id: frame.id, msg })
            }
            other => Err(RecvError::from_fault(Fault::Frame(FrameError::Unexpected(other as u8)))),
        }
    }

    /// Answers request `id` (from [`AsyncRequest::id`]).
    ///
    /// # Errors
    ///
    /// As [`crate::rpc::Request::reply`].
    pub async fn reply(&mut self, id: u64, reply: impl Into<Message>) -> Result<(), ReplyError> {
        let reply = reply.into();
        self.send_frame(Kind::Reply, id, &reply).await.map_err(ReplyError::from_fault)
    }

    async fn recv_frame(&mut self) -> Result<Frame, Fault> {
        loop {
            // A frame may already be buffered (read along with an earlier
            // one): then there is nothing to wait for.
            let mut ready =
                if self.conn.reader.has_frame() { None } else { Some(self.read.readable().await?) };
            match self.conn.reader.recv(Deadline::Now) {
                // The read that found nothing more hit EAGAIN: the readiness is stale.
                Err(Fault::Timeout) => {
                    if let Some(r) = ready.as_mut() {
                        r.clear_ready();
                    }
                }
                r => return r,
            }
        }
    }
}

/// A [`Listener`] whose `accept` is `async`: each accepted connection comes
/// as an [`AsyncConnection`] (with the peer's kernel credentials).
#[derive(Debug)]
pub struct AsyncListener {
    inner: AsyncFd<Listener>,
}

impl AsyncListener {
    /// Registers `listener` with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Io`] when the reactor refuses it.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(listener: Listener) -> crate::Result<AsyncListener> {
        // SAFETY: the `Listener` owns its descriptor and never replaces or
        // closes it while it lives, and the `AsyncFd` owns the listener:
        // the descriptor stays open and the same for the `AsyncFd`'s life.
        let inner = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncListener { inner })
    }

    /// The listener back (it leaves the reactor).
    pub fn into_inner(self) -> Listener {
        self.inner.into_inner()
    }

    /// The listener underneath (path, kind, limits).
    pub fn get_ref(&self) -> &Listener {
        self.inner.get_ref()
    }

    /// Waits for the next connection. Cancel-safe.
    ///
    /// # Errors
    ///
    /// As [`Listener::accept`].
    pub async fn accept(&self) -> crate::Result<AsyncConnection> {
        loop {
            let mut ready = self.inner.readable().await?;
            match self.inner.get_ref().try_accept()? {
                Some(conn) => return AsyncConnection::new(conn),
                None => ready.clear_ready(),
            }
        }
    }
}

/// An RPC request received by [`AsyncConnection::recv_request`].
#[derive(Debug)]
pub struct AsyncRequest {
    id: u64,
    msg: Message,
}

impl AsyncRequest {
    /// The number to answer it with ([`AsyncConnection::reply`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request's payload.
    pub fn bytes(&self) -> &[u8] {
        self.msg.bytes()
    }

    /// The whole message (payload, handles, the sender's credentials).
    pub fn message(&mut self) -> &mut Message {
        &mut self.msg
    }

    /// Decodes a typed request (postcard).
    ///
    /// # Errors
    ///
    /// When the bytes are not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(self.msg.bytes())
    }
}

/// The calling end of an RPC connection, async: one call at a time (`&mut
/// self`; open several connections for concurrent calls). Its peer may be a
/// blocking [`crate::rpc::Server`] or an async task answering with
/// [`AsyncConnection::recv_request`] / [`AsyncConnection::reply`]. Every call
/// has a timeout (default 5 s, as [`crate::rpc::Client`]): a server that
/// never answers cannot hang the caller. A call that timed out or was
/// cancelled after its request went out gets no reply; the reply, if it
/// comes later, is recognised by its number and dropped.
#[derive(Debug)]
pub struct AsyncClient {
    conn: AsyncConnection,
    next_id: u64,
    timeout: Duration,
    late_replies: u64,
}

impl AsyncClient {
    /// A client over `conn`, with the default timeout.
    pub fn new(conn: AsyncConnection) -> AsyncClient {
        AsyncClient { conn, next_id: 1, timeout: crate::rpc::DEFAULT_TIMEOUT, late_replies: 0 }
    }

    /// Sets the timeout of [`AsyncClient::call`].
    pub fn with_timeout(mut self, timeout: Duration) -> AsyncClient {
        self.timeout = timeout;
        self
    }

    /// The server's credentials as the kernel recorded them (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.conn.peer_cred()
    }

    /// How many replies arrived after their call had given up (dropped).
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }

    /// Sends `request` and waits for its reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// As [`crate::rpc::Client::call`].
    pub async fn call(&mut self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.call_timeout(request, self.timeout).await
    }

    /// As [`AsyncClient::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`crate::rpc::Client::call`].
    pub async fn call_timeout(
        &mut self,
        request: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let request = request.into();
        match tokio::time::timeout(timeout, self.call_inner(&request)).await {
            Ok(r) => r.map_err(CallError::from_fault),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// A typed call: `request` encoded with postcard, the reply decoded as `R`.
    ///
    /// # Errors
    ///
    /// As [`AsyncClient::call`], plus [`CallError::Codec`].
    pub async fn call_typed<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        request: &Q,
    ) -> Result<R, CallError> {
        let bytes = postcard::to_stdvec(request)?;
        let reply = self.call(bytes).await?;
        Ok(postcard::from_bytes(reply.bytes())?)
    }

    async fn call_inner(&mut self, request: &Message) -> Result<Message, Fault> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send_frame(Kind::Request, id, request).await?;
        loop {
            let frame = self.conn.recv_frame().await?;
            match frame.kind {
                Kind::Reply if frame.id == id => {
                    let mut msg = frame.msg;
                    msg.peer = self.conn.conn.peer;
                    return Ok(msg);
                }
                Kind::Reply => {
                    self.late_replies += 1;
                    tracing::debug!(id = frame.id, "dropping a reply whose call already gave up");
                }
                other => return Err(Fault::Frame(FrameError::Unexpected(other as u8))),
            }
        }
    }
}

/// Breaks the link if dropped while `armed` (part of a frame written).
struct MidFrame<'a> {
    conn: &'a mut Connection,
    armed: bool,
}

impl Drop for MidFrame<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!("an async send was dropped mid-frame; the link is now unusable");
            self.conn.writer.break_mid_frame();
        }
    }
}
