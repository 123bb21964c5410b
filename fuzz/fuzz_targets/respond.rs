//! The request decision (`classify` / `respond`) on arbitrary bytes, from
//! arbitrary sources, in arbitrary (valid) server states, with an interleave
//! lookup that may return a value.
//!
//! Input layout: the first [`CTX_LEN`] octets choose the context (missing
//! octets read as zero), the rest is the request. See `ctx_from` for the
//! fields; `fuzz/make-seeds.py` writes seeds in this layout.
//!
//! Invariants checked:
//! * no panic;
//! * `respond` drops exactly when `classify` refuses (same reason), or for the
//!   admission / unsynchronised / buffer reasons that come after it;
//! * a reply is never longer than the request, nor than the output buffer,
//!   and is a mode 4 header of the request's version with an odd receive
//!   timestamp;
//! * basic reply: origin = the request's transmit (RFC 5905), transmit even;
//! * interleaved reply (RFC 9769): origin = the request's receive, transmit =
//!   the value the lookup returned (made even), and the lookup was asked for
//!   the request's origin, which is odd, non-zero, with receive != transmit,
//!   and only when interleaving is on;
//! * KoD: stratum 0, LI 3, the code as refid, origin = receive = transmit =
//!   the request's transmit, poll at least `RATE_KOD_MIN_POLL` for RATE.
#![no_main]

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hwntpd::protocol::packet::{Header, HEADER_LEN};
use hwntpd::protocol::server::{
    classify, respond, Admission, Decision, DropReason, InterleaveLookup, KissCode, ReplyKind,
    RequestContext, RATE_KOD_MIN_POLL,
};
use hwntpd::protocol::{LeapIndicator, NtpShort, NtpTimestamp, ServerState};
use libfuzzer_sys::fuzz_target;

/// Octets of context before the request.
const CTX_LEN: usize = 64;

/// An interleave table of one entry that records what it was asked.
struct OneEntry {
    value: Option<NtpTimestamp>,
    asked: Cell<Option<NtpTimestamp>>,
}

impl InterleaveLookup for OneEntry {
    fn take(&self, served_receive: NtpTimestamp) -> Option<NtpTimestamp> {
        assert!(
            self.asked.get().is_none(),
            "lookup asked twice for one request"
        );
        self.asked.set(Some(served_receive));
        self.value
    }
}

fn u64_at(c: &[u8; CTX_LEN], at: usize) -> u64 {
    u64::from_le_bytes(c[at..at + 8].try_into().unwrap())
}

/// Context, state, lookup and output length from the first 64 octets:
///
/// | octets | meaning |
/// |--------|---------|
/// | 0      | source kind: 0 IPv4, 1 IPv6, 2 IPv4-mapped IPv6 (mod 3) |
/// | 1      | admission: 0 allow, 1 RATE, 2 DENY, 3 RSTR, 4 rate limited, 5 ignore (mod 6) |
/// | 2      | bit 0 interleave on, bit 1 lookup returns a value, bit 2 serve unsynchronised |
/// | 3      | leap indicator (low 2 bits) |
/// | 4      | stratum |
/// | 5, 6   | min poll, max poll (i8; swapped if min > max, as the config validates) |
/// | 7      | precision (i8) |
/// | 8, 9   | output buffer length (u16 LE, mod 1025) |
/// | 10, 11 | source port (u16 BE) |
/// | 12..28 | source address (IPv4 uses the first 4) |
/// | 28..36 | receive time; 36..44 transmit time; 44..52 lookup value (u64 LE) |
/// | 52..56 | root delay; 56..60 root dispersion (u32 LE) |
/// | 60..64 | refid |
///
/// The reference time reuses octets 20..28.
fn ctx_from(c: &[u8; CTX_LEN]) -> (RequestContext, ServerState, OneEntry, usize) {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&c[12..28]);
    let port = u16::from_be_bytes([c[10], c[11]]);
    let v4 = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    let addr = match c[0] % 3 {
        0 => IpAddr::V4(v4),
        1 => IpAddr::V6(Ipv6Addr::from(ip)),
        _ => IpAddr::V6(v4.to_ipv6_mapped()),
    };
    let admission = match c[1] % 6 {
        0 => Admission::Allow,
        1 => Admission::Kod(KissCode::Rate),
        2 => Admission::Kod(KissCode::Deny),
        3 => Admission::Kod(KissCode::Rstr),
        4 => Admission::RateLimited,
        _ => Admission::Ignore,
    };
    let (mut min_poll, mut max_poll) = (c[5] as i8, c[6] as i8);
    if min_poll > max_poll {
        std::mem::swap(&mut min_poll, &mut max_poll);
    }
    let ctx = RequestContext {
        receive_time: NtpTimestamp(u64_at(c, 28)),
        transmit_time: NtpTimestamp(u64_at(c, 36)),
        source: SocketAddr::new(addr, port),
        admission,
        interleave: c[2] & 1 != 0,
    };
    let state = ServerState {
        leap: LeapIndicator::from_bits(c[3]),
        stratum: c[4],
        precision: c[7] as i8,
        root_delay: NtpShort(u32::from_le_bytes(c[52..56].try_into().unwrap())),
        root_dispersion: NtpShort(u32::from_le_bytes(c[56..60].try_into().unwrap())),
        refid: c[60..64].try_into().unwrap(),
        reference_time: NtpTimestamp(u64_at(c, 20)),
        min_poll,
        max_poll,
        serve_unsynchronized: c[2] & 4 != 0,
    };
    let lookup = OneEntry {
        value: (c[2] & 2 != 0).then(|| NtpTimestamp(u64_at(c, 44))),
        asked: Cell::new(None),
    };
    let out_len = usize::from(u16::from_le_bytes([c[8], c[9]])) % 1025;
    (ctx, state, lookup, out_len)
}

fuzz_target!(|data: &[u8]| {
    let mut c = [0u8; CTX_LEN];
    let n = data.len().min(CTX_LEN);
    c[..n].copy_from_slice(&data[..n]);
    let request = &data[n..];
    let (ctx, state, lookup, out_len) = ctx_from(&c);

    let classified = classify(request, &ctx.source);
    let mut out = vec![0u8; out_len];
    let decision = respond(request, &ctx, &state, &lookup, &mut out);

    let req = match (classified, decision) {
        (Err(why), d) => {
            assert_eq!(d, Decision::Drop(why), "respond disagrees with classify");
            assert!(lookup.asked.get().is_none());
            return;
        }
        (Ok(req), d) => {
            assert_eq!(Header::parse(request), Some(req));
            if let Decision::Drop(why) = d {
                let expected = match ctx.admission {
                    _ if out_len < HEADER_LEN => DropReason::BufferTooSmall,
                    Admission::RateLimited => DropReason::RateLimited,
                    Admission::Ignore => DropReason::Ignored,
                    _ => DropReason::Unsynchronized,
                };
                assert_eq!(why, expected, "unexpected drop of a valid request");
                if why == DropReason::Unsynchronized {
                    assert!(state.is_unsynchronized() && !state.serve_unsynchronized);
                }
                return;
            }
            req
        }
    };
    let Decision::Reply(reply) = decision else {
        unreachable!()
    };
    // Never an amplifier, never past the buffer.
    assert!(reply.len <= request.len(), "reply longer than request");
    assert!(reply.len <= out.len());
    assert_eq!(reply.len, HEADER_LEN);
    let h = Header::parse(&out[..reply.len]).expect("a whole header");
    assert_eq!(h.mode, 4);
    assert_eq!(h.version, req.version);
    assert!((1..=4).contains(&h.version));

    match reply.kind {
        ReplyKind::Kod(code) => {
            assert_eq!(ctx.admission, Admission::Kod(code));
            assert_eq!(h.stratum, 0);
            assert_eq!(h.leap, LeapIndicator::Unsynchronized);
            assert_eq!(h.refid, code.code());
            assert_eq!(h.origin, req.transmit, "KoD origin");
            assert_eq!(h.receive, req.transmit);
            assert_eq!(h.transmit, req.transmit);
            if code == KissCode::Rate {
                assert!(h.poll >= RATE_KOD_MIN_POLL, "RATE KoD poll {}", h.poll);
            }
            assert!(!reply.want_tx_timestamp);
            assert!(lookup.asked.get().is_none());
        }
        ReplyKind::Basic => {
            assert_eq!(ctx.admission, Admission::Allow);
            assert_eq!(h.origin, req.transmit, "basic origin must echo transmit");
            assert_eq!(h.transmit, ctx.transmit_time.with_even_low_bit());
            assert_eq!(h.transmit.0 & 1, 0);
            // Interleaving was tried only for a candidate, and that found nothing.
            if lookup.asked.get().is_some() {
                assert!(lookup.value.is_none());
            }
        }
        ReplyKind::Interleaved { exact } => {
            assert_eq!(ctx.admission, Admission::Allow);
            assert!(ctx.interleave, "interleaved reply with interleaving off");
            let asked = lookup.asked.get().expect("interleaved without a lookup");
            let value = lookup
                .value
                .expect("interleaved without a remembered value");
            assert_eq!(
                asked, req.origin,
                "looked up something other than the origin"
            );
            assert_eq!(asked.0 & 1, 1);
            assert!(!req.origin.is_zero());
            assert_ne!(req.receive, req.transmit);
            assert_eq!(
                h.origin, req.receive,
                "interleaved origin must echo receive"
            );
            assert_eq!(h.transmit, value.with_even_low_bit());
            assert_eq!(exact, value.0 & 1 == 0);
            assert!(reply.want_tx_timestamp);
        }
    }
    if !matches!(reply.kind, ReplyKind::Kod(_)) {
        assert_eq!(h.receive, ctx.receive_time.with_odd_low_bit());
        assert_eq!(h.receive, reply.served_receive);
        assert_eq!(h.receive.0 & 1, 1);
        assert!(h.poll >= state.min_poll && h.poll <= state.max_poll);
        assert_eq!(h.precision, state.precision);
        if state.is_unsynchronized() {
            assert_eq!((h.leap, h.stratum), (LeapIndicator::Unsynchronized, 16));
        } else {
            assert_eq!((h.leap, h.stratum), (state.leap, state.stratum));
            assert_eq!(h.refid, state.refid);
        }
        // want_tx_timestamp exactly for interleaving candidates.
        assert_eq!(
            reply.want_tx_timestamp,
            ctx.interleave
                && req.origin.0 & 1 == 1
                && req.receive != req.transmit
                && !req.origin.is_zero()
        );
    }
});
