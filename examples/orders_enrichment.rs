//! Orders enriched by customers: a stream–table join whose customer table changes while the
//! orders arrive.
//!
//! Runs against an embedded broker in a temporary directory, with its own sample data:
//!
//! ```text
//! cargo run --example orders_enrichment
//! ```
//!
//! The `customers` topic is read as a table (key: the customer id; a record with a null value
//! deletes the customer). Each order meets its customer as the table was at the order's event
//! time, so an order placed before a customer's change sees the old row even if the change
//! was read first. An order waits until event time (the watermark) passes it; a quiet customer
//! topic stops holding event time back after its idle timeout.

use std::sync::Arc;
use std::time::Duration;

use quiver::broker::{Broker, BrokerConfig, NewTopic, Record};
use quiver::engine::arrow::datatypes::{DataType, Field, Schema};
use quiver::engine::prelude::*;

fn customer(id: &str, value: Option<&str>, at_ms: i64) -> Record {
    Record::new(at_ms, Some(id.as_bytes()), value.map(str::as_bytes))
}

fn order(id: i64, customer: &str, amount: i64, at_ms: i64) -> Record {
    let json = format!(r#"{{"order_id":{id},"customer":"{customer}","amount":{amount}}}"#);
    Record::new(at_ms, None, Some(json.as_bytes()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await?;
    for topic in ["customers", "orders", "orders-enriched"] {
        broker.create_topic(NewTopic::new(topic, 1)).await?;
    }

    let builder = StreamsBuilder::with_broker(&broker);
    let customer_value = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("tier", DataType::Utf8, true),
    ]));
    let customers = TopicSource::table(
        Some(&broker),
        "customers",
        Format::kafka("id", KafkaType::String),
        Format::json(customer_value),
    )?
    .with_idle_timeout(Duration::from_millis(300));
    let customers = builder.table_from("customers", Arc::new(customers))?;
    let order_value = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let enriched = builder
        .topic("orders", Format::None, Format::json(order_value))?
        .left_join(&customers, [col("customer")])?
        .select([
            col("order_id"),
            col("customer"),
            col("amount"),
            col("name"),
            col("tier"),
        ])?;
    enriched.print("orders-enriched");
    enriched.to_topic("orders-enriched", TopicFormat::keyed(["customer"]))?;
    let topology = builder.build()?;
    println!("{}", topology.describe());
    let running = Runtime::new(&broker).run(topology).await?;

    let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    broker
        .produce(
            "customers",
            &[
                customer("c1", Some(r#"{"name":"Ada","tier":"gold"}"#), t0),
                customer("c2", Some(r#"{"name":"Brian","tier":"silver"}"#), t0),
                customer("c3", Some(r#"{"name":"Cleo","tier":"bronze"}"#), t0),
            ],
        )
        .await?;
    let orders = [
        order(1, "c1", 120, t0 + 1_000),
        order(2, "c2", 40, t0 + 2_000),
        order(3, "c9", 15, t0 + 3_000),
        order(4, "c2", 75, t0 + 5_000),
        order(5, "c3", 30, t0 + 7_000),
        // Moves event time past the orders before it, so they are all joined.
        order(6, "c1", 10, t0 + 60_000),
    ];
    for (i, o) in orders.iter().enumerate() {
        if i == 3 {
            // Brian moves up a tier at 4 s, and Cleo leaves at 6 s: orders 4 and 5 see it,
            // orders 1–3 do not, though the changes are read before they are joined.
            broker
                .produce(
                    "customers",
                    &[
                        customer("c2", Some(r#"{"name":"Brian","tier":"gold"}"#), t0 + 4_000),
                        customer("c3", None, t0 + 6_000),
                    ],
                )
                .await?;
        }
        broker.produce("orders", std::slice::from_ref(o)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..400 {
        if running.metrics()[0].1.rows_out >= orders.len() as u64 - 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let metrics = running.stop().await?;
    println!("done: {} orders enriched", metrics[0].rows_out);
    broker.shutdown().await?;
    Ok(())
}
