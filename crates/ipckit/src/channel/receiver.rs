//! The receiving end of a channel, possibly fed by many senders.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::acceptor::Acceptor;
use super::Capacity;
use crate::error::{Fault, Result};
use crate::link::{take_fd, Frame, Mode, Reader, Writer};
use crate::message::{Handle, Message, Transferable};
use crate::sys::{self, Deadline};
use crate::wire::{HandleKind, HandleMeta, Kind};

/// How long a receiver waits to write a control frame (credit, grant)
/// before deciding the sender is not reading and dropping it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// One connected sender.
#[derive(Debug)]
struct Source {
    key: u64,
    reader: Reader,
    /// Credits and grants go back here (none for [`Capacity::Kernel`] over a
    /// pipe, nor once the sender stopped reading them).
    back: Option<Writer>,
    /// Who the kernel says the sender is (sockets only).
    peer: Option<sys::PeerCred>,
    /// A rendezvous offer waiting for a grant.
    offer: Option<u64>,
    taken: u64,
    credited: u64,
}

/// The receiving end of a one-way channel.
///
/// Built by a transport: [`crate::pipe::channel`], [`crate::fifo::open_receiver`],
/// [`crate::unix::bind_receiver`]. A receiver bound to a UNIX socket path
/// accepts any number of senders and takes messages from all of them (each
/// sender's messages stay in order). Every receive has the four forms
/// `recv`, `try_recv`, `recv_timeout` and `recv_deadline`.
///
/// A sender that sends garbage is dropped (and logged) when other senders
/// remain; a receiver with a single sender reports the bad frame as an error.
#[derive(Debug)]
pub struct Receiver {
    sources: Vec<Source>,
    accepting: Option<Acceptor>,
    capacity: Capacity,
    ready: VecDeque<(u64, Message)>,
    /// The rendezvous grant outstanding: (source key, message id).
    grant: Option<(u64, u64)>,
    next_key: u64,
    rr: usize,
}

impl Receiver {
    pub(crate) fn single(reader: Reader, back: Option<Writer>, capacity: Capacity) -> Self {
        let mut r = Receiver::empty(capacity);
        r.add_source(reader, back);
        r
    }

    pub(crate) fn listening(listener: crate::unix::Listener, capacity: Capacity) -> std::io::Result<Self> {
        let mut r = Receiver::empty(capacity);
        r.accepting = Some(Acceptor::start(listener, capacity.to_wire())?);
        Ok(r)
    }

    fn empty(capacity: Capacity) -> Self {
        Receiver {
            sources: Vec::new(),
            accepting: None,
            capacity,
            ready: VecDeque::new(),
            grant: None,
            next_key: 0,
            rr: 0,
        }
    }

    fn add_source(&mut self, reader: Reader, back: Option<Writer>) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let peer = if reader.mode().socket { sys::peer_cred(reader.fd()).ok() } else { None };
        self.sources.push(Source { key, reader, back, peer, offer: None, taken: 0, credited: 0 });
        key
    }

    /// The channel's capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// How many senders are connected right now.
    pub fn senders(&self) -> usize {
        self.sources.len()
    }

    recv_forms!(Message);

    pub(crate) fn recv_inner(&mut self, deadline: Deadline) -> Result<Message, Fault> {
        loop {
            if let Some((key, msg)) = self.ready.pop_front() {
                self.credit(key);
                return Ok(msg);
            }
            if self.sources.is_empty() && self.accepting.is_none() {
                return Err(Fault::Disconnected);
            }
            if self.capacity == Capacity::RENDEZVOUS {
                self.grant_one();
            }
            if self.accepting.is_none() && self.sources.len() == 1 {
                // One sender: read straight from it, no poll set.
                match self.sources[0].reader.recv(deadline) {
                    Ok(frame) => self.on_frame(0, frame)?,
                    Err(Fault::Disconnected) => self.drop_source(0),
                    Err(e) => return Err(e),
                }
                continue;
            }
            // Frames already buffered need no system call.
            let mut got = false;
            for i in (0..self.sources.len()).rev() {
                while self.sources.get(i).is_some_and(|s| s.reader.has_frame()) {
                    self.read_from(i);
                    got = true;
                }
            }
            if got {
                continue;
            }
            if !self.wait_and_read(deadline)? {
                return Err(Fault::Timeout);
            }
        }
    }

    /// Polls every source (and the listener) once; reads what is ready.
    /// Returns `false` on timeout.
    fn wait_and_read(&mut self, deadline: Deadline) -> Result<bool, Fault> {
        let fds = self.sources.iter().map(|s| s.reader.fd());
        let Some((ready_sources, listener_ready)) =
            sys::wait_readable_any(fds, self.accepting.as_ref().map(|a| a.wake_fd()), deadline)?
        else {
            return Ok(false);
        };
        for &i in ready_sources.iter().rev() {
            self.read_from(i);
        }
        if listener_ready {
            self.accept_all();
        }
        Ok(true)
    }

    /// Reads one frame from source `i` without blocking and handles it; a
    /// source that fails is dropped (and logged) so the others go on.
    fn read_from(&mut self, i: usize) {
        match self.sources[i].reader.recv(Deadline::Now) {
            Ok(frame) => {
                if let Err(e) = self.on_frame(i, frame) {
                    tracing::warn!(error = ?e, "dropping a sender that broke the protocol");
                    self.drop_source(i);
                }
            }
            Err(Fault::Timeout) => {}
            Err(Fault::Disconnected) => self.drop_source(i),
            Err(e) => {
                tracing::warn!(error = ?e, "dropping a sender that sent a bad frame");
                self.drop_source(i);
            }
        }
    }

    /// Adds the senders the acceptor thread has greeted.
    fn accept_all(&mut self) {
        let Some(acceptor) = &self.accepting else { return };
        let (mode, max) = (acceptor.mode(), acceptor.max());
        for fd in acceptor.take() {
            let fd = Arc::new(fd);
            self.add_source(Reader::new(fd.clone(), mode, max), Some(Writer::new(fd, mode, max)));
        }
    }

    fn on_frame(&mut self, i: usize, frame: Frame) -> Result<(), Fault> {
        let key = self.sources[i].key;
        match frame.kind {
            Kind::Data => {
                if self.grant == Some((key, frame.id)) {
                    self.grant = None;
                }
                let mut msg = frame.msg;
                msg.peer = self.sources[i].peer;
                self.ready.push_back((key, msg));
            }
            Kind::Offer => self.sources[i].offer = Some(frame.id),
            Kind::Cancel => {
                if self.sources[i].offer == Some(frame.id) {
                    self.sources[i].offer = None;
                }
                if self.grant == Some((key, frame.id)) {
                    self.grant = None;
                }
            }
            other => return Err(Fault::Frame(crate::FrameError::Unexpected(other as u8))),
        }
        Ok(())
    }

    /// Rendezvous: asks one waiting sender (round robin) for its message.
    fn grant_one(&mut self) {
        if self.grant.is_some() || self.sources.is_empty() {
            return;
        }
        let n = self.sources.len();
        for step in 0..n {
            let i = (self.rr + step) % n;
            let Some(k) = self.sources[i].offer else { continue };
            let key = self.sources[i].key;
            let sent = match self.sources[i].back.as_mut() {
                Some(back) => back.send_control(Kind::Grant, k, Deadline::after(CONTROL_TIMEOUT)),
                None => Err(Fault::Disconnected),
            };
            self.sources[i].offer = None;
            match sent {
                Ok(()) => {
                    self.grant = Some((key, k));
                    self.rr = i + 1;
                    return;
                }
                // The sender stopped reading (it is gone or going): it gets no
                // more grants, but what it already sent is still delivered.
                Err(_) => self.sources[i].back = None,
            }
        }
    }

    /// Counts a message taken from source `key`, returning credit in batches.
    fn credit(&mut self, key: u64) {
        let Capacity::Bounded(n) = self.capacity else { return };
        let Some(i) = self.sources.iter().position(|s| s.key == key) else { return };
        let s = &mut self.sources[i];
        s.taken += 1;
        if n == 0 || s.taken - s.credited < Capacity::credit_batch(n) {
            return;
        }
        let taken = s.taken;
        let r = match s.back.as_mut() {
            Some(back) => back.send_control(Kind::Credit, taken, Deadline::after(CONTROL_TIMEOUT)),
            None => Ok(()),
        };
        match r {
            Ok(()) => self.sources[i].credited = taken,
            // The sender is gone or not reading: stop crediting it, but keep
            // delivering what it already sent (the data side ends with EOF).
            Err(_) => self.sources[i].back = None,
        }
    }

    fn drop_source(&mut self, i: usize) {
        let s = self.sources.remove(i);
        if self.grant.is_some_and(|(key, _)| key == s.key) {
            self.grant = None;
        }
    }
}

impl Transferable for Receiver {
    fn into_handle(mut self) -> Result<Handle> {
        if self.accepting.is_some()
            || self.sources.len() != 1
            || !self.ready.is_empty()
            || self.grant.is_some()
        {
            return Err(crate::Error::BadHandle(
                "only a receiver with exactly one sender and nothing pending can move".into(),
            ));
        }
        let s = self.sources.pop().expect("one source");
        let mut meta = HandleMeta::new(HandleKind::Receiver, 1);
        meta.flags = s.reader.mode().flags();
        meta.max_msg = s.reader.max() as u32;
        meta.capacity = self.capacity.to_wire();
        meta.count_a = s.taken;
        meta.count_b = s.credited;
        meta.pending = s.reader.pending()?;
        let rfd = s.reader.into_shared();
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(2);
        match s.back.map(Writer::into_shared) {
            Some(b) if Arc::ptr_eq(&b, &rfd) => {
                drop(b);
                fds.push(take_fd(rfd)?);
            }
            Some(b) => {
                fds.push(take_fd(rfd)?);
                fds.push(take_fd(b)?);
            }
            None => fds.push(take_fd(rfd)?),
        }
        meta.nfds = fds.len() as u8;
        Ok(Handle { meta, fds })
    }

    fn from_handle(handle: Handle) -> Result<Self> {
        handle.expect(HandleKind::Receiver)?;
        let Handle { meta, fds } = handle;
        let mode = Mode::from_flags(meta.flags);
        let max = meta.max_msg as usize;
        let capacity = Capacity::from_wire(u64::from(meta.capacity));
        let mut fds = fds.into_iter().map(Arc::new);
        let rfd = fds.next().expect("checked count");
        let back = match fds.next() {
            Some(fd) => Some(fd),
            None if mode.socket => Some(rfd.clone()),
            None => None,
        };
        if back.is_none() && capacity != Capacity::Kernel {
            return Err(crate::Error::BadHandle(
                "a flow-controlled pipe receiver needs its return pipe".into(),
            ));
        }
        let reader = Reader::with_pending(rfd, mode, max, meta.pending);
        let mut r = Receiver::single(reader, back.map(|fd| Writer::new(fd, mode, max)), capacity);
        r.sources[0].taken = meta.count_a;
        r.sources[0].credited = meta.count_b.min(meta.count_a);
        Ok(r)
    }
}
