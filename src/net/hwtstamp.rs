//! NIC hardware timestamping configuration: `SIOCSHWTSTAMP` / `SIOCGHWTSTAMP`
//! with `struct hwtstamp_config` (`include/uapi/linux/net_tstamp.h`).
//!
//! [`set_hw_timestamping`] tries, in order: TX on with the NTP receive filter,
//! TX on with the all-packets filter, keeping the current configuration if it
//! already fits, and finally TX on with no receive filter (hardware TX,
//! software RX: e.g. igb, whose receive filters refuse ALL and NTP_ALL with
//! ERANGE). The outcome records every refusal so the log can say exactly what
//! was obtained and why.

use std::fmt;

use nix::errno::Errno;

use super::ethtool::{check_iface_name, ifreq_data_ioctl, ioctl_error};

use libc::{SIOCGHWTSTAMP, SIOCSHWTSTAMP};

/// `HWTSTAMP_TX_OFF`.
pub const HWTSTAMP_TX_OFF: u32 = libc::HWTSTAMP_TX_OFF;
/// `HWTSTAMP_TX_ON`.
pub const HWTSTAMP_TX_ON: u32 = libc::HWTSTAMP_TX_ON;

/// A hardware receive filter (`HWTSTAMP_FILTER_*`): which received packets the NIC stamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxFilter {
    /// `NONE`: no packet.
    None,
    /// `ALL`: every packet.
    All,
    /// `SOME`: (answer only) what was asked plus some others.
    Some,
    /// `PTP_V1_L4_EVENT`.
    PtpV1L4Event,
    /// `PTP_V1_L4_SYNC`.
    PtpV1L4Sync,
    /// `PTP_V1_L4_DELAY_REQ`.
    PtpV1L4DelayReq,
    /// `PTP_V2_L4_EVENT`.
    PtpV2L4Event,
    /// `PTP_V2_L4_SYNC`.
    PtpV2L4Sync,
    /// `PTP_V2_L4_DELAY_REQ`.
    PtpV2L4DelayReq,
    /// `PTP_V2_L2_EVENT`.
    PtpV2L2Event,
    /// `PTP_V2_L2_SYNC`.
    PtpV2L2Sync,
    /// `PTP_V2_L2_DELAY_REQ`.
    PtpV2L2DelayReq,
    /// `PTP_V2_EVENT`.
    PtpV2Event,
    /// `PTP_V2_SYNC`.
    PtpV2Sync,
    /// `PTP_V2_DELAY_REQ`.
    PtpV2DelayReq,
    /// `NTP_ALL`: all NTP packets.
    NtpAll,
    /// A value this code does not know.
    Other(u32),
}

const RX_FILTERS: [(RxFilter, &str); 16] = [
    (RxFilter::None, "NONE"),
    (RxFilter::All, "ALL"),
    (RxFilter::Some, "SOME"),
    (RxFilter::PtpV1L4Event, "PTP_V1_L4_EVENT"),
    (RxFilter::PtpV1L4Sync, "PTP_V1_L4_SYNC"),
    (RxFilter::PtpV1L4DelayReq, "PTP_V1_L4_DELAY_REQ"),
    (RxFilter::PtpV2L4Event, "PTP_V2_L4_EVENT"),
    (RxFilter::PtpV2L4Sync, "PTP_V2_L4_SYNC"),
    (RxFilter::PtpV2L4DelayReq, "PTP_V2_L4_DELAY_REQ"),
    (RxFilter::PtpV2L2Event, "PTP_V2_L2_EVENT"),
    (RxFilter::PtpV2L2Sync, "PTP_V2_L2_SYNC"),
    (RxFilter::PtpV2L2DelayReq, "PTP_V2_L2_DELAY_REQ"),
    (RxFilter::PtpV2Event, "PTP_V2_EVENT"),
    (RxFilter::PtpV2Sync, "PTP_V2_SYNC"),
    (RxFilter::PtpV2DelayReq, "PTP_V2_DELAY_REQ"),
    (RxFilter::NtpAll, "NTP_ALL"),
];

impl RxFilter {
    /// The filter for a kernel value.
    pub fn from_raw(v: u32) -> RxFilter {
        RX_FILTERS
            .get(v as usize)
            .map_or(RxFilter::Other(v), |(f, _)| *f)
    }

    /// The kernel value (`HWTSTAMP_FILTER_*`).
    pub fn raw(self) -> u32 {
        match self {
            RxFilter::Other(v) => v,
            f => RX_FILTERS
                .iter()
                .position(|(g, _)| *g == f)
                .map_or(u32::MAX, |i| i as u32),
        }
    }

    /// The kernel's name without the `HWTSTAMP_FILTER_` prefix (`"NTP_ALL"`), or `"UNKNOWN"`.
    pub fn name(self) -> &'static str {
        match self {
            RxFilter::Other(_) => "UNKNOWN",
            f => RX_FILTERS
                .iter()
                .find(|(g, _)| *g == f)
                .map_or("UNKNOWN", |(_, n)| n),
        }
    }
}

impl fmt::Display for RxFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RxFilter::Other(v) => write!(f, "filter {v}"),
            x => f.write_str(x.name()),
        }
    }
}

/// One refused `SIOCSHWTSTAMP` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwAttempt {
    /// Whether TX stamping was asked for.
    pub tx_on: bool,
    /// The receive filter asked for.
    pub rx_filter: RxFilter,
    /// The driver's answer.
    pub errno: Errno,
}

impl fmt::Display for HwAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tx {} rx {} refused ({:?})",
            if self.tx_on { "ON" } else { "OFF" },
            self.rx_filter,
            self.errno
        )
    }
}

/// What [`set_hw_timestamping`] obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwTimestampingOutcome {
    /// The interface.
    pub iface: String,
    /// The NIC stamps transmitted packets (tx_type ON as the driver reports it).
    pub tx_on: bool,
    /// The receive filter in force, as the driver reported it back.
    pub rx_filter: RxFilter,
    /// The NIC stamps received NTP packets (the filter covers them).
    pub rx_hardware: bool,
    /// The configuration was already in place (read with `SIOCGHWTSTAMP`)
    /// rather than set by us.
    pub already_configured: bool,
    /// The requests refused on the way, in order.
    pub failed: Vec<HwAttempt>,
}

impl HwTimestampingOutcome {
    /// The refused receive filters and their errors, e.g. `"rx filters NTP_ALL and ALL refused (ERANGE)"`.
    fn refusals(&self) -> Option<String> {
        let rx: Vec<&HwAttempt> = self
            .failed
            .iter()
            .filter(|a| a.rx_filter != RxFilter::None)
            .collect();
        if rx.is_empty() {
            return None;
        }
        let names: Vec<String> = rx.iter().map(|a| a.rx_filter.to_string()).collect();
        let same = rx.iter().all(|a| a.errno == rx[0].errno);
        let noun = if rx.len() == 1 { "filter" } else { "filters" };
        Some(if same {
            format!(
                "rx {noun} {} refused ({:?})",
                names.join(" and "),
                rx[0].errno
            )
        } else {
            let each: Vec<String> = rx
                .iter()
                .map(|a| format!("{} ({:?})", a.rx_filter, a.errno))
                .collect();
            format!("rx {noun} {} refused", each.join(" and "))
        })
    }
}

impl fmt::Display for HwTimestampingOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tx = if self.tx_on { "hardware" } else { "software" };
        if self.rx_hardware {
            write!(f, "{tx} TX, hardware RX (filter {})", self.rx_filter)?;
        } else {
            write!(f, "{tx} TX, software RX")?;
        }
        if self.already_configured {
            write!(f, ", as already configured on {}", self.iface)?;
        }
        if let Some(r) = self.refusals() {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// Errors of the NIC ioctls ([`set_hw_timestamping`] and [`crate::net::ethtool`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HwError {
    /// Not a possible interface name.
    InvalidName {
        /// The name given.
        iface: String,
    },
    /// No such interface (in this network namespace).
    NoSuchDevice {
        /// The name given.
        iface: String,
    },
    /// The driver does not implement the request (EOPNOTSUPP): veth, lo, bridges...
    NotSupported {
        /// The interface.
        iface: String,
        /// The request.
        what: &'static str,
    },
    /// Changing the configuration needs CAP_NET_ADMIN.
    PermissionDenied {
        /// The interface.
        iface: String,
        /// The request.
        what: &'static str,
    },
    /// Every configuration was refused and the current one does not fit.
    Refused {
        /// The interface.
        iface: String,
        /// The refused requests, in order.
        attempts: Vec<HwAttempt>,
    },
    /// Another error.
    Io {
        /// The interface.
        iface: String,
        /// The request.
        what: &'static str,
        /// The error.
        errno: Errno,
    },
}

impl fmt::Display for HwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HwError::InvalidName { iface } => {
                write!(f, "{iface:?} is not a valid interface name")
            }
            HwError::NoSuchDevice { iface } => write!(f, "no network interface named {iface}"),
            HwError::NotSupported { iface, what } if what.contains("HWTSTAMP") => write!(
                f,
                "{iface} has no hardware timestamping ({what}: operation not supported; \
                 virtual interfaces such as veth, lo and bridges never have it)"
            ),
            HwError::NotSupported { iface, what } => {
                write!(f, "{iface}: {what} is not supported by the driver")
            }
            HwError::PermissionDenied { iface, what } => write!(
                f,
                "{iface}: {what} needs CAP_NET_ADMIN: run as root or grant the capability"
            ),
            HwError::Refused { iface, attempts } => {
                write!(f, "{iface} refused every hardware timestamping mode:")?;
                for (i, a) in attempts.iter().enumerate() {
                    write!(f, "{} {a}", if i == 0 { "" } else { ";" })?;
                }
                Ok(())
            }
            HwError::Io { iface, what, errno } => {
                write!(f, "{iface}: {what} failed: {}", errno.desc())
            }
        }
    }
}

impl std::error::Error for HwError {}

/// Whether a receive filter read back from the driver stamps NTP packets.
fn filter_covers_ntp(f: RxFilter) -> bool {
    matches!(f, RxFilter::All | RxFilter::NtpAll)
}

fn hwtstamp_ioctl(
    iface: &str,
    request: libc::c_ulong,
    cfg: &mut libc::hwtstamp_config,
) -> Result<(), Errno> {
    // SAFETY: `cfg` is a live struct hwtstamp_config, what both ioctls read and write.
    unsafe { ifreq_data_ioctl(iface, request, (cfg as *mut libc::hwtstamp_config).cast()) }
}

/// Tries `tx_type` / `rx_filter`; on success returns the configuration the driver reported back.
fn try_set(iface: &str, tx_on: bool, rx: RxFilter) -> Result<libc::hwtstamp_config, Errno> {
    let mut cfg = libc::hwtstamp_config {
        flags: 0,
        tx_type: if tx_on {
            HWTSTAMP_TX_ON
        } else {
            HWTSTAMP_TX_OFF
        } as libc::c_int,
        rx_filter: rx.raw() as libc::c_int,
    };
    hwtstamp_ioctl(iface, SIOCSHWTSTAMP, &mut cfg)?;
    Ok(cfg)
}

/// The current configuration of `iface` (`SIOCGHWTSTAMP`, Linux 3.14+): (tx on, rx filter).
pub fn get_hw_timestamping(iface: &str) -> Result<(bool, RxFilter), HwError> {
    check_iface_name(iface)?;
    let mut cfg = libc::hwtstamp_config {
        flags: 0,
        tx_type: 0,
        rx_filter: 0,
    };
    hwtstamp_ioctl(iface, SIOCGHWTSTAMP, &mut cfg)
        .map_err(|e| ioctl_error(iface, "SIOCGHWTSTAMP", e))?;
    Ok((
        cfg.tx_type as u32 == HWTSTAMP_TX_ON,
        RxFilter::from_raw(cfg.rx_filter as u32),
    ))
}

/// Switches on hardware timestamping on `iface` (needs CAP_NET_ADMIN), as
/// much of it as the NIC allows; see the module documentation for the order.
/// `Err(HwError::NotSupported)` for drivers without it (veth, lo).
pub fn set_hw_timestamping(iface: &str) -> Result<HwTimestampingOutcome, HwError> {
    check_iface_name(iface)?;
    let mut failed = Vec::new();
    let outcome = |cfg: libc::hwtstamp_config, failed: Vec<HwAttempt>, already: bool| {
        let rx_filter = RxFilter::from_raw(cfg.rx_filter as u32);
        HwTimestampingOutcome {
            iface: iface.to_string(),
            tx_on: cfg.tx_type as u32 == HWTSTAMP_TX_ON,
            rx_filter,
            // A driver may answer a request with a wider filter, SOME included.
            rx_hardware: filter_covers_ntp(rx_filter) || (!already && rx_filter == RxFilter::Some),
            already_configured: already,
            failed,
        }
    };
    const WHAT: &str = "SIOCSHWTSTAMP";
    let mut denied = false;
    for rx in [RxFilter::NtpAll, RxFilter::All] {
        match try_set(iface, true, rx) {
            Ok(cfg) => return Ok(outcome(cfg, failed, false)),
            Err(Errno::EOPNOTSUPP) => {
                return Err(ioctl_error(iface, WHAT, Errno::EOPNOTSUPP));
            }
            Err(e @ (Errno::ENODEV | Errno::ENXIO)) => return Err(ioctl_error(iface, WHAT, e)),
            Err(e @ (Errno::EPERM | Errno::EACCES)) => {
                failed.push(HwAttempt {
                    tx_on: true,
                    rx_filter: rx,
                    errno: e,
                });
                denied = true;
                break;
            }
            Err(errno) => failed.push(HwAttempt {
                tx_on: true,
                rx_filter: rx,
                errno,
            }),
        }
    }
    // Maybe it is already configured suitably (by ptp4l, or by us earlier).
    let mut current = libc::hwtstamp_config {
        flags: 0,
        tx_type: 0,
        rx_filter: 0,
    };
    if hwtstamp_ioctl(iface, SIOCGHWTSTAMP, &mut current).is_ok()
        && current.tx_type as u32 == HWTSTAMP_TX_ON
        && filter_covers_ntp(RxFilter::from_raw(current.rx_filter as u32))
    {
        return Ok(outcome(current, failed, true));
    }
    if denied {
        return Err(ioctl_error(iface, WHAT, Errno::EPERM));
    }
    match try_set(iface, true, RxFilter::None) {
        Ok(cfg) => Ok(outcome(cfg, failed, false)),
        Err(errno) => {
            failed.push(HwAttempt {
                tx_on: true,
                rx_filter: RxFilter::None,
                errno,
            });
            Err(HwError::Refused {
                iface: iface.to_string(),
                attempts: failed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ethtool::testns;

    #[test]
    fn constants_and_layout_match_libc() {
        assert_eq!(SIOCSHWTSTAMP, libc::SIOCSHWTSTAMP);
        assert_eq!(SIOCGHWTSTAMP, libc::SIOCGHWTSTAMP);
        assert_eq!(HWTSTAMP_TX_ON, libc::HWTSTAMP_TX_ON);
        assert_eq!(RxFilter::NtpAll.raw(), libc::HWTSTAMP_FILTER_NTP_ALL);
        assert_eq!(RxFilter::All.raw(), libc::HWTSTAMP_FILTER_ALL);
        assert_eq!(RxFilter::None.raw(), libc::HWTSTAMP_FILTER_NONE);
        assert_eq!(
            RxFilter::PtpV2DelayReq.raw(),
            libc::HWTSTAMP_FILTER_PTP_V2_DELAY_REQ
        );
        assert_eq!(std::mem::size_of::<libc::hwtstamp_config>(), 12);
    }

    #[test]
    fn rx_filter_names_round_trip() {
        for v in 0..20 {
            assert_eq!(RxFilter::from_raw(v).raw(), v);
        }
        assert_eq!(RxFilter::from_raw(15), RxFilter::NtpAll);
        assert_eq!(RxFilter::NtpAll.to_string(), "NTP_ALL");
        assert_eq!(RxFilter::from_raw(99).to_string(), "filter 99");
    }

    #[test]
    fn outcome_messages() {
        let igb = HwTimestampingOutcome {
            iface: "eth0".into(),
            tx_on: true,
            rx_filter: RxFilter::None,
            rx_hardware: false,
            already_configured: false,
            failed: vec![
                HwAttempt {
                    tx_on: true,
                    rx_filter: RxFilter::NtpAll,
                    errno: Errno::ERANGE,
                },
                HwAttempt {
                    tx_on: true,
                    rx_filter: RxFilter::All,
                    errno: Errno::ERANGE,
                },
            ],
        };
        assert_eq!(
            igb.to_string(),
            "hardware TX, software RX: rx filters NTP_ALL and ALL refused (ERANGE)"
        );
        let mut mixed = igb.clone();
        mixed.failed[1].errno = Errno::EINVAL;
        assert_eq!(
            mixed.to_string(),
            "hardware TX, software RX: rx filters NTP_ALL (ERANGE) and ALL (EINVAL) refused"
        );
        let full = HwTimestampingOutcome {
            rx_filter: RxFilter::All,
            rx_hardware: true,
            failed: igb.failed[..1].to_vec(),
            ..igb.clone()
        };
        assert_eq!(
            full.to_string(),
            "hardware TX, hardware RX (filter ALL): rx filter NTP_ALL refused (ERANGE)"
        );
        let e = HwError::Refused {
            iface: "eth0".into(),
            attempts: igb.failed.clone(),
        };
        assert_eq!(
            e.to_string(),
            "eth0 refused every hardware timestamping mode: tx ON rx NTP_ALL refused (ERANGE); tx ON rx ALL refused (ERANGE)"
        );
    }

    fn assert_not_supported(iface: &str) {
        let e = set_hw_timestamping(iface).unwrap_err();
        assert!(
            matches!(
                &e,
                HwError::NotSupported {
                    what: "SIOCSHWTSTAMP",
                    ..
                }
            ),
            "{iface}: {e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{iface} has no hardware timestamping")),
            "{e}"
        );
        let g = get_hw_timestamping(iface).unwrap_err();
        assert!(
            matches!(
                &g,
                HwError::NotSupported {
                    what: "SIOCGHWTSTAMP",
                    ..
                }
            ),
            "{iface}: {g:?}"
        );
    }

    #[test]
    fn veth_and_loopback_are_not_supported() {
        testns::with_veth(|a, _| {
            assert_not_supported(a);
            assert_not_supported("lo");
        });
    }

    #[test]
    fn missing_interface() {
        assert!(matches!(
            set_hw_timestamping("nosuchif0"),
            Err(HwError::NoSuchDevice { .. })
        ));
        assert!(matches!(
            set_hw_timestamping("bad/name"),
            Err(HwError::InvalidName { .. })
        ));
    }
}
