//! Formats: how the key and value bytes of records become typed Arrow columns, and how columns
//! become key and value bytes again. Everything here works on whole batches: JSON through
//! arrow-json's tape decoder and its encoders, DELIMITED through arrow-csv's, KAFKA by reading
//! the envelope's binary column in place. No record goes through a `serde_json::Value`.
//!
//! A record that does not decode is not an error of the query: [`RecordDecoder::decode`] returns
//! it as a [`BadRecord`] (topic position, reason, and its bytes for a dead-letter topic) and
//! decodes the rest. A batch of good records costs one decoder pass; only a batch with a bad
//! record is decoded again one record at a time, to find which.
//!
//! A decoded stream's columns are the key's columns, then the value's, then the envelope's
//! pseudo-columns: [`ROWTIME`] (the record timestamp, or the event-time column when one is
//! named), [`ROWPARTITION`], [`ROWOFFSET`] and [`ROWHEADERS`], as ksqlDB names them.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, StructArray, UInt32Array,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::json::writer::{EncoderOptions, make_encoder};
use quiver_broker::record::col;

use crate::error::{EngineError, Result};

/// The record timestamp (or the declared event-time column), `Timestamp(ms)`.
pub const ROWTIME: &str = "rowtime";
/// The partition a record came from, `Int32`.
pub const ROWPARTITION: &str = "rowpartition";
/// The record's offset in its partition, `Int64`.
pub const ROWOFFSET: &str = "rowoffset";
/// The record's headers, `List<Struct<key Utf8, value Binary>>`.
pub const ROWHEADERS: &str = "rowheaders";
/// In a table's changelog: the row deletes its key (a tombstone: the key's record with a null
/// value), `Boolean`; its value columns are null.
pub const DELETED: &str = "__deleted";

/// The type of a KAFKA-format column: the bytes as they are, UTF-8 text, or a big-endian number
/// (Kafka's own serializers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaType {
    Bytes,
    String,
    Int32,
    Int64,
    Double,
}

impl KafkaType {
    fn data_type(self) -> DataType {
        match self {
            KafkaType::Bytes => DataType::Binary,
            KafkaType::String => DataType::Utf8,
            KafkaType::Int32 => DataType::Int32,
            KafkaType::Int64 => DataType::Int64,
            KafkaType::Double => DataType::Float64,
        }
    }
}

/// How one side of a record (its key or its value) is read and written.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Not read: the side gives no columns (and is written as null).
    None,
    /// JSON objects whose fields are the schema's columns. Missing nullable fields are null,
    /// fields not in the schema are ignored, a type mismatch or a missing non-nullable field
    /// makes the record bad.
    Json(SchemaRef),
    /// Delimited text (one line of CSV, no header): the schema's columns in order.
    Delimited { schema: SchemaRef, delimiter: u8 },
    /// The whole side as one column named `column`.
    Kafka { column: String, kind: KafkaType },
}

impl Format {
    /// JSON with a schema.
    pub fn json(schema: SchemaRef) -> Format {
        Format::Json(schema)
    }

    /// JSON with the schema inferred from sample values (at most 1,000 are looked at). Every
    /// inferred column is nullable.
    pub fn json_inferred<'a>(samples: impl IntoIterator<Item = &'a [u8]>) -> Result<Format> {
        let mut text = Vec::new();
        for s in samples.into_iter().take(1000) {
            text.extend_from_slice(s);
            text.push(b'\n');
        }
        if text.is_empty() {
            return Err(EngineError::config(
                "cannot infer a JSON schema from no samples; declare the schema instead",
            ));
        }
        let (schema, _) = arrow::json::reader::infer_json_schema(Cursor::new(text), Some(1000))
            .map_err(|e| EngineError::Format(format!("cannot infer a JSON schema: {e}")))?;
        Ok(Format::Json(Arc::new(schema)))
    }

    /// Comma-separated text with a schema.
    pub fn delimited(schema: SchemaRef) -> Format {
        Format::Delimited {
            schema,
            delimiter: b',',
        }
    }

    /// One KAFKA-format column.
    pub fn kafka(column: impl Into<String>, kind: KafkaType) -> Format {
        Format::Kafka {
            column: column.into(),
            kind,
        }
    }

    /// The columns this side decodes into.
    pub fn fields(&self) -> Vec<FieldRef> {
        match self {
            Format::None => vec![],
            Format::Json(schema) | Format::Delimited { schema, .. } => {
                schema.fields().iter().cloned().collect()
            }
            Format::Kafka { column, kind } => {
                vec![Arc::new(Field::new(column, kind.data_type(), true))]
            }
        }
    }

    /// Whether a record with a null side is skipped rather than decoded (a tombstone has no
    /// fields to read; a KAFKA column reads it as null).
    fn skips_null(&self) -> bool {
        matches!(self, Format::Json(_) | Format::Delimited { .. })
    }
}

/// A record that could not be decoded: where it is, why, and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// What [`RecordDecoder::decode`] made of a batch.
#[derive(Debug)]
pub struct Decoded {
    /// The good records, in the decoder's schema.
    pub batch: RecordBatch,
    /// The records that did not decode.
    pub bad: Vec<BadRecord>,
    /// Records skipped because the side a format needs was null (tombstones).
    pub skipped_nulls: usize,
}

/// Decodes envelope batches (one partition's records) into typed columns.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    key: Format,
    value: Format,
    /// A value (or key) column that holds the event time, replacing the record timestamp.
    time_column: Option<usize>,
    /// How a text time column is read: a chrono `strftime` format (see
    /// [`RecordDecoder::with_time_format`]); without one, text is read as ISO 8601.
    time_format: Option<String>,
    schema: SchemaRef,
    /// Decoding a table's changelog: a record with a null value is a tombstone, decoded (its
    /// key only) with [`DELETED`] set; this decoder reads the tombstones' keys.
    tombstones: Option<Box<RecordDecoder>>,
    /// A table's schema: `schema` (the rows' as a stream would decode them) with value columns
    /// nullable, and [`DELETED`].
    changelog: Option<SchemaRef>,
}

impl RecordDecoder {
    /// A decoder for `key` and `value`. With `time_column`, that column (a timestamp, an
    /// integer of milliseconds, or text: ISO 8601 unless [`RecordDecoder::with_time_format`]
    /// says otherwise) is the event time [`ROWTIME`]; a record with a null there, or text that
    /// is not a time, is bad.
    pub fn new(key: Format, value: Format, time_column: Option<&str>) -> Result<RecordDecoder> {
        let mut fields = key.fields();
        fields.extend(value.fields());
        let pseudo = [
            Field::new(
                ROWTIME,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(ROWPARTITION, DataType::Int32, false),
            Field::new(ROWOFFSET, DataType::Int64, false),
            Field::new(
                ROWHEADERS,
                quiver_broker::envelope_schema()
                    .field(col::HEADERS)
                    .data_type()
                    .clone(),
                false,
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for f in fields
            .iter()
            .map(|f| f.name().as_str())
            .chain(pseudo.iter().map(|f| f.name().as_str()))
        {
            if !seen.insert(f.to_owned()) {
                return Err(EngineError::config(format!(
                    "column '{f}' appears twice in the key, value and pseudo-columns ({ROWTIME}, \
                     {ROWPARTITION}, {ROWOFFSET}, {ROWHEADERS}); rename one"
                )));
            }
        }
        let time_column = match time_column {
            None => None,
            Some(name) => {
                let (i, f) = fields
                    .iter()
                    .enumerate()
                    .find(|(_, f)| f.name() == name)
                    .ok_or_else(|| {
                        EngineError::config(format!(
                            "the timestamp column '{name}' is not a key or value column"
                        ))
                    })?;
                match f.data_type() {
                    DataType::Timestamp(_, _)
                    | DataType::Int64
                    | DataType::Int32
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View => {}
                    other => {
                        return Err(EngineError::config(format!(
                            "the timestamp column '{name}' is {other}; it must be a timestamp, \
                             an integer of milliseconds since the epoch, or text"
                        )));
                    }
                }
                Some(i)
            }
        };
        fields.extend(pseudo.into_iter().map(Arc::new));
        Ok(RecordDecoder {
            key,
            value,
            time_column,
            time_format: None,
            schema: Arc::new(Schema::new(fields)),
            tombstones: None,
            changelog: None,
        })
    }

    /// Reads a text time column with a chrono `strftime` format (`%Y-%m-%d %H:%M:%S`): a time
    /// without an offset is UTC, a date alone its midnight. Fails when the decoder has no text
    /// time column, or the format is not one.
    pub fn with_time_format(mut self, format: &str) -> Result<RecordDecoder> {
        use chrono::format::{Item, StrftimeItems};
        let Some(i) = self.time_column else {
            return Err(EngineError::config(
                "a time format needs a timestamp column to read",
            ));
        };
        let column = self.schema.field(i);
        if !matches!(
            column.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(EngineError::config(format!(
                "the timestamp column '{}' is {}; a time format reads text",
                column.name(),
                column.data_type()
            )));
        }
        if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
            return Err(EngineError::config(format!(
                "'{format}' is not a time format"
            )));
        }
        if let Some(tombstones) = self.tombstones.take() {
            let tombstones = if tombstones.time_column.is_some() {
                (*tombstones).with_time_format(format)?
            } else {
                *tombstones
            };
            self.tombstones = Some(Box::new(tombstones));
        }
        self.time_format = Some(format.to_owned());
        Ok(self)
    }

    /// A decoder of a table's changelog (a topic read as a table): records as
    /// [`RecordDecoder::new`] decodes them, with value columns nullable and a [`DELETED`]
    /// column; a record with a null value deletes its key. The key format must give columns.
    pub fn table(key: Format, value: Format, time_column: Option<&str>) -> Result<RecordDecoder> {
        if key.fields().is_empty() {
            return Err(EngineError::config(
                "a table needs key columns: give its key a format (KAFKA, JSON or DELIMITED)",
            ));
        }
        let mut decoder = RecordDecoder::new(key.clone(), value.clone(), time_column)?;
        let keys = key.fields().len();
        let values = value.fields().len();
        let mut fields: Vec<FieldRef> = decoder.schema.fields().iter().cloned().collect();
        for f in fields.iter_mut().skip(keys).take(values) {
            *f = Arc::new(f.as_ref().clone().with_nullable(true));
        }
        fields.push(Arc::new(Field::new(DELETED, DataType::Boolean, false)));
        decoder.changelog = Some(Arc::new(Schema::new(fields)));
        // Tombstones have no value to take an event time from: theirs is the record's.
        let key_time = time_column.filter(|c| key.fields().iter().any(|f| f.name() == c));
        decoder.tombstones = Some(Box::new(RecordDecoder::new(key, Format::None, key_time)?));
        Ok(decoder)
    }

    /// Whether it decodes a table's changelog ([`RecordDecoder::table`]).
    pub fn is_table(&self) -> bool {
        self.changelog.is_some()
    }

    /// A table's key columns (`None` for a stream).
    pub fn table_key(&self) -> Option<Vec<String>> {
        self.changelog.as_ref()?;
        Some(self.key.fields().iter().map(|f| f.name().clone()).collect())
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> SchemaRef {
        self.changelog
            .clone()
            .unwrap_or_else(|| self.schema.clone())
    }

    /// Decodes one partition's envelope batch.
    pub fn decode(&self, partition: i32, envelope: &RecordBatch) -> Result<Decoded> {
        match (&self.tombstones, &self.changelog) {
            (Some(tombstones), Some(schema)) => {
                self.decode_changelog(partition, envelope, tombstones, schema)
            }
            _ => self.decode_rows(partition, envelope),
        }
    }

    /// A table's records: the tombstones' keys and the other records, in offset order.
    fn decode_changelog(
        &self,
        partition: i32,
        envelope: &RecordBatch,
        tombstones: &RecordDecoder,
        schema: &SchemaRef,
    ) -> Result<Decoded> {
        let values = envelope.column(col::VALUE);
        let deleted = arrow::compute::is_null(values.as_ref())?;
        let upserts = arrow::compute::not(&deleted)?;
        let mut parts = Vec::with_capacity(2);
        let mut bad = Vec::new();
        let mut skipped_nulls = 0;
        let n_keys = self.key.fields().len();
        for (mask, is_delete) in [(&upserts, false), (&deleted, true)] {
            let rows = mask.true_count();
            if rows == 0 {
                continue;
            }
            let part = if rows == envelope.num_rows() {
                envelope.clone()
            } else {
                arrow::compute::filter_record_batch(envelope, mask)?
            };
            let decoded = if is_delete {
                tombstones.decode_rows(partition, &part)?
            } else {
                self.decode_rows(partition, &part)?
            };
            bad.extend(decoded.bad);
            skipped_nulls += decoded.skipped_nulls;
            let batch = decoded.batch;
            let n = batch.num_rows();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            if is_delete {
                columns.extend(batch.columns()[..n_keys].iter().cloned());
                for f in self.value.fields() {
                    columns.push(arrow::array::new_null_array(f.data_type(), n));
                }
                columns.extend(batch.columns()[n_keys..].iter().cloned());
            } else {
                columns.extend(batch.columns().iter().cloned());
            }
            columns.push(Arc::new(arrow::array::BooleanArray::from(vec![
                is_delete;
                n
            ])));
            parts.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        let batch = match parts.len() {
            0 => RecordBatch::new_empty(schema.clone()),
            1 => parts.remove(0),
            _ => {
                // Puts and deletes of a key apply in the order they were written.
                let all = concat_batches(schema, &parts)?;
                let offset = all.column(schema.index_of(ROWOFFSET)?);
                let order = arrow::compute::sort_to_indices(offset.as_ref(), None, None)?;
                arrow::compute::take_record_batch(&all, &order)?
            }
        };
        Ok(Decoded {
            batch,
            bad,
            skipped_nulls,
        })
    }

    /// Decodes records as a stream's (see the module docs).
    fn decode_rows(&self, partition: i32, envelope: &RecordBatch) -> Result<Decoded> {
        let values = envelope.column(col::VALUE).as_binary::<i32>();
        let keys = envelope.column(col::KEY).as_binary::<i32>();
        let offsets = envelope
            .column(col::OFFSET)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let n = envelope.num_rows();

        let mut candidates: Vec<u32> = Vec::with_capacity(n);
        let mut skipped_nulls = 0;
        for i in 0..n {
            let null_side = (self.value.skips_null() && values.is_null(i))
                || (self.key.skips_null() && keys.is_null(i));
            if null_side {
                skipped_nulls += 1;
            } else {
                candidates.push(i as u32);
            }
        }
        let all = candidates.len() == n;

        let mut bad_rows: Vec<(u32, String)> = Vec::new();
        let (value_cols, value_ok) = decode_side(
            &self.value,
            "value",
            values,
            &candidates,
            all,
            &mut bad_rows,
        )?;
        let (key_cols, key_ok) = decode_side(
            &self.key,
            "key",
            keys,
            &value_ok,
            value_ok.len() == n,
            &mut bad_rows,
        )?;
        // Rows the value accepted but the key refused leave the value's columns.
        let value_cols = if key_ok.len() == value_ok.len() {
            value_cols
        } else {
            let positions = positions_in(&value_ok, &key_ok);
            value_cols
                .iter()
                .map(|c| take(c.as_ref(), &positions, None))
                .collect::<Result<Vec<_>, _>>()?
        };
        let accepted = key_ok;
        // Only a batch that lost rows needs its envelope columns taken.
        let rows = (accepted.len() != n).then(|| UInt32Array::from(accepted.clone()));
        let pick = |a: &ArrayRef| -> Result<ArrayRef> {
            match &rows {
                None => Ok(a.clone()),
                Some(rows) => Ok(take(a.as_ref(), rows, None)?),
            }
        };

        let mut columns = key_cols;
        columns.extend(value_cols);
        let mut rowtime = pick(envelope.column(col::TIMESTAMP))?;
        if let Some(i) = self.time_column {
            let (times, nulls) = event_times(&columns[i], self.time_format.as_deref())?;
            if nulls > 0 {
                // Rows without an event time cannot be placed in time: they are bad records.
                let keep: Vec<u32> = (0..times.len() as u32)
                    .filter(|&r| times.is_valid(r as usize))
                    .collect();
                for r in (0..times.len()).filter(|&r| times.is_null(r)) {
                    let reason = if columns[i].is_null(r) {
                        "the timestamp column is null".to_owned()
                    } else {
                        match &self.time_format {
                            Some(f) => {
                                format!("the timestamp column is not a time in the format '{f}'")
                            }
                            None => "the timestamp column is not a time".to_owned(),
                        }
                    };
                    bad_rows.push((accepted[r], reason));
                }
                return self.finish_filtered(
                    partition,
                    envelope,
                    columns,
                    times,
                    &accepted,
                    &keep,
                    bad_rows,
                    skipped_nulls,
                );
            }
            rowtime = times;
        }
        columns.push(rowtime);
        columns.push(Arc::new(Int32Array::from_value(partition, accepted.len())));
        columns.push(pick(envelope.column(col::OFFSET))?);
        columns.push(pick(envelope.column(col::HEADERS))?);
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let bad = bad_records(partition, offsets, keys, values, bad_rows);
        Ok(Decoded {
            batch,
            bad,
            skipped_nulls,
        })
    }

    /// The rest of `decode` when some decoded rows lost their event time: keeps `keep` (positions
    /// among `accepted`).
    #[allow(clippy::too_many_arguments)]
    fn finish_filtered(
        &self,
        partition: i32,
        envelope: &RecordBatch,
        columns: Vec<ArrayRef>,
        times: ArrayRef,
        accepted: &[u32],
        keep: &[u32],
        bad_rows: Vec<(u32, String)>,
        skipped_nulls: usize,
    ) -> Result<Decoded> {
        let keep_arr = UInt32Array::from(keep.to_vec());
        let rows = UInt32Array::from_iter_values(keep.iter().map(|&k| accepted[k as usize]));
        let mut out = columns
            .iter()
            .map(|c| take(c.as_ref(), &keep_arr, None))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(take(times.as_ref(), &keep_arr, None)?);
        out.push(Arc::new(Int32Array::from_value(partition, keep.len())));
        out.push(take(envelope.column(col::OFFSET).as_ref(), &rows, None)?);
        out.push(take(envelope.column(col::HEADERS).as_ref(), &rows, None)?);
        let batch = RecordBatch::try_new(self.schema.clone(), out)?;
        let offsets = envelope
            .column(col::OFFSET)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let keys = envelope.column(col::KEY).as_binary::<i32>();
        let values = envelope.column(col::VALUE).as_binary::<i32>();
        Ok(Decoded {
            batch,
            bad: bad_records(partition, offsets, keys, values, bad_rows),
            skipped_nulls,
        })
    }
}

/// For each of `subset` (a sorted sub-list of `all`), its position in `all`.
fn positions_in(all: &[u32], subset: &[u32]) -> UInt32Array {
    let mut out = Vec::with_capacity(subset.len());
    let mut j = 0;
    for (pos, row) in all.iter().enumerate() {
        if j < subset.len() && subset[j] == *row {
            out.push(pos as u32);
            j += 1;
        }
    }
    UInt32Array::from(out)
}

fn bad_records(
    partition: i32,
    offsets: &Int64Array,
    keys: &BinaryArray,
    values: &BinaryArray,
    mut rows: Vec<(u32, String)>,
) -> Vec<BadRecord> {
    rows.sort_by_key(|(r, _)| *r);
    rows.into_iter()
        .map(|(r, reason)| {
            let r = r as usize;
            BadRecord {
                partition,
                offset: offsets.value(r),
                reason,
                key: keys.is_valid(r).then(|| keys.value(r).to_vec()),
                value: values.is_valid(r).then(|| values.value(r).to_vec()),
            }
        })
        .collect()
}

/// A time column as `Timestamp(ms)`, and how many of its rows are null.
fn event_times(column: &ArrayRef, format: Option<&str>) -> Result<(ArrayRef, usize)> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let out = match (column.data_type(), format) {
        (DataType::Int32, _) => cast(&cast(column, &DataType::Int64)?, &ms)?,
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Some(format)) => {
            let text = cast(column, &DataType::Utf8)?;
            let times: arrow::array::TimestampMillisecondArray = text
                .as_string::<i32>()
                .iter()
                .map(|t| t.and_then(|t| parse_time(t, format)))
                .collect();
            Arc::new(times)
        }
        _ => cast(column, &ms)?,
    };
    let nulls = out.null_count();
    Ok((out, nulls))
}

/// A time read from text with a chrono `format` ([`parse_text_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextTime {
    /// The text gave its offset: an instant, in epoch milliseconds.
    Instant(i64),
    /// A date and time without an offset (a date alone at its midnight), for the reader to
    /// place in a time zone.
    Local(chrono::NaiveDateTime),
}

/// Text in a chrono `format` as a [`TextTime`]; `None` when it is not one.
pub fn parse_text_time(text: &str, format: &str) -> Option<TextTime> {
    if let Ok(t) = chrono::DateTime::parse_from_str(text, format) {
        return Some(TextTime::Instant(t.timestamp_millis()));
    }
    chrono::NaiveDateTime::parse_from_str(text, format)
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, format)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .map(TextTime::Local)
}

/// Text in a chrono `format` as epoch milliseconds: UTC unless the text gives its offset, a
/// date alone at its midnight.
pub fn parse_time(text: &str, format: &str) -> Option<i64> {
    Some(match parse_text_time(text, format)? {
        TextTime::Instant(ms) => ms,
        TextTime::Local(t) => t.and_utc().timestamp_millis(),
    })
}

/// Decodes one side of the rows `rows` (all rows when `all`). Returns the columns of the rows
/// it accepted and those rows; refused rows go to `bad` with the reason.
fn decode_side(
    format: &Format,
    side: &str,
    bytes: &BinaryArray,
    rows: &[u32],
    all: bool,
    bad: &mut Vec<(u32, String)>,
) -> Result<(Vec<ArrayRef>, Vec<u32>)> {
    match format {
        Format::None => Ok((vec![], rows.to_vec())),
        Format::Kafka { kind, .. } => {
            let selected: BinaryArray = if all {
                bytes.clone()
            } else {
                take(bytes, &UInt32Array::from(rows.to_vec()), None)?
                    .as_binary::<i32>()
                    .clone()
            };
            let (column, ok) = decode_kafka(*kind, side, &selected, rows, bad)?;
            Ok((vec![column], ok))
        }
        Format::Json(schema) => decode_text(TextKind::Json, schema, side, bytes, rows, bad),
        Format::Delimited { schema, delimiter } => decode_text(
            TextKind::Delimited(*delimiter),
            schema,
            side,
            bytes,
            rows,
            bad,
        ),
    }
}

fn decode_kafka(
    kind: KafkaType,
    side: &str,
    selected: &BinaryArray,
    rows: &[u32],
    bad: &mut Vec<(u32, String)>,
) -> Result<(ArrayRef, Vec<u32>)> {
    let fixed = |width: usize| -> Vec<bool> {
        (0..selected.len())
            .map(|i| selected.is_null(i) || selected.value(i).len() == width)
            .collect()
    };
    let (column, ok): (ArrayRef, Vec<bool>) = match kind {
        KafkaType::Bytes => (Arc::new(selected.clone()), vec![true; selected.len()]),
        // Not `cast`: its default turns invalid UTF-8 into nulls instead of failing.
        KafkaType::String => match arrow::compute::cast_with_options(
            selected,
            &DataType::Utf8,
            &arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        ) {
            Ok(c) => (c, vec![true; selected.len()]),
            Err(_) => {
                let ok: Vec<bool> = (0..selected.len())
                    .map(|i| selected.is_null(i) || std::str::from_utf8(selected.value(i)).is_ok())
                    .collect();
                let strings: StringArray = (0..selected.len())
                    .map(|i| {
                        (ok[i] && selected.is_valid(i))
                            .then(|| std::str::from_utf8(selected.value(i)).unwrap_or_default())
                    })
                    .collect();
                (Arc::new(strings), ok)
            }
        },
        KafkaType::Int32 => {
            let ok = fixed(4);
            let a: Int32Array = (0..selected.len())
                .map(|i| {
                    (ok[i] && selected.is_valid(i)).then(|| {
                        let v = selected.value(i);
                        i32::from_be_bytes([v[0], v[1], v[2], v[3]])
                    })
                })
                .collect();
            (Arc::new(a), ok)
        }
        KafkaType::Int64 | KafkaType::Double => {
            let ok = fixed(8);
            let be = |i: usize| {
                let v = selected.value(i);
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[..8]);
                b
            };
            let a: ArrayRef = if kind == KafkaType::Int64 {
                Arc::new(
                    (0..selected.len())
                        .map(|i| (ok[i] && selected.is_valid(i)).then(|| i64::from_be_bytes(be(i))))
                        .collect::<Int64Array>(),
                )
            } else {
                Arc::new(
                    (0..selected.len())
                        .map(|i| (ok[i] && selected.is_valid(i)).then(|| f64::from_be_bytes(be(i))))
                        .collect::<Float64Array>(),
                )
            };
            (a, ok)
        }
    };
    if ok.iter().all(|&b| b) {
        return Ok((column, rows.to_vec()));
    }
    let mut keep = Vec::new();
    let mut accepted = Vec::new();
    for (i, good) in ok.iter().enumerate() {
        if *good {
            keep.push(i as u32);
            accepted.push(rows[i]);
        } else {
            let reason = match kind {
                KafkaType::String => format!("the {side} is not valid UTF-8"),
                KafkaType::Int32 => format!(
                    "the {side} is {} bytes; a KAFKA INT is 4 bytes, big-endian",
                    selected.value(i).len()
                ),
                _ => format!(
                    "the {side} is {} bytes; a KAFKA BIGINT or DOUBLE is 8 bytes, big-endian",
                    selected.value(i).len()
                ),
            };
            bad.push((rows[i], reason));
        }
    }
    let column = take(column.as_ref(), &UInt32Array::from(keep), None)?;
    Ok((column, accepted))
}

#[derive(Debug, Clone, Copy)]
enum TextKind {
    Json,
    Delimited(u8),
}

/// arrow-json's or arrow-csv's push decoder, fed one record at a time so that a record that
/// does not make exactly one row is caught where it is.
enum TextDecoder {
    Json(arrow::json::reader::Decoder),
    Csv(Box<arrow::csv::reader::Decoder>, usize),
}

impl TextDecoder {
    fn new(kind: TextKind, schema: &SchemaRef, rows: usize) -> Result<TextDecoder> {
        let rows = rows.max(1);
        Ok(match kind {
            TextKind::Json => TextDecoder::Json(
                arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(rows)
                    .build_decoder()?,
            ),
            TextKind::Delimited(delimiter) => TextDecoder::Csv(
                Box::new(
                    arrow::csv::ReaderBuilder::new(schema.clone())
                        .with_header(false)
                        .with_delimiter(delimiter)
                        .with_batch_size(rows)
                        .build_decoder(),
                ),
                rows,
            ),
        })
    }

    /// Rows buffered so far.
    fn rows(&self) -> usize {
        match self {
            TextDecoder::Json(d) => d.len(),
            TextDecoder::Csv(d, size) => size - d.capacity(),
        }
    }

    /// Feeds one record; an error names what is wrong with it.
    fn feed(&mut self, record: &[u8]) -> Result<(), String> {
        let before = self.rows();
        match self {
            TextDecoder::Json(d) => {
                let used = d.decode(record).map_err(|e| e.to_string())?;
                if used != record.len() {
                    return Err("more than one JSON value in the record".into());
                }
                if d.has_partial_record() {
                    return Err("the JSON value is incomplete".into());
                }
            }
            TextDecoder::Csv(d, _) => {
                let line = record.strip_suffix(b"\n").unwrap_or(record);
                let used = d.decode(line).map_err(|e| e.to_string())?;
                if used != line.len() {
                    return Err("more than one line in the record".into());
                }
                d.decode(b"\n").map_err(|e| e.to_string())?;
            }
        }
        match self.rows() - before {
            1 => Ok(()),
            0 => Err("the record holds no value".into()),
            n => Err(format!("the record holds {n} values, not one")),
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, String> {
        match self {
            TextDecoder::Json(d) => d.flush().map_err(|e| e.to_string()),
            TextDecoder::Csv(d, _) => d.flush().map_err(|e| e.to_string()),
        }
    }
}

fn decode_text(
    kind: TextKind,
    schema: &SchemaRef,
    side: &str,
    bytes: &BinaryArray,
    rows: &[u32],
    bad: &mut Vec<(u32, String)>,
) -> Result<(Vec<ArrayRef>, Vec<u32>)> {
    // The fast path: every record in one decoder.
    let mut decoder = TextDecoder::new(kind, schema, rows.len())?;
    let fast = rows
        .iter()
        .try_for_each(|&r| decoder.feed(bytes.value(r as usize)))
        .and_then(|()| decoder.flush());
    if let Ok(batch) = fast {
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        if batch.num_rows() == rows.len() {
            return Ok((batch.columns().to_vec(), rows.to_vec()));
        }
    }
    // A record is bad: decode each alone to find which.
    let mut good = Vec::new();
    let mut accepted = Vec::new();
    let what = match kind {
        TextKind::Json => "JSON",
        TextKind::Delimited(_) => "DELIMITED",
    };
    for &r in rows {
        let mut one = TextDecoder::new(kind, schema, 1)?;
        let result = one.feed(bytes.value(r as usize)).and_then(|()| one.flush());
        match result {
            Ok(Some(batch)) if batch.num_rows() == 1 => {
                good.push(batch);
                accepted.push(r);
            }
            Ok(_) => bad.push((r, format!("the {side} holds no {what} value"))),
            Err(e) => bad.push((r, format!("the {side} is not valid {what}: {e}"))),
        }
    }
    let batch = concat_batches(schema, &good)?;
    Ok((batch.columns().to_vec(), accepted))
}

/// Encodes the rows of a batch into record keys or values in a format.
#[derive(Debug, Clone)]
pub struct SideEncoder {
    format: Format,
    /// The columns of the batch this side is made from, in order.
    columns: Vec<usize>,
}

impl SideEncoder {
    /// An encoder of `columns` (by name, from `schema`) in `format`. JSON writes an object of
    /// those columns; DELIMITED a line of them; KAFKA needs exactly one column.
    pub fn new(format: Format, schema: &Schema, columns: &[String]) -> Result<SideEncoder> {
        let indices = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    EngineError::config(format!(
                        "no column '{c}' to encode; the columns are {}",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Format::Kafka { kind, .. } = &format {
            let [i] = indices.as_slice() else {
                return Err(EngineError::config(format!(
                    "the KAFKA format writes one column, not {}; use JSON or DELIMITED for \
                     several",
                    indices.len()
                )));
            };
            let have = schema.field(*i).data_type();
            if !arrow::compute::can_cast_types(have, &kind.data_type()) {
                return Err(EngineError::config(format!(
                    "column '{}' is {have} and cannot be written as KAFKA {:?}",
                    schema.field(*i).name(),
                    kind
                )));
            }
        }
        Ok(SideEncoder {
            format,
            columns: indices,
        })
    }

    /// One value per row of `batch` (null when the format is [`Format::None`]).
    pub fn encode(&self, batch: &RecordBatch) -> Result<BinaryArray> {
        let n = batch.num_rows();
        match &self.format {
            Format::None => Ok(BinaryArray::new_null(n)),
            Format::Kafka { kind, .. } => {
                let column = cast(batch.column(self.columns[0]), &kind.data_type())?;
                Ok(match kind {
                    KafkaType::Bytes => column.as_binary::<i32>().clone(),
                    KafkaType::String => {
                        cast(&column, &DataType::Binary)?.as_binary::<i32>().clone()
                    }
                    KafkaType::Int32 => column
                        .as_primitive::<arrow::datatypes::Int32Type>()
                        .iter()
                        .map(|v| v.map(i32::to_be_bytes))
                        .collect::<BinaryArray>(),
                    KafkaType::Int64 => column
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .iter()
                        .map(|v| v.map(i64::to_be_bytes))
                        .collect::<BinaryArray>(),
                    KafkaType::Double => column
                        .as_primitive::<arrow::datatypes::Float64Type>()
                        .iter()
                        .map(|v| v.map(f64::to_be_bytes))
                        .collect::<BinaryArray>(),
                })
            }
            Format::Json(_) => {
                let projected = batch.project(&self.columns)?;
                let array = StructArray::from(projected);
                let field: FieldRef = Arc::new(Field::new("", array.data_type().clone(), false));
                let options = EncoderOptions::default();
                let mut encoder = make_encoder(&field, &array, &options)?;
                let mut data = Vec::with_capacity(n * 32);
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0i32);
                for i in 0..n {
                    encoder.encode(i, &mut data);
                    offsets.push(i32::try_from(data.len()).map_err(|_| {
                        EngineError::Format("a batch encodes to more than 2 GiB of JSON".into())
                    })?);
                }
                Ok(BinaryArray::new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from(data),
                    None,
                ))
            }
            Format::Delimited { delimiter, .. } => {
                let projected = batch.project(&self.columns)?;
                let mut data = Vec::with_capacity(n * 32);
                {
                    let mut writer = arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .with_delimiter(*delimiter)
                        .build(&mut data);
                    writer.write(&projected)?;
                }
                // One line per row; quoted fields keep their newlines escaped inside quotes, so
                // split on line ends outside quotes.
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0i32);
                let mut values = Vec::with_capacity(data.len());
                let mut quoted = false;
                for &b in &data {
                    match b {
                        b'"' => {
                            quoted = !quoted;
                            values.push(b);
                        }
                        b'\n' if !quoted => offsets.push(values.len() as i32),
                        _ => values.push(b),
                    }
                }
                if offsets.len() != n + 1 {
                    return Err(EngineError::internal(format!(
                        "{} DELIMITED lines for {n} rows",
                        offsets.len() - 1
                    )));
                }
                Ok(BinaryArray::new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from(values),
                    None,
                ))
            }
        }
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
