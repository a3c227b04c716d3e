//! The record envelope: the one Arrow schema every partition stores, and conversions between rows
//! (`Record`) and batches. The engine reads the columns directly; `Record` is for edges (CLI, tests,
//! protocol handlers) that deal in single records.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanBufferBuilder, Int64Array, ListArray, StringArray,
    StructArray, TimestampMillisecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
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
    HEADER_FIELDS.clone()
}

static HEADER_FIELDS: LazyLock<Fields> = LazyLock::new(|| {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
});

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
        Field::new("headers", DataType::List(HEADER_ITEM.clone()), false),
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

/// A nullable binary (or UTF-8) column built in plain vectors: a record appends with a copy
/// and two pushes, where Arrow's generic builders branch and check more per value.
#[derive(Debug)]
struct BytesColumn {
    /// Starts at 0; one more entry per row.
    offsets: Vec<i32>,
    data: Vec<u8>,
    nulls: Nulls,
}

/// The validity of a [`BytesColumn`]'s rows so far. The two common columns, keys that are all
/// null and values that are all set, need no bitmap while they are built.
#[derive(Debug)]
enum Nulls {
    /// Every row is valid (or there is none).
    None,
    /// Every row is null, and there is at least one.
    All,
    /// Some of each: a bit per row.
    Mixed(BooleanBufferBuilder),
}

impl BytesColumn {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        BytesColumn {
            offsets,
            data: Vec::with_capacity(bytes),
            nulls: Nulls::None,
        }
    }

    #[inline]
    fn end(&self) -> i32 {
        // Arrow's own builders refuse more than 2 GiB of values the same way; a batch this
        // large cannot reach a builder (requests and decompressed batches are capped far below).
        i32::try_from(self.data.len())
            .unwrap_or_else(|_| unreachable!("more than 2 GiB of values in one batch column"))
    }

    #[inline(always)]
    fn append(&mut self, value: Option<&[u8]>) {
        match (value, &mut self.nulls) {
            (Some(v), Nulls::None) => self.data.extend_from_slice(v),
            (None, Nulls::All) => {}
            (Some(v), Nulls::Mixed(bits)) => {
                bits.append(true);
                self.data.extend_from_slice(v);
            }
            (None, Nulls::Mixed(bits)) => bits.append(false),
            (value, _) => self.start_mixed(value),
        }
        let end = self.end();
        self.offsets.push(end);
    }

    /// Appends the first row that breaks a run of valid or of null rows (or the first row).
    #[cold]
    fn start_mixed(&mut self, value: Option<&[u8]>) {
        let rows = self.offsets.len() - 1;
        if rows == 0 && value.is_none() {
            self.nulls = Nulls::All;
            return;
        }
        let mut bits = BooleanBufferBuilder::new(self.offsets.capacity());
        bits.append_n(rows, matches!(self.nulls, Nulls::None));
        bits.append(value.is_some());
        if let Some(v) = value {
            self.data.extend_from_slice(v);
        }
        self.nulls = Nulls::Mixed(bits);
    }

    /// The column's offsets, values and nulls; the column starts over empty.
    fn take(&mut self) -> (OffsetBuffer<i32>, Buffer, Option<NullBuffer>) {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let data = std::mem::take(&mut self.data);
        let rows = offsets.len() - 1;
        let nulls = match std::mem::replace(&mut self.nulls, Nulls::None) {
            Nulls::None => None,
            Nulls::All => Some(NullBuffer::new_null(rows)),
            Nulls::Mixed(mut bits) => Some(NullBuffer::new(bits.finish())),
        };
        // Offsets start at 0 and never decrease, by construction.
        (
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(data),
            nulls,
        )
    }

    fn finish_binary(&mut self) -> BinaryArray {
        let (offsets, data, nulls) = self.take();
        BinaryArray::new(offsets, data, nulls)
    }

    /// Only for columns whose every value was appended from a `&str`.
    fn finish_utf8(&mut self) -> StringArray {
        let (offsets, data, nulls) = self.take();
        StringArray::new(offsets, data, nulls)
    }
}

/// The child of a headers column whose lists are all empty: no header pairs.
static NO_HEADER_PAIRS: LazyLock<ArrayRef> =
    LazyLock::new(|| arrow::array::new_empty_array(&DataType::Struct(header_fields())));

/// The item field of the headers list.
static HEADER_ITEM: LazyLock<FieldRef> =
    LazyLock::new(|| Arc::new(Field::new("item", DataType::Struct(header_fields()), false)));

/// Builds envelope batches row by row. Offsets are left at 0; the log assigns them.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    timestamps: Vec<i64>,
    keys: BytesColumn,
    values: BytesColumn,
    /// Offsets of each row's headers in the two header columns.
    header_lists: Vec<i32>,
    header_keys: BytesColumn,
    header_values: BytesColumn,
}

impl Default for EnvelopeBuilder {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

impl EnvelopeBuilder {
    /// Room for `rows` records with `data_bytes` of keys and values in all.
    pub fn with_capacity(rows: usize, data_bytes: usize) -> Self {
        let mut header_lists = Vec::with_capacity(rows + 1);
        header_lists.push(0);
        EnvelopeBuilder {
            timestamps: Vec::with_capacity(rows),
            keys: BytesColumn::with_capacity(rows, data_bytes / 8),
            values: BytesColumn::with_capacity(rows, data_bytes),
            header_lists,
            header_keys: BytesColumn::with_capacity(0, 0),
            header_values: BytesColumn::with_capacity(0, 0),
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
    // Always inlined: the record decoder's loop (Produce's work per record) calls it through
    // its sinks, and there `#[inline]` left it a call, 7% more instructions per produce.
    #[inline(always)]
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.timestamps.push(timestamp_ms);
        self.keys.append(key);
        self.values.append(value);
        for (k, v) in headers {
            self.header_keys.append(Some(k.as_bytes()));
            self.header_values.append(*v);
        }
        let headers_end = i32::try_from(self.header_keys.offsets.len() - 1)
            .unwrap_or_else(|_| unreachable!("more than 2^31 headers in one batch"));
        self.header_lists.push(headers_end);
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
        let header_pairs: ArrayRef = if self.header_keys.offsets.len() == 1 {
            // No record has a header (most batches): they all share one empty list child, which
            // spares building, checking and dropping its arrays for each batch.
            NO_HEADER_PAIRS.clone()
        } else {
            Arc::new(StructArray::new(
                header_fields(),
                vec![
                    Arc::new(self.header_keys.finish_utf8()) as ArrayRef,
                    Arc::new(self.header_values.finish_binary()),
                ],
                None,
            ))
        };
        let lists = std::mem::replace(&mut self.header_lists, vec![0]);
        let headers = ListArray::new(
            HEADER_ITEM.clone(),
            OffsetBuffer::new(ScalarBuffer::from(lists)),
            header_pairs,
            None,
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![0i64; n])),
            Arc::new(TimestampMillisecondArray::from(std::mem::take(
                &mut self.timestamps,
            ))),
            Arc::new(self.keys.finish_binary()),
            Arc::new(self.values.finish_binary()),
            Arc::new(headers),
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
        // Batches built here share the envelope's schema, which spares comparing its fields.
        let schema = batch.schema_ref();
        if !Arc::ptr_eq(schema, &ENVELOPE) && schema.fields() != ENVELOPE.fields() {
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
    pub fn header_children(&self) -> Option<(&'a StringArray, &'a BinaryArray)> {
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
