//! The bad-statement corpus of `sql/tests/corpus/`: statements Quiver SQL must refuse, and the
//! errors they get. Read by the SQL crate's own test (in process) and by the server's (over
//! HTTP and through `quiver shell --server`), so all three are held to one expected file.

use std::path::{Path, PathBuf};

/// The corpus directory.
pub fn dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    // This file is compiled into the root package's tests and into the SQL crate's.
    if here.join("sql/tests/corpus").is_dir() {
        here.join("sql/tests/corpus")
    } else {
        here.join("tests/corpus")
    }
}

/// The statements that set up the catalog the cases run against.
pub fn setup() -> String {
    std::fs::read_to_string(dir().join("setup.sql")).expect("read corpus/setup.sql")
}

/// The cases: blocks separated by blank lines, comment-only blocks left out.
pub fn cases() -> Vec<String> {
    let text = std::fs::read_to_string(dir().join("bad_statements.sql")).expect("read the corpus");
    text.split("\n\n")
        .map(|b| b.trim_matches('\n').to_owned())
        .filter(|b| !b.is_empty() && !b.lines().all(|l| l.starts_with("--")))
        .collect()
}

/// One case's error as the expected file holds it.
pub fn line(kind: &str, position: Option<(u64, u64)>, message: &str) -> String {
    let at = position.map_or_else(|| "-".to_owned(), |(l, c)| format!("{l}:{c}"));
    format!("{kind} {at} {}", message.replace('\n', "\\n"))
}

/// The expected file's lines, one per case (statements are shown as `# …` lines, skipped).
pub fn expected() -> Vec<String> {
    std::fs::read_to_string(dir().join("bad_statements.expected"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("# "))
        .map(str::to_owned)
        .collect()
}

/// Writes the expected file from what the cases got (`QUIVER_BLESS=1`).
pub fn bless(cases: &[String], got: &[String]) {
    let mut out = String::new();
    for (case, line) in cases.iter().zip(got) {
        for l in case.lines() {
            out.push_str("# ");
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(dir().join("bad_statements.expected"), out).expect("write the expected file");
}
