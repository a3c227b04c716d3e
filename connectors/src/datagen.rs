//! The data generator (`connector.class=DataGen`): records made up from a schema of field
//! generators, or from a preset, written into a topic at a set rate.
//!
//! `fields` lists the value's fields as `name:generator(args)`, separated by `;`:
//!
//! | generator | makes |
//! |---|---|
//! | `sequence(start, step)` | `start`, `start + step`, … (defaults 0 and 1), unique across tasks |
//! | `int(min, max)` | a whole number in `[min, max]` |
//! | `double(min, max, decimals)` | a number from `min` to `max`, rounded to `decimals` (default 2) |
//! | `choice(a, b, …)` | one of the values (a bare number is a JSON number, `'quoted'` a string) |
//! | `string(length)` | random letters and digits (default length 8) |
//! | `boolean` | `true` or `false` |
//! | `uuid` | a random UUID |
//! | `timestamp` | the time of generation, in ms since the epoch |
//!
//! Presets (`quickstart`): `nexmark` (Nexmark's people, auctions and bids in its 1:3:46
//! proportions, the engine's generator, one schema with `event_type`), and Confluent
//! datagen's `users`, `pageviews` and `orders` shapes.
//!
//! Generation is deterministic: record `i` of a connector is the same for a given
//! `random.seed` whatever the number of tasks (task `t` of `n` makes records `t`, `t + n`, …;
//! Nexmark events go in blocks of 1,000), so a restart resumes the same sequence.

use std::fmt::Write;
use std::time::{Duration, Instant};

use arrow::array::{Array, TimestampMillisecondArray};
use bytes::Bytes;
use quiver_broker::PartitionSplit;
use quiver_common::Record;
use quiver_engine::nexmark::{NexmarkConfig, NexmarkSource};
use serde_json::{Value, json};

use crate::config::{ConnectorConfig, Key};
use crate::error::{ConnectError, Result};
use crate::source::{SourceBatch, SourceOffsets, SourceTask, partition_key};

pub const TOPIC: Key = Key {
    name: "kafka.topic",
    default: None,
    doc: "the topic generated records go to",
};
pub const QUICKSTART: Key = Key {
    name: "quickstart",
    default: None,
    doc: "a preset instead of fields: nexmark, users, pageviews or orders",
};
pub const FIELDS: Key = Key {
    name: "fields",
    default: None,
    doc: "the value's fields, name:generator(args); …, e.g. id:sequence(1); region:choice(eu,us); \
          amount:double(1,500); ts:timestamp",
};
pub const KEY_FIELD: Key = Key {
    name: "key.field",
    default: None,
    doc: "the field whose value is each record's key (none: records have no key)",
};
pub const ITERATIONS: Key = Key {
    name: "iterations",
    default: Some("-1"),
    doc: "records each task generates before it finishes (-1: no end)",
};
pub const RATE: Key = Key {
    name: "messages.per.second",
    default: None,
    doc: "records per second per task (none: as fast as the topic takes them)",
};
pub const SEED: Key = Key {
    name: "random.seed",
    default: Some("0"),
    doc: "the seed of the random values (the same seed makes the same records)",
};

pub const KEYS: &[Key] = &[TOPIC, QUICKSTART, FIELDS, KEY_FIELD, ITERATIONS, RATE, SEED];

/// Nexmark events a task generates in a row before the next task's block.
const NEXMARK_BLOCK: u64 = 1000;
/// Records per poll at most.
const POLL_MAX: u64 = 4096;

/// One field's generator.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    Sequence { start: i64, step: i64 },
    Int { min: i64, max: i64 },
    Double { min: f64, max: f64, decimals: u32 },
    Choice(Vec<Value>),
    Text { length: usize },
    Boolean,
    Uuid,
    Timestamp,
}

/// What records are made of.
#[derive(Debug, Clone)]
pub enum Shape {
    Fields {
        fields: Vec<(String, Generator)>,
        key_field: Option<usize>,
    },
    Nexmark,
}

/// A data generator's config.
#[derive(Debug, Clone)]
pub struct DataGenConfig {
    pub topic: String,
    pub shape: Shape,
    pub preset: Option<String>,
    pub iterations: Option<u64>,
    pub rate: Option<f64>,
    pub seed: u64,
}

impl DataGenConfig {
    pub fn from_config(config: &ConnectorConfig) -> Result<DataGenConfig> {
        let topic = config.required(&TOPIC)?.to_owned();
        let preset = config.value(&QUICKSTART).map(|q| q.to_ascii_lowercase());
        let fields_text = match (preset.as_deref(), config.value(&FIELDS)) {
            (Some(_), Some(_)) => {
                return Err(ConnectError::config(format!(
                    "{}: give either quickstart or fields, not both",
                    config.origin
                )));
            }
            (None, None) => {
                return Err(ConnectError::config(format!(
                    "{}: connector '{}' needs fields (such as id:sequence(1); \
                     region:choice(eu,us)) or a quickstart preset (nexmark, users, pageviews, \
                     orders)",
                    config.origin, config.name
                )));
            }
            (None, Some(f)) => Some(f.to_owned()),
            (Some("nexmark"), None) => None,
            (Some(p), None) => Some(
                preset_fields(p)
                    .ok_or_else(|| {
                        config.invalid(QUICKSTART.name, p, "nexmark, users, pageviews or orders")
                    })?
                    .to_owned(),
            ),
        };
        let shape = match fields_text {
            None => {
                if config.value(&KEY_FIELD).is_some() {
                    return Err(config.invalid(
                        KEY_FIELD.name,
                        config.value(&KEY_FIELD).unwrap_or_default(),
                        "no key field with quickstart=nexmark (its events have no key)",
                    ));
                }
                Shape::Nexmark
            }
            Some(text) => {
                let fields =
                    parse_fields(&text).map_err(|e| config.invalid(FIELDS.name, &text, &e))?;
                let key_field = match config
                    .value(&KEY_FIELD)
                    .or(preset.as_deref().and_then(preset_key))
                {
                    None => None,
                    Some(k) => Some(fields.iter().position(|(n, _)| n == k).ok_or_else(|| {
                        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                        config.invalid(
                            KEY_FIELD.name,
                            k,
                            &format!("one of the fields: {}", names.join(", ")),
                        )
                    })?),
                };
                Shape::Fields { fields, key_field }
            }
        };
        let iterations = match config.value(&ITERATIONS) {
            None => None,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n < 0 => None,
                Ok(n) => Some(n as u64),
                Err(_) => {
                    return Err(config.invalid(ITERATIONS.name, v, "a whole number (-1: no end)"));
                }
            },
        };
        let rate = match config.value(&RATE) {
            None => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| config.invalid(RATE.name, v, "a number above 0"))?,
            ),
        };
        let seed = config.u64(&SEED)?.unwrap_or(0);
        Ok(DataGenConfig {
            topic,
            shape,
            preset,
            iterations,
            rate,
            seed,
        })
    }

    pub fn describe(&self) -> String {
        let what = match (&self.preset, &self.shape) {
            (Some(p), _) => format!("datagen ({p})"),
            (None, Shape::Fields { fields, .. }) => format!("datagen ({} fields)", fields.len()),
            (None, Shape::Nexmark) => "datagen (nexmark)".into(),
        };
        match self.rate {
            Some(r) => format!("{what} at {r} records/s per task"),
            None => what,
        }
    }

    pub fn task(&self, split: PartitionSplit) -> DataGenTask {
        DataGenTask {
            config: self.clone(),
            split,
            next: 0,
            start_ms: quiver_broker::now_ms(),
            rate_from: None,
        }
    }
}

fn preset_fields(name: &str) -> Option<&'static str> {
    Some(match name {
        "users" => {
            "registertime:timestamp; userid:choice('User_1','User_2','User_3','User_4','User_5',\
             'User_6','User_7','User_8','User_9'); regionid:choice('Region_1','Region_2',\
             'Region_3','Region_4','Region_5','Region_6','Region_7','Region_8','Region_9'); \
             gender:choice('MALE','FEMALE','OTHER')"
        }
        "pageviews" => {
            "viewtime:timestamp; userid:choice('User_1','User_2','User_3','User_4','User_5',\
             'User_6','User_7','User_8','User_9'); pageid:choice('Page_1','Page_2','Page_3',\
             'Page_4','Page_5','Page_6','Page_7','Page_8','Page_9')"
        }
        "orders" => {
            "ordertime:timestamp; orderid:sequence(0); itemid:choice('Item_1','Item_2',\
             'Item_3','Item_4','Item_5','Item_6','Item_7','Item_8','Item_9'); \
             orderunits:double(0.1,10); city:choice('City_1','City_2','City_3','City_4',\
             'City_5','City_6','City_7','City_8','City_9'); state:choice('State_1','State_2',\
             'State_3','State_4','State_5','State_6','State_7','State_8','State_9'); \
             zipcode:int(10000,99999)"
        }
        _ => return None,
    })
}

fn preset_key(name: &str) -> Option<&'static str> {
    match name {
        "users" => Some("userid"),
        "pageviews" => Some("userid"),
        "orders" => Some("orderid"),
        _ => None,
    }
}

/// Parses `name:generator(args); …` (see the module docs).
pub fn parse_fields(text: &str) -> std::result::Result<Vec<(String, Generator)>, String> {
    let mut out: Vec<(String, Generator)> = Vec::new();
    for part in split_top(text, ';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, spec) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}' is not name:generator"))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "the field name '{name}' may only have letters, digits and '_'"
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("the field '{name}' is given twice"));
        }
        let spec = spec.trim();
        let (generator, args) = match spec.split_once('(') {
            Some((g, rest)) => {
                let args = rest.trim_end().strip_suffix(')').ok_or_else(|| {
                    format!("the field '{name}': '{spec}' lacks its closing parenthesis")
                })?;
                (
                    g.trim(),
                    split_top(args, ',').into_iter().map(str::trim).collect(),
                )
            }
            None => (spec, Vec::new()),
        };
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let g =
            parse_generator(generator, &args).map_err(|e| format!("the field '{name}': {e}"))?;
        out.push((name.to_owned(), g));
    }
    if out.is_empty() {
        return Err("no fields".into());
    }
    Ok(out)
}

/// Splits on `sep` outside quotes and parentheses.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_generator(name: &str, args: &[&str]) -> std::result::Result<Generator, String> {
    let int = |i: usize, default: Option<i64>| -> std::result::Result<i64, String> {
        match args.get(i) {
            Some(a) => a
                .parse::<i64>()
                .map_err(|_| format!("{name}: '{a}' is not a whole number")),
            None => default.ok_or_else(|| format!("{name} needs {} arguments", i + 1)),
        }
    };
    let arity = |max: usize| -> std::result::Result<(), String> {
        if args.len() > max {
            Err(format!(
                "{name} takes at most {max} arguments, not {}",
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "sequence" => {
            arity(2)?;
            Generator::Sequence {
                start: int(0, Some(0))?,
                step: int(1, Some(1))?,
            }
        }
        "int" => {
            arity(2)?;
            let (min, max) = (int(0, None)?, int(1, None)?);
            if min > max {
                return Err(format!(
                    "int({min}, {max}): the minimum is above the maximum"
                ));
            }
            Generator::Int { min, max }
        }
        "double" => {
            arity(3)?;
            let num = |i: usize| -> std::result::Result<f64, String> {
                let a = args
                    .get(i)
                    .ok_or_else(|| "double needs a minimum and a maximum".to_owned())?;
                a.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("double: '{a}' is not a number"))
            };
            let (min, max) = (num(0)?, num(1)?);
            if min > max {
                return Err(format!(
                    "double({min}, {max}): the minimum is above the maximum"
                ));
            }
            let decimals = int(2, Some(2))?;
            if !(0..=9).contains(&decimals) {
                return Err("double: decimals go from 0 to 9".into());
            }
            Generator::Double {
                min,
                max,
                decimals: decimals as u32,
            }
        }
        "choice" => {
            if args.is_empty() {
                return Err("choice needs at least one value".into());
            }
            Generator::Choice(args.iter().map(|a| choice_value(a)).collect())
        }
        "string" => {
            arity(1)?;
            let length = int(0, Some(8))?;
            if !(0..=1 << 20).contains(&length) {
                return Err("string: the length goes from 0 to 1048576".into());
            }
            Generator::Text {
                length: length as usize,
            }
        }
        "boolean" => {
            arity(0)?;
            Generator::Boolean
        }
        "uuid" => {
            arity(0)?;
            Generator::Uuid
        }
        "timestamp" => {
            arity(0)?;
            Generator::Timestamp
        }
        other => {
            return Err(format!(
                "unknown generator '{other}'; one of: sequence, int, double, choice, string, \
                 boolean, uuid, timestamp"
            ));
        }
    })
}

fn choice_value(arg: &str) -> Value {
    for q in ['\'', '"'] {
        if let Some(inner) = arg.strip_prefix(q).and_then(|a| a.strip_suffix(q)) {
            return Value::String(inner.to_owned());
        }
    }
    if let Ok(i) = arg.parse::<i64>() {
        return json!(i);
    }
    if let Ok(f) = arg.parse::<f64>()
        && f.is_finite()
    {
        return json!(f);
    }
    match arg {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => Value::String(arg.to_owned()),
    }
}

/// SplitMix64: a fast, well-mixed hash of a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Generator {
    /// The value for record `index`, field `field`; writes it as JSON onto `out`.
    fn write(&self, seed: u64, index: u64, field: usize, now_ms: i64, out: &mut String) {
        let mut state = mix(seed ^ mix(index ^ ((field as u64) << 48)));
        let mut next = || {
            state = mix(state);
            state
        };
        match self {
            Generator::Sequence { start, step } => {
                let v = start.wrapping_add(step.wrapping_mul(index as i64));
                let _ = write!(out, "{v}");
            }
            Generator::Int { min, max } => {
                let span = (*max as i128 - *min as i128 + 1) as u128;
                let v = *min as i128 + (next() as u128 % span) as i128;
                let _ = write!(out, "{v}");
            }
            Generator::Double { min, max, decimals } => {
                let unit = (next() >> 11) as f64 / (1u64 << 53) as f64;
                let v = min + unit * (max - min);
                let _ = write!(out, "{v:.*}", *decimals as usize);
            }
            Generator::Choice(values) => {
                let v = &values[(next() % values.len() as u64) as usize];
                out.push_str(&v.to_string());
            }
            Generator::Text { length } => {
                out.push('"');
                for _ in 0..*length {
                    out.push(ALPHANUMERIC[(next() % ALPHANUMERIC.len() as u64) as usize] as char);
                }
                out.push('"');
            }
            Generator::Boolean => out.push_str(if next() & 1 == 1 { "true" } else { "false" }),
            Generator::Uuid => {
                let (a, b) = (next(), next());
                let v = ((a as u128) << 64 | b as u128) & !(0xf000u128 << 64) | (0x4000u128 << 64);
                let v = v & !(0xc000u128 << 48) | (0x8000u128 << 48);
                let hex = format!("{v:032x}");
                let _ = write!(
                    out,
                    "\"{}-{}-{}-{}-{}\"",
                    &hex[0..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                );
            }
            Generator::Timestamp => {
                let _ = write!(out, "{now_ms}");
            }
        }
    }
}

/// One task of a data generator.
#[derive(Debug)]
pub struct DataGenTask {
    config: DataGenConfig,
    split: PartitionSplit,
    /// Records this task has generated (committed or not).
    next: u64,
    /// When the connector first started: Nexmark's event times count from it.
    start_ms: i64,
    /// Rate limiting: since when, and how many records had been made then.
    rate_from: Option<(Instant, u64)>,
}

impl DataGenTask {
    fn partition(&self) -> Value {
        json!({ "datagen.task": self.split.index })
    }

    /// The connector-wide index of this task's record `local`.
    fn global(&self, local: u64) -> u64 {
        local * self.split.count as u64 + self.split.index as u64
    }

    fn fields(
        &self,
        fields: &[(String, Generator)],
        key_field: Option<usize>,
        n: u64,
    ) -> Vec<Record> {
        let now = quiver_broker::now_ms();
        let mut out = Vec::with_capacity(n as usize);
        let mut text = String::with_capacity(256);
        let mut key = String::new();
        for local in self.next..self.next + n {
            let index = self.global(local);
            text.clear();
            text.push('{');
            for (i, (name, g)) in fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push('"');
                text.push_str(name);
                text.push_str("\":");
                let at = text.len();
                g.write(self.config.seed, index, i, now, &mut text);
                if key_field == Some(i) {
                    key.clear();
                    let v = &text[at..];
                    // A string key is its text, anything else its JSON.
                    key.push_str(
                        v.strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(v),
                    );
                }
            }
            text.push('}');
            out.push(Record {
                timestamp_ms: now,
                key: key_field.map(|_| Bytes::copy_from_slice(key.as_bytes())),
                value: Some(Bytes::copy_from_slice(text.as_bytes())),
                ..Record::default()
            });
        }
        out
    }

    fn nexmark(&self, n: u64) -> Result<Vec<Record>> {
        // This task's block and the place in it.
        let block = self.next / NEXMARK_BLOCK;
        let within = self.next % NEXMARK_BLOCK;
        let n = n.min(NEXMARK_BLOCK - within);
        let first =
            (block * self.split.count as u64 + self.split.index as u64) * NEXMARK_BLOCK + within;
        let inter_event_us = match self.config.rate {
            Some(r) => ((1e6 / (r * self.split.count as f64)) as i64).max(1),
            None => 10,
        };
        let source = NexmarkSource::new(NexmarkConfig {
            events: u64::MAX,
            batch_size: n as usize,
            first_event_ms: self.start_ms,
            inter_event_us,
        })?;
        let batch = source.generate(first, n as usize)?;
        let time_index = batch.schema().index_of(quiver_engine::format::ROWTIME)?;
        let times = batch
            .column(time_index)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| ConnectError::Record("nexmark events lack their time".into()))?
            .clone();
        let values = batch.project(
            &(0..batch.num_columns())
                .filter(|i| *i != time_index)
                .collect::<Vec<_>>(),
        )?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&values)?;
        writer.finish()?;
        let text = writer.into_inner();
        let mut out = Vec::with_capacity(n as usize);
        for (row, line) in text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            out.push(Record {
                timestamp_ms: if times.is_null(row) {
                    self.start_ms
                } else {
                    times.value(row)
                },
                value: Some(Bytes::copy_from_slice(line)),
                ..Record::default()
            });
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl SourceTask for DataGenTask {
    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn open(&mut self, committed: &SourceOffsets) -> Result<()> {
        if let Some(offset) = committed.get(&partition_key(&self.partition())) {
            self.next = offset.get("sequence").and_then(Value::as_u64).unwrap_or(0);
            if let Some(start) = offset.get("start.ms").and_then(Value::as_i64) {
                self.start_ms = start;
            }
        }
        Ok(())
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<SourceBatch> {
        let mut n = POLL_MAX;
        if let Some(total) = self.config.iterations {
            if self.next >= total {
                return Ok(SourceBatch {
                    finished: true,
                    ..SourceBatch::default()
                });
            }
            n = n.min(total - self.next);
        }
        if let Some(rate) = self.config.rate {
            let (from, at) = *self.rate_from.get_or_insert((Instant::now(), self.next));
            let due = (from.elapsed().as_secs_f64() * rate) as u64 + 1;
            let allowed = (at + due).saturating_sub(self.next);
            if allowed == 0 {
                let wait = Duration::from_secs_f64(1.0 / rate).min(max_wait);
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                return Ok(SourceBatch::default());
            }
            n = n.min(allowed);
        }
        let records = match &self.config.shape {
            Shape::Fields { fields, key_field } => self.fields(fields, *key_field, n),
            Shape::Nexmark => self.nexmark(n)?,
        };
        self.next += records.len() as u64;
        let offset = json!({ "sequence": self.next, "start.ms": self.start_ms });
        Ok(SourceBatch {
            records,
            offsets: vec![(self.partition(), offset)],
            finished: self
                .config
                .iterations
                .is_some_and(|total| self.next >= total),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    #[test]
    fn fields_parse_with_quotes_and_defaults() {
        let f = parse_fields(
            "id:sequence(1); region:choice('eu','us, east',3); amount:double(1,500); \
             ok:boolean; name:string(4); ts:timestamp; u:uuid; n:int(-5,5); s:sequence",
        )
        .unwrap();
        assert_eq!(f.len(), 9);
        assert_eq!(f[0].1, Generator::Sequence { start: 1, step: 1 });
        assert_eq!(
            f[1].1,
            Generator::Choice(vec![json!("eu"), json!("us, east"), json!(3)])
        );
        assert_eq!(f[8].1, Generator::Sequence { start: 0, step: 1 });
    }

    #[test]
    fn bad_fields_say_what_is_wrong() {
        for (text, says) in [
            ("id", "is not name:generator"),
            ("id:sequense(1)", "unknown generator 'sequense'"),
            ("n:int(5,1)", "the minimum is above the maximum"),
            ("n:int(1)", "int needs 2 arguments"),
            ("a:boolean; a:uuid", "given twice"),
            ("x:choice()", "at least one value"),
            ("x:double(1,2", "closing parenthesis"),
            ("bad name:uuid", "may only have"),
        ] {
            let e = parse_fields(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn values_are_deterministic_and_in_range() {
        let fields =
            parse_fields("n:int(-3,3); d:double(0,1,3); c:choice(a,b); s:string(5)").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..2000u64 {
            let mut a = String::new();
            let mut b = String::new();
            for (i, (_, g)) in fields.iter().enumerate() {
                g.write(7, index, i, 0, &mut a);
                a.push('|');
                g.write(7, index, i, 0, &mut b);
                b.push('|');
            }
            assert_eq!(a, b);
            let parts: Vec<&str> = a.split('|').collect();
            let n: i64 = parts[0].parse().unwrap();
            assert!((-3..=3).contains(&n));
            seen.insert(n);
            let d: f64 = parts[1].parse().unwrap();
            assert!((0.0..=1.0).contains(&d));
            assert!(parts[2] == "\"a\"" || parts[2] == "\"b\"");
            assert_eq!(parts[3].len(), 7);
        }
        assert_eq!(seen.len(), 7, "every value of the range comes up");
    }
}
