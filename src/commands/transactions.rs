//! `quiver transactions`: list the transactions the coordinators know, describe one
//! transactional id, and show the producers a partition keeps state for with the first offset
//! of their open transactions (Kafka's `kafka-transactions.sh list`, `describe` and
//! `describe-producers`). The last finds the transaction that holds back a partition's last
//! stable offset, and so a `read_committed` consumer.
//!
//! Transactions live in a running broker, so these commands always go over the Kafka protocol.

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use kafka_protocol::error::ResponseError;
use quiver_broker::BrokerError;
use quiver_kafka_client::{
    KafkaClient, ListedTransaction, ProducerState, TRANSACTION_STATES, TransactionDescription,
};

use crate::client::kafka::connect;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct TransactionsArgs {
    /// The running broker to ask, HOST:PORT (`quiver server`'s listener, or any Kafka broker);
    /// transactions live in the server, so this is required
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub bootstrap_server: Option<String>,

    #[command(subcommand)]
    pub command: TransactionsCommand,
}

#[derive(Debug, Subcommand)]
pub enum TransactionsCommand {
    /// List every transactional id the cluster's coordinators know, with its producer id and
    /// state
    List {
        /// Only transactions in this state; repeat for more (any of them matches)
        #[arg(long = "state", value_name = "STATE", value_parser = PossibleValuesParser::new(TRANSACTION_STATES))]
        states: Vec<String>,

        /// Only the transactional id that holds this producer id; repeat for more
        #[arg(long = "producer-id", value_name = "N")]
        producer_ids: Vec<i64>,
    },

    /// Show a transactional id's state, producer, timeout, and the partitions in its open
    /// transaction
    Describe {
        /// The transactional id (the producer's `transactional.id`)
        transactional_id: String,
    },

    /// Show the producers each partition of a topic keeps state for, and where their open
    /// transaction starts: what holds back the partition's last stable offset
    DescribeProducers {
        /// The topic
        #[arg(long, value_name = "TOPIC")]
        topic: String,

        /// Only this partition; repeat for more [default: every partition of the topic]
        #[arg(long = "partition", value_name = "P")]
        partitions: Vec<i32>,
    },
}

pub async fn run(args: TransactionsArgs) -> Result<()> {
    let Some(bootstrap) = args.bootstrap_server else {
        bail!(
            "transactions live in a running server; pass --bootstrap-server HOST:PORT of \
             `quiver server` (its Kafka listener, e.g. localhost:9092)"
        );
    };
    let client = connect(&bootstrap).await?;
    let result = match args.command {
        TransactionsCommand::List {
            states,
            producer_ids,
        } => list(&client, &states, &producer_ids).await,
        TransactionsCommand::Describe { transactional_id } => {
            describe(&client, &transactional_id).await
        }
        TransactionsCommand::DescribeProducers { topic, partitions } => {
            describe_producers(&client, &topic, &partitions).await
        }
    };
    client.close().await;
    result
}

async fn list(client: &KafkaClient, states: &[String], producer_ids: &[i64]) -> Result<()> {
    let states: Vec<&str> = states.iter().map(String::as_str).collect();
    let listed = client.list_transactions(&states, producer_ids).await?;
    print!("{}", render_list(&listed));
    Ok(())
}

fn render_list(listed: &[ListedTransaction]) -> String {
    let mut table = Table::new(&["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"]);
    for t in listed {
        table.row(vec![
            t.transactional_id.clone(),
            t.producer_id.to_string(),
            t.state.clone(),
        ]);
    }
    table.to_string()
}

async fn describe(client: &KafkaClient, id: &str) -> Result<()> {
    let described = client.describe_transactions(&[id]).await?;
    let description = match described.into_iter().next() {
        Some((_, Ok(d))) => d,
        Some((_, Err(e))) if e.error == ResponseError::TransactionalIdNotFound => bail!(
            "unknown transactional id '{id}'; list transactional ids with `quiver transactions list`"
        ),
        Some((_, Err(e))) => return Err(anyhow!("cannot describe transactional id '{id}': {e}")),
        None => bail!("the broker did not describe transactional id '{id}'"),
    };
    print!("{}", render_description(&description, now_ms()));
    Ok(())
}

/// Milliseconds since the Unix epoch on this machine's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether a transaction in `state` is still open: its duration grows until it ends.
fn is_open(state: &str) -> bool {
    matches!(
        state,
        "Ongoing" | "PrepareCommit" | "PrepareAbort" | "PrepareEpochFence"
    )
}

/// The description as `Label: value` lines; an open transaction's duration is measured to
/// `now_ms` (an ended one's is not known).
fn render_description(d: &TransactionDescription, now_ms: i64) -> String {
    let dash = || "-".to_owned();
    let partitions: Vec<String> = d
        .partitions
        .iter()
        .flat_map(|(topic, ps)| ps.iter().map(move |p| format!("{topic}-{p}")))
        .collect();
    let partitions = if partitions.is_empty() {
        dash()
    } else {
        partitions.join(", ")
    };
    format!(
        "Transactional id:  {}\nState:             {}\nProducer id:       {}\nProducer epoch:    {}\n\
         Timeout ms:        {}\nStart time ms:     {}\nDuration ms:       {}\nPartitions:        {}\n",
        d.transactional_id,
        d.state,
        d.producer_id,
        d.producer_epoch,
        d.timeout_ms,
        d.start_timestamp_ms.map_or_else(dash, |t| t.to_string()),
        d.start_timestamp_ms
            .filter(|_| is_open(&d.state))
            .map_or_else(dash, |t| now_ms.saturating_sub(t).max(0).to_string()),
        partitions,
    )
}

async fn describe_producers(client: &KafkaClient, topic: &str, wanted: &[i32]) -> Result<()> {
    let metadata = client.metadata(Some(&[topic]), false).await?;
    let Some(described) = metadata.topics.iter().find(|t| t.name == topic) else {
        bail!("the broker did not describe topic '{topic}'");
    };
    match &described.error {
        Some(e) if e.error == ResponseError::UnknownTopicOrPartition => {
            return Err(BrokerError::UnknownTopic(topic.to_owned()).into());
        }
        Some(e) => bail!("cannot describe topic '{topic}': {e}"),
        None => {}
    }
    let all: Vec<i32> = described.partitions.iter().map(|p| p.partition).collect();
    if let Some(&p) = wanted.iter().find(|p| !all.contains(p)) {
        return Err(BrokerError::UnknownPartition {
            topic: topic.to_owned(),
            partition: p,
            partitions: i32::try_from(all.len()).unwrap_or(i32::MAX),
        }
        .into());
    }
    let mut partitions = if wanted.is_empty() {
        all
    } else {
        wanted.to_vec()
    };
    partitions.sort_unstable();
    partitions.dedup();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (p, result) in client.describe_producers(topic, &partitions).await? {
        match result {
            Ok(producers) => rows.extend(producers.into_iter().map(|s| (p, s))),
            Err(e) => failed.push(format!("{topic}-{p}: {e}")),
        }
    }
    print!("{}", render_producers(&rows));
    if !failed.is_empty() {
        bail!(
            "cannot describe the producers of {}; try again once the partitions have a leader",
            failed.join("; ")
        );
    }
    Ok(())
}

fn render_producers(rows: &[(i32, ProducerState)]) -> String {
    let dash = || "-".to_owned();
    let mut table = Table::new(&[
        "PARTITION",
        "PRODUCER-ID",
        "EPOCH",
        "LAST-SEQUENCE",
        "LAST-TIMESTAMP",
        "COORDINATOR-EPOCH",
        "TXN-START-OFFSET",
    ]);
    for (p, s) in rows {
        table.row(vec![
            p.to_string(),
            s.producer_id.to_string(),
            s.producer_epoch.to_string(),
            s.last_sequence.to_string(),
            s.last_timestamp_ms.to_string(),
            s.coordinator_epoch.map_or_else(dash, |e| e.to_string()),
            s.current_txn_start_offset
                .map_or_else(dash, |o| o.to_string()),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_id_producer_and_state() {
        let listed = vec![
            ListedTransaction {
                transactional_id: "app-1".into(),
                producer_id: 1000,
                state: "Ongoing".into(),
            },
            ListedTransaction {
                transactional_id: "b".into(),
                producer_id: 7,
                state: "CompleteCommit".into(),
            },
        ];
        assert_eq!(
            render_list(&listed),
            "TRANSACTIONAL-ID  PRODUCER-ID  STATE\n\
             app-1             1000         Ongoing\n\
             b                 7            CompleteCommit\n"
        );
    }

    #[test]
    fn description_shows_partitions_and_how_long_the_transaction_is_open() {
        let mut d = TransactionDescription {
            transactional_id: "app-1".into(),
            state: "Ongoing".into(),
            producer_id: 1000,
            producer_epoch: 2,
            timeout_ms: 60_000,
            start_timestamp_ms: Some(1_000),
            partitions: vec![("a".into(), vec![0, 2]), ("b".into(), vec![1])],
        };
        assert_eq!(
            render_description(&d, 4_500),
            "Transactional id:  app-1\nState:             Ongoing\nProducer id:       1000\n\
             Producer epoch:    2\nTimeout ms:        60000\nStart time ms:     1000\n\
             Duration ms:       3500\nPartitions:        a-0, a-2, b-1\n"
        );
        // Ended: the last start is still told, but the transaction no longer lasts.
        d.state = "CompleteCommit".into();
        d.partitions.clear();
        let out = render_description(&d, 4_500);
        assert!(
            out.contains("\nStart time ms:     1000\nDuration ms:       -\nPartitions:        -\n"),
            "{out}"
        );
        d.start_timestamp_ms = None;
        let out = render_description(&d, 4_500);
        assert!(out.contains("\nStart time ms:     -\n"), "{out}");
    }

    #[test]
    fn producers_show_open_transactions_and_dashes_for_what_is_unknown() {
        let state = |pid, txn| ProducerState {
            producer_id: pid,
            producer_epoch: 0,
            last_sequence: 4,
            last_timestamp_ms: 1_700_000_000_000,
            coordinator_epoch: None,
            current_txn_start_offset: txn,
        };
        let rows = vec![(0, state(11, None)), (1, state(12, Some(40)))];
        assert_eq!(
            render_producers(&rows),
            "PARTITION  PRODUCER-ID  EPOCH  LAST-SEQUENCE  LAST-TIMESTAMP  COORDINATOR-EPOCH  TXN-START-OFFSET\n\
             0          11           0      4              1700000000000   -                  -\n\
             1          12           0      4              1700000000000   -                  40\n"
        );
    }
}
