//! The record envelope: the one Arrow schema every partition stores, and conversions between rows
//! (`Record`) and batches. The engine reads the columns directly; `Record` is for edges (CLI, tests,
//! protocol handlers) that deal in single records.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Int64Array, ListArray, ListBuilder, StringArray,
    StringBuilder, StructArray, StructBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::error::{Error, Result};

/// Column positions in the envelope schema.
pub mod col {
    pub const OFFSET: usize = 0;
    pub const TIMESTAMP: usize = 1;
    pub const KEY: usize = 2;
    pub const VALUE: usize = 3;
    pub const HEADERS: usize = 4;
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

static ENVELOPE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                false,
            ))),
            false,
        ),
    ]))
});

/// `offset Int64, timestamp Timestamp(ms), key Binary?, value Binary?, headers List<Struct<key Utf8, value Binary?>>`.
pub fn envelope_schema() -> SchemaRef {
    ENVELOPE.clone()
}

/// One record header: a UTF-8 key and an optional binary value, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One record as a row. `offset` is assigned by the log on append (ignored on input).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with a value only, stamped with `timestamp_ms`.
    pub fn new(timestamp_ms: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        Record {
            offset: 0,
            timestamp_ms,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, key: &str, value: Option<&[u8]>) -> Self {
        self.headers.push(Header {
            key: key.to_owned(),
            value: value.map(Bytes::copy_from_slice),
        });
        self
    }

    /// The size Kafka counts against `max.message.bytes` for one record: key, value and headers.
    pub fn size_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
    }
}

/// Builds envelope batches row by row. Offsets are left at 0; the log assigns them.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    timestamps: Vec<i64>,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
}

impl Default for EnvelopeBuilder {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

impl EnvelopeBuilder {
    /// Room for `rows` records with `data_bytes` of keys and values in all.
    pub fn with_capacity(rows: usize, data_bytes: usize) -> Self {
        let header_builder = StructBuilder::new(
            header_fields(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(BinaryBuilder::new()),
            ],
        );
        let item = Arc::new(Field::new("item", DataType::Struct(header_fields()), false));
        EnvelopeBuilder {
            timestamps: Vec::with_capacity(rows),
            keys: BinaryBuilder::with_capacity(rows, data_bytes / 8),
            values: BinaryBuilder::with_capacity(rows, data_bytes),
            headers: ListBuilder::with_capacity(header_builder, rows).with_field(item),
        }
    }

    /// Number of rows so far.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Appends one record from its parts.
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.timestamps.push(timestamp_ms);
        self.keys.append_option(key);
        self.values.append_option(value);
        let structs = self.headers.values();
        for (k, v) in headers {
            if let Some(b) = structs.field_builder::<StringBuilder>(0) {
                b.append_value(k);
            }
            if let Some(b) = structs.field_builder::<BinaryBuilder>(1) {
                b.append_option(*v);
            }
            structs.append(true);
        }
        self.headers.append(true);
    }

    /// Appends one `Record`.
    pub fn append_record(&mut self, record: &Record) {
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_deref()))
            .collect();
        self.append(
            record.timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }

    /// Finishes the batch (offsets all 0) and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        let n = self.timestamps.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![0i64; n])),
            Arc::new(TimestampMillisecondArray::from(std::mem::take(
                &mut self.timestamps,
            ))),
            Arc::new(self.keys.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.headers.finish()),
        ];
        // The columns match the schema by construction.
        RecordBatch::try_new(envelope_schema(), columns)
            .unwrap_or_else(|e| unreachable!("envelope builder produced a bad batch: {e}"))
    }
}

/// Builds an envelope batch from records.
pub fn records_to_batch(records: &[Record]) -> RecordBatch {
    let bytes = records.iter().map(Record::size_bytes).sum();
    let mut builder = EnvelopeBuilder::with_capacity(records.len(), bytes);
    for r in records {
        builder.append_record(r);
    }
    builder.finish()
}

/// Typed access to the columns of an envelope batch.
#[derive(Debug)]
pub struct EnvelopeColumns<'a> {
    pub offsets: &'a Int64Array,
    pub timestamps: &'a TimestampMillisecondArray,
    pub keys: &'a BinaryArray,
    pub values: &'a BinaryArray,
    pub headers: &'a ListArray,
}

impl<'a> EnvelopeColumns<'a> {
    /// Checks the batch has the envelope schema and borrows its columns.
    pub fn try_new(batch: &'a RecordBatch) -> Result<Self> {
        if batch.schema().fields() != envelope_schema().fields() {
            return Err(Error::InvalidRecords(format!(
                "batch schema does not match the record envelope; expected {:?}, got {:?}",
                envelope_schema().fields(),
                batch.schema().fields()
            )));
        }
        let bad = |name: &str| Error::InvalidRecords(format!("column {name} has the wrong type"));
        Ok(EnvelopeColumns {
            offsets: batch
                .column(col::OFFSET)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| bad("offset"))?,
            timestamps: batch
                .column(col::TIMESTAMP)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| bad("timestamp"))?,
            keys: batch
                .column(col::KEY)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| bad("key"))?,
            values: batch
                .column(col::VALUE)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| bad("value"))?,
            headers: batch
                .column(col::HEADERS)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| bad("headers"))?,
        })
    }

    /// Key of row `i`, if not null.
    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.keys.is_valid(i).then(|| self.keys.value(i))
    }

    /// Value of row `i`, if not null.
    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        self.values.is_valid(i).then(|| self.values.value(i))
    }

    /// Headers of row `i`.
    pub fn headers(&self, i: usize) -> Vec<Header> {
        self.header_range(i)
            .map(|(keys, values, range)| {
                range
                    .map(|j| Header {
                        key: keys.value(j).to_owned(),
                        value: values
                            .is_valid(j)
                            .then(|| Bytes::copy_from_slice(values.value(j))),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The header keys and values of all rows (the list's child columns), if the batch has any
    /// header column data.
    fn header_children(&self) -> Option<(&'a StringArray, &'a BinaryArray)> {
        let structs = self
            .headers
            .values()
            .as_any()
            .downcast_ref::<StructArray>()?;
        Some((
            structs.column(0).as_any().downcast_ref::<StringArray>()?,
            structs.column(1).as_any().downcast_ref::<BinaryArray>()?,
        ))
    }

    /// Row `i`'s headers as indexes into the header key and value columns, without copying.
    pub fn header_range(
        &self,
        i: usize,
    ) -> Option<(&'a StringArray, &'a BinaryArray, std::ops::Range<usize>)> {
        let lists = self.headers.value_offsets();
        let range = lists[i] as usize..lists[i + 1] as usize;
        if range.is_empty() {
            return None;
        }
        let (keys, values) = self.header_children()?;
        Some((keys, values, range))
    }

    /// The size Kafka counts against `max.message.bytes` for every row (key + value + header
    /// keys and values), computed from the offset buffers without touching the data.
    pub fn record_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        let keys = self.keys.value_offsets();
        let values = self.values.value_offsets();
        let lists = self.headers.value_offsets();
        let header_offsets = self
            .header_children()
            .map(|(k, v)| (k.value_offsets(), v.value_offsets()));
        (0..self.offsets.len()).map(move |i| {
            let mut size = (keys[i + 1] - keys[i]) as usize + (values[i + 1] - values[i]) as usize;
            if let Some((hk, hv)) = header_offsets {
                let (lo, hi) = (lists[i] as usize, lists[i + 1] as usize);
                size += (hk[hi] - hk[lo]) as usize + (hv[hi] - hv[lo]) as usize;
            }
            size
        })
    }

    /// Row `i` as a `Record`.
    pub fn record(&self, i: usize) -> Record {
        Record {
            offset: self.offsets.value(i),
            timestamp_ms: self.timestamps.value(i),
            key: self.key(i).map(Bytes::copy_from_slice),
            value: self.value(i).map(Bytes::copy_from_slice),
            headers: self.headers(i),
        }
    }
}

/// All rows of an envelope batch as `Record`s.
pub fn batch_to_records(batch: &RecordBatch) -> Result<Vec<Record>> {
    let cols = EnvelopeColumns::try_new(batch)?;
    Ok((0..batch.num_rows()).map(|i| cols.record(i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = vec![
            Record::new(1, Some(b"k1"), Some(b"v1"))
                .with_header("h", Some(b"x"))
                .with_header("n", None),
            Record::new(2, None, None),
            Record::new(3, Some(b""), Some(b"only value")),
        ];
        let batch = records_to_batch(&records);
        assert_eq!(batch.schema(), envelope_schema());
        assert_eq!(batch_to_records(&batch).unwrap_or_default(), records);
    }

    #[test]
    fn foreign_schema_is_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]);
        let Ok(batch) = batch else {
            panic!("test batch")
        };
        assert!(matches!(
            EnvelopeColumns::try_new(&batch),
            Err(Error::InvalidRecords(_))
        ));
    }
}
