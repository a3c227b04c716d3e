//! One TCP connection to one broker: request framing, correlation ids, a bound on requests in
//! flight and on response size, per-request timeouts, and the ApiVersions handshake that fixes
//! which version of each API the connection uses.
//!
//! A writer task sends frames in the order requests were made and a reader task matches each
//! response to the oldest request in flight (Kafka answers in order on a connection) and checks
//! its correlation id. Registering a request and queueing its frame happen together, without an
//! await in between, so a caller that gives up on a request (a dropped future) never leaves half
//! a frame on the wire or a response matched to the wrong request.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::ClientConfig;
use crate::error::{ClientError, Result};

/// ApiVersions versions this client speaks.
const API_VERSIONS: (i16, i16) = (0, 3);

/// Why a connection stopped.
#[derive(Debug, Clone)]
enum Failure {
    Closed(String),
    Protocol(String),
}

impl Failure {
    fn to_error(&self, addr: &str) -> ClientError {
        match self {
            Failure::Closed(reason) => ClientError::Disconnected {
                addr: addr.to_owned(),
                reason: reason.clone(),
            },
            Failure::Protocol(reason) => ClientError::Protocol {
                addr: addr.to_owned(),
                reason: reason.clone(),
            },
        }
    }
}

/// A request sent and not yet answered. Holding the permit keeps a slot of the in-flight bound.
struct InFlight {
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes, Failure>>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<InFlight>,
    /// Set once the connection is unusable; every later request fails with it.
    closed: Option<Failure>,
}

/// Fails every request in flight and marks the connection closed (the first reason wins).
fn fail_all(pending: &Mutex<Pending>, failure: Failure) {
    let drained: Vec<InFlight> = {
        let mut p = pending.lock();
        if p.closed.is_none() {
            p.closed = Some(failure.clone());
        }
        p.queue.drain(..).collect()
    };
    for f in drained {
        let _ = f.reply.send(Err(failure.clone()));
    }
}

/// The name of an API for messages, e.g. `Metadata`.
pub(crate) fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| format!("API {key}"), |k| format!("{k:?}"))
}

/// An open, handshaken connection. Shared by every caller that talks to its broker.
pub(crate) struct Connection {
    addr: String,
    client_id: StrBytes,
    request_bytes_max: usize,
    frames: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    permits: Arc<Semaphore>,
    next_correlation_id: AtomicI32,
    /// The broker's `(min, max)` version of each API key, from ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
    tasks: [AbortHandle; 2],
    #[cfg(test)]
    versions_below_max: i16,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `addr` (`HOST:PORT`) and runs the ApiVersions handshake.
    pub async fn open(addr: &str, config: &ClientConfig) -> Result<Connection> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} ms",
                    config.connect_timeout_ms
                )));
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let in_flight_max = config.in_flight_requests_max.max(1);
        // One frame per permit at most, so queueing a frame never finds the channel full.
        let (frames, rx) = mpsc::channel(in_flight_max);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let writer = tokio::spawn(write_frames(wr, rx, pending.clone()));
        let reader = tokio::spawn(read_frames(rd, pending.clone(), config.response_bytes_max));
        let mut conn = Connection {
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            request_bytes_max: config.request_bytes_max,
            frames,
            pending,
            permits: Arc::new(Semaphore::new(in_flight_max)),
            next_correlation_id: AtomicI32::new(0),
            versions: HashMap::new(),
            tasks: [writer.abort_handle(), reader.abort_handle()],
            #[cfg(test)]
            versions_below_max: config.versions_below_max,
        };
        let timeout = Duration::from_millis(config.request_timeout_ms);
        conn.versions = conn.handshake(timeout).await?;
        Ok(conn)
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True once the connection failed or was closed; a new one must be opened.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().closed.is_some()
    }

    /// Closes the connection, failing whatever is in flight with `reason`.
    pub fn close(&self, reason: &str) {
        fail_all(&self.pending, Failure::Closed(reason.to_owned()));
        for task in &self.tasks {
            task.abort();
        }
    }

    /// The version of `api` to use: the highest both sides speak within `ours`.
    pub fn version(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        let unsupported = |theirs| ClientError::Unsupported {
            addr: self.addr.clone(),
            api: format!("{api:?}"),
            ours,
            theirs,
        };
        let Some(&(lo, hi)) = self.versions.get(&(api as i16)) else {
            return Err(unsupported(None));
        };
        let version = ours.1.min(hi);
        if version < ours.0.max(lo) {
            return Err(unsupported(Some((lo, hi))));
        }
        #[cfg(test)]
        let version = (version - self.versions_below_max).max(ours.0.max(lo));
        Ok(version)
    }

    /// Sends `request` as `version` and waits up to `timeout` for its response.
    pub async fn send<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let bytes = self.exchange(request, version, timeout).await?;
        self.decode::<R::Response>(bytes, version, R::KEY)
    }

    /// Sends a request and returns its response frame, correlation id checked, header not read.
    async fn exchange<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<Bytes> {
        let permit =
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ClientError::Disconnected {
                    addr: self.addr.clone(),
                    reason: "the connection was closed".into(),
                })?;
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let frame = self.encode(request, version, correlation_id)?;
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if let Some(failure) = &pending.closed {
                return Err(failure.to_error(&self.addr));
            }
            if self.frames.try_send(frame).is_err() {
                return Err(ClientError::Disconnected {
                    addr: self.addr.clone(),
                    reason: "the connection's writer stopped".into(),
                });
            }
            pending.queue.push_back(InFlight {
                correlation_id,
                reply,
                _permit: permit,
            });
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(failure))) => Err(failure.to_error(&self.addr)),
            Ok(Err(_)) => Err(ClientError::Disconnected {
                addr: self.addr.clone(),
                reason: "the connection was closed".into(),
            }),
            Err(_) => {
                // Its answer may still come and would be taken for the next request's.
                self.close("a request timed out");
                Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    api: api_name(R::KEY),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    fn encode<R: Request>(&self, request: &R, version: i16, correlation_id: i32) -> Result<Bytes> {
        let internal = |reason: String| ClientError::Internal {
            api: api_name(R::KEY),
            reason,
        };
        let mut buf = BytesMut::with_capacity(128);
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()))
            .encode(&mut buf, <R as HeaderVersion>::header_version(version))
            .map_err(|e| internal(e.to_string()))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| internal(format!("v{version}: {e}")))?;
        let len = buf.len() - 4;
        if len > self.request_bytes_max {
            return Err(ClientError::InvalidArgument(format!(
                "a {} request of {len} bytes is larger than the limit of {} bytes; send less at once",
                api_name(R::KEY),
                self.request_bytes_max
            )));
        }
        buf[0..4].copy_from_slice(&(len as i32).to_be_bytes());
        Ok(buf.freeze())
    }

    fn decode<T: Decodable + HeaderVersion>(
        &self,
        mut bytes: Bytes,
        version: i16,
        key: i16,
    ) -> Result<T> {
        // A decoder bug or a hostile broker must not take the process down.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ResponseHeader::decode(&mut bytes, T::header_version(version))?;
            T::decode(&mut bytes, version)
        }));
        match decoded {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(ClientError::Protocol {
                addr: self.addr.clone(),
                reason: format!("{} v{version} response does not decode: {e}", api_name(key)),
            }),
            Err(_) => Err(ClientError::Protocol {
                addr: self.addr.clone(),
                reason: format!(
                    "{} v{version} response made the decoder panic",
                    api_name(key)
                ),
            }),
        }
    }

    /// ApiVersions: asks at our highest version; a broker that does not speak it answers
    /// UNSUPPORTED_VERSION in the v0 format with its range, and we ask again within it.
    async fn handshake(&self, timeout: Duration) -> Result<HashMap<i16, (i16, i16)>> {
        let mut version = API_VERSIONS.1;
        for _ in 0..2 {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request = request
                    .with_client_software_name(StrBytes::from_static_str("quiver"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )));
            }
            let bytes = self.exchange(&request, version, timeout).await?;
            let response = match self.decode::<ApiVersionsResponse>(
                bytes.clone(),
                version,
                ApiKey::ApiVersions as i16,
            ) {
                Ok(r) if r.error_code != ResponseError::UnsupportedVersion.code() => r,
                // The error answer is in the v0 format whatever version was asked.
                _ => self.decode::<ApiVersionsResponse>(bytes, 0, ApiKey::ApiVersions as i16)?,
            };
            let versions: HashMap<i16, (i16, i16)> = response
                .api_keys
                .iter()
                .map(|k| (k.api_key, (k.min_version, k.max_version)))
                .collect();
            match response.error_code {
                0 => return Ok(versions),
                code if code == ResponseError::UnsupportedVersion.code() => {
                    let theirs = versions.get(&(ApiKey::ApiVersions as i16)).copied();
                    match theirs {
                        Some((lo, hi)) if hi.min(API_VERSIONS.1) >= lo.max(API_VERSIONS.0) => {
                            version = hi.min(API_VERSIONS.1);
                        }
                        _ => {
                            return Err(ClientError::Unsupported {
                                addr: self.addr.clone(),
                                api: "ApiVersions".into(),
                                ours: API_VERSIONS,
                                theirs,
                            });
                        }
                    }
                }
                code => {
                    return Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        reason: format!("ApiVersions failed with error code {code}"),
                    });
                }
            }
        }
        Err(ClientError::Protocol {
            addr: self.addr.clone(),
            reason: "ApiVersions was refused twice as an unsupported version".into(),
        })
    }
}

async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Bytes>,
    pending: Arc<Mutex<Pending>>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = wr.write_all(&frame).await {
            fail_all(&pending, Failure::Closed(format!("cannot send: {e}")));
            return;
        }
    }
}

async fn read_frames(rd: OwnedReadHalf, pending: Arc<Mutex<Pending>>, response_bytes_max: usize) {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let failure = loop {
        let len = match rd.read_i32().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break Failure::Closed("the broker closed the connection".into());
            }
            Err(e) => break Failure::Closed(e.to_string()),
        };
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| (4..=response_bytes_max).contains(&l))
        else {
            break Failure::Protocol(format!(
                "a response of {len} bytes (the limit is {response_bytes_max}); is this a Kafka listener?"
            ));
        };
        let mut buf = BytesMut::zeroed(len);
        if let Err(e) = rd.read_exact(&mut buf).await {
            break Failure::Closed(format!("in the middle of a response: {e}"));
        }
        let correlation_id = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let next = pending.lock().queue.pop_front();
        match next {
            Some(f) if f.correlation_id == correlation_id => {
                // The caller may have given up; that is not the connection's problem.
                let _ = f.reply.send(Ok(buf.freeze()));
            }
            Some(f) => {
                let failure = Failure::Protocol(format!(
                    "response with correlation id {correlation_id} where {} was expected",
                    f.correlation_id
                ));
                let _ = f.reply.send(Err(failure.clone()));
                break failure;
            }
            None => {
                break Failure::Protocol(format!(
                    "a response (correlation id {correlation_id}) to no request"
                ));
            }
        }
    };
    fail_all(&pending, failure);
}
