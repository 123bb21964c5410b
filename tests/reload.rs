//! Live reload on SIGHUP, against the built binary on loopback: live settings
//! change at once while a client polls without losing a reply; restart-only
//! changes are logged and kept; a bad file is rejected whole.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn write_config(path: &Path, body: &str, port: u16) {
    let text = format!("listen = [\"127.0.0.1:{port}\"]\nreference = \"local\"\n{body}");
    std::fs::write(path, text).unwrap();
}

fn hup(server: &Server) {
    let pid = server.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
}

/// A reply's stratum and reference ID.
type Identity = (u8, [u8; 4]);

/// Polls continuously from one socket; remembers every reply's stratum and
/// refid, and counts requests that got no reply within a second.
struct Poller {
    stop: Arc<AtomicBool>,
    latest: Arc<Mutex<Option<Identity>>>,
    handle: std::thread::JoinHandle<(u64, u64)>,
}

impl Poller {
    fn start(addr: SocketAddr) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let latest = Arc::new(Mutex::new(None));
        let (s, l) = (stop.clone(), latest.clone());
        let handle = std::thread::spawn(move || {
            let (mut sent, mut lost) = (0u64, 0u64);
            // Bounded: at most 60 s or 20000 requests.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline && sent < 20_000 {
                sent += 1;
                match query(addr, 4, 3, Duration::from_secs(1)) {
                    Some(h) => *l.lock().unwrap() = Some((h.stratum, h.refid)),
                    None => lost += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, lost)
        });
        Poller {
            stop,
            latest,
            handle,
        }
    }

    /// How long until replies carry `want` (None: not within 1 s).
    fn wait_for(&self, want: Identity) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(1) {
            if *self.latest.lock().unwrap() == Some(want) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

#[test]
fn live_settings_change_at_once_and_polling_loses_nothing() {
    let port = free_port();
    let dir = tempdir("reload");
    let conf = dir.join("hwntpd.toml");
    write_config(&conf, "workers = 2\nrefid = \"RLD0\"\n", port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Server::spawn(&["--config", conf.to_str().unwrap()], &dir, addr);
    server.wait_ready();
    let poller = Poller::start(addr);
    assert!(
        poller.wait_for((1, *b"RLD0")).is_some(),
        "replies before any reload"
    );

    let mut latencies = Vec::new();
    for i in 1..=4u8 {
        // Alternate stratum-1 identities and stratum-2 with an upstream address.
        let (body, want) = if i % 2 == 1 {
            let id = format!("RLD{i}");
            (
                format!("workers = 2\nrefid = \"{id}\"\non-unsync = \"drop\"\nrx-comp = {i}\n"),
                (1, <[u8; 4]>::try_from(id.as_bytes()).unwrap()),
            )
        } else {
            (
                format!("workers = 2\nstratum = 2\nrefid = \"10.0.0.{i}\"\n"),
                (2, [10, 0, 0, i]),
            )
        };
        write_config(&conf, &body, port);
        hup(&server);
        let took = poller.wait_for(want).unwrap_or_else(|| {
            panic!(
                "reload {i}: replies never showed {want:?}\nlog:\n{}",
                server.log()
            )
        });
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(200));
    }

    // A restart-only change: logged, the old value kept, still serving.
    write_config(
        &conf,
        "workers = 1\nstratum = 2\nrefid = \"10.0.0.4\"\n",
        port,
    );
    hup(&server);
    std::thread::sleep(Duration::from_millis(500));
    // A bad file: rejected whole (its good refid is not applied either).
    write_config(&conf, "workers = 2\nrefid = \"BAD1\"\nstratum = 99\n", port);
    hup(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        *poller.latest.lock().unwrap(),
        Some((2, [10, 0, 0, 4])),
        "a rejected file changes nothing"
    );
    let (sent, lost) = poller.finish();
    let log = server.log();
    server.stop();

    eprintln!("reload: {sent} requests, {lost} lost; replies changed after {latencies:?}");
    assert!(sent >= 200, "only {sent} requests polled");
    assert_eq!(lost, 0, "requests lost across reloads\nlog:\n{log}");
    assert!(
        log.contains("setting changed live key=refid"),
        "log:\n{log}"
    );
    assert!(log.contains("key=on-unsync"), "log:\n{log}");
    assert!(log.contains("key=rx-comp"), "log:\n{log}");
    assert!(
        log.contains(
            "needs a restart: keeping the running value key=workers running=\"2\" file=\"1\""
        ),
        "log:\n{log}"
    );
    assert!(
        log.contains("configuration reload rejected, running configuration kept")
            && log.contains("key \"stratum\""),
        "log:\n{log}"
    );
}

#[test]
fn the_log_level_changes_live() {
    let port = free_port();
    let dir = tempdir("reload-log");
    let conf = dir.join("hwntpd.toml");
    write_config(&conf, "workers = 1\nlog-level = \"warn\"\n", port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_path = dir.join("log");
    let child = hwntpd_cmd(None)
        .args(["--config", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child: Some(child),
        addr,
        dir: dir.clone(),
    };
    server.wait_ready();
    assert!(
        !server.log().contains("serving NTP"),
        "info lines at log-level warn:\n{}",
        server.log()
    );
    write_config(&conf, "workers = 1\nlog-level = \"debug\"\n", port);
    hup(&server);
    let seen = retry(Duration::from_secs(2), || {
        server
            .log()
            .contains("setting changed live key=log-level")
            .then_some(())
    });
    assert!(seen.is_some(), "log:\n{}", server.log());
    server.stop();
    let log = server.log();
    assert!(
        log.contains("DEBUG") && log.contains("worker stopped"),
        "no debug lines after the level changed:\n{log}"
    );
}

#[test]
fn sighup_without_a_config_file_is_logged_and_harmless() {
    let mut server = Server::start("reload-none", &[]);
    hup(&server);
    let seen = retry(Duration::from_secs(2), || {
        server
            .log()
            .contains("SIGHUP: no --config file")
            .then_some(())
    });
    assert!(seen.is_some(), "log:\n{}", server.log());
    assert!(query(server.addr, 4, 3, Duration::from_secs(1)).is_some());
    assert!(server.stop().success());
}

#[test]
fn a_newly_denied_source_is_refused_within_a_second_and_served_again_after() {
    let port = free_port();
    let dir = tempdir("reload-deny");
    let conf = dir.join("hwntpd.toml");
    write_config(&conf, "workers = 2\n", port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Server::spawn(&["--config", conf.to_str().unwrap()], &dir, addr);
    server.wait_ready();

    // Deny the loopback source we send from; a DENY KoD (stratum 0, refid
    // DENY) or silence is a refusal.
    let refused = |h: &Option<hwntpd::protocol::packet::Header>| {
        h.as_ref()
            .is_none_or(|h| h.stratum == 0 && &h.refid == b"DENY")
    };
    let mut took = Vec::new();
    for round in 0..3 {
        write_config(
            &conf,
            "workers = 2\ndeny = [\"127.0.0.0/8\"]\nrate-limit = true\n",
            port,
        );
        hup(&server);
        let t0 = Instant::now();
        let mut kod = false;
        let at = retry(Duration::from_secs(3), || {
            let h = query(addr, 4, 3, Duration::from_millis(50));
            kod |= h.as_ref().is_some_and(|h| &h.refid == b"DENY");
            refused(&h).then(|| t0.elapsed())
        })
        .unwrap_or_else(|| panic!("round {round}: never refused\nlog:\n{}", server.log()));
        assert!(
            at < Duration::from_secs(1),
            "round {round}: refused only after {at:?}"
        );
        took.push(at);
        // Refused every time from then on.
        for _ in 0..20 {
            assert!(refused(&query(addr, 4, 3, Duration::from_millis(50))));
        }
        // Undo: served again at once.
        write_config(&conf, "workers = 2\n", port);
        hup(&server);
        let t1 = Instant::now();
        let back = retry(Duration::from_secs(3), || {
            query(addr, 4, 3, Duration::from_millis(100))
                .filter(|h| h.stratum == 1)
                .map(|_| t1.elapsed())
        })
        .unwrap_or_else(|| panic!("round {round}: never served again\nlog:\n{}", server.log()));
        assert!(
            back < Duration::from_secs(1),
            "served again only after {back:?}"
        );
        if round == 0 {
            assert!(kod, "no DENY KoD with the default --deny-action kod");
        }
    }
    eprintln!("deny took effect after {took:?}");
    let log = server.log();
    server.stop();
    assert!(log.contains("setting changed live key=deny"), "log:\n{log}");
    assert!(
        log.contains("setting changed live key=rate-limit"),
        "log:\n{log}"
    );
}
