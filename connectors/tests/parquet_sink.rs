//! The Parquet sink against the in-process broker and the local filesystem: file names,
//! partitioned paths, rolling, restarts and crashes (every record exactly once), quiet topics,
//! bad records and bad configs. The same suite over a real S3 server, and independent readers
//! (pyarrow, DuckDB), are in the root package's `tests/connect.rs`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use common::{broker, connector, start};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_broker::{Broker, NewTopic, Record};
use quiver_connectors::{ConnectorConfig, SinkConnector, Status};
use quiver_engine::checkpoint::Cluster;
use tokio::sync::watch;

/// `count` JSON records to `topic`, keyed so they spread over its partitions; record `i` has
/// id `first + i`, region eu, us or ap by id (75%, 20%, 5%), and timestamp `start_ms + i * step_ms`.
async fn produce(b: &Broker, topic: &str, first: i64, count: i64, start_ms: i64, step_ms: i64) {
    let records: Vec<Record> = (first..first + count)
        .map(|id| {
            // Skewed, so that directories' files roll at different offsets.
            let region = match id {
                id if id % 20 == 0 => "ap",
                id if id % 4 == 0 => "us",
                _ => "eu",
            };
            let value = format!(
                r#"{{"id": {id}, "region": "{region}", "amount": {}.5}}"#,
                id % 100
            );
            Record::new(
                start_ms + (id - first) * step_ms,
                Some(format!("k{}", id % 7).as_bytes()),
                Some(value.as_bytes()),
            )
        })
        .collect();
    for chunk in records.chunks(97) {
        b.produce(topic, chunk).await.unwrap();
    }
}

/// Every `.parquet` file under `root`, by path relative to it.
fn files(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, p);
            }
        }
    }
    out
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// (partition, offset) of every row in every file under `root`.
fn rows(root: &Path) -> Vec<(i32, i64)> {
    let mut out = vec![];
    for path in files(root).values() {
        for b in read(path) {
            let p = b
                .column_by_name("rowpartition")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int32Type>();
            let o = b
                .column_by_name("rowoffset")
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((p.value(i), o.value(i)));
            }
        }
    }
    out.sort();
    out
}

/// Every (partition, offset) of `topic`'s records.
fn expected(b: &Broker, topic: &str) -> Vec<(i32, i64)> {
    let mut out = vec![];
    for p in 0..b.partition_count(topic).unwrap() {
        let o = b.offsets(topic, p).unwrap();
        out.extend((o.log_start_offset..o.high_watermark).map(|off| (p, off)));
    }
    out
}

#[tokio::test]
async fn records_land_once_in_files_named_by_partition_and_start_offset() {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("orders", 3)).await.unwrap();
    produce(&b, "orders", 0, 1000, 1_700_000_000_000, 10).await;
    let c = connector(&format!(
        "name=lake\nconnector.class=ParquetSink\ntopics=orders\nstore.url=file://{}\nflush.size=100\n\
         value.format=json\nvalue.schema=id BIGINT, region STRING, amount DOUBLE\nparquet.codec=zstd\n\
         tasks.max=2\n",
        lake.path().display()
    ));
    let running = start(&b, &c);
    running.wait_records(1000).await;
    // Two tasks split the three partitions, and status says which has which.
    assert_eq!(
        running.status.assigned(),
        BTreeMap::from([
            (0, vec!["orders-0".to_owned(), "orders-2".to_owned()]),
            (1, vec!["orders-1".to_owned()]),
        ])
    );
    running.stop().await;

    assert_eq!(rows(lake.path()), expected(&b, "orders"));
    let names: Vec<String> = files(lake.path()).into_keys().collect();
    // Each partition's files start at multiples of flush.size, zero-padded to 10 digits.
    for name in &names {
        let (dir, file) = name.rsplit_once('/').unwrap();
        let (_, partition) = dir.rsplit_once("partition=").unwrap();
        assert!(dir.starts_with("topics/orders/partition="), "{name}");
        let start: i64 = file
            .strip_prefix(&format!("orders+{partition}+"))
            .and_then(|s| s.strip_suffix(".parquet"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(start % 100, 0, "{name}");
        assert_eq!(
            file.len(),
            format!("orders+{partition}+").len() + 10 + 8,
            "{name}"
        );
    }
    // The values were decoded into typed columns.
    let first = read(files(lake.path()).values().next().unwrap());
    let schema = first[0].schema();
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        [
            "key",
            "id",
            "region",
            "amount",
            "rowtime",
            "rowpartition",
            "rowoffset",
            "rowheaders"
        ]
    );
    let ids = first[0]
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(ids.null_count() == 0 && !ids.is_empty());

    // The group holds the end of each partition, with no metadata left.
    let committed = b.groups().fetch_offsets_checked("connect-lake", None, true);
    assert_eq!(committed.len(), 3);
    for (topic, p, offset) in committed {
        let offset = offset.unwrap().unwrap();
        assert_eq!(offset.offset, b.offsets(&topic, p).unwrap().high_watermark);
        assert_eq!(offset.metadata, "");
    }
}

#[tokio::test]
async fn a_restart_resumes_and_a_crash_at_any_point_loses_and_duplicates_nothing() {
    // Files roll at flush.size: a replay rolls where the first run did.
    crash_rounds("flush.size=37\n").await;
}

#[tokio::test]
async fn files_rolled_early_for_memory_still_hold_every_record_once_after_crashes() {
    // Every write rolls what it touched (the buffer limit), so files roll where reads were
    // batched rather than at record counts.
    crash_rounds("flush.size=1000000\nbuffer.max.bytes=1\n").await;
}

/// Runs a connector over a growing topic, crashing it at varied points and stopping it
/// gracefully now and then; at the end every record is in exactly one file.
async fn crash_rounds(rolling: &str) {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("events", 2)).await.unwrap();
    // Field partitioning: directories end at different offsets, so a restart has to skip
    // what each directory's completed files hold.
    let c = connector(&format!(
        "name=crashy\nconnector.class=ParquetSink\ntopics=events\nstore.url=file://{}\n{rolling}\
         value.format=json\nvalue.schema=id BIGINT, region STRING, amount DOUBLE\n\
         partitioner.class=field\npartition.field.name=region\n\
         rotate.schedule.interval.ms=300\n",
        lake.path().display()
    ));
    let mut produced = 0;
    for round in 0..20u64 {
        produce(
            &b,
            "events",
            produced,
            250,
            1_700_000_000_000 + produced * 10,
            10,
        )
        .await;
        produced += 250;
        let running = start(&b, &c);
        if round % 3 == 2 {
            // A graceful stop.
            running.wait_records(1).await;
            running.stop().await;
        } else {
            // A crash: the task is dropped wherever it is, mid-file or mid-commit.
            let wait = Duration::from_millis(1 + (round * 13) % 40);
            tokio::time::sleep(wait).await;
            running.task.abort();
            let _ = running.task.await;
        }
    }
    let running = start(&b, &c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // The schedule rolls the last files, after which every offset is committed.
    while running.status.progress().lag != Some(0) {
        if running.task.is_finished() {
            let ended = running.task.await;
            panic!("the connector ended before it caught up: {ended:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag stays: {:?}, with {} files in the lake",
            running.status.progress(),
            files(lake.path()).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(rows(lake.path()), expected(&b, "events"));
    // Region moved from the files into the paths.
    let all = files(lake.path());
    assert!(all.keys().all(|k| k.starts_with("topics/events/region=")));
    assert!(
        all.keys()
            .any(|k| k.starts_with("topics/events/region=ap/"))
    );
    let batch = &read(all.values().next().unwrap())[0];
    assert!(batch.column_by_name("region").is_none());
}

#[tokio::test]
async fn hourly_paths_follow_record_time() {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("clicks", 1)).await.unwrap();
    // 2026-11-30T10:00:00Z, one record every 6 minutes: 4 hours of 10 records.
    produce(&b, "clicks", 0, 40, 1_796_032_800_000, 360_000).await;
    let c = connector(&format!(
        "name=hourly\nconnector.class=ParquetSink\ntopics=clicks\nstore.url=file://{}\n\
         partitioner.class=io.confluent.connect.storage.partitioner.HourlyPartitioner\n\
         timezone=UTC\nrotate.interval.ms=3600000\ntopics.dir=lake\n",
        lake.path().display()
    ));
    let running = start(&b, &c);
    running.wait_records(40).await;
    running.stop().await;
    let names: Vec<String> = files(lake.path()).into_keys().collect();
    assert_eq!(
        names,
        [
            "lake/clicks/year=2026/month=11/day=30/hour=10/clicks+0+0000000000.parquet",
            "lake/clicks/year=2026/month=11/day=30/hour=11/clicks+0+0000000010.parquet",
            "lake/clicks/year=2026/month=11/day=30/hour=12/clicks+0+0000000020.parquet",
            "lake/clicks/year=2026/month=11/day=30/hour=13/clicks+0+0000000030.parquet",
        ]
    );
}

#[tokio::test]
async fn readers_never_meet_a_partial_local_file_while_it_is_written_or_after_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("big", 1)).await.unwrap();
    // 12 MiB of incompressible values in one file that never rolls on its own: its upload
    // goes past the first 5 MiB part, so a partial file is on disk while it is written.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let records: Vec<Record> = (0..3_000i64)
        .map(|i| {
            let value: Vec<u8> = (0..4_096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Record::new(1_700_000_000_000 + i, None, Some(&value))
        })
        .collect();
    for chunk in records.chunks(100) {
        b.produce("big", chunk).await.unwrap();
    }
    let c = connector(&format!(
        "name=big\nconnector.class=ParquetSink\ntopics=big\nstore.url=file://{}\n\
         flush.size=1000000\nparquet.codec=none\nparquet.row.group.rows=100\n",
        lake.path().display()
    ));
    let running = start(&b, &c);
    running.wait_records(3_000).await;
    let all = |root: &Path| -> Vec<String> { files(root).into_keys().collect() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let partial = loop {
        if let Some(f) = all(lake.path()).into_iter().find(|f| f.contains('#')) {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never started: {:?}",
            all(lake.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // What readers see while the file is written: a name they pass over (hidden, and not
    // `*.parquet`), and nothing else.
    let name = partial.rsplit('/').next().unwrap();
    assert!(
        name.starts_with('.') && !name.ends_with(".parquet"),
        "a partial file where readers look: {partial}"
    );
    assert_eq!(all(lake.path()), vec![partial.clone()]);
    // A process killed with SIGKILL leaves its staged file behind (an aborted task removes
    // its own): stand one in for it, then crash this run too.
    let dead = lake.path().join(partial.replace('#', "#9"));
    std::fs::copy(lake.path().join(&partial), &dead).unwrap();
    running.kill().await;
    // The next run removes what the crash left and writes the file whole.
    let running = start(&b, &c);
    running.wait_records(3_000).await;
    running.stop().await;
    assert_eq!(
        all(lake.path()),
        vec!["topics/big/partition=0/big+0+0000000000.parquet".to_owned()]
    );
    assert_eq!(rows(lake.path()), expected(&b, "big"));
}

#[tokio::test]
async fn a_quiet_topic_is_in_a_committed_file_within_the_schedule_interval() {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("quiet", 1)).await.unwrap();
    let c = connector(&format!(
        "name=quiet\nconnector.class=ParquetSink\ntopics=quiet\nstore.url=file://{}\n\
         flush.size=1000000\nrotate.schedule.interval.ms=1000\n",
        lake.path().display()
    ));
    let running = start(&b, &c);
    produce(&b, "quiet", 0, 5, 1_700_000_000_000, 1).await;
    // No more records, no stop: the timer alone completes the file and commits it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.status.progress().files < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no file after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows(lake.path()).len(), 5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while running.status.progress().lag != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the offset was not committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn a_bad_record_stops_the_connector_unless_tolerated_then_goes_to_the_dead_letter_queue() {
    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("mixed", 1)).await.unwrap();
    b.create_topic(NewTopic::new("mixed-dlq", 1)).await.unwrap();
    produce(&b, "mixed", 0, 3, 1_700_000_000_000, 1).await;
    b.produce(
        "mixed",
        &[Record::new(
            1_700_000_000_100,
            None,
            Some(b"not json".as_slice()),
        )],
    )
    .await
    .unwrap();
    produce(&b, "mixed", 3, 3, 1_700_000_000_200, 1).await;
    let base = format!(
        "connector.class=ParquetSink\ntopics=mixed\nstore.url=file://{}\n\
         value.format=json\nvalue.schema=id BIGINT NOT NULL, region STRING\n",
        lake.path().display()
    );
    let strict = connector(&format!("name=strict\n{base}"));
    let (_stop, stopped) = watch::channel(false);
    let e = strict
        .run(Cluster::Local(b.clone()), stopped, Status::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixed-0 offset 3 does not decode"), "{e}");
    assert!(e.contains("errors.tolerance=all"), "{e}");

    // Into a lake of its own.
    let lake2 = tempfile::tempdir().unwrap();
    let tolerant = connector(&format!(
        "name=tolerant\n{}errors.tolerance=all\nerrors.deadletterqueue.topic.name=mixed-dlq\n",
        base.replace(
            &lake.path().display().to_string(),
            &lake2.path().display().to_string()
        )
    ));
    let running = start(&b, &tolerant);
    running.wait_records(6).await;
    running.stop().await;
    assert_eq!(rows(lake2.path()).len(), 6);
    let dlq = b.read("mixed-dlq", 0, 0, 1 << 20).unwrap();
    let records: Vec<Record> = dlq
        .batches
        .iter()
        .flat_map(|b| quiver_broker::batch_to_records(&b.records).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(b"not json".as_slice()));
    let offset_header = records[0]
        .headers
        .iter()
        .find(|h| h.key == "__connect.errors.offset")
        .unwrap();
    assert_eq!(offset_header.value.as_deref(), Some(b"3".as_slice()));
}

#[tokio::test]
async fn bad_configs_name_the_problem() {
    let refuse = |text: &str| -> String {
        match ConnectorConfig::from_properties(text, "bad.properties")
            .and_then(SinkConnector::from_config)
        {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    };
    let base =
        "name=bad\nconnector.class=ParquetSink\ntopics=t\nstore.url=file:///tmp/quiver-bad\n";
    let e = refuse(&format!("{base}flush.sizes=10\n"));
    assert!(
        e.contains("unknown key 'flush.sizes'") && e.contains("did you mean 'flush.size'"),
        "{e}"
    );
    let e = refuse("name=bad\nconnector.class=ParquetSink\nstore.url=file:///tmp/x\n");
    assert!(e.contains("'topics' is missing"), "{e}");
    let e = refuse("name=bad\nconnector.class=ParquetSink\ntopics=t\n");
    assert!(e.contains("'store.url' is missing"), "{e}");
    let e = refuse(&format!("{base}partitioner.class=field\n"));
    assert!(e.contains("'partition.field.name' is missing"), "{e}");
    let e = refuse(&format!("{base}parquet.codec=brotli9\n"));
    assert!(
        e.contains("'parquet.codec=brotli9'") && e.contains("snappy"),
        "{e}"
    );
    let e = refuse(&format!(
        "{base}partitioner.class=time\npath.format='year'=YYYY/'week'=ww\npartition.duration.ms=1000\n"
    ));
    assert!(e.contains("pattern letter 'w'"), "{e}");
    let e = refuse(&format!("{base}value.format=json\n"));
    assert!(e.contains("needs the columns in 'value.schema'"), "{e}");

    // An endpoint nothing listens on: a clear error at start, before anything is written.
    let c = connector(
        "name=nowhere\nconnector.class=S3Sink\ntopics=t\ns3.bucket.name=lake\n\
         store.url=http://127.0.0.1:9\naws.access.key.id=a\naws.secret.access.key=b\n\
         store.request.timeout.ms=2000\n",
    );
    let e = c.check().await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the store's endpoint"), "{e}");

    // A topic that does not exist.
    let data = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    let c = connector(base);
    let (_stop, stopped) = watch::channel(false);
    let e = c
        .run(Cluster::Local(b), stopped, Status::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the topic 't' does not exist"), "{e}");
}

#[tokio::test]
async fn datafusion_reads_the_partitioned_tree_as_a_table() {
    use quiver_engine::datafusion::datasource::file_format::parquet::ParquetFormat;
    use quiver_engine::datafusion::datasource::listing::ListingOptions;
    use quiver_engine::datafusion::prelude::SessionContext;

    let data = tempfile::tempdir().unwrap();
    let lake = tempfile::tempdir().unwrap();
    let b = broker(data.path()).await;
    b.create_topic(NewTopic::new("orders", 2)).await.unwrap();
    produce(&b, "orders", 0, 500, 1_700_000_000_000, 1).await;
    let c = connector(&format!(
        "name=df\nconnector.class=ParquetSink\ntopics=orders\nstore.url=file://{}\nflush.size=64\n\
         value.format=json\nvalue.schema=id BIGINT NOT NULL, region STRING, amount DOUBLE\n\
         partitioner.class=field\npartition.field.name=region\n",
        lake.path().display()
    ));
    let running = start(&b, &c);
    running.wait_records(500).await;
    running.stop().await;

    let ctx = SessionContext::new();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![(
            "region".to_owned(),
            arrow::datatypes::DataType::Utf8,
        )]);
    let root = format!("{}/topics/orders/", lake.path().display());
    ctx.register_listing_table("orders", &root, options, None, None)
        .await
        .unwrap();
    let batches = ctx
        .sql("SELECT region, COUNT(*) AS n, SUM(id) AS ids FROM orders GROUP BY region ORDER BY region")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut got = vec![];
    for batch in &batches {
        let regions = batch.column(0).as_string::<i32>();
        let n = batch.column(1).as_primitive::<Int64Type>();
        let ids = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            got.push((regions.value(i).to_owned(), n.value(i), ids.value(i)));
        }
    }
    let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for id in 0..500i64 {
        let region = match id {
            id if id % 20 == 0 => "ap",
            id if id % 4 == 0 => "us",
            _ => "eu",
        };
        let e = want.entry(region.to_owned()).or_default();
        e.0 += 1;
        e.1 += id;
    }
    let want: Vec<(String, i64, i64)> = want.into_iter().map(|(r, (n, s))| (r, n, s)).collect();
    assert_eq!(got, want);
}
