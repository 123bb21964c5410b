//! Where the server's time, and its claims about it, come from.

pub mod phc;
pub mod tracking;
pub mod wire;
