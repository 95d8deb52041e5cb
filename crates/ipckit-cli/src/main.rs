//! `ipckit`: see, drive and measure interprocess communication from the shell.
//!
//! Each subcommand lives in its own module; this file only parses the command
//! line, sets up logging and turns a failure into a message and an exit code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
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
        timeouts) behind one message API. This tool runs and explains them with real processes.\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to see them.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the IPC chapter's examples (pipe, FIFO, RPC) as real, narrated processes
    #[command(long_about = "Run the IPC chapter's examples as real, narrated processes.\n\n\
            The tour re-executes this binary as child processes and narrates every step on \
            stdout: which process (and pid) does what, what blocks and for how long.\n\n\
            Scenes, in order:\n  \
            pipe  an anonymous pipe handed to a child, ten messages, then end-of-file\n  \
            fifo  a named pipe whose reader blocks in open() until a writer comes\n  \
            rpc   calls over a UNIX socket, a timeout against a silent server, a dead server\n\n\
            Every blocking step has a timeout, so the tour cannot hang; it takes a few seconds.")]
    Tour(tour::TourArgs),

    /// Internal: a child process of `ipckit tour` (not for direct use).
    #[command(name = "__tour-child", hide = true)]
    TourChild {
        /// The part this child plays.
        #[command(subcommand)]
        role: tour::ChildRole,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tour(args) => tour::run(&args),
        Command::TourChild { role } => tour::run_child(role),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs (tracing) go to stderr, filtered by `RUST_LOG` (default: warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
