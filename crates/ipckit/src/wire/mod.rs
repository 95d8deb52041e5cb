//! ipckit's wire format: the frame header and the handle table.
//!
//! Every message travels as one frame:
//!
//! ```text
//! offset  size  field
//! 0       2     magic "IK"
//! 2       1     wire version (1)
//! 3       1     kind (low 7 bits) | HAS_HANDLES (0x80)
//! 4       4     body length, little-endian (at most the receiver's maximum)
//! 8       8     id, little-endian (request id, acknowledged count, capacity)
//! 16      len   body
//! ```
//!
//! When `HAS_HANDLES` is set the body starts with a handle table: a count
//! byte, then per handle a fixed 32-byte entry followed by `blob` bytes (see
//! [`HandleMeta`]). The descriptors themselves travel beside the bytes, as
//! `SCM_RIGHTS` ancillary data. Everything here is decoded as input from a
//! stranger: every field is range-checked before use.

use crate::error::FrameError;

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 16;
/// The magic bytes that start every frame.
pub(crate) const MAGIC: [u8; 2] = *b"IK";
/// The wire-format version this build speaks.
pub(crate) const VERSION: u8 = 1;
const HAS_HANDLES: u8 = 0x80;
/// Most handles one message may carry.
pub(crate) const MAX_HANDLES: usize = 64;
/// Most descriptors one handle may own.
pub(crate) const MAX_FDS_PER_HANDLE: usize = 4;
const ENTRY_LEN: usize = 32;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A channel message (`id`: the sender's sequence number).
    Data = 1,
    /// Receiver to sender: `id` messages taken so far (flow control credit).
    Credit = 2,
    /// Receiver to a newly connected sender: the channel capacity is `id`.
    Hello = 3,
    /// An RPC request numbered `id`.
    Request = 4,
    /// The reply to request `id`.
    Reply = 5,
    /// Rendezvous sender: "I want to send message `id`".
    Offer = 6,
    /// Rendezvous receiver: "I am waiting: send message `id` now".
    Grant = 7,
    /// Rendezvous sender: "I gave up on message `id`".
    Cancel = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            1 => Kind::Data,
            2 => Kind::Credit,
            3 => Kind::Hello,
            4 => Kind::Request,
            5 => Kind::Reply,
            6 => Kind::Offer,
            7 => Kind::Grant,
            8 => Kind::Cancel,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) handles: bool,
    pub(crate) len: usize,
    pub(crate) id: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.kind as u8 | if self.handles { HAS_HANDLES } else { 0 };
        h[4..8].copy_from_slice(&(self.len as u32).to_le_bytes());
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h
    }

    /// Decodes and checks a header; `max` is the largest body accepted.
    pub(crate) fn decode(h: &[u8; HEADER_LEN], max: usize) -> Result<Self, FrameError> {
        if h[0..2] != MAGIC {
            return Err(FrameError::BadMagic(u16::from_be_bytes([h[0], h[1]])));
        }
        if h[2] != VERSION {
            return Err(FrameError::VersionMismatch { got: h[2], ours: VERSION });
        }
        let kind = Kind::from_u8(h[3] & !HAS_HANDLES)?;
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let id = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        Ok(Header { kind, handles: h[3] & HAS_HANDLES != 0, len, id })
    }
}

/// The kinds of handle a message can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HandleKind {
    /// A plain descriptor ([`std::os::fd::OwnedFd`]).
    Fd = 1,
    /// A channel's sending end ([`crate::Sender`]).
    Sender = 2,
    /// A channel's receiving end ([`crate::Receiver`]).
    Receiver = 3,
    /// A two-way connection ([`crate::Connection`]).
    Connection = 4,
    /// A listening UNIX socket ([`crate::unix::Listener`]).
    Listener = 5,
    /// A shared-memory segment ([`crate::shm::Segment`]).
    Segment = 6,
    /// A cross-process event ([`crate::event::Event`]).
    Event = 7,
    /// A shared-memory channel ([`crate::shm::channel::ShmChannel`]).
    ShmChannel = 8,
}

impl HandleKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => HandleKind::Fd,
            2 => HandleKind::Sender,
            3 => HandleKind::Receiver,
            4 => HandleKind::Connection,
            5 => HandleKind::Listener,
            6 => HandleKind::Segment,
            7 => HandleKind::Event,
            8 => HandleKind::ShmChannel,
            _ => return None,
        })
    }
}

/// Everything but the descriptors needed to rebuild a handle in another process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HandleMeta {
    pub(crate) kind: HandleKind,
    /// How many descriptors follow (1..=MAX_FDS_PER_HANDLE).
    pub(crate) nfds: u8,
    /// Bit 0: packet mode (seqpacket); bit 1: the descriptors are sockets.
    pub(crate) flags: u8,
    /// Channel capacity (`u32::MAX`: the kernel's buffer).
    pub(crate) capacity: u32,
    /// Largest message the handle accepts.
    pub(crate) max_msg: u32,
    /// Flow-control counters (messages sent / acknowledged, or taken / acknowledged).
    pub(crate) count_a: u64,
    pub(crate) count_b: u64,
    /// Bytes already read from the descriptor but not yet consumed.
    pub(crate) pending: Vec<u8>,
}

impl HandleMeta {
    pub(crate) fn new(kind: HandleKind, nfds: usize) -> Self {
        HandleMeta {
            kind,
            nfds: nfds as u8,
            flags: 0,
            capacity: u32::MAX,
            max_msg: 0,
            count_a: 0,
            count_b: 0,
            pending: Vec::new(),
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.nfds);
        out.push(self.flags);
        out.push(0);
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.max_msg.to_le_bytes());
        out.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.count_a.to_le_bytes());
        out.extend_from_slice(&self.count_b.to_le_bytes());
        out.extend_from_slice(&self.pending);
    }

    /// Decodes one entry from the front of `b`, returning it and the bytes used.
    pub(crate) fn decode(b: &[u8]) -> Result<(Self, usize), FrameError> {
        if b.len() < ENTRY_LEN {
            return Err(FrameError::BadHandles("entry cut short"));
        }
        let kind = HandleKind::from_u8(b[0]).ok_or(FrameError::BadHandles("unknown handle kind"))?;
        let nfds = b[1];
        if nfds == 0 || nfds as usize > MAX_FDS_PER_HANDLE {
            return Err(FrameError::BadHandles("bad descriptor count"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let blob = u32_at(12) as usize;
        if blob > b.len() - ENTRY_LEN {
            return Err(FrameError::BadHandles("pending bytes run past the table"));
        }
        let meta = HandleMeta {
            kind,
            nfds,
            flags: b[2],
            capacity: u32_at(4),
            max_msg: u32_at(8),
            count_a: u64_at(16),
            count_b: u64_at(24),
            pending: b[ENTRY_LEN..ENTRY_LEN + blob].to_vec(),
        };
        Ok((meta, ENTRY_LEN + blob))
    }
}

/// Encodes a handle table (count, then entries).
pub(crate) fn encode_table(metas: &[&HandleMeta]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + metas.len() * ENTRY_LEN);
    out.push(metas.len() as u8);
    for m in metas {
        m.encode_into(&mut out);
    }
    out
}

/// Decodes the handle table at the front of a body: the entries, and where the payload starts.
pub(crate) fn decode_table(body: &[u8]) -> Result<(Vec<HandleMeta>, usize), FrameError> {
    let (&count, mut rest) = body.split_first().ok_or(FrameError::BadHandles("empty table"))?;
    if count == 0 || count as usize > MAX_HANDLES {
        return Err(FrameError::BadHandles("bad handle count"));
    }
    let mut used = 1;
    let mut metas = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (m, n) = HandleMeta::decode(rest)?;
        metas.push(m);
        rest = &rest[n..];
        used += n;
    }
    Ok((metas, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header { kind: Kind::Request, handles: true, len: 1234, id: u64::MAX - 7 };
        assert_eq!(Header::decode(&h.encode(), 4096), Ok(h));
    }

    #[test]
    fn header_rejects_garbage() {
        let mut b = Header { kind: Kind::Data, handles: false, len: 10, id: 1 }.encode();
        assert_eq!(Header::decode(&b, 9), Err(FrameError::TooLarge { len: 10, max: 9 }));
        b[3] = 99;
        assert_eq!(Header::decode(&b, 100), Err(FrameError::UnknownKind(99)));
        b[2] = 7;
        assert!(matches!(Header::decode(&b, 100), Err(FrameError::VersionMismatch { got: 7, .. })));
        b[0] = b'x';
        assert!(matches!(Header::decode(&b, 100), Err(FrameError::BadMagic(_))));
    }

    #[test]
    fn table_round_trips_and_rejects_lies() {
        let mut m = HandleMeta::new(HandleKind::Sender, 2);
        m.pending = vec![1, 2, 3];
        m.count_a = 9;
        let t = encode_table(&[&m, &HandleMeta::new(HandleKind::Fd, 1)]);
        let (metas, used) = decode_table(&t).unwrap();
        assert_eq!(used, t.len());
        assert_eq!(metas[0], m);
        // A blob length running past the end.
        let mut bad = t.clone();
        bad[1 + 12] = 200;
        assert!(decode_table(&bad).is_err());
        // Every prefix of a valid table is rejected, never a panic.
        for n in 0..t.len() {
            assert!(decode_table(&t[..n]).is_err());
        }
    }
}
