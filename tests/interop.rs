//! Real clients no one here wrote (chrony's chronyd, ntpsec's ntpdate) against
//! hwntpd on UDP port 123 in a network namespace, over a veth pair. Needs root
//! and the Debian packages chrony and ntpsec-ntpdate (CI installs them).

mod common;

use std::time::Duration;

use common::*;

/// hwntpd in the server namespace on port 123 of its veth address (v4 and v6).
fn start_in_netns(net: &NetnsPair, name: &str, extra: &[&str]) -> Server {
    let dir = tempdir(name);
    let v4 = format!("{}:123", net.server_v4);
    let v6 = format!("[{}]:123", net.server_v6);
    // The veth addresses, and the namespace's own loopback (port 123 is free
    // there) for clients run inside the server namespace.
    let mut args = vec![
        "--listen",
        &v4,
        "--listen",
        &v6,
        "--listen",
        "127.0.0.1:123",
        "--reference",
        "local",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    let server = Server::spawn_in(Some(&net.server_ns), &args, &dir, v4.parse().unwrap());
    let (addr, client_ns) = (server.addr, net.client_ns.clone());
    let bind = format!("{}:0", net.client_v4);
    let ready = in_netns(&client_ns, move || {
        retry(Duration::from_secs(10), || {
            exchange_from(&bind, addr, &request(4, 3, 1), Duration::from_millis(200))
        })
        .is_some()
    });
    assert!(
        ready,
        "hwntpd in the namespace did not answer; log:\n{}",
        server.log()
    );
    server
}

fn can_run(tools: &[&str]) -> bool {
    if skip_unless(
        is_root(),
        "interop tests need root for network namespaces and port 123",
    ) {
        return false;
    }
    for t in tools {
        if skip_unless(
            have(t),
            &format!("{t} is not installed (apt-get install chrony ntpsec-ntpdate)"),
        ) {
            return false;
        }
    }
    true
}

/// A finished command's stdout followed by its stderr, as text.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Parse chronyd -Q's "System clock wrong by X seconds (ignored)".
fn chronyd_offset(text: &str) -> Option<f64> {
    let at = text.find("System clock wrong by ")?;
    text[at + 22..].split_whitespace().next()?.parse().ok()
}

#[test]
fn chronyd_one_shot_accepts_hwntpd() {
    if !can_run(&["chronyd"]) {
        return;
    }
    let net = NetnsPair::new("cq");
    let server = start_in_netns(&net, "chronyd-q", &[]);
    let dir = tempdir("chronyd-q-client");
    // On loopback (client and server in one namespace), then across the veth
    // pair over IPv4 and IPv6.
    let targets = [
        (&net.server_ns, "127.0.0.1".to_string()),
        (&net.client_ns, net.server_v4.clone()),
        (&net.client_ns, net.server_v6.clone()),
    ];
    for (ns, target) in targets {
        let out = NetnsPair::cmd(ns, "timeout")
            .args(["30", "chronyd", "-Q", "-x", "-f", "/dev/null", "-t", "20"])
            .arg(format!("pidfile {}/chronyd.pid", dir.display()))
            .arg(format!("server {target} iburst maxsamples 4"))
            .output()
            .unwrap();
        let text = output_text(&out);
        let offset =
            chronyd_offset(&text).unwrap_or_else(|| panic!("chronyd -Q printed no offset: {text}"));
        eprintln!("chronyd -Q against {target}: offset {offset} s");
        assert!(
            offset.abs() < 0.001,
            "offset {offset} s from chronyd: {text}"
        );
    }
    let s = server.stats();
    assert!(
        stat(&s, "hwntpd_replies_total{mode=\"basic\"}") >= 2,
        "{s:?}"
    );
}

#[test]
fn ntpdate_query_accepts_hwntpd() {
    if !can_run(&["ntpdate"]) {
        return;
    }
    let net = NetnsPair::new("nd");
    let _server = start_in_netns(&net, "ntpdate", &[]);
    for (ns, target) in [
        (&net.server_ns, "127.0.0.1"),
        (&net.client_ns, net.server_v4.as_str()),
    ] {
        ntpdate_query(ns, target);
    }
}

/// `ntpdate -q TARGET` from namespace `ns`: it must accept the server and
/// report an offset under 1 ms and stratum 1.
fn ntpdate_query(ns: &str, target: &str) {
    let out = NetnsPair::cmd(ns, "timeout")
        .args(["30", "ntpdate", "-q", target])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "ntpdate failed: {text}");
    // ntpsec's ntpdig prints e.g. "2026-11-22 04:30:00.123456 (+0000) +0.000012 +/- 0.000061 10.213.1.1 s1 no-leap"
    let offset: f64 = text
        .split_whitespace()
        .find(|w| (w.starts_with('+') || w.starts_with('-')) && w.contains('.') && w.len() > 3)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no offset in ntpdate output: {text}"));
    eprintln!("ntpdate -q: offset {offset} s ({})", text.trim());
    assert!(offset.abs() < 0.001, "{text}");
    assert!(text.contains(" s1 "), "stratum 1 reported: {text}");
}

#[test]
fn kernel_receive_timestamps_are_used_over_veth() {
    if !can_run(&[]) {
        return;
    }
    let net = NetnsPair::new("ts");
    let server = start_in_netns(&net, "veth-ts", &[]);
    let (addr, bind) = (server.addr, format!("{}:0", net.client_v4));
    let answered = in_netns(&net.client_ns, move || {
        (0..20)
            .filter(|i| {
                exchange_from(&bind, addr, &request(4, 3, 100 + i), Duration::from_secs(1))
                    .is_some()
            })
            .count()
    });
    assert_eq!(answered, 20);
    let s = server.wait_stats("20+ kernel receive timestamps", |s| {
        stat(s, "hwntpd_rx_timestamps_total{source=\"kernel\"}") >= 20
    });
    assert_eq!(
        stat(&s, "hwntpd_rx_timestamps_total{source=\"user\"}"),
        0,
        "no user-space reads: {s:?}"
    );
    assert_eq!(
        stat(&s, "hwntpd_rx_timestamps_total{source=\"hardware\"}"),
        0
    );
}

#[test]
fn interface_without_hardware_timestamps_falls_back_and_says_so() {
    if !can_run(&[]) {
        return;
    }
    let net = NetnsPair::new("hw");
    let dev = net.server_dev();
    let server = start_in_netns(&net, "veth-hw", &["--interface", &dev]);
    let log = server.log();
    assert!(log.contains("hardware timestamping unavailable"), "{log}");
    assert!(log.contains("kernel software"), "{log}");
    // and --timestamping hardware refuses to start
    let err = refusal(hwntpd_cmd(Some(&net.server_ns)).args([
        "--listen",
        "127.0.0.1:1123",
        "--reference",
        "local",
        "--interface",
        &dev,
        "--timestamping",
        "hardware",
    ]));
    assert!(err.contains("--timestamping hardware"), "{err}");
}

#[test]
fn link_local_ipv6_replies_leave_from_the_right_address_and_interface() {
    if !can_run(&[]) {
        return;
    }
    let net = NetnsPair::new("ll");
    let (srv_dev, cli_dev) = net.devs.clone();
    for (ns, dev, addr) in [
        (&net.server_ns, &srv_dev, "fe80::1/64"),
        (&net.client_ns, &cli_dev, "fe80::2/64"),
    ] {
        let st = std::process::Command::new("ip")
            .args(["-n", ns, "addr", "add", addr, "dev", dev, "nodad"])
            .status();
        assert!(st.unwrap().success());
    }
    // The server on the IPv6 wildcard: only IPV6_PKTINFO (address and
    // interface) can make the reply leave from fe80::1 on the right link.
    let dir = tempdir("link-local");
    let args = [
        "--listen",
        "[::]:123",
        "--reference",
        "local",
        "--workers",
        "1",
    ];
    let server = Server::spawn_in(
        Some(&net.server_ns),
        &args,
        &dir,
        "[::1]:123".parse().unwrap(),
    );
    let reply = in_netns(&net.client_ns, move || {
        let scope = nix::net::if_::if_nametoindex(cli_dev.as_str()).expect("ifindex");
        let local = std::net::SocketAddrV6::new("fe80::2".parse().unwrap(), 0, 0, scope);
        let to = std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 123, 0, scope);
        let sock = std::net::UdpSocket::bind(local).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        retry(Duration::from_secs(10), || {
            sock.send_to(&request(4, 3, 42), to).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_from(&mut buf).ok()?;
            Some((n, from, to))
        })
    });
    let (n, from, to) =
        reply.unwrap_or_else(|| panic!("no reply over link-local IPv6; log:\n{}", server.log()));
    assert_eq!(n, 48);
    match from {
        std::net::SocketAddr::V6(from) => {
            assert_eq!(
                from.ip(),
                to.ip(),
                "reply from the link-local address asked"
            );
            assert_eq!(from.port(), 123);
        }
        other => panic!("reply from {other}"),
    }
}
