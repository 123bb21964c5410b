//! Operations: the metrics endpoint and /healthz, the privilege drop
//! (`--user`), systemd's notification protocol, and the unit files in dist/.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use hwntpd::sys::privileges::ThreadCreds;

const T: Duration = Duration::from_millis(1500);

/// `GET path` over HTTP/1.0: (status code, body). The server answers NTP a
/// moment before its metrics endpoint listens, so a refused connection is
/// retried for up to 5 s.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = retry(Duration::from_secs(5), || {
        let c = TcpStream::connect_timeout(&addr, T).ok();
        if c.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    })
    .expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// Log text without terminal colour escapes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every sample's family has exactly one `# HELP` and one `# TYPE`, before
/// its samples; returns sample name (with labels) -> value.
fn check_exposition(text: &str) -> HashMap<String, f64> {
    let (mut help, mut kind) = (HashSet::new(), HashMap::new());
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(help.insert(name.to_string()), "two HELP lines for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, t) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                kind.insert(name.to_string(), t.to_string()).is_none(),
                "two TYPE lines for {name}"
            );
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let family = match kind.get(name) {
                Some(_) => name,
                None => name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|f| kind.get(*f).is_some_and(|t| t == "histogram"))
                    .unwrap_or_else(|| panic!("no TYPE before {line:?}")),
            };
            assert!(help.contains(family), "no HELP for {family}");
            if kind[family] == "counter" {
                assert!(
                    family.ends_with("_total"),
                    "counter {family} without _total"
                );
            }
            samples.insert(series.to_string(), value.parse().unwrap());
        }
    }
    samples
}

/// Run `promtool check metrics` on `text` (SKIP if promtool is absent).
fn promtool_check(text: &str, what: &str) {
    if skip_unless(
        have("promtool"),
        "promtool not installed (Debian package prometheus)",
    ) {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed on the {what}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check metrics: the {what} pass");
}

#[test]
fn metrics_endpoint_and_stats_file_share_one_encoder() {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let s = Server::start("metrics", &["--metrics-listen", &listen, "--workers", "2"]);
    let m: SocketAddr = listen.parse().unwrap();
    for _ in 0..5 {
        assert!(query(s.addr, 4, 3, T).is_some());
    }
    // A mode-6 (ntpq) request: dropped and counted by reason.
    assert!(query(s.addr, 2, 6, Duration::from_millis(200)).is_none());

    let (code, body) = http_get(m, "/metrics");
    assert_eq!(code, 200);
    let v = check_exposition(&body);
    assert!(v["hwntpd_received_total"] >= 6.0, "{body}");
    assert!(v["hwntpd_replies_total{mode=\"basic\"}"] >= 5.0);
    assert!(v["hwntpd_drops_total{reason=\"mode_control\"}"] >= 1.0);
    assert_eq!(v["hwntpd_stratum"], 1.0);
    assert_eq!(v["hwntpd_leap_indicator"], 0.0);
    assert_eq!(v["hwntpd_reference_usable"], 1.0);
    assert_eq!(v["hwntpd_healthy"], 1.0);
    assert_eq!(v["hwntpd_workers"], 2.0);
    assert_eq!(v["hwntpd_workers_alive"], 2.0);
    assert!(v["hwntpd_root_dispersion_seconds"] > 0.0);
    assert!(v["hwntpd_watchdog_checks_total"] > 0.0);
    // The default table size (--interleave-entries).
    let default_entries = hwntpd::config::Args::parse_from(["hwntpd"]).interleave_entries;
    assert_eq!(v["hwntpd_interleave_table_entries"], default_entries as f64);
    assert_eq!(
        v["hwntpd_reference_info{reference=\"local\",refid=\"LOCL\"}"],
        1.0
    );
    let build = format!(
        "hwntpd_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(v[&build], 1.0);
    assert_eq!(
        v["hwntpd_timestamping_info{rx=\"kernel\",tx=\"kernel\"}"],
        1.0
    );
    // Every counter of the statistics table is exported.
    for c in hwntpd::server::stats::COUNTERS {
        let series = if c.labels.is_empty() {
            c.metric.to_string()
        } else {
            format!("{}{{{}}}", c.metric, c.labels)
        };
        assert!(v.contains_key(&series), "{series} ({}) missing", c.field);
    }
    promtool_check(&body, "metrics endpoint's output");

    // The stats file: the same encoder, the same families.
    let file = s
        .wait_stats("a report", |st| st.contains_key("hwntpd_healthy"))
        .len();
    assert!(file > 0);
    let text = std::fs::read_to_string(s.dir.join("stats.prom")).unwrap();
    let fv = check_exposition(&text);
    assert_eq!(
        fv.keys().collect::<HashSet<_>>(),
        v.keys().collect::<HashSet<_>>(),
        "the file and the endpoint export the same series"
    );
    promtool_check(&text, "--stats-file output");

    let (code, body) = http_get(m, "/healthz");
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "ok: reference local usable (stratum 1), 2 of 2 workers alive\n"
    );
    assert_eq!(http_get(m, "/nothing").0, 404);

    if is_root() {
        assert!(
            s.log().contains("running as root"),
            "root without --user is warned about:\n{}",
            s.log()
        );
    }
}

#[test]
fn healthz_is_503_while_the_reference_is_unusable() {
    // Mirror an NTP daemon that is not there: the reference is unusable.
    let nobody = free_port();
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let reference = format!("ntp:127.0.0.1:{nobody}");
    let s = Server::start(
        "healthz503",
        &["--metrics-listen", &listen, "--reference", &reference],
    );
    let m: SocketAddr = listen.parse().unwrap();
    let got = retry(Duration::from_secs(5), || {
        let (code, body) = http_get(m, "/healthz");
        (code == 503).then_some(body)
    });
    let body = got.unwrap_or_else(|| panic!("/healthz never 503; log:\n{}", s.log()));
    assert_eq!(body, "reference ntp unusable (serving LI=3, stratum 16)\n");
    let v = check_exposition(&http_get(m, "/metrics").1);
    assert_eq!(v["hwntpd_healthy"], 0.0);
    assert_eq!(v["hwntpd_reference_usable"], 0.0);
    assert_eq!(v["hwntpd_leap_indicator"], 3.0);
    assert_eq!(v["hwntpd_stratum"], 16.0);
    assert!(s.log().contains("unhealthy: /healthz answers 503"));
}

fn status_of(path: &Path) -> ThreadCreds {
    ThreadCreds::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn user_drops_root_in_every_thread_and_still_serves() {
    if skip_unless(is_root(), "switching user needs root") {
        return;
    }
    let dir = tempdir("privdrop");
    // The user writes the stats file after the switch.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    let mport = free_tcp_port();
    let (v4, metrics) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{mport}"));
    let s = Server::spawn(
        &[
            "--listen",
            &v4,
            "--workers",
            "2",
            "--reference",
            "local",
            "--user",
            "nobody",
            "--metrics-listen",
            &metrics,
        ],
        &dir,
        v4.parse().unwrap(),
    );
    s.wait_ready();
    let pid = s.child.as_ref().unwrap().id();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    // The switch happens right after the workers are ready; wait for its log line.
    assert!(
        retry(Duration::from_secs(5), || s
            .log()
            .contains("dropped privileges")
            .then_some(()))
        .is_some(),
        "no privilege drop logged:\n{}",
        s.log()
    );
    let process = status_of(&Path::new("/proc").join(pid.to_string()).join("status"));
    assert!(process.is_unprivileged(uid, gid), "{process:?}");
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let c = status_of(&t.join("status"));
        let name = std::fs::read_to_string(t.join("comm")).unwrap();
        assert!(
            c.is_unprivileged(uid, gid),
            "thread {} ({}) kept privileges: {c:?}",
            t.display(),
            name.trim()
        );
        names.push(name.trim().to_string());
    }
    for want in ["hwntpd-w0", "hwntpd-w1", "hwntpd-metrics"] {
        assert!(
            names.iter().any(|n| n == want),
            "no thread {want}: {names:?}"
        );
    }
    eprintln!(
        "all {} threads run as {uid}:{gid}, no groups, CapPrm=CapEff=CapAmb=0: {names:?}",
        names.len()
    );
    let log = plain(&s.log());
    assert!(log.contains("capabilities_kept=\"none\""), "{log}");
    assert!(!log.contains("running as root"), "{log}");

    // The rings created before the switch still serve, and the stats file
    // is written by the user.
    for _ in 0..20 {
        let h = query(s.addr, 4, 3, T).expect("answers after the switch");
        assert_eq!(h.stratum, 1);
    }
    // Interleaved mode: transmit timestamps through the ring after the switch.
    let (mut server_rx, mut local_rx) = (0u64, 0u64);
    for _ in 0..5 {
        let mut req = request(4, 3, 0);
        req[24..32].copy_from_slice(&server_rx.to_be_bytes());
        req[32..40].copy_from_slice(&local_rx.to_be_bytes());
        req[40..48].copy_from_slice(&now_ntp().to_bits().to_be_bytes());
        let reply = exchange(s.addr, &req, T).expect("an interleaved exchange");
        local_rx = now_ntp().to_bits();
        server_rx = hwntpd::protocol::packet::Header::parse(&reply)
            .unwrap()
            .receive
            .to_bits();
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.wait_stats("interleaved replies with kernel TX timestamps", |st| {
        st.get("hwntpd_replies_total{mode=\"interleaved\"}")
            .copied()
            .unwrap_or(0)
            >= 3
            && st
                .get("hwntpd_tx_timestamps_total{source=\"kernel\"}")
                .copied()
                .unwrap_or(0)
                >= 3
    });
    eprintln!(
        "after the switch: {} interleaved replies, {} kernel TX timestamps",
        st["hwntpd_replies_total{mode=\"interleaved\"}"],
        st["hwntpd_tx_timestamps_total{source=\"kernel\"}"]
    );
    let st = s.wait_stats("20 replies", |st| {
        st.get("hwntpd_replies_total{mode=\"basic\"}")
            .copied()
            .unwrap_or(0)
            >= 20
    });
    assert!(st["hwntpd_received_total"] >= 20);
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.join("stats.prom")).unwrap());
    assert_eq!(owner, uid, "stats file written as the user");
    assert_eq!(http_get(metrics.parse().unwrap(), "/healthz").0, 200);
}

#[test]
fn user_must_exist_and_not_be_root() {
    // The refusal for `user` on a fresh port; the root refusal comes after
    // the sockets are bound, so a port another test's socket took since
    // free_port() picked it is tried again with another.
    let refused_as = |user: &str| {
        let mut err = String::new();
        for _ in 0..3 {
            let v4 = format!("127.0.0.1:{}", free_port());
            err = refusal(hwntpd_cmd(None).args([
                "--listen",
                &v4,
                "--workers",
                "1",
                "--reference",
                "local",
                "--user",
                user,
            ]));
            if !err.contains("already in use") {
                break;
            }
        }
        err
    };
    let err = refused_as("no-such-user-hwntpd");
    assert!(
        err.contains("--user \"no-such-user-hwntpd\": no such user"),
        "{err}"
    );
    if is_root() {
        let err = refused_as("root");
        assert!(err.contains("is root (uid 0)"), "{err}");
    }
}

#[test]
fn systemd_notify_ready_status_watchdog_stopping() {
    let dir = tempdir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_port();
    let v4 = format!("127.0.0.1:{port}");
    let addr: SocketAddr = v4.parse().unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut child = hwntpd_cmd(None)
        .args(["--listen", &v4, "--workers", "2", "--reference", "local"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stderr(log)
        .spawn()
        .unwrap();
    let mut messages: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut ready_at = None;
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if ready_at.is_none() && text.lines().any(|l| l == "READY=1") {
                // READY=1 means serving: the very next request is answered.
                assert!(query(addr, 4, 3, T).is_some(), "not serving at READY=1");
                ready_at = Some(Instant::now());
            }
            messages.push((Instant::now(), text));
        }
        if ready_at.is_some_and(|t| t.elapsed() > Duration::from_millis(1600)) {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stopping = false;
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "STOPPING=1");
        }
    }
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let ready_at = ready_at.unwrap_or_else(|| panic!("no READY=1: {messages:?}\n{log}"));
    let ready = messages
        .iter()
        .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    let status = ready
        .1
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status
            .starts_with("healthy: ok: reference local usable (stratum 1), 2 of 2 workers alive;"),
        "{status}"
    );
    assert!(
        status.contains("RX timestamps: kernel software"),
        "{status}"
    );
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    let after_ready = pings.iter().filter(|t| **t >= ready_at).count();
    // Every half period (150 ms) for 1.6 s: about 10; at least 5 on a loaded machine.
    assert!(
        after_ready >= 5,
        "{after_ready} WATCHDOG=1 in 1.6 s with WATCHDOG_USEC=300000: {messages:?}"
    );
    let max_gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        max_gap < Duration::from_millis(300),
        "watchdog gap {max_gap:?}"
    );
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    eprintln!(
        "READY=1 with STATUS={status:?}; {after_ready} WATCHDOG=1 in 1.6 s (largest gap {max_gap:?}); STOPPING=1"
    );
}

/// The unit in dist/, with ExecStart pointing at the built binary (verify
/// checks that the command exists).
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/hwntpd.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/sbin/hwntpd --user hwntpd"));
    let unit = unit.replace("/usr/local/sbin/hwntpd", env!("CARGO_BIN_EXE_hwntpd"));
    let path = dir.join("hwntpd.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn unit_files_verify() {
    if skip_unless(
        have("systemd-analyze"),
        "systemd-analyze not installed (Debian package systemd)",
    ) {
        return;
    }
    let dir = tempdir("unit");
    let unit = unit_for_test(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for hwntpd.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    eprintln!("systemd-analyze security: exposure {score} (README says 2.9)");
    assert!(score <= 3.5, "exposure {score} (README says 2.9)");
    for (setting, must) in [
        (
            "SystemCallFilter=",
            "io_uring_setup io_uring_enter io_uring_register",
        ),
        ("DeviceAllow=", "char-ptp r"),
        ("Type=", "notify"),
        (
            "CapabilityBoundingSet=",
            "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_IPC_LOCK",
        ),
    ] {
        let unit_text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            unit_text
                .lines()
                .any(|l| l.starts_with(setting) && l.contains(must)),
            "{setting} must hold {must}"
        );
    }

    // sysusers.d and tmpfiles.d, applied to an empty root.
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib")).unwrap();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let ok = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(dist.join("hwntpd.sysusers"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "systemd-sysusers failed");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("hwntpd:"))
        .expect("sysusers created hwntpd");
    let uid: u32 = line.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user: {line}");
    let ok = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(dist.join("hwntpd.tmpfiles"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "systemd-tmpfiles failed");
    let meta = std::fs::metadata(root.join("var/lib/hwntpd")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        uid,
        "state directory owned by hwntpd"
    );
}
