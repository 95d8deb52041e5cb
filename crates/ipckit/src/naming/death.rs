//! The server's death watcher: one thread blocked in `poll(2)` on a pidfd
//! ([`ProcessWatch`]) per registering process, which tells the server's
//! loop the moment one exits, so what it registered is released even if its
//! connection lives on in a process that inherited it.
//!
//! The thread talks to the loop over a socket pair the loop serves like any
//! client (so a death wakes the loop at once); the loop knows that
//! connection by its id, and nothing else can send on it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::connection::Connection;
use crate::error::Result;
use crate::event::ProcessWatch;
use crate::rpc;
use crate::sys::naming as sysn;
use crate::sys::{self, Deadline, PollEntry, Ready, SocketKind};

enum Cmd {
    Watch(u64, ProcessWatch),
    Forget(u64),
}

/// Watches registering processes; reports deaths by token to the server.
#[derive(Debug)]
pub(crate) struct DeathWatcher {
    tx: Option<mpsc::Sender<Cmd>>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Watch(t, w) => write!(f, "Watch({t}, pid {})", w.pid()),
            Cmd::Forget(t) => write!(f, "Forget({t})"),
        }
    }
}

impl DeathWatcher {
    /// Starts the thread; the returned connection is the server's end, to
    /// add to its RPC server: each request on it is one death (the token as
    /// 8 little-endian bytes), to be answered with anything.
    pub(crate) fn start() -> Result<(DeathWatcher, Connection)> {
        let (ours, theirs) = Connection::pair(SocketKind::Stream)?;
        let wake = sysn::wake_fd()?;
        let thread_wake = wake.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let client = rpc::Client::new(theirs).with_timeout(Duration::from_secs(30));
        let thread = std::thread::Builder::new()
            .name("ipckit-naming-deaths".into())
            .spawn(move || watch_loop(&rx, &thread_wake, &client))?;
        Ok((DeathWatcher { tx: Some(tx), wake, thread: Some(thread) }, ours))
    }

    fn send(&self, cmd: Cmd) {
        if let Some(tx) = &self.tx {
            if tx.send(cmd).is_ok() {
                sysn::wake(&self.wake);
            }
        }
    }

    /// Reports `token` when the process `watch` names exits.
    pub(crate) fn watch(&self, token: u64, watch: ProcessWatch) {
        self.send(Cmd::Watch(token, watch));
    }

    /// Stops watching for `token`.
    pub(crate) fn forget(&self, token: u64) {
        self.send(Cmd::Forget(token));
    }
}

impl Drop for DeathWatcher {
    fn drop(&mut self) {
        drop(self.tx.take());
        sysn::wake(&self.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_loop(rx: &mpsc::Receiver<Cmd>, wake: &OwnedFd, client: &rpc::Client) {
    let mut watches: HashMap<u64, ProcessWatch> = HashMap::new();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Watch(t, w)) => {
                    watches.insert(t, w);
                }
                Ok(Cmd::Forget(t)) => {
                    watches.remove(&t);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let tokens: Vec<u64> = watches.keys().copied().collect();
        let mut set: Vec<PollEntry<'_>> = Vec::with_capacity(tokens.len() + 1);
        set.push(PollEntry::new(wake, Ready::IN));
        set.extend(tokens.iter().map(|t| PollEntry::new(&watches[t], Ready::IN)));
        if let Err(e) = sys::wait_many(&mut set, Deadline::Never) {
            tracing::error!(error = %e, "death watcher: poll failed");
            return;
        }
        let woken = !set[0].revents().is_empty();
        let dead: Vec<u64> =
            tokens.iter().zip(&set[1..]).filter(|(_, p)| !p.revents().is_empty()).map(|(t, _)| *t).collect();
        drop(set);
        if woken {
            sysn::drain_wake(wake.as_fd());
        }
        for t in dead {
            if let Some(w) = watches.remove(&t) {
                tracing::info!(pid = w.pid(), "a registering process exited");
            }
            if client.call(t.to_le_bytes().to_vec()).is_err() {
                return; // the server is gone
            }
        }
    }
}
