//! Choosing the timestamp sources at start-up, and saying which were obtained
//! and why.
//!
//! Receive: NIC hardware where `--interface` NICs accept a receive filter that
//! covers NTP, else kernel software timestamps, else (only with
//! `--timestamping user`) a clock read right after the datagram is taken from
//! the ring. Transmit (for interleaved mode): hardware where the NIC stamps
//! transmitted packets, else kernel software; collected through io_uring's
//! socket command where the kernel has it (Linux 6.15+), else from the error queue.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::clock::phc::phc_path;
use crate::config::{Args, TimestampingArg};
use crate::net::ethtool::{link_speed_mbps, ts_info};
use crate::net::hwtstamp::set_hw_timestamping;
use crate::net::socket::{enable_timestamping, probe_scm_ts_opt_id, TimestampingConfig};
use crate::net::uring::probe_tx_timestamp_command;
use crate::server::metrics::TimestampingSummary;
use crate::server::worker::{RxTimestamps, TxTimestampMode};

/// What the workers will use.
#[derive(Clone, Debug)]
pub struct TimestampingPlan {
    /// Receive timestamp source.
    pub rx: RxTimestamps,
    /// Some NIC timestamps received packets.
    pub rx_hardware: bool,
    /// Some NIC timestamps transmitted packets.
    pub tx_hardware: bool,
    /// How transmit timestamps are collected.
    pub tx_mode: TxTimestampMode,
    /// Pass each reply's key with `SCM_TS_OPT_ID`.
    pub explicit_tx_key: bool,
    /// The PHC of the first interface that timestamps in hardware.
    pub phc: Option<PathBuf>,
    /// Its link speed (for the receive wire-time correction), if known.
    pub link_speed_mbps: Option<u32>,
    /// The `--interface` NICs that accepted hardware timestamping (checked
    /// while serving: [`crate::server::tscheck`]).
    pub hw_interfaces: Vec<String>,
    socket: Option<TimestampingConfig>,
}

impl TimestampingPlan {
    /// Set `SO_TIMESTAMPING` on a socket as planned.
    pub fn apply(&self, fd: &OwnedFd) -> std::io::Result<()> {
        match &self.socket {
            Some(cfg) => enable_timestamping(fd.as_fd(), cfg).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The sources in short (metrics, systemd's STATUS).
    pub fn summary(&self) -> TimestampingSummary {
        TimestampingSummary {
            rx: match (self.rx, self.rx_hardware) {
                (RxTimestamps::User, _) => "user",
                (RxTimestamps::Kernel, true) => "hardware",
                (RxTimestamps::Kernel, false) => "kernel",
            },
            tx: match (self.tx_mode, self.tx_hardware) {
                (TxTimestampMode::Off, _) => "off",
                (_, true) => "hardware",
                (_, false) => "kernel",
            },
            text: format!(
                "RX timestamps: {}; TX timestamps: {}",
                self.rx_description(),
                self.tx_description()
            ),
        }
    }

    /// Receive source, for the log.
    pub fn rx_description(&self) -> &'static str {
        match (self.rx, self.rx_hardware) {
            (RxTimestamps::User, _) => "user space (clock read after receipt)",
            (RxTimestamps::Kernel, true) => {
                "hardware (NIC), kernel software where the NIC gives none"
            }
            (RxTimestamps::Kernel, false) => "kernel software",
        }
    }

    /// Transmit source and collection, for the log.
    pub fn tx_description(&self) -> String {
        let kind = if self.tx_hardware {
            "hardware (NIC)"
        } else {
            "kernel software"
        };
        match self.tx_mode {
            TxTimestampMode::Off => {
                "off (basic mode only: transmit read just before the send)".into()
            }
            TxTimestampMode::UringCommand => {
                format!("{kind}, collected by io_uring's TX-timestamp socket command")
            }
            TxTimestampMode::ErrorQueue => format!("{kind}, collected from the socket error queue"),
            TxTimestampMode::AfterSend => {
                format!("{kind}, read from the socket error queue right after each send")
            }
        }
    }
}

/// Decide the timestamp sources, turning on NIC hardware timestamping on the
/// `--interface` NICs. Logs what was obtained and why.
pub fn plan(args: &Args) -> Result<TimestampingPlan> {
    let want_hw = matches!(
        args.timestamping,
        TimestampingArg::Auto | TimestampingArg::Hardware
    );
    let (mut rx_hw, mut tx_hw) = (false, false);
    let (mut phc, mut link_speed) = (None, None);
    let mut hw_interfaces = Vec::new();
    if want_hw {
        if args.interfaces.is_empty() {
            if args.timestamping == TimestampingArg::Hardware {
                bail!("--timestamping hardware needs --interface IFACE (the NIC whose clock stamps packets)");
            }
            tracing::info!("no --interface given: hardware timestamping not attempted, using kernel software timestamps");
        }
        for iface in &args.interfaces {
            match set_hw_timestamping(iface) {
                Ok(outcome) => {
                    tracing::info!(interface = %iface, "hardware timestamping: {outcome}");
                    rx_hw |= outcome.rx_hardware;
                    tx_hw |= outcome.tx_on;
                    if outcome.rx_hardware || outcome.tx_on {
                        hw_interfaces.push(iface.clone());
                    }
                    if phc.is_none() {
                        match ts_info(iface).map(|i| i.phc()) {
                            Ok(Some(index)) => {
                                tracing::info!(interface = %iface, phc = %phc_path(index).display(), "NIC clock found");
                                phc = Some(phc_path(index));
                            }
                            Ok(None) => {
                                tracing::warn!(interface = %iface, "the NIC reports no PTP hardware clock")
                            }
                            Err(e) => {
                                tracing::warn!(interface = %iface, "cannot find the NIC's PTP hardware clock: {e}")
                            }
                        }
                    }
                    if link_speed.is_none() {
                        link_speed = link_speed_mbps(iface).ok().flatten();
                    }
                }
                Err(e) => tracing::warn!(
                    interface = %iface,
                    "hardware timestamping unavailable ({e}); serving kernel software timestamps"
                ),
            }
        }
        if args.timestamping == TimestampingArg::Hardware && !rx_hw && !tx_hw {
            bail!("--timestamping hardware: no --interface NIC gives hardware timestamps (see the warnings above)");
        }
    }

    let user = args.timestamping == TimestampingArg::User;
    let tx_mode = if user || args.interleave_entries == 0 {
        TxTimestampMode::Off
    } else if !tx_hw {
        tracing::info!("transmit timestamps: kernel software stamps, read from the error queue right after each send (nothing armed on the socket to wake between a stamp and the packet's departure)");
        TxTimestampMode::AfterSend
    } else if probe_tx_timestamp_command() {
        tracing::info!(
            "transmit timestamps: io_uring TX-timestamp command available (Linux 6.15+)"
        );
        TxTimestampMode::UringCommand
    } else {
        tracing::info!("transmit timestamps: io_uring TX-timestamp command unavailable; reading the error queue");
        TxTimestampMode::ErrorQueue
    };
    let explicit_tx_key = tx_mode != TxTimestampMode::Off && probe_scm_ts_opt_id().unwrap_or(false);
    if tx_mode != TxTimestampMode::Off && !explicit_tx_key {
        tracing::info!("SCM_TS_OPT_ID unavailable (Linux 6.13+): matching transmit timestamps by the socket's counter");
    }
    let socket = (!user).then(|| TimestampingConfig {
        rx_software: true,
        rx_hardware: rx_hw,
        // reporting only: generation is asked per reply, so basic replies never pay
        tx_software: tx_mode != TxTimestampMode::Off,
        tx_hardware: tx_hw && tx_mode != TxTimestampMode::Off,
        opt_id: tx_mode != TxTimestampMode::Off,
        tsonly: tx_mode != TxTimestampMode::Off,
        // the frame length of hardware-stamped packets, for the wire-time correction
        pktinfo: rx_hw,
        bind_phc: None,
    });
    Ok(TimestampingPlan {
        rx: if user {
            RxTimestamps::User
        } else {
            RxTimestamps::Kernel
        },
        rx_hardware: rx_hw,
        tx_hardware: tx_hw,
        tx_mode,
        explicit_tx_key,
        phc,
        link_speed_mbps: link_speed,
        hw_interfaces,
        socket,
    })
}
