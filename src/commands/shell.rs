//! `quiver shell`: Quiver SQL typed at a prompt, or run from a file (`-f`) or standard input.
//! Statements end with `;` and may span lines; results print as tables, a push query's rows
//! as they arrive until its LIMIT or Ctrl-C (which cancels the query, not the shell).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quiver_broker::Broker;
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::util::display::{ArrayFormatter, FormatOptions};
use quiver_sql::{Output, Parsed, SqlEngine, SqlError};

use crate::data_dir::{self, Intent};
use crate::table::Table;

#[derive(Debug, clap::Args)]
#[command(after_help = shell_help())]
pub struct ShellArgs {
    /// Run the statements of this file, then exit (stops at the first that fails)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Data directory to open in this process, the one `quiver server` uses (QUIVER_LOG_DIRS
    /// also sets it); only while no server has it open [default: ./quiver-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
    let config = crate::config::resolve(None, std::env::vars_os(), args.data_dir.as_deref())?;
    data_dir::check(&config.data_dir, Intent::Create)?;
    let data = config.data_dir.clone();
    let broker = Broker::open(config).await?;
    let engine = SqlEngine::open(&broker, &data)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = match &args.file {
        Some(file) => run_file(&engine, file).await,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read standard input")?;
            run_script(&engine, &text, Path::new(".")).await
        }
        None => interactive(&engine).await,
    };
    engine
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    broker.shutdown().await?;
    result
}

async fn run_file(engine: &SqlEngine, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the script {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    run_script(engine, &text, base)
        .await
        .with_context(|| format!("in {}", file.display()))
}

/// Runs a script one statement at a time (RUN SCRIPT reads the named file, relative to
/// `base`); stops at the first error.
async fn run_script(engine: &SqlEngine, text: &str, base: &Path) -> Result<()> {
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
async fn run_statement(engine: &SqlEngine, statement: &Parsed) -> Result<(), SqlError> {
    {
        let output = engine.execute_parsed(statement).await?;
        match output {
            Output::Message(m) => println!("{m}"),
            Output::Rows { schema, batches } => {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                print!("{}", render(&schema, &batches));
                println!("({rows} row{})", if rows == 1 { "" } else { "s" });
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
                            for line in lines(&batch) {
                                println!("{line}");
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
    }
    Ok(())
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

/// Rows as lines of cells separated by ` | `.
fn lines(batch: &RecordBatch) -> Vec<String> {
    cells(batch)
        .into_iter()
        .map(|row| row.join(" | "))
        .collect()
}

/// A finite result as an aligned table.
fn render(schema: &quiver_engine::arrow::datatypes::Schema, batches: &[RecordBatch]) -> String {
    let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut table = Table::new(&header);
    for row in batches.iter().flat_map(cells) {
        table.row(row);
    }
    table.to_string()
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

async fn interactive(engine: &SqlEngine) -> Result<()> {
    println!("Quiver SQL. Statements end with ';'. Ctrl-C cancels a running query; Ctrl-D exits.");
    let stdin = std::io::stdin();
    let mut buffer = String::new();
    loop {
        print!(
            "{}",
            if buffer.is_empty() {
                "quiver> "
            } else {
                "     -> "
            }
        );
        std::io::stdout().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            break;
        }
        buffer.push_str(&line);
        if buffer.trim().is_empty() {
            buffer.clear();
            continue;
        }
        if !complete(&buffer) {
            continue;
        }
        let text = std::mem::take(&mut buffer);
        let statements = match quiver_sql::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        for s in statements {
            let result = match &s.statement {
                quiver_sql::Statement::RunScript(path) => run_file(engine, Path::new(path))
                    .await
                    .map_err(|e| format!("{e:#}")),
                _ => run_statement(engine, &s).await.map_err(|e| e.to_string()),
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
