//! The child side: runs the role the parent asked for, then exits.
//!
//! A role is a plain function that panics on failure (libtest then exits
//! with a non-zero status) and reports what it saw with
//! [`report`](super::harness::report); the parent makes the assertions.

use super::harness::ROLE_VAR;
use super::{cred, eof, fifo, inherit, rendezvous, rpc, scm, typed};

/// Runs the role named in the environment and exits; returns at once when
/// there is none (in the parent, where `child_main` is an ordinary test).
pub fn main() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let run: fn() = match role.as_str() {
        "inherit-fds" => inherit::child_list_fds,
        "inherit-names" => inherit::child_take_by_name,
        "eof-recv-n" => eof::child_recv_n,
        "eof-hold" => eof::child_hold,
        "eof-bind-hold" => eof::child_bind_hold,
        "fifo-reader" => fifo::child_reader,
        "fifo-writer" => fifo::child_writer,
        "fifo-many" => fifo::child_many_writer,
        "cred-connect" => cred::child_connect,
        "scm-receiver" => scm::child_take_receiver,
        "scm-fd" => scm::child_take_fd,
        "scm-conn" => scm::child_take_connection,
        "scm-many-fds" => scm::child_take_many_fds,
        "rdv-sender" => rendezvous::child_sender,
        "rdv-withdraw" => rendezvous::child_withdraw,
        "rdv-continue" => rendezvous::child_continue,
        "rpc-server" => rpc::child_server,
        "typed-echo" => typed::child_echo,
        "typed-garbage" => typed::child_garbage,
        other => panic!("unknown child role {other:?}"),
    };
    run();
    std::process::exit(0);
}
