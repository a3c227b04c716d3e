//! `quiver connect FILE…`: runs connectors from config files until Ctrl-C or SIGTERM, against
//! a running broker (`--bootstrap-server`) or the data directory opened in this process; and
//! `quiver connect validate FILE…`, which checks configs without running them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quiver_broker::Broker;
use quiver_connectors::runner::known_keys;
use quiver_connectors::worker::run_waiting;
use quiver_connectors::{Connector, ConnectorConfig, Status};
use quiver_engine::KafkaCluster;
use quiver_engine::checkpoint::Cluster;
use tokio::task::JoinSet;

use crate::client::ConnectArgs as Target;
use crate::data_dir::{self, Intent};
use crate::signal::StopSignals;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, after_help = connect_help())]
pub struct ConnectorArgs {
    #[command(subcommand)]
    pub command: Option<ConnectCommand>,

    /// Connector config files: Kafka Connect's .properties or JSON ({"name": …, "config":
    /// {…}}), or TOML
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConnectCommand {
    /// Check config files without running them: every key and value, and (unless --offline)
    /// that the store is reachable with the given credentials
    Validate {
        /// Config files to check
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,

        /// Do not contact the store
        #[arg(long)]
        offline: bool,
    },

    /// List the keys a connector class takes, with their defaults
    Keys {
        /// ParquetSink (also S3Sink), DataGen or FileSource
        #[arg(value_name = "CLASS", default_value = "ParquetSink")]
        class: String,
    },
}

fn connect_help() -> &'static str {
    "A sink commits its progress to the consumer group connect-<name>; a source commits its \
     records and its position in one transaction (offsets in the topic connect-offsets). Run \
     the same config again and it resumes where it stopped. Example configs:\n\n  \
     name=lake\n  connector.class=ParquetSink\n  topics=orders\n  store.url=file:///tmp/lake\n  \
     flush.size=10000\n  rotate.schedule.interval.ms=60000\n\n  \
     name=orders-gen\n  connector.class=DataGen\n  kafka.topic=orders\n  quickstart=orders\n  \
     messages.per.second=100\n\n  \
     name=logs\n  connector.class=FileSource\n  file=/var/log/app/*.json\n  topic=logs\n  \
     format=json\n  follow=true\n\nquiver connect keys CLASS lists every key of a class."
}

pub async fn run(args: ConnectorArgs) -> Result<()> {
    match args.command {
        Some(ConnectCommand::Validate { files, offline }) => validate(&files, offline).await,
        Some(ConnectCommand::Keys { class }) => keys(&class),
        None => {
            if args.files.is_empty() {
                bail!(
                    "give the connector config files to run (quiver connect lake.properties), or \
                     `quiver connect validate FILE` to check one"
                );
            }
            let signals = StopSignals::install()?;
            run_files(&args.files, &args.target, signals).await
        }
    }
}

fn load(files: &[PathBuf]) -> Result<Vec<Connector>> {
    let mut out: Vec<Connector> = Vec::with_capacity(files.len());
    for f in files {
        let config = ConnectorConfig::load(f)?;
        let connector = Connector::from_config(config)?;
        if let Some(other) = out.iter().find(|c| c.name() == connector.name()) {
            bail!(
                "{} and {} both name a connector '{}'; connector names must differ",
                other.config().origin,
                connector.config().origin,
                connector.name()
            );
        }
        out.push(connector);
    }
    Ok(out)
}

/// Every connector config in `dir` (`*.properties`, `*.json`, `*.toml`), checked, in name
/// order: what `quiver server --connectors DIR` runs.
pub fn load_dir(dir: &Path) -> Result<Vec<Connector>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the connectors directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("properties" | "json" | "toml")
                )
        })
        .collect();
    files.sort();
    load(&files)
}

async fn validate(files: &[PathBuf], offline: bool) -> Result<()> {
    let mut failed = 0;
    for f in files {
        let checked = async {
            let connector = Connector::from_config(ConnectorConfig::load(f)?)?;
            if !offline {
                connector.check().await?;
            }
            Ok::<_, quiver_connectors::ConnectError>(connector)
        }
        .await;
        match checked {
            Ok(c) => println!(
                "{}: ok: connector '{}' ({:?}) moves {}",
                f.display(),
                c.name(),
                c.config().class,
                c.describe()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} config files are not valid", files.len());
    }
    Ok(())
}

fn keys(class: &str) -> Result<()> {
    let config = ConnectorConfig::from_properties(
        &format!("name=keys\nconnector.class={class}\n"),
        "the command line",
    )?;
    let mut keys = known_keys(config.class);
    keys.sort_by_key(|k| k.name);
    let mut table = crate::table::Table::new(&["KEY", "DEFAULT", "MEANING"]);
    for k in keys {
        table.row(vec![
            k.name.to_owned(),
            k.default.unwrap_or("").to_owned(),
            k.doc.to_owned(),
        ]);
    }
    print!("{table}");
    Ok(())
}

async fn run_files(files: &[PathBuf], target: &Target, mut signals: StopSignals) -> Result<()> {
    let connectors = load(files)?;
    // The cluster each connector reads: its own bootstrap.servers, else the command's target.
    let mut local: Option<Broker> = None;
    let mut clusters = Vec::with_capacity(connectors.len());
    for c in &connectors {
        let cluster = match c.bootstrap().or(target.bootstrap_server.as_deref()) {
            Some(bootstrap) => {
                Cluster::Remote(KafkaCluster::connect(bootstrap).await.with_context(|| {
                    format!("connector '{}': cannot reach {bootstrap}", c.name())
                })?)
            }
            None => {
                if local.is_none() {
                    let config = crate::config::resolve(
                        None,
                        std::env::vars_os(),
                        target.data_dir.as_deref(),
                    )?;
                    data_dir::check(&config.data_dir, Intent::Existing)?;
                    local = Some(Broker::open(config).await?);
                }
                match &local {
                    Some(b) => Cluster::Local(b.clone()),
                    None => bail!("the data directory did not open"),
                }
            }
        };
        clusters.push(cluster);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = JoinSet::new();
    let mut statuses = Vec::with_capacity(connectors.len());
    for (c, cluster) in connectors.into_iter().zip(clusters) {
        let status = Status::default();
        statuses.push((c.name().to_owned(), status.clone()));
        let progress_in = match &c {
            Connector::Sink(s) => format!("group {}", s.group()),
            Connector::Source(s) => format!("offsets in {}", s.offsets_topic),
        };
        println!(
            "connector '{}' started: {} ({progress_in})",
            c.name(),
            c.describe()
        );
        let name = c.name().to_owned();
        let stopped = stopped.clone();
        running.spawn(async move {
            let told = std::sync::atomic::AtomicBool::new(false);
            let waiting = |why: Option<&str>| {
                if let Some(why) = why
                    && !told.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    eprintln!("{why}; waiting for it (checked every 2 s)");
                }
            };
            let result = run_waiting(Arc::new(c), cluster, stopped, status, waiting).await;
            (name, result)
        });
    }
    let tty = std::io::stderr().is_terminal();
    let mut progress = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 10 }));
    progress.tick().await;
    let mut first_error: Option<anyhow::Error> = None;
    let mut stopping = false;
    while !running.is_empty() {
        tokio::select! {
            done = running.join_next() => {
                let Some(done) = done else { break };
                match done {
                    Ok((name, Ok(()))) => {
                        if !stopping {
                            eprintln!("connector '{name}' finished");
                        }
                    }
                    Ok((name, Err(e))) => {
                        if first_error.is_none() {
                            first_error = Some(anyhow::anyhow!("connector '{name}': {e}"));
                        }
                        stopping = true;
                        stop.send_replace(true);
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| anyhow::anyhow!("a connector failed: {e}"));
                        stopping = true;
                        stop.send_replace(true);
                    }
                }
            }
            why = signals.recv(), if !stopping => {
                tracing::info!("{why} received; closing open files and committing");
                stopping = true;
                stop.send_replace(true);
            }
            _ = progress.tick() => {
                let line = progress_line(&statuses);
                if tty {
                    eprint!("\r\x1b[K{line}");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{line}");
                }
            }
        }
    }
    if tty {
        eprintln!();
    }
    println!("{}", progress_line(&statuses));
    if let Some(broker) = local {
        broker.shutdown().await?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn progress_line(statuses: &[(String, Status)]) -> String {
    statuses
        .iter()
        .map(|(name, s)| {
            let p = s.progress();
            if let Some(transactions) = p.source_transactions {
                return format!(
                    "{name}: {} records written ({}) in {transactions} transactions",
                    p.records,
                    crate::table::human_bytes(p.bytes)
                );
            }
            let lag = p.lag.map_or(String::new(), |l| format!(", lag {l}"));
            format!(
                "{name}: {} records in {} files ({}), {} open{lag}",
                p.records,
                p.files,
                crate::table::human_bytes(p.bytes),
                p.open_files
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
