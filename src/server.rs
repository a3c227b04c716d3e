//! `quiver server`: opens the data directory with the broker and runs until Ctrl-C or SIGTERM,
//! then shuts down cleanly (flushing every partition).
//!
//! The Kafka wire-protocol listener (`listeners`, default `PLAINTEXT://0.0.0.0:9092`) runs beside
//! the broker and is stopped before the broker on shutdown, so no request is cut off mid-append.
//! With `--connectors DIR`, every connector config in DIR runs against the broker in this
//! process; they stop first on shutdown (closing their files and committing).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use quiver_broker::Broker;
use quiver_broker::config::{BROKER_CONFIG_KEYS, NO_EFFECT_KEYS};
use quiver_broker::kafka::KafkaServer;

use crate::data_dir::{self, Intent};
use crate::signal::StopSignals;

#[derive(Debug, clap::Args)]
#[command(after_help = server_help())]
pub struct ServerArgs {
    /// Config file with Kafka's server key names: Kafka's server.properties format
    /// (`log.dirs=/var/lib/quiver`; a file named *.properties, or any file that is not TOML) or
    /// TOML (`log.dirs = "/var/lib/quiver"`)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Data directory; wins over log.dirs from --config and QUIVER_LOG_DIRS [default: ./quiver-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where Kafka clients connect, e.g. PLAINTEXT://0.0.0.0:9092 (port 0 picks a free port)
    /// [default: PLAINTEXT://0.0.0.0:9092]
    #[arg(long, value_name = "LISTENERS")]
    pub listeners: Option<String>,

    /// The address clients are told to use, if not the listener's (e.g. behind NAT)
    #[arg(long, value_name = "LISTENERS")]
    pub advertised_listeners: Option<String>,

    /// Run every connector config in DIR (*.properties, *.json, *.toml) against this broker, as
    /// `quiver connect` would
    #[arg(long, value_name = "DIR")]
    pub connectors: Option<PathBuf>,

    /// Port of the SQL HTTP API (POST /ksql, POST /query-stream; `quiver shell` and scripts
    /// talk to it); 0 picks a free port, shown in the ready line
    #[arg(long, value_name = "PORT", default_value_t = 8088)]
    pub http_port: u16,

    /// Address the SQL HTTP API listens on
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub http_host: std::net::IpAddr,
}

fn server_help() -> String {
    format!(
        "Settings come from the --config file, then QUIVER_* environment variables (QUIVER_NUM_PARTITIONS=3 \
         sets num.partitions), then flags; later ones win.\n\nServer keys: {}\n\nAccepted with a warning that \
         they have no effect (Kafka settings for ZooKeeper, KRaft, replication, threads and JMX): {}",
        BROKER_CONFIG_KEYS.join(", "),
        NO_EFFECT_KEYS
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Runs the server until a stop signal. `signals` are installed before the data directory is
/// opened, so that a stop request during start-up is not lost.
pub async fn run(args: ServerArgs, mut signals: StopSignals) -> Result<()> {
    let mut config = crate::config::resolve(
        args.config.as_deref(),
        std::env::vars_os(),
        args.data_dir.as_deref(),
    )?;
    if let Some(l) = &args.listeners {
        config.set("listeners", l).context("--listeners")?;
    }
    if let Some(l) = &args.advertised_listeners {
        config
            .set("advertised.listeners", l)
            .context("--advertised-listeners")?;
    }
    // Bad connector configs stop the start before anything is opened.
    let connectors = match &args.connectors {
        Some(dir) => crate::commands::connect::load_dir(dir)?,
        None => vec![],
    };
    data_dir::check(&config.data_dir, Intent::Create)?;
    let broker = Broker::open(config).await?;
    let dir = broker.config().data_dir.clone();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let topics = broker.list_topics().len();
    let kafka = match KafkaServer::bind(broker.clone()).await {
        Ok(k) => k,
        Err(e) => {
            broker.shutdown().await.ok();
            return Err(e).context(
                "cannot start the Kafka listener; is another broker on that port? (--listeners)",
            );
        }
    };
    let bound: Vec<String> = kafka
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let advertised = kafka.advertised().to_string();
    // SQL: the catalog and persistent queries come back from the command log first.
    let sql = match quiver_sql::SqlEngine::open(&broker, &dir).await {
        Ok(s) => s,
        Err(e) => {
            broker.shutdown().await.ok();
            bail!("cannot start SQL: {e}");
        }
    };
    let http_addr = std::net::SocketAddr::new(args.http_host, args.http_port);
    let http = match crate::http::bind(http_addr).await {
        Ok(l) => l,
        Err(e) => {
            sql.shutdown().await.ok();
            broker.shutdown().await.ok();
            return Err(e).context(format!(
                "cannot start the SQL HTTP API on {http_addr}; is another server on that port? \
                 (--http-port, 0 for a free one)"
            ));
        }
    };
    let http_bound = http
        .local_addr()
        .map_or_else(|_| http_addr.to_string(), |a| a.to_string());
    tracing::info!(data_dir = %dir.display(), topics, listeners = ?bound, %advertised, sql = %http_bound, "broker open");
    println!(
        "quiver server ready: Kafka on {} (advertised as {advertised}), SQL on http://{http_bound}, data in {} ({topics} topic{}); stop with Ctrl-C",
        bound.join(", "),
        dir.display(),
        if topics == 1 { "" } else { "s" }
    );
    let (stop_kafka, kafka_stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(kafka.run(kafka_stopped.clone()));
    // Connectors run in SQL's worker, beside those `CREATE … CONNECTOR` made.
    let running = sql.connectors().clone();
    for c in connectors {
        println!("connector '{}' running: {}", c.name(), c.describe());
        if let Err(quiver_connectors::Refusal::Exists(why)) = running.add(c) {
            tracing::error!("{why}");
        }
    }
    let http_serving = tokio::spawn(crate::http::serve(sql.clone(), http, kafka_stopped));

    let why = signals.recv().await;
    tracing::info!("{why} received; shutting down (again to exit at once)");
    // Connectors stop first (closing their files and committing), then serving stops
    // (requests already read are answered), then the logs close.
    running.stop().await;
    stop_kafka.send_replace(true);
    // Persistent queries stop at a last checkpoint; they resume from it at the next start.
    if let Err(e) = sql.shutdown().await {
        tracing::error!("stopping the persistent queries: {e}");
    }
    http_serving.abort();
    tokio::select! {
        _ = serving => {}
        why = signals.recv() => bail!(
            "{why} received during shutdown; exiting without flushing (the next start recovers the log tails)"
        ),
    }
    tokio::select! {
        done = broker.shutdown() => done?,
        why = signals.recv() => bail!(
            "{why} received during shutdown; exiting without flushing (the next start recovers the log tails)"
        ),
    }
    println!("quiver server stopped");
    Ok(())
}
