//! Events and death notification: waiting for something to happen in
//! another process.
//!
//! - [`Event`]: a named cross-process event in shared memory, with
//!   `notify_one`, `notify_all` and the four `wait` forms; auto-reset,
//!   manual-reset and counting modes. Notifying makes no system call when
//!   nobody waits.
//! - [`ProcessWatch`]: told when another process exits (a `pidfd`), also a
//!   parent ([`ProcessWatch::parent`]); pollable alongside messages (`AsFd`).

mod death;
mod shared;

pub use death::{die_with_parent, ProcessWatch};
pub use shared::{Event, EventMode};
