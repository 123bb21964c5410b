//! Network Time Security (RFC 8915).
//!
//! - [`ke_records`]: the NTS-KE record codec and the server's decision for a
//!   request (pure).
//! - [`aead`]: the two AEAD algorithms NTS negotiates, over RustCrypto's
//!   `aes-siv` and `aes-gcm-siv` (no cryptography written here).
//! - [`keys`] and [`cookie`]: the server's master keys (rotation, the shared key
//!   file) and the cookies encrypted under them.
//! - [`ntp`]: the NTS extension fields of NTP requests and replies, processed on
//!   the workers' packet path without allocating.
//! - [`ke_server`]: the NTS-KE server (TLS 1.3 over TCP) on threads of its own.
#![forbid(unsafe_code)]

pub mod aead;
pub mod cookie;
pub mod ke_client;
pub mod ke_records;
pub mod ke_server;
pub mod keys;
pub mod ntp;
pub mod service;

/// The TLS exporter label for NTS keys (RFC 8915 section 5.1).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";

/// The ALPN protocol identifier of NTS-KE (RFC 8915 section 4).
pub const ALPN_NTSKE: &[u8] = b"ntske/1";

/// The default NTS-KE TCP port.
pub const DEFAULT_KE_PORT: u16 = 4460;

/// Cookies handed out in one NTS-KE response (RFC 8915 section 4.1.6 suggests 8).
pub const KE_COOKIES: usize = 8;

/// A file's modification time and length, to notice that it changed (the key
/// file, the NTS-KE certificate and key). `None` when it cannot be read.
pub(crate) fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
