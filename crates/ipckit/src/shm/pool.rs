//! Zero-copy loans: a pool of buffers inside a segment.
//!
//! A sender borrows a writable buffer in shared memory ([`LoanPool::loan`]),
//! fills it in place, and turns it into a small [`Token`] that travels over
//! any ipckit channel (a shared-memory ring, a pipe, a socket). The receiver
//! redeems the token for a read-only view of the same bytes ([`Loan`]): no
//! copy in, no copy out. The buffer returns to the pool when the receiver
//! drops its view.
//!
//! Each buffer has a descriptor word holding its state and its holder's pid
//! (in flight: the generation it was sent with, so one compare-and-swap
//! both checks a token and takes the buffer):
//!
//! ```text
//! Free --loan--> Writing(sender) --send--> InFlight(generation) --redeem--> Reading(receiver) --drop--> Free
//!                    |--drop unsent--> Free      |--cancel--> Free
//! ```
//!
//! Crashes: a buffer held `Writing` or `Reading` by a process that died is
//! taken back by the next [`LoanPool::loan`] (or [`LoanPool::reclaim_stale`]),
//! so a sender whose receiver died gets its buffers back. A token in flight is
//! never reclaimed behind its receiver's back (that would lose a sent
//! message): a sender that learns its receiver is gone calls
//! [`LoanPool::cancel`]. Tokens carry a generation number, so a stale or
//! forged token is refused, never redeemed against someone else's data.
//!
//! # Cost
//!
//! A buffer's descriptor and the first 48 bytes of its payload share one
//! cache line. A loan round trip (loan, fill the header, send, redeem,
//! read the header, drop) moves that line twice: to the receiver, whose
//! first access is a read-modify-write that takes it exclusive at once,
//! and back to the sender, whose claim is one compare-and-swap on the free
//! word (a load first would fetch the line shared and then again for
//! writing). Freeing loads one read-mostly header word (the sleeper count)
//! and moves no other line. A single sender takes back the buffer its
//! receiver released last, so those are the lines already moving. The
//! token travels in whatever carries it (12 bytes: inline in a two-slot
//! RPC request, see [`super::rpc::INLINE`]).
//!
//! Those two line transfers come on top of the carrier's own, one after
//! the other (the receiver learns which line to fetch from the token): over
//! the two-slot RPC a pool loan costs about three times an 8-byte call. A
//! large request to a two-slot RPC server is cheaper lent in place
//! ([`super::rpc::RpcClient::loan`]): its first bytes travel with the
//! status word.
//!
//! # Safety
//!
//! The views into shared memory are built by `Mapping::slice` /
//! `slice_mut`, whose contract this module keeps: a view exists only while
//! its descriptor word says this process holds the buffer (`Writing` for the
//! one mutable view, `Reading` for a shared one), and the state changes only
//! by compare-and-swap, so two processes following the protocol never hold
//! the same buffer. A hostile process can still scribble on a buffer; the
//! bytes are then garbage, never an out-of-bounds access.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::segment::{Segment, SegmentKind, HEADER_LEN};
use crate::error::{Error, Result};
use crate::sys::{self, Deadline};

const FREE: u32 = 0;
const WRITING: u32 = 1;
const IN_FLIGHT: u32 = 2;
const READING: u32 = 3;

// User-area layout: count, buffer size, frees counter, waiters (one line);
// then one slot per buffer, 64-byte aligned: its descriptor (16 bytes:
// state|owner u64, generation, length), then its bytes (16-byte aligned).
const COUNT: usize = HEADER_LEN;
const SIZE: usize = HEADER_LEN + 4;
const FREES: usize = HEADER_LEN + 8;
const WAITERS: usize = HEADER_LEN + 12;
/// The first buffer's slot.
const SLOTS: usize = HEADER_LEN + 64;
/// A slot: the buffer's descriptor, then its bytes, in the same first
/// cache line (a loan, a redeem and a release of a small payload move one
/// line, not a descriptor line and a data line).
const DESCRIPTOR: usize = 16;

fn pack(state: u32, owner: u32) -> u64 {
    (u64::from(owner) << 32) | u64::from(state)
}

fn unpack(w: u64) -> (u32, u32) {
    (w as u32, (w >> 32) as u32)
}

/// A handle on a loaned buffer that travels between processes (12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Token {
    index: u32,
    generation: u32,
    len: u32,
}

impl Token {
    /// The token as 12 bytes, to send as a message.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.index.to_le_bytes());
        b[4..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Reads a token from a message (validated again when redeemed).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when `b` is not 12 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Token> {
        let b: &[u8; 12] = b.try_into().map_err(|_| Error::Corrupted("a loan token is 12 bytes".into()))?;
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(Token { index: u(0), generation: u(4), len: u(8) })
    }

    /// Bytes of payload the token covers.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A pool of equal-sized buffers in a named segment, for zero-copy transfer.
///
/// # Examples
///
/// ```
/// use ipckit::shm::LoanPool;
/// let name = format!("doc-pool-{}", std::process::id());
/// let pool = LoanPool::create(&name, 4, 1 << 20, 0o600)?;
/// let mut buf = pool.loan()?;             // a 1 MiB buffer in shared memory
/// buf[..5].copy_from_slice(b"frame");
/// let token = buf.send(5);                  // send token.to_bytes() over any channel
/// // ... in the receiving process: LoanPool::open(&name)?.redeem(token)
/// let view = pool.redeem(token)?;
/// assert_eq!(&view[..], b"frame");
/// drop(view);                               // the buffer is free again
/// ipckit::shm::Segment::remove(&name)?;
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LoanPool {
    seg: Segment,
    count: usize,
    size: usize,
    data: usize,
    stride: usize,
}

impl LoanPool {
    /// Creates pool `name` of `buffers` buffers of `buffer_size` bytes.
    ///
    /// # Errors
    ///
    /// As [`Segment::create`]; [`Error::InvalidName`] for a zero or
    /// oversized geometry.
    pub fn create(name: &str, buffers: usize, buffer_size: usize, mode: u32) -> Result<LoanPool> {
        if buffers == 0 || buffers > 1 << 20 || buffer_size == 0 || buffer_size > u32::MAX as usize {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                why: "1..2^20 buffers of 1 byte..4 GiB",
            });
        }
        let (data, stride) = geometry(buffers, buffer_size);
        let total = data + buffers * stride - HEADER_LEN;
        let seg = Segment::create_kind(name, total, mode, SegmentKind::LoanPool)?;
        let m = seg.mapping();
        m.u32_at(SIZE).expect("header").store(buffer_size as u32, Ordering::Relaxed);
        m.u32_at(COUNT).expect("header").store(buffers as u32, Ordering::Release);
        Ok(LoanPool { seg, count: buffers, size: buffer_size, data, stride })
    }

    /// Opens an existing pool.
    ///
    /// # Errors
    ///
    /// As [`Segment::open`]; [`Error::Corrupted`] when the recorded geometry
    /// does not fit the segment.
    pub fn open(name: &str) -> Result<LoanPool> {
        let seg = Segment::open_kind(name, SegmentKind::LoanPool)?;
        let m = seg.mapping();
        let count = m.u32_at(COUNT).expect("header").load(Ordering::Acquire) as usize;
        let size = m.u32_at(SIZE).expect("header").load(Ordering::Relaxed) as usize;
        let (data, stride) = geometry(count.max(1), size.max(1));
        if count == 0 || size == 0 || data + count * stride > m.len() {
            return Err(Error::Corrupted(format!("loan pool {name:?}: geometry does not fit its segment")));
        }
        Ok(LoanPool { seg, count, size, data, stride })
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Number of buffers.
    pub fn buffers(&self) -> usize {
        self.count
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.seg.mapping().u64_at(SLOTS + i * self.stride).expect("index below count, slots inside")
    }

    fn generation(&self, i: usize) -> &AtomicU32 {
        self.seg.mapping().u32_at(SLOTS + i * self.stride + 8).expect("slots inside")
    }

    fn length(&self, i: usize) -> &AtomicU32 {
        self.seg.mapping().u32_at(SLOTS + i * self.stride + 12).expect("slots inside")
    }

    fn frees(&self) -> &AtomicU32 {
        self.seg.mapping().u32_at(FREES).expect("header")
    }

    fn waiters(&self) -> &AtomicU32 {
        self.seg.mapping().u32_at(WAITERS).expect("header")
    }

    /// Borrows a free buffer, waiting as long as it takes for one.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] when the pool's table holds nonsense.
    pub fn loan(&self) -> Result<LoanMut<'_>> {
        self.loan_inner(Deadline::Never)
    }

    /// Borrows a free buffer if one is free now.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when every buffer is taken.
    pub fn try_loan(&self) -> Result<LoanMut<'_>> {
        self.loan_inner(Deadline::Now)
    }

    /// Borrows a free buffer, waiting at most `timeout` for one.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came free in time.
    pub fn loan_timeout(&self, timeout: Duration) -> Result<LoanMut<'_>> {
        // The fast path reads no clock: the deadline is set only when no
        // buffer is free now.
        if let Some(i) = self.claim(sys::pid()) {
            return Ok(self.loaned(i));
        }
        self.loan_inner(Deadline::after(timeout))
    }

    /// Borrows a free buffer, waiting until `deadline` at the latest.
    ///
    /// # Errors
    ///
    /// As [`LoanPool::loan_timeout`].
    pub fn loan_deadline(&self, deadline: Instant) -> Result<LoanMut<'_>> {
        self.loan_inner(Deadline::At(deadline))
    }

    /// Buffer `i`, just claimed `Writing`, as a loan with a new generation.
    fn loaned(&self, i: usize) -> LoanMut<'_> {
        // Only the holder of a `Writing` buffer changes its generation, so
        // a plain load and store do (no locked instruction); the store is
        // published by `send`'s release store of the state word.
        let cell = self.generation(i);
        let generation = cell.load(Ordering::Relaxed).wrapping_add(1);
        cell.store(generation, Ordering::Relaxed);
        LoanMut { pool: self, index: i, generation, sent: false }
    }

    fn loan_inner(&self, deadline: Deadline) -> Result<LoanMut<'_>> {
        let me = sys::pid();
        let loaned = |i: usize| self.loaned(i);
        loop {
            // The fast path touches only the descriptor table.
            if let Some(i) = self.claim(me) {
                return Ok(loaned(i));
            }
            if self.reclaim_stale() > 0 {
                continue;
            }
            if deadline.expired() {
                return Err(Error::Timeout);
            }
            // Sleep until a buffer is freed (or a liveness re-check is due).
            // Announce first, then look again: a release after our look sees
            // the waiter (both sides SeqCst) and bumps `frees`.
            self.waiters().fetch_add(1, Ordering::SeqCst);
            let seen = self.frees().load(Ordering::SeqCst);
            if let Some(i) = self.claim(me) {
                self.waiters().fetch_sub(1, Ordering::SeqCst);
                return Ok(loaned(i));
            }
            let mut nap = Duration::from_millis(10);
            if let Deadline::At(at) = deadline {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            sys::futex_wait(self.frees(), seen, Some(nap));
            self.waiters().fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Finds a free buffer and marks it `Writing` by `me`.
    ///
    /// Each look is a compare-and-swap from the free word, not a load
    /// first: the descriptor's line usually sits modified in the cache of
    /// the process that just released the buffer, and a load would fetch
    /// it shared and the swap then fetch it again for writing (two
    /// transfers of the line instead of one). A single sender starts at
    /// the same buffer every time, so it takes back the one its receiver
    /// released last (that line, and the payload's first bytes, are the
    /// ones already moving).
    fn claim(&self, me: u32) -> Option<usize> {
        // Where this process starts looking: its pid hashed into 0..count
        // by a multiply and a shift (no division on the fast path).
        let hash = u64::from(me.wrapping_mul(2_654_435_761));
        let start = ((hash * self.count as u64) >> 32) as usize;
        let mine = pack(WRITING, me);
        (start..self.count).chain(0..start).find(|&i| {
            let w = self.word(i);
            // SeqCst: pairs with the SeqCst free and waiter count (see `announce_free`).
            match w.compare_exchange(pack(FREE, 0), mine, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => true,
                // A free word with an owner left in it (only a foreign
                // writer leaves one): take it as it is.
                Err(cur) => {
                    unpack(cur).0 == FREE
                        && w.compare_exchange(cur, mine, Ordering::SeqCst, Ordering::Relaxed).is_ok()
                }
            }
        })
    }

    /// Frees buffers held `Writing` or `Reading` by processes that no longer
    /// exist; returns how many. (`InFlight` buffers are left alone: see
    /// [`LoanPool::cancel`].)
    pub fn reclaim_stale(&self) -> usize {
        let mut n = 0;
        for i in 0..self.count {
            let w = self.word(i);
            let cur = w.load(Ordering::Acquire);
            let (state, owner) = unpack(cur);
            if state != FREE
                && state != IN_FLIGHT
                && !sys::process_alive(owner)
                && w.compare_exchange(cur, pack(FREE, 0), Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                n += 1;
            }
        }
        if n > 0 {
            self.announce_free();
        }
        n
    }

    /// Wakes loaners asleep for a free buffer, if any: with none this is
    /// one load of a read-mostly word (the free itself, a SeqCst CAS on the
    /// descriptor, orders it), so a release moves no header cache line.
    fn announce_free(&self) {
        if self.waiters().load(Ordering::SeqCst) > 0 {
            self.frees().fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.frees(), u32::MAX);
        }
    }

    fn release(&self, i: usize, from: u64) {
        if self.word(i).compare_exchange(from, pack(FREE, 0), Ordering::SeqCst, Ordering::Relaxed).is_ok() {
            self.announce_free();
        }
    }

    /// Takes the buffer a token names, read-only, without copying.
    ///
    /// # Errors
    ///
    /// [`Error::BadHandle`] when the token is stale, forged, already
    /// redeemed, or does not fit the pool.
    pub fn redeem(&self, token: Token) -> Result<Loan<'_>> {
        let bad = |why: &str| Error::BadHandle(format!("loan token {token:?}: {why}"));
        let i = token.index as usize;
        if i >= self.count || token.len as usize > self.size {
            return Err(bad("outside the pool"));
        }
        let w = self.word(i);
        // One compare-and-swap checks and takes the buffer: an `InFlight`
        // word carries the generation it was sent with (see
        // `LoanMut::send`), so the swap succeeds only for the token of
        // this sending, exactly once, and fetches the descriptor's line
        // from the sender once, exclusive (the checks below are local).
        let sent = pack(IN_FLIGHT, token.generation);
        let mine = pack(READING, sys::pid());
        if let Err(cur) = w.compare_exchange(sent, mine, Ordering::AcqRel, Ordering::Acquire) {
            return Err(bad(if unpack(cur).0 == IN_FLIGHT {
                "stale (the buffer has been reused)"
            } else {
                "not in flight (already redeemed, cancelled or reused)"
            }));
        }
        if self.length(i).load(Ordering::Acquire) != token.len {
            // A forged length: the buffer goes back in flight for the real token.
            let _ = w.compare_exchange(mine, sent, Ordering::AcqRel, Ordering::Relaxed);
            return Err(bad("its length is not the length sent"));
        }
        Ok(Loan { pool: self, index: i, len: token.len as usize, word: mine })
    }

    /// Takes back a buffer whose token was sent but will never be redeemed
    /// (the receiver is gone, or the send failed).
    ///
    /// # Errors
    ///
    /// As [`LoanPool::redeem`].
    pub fn cancel(&self, token: Token) -> Result<()> {
        let loan = self.redeem(token)?;
        drop(loan);
        Ok(())
    }

    fn bytes(&self, i: usize) -> usize {
        self.data + i * self.stride
    }
}

/// Where the buffers' bytes start (the first one's, after its descriptor)
/// and the distance between buffers (`count` is not needed: slots follow
/// the header line).
fn geometry(_count: usize, size: usize) -> (usize, usize) {
    (SLOTS + DESCRIPTOR, (DESCRIPTOR + size).div_ceil(64) * 64)
}

/// A buffer borrowed for writing. Deref to `[u8]` (the whole buffer);
/// [`LoanMut::send`] hands it on, dropping it unsent returns it to the pool.
#[derive(Debug)]
pub struct LoanMut<'a> {
    pool: &'a LoanPool,
    index: usize,
    generation: u32,
    sent: bool,
}

impl LoanMut<'_> {
    /// Marks the first `len` bytes as the payload and turns the buffer into
    /// a token for the receiver (`len` is capped at the buffer size).
    pub fn send(mut self, len: usize) -> Token {
        let len = len.min(self.pool.size) as u32;
        self.pool.length(self.index).store(len, Ordering::Release);
        let w = self.pool.word(self.index);
        w.store(pack(IN_FLIGHT, self.generation), Ordering::Release);
        self.sent = true;
        Token { index: self.index as u32, generation: self.generation, len }
    }
}

impl Deref for LoanMut<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let at = self.pool.bytes(self.index);
        // SAFETY: this process holds the buffer `Writing` (claimed by CAS), so
        // no protocol-following process touches it until `send` or drop.
        unsafe { self.pool.seg.mapping().slice(at, self.pool.size) }.expect("buffer inside the pool")
    }
}

impl DerefMut for LoanMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let at = self.pool.bytes(self.index);
        // SAFETY: as for `deref`, and `&mut self` makes this the only view.
        unsafe { self.pool.seg.mapping().slice_mut(at, self.pool.size) }.expect("buffer inside the pool")
    }
}

impl Drop for LoanMut<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.pool.release(self.index, pack(WRITING, sys::pid()));
        }
    }
}

/// A received buffer, read in place. Dropping it returns the buffer to the pool.
#[derive(Debug)]
pub struct Loan<'a> {
    pool: &'a LoanPool,
    index: usize,
    len: usize,
    word: u64,
}

impl Deref for Loan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let at = self.pool.bytes(self.index);
        // SAFETY: this process holds the buffer `Reading` (claimed by CAS);
        // the sender gave it up when it sent the token.
        unsafe { self.pool.seg.mapping().slice(at, self.len) }
            .expect("length checked against the buffer size")
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.pool.release(self.index, self.word);
    }
}
