//! A short NTP client that prints every field of each reply, the offset and the
//! delay; with `--interleaved` it speaks RFC 9769 as chrony's `xleave` client
//! does and computes the interleaved offset and delay. With `--nts-ke` every
//! request is NTS-authenticated (RFC 8915) and every reply verified.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hwntpd::nts::ntp::client::{check_reply, request as nts_request, ReplyCheck};
use hwntpd::protocol::packet::{mode, Header, HEADER_LEN};
use hwntpd::protocol::{LeapIndicator, NtpShort, NtpTimestamp};
use rand::{RngCore, SeedableRng};

/// Options of the `query` subcommand.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Server address and port.
    #[arg(long)]
    pub server: SocketAddr,
    /// Number of requests.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Speak interleaved mode (RFC 9769) from the second request on.
    #[arg(long)]
    pub interleaved: bool,
    /// Milliseconds between requests.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Milliseconds to wait for each reply.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub nts: crate::ntske::NtsArgs,
}

/// The local clock (CLOCK_REALTIME) as an NTP timestamp.
fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs() as i64, d.subsec_nanos())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A timestamp as UTC with nanoseconds (era chosen near `pivot` Unix seconds),
/// or "0 (unset)".
pub fn format_utc(ts: NtpTimestamp, pivot: i64) -> String {
    if ts.is_zero() {
        return "0 (unset)".to_string();
    }
    let (secs, nanos) = ts.to_unix_near(pivot);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn format_short(v: NtpShort) -> String {
    format!("{:.6} ms", v.to_nanos() as f64 / 1e6)
}

/// The reference ID as text: ASCII for stratum 0 and 1, an IPv4 address above.
pub fn format_refid(stratum: u8, refid: [u8; 4]) -> String {
    if stratum <= 1 {
        let s: String = refid
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect();
        format!("\"{s}\"")
    } else {
        format!("{}.{}.{}.{}", refid[0], refid[1], refid[2], refid[3])
    }
}

/// Offset and delay in nanoseconds from the four timestamps of one exchange
/// (client send, server receive, server send, client receive).
pub fn offset_delay(
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    t4: NtpTimestamp,
) -> (i64, i64) {
    let a = t2.diff_nanos(t1);
    let b = t3.diff_nanos(t4);
    let offset = (a + b) / 2;
    let delay = t4.diff_nanos(t1) - t3.diff_nanos(t2);
    (offset, delay)
}

/// What the client remembers of the previous valid exchange (for interleaving).
#[derive(Clone, Copy)]
struct Previous {
    /// Our send time of the previous request.
    t1: NtpTimestamp,
    /// The server's receive timestamp in the previous reply.
    t2: NtpTimestamp,
    /// Our receive time of the previous reply.
    t4: NtpTimestamp,
}

fn print_header(h: &Header, pivot: i64) {
    let leap = match h.leap {
        LeapIndicator::NoWarning => "0 (no warning)",
        LeapIndicator::Insert => "1 (insert leap second)",
        LeapIndicator::Delete => "2 (delete leap second)",
        LeapIndicator::Unsynchronized => "3 (unsynchronised)",
    };
    println!("  leap       {leap}");
    println!("  version    {}", h.version);
    println!("  mode       {}", h.mode);
    println!(
        "  stratum    {}{}",
        h.stratum,
        if h.stratum == 0 { " (KoD)" } else { "" }
    );
    println!(
        "  poll       {} ({} s)",
        h.poll,
        2f64.powi(i32::from(h.poll))
    );
    println!(
        "  precision  {} ({:.3e} s)",
        h.precision,
        2f64.powi(i32::from(h.precision))
    );
    println!("  root delay {}", format_short(h.root_delay));
    println!("  root disp  {}", format_short(h.root_dispersion));
    println!(
        "  refid      {} ({:#010x})",
        format_refid(h.stratum, h.refid),
        u32::from_be_bytes(h.refid)
    );
    for (name, ts) in [
        ("reference", h.reference),
        ("origin", h.origin),
        ("receive", h.receive),
        ("transmit", h.transmit),
    ] {
        println!(
            "  {name:<10} {} ({:#018x})",
            format_utc(ts, pivot),
            ts.to_bits()
        );
    }
}

fn us(ns: i64) -> String {
    format!("{:.3} us", ns as f64 / 1000.0)
}

/// Run the `query` subcommand. Fails when no valid reply arrived.
pub fn run(args: &QueryArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let bind: SocketAddr = match args.server {
        SocketAddr::V4(_) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).into(),
        SocketAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).into(),
    };
    let sock = UdpSocket::bind(bind).context("binding client socket")?;
    sock.connect(args.server)
        .with_context(|| format!("connecting to {}", args.server))?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut prev: Option<Previous> = None;
    let mut valid = 0u32;
    let mut buf = [0u8; 1024];
    let mut nts = args.nts.session()?;
    if let (Some(s), Some(ke)) = (&nts, args.nts.nts_ke) {
        println!(
            "NTS-KE {ke}: AEAD {}, {} cookies",
            s.keys.aead.id(),
            s.cookies.len()
        );
    }
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut uid = [0u8; 32];
    for i in 0..args.count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
        let xleave_prev = if args.interleaved { prev } else { None };
        let mut req = [0u8; HEADER_LEN];
        let t1 = now_ntp();
        let header = Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: mode::CLIENT,
            stratum: 0,
            poll: 6,
            precision: -20,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            refid: [0; 4],
            reference: NtpTimestamp::ZERO,
            origin: xleave_prev.map_or(NtpTimestamp::ZERO, |p| p.t2),
            receive: xleave_prev.map_or(NtpTimestamp::ZERO, |p| p.t4),
            transmit: t1,
        };
        header
            .write(&mut req)
            .context("encoding request (internal error)")?;
        let packet = match nts.as_mut() {
            None => req.to_vec(),
            Some(s) => {
                // One cookie per request; ask for a refill of what is short of 8.
                let Some(cookie) = s.cookies.pop() else {
                    bail!("NTS: out of cookies (the server's replies carried none)");
                };
                let placeholders = 7usize.saturating_sub(s.cookies.len());
                rng.fill_bytes(&mut uid);
                let mut nonce = [0u8; 16];
                rng.fill_bytes(&mut nonce);
                nts_request(&req, &uid, &cookie, placeholders, &s.keys, &nonce)
            }
        };
        sock.send(&packet).context("sending request")?;
        let deadline = Instant::now() + timeout;
        let reply = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let t4 = now_ntp();
                    match Header::parse(&buf[..n]) {
                        Some(h)
                            if h.origin == t1
                                || (xleave_prev.is_some() && h.origin == header.receive) =>
                        {
                            break Some((h, t4, n))
                        }
                        Some(_) => println!("#{i}: ignoring a reply with a foreign origin"),
                        None => println!("#{i}: ignoring a {n}-octet datagram"),
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => {
                    println!("#{i}: receive error: {e}");
                    break None;
                }
            }
        };
        let Some((h, t4, len)) = reply else {
            println!("#{i}: no reply within {} ms", args.timeout_ms);
            prev = None;
            continue;
        };
        let pivot = unix_now();
        let nts_verdict = nts
            .as_mut()
            .map(|s| match check_reply(&buf[..len], &uid, &s.keys) {
                ReplyCheck::Ok(cookies) => {
                    let n = cookies.len();
                    s.cookies.extend(cookies);
                    Ok(format!("authenticated, {n} new cookie(s)"))
                }
                ReplyCheck::Nak => Err("NAK (KoD NTSN)".to_string()),
                ReplyCheck::Bad(why) => Err(format!("not authenticated: {why}")),
            });
        let interleaved = xleave_prev.is_some() && h.origin == header.receive;
        println!(
            "#{i}: {len} octets from {}, {}",
            args.server,
            if interleaved { "interleaved" } else { "basic" }
        );
        print_header(&h, pivot);
        match &nts_verdict {
            None => {}
            Some(Ok(v)) => println!("  nts: {v}"),
            Some(Err(v)) => {
                println!("  nts: {v}; not a valid reply");
                prev = None;
                continue;
            }
        }
        if h.mode != mode::SERVER || h.stratum == 0 {
            println!(
                "  not a valid server reply (mode {}, stratum {}{})",
                h.mode,
                h.stratum,
                if h.stratum == 0 {
                    format!(", kiss code {}", format_refid(0, h.refid))
                } else {
                    String::new()
                }
            );
            prev = None;
            continue;
        }
        valid += 1;
        if h.receive.is_zero() || h.transmit.is_zero() {
            println!("  offset/delay n/a: the server sent zero receive/transmit timestamps");
            prev = None;
            continue;
        }
        let (o, d) = offset_delay(t1, h.receive, h.transmit, t4);
        if interleaved {
            // RFC 9769: the transmit timestamp belongs to the previous exchange.
            let p = xleave_prev.unwrap_or(Previous {
                t1,
                t2: h.receive,
                t4,
            });
            let (xo, xd) = offset_delay(p.t1, p.t2, h.transmit, p.t4);
            println!(
                "  interleaved offset {} delay {} (previous exchange)",
                us(xo),
                us(xd)
            );
            println!(
                "  basic-formula offset {} delay {} (meaningless here)",
                us(o),
                us(d)
            );
            // The previous reply left the server after the server received its
            // request and before we received it: check the exact transmit
            // timestamp against both (same host clock in a lab).
            let after_rx = h.transmit.diff_nanos(p.t2);
            let before_rx = p.t4.diff_nanos(h.transmit);
            println!(
                "  previous reply's exact transmit: {} after the server received its request, {} before we received it (inside: {})",
                us(after_rx),
                us(before_rx),
                if after_rx >= 0 && before_rx >= 0 { "yes" } else { "no" }
            );
        } else {
            println!("  offset {} delay {}", us(o), us(d));
            println!(
                "  server turnaround {}",
                us(h.transmit.diff_nanos(h.receive))
            );
        }
        prev = Some(Previous {
            t1,
            t2: h.receive,
            t4,
        });
    }
    println!("{valid} of {} requests got a valid reply", args.count);
    if valid == 0 {
        bail!("no valid reply from {}", args.server);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        let t = NtpTimestamp::from_unix(1_700_000_000, 123_456_789);
        assert_eq!(
            format_utc(t, 1_700_000_000),
            "2023-11-14T22:13:20.123456789Z"
        );
        // after the 2036 era rollover
        let t = NtpTimestamp::from_unix(2_085_978_496 + 1, 0);
        assert_eq!(
            format_utc(t, 2_085_978_496),
            "2036-02-07T06:28:17.000000000Z"
        );
        assert_eq!(format_utc(NtpTimestamp::ZERO, 0), "0 (unset)");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn refid_formatting() {
        assert_eq!(format_refid(1, *b"GPS\0"), "\"GPS\"");
        assert_eq!(format_refid(0, *b"RATE"), "\"RATE\"");
        assert_eq!(format_refid(2, [192, 0, 2, 1]), "192.0.2.1");
    }

    #[test]
    fn offset_and_delay() {
        let base = NtpTimestamp::from_unix(1_700_000_000, 0);
        // server 1 ms ahead, 100 us each way, 10 us turnaround
        let t1 = base;
        let t2 = base.add_nanos(1_000_000 + 100_000);
        let t3 = t2.add_nanos(10_000);
        let t4 = base.add_nanos(210_000);
        let (o, d) = offset_delay(t1, t2, t3, t4);
        assert!((o - 1_000_000).abs() <= 2, "{o}");
        assert!((d - 200_000).abs() <= 2, "{d}");
    }
}
