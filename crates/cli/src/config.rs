//! `--config FILE` for `shoal index` and `shoal peer`, and the environment.
//!
//! The file is TOML with one table per command, whose keys are the command's long flags
//! (`max-connections = 64`, or `max_connections`; `trust-announced-host = true`;
//! `index = ["10.0.0.5:1024", "10.0.0.6:1024"]` or one comma-separated string):
//!
//! ```toml
//! [index]
//! listen = "0.0.0.0:1024"
//! [peer]
//! dir = "/srv/shoal"
//! ```
//!
//! Precedence: a flag on the command line, then the environment (`SHOAL_INDEX` for every
//! command's `--index`), then the file, then the default. A value from the file goes through
//! the same checks as the flag (it is parsed as if it had been given); an unknown table or key
//! is an error that names it. The commented example is `dist/shoal.toml`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

/// The file: one table per command that takes it; anything else is refused by name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// `shoal index`'s flags.
    #[serde(default)]
    index: BTreeMap<String, toml::Value>,
    /// `shoal peer`'s flags.
    #[serde(default)]
    peer: BTreeMap<String, toml::Value>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "config file {path}: unknown key `{key}` in [{table}] (`shoal {table} --help` lists the flags)"
    )]
    UnknownKey {
        path: PathBuf,
        table: &'static str,
        key: String,
    },
    #[error("config file {path}: `{key}` in [{table}] {problem}")]
    BadValue {
        path: PathBuf,
        table: &'static str,
        key: String,
        problem: String,
    },
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }
}

/// Parses the command line; for `index` and `peer` with `--config FILE`, the file's values
/// fill in every flag neither the command line nor the environment set. On a bad command
/// line or file, prints the error and exits like clap does (status 2).
pub(crate) fn parse<C: CommandFactory + FromArgMatches>() -> C {
    let args: Vec<OsString> = std::env::args_os().collect();
    match parse_from::<C>(&args) {
        Ok(cli) => cli,
        Err(Failure::Clap(e)) => e.exit(),
        Err(Failure::Config(e)) => {
            eprintln!("shoal: {e}");
            std::process::exit(2);
        }
    }
}

/// What went wrong parsing.
#[derive(Debug)]
pub(crate) enum Failure {
    Clap(clap::Error),
    Config(ConfigError),
}

/// [`parse`] over given arguments (the first is the program name).
pub(crate) fn parse_from<C: CommandFactory + FromArgMatches>(
    args: &[OsString],
) -> Result<C, Failure> {
    let plain = || {
        let matches = C::command()
            .try_get_matches_from(args)
            .map_err(Failure::Clap)?;
        C::from_arg_matches(&matches).map_err(Failure::Clap)
    };
    // First with every flag of `index` and `peer` optional (`--dir` may come from the file),
    // to find `--config` and what the command line and the environment set.
    let mut relaxed = C::command();
    for name in ["index", "peer"] {
        if relaxed.find_subcommand(name).is_some() {
            relaxed = relaxed.mut_subcommand(name, |s| s.mut_args(|a| a.required(false)));
        }
    }
    let Ok(matches) = relaxed.try_get_matches_from(args) else {
        return plain();
    };
    let Some((table, sub)) = matches.subcommand() else {
        return plain();
    };
    let table: &'static str = match table {
        "index" => "index",
        "peer" => "peer",
        _ => return plain(),
    };
    let Some(path) = sub.get_one::<PathBuf>("config").cloned() else {
        return plain();
    };
    let file = ConfigFile::load(&path).map_err(Failure::Config)?;
    let values = if table == "index" {
        &file.index
    } else {
        &file.peer
    };
    let extra = file_args::<C>(&path, table, values, sub).map_err(Failure::Config)?;
    if extra.is_empty() {
        return plain();
    }
    // Re-parse with the file's values as flags, after everything given: the same parsers
    // and range checks apply, and an error names the file.
    let mut all = args.to_vec();
    all.extend(extra);
    let matches = C::command().try_get_matches_from(&all).map_err(|e| {
        Failure::Config(ConfigError::Parse {
            path: path.clone(),
            message: e
                .to_string()
                .trim()
                .trim_start_matches("error: ")
                .to_string(),
        })
    })?;
    C::from_arg_matches(&matches).map_err(Failure::Clap)
}

/// The flags the file adds: one per key whose flag was not given on the command line or in
/// the environment.
fn file_args<C: CommandFactory>(
    path: &Path,
    table: &'static str,
    values: &BTreeMap<String, toml::Value>,
    given: &ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let command = C::command();
    let Some(sub) = command.find_subcommand(table) else {
        return Ok(Vec::new());
    };
    let mut extra = Vec::new();
    for (key, value) in values {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && long != "help");
        let Some(arg) = arg else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                table,
                key: key.clone(),
            });
        };
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |problem: &str| ConfigError::BadValue {
            path: path.to_path_buf(),
            table,
            key: key.clone(),
            problem: problem.to_string(),
        };
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(on) if !takes_value => {
                if *on {
                    extra.push(OsString::from(format!("--{long}")));
                }
            }
            _ if !takes_value => return Err(bad("is a switch: true or false")),
            toml::Value::String(s) => extra.push(OsString::from(format!("--{long}={s}"))),
            toml::Value::Integer(n) => extra.push(OsString::from(format!("--{long}={n}"))),
            toml::Value::Float(x) => extra.push(OsString::from(format!("--{long}={x}"))),
            toml::Value::Array(items) => {
                let parts = items
                    .iter()
                    .map(|item| match item {
                        toml::Value::String(s) => Ok(s.clone()),
                        _ => Err(bad("must list strings")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                extra.push(OsString::from(format!("--{long}={}", parts.join(","))));
            }
            _ => return Err(bad("must be a string, a number or a list of strings")),
        }
    }
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Index(IndexArgs),
    }

    #[derive(clap::Args, Debug)]
    struct IndexArgs {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "default:1")]
        listen: String,
        #[arg(long, default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        lease: u64,
        #[arg(long)]
        trust: bool,
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn parse(args: &[&str]) -> Result<IndexArgs, Failure> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let Sub::Index(args) = parse_from::<Cli>(&args)?.command;
        Ok(args)
    }

    #[test]
    fn config_file_fills_what_flags_do_not_set() {
        let (_dir, path) =
            write("[index]\ndir = \"/d\"\nlisten = \"file:1\"\nlease = 30\ntrust = true\n");
        let p = path.to_str().unwrap();
        let args = parse(&["shoal", "index", "--config", p]).unwrap();
        assert_eq!(
            (args.listen.as_str(), args.lease, args.trust),
            ("file:1", 30, true)
        );
        // A flag beats the file.
        let args = parse(&["shoal", "index", "--config", p, "--listen", "flag:1"]).unwrap();
        assert_eq!((args.listen.as_str(), args.lease), ("flag:1", 30));
        // Without the file: the defaults.
        let args = parse(&["shoal", "index", "--dir", "/x"]).unwrap();
        assert_eq!(
            (args.listen.as_str(), args.lease, args.trust),
            ("default:1", 60, false)
        );
    }

    #[test]
    fn config_unknown_key_is_named() {
        let (_dir, path) = write("[index]\nlistne = \"x:1\"\n");
        let p = path.to_str().unwrap();
        let Err(Failure::Config(e)) = parse(&["shoal", "index", "--config", p]) else {
            panic!("an unknown key must fail");
        };
        assert!(
            e.to_string().contains("unknown key `listne` in [index]"),
            "{e}"
        );
        let (_dir, path) = write("[indx]\nlisten = \"x:1\"\n");
        let p = path.to_str().unwrap();
        let Err(Failure::Config(e)) = parse(&["shoal", "index", "--config", p]) else {
            panic!("an unknown table must fail");
        };
        assert!(e.to_string().contains("indx"), "{e}");
    }

    #[test]
    fn config_values_are_checked_like_flags() {
        let (_dir, path) = write("[index]\ndir = \"/d\"\nlease = 0\n");
        let p = path.to_str().unwrap();
        let Err(Failure::Config(e)) = parse(&["shoal", "index", "--config", p]) else {
            panic!("a lease of 0 must fail");
        };
        assert!(
            e.to_string().contains("shoal.toml") && e.to_string().contains("lease"),
            "{e}"
        );
        let (_dir, path) = write("[index]\ndir = \"/d\"\ntrust = \"yes\"\n");
        let p = path.to_str().unwrap();
        assert!(matches!(
            parse(&["shoal", "index", "--config", p]),
            Err(Failure::Config(ConfigError::BadValue { .. }))
        ));
    }
}
