//! What the kernel's `SO_REUSEPORT` hash does with several workers: two
//! in-process [`Worker`]s share one loopback port, 64 clients (distinct source
//! ports) each send a run of requests, and each worker's own counters show
//! where every request landed. Measured: a client's 4-tuple always lands on
//! the same worker (the group of sockets does not change during the run), and
//! the clients spread over both workers.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hwntpd::clock::snapshot::StateCell;
use hwntpd::net::socket::{bind_udp, enable_timestamping, local_addr, TimestampingConfig};
use hwntpd::net::uring::RingConfig;
use hwntpd::protocol::{NtpShort, NtpTimestamp, ServerState};
use hwntpd::server::interleave::InterleaveTable;
use hwntpd::server::stats::WorkerStats;
use hwntpd::server::worker::{RxTimestamps, TxTimestampMode, Worker, WorkerConfig, WorkerSocket};

fn state() -> ServerState {
    ServerState::local_stratum1(-20, NtpShort(1), NtpTimestamp(1 << 40))
}

#[test]
fn reuseport_keeps_each_client_on_one_worker() {
    // Find a port free for an exclusive bind, then bind both workers' sockets with SO_REUSEPORT.
    let probe = bind_udp("127.0.0.1:0".parse().unwrap(), false).expect("bind loopback");
    let server: SocketAddr = local_addr(probe.as_fd()).unwrap();
    drop(probe);
    let table = Arc::new(InterleaveTable::new(1 << 10));
    let cell = Arc::new(StateCell::new(state()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut stats = Vec::new();
    let mut handles = Vec::new();
    for id in 0..2 {
        let fd = bind_udp(server, true).expect("bind with SO_REUSEPORT");
        enable_timestamping(
            fd.as_fd(),
            &TimestampingConfig {
                rx_software: true,
                ..TimestampingConfig::default()
            },
        )
        .unwrap();
        let st = Arc::new(WorkerStats::default());
        stats.push(st.clone());
        let cfg = WorkerConfig {
            id,
            sockets: vec![WorkerSocket {
                fd,
                send: None,
                local: server,
            }],
            state: cell.clone(),
            table: Some(table.clone()),
            policy: None,
            stats: st,
            stop: stop.clone(),
            tx_mode: TxTimestampMode::Off,
            tx_hardware: false,
            explicit_tx_key: false,
            rx: RxTimestamps::Kernel,
            domains: hwntpd::clock::domain::TimeDomains::system(),
            ring: RingConfig::default(),
            cpu: None,
            nts: None,
            guards: Default::default(),
            direct_send: true,
            warm_send_path: true,
            egress: None,
        };
        handles.push(std::thread::spawn(move || Worker::new(cfg)?.run()));
    }

    let received = |w: usize| stats[w].snapshot().received;
    let per_client = 20u64;
    let mut on = [0usize; 2];
    for c in 0..64 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let before = [received(0), received(1)];
        for i in 0..per_client {
            let mut req = [0u8; 48];
            req[0] = (4 << 3) | 3;
            req[40..48].copy_from_slice(&(0x5555_0000_0000_0000u64 | (c << 16) | i).to_be_bytes());
            sock.send_to(&req, server).unwrap();
            let mut buf = [0u8; 128];
            sock.recv_from(&mut buf).expect("a reply within 2 s");
        }
        let delta = [received(0) - before[0], received(1) - before[1]];
        assert_eq!(
            delta[0] + delta[1],
            per_client,
            "client {c}: every request counted once"
        );
        assert!(
            delta[0] == 0 || delta[1] == 0,
            "client {c} ({}) was split between the workers: {delta:?}",
            sock.local_addr().unwrap()
        );
        on[usize::from(delta[0] == 0)] += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap().expect("worker ran cleanly");
    }
    eprintln!("64 clients x {per_client} requests: {on:?} clients on workers 0/1, none split");
    assert!(
        on[0] > 0 && on[1] > 0,
        "the hash should spread 64 clients over both workers: {on:?}"
    );
}
