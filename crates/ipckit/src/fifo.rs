//! Named pipes (FIFOs, `mkfifo(3)`): a pipe with a name in the filesystem.
//!
//! Opening follows the kernel: [`open_receiver`] blocks until some process
//! opens the FIFO for writing, and [`open_sender`] until some process opens
//! it for reading. The `_timeout` forms give up after a while. Once open, the
//! ends are an ordinary [`Sender`] and [`Receiver`] with [`Capacity::Kernel`].
//!
//! Several processes may write to one FIFO; the kernel keeps writes of up to
//! `PIPE_BUF` (4096) bytes whole, so with several writers keep messages under
//! 4080 bytes (the frame header takes 16) or frames may interleave, which the
//! reader reports as a bad frame.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::{Capacity, Receiver, Sender};
use crate::error::{Error, Result};
use crate::link::{Mode, Reader, Writer, DEFAULT_MAX_MESSAGE};
use crate::sys::{self, Deadline};

/// `mkfifo(3)`: creates a FIFO at `path` with permission bits `mode` (e.g. `0o600`).
///
/// # Errors
///
/// [`Error::AlreadyExists`], [`Error::NotFound`] (no such directory),
/// [`Error::PermissionDenied`], or [`Error::Io`].
pub fn create(path: impl AsRef<Path>, mode: u32) -> Result<()> {
    let path = path.as_ref();
    sys::mkfifo(path, mode & 0o7777).map_err(|e| Error::io(path.display(), e))
}

/// Removes the FIFO at `path` (processes that have it open keep using it).
///
/// # Errors
///
/// [`Error::NotFound`], [`Error::InvalidName`] when `path` is not a FIFO, or [`Error::Io`].
pub fn remove(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    check_fifo(path)?;
    std::fs::remove_file(path).map_err(|e| Error::io(path.display(), e))
}

/// Opens the FIFO for writing, blocking until a reader has it open.
///
/// # Errors
///
/// [`Error::NotFound`], [`Error::InvalidName`] (not a FIFO), [`Error::PermissionDenied`].
pub fn open_sender(path: impl AsRef<Path>) -> Result<Sender> {
    open_sender_inner(path.as_ref(), Deadline::Never)
}

/// Opens the FIFO for writing, waiting at most `timeout` for a reader.
///
/// # Errors
///
/// [`Error::Timeout`] when no reader came, otherwise as [`open_sender`].
pub fn open_sender_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Sender> {
    open_sender_inner(path.as_ref(), Deadline::after(timeout))
}

/// Opens the FIFO for reading, blocking until a writer has it open.
///
/// # Errors
///
/// As [`open_sender`].
pub fn open_receiver(path: impl AsRef<Path>) -> Result<Receiver> {
    open_receiver_inner(path.as_ref(), Deadline::Never)
}

/// Opens the FIFO for reading, waiting at most `timeout` for a writer.
///
/// # Errors
///
/// [`Error::Timeout`] when no writer came, otherwise as [`open_sender`].
pub fn open_receiver_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Receiver> {
    open_receiver_inner(path.as_ref(), Deadline::after(timeout))
}

fn check_fifo(path: &Path) -> Result<()> {
    match sys::is_fifo(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::InvalidName { name: path.display().to_string(), why: "not a FIFO" }),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

fn open_sender_inner(path: &Path, deadline: Deadline) -> Result<Sender> {
    check_fifo(path)?;
    let fd = if deadline == Deadline::Never {
        sys::open_fifo(path, true, false).map_err(|e| Error::io(path.display(), e))?
    } else {
        // A non-blocking open for writing fails with ENXIO while no reader
        // has the FIFO open: retry with a short back-off until the deadline.
        let mut pause = Duration::from_micros(200);
        loop {
            match sys::open_fifo(path, true, true) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                    if deadline.expired() {
                        return Err(Error::Timeout);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::io(path.display(), e)),
            }
        }
    };
    // A FIFO does not take RWF_NOWAIT: it stays non-blocking and waits in poll(2).
    sys::set_nonblocking(&fd, true)?;
    sys::grow_pipe(std::os::fd::AsFd::as_fd(&fd));
    Ok(Sender::new(Writer::new(Arc::new(fd), Mode::PIPE, DEFAULT_MAX_MESSAGE), None, Some(Capacity::Kernel)))
}

fn open_receiver_inner(path: &Path, deadline: Deadline) -> Result<Receiver> {
    check_fifo(path)?;
    let fd = match deadline {
        Deadline::Never => sys::open_fifo(path, false, false).map_err(|e| Error::io(path.display(), e))?,
        _ => open_reader_deadline(path, deadline)?,
    };
    // A FIFO does not take RWF_NOWAIT: it stays non-blocking and waits in poll(2).
    sys::set_nonblocking(&fd, true)?;
    let reader = Reader::new(Arc::new(fd), Mode::PIPE, DEFAULT_MAX_MESSAGE);
    Ok(Receiver::single(reader, None, Capacity::Kernel))
}

/// A blocking open for reading cannot be given a timeout, so it runs on a
/// helper thread; on timeout this process briefly opens the FIFO for writing
/// itself, which completes the helper's open, and both ends are closed.
fn open_reader_deadline(path: &Path, deadline: Deadline) -> Result<std::os::fd::OwnedFd> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(sys::open_fifo(&owned, false, false));
    });
    let wait = match deadline {
        Deadline::At(at) => at.saturating_duration_since(std::time::Instant::now()),
        _ => Duration::ZERO,
    };
    if let Ok(r) = rx.recv_timeout(wait) {
        return r.map_err(|e| Error::io(path.display(), e));
    }
    // Time is up: release the helper.
    let unblock = sys::open_fifo(path, true, true);
    let got = rx.recv_timeout(Duration::from_secs(5));
    drop(unblock);
    match got {
        Ok(Ok(fd)) => {
            // A real writer may have arrived at the same moment: keep the end
            // only if one has already written (our own opener never writes).
            // A missing hang-up proves nothing: a child that another thread
            // is spawning holds a copy of our opener until it execs.
            if has_data(&fd) {
                Ok(fd)
            } else {
                Err(Error::Timeout)
            }
        }
        _ => Err(Error::Timeout),
    }
}

fn has_data(fd: &std::os::fd::OwnedFd) -> bool {
    let mut fds = [sys::PollEntry::new(fd, sys::Ready::IN)];
    match sys::wait_many(&mut fds, Deadline::Now) {
        Ok(n) if n > 0 => fds[0].revents().contains(sys::Ready::IN),
        _ => false,
    }
}
