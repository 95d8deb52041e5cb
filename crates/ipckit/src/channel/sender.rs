//! The sending end of a channel.

use std::time::Duration;

use super::Capacity;
use crate::error::{Fault, Result};
use crate::link::{take_fd, Frame, Mode, Reader, Writer};
use crate::message::{Handle, Message, Transferable};
use crate::sys::Deadline;
use crate::wire::{HandleKind, HandleMeta, Kind};
use std::sync::Arc;

/// The sending end of a one-way channel.
///
/// Built by a transport: [`crate::pipe::channel`], [`crate::fifo::open_sender`],
/// [`crate::unix::connect_sender`]. Every send has the four forms `send`,
/// `try_send`, `send_timeout` and `send_deadline`; a failed send hands the
/// message back inside its error.
///
/// A `Sender` is used by one thread at a time (`&mut self`); to send from
/// several threads or processes, give each its own sender (connect again, or
/// pass one to a child).
#[derive(Debug)]
pub struct Sender {
    writer: Writer,
    /// Credits, grants and the greeting come back on this reader
    /// (none for [`Capacity::Kernel`] over a pipe).
    back: Option<Reader>,
    /// Unknown until a socket receiver's `Hello` arrives.
    capacity: Option<Capacity>,
    /// Messages sent so far (the next sequence number).
    sent: u64,
    /// Messages the receiver reported taken.
    taken: u64,
}

impl Sender {
    pub(crate) fn new(writer: Writer, back: Option<Reader>, capacity: Option<Capacity>) -> Self {
        Sender { writer, back, capacity, sent: 0, taken: 0 }
    }

    /// The channel's capacity, if known yet (a sender connected to a socket
    /// learns it from the receiver's greeting on its first send).
    pub fn capacity(&self) -> Option<Capacity> {
        self.capacity
    }

    /// Sets the largest message this sender sends, in bytes (default 16 MiB;
    /// keep it at or below the receiver's, or the receiver refuses the frame).
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.writer.set_max(max);
        self
    }

    /// The largest message this sender will send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.writer.max()
    }

    send_forms!();

    pub(crate) fn send_inner(&mut self, msg: &Message, deadline: Deadline) -> Result<(), Fault> {
        let len = msg.data.len();
        if len > self.writer.max() {
            return Err(Fault::TooLarge { len, max: self.writer.max() });
        }
        let capacity = match self.capacity {
            Some(c) => c,
            None => self.await_hello(deadline)?,
        };
        match capacity {
            Capacity::Kernel => self.writer.send(Kind::Data, self.sent, msg, deadline)?,
            Capacity::Bounded(0) => return self.send_rendezvous(msg, deadline),
            Capacity::Bounded(n) => {
                if self.sent >= self.taken + n as u64 {
                    self.await_credit(n as u64, deadline)?;
                }
                self.writer.send(Kind::Data, self.sent, msg, deadline)?;
            }
        }
        self.sent += 1;
        Ok(())
    }

    fn send_rendezvous(&mut self, msg: &Message, deadline: Deadline) -> Result<(), Fault> {
        let k = self.sent;
        self.writer.send_control(Kind::Offer, k, deadline)?;
        loop {
            match self.read_back(deadline) {
                Ok(Frame { kind: Kind::Grant, id, .. }) if id == k => break,
                // A grant for an offer we withdrew earlier.
                Ok(Frame { kind: Kind::Grant, id, .. }) if id < k => {}
                Ok(frame) => self.absorb(frame)?,
                Err(Fault::Timeout) => {
                    // Withdraw the offer; the receiver drops it (and any grant
                    // already on its way is ignored above on the next send).
                    let _ =
                        self.writer.send_control(Kind::Cancel, k, Deadline::after(Duration::from_secs(1)));
                    self.sent += 1;
                    return Err(Fault::Timeout);
                }
                Err(e) => return Err(e),
            }
        }
        // The receiver asked for exactly this message: write it.
        let r = self.writer.send(Kind::Data, k, msg, Deadline::Never);
        self.sent += 1;
        r
    }

    /// Blocks until the receiver returns credit, then takes in every other
    /// frame already waiting, so credits never pile up unread (a seqpacket
    /// peer's queue holds only a few datagrams).
    fn await_credit(&mut self, n: u64, deadline: Deadline) -> Result<(), Fault> {
        while self.sent >= self.taken + n {
            let frame = self.read_back(deadline)?;
            self.absorb(frame)?;
        }
        loop {
            match self.read_back(Deadline::Now) {
                Ok(frame) => self.absorb(frame)?,
                Err(Fault::Timeout) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn read_back(&mut self, deadline: Deadline) -> Result<Frame, Fault> {
        match self.back.as_mut() {
            Some(back) => back.recv(deadline),
            None => Err(Fault::Io(std::io::Error::other("channel has no return path"))),
        }
    }

    /// Takes in a frame from the receiver that is not the one being waited for.
    fn absorb(&mut self, frame: Frame) -> Result<(), Fault> {
        match frame.kind {
            Kind::Credit => {
                // Credit counts are cumulative; never let a peer move them backwards
                // or beyond what was sent.
                self.taken = self.taken.max(frame.id.min(self.sent));
                Ok(())
            }
            Kind::Grant => Ok(()),
            Kind::Hello if self.capacity.is_none() => {
                self.capacity = Some(Capacity::from_wire(frame.id));
                Ok(())
            }
            other => Err(Fault::Frame(crate::FrameError::Unexpected(other as u8))),
        }
    }

    fn await_hello(&mut self, deadline: Deadline) -> Result<Capacity, Fault> {
        while self.capacity.is_none() {
            let frame = self.read_back(deadline)?;
            self.absorb(frame)?;
        }
        Ok(self.capacity.expect("set above"))
    }
}

impl Transferable for Sender {
    fn into_handle(self) -> Result<Handle> {
        let mut meta = HandleMeta::new(HandleKind::Sender, 1);
        meta.flags = self.writer.mode().flags();
        meta.max_msg = self.writer.max() as u32;
        meta.capacity = self.capacity.map_or(u32::MAX, Capacity::to_wire);
        // count_b = u64::MAX marks "capacity not learnt yet".
        meta.count_b = if self.capacity.is_some() { self.taken } else { u64::MAX };
        meta.count_a = self.sent;
        if let Some(back) = &self.back {
            meta.pending = back.pending()?;
        }
        let Sender { writer, back, .. } = self;
        let wfd = writer.into_shared();
        let mut fds = Vec::with_capacity(2);
        match back.map(Reader::into_shared) {
            Some(b) if Arc::ptr_eq(&b, &wfd) => {
                drop(b);
                fds.push(take_fd(wfd)?);
            }
            Some(b) => {
                fds.push(take_fd(wfd)?);
                fds.push(take_fd(b)?);
            }
            None => fds.push(take_fd(wfd)?),
        }
        meta.nfds = fds.len() as u8;
        Ok(Handle { meta, fds })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Sender)?;
        let Handle { meta, fds } = handle;
        let mode = Mode::from_flags(meta.flags);
        let max = meta.max_msg as usize;
        let mut fds = fds.into_iter().map(Arc::new);
        let wfd = fds.next().expect("checked count");
        let capacity =
            if meta.count_b == u64::MAX { None } else { Some(Capacity::from_wire(u64::from(meta.capacity))) };
        let back_fd = match fds.next() {
            Some(fd) => Some(fd),
            None if mode.socket => Some(wfd.clone()),
            None => None,
        };
        if back_fd.is_none() && capacity != Some(Capacity::Kernel) {
            return Err(crate::Error::BadHandle(
                "a flow-controlled pipe sender needs its return pipe".into(),
            ));
        }
        let back = back_fd.map(|fd| Reader::with_pending(fd, mode, max, meta.pending));
        let mut s = Sender::new(Writer::new(wfd, mode, max), back, capacity);
        s.sent = meta.count_a;
        s.taken = if meta.count_b == u64::MAX { 0 } else { meta.count_b.min(meta.count_a) };
        Ok(s)
    }
}
