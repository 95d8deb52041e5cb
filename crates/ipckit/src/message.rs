//! [`Message`]: bytes plus the IPC handles (capabilities) travelling with them.

use std::os::fd::OwnedFd;

use crate::error::{Error, Result};
use crate::sys::PeerCred;
use crate::wire::{HandleKind, HandleMeta};

/// A handle detached from its owner so it can travel to another process:
/// its descriptors plus what is needed to rebuild it there.
///
/// Built by [`Transferable::into_handle`]; rebuilt with
/// [`Transferable::from_handle`] (usually through [`Message::take`] or
/// [`crate::spawn::inherited`]).
#[derive(Debug)]
pub struct Handle {
    pub(crate) meta: HandleMeta,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Handle {
    /// Which kind of ipckit object this handle rebuilds into.
    pub fn kind(&self) -> HandleKind {
        self.meta.kind
    }

    pub(crate) fn expect(&self, kind: HandleKind) -> Result<()> {
        if self.meta.kind != kind {
            return Err(Error::BadHandle(format!("expected a {kind:?}, got a {:?}", self.meta.kind)));
        }
        if self.fds.len() != self.meta.nfds as usize {
            return Err(Error::BadHandle("descriptor count does not match".into()));
        }
        Ok(())
    }
}

/// An ipckit object that can be handed to another process: sent inside a
/// [`Message`] over a UNIX socket, or inherited by a spawned child.
pub trait Transferable: Sized {
    /// Detaches the object into a [`Handle`].
    ///
    /// # Errors
    ///
    /// Fails when the object is in a state that cannot move (for example, a
    /// sender in the middle of a partly written frame).
    fn into_handle(self) -> Result<Handle>;

    /// Rebuilds the object from a [`Handle`] received from another process.
    ///
    /// # Errors
    ///
    /// [`Error::BadHandle`] when the handle is of another kind or malformed.
    fn from_handle(handle: Handle) -> Result<Self>;
}

impl Transferable for OwnedFd {
    fn into_handle(self) -> Result<Handle> {
        Ok(Handle { meta: HandleMeta::new(HandleKind::Fd, 1), fds: vec![self] })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Fd)?;
        Ok(handle.fds.into_iter().next().expect("one descriptor checked"))
    }
}

/// One message: a byte payload and, optionally, handles to pass along.
///
/// Handles can only travel over UNIX sockets (they become `SCM_RIGHTS`
/// descriptors); sending a message with handles over a pipe is an error.
///
/// # Examples
///
/// ```
/// use ipckit::Message;
/// let m = Message::from(&b"hello"[..]);
/// assert_eq!(m.bytes(), b"hello");
/// assert!(m.handles().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Message {
    pub(crate) data: Vec<u8>,
    pub(crate) handles: Vec<Handle>,
    pub(crate) peer: Option<PeerCred>,
}

impl Message {
    /// A message with this payload and no handles.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Message { data: data.into(), handles: Vec::new(), peer: None }
    }

    /// Attaches an object to pass along with the message.
    ///
    /// # Errors
    ///
    /// As [`Transferable::into_handle`].
    pub fn with<T: Transferable>(mut self, object: T) -> Result<Self> {
        self.handles.push(object.into_handle()?);
        Ok(self)
    }

    /// Attaches an already detached handle.
    pub fn push_handle(&mut self, handle: Handle) {
        self.handles.push(handle);
    }

    /// For a received message, who sent it, as the kernel recorded it when
    /// the sender connected (`SO_PEERCRED`); `None` over pipes and FIFOs,
    /// and for messages built locally.
    pub fn sender_cred(&self) -> Option<PeerCred> {
        self.peer
    }

    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The payload, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The handles that came with the message, in order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Removes and rebuilds the first handle that came with the message.
    ///
    /// # Errors
    ///
    /// [`Error::BadHandle`] when there is none left or it is of another kind
    /// (the handle is then dropped, closing its descriptors).
    pub fn take<T: Transferable>(&mut self) -> Result<T> {
        if self.handles.is_empty() {
            return Err(Error::BadHandle("the message carries no (more) handles".into()));
        }
        T::from_handle(self.handles.remove(0))
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::new(data)
    }
}

impl From<&[u8]> for Message {
    fn from(data: &[u8]) -> Self {
        Message::new(data.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Message {
    fn from(data: &[u8; N]) -> Self {
        Message::new(data.to_vec())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::new(s.as_bytes().to_vec())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::new(s.into_bytes())
    }
}
