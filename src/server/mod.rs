//! Workers (one io_uring event loop each), their start-up and their statistics.
// The event loop and its bookkeeping hold no `unsafe`: that is the Linux
// layer's (src/net/).
#![forbid(unsafe_code)]

pub mod egress_stamp;
pub mod health;
pub mod hysteresis;
pub mod interleave;
pub mod live;
pub mod metrics;
pub mod resilience;
pub mod restart;
pub mod sendlatency;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod timestamping;
pub mod tscheck;
pub mod txstamps;
pub mod watchdog;
pub mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::clock::domain::{ServedClock, TimeDomains};
use crate::clock::mirror::spawn_mirror;
use crate::clock::phc::{PhcFile, PhcReader};
use crate::clock::phc_service::{spawn_phc_thread, PhcService, TaiOffset};
use crate::clock::precision::measure_precision;
use crate::clock::reference::{ReferenceConfig, ReferenceKind};
use crate::clock::snapshot::{initial_state, spawn_refresher, StateCell};
use crate::clock::wire::{Compensation, SPEED_UNKNOWN};
use crate::config::{Args, OnOffArg, OnUnsyncArg, ReferenceArg, TimestampingArg};
use crate::net::socket::{bind_send_twins, bind_udp, set_recv_buffer};
use crate::net::uring::RingConfig;
use crate::protocol::refid::encode_refid;
use interleave::InterleaveTable;
use metrics::Exporter;
use stats::{StatsSnapshot, WorkerStats};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use supervisor::Supervisor;
use worker::{WorkerConfig, WorkerSocket};

/// Build the reference configuration from the command line.
pub fn reference_config(args: &Args, precision: i8) -> Result<ReferenceConfig> {
    let (kind, default_refid) = match args.reference {
        ReferenceArg::System => (ReferenceKind::System, "SYS"),
        ReferenceArg::Local => (ReferenceKind::Local, "LOCL"),
        ReferenceArg::Phc => (ReferenceKind::Phc, "PTP"),
        ReferenceArg::Ntp(_) => (ReferenceKind::Ntp, "SYS"),
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

/// The kernel's (major, minor) version from a release string like "6.18.44-foo".
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuse kernels without multishot `recvmsg` over provided buffers (6.0+).
fn check_kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match parse_kernel_version(&release) {
        Some(v) if v < (6, 0) => bail!(
            "Linux {} lacks io_uring multishot recvmsg with provided buffers: hwntpd needs Linux 6.0 or newer",
            release.trim()
        ),
        Some(_) => Ok(()),
        None => {
            tracing::warn!("cannot tell the kernel version; assuming it has io_uring multishot recvmsg (6.0+)");
            Ok(())
        }
    }
}

/// Run the server until SIGINT or SIGTERM.
pub fn run(args: &Args) -> Result<()> {
    run_with(args, None)
}

/// [`run`], reloading the configuration on SIGHUP through `reloader`.
pub fn run_with(args: &Args, mut reloader: Option<live::Reloader>) -> Result<()> {
    check_kernel()?;
    let stop = Arc::new(AtomicBool::new(false));
    let signals = signals::Signals::install(&stop).context("installing signal handlers")?;

    let precision = measure_precision();
    let reference = reference_config(args, precision)?;
    let cell = Arc::new(StateCell::new(initial_state(&reference)));
    // With --on-unsync drop, answer nothing until the health check says healthy.
    cell.set_withheld(args.on_unsync == OnUnsyncArg::Drop);
    let mut plan = timestamping::plan(args)?;
    let served = if args.reference == ReferenceArg::Phc {
        ServedClock::Phc
    } else {
        ServedClock::System
    };
    let domains = TimeDomains::new(
        served,
        Compensation::new(args.rx_comp, args.tx_comp),
        plan.link_speed_mbps.unwrap_or(SPEED_UNKNOWN),
    );
    domains.set_send_latency_comp(args.send_latency_comp == OnOffArg::On);
    let phc_path = args.phc.clone().or_else(|| plan.phc.clone());
    let mut threads = Vec::new();
    match &phc_path {
        Some(path) => {
            let file = PhcFile::open(path)
                .with_context(|| format!("opening PTP hardware clock {}", path.display()))?;
            let reader = PhcReader::new(file)
                .with_context(|| format!("reading PTP hardware clock {}", path.display()))?;
            let tai = args.utc_offset.map_or(TaiOffset::Kernel, TaiOffset::Fixed);
            if served == ServedClock::Phc && tai == TaiOffset::Kernel {
                let kernel_tai = crate::clock::kernel::read_kernel_clock().map_or(0, |k| k.tai);
                tracing::info!(
                    tai_offset = kernel_tai,
                    "PHC time served less the kernel's TAI-UTC offset (set --utc-offset to override; 0 for a PHC kept in UTC)"
                );
            }
            let state = (served == ServedClock::Phc).then(|| (reference.clone(), cell.clone()));
            threads.push(spawn_phc_thread(
                PhcService::new(reader, tai),
                domains.clone(),
                state,
                stop.clone(),
            )?);
        }
        None if served == ServedClock::Phc => {
            bail!("--reference phc needs --phc PATH, or an --interface whose NIC has a PTP hardware clock")
        }
        None if plan.rx_hardware || plan.tx_hardware => {
            tracing::warn!("hardware timestamps are on but no PTP hardware clock is known to convert them: serving software timestamps (give --phc)");
            plan.tx_hardware = false;
        }
        None => {}
    }

    let n_workers = args.worker_count();
    let listen = args.listen_addrs();
    if let Some(dup) = crate::config::duplicate_listen(&listen) {
        bail!("--listen {dup} is given twice: each address may be listened on once");
    }
    // The workers share each port through SO_REUSEPORT, which would also let a
    // second server (same user) share it silently: bind once without it first,
    // so a port already in use is an error.
    for addr in &listen {
        drop(bind_udp(*addr, false)?);
    }
    // Every socket, receiving or send-only, gets the receive buffer (a
    // send-only socket's error queue, a turn's transmit stamps, is charged to
    // it) and the timestamping options; returns the buffer obtained.
    let prepare = |fd: &OwnedFd, what: &str| -> Result<usize> {
        let got = if args.recv_buffer > 0 {
            set_recv_buffer(fd.as_fd(), args.recv_buffer)
                .with_context(|| format!("setting the receive buffer on {what}"))?
        } else {
            0
        };
        plan.apply(fd)
            .with_context(|| format!("enabling timestamping on {what}"))?;
        Ok(got)
    };
    let mut per_worker = Vec::with_capacity(n_workers);
    let mut recv_buffer_obtained = 0;
    for _ in 0..n_workers {
        let mut socks = Vec::with_capacity(listen.len());
        for addr in &listen {
            let fd = bind_udp(*addr, true)?;
            recv_buffer_obtained = prepare(&fd, &addr.to_string())?;
            socks.push(WorkerSocket {
                fd,
                send: None,
                local: *addr,
            });
        }
        per_worker.push(socks);
    }

    // Replies leave from send-only twins of the receiving sockets, so that no
    // receive wake-up runs between a transmit timestamp and the packet.
    for (j, addr) in listen.iter().enumerate() {
        let group: Vec<_> = per_worker
            .iter()
            .map(|w: &Vec<WorkerSocket>| w[j].fd.as_fd())
            .collect();
        match bind_send_twins(&group) {
            Ok(twins) => {
                for (w, twin) in per_worker.iter_mut().zip(twins) {
                    prepare(&twin, &format!("{addr} (send socket)"))?;
                    w[j].send = Some(twin);
                }
                tracing::info!(%addr, sockets = n_workers, "replies leave from send-only sockets bound to the same port (no receive wake-up between a transmit timestamp and the packet)");
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "no send-only socket: replies leave from the receiving socket, whose receive wake-up then runs between each transmit timestamp and the packet's departure")
            }
        }
    }

    if args.recv_buffer > 0 {
        // The kernel reports twice the usable size (half is its bookkeeping).
        tracing::info!(
            asked_kib = args.recv_buffer / 1024,
            obtained_kib = recv_buffer_obtained / 2 / 1024,
            "socket receive buffers"
        );
    }
    let policy = args.policy().map_err(anyhow::Error::msg)?;
    let shared = Arc::new(crate::policy::Shared::new(
        policy,
        args.client_table_entries as usize,
    ));
    log_policy(&shared);
    let table = (args.interleave_entries > 0)
        .then(|| Arc::new(InterleaveTable::new(args.interleave_entries)));
    if let Some(t) = &table {
        tracing::info!(
            entries = t.capacity(),
            memory_kib = t.memory_bytes() / 1024,
            "interleaved mode on (table shared by all workers)"
        );
    }
    match &args.reference {
        ReferenceArg::System | ReferenceArg::Local => {
            threads.push(spawn_refresher(
                reference.clone(),
                cell.clone(),
                stop.clone(),
            )?);
        }
        ReferenceArg::Ntp(upstream) => {
            threads.push(spawn_mirror(
                *upstream,
                reference.clone(),
                cell.clone(),
                stop.clone(),
            )?);
        }
        ReferenceArg::Phc => {} // the PHC thread publishes the state
    }

    // NTS (RFC 8915): master keys, the NTS-KE server, the workers' state.
    // NTS-KE connections obey the access list (live: reloads swap it).
    let acl = shared.clone();
    let admit: crate::nts::ke_server::Admit = Arc::new(move |ip| acl.load().acl.allows(ip));
    let nts = crate::nts::service::start(args, &listen, Some(admit), stop.clone())?;

    // Basic replies' transmit timestamps written at egress (eBPF, tcx): loaded
    // and attached while still privileged.
    let socket_fds: Vec<_> = per_worker
        .iter()
        .flatten()
        .map(|s: &WorkerSocket| s.send_fd().as_raw_fd())
        .collect();
    let egress = egress_stamp::start(
        args.egress_stamp,
        args.egress_correction == OnOffArg::On,
        served,
        plan.tx_hardware,
        &socket_fds,
        stop.clone(),
    )?;
    threads.extend(egress.thread);

    let ring = RingConfig {
        batch_wait_us: args.batch_wait_us,
        ..RingConfig::default()
    };
    let guards = resilience::Guards {
        max_request_age_ns: args.max_request_age_ms * 1_000_000,
        ..Default::default()
    };
    refresh_broadcasts(&guards.broadcasts);
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
            policy: Some(shared.clone()),
            stats: st,
            stop: stop.clone(),
            tx_mode: plan.tx_mode,
            tx_hardware: plan.tx_hardware,
            explicit_tx_key: plan.explicit_tx_key,
            rx: plan.rx,
            domains: domains.clone(),
            ring,
            cpu: args.cpus.as_ref().and_then(|c| c.0.get(id).copied()),
            guards: guards.clone(),
            nts: nts.as_ref().map(|n| n.state.clone()),
            direct_send: args.direct_send == OnOffArg::On,
            warm_send_path: args.warm_send_path == OnOffArg::On,
            egress: egress.slots.clone(),
        };
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("hwntpd-w{id}"))
            // The ring is created on the thread that uses it (single-issuer
            // rings); a worker that fails is rebuilt there, the server goes on.
            .spawn(move || {
                restart::supervise(cfg, |r| {
                    let _ = ready.send(r);
                })
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
    if let Some(r) = reloader.as_mut() {
        live::register_server(r, &cell, &domains, precision);
        live::register_policy(r, &shared);
    }

    // Metrics endpoint (bound while still privileged), privilege drop, then
    // systemd's READY=1 and the health/watchdog supervision.
    let exporter = Arc::new(Exporter {
        stats,
        other_stats: nts
            .iter()
            .map(|n| n.ke_stats.clone())
            .chain(std::iter::once(egress.stats.clone()))
            .collect(),
        state: cell.clone(),
        reference: reference.kind.to_string(),
        domains: phc_path.is_some().then(|| domains.clone()),
        table: table.clone(),
        policy: Some(shared.clone()),
        health: health::HealthCell::new(),
        timestamping: plan.summary(),
        start_time: crate::clock::realtime::now_unix().0 as f64,
    });
    if let Some(addr) = args.metrics_listen {
        threads.push(metrics::spawn_endpoint(
            addr,
            exporter.clone(),
            stop.clone(),
        )?);
    }
    supervisor::drop_privileges(args.user.as_deref())?;
    let mut supervisor = Supervisor::start(
        exporter.clone(),
        supervisor::HealthOptions {
            // Hardware timestamps promised at start-up are checked against what arrives.
            ts_check: tscheck::TimestampCheck::new(
                plan.rx_hardware,
                plan.tx_hardware && plan.tx_mode != worker::TxTimestampMode::Off,
                &plan.hw_interfaces,
            ),
            hardware_required: args.timestamping == TimestampingArg::Hardware,
            withhold_when_unhealthy: args.on_unsync == OnUnsyncArg::Drop,
        },
    );

    let interval = Duration::from_secs(args.stats_interval);
    let mut next = Instant::now() + interval;
    let mut next_broadcasts = Instant::now() + BROADCAST_REFRESH;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(supervisor::TICK);
        supervisor.tick(Instant::now());
        let pending = signals.take();
        if pending.hup {
            match reloader.as_mut() {
                Some(r) => {
                    r.reload();
                }
                None => tracing::info!(
                    "SIGHUP received: no configuration to reload; ignored, still serving"
                ),
            }
        }
        pending.log_ignored();
        if pending.usr1 {
            tracing::info!("SIGUSR1: statistics now");
            report(&exporter, args.stats_file.as_deref(), true);
        }
        if Instant::now() >= next {
            next += interval;
            report(&exporter, args.stats_file.as_deref(), true);
        }
        if Instant::now() >= next_broadcasts {
            next_broadcasts += BROADCAST_REFRESH;
            refresh_broadcasts(&guards.broadcasts);
        }
    }
    supervisor.stopping();
    tracing::info!("stopping");
    for h in handles {
        let _ = h.join();
    }
    for t in threads {
        let _ = t.join();
    }
    for t in nts.map(|n| n.threads).unwrap_or_default() {
        let _ = t.join();
    }
    report(&exporter, args.stats_file.as_deref(), true);
    Ok(())
}

/// How often the host's subnet-broadcast addresses are read again.
const BROADCAST_REFRESH: Duration = Duration::from_secs(60);

/// Read the subnet-broadcast addresses of the host's interfaces into `into`
/// (kept as they were if the interfaces cannot be read).
fn refresh_broadcasts(into: &resilience::LocalBroadcasts) {
    match crate::net::ifaces::local_broadcasts() {
        Ok(b) => into.set(b),
        Err(e) => tracing::warn!("cannot list the interfaces' broadcast addresses: {e}"),
    }
}

/// Say in the log what the access list and rate limit are, and the client
/// table's memory.
fn log_policy(shared: &crate::policy::Shared) {
    let p = shared.load();
    tracing::info!(
        entries = shared.clients.capacity(),
        memory_kib = shared.clients.memory_bytes() / 1024,
        "client table (rate limits, interleaved-mode entry allowances; shared by all workers)"
    );
    match &p.rate_limit {
        Some(r) => tracing::info!(
            interval = r.interval,
            burst = r.burst,
            leak = r.leak,
            kod = r.kod,
            prefix_v4 = p.aggregation.v4,
            prefix_v6 = p.aggregation.v6,
            "rate limiting on"
        ),
        None => tracing::info!("rate limiting off"),
    }
    if !p.acl.is_empty() {
        tracing::info!(
            rules = p.acl.len(),
            memory_kib = p.acl.memory_bytes() / 1024,
            deny_action = ?p.deny_action,
            "access list"
        );
    }
}

fn report(exporter: &Exporter, file: Option<&Path>, log: bool) -> StatsSnapshot {
    let total = exporter.totals();
    if log {
        tracing::info!("stats: {}", total.summary());
    }
    if let Some(path) = file {
        let text = metrics::encode(&exporter.families_with(&total));
        if let Err(e) = write_atomically(path, text.as_bytes()) {
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

#[cfg(test)]
mod tests {
    use super::parse_kernel_version;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_version("6.0"), Some((6, 0)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert!(parse_kernel_version("5.19.1").unwrap() < (6, 0));
    }
}
