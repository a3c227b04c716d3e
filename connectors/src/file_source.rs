//! The file source (`connector.class=FileSource`, also Kafka's `FileStreamSource`): each line
//! of the files `file` names (a path or a glob such as `/data/events-*.json`) becomes a record
//! of `topic`.
//!
//! - `format=lines` (the default, as Kafka's file source): the line's text is the value;
//! - `format=json`: each line must be a JSON object, written as it is; `key.field` takes the
//!   key from one of its fields;
//! - `format=csv`: the first line names the columns (or `csv.columns` does, for files without
//!   a header); each row becomes a JSON object, numbers as numbers, empty cells as null, the
//!   rest as strings. A row is one line (no line breaks inside quotes).
//!
//! Empty lines are skipped. With `follow=true` the files are read on as they grow, and new
//! files matching the glob are picked up (checked every `file.poll.interval.ms`); a file that
//! shrinks below what was read is taken as replaced and read again from its start. Without
//! `follow` the connector finishes once every file is read, the last line taken even without
//! its line break.
//!
//! Positions are committed per file, as Kafka's file source does: source partition
//! `{"filename": <path>}`, offset `{"position": <byte>, "line": <number>}`, so a restart
//! resumes after the last committed line. `tasks.max` splits the files between tasks by a
//! hash of their paths.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_broker::PartitionSplit;
use quiver_common::Record;
use serde_json::{Value, json};

use crate::config::{ConnectorConfig, Key};
use crate::error::{ConnectError, Result};
use crate::source::{SourceBatch, SourceOffsets, SourceTask, partition_key};

pub const FILE: Key = Key {
    name: "file",
    default: None,
    doc: "the file to read, or a glob of files (/data/events-*.json)",
};
pub const TOPIC: Key = Key {
    name: "topic",
    default: None,
    doc: "the topic the lines go to",
};
pub const FORMAT: Key = Key {
    name: "format",
    default: Some("lines"),
    doc: "lines (each line's text), json (a JSON object per line) or csv (rows to JSON objects)",
};
pub const FOLLOW: Key = Key {
    name: "follow",
    default: Some("false"),
    doc: "read on as files grow and pick up new files matching the glob; false: finish at the end",
};
pub const POLL_INTERVAL: Key = Key {
    name: "file.poll.interval.ms",
    default: Some("500"),
    doc: "with follow, how often files are checked for new lines and new files",
};
pub const KEY_FIELD: Key = Key {
    name: "key.field",
    default: None,
    doc: "json and csv: the field whose value is each record's key",
};
pub const CSV_DELIMITER: Key = Key {
    name: "csv.delimiter",
    default: Some(","),
    doc: "csv: the character between cells",
};
pub const CSV_COLUMNS: Key = Key {
    name: "csv.columns",
    default: None,
    doc: "csv: the column names, comma-separated, for files without a header line",
};
pub const BATCH_SIZE: Key = Key {
    name: "batch.size",
    default: Some("2000"),
    doc: "lines read per poll at most",
};

/// The longest line taken (a record of this size is far past any broker's message limit).
const MAX_LINE: u64 = 64 << 20;

pub const KEYS: &[Key] = &[
    FILE,
    TOPIC,
    FORMAT,
    FOLLOW,
    POLL_INTERVAL,
    KEY_FIELD,
    CSV_DELIMITER,
    CSV_COLUMNS,
    BATCH_SIZE,
];

/// How lines become records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    Lines,
    Json,
    Csv {
        delimiter: u8,
        columns: Option<Vec<String>>,
    },
}

/// A file source's config.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    pub pattern: String,
    pub topic: String,
    pub format: LineFormat,
    pub follow: bool,
    pub poll_interval: Duration,
    pub key_field: Option<String>,
    pub batch_size: usize,
    pub tolerate_errors: bool,
    pub name: String,
}

impl FileSourceConfig {
    pub fn from_config(
        config: &ConnectorConfig,
        tolerate_errors: bool,
    ) -> Result<FileSourceConfig> {
        let pattern = config.required(&FILE)?.to_owned();
        glob::Pattern::new(&pattern)
            .map_err(|e| config.invalid(FILE.name, &pattern, &format!("a path or glob: {e}")))?;
        let topic = config.required(&TOPIC)?.to_owned();
        let format = match config
            .choice(&FORMAT, &["lines", "json", "csv"])?
            .as_deref()
            .unwrap_or("lines")
        {
            "json" => LineFormat::Json,
            "csv" => {
                let d = config.value(&CSV_DELIMITER).unwrap_or(",");
                let delimiter = match d.as_bytes() {
                    [b] if b.is_ascii() => *b,
                    _ if d == "\\t" => b'\t',
                    _ => return Err(config.invalid(CSV_DELIMITER.name, d, "one ASCII character")),
                };
                let columns = config
                    .value(&CSV_COLUMNS)
                    .map(|_| config.list(&CSV_COLUMNS));
                LineFormat::Csv { delimiter, columns }
            }
            _ => LineFormat::Lines,
        };
        let key_field = config.value(&KEY_FIELD).map(String::from);
        if key_field.is_some() && format == LineFormat::Lines {
            return Err(config.invalid(
                KEY_FIELD.name,
                key_field.as_deref().unwrap_or_default(),
                "a key field needs format=json or format=csv",
            ));
        }
        if let (
            Some(k),
            LineFormat::Csv {
                columns: Some(cols),
                ..
            },
        ) = (&key_field, &format)
            && !cols.contains(k)
        {
            return Err(config.invalid(
                KEY_FIELD.name,
                k,
                &format!("one of csv.columns: {}", cols.join(", ")),
            ));
        }
        let batch_size = config.positive(&BATCH_SIZE)?.unwrap_or(2000).min(1 << 20) as usize;
        Ok(FileSourceConfig {
            pattern,
            topic,
            format,
            follow: config.bool(&FOLLOW)?.unwrap_or(false),
            poll_interval: config
                .millis(&POLL_INTERVAL)?
                .unwrap_or(Duration::from_millis(500)),
            key_field,
            batch_size,
            tolerate_errors,
            name: config.name.clone(),
        })
    }

    pub fn describe(&self) -> String {
        let format = match self.format {
            LineFormat::Lines => "lines",
            LineFormat::Json => "json",
            LineFormat::Csv { .. } => "csv",
        };
        let follow = if self.follow { ", following" } else { "" };
        format!("files {} ({format}{follow})", self.pattern)
    }

    pub fn task(&self, split: PartitionSplit) -> FileSourceTask {
        FileSourceTask {
            config: self.clone(),
            split,
            files: BTreeMap::new(),
            committed: SourceOffsets::new(),
            last_scan: None,
            bad_seen: 0,
        }
    }
}

/// Where a task is in one file.
#[derive(Debug, Default)]
struct FileState {
    position: u64,
    line: u64,
    /// csv: the column names from the header line.
    header: Option<Vec<String>>,
    /// Read to its end (without follow: done).
    at_end: bool,
}

/// One task of a file source.
#[derive(Debug)]
pub struct FileSourceTask {
    config: FileSourceConfig,
    split: PartitionSplit,
    files: BTreeMap<PathBuf, FileState>,
    committed: SourceOffsets,
    last_scan: Option<Instant>,
    bad_seen: u64,
}

/// FNV-1a: a hash of a path that stays the same across runs and machines.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn partition_of(path: &std::path::Path) -> Value {
    json!({ "filename": path.to_string_lossy() })
}

impl FileSourceTask {
    /// Picks up files matching the pattern that this task owns.
    fn scan(&mut self) -> Result<()> {
        self.last_scan = Some(Instant::now());
        let paths = glob::glob(&self.config.pattern).map_err(|e| {
            ConnectError::config(format!("file '{}': not a glob: {e}", self.config.pattern))
        })?;
        for path in paths.filter_map(|p| p.ok()) {
            if !path.is_file() || self.files.contains_key(&path) {
                continue;
            }
            let name = path.to_string_lossy();
            if stable_hash(&name) % self.split.count.max(1) as u64 != self.split.index as u64 {
                continue;
            }
            let mut state = FileState::default();
            if let Some(o) = self.committed.get(&partition_key(&partition_of(&path))) {
                state.position = o.get("position").and_then(Value::as_u64).unwrap_or(0);
                state.line = o.get("line").and_then(Value::as_u64).unwrap_or(0);
            }
            self.files.insert(path, state);
        }
        Ok(())
    }

    /// Reads up to `budget` lines of `path` from where the task is; returns the records and
    /// whether anything was read.
    fn read_file(&mut self, path: &PathBuf, budget: usize, out: &mut Vec<Record>) -> Result<bool> {
        let follow = self.config.follow;
        let delimiter = self.delimiter();
        let Some(state) = self.files.get_mut(path) else {
            return Ok(false);
        };
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Gone: nothing more to read from it.
                state.at_end = true;
                return Ok(false);
            }
            Err(e) => {
                return Err(ConnectError::Record(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let len = file
            .metadata()
            .map_err(|e| ConnectError::Record(format!("cannot read {}: {e}", path.display())))?
            .len();
        if len < state.position {
            tracing::warn!(
                file = %path.display(),
                "the file is shorter than what was read ({len} < {} bytes): it was replaced; \
                 reading it from its start",
                state.position
            );
            *state = FileState::default();
        }
        if len == state.position {
            state.at_end = true;
            return Ok(false);
        }
        // The header of a csv file read from the middle.
        if matches!(self.config.format, LineFormat::Csv { columns: None, .. })
            && state.header.is_none()
            && state.position > 0
        {
            let mut first = String::new();
            let mut reader = std::io::BufReader::new(&mut file);
            std::io::BufRead::read_line(&mut reader, &mut first).map_err(|e| {
                ConnectError::Record(format!("cannot read {}: {e}", path.display()))
            })?;
            let cells =
                csv_cells(first.trim_end_matches(['\n', '\r']), delimiter).map_err(|e| {
                    ConnectError::Record(format!("{}: the header line is {e}", path.display()))
                })?;
            state.header = Some(cells.into_iter().map(|c| c.unwrap_or_default()).collect());
        }
        // Read about what `budget` lines take (the rest is read again at the next poll), and
        // more while not one whole line is in what was read.
        let remaining = len - state.position;
        let mut want = (budget as u64 * 256)
            .clamp(64 << 10, 4 << 20)
            .min(remaining);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            file.seek(SeekFrom::Start(state.position))
                .and_then(|_| Read::by_ref(&mut file).take(want).read_to_end(&mut buf))
                .map_err(|e| {
                    ConnectError::Record(format!("cannot read {}: {e}", path.display()))
                })?;
            if want >= remaining || buf.contains(&b'\n') {
                break;
            }
            if want >= MAX_LINE {
                return Err(ConnectError::Record(format!(
                    "connector '{}': {}:{}: a line longer than {} MiB; lines are records, \
                     so a file needs line breaks",
                    self.config.name,
                    path.display(),
                    state.line + 1,
                    MAX_LINE >> 20
                )));
            }
            want = (want * 2).min(remaining).min(MAX_LINE);
        }
        let whole_file_read = state.position + buf.len() as u64 >= len;
        let mut consumed = 0usize;
        let mut lines = 0usize;
        let mut records = Vec::new();
        let mut bad = Vec::new();
        while consumed < buf.len() && lines < budget {
            let rest = &buf[consumed..];
            let (line, used) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], i + 1),
                // The last line without its break: taken only once the file is complete.
                None if !follow && whole_file_read => (rest, rest.len()),
                None => break,
            };
            consumed += used;
            let number = state.line + 1;
            state.line = number;
            lines += 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            match to_record(&self.config, &mut state.header, line) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(why) => bad.push(format!("{}:{number}: {why}", path.display())),
            }
        }
        state.position += consumed as u64;
        state.at_end = state.position >= len;
        if let Some(first) = bad.first() {
            if !self.config.tolerate_errors {
                return Err(ConnectError::Record(format!(
                    "connector '{}': {first}; set errors.tolerance=all to skip such lines",
                    self.config.name
                )));
            }
            for b in &bad {
                self.bad_seen += 1;
                if self.bad_seen <= 10 || self.bad_seen.is_multiple_of(1000) {
                    tracing::warn!(connector = %self.config.name, skipped = self.bad_seen, "skipping a line: {b}");
                }
            }
        }
        out.extend(records);
        Ok(consumed > 0)
    }

    fn delimiter(&self) -> u8 {
        match &self.config.format {
            LineFormat::Csv { delimiter, .. } => *delimiter,
            _ => b',',
        }
    }
}

/// One line as a record (`None`: a csv header).
fn to_record(
    config: &FileSourceConfig,
    header: &mut Option<Vec<String>>,
    line: &[u8],
) -> std::result::Result<Option<Record>, String> {
    let now = quiver_broker::now_ms();
    let text = || std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_owned());
    let (key, value): (Option<String>, Bytes) = match &config.format {
        LineFormat::Lines => (None, Bytes::copy_from_slice(line)),
        LineFormat::Json => {
            let key = match &config.key_field {
                Some(k) => {
                    let v: Value =
                        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
                    let Value::Object(object) = &v else {
                        return Err("not a JSON object".into());
                    };
                    Some(key_text(object.get(k)))
                }
                // Without a key, the line is checked, not built into a value.
                None => {
                    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                        return Err("not a JSON object".into());
                    }
                    serde_json::from_slice::<serde::de::IgnoredAny>(line)
                        .map_err(|e| format!("not JSON: {e}"))?;
                    None
                }
            };
            (key, Bytes::copy_from_slice(line))
        }
        LineFormat::Csv { delimiter, columns } => {
            let cells = csv_cells(text()?, *delimiter)?;
            let names = match (columns, header.as_ref()) {
                (Some(c), _) => c.clone(),
                (None, Some(h)) => h.clone(),
                (None, None) => {
                    *header = Some(cells.into_iter().map(|c| c.unwrap_or_default()).collect());
                    return Ok(None);
                }
            };
            if cells.len() != names.len() {
                return Err(format!(
                    "{} cells where the header names {} columns",
                    cells.len(),
                    names.len()
                ));
            }
            let mut object = serde_json::Map::new();
            for (name, cell) in names.iter().zip(cells) {
                object.insert(name.clone(), cell.map_or(Value::Null, |c| csv_value(&c)));
            }
            let key = config.key_field.as_ref().map(|k| key_text(object.get(k)));
            (key, Bytes::from(Value::Object(object).to_string()))
        }
    };
    Ok(Some(Record {
        timestamp_ms: now,
        key: key.map(Bytes::from),
        value: Some(value),
        ..Record::default()
    }))
}

/// A key from a JSON value: a string's text, anything else its JSON, a missing field empty.
fn key_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The cells of one csv line (`None`: empty).
fn csv_cells(line: &str, delimiter: u8) -> std::result::Result<Vec<Option<String>>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record
            .iter()
            .map(|c| (!c.is_empty()).then(|| c.to_owned()))
            .collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(format!("not a csv row: {e}")),
    }
}

/// A csv cell as JSON: a number when it is written as one (without leading zeros, so codes
/// such as `007` stay strings), `true`/`false`, else a string.
fn csv_value(cell: &str) -> Value {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    if !leading_zero && digits.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        if let Ok(i) = cell.parse::<i64>() {
            return json!(i);
        }
        if let Ok(f) = cell.parse::<f64>()
            && f.is_finite()
            && !cell.contains(['e', 'E', 'i', 'n', 'N'])
        {
            return json!(f);
        }
    }
    match cell {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(cell.to_owned()),
    }
}

#[async_trait::async_trait]
impl SourceTask for FileSourceTask {
    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn open(&mut self, committed: &SourceOffsets) -> Result<()> {
        self.committed = committed.clone();
        self.scan()?;
        if self.files.is_empty() && !self.config.follow && self.split.index == 0 {
            let any = glob::glob(&self.config.pattern)
                .map(|mut p| p.any(|f| f.is_ok_and(|f| f.is_file())))
                .unwrap_or(false);
            if !any {
                return Err(ConnectError::config(format!(
                    "connector '{}': no file matches '{}' (set follow=true to wait for files)",
                    self.config.name, self.config.pattern
                )));
            }
        }
        Ok(())
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<SourceBatch> {
        if self.config.follow
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.config.poll_interval)
        {
            self.scan()?;
        }
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in &paths {
            let budget = self.config.batch_size.saturating_sub(records.len());
            if budget == 0 {
                break;
            }
            if self.read_file(path, budget, &mut records)?
                && let Some(state) = self.files.get(path)
            {
                offsets.push((
                    partition_of(path),
                    json!({ "position": state.position, "line": state.line }),
                ));
            }
        }
        let all_read = self.files.values().all(|f| f.at_end);
        if records.is_empty() && offsets.is_empty() {
            if !self.config.follow && all_read {
                return Ok(SourceBatch {
                    finished: true,
                    ..SourceBatch::default()
                });
            }
            tokio::time::sleep(max_wait.min(self.config.poll_interval)).await;
        }
        Ok(SourceBatch {
            records,
            offsets,
            finished: !self.config.follow && all_read && self.files.values().all(|f| f.at_end),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    #[test]
    fn csv_cells_become_typed_json() {
        assert_eq!(csv_value("12"), json!(12));
        assert_eq!(csv_value("-3.5"), json!(-3.5));
        assert_eq!(csv_value("007"), json!("007"));
        assert_eq!(csv_value("0.25"), json!(0.25));
        assert_eq!(csv_value("true"), json!(true));
        assert_eq!(csv_value("1e5"), json!("1e5"));
        assert_eq!(csv_value("eu"), json!("eu"));
        assert_eq!(
            csv_cells("a,\"b, c\",,d", b',').unwrap(),
            vec![
                Some("a".into()),
                Some("b, c".into()),
                None,
                Some("d".into())
            ]
        );
    }
}
