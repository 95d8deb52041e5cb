//! The error a command fails with: a sentence saying what went wrong and why.

use std::fmt;

/// Why a command failed, as a message for the user, and the exit code.
#[derive(Debug)]
pub struct Failure {
    msg: String,
    would_block: bool,
}

/// The exit code of a failure ([`Failure::new`]).
pub const EXIT_FAILURE: u8 = 1;
/// The exit code when an operation could not complete without waiting
/// (`--nowait`) or within its `--timeout` ([`Failure::would_block`]).
pub const EXIT_WOULD_BLOCK: u8 = 2;

impl Failure {
    /// A failure with this message (exit code [`EXIT_FAILURE`]).
    pub fn new(msg: impl Into<String>) -> Self {
        Failure { msg: msg.into(), would_block: false }
    }

    /// Not an error as such: the operation would have had to wait (with
    /// `--nowait`) or did not complete in time (with `--timeout`); exit code
    /// [`EXIT_WOULD_BLOCK`].
    pub fn would_block(msg: impl Into<String>) -> Self {
        Failure { msg: msg.into(), would_block: true }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        if self.would_block {
            EXIT_WOULD_BLOCK
        } else {
            EXIT_FAILURE
        }
    }

    /// Whether this is a [`Failure::would_block`].
    pub fn is_would_block(&self) -> bool {
        self.would_block
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Failure {}

/// The result of a command step.
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Adds what was being done to an error: `"opening the FIFO: not found"`.
pub trait Context<T> {
    /// Wraps the error as `"{what}: {error}"`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Failure::new(format!("{what}: {e}")))
    }
}

/// Returns early with a [`Failure`] built like `format!`.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::error::Failure::new(format!($($arg)*)))
    };
}
pub(crate) use fail;
