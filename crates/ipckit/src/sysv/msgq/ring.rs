//! The lock-free fast path of a [`MessageQueue`](super::MessageQueue): a
//! bounded ring of message slots in the queue's own segment.
//!
//! # Who does what
//!
//! **Senders** append to the ring without any lock (many at once, Vyukov's
//! sequence-numbered slots). **Receivers** always hold the queue's robust
//! lock, so at any moment there is one consumer: it either takes the head
//! slot directly (a type-0 receive, or one whose selection matches the head,
//! while the locked list is empty) or *drains* the ring into the locked list
//! (moving messages in order to the list's tail) and selects there. Every
//! message in the list is older than every message in the ring, so the
//! queue's global order is list, then ring.
//!
//! In the 1 -> 1 case the lock's cache line stays with the receiver; the
//! lines both sides write are the slots themselves (the message) and nothing
//! else.
//!
//! # Counters
//!
//! - `TAILW` (the senders' line): ring tail position (low 32 bits) and bytes
//!   ever sent (high 32), moved only by the sender holding the claim on the
//!   tail's slot (so with a plain store), after the admission check;
//! - `HEADW` (the receivers' line): ring head position and bytes ever taken
//!   out of the ring (received or drained);
//! - `LISTW` (on the receivers' line too, written under the lock): messages
//!   and bytes in the locked list.
//!
//! Messages in the queue = `tail - head + list`, bytes = `sent - taken +
//! list bytes`. A sender keeps a private copy of the last `HEADW`/`LISTW` it
//! read and reads the receivers' lines again only when that stale view says
//! the message does not fit: the view can only overestimate what is queued
//! (receives only shrink it; a drain raises `LISTW` before `HEADW`, and the
//! sender reads `HEADW` first), so the check is exact when it matters and a
//! message is never admitted beyond `msg_qbytes`.
//!
//! # Slots
//!
//! Slot `pos % N` has a word `seq | claim << 32`, a length, a word that
//! must be 0 (it named a chunk chain in layout version 2), the type and the
//! inline text. A text longer than [`INLINE`] is not in the slot but in the
//! queue's arena, at the byte count the tail's move gave it (see
//! `arena.rs`). For position `pos`: `seq == pos + 1` (claim 0) published;
//! `seq == pos` with `claim` the pid of a sender that is filling it (0:
//! free, on the ring's first lap or after a sender gave its claim up).
//!
//! Receivers never write a slot: a slot is free for `pos` once the head
//! has passed `pos - N`, which senders know from `HEADW` (their cached
//! view, which only ever overestimates what is queued), whatever the
//! previous lap left in it: `(pos - N + 1, 0)` (a message taken) or
//! `(pos - N, pid)` (skipped after its sender died filling it). So the
//! slot's lines travel from sender to receiver, and only the receiver's
//! reading copy is invalidated when the sender comes round again; the
//! receiver's only per-message write is `HEADW`, on its own line. (A long
//! text's arena bytes are likewise free once the head has passed it: the
//! receiver copies the text out before it moves the head.)
//!
//! A sender: claims the slot (CAS from the free word it found to `(pos,
//! pid)`), checks that `TAILW` still says `pos` (then nobody else can move
//! it: a sender moves the tail only from the position whose slot it has
//! claimed, and the claim is ours), writes the length and type, moves
//! `TAILW` (a store, with the byte count), writes the text (into the slot
//! or the arena), publishes (`(pos + 1, 0)`). Long and short texts take
//! the same lock-free path.
//!
//! # Deaths
//!
//! | died | left behind | who repairs | message |
//! |---|---|---|---|
//! | sender, slot claimed, `TAILW` not moved | claim = dead pid | the next sender takes the claim over | never sent |
//! | sender after moving `TAILW` | `seq == pos`, claim = dead pid | the receiver reaching it skips it (moves `HEADW` past it, counting its bytes as taken, a long text's half-written arena bytes with them) | never sent (`send` had not returned) |
//! | receiver taking the head, `HEADW` not moved | nothing: the slot was only read | - | still queued |
//! | receiver draining, linked into the list, `HEADW` not moved | list tail records `head` as its origin | repair moves `HEADW` | in the list, once |
//!
//! Receivers hold the robust lock, so their deaths are always seen by the
//! next lock holder.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::Mapping;

/// Bytes per slot (two cache lines).
pub(super) const SLOT: usize = 128;
const S_WORD: usize = 0;
const S_LEN: usize = 8;
const S_CHAIN: usize = 12;
const S_TYPE: usize = 16;
const S_DATA: usize = 24;
/// The longest text kept inline in a slot.
pub(super) const INLINE: usize = SLOT - S_DATA;

pub(super) fn pack(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

pub(super) fn unpack(w: u64) -> (u32, u32) {
    (w as u32, (w >> 32) as u32)
}

/// The ring's slots in a mapping.
#[derive(Clone, Copy)]
pub(super) struct Ring<'a> {
    pub(super) m: &'a Mapping,
    /// Offset of slot 0.
    pub(super) base: usize,
    /// `N`, a power of two.
    pub(super) n: u32,
}

/// What the head slot holds (for the lock holder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Nothing queued in the ring.
    Empty,
    /// A published message.
    Ready { mtype: i64, len: usize },
    /// A sender moved the tail past it and is still writing it (its pid).
    Filling(u32),
}

impl<'a> Ring<'a> {
    fn off(&self, pos: u32, field: usize) -> usize {
        self.base + (pos & (self.n - 1)) as usize * SLOT + field
    }

    pub(super) fn word(&self, pos: u32) -> &'a AtomicU64 {
        self.m.u64_at(self.off(pos, S_WORD)).expect("slot inside the mapping")
    }

    fn u32_at(&self, pos: u32, field: usize) -> &'a AtomicU32 {
        self.m.u32_at(self.off(pos, field)).expect("slot inside the mapping")
    }

    pub(super) fn len(&self, pos: u32) -> u32 {
        self.u32_at(pos, S_LEN).load(Ordering::Relaxed)
    }

    pub(super) fn chain(&self, pos: u32) -> u32 {
        self.u32_at(pos, S_CHAIN).load(Ordering::Relaxed)
    }

    pub(super) fn mtype(&self, pos: u32) -> i64 {
        self.m.u64_at(self.off(pos, S_TYPE)).expect("slot inside the mapping").load(Ordering::Relaxed) as i64
    }

    /// Copies the first `out.len()` bytes of the inline text out.
    pub(super) fn read(&self, pos: u32, out: &mut [u8]) {
        let n = out.len().min(INLINE);
        self.m.read(self.off(pos, S_DATA), &mut out[..n]);
    }

    /// Sets every slot free for the first lap.
    pub(super) fn init(&self) {
        for i in 0..self.n {
            self.word(i).store(pack(i, 0), Ordering::Relaxed);
        }
    }

    /// The head slot's state, for the lock holder; `tail` is read only
    /// when the slot is not published, and never with `quick`. `max`
    /// bounds a valid length.
    ///
    /// `quick`: an unpublished head slot is reported [`Head::Empty`]
    /// without a look at the senders' line (which the sender's next tail
    /// CAS would otherwise have to fetch back, once per message when the
    /// receiver keeps up): either nothing is queued (a sender claims a
    /// slot before it moves the tail past it), or a sender is filling the
    /// slot, and a receiver waits for the slot's word to change either
    /// way. A receiver that waited for it in vain (a sender descheduled
    /// or dead while filling it, or a forged word) passes `quick ==
    /// false`: then such a slot is [`Head::Filling`], waited out (or
    /// skipped once its sender is dead), and a word that is neither a
    /// claim nor published behind the tail is an error.
    pub(super) fn head(
        &self,
        head: u32,
        tail: impl FnOnce() -> u32,
        max: usize,
        quick: bool,
    ) -> Result<Head, &'static str> {
        let seq = unpack(self.word(head).load(Ordering::Acquire)).0;
        if seq == head.wrapping_add(1) {
            return self.ready(head, max);
        }
        if quick {
            return Ok(Head::Empty);
        }
        let t = tail();
        if t == head {
            return Ok(Head::Empty);
        }
        if t.wrapping_sub(head) > self.n {
            return Err("the ring's tail is more than a lap past its head");
        }
        // The word again, after the tail: the sender that moved the tail
        // past `head` had claimed the slot first, so the claim (or the
        // message) is seen now, even if the first look came before it.
        let (seq, claim) = unpack(self.word(head).load(Ordering::Acquire));
        if seq == head.wrapping_add(1) {
            return self.ready(head, max);
        }
        if seq == head {
            return Ok(Head::Filling(claim));
        }
        Err("a ring slot's sequence is neither free nor published")
    }

    /// The published message at `head`, checked against `max`.
    fn ready(&self, head: u32, max: usize) -> Result<Head, &'static str> {
        let len = self.len(head) as usize;
        if len > max {
            return Err("a ring slot announces a length over the maximum");
        }
        if self.chain(head) != 0 {
            return Err("a ring slot names a chunk chain");
        }
        Ok(Head::Ready { mtype: self.mtype(head), len })
    }

    /// Whether slot word `w` is free for position `pos`, given that the
    /// head has passed `pos - N` (see the module doc): what the previous
    /// lap left, or a free or given-up word for `pos` itself.
    pub(super) fn free_for(&self, pos: u32, w: u64) -> bool {
        let (seq, claim) = unpack(w);
        let prev = pos.wrapping_sub(self.n);
        (claim == 0 && (seq == pos || seq == prev.wrapping_add(1))) || (seq == prev && claim != 0)
    }

    /// Starts fetching, for writing, the slot's second line when an
    /// inline text of `len` bytes reaches into it (a 64-byte text does),
    /// so that it arrives while the claim waits for the first (see
    /// [`Mapping::prefetch_write`]).
    pub(super) fn prefetch_text(&self, pos: u32, len: usize) {
        if S_DATA + len > 64 {
            self.m.prefetch_write(self.off(pos, 64));
        }
    }

    /// Starts fetching, for writing, both lines of the slot of `pos` (a
    /// hint: see [`Mapping::prefetch_write`]).
    pub(super) fn prefetch_slot(&self, pos: u32) {
        self.m.prefetch_write(self.off(pos, 0));
        self.m.prefetch_write(self.off(pos, 64));
    }

    /// Starts fetching, for reading, both lines of the slot of `pos` (a hint).
    pub(super) fn prefetch_slot_read(&self, pos: u32) {
        self.m.prefetch_read(self.off(pos, 0));
        self.m.prefetch_read(self.off(pos, 64));
    }

    /// The word a slot holds for `pos` when the previous lap's message
    /// was taken: free for `pos` (see [`Ring::free_for`]).
    pub(super) fn taken_word(&self, pos: u32) -> u64 {
        pack(pos.wrapping_sub(self.n).wrapping_add(1), 0)
    }

    /// Claims the slot of `pos` for `me` if it still holds `free` (a word
    /// [`Ring::free_for`] accepts); else returns the word it holds.
    pub(super) fn claim_from(&self, pos: u32, free: u64, me: u32) -> Result<u64, u64> {
        debug_assert!(self.free_for(pos, free));
        self.word(pos).compare_exchange(free, pack(pos, me), Ordering::Acquire, Ordering::Acquire)
    }

    /// Claims the slot of `pos` for `me` if it is free and unclaimed (or,
    /// with `dead`, claimed by that pid). Returns whether it did.
    pub(super) fn claim(&self, pos: u32, me: u32, dead: u32) -> bool {
        self.word(pos)
            .compare_exchange(pack(pos, dead), pack(pos, me), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives up a claim without sending.
    pub(super) fn unclaim(&self, pos: u32) {
        self.word(pos).store(pack(pos, 0), Ordering::Release);
    }

    /// Fills in a claimed slot's header (before the tail moves past it).
    pub(super) fn describe(&self, pos: u32, mtype: i64, len: usize, chain: u32) {
        self.u32_at(pos, S_LEN).store(len as u32, Ordering::Relaxed);
        self.u32_at(pos, S_CHAIN).store(chain, Ordering::Relaxed);
        self.m
            .u64_at(self.off(pos, S_TYPE))
            .expect("slot inside the mapping")
            .store(mtype as u64, Ordering::Relaxed);
    }

    /// Writes the inline text and publishes the slot. The caller reads the
    /// sleeper count right after, and that read must not pass the
    /// publishing write (Dekker's pattern with a receiver that announces
    /// itself, then looks at the slot, then sleeps): so the publishing
    /// write is a `SeqCst` swap (a full barrier), unless `light`: then a
    /// plain store, and the barrier is the receiver's: on a queue whose
    /// `LIGHT` flag is set (a `light` caller set it, with a full barrier,
    /// before its first such store; a receiver that read it unset before
    /// sleeping was seen by that barrier's side), it issues
    /// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` before it looks, which
    /// runs a full barrier on every CPU running a process registered for it,
    /// as a `light` caller is (see `light_publish`): a sender that read the
    /// count before the receiver's announcement had its store visible by
    /// the receiver's look. Sleeping is the rare path; sending is the
    /// common one (the swap was a fifth of a streaming sender's time).
    ///
    /// With `demote` (the ring was empty: a receiver is most likely waiting
    /// for this message), the publishing write is the swap (the message is
    /// in the line before it is demoted), and the slot's lines are pushed
    /// to the shared cache for the receiver's CPU to find there (see
    /// [`Mapping::demote`]); not while streaming, where it slowed 1 -> 1
    /// down by half (the receiver reads the lines later, and the demoted
    /// lines cost this CPU to evict).
    pub(super) fn publish(&self, pos: u32, data: &[u8], demote: bool, light: bool) {
        if !data.is_empty() {
            self.m.write(self.off(pos, S_DATA), data);
        }
        let published = pack(pos.wrapping_add(1), 0);
        // A demoted line must hold the message already: a store still in
        // the store buffer would fetch it back after the demotion.
        if light && !demote {
            self.word(pos).store(published, Ordering::Release);
        } else {
            self.word(pos).swap(published, Ordering::SeqCst);
        }
        if demote {
            self.m.demote(self.off(pos, 0));
            if S_DATA + data.len() > 64 {
                self.m.demote(self.off(pos, 64));
            }
        }
    }
}
