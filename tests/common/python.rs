//! The Python Kafka clients of `tests/python/`: kafka-python and confluent-kafka (librdkafka),
//! from the venv `./scripts/test` makes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::run_bounded;

/// The venv's Python: `$QUIVER_PYTHON`, else `./.venv/bin/python`. A missing one fails the test
/// with the hint to make it, rather than skipping, so that a green run means the clients ran.
#[track_caller]
pub fn python() -> PathBuf {
    let path = std::env::var_os("QUIVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        path.exists(),
        "no Python with the Kafka clients at {} ($QUIVER_PYTHON, default ./.venv/bin/python); \
         run ./scripts/test once, which installs them",
        path.display()
    );
    path
}

/// `python -u tests/python/SCRIPT ARGS`, not yet started.
#[track_caller]
pub fn command(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Runs `tests/python/SCRIPT ARGS` and returns its standard output; fails the test with both
/// outputs unless it succeeds within `timeout`.
#[track_caller]
pub fn run(script: &str, args: &[&str], timeout: Duration) -> String {
    let ran = run_bounded(command(script, args), b"", timeout);
    assert!(
        ran.status.success(),
        "{script} {args:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}
