//! A user's pipeline tested with the test driver, as a Kafka Streams user tests one with
//! TopologyTestDriver: no broker, records piped in, time moved by hand, outputs read back.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_broker::Record;
use quiver_engine::prelude::*;

fn clicks_topology() -> Topology {
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let builder = StreamsBuilder::new();
    let clicks = builder
        .topic("clicks", Format::None, Format::json(value))
        .unwrap();
    let big = clicks.filter(col("amount").gt_eq(lit(10))).unwrap();
    big.group_by([col("user")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: 1_000 },
            grace_ms: 100,
        })
        .unwrap()
        .emit_final()
        .aggregate([sum(col("amount")).alias("total")])
        .unwrap()
        .to_stream()
        .to_topic("totals", TopicFormat::keyed(["user"]))
        .unwrap();
    big.group_by([col("user")])
        .unwrap()
        .count()
        .unwrap()
        .to_stream()
        .to_topic("counts", TopicFormat::keyed(["user"]))
        .unwrap();
    builder.build().unwrap()
}

fn click(user: &str, amount: i64, at: i64) -> Record {
    let v = format!(r#"{{"user":"{user}","amount":{amount}}}"#);
    Record::new(at, Some(user.as_bytes()), Some(v.as_bytes()))
}

fn totals(batches: &[arrow::array::RecordBatch]) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let users = b.column(0).as_string::<i32>();
        let starts = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let sums = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((users.value(i).to_owned(), starts.value(i), sums.value(i)));
        }
    }
    out.sort();
    out
}

#[test]
fn windows_close_only_when_event_time_passes_their_end_plus_grace() {
    let mut driver = TopologyTestDriver::new(clicks_topology());
    driver
        .pipe(
            "clicks",
            &[
                click("ann", 10, 100),
                click("bob", 5, 200),
                click("ann", 20, 900),
            ],
        )
        .unwrap();
    assert!(
        driver.output("totals").is_empty(),
        "the window [0, 1000) is open"
    );
    // Stream time 1050: past the end, not past the grace period.
    driver.pipe("clicks", &[click("bob", 30, 1_050)]).unwrap();
    assert!(driver.output("totals").is_empty());
    // Out of order but within grace: counted in the first window.
    driver.pipe("clicks", &[click("bob", 12, 990)]).unwrap();
    driver.advance_time(1_100).unwrap();
    assert_eq!(
        totals(&driver.take_output("totals")),
        [("ann".into(), 0, 30), ("bob".into(), 0, 12)]
    );
    // Too late now: dropped and reported.
    driver.pipe("clicks", &[click("ann", 50, 500)]).unwrap();
    assert_eq!(
        driver
            .late_rows()
            .iter()
            .map(|l| l.rows.num_rows())
            .sum::<usize>(),
        1
    );
    driver.finish().unwrap();
    assert_eq!(
        totals(&driver.output("totals")),
        [("bob".into(), 1_000, 30)]
    );

    // The updating count saw every record at or above 10, late ones included (no window).
    let counts = driver.output("counts");
    let mut last = std::collections::BTreeMap::new();
    for b in &counts {
        let users = b.column(0).as_string::<i32>();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            last.insert(users.value(i).to_owned(), n.value(i));
        }
    }
    assert_eq!(
        last,
        [("ann".to_string(), 3), ("bob".to_string(), 2)]
            .into_iter()
            .collect()
    );
}

#[test]
fn bad_records_and_unknown_streams_are_reported_not_fatal() {
    let mut driver = TopologyTestDriver::new(clicks_topology());
    driver
        .pipe(
            "clicks",
            &[
                Record::new(1, None, Some(b"{oops")),
                click("ann", 10, 2),
                Record::new(3, None, Some(br#"{"user":"x","amount":"ten"}"#)),
            ],
        )
        .unwrap();
    let bad: Vec<i64> = driver.bad_records().iter().map(|b| b.offset).collect();
    assert_eq!(bad, [0, 2]);
    assert_eq!(
        driver
            .output("counts")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        1
    );
    let err = driver.pipe("clikcs", &[click("a", 1, 1)]).unwrap_err();
    assert!(
        err.to_string().contains("the topology reads clicks"),
        "{err}"
    );
}

#[test]
fn a_declared_topology_does_not_run_without_a_broker() {
    let topology = clicks_topology();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(async {
            let running = Runtime::without_broker().run(topology).await?;
            running.wait().await
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("declared without a broker"),
        "{err}"
    );
}

#[derive(serde::Deserialize)]
struct Click {
    user: String,
    amount: i64,
}

#[derive(serde::Serialize)]
struct Spend {
    user: String,
    cents: i64,
}

#[test]
fn typed_rows_map_through_serde_structs() {
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let out_schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("cents", DataType::Int64, false),
    ]));
    let builder = StreamsBuilder::new();
    builder
        .topic("clicks", Format::None, Format::json(value))
        .unwrap()
        .flat_map_rows("to_cents", out_schema, |c: Click| {
            // Two rows per click above 10, none below.
            if c.amount > 10 {
                vec![
                    Spend {
                        user: c.user.clone(),
                        cents: c.amount * 100,
                    },
                    Spend {
                        user: c.user,
                        cents: 1,
                    },
                ]
            } else {
                vec![]
            }
        })
        .unwrap()
        .to_topic("spend", TopicFormat::json())
        .unwrap();
    let mut driver = TopologyTestDriver::new(builder.build().unwrap());
    driver
        .pipe(
            "clicks",
            &[click("ann", 12, 1), click("bob", 3, 2), click("cy", 40, 3)],
        )
        .unwrap();
    let out = driver.output("spend");
    let mut got = Vec::new();
    for b in &out {
        let users = b.column(0).as_string::<i32>();
        let cents = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            got.push((users.value(i).to_owned(), cents.value(i)));
        }
    }
    assert_eq!(
        got,
        [
            ("ann".into(), 1200),
            ("ann".into(), 1),
            ("cy".into(), 4000),
            ("cy".into(), 1)
        ]
    );
}

#[test]
fn rust_udfs_run_through_datafusion_in_a_continuous_query() {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    // A scalar UDF written in Rust: price bands of 100.
    let band = create_udf(
        "band",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let v = arrays[0].as_any().downcast_ref::<Int64Array>().unwrap();
            let out: Int64Array = v.iter().map(|x| x.map(|x| x / 100 * 100)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let builder = StreamsBuilder::new();
    builder
        .topic("clicks", Format::None, Format::json(value))
        .unwrap()
        .group_by([band.call(vec![col("amount")]).alias("band")])
        .unwrap()
        .count()
        .unwrap()
        .to_stream()
        .to_topic("bands", TopicFormat::json())
        .unwrap();
    let mut driver = TopologyTestDriver::new(builder.build().unwrap());
    driver
        .pipe(
            "clicks",
            &[click("a", 150, 1), click("b", 199, 2), click("c", 250, 3)],
        )
        .unwrap();
    let mut last = std::collections::BTreeMap::new();
    for b in driver.output("bands") {
        let bands = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            last.insert(bands.value(i), n.value(i));
        }
    }
    assert_eq!(last, [(100, 2), (200, 1)].into_iter().collect());
}
