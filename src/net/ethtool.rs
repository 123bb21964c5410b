//! Interface facts from ethtool ioctls (`SIOCETHTOOL`): timestamping
//! capabilities and PHC index (`ETHTOOL_GET_TS_INFO`), link speed
//! (`ETHTOOL_GLINKSETTINGS`, legacy `ETHTOOL_GSET`), and the ifindex.
//!
//! The request structures are not in libc 0.2; they are declared here with
//! `repr(C)` after `include/uapi/linux/ethtool.h`, and the tests assert their
//! sizes and offsets against the header's values.

use std::fmt;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use super::hwtstamp::{HwError, RxFilter, HWTSTAMP_TX_ON};
use super::socket::sof;

use libc::SIOCETHTOOL;
/// `ETHTOOL_GSET` (legacy link settings).
const ETHTOOL_GSET: u32 = 0x0000_0001;
/// `ETHTOOL_GET_TS_INFO`.
const ETHTOOL_GET_TS_INFO: u32 = 0x0000_0041;
/// `ETHTOOL_GLINKSETTINGS`.
const ETHTOOL_GLINKSETTINGS: u32 = 0x0000_004c;
/// `SPEED_UNKNOWN` (-1).
const SPEED_UNKNOWN: u32 = u32::MAX;

/// Checks an interface name the way the kernel will read it (`IFNAMSIZ` = 16 with the NUL).
pub(super) fn check_iface_name(iface: &str) -> Result<(), HwError> {
    let ok = !iface.is_empty()
        && iface.len() < libc::IFNAMSIZ
        && !iface
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(HwError::InvalidName {
            iface: iface.to_string(),
        })
    }
}

/// Runs an interface ioctl (`struct ifreq` with `ifr_data = data`) on a
/// throw-away datagram socket of the calling thread's network namespace.
///
/// # Safety
/// `data` must point to a live, writable object of the size and layout the
/// kernel expects for `request` (and, for ethtool, the sub-command it holds).
pub(super) unsafe fn ifreq_data_ioctl(
    iface: &str,
    request: libc::c_ulong,
    data: *mut libc::c_void,
) -> Result<(), Errno> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data (a name and a union of PODs/pointers); all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.cast();
    // SAFETY: `ifr` is a valid ifreq with a NUL-terminated name (checked
    // shorter than IFNAMSIZ by the callers, the rest zeroed) and `ifru_data`
    // satisfies the caller's contract.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut ifr) };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Maps an ioctl errno to an [`HwError`].
pub(super) fn ioctl_error(iface: &str, what: &'static str, e: Errno) -> HwError {
    let iface = iface.to_string();
    match e {
        Errno::ENODEV | Errno::ENXIO => HwError::NoSuchDevice { iface },
        Errno::EOPNOTSUPP => HwError::NotSupported { iface, what },
        Errno::EPERM | Errno::EACCES => HwError::PermissionDenied { iface, what },
        errno => HwError::Io { iface, what, errno },
    }
}

// ---------------------------------------------------------------------------
// ETHTOOL_GET_TS_INFO.

/// `struct ethtool_ts_info` (44 bytes).
#[repr(C)]
#[derive(Default)]
struct EthtoolTsInfo {
    cmd: u32,
    so_timestamping: u32,
    phc_index: i32,
    tx_types: u32,
    tx_reserved: [u32; 3],
    rx_filters: u32,
    rx_reserved: [u32; 3],
}

/// An interface's timestamping capabilities (`ethtool -T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsInfo {
    /// `SOF_TIMESTAMPING_*` bits the interface supports.
    pub so_timestamping: u32,
    /// The PTP hardware clock index (`/dev/ptpN`), -1 when there is none.
    pub phc_index: i32,
    /// Bit `1 << HWTSTAMP_TX_*` for each supported transmit mode.
    pub tx_types: u32,
    /// Bit `1 << HWTSTAMP_FILTER_*` for each supported receive filter.
    pub rx_filters: u32,
}

impl TsInfo {
    /// The PHC index, if the interface has a PHC.
    pub fn phc(&self) -> Option<u32> {
        u32::try_from(self.phc_index).ok()
    }

    /// Whether the NIC can stamp transmitted packets (`TX_HARDWARE` and `HWTSTAMP_TX_ON`).
    pub fn hw_tx(&self) -> bool {
        self.so_timestamping & sof::TX_HARDWARE != 0 && self.tx_types & (1 << HWTSTAMP_TX_ON) != 0
    }

    /// Whether the NIC can stamp received packets with a filter covering NTP.
    pub fn hw_rx_ntp(&self) -> bool {
        self.so_timestamping & sof::RX_HARDWARE != 0
            && (self.supports_rx_filter(RxFilter::NtpAll) || self.supports_rx_filter(RxFilter::All))
    }

    /// Whether the driver takes software transmit stamps (`skb_tx_timestamp`).
    pub fn sw_tx(&self) -> bool {
        self.so_timestamping & sof::TX_SOFTWARE != 0
    }

    /// Whether `filter` is among the supported receive filters.
    pub fn supports_rx_filter(&self, filter: RxFilter) -> bool {
        let bit = filter.raw();
        bit < 32 && self.rx_filters & (1 << bit) != 0
    }
}

impl fmt::Display for TsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capabilities {:#x}, PHC {}, hardware TX {}, hardware RX for NTP {}, rx filters:",
            self.so_timestamping,
            self.phc()
                .map_or_else(|| "none".to_string(), |i| format!("/dev/ptp{i}")),
            if self.hw_tx() { "yes" } else { "no" },
            if self.hw_rx_ntp() { "yes" } else { "no" },
        )?;
        let mut any = false;
        for bit in 0..32 {
            if self.rx_filters & (1 << bit) != 0 {
                write!(f, " {}", RxFilter::from_raw(bit).name())?;
                any = true;
            }
        }
        if !any {
            write!(f, " none")?;
        }
        Ok(())
    }
}

/// The timestamping capabilities of `iface` (works without privileges).
pub fn ts_info(iface: &str) -> Result<TsInfo, HwError> {
    check_iface_name(iface)?;
    let mut info = EthtoolTsInfo {
        cmd: ETHTOOL_GET_TS_INFO,
        ..Default::default()
    };
    // SAFETY: `info` is a live struct ethtool_ts_info, the layout GET_TS_INFO writes.
    unsafe { ifreq_data_ioctl(iface, SIOCETHTOOL, (&mut info as *mut EthtoolTsInfo).cast()) }
        .map_err(|e| ioctl_error(iface, "ETHTOOL_GET_TS_INFO", e))?;
    Ok(TsInfo {
        so_timestamping: info.so_timestamping,
        phc_index: info.phc_index,
        tx_types: info.tx_types,
        rx_filters: info.rx_filters,
    })
}

// ---------------------------------------------------------------------------
// Link speed.

/// `struct ethtool_link_settings` without its flexible array (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct EthtoolLinkSettings {
    cmd: u32,
    speed: u32,
    duplex: u8,
    port: u8,
    phy_address: u8,
    autoneg: u8,
    mdio_support: u8,
    eth_tp_mdix: u8,
    eth_tp_mdix_ctrl: u8,
    link_mode_masks_nwords: i8,
    transceiver: u8,
    master_slave_cfg: u8,
    master_slave_state: u8,
    rate_matching: u8,
    reserved: [u32; 7],
}

/// The settings plus room for the three link-mode bitmaps the kernel appends
/// (`nwords` is an `s8`, so at most 127 words each).
#[repr(C)]
struct LinkSettingsBuf {
    base: EthtoolLinkSettings,
    masks: [u32; 3 * 127],
}

/// `struct ethtool_cmd` (legacy, 44 bytes).
#[repr(C)]
#[derive(Default)]
struct EthtoolCmd {
    cmd: u32,
    supported: u32,
    advertising: u32,
    speed: u16,
    duplex: u8,
    port: u8,
    phy_address: u8,
    transceiver: u8,
    autoneg: u8,
    mdio_support: u8,
    maxtxpkt: u32,
    maxrxpkt: u32,
    speed_hi: u16,
    eth_tp_mdix: u8,
    eth_tp_mdix_ctrl: u8,
    lp_advertising: u32,
    reserved: [u32; 2],
}

fn known_speed(mbps: u32) -> Option<u32> {
    (mbps != 0 && mbps != SPEED_UNKNOWN && mbps != 0xffff).then_some(mbps)
}

/// The link speed of `iface` in Mb/s: `None` when the driver does not say
/// (virtual devices without link settings, link down, speed unknown).
pub fn link_speed_mbps(iface: &str) -> Result<Option<u32>, HwError> {
    check_iface_name(iface)?;
    let mut buf = LinkSettingsBuf {
        base: EthtoolLinkSettings {
            cmd: ETHTOOL_GLINKSETTINGS,
            ..Default::default()
        },
        masks: [0; 3 * 127],
    };
    // Handshake: with nwords 0 the kernel answers with -(the number it wants).
    // SAFETY: `buf` is a live ethtool_link_settings followed by room for the
    // largest bitmaps nwords (an s8) can ask for; with nwords 0 the kernel
    // writes only the base.
    let first = unsafe {
        ifreq_data_ioctl(
            iface,
            SIOCETHTOOL,
            (&mut buf as *mut LinkSettingsBuf).cast(),
        )
    };
    match first {
        Ok(()) if buf.base.link_mode_masks_nwords < 0 => {
            let nwords = buf.base.link_mode_masks_nwords.unsigned_abs() as i8;
            buf.base = EthtoolLinkSettings {
                cmd: ETHTOOL_GLINKSETTINGS,
                link_mode_masks_nwords: nwords,
                ..Default::default()
            };
            // SAFETY: as above; 3 * nwords <= 3 * 127 words fit in `masks`.
            unsafe {
                ifreq_data_ioctl(
                    iface,
                    SIOCETHTOOL,
                    (&mut buf as *mut LinkSettingsBuf).cast(),
                )
            }
            .map_err(|e| ioctl_error(iface, "ETHTOOL_GLINKSETTINGS", e))?;
            Ok(known_speed(buf.base.speed))
        }
        // Never seen: the kernel accepted nwords 0 outright.
        Ok(()) => Ok(known_speed(buf.base.speed)),
        // Older kernels (< 4.9) lack GLINKSETTINGS; drivers without link settings say the same.
        Err(Errno::EOPNOTSUPP) | Err(Errno::EINVAL) => legacy_speed(iface),
        Err(e) => Err(ioctl_error(iface, "ETHTOOL_GLINKSETTINGS", e)),
    }
}

fn legacy_speed(iface: &str) -> Result<Option<u32>, HwError> {
    let mut cmd = EthtoolCmd {
        cmd: ETHTOOL_GSET,
        ..Default::default()
    };
    // SAFETY: `cmd` is a live struct ethtool_cmd, the layout GSET writes.
    match unsafe { ifreq_data_ioctl(iface, SIOCETHTOOL, (&mut cmd as *mut EthtoolCmd).cast()) } {
        Ok(()) => Ok(known_speed(
            (u32::from(cmd.speed_hi) << 16) | u32::from(cmd.speed),
        )),
        Err(Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(ioctl_error(iface, "ETHTOOL_GSET", e)),
    }
}

/// The interface index of `iface` (`if_nametoindex`).
pub fn ifindex(iface: &str) -> Result<u32, HwError> {
    check_iface_name(iface)?;
    nix::net::if_::if_nametoindex(iface).map_err(|e| ioctl_error(iface, "if_nametoindex", e))
}

// ---------------------------------------------------------------------------

/// Test support: run code in a fresh network namespace holding a veth pair.
#[cfg(test)]
pub(crate) mod testns {
    use std::process::Command;

    /// Runs `f(veth0, veth1)` on a new thread that has unshared its network
    /// namespace and created a veth pair there. The namespace belongs to that
    /// thread only: it (and the veth pair) vanish when the thread ends, even
    /// if `f` panics; nothing leaks into the host. Returns `None` (after
    /// printing a SKIP line) when not root, `ip` is missing, or namespaces or
    /// veth are unavailable.
    pub(crate) fn with_veth<R: Send + 'static>(
        f: impl FnOnce(&str, &str) -> R + Send + 'static,
    ) -> Option<R> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
            println!("SKIP: needs root and iproute2");
            return None;
        }
        let handle = std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                println!("SKIP: cannot create a network namespace: {e}");
                return None;
            }
            // Children inherit this thread's namespace.
            let out = Command::new("ip")
                .args([
                    "link", "add", "hwv0", "type", "veth", "peer", "name", "hwv1",
                ])
                .output()
                .expect("run ip");
            if !out.status.success() {
                println!(
                    "SKIP: cannot create a veth pair: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Some(f("hwv0", "hwv1"))
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn struct_layouts_match_kernel_headers() {
        // Values from include/uapi/linux/ethtool.h (checked with gcc on x86_64).
        assert_eq!(size_of::<EthtoolTsInfo>(), 44);
        assert_eq!(offset_of!(EthtoolTsInfo, phc_index), 8);
        assert_eq!(offset_of!(EthtoolTsInfo, rx_filters), 28);
        assert_eq!(size_of::<EthtoolLinkSettings>(), 48);
        assert_eq!(offset_of!(EthtoolLinkSettings, link_mode_masks_nwords), 15);
        assert_eq!(offset_of!(EthtoolLinkSettings, reserved), 20);
        assert_eq!(offset_of!(LinkSettingsBuf, masks), 48);
        assert_eq!(size_of::<EthtoolCmd>(), 44);
        assert_eq!(offset_of!(EthtoolCmd, speed_hi), 28);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "a/b", "has space", "sixteen-chars-xx", "nul\0"] {
            assert!(
                matches!(ts_info(bad), Err(HwError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ts_info("nosuchif0"),
            Err(HwError::NoSuchDevice { .. })
        ));
        assert!(matches!(
            ifindex("nosuchif0"),
            Err(HwError::NoSuchDevice { .. })
        ));
    }

    fn assert_software_only(info: &TsInfo) {
        assert_eq!(info.phc_index, -1, "{info}");
        assert_eq!(info.phc(), None);
        assert!(info.so_timestamping & sof::RX_SOFTWARE != 0, "{info}");
        assert!(info.so_timestamping & sof::SOFTWARE != 0, "{info}");
        assert!(!info.hw_tx() && !info.hw_rx_ntp(), "{info}");
        assert_eq!(info.rx_filters, 0);
    }

    #[test]
    fn loopback_ts_info_is_software_only() {
        let info = ts_info("lo").unwrap();
        assert_software_only(&info);
        assert_eq!(ifindex("lo").unwrap(), 1);
        assert_eq!(link_speed_mbps("lo").unwrap(), None);
        assert!(info.to_string().contains("PHC none"), "{info}");
    }

    #[test]
    fn veth_ts_info_and_speed() {
        let r = testns::with_veth(|a, b| {
            let info = ts_info(a).unwrap();
            assert_software_only(&info);
            // veth reports 10 Gb/s in its link settings.
            let speed = link_speed_mbps(b).unwrap();
            let lo = ts_info("lo").unwrap();
            (ifindex(a).unwrap(), ifindex(b).unwrap(), speed, lo)
        });
        if let Some((ia, ib, speed, lo)) = r {
            assert!(ia > 1 && ib > 1 && ia != ib);
            assert_eq!(speed, Some(10_000));
            assert_software_only(&lo);
        }
    }
}
