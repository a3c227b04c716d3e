//! One handler per Kafka API. [`handle`] dispatches a decoded request; [`supported`] is the
//! single list of what is handled, which ApiVersions advertises and the server enforces.

pub mod admin;
pub mod api_versions;
#[cfg(test)]
mod compression_tests;
#[cfg(test)]
mod durability_tests;
pub mod fetch;
pub mod fetch_encode;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
pub mod produce_decode;
pub mod produce_encode;
#[cfg(test)]
mod produce_tests;
pub mod producer_id;
pub mod txn;
pub mod txn_admin;

use std::net::SocketAddr;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};

use crate::broker::Broker;
use crate::config::Listener;
use crate::error::BrokerError;

/// What every handler can reach.
#[derive(Debug)]
pub struct Ctx {
    pub broker: Broker,
    /// The address clients are told to connect to (this node).
    pub advertised: Listener,
    pub node_id: i32,
    /// Set when the server stops: long polls answer at once, so in-flight requests finish
    /// before the broker closes its logs.
    pub draining: tokio::sync::watch::Sender<bool>,
}

impl Ctx {
    pub fn new(broker: Broker, advertised: Listener) -> Ctx {
        let node_id = broker.config().kafka.node_id;
        Ctx {
            broker,
            advertised,
            node_id,
            draining: tokio::sync::watch::channel(false).0,
        }
    }

    /// A broker on `data_dir` with the default configuration, for handler tests.
    #[cfg(test)]
    pub(crate) async fn open_test_broker(data_dir: &std::path::Path) -> Broker {
        let config = crate::BrokerConfig {
            data_dir: data_dir.to_owned(),
            ..crate::BrokerConfig::default()
        };
        match Broker::open(config).await {
            Ok(broker) => broker,
            Err(e) => panic!("open a broker on {}: {e}", data_dir.display()),
        }
    }

    /// A context for handler tests: `broker` advertised as `localhost:9092`.
    #[cfg(test)]
    pub(crate) fn for_tests(broker: Broker) -> Ctx {
        Ctx::new(
            broker,
            Listener {
                name: "PLAINTEXT".into(),
                host: "localhost".into(),
                port: 9092,
            },
        )
    }
}

/// The APIs handled here, with version ranges (within what `kafka-protocol` can decode).
const CORE: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
];

/// Every `(api, min version, max version)` this server handles.
pub fn supported() -> impl Iterator<Item = (ApiKey, i16, i16)> {
    CORE.iter()
        .chain(groups::VERSIONS)
        .chain(admin::VERSIONS)
        .chain(txn::VERSIONS)
        .copied()
}

/// True when `version` of `api` is handled.
pub fn is_supported(api: ApiKey, version: i16) -> bool {
    supported().any(|(k, lo, hi)| k == api && (lo..=hi).contains(&version))
}

/// Runs the handler of a request. `peer` is the address of the client that sent it (`None`
/// when it did not come over a socket); Kafka reports it as a group member's client host.
/// `Err` closes the connection with that reason. Produce never comes here: the server reads it
/// by hand and stages it (`produce::stage`, `server::process_staged`).
pub async fn handle(
    ctx: &Ctx,
    header: &RequestHeader,
    request: RequestKind,
    peer: Option<SocketAddr>,
) -> Result<ResponseKind, String> {
    let v = header.request_api_version;
    Ok(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::Metadata(req) => ResponseKind::Metadata(metadata::handle(ctx, v, req).await),
        RequestKind::Fetch(req) => ResponseKind::Fetch(fetch::handle(ctx, v, req).await),
        RequestKind::ListOffsets(req) => {
            ResponseKind::ListOffsets(list_offsets::handle(ctx, v, req))
        }
        RequestKind::OffsetForLeaderEpoch(req) => {
            ResponseKind::OffsetForLeaderEpoch(list_offsets::offset_for_leader_epoch(ctx, req))
        }
        RequestKind::InitProducerId(req) => {
            ResponseKind::InitProducerId(producer_id::handle(ctx, v, req).await)
        }
        other => match groups::dispatch(ctx, header, other, peer).await {
            Ok(resp) => resp,
            Err(other) => match admin::dispatch(ctx, header, other).await {
                Ok(resp) => resp,
                Err(other) => match txn::dispatch(ctx, header, other).await {
                    Ok(resp) => resp,
                    Err(_) => {
                        return Err(format!(
                            "no handler for API key {} v{v}",
                            header.request_api_key
                        ));
                    }
                },
            },
        },
    })
}

/// Kafka's check of the leader epoch a client names (`current_leader_epoch`, -1 for none): an
/// older one means the client's metadata is stale (FENCED_LEADER_EPOCH, it refreshes and
/// validates its position), a newer one that this broker is behind (UNKNOWN_LEADER_EPOCH).
pub(crate) fn check_leader_epoch(
    log: &crate::log::Log,
    requested: i32,
) -> Result<(), ResponseError> {
    if requested < 0 {
        return Ok(());
    }
    let current = log.leader_epoch();
    match requested.cmp(&current) {
        std::cmp::Ordering::Less => Err(ResponseError::FencedLeaderEpoch),
        std::cmp::Ordering::Greater => Err(ResponseError::UnknownLeaderEpoch),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// The Kafka error code for a broker error.
pub fn error_code(e: &BrokerError) -> i16 {
    let err = match e {
        // Kafka's answer to operations refused on internal topics (as for DeleteRecords).
        BrokerError::InvalidTopicName { .. } | BrokerError::InternalTopic { .. } => {
            ResponseError::InvalidTopicException
        }
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        BrokerError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        BrokerError::InvalidRecords(_) => ResponseError::InvalidRecord,
        BrokerError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        BrokerError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        BrokerError::Transaction { code, .. } => *code,
        BrokerError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        BrokerError::Io { .. } | BrokerError::PartitionOffline { .. } => {
            ResponseError::KafkaStorageError
        }
        BrokerError::Corrupt { .. } => ResponseError::CorruptMessage,
        BrokerError::DataDirLocked { .. } | BrokerError::Arrow(_) | BrokerError::Internal(_) => {
            ResponseError::UnknownServerError
        }
    };
    err.code()
}
