//! SQL column types (ksqlDB's names and the standard ones) as Arrow types, and back.

use std::sync::Arc;

use quiver_engine::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use sqlparser::ast::{ArrayElemTypeDef, DataType as Sql, ExactNumberInfo};

use crate::parser::normalize;

/// The Arrow type of a declared column type, or why it has none.
pub fn arrow_type(t: &Sql) -> Result<DataType, String> {
    Ok(match t {
        Sql::Boolean | Sql::Bool => DataType::Boolean,
        Sql::Int(_) | Sql::Integer(_) | Sql::Int4(_) | Sql::Int32 => DataType::Int32,
        Sql::SmallInt(_) | Sql::Int2(_) | Sql::Int16 => DataType::Int16,
        Sql::TinyInt(_) => DataType::Int8,
        Sql::BigInt(_) | Sql::Int8(_) | Sql::Int64 => DataType::Int64,
        Sql::Double(_) | Sql::DoublePrecision | Sql::Float8 | Sql::Float64 => DataType::Float64,
        Sql::Real | Sql::Float4 | Sql::Float32 => DataType::Float32,
        Sql::Float(ExactNumberInfo::None) => DataType::Float64,
        Sql::Decimal(info) | Sql::Numeric(info) | Sql::Dec(info) => match info {
            ExactNumberInfo::PrecisionAndScale(p, s) => {
                let p = u8::try_from(*p).ok().filter(|p| (1..=38).contains(p));
                let s = i8::try_from(*s).ok();
                match (p, s) {
                    (Some(p), Some(s)) if s >= 0 && s as u8 <= p => DataType::Decimal128(p, s),
                    _ => {
                        return Err(format!(
                            "{t}: precision is 1 to 38, scale 0 to the precision"
                        ));
                    }
                }
            }
            ExactNumberInfo::Precision(p) => match u8::try_from(*p) {
                Ok(p) if (1..=38).contains(&p) => DataType::Decimal128(p, 0),
                _ => return Err(format!("{t}: precision is 1 to 38")),
            },
            ExactNumberInfo::None => DataType::Decimal128(38, 10),
        },
        Sql::Varchar(_)
        | Sql::String(_)
        | Sql::Text
        | Sql::Char(_)
        | Sql::Character(_)
        | Sql::CharacterVarying(_)
        | Sql::CharVarying(_) => DataType::Utf8,
        Sql::Bytes(_) | Sql::Bytea | Sql::Binary(_) | Sql::Varbinary(_) | Sql::Blob(_) => {
            DataType::Binary
        }
        Sql::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Millisecond, None),
        Sql::Date => DataType::Date32,
        Sql::Time(_, _) => DataType::Time32(TimeUnit::Millisecond),
        Sql::Array(ArrayElemTypeDef::AngleBracket(inner))
        | Sql::Array(ArrayElemTypeDef::SquareBracket(inner, _))
        | Sql::Array(ArrayElemTypeDef::Parenthesis(inner)) => {
            DataType::List(Arc::new(Field::new("item", arrow_type(inner)?, true)))
        }
        Sql::Map(k, v) => {
            let key = arrow_type(k)?;
            if key != DataType::Utf8 {
                return Err(format!("{t}: a MAP's keys are STRING"));
            }
            let entries = Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", key, false),
                    Field::new("value", arrow_type(v)?, true),
                ])),
                false,
            );
            DataType::Map(Arc::new(entries), false)
        }
        Sql::Struct(fields, _) => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let Some(name) = &f.field_name else {
                    return Err(format!("{t}: every STRUCT field needs a name"));
                };
                out.push(Field::new(
                    normalize(name),
                    arrow_type(&f.field_type)?,
                    true,
                ));
            }
            DataType::Struct(Fields::from(out))
        }
        other => {
            return Err(format!(
                "the type {other} is not supported; use BOOLEAN, INT, BIGINT, DOUBLE, \
                 DECIMAL(p, s), STRING/VARCHAR, BYTES, TIMESTAMP, DATE, TIME, ARRAY<T>, \
                 MAP<STRING, T> or STRUCT<name T, …>"
            ));
        }
    })
}

/// The SQL name of an Arrow type, as DESCRIBE shows it.
pub fn sql_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        // As DataFusion's SQL (and MySQL) name them: ROW_NUMBER() gives a BIGINT UNSIGNED.
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("ARRAY<{}>", sql_name(f.data_type())),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                sql_name(kv[0].data_type()),
                sql_name(kv[1].data_type())
            ),
            _ => "MAP".into(),
        },
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
