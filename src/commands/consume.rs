//! `quiver consume`: prints a topic's records, one per line (Kafka's `kafka-console-consumer`).
//!
//! Starts at the end of the log unless told otherwise, then follows: it keeps waiting for new
//! records until `--max-messages` are printed, `--timeout-ms` passes without a record, or Ctrl-C.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quiver_broker::{BrokerError, EnvelopeColumns, Isolation};

use crate::client::{Client, ConnectArgs, Fetched, TopicInfo};
use crate::signal::StopSignals;

const STDOUT: &str = "cannot write to standard output";

/// How long one fetch waits for new records when no `--timeout-ms` is given (then it fetches again).
const FOLLOW_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to read
    pub topic: String,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Start at the beginning of the log (its log start offset) instead of its end
    #[arg(long, group = "start")]
    pub from_beginning: bool,

    /// Start at OFFSET, in --partition or else in every partition
    #[arg(long, value_name = "OFFSET", group = "start", value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,

    /// Start at the first record whose timestamp is at least MS (milliseconds since the Unix
    /// epoch); partitions with no such record start at their end
    #[arg(
        long,
        value_name = "MS",
        group = "start",
        allow_negative_numbers = true
    )]
    pub timestamp: Option<i64>,

    /// Read only partition N [default: all partitions]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,

    /// Exit after printing N records
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages: Option<u64>,

    /// Exit when no record arrives for MS milliseconds; 0 prints what is there and exits
    /// [default: wait for new records until Ctrl-C]
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,

    /// Print each record's key, then the separator, before its value
    #[arg(long)]
    pub print_key: bool,

    /// Print `Partition:P` and `Offset:O` fields before each record
    #[arg(long)]
    pub print_offset: bool,

    /// Which records to read: `read_uncommitted` prints every record, `read_committed` only
    /// those of committed transactions (and non-transactional ones), as a Kafka consumer with
    /// isolation.level=read_committed sees them
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = IsolationArg::ReadUncommitted)]
    pub isolation_level: IsolationArg,

    /// Separator between printed fields [default: a tab]
    #[arg(
        long,
        value_name = "SEP",
        default_value = "\t",
        hide_default_value = true
    )]
    pub key_separator: String,
}

/// `--isolation-level`, spelled as Kafka's consumers spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum IsolationArg {
    ReadUncommitted,
    ReadCommitted,
}

impl From<IsolationArg> for Isolation {
    fn from(a: IsolationArg) -> Isolation {
        match a {
            IsolationArg::ReadUncommitted => Isolation::ReadUncommitted,
            IsolationArg::ReadCommitted => Isolation::ReadCommitted,
        }
    }
}

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    End,
    Beginning,
    Offset(i64),
    Timestamp(i64),
}

impl ConsumeArgs {
    fn start(&self) -> Start {
        match (self.from_beginning, self.offset, self.timestamp) {
            (true, _, _) => Start::Beginning,
            (_, Some(offset), _) => Start::Offset(offset),
            (_, _, Some(ms)) => Start::Timestamp(ms),
            _ => Start::End,
        }
    }
}

/// How records are printed.
#[derive(Debug, Clone)]
struct Format {
    print_key: bool,
    print_offset: bool,
    separator: String,
}

pub async fn run(client: &impl Client, args: ConsumeArgs, mut signals: StopSignals) -> Result<()> {
    let info = client.describe_topic(&args.topic).await?;
    let mut positions = start_positions(client, &info, args.partition, args.start()).await?;
    let format = Format {
        print_key: args.print_key,
        print_offset: args.print_offset,
        separator: args.key_separator.clone(),
    };
    let timeout = args.timeout_ms.map(Duration::from_millis);
    let mut out = io::BufWriter::new(io::stdout());
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    loop {
        let max_wait = timeout.map_or(FOLLOW_WAIT, |t| t.saturating_sub(last_record.elapsed()));
        let fetched = tokio::select! {
            fetched = client.fetch(&args.topic, &positions, max_wait, args.isolation_level.into()) => fetched?,
            why = signals.recv() => {
                tracing::info!("{why} received; stopping");
                break;
            }
        };
        let limit = args.max_messages.map(|m| m - printed);
        let n = match print_fetched(&mut out, &format, &fetched, &mut positions, limit)
            .and_then(|n| out.flush().context(STDOUT).map(|()| n))
        {
            Ok(n) => n,
            // The reader went away (`quiver consume t | head`): not an error.
            Err(e)
                if e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
            {
                break;
            }
            Err(e) => return Err(e),
        };
        printed += n;
        if args.max_messages.is_some_and(|m| printed >= m) {
            break;
        }
        if n > 0 {
            last_record = Instant::now();
        } else if timeout.is_some_and(|t| last_record.elapsed() >= t) {
            break;
        }
        // Let every partition go first in turn when a fetch is cut short by its size limit.
        if !positions.is_empty() {
            positions.rotate_left(1);
        }
    }
    eprintln!(
        "consumed {printed} record{} from topic '{}'",
        if printed == 1 { "" } else { "s" },
        args.topic
    );
    Ok(())
}

/// The `(partition, offset)` to start each partition at.
async fn start_positions(
    client: &impl Client,
    info: &TopicInfo,
    partition: Option<i32>,
    start: Start,
) -> Result<Vec<(i32, i64)>> {
    let chosen: Vec<_> = match partition {
        Some(p) => {
            let found = info.partitions.iter().find(|s| s.partition == p);
            let state = found.ok_or_else(|| BrokerError::UnknownPartition {
                topic: info.name.clone(),
                partition: p,
                partitions: info.partitions.len() as i32,
            })?;
            vec![state]
        }
        None => info.partitions.iter().collect(),
    };
    let mut positions = Vec::with_capacity(chosen.len());
    for state in chosen {
        let offset = match start {
            Start::End => state.log_end_offset,
            Start::Beginning => state.log_start_offset,
            Start::Offset(offset) => {
                if !(state.log_start_offset..=state.log_end_offset).contains(&offset) {
                    return Err(BrokerError::OffsetOutOfRange {
                        topic: info.name.clone(),
                        partition: state.partition,
                        offset,
                        log_start_offset: state.log_start_offset,
                        log_end_offset: state.log_end_offset,
                    }
                    .into());
                }
                offset
            }
            Start::Timestamp(ms) => client
                .offset_for_timestamp(&info.name, state.partition, ms)
                .await?
                .unwrap_or(state.log_end_offset),
        };
        positions.push((state.partition, offset));
    }
    Ok(positions)
}

/// Prints up to `limit` records and moves `positions` past what was printed. Returns the count.
fn print_fetched(
    out: &mut impl Write,
    format: &Format,
    fetched: &[Fetched],
    positions: &mut [(i32, i64)],
    limit: Option<u64>,
) -> Result<u64> {
    let mut printed = 0u64;
    for f in fetched {
        let Some(position) = positions.iter_mut().find(|(p, _)| *p == f.partition) else {
            continue;
        };
        for batch in &f.batches {
            let cols = EnvelopeColumns::try_new(batch)?;
            for row in 0..batch.num_rows() {
                if limit.is_some_and(|l| printed >= l) {
                    return Ok(printed);
                }
                write_record(out, format, f.partition, &cols, row).context(STDOUT)?;
                printed += 1;
                position.1 = cols.offsets.value(row) + 1;
            }
        }
        position.1 = position.1.max(f.next_offset);
    }
    Ok(printed)
}

fn write_record(
    out: &mut impl Write,
    format: &Format,
    partition: i32,
    cols: &EnvelopeColumns<'_>,
    row: usize,
) -> io::Result<()> {
    let sep = format.separator.as_bytes();
    if format.print_offset {
        write!(out, "Partition:{partition}")?;
        out.write_all(sep)?;
        write!(out, "Offset:{}", cols.offsets.value(row))?;
        out.write_all(sep)?;
    }
    if format.print_key {
        write_lossy(out, cols.key(row))?;
        out.write_all(sep)?;
    }
    write_lossy(out, cols.value(row))?;
    out.write_all(b"\n")
}

/// Bytes as UTF-8 with invalid sequences replaced; a null as `null`, as Kafka's console consumer does.
fn write_lossy(out: &mut impl Write, bytes: Option<&[u8]>) -> io::Result<()> {
    match bytes {
        None => out.write_all(b"null"),
        Some(bytes) => out.write_all(String::from_utf8_lossy(bytes).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int64Array};
    use arrow::record_batch::RecordBatch;
    use quiver_broker::{Record, records_to_batch};
    use std::sync::Arc;

    use super::*;

    /// A batch as the log returns it: offsets assigned from `base`.
    fn stored(base: i64, records: &[Record]) -> Result<RecordBatch> {
        let batch = records_to_batch(records);
        let mut columns = batch.columns().to_vec();
        columns[0] = Arc::new(Int64Array::from_iter_values(
            base..base + records.len() as i64,
        )) as Arc<dyn Array>;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    fn print(
        format: &Format,
        fetched: &[Fetched],
        positions: &mut [(i32, i64)],
        limit: Option<u64>,
    ) -> Result<(String, u64)> {
        let mut out = Vec::new();
        let n = print_fetched(&mut out, format, fetched, positions, limit)?;
        Ok((String::from_utf8(out)?, n))
    }

    #[test]
    fn keys_offsets_nulls_and_invalid_utf8() -> Result<()> {
        let batch = stored(
            5,
            &[
                Record::new(1, Some(b"k"), Some(b"v\xff")),
                Record::new(2, None, None),
            ],
        )?;
        let fetched = [Fetched {
            partition: 2,
            batches: vec![batch],
            next_offset: 7,
        }];
        let format = Format {
            print_key: true,
            print_offset: true,
            separator: ":".into(),
        };
        let mut positions = [(2, 5)];
        let (text, n) = print(&format, &fetched, &mut positions, None)?;
        assert_eq!(
            text,
            "Partition:2:Offset:5:k:v\u{fffd}\nPartition:2:Offset:6:null:null\n"
        );
        assert_eq!((n, positions), (2, [(2, 7)]));

        let values_only = Format {
            print_key: false,
            print_offset: false,
            separator: "\t".into(),
        };
        let (text, _) = print(&values_only, &fetched, &mut [(2, 5)], None)?;
        assert_eq!(text, "v\u{fffd}\nnull\n");
        Ok(())
    }

    #[test]
    fn limit_stops_mid_batch_and_position_follows_what_was_printed() -> Result<()> {
        let records: Vec<Record> = (0..4)
            .map(|i| Record::new(i, None, Some(format!("v{i}").as_bytes())))
            .collect();
        let fetched = [Fetched {
            partition: 0,
            batches: vec![stored(10, &records)?],
            next_offset: 14,
        }];
        let format = Format {
            print_key: false,
            print_offset: false,
            separator: "\t".into(),
        };
        let mut positions = [(0, 10)];
        let (text, n) = print(&format, &fetched, &mut positions, Some(3))?;
        assert_eq!(
            (text.as_str(), n, positions),
            ("v0\nv1\nv2\n", 3, [(0, 13)])
        );
        Ok(())
    }
}
