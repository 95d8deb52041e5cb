//! The child side: runs the role the parent asked for, then exits.
//!
//! A role is a plain function that panics on failure (libtest then exits
//! with a non-zero status) and reports what it saw with
//! [`report`](super::harness::report); the parent makes the assertions.

use super::harness::ROLE_VAR;
use super::{basics, cross, hostile, perms, stale};

/// Runs the role named in the environment and exits; returns at once when
/// there is none (in the parent, where `child_main` is an ordinary test).
pub fn main() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let run: fn() = match role.as_str() {
        "umask-create" => basics::child_umask_create,
        "shm-count" => cross::child_count,
        "shm-inherit" => cross::child_inherit,
        "shm-scm" => cross::child_scm,
        "shm-probe" => perms::child_probe,
        "shm-create" => stale::child_create,
        "shm-remove" => hostile::child_remove,
        "shm-shrunk" => hostile::child_shrunk,
        other => panic!("unknown child role {other:?}"),
    };
    run();
    std::process::exit(0);
}
