//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Topics (resource type 2) are read-write: every topic config is described with its effective
//! value and where it comes from (a topic override, the broker's setting, or Kafka's default).
//! This broker (resource type 4) is read-only: its settings are read from the server config at
//! start, so changing them is refused as Kafka refuses configs it cannot update dynamically.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::{AlterConfigsRequest, AlterConfigsResource};
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_response::{
    self as incremental, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{ApiError, duplicates, outcome};
use crate::broker::ConfigChange;
use crate::config::{
    BROKER_CONFIG_KEYS, BrokerConfig, LogConfig, TOPIC_CONFIG_KEYS, broker_synonyms,
};
use crate::kafka::handlers::Ctx;
use crate::topic;

/// Kafka's config resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One config as described to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: &'static str,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub config_type: i8,
    pub documentation: Option<&'static str>,
    /// `(name, value, source)`, the one in effect first, as Kafka lists synonyms.
    pub synonyms: Vec<(&'static str, String, i8)>,
}

fn topic_config_type(key: &str) -> i8 {
    match key {
        "cleanup.policy" => TYPE_LIST,
        "message.timestamp.type" => TYPE_STRING,
        "index.interval.bytes" | "max.message.bytes" | "segment.bytes" => TYPE_INT,
        _ => TYPE_LONG,
    }
}

fn broker_config_type(key: &str) -> i8 {
    match key {
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        "advertised.listeners"
        | "listeners"
        | "log.dir"
        | "log.dirs"
        | "log.message.timestamp.type" => TYPE_STRING,
        "log.cleanup.policy" => TYPE_LIST,
        "log.cleaner.backoff.ms"
        | "log.cleaner.delete.retention.ms"
        | "log.flush.interval.messages"
        | "log.flush.interval.ms"
        | "log.retention.bytes"
        | "log.retention.check.interval.ms"
        | "log.retention.ms"
        | "log.roll.ms" => TYPE_LONG,
        _ => TYPE_INT,
    }
}

/// Every topic config of a topic with `overrides` whose effective config is `config`.
/// A value not overridden comes from the broker when its setting differs from Kafka's default
/// (the broker cannot tell a setting given equal to the default from one left out).
pub(crate) fn topic_entries(
    broker: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
    config: &LogConfig,
) -> Vec<Entry> {
    let kafka_default = LogConfig::default();
    let broker_default = BrokerConfig::default();
    TOPIC_CONFIG_KEYS
        .iter()
        .filter_map(|&(key, doc)| {
            let value = config.get(key)?;
            let mut synonyms = Vec::new();
            if let Some(v) = overrides.get(key) {
                synonyms.push((key, v.clone(), DYNAMIC_TOPIC_CONFIG));
            }
            // The broker's setting shows under its most specific key; Kafka's default under the
            // key that defines it (`log.retention.hours=168`, `log.roll.hours=168`).
            let server_keys = broker_synonyms(key);
            match (server_keys.first(), server_keys.last()) {
                (Some(&specific), Some(&defining)) => {
                    if broker.log.get(key) != kafka_default.get(key) {
                        synonyms.push((specific, broker.get(specific)?, STATIC_BROKER_CONFIG));
                    }
                    synonyms.push((defining, broker_default.get(defining)?, DEFAULT_CONFIG));
                }
                _ => synonyms.push((key, kafka_default.get(key)?, DEFAULT_CONFIG)),
            }
            Some(Entry {
                name: key,
                value,
                source: synonyms.first().map_or(DEFAULT_CONFIG, |s| s.2),
                read_only: false,
                config_type: topic_config_type(key),
                documentation: Some(doc),
                synonyms,
            })
        })
        .collect()
}

/// Every server setting of this broker, read-only.
fn broker_entries(broker: &BrokerConfig) -> Vec<Entry> {
    let defaults = BrokerConfig::default();
    BROKER_CONFIG_KEYS
        .iter()
        .filter_map(|&key| {
            let value = broker.get(key)?;
            let default = defaults.get(key)?;
            let mut synonyms = Vec::new();
            if value != default {
                synonyms.push((key, value.clone(), STATIC_BROKER_CONFIG));
            }
            synonyms.push((key, default, DEFAULT_CONFIG));
            // Server keys that set a topic default share that topic key's description.
            let documentation = TOPIC_CONFIG_KEYS
                .iter()
                .find(|(topic_key, _)| broker_synonyms(topic_key).contains(&key))
                .map(|&(_, doc)| doc);
            Some(Entry {
                name: key,
                value,
                source: synonyms.first().map_or(DEFAULT_CONFIG, |s| s.2),
                read_only: true,
                config_type: broker_config_type(key),
                documentation,
                synonyms,
            })
        })
        .collect()
}

/// Checks that a broker resource names this node. `Ok(true)` for the empty name, which in
/// Kafka means the cluster-wide dynamic defaults (there are none here).
fn this_broker(ctx: &Ctx, name: &str) -> Result<bool, ApiError> {
    if name.is_empty() {
        return Ok(true);
    }
    if name.trim().parse::<i32>().ok() == Some(ctx.node_id) {
        return Ok(false);
    }
    Err(ApiError::new(
        ResponseError::InvalidRequest,
        format!(
            "broker '{name}' is not this node; this is a single-node cluster whose only broker is {}",
            ctx.node_id
        ),
    ))
}

fn unsupported_resource(resource_type: i8) -> ApiError {
    ApiError::new(
        ResponseError::InvalidRequest,
        format!(
            "config resource type {resource_type} is not supported; use topics ({TOPIC}) or brokers ({BROKER})"
        ),
    )
}

/// Internal topics keep the configs the broker gave them. Kafka answers INVALID_REQUEST for
/// configs it will not change, as for static broker configs.
fn refuse_internal(name: &str) -> Result<(), ApiError> {
    topic::refuse_internal(name, "reconfigured")
        .map_err(|e| ApiError::new(ResponseError::InvalidRequest, e.to_string()))
}

/// A topic that exists, or the Kafka error for it.
fn existing_topic(ctx: &Ctx, name: &str) -> Result<crate::broker::TopicDescription, ApiError> {
    topic::validate_name(name)?;
    Ok(ctx.broker.describe_topic(name)?)
}

pub fn describe_configs(
    ctx: &Ctx,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|r| {
            let entries = match r.resource_type {
                TOPIC => existing_topic(ctx, &r.resource_name)
                    .map(|d| topic_entries(ctx.broker.config(), &d.overrides, &d.config)),
                BROKER => this_broker(ctx, &r.resource_name).map(|cluster_default| {
                    if cluster_default {
                        Vec::new()
                    } else {
                        broker_entries(ctx.broker.config())
                    }
                }),
                other => Err(unsupported_resource(other)),
            };
            let (code, message) = outcome(&entries);
            let configs = entries
                .unwrap_or_default()
                .into_iter()
                .filter(|e| wanted(r, e.name))
                .map(|e| describe_entry(version, &req, e))
                .collect();
            DescribeConfigsResult::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Null or empty `configuration_keys` means every key, as in Kafka.
fn wanted(r: &DescribeConfigsResource, name: &str) -> bool {
    match &r.configuration_keys {
        Some(keys) if !keys.is_empty() => keys.iter().any(|k| &**k == name),
        _ => true,
    }
}

fn describe_entry(
    version: i16,
    req: &DescribeConfigsRequest,
    e: Entry,
) -> DescribeConfigsResourceResult {
    let mut out = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(e.read_only)
        .with_config_source(e.source)
        .with_is_sensitive(false);
    if req.include_synonyms {
        out = out.with_synonyms(
            e.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_source(source)
                })
                .collect(),
        );
    }
    if version >= 3 {
        let documentation = e
            .documentation
            .filter(|_| req.include_documentation)
            .map(StrBytes::from_static_str);
        out = out
            .with_config_type(e.config_type)
            .with_documentation(documentation);
    }
    out
}

/// Legacy AlterConfigs: the configs given become the topic's overrides; every override not
/// given is removed (Kafka's semantics, which IncrementalAlterConfigs replaced).
pub async fn alter_configs(ctx: &Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        let result = match r.resource_type {
            TOPIC => replace_topic_configs(ctx, r, req.validate_only).await,
            BROKER => refuse_broker_change(
                ctx,
                &r.resource_name,
                r.configs.iter().map(|c| c.name.to_string()),
            ),
            other => Err(unsupported_resource(other)),
        };
        let (code, message) = outcome(&result);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone()),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

async fn replace_topic_configs(
    ctx: &Ctx,
    r: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), ApiError> {
    let wanted = non_null(r.configs.iter().map(|c| (&c.name, c.value.as_ref())))?;
    let d = existing_topic(ctx, &r.resource_name)?;
    refuse_internal(&r.resource_name)?;
    apply(ctx, &r.resource_name, &d.overrides, wanted, validate_only).await
}

/// Configs as a map, refusing null values as Kafka does.
fn non_null<'a>(
    pairs: impl Iterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let mut nulls = Vec::new();
    for (name, value) in pairs {
        match value {
            Some(v) => {
                out.insert(name.to_string(), v.to_string());
            }
            None => nulls.push(name.to_string()),
        }
    }
    if nulls.is_empty() {
        Ok(out)
    } else {
        Err(null_values(&nulls))
    }
}

fn null_values(keys: &[String]) -> ApiError {
    ApiError::new(
        ResponseError::InvalidRequest,
        format!(
            "null values are not supported for {}; give a value (or delete the key with IncrementalAlterConfigs)",
            keys.join(", ")
        ),
    )
}

/// Makes `wanted` the topic's overrides (or only checks them, for `validate_only`). `current`
/// was read before; of two clients altering one topic at once, the last one wins, as in Kafka.
async fn apply(
    ctx: &Ctx,
    name: &str,
    current: &BTreeMap<String, String>,
    wanted: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), ApiError> {
    if validate_only {
        ctx.broker.config().log.with_overrides(&wanted)?;
        return Ok(());
    }
    let mut changes: Vec<ConfigChange> = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .map(|k| ConfigChange::Delete(k.clone()))
        .collect();
    changes.extend(wanted.into_iter().map(|(k, v)| ConfigChange::Set(k, v)));
    ctx.broker.alter_topic_config(name, &changes).await?;
    Ok(())
}

/// Broker settings cannot change at runtime; Kafka answers INVALID_REQUEST for configs it
/// cannot update dynamically.
fn refuse_broker_change(
    ctx: &Ctx,
    name: &str,
    keys: impl Iterator<Item = String>,
) -> Result<(), ApiError> {
    this_broker(ctx, name)?;
    let keys: Vec<String> = keys.collect();
    if keys.is_empty() {
        return Ok(());
    }
    if let Some(unknown) = keys
        .iter()
        .find(|k| !BROKER_CONFIG_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "unknown server config '{unknown}'; known keys: {}",
                BROKER_CONFIG_KEYS.join(", ")
            ),
        ));
    }
    Err(ApiError::new(
        ResponseError::InvalidRequest,
        format!(
            "cannot update these broker configs dynamically: {}; broker settings are read at start: change them in the server config and restart",
            keys.join(", ")
        ),
    ))
}

pub async fn incremental_alter_configs(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        let result = match r.resource_type {
            TOPIC => alter_topic(ctx, &r.resource_name, &r.configs, req.validate_only).await,
            BROKER => refuse_broker_change(
                ctx,
                &r.resource_name,
                r.configs.iter().map(|c| c.name.to_string()),
            ),
            other => Err(unsupported_resource(other)),
        };
        let (code, message) = outcome(&result);
        responses.push(
            incremental::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone()),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Applies SET, DELETE, APPEND and SUBTRACT to a topic's overrides, all or nothing.
async fn alter_topic(
    ctx: &Ctx,
    name: &str,
    configs: &[AlterableConfig],
    validate_only: bool,
) -> Result<(), ApiError> {
    let d = existing_topic(ctx, name)?;
    refuse_internal(name)?;
    if let Some(key) = duplicates(configs.iter().map(|c| &*c.name)).first() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("config '{key}' appears more than once in the request; change each key once"),
        ));
    }
    let mut overrides = d.overrides.clone();
    for c in configs {
        let key = c.name.to_string();
        let value = c.value.as_ref().map(|v| v.to_string());
        match (c.config_operation, value) {
            (OP_DELETE, _) => {
                known_topic_key(&key)?;
                overrides.remove(&key);
            }
            (OP_SET | OP_APPEND | OP_SUBTRACT, None) => return Err(null_values(&[key])),
            (OP_SET, Some(v)) => {
                overrides.insert(key, v);
            }
            (op @ (OP_APPEND | OP_SUBTRACT), Some(v)) => {
                known_topic_key(&key)?;
                if topic_config_type(&key) != TYPE_LIST {
                    return Err(ApiError::new(
                        ResponseError::InvalidConfig,
                        format!(
                            "config '{key}' is not a list; APPEND and SUBTRACT apply to list configs such as cleanup.policy; use SET"
                        ),
                    ));
                }
                // The list starts from the topic's current value, override or not.
                let current = overrides
                    .get(&key)
                    .cloned()
                    .or_else(|| d.config.get(&key))
                    .unwrap_or_default();
                let mut items = list_items(&current);
                let given = list_items(&v);
                if op == OP_APPEND {
                    for g in given {
                        if !items.contains(&g) {
                            items.push(g);
                        }
                    }
                } else {
                    items.retain(|i| !given.contains(i));
                }
                overrides.insert(key, items.join(","));
            }
            (op, _) => {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!(
                        "unknown config operation {op} for '{key}'; expected 0 (SET), 1 (DELETE), 2 (APPEND) or 3 (SUBTRACT)"
                    ),
                ));
            }
        }
    }
    apply(ctx, name, &d.overrides, overrides, validate_only).await
}

fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Refuses a key that is not a topic config, with the message that lists the known ones.
fn known_topic_key(key: &str) -> Result<(), ApiError> {
    match LogConfig::default().get(key) {
        Some(_) => Ok(()),
        // `set` refuses an unknown key with that message.
        None => LogConfig::default().set(key, "").map_err(ApiError::from),
    }
}
