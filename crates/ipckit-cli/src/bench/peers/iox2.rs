//! iceoryx2 (crates.io, feature `peers`): its request-response and
//! publish-subscribe services between two processes, with `[u8]` slice
//! payloads written into loaned shared memory (`loan_slice_uninit` ->
//! `write_from_slice` -> `send`), the way a user sends bytes with it.
//!
//! Both are polling mechanisms: iceoryx2's `receive` never blocks (a
//! sleeping receiver pairs the service with an event service and a
//! `WaitSet`), so the receiving side busy-polls, like ipckit's
//! `WaitMode::Spin`, and the rows are compared with the spin floor.
//!
//! The parent creates the services (with back-pressure: no safe overflow,
//! a sender blocks while the receiver's buffer is full) and its ports; the
//! child opens them. A killed child leaves its node behind: [`cleanup`]
//! removes dead nodes' resources.

use std::time::Instant;

use iceoryx2::node::Node;
use iceoryx2::port::client::Client;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{publish_subscribe, request_response};

use super::super::mechanisms::{ready, Link, ECHO, IO_TIMEOUT};
use crate::error::{fail, Context, Result};

type Rr = request_response::PortFactory<ipc::Service, [u8], (), [u8], ()>;
type PubSub = publish_subscribe::PortFactory<ipc::Service, [u8], ()>;

/// How many messages a receiver's buffer holds: the depth of ipckit's rings
/// in the same bench (8 MiB of messages, 4 to 64 of them).
pub fn depth(size: usize) -> usize {
    ((8 << 20) / size.max(1)).clamp(4, 64)
}

/// A node of this process, quiet (errors only) and without signal handlers
/// of its own (Ctrl-C stays the bench's).
fn node() -> Result<Node<ipc::Service>> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .context("creating an iceoryx2 node")
}

fn service_name(name: &str) -> Result<ServiceName> {
    ServiceName::new(name).context(format!("iceoryx2 service name {name:?}"))
}

/// Removes what dead nodes (killed children) left in shared memory.
pub fn cleanup() {
    let _ = Node::<ipc::Service>::cleanup_dead_nodes(Config::global_config());
}

/// Calls `f` until it has something, busy-polling (a yield every 2^20
/// polls, as the spin floor does), for at most [`IO_TIMEOUT`].
fn poll<T>(mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        if let Some(x) = f()? {
            return Ok(x);
        }
        std::hint::spin_loop();
        n = n.wrapping_add(1);
        if n % 4096 == 0 {
            if start.elapsed() > IO_TIMEOUT {
                fail!("no iceoryx2 answer within {IO_TIMEOUT:?}");
            }
            if n % (1 << 20) == 0 {
                std::thread::yield_now();
            }
        }
    }
}

/// The child's idle step between two empty polls (no deadline: the parent kills it).
fn idle(n: &mut u32) {
    std::hint::spin_loop();
    *n = n.wrapping_add(1);
    if *n % (1 << 20) == 0 {
        std::thread::yield_now();
    }
}

/// After a failure the child does not exit: a sender blocked on its full
/// buffer would wait for ever (iceoryx2's blocking send has no deadline).
/// It reports `failed`, then takes and drops whatever comes, so the parent's
/// sends go through and its next round trip times out instead; the parent
/// then kills it.
fn drain(failed: &crate::error::Failure, mut take: impl FnMut() -> bool) -> Result<()> {
    eprintln!("ipckit bench: iceoryx2 child: {failed}; dropping messages until killed");
    let mut n = 0u32;
    loop {
        if !take() {
            idle(&mut n);
        }
    }
}

// ---------------------------------------------------------------------------
// Request-response
// ---------------------------------------------------------------------------

/// The parent's end: a client; a round trip is one request and its response.
pub struct RequestResponse {
    client: Client<ipc::Service, [u8], (), [u8], ()>,
    _service: Rr,
    _node: Node<ipc::Service>,
}

impl RequestResponse {
    /// Creates service `name` for requests and responses of up to `size`
    /// bytes, and its client.
    pub fn create(name: &str, size: usize) -> Result<RequestResponse> {
        let node = node()?;
        let service = node
            .service_builder(&service_name(name)?)
            .request_response::<[u8], [u8]>()
            .enable_safe_overflow_for_requests(false)
            .enable_safe_overflow_for_responses(false)
            .max_active_requests_per_client(depth(size))
            .create()
            .context("creating the iceoryx2 request-response service")?;
        let client = service
            .client_builder()
            .initial_max_slice_len(size)
            .unable_to_deliver_strategy(UnableToDeliverStrategy::Block)
            .create()
            .context("creating the iceoryx2 client")?;
        Ok(RequestResponse { client, _service: service, _node: node })
    }
}

impl Link for RequestResponse {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        let request = self.client.loan_slice_uninit(msg.len()).context("iceoryx2 request loan")?;
        let pending = request.write_from_slice(msg).send().context("iceoryx2 request send")?;
        let response = poll(|| pending.receive().context("iceoryx2 response receive"))?;
        if response.payload().len() != msg.len() {
            fail!("reply of {} bytes, not {}", response.payload().len(), msg.len());
        }
        Ok(())
    }

    /// A request whose response is not awaited (the server sends none for
    /// a sink message): fire and forget.
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        let request = self.client.loan_slice_uninit(msg.len()).context("iceoryx2 request loan")?;
        drop(request.write_from_slice(msg).send().context("iceoryx2 request send")?);
        Ok(())
    }
}

/// The child: a server on service `name` answering echo requests.
pub fn request_response_child(name: &str, size: usize) -> Result<()> {
    let node = node()?;
    let service = node
        .service_builder(&service_name(name)?)
        .request_response::<[u8], [u8]>()
        .open()
        .context("opening the iceoryx2 request-response service")?;
    let server = service
        .server_builder()
        .initial_max_slice_len(size)
        .unable_to_deliver_strategy(UnableToDeliverStrategy::Block)
        .create()
        .context("creating the iceoryx2 server")?;
    ready()?;
    let mut n = 0u32;
    let failed = loop {
        let request = match server.receive().context("iceoryx2 request receive") {
            Ok(Some(request)) => request,
            Ok(None) => {
                idle(&mut n);
                continue;
            }
            Err(e) => break e,
        };
        let payload = request.payload();
        if payload.first() == Some(&ECHO) {
            let sent = request
                .loan_slice_uninit(payload.len())
                .context("iceoryx2 response loan")
                .and_then(|r| r.write_from_slice(payload).send().context("iceoryx2 response send"));
            if let Err(e) = sent {
                break e;
            }
        }
    };
    drain(&failed, || matches!(server.receive(), Ok(Some(_))))
}

// ---------------------------------------------------------------------------
// Publish-subscribe
// ---------------------------------------------------------------------------

/// The parent's end: a publisher on `<name>/ping` and a subscriber on
/// `<name>/pong`; a round trip is a sample there and one back.
pub struct PubSubLink {
    tx: Publisher<ipc::Service, [u8], ()>,
    rx: Subscriber<ipc::Service, [u8], ()>,
    _services: (PubSub, PubSub),
    _node: Node<ipc::Service>,
}

/// Opens (or, with `create`, creates) the publish-subscribe service `name`.
fn pubsub_service(node: &Node<ipc::Service>, name: &str, size: usize, create: bool) -> Result<PubSub> {
    let builder = node.service_builder(&service_name(name)?).publish_subscribe::<[u8]>();
    if create {
        builder
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(depth(size))
            .history_size(0)
            .create()
            .context("creating an iceoryx2 publish-subscribe service")
    } else {
        builder.open().context("opening an iceoryx2 publish-subscribe service")
    }
}

/// A publisher that waits while the subscriber's buffer is full.
fn publisher(service: &PubSub, size: usize) -> Result<Publisher<ipc::Service, [u8], ()>> {
    service
        .publisher_builder()
        .initial_max_slice_len(size)
        .unable_to_deliver_strategy(UnableToDeliverStrategy::Block)
        .create()
        .context("creating an iceoryx2 publisher")
}

fn subscriber(service: &PubSub, size: usize) -> Result<Subscriber<ipc::Service, [u8], ()>> {
    service.subscriber_builder().buffer_size(depth(size)).create().context("creating an iceoryx2 subscriber")
}

fn publish(tx: &Publisher<ipc::Service, [u8], ()>, msg: &[u8]) -> Result<()> {
    let sample = tx.loan_slice_uninit(msg.len()).context("iceoryx2 sample loan")?;
    sample.write_from_slice(msg).send().context("iceoryx2 sample send")?;
    Ok(())
}

impl PubSubLink {
    /// Creates the services `<name>/ping` and `<name>/pong` for samples of
    /// up to `size` bytes, and this side's ports.
    pub fn create(name: &str, size: usize) -> Result<PubSubLink> {
        let node = node()?;
        let ping = pubsub_service(&node, &format!("{name}/ping"), size, true)?;
        let pong = pubsub_service(&node, &format!("{name}/pong"), size, true)?;
        let tx = publisher(&ping, size)?;
        let rx = subscriber(&pong, size)?;
        Ok(PubSubLink { tx, rx, _services: (ping, pong), _node: node })
    }
}

impl Link for PubSubLink {
    fn round_trip(&mut self, msg: &mut [u8]) -> Result<()> {
        publish(&self.tx, msg)?;
        let sample = poll(|| self.rx.receive().context("iceoryx2 sample receive"))?;
        if sample.payload().len() != msg.len() {
            fail!("reply of {} bytes, not {}", sample.payload().len(), msg.len());
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        publish(&self.tx, msg)
    }
}

/// The child: subscribes to `<name>/ping`, publishes echo samples back on `<name>/pong`.
pub fn pubsub_child(name: &str, size: usize) -> Result<()> {
    let node = node()?;
    let ping = pubsub_service(&node, &format!("{name}/ping"), size, false)?;
    let pong = pubsub_service(&node, &format!("{name}/pong"), size, false)?;
    let rx = subscriber(&ping, size)?;
    let tx = publisher(&pong, size)?;
    ready()?;
    let mut n = 0u32;
    let failed = loop {
        let sample = match rx.receive().context("iceoryx2 sample receive") {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                idle(&mut n);
                continue;
            }
            Err(e) => break e,
        };
        if sample.payload().first() == Some(&ECHO) {
            if let Err(e) = publish(&tx, sample.payload()) {
                break e;
            }
        }
    };
    drain(&failed, || matches!(rx.receive(), Ok(Some(_))))
}
