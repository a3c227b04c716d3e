//! What can go wrong talking to a Kafka broker, said so that a person can act on it.
//!
//! [`ClientError`] tells the caller's mistakes (a bad bootstrap address) from the network's (a
//! broker that cannot be reached, a connection that drops, a request that times out), from the
//! broker's refusals (a Kafka error code, as [`ApiError`]), from a broker that breaks the protocol.
//! It is separate from the broker's own errors (`quiver_broker::BrokerError`): those are a broker
//! in this process failing; these come from a remote one.

use kafka_protocol::error::ResponseError;

/// Result alias for client operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A Kafka error code from a broker, with the message it sent, if any.
///
/// Batch operations (create several topics, fetch several partitions) report one of these per
/// resource beside the others' results; the single-resource helpers turn it into
/// [`ClientError::Api`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub error: ResponseError,
    /// The broker's own explanation (Kafka sends one with some errors in newer API versions).
    pub message: Option<String>,
}

impl ApiError {
    /// The error for a response's `error_code`, or `None` for 0 (success).
    pub fn from_code(code: i16, message: Option<&str>) -> Option<ApiError> {
        ResponseError::try_from_code(code).map(|error| ApiError {
            error,
            message: message.filter(|m| !m.is_empty()).map(str::to_owned),
        })
    }

    /// Kafka's error code.
    pub fn code(&self) -> i16 {
        self.error.code()
    }

    /// Kafka's name for the error, e.g. `UNKNOWN_TOPIC_OR_PARTITION`.
    pub fn name(&self) -> String {
        error_name(self.error)
    }

    /// True when Kafka says trying again may succeed (a leader moving, a coordinator loading).
    pub fn is_retriable(&self) -> bool {
        self.error.is_retriable()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The broker's message names the resource and says what to do; the generic description
        // needs the code beside it to be searchable.
        match &self.message {
            Some(message) => f.write_str(message),
            None => match description(self.error) {
                Some(text) => write!(f, "{text} ({})", self.name()),
                None => write!(f, "the broker answered with error {}", self.name()),
            },
        }
    }
}

impl std::error::Error for ApiError {}

/// Everything a [`crate::KafkaClient`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A bad argument from the caller (an address without a port, an empty request).
    #[error("{0}")]
    InvalidArgument(String),

    /// No TCP connection could be made.
    #[error("cannot reach the Kafka broker at {addr}: {reason}; is `quiver server` running?")]
    Unreachable { addr: String, reason: String },

    /// The connection dropped or was closed with requests in flight.
    #[error("lost the connection to the Kafka broker at {addr}: {reason}")]
    Disconnected { addr: String, reason: String },

    /// No answer within the request timeout. The connection is closed (its answer could come
    /// later and be mistaken for another's); the next call reconnects.
    #[error(
        "the Kafka broker at {addr} did not answer {api} within {timeout_ms} ms; \
         is it overloaded, or is the address not a Kafka broker?"
    )]
    Timeout {
        addr: String,
        api: String,
        timeout_ms: u64,
    },

    /// The broker does not speak a version of an API that this client does.
    #[error("{}", unsupported_message(addr, api, *ours, *theirs))]
    Unsupported {
        addr: String,
        api: String,
        ours: (i16, i16),
        /// The broker's range, `None` when it does not serve the API at all.
        theirs: Option<(i16, i16)>,
    },

    /// The broker refused the request with a Kafka error code; `context` says what was asked.
    #[error("{context}: {error}")]
    Api { context: String, error: ApiError },

    /// The broker's answer breaks the protocol (does not decode, wrong correlation id, too
    /// large, records that do not parse).
    #[error("the Kafka broker at {addr} sent a bad response: {reason}")]
    Protocol { addr: String, reason: String },

    /// An idempotent producer's earlier batch to this partition may or may not have been
    /// written (its retries ran out), so the next batch cannot be numbered safely.
    #[error(
        "an earlier batch to {topic}-{partition} may or may not have been written (its retries \
         ran out), so this producer cannot number the next one safely; create a new IdempotentProducer"
    )]
    ProducerStateUnknown { topic: String, partition: i32 },

    /// A transactional producer's open transaction failed part-way (a send, offset commit or
    /// commit was refused, or its outcome is unknown): it can only be aborted.
    #[error(
        "the open transaction of transactional id '{transactional_id}' can only be aborted, since \
         an earlier request of it failed ({reason}); call abort() and run the transaction again"
    )]
    TransactionAbortOnly {
        transactional_id: String,
        reason: String,
    },

    /// A request this client built does not encode: a bug in Quiver.
    #[error("cannot encode a {api} request (a bug in Quiver): {reason}")]
    Internal { api: String, reason: String },
}

impl ClientError {
    /// The Kafka error, when the broker refused with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn unsupported_message(
    addr: &str,
    api: &str,
    ours: (i16, i16),
    theirs: Option<(i16, i16)>,
) -> String {
    match theirs {
        None => format!(
            "the Kafka broker at {addr} does not serve {api} requests; it may be an older Kafka or a Quiver build without that API"
        ),
        Some((lo, hi)) => format!(
            "the Kafka broker at {addr} speaks {api} versions {lo} to {hi}, and this client {} to {}; no version in common",
            ours.0, ours.1
        ),
    }
}

/// `UnknownTopicOrPartition` -> `UNKNOWN_TOPIC_OR_PARTITION`, Kafka's spelling.
pub(crate) fn error_name(error: ResponseError) -> String {
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let camel = format!("{error:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Kafka's description of the errors a client meets in practice (from Kafka's `Errors`).
fn description(error: ResponseError) -> Option<&'static str> {
    use ResponseError::*;
    Some(match error {
        UnknownServerError => {
            "The server experienced an unexpected error when processing the request."
        }
        OffsetOutOfRange => {
            "The requested offset is not within the range of offsets maintained by the server."
        }
        CorruptMessage => {
            "This message has failed its CRC checksum, exceeds the valid size, has a null key for a compacted topic, or is otherwise corrupt."
        }
        UnknownTopicOrPartition => "This server does not host this topic-partition.",
        LeaderNotAvailable => {
            "There is no leader for this topic-partition as we are in the middle of a leadership election."
        }
        NotLeaderOrFollower => {
            "For requests intended only for the leader, this error indicates that the broker is not the current leader. For requests intended for any replica, this error indicates that the broker is not a replica of the topic partition."
        }
        RequestTimedOut => "The request timed out.",
        BrokerNotAvailable => "The broker is not available.",
        MessageTooLarge => {
            "The request included a message larger than the max message size the server will accept."
        }
        NetworkException => "The server disconnected before a response was received.",
        CoordinatorLoadInProgress => "The coordinator is loading and hence can't process requests.",
        CoordinatorNotAvailable => "The coordinator is not available.",
        NotCoordinator => "This is not the correct coordinator.",
        InvalidTopicException => {
            "The request attempted to perform an operation on an invalid topic."
        }
        RecordListTooLarge => {
            "The request included message batch larger than the configured segment size on the server."
        }
        NotEnoughReplicas => {
            "Messages are rejected since there are fewer in-sync replicas than required."
        }
        NotEnoughReplicasAfterAppend => {
            "Messages are written to the log, but to fewer in-sync replicas than required."
        }
        InvalidRequiredAcks => "Produce request specified an invalid value for required acks.",
        IllegalGeneration => "Specified group generation id is not valid.",
        InconsistentGroupProtocol => {
            "The group member's supported protocols are incompatible with those of existing members or first group member tried to join with empty protocol type or empty protocol list."
        }
        InvalidGroupId => "The configured groupId is invalid.",
        UnknownMemberId => "The coordinator is not aware of this member.",
        InvalidSessionTimeout => {
            "The session timeout is not within the range allowed by the broker (as configured by group.min.session.timeout.ms and group.max.session.timeout.ms)."
        }
        RebalanceInProgress => "The group is rebalancing, so a rejoin is needed.",
        TopicAuthorizationFailed => "Topic authorization failed.",
        GroupAuthorizationFailed => "Group authorization failed.",
        ClusterAuthorizationFailed => "Cluster authorization failed.",
        InvalidTimestamp => "The timestamp of the message is out of acceptable range.",
        UnsupportedVersion => "The version of API is not supported.",
        TopicAlreadyExists => "Topic with this name already exists.",
        InvalidPartitions => "Number of partitions is below 1.",
        InvalidReplicationFactor => {
            "Replication factor is below 1 or larger than the number of available brokers."
        }
        InvalidReplicaAssignment => "Replica assignment is invalid.",
        InvalidConfig => "Configuration is invalid.",
        NotController => "This is not the correct controller for this cluster.",
        InvalidRequest => {
            "This most likely occurs because of a request being malformed by the client library or the message was sent to an incompatible broker. See the broker logs for more details."
        }
        UnsupportedForMessageFormat => {
            "The message format version on the broker does not support the request."
        }
        PolicyViolation => "Request parameters do not satisfy the configured policy.",
        OffsetMetadataTooLarge => "The metadata field of the offset request was too large.",
        OutOfOrderSequenceNumber => "The broker received an out of order sequence number.",
        DuplicateSequenceNumber => "The broker received a duplicate sequence number.",
        InvalidProducerEpoch => "Producer attempted to produce with an old epoch.",
        InvalidTxnState => "The producer attempted a transactional operation in an invalid state.",
        InvalidProducerIdMapping => {
            "The producer attempted to use a producer id which is not currently assigned to its transactional id."
        }
        InvalidTransactionTimeout => {
            "The transaction timeout is larger than the maximum value allowed by the broker (as configured by transaction.max.timeout.ms)."
        }
        ConcurrentTransactions => {
            "The producer attempted to update a transaction while another concurrent operation on the same transaction was ongoing."
        }
        TransactionalIdAuthorizationFailed => "Transactional Id authorization failed.",
        OperationNotAttempted => {
            "The broker did not attempt to execute this operation. This may happen for batched RPCs where some operations in the batch failed, causing the broker to respond without trying the rest."
        }
        ProducerFenced => {
            "There is a newer producer with the same transactionalId which fences the current one."
        }
        TransactionAbortable => {
            "The server encountered an error with the transaction. The client can abort the transaction to continue using this transactional ID."
        }
        KafkaStorageError => "Disk error when trying to access log file on the disk.",
        UnknownProducerId => {
            "This exception is raised by the broker if it could not locate the producer metadata associated with the producerId in question. This could happen if, for instance, the producer's records were deleted because their retention time had elapsed. Once the last records of the producerId are removed, the producer's metadata is removed from the broker, and future appends by the producer will return this exception."
        }
        NonEmptyGroup => "The group is not empty.",
        GroupIdNotFound => "The group id does not exist.",
        TopicDeletionDisabled => "Topic deletion is disabled.",
        FencedLeaderEpoch => {
            "The leader epoch in the request is older than the epoch on the broker."
        }
        UnknownLeaderEpoch => {
            "The leader epoch in the request is newer than the epoch on the broker."
        }
        UnsupportedCompressionType => {
            "The requesting client does not support the compression type of given partition."
        }
        OffsetNotAvailable => {
            "The leader high watermark has not caught up from a recent leader election so the offsets cannot be guaranteed to be monotonically increasing."
        }
        MemberIdRequired => {
            "The group member needs to have a valid member id before actually entering a consumer group."
        }
        GroupMaxSizeReached => "The consumer group has reached its max size.",
        FencedInstanceId => {
            "The broker rejected this static consumer since another consumer with the same group.instance.id has registered with a different member.id."
        }
        GroupSubscribedToTopic => {
            "Deleting offsets of a topic is forbidden while the consumer group is actively subscribed to it."
        }
        InvalidRecord => {
            "This record has failed the validation on broker and hence will be rejected."
        }
        ThrottlingQuotaExceeded => "The throttling quota has been exceeded.",
        ResourceNotFound => "A request illegally referred to a resource that does not exist.",
        DuplicateResource => "A request illegally referred to the same resource twice.",
        UnknownTopicId => "This server does not host this topic ID.",
        InconsistentTopicId => "The log's topic ID did not match the topic ID in the request",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_kafka_names_them() {
        assert_eq!(
            error_name(ResponseError::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            error_name(ResponseError::InvalidTopicException),
            "INVALID_TOPIC_EXCEPTION"
        );
        assert_eq!(
            error_name(ResponseError::Unknown(999)),
            "UNKNOWN_ERROR_CODE_999"
        );
        let generic = ApiError::from_code(3, None);
        assert_eq!(
            generic.map(|e| e.to_string()).as_deref(),
            Some("This server does not host this topic-partition. (UNKNOWN_TOPIC_OR_PARTITION)")
        );
        let told = ApiError::from_code(36, Some("topic 't' already exists"));
        assert_eq!(
            told.map(|e| e.to_string()).as_deref(),
            Some("topic 't' already exists")
        );
        assert_eq!(ApiError::from_code(0, Some("ignored")), None);
        assert_eq!(
            ApiError::from_code(-1, Some("")).and_then(|e| e.message),
            None,
            "an empty message is no message"
        );
    }
}
