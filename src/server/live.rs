//! Live reload: on SIGHUP, re-read the configuration file and apply at once
//! what can change without restarting a worker or dropping a packet.
//!
//! The mechanism knows no flag by itself:
//!
//! 1. [`crate::config::file::load`] parses the file and the original command
//!    line again (flags still override the file). Any error rejects the whole
//!    file: it is logged and the running configuration stays.
//! 2. [`plan`] compares the new settings with the running ones key by key
//!    (long flag names, raw values).
//! 3. A changed key that some registered [`Reloader::on_change`] handler
//!    claims is *live*; every other changed key needs a restart: it is
//!    logged, and its running value is kept.
//! 4. The running settings with the live keys taken from the file are parsed
//!    again into [`Args`]; every handler whose keys changed *prepares* its
//!    change from them (building and checking new values, e.g. an encoded
//!    reference ID). Only when all have prepared does each *commit* (stores
//!    into an atomic or an arc-swap handle that workers and background
//!    threads already read), so a file is applied whole or not at all.
//!
//! Handlers registered by [`crate::server::run_with`]: `stratum`, `refid`,
//! `on-unsync` (the state cell's claims), `rx-comp`, `tx-comp`,
//! `send-latency-comp` (the time domains); by `main`: `log-level` (the
//! `tracing` reload layer).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use crate::clock::domain::TimeDomains;
use crate::clock::snapshot::{Claims, StateCell};
use crate::clock::wire::Compensation;
use crate::config::file::{load, parse_tokens, tokens_of, Loaded, Setting, Settings};
use crate::config::{Args, OnOffArg};

/// Every key that changes live: a handler may claim only these, and the
/// README, the man page and `etc/hwntpd.toml` (tested) say so for each.
pub const LIVE_KEYS: &[&str] = &[
    "stratum",
    "refid",
    "on-unsync",
    "rx-comp",
    "tx-comp",
    "send-latency-comp",
    "log-level",
    "allow",
    "deny",
    "deny-action",
    "rate-limit",
    "rate-limit-interval",
    "rate-limit-burst",
    "rate-limit-leak",
    "rate-limit-kod",
    "rate-limit-prefix-v4",
    "rate-limit-prefix-v6",
];

/// Applies a prepared change; runs only once every handler has prepared.
pub type Commit = Box<dyn FnOnce() + Send>;
/// Builds a [`Commit`] from the configuration to apply, or says why it cannot.
pub type Prepare = Box<dyn Fn(&Args) -> Result<Commit> + Send>;

struct Handler {
    keys: &'static [&'static str],
    prepare: Prepare,
}

/// One key whose value differs between the running configuration and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The long flag name.
    pub key: String,
    /// The running value.
    pub old: Setting,
    /// The file's value.
    pub new: Setting,
}

/// What a reload does with each changed key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Changes applied at once.
    pub live: Vec<Change>,
    /// Changes that need a restart (the running value is kept).
    pub restart: Vec<Change>,
}

/// Compare `running` with `new` key by key; `live` are the keys that can
/// change at run time (pure).
pub fn plan(running: &Settings, new: &Settings, live: &BTreeSet<&str>) -> Plan {
    let mut p = Plan::default();
    for (key, n) in new {
        let Some(o) = running.get(key) else { continue };
        if o.raw == n.raw {
            continue;
        }
        let c = Change {
            key: key.clone(),
            old: o.clone(),
            new: n.clone(),
        };
        if live.contains(key.as_str()) {
            p.live.push(c);
        } else {
            p.restart.push(c);
        }
    }
    p
}

/// The running settings with the live changes of `plan` applied (pure).
pub fn applied(running: &Settings, plan: &Plan) -> Settings {
    let mut s = running.clone();
    for c in &plan.live {
        s.insert(c.key.clone(), c.new.clone());
    }
    s
}

/// What [`Reloader::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No `--config` file: nothing to re-read.
    NoFile,
    /// The file was rejected whole; the running configuration stays.
    Rejected(String),
    /// Applied: the keys changed live, and those kept for a restart.
    Applied {
        /// Keys changed at once.
        live: Vec<String>,
        /// Keys whose change needs a restart.
        restart: Vec<String>,
    },
}

/// Re-reads the configuration on SIGHUP and applies it.
pub struct Reloader {
    argv: Vec<OsString>,
    path: Option<PathBuf>,
    running: Loaded,
    handlers: Vec<Handler>,
}

impl Reloader {
    /// A reloader for the configuration `running`, parsed from `argv`
    /// (program name first). The server calls [`Reloader::reload`] on SIGHUP
    /// ([`super::signals`]).
    pub fn new(argv: Vec<OsString>, running: Loaded) -> Self {
        Reloader {
            argv,
            path: running.args.config.clone(),
            running,
            handlers: Vec::new(),
        }
    }

    /// Handle changes of `keys` (long flag names) live: `prepare` gets the
    /// whole configuration to apply and returns what commits it.
    pub fn on_change(
        &mut self,
        keys: &'static [&'static str],
        prepare: impl Fn(&Args) -> Result<Commit> + Send + 'static,
    ) {
        for k in keys {
            assert!(
                LIVE_KEYS.contains(k),
                "{k} changes live but is not in LIVE_KEYS"
            );
        }
        self.handlers.push(Handler {
            keys,
            prepare: Box::new(prepare),
        });
    }

    /// The keys that change live.
    pub fn live_keys(&self) -> BTreeSet<&'static str> {
        self.handlers
            .iter()
            .flat_map(|h| h.keys.iter().copied())
            .collect()
    }

    /// The running configuration.
    pub fn running(&self) -> &Args {
        &self.running.args
    }

    /// Re-read the file and apply it; logs what happened.
    pub fn reload(&mut self) -> Outcome {
        let Some(path) = self.path.clone() else {
            tracing::info!("SIGHUP: no --config file, nothing to reload");
            return Outcome::NoFile;
        };
        tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
        match self.try_reload() {
            Ok((live, restart)) => {
                tracing::info!(
                    path = %path.display(),
                    changed_live = live.len(),
                    need_restart = restart.len(),
                    "configuration reloaded"
                );
                Outcome::Applied { live, restart }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(
                    path = %path.display(),
                    "configuration reload rejected, running configuration kept: {msg}"
                );
                Outcome::Rejected(msg)
            }
        }
    }

    fn try_reload(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        let new = load(&self.argv).map_err(|e| anyhow!("{e}"))?;
        validate(&new.args)?;
        let plan = plan(&self.running.settings, &new.settings, &self.live_keys());
        let mut target = parse_tokens(&tokens_of(&applied(&self.running.settings, &plan)))
            .map_err(|e| anyhow!("{e}"))?;
        target.args.config.clone_from(&self.path);
        let changed: BTreeSet<&str> = plan.live.iter().map(|c| c.key.as_str()).collect();
        let mut commits = Vec::new();
        for h in &self.handlers {
            if h.keys.iter().any(|k| changed.contains(k)) {
                commits.push((h.prepare)(&target.args)?);
            }
        }
        for commit in commits {
            commit();
        }
        for c in &plan.live {
            tracing::info!(key = %c.key, old = %c.old, new = %c.new, "setting changed live");
        }
        for c in &plan.restart {
            tracing::warn!(
                key = %c.key,
                running = %c.old,
                file = %c.new,
                "setting changed in the configuration file needs a restart: keeping the running value"
            );
        }
        let keys = |v: &[Change]| v.iter().map(|c| c.key.clone()).collect();
        let out = (keys(&plan.live), keys(&plan.restart));
        self.running = Loaded {
            args: target.args,
            settings: target.settings,
        };
        Ok(out)
    }
}

/// Register the server's live settings: the reference claims (`stratum`,
/// `refid`, `on-unsync`) through the state cell, the compensations
/// (`rx-comp`, `tx-comp`, `send-latency-comp`) through the time domains.
pub fn register_server(
    r: &mut Reloader,
    cell: &Arc<StateCell>,
    domains: &Arc<TimeDomains>,
    precision: i8,
) {
    let cell = cell.clone();
    r.on_change(&["stratum", "refid", "on-unsync"], move |args| {
        let claims = Claims::of(&super::reference_config(args, precision)?);
        let cell = cell.clone();
        Ok(Box::new(move || cell.set_claims(claims)))
    });
    let d = domains.clone();
    r.on_change(&["rx-comp", "tx-comp"], move |args| {
        let comp = Compensation::new(args.rx_comp, args.tx_comp);
        let d = d.clone();
        Ok(Box::new(move || d.set_compensation(comp)))
    });
    let d = domains.clone();
    r.on_change(&["send-latency-comp"], move |args| {
        let on = args.send_latency_comp == OnOffArg::On;
        let d = d.clone();
        Ok(Box::new(move || d.set_send_latency_comp(on)))
    });
}

/// Register the access list and rate limits (`allow`, `deny`, `deny-action`,
/// `rate-limit*`): a new [`crate::policy::Policy`] stored into the handle the
/// workers read at their next packet. The client table's size
/// (`client-table-entries`) needs a restart.
pub fn register_policy(r: &mut Reloader, shared: &Arc<crate::policy::Shared>) {
    let shared = shared.clone();
    r.on_change(
        &[
            "allow",
            "deny",
            "deny-action",
            "rate-limit",
            "rate-limit-interval",
            "rate-limit-burst",
            "rate-limit-leak",
            "rate-limit-kod",
            "rate-limit-prefix-v4",
            "rate-limit-prefix-v6",
        ],
        move |args| {
            let policy = args.policy().map_err(anyhow::Error::msg)?;
            let shared = shared.clone();
            Ok(Box::new(move || shared.store(policy)))
        },
    );
}

/// Check what [`crate::config::file::load`] cannot: values that depend on
/// each other (a reference ID at a stratum) and the log filter. `--check` and
/// every reload run it.
pub fn validate(args: &Args) -> Result<()> {
    super::reference_config(args, -20)?;
    args.policy().map_err(anyhow::Error::msg)?;
    crate::logging::filter(&args.log_level).map_err(|e| anyhow!(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &[&str])]) -> Settings {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Setting {
                        raw: v.iter().map(OsString::from).collect(),
                        explicit: !v.is_empty(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn plan_sorts_changes_into_live_and_restart() {
        let running = settings(&[
            ("stratum", &["1"]),
            ("workers", &["2"]),
            ("refid", &["GPS"]),
            ("listen", &["127.0.0.1:123"]),
        ]);
        let new = settings(&[
            ("stratum", &["2"]),
            ("workers", &["4"]),
            ("refid", &["GPS"]),
            ("listen", &["127.0.0.1:123", "[::1]:123"]),
        ]);
        let live: BTreeSet<&str> = ["stratum", "refid"].into();
        let p = plan(&running, &new, &live);
        assert_eq!(
            p.live.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["stratum"]
        );
        assert_eq!(
            p.restart.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            ["listen", "workers"]
        );
        let a = applied(&running, &p);
        assert_eq!(a["stratum"].raw, [OsString::from("2")]);
        assert_eq!(a["workers"].raw, [OsString::from("2")], "restart-only kept");
        assert_eq!(a["listen"].raw.len(), 1);
        assert!(plan(&running, &running, &live) == Plan::default());
    }

    #[test]
    fn live_keys_are_flags() {
        let keys = crate::config::file::file_keys();
        for k in LIVE_KEYS {
            assert!(keys.iter().any(|x| x == k), "{k} is not a flag");
        }
    }

    #[test]
    fn a_removed_key_is_a_change_back_to_the_default() {
        let running = settings(&[("stratum", &["3"])]);
        let new = settings(&[("stratum", &[])]);
        let p = plan(&running, &new, &["stratum"].into());
        assert_eq!(p.live.len(), 1);
        assert!(!applied(&running, &p)["stratum"].explicit);
    }

    #[test]
    fn validate_checks_refid_against_stratum_and_the_log_filter() {
        use clap::Parser;
        let ok = Args::try_parse_from(["hwntpd", "--stratum", "2", "--refid", "10.0.0.1"]).unwrap();
        assert!(validate(&ok).is_ok());
        let bad = Args::try_parse_from(["hwntpd", "--stratum", "2", "--refid", "GPS"]).unwrap();
        assert!(validate(&bad).is_err());
        let bad = Args::try_parse_from(["hwntpd", "--log-level", "[[["]).unwrap();
        assert!(validate(&bad).is_err());
    }
}
