//! The naming server: services register names, clients look them up and get
//! a connection, after a permission check on their kernel credentials.
//!
//! - A service [`register`](NameClient::register)s a name with a [`Policy`];
//!   the name is its connection's, released the moment that connection
//!   closes (the owner exits or dies).
//!   It is also released when the registering process (the one that opened
//!   the connection, `SO_PEERCRED`) exits, even if a child inherited the
//!   connection and keeps it open: the server watches that process with a
//!   pidfd ([`crate::event::ProcessWatch`]).
//! - A client [`lookup`](NameClient::lookup)s the name and receives a
//!   connection straight to the service, after a check of the client's
//!   kernel credentials (`SO_PEERCRED` uid/gid, `SO_PEERGROUPS`) against
//!   the policy. Brokered: the server makes a socket pair and passes one end
//!   to each (`SCM_RIGHTS`). Direct (when the client's name table shows the
//!   service's own socket): the client connects to the service's abstract
//!   socket and checks that the owner answers (`SO_PEERCRED`), and the
//!   service applies the same policy to the caller's credentials on accept.
//! - [`watch`](NameClient::watch) reports a name appearing and disappearing.
//! - Mailboxes (indirect communication): named queues held by the server,
//!   sent to and received from by anyone the policy allows.
//! - [`list`](NameClient::list) shows a caller only what it may see.
//!
//! # Name tables: `stat`, `lookup` and `list` without a round trip
//!
//! The server keeps one read-only table per visibility class (callers with
//! the same kernel-verified uid, gid and groups; root is one class) in a
//! sealed `memfd`, holding exactly the names that class may see. A client
//! gets its class's table once, as a descriptor, from the server, which
//! reads the client's credentials from the kernel to pick it; the table has
//! no filesystem name, and its descriptor is read-only and sealed against
//! writing and resizing. Readers use a seqlock and validate every byte they
//! copy; a torn, stale (no server heartbeat for 2 s) or malformed table
//! sends the client to the server instead. See `table.rs` for the layout.
//!
//! The server protects itself and its other clients: requests are bounded in
//! size, malformed ones close that connection, protocol versions are
//! checked, names and connections per uid are limited, and idle connections
//! that hold nothing are closed.

mod client;
mod death;
mod protocol;
mod server;
mod table;

use std::path::PathBuf;

pub use client::{NameClient, NameEvent, Service, Watch};
#[doc(hidden)]
pub use protocol::fuzz_decode_request;

/// Decodes one name-table slot from arbitrary bytes: the decoder of what a
/// client reads from the server's shared table, exposed for fuzzing.
#[doc(hidden)]
pub fn fuzz_decode_table_slot(bytes: &[u8]) -> bool {
    table::fuzz_decode_slot(bytes)
}
pub use protocol::{Entry, EntryKind, Policy, PROTOCOL_VERSION};
pub use server::{EmbeddedServer, NameServer, ServerConfig};

use crate::error::{Error, Result};
use crate::perm::{self, Access, Caller, Owner};

/// The environment variable that overrides the server's socket path.
pub const SOCKET_ENV: &str = "IPCKIT_NAMING_SOCKET";

/// Where the naming server listens: `$IPCKIT_NAMING_SOCKET`, else
/// `$XDG_RUNTIME_DIR/ipckit/naming.sock`, else `/tmp/ipckit-<uid>/naming.sock`
/// (the directory is created with mode 0700 and must belong to the caller).
///
/// # Errors
///
/// [`Error::PermissionDenied`] when the per-user directory exists but belongs
/// to someone else; [`Error::Io`] when it cannot be created.
pub fn default_socket_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(SOCKET_ENV) {
        return Ok(PathBuf::from(p));
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("ipckit"),
        _ => PathBuf::from(format!("/tmp/ipckit-{}", crate::sys::euid())),
    };
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(dir.display(), e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| Error::io(dir.display(), e))?;
    if !meta.is_dir() || meta.uid() != crate::sys::euid() {
        return Err(Error::PermissionDenied(format!("{} is not a directory of ours", dir.display())));
    }
    Ok(dir.join("naming.sock"))
}

/// Names: 1-128 bytes of letters, digits, `_ - . /` (a `/` separates
/// levels, as in `draw/v1`); no `..`, no leading or trailing `/`, no `//`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > 128 {
        "longer than 128 bytes"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b)) {
        "use only letters, digits, '_', '-', '.' and '/'"
    } else if name.contains("..") || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        "no '..', no leading or trailing '/', no '//'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_owned(), why })
}

/// Whether `caller` may have `want` on a name owned by `uid`/`gid` under
/// `policy`: the mode bits as [`perm::allowed`] reads them, or an allow-list.
/// The one rule the server and a service's own socket both apply.
pub(crate) fn policy_allows(uid: u32, gid: u32, policy: &Policy, caller: &Caller, want: Access) -> bool {
    let owner = Owner { uid, gid, mode: policy.mode & 0o777 };
    perm::allowed(&owner, caller, want)
        || policy.allow_uids.contains(&caller.uid)
        || policy.allow_gids.contains(&caller.gid)
        || caller.groups.iter().any(|g| policy.allow_gids.contains(g))
}
