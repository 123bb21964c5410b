//! `--egress-stamp`: basic replies' transmit timestamps written by the eBPF
//! program at the egress of a veth interface, end to end (root: namespaces
//! and eBPF).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

/// Send `n` basic requests to `addr` from inside the client namespace; for
/// each reply (receive T2, transmit T3) and the time read right after it was
/// received, in NTP units.
fn basic_exchanges(ns: &str, bind: &str, addr: SocketAddr, n: usize) -> Vec<(u64, u64, u64)> {
    let bind = bind.to_string();
    in_netns(ns, move || {
        let s = UdpSocket::bind(bind.as_str()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let req = request(4, 3, now_ntp().0);
            s.send_to(&req, addr).unwrap();
            let mut buf = [0u8; 128];
            let Ok((len, _)) = s.recv_from(&mut buf) else {
                continue;
            };
            let after = now_ntp().0;
            assert_eq!(len, 48);
            let t2 = u64::from_be_bytes(buf[32..40].try_into().unwrap());
            let t3 = u64::from_be_bytes(buf[40..48].try_into().unwrap());
            out.push((t2, t3, after));
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    })
}

#[test]
fn basic_replies_carry_the_egress_reading() {
    if skip_unless(is_root(), "needs root (network namespaces, eBPF)") {
        return;
    }
    let pair = NetnsPair::new("eg");
    let port = free_port();
    let v4: SocketAddr = format!("{}:{port}", pair.server_v4).parse().unwrap();
    let v6: SocketAddr = format!("[{}]:{port}", pair.server_v6).parse().unwrap();
    let dir = tempdir("egress");
    let mut server = Server::spawn_in(
        Some(&pair.server_ns),
        &[
            "--listen",
            &v4.to_string(),
            "--listen",
            &v6.to_string(),
            "--workers",
            "1",
            "--reference",
            "local",
            "--egress-stamp",
            "on",
        ],
        &dir,
        v4,
    );
    // Ready when it answers from the client's side.
    let ready = retry(Duration::from_secs(10), || {
        let r = basic_exchanges(&pair.client_ns, "0.0.0.0:0", v4, 1);
        (!r.is_empty()).then_some(())
    });
    assert!(ready.is_some(), "no answer; log:\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("written at egress by an eBPF program"),
        "the log says which transmit timestamps basic replies get:\n{log}"
    );

    let mut all = basic_exchanges(&pair.client_ns, "0.0.0.0:0", v4, 20);
    all.extend(basic_exchanges(&pair.client_ns, "[::]:0", v6, 20));
    assert!(all.len() >= 36, "only {} of 40 answered", all.len());
    for (t2, t3, after) in &all {
        // A basic reply: transmit after receive, and before the client had it.
        assert!(t3 >= t2, "transmit {t3:x} before receive {t2:x}");
        assert!(
            t3 <= after,
            "transmit {t3:x} after the client's reading {after:x}"
        );
        assert_eq!(t3 & 1, 0, "even low bit, as hwntpd's basic replies");
    }
    // Every basic reply (41 and more) went through the program, none refused.
    let replies = all.len() as u64 + 1;
    let s = server.wait_stats("egress stamps", |s| {
        stat(s, "hwntpd_egress_stamps_total{result=\"written\"}") >= replies
    });
    assert_eq!(
        stat(&s, "hwntpd_egress_stamps_total{result=\"written\"}"),
        stat(&s, "hwntpd_replies_total{mode=\"basic\"}"),
        "every basic reply rewritten"
    );
    assert_eq!(
        stat(&s, "hwntpd_egress_stamps_total{result=\"refused\"}"),
        0
    );
    server.stop();
}

#[test]
fn off_leaves_replies_alone() {
    if skip_unless(is_root(), "needs root (network namespaces, eBPF)") {
        return;
    }
    let pair = NetnsPair::new("eo");
    let port = free_port();
    let v4: SocketAddr = format!("{}:{port}", pair.server_v4).parse().unwrap();
    let dir = tempdir("egress-off");
    let mut server = Server::spawn_in(
        Some(&pair.server_ns),
        &[
            "--listen",
            &v4.to_string(),
            "--workers",
            "1",
            "--reference",
            "local",
            "--egress-stamp",
            "off",
        ],
        &dir,
        v4,
    );
    let got = retry(Duration::from_secs(10), || {
        let r = basic_exchanges(&pair.client_ns, "0.0.0.0:0", v4, 5);
        (r.len() == 5).then_some(r)
    });
    assert!(got.is_some(), "no answer; log:\n{}", server.log());
    let s = server.wait_stats("basic replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"basic\"}") >= 5
    });
    assert_eq!(
        stat(&s, "hwntpd_egress_stamps_total{result=\"written\"}"),
        0
    );
    assert!(server.log().contains("--egress-stamp off"));
    server.stop();
}
