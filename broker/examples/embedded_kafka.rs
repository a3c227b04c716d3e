//! Runs Quiver's broker inside your own program, with its Kafka listener, and produces to it
//! through the in-process handle while Kafka clients use the listener.
//!
//! ```text
//! cargo run -p quiver-broker --example embedded_kafka -- /tmp/quiver-embedded 127.0.0.1:19092
//! kcat -b 127.0.0.1:19092 -C -t greetings -o beginning
//! ```

use std::time::Duration;

use quiver_broker::alloc::GuardedAlloc;
use quiver_broker::kafka::KafkaServer;
use quiver_broker::{Broker, BrokerConfig, Record, now_ms};

#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "quiver-embedded".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19092".into());

    let mut config = BrokerConfig::default();
    config.set("log.dirs", &data_dir)?;
    config.set("listeners", &format!("PLAINTEXT://{listen}"))?;
    config.set("group.initial.rebalance.delay.ms", "0")?;
    let broker = Broker::open(config).await?;
    let server = KafkaServer::bind(broker.clone()).await?;
    println!(
        "listening on {:?}, advertised as {}",
        server.local_addrs(),
        server.advertised()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.run(stopped));

    // Write through the in-process handle: no network hop, same log the clients read.
    for i in 0..3 {
        let record = Record::new(
            now_ms(),
            Some(b"greeter"),
            Some(format!("hello #{i}").as_bytes()),
        );
        broker.produce("greetings", &[record]).await?;
    }

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(u64::MAX / 4)) => {}
    }
    stop.send_replace(true);
    let _ = serving.await;
    broker.shutdown().await?;
    Ok(())
}
