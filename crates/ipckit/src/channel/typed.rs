//! Serde-typed channels: [`TypedSender<T>`] and [`TypedReceiver<T>`], encoded with postcard.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Receiver, Sender};
use crate::error::{
    Fault, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::message::Message;
use crate::sys::Deadline;

/// A [`Sender`] of `T` values. A failed send hands the value back.
///
/// # Examples
///
/// ```
/// use ipckit::{pipe, Capacity, TypedReceiver, TypedSender};
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, name: String }
/// let (tx, rx) = pipe::channel(Capacity::Kernel)?;
/// let (mut tx, mut rx) = (TypedSender::new(tx), TypedReceiver::<Job>::new(rx));
/// tx.send(Job { id: 7, name: "render".into() })?;
/// assert_eq!(rx.recv()?, Job { id: 7, name: "render".into() });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TypedSender<T> {
    inner: Sender,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> TypedSender<T> {
    /// Wraps a byte sender.
    pub fn new(inner: Sender) -> Self {
        TypedSender { inner, _t: PhantomData }
    }

    /// The byte sender underneath.
    pub fn into_inner(self) -> Sender {
        self.inner
    }

    fn send_inner(&mut self, value: &T, deadline: Deadline) -> Result<(), Fault> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| Fault::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        self.inner.send_inner(&Message::new(bytes), deadline)
    }

    /// As [`Sender::send`].
    ///
    /// # Errors
    ///
    /// As [`Sender::send`]; the value is handed back.
    pub fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        self.send_inner(&value, Deadline::Never).map_err(|f| SendError::from_fault(f, value))
    }

    /// As [`Sender::try_send`].
    ///
    /// # Errors
    ///
    /// As [`Sender::try_send`]; the value is handed back.
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        self.send_inner(&value, Deadline::Now).map_err(|f| TrySendError::from_fault(f, value))
    }

    /// As [`Sender::send_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Sender::send_timeout`]; the value is handed back.
    pub fn send_timeout(&mut self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_inner(&value, Deadline::after(timeout)).map_err(|f| SendTimeoutError::from_fault(f, value))
    }

    /// As [`Sender::send_deadline`].
    ///
    /// # Errors
    ///
    /// As [`Sender::send_deadline`]; the value is handed back.
    pub fn send_deadline(&mut self, value: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        self.send_inner(&value, Deadline::At(deadline)).map_err(|f| SendTimeoutError::from_fault(f, value))
    }
}

/// A [`Receiver`] of `T` values. A message that does not decode as a `T` is
/// a `Decode` error (and is consumed); the channel stays usable.
#[derive(Debug)]
pub struct TypedReceiver<T> {
    inner: Receiver,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> TypedReceiver<T> {
    /// Wraps a byte receiver.
    pub fn new(inner: Receiver) -> Self {
        TypedReceiver { inner, _t: PhantomData }
    }

    /// The byte receiver underneath.
    pub fn into_inner(self) -> Receiver {
        self.inner
    }

    /// As [`Receiver::recv`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv`], plus [`RecvError::Decode`].
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let m = self.inner.recv()?;
        Ok(postcard::from_bytes(m.bytes())?)
    }

    /// As [`Receiver::try_recv`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::try_recv`], plus [`TryRecvError::Decode`].
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let m = self.inner.try_recv()?;
        Ok(postcard::from_bytes(m.bytes())?)
    }

    /// As [`Receiver::recv_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv_timeout`], plus [`RecvTimeoutError::Decode`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let m = self.inner.recv_timeout(timeout)?;
        Ok(postcard::from_bytes(m.bytes())?)
    }

    /// As [`Receiver::recv_deadline`].
    ///
    /// # Errors
    ///
    /// As [`Receiver::recv_deadline`], plus [`RecvTimeoutError::Decode`].
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let m = self.inner.recv_deadline(deadline)?;
        Ok(postcard::from_bytes(m.bytes())?)
    }
}
