//! The locked part of a queue: the list of 64-byte chunks where messages
//! go when a receive selects past the ring's head, and the one consumer of
//! the ring (whoever holds the queue's robust lock). Repairs after a dead
//! lock holder happen here.

use std::sync::atomic::{AtomicU32, Ordering};

use super::ring::{pack, unpack, Head, INLINE};
use super::{
    u32_at, u64_at, Busy, Ev, MessageQueue, Out, Pushed, Select, BUMP, CHUNK, CUID, C_DATA, C_FROM, C_LEN,
    C_NEXT, C_ORIG, C_TYPE, DATA, FREE, HEAD, HEADW, LISTW, LRPID, MAXMSG, REMOVED, RTIME, TAIL, TAILW, UID,
    USED,
};
use crate::error::{Fault, FrameError};
use crate::perm::Access;
use crate::sys::{self, Deadline};
use crate::sysv::lock::RobustLock;

/// The queue, locked: the one consumer of the ring, and the keeper of the
/// list. Everything that reads or changes the list goes through here.
pub(super) struct Guard<'a> {
    pub(super) q: &'a MessageQueue,
    pub(super) lock: RobustLock<'a>,
    /// Something changed: wake the sleepers, after unlocking (a sleeper
    /// woken while we still hold the lock would only go back to sleep on it).
    /// (Bits: 1 messages arrived, 2 room was freed.)
    pub(super) wake: std::cell::Cell<u8>,
    /// Whether an empty-looking head slot is trusted without reading the
    /// senders' counter (see [`super::ring::Ring::head`]).
    pub(super) quick: std::cell::Cell<bool>,
    /// Ring positions past the head that [`Guard::take`] looked at and
    /// left where they are (0, or 1: a lone head message the receive did
    /// not select); a receiver then waits for the position after them.
    pub(super) passed: std::cell::Cell<u32>,
}

/// How many slots past the head a receiver taking the head prefetches for
/// reading (1 -> 1 pinned, 6 runs each: median 12.2 -> 13.0 M msg/s; 4 and
/// 8 gained nothing; a hint only, it changes no memory). Only while
/// messages are queued behind the head: in a round trip that slot is the
/// next one the other side claims, and a copy here would cost its claim a
/// fetch of the line.
const RAHEAD: u32 = 2;

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // The unlocking store is SeqCst: it orders every change made under
        // the lock before the sleeper count's load.
        self.lock.unlock();
        let wake = self.wake.get();
        if wake & 1 != 0 {
            self.q.notify_after_barrier(Ev::Msg);
        }
        if wake & 2 != 0 {
            self.q.notify_after_barrier(Ev::Room);
        }
    }
}

impl Guard<'_> {
    pub(super) fn get(&self, off: usize) -> u32 {
        u32_at(self.q.map(), off).load(Ordering::Relaxed)
    }

    pub(super) fn put(&self, off: usize, v: u32) {
        u32_at(self.q.map(), off).store(v, Ordering::Relaxed);
    }

    pub(super) fn get64(&self, off: usize) -> (u32, u32) {
        unpack(u64_at(self.q.map(), off).load(Ordering::Relaxed))
    }

    pub(super) fn put64(&self, off: usize, lo: u32, hi: u32) {
        u64_at(self.q.map(), off).store(pack(lo, hi), Ordering::Release);
    }

    /// Wakes every sleeper when the lock is released: each re-checks its own condition.
    pub(super) fn changed(&self) {
        self.wake.set(3);
    }

    /// Wakes the senders when the lock is released: room was freed.
    pub(super) fn room_freed(&self) {
        self.wake.set(self.wake.get() | 2);
    }

    pub(super) fn check(&self, want: Access) -> Result<(), Fault> {
        self.q.check(want)
    }

    pub(super) fn check_owner(&self) -> Result<(), Fault> {
        if self.get(REMOVED) != 0 {
            return Err(Fault::Disconnected);
        }
        let me = self.q.caller.uid;
        if me == 0 || me == self.get(UID) || me == self.get(CUID) {
            Ok(())
        } else {
            Err(Fault::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not the queue's owner")))
        }
    }

    pub(super) fn base(&self, i: u32) -> usize {
        self.q.chunks_at + (i as usize - 1) * CHUNK
    }

    /// Chunk `i` (1-based) field at `off`, or `None` if `i` is out of range.
    pub(super) fn chunk(&self, i: u32, off: usize) -> Option<&AtomicU32> {
        if i == 0 || i as usize > self.q.chunks {
            return None;
        }
        self.q.map().u32_at(self.base(i) + off)
    }

    pub(super) fn link(&self, i: u32, off: usize) -> Result<u32, Fault> {
        self.chunk(i, off).map(|w| w.load(Ordering::Relaxed)).ok_or_else(corrupt)
    }

    pub(super) fn set_link(&self, i: u32, off: usize, v: u32) {
        if let Some(w) = self.chunk(i, off) {
            w.store(v, Ordering::Relaxed);
        }
    }

    pub(super) fn mtype(&self, i: u32) -> Result<i64, Fault> {
        if i == 0 || i as usize > self.q.chunks {
            return Err(corrupt());
        }
        self.q
            .map()
            .u64_at(self.base(i) + C_TYPE)
            .map(|w| w.load(Ordering::Relaxed) as i64)
            .ok_or_else(corrupt)
    }

    pub(super) fn release(&self, i: u32) {
        if let Some(w) = self.chunk(i, C_NEXT) {
            w.store(self.get(FREE), Ordering::Relaxed);
            self.put(FREE, i);
        }
    }

    /// Builds a message in chunks, not linked anywhere; returns its header chunk.
    pub(super) fn build(&self, mtype: i64, data: &[u8]) -> Option<u32> {
        let mut chunks = Vec::new();
        let head = self.alloc_chain(mtype, data.len(), &mut chunks)?;
        let m = self.q.map();
        for (&c, part) in chunks[1..].iter().zip(data.chunks(DATA)) {
            m.write(self.base(c) + C_DATA, part);
        }
        Some(head)
    }

    /// Allocates and links the chunks of a `len`-byte message of type
    /// `mtype` without its text, not linked anywhere; returns its header
    /// chunk, and puts it and its data chunks, in order, in `chunks`.
    pub(super) fn alloc_chain(&self, mtype: i64, len: usize, chunks: &mut Vec<u32>) -> Option<u32> {
        let need = 1 + len.div_ceil(DATA);
        let used = self.get(USED) as usize;
        if used + need > self.q.chunks {
            return None;
        }
        chunks.clear();
        chunks.reserve(need);
        // The free list's head and the bump are kept here and stored once:
        // they share the lock's line, which waiters keep reading (a death
        // before the store leaves the chunks free, as they were).
        let (mut free, mut bump) = (self.get(FREE), self.get(BUMP));
        // Taken off the free list first (`popped` of them), then from the
        // bump. Chunks freed as one message come off the free list linked
        // in order: each links to the next one taken already, as long as
        // that one came off the free list too; only the other links are
        // written, once every chunk was found.
        let mut popped = 0;
        for _ in 0..need {
            let c = if free != 0 {
                let c = free;
                self.touch(c.wrapping_add(LOOKAHEAD as u32));
                free = self.link(c, C_NEXT).ok()?;
                popped += 1;
                c
            } else if (bump as usize) < self.q.chunks {
                bump += 1;
                bump
            } else {
                return None;
            };
            chunks.push(c);
        }
        // The header's own link is the list's, set below.
        for i in popped.max(2) - 1..need.saturating_sub(1) {
            self.set_link(chunks[i], C_NEXT, chunks[i + 1]);
        }
        self.put(FREE, free);
        self.put(BUMP, bump);
        let (head, first, last) = (chunks[0], chunks.get(1).copied().unwrap_or(0), chunks[need - 1]);
        if last != head {
            self.set_link(last, C_NEXT, 0);
        }
        self.set_link(head, C_NEXT, 0);
        self.set_link(head, C_DATA, first);
        self.q.map().u64_at(self.base(head) + C_TYPE)?.store(mtype as u64, Ordering::Relaxed);
        self.set_link(head, C_LEN, len as u32);
        self.set_link(head, C_FROM, 0);
        self.put(USED, (used + need) as u32);
        Some(head)
    }

    /// Reads message `msg` (`len` bytes, as many as fit kept in `out`);
    /// returns the chunks it occupies.
    pub(super) fn read_message(&self, msg: u32, len: usize, out: &mut [u8]) -> Result<Chain, Fault> {
        let mut chain = Chain { head: msg, first: 0, last: msg, count: 1 };
        let mut c = self.link(msg, C_DATA)?;
        let (mut left, mut at) = (len, 0);
        let map = self.q.map();
        while left > 0 {
            if c == 0 || chain.count > self.q.chunks {
                return Err(corrupt());
            }
            // Each chunk is found through the one before it, so each line
            // would be fetched only when the last one arrived; a message's
            // chunks are mostly consecutive (see `free_chunks`): ask for
            // the line a few chunks ahead now, so they arrive in parallel.
            if left > LOOKAHEAD * DATA {
                self.touch(c.wrapping_add(LOOKAHEAD as u32));
            }
            let n = left.min(DATA);
            if at < out.len() {
                let k = n.min(out.len() - at);
                map.read(self.base(c) + C_DATA, &mut out[at..at + k]);
                at += k;
            }
            if chain.first == 0 {
                chain.first = c;
            }
            chain.last = c;
            chain.count += 1;
            left -= n;
            c = self.link(c, C_NEXT)?;
        }
        Ok(chain)
    }

    /// Reads chunk `i`'s first word, if it exists, for its line to be in
    /// the cache when it is needed (a prefetch).
    fn touch(&self, i: u32) {
        if let Some(w) = self.chunk(i, C_NEXT) {
            std::hint::black_box(w.load(Ordering::Relaxed));
        }
    }

    /// Frees a message's chunks as [`Guard::read_message`] found them (the
    /// header, then the data chunks, each linked to the next).
    ///
    /// The whole message goes onto the free list at once, in its own
    /// order, with two writes (the header now leads to its first data
    /// chunk, the last data chunk to the old free list): the data chunks'
    /// lines are only read here, never written, and the next message of
    /// the same size gets the same chunks in the same order (ascending,
    /// when they came from the bump), which the next copy in and out
    /// streams through instead of chasing scattered lines.
    pub(super) fn free_chunks(&self, chain: &Chain) {
        if chain.count == 0 {
            return;
        }
        self.put(USED, (self.get(USED) as usize).saturating_sub(chain.count) as u32);
        self.set_link(chain.last, C_NEXT, self.get(FREE));
        if chain.first != 0 {
            self.set_link(chain.head, C_NEXT, chain.first);
        }
        self.put(FREE, chain.head);
    }

    /// A send under the lock, after a lock-free attempt found every ring
    /// slot taken: drains the ring into the list, then pushes.
    pub(super) fn push_drained(&self, mtype: i64, data: &[u8]) -> Result<Pushed, Fault> {
        self.check(Access::Write)?;
        let mut pushed = self.q.push(mtype, data);
        if pushed == Pushed::NoSlot {
            self.drain_all(Deadline::Never)?;
            pushed = self.q.push(mtype, data);
        }
        Ok(pushed)
    }

    /// Reads the senders' counter (only when the ring may hold a message
    /// the head slot does not show yet, or to drain it).
    pub(super) fn tail(&self) -> u64 {
        u64_at(self.q.map(), TAILW).load(Ordering::SeqCst)
    }

    pub(super) fn headw(&self) -> (u32, u32) {
        self.get64(HEADW)
    }

    /// The ring's head, once no sender is filling it: waits out a live
    /// sender (it is between two stores), skips the slot of a dead one.
    pub(super) fn settle_head(&self, deadline: Deadline) -> Result<Head, Fault> {
        let ring = self.q.ring();
        let max = self.get(MAXMSG) as usize;
        let mut busy = Busy::default();
        loop {
            let (hpos, _) = self.headw();
            let tail = || unpack(self.tail()).0;
            match ring.head(hpos, tail, max, self.quick.get()) {
                Err(why) => return Err(Fault::Frame(FrameError::BadHandles(why))),
                Ok(Head::Filling(pid)) => {
                    if busy.wait(deadline)? && !sys::process_alive(pid) {
                        self.skip(hpos, pid);
                    }
                }
                Ok(head) => return Ok(head),
            }
        }
    }

    /// Messages the tail counts that will never be published: slots in
    /// `hpos..tpos` still claimed by a sender that died filling them
    /// (receivers skip them when they reach them; `stat` leaves them out,
    /// so a message is in the statistics exactly when it can be received).
    /// `(messages, bytes)`; nothing for a span longer than the ring (a
    /// corrupted counter, which receivers report).
    pub(super) fn dead_claims(&self, hpos: u32, tpos: u32) -> (usize, usize) {
        let ring = self.q.ring();
        let span = tpos.wrapping_sub(hpos);
        if span > ring.n {
            return (0, 0);
        }
        let mut dead = (0, 0);
        for k in 0..span {
            let pos = hpos.wrapping_add(k);
            let (seq, claim) = unpack(ring.word(pos).load(Ordering::Acquire));
            if seq == pos && claim != 0 && !sys::process_alive(claim) {
                dead.0 += 1;
                dead.1 += ring.len(pos) as usize;
            }
        }
        dead
    }

    /// Skips the head slot, whose sender (`pid`) died before publishing it:
    /// the message was never sent; its bytes are given back.
    pub(super) fn skip(&self, hpos: u32, pid: u32) {
        let ring = self.q.ring();
        if ring.word(hpos).load(Ordering::Acquire) != pack(hpos, pid) {
            return;
        }
        tracing::warn!(dead = pid, "skipping a queue slot whose sender died filling it");
        let (_, hbytes) = self.headw();
        let len = ring.len(hpos);
        // The slot stays as it is: free for the next lap once the head is
        // past it. Moving the head frees a long text's half-written arena bytes.
        self.put64(HEADW, hpos.wrapping_add(1), hbytes.wrapping_add(len));
        self.room_freed();
    }

    /// Takes the ring's head message as the received one.
    pub(super) fn pop(
        &self,
        select: Select,
        max_len: usize,
        head: Head,
        out: &mut Out<'_>,
    ) -> Result<(i64, usize), Fault> {
        let Head::Ready { mtype, len } = head else { return Err(corrupt()) };
        if len > max_len && !select.truncate {
            return Err(Fault::TooLarge { len, max: max_len });
        }
        let keep = len.min(max_len);
        let (hpos, hbytes) = self.headw();
        self.read_head(hpos, hbytes, len, out.room(keep))?;
        // Commit by moving the head, which frees a long text's arena bytes
        // and the slot for the next lap (receivers never write a slot; a
        // death before it leaves the message queued).
        self.put64(HEADW, hpos.wrapping_add(1), hbytes.wrapping_add(len as u32));
        self.received();
        Ok((mtype, keep))
    }

    /// The common receive in one pass: the list is empty and the ring's
    /// head is published, picked by `select` and no longer than `max_len`:
    /// takes it as [`Guard::pop`] does. `None` (nothing changed) for
    /// anything else, which the general path ([`Guard::take`]) handles,
    /// errors included. With `streaming` (the last receive found its
    /// message queued), the slot [`RAHEAD`] positions on is prefetched.
    #[inline]
    pub(super) fn take_head(
        &self,
        select: Select,
        max_len: usize,
        out: &mut Out<'_>,
        streaming: bool,
    ) -> Option<(i64, usize)> {
        if select.mtype < 0 || self.get64(LISTW).0 != 0 || self.q.check(Access::Read).is_err() {
            return None;
        }
        let ring = self.q.ring();
        let (hpos, hbytes) = self.headw();
        if unpack(ring.word(hpos).load(Ordering::Acquire)).0 != hpos.wrapping_add(1) {
            return None;
        }
        let len = ring.len(hpos) as usize;
        if len > max_len || len > self.get(MAXMSG) as usize || ring.chain(hpos) != 0 {
            return None;
        }
        let mtype = ring.mtype(hpos);
        if !select.matches_first(mtype) {
            return None;
        }
        if streaming {
            ring.prefetch_slot_read(hpos.wrapping_add(RAHEAD));
        }
        self.read_head(hpos, hbytes, len, out.room(len)).ok()?;
        self.put64(HEADW, hpos.wrapping_add(1), hbytes.wrapping_add(len as u32));
        self.received();
        Some((mtype, len))
    }

    /// Copies the first `out.len()` bytes of the `len`-byte text at the
    /// ring's head (`hpos`, `hbytes` as `HEADW` holds them) out: inline in
    /// its slot, or in the arena when it is long.
    pub(super) fn read_head(&self, hpos: u32, hbytes: u32, len: usize, out: &mut [u8]) -> Result<(), Fault> {
        if len <= INLINE {
            self.q.ring().read(hpos, out);
        } else if !self.q.arena().read(hbytes, out) {
            return Err(Fault::Frame(FrameError::BadHandles(
                "a ring slot announces a text longer than the arena",
            )));
        }
        Ok(())
    }

    /// Records a receive: `msg_lrpid`, `msg_rtime`.
    pub(super) fn received(&self) {
        let m = self.q.map();
        let me = sys::pid();
        if self.get(LRPID) != me {
            self.put(LRPID, me);
        }
        let now = sys::coarse_now_secs();
        let rtime = u64_at(m, RTIME);
        if rtime.load(Ordering::Relaxed) != now {
            rtime.store(now, Ordering::Relaxed);
        }
        self.q.durable_commit();
        self.room_freed();
    }

    /// Moves the ring's head message to the list's tail.
    pub(super) fn drain_one(&self, head: Head) -> Result<(), Fault> {
        let Head::Ready { mtype, len } = head else { return Err(corrupt()) };
        let (hpos, hbytes) = self.headw();
        // Copied into chunks: a long text's arena bytes are freed when the
        // head moves past it.
        let mut text = vec![0; len];
        self.read_head(hpos, hbytes, len, &mut text)?;
        let c = self.build(mtype, &text).ok_or_else(corrupt)?;
        self.set_link(c, C_NEXT, 0);
        self.set_link(c, C_ORIG, hpos);
        self.set_link(c, C_FROM, 1);
        // Commit: link it in, count it, then move the head (a death in
        // between is finished by the repair).
        let tail = self.get(TAIL);
        match self.chunk(tail, C_NEXT) {
            Some(t) => t.store(c, Ordering::Relaxed),
            None => self.put(HEAD, c),
        }
        self.put(TAIL, c);
        let (ln, lb) = self.get64(LISTW);
        self.put64(LISTW, ln + 1, lb + len as u32);
        self.put64(HEADW, hpos.wrapping_add(1), hbytes.wrapping_add(len as u32));
        Ok(())
    }

    /// Moves every message the ring holds now to the list, in order.
    pub(super) fn drain_all(&self, deadline: Deadline) -> Result<(), Fault> {
        let until = unpack(self.tail()).0;
        // Up to a tail it has read: every slot before it is looked at.
        let quick = self.quick.replace(false);
        let mut drained = Ok(());
        while self.headw().0 != until {
            match self.settle_head(deadline) {
                Ok(Head::Empty) => break,
                Ok(head) => {
                    if let Err(e) = self.drain_one(head) {
                        drained = Err(e);
                        break;
                    }
                }
                Err(e) => {
                    drained = Err(e);
                    break;
                }
            }
        }
        self.quick.set(quick);
        drained
    }

    /// Takes the message `select` picks, if any: from the list (the oldest
    /// messages), else from the ring's head if it matches, else from the
    /// list after draining the ring into it.
    pub(super) fn take(
        &self,
        select: Select,
        max_len: usize,
        deadline: Deadline,
        out: &mut Out<'_>,
    ) -> Result<Option<(i64, usize)>, Fault> {
        if select.mtype < 0 {
            self.drain_all(deadline)?;
            return self.take_list(select, max_len, out);
        }
        if self.get64(LISTW).0 > 0 {
            if let Some(found) = self.take_list(select, max_len, out)? {
                return Ok(Some(found));
            }
        }
        match self.settle_head(deadline)? {
            Head::Empty => Ok(None),
            head @ Head::Ready { mtype, .. } if select.matches_first(mtype) => {
                self.pop(select, max_len, head, out).map(Some)
            }
            Head::Ready { .. } if unpack(self.tail()).0 == self.headw().0.wrapping_add(1) => {
                // The ring's only message, and not selected: nothing
                // matches. Left in the ring (drained into the list, the
                // receiver it is meant for would take it from there, on
                // the slow path: a round trip's request, seen by the
                // requester waiting for the reply).
                self.passed.set(1);
                Ok(None)
            }
            _ => {
                self.drain_all(deadline)?;
                self.take_list(select, max_len, out)
            }
        }
    }

    /// Finds the message `select` picks in the list: (previous, message).
    pub(super) fn find(&self, select: Select) -> Result<Option<(u32, u32)>, Fault> {
        let mut best: Option<(u32, u32, i64)> = None;
        let (mut prev, mut cur) = (0u32, self.get(HEAD));
        for _ in 0..=self.q.chunks {
            if cur == 0 {
                return Ok(best.map(|(p, c, _)| (p, c)));
            }
            let t = self.mtype(cur)?;
            if select.mtype < 0 {
                if t <= -select.mtype && best.is_none_or(|(_, _, bt)| t < bt) {
                    best = Some((prev, cur, t));
                }
            } else if select.matches_first(t) {
                return Ok(Some((prev, cur)));
            }
            prev = cur;
            cur = self.link(cur, C_NEXT)?;
        }
        Err(corrupt())
    }

    /// Takes the selected message out of the list, if any; the unlinking store is the commit.
    pub(super) fn take_list(
        &self,
        select: Select,
        max_len: usize,
        out: &mut Out<'_>,
    ) -> Result<Option<(i64, usize)>, Fault> {
        let found = match self.find(select) {
            Ok(f) => f,
            Err(_) => {
                self.repair(false);
                self.find(select)?
            }
        };
        let Some((prev, msg)) = found else { return Ok(None) };
        let len = self.link(msg, C_LEN)? as usize;
        if len > max_len && !select.truncate {
            return Err(Fault::TooLarge { len, max: max_len });
        }
        let mtype = self.mtype(msg)?;
        let keep = len.min(max_len);
        let chunks = match self.read_message(msg, len, out.room(keep)) {
            Ok(r) => r,
            Err(e) => {
                self.repair(false);
                return Err(e);
            }
        };
        // Commit: unlink the message.
        let next = self.link(msg, C_NEXT)?;
        match self.chunk(prev, C_NEXT) {
            Some(p) => p.store(next, Ordering::Relaxed),
            None => self.put(HEAD, next),
        }
        if self.get(TAIL) == msg {
            self.put(TAIL, prev);
        }
        let (ln, lb) = self.get64(LISTW);
        self.put64(LISTW, ln.saturating_sub(1), lb.saturating_sub(len as u32));
        self.free_chunks(&chunks);
        self.received();
        Ok(Some((mtype, keep)))
    }

    /// Marks the chunks of a message chain in `seen`, if the chain is
    /// valid and overlaps nothing marked; returns how many it marked.
    pub(super) fn mark_chain(&self, msg: u32, max: usize, seen: &mut [bool]) -> Option<usize> {
        let n = self.q.chunks;
        if msg == 0 || msg as usize > n || seen[msg as usize] {
            return None;
        }
        let len = self.link(msg, C_LEN).ok()? as usize;
        if len > max {
            return None;
        }
        let mut chain = Vec::new();
        let mut c = self.link(msg, C_DATA).ok()?;
        for _ in 0..len.div_ceil(DATA) {
            if c == 0 || c as usize > n || seen[c as usize] || chain.contains(&c) || c == msg {
                return None;
            }
            chain.push(c);
            c = self.link(c, C_NEXT).ok()?;
        }
        seen[msg as usize] = true;
        for &c in &chain {
            seen[c as usize] = true;
        }
        Some(1 + chain.len())
    }

    /// Finishes or undoes what a dead receiver left half done in the ring,
    /// then rebuilds the list's bookkeeping from the committed list: what a
    /// dead lock holder (or a stray write) left half done is dropped, every
    /// message that was linked in survives whole, chunks referenced by
    /// neither the list nor a queued ring slot are freed. After a reboot
    /// (`reboot`), every slot a sender was filling is given up.
    pub(super) fn repair(&self, reboot: bool) {
        let ring = self.q.ring();
        let n = self.q.chunks;
        let max = self.get(MAXMSG) as usize;
        let (mut hpos, mut hbytes) = self.headw();
        let (tpos, _) = unpack(u64_at(self.q.map(), TAILW).load(Ordering::Acquire));
        let seq = |pos: u32| unpack(ring.word(pos).load(Ordering::Acquire)).0;
        // A drain that linked the head into the list but did not move the head.
        let ltail = self.get(TAIL);
        let drained = hpos != tpos
            && self.link(ltail, C_FROM).is_ok_and(|f| f == 1)
            && self.link(ltail, C_ORIG).is_ok_and(|o| o == hpos)
            && seq(hpos) == hpos.wrapping_add(1);
        if drained {
            hbytes = hbytes.wrapping_add(ring.len(hpos));
            hpos = hpos.wrapping_add(1);
            self.put64(HEADW, hpos, hbytes);
        }
        // The list.
        let mut seen = vec![false; n + 1];
        let (mut count, mut bytes, mut used, mut last) = (0u32, 0usize, 0usize, 0u32);
        let mut cur = self.get(HEAD);
        loop {
            if cur == 0 {
                break;
            }
            let len = self.link(cur, C_LEN).unwrap_or(u32::MAX) as usize;
            match self.mark_chain(cur, max, &mut seen) {
                Some(k) => {
                    count += 1;
                    bytes += len;
                    used += k;
                }
                None => {
                    match self.chunk(last, C_NEXT) {
                        Some(w) => w.store(0, Ordering::Relaxed),
                        None => self.put(HEAD, 0),
                    }
                    break;
                }
            }
            last = cur;
            cur = self.link(cur, C_NEXT).unwrap_or(0);
        }
        self.put(TAIL, last);
        self.put64(LISTW, count, bytes as u32);
        // The ring: slots being filled by the dead are given up.
        if tpos.wrapping_sub(hpos) <= self.q.slots {
            let mut pos = hpos;
            while pos != tpos {
                let (s, claim) = unpack(ring.word(pos).load(Ordering::Acquire));
                if reboot && s == pos && claim != 0 {
                    // Nobody is filling it any more: u32::MAX is never alive.
                    let _ = ring.word(pos).compare_exchange(
                        pack(pos, claim),
                        pack(pos, u32::MAX),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
                pos = pos.wrapping_add(1);
            }
            let (s, claim) = unpack(ring.word(tpos).load(Ordering::Acquire));
            if s == tpos && claim != 0 && (reboot || !sys::process_alive(claim)) {
                ring.claim(tpos, 0, claim);
            }
        }
        self.put(USED, used as u32);
        let bump = (self.get(BUMP) as usize).min(n);
        self.put(BUMP, bump as u32);
        self.put(FREE, 0);
        for i in (1..=bump).rev() {
            if !seen[i] {
                self.release(i as u32);
            }
        }
        self.changed();
    }
}

/// A message's chunks: its header, first and last data chunks (0 and the
/// header when it has none), and how many there are in all.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chain {
    pub(super) head: u32,
    pub(super) first: u32,
    pub(super) last: u32,
    pub(super) count: usize,
}

/// How many chunks ahead [`Guard::read_message`] fetches.
const LOOKAHEAD: usize = 8;

pub(super) fn corrupt() -> Fault {
    Fault::Frame(FrameError::BadHandles("the queue's message list is corrupted"))
}
