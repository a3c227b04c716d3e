//! The command line: subcommands and their dispatch.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::client::{self, Client};
use crate::commands::connect::{self, ConnectorArgs};
use crate::commands::consume::{self, ConsumeArgs};
use crate::commands::groups::{self, GroupsArgs};
use crate::commands::produce::{self, ProduceArgs};
use crate::commands::shell::{self, ShellArgs};
use crate::commands::topics::{self, TopicsArgs};
use crate::commands::transactions::{self, TransactionsArgs};
use crate::server::{self, ServerArgs};
use crate::signal::StopSignals;

/// Stream processing with a bundled Kafka-compatible broker, on Apache Arrow.
#[derive(Debug, Parser)]
#[command(name = "quiver", version)]
#[command(
    after_help = "Logs go to standard error; set RUST_LOG (e.g. RUST_LOG=debug) to change how much."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker on a data directory (./quiver-data by default) until Ctrl-C or SIGTERM
    Server(ServerArgs),

    /// Create, list, describe, alter and delete topics
    Topics(TopicsArgs),

    /// Send lines from standard input (or a file) to a topic, one record per line
    Produce(ProduceArgs),

    /// Print a topic's records, one per line, and keep following new ones
    Consume(ConsumeArgs),

    /// List consumer groups, or describe one: members, committed offsets and lag (needs
    /// --bootstrap-server)
    Groups(GroupsArgs),

    /// List transactions, describe a transactional id, or show the producers of a topic's
    /// partitions and their open transactions (needs --bootstrap-server)
    Transactions(TransactionsArgs),

    /// Run connectors from config files (Parquet to local disk or object storage), or
    /// `connect validate FILE` to check one
    Connect(ConnectorArgs),

    /// Quiver SQL: create streams and tables over topics, run continuous queries (at a
    /// prompt, from a file with -f, or from standard input)
    Shell(ShellArgs),
}

impl Command {
    /// Log filter used when RUST_LOG is not set: the server reports its work, client commands
    /// only warnings (their results go to standard output).
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Server(_) | Command::Connect(_) => "info",
            _ => "warn",
        }
    }
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Server(args) => server::run(args, StopSignals::install()?).await,
        Command::Topics(args) => {
            let client = client::connect(&args.connect)?;
            let result = topics::run(&client, args.command).await;
            finish(client, result).await
        }
        Command::Produce(args) => {
            let signals = StopSignals::install()?;
            let client = client::connect(&args.connect)?;
            let result = produce::run(&client, args, signals).await;
            finish(client, result).await
        }
        Command::Consume(args) => {
            let signals = StopSignals::install()?;
            let client = client::connect(&args.connect)?;
            let result = consume::run(&client, args, signals).await;
            finish(client, result).await
        }
        Command::Groups(args) => groups::run(args).await,
        Command::Transactions(args) => transactions::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Shell(args) => shell::run(args).await,
    }
}

/// Closes the client also after a failed command (so that what was written is flushed), and
/// reports the command's error first.
async fn finish(client: impl Client, result: Result<()>) -> Result<()> {
    let closed = client.close().await;
    match (result, closed) {
        (Err(e), Err(close)) => {
            tracing::error!("closing after the error below also failed: {close:#}");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), closed) => closed,
    }
}
