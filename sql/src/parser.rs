//! Quiver's SQL dialect: ksqlDB's streaming statements and clauses over standard SQL.
//!
//! [`parse`] splits a script into statements and parses each. Streaming statements (`CREATE
//! STREAM`, `SHOW`, `TERMINATE`, `PRINT`, …) are parsed here, on sqlparser's public `Parser`
//! API; every `SELECT` is handed to sqlparser's `parse_query`, after the two clauses standard
//! SQL lacks are taken out of its tokens: `WINDOW TUMBLING|HOPPING|SESSION (…)` (anywhere
//! after `FROM`) and `EMIT CHANGES|FINAL`. Nothing works on the SQL text itself, so every
//! error carries the line and column of the token it is about.

use std::fmt;

use sqlparser::ast::{Expr, Ident, LimitClause, ObjectName, Query, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// A position in a script: line and column, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl From<Location> for Position {
    fn from(l: Location) -> Position {
        Position {
            line: l.line,
            column: l.column,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A statement that does not parse: what was wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub position: Position,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {})", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    fn at(message: impl Into<String>, position: impl Into<Position>) -> ParseError {
        ParseError {
            message: message.into(),
            position: position.into(),
        }
    }

    /// sqlparser's error, whose message ends with the location it was found at.
    fn from_sqlparser(e: ParserError, fallback: Position) -> ParseError {
        let text = match e {
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
            ParserError::RecursionLimitExceeded => {
                return ParseError::at("the statement nests too deeply", fallback);
            }
        };
        if let Some((message, location)) = text.rsplit_once(" at Line: ")
            && let Some((line, column)) = location.split_once(", Column: ")
            && let (Ok(line), Ok(column)) = (line.trim().parse(), column.trim().parse())
            && line > 0
        {
            return ParseError::at(message, Position { line, column });
        }
        let message = text
            .rsplit_once(" at Line: ")
            .map_or(text.as_str(), |(m, _)| m);
        ParseError::at(message, fallback)
    }
}

/// Stream or table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stream,
    Table,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A column of `CREATE STREAM|TABLE (…)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: Ident,
    pub data_type: sqlparser::ast::DataType,
    /// `KEY` (a stream's key column) or `PRIMARY KEY` (a table's).
    pub key: bool,
    pub position: Position,
}

/// A `WITH (name = value, …)` property.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// Upper case, as ksqlDB writes them (`KAFKA_TOPIC`).
    pub name: String,
    /// As written (connector configs' keys are case-sensitive: `connector.class`).
    pub written: String,
    pub value: PropertyValue,
    pub position: Position,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    String(String),
    Number(String),
    Bool(bool),
}

impl PropertyValue {
    /// The value as text (a number's digits, `true`/`false`).
    pub fn text(&self) -> String {
        match self {
            PropertyValue::String(s) | PropertyValue::Number(s) => s.clone(),
            PropertyValue::Bool(b) => b.to_string(),
        }
    }
}

/// A window of `WINDOW …`: sizes in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowClause {
    Tumbling {
        size_ms: i64,
        grace_ms: Option<i64>,
    },
    Hopping {
        size_ms: i64,
        advance_ms: i64,
        grace_ms: Option<i64>,
    },
    Session {
        gap_ms: i64,
        grace_ms: Option<i64>,
    },
}

/// A join's `WITHIN n UNIT [GRACE PERIOD n UNIT]` (or `WITHIN (before, after)`): how far
/// apart in event time two streams' records may be and still join, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWithin {
    /// How far the right side's record may be before the left's.
    pub before_ms: i64,
    /// How far it may be after.
    pub after_ms: i64,
    pub grace_ms: Option<i64>,
}

/// `EMIT CHANGES` or `EMIT FINAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    Changes,
    Final,
}

/// The `WINDOW` clause of a subquery (`FROM s JOIN (SELECT MAX(price) … WINDOW TUMBLING (…)
/// GROUP BY …) m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerWindow {
    /// Where the `SELECT` of the subquery it belongs to is: the clause's window groups that
    /// select's rows.
    pub select: Position,
    /// How many parentheses deep that select is.
    pub depth: usize,
    pub window: WindowClause,
    /// Where the clause is.
    pub position: Position,
}

/// A `SELECT` with the streaming clauses taken out.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingQuery {
    /// The standard part, as sqlparser parsed it (without its `LIMIT`, see `limit`).
    pub query: Box<Query>,
    /// The query's own `WINDOW` clause.
    pub window: Option<(WindowClause, Position)>,
    /// The `WINDOW` clauses of its subqueries, in the order they are written.
    pub inner_windows: Vec<InnerWindow>,
    /// The joins' `WITHIN` clauses, in the order the joins are written.
    pub within: Vec<(JoinWithin, Position)>,
    /// `PARTITION BY column, …`: the output's key columns (where the clause is).
    pub partition_by: Option<(Vec<Ident>, Position)>,
    /// `LATE DATA TO 'topic'`: where records that come after their window (or join buffer)
    /// closed go, instead of being counted and dropped.
    pub late_data: Option<(String, Position)>,
    pub emit: Option<Emit>,
    /// `LIMIT n`: a push query ends after n rows.
    pub limit: Option<u64>,
    /// Where the statement starts.
    pub position: Position,
}

/// What `SHOW`/`LIST` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    Streams,
    Tables,
    Topics,
    Queries,
    Properties,
    Connectors,
}

/// Which side of Kafka a connector is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    Source,
    Sink,
}

/// One statement of Quiver SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name (columns) WITH (…)`.
    CreateSource {
        kind: SourceKind,
        name: Ident,
        or_replace: bool,
        if_not_exists: bool,
        columns: Vec<ColumnDef>,
        properties: Vec<Property>,
    },
    /// `CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name [WITH (…)] AS SELECT …`.
    CreateAs {
        kind: SourceKind,
        name: Ident,
        or_replace: bool,
        if_not_exists: bool,
        properties: Vec<Property>,
        query: StreamingQuery,
    },
    /// `INSERT INTO name SELECT …`: a persistent query into an existing stream.
    InsertSelect {
        target: Ident,
        query: StreamingQuery,
    },
    /// `INSERT INTO name [(columns)] VALUES (…)[, (…)]`.
    InsertValues {
        target: Ident,
        columns: Vec<Ident>,
        rows: Vec<Vec<Expr>>,
    },
    /// A `SELECT`: a push query with `EMIT`, a pull query on a table or a query over a
    /// stream's history without.
    Select(StreamingQuery),
    Show(ShowWhat),
    Describe {
        name: Ident,
        extended: bool,
    },
    Explain(StreamingQuery),
    Drop {
        kind: SourceKind,
        name: Ident,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `TERMINATE id` (`None`: `TERMINATE ALL`).
    Terminate(Option<String>),
    Print {
        topic: String,
        from_beginning: bool,
        limit: Option<u64>,
    },
    Set {
        name: String,
        value: String,
    },
    Unset(String),
    RunScript(String),
    /// `CREATE SOURCE|SINK CONNECTOR [IF NOT EXISTS] name WITH ('key' = 'value', …)`: a
    /// connector with the keys of a connector config file.
    CreateConnector {
        kind: ConnectorKind,
        name: Ident,
        if_not_exists: bool,
        properties: Vec<Property>,
    },
    /// `CREATE SINK [IF NOT EXISTS] name [WITH (…)] AS SELECT …`: a persistent query whose
    /// rows a sink connector writes out (to Parquet, by default). The WITH keys are a sink
    /// connector's config keys, plus `kafka_topic` and `partitions` for the topic between the
    /// two.
    CreateSinkAs {
        name: Ident,
        if_not_exists: bool,
        properties: Vec<Property>,
        query: StreamingQuery,
    },
    /// `DROP SINK [IF EXISTS] name [DELETE TOPIC]`: the connector, the query and the stream
    /// `CREATE SINK … AS SELECT` made.
    DropSink {
        name: Ident,
        if_exists: bool,
        delete_topic: bool,
    },
    /// `DESCRIBE CONNECTOR name`.
    DescribeConnector(Ident),
    /// `DROP CONNECTOR [IF EXISTS] name`.
    DropConnector {
        name: Ident,
        if_exists: bool,
    },
}

/// A parsed statement with its text and where it starts in the script.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub statement: Statement,
    /// The statement's text, without the `;` that ends it.
    pub text: String,
    pub position: Position,
}

/// Parses a script of statements separated by `;` (the last may end without one). Stops at the
/// first statement that does not parse.
pub fn parse(sql: &str) -> Result<Vec<Parsed>, ParseError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            ParseError::at(
                e.message,
                Position {
                    line: e.location.line,
                    column: e.location.column,
                },
            )
        })?;
    let lines = LineIndex::new(sql);
    let mut out = Vec::new();
    for statement in split_statements(tokens) {
        let Some(first) = statement.iter().find(|t| !is_blank(&t.token)) else {
            continue;
        };
        let last = statement
            .iter()
            .rev()
            .find(|t| !is_blank(&t.token))
            .unwrap_or(first);
        let position = Position::from(first.span.start);
        let text = lines.slice(sql, first.span.start, last.span.end).to_owned();
        let parsed = parse_statement(statement, position)?;
        out.push(Parsed {
            statement: parsed,
            text,
            position,
        });
    }
    Ok(out)
}

/// Byte offsets of lines, to cut a statement's text out of the script by token locations.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn offset(&self, text: &str, l: Location) -> usize {
        let Some(start) = (l.line as usize)
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
        else {
            return text.len();
        };
        let line = &text[*start..];
        let skip = (l.column as usize).saturating_sub(1);
        start + line.char_indices().nth(skip).map_or(line.len(), |(i, _)| i)
    }

    /// The text from `from` up to `to` (exclusive).
    fn slice<'a>(&self, text: &'a str, from: Location, to: Location) -> &'a str {
        let a = self.offset(text, from);
        let b = self.offset(text, to).max(a);
        &text[a..b]
    }
}

fn is_blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// Splits tokens at `;` outside parentheses.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0i32;
    for t in tokens {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                out.push(std::mem::take(&mut current));
                depth = 0;
                continue;
            }
            Token::EOF => continue,
            _ => {}
        }
        current.push(t);
    }
    out.push(current);
    out
}

fn word_is(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// The parser of one statement: sqlparser's, plus helpers for words that are not its keywords.
struct P {
    parser: Parser<'static>,
    /// Just past the statement's last token: where "found the end" errors point.
    end: Position,
}

static DIALECT: GenericDialect = GenericDialect {};

impl P {
    fn new(tokens: Vec<TokenWithSpan>, start: Position) -> P {
        let end = tokens
            .iter()
            .rev()
            .find(|t| !is_blank(&t.token))
            .map_or(start, |t| t.span.end.into());
        P {
            parser: Parser::new(&DIALECT).with_tokens_with_locations(tokens),
            end,
        }
    }

    fn peek(&self) -> TokenWithSpan {
        self.parser.peek_token()
    }

    fn here(&self) -> Position {
        let t = self.peek();
        if t.token == Token::EOF || t.span.start.line == 0 {
            return self.end;
        }
        t.span.start.into()
    }

    fn peek_word(&self, word: &str) -> bool {
        word_is(&self.peek().token, word)
    }

    /// Consumes `word` (a keyword or not) if it comes next.
    fn word(&mut self, word: &str) -> bool {
        if self.peek_word(word) {
            self.parser.next_token();
            true
        } else {
            false
        }
    }

    /// `DELETE TOPIC`, if it comes next.
    fn delete_topic(&mut self) -> Result<bool, ParseError> {
        if !self.word("DELETE") {
            return Ok(false);
        }
        self.expect_word("TOPIC")?;
        Ok(true)
    }

    fn expect_word(&mut self, word: &str) -> Result<(), ParseError> {
        if self.word(word) {
            Ok(())
        } else {
            Err(self.expected(word))
        }
    }

    fn expected(&self, what: &str) -> ParseError {
        let t = self.peek();
        let found = if t.token == Token::EOF {
            "the end of the statement".to_owned()
        } else {
            format!("'{}'", t.token)
        };
        ParseError::at(format!("expected {what}, found {found}"), self.here())
    }

    fn sql<T>(&self, r: Result<T, ParserError>) -> Result<T, ParseError> {
        r.map_err(|e| ParseError::from_sqlparser(e, self.here()))
    }

    /// Runs one of sqlparser's parse functions.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Parser<'static>) -> Result<T, ParserError>,
    ) -> Result<T, ParseError> {
        let r = f(&mut self.parser);
        self.sql(r)
    }

    fn expect(&mut self, t: &Token) -> Result<(), ParseError> {
        self.with(|q| q.expect_token(t)).map(|_| ())
    }

    fn ident(&mut self) -> Result<Ident, ParseError> {
        if !matches!(self.peek().token, Token::Word(_)) {
            return Err(self.expected("a name"));
        }
        let r = self.parser.parse_identifier();
        self.sql(r)
    }

    fn end(&self) -> Result<(), ParseError> {
        if self.peek().token == Token::EOF {
            Ok(())
        } else {
            Err(self.expected("the end of the statement"))
        }
    }

    /// A name or a quoted string (`PRINT 'topic'`, `SET 'prop'`).
    fn name_or_string(&mut self) -> Result<String, ParseError> {
        match self.peek().token {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => {
                self.parser.next_token();
                Ok(s)
            }
            Token::Word(_) => {
                let name = self.with(|q| q.parse_object_name(false))?;
                Ok(name.to_string())
            }
            _ => Err(self.expected("a name or a quoted string")),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.peek().token {
            Token::SingleQuotedString(s) => {
                self.parser.next_token();
                Ok(s)
            }
            _ => Err(self.expected("a quoted string")),
        }
    }

    fn uint(&mut self) -> Result<u64, ParseError> {
        match self.peek().token {
            Token::Number(n, _) => {
                let here = self.here();
                self.parser.next_token();
                n.parse()
                    .map_err(|_| ParseError::at(format!("'{n}' is not a whole number"), here))
            }
            _ => Err(self.expected("a number")),
        }
    }

    /// `WITH (name = value, …)`, if it comes next.
    fn properties(&mut self) -> Result<Vec<Property>, ParseError> {
        if !self.parser.parse_keyword(Keyword::WITH) {
            return Ok(Vec::new());
        }
        self.expect(&Token::LParen)?;
        let mut out = Vec::new();
        loop {
            let position = self.here();
            let name = match self.peek().token {
                Token::Word(w) => {
                    self.parser.next_token();
                    w.value
                }
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => {
                    self.parser.next_token();
                    s
                }
                _ => return Err(self.expected("a property name")),
            };
            self.expect(&Token::Eq)?;
            let value = match self.peek().token {
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => {
                    PropertyValue::String(s)
                }
                Token::Number(n, _) => PropertyValue::Number(n),
                Token::Word(w) if w.value.eq_ignore_ascii_case("true") => PropertyValue::Bool(true),
                Token::Word(w) if w.value.eq_ignore_ascii_case("false") => {
                    PropertyValue::Bool(false)
                }
                _ => return Err(self.expected("a quoted string, a number, TRUE or FALSE")),
            };
            self.parser.next_token();
            if out.iter().any(|p: &Property| p.name == name.to_uppercase()) {
                return Err(ParseError::at(
                    format!("the property {} is given twice", name.to_uppercase()),
                    position,
                ));
            }
            out.push(Property {
                written: name.clone(),
                name: name.to_uppercase(),
                value,
                position,
            });
            if self.parser.consume_token(&Token::Comma) {
                continue;
            }
            self.expect(&Token::RParen)?;
            return Ok(out);
        }
    }

    /// `n UNIT` as milliseconds.
    fn duration(&mut self) -> Result<i64, ParseError> {
        let here = self.here();
        let n = self.uint()?;
        let unit_at = self.here();
        let Token::Word(w) = self.peek().token else {
            return Err(self.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"));
        };
        let per = match w.value.to_ascii_uppercase().as_str() {
            "MILLISECOND" | "MILLISECONDS" => 1,
            "SECOND" | "SECONDS" => 1_000,
            "MINUTE" | "MINUTES" => 60_000,
            "HOUR" | "HOURS" => 3_600_000,
            "DAY" | "DAYS" => 86_400_000,
            other => {
                return Err(ParseError::at(
                    format!(
                        "'{other}' is not a time unit; use MILLISECONDS, SECONDS, MINUTES, HOURS \
                         or DAYS"
                    ),
                    unit_at,
                ));
            }
        };
        self.parser.next_token();
        i64::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(per))
            .ok_or_else(|| ParseError::at("the duration is too long", here))
    }

    /// `, GRACE PERIOD n UNIT` items and the closing parenthesis of a window.
    fn window_tail(&mut self) -> Result<Option<i64>, ParseError> {
        let mut grace = None;
        while self.parser.consume_token(&Token::Comma) {
            if self.word("GRACE") {
                self.expect_word("PERIOD")?;
                grace = Some(self.duration()?);
            } else if self.word("RETENTION") {
                // Kept state is bounded by the grace period here; a retention is accepted and
                // has nothing more to bound.
                self.duration()?;
            } else {
                return Err(self.expected("GRACE PERIOD or RETENTION"));
            }
        }
        self.expect(&Token::RParen)?;
        Ok(grace)
    }

    /// After `WINDOW`: `TUMBLING (SIZE …)`, `HOPPING (SIZE …, ADVANCE BY …)` or `SESSION (…)`.
    fn window(&mut self) -> Result<WindowClause, ParseError> {
        if self.word("TUMBLING") {
            self.expect(&Token::LParen)?;
            self.expect_word("SIZE")?;
            let size_ms = self.duration()?;
            let grace_ms = self.window_tail()?;
            return Ok(WindowClause::Tumbling { size_ms, grace_ms });
        }
        if self.word("HOPPING") {
            self.expect(&Token::LParen)?;
            self.expect_word("SIZE")?;
            let size_ms = self.duration()?;
            self.expect(&Token::Comma)?;
            self.expect_word("ADVANCE")?;
            self.expect_word("BY")?;
            let advance_ms = self.duration()?;
            let grace_ms = self.window_tail()?;
            return Ok(WindowClause::Hopping {
                size_ms,
                advance_ms,
                grace_ms,
            });
        }
        if self.word("SESSION") {
            self.expect(&Token::LParen)?;
            let gap_ms = self.duration()?;
            let grace_ms = self.window_tail()?;
            return Ok(WindowClause::Session { gap_ms, grace_ms });
        }
        Err(self.expected("TUMBLING, HOPPING or SESSION"))
    }

    /// After `WITHIN`: `n UNIT` or `(before, after)`, then `GRACE PERIOD n UNIT` optionally.
    fn within(&mut self) -> Result<JoinWithin, ParseError> {
        let (before_ms, after_ms) = if self.parser.consume_token(&Token::LParen) {
            let before = self.duration()?;
            self.expect(&Token::Comma)?;
            let after = self.duration()?;
            self.expect(&Token::RParen)?;
            (before, after)
        } else {
            let d = self.duration()?;
            (d, d)
        };
        let grace_ms = if self.word("GRACE") {
            self.expect_word("PERIOD")?;
            Some(self.duration()?)
        } else {
            None
        };
        Ok(JoinWithin {
            before_ms,
            after_ms,
            grace_ms,
        })
    }
}

/// Takes `EMIT CHANGES|FINAL` out of a query's tokens (at the query's own level: not inside
/// parentheses), and every `WINDOW TUMBLING|HOPPING|SESSION (…)` and join's `WITHIN` (at any
/// level), then parses the rest as standard SQL.
fn streaming_query(
    tokens: Vec<TokenWithSpan>,
    position: Position,
) -> Result<StreamingQuery, ParseError> {
    let mut rest = Vec::with_capacity(tokens.len());
    let mut window = None;
    let mut inner_windows: Vec<InnerWindow> = Vec::new();
    // Where the SELECT of each open level of parentheses is (index: depth), if it has one.
    let mut selects: Vec<Option<Position>> = vec![None];
    let mut within = Vec::new();
    let mut partition_by = None;
    let mut late_data = None;
    let mut emit = None;
    let mut depth = 0i32;
    let mut i = 0;
    let next_word = |tokens: &[TokenWithSpan], from: usize| {
        tokens[from..]
            .iter()
            .position(|t| !is_blank(&t.token))
            .map(|k| from + k)
    };
    while i < tokens.len() {
        let t = &tokens[i];
        match &t.token {
            Token::LParen => {
                depth += 1;
                selects.push(None);
            }
            Token::RParen => {
                depth -= 1;
                selects.pop();
                if selects.is_empty() {
                    selects.push(None);
                }
            }
            tok if word_is(tok, "SELECT") => {
                if let Some(level) = selects.last_mut() {
                    *level = Some(Position::from(t.span.start));
                }
            }
            _ => {}
        }
        if word_is(&t.token, "WINDOW") {
            let kind = next_word(&tokens, i + 1);
            // `WINDOW name AS (…)` is standard SQL; `WINDOW NAME (…)` is a window kind.
            if let Some(k) = kind
                && let Token::Word(w) = &tokens[k].token
                && !["TUMBLING", "HOPPING", "SESSION"]
                    .iter()
                    .any(|n| w.value.eq_ignore_ascii_case(n))
                && next_word(&tokens, k + 1).is_some_and(|p| tokens[p].token == Token::LParen)
            {
                return Err(ParseError::at(
                    format!(
                        "'{}' is not a kind of window; use TUMBLING, HOPPING or SESSION",
                        w.value
                    ),
                    tokens[k].span.start,
                ));
            }
            if kind.is_some_and(|k| {
                ["TUMBLING", "HOPPING", "SESSION"]
                    .iter()
                    .any(|w| word_is(&tokens[k].token, w))
            }) {
                let select = selects.last().copied().flatten();
                let taken = if depth == 0 {
                    window.is_some()
                } else {
                    inner_windows.iter().any(|w| Some(w.select) == select)
                };
                if taken {
                    return Err(ParseError::at(
                        "a query has one WINDOW clause",
                        t.span.start,
                    ));
                }
                // The clause runs to the parenthesis that closes its own.
                let mut end = kind.unwrap_or(i);
                let mut d = 0;
                while end < tokens.len() {
                    match tokens[end].token {
                        Token::LParen => d += 1,
                        Token::RParen => {
                            d -= 1;
                            if d == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    end += 1;
                }
                let clause: Vec<_> =
                    tokens[kind.unwrap_or(i)..(end + 1).min(tokens.len())].to_vec();
                let at = Position::from(t.span.start);
                let mut p = P::new(clause, at);
                let w = p.window()?;
                p.end()?;
                if depth == 0 {
                    window = Some((w, at));
                } else {
                    let Some(select) = select else {
                        return Err(ParseError::at(
                            "a WINDOW clause belongs to a SELECT … GROUP BY",
                            t.span.start,
                        ));
                    };
                    inner_windows.push(InnerWindow {
                        select,
                        depth: depth.unsigned_abs() as usize,
                        window: w,
                        position: at,
                    });
                }
                i = end + 1;
                continue;
            }
        }
        // `WITHIN GROUP (…)` is standard SQL; a join's WITHIN is followed by a duration. A
        // join in a subquery takes one too: the clauses are kept in the order they are
        // written, which is the order a bottom-up walk of the plan meets their joins (a
        // join's WITHIN comes after both of its inputs).
        if word_is(&t.token, "WITHIN") {
            let what = next_word(&tokens, i + 1);
            if let Some(k) =
                what.filter(|&k| matches!(tokens[k].token, Token::Number(..) | Token::LParen))
            {
                // The clause runs to the ON, USING or the next clause keyword (or the end of
                // the subquery it is in).
                let mut end = k;
                let mut d = 0;
                while end < tokens.len() {
                    match &tokens[end].token {
                        Token::LParen => d += 1,
                        Token::RParen if d == 0 => break,
                        Token::RParen => d -= 1,
                        tok if d == 0
                            && [
                                "ON",
                                "USING",
                                "WHERE",
                                "JOIN",
                                "LEFT",
                                "RIGHT",
                                "FULL",
                                "INNER",
                                "GROUP",
                                "WINDOW",
                                "EMIT",
                                "HAVING",
                                "LIMIT",
                                "PARTITION",
                                "LATE",
                            ]
                            .iter()
                            .any(|w| word_is(tok, w)) =>
                        {
                            break;
                        }
                        Token::SemiColon => break,
                        _ => {}
                    }
                    end += 1;
                }
                let at = Position::from(t.span.start);
                let mut p = P::new(tokens[k..end].to_vec(), at);
                let w = p.within()?;
                p.end()?;
                within.push((w, at));
                i = end;
                continue;
            }
        }
        if depth == 0
            && word_is(&t.token, "PARTITION")
            && next_word(&tokens, i + 1).is_some_and(|k| word_is(&tokens[k].token, "BY"))
        {
            let at = Position::from(t.span.start);
            if partition_by.is_some() {
                return Err(ParseError::at("a query has one PARTITION BY clause", at));
            }
            let from = next_word(&tokens, i + 1).map_or(i + 1, |k| k + 1);
            let mut end = from;
            while end < tokens.len()
                && !["EMIT", "LIMIT", "WINDOW", "GROUP", "HAVING", "LATE"]
                    .iter()
                    .any(|w| word_is(&tokens[end].token, w))
                && tokens[end].token != Token::SemiColon
            {
                end += 1;
            }
            let mut p = P::new(tokens[from..end].to_vec(), at);
            let mut columns = vec![p.ident()?];
            while p.parser.consume_token(&Token::Comma) {
                columns.push(p.ident()?);
            }
            if p.peek().token != Token::EOF {
                return Err(p.expected(
                    "a column name: PARTITION BY takes the output columns that become the key",
                ));
            }
            partition_by = Some((columns, at));
            i = end;
            continue;
        }
        if depth == 0
            && word_is(&t.token, "LATE")
            && let Some(data) =
                next_word(&tokens, i + 1).filter(|&k| word_is(&tokens[k].token, "DATA"))
        {
            let at = Position::from(t.span.start);
            if late_data.is_some() {
                return Err(ParseError::at("a query has one LATE DATA TO clause", at));
            }
            let to = next_word(&tokens, data + 1).filter(|&k| word_is(&tokens[k].token, "TO"));
            let Some(to) = to else {
                let at = next_word(&tokens, data + 1)
                    .map_or(tokens[data].span.end, |k| tokens[k].span.start);
                return Err(ParseError::at("expected TO after LATE DATA", at));
            };
            let topic = next_word(&tokens, to + 1);
            let name = topic.and_then(|k| match &tokens[k].token {
                Token::SingleQuotedString(s) => Some(s.clone()),
                Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
                // A clause that follows is not a topic name.
                Token::Word(w)
                    if w.keyword == Keyword::NoKeyword
                        && !["EMIT", "LIMIT", "WINDOW", "PARTITION"]
                            .iter()
                            .any(|c| w.value.eq_ignore_ascii_case(c)) =>
                {
                    Some(w.value.clone())
                }
                _ => None,
            });
            let (Some(k), Some(name)) = (topic, name) else {
                let at = topic.map_or(tokens[to].span.end, |k| tokens[k].span.start);
                return Err(ParseError::at(
                    "expected a topic after LATE DATA TO (LATE DATA TO 'clicks_late')",
                    at,
                ));
            };
            late_data = Some((name, at));
            i = k + 1;
            continue;
        }
        if depth == 0 && word_is(&t.token, "EMIT") {
            let what = next_word(&tokens, i + 1);
            let kind = match what.map(|k| &tokens[k].token) {
                Some(tok) if word_is(tok, "CHANGES") => Emit::Changes,
                Some(tok) if word_is(tok, "FINAL") => Emit::Final,
                _ => {
                    let at = what.map_or(t.span.end, |k| tokens[k].span.start);
                    return Err(ParseError::at("expected CHANGES or FINAL after EMIT", at));
                }
            };
            if emit.is_some() {
                return Err(ParseError::at("a query has one EMIT clause", t.span.start));
            }
            emit = Some(kind);
            i = what.map_or(i, |k| k) + 1;
            continue;
        }
        rest.push(t.clone());
        i += 1;
    }
    let mut p = P::new(rest, position);
    let mut query = p.with(|q| q.parse_query())?;
    p.end()?;
    let limit = match query.limit_clause.take() {
        None => None,
        Some(LimitClause::LimitOffset {
            limit: Some(Expr::Value(v)),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => match &v.value {
            Value::Number(n, _) => Some(n.parse::<u64>().map_err(|_| {
                ParseError::at(format!("LIMIT {n} is not a whole number"), v.span.start)
            })?),
            _ => {
                return Err(ParseError::at(
                    "LIMIT takes a whole number",
                    Position::from(v.span.start),
                ));
            }
        },
        Some(other) => {
            // OFFSET, LIMIT ALL, expressions: only a batch query over history has them.
            query.limit_clause = Some(other);
            None
        }
    };
    Ok(StreamingQuery {
        query,
        window,
        inner_windows,
        within,
        partition_by,
        late_data,
        emit,
        limit,
        position,
    })
}

fn parse_statement(
    tokens: Vec<TokenWithSpan>,
    position: Position,
) -> Result<Statement, ParseError> {
    let mut p = P::new(tokens.clone(), position);
    let first = p.peek();
    let Token::Word(w) = &first.token else {
        return Err(p.expected("a statement (CREATE, SELECT, INSERT, SHOW, DESCRIBE, DROP, …)"));
    };
    let word = w.value.to_ascii_uppercase();
    match word.as_str() {
        "SELECT" | "WITH" => streaming_query(tokens, position).map(Statement::Select),
        "CREATE" => {
            p.parser.next_token();
            create(&mut p, tokens)
        }
        "INSERT" => {
            p.parser.next_token();
            p.expect_word("INTO")?;
            let target = p.ident()?;
            if p.peek_word("SELECT") || p.peek_word("WITH") {
                let from = p.parser.index();
                let query = streaming_query(tokens[from..].to_vec(), p.here())?;
                return Ok(Statement::InsertSelect { target, query });
            }
            let mut columns = Vec::new();
            if p.parser.consume_token(&Token::LParen) {
                columns = p.with(|q| q.parse_comma_separated(Parser::parse_identifier))?;
                p.expect(&Token::RParen)?;
            }
            if !p.parser.parse_keyword(Keyword::VALUES) {
                return Err(p.expected("VALUES or SELECT"));
            }
            let mut rows = Vec::new();
            loop {
                p.expect(&Token::LParen)?;
                rows.push(p.with(|q| q.parse_comma_separated(Parser::parse_expr))?);
                p.expect(&Token::RParen)?;
                if !p.parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            p.end()?;
            Ok(Statement::InsertValues {
                target,
                columns,
                rows,
            })
        }
        "SHOW" | "LIST" => {
            p.parser.next_token();
            let what = if p.word("STREAMS") {
                ShowWhat::Streams
            } else if p.word("TABLES") {
                ShowWhat::Tables
            } else if p.word("TOPICS") {
                ShowWhat::Topics
            } else if p.word("QUERIES") {
                ShowWhat::Queries
            } else if p.word("PROPERTIES") {
                ShowWhat::Properties
            } else if p.word("CONNECTORS") {
                ShowWhat::Connectors
            } else {
                return Err(
                    p.expected("STREAMS, TABLES, TOPICS, QUERIES, PROPERTIES or CONNECTORS")
                );
            };
            p.end()?;
            Ok(Statement::Show(what))
        }
        "DESCRIBE" => {
            p.parser.next_token();
            if p.word("CONNECTOR") {
                let name = p.ident()?;
                p.end()?;
                return Ok(Statement::DescribeConnector(name));
            }
            let extended = p.word("EXTENDED");
            let name = p.ident()?;
            p.end()?;
            Ok(Statement::Describe { name, extended })
        }
        "EXPLAIN" => {
            p.parser.next_token();
            let from = p.parser.index();
            if !(p.peek_word("SELECT") || p.peek_word("WITH")) {
                return Err(p.expected("a SELECT to explain"));
            }
            streaming_query(tokens[from..].to_vec(), p.here()).map(Statement::Explain)
        }
        "DROP" => {
            p.parser.next_token();
            if p.word("CONNECTOR") {
                let if_exists = p.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = p.ident()?;
                p.end()?;
                return Ok(Statement::DropConnector { name, if_exists });
            }
            if p.word("SINK") {
                let if_exists = p.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = p.ident()?;
                let delete_topic = p.delete_topic()?;
                p.end()?;
                return Ok(Statement::DropSink {
                    name,
                    if_exists,
                    delete_topic,
                });
            }
            let kind = if p.word("STREAM") {
                SourceKind::Stream
            } else if p.word("TABLE") {
                SourceKind::Table
            } else {
                return Err(p.expected("STREAM, TABLE, SINK or CONNECTOR"));
            };
            let if_exists = p.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = p.ident()?;
            let delete_topic = p.delete_topic()?;
            p.end()?;
            Ok(Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            })
        }
        "TERMINATE" => {
            p.parser.next_token();
            let id = if p.word("ALL") {
                None
            } else {
                Some(p.name_or_string()?)
            };
            p.end()?;
            Ok(Statement::Terminate(id))
        }
        "PRINT" => {
            p.parser.next_token();
            let topic = p.name_or_string()?;
            let mut from_beginning = false;
            let mut limit = None;
            loop {
                if p.word("FROM") {
                    p.expect_word("BEGINNING")?;
                    from_beginning = true;
                } else if p.word("LIMIT") {
                    limit = Some(p.uint()?);
                } else {
                    break;
                }
            }
            p.end()?;
            Ok(Statement::Print {
                topic,
                from_beginning,
                limit,
            })
        }
        "SET" => {
            p.parser.next_token();
            let name = p.name_or_string()?;
            p.expect(&Token::Eq)?;
            let value = match p.peek().token {
                Token::Number(n, _) => {
                    p.parser.next_token();
                    n
                }
                _ => p.name_or_string()?,
            };
            p.end()?;
            Ok(Statement::Set { name, value })
        }
        "UNSET" => {
            p.parser.next_token();
            let name = p.name_or_string()?;
            p.end()?;
            Ok(Statement::Unset(name))
        }
        "RUN" => {
            p.parser.next_token();
            p.expect_word("SCRIPT")?;
            let path = p.string()?;
            p.end()?;
            Ok(Statement::RunScript(path))
        }
        _ => Err(ParseError::at(
            format!(
                "'{}' does not start a statement; statements start with CREATE, SELECT, \
                 INSERT, SHOW, LIST, DESCRIBE, EXPLAIN, DROP, TERMINATE, PRINT, SET, UNSET or \
                 RUN SCRIPT",
                w.value
            ),
            first.span.start,
        )),
    }
}

/// After `CREATE`.
fn create(p: &mut P, tokens: Vec<TokenWithSpan>) -> Result<Statement, ParseError> {
    let or_at = p.here();
    let or_replace = p.parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let connector = if p.peek_word("SOURCE") {
        Some(ConnectorKind::Source)
    } else if p.peek_word("SINK") {
        Some(ConnectorKind::Sink)
    } else {
        None
    };
    if let Some(kind) = connector {
        p.parser.next_token();
        if kind == ConnectorKind::Sink && !p.peek_word("CONNECTOR") {
            return create_sink_as(p, tokens, or_replace.then_some(or_at));
        }
        p.expect_word("CONNECTOR")?;
        if or_replace {
            return Err(ParseError::at(
                "a connector cannot be created OR REPLACE: DROP CONNECTOR it, then CREATE it \
                 again",
                or_at,
            ));
        }
        let if_not_exists = p
            .parser
            .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = p.ident()?;
        if !p.peek_word("WITH") {
            return Err(p.expected("WITH ('connector.class' = '…', …)"));
        }
        let properties = p.properties()?;
        p.end()?;
        return Ok(Statement::CreateConnector {
            kind,
            name,
            if_not_exists,
            properties,
        });
    }
    let kind = if p.word("STREAM") {
        SourceKind::Stream
    } else if p.word("TABLE") {
        SourceKind::Table
    } else {
        return Err(p.expected("STREAM, TABLE, SINK, SOURCE CONNECTOR or SINK CONNECTOR"));
    };
    let if_not_exists = p
        .parser
        .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.ident()?;
    let mut columns = Vec::new();
    if p.parser.consume_token(&Token::LParen) {
        loop {
            let position = p.here();
            let column = p.ident()?;
            let data_type = p.with(|q| q.parse_data_type())?;
            let key = if p.parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
                if kind == SourceKind::Stream {
                    return Err(ParseError::at(
                        format!(
                            "a stream has no primary key; mark '{}' as KEY, or create a TABLE",
                            column.value
                        ),
                        position,
                    ));
                }
                true
            } else if p.parser.parse_keyword(Keyword::KEY) {
                if kind == SourceKind::Table {
                    return Err(ParseError::at(
                        format!(
                            "a table's key columns are PRIMARY KEY; write '{} … PRIMARY KEY'",
                            column.value
                        ),
                        position,
                    ));
                }
                true
            } else {
                false
            };
            columns.push(ColumnDef {
                name: column,
                data_type,
                key,
                position,
            });
            if p.parser.consume_token(&Token::Comma) {
                continue;
            }
            p.expect(&Token::RParen)?;
            break;
        }
    }
    let properties = p.properties()?;
    if p.parser.parse_keyword(Keyword::AS) {
        if !columns.is_empty() {
            return Err(ParseError::at(
                "CREATE … AS SELECT takes its columns from the query; leave out the column list",
                columns[0].position,
            ));
        }
        let from = p.parser.index();
        let query = streaming_query(tokens[from..].to_vec(), p.here())?;
        return Ok(Statement::CreateAs {
            kind,
            name,
            or_replace,
            if_not_exists,
            properties,
            query,
        });
    }
    p.end()?;
    Ok(Statement::CreateSource {
        kind,
        name,
        or_replace,
        if_not_exists,
        columns,
        properties,
    })
}

/// After `CREATE SINK`, when `CONNECTOR` does not follow.
fn create_sink_as(
    p: &mut P,
    tokens: Vec<TokenWithSpan>,
    or_replace: Option<Position>,
) -> Result<Statement, ParseError> {
    if let Some(at) = or_replace {
        return Err(ParseError::at(
            "a sink cannot be created OR REPLACE: DROP SINK it, then CREATE it again",
            at,
        ));
    }
    let if_not_exists = p
        .parser
        .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.ident()?;
    let properties = p.properties()?;
    if !p.parser.parse_keyword(Keyword::AS) {
        return Err(p.expected(
            "AS SELECT … (CREATE SINK name WITH (…) AS SELECT …), or CONNECTOR (CREATE SINK \
             CONNECTOR name WITH (…))",
        ));
    }
    let from = p.parser.index();
    let query = streaming_query(tokens[from..].to_vec(), p.here())?;
    Ok(Statement::CreateSinkAs {
        name,
        if_not_exists,
        properties,
        query,
    })
}

/// The name as the catalog keeps it: unquoted names are case-insensitive (kept in lower case,
/// as DataFusion resolves them), quoted names as written.
pub fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// An object name as one catalog name.
pub fn normalize_object(name: &ObjectName) -> String {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(normalize)
        .collect::<Vec<_>>()
        .join(".")
}
