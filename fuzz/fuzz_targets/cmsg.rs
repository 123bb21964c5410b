//! Control-message parsers on arbitrary control data: the receive side
//! (`parse_rx_control`), the error queue's transmit timestamps
//! (`parse_errqueue_control`), the `cmsghdr` walk itself (`cmsgs`), and the
//! io_uring transmit-timestamp completion (`Completion::tx_timestamp`, from
//! the first 28 octets), each followed by the conversion the worker makes
//! (`TimeDomains::hardware_tx_to_served` / `system_to_served`).
//!
//! Invariants checked: no panic; the walk ends, yields at most one message
//! per header's worth of input and only data inside the input; every reported
//! kernel time has nanoseconds below 1e9 and is not zero; building a reply's control
//! data from a parsed local address gives that address back.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hwntpd::clock::domain::{PhcSnapshot, ServedClock, TimeDomains};
use hwntpd::clock::tracking::{PhcMeasurement, PhcTracker};
use hwntpd::clock::wire::Compensation;
use hwntpd::net::cmsg::{
    build_reply_control, cmsgs, parse_errqueue_control, parse_rx_control, KernelTime, TxTimestamp,
    TxTsRequest, CMSG_HDR_LEN, IPV6_PKTINFO, IP_PKTINFO, REPLY_CONTROL_SPACE, SOL_IP, SOL_IPV6,
};
use hwntpd::net::uring::Completion;
use libfuzzer_sys::fuzz_target;

fn domains() -> &'static [Arc<TimeDomains>; 2] {
    static D: OnceLock<[Arc<TimeDomains>; 2]> = OnceLock::new();
    D.get_or_init(|| {
        let mut tracker = PhcTracker::new();
        for i in 0..8 {
            tracker.add(PhcMeasurement {
                sys_ns: 1_800_000_000_000_000_000 + i * 1_000_000_000,
                offset_ns: 37_000_000_000 - i * 7,
                uncertainty_ns: 20,
            });
        }
        let snap = PhcSnapshot {
            tracker,
            healthy: true,
            tai_offset: 37,
        };
        let comp = Compensation::new(-300, 250);
        let system = TimeDomains::new(ServedClock::System, comp, 10_000);
        let phc = TimeDomains::new(ServedClock::Phc, comp, 10_000);
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

/// What the worker does with a transmit timestamp before matching it.
fn convert(ts: &TxTimestamp) {
    for d in domains() {
        let t = (ts.time.sec, ts.time.nsec);
        if ts.hardware {
            let _ = d.hardware_tx_to_served(t);
        } else {
            let _ = d.system_to_served(t);
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    for (i, x) in a.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(a)
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
    // The walk.
    let base = data.as_ptr() as usize;
    let mut count = 0;
    for c in cmsgs(data) {
        count += 1;
        let p = c.data.as_ptr() as usize;
        assert!(p >= base + CMSG_HDR_LEN && p + c.data.len() <= base + data.len());
    }
    assert!(
        count <= data.len() / CMSG_HDR_LEN,
        "{count} messages in {}",
        data.len()
    );

    // Receive side.
    let meta = parse_rx_control(data);
    check_time(meta.software);
    check_time(meta.hardware);
    assert_ne!(meta.hw_ifindex, Some(0));
    if let Some(addr) = meta.local_addr {
        let mut buf = [0u8; REPLY_CONTROL_SPACE];
        let n = build_reply_control(
            &mut buf,
            Some((addr, meta.ifindex)),
            Some(TxTsRequest {
                software: true,
                hardware: true,
                opt_id: meta.frame_len,
            }),
        );
        assert!(n > 0);
        assert_eq!(reply_source(&buf[..n]), Some(addr));
    }

    // Error queue.
    if let Some(ts) = parse_errqueue_control(data) {
        check_time(Some(ts.time));
        convert(&ts);
    }

    // The io_uring transmit-timestamp completion: result, flags, io_timespec.
    let c = Completion {
        user_data: 0,
        result: u64_at(data, 0) as i32,
        flags: (u64_at(data, 0) >> 32) as u32,
        extra: [u64_at(data, 8), u64_at(data, 16)],
    };
    match c.tx_timestamp() {
        Some(ts) => {
            assert!(c.result >= 0);
            assert_eq!(ts.key, c.result as u32);
            convert(&ts);
        }
        None => assert!(c.result < 0),
    }
});
