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
//! - [`Cap::call`] sends a request and waits for the answer of its
//!   **one-shot reply capability** ([`ReplyCap`]), which the server gets with
//!   the request. The server answers with [`ReplyCap::reply`], which
//!   consumes it, or hands the reply capability to another process (it is
//!   transferable) to answer for it. A server that dies, drops the reply
//!   capability unanswered, or revokes the capability ends the call at once
//!   with `Disconnected`.
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
//! Fast path: a reply capability is a token naming the call on the
//! capability's own socket, so a call is one write each way on one socket
//! (measured by `ipckit bench --filter endpoint`: the same round trip as a
//! plain [`Connection`]). Only when a reply capability moves to another
//! process does it become a socket of its own: the caller is told (a
//! redirect on its socket, with the new socket's other end) and waits
//! there. Linux does not let a process hand its time slice to another, so
//! "control straight to the receiver" is the kernel's wake-up of the server
//! blocked in `recv`; for the lowest latency between two processes that can
//! spin, use [`crate::shm::rpc`].
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

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};

use crate::connection::Connection;
use crate::error::{CallError, Error, Fault, RecvError, ReplyError, Result, SendError};
use crate::link::{Reader, Writer};
use crate::message::{Handle, Message, Transferable};
use crate::sys::{Deadline, SocketKind};
use crate::wire::Kind;

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

// A frame on a capability's socket starts with a kind byte and a call
// number (8 bytes, little-endian), then the payload.
/// Holder to endpoint: a one-way send (number 0).
const OP_SEND: u8 = 1;
/// Holder to endpoint: a call.
const OP_CALL: u8 = 2;
/// Endpoint to holder: a send was received (payload: `OK` or `REFUSED`).
const ACK: u8 = 0x10;
/// Endpoint to holder: the answer to call `n`.
const REPLY: u8 = 0x11;
/// Endpoint to holder: call `n` refused (payload: why).
const REFUSE: u8 = 0x12;
/// Endpoint to holder: call `n`'s reply capability was dropped unanswered.
const DROPPED: u8 = 0x13;
/// Endpoint to holder: call `n` will be answered on the socket attached
/// (its reply capability went to another process).
const REDIRECT: u8 = 0x14;
/// Status bytes of an `ACK`, and of an answer on a redirected socket.
const OK: u8 = 0;
const REFUSED: u8 = 1;
/// Bytes before the payload.
const HEAD: usize = 9;

/// The timeout of [`Cap::call`] and [`Cap::send`] (as [`crate::rpc`]).
pub const DEFAULT_TIMEOUT: Duration = crate::rpc::DEFAULT_TIMEOUT;

/// `kind`, `n`, then `msg`'s payload (its handles stay with it).
fn framed(kind: u8, n: u64, mut msg: Message) -> Message {
    let mut head = [0u8; HEAD];
    head[0] = kind;
    head[1..].copy_from_slice(&n.to_le_bytes());
    msg.data.splice(0..0, head);
    msg
}

/// The kind and number of a frame, and the message without them; `None`
/// for a frame too short to have them.
fn unframed(mut msg: Message) -> Option<(u8, u64, Message)> {
    if msg.data.len() < HEAD {
        return None;
    }
    let kind = msg.data[0];
    let n = u64::from_le_bytes(msg.data[1..HEAD].try_into().expect("8 bytes"));
    msg.data.drain(..HEAD);
    Some((kind, n, msg))
}

/// The writing half of a minted capability's socket, shared by the
/// endpoint (answers to sends) and the reply capabilities of its calls.
type SharedWriter = Arc<Mutex<Writer>>;

fn lock(w: &SharedWriter) -> MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// One minted capability, as the endpoint sees it.
#[derive(Debug)]
struct Minted {
    reader: Reader,
    writer: SharedWriter,
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
        let Connection { reader, writer, .. } = ours;
        self.minted.push(Minted { reader, writer: Arc::new(Mutex::new(writer)), badge, rights });
        Ok(Cap { conn: theirs, timeout: DEFAULT_TIMEOUT, next: 1 })
    }

    /// Revokes every capability minted with `badge`: their holders' next
    /// calls and sends fail with `Disconnected` (also a call waiting for an
    /// answer), and no message of theirs is received any more. Returns how
    /// many were revoked.
    pub fn revoke(&mut self, badge: u64) -> usize {
        let before = self.minted.len();
        self.minted.retain(|m| {
            if m.badge == badge {
                // Shut the socket down, not just close our descriptor: reply
                // capabilities of its calls may still hold the writer.
                lock(&m.writer).abandon();
                false
            } else {
                true
            }
        });
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
            let ready = (0..n).map(|k| (self.next + k) % n).find(|&i| self.minted[i].reader.has_frame());
            let i = match ready {
                Some(i) => i,
                None => match self.wait(deadline)? {
                    Some(i) => i,
                    None => return Err(Fault::Timeout),
                },
            };
            self.next = (i + 1) % n;
            match self.minted[i].reader.recv(Deadline::Now) {
                Ok(frame) if frame.kind == Kind::Data => {
                    if let Some(r) = self.take(i, frame.msg) {
                        return Ok(r);
                    }
                }
                Ok(_) => {
                    tracing::warn!(
                        badge = self.minted[i].badge,
                        "dropping a capability whose holder sent a foreign frame"
                    );
                    self.drop_cap(i);
                }
                Err(Fault::Timeout) => {}
                Err(Fault::Disconnected) => {
                    self.minted.swap_remove(i);
                }
                Err(e) => {
                    // A holder that sends garbage loses its capability; the
                    // endpoint goes on serving the others.
                    tracing::warn!(error = ?e, badge = self.minted[i].badge, "dropping a capability whose holder sent a bad frame");
                    self.drop_cap(i);
                }
            }
        }
    }

    /// Takes capability `i` away from its holder.
    fn drop_cap(&mut self, i: usize) {
        let m = self.minted.swap_remove(i);
        lock(&m.writer).abandon();
    }

    /// Polls every capability's socket until one is readable or `deadline`.
    fn wait(&self, deadline: Deadline) -> std::result::Result<Option<usize>, Fault> {
        loop {
            let mut fds: Vec<PollFd<'_>> =
                self.minted.iter().map(|m| PollFd::from_borrowed_fd(m.reader.fd(), PollFlags::IN)).collect();
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

    /// Writes a frame to capability `i`'s holder without waiting: a holder
    /// waits for each answer before it sends again, so its socket has room;
    /// one that has none floods the endpoint without reading, and loses the
    /// capability rather than stall the server. `false` when it was dropped.
    fn answer(&mut self, i: usize, kind: u8, n: u64, payload: &[u8]) -> bool {
        let msg = framed(kind, n, Message::new(payload.to_vec()));
        let r = lock(&self.minted[i].writer).send(Kind::Data, 0, &msg, Deadline::Now);
        if let Err(e) = r {
            tracing::debug!(error = ?e, badge = self.minted[i].badge, "a holder that does not read its answers: capability dropped");
            self.drop_cap(i);
            return false;
        }
        true
    }

    /// Checks one message from capability `i`; `None` when it was refused
    /// or malformed.
    fn take(&mut self, i: usize, msg: Message) -> Option<Received> {
        let (badge, rights) = (self.minted[i].badge, self.minted[i].rights);
        let Some((op, n, message)) = unframed(msg) else {
            tracing::warn!(badge, "a frame too short for an operation: dropped");
            return None;
        };
        if op != OP_SEND && op != OP_CALL {
            tracing::warn!(badge, op, "an unknown operation: dropped");
            return None;
        }
        if !message.handles.is_empty() && !rights.contains(Rights::GRANT) {
            // Capabilities through a capability without the grant right:
            // refused, and the sender is told (the handles are closed here).
            let why = b"capabilities need the grant right";
            if op == OP_SEND {
                self.answer(i, ACK, 0, &[REFUSED]);
            } else {
                self.answer(i, REFUSE, n, why);
            }
            return None;
        }
        let reply = if op == OP_CALL {
            Some(ReplyCap { to: ReplyTo::Caller { writer: self.minted[i].writer.clone(), n } })
        } else {
            // The sender waits for this: it is received now.
            self.answer(i, ACK, 0, &[OK]);
            None
        };
        Some(Received { badge, rights, message, reply })
    }
}

/// A send capability: see the module docs.
#[derive(Debug)]
pub struct Cap {
    conn: Connection,
    timeout: Duration,
    /// The next call's number.
    next: u64,
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
    /// [`Error::Io`] (descriptor limit).
    pub fn try_clone(&self) -> Result<Cap> {
        let fd = self.conn.reader.fd().try_clone_to_owned()?;
        Ok(Cap {
            conn: Connection::from_fd(fd, SocketKind::Stream)?,
            timeout: self.timeout,
            next: self.next + (1 << 32),
        })
    }

    /// Calls the endpoint: sends `request` and waits, at most the
    /// capability's timeout, for the answer of its one-shot reply capability.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; [`CallError::Disconnected`] when the server
    /// is gone, dropped the reply capability unanswered, or revoked this
    /// capability; [`CallError::Io`] of kind `PermissionDenied` when the
    /// request carried capabilities through one without the grant right.
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
        let n = self.next;
        self.next += 1;
        let msg = framed(OP_CALL, n, request.into());
        self.conn.writer.send(Kind::Data, 0, &msg, deadline).map_err(CallError::from_fault)?;
        drop(msg);
        loop {
            let frame = self.conn.recv_inner(deadline).map_err(CallError::from_fault)?;
            let Some((kind, m, mut answer)) = unframed(frame) else {
                return Err(CallError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a malformed answer",
                )));
            };
            if m != n || kind == ACK {
                // An answer to a call (or send) that gave up earlier.
                continue;
            }
            return match kind {
                REPLY => Ok(answer),
                REFUSE => Err(CallError::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    String::from_utf8_lossy(answer.bytes()).into_owned(),
                ))),
                DROPPED => Err(CallError::Disconnected),
                REDIRECT => {
                    let mut other: Connection =
                        answer.take().map_err(|e| CallError::Io(std::io::Error::other(e.to_string())))?;
                    let got = other.recv_inner(deadline).map_err(CallError::from_fault)?;
                    match got.bytes().first() {
                        Some(&OK) => {
                            let mut got = got;
                            got.data.remove(0);
                            Ok(got)
                        }
                        _ => Err(CallError::Io(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "a malformed answer",
                        ))),
                    }
                }
                _ => Err(CallError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a malformed answer",
                ))),
            };
        }
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
        let msg = framed(OP_SEND, 0, msg.into());
        if let Err(f) = self.conn.writer.send(Kind::Data, 0, &msg, deadline) {
            let (_, _, back) = unframed(msg).expect("framed here");
            return Err(SendError::from_fault(f, back));
        }
        let io = |kind, what: &str| SendError::Io {
            source: std::io::Error::new(kind, what),
            msg: Message::new(Vec::new()),
        };
        loop {
            match self.conn.recv_inner(deadline) {
                Ok(frame) => match unframed(frame) {
                    Some((ACK, _, ack)) if ack.bytes() == [OK] => return Ok(()),
                    Some((ACK, _, _)) => {
                        return Err(io(
                            std::io::ErrorKind::PermissionDenied,
                            "capabilities need the grant right",
                        ))
                    }
                    // An answer to a call that gave up earlier.
                    Some(_) => {}
                    None => return Err(io(std::io::ErrorKind::InvalidData, "a malformed answer")),
                },
                Err(Fault::Timeout) => return Err(io(std::io::ErrorKind::TimedOut, "not received in time")),
                Err(f) => return Err(SendError::from_fault(f, Message::new(Vec::new()))),
            }
        }
    }
}

impl Transferable for Cap {
    fn into_handle(self) -> Result<Handle> {
        self.conn.into_handle()
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        Ok(Cap { conn: Connection::from_handle(handle)?, timeout: DEFAULT_TIMEOUT, next: 1 })
    }
}

/// Where a reply capability's answer goes.
#[derive(Debug)]
enum ReplyTo {
    /// Back on the caller's capability socket, as call `n`'s reply (the
    /// fast path: no socket is made for it).
    Caller { writer: SharedWriter, n: u64 },
    /// On a socket of its own (the capability travelled to another process).
    Socket(Connection),
    /// Answered (or moved away).
    Done,
}

/// A one-shot reply capability: answers one call, once. Transferable (a
/// server may hand a call to another process to answer: the caller is then
/// told to wait on a socket of its own). Dropped unanswered, it ends the
/// call with `Disconnected`.
#[derive(Debug)]
pub struct ReplyCap {
    to: ReplyTo,
}

impl ReplyCap {
    /// Answers the call (consumes the capability).
    ///
    /// # Errors
    ///
    /// [`ReplyError::Disconnected`] when the caller gave up or died;
    /// [`ReplyError::Timeout`] when it does not read its socket.
    pub fn reply(mut self, answer: impl Into<Message>) -> std::result::Result<(), ReplyError> {
        match std::mem::replace(&mut self.to, ReplyTo::Done) {
            ReplyTo::Caller { writer, n } => lock(&writer)
                .send(Kind::Data, 0, &framed(REPLY, n, answer.into()), Deadline::after(DEFAULT_TIMEOUT))
                .map_err(ReplyError::from_fault),
            ReplyTo::Socket(mut conn) => {
                let mut msg = answer.into();
                msg.data.insert(0, OK);
                conn.writer
                    .send(Kind::Data, 0, &msg, Deadline::after(DEFAULT_TIMEOUT))
                    .map_err(ReplyError::from_fault)
            }
            ReplyTo::Done => Err(ReplyError::Disconnected),
        }
    }
}

impl Drop for ReplyCap {
    fn drop(&mut self) {
        // Unanswered: tell the caller at once (a socket of its own just closes).
        if let ReplyTo::Caller { writer, n } = std::mem::replace(&mut self.to, ReplyTo::Done) {
            let _ = lock(&writer).send(
                Kind::Data,
                0,
                &framed(DROPPED, n, Message::new(Vec::new())),
                Deadline::Now,
            );
        }
    }
}

impl Transferable for ReplyCap {
    fn into_handle(mut self) -> Result<Handle> {
        match std::mem::replace(&mut self.to, ReplyTo::Done) {
            ReplyTo::Caller { writer, n } => {
                // The caller waits on one end of a new socket pair; the other
                // end is the capability that travels.
                let (callers, ours) = Connection::pair(SocketKind::Stream)?;
                let redirect = framed(REDIRECT, n, Message::new(Vec::new()).with(callers)?);
                lock(&writer).send(Kind::Data, 0, &redirect, Deadline::after(DEFAULT_TIMEOUT)).map_err(
                    |f| {
                        Error::BadHandle(format!(
                            "the caller cannot be told where its answer comes from: {f:?}"
                        ))
                    },
                )?;
                ours.into_handle()
            }
            ReplyTo::Socket(conn) => conn.into_handle(),
            ReplyTo::Done => Err(Error::BadHandle("a used reply capability".into())),
        }
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        Ok(ReplyCap { to: ReplyTo::Socket(Connection::from_handle(handle)?) })
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
