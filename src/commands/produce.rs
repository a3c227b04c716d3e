//! `quiver produce`: lines of text in, one record per line (Kafka's `kafka-console-producer`).
//!
//! A thread reads and parses lines (standard input blocks, and must not hold up a runtime
//! thread) and hands records over a bounded channel. The async side sends whatever has arrived,
//! up to a batch limit, so piped input goes out in large batches and typed lines go out at once.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::builder::NonEmptyStringValueParser;
use quiver_broker::{Record, now_ms};
use tokio::sync::mpsc;

use crate::client::{Client, ConnectArgs};
use crate::signal::StopSignals;

/// Most records in one produce call.
const BATCH_RECORDS_MAX: usize = 1000;
/// Most key and value bytes in one produce call (a single larger record still goes alone).
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Longest line accepted; the topic's max.message.bytes (1 MB by default) applies on top.
const LINE_BYTES_MAX: usize = 64 << 20;
/// Records parsed ahead of sending.
const CHANNEL_RECORDS_MAX: usize = 2 * BATCH_RECORDS_MAX;
/// A run shorter than this shows no progress line.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to write to; created with the broker's defaults (num.partitions) if missing
    pub topic: String,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Read lines from FILE instead of standard input
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Split each line at the first SEP: the text before is the key, after is the value. Every
    /// line must then contain SEP. Without this option lines are values with no key
    #[arg(long, value_name = "SEP", value_parser = NonEmptyStringValueParser::new())]
    pub key_separator: Option<String>,

    /// Write every record to partition N instead of choosing by key hash (or round-robin)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
}

enum Source {
    Stdin,
    File(File),
}

pub async fn run(client: &impl Client, args: ProduceArgs, mut signals: StopSignals) -> Result<()> {
    client.prepare_produce(&args.topic, args.partition).await?;
    let source = match &args.file {
        Some(path) => Source::File(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Source::Stdin,
    };
    let (tx, mut rx) = mpsc::channel(CHANNEL_RECORDS_MAX);
    let separator = args.key_separator.clone().map(String::into_bytes);
    // A plain thread, not spawn_blocking: the runtime must not wait for a read of standard input
    // that may never return (Ctrl-C with nothing typed).
    std::thread::Builder::new()
        .name("quiver-produce-input".into())
        .spawn(move || match source {
            Source::Stdin => read_lines(std::io::stdin().lock(), separator.as_deref(), &tx),
            Source::File(file) => read_lines(BufReader::new(file), separator.as_deref(), &tx),
        })
        .context("cannot start the input thread")?;

    let mut sent = 0usize;
    let mut partitions = BTreeSet::new();
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let result = async {
        loop {
            let first = tokio::select! {
                item = rx.recv() => item,
                why = signals.recv() => {
                    tracing::info!("{why} received; stopping");
                    return Ok(());
                }
            };
            let Some(first) = first else { return Ok(()) };
            let (batch, failure) = collect_batch(first, &mut rx);
            if !batch.is_empty() {
                partitions.extend(client.produce(&args.topic, args.partition, &batch).await?);
                sent += batch.len();
                progress.update(sent);
            }
            if let Some(e) = failure {
                return Err(anyhow!("{e:#}; the {sent} records before it were sent"));
            }
        }
    }
    .await;
    progress.clear();
    let listed: Vec<String> = partitions.iter().map(i32::to_string).collect();
    let plural = if listed.len() == 1 { "" } else { "s" };
    let where_ = if listed.is_empty() {
        String::new()
    } else {
        format!(" (partition{plural} {})", listed.join(", "))
    };
    eprintln!(
        "produced {sent} record{} to topic '{}'{where_}",
        if sent == 1 { "" } else { "s" },
        args.topic
    );
    result
}

/// A line on standard error that counts records sent, redrawn in place, for runs long enough to
/// wonder about; only on a terminal, so logs and pipes get the summary line alone.
struct Progress {
    enabled: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn update(&mut self, sent: usize) {
        let elapsed = self.started.elapsed();
        let due = self.drawn.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if !self.enabled || elapsed < PROGRESS_AFTER || !due {
            return;
        }
        let rate = sent as f64 / elapsed.as_secs_f64();
        let mut err = std::io::stderr().lock();
        // Progress is a nicety: a failed write to the terminal is no reason to stop.
        let _ = write!(err, "\r\x1b[Kproducing: {sent} records sent ({rate:.0}/s)");
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Erases the line, so that the summary takes its place.
    fn clear(&mut self) {
        if self.drawn.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Takes `first` and whatever else is ready, up to the batch limits. Stops at a bad line and
/// returns its error beside the good records before it.
fn collect_batch(
    first: Result<Record>,
    rx: &mut mpsc::Receiver<Result<Record>>,
) -> (Vec<Record>, Option<anyhow::Error>) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Ok(record) => {
                bytes += record.size_bytes();
                batch.push(record);
            }
            Err(e) => return (batch, Some(e)),
        }
        if batch.len() < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX {
            next = rx.try_recv().ok();
        }
    }
    (batch, None)
}

/// Reads lines (bytes, not necessarily UTF-8), strips `\n` or `\r\n`, and sends them as records
/// until the input ends, a line is bad, or the receiver is gone.
fn read_lines(
    mut input: impl BufRead,
    separator: Option<&[u8]>,
    tx: &mpsc::Sender<Result<Record>>,
) {
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let limit = LINE_BYTES_MAX as u64 + 1;
        match input.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(anyhow!(e).context("cannot read input")));
                return;
            }
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > LINE_BYTES_MAX {
            let _ = tx.blocking_send(Err(anyhow!(
                "line {number} is longer than the limit of {LINE_BYTES_MAX} bytes"
            )));
            return;
        }
        let record = parse_line(&line, separator, now_ms()).ok_or_else(|| {
            anyhow!(
                "line {number} has no key separator {:?}",
                String::from_utf8_lossy(separator.unwrap_or_default())
            )
        });
        let failed = record.is_err();
        if tx.blocking_send(record).is_err() || failed {
            return;
        }
    }
}

/// A line as a record: the whole line as the value, or split at the first `separator` into key
/// and value. `None` when a separator is given and missing.
fn parse_line(line: &[u8], separator: Option<&[u8]>, timestamp_ms: i64) -> Option<Record> {
    let Some(sep) = separator else {
        return Some(Record::new(timestamp_ms, None, Some(line)));
    };
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some(Record::new(
        timestamp_ms,
        Some(&line[..at]),
        Some(&line[at + sep.len()..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let r = parse_line(b"k1::v::1", Some(b"::"), 7);
        assert_eq!(r, Some(Record::new(7, Some(b"k1"), Some(b"v::1"))));
        assert_eq!(
            parse_line(b"::v", Some(b"::"), 7),
            Some(Record::new(7, Some(b""), Some(b"v")))
        );
        assert_eq!(parse_line(b"no sep", Some(b":"), 7), None);
        assert_eq!(
            parse_line(b"plain:line", None, 7),
            Some(Record::new(7, None, Some(b"plain:line")))
        );
    }

    fn read_all(input: &[u8], separator: Option<&[u8]>) -> Vec<Result<Record, String>> {
        let (tx, mut rx) = mpsc::channel(64);
        read_lines(input, separator, &tx);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.push(item.map_err(|e| e.to_string()));
        }
        out
    }

    fn value(r: &Result<Record, String>) -> Option<&[u8]> {
        r.as_ref().ok().and_then(|r| r.value.as_deref())
    }

    #[test]
    fn line_endings_are_stripped_and_bytes_kept() {
        let got = read_all(b"a\r\n\nb\xff\nlast", None);
        let values: Vec<_> = got.iter().map(value).collect();
        assert_eq!(
            values,
            vec![
                Some(&b"a"[..]),
                Some(&b""[..]),
                Some(&b"b\xff"[..]),
                Some(&b"last"[..])
            ]
        );
    }

    #[test]
    fn reading_stops_at_a_line_without_separator() {
        let got = read_all(b"k:v\nbad\nk2:v2\n", Some(b":"));
        assert_eq!(got.len(), 2);
        assert_eq!(value(&got[0]), Some(&b"v"[..]));
        assert_eq!(got[1], Err("line 2 has no key separator \":\"".to_owned()));
    }
}
