//! Partitioned paths: which directory under `<topics.dir>/<topic>/` each record's file is in,
//! Hive style (`name=value/…`) so DataFusion, DuckDB and Spark read the tree as a table
//! partitioned by those names.
//!
//! - `default`: the Kafka partition, `partition=3`.
//! - `field`: the values of `partition.field.name` columns, `region=eu/tier=gold`; the columns
//!   move into the path (Hive keeps partition columns out of the files). A null is
//!   `__HIVE_DEFAULT_PARTITION__`, and characters that would break a path are %-escaped as
//!   Hive escapes them.
//! - `time` (and `hourly`, `daily`): the record's event time (`rowtime`: the record timestamp,
//!   or `timestamp.field`), floored to `partition.duration.ms` in `timezone`, formatted with
//!   `path.format` (Joda-style, as Confluent's: `'year'=YYYY/'month'=MM/'day'=dd/'hour'=HH`).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMillisecondType};
use chrono::{Datelike, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use quiver_engine::format::ROWTIME;

use crate::config::{ConnectorConfig, Key};
use crate::error::{ConnectError, Result};

pub const PARTITIONER: Key = Key {
    name: "partitioner.class",
    default: Some("default"),
    doc: "default (partition=N), field (partition.field.name), time (path.format), hourly or \
          daily; Confluent's class names work too",
};
pub const FIELD_NAME: Key = Key {
    name: "partition.field.name",
    default: None,
    doc: "the columns whose values name the directories (field partitioner), comma-separated",
};
pub const PATH_FORMAT: Key = Key {
    name: "path.format",
    default: None,
    doc: "the directory of a time bucket, Joda-style: 'year'=YYYY/'month'=MM/'day'=dd/'hour'=HH",
};
pub const DURATION: Key = Key {
    name: "partition.duration.ms",
    default: None,
    doc: "the length of a time bucket in milliseconds (time partitioner)",
};
pub const TIMEZONE: Key = Key {
    name: "timezone",
    default: Some("UTC"),
    doc: "the time zone of time buckets: UTC, an IANA name (Europe/Paris) or an offset (+05:30)",
};
pub const LOCALE: Key = Key {
    name: "locale",
    default: Some("en"),
    doc: "accepted for Confluent configs; paths are numeric, so only English locales are taken",
};
pub const TIMESTAMP_EXTRACTOR: Key = Key {
    name: "timestamp.extractor",
    default: Some("Record"),
    doc: "where a record's time comes from: Record (its timestamp) or RecordField \
          (timestamp.field)",
};

/// The keys of [`Partitioner::from_config`].
pub const KEYS: &[Key] = &[
    PARTITIONER,
    FIELD_NAME,
    PATH_FORMAT,
    DURATION,
    TIMEZONE,
    LOCALE,
    TIMESTAMP_EXTRACTOR,
];

/// A record's directory, from its partition, columns or time.
#[derive(Debug, Clone)]
pub enum Partitioner {
    Default,
    Field(Vec<String>),
    Time(TimePaths),
}

/// The time partitioner's settings.
#[derive(Debug, Clone)]
pub struct TimePaths {
    format: Vec<Part>,
    duration_ms: i64,
    zone: Zone,
}

#[derive(Debug, Clone, Copy)]
enum Zone {
    Fixed(chrono::FixedOffset),
    Named(Tz),
}

/// One piece of a path format.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Year(usize),
    Month(usize),
    Day(usize),
    Hour(usize),
    Minute(usize),
    Second(usize),
}

/// The directories of a batch's rows: the distinct paths, and each row's index into them.
#[derive(Debug)]
pub struct RowPaths {
    pub paths: Vec<String>,
    pub rows: Vec<u32>,
}

impl Partitioner {
    pub fn from_config(config: &ConnectorConfig) -> Result<Partitioner> {
        let class = config.value(&PARTITIONER).unwrap_or("default");
        let short = class
            .rsplit('.')
            .next()
            .unwrap_or(class)
            .to_ascii_lowercase();
        let locale = config.value(&LOCALE).unwrap_or("en");
        if !locale.to_ascii_lowercase().starts_with("en") {
            return Err(config.invalid(
                LOCALE.name,
                locale,
                "paths are written with numbers only; use en (or leave it out)",
            ));
        }
        let time = |format: Option<&str>, duration: Option<i64>| -> Result<Partitioner> {
            let format_text = format
                .or(config.value(&PATH_FORMAT))
                .ok_or_else(|| config.missing(&PATH_FORMAT))?;
            let duration_ms = match duration {
                Some(d) => d,
                None => {
                    let d = config
                        .u64(&DURATION)?
                        .ok_or_else(|| config.missing(&DURATION))?;
                    i64::try_from(d).ok().filter(|d| *d > 0).ok_or_else(|| {
                        config.invalid(
                            DURATION.name,
                            &d.to_string(),
                            "expected a positive number of milliseconds",
                        )
                    })?
                }
            };
            let format = parse_format(format_text)
                .map_err(|e| config.invalid(PATH_FORMAT.name, format_text, &e))?;
            let zone_text = config.value(&TIMEZONE).unwrap_or("UTC");
            let zone = parse_zone(zone_text).ok_or_else(|| {
                config.invalid(
                    TIMEZONE.name,
                    zone_text,
                    "expected UTC, an IANA time zone name (Europe/Paris) or an offset (+05:30)",
                )
            })?;
            Ok(Partitioner::Time(TimePaths {
                format,
                duration_ms,
                zone,
            }))
        };
        match short.as_str() {
            "default" | "defaultpartitioner" => Ok(Partitioner::Default),
            "field" | "fieldpartitioner" => {
                let fields = config.list(&FIELD_NAME);
                if fields.is_empty() {
                    return Err(config.missing(&FIELD_NAME));
                }
                Ok(Partitioner::Field(fields))
            }
            "time" | "timebased" | "timebasedpartitioner" => time(None, None),
            "hourly" | "hourlypartitioner" => time(
                Some("'year'=YYYY/'month'=MM/'day'=dd/'hour'=HH"),
                Some(3_600_000),
            ),
            "daily" | "dailypartitioner" => {
                time(Some("'year'=YYYY/'month'=MM/'day'=dd"), Some(86_400_000))
            }
            _ => Err(config.invalid(
                PARTITIONER.name,
                class,
                "one of default, field, time, hourly, daily",
            )),
        }
    }

    /// The columns that move from the files into the paths.
    pub fn path_columns(&self) -> &[String] {
        match self {
            Partitioner::Field(columns) => columns,
            _ => &[],
        }
    }

    /// Checks that the columns it needs are in batches of `schema`.
    pub fn check(&self, schema: &arrow::datatypes::Schema, topic: &str) -> Result<()> {
        let need: Vec<&str> = match self {
            Partitioner::Default => vec![],
            Partitioner::Field(columns) => columns.iter().map(String::as_str).collect(),
            Partitioner::Time(_) => vec![ROWTIME],
        };
        for c in need {
            if schema.index_of(c).is_err() {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(ConnectError::config(format!(
                    "the partitioner needs the column '{c}', which records of '{topic}' do not \
                     have; their columns: {} (set value.format and value.schema to decode the \
                     value into columns)",
                    have.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The directory of each row of `batch` (records of Kafka partition `partition`).
    pub fn paths(&self, partition: i32, batch: &RecordBatch) -> Result<RowPaths> {
        let n = batch.num_rows();
        match self {
            Partitioner::Default => Ok(RowPaths {
                paths: vec![format!("partition={partition}")],
                rows: vec![0; n],
            }),
            Partitioner::Field(columns) => {
                // Each column's escaped `name=` prefix and its values as text, once per batch.
                let mut texts = Vec::with_capacity(columns.len());
                for c in columns {
                    let column = batch.column_by_name(c).ok_or_else(|| {
                        ConnectError::Record(format!("a batch has no column '{c}'"))
                    })?;
                    let mut prefix = String::new();
                    escape_into(&mut prefix, c);
                    prefix.push('=');
                    texts.push((prefix, arrow::compute::cast(column, &DataType::Utf8)?));
                }
                let mut index: HashMap<String, u32> = HashMap::new();
                let mut out = RowPaths {
                    paths: vec![],
                    rows: Vec::with_capacity(n),
                };
                let mut path = String::new();
                for row in 0..n {
                    path.clear();
                    for (prefix, text) in &texts {
                        if !path.is_empty() {
                            path.push('/');
                        }
                        path.push_str(prefix);
                        let text = text.as_string::<i32>();
                        if text.is_null(row) {
                            path.push_str(HIVE_NULL);
                        } else {
                            escape_into(&mut path, text.value(row));
                        }
                    }
                    let i = match index.get(&path) {
                        Some(i) => *i,
                        None => {
                            let i = out.paths.len() as u32;
                            index.insert(path.clone(), i);
                            out.paths.push(path.clone());
                            i
                        }
                    };
                    out.rows.push(i);
                }
                Ok(out)
            }
            Partitioner::Time(t) => {
                let times = batch
                    .column_by_name(ROWTIME)
                    .ok_or_else(|| ConnectError::Record(format!("a batch has no {ROWTIME}")))?
                    .as_primitive_opt::<TimestampMillisecondType>()
                    .ok_or_else(|| {
                        ConnectError::Record(format!("{ROWTIME} is not a timestamp in ms"))
                    })?;
                let mut index: HashMap<i64, u32> = HashMap::new();
                let mut out = RowPaths {
                    paths: vec![],
                    rows: Vec::with_capacity(n),
                };
                let mut last: Option<(i64, u32)> = None;
                for row in 0..n {
                    let bucket = t.bucket(times.value(row));
                    let i = match last {
                        Some((b, i)) if b == bucket => i,
                        _ => match index.get(&bucket) {
                            Some(i) => *i,
                            None => {
                                let i = out.paths.len() as u32;
                                index.insert(bucket, i);
                                out.paths.push(t.format(bucket));
                                i
                            }
                        },
                    };
                    last = Some((bucket, i));
                    out.rows.push(i);
                }
                Ok(out)
            }
        }
    }
}

impl TimePaths {
    fn offset_ms(&self, t: i64) -> i64 {
        let secs = match self.zone {
            Zone::Fixed(f) => f.local_minus_utc(),
            Zone::Named(tz) => match tz.timestamp_millis_opt(t) {
                chrono::LocalResult::Single(d) => d.offset().fix().local_minus_utc(),
                chrono::LocalResult::Ambiguous(d, _) => d.offset().fix().local_minus_utc(),
                chrono::LocalResult::None => 0,
            },
        };
        i64::from(secs) * 1000
    }

    /// The start of the bucket `t` is in, floored in local time as Confluent does.
    fn bucket(&self, t: i64) -> i64 {
        let offset = self.offset_ms(t);
        let local = t + offset;
        local.div_euclid(self.duration_ms) * self.duration_ms - offset
    }

    fn format(&self, bucket: i64) -> String {
        let local = chrono::DateTime::from_timestamp_millis(bucket + self.offset_ms(bucket))
            .unwrap_or_default()
            .naive_utc();
        let mut out = String::new();
        for part in &self.format {
            let (value, width) = match part {
                Part::Literal(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Year(w) => (i64::from(local.year()), *w),
                Part::Month(w) => (i64::from(local.month()), *w),
                Part::Day(w) => (i64::from(local.day()), *w),
                Part::Hour(w) => (i64::from(local.hour()), *w),
                Part::Minute(w) => (i64::from(local.minute()), *w),
                Part::Second(w) => (i64::from(local.second()), *w),
            };
            if matches!(part, Part::Year(2)) {
                out.push_str(&format!("{:02}", value.rem_euclid(100)));
            } else {
                out.push_str(&format!("{value:0width$}"));
            }
        }
        out
    }
}

/// Joda's pattern letters that make sense in a path: y/Y year, M month, d day, H hour, m minute,
/// s second; text in single quotes is literal (`''` is a quote), other characters stand for
/// themselves.
fn parse_format(text: &str) -> Result<Vec<Part>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut literal = String::new();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                literal.push('\'');
                continue;
            }
            let mut closed = false;
            for q in chars.by_ref() {
                if q == '\'' {
                    closed = true;
                    break;
                }
                literal.push(q);
            }
            if !closed {
                return Err("a quote is not closed".into());
            }
            continue;
        }
        if c.is_ascii_alphabetic() {
            let mut width = 1;
            while chars.peek() == Some(&c) {
                chars.next();
                width += 1;
            }
            let part = match c {
                'y' | 'Y' => Part::Year(if width == 2 { 2 } else { width.max(4) }),
                'M' => Part::Month(width),
                'd' => Part::Day(width),
                'H' => Part::Hour(width),
                'm' => Part::Minute(width),
                's' => Part::Second(width),
                other => {
                    return Err(format!(
                        "the pattern letter '{other}' is not supported in paths; use YYYY, MM, \
                         dd, HH, mm, ss, and quote literal text ('year'=YYYY)"
                    ));
                }
            };
            if !literal.is_empty() {
                out.push(Part::Literal(std::mem::take(&mut literal)));
            }
            out.push(part);
            continue;
        }
        literal.push(c);
    }
    if !literal.is_empty() {
        out.push(Part::Literal(literal));
    }
    if !out.iter().any(|p| !matches!(p, Part::Literal(_))) {
        return Err("the format has no date or time field (YYYY, MM, dd, HH …)".into());
    }
    Ok(out)
}

fn parse_zone(text: &str) -> Option<Zone> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return chrono::FixedOffset::east_opt(0).map(Zone::Fixed);
    }
    if let Some(sign) = text.chars().next().filter(|c| *c == '+' || *c == '-') {
        let rest = &text[1..];
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        // Out-of-range offsets are refused by east_opt, not by overflow.
        let (h, m) = (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?);
        let secs = h.checked_mul(3600)?.checked_add(m.checked_mul(60)?)?;
        let secs = if sign == '-' { -secs } else { secs };
        return chrono::FixedOffset::east_opt(secs).map(Zone::Fixed);
    }
    text.parse::<Tz>().ok().map(Zone::Named)
}

/// Hive's name for a null (or empty) partition value.
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Appends `value` to `out` as Hive escapes path values: characters that break paths or
/// `name=value` become `%XX`; an empty value is [`HIVE_NULL`].
fn escape_into(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str(HIVE_NULL);
        return;
    }
    for c in value.chars() {
        if c.is_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            )
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        } else {
            out.push(c);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    fn time(format: &str, duration_ms: i64, zone: &str) -> TimePaths {
        TimePaths {
            format: parse_format(format).unwrap(),
            duration_ms,
            zone: parse_zone(zone).unwrap(),
        }
    }

    #[test]
    fn hourly_paths_in_utc_and_other_zones() {
        // 2026-11-30T15:52:07.123Z
        let t = 1_796_053_927_123;
        let hourly = time(
            "'year'=YYYY/'month'=MM/'day'=dd/'hour'=HH",
            3_600_000,
            "UTC",
        );
        assert_eq!(
            hourly.format(hourly.bucket(t)),
            "year=2026/month=11/day=30/hour=15"
        );
        let paris = time(
            "'year'=YYYY/'month'=MM/'day'=dd/'hour'=HH",
            3_600_000,
            "Europe/Paris",
        );
        assert_eq!(
            paris.format(paris.bucket(t)),
            "year=2026/month=11/day=30/hour=16"
        );
        let india = time("'dt'=YYYY-MM-dd", 86_400_000, "+05:30");
        // 15:52Z is 21:22 in India, still the 30th.
        assert_eq!(india.format(india.bucket(t)), "dt=2026-11-30");
        let quarter = time("'h'=HH/'m'=mm", 900_000, "UTC");
        assert_eq!(quarter.format(quarter.bucket(t)), "h=15/m=45");
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(
            parse_format("'year'=YYYY/'w'=ww")
                .unwrap_err()
                .contains("'w'")
        );
        assert!(parse_format("'year").is_err());
        assert!(parse_format("'constant'").is_err());
        assert!(parse_zone("Mars/Olympus").is_none());
        assert!(parse_zone("+999999999:00").is_none());
    }

    fn escape(value: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, value);
        out
    }

    #[test]
    fn values_are_escaped_as_hive_escapes_them() {
        assert_eq!(escape("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape("eu-west 1"), "eu-west 1");
        assert_eq!(escape(""), "__HIVE_DEFAULT_PARTITION__");
    }
}
