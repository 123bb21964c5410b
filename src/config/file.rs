//! The configuration file (`--config PATH`): TOML whose keys are the long flag
//! names, so every flag has a key, including flags added later.
//!
//! Nothing here knows a particular flag: each TOML key is looked up among the
//! clap arguments of [`Args`] by its long name and turned into command-line
//! tokens (`--stratum=2`; `--listen=...` once per element of an array; `--flag`
//! for `flag = true`). Each key's tokens are first checked on their own by
//! clap's own value parser, so a bad value is reported with its line and key.
//! Then clap parses the file's tokens followed by the real command line, leaving
//! out the file's keys that the command line also gives: flags override the file
//! (a repeatable flag on the command line replaces the file's whole list).
//!
//! [`load`] also returns each setting's effective raw values
//! ([`Settings`]), which the live reload ([`crate::server::live`]) compares
//! key by key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::{Spanned, Value};

use super::Args;

/// Long flags that cannot be set in a configuration file.
pub const NOT_IN_FILE: &[&str] = &["help", "version", "config", "check"];

/// One setting's effective value: the raw strings clap parsed (its default
/// when not given) and whether it was given (file or command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The raw values, in order (empty for an unset optional flag).
    pub raw: Vec<OsString>,
    /// Given in the file or on the command line (not a default).
    pub explicit: bool,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = self
            .raw
            .iter()
            .map(|v| v.to_string_lossy())
            .collect::<Vec<_>>()
            .join(", ");
        match (self.explicit, joined.is_empty()) {
            (true, _) => write!(f, "{joined:?}"),
            (false, true) => f.write_str("unset"),
            (false, false) => write!(f, "default {joined:?}"),
        }
    }
}

/// Every setting by long flag name (without [`NOT_IN_FILE`]).
pub type Settings = BTreeMap<String, Setting>;

/// A parsed configuration.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The flags.
    pub args: Args,
    /// The same, as raw values by key.
    pub settings: Settings,
}

/// Why [`load`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// The command line itself (also `--help` and `--version`, which clap
    /// prints and exits on through [`clap::Error::exit`]).
    Cli(clap::Error),
    /// The configuration file: one message per problem, each naming the file,
    /// and the line and key where there is one.
    Config(Vec<String>),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Cli(e) => f.write_str(&clap_message(e)),
            LoadError::Config(errs) => f.write_str(&errs.join("; ")),
        }
    }
}

impl std::error::Error for LoadError {}

/// The first line of a clap error, without its "error: " prefix.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Parse `argv` (program name first) and, with `--config PATH`, that file
/// under it.
pub fn load(argv: &[OsString]) -> Result<Loaded, LoadError> {
    let cmd = Args::command();
    let cli = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(LoadError::Cli)?;
    let argv0 = argv.first().cloned().unwrap_or_else(|| "hwntpd".into());
    let mut tokens = vec![argv0.clone()];
    let path = cli.get_one::<PathBuf>("config").cloned();
    if let Some(path) = &path {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::Config(vec![format!("{shown}: cannot read: {e}")]))?;
        let keys = file_tokens(&cmd, &text).map_err(|errs| {
            LoadError::Config(errs.into_iter().map(|e| format!("{shown}:{e}")).collect())
        })?;
        for (id, toks) in keys {
            if cli.value_source(&id) != Some(ValueSource::CommandLine) {
                tokens.extend(toks);
            }
        }
    }
    tokens.extend(argv.iter().skip(1).cloned());
    let from = path.map_or("command line".to_string(), |p| p.display().to_string());
    let m = cmd
        .clone()
        .try_get_matches_from(&tokens)
        .map_err(|e| LoadError::Config(vec![format!("{from}: {}", clap_message(&e))]))?;
    let args = Args::from_arg_matches(&m)
        .map_err(|e| LoadError::Config(vec![format!("{from}: {}", clap_message(&e))]))?;
    Ok(Loaded {
        args,
        settings: settings_of(&cmd, &m),
    })
}

/// The clap argument whose long name is `key`, if it may be set in a file.
fn arg_for<'a>(cmd: &'a Command, key: &str) -> Option<&'a Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key) && !NOT_IN_FILE.contains(&key))
}

/// Every long flag that a configuration file may set, in definition order.
pub fn file_keys() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .map(str::to_string)
        .collect()
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The command-line tokens of each key of the TOML `text`, by clap argument
/// id, each already checked on its own; or every problem found, as
/// "LINE: key \"KEY\": message".
fn file_tokens(cmd: &Command, text: &str) -> Result<Vec<(String, Vec<OsString>)>, Vec<String>> {
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let line = e
                .span()
                .map_or(String::new(), |s| format!("{}: ", line_of(text, s.start)));
            return Err(vec![format!("{line}{}", e.message().trim_end())]);
        }
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    // In the file's order, so the errors come line by line.
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().as_str();
        let fail = |msg: String| format!("{line}: key \"{name}\": {msg}");
        let Some(arg) = arg_for(cmd, name) else {
            errors.push(fail(unknown_key_message(cmd, name)));
            continue;
        };
        match tokens_for(arg, value.get_ref()) {
            Ok(toks) => {
                let mut alone = vec![OsString::from("hwntpd")];
                alone.extend(toks.iter().cloned());
                match cmd.clone().try_get_matches_from(&alone) {
                    Err(e)
                        if !matches!(
                            e.kind(),
                            ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
                        ) =>
                    {
                        errors.push(fail(clap_message(&e)))
                    }
                    _ => out.push((arg.get_id().to_string(), toks)),
                }
            }
            Err(msg) => errors.push(fail(msg)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn unknown_key_message(cmd: &Command, key: &str) -> String {
    let hyphens = key.replace('_', "-");
    if NOT_IN_FILE.contains(&key) {
        format!("--{key} cannot be set in a configuration file")
    } else if hyphens != key && arg_for(cmd, &hyphens).is_some() {
        format!("unknown key (did you mean \"{hyphens}\"? keys are the long flag names)")
    } else {
        "unknown key (keys are the long flag names without the leading --)".to_string()
    }
}

/// A scalar TOML value as one flag value.
fn scalar(arg: &Arg, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(x) => Ok(x.to_string()),
        Value::Boolean(b) => {
            let on_off = arg
                .get_possible_values()
                .iter()
                .any(|p| p.get_name() == "on");
            Ok(match (on_off, b) {
                (true, true) => "on".into(),
                (true, false) => "off".into(),
                (false, b) => b.to_string(),
            })
        }
        Value::Datetime(_) => Err("a date is not a value of this key".into()),
        Value::Array(_) => Err("takes one value, not a list".into()),
        Value::Table(_) => Err("takes a value, not a table".into()),
    }
}

/// The command-line tokens that say what `v` says for `arg`.
fn tokens_for(arg: &Arg, v: &Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().expect("file keys are long flags");
    let flag = || OsString::from(format!("--{long}"));
    let valued = |s: String| OsString::from(format!("--{long}={s}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let on = matches!(arg.get_action(), ArgAction::SetTrue);
            match v {
                Value::Boolean(b) if *b == on => Ok(vec![flag()]),
                Value::Boolean(_) => Ok(Vec::new()),
                _ => Err(format!("expects true or false, not {}", v.type_str())),
            }
        }
        ArgAction::Count => match v {
            Value::Integer(n) if (0..=255).contains(n) => Ok(vec![flag(); *n as usize]),
            _ => Err("expects a count from 0 to 255".into()),
        },
        ArgAction::Append => match v {
            Value::Array(items) => items.iter().map(|i| scalar(arg, i).map(valued)).collect(),
            other => Ok(vec![valued(scalar(arg, other)?)]),
        },
        _ => Ok(vec![valued(scalar(arg, v)?)]),
    }
}

/// Every setting's raw values in `m`.
pub fn settings_of(cmd: &Command, m: &ArgMatches) -> Settings {
    let mut out = Settings::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let raw = m
            .get_raw(id)
            .map(|r| r.map(OsString::from).collect())
            .unwrap_or_default();
        let explicit = !matches!(m.value_source(id), None | Some(ValueSource::DefaultValue));
        out.insert(long.to_string(), Setting { raw, explicit });
    }
    out
}

/// Command-line tokens (program name first) that give exactly the explicit
/// settings of `settings`; parsing them gives the same [`Settings`].
pub fn tokens_of(settings: &Settings) -> Vec<OsString> {
    let cmd = Args::command();
    let mut out = vec![OsString::from("hwntpd")];
    for (key, s) in settings.iter().filter(|(_, s)| s.explicit) {
        let Some(arg) = arg_for(&cmd, key) else {
            continue;
        };
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count => {
                // The flag's raw value when given is its "missing" value.
                out.push(OsString::from(format!("--{key}")));
            }
            _ => {
                for v in &s.raw {
                    let mut t = OsString::from(format!("--{key}="));
                    t.push(v);
                    out.push(t);
                }
            }
        }
    }
    out
}

/// Parse `tokens` (from [`tokens_of`]) back into a configuration.
pub fn parse_tokens(tokens: &[OsString]) -> Result<Loaded, LoadError> {
    let cmd = Args::command();
    let m = cmd
        .clone()
        .try_get_matches_from(tokens)
        .map_err(|e| LoadError::Config(vec![clap_message(&e)]))?;
    let args = Args::from_arg_matches(&m).map_err(|e| LoadError::Config(vec![clap_message(&e)]))?;
    Ok(Loaded {
        args,
        settings: settings_of(&cmd, &m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnOffArg, ReferenceArg};
    use std::io::Write;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hwntpd-config-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("hwntpd.toml");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn argv(extra: &[&str]) -> Vec<OsString> {
        std::iter::once("hwntpd")
            .chain(extra.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn load_file(name: &str, text: &str, extra: &[&str]) -> Result<Loaded, LoadError> {
        let p = write(name, text);
        let mut a = vec!["--config", p.to_str().unwrap()];
        a.extend_from_slice(extra);
        load(&argv(&a))
    }

    fn errors(r: Result<Loaded, LoadError>) -> Vec<String> {
        match r {
            Err(LoadError::Config(e)) => e,
            Err(LoadError::Cli(e)) => panic!("command-line error: {e}"),
            Ok(l) => panic!("accepted: {:?}", l.args),
        }
    }

    #[test]
    fn keys_are_long_flag_names_of_every_kind() {
        let l = load_file(
            "kinds",
            "# a comment\nlisten = [\"127.0.0.1:1123\", \"[::1]:1123\"]\nreference = \"local\"\n\
             stratum = 3\nrefid = \"10.0.0.1\"\nutc-offset = -37\nsend-latency-comp = false\n\
             interface = \"eth0\"\n",
            &[],
        )
        .unwrap();
        let a = l.args;
        assert_eq!(a.listen.len(), 2);
        assert_eq!(a.reference, ReferenceArg::Local);
        assert_eq!(a.stratum, Some(3));
        assert_eq!(a.refid.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.utc_offset, Some(-37), "negative values are not flags");
        assert_eq!(
            a.send_latency_comp,
            OnOffArg::Off,
            "a bool for an on|off value"
        );
        assert_eq!(
            a.interfaces,
            vec!["eth0".to_string()],
            "a scalar for a repeatable flag"
        );
        assert!(l.settings["stratum"].explicit);
        assert!(!l.settings["workers"].explicit);
        assert_eq!(l.settings["listen"].raw.len(), 2);
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let l = load_file(
            "override",
            "stratum = 3\nrefid = \"10.0.0.1\"\nlisten = [\"127.0.0.1:1123\", \"[::1]:1123\"]\n",
            &["--stratum", "4", "--listen", "127.0.0.1:2123"],
        )
        .unwrap();
        assert_eq!(l.args.stratum, Some(4));
        assert_eq!(l.args.refid.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            l.args.listen,
            vec!["127.0.0.1:2123".parse().unwrap()],
            "a repeatable flag on the command line replaces the file's list"
        );
    }

    #[test]
    fn command_only_flags_are_not_keys() {
        let l = load_file("bool", "check = true\n", &[]);
        let e = errors(l);
        assert!(
            e[0].contains(":1: key \"check\": --check cannot be set"),
            "{e:?}"
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key_and_all_are_reported() {
        let e = errors(load_file(
            "errors",
            "reference = \"local\"\n\nstratum = 16\nrate_limit_burstt = 3\nworkers = \"two\"\n\
             listen = [\"127.0.0.1\"]\nstats_interval = 5\nrefid = [\"A\"]\n",
            &[],
        ));
        let all = e.join("\n");
        assert_eq!(e.len(), 6, "{all}");
        assert!(e.iter().all(|m| m.contains("hwntpd.toml:")), "{all}");
        assert!(
            all.contains(":3: key \"stratum\":") && all.contains("not a stratum"),
            "{all}"
        );
        assert!(
            all.contains(":4: key \"rate_limit_burstt\": unknown key"),
            "{all}"
        );
        assert!(all.contains(":5: key \"workers\":"), "{all}");
        assert!(all.contains(":6: key \"listen\":"), "{all}");
        assert!(
            all.contains(
                ":7: key \"stats_interval\": unknown key (did you mean \"stats-interval\""
            ),
            "{all}"
        );
        assert!(all.contains(":8: key \"refid\": takes one value"), "{all}");
    }

    #[test]
    fn toml_syntax_errors_name_the_line() {
        let e = errors(load_file(
            "syntax",
            "stratum = 2\nrefid = \"unterminated\n",
            &[],
        ));
        assert!(e[0].contains("hwntpd.toml:2: "), "{e:?}");
        let e = errors(load_file("dup", "stratum = 2\nstratum = 3\n", &[]));
        assert!(e[0].contains("hwntpd.toml:2: "), "{e:?}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let r = load(&argv(&["--config", "/nonexistent/hwntpd.toml"]));
        let e = errors(r);
        assert!(
            e[0].contains("/nonexistent/hwntpd.toml: cannot read"),
            "{e:?}"
        );
    }

    #[test]
    fn tokens_round_trip() {
        let l = load_file(
            "round",
            "listen = [\"127.0.0.1:1123\"]\nstratum = 2\nrefid = \"10.0.0.1\"\nutc-offset = -1\n\
             send-latency-comp = \"off\"\n",
            &[],
        )
        .unwrap();
        let back = parse_tokens(&tokens_of(&l.settings)).unwrap();
        assert_eq!(back.settings, l.settings);
    }

    #[test]
    fn every_flag_is_a_key() {
        let keys = file_keys();
        for k in [
            "listen",
            "reference",
            "stratum",
            "log-level",
            "send-latency-comp",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| NOT_IN_FILE.contains(&k.as_str())));
    }
}
