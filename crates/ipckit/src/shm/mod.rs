//! Shared memory: named segments, and message passing through them.
//!
//! - [`Segment`]: a named POSIX shared-memory object, created with an owner
//!   and mode, opened with both the kernel's and ipckit's permission checks,
//!   handed to children and over sockets like any handle.
//! - [`Offset`]: how data in a segment refers to data (never by pointer:
//!   each process maps the segment at its own address); checked against the
//!   segment's bounds on every use.
//! - [`rpc`]: the chapter's two-slot RPC: one request slot, one reply slot,
//!   a status word in each header.
//! - [`channel`]: message channels over a segment: MPMC and SPSC rings of
//!   slots, and rendezvous (capacity 0) channels.
//! - [`ring_rpc`]: RPC over those rings: one server, many clients, each
//!   client with its own reply ring.
//!
//! Private parts: `wait` (spin / spin-then-block / block waiting on futex
//! words, shared by `rpc` and `channel`) and `ring` (the lock-free ring
//! algorithm, generic over its memory so a `loom` model runs the same code;
//! public but hidden only for that model), and `rendezvous` (the offer
//! table of capacity-0 channels).
//! - [`pubsub`]: one publisher, many subscribers, each sees every message;
//!   history for late joiners; a slow subscriber blocks the publisher or
//!   loses its oldest messages, as the publisher chooses.
//! - [`ShmTypedSender`] / [`ShmTypedReceiver`]: serde values (postcard)
//!   over a [`channel`]'s ends.
//! - [`LoanPool`]: zero-copy loans: fill a buffer in shared memory, send a
//!   12-byte [`Token`] over any channel, read the buffer in place.
//!
//! Everything read from a segment is input from a stranger: lengths, offsets
//! and state words are validated, and a bad one is [`Error::Corrupted`](crate::Error::Corrupted).

pub mod channel;
mod pool;
pub mod pubsub;
mod rendezvous;
#[doc(hidden)]
pub mod ring;
pub mod ring_rpc;
pub mod rpc;
mod segment;
mod typed;
mod wait;

use std::marker::PhantomData;

pub use pool::{Loan, LoanMut, LoanPool, Token};
pub use segment::{Segment, SegmentKind, HEADER_LEN, MAX_SEGMENT, PREFIX};
pub use typed::{ShmTypedReceiver, ShmTypedSender};
pub use wait::{WaitMode, LIVENESS_CHECK};

/// A byte offset into a segment's user area, typed by what lives there.
///
/// An offset is only a number: it is checked against the segment's bounds
/// (and alignment) every time it is used, so one read from shared memory,
/// where a peer may have written anything, can be used without risk.
pub struct Offset<T: ?Sized> {
    raw: usize,
    _t: PhantomData<fn() -> *const T>,
}

impl<T: ?Sized> Offset<T> {
    /// An offset of `raw` bytes from the start of the user area.
    pub const fn new(raw: usize) -> Self {
        Offset { raw, _t: PhantomData }
    }

    /// The number of bytes.
    pub const fn get(self) -> usize {
        self.raw
    }

    /// This offset plus `n` bytes, as an offset to something else
    /// (`None` on overflow).
    pub fn offset_by<U: ?Sized>(self, n: usize) -> Option<Offset<U>> {
        self.raw.checked_add(n).map(Offset::new)
    }
}

impl<T: ?Sized> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Offset<T> {}

impl<T: ?Sized> std::fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Offset({})", self.raw)
    }
}

impl<T: ?Sized> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T: ?Sized> Eq for Offset<T> {}
