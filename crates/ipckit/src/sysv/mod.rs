//! System V-style IPC in shared memory, faithful to the kernel's objects:
//!
//! - [`MessageQueue`] (`msgq.rs`): typed message queues with the semantics of
//!   `msgget`/`msgsnd`/`msgrcv`/`msgctl`;
//! - [`SemaphoreSet`] (`sem.rs`): semaphore sets with the semantics of
//!   `semget`/`semop`/`semctl`, undo of a dead process's adjustments included.
//!
//! Both share a robust lock (`lock.rs`) whose holder's death is detected, so
//! a process killed in the middle of an operation never wedges the others,
//! and a short adaptive spin before sleeping (`lock.rs`, only with more than
//! one CPU online). A queue's senders do not take the lock for texts of up
//! to 104 bytes: they append to a lock-free ring in the queue's segment
//! (`msgq/ring.rs`), which receivers take from or drain into the locked
//! list (`msgq.rs`).
//!
//! A semaphore's single operation without undo (P or V) does not take the
//! lock either: it is one compare-and-swap on the semaphore's value word
//! (`sem.rs`). A waiter confined to one CPU, or whose spinning has not paid
//! lately (or, for queues, whose peer last waited on its CPU), yields it
//! before sleeping (`lock.rs`), so a partner on the same CPU answers without
//! a futex call.
//!
//! Unlike the kernel's objects these live in `/dev/shm` (`ipckit.<name>`),
//! so an uncontended operation is a few atomic instructions, not a system
//! call; they are found by name instead of a numeric key.

mod lock;
mod msgq;
mod sem;

pub use msgq::{Flush, MessageQueue, QueueConfig, QueueSet, QueueStat, Select};
pub use sem::{
    SemChange, SemError, SemOp, SemStat, SemaphoreSet, WaitCounts, SEM_COUNT_MAX, SEM_OPS_MAX,
    SEM_UNDO_RECORDS, SEM_VALUE_MAX,
};
