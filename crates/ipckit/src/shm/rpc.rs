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
//!                   20 inline request bytes; 20 inline reply bytes
//! 128               request data area (capacity bytes, for longer requests)
//! 128 + cap'        (unused line) | reply data area (capacity bytes)
//! ```
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
pub const INLINE: usize = 20;
/// In the exchange line (the request slot's header): the reply's words
/// after the request's, then the request's and the reply's inline bytes.
const REPLY_WORDS: usize = 12;
const REQ_INLINE: usize = 24;
const REP_INLINE: usize = 44;
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
        Slot::new(map, line, 0, REQ_INLINE, layout.request + SLOT_HEADER, layout.cap)
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
    /// slot). `guard`: a reader may still be copying the previous message,
    /// so mark the word as being written first.
    #[inline]
    fn put(&self, data: &[u8], seq: u32, guard: bool, reader_sleepy: &AtomicU32) {
        let (state, waiters, len) = (self.state, self.waiters, self.len);
        if guard {
            state.store(seq | WRITING, Ordering::Relaxed);
            fence(Ordering::Release);
        }
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
        // A client that is gone ends its session; a new one may attach.
        let client_gone = || {
            let pid = word(map, CLIENT_PID).load(Ordering::Acquire);
            pid == 0 || sys::process_alive(pid)
        };
        let last = self.last;
        let fresh = |w: u32| w != last && w & WRITING == 0;
        loop {
            let seen = match wait_until(req.state(), req.waiters(), self.mode, &mut due, fresh, client_gone) {
                Ok(seen) => seen,
                Err(Fault::Disconnected) => {
                    let pid = word(map, CLIENT_PID).load(Ordering::Acquire);
                    let _ =
                        word(map, CLIENT_PID).compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
                    return Err(Fault::Disconnected);
                }
                Err(e) => return Err(e),
            };
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
        Slot::reply(map, line, &self.layout).put(data, seq, false, at(header, CLIENT_SLEEPY - HEADER_LEN));
        Ok(())
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
        let map: &Mapping = self.seg.mapping();
        let server = || alive(map, SERVER_PID);
        let (header, line) = lines(map);
        let req = Slot::request(map, line, &self.layout);
        let rep = Slot::reply(map, line, &self.layout);
        self.seq = next_seq(self.seq);
        let seq = self.seq;
        // Until the reply is in, this request counts as possibly being read.
        let guard = std::mem::replace(&mut self.unfinished, true);
        req.put(request, seq, guard, at(header, SERVER_SLEEPY - HEADER_LEN));
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
