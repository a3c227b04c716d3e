//! Where the broker's settings come from, in one place: Kafka's defaults, then a TOML file with
//! Kafka's server key names, then `QUIVER_*` environment variables, then command-line flags.
//! Later sources win. Every key is checked by [`BrokerConfig::set`], so an unknown or bad key is
//! an error naming its source, never silently ignored.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use quiver_broker::BrokerConfig;

/// Environment variables with this prefix set server keys: `QUIVER_LOG_RETENTION_HOURS=1` is
/// `log.retention.hours=1`.
pub const ENV_PREFIX: &str = "QUIVER_";

/// Largest config file read; a real one is a few hundred bytes.
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Builds the broker's settings from, in rising precedence: defaults, `file`, the `QUIVER_*`
/// variables in `env`, and the `--data-dir` flag.
pub fn resolve(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    data_dir: Option<&Path>,
) -> Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    if let Some(path) = file {
        for (key, value) in read_file(path)? {
            config
                .set(&key, &value)
                .with_context(|| path.display().to_string())?;
        }
    }
    for (var, key, value) in env_settings(env)? {
        config
            .set(&key, &value)
            .with_context(|| format!("environment variable {var}"))?;
    }
    if let Some(dir) = data_dir {
        // Set directly rather than through `log.dirs`, which splits on ',' and wants UTF-8.
        config.data_dir = dir.to_owned();
    }
    Ok(config)
}

/// Reads a TOML config file into `(key, value)` pairs with dotted Kafka key names.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>> {
    let name = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read config file {name}"))?;
    if meta.len() > CONFIG_FILE_BYTES_MAX {
        bail!(
            "config file {name} is {} bytes; the limit is {CONFIG_FILE_BYTES_MAX}",
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read config file {name}"))?;
    parse_toml(&text).with_context(|| name.to_string())
}

/// Parses TOML into dotted keys. TOML reads `log.dirs = "x"` as a table `log` holding `dirs`,
/// so nested tables are flattened back; a quoted `"log.dirs" = "x"` gives the same key.
pub fn parse_toml(text: &str) -> Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("not valid TOML: {e}"))?;
    let mut out = Vec::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(&key, inner, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(_) | toml::Value::Datetime(_) => {
                bail!(
                    "{key}: expected a string, integer or boolean, got a {}",
                    value.type_str()
                )
            }
        };
        out.push((key, text));
    }
    Ok(())
}

/// Picks the `QUIVER_*` variables out of `env` as `(variable, key, value)`, sorted by variable
/// name so that the outcome does not depend on the environment's order.
pub fn env_settings(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (var, value) in env {
        let Some(var) = var.to_str() else { continue };
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_lowercase().replace('_', ".");
        let value = value
            .into_string()
            .map_err(|_| anyhow!("environment variable {var} is not valid UTF-8"))?;
        out.push((var.to_owned(), key, value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn dotted_quoted_and_nested_keys_flatten_alike() -> Result<()> {
        let pairs = parse_toml(
            "log.dirs = \"/d\"\n\"num.partitions\" = 3\nauto.create.topics.enable = false\n[log.retention]\nhours = 1\n",
        )?;
        assert_eq!(
            pairs,
            vec![
                ("auto.create.topics.enable".to_owned(), "false".to_owned()),
                ("log.dirs".to_owned(), "/d".to_owned()),
                ("log.retention.hours".to_owned(), "1".to_owned()),
                ("num.partitions".to_owned(), "3".to_owned()),
            ]
        );
        Ok(())
    }

    #[test]
    fn arrays_are_refused_with_their_key() {
        let err = parse_toml("log.dirs = [\"/a\"]")
            .map_err(|e| format!("{e:#}"))
            .err()
            .unwrap_or_default();
        assert_eq!(
            err,
            "log.dirs: expected a string, integer or boolean, got a array"
        );
    }

    #[test]
    fn bad_toml_is_an_error() {
        assert!(parse_toml("log.dirs = ").is_err());
    }

    #[test]
    fn env_maps_to_dotted_lowercase_keys() -> Result<()> {
        let got = env_settings(env(&[
            ("PATH", "/bin"),
            ("QUIVER_NUM_PARTITIONS", "4"),
            ("QUIVER_LOG_DIRS", "/x"),
        ]))?;
        assert_eq!(
            got,
            vec![
                (
                    "QUIVER_LOG_DIRS".to_owned(),
                    "log.dirs".to_owned(),
                    "/x".to_owned()
                ),
                (
                    "QUIVER_NUM_PARTITIONS".to_owned(),
                    "num.partitions".to_owned(),
                    "4".to_owned()
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn flags_win_over_env_and_env_over_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("quiver.toml");
        std::fs::write(
            &file,
            "log.dirs = \"/from-file\"\nnum.partitions = 2\nlog.retention.hours = 1\n",
        )?;

        let c = resolve(Some(&file), env(&[]), None)?;
        assert_eq!(
            (c.data_dir.clone(), c.num_partitions, c.log.retention_ms),
            (PathBuf::from("/from-file"), 2, Some(3_600_000))
        );

        let c = resolve(
            Some(&file),
            env(&[
                ("QUIVER_LOG_DIRS", "/from-env"),
                ("QUIVER_NUM_PARTITIONS", "5"),
            ]),
            None,
        )?;
        assert_eq!(
            (c.data_dir.clone(), c.num_partitions),
            (PathBuf::from("/from-env"), 5)
        );

        let c = resolve(
            Some(&file),
            env(&[("QUIVER_LOG_DIRS", "/from-env")]),
            Some(Path::new("/from,flag")),
        )?;
        assert_eq!(c.data_dir, PathBuf::from("/from,flag"));
        Ok(())
    }

    #[test]
    fn unknown_keys_name_their_source() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "log.dirz = \"/x\"\n")?;
        let err = format!(
            "{:#}",
            resolve(Some(&file), env(&[]), None)
                .err()
                .ok_or_else(|| anyhow!("accepted"))?
        );
        assert!(
            err.starts_with(&format!(
                "{}: invalid config: unknown server config 'log.dirz'",
                file.display()
            )),
            "{err}"
        );
        assert!(err.contains("log.dirs"), "lists the known keys: {err}");

        let err = format!(
            "{:#}",
            resolve(None, env(&[("QUIVER_NUM_PARTITONS", "3")]), None)
                .err()
                .ok_or_else(|| anyhow!("accepted"))?
        );
        assert!(err.starts_with("environment variable QUIVER_NUM_PARTITONS: invalid config: unknown server config 'num.partitons'"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_file_says_which() {
        let err = resolve(Some(Path::new("/no/such/quiver.toml")), env(&[]), None)
            .map_err(|e| format!("{e:#}"))
            .err();
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("cannot read config file /no/such/quiver.toml: "),
            "{err}"
        );
    }
}
