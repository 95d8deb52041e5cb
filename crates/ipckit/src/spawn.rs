//! Capability inheritance: hand IPC handles to a child process at spawn.
//!
//! The parent names the handles a child gets ([`Inherit::pass`]); at spawn,
//! every other descriptor the parent has (whoever opened it) is marked
//! close-on-exec in the child, so only stdin, stdout, stderr and the named
//! handles survive `exec`. The child finds its handles by name with
//! [`inherited`]. The table travels in the `IPCKIT_HANDLES` environment
//! variable and is only honoured by the direct child (it records the
//! parent's pid), so it cannot leak to grandchildren.
//!
//! # Examples
//!
//! ```no_run
//! use ipckit::{pipe, spawn, Capacity};
//! // Parent:
//! let (mut tx, rx) = pipe::channel(Capacity::Kernel)?;
//! let mut cmd = std::process::Command::new("/path/to/child");
//! let mut kit = spawn::Inherit::new();
//! kit.pass("jobs", rx)?;
//! let mut child = kit.spawn(&mut cmd)?;
//! tx.send("work")?;
//! // Child:
//! let mut rx: ipckit::Receiver = spawn::inherited("jobs")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::message::{Handle, Transferable};
use crate::sys;
use crate::wire::HandleMeta;

/// The environment variable that carries the inheritance table.
pub const ENV_VAR: &str = "IPCKIT_HANDLES";

/// The handles a child will inherit, by name.
#[derive(Debug, Default)]
pub struct Inherit {
    entries: Vec<(String, Handle)>,
}

impl Inherit {
    /// An empty set: a child spawned with it inherits no descriptor but stdio.
    pub fn new() -> Self {
        Inherit::default()
    }

    /// Hands `object` to the child under `name` (letters, digits, `_`, `-`, `.`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::AlreadyExists`] for a name used twice,
    /// or the object's [`Transferable::into_handle`] error.
    pub fn pass<T: Transferable>(&mut self, name: &str, object: T) -> Result<&mut Self> {
        check_name(name)?;
        if self.entries.iter().any(|(n, _)| n == name) {
            return Err(Error::AlreadyExists(name.to_owned()));
        }
        let mut handle = object.into_handle()?;
        // Descriptors 0-2 are the child's stdio: move a handle off them.
        for fd in &mut handle.fds {
            if fd.as_raw_fd() < 3 {
                *fd = sys::dup_at_least(fd.as_fd(), 3)?;
            }
        }
        self.entries.push((name.to_owned(), handle));
        Ok(self)
    }

    /// Prepares `cmd` (environment and descriptor hygiene) and spawns it. The
    /// parent's copies of the handed descriptors are closed once the child has them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the spawn fails.
    pub fn spawn(self, cmd: &mut Command) -> Result<Child> {
        let mut table = format!("{}", sys::pid());
        let mut keep = Vec::new();
        for (name, h) in &self.entries {
            let mut meta = Vec::new();
            h.meta.encode_into(&mut meta);
            let fds: Vec<String> = h.fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
            keep.extend(h.fds.iter().map(|f| f.as_raw_fd()));
            table.push_str(&format!(";{name}:{}:{}", hex(&meta), fds.join(",")));
        }
        cmd.env(ENV_VAR, table);
        sys::keep_only_across_exec(cmd, keep);
        let child = cmd.spawn()?;
        drop(self);
        Ok(child)
    }
}

/// Takes the handle named `name` that this process's parent passed at spawn.
/// Each name can be taken once.
///
/// # Errors
///
/// [`Error::NotFound`] when the parent passed no such handle (or it was
/// already taken), [`Error::BadHandle`] when it is malformed or of another kind.
pub fn inherited<T: Transferable>(name: &str) -> Result<T> {
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let (meta, fds) =
        table.remove(name).ok_or_else(|| Error::NotFound(format!("inherited handle {name:?}")))?;
    let fds = fds
        .into_iter()
        .map(sys::take_inherited_fd)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::BadHandle(format!("inherited descriptor for {name:?}: {e}")))?;
    T::from_handle(Handle { meta, fds })
}

/// The names of the inherited handles not yet taken.
pub fn inherited_names() -> Vec<String> {
    let table = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<String> = table.keys().cloned().collect();
    names.sort();
    names
}

type Table = HashMap<String, (HandleMeta, Vec<i32>)>;

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(parse_env()))
}

/// Reads the table from the environment, if it was written by our parent.
/// Every listed descriptor is sealed close-on-exec straight away.
fn parse_env() -> Table {
    let mut out = Table::new();
    let Ok(raw) = std::env::var(ENV_VAR) else { return out };
    let mut parts = raw.split(';');
    let parent: Option<u32> = parts.next().and_then(|p| p.parse().ok());
    if parent != Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)) {
        return out; // written for somebody else (we are a grandchild)
    }
    for entry in parts {
        let mut f = entry.splitn(3, ':');
        let (Some(name), Some(meta), Some(fds)) = (f.next(), f.next(), f.next()) else { continue };
        let fds: Vec<i32> = fds.split(',').filter_map(|s| s.parse().ok()).collect();
        fds.iter().for_each(|&fd| sys::seal_inherited_fd(fd));
        let Some(bytes) = unhex(meta) else { continue };
        let Ok((meta, used)) = HandleMeta::decode(&bytes) else { continue };
        if used != bytes.len() || meta.nfds as usize != fds.len() || check_name(name).is_err() {
            continue;
        }
        out.insert(name.to_owned(), (meta, fds));
    }
    out
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName { name: name.to_owned(), why: "use 1-64 letters, digits, '_', '-' or '.'" })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
