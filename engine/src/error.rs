//! The engine's error type. Variants say who is at fault: the query's author (a plan the engine
//! cannot run continuously, a bad option), the data (a record that does not decode), the
//! environment (the broker, a sink), or Quiver itself.

use datafusion::error::DataFusionError;
use quiver_broker::BrokerError;

/// Result alias for engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A query shape the engine cannot run on unbounded input (ORDER BY on a stream, say), or
    /// one that does not type-check. The message names the construct and what to do instead.
    #[error("cannot plan the query: {0}")]
    Plan(String),

    /// A bad option or argument given by the caller (an unknown format, a zero window size).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Records that cannot be decoded or encoded in the declared format.
    #[error("format error: {0}")]
    Format(String),

    /// The broker refused or failed (unknown topic, disk trouble, a fenced producer).
    #[error(transparent)]
    Broker(#[from] BrokerError),

    /// An external Kafka cluster refused or failed (unreachable, unknown topic, fenced).
    #[error("kafka cluster: {0}")]
    Kafka(#[from] quiver_kafka_client::ClientError),

    /// DataFusion failed while planning or evaluating an expression.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),

    /// Arrow failed on a batch (a cast, a concatenation).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// A sink failed to take output.
    #[error("sink '{sink}': {message}")]
    Sink { sink: String, message: String },

    /// Checkpoint storage failed, or the checkpoint to restore is missing or does not match
    /// the committed offsets.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// A query's state outgrew its memory limit (`QueryOptions::max_state_bytes`).
    #[error("state limit: {0}")]
    StateLimit(String),

    /// The query was stopped before it finished.
    #[error("the query was stopped")]
    Stopped,

    /// A task's downstream task ended before it: never the cause of a query's end (the
    /// runtime reports the downstream task's own error, or none when it ended at a stop).
    #[error("a downstream task of the query has gone")]
    DownstreamGone,

    /// A bug in Quiver: an invariant did not hold.
    #[error("internal error (a bug in Quiver): {0}")]
    Internal(String),
}

impl EngineError {
    /// A planning error with a message for the query's author.
    pub fn plan(message: impl Into<String>) -> Self {
        EngineError::Plan(message.into())
    }

    /// A configuration error with a message for the caller.
    pub fn config(message: impl Into<String>) -> Self {
        EngineError::Config(message.into())
    }

    /// A bug in Quiver.
    pub fn internal(message: impl Into<String>) -> Self {
        EngineError::Internal(message.into())
    }
}
