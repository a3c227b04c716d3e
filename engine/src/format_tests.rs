#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, TimestampMillisecondType};
use quiver_broker::{Record, records_to_batch};

use super::*;

fn envelope(values: &[Option<&[u8]>]) -> RecordBatch {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record::new(1_000 + i as i64, Some(b"k"), *v))
        .collect();
    let batch = records_to_batch(&records);
    // Offsets as a stored batch has them.
    let offsets = arrow::array::Int64Array::from_iter_values(100..100 + values.len() as i64);
    let mut columns = batch.columns().to_vec();
    columns[col::OFFSET] = Arc::new(offsets);
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

fn order_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item", DataType::Utf8, true),
    ]))
}

#[test]
fn json_values_decode_into_typed_columns_with_the_envelope_pseudo_columns() {
    let decoder = RecordDecoder::new(Format::None, Format::json(order_schema()), None).unwrap();
    let batch = envelope(&[
        Some(br#"{"id": 1, "item": "apple"}"#),
        Some(br#"{"id": 2, "extra": true}"#),
    ]);
    let out = decoder.decode(3, &batch).unwrap();
    assert!(out.bad.is_empty());
    let b = out.batch;
    assert_eq!(b.num_rows(), 2);
    let names: Vec<_> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["id", "item", ROWTIME, ROWPARTITION, ROWOFFSET, ROWHEADERS]
    );
    assert_eq!(b.column(0).as_primitive::<Int64Type>().values(), &[1, 2]);
    assert_eq!(b.column(1).as_string::<i32>().value(0), "apple");
    assert!(b.column(1).is_null(1), "a missing nullable field is null");
    assert_eq!(
        b.column(2)
            .as_primitive::<TimestampMillisecondType>()
            .values(),
        &[1_000, 1_001]
    );
    assert_eq!(b.column(3).as_primitive::<Int32Type>().values(), &[3, 3]);
    assert_eq!(
        b.column(4).as_primitive::<Int64Type>().values(),
        &[100, 101]
    );
}

#[test]
fn bad_json_records_are_reported_with_their_offsets_and_the_rest_decode() {
    let decoder = RecordDecoder::new(Format::None, Format::json(order_schema()), None).unwrap();
    let batch = envelope(&[
        Some(br#"{"id": 1}"#),
        Some(br#"{"id": "not a number"}"#),
        Some(br#"{"id": 3"#),
        Some(br#"{"item": "no id"}"#),
        Some(br#"{"id": 5}{"id": 6}"#),
        None,
        Some(br#"{"id": 7}"#),
    ]);
    let out = decoder.decode(0, &batch).unwrap();
    let ids = out.batch.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids.values(), &[1, 7]);
    assert_eq!(
        out.batch.column(4).as_primitive::<Int64Type>().values(),
        &[100, 106],
        "the good rows keep their own offsets"
    );
    let bad: Vec<i64> = out.bad.iter().map(|b| b.offset).collect();
    assert_eq!(bad, [101, 102, 103, 104]);
    assert!(
        out.bad.iter().all(|b| b.reason.contains("JSON")),
        "{:?}",
        out.bad
    );
    assert_eq!(
        out.bad[0].value.as_deref(),
        Some(&br#"{"id": "not a number"}"#[..])
    );
    assert_eq!(out.skipped_nulls, 1, "a tombstone is skipped, not bad");
}

#[test]
fn kafka_format_reads_strings_and_big_endian_numbers_and_refuses_bad_widths() {
    let decoder = RecordDecoder::new(
        Format::kafka("k", KafkaType::String),
        Format::kafka("n", KafkaType::Int64),
        None,
    )
    .unwrap();
    let batch = envelope(&[Some(&7i64.to_be_bytes()), Some(b"abc"), None]);
    let out = decoder.decode(0, &batch).unwrap();
    assert_eq!(out.batch.num_rows(), 2);
    assert_eq!(out.batch.column(0).as_string::<i32>().value(0), "k");
    let n = out.batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(n.value(0), 7);
    assert!(n.is_null(1), "a null KAFKA value is a null column value");
    assert_eq!(out.bad.len(), 1);
    assert!(
        out.bad[0].reason.contains("8 bytes"),
        "{}",
        out.bad[0].reason
    );
}

#[test]
fn invalid_utf8_is_a_bad_record_for_a_string_key() {
    let decoder =
        RecordDecoder::new(Format::None, Format::kafka("s", KafkaType::String), None).unwrap();
    let batch = envelope(&[Some(b"ok"), Some(&[0xff, 0xfe]), Some(b"fine")]);
    let out = decoder.decode(0, &batch).unwrap();
    let s = out.batch.column(0).as_string::<i32>();
    assert_eq!((s.value(0), s.value(1)), ("ok", "fine"));
    assert_eq!(out.bad.len(), 1);
    assert!(out.bad[0].reason.contains("UTF-8"));
}

#[test]
fn delimited_values_decode_by_position() {
    let decoder =
        RecordDecoder::new(Format::None, Format::delimited(order_schema()), None).unwrap();
    let batch = envelope(&[Some(b"1,apple"), Some(b"x,pear"), Some(b"3,\"a, b\"")]);
    let out = decoder.decode(0, &batch).unwrap();
    assert_eq!(
        out.batch.column(0).as_primitive::<Int64Type>().values(),
        &[1, 3]
    );
    assert_eq!(out.batch.column(1).as_string::<i32>().value(1), "a, b");
    assert_eq!(out.bad.len(), 1);
    assert_eq!(out.bad[0].offset, 101);
}

#[test]
fn an_event_time_column_replaces_the_record_timestamp() {
    let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
    let decoder = RecordDecoder::new(Format::None, Format::json(schema), Some("ts")).unwrap();
    let batch = envelope(&[
        Some(br#"{"ts": 5000}"#),
        Some(br#"{}"#),
        Some(br#"{"ts": 7000}"#),
    ]);
    let out = decoder.decode(0, &batch).unwrap();
    let rowtime = out
        .batch
        .column(1)
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(rowtime.values(), &[5000, 7000]);
    assert_eq!(
        out.bad.len(),
        1,
        "a record without event time cannot be placed in time"
    );
    assert_eq!(out.bad[0].offset, 101);
}

#[test]
fn clashing_column_names_and_bad_time_columns_are_refused() {
    let schema = Arc::new(Schema::new(vec![Field::new(
        ROWTIME,
        DataType::Int64,
        true,
    )]));
    let err = RecordDecoder::new(Format::None, Format::json(schema), None).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let flags = Arc::new(Schema::new(vec![Field::new("ok", DataType::Boolean, true)]));
    let err = RecordDecoder::new(Format::None, Format::json(flags), Some("ok")).unwrap_err();
    assert!(err.to_string().contains("must be a timestamp"), "{err}");
    // A time format reads text, and must be one.
    let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
    let err = RecordDecoder::new(Format::None, Format::json(schema), Some("ts"))
        .unwrap()
        .with_time_format("%Y")
        .unwrap_err();
    assert!(err.to_string().contains("reads text"), "{err}");
    let err = RecordDecoder::new(Format::None, Format::json(order_schema()), Some("item"))
        .unwrap()
        .with_time_format("%Y %Q")
        .unwrap_err();
    assert!(err.to_string().contains("not a time format"), "{err}");
}

#[test]
fn a_text_event_time_is_read_as_iso_8601_or_with_its_format() {
    let schema = Arc::new(Schema::new(vec![Field::new("at", DataType::Utf8, true)]));
    let iso = RecordDecoder::new(Format::None, Format::json(schema.clone()), Some("at")).unwrap();
    let formatted = RecordDecoder::new(Format::None, Format::json(schema), Some("at"))
        .unwrap()
        .with_time_format("%d/%m/%Y %H:%M")
        .unwrap();
    for (decoder, good, time) in [
        (
            &iso,
            &br#"{"at": "2026-01-01T00:00:05Z"}"#[..],
            1_767_225_605_000,
        ),
        (
            &formatted,
            br#"{"at": "01/01/2026 00:01"}"#,
            1_767_225_660_000,
        ),
    ] {
        let batch = envelope(&[Some(good), Some(br#"{"at": "not a time"}"#), Some(br#"{}"#)]);
        let out = decoder.decode(0, &batch).unwrap();
        let rowtime = out
            .batch
            .column(1)
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(rowtime.values(), &[time]);
        assert_eq!(out.bad.len(), 2, "{:?}", out.bad);
        assert!(out.bad[0].reason.contains("not a time"), "{:?}", out.bad);
        assert!(out.bad[1].reason.contains("is null"), "{:?}", out.bad);
    }
}

#[test]
fn json_schema_inference_reads_samples() {
    let f =
        Format::json_inferred([&br#"{"a": 1, "b": "x"}"#[..], br#"{"a": 2, "c": 1.5}"#]).unwrap();
    let Format::Json(schema) = f else {
        panic!("not JSON")
    };
    assert_eq!(
        schema.field_with_name("a").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(
        schema.field_with_name("c").unwrap().data_type(),
        &DataType::Float64
    );
    assert!(Format::json_inferred(std::iter::empty::<&[u8]>()).is_err());
}

#[test]
fn encoders_write_json_delimited_and_kafka_values_that_decode_back() {
    let batch = RecordBatch::try_new(
        order_schema(),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
            Arc::new(arrow::array::StringArray::from(vec![
                Some("a,\"b\"\nc"),
                None,
            ])),
        ],
    )
    .unwrap();
    let cols = ["id".to_string(), "item".to_string()];
    for format in [
        Format::json(order_schema()),
        Format::delimited(order_schema()),
    ] {
        let enc = SideEncoder::new(format.clone(), &order_schema(), &cols).unwrap();
        let values = enc.encode(&batch).unwrap();
        assert_eq!(values.len(), 2);
        let env = envelope(&[Some(values.value(0)), Some(values.value(1))]);
        let out = RecordDecoder::new(Format::None, format.clone(), None)
            .unwrap()
            .decode(0, &env)
            .unwrap();
        assert!(out.bad.is_empty(), "{format:?}: {:?}", out.bad);
        assert_eq!(
            out.batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 2]
        );
        assert_eq!(
            out.batch.column(1).as_string::<i32>().value(0),
            "a,\"b\"\nc"
        );
    }
    let enc = SideEncoder::new(
        Format::kafka("id", KafkaType::Int64),
        &order_schema(),
        &cols[..1],
    )
    .unwrap();
    assert_eq!(enc.encode(&batch).unwrap().value(1), 2i64.to_be_bytes());
    let err =
        SideEncoder::new(Format::kafka("x", KafkaType::Int64), &order_schema(), &cols).unwrap_err();
    assert!(err.to_string().contains("one column"), "{err}");
}
