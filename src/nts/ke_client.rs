//! A minimal NTS-KE client (for tests and the benchmark tool): TLS 1.3 with
//! ALPN `ntske/1`, one request, the whole response, and the keys exported for
//! the negotiated AEAD.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::aead::Aead;
use super::cookie::ClientKeys;
use super::ke_records::{parse_response, KeResponse};
use super::ke_server::export_keys;

/// A TLS 1.3 client configuration trusting the PEM certificates in `ca`,
/// offering ALPN `alpn` (normally [`super::ALPN_NTSKE`]).
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The outcome of one NTS-KE exchange.
#[derive(Debug)]
pub struct KeOutcome {
    /// The response's records.
    pub response: KeResponse,
    /// The keys for the AEAD the server chose (if it chose one).
    pub keys: Option<ClientKeys>,
}

/// Connect to `addr`, verify the certificate for `name`, send `request`
/// (records, e.g. from [`super::ke_records::client_request`]) and read the
/// response to its End of Message.
pub fn exchange(
    cfg: Arc<ClientConfig>,
    addr: SocketAddr,
    name: &str,
    request: &[u8],
    timeout: Duration,
) -> anyhow::Result<KeOutcome> {
    let server_name = ServerName::try_from(name.to_string())?;
    let conn = ClientConnection::new(cfg, server_name)?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(request)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let response = loop {
        if let Some(r) = parse_response(&buf).map_err(anyhow::Error::msg)? {
            break r;
        }
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!(
                "connection closed before End of Message ({} octets)",
                buf.len()
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let aead = match response.aead.as_deref() {
        Some([id]) => Aead::from_id(*id),
        _ => None,
    };
    let keys = match aead {
        Some(a) => Some(export_keys(&tls.conn, a)?),
        None => None,
    };
    Ok(KeOutcome { response, keys })
}
