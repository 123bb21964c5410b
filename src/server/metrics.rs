//! The metrics: one encoder (Prometheus text format 0.0.4, through the
//! `prometheus` crate's `TextEncoder`) for `--stats-file` and for the
//! `--metrics-listen` endpoint, and the endpoint's HTTP thread (`tiny_http`).
//!
//! Workers only store into their own counters ([`super::stats`]); the
//! endpoint's thread reads them with relaxed loads when scraped, and the
//! clock state and health from their lock-free cells, so a scrape never
//! blocks or slows a worker.
//!
//! Why the `prometheus` crate and not `prometheus-client`: the latter writes
//! only the OpenMetrics text format (counter families named without
//! `_total`, an `info` type), which `promtool check metrics` (Prometheus 2.x)
//! rejects; Prometheus scrapes the 0.0.4 text format written here as well.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::health::{HealthCell, HealthStatus};
use super::interleave::InterleaveTable;
use super::stats::{self, StatsSnapshot, WorkerStats};
use crate::clock::domain::TimeDomains;
use crate::clock::realtime::now_unix;
use crate::clock::snapshot::StateCell;
use crate::protocol::ServerState;

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encode metric families in the Prometheus text format.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(families, &mut buf) {
        // Only a family that breaks the format's rules (a bug) gets here.
        tracing::error!("cannot encode the metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Parse labels written as Prometheus text (`a="x",b="y"`; values without
/// quotes or backslashes).
fn parse_labels(text: &str) -> Vec<LabelPair> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        let mut l = LabelPair::default();
        l.set_name(name.trim().trim_start_matches(',').trim().to_string());
        l.set_value(value.to_string());
        out.push(l);
        rest = tail.trim_start_matches(',').trim();
    }
    out
}

/// Builds metric families series by series: series with the same name join
/// one family, whatever order they come in.
#[derive(Default)]
pub struct Families {
    families: Vec<(MetricFamily, Vec<(String, String)>)>,
}

impl Families {
    fn family(
        &mut self,
        name: &str,
        kind: MetricType,
    ) -> &mut (MetricFamily, Vec<(String, String)>) {
        let i = match self.families.iter().position(|(f, _)| f.name() == name) {
            Some(i) => i,
            None => {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_field_type(kind);
                self.families.push((f, Vec::new()));
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    fn push(&mut self, name: &str, kind: MetricType, labels: &str, help: &str, metric: Metric) {
        let (family, helps) = self.family(name, kind);
        family.mut_metric().push(metric);
        if !helps.iter().any(|(_, h)| h == help) {
            helps.push((labels.to_string(), help.to_string()));
        }
    }

    /// A counter series (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, labels: &str, help: &str, value: u64) {
        let mut c = Counter::default();
        c.set_value(value as f64);
        let mut m = Metric::from_label(parse_labels(labels));
        m.set_counter(c);
        self.push(name, MetricType::COUNTER, labels, help, m);
    }

    /// A gauge series.
    pub fn gauge(&mut self, name: &str, labels: &str, help: &str, value: f64) {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::from_label(parse_labels(labels));
        m.set_gauge(g);
        self.push(name, MetricType::GAUGE, labels, help, m);
    }

    /// A histogram without labels: `buckets` are (upper bound, cumulative count).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let mut h = Histogram::default();
        h.set_bucket(
            buckets
                .iter()
                .map(|&(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        h.set_sample_sum(sum);
        h.set_sample_count(count);
        let mut m = Metric::default();
        m.set_histogram(h);
        self.push(name, MetricType::HISTOGRAM, "", help, m);
    }

    /// The families, each with one `# HELP`: the series' common help, or each
    /// series' help followed by its labels.
    pub fn finish(self) -> Vec<MetricFamily> {
        self.families
            .into_iter()
            .map(|(mut f, helps)| {
                let help = if helps.len() == 1 {
                    helps[0].1.clone()
                } else {
                    let parts: Vec<String> = helps
                        .iter()
                        .map(|(l, h)| format!("{} ({l})", h.trim_end_matches('.')))
                        .collect();
                    format!("{}.", parts.join("; "))
                };
                f.set_help(help);
                f
            })
            .collect()
    }
}

/// How timestamps are taken, for `hwntpd_timestamping_info` and systemd's STATUS.
#[derive(Clone, Debug, Default)]
pub struct TimestampingSummary {
    /// Receive timestamps: `hardware`, `kernel` or `user`.
    pub rx: &'static str,
    /// Transmit timestamps: `hardware`, `kernel` or `off`.
    pub tx: &'static str,
    /// The log's longer description of both.
    pub text: String,
}

/// Everything the metrics are read from.
pub struct Exporter {
    /// Each worker's counters.
    pub stats: Vec<Arc<WorkerStats>>,
    /// Counters of threads that are not workers (the NTS-KE server): summed
    /// into the totals, not watched for a heartbeat.
    pub other_stats: Vec<Arc<WorkerStats>>,
    /// The served state.
    pub state: Arc<StateCell>,
    /// The reference's name (`system`, `local`, `phc`, `ntp`).
    pub reference: String,
    /// The PHC tracking, when a PHC is read.
    pub domains: Option<Arc<TimeDomains>>,
    /// The interleaved-mode table.
    pub table: Option<Arc<InterleaveTable>>,
    /// The access list, rate limit and client table.
    pub policy: Option<Arc<crate::policy::Shared>>,
    /// The health verdict.
    pub health: Arc<HealthCell>,
    /// The timestamp sources.
    pub timestamping: TimestampingSummary,
    /// Start of the process, Unix seconds.
    pub start_time: f64,
}

fn refid_text(s: &ServerState) -> String {
    if s.stratum <= 1 || s.stratum >= ServerState::STRATUM_UNSYNC {
        s.refid
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect()
    } else {
        let [a, b, c, d] = s.refid;
        format!("{a}.{b}.{c}.{d}")
    }
}

impl Exporter {
    /// The counters of all workers, summed.
    pub fn totals(&self) -> StatsSnapshot {
        stats::sum(
            self.stats
                .iter()
                .chain(&self.other_stats)
                .map(|s| s.as_ref()),
        )
    }

    /// Every metric, from `totals` and the current state.
    pub fn families_with(&self, totals: &StatsSnapshot) -> Vec<MetricFamily> {
        let mut f = Families::default();
        totals.add_families(&mut f);
        if let Some(t) = &self.table {
            f.gauge(
                "hwntpd_interleave_timestamps_held",
                "",
                "Transmit timestamps held in the interleaved-mode table (like chrony's 'NTP timestamps held'; estimated from a sample on large tables).",
                t.held() as f64,
            );
            f.gauge(
                "hwntpd_interleave_table_entries",
                "",
                "Capacity of the interleaved-mode table.",
                t.capacity() as f64,
            );
        }
        if let Some(p) = &self.policy {
            f.gauge(
                "hwntpd_client_table_records",
                "state=\"used\"",
                "Client-table records in use, and the table's size.",
                p.clients.used() as f64,
            );
            f.gauge(
                "hwntpd_client_table_records",
                "state=\"capacity\"",
                "Client-table records in use, and the table's size.",
                p.clients.capacity() as f64,
            );
        }
        self.clock_families(&mut f);
        let health = self.health.load();
        self.health_families(&mut f, &health);
        f.gauge(
            "hwntpd_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            "Build information (always 1).",
            1.0,
        );
        f.gauge(
            "hwntpd_timestamping_info",
            &format!(
                "rx=\"{}\",tx=\"{}\"",
                self.timestamping.rx, self.timestamping.tx
            ),
            "Timestamp sources obtained at start-up (always 1): rx hardware|kernel|user, tx hardware|kernel|off.",
            1.0,
        );
        f.gauge(
            "hwntpd_start_time_seconds",
            "",
            "When the server started serving, seconds since the Unix epoch.",
            self.start_time,
        );
        f.finish()
    }

    fn clock_families(&self, f: &mut Families) {
        let s = self.state.load();
        let (now, _) = now_unix();
        f.gauge(
            "hwntpd_leap_indicator",
            "",
            "Leap indicator served: 0 none, 1 insert, 2 delete, 3 unsynchronised.",
            f64::from(s.leap as u8),
        );
        f.gauge(
            "hwntpd_stratum",
            "",
            "Stratum served (16: unsynchronised).",
            f64::from(s.stratum),
        );
        f.gauge(
            "hwntpd_root_delay_seconds",
            "",
            "Root delay served.",
            s.root_delay.to_nanos() as f64 / 1e9,
        );
        f.gauge(
            "hwntpd_root_dispersion_seconds",
            "",
            "Root dispersion served.",
            s.root_dispersion.to_nanos() as f64 / 1e9,
        );
        f.gauge(
            "hwntpd_precision_seconds",
            "",
            "Precision served (2^precision).",
            2f64.powi(i32::from(s.precision)),
        );
        let (ref_secs, ref_nanos) = s.reference_time.to_unix_near(now);
        f.gauge(
            "hwntpd_reference_time_seconds",
            "",
            "Reference timestamp served (last update from the reference), seconds since the Unix epoch; 0 if never.",
            if s.reference_time.0 == 0 {
                0.0
            } else {
                ref_secs as f64 + f64::from(ref_nanos) / 1e9
            },
        );
        f.gauge(
            "hwntpd_reference_usable",
            "",
            "1 while the reference is usable, 0 while replies carry LI=3 and stratum 16.",
            if s.is_unsynchronized() { 0.0 } else { 1.0 },
        );
        f.gauge(
            "hwntpd_reference_info",
            &format!(
                "reference=\"{}\",refid=\"{}\"",
                self.reference,
                refid_text(&s)
            ),
            "The reference and the reference ID served (always 1).",
            1.0,
        );
        let Some(snap) = self.domains.as_ref().and_then(|d| d.snapshot()) else {
            return;
        };
        f.gauge(
            "hwntpd_phc_tracking_healthy",
            "",
            "1 while the PHC offset/frequency fit is usable (hardware timestamps served).",
            if snap.healthy { 1.0 } else { 0.0 },
        );
        f.gauge(
            "hwntpd_phc_tai_offset_seconds",
            "",
            "TAI - UTC applied to the PHC's time.",
            f64::from(snap.tai_offset),
        );
        let (secs, nanos) = now_unix();
        let now_ns = secs.saturating_mul(1_000_000_000) + i64::from(nanos);
        if let Some(offset) = snap.tracker.offset_at(now_ns) {
            f.gauge(
                "hwntpd_phc_offset_seconds",
                "",
                "PHC - CLOCK_REALTIME now, less the TAI - UTC offset, from the fit.",
                (offset as f64 - f64::from(snap.tai_offset) * 1e9) / 1e9,
            );
        }
        if let Some(ppb) = snap.tracker.frequency_ppb() {
            f.gauge(
                "hwntpd_phc_frequency_ppb",
                "",
                "PHC frequency relative to CLOCK_REALTIME, parts per billion, from the fit.",
                ppb,
            );
        }
        if let Some(spread) = snap.tracker.spread_ns() {
            f.gauge(
                "hwntpd_phc_fit_spread_seconds",
                "",
                "Residual spread (weighted RMS) of the PHC fit.",
                spread / 1e9,
            );
        }
    }

    fn health_families(&self, f: &mut Families, h: &HealthStatus) {
        f.gauge(
            "hwntpd_healthy",
            "",
            "1 while GET /healthz answers 200: the reference is usable, every worker is alive and, with --timestamping hardware, the PHC tracking is healthy and the promised timestamps arrive (healthy again after 3 s of good checks).",
            if h.healthy { 1.0 } else { 0.0 },
        );
        for (interface, direction, degraded) in &h.timestamping_degraded {
            f.gauge(
                "hwntpd_timestamping_degraded",
                &format!("interface=\"{interface}\",direction=\"{direction}\""),
                "1 while hardware timestamps the NIC promised at start-up do not arrive (none usable among the last 8 or more packets).",
                if *degraded { 1.0 } else { 0.0 },
            );
        }
        f.gauge("hwntpd_workers", "", "Worker threads.", h.workers as f64);
        f.gauge(
            "hwntpd_workers_alive",
            "",
            "Workers whose event loop turned within the last 2 s.",
            h.workers_alive as f64,
        );
    }

    /// Every metric in the text format.
    pub fn render(&self) -> String {
        encode(&self.families_with(&self.totals()))
    }
}

/// Serve `GET /metrics` and `GET /healthz` on `addr` from a thread of its own
/// until `stop` is set. Binds before returning, so a bad address or a port in
/// use is a start-up error.
pub fn spawn_endpoint(
    addr: SocketAddr,
    exporter: Arc<Exporter>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
    tracing::info!(%addr, "metrics endpoint: GET /metrics, GET /healthz");
    let h = std::thread::Builder::new()
        .name("hwntpd-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(req)) => respond(req, &exporter),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("metrics endpoint: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(h)
}

fn respond(req: tiny_http::Request, exporter: &Exporter) {
    use tiny_http::{Header, Method, Response};
    let text = |t: &str| Header::from_bytes("Content-Type", t).expect("a valid header");
    let get = matches!(req.method(), Method::Get | Method::Head);
    let path = req.url().split('?').next().unwrap_or("");
    let response = match (get, path) {
        (true, "/metrics") => {
            Response::from_string(exporter.render()).with_header(text(CONTENT_TYPE))
        }
        (true, "/healthz") => {
            let h = exporter.health.load();
            let code = if h.healthy { 200 } else { 503 };
            Response::from_string(format!("{}\n", h.reason))
                .with_status_code(code)
                .with_header(text("text/plain; charset=utf-8"))
        }
        (true, _) => {
            Response::from_string("not found: try /metrics or /healthz\n").with_status_code(404)
        }
        (false, _) => Response::from_string("method not allowed\n").with_status_code(405),
    };
    if let Err(e) = req.respond(response) {
        tracing::debug!("metrics endpoint: cannot answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels("mode=\"basic\"");
        assert_eq!((l[0].name(), l[0].value()), ("mode", "basic"));
        let l = parse_labels("rx=\"kernel\",tx=\"off\"");
        assert_eq!(l.len(), 2);
        assert_eq!((l[1].name(), l[1].value()), ("tx", "off"));
        assert!(parse_labels("").is_empty());
    }

    #[test]
    fn families_group_series_and_write_help_and_type_once() {
        let mut f = Families::default();
        f.counter("x_total", "mode=\"a\"", "A things.", 1);
        f.gauge("g", "", "A gauge.", 0.5);
        f.counter("x_total", "mode=\"b\"", "B things.", 2);
        let text = encode(&f.finish());
        assert_eq!(
            text,
            "# HELP x_total A things (mode=\"a\"); B things (mode=\"b\").\n\
             # TYPE x_total counter\n\
             x_total{mode=\"a\"} 1\n\
             x_total{mode=\"b\"} 2\n\
             # HELP g A gauge.\n\
             # TYPE g gauge\n\
             g 0.5\n"
        );
    }

    #[test]
    fn refids() {
        let mut s = ServerState::local_stratum1(
            -20,
            crate::protocol::NtpShort(0),
            crate::protocol::NtpTimestamp(0),
        );
        s.refid = *b"PTP\0";
        assert_eq!(refid_text(&s), "PTP");
        s.stratum = 2;
        s.refid = [192, 0, 2, 1];
        assert_eq!(refid_text(&s), "192.0.2.1");
    }
}
