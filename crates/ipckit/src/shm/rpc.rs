//! The chapter's two-slot RPC over shared memory.
//!
//! A segment holds exactly one request slot and one reply slot. Their
//! status words, lengths and, for messages of up to [`INLINE`] bytes, the
//! messages themselves share one cache line (the exchange line), so a
//! small call bounces one line between the two processes exactly as a
//! ping-pong on one word does (measured here: two lines, one per
//! direction, cost twice the floor):
//!
//! ```text
//! user area offset  what
//! 0                 server pid, client pid, slot capacity, server/client may sleep
//! 64                exchange line: request state, waiters, len; reply state, waiters, len;
//!                   16 inline reply bytes (24..40); the request's first 16 bytes (48..64)
//! 128               the rest of the request (capacity - 16 bytes; contiguous with its start)
//! 128 + cap'        hold word (the server's own line) | reply data area (capacity bytes)
//! ```
//!
//! # Zero-copy requests
//!
//! A request lies contiguously from byte 48 of the exchange line on (16-byte
//! aligned), so it can be written and read where it lies: [`RpcClient::loan`] lends the
//! request slot (up to the capacity) for the client to fill, and
//! [`RpcServer::recv_view`] hands the server a view of it instead of a
//! copy. Its first bytes travel with the status word, as a small request's
//! do, so a zero-copy call of a large request costs about what an 8-byte
//! call costs when the server reads only its start. While the server holds
//! a view it says so in its hold word (on a line of its own: the store
//! moves no shared line); a client whose previous call did not complete
//! waits for the hold to clear before it writes the slot again, and a
//! server that took a request the client has meanwhile marked as being
//! rewritten lets it go (both sides store, fence, then look at the other's
//! word, so one of them sees the other). A client whose last call
//! completed needs no look: the server replied, so it had let go.
//! Replies can be written in place too ([`RpcServer::reply_with`],
//! [`RequestView::reply_with`], which sees the request and the reply
//! buffer at once) and read in place ([`RequestLoan::call_view`]): an echo
//! of a large message then costs two copies, as with iceoryx2's loans,
//! instead of four.
//!
//! The status words hold sequence numbers, and nobody writes them back:
//! the client writes request `n` and stores `n` in the request word; the
//! server waits for a request word other than the last one it took, copies
//! the request out, and answers by writing the reply and storing `n` in
//! the reply word; the client waits for `n` there. When the
//! client's previous call did not complete (it timed out, or the client is
//! new), the server may still be copying that request, so the client first
//! marks the request word as being written (the `WRITING` bit) and the server
//! re-reads the word after copying (a seqlock): a torn copy is dropped and
//! read again. One call is in flight at a time. A side that waits
//! does so as its [`WaitMode`] says (the chapter's "message check mode"):
//! spinning on the word, spinning then sleeping on it with a futex, or
//! sleeping at once. Publishing makes a `futex` wake only when the other
//! side is actually asleep, so the spinning fast path makes no system call
//! at all; and when the other side is in `WaitMode::Spin` (each side
//! records in the header whether it may sleep) publishing is one plain
//! store, no fence. (A side that switches from `Spin` to a sleeping mode
//! while the other is publishing may see that one message at the end of
//! its first nap, [`LIVENESS_CHECK`], at worst.)
//!
//! A side that dies is noticed: a waiter checks the other's pid every
//! [`LIVENESS_CHECK`], so a call to a server killed with SIGKILL fails with
//! `Disconnected` within that time instead of hanging. A late reply (to a
//! call that timed out) is recognised by its sequence number and dropped.
//! Every length read from the segment is validated (a state word is only
//! compared, never used as an index).
//!
//! The hot path (measured with `IPCKIT_SHM_BENCH_PROBE=c/a`, see
//! `benches/shm.rs`): each side checks the bounds of the header line and
//! of the exchange line once per call and then indexes their words with
//! constants (a check per word access, plus a `memcpy` call per 4-byte
//! chunk, were most of what the call cost above the floor); a small message
//! is gathered into registers first and then its words, its length and the
//! state word are stored back to back, no branch or load between them, so
//! the reader, which spins on this very line, has the shortest possible
//! window in which to take the line away between them; the reader copies
//! the inline words out as one fixed-size block and cuts it to the length.
//!
//! # Safety
//!
//! The in-place views are built by `Mapping::slice`/`slice_mut`, whose
//! contract the hold protocol keeps: the client's mutable view exists only
//! while no request is published and no hold is set, the server's view
//! only while its hold is set, and its length was checked against the slot
//! size. A hostile peer can still scribble on the slot; the bytes are then
//! garbage, never an out-of-bounds access.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::segment::{Segment, SegmentKind, HEADER_LEN};
use super::wait::{publish_to, wait_until, Due};
pub use super::wait::{WaitMode, LIVENESS_CHECK};
use crate::error::{CallError, Error, Fault, ReplyError, Result};
use crate::sys::{self, Deadline, Mapping};

// Offsets (from the start of the mapping).
const SERVER_PID: usize = HEADER_LEN;
const CLIENT_PID: usize = HEADER_LEN + 4;
const CAPACITY: usize = HEADER_LEN + 8;
/// Whether the server may sleep (not `WaitMode::Spin`): when not, the
/// client publishes requests without a fence.
const SERVER_SLEEPY: usize = HEADER_LEN + 12;
/// Whether the client may sleep.
const CLIENT_SLEEPY: usize = HEADER_LEN + 16;

/// Records whether a side in `mode` may sleep.
fn set_sleepy(map: &Mapping, at: usize, mode: WaitMode) {
    word(map, at).store(u32::from(mode != WaitMode::Spin), Ordering::SeqCst);
}
const REQUEST: usize = HEADER_LEN + 64;
const SLOT_HEADER: usize = 64;
/// Requests and replies up to this long travel in the status words'
/// cache line (both directions share it).
pub const INLINE: usize = 16;
/// In the exchange line (the request slot's header): the reply's words
/// after the request's, the reply's inline bytes, then the request's bytes:
/// a request of any length is stored contiguously from `REQ_BYTES` on (its
/// first [`INLINE`] bytes in the exchange line, the rest in the lines after
/// it), so a request can be written and read in place (zero copy).
const REPLY_WORDS: usize = 12;
const REP_INLINE: usize = 24;
const REQ_BYTES: usize = 48;
/// The server's hold word (in the otherwise unused first line of the reply
/// slot, which only the server writes): the sequence number of the request
/// it is reading in place ([`RequestView`]), 0 when none.
const HOLD: usize = 0;
/// The request word's "being written" bit (the rest is the sequence number).
const WRITING: u32 = 1 << 31;

/// The sequence number after `seq` (31 bits, never 0: 0 is "nothing yet").
fn next_seq(seq: u32) -> u32 {
    match seq.wrapping_add(1) & !WRITING {
        0 => 1,
        n => n,
    }
}

fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// Where the two slots of a segment are, validated once.
#[derive(Clone, Copy, Debug)]
struct Layout {
    cap: usize,
    request: usize,
    reply: usize,
}

impl Layout {
    fn new(cap: usize) -> Self {
        Layout { cap, request: REQUEST, reply: REQUEST + SLOT_HEADER + align64(cap) }
    }

    fn total(&self) -> usize {
        self.reply + SLOT_HEADER + align64(self.cap) - HEADER_LEN
    }

    /// Reads the capacity a segment claims and checks it fits the segment.
    fn read(seg: &Segment) -> Result<Layout> {
        let cap = word(seg.mapping(), CAPACITY).load(Ordering::Relaxed) as usize;
        let l = Layout::new(cap);
        if cap == 0 || l.total() > seg.len() {
            return Err(Error::Corrupted(format!(
                "two-slot segment {:?} claims {cap}-byte slots, which do not fit its {} bytes",
                seg.name(),
                seg.len()
            )));
        }
        Ok(l)
    }
}

#[inline]
fn word(map: &Mapping, off: usize) -> &AtomicU32 {
    map.u32_at(off).expect("offset validated by Layout")
}

/// A cache line of 32-bit words.
type Line = [AtomicU32; 16];
/// The inline bytes of a slot, as words.
type Inline = [AtomicU32; INLINE / 4];

/// The header line (pids, capacity, sleepy flags) and the exchange line of
/// a segment whose size `Layout::read`/`Layout::new` checked: one bounds
/// check each, then constant indices.
#[inline]
fn lines(map: &Mapping) -> (&Line, &Line) {
    let header = map.u32s_at(HEADER_LEN).expect("segment size validated by Layout");
    let exchange = map.u32s_at(REQUEST).expect("segment size validated by Layout");
    (header, exchange)
}

/// Word `off` (a byte offset) of a line.
#[inline]
fn at(line: &Line, off: usize) -> &AtomicU32 {
    &line[off / 4]
}

/// One slot: its status word, waiter count and length, its inline bytes
/// (all in the exchange line), and its data area for longer messages.
struct Slot<'a> {
    map: &'a Mapping,
    state: &'a AtomicU32,
    waiters: &'a AtomicU32,
    len: &'a AtomicU32,
    inline: &'a Inline,
    area: usize,
    cap: usize,
}

impl<'a> Slot<'a> {
    #[inline]
    fn new(map: &'a Mapping, line: &'a Line, words: usize, inline: usize, area: usize, cap: usize) -> Self {
        let inline: &Inline =
            line[inline / 4..inline / 4 + INLINE / 4].try_into().expect("inline bytes inside the line");
        Slot {
            map,
            state: at(line, words),
            waiters: at(line, words + 4),
            len: at(line, words + 8),
            inline,
            area,
            cap,
        }
    }

    /// The request slot of `layout`.
    #[inline]
    fn request(map: &'a Mapping, line: &'a Line, layout: &Layout) -> Self {
        Slot::new(map, line, 0, REQ_BYTES, layout.request + REQ_BYTES, layout.cap)
    }

    /// The reply slot of `layout`: its words and inline bytes share the
    /// request's cache line; its data area is its own.
    #[inline]
    fn reply(map: &'a Mapping, line: &'a Line, layout: &Layout) -> Self {
        Slot::new(map, line, REPLY_WORDS, REP_INLINE, layout.reply + SLOT_HEADER, layout.cap)
    }

    fn state(&self) -> &AtomicU32 {
        self.state
    }

    fn waiters(&self) -> &AtomicU32 {
        self.waiters
    }

    /// Copies a message in and publishes it as `seq` (the caller owns the
    /// slot: nobody reads it meanwhile, see `RpcClient::begin`).
    #[inline]
    fn put(&self, data: &[u8], seq: u32, reader_sleepy: &AtomicU32) {
        let (state, waiters, len) = (self.state, self.waiters, self.len);
        // Whether the reader may sleep, read before the first store.
        let sleepy = reader_sleepy.load(Ordering::Relaxed) != 0;
        if data.len() <= INLINE {
            // The reader spins on this very line: between the first store
            // into it and the state store, its next look may take the line
            // away (and it then comes back for the rest). So the words are
            // made first, and then all of them (the unused ones too), the
            // length and the state are stored back to back, with no branch
            // or load in between. The words are made one by one with a
            // fixed trip count (LLVM turns a loop over the whole words into
            // a `memcpy` call).
            let mut words = [0u32; INLINE / 4];
            for (k, w) in words.iter_mut().enumerate() {
                let at = 4 * k;
                if let Some(b) = data.get(at..at + 4) {
                    *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                } else if let Some(tail) = data.get(at..) {
                    // The last 1 to 3 bytes, little-endian, zero-padded.
                    *w = tail.iter().rev().fold(0, |v, &b| v << 8 | u32::from(b));
                }
            }
            for (cell, w) in self.inline.iter().zip(words) {
                cell.store(w, Ordering::Relaxed);
            }
            len.store(data.len() as u32, Ordering::Relaxed);
        } else {
            let ok = self.map.write(self.area, data);
            debug_assert!(ok, "length checked against capacity");
            len.store(data.len() as u32, Ordering::Relaxed);
        }
        publish_to(state, waiters, sleepy, seq);
    }

    /// Publishes as `seq` a message of `len` bytes already written in place.
    #[inline]
    fn publish_in_place(&self, len: usize, seq: u32, reader_sleepy: &AtomicU32) {
        let sleepy = reader_sleepy.load(Ordering::Relaxed) != 0;
        self.len.store(len as u32, Ordering::Relaxed);
        publish_to(self.state, self.waiters, sleepy, seq);
    }

    /// Copies out the message published as `seen` (validating its length).
    /// `Ok(false)`: the word changed while copying (a torn copy: read again).
    #[inline]
    fn take(&self, seen: u32, out: &mut Vec<u8>) -> Result<bool, Fault> {
        let len = self.len.load(Ordering::Relaxed) as usize;
        if len > self.cap {
            return Err(Fault::Frame(crate::FrameError::TooLarge { len, max: self.cap }));
        }
        out.clear();
        if len <= INLINE {
            // All the inline words, appended as one fixed-size block (no
            // memcpy call, no per-word branch), then cut to the length.
            let mut bytes = [0u8; INLINE];
            for (chunk, cell) in bytes.chunks_exact_mut(4).zip(self.inline) {
                chunk.copy_from_slice(&cell.load(Ordering::Relaxed).to_le_bytes());
            }
            out.extend_from_slice(&bytes);
            out.truncate(len);
        } else {
            out.resize(len, 0);
            let ok = self.map.read(self.area, out);
            debug_assert!(ok, "length checked against capacity");
        }
        fence(Ordering::Acquire);
        Ok(self.state.load(Ordering::Relaxed) == seen)
    }
}

/// Waits for a published request other than `last` (a request word being
/// rewritten does not count). A client that is gone ends its session (its
/// pid is cleared, so a new one may attach): `Disconnected`.
#[inline]
fn wait_request(
    map: &Mapping,
    req: &Slot<'_>,
    mode: WaitMode,
    due: &mut Due,
    last: u32,
) -> Result<u32, Fault> {
    let client_gone = || {
        let pid = word(map, CLIENT_PID).load(Ordering::Acquire);
        pid == 0 || sys::process_alive(pid)
    };
    let fresh = |w: u32| w != last && w & WRITING == 0;
    match wait_until(req.state(), req.waiters(), mode, due, fresh, client_gone) {
        Err(Fault::Disconnected) => {
            let pid = word(map, CLIENT_PID).load(Ordering::Acquire);
            let _ = word(map, CLIENT_PID).compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            Err(Fault::Disconnected)
        }
        r => r,
    }
}

fn alive(map: &Mapping, off: usize) -> bool {
    let pid = word(map, off).load(Ordering::Acquire);
    pid != 0 && sys::process_alive(pid)
}

/// The serving side of a two-slot RPC segment (it creates the segment).
///
/// # Examples
///
/// ```
/// use ipckit::shm::rpc::{RpcClient, RpcServer};
/// let name = format!("doc-rpc-{}", std::process::id());
/// let mut server = RpcServer::create(&name, 256, 0o600)?;
/// let t = std::thread::spawn(move || {
///     let req = server.recv().unwrap();
///     server.reply(&[req[0] + 1]).unwrap();
/// });
/// let mut client = RpcClient::open(&name)?;
/// assert_eq!(client.call(&[41])?, vec![42]);
/// t.join().unwrap();
/// ipckit::shm::Segment::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RpcServer {
    seg: Segment,
    layout: Layout,
    mode: WaitMode,
    /// Sequence number of the request being answered.
    current: Option<u32>,
    /// The request word's value when this server last took a request.
    last: u32,
}

impl RpcServer {
    /// Creates segment `name` with slots of `max_message` bytes and permission bits `mode`.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`].
    pub fn create(name: &str, max_message: usize, mode: u32) -> Result<RpcServer> {
        let max_message = max_message.max(1);
        if max_message > u32::MAX as usize / 2 {
            return Err(Error::InvalidName { name: name.to_owned(), why: "slots are limited to 2 GiB" });
        }
        let layout = Layout::new(max_message);
        let seg = Segment::create_kind(name, layout.total(), mode, SegmentKind::TwoSlotRpc)?;
        word(seg.mapping(), CAPACITY).store(max_message as u32, Ordering::Relaxed);
        set_sleepy(seg.mapping(), SERVER_SLEEPY, WaitMode::default());
        word(seg.mapping(), SERVER_PID).store(sys::pid(), Ordering::Release);
        Ok(RpcServer { seg, layout, mode: WaitMode::default(), current: None, last: 0 })
    }

    /// Sets how the server waits for requests (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        set_sleepy(self.seg.mapping(), SERVER_SLEEPY, mode);
        self.mode = mode;
        self
    }

    /// The segment underneath.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    recv_forms!(Vec<u8>);

    /// Receives the next request into `buf` (no allocation once `buf` is big enough).
    ///
    /// # Errors
    ///
    /// As [`RpcServer::recv_timeout`]; `timeout: None` waits forever.
    #[inline]
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), crate::RecvTimeoutError> {
        self.recv_inner_into(buf, Due::after(timeout)).map_err(crate::RecvTimeoutError::from_fault)
    }

    fn recv_inner(&mut self, deadline: Deadline) -> Result<Vec<u8>, Fault> {
        let mut buf = Vec::new();
        self.recv_inner_into(&mut buf, Due::At(deadline))?;
        Ok(buf)
    }

    #[inline]
    fn recv_inner_into(&mut self, buf: &mut Vec<u8>, mut due: Due) -> Result<(), Fault> {
        let map: &Mapping = self.seg.mapping();
        let (_, line) = lines(map);
        let req = Slot::request(map, line, &self.layout);
        loop {
            let seen = wait_request(map, &req, self.mode, &mut due, self.last)?;
            match req.take(seen, buf) {
                Ok(true) => {
                    self.last = seen;
                    self.current = Some(seen);
                    return Ok(());
                }
                // The client started its next request while we copied: read that one.
                Ok(false) => continue,
                Err(e) => {
                    // A peer wrote nonsense: drop the request, keep the slot usable.
                    self.last = seen;
                    return Err(e);
                }
            }
        }
    }

    /// Receives the next request in place (zero copy): a view of the
    /// request slot's bytes, which the client does not touch until the view
    /// is dropped (or answered with [`RequestView::reply`]). Pairs with
    /// [`RpcClient::loan`] for large requests, and works with requests sent
    /// by any form of `call`. `timeout: None` waits forever.
    ///
    /// # Errors
    ///
    /// As [`RpcServer::recv_timeout`]: [`crate::RecvTimeoutError::Frame`]
    /// when the client published a length over the slot size.
    #[inline]
    pub fn recv_view(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<RequestView<'_>, crate::RecvTimeoutError> {
        let (seq, len) = self.view_inner(Due::after(timeout)).map_err(crate::RecvTimeoutError::from_fault)?;
        Ok(RequestView { server: Some(self), seq, len })
    }

    #[inline]
    fn view_inner(&mut self, mut due: Due) -> Result<(u32, usize), Fault> {
        let map: &Mapping = self.seg.mapping();
        let (_, line) = lines(map);
        let req = Slot::request(map, line, &self.layout);
        let hold = word(map, self.layout.reply + HOLD);
        loop {
            let seen = wait_request(map, &req, self.mode, &mut due, self.last)?;
            let len = req.len.load(Ordering::Relaxed) as usize;
            if len > self.layout.cap {
                self.last = seen;
                return Err(Fault::Frame(crate::FrameError::TooLarge { len, max: self.layout.cap }));
            }
            // Hold it, then check it is still the published request: SeqCst,
            // against the client's mark and look at the hold word
            // (`RpcClient::begin`). A client that gave up on it meanwhile
            // has marked the word: let it go and wait for the next one.
            // (A swap is the full barrier: cheaper than a store and `mfence`.)
            hold.swap(seen, Ordering::SeqCst);
            if req.state().load(Ordering::SeqCst) != seen {
                hold.store(0, Ordering::Release);
                continue;
            }
            self.last = seen;
            self.current = Some(seen);
            return Ok((seen, len));
        }
    }

    /// Answers the request last received. Never blocks for long: the reply
    /// slot is free unless the client abandoned an earlier reply, which is
    /// then overwritten.
    ///
    /// # Errors
    ///
    /// [`ReplyError::TooLarge`] over the slot size; [`ReplyError::Disconnected`]
    /// when there is no request to answer.
    #[inline]
    pub fn reply(&mut self, data: &[u8]) -> Result<(), ReplyError> {
        let Some(seq) = self.current.take() else {
            return Err(ReplyError::Disconnected);
        };
        if data.len() > self.layout.cap {
            self.current = Some(seq);
            return Err(ReplyError::TooLarge { len: data.len(), max: self.layout.cap });
        }
        // The client reads a reply only while the word holds its call's
        // number, and makes its next call only after that: nobody reads
        // the slot while it is overwritten.
        let map = self.seg.mapping();
        let (header, line) = lines(map);
        Slot::reply(map, line, &self.layout).put(data, seq, at(header, CLIENT_SLEEPY - HEADER_LEN));
        Ok(())
    }
}

impl RpcServer {
    /// Answers the request last received with a reply of `len` bytes
    /// written in place by `fill` (zero copy: the client can read it in
    /// place too, see [`RequestLoan::call_view`]).
    ///
    /// # Errors
    ///
    /// As [`RpcServer::reply`].
    pub fn reply_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), ReplyError> {
        self.reply_in_place_of(0, len, |_, rep| fill(rep))
    }

    /// The reply of `len` bytes to the current request, written by `fill`
    /// (given the request area's first `req_len` bytes, for
    /// [`RequestView::reply_with`]) and published.
    fn reply_in_place_of(
        &mut self,
        req_len: usize,
        len: usize,
        fill: impl FnOnce(&[u8], &mut [u8]),
    ) -> Result<(), ReplyError> {
        let Some(seq) = self.current.take() else {
            return Err(ReplyError::Disconnected);
        };
        if len > self.layout.cap {
            self.current = Some(seq);
            return Err(ReplyError::TooLarge { len, max: self.layout.cap });
        }
        let map = self.seg.mapping();
        let req_at = self.layout.request + REQ_BYTES;
        // The request (`req_len` > 0 only from a `RequestView`, which holds
        // it and checked its length) lies from byte 48 of the exchange line
        // on, a small reply in bytes 24..40 of it, a large one in the reply
        // slot's own area; the client reads a reply only once its word holds
        // the call's number, which the publish below stores.
        // SAFETY: the two areas are disjoint, and the server owns the reply
        // area until it publishes the reply.
        let (req, rep) = unsafe {
            (
                map.slice(req_at, req_len).expect("checked request length"),
                map.slice_mut(reply_at(&self.layout, len), len).expect("length checked against capacity"),
            )
        };
        fill(req, rep);
        if req_len > 0 {
            release_hold(self);
        }
        let map = self.seg.mapping();
        let (header, line) = lines(map);
        Slot::reply(map, line, &self.layout).publish_in_place(
            len,
            seq,
            at(header, CLIENT_SLEEPY - HEADER_LEN),
        );
        Ok(())
    }
}

/// Where a reply of `len` bytes lies: inline in the exchange line when it
/// fits, else in the reply slot's area (as `Slot::put` stores it).
fn reply_at(layout: &Layout, len: usize) -> usize {
    if len <= INLINE {
        layout.request + REP_INLINE
    } else {
        layout.reply + SLOT_HEADER
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = word(self.seg.mapping(), SERVER_PID).compare_exchange(
            sys::pid(),
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// A request read in place ([`RpcServer::recv_view`]): deref to its bytes.
/// The client writes the slot again only after the view is dropped, so
/// the bytes stay as they were published (unless the client is hostile:
/// then they are garbage, never out of bounds). Answer with
/// [`RequestView::reply`], or drop the view and call [`RpcServer::reply`].
#[derive(Debug)]
pub struct RequestView<'a> {
    /// `None` once answered (the hold is released before the reply).
    server: Option<&'a mut RpcServer>,
    seq: u32,
    len: usize,
}

impl RequestView<'_> {
    /// The request's sequence number (as a log or trace key).
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Lets the request go and answers it.
    ///
    /// # Errors
    ///
    /// As [`RpcServer::reply`].
    pub fn reply(mut self, data: &[u8]) -> Result<(), ReplyError> {
        let server = self.server.take().expect("a view is answered once");
        release_hold(server);
        server.reply(data)
    }

    /// Answers with a reply of `len` bytes written in place by `fill`,
    /// which is given the request (still held) and the reply buffer: an
    /// echo or a transform costs one copy, not four.
    ///
    /// # Errors
    ///
    /// As [`RpcServer::reply`].
    pub fn reply_with(mut self, len: usize, fill: impl FnOnce(&[u8], &mut [u8])) -> Result<(), ReplyError> {
        let server = self.server.take().expect("a view is answered once");
        let r = server.reply_in_place_of(self.len, len, fill);
        if r.is_err() {
            release_hold(server);
        }
        r
    }
}

/// Clears the server's hold word: the client may write its slot again.
fn release_hold(server: &RpcServer) {
    word(server.seg.mapping(), server.layout.reply + HOLD).store(0, Ordering::Release);
}

impl Deref for RequestView<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let s = self.server.as_deref().expect("a view is read before it is answered");
        // A client following the protocol writes the slot only after seeing
        // the hold cleared (`RpcClient::begin`).
        // SAFETY: the hold word says this server reads the request, and
        // `len` was checked against the slot size.
        unsafe { s.seg.mapping().slice(s.layout.request + REQ_BYTES, self.len) }
            .expect("the request area is inside the validated layout")
    }
}

impl Drop for RequestView<'_> {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            release_hold(server);
        }
    }
}

/// The calling side of a two-slot RPC segment. One client at a time.
#[derive(Debug)]
pub struct RpcClient {
    seg: Segment,
    layout: Layout,
    mode: WaitMode,
    seq: u32,
    /// Whether the last request may still be being read by the server
    /// (its call did not complete, or this client is new).
    unfinished: bool,
    timeout: Duration,
}

impl RpcClient {
    /// Opens the segment a server created and attaches as its client.
    ///
    /// # Errors
    ///
    /// As [`Segment::open`]; [`Error::NotListening`] when the server is gone;
    /// [`Error::AlreadyExists`] when another live process is the client.
    pub fn open(name: &str) -> Result<RpcClient> {
        let seg = Segment::open_kind(name, SegmentKind::TwoSlotRpc)?;
        let layout = Layout::read(&seg)?;
        let map = seg.mapping();
        if !alive(map, SERVER_PID) {
            return Err(Error::NotListening(name.to_owned()));
        }
        let me = sys::pid();
        let cell = word(map, CLIENT_PID);
        loop {
            let cur = cell.load(Ordering::Acquire);
            if cur != 0 && sys::process_alive(cur) {
                return Err(Error::AlreadyExists(format!("{name}: client pid {cur}")));
            }
            if cell.compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                break;
            }
        }
        set_sleepy(map, CLIENT_SLEEPY, WaitMode::default());
        // Continue the sequence where an earlier client left it, so no
        // reply meant for it can be taken for one of ours.
        let seq = word(map, layout.request).load(Ordering::Acquire) & !WRITING;
        Ok(RpcClient {
            seg,
            layout,
            mode: WaitMode::default(),
            seq,
            unfinished: true,
            timeout: crate::rpc::DEFAULT_TIMEOUT,
        })
    }

    /// Sets how the client waits for replies (default: spin then block).
    pub fn with_wait(mut self, mode: WaitMode) -> Self {
        set_sleepy(self.seg.mapping(), CLIENT_SLEEPY, mode);
        self.mode = mode;
        self
    }

    /// Sets the timeout of [`RpcClient::call`] (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest request or reply, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.layout.cap
    }

    /// Sends `request` and waits for the reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`], [`CallError::Disconnected`] (the server died or
    /// left), [`CallError::TooLarge`], [`CallError::Frame`] when the server
    /// wrote a reply that is not valid.
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_timeout(request, self.timeout)
    }

    /// As [`RpcClient::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub fn call_timeout(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        self.call_inner(request, &mut out, Due::After(timeout)).map_err(CallError::from_fault)?;
        Ok(out)
    }

    /// As [`RpcClient::call`], waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub fn call_deadline(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        self.call_inner(request, &mut out, Due::At(Deadline::At(deadline))).map_err(CallError::from_fault)?;
        Ok(out)
    }

    /// As [`RpcClient::call_timeout`], writing the reply into `out` (no
    /// allocation once `out` is big enough).
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    #[inline]
    pub fn call_into(
        &mut self,
        request: &[u8],
        out: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        self.call_inner(request, out, Due::After(timeout)).map_err(CallError::from_fault)
    }

    #[inline]
    fn call_inner(&mut self, request: &[u8], out: &mut Vec<u8>, mut due: Due) -> Result<(), Fault> {
        if request.len() > self.layout.cap {
            return Err(Fault::TooLarge { len: request.len(), max: self.layout.cap });
        }
        let seq = self.begin(&mut due)?;
        let map: &Mapping = self.seg.mapping();
        let (header, line) = lines(map);
        Slot::request(map, line, &self.layout).put(request, seq, at(header, SERVER_SLEEPY - HEADER_LEN));
        self.finish(seq, out, due)
    }

    /// Takes the request slot for the next call and returns its number.
    /// When the previous call did not complete (it timed out, or this
    /// client is new) the server may still be reading that request: copying
    /// it (the `WRITING` mark makes its seqlock check fail, and it reads the
    /// next one instead) or holding it in place (a [`RequestView`]: then
    /// wait, until `due`, for the server to let it go).
    #[inline]
    fn begin(&mut self, due: &mut Due) -> Result<u32, Fault> {
        self.seq = next_seq(self.seq);
        let seq = self.seq;
        if self.unfinished {
            let map: &Mapping = self.seg.mapping();
            word(map, self.layout.request).store(seq | WRITING, Ordering::Relaxed);
            // SeqCst, against the server's hold store and re-check
            // (`RpcServer::recv_view`): either it sees the mark and lets the
            // request go, or this load sees its hold.
            fence(Ordering::SeqCst);
            let hold = word(map, self.layout.reply + HOLD);
            let mut naps = 0u32;
            while hold.load(Ordering::Acquire) != 0 {
                if due.resolve().expired() {
                    return Err(Fault::Timeout);
                }
                if !alive(map, SERVER_PID) {
                    return Err(Fault::Disconnected);
                }
                // The server holds a request for as long as its code reads
                // it: poll, backing off to 1 ms.
                naps = (naps + 1).min(20);
                if naps < 10 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50 << (naps - 10).min(4)));
                }
            }
            self.unfinished = false;
        }
        Ok(seq)
    }

    /// Waits for the reply to call `seq` (published) and copies it out.
    #[inline]
    fn finish(&mut self, seq: u32, out: &mut Vec<u8>, mut due: Due) -> Result<(), Fault> {
        // Until the reply is in, this request counts as possibly being read.
        self.unfinished = true;
        let map: &Mapping = self.seg.mapping();
        let server = || alive(map, SERVER_PID);
        let (_, line) = lines(map);
        let rep = Slot::reply(map, line, &self.layout);
        loop {
            // A reply to a call that already gave up has another number: it
            // is never taken (the next reply overwrites it).
            wait_until(rep.state(), rep.waiters(), self.mode, &mut due, |w| w == seq, server)?;
            if rep.take(seq, out)? {
                self.unfinished = false;
                return Ok(());
            }
            tracing::debug!("the reply word changed while the reply was copied: reading again");
        }
    }

    /// Borrows the request slot to write the next request in place (zero
    /// copy: the server reads it where it lies, see
    /// [`RpcServer::recv_view`]), waiting at most the client's timeout for
    /// the server to let go of an earlier request it still holds.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; [`CallError::Disconnected`] when the server died.
    pub fn loan(&mut self) -> Result<RequestLoan<'_>, CallError> {
        self.loan_timeout(self.timeout)
    }

    /// As [`RpcClient::loan`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::loan`].
    #[inline]
    pub fn loan_timeout(&mut self, timeout: Duration) -> Result<RequestLoan<'_>, CallError> {
        let seq = self.begin(&mut Due::After(timeout)).map_err(CallError::from_fault)?;
        Ok(RequestLoan { client: self, seq })
    }
}

/// The request slot of an [`RpcClient`], lent for writing a request in
/// place: deref to the slot's bytes (the segment's `max_message` of them),
/// write the request at the start, then [`RequestLoan::call`] with its
/// length. Dropping it unsent makes no call.
///
/// # Examples
///
/// ```
/// use ipckit::shm::rpc::{RpcClient, RpcServer};
/// let name = format!("doc-rpc-loan-{}", std::process::id());
/// let mut server = RpcServer::create(&name, 1 << 20, 0o600)?;
/// let t = std::thread::spawn(move || {
///     let view = server.recv_view(None).unwrap();   // the request, in place
///     let sum: u64 = view.iter().map(|&b| u64::from(b)).sum();
///     view.reply(&sum.to_le_bytes()).unwrap();
/// });
/// let mut client = RpcClient::open(&name)?;
/// let mut req = client.loan()?;                      // 1 MiB inside the segment
/// req[..4096].fill(1);
/// let reply = req.call(4096)?;
/// assert_eq!(reply, 4096u64.to_le_bytes());
/// t.join().unwrap();
/// ipckit::shm::Segment::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RequestLoan<'a> {
    client: &'a mut RpcClient,
    seq: u32,
}

impl RequestLoan<'_> {
    /// Sends the first `len` bytes of the slot as the request and waits for
    /// the reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub fn call(self, len: usize) -> Result<Vec<u8>, CallError> {
        let timeout = self.client.timeout;
        let mut out = Vec::new();
        self.call_into(len, &mut out, timeout)?;
        Ok(out)
    }

    /// As [`RequestLoan::call`], waiting at most `timeout` and writing the
    /// reply into `out`.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    #[inline]
    pub fn call_into(self, len: usize, out: &mut Vec<u8>, timeout: Duration) -> Result<(), CallError> {
        let (client, seq) = self.publish(len)?;
        client.finish(seq, out, Due::After(timeout)).map_err(CallError::from_fault)
    }
}

impl<'a> RequestLoan<'a> {
    /// Publishes the slot's first `len` bytes as the request: the client
    /// and the call's number, to wait for the reply with.
    #[inline]
    fn publish(self, len: usize) -> Result<(&'a mut RpcClient, u32), CallError> {
        let RequestLoan { client, seq } = self;
        if len > client.layout.cap {
            return Err(CallError::TooLarge { len, max: client.layout.cap });
        }
        let map: &Mapping = client.seg.mapping();
        let (header, line) = lines(map);
        Slot::request(map, line, &client.layout).publish_in_place(
            len,
            seq,
            at(header, SERVER_SLEEPY - HEADER_LEN),
        );
        Ok((client, seq))
    }

    /// As [`RequestLoan::call_into`], but the reply is read in place (zero
    /// copy): the view lives until the client's next call.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub fn call_view(self, len: usize, timeout: Duration) -> Result<ReplyView<'a>, CallError> {
        let (client, seq) = self.publish(len)?;
        client.unfinished = true;
        let mut due = Due::After(timeout);
        let map: &Mapping = client.seg.mapping();
        let server = || alive(map, SERVER_PID);
        let (_, line) = lines(map);
        let rep = Slot::reply(map, line, &client.layout);
        wait_until(rep.state(), rep.waiters(), client.mode, &mut due, |w| w == seq, server)
            .map_err(CallError::from_fault)?;
        let rlen = rep.len.load(Ordering::Relaxed) as usize;
        if rlen > client.layout.cap {
            return Err(CallError::from_fault(Fault::Frame(crate::FrameError::TooLarge {
                len: rlen,
                max: client.layout.cap,
            })));
        }
        client.unfinished = false;
        Ok(ReplyView { client, len: rlen })
    }
}

/// A reply read in place ([`RequestLoan::call_view`]): deref to its bytes.
/// The server writes the reply slot again only to answer the client's next
/// call, which the view's borrow of the client rules out while it lives.
#[derive(Debug)]
pub struct ReplyView<'a> {
    client: &'a mut RpcClient,
    len: usize,
}

impl Deref for ReplyView<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let c = &*self.client;
        // A server following the protocol writes the slot again only for the
        // next call, which cannot be made while this view borrows the client.
        // SAFETY: the reply to this client's call was published (its word
        // holds the call's number) and its length checked.
        unsafe { c.seg.mapping().slice(reply_at(&c.layout, self.len), self.len) }
            .expect("the reply area is inside the validated layout")
    }
}

impl Deref for RequestLoan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let c = &*self.client;
        // The server reads the slot only once a request is published (and
        // no longer holds an earlier one, checked by `begin`).
        // SAFETY: the client owns the request slot between `begin` and the
        // publication of its request: nobody following the protocol writes it.
        unsafe { c.seg.mapping().slice(c.layout.request + REQ_BYTES, c.layout.cap) }
            .expect("the request area is inside the validated layout")
    }
}

impl DerefMut for RequestLoan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let c = &*self.client;
        // SAFETY: as for `deref`; `&mut self` makes this the only view in
        // this process (the loan borrows the client mutably).
        unsafe { c.seg.mapping().slice_mut(c.layout.request + REQ_BYTES, c.layout.cap) }
            .expect("the request area is inside the validated layout")
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        let _ = word(self.seg.mapping(), CLIENT_PID).compare_exchange(
            sys::pid(),
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}
