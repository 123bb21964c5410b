//! The command line and its value parsers on arbitrary input: the whole
//! `Args` parser (every flag's value parser: reference, CPU list, stratum,
//! workers, addresses, numbers with ranges), `parse_cpu_list` on its own, and
//! the reference-ID encoder behind `--refid`.
//!
//! Input: the arguments after the program name, separated by NUL or newline
//! (invalid UTF-8 replaced); the whole input is also given, as text, to
//! `parse_cpu_list` and (after its first octet, the stratum) to `encode_refid`.
//!
//! Invariants checked: no panic; an accepted CPU list is not empty, holds
//! only numbers the text names (each range at most 4097 CPUs); an accepted
//! worker count is 1..=1024, an accepted stratum 1..=15; a reference ID is
//! accepted only for strata 0..=15.
#![no_main]

use clap::Parser;
use hwntpd::config::{parse_cpu_list, Args};
use hwntpd::protocol::refid::encode_refid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let argv: Vec<&str> = std::iter::once("hwntpd")
        .chain(text.split(['\0', '\n']))
        .collect();
    if let Ok(args) = Args::try_parse_from(&argv) {
        // (Not worker_count(): it reads the cgroup's CPU limit from /sys.)
        assert!(!args.listen_addrs().is_empty());
        if let Some(w) = args.workers {
            assert!((1..=1024).contains(&w));
        }
        if let Some(s) = args.stratum {
            assert!((1..=15).contains(&s));
        }
        if let Some(cpus) = &args.cpus {
            assert!(!cpus.0.is_empty());
        }
        assert!(args.batch_wait_us <= 10_000);
        assert!((1..=86400).contains(&args.stats_interval));
    }

    if let Ok(cpus) = parse_cpu_list(&text) {
        assert!(!cpus.0.is_empty());
        let parts = text.split(',').filter(|p| !p.trim().is_empty()).count();
        assert!(
            cpus.0.len() <= parts * 4097,
            "{} CPUs from {parts} parts",
            cpus.0.len()
        );
    }

    if let Some((&stratum, rest)) = data.split_first() {
        let text = String::from_utf8_lossy(rest);
        if let Ok(id) = encode_refid(stratum, &text) {
            assert!(stratum <= 15);
            if stratum <= 1 {
                assert!(id.iter().all(u8::is_ascii), "{id:?}");
            }
        }
    }
});
