//! The pure protocol core: no I/O, no clock reads, no `unsafe`.
//!
//! [`server::respond`] takes the request bytes, the receive timestamp, the
//! server's clock state and the interleaved-mode table, and either writes a reply
//! into a caller's buffer or says why it drops the request.
#![forbid(unsafe_code)]

pub mod packet;
pub mod refid;
pub mod server;
pub mod state;
pub mod timestamp;

pub use state::{LeapIndicator, ServerState};
pub use timestamp::{NtpShort, NtpTimestamp};
