//! Where the server's time, and its claims about it, come from.
//!
//! * [`realtime`]: reading `CLOCK_REALTIME` ([`now`], [`now_unix`]).
//! * [`precision`]: the clock's reading precision, measured at start-up.
//! * [`kernel`]: the kernel clock state from a read-only `adjtimex`, and the
//!   pure rules for leap seconds, synchronisation and root dispersion.
//! * [`reference`](mod@reference): the reference configuration (`--reference system|local`)
//!   and [`compute_state`], which turns a kernel reading into a [`ServerState`](crate::protocol::ServerState).
//! * [`snapshot`]: the [`StateCell`] workers read per packet, and the thread
//!   that refreshes it every second.
//! * [`phc`]: PTP hardware clocks (`/dev/ptpN`): capabilities and the
//!   PHC-to-system offset by the best ioctl the device has.
//! * [`tracking`]: offset and frequency of a PHC against `CLOCK_REALTIME` by
//!   regression, conversions between the two time domains and TAI/UTC.
//! * [`wire`]: wire-time correction of hardware receive timestamps.
//! * [`domain`]: converting software and hardware timestamps to served time.
//! * [`phc_service`]: the thread that polls the PHC, tracks it and, with
//!   `--reference phc`, publishes the server state.
//! * [`mirror`]: `--reference ntp:ADDR`, mirroring a local daemon's header.

pub mod domain;
pub mod kernel;
pub mod mirror;
pub mod phc;
pub mod phc_service;
pub mod precision;
pub mod realtime;
pub mod reference;
pub mod snapshot;
pub mod tracking;
pub mod wire;

pub use kernel::{read_kernel_clock, KernelClock};
pub use precision::measure_precision;
pub use realtime::{now, now_unix};
pub use reference::{
    compute_state, ReferenceConfig, ReferenceConfigError, ReferenceKind, ReferenceTracker,
};
pub use snapshot::{initial_state, spawn_refresher, StateCell};
