//! `ipckit`: see, drive and measure interprocess communication from the shell.
//!
//! Each subcommand lives in its own module; this file only parses the command
//! line, sets up logging and turns a failure into a message and an exit code.

// Only bench::raw (System V, POSIX mq and signal calls through libc) allows unsafe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod bench;
mod error;
mod mq;
mod naming;
mod object;
mod sem;
mod tour;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ipckit: interprocess communication for Rust, from the command line.
#[derive(Debug, Parser)]
#[command(
    name = "ipckit",
    version,
    about = "Interprocess communication, from the command line",
    long_about = "Interprocess communication, from the command line.\n\n\
        ipckit puts every classic Unix IPC mechanism (pipes, FIFOs, UNIX sockets, RPC with \
        timeouts, shared memory, System V-style message queues and semaphores) behind one API. \
        This tool drives them from the shell and runs and explains them with real processes.\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see them.\n\n\
        Exit status: 0 done; 1 error, with one line on stderr (\"ipckit: error: ...\"), a bad \
        command line included; 2 (mq, sem, call, recv) nothing done because it would have had to wait: \
        --nowait found nothing to take or no room, or --timeout ran out.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the IPC chapter's examples (pipe, FIFO, RPC, queue, semaphore, drawing, signals) as real, narrated processes
    #[command(long_about = "Run the IPC chapter's examples as real, narrated processes.\n\n\
            The tour re-executes this binary as child processes and narrates every step on \
            stdout: which process (and pid) does what, what blocks and for how long.\n\n\
            Scenes, in order:\n  \
            pipe       an anonymous pipe handed to a child, ten messages, then end-of-file\n  \
            fifo       a named pipe whose reader blocks in open() until a writer comes\n  \
            rpc        calls over a UNIX socket, a timeout against a silent server, a dead server\n  \
            queue      a typed message queue: two receivers each take only their own type; \
            a negative type takes the lowest type first; msgctl stat\n  \
            semaphore  workers take turns in a critical section (P/V); a holder killed with \
            SIGKILL inside it does not block the others: its P is undone (SEM_UNDO)\n  \
            drawing    the naming server: a service registers \"draw\" with a policy, an allowed \
            client draws, a client of another uid is refused (needs root, else skipped)\n  \
            signals    handlers for SIGIO and SIGUSR1 report the sender's pid from the kernel; one \
            signal to a process group stops three children\n\n\
            Every blocking step has a timeout, so the tour cannot hang; it takes a few seconds.")]
    Tour(tour::TourArgs),

    /// System V-style typed message queues: create, send, recv, stat, rm
    #[command(long_about = "System V-style typed message queues (msgget, msgsnd, msgrcv, msgctl), \
            kept in shared memory, or in a file for a durable queue.\n\n\
            A queue and its messages stay until `ipckit mq rm`, after every process exits.")]
    Mq(mq::MqArgs),

    /// System V-style semaphore sets: create, op, stat, rm
    #[command(long_about = "System V-style semaphore sets (semget, semop, semctl), kept in shared \
            memory.\n\n\
            A set and its values stay until `ipckit sem rm`, after every process exits.")]
    Sem(sem::SemArgs),

    /// Run the naming server in the foreground (stop it with SIGTERM or Ctrl-C)
    #[command(long_about = "Run the naming server in the foreground until SIGTERM or SIGINT \
            (Ctrl-C), then remove its socket.\n\n\
            Services register names with it and clients look them up; mailboxes live in it. \
            Every decision uses the caller's kernel-verified credentials (SO_PEERCRED). \
            Logs go to stderr (RUST_LOG, default info).")]
    Serve(naming::ServeArgs),

    /// List every live ipckit object you may see, like ipcs
    #[command(long_about = "List every live ipckit object you may see, like ipcs: the naming \
            server's services and mailboxes, and the shared-memory objects in /dev/shm \
            (segments, queues, semaphore sets, rings, RPC slots, pub-sub rings, pools, events), \
            with owner, group, mode, size or messages, creator pid, last activity, and whether \
            the creator is gone (stale).\n\n\
            With no naming server running, says so on stderr and lists shared memory only.")]
    Ls(naming::LsArgs),

    /// Show one object (naming server name, else shared-memory object)
    Stat(naming::StatArgs),

    /// Remove an object (its owner or root), or every stale shared-memory object
    Rm(naming::RmArgs),

    /// Call a service registered with the naming server and print its reply
    Call(naming::CallArgs),

    /// Send a message to a mailbox at the naming server
    Send(naming::SendArgs),

    /// Receive (and print) one message from a mailbox at the naming server
    Recv(naming::RecvArgs),

    /// Measure every mechanism side by side between two processes: latency, throughput, plots
    #[command(long_about = "Measure every mechanism side by side between two real processes.\n\n\
            Round-trip latency (median, p99, p99.9) and one-way throughput (messages/s, bytes/s) \
            over message sizes, for the raw kernel primitives (the busy-spin and futex floors, \
            pipe, socketpair, seqpacket, TCP loopback, System V msgq and semaphores, POSIX mq, \
            eventfd, signals), ipckit's transports and an in-process memcpy; with `--features \
            peers`, also ipc-channel, interprocess and iceoryx2 (request-response, \
            publish-subscribe). Placements: pinned to two different CPUs, both on one CPU, \
            unpinned. Prints a table with each figure's ratio to the floor of its class (polling \
            or blocking) and a verdict (ratio, met or missed) for each goal of the tool (shm RPC \
            vs iceoryx2 and the floors, each transport vs the kernel primitive it wraps, typed \
            queue vs System V msgq); writes results.json (with the verdicts), results.csv, \
            verdicts.csv, latency.svg and throughput.svg. `--list` names the mechanisms.")]
    Bench(bench::BenchArgs),

    /// Internal: a child process of `ipckit bench` (not for direct use).
    #[command(name = "__bench-child", hide = true)]
    BenchChild(bench::ChildArgs),

    /// Internal: a child process of `ipckit tour` (not for direct use).
    #[command(name = "__tour-child", hide = true)]
    TourChild {
        /// The part this child plays.
        #[command(subcommand)]
        role: tour::ChildRole,
    },
}

fn main() -> ExitCode {
    // `serve` logs what it does by default; other commands only warnings.
    let serving = std::env::args_os().nth(1).is_some_and(|a| a == "serve");
    init_logging(if serving { "info" } else { "warn" });
    // A bad command line exits with 1 like any other error: 2 means "would
    // have had to wait" (`--nowait`, `--timeout`), and must not be ambiguous.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(error::EXIT_FAILURE) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Tour(args) => tour::run(&args),
        Command::Mq(args) => mq::run(args),
        Command::Sem(args) => sem::run(args),
        Command::Serve(args) => naming::serve(&args),
        Command::Ls(args) => naming::ls(&args),
        Command::Stat(args) => naming::stat(&args),
        Command::Rm(args) => naming::rm(&args),
        Command::Call(args) => naming::call(&args),
        Command::Send(args) => naming::send(&args),
        Command::Recv(args) => naming::recv(&args),
        Command::TourChild { role } => tour::run_child(role),
        Command::Bench(args) => bench::run(&args),
        Command::BenchChild(args) => bench::run_child(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_would_block() => {
            eprintln!("ipckit: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            eprintln!("ipckit: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs (tracing) go to stderr, filtered by `RUST_LOG` (default: `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
