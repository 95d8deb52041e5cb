//! Microkernel-style IPC: endpoints, badged capabilities held in
//! per-process tables, synchronous `call` / `reply` / `reply_recv` with a
//! one-shot reply capability, and capabilities transferred in messages.
//!
//! The model is seL4's, built on what a Linux process can hold and pass:
//!
//! - An [`Endpoint`] is the receive right of a rendezvous point, held by one
//!   process (its server). It [`mint`](Endpoint::mint)s send capabilities.
//! - A [`Cap`] is the right to send to (and call) one endpoint, with a
//!   **badge** and **rights** fixed by the endpoint when it minted it. Each
//!   minted capability is its own connected UNIX socket, and the endpoint
//!   keeps the badge and rights on its side of it: the receiver learns the
//!   badge of every message from *which* socket it came on, so a sender
//!   cannot forge one, and a holder cannot raise its rights. A capability
//!   is a descriptor, so it can be copied ([`Cap::try_clone`], same badge),
//!   inherited by a child ([`crate::spawn::Inherit`]) or sent in a message.
//! - [`Cap::call`] sends a request together with a fresh **one-shot reply
//!   capability** ([`ReplyCap`]: the other end of a new socket pair) and
//!   waits on it. The server answers with [`ReplyCap::reply`], which
//!   consumes it, or hands the reply capability to another process (it is
//!   transferable) to answer for it. A server that dies, or drops the reply
//!   capability unanswered, ends the call at once with `Disconnected`.
//! - [`Cap::send`] is the synchronous one-way send: it returns once the
//!   server has *received* the message (a rendezvous, as in seL4), not when
//!   it was buffered.
//! - [`Endpoint::recv`] takes the next message from any of its
//!   capabilities (round robin), with its badge, the sender's rights, the
//!   capabilities it carried and the reply capability of a call;
//!   [`Endpoint::reply_recv`] answers one call and waits for the next in one
//!   step, the server loop of a microkernel.
//! - Capabilities travel in messages only through a capability with the
//!   [`Rights::GRANT`] right: the endpoint refuses (and answers the sender
//!   with an error) a message carrying handles through one without it.
//! - A [`CSpace`] is a process's capability table: objects live in slots
//!   addressed by [`CPtr`]s (small integers), and received capabilities are
//!   installed into it, as in a microkernel's CNode.
//!
//! Fast path: a call to a server blocked in `recv` is one socket write that
//! wakes it and one write back; Linux does not let a process hand its time
//! slice to another, so "control straight to the receiver" is the kernel's
//! wake-up of the blocked server (measured in `cargo bench --bench
//! roundtrip` as the UNIX stream round trip). For the lowest latency between
//! two processes that can spin, use [`crate::shm::rpc`].
//!
//! ```
//! use ipckit::endpoint::{Endpoint, Rights};
//! let mut ep = Endpoint::new();
//! let mut cap = ep.mint(7, Rights::SEND)?;    // badge 7
//! let t = std::thread::spawn(move || cap.call("ping").unwrap());
//! let got = ep.recv()?;
//! assert_eq!((got.badge, got.message.bytes()), (7, &b"ping"[..]));
//! got.reply.unwrap().reply("pong")?;
//! assert_eq!(t.join().unwrap().bytes(), b"pong");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};

use crate::connection::Connection;
use crate::error::{CallError, Error, Fault, RecvError, ReplyError, Result, SendError};
use crate::message::{Handle, Message, Transferable};
use crate::sys::{Deadline, SocketKind};

/// What a capability allows, fixed when it is minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    /// Send and call.
    pub const SEND: Rights = Rights(1);
    /// Send and call with capabilities (handles) in the message.
    pub const GRANT: Rights = Rights(3);

    /// Whether these rights include `other`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The first byte of a message on a capability's socket.
const OP_SEND: u8 = 1;
const OP_CALL: u8 = 2;
/// The first byte of the endpoint's answer: to a send (on the capability's
/// socket) or to a call (on its reply socket).
const OK: u8 = 0;
const REFUSED: u8 = 1;

/// The timeout of [`Cap::call`] and [`Cap::send`] (as [`crate::rpc`]).
pub const DEFAULT_TIMEOUT: Duration = crate::rpc::DEFAULT_TIMEOUT;

/// One minted capability, as the endpoint sees it.
#[derive(Debug)]
struct Minted {
    conn: Connection,
    badge: u64,
    rights: Rights,
}

/// The receive right of an endpoint: see the module docs.
#[derive(Debug, Default)]
pub struct Endpoint {
    minted: Vec<Minted>,
    /// Where the next round-robin look starts.
    next: usize,
}

/// A message taken by [`Endpoint::recv`].
#[derive(Debug)]
pub struct Received {
    /// The badge of the capability it came through.
    pub badge: u64,
    /// That capability's rights.
    pub rights: Rights,
    /// The payload and the capabilities (handles) it carried.
    pub message: Message,
    /// For a call: the one-shot capability to answer it with.
    pub reply: Option<ReplyCap>,
}

impl Endpoint {
    /// A new endpoint with no capabilities yet.
    pub fn new() -> Endpoint {
        Endpoint::default()
    }

    /// Mints a send capability with `badge` and `rights`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the kernel refuses a socket pair (descriptor limit).
    pub fn mint(&mut self, badge: u64, rights: Rights) -> Result<Cap> {
        let (ours, theirs) = Connection::pair(SocketKind::Stream)?;
        self.minted.push(Minted { conn: ours, badge, rights });
        Ok(Cap { conn: theirs, timeout: DEFAULT_TIMEOUT })
    }

    /// Revokes every capability minted with `badge`: their holders' next
    /// calls and sends fail with `Disconnected`, and no message of theirs
    /// is received any more. Returns how many were revoked.
    pub fn revoke(&mut self, badge: u64) -> usize {
        let before = self.minted.len();
        self.minted.retain(|m| m.badge != badge);
        self.next = 0;
        before - self.minted.len()
    }

    /// How many minted capabilities still have a holder.
    pub fn capabilities(&self) -> usize {
        self.minted.len()
    }

    /// Waits for the next message, as long as it takes.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when no capability is left (every holder
    /// dropped its copies), [`RecvError::Io`].
    pub fn recv(&mut self) -> std::result::Result<Received, RecvError> {
        self.recv_inner(Deadline::Never).map_err(RecvError::from_fault)
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// # Errors
    ///
    /// [`crate::RecvTimeoutError::Timeout`], otherwise as [`Endpoint::recv`].
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Received, crate::RecvTimeoutError> {
        self.recv_inner(Deadline::after(timeout)).map_err(crate::RecvTimeoutError::from_fault)
    }

    /// Answers one call and waits for the next message (the server loop).
    ///
    /// # Errors
    ///
    /// As [`Endpoint::recv`]; a reply that cannot be delivered (the caller
    /// gave up) is not an error.
    pub fn reply_recv(
        &mut self,
        reply: ReplyCap,
        answer: impl Into<Message>,
    ) -> std::result::Result<Received, RecvError> {
        if let Err(e) = reply.reply(answer) {
            tracing::debug!(error = %e, "reply not delivered");
        }
        self.recv()
    }

    fn recv_inner(&mut self, deadline: Deadline) -> std::result::Result<Received, Fault> {
        loop {
            if self.minted.is_empty() {
                return Err(Fault::Disconnected);
            }
            // A frame already buffered needs no waiting.
            let n = self.minted.len();
            let ready = (0..n).map(|k| (self.next + k) % n).find(|&i| self.minted[i].conn.reader.has_frame());
            let i = match ready {
                Some(i) => i,
                None => match self.wait(deadline)? {
                    Some(i) => i,
                    None => return Err(Fault::Timeout),
                },
            };
            self.next = (i + 1) % n;
            match self.minted[i].conn.recv_inner(Deadline::Now) {
                Ok(msg) => {
                    if let Some(r) = self.take(i, msg) {
                        return Ok(r);
                    }
                }
                Err(Fault::Timeout) => {}
                Err(Fault::Disconnected) => {
                    self.minted.swap_remove(i);
                }
                Err(e) => {
                    // A holder that sends garbage loses its capability; the
                    // endpoint goes on serving the others.
                    tracing::warn!(error = ?e, badge = self.minted[i].badge, "dropping a capability whose holder sent a bad frame");
                    self.minted.swap_remove(i);
                }
            }
        }
    }

    /// Polls every capability's socket until one is readable or `deadline`.
    fn wait(&self, deadline: Deadline) -> std::result::Result<Option<usize>, Fault> {
        loop {
            let mut fds: Vec<PollFd<'_>> = self
                .minted
                .iter()
                .map(|m| PollFd::from_borrowed_fd(m.conn.reader.fd(), PollFlags::IN))
                .collect();
            match poll(&mut fds, deadline.remaining().as_ref()) {
                Ok(0) if deadline.expired() => return Ok(None),
                Ok(0) => {}
                Ok(_) => {
                    let n = fds.len();
                    let start = self.next % n;
                    return Ok((0..n).map(|k| (start + k) % n).find(|&i| !fds[i].revents().is_empty()));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Fault::Io(e.into())),
            }
        }
    }

    /// Answers a send on capability `i`, never waiting: a sender waits for
    /// each answer before it sends again, so its socket has room; one that
    /// has none floods the endpoint without reading, and loses the
    /// capability rather than stall the server.
    fn ack(&mut self, i: usize, status: u8) {
        if let Err(e) = self.minted[i].conn.try_send(vec![status]) {
            tracing::debug!(error = %e, badge = self.minted[i].badge, "a sender that does not read its answers: capability dropped");
            self.minted.swap_remove(i);
        }
    }

    /// Checks one message from capability `i`; `None` when it was refused.
    fn take(&mut self, i: usize, mut msg: Message) -> Option<Received> {
        let Minted { badge, rights, .. } = self.minted[i];
        let op = msg.data.first().copied();
        let (reply, user_handles) = match op {
            Some(OP_CALL) => {
                // The first handle is the reply capability.
                if msg.handles.is_empty() {
                    tracing::warn!(badge, "a call without a reply capability: dropped");
                    return None;
                }
                let reply = Connection::from_handle(msg.handles.remove(0)).ok().map(|conn| ReplyCap { conn });
                if reply.is_none() {
                    tracing::warn!(badge, "a call whose reply capability is not a connection: dropped");
                    return None;
                }
                (reply, !msg.handles.is_empty())
            }
            Some(OP_SEND) => (None, !msg.handles.is_empty()),
            _ => {
                tracing::warn!(badge, "a message without an operation: dropped");
                return None;
            }
        };
        if user_handles && !rights.contains(Rights::GRANT) {
            // Capabilities through a capability without the grant right:
            // refused, and the sender is told.
            msg.handles.clear();
            match reply {
                Some(r) => drop(r.answer(REFUSED, b"capabilities need the grant right")),
                None => self.ack(i, REFUSED),
            }
            return None;
        }
        if op == Some(OP_SEND) {
            // The sender waits for this: it is received now.
            self.ack(i, OK);
        }
        msg.data.remove(0);
        Some(Received { badge, rights, message: msg, reply })
    }
}

/// A send capability: see the module docs.
#[derive(Debug)]
pub struct Cap {
    conn: Connection,
    timeout: Duration,
}

impl Cap {
    /// Sets the timeout of [`Cap::call`] and [`Cap::send`] (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Cap {
        self.timeout = timeout;
        self
    }

    /// A copy (same endpoint, badge and rights): `dup(2)` of its socket.
    /// The copies share one byte stream: use a copy from one thread at a
    /// time, or mint one capability per thread.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] (descriptor limit); [`Error::BadHandle`] while a
    /// message is half read.
    pub fn try_clone(&self) -> Result<Cap> {
        let fd = self.conn.reader.fd().try_clone_to_owned()?;
        Ok(Cap { conn: Connection::from_fd(fd, SocketKind::Stream)?, timeout: self.timeout })
    }

    /// Calls the endpoint: sends `request` with a one-shot reply capability
    /// and waits, at most the capability's timeout, for the answer.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; [`CallError::Disconnected`] when the server
    /// is gone or dropped the reply capability unanswered;
    /// [`CallError::Io`] of kind `PermissionDenied` when the request
    /// carried capabilities through one without the grant right.
    pub fn call(&mut self, request: impl Into<Message>) -> std::result::Result<Message, CallError> {
        self.call_timeout(request, self.timeout)
    }

    /// As [`Cap::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Cap::call`].
    pub fn call_timeout(
        &mut self,
        request: impl Into<Message>,
        timeout: Duration,
    ) -> std::result::Result<Message, CallError> {
        let deadline = Deadline::after(timeout);
        let io = |e: Error| CallError::Io(std::io::Error::other(e.to_string()));
        let (mut mine, theirs) = Connection::pair(SocketKind::Stream).map_err(io)?;
        let mut msg = framed(OP_CALL, request.into());
        msg.handles.insert(0, theirs.into_handle().map_err(io)?);
        self.conn.writer.send(crate::wire::Kind::Data, 0, &msg, deadline).map_err(CallError::from_fault)?;
        drop(msg);
        let answer = mine.recv_inner(deadline).map_err(CallError::from_fault)?;
        unframe(answer).map_err(CallError::Io)
    }

    /// Sends `msg` one way and waits until the server has received it (a
    /// rendezvous), at most the capability's timeout.
    ///
    /// # Errors
    ///
    /// [`SendError::Disconnected`] when the endpoint is gone;
    /// [`SendError::Io`] of kind `TimedOut` when it was not received in
    /// time (it may still be later), of kind `PermissionDenied` when it
    /// carried capabilities through one without the grant right.
    pub fn send(&mut self, msg: impl Into<Message>) -> std::result::Result<(), SendError<Message>> {
        let deadline = Deadline::after(self.timeout);
        let msg = framed(OP_SEND, msg.into());
        if let Err(f) = self.conn.writer.send(crate::wire::Kind::Data, 0, &msg, deadline) {
            return Err(SendError::from_fault(f, unframed(msg)));
        }
        match self.conn.recv_inner(deadline) {
            Ok(ack) if ack.bytes() == [OK] => Ok(()),
            Ok(_) => Err(SendError::Io {
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "capabilities need the grant right",
                ),
                msg: Message::new(Vec::new()),
            }),
            Err(Fault::Timeout) => Err(SendError::Io {
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "not received in time"),
                msg: Message::new(Vec::new()),
            }),
            Err(f) => Err(SendError::from_fault(f, Message::new(Vec::new()))),
        }
    }
}

impl Transferable for Cap {
    fn into_handle(self) -> Result<Handle> {
        self.conn.into_handle()
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        Ok(Cap { conn: Connection::from_handle(handle)?, timeout: DEFAULT_TIMEOUT })
    }
}

/// A one-shot reply capability: answers one call, once. Transferable (a
/// server may hand a call to another process to answer).
#[derive(Debug)]
pub struct ReplyCap {
    conn: Connection,
}

impl ReplyCap {
    /// Answers the call (consumes the capability).
    ///
    /// # Errors
    ///
    /// [`ReplyError::Disconnected`] when the caller gave up or died.
    pub fn reply(self, answer: impl Into<Message>) -> std::result::Result<(), ReplyError> {
        let msg = framed(OK, answer.into());
        let mut conn = self.conn;
        conn.send_timeout(msg, DEFAULT_TIMEOUT).map_err(|e| match e {
            crate::SendTimeoutError::Timeout(_) => ReplyError::Timeout,
            crate::SendTimeoutError::Disconnected(_) => ReplyError::Disconnected,
            crate::SendTimeoutError::TooLarge { len, max, .. } => ReplyError::TooLarge { len, max },
            crate::SendTimeoutError::Io { source, .. } => ReplyError::Io(source),
        })
    }

    fn answer(self, status: u8, text: &[u8]) -> std::result::Result<(), ReplyError> {
        let mut conn = self.conn;
        conn.send_timeout([&[status][..], text].concat(), DEFAULT_TIMEOUT)
            .map_err(|_| ReplyError::Disconnected)
    }
}

impl Transferable for ReplyCap {
    fn into_handle(self) -> Result<Handle> {
        self.conn.into_handle()
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        Ok(ReplyCap { conn: Connection::from_handle(handle)? })
    }
}

/// `op` followed by the payload, with the message's handles.
fn framed(op: u8, mut msg: Message) -> Message {
    msg.data.insert(0, op);
    msg
}

/// The message `framed` made, given back without its operation byte.
fn unframed(mut msg: Message) -> Message {
    if !msg.data.is_empty() {
        msg.data.remove(0);
    }
    msg
}

/// An answer from the endpoint: its status byte, then the payload.
fn unframe(mut msg: Message) -> std::io::Result<Message> {
    match msg.data.first().copied() {
        Some(OK) => {
            msg.data.remove(0);
            Ok(msg)
        }
        Some(REFUSED) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            String::from_utf8_lossy(&msg.data[1..]).into_owned(),
        )),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed answer")),
    }
}

/// A slot address in a [`CSpace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CPtr(pub u32);

/// What a [`CSpace`] slot holds.
#[derive(Debug)]
pub enum Object {
    /// A receive right.
    Endpoint(Endpoint),
    /// A send capability.
    Cap(Cap),
    /// A one-shot reply capability.
    Reply(ReplyCap),
}

/// A process's capability table: see the module docs.
#[derive(Debug, Default)]
pub struct CSpace {
    slots: Vec<Option<Object>>,
}

/// A message received through a [`CSpace`]: its capabilities and its reply
/// capability already installed in slots.
#[derive(Debug)]
pub struct Delivered {
    /// The badge of the capability it came through.
    pub badge: u64,
    /// The payload (its handles that were not capabilities stay in it).
    pub message: Message,
    /// The slots of the capabilities it carried, in order.
    pub caps: Vec<CPtr>,
    /// The slot of the reply capability, for a call.
    pub reply: Option<CPtr>,
}

impl CSpace {
    /// An empty table.
    pub fn new() -> CSpace {
        CSpace::default()
    }

    /// Puts `object` in the first free slot.
    pub fn insert(&mut self, object: Object) -> CPtr {
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[i] = Some(object);
        CPtr(i as u32)
    }

    /// Takes the object out of slot `at` (the slot becomes free).
    pub fn remove(&mut self, at: CPtr) -> Option<Object> {
        self.slots.get_mut(at.0 as usize).and_then(Option::take)
    }

    /// The object in slot `at`.
    pub fn get(&self, at: CPtr) -> Option<&Object> {
        self.slots.get(at.0 as usize).and_then(Option::as_ref)
    }

    fn slot(&mut self, at: CPtr) -> Result<&mut Object> {
        self.slots
            .get_mut(at.0 as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| Error::BadHandle(format!("slot {} is empty", at.0)))
    }

    /// Mints a capability of the endpoint in slot `ep` into a new slot.
    ///
    /// # Errors
    ///
    /// [`Error::BadHandle`] when `ep` holds no endpoint; as [`Endpoint::mint`].
    pub fn mint(&mut self, ep: CPtr, badge: u64, rights: Rights) -> Result<CPtr> {
        let Object::Endpoint(e) = self.slot(ep)? else {
            return Err(Error::BadHandle(format!("slot {} holds no endpoint", ep.0)));
        };
        let cap = e.mint(badge, rights)?;
        Ok(self.insert(Object::Cap(cap)))
    }

    /// Calls through the capability in slot `cap`.
    ///
    /// # Errors
    ///
    /// [`CallError::Io`] (kind `NotFound`) when the slot holds no send
    /// capability; as [`Cap::call`].
    pub fn call(
        &mut self,
        cap: CPtr,
        request: impl Into<Message>,
    ) -> std::result::Result<Message, CallError> {
        match self.slot(cap) {
            Ok(Object::Cap(c)) => c.call(request),
            _ => Err(CallError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no send capability in that slot",
            ))),
        }
    }

    /// Sends through the capability in slot `cap` (rendezvous).
    ///
    /// # Errors
    ///
    /// [`SendError::Io`] (kind `NotFound`) when the slot holds no send
    /// capability; as [`Cap::send`].
    pub fn send(
        &mut self,
        cap: CPtr,
        msg: impl Into<Message>,
    ) -> std::result::Result<(), SendError<Message>> {
        let msg = msg.into();
        match self.slot(cap) {
            Ok(Object::Cap(c)) => c.send(msg),
            _ => Err(SendError::Io {
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no send capability in that slot"),
                msg,
            }),
        }
    }

    /// Receives on the endpoint in slot `ep`, installing the capabilities
    /// the message carried, and its reply capability, into new slots.
    ///
    /// # Errors
    ///
    /// [`RecvError::Io`] (kind `NotFound`) when `ep` holds no endpoint; as
    /// [`Endpoint::recv_timeout`] (a timeout is an `Io` error of kind `TimedOut`).
    pub fn recv(&mut self, ep: CPtr, timeout: Duration) -> std::result::Result<Delivered, RecvError> {
        let got = match self.slot(ep) {
            Ok(Object::Endpoint(e)) => match e.recv_timeout(timeout) {
                Ok(r) => r,
                Err(crate::RecvTimeoutError::Timeout) => {
                    return Err(RecvError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)))
                }
                Err(crate::RecvTimeoutError::Disconnected) => return Err(RecvError::Disconnected),
                Err(crate::RecvTimeoutError::Frame(f)) => return Err(RecvError::Frame(f)),
                Err(crate::RecvTimeoutError::Decode(d)) => return Err(RecvError::Decode(d)),
                Err(crate::RecvTimeoutError::Io(e)) => return Err(RecvError::Io(e)),
            },
            _ => {
                return Err(RecvError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no endpoint in that slot",
                )))
            }
        };
        let Received { badge, mut message, reply, .. } = got;
        let mut caps = Vec::new();
        while message.handles().first().is_some_and(|h| h.kind() == crate::wire::HandleKind::Connection) {
            match message.take::<Cap>() {
                Ok(c) => caps.push(self.insert(Object::Cap(c))),
                Err(_) => break,
            }
        }
        let reply = reply.map(|r| self.insert(Object::Reply(r)));
        Ok(Delivered { badge, message, caps, reply })
    }

    /// Answers the call whose reply capability is in slot `reply` (the slot
    /// is freed: the capability is used up).
    ///
    /// # Errors
    ///
    /// [`ReplyError::Disconnected`] when the slot holds no reply capability
    /// or the caller is gone.
    pub fn reply(&mut self, reply: CPtr, answer: impl Into<Message>) -> std::result::Result<(), ReplyError> {
        match self.remove(reply) {
            Some(Object::Reply(r)) => r.reply(answer),
            Some(other) => {
                self.slots[reply.0 as usize] = Some(other);
                Err(ReplyError::Disconnected)
            }
            None => Err(ReplyError::Disconnected),
        }
    }

    /// Answers one call and receives the next message (the server loop).
    ///
    /// # Errors
    ///
    /// As [`CSpace::recv`]; an undeliverable reply is not an error.
    pub fn reply_recv(
        &mut self,
        reply: CPtr,
        answer: impl Into<Message>,
        ep: CPtr,
        timeout: Duration,
    ) -> std::result::Result<Delivered, RecvError> {
        if let Err(e) = self.reply(reply, answer) {
            tracing::debug!(error = %e, "reply not delivered");
        }
        self.recv(ep, timeout)
    }
}
