//! The built server on loopback, checked field by field from a Rust client.

mod common;

use std::time::Duration;

use common::*;
use hwntpd::protocol::packet::Header;
use hwntpd::protocol::{LeapIndicator, NtpTimestamp};

const T: Duration = Duration::from_millis(1500);

fn check_reply(req_tx: u64, version: u8, h: &Header) {
    assert_eq!(h.version, version, "version echoed");
    assert_eq!(h.mode, 4);
    assert_eq!(h.leap, LeapIndicator::NoWarning);
    assert_eq!(h.stratum, 1);
    assert_eq!(&h.refid, b"LOCL");
    assert_eq!(h.poll, 6);
    assert!(
        (-30..=-10).contains(&h.precision),
        "precision {}",
        h.precision
    );
    assert_eq!(h.root_delay.0, 0);
    assert!(h.root_dispersion.0 > 0 && h.root_dispersion.to_nanos() < 1_000_000);
    assert_eq!(
        h.origin,
        NtpTimestamp(req_tx),
        "origin is the request's transmit, bit for bit"
    );
    let now = now_ntp();
    assert!(
        h.receive.diff_nanos(now).abs() < 1_000_000_000,
        "receive near now"
    );
    assert!(
        h.transmit.diff_nanos(h.receive) >= 0,
        "transmit not before receive"
    );
    assert!(h.transmit.diff_nanos(h.receive) < 100_000_000);
    assert_eq!(h.receive.0 & 1, 1, "receive timestamps are odd");
    assert_eq!(h.transmit.0 & 1, 0, "transmit timestamps are even");
    assert!(
        h.reference.diff_nanos(h.receive) <= 0,
        "reference time is not in the future"
    );
    assert!(
        h.reference.diff_nanos(h.receive) > -3_000_000_000,
        "reference time is the last refresh"
    );
}

#[test]
fn replies_field_by_field_v4_v3_v2_v1_ipv4_and_ipv6() {
    let server = Server::start("fields", &[]);
    let v6: std::net::SocketAddr = format!("[::1]:{}", server.addr.port()).parse().unwrap();
    for addr in [server.addr, v6] {
        for (version, mode) in [(4u8, 3u8), (3, 3), (2, 3), (1, 0)] {
            let tx = 0xdead_beef_0000_0001_u64 + u64::from(version);
            let reply = exchange(addr, &request(version, mode, tx), T).expect("reply");
            assert_eq!(reply.len(), 48);
            check_reply(tx, version, &Header::parse(&reply).unwrap());
        }
    }
    // Every packet received (the readiness probes included) is answered in
    // basic mode, except a readiness probe that reached the bound socket
    // while start-up was still going (interleave table, egress program) and
    // had waited longer than --max-request-age-ms when the worker read it: a
    // counted stale drop, by design. The statistics file may be written
    // between a packet's receipt and its reply, so wait for the counts to
    // meet rather than compare one snapshot; if a packet were lost they never
    // meet and this fails after 5 s.
    let s = server.wait_stats("every received packet answered in basic mode", |s| {
        let basic = stat(s, "hwntpd_replies_total{mode=\"basic\"}");
        let stale = stat(s, "hwntpd_stale_requests_total");
        basic >= 8 && stale <= 2 && basic + stale == stat(s, "hwntpd_received_total")
    });
    assert_eq!(stat_sum(&s, "hwntpd_drops_total"), 0, "no drops");
    assert!(
        stat(&s, "hwntpd_rx_timestamps_total{source=\"kernel\"}") >= 8,
        "kernel RX timestamps on loopback"
    );
    // The replies (v4 and v6) left from send-only sockets, not the receiving ones.
    assert!(
        !server.log().contains("no send-only socket"),
        "{}",
        server.log()
    );
}

#[test]
fn poll_is_clamped_and_longer_requests_get_48_octets() {
    let server = Server::start("poll", &[]);
    let mut r = request(4, 3, 77);
    r[2] = 0;
    assert_eq!(
        Header::parse(&exchange(server.addr, &r, T).unwrap())
            .unwrap()
            .poll,
        4
    );
    r[2] = 30;
    assert_eq!(
        Header::parse(&exchange(server.addr, &r, T).unwrap())
            .unwrap()
            .poll,
        17
    );
    // a request with a well-formed extension field: reply is the bare header
    let mut long = r.to_vec();
    long.extend_from_slice(&[0x01, 0x04, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(exchange(server.addr, &long, T).unwrap().len(), 48);
}

/// At least 30 packets no server should answer, with the reason each is dropped.
fn bad_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut v: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too_short"),
        ("one octet", vec![0x23], "too_short"),
        ("47 octets", vec![0x23; 47], "too_short"),
    ];
    let ok = request(4, 3, 5).to_vec();
    for version in [0u8, 5, 6, 7] {
        v.push((
            "bad version",
            request(version, 3, 5).to_vec(),
            "bad_version",
        ));
    }
    for (mode, why) in [
        (1u8, "mode_symmetric"),
        (2, "mode_symmetric"),
        (4, "mode_server"),
        (5, "mode_broadcast"),
    ] {
        v.push(("non-client mode", request(4, mode, 5).to_vec(), why));
    }
    v.push(("mode 0 v4", request(4, 0, 5).to_vec(), "mode_reserved"));
    v.push(("mode 6 v4", request(4, 6, 5).to_vec(), "mode_control"));
    // ntpq readvar: 12-octet control header, too short for NTP but mode 6
    v.push((
        "mode 6 readvar (12 octets)",
        vec![0x16, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0],
        "too_short",
    ));
    let mut readvar = vec![0x16u8, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
    readvar.resize(48, 0);
    v.push(("mode 6 readvar padded", readvar, "mode_control"));
    // ntpdc monlist (mode 7, impl 3, request 42), as sent by amplification scanners
    let mut monlist = vec![0x17u8, 0x00, 0x03, 0x2a];
    monlist.resize(48, 0);
    v.push(("mode 7 monlist", monlist.clone(), "mode_private"));
    monlist.resize(192, 0);
    v.push(("mode 7 monlist 192 octets", monlist, "mode_private"));
    for (name, ext_len, pad) in [
        ("ext length 0", 0u16, 16usize),
        ("ext length 3 (odd)", 3, 16),
        ("ext length 8 (short)", 8, 16),
        ("ext length 18 (not multiple of 4)", 18, 28),
        ("ext overruns packet", 64, 16),
        ("ext length 12", 12, 28),
    ] {
        let mut p = ok.clone();
        p.extend_from_slice(&[0x02, 0x04]);
        p.extend_from_slice(&ext_len.to_be_bytes());
        p.resize(48 + pad, 0);
        v.push((name, p, "malformed_extension"));
    }
    let mut trailing = ok.clone();
    trailing.extend_from_slice(&[1, 2]);
    v.push(("2 trailing octets", trailing, "malformed_extension"));
    let mut v3_garbage = request(3, 3, 5).to_vec();
    v3_garbage.extend_from_slice(&[0; 7]);
    v.push(("v3 trailing garbage", v3_garbage, "trailing_garbage"));
    let mut mac = ok.clone();
    mac.resize(48 + 20, 0x11);
    v.push(("MD5 MAC (no keys configured)", mac, "authenticated"));
    let mut nak = ok.clone();
    nak.resize(48 + 4, 0);
    v.push(("crypto-NAK", nak, "authenticated"));
    // deterministic "random" bytes with a non-client first octet
    let mut x: u32 = 0x1234_5678;
    for i in 0..8 {
        let len = [48usize, 60, 100, 13, 480, 49, 52, 300][i];
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            p.push(x as u8);
        }
        if len >= 1 {
            // force an invalid version so the expected reason is known
            p[0] = (p[0] & 0b1100_0111) | (6 << 3);
        }
        v.push((
            "random bytes",
            p,
            if len < 48 { "too_short" } else { "bad_version" },
        ));
    }
    v
}

#[test]
fn bad_packets_get_no_reply_and_are_counted_by_reason() {
    let corpus = bad_corpus();
    assert!(corpus.len() >= 30, "corpus has {}", corpus.len());
    let server = Server::start("corpus", &[]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut expected = std::collections::HashMap::<&str, u64>::new();
    for (name, bytes, why) in &corpus {
        sock.send_to(bytes, server.addr).unwrap();
        *expected.entry(why).or_default() += 1;
        let mut buf = [0u8; 2048];
        assert!(sock.recv_from(&mut buf).is_err(), "{name}: got a reply");
    }
    // a valid client is still answered afterwards
    let h = query(server.addr, 4, 3, T).expect("valid request answered after the corpus");
    assert_eq!(h.mode, 4);
    let s = server.wait_stats("all drops counted", |s| {
        expected
            .iter()
            .all(|(why, n)| stat(s, &format!("hwntpd_drops_total{{reason=\"{why}\"}}")) == *n)
    });
    let total: u64 = expected.values().sum();
    assert_eq!(
        stat_sum(&s, "hwntpd_drops_total"),
        total,
        "every drop counted once"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in ["-TERM", "-INT"] {
        let mut server = Server::start("stop", &[]);
        let pid = server.child.as_ref().unwrap().id().to_string();
        let child = server.child.take().unwrap();
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{sig}: exit {:?}\n{}",
            out.status,
            server.log()
        );
        let log = server.log();
        assert!(log.contains("stopping"), "{log}");
        assert!(log.contains("stats:"), "final statistics logged: {log}");
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err =
        refusal(hwntpd_cmd(None).args(["--listen", &addr.to_string(), "--reference", "local"]));
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(
        // (error-level lines: an INFO line may mention the error queue)
        err.lines()
            .filter(|l| l.contains("error:") || l.contains(" ERROR "))
            .count(),
        1,
        "one error line: {err}"
    );
}

#[test]
fn low_port_without_privilege_says_what_to_do() {
    if is_root() {
        // root may bind low ports; drop to nobody with setpriv if available
        if skip_unless(
            have("setpriv"),
            "setpriv (util-linux) missing: cannot test unprivileged bind as root",
        ) {
            return;
        }
        let err = refusal(
            std::process::Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                ])
                .arg(env!("CARGO_BIN_EXE_hwntpd"))
                .args(["--listen", "127.0.0.1:123", "--reference", "local"]),
        );
        assert!(
            err.contains("CAP_NET_BIND_SERVICE") && err.contains("root"),
            "{err}"
        );
    } else {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hwntpd"))
            .args(["--listen", "127.0.0.1:123", "--reference", "local"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("CAP_NET_BIND_SERVICE"), "{err}");
    }
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let server = Server::start("twice", &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hwntpd"))
        .args(["--listen", &server.addr.to_string(), "--reference", "local"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "second server started on a port in use"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
}

#[test]
fn replies_leave_from_the_address_the_request_was_sent_to() {
    let port = free_port();
    let dir = tempdir("wildcard");
    let (v4, v6) = (format!("0.0.0.0:{port}"), format!("[::]:{port}"));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = [
        "--listen",
        &v4,
        "--listen",
        &v6,
        "--reference",
        "local",
        "--workers",
        "1",
    ];
    let server = Server::spawn(&args, &dir, addr);
    server.wait_ready();
    // Loopback owns all of 127/8: each request goes to another local address,
    // and `exchange` checks the reply's source is that address.
    for dst in ["127.0.0.1", "127.0.0.2", "127.3.4.5", "::1"] {
        let to = std::net::SocketAddr::new(dst.parse().unwrap(), port);
        let bind = if to.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let s = std::net::UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.send_to(&request(4, 3, 9), to).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply via {dst}: {e}"));
        assert_eq!(n, 48);
        assert_eq!(
            from, to,
            "reply to a request for {dst} must come from {dst}"
        );
    }
}

#[test]
fn timestamping_user_reads_the_clock_after_receipt() {
    let server = Server::start("ts-user", &["--timestamping", "user"]);
    for _ in 0..5 {
        let h = query(server.addr, 4, 3, T).expect("reply");
        assert!(h.receive.diff_nanos(now_ntp()).abs() < 1_000_000_000);
    }
    let s = server.wait_stats("5 user-space receive timestamps", |s| {
        stat(s, "hwntpd_rx_timestamps_total{source=\"user\"}") >= 5
    });
    assert_eq!(
        stat(&s, "hwntpd_rx_timestamps_total{source=\"kernel\"}"),
        0,
        "{s:?}"
    );
    assert_eq!(
        stat(&s, "hwntpd_tx_timestamps_requested_total"),
        0,
        "no SO_TIMESTAMPING at all"
    );
}
