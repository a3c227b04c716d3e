//! `quiver topics`: create, list, describe, alter and delete topics (Kafka's `kafka-topics`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::{ArgGroup, Subcommand};
use quiver_broker::broker::ConfigChange;
use quiver_broker::config::TOPIC_CONFIG_KEYS;
use quiver_broker::{BrokerError, NewTopic, topic};

use crate::client::{Client, ConnectArgs, TopicInfo};
use crate::table::{Table, human_bytes};

#[derive(Debug, clap::Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    #[command(subcommand)]
    pub command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic
    #[command(after_help = config_keys_help())]
    Create(CreateArgs),

    /// List topic names, one per line
    List,

    /// Show a topic's partitions (offsets, size, segments), its config overrides and every
    /// effective config
    Describe {
        /// The topic
        topic: String,
    },

    /// Delete a topic and all its data
    Delete {
        /// The topic
        topic: String,
    },

    /// Change a topic's configs or raise its partition count
    #[command(after_help = config_keys_help())]
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["add", "delete", "partitions"])))]
    Alter(AlterArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Topic name: 1 to 249 ASCII letters, digits, '.', '_' and '-'
    pub topic: String,

    /// Number of partitions [default: the broker's num.partitions, 1 unless set]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub partitions: Option<i32>,

    /// A topic config override as KEY=VALUE (Kafka's key names); repeat for more
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct AlterArgs {
    /// The topic
    pub topic: String,

    /// Set a topic config, KEY=VALUE; repeat for more
    #[arg(long = "add-config", id = "add", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub add: Vec<(String, String)>,

    /// Remove a topic config override, going back to the broker's default; repeat for more
    #[arg(long = "delete-config", id = "delete", value_name = "KEY")]
    pub delete: Vec<String>,

    /// Raise the partition count to N (the new total, as in Kafka); partitions cannot be removed
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub partitions: Option<i32>,
}

fn config_keys_help() -> String {
    let width = TOPIC_CONFIG_KEYS
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    let mut help = String::from("Topic config keys:\n");
    for (key, about) in TOPIC_CONFIG_KEYS {
        help.push_str(&format!("  {key:width$}  {about}\n"));
    }
    help
}

/// Parses `KEY=VALUE` (the value may contain '=').
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

pub async fn run(client: &impl Client, command: TopicsCommand) -> Result<()> {
    match command {
        TopicsCommand::Create(args) => create(client, args).await,
        TopicsCommand::List => {
            for name in client.list_topics().await? {
                println!("{name}");
            }
            Ok(())
        }
        TopicsCommand::Describe { topic } => {
            print!(
                "{}",
                render_description(&client.describe_topic(&topic).await?)
            );
            Ok(())
        }
        TopicsCommand::Delete { topic } => {
            client.delete_topic(&topic).await?;
            println!("deleted topic '{topic}'");
            Ok(())
        }
        TopicsCommand::Alter(args) => alter(client, args).await,
    }
}

async fn create(client: &impl Client, args: CreateArgs) -> Result<()> {
    let configs: BTreeMap<String, String> = args.configs.into_iter().collect();
    let new = NewTopic {
        name: args.topic,
        partitions: args.partitions,
        configs,
    };
    let info = client.create_topic(&new).await?;
    let n = info.partitions.len();
    let mut line = format!(
        "created topic '{}' with {n} partition{}",
        info.name,
        if n == 1 { "" } else { "s" }
    );
    if !info.overrides.is_empty() {
        line.push_str(&format!(" and configs {}", join_configs(&info.overrides)));
    }
    println!("{line}");
    Ok(())
}

async fn alter(client: &impl Client, args: AlterArgs) -> Result<()> {
    if let Some(key) = args
        .delete
        .iter()
        .find(|k| args.add.iter().any(|(a, _)| a == *k))
    {
        bail!("config '{key}' is both in --add-config and --delete-config; give it once");
    }
    let current = client.describe_topic(&args.topic).await?;
    // Check the partition count before changing configs, so that a refused count changes nothing.
    if let Some(total) = args.partitions {
        let count = current.partitions.len();
        if usize::try_from(total).is_ok_and(|t| t <= count) || total < 1 {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic '{}' has {count} partitions; the new count {total} must be larger (partitions cannot be removed)",
                args.topic
            ))
            .into());
        }
        topic::validate_partitions(total)?;
    }
    let mut done = Vec::new();
    let changes: Vec<ConfigChange> = args
        .add
        .iter()
        .map(|(k, v)| ConfigChange::Set(k.clone(), v.clone()))
        .chain(args.delete.iter().map(|k| ConfigChange::Delete(k.clone())))
        .collect();
    if !changes.is_empty() {
        client.alter_topic_config(&args.topic, &changes).await?;
        done.extend(args.add.iter().map(|(k, v)| format!("set {k}={v}")));
        done.extend(args.delete.iter().map(|k| format!("removed {k}")));
    }
    if let Some(total) = args.partitions {
        client.create_partitions(&args.topic, total).await?;
        done.push(format!(
            "partitions {} -> {total}",
            current.partitions.len()
        ));
    }
    println!("altered topic '{}': {}", args.topic, done.join("; "));
    Ok(())
}

fn join_configs(configs: &BTreeMap<String, String>) -> String {
    configs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_description(info: &TopicInfo) -> String {
    let overrides = if info.overrides.is_empty() {
        "none".to_owned()
    } else {
        join_configs(&info.overrides)
    };
    let mut out = format!(
        "Topic:       {}\nId:          {}\nPartitions:  {}\nOverrides:   {overrides}\n\n",
        info.name,
        info.id,
        info.partitions.len()
    );
    let mut partitions = Table::new(&[
        "PARTITION",
        "LOG-START-OFFSET",
        "LOG-END-OFFSET",
        "SIZE",
        "SEGMENTS",
    ]);
    for p in &info.partitions {
        partitions.row(vec![
            p.partition.to_string(),
            p.log_start_offset.to_string(),
            p.log_end_offset.to_string(),
            p.size_bytes.map_or_else(|| "-".to_owned(), human_bytes),
            p.segments.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        ]);
    }
    out.push_str(&partitions.to_string());
    out.push('\n');
    let mut configs = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
    for (key, value) in &info.effective {
        let source = if info.overrides.contains_key(key) {
            "override"
        } else {
            "default"
        };
        configs.row(vec![key.clone(), value.clone(), source.to_owned()]);
    }
    out.push_str(&configs.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PartitionState;

    #[test]
    fn key_value_splits_at_the_first_equals() {
        assert_eq!(
            parse_key_value("a.b=c=d"),
            Ok(("a.b".to_owned(), "c=d".to_owned()))
        );
        assert_eq!(parse_key_value("a="), Ok(("a".to_owned(), String::new())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn description_shows_partitions_and_config_sources() {
        let info = TopicInfo {
            name: "orders".into(),
            id: "abc".into(),
            partitions: vec![PartitionState {
                partition: 0,
                log_start_offset: 0,
                log_end_offset: 12,
                size_bytes: Some(2048),
                segments: Some(1),
            }],
            overrides: [("retention.ms".to_owned(), "1000".to_owned())].into(),
            effective: vec![
                ("cleanup.policy".into(), "delete".into()),
                ("retention.ms".into(), "1000".into()),
            ],
        };
        let text = render_description(&info);
        assert_eq!(
            text,
            "Topic:       orders\nId:          abc\nPartitions:  1\nOverrides:   retention.ms=1000\n\n\
             PARTITION  LOG-START-OFFSET  LOG-END-OFFSET  SIZE     SEGMENTS\n\
             0          0                 12              2.0 KiB  1\n\n\
             CONFIG          VALUE   SOURCE\n\
             cleanup.policy  delete  default\n\
             retention.ms    1000    override\n"
        );
    }
}
