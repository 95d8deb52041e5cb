//! The acceptor thread of a receiver bound to a socket path.
//!
//! A sender that connects must learn the channel's capacity before its first
//! send, and the receiver may be busy (or not yet receiving) when it
//! connects. So a bound receiver keeps one small thread that accepts each
//! connection as it comes, greets it with `Hello(capacity)`, and hands it to
//! the receiver, waking the receiver's `poll` through a pipe. Senders can
//! therefore send (into the kernel's buffer) before the receiver ever calls
//! `recv`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::link::{Mode, Writer};
use crate::sys::{self, Deadline, PollEntry, Ready};
use crate::unix::Listener;
use crate::wire::Kind;

/// Connections accepted and greeted, waiting for the receiver to take them.
type Inbox = Arc<Mutex<Vec<OwnedFd>>>;

#[derive(Debug)]
pub(crate) struct Acceptor {
    inbox: Inbox,
    /// Readable when the inbox has something (the thread writes a byte).
    wake: OwnedFd,
    /// Dropping it tells the thread to stop (its end sees end-of-file).
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    mode: Mode,
    max: usize,
}

impl Acceptor {
    pub(crate) fn start(listener: Listener, capacity: u32) -> std::io::Result<Self> {
        let (wake_r, wake_w) = sys::pipe()?;
        let (stop_r, stop_w) = sys::pipe()?;
        let inbox: Inbox = Arc::default();
        let (mode, max) = (listener.mode(), listener.max_message_size());
        let shared = inbox.clone();
        let thread = std::thread::Builder::new()
            .name("ipckit-acceptor".into())
            .spawn(move || run(listener, capacity, shared, wake_w, stop_r))?;
        Ok(Acceptor { inbox, wake: wake_r, stop: Some(stop_w), thread: Some(thread), mode, max })
    }

    /// The descriptor to poll alongside the receiver's sources.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes every connection accepted so far.
    pub(crate) fn take(&self) -> Vec<OwnedFd> {
        let mut buf = [0u8; 64];
        while let Ok(sys::Xfer::Done(n)) = sys::read(self.wake.as_fd(), &mut buf, false) {
            if n == 0 {
                break;
            }
        }
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(listener: Listener, capacity: u32, inbox: Inbox, wake: OwnedFd, stop: OwnedFd) {
    loop {
        let (accept, quit) = {
            let mut fds =
                [PollEntry::new(&listener, Ready::IN), PollEntry::from_borrowed_fd(stop.as_fd(), Ready::IN)];
            if sys::wait_many(&mut fds, Deadline::Never).is_err() {
                return;
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if quit {
            return;
        }
        if !accept {
            continue;
        }
        let mut fresh = Vec::new();
        loop {
            match listener.accept_raw() {
                Ok(Some(fd)) => fresh.push(fd),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of descriptors, say: do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        let mut greeted = Vec::with_capacity(fresh.len());
        for fd in fresh {
            let fd = Arc::new(fd);
            let mut w = Writer::new(fd.clone(), listener.mode(), listener.max_message_size());
            // A fresh socket's buffer is empty: the greeting never has to wait.
            if w.send_control(Kind::Hello, u64::from(capacity), Deadline::Now).is_ok() {
                drop(w);
                if let Ok(fd) = Arc::try_unwrap(fd) {
                    greeted.push(fd);
                }
            }
        }
        if !greeted.is_empty() {
            inbox.lock().unwrap_or_else(|e| e.into_inner()).extend(greeted);
            let _ = sys::writev(wake.as_fd(), false, &[std::io::IoSlice::new(&[1])], false);
        }
    }
}
