//! NTS-KE records (RFC 8915 section 4): the codec, the server's decision for a
//! request, the response, and a client side (for tests and the benchmark tool).
//!
//! A record is: critical bit (1) and record type (15 bits), body length (16
//! bits, big-endian), body. A message ends with a critical End of Message record.

use super::aead::Aead;

/// Record types (RFC 8915 section 7.4).
pub mod rtype {
    /// End of Message.
    pub const END_OF_MESSAGE: u16 = 0;
    /// NTS Next Protocol Negotiation.
    pub const NEXT_PROTOCOL: u16 = 1;
    /// Error.
    pub const ERROR: u16 = 2;
    /// Warning.
    pub const WARNING: u16 = 3;
    /// AEAD Algorithm Negotiation.
    pub const AEAD: u16 = 4;
    /// New Cookie for NTPv4.
    pub const NEW_COOKIE: u16 = 5;
    /// NTPv4 Server Negotiation.
    pub const NTPV4_SERVER: u16 = 6;
    /// NTPv4 Port Negotiation.
    pub const NTPV4_PORT: u16 = 7;
}

/// Error codes (RFC 8915 section 7.5).
pub mod error_code {
    /// Unrecognized Critical Record.
    pub const UNRECOGNIZED_CRITICAL_RECORD: u16 = 0;
    /// Bad Request.
    pub const BAD_REQUEST: u16 = 1;
    /// Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: u16 = 2;
}

/// The NTS next protocol id of NTPv4.
pub const PROTOCOL_NTPV4: u16 = 0;

/// The longest request the server reads (a real one is a few dozen octets).
pub const MAX_REQUEST_LEN: usize = 4096;

/// The longest server name sent in an NTPv4 Server Negotiation record.
pub const MAX_SERVER_NAME_LEN: usize = 255;

const CRITICAL: u16 = 0x8000;

/// One record, borrowed from the buffer it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The critical bit.
    pub critical: bool,
    /// The record type (15 bits).
    pub rtype: u16,
    /// The body.
    pub body: &'a [u8],
}

/// The first record of `buf` and the octets it takes, or `None` if `buf` does
/// not yet hold a whole record.
pub fn parse_record(buf: &[u8]) -> Option<(Record<'_>, usize)> {
    let head = buf.get(..4)?;
    let word = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let body = buf.get(4..4 + len)?;
    Some((
        Record {
            critical: word & CRITICAL != 0,
            rtype: word & !CRITICAL,
            body,
        },
        4 + len,
    ))
}

/// Append one record to `out`. Bodies longer than 65535 octets are cut (never
/// made by this server).
pub fn append_record(out: &mut Vec<u8>, critical: bool, rtype: u16, body: &[u8]) {
    let body = &body[..body.len().min(usize::from(u16::MAX))];
    let word = (rtype & !CRITICAL) | if critical { CRITICAL } else { 0 };
    out.extend_from_slice(&word.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// What the server does with a complete request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeDecision {
    /// NTPv4 with this AEAD: send keys' cookies.
    Accept(Aead),
    /// The client offered no protocol the server speaks: an empty Next
    /// Protocol record (RFC 8915 section 4.1.2) and an Error record (Bad
    /// Request), no cookies.
    NoProtocol,
    /// NTPv4, but no AEAD in common: Next Protocol NTPv4, an empty AEAD
    /// record (RFC 8915 section 4.1.5: "It is empty if the server supports
    /// none of the algorithms offered") and an Error record (Bad Request), so
    /// a client that only looks for errors stops too; no cookies.
    NoAead,
    /// An Error record with this code.
    Error(u16),
}

/// Read a request. `None` while it is incomplete (no End of Message yet and
/// under [`MAX_REQUEST_LEN`]); otherwise the decision. Follows RFC 8915 section
/// 4.1: exactly one critical Next Protocol record, exactly one non-empty AEAD
/// record when NTPv4 is offered, no Error, Warning or New Cookie records from a
/// client, no unknown critical record; the first AEAD in the client's order that
/// the server supports is chosen.
pub fn read_request(buf: &[u8]) -> Option<KeDecision> {
    let mut at = 0;
    let mut next_protocol_records = 0;
    let mut ntpv4 = false;
    let mut offered_protocols = 0;
    let mut aead_records = 0;
    let mut offered_aeads = 0;
    let mut aead = None;
    loop {
        let Some((rec, used)) = parse_record(&buf[at..]) else {
            return (buf.len() >= MAX_REQUEST_LEN)
                .then_some(KeDecision::Error(error_code::BAD_REQUEST));
        };
        at += used;
        if at > MAX_REQUEST_LEN {
            return Some(KeDecision::Error(error_code::BAD_REQUEST));
        }
        let bad = Some(KeDecision::Error(error_code::BAD_REQUEST));
        match rec.rtype {
            rtype::END_OF_MESSAGE => {
                if !rec.critical || !rec.body.is_empty() {
                    return bad;
                }
                break;
            }
            rtype::NEXT_PROTOCOL => {
                if !rec.critical || rec.body.is_empty() || rec.body.len() % 2 != 0 {
                    return bad;
                }
                next_protocol_records += 1;
                for p in rec.body.chunks_exact(2) {
                    offered_protocols += 1;
                    ntpv4 |= u16::from_be_bytes([p[0], p[1]]) == PROTOCOL_NTPV4;
                }
            }
            rtype::AEAD => {
                if rec.body.is_empty() || rec.body.len() % 2 != 0 {
                    return bad;
                }
                aead_records += 1;
                for a in rec.body.chunks_exact(2) {
                    offered_aeads += 1;
                    if aead.is_none() {
                        aead = Aead::from_id(u16::from_be_bytes([a[0], a[1]]));
                    }
                }
            }
            rtype::ERROR | rtype::WARNING | rtype::NEW_COOKIE => return bad,
            // A client may suggest a server and port; this server decides.
            rtype::NTPV4_SERVER | rtype::NTPV4_PORT => {}
            _ if rec.critical => {
                return Some(KeDecision::Error(error_code::UNRECOGNIZED_CRITICAL_RECORD))
            }
            _ => {}
        }
    }
    if next_protocol_records != 1 || offered_protocols == 0 {
        return Some(KeDecision::Error(error_code::BAD_REQUEST));
    }
    if !ntpv4 {
        return Some(KeDecision::NoProtocol);
    }
    if aead_records != 1 || offered_aeads == 0 {
        return Some(KeDecision::Error(error_code::BAD_REQUEST));
    }
    Some(aead.map_or(KeDecision::NoAead, KeDecision::Accept))
}

/// Where the client should send its NTP requests, when not to this host's
/// address on port 123.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NtpServerHint {
    /// An NTPv4 Server Negotiation record (host name or address).
    pub server: Option<String>,
    /// An NTPv4 Port Negotiation record.
    pub port: Option<u16>,
}

/// The response for `decision`; `cookies` are sent (in New Cookie records) only
/// when it is [`KeDecision::Accept`].
pub fn write_response(decision: KeDecision, hint: &NtpServerHint, cookies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + cookies.iter().map(|c| c.len() + 4).sum::<usize>());
    let ntpv4 = PROTOCOL_NTPV4.to_be_bytes();
    match decision {
        KeDecision::Error(code) => append_record(&mut out, true, rtype::ERROR, &code.to_be_bytes()),
        KeDecision::NoProtocol => {
            append_record(&mut out, true, rtype::NEXT_PROTOCOL, &[]);
            let bad = error_code::BAD_REQUEST.to_be_bytes();
            append_record(&mut out, true, rtype::ERROR, &bad);
        }
        KeDecision::NoAead => {
            append_record(&mut out, true, rtype::NEXT_PROTOCOL, &ntpv4);
            append_record(&mut out, true, rtype::AEAD, &[]);
            let bad = error_code::BAD_REQUEST.to_be_bytes();
            append_record(&mut out, true, rtype::ERROR, &bad);
        }
        KeDecision::Accept(aead) => {
            append_record(&mut out, true, rtype::NEXT_PROTOCOL, &ntpv4);
            append_record(&mut out, true, rtype::AEAD, &aead.id().to_be_bytes());
            if let Some(server) = &hint.server {
                append_record(&mut out, true, rtype::NTPV4_SERVER, server.as_bytes());
            }
            if let Some(port) = hint.port {
                append_record(&mut out, true, rtype::NTPV4_PORT, &port.to_be_bytes());
            }
            for c in cookies {
                append_record(&mut out, false, rtype::NEW_COOKIE, c);
            }
        }
    }
    append_record(&mut out, true, rtype::END_OF_MESSAGE, &[]);
    out
}

/// A client's request offering NTPv4 and these AEAD ids.
pub fn client_request(aeads: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    append_record(
        &mut out,
        true,
        rtype::NEXT_PROTOCOL,
        &PROTOCOL_NTPV4.to_be_bytes(),
    );
    let ids: Vec<u8> = aeads.iter().flat_map(|a| a.to_be_bytes()).collect();
    append_record(&mut out, true, rtype::AEAD, &ids);
    append_record(&mut out, true, rtype::END_OF_MESSAGE, &[]);
    out
}

/// A server's response as a client reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeResponse {
    /// The Next Protocol record's ids (`None`: no such record).
    pub next_protocol: Option<Vec<u16>>,
    /// The AEAD record's ids (`None`: no such record).
    pub aead: Option<Vec<u16>>,
    /// Error record codes.
    pub errors: Vec<u16>,
    /// Warning record codes.
    pub warnings: Vec<u16>,
    /// New cookies.
    pub cookies: Vec<Vec<u8>>,
    /// NTPv4 server and port.
    pub hint: NtpServerHint,
}

fn u16s(body: &[u8]) -> Vec<u16> {
    body.chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}

/// Parse a complete response: `Ok(None)` while it is incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<KeResponse>, String> {
    let mut r = KeResponse::default();
    let mut at = 0;
    while let Some((rec, used)) = parse_record(&buf[at..]) {
        at += used;
        match rec.rtype {
            rtype::END_OF_MESSAGE => return Ok(Some(r)),
            rtype::NEXT_PROTOCOL => r.next_protocol = Some(u16s(rec.body)),
            rtype::AEAD => r.aead = Some(u16s(rec.body)),
            rtype::ERROR => r.errors.extend(u16s(rec.body)),
            rtype::WARNING => r.warnings.extend(u16s(rec.body)),
            rtype::NEW_COOKIE => r.cookies.push(rec.body.to_vec()),
            rtype::NTPV4_SERVER => {
                r.hint.server = Some(String::from_utf8_lossy(rec.body).into_owned())
            }
            rtype::NTPV4_PORT if rec.body.len() == 2 => {
                r.hint.port = Some(u16::from_be_bytes([rec.body[0], rec.body[1]]))
            }
            t if rec.critical => return Err(format!("unknown critical record {t}")),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(critical: bool, t: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        append_record(&mut v, critical, t, body);
        v
    }

    fn eom() -> Vec<u8> {
        rec(true, rtype::END_OF_MESSAGE, &[])
    }

    #[test]
    fn chrony_like_request_is_accepted() {
        let req = client_request(&[30, 15]);
        assert_eq!(
            read_request(&req),
            Some(KeDecision::Accept(Aead::AesGcmSiv128))
        );
        let req = client_request(&[99, 15, 30]);
        assert_eq!(
            read_request(&req),
            Some(KeDecision::Accept(Aead::AesSivCmac256))
        );
        // Every prefix is incomplete.
        for n in 0..req.len() {
            assert_eq!(read_request(&req[..n]), None, "prefix {n}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(
            read_request(&client_request(&[99])),
            Some(KeDecision::NoAead)
        );
        let other_protocol = [
            rec(true, rtype::NEXT_PROTOCOL, &[0x80, 0x01]),
            rec(true, rtype::AEAD, &[0, 15]),
            eom(),
        ]
        .concat();
        assert_eq!(read_request(&other_protocol), Some(KeDecision::NoProtocol));
        let bad = Some(KeDecision::Error(error_code::BAD_REQUEST));
        // No next protocol; two; not critical; empty AEAD; odd lengths.
        assert_eq!(
            read_request(&[rec(true, rtype::AEAD, &[0, 15]), eom()].concat()),
            bad
        );
        let np = rec(true, rtype::NEXT_PROTOCOL, &[0, 0]);
        let aead = rec(true, rtype::AEAD, &[0, 15]);
        assert_eq!(
            read_request(&[np.clone(), np.clone(), aead.clone(), eom()].concat()),
            bad
        );
        assert_eq!(
            read_request(
                &[
                    rec(false, rtype::NEXT_PROTOCOL, &[0, 0]),
                    aead.clone(),
                    eom()
                ]
                .concat()
            ),
            bad
        );
        assert_eq!(read_request(&[np.clone(), eom()].concat()), bad);
        assert_eq!(
            read_request(&[np.clone(), rec(true, rtype::AEAD, &[]), eom()].concat()),
            bad
        );
        assert_eq!(
            read_request(&[np.clone(), rec(true, rtype::AEAD, &[0, 15, 0]), eom()].concat()),
            bad
        );
        // Records only a server sends.
        for t in [rtype::ERROR, rtype::WARNING, rtype::NEW_COOKIE] {
            let r = [np.clone(), aead.clone(), rec(false, t, &[0, 1]), eom()].concat();
            assert_eq!(read_request(&r), bad, "type {t}");
        }
        // Unknown records: critical is an error, non-critical is ignored.
        let r = [np.clone(), aead.clone(), rec(true, 0x1234, b"x"), eom()].concat();
        assert_eq!(
            read_request(&r),
            Some(KeDecision::Error(error_code::UNRECOGNIZED_CRITICAL_RECORD))
        );
        let r = [np.clone(), aead.clone(), rec(false, 0x1234, b"x"), eom()].concat();
        assert_eq!(
            read_request(&r),
            Some(KeDecision::Accept(Aead::AesSivCmac256))
        );
        // A non-critical or non-empty end of message.
        let r = [np.clone(), aead.clone(), rec(false, 0, &[])].concat();
        assert_eq!(read_request(&r), bad);
        // Endless requests stop at the limit.
        let filler = rec(false, 0x1234, &[0u8; 1000]);
        let long: Vec<u8> = std::iter::repeat_n(filler, 5).flatten().collect();
        assert_eq!(read_request(&long), bad);
    }

    #[test]
    fn responses_round_trip() {
        let hint = NtpServerHint {
            server: Some("ntp.example".into()),
            port: Some(1123),
        };
        let cookies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 72]).collect();
        let refs: Vec<&[u8]> = cookies.iter().map(|c| &c[..]).collect();
        let out = write_response(KeDecision::Accept(Aead::AesGcmSiv128), &hint, &refs);
        let r = parse_response(&out).unwrap().unwrap();
        assert_eq!(r.next_protocol, Some(vec![0]));
        assert_eq!(r.aead, Some(vec![30]));
        assert_eq!(r.cookies, cookies);
        assert_eq!(r.hint, hint);
        assert!(r.errors.is_empty());
        assert_eq!(parse_response(&out[..out.len() - 1]).unwrap(), None);

        let out = write_response(KeDecision::NoAead, &hint, &refs);
        let r = parse_response(&out).unwrap().unwrap();
        assert_eq!(r.aead, Some(vec![]));
        assert_eq!(r.errors, vec![error_code::BAD_REQUEST]);
        assert!(r.cookies.is_empty());
        let out = write_response(KeDecision::NoProtocol, &hint, &refs);
        let r = parse_response(&out).unwrap().unwrap();
        assert_eq!(r.next_protocol, Some(vec![]));
        assert_eq!(r.errors, vec![error_code::BAD_REQUEST]);
        assert!(r.cookies.is_empty());
        let out = write_response(KeDecision::Error(1), &hint, &refs);
        let r = parse_response(&out).unwrap().unwrap();
        assert_eq!(r.errors, vec![1]);
        assert_eq!(r.next_protocol, None);
    }

    proptest! {
        #[test]
        fn request_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_request(&bytes);
            let _ = parse_response(&bytes);
        }
    }
}
