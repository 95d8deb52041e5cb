//! What the conformance suites share: the transports, and a channel under test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipckit::{fifo, pipe, unix, Capacity, Receiver, RecvTimeoutError, Sender, SocketKind};

/// The timeout for anything that should happen: long enough to never fire on a
/// loaded machine, short enough that a bug fails the test instead of hanging CI.
pub const LONG: Duration = Duration::from_secs(20);

/// A directory of its own for each test, removed afterwards.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ipckit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every kernel transport a channel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Pipe,
    Fifo,
    UnixStream,
    UnixSeqPacket,
}

impl Transport {
    /// A receiver bound to a path: it waits for new senders instead of ending.
    pub fn listens(self) -> bool {
        matches!(self, Transport::UnixStream | Transport::UnixSeqPacket)
    }

    /// Bounded and rendezvous channels need a way back (a FIFO has none).
    pub fn flow_control(self) -> bool {
        self != Transport::Fifo
    }

    /// The largest payload the transport carries (a seqpacket datagram must
    /// fit the socket's send buffer, about 200 KiB by default).
    pub fn max_payload(self) -> usize {
        match self {
            Transport::UnixSeqPacket => 150_000,
            _ => usize::MAX,
        }
    }

    pub fn open(self, cap: Capacity) -> Chan {
        let dir = TempDir::new("suite");
        match self {
            Transport::Pipe => {
                let (tx, rx) = pipe::channel(cap).unwrap();
                Chan { rx: Some(rx), tx: Some(tx), path: None, t: self, _dir: dir }
            }
            Transport::Fifo => {
                assert_eq!(cap, Capacity::Kernel, "a FIFO has no way back for flow control");
                let path = dir.join("fifo");
                fifo::create(&path, 0o600).unwrap();
                let p = path.clone();
                let opener = std::thread::spawn(move || fifo::open_sender_timeout(&p, LONG).unwrap());
                let rx = fifo::open_receiver_timeout(&path, LONG).unwrap();
                let tx = opener.join().unwrap();
                Chan { rx: Some(rx), tx: Some(tx), path: Some(path), t: self, _dir: dir }
            }
            Transport::UnixStream | Transport::UnixSeqPacket => {
                let path = dir.join("ch.sock");
                let rx = unix::bind_receiver(&path, self.kind(), cap).unwrap();
                Chan { rx: Some(rx), tx: None, path: Some(path), t: self, _dir: dir }
            }
        }
    }

    pub fn kind(self) -> SocketKind {
        if self == Transport::UnixSeqPacket {
            SocketKind::SeqPacket
        } else {
            SocketKind::Stream
        }
    }
}

/// A channel under test: its receiver, and the means to make its sender.
pub struct Chan {
    rx: Option<Receiver>,
    tx: Option<Sender>,
    path: Option<PathBuf>,
    t: Transport,
    _dir: TempDir,
}

impl Chan {
    pub fn rx(&mut self) -> &mut Receiver {
        self.rx.as_mut().expect("receiver taken")
    }

    pub fn take_rx(&mut self) -> Receiver {
        self.rx.take().expect("receiver taken")
    }

    pub fn put_rx(&mut self, rx: Receiver) {
        self.rx = Some(rx);
    }

    /// The sender (pipe, FIFO) or a newly connected one (UNIX socket).
    pub fn sender(&mut self) -> Sender {
        match self.t {
            Transport::Pipe | Transport::Fifo => self.tx.take().expect("only one sender for this transport"),
            _ => unix::connect_sender(self.path.as_ref().unwrap(), self.t.kind()).unwrap(),
        }
    }

    /// Lets a socket receiver accept `tx` and greet it, so the sender knows
    /// the capacity before a test starts counting.
    pub fn prime(&mut self, tx: &mut Sender) {
        if self.t.listens() {
            assert!(matches!(
                self.rx().recv_timeout(Duration::from_millis(50)),
                Err(RecvTimeoutError::Timeout)
            ));
            assert!(tx.capacity().is_none());
        }
    }
}
