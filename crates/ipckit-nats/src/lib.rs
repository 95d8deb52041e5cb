//! ipckit across hosts, over NATS: the same mailboxes and RPC as on one
//! host, carried by an existing messaging engine instead of a home-made
//! network.
//!
//! - **Mailboxes** ([`Mailbox`]): indirect communication, many senders and
//!   many receivers sharing one named mailbox, each message taken by exactly
//!   one receiver. A mailbox is a JetStream stream with work-queue retention
//!   and one shared pull consumer: a message that `send` reported as sent is
//!   stored by the server (in a file with [`MailboxConfig::durable`]), so it
//!   outlives its sender, every receiver and, durable, the server's restart;
//!   a receiver acknowledges a message when `recv` returns it, so a receiver
//!   that dies between the server's delivery and its acknowledgement loses
//!   nothing: the message is delivered again after
//!   [`MailboxConfig::redeliver_after`]. A full mailbox (its byte capacity)
//!   makes `send` wait (or `try_send` fail with `Full`), as ipckit's own
//!   channels do.
//! - **RPC** ([`RpcClient`], [`RpcServer`]): NATS request/reply on the
//!   service's subject; several servers of one service share the load (a
//!   queue group); every call has a timeout (default 5 s); a call with no
//!   server listening fails at once with `Disconnected` (NATS reports "no
//!   responders") instead of waiting out its timeout.
//!
//! Every blocking operation has the forms ipckit uses everywhere (blocking,
//! `try_`, `_timeout`), with ipckit's error types, and an `async` twin for
//! tokio programs. Messages are [`ipckit::Message`]s; handles (descriptors)
//! cannot cross hosts, so a message carrying one is refused. Names are
//! checked (1-64 of `A-Z a-z 0-9 _ -`).
//!
//! Permissions: kernel credentials do not cross hosts. Who may send to or
//! receive from a mailbox, and call or serve a service, is NATS's own
//! authorization (users, accounts and subject permissions on the server);
//! connect with [`Nats::connect_with`] and the credentials the operator
//! gave you. Subjects are `ipckit.mb.<name>` and `ipckit.rpc.<name>` (prefix
//! configurable), so a server's permissions can grant them per name.
//!
//! ```no_run
//! use ipckit_nats::{Nats, MailboxConfig};
//! let nats = Nats::connect("nats://127.0.0.1:4222")?;
//! let mb = nats.mailbox("jobs", &MailboxConfig::default())?;
//! mb.send("resize 42.png")?;
//! let job = mb.recv_timeout(std::time::Duration::from_secs(1))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use ipckit::{
    CallError, Message, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use serde::{de::DeserializeOwned, Serialize};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "ipckit";
/// The default timeout of an RPC call (as `ipckit::rpc`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a NATS request for a mailbox message waits at most before it is
/// renewed (a blocking `recv` renews it until its deadline).
const FETCH_SLICE: Duration = Duration::from_secs(1);
/// The shortest wait the server takes for a fetch (`try_recv` uses it).
const FETCH_MIN: Duration = Duration::from_millis(10);

/// Why connecting or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The NATS server could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {why}")]
    Connect {
        /// Where.
        url: String,
        /// The client's reason.
        why: String,
    },
    /// A mailbox or service name ipckit does not accept.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The server refused an operation (JetStream disabled, permissions,
    /// a mailbox that exists with another configuration...).
    #[error("NATS server: {0}")]
    Server(String),
}

fn server(e: impl std::fmt::Display) -> Error {
    Error::Server(e.to_string())
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Checks a mailbox or service name.
fn check_name(name: &str) -> Result<(), Error> {
    let bad = |why| Err(Error::InvalidName { name: name.to_owned(), why });
    if name.is_empty() || name.len() > 64 {
        return bad("1 to 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return bad("only A-Z, a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

/// A message's payload for the wire: refused when it carries handles.
fn payload(msg: &Message) -> Result<Bytes, io::Error> {
    if !msg.handles().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "handles (descriptors) cannot be sent to another host",
        ));
    }
    Ok(Bytes::copy_from_slice(msg.bytes()))
}

/// A connection to a NATS server (cheap to clone; share it).
#[derive(Clone, Debug)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    /// Runs the blocking forms and the client's connection task.
    rt: Arc<Rt>,
}

/// The runtime a `Nats` owns; shut down without waiting when the last
/// handle goes (which may happen inside another runtime's task).
#[derive(Debug)]
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("alive until dropped")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Nats {
    /// Connects (waiting at most 5 s).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`].
    pub fn connect(url: &str) -> Result<Nats, Error> {
        Nats::connect_with(url, async_nats::ConnectOptions::new())
    }

    /// Connects with options (credentials, TLS, names...).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`].
    pub fn connect_with(url: &str, options: async_nats::ConnectOptions) -> Result<Nats, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ipckit-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::Connect { url: url.to_owned(), why: e.to_string() })?;
        let options = options.connection_timeout(Duration::from_secs(5));
        let connect = async {
            tokio::time::timeout(Duration::from_secs(5), options.connect(url))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        };
        let client = rt.block_on(connect).map_err(|why| Error::Connect { url: url.to_owned(), why })?;
        Ok(Nats::from_client(client, Arc::new(Rt(Some(rt)))))
    }

    /// As [`Nats::connect`], from async code (a tokio runtime): the
    /// connection gets its own small runtime on a blocking thread, so both
    /// the `_async` forms (from any runtime) and, outside async code, the
    /// blocking forms work.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`].
    pub async fn connect_async(url: &str) -> Result<Nats, Error> {
        let owned = url.to_owned();
        tokio::task::spawn_blocking(move || Nats::connect(&owned))
            .await
            .map_err(|e| Error::Connect { url: url.to_owned(), why: e.to_string() })?
    }

    fn from_client(client: async_nats::Client, rt: Arc<Rt>) -> Nats {
        // The JetStream context is made inside the runtime (it needs its timer).
        let js = {
            let _inside = rt.get().enter();
            jetstream::new(client.clone())
        };
        Nats { client, js, prefix: DEFAULT_PREFIX.to_owned(), rt }
    }

    /// Uses subjects under `prefix` instead of `ipckit`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a prefix that is not a valid name.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Nats, Error> {
        check_name(prefix)?;
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The async-nats client underneath.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Runs `f` to completion on this connection's runtime (the blocking
    /// forms; not to be called from inside a tokio runtime: use the
    /// `_async` forms there).
    fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.get().block_on(f)
    }

    fn stream_name(&self, name: &str) -> String {
        format!("{}_MB_{}", self.prefix, name)
    }

    /// Opens mailbox `name`, creating it with `config` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; [`Error::Server`] when JetStream is not
    /// enabled on the server or the mailbox exists with another configuration.
    pub fn mailbox(&self, name: &str, config: &MailboxConfig) -> Result<Mailbox, Error> {
        self.block(self.mailbox_async(name, config))
    }

    /// As [`Nats::mailbox`], async.
    ///
    /// # Errors
    ///
    /// As [`Nats::mailbox`].
    pub async fn mailbox_async(&self, name: &str, config: &MailboxConfig) -> Result<Mailbox, Error> {
        check_name(name)?;
        let subject = format!("{}.mb.{}", self.prefix, name);
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: self.stream_name(name),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                max_bytes: config.capacity as i64,
                max_message_size: config.max_message.min(i32::MAX as usize) as i32,
                discard: stream::DiscardPolicy::New,
                storage: if config.durable { stream::StorageType::File } else { stream::StorageType::Memory },
                ..Default::default()
            })
            .await
            .map_err(server)?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                "receivers",
                pull::Config {
                    durable_name: Some("receivers".to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.redeliver_after,
                    ..Default::default()
                },
            )
            .await
            .map_err(server)?;
        Ok(Mailbox { nats: self.clone(), subject, consumer, max: config.max_message })
    }

    /// Removes mailbox `name` and every message in it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Server`] (no such mailbox, permissions).
    pub fn remove_mailbox(&self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        self.block(self.js.delete_stream(self.stream_name(name))).map_err(server)?;
        Ok(())
    }

    /// A client of service `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`].
    pub fn rpc_client(&self, name: &str) -> Result<RpcClient, Error> {
        check_name(name)?;
        Ok(RpcClient {
            nats: self.clone(),
            subject: format!("{}.rpc.{}", self.prefix, name),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Serves service `name` (servers of one name share the calls).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::Server`].
    pub fn rpc_server(&self, name: &str) -> Result<RpcServer, Error> {
        self.block(self.rpc_server_async(name))
    }

    /// As [`Nats::rpc_server`], async.
    ///
    /// # Errors
    ///
    /// As [`Nats::rpc_server`].
    pub async fn rpc_server_async(&self, name: &str) -> Result<RpcServer, Error> {
        check_name(name)?;
        let subject = format!("{}.rpc.{}", self.prefix, name);
        let sub = self.client.queue_subscribe(subject, "servers".to_owned()).await.map_err(server)?;
        // The subscription is in place on the server once a flush returns.
        self.client.flush().await.map_err(server)?;
        Ok(RpcServer { nats: self.clone(), sub: Some(sub) })
    }
}

/// How a mailbox is created (an existing one keeps its own).
#[derive(Clone, Debug)]
pub struct MailboxConfig {
    /// Bytes the stored messages may take before `send` waits (default 64 MiB).
    pub capacity: usize,
    /// The largest message (default 1 MiB, the NATS server's default payload limit).
    pub max_message: usize,
    /// Keep the messages in a file on the server (they survive its restart)
    /// rather than in its memory (default true).
    pub durable: bool,
    /// A message delivered to a receiver that did not acknowledge it (it
    /// died) is delivered again after this long (default 5 s).
    pub redeliver_after: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            capacity: 64 << 20,
            max_message: 1 << 20,
            durable: true,
            redeliver_after: Duration::from_secs(5),
        }
    }
}

/// A shared mailbox: see the crate docs.
#[derive(Debug)]
pub struct Mailbox {
    nats: Nats,
    subject: String,
    consumer: PullConsumer,
    max: usize,
}

/// Why one publish attempt failed.
enum Publish {
    Full,
    Failed(io::Error),
}

impl Mailbox {
    /// Sends a message, waiting while the mailbox is full. Returns once the
    /// server has stored it.
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`], [`SendError::Io`] (server unreachable,
    /// handles in the message); the message is handed back.
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError<Message>> {
        let msg = msg.into();
        match self.nats.block(self.send_until(&msg, None)) {
            Ok(()) => Ok(()),
            Err(SendFail::TooLarge(len)) => Err(SendError::TooLarge { msg, len, max: self.max }),
            Err(SendFail::Io(e) | SendFail::Timeout(e)) => Err(SendError::Io { source: e, msg }),
        }
    }

    /// Sends a message only if the mailbox has room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`], otherwise as [`Mailbox::send`].
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<(), TrySendError<Message>> {
        let msg = msg.into();
        match self.nats.block(self.send_until(&msg, Some(Instant::now()))) {
            Ok(()) => Ok(()),
            Err(SendFail::TooLarge(len)) => Err(TrySendError::TooLarge { msg, len, max: self.max }),
            Err(SendFail::Timeout(_)) => Err(TrySendError::Full(msg)),
            Err(SendFail::Io(e)) => Err(TrySendError::Io { source: e, msg }),
        }
    }

    /// Sends a message, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`], otherwise as [`Mailbox::send`].
    pub fn send_timeout(
        &self,
        msg: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<Message>> {
        let msg = msg.into();
        match self.nats.block(self.send_until(&msg, Some(Instant::now() + timeout))) {
            Ok(()) => Ok(()),
            Err(SendFail::TooLarge(len)) => Err(SendTimeoutError::TooLarge { msg, len, max: self.max }),
            Err(SendFail::Timeout(_)) => Err(SendTimeoutError::Timeout(msg)),
            Err(SendFail::Io(e)) => Err(SendTimeoutError::Io { source: e, msg }),
        }
    }

    /// As [`Mailbox::send`], async.
    ///
    /// # Errors
    ///
    /// As [`Mailbox::send`].
    pub async fn send_async(&self, msg: impl Into<Message>) -> Result<(), SendError<Message>> {
        let msg = msg.into();
        match self.send_until(&msg, None).await {
            Ok(()) => Ok(()),
            Err(SendFail::TooLarge(len)) => Err(SendError::TooLarge { msg, len, max: self.max }),
            Err(SendFail::Io(e) | SendFail::Timeout(e)) => Err(SendError::Io { source: e, msg }),
        }
    }

    /// Encodes `value` with postcard and sends it.
    ///
    /// # Errors
    ///
    /// As [`Mailbox::send`] (a value that cannot be encoded is an `Io` error).
    pub fn send_typed<T: Serialize>(&self, value: &T) -> Result<(), SendError<Message>> {
        match postcard::to_stdvec(value) {
            Ok(bytes) => self.send(bytes),
            Err(e) => Err(SendError::Io { source: io_err(e), msg: Message::new(Vec::new()) }),
        }
    }

    async fn send_until(&self, msg: &Message, deadline: Option<Instant>) -> Result<(), SendFail> {
        let len = msg.bytes().len();
        if len > self.max {
            return Err(SendFail::TooLarge(len));
        }
        let body = payload(msg).map_err(SendFail::Io)?;
        let mut nap = Duration::from_millis(1);
        loop {
            match self.publish_once(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(Publish::Failed(e)) => return Err(SendFail::Io(e)),
                Err(Publish::Full) => {}
            }
            // Full: wait for receivers to make room.
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(SendFail::Timeout(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the mailbox is full",
                    )));
                }
                nap = nap.min(d - now);
            }
            tokio::time::sleep(nap).await;
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    async fn publish_once(&self, body: Bytes) -> Result<(), Publish> {
        let ack =
            self.nats.js.publish(self.subject.clone(), body).await.map_err(|e| Publish::Failed(io_err(e)))?;
        match ack.await {
            Ok(_) => Ok(()),
            // A stream at its byte limit with "discard new" refuses the
            // message with an API error ("maximum bytes exceeded").
            Err(e) if e.to_string().contains("maximum") => Err(Publish::Full),
            Err(e) => Err(Publish::Failed(io_err(e))),
        }
    }

    /// Receives the next message, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`RecvError::Io`] (server unreachable).
    pub fn recv(&self) -> Result<Message, RecvError> {
        self.nats.block(self.recv_until(None)).map_err(|e| RecvError::Io(e.into_io()))
    }

    /// Receives a message if one is stored now (asks the server once).
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`], otherwise as [`Mailbox::recv`].
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        match self.nats.block(self.recv_until(Some(Instant::now()))) {
            Ok(m) => Ok(m),
            Err(RecvFail::Timeout) => Err(TryRecvError::Empty),
            Err(RecvFail::Io(e)) => Err(TryRecvError::Io(e)),
        }
    }

    /// Receives a message, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], otherwise as [`Mailbox::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        match self.nats.block(self.recv_until(Some(Instant::now() + timeout))) {
            Ok(m) => Ok(m),
            Err(RecvFail::Timeout) => Err(RecvTimeoutError::Timeout),
            Err(RecvFail::Io(e)) => Err(RecvTimeoutError::Io(e)),
        }
    }

    /// As [`Mailbox::recv`], async.
    ///
    /// # Errors
    ///
    /// As [`Mailbox::recv`].
    pub async fn recv_async(&self) -> Result<Message, RecvError> {
        self.recv_until(None).await.map_err(|e| RecvError::Io(e.into_io()))
    }

    /// Receives a message and decodes it (postcard), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Mailbox::recv_timeout`], plus [`RecvTimeoutError::Decode`].
    pub fn recv_typed_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let m = self.recv_timeout(timeout)?;
        Ok(postcard::from_bytes(m.bytes())?)
    }

    async fn recv_until(&self, deadline: Option<Instant>) -> Result<Message, RecvFail> {
        loop {
            let wait = match deadline {
                None => FETCH_SLICE,
                Some(d) => d.saturating_duration_since(Instant::now()).clamp(FETCH_MIN, FETCH_SLICE),
            };
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| RecvFail::Io(io_err(e)))?;
            if let Some(next) = batch.next().await {
                let m = next.map_err(|e| RecvFail::Io(io_err(e)))?;
                // Acknowledged (and the server's confirmation awaited) before
                // it is handed out: it will not be delivered to anyone else.
                m.double_ack().await.map_err(|e| RecvFail::Io(io_err(e)))?;
                return Ok(Message::new(m.payload.to_vec()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvFail::Timeout);
            }
        }
    }
}

enum SendFail {
    TooLarge(usize),
    Timeout(io::Error),
    Io(io::Error),
}

enum RecvFail {
    Timeout,
    Io(io::Error),
}

impl RecvFail {
    fn into_io(self) -> io::Error {
        match self {
            RecvFail::Timeout => io::Error::from(io::ErrorKind::TimedOut),
            RecvFail::Io(e) => e,
        }
    }
}

/// The calling end of a service: see the crate docs.
#[derive(Clone, Debug)]
pub struct RpcClient {
    nats: Nats,
    subject: String,
    timeout: Duration,
}

impl RpcClient {
    /// Sets the timeout of [`RpcClient::call`].
    pub fn with_timeout(mut self, timeout: Duration) -> RpcClient {
        self.timeout = timeout;
        self
    }

    /// Sends `request` and waits for the reply, at most the client's timeout.
    ///
    /// # Errors
    ///
    /// [`CallError::Timeout`]; [`CallError::Disconnected`] when no server
    /// serves the name; [`CallError::TooLarge`] over the server's payload
    /// limit; [`CallError::Io`].
    pub fn call(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.call_timeout(request, self.timeout)
    }

    /// As [`RpcClient::call`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub fn call_timeout(&self, request: impl Into<Message>, timeout: Duration) -> Result<Message, CallError> {
        let request = request.into();
        self.nats.block(self.call_inner(&request, timeout))
    }

    /// As [`RpcClient::call`], async.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`].
    pub async fn call_async(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        let request = request.into();
        self.call_inner(&request, self.timeout).await
    }

    /// A typed call: postcard both ways.
    ///
    /// # Errors
    ///
    /// As [`RpcClient::call`], plus [`CallError::Codec`].
    pub fn call_typed<Q: Serialize, R: DeserializeOwned>(&self, request: &Q) -> Result<R, CallError> {
        let bytes = postcard::to_stdvec(request)?;
        let reply = self.call(bytes)?;
        Ok(postcard::from_bytes(reply.bytes())?)
    }

    async fn call_inner(&self, request: &Message, timeout: Duration) -> Result<Message, CallError> {
        use async_nats::RequestErrorKind as K;
        let body = payload(request).map_err(CallError::Io)?;
        let max = self.nats.client.server_info().max_payload;
        if body.len() > max {
            return Err(CallError::TooLarge { len: body.len(), max });
        }
        let req = async_nats::Request::new().payload(body).timeout(Some(timeout));
        match self.nats.client.send_request(self.subject.clone(), req).await {
            Ok(m) => Ok(Message::new(m.payload.to_vec())),
            Err(e) => Err(match e.kind() {
                K::TimedOut => CallError::Timeout,
                K::NoResponders => CallError::Disconnected,
                K::MaxPayloadExceeded => CallError::TooLarge { len: request.bytes().len(), max },
                _ => CallError::Io(io_err(e)),
            }),
        }
    }
}

/// The serving end of a service: see the crate docs.
#[derive(Debug)]
pub struct RpcServer {
    nats: Nats,
    /// Taken only by `Drop` (whose unsubscribe needs the runtime).
    sub: Option<async_nats::Subscriber>,
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _inside = self.nats.rt.get().enter();
        drop(self.sub.take());
    }
}

/// A call received by an [`RpcServer`]; answer it with [`Request::reply`].
#[derive(Debug)]
pub struct Request {
    nats: Nats,
    reply_to: Option<async_nats::Subject>,
    msg: Message,
}

impl Request {
    /// The request's payload.
    pub fn bytes(&self) -> &[u8] {
        self.msg.bytes()
    }

    /// Decodes a typed request (postcard).
    ///
    /// # Errors
    ///
    /// When the bytes are not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(self.msg.bytes())
    }

    /// Sends the reply (the caller may have given up: then nobody gets it).
    ///
    /// # Errors
    ///
    /// [`ipckit::ReplyError::Disconnected`] for a request that asked for no
    /// reply; [`ipckit::ReplyError::Io`].
    pub fn reply(self, reply: impl Into<Message>) -> Result<(), ipckit::ReplyError> {
        let reply = reply.into();
        let nats = self.nats.clone();
        nats.block(self.reply_async(reply))
    }

    /// As [`Request::reply`], async.
    ///
    /// # Errors
    ///
    /// As [`Request::reply`].
    pub async fn reply_async(self, reply: impl Into<Message>) -> Result<(), ipckit::ReplyError> {
        let reply = reply.into();
        let Some(to) = self.reply_to else { return Err(ipckit::ReplyError::Disconnected) };
        let body = payload(&reply).map_err(ipckit::ReplyError::Io)?;
        self.nats.client.publish(to, body).await.map_err(|e| ipckit::ReplyError::Io(io_err(e)))?;
        self.nats.client.flush().await.map_err(|e| ipckit::ReplyError::Io(io_err(e)))
    }

    /// Encodes `value` with postcard and sends it as the reply.
    ///
    /// # Errors
    ///
    /// As [`Request::reply`], plus [`ipckit::ReplyError::Codec`].
    pub fn reply_typed<T: Serialize>(self, value: &T) -> Result<(), ipckit::ReplyError> {
        let bytes = postcard::to_stdvec(value)?;
        self.reply(bytes)
    }
}

impl RpcServer {
    /// Waits for the next call.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] when the connection to the server is closed.
    pub fn recv(&mut self) -> Result<Request, RecvError> {
        let nats = self.nats.clone();
        nats.block(self.recv_async())
    }

    /// Waits at most `timeout` for the next call.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], otherwise as [`RpcServer::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Request, RecvTimeoutError> {
        let nats = self.nats.clone();
        match nats.block(async { tokio::time::timeout(timeout, self.recv_async()).await }) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(RecvTimeoutError::Disconnected),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// As [`RpcServer::recv`], async (cancel-safe).
    ///
    /// # Errors
    ///
    /// As [`RpcServer::recv`].
    pub async fn recv_async(&mut self) -> Result<Request, RecvError> {
        let Some(sub) = self.sub.as_mut() else { return Err(RecvError::Disconnected) };
        match sub.next().await {
            Some(m) => Ok(Request {
                nats: self.nats.clone(),
                reply_to: m.reply,
                msg: Message::new(m.payload.to_vec()),
            }),
            None => Err(RecvError::Disconnected),
        }
    }

    /// Answers every call with `handler` until the connection closes.
    ///
    /// # Errors
    ///
    /// As [`RpcServer::recv`], except `Disconnected`, which ends the loop with `Ok`.
    pub fn serve(&mut self, mut handler: impl FnMut(&Request) -> Message) -> Result<(), RecvError> {
        loop {
            let req = match self.recv() {
                Ok(r) => r,
                Err(RecvError::Disconnected) => return Ok(()),
                Err(e) => return Err(e),
            };
            let reply = handler(&req);
            if let Err(e) = req.reply(reply) {
                tracing::debug!(error = %e, "reply not delivered");
            }
        }
    }
}
