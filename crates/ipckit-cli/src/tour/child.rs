//! Tour children: this binary re-executed with a hidden role, waited for with
//! a timeout, and always reaped (killed first if still running when dropped).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipckit::spawn::Inherit;

use crate::error::{fail, Context, Result};

/// How often a wait with a timeout looks at the child.
const POLL: Duration = Duration::from_millis(2);

/// A running tour child. Dropping it kills and reaps the process if it is
/// still there, so a failing tour leaves neither orphans nor zombies.
#[derive(Debug)]
pub struct TourChild {
    role: &'static str,
    child: std::process::Child,
    started: Instant,
    status: Option<ExitStatus>,
}

impl TourChild {
    /// Spawns `ipckit __tour-child <args>` playing `role`, handing it exactly
    /// the handles in `kit` (plus stdin from /dev/null, and the tour's stdout
    /// and stderr); every other descriptor of the tour stays behind.
    pub fn spawn(role: &'static str, args: &[&std::ffi::OsStr], kit: Inherit) -> Result<Self> {
        TourChild::spawn_with(role, args, kit, |_| {})
    }

    /// As [`TourChild::spawn`], letting `setup` adjust the command first
    /// (another uid, a process group).
    pub fn spawn_with(
        role: &'static str,
        args: &[&std::ffi::OsStr],
        kit: Inherit,
        setup: impl FnOnce(&mut Command),
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this program's own path")?;
        let mut cmd = Command::new(exe);
        cmd.arg("__tour-child").args(args).stdin(Stdio::null());
        setup(&mut cmd);
        let started = Instant::now();
        let child = kit.spawn(&mut cmd).context(format!("spawning the {role} child"))?;
        tracing::debug!(role, pid = child.id(), "spawned a tour child");
        Ok(TourChild { role, child, started, status: None })
    }

    /// The part the child plays.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's exit status if it has exited (reaping it), `None` if it runs.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context(format!("checking on the {} child", self.role))?;
        }
        Ok(self.status)
    }

    /// Waits at most `timeout` for the child to exit and reaps it; returns how
    /// long it lived. A child that exits with a failure, or does not exit in
    /// time (it is then killed), is an error.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                if !status.success() {
                    fail!("the {} child (pid {}) {}", self.role, self.pid(), describe(status));
                }
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                fail!(
                    "the {} child (pid {}) did not finish within {timeout:?}; killed it",
                    self.role,
                    self.pid()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits at most `timeout` for the child to exit, however it ends, and
    /// reaps it; a child still running then is killed and that is an error.
    pub fn wait_status(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                fail!(
                    "the {} child (pid {}) did not end within {timeout:?}; killed it",
                    self.role,
                    self.pid()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills the child (`SIGKILL`) unless it already exited, and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        self.child.kill().context(format!("killing the {} child", self.role))?;
        let status = self.child.wait().context(format!("reaping the {} child", self.role))?;
        self.status = Some(status);
        tracing::debug!(role = self.role, pid = self.pid(), %status, "killed and reaped a tour child");
        Ok(status)
    }
}

impl Drop for TourChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Err(e) = self.kill() {
                tracing::warn!(role = self.role, error = %e, "could not kill a tour child");
            }
        }
    }
}

/// "exited with status 1", "was killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {sig}{name}")
        }
        _ => format!("ended: {status}"),
    }
}
