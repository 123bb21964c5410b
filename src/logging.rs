//! Logging to standard error, with a level that SIGHUP can change.
//!
//! * Colour (ANSI escapes) only when standard error is a terminal and
//!   `NO_COLOR` is unset: log files and journals get plain text.
//! * No timestamps when standard error is the systemd journal's stream
//!   (`JOURNAL_STREAM` names its device and inode): journald stamps every line
//!   itself.
//! * The filter sits behind a [`tracing_subscriber::reload`] layer, so
//!   [`LogHandle::set`] swaps it while the server runs.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    /// Replace the filter (from [`filter`]).
    pub fn set(&self, filter: EnvFilter) {
        if let Err(e) = self.0.reload(filter) {
            tracing::warn!("cannot change the log level: {e}");
        }
    }
}

/// The filter for `--log-level`: a level or a `tracing` filter directive.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))
}

/// How log lines look on this standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours.
    pub ansi: bool,
    /// Timestamps at the start of each line.
    pub timestamps: bool,
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, "DEVICE:INODE")
/// names the file whose device and inode are `dev` and `ino`.
pub fn is_journal_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.trim().parse::<u64>().ok()?, i.trim().parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The style for this process's standard error and environment.
pub fn detect_style() -> Style {
    let stderr = std::io::stderr();
    let journal = std::env::var("JOURNAL_STREAM").ok().is_some_and(|js| {
        nix::sys::stat::fstat(stderr.as_fd())
            .is_ok_and(|st| is_journal_stream(&js, st.st_dev, st.st_ino))
    });
    Style {
        ansi: stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        timestamps: !journal,
    }
}

/// Install the global subscriber writing to standard error with `filter`.
pub fn init(filter: EnvFilter, style: Style) -> LogHandle {
    let (filter, handle) = reload::Layer::new(filter);
    let layer = fmt::layer()
        .with_target(false)
        .with_ansi(style.ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if style.timestamps {
        registry.with(layer).init();
    } else {
        registry.with(layer.without_time()).init();
    }
    LogHandle(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_file() {
        assert!(is_journal_stream("8:1234", 8, 1234));
        assert!(!is_journal_stream("8:1234", 8, 1235));
        assert!(!is_journal_stream("9:1234", 8, 1234));
        assert!(!is_journal_stream("", 8, 1234));
        assert!(!is_journal_stream("garbage", 8, 1234));
    }

    #[test]
    fn filters() {
        assert!(filter("debug").is_ok());
        assert!(filter("hwntpd=trace,warn").is_ok());
        assert!(filter("[[[").is_err());
    }
}
