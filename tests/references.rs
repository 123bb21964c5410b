//! References other than `local`: the kernel's state (`system`), mirroring a
//! local NTP daemon (`ntp:ADDR`), and the refusals of `phc` without a PHC.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hwntpd::protocol::LeapIndicator;

const T: Duration = Duration::from_millis(800);

/// Poll `addr` until `cond` holds for a reply (or no reply, with `None`).
fn wait_for(
    addr: std::net::SocketAddr,
    what: &str,
    cond: impl Fn(Option<&hwntpd::protocol::packet::Header>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let h = query(addr, 4, 3, T);
        if cond(h.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; last reply {h:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn system_reference_reports_the_kernels_state() {
    let server = Server::start("system", &["--reference", "system"]);
    let h = query(server.addr, 4, 3, T).unwrap();
    let kernel = hwntpd::clock::kernel::read_kernel_clock().unwrap();
    if kernel.is_unsynchronized() {
        assert_eq!(
            (h.leap, h.stratum),
            (LeapIndicator::Unsynchronized, 16),
            "kernel unsynchronised"
        );
    } else {
        assert_eq!(h.stratum, 1);
        assert_ne!(h.leap, LeapIndicator::Unsynchronized);
        let maxerror_ns = kernel.maxerror_us as u64 * 1000;
        assert!(
            h.root_dispersion.to_nanos() + 2_000_000 >= maxerror_ns,
            "root dispersion from maxerror"
        );
    }
}

#[test]
fn ntp_reference_mirrors_the_daemon_and_says_when_it_goes_silent() {
    let up_dir = tempdir("upstream");
    let up_port = free_port();
    let up_addr: std::net::SocketAddr = format!("127.0.0.1:{up_port}").parse().unwrap();
    let up_args = [
        "--listen",
        &format!("127.0.0.1:{up_port}"),
        "--reference",
        "local",
        "--workers",
        "1",
    ];
    let upstream_args: Vec<&str> = up_args
        .iter()
        .copied()
        .chain(["--stratum", "2", "--refid", "192.0.2.1"])
        .collect();
    let mut upstream = Server::spawn(&upstream_args, &up_dir, up_addr);
    upstream.wait_ready();
    let reference = format!("ntp:{up_addr}");
    let mirror = Server::start("mirror", &["--reference", &reference]);
    wait_for(mirror.addr, "the upstream's stratum", |h| {
        h.is_some_and(|h| h.stratum == 2)
    });
    let h = query(mirror.addr, 4, 3, T).unwrap();
    let u = query(up_addr, 4, 3, T).unwrap();
    assert_eq!(h.refid, [192, 0, 2, 1]);
    assert_eq!(h.leap, LeapIndicator::NoWarning);
    assert_eq!(h.root_dispersion, u.root_dispersion);
    assert_eq!(h.root_delay, u.root_delay);

    // The daemon stops: LI 3 and stratum 16 within about a second.
    let stopped = Instant::now();
    upstream.stop();
    wait_for(mirror.addr, "LI 3 / stratum 16", |h| {
        h.is_some_and(|h| h.leap == LeapIndicator::Unsynchronized && h.stratum == 16)
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "took {:?}",
        stopped.elapsed()
    );

    // It comes back: so does the mirrored header, by itself.
    let mut upstream = Server::spawn(&upstream_args, &up_dir, up_addr);
    upstream.wait_ready();
    wait_for(mirror.addr, "recovery", |h| {
        h.is_some_and(|h| h.stratum == 2 && h.leap == LeapIndicator::NoWarning)
    });
    let log = mirror.log();
    assert!(
        log.contains("upstream NTP daemon silent or unsynchronised"),
        "{log}"
    );
    assert_eq!(
        log.matches("upstream NTP daemon answers").count(),
        2,
        "both transitions logged once: {log}"
    );
    upstream.stop();
}

#[test]
fn on_unsync_drop_means_silence() {
    // An upstream that never answers: the mirror is unsynchronised from the start.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let reference = format!("ntp:{}", silent.local_addr().unwrap());
    let dir = tempdir("unsync-drop");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::spawn(
        &[
            "--listen",
            &listen,
            "--reference",
            &reference,
            "--on-unsync",
            "drop",
            "--workers",
            "1",
        ],
        &dir,
        listen.parse().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        query(server.addr, 4, 3, T).is_none(),
        "no answer while unsynchronised"
    );
    server.wait_stats("an unsynchronized drop", |s| {
        stat(s, "hwntpd_drops_total{reason=\"unsynchronized\"}") >= 1
    });
}

#[test]
fn phc_reference_without_a_phc_is_refused_clearly() {
    let err = refusal(hwntpd_cmd(None).args(["--listen", "127.0.0.1:0", "--reference", "phc"]));
    assert!(err.contains("--reference phc needs --phc"), "{err}");
    let err = refusal(hwntpd_cmd(None).args([
        "--listen",
        "127.0.0.1:0",
        "--reference",
        "phc",
        "--phc",
        "/dev/null",
    ]));
    assert!(err.contains("/dev/null"), "{err}");
}
