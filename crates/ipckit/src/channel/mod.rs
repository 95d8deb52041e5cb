//! One-way message channels: [`Sender`] and [`Receiver`].
//!
//! A channel carries [`Message`]s over any kernel transport (an anonymous
//! pipe, a FIFO, a UNIX stream or seqpacket socket). The transport modules
//! ([`crate::pipe`], [`crate::fifo`], [`crate::unix`]) only build the two ends;
//! everything here is shared.
//!
//! # Capacity
//!
//! - [`Capacity::Kernel`]: no flow control; `send` blocks only when the
//!   kernel's buffer (64 KiB for a pipe) is full.
//! - [`Capacity::Bounded(n)`](Capacity::Bounded), `n > 0`: at most `n`
//!   messages from one sender are in flight; the receiver returns credit as it
//!   takes them, and `send` blocks while none is left.
//! - [`Capacity::Bounded(0)`](Capacity::Bounded) (rendezvous): `send` offers the
//!   message and returns only when a receiver, blocked in `recv`, has asked
//!   for exactly this message and it has been written to that receiver. With
//!   several senders, the receiver serves their offers one at a time, so only
//!   one message is ever in flight per `recv`. A sender that times out
//!   withdraws its offer cleanly (its message was not sent). The one edge: if
//!   a receiver's own `recv` expires after it has asked for a message, that
//!   message is kept for its next `recv`.
//!
//! The protocol (see [`crate::wire`]): a receiver bound to a socket path
//! greets each sender with `Hello(capacity)` as soon as it connects (from
//! a small acceptor thread, so senders never wait for the receiver to be
//! receiving), the receiver returns `Credit(taken)` every
//! `max(1, n/2)` messages, and rendezvous uses `Offer(k)` / `Grant(k)` /
//! `Data(k)` / `Cancel(k)`.

mod acceptor;
mod receiver;
mod sender;
pub mod typed;

pub use receiver::Receiver;
pub use sender::Sender;

/// How many messages a channel holds before `send` blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// No ipckit flow control: the kernel's buffer decides when `send` blocks.
    #[default]
    Kernel,
    /// At most this many messages in flight per sender; `0` is a rendezvous
    /// channel (`send` returns once the receiver has asked for the message).
    Bounded(usize),
}

impl Capacity {
    /// A rendezvous channel: capacity 0.
    pub const RENDEZVOUS: Capacity = Capacity::Bounded(0);

    pub(crate) fn to_wire(self) -> u32 {
        match self {
            Capacity::Kernel => u32::MAX,
            Capacity::Bounded(n) => n.min(u32::MAX as usize - 1) as u32,
        }
    }

    pub(crate) fn from_wire(v: u64) -> Capacity {
        if v >= u64::from(u32::MAX) {
            Capacity::Kernel
        } else {
            Capacity::Bounded(v as usize)
        }
    }

    /// How many taken messages the receiver waits for before returning credit.
    pub(crate) fn credit_batch(n: usize) -> u64 {
        (n as u64 / 2).max(1)
    }
}
