//! hwntpd: an NTP server for bare-metal datacenter time nodes.
//!
//! * [`protocol`]: the pure protocol core (parse, decide, serialise).
//! * [`clock`]: where the server's time and its claims about it come from
//!   (kernel clock state, PTP hardware clocks, the state snapshot workers read).
//! * [`net`]: the Linux layer: sockets, `SO_TIMESTAMPING`, control messages,
//!   NIC hardware timestamping ioctls.
//! * [`server`]: workers, each an io_uring event loop, and their statistics.
//! * [`policy`]: access lists and rate limits (who is served, how often).
//! * [`nts`]: Network Time Security (RFC 8915): NTS-KE server, cookies, and
//!   the NTS extension fields on the packet path.
//! * [`sys`]: process credentials (the privilege drop after start-up).
//! * [`config`]: the command line and the configuration file.
//! * [`logging`]: log output to standard error, its style and live level.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod logging;
pub mod net;
pub mod nts;
pub mod policy;
pub mod protocol;
pub mod sample;
pub mod server;
pub mod sys;
