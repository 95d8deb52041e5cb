//! Long texts (over [`INLINE`](super::ring::INLINE) bytes): one contiguous
//! run of a circular byte arena in the queue's segment, found from the
//! ring's byte counters alone.
//!
//! # Where a text lives
//!
//! A sender's `TAILW` move (see `ring.rs`) takes the bytes-ever-sent counter
//! from `b` to `b + len`; a long text sent with that move lives at arena
//! bytes `b .. b + len`, modulo the arena's size `A` (a power of two, so
//! the position survives the 32-bit counter wrapping; a text that crosses
//! the end goes in two pieces). The receiver that takes the message out of
//! the ring (received, or drained into the locked list, which copies it
//! into chunks) finds it at `HEADW`'s byte counter, and moving `HEADW` past
//! it frees it. So the allocation is the move that admits the message: no
//! lock, no free list, no offset stored in shared memory that could be
//! forged.
//!
//! # Why it never overwrites a queued text
//!
//! The arena's live bytes are `sent - taken` (every text in the ring, short
//! ones counted too), and a sender admits a message only when
//! `sent - taken + list bytes + len <= msg_qbytes`, with a view of `taken`
//! that can only be stale (smaller). So the new text's end is at most
//! `msg_qbytes <= max_capacity <= A` bytes past the oldest byte still in
//! the ring: it overlaps nothing a receiver may still read. (A sender of a
//! long text checks against `min(msg_qbytes, A)`, so a forged `msg_qbytes`
//! changes nothing.) A receiver copies a text out before it moves `HEADW`
//! past it.
//!
//! # Crashes
//!
//! A sender killed while copying in leaves its slot unpublished; the
//! receiver reaching it skips it (as for a short text), moving `HEADW` past
//! the half-written bytes. A receiver killed while copying out has not
//! moved `HEADW`: the message is still queued, its bytes untouched.
//! Nothing to repair, nothing to leak.

use crate::sys::Mapping;

/// The arena in a mapping.
#[derive(Clone, Copy)]
pub(super) struct Arena<'a> {
    pub(super) m: &'a Mapping,
    /// Offset of its first byte.
    pub(super) base: usize,
    /// `A`: 0 (no long texts) or a power of two.
    pub(super) size: usize,
}

impl Arena<'_> {
    /// The one or two pieces of the `len` bytes at byte count `at`, as
    /// (offset in the mapping, length) pairs; `None` if `len` exceeds the
    /// arena (a forged length: no real text does).
    fn pieces(&self, at: u32, len: usize) -> Option<[(usize, usize); 2]> {
        if len > self.size {
            return None;
        }
        if len == 0 {
            return Some([(self.base, 0), (self.base, 0)]);
        }
        let off = at as usize & (self.size - 1);
        let first = len.min(self.size - off);
        Some([(self.base + off, first), (self.base, len - first)])
    }

    /// Copies `data` in at byte count `at`; `false` (nothing written) if it
    /// does not fit the arena.
    pub(super) fn write(&self, at: u32, data: &[u8]) -> bool {
        let Some([(a, n), (b, _)]) = self.pieces(at, data.len()) else { return false };
        let (head, tail) = data.split_at(n);
        self.m.write(a, head) && self.m.write(b, tail)
    }

    /// Copies `out.len()` bytes out from byte count `at`; `false` if that
    /// does not fit the arena.
    pub(super) fn read(&self, at: u32, out: &mut [u8]) -> bool {
        let Some([(a, n), (b, _)]) = self.pieces(at, out.len()) else { return false };
        let (head, tail) = out.split_at_mut(n);
        self.m.read(a, head) && self.m.read(b, tail)
    }
}
