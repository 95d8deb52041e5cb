//! Every error ipckit returns: one type per operation, causes as variants.
//!
//! A failed send hands its message back (`into_inner`), as crossbeam-channel's
//! errors do. Internally every transport reports a [`Fault`], which each
//! public operation turns into its own error type.

use std::fmt;
use std::io;

/// Why bytes read from a peer are not a valid ipckit frame.
///
/// A peer is not trusted: everything it sends is checked, and a bad frame
/// is this error on that connection, never a panic or a silent truncation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with ipckit's magic bytes: the peer is not
    /// speaking ipckit's wire format (or the stream lost its alignment).
    #[error("bad magic {0:#06x}: the peer does not speak ipckit's wire format")]
    BadMagic(u16),
    /// The frame uses a wire-format version this build does not speak.
    #[error("wire version mismatch: peer speaks version {got}, this build speaks {ours}")]
    VersionMismatch {
        /// The version in the frame.
        got: u8,
        /// The version this build speaks.
        ours: u8,
    },
    /// The frame kind byte is not one ipckit defines.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The frame kind is valid but not expected here (say, a reply sent to a server).
    #[error("unexpected frame kind {0}")]
    Unexpected(u8),
    /// The frame announces a body larger than this end accepts.
    #[error("frame of {len} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge {
        /// Announced (or received) body length.
        len: usize,
        /// This end's limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    /// A datagram's length disagrees with the length in its header.
    #[error("packet length {got} does not match its header ({want})")]
    LengthMismatch {
        /// Bytes received.
        got: usize,
        /// Bytes the header announced.
        want: usize,
    },
    /// The handle table attached to a message is malformed.
    #[error("malformed handle table: {0}")]
    BadHandles(&'static str),
    /// The message announced descriptors that did not arrive (or the kernel dropped them).
    #[error("descriptors announced by the message did not arrive")]
    MissingFds,
}

/// The internal cause every transport reports; public errors are built from it.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The deadline passed (or, for a `try_` form, the operation would block).
    Timeout,
    /// The peer is gone.
    Disconnected,
    /// The message is larger than the limit.
    TooLarge { len: usize, max: usize },
    /// The peer sent something that is not a valid frame.
    Frame(FrameError),
    /// The operating system refused.
    Io(io::Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected => Fault::Disconnected,
            _ => Fault::Io(e),
        }
    }
}

impl From<FrameError> for Fault {
    fn from(e: FrameError) -> Self {
        Fault::Frame(e)
    }
}

macro_rules! send_error {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $extra:ident => $msg:literal),* }) => {
        $(#[$m])*
        #[derive(thiserror::Error)]
        pub enum $name<T> {
            $($(#[$vm])* #[error($msg)] $extra(T),)*
            /// The receiving side is gone; the message was not delivered.
            #[error("sending on a disconnected channel")]
            Disconnected(T),
            /// The message is larger than the channel's maximum message size.
            #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
            TooLarge {
                /// The message, handed back.
                msg: T,
                /// Its encoded length.
                len: usize,
                /// The limit.
                max: usize,
            },
            /// The operating system refused; the message was not delivered.
            #[error("send failed: {source}")]
            Io {
                /// The message, handed back.
                msg: T,
                /// What the kernel said.
                source: io::Error,
            },
        }

        impl<T> $name<T> {
            /// The message that could not be sent.
            pub fn into_inner(self) -> T {
                match self {
                    $($name::$extra(m) |)* $name::Disconnected(m) => m,
                    $name::TooLarge { msg, .. } | $name::Io { msg, .. } => msg,
                }
            }

            /// Whether the peer is gone (nothing more can be sent).
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $name::Disconnected(_))
            }

            pub(crate) fn from_fault(f: Fault, msg: T) -> Self {
                match f {
                    Fault::Disconnected => $name::Disconnected(msg),
                    Fault::TooLarge { len, max } => $name::TooLarge { msg, len, max },
                    Fault::Io(source) => $name::Io { msg, source },
                    Fault::Frame(e) => $name::Io { msg, source: io::Error::new(io::ErrorKind::InvalidData, e) },
                    #[allow(unreachable_patterns)]
                    Fault::Timeout => send_error!(@timeout $name msg $($extra)*),
                }
            }

            /// Applies `f` to the message inside, keeping the cause.
            pub fn map<U>(self, f: impl FnOnce(T) -> U) -> $name<U> {
                match self {
                    $($name::$extra(m) => $name::$extra(f(m)),)*
                    $name::Disconnected(m) => $name::Disconnected(f(m)),
                    $name::TooLarge { msg, len, max } => $name::TooLarge { msg: f(msg), len, max },
                    $name::Io { msg, source } => $name::Io { msg: f(msg), source },
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}::{}", stringify!($name), match self {
                    $($name::$extra(_) => stringify!($extra),)*
                    $name::Disconnected(_) => "Disconnected",
                    $name::TooLarge { .. } => "TooLarge",
                    $name::Io { .. } => "Io",
                })?;
                write!(f, "({self})")
            }
        }
    };
    (@timeout $name:ident $msg:ident) => {
        $name::Io { msg: $msg, source: io::Error::from(io::ErrorKind::TimedOut) }
    };
    (@timeout $name:ident $msg:ident $extra:ident) => { $name::$extra($msg) };
}

send_error! {
    /// Why [`send`](crate::Sender::send) failed. The message is handed back.
    SendError {}
}

send_error! {
    /// Why [`try_send`](crate::Sender::try_send) failed. The message is handed back.
    TrySendError {
        /// The channel is full (or, for a rendezvous channel, no receiver is waiting).
        Full => "sending on a full channel"
    }
}

send_error! {
    /// Why [`send_timeout`](crate::Sender::send_timeout) failed. The message is handed back.
    SendTimeoutError {
        /// The deadline passed before the channel had room (or a receiver took it).
        Timeout => "timed out sending on a channel"
    }
}

macro_rules! recv_error {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $extra:ident => $msg:literal),* }) => {
        $(#[$m])*
        #[derive(Debug, thiserror::Error)]
        pub enum $name {
            $($(#[$vm])* #[error($msg)] $extra,)*
            /// Every sender is gone and nothing is left to receive.
            #[error("receiving on a disconnected channel")]
            Disconnected,
            /// The peer sent something that is not a valid message.
            #[error("bad frame from peer: {0}")]
            Frame(#[from] FrameError),
            /// A message arrived but is not a valid encoding of the expected type.
            #[error("could not decode the message: {0}")]
            Decode(#[from] postcard::Error),
            /// The operating system refused.
            #[error("receive failed: {0}")]
            Io(#[source] io::Error),
        }

        impl $name {
            pub(crate) fn from_fault(f: Fault) -> Self {
                match f {
                    Fault::Disconnected => $name::Disconnected,
                    Fault::Frame(e) => $name::Frame(e),
                    Fault::TooLarge { len, max } => $name::Frame(FrameError::TooLarge { len, max }),
                    Fault::Io(e) => $name::Io(e),
                    #[allow(unreachable_patterns)]
                    Fault::Timeout => recv_error!(@timeout $name $($extra)*),
                }
            }

            /// Whether every sender is gone.
            pub fn is_disconnected(&self) -> bool {
                matches!(self, $name::Disconnected)
            }
        }
    };
    (@timeout $name:ident) => { $name::Io(io::Error::from(io::ErrorKind::TimedOut)) };
    (@timeout $name:ident $extra:ident) => { $name::$extra };
}

recv_error! {
    /// Why [`recv`](crate::Receiver::recv) failed.
    RecvError {}
}

recv_error! {
    /// Why [`try_recv`](crate::Receiver::try_recv) failed.
    TryRecvError {
        /// Nothing is waiting to be received.
        Empty => "receiving on an empty channel"
    }
}

recv_error! {
    /// Why [`recv_timeout`](crate::Receiver::recv_timeout) failed.
    RecvTimeoutError {
        /// The deadline passed with nothing to receive.
        Timeout => "timed out waiting on a channel"
    }
}

/// Why an RPC [`call`](crate::rpc::Client::call) failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No reply came before the call's deadline. A reply arriving later is dropped.
    #[error("the call timed out waiting for a reply")]
    Timeout,
    /// The server is gone (or closed the connection) before replying.
    #[error("the server disconnected before replying")]
    Disconnected,
    /// The request is larger than the connection's maximum message size.
    #[error("request of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The request's encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server sent something that is not a valid frame.
    #[error("bad frame from server: {0}")]
    Frame(#[from] FrameError),
    /// The request could not be encoded, or the reply decoded, as the asked type.
    #[error("could not encode or decode a typed message: {0}")]
    Codec(#[from] postcard::Error),
    /// The operating system refused.
    #[error("call failed: {0}")]
    Io(#[source] io::Error),
}

impl CallError {
    pub(crate) fn from_fault(f: Fault) -> Self {
        match f {
            Fault::Timeout => CallError::Timeout,
            Fault::Disconnected => CallError::Disconnected,
            Fault::TooLarge { len, max } => CallError::TooLarge { len, max },
            Fault::Frame(e) => CallError::Frame(e),
            Fault::Io(e) => CallError::Io(e),
        }
    }
}

/// Why a [`reply`](crate::rpc::Request::reply) could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The client is gone; nobody is waiting for this reply.
    #[error("the client disconnected")]
    Disconnected,
    /// The reply is larger than the connection's maximum message size.
    #[error("reply of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The reply's encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The client stopped reading and the reply could not be written in time.
    #[error("the client is not reading: reply not delivered")]
    Timeout,
    /// The reply could not be encoded.
    #[error("could not encode the reply: {0}")]
    Codec(#[from] postcard::Error),
    /// The operating system refused.
    #[error("reply failed: {0}")]
    Io(#[source] io::Error),
}

impl ReplyError {
    pub(crate) fn from_fault(f: Fault) -> Self {
        match f {
            Fault::Timeout => ReplyError::Timeout,
            Fault::Disconnected => ReplyError::Disconnected,
            Fault::TooLarge { len, max } => ReplyError::TooLarge { len, max },
            Fault::Frame(e) => ReplyError::Io(io::Error::new(io::ErrorKind::InvalidData, e)),
            Fault::Io(e) => ReplyError::Io(e),
        }
    }
}

/// Why creating, opening, connecting, or taking over a handle failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name or path is not acceptable (the message says why).
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Nothing exists (or listens) under that name.
    #[error("{0}: not found")]
    NotFound(String),
    /// The socket file exists but no process is listening on it (its owner
    /// died without removing it, or has not started listening yet).
    #[error("{0}: nobody is listening")]
    NotListening(String),
    /// Something already exists under that name.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The caller may not do this.
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    /// The operation did not complete before its deadline.
    #[error("timed out")]
    Timeout,
    /// A handed-over handle (inherited or received in a message) is not usable.
    #[error("bad handle: {0}")]
    BadHandle(String),
    /// The peer sent something that is not valid.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// The peer speaks another version of an ipckit protocol.
    #[error("protocol version mismatch: this build speaks {ours}, the peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// A limit was reached (names or connections per user, a full mailbox).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Shared memory holds something that is not a valid ipckit structure
    /// (a peer or a stray write corrupted it, or it is not ipckit's).
    #[error("corrupted: {0}")]
    Corrupted(String),
    /// The operation needs something this transport does not have.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The operating system refused.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Maps an `io::Error` about `what` to the matching variant.
    pub(crate) fn io(what: impl fmt::Display, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(what.to_string()),
            io::ErrorKind::ConnectionRefused => Error::NotListening(what.to_string()),
            io::ErrorKind::AlreadyExists | io::ErrorKind::AddrInUse => Error::AlreadyExists(what.to_string()),
            io::ErrorKind::PermissionDenied => Error::PermissionDenied(what.to_string()),
            _ => Error::Io(io::Error::new(e.kind(), format!("{what}: {e}"))),
        }
    }
}

/// Shorthand for results of create/open/connect operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
