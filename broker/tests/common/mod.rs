//! Helpers shared by the broker's end-to-end tests.

use std::process::{Command, Stdio};

/// True when Debian's `kcat` is on the PATH (`./scripts/test` installs it).
pub fn have_kcat() -> bool {
    Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
