//! # ipckit: interprocess communication for Rust
//!
//! Every classic Unix IPC mechanism behind one message API. This crate
//! currently provides the foundation layer:
//!
//! | module | what |
//! |---|---|
//! | [`pipe`] | anonymous pipes with message framing, handed to children |
//! | [`fifo`] | named pipes created at a path with a mode |
//! | [`unix`] | UNIX domain sockets (stream and seqpacket), peer credentials, descriptor passing |
//! | [`rpc`] | `call`/`reply` with timeouts over any two-way [`Connection`] |
//! | [`spawn`] | hand exactly the named handles to a child process |
//! | [`shm`] | named shared-memory segments, checked offsets, two-slot RPC |
//! | [`event`] | cross-process events (auto/manual/counting), process death watches |
//! | [`signal`] | signals handled on a normal thread, ignore/default, kill/tgkill/sigqueue with sender pid and uid |
//! | [`perm`] | System V-style owner/group/mode checks |
//! | [`naming`] | the naming server: register, look up (permission-checked), watch, mailboxes |
//! | [`sysv`] | System V-style typed message queues in shared memory |
//!
//! One message API everywhere: [`Sender`]/[`Receiver`] (one-way, with a
//! [`Capacity`]: kernel-buffered, bounded, or rendezvous), [`Connection`]
//! (two-way), typed wrappers ([`TypedSender`], [`TypedReceiver`]), and every
//! blocking operation in four forms (`op`, `try_op`, `op_timeout`,
//! `op_deadline`), each with its own error type.
//!
//! # Layers
//!
//! `sys` (every system call, over rustix) → `wire` (frame format, checked
//! decoding) → `link` (framed I/O with deadlines) → [`Sender`]/[`Receiver`]/
//! [`Connection`] → [`rpc`]. The transport modules only construct ends.
//!
//! # Safety
//!
//! `unsafe` code lives only in `sys::raw` (a `close_range` call and the
//! descriptor hygiene between `fork` and `exec` that rustix does not cover),
//! each block with its reasoning.

#![deny(unsafe_code)]
#![warn(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod forms;
#[cfg(feature = "tokio")]
pub mod aio;
mod channel;
mod connection;
pub mod endpoint;
mod error;
pub mod event;
pub mod fifo;
mod link;
mod message;
pub mod naming;
pub mod perm;
pub mod pipe;
pub mod rpc;
pub mod shm;
pub mod signal;
pub mod spawn;
mod sys;
pub mod sysv;
pub mod unix;
mod wire;

pub use channel::typed::{TypedReceiver, TypedSender};
pub use channel::{Capacity, Receiver, Sender};
pub use connection::Connection;
pub use error::{
    CallError, Error, FrameError, RecvError, RecvTimeoutError, ReplyError, Result, SendError,
    SendTimeoutError, TryRecvError, TrySendError,
};
pub use link::DEFAULT_MAX_MESSAGE;
pub use message::{Handle, Message, Transferable};
pub use sys::{PeerCred, SocketKind, MAX_FDS_PER_MESSAGE};
pub use wire::HandleKind;

pub use sys::{egid, euid, pid};
