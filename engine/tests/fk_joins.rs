//! Foreign-key table–table joins: orders that move between customers, lose their customer and
//! are deleted, joined with customers who change and leave, fold into the join of the two
//! final tables computed once by DataFusion (inner and left, at one and at several tasks);
//! and across a checkpointed restart at another parallelism, the compacted output topic ends
//! as that join. Each order's changes on the way are states its inputs pass through.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use quiver_broker::{Broker, BrokerConfig, NewTopic, Record};
use quiver_engine::dsl::{RunningTopology, StreamsBuilder, Table};
use quiver_engine::format::DELETED;
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Collector, Format, JoinKind, KafkaType, MemorySource,
    QueryOptions, Runtime, TopicFormat,
};

/// An order's change: id, then its customer and amount (`None`: deleted).
type Order = (String, Option<(Option<String>, i64)>);
/// A customer's change: id, then name (`None`: deleted).
type Customer = (String, Option<String>);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` changes over 50 orders pointing at 12 customers: moves, null customers, deletes.
fn orders(n: usize, seed: u64) -> Vec<Order> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let id = format!("o{:02}", r.next() % 50);
            let row = (!r.next().is_multiple_of(8)).then(|| {
                let customer =
                    (!r.next().is_multiple_of(10)).then(|| format!("c{:02}", r.next() % 12));
                (customer, (r.next() % 1000) as i64)
            });
            (id, row)
        })
        .collect()
}

/// `n` changes over 12 customers: renames and deletes.
fn customers(n: usize, seed: u64) -> Vec<Customer> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let id = format!("c{:02}", r.next() % 12);
            let name = (!r.next().is_multiple_of(6)).then(|| format!("name{}", r.next() % 100));
            (id, name)
        })
        .collect()
}

fn order_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(DELETED, DataType::Boolean, false),
    ]))
}

fn customer_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(DELETED, DataType::Boolean, false),
    ]))
}

fn times(n: usize, t0: i64) -> Arc<TimestampMillisecondArray> {
    Arc::new(TimestampMillisecondArray::from_iter_values(
        (0..n as i64).map(|i| t0 + i),
    ))
}

fn order_batch(c: &[Order], t0: i64) -> RecordBatch {
    RecordBatch::try_new(
        order_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                c.iter().map(|c| c.0.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                c.iter().map(|c| c.1.as_ref().and_then(|r| r.0.as_deref())),
            )),
            Arc::new(Int64Array::from_iter(
                c.iter().map(|c| c.1.as_ref().map(|r| r.1)),
            )),
            times(c.len(), t0),
            Arc::new(BooleanArray::from_iter(
                c.iter().map(|c| Some(c.1.is_none())),
            )),
        ],
    )
    .unwrap()
}

fn customer_batch(c: &[Customer], t0: i64) -> RecordBatch {
    RecordBatch::try_new(
        customer_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                c.iter().map(|c| c.0.as_str()),
            )),
            Arc::new(StringArray::from_iter(c.iter().map(|c| c.1.as_deref()))),
            times(c.len(), t0),
            Arc::new(BooleanArray::from_iter(
                c.iter().map(|c| Some(c.1.is_none())),
            )),
        ],
    )
    .unwrap()
}

/// A changelog as a keyed topic holds one: a key's changes in one partition (of two), in order.
fn partitioned<T: Clone>(
    changes: &[T],
    key: impl Fn(&T) -> &str,
    batch: impl Fn(&[T], i64) -> RecordBatch,
) -> Vec<(i32, RecordBatch)> {
    let mut out = Vec::new();
    for p in 0..2 {
        let mine: Vec<T> = changes
            .iter()
            .filter(|c| key(c).as_bytes()[key(c).len() - 1] % 2 == p as u8)
            .cloned()
            .collect();
        for (i, c) in mine.chunks(7).enumerate() {
            out.push((p, batch(c, i as i64 * 7)));
        }
    }
    out
}

fn tables(builder: &StreamsBuilder, o: &[Order], c: &[Customer]) -> (Table, Table) {
    let orders = MemorySource::new(order_schema(), partitioned(o, |c| &c.0, order_batch))
        .unwrap()
        .as_table(&["id"])
        .unwrap();
    let customers = MemorySource::new(customer_schema(), partitioned(c, |c| &c.0, customer_batch))
        .unwrap()
        .as_table(&["id"])
        .unwrap();
    (
        builder.table_from("orders", Arc::new(orders)).unwrap(),
        builder
            .table_from("customers", Arc::new(customers))
            .unwrap(),
    )
}

/// The join of the final tables, computed once: `id | customer | amount | name`.
async fn oracle(o: &[Order], c: &[Customer], join: &str) -> Vec<String> {
    let mut last_orders = BTreeMap::new();
    for (k, v) in o {
        match v {
            Some(v) => last_orders.insert(k.clone(), v.clone()),
            None => last_orders.remove(k),
        };
    }
    let mut last_customers = BTreeMap::new();
    for (k, v) in c {
        match v {
            Some(v) => last_customers.insert(k.clone(), v.clone()),
            None => last_customers.remove(k),
        };
    }
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let os = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, false),
    ]));
    let ob = RecordBatch::try_new(
        os.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                last_orders.keys().map(String::as_str),
            )),
            Arc::new(StringArray::from_iter(
                last_orders.values().map(|v| v.0.as_deref()),
            )),
            Arc::new(Int64Array::from_iter_values(
                last_orders.values().map(|v| v.1),
            )),
        ],
    )
    .unwrap();
    let cs = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let cb = RecordBatch::try_new(
        cs.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                last_customers.keys().map(String::as_str),
            )),
            Arc::new(StringArray::from_iter_values(
                last_customers.values().map(String::as_str),
            )),
        ],
    )
    .unwrap();
    ctx.register_table(
        "o",
        Arc::new(MemTable::try_new(os, vec![vec![ob]]).unwrap()),
    )
    .unwrap();
    ctx.register_table(
        "c",
        Arc::new(MemTable::try_new(cs, vec![vec![cb]]).unwrap()),
    )
    .unwrap();
    let sql =
        format!("SELECT o.id, o.customer, o.amount, c.name FROM o {join} c ON o.customer = c.id");
    common::rows(&ctx.sql(&sql).await.unwrap().collect().await.unwrap())
}

const COLUMNS: [&str; 4] = ["id", "customer", "amount", "name"];

/// An order's joined row, as the changelog prints it: the order's state and its customer's
/// name (`None`: the customer is absent).
fn joined(
    kind: JoinKind,
    id: &str,
    order: &Option<(Option<String>, i64)>,
    name: &Option<String>,
) -> Option<String> {
    let (customer, amount) = order.as_ref()?;
    if kind == JoinKind::Inner && (customer.is_none() || name.is_none()) {
        return None;
    }
    let cell = |v: &Option<String>| v.clone().unwrap_or_default();
    Some(format!(
        "{id} | {} | {amount} | {}",
        cell(customer),
        cell(name)
    ))
}

/// Asserts that each order's changes pass only through states its inputs pass through: an
/// upsert is the order as of a change no earlier than the last one matched, joined with its
/// customer's name as of a change of that customer no earlier than the last one matched for
/// this order (the two inputs, and customers in different partitions, interleave in any way);
/// a delete comes when the order, or in an inner join its customer, can be absent.
fn assert_follows_inputs(
    emitted: &BTreeMap<String, Vec<Option<String>>>,
    o: &[Order],
    c: &[Customer],
    kind: JoinKind,
    what: &str,
) {
    let orders = common::histories(o);
    let customers = common::histories(c);
    let (no_order, no_customer) = (vec![None], vec![None]);
    for (id, changes) in emitted {
        let order = orders.get(id).unwrap_or(&no_order);
        let names = |customer: &Option<String>| {
            customer
                .as_ref()
                .and_then(|c| customers.get(c))
                .unwrap_or(&no_customer)
        };
        let mut at = 0;
        let mut seen: BTreeMap<Option<String>, usize> = BTreeMap::new();
        let mut held = false;
        for (n, change) in changes.iter().enumerate() {
            // The first order state at or after `at` and its customer's first name state at or
            // after the last matched that give this change. An upsert's cells fix both the
            // order's state and the name, so the earliest of each leaves every later change
            // its widest choice; a delete moves neither.
            let found = (at..order.len()).find_map(|i| {
                let customer = order[i].as_ref().and_then(|r| r.0.clone());
                let from = seen.get(&customer).copied().unwrap_or(0);
                let names = names(&customer);
                (from..names.len())
                    .find(|&j| joined(kind, id, &order[i], &names[j]) == *change)
                    .map(|j| (i, customer, j))
            });
            let Some((i, customer, j)) = found else {
                panic!(
                    "{what}: order {id} emitted {change:?}, which its inputs never give after the \
                     changes before it; changes {:?}, order {order:?}",
                    &changes[..=n]
                );
            };
            assert!(
                change.is_some() || held,
                "{what}: order {id} deleted when it held no row; changes {:?}",
                &changes[..=n]
            );
            if change.is_some() {
                at = i;
                seen.insert(customer, j);
            }
            held = change.is_some();
        }
    }
}

#[tokio::test]
async fn foreign_key_joins_end_as_the_join_of_the_final_tables() {
    let o = orders(800, 0x9e37_79b9_7f4a_7c15);
    let c = customers(160, 0x2545_f491_4f6c_dd1d);
    for (kind, sql) in [(JoinKind::Inner, "JOIN"), (JoinKind::Left, "LEFT JOIN")] {
        let want = oracle(&o, &c, sql).await;
        assert!(want.len() > 10, "{kind:?}: {want:?}");
        for parallelism in [1, 3] {
            let builder = StreamsBuilder::new().with_options(QueryOptions {
                parallelism,
                ..QueryOptions::default()
            });
            let (orders, customers) = tables(&builder, &o, &c);
            let joined = match kind {
                JoinKind::Inner => orders.join_foreign_key(&customers, [col("customer")]),
                _ => orders.left_join_foreign_key(&customers, [col("customer")]),
            }
            .unwrap();
            assert_eq!(joined.key(), ["id"]);
            let collector = Collector::new();
            let store = format!("fk-{kind:?}-{parallelism}");
            joined
                .materialize(&store)
                .unwrap()
                .to_stream()
                .to_collector(&collector);
            let runtime = Runtime::without_broker();
            runtime
                .run(builder.build().unwrap())
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
            let batches = collector.batches();
            let changes: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert!(changes > want.len(), "{kind:?}: {changes} changes");
            let emitted = common::changes_by_key(&batches, &COLUMNS);
            let what = format!("{kind:?} at parallelism {parallelism}");
            assert_eq!(common::fold(&emitted), want, "{what}");
            assert_follows_inputs(&emitted, &o, &c, kind, &what);
            let scan = runtime.store(&store).unwrap().scan().unwrap();
            let stored = common::changes_by_key(&[scan], &COLUMNS);
            assert_eq!(
                common::fold(&stored),
                want,
                "{kind:?} store at {parallelism}"
            );
        }
    }
}

#[test]
fn a_foreign_key_join_is_inner_or_left_and_pairs_every_key_column() {
    let builder = StreamsBuilder::new();
    let (orders, customers) = tables(&builder, &[], &[]);
    let err = orders
        .join_foreign_key(&customers, [col("customer"), col("amount")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("pairs the foreign key's expressions"), "{err}");
}

// Across a checkpointed restart.

async fn broker(dir: &std::path::Path) -> Broker {
    let config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    Broker::open(config).await.unwrap()
}

async fn produce_orders(b: &Broker, changes: &[Order]) {
    let records: Vec<Record> = changes
        .iter()
        .map(|(id, row)| {
            let value = row
                .as_ref()
                .map(|(c, a)| serde_json::json!({"customer": c, "amount": a}).to_string());
            Record::new(1, Some(id.as_bytes()), value.as_deref().map(str::as_bytes))
        })
        .collect();
    b.produce("orders", &records).await.unwrap();
}

async fn produce_customers(b: &Broker, changes: &[Customer]) {
    let records: Vec<Record> = changes
        .iter()
        .map(|(id, name)| {
            let value = name
                .as_ref()
                .map(|n| serde_json::json!({ "name": n }).to_string());
            Record::new(1, Some(id.as_bytes()), value.as_deref().map(str::as_bytes))
        })
        .collect();
    b.produce("customers", &records).await.unwrap();
}

async fn enrich(
    b: &Broker,
    checkpoint: CheckpointConfig,
    parallelism: usize,
) -> quiver_engine::Result<RunningTopology> {
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id("fk-enrich")
        .with_options(QueryOptions {
            checkpoint: Some(checkpoint),
            parallelism,
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    let order_value = Arc::new(Schema::new(vec![
        Field::new("customer", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ]));
    let customer_value = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
    let orders = builder.table(
        "orders",
        Format::kafka("id", KafkaType::String),
        Format::json(order_value),
    )?;
    let customers = builder.table(
        "customers",
        Format::kafka("id", KafkaType::String),
        Format::json(customer_value),
    )?;
    orders
        .join_foreign_key(&customers, [col("customer")])?
        .to_stream()
        .select([
            col("id"),
            col("customer"),
            col("amount"),
            col("name"),
            col(DELETED),
        ])?
        .to_topic("enriched", TopicFormat::keyed(["id"]))?;
    Runtime::new(b).run(builder.build()?).await
}

/// An enriched order as the topic's JSON reads back (`id | customer | amount | name`; the
/// oracle prints a null as "", as a missing JSON field reads here).
fn enriched_row(id: &str, v: &serde_json::Value) -> String {
    let cell = |c: &str| match &v[c] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    [
        id.to_string(),
        cell("customer"),
        cell("amount"),
        cell("name"),
    ]
    .join(" | ")
}

async fn wait(b: &Broker, want: &[String], what: &str) {
    common::wait_for_table(b, "enriched", want, enriched_row, what).await;
}

#[tokio::test]
async fn a_foreign_key_join_resumes_from_its_checkpoint_at_another_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    for (topic, partitions) in [("orders", 3), ("customers", 2), ("enriched", 2)] {
        b.create_topic(NewTopic::new(topic, partitions))
            .await
            .unwrap();
    }
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));
    let o = orders(400, 11);
    let c = customers(80, 12);
    let (o1, o2) = o.split_at(200);
    let (c1, c2) = c.split_at(40);

    let running = enrich(&b, config.clone(), 2).await.unwrap();
    produce_customers(&b, c1).await;
    produce_orders(&b, o1).await;
    let want = oracle(o1, c1, "JOIN").await;
    wait(&b, &want, "the first half is joined").await;
    let metrics = running.stop().await.unwrap();
    assert!(metrics[0].checkpoints >= 1, "{metrics:?}");

    // Moves, renames and deletes while the query is down, then a restart at 3 tasks: each
    // step's state is split between them by key.
    produce_orders(&b, o2).await;
    produce_customers(&b, c2).await;
    let running = enrich(&b, config, 3).await.unwrap();
    let want = oracle(&o, &c, "JOIN").await;
    assert!(want.len() > 10, "{want:?}");
    wait(&b, &want, "everything is joined after the restart").await;
    running.stop().await.unwrap();
}
