//! A query over a topic of an external cluster (the broker's Kafka server on loopback, read
//! through Quiver's client): it follows partitions the topic gains while it runs, and waits
//! out a restart of the cluster.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Schema};
use quiver_broker::BrokerConfig;
use quiver_broker::kafka::LocalServer;
use quiver_common::record::{EnvelopeBuilder, Record};
use quiver_common::topic::NewTopic;
use quiver_engine::dsl::{RunningTopology, StreamsBuilder};
use quiver_engine::{Collector, Format, KafkaCluster, KafkaSource, QueryOptions, Runtime};

async fn produce(cluster: &KafkaCluster, partition: i32, words: &[&str]) {
    let mut envelope = EnvelopeBuilder::default();
    for w in words {
        let value = format!(r#"{{"word":"{w}"}}"#);
        envelope.append_record(&Record::new(1, None, Some(value.as_bytes())));
    }
    cluster
        .client()
        .produce("words", partition, &envelope.finish())
        .await
        .unwrap();
}

/// Topic `words` (1 partition) with one record, `ant`.
async fn create_words(cluster: &KafkaCluster) {
    let created = cluster
        .client()
        .create_topics(&[NewTopic::new("words", 1)], false)
        .await
        .unwrap();
    assert!(created.iter().all(|(_, r)| r.is_ok()), "{created:?}");
    produce(cluster, 0, &["ant"]).await;
}

/// A query of the words of topic `words` into a collector, at `parallelism` tasks.
async fn words_query(cluster: &KafkaCluster, parallelism: usize) -> (RunningTopology, Collector) {
    let value = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let source = KafkaSource::new(cluster, "words", Format::None, Format::Json(value))
        .await
        .unwrap();
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        parallelism,
        poll_wait: Duration::from_millis(20),
        ..QueryOptions::default()
    });
    let collector = Collector::new();
    builder
        .stream("words", Arc::new(source))
        .unwrap()
        .select([quiver_engine::datafusion::prelude::col("word")])
        .unwrap()
        .to_collector(&collector);
    let running = Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap();
    (running, collector)
}

fn words(collector: &Collector) -> Vec<String> {
    let mut out: Vec<String> = collector
        .batches()
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|w| w.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_query_reads_partitions_the_topic_gains_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let cluster = KafkaCluster::connect(&server.addr().to_string())
        .await
        .unwrap();
    create_words(&cluster).await;

    let (running, collector) = words_query(&cluster, 2).await;
    assert_eq!(collector.wait_for_rows(1, Duration::from_secs(10)).await, 1);

    let grown = cluster
        .client()
        .create_partitions(&[("words", 3)], false)
        .await
        .unwrap();
    assert!(grown.iter().all(|(_, r)| r.is_ok()), "{grown:?}");
    produce(&cluster, 1, &["bee"]).await;
    produce(&cluster, 2, &["cat", "dog"]).await;
    assert_eq!(collector.wait_for_rows(4, Duration::from_secs(20)).await, 4);
    running.stop().await.unwrap();
    assert_eq!(words(&collector), ["ant", "bee", "cat", "dog"]);
}

/// A broker serving Kafka on `port` from `dir`, until the returned sender says stop.
async fn serve(
    dir: &std::path::Path,
    port: u16,
) -> (
    quiver_broker::Broker,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<quiver_broker::Result<()>>,
) {
    let mut config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    config
        .set("listeners", &format!("PLAINTEXT://127.0.0.1:{port}"))
        .unwrap();
    let broker = quiver_broker::Broker::open(config).await.unwrap();
    let server = quiver_broker::kafka::KafkaServer::bind(broker.clone())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    (broker, stop, tokio::spawn(server.run(stopped)))
}

#[tokio::test]
async fn a_query_waits_out_a_restart_of_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (broker, stop, serving) = serve(dir.path(), port).await;
    let cluster = KafkaCluster::connect(&format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    create_words(&cluster).await;
    let (running, collector) = words_query(&cluster, 1).await;
    assert_eq!(collector.wait_for_rows(1, Duration::from_secs(10)).await, 1);

    // The cluster goes away for a while, then comes back on the same port and data.
    stop.send_replace(true);
    serving.await.unwrap().unwrap();
    broker.shutdown().await.unwrap();
    drop(broker);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !running.is_finished(),
        "the query failed while its cluster was down"
    );
    let (broker, stop, serving) = serve(dir.path(), port).await;
    produce(&cluster, 0, &["bee"]).await;
    assert_eq!(collector.wait_for_rows(2, Duration::from_secs(20)).await, 2);
    running.stop().await.unwrap();
    assert_eq!(words(&collector), ["ant", "bee"]);
    stop.send_replace(true);
    serving.await.unwrap().unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_topic_of_an_external_cluster_reads_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let cluster = KafkaCluster::connect(&server.addr().to_string())
        .await
        .unwrap();
    let created = cluster
        .client()
        .create_topics(&[NewTopic::new("teams", 1)], false)
        .await
        .unwrap();
    assert!(created.iter().all(|(_, r)| r.is_ok()), "{created:?}");
    // ann joins red, bob blue, ann moves to green, bob leaves (a tombstone).
    let mut envelope = EnvelopeBuilder::default();
    for (user, team) in [
        ("ann", Some("red")),
        ("bob", Some("blue")),
        ("ann", Some("green")),
        ("bob", None),
        ("cy", Some("red")),
    ] {
        let value = team.map(|t| format!(r#"{{"team":"{t}"}}"#));
        envelope.append_record(&Record::new(
            1,
            Some(user.as_bytes()),
            value.as_deref().map(str::as_bytes),
        ));
    }
    cluster
        .client()
        .produce("teams", 0, &envelope.finish())
        .await
        .unwrap();

    let value = Arc::new(Schema::new(vec![Field::new("team", DataType::Utf8, true)]));
    let source = KafkaSource::table(
        &cluster,
        "teams",
        Format::kafka("user", quiver_engine::KafkaType::String),
        Format::Json(value),
    )
    .await
    .unwrap();
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        poll_wait: Duration::from_millis(20),
        ..QueryOptions::default()
    });
    let table = builder.table_from("teams", Arc::new(source)).unwrap();
    assert_eq!(table.key(), ["user"]);
    let collector = Collector::new();
    table
        .materialize("teams")
        .unwrap()
        .to_stream()
        .to_collector(&collector);
    let runtime = Runtime::without_broker();
    let running = runtime.run(builder.build().unwrap()).await.unwrap();
    assert_eq!(collector.wait_for_rows(5, Duration::from_secs(10)).await, 5);
    let rows = runtime.store("teams").unwrap().scan().unwrap();
    running.stop().await.unwrap();
    let users: Vec<&str> = rows
        .column_by_name("user")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|u| u.unwrap())
        .collect();
    let teams: Vec<&str> = rows
        .column_by_name("team")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|t| t.unwrap())
        .collect();
    assert_eq!(users, ["ann", "cy"]);
    assert_eq!(teams, ["green", "red"]);
}
