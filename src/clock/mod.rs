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
//!
//! Start-up sequence for the lead: `let precision = measure_precision();`,
//! build a [`ReferenceConfig`] (refid via [`crate::protocol::refid::encode_refid`]),
//! `cfg.validate()?`, `let cell = Arc::new(StateCell::new(initial_state(&cfg)));`,
//! then `spawn_refresher(cfg, cell.clone(), stop.clone())?`.

pub mod kernel;
pub mod precision;
pub mod realtime;
pub mod reference;
pub mod snapshot;

pub use kernel::{read_kernel_clock, KernelClock};
pub use precision::measure_precision;
pub use realtime::{now, now_unix};
pub use reference::{
    compute_state, ReferenceConfig, ReferenceConfigError, ReferenceKind, ReferenceTracker,
};
pub use snapshot::{initial_state, spawn_refresher, StateCell};
