//! The server's decision for one request: reply (basic or interleaved), KoD, or
//! drop with a reason. Pure: every input is a parameter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::packet::{mode, walk_trailer, Header, Trailer, TrailerError, HEADER_LEN};
use super::state::{LeapIndicator, ServerState};
use super::timestamp::{NtpShort, NtpTimestamp};

/// Why a request got no reply. Every drop is counted by this reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the 48-octet header.
    TooShort = 0,
    /// Version 0 or 5..=7.
    BadVersion,
    /// Mode 0 with a version other than 1 (reserved).
    ModeReserved,
    /// Mode 1 or 2 (symmetric active / passive).
    ModeSymmetric,
    /// Mode 4 (a server's reply sent to us).
    ModeServer,
    /// Mode 5 (broadcast).
    ModeBroadcast,
    /// Mode 6 (control, e.g. ntpq readvar).
    ModeControl,
    /// Mode 7 (private, e.g. ntpdc monlist).
    ModePrivate,
    /// An RFC 7822 extension field is malformed.
    MalformedExtension,
    /// Octets after an NTPv1-3 header that are not a MAC.
    TrailingGarbage,
    /// A request carrying a symmetric-key MAC: no keys are configured.
    Authenticated,
    /// Source address is multicast, broadcast (255.255.255.255, 127.255.255.255,
    /// or a subnet broadcast of the host's interfaces), unspecified, or port 0.
    BadSource,
    /// The server is unsynchronised and configured to stay silent then.
    Unsynchronized,
    /// The access policy says ignore this client.
    Ignored,
    /// The client is over its rate limit and gets silence (KoDs are limited too).
    RateLimited,
    /// The caller's reply buffer is too small (a bug, counted rather than a panic).
    BufferTooSmall,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 16] = [
        DropReason::TooShort,
        DropReason::BadVersion,
        DropReason::ModeReserved,
        DropReason::ModeSymmetric,
        DropReason::ModeServer,
        DropReason::ModeBroadcast,
        DropReason::ModeControl,
        DropReason::ModePrivate,
        DropReason::MalformedExtension,
        DropReason::TrailingGarbage,
        DropReason::Authenticated,
        DropReason::BadSource,
        DropReason::Unsynchronized,
        DropReason::Ignored,
        DropReason::RateLimited,
        DropReason::BufferTooSmall,
    ];

    /// Number of reasons (size of a counter array).
    pub const COUNT: usize = Self::ALL.len();

    /// Stable snake_case name, used in statistics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::BadVersion => "bad_version",
            DropReason::ModeReserved => "mode_reserved",
            DropReason::ModeSymmetric => "mode_symmetric",
            DropReason::ModeServer => "mode_server",
            DropReason::ModeBroadcast => "mode_broadcast",
            DropReason::ModeControl => "mode_control",
            DropReason::ModePrivate => "mode_private",
            DropReason::MalformedExtension => "malformed_extension",
            DropReason::TrailingGarbage => "trailing_garbage",
            DropReason::Authenticated => "authenticated",
            DropReason::BadSource => "bad_source",
            DropReason::Unsynchronized => "unsynchronized",
            DropReason::Ignored => "ignored",
            DropReason::RateLimited => "rate_limited",
            DropReason::BufferTooSmall => "buffer_too_small",
        }
    }
}

/// A Kiss-o'-Death code the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KissCode {
    /// Rate exceeded: the client must lower its poll rate.
    Rate,
    /// Access denied.
    Deny,
    /// Access restricted.
    Rstr,
}

impl KissCode {
    /// The four ASCII octets sent in the reference ID.
    pub fn code(self) -> [u8; 4] {
        match self {
            KissCode::Rate => *b"RATE",
            KissCode::Deny => *b"DENY",
            KissCode::Rstr => *b"RSTR",
        }
    }
}

/// What the access policy and rate limiter (outside the core) say of this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Admission {
    /// Serve normally.
    #[default]
    Allow,
    /// Answer with this KoD instead of time.
    Kod(KissCode),
    /// Over the rate limit: silence.
    RateLimited,
    /// Ignored by policy: silence.
    Ignore,
}

/// Smallest poll exponent a RATE KoD advertises (chrony and ntpd use similar).
pub const RATE_KOD_MIN_POLL: i8 = 6;

/// Everything about one request that is not in its bytes.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext {
    /// When the request arrived (hardware, kernel or user-space timestamp, in UTC).
    pub receive_time: NtpTimestamp,
    /// A transmit time estimate read now; the caller may overwrite it later with
    /// [`super::packet::set_transmit`] just before the send (basic replies only).
    pub transmit_time: NtpTimestamp,
    /// The client's address and port.
    pub source: SocketAddr,
    /// The access policy's verdict.
    pub admission: Admission,
    /// Whether interleaved mode is enabled (a table exists to look up).
    pub interleave: bool,
}

/// The interleaved-mode memory: which exact transmit time belongs to a receive
/// timestamp the server sent earlier. Implemented outside the core.
pub trait InterleaveLookup {
    /// Remove and return the transmit time of the response whose receive
    /// timestamp was `served_receive`, if remembered. Each entry is answered once.
    /// The low bit of the returned value is 1 if it is only the pre-send reading
    /// (no exact timestamp arrived), 0 if it is exact; it is cleared when served.
    fn take(&self, served_receive: NtpTimestamp) -> Option<NtpTimestamp>;
}

/// An [`InterleaveLookup`] that remembers nothing (interleaved mode off).
pub struct NoInterleave;

impl InterleaveLookup for NoInterleave {
    fn take(&self, _: NtpTimestamp) -> Option<NtpTimestamp> {
        None
    }
}

/// The kind of reply written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// Basic mode: transmit is a pre-send clock reading the caller should refresh
    /// just before sending.
    Basic,
    /// Interleaved mode: transmit is the time of the previous response to this
    /// client; `exact` says whether the kernel or NIC reported it (else it is the
    /// pre-send reading, because the exact one never came).
    Interleaved {
        /// The served transmit time is a kernel or NIC timestamp.
        exact: bool,
    },
    /// A Kiss-o'-Death.
    Kod(KissCode),
}

/// A reply written into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Octets written (never more than the request's length).
    pub len: usize,
    /// What kind of reply it is.
    pub kind: ReplyKind,
    /// The receive timestamp served (odd low bit): the key under which the exact
    /// transmit time of this reply is remembered for interleaved mode.
    pub served_receive: NtpTimestamp,
    /// Whether the client looks able to follow up in interleaved mode, so the
    /// caller should ask the kernel for this reply's transmit timestamp.
    pub want_tx_timestamp: bool,
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the `len` octets written into the output buffer.
    Reply(Reply),
    /// Send nothing.
    Drop(DropReason),
}

/// The broadcast address of 127.0.0.0/8, which every Linux host's loopback
/// interface has: never a client's address.
pub const LOOPBACK_BROADCAST: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 255);

fn bad_source_v4(ip: Ipv4Addr) -> bool {
    ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip == LOOPBACK_BROADCAST
}

/// Sources that are certainly not a client: port 0, unspecified, multicast,
/// the limited broadcast 255.255.255.255 and the loopback subnet's broadcast
/// (as IPv4 or IPv4-mapped IPv6). The broadcast addresses of the host's other
/// subnets are checked by the caller, which knows its interfaces.
fn bad_source(addr: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return true;
    }
    match addr.ip() {
        IpAddr::V4(ip) => bad_source_v4(ip),
        IpAddr::V6(ip) => {
            ip.is_unspecified()
                || ip.is_multicast()
                || ip.to_ipv4_mapped().is_some_and(bad_source_v4)
        }
    }
}

/// Check a request and classify it, without writing anything.
pub fn classify(request: &[u8], source: &SocketAddr) -> Result<Header, DropReason> {
    let header = Header::parse(request).ok_or(DropReason::TooShort)?;
    if !(1..=4).contains(&header.version) {
        return Err(DropReason::BadVersion);
    }
    match header.mode {
        mode::CLIENT => {}
        mode::RESERVED if header.version == 1 => {}
        mode::RESERVED => return Err(DropReason::ModeReserved),
        mode::SYMMETRIC_ACTIVE | mode::SYMMETRIC_PASSIVE => return Err(DropReason::ModeSymmetric),
        mode::SERVER => return Err(DropReason::ModeServer),
        mode::BROADCAST => return Err(DropReason::ModeBroadcast),
        mode::CONTROL => return Err(DropReason::ModeControl),
        _ => return Err(DropReason::ModePrivate),
    }
    match walk_trailer(request, header.version) {
        Ok(Trailer::None | Trailer::Extensions(_)) => {}
        Ok(Trailer::Mac { .. }) => return Err(DropReason::Authenticated),
        Err(TrailerError::MalformedExtension) => return Err(DropReason::MalformedExtension),
        Err(TrailerError::TrailingGarbage) => return Err(DropReason::TrailingGarbage),
    }
    if bad_source(source) {
        return Err(DropReason::BadSource);
    }
    Ok(header)
}

/// Decide what to do with `request` and, for a reply, serialise it into `out`.
///
/// The reply is always [`HEADER_LEN`] octets (no extension fields are echoed), so
/// it is never longer than the request, which must be at least that long.
pub fn respond(
    request: &[u8],
    ctx: &RequestContext,
    state: &ServerState,
    interleave: &impl InterleaveLookup,
    out: &mut [u8],
) -> Decision {
    let req = match classify(request, &ctx.source) {
        Ok(h) => h,
        Err(reason) => return Decision::Drop(reason),
    };
    if out.len() < HEADER_LEN {
        return Decision::Drop(DropReason::BufferTooSmall);
    }
    let reply_mode = mode::SERVER;
    let served_receive = ctx.receive_time.with_odd_low_bit();

    let kod = match ctx.admission {
        Admission::Allow => None,
        Admission::Kod(code) => Some(code),
        Admission::RateLimited => return Decision::Drop(DropReason::RateLimited),
        Admission::Ignore => return Decision::Drop(DropReason::Ignored),
    };
    if let Some(code) = kod {
        // A KoD carries no time: every timestamp echoes the request's transmit.
        let poll = if code == KissCode::Rate {
            req.poll.max(RATE_KOD_MIN_POLL)
        } else {
            req.poll
        };
        let reply = Header {
            leap: LeapIndicator::Unsynchronized,
            version: req.version,
            mode: reply_mode,
            stratum: 0,
            poll: poll.clamp(state.min_poll, state.max_poll.max(RATE_KOD_MIN_POLL)),
            precision: state.precision,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            refid: code.code(),
            reference: NtpTimestamp::ZERO,
            origin: req.transmit,
            receive: req.transmit,
            transmit: req.transmit,
        };
        reply.write(out);
        return Decision::Reply(Reply {
            len: HEADER_LEN,
            kind: ReplyKind::Kod(code),
            served_receive: req.transmit,
            want_tx_timestamp: false,
        });
    }

    if state.is_unsynchronized() && !state.serve_unsynchronized {
        return Decision::Drop(DropReason::Unsynchronized);
    }

    // Interleaved mode (RFC 9769): the origin names a receive timestamp we served
    // (odd by our convention), and the client's receive and transmit differ.
    let candidate = ctx.interleave
        && req.origin.to_bits() & 1 == 1
        && req.receive != req.transmit
        && !req.origin.is_zero();
    let previous_tx = if candidate {
        interleave.take(req.origin)
    } else {
        None
    };

    let (origin, transmit, kind) = match previous_tx {
        Some(tx) => (
            req.receive,
            tx.with_even_low_bit(),
            ReplyKind::Interleaved {
                exact: tx.to_bits() & 1 == 0,
            },
        ),
        None => (
            req.transmit,
            ctx.transmit_time.with_even_low_bit(),
            ReplyKind::Basic,
        ),
    };
    let (leap, stratum) = if state.is_unsynchronized() {
        (LeapIndicator::Unsynchronized, ServerState::STRATUM_UNSYNC)
    } else {
        (state.leap, state.stratum)
    };
    let reply = Header {
        leap,
        version: req.version,
        mode: reply_mode,
        stratum,
        poll: req.poll.clamp(state.min_poll, state.max_poll),
        precision: state.precision,
        root_delay: state.root_delay,
        root_dispersion: state.root_dispersion,
        refid: state.refid,
        reference: state.reference_time,
        origin,
        receive: served_receive,
        transmit,
    };
    reply.write(out);
    Decision::Reply(Reply {
        len: HEADER_LEN,
        kind,
        served_receive,
        want_tx_timestamp: candidate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn state() -> ServerState {
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            precision: -23,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort(0x10),
            refid: *b"LOCL",
            reference_time: NtpTimestamp(0xe000_0000_0000_0000),
            min_poll: 4,
            max_poll: 17,
            serve_unsynchronized: true,
        }
    }

    fn ctx() -> RequestContext {
        RequestContext {
            receive_time: NtpTimestamp(0xe100_0000_1000_0000),
            transmit_time: NtpTimestamp(0xe100_0000_2000_0001),
            source: "192.0.2.1:40000".parse().unwrap(),
            admission: Admission::Allow,
            interleave: true,
        }
    }

    fn request(version: u8, mode: u8) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = (version << 3) | mode;
        r[2] = 6;
        r[40..48].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
        r
    }

    #[derive(Default)]
    struct Table(RefCell<HashMap<u64, u64>>);
    impl InterleaveLookup for Table {
        fn take(&self, k: NtpTimestamp) -> Option<NtpTimestamp> {
            self.0.borrow_mut().remove(&k.0).map(NtpTimestamp)
        }
    }

    fn reply_of(req: &[u8], c: &RequestContext, s: &ServerState) -> (Decision, Header) {
        let mut out = [0u8; 64];
        let d = respond(req, c, s, &NoInterleave, &mut out);
        (d, Header::parse(&out).unwrap())
    }

    #[test]
    fn basic_reply_fields() {
        for v in 1..=4 {
            let m = if v == 1 { 0 } else { 3 };
            let (d, h) = reply_of(&request(v, m), &ctx(), &state());
            let Decision::Reply(r) = d else {
                panic!("{d:?}")
            };
            assert_eq!(r.kind, ReplyKind::Basic);
            assert_eq!(r.len, 48);
            assert_eq!(h.version, v);
            assert_eq!(h.mode, 4);
            assert_eq!(h.leap, LeapIndicator::NoWarning);
            assert_eq!(h.stratum, 1);
            assert_eq!(h.poll, 6);
            assert_eq!(h.precision, -23);
            assert_eq!(&h.refid, b"LOCL");
            assert_eq!(h.reference, state().reference_time);
            assert_eq!(h.origin, NtpTimestamp(0x0123_4567_89ab_cdef));
            assert_eq!(h.receive, NtpTimestamp(0xe100_0000_1000_0001));
            assert_eq!(h.transmit, NtpTimestamp(0xe100_0000_2000_0000));
            assert_eq!(h.root_dispersion, NtpShort(0x10));
        }
    }

    #[test]
    fn poll_is_clamped() {
        let mut r = request(4, 3);
        r[2] = 0;
        assert_eq!(reply_of(&r, &ctx(), &state()).1.poll, 4);
        r[2] = 40;
        assert_eq!(reply_of(&r, &ctx(), &state()).1.poll, 17);
        r[2] = (-5i8) as u8;
        assert_eq!(reply_of(&r, &ctx(), &state()).1.poll, 4);
    }

    #[test]
    fn non_client_modes_and_versions_dropped() {
        use DropReason::*;
        let cases = [
            (4, 1, ModeSymmetric),
            (4, 2, ModeSymmetric),
            (4, 4, ModeServer),
            (4, 5, ModeBroadcast),
            (2, 6, ModeControl),
            (2, 7, ModePrivate),
            (4, 0, ModeReserved),
            (0, 3, BadVersion),
            (5, 3, BadVersion),
            (7, 3, BadVersion),
        ];
        for (v, m, why) in cases {
            let (d, _) = reply_of(&request(v, m), &ctx(), &state());
            assert_eq!(d, Decision::Drop(why), "v{v} m{m}");
        }
        assert_eq!(
            reply_of(&[0x23; 47], &ctx(), &state()).0,
            Decision::Drop(TooShort)
        );
    }

    #[test]
    fn bad_sources_dropped() {
        for src in [
            "0.0.0.0:123",
            "224.0.0.1:123",
            "255.255.255.255:123",
            "127.255.255.255:123",
            "[::ffff:127.255.255.255]:123",
            "[::ffff:255.255.255.255]:123",
            "192.0.2.1:0",
            "[ff02::1]:123",
            "[::]:5",
        ] {
            let mut c = ctx();
            c.source = src.parse().unwrap();
            assert_eq!(
                reply_of(&request(4, 3), &c, &state()).0,
                Decision::Drop(DropReason::BadSource),
                "{src}"
            );
        }
        // An address ending in .255 may be a host (on a /23, say): only the
        // caller, knowing its subnets, can tell; the core answers it.
        for src in [
            "192.0.2.255:123",
            "10.255.255.255:123",
            "126.255.255.255:123",
        ] {
            let mut c = ctx();
            c.source = src.parse().unwrap();
            assert!(
                matches!(reply_of(&request(4, 3), &c, &state()).0, Decision::Reply(_)),
                "{src}"
            );
        }
    }

    #[test]
    fn unsynchronized_state() {
        let mut s = state();
        s.leap = LeapIndicator::Unsynchronized;
        let (_, h) = reply_of(&request(4, 3), &ctx(), &s);
        assert_eq!(h.leap, LeapIndicator::Unsynchronized);
        assert_eq!(h.stratum, 16);
        s.serve_unsynchronized = false;
        assert_eq!(
            reply_of(&request(4, 3), &ctx(), &s).0,
            Decision::Drop(DropReason::Unsynchronized)
        );
    }

    #[test]
    fn kod_rate() {
        let mut c = ctx();
        c.admission = Admission::Kod(KissCode::Rate);
        let (d, h) = reply_of(&request(4, 3), &c, &state());
        assert!(matches!(
            d,
            Decision::Reply(Reply {
                kind: ReplyKind::Kod(KissCode::Rate),
                ..
            })
        ));
        assert_eq!(h.stratum, 0);
        assert_eq!(h.leap, LeapIndicator::Unsynchronized);
        assert_eq!(&h.refid, b"RATE");
        assert!(h.poll >= RATE_KOD_MIN_POLL);
        assert_eq!(h.origin, NtpTimestamp(0x0123_4567_89ab_cdef));
        c.admission = Admission::RateLimited;
        assert_eq!(
            reply_of(&request(4, 3), &c, &state()).0,
            Decision::Drop(DropReason::RateLimited)
        );
    }

    #[test]
    fn interleaved_reply() {
        let table = Table::default();
        let prev_rx = NtpTimestamp(0xe0ff_0000_0000_0011);
        let exact_tx = NtpTimestamp(0xe0ff_0000_0001_0000);
        table.0.borrow_mut().insert(prev_rx.0, exact_tx.0);
        let mut req = request(4, 3);
        req[24..32].copy_from_slice(&prev_rx.0.to_be_bytes());
        req[32..40].copy_from_slice(&0x7777u64.to_be_bytes());
        let mut out = [0u8; 48];
        let d = respond(&req, &ctx(), &state(), &table, &mut out);
        let Decision::Reply(r) = d else { panic!() };
        assert_eq!(r.kind, ReplyKind::Interleaved { exact: true });
        assert!(r.want_tx_timestamp);
        let h = Header::parse(&out).unwrap();
        assert_eq!(h.origin, NtpTimestamp(0x7777));
        assert_eq!(h.transmit, exact_tx);
        assert_eq!(h.receive, r.served_receive);
        // a pre-send (inexact) entry is marked by its low bit and served even
        table.0.borrow_mut().insert(0x5555, exact_tx.0 | 1);
        req[24..32].copy_from_slice(&0x5555u64.to_be_bytes());
        let d = respond(&req, &ctx(), &state(), &table, &mut out);
        assert!(matches!(
            d,
            Decision::Reply(Reply {
                kind: ReplyKind::Interleaved { exact: false },
                ..
            })
        ));
        assert_eq!(Header::parse(&out).unwrap().transmit, exact_tx);
        req[24..32].copy_from_slice(&prev_rx.0.to_be_bytes());
        // answered once: the same request again is basic
        let d = respond(&req, &ctx(), &state(), &table, &mut out);
        assert!(matches!(
            d,
            Decision::Reply(Reply {
                kind: ReplyKind::Basic,
                want_tx_timestamp: true,
                ..
            })
        ));
        assert_eq!(
            Header::parse(&out).unwrap().origin,
            NtpTimestamp(0x0123_4567_89ab_cdef)
        );
    }

    #[test]
    fn basic_clients_do_not_ask_for_tx_timestamps() {
        // origin zero (RFC 9109 clients) or even (our transmit): no TX timestamp.
        for origin in [0u64, 0xe100_0000_2000_0000] {
            let mut req = request(4, 3);
            req[24..32].copy_from_slice(&origin.to_be_bytes());
            let Decision::Reply(r) = reply_of(&req, &ctx(), &state()).0 else {
                panic!()
            };
            assert!(!r.want_tx_timestamp);
        }
    }

    proptest! {
        #[test]
        fn never_panics_never_amplifies(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                        out_len in 0usize..100) {
            let mut out = vec![0u8; out_len];
            let d = respond(&bytes, &ctx(), &state(), &NoInterleave, &mut out);
            if let Decision::Reply(r) = d {
                prop_assert!(r.len <= bytes.len());
                prop_assert!(r.len <= out.len());
            }
        }

        #[test]
        fn valid_requests_echo_origin(v in 1u8..=4, origin in any::<u64>(), poll in any::<i8>()) {
            let mut req = request(v, if v == 1 { 0 } else { 3 });
            req[2] = poll as u8;
            req[40..48].copy_from_slice(&origin.to_be_bytes());
            let (d, h) = reply_of(&req, &ctx(), &state());
            prop_assert!(matches!(d, Decision::Reply(_)));
            prop_assert_eq!(h.origin.0, origin);
            prop_assert_eq!(h.version, v);
            prop_assert!(h.poll >= 4 && h.poll <= 17);
            prop_assert!(h.receive.0 & 1 == 1 && h.transmit.0 & 1 == 0);
        }
    }
}
