//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Which receive timestamps to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimestampingArg {
    /// Hardware where `--interface` NICs support it, else kernel software, else user space.
    Auto,
    /// NIC hardware timestamps; refuse to start without them (needs `--interface`);
    /// while serving, the node is unhealthy when they stop arriving or the PHC
    /// tracking fails.
    Hardware,
    /// Kernel software timestamps only.
    Software,
    /// Read the clock in user space right after receipt (no `SO_TIMESTAMPING`).
    User,
}

/// What to do with requests while the reference is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnUnsyncArg {
    /// Answer with LI=3 and stratum 16, so clients see the alarm.
    Serve,
    /// Answer nothing (also whenever the node is unhealthy, see /healthz).
    Drop,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOffArg {
    /// On.
    On,
    /// Off.
    Off,
}

/// Where the served time and its claims come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferenceArg {
    /// The system clock, with leap and sync state from the kernel (adjtimex).
    System,
    /// The system clock as an authoritative local reference (labs, tests, benchmarks).
    Local,
    /// The PTP hardware clock (`--phc`, or the PHC of `--interface`) as stratum 1.
    Phc,
    /// The system clock, with the header (stratum, refid, root delay and
    /// dispersion, leap) of the local NTP daemon at this address that keeps it.
    Ntp(SocketAddr),
}

fn parse_reference(s: &str) -> Result<ReferenceArg, String> {
    match s {
        "system" => Ok(ReferenceArg::System),
        "local" => Ok(ReferenceArg::Local),
        "phc" => Ok(ReferenceArg::Phc),
        other => match other.strip_prefix("ntp:") {
            Some(addr) => addr
                .parse()
                .or_else(|_| addr.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 123)))
                .map(ReferenceArg::Ntp)
                .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:11123 or [::1]:11123")),
            None => Err(format!(
                "unknown reference {other:?}: expected \"system\", \"local\", \"phc\" or \"ntp:ADDR[:PORT]\""
            )),
        },
    }
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a worker count from 1 to 1024")),
    }
}

/// A list of CPU numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parse a CPU list such as "0,2,4-7".
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} in {s:?} is not a CPU number or range like 2-5");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("{s:?} names no CPU"));
    }
    Ok(CpuList(cpus))
}

fn parse_stratum(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n) if (1..=15).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a stratum from 1 to 15")),
    }
}

/// hwntpd: an NTP server that serves the most exact timestamps the host can give.
#[derive(Parser, Debug, Clone)]
#[command(name = "hwntpd", version, about, long_about = None)]
pub struct Args {
    /// Address and port to serve on (repeatable; the same address twice is an
    /// error). Default: `0.0.0.0:123` and `[::]:123`.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Network interface whose NIC should timestamp in hardware (repeatable).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Receive timestamp source.
    #[arg(long, value_enum, default_value_t = TimestampingArg::Auto)]
    pub timestamping: TimestampingArg,

    /// Reference: "system" (kernel clock state), "local" (authoritative local
    /// clock), "phc" (the PTP hardware clock as stratum 1) or `ntp:ADDR[:PORT]`
    /// (mirror the header of the local NTP daemon that keeps the system clock).
    #[arg(long, value_parser = parse_reference, default_value = "system")]
    pub reference: ReferenceArg,

    /// PTP hardware clock device (e.g. /dev/ptp0). Default: the PHC of the first
    /// --interface whose NIC timestamps in hardware.
    #[arg(long, value_name = "PATH")]
    pub phc: Option<PathBuf>,

    /// TAI - UTC in seconds for a PHC that runs in TAI. Default: the kernel's TAI
    /// offset (adjtimex); use 0 for a PHC kept in UTC.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub utc_offset: Option<i32>,

    /// Nanoseconds subtracted from hardware receive timestamps (after the
    /// wire-time correction), like chrony's rxcomp.
    #[arg(
        long,
        value_name = "NS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub rx_comp: i64,

    /// Nanoseconds added to hardware transmit timestamps, like chrony's txcomp.
    #[arg(
        long,
        value_name = "NS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub tx_comp: i64,

    /// Worker threads, each with its own socket per listen address and io_uring.
    /// Default: one per CPU.
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Pin worker i to the i-th CPU of this list (e.g. "2,3" or "0-3").
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Stratum to claim while synchronised (1-15). Default 1.
    #[arg(long, value_parser = parse_stratum)]
    pub stratum: Option<u8>,

    /// Reference ID: 1-4 ASCII characters at stratum 1 (e.g. PTP, GPS), the upstream's
    /// address at stratum 2 and above. Default "LOCL" with --reference local,
    /// "PTP" with --reference phc, else "SYS".
    #[arg(long)]
    pub refid: Option<String>,

    /// What to do while the reference is unusable.
    #[arg(long, value_enum, default_value_t = OnUnsyncArg::Serve)]
    pub on_unsync: OnUnsyncArg,

    /// Entries of the interleaved-mode table (16 octets each; 0 turns interleaved mode off).
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub interleave_entries: usize,

    /// Basic replies: add the smallest recently measured send latency (kernel or
    /// NIC transmit timestamp minus the pre-send clock reading, sampled at most
    /// every 10 ms per socket) to the transmit timestamp, so it lies closer to
    /// the moment the reply left. "off" serves the bare pre-send reading.
    #[arg(long, value_enum, default_value_t = OnOffArg::On)]
    pub send_latency_comp: OnOffArg,

    /// Receive buffer of each socket in bytes, to absorb bursts (the kernel's
    /// default of about 200 KiB holds some 1500 requests). Forced past
    /// net.core.rmem_max when running as root. 0: the kernel's default.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub recv_buffer: usize,

    /// Under load, wait up to this many microseconds for 16 completions before
    /// handling them: fewer system calls per reply, at the price of at most
    /// this much added turnaround (timestamps are unaffected: receive times come
    /// from the kernel, transmit times are read after the wait). 0: off.
    /// Needs Linux 6.13+.
    #[arg(long, default_value_t = 0, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub batch_wait_us: u32,

    /// Drop, unanswered and counted, a request that waited in its socket
    /// longer than this many milliseconds (measured from its kernel or NIC
    /// receive timestamp; requests timestamped in user space are never
    /// dropped). Under overload this keeps the answers fresh: a reply that
    /// late carries a delay no client's filter accepts. 0: off.
    #[arg(long, default_value_t = crate::server::resilience::DEFAULT_MAX_REQUEST_AGE_MS, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub max_request_age_ms: u64,

    /// Write statistics (Prometheus text format) to this file every --stats-interval seconds.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// Seconds between statistics reports (file and log line).
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stats_interval: u64,

    /// Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200
    /// while the reference is usable and every worker alive, else 503) on this
    /// address. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// After start-up (sockets bound, NIC timestamping set, PHC opened), switch
    /// to this user and its primary group, with no supplementary groups and no
    /// capabilities. Needs starting as root.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Log level: error, warn, info, debug or trace (or a tracing filter directive).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// The listen addresses, with the defaults applied.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() {
            vec!["0.0.0.0:123".parse().unwrap(), "[::]:123".parse().unwrap()]
        } else {
            self.listen.clone()
        }
    }

    /// The worker count, with the default (one per CPU) applied.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// The first listen address given more than once, if any.
pub fn duplicate_listen(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .enumerate()
        .find(|(i, a)| addrs[..*i].contains(a))
        .map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_listen_addresses() {
        let a: SocketAddr = "127.0.0.1:123".parse().unwrap();
        let b: SocketAddr = "[::1]:123".parse().unwrap();
        assert_eq!(duplicate_listen(&[a, b]), None);
        assert_eq!(duplicate_listen(&[a, b, a]), Some(a));
        assert_eq!(duplicate_listen(&[]), None);
        let args = Args::try_parse_from(["hwntpd"]).unwrap();
        assert_eq!(args.max_request_age_ms, 50);
        assert!(Args::try_parse_from(["hwntpd", "--max-request-age-ms", "60001"]).is_err());
    }

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["hwntpd"]).unwrap();
        assert_eq!(a.listen_addrs().len(), 2);
        assert_eq!(a.reference, ReferenceArg::System);
        assert_eq!(a.timestamping, TimestampingArg::Auto);
        assert!(a.worker_count() >= 1);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Args::try_parse_from(["hwntpd", "--stratum", "16"]).is_err());
        assert!(Args::try_parse_from(["hwntpd", "--workers", "0"]).is_err());
        assert!(Args::try_parse_from(["hwntpd", "--reference", "gps"]).is_err());
        assert!(Args::try_parse_from(["hwntpd", "--reference", "ntp:nohost"]).is_err());
        let a = Args::try_parse_from([
            "hwntpd",
            "--reference",
            "ntp:127.0.0.1:11123",
            "--utc-offset",
            "-1",
        ])
        .unwrap();
        assert_eq!(
            a.reference,
            ReferenceArg::Ntp("127.0.0.1:11123".parse().unwrap())
        );
        assert_eq!(a.utc_offset, Some(-1));
        let a = Args::try_parse_from(["hwntpd", "--reference", "ntp:::1"]).unwrap();
        assert_eq!(a.reference, ReferenceArg::Ntp("[::1]:123".parse().unwrap()));
        assert!(Args::try_parse_from(["hwntpd", "--listen", "127.0.0.1"]).is_err());
        let a = Args::try_parse_from([
            "hwntpd",
            "--listen",
            "127.0.0.1:1123",
            "--listen",
            "[::1]:1123",
        ])
        .unwrap();
        assert_eq!(a.listen_addrs().len(), 2);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2,4-6"), Ok(CpuList(vec![0, 2, 4, 5, 6])));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
