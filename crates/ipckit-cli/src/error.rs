//! The error a command fails with: a sentence saying what went wrong and why.

use std::fmt;

/// Why a command failed, as a message for the user.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Failure(msg.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
        self.map_err(|e| Failure(format!("{what}: {e}")))
    }
}

/// Returns early with a [`Failure`] built like `format!`.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::error::Failure::new(format!($($arg)*)))
    };
}
pub(crate) use fail;
