//! Peer libraries measured next to ipckit (feature `peers`): ipc-channel,
//! interprocess and iceoryx2 (in [`iox2`]).

pub mod iox2;

use interprocess::local_socket::{prelude::*, GenericFilePath, Listener, ListenerOptions, Stream};
pub use ipc_channel::ipc::IpcOneShotServer;
use ipc_channel::ipc::{bytes_channel, IpcBytesReceiver, IpcBytesSender, IpcSender};
use std::io::{Read, Write};

use super::mechanisms::{ready, stream_echo, Link, ECHO};
use crate::error::{fail, Context, Result};

/// The parent's end: requests out on `tx`, replies in on `rx`.
pub struct IpcChannel {
    pub tx: IpcBytesSender,
    pub rx: IpcBytesReceiver,
}

impl Link for IpcChannel {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.send(msg)?;
        let reply = self.rx.recv().context("ipc-channel recv")?;
        if reply.len() != msg.len() {
            fail!("reply of {} bytes, not {}", reply.len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.tx.send(msg).context("ipc-channel send")
    }
}

/// A listening interprocess local socket at file path `path`.
pub fn listen(path: &std::path::Path) -> std::io::Result<Listener> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new().name(name).create_sync()
}

/// The child's connection.
pub fn accept(listener: &Listener) -> std::io::Result<Stream> {
    listener.accept()
}

/// The parent's end of an interprocess local socket carrying fixed-size messages.
pub struct LocalSocket(pub Stream);

impl Link for LocalSocket {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        self.0.write_all(msg).context("write")?;
        self.0.read_exact(msg).context("read")
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.0.write_all(msg).context("write")
    }
}

/// The interprocess child: connects to `path` and echoes fixed-size messages.
pub fn interprocess_child(path: &str, size: usize) -> Result<()> {
    let name = path.to_fs_name::<GenericFilePath>().context("socket name")?;
    ready()?;
    let s = Stream::connect(name).context("interprocess connect")?;
    stream_echo(&s, &s, size)
}

/// The child: makes both channels, hands the parent its ends through the
/// one-shot server `name`, then echoes.
pub fn child(name: &str) -> Result<()> {
    let (req_tx, req_rx) = bytes_channel().context("ipc-channel")?;
    let (rep_tx, rep_rx) = bytes_channel().context("ipc-channel")?;
    let boot: IpcSender<(IpcBytesSender, IpcBytesReceiver)> =
        IpcSender::connect(name.to_owned()).context("ipc-channel connect")?;
    boot.send((req_tx, rep_rx)).context("ipc-channel bootstrap")?;
    ready()?;
    while let Ok(msg) = req_rx.recv() {
        if msg.first() == Some(&ECHO) && rep_tx.send(&msg).is_err() {
            break;
        }
    }
    Ok(())
}
