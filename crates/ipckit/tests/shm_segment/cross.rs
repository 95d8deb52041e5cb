//! One segment, two processes: opened by name, inherited at spawn, and sent
//! inside a message over a UNIX socket.

use std::sync::atomic::Ordering;

use ipckit::shm::{Offset, Segment};
use ipckit::spawn::{self, Inherit};
use ipckit::{Connection, HandleKind, Message, SocketKind};

use super::harness::{param, report, spawn, wait_until, Kid, Named, LONG};

const SIZE: usize = 8192;
/// Increments each side makes to the shared counter.
const ADDS: u64 = 100_000;
// Layout of the user area in the counting test.
const GO: usize = 0;
const COUNTER: usize = 8;
const PARENT_BYTES: usize = 100;
const PARENT_WORD: usize = 200;
const CHILD_WORD: usize = 204;
const CHILD_BYTES: usize = 301; // odd: byte copies need no alignment
const PARENT_TAIL: usize = SIZE - 8;
const CHILD_TAIL: usize = SIZE - 13;

fn read_vec(seg: &Segment, off: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    seg.read(Offset::new(off), &mut buf).expect("read");
    buf
}

/// Child: opens `NAME`, reports what the parent left in it, writes its own
/// pattern, then adds to the counter as fast as it can once the parent says go.
pub(super) fn child_count() {
    let seg = Segment::open(&param("NAME")).expect("open by name");
    let bytes = String::from_utf8_lossy(&read_vec(&seg, PARENT_BYTES, 11)).into_owned();
    let word = seg.atomic_u32(Offset::new(PARENT_WORD)).unwrap().load(Ordering::Acquire);
    let tail = seg.atomic_u64(Offset::new(PARENT_TAIL)).unwrap().load(Ordering::Acquire);
    report(format!("saw {} {} {bytes} {word:#x} {tail:#x}", seg.len(), seg.creator_pid()));
    seg.write(Offset::new(CHILD_BYTES), b"from-child").unwrap();
    seg.write(Offset::new(CHILD_TAIL), &[7; 5]).unwrap();
    seg.atomic_u32(Offset::new(CHILD_WORD)).unwrap().store(0xbeef, Ordering::Release);
    report("ready");
    let go = seg.atomic_u32(Offset::new(GO)).unwrap();
    assert!(wait_until(|| go.load(Ordering::Acquire) == 1), "the parent never said go");
    let counter = seg.atomic_u64(Offset::new(COUNTER)).unwrap();
    for _ in 0..ADDS {
        counter.fetch_add(1, Ordering::AcqRel);
    }
    report("added");
}

#[test]
fn a_child_opens_by_name_and_both_count_exactly() {
    let n = Named::new("count");
    let seg = Segment::create(n.name(), SIZE, 0o600).unwrap();
    seg.write(Offset::new(PARENT_BYTES), b"from-parent").unwrap();
    seg.atomic_u32(Offset::new(PARENT_WORD)).unwrap().store(0xc0ffee, Ordering::Release);
    seg.atomic_u64(Offset::new(PARENT_TAIL)).unwrap().store(0x1122_3344_5566_7788, Ordering::Release);

    let mut kid = spawn("shm-count", &[("NAME", n.name())], Inherit::new());
    let me = std::process::id();
    assert_eq!(kid.expect("saw"), format!("{SIZE} {me} from-parent 0xc0ffee 0x1122334455667788"));
    assert_eq!(kid.report(), "ready");
    assert_eq!(read_vec(&seg, CHILD_BYTES, 10), b"from-child");
    assert_eq!(read_vec(&seg, CHILD_TAIL, 5), [7; 5]);
    assert_eq!(seg.atomic_u32(Offset::new(CHILD_WORD)).unwrap().load(Ordering::Acquire), 0xbeef);
    // Neither side's writes spilled over the other's.
    assert_eq!(read_vec(&seg, PARENT_BYTES, 11), b"from-parent");
    assert_eq!(
        seg.atomic_u64(Offset::new(PARENT_TAIL)).unwrap().load(Ordering::Acquire),
        0x1122_3344_5566_7788
    );

    seg.atomic_u32(Offset::new(GO)).unwrap().store(1, Ordering::Release);
    let counter = seg.atomic_u64(Offset::new(COUNTER)).unwrap();
    for _ in 0..ADDS {
        counter.fetch_add(1, Ordering::AcqRel);
    }
    assert_eq!(kid.report(), "added");
    kid.wait_success();
    assert_eq!(counter.load(Ordering::Acquire), 2 * ADDS, "increments were lost between processes");
}

/// Child: takes the inherited segment "seg", reports what it is, and marks it.
pub(super) fn child_inherit() {
    let seg: Segment = spawn::inherited("seg").expect("inherited segment");
    let mut buf = [0u8; 6];
    seg.read(Offset::new(0), &mut buf).unwrap();
    report(format!("got {} {} {}", seg.name(), seg.len(), String::from_utf8_lossy(&buf)));
    seg.write(Offset::new(16), b"child was here").unwrap();
    seg.atomic_u64(Offset::new(40)).unwrap().fetch_add(41, Ordering::AcqRel);
}

#[test]
fn a_segment_is_inherited_at_spawn() {
    // Also once its name is gone: the child gets the object, not the name.
    for unlink_first in [false, true] {
        let n = Named::new("inherit");
        let seg = Segment::create(n.name(), 4096, 0o600).unwrap();
        seg.write(Offset::new(0), b"parent").unwrap();
        seg.atomic_u64(Offset::new(40)).unwrap().store(1, Ordering::Release);
        if unlink_first {
            Segment::remove(n.name()).unwrap();
        }
        let mut kit = Inherit::new();
        kit.pass("seg", seg.clone()).unwrap();
        let mut kid = spawn("shm-inherit", &[], kit);
        assert_eq!(kid.expect("got"), format!("{} 4096 parent", n.name()), "unlinked first: {unlink_first}");
        kid.wait_success();
        assert_eq!(read_vec(&seg, 16, 14), b"child was here", "unlinked first: {unlink_first}");
        assert_eq!(seg.atomic_u64(Offset::new(40)).unwrap().load(Ordering::Acquire), 42);
        assert_eq!(n.path().exists(), !unlink_first);
    }
}

/// Child: takes every segment out of the first message on the inherited
/// connection "ctl", writes the message text into each, and answers.
pub(super) fn child_scm() {
    let mut ctl: Connection = spawn::inherited("ctl").expect("inherited ctl");
    let mut msg = ctl.recv_timeout(LONG).expect("recv on ctl");
    let kinds: Vec<String> = msg.handles().iter().map(|h| format!("{:?}", h.kind())).collect();
    report(format!("handles {}", kinds.join(",")));
    let text = msg.bytes().to_vec();
    let mut names = Vec::new();
    while !msg.handles().is_empty() {
        let seg: Segment = msg.take().expect("take a segment");
        seg.write(Offset::new(8), &text).unwrap();
        seg.atomic_u32(Offset::new(0)).unwrap().fetch_add(1, Ordering::AcqRel);
        names.push(format!("{}:{}", seg.name(), seg.len()));
    }
    ctl.send_timeout(names.join(","), LONG).expect("answer on ctl");
}

fn child_with_ctl(kind: SocketKind) -> (Kid, Connection) {
    let (mine, theirs) = Connection::pair(kind).unwrap();
    let mut kit = Inherit::new();
    kit.pass("ctl", theirs).unwrap();
    (spawn("shm-scm", &[], kit), mine)
}

#[test]
fn segments_travel_inside_messages() {
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        let named = Named::new("scm-named");
        let gone = Named::new("scm-gone");
        let a = Segment::create(named.name(), 1000, 0o600).unwrap();
        let b = Segment::create(gone.name(), 2000, 0o600).unwrap();
        // The second one has no name any more by the time it travels.
        Segment::remove(gone.name()).unwrap();
        let (mut kid, mut ctl) = child_with_ctl(kind);
        let msg = Message::new("hello segment").with(a.clone()).unwrap().with(b.clone()).unwrap();
        ctl.send_timeout(msg, LONG).unwrap();
        let seg_kind = format!("{:?}", HandleKind::Segment);
        assert_eq!(kid.expect("handles"), format!("{seg_kind},{seg_kind}"), "{kind:?}");
        let answer = ctl.recv_timeout(LONG).unwrap();
        assert_eq!(
            String::from_utf8_lossy(answer.bytes()),
            format!("{}:1000,{}:2000", named.name(), gone.name()),
            "{kind:?}"
        );
        kid.wait_success();
        for seg in [&a, &b] {
            assert_eq!(read_vec(seg, 8, 13), b"hello segment", "{kind:?} {}", seg.name());
            assert_eq!(seg.atomic_u32(Offset::new(0)).unwrap().load(Ordering::Acquire), 1);
        }
    }
}
