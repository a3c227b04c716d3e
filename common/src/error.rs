//! The one error of this crate: records that are not what the envelope says they must be.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong converting records. Always the caller's input: nothing here does I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A batch that is not an envelope batch, or records that cannot be encoded.
    #[error("invalid records: {0}")]
    InvalidRecords(String),
}
