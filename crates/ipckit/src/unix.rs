//! UNIX domain sockets at filesystem paths: stream and seqpacket.
//!
//! - [`Listener::bind`] / [`connect`]: two-way [`Connection`]s (what
//!   [`crate::rpc`] runs on), each accepted one carrying the peer's
//!   kernel-verified credentials (`SO_PEERCRED`).
//! - [`bind_receiver`] / [`connect_sender`]: a one-way channel that any number
//!   of senders connect to, with the [`Capacity`] the receiver chooses.
//!
//! Messages sent over a UNIX socket can carry handles (`SCM_RIGHTS`): see
//! [`Message::with`](crate::Message::with).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::{Capacity, Receiver, Sender};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::link::{Mode, Reader, Writer, DEFAULT_MAX_MESSAGE};
use crate::message::{Handle, Transferable};
use crate::sys::{self, Deadline, Interest};
pub use crate::sys::{PeerCred, SocketKind};
use crate::wire::{HandleKind, HandleMeta};

const BACKLOG: i32 = 128;

/// A listening UNIX socket bound to a filesystem path.
///
/// The socket file is removed when the listener that bound it is dropped.
///
/// # Examples
///
/// ```
/// use ipckit::unix::{self, Listener, SocketKind};
/// let dir = std::env::temp_dir().join(format!("ipckit-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("echo.sock");
/// let listener = Listener::bind(&path, SocketKind::Stream)?;
/// let mut client = unix::connect(&path, SocketKind::Stream)?;
/// let mut server = listener.accept()?;
/// assert_eq!(server.peer_cred().unwrap().pid, std::process::id());
/// client.send("hi")?;
/// assert_eq!(server.recv()?.bytes(), b"hi");
/// # drop(listener); std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    kind: SocketKind,
    max: usize,
    /// This listener created the socket file and removes it on drop.
    owns_path: bool,
}

impl Listener {
    /// `bind(2)` + `listen(2)` at `path`.
    ///
    /// A socket file left behind by a process that died is replaced; a path
    /// where something is still listening is [`Error::AlreadyExists`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::NotFound`] (the directory is missing),
    /// [`Error::PermissionDenied`], [`Error::InvalidName`] (path too long for
    /// a socket address), or [`Error::Io`].
    pub fn bind(path: impl AsRef<Path>, kind: SocketKind) -> Result<Self> {
        let path = path.as_ref();
        check_path(path)?;
        let fd = match sys::unix_listen(path, kind, BACKLOG) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // Is anyone still there? If not, the file is stale.
                if sys::unix_connect(path, kind).is_ok() {
                    return Err(Error::AlreadyExists(path.display().to_string()));
                }
                let _ = std::fs::remove_file(path);
                sys::unix_listen(path, kind, BACKLOG).map_err(|e| Error::io(path.display(), e))?
            }
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        Ok(Listener { fd, path: path.to_owned(), kind, max: DEFAULT_MAX_MESSAGE, owns_path: true })
    }

    /// Sets the largest message accepted connections send or accept (default 16 MiB).
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// The path the listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stream or seqpacket.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// The largest message on accepted connections.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    pub(crate) fn mode(&self) -> Mode {
        Mode::of(self.kind)
    }

    pub(crate) fn accept_raw(&self) -> std::io::Result<Option<OwnedFd>> {
        sys::unix_accept(self.fd.as_fd())
    }

    /// `accept4(2)`: waits for the next connection.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the kernel refuses (descriptor limit).
    pub fn accept(&self) -> Result<Connection> {
        self.accept_inner(Deadline::Never)
    }

    /// Accepts a connection if one is pending; `Ok(None)` otherwise.
    ///
    /// # Errors
    ///
    /// As [`Listener::accept`].
    pub fn try_accept(&self) -> Result<Option<Connection>> {
        match self.accept_inner(Deadline::Now) {
            Ok(c) => Ok(Some(c)),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits at most `timeout` for a connection.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came, otherwise as [`Listener::accept`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Connection> {
        self.accept_inner(Deadline::after(timeout))
    }

    /// Waits until `deadline` at the latest for a connection.
    ///
    /// # Errors
    ///
    /// As [`Listener::accept_timeout`].
    pub fn accept_deadline(&self, deadline: Instant) -> Result<Connection> {
        self.accept_inner(Deadline::At(deadline))
    }

    fn accept_inner(&self, deadline: Deadline) -> Result<Connection> {
        loop {
            if let Some(fd) = self.accept_raw()? {
                return Ok(Connection::from_socket(fd, self.kind, self.max));
            }
            if !sys::wait(self.fd.as_fd(), Interest::Read, deadline)? {
                return Err(Error::Timeout);
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.owns_path {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Transferable for Listener {
    /// The receiving process gets the listening socket but not the duty to
    /// remove its file: that stays with whoever bound it (nobody, once moved).
    fn into_handle(mut self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::Listener, 1);
        meta.flags = self.mode().flags();
        meta.max_msg = self.max as u32;
        meta.pending = self.path.as_os_str().as_encoded_bytes().to_vec();
        self.owns_path = false;
        let fd = self.fd.try_clone()?;
        Ok(Handle { meta, fds: vec![fd] })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Listener)?;
        let Handle { meta, fds } = handle;
        let mode = Mode::from_flags(meta.flags);
        let kind = if mode.packet { SocketKind::SeqPacket } else { SocketKind::Stream };
        let fd = fds.into_iter().next().expect("checked count");
        if !sys::is_socket(fd.as_fd()) {
            return Err(Error::BadHandle("listener descriptor is not a socket".into()));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&meta.pending).into_owned());
        Ok(Listener { fd, path, kind, max: meta.max_msg as usize, owns_path: false })
    }
}

/// `connect(2)` to a listener at `path`: a two-way [`Connection`].
///
/// # Errors
///
/// [`Error::NotFound`] when nothing listens there, [`Error::PermissionDenied`],
/// [`Error::InvalidName`], or [`Error::Io`].
pub fn connect(path: impl AsRef<Path>, kind: SocketKind) -> Result<Connection> {
    let path = path.as_ref();
    check_path(path)?;
    let fd = sys::unix_connect(path, kind).map_err(|e| Error::io(path.display(), e))?;
    Ok(Connection::from_socket(fd, kind, DEFAULT_MAX_MESSAGE))
}

/// As [`connect`], but waits up to `timeout` for a listener to appear at
/// `path` (for a server that is still starting).
///
/// # Errors
///
/// [`Error::Timeout`] when nobody listens there in time, otherwise as [`connect`].
pub fn connect_timeout(path: impl AsRef<Path>, kind: SocketKind, timeout: Duration) -> Result<Connection> {
    let deadline = Deadline::after(timeout);
    let mut pause = Duration::from_micros(500);
    loop {
        match connect(path.as_ref(), kind) {
            Err(Error::NotFound(_) | Error::NotListening(_)) if !deadline.expired() => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(Error::NotFound(_) | Error::NotListening(_)) => return Err(Error::Timeout),
            other => return other,
        }
    }
}

/// Binds a channel receiver at `path` that any number of senders can
/// [`connect_sender`] to; `capacity` applies to each sender.
///
/// # Errors
///
/// As [`Listener::bind`].
pub fn bind_receiver(path: impl AsRef<Path>, kind: SocketKind, capacity: Capacity) -> Result<Receiver> {
    receiver_on(Listener::bind(path, kind)?, capacity)
}

/// A channel receiver on a listener you configured (say, with
/// [`Listener::with_max_message_size`]) or received from another process.
///
/// # Errors
///
/// [`Error::Io`] when the acceptor thread cannot start.
pub fn receiver_on(listener: Listener, capacity: Capacity) -> Result<Receiver> {
    Ok(Receiver::listening(listener, capacity)?)
}

/// Connects a channel sender to a receiver bound at `path`. The channel's
/// capacity is learnt from the receiver's greeting on the first send.
///
/// # Errors
///
/// As [`connect`].
pub fn connect_sender(path: impl AsRef<Path>, kind: SocketKind) -> Result<Sender> {
    let path = path.as_ref();
    check_path(path)?;
    let fd = Arc::new(sys::unix_connect(path, kind).map_err(|e| Error::io(path.display(), e))?);
    let mode = Mode::of(kind);
    let back = Reader::new(fd.clone(), mode, DEFAULT_MAX_MESSAGE);
    Ok(Sender::new(Writer::new(fd, mode, DEFAULT_MAX_MESSAGE), Some(back), None))
}

/// A socket address holds at most 107 path bytes.
fn check_path(path: &Path) -> Result<()> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let why = if bytes.is_empty() {
        "empty path"
    } else if bytes.len() > 107 {
        "longer than the 107 bytes a UNIX socket address holds"
    } else if bytes.contains(&0) {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: path.display().to_string(), why })
}
