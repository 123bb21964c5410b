//! Interleaved mode (RFC 9769) for real: kernel transmit timestamps over
//! loopback and veth, a Rust client speaking chrony's xleave protocol, and
//! chronyd itself with `xleave`.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hwntpd::protocol::packet::Header;
use hwntpd::protocol::NtpTimestamp;

/// What an xleave client remembers of the previous exchange.
#[derive(Clone, Copy, Default)]
struct XleaveState {
    /// The server's receive timestamp in the previous reply.
    server_rx: NtpTimestamp,
    /// Our local receive time of the previous reply.
    local_rx: NtpTimestamp,
}

/// One xleave exchange from a fresh socket bound to `bind` (a new source port
/// each time, like a client behind a NAT that changes its mapping).
fn xleave_exchange(
    server: std::net::SocketAddr,
    st: &XleaveState,
) -> (Header, NtpTimestamp, NtpTimestamp) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = request(4, 3, 0);
    let tx = now_ntp();
    req[24..32].copy_from_slice(&st.server_rx.0.to_be_bytes());
    req[32..40].copy_from_slice(&st.local_rx.0.to_be_bytes());
    req[40..48].copy_from_slice(&tx.0.to_be_bytes());
    sock.send_to(&req, server).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = sock.recv_from(&mut buf).expect("reply");
    let rx = now_ntp();
    (Header::parse(&buf[..n]).unwrap(), tx, rx)
}

#[test]
fn xleave_client_changing_address_gets_exact_transmit_times() {
    // With two workers the client's new source ports land on either worker
    // (SO_REUSEPORT hashes the 4-tuple): the shared table must still match.
    // (Requests are 20 ms apart, as a client polling at 1/64 s: the worker that
    // sent a reply has then long recorded its transmit timestamp, which a
    // client firing back within microseconds could outrun on another worker.)
    // And with batched waits (DEFER_TASKRUN data-path ring, TX ring apart).
    for args in [
        &["--workers", "1"][..],
        &["--workers", "2"],
        &["--batch-wait-us", "50"],
    ] {
        xleave_with_new_ports(args);
    }
}

fn xleave_with_new_ports(args: &[&str]) {
    let server = Server::start("xleave-nat", args);
    let mut st = XleaveState::default();
    let mut previous: Option<(Header, NtpTimestamp)> = None;
    let mut interleaved = 0;
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(20));
        let (h, tx, rx) = xleave_exchange(server.addr, &st);
        let is_interleaved = i > 0 && h.origin == st.local_rx && h.origin != NtpTimestamp::ZERO;
        if is_interleaved {
            interleaved += 1;
            let (prev, prev_local_rx) = previous.unwrap();
            // The exact transmit time of the previous reply: after the server
            // received that request (within a turnaround of 5 ms), and before
            // our receipt of the reply.
            let after_rx = h.transmit.diff_nanos(prev.receive);
            assert!(
                after_rx > 0,
                "exact TX {after_rx} ns before the server received the request"
            );
            assert!(
                after_rx < 5_000_000,
                "exact TX {after_rx} ns after the server received the request"
            );
            assert!(
                h.transmit.diff_nanos(prev_local_rx) <= 0,
                "exact TX after the client received it"
            );
            assert_eq!(h.transmit.0 & 1, 0);
        } else {
            assert_eq!(h.origin, tx, "a basic reply echoes the request's transmit");
        }
        st = XleaveState {
            server_rx: h.receive,
            local_rx: rx,
        };
        previous = Some((h, rx));
    }
    // basic, basic (registers), then interleaved from the third request on
    assert_eq!(interleaved, 4, "interleaved from the third request on");
    let s = server.wait_stats("interleaved replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"interleaved\"}") == 4
    });
    assert!(
        stat(&s, "hwntpd_tx_timestamps_total{source=\"kernel\"}") >= 4,
        "{s:?}"
    );
    assert_eq!(stat(&s, "hwntpd_tx_timestamps_total{source=\"daemon\"}"), 0);
}

#[test]
fn basic_clients_do_not_pay_for_transmit_timestamps() {
    // Without send-latency calibration: never.
    let server = Server::start("basic-only", &["--send-latency-comp", "off"]);
    for i in 0..10 {
        assert!(
            query(server.addr, 4, 3, Duration::from_secs(1)).is_some(),
            "query {i}"
        );
    }
    let s = server.wait_stats("10 replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"basic\"}") >= 10
    });
    assert_eq!(stat(&s, "hwntpd_tx_timestamps_requested_total"), 0, "{s:?}");
    assert_eq!(stat(&s, "hwntpd_replies_total{mode=\"interleaved\"}"), 0);

    // With it (the default): a quiet server measures every basic reply (at
    // most one per 5 ms per situation, and these come 6 ms apart)...
    let server = Server::start("basic-sampled", &[]);
    for i in 0..10 {
        assert!(
            query(server.addr, 4, 3, Duration::from_secs(1)).is_some(),
            "query {i}"
        );
        std::thread::sleep(Duration::from_millis(6));
    }
    let s = server.wait_stats("10 replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"basic\"}") >= 10
    });
    // The readiness probe of `Server::start` is a reply too: it calibrates
    // unless the first query follows it within 5 ms (slow machines: it does not).
    let quiet_requested = stat(&s, "hwntpd_tx_timestamps_requested_total");
    let quiet_replies = stat(&s, "hwntpd_replies_total{mode=\"basic\"}");
    assert!(
        (10..=quiet_replies).contains(&quiet_requested),
        "every reply of a quiet server calibrates: {quiet_requested} of {quiet_replies}: {s:?}"
    );
    // ... and a busy one at most one per 5 ms per situation: one request at a
    // time is always first in its batch, so at most the 2 idle classes.
    let started = Instant::now();
    let n = 300;
    for i in 0..n {
        assert!(
            query(server.addr, 4, 3, Duration::from_secs(1)).is_some(),
            "query {i}"
        );
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let s = server.wait_stats("310 replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"basic\"}") >= n + quiet_replies
    });
    let requested = stat(&s, "hwntpd_tx_timestamps_requested_total") - quiet_requested;
    assert!(requested >= 1, "some replies calibrate the send latency");
    // One per 10 ms, plus the readiness query's before `started`.
    assert!(
        requested <= 2 * (1 + elapsed_ms / 5),
        "{requested} TX stamps for {n} replies in {elapsed_ms} ms"
    );
    assert_eq!(stat(&s, "hwntpd_replies_total{mode=\"interleaved\"}"), 0);
}

#[test]
fn full_table_degrades_to_basic_never_to_wrong_times() {
    // One slot: two xleave clients evict each other's entries.
    let server = Server::start("table-full", &["--interleave-entries", "1"]);
    let mut a = XleaveState::default();
    let mut b = XleaveState::default();
    let (mut prev_a, mut prev_b) = (
        None::<(Header, NtpTimestamp)>,
        None::<(Header, NtpTimestamp)>,
    );
    let mut interleaved = 0;
    let mut basic = 0;
    for _ in 0..10 {
        for (st, prev) in [(&mut a, &mut prev_a), (&mut b, &mut prev_b)] {
            let (h, _, rx) = xleave_exchange(server.addr, st);
            if h.origin == st.local_rx && st.local_rx != NtpTimestamp::ZERO {
                interleaved += 1;
                let (p, p_rx) = prev.unwrap();
                assert!(
                    h.transmit.diff_nanos(p.receive) > 0 && h.transmit.diff_nanos(p_rx) <= 0,
                    "wrong entry served"
                );
            } else {
                basic += 1;
            }
            *st = XleaveState {
                server_rx: h.receive,
                local_rx: rx,
            };
            *prev = Some((h, rx));
        }
    }
    assert!(
        basic > 2,
        "evictions make some replies basic ({basic} basic, {interleaved} interleaved)"
    );
}

#[test]
fn chronyd_xleave_client_over_veth_gets_interleaved_replies() {
    if skip_unless(is_root(), "needs root for network namespaces")
        || skip_unless(have("chronyd"), "chronyd missing")
    {
        return;
    }
    let net = NetnsPair::new("xl");
    let dir = tempdir("xleave-server");
    let v4 = format!("{}:123", net.server_v4);
    let args = ["--listen", &v4, "--reference", "local", "--workers", "1"];
    let server = Server::spawn_in(Some(&net.server_ns), &args, &dir, v4.parse().unwrap());

    let cdir = tempdir("xleave-client");
    std::fs::set_permissions(&cdir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let conf = cdir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "server {} iburst xleave minpoll -6 maxpoll -6\npidfile {d}/chronyd.pid\nbindcmdaddress {d}/chronyd.sock\n\
             cmdport 0\nlogdir {d}\nlog measurements\n",
            net.server_v4,
            d = cdir.display()
        ),
    )
    .unwrap();
    let mut chronyd = NetnsPair::cmd(&net.client_ns, "chronyd")
        .args(["-x", "-d", "-u", "root", "-f", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = cdir.join("chronyd.sock");
    let shows_interleaved = |ntpdata: &str| {
        ntpdata
            .lines()
            .any(|l| l.starts_with("Interleaved") && l.contains("Yes"))
    };
    let mut ntpdata = String::new();
    retry(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(500));
        let out = Command::new("chronyc")
            .args(["-h", sock.to_str().unwrap(), "ntpdata"])
            .output()
            .unwrap();
        ntpdata = String::from_utf8_lossy(&out.stdout).into_owned();
        shows_interleaved(&ntpdata).then_some(())
    });
    let _ = chronyd.kill();
    let _ = chronyd.wait();
    eprintln!("chronyc ntpdata:\n{ntpdata}");
    assert!(shows_interleaved(&ntpdata), "{ntpdata}");
    let measurements = std::fs::read_to_string(cdir.join("measurements.log")).unwrap_or_default();
    assert!(
        measurements.contains(" 4I "),
        "chrony logged interleaved measurements:\n{measurements}"
    );
    let s = server.wait_stats("interleaved replies", |s| {
        stat(s, "hwntpd_replies_total{mode=\"interleaved\"}") > 0
    });
    assert!(
        stat(&s, "hwntpd_tx_timestamps_total{source=\"kernel\"}") > 0,
        "{s:?}"
    );
}
