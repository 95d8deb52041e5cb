//! Two-way RPC: [`Client::call`] and [`Request::reply`], over any [`Connection`](crate::Connection).
//!
//! A call sends a request numbered with a fresh id and blocks until the reply
//! with that id arrives or its deadline passes (default [`DEFAULT_TIMEOUT`],
//! configurable per client and per call). Many threads may call at once on
//! one client: whichever caller is waiting reads the connection and hands each
//! reply to the call it answers, so no extra thread sits in the path. A reply
//! arriving after its call gave up is dropped, never handed to another call.
//! When the server goes away every pending call fails at once with
//! [`CallError::Disconnected`](crate::CallError::Disconnected).
//!
//! A [`Server`] takes requests from any number of connections (a listener's,
//! or ones added by hand); each [`Request`] can be answered out of order and
//! from any thread. A client that sends garbage loses its connection; the
//! others are not affected.
//!
//! # Examples
//!
//! ```
//! use ipckit::{rpc, Connection, SocketKind};
//! let (a, b) = Connection::pair(SocketKind::Stream)?;
//! let client = rpc::Client::new(a);
//! let mut server = rpc::Server::new();
//! server.add(b);
//! let t = std::thread::spawn(move || {
//!     let req = server.recv().unwrap();
//!     let answer = req.bytes().to_ascii_uppercase();
//!     req.reply(answer).unwrap();
//! });
//! assert_eq!(client.call("hello")?.bytes(), b"HELLO");
//! t.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod server;

pub use client::Client;
pub use server::{Request, Server, REPLY_TIMEOUT};

/// How long a call waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
