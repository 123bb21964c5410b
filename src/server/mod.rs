//! Workers (one io_uring event loop each), their start-up and their statistics.

pub mod interleave;
pub mod stats;
pub mod timestamping;
pub mod txstamps;
pub mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::clock::precision::measure_precision;
use crate::clock::reference::{ReferenceConfig, ReferenceKind};
use crate::clock::snapshot::{initial_state, spawn_refresher, StateCell};
use crate::config::{Args, OnUnsyncArg, ReferenceArg};
use crate::net::socket::bind_udp;
use crate::net::uring::RingConfig;
use crate::protocol::refid::encode_refid;
use interleave::InterleaveTable;
use stats::{StatsSnapshot, WorkerStats};
use worker::{HardwareIsUtc, Worker, WorkerConfig, WorkerSocket};

/// Build the reference configuration from the command line.
pub fn reference_config(args: &Args, precision: i8) -> Result<ReferenceConfig> {
    let (kind, default_refid) = match args.reference {
        ReferenceArg::System => (ReferenceKind::System, "SYS"),
        ReferenceArg::Local => (ReferenceKind::Local, "LOCL"),
    };
    let stratum = args.stratum.unwrap_or(1);
    let text = args.refid.as_deref().unwrap_or(default_refid);
    let refid = encode_refid(stratum, text)
        .with_context(|| format!("--refid {text:?} at stratum {stratum}"))?;
    let cfg = ReferenceConfig {
        kind,
        stratum,
        refid,
        precision,
        min_poll: ReferenceConfig::DEFAULT_MIN_POLL,
        max_poll: ReferenceConfig::DEFAULT_MAX_POLL,
        serve_unsynchronized: args.on_unsync == OnUnsyncArg::Serve,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Run the server until SIGINT or SIGTERM.
pub fn run(args: &Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    let precision = measure_precision();
    let reference = reference_config(args, precision)?;
    let cell = Arc::new(StateCell::new(initial_state(&reference)));
    let plan = timestamping::plan(args)?;

    let n_workers = args.worker_count();
    let listen = args.listen_addrs();
    // The workers share each port through SO_REUSEPORT, which would also let a
    // second server (same user) share it silently: bind once without it first,
    // so a port already in use is an error.
    for addr in &listen {
        drop(bind_udp(*addr, false)?);
    }
    let mut per_worker = Vec::with_capacity(n_workers);
    for _ in 0..n_workers {
        let mut socks = Vec::with_capacity(listen.len());
        for addr in &listen {
            let fd = bind_udp(*addr, true)?;
            plan.apply(&fd)
                .with_context(|| format!("enabling timestamping on {addr}"))?;
            socks.push(WorkerSocket { fd, local: *addr });
        }
        per_worker.push(socks);
    }

    let table = (args.interleave_entries > 0)
        .then(|| Arc::new(InterleaveTable::new(args.interleave_entries)));
    if let Some(t) = &table {
        tracing::info!(
            entries = t.capacity(),
            memory_kib = t.memory_bytes() / 1024,
            "interleaved mode on (table shared by all workers)"
        );
    }
    let refresher = spawn_refresher(reference.clone(), cell.clone(), stop.clone())?;

    let ring = RingConfig::default();
    let mut stats = Vec::with_capacity(n_workers);
    let mut handles = Vec::with_capacity(n_workers);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let st = Arc::new(WorkerStats::default());
        stats.push(st.clone());
        let cfg = WorkerConfig {
            id,
            sockets,
            state: cell.clone(),
            table: table.clone(),
            stats: st,
            stop: stop.clone(),
            tx_mode: plan.tx_mode,
            tx_hardware: plan.tx_hardware,
            explicit_tx_key: plan.explicit_tx_key,
            rx: plan.rx,
            hardware: Arc::new(HardwareIsUtc),
            ring,
            cpu: args.cpus.as_ref().and_then(|c| c.0.get(id).copied()),
        };
        let ready = ready_tx.clone();
        let stop_on_error = stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("hwntpd-w{id}"))
            .spawn(move || {
                // The ring is created on the thread that uses it (single-issuer rings).
                let w = match Worker::new(cfg) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                if let Err(e) = w.run() {
                    tracing::error!(worker = id, "worker failed: {e}");
                    stop_on_error.store(true, Ordering::Relaxed);
                }
            })?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..n_workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                bail!("{e}");
            }
            Err(_) => bail!("a worker thread exited during start-up"),
        }
    }
    tracing::info!(
        workers = n_workers,
        listen = ?listen,
        rx_timestamps = plan.rx_description(),
        tx_timestamps = plan.tx_description(),
        "serving NTP"
    );

    let interval = Duration::from_secs(args.stats_interval);
    let mut next = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next {
            next += interval;
            report(&stats, args.stats_file.as_deref(), true);
        }
    }
    tracing::info!("stopping");
    for h in handles {
        let _ = h.join();
    }
    let _ = refresher.join();
    report(&stats, args.stats_file.as_deref(), true);
    Ok(())
}

fn report(stats: &[Arc<WorkerStats>], file: Option<&Path>, log: bool) -> StatsSnapshot {
    let total = stats::sum(stats.iter().map(|s| s.as_ref()));
    if log {
        tracing::info!("stats: {}", total.summary());
    }
    if let Some(path) = file {
        if let Err(e) = write_atomically(path, total.to_prometheus().as_bytes()) {
            tracing::warn!(path = %path.display(), "cannot write stats file: {e}");
        }
    }
    total
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
