//! Listener and connection handling: [`KafkaServer`] serves the configured listeners, and
//! [`LocalServer`] runs a broker with one listener on a loopback port (tests, embedding).
//!
//! Each connection has a reader task that reads frames ahead (bounded) and a processor that
//! handles them one at a time, in order, and writes their responses in the same order. That is
//! Kafka's per-connection contract: an idempotent producer's pipelined batches are appended in
//! the order sent, and responses come back in request order. A Produce is answered once its
//! records may be acknowledged (see `process_staged`); meanwhile the processor handles the
//! requests behind it, and it handles every request already read before it writes any
//! response, so pipelined acks=0/1 Produces share one write of a partition's write buffer. A
//! request that may wait for others (a Fetch long poll, a JoinGroup or SyncGroup) is handled only
//! once the answers before it have been written, so they do not wait with it.
//!
//! A frame whose length prefix exceeds `socket.request.max.bytes` is refused before anything
//! is allocated for it, and the connection is closed, as Kafka does. So is a frame that does not
//! decode, or an unknown API key or version (except ApiVersions, which gets UNSUPPORTED_VERSION
//! with the supported ranges so the client can retry with a version we speak).
//!
//! Stopping ([`KafkaServer::run`] seeing its shutdown signal) stops accepting, stops reading new
//! requests, answers the ones already read (long polls return at once) and waits for every
//! connection to finish, up to [`DRAIN_MAX`]; only then may the broker close its logs, so no
//! request is cut off mid-append and no append lands after a log is closed.
//!
//! Limits ([`super::limits`]): a connection past `max.connections` or `max.connections.per.ip`
//! is closed as soon as it is accepted. Before a request's bytes are read, room for them is
//! reserved in the `queued.max.request.bytes` budget shared by all connections, and given back
//! when the request has been handled; until there is room the connection's socket is not read.
//! A connection with no request in progress and none arriving for `connections.max.idle.ms` is
//! closed, and so is one whose request does not arrive whole, or whose client takes no bytes of
//! a response, within that time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;

use super::handlers::produce_decode::{self, ProduceData};
use super::handlers::{self, Ctx};
use super::limits::{ConnectionLimits, RequestBudget};
use crate::broker::{Broker, stopped};
use crate::config::{BrokerConfig, Listener};
use crate::error::{BrokerError, Result};

/// Requests read ahead of the one being processed, per connection.
const READ_AHEAD: usize = 32;

/// How long a stopping server waits for connections to answer the requests they have read.
pub const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A bound Kafka listener, ready to serve.
#[derive(Debug)]
pub struct KafkaServer {
    ctx: Arc<Ctx>,
    listeners: Vec<TcpListener>,
    connections: Arc<ConnectionLimits>,
    budget: Arc<RequestBudget>,
}

impl KafkaServer {
    /// Binds every configured listener. A listener with port 0 gets a free port, and the
    /// advertised address follows the port actually bound.
    pub async fn bind(broker: Broker) -> Result<KafkaServer> {
        let config = broker.config().kafka.clone();
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let host = if l.host.is_empty() {
                "0.0.0.0"
            } else {
                l.host.as_str()
            };
            let listener = TcpListener::bind((host, l.port)).await.map_err(|e| {
                BrokerError::io(
                    format!("listener {l}"),
                    std::io::Error::new(e.kind(), format!("cannot listen on {l}: {e}")),
                )
            })?;
            let addr = listener
                .local_addr()
                .map_err(|e| BrokerError::io(format!("listener {l}"), e))?;
            bound.push(Listener {
                port: addr.port(),
                ..l.clone()
            });
            listeners.push(listener);
        }
        let advertised = match &config.advertised_listeners {
            Some(a) => a.clone(),
            None => {
                let mut c = config.clone();
                c.listeners = bound;
                c.advertised()
            }
        };
        let first = advertised
            .first()
            .cloned()
            .ok_or_else(|| BrokerError::InvalidConfig("no listener to advertise".into()))?;
        if !crate::alloc::huge_allocations_are_survivable() {
            tracing::warn!(
                "the global allocator aborts on impossible allocations, so a malformed Kafka request can take this process down; register quiver_broker::alloc::GuardedAlloc as the #[global_allocator]"
            );
        }
        let ctx = Arc::new(Ctx::new(broker, first));
        Ok(KafkaServer {
            ctx,
            listeners,
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_ip,
            ),
            budget: Arc::new(RequestBudget::new(config.queued_max_request_bytes)),
        })
    }

    /// The addresses the listeners are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The listener clients are told to use.
    pub fn advertised(&self) -> &Listener {
        &self.ctx.advertised
    }

    /// Bytes of requests read and not yet handled, across all connections (at most
    /// `queued.max.request.bytes`).
    pub fn queued_request_bytes(&self) -> usize {
        self.budget.queued_bytes()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Accepts connections until `shutdown` becomes true, then drains them (see the module
    /// docs) and returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut accepts = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let ctx = self.ctx.clone();
            let connections = self.connections.clone();
            let budget = self.budget.clone();
            let mut stop = shutdown.clone();
            accepts.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                // Past a limit the socket is dropped, which closes it (`admit`
                                // logged why); the client sees the connection closed, as with Kafka.
                                let Ok(slot) = connections.admit(peer.ip()) else { continue };
                                let ctx = ctx.clone();
                                let budget = budget.clone();
                                tokio::spawn(async move {
                                    serve(ctx, budget, stream, peer).await;
                                    drop(slot);
                                });
                            }
                            Err(e) => {
                                // Out of file descriptors and the like: back off, keep serving.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            });
        }
        stopped(&mut shutdown).await;
        accepts.abort_all();
        self.ctx.draining.send_replace(true);
        // Every connection holds its slot until it is served out.
        let drained = tokio::time::timeout(DRAIN_MAX, self.connections.all_closed()).await;
        if drained.is_err() {
            tracing::warn!(
                connections = self.connections.open(),
                "connections still busy after {DRAIN_MAX:?}; stopping without them"
            );
        }
        Ok(())
    }
}

/// A broker with its Kafka listener on a loopback port the system picks, served on the current
/// Tokio runtime: for tests, and for programs that embed Quiver and let Kafka clients on the
/// same machine talk to it.
///
/// [`LocalServer::start`] opens the broker and starts serving; [`LocalServer::stop`] stops
/// accepting connections, waits for the listener to finish and shuts the broker down.
/// Dropping a `LocalServer` without `stop` only stops accepting connections; the broker closes
/// when its last handle is dropped.
///
/// ```
/// # async fn example(dir: &std::path::Path) -> quiver_broker::Result<()> {
/// use quiver_broker::BrokerConfig;
/// use quiver_broker::kafka::LocalServer;
///
/// let config = BrokerConfig {
///     data_dir: dir.to_owned(),
///     ..BrokerConfig::default()
/// };
/// let server = LocalServer::start(config).await?;
/// // Kafka clients connect to `server.addr()`; this program can use `server.broker()` directly.
/// println!("Kafka on {}", server.addr());
/// server.stop().await
/// # }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # tokio::runtime::Runtime::new()?.block_on(example(dir.path()))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalServer {
    broker: Broker,
    addr: SocketAddr,
    budget: Arc<RequestBudget>,
    connections: Arc<ConnectionLimits>,
    shutdown: watch::Sender<bool>,
    serving: Option<JoinHandle<Result<()>>>,
}

impl LocalServer {
    /// Opens a broker with `config`, its `listeners` replaced by one on `127.0.0.1` port 0,
    /// and serves the Kafka protocol there until stopped. Call it within a Tokio runtime.
    pub async fn start(mut config: BrokerConfig) -> Result<LocalServer> {
        config.set("listeners", "PLAINTEXT://127.0.0.1:0")?;
        let broker = Broker::open(config).await?;
        let server = KafkaServer::bind(broker.clone()).await?;
        let addr = server.local_addrs().first().copied().ok_or_else(|| {
            BrokerError::Internal("the loopback Kafka listener has no address".into())
        })?;
        let budget = server.budget.clone();
        let connections = server.connections.clone();
        let (shutdown, stopped) = watch::channel(false);
        let serving = tokio::spawn(server.run(stopped));
        Ok(LocalServer {
            broker,
            addr,
            budget,
            connections,
            shutdown,
            serving: Some(serving),
        })
    }

    /// The in-process handle to the broker that the listener serves.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Where Kafka clients connect: `127.0.0.1` and the port bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// See [`KafkaServer::queued_request_bytes`].
    pub fn queued_request_bytes(&self) -> usize {
        self.budget.queued_bytes()
    }

    /// See [`KafkaServer::open_connections`].
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Stops accepting connections, waits for the listener to finish, and shuts the broker
    /// down ([`Broker::shutdown`]), even when the listener failed. Returns the first error.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.send_replace(true);
        let served = match self.serving.take() {
            Some(serving) => serving.await.unwrap_or_else(|e| {
                Err(BrokerError::Internal(format!(
                    "the Kafka listener task failed: {e}"
                )))
            }),
            None => Ok(()),
        };
        let shut = self.broker.shutdown().await;
        served.and(shut)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// What to do after a request.
pub(crate) enum Outcome {
    /// The response frame, as chunks to write in order (record data is not copied into one buffer).
    Respond(Vec<Bytes>),
    /// Produce with acks=0 gets no response.
    Silent,
    Close(String),
}

/// When a connection last did something, and how many of its requests are read but not yet
/// answered (a connection waiting on its own long poll is not idle).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now_ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(now_ms, Ordering::Release);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(last)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Why a connection's reader stopped.
enum ReaderEnd {
    /// The client closed the connection (or it broke).
    Closed,
    /// Nothing happened on it for `connections.max.idle.ms`.
    Idle,
    /// The client sent something the server refuses; the reason is logged.
    Refused(String),
}

/// A request read from a connection, holding its room in the read-ahead budget.
type Queued = (Bytes, OwnedSemaphorePermit);

async fn serve(ctx: Arc<Ctx>, budget: Arc<RequestBudget>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Queued>(READ_AHEAD);
    let kafka = &ctx.broker.config().kafka;
    let max = kafka.socket_request_max_bytes;
    let idle = Duration::from_millis(kafka.connections_max_idle_ms);
    let activity = Arc::new(Activity::new());
    let draining = ctx.draining.subscribe();
    let reader = tokio::spawn(read_requests(
        rd,
        tx,
        budget,
        activity.clone(),
        max,
        idle,
        draining,
    ));
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    // Requests staged and not yet answered, in request order (see `process_staged`); each
    // keeps its room in the read-ahead budget until its response is written.
    let mut staged = futures::stream::FuturesOrdered::new();
    let mut reading = true;
    // A request the wait below received, staged next.
    let mut arrived: Option<Queued> = None;
    // A staged request closes the connection: none after it is handled.
    let mut closing = false;
    loop {
        // Every request already read is staged before any answer is written: pipelined acks=0/1
        // Produces then share one write of the partition's write buffer (the first answer
        // writes it), and their answers leave in one flush.
        while !closing && staged.len() < READ_AHEAD {
            let (frame, room) = match arrived.take() {
                Some(queued) => queued,
                None if !reading => break,
                None => match rx.try_recv() {
                    Ok(queued) => queued,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        reading = false;
                        break;
                    }
                },
            };
            if !staged.is_empty() && may_wait(&frame) {
                // It is handled once every answer before it has been written and flushed, or
                // those answers would wait as long as it does.
                arrived = Some((frame, room));
                break;
            }
            let (outcome, closes) = process_staged(&ctx, frame, Some(peer)).await;
            closing = closes;
            staged.push_back(outcome.map(move |o| (o, room)));
        }
        let (outcome, room) = tokio::select! {
            biased;
            Some(done) = staged.next(), if !staged.is_empty() => done,
            next = rx.recv(), if reading && !closing && arrived.is_none()
                && staged.len() < READ_AHEAD => {
                match next {
                    Some(queued) => arrived = Some(queued),
                    None => reading = false,
                }
                continue;
            }
            else => break,
        };
        // A request held back until the answers before it are out (see `may_wait`) is not
        // one to wait for before flushing them.
        let more_queued = !staged.is_empty() || (arrived.is_none() && !rx.is_empty());
        // Handled: its bytes leave the read-ahead budget (the response is not request bytes).
        drop(room);
        match outcome {
            Outcome::Respond(chunks) => {
                if let Err(e) = write_response(&mut wr, &chunks, idle).await {
                    tracing::debug!(%peer, error = %e, "closing Kafka connection: the response was not taken");
                    break;
                }
                let flush_failed = !more_queued
                    && !matches!(tokio::time::timeout(idle, wr.flush()).await, Ok(Ok(())));
                if flush_failed {
                    break;
                }
            }
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                tracing::warn!(%peer, %reason, "closing Kafka connection");
                break;
            }
        }
        activity.touch();
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    let _ = tokio::time::timeout(idle, wr.flush()).await;
    reader.abort();
    match reader.await {
        Ok(ReaderEnd::Refused(reason)) => {
            tracing::warn!(%peer, %reason, "closing Kafka connection");
        }
        Ok(ReaderEnd::Idle) => {
            tracing::debug!(%peer, idle_ms = idle.as_millis() as u64, "closing idle Kafka connection (connections.max.idle.ms)");
        }
        Ok(ReaderEnd::Closed) | Err(_) => {}
    }
}

/// Whether a request (its frame, without the length prefix) may be answered only after others
/// act: a Fetch long poll waits for records, a JoinGroup or SyncGroup for the group's other
/// members. The connection handles such a request only once the answers before it have left,
/// as a Kafka broker (one request at a time per connection) would have sent them.
fn may_wait(frame: &[u8]) -> bool {
    let Some(&[hi, lo]) = frame.first_chunk::<2>() else {
        return false;
    };
    let api_key = i16::from_be_bytes([hi, lo]);
    api_key == ApiKey::Fetch as i16
        || api_key == ApiKey::JoinGroup as i16
        || api_key == ApiKey::SyncGroup as i16
}

/// Writes one response. A client that takes no bytes of it for `idle` is treated as gone.
async fn write_response(
    wr: &mut BufWriter<OwnedWriteHalf>,
    chunks: &[Bytes],
    idle: Duration,
) -> std::io::Result<()> {
    for chunk in chunks {
        let mut at = 0;
        while at < chunk.len() {
            // BufWriter passes large chunks straight to the socket.
            let written = tokio::time::timeout(idle, wr.write(&chunk[at..]))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took no response bytes for connections.max.idle.ms",
                    )
                })??;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            at += written;
        }
    }
    Ok(())
}

/// Reads request frames ahead of the processor: at most [`READ_AHEAD`] of them, each only once
/// `budget` has room for it.
async fn read_requests(
    rd: OwnedReadHalf,
    tx: mpsc::Sender<Queued>,
    budget: Arc<RequestBudget>,
    activity: Arc<Activity>,
    max: usize,
    idle: Duration,
    mut draining: watch::Receiver<bool>,
) -> ReaderEnd {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    // Requests are read into this buffer's spare room and split off it. Once a request's
    // handler has dropped it, the next `reserve` takes the same memory back, so a busy
    // connection does not allocate (and fault in) fresh pages for every large produce. A
    // connection gives it back after `RELEASE_READ_BUFFER` without a request, and never keeps
    // the memory of a request over `MAX_KEPT_READ_BUFFER`.
    let mut pending = BytesMut::new();
    let mut holding = false;
    loop {
        // Wait for the next request (unless its first bytes are in the buffer already). While
        // one is in progress the connection is not idle; after that, `idle` counts from its
        // response.
        while rd.buffer().is_empty() {
            let busy = activity.busy();
            let mut wait = if busy {
                idle
            } else {
                idle.saturating_sub(activity.idle_for())
            };
            if holding {
                wait = wait.min(RELEASE_READ_BUFFER);
            }
            // A stopping server reads no new request; those already read are answered.
            let next = tokio::select! {
                _ = stopped(&mut draining) => return ReaderEnd::Closed,
                next = tokio::time::timeout(wait, rd.fill_buf()) => next,
            };
            if next.is_err() && holding {
                pending = BytesMut::new();
                holding = false;
            }
            match next {
                Ok(Ok([])) | Ok(Err(_)) => return ReaderEnd::Closed,
                Ok(Ok(_)) => break,
                Err(_) if !activity.busy() && activity.idle_for() >= idle => {
                    return ReaderEnd::Idle;
                }
                Err(_) => {}
            }
        }
        // The whole request must arrive within `idle` of its first bytes: a client trickling
        // bytes cannot hold its room in the budget for longer. A part already in the buffer (a
        // small request usually arrives whole) is taken from it without arming a timer.
        let mut len = [0u8; 4];
        if let Some(prefix) = rd.buffer().get(..4) {
            len.copy_from_slice(prefix);
            rd.consume(4);
        } else {
            let deadline = tokio::time::Instant::now() + idle;
            match tokio::time::timeout_at(deadline, rd.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return ReaderEnd::Closed,
                Err(_) => return ReaderEnd::Idle,
            }
        }
        let len = i32::from_be_bytes(len);
        let Some(len) = usize::try_from(len).ok().filter(|&l| l <= max) else {
            return ReaderEnd::Refused(format!(
                "request of {len} bytes is larger than socket.request.max.bytes={max} (or negative); closing the connection"
            ));
        };
        // Until the budget has room this connection's socket is not read, so the client's
        // sends back up instead of the server buffering them.
        let Some(room) = budget.reserve(len).await else {
            return ReaderEnd::Closed;
        };
        pending.reserve(len);
        if let Some(body) = rd.buffer().get(..len) {
            pending.extend_from_slice(body);
            rd.consume(len);
        } else {
            // `idle` from now: the wait for room in the budget is not the client's.
            let deadline = tokio::time::Instant::now() + idle;
            match tokio::time::timeout_at(deadline, read_request(&mut rd, &mut pending, len)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return ReaderEnd::Closed,
                Err(_) => return ReaderEnd::Idle,
            }
        }
        let buf = pending.split().freeze();
        holding = len <= MAX_KEPT_READ_BUFFER;
        if !holding {
            pending = BytesMut::new();
        }
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        if tx.send((buf, room)).await.is_err() {
            return ReaderEnd::Closed;
        }
    }
}

/// The largest request whose memory a connection keeps for the next one.
const MAX_KEPT_READ_BUFFER: usize = 16 << 20;
/// How long a connection keeps its read buffer without a new request.
const RELEASE_READ_BUFFER: Duration = Duration::from_secs(1);

/// Reads the `len` bytes of a request into `buf`'s spare capacity, which the caller reserved
/// (no zero-fill first). A connection closed early is `UnexpectedEof`.
async fn read_request(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut BytesMut,
    len: usize,
) -> std::io::Result<()> {
    let mut body = (&mut *rd).take(len as u64);
    while buf.len() < len {
        if body.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Why a request frame was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// An ApiVersions request of a version we do not speak: answer with our ranges.
    UnsupportedApiVersions { correlation_id: i32 },
    /// Anything else: the connection is closed, with this reason.
    Refused(String),
}

/// A request's body as decoded: a Produce read by hand (see [`handlers::produce_decode`]),
/// every other request by `kafka-protocol`. Unboxed: a box would cost every other request an
/// allocation, and the value only moves from the decoder to its handler.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Produce(ProduceData),
    Other(RequestKind),
}

/// Decodes one request frame (the bytes after the length prefix): header and body, checked
/// against the supported API versions. Never panics and never allocates by a count it read
/// before checking it (see `crate::alloc` for the allocation guard the server runs under).
pub fn decode_request(mut frame: Bytes) -> Result<(RequestHeader, Request), DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Refused(format!(
            "frame of {} bytes is too short for a request header",
            frame.len()
        )));
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Err(DecodeError::Refused(format!(
            "unknown API key {api_key_raw}"
        )));
    };
    if !handlers::is_supported(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            return Err(DecodeError::UnsupportedApiVersions { correlation_id });
        }
        return Err(DecodeError::Refused(format!(
            "{api_key:?} version {version} is not supported"
        )));
    }
    let header_version = api_key.request_header_version(version);
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let header = RequestHeader::decode(&mut frame, header_version)?;
        let body = if api_key == ApiKey::Produce {
            let body = std::mem::take(&mut frame);
            Request::Produce(produce_decode::decode(body, version).map_err(anyhow::Error::msg)?)
        } else {
            Request::Other(RequestKind::decode(api_key, &mut frame, version)?)
        };
        anyhow::Ok((header, body))
    }));
    match decoded {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(DecodeError::Refused(format!(
            "{api_key:?} v{version} request does not decode: {e}"
        ))),
        Err(_) => Err(DecodeError::Refused(format!(
            "{api_key:?} v{version} request made the decoder panic"
        ))),
    }
}

/// Decodes one frame, runs its handler and encodes the response, waiting for it (tests drive
/// handlers through it). `peer` is the client's address (`None` for a frame that did not come
/// over a socket).
#[cfg(test)]
pub(crate) async fn process(ctx: &Ctx, frame: Bytes, peer: Option<SocketAddr>) -> Outcome {
    process_staged(ctx, frame, peer).await.0.await
}

/// A request's outcome, ready or still to come (a Produce still to be acknowledged).
type Staged = futures::future::BoxFuture<'static, Outcome>;

/// Handles a request up to the point where only acknowledging is left: a Produce is appended
/// here and the returned future acknowledges it (waits for its fsync with acks=all, writes the
/// write buffer with acks=0/1); every other request is handled here in full. The connection
/// stages requests in order and writes the outcomes in the same order, so a pipelined acks=all
/// Produce no longer holds back the next one's append, and pipelined acks=0/1 Produces share
/// one write. Also says whether the outcome closes the connection, which is known here: such a
/// request is refused before it does anything, and no request after it may be handled.
pub(crate) async fn process_staged(
    ctx: &Ctx,
    frame: Bytes,
    peer: Option<SocketAddr>,
) -> (Staged, bool) {
    let ready = |outcome: Outcome| {
        let closes = matches!(outcome, Outcome::Close(_));
        (futures::future::ready(outcome).boxed(), closes)
    };
    let (header, request) = match decode_request(frame) {
        Ok(x) => x,
        Err(DecodeError::UnsupportedApiVersions { correlation_id }) => {
            // Tell the client what we speak, in the v0 format every client can read.
            let body = handlers::api_versions::unsupported_version();
            return ready(encode_response(
                correlation_id,
                ApiKey::ApiVersions,
                0,
                &ResponseKind::ApiVersions(body),
            ));
        }
        Err(DecodeError::Refused(reason)) => return ready(Outcome::Close(reason)),
    };
    let api_key = ApiKey::try_from(header.request_api_key).unwrap_or(ApiKey::ApiVersions);
    let version = header.request_api_version;
    let correlation_id = header.correlation_id;
    let request = match request {
        Request::Produce(req) => {
            let staged = handlers::produce::stage(ctx, version, req);
            let waits = staged.may_wait_for_fsync();
            let answer = async move {
                match staged.acknowledge().await {
                    Some(answer) => encode_produce_response(correlation_id, &answer),
                    None => Outcome::Silent,
                }
            };
            if !waits {
                // acks=0/1: the answer only writes the partitions' write buffers, when the
                // connection gets to it. Requests staged before then share that write.
                return (answer.boxed(), false);
            }
            // A task of its own: the wait may take its turn at the partition's fsync, which
            // must not stall while this connection handles its next request. Boxed first, so
            // spawning moves a pointer rather than the whole future (a few hundred bytes,
            // copied several times on the way into the task).
            let acked = tokio::spawn(Box::pin(answer));
            let answered = async move {
                acked
                    .await
                    .unwrap_or_else(|e| Outcome::Close(format!("the produce task failed: {e}")))
            };
            return (answered.boxed(), false);
        }
        Request::Other(other) => other,
    };
    ready(match handlers::handle(ctx, &header, request, peer).await {
        Ok(response) => encode_response(correlation_id, api_key, version, &response),
        Err(reason) => Outcome::Close(reason),
    })
}

/// A Produce's answer, written by hand ([`handlers::produce_encode`]) into one buffer with its
/// length and header: the general encoder costs more than the append.
fn encode_produce_response(
    correlation_id: i32,
    answer: &handlers::produce::ProduceAnswer,
) -> Outcome {
    let version = answer.version;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&correlation_id.to_be_bytes());
    if ApiKey::Produce.response_header_version(version) >= 1 {
        // The flexible response header's tagged fields: none.
        out.push(0);
    }
    if !handlers::produce_encode::encode(answer, &mut out) {
        // Unreachable: the request was decoded only in a version the writer covers.
        return Outcome::Close(format!(
            "Produce v{version} response is not written by this broker"
        ));
    }
    let len = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Outcome::Respond(vec![Bytes::from(out)])
}

fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Outcome {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api_key.response_header_version(version);
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(0);
    if let Err(e) = header.encode(&mut head, header_version) {
        return Outcome::Close(format!("response header does not encode: {e}"));
    }
    // Fetch bodies are written as chunks so their record bytes are not copied again.
    if let ResponseKind::Fetch(fetch) = body
        && let Some(chunks) = handlers::fetch_encode::encode_chunks(fetch, version)
    {
        let len = head.len() - 4 + chunks.iter().map(Bytes::len).sum::<usize>();
        head[0..4].copy_from_slice(&(len as i32).to_be_bytes());
        let mut out = Vec::with_capacity(chunks.len() + 1);
        out.push(head.freeze());
        out.extend(chunks);
        return Outcome::Respond(out);
    }
    if let Err(e) = body.encode(&mut head, version) {
        tracing::error!(?api_key, version, error = %e, "a response does not encode (a bug in Quiver)");
        return Outcome::Close(format!(
            "{api_key:?} v{version} response does not encode: {e}"
        ));
    }
    let len = (head.len() - 4) as i32;
    head[0..4].copy_from_slice(&len.to_be_bytes());
    Outcome::Respond(vec![head.freeze()])
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
