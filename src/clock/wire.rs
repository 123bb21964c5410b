//! Corrections between where a NIC timestamps a frame and where NTP wants it (pure).
//!
//! A NIC hardware timestamp marks the frame's *start*: IEEE 1588's message
//! timestamp point, the first bit after the start-of-frame delimiter. The
//! preamble (7 bytes) and SFD (1 byte) have already passed by then, so they
//! are not part of the correction. NTP wants a receive timestamp at the *end*
//! of the packet and a transmit timestamp at its start, so a hardware RX
//! timestamp is moved later by the time the rest of the frame takes on the
//! wire: (layer-2 frame length + 4-byte FCS) × 8 / link speed. This is the
//! correction chrony applies (`ntp_io_linux.c`, `process_hw_timestamp`:
//! `(l2_length + 4) / (1e6 / 8 * link_speed)` seconds); we additionally
//! account for the padding of frames shorter than Ethernet's 64-byte minimum
//! (never the case for NTP over IPv4/IPv6, 90+ bytes, but exact anyway).
//! TX hardware timestamps are left at the frame start.
//!
//! On top of that, fixed per-interface compensations for PHY/MAC latency
//! ([`Compensation`], like chrony's `rxcomp`/`txcomp`): subtracted from RX
//! timestamps, added to TX timestamps.

/// Length of the Ethernet frame check sequence.
pub const ETH_FCS_LEN: u32 = 4;
/// Minimum Ethernet frame length without the FCS (64 with it); shorter frames are padded.
pub const ETH_MIN_FRAME_LEN: u32 = 60;
/// Ethernet header: destination, source, EtherType.
pub const ETH_HEADER_LEN: u32 = 14;
/// One 802.1Q VLAN tag.
pub const VLAN_TAG_LEN: u32 = 4;
/// IPv4 header without options.
pub const IPV4_HEADER_LEN: u32 = 20;
/// IPv6 header without extension headers.
pub const IPV6_HEADER_LEN: u32 = 40;
/// UDP header.
pub const UDP_HEADER_LEN: u32 = 8;

/// ethtool's `SPEED_UNKNOWN` (`-1` as `u32`).
pub const SPEED_UNKNOWN: u32 = u32::MAX;

/// How much later than a hardware RX timestamp the received frame ended, ns
/// (rounded to the nearest ns): `(max(frame_len_bytes, 60) + FCS) × 8 /
/// link_speed_mbps`. `frame_len_bytes` is the layer-2 frame from the
/// destination MAC address to the end of the payload, without preamble, SFD
/// or FCS. 0 when the speed is unknown (0 or [`SPEED_UNKNOWN`]).
pub fn rx_wire_correction_ns(frame_len_bytes: u32, link_speed_mbps: u32) -> u64 {
    if link_speed_mbps == 0 || link_speed_mbps == SPEED_UNKNOWN {
        return 0;
    }
    let bits = (u64::from(frame_len_bytes.max(ETH_MIN_FRAME_LEN)) + u64::from(ETH_FCS_LEN)) * 8;
    let speed = u64::from(link_speed_mbps);
    // bits / (Mbit/s) = us; times 1000 for ns.
    (bits * 1000 + speed / 2) / speed
}

/// The layer-2 length (without FCS) of a UDP datagram with `udp_payload_len`
/// bytes of payload over Ethernet, assuming no IP options or IPv6 extension
/// headers, with `vlan_tags` 802.1Q tags (as seen on the wire).
pub fn udp_frame_len(udp_payload_len: u32, ipv6: bool, vlan_tags: u32) -> u32 {
    let ip = if ipv6 {
        IPV6_HEADER_LEN
    } else {
        IPV4_HEADER_LEN
    };
    ETH_HEADER_LEN
        .saturating_add(vlan_tags.saturating_mul(VLAN_TAG_LEN))
        .saturating_add(ip)
        .saturating_add(UDP_HEADER_LEN)
        .saturating_add(udp_payload_len)
}

/// Fixed timestamp compensations for one interface (`--rx-comp` / `--tx-comp`),
/// for latencies between the timestamping point and the wire (PHY, MAC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compensation {
    /// Subtracted from hardware RX timestamps, ns (positive: the NIC stamps late).
    pub rx_ns: i64,
    /// Added to hardware TX timestamps, ns (positive: the NIC stamps early).
    pub tx_ns: i64,
}

impl Compensation {
    /// No compensation.
    pub const NONE: Compensation = Compensation { rx_ns: 0, tx_ns: 0 };

    /// Compensations from the configured values, ns.
    pub const fn new(rx_ns: i64, tx_ns: i64) -> Self {
        Compensation { rx_ns, tx_ns }
    }

    /// The total to add to a hardware RX timestamp of a frame of
    /// `frame_len_bytes` (see [`rx_wire_correction_ns`]) received at
    /// `link_speed_mbps`: the wire correction minus `rx_ns`.
    pub fn rx_adjust_ns(&self, frame_len_bytes: u32, link_speed_mbps: u32) -> i64 {
        // The wire correction is at most ~(2^32 * 8 * 1000) ns: it fits in i64.
        let wire = i64::try_from(rx_wire_correction_ns(frame_len_bytes, link_speed_mbps))
            .unwrap_or(i64::MAX);
        wire.saturating_sub(self.rx_ns)
    }

    /// The total to add to a hardware TX timestamp: `tx_ns`.
    pub fn tx_adjust_ns(&self) -> i64 {
        self.tx_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NTP request (48 bytes) in UDP over IPv4 over Ethernet.
    const NTP_V4_FRAME: u32 = 14 + 20 + 8 + 48;

    #[test]
    fn ntp_frame_lengths() {
        assert_eq!(udp_frame_len(48, false, 0), NTP_V4_FRAME);
        assert_eq!(udp_frame_len(48, true, 0), 110);
        assert_eq!(udp_frame_len(48, false, 1), 94);
        assert_eq!(udp_frame_len(u32::MAX, false, 0), u32::MAX);
    }

    #[test]
    fn gigabit_ten_gigabit_and_fast_ethernet() {
        // (90 + 4) * 8 = 752 bits
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 1_000), 752);
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 10_000), 75); // 75.2
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 100), 7_520);
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 2_500), 301); // 300.8 rounds up
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 25_000), 30); // 30.08
                                                                     // IPv6 NTP at 1G: (110 + 4) * 8
        assert_eq!(rx_wire_correction_ns(110, 1_000), 912);
        // A full 1514-byte frame at 1G: 12.144 us.
        assert_eq!(rx_wire_correction_ns(1514, 1_000), 12_144);
    }

    #[test]
    fn short_frames_are_padded_to_the_ethernet_minimum() {
        // 42 bytes (empty UDP over IPv4) go out as 60 + FCS = 64 bytes = 512 bits.
        assert_eq!(
            rx_wire_correction_ns(udp_frame_len(0, false, 0), 1_000),
            512
        );
        assert_eq!(rx_wire_correction_ns(0, 1_000), 512);
    }

    #[test]
    fn unknown_speed_means_no_correction() {
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, 0), 0);
        assert_eq!(rx_wire_correction_ns(NTP_V4_FRAME, SPEED_UNKNOWN), 0);
        // Extreme inputs do not overflow.
        assert_eq!(
            rx_wire_correction_ns(u32::MAX, 1),
            (u64::from(u32::MAX) + 4) * 8000
        );
    }

    #[test]
    fn compensations() {
        let c = Compensation::new(120, -40);
        assert_eq!(c.rx_adjust_ns(NTP_V4_FRAME, 1_000), 752 - 120);
        assert_eq!(c.tx_adjust_ns(), -40);
        assert_eq!(Compensation::NONE.rx_adjust_ns(NTP_V4_FRAME, 10_000), 75);
        assert_eq!(
            Compensation::new(1_000, 0).rx_adjust_ns(NTP_V4_FRAME, 10_000),
            -925
        );
        assert_eq!(Compensation::default(), Compensation::NONE);
        assert_eq!(
            Compensation::new(i64::MIN, 0).rx_adjust_ns(60, 1_000),
            i64::MAX
        );
    }
}
