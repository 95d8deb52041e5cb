//! The tour's scratch directory: `$TMPDIR/ipckit-tour-<pid>`, mode 0700,
//! removed at the end (or when the tour fails, on drop).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A private temporary directory, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    removed: bool,
}

impl Scratch {
    /// Creates `ipckit-tour-<pid>` in the system's temporary directory. A
    /// leftover of the same name (from a crashed tour whose pid was reused) is
    /// removed first.
    pub fn create() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!("ipckit-tour-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Scratch { path, removed: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it, reporting failure.
    pub fn remove(mut self) -> std::io::Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the scratch directory");
            }
        }
    }
}
