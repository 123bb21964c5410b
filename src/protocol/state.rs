//! What the server claims about its own clock: the header fields that come from
//! the reference, not from the request. Built by the clock layer, read by workers.

use super::timestamp::{NtpShort, NtpTimestamp};

/// The leap indicator (LI) field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum LeapIndicator {
    /// No leap second pending.
    #[default]
    NoWarning = 0,
    /// The last minute of the day has 61 seconds.
    Insert = 1,
    /// The last minute of the day has 59 seconds.
    Delete = 2,
    /// Clock unsynchronised (alarm).
    Unsynchronized = 3,
}

impl LeapIndicator {
    /// From the two LI bits.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => LeapIndicator::NoWarning,
            1 => LeapIndicator::Insert,
            2 => LeapIndicator::Delete,
            _ => LeapIndicator::Unsynchronized,
        }
    }
}

/// A snapshot of the server's clock state: everything in a reply that is not
/// taken from the request or the packet's own timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerState {
    /// Leap indicator; [`LeapIndicator::Unsynchronized`] means the reference is unusable.
    pub leap: LeapIndicator,
    /// Stratum 1..=15, or 16 when unsynchronised.
    pub stratum: u8,
    /// log2 of the clock's reading precision in seconds (e.g. -24 for ~60 ns).
    pub precision: i8,
    /// Round-trip delay to the primary reference.
    pub root_delay: NtpShort,
    /// Error bound relative to the primary reference.
    pub root_dispersion: NtpShort,
    /// Reference ID, already encoded per stratum (ASCII for stratum 1, address else).
    pub refid: [u8; 4],
    /// When the reference last updated the clock.
    pub reference_time: NtpTimestamp,
    /// Smallest poll exponent served (requests asking for less are raised to it).
    pub min_poll: i8,
    /// Largest poll exponent served.
    pub max_poll: i8,
    /// Whether the server answers at all while unsynchronised (`false`: drop
    /// requests while [`LeapIndicator::Unsynchronized`]).
    pub serve_unsynchronized: bool,
}

impl ServerState {
    /// Stratum sent while unsynchronised.
    pub const STRATUM_UNSYNC: u8 = 16;

    /// The state of a server with no usable reference: LI 3, stratum 16.
    pub fn unsynchronized(precision: i8) -> Self {
        ServerState {
            leap: LeapIndicator::Unsynchronized,
            stratum: Self::STRATUM_UNSYNC,
            precision,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::MAX,
            refid: *b"INIT",
            reference_time: NtpTimestamp::ZERO,
            min_poll: 4,
            max_poll: 17,
            serve_unsynchronized: true,
        }
    }

    /// A synchronised stratum-1 state with reference ID "LOCL": what an
    /// authoritative local clock of this `precision` serves, with the given
    /// reference time and root dispersion (tests and tools start from it).
    pub fn local_stratum1(
        precision: i8,
        root_dispersion: NtpShort,
        reference_time: NtpTimestamp,
    ) -> Self {
        ServerState {
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            root_delay: NtpShort::ZERO,
            root_dispersion,
            refid: *b"LOCL",
            reference_time,
            ..Self::unsynchronized(precision)
        }
    }

    /// Whether the state says the clock is unusable.
    pub fn is_unsynchronized(&self) -> bool {
        self.leap == LeapIndicator::Unsynchronized || self.stratum >= Self::STRATUM_UNSYNC
    }
}
