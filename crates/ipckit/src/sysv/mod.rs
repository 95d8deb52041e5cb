//! System V-style IPC in shared memory: typed message queues (and, next,
//! semaphore sets), faithful to `msgget`/`msgsnd`/`msgrcv`/`msgctl`.
//!
//! Unlike the kernel's objects these live in `/dev/shm` (`ipckit.<name>`),
//! so an uncontended operation is a few atomic instructions, not a system
//! call; they are found by name instead of a numeric key.

mod lock;
mod msgq;

pub use msgq::{Flush, MessageQueue, QueueConfig, QueueSet, QueueStat, Select};
