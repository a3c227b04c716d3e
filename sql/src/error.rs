//! What a statement can fail with: the message for its author and, when the statement is at
//! fault, where in it.

use std::fmt;

use crate::parser::{ParseError, Position};

/// Who is at fault decides the HTTP status and whether the shell goes on with a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement does not parse.
    Syntax,
    /// It parses but cannot run: an unknown name, a type error, a bad window or property.
    Statement,
    /// The broker or the engine failed while running it.
    Runtime,
}

/// A statement that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub kind: ErrorKind,
    pub message: String,
    /// Where in the statement (or script) the error is; `None` when it is not about the text.
    pub position: Option<Position>,
}

impl SqlError {
    pub(crate) fn plan(message: impl Into<String>, position: Position) -> SqlError {
        SqlError {
            kind: ErrorKind::Statement,
            message: message.into(),
            position: Some(position),
        }
    }

    pub(crate) fn runtime(message: impl Into<String>) -> SqlError {
        SqlError {
            kind: ErrorKind::Runtime,
            message: message.into(),
            position: None,
        }
    }
}

impl From<ParseError> for SqlError {
    fn from(e: ParseError) -> SqlError {
        SqlError {
            kind: ErrorKind::Syntax,
            message: e.message,
            position: Some(e.position),
        }
    }
}

impl From<quiver_engine::EngineError> for SqlError {
    fn from(e: quiver_engine::EngineError) -> SqlError {
        use quiver_engine::EngineError as E;
        let kind = match e {
            E::Plan(_) | E::Config(_) => ErrorKind::Statement,
            _ => ErrorKind::Runtime,
        };
        SqlError {
            kind,
            message: e.to_string(),
            position: None,
        }
    }
}

impl From<quiver_broker::BrokerError> for SqlError {
    fn from(e: quiver_broker::BrokerError) -> SqlError {
        SqlError::runtime(e.to_string())
    }
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> SqlError {
        SqlError::runtime(crate::plan::describe_plan_error(&e))
    }
}

impl From<quiver_engine::arrow::error::ArrowError> for SqlError {
    fn from(e: quiver_engine::arrow::error::ArrowError) -> SqlError {
        SqlError::runtime(e.to_string())
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} (at {p})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqlError {}
