//! Being told when another process exits, without polling.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::{self, Deadline, Interest};

/// Watches a process: [`ProcessWatch::wait`] returns once it has exited
/// (SIGKILL included). Backed by a `pidfd` (Linux 5.3+), which names the
/// process itself, not a pid number that could be reused. The descriptor
/// is readable when the process is gone, so it can be polled alongside
/// messages.
#[derive(Debug)]
pub struct ProcessWatch {
    pid: u32,
    fd: OwnedFd,
}

impl ProcessWatch {
    /// `pidfd_open(2)`: watches process `pid`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such process exists.
    pub fn new(pid: u32) -> Result<ProcessWatch> {
        let p = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| Error::NotFound(format!("process {pid}")))?;
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            .map_err(|e| Error::io(format!("process {pid}"), e.into()))?;
        Ok(ProcessWatch { pid, fd })
    }

    /// Watches this process's parent. If the parent is already gone (this
    /// process was re-parented), the watch is already ready.
    ///
    /// # Errors
    ///
    /// As [`ProcessWatch::new`].
    pub fn parent() -> Result<ProcessWatch> {
        let ppid = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get() as u32);
        let w = ProcessWatch::new(ppid)?;
        // The parent may have died between getppid and pidfd_open (and we
        // were re-parented to another process): then we watched the wrong one.
        let now = rustix::process::getppid().map_or(1, |p| p.as_raw_nonzero().get() as u32);
        if now != ppid {
            return Err(Error::NotFound(format!("parent {ppid} already exited")));
        }
        Ok(w)
    }

    /// The process watched.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn wait_inner(&self, deadline: Deadline) -> Result<bool> {
        Ok(sys::wait(self.fd.as_fd(), Interest::Read, deadline)?)
    }

    /// Waits until the process has exited.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if waiting fails.
    pub fn wait(&self) -> Result<()> {
        self.wait_inner(Deadline::Never).map(|_| ())
    }

    /// Whether the process has exited.
    ///
    /// # Errors
    ///
    /// As [`ProcessWatch::wait`].
    pub fn try_wait(&self) -> Result<bool> {
        self.wait_inner(Deadline::Now)
    }

    /// Waits at most `timeout`; `Ok(true)` when the process has exited.
    ///
    /// # Errors
    ///
    /// As [`ProcessWatch::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_inner(Deadline::after(timeout))
    }

    /// Waits until `deadline` at the latest; `Ok(true)` when the process has exited.
    ///
    /// # Errors
    ///
    /// As [`ProcessWatch::wait`].
    pub fn wait_deadline(&self, deadline: Instant) -> Result<bool> {
        self.wait_inner(Deadline::At(deadline))
    }
}

impl AsFd for ProcessWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `prctl(PR_SET_PDEATHSIG)`: the kernel sends this process `signal` when
/// its parent (thread) exits. Call it early in a child; if the parent is
/// already gone when it is set, the signal is sent at once.
///
/// # Errors
///
/// [`Error::Io`] for an invalid signal number.
pub fn die_with_parent(signal: i32) -> Result<()> {
    let sig = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad signal")))?;
    let parent = rustix::process::getppid();
    rustix::process::set_parent_process_death_signal(Some(sig)).map_err(|e| Error::Io(e.into()))?;
    if rustix::process::getppid() != parent {
        crate::signal::send(sys::pid(), signal)?;
    }
    Ok(())
}
