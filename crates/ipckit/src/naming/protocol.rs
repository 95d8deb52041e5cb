//! The naming server's protocol: postcard-encoded requests, replies and
//! events, each inside one ipckit frame, with a version of their own.
//!
//! Everything decoded here comes from a stranger: sizes are bounded by the
//! connection's maximum message size, postcard rejects malformed input, and
//! names and policies are validated again by the server.

use serde::{Deserialize, Serialize};

use crate::sys::PeerCred;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// Who may use a name: System V-style mode bits (owner = the registering
/// process's kernel-verified uid and gid) plus optional allow-lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Permission bits: `r` to see (list, stat, receive from a mailbox),
    /// `w` to use (connect to a service, send to a mailbox).
    pub mode: u32,
    /// These uids get read and write whatever the mode says.
    pub allow_uids: Vec<u32>,
    /// These gids (primary or supplementary) get read and write.
    pub allow_gids: Vec<u32>,
}

impl Policy {
    /// Mode bits only, no allow-lists.
    pub fn mode(mode: u32) -> Policy {
        Policy { mode, ..Policy::default() }
    }
}

/// What a name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A service: looking it up gives a connection to its owner.
    Service,
    /// A mailbox: messages held by the server, sent and received by anyone allowed.
    Mailbox,
}

/// What the server says about a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name.
    pub name: String,
    /// Service or mailbox.
    pub kind: EntryKind,
    /// Owner uid (the registering process's, from the kernel).
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    /// The registering process.
    pub pid: u32,
    /// Seconds since the epoch at registration.
    pub created: u64,
    /// Seconds since the epoch of the last lookup, send or receive.
    pub last_activity: u64,
    /// Messages waiting (mailboxes).
    pub messages: u32,
    /// Most messages held (mailboxes).
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    Register {
        name: String,
        policy: Policy,
    },
    Unregister {
        name: String,
    },
    Lookup {
        name: String,
    },
    Watch {
        name: String,
    },
    List,
    Stat {
        name: String,
    },
    Remove {
        name: String,
    },
    CreateMailbox {
        name: String,
        policy: Policy,
        capacity: u32,
    },
    Send {
        name: String,
        data: Vec<u8>,
    },
    Recv {
        name: String,
        timeout_ms: u32,
    },
    /// The read-only name table of the caller's class (a memfd, as a handle).
    Table,
}

/// A request and the protocol version it is written in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) version: u32,
    pub(crate) request: Request,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Code {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    InvalidName,
    VersionMismatch,
    LimitExceeded,
    BadRequest,
    Timeout,
    Full,
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    Done,
    /// A connection (or an event stream) travels with the reply as a handle.
    Handle,
    Entries(Vec<Entry>),
    Entry(Entry),
    Message(Vec<u8>),
    Failed {
        code: Code,
        message: String,
        server_version: u32,
    },
}

/// Pushed by the server on a service's or watcher's event connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A client looked the service up; its connection travels as a handle.
    Incoming { pid: u32, uid: u32, gid: u32 },
    /// A watched name was registered (or existed when the watch began).
    Appeared { name: String },
    /// A watched name went away (removed, or its owner exited or died).
    Disappeared { name: String },
}

impl Event {
    pub(crate) fn incoming(c: PeerCred) -> Event {
        Event::Incoming { pid: c.pid, uid: c.uid, gid: c.gid }
    }
}

/// Decodes a request envelope: the one decoder that reads client input,
/// exposed for fuzzing.
#[doc(hidden)]
pub fn fuzz_decode_request(bytes: &[u8]) -> bool {
    decode::<Envelope>(bytes).is_ok()
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("protocol values always encode")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
