//! Checks made before this process opens a data directory.
//!
//! `Broker::open` takes any directory and, while recovering, deletes subdirectories named like a
//! partition (`name-0`) that belong to no topic. Pointing `--data-dir` at, say, a home directory
//! would then delete a user's `backup-2024`. So the binary only opens a directory that is new,
//! empty, or already a Quiver data directory.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Files that mark a Quiver data directory (written by the broker).
const MARKERS: &[&str] = &["topics.json", ".lock"];

/// What the caller wants to do with the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Writes that may create the directory (server, topic creation, produce).
    Create,
    /// Reads and changes to existing topics: a missing directory is an error, not created.
    Existing,
}

/// Refuses directories the broker must not open; see the module docs.
pub fn check(dir: &Path, intent: Intent) -> Result<()> {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match intent {
                Intent::Create => Ok(()),
                Intent::Existing => bail!(
                    "data directory {shown} does not exist; pass --data-dir (or set QUIVER_LOG_DIRS) to the \
                     directory `quiver server` uses, or create a topic first"
                ),
            };
        }
        Err(e) => return Err(e).with_context(|| format!("cannot access data directory {shown}")),
    };
    if !meta.is_dir() {
        bail!("data directory {shown} is not a directory");
    }
    if MARKERS.iter().any(|m| dir.join(m).exists()) {
        return Ok(());
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list data directory {shown}"))?;
    if entries.next().is_some() {
        bail!(
            "{shown} is not a Quiver data directory (it has files but no topics.json or .lock); \
             pass --data-dir a new or empty directory, or one `quiver server` created"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_created_only_when_asked() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        assert!(check(&dir, Intent::Create).is_ok());
        let err = check(&dir, Intent::Existing)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(err.contains("does not exist"), "{err}");
        Ok(())
    }

    #[test]
    fn foreign_directories_are_refused() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        assert!(check(tmp.path(), Intent::Existing).is_ok(), "empty is fine");
        std::fs::create_dir(tmp.path().join("backup-2024"))?;
        let err = check(tmp.path(), Intent::Create)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(err.contains("is not a Quiver data directory"), "{err}");
        std::fs::write(tmp.path().join(".lock"), "")?;
        assert!(
            check(tmp.path(), Intent::Create).is_ok(),
            "a marked directory is fine"
        );
        Ok(())
    }

    #[test]
    fn a_file_is_not_a_directory() -> Result<()> {
        let tmp = tempfile::NamedTempFile::new()?;
        let err = check(tmp.path(), Intent::Create)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(err.ends_with("is not a directory"), "{err}");
        Ok(())
    }
}
