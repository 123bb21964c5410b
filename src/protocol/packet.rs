//! The NTP packet: the 48-byte header (RFC 5905 section 7.3) and the RFC 7822
//! extension-field walk.

use super::state::LeapIndicator;
use super::timestamp::{NtpShort, NtpTimestamp};

/// Length of the fixed NTP header.
pub const HEADER_LEN: usize = 48;

/// Byte offset of the transmit timestamp in the header.
pub const TRANSMIT_OFFSET: usize = 40;

/// NTP association modes (the three low bits of the first octet).
pub mod mode {
    /// Reserved; NTPv1 packets carry 0 here and are treated as client requests.
    pub const RESERVED: u8 = 0;
    /// Symmetric active.
    pub const SYMMETRIC_ACTIVE: u8 = 1;
    /// Symmetric passive.
    pub const SYMMETRIC_PASSIVE: u8 = 2;
    /// Client.
    pub const CLIENT: u8 = 3;
    /// Server.
    pub const SERVER: u8 = 4;
    /// Broadcast.
    pub const BROADCAST: u8 = 5;
    /// NTP control message (ntpq).
    pub const CONTROL: u8 = 6;
    /// Private (ntpdc, e.g. monlist).
    pub const PRIVATE: u8 = 7;
}

/// The fixed 48-byte NTP header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Leap indicator.
    pub leap: LeapIndicator,
    /// Version number (0..=7 on the wire).
    pub version: u8,
    /// Mode (0..=7).
    pub mode: u8,
    /// Stratum.
    pub stratum: u8,
    /// Poll exponent (log2 seconds).
    pub poll: i8,
    /// Precision exponent (log2 seconds).
    pub precision: i8,
    /// Root delay.
    pub root_delay: NtpShort,
    /// Root dispersion.
    pub root_dispersion: NtpShort,
    /// Reference ID.
    pub refid: [u8; 4],
    /// Reference timestamp.
    pub reference: NtpTimestamp,
    /// Origin timestamp.
    pub origin: NtpTimestamp,
    /// Receive timestamp.
    pub receive: NtpTimestamp,
    /// Transmit timestamp.
    pub transmit: NtpTimestamp,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    (u64::from(be_u32(b, at)) << 32) | u64::from(be_u32(b, at + 4))
}

impl Header {
    /// Decode the first 48 octets of `buf`. `None` if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let b = buf.get(..HEADER_LEN)?;
        Some(Header {
            leap: LeapIndicator::from_bits(b[0] >> 6),
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: NtpShort(be_u32(b, 4)),
            root_dispersion: NtpShort(be_u32(b, 8)),
            refid: [b[12], b[13], b[14], b[15]],
            reference: NtpTimestamp(be_u64(b, 16)),
            origin: NtpTimestamp(be_u64(b, 24)),
            receive: NtpTimestamp(be_u64(b, 32)),
            transmit: NtpTimestamp(be_u64(b, 40)),
        })
    }

    /// Encode into the first 48 octets of `out`. Returns `None` (writing nothing)
    /// if `out` is shorter than [`HEADER_LEN`].
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let b = out.get_mut(..HEADER_LEN)?;
        b[0] = ((self.leap as u8) << 6) | ((self.version & 7) << 3) | (self.mode & 7);
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.0.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.0.to_be_bytes());
        b[12..16].copy_from_slice(&self.refid);
        b[16..24].copy_from_slice(&self.reference.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive.0.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit.0.to_be_bytes());
        Some(HEADER_LEN)
    }
}

/// Overwrite the transmit timestamp of an encoded packet in place (used to read
/// the clock as late as possible, just before the send). No-op on a short buffer.
pub fn set_transmit(packet: &mut [u8], ts: NtpTimestamp) {
    if let Some(field) = packet.get_mut(TRANSMIT_OFFSET..HEADER_LEN) {
        field.copy_from_slice(&ts.0.to_be_bytes());
    }
}

/// Read the transmit timestamp of an encoded packet, if it is long enough.
pub fn get_transmit(packet: &[u8]) -> Option<NtpTimestamp> {
    packet
        .get(..HEADER_LEN)
        .map(|b| NtpTimestamp(be_u64(b, TRANSMIT_OFFSET)))
}

/// What follows the header, as RFC 7822 and RFC 5905 allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trailer {
    /// Nothing after the header.
    None,
    /// Only well-formed extension fields (their count).
    Extensions(usize),
    /// Extension fields (possibly none) followed by a legacy MAC (key ID + digest,
    /// or a 4-octet crypto-NAK).
    Mac {
        /// Number of extension fields before the MAC.
        extensions: usize,
        /// Length of the MAC in octets (4, 20 or 24).
        len: usize,
    },
}

/// Why the part after the header cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailerError {
    /// An extension field is shorter than 16 octets, not a multiple of 4, or runs
    /// past the end of the packet, and what is left is not a MAC either.
    MalformedExtension,
    /// Extra octets after an NTPv1-3 header that are not a MAC.
    TrailingGarbage,
}

/// Whether `len` octets can be a legacy MAC: a crypto-NAK (4), key ID + MD5 (20)
/// or key ID + SHA-1 (24).
fn is_mac_len(len: usize) -> bool {
    matches!(len, 4 | 20 | 24)
}

/// Walk what follows the 48-octet header. For NTPv4 this is zero or more RFC 7822
/// extension fields (type, length >= 16 and a multiple of 4, value) optionally
/// followed by a MAC; for older versions only a MAC may follow.
pub fn walk_trailer(packet: &[u8], version: u8) -> Result<Trailer, TrailerError> {
    let rest = packet.get(HEADER_LEN..).unwrap_or(&[]);
    if rest.is_empty() {
        return Ok(Trailer::None);
    }
    if version < 4 {
        return if is_mac_len(rest.len()) {
            Ok(Trailer::Mac {
                extensions: 0,
                len: rest.len(),
            })
        } else {
            Err(TrailerError::TrailingGarbage)
        };
    }
    let mut at = 0usize;
    let mut count = 0usize;
    while at < rest.len() {
        let left = rest.len() - at;
        if left < 4 {
            return Err(TrailerError::MalformedExtension);
        }
        let len = usize::from(u16::from_be_bytes([rest[at + 2], rest[at + 3]]));
        let field_ok = len >= 16 && len % 4 == 0 && len <= left;
        if field_ok {
            at += len;
            count += 1;
            continue;
        }
        // Not an extension field here: a MAC may end the packet (RFC 7822 section 7.5).
        if is_mac_len(left) {
            return Ok(Trailer::Mac {
                extensions: count,
                len: left,
            });
        }
        return Err(TrailerError::MalformedExtension);
    }
    Ok(Trailer::Extensions(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Header {
        Header {
            leap: LeapIndicator::Insert,
            version: 4,
            mode: 4,
            stratum: 2,
            poll: -3,
            precision: -24,
            root_delay: NtpShort(0x0001_0203),
            root_dispersion: NtpShort(0x0405_0607),
            refid: *b"GPS\0",
            reference: NtpTimestamp(0x1111_2222_3333_4444),
            origin: NtpTimestamp(0x5555_6666_7777_8888),
            receive: NtpTimestamp(0x9999_aaaa_bbbb_cccc),
            transmit: NtpTimestamp(0xdddd_eeee_ffff_0001),
        }
    }

    #[test]
    fn encodes_known_bytes() {
        let mut out = [0u8; 48];
        assert_eq!(sample().write(&mut out), Some(48));
        assert_eq!(out[0], 0b01_100_100);
        assert_eq!(out[2], 0xfd);
        assert_eq!(out[3], 0xe8);
        assert_eq!(&out[4..8], &[0, 1, 2, 3]);
        assert_eq!(&out[12..16], b"GPS\0");
        assert_eq!(&out[40..48], &[0xdd, 0xdd, 0xee, 0xee, 0xff, 0xff, 0, 1]);
    }

    #[test]
    fn short_buffers() {
        assert!(Header::parse(&[0u8; 47]).is_none());
        assert!(sample().write(&mut [0u8; 47]).is_none());
        let mut short = [7u8; 10];
        set_transmit(&mut short, NtpTimestamp(1));
        assert_eq!(short, [7u8; 10]);
    }

    #[test]
    fn transmit_patch() {
        let mut out = [0u8; 48];
        sample().write(&mut out).unwrap();
        set_transmit(&mut out, NtpTimestamp(42));
        assert_eq!(get_transmit(&out), Some(NtpTimestamp(42)));
        assert_eq!(Header::parse(&out).unwrap().origin, sample().origin);
    }

    fn ext(len: u16) -> Vec<u8> {
        let mut f = vec![0u8; usize::from(len).max(4)];
        f[0] = 0x01;
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f
    }

    #[test]
    fn extension_walk() {
        let hdr = vec![0x23u8; 48];
        let with = |parts: &[Vec<u8>]| {
            let mut p = hdr.clone();
            for x in parts {
                p.extend_from_slice(x);
            }
            p
        };
        assert_eq!(walk_trailer(&hdr, 4), Ok(Trailer::None));
        assert_eq!(
            walk_trailer(&with(&[ext(16)]), 4),
            Ok(Trailer::Extensions(1))
        );
        assert_eq!(
            walk_trailer(&with(&[ext(16), ext(28)]), 4),
            Ok(Trailer::Extensions(2))
        );
        // zero, odd, short and overrunning lengths
        for bad in [0u16, 3, 8, 12, 17, 18] {
            let mut p = with(&[ext(bad)]);
            p.resize(48 + 32, 0);
            assert_eq!(
                walk_trailer(&p, 4),
                Err(TrailerError::MalformedExtension),
                "len {bad}"
            );
        }
        let mut over = with(&[ext(16)]);
        over[50..52].copy_from_slice(&64u16.to_be_bytes());
        assert_eq!(
            walk_trailer(&over, 4),
            Err(TrailerError::MalformedExtension)
        );
        // legacy MACs
        assert_eq!(
            walk_trailer(&with(&[vec![0; 20]]), 4),
            Ok(Trailer::Mac {
                extensions: 0,
                len: 20
            })
        );
        assert_eq!(
            walk_trailer(&with(&[ext(16), vec![0; 24]]), 4),
            Ok(Trailer::Mac {
                extensions: 1,
                len: 24
            })
        );
        assert_eq!(
            walk_trailer(&with(&[vec![0; 20]]), 3),
            Ok(Trailer::Mac {
                extensions: 0,
                len: 20
            })
        );
        assert_eq!(
            walk_trailer(&with(&[vec![0; 7]]), 3),
            Err(TrailerError::TrailingGarbage)
        );
        assert_eq!(
            walk_trailer(&with(&[vec![0; 2]]), 4),
            Err(TrailerError::MalformedExtension)
        );
    }

    proptest! {
        #[test]
        fn header_round_trip(bytes in proptest::collection::vec(any::<u8>(), 48)) {
            let h = Header::parse(&bytes).unwrap();
            let mut out = [0u8; 48];
            h.write(&mut out).unwrap();
            prop_assert_eq!(&out[..], &bytes[..]);
            prop_assert_eq!(Header::parse(&out), Some(h));
        }

        #[test]
        fn walk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), v in 0u8..8) {
            let _ = walk_trailer(&bytes, v);
        }
    }
}
