//! The connectors' error type. Variants say who is at fault: the config file (a key that is
//! unknown, missing or malformed), the store (unreachable, credentials refused, no such
//! bucket), the records, or the engine and broker the connector reads through.

use quiver_engine::EngineError;

/// Result alias for connector operations.
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// Everything a connector can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connector's config: a file that does not parse, an unknown, missing or malformed
    /// key. The message names the file and the key.
    #[error("{0}")]
    Config(String),

    /// The object store refused or failed (unreachable, credentials, a missing bucket).
    #[error("{0}")]
    Store(String),

    /// A topic the connector reads does not exist (yet).
    #[error("{0}")]
    NoTopic(String),

    /// A record the sink cannot take, and `errors.tolerance` does not allow skipping.
    #[error("{0}")]
    Record(String),

    /// Reading the topic or committing its offsets failed.
    #[error(transparent)]
    Engine(#[from] EngineError),

    /// Writing Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// Arrow failed on a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl ConnectError {
    pub(crate) fn config(message: impl Into<String>) -> ConnectError {
        ConnectError::Config(message.into())
    }
}

impl From<quiver_broker::BrokerError> for ConnectError {
    fn from(e: quiver_broker::BrokerError) -> ConnectError {
        ConnectError::Engine(e.into())
    }
}
