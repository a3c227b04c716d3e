//! How a connector decodes records into columns: `key.format` and `value.format`, with a
//! schema for the structured ones.
//!
//! - `bytes` (default): the side as one binary column, `key` or `value`;
//! - `string`: the side as one UTF-8 column;
//! - `json`: a JSON object per record, with `key.schema`/`value.schema` naming its columns;
//! - `delimited`: one CSV line per record, columns in `…schema` order;
//! - `none`: the side is not read.
//!
//! A schema is written as SQL column definitions: `id BIGINT, name STRING, amount DOUBLE NOT
//! NULL, ts TIMESTAMP`. Types: STRING/VARCHAR/TEXT, BIGINT, INT/INTEGER, SMALLINT, TINYINT,
//! DOUBLE, FLOAT/REAL, BOOLEAN, TIMESTAMP (milliseconds), DATE, BYTES/BINARY/VARBINARY,
//! DECIMAL(p, s). Columns are nullable unless marked NOT NULL.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use quiver_engine::{Format, KafkaType};

use crate::config::{ConnectorConfig, Key};
use crate::error::Result;

pub const KEY_FORMAT: Key = Key {
    name: "key.format",
    default: Some("bytes"),
    doc: "how record keys are read: bytes, string, json, delimited or none",
};
pub const VALUE_FORMAT: Key = Key {
    name: "value.format",
    default: Some("bytes"),
    doc: "how record values are read: bytes, string, json, delimited or none",
};
pub const KEY_SCHEMA: Key = Key {
    name: "key.schema",
    default: None,
    doc: "the key's columns for json or delimited keys: 'id BIGINT, region STRING'",
};
pub const VALUE_SCHEMA: Key = Key {
    name: "value.schema",
    default: None,
    doc: "the value's columns for json or delimited values: 'id BIGINT, amount DOUBLE'",
};
pub const TIMESTAMP_FIELD: Key = Key {
    name: "timestamp.field",
    default: None,
    doc: "a key or value column that holds the event time, instead of the record timestamp",
};

/// The keys of [`Decoding::from_config`].
pub const KEYS: &[Key] = &[
    KEY_FORMAT,
    VALUE_FORMAT,
    KEY_SCHEMA,
    VALUE_SCHEMA,
    TIMESTAMP_FIELD,
];

/// How records are decoded.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub key: Format,
    pub value: Format,
    pub time_column: Option<String>,
}

impl Decoding {
    pub fn from_config(config: &ConnectorConfig) -> Result<Decoding> {
        let side = |format: &Key, schema: &Key, column: &str| -> Result<Format> {
            let kind = config
                .choice(format, &["bytes", "string", "json", "delimited", "none"])?
                .unwrap_or_else(|| "bytes".into());
            let schema_of = || -> Result<SchemaRef> {
                let text = config.value(schema).ok_or_else(|| {
                    config.invalid(
                        format.name,
                        &kind,
                        &format!("{kind} needs the columns in '{}'", schema.name),
                    )
                })?;
                parse_schema(text).map_err(|e| config.invalid(schema.name, text, &e))
            };
            Ok(match kind.as_str() {
                "none" => Format::None,
                "string" => Format::kafka(column, KafkaType::String),
                "json" => Format::json(schema_of()?),
                "delimited" => Format::delimited(schema_of()?),
                _ => Format::kafka(column, KafkaType::Bytes),
            })
        };
        let key = side(&KEY_FORMAT, &KEY_SCHEMA, "key")?;
        let value = side(&VALUE_FORMAT, &VALUE_SCHEMA, "value")?;
        for (format, schema) in [(&KEY_FORMAT, &KEY_SCHEMA), (&VALUE_FORMAT, &VALUE_SCHEMA)] {
            let kind = config.value(format).unwrap_or("bytes").to_ascii_lowercase();
            if config.get(schema.name).is_some() && !matches!(kind.as_str(), "json" | "delimited") {
                return Err(config.invalid(
                    schema.name,
                    config.get(schema.name).unwrap_or_default(),
                    &format!(
                        "a schema is for json or delimited, and {} is {kind}",
                        format.name
                    ),
                ));
            }
        }
        Ok(Decoding {
            key,
            value,
            time_column: config.value(&TIMESTAMP_FIELD).map(String::from),
        })
    }
}

/// Parses `name TYPE [NOT NULL], …` (see the module docs).
pub fn parse_schema(text: &str) -> Result<SchemaRef, String> {
    let mut fields = Vec::new();
    for column in split_top_level(text) {
        let column = column.trim();
        if column.is_empty() {
            continue;
        }
        let (name, rest) = column
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("'{column}' has no type: write it as 'name TYPE'"))?;
        let name = name.trim_matches('`').trim_matches('"');
        let mut rest = rest.trim().to_owned();
        let upper = rest.to_ascii_uppercase();
        let nullable = if let Some(stripped) = upper.strip_suffix("NOT NULL") {
            rest.truncate(stripped.trim_end().len());
            false
        } else {
            true
        };
        let data_type = parse_type(rest.trim()).ok_or_else(|| {
            format!(
                "'{}' is not a type this schema takes (column '{name}')",
                rest.trim()
            )
        })?;
        fields.push(Field::new(name, data_type, nullable));
    }
    if fields.is_empty() {
        return Err("the schema has no columns".into());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Splits on commas outside parentheses (DECIMAL(10, 2) keeps its comma).
fn split_top_level(text: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_type(text: &str) -> Option<DataType> {
    let upper = text.to_ascii_uppercase();
    if let Some(args) = upper
        .strip_prefix("DECIMAL")
        .map(str::trim)
        .and_then(|a| a.strip_prefix('('))
        .and_then(|a| a.strip_suffix(')'))
    {
        let (p, s) = args.split_once(',').unwrap_or((args, "0"));
        let p: u8 = p.trim().parse().ok()?;
        let s: i8 = s.trim().parse().ok()?;
        return (1..=38).contains(&p).then_some(DataType::Decimal128(p, s));
    }
    Some(match upper.as_str() {
        "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
        "BIGINT" | "LONG" | "INT64" => DataType::Int64,
        "INT" | "INTEGER" | "INT32" => DataType::Int32,
        "SMALLINT" | "INT16" => DataType::Int16,
        "TINYINT" | "INT8" => DataType::Int8,
        "DOUBLE" | "FLOAT64" => DataType::Float64,
        "FLOAT" | "REAL" | "FLOAT32" => DataType::Float32,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "DATE" => DataType::Date32,
        "BYTES" | "BINARY" | "VARBINARY" => DataType::Binary,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    #[test]
    fn schemas_parse_with_types_and_nullability() {
        let s = parse_schema("id BIGINT NOT NULL, name STRING, price DECIMAL(10, 2), ts timestamp")
            .unwrap();
        assert_eq!(s.fields().len(), 4);
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.field(2).data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(
            s.field(3).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert!(parse_schema("id").unwrap_err().contains("no type"));
        assert!(
            parse_schema("id WHATEVER")
                .unwrap_err()
                .contains("'WHATEVER'")
        );
    }
}
