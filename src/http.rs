//! The SQL HTTP API that `quiver server` serves (port 8088 by default), shaped like ksqlDB's:
//!
//! - `POST /ksql` with `{"ksql": "…;", "streamsProperties": {…}}` runs statements (not push
//!   queries) and answers with one result per statement: `{"@type": "currentStatus",
//!   "statementText", "commandStatus": {"status": "SUCCESS", "message"}}` or `{"@type": "rows",
//!   "statementText", "columnNames", "columnTypes", "rows": [[…], …]}`.
//! - `POST /query-stream` with `{"sql": "SELECT …;", "properties": {…}}` answers with newline-
//!   delimited JSON: a header `{"queryId", "columnNames", "columnTypes"}`, then each row as an
//!   array, as it comes for a push query (until its LIMIT or the client hangs up), at once for
//!   a query over history.
//! - `GET /info` and `GET /healthcheck`.
//! - Connectors, shaped like Kafka Connect's REST API: `GET /connectors[?expand=status|info]`,
//!   `POST /connectors` (`{"name": …, "config": {…}}`), `GET /connectors/{name}`, `GET|PUT
//!   /connectors/{name}/config`, `GET /connectors/{name}/status` (with the connector's
//!   progress), `PUT /connectors/{name}/pause|resume`, `DELETE /connectors/{name}`, and `GET
//!   /connector-plugins`. Errors are `{"error_code": …, "message": …}`. A connector created
//!   here is a `CREATE SOURCE|SINK CONNECTOR` statement (and deleting it a `DROP CONNECTOR`),
//!   so it is in SQL's command log and comes back when the server restarts; pausing is not
//!   kept. Configs in `--connectors DIR` start with every server.
//!
//! A statement that fails gets status 400 (500 when the broker or engine failed) and
//! `{"@type": "statement_error", "error_code", "message", "statementText", "line", "column"}`;
//! the server goes on serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::datatypes::Schema;
use quiver_sql::{ErrorKind, Output, SqlEngine, SqlError};
use serde_json::{Value, json};

use quiver_connectors::{Connector, ConnectorConfig, Refusal};

/// Request bodies above this are refused (a statement is text; 1 MiB is plenty).
const MAX_BODY: usize = 1 << 20;

/// Binds `addr` and serves the API until `stop` turns true.
pub async fn serve(
    engine: SqlEngine,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connect = Router::new()
        .route("/connectors", get(list_connectors).post(create_connector))
        .route(
            "/connectors/{name}",
            get(connector_info).delete(delete_connector),
        )
        .route(
            "/connectors/{name}/config",
            get(connector_config).put(put_connector_config),
        )
        .route("/connectors/{name}/status", get(connector_status))
        .route("/connectors/{name}/pause", put(pause_connector))
        .route("/connectors/{name}/resume", put(resume_connector))
        .route("/connector-plugins", get(connector_plugins))
        .with_state(engine.clone());
    let app = Router::new()
        .route("/ksql", post(ksql))
        .route("/query-stream", post(query_stream))
        .route("/info", get(info))
        .route("/healthcheck", get(health))
        .with_state(engine)
        .merge(connect)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
}

/// Binds the API's listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn info() -> Json<Value> {
    Json(json!({
        "KsqlServerInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "serverStatus": "RUNNING",
            "kafkaClusterId": "quiver",
        }
    }))
}

async fn health() -> Json<Value> {
    Json(json!({ "isHealthy": true, "details": { "kafka": { "isHealthy": true } } }))
}

fn error(e: &SqlError, statement: &str) -> Response {
    let (status, code) = match e.kind {
        ErrorKind::Syntax | ErrorKind::Statement => (StatusCode::BAD_REQUEST, 40001),
        ErrorKind::Runtime => (StatusCode::INTERNAL_SERVER_ERROR, 50000),
    };
    let mut body = json!({
        "@type": "statement_error",
        "error_code": code,
        "message": e.message,
        "statementText": statement,
    });
    if let Some(p) = e.position {
        body["line"] = json!(p.line);
        body["column"] = json!(p.column);
    }
    (status, Json(body)).into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "@type": "generic_error", "error_code": 40000, "message": message })),
    )
        .into_response()
}

/// Request properties as strings (numbers and booleans as written).
fn properties(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The body as JSON, or the message saying why it is not.
fn body_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))
}

async fn ksql(State(engine): State<SqlEngine>, body: axum::body::Bytes) -> Response {
    let request = match body_json(&body) {
        Ok(v) => v,
        Err(m) => return bad_request(&m),
    };
    let Some(text) = request["ksql"].as_str() else {
        return bad_request(r#"the body needs "ksql": the statements to run"#);
    };
    let mut overrides = properties(request.get("streamsProperties"));
    let statements = match quiver_sql::parse(text) {
        Ok(s) => s,
        Err(e) => return error(&SqlError::from(e), text),
    };
    let mut results = Vec::with_capacity(statements.len());
    for s in &statements {
        // SET and UNSET hold for the statements after them in this request (as ksqlDB's
        // streamsProperties do), not for other clients of the server.
        let outcome = match &s.statement {
            quiver_sql::Statement::Set { name, value } => {
                match quiver_sql::engine::property_error(name, value) {
                    Some(message) => Err(SqlError {
                        kind: ErrorKind::Statement,
                        message,
                        position: Some(s.position),
                    }),
                    None => {
                        overrides.insert(name.clone(), value.clone());
                        Ok(Output::Message(format!(
                            "'{name}' set to '{value}' for the rest of this request"
                        )))
                    }
                }
            }
            quiver_sql::Statement::Unset(name) => {
                overrides.remove(name);
                Ok(Output::Message(format!(
                    "'{name}' unset for the rest of this request"
                )))
            }
            _ => engine.execute_with(s, &overrides).await,
        };
        match outcome {
            Ok(Output::Message(m)) => results.push(json!({
                "@type": "currentStatus",
                "statementText": s.text,
                "commandStatus": { "status": "SUCCESS", "message": m },
            })),
            Ok(Output::Rows { schema, batches }) => {
                let (names, types) = columns(&schema);
                results.push(json!({
                    "@type": "rows",
                    "statementText": s.text,
                    "columnNames": names,
                    "columnTypes": types,
                    "rows": rows(&batches),
                }));
            }
            Ok(Output::Push(mut push)) => {
                push.cancel().await;
                return error(
                    &SqlError {
                        kind: ErrorKind::Statement,
                        message: "a push query (EMIT CHANGES) or PRINT streams its rows: send it \
                                  to /query-stream"
                            .into(),
                        position: Some(s.position),
                    },
                    &s.text,
                );
            }
            Err(e) => return error(&e, &s.text),
        }
    }
    Json(Value::Array(results)).into_response()
}

fn columns(schema: &Schema) -> (Vec<String>, Vec<String>) {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), quiver_sql::types::sql_name(f.data_type())))
        .unzip()
}

/// Rows as JSON arrays, in column order (arrow's JSON encoding of each value).
fn rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut writer = quiver_engine::arrow::json::LineDelimitedWriter::new(Vec::new());
        if writer.write(b).is_err() || writer.finish().is_err() {
            continue;
        }
        let text = writer.into_inner();
        for line in text.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            out.push(Value::Array(
                names
                    .iter()
                    .map(|n| object.remove(n).unwrap_or(Value::Null))
                    .collect(),
            ));
        }
    }
    out
}

/// Rows as newline-delimited JSON arrays, in column order. Rows without structs are encoded
/// by arrow's JSON writer as lists straight away; a struct would come out as a list too, so
/// rows with one go through [`rows`] (objects for structs, as ksqlDB shows them).
fn rows_ndjson(batches: &[RecordBatch]) -> String {
    use quiver_engine::arrow::datatypes::DataType;
    fn has_struct(t: &DataType) -> bool {
        match t {
            DataType::Struct(_) => true,
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::ListView(f)
            | DataType::LargeListView(f) => has_struct(f.data_type()),
            // A map's entries are a struct of key and value; only they can hold one.
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(kv) => kv.iter().any(|f| has_struct(f.data_type())),
                _ => true,
            },
            DataType::Dictionary(_, v) => has_struct(v),
            _ => false,
        }
    }
    let mut out = Vec::new();
    for b in batches {
        let plain = !b
            .schema()
            .fields()
            .iter()
            .any(|f| has_struct(f.data_type()));
        if plain {
            let mut lines = Vec::new();
            let mut writer = quiver_engine::arrow::json::WriterBuilder::new()
                .with_struct_mode(quiver_engine::arrow::json::StructMode::ListOnly)
                .build::<_, quiver_engine::arrow::json::writer::LineDelimited>(&mut lines);
            if writer.write(b).is_ok() && writer.finish().is_ok() {
                drop(writer);
                out.extend_from_slice(&lines);
                continue;
            }
        }
        for row in rows(std::slice::from_ref(b)) {
            out.extend_from_slice(row.to_string().as_bytes());
            out.push(b'\n');
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

async fn query_stream(State(engine): State<SqlEngine>, body: axum::body::Bytes) -> Response {
    let request = match body_json(&body) {
        Ok(v) => v,
        Err(m) => return bad_request(&m),
    };
    let Some(text) = request["sql"].as_str() else {
        return bad_request(r#"the body needs "sql": the query to run"#);
    };
    let overrides = properties(request.get("properties"));
    let statements = match quiver_sql::parse(text) {
        Ok(s) => s,
        Err(e) => return error(&SqlError::from(e), text),
    };
    let [statement] = statements.as_slice() else {
        return bad_request("send one query to /query-stream");
    };
    if !matches!(
        statement.statement,
        quiver_sql::Statement::Select(_) | quiver_sql::Statement::Print { .. }
    ) {
        return error(
            &SqlError {
                kind: ErrorKind::Statement,
                message: "/query-stream runs SELECT and PRINT; send other statements to /ksql"
                    .into(),
                position: Some(statement.position),
            },
            &statement.text,
        );
    }
    let output = match engine.execute_with(statement, &overrides).await {
        Ok(o) => o,
        Err(e) => return error(&e, &statement.text),
    };
    let header = |schema: &Schema| {
        let (names, types) = columns(schema);
        let mut line = json!({
            "queryId": format!("transient_{}", quiver_broker::now_ms()),
            "columnNames": names,
            "columnTypes": types,
        })
        .to_string();
        line.push('\n');
        line
    };
    let stream = match output {
        Output::Rows { schema, batches } => {
            let mut text = header(&schema);
            text.push_str(&rows_ndjson(&batches));
            return ([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response();
        }
        Output::Message(m) => {
            return Json(json!({ "message": m })).into_response();
        }
        Output::Push(push) => push,
    };
    let first = header(&stream.schema);
    // Rows go out as they come; when the client hangs up, the body is dropped and with it the
    // query (its reader closes, and the query stops).
    let body =
        futures::stream::unfold((stream, Some(first)), move |(mut push, first)| async move {
            if let Some(h) = first {
                return Some((Ok::<_, std::io::Error>(h), (push, None)));
            }
            match push.next().await {
                Some(Ok(batch)) => Some((Ok(rows_ndjson(&[batch])), (push, None))),
                Some(Err(e)) => {
                    let line = json!({ "@type": "error", "message": e.to_string() }).to_string();
                    push.cancel().await;
                    Some((Ok(format!("{line}\n")), (push, None)))
                }
                None => None,
            }
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

fn refused(r: Refusal) -> Response {
    let (status, message) = match r {
        Refusal::NotFound(m) => (StatusCode::NOT_FOUND, m),
        Refusal::Exists(m) => (StatusCode::CONFLICT, m),
        Refusal::Invalid(m) => (StatusCode::BAD_REQUEST, m),
    };
    (
        status,
        Json(json!({ "error_code": status.as_u16(), "message": message })),
    )
        .into_response()
}

/// A connector from a request body: `{"name": …, "config": {…}}`, or (`name` given) the config
/// object alone.
fn connector_from(body: &[u8], name: Option<&str>) -> Result<Connector, Refusal> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Invalid(format!("the body is not JSON: {e}")))?;
    if let (Some(name), Value::Object(map)) = (name, &mut value) {
        match map.get("name") {
            Some(Value::String(n)) if n != name => {
                return Err(Refusal::Invalid(format!(
                    "the config names the connector '{n}', the path '{name}'"
                )));
            }
            _ => {
                map.insert("name".into(), Value::String(name.to_owned()));
            }
        }
    }
    let config = ConnectorConfig::from_json(&value.to_string(), "the request")
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    Connector::from_config(config).map_err(|e| Refusal::Invalid(e.to_string()))
}

/// `GET /connectors`: the names; with `?expand=status` and/or `?expand=info`, as Kafka Connect
/// answers it, a map from each name to its status and/or info.
async fn list_connectors(
    State(sql): State<SqlEngine>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Json<Value> {
    let expand: Vec<&str> = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("expand="))
        .collect();
    let names = sql.connectors().names();
    if expand.is_empty() {
        return Json(json!(names));
    }
    let mut out = serde_json::Map::new();
    for name in names {
        let mut entry = serde_json::Map::new();
        if expand.contains(&"status")
            && let Ok(status) = sql.connectors().status(&name)
        {
            entry.insert("status".into(), status);
        }
        if expand.contains(&"info")
            && let Ok(info) = sql.connectors().info(&name)
        {
            entry.insert("info".into(), info);
        }
        out.insert(name, Value::Object(entry));
    }
    Json(Value::Object(out))
}

/// A connector as the statement that creates it: `CREATE SOURCE|SINK CONNECTOR "name" WITH
/// ('key' = 'value', …)`.
fn create_statement(c: &Connector) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let kind = if c.config().class.is_source() {
        "SOURCE"
    } else {
        "SINK"
    };
    let with: Vec<String> = c
        .config()
        .settings()
        .iter()
        .filter(|(k, _)| k.as_str() != "name")
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    format!(
        "CREATE {kind} CONNECTOR \"{}\" WITH ({});",
        c.name(),
        with.join(", ")
    )
}

/// Runs the statement for `c` (so it is in the command log); 201 with the connector.
async fn create_through_sql(sql: &SqlEngine, c: Connector, status: StatusCode) -> Response {
    let name = c.name().to_owned();
    if sql.connectors().names().contains(&name) {
        return refused(Refusal::Exists(format!(
            "a connector named '{name}' already exists"
        )));
    }
    let statement = create_statement(&c);
    if let Err(e) = sql.execute(&statement).await {
        return refused(Refusal::Invalid(e.message));
    }
    tracing::info!(connector = %name, "created through the REST API: {}", c.describe());
    match sql.connectors().info(&name) {
        Ok(info) => (status, Json(info)).into_response(),
        Err(r) => refused(r),
    }
}

async fn drop_through_sql(sql: &SqlEngine, name: &str) -> Result<(), Refusal> {
    if !sql.connectors().names().iter().any(|n| n == name) {
        return Err(Refusal::NotFound(format!("connector {name} not found")));
    }
    sql.execute(&format!("DROP CONNECTOR IF EXISTS \"{name}\";"))
        .await
        .map(|_| ())
        .map_err(|e| Refusal::Invalid(e.message))
}

async fn create_connector(State(sql): State<SqlEngine>, body: axum::body::Bytes) -> Response {
    match connector_from(&body, None) {
        Ok(c) => create_through_sql(&sql, c, StatusCode::CREATED).await,
        Err(r) => refused(r),
    }
}

async fn connector_info(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match sql.connectors().info(&name) {
        Ok(info) => Json(info).into_response(),
        Err(r) => refused(r),
    }
}

async fn connector_config(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match sql.connectors().info(&name) {
        Ok(info) => Json(info["config"].clone()).into_response(),
        Err(r) => refused(r),
    }
}

/// Creates the connector, or replaces its config (it stops, committing, and starts again with
/// the new one).
async fn put_connector_config(
    State(sql): State<SqlEngine>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let connector = match connector_from(&body, Some(&name)) {
        Ok(x) => x,
        Err(r) => return refused(r),
    };
    let existed = match drop_through_sql(&sql, &name).await {
        Ok(()) => true,
        Err(Refusal::NotFound(_)) => false,
        Err(r) => return refused(r),
    };
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    create_through_sql(&sql, connector, status).await
}

async fn connector_status(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match sql.connectors().status(&name) {
        Ok(s) => Json(s).into_response(),
        Err(r) => refused(r),
    }
}

async fn pause_connector(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match sql.pause_connector(&name).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(r) => refused(r),
    }
}

async fn resume_connector(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match sql.resume_connector(&name).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(r) => refused(r),
    }
}

async fn delete_connector(State(sql): State<SqlEngine>, Path(name): Path<String>) -> Response {
    match drop_through_sql(&sql, &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

async fn connector_plugins() -> Json<Value> {
    Json(json!([
        { "class": "ParquetSink", "type": "sink", "version": env!("CARGO_PKG_VERSION") },
        { "class": "DataGen", "type": "source", "version": env!("CARGO_PKG_VERSION") },
        { "class": "FileSource", "type": "source", "version": env!("CARGO_PKG_VERSION") },
    ]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use std::sync::Arc;

    use quiver_engine::arrow::array::{
        ArrayRef, Int64Array, StringArray, StructArray, TimestampMillisecondArray,
    };
    use quiver_engine::arrow::datatypes::{DataType, Field, Fields};

    use super::*;

    /// Rows stream as arrays in column order, nulls included; a struct inside stays an object.
    #[test]
    fn rows_are_json_arrays_and_structs_in_them_objects() {
        let plain = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![None, Some(2)])) as _),
            (
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![0, 1_000])) as _,
            ),
        ])
        .unwrap();
        assert_eq!(
            rows_ndjson(std::slice::from_ref(&plain)),
            "[\"a\",null,\"1970-01-01T00:00:00\"]\n[null,2,\"1970-01-01T00:00:01\"]\n"
        );
        let fields = Fields::from(vec![Field::new("x", DataType::Int64, true)]);
        let inner = StructArray::new(
            fields.clone(),
            vec![Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef],
            None,
        );
        let nested = RecordBatch::try_from_iter([
            ("k", plain.column(0).clone()),
            ("s", Arc::new(inner) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(
            rows_ndjson(&[nested]),
            "[\"a\",{\"x\":7}]\n[null,{\"x\":8}]\n"
        );
    }
}
