//! Load must never leave the server deaf. Interleaved load around and above
//! what one worker can answer (most replies with a kernel transmit timestamp)
//! fills the socket's queues; once each round of load stops, the server must
//! answer again at once. Before the fix in `src/server/worker.rs` (reap the
//! transmit-timestamp ring during long turns, and the watchdog in
//! `src/server/watchdog.rs`), this test failed 2 runs in 3: stamps piled up in
//! the error queue held all the socket's receive memory and hwntpd stayed
//! silent for good. The fixed server passed it 4 runs in 4.
//!
//! Rounds: `OVERLOAD_RATES` (requests/s, comma-separated; default
//! 120000,140000,120000,160000), each `OVERLOAD_SECS` long (default 4), so
//! at most about 17 s and 2.2 million requests.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use hwntpd::protocol::packet::Header;
use nix::sched::CpuSet;
use nix::unistd::Pid;

/// One basic request from the client namespace; whether a valid reply came.
fn answered(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    exchange_from("0.0.0.0:0", addr, &request(4, 3, 0x1234_5678), timeout)
        .and_then(|r| Header::parse(&r))
        .is_some_and(|h| h.mode == 4)
}

#[test]
fn answers_again_after_interleaved_overload() {
    if skip_unless(is_root(), "needs root (network namespaces, port 123)") {
        return;
    }
    let net = NetnsPair::new("ov");
    let dir = tempdir("overload");
    let v4 = format!("{}:123", net.server_v4);
    // Worker on core 1, load generator on core 0 (as in scripts/bench.sh):
    // the worker's turns get long, the condition that once made it deaf.
    let args = ["--listen", &v4, "--reference", "local", "--workers", "1"];
    // The whole server process on core 1 (its helper threads too), as
    // scripts/bench.sh runs it: spawned while this thread is pinned there.
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if !two_cores {
        eprintln!("NOTE: fewer than 2 cores: server and load generator not pinned apart");
    }
    let all = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
    if two_cores {
        let mut one = CpuSet::new();
        one.set(1).unwrap();
        nix::sched::sched_setaffinity(Pid::from_raw(0), &one).unwrap();
    }
    let server = Server::spawn_in(Some(&net.server_ns), &args, &dir, v4.parse().unwrap());
    nix::sched::sched_setaffinity(Pid::from_raw(0), &all).unwrap();
    let addr: std::net::SocketAddr = v4.parse().unwrap();
    let up = in_netns(&net.client_ns, move || {
        retry(Duration::from_secs(10), || {
            answered(addr, Duration::from_millis(100)).then_some(())
        })
        .is_some()
    });
    assert!(up, "hwntpd did not start; log:\n{}", server.log());

    // Rounds of load around and above capacity (each bounded by its length
    // and by 900k requests), each followed by a check that the server answers.
    let rates =
        std::env::var("OVERLOAD_RATES").unwrap_or_else(|_| "120000,140000,120000,160000".into());
    let secs = std::env::var("OVERLOAD_SECS").unwrap_or_else(|_| "4".into());
    for (round, rate) in rates.split(',').enumerate() {
        // The generator on core 0 (taskset's own affinity, then exec).
        let mut load = if two_cores {
            let mut c = NetnsPair::cmd(&net.client_ns, "taskset");
            c.args(["-c", "0", env!("CARGO_BIN_EXE_hwntpd-bench")]);
            c
        } else {
            NetnsPair::cmd(&net.client_ns, env!("CARGO_BIN_EXE_hwntpd-bench"))
        };
        let status = load
            .args(["load", "--server", &v4, "--rate", rate, "--duration", &secs])
            .args([
                "--interleaved",
                "--stop-after-fail",
                "0",
                "--max-requests",
                "900000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run hwntpd-bench load");
        assert!(status.code().is_some(), "the load generator was killed");
        let ok = in_netns(&net.client_ns, move || {
            // The queue left by the load drains within milliseconds; allow 2 s.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut ok = 0;
            while Instant::now() < deadline && ok < 20 {
                if answered(addr, Duration::from_millis(200)) {
                    ok += 1;
                }
            }
            ok
        });
        let s = server.stats();
        eprintln!(
            "round {round}: {ok}/20 answered after the overload; received {}, \
             interleaved replies {}, stalls rx/tx {}/{}",
            stat(&s, "hwntpd_received_total"),
            stat(&s, "hwntpd_replies_total{mode=\"interleaved\"}"),
            stat(&s, "hwntpd_stalls_total{what=\"receive\"}"),
            stat(&s, "hwntpd_stalls_total{what=\"tx_timestamps\"}"),
        );
        assert_eq!(
            ok,
            20,
            "round {round}: deaf after the overload; log tail:\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            stat(&s, "hwntpd_replies_total{mode=\"interleaved\"}") > 0,
            "the load exercised interleaved mode"
        );
    }
}
