//! The shell's client of a server's SQL API (`quiver shell --server URL`): statements go to
//! `POST /ksql`, queries to `POST /query-stream` (rows read as they come), and `SET`/`UNSET`
//! stay in the shell, sent with every request as ksqlDB's CLI does. Errors come back with the
//! server's message and their position in the script.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use anyhow::{Context, bail};
use quiver_sql::{ErrorKind, Parsed, Position, SqlError, Statement};
use serde_json::{Value, json};

/// A statement's answer.
pub enum Reply {
    Message(String),
    Rows {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A push query's rows (or PRINT's records) as the server sends them; dropping it ends the
    /// query on the server.
    Stream(RowStream),
}

/// A connection to one server's SQL API.
pub struct Remote {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    client: reqwest::Client,
    properties: Mutex<BTreeMap<String, String>>,
}

fn unreachable(base: &str, e: impl std::fmt::Display) -> SqlError {
    SqlError {
        kind: ErrorKind::Runtime,
        message: format!(
            "cannot reach the Quiver server at {base} ({e}); is `quiver server` running there?"
        ),
        position: None,
    }
}

impl Remote {
    /// Checks that `url` answers as a Quiver (or ksqlDB-shaped) SQL API.
    pub async fn connect(url: &str) -> anyhow::Result<Remote> {
        let base = url.trim_end_matches('/').to_owned();
        if base.starts_with("https://") {
            bail!(
                "--server {url}: the shell speaks plain HTTP to the server's SQL API; use \
                 http://HOST:PORT (port 8088 unless the server was given --http-port)"
            );
        }
        let base = if base.starts_with("http://") {
            base
        } else if base.contains("://") {
            bail!("--server {url}: give the SQL API as http://HOST:PORT");
        } else {
            format!("http://{base}")
        };
        let client = reqwest::Client::builder()
            .build()
            .context("cannot set up an HTTP client")?;
        let info = client
            .get(format!("{base}/info"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", unreachable(&base, e)))?;
        if !info.status().is_success() {
            bail!(
                "{base}/info answered {}: is this a Quiver server's SQL API (the ready line of \
                 `quiver server` shows it)?",
                info.status()
            );
        }
        Ok(Remote {
            base,
            client,
            properties: Mutex::new(BTreeMap::new()),
        })
    }

    fn properties(&self) -> BTreeMap<String, String> {
        self.properties
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Runs one statement on the server.
    pub async fn run(&self, s: &Parsed) -> Result<Reply, SqlError> {
        match &s.statement {
            Statement::Set { name, value } => {
                if name == "auto.offset.reset" && !matches!(value.as_str(), "earliest" | "latest") {
                    return Err(SqlError {
                        kind: ErrorKind::Statement,
                        message: format!(
                            "auto.offset.reset is 'earliest' or 'latest', not '{value}'"
                        ),
                        position: Some(s.position),
                    });
                }
                if let Ok(mut p) = self.properties.lock() {
                    p.insert(name.clone(), value.clone());
                }
                Ok(Reply::Message(format!("'{name}' set to '{value}'")))
            }
            Statement::Unset(name) => {
                if let Ok(mut p) = self.properties.lock() {
                    p.remove(name);
                }
                Ok(Reply::Message(format!("'{name}' unset")))
            }
            Statement::Select(q) => self.query(s, q.emit.is_some()).await,
            Statement::Print { .. } => self.query(s, true).await,
            _ => self.ksql(s).await,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<reqwest::Response, SqlError> {
        self.client
            .post(format!("{}{path}", self.base))
            .json_body(&body)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, e))
    }

    async fn ksql(&self, s: &Parsed) -> Result<Reply, SqlError> {
        let response = self
            .post(
                "/ksql",
                json!({ "ksql": s.text, "streamsProperties": self.properties() }),
            )
            .await?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(&self.base, e))?;
        let value: Value = serde_json::from_slice(&body).map_err(|_| bad_answer(&body))?;
        if !status.is_success() {
            return Err(server_error(&value, status, s.position));
        }
        let Some(result) = value.as_array().and_then(|a| a.first()) else {
            return Err(bad_answer(&body));
        };
        if result["@type"] == "rows" {
            let header = strings(&result["columnNames"]);
            let rows = result["rows"]
                .as_array()
                .map(|rows| rows.iter().map(cells).collect())
                .unwrap_or_default();
            return Ok(Reply::Rows { header, rows });
        }
        Ok(Reply::Message(
            result["commandStatus"]["message"]
                .as_str()
                .unwrap_or("done")
                .to_owned(),
        ))
    }

    async fn query(&self, s: &Parsed, push: bool) -> Result<Reply, SqlError> {
        let response = self
            .post(
                "/query-stream",
                json!({ "sql": s.text, "properties": self.properties() }),
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            let value: Value = serde_json::from_slice(&body).map_err(|_| bad_answer(&body))?;
            return Err(server_error(&value, status, s.position));
        }
        let mut stream = RowStream {
            header: Vec::new(),
            response,
            pending: Vec::new(),
            lines: VecDeque::new(),
            base: self.base.clone(),
        };
        let Some(first) = stream.line().await? else {
            return Err(bad_answer(b"(nothing)"));
        };
        if let Some(m) = first["message"].as_str().filter(|_| first.is_object()) {
            return Ok(Reply::Message(m.to_owned()));
        }
        stream.header = strings(&first["columnNames"]);
        if push {
            return Ok(Reply::Stream(stream));
        }
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await {
            rows.push(row?);
        }
        Ok(Reply::Rows {
            header: stream.header,
            rows,
        })
    }
}

/// Rows of `POST /query-stream` as they arrive.
pub struct RowStream {
    pub header: Vec<String>,
    response: reqwest::Response,
    pending: Vec<u8>,
    lines: VecDeque<Vec<u8>>,
    base: String,
}

impl RowStream {
    /// The next JSON line, `None` at the end of the answer.
    async fn line(&mut self) -> Result<Option<Value>, SqlError> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|_| bad_answer(&line));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            let Some(chunk) = chunk else {
                let rest = std::mem::take(&mut self.pending);
                if rest.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.lines.push_back(rest);
                continue;
            };
            self.pending.extend_from_slice(&chunk);
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if !line.iter().all(u8::is_ascii_whitespace) {
                    self.lines.push_back(line);
                }
            }
        }
    }

    /// The next row's cells, `None` when the query has ended.
    pub async fn next(&mut self) -> Option<Result<Vec<String>, SqlError>> {
        match self.line().await {
            Ok(None) => None,
            Ok(Some(Value::Array(row))) => Some(Ok(row.iter().map(cell).collect())),
            Ok(Some(other)) => Some(Err(SqlError {
                kind: ErrorKind::Runtime,
                message: other["message"]
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
                position: None,
            })),
            Err(e) => Some(Err(e)),
        }
    }
}

/// `.json(…)` without reqwest's `json` feature: the body serialized here.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(cell).collect())
        .unwrap_or_default()
}

fn cells(row: &Value) -> Vec<String> {
    row.as_array()
        .map(|a| a.iter().map(cell).collect())
        .unwrap_or_default()
}

/// A JSON value as a cell: text as it is, null as `null`, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bad_answer(body: &[u8]) -> SqlError {
    SqlError {
        kind: ErrorKind::Runtime,
        message: format!(
            "the server's answer is not what a Quiver server sends: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
        position: None,
    }
}

/// The server's statement error, its position moved from the statement to the script.
fn server_error(v: &Value, status: reqwest::StatusCode, statement: Position) -> SqlError {
    let message = v["message"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_owned);
    let kind = if status.is_client_error() {
        ErrorKind::Statement
    } else {
        ErrorKind::Runtime
    };
    let position = match (v["line"].as_u64(), v["column"].as_u64()) {
        (Some(line), Some(column)) => Some(if line <= 1 {
            Position {
                line: statement.line,
                column: statement.column + column.saturating_sub(1),
            }
        } else {
            Position {
                line: statement.line + line - 1,
                column,
            }
        }),
        _ => None,
    };
    SqlError {
        kind,
        message,
        position,
    }
}
