//! Stale segments: the creator is gone, the segment is left over.

use std::sync::atomic::Ordering;

use ipckit::shm::{Offset, Segment};

use super::harness::{param, report, spawn, wait_until, Named};

/// Child: creates `NAME` and, with `HOLD` set, stays alive until the parent
/// writes 1 at offset 0.
pub(super) fn child_create() {
    let seg = Segment::create(&param("NAME"), 128, 0o600).expect("create");
    report(format!("created {}", std::process::id()));
    if std::env::var("HOLD").is_ok() {
        let word = seg.atomic_u32(Offset::new(0)).unwrap();
        assert!(wait_until(|| word.load(Ordering::Acquire) == 1), "the parent never let go");
    }
}

#[test]
fn a_segment_whose_creator_exited_is_stale() {
    let n = Named::new("stale");
    let mut kid = spawn("shm-create", &[("NAME", n.name())], Default::default());
    assert_eq!(kid.expect("created"), kid.id().to_string());
    kid.wait_success();
    let seg = Segment::open(n.name()).unwrap();
    assert_eq!(seg.creator_pid(), kid.id());
    assert!(seg.is_stale(), "the creator {} has exited", kid.id());
    assert_eq!(seg.owner().uid, ipckit::euid());

    let ours = Named::new("fresh");
    let mine = Segment::create(ours.name(), 64, 0o600).unwrap();
    assert!(!mine.is_stale(), "a segment we created is stale");
    assert!(!Segment::open(ours.name()).unwrap().is_stale());
}

#[test]
fn a_segment_goes_stale_when_its_creator_dies() {
    for kill in [false, true] {
        let n = Named::new("dies");
        let mut kid = spawn("shm-create", &[("NAME", n.name()), ("HOLD", "1")], Default::default());
        assert_eq!(kid.expect("created"), kid.id().to_string());
        let seg = Segment::open(n.name()).unwrap();
        assert_eq!(seg.creator_pid(), kid.id());
        assert!(!seg.is_stale(), "the creator is alive");
        if kill {
            kid.kill();
        } else {
            seg.atomic_u32(Offset::new(0)).unwrap().store(1, Ordering::Release);
            kid.wait_success();
        }
        // The same handle notices: staleness is checked when asked.
        assert!(seg.is_stale(), "creator gone (killed: {kill})");
        assert!(Segment::open(n.name()).unwrap().is_stale());
    }
}
