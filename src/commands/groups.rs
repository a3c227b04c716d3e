//! `quiver groups`: list consumer groups and describe one: its members, the partitions assigned
//! to them, and per partition the committed offset, the log end offset and the lag (Kafka's
//! `kafka-consumer-groups --list` and `--describe`).
//!
//! Groups live in a running broker, so these commands always go over the Kafka protocol.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use kafka_protocol::error::ResponseError;
use quiver_kafka_client::{
    CommittedOffset, GroupDescription, GroupMember, IsolationLevel, KafkaClient, ListedGroup,
    OffsetSpec,
};

use crate::client::kafka::connect;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct GroupsArgs {
    /// The running broker to ask, HOST:PORT (`quiver server`'s listener, or any Kafka broker);
    /// groups live in the server, so this is required
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub bootstrap_server: Option<String>,

    #[command(subcommand)]
    pub command: GroupsCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List every group with its state, protocol type and member count
    List,

    /// Show a group's members and, per partition, its committed offset, log end offset and lag
    Describe {
        /// The group id
        group: String,
    },
}

pub async fn run(args: GroupsArgs) -> Result<()> {
    let Some(bootstrap) = args.bootstrap_server else {
        bail!(
            "consumer groups live in a running server; pass --bootstrap-server HOST:PORT of \
             `quiver server` (its Kafka listener, e.g. localhost:9092)"
        );
    };
    let client = connect(&bootstrap).await?;
    let result = match args.command {
        GroupsCommand::List => list(&client).await,
        GroupsCommand::Describe { group } => describe(&client, &group).await,
    };
    client.close().await;
    result
}

async fn list(client: &KafkaClient) -> Result<()> {
    let groups = client.list_groups().await?;
    let ids: Vec<&str> = groups.iter().map(|g| g.group_id.as_str()).collect();
    let described: BTreeMap<String, GroupDescription> = client
        .describe_groups(&ids)
        .await?
        .into_iter()
        .filter_map(|(id, d)| d.ok().map(|d| (id, d)))
        .collect();
    print!("{}", render_list(&groups, &described));
    Ok(())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn render_list(groups: &[ListedGroup], described: &BTreeMap<String, GroupDescription>) -> String {
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"]);
    for g in groups {
        let d = described.get(&g.group_id);
        let state = d
            .map(|d| d.state.clone())
            .or_else(|| g.state.clone())
            .unwrap_or_default();
        table.row(vec![
            g.group_id.clone(),
            or_dash(&state),
            or_dash(&g.protocol_type),
            d.map_or_else(|| "-".to_owned(), |d| d.members.len().to_string()),
        ]);
    }
    table.to_string()
}

/// One partition of a described group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PartitionRow {
    committed: Option<i64>,
    log_end: Option<i64>,
    member: Option<String>,
}

async fn describe(client: &KafkaClient, group: &str) -> Result<()> {
    let unknown = || anyhow!("unknown group '{group}'; list groups with `quiver groups list`");
    let described = client.describe_groups(&[group]).await?;
    let description = match described.into_iter().next() {
        Some((_, Ok(d))) => d,
        Some((_, Err(e))) if e.error == ResponseError::GroupIdNotFound => return Err(unknown()),
        Some((_, Err(e))) => return Err(anyhow!("cannot describe group '{group}': {e}")),
        None => bail!("the broker did not describe group '{group}'"),
    };
    let committed = client.offset_fetch(group, None).await?;
    let committed: Vec<CommittedOffset> = committed
        .into_iter()
        .filter(|c| c.offset.is_some())
        .collect();
    if description.state == "Dead" && description.members.is_empty() && committed.is_empty() {
        return Err(unknown());
    }
    let mut rows: BTreeMap<(String, i32), PartitionRow> = BTreeMap::new();
    for c in &committed {
        rows.entry((c.topic.clone(), c.partition))
            .or_default()
            .committed = c.offset;
    }
    for m in &description.members {
        for (topic, partitions) in &m.assignment {
            for p in partitions {
                rows.entry((topic.clone(), *p)).or_default().member = Some(m.member_id.clone());
            }
        }
    }
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, p) in rows.keys() {
        by_topic.entry(topic).or_default().push(*p);
    }
    let mut ends = BTreeMap::new();
    for (topic, partitions) in &by_topic {
        let specs: Vec<(i32, OffsetSpec)> = partitions
            .iter()
            .map(|p| (*p, OffsetSpec::Latest))
            .collect();
        // A topic deleted since the commit has no end: its rows show "-". The end is the last
        // stable offset: what a read_committed consumer can reach (the log end when no
        // transaction is open), as the lag of transactional pipelines is measured.
        let listed = client
            .list_offsets_isolated(topic, &specs, IsolationLevel::ReadCommitted)
            .await;
        let Ok(listed) = listed else {
            continue;
        };
        for (p, result) in listed {
            if let Ok(Some(o)) = result {
                ends.insert(((*topic).to_owned(), p), o.offset);
            }
        }
    }
    for (key, row) in rows.iter_mut() {
        row.log_end = ends.get(key).copied();
    }
    print!("{}", render_description(&description, &rows));
    Ok(())
}

fn assignment(member: &GroupMember) -> String {
    let parts: Vec<String> = member
        .assignment
        .iter()
        .flat_map(|(topic, partitions)| partitions.iter().map(move |p| format!("{topic}-{p}")))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

fn render_description(
    d: &GroupDescription,
    rows: &BTreeMap<(String, i32), PartitionRow>,
) -> String {
    let mut out = format!(
        "Group:          {}\nState:          {}\nProtocol type:  {}\nAssignor:       {}\nMembers:        {}\n",
        d.group_id,
        or_dash(&d.state),
        or_dash(&d.protocol_type),
        or_dash(&d.protocol),
        d.members.len()
    );
    if !d.members.is_empty() {
        let mut members = Table::new(&["MEMBER-ID", "CLIENT-ID", "HOST", "PARTITIONS"]);
        for m in &d.members {
            members.row(vec![
                m.member_id.clone(),
                or_dash(&m.client_id),
                or_dash(&m.client_host),
                assignment(m),
            ]);
        }
        out.push('\n');
        out.push_str(&members.to_string());
    }
    if !rows.is_empty() {
        let mut partitions = Table::new(&[
            "TOPIC",
            "PARTITION",
            "COMMITTED-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "MEMBER-ID",
        ]);
        let dash = || "-".to_owned();
        for ((topic, p), row) in rows {
            let lag = match (row.committed, row.log_end) {
                (Some(c), Some(e)) => (e - c).max(0).to_string(),
                _ => dash(),
            };
            partitions.row(vec![
                topic.clone(),
                p.to_string(),
                row.committed.map_or_else(dash, |c| c.to_string()),
                row.log_end.map_or_else(dash, |e| e.to_string()),
                lag,
                row.member.clone().unwrap_or_else(dash),
            ]);
        }
        out.push('\n');
        out.push_str(&partitions.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, assignment: Vec<(String, Vec<i32>)>) -> GroupMember {
        GroupMember {
            member_id: id.into(),
            group_instance_id: None,
            client_id: "rdkafka".into(),
            client_host: "/127.0.0.1".into(),
            assignment,
        }
    }

    #[test]
    fn description_shows_members_offsets_and_lag() {
        let d = GroupDescription {
            group_id: "g".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members: vec![member("m1", vec![("t".into(), vec![0, 1])])],
        };
        let rows = BTreeMap::from([
            (
                ("t".to_owned(), 0),
                PartitionRow {
                    committed: Some(3),
                    log_end: Some(10),
                    member: Some("m1".into()),
                },
            ),
            (
                ("t".to_owned(), 1),
                PartitionRow {
                    committed: None,
                    log_end: Some(4),
                    member: Some("m1".into()),
                },
            ),
        ]);
        assert_eq!(
            render_description(&d, &rows),
            "Group:          g\nState:          Stable\nProtocol type:  consumer\nAssignor:       range\nMembers:        1\n\n\
             MEMBER-ID  CLIENT-ID  HOST        PARTITIONS\n\
             m1         rdkafka    /127.0.0.1  t-0, t-1\n\n\
             TOPIC  PARTITION  COMMITTED-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID\n\
             t      0          3                 10              7    m1\n\
             t      1          -                 4               -    m1\n"
        );
    }

    #[test]
    fn list_falls_back_to_what_listing_said() {
        let groups = vec![
            ListedGroup {
                group_id: "a".into(),
                protocol_type: "consumer".into(),
                state: Some("Stable".into()),
            },
            ListedGroup {
                group_id: "b".into(),
                protocol_type: String::new(),
                state: None,
            },
        ];
        let described = BTreeMap::from([(
            "a".to_owned(),
            GroupDescription {
                group_id: "a".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                members: vec![member("m", Vec::new()), member("n", Vec::new())],
            },
        )]);
        assert_eq!(
            render_list(&groups, &described),
            "GROUP  STATE   PROTOCOL-TYPE  MEMBERS\na      Stable  consumer       2\nb      -       -              -\n"
        );
    }
}
