//! Serde-typed ends over shared-memory channels: [`ShmTypedSender<T>`] and
//! [`ShmTypedReceiver<T>`], encoded with postcard like
//! [`TypedSender`](crate::TypedSender) over pipes and sockets.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::channel::{ShmReceiver, ShmSender};
use crate::error::{
    Fault, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::sys::Deadline;

/// A [`ShmSender`] of `T` values. A failed send hands the value back; a
/// value whose encoding is over the channel's maximum message is
/// `TooLarge` (nothing is sent).
///
/// # Examples
///
/// ```
/// use ipckit::shm::channel::{Config, ShmChannel};
/// use ipckit::shm::{ShmTypedReceiver, ShmTypedSender};
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, name: String }
/// let name = format!("doc-typed-{}", std::process::id());
/// let chan = ShmChannel::create(&name, &Config::mpmc(8, 256))?;
/// let mut tx = ShmTypedSender::new(chan.sender()?);
/// let mut rx = ShmTypedReceiver::<Job>::new(ShmChannel::open(&name)?.receiver()?);
/// tx.send(Job { id: 7, name: "render".into() })?;
/// assert_eq!(rx.recv()?, Job { id: 7, name: "render".into() });
/// ShmChannel::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShmTypedSender<T> {
    inner: ShmSender,
    buf: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> ShmTypedSender<T> {
    /// Wraps a byte sender.
    pub fn new(inner: ShmSender) -> Self {
        ShmTypedSender { inner, buf: Vec::new(), _t: PhantomData }
    }

    /// The byte sender underneath.
    pub fn into_inner(self) -> ShmSender {
        self.inner
    }

    fn send_inner(&mut self, value: &T, deadline: Deadline) -> Result<(), Fault> {
        // Encode into a reused buffer: no allocation per message once it is big enough.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let r = match postcard::to_io(value, &mut buf) {
            Ok(_) => self.inner.send_slice(&buf, deadline),
            Err(e) => Err(Fault::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))),
        };
        self.buf = buf;
        r
    }

    /// As [`ShmSender::send`].
    ///
    /// # Errors
    ///
    /// As [`ShmSender::send`]; the value is handed back.
    pub fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        self.send_inner(&value, Deadline::Never).map_err(|f| SendError::from_fault(f, value))
    }

    /// As [`ShmSender::try_send`].
    ///
    /// # Errors
    ///
    /// As [`ShmSender::try_send`]; the value is handed back.
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        self.send_inner(&value, Deadline::Now).map_err(|f| TrySendError::from_fault(f, value))
    }

    /// As [`ShmSender::send_timeout`].
    ///
    /// # Errors
    ///
    /// As [`ShmSender::send_timeout`]; the value is handed back.
    pub fn send_timeout(&mut self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_inner(&value, Deadline::after(timeout)).map_err(|f| SendTimeoutError::from_fault(f, value))
    }

    /// As [`ShmSender::send_deadline`].
    ///
    /// # Errors
    ///
    /// As [`ShmSender::send_deadline`]; the value is handed back.
    pub fn send_deadline(&mut self, value: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        self.send_inner(&value, Deadline::At(deadline)).map_err(|f| SendTimeoutError::from_fault(f, value))
    }
}

/// A [`ShmReceiver`] of `T` values. A message that does not decode as a `T`
/// is a `Decode` error (and is consumed); the channel stays usable.
#[derive(Debug)]
pub struct ShmTypedReceiver<T> {
    inner: ShmReceiver,
    buf: Vec<u8>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> ShmTypedReceiver<T> {
    /// Wraps a byte receiver.
    pub fn new(inner: ShmReceiver) -> Self {
        ShmTypedReceiver { inner, buf: Vec::new(), _t: PhantomData }
    }

    /// The byte receiver underneath.
    pub fn into_inner(self) -> ShmReceiver {
        self.inner
    }

    /// Receives into the reused buffer (no allocation once it is big enough).
    fn recv_inner(&mut self, deadline: Deadline) -> Result<&[u8], Fault> {
        self.inner.recv_vec(&mut self.buf, deadline)?;
        Ok(&self.buf)
    }

    /// As [`ShmReceiver::recv`].
    ///
    /// # Errors
    ///
    /// As [`ShmReceiver::recv`], plus [`RecvError::Decode`].
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let b = self.recv_inner(Deadline::Never).map_err(RecvError::from_fault)?;
        Ok(postcard::from_bytes(b)?)
    }

    /// As [`ShmReceiver::try_recv`].
    ///
    /// # Errors
    ///
    /// As [`ShmReceiver::try_recv`], plus [`TryRecvError::Decode`].
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let b = self.recv_inner(Deadline::Now).map_err(TryRecvError::from_fault)?;
        Ok(postcard::from_bytes(b)?)
    }

    /// As [`ShmReceiver::recv_timeout`].
    ///
    /// # Errors
    ///
    /// As [`ShmReceiver::recv_timeout`], plus [`RecvTimeoutError::Decode`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let b = self.recv_inner(Deadline::after(timeout)).map_err(RecvTimeoutError::from_fault)?;
        Ok(postcard::from_bytes(b)?)
    }

    /// As [`ShmReceiver::recv_deadline`].
    ///
    /// # Errors
    ///
    /// As [`ShmReceiver::recv_deadline`], plus [`RecvTimeoutError::Decode`].
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let b = self.recv_inner(Deadline::At(deadline)).map_err(RecvTimeoutError::from_fault)?;
        Ok(postcard::from_bytes(b)?)
    }
}
