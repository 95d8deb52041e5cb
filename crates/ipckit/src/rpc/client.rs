//! The calling side of RPC.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Connection;
use crate::error::{CallError, Fault, FrameError};
use crate::link::{Reader, Writer};
use crate::message::Message;
use crate::sys::{Deadline, PeerCred};
use crate::wire::Kind;

/// Why the connection can no longer carry calls.
#[derive(Clone, Debug)]
enum Dead {
    Disconnected,
    Frame(FrameError),
    Io(std::io::ErrorKind, String),
}

impl Dead {
    fn fault(&self) -> Fault {
        match self {
            Dead::Disconnected => Fault::Disconnected,
            Dead::Frame(e) => Fault::Frame(e.clone()),
            Dead::Io(kind, what) => Fault::Io(std::io::Error::new(*kind, what.clone())),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// A caller is reading the connection right now.
    reading: bool,
    /// Calls waiting, by request id; a reply fills the slot.
    pending: HashMap<u64, Option<Message>>,
    dead: Option<Dead>,
    late_replies: u64,
    /// Callers asleep on the condition variable (a wake-up is a system call:
    /// skip it when nobody sleeps).
    sleepers: usize,
}

/// The calling end of an RPC connection. Share it between threads by reference
/// (`&Client` is enough to call) or in an `Arc`.
#[derive(Debug)]
pub struct Client {
    writer: Mutex<Writer>,
    reader: Mutex<Reader>,
    state: Mutex<State>,
    wake: Condvar,
    next_id: AtomicU64,
    timeout: Duration,
    peer: Option<PeerCred>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// A client over `conn`, with the default timeout of 5 s per call.
    pub fn new(conn: Connection) -> Self {
        Client {
            writer: Mutex::new(conn.writer),
            reader: Mutex::new(conn.reader),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            next_id: AtomicU64::new(1),
            timeout: super::DEFAULT_TIMEOUT,
            peer: conn.peer,
        }
    }

    /// Sets the timeout [`Client::call`] uses.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The timeout [`Client::call`] uses.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server's credentials as the kernel recorded them (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.peer
    }

    /// A duplicate of the connection's descriptor (`dup(2)`).
    pub(crate) fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        lock(&self.reader).fd().try_clone_to_owned()
    }

    /// How many replies arrived after their call had given up (and were dropped).
    pub fn late_replies(&self) -> u64 {
        lock(&self.state).late_replies
    }

    /// Sends `request` and waits for its reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`] when no reply came in time, [`CallError::Disconnected`]
    /// when the server is gone, [`CallError::TooLarge`], [`CallError::Frame`]
    /// when the server sent garbage, [`CallError::Io`].
    pub fn call(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.call_timeout(request, self.timeout)
    }

    /// As [`Client::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_timeout(&self, request: impl Into<Message>, timeout: Duration) -> Result<Message, CallError> {
        self.call_inner(&request.into(), Deadline::after(timeout)).map_err(CallError::from_fault)
    }

    /// As [`Client::call`], waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_deadline(
        &self,
        request: impl Into<Message>,
        deadline: Instant,
    ) -> Result<Message, CallError> {
        self.call_inner(&request.into(), Deadline::At(deadline)).map_err(CallError::from_fault)
    }

    /// A typed call: `request` is encoded with postcard, the reply decoded as `R`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], plus [`CallError::Codec`] when the reply is not an `R`.
    pub fn call_typed<Q: Serialize, R: DeserializeOwned>(&self, request: &Q) -> Result<R, CallError> {
        let bytes = postcard::to_stdvec(request)?;
        let reply = self.call(bytes)?;
        Ok(postcard::from_bytes(reply.bytes())?)
    }

    fn call_inner(&self, request: &Message, deadline: Deadline) -> Result<Message, Fault> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = lock(&self.state);
            if let Some(dead) = &st.dead {
                return Err(dead.fault());
            }
            st.pending.insert(id, None);
        }
        if let Err(e) = lock(&self.writer).send(Kind::Request, id, request, deadline) {
            lock(&self.state).pending.remove(&id);
            return Err(e);
        }
        self.await_reply(id, deadline)
    }

    /// Leader/follower: one waiting caller reads the connection and files
    /// each reply under its id; the others sleep until their slot fills.
    fn await_reply(&self, id: u64, deadline: Deadline) -> Result<Message, Fault> {
        let mut tried = false;
        let mut st = lock(&self.state);
        loop {
            if let Some(Some(_)) = st.pending.get(&id) {
                return Ok(st.pending.remove(&id).flatten().expect("checked"));
            }
            if let Some(dead) = &st.dead {
                let f = dead.fault();
                st.pending.remove(&id);
                return Err(f);
            }
            if deadline.expired() && (tried || st.reading) {
                st.pending.remove(&id);
                return Err(Fault::Timeout);
            }
            if st.reading {
                st.sleepers += 1;
                st = match deadline {
                    Deadline::Never => self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                    Deadline::Now => st,
                    Deadline::At(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        self.wake.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0
                    }
                };
                st.sleepers -= 1;
                continue;
            }
            st.reading = true;
            drop(st);
            let got = lock(&self.reader).recv(deadline);
            tried = true;
            st = lock(&self.state);
            st.reading = false;
            match got {
                Ok(frame) if frame.kind == Kind::Reply => match st.pending.get_mut(&frame.id) {
                    Some(slot) => *slot = Some(frame.msg),
                    None => {
                        st.late_replies += 1;
                        tracing::debug!(id = frame.id, "dropping a reply whose call already gave up");
                    }
                },
                Ok(frame) => st.dead = Some(Dead::Frame(FrameError::Unexpected(frame.kind as u8))),
                Err(Fault::Timeout) => {}
                Err(Fault::Disconnected) => st.dead = Some(Dead::Disconnected),
                Err(Fault::Frame(e)) => {
                    if lock(&self.reader).mode().packet {
                        tracing::warn!(error = %e, "ignoring a bad reply datagram");
                    } else {
                        st.dead = Some(Dead::Frame(e));
                    }
                }
                Err(Fault::TooLarge { len, max }) => {
                    st.dead = Some(Dead::Frame(FrameError::TooLarge { len, max }))
                }
                Err(Fault::Io(e)) => st.dead = Some(Dead::Io(e.kind(), e.to_string())),
            }
            if st.sleepers > 0 {
                self.wake.notify_all();
            }
        }
    }
}
