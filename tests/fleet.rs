//! Health that fails closed, as an anycast node needs it: with `--on-unsync
//! drop`, a node whose reference goes answers nothing and `/healthz` says 503 at
//! once; when the reference returns, the node stays silent and unhealthy for
//! the hysteresis (3 s of good checks), then serves again. Loopback only.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use hwntpd::protocol::LeapIndicator;

const T: Duration = Duration::from_millis(300);

fn healthz(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /healthz HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.trim_end().to_string())
}

#[test]
fn unhealthy_node_is_silent_and_recovers_only_after_the_hysteresis() {
    // The "reference": another hwntpd serving its local clock at stratum 2.
    let up_dir = tempdir("fleet-upstream");
    let up_port = free_port();
    let up_addr: SocketAddr = format!("127.0.0.1:{up_port}").parse().unwrap();
    let up_listen = up_addr.to_string();
    let up_args = [
        "--listen",
        &up_listen,
        "--reference",
        "local",
        "--stratum",
        "2",
        "--refid",
        "192.0.2.1",
        "--workers",
        "1",
    ];
    let mut upstream = Server::spawn(&up_args, &up_dir, up_addr);
    upstream.wait_ready();

    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let metrics_arg = metrics.to_string();
    let reference = format!("ntp:{up_addr}");
    let node = Server::start(
        "fleet-node",
        &[
            "--reference",
            &reference,
            "--on-unsync",
            "drop",
            "--metrics-listen",
            &metrics_arg,
        ],
    );
    let h = query(node.addr, 4, 3, T).expect("a healthy node answers");
    assert_eq!((h.stratum, h.leap), (2, LeapIndicator::NoWarning));
    assert_eq!(healthz(metrics).0, 200, "{}", node.log());

    // The reference goes: 503 and silence within a few seconds.
    upstream.stop();
    let gone = Instant::now();
    let body = retry(Duration::from_secs(5), || {
        let (code, body) = healthz(metrics);
        (code == 503).then_some(body)
    })
    .unwrap_or_else(|| panic!("/healthz never 503; log:\n{}", node.log()));
    assert_eq!(body, "reference ntp unusable (serving LI=3, stratum 16)");
    assert!(
        gone.elapsed() < Duration::from_secs(4),
        "{:?}",
        gone.elapsed()
    );
    for _ in 0..3 {
        assert!(
            query(node.addr, 4, 3, T).is_none(),
            "an unhealthy node with --on-unsync drop answers nothing"
        );
    }

    // It returns: the mirror is synchronised again within about a second, but
    // the node stays unhealthy and silent while the checks stay good for 3 s.
    let mut upstream = Server::spawn(&up_args, &up_dir, up_addr);
    upstream.wait_ready();
    let back = Instant::now();
    let recovering = retry(Duration::from_secs(3), || {
        let (code, body) = healthz(metrics);
        (code == 503 && body.starts_with("recovering")).then_some(body)
    })
    .unwrap_or_else(|| panic!("never 'recovering'; log:\n{}", node.log()));
    assert!(
        recovering.ends_with("last problem: reference ntp unusable (serving LI=3, stratum 16)"),
        "{recovering}"
    );
    assert!(
        query(node.addr, 4, 3, T).is_none(),
        "silent while recovering"
    );
    let answered = retry(Duration::from_secs(8), || query(node.addr, 4, 3, T))
        .unwrap_or_else(|| panic!("never answered again; log:\n{}", node.log()));
    let took = back.elapsed();
    assert_eq!(answered.stratum, 2);
    assert_eq!(healthz(metrics).0, 200);
    assert!(
        took >= Duration::from_millis(2500),
        "answered {took:?} after the reference returned: the 3 s hysteresis was skipped"
    );
    let log = node.log();
    assert!(
        log.contains("unhealthy with --on-unsync drop: answering nothing"),
        "{log}"
    );
    assert!(log.contains("healthy: answering again"), "{log}");
    upstream.stop();
}
