//! `hwntpd-bench`: a batched NTP load generator (`load`), the floor responder
//! that measures what the kernel alone costs per reply (`floor`), and a
//! field-printing client (`query`), and the in-process cost of NTS per
//! request (`nts-cost`). See `scripts/bench.sh` for how they are
//! combined into a comparison of hwntpd, chronyd and the floor.

mod floor;
mod hist;
mod load;
mod ntscost;
mod ntske;
mod query;
mod sys;

use clap::{Parser, Subcommand};

/// NTP server benchmark tools.
#[derive(Parser, Debug)]
#[command(name = "hwntpd-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Offer NTP requests at a fixed rate or a rising sweep and report answers,
    /// round-trip times and server turnaround.
    Load(load::LoadArgs),
    /// The floor responder: batched receive, fixed reply echoing the origin,
    /// batched send; nothing else.
    Floor(floor::FloorArgs),
    /// Send a few requests and print every field of the replies.
    Query(query::QueryArgs),
    /// The user-space cost of NTS per request, in-process (no network).
    NtsCost(ntscost::NtsCostArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Load(a) => load::run(a),
        Cmd::Floor(a) => floor::run(a),
        Cmd::Query(a) => query::run(a),
        Cmd::NtsCost(a) => ntscost::run(a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hwntpd-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
