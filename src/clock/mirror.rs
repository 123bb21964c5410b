//! `--reference ntp:ADDR`: serve the system clock with the header of the local
//! NTP daemon that keeps it (as rsntp does with chronyd). Every second the
//! daemon is asked once (and once more after 400 ms of silence); its leap,
//! stratum, refid, root delay, root dispersion and reference time are copied.
//! A daemon that stays silent, answers with a KoD, or says it is unsynchronised
//! makes the server say so at once: LI 3 and stratum 16 (or silence with
//! `--on-unsync drop`). Transitions are logged once each.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::realtime::now;
use super::reference::ReferenceConfig;
use super::snapshot::StateCell;
use crate::protocol::packet::{mode, Header};
use crate::protocol::{LeapIndicator, NtpTimestamp, ServerState};

/// How long to wait for each of the two tries in a poll.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(400);

/// The server state mirroring a daemon's reply to a request whose transmit
/// timestamp was `sent` (pure). `None` if the reply is not a valid, synchronised
/// server reply to that request.
pub fn mirror_state(
    cfg: &ReferenceConfig,
    reply: &[u8],
    sent: NtpTimestamp,
) -> Option<ServerState> {
    let h = Header::parse(reply)?;
    let valid = h.mode == mode::SERVER
        && h.origin == sent
        && (1..=15).contains(&h.stratum)
        && h.leap != LeapIndicator::Unsynchronized
        && !h.transmit.is_zero();
    valid.then_some(ServerState {
        leap: h.leap,
        stratum: h.stratum,
        precision: cfg.precision,
        root_delay: h.root_delay,
        root_dispersion: h.root_dispersion,
        refid: h.refid,
        reference_time: h.reference,
        min_poll: cfg.min_poll,
        max_poll: cfg.max_poll,
        serve_unsynchronized: cfg.serve_unsynchronized,
    })
}

/// Ask the daemon once: send a client request, wait for the matching reply.
fn ask(sock: &UdpSocket, cfg: &ReferenceConfig) -> Option<ServerState> {
    for _ in 0..2 {
        // A transmit timestamp no other packet carries, so stale replies are ignored.
        let sent = now();
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | mode::CLIENT;
        req[40..48].copy_from_slice(&sent.to_bits().to_be_bytes());
        if sock.send(&req).is_err() {
            std::thread::sleep(TRY_TIMEOUT);
            continue;
        }
        let deadline = Instant::now() + TRY_TIMEOUT;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else { break };
            let got = mirror_state(cfg, &buf[..n], sent);
            let answers_us = Header::parse(&buf[..n]).is_some_and(|h| h.origin == sent);
            if answers_us {
                return got;
            }
        }
    }
    None
}

/// Poll the daemon at `upstream` every second, storing the mirrored state in
/// `cell`, until `stop` is set.
pub fn spawn_mirror(
    upstream: SocketAddr,
    cfg: ReferenceConfig,
    cell: Arc<StateCell>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal address");
    let sock = UdpSocket::bind(bind)?;
    sock.connect(upstream)?;
    sock.set_read_timeout(Some(TRY_TIMEOUT))?;
    std::thread::Builder::new().name("hwntpd-mirror".into()).spawn(move || {
        let mut synced: Option<bool> = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let state = ask(&sock, &cfg);
            let ok = state.is_some();
            cell.store(state.unwrap_or(ServerState {
                min_poll: cfg.min_poll,
                max_poll: cfg.max_poll,
                serve_unsynchronized: cfg.serve_unsynchronized,
                ..ServerState::unsynchronized(cfg.precision)
            }));
            if synced.replace(ok) != Some(ok) {
                if ok {
                    let s = cell.load();
                    tracing::info!(%upstream, stratum = s.stratum, "upstream NTP daemon answers: mirroring its header");
                } else {
                    tracing::warn!(
                        %upstream,
                        "upstream NTP daemon silent or unsynchronised: serving LI 3, stratum 16"
                    );
                }
            }
            while started.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::reference::ReferenceKind;
    use crate::protocol::NtpShort;

    fn cfg() -> ReferenceConfig {
        ReferenceConfig {
            kind: ReferenceKind::Ntp,
            stratum: 1,
            refid: *b"SYS\0",
            precision: -22,
            min_poll: 4,
            max_poll: 17,
            serve_unsynchronized: true,
        }
    }

    fn reply(stratum: u8, leap: LeapIndicator, origin: u64) -> [u8; 48] {
        let h = Header {
            leap,
            version: 4,
            mode: 4,
            stratum,
            poll: 6,
            precision: -25,
            root_delay: NtpShort(0x10),
            root_dispersion: NtpShort(0x20),
            refid: [192, 0, 2, 1],
            reference: NtpTimestamp(0xabc),
            origin: NtpTimestamp(origin),
            receive: NtpTimestamp(5),
            transmit: NtpTimestamp(6),
        };
        let mut b = [0u8; 48];
        h.write(&mut b);
        b
    }

    #[test]
    fn copies_the_daemons_header() {
        let s = mirror_state(
            &cfg(),
            &reply(2, LeapIndicator::Insert, 77),
            NtpTimestamp(77),
        )
        .unwrap();
        assert_eq!(
            (s.stratum, s.leap, s.refid),
            (2, LeapIndicator::Insert, [192, 0, 2, 1])
        );
        assert_eq!(
            (s.root_delay, s.root_dispersion),
            (NtpShort(0x10), NtpShort(0x20))
        );
        assert_eq!(s.reference_time, NtpTimestamp(0xabc));
        assert_eq!(s.precision, -22, "precision is our own clock's");
    }

    #[test]
    fn rejects_unsynchronised_kod_and_stray_replies() {
        assert!(mirror_state(
            &cfg(),
            &reply(16, LeapIndicator::NoWarning, 77),
            NtpTimestamp(77)
        )
        .is_none());
        assert!(mirror_state(
            &cfg(),
            &reply(2, LeapIndicator::Unsynchronized, 77),
            NtpTimestamp(77)
        )
        .is_none());
        assert!(
            mirror_state(
                &cfg(),
                &reply(0, LeapIndicator::Unsynchronized, 77),
                NtpTimestamp(77)
            )
            .is_none(),
            "KoD"
        );
        assert!(
            mirror_state(
                &cfg(),
                &reply(2, LeapIndicator::NoWarning, 78),
                NtpTimestamp(77)
            )
            .is_none(),
            "stale"
        );
        assert!(mirror_state(&cfg(), &[0u8; 20], NtpTimestamp(77)).is_none());
    }
}
