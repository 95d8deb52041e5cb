//! Segment names: validated before anything touches `/dev/shm`, with a reason.

use ipckit::shm::{Segment, PREFIX};
use ipckit::Error;

use super::harness::{shm_path, Named};

/// Asserts that `r` is `InvalidName` for `name`, saying `why`.
fn invalid<T>(op: &str, name: &str, why: &str, r: ipckit::Result<T>) {
    let e = match r {
        Err(e) => e,
        Ok(_) => panic!("{op} {name:?}: expected InvalidName, got ok"),
    };
    let shown = e.to_string();
    let Error::InvalidName { name: got, why: reason } = e else {
        panic!("{op} {name:?}: expected InvalidName, got {shown}")
    };
    assert_eq!(got, name, "{op}: the error names another name");
    assert!(reason.contains(why), "{op} {name:?}: reason {reason:?} does not mention {why:?}");
    assert!(shown.contains(why) && shown.contains(&format!("{name:?}")), "{op}: message {shown:?}");
}

#[test]
fn bad_names_are_refused_with_a_reason() {
    let long = "a".repeat(201);
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("a/b", "'/'"),
        ("/abs", "'/'"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        ("../etc", "'..'"),
        (&long, "200"),
        ("nul\0byte", "NUL"),
        ("\0", "NUL"),
        ("ünicode", "letters, digits"),
        ("sp ace", "letters, digits"),
        ("new\nline", "letters, digits"),
        ("star*", "letters, digits"),
    ];
    for &(name, why) in cases {
        invalid("create", name, why, Segment::create(name, 64, 0o600));
        invalid("open", name, why, Segment::open(name));
        invalid("open_or_create", name, why, Segment::open_or_create(name, 64, 0o600));
        invalid("remove", name, why, Segment::remove(name));
        if !name.contains(['/', '\0']) && !name.is_empty() && name != ".." {
            assert!(!shm_path(name).exists(), "{name:?} reached /dev/shm");
        }
    }
    // A name longer than 200 bytes is refused even when every byte is fine.
    let n = Named::padded("long", 201);
    invalid("create", n.name(), "200", Segment::create(n.name(), 64, 0o600));
    assert!(!n.path().exists());
}

#[test]
fn good_names_work_up_to_200_bytes() {
    for n in [Named::padded("len200", 200), Named::new("Mixed_Case-0.9"), Named::padded("n", 199)] {
        let name = n.name();
        assert!(name.len() <= 200);
        let s = Segment::create(name, 64, 0o600).unwrap_or_else(|e| panic!("create {name:?}: {e}"));
        assert_eq!(s.name(), name);
        assert!(n.path().exists(), "{name:?} is not at {}", n.path().display());
        assert!(n.path().to_str().unwrap().ends_with(&format!("{PREFIX}{name}")));
        assert_eq!(Segment::open(name).unwrap().len(), 64);
        Segment::remove(name).unwrap();
        assert!(!n.path().exists());
    }
    assert_eq!(Named::padded("len200", 200).name().len(), 200);
}
