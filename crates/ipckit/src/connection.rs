//! [`Connection`]: a two-way framed link (a connected UNIX socket or a pair of pipes).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::{Fault, Result};
use crate::link::{take_fd, Mode, Reader, Writer, DEFAULT_MAX_MESSAGE};
use crate::message::{Handle, Message, Transferable};
use crate::sys::{self, Deadline, PeerCred, SocketKind};
use crate::wire::{HandleKind, HandleMeta, Kind};

/// A two-way message link: both ends send and receive, with no ipckit flow
/// control (the kernel's buffer bounds what is in flight).
///
/// This is the transport under [`crate::rpc`]: a [`crate::rpc::Client`] and a
/// [`crate::rpc::Server`] each take one. Built by [`crate::unix::connect`],
/// [`crate::unix::Listener::accept`], [`Connection::pair`] or
/// [`crate::pipe::duplex`].
///
/// # Examples
///
/// ```
/// use ipckit::{Connection, SocketKind};
/// let (mut a, mut b) = Connection::pair(SocketKind::SeqPacket)?;
/// a.send("ping")?;
/// assert_eq!(b.recv()?.bytes(), b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    pub(crate) peer: Option<PeerCred>,
}

impl Connection {
    pub(crate) fn from_socket(fd: OwnedFd, kind: SocketKind, max: usize) -> Self {
        let peer = sys::peer_cred(std::os::fd::AsFd::as_fd(&fd)).ok();
        let fd = Arc::new(fd);
        let mode = Mode::of(kind);
        Connection { reader: Reader::new(fd.clone(), mode, max), writer: Writer::new(fd, mode, max), peer }
    }

    pub(crate) fn from_pipes(read: OwnedFd, write: OwnedFd, max: usize) -> Self {
        Connection {
            reader: Reader::new(Arc::new(read), Mode::PIPE, max),
            writer: Writer::new(Arc::new(write), Mode::PIPE, max),
            peer: None,
        }
    }

    /// `socketpair(2)`: two connected ends, to keep one and hand the other to a child.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Io`] when the kernel refuses (descriptor limit).
    pub fn pair(kind: SocketKind) -> Result<(Connection, Connection)> {
        let (a, b) = sys::socketpair(kind)?;
        Ok((
            Connection::from_socket(a, kind, DEFAULT_MAX_MESSAGE),
            Connection::from_socket(b, kind, DEFAULT_MAX_MESSAGE),
        ))
    }

    /// Adopts a connected UNIX socket opened some other way (for example a
    /// [`std::os::unix::net::UnixStream`], or a descriptor from socket
    /// activation). The descriptor is made blocking: ipckit waits in the
    /// kernel with a receive timeout, and passes `MSG_DONTWAIT` where it must not wait.
    ///
    /// # Errors
    ///
    /// [`crate::Error::BadHandle`] when `fd` is not a socket, or [`crate::Error::Io`].
    pub fn from_fd(fd: OwnedFd, kind: SocketKind) -> Result<Connection> {
        if !sys::is_socket(std::os::fd::AsFd::as_fd(&fd)) {
            return Err(crate::Error::BadHandle("not a socket".into()));
        }
        sys::set_nonblocking(&fd, false)?;
        Ok(Connection::from_socket(fd, kind, DEFAULT_MAX_MESSAGE))
    }

    /// Sets the largest message this end sends or accepts (default 16 MiB).
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.reader.set_max(max);
        self.writer.set_max(max);
        self
    }

    /// The largest message this end sends or accepts.
    pub fn max_message_size(&self) -> usize {
        self.writer.max()
    }

    /// The peer's pid, uid and gid as the kernel recorded them when the
    /// connection was made (`SO_PEERCRED`); `None` for pipes.
    pub fn peer_cred(&self) -> Option<PeerCred> {
        self.peer
    }

    send_forms!();

    fn send_inner(&mut self, msg: &Message, deadline: Deadline) -> Result<(), Fault> {
        self.writer.send(Kind::Data, 0, msg, deadline)
    }

    recv_forms!(Message);

    pub(crate) fn recv_inner(&mut self, deadline: Deadline) -> Result<Message, Fault> {
        let frame = self.reader.recv(deadline)?;
        match frame.kind {
            Kind::Data => {
                let mut msg = frame.msg;
                msg.peer = self.peer;
                Ok(msg)
            }
            other => Err(Fault::Frame(crate::FrameError::Unexpected(other as u8))),
        }
    }
}

impl Transferable for Connection {
    fn into_handle(self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::Connection, 1);
        meta.flags = self.reader.mode().flags();
        meta.max_msg = self.reader.max() as u32;
        meta.pending = self.reader.pending()?;
        let (r, w) = (self.reader.into_shared(), self.writer.into_shared());
        let fds = if Arc::ptr_eq(&r, &w) {
            drop(w);
            vec![take_fd(r)?]
        } else {
            vec![take_fd(r)?, take_fd(w)?]
        };
        meta.nfds = fds.len() as u8;
        Ok(Handle { meta, fds })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Connection)?;
        let Handle { meta, fds } = handle;
        let mode = Mode::from_flags(meta.flags);
        let max = meta.max_msg as usize;
        let mut fds = fds.into_iter().map(Arc::new);
        let r = fds.next().expect("checked count");
        let w = match fds.next() {
            Some(w) => w,
            None if mode.socket => r.clone(),
            None => return Err(crate::Error::BadHandle("a pipe connection needs two descriptors".into())),
        };
        let peer = if mode.socket { sys::peer_cred(std::os::fd::AsFd::as_fd(&*r)).ok() } else { None };
        Ok(Connection {
            reader: Reader::with_pending(r, mode, max, meta.pending),
            writer: Writer::new(w, mode, max),
            peer,
        })
    }
}
