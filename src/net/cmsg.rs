//! Parsing and building of socket control messages (ancillary data), by hand.
//!
//! Everything here is pure byte manipulation, without `unsafe`: a control
//! buffer is a sequence of `struct cmsghdr { size_t cmsg_len; int cmsg_level;
//! int cmsg_type; }` headers, each followed by its data, each message starting
//! at a multiple of `sizeof(size_t)` (glibc's and the kernel's `CMSG_ALIGN`).
//! All integers are native-endian, except IP addresses (network order).
//!
//! What the server receives:
//! * with a request ([`parse_rx_control`]): `SCM_TIMESTAMPING` (software and raw
//!   hardware receive time), `IP_PKTINFO` / `IPV6_PKTINFO` (the local address
//!   the client sent to, and the interface), `SCM_TIMESTAMPING_PKTINFO` (the
//!   interface and the layer-2 frame length, with hardware stamps only);
//! * from the error queue ([`parse_errqueue_control`]): a transmit timestamp,
//!   `SCM_TIMESTAMPING` plus `IP_RECVERR` / `IPV6_RECVERR` carrying a
//!   `sock_extended_err` with the OPT_ID key.
//!
//! What it sends with a reply ([`build_reply_control`]): the source address
//! (`IP_PKTINFO` / `IPV6_PKTINFO`), and when it wants the transmit time, a
//! per-message `SO_TIMESTAMPING` generation request and an `SCM_TS_OPT_ID` key.
//!
//! Malformed input never panics: a header that does not fit ends the walk, a
//! message whose data is too short for its type is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------
// Constants (Linux UAPI): libc's where libc 0.2 exports them for Linux; the
// rest (which it lacks) hand-written with the generic values, which hold for
// x86_64 and aarch64.

/// `SOL_SOCKET` (1 on the architectures we build for; MIPS/SPARC/PA-RISC differ).
pub const SOL_SOCKET: i32 = libc::SOL_SOCKET;
/// `SOL_IP` (= `IPPROTO_IP`).
pub const SOL_IP: i32 = libc::SOL_IP;
/// `SOL_IPV6` (= `IPPROTO_IPV6`).
pub const SOL_IPV6: i32 = libc::SOL_IPV6;
/// `IP_PKTINFO`: `struct in_pktinfo` on receive and send.
pub const IP_PKTINFO: i32 = libc::IP_PKTINFO;
/// `IP_RECVERR`: `struct sock_extended_err` on the error queue of an IPv4 socket.
pub const IP_RECVERR: i32 = libc::IP_RECVERR;
/// `IPV6_PKTINFO`: `struct in6_pktinfo` on receive and send.
pub const IPV6_PKTINFO: i32 = libc::IPV6_PKTINFO;
/// `IPV6_RECVERR`: `struct sock_extended_err` on the error queue of an IPv6 socket.
pub const IPV6_RECVERR: i32 = libc::IPV6_RECVERR;
/// `SO_RXQ_OVFL`: on a socket, turns on a `u32` control message with each
/// datagram telling how many the socket has dropped so far.
pub const SO_RXQ_OVFL: i32 = libc::SO_RXQ_OVFL;
/// `SO_TIMESTAMPING_OLD` (= `SCM_TIMESTAMPING` with a native `struct timespec`;
/// this is what `SO_TIMESTAMPING` means on 64-bit targets).
pub const SO_TIMESTAMPING_OLD: i32 = 37;
/// `SO_TIMESTAMPING_NEW` (`struct __kernel_timespec`, 64-bit seconds and nanoseconds everywhere).
pub const SO_TIMESTAMPING_NEW: i32 = 65;
/// `SO_TIMESTAMPNS_OLD` (a single software `struct timespec`).
pub const SO_TIMESTAMPNS_OLD: i32 = 35;
/// `SO_TIMESTAMPNS_NEW` (a single software `struct __kernel_timespec`).
pub const SO_TIMESTAMPNS_NEW: i32 = 64;
/// `SCM_TIMESTAMPING_PKTINFO`: `struct scm_ts_pktinfo`, sent with hardware RX
/// stamps when `SOF_TIMESTAMPING_OPT_PKTINFO` is on.
pub const SCM_TIMESTAMPING_PKTINFO: i32 = 58;
/// `SCM_TS_OPT_ID` (Linux 6.13+): a per-`sendmsg` `u32` key that the transmit
/// timestamp report carries in `ee_data`, instead of the socket's counter.
/// `include/uapi/asm-generic/socket.h` defines it as 81 (x86, arm, aarch64,
/// riscv...); PA-RISC uses 0x404C and SPARC 0x5A. libc 0.2 does not export it.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub const SCM_TS_OPT_ID: i32 = 81;
/// `SCM_TS_OPT_ID` on SPARC (see the generic definition).
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub const SCM_TS_OPT_ID: i32 = 0x5a;

/// `SOF_TIMESTAMPING_TX_HARDWARE`: ask the NIC for the transmit time.
pub const SOF_TIMESTAMPING_TX_HARDWARE: u32 = libc::SOF_TIMESTAMPING_TX_HARDWARE;
/// `SOF_TIMESTAMPING_TX_SOFTWARE`: ask the driver for the transmit time.
pub const SOF_TIMESTAMPING_TX_SOFTWARE: u32 = libc::SOF_TIMESTAMPING_TX_SOFTWARE;

/// `ENOMSG`: the `ee_errno` of a timestamp report.
const ENOMSG: u32 = libc::ENOMSG as u32;
/// `SO_EE_ORIGIN_TIMESTAMPING` (= `SO_EE_ORIGIN_TXSTATUS`).
const SO_EE_ORIGIN_TIMESTAMPING: u8 = libc::SO_EE_ORIGIN_TIMESTAMPING;

/// `SCM_TSTAMP_SND`: the `ee_info` of a driver (software) or NIC (hardware) transmit stamp.
pub const SCM_TSTAMP_SND: u32 = 0;
/// `SCM_TSTAMP_SCHED`: the `ee_info` of a stamp taken on entering the packet scheduler.
pub const SCM_TSTAMP_SCHED: u32 = 1;
/// `SCM_TSTAMP_ACK`: the `ee_info` of a TCP acknowledgement stamp.
pub const SCM_TSTAMP_ACK: u32 = 2;

// ---------------------------------------------------------------------------
// cmsghdr layout helpers.

/// `sizeof(size_t)`: the alignment of control messages (`CMSG_ALIGN`).
const ALIGN: usize = std::mem::size_of::<usize>();
/// `sizeof(struct cmsghdr)`: `size_t cmsg_len; int cmsg_level; int cmsg_type`.
pub const CMSG_HDR_LEN: usize = cmsg_align(ALIGN + 8);

/// `CMSG_ALIGN(len)`: `len` rounded up to the control message alignment.
pub const fn cmsg_align(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// `CMSG_LEN(data_len)`: the `cmsg_len` of a message carrying `data_len` bytes.
pub const fn cmsg_len(data_len: usize) -> usize {
    CMSG_HDR_LEN + data_len
}

/// `CMSG_SPACE(data_len)`: the room a message carrying `data_len` bytes takes.
pub const fn cmsg_space(data_len: usize) -> usize {
    CMSG_HDR_LEN + cmsg_align(data_len)
}

/// A control buffer aligned like a `struct cmsghdr`, for the kernel and for
/// other code that may cast it (ours does not need the alignment).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub struct CmsgBuffer<const N: usize>(pub [u8; N]);

impl<const N: usize> CmsgBuffer<N> {
    /// A zeroed buffer.
    pub const fn new() -> Self {
        CmsgBuffer([0; N])
    }
}

impl<const N: usize> Default for CmsgBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// One control message: level, type and its data (possibly truncated if the
/// buffer ended early; parsers check the length they need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmsg<'a> {
    /// `cmsg_level` (`SOL_SOCKET`, `SOL_IP`, `SOL_IPV6`...).
    pub level: i32,
    /// `cmsg_type`.
    pub kind: i32,
    /// The bytes after the header, `cmsg_len - sizeof(cmsghdr)` of them (fewer if the buffer is short).
    pub data: &'a [u8],
}

/// Iterator over the control messages of a buffer; see [`cmsgs`].
#[derive(Clone, Debug)]
pub struct CmsgIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Walks the control messages of `control` (the first `msg_controllen` bytes
/// that `recvmsg` filled in). Stops at the first header that does not fit or
/// that claims a length shorter than a header.
pub fn cmsgs(control: &[u8]) -> CmsgIter<'_> {
    CmsgIter {
        buf: control,
        pos: 0,
    }
}

impl<'a> Iterator for CmsgIter<'a> {
    type Item = Cmsg<'a>;

    fn next(&mut self) -> Option<Cmsg<'a>> {
        let rest = self.buf.get(self.pos..)?;
        if rest.len() < CMSG_HDR_LEN {
            self.pos = self.buf.len();
            return None;
        }
        let len = read_usize(rest, 0)?;
        let level = read_i32(rest, ALIGN)?;
        let kind = read_i32(rest, ALIGN + 4)?;
        if len < CMSG_HDR_LEN {
            // A length shorter than a header would loop forever: stop (glibc does the same).
            self.pos = self.buf.len();
            return None;
        }
        let end = len.min(rest.len());
        let data = &rest[CMSG_HDR_LEN..end];
        // The next header starts at CMSG_ALIGN(len); if that is past the end
        // (or overflows), this was the last message.
        self.pos = match len.checked_add(ALIGN - 1) {
            Some(l) if l & !(ALIGN - 1) < rest.len() => self.pos + (l & !(ALIGN - 1)),
            _ => self.buf.len(),
        };
        Some(Cmsg { level, kind, data })
    }
}

fn read_usize(b: &[u8], off: usize) -> Option<usize> {
    let bytes = b.get(off..off.checked_add(ALIGN)?)?;
    let mut a = [0u8; std::mem::size_of::<usize>()];
    a.copy_from_slice(bytes);
    Some(usize::from_ne_bytes(a))
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_i32(b: &[u8], off: usize) -> Option<i32> {
    read_u32(b, off).map(|v| v as i32)
}

fn read_i64(b: &[u8], off: usize) -> Option<i64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(i64::from_ne_bytes(bytes.try_into().ok()?))
}

/// Reads a signed integer of `size` (4 or 8) bytes.
fn read_signed(b: &[u8], off: usize, size: usize) -> Option<i64> {
    match size {
        8 => read_i64(b, off),
        4 => read_i32(b, off).map(i64::from),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Timestamps.

/// A time as the kernel reports it: seconds and nanoseconds since the Unix
/// epoch in the clock that took it (CLOCK_REALTIME for software stamps, the
/// NIC's PHC for hardware stamps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelTime {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

impl KernelTime {
    /// Whether this is the all-zero time, which the kernel uses for "no stamp in this slot".
    pub const fn is_zero(&self) -> bool {
        self.sec == 0 && self.nsec == 0
    }

    /// The time as nanoseconds since the epoch.
    pub const fn as_nanos(&self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }

    /// A `KernelTime` from a `struct timespec`'s two fields; `None` when the
    /// nanoseconds are out of range (garbage).
    pub fn from_parts(sec: i64, nsec: i64) -> Option<KernelTime> {
        if (0..1_000_000_000).contains(&nsec) {
            Some(KernelTime {
                sec,
                nsec: nsec as u32,
            })
        } else {
            None
        }
    }
}

/// The size of one timespec in a control message of this type, if it is a timestamp type.
fn timespec_size(kind: i32) -> Option<usize> {
    match kind {
        SO_TIMESTAMPING_NEW | SO_TIMESTAMPNS_NEW => Some(16),
        SO_TIMESTAMPING_OLD | SO_TIMESTAMPNS_OLD => Some(2 * std::mem::size_of::<libc::c_long>()),
        _ => None,
    }
}

/// Reads timespec number `i` of the data; `None` if missing, zero, or invalid.
fn read_timespec(data: &[u8], i: usize, size: usize) -> Option<KernelTime> {
    let half = size / 2;
    let off = i * size;
    let sec = read_signed(data, off, half)?;
    let nsec = read_signed(data, off + half, half)?;
    let t = KernelTime::from_parts(sec, nsec)?;
    (!t.is_zero()).then_some(t)
}

/// The three stamps of an `SCM_TIMESTAMPING` message: ([0] software, [2] raw hardware).
fn parse_scm_timestamping(c: &Cmsg<'_>) -> Option<(Option<KernelTime>, Option<KernelTime>)> {
    if c.level != SOL_SOCKET {
        return None;
    }
    let size = timespec_size(c.kind)?;
    match c.kind {
        SO_TIMESTAMPING_OLD | SO_TIMESTAMPING_NEW => Some((
            read_timespec(c.data, 0, size),
            read_timespec(c.data, 2, size),
        )),
        _ => Some((read_timespec(c.data, 0, size), None)),
    }
}

// ---------------------------------------------------------------------------
// Receive side.

/// What the control messages of a received request tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// Kernel software receive time (CLOCK_REALTIME), `SCM_TIMESTAMPING` slot 0.
    pub software: Option<KernelTime>,
    /// NIC raw hardware receive time (PHC time), `SCM_TIMESTAMPING` slot 2.
    pub hardware: Option<KernelTime>,
    /// The local address the client sent to (`ipi_addr` / `ipi6_addr`): the
    /// source address the reply must use.
    pub local_addr: Option<IpAddr>,
    /// The interface the datagram arrived on (`IP_PKTINFO` / `IPV6_PKTINFO`), 0 when unknown.
    pub ifindex: u32,
    /// The real interface from `SCM_TIMESTAMPING_PKTINFO` (0 from the kernel means unknown: `None`).
    pub hw_ifindex: Option<u32>,
    /// The layer-2 frame length at the NIC from `SCM_TIMESTAMPING_PKTINFO`
    /// (without FCS), for the end-of-frame correction of hardware RX stamps.
    pub frame_len: Option<u32>,
    /// `SO_RXQ_OVFL`: datagrams the socket had dropped (receive buffer full)
    /// when this one was queued, counted since the socket was made (32 bits,
    /// wrapping). The kernel sends it only once the count is not zero.
    pub socket_drops: Option<u32>,
}

/// Parses the control data of a received request. Unknown, malformed or
/// truncated messages are skipped.
pub fn parse_rx_control(control: &[u8]) -> RxMeta {
    let mut meta = RxMeta::default();
    for c in cmsgs(control) {
        match (c.level, c.kind) {
            (SOL_SOCKET, SO_RXQ_OVFL) => {
                // A __u32 (sock_recv_drops in net/socket.c).
                meta.socket_drops = read_u32(c.data, 0);
            }
            (SOL_SOCKET, SCM_TIMESTAMPING_PKTINFO) => {
                // struct scm_ts_pktinfo { __u32 if_index; __u32 pkt_length; __u32 reserved[2]; }
                if let (Some(ifi), Some(len)) = (read_u32(c.data, 0), read_u32(c.data, 4)) {
                    meta.hw_ifindex = (ifi != 0).then_some(ifi);
                    meta.frame_len = Some(len);
                }
            }
            (SOL_SOCKET, _) => {
                if let Some((sw, hw)) = parse_scm_timestamping(&c) {
                    meta.software = sw.or(meta.software);
                    meta.hardware = hw.or(meta.hardware);
                }
            }
            (SOL_IP, IP_PKTINFO) => {
                // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
                if let (Some(ifi), Some(addr)) = (read_u32(c.data, 0), c.data.get(8..12)) {
                    meta.ifindex = ifi;
                    let octets: [u8; 4] = addr.try_into().unwrap_or_default();
                    meta.local_addr = Some(IpAddr::V4(Ipv4Addr::from(octets)));
                }
            }
            (SOL_IPV6, IPV6_PKTINFO) => {
                // struct in6_pktinfo { struct in6_addr ipi6_addr; unsigned int ipi6_ifindex; }
                if let (Some(addr), Some(ifi)) = (c.data.get(0..16), read_u32(c.data, 16)) {
                    meta.ifindex = ifi;
                    let octets: [u8; 16] = addr.try_into().unwrap_or_default();
                    meta.local_addr = Some(IpAddr::V6(Ipv6Addr::from(octets)));
                }
            }
            _ => {}
        }
    }
    meta
}

// ---------------------------------------------------------------------------
// Error queue: transmit timestamps.

/// A transmit timestamp report read from the error queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxTimestamp {
    /// The OPT_ID key (`ee_data`): the `SCM_TS_OPT_ID` value given with the
    /// send, or the socket's counter value for that datagram.
    pub key: u32,
    /// The transmit time (PHC time when `hardware`, else CLOCK_REALTIME).
    pub time: KernelTime,
    /// Whether the stamp came from the NIC (slot 2) rather than the driver (slot 0).
    pub hardware: bool,
    /// The stamp type (`ee_info`): [`SCM_TSTAMP_SND`], [`SCM_TSTAMP_SCHED`], ...
    pub tstype: u32,
}

/// The fields of a `struct sock_extended_err` we need.
struct ExtendedErr {
    errno: u32,
    origin: u8,
    info: u32,
    data: u32,
}

/// `struct sock_extended_err { __u32 ee_errno; __u8 ee_origin, ee_type, ee_code, ee_pad; __u32 ee_info; __u32 ee_data; }`
fn parse_extended_err(data: &[u8]) -> Option<ExtendedErr> {
    Some(ExtendedErr {
        errno: read_u32(data, 0)?,
        origin: *data.get(4)?,
        info: read_u32(data, 8)?,
        data: read_u32(data, 12)?,
    })
}

/// Parses the control data of one error-queue message; `Some` only for a
/// timestamp report (`ee_errno` ENOMSG, `ee_origin` SO_EE_ORIGIN_TIMESTAMPING)
/// with a non-zero stamp. The hardware slot wins over the software one.
pub fn parse_errqueue_control(control: &[u8]) -> Option<TxTimestamp> {
    let mut stamps = None;
    let mut ee = None;
    for c in cmsgs(control) {
        match (c.level, c.kind) {
            (SOL_IP, IP_RECVERR) | (SOL_IPV6, IPV6_RECVERR) => {
                ee = parse_extended_err(c.data).or(ee);
            }
            (SOL_SOCKET, SO_TIMESTAMPING_OLD | SO_TIMESTAMPING_NEW) => {
                stamps = parse_scm_timestamping(&c).or(stamps);
            }
            _ => {}
        }
    }
    let ee = ee?;
    if ee.errno != ENOMSG || ee.origin != SO_EE_ORIGIN_TIMESTAMPING {
        return None;
    }
    let (sw, hw) = stamps?;
    let (time, hardware) = match (hw, sw) {
        (Some(t), _) => (t, true),
        (None, Some(t)) => (t, false),
        (None, None) => return None,
    };
    Some(TxTimestamp {
        key: ee.data,
        time,
        hardware,
        tstype: ee.info,
    })
}

// ---------------------------------------------------------------------------
// Send side.

/// A per-reply transmit timestamp request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxTsRequest {
    /// Ask for a driver (software) transmit stamp (`SOF_TIMESTAMPING_TX_SOFTWARE`).
    pub software: bool,
    /// Ask for a NIC (hardware) transmit stamp (`SOF_TIMESTAMPING_TX_HARDWARE`).
    pub hardware: bool,
    /// The key the report should carry (`SCM_TS_OPT_ID`, Linux 6.13+; the
    /// socket needs `SOF_TIMESTAMPING_OPT_ID`). `None`: the socket's counter.
    pub opt_id: Option<u32>,
}

impl TxTsRequest {
    /// The `SOF_TIMESTAMPING_TX_*` generation flags of this request.
    pub const fn flags(&self) -> u32 {
        let mut f = 0;
        if self.software {
            f |= SOF_TIMESTAMPING_TX_SOFTWARE;
        }
        if self.hardware {
            f |= SOF_TIMESTAMPING_TX_HARDWARE;
        }
        f
    }
}

const IN_PKTINFO_LEN: usize = 12;
const IN6_PKTINFO_LEN: usize = 20;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest control data [`build_reply_control`] writes: a PKTINFO
/// (IPv6 is the larger) plus `SO_TIMESTAMPING` plus `SCM_TS_OPT_ID`.
pub const REPLY_CONTROL_SPACE: usize =
    max(cmsg_space(IN_PKTINFO_LEN), cmsg_space(IN6_PKTINFO_LEN)) + 2 * cmsg_space(4);

/// Writes one message at `buf[pos..]` (header, data, zero padding); returns the new position.
fn put_cmsg(buf: &mut [u8], pos: usize, level: i32, kind: i32, data: &[u8]) -> usize {
    let space = cmsg_space(data.len());
    let out = &mut buf[pos..pos + space];
    out.fill(0);
    out[..ALIGN].copy_from_slice(&cmsg_len(data.len()).to_ne_bytes());
    out[ALIGN..ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
    out[ALIGN + 4..ALIGN + 8].copy_from_slice(&kind.to_ne_bytes());
    out[CMSG_HDR_LEN..CMSG_HDR_LEN + data.len()].copy_from_slice(data);
    pos + space
}

/// Builds the control data of a reply into `buf` and returns its length (the
/// `msg_controllen` to send; 0 means no control data).
///
/// * `src = Some((addr, ifindex))`: the source address (the request's
///   [`RxMeta::local_addr`]). IPv4: `IP_PKTINFO` with `ipi_spec_dst = addr`
///   and interface 0 (the route decides). IPv6: `IPV6_PKTINFO` with
///   `ipi6_addr = addr`, and the interface only for a link-local address
///   (which is ambiguous without it).
/// * `tx_ts = Some(req)`: `SO_TIMESTAMPING` with the generation flags (when any)
///   and `SCM_TS_OPT_ID` with the key (when `req.opt_id` is set).
///
/// `buf` should hold [`REPLY_CONTROL_SPACE`] bytes; if it is too small for
/// what is asked, nothing is written and 0 is returned.
pub fn build_reply_control(
    buf: &mut [u8],
    src: Option<(IpAddr, u32)>,
    tx_ts: Option<TxTsRequest>,
) -> usize {
    let flags = tx_ts.map_or(0, |r| r.flags());
    let opt_id = tx_ts.and_then(|r| r.opt_id);
    let needed = match src {
        Some((IpAddr::V4(_), _)) => cmsg_space(IN_PKTINFO_LEN),
        Some((IpAddr::V6(_), _)) => cmsg_space(IN6_PKTINFO_LEN),
        None => 0,
    } + if flags != 0 { cmsg_space(4) } else { 0 }
        + if opt_id.is_some() { cmsg_space(4) } else { 0 };
    if needed > buf.len() {
        return 0;
    }
    let mut pos = 0;
    match src {
        Some((IpAddr::V4(a), _)) => {
            let mut d = [0u8; IN_PKTINFO_LEN];
            // ipi_ifindex = 0, ipi_spec_dst = a, ipi_addr = 0 (ignored on send).
            d[4..8].copy_from_slice(&a.octets());
            pos = put_cmsg(buf, pos, SOL_IP, IP_PKTINFO, &d);
        }
        Some((IpAddr::V6(a), ifindex)) => {
            let mut d = [0u8; IN6_PKTINFO_LEN];
            d[..16].copy_from_slice(&a.octets());
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            let ifi = if link_local { ifindex } else { 0 };
            d[16..20].copy_from_slice(&ifi.to_ne_bytes());
            pos = put_cmsg(buf, pos, SOL_IPV6, IPV6_PKTINFO, &d);
        }
        None => {}
    }
    if flags != 0 {
        pos = put_cmsg(
            buf,
            pos,
            SOL_SOCKET,
            SO_TIMESTAMPING_OLD,
            &flags.to_ne_bytes(),
        );
    }
    if let Some(key) = opt_id {
        pos = put_cmsg(buf, pos, SOL_SOCKET, SCM_TS_OPT_ID, &key.to_ne_bytes());
    }
    pos
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Appends one message to a fixture, by hand.
    fn push(buf: &mut Vec<u8>, level: i32, kind: i32, data: &[u8]) {
        buf.extend_from_slice(&(CMSG_HDR_LEN + data.len()).to_ne_bytes());
        buf.extend_from_slice(&level.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(data);
        while buf.len() % ALIGN != 0 {
            buf.push(0);
        }
    }

    fn timespecs(ts: [(i64, i64); 3]) -> Vec<u8> {
        let mut d = Vec::new();
        for (s, n) in ts {
            d.extend_from_slice(&s.to_ne_bytes());
            d.extend_from_slice(&n.to_ne_bytes());
        }
        d
    }

    fn ee(errno: u32, origin: u8, info: u32, data: u32) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&errno.to_ne_bytes());
        d.extend_from_slice(&[origin, 0, 0, 0]);
        d.extend_from_slice(&info.to_ne_bytes());
        d.extend_from_slice(&data.to_ne_bytes());
        // The offender address the kernel appends (a zeroed sockaddr_in).
        d.extend_from_slice(&[0u8; 16]);
        d
    }

    /// Append an `SO_TIMESTAMPING` message (software, legacy, hardware slots).
    fn push_stamps(buf: &mut Vec<u8>, ts: [(i64, i64); 3]) {
        push(buf, SOL_SOCKET, SO_TIMESTAMPING_OLD, &timespecs(ts));
    }

    #[test]
    fn layout_matches_libc_macros() {
        // SAFETY: CMSG_LEN / CMSG_SPACE are pure arithmetic on their argument.
        let (len4, space4, space12, space20, space48) = unsafe {
            (
                libc::CMSG_LEN(4) as usize,
                libc::CMSG_SPACE(4) as usize,
                libc::CMSG_SPACE(12) as usize,
                libc::CMSG_SPACE(20) as usize,
                libc::CMSG_SPACE(48) as usize,
            )
        };
        assert_eq!(cmsg_len(4), len4);
        assert_eq!(cmsg_space(4), space4);
        assert_eq!(cmsg_space(12), space12);
        assert_eq!(cmsg_space(20), space20);
        assert_eq!(cmsg_space(48), space48);
        assert_eq!(CMSG_HDR_LEN, std::mem::size_of::<libc::cmsghdr>());
        assert_eq!(
            std::mem::offset_of!(libc::cmsghdr, cmsg_level),
            ALIGN,
            "cmsg_level follows size_t cmsg_len"
        );
        assert_eq!(std::mem::size_of::<libc::in_pktinfo>(), IN_PKTINFO_LEN);
        assert_eq!(std::mem::size_of::<libc::in6_pktinfo>(), IN6_PKTINFO_LEN);
        assert_eq!(std::mem::size_of::<libc::sock_extended_err>(), 16);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(REPLY_CONTROL_SPACE, 40 + 24 + 24);
    }

    /// The hand-written constants (the ones taken from libc need no test).
    #[test]
    fn constants_match_libc() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(SO_TIMESTAMPING_OLD, libc::SO_TIMESTAMPING);
        assert_eq!(SO_TIMESTAMPNS_OLD, libc::SO_TIMESTAMPNS);
    }

    /// A fixture built with the libc macros over a zeroed, aligned buffer,
    /// compared byte for byte with the hand-built one.
    #[test]
    fn hand_fixture_equals_libc_macro_fixture() {
        let ts = timespecs([(1_700_000_000, 123_456_789), (0, 0), (0, 0)]);
        let mut hand = Vec::new();
        push(&mut hand, SOL_SOCKET, SO_TIMESTAMPING_OLD, &ts);
        push(
            &mut hand,
            SOL_IP,
            IP_PKTINFO,
            &[2, 0, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1],
        );

        let mut buf = CmsgBuffer::<128>::new();
        let mut hdr: libc::msghdr =
            // SAFETY: msghdr is plain old data; all-zero is a valid value.
            unsafe { std::mem::zeroed() };
        hdr.msg_control = buf.0.as_mut_ptr().cast();
        hdr.msg_controllen = buf.0.len() as _;
        // SAFETY: hdr points at a live, 8-aligned 128-byte buffer; each write
        // stays inside the CMSG_SPACE the macros compute, which fits in 128.
        let total = unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_len = libc::CMSG_LEN(ts.len() as u32) as _;
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SO_TIMESTAMPING;
            std::ptr::copy_nonoverlapping(ts.as_ptr(), libc::CMSG_DATA(c), ts.len());
            let c2 = libc::CMSG_NXTHDR(&hdr, c);
            (*c2).cmsg_len = libc::CMSG_LEN(12) as _;
            (*c2).cmsg_level = libc::IPPROTO_IP;
            (*c2).cmsg_type = libc::IP_PKTINFO;
            let pi = [2u8, 0, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
            std::ptr::copy_nonoverlapping(pi.as_ptr(), libc::CMSG_DATA(c2), 12);
            (libc::CMSG_SPACE(ts.len() as u32) + libc::CMSG_SPACE(12)) as usize
        };
        assert_eq!(hand[..ALIGN], cmsg_len(48).to_ne_bytes());
        assert_eq!(&buf.0[..total], &hand[..]);
    }

    #[test]
    fn software_slot_only() {
        let mut b = Vec::new();
        push_stamps(&mut b, [(1_700_000_000, 5), (0, 0), (0, 0)]);
        let m = parse_rx_control(&b);
        assert_eq!(
            m.software,
            Some(KernelTime {
                sec: 1_700_000_000,
                nsec: 5
            })
        );
        assert_eq!(m.hardware, None);
        assert_eq!(m.local_addr, None);
        assert_eq!(m.ifindex, 0);
    }

    #[test]
    fn rxq_ovfl_drop_count() {
        // The bytes glibc's CMSG macros give for SOL_SOCKET/SO_RXQ_OVFL with
        // a count of 70000 (0x11170): a 16-octet header (len 20), then the u32.
        let mut b = Vec::new();
        b.extend_from_slice(&(CMSG_HDR_LEN + 4).to_ne_bytes());
        b.extend_from_slice(&1i32.to_ne_bytes());
        b.extend_from_slice(&40i32.to_ne_bytes());
        b.extend_from_slice(&70_000u32.to_ne_bytes());
        b.extend_from_slice(&[0; 4]); // padding to CMSG_SPACE(4)
        assert_eq!(b.len(), cmsg_space(4));
        assert_eq!(parse_rx_control(&b).socket_drops, Some(70_000));
        // With stamps and PKTINFO around it, and short data ignored.
        let mut all = Vec::new();
        push_stamps(&mut all, [(1, 2), (0, 0), (0, 0)]);
        all.extend_from_slice(&b);
        push(
            &mut all,
            SOL_IP,
            IP_PKTINFO,
            &[1, 0, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2],
        );
        let m = parse_rx_control(&all);
        assert_eq!(m.socket_drops, Some(70_000));
        assert_eq!(m.software, Some(KernelTime { sec: 1, nsec: 2 }));
        assert!(m.local_addr.is_some());
        let mut short = Vec::new();
        push(&mut short, SOL_SOCKET, SO_RXQ_OVFL, &[1, 2]);
        assert_eq!(parse_rx_control(&short).socket_drops, None);
        assert_eq!(parse_rx_control(&[]).socket_drops, None);
    }

    #[test]
    fn hardware_slot_only() {
        let mut b = Vec::new();
        push_stamps(&mut b, [(0, 0), (0, 0), (1_700_000_037, 999_999_999)]);
        let m = parse_rx_control(&b);
        assert_eq!(m.software, None);
        assert_eq!(
            m.hardware,
            Some(KernelTime {
                sec: 1_700_000_037,
                nsec: 999_999_999
            })
        );
    }

    #[test]
    fn both_slots_and_new_type() {
        for kind in [SO_TIMESTAMPING_OLD, SO_TIMESTAMPING_NEW] {
            let mut b = Vec::new();
            push(
                &mut b,
                SOL_SOCKET,
                kind,
                &timespecs([(10, 20), (77, 77), (30, 40)]),
            );
            let m = parse_rx_control(&b);
            assert_eq!(m.software, Some(KernelTime { sec: 10, nsec: 20 }));
            assert_eq!(m.hardware, Some(KernelTime { sec: 30, nsec: 40 }));
        }
    }

    #[test]
    fn invalid_nanoseconds_are_not_a_stamp() {
        let mut b = Vec::new();
        push_stamps(&mut b, [(10, 1_000_000_000), (0, 0), (30, -1)]);
        let m = parse_rx_control(&b);
        assert_eq!((m.software, m.hardware), (None, None));
    }

    #[test]
    fn pktinfo_v4() {
        let mut b = Vec::new();
        // ifindex 3, spec_dst 192.0.2.1, addr 192.0.2.7
        push(
            &mut b,
            SOL_IP,
            IP_PKTINFO,
            &[3, 0, 0, 0, 192, 0, 2, 1, 192, 0, 2, 7],
        );
        let m = parse_rx_control(&b);
        assert_eq!(m.local_addr, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(m.ifindex, 3);
        assert_eq!(m.software, None);
    }

    #[test]
    fn pktinfo_v6_with_timestamps_and_ts_pktinfo() {
        let addr: Ipv6Addr = "2001:db8::123".parse().unwrap();
        let mut pi = addr.octets().to_vec();
        pi.extend_from_slice(&7u32.to_ne_bytes());
        let mut tsp = Vec::new();
        for v in [5u32, 90, 0, 0] {
            tsp.extend_from_slice(&v.to_ne_bytes());
        }
        let mut b = Vec::new();
        push_stamps(&mut b, [(1, 2), (0, 0), (3, 4)]);
        push(&mut b, SOL_SOCKET, SCM_TIMESTAMPING_PKTINFO, &tsp);
        push(&mut b, SOL_IPV6, IPV6_PKTINFO, &pi);
        let m = parse_rx_control(&b);
        assert_eq!(m.local_addr, Some(IpAddr::V6(addr)));
        assert_eq!(m.ifindex, 7);
        assert_eq!(m.hw_ifindex, Some(5));
        assert_eq!(m.frame_len, Some(90));
        assert_eq!(m.software, Some(KernelTime { sec: 1, nsec: 2 }));
        assert_eq!(m.hardware, Some(KernelTime { sec: 3, nsec: 4 }));
    }

    #[test]
    fn errqueue_software_stamp() {
        let mut b = Vec::new();
        push_stamps(&mut b, [(1_700_000_001, 42), (0, 0), (0, 0)]);
        push(
            &mut b,
            SOL_IP,
            IP_RECVERR,
            &ee(libc::ENOMSG as u32, 4, SCM_TSTAMP_SND, 0xdead_beef),
        );
        assert_eq!(
            parse_errqueue_control(&b),
            Some(TxTimestamp {
                key: 0xdead_beef,
                time: KernelTime {
                    sec: 1_700_000_001,
                    nsec: 42
                },
                hardware: false,
                tstype: SCM_TSTAMP_SND,
            })
        );
    }

    #[test]
    fn errqueue_hardware_stamp_v6_wins_over_software() {
        let mut b = Vec::new();
        // The error first this time: order must not matter.
        push(
            &mut b,
            SOL_IPV6,
            IPV6_RECVERR,
            &ee(libc::ENOMSG as u32, 4, SCM_TSTAMP_SND, 7),
        );
        push_stamps(&mut b, [(100, 1), (0, 0), (137, 2)]);
        let t = parse_errqueue_control(&b).unwrap();
        assert!(t.hardware);
        assert_eq!(t.time, KernelTime { sec: 137, nsec: 2 });
        assert_eq!(t.key, 7);
    }

    #[test]
    fn errqueue_rejects_non_timestamp_errors() {
        let stamps = timespecs([(100, 1), (0, 0), (0, 0)]);
        // An ICMP error (origin 2, ECONNREFUSED) with stamps is not a TX stamp.
        let mut b = Vec::new();
        push(&mut b, SOL_SOCKET, SO_TIMESTAMPING_OLD, &stamps);
        push(
            &mut b,
            SOL_IP,
            IP_RECVERR,
            &ee(libc::ECONNREFUSED as u32, 2, 0, 0),
        );
        assert_eq!(parse_errqueue_control(&b), None);
        // No extended error at all.
        let mut b = Vec::new();
        push(&mut b, SOL_SOCKET, SO_TIMESTAMPING_OLD, &stamps);
        assert_eq!(parse_errqueue_control(&b), None);
        // Extended error but all-zero stamps.
        let mut b = Vec::new();
        push_stamps(&mut b, [(0, 0), (0, 0), (0, 0)]);
        push(
            &mut b,
            SOL_IP,
            IP_RECVERR,
            &ee(libc::ENOMSG as u32, 4, 0, 0),
        );
        assert_eq!(parse_errqueue_control(&b), None);
    }

    #[test]
    fn truncated_and_garbage_input() {
        let mut b = Vec::new();
        push_stamps(&mut b, [(1, 2), (0, 0), (3, 4)]);
        push(
            &mut b,
            SOL_IP,
            IP_PKTINFO,
            &[1, 0, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2],
        );
        // Every prefix parses without panic; a full SCM_TIMESTAMPING keeps its
        // software stamp, shorter ones lose what they cut.
        for n in 0..=b.len() {
            let m = parse_rx_control(&b[..n]);
            if n < CMSG_HDR_LEN + 16 {
                assert_eq!(m.software, None, "prefix {n}");
            }
            // The final padding is not needed; anything shorter than the data is.
            if n < cmsg_space(48) + cmsg_len(IN_PKTINFO_LEN) {
                assert_eq!(m.local_addr, None, "prefix {n}");
            } else {
                assert!(m.local_addr.is_some(), "prefix {n}");
            }
            let _ = parse_errqueue_control(&b[..n]);
        }
        assert_eq!(
            parse_rx_control(&b).local_addr,
            Some("10.0.0.2".parse().unwrap())
        );
        // A header claiming a length below the header size stops the walk.
        let mut bad = vec![0u8; 64];
        bad[..ALIGN].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(cmsgs(&bad).count(), 0);
        // A huge length must not overflow.
        let mut huge = vec![0u8; 64];
        huge[..ALIGN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(cmsgs(&huge).count(), 1);
        assert_eq!(parse_rx_control(&huge), RxMeta::default());
        // A PKTINFO with a short payload is ignored.
        let mut short = Vec::new();
        push(&mut short, SOL_IP, IP_PKTINFO, &[1, 0, 0, 0, 10, 0, 0]);
        assert_eq!(parse_rx_control(&short).local_addr, None);
    }

    #[test]
    fn build_then_parse_pktinfo_v4() {
        let mut buf = CmsgBuffer::<REPLY_CONTROL_SPACE>::new();
        let local: IpAddr = "198.51.100.9".parse().unwrap();
        let n = build_reply_control(&mut buf.0, Some((local, 4)), None);
        assert_eq!(n, cmsg_space(IN_PKTINFO_LEN));
        let c: Vec<_> = cmsgs(&buf.0[..n]).collect();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].level, c[0].kind), (SOL_IP, IP_PKTINFO));
        // ipi_ifindex 0, ipi_spec_dst = local, ipi_addr 0.
        assert_eq!(c[0].data, &[0, 0, 0, 0, 198, 51, 100, 9, 0, 0, 0, 0]);
    }

    #[test]
    fn build_then_parse_pktinfo_v6_link_local_and_global() {
        let mut buf = [0u8; REPLY_CONTROL_SPACE];
        for (addr, ifi, want_ifi) in [("fe80::1", 9u32, 9u32), ("2001:db8::1", 9, 0)] {
            let local: IpAddr = addr.parse().unwrap();
            let n = build_reply_control(&mut buf, Some((local, ifi)), None);
            let m = parse_rx_control(&buf[..n]);
            assert_eq!(m.local_addr, Some(local));
            assert_eq!(m.ifindex, want_ifi, "{addr}");
        }
    }

    #[test]
    fn build_with_tx_request() {
        let mut buf = [0xffu8; REPLY_CONTROL_SPACE];
        let req = TxTsRequest {
            software: true,
            hardware: true,
            opt_id: Some(0x0102_0304),
        };
        let n = build_reply_control(&mut buf, Some(("::1".parse().unwrap(), 1)), Some(req));
        assert_eq!(n, REPLY_CONTROL_SPACE);
        let c: Vec<_> = cmsgs(&buf[..n]).collect();
        assert_eq!(c.len(), 3);
        assert_eq!((c[1].level, c[1].kind), (SOL_SOCKET, SO_TIMESTAMPING_OLD));
        assert_eq!(c[1].data, &3u32.to_ne_bytes());
        assert_eq!((c[2].level, c[2].kind), (SOL_SOCKET, SCM_TS_OPT_ID));
        assert_eq!(c[2].data, &0x0102_0304u32.to_ne_bytes());
        // Padding was zeroed: the SO_TIMESTAMPING message's 4 padding bytes.
        let pad_start = cmsg_space(IN6_PKTINFO_LEN) + cmsg_len(4);
        assert_eq!(&buf[pad_start..pad_start + 4], &[0; 4]);

        // Only an id, no flags: one message.
        let req = TxTsRequest {
            opt_id: Some(5),
            ..Default::default()
        };
        let n = build_reply_control(&mut buf, None, Some(req));
        assert_eq!(n, cmsg_space(4));
        // Too small a buffer: nothing.
        assert_eq!(
            build_reply_control(&mut buf[..10], Some(("::1".parse().unwrap(), 0)), None),
            0
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_rx_control(&bytes);
            let _ = parse_errqueue_control(&bytes);
            prop_assert!(cmsgs(&bytes).count() <= bytes.len() / CMSG_HDR_LEN + 1);
        }

        #[test]
        fn parsers_never_panic_on_plausible_headers(
            len in 0usize..80, level in prop_oneof![Just(0i32), Just(1i32), Just(41i32)],
            kind in 0i32..90, tail in proptest::collection::vec(any::<u8>(), 0..96)
        ) {
            let mut b = Vec::new();
            b.extend_from_slice(&len.to_ne_bytes());
            b.extend_from_slice(&level.to_ne_bytes());
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&tail);
            let _ = parse_rx_control(&b);
            let _ = parse_errqueue_control(&b);
        }
    }
}
