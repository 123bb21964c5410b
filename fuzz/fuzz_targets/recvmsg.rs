//! The worker's receive path on an arbitrary multishot `recvmsg` buffer, as
//! the kernel fills a provided buffer (`struct io_uring_recvmsg_out`, then the
//! reserved name and control space, then the payload):
//!
//! `RecvTemplate::parse` / `parse_recvmsg_out` -> `parse_sockaddr` ->
//! `parse_rx_control` -> served receive time (system clock and PHC domains,
//! with the wire-time correction from the frame length) -> `respond` ->
//! `build_reply_control` with the request's local address.
//!
//! Invariants checked: no panic; every slice lies inside the buffer and the
//! reserved space; a parsed address survives `write_sockaddr` and back; every
//! reported kernel time has nanoseconds below 1e9 and is not zero; the reply
//! is never longer than the payload; the reply's control data carries the
//! local address back.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use hwntpd::clock::domain::{PhcSnapshot, ServedClock, TimeDomains};
use hwntpd::clock::tracking::{PhcMeasurement, PhcTracker};
use hwntpd::clock::wire::Compensation;
use hwntpd::net::addr::{parse_sockaddr, write_sockaddr, SOCKADDR_MAX};
use hwntpd::net::cmsg::{
    build_reply_control, cmsgs, parse_rx_control, KernelTime, TxTsRequest, IPV6_PKTINFO,
    IP_PKTINFO, REPLY_CONTROL_SPACE, SOL_IP, SOL_IPV6,
};
use hwntpd::net::uring::{parse_recvmsg_out, RecvTemplate, RECV_CONTROL_SPACE};
use hwntpd::protocol::packet::HEADER_LEN;
use hwntpd::protocol::server::{respond, Admission, Decision, NoInterleave, RequestContext};
use hwntpd::protocol::{NtpShort, NtpTimestamp, ServerState};
use libfuzzer_sys::fuzz_target;

/// The worker's converters: the system clock served, and the PHC served
/// (a PHC 37 s ahead in TAI, tracked by eight exact readings), with
/// compensations and a 1 Gbit/s link.
fn domains() -> &'static [Arc<TimeDomains>; 2] {
    static D: OnceLock<[Arc<TimeDomains>; 2]> = OnceLock::new();
    D.get_or_init(|| {
        let mut tracker = PhcTracker::new();
        for i in 0..8 {
            tracker.add(PhcMeasurement {
                sys_ns: 1_800_000_000_000_000_000 + i * 1_000_000_000,
                offset_ns: 37_000_000_000 + i * 3,
                uncertainty_ns: 5,
            });
        }
        let snap = PhcSnapshot {
            tracker,
            healthy: true,
            tai_offset: 37,
        };
        let comp = Compensation::new(120, -45);
        let system = TimeDomains::new(ServedClock::System, comp, 1000);
        let phc = TimeDomains::new(ServedClock::Phc, comp, 1000);
        system.publish(snap.clone());
        phc.publish(snap);
        [system, phc]
    })
}

fn check_time(t: Option<KernelTime>) {
    if let Some(t) = t {
        assert!(t.nsec < 1_000_000_000, "{t:?}");
        assert!(!t.is_zero());
    }
}

fn inside(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// The source address a reply's control data asks for: `ipi_spec_dst` of an
/// `IP_PKTINFO`, `ipi6_addr` of an `IPV6_PKTINFO`.
fn reply_source(control: &[u8]) -> Option<IpAddr> {
    cmsgs(control).find_map(|c| match (c.level, c.kind) {
        (SOL_IP, IP_PKTINFO) => {
            let b: [u8; 4] = c.data.get(4..8)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        (SOL_IPV6, IPV6_PKTINFO) => {
            let b: [u8; 16] = c.data.get(..16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    })
}

fuzz_target!(|data: &[u8]| {
    let template = RecvTemplate::new();
    let Some(msg) = template.parse(data) else {
        assert!(data.len() < 16 + SOCKADDR_MAX + RECV_CONTROL_SPACE);
        return;
    };
    let same = parse_recvmsg_out(data, SOCKADDR_MAX, RECV_CONTROL_SPACE).unwrap();
    assert_eq!(
        (msg.name, msg.control, msg.payload),
        (same.name, same.control, same.payload)
    );
    assert!(inside(&data[16..16 + SOCKADDR_MAX], msg.name));
    let control_area = &data[16 + SOCKADDR_MAX..16 + SOCKADDR_MAX + RECV_CONTROL_SPACE];
    assert!(inside(control_area, msg.control));
    assert!(inside(
        &data[16 + SOCKADDR_MAX + RECV_CONTROL_SPACE..],
        msg.payload
    ));
    if msg.truncated {
        return; // counted and dropped by the worker
    }

    let Some(source) = parse_sockaddr(msg.name) else {
        return; // counted as a bad source by the worker
    };
    let mut raw = [0u8; SOCKADDR_MAX];
    let n = write_sockaddr(&source, &mut raw);
    assert_eq!(
        parse_sockaddr(&raw[..n]),
        Some(source),
        "sockaddr round trip"
    );
    match source {
        SocketAddr::V4(_) => assert_eq!(&raw[..8], &msg.name[..8]),
        SocketAddr::V6(_) => assert_eq!(&raw[..28], &msg.name[..28]),
    }

    let meta = parse_rx_control(msg.control);
    check_time(meta.software);
    check_time(meta.hardware);
    assert_ne!(meta.hw_ifindex, Some(0));

    // The served receive time, as the worker computes it.
    let mut receive = NtpTimestamp(0xe100_0000_0000_0001);
    for d in domains() {
        if let Some(hw) = meta.hardware {
            if let Some(t) = d.hardware_rx_to_served((hw.sec, hw.nsec), meta.frame_len) {
                receive = t;
            }
            let _ = d.hardware_tx_to_served((hw.sec, hw.nsec));
        }
        if let Some(sw) = meta.software {
            let t = d
                .system_to_served((sw.sec, sw.nsec))
                .unwrap_or_else(|| NtpTimestamp::from_unix(sw.sec, sw.nsec));
            receive = receive.max(t);
        }
    }

    let ctx = RequestContext {
        receive_time: receive,
        transmit_time: NtpTimestamp(receive.0.wrapping_add(1 << 20)),
        source,
        admission: Admission::Allow,
        interleave: true,
    };
    let state =
        ServerState::local_stratum1(-23, NtpShort(0x10), NtpTimestamp(0xe000_0000_0000_0000));
    let mut out = [0u8; 64];
    if let Decision::Reply(r) = respond(msg.payload, &ctx, &state, &NoInterleave, &mut out) {
        assert!(r.len <= msg.payload.len() && r.len == HEADER_LEN);
    }

    // The reply's control data, from the request's local address.
    let mut control = [0u8; REPLY_CONTROL_SPACE];
    let want = TxTsRequest {
        software: meta.software.is_some(),
        hardware: meta.hardware.is_some(),
        opt_id: Some(receive.0 as u32),
    };
    let src = meta.local_addr.map(|a| (a, meta.ifindex));
    let n = build_reply_control(&mut control, src, Some(want));
    assert!(n > 0 && n <= REPLY_CONTROL_SPACE);
    assert_eq!(
        reply_source(&control[..n]),
        meta.local_addr,
        "reply source address"
    );
    let expected = usize::from(src.is_some()) + usize::from(want.flags() != 0) + 1;
    assert_eq!(cmsgs(&control[..n]).count(), expected);
});
