//! Checkpoints in process: a stopped query resumes from its checkpoint with its state, under
//! exactly-once (output visible once committed) and at-least-once (output visible at once),
//! on the in-process broker and on an external cluster, and at another parallelism; a
//! checkpointing query without what it needs is refused with a reason.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::col;
use quiver_broker::{
    Broker, BrokerConfig, Isolation, NewTopic, ReaderOptions, Record, StartAt, batch_to_records,
};
use quiver_engine::dsl::{RunningTopology, StreamsBuilder};
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Format, KafkaCluster, KafkaSink, KafkaSource,
    QueryOptions, Runtime, TopicFormat, TopicSource,
};

async fn broker(dir: &std::path::Path) -> Broker {
    let config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    Broker::open(config).await.unwrap()
}

/// Every record of `topic` a reader with `isolation` sees now.
async fn read(b: &Broker, topic: &str, isolation: Isolation) -> Vec<Record> {
    let options = ReaderOptions {
        isolation,
        ..ReaderOptions::default()
    };
    let mut reader = b.topic_reader(topic, StartAt::Earliest, options).unwrap();
    let mut out = Vec::new();
    loop {
        let batches = reader.next_batches(Duration::ZERO).await.unwrap();
        if batches.is_empty() {
            return out;
        }
        for batch in batches {
            out.extend(batch_to_records(&batch.records).unwrap());
        }
    }
}

/// The count updates per word, in order, from a `counts` topic (key word, value
/// `{"count":n}`).
fn updates(records: &[Record]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in records {
        let word = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        out.entry(word)
            .or_default()
            .push(value["count"].as_i64().unwrap());
    }
    out
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A count per word of topic `words` (value: the word), written to `counts`.
async fn word_count(
    b: &Broker,
    checkpoint: CheckpointConfig,
    parallelism: usize,
) -> quiver_engine::Result<RunningTopology> {
    word_count_from(b, checkpoint, parallelism, |source| source).await
}

/// [`word_count`] with its source as `configure` leaves it.
async fn word_count_from(
    b: &Broker,
    checkpoint: CheckpointConfig,
    parallelism: usize,
    configure: impl FnOnce(TopicSource) -> TopicSource,
) -> quiver_engine::Result<RunningTopology> {
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id("word-count")
        .with_options(QueryOptions {
            checkpoint: Some(checkpoint),
            parallelism,
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    let value = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let source = configure(TopicSource::new(
        b,
        "words",
        Format::None,
        Format::Json(value),
    )?);
    builder
        .stream("words", Arc::new(source))?
        .group_by([col("word")])?
        .count()?
        .to_stream()
        .to_topic("counts", TopicFormat::keyed(["word"]))?;
    Runtime::new(b).run(builder.build()?).await
}

async fn produce_words(b: &Broker, words: &[&str]) {
    let records: Vec<Record> = words
        .iter()
        .map(|w| {
            let value = format!(r#"{{"word":"{w}"}}"#);
            Record::new(1, Some(w.as_bytes()), Some(value.as_bytes()))
        })
        .collect();
    b.produce("words", &records).await.unwrap();
}

async fn setup(dir: &std::path::Path) -> Broker {
    let b = broker(dir).await;
    b.create_topic(NewTopic::new("words", 3)).await.unwrap();
    b.create_topic(NewTopic::new("counts", 2)).await.unwrap();
    b
}

#[tokio::test]
async fn an_exactly_once_query_resumes_from_its_checkpoint_and_commits_each_update_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));

    let running = word_count(&b, config.clone(), 2).await.unwrap();
    produce_words(&b, &["a", "b", "a"]).await;
    wait_until("the first counts are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("a").and_then(|u| u.last()) == Some(&2)
    })
    .await;
    let metrics = running.stop().await.unwrap();
    assert!(metrics[0].checkpoints >= 1, "{metrics:?}");

    // Records produced while the query is down are read once it is back, on top of its state.
    produce_words(&b, &["a", "c"]).await;
    let running = word_count(&b, config.clone(), 2).await.unwrap();
    wait_until("the counts after the restart are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("c").and_then(|u| u.last()) == Some(&1)
    })
    .await;
    running.stop().await.unwrap();

    // A restart at another parallelism splits the state between its tasks by key.
    produce_words(&b, &["a", "b", "d"]).await;
    let running = word_count(&b, config, 3).await.unwrap();
    wait_until("the counts after the rescale are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("d").and_then(|u| u.last()) == Some(&1)
    })
    .await;
    running.stop().await.unwrap();

    let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
    // Each key's counts go up by one per record, none repeated: no record was counted twice,
    // and the restarted queries kept counting where the one before stopped.
    for (word, counts) in &committed {
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{word}: {counts:?}");
    }
    let last: BTreeMap<&str, i64> = committed
        .iter()
        .map(|(w, c)| (w.as_str(), *c.last().unwrap()))
        .collect();
    assert_eq!(
        last,
        BTreeMap::from([("a", 4), ("b", 2), ("c", 1), ("d", 1)])
    );
    // The group's offsets cover every record read.
    let offsets: i64 = b
        .groups()
        .fetch_offsets_checked("word-count-query_1", None, true)
        .into_iter()
        .map(|(_, _, o)| o.unwrap().unwrap().offset)
        .sum();
    assert_eq!(offsets, 8);
}

/// A count per word over two topics merged: `words` (value `{"word":…}`) and `tags`
/// (value `{"tag":…}`), written to `counts`.
async fn merged_word_count(
    b: &Broker,
    checkpoint: CheckpointConfig,
    parallelism: usize,
) -> quiver_engine::Result<RunningTopology> {
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id("merged-count")
        .with_options(QueryOptions {
            checkpoint: Some(checkpoint),
            parallelism,
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    let word = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let tag = Arc::new(Schema::new(vec![Field::new("tag", DataType::Utf8, false)]));
    let words = builder.topic("words", Format::None, Format::Json(word))?;
    let tags = builder
        .topic("tags", Format::None, Format::Json(tag))?
        .select([col("tag").alias("word")])?;
    words
        .select([col("word")])?
        .merge(&tags)?
        .group_by([col("word")])?
        .count()?
        .to_stream()
        .to_topic("counts", TopicFormat::keyed(["word"]))?;
    Runtime::new(b).run(builder.build()?).await
}

async fn produce_tags(b: &Broker, tags: &[&str]) {
    let records: Vec<Record> = tags
        .iter()
        .map(|t| {
            let value = format!(r#"{{"tag":"{t}"}}"#);
            Record::new(1, None, Some(value.as_bytes()))
        })
        .collect();
    b.produce("tags", &records).await.unwrap();
}

#[tokio::test]
async fn a_query_merging_two_topics_checkpoints_both_and_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    b.create_topic(NewTopic::new("tags", 2)).await.unwrap();
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));

    let running = merged_word_count(&b, config.clone(), 2).await.unwrap();
    produce_words(&b, &["a", "b"]).await;
    produce_tags(&b, &["a", "c"]).await;
    wait_until("the first counts are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("a").and_then(|u| u.last()) == Some(&2)
            && committed.get("c").and_then(|u| u.last()) == Some(&1)
    })
    .await;
    running.stop().await.unwrap();

    // Both topics move on while it is down; it resumes each where it stopped, at another
    // parallelism.
    produce_words(&b, &["c"]).await;
    produce_tags(&b, &["a", "d"]).await;
    let running = merged_word_count(&b, config, 3).await.unwrap();
    wait_until("the counts after the restart are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("d").and_then(|u| u.last()) == Some(&1)
            && committed.get("c").and_then(|u| u.last()) == Some(&2)
            && committed.get("a").and_then(|u| u.last()) == Some(&3)
    })
    .await;
    running.stop().await.unwrap();

    let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
    for (word, counts) in &committed {
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{word}: {counts:?}");
    }
    let last: BTreeMap<&str, i64> = committed
        .iter()
        .map(|(w, c)| (w.as_str(), *c.last().unwrap()))
        .collect();
    assert_eq!(
        last,
        BTreeMap::from([("a", 3), ("b", 1), ("c", 2), ("d", 1)])
    );
    // The group holds offsets for both topics, covering every record read.
    let mut offsets: BTreeMap<String, i64> = BTreeMap::new();
    for (topic, _, o) in b
        .groups()
        .fetch_offsets_checked("merged-count-query_1", None, true)
    {
        *offsets.entry(topic).or_default() += o.unwrap().unwrap().offset;
    }
    assert_eq!(
        offsets,
        BTreeMap::from([("tags".to_string(), 4), ("words".to_string(), 3)])
    );
}

#[tokio::test]
async fn an_aborted_query_leaves_nothing_committed_past_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();
    // Checkpoints far apart: the output of the first run stays in its open transaction.
    let slow = CheckpointConfig::exactly_once(storage.clone())
        .with_interval(Duration::from_secs(30))
        .with_transaction_timeout(Duration::from_secs(60));
    let running = word_count(&b, slow, 1).await.unwrap();
    produce_words(&b, &["x", "y"]).await;
    wait_until("the output is written, uncommitted", async || {
        read(&b, "counts", Isolation::ReadUncommitted).await.len() == 2
    })
    .await;
    assert!(
        read(&b, "counts", Isolation::ReadCommitted)
            .await
            .is_empty()
    );
    running.abort();

    // The next instance takes over the transactional id, which aborts the open transaction,
    // and with no checkpoint committed it starts over: x and y are counted once.
    let fast = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));
    let running = word_count(&b, fast, 1).await.unwrap();
    wait_until("the recount is committed", async || {
        read(&b, "counts", Isolation::ReadCommitted).await.len() == 2
    })
    .await;
    running.stop().await.unwrap();
    let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
    assert_eq!(
        committed,
        BTreeMap::from([("x".to_string(), vec![1]), ("y".to_string(), vec![1])])
    );
    // The aborted output is still in the log, for read_uncommitted readers only.
    assert_eq!(
        read(&b, "counts", Isolation::ReadUncommitted).await.len(),
        4
    );
}

#[tokio::test]
async fn an_at_least_once_query_shows_output_at_once_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let storage = CheckpointStorage::in_memory();
    let config = CheckpointConfig::at_least_once(storage).with_interval(Duration::from_secs(30));
    let running = word_count(&b, config.clone(), 2).await.unwrap();
    produce_words(&b, &["p", "q", "p"]).await;
    // Visible before any checkpoint: no transaction holds it back.
    wait_until("the output is visible", async || {
        updates(&read(&b, "counts", Isolation::ReadCommitted).await)
            .get("p")
            .and_then(|u| u.last())
            == Some(&2)
    })
    .await;
    // The stop takes a last checkpoint; the next run restores it.
    running.stop().await.unwrap();
    produce_words(&b, &["p"]).await;
    let running = word_count(&b, config, 2).await.unwrap();
    wait_until("the count continues", async || {
        updates(&read(&b, "counts", Isolation::ReadCommitted).await)
            .get("p")
            .and_then(|u| u.last())
            == Some(&3)
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn checkpointing_needs_an_application_id_and_a_topic_source() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let builder = StreamsBuilder::with_broker(&b).with_options(QueryOptions {
        checkpoint: Some(CheckpointConfig::exactly_once(
            CheckpointStorage::in_memory(),
        )),
        ..QueryOptions::default()
    });
    let value = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    builder
        .topic("words", Format::None, Format::Json(value))
        .unwrap()
        .to_topic("counts", TopicFormat::json())
        .unwrap();
    let err = builder.build().unwrap_err().to_string();
    assert!(err.contains("with_application_id"), "{err}");
}

#[tokio::test]
async fn an_at_least_once_query_on_an_external_cluster_commits_its_offsets_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = quiver_broker::kafka::LocalServer::start(BrokerConfig {
        data_dir: dir.path().join("cluster"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let cluster = KafkaCluster::connect(&server.addr().to_string())
        .await
        .unwrap();
    let client = cluster.client();
    for (topic, partitions) in [("words", 2), ("counts", 1)] {
        let created = client
            .create_topics(
                &[quiver_common::topic::NewTopic::new(topic, partitions)],
                false,
            )
            .await
            .unwrap();
        assert!(created.iter().all(|(_, r)| r.is_ok()), "{created:?}");
    }
    let mut envelope = quiver_common::record::EnvelopeBuilder::default();
    for w in ["m", "n", "m"] {
        let value = format!(r#"{{"word":"{w}"}}"#);
        envelope.append_record(&Record::new(1, None, Some(value.as_bytes())));
    }
    client
        .produce("words", 0, &envelope.finish())
        .await
        .unwrap();

    let local = broker(&dir.path().join("local")).await;
    let value = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let source = KafkaSource::new(&cluster, "words", Format::None, Format::Json(value))
        .await
        .unwrap();
    let sink = KafkaSink::new(&cluster, "counts", TopicFormat::keyed(["word"]))
        .await
        .unwrap();
    let builder = StreamsBuilder::with_broker(&local)
        .with_application_id("remote-count")
        .with_options(QueryOptions {
            checkpoint: Some(CheckpointConfig::at_least_once(
                CheckpointStorage::in_memory(),
            )),
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    builder
        .stream("words", Arc::new(source))
        .unwrap()
        .group_by([col("word")])
        .unwrap()
        .count()
        .unwrap()
        .to_stream()
        .to_sink(Box::new(sink));
    let running = Runtime::new(&local)
        .run(builder.build().unwrap())
        .await
        .unwrap();
    let fetch = async || {
        let fetched = client
            .fetch(
                "counts",
                &[(0, 0)],
                &quiver_kafka_client::FetchOptions::default(),
            )
            .await
            .unwrap();
        let (_, f) = fetched.into_iter().next().unwrap();
        let mut out = Vec::new();
        for b in f.unwrap().batches {
            out.extend(batch_to_records(&b).unwrap());
        }
        out
    };
    wait_until("the counts reach the cluster", async || {
        updates(&fetch().await).get("m").and_then(|u| u.last()) == Some(&2)
    })
    .await;
    running.stop().await.unwrap();
    // The stop's checkpoint committed the source offsets to the cluster, naming its epoch.
    let committed = client
        .offset_fetch("remote-count-query_1", None)
        .await
        .unwrap();
    let p0 = committed
        .iter()
        .find(|o| o.topic == "words" && o.partition == 0)
        .unwrap();
    assert_eq!(p0.offset, Some(3));
    assert!(
        p0.metadata
            .as_deref()
            .is_some_and(|m| m.starts_with("quiver.epoch=")),
        "{p0:?}"
    );
    assert_eq!(
        updates(&fetch().await).get("n").map(Vec::as_slice),
        Some(&[1][..])
    );
}

/// The epoch directories under a checkpoint directory (any query), oldest first, each with
/// the state files in it and whether it has a manifest.
fn epoch_dirs(dir: &std::path::Path) -> Vec<(u64, Vec<String>, bool)> {
    let mut out = Vec::new();
    for query in std::fs::read_dir(dir).unwrap() {
        for epoch in std::fs::read_dir(query.unwrap().path()).unwrap() {
            let epoch = epoch.unwrap();
            let name = epoch.file_name().into_string().unwrap();
            let Some(n) = name.strip_prefix("epoch-") else {
                continue;
            };
            let files: Vec<String> = std::fs::read_dir(epoch.path())
                .unwrap()
                .map(|f| f.unwrap().file_name().into_string().unwrap())
                .collect();
            let manifest = files.iter().any(|f| f == "manifest.json");
            let state = files
                .into_iter()
                .filter(|f| f.ends_with(".arrow"))
                .collect();
            out.push((n.parse().unwrap(), state, manifest));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_quiet_query_names_its_last_state_files_again_and_resumes_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let checkpoints = dir.path().join("checkpoints");
    let storage = CheckpointStorage::local(&checkpoints).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));
    let running = word_count(&b, config.clone(), 2).await.unwrap();
    produce_words(&b, &["a", "b", "a"]).await;
    wait_until("the counts are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("a").and_then(|u| u.last()) == Some(&2)
    })
    .await;

    // Nothing comes for a dozen checkpoints.
    let taken = || running.metrics()[0].1.checkpoints;
    let quiet_from = taken();
    wait_until("a dozen more checkpoints", async || {
        taken() >= quiet_from + 12
    })
    .await;
    let dirs = epoch_dirs(&checkpoints);
    let newest = dirs.iter().filter(|d| d.2).map(|d| d.0).max().unwrap();
    let written: Vec<(u64, &String)> = dirs
        .iter()
        .flat_map(|(e, files, _)| files.iter().map(move |f| (*e, f)))
        .collect();
    // The counts' state is on disk, in files written before the quiet checkpoints, which
    // name them again.
    assert!(!written.is_empty(), "{dirs:?}");
    assert!(
        written.iter().all(|(e, _)| e + 8 < newest),
        "a quiet query rewrote its state: {dirs:?}"
    );
    // Pruning keeps the two newest epochs and the files they name, nothing else.
    let holding: std::collections::BTreeSet<u64> = written.iter().map(|(e, _)| *e).collect();
    assert!(dirs.len() <= 2 + holding.len(), "{dirs:?}");
    assert!(
        dirs.iter().filter(|d| d.0 + 1 < newest).all(|d| !d.2),
        "old manifests were not pruned: {dirs:?}"
    );

    // A restart restores the state from those files.
    running.stop().await.unwrap();
    produce_words(&b, &["a", "c"]).await;
    let running = word_count(&b, config, 2).await.unwrap();
    wait_until("the counts after the restart are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("c").and_then(|u| u.last()) == Some(&1)
            && committed.get("a").and_then(|u| u.last()) == Some(&3)
    })
    .await;
    running.stop().await.unwrap();
    let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
    // Each count once (one batch may give only its last), on top of the restored ones.
    let a = &committed["a"];
    assert!(
        a.ends_with(&[2, 3]) && a.windows(2).all(|w| w[0] < w[1]),
        "{a:?}"
    );
    assert_eq!(committed["b"], vec![1]);
}

#[tokio::test]
async fn a_watermark_moving_alone_does_not_rewrite_a_count_without_windows() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path()).await;
    let checkpoints = dir.path().join("checkpoints");
    let storage = CheckpointStorage::local(&checkpoints).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));
    // Once the topic is idle, event time follows the wall clock: the watermark moves at every
    // poll, though no row comes.
    let running = word_count_from(&b, config, 2, |source| {
        source
            .with_idle_timeout(Duration::from_millis(100))
            .with_wall_clock_advance(Duration::ZERO)
    })
    .await
    .unwrap();
    produce_words(&b, &["a", "b", "a"]).await;
    wait_until("the counts are committed", async || {
        let committed = updates(&read(&b, "counts", Isolation::ReadCommitted).await);
        committed.get("a").and_then(|u| u.last()) == Some(&2)
    })
    .await;
    let metrics = || running.metrics()[0].1.clone();
    let (quiet_from, watermark) = (metrics().checkpoints, metrics().watermark);
    wait_until("a dozen more checkpoints", async || {
        metrics().checkpoints >= quiet_from + 12
    })
    .await;
    assert!(
        metrics().watermark > watermark && metrics().watermark.is_some(),
        "the watermark did not move: {watermark:?} then {:?}",
        metrics().watermark
    );
    // The counts keep every group whatever the watermark: their files from before are named
    // again, none written since.
    let dirs = epoch_dirs(&checkpoints);
    let newest = dirs.iter().filter(|d| d.2).map(|d| d.0).max().unwrap();
    let written: Vec<u64> = dirs
        .iter()
        .filter(|d| !d.1.is_empty())
        .map(|d| d.0)
        .collect();
    assert!(!written.is_empty(), "{dirs:?}");
    assert!(
        written.iter().all(|e| e + 8 < newest),
        "a watermark move rewrote the counts: {dirs:?}"
    );
    running.stop().await.unwrap();
}
