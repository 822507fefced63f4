//! `cohmemd.toml`: every command-line option as a key of a TOML file
//! (`/etc/cohmem/cohmemd.toml`, or `--config FILE`), with options given on
//! the command line taking precedence.
//!
//! The keys are the long options without their dashes (`max-bo-size =
//! 4294967296`, `gpu = "soft"`, `allow-uid = [1000, 1001]`, `no-fdstore =
//! true`), so the file covers every option by construction and each value is
//! checked by the same parser as on the command line. An unknown key, or a
//! value that option's parser refuses, is an error naming the key and the
//! file; a file named with `--config` that does not exist is an error too
//! (only the default path may be absent).

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, Command};
use thiserror::Error;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/cohmem/cohmemd.toml";

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("config file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The error (in the message already, so not a `source`).
        error: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key that is no option of cohmemd.
    #[error("config file {path}: unknown key `{key}` (the keys are cohmemd's long options: see cohmemd --help)")]
    UnknownKey {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
    /// A value the option refuses.
    #[error("config file {path}: key `{key}`: {message}")]
    BadValue {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Reads `path` and turns it into command-line arguments (`--key value`…)
/// for `cmd`, each checked by its option's parser. `required`: a missing
/// file is an error (it was named with `--config`); otherwise it yields
/// nothing. `skip`: keys the command line sets already (the file does not
/// add to them).
pub fn file_args(
    cmd: &Command,
    path: &Path,
    required: bool,
    skip: &[String],
) -> Result<Vec<OsString>, ConfigFileError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(ConfigFileError::Read { path: shown, error }),
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigFileError::Syntax {
        path: shown.clone(),
        message: e.to_string().trim().to_string(),
    })?;
    let bad = |key: &str, message: String| ConfigFileError::BadValue {
        path: shown.clone(),
        key: key.to_string(),
        message,
    };
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: shown.clone(),
                key: key.clone(),
            })?;
        if skip.contains(&key) {
            continue;
        }
        let flag = format!("--{key}");
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let items = match value {
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(bad(&key, "takes one value, not a list".into()));
                }
                items
            }
            one => vec![one],
        };
        for item in items {
            let text = match item {
                toml::Value::Boolean(b) if is_switch => {
                    if b {
                        out.push(OsString::from(&flag));
                    }
                    continue;
                }
                _ if is_switch => return Err(bad(&key, "is a switch: write true or false".into())),
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => return Err(bad(&key, format!("{other} is not a string or an integer"))),
            };
            // The option's own parser judges the value.
            let probe = [OsString::from("cohmemd"), OsString::from(&flag), OsString::from(&text)];
            if let Err(e) = cmd.clone().try_get_matches_from(probe) {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or("").trim_start_matches("error: ");
                return Err(bad(&key, format!("{text:?}: {first}")));
            }
            out.push(OsString::from(&flag));
            out.push(OsString::from(text));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn cmd() -> Command {
        Command::new("cohmemd")
            .arg(Arg::new("gpu").long("gpu").default_value("auto"))
            .arg(
                Arg::new("max-bo-size")
                    .long("max-bo-size")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(
                Arg::new("allow-uid")
                    .long("allow-uid")
                    .action(ArgAction::Append)
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(Arg::new("no-fdstore").long("no-fdstore").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn keys_become_options_and_the_command_line_keeps_its_own() {
        let f = write("gpu = \"soft\"\nmax-bo-size = 4096\nallow-uid = [1000, 1001]\nno-fdstore = true\n");
        let args = file_args(&cmd(), f.path(), true, &["gpu".into()]).unwrap();
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--allow-uid",
                "1000",
                "--allow-uid",
                "1001",
                "--max-bo-size",
                "4096",
                "--no-fdstore"
            ]
        );
    }

    #[test]
    fn a_typo_names_the_key_and_a_bad_value_names_key_and_value() {
        let f = write("max-bo-szie = 4096\n");
        let e = file_args(&cmd(), f.path(), true, &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `max-bo-szie`"), "{e}");
        let f = write("max-bo-size = \"lots\"\n");
        let e = file_args(&cmd(), f.path(), true, &[]).unwrap_err().to_string();
        assert!(e.contains("key `max-bo-size`") && e.contains("\"lots\""), "{e}");
        let f = write("no-fdstore = 1\n");
        let e = file_args(&cmd(), f.path(), true, &[]).unwrap_err().to_string();
        assert!(e.contains("key `no-fdstore`") && e.contains("switch"), "{e}");
        let f = write("gpu = [\"soft\"]\n");
        let e = file_args(&cmd(), f.path(), true, &[]).unwrap_err().to_string();
        assert!(e.contains("not a list"), "{e}");
        let f = write("config = \"/etc/other.toml\"\n");
        assert!(
            file_args(&cmd(), f.path(), true, &[]).is_err(),
            "a config file cannot name another"
        );
        let f = write("gpu = \n");
        let e = file_args(&cmd(), f.path(), true, &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_only_when_named() {
        let missing = Path::new("/nonexistent/cohmemd.toml");
        let e = file_args(&cmd(), missing, true, &[]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cohmemd.toml"), "{e}");
        assert!(file_args(&cmd(), missing, false, &[]).unwrap().is_empty());
    }
}
