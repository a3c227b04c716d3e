//! `quiver shell`: Quiver SQL typed at a prompt, or run from a file (`-f`) or standard input.
//! Statements end with `;` and may span lines; results print as tables, a push query's rows
//! as they arrive until its LIMIT or Ctrl-C (which cancels the query, not the shell).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quiver_broker::Broker;
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::util::display::{ArrayFormatter, FormatOptions};
use quiver_sql::{Output, Parsed, SqlEngine, SqlError};

use crate::data_dir::{self, Intent};
use crate::sql_client::{Remote, Reply};
use crate::table::Table;

#[derive(Debug, clap::Args)]
#[command(after_help = shell_help())]
pub struct ShellArgs {
    /// Run the statements of this file, then exit (stops at the first that fails)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Data directory to open in this process, the one `quiver server` uses (QUIVER_LOG_DIRS
    /// also sets it); only while no server has it open [default: ./quiver-data]
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,

    /// A running `quiver server`'s SQL API to send the statements to, e.g.
    /// http://localhost:8088 (its ready line shows it)
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

fn shell_help() -> &'static str {
    "Statements end with ';'. Without -f and with standard input not a terminal, the statements \
     are read from standard input. Example:\n\n  CREATE STREAM pageviews (user_id STRING, page \
     STRING) WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON', PARTITIONS=1);\n  SET \
     'auto.offset.reset' = 'earliest';\n  SELECT user_id, COUNT(*) AS views FROM pageviews \
     WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES LIMIT 10;"
}

pub async fn run(args: ShellArgs) -> Result<()> {
    check(&args)?;
    if let Some(url) = &args.server {
        let backend = Backend::Remote(Remote::connect(url).await?);
        return run_with(&backend, &args).await;
    }
    let config = crate::config::resolve(None, std::env::vars_os(), args.data_dir.as_deref())?;
    data_dir::check(&config.data_dir, Intent::Create)?;
    let data = config.data_dir.clone();
    let broker = Broker::open(config).await?;
    let engine = SqlEngine::open(&broker, &data)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let backend = Backend::Local(engine);
    let result = run_with(&backend, &args).await;
    if let Backend::Local(engine) = &backend {
        engine
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    broker.shutdown().await?;
    result
}

async fn run_with(backend: &Backend, args: &ShellArgs) -> Result<()> {
    match &args.file {
        Some(file) => run_file(backend, file).await,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read standard input")?;
            run_script(backend, &text, Path::new(".")).await
        }
        None => interactive(backend).await,
    }
}

/// Where statements run: a SQL engine on a data directory opened by this process, or a
/// server's SQL API.
enum Backend {
    Local(SqlEngine),
    Remote(Remote),
}

async fn run_file(engine: &Backend, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the script {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    run_script(engine, &text, base)
        .await
        .with_context(|| format!("in {}", file.display()))
}

/// Runs a script one statement at a time (RUN SCRIPT reads the named file, relative to
/// `base`); stops at the first error.
async fn run_script(engine: &Backend, text: &str, base: &Path) -> Result<()> {
    let statements = quiver_sql::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    for s in statements {
        if let quiver_sql::Statement::RunScript(path) = &s.statement {
            let path = base.join(path);
            Box::pin(run_file(engine, &path)).await?;
            continue;
        }
        run_statement(engine, &s)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Runs one statement and prints what it gives.
async fn run_statement(backend: &Backend, statement: &Parsed) -> Result<(), SqlError> {
    let engine = match backend {
        Backend::Local(engine) => engine,
        Backend::Remote(remote) => return print_reply(remote.run(statement).await?).await,
    };
    let output = engine.execute_parsed(statement).await?;
    match output {
        Output::Message(m) => println!("{m}"),
        Output::Rows { schema, batches } => {
            let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            print_table(&header, batches.iter().flat_map(cells));
        }
        Output::Push(mut push) => {
            let header: Vec<&str> = push
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            println!("{}", header.join(" | "));
            let mut rows = 0usize;
            loop {
                let next = tokio::select! {
                    next = push.next() => next,
                    _ = tokio::signal::ctrl_c() => {
                        push.cancel().await;
                        println!("(cancelled after {rows} rows)");
                        break;
                    }
                };
                match next {
                    Some(Ok(batch)) => {
                        rows += batch.num_rows();
                        for line in cells(&batch) {
                            println!("{}", line.join(" | "));
                        }
                        let _ = std::io::stdout().flush();
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        println!("({rows} row{})", if rows == 1 { "" } else { "s" });
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Prints what a server answered.
async fn print_reply(reply: Reply) -> Result<(), SqlError> {
    match reply {
        Reply::Message(m) => println!("{m}"),
        Reply::Rows { header, rows } => {
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            print_table(&header, rows.into_iter());
        }
        Reply::Stream(mut stream) => {
            println!("{}", stream.header.join(" | "));
            let mut rows = 0usize;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::signal::ctrl_c() => {
                        // Hanging up ends the query on the server.
                        drop(stream);
                        println!("(cancelled after {rows} rows)");
                        break;
                    }
                };
                match next {
                    Some(Ok(row)) => {
                        rows += 1;
                        println!("{}", row.join(" | "));
                        let _ = std::io::stdout().flush();
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        println!("({rows} row{})", if rows == 1 { "" } else { "s" });
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A finite result as an aligned table and its row count.
fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut table = Table::new(header);
    let mut n = 0usize;
    for row in rows {
        table.row(row);
        n += 1;
    }
    print!("{table}");
    println!("({n} row{})", if n == 1 { "" } else { "s" });
}

/// Each row's cells as text (nulls as `null`). A column arrow cannot format shows `?` rather
/// than shifting the columns after it.
fn cells(batch: &RecordBatch) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("null");
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            formatters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map_or_else(|| "?".to_owned(), |f| f.value(i).to_string())
                })
                .collect()
        })
        .collect()
}

/// Whether `text` holds complete statements (its last token is a `;`).
fn complete(text: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = sqlparser::dialect::GenericDialect {};
    match Tokenizer::new(&dialect, text).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .rev()
            .find(|t| !matches!(t, Token::Whitespace(_)))
            .is_some_and(|t| *t == Token::SemiColon),
        // An open quote: the statement goes on.
        Err(_) => false,
    }
}

/// Where the prompt keeps its history between sessions.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".quiver_history"))
}

async fn interactive(backend: &Backend) -> Result<()> {
    use rustyline::error::ReadlineError;
    let where_ = match backend {
        Backend::Local(_) => "this data directory".to_owned(),
        Backend::Remote(r) => r.base.clone(),
    };
    println!(
        "Quiver SQL on {where_}. Statements end with ';'. Ctrl-C cancels a running query (or \
         the line being typed); Ctrl-D exits."
    );
    let mut editor = rustyline::DefaultEditor::new().context("cannot set up line editing")?;
    let history = history_file();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let editor = std::sync::Arc::new(std::sync::Mutex::new(editor));
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "quiver> "
        } else {
            "     -> "
        };
        let e = editor.clone();
        // Line editing blocks: it runs beside the runtime, which goes on serving queries.
        let line = tokio::task::spawn_blocking(move || match e.lock() {
            Ok(mut e) => e.readline(prompt),
            Err(_) => Err(ReadlineError::Eof),
        })
        .await
        .context("the line editor stopped")?;
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => {
                println!();
                break;
            }
            Err(e) => return Err(e).context("cannot read the line typed"),
        };
        buffer.push_str(&line);
        buffer.push('\n');
        if buffer.trim().is_empty() {
            buffer.clear();
            continue;
        }
        if !complete(&buffer) {
            continue;
        }
        let text = std::mem::take(&mut buffer);
        if let Ok(mut e) = editor.lock() {
            let _ = e.add_history_entry(text.trim_end());
            if let Some(h) = &history {
                let _ = e.save_history(h);
            }
        }
        let statements = match quiver_sql::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        for s in statements {
            let result = match &s.statement {
                quiver_sql::Statement::RunScript(path) => run_file(backend, Path::new(path))
                    .await
                    .map_err(|e| format!("{e:#}")),
                _ => run_statement(backend, &s).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    Ok(())
}

/// Fails with a hint when the shell is given something it cannot use.
pub fn check(args: &ShellArgs) -> Result<()> {
    if let Some(f) = &args.file
        && !f.is_file()
    {
        bail!("no script at {}", f.display());
    }
    Ok(())
}
