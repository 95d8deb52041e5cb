//! A framed link over one or two descriptors: the layer every transport shares.
//!
//! A [`Reader`] turns bytes (a pipe or stream socket) or datagrams (a
//! seqpacket socket) into checked [`Frame`]s; a [`Writer`] does the reverse.
//! Both work on non-blocking descriptors and wait with `poll(2)`, so every
//! operation honours a [`Deadline`]. A frame read half-way when a deadline
//! passes stays buffered, so a timeout never corrupts the stream.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Fault, FrameError};
use crate::message::{Handle, Message};
use crate::sys::{self, Deadline, Interest, Xfer};
use crate::wire::{self, Header, Kind, HEADER_LEN};

/// The default largest message body: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// A connection's read buffer starts small (idle connections cost little)
/// and doubles as data arrives.
const INITIAL_BUF: usize = 4 << 10;

/// How a descriptor carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    /// A socket (can carry descriptors, uses `sendmsg`/`recvmsg`).
    pub(crate) socket: bool,
    /// The kernel keeps message boundaries (seqpacket): one frame per datagram.
    pub(crate) packet: bool,
}

impl Mode {
    pub(crate) const PIPE: Mode = Mode { socket: false, packet: false };
    pub(crate) const STREAM: Mode = Mode { socket: true, packet: false };
    pub(crate) const PACKET: Mode = Mode { socket: true, packet: true };

    pub(crate) fn of(kind: sys::SocketKind) -> Mode {
        match kind {
            sys::SocketKind::Stream => Mode::STREAM,
            sys::SocketKind::SeqPacket => Mode::PACKET,
        }
    }

    pub(crate) fn flags(self) -> u8 {
        u8::from(self.packet) | (u8::from(self.socket) << 1)
    }

    pub(crate) fn from_flags(f: u8) -> Mode {
        Mode { packet: f & 1 != 0, socket: f & 2 != 0 }
    }
}

/// Takes sole ownership of a shared descriptor, for handing it to another process.
pub(crate) fn take_fd(fd: Arc<OwnedFd>) -> Result<OwnedFd, crate::Error> {
    Arc::try_unwrap(fd)
        .map_err(|_| crate::Error::BadHandle("the descriptor is still shared by another handle".into()))
}

/// One decoded frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: Kind,
    pub(crate) id: u64,
    pub(crate) msg: Message,
}

/// The reading half of a link.
#[derive(Debug)]
pub(crate) struct Reader {
    fd: Arc<OwnedFd>,
    mode: Mode,
    max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// Set once a byte stream has lost frame alignment: it cannot recover.
    broken: Option<FrameError>,
    eof: bool,
    /// Pipes only: the last receive found nothing when it read first. In
    /// request/reply traffic the next one will not find anything either, so
    /// wait first and read once instead of a read that fails, a wait and a
    /// second read. Cleared when data turns out to be queued up.
    starved: bool,
    /// Sockets only: the `SO_RCVTIMEO` last set (`None`: not known).
    rcvtimeo: Option<Option<std::time::Duration>>,
    /// What the last `recvmsg(2)` reported besides its bytes.
    last_truncated: bool,
    last_fds_lost: bool,
}

impl Reader {
    pub(crate) fn new(fd: Arc<OwnedFd>, mode: Mode, max: usize) -> Self {
        Reader {
            fd,
            mode,
            max,
            buf: Vec::new(),
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            broken: None,
            eof: false,
            starved: false,
            rcvtimeo: None,
            last_truncated: false,
            last_fds_lost: false,
        }
    }

    /// Rebuilds a reader that already holds `pending` unconsumed bytes.
    pub(crate) fn with_pending(fd: Arc<OwnedFd>, mode: Mode, max: usize, pending: Vec<u8>) -> Self {
        let mut r = Reader::new(fd, mode, max);
        r.end = pending.len();
        r.buf = pending;
        r
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn into_shared(self) -> Arc<OwnedFd> {
        self.fd
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes read but not yet consumed, for handing the reader to another
    /// process. Fails if descriptors are queued (they cannot be re-attached).
    pub(crate) fn pending(&self) -> Result<Vec<u8>, crate::Error> {
        if !self.fds.is_empty() {
            return Err(crate::Error::BadHandle(
                "a received message with descriptors is still queued".into(),
            ));
        }
        Ok(self.buf[self.start..self.end].to_vec())
    }

    /// The descriptor this half reads from.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Whether a complete frame is already buffered (no system call needed).
    pub(crate) fn has_frame(&self) -> bool {
        if self.mode.packet || self.end - self.start < HEADER_LEN {
            return false;
        }
        let h: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN].try_into().expect("len");
        match Header::decode(h, self.max) {
            Ok(h) => self.end - self.start >= HEADER_LEN + h.len,
            Err(_) => true, // the error is "ready" too
        }
    }

    /// Reads one frame, waiting until `deadline`.
    pub(crate) fn recv(&mut self, deadline: Deadline) -> Result<Frame, Fault> {
        if self.mode.packet {
            return self.recv_packet(deadline);
        }
        let mut waited = false;
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            if self.eof {
                return Err(if self.start == self.end {
                    Fault::Disconnected
                } else {
                    Fault::Frame(FrameError::Truncated)
                });
            }
            self.make_room();
            if !self.mode.socket && self.starved && !waited && matches!(deadline, Deadline::At(_)) {
                waited = true;
                if !sys::wait(self.fd.as_fd(), Interest::Read, deadline)? {
                    return Err(Fault::Timeout);
                }
            }
            let room = self.buf.len() - self.end;
            let got = if self.mode.socket {
                let end = self.end;
                self.socket_recv(end, deadline)?
            } else {
                // No deadline: one read that sleeps in the kernel. Otherwise a
                // read that never sleeps, with poll(2) for the waiting.
                let block = deadline == Deadline::Never && !waited;
                sys::read(self.fd.as_fd(), &mut self.buf[self.end..], block)?
            };
            match got {
                Xfer::Done(0) => self.eof = true,
                Xfer::Done(n) => {
                    self.end += n;
                    if n == room {
                        self.starved = false;
                    }
                }
                Xfer::WouldBlock => {
                    if !waited && !self.mode.socket {
                        // Reading first found nothing: next time wait first.
                        self.starved = true;
                    }
                    waited = true;
                    if !sys::wait(self.fd.as_fd(), Interest::Read, deadline)? {
                        return Err(Fault::Timeout);
                    }
                }
            }
        }
    }

    /// One `recvmsg(2)` into `buf[at..]` that blocks in the kernel until the
    /// deadline (`SO_RCVTIMEO`), which wakes much faster than `poll(2)` then
    /// `recvmsg(2)`. Returns `WouldBlock` when nothing came in time, or when
    /// the descriptor turns out to be non-blocking; the caller then checks
    /// the deadline and falls back to `poll(2)`.
    fn socket_recv(&mut self, at: usize, deadline: Deadline) -> Result<Xfer, Fault> {
        let block = match deadline {
            Deadline::Now => false,
            Deadline::Never => {
                self.set_recv_timeout(None)?;
                true
            }
            Deadline::At(t) => {
                let left = t.saturating_duration_since(std::time::Instant::now());
                // Below a millisecond the kernel's timer would round up (or,
                // at zero, mean "forever"): poll instead.
                if left < std::time::Duration::from_millis(1) {
                    false
                } else {
                    // A timeout already set that is not longer than what is
                    // left (nor much shorter) saves a system call; waking
                    // early only means a second, shorter wait.
                    let keep = matches!(self.rcvtimeo, Some(Some(c)) if c <= left && c * 2 >= left);
                    if !keep {
                        self.set_recv_timeout(Some(left))?;
                    }
                    true
                }
            }
        };
        let mut fds = Vec::new();
        let r = sys::recvmsg_fds(self.fd.as_fd(), &mut self.buf[at..], &mut fds, block)?;
        self.fds.extend(fds);
        if r.fds_lost {
            self.broken = Some(FrameError::MissingFds);
        }
        self.last_truncated = r.truncated;
        self.last_fds_lost = r.fds_lost;
        Ok(r.xfer)
    }

    fn set_recv_timeout(&mut self, t: Option<std::time::Duration>) -> Result<(), Fault> {
        if self.rcvtimeo != Some(t) {
            sys::set_recv_timeout(self.fd.as_fd(), t)?;
            self.rcvtimeo = Some(t);
        }
        Ok(())
    }

    /// Makes space to read into: compacts, and grows up to one full frame.
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; INITIAL_BUF];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want = self.wanted();
        if self.start > 0 && (self.start + want > self.buf.len() || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Grow only when full, doubling towards the frame's size: a peer that
        // announces a large frame and sends nothing costs no memory.
        if self.end == self.buf.len() && want > self.buf.len() {
            let n = (self.buf.len() * 2).min(want);
            self.buf.resize(n, 0);
        }
    }

    /// How many bytes the frame at `start` needs in all (a header if unknown).
    fn wanted(&self) -> usize {
        if self.end - self.start < HEADER_LEN {
            return HEADER_LEN;
        }
        let h: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN].try_into().expect("len");
        Header::decode(h, self.max).map(|h| HEADER_LEN + h.len).unwrap_or(HEADER_LEN)
    }

    /// Takes one complete frame out of the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, Fault> {
        if let Some(e) = &self.broken {
            return Err(Fault::Frame(e.clone()));
        }
        if self.end - self.start < HEADER_LEN {
            return Ok(None);
        }
        let h: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN].try_into().expect("len");
        let header = match Header::decode(h, self.max) {
            Ok(h) => h,
            Err(e) => {
                // A byte stream cannot find the next frame after a bad header.
                self.broken = Some(e.clone());
                return Err(Fault::Frame(e));
            }
        };
        if self.end - self.start < HEADER_LEN + header.len {
            return Ok(None);
        }
        let body_at = self.start + HEADER_LEN;
        self.start = body_at + header.len;
        if self.end - self.start >= HEADER_LEN {
            // More is queued up behind this frame: the peer is ahead of us.
            self.starved = false;
        }
        let body = &self.buf[body_at..body_at + header.len];
        match build_frame(header, body, &mut self.fds) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.broken = Some(e.clone());
                Err(Fault::Frame(e))
            }
        }
    }

    fn recv_packet(&mut self, deadline: Deadline) -> Result<Frame, Fault> {
        let need = HEADER_LEN + self.max;
        if self.buf.len() < need {
            self.buf = vec![0; need];
        }
        loop {
            match self.socket_recv(0, deadline)? {
                Xfer::WouldBlock => {
                    if !sys::wait(self.fd.as_fd(), Interest::Read, deadline)? {
                        return Err(Fault::Timeout);
                    }
                }
                Xfer::Done(0) => return Err(Fault::Disconnected),
                Xfer::Done(n) => {
                    // Each datagram stands alone: a bad one is an error, and
                    // the connection goes on with the next.
                    let result = self.packet_frame(n, self.last_truncated, self.last_fds_lost);
                    self.fds.clear();
                    return result;
                }
            }
        }
    }

    fn packet_frame(&mut self, n: usize, truncated: bool, fds_lost: bool) -> Result<Frame, Fault> {
        if n < HEADER_LEN {
            return Err(Fault::Frame(FrameError::LengthMismatch { got: n, want: HEADER_LEN }));
        }
        let h: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("len");
        let header = Header::decode(h, self.max)?;
        if truncated {
            return Err(Fault::Frame(FrameError::TooLarge { len: header.len, max: self.max }));
        }
        if fds_lost {
            return Err(Fault::Frame(FrameError::MissingFds));
        }
        if n - HEADER_LEN != header.len {
            return Err(Fault::Frame(FrameError::LengthMismatch { got: n - HEADER_LEN, want: header.len }));
        }
        Ok(build_frame(header, &self.buf[HEADER_LEN..n], &mut self.fds)?)
    }
}

/// Splits a checked body into payload and handles, taking descriptors from `fds`.
fn build_frame(header: Header, body: &[u8], fds: &mut VecDeque<OwnedFd>) -> Result<Frame, FrameError> {
    if !header.handles {
        return Ok(Frame { kind: header.kind, id: header.id, msg: Message::new(body.to_vec()) });
    }
    let (metas, used) = wire::decode_table(body)?;
    let total: usize = metas.iter().map(|m| m.nfds as usize).sum();
    if fds.len() < total {
        return Err(FrameError::MissingFds);
    }
    let mut msg = Message::new(body[used..].to_vec());
    for meta in metas {
        let fds = fds.drain(..meta.nfds as usize).collect();
        msg.push_handle(Handle { meta, fds });
    }
    Ok(Frame { kind: header.kind, id: header.id, msg })
}

/// The writing half of a link.
#[derive(Debug)]
pub(crate) struct Writer {
    fd: Arc<OwnedFd>,
    mode: Mode,
    max: usize,
    /// A frame was cut off part-way by a deadline: the stream is unusable.
    broken: bool,
}

impl Writer {
    pub(crate) fn new(fd: Arc<OwnedFd>, mode: Mode, max: usize) -> Self {
        Writer { fd, mode, max, broken: false }
    }

    pub(crate) fn into_shared(self) -> Arc<OwnedFd> {
        self.fd
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Gives up on a peer that does not read: nothing more is written, and a
    /// socket is shut down so both sides see the end of the stream.
    pub(crate) fn abandon(&mut self) {
        self.broken = true;
        if self.mode.socket {
            let _ = sys::shutdown(self.fd.as_fd());
        }
    }

    /// Writes one message as a frame. On success the caller drops the
    /// message (closing this process's copies of any handles in it).
    pub(crate) fn send(
        &mut self,
        kind: Kind,
        id: u64,
        msg: &Message,
        deadline: Deadline,
    ) -> Result<(), Fault> {
        let mut out = self.outgoing(kind, id, msg)?;
        let fds = frame_fds(msg);
        self.send_frame(&mut out, &msg.data, &fds, deadline)
    }

    /// Writes a control frame with no body.
    pub(crate) fn send_control(&mut self, kind: Kind, id: u64, deadline: Deadline) -> Result<(), Fault> {
        let mut out = self.outgoing_parts(kind, id, Vec::new(), 0)?;
        self.send_frame(&mut out, &[], &[], deadline)
    }

    /// Checks a message against this link and encodes its frame header
    /// (and handle table): what is left to write, nothing written yet.
    pub(crate) fn outgoing(&self, kind: Kind, id: u64, msg: &Message) -> Result<Outgoing, Fault> {
        if msg.handles.is_empty() {
            return self.outgoing_parts(kind, id, Vec::new(), msg.data.len());
        }
        if !self.mode.socket {
            return Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "handles can only be passed over UNIX sockets",
            )));
        }
        let metas: Vec<_> = msg.handles.iter().map(|h| &h.meta).collect();
        if metas.len() > wire::MAX_HANDLES {
            return Err(Fault::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "too many handles")));
        }
        if msg.handles.iter().map(|h| h.fds.len()).sum::<usize>() > sys::MAX_FDS_PER_MESSAGE {
            return Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "too many descriptors",
            )));
        }
        self.outgoing_parts(kind, id, wire::encode_table(&metas), msg.data.len())
    }

    fn outgoing_parts(&self, kind: Kind, id: u64, table: Vec<u8>, data: usize) -> Result<Outgoing, Fault> {
        if self.broken {
            return Err(Fault::Disconnected);
        }
        let len = table.len() + data;
        if len > self.max {
            return Err(Fault::TooLarge { len, max: self.max });
        }
        let header = Header { kind, handles: !table.is_empty(), len, id }.encode();
        Ok(Outgoing { header, table, done: 0, total: HEADER_LEN + len })
    }

    /// Writes what is left of `out` (whose body is `data`, whose
    /// descriptors are `fds`), waiting until `deadline`.
    fn send_frame(
        &mut self,
        out: &mut Outgoing,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Deadline,
    ) -> Result<(), Fault> {
        let len = out.total - HEADER_LEN;
        loop {
            match self.write_some(out, data, fds, deadline == Deadline::Never) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(Fault::Io(e)) if e.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) => {
                    // Below our own limit, but the kernel takes no datagram
                    // larger than about the socket's send buffer.
                    return Err(Fault::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "a {len}-byte message does not fit one seqpacket datagram (the kernel \
                             limits it to about the socket's send buffer, SO_SNDBUF)"
                        ),
                    )));
                }
                Err(e) => return Err(e),
            }
            if !sys::wait(self.fd.as_fd(), Interest::Write, deadline)? {
                if out.done > 0 {
                    // Half a frame is on the wire; the rest will never follow.
                    self.broken = true;
                    tracing::warn!(
                        done = out.done,
                        total = out.total,
                        "send timed out mid-frame; the link is now unusable"
                    );
                }
                return Err(Fault::Timeout);
            }
        }
    }

    /// One write of what is left of `out` (blocking in the kernel only if
    /// `block`): `Ok(true)` once the whole frame is out, `Ok(false)` when
    /// the kernel took nothing or part of it (wait until writable, then
    /// call again). An error after part of a frame went out leaves the link
    /// unusable.
    pub(crate) fn write_some(
        &mut self,
        out: &mut Outgoing,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        block: bool,
    ) -> Result<bool, Fault> {
        if self.broken {
            return Err(Fault::Disconnected);
        }
        let (parts, n) = remaining_slices([&out.header, &out.table, data], out.done);
        let r = if !fds.is_empty() && out.done == 0 {
            sys::sendmsg_fds(self.fd.as_fd(), &parts[..n], fds)
        } else {
            sys::writev(self.fd.as_fd(), self.mode.socket, &parts[..n], block)
        };
        match r {
            Ok(Xfer::Done(n)) => {
                out.done += n;
                Ok(out.done == out.total)
            }
            Ok(Xfer::WouldBlock) => Ok(false),
            Err(e) => {
                if out.done > 0 {
                    self.broken = true;
                }
                Err(e.into())
            }
        }
    }

    /// Marks the link unusable: a frame was left half written (an async
    /// send dropped before it finished).
    #[cfg(feature = "tokio")]
    pub(crate) fn break_mid_frame(&mut self) {
        self.broken = true;
    }

    /// The descriptor this half writes to.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }
}

/// A frame on its way out: its header and handle table, and how many of its
/// bytes (header, table, body) are written.
#[derive(Debug)]
pub(crate) struct Outgoing {
    header: [u8; HEADER_LEN],
    table: Vec<u8>,
    done: usize,
    total: usize,
}

impl Outgoing {
    /// Bytes of the frame written so far.
    #[cfg(feature = "tokio")]
    pub(crate) fn written(&self) -> usize {
        self.done
    }

    /// Whether part of the frame, but not all, is written.
    #[cfg(feature = "tokio")]
    pub(crate) fn started(&self) -> bool {
        self.done > 0 && self.done < self.total
    }
}

/// The descriptors a message's handles carry, in order.
pub(crate) fn frame_fds(msg: &Message) -> Vec<BorrowedFd<'_>> {
    msg.handles.iter().flat_map(|h| h.fds.iter().map(|f| f.as_fd())).collect()
}

/// The parts of `bufs` that remain after skipping `skip` bytes (no allocation).
fn remaining_slices<'a>(bufs: [&'a [u8]; 3], mut skip: usize) -> ([IoSlice<'a>; 3], usize) {
    let mut out = [IoSlice::new(&[]); 3];
    let mut n = 0;
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        out[n] = IoSlice::new(&b[skip..]);
        n += 1;
        skip = 0;
    }
    (out, n)
}
