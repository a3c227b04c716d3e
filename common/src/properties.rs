//! Java's `.properties` format, as `java.util.Properties.load` reads it, so that a Kafka
//! `server.properties` works as a Quiver config file unchanged.
//!
//! - `key=value`, `key: value` and `key value` (the key ends at the first unescaped `=`, `:` or
//!   whitespace; whitespace around the separator is skipped);
//! - lines whose first non-blank character is `#` or `!` are comments;
//! - a line ending in an odd number of `\` continues on the next line, whose leading whitespace
//!   is dropped;
//! - escapes: `\t`, `\n`, `\r`, `\f`, `\uXXXX`, and `\` before any other character stands for
//!   that character (`\=`, `\:`, `\ `, `\\`, `\#`).
//!
//! The text is UTF-8 with lines ending in `\n` or `\r\n` (Java reads a stream as ISO-8859-1
//! and also takes a lone `\r`; a Kafka config file is ASCII with Unix line ends in practice). A key given twice keeps its last value, as in Java, since the pairs are applied in
//! order.

/// A malformed properties file: what is wrong, on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PropertiesError {
    pub line: usize,
    pub message: String,
}

type Result<T, E = String> = std::result::Result<T, E>;

/// One `key=value` of a properties file, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parses a properties file into its pairs, in file order. The only errors are malformed
/// `\uXXXX` escapes, reported with their line.
pub fn parse(text: &str) -> Result<Vec<Property>, PropertiesError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((line, first)) = lines.next() {
        let first = trim_leading_blanks(first);
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        // Join continuation lines into one logical line.
        let mut logical = String::from(first);
        while ends_with_continuation(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(trim_leading_blanks(next)),
                None => break,
            }
        }
        let (key, value) = split_key_value(&logical);
        let error = |message| PropertiesError { line, message };
        let key = unescape(key).map_err(error)?;
        let value = unescape(value).map_err(error)?;
        out.push(Property { key, value, line });
    }
    Ok(out)
}

/// Java's blanks: space, tab and form feed.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

fn trim_leading_blanks(s: &str) -> &str {
    s.trim_start_matches(is_blank)
}

/// True when the line ends in an odd number of backslashes (an even number are escaped ones).
fn ends_with_continuation(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line at the first unescaped `=`, `:` or blank; the separator and the blanks
/// around it are dropped. Both halves are still escaped.
fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || is_blank(c) {
            key_end = i;
            break;
        }
    }
    let key = &line[..key_end];
    let mut rest = trim_leading_blanks(&line[key_end..]);
    if let Some(after) = rest.strip_prefix(['=', ':']) {
        rest = trim_leading_blanks(after);
    }
    (key, rest)
}

fn unescape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten();
                let Some(code) = code else {
                    return Err(format!(
                        "malformed \\uXXXX escape '\\u{hex}': expected four hex digits"
                    ));
                };
                // Java strings are UTF-16: a surrogate pair comes as two escapes.
                let c = match code {
                    0xD800..=0xDBFF => {
                        let low: String = chars.by_ref().take(6).collect();
                        let low = low
                            .strip_prefix("\\u")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .filter(|l| (0xDC00..=0xDFFF).contains(l));
                        let Some(low) = low else {
                            return Err(format!(
                                "escape '\\u{hex}' is half of a surrogate pair without its other half"
                            ));
                        };
                        char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                    }
                    _ => char::from_u32(code),
                };
                let Some(c) = c else {
                    return Err(format!("escape '\\u{hex}' is not a character"));
                };
                out.push(c);
            }
            Some(other) => out.push(other),
            // A lone trailing backslash (continuation at the end of the file) is dropped, as in Java.
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .map(|p| (p.key, p.value, p.line))
            .collect()
    }

    fn p(key: &str, value: &str, line: usize) -> (String, String, usize) {
        (key.to_owned(), value.to_owned(), line)
    }

    #[test]
    fn separators_and_blanks_as_java_reads_them() {
        assert_eq!(
            pairs("a=1\nb: 2\nc 3\n  d   =   4\ne\t:\tfive six\nf\ng=\nh==x\n"),
            [
                p("a", "1", 1),
                p("b", "2", 2),
                p("c", "3", 3),
                p("d", "4", 4),
                p("e", "five six", 5),
                p("f", "", 6),
                p("g", "", 7),
                p("h", "=x", 8),
            ]
        );
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        assert_eq!(
            pairs("# a comment\n! another\n\n   \n  # indented = comment\nkey=v # not a comment\n"),
            [p("key", "v # not a comment", 6)]
        );
    }

    #[test]
    fn continuation_lines_join_and_drop_leading_blanks() {
        assert_eq!(
            pairs(
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,\\\n    PLAINTEXT:PLAINTEXT\nnext=1\n"
            ),
            [
                p(
                    "listener.security.protocol.map",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    1
                ),
                p("next", "1", 3),
            ]
        );
        // An even number of backslashes is an escaped backslash, not a continuation.
        assert_eq!(
            pairs("path=c:\\\\\nx=1\n"),
            [p("path", "c:\\", 1), p("x", "1", 2)]
        );
        // A comment line does not continue.
        assert_eq!(pairs("# comment \\\nx=1\n"), [p("x", "1", 2)]);
        // A continuation at the end of the file ends the value.
        assert_eq!(pairs("x=1\\"), [p("x", "1", 1)]);
    }

    #[test]
    fn escapes_as_java_reads_them() {
        assert_eq!(
            pairs(
                "a\\=b\\:c\\ d=tab\\there\\u0041\\\\ \\#x\nnl=\\n\\r\\f\\q\nsmile=\\ud83d\\ude00\n"
            ),
            [
                p("a=b:c d", "tab\there\u{41}\\ #x", 1),
                p("nl", "\n\r\u{c}q", 2),
                p("smile", "\u{1F600}", 3),
            ]
        );
    }

    #[test]
    fn malformed_unicode_escape_names_its_line() {
        let err = parse("ok=1\nbad=\\u12G4\n")
            .map_err(|e| format!("{e:#}"))
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("line 2: malformed \\uXXXX escape"), "{err}");
        assert!(parse("bad=\\u12").is_err());
        assert!(parse("bad=\\ud83d").is_err());
    }

    #[test]
    fn crlf_line_ends_read_like_lf() {
        assert_eq!(pairs("a=1\r\nb=2\r\n"), [p("a", "1", 1), p("b", "2", 2)]);
    }
}
