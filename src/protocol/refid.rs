//! Encoding the reference ID (octets 12-15 of the header) from configuration
//! text, per stratum (RFC 5905 section 7.3):
//!
//! * stratum 0 (kiss code) and 1 (reference clock): 1 to 4 printable ASCII
//!   characters, left-aligned and zero-padded (e.g. "GPS" -> `GPS\0`);
//! * stratum 2 to 15: the upstream server's address: an IPv4 address gives its
//!   four octets; an IPv6 address gives the first four octets of the MD5 digest
//!   of its sixteen octets (as ntpd and chrony do).
//!
//! Pure: no I/O.

use md5::{Digest, Md5};
use std::fmt;
use std::net::IpAddr;

/// Why a reference ID could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefidError {
    /// The text is empty.
    Empty,
    /// More than 4 characters for a stratum 0/1 code.
    TooLong {
        /// The offending text.
        text: String,
    },
    /// A character that is not printable ASCII in a stratum 0/1 code.
    NotAscii {
        /// The offending text.
        text: String,
    },
    /// Stratum 2 or above needs the upstream's IP address.
    NotAnAddress {
        /// The stratum asked for.
        stratum: u8,
        /// The offending text.
        text: String,
    },
    /// Stratum 16 and above has no reference ID (unsynchronised).
    BadStratum(u8),
}

impl fmt::Display for RefidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefidError::Empty => f.write_str("reference ID is empty: give 1 to 4 ASCII characters"),
            RefidError::TooLong { text } => write!(
                f,
                "reference ID {text:?} is too long: a stratum 0/1 code has 1 to 4 ASCII characters"
            ),
            RefidError::NotAscii { text } => write!(
                f,
                "reference ID {text:?} must be printable ASCII (letters, digits, punctuation)"
            ),
            RefidError::NotAnAddress { stratum, text } => write!(
                f,
                "reference ID {text:?} is not an IP address: at stratum {stratum} it must be \
                 the upstream server's IPv4 or IPv6 address"
            ),
            RefidError::BadStratum(s) => {
                write!(f, "stratum {s} has no reference ID: a stratum is 0 to 15")
            }
        }
    }
}

impl std::error::Error for RefidError {}

/// The reference ID for a server at `stratum` whose source is described by
/// `text`: an ASCII code at stratum 0/1, the upstream's IP address at 2..=15.
pub fn encode_refid(stratum: u8, text: &str) -> Result<[u8; 4], RefidError> {
    match stratum {
        0 | 1 => encode_ascii(text),
        2..=15 => {
            if text.is_empty() {
                return Err(RefidError::Empty);
            }
            // Allow the bracketed form of IPv6 literals ("[2001:db8::1]").
            let bare = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(text);
            bare.parse::<IpAddr>()
                .map(refid_from_ip)
                .map_err(|_| RefidError::NotAnAddress {
                    stratum,
                    text: text.to_owned(),
                })
        }
        s => Err(RefidError::BadStratum(s)),
    }
}

/// The stratum >= 2 reference ID of an upstream at `addr`: IPv4 octets, or the
/// first four octets of MD5 over the sixteen IPv6 octets.
pub fn refid_from_ip(addr: IpAddr) -> [u8; 4] {
    match addr {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let digest = Md5::digest(v6.octets());
            [digest[0], digest[1], digest[2], digest[3]]
        }
    }
}

fn encode_ascii(text: &str) -> Result<[u8; 4], RefidError> {
    if text.is_empty() {
        return Err(RefidError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RefidError::NotAscii {
            text: text.to_owned(),
        });
    }
    if text.len() > 4 {
        return Err(RefidError::TooLong {
            text: text.to_owned(),
        });
    }
    let mut out = [0u8; 4];
    out[..text.len()].copy_from_slice(text.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratum_1_ascii() {
        assert_eq!(encode_refid(1, "GPS"), Ok(*b"GPS\0"));
        assert_eq!(encode_refid(1, "PHC0"), Ok(*b"PHC0"));
        assert_eq!(encode_refid(1, "LOCL"), Ok(*b"LOCL"));
        assert_eq!(encode_refid(1, "X"), Ok([b'X', 0, 0, 0]));
        assert_eq!(encode_refid(0, "RATE"), Ok(*b"RATE"));
    }

    #[test]
    fn stratum_1_rejects() {
        assert_eq!(encode_refid(1, ""), Err(RefidError::Empty));
        assert_eq!(
            encode_refid(1, "LOCAL"),
            Err(RefidError::TooLong {
                text: "LOCAL".into()
            })
        );
        assert!(matches!(
            encode_refid(1, "GPSé"),
            Err(RefidError::NotAscii { .. })
        ));
        assert!(matches!(
            encode_refid(1, "ééé"),
            Err(RefidError::NotAscii { .. })
        ));
        assert!(matches!(
            encode_refid(1, "G\0"),
            Err(RefidError::NotAscii { .. })
        ));
        assert!(matches!(
            encode_refid(1, "A B"),
            Err(RefidError::NotAscii { .. })
        ));
        let msg = encode_refid(1, "LOCAL").unwrap_err().to_string();
        assert!(msg.contains("LOCAL") && msg.contains("1 to 4"), "{msg}");
    }

    #[test]
    fn stratum_2_ipv4() {
        assert_eq!(encode_refid(2, "192.0.2.1"), Ok([192, 0, 2, 1]));
        assert_eq!(encode_refid(15, "10.1.2.3"), Ok([10, 1, 2, 3]));
    }

    #[test]
    fn stratum_2_ipv6_md5() {
        // Expected values: hashlib.md5(ipaddress.IPv6Address(a).packed).hexdigest()[:8]
        assert_eq!(encode_refid(2, "::1"), Ok([0xcf, 0x40, 0x4d, 0xc8]));
        assert_eq!(encode_refid(3, "2001:db8::1"), Ok([0x39, 0xab, 0x9b, 0x37]));
        assert_eq!(
            encode_refid(3, "[2001:db8::1]"),
            Ok([0x39, 0xab, 0x9b, 0x37])
        );
        assert_eq!(encode_refid(2, "fe80::1"), Ok([0x89, 0xe5, 0x30, 0x1f]));
        // An IPv4-mapped IPv6 address is hashed as IPv6, not taken as IPv4.
        assert_eq!(
            encode_refid(2, "::ffff:192.0.2.1"),
            Ok([0x3a, 0xd4, 0x57, 0xdb])
        );
    }

    #[test]
    fn stratum_2_rejects() {
        assert_eq!(
            encode_refid(2, "GPS"),
            Err(RefidError::NotAnAddress {
                stratum: 2,
                text: "GPS".into()
            })
        );
        assert!(matches!(
            encode_refid(2, "ntp.example"),
            Err(RefidError::NotAnAddress { .. })
        ));
        assert!(matches!(
            encode_refid(2, "192.0.2.1:123"),
            Err(RefidError::NotAnAddress { .. })
        ));
        assert_eq!(encode_refid(2, ""), Err(RefidError::Empty));
        assert_eq!(encode_refid(16, "GPS"), Err(RefidError::BadStratum(16)));
        let msg = encode_refid(4, "GPS").unwrap_err().to_string();
        assert!(
            msg.contains("IP address") && msg.contains("stratum 4"),
            "{msg}"
        );
    }
}
