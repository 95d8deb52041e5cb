//! `ipckit tour`: the IPC chapter's examples, run as real processes and narrated.
//!
//! The tour process (the parent) re-executes its own binary
//! ([`std::env::current_exe`]) with the hidden `__tour-child` subcommand to get
//! the other side of each example: a real process with its own pid, handed
//! exactly the IPC handles it needs. Both sides narrate on stdout, each line
//! tagged with the process's role and pid.
//!
//! | scene | file | what it shows |
//! |---|---|---|
//! | pipe | [`pipe`] | an anonymous pipe handed to a child; ten messages; end-of-file |
//! | fifo | [`fifo`] | a named pipe: the reader blocks in `open()` until a writer comes |
//! | rpc  | [`rpc`]  | calls over a UNIX socket; a timeout; a call to a dead server |
//! | queue | [`queue`] | a typed queue; two receivers, each of its own type; `msgrcv` selection; stat |
//! | semaphore | [`semaphore`] | P/V around a critical section; a holder killed inside, its P undone |
//! | drawing | [`drawing`] | the naming server: a service registers "draw", an allowed client draws, another uid is refused |
//! | signals | [`signals`] | handlers for SIGIO and SIGUSR1 with the sender's pid; one signal stops a process group |
//! | endpoint | [`endpoint`] | microkernel IPC: badged capabilities, call/reply, a reply capability answered by another process, grant refused |
//!
//! Support: [`child`] (spawning, waiting with a timeout, killing and reaping),
//! [`narrate`] (the tagged output), [`procfs`] (what `/proc` says about a process),
//! [`scratch`] (the temporary directory for FIFOs and sockets).
//!
//! Every blocking step has a timeout, every child is reaped (and killed first
//! if the tour fails), and children die with the tour (`PR_SET_PDEATHSIG`).

mod child;
mod drawing;
mod endpoint;
mod fifo;
mod narrate;
mod pipe;
mod procfs;
mod queue;
mod rpc;
mod scratch;
mod semaphore;
mod signals;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};

use crate::error::{Context, Result};
use narrate::{fmt_duration, Actor};

/// Options of `ipckit tour`.
#[derive(Debug, Args)]
pub struct TourArgs {
    /// Scenes to run, in the chapter's order whatever the order given (default: all).
    #[arg(value_enum)]
    scenes: Vec<Scene>,
}

/// One scene of the tour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scene {
    /// Anonymous pipe to a child, ten messages, end-of-file.
    Pipe,
    /// Named pipe (FIFO) whose reader blocks until a writer opens it.
    Fifo,
    /// RPC over a UNIX socket: replies, a timeout, a dead server.
    Rpc,
    /// A typed message queue: two receivers, each taking its own type; lowest type first; stat.
    Queue,
    /// Semaphores: workers take turns in a critical section; a killed holder's P is undone.
    Semaphore,
    /// The naming server: a drawing service registers, an allowed client draws, another uid is refused.
    Drawing,
    /// Signals: handlers for SIGIO and SIGUSR1; one signal stops a process group.
    Signals,
    /// Microkernel endpoints: badged capabilities, call/reply, a reply capability handed to a worker.
    Endpoint,
}

/// The parts a tour child can play (`ipckit __tour-child <role>`).
#[derive(Debug, Subcommand)]
pub enum ChildRole {
    /// Reads the inherited pipe end "messages" until end-of-file.
    PipeReader {
        /// How many messages to expect before end-of-file.
        #[arg(long)]
        expect: usize,
    },
    /// Opens the FIFO at PATH for reading (blocking) and reads until end-of-file.
    FifoReader {
        /// The FIFO.
        path: PathBuf,
    },
    /// Serves RPC at the UNIX socket PATH, answering each request in upper case.
    EchoServer {
        /// Where to bind the socket.
        path: PathBuf,
    },
    /// Accepts RPC requests at the UNIX socket PATH and never answers them.
    SilentServer {
        /// Where to bind the socket.
        path: PathBuf,
    },
    /// Opens the message queue NAME and takes `--expect` messages of `--type`.
    QueueReceiver {
        /// The queue.
        name: String,
        /// The message type to take.
        #[arg(long = "type")]
        mtype: i64,
        /// How many messages to take.
        #[arg(long)]
        expect: usize,
    },
    /// Enters the critical section guarded by semaphore set NAME `--rounds` times.
    SemWorker {
        /// The semaphore set.
        name: String,
        /// How many times to enter.
        #[arg(long)]
        rounds: usize,
        /// The file that exists while someone is inside.
        #[arg(long)]
        marker: PathBuf,
    },
    /// Takes the semaphore of set NAME with undo and holds it until killed.
    SemHolder {
        /// The semaphore set.
        name: String,
    },
    /// Registers "draw" at the naming server at SOCKET and draws for each client.
    DrawService {
        /// The naming server's socket.
        socket: PathBuf,
    },
    /// Looks "draw" up at the naming server at SOCKET and asks for SHAPE.
    DrawClient {
        /// The naming server's socket.
        socket: PathBuf,
        /// What to draw.
        shape: String,
    },
    /// Looks "draw" up and expects to be refused (run as another uid).
    DrawStranger {
        /// The naming server's socket.
        socket: PathBuf,
    },
    /// Sends SIGIO then SIGUSR1 to process PID.
    SignalSender {
        /// The process to signal.
        pid: u32,
    },
    /// Marks itself ready by creating READY, then waits to be signalled.
    GroupMember {
        /// The file to create when ready.
        ready: PathBuf,
    },
    /// Calls the endpoint through the inherited capability "cap" as NAME.
    EndpointClient {
        /// The client's name.
        name: String,
    },
    /// Answers a call with the inherited reply capability "reply".
    EndpointWorker,
}

/// Runs the tour: each chosen scene in turn, in a fresh scratch directory.
///
/// # Errors
///
/// The first scene that fails (its children are killed and reaped first).
pub fn run(args: &TourArgs) -> Result<()> {
    let mut scenes =
        if args.scenes.is_empty() { Scene::value_variants().to_vec() } else { args.scenes.clone() };
    scenes.sort();
    scenes.dedup();

    let started = Instant::now();
    let me = Actor::me("tour");
    let exe = std::env::current_exe().context("finding this program's own path")?;
    let scratch = scratch::Scratch::create().context("creating the scratch directory")?;
    println!("ipckit tour: the IPC chapter's examples, run as real processes");
    me.say(format!("I am the tour process, pid {}", me.pid));
    me.say(format!("children are this same program re-executed: {} __tour-child <role>", exe.display()));
    me.say(format!("FIFOs and sockets go in {}", scratch.path().display()));

    for scene in &scenes {
        let result = match scene {
            Scene::Pipe => pipe::run(1),
            Scene::Fifo => fifo::run(2, &scratch),
            Scene::Rpc => rpc::run(3, &scratch),
            Scene::Queue => queue::run(4),
            Scene::Semaphore => semaphore::run(5, &scratch),
            Scene::Drawing => drawing::run(6, &scratch),
            Scene::Signals => signals::run(7, &scratch),
            Scene::Endpoint => endpoint::run(8),
        };
        let name = format!("{scene:?}").to_lowercase();
        result.map_err(|e| crate::error::Failure::new(format!("tour scene {name:?} failed: {e}")))?;
    }

    let dir = scratch.path().to_owned();
    scratch.remove().context("removing the scratch directory")?;
    println!();
    me.say(format!(
        "tour complete: {} scene(s) in {}; every child reaped, {} removed",
        scenes.len(),
        fmt_duration(started.elapsed()),
        dir.display()
    ));
    Ok(())
}

/// Runs one tour child (the hidden `__tour-child` subcommand).
///
/// # Errors
///
/// Whatever stops the child from playing its part; the tour sees a non-zero exit.
pub fn run_child(role: ChildRole) -> Result<()> {
    // If the tour dies, so do we: no orphan left blocked in open() or accept().
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("asking to die with the tour (PR_SET_PDEATHSIG)")?;
    tracing::debug!(?role, pid = std::process::id(), "tour child starting");
    match role {
        ChildRole::PipeReader { expect } => pipe::reader(expect),
        ChildRole::FifoReader { path } => fifo::reader(&path),
        ChildRole::EchoServer { path } => rpc::echo_server(&path),
        ChildRole::SilentServer { path } => rpc::silent_server(&path),
        ChildRole::QueueReceiver { name, mtype, expect } => queue::receiver(&name, mtype, expect),
        ChildRole::SemWorker { name, rounds, marker } => semaphore::worker(&name, rounds, &marker),
        ChildRole::SemHolder { name } => semaphore::holder(&name),
        ChildRole::DrawService { socket } => drawing::service(&socket),
        ChildRole::DrawClient { socket, shape } => drawing::client(&socket, &shape),
        ChildRole::DrawStranger { socket } => drawing::stranger(&socket),
        ChildRole::SignalSender { pid } => signals::sender(pid),
        ChildRole::GroupMember { ready } => signals::member(&ready),
        ChildRole::EndpointClient { name } => endpoint::client(&name),
        ChildRole::EndpointWorker => endpoint::worker(),
    }
}
