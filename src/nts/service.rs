//! Starting NTS from the command line: the master keys (loaded, generated,
//! rotated, kept in the key file), the NTS-KE server, and what the workers need.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rand::SeedableRng as _;

use super::file_stamp;
use super::ke_records::NtpServerHint;
use super::ke_server::{tls_config, Admit, KeServer};
use super::keys::KeySet;
use crate::config::Args;
use crate::server::stats::WorkerStats;

/// NTPv4 port (no Port Negotiation record is sent for it).
const NTP_PORT: u16 = 123;

/// How often the key manager looks at the clock and the key file.
const KEY_CHECK: Duration = Duration::from_secs(1);

/// What a worker needs for NTS.
#[derive(Clone)]
pub struct NtsState {
    /// The master keys in force (swapped by the key manager).
    pub keys: Arc<ArcSwap<KeySet>>,
    /// Refuse requests without NTS (`--nts-require`).
    pub require: bool,
}

/// NTS running: the workers' state, the threads, and the NTS-KE counters.
pub struct NtsRunning {
    /// For the workers.
    pub state: NtsState,
    /// The key manager and the NTS-KE accept thread.
    pub threads: Vec<JoinHandle<()>>,
    /// Counters of the NTS-KE server (report them with the workers').
    pub ke_stats: Arc<WorkerStats>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where NTS-KE sends clients: `--nts-ntp-server`, else this host with the
/// first NTP listen address's port when it is not 123.
pub fn server_hint(args: &Args, ntp_listen: &[SocketAddr]) -> NtpServerHint {
    match &args.nts_ntp_server {
        Some(s) => NtpServerHint {
            server: Some(s.host.clone()),
            port: s.port.filter(|p| *p != NTP_PORT),
        },
        None => NtpServerHint {
            server: None,
            port: ntp_listen
                .first()
                .map(|a| a.port())
                .filter(|p| *p != NTP_PORT),
        },
    }
}

/// Start NTS if the command line asks for it (`--nts-cert`/`--nts-key`, or
/// `--nts-key-file` alone); `None` otherwise.
pub fn start(
    args: &Args,
    ntp_listen: &[SocketAddr],
    admit: Option<Admit>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<NtsRunning>> {
    let ke = args.nts_cert.is_some();
    if !ke && args.nts_key_file.is_none() {
        if args.nts_require {
            anyhow::bail!(
                "--nts-require needs NTS: give --nts-cert and --nts-key, or --nts-key-file"
            );
        }
        return Ok(None);
    }
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let file = args.nts_key_file.clone();
    let initial = match &file {
        Some(path) if path.exists() => KeySet::load(path)
            .with_context(|| format!("reading NTS key file {}", path.display()))?,
        Some(path) => {
            let set = KeySet::generate(&mut rng, unix_now());
            set.save(path)
                .with_context(|| format!("writing NTS key file {}", path.display()))?;
            tracing::info!(path = %path.display(), "new NTS master keys written");
            set
        }
        None => KeySet::generate(&mut rng, unix_now()),
    };
    let keys = Arc::new(ArcSwap::from_pointee(initial));
    let mut threads = vec![spawn_key_manager(
        keys.clone(),
        file,
        args.nts_key_rotation,
        stop.clone(),
    )?];
    let ke_stats = Arc::new(WorkerStats::default());
    if let (Some(cert), Some(key)) = (&args.nts_cert, &args.nts_key) {
        let server = KeServer {
            listen: args.nts_ke_listen_addrs(),
            tls: ArcSwap::new(tls_config(cert, key)?),
            tls_files: (cert.clone(), key.clone()),
            keys: keys.clone(),
            hint: server_hint(args, ntp_listen),
            max_connections: args.nts_ke_connections as usize,
            timeout: Duration::from_secs(args.nts_ke_timeout),
            stats: ke_stats.clone(),
            admit,
        };
        threads.push(server.spawn(stop)?);
    }
    Ok(Some(NtsRunning {
        state: NtsState {
            keys,
            require: args.nts_require,
        },
        threads,
        ke_stats,
    }))
}

/// Rotate the keys on schedule and follow the key file: a thread that wakes
/// every second. Rotation writes the file (when there is one); a file changed
/// by another host is re-read and its keys used.
pub fn spawn_key_manager(
    keys: Arc<ArcSwap<KeySet>>,
    file: Option<PathBuf>,
    rotation: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hwntpd-ntskeys".into())
        .spawn(move || {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut seen = file.as_deref().and_then(file_stamp);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(KEY_CHECK);
                if let Some(path) = &file {
                    let now = file_stamp(path);
                    if now.is_some() && now != seen {
                        seen = now;
                        match KeySet::load(path) {
                            Ok(set) if **keys.load() != set => {
                                tracing::info!(path = %path.display(), "NTS key file changed: keys reloaded");
                                keys.store(Arc::new(set));
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(path = %path.display(), "NTS key file not usable, keeping the keys in use: {e:#}"),
                        }
                    }
                }
                let due = keys.load().rotated_at.saturating_add(rotation.as_secs());
                if rotation.is_zero() || unix_now() < due {
                    continue;
                }
                let next = keys.load().rotated(&mut rng, unix_now());
                if let Some(path) = &file {
                    if let Err(e) = next.save(path) {
                        tracing::warn!(path = %path.display(), "cannot write NTS key file: {e}");
                    }
                    seen = file_stamp(path);
                }
                tracing::info!(current = format!("{:08x}", next.current().id), "NTS master key rotated");
                keys.store(Arc::new(next));
            }
        })
}
