//! `hwntpd`: serve NTP with the most exact timestamps this host can give.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let args = hwntpd::config::Args::parse();
    let filter = match EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hwntpd: error: --log-level {:?}: {e}", args.log_level);
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = hwntpd::server::run(&args) {
        eprintln!("hwntpd: error: {e:#}");
        std::process::exit(1);
    }
}
