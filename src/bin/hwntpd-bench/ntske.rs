//! The NTS client options `load` and `query` share, and the NTS-KE session
//! both start with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use hwntpd::nts::ntp::client::Session;
use hwntpd::nts::{ke_client, ke_records, ALPN_NTSKE};

/// NTS options (RFC 8915).
#[derive(clap::Args, Debug, Clone)]
pub struct NtsArgs {
    /// Speak NTS (RFC 8915): one NTS-KE session with this server first, then
    /// every request carries a cookie, a fresh Unique Identifier and an
    /// Authenticator. `load` counts a reply as answered only if it carries NTS
    /// fields (a NAK counts as a KoD); `query` verifies each reply's
    /// Authenticator and prints `nts: authenticated`.
    #[arg(long, value_name = "ADDR:PORT", requires = "nts_ca")]
    pub nts_ke: Option<SocketAddr>,
    /// PEM file of the CA (or certificate) the NTS-KE server's certificate chains to.
    #[arg(long, value_name = "PATH")]
    pub nts_ca: Option<PathBuf>,
    /// Name to verify the NTS-KE certificate for (default: the --nts-ke address).
    #[arg(long)]
    pub nts_name: Option<String>,
    /// AEAD to offer (15: AES-SIV-CMAC-256, as chrony prefers; 30: AES-128-GCM-SIV).
    #[arg(long, default_value_t = 15)]
    pub nts_aead: u16,
}

impl NtsArgs {
    /// One NTS-KE session with `--nts-ke` (None without it): the keys for the
    /// AEAD the server chose and the cookies it handed out (at least one).
    pub fn session(&self) -> anyhow::Result<Option<Session>> {
        let Some(ke) = self.nts_ke else {
            return Ok(None);
        };
        let ca = self.nts_ca.as_ref().context("--nts-ke needs --nts-ca")?;
        let name = self.nts_name.clone().unwrap_or_else(|| ke.ip().to_string());
        let cfg = ke_client::client_config(ca, &[ALPN_NTSKE])?;
        let out = ke_client::exchange(
            cfg,
            ke,
            &name,
            &ke_records::client_request(&[self.nts_aead]),
            Duration::from_secs(5),
        )
        .with_context(|| format!("NTS-KE session with {ke}"))?;
        let keys = out
            .keys
            .with_context(|| format!("NTS-KE: no AEAD in common: {:?}", out.response))?;
        if out.response.cookies.is_empty() {
            bail!("NTS-KE: no cookie");
        }
        Ok(Some(Session {
            keys,
            cookies: out.response.cookies,
        }))
    }
}
