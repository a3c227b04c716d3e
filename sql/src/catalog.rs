//! The streams and tables SQL knows: each a topic with its columns and formats.

use std::sync::Arc;

use quiver_broker::Broker;
use quiver_engine::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use quiver_engine::format::{Format, KafkaType};
use quiver_engine::source::{StartFrom, TopicSource};
use quiver_engine::{EngineError, TopicFormat};

use crate::parser::SourceKind;

/// How one side of a topic's records is written (`KEY_FORMAT`, `VALUE_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatName {
    Json,
    Delimited,
    Kafka,
    None,
}

impl FormatName {
    pub fn parse(text: &str) -> Option<FormatName> {
        match text.to_ascii_uppercase().as_str() {
            "JSON" => Some(FormatName::Json),
            "DELIMITED" => Some(FormatName::Delimited),
            "KAFKA" => Some(FormatName::Kafka),
            "NONE" => Some(FormatName::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FormatName::Json => "JSON",
            FormatName::Delimited => "DELIMITED",
            FormatName::Kafka => "KAFKA",
            FormatName::None => "NONE",
        }
    }
}

/// A stream or table of the catalog.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// As the catalog keys it (lower case unless quoted when created).
    pub name: String,
    pub topic: String,
    pub key_columns: Vec<FieldRef>,
    pub value_columns: Vec<FieldRef>,
    pub key_format: FormatName,
    pub value_format: FormatName,
    pub delimiter: u8,
    /// The value column that is the event time (`TIMESTAMP`), instead of the record time.
    pub timestamp: Option<String>,
    /// How the `timestamp` column's text is read (a chrono format, from `TIMESTAMP_FORMAT`).
    pub timestamp_format: Option<String>,
    /// The persistent query writing it, for streams and tables made by `CREATE … AS SELECT`.
    pub written_by: Option<String>,
    /// The statement that created it.
    pub statement: String,
}

impl SourceInfo {
    /// The declared columns: key columns, then value columns.
    pub fn schema(&self) -> Schema {
        let mut fields: Vec<FieldRef> = self.key_columns.clone();
        fields.extend(self.value_columns.iter().cloned());
        Schema::new(fields)
    }

    fn side(&self, format: FormatName, columns: &[FieldRef], side: &str) -> Result<Format, String> {
        let schema: SchemaRef = Arc::new(Schema::new(columns.to_vec()));
        match format {
            FormatName::None if columns.is_empty() => Ok(Format::None),
            FormatName::None => Err(format!(
                "{side}_FORMAT='NONE' reads no columns, but {} are declared",
                names(columns)
            )),
            _ if columns.is_empty() => Ok(Format::None),
            FormatName::Json => Ok(Format::json(schema)),
            FormatName::Delimited => Ok(Format::Delimited {
                schema,
                delimiter: self.delimiter,
            }),
            FormatName::Kafka => {
                let [field] = columns else {
                    return Err(format!(
                        "{side}_FORMAT='KAFKA' holds one column, but {} are declared; use \
                         {side}_FORMAT='JSON' or 'DELIMITED' for several",
                        names(columns)
                    ));
                };
                let kind = kafka_type(field.data_type()).ok_or_else(|| {
                    format!(
                        "{side}_FORMAT='KAFKA' cannot hold '{}' of type {}: it holds STRING, \
                         INT, BIGINT, DOUBLE or BYTES",
                        field.name(),
                        crate::types::sql_name(field.data_type())
                    )
                })?;
                Ok(Format::kafka(field.name(), kind))
            }
        }
    }

    /// The formats its records are read with.
    pub fn formats(&self) -> Result<(Format, Format), String> {
        Ok((
            self.side(self.key_format, &self.key_columns, "KEY")?,
            self.side(self.value_format, &self.value_columns, "VALUE")?,
        ))
    }

    /// A source reading it from `start` (a table always from the earliest offset: its rows are
    /// the whole changelog's).
    pub fn source(&self, broker: &Broker, start: StartFrom) -> Result<TopicSource, EngineError> {
        let (key, value) = self.formats().map_err(EngineError::config)?;
        let source = match self.kind {
            SourceKind::Table => TopicSource::table(Some(broker), &self.topic, key, value)?,
            SourceKind::Stream => {
                let s = TopicSource::new(broker, &self.topic, key.clone(), value.clone())?;
                let s = match &self.timestamp {
                    Some(column) => s.with_time_column(column, key, value)?,
                    None => s,
                };
                let s = match &self.timestamp_format {
                    Some(format) => s.with_time_format(format)?,
                    None => s,
                };
                s.with_start(start)
            }
        };
        Ok(source)
    }

    /// How a query writes rows of its columns to its topic.
    pub fn topic_format(&self) -> Result<TopicFormat, String> {
        let (key, value) = self.formats()?;
        Ok(TopicFormat {
            key_columns: self.key_columns.iter().map(|f| f.name().clone()).collect(),
            key,
            value_columns: self
                .value_columns
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            value,
        })
    }
}

fn names(columns: &[FieldRef]) -> String {
    columns
        .iter()
        .map(|f| format!("'{}'", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The KAFKA-format type of a column type.
pub fn kafka_type(t: &DataType) -> Option<KafkaType> {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KafkaType::String),
        DataType::Int32 => Some(KafkaType::Int32),
        DataType::Int64 => Some(KafkaType::Int64),
        DataType::Float64 => Some(KafkaType::Double),
        DataType::Binary => Some(KafkaType::Bytes),
        _ => None,
    }
}

/// A column of a query's output as a declared column (timestamps as the engine reads them).
pub fn declared_field(f: &Field) -> FieldRef {
    let t = match f.data_type() {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        other => other.clone(),
    };
    Arc::new(Field::new(f.name(), t, true))
}
