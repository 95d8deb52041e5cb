//! Create, open, open-or-create and remove; sizes, owner and mode, also as
//! the kernel records them on the object in `/dev/shm`.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

use ipckit::perm::Owner;
use ipckit::shm::{Offset, Segment, HEADER_LEN, MAX_SEGMENT};
use ipckit::Error;

use super::harness::{param, report, shm_path, spawn, what, Named};

fn read_vec(seg: &Segment, off: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    seg.read(Offset::new(off), &mut buf).unwrap_or_else(|e| panic!("read {len} bytes at {off}: {e}"));
    buf
}

#[test]
fn create_open_open_or_create_and_remove() {
    let n = Named::new("life");
    let name = n.name();
    let a = Segment::create(name, 4096, 0o600).unwrap();
    assert_eq!(a.name(), name);
    a.write(Offset::new(10), b"first").unwrap();

    // A second create fails and leaves the first one as it was.
    match Segment::create(name, 8192, 0o666) {
        Err(Error::AlreadyExists(m)) => assert!(m.contains(name), "{m}"),
        other => panic!("create twice: {}", what(&other)),
    }
    assert_eq!(read_vec(&a, 10, 5), b"first");
    let md = std::fs::metadata(n.path()).unwrap();
    assert_eq!(md.len(), (HEADER_LEN + 4096) as u64, "the failed create resized the object");
    assert_eq!(md.mode() & 0o7777, 0o600, "the failed create changed the mode");

    // Open sees the same bytes, and writes go both ways.
    let b = Segment::open(name).unwrap();
    assert_eq!(b.len(), 4096);
    assert_eq!(read_vec(&b, 10, 5), b"first");
    b.atomic_u64(Offset::new(64)).unwrap().store(0xfeed_f00d, Ordering::SeqCst);
    assert_eq!(a.atomic_u64(Offset::new(64)).unwrap().load(Ordering::SeqCst), 0xfeed_f00d);

    // open_or_create of an existing name opens it: its size and mode, not the ones asked.
    let c = Segment::open_or_create(name, 100, 0o666).unwrap();
    assert_eq!(c.len(), 4096);
    assert_eq!(c.owner().mode, 0o600);
    assert_eq!(read_vec(&c, 10, 5), b"first");
    c.write(Offset::new(30), b"from c").unwrap();
    assert_eq!(read_vec(&a, 30, 6), b"from c");

    // Opening a missing name is NotFound; open_or_create creates it.
    let m = Named::new("missing");
    match Segment::open(m.name()) {
        Err(Error::NotFound(msg)) => assert!(msg.contains(m.name()), "{msg}"),
        other => panic!("open of a missing name: {}", what(&other)),
    }
    assert!(!m.path().exists(), "a failed open created {}", m.path().display());
    let d = Segment::open_or_create(m.name(), 100, 0o640).unwrap();
    assert_eq!((d.len(), d.owner().mode), (100, 0o640));
    assert_eq!(read_vec(&d, 0, 100), vec![0u8; 100], "a new segment is zeroed");

    // Remove frees the name at once...
    Segment::remove(name).unwrap();
    assert!(!n.path().exists(), "{} is still there", n.path().display());
    assert!(matches!(Segment::open(name), Err(Error::NotFound(_))), "open after remove");
    assert!(matches!(Segment::remove(name), Err(Error::NotFound(_))), "remove twice");
    // ...while the mappings that exist keep working and keep sharing.
    a.write(Offset::new(20), b"after remove").unwrap();
    assert_eq!(read_vec(&b, 20, 12), b"after remove");
    assert_eq!(read_vec(&c, 20, 12), b"after remove");
    assert_eq!(b.atomic_u64(Offset::new(64)).unwrap().fetch_add(1, Ordering::SeqCst), 0xfeed_f00d);

    // The name can be used again: a new, zeroed segment, unrelated to the old one.
    let e = Segment::create(name, 4096, 0o600).unwrap();
    assert_eq!(read_vec(&e, 0, 4096), vec![0u8; 4096]);
    e.write(Offset::new(10), b"NEW!!").unwrap();
    assert_eq!(read_vec(&a, 10, 5), b"first", "the old mapping sees the new segment");
    assert_eq!(read_vec(&Segment::open(name).unwrap(), 10, 5), b"NEW!!");
}

#[test]
fn len_owner_creator_and_the_object_in_dev_shm() {
    let (uid, gid) = (ipckit::euid(), ipckit::egid());
    for (size, mode) in [(1, 0o600), (3, 0o000), (4096, 0o640), (5000, 0o604), (1 << 20, 0o666)] {
        let n = Named::new("meta");
        let s = Segment::create(n.name(), size, mode).unwrap();
        assert_eq!(s.len(), size);
        assert!(!s.is_empty());
        assert_eq!(s.owner(), Owner { uid, gid, mode }, "size {size}");
        assert_eq!(s.creator_pid(), std::process::id());
        assert!(!s.is_stale(), "our own segment is stale");

        let md = std::fs::metadata(n.path()).unwrap();
        assert_eq!(md.len(), (HEADER_LEN + size) as u64);
        assert_eq!(md.mode() & 0o7777, mode, "mode on {} (asked {mode:o})", n.path().display());
        assert_eq!((md.uid(), md.gid()), (uid, gid));

        // Exactly `size` usable bytes, zeroed.
        assert_eq!(read_vec(&s, 0, size), vec![0u8; size]);
        s.write(Offset::new(size - 1), &[0xab]).unwrap();
        assert!(matches!(s.write(Offset::new(size), &[1]), Err(Error::Corrupted(_))), "write past the end");
        assert!(matches!(s.read(Offset::new(size - 1), &mut [0; 2]), Err(Error::Corrupted(_))));
        assert!(s.write(Offset::new(0), &vec![7u8; size + 1]).is_err(), "write longer than the segment");

        // Another handle reads the same record.
        let o = Segment::open(n.name()).unwrap();
        assert_eq!(
            (o.len(), o.owner(), o.creator_pid()),
            (size, Owner { uid, gid, mode }, std::process::id())
        );
        assert_eq!(read_vec(&o, size - 1, 1), [0xab]);
    }

    // Mode bits beyond rwx are dropped, on the object and in the header.
    let n = Named::new("suid");
    let s = Segment::create(n.name(), 64, 0o6755).unwrap();
    assert_eq!(s.owner().mode, 0o755);
    assert_eq!(std::fs::metadata(n.path()).unwrap().mode() & 0o7777, 0o755);

    // Sizes out of range are refused and leave nothing behind.
    for size in [0, MAX_SEGMENT + 1, usize::MAX - HEADER_LEN + 1, usize::MAX] {
        let n = Named::new("badsize");
        match Segment::create(n.name(), size, 0o600) {
            Err(Error::InvalidName { why, .. }) => assert!(why.contains("size"), "{why}"),
            other => panic!("create of {size} bytes: {}", what(&other)),
        }
        assert!(!n.path().exists(), "a refused create left {}", n.path().display());
    }
}

/// Child: sets its umask to 0o077 and creates the segments in `SEGS`
/// (`name:octal-mode` separated by `;`).
pub(super) fn child_umask_create() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    for seg in param("SEGS").split(';') {
        let (name, mode) = seg.split_once(':').expect("name:mode");
        let mode = u32::from_str_radix(mode, 8).expect("octal mode");
        let r = Segment::create(name, 256, mode);
        report(format!("create {name} {}", what(&r)));
    }
}

#[test]
fn the_umask_does_not_change_the_mode() {
    let modes = [0o666, 0o644, 0o660, 0o606, 0o777];
    let names: Vec<Named> = modes.iter().map(|_| Named::new("umask")).collect();
    let segs: Vec<String> = names.iter().zip(modes).map(|(n, m)| format!("{}:{m:o}", n.name())).collect();
    let segs = segs.join(";");
    let mut kid = spawn("umask-create", &[("SEGS", &segs)], Default::default());
    for n in &names {
        assert_eq!(kid.expect(&format!("create {}", n.name())), "ok");
    }
    kid.wait_success();
    for (n, mode) in names.iter().zip(modes) {
        let st = std::fs::metadata(shm_path(n.name())).unwrap();
        assert_eq!(st.mode() & 0o7777, mode, "{}: asked for {mode:o} under umask 077", n.name());
        assert_eq!(Segment::open(n.name()).unwrap().owner().mode, mode);
    }
}

#[test]
fn racing_open_or_create_all_get_the_same_segment() {
    const THREADS: u32 = 4;
    for round in 0..200 {
        let n = Named::new("race");
        let barrier = Arc::new(Barrier::new(THREADS as usize));
        let results: Vec<String> = std::thread::scope(|s| {
            let joins: Vec<_> = (0..THREADS)
                .map(|_| {
                    let barrier = barrier.clone();
                    let name = n.name();
                    s.spawn(move || {
                        barrier.wait();
                        let r = Segment::open_or_create(name, 64, 0o600);
                        if let Ok(seg) = &r {
                            seg.atomic_u32(Offset::new(0)).unwrap().fetch_add(1, Ordering::SeqCst);
                        }
                        match r {
                            Err(e) => format!("{e}"),
                            Ok(_) => "ok".into(),
                        }
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r, "ok", "round {round}: open_or_create racing {} others", THREADS - 1);
        }
        let seg = Segment::open(n.name()).unwrap();
        assert_eq!(seg.atomic_u32(Offset::new(0)).unwrap().load(Ordering::SeqCst), THREADS, "round {round}");
    }
}
