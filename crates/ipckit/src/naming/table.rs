//! The name table: what one visibility class of callers may see, published
//! by the server in a sealed `memfd` that its clients map read-only, so a
//! `stat` or a `lookup` needs no server round trip.
//!
//! # Who sees what
//!
//! A class is one kernel-verified identity: uid, gid and supplementary
//! groups (`SO_PEERCRED`, `SO_PEERGROUPS`); root is one class. The class's
//! table holds exactly the names its callers may see (read access), with
//! whether they may also use them (write access). The table has no name in
//! any filesystem: the only way to get it is to ask the server, which hands
//! out the descriptor (`SCM_RIGHTS`) of the caller's own class after reading
//! the caller's credentials from the kernel. The descriptor is read-only
//! (reopened `O_RDONLY`, and sealed with `F_SEAL_FUTURE_WRITE`,
//! `F_SEAL_SHRINK`, `F_SEAL_GROW`, `F_SEAL_SEAL`), so no client can change
//! or resize what other clients of its class read.
//!
//! # Layout (little-endian 64-bit words)
//!
//! A 64-byte header: magic, a seqlock word, the slot count (a power of
//! two), the server's heartbeat (`CLOCK_MONOTONIC` ns, refreshed at least
//! every [`HEARTBEAT`]), a retired flag (the server replaced or dropped this
//! table: fetch a new one), the entry count and the server's pid. Then
//! `slots` slots of [`SLOT`] bytes, an open-addressing hash table keyed by
//! the FNV-1a hash of the name (linear probing, tombstones for removals,
//! at most half full).
//!
//! # Consistency
//!
//! The server (one writer) makes the seqlock word odd, writes, and makes it
//! even again; a reader loads the word, copies what it needs with atomic
//! loads, and accepts the copy only if the word was even and unchanged.
//! Then everything copied is validated (lengths, kinds, names): a table
//! that is torn for too long, or that says something impossible, is an
//! error for the reader, never undefined behaviour, and the client asks the
//! server instead.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use super::protocol::{Entry, EntryKind};
use crate::sys::naming::{self as sysn, ReadMapping};
use crate::sys::Mapping;

const MAGIC: u64 = u64::from_le_bytes(*b"IKNTAB01");
const HEADER: usize = 64;
/// Bytes per slot.
pub(crate) const SLOT: usize = 256;
const WORDS: usize = SLOT / 8;
/// The longest service address (an abstract socket name) a slot holds.
pub(crate) const MAX_ADDR: usize = 48;
/// The fewest slots a table has.
const MIN_SLOTS: usize = 64;
/// The most slots a reader accepts (a 256 MiB table).
const MAX_SLOTS: usize = 1 << 20;
/// How often the server refreshes the heartbeat, at the least.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
/// A heartbeat older than this means the server is gone or stuck: ask it instead.
const STALE_NS: u64 = 2_000_000_000;
/// How many torn reads in a row a reader tolerates before giving up.
const TRIES: usize = 200;

// Header words.
const H_MAGIC: usize = 0;
const H_SEQ: usize = 8;
const H_SLOTS: usize = 16;
const H_BEAT: usize = 24;
const H_RETIRED: usize = 32;
const H_COUNT: usize = 40;
const H_PID: usize = 48;

// Slot states.
const EMPTY: u8 = 0;
const USED: u8 = 1;
const TOMB: u8 = 2;

// Slot byte offsets.
const S_STATE: usize = 0;
const S_KIND: usize = 1;
const S_ACCESS: usize = 2;
const S_NAME_LEN: usize = 3;
const S_ADDR_LEN: usize = 4;
const S_UID: usize = 8;
const S_GID: usize = 12;
const S_MODE: usize = 16;
const S_PID: usize = 20;
const S_CREATED: usize = 24;
const S_ACTIVITY: usize = 32;
const S_MESSAGES: usize = 40;
const S_CAPACITY: usize = 44;
const S_HASH: usize = 48;
const S_ADDR: usize = 56;
const S_NAME: usize = S_ADDR + MAX_ADDR;
const MAX_NAME: usize = 128;
const _: () = assert!(S_NAME + MAX_NAME <= SLOT);

/// Access bits in a slot: the class may see the name (always set for a
/// used slot) and may use it (connect, send).
pub(crate) const CAN_READ: u8 = 1;
pub(crate) const CAN_WRITE: u8 = 2;

/// FNV-1a, 64-bit: the same in every process.
fn hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn table_len(slots: usize) -> usize {
    HEADER + slots * SLOT
}

/// One name as a class sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) entry: Entry,
    /// [`CAN_READ`] / [`CAN_WRITE`] bits for the reader's class.
    pub(crate) access: u8,
    /// The service's own listening address (abstract name), if it has one.
    pub(crate) addr: Option<Vec<u8>>,
}

fn encode_slot(f: &Found, h: u64) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    let e = &f.entry;
    let name = e.name.as_bytes();
    let addr = f.addr.as_deref().unwrap_or_default();
    debug_assert!(name.len() <= MAX_NAME && addr.len() <= MAX_ADDR);
    s[S_STATE] = USED;
    s[S_KIND] = match e.kind {
        EntryKind::Service => 0,
        EntryKind::Mailbox => 1,
    };
    s[S_ACCESS] = f.access;
    s[S_NAME_LEN] = name.len() as u8;
    s[S_ADDR_LEN] = addr.len() as u8;
    s[S_UID..S_UID + 4].copy_from_slice(&e.uid.to_le_bytes());
    s[S_GID..S_GID + 4].copy_from_slice(&e.gid.to_le_bytes());
    s[S_MODE..S_MODE + 4].copy_from_slice(&e.mode.to_le_bytes());
    s[S_PID..S_PID + 4].copy_from_slice(&e.pid.to_le_bytes());
    s[S_CREATED..S_CREATED + 8].copy_from_slice(&e.created.to_le_bytes());
    s[S_ACTIVITY..S_ACTIVITY + 8].copy_from_slice(&e.last_activity.to_le_bytes());
    s[S_MESSAGES..S_MESSAGES + 4].copy_from_slice(&e.messages.to_le_bytes());
    s[S_CAPACITY..S_CAPACITY + 4].copy_from_slice(&e.capacity.to_le_bytes());
    s[S_HASH..S_HASH + 8].copy_from_slice(&h.to_le_bytes());
    s[S_ADDR..S_ADDR + addr.len()].copy_from_slice(addr);
    s[S_NAME..S_NAME + name.len()].copy_from_slice(name);
    s
}

fn u32_of(s: &[u8; SLOT], at: usize) -> u32 {
    u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_of(s: &[u8; SLOT], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a slot copied from the table and turns it into a [`Found`].
fn decode_slot(s: &[u8; SLOT]) -> Result<Found, &'static str> {
    let kind = match s[S_KIND] {
        0 => EntryKind::Service,
        1 => EntryKind::Mailbox,
        _ => return Err("unknown kind"),
    };
    let (nl, al) = (s[S_NAME_LEN] as usize, s[S_ADDR_LEN] as usize);
    if nl == 0 || nl > MAX_NAME || al > MAX_ADDR {
        return Err("length out of range");
    }
    let name = std::str::from_utf8(&s[S_NAME..S_NAME + nl]).map_err(|_| "name is not UTF-8")?;
    super::check_name(name).map_err(|_| "invalid name")?;
    let access = s[S_ACCESS];
    if access & !(CAN_READ | CAN_WRITE) != 0 || access & CAN_READ == 0 {
        return Err("bad access bits");
    }
    let mode = u32_of(s, S_MODE);
    if mode > 0o777 {
        return Err("bad mode");
    }
    let entry = Entry {
        name: name.to_owned(),
        kind,
        uid: u32_of(s, S_UID),
        gid: u32_of(s, S_GID),
        mode,
        pid: u32_of(s, S_PID),
        created: u64_of(s, S_CREATED),
        last_activity: u64_of(s, S_ACTIVITY),
        messages: u32_of(s, S_MESSAGES),
        capacity: u32_of(s, S_CAPACITY),
    };
    let addr = (al > 0).then(|| s[S_ADDR..S_ADDR + al].to_vec());
    Ok(Found { entry, access, addr })
}

/// Decodes one slot's bytes (zero-padded or cut to [`SLOT`]): the decoder
/// that reads what another process wrote, exposed for fuzzing.
pub(crate) fn fuzz_decode_slot(bytes: &[u8]) -> bool {
    let mut s = [0u8; SLOT];
    let n = bytes.len().min(SLOT);
    s[..n].copy_from_slice(&bytes[..n]);
    decode_slot(&s).is_ok()
}

// ---------------------------------------------------------------------------
// The server's side
// ---------------------------------------------------------------------------

/// One class's table, as the server writes it.
#[derive(Debug)]
pub(crate) struct TableWriter {
    map: Mapping,
    ro: OwnedFd,
    slots: usize,
    /// Where each name lives.
    index: HashMap<String, usize>,
    tombs: usize,
    seq: u64,
}

/// Why a write did not happen.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The table is too full: build a bigger one.
    Full,
}

impl TableWriter {
    /// A table with room for at least `names` names.
    pub(crate) fn new(names: usize) -> std::io::Result<TableWriter> {
        let slots = (names.max(1) * 2).next_power_of_two().max(MIN_SLOTS);
        let (map, ro) = sysn::sealed_table("ipckit-names", table_len(slots))?;
        let w = TableWriter { map, ro, slots, index: HashMap::new(), tombs: 0, seq: 0 };
        w.word(H_SLOTS, slots as u64);
        w.word(H_PID, u64::from(crate::sys::pid()));
        w.beat();
        w.word(H_MAGIC, MAGIC);
        Ok(w)
    }

    fn word(&self, off: usize, v: u64) {
        if let Some(w) = self.map.u64_at(off) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The read-only descriptor handed to clients of this class.
    pub(crate) fn reader_fd(&self) -> std::io::Result<OwnedFd> {
        self.ro.as_fd().try_clone_to_owned()
    }

    /// How many names it holds.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Refreshes the heartbeat.
    pub(crate) fn beat(&self) {
        if let Some(w) = self.map.u64_at(H_BEAT) {
            w.store(sysn::monotonic_ns(), Ordering::Release);
        }
    }

    /// Tells readers to fetch a new table (this one is no longer kept up to date).
    pub(crate) fn retire(&self) {
        if let Some(w) = self.map.u64_at(H_RETIRED) {
            w.store(1, Ordering::Release);
        }
    }

    fn begin(&mut self) {
        self.seq += 1;
        debug_assert!(self.seq % 2 == 1);
        self.word(H_SEQ, self.seq);
        fence(Ordering::Release);
    }

    fn end(&mut self) {
        self.seq += 1;
        self.word(H_COUNT, self.index.len() as u64);
        if let Some(w) = self.map.u64_at(H_SEQ) {
            w.store(self.seq, Ordering::Release);
        }
    }

    fn write_slot(&self, i: usize, bytes: &[u8; SLOT]) {
        let base = HEADER + i * SLOT;
        for (k, chunk) in bytes.chunks_exact(8).enumerate() {
            self.word(base + k * 8, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
    }

    fn state(&self, i: usize) -> u8 {
        self.map.u64_at(HEADER + i * SLOT).map_or(EMPTY, |w| w.load(Ordering::Relaxed) as u8)
    }

    /// Inserts or updates `found`.
    pub(crate) fn put(&mut self, found: &Found) -> Result<(), WriteError> {
        let h = hash(found.entry.name.as_bytes());
        let bytes = encode_slot(found, h);
        if let Some(&i) = self.index.get(&found.entry.name) {
            self.begin();
            self.write_slot(i, &bytes);
            self.end();
            return Ok(());
        }
        if (self.index.len() + 1) * 2 > self.slots {
            return Err(WriteError::Full);
        }
        let mask = self.slots - 1;
        let mut i = (h as usize) & mask;
        // Reuse the first tombstone on the way, else the empty slot that ends
        // the chain (while at least half the slots stay empty, so every
        // probe ends).
        while self.state(i) == USED {
            i = (i + 1) & mask;
        }
        if self.state(i) == TOMB {
            self.tombs -= 1;
        } else if (self.index.len() + self.tombs + 1) * 2 > self.slots {
            return Err(WriteError::Full);
        }
        self.begin();
        self.write_slot(i, &bytes);
        self.index.insert(found.entry.name.clone(), i);
        self.end();
        Ok(())
    }

    /// Removes `name` if present.
    pub(crate) fn remove(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        let mut tomb = [0u8; SLOT];
        tomb[S_STATE] = TOMB;
        self.begin();
        self.write_slot(i, &tomb);
        self.tombs += 1;
        self.end();
    }
}

// ---------------------------------------------------------------------------
// The client's side
// ---------------------------------------------------------------------------

/// Why a table read gave no answer (the client then asks the server).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The server replaced or dropped this table: fetch a new one.
    Retired,
    /// The heartbeat is old: the server is gone or stuck.
    Stale,
    /// The table stayed mid-update for too long.
    Busy,
    /// The table says something impossible.
    Corrupt(&'static str),
}

/// A class's table, mapped read-only by a client.
#[derive(Debug)]
pub(crate) struct TableReader {
    map: ReadMapping,
    slots: usize,
}

impl TableReader {
    /// Maps a table descriptor received from the server, after checking it
    /// is a sealed memfd of a size that matches its header.
    pub(crate) fn open(fd: OwnedFd) -> std::io::Result<TableReader> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        let len = sysn::table_len_if_sealed(fd.as_fd())?;
        let len = usize::try_from(len).map_err(|_| bad("table too large".into()))?;
        if len < table_len(MIN_SLOTS) || len > table_len(MAX_SLOTS) {
            return Err(bad(format!("table of {len} bytes")));
        }
        let map = ReadMapping::map(fd.as_fd(), len)?;
        if map.load(H_MAGIC, Ordering::Acquire) != Some(MAGIC) {
            return Err(bad("not a name table".into()));
        }
        let slots = map.load(H_SLOTS, Ordering::Relaxed).unwrap_or(0) as usize;
        if !slots.is_power_of_two() || table_len(slots) != len {
            return Err(bad(format!("{slots} slots do not fit {len} bytes")));
        }
        Ok(TableReader { map, slots })
    }

    fn header(&self, off: usize, order: Ordering) -> u64 {
        // In bounds: the mapping is at least a header long (checked in `open`).
        self.map.load(off, order).unwrap_or(0)
    }

    /// The server's pid, as the table says.
    pub(crate) fn server_pid(&self) -> u64 {
        self.header(H_PID, Ordering::Relaxed)
    }

    fn usable(&self) -> Result<(), ReadError> {
        if self.header(H_RETIRED, Ordering::Acquire) != 0 {
            return Err(ReadError::Retired);
        }
        let beat = self.header(H_BEAT, Ordering::Acquire);
        let now = sysn::monotonic_ns();
        // Too old, or from the future (another time namespace): do not trust it.
        if now.saturating_sub(beat) > STALE_NS || beat > now.saturating_add(STALE_NS) {
            return Err(ReadError::Stale);
        }
        Ok(())
    }

    fn copy_slot(&self, i: usize, out: &mut [u8; SLOT]) {
        let base = HEADER + i * SLOT;
        for k in 0..WORDS {
            let w = self.map.load(base + k * 8, Ordering::Relaxed).unwrap_or(0);
            out[k * 8..k * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// One consistent snapshot of `f`'s reads, under the seqlock.
    fn consistent<T>(&self, mut f: impl FnMut() -> T) -> Result<T, ReadError> {
        self.usable()?;
        for attempt in 0..TRIES {
            let s1 = self.header(H_SEQ, Ordering::Acquire);
            if s1 % 2 == 0 {
                let got = f();
                fence(Ordering::Acquire);
                if self.header(H_SEQ, Ordering::Relaxed) == s1 {
                    return Ok(got);
                }
            }
            if attempt < 20 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Err(ReadError::Busy)
    }

    /// What the table says about `name`: `Ok(None)` when the reader's class
    /// may not see it (or it does not exist).
    pub(crate) fn get(&self, name: &str) -> Result<Option<Found>, ReadError> {
        let key = name.as_bytes();
        if key.is_empty() || key.len() > MAX_NAME {
            return Ok(None);
        }
        let h = hash(key);
        let mask = self.slots - 1;
        let mut slot = [0u8; SLOT];
        let hit = self.consistent(|| {
            let mut i = (h as usize) & mask;
            for _ in 0..self.slots {
                let w0 = self.map.load(HEADER + i * SLOT, Ordering::Relaxed).unwrap_or(0);
                match w0 as u8 {
                    EMPTY => return Ok(false),
                    USED => {
                        let sh = self.map.load(HEADER + i * SLOT + S_HASH, Ordering::Relaxed).unwrap_or(0);
                        if sh == h {
                            self.copy_slot(i, &mut slot);
                            let nl = slot[S_NAME_LEN] as usize;
                            if nl == key.len() && &slot[S_NAME..S_NAME + nl] == key {
                                return Ok(true);
                            }
                        }
                    }
                    TOMB => {}
                    _ => return Err("bad slot state"),
                }
                i = (i + 1) & mask;
            }
            Ok(false)
        })?;
        match hit {
            Ok(false) => Ok(None),
            Ok(true) => decode_slot(&slot).map(Some).map_err(ReadError::Corrupt),
            Err(why) => Err(ReadError::Corrupt(why)),
        }
    }

    /// Every name in the table, sorted.
    pub(crate) fn list(&self) -> Result<Vec<Found>, ReadError> {
        let mut raw: Vec<[u8; SLOT]> = Vec::new();
        self.consistent(|| {
            raw.clear();
            let mut slot = [0u8; SLOT];
            for i in 0..self.slots {
                if self.map.load(HEADER + i * SLOT, Ordering::Relaxed).unwrap_or(0) as u8 == USED {
                    self.copy_slot(i, &mut slot);
                    raw.push(slot);
                }
            }
        })?;
        let mut out =
            raw.iter().map(decode_slot).collect::<Result<Vec<_>, _>>().map_err(ReadError::Corrupt)?;
        out.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, access: u8) -> Found {
        Found {
            entry: Entry {
                name: name.into(),
                kind: EntryKind::Service,
                uid: 1,
                gid: 2,
                mode: 0o640,
                pid: 3,
                created: 4,
                last_activity: 5,
                messages: 0,
                capacity: 0,
            },
            access,
            addr: Some(b"ipckit-svc-x".to_vec()),
        }
    }

    #[test]
    fn put_get_remove_and_grow_signal() {
        let mut w = TableWriter::new(1).unwrap();
        let r = TableReader::open(w.reader_fd().unwrap()).unwrap();
        assert_eq!(r.get("a").unwrap(), None);
        for i in 0..20 {
            w.put(&found(&format!("n{i}"), CAN_READ | CAN_WRITE)).unwrap();
        }
        assert_eq!(r.get("n7").unwrap(), Some(found("n7", CAN_READ | CAN_WRITE)));
        w.remove("n7");
        assert_eq!(r.get("n7").unwrap(), None);
        assert_eq!(r.get("n8").unwrap().unwrap().entry.name, "n8");
        w.put(&found("n7", CAN_READ)).unwrap();
        assert_eq!(r.get("n7").unwrap().unwrap().access, CAN_READ);
        assert_eq!(r.list().unwrap().len(), 20);
        // At most half full: the writer says when to build a bigger table.
        let full = (20..40).find(|i| w.put(&found(&format!("n{i}"), CAN_READ)).is_err());
        assert_eq!(full, Some(32));
        w.retire();
        assert_eq!(r.get("n8"), Err(ReadError::Retired));
    }

    #[test]
    fn the_reader_cannot_write_or_resize_the_table() {
        let w = TableWriter::new(1).unwrap();
        let fd = w.reader_fd().unwrap();
        assert!(rustix::fs::ftruncate(&fd, 1).is_err(), "shrinking is sealed");
        assert!(rustix::io::write(&fd, b"x").is_err(), "writing is sealed");
        assert!(
            crate::sys::Mapping::map(&fd, table_len(MIN_SLOTS)).is_err(),
            "a writable mapping is refused"
        );
    }

    #[test]
    fn a_table_that_is_not_sealed_or_lies_is_refused() {
        // A plain memfd (no seals): refused before mapping.
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, table_len(MIN_SLOTS) as u64).unwrap();
        assert!(TableReader::open(fd).is_err());
        // A sealed one whose header is garbage: refused too.
        let (map, ro) = sysn::sealed_table("x", table_len(MIN_SLOTS)).unwrap();
        map.u64_at(H_MAGIC).unwrap().store(MAGIC, Ordering::Relaxed);
        map.u64_at(H_SLOTS).unwrap().store(1 << 40, Ordering::Relaxed);
        assert!(TableReader::open(ro).is_err());
    }

    #[test]
    fn the_slot_decoder_survives_garbage_and_round_trips() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..300), |bytes| {
                let _ = fuzz_decode_slot(&bytes);
                Ok(())
            })
            .unwrap();
        let f = found("a/b-c.d_e", CAN_READ | CAN_WRITE);
        assert_eq!(decode_slot(&encode_slot(&f, 7)), Ok(f));
    }

    #[test]
    fn hostile_slots_are_errors() {
        let mut w = TableWriter::new(1).unwrap();
        let r = TableReader::open(w.reader_fd().unwrap()).unwrap();
        w.put(&found("svc", CAN_READ)).unwrap();
        let i = w.index["svc"];
        let base = HEADER + i * SLOT;
        // A name length past the slot.
        let word0 = w.map.u64_at(base).unwrap();
        let good = word0.load(Ordering::Relaxed);
        word0.store(good | (200 << 24), Ordering::Relaxed);
        assert!(r.get("svc").unwrap().is_none() || r.get("svc").is_err());
        // An impossible state.
        word0.store(9, Ordering::Relaxed);
        assert_eq!(r.get("svc"), Err(ReadError::Corrupt("bad slot state")));
        // Access bits without "read", and a bad kind.
        word0.store(good & !0xff_0000 | (4 << 16), Ordering::Relaxed);
        assert!(matches!(r.get("svc"), Err(ReadError::Corrupt(_))));
        word0.store(good | (7 << 8), Ordering::Relaxed);
        assert!(matches!(r.get("svc"), Err(ReadError::Corrupt(_))));
        // A seqlock stuck odd: busy, not a hang.
        word0.store(good, Ordering::Relaxed);
        w.map.u64_at(H_SEQ).unwrap().store(w.seq + 1, Ordering::Relaxed);
        assert_eq!(r.get("svc"), Err(ReadError::Busy));
        // A heartbeat that stopped: stale.
        w.map.u64_at(H_SEQ).unwrap().store(w.seq, Ordering::Relaxed);
        w.map.u64_at(H_BEAT).unwrap().store(1, Ordering::Relaxed);
        assert_eq!(r.get("svc"), Err(ReadError::Stale));
    }
}
