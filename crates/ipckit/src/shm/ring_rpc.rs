//! RPC over the multi-client shared-memory rings.
//!
//! A [`RingRpcServer`] creates one MPMC request ring (a [`ShmChannel`]) by
//! name and answers any number of [`RingRpcClient`]s, in any processes.
//! Each client creates its own SPSC reply ring, named after the server,
//! its pid and a counter (`<server>-r<pid>-<n>`), and removes it when
//! dropped. A request carries its call id and the name of the reply ring:
//!
//! ```text
//! request: id u64 LE | name length u8 | reply ring name | payload
//! reply:   id u64 LE | payload
//! ```
//!
//! The server opens each reply ring the first time it answers it and keeps
//! it open (a small cache, forgetting rings whose client is gone). It only
//! opens rings named `<server>-r…`, so a client cannot make it write into
//! another segment.
//!
//! A call waits at most its timeout (default
//! [`DEFAULT_TIMEOUT`](crate::rpc::DEFAULT_TIMEOUT)); a reply that arrives
//! after its call gave up carries an older id and is dropped by the next
//! call. A server that dies (even by `SIGKILL`) is noticed through the
//! rings' liveness tables: a waiting call returns
//! [`CallError::Disconnected`] within a few [`LIVENESS_CHECK`]s.
//!
//! One server serves a request ring (the reply rings are single-producer).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::channel::{Config, ShmChannel, ShmReceiver, ShmSender};
use super::wait::{WaitMode, LIVENESS_CHECK};
use crate::error::{CallError, Error, Fault, FrameError, ReplyError, Result};
use crate::sys::{self, Deadline};

/// Bytes of a request before its reply ring's name.
const REQ_HEADER: usize = 9;
/// Bytes of a reply before its payload.
const REP_HEADER: usize = 8;
/// The longest reply-ring name.
const MAX_REPLY_NAME: usize = 255;
/// How many reply rings a server keeps open.
const CACHE: usize = 256;
/// Slots of each client's reply ring.
const REPLY_SLOTS: usize = 4;

/// What [`RingRpcServer::create`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRpcConfig {
    /// Requests the request ring holds.
    pub slots: usize,
    /// The largest request or reply payload, in bytes.
    pub max_message: usize,
    /// Permission bits of the request ring and of the clients' reply rings.
    pub mode: u32,
}

impl Default for RingRpcConfig {
    fn default() -> Self {
        RingRpcConfig { slots: 64, max_message: 4096, mode: 0o600 }
    }
}

/// One request received by a [`RingRpcServer`]: answer it with [`RingRpcServer::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRequest {
    id: u64,
    reply_to: String,
    data: Vec<u8>,
}

impl RingRequest {
    /// The request's payload.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The payload, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The caller's call id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The serving side: owns the request ring, answers many clients.
///
/// # Examples
///
/// ```
/// use ipckit::shm::ring_rpc::{RingRpcClient, RingRpcConfig, RingRpcServer};
/// let name = format!("doc-ringrpc-{}", std::process::id());
/// let mut server = RingRpcServer::create(&name, &RingRpcConfig::default())?;
/// let t = std::thread::spawn(move || {
///     let req = server.recv().unwrap();
///     let answer = [req.bytes()[0] + 1];
///     server.reply(&req, &answer).unwrap();
/// });
/// let mut client = RingRpcClient::connect(&name)?;
/// assert_eq!(client.call(&[41])?, vec![42]);
/// t.join().unwrap();
/// RingRpcServer::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RingRpcServer {
    name: String,
    rx: ShmReceiver,
    _keep: ShmSender,
    max: usize,
    replies: HashMap<String, ShmSender>,
    buf: Vec<u8>,
}

impl RingRpcServer {
    /// Creates request ring `name` as `config` says, and becomes its server.
    ///
    /// # Errors
    ///
    /// As [`ShmChannel::create`]; [`Error::InvalidName`] when `name` leaves
    /// no room for the clients' reply-ring names.
    pub fn create(name: &str, config: &RingRpcConfig) -> Result<RingRpcServer> {
        if name.len() > 160 {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                why: "a ring RPC server name is at most 160 bytes (reply rings extend it)",
            });
        }
        let max = config.max_message.max(1);
        let frame = max
            .checked_add(REQ_HEADER + MAX_REPLY_NAME)
            .ok_or(Error::InvalidName { name: name.to_owned(), why: "messages too large" })?;
        let cfg = Config::mpmc(config.slots, frame).with_mode(config.mode);
        let chan = ShmChannel::create(name, &cfg)?;
        let rx = chan.receiver()?;
        // A server never sees "every client gone": it holds a producer of
        // its own, so waiting for requests sleeps on the ring's futex.
        let keep = chan.sender()?;
        Ok(RingRpcServer {
            name: name.to_owned(),
            rx,
            _keep: keep,
            max,
            replies: HashMap::new(),
            buf: Vec::new(),
        })
    }

    /// Removes request ring `name` (as [`ShmChannel::remove`]).
    ///
    /// # Errors
    ///
    /// As [`ShmChannel::remove`].
    pub fn remove(name: &str) -> Result<()> {
        ShmChannel::remove(name)
    }

    /// Sets how the server waits for requests (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        self.rx.set_wait(mode);
        self
    }

    /// The request ring's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The largest request or reply payload, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    recv_forms!(RingRequest);

    fn recv_inner(&mut self, deadline: Deadline) -> Result<RingRequest, Fault> {
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.rx.recv_vec(&mut buf, deadline);
            let parsed = r.map(|()| self.parse(&buf));
            self.buf = buf;
            match parsed? {
                Some(req) => return Ok(req),
                // A malformed request has nobody to answer: drop it.
                None => tracing::debug!("dropping a malformed ring RPC request"),
            }
        }
    }

    fn parse(&self, b: &[u8]) -> Option<RingRequest> {
        let id = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let n = *b.get(8)? as usize;
        let name = std::str::from_utf8(b.get(REQ_HEADER..REQ_HEADER + n)?).ok()?;
        if !name.starts_with(&format!("{}-r", self.name)) {
            return None;
        }
        let data = b[REQ_HEADER + n..].to_vec();
        if data.len() > self.max {
            return None;
        }
        Some(RingRequest { id, reply_to: name.to_owned(), data })
    }

    /// Answers `request`. Waits at most [`LIVENESS_CHECK`] times a few for
    /// room in the client's reply ring (it holds a few replies; a client
    /// that stopped reading loses this one).
    ///
    /// # Errors
    ///
    /// [`ReplyError::TooLarge`] over the maximum; [`ReplyError::Disconnected`]
    /// when the client is gone (its reply ring is then forgotten, and
    /// removed if its client died); [`ReplyError::Timeout`] when its ring
    /// stayed full.
    pub fn reply(&mut self, request: &RingRequest, data: &[u8]) -> Result<(), ReplyError> {
        if data.len() > self.max {
            return Err(ReplyError::TooLarge { len: data.len(), max: self.max });
        }
        let to = &request.reply_to;
        if self.replies.len() >= CACHE && !self.replies.contains_key(to) {
            // Forget one: its client sees the producer leave and keeps
            // waiting while the server lives; it is reopened on need.
            let old = self.replies.keys().next().cloned();
            if let Some(old) = old {
                self.replies.remove(&old);
            }
        }
        let tx = match self.replies.entry(to.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                v.insert(ShmChannel::open(to).and_then(|c| c.sender()).map_err(|_| ReplyError::Disconnected)?)
            }
        };
        let mut frame = Vec::with_capacity(REP_HEADER + data.len());
        frame.extend_from_slice(&request.id.to_le_bytes());
        frame.extend_from_slice(data);
        match tx.send_slice(&frame, Deadline::after(LIVENESS_CHECK * 10)) {
            Ok(()) => Ok(()),
            Err(Fault::Disconnected) => {
                self.replies.remove(to);
                // A client that died (rather than dropped) left its ring behind.
                let _ = ShmChannel::remove(to);
                Err(ReplyError::Disconnected)
            }
            Err(Fault::Timeout) => Err(ReplyError::Timeout),
            Err(f) => Err(ReplyError::from_fault(f)),
        }
    }
}

/// The calling side: one per caller (a thread or process); it owns its
/// reply ring and removes it when dropped.
#[derive(Debug)]
pub struct RingRpcClient {
    tx: ShmSender,
    rx: ShmReceiver,
    reply_name: String,
    max: usize,
    next_id: u64,
    timeout: Duration,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl RingRpcClient {
    /// Opens server `name`'s request ring and creates this client's reply ring.
    ///
    /// # Errors
    ///
    /// As [`ShmChannel::open`] and [`ShmChannel::create`];
    /// [`Error::NotListening`] when the server is gone.
    pub fn connect(name: &str) -> Result<RingRpcClient> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let req = ShmChannel::open(name)?;
        let frame_max = req.max_message_size();
        let max = frame_max
            .checked_sub(REQ_HEADER + MAX_REPLY_NAME)
            .filter(|&m| m > 0)
            .ok_or_else(|| Error::Corrupted(format!("{name:?} is not a ring RPC request ring")))?;
        let tx = req.sender()?;
        if tx.peer_gone() {
            return Err(Error::NotListening(name.to_owned()));
        }
        let mode = req.segment().owner().mode & 0o777;
        let reply_name = format!("{name}-r{}-{}", sys::pid(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let rep = match ShmChannel::create(
            &reply_name,
            &Config::spsc(REPLY_SLOTS, REP_HEADER + max).with_mode(mode),
        ) {
            Err(Error::AlreadyExists(_)) => {
                // Left by a dead process whose pid this one reuses.
                ShmChannel::remove(&reply_name)?;
                ShmChannel::create(&reply_name, &Config::spsc(REPLY_SLOTS, REP_HEADER + max).with_mode(mode))?
            }
            other => other?,
        };
        let rx = match rep.receiver() {
            Ok(rx) => rx,
            Err(e) => {
                let _ = ShmChannel::remove(&reply_name);
                return Err(e);
            }
        };
        Ok(RingRpcClient {
            tx,
            rx,
            reply_name,
            max,
            next_id: 0,
            timeout: crate::rpc::DEFAULT_TIMEOUT,
            frame: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Sets the timeout of [`RingRpcClient::call`] (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how the client waits (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        self.tx.set_wait(mode);
        self.rx.set_wait(mode);
        self
    }

    /// The largest request or reply payload, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// This client's reply ring's name.
    pub fn reply_ring(&self) -> &str {
        &self.reply_name
    }

    /// Sends `request` and waits for its reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; [`CallError::Disconnected`] when the server
    /// is gone (noticed within a few [`LIVENESS_CHECK`]s of its death);
    /// [`CallError::TooLarge`]; [`CallError::Frame`] for a malformed reply.
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_timeout(request, self.timeout)
    }

    /// As [`RingRpcClient::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RingRpcClient::call`].
    pub fn call_timeout(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        self.call_inner(request, Deadline::after(timeout)).map_err(CallError::from_fault)
    }

    /// As [`RingRpcClient::call`], waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`RingRpcClient::call`].
    pub fn call_deadline(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CallError> {
        self.call_inner(request, Deadline::At(deadline)).map_err(CallError::from_fault)
    }

    fn call_inner(&mut self, request: &[u8], deadline: Deadline) -> Result<Vec<u8>, Fault> {
        if request.len() > self.max {
            return Err(Fault::TooLarge { len: request.len(), max: self.max });
        }
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.frame.clear();
        self.frame.extend_from_slice(&id.to_le_bytes());
        self.frame.push(self.reply_name.len() as u8);
        self.frame.extend_from_slice(self.reply_name.as_bytes());
        self.frame.extend_from_slice(request);
        self.tx.send_slice(&self.frame, deadline)?;
        loop {
            // Wait in short slices so a server that died before ever
            // opening our reply ring is noticed on the request ring.
            let slice = Deadline::after(LIVENESS_CHECK * 5);
            let step = match (deadline, slice) {
                (Deadline::At(d), Deadline::At(s)) if d < s => deadline,
                (Deadline::Now, _) => deadline,
                _ => slice,
            };
            match self.rx.recv_vec(&mut self.buf, step) {
                Ok(()) => {
                    if self.buf.len() < REP_HEADER {
                        return Err(Fault::Frame(FrameError::Truncated));
                    }
                    let got = u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes"));
                    if got == id {
                        return Ok(self.buf[REP_HEADER..].to_vec());
                    }
                    tracing::debug!("dropping a late ring RPC reply");
                    continue;
                }
                Err(Fault::Timeout) => {}
                Err(Fault::Disconnected) => {
                    // The server let go of our reply ring; it is gone only
                    // if it also left the request ring.
                    if !self.tx.peer_gone() {
                        std::thread::sleep(LIVENESS_CHECK.min(Duration::from_millis(1)));
                    }
                }
                Err(e) => return Err(e),
            }
            if self.tx.peer_gone() {
                return Err(Fault::Disconnected);
            }
            if deadline.expired() {
                return Err(Fault::Timeout);
            }
        }
    }
}

impl Drop for RingRpcClient {
    fn drop(&mut self) {
        let _ = ShmChannel::remove(&self.reply_name);
    }
}
