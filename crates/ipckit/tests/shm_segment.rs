//! Named shared-memory segments ([`ipckit::shm::Segment`]), in one process
//! and across several.
//!
//! A child is this test binary run again with `--exact child_main` and the
//! role to play in `IPCKIT_TEST_ROLE` (see `shm_segment/harness.rs`). Every
//! segment name is unique to the process and test, and is removed when the
//! test ends, passed or failed. Every blocking wait has a generous timeout.
//!
//! | module | what |
//! |---|---|
//! | `basics` | create/open/open-or-create/remove, sizes, owner, the mode on `/dev/shm`, racing creators |
//! | `names` | name validation and its messages |
//! | `cross` | a child by name (atomics and bytes), by inheritance, inside a message |
//! | `perms` | another uid: kernel and ipckit checks, groups, who may remove (needs root) |
//! | `hostile` | corrupted headers, wrong sizes, foreign objects, random scribbles |
//! | `stale` | segments whose creator is gone |

mod shm_segment {
    pub mod child;
    pub mod harness;

    mod basics;
    mod cross;
    mod hostile;
    mod names;
    mod perms;
    mod stale;
}

/// The entry point of every child process; a no-op in the parent.
#[test]
fn child_main() {
    shm_segment::child::main();
}
