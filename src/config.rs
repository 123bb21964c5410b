//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub mod file;

/// Which timestamps to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimestampingArg {
    /// Turn on hardware timestamping on the `--interface` NICs and serve what
    /// each gives (receive and/or transmit, while the PHC tracking is healthy);
    /// kernel software timestamps for the rest, and without `--interface`.
    Auto,
    /// NIC hardware timestamps; refuse to start without them (needs `--interface`);
    /// while serving, the node is unhealthy when they stop arriving or the PHC
    /// tracking fails.
    Hardware,
    /// Kernel software timestamps only; NICs are left as they are.
    Software,
    /// No `SO_TIMESTAMPING`: read the clock right after a datagram is taken
    /// from the ring; no transmit timestamps, so no interleaved replies and no
    /// send-latency compensation.
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

/// Whether basic replies' transmit timestamps are written at egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EgressStampArg {
    /// Where it can be (the system clock served, software transmit
    /// timestamps, eBPF and tcx available); otherwise say why in the log and
    /// keep the estimate.
    Auto,
    /// Refuse to start without it.
    On,
    /// Never: the pre-send reading plus the latency estimate.
    Off,
}

/// What refused sources get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenyActionArg {
    /// A DENY Kiss-o'-Death, at most one per source per 4 s.
    Kod,
    /// Silence.
    Ignore,
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
    /// Read settings from this TOML file: its keys are the long flag names
    /// (`stratum = 2`, `listen = ["0.0.0.0:123"]`); flags given on the command
    /// line override it. SIGHUP re-reads it (see the README: Configuration file).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Check the configuration (command line and --config file) and exit:
    /// "configuration OK" and status 0, or the errors and status 1.
    #[arg(long)]
    pub check: bool,

    /// Address and port to serve on (repeatable; the same address twice is an
    /// error). Default: `0.0.0.0:123` and `[::]:123`.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Network interface whose NIC should timestamp in hardware (repeatable).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Timestamp source.
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
    /// wire-time correction), like chrony's rxcomp. Changes live on SIGHUP.
    #[arg(
        long,
        value_name = "NS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub rx_comp: i64,

    /// Nanoseconds added to hardware transmit timestamps, like chrony's txcomp.
    /// Changes live on SIGHUP.
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

    /// Stratum to claim while synchronised (1-15). Default 1. Changes live on SIGHUP.
    #[arg(long, value_parser = parse_stratum)]
    pub stratum: Option<u8>,

    /// Reference ID: 1-4 ASCII characters at stratum 1 (e.g. PTP, GPS), the upstream's
    /// address at stratum 2 and above. Default "LOCL" with --reference local,
    /// "PTP" with --reference phc, else "SYS". Changes live on SIGHUP.
    #[arg(long)]
    pub refid: Option<String>,

    /// What to do while the reference is unusable. Changes live on SIGHUP.
    #[arg(long, value_enum, default_value_t = OnUnsyncArg::Serve)]
    pub on_unsync: OnUnsyncArg,

    /// Entries of the interleaved-mode table (24 octets each; 0 turns interleaved
    /// mode off). The default (4 Mi, 96 MiB) keeps the entries of a million
    /// clients polling every 64 s (16k interleaved requests/s) with 3/4 of the
    /// table to spare; give 256 x the interleaved request rate for more.
    #[arg(long, default_value_t = 1 << 22, value_name = "N")]
    pub interleave_entries: usize,

    /// Serve this prefix (CIDR, IPv4 or IPv6; repeatable). With any --allow,
    /// sources no rule covers are refused. The longest matching prefix decides.
    #[arg(long = "allow", value_name = "CIDR", value_parser = crate::policy::acl::parse_cidr)]
    pub allow: Vec<crate::policy::acl::Cidr>,

    /// Refuse this prefix (CIDR, IPv4 or IPv6; repeatable). The longest
    /// matching prefix decides; on a tie with --allow, deny wins.
    #[arg(long = "deny", value_name = "CIDR", value_parser = crate::policy::acl::parse_cidr)]
    pub deny: Vec<crate::policy::acl::Cidr>,

    /// What refused sources get: a DENY KoD (at most one per source per 4 s,
    /// silence otherwise) or silence.
    #[arg(long, value_enum, default_value_t = DenyActionArg::Kod)]
    pub deny_action: DenyActionArg,

    /// Turn on per-client rate limiting (chrony's defaults: interval 3, burst 8, leak 2).
    #[arg(long)]
    pub rate_limit: bool,

    /// log2 of the average spacing in seconds allowed between replies to one
    /// client (-10..12; default 3: one per 8 s). Implies --rate-limit.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = crate::policy::ratelimit::parse_interval)]
    pub rate_limit_interval: Option<i8>,

    /// Replies a client may get in a burst (1..255; default 8). Implies --rate-limit.
    #[arg(long, value_name = "N", value_parser = crate::policy::ratelimit::parse_burst)]
    pub rate_limit_burst: Option<u8>,

    /// Answer one in 2^N over-limit requests anyway (1..4; default 2), so a
    /// source an attacker spoofs is never locked out. Implies --rate-limit.
    #[arg(long, value_name = "N", value_parser = crate::policy::ratelimit::parse_leak)]
    pub rate_limit_leak: Option<u8>,

    /// Send an over-limit client a RATE KoD, at most once per interval (and
    /// per 4 s). "off": silence only.
    #[arg(long, value_enum, default_value_t = OnOffArg::On)]
    pub rate_limit_kod: OnOffArg,

    /// IPv4 clients are limited per prefix of this length (0..32; IPv4-mapped
    /// IPv6 counts as IPv4).
    #[arg(long, value_name = "LEN", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub rate_limit_prefix_v4: u8,

    /// IPv6 clients are limited per prefix of this length (0..128).
    #[arg(long, value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub rate_limit_prefix_v6: u8,

    /// Records of the client table shared by all workers (24 octets each,
    /// rounded up to a power of two; the idlest record of a full bucket is
    /// replaced). Holds the rate-limit state and the per-source allowance of
    /// interleaved-mode entries.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(8..=(1 << 26)))]
    pub client_table_entries: u64,

    /// Basic replies: add the smallest of the last 64 send latencies (kernel or
    /// NIC transmit timestamp minus the pre-send clock reading) measured in the
    /// last 10 minutes in the same situation (direct send or place in the
    /// ring's batch, idle time before it), less the gap to the second
    /// smallest, to the transmit timestamp, so it lies just before the moment
    /// the reply left; 0 until 8 fresh samples exist.
    /// Basic replies ask for a transmit timestamp at most once per 5 ms per
    /// situation and socket (every reply of a quiet server). "off" serves the
    /// bare pre-send reading and asks for none.
    /// Needs transmit timestamps (not with --timestamping user or
    /// --interleave-entries 0). Changes live on SIGHUP.
    #[arg(long, value_enum, default_value_t = OnOffArg::On)]
    pub send_latency_comp: OnOffArg,

    /// Send a lone basic reply (the only reply of its turn of the event loop:
    /// a quiet server, or requests arriving one at a time) with its own sendmsg
    /// right after its transmit-time reading, rather than through io_uring: the
    /// shortest and steadiest path from the reading to the wire, which a basic
    /// reply's transmit timestamp rests on. Costs one system call per such
    /// reply; replies handled together, and interleaved replies (their exact
    /// transmit time is served later), go out through the ring.
    /// "off": every reply through the ring.
    #[arg(long, value_enum, default_value_t = OnOffArg::On)]
    pub direct_send: OnOffArg,

    /// Before the transmit-time reading of a lone basic reply sent after the
    /// worker was idle (200 us or more since its last send), run the socket's
    /// send path once without sending anything (a zero-length sendmsg with
    /// MSG_PROBE to the reply's destination), so the send after the reading
    /// finds it in the caches: a shorter, steadier send latency for the
    /// replies of a quiet server. One more system call per such reply, none
    /// under load. Only with --direct-send on. "off": no probe.
    #[arg(long, value_enum, default_value_t = OnOffArg::On)]
    pub warm_send_path: OnOffArg,

    /// Write the transmit timestamp of basic replies at egress: an eBPF
    /// program on each Ethernet interface's egress hook (tcx, Linux 6.6+)
    /// replaces it with a kernel clock reading taken as the reply leaves the
    /// IP stack for the device, after the system call and the UDP/IP output
    /// paths whose varying latency the pre-send estimate can only guess. Only
    /// unauthenticated 48-octet basic replies of hwntpd's own sockets, and
    /// only when the reading is within 10 ms of hwntpd's own value; NTS,
    /// interleaved and every other packet pass untouched. "auto": where the
    /// system clock is served with software transmit timestamps and the
    /// kernel allows it (root), else logged; "on": refuse to start without
    /// it; "off": never.
    #[arg(long, value_enum, default_value_t = EgressStampArg::Auto)]
    pub egress_stamp: EgressStampArg,

    /// With --egress-stamp: also add the learned floor of the latency from
    /// the program's reading to the driver's transmit stamp (measured per
    /// idle class from replies whose exact transmit time comes back). Brings
    /// the transmit timestamp about 0.7 us closer on an idle server, but a
    /// floor is undercut by the fastest sends: about 1 % of replies then
    /// carry a time after the real transmit (by about 0.1 us). "off": the
    /// program's bare reading, which precedes the driver's stamp on the same
    /// CPU in the same call chain, so it is never after it.
    #[arg(long, value_enum, default_value_t = OnOffArg::Off)]
    pub egress_correction: OnOffArg,

    /// Receive buffer of each socket in bytes, to absorb bursts (the kernel's
    /// default of about 200 KiB holds some 1500 requests); the same for each
    /// send-only socket, whose error queue holds the transmit timestamps.
    /// Forced past net.core.rmem_max when running as root. 0: the kernel's
    /// default.
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

    /// Log level: error, warn, info, debug or trace (or a tracing filter
    /// directive). Changes live on SIGHUP.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// NTS: the server's TLS certificate chain (PEM). With --nts-key, starts the
    /// NTS-KE server and serves NTS on the NTP sockets. Both files are read
    /// again within a second when either changes (a renewal needs no restart).
    #[arg(long, value_name = "PATH", requires = "nts_key")]
    pub nts_cert: Option<PathBuf>,

    /// NTS: the private key of --nts-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "nts_cert")]
    pub nts_key: Option<PathBuf>,

    /// NTS-KE address and port (repeatable). Default, once --nts-cert and
    /// --nts-key are given: `0.0.0.0:4460` and `[::]:4460`.
    #[arg(long, value_name = "ADDR:PORT", requires = "nts_cert")]
    pub nts_ke_listen: Vec<SocketAddr>,

    /// NTS: the NTP server (and port) NTS-KE clients are sent to, when NTP is
    /// served by another host or port (NTPv4 Server and Port Negotiation records).
    #[arg(long, value_name = "HOST[:PORT]", value_parser = parse_ntp_server, requires = "nts_cert")]
    pub nts_ntp_server: Option<NtsNtpServer>,

    /// NTS: how often the master key that cookies are sealed under is rotated
    /// (seconds, or with a unit: 90m, 12h, 1d). Cookies stay valid for at least
    /// two rotations. 0: never rotate (keys come from --nts-key-file, kept by
    /// another host).
    #[arg(long, value_name = "DURATION", value_parser = crate::nts::keys::parse_interval, default_value = "1d")]
    pub nts_key_rotation: std::time::Duration,

    /// NTS: keep the master keys in this file (written atomically, mode 0600,
    /// re-read when it changes), so hosts sharing it accept each other's
    /// cookies. Alone (without --nts-cert), serves NTS on the NTP sockets for
    /// cookies another host's NTS-KE server hands out.
    #[arg(long, value_name = "PATH")]
    pub nts_key_file: Option<PathBuf>,

    /// NTS: refuse requests that are not NTS-authenticated (DENY KoD).
    #[arg(long)]
    pub nts_require: bool,

    /// NTS-KE connections served at once; more are closed at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nts_ke_connections: u32,

    /// Seconds one NTS-KE connection may take in all (handshake, request,
    /// response); each read or write waits at most 2 s of it.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=300))]
    pub nts_ke_timeout: u64,
}

/// Where NTS-KE sends clients for NTP (`--nts-ntp-server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NtsNtpServer {
    /// Host name or address.
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// Parse `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
pub fn parse_ntp_server(s: &str) -> Result<NtsNtpServer, String> {
    let bad = || format!("{s:?} is not HOST, HOST:PORT or [IPV6]:PORT");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').ok_or_else(bad)?;
        (h, Some(p.parse::<u16>().map_err(|_| bad())?))
    } else {
        (s, None)
    };
    if host.is_empty()
        || host.len() > crate::nts::ke_records::MAX_SERVER_NAME_LEN
        || !host.is_ascii()
    {
        return Err(bad());
    }
    Ok(NtsNtpServer {
        host: host.to_string(),
        port,
    })
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

    /// Whether rate limiting is on: `--rate-limit`, or any of its interval,
    /// burst or leak given.
    pub fn rate_limit_on(&self) -> bool {
        self.rate_limit
            || self.rate_limit_interval.is_some()
            || self.rate_limit_burst.is_some()
            || self.rate_limit_leak.is_some()
    }

    /// The access list and rate limit the command line asks for.
    pub fn policy(&self) -> Result<crate::policy::Policy, String> {
        use crate::policy::acl::{AccessList, Action, Rule};
        use crate::policy::ratelimit::{Aggregation, RateLimit};
        let rules: Vec<Rule> = self
            .allow
            .iter()
            .map(|&cidr| Rule {
                action: Action::Allow,
                cidr,
            })
            .chain(self.deny.iter().map(|&cidr| Rule {
                action: Action::Deny,
                cidr,
            }))
            .collect();
        let d = RateLimit::default();
        let rate_limit = self.rate_limit_on().then_some(RateLimit {
            interval: self.rate_limit_interval.unwrap_or(d.interval),
            burst: self.rate_limit_burst.unwrap_or(d.burst),
            leak: self.rate_limit_leak.unwrap_or(d.leak),
            kod: self.rate_limit_kod == OnOffArg::On,
        });
        if let Some(r) = &rate_limit {
            r.validate()?;
        }
        Ok(crate::policy::Policy {
            acl: AccessList::from_rules(&rules)?,
            deny_action: match self.deny_action {
                DenyActionArg::Kod => crate::policy::DenyAction::Kod,
                DenyActionArg::Ignore => crate::policy::DenyAction::Ignore,
            },
            rate_limit,
            aggregation: Aggregation {
                v4: self.rate_limit_prefix_v4,
                v6: self.rate_limit_prefix_v6,
            },
        })
    }

    /// The NTS-KE listen addresses, with the defaults applied (none without
    /// --nts-cert).
    pub fn nts_ke_listen_addrs(&self) -> Vec<SocketAddr> {
        match (&self.nts_cert, self.nts_ke_listen.is_empty()) {
            (None, _) => Vec::new(),
            (Some(_), true) => vec![
                "0.0.0.0:4460".parse().unwrap(),
                "[::]:4460".parse().unwrap(),
            ],
            (Some(_), false) => self.nts_ke_listen.clone(),
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
    fn policy_flags() {
        let a = Args::try_parse_from(["hwntpd"]).unwrap();
        let p = a.policy().unwrap();
        assert!(p.rate_limit.is_none() && p.acl.is_empty());
        let a = Args::try_parse_from([
            "hwntpd",
            "--rate-limit",
            "--allow",
            "10.0.0.0/8",
            "--deny",
            "10.0.0.1",
            "--allow",
            "2001:db8::/32",
            "--deny-action",
            "ignore",
        ])
        .unwrap();
        let p = a.policy().unwrap();
        let r = p.rate_limit.unwrap();
        assert_eq!((r.interval, r.burst, r.leak, r.kod), (3, 8, 2, true));
        assert_eq!(p.acl.len(), 3);
        assert!(!p.acl.allows("10.0.0.1".parse().unwrap()));
        assert!(p.acl.allows("10.0.0.2".parse().unwrap()));
        assert_eq!(p.deny_action, crate::policy::DenyAction::Ignore);
        let a = Args::try_parse_from(["hwntpd", "--rate-limit-interval", "-4"]).unwrap();
        assert_eq!(a.policy().unwrap().rate_limit.unwrap().interval, -4);
        for bad in [
            &["--rate-limit-interval", "-11"][..],
            &["--rate-limit-interval", "13"],
            &["--rate-limit-burst", "0"],
            &["--rate-limit-leak", "5"],
            &["--rate-limit-prefix-v4", "33"],
            &["--rate-limit-prefix-v6", "129"],
            &["--allow", "10.0.0.0/33"],
            &["--deny", "nonsense"],
            &["--client-table-entries", "1"],
        ] {
            let mut v = vec!["hwntpd"];
            v.extend_from_slice(bad);
            assert!(Args::try_parse_from(&v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nts_flags() {
        let a = Args::try_parse_from(["hwntpd"]).unwrap();
        assert!(a.nts_ke_listen_addrs().is_empty());
        assert_eq!(a.nts_key_rotation.as_secs(), 86400);
        assert!(Args::try_parse_from(["hwntpd", "--nts-cert", "c.pem"]).is_err());
        let a = Args::try_parse_from(["hwntpd", "--nts-cert", "c", "--nts-key", "k"]).unwrap();
        assert_eq!(a.nts_ke_listen_addrs().len(), 2);
        let a = Args::try_parse_from([
            "hwntpd",
            "--nts-cert",
            "c",
            "--nts-key",
            "k",
            "--nts-ke-listen",
            "127.0.0.1:4461",
            "--nts-ntp-server",
            "[2001:db8::1]:1123",
            "--nts-key-rotation",
            "12h",
        ])
        .unwrap();
        assert_eq!(
            a.nts_ke_listen_addrs(),
            vec!["127.0.0.1:4461".parse().unwrap()]
        );
        let s = a.nts_ntp_server.unwrap();
        assert_eq!((s.host.as_str(), s.port), ("2001:db8::1", Some(1123)));
        assert_eq!(a.nts_key_rotation.as_secs(), 43200);
        assert_eq!(parse_ntp_server("ntp.example").unwrap().port, None);
        assert_eq!(parse_ntp_server("ntp.example:123").unwrap().port, Some(123));
        assert_eq!(parse_ntp_server("2001:db8::1").unwrap().host, "2001:db8::1");
        assert!(parse_ntp_server("host:x").is_err());
        assert!(parse_ntp_server("").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2,4-6"), Ok(CpuList(vec![0, 2, 4, 5, 6])));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
