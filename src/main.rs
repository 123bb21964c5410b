//! `hwntpd`: serve NTP with the most exact timestamps this host can give.

use std::ffi::OsString;

use hwntpd::config::file::{load, LoadError};
use hwntpd::server::live::{validate, Reloader};

fn fail(msgs: impl IntoIterator<Item = String>) -> ! {
    for m in msgs {
        eprintln!("hwntpd: error: {m}");
    }
    std::process::exit(1);
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let check = argv.iter().any(|a| a == "--check");
    let loaded = match load(&argv) {
        Ok(l) => l,
        // --help, --version and usage errors as clap prints them; with
        // --check every error exits with 1.
        Err(LoadError::Cli(e)) if check && e.use_stderr() => fail([e
            .to_string()
            .trim_start_matches("error: ")
            .trim_end()
            .to_string()]),
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Config(errs)) => fail(errs),
    };
    let args = loaded.args.clone();
    if let Err(e) = validate(&args) {
        fail([format!("{e:#}")]);
    }
    if args.check {
        println!("configuration OK");
        return;
    }
    let filter = match hwntpd::logging::filter(&args.log_level) {
        Ok(f) => f,
        Err(e) => fail([e]),
    };
    let log = hwntpd::logging::init(filter, hwntpd::logging::detect_style());
    let mut reloader = Reloader::new(argv, loaded);
    reloader.on_change(&["log-level"], move |a| {
        let f = hwntpd::logging::filter(&a.log_level).map_err(anyhow::Error::msg)?;
        let log = log.clone();
        Ok(Box::new(move || log.set(f)))
    });
    if let Err(e) = hwntpd::server::run_with(&args, Some(reloader)) {
        eprintln!("hwntpd: error: {e:#}");
        std::process::exit(1);
    }
}
