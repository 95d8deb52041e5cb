//! Rendezvous (capacity 0) shared-memory channels: a `send` returns only
//! once a receiver has taken that very message, like
//! [`Capacity::RENDEZVOUS`](crate::Capacity::RENDEZVOUS) on pipes and sockets.
//!
//! The segment holds a table of [`OFFERS`] offer slots instead of a ring.
//! Each slot has a state word (a kind in the low 32 bits, a pid in the high
//! 32 bits), the pid of the sender that owns it, a length, a ticket and the
//! data on cache lines of their own:
//!
//! | kind | pid | meaning | next |
//! |---|---|---|---|
//! | `FREE` | 0 | unused | a sender claims it (`WRITING`) |
//! | `WRITING` | sender | the sender is copying its message in | `OFFERED` |
//! | `OFFERED` | sender | waiting for a receiver | a receiver takes it (`TAKING`), or the sender withdraws it (`FREE`) |
//! | `TAKING` | receiver | a receiver is copying it out | `TAKEN` |
//! | `TAKEN` | sender | delivered; the sender's `send` returns `Ok` | the sender frees it |
//!
//! The single compare-and-swap `OFFERED -> TAKING` decides between a
//! receiver taking a message and its sender withdrawing it on timeout: a
//! withdrawn message is never delivered, and a message a receiver started
//! to take is waited for (a moment: the receiver is copying it, or is dead
//! and its claim is undone) and reported as sent. Receivers serve the
//! offer with the lowest ticket first, so waiting senders are served in
//! the order they offered.
//!
//! Deaths: a slot whose owner (sender) is dead is freed, whatever its
//! state (a dead sender's `send` never returned, so its message may or may
//! not have been delivered); a `TAKING` slot whose receiver is dead goes
//! back to `OFFERED`, so its sender's message is delivered to another
//! receiver or withdrawn. Both repairs run on the periodic check of a
//! waiting side, only after [`crate::sys::process_alive`] says the pid is
//! dead. A sender whose receivers are all gone (or a receiver whose senders
//! are all gone) gets `Disconnected` within about [`LIVENESS_CHECK`].
//!
//! [`LIVENESS_CHECK`]: super::wait::LIVENESS_CHECK

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::channel::{Ring, CONSUMERS, PRODUCERS};
use super::wait::{wait_event, Attempt, LIVENESS_CHECK};
use crate::error::{Fault, FrameError};
use crate::sys::{self, Deadline};

/// How many senders can have a message on offer at once (more wait for a slot).
pub(crate) const OFFERS: usize = 32;
/// An offer slot's header: state, owner, length and ticket, one cache line.
pub(crate) const OFFER_HEADER: usize = 64;

/// How long a sender whose time is up waits for a receiver that already
/// started taking its message (copying it, or dead and about to be undone).
const TAKE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

const FREE: u32 = 0;
const WRITING: u32 = 1;
const OFFERED: u32 = 2;
const TAKING: u32 = 3;
const TAKEN: u32 = 4;

fn word(kind: u32, pid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(kind)
}

fn kind(w: u64) -> u32 {
    w as u32
}

fn pid_of(w: u64) -> u32 {
    (w >> 32) as u32
}

/// One offer slot of a rendezvous ring.
struct Offer<'a> {
    ring: &'a Ring,
    at: usize,
}

impl Offer<'_> {
    fn state(&self) -> &AtomicU64 {
        self.ring.map.u64_at(self.at).expect("offer slot inside the validated mapping")
    }
    fn owner(&self) -> &AtomicU32 {
        self.ring.map.u32_at(self.at + 8).expect("offer slot inside the validated mapping")
    }
    fn len(&self) -> &AtomicU32 {
        self.ring.map.u32_at(self.at + 12).expect("offer slot inside the validated mapping")
    }
    fn ticket(&self) -> &AtomicU64 {
        self.ring.map.u64_at(self.at + 16).expect("offer slot inside the validated mapping")
    }
}

fn offer(ring: &Ring, i: usize) -> Offer<'_> {
    Offer { ring, at: ring.slot(i) }
}

fn corrupt(why: &str) -> Fault {
    super::channel::corrupt(why)
}

/// Frees the slots of dead senders and undoes the claims of dead receivers.
fn repair(ring: &Ring) -> Result<(), Fault> {
    for i in 0..ring.slots as usize {
        let o = offer(ring, i);
        let w = o.state().load(Ordering::Acquire);
        let (k, pid) = (kind(w), pid_of(w));
        match k {
            FREE => {}
            WRITING | OFFERED | TAKEN => {
                if !sys::process_alive(pid) {
                    let _ = o.state().compare_exchange(w, word(FREE, 0), Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            TAKING => {
                if !sys::process_alive(pid) {
                    let owner = o.owner().load(Ordering::Acquire);
                    let back = if owner != 0 && sys::process_alive(owner) {
                        word(OFFERED, owner)
                    } else {
                        word(FREE, 0)
                    };
                    if o.state().compare_exchange(w, back, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        ring.not_empty().notify();
                    }
                }
            }
            _ => return Err(corrupt("offer slot state word of unknown kind")),
        }
    }
    Ok(())
}

/// Sends `data` through a rendezvous ring: returns `Ok` once a receiver
/// took it; on timeout the offer is withdrawn (never delivered).
pub(super) fn send(ring: &Ring, data: &[u8], mode: super::WaitMode, deadline: Deadline) -> Result<(), Fault> {
    let me = sys::pid();
    let mut last_check = std::time::Instant::now();
    // `try_send`: only when a receiver is waiting; give it a moment to take the offer.
    let deadline = match deadline {
        Deadline::Now if ring.receiving().load(Ordering::Acquire) == 0 => return Err(Fault::Timeout),
        Deadline::Now => Deadline::after(LIVENESS_CHECK),
        d => d,
    };
    // 1. Claim a free slot.
    let slot = wait_event(ring.not_full(), mode, deadline, &mut last_check, |check| {
        if check {
            if let Err(e) = repair(ring) {
                return Attempt::Ready(Err(e));
            }
        }
        if ring.gone(CONSUMERS, check) {
            return Attempt::Ready(Err(Fault::Disconnected));
        }
        for i in 0..ring.slots as usize {
            let o = offer(ring, i);
            let w = o.state().load(Ordering::Relaxed);
            if kind(w) == FREE
                && o.state()
                    .compare_exchange(w, word(WRITING, me), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Attempt::Ready(Ok(i));
            }
        }
        Attempt::Wait
    })?;
    // 2. Fill it and offer it.
    let o = offer(ring, slot);
    o.owner().store(me, Ordering::Relaxed);
    o.len().store(data.len() as u32, Ordering::Relaxed);
    let ok = ring.map.write(o.at + OFFER_HEADER, data);
    debug_assert!(ok, "length checked against the maximum");
    o.ticket().store(ring.ticket().fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    o.state().store(word(OFFERED, me), Ordering::Release);
    ring.not_empty().notify();
    // 3. Wait until a receiver took it, or withdraw it.
    let offered = word(OFFERED, me);
    let withdraw = || o.state().compare_exchange(offered, word(FREE, 0), Ordering::AcqRel, Ordering::Acquire);
    let mut wait_deadline = deadline;
    let mut finishing = false;
    loop {
        let r = wait_event(ring.not_full(), mode, wait_deadline, &mut last_check, |check| {
            let w = o.state().load(Ordering::Acquire);
            match kind(w) {
                TAKEN => return Attempt::Ready(Ok(())),
                OFFERED | TAKING => {}
                // Freed by someone who believed us dead (a reused pid), or scribbled on.
                _ => return Attempt::Ready(Err(corrupt("offer slot changed under its sender"))),
            }
            if check {
                if kind(w) == TAKING && !sys::process_alive(pid_of(w)) {
                    // Its receiver died while copying: offer it again.
                    if o.state().compare_exchange(w, offered, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                        ring.not_empty().notify();
                    }
                    return Attempt::Busy;
                }
                if kind(w) == OFFERED && ring.gone(CONSUMERS, true) {
                    return Attempt::Ready(Err(Fault::Disconnected));
                }
            }
            Attempt::Wait
        });
        match r {
            Ok(()) => break,
            Err(f @ (Fault::Timeout | Fault::Disconnected)) => match withdraw() {
                Ok(_) => {
                    ring.not_full().notify();
                    return Err(f);
                }
                // A receiver is taking it right now: it will be delivered;
                // wait for the receiver to finish (or to be found dead), but
                // not for ever (a stopped receiver, or a forged word).
                Err(w) if (kind(w) == TAKING || kind(w) == TAKEN) && !finishing => {
                    finishing = true;
                    wait_deadline = Deadline::after(TAKE_GRACE);
                }
                Err(w) if kind(w) == TAKING => {
                    return Err(Fault::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a receiver started taking the message and did not finish: it may have been delivered",
                    )));
                }
                Err(w) if kind(w) == TAKEN => {}
                Err(_) => return Err(corrupt("offer slot changed under its sender")),
            },
            Err(e) => return Err(e),
        }
    }
    // 4. Delivered: free the slot for the next sender.
    o.state().store(word(FREE, 0), Ordering::Release);
    ring.not_full().notify();
    Ok(())
}

/// Counts this receiver as waiting while it lives (what `try_send` looks at).
struct Receiving<'a>(&'a AtomicU32);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(1)));
    }
}

/// Receives the message offered first into `out`.
pub(super) fn recv(
    ring: &Ring,
    out: &mut Vec<u8>,
    mode: super::WaitMode,
    deadline: Deadline,
    last_check: &mut std::time::Instant,
) -> Result<(), Fault> {
    let me = sys::pid();
    let _receiving = if matches!(deadline, Deadline::Now) {
        None
    } else {
        ring.receiving().fetch_add(1, Ordering::AcqRel);
        ring.not_full().notify();
        Some(Receiving(ring.receiving()))
    };
    wait_event(ring.not_empty(), mode, deadline, last_check, |check| {
        if check {
            if let Err(e) = repair(ring) {
                return Attempt::Ready(Err(e));
            }
        }
        match take(ring, me, out) {
            Some(r) => Attempt::Ready(r),
            None if ring.gone(PRODUCERS, check) => {
                // A last offer made just before its sender left is still taken.
                match take(ring, me, out) {
                    Some(r) => Attempt::Ready(r),
                    None => Attempt::Ready(Err(Fault::Disconnected)),
                }
            }
            None => Attempt::Wait,
        }
    })
}

/// Takes the offer with the lowest ticket, if there is one; `None` when
/// nothing is offered (or another receiver won every race).
fn take(ring: &Ring, me: u32, out: &mut Vec<u8>) -> Option<Result<(), Fault>> {
    // Bounded: a word that keeps changing under us ends the attempt.
    for _ in 0..1000 {
        let mut best: Option<(usize, u64, u64)> = None;
        for i in 0..ring.slots as usize {
            let o = offer(ring, i);
            let w = o.state().load(Ordering::Acquire);
            match kind(w) {
                OFFERED => {
                    let t = o.ticket().load(Ordering::Relaxed);
                    if best.is_none_or(|(_, _, bt)| (t.wrapping_sub(bt) as i64) < 0) {
                        best = Some((i, w, t));
                    }
                }
                FREE | WRITING | TAKING | TAKEN => {}
                _ => return Some(Err(corrupt("offer slot state word of unknown kind"))),
            }
        }
        let (i, w, _) = best?;
        let o = offer(ring, i);
        if o.state().compare_exchange(w, word(TAKING, me), Ordering::AcqRel, Ordering::Relaxed).is_err() {
            continue; // withdrawn, or another receiver took it: look again
        }
        let owner = pid_of(w);
        let len = o.len().load(Ordering::Relaxed) as usize;
        let r = if len > ring.max {
            Err(Fault::Frame(FrameError::TooLarge { len, max: ring.max }))
        } else {
            out.resize(len, 0);
            let ok = ring.map.read(o.at + OFFER_HEADER, out);
            debug_assert!(ok, "length checked against the maximum");
            Ok(())
        };
        o.state().store(word(TAKEN, owner), Ordering::Release);
        ring.not_full().notify();
        return Some(r);
    }
    None
}

/// How many messages are on offer now (a snapshot).
pub(super) fn offered(ring: &Ring) -> usize {
    (0..ring.slots as usize)
        .filter(|&i| kind(offer(ring, i).state().load(Ordering::Relaxed)) == OFFERED)
        .count()
}
