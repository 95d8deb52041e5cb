//! Permissions against another user: the kernel's file mode and ipckit's own
//! owner/group/mode check on the header both apply.
//!
//! The tests run as root; a child drops to another identity with the raw
//! per-thread system calls (Linux credentials belong to threads) and does
//! every operation on that same thread.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::Ordering;

use ipckit::perm::Owner;
use ipckit::shm::{Offset, Segment};
use rustix::process::{Gid, Uid};

use super::harness::{param, report, spawn, what, Kid, Named};

/// `nobody`/`nogroup`.
const NOBODY: u32 = 65534;
/// A user and group nobody else uses.
const STRANGER: u32 = 4242;

fn skip_unless_root(test: &str) -> bool {
    if ipckit::euid() != 0 {
        eprintln!("note: skipping {test}: it needs root to run a child as another user");
        return true;
    }
    false
}

/// Child: takes the identity in `GROUPS` (comma-separated), `GID` and `UID`
/// (each optional, in that order), then runs `OPS` (`verb:name[:mode]`
/// separated by `;`) and reports each outcome.
pub(super) fn child_probe() {
    let groups: Vec<Gid> = std::env::var("GROUPS")
        .unwrap_or_default()
        .split(',')
        .filter(|g| !g.is_empty())
        .map(|g| Gid::from_raw(g.parse().expect("GROUPS")))
        .collect();
    rustix::thread::set_thread_groups(&groups).expect("setgroups");
    if let Ok(gid) = std::env::var("GID") {
        rustix::thread::set_thread_gid(Gid::from_raw(gid.parse().expect("GID"))).expect("setgid");
    }
    if let Ok(uid) = std::env::var("UID") {
        rustix::thread::set_thread_uid(Uid::from_raw(uid.parse().expect("UID"))).expect("setuid");
    }
    report(format!("ids {} {}", ipckit::euid(), ipckit::egid()));
    for op in param("OPS").split(';') {
        let mut parts = op.split(':');
        let (verb, name) = (parts.next().unwrap(), parts.next().expect("verb:name"));
        let outcome = match verb {
            // Open, and prove it by writing and reading back.
            "open" => what(&Segment::open(name).and_then(|s| {
                s.write(Offset::new(0), b"W")?;
                s.atomic_u32(Offset::new(4)).map(|w| w.fetch_add(1, Ordering::AcqRel))
            })),
            "remove" => what(&Segment::remove(name)),
            "create" => {
                let mode = u32::from_str_radix(parts.next().expect("create:name:mode"), 8).expect("mode");
                what(&Segment::create(name, 64, mode))
            }
            other => panic!("unknown op {other}"),
        };
        report(format!("{verb} {name} {outcome}"));
    }
}

/// Runs `ops` in a child with identity `ids` and checks each outcome in turn.
fn probe(ids: &[(&str, &str)], ops: &[(&str, &Named, &str)]) -> Kid {
    let list: Vec<String> = ops
        .iter()
        .map(|(verb, n, _)| match verb.split_once(':') {
            Some((v, mode)) => format!("{v}:{}:{mode}", n.name()),
            None => format!("{verb}:{}", n.name()),
        })
        .collect();
    let list = list.join(";");
    let mut env = ids.to_vec();
    env.push(("OPS", &list));
    let mut kid = spawn("shm-probe", &env, Default::default());
    let want = |key: &str| ids.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
    let uid = want("UID").unwrap_or_else(|| ipckit::euid().to_string());
    let gid = want("GID").unwrap_or_else(|| ipckit::egid().to_string());
    assert_eq!(kid.expect("ids"), format!("{uid} {gid}"), "the child did not take its identity");
    for (verb, n, outcome) in ops {
        let verb = verb.split(':').next().unwrap();
        let got = kid.expect(&format!("{verb} {}", n.name()));
        assert_eq!(got, *outcome, "{verb} {} as {ids:?}", n.name());
    }
    kid.wait_success();
    kid
}

fn created(test: &str, mode: u32) -> (Named, Segment) {
    let n = Named::new(test);
    let s = Segment::create(n.name(), 64, mode).unwrap();
    (n, s)
}

const AS_NOBODY: &[(&str, &str)] = &[("GROUPS", ""), ("GID", "65534"), ("UID", "65534")];

#[test]
fn another_user_gets_what_the_mode_allows() {
    if skip_unless_root("another_user_gets_what_the_mode_allows") {
        return;
    }
    let (p600, _) = created("p600", 0o600);
    let (p660, _) = created("p660", 0o660);
    let (p604, _) = created("p604", 0o604);
    let (p606, s606) = created("p606", 0o606);
    let (p666, s666) = created("p666", 0o666);
    probe(
        AS_NOBODY,
        &[
            ("open", &p600, "PermissionDenied"),
            ("open", &p660, "PermissionDenied"),
            // Read alone is not enough: a segment is mapped read-write.
            ("open", &p604, "PermissionDenied"),
            ("open", &p606, "ok"),
            ("open", &p666, "ok"),
        ],
    );
    for s in [&s606, &s666] {
        let mut b = [0u8];
        s.read(Offset::new(0), &mut b).unwrap();
        assert_eq!(&b, b"W", "the other user's write did not land in {}", s.name());
        assert_eq!(s.atomic_u32(Offset::new(4)).unwrap().load(Ordering::Acquire), 1);
    }
}

#[test]
fn the_kernel_and_ipckit_both_check() {
    if skip_unless_root("the_kernel_and_ipckit_both_check") {
        return;
    }
    // The file is opened up behind ipckit's back: the header's 0o600 still refuses.
    let (header_closed, _) = created("hdr600", 0o600);
    std::fs::set_permissions(header_closed.path(), PermissionsExt::from_mode(0o666)).unwrap();
    // The header allows, the file does not: the kernel refuses.
    let (file_closed, _) = created("file600", 0o666);
    std::fs::set_permissions(file_closed.path(), PermissionsExt::from_mode(0o600)).unwrap();
    let (both_open, _) = created("both666", 0o666);
    probe(
        AS_NOBODY,
        &[
            ("open", &header_closed, "PermissionDenied"),
            ("open", &file_closed, "PermissionDenied"),
            ("open", &both_open, "ok"),
        ],
    );
}

#[test]
fn group_members_get_the_group_bits() {
    if skip_unless_root("group_members_get_the_group_bits") {
        return;
    }
    let grp = Named::new("grp660");
    let shared = NOBODY.to_string();
    let stranger = STRANGER.to_string();
    // Created by root acting in group `nogroup`: header and file get that group.
    probe(&[("GROUPS", ""), ("GID", &shared)], &[("create:660", &grp, "ok")]);
    let seg = Segment::open(grp.name()).unwrap();
    assert_eq!(seg.owner(), Owner { uid: 0, gid: NOBODY, mode: 0o660 });
    let md = std::fs::metadata(grp.path()).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, NOBODY, 0o660));

    // Member by primary group, member by a supplementary group, not a member.
    let member = [("GROUPS", ""), ("GID", shared.as_str()), ("UID", stranger.as_str())];
    probe(&member, &[("open", &grp, "ok")]);
    let supplementary = [("GROUPS", shared.as_str()), ("GID", stranger.as_str()), ("UID", stranger.as_str())];
    probe(&supplementary, &[("open", &grp, "ok")]);
    let outsider = [("GROUPS", ""), ("GID", stranger.as_str()), ("UID", stranger.as_str())];
    probe(&outsider, &[("open", &grp, "PermissionDenied")]);
    assert_eq!(seg.atomic_u32(Offset::new(4)).unwrap().load(Ordering::Acquire), 2);
}

#[test]
fn only_the_owner_or_root_removes() {
    if skip_unless_root("only_the_owner_or_root_removes") {
        return;
    }
    let (p600, _) = created("rm600", 0o600);
    let (p666, _) = created("rm666", 0o666);
    let mine = Named::new("rm-mine");
    let kept = Named::new("rm-kept");
    probe(
        AS_NOBODY,
        &[
            // Not the owner: refused, whether or not the mode lets it open the segment.
            ("remove", &p600, "PermissionDenied"),
            ("remove", &p666, "PermissionDenied"),
            // Its own segments: it owns, opens and removes them.
            ("create:600", &mine, "ok"),
            ("open", &mine, "ok"),
            ("remove", &mine, "ok"),
            ("open", &mine, "NotFound"),
            ("create:600", &kept, "ok"),
        ],
    );
    assert!(p600.path().exists() && p666.path().exists(), "a refused remove removed");
    Segment::open(p600.name()).unwrap();
    Segment::open(p666.name()).unwrap();
    assert!(!mine.path().exists());

    // What nobody created is nobody's, and root may still open and remove it.
    let seg = Segment::open(kept.name()).unwrap();
    assert_eq!(seg.owner(), Owner { uid: NOBODY, gid: NOBODY, mode: 0o600 });
    let md = std::fs::metadata(kept.path()).unwrap();
    assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY));
    Segment::remove(kept.name()).unwrap();
    assert!(!kept.path().exists());
}
