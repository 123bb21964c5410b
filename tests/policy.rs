//! Access lists and rate limits end to end, on loopback: DENY and RATE KoDs
//! as SERVER-SPEC says (stratum 0, the kiss code in the refid, LI 3, origin
//! echoed), KoDs themselves limited, IPv4 and IPv6 apart, the counters.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use hwntpd::protocol::packet::Header;
use hwntpd::protocol::LeapIndicator;

/// Ask from `sock`; the reply, if one comes within `timeout`.
fn ask(sock: &UdpSocket, server: std::net::SocketAddr, tx: u64) -> Option<Header> {
    sock.send_to(&request(4, 3, tx), server).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let h = Header::parse(&buf[..n])?;
    assert_eq!(
        h.origin.0, tx,
        "every reply, KoD or not, echoes the transmit"
    );
    Some(h)
}

/// A client socket on `addr` (not 127.0.0.1, which Server::start's
/// readiness probe used: its KoD allowance and tokens are spent).
fn client(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn is_kod(h: &Header, code: &[u8; 4]) -> bool {
    h.stratum == 0 && &h.refid == code && h.leap == LeapIndicator::Unsynchronized
}

#[test]
fn deny_kod_once_then_silence_and_families_apart() {
    let server = Server::start("acl-deny", &["--deny", "127.0.0.0/8", "--allow", "::1"]);
    let v6 = std::net::SocketAddr::new("::1".parse().unwrap(), server.addr.port());
    let c4 = client("127.0.0.2:0");
    let h = ask(&c4, server.addr, 0x1111_0000).expect("a DENY KoD");
    assert!(is_kod(&h, b"DENY"), "{h:?}");
    // within 4 s: no second KoD (no amplification of a refused flood)
    for i in 0..5 {
        assert!(ask(&c4, server.addr, 0x2222_0000 + i).is_none());
    }
    // IPv6 is allowed
    let c6 = client("[::1]:0");
    let h = ask(&c6, v6, 0x3333_0000).expect("served over IPv6");
    assert_eq!(h.stratum, 1);
    let s = server.wait_stats("the refusals counted", |s| {
        stat(s, "hwntpd_drops_total{reason=\"ignored\"}") >= 5
    });
    // ours, and at least one to Server::start's readiness probe (127.0.0.1,
    // more if a KoD came after the probe's 100 ms and it asked again 4 s later)
    assert!(stat(&s, "hwntpd_kod_total{code=\"deny\"}") >= 2);
    assert_eq!(stat(&s, "hwntpd_client_table_records{state=\"used\"}"), 0);
    assert!(server.log().contains("access list"), "logged");
}

#[test]
fn allow_list_refuses_the_rest_silently_with_ignore() {
    let server = Server::start(
        "acl-allow",
        &[
            "--allow",
            "127.0.0.1",
            "--allow",
            "10.0.0.0/8",
            "--deny-action",
            "ignore",
        ],
    );
    let v6 = std::net::SocketAddr::new("::1".parse().unwrap(), server.addr.port());
    assert!(ask(&client("127.0.0.2:0"), server.addr, 0x10).is_none());
    assert!(ask(&client("[::1]:0"), v6, 0x20).is_none());
    let s = server.wait_stats("ignored", |s| {
        stat(s, "hwntpd_drops_total{reason=\"ignored\"}") >= 2
    });
    assert_eq!(stat(&s, "hwntpd_replies_total{mode=\"kod\"}"), 0);
}

#[test]
fn rate_limit_burst_then_one_rate_kod_then_silence_or_leak() {
    let server = Server::start(
        "ratelimit",
        &["--rate-limit-burst", "4", "--rate-limit-leak", "4"],
    );
    assert!(server.log().contains("rate limiting on"));
    assert!(server.log().contains("client table"));
    let c = client("127.0.0.3:0");
    let started = std::time::Instant::now();
    let mut time = 0;
    let mut kods = 0;
    let mut silent = 0;
    for i in 0..40u64 {
        match ask(&c, server.addr, 0x4000 + i) {
            Some(h) if is_kod(&h, b"RATE") => {
                kods += 1;
                assert!(h.poll >= 6, "a RATE KoD raises the poll");
            }
            Some(h) => {
                assert_eq!(h.stratum, 1);
                time += 1;
            }
            None => silent += 1,
        }
    }
    // The burst of 4, then over the limit: one KoD per 8 s (interval 3), the
    // leak answers about 1 in 16.
    let kod_max = started.elapsed().as_secs() / 8 + 1;
    assert!(
        (1..=kod_max).contains(&kods),
        "kods {kods} time {time} silent {silent}"
    );
    assert!((4..=4 + 10).contains(&time), "time replies {time}");
    assert!(silent >= 25);
    let s = server.wait_stats("rate limiting counted", |s| {
        stat(s, "hwntpd_drops_total{reason=\"rate_limited\"}") >= 25
    });
    // ours, and any to Server::start's probes from 127.0.0.1 (a client too)
    assert!(stat(&s, "hwntpd_kod_total{code=\"rate\"}") >= kods);
    assert!(stat(&s, "hwntpd_client_table_records{state=\"used\"}") >= 1);
    assert_eq!(
        stat(&s, "hwntpd_client_table_records{state=\"capacity\"}"),
        65536
    );
    // IPv6 ::1 is another client with its own bucket
    let v6 = std::net::SocketAddr::new("::1".parse().unwrap(), server.addr.port());
    assert_eq!(
        ask(&client("[::1]:0"), v6, 0x9999).map(|h| h.stratum),
        Some(1)
    );
}
