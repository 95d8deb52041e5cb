//! Cross-process tests: every test here runs real child processes.
//!
//! A child is this test binary run again with `--exact child_main` and the
//! role to play in `IPCKIT_TEST_ROLE` (see `process/harness.rs`); it gets its
//! IPC handles through [`ipckit::spawn::Inherit`] and reports back on its
//! stdout. Every blocking call has a generous timeout and every child is
//! killed and reaped when a test fails, so a bug fails a test instead of
//! hanging the run.
//!
//! | module | what |
//! |---|---|
//! | `inherit` | a child gets exactly the handles it is given, by name |
//! | `eof` | end of stream, and senders whose receiver process died |
//! | `fifo` | FIFO opens block as the kernel's do; their timeouts; several writers |
//! | `cred` | kernel-verified peer credentials, also of an unprivileged child |
//! | `scm` | handles passed inside messages (`SCM_RIGHTS`) |
//! | `rendezvous` | rendezvous and bounded channels fed by several processes; a sender moving mid-stream |
//! | `rpc` | call timeouts, late replies, server death, hostile clients |
//! | `typed` | serde-typed channels and undecodable messages |

mod process {
    pub mod child;
    pub mod harness;

    mod cred;
    mod eof;
    mod fifo;
    mod inherit;
    mod rendezvous;
    mod rpc;
    mod scm;
    mod typed;
}

/// The entry point of every child process; a no-op in the parent.
#[test]
fn child_main() {
    process::child::main();
}
