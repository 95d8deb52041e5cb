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

use crate::connection::Connection;
use crate::error::{Fault, RecvError, SendError};
use crate::link::frame_fds;
use crate::message::Message;
use crate::sys::{Deadline, PeerCred};
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
        let mut out = self.conn.writer.outgoing(Kind::Data, 0, msg)?;
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
        loop {
            // A frame may already be buffered (read along with an earlier
            // one): then there is nothing to wait for.
            let mut ready = if self.conn.reader.has_frame() {
                None
            } else {
                Some(self.read.readable().await.map_err(|e| RecvError::from_fault(e.into()))?)
            };
            match self.conn.recv_inner(Deadline::Now) {
                // The read that found nothing more hit EAGAIN: the readiness is stale.
                Err(Fault::Timeout) => {
                    if let Some(r) = ready.as_mut() {
                        r.clear_ready();
                    }
                }
                r => return r.map_err(RecvError::from_fault),
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
