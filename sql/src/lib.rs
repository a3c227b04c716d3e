//! Quiver SQL: a ksqlDB-like language over the engine.
//!
//! - [`parser`]: the dialect (ksqlDB's streaming statements and clauses on sqlparser).
//! - [`plan`]: a query to a DataFusion `LogicalPlan` over the catalog's streams.
//! - [`engine`]: [`SqlEngine`] runs statements: the catalog, persistent queries (with
//!   exactly-once checkpoints), push queries, queries over history, and the command log that
//!   brings it all back after a restart.

pub mod catalog;
pub mod engine;
pub mod error;
mod functions;
mod history;
mod join;
pub mod nexmark;
pub mod parser;
pub mod plan;
mod top_n;
pub mod types;

pub use engine::{COMMAND_TOPIC, Output, PushQuery, SqlEngine};
pub use error::{ErrorKind, SqlError};
pub use parser::{ParseError, Parsed, Position, Statement, parse};

/// The known name closest to `typed`, for "did you mean" hints.
pub(crate) fn did_you_mean<'a>(
    typed: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    quiver_common::names::closest(typed, known)
}
