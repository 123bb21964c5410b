//! Process-level Linux calls: credentials and capabilities.
//!
//! Everything here goes through `nix` (whose wrappers call glibc's), so this
//! module needs no `unsafe` of its own; it stays in a layer of its own because
//! what it changes (the identity of every thread) is the process's, not one
//! socket's.
#![forbid(unsafe_code)]

pub mod privileges;
