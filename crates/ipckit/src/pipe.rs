//! Anonymous pipes (`pipe(2)`): one-way byte streams with message framing.
//!
//! A pipe end is usually handed to a child process at spawn (see
//! [`crate::spawn`]). Reading returns [`RecvError::Disconnected`](crate::RecvError::Disconnected)
//! once every write end is closed (the kernel's end-of-file), and writing
//! returns `Disconnected` once every read end is closed (`EPIPE`).
//!
//! A bounded channel ([`Capacity::Bounded`]) needs a way back for credits, so
//! it uses a second pipe; each end then owns two descriptors.
//!
//! # Examples
//!
//! ```
//! use ipckit::{pipe, Capacity};
//! let (mut tx, mut rx) = pipe::channel(Capacity::Kernel)?;
//! tx.send("hello")?;
//! drop(tx);
//! assert_eq!(rx.recv()?.bytes(), b"hello");
//! assert!(rx.recv().unwrap_err().is_disconnected());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use crate::channel::{Capacity, Receiver, Sender};
use crate::connection::Connection;
use crate::error::Result;
use crate::link::{Mode, Reader, Writer, DEFAULT_MAX_MESSAGE};
use crate::sys;

/// Creates a one-way channel over a pipe (two pipes when `capacity` is bounded).
///
/// # Errors
///
/// [`crate::Error::Io`] when the kernel refuses (descriptor limit).
pub fn channel(capacity: Capacity) -> Result<(Sender, Receiver)> {
    channel_with_max(capacity, DEFAULT_MAX_MESSAGE)
}

/// As [`channel`], with a maximum message size in bytes.
///
/// # Errors
///
/// As [`channel`].
pub fn channel_with_max(capacity: Capacity, max: usize) -> Result<(Sender, Receiver)> {
    let (r, w) = sys::pipe()?;
    let (r, w) = (Arc::new(r), Arc::new(w));
    let (back_r, back_w) = match capacity {
        Capacity::Kernel => (None, None),
        Capacity::Bounded(_) => {
            let (br, bw) = sys::pipe()?;
            (
                Some(Reader::new(Arc::new(br), Mode::PIPE, max)),
                Some(Writer::new(Arc::new(bw), Mode::PIPE, max)),
            )
        }
    };
    let tx = Sender::new(Writer::new(w, Mode::PIPE, max), back_r, Some(capacity));
    let rx = Receiver::single(Reader::new(r, Mode::PIPE, max), back_w, capacity);
    Ok((tx, rx))
}

/// Creates a two-way [`Connection`] pair over two pipes (for RPC with a child
/// that has no socket).
///
/// # Errors
///
/// As [`channel`].
pub fn duplex() -> Result<(Connection, Connection)> {
    let (r1, w1) = sys::pipe()?;
    let (r2, w2) = sys::pipe()?;
    Ok((
        Connection::from_pipes(r1, w2, DEFAULT_MAX_MESSAGE),
        Connection::from_pipes(r2, w1, DEFAULT_MAX_MESSAGE),
    ))
}
