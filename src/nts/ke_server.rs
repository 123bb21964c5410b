//! The NTS-KE server (RFC 8915 section 4): TLS 1.3 (rustls, ring provider)
//! with ALPN `ntske/1` over TCP, on threads of its own so the NTP workers never
//! wait for it.
//!
//! One accept thread polls every listening socket; each accepted connection
//! gets a thread of its own, at most [`KeServer::max_connections`] at once
//! (more are closed at once and counted). A connection has a total deadline
//! ([`KeServer::timeout`]) for handshake, request and response, and a request
//! is read up to [`MAX_REQUEST_LEN`] octets, so a slow or malformed client costs
//! nothing lasting. Keys for the client come from the TLS exporter
//! (`EXPORTER-network-time-security`, context: protocol id 0, the AEAD id, 0
//! for client-to-server or 1 for server-to-client) and are sealed into eight
//! cookies under the current master key.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rand::SeedableRng as _;
use rustls::{ServerConfig, ServerConnection};

use super::aead::{Aead, MAX_KEY_LEN};
use super::cookie::{self, ClientKeys, MAX_COOKIE_LEN};
use super::ke_records::{read_request, write_response, KeDecision, NtpServerHint, MAX_REQUEST_LEN};
use super::keys::KeySet;
use super::{ALPN_NTSKE, EXPORTER_LABEL, KE_COOKIES};
use crate::server::stats::WorkerStats;

/// Decides whether a client may open an NTS-KE connection (the access list).
pub type Admit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// An NTS-KE server, ready to start.
pub struct KeServer {
    /// TCP addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// TLS configuration ([`tls_config`]); replaced when the files change.
    pub tls: ArcSwap<ServerConfig>,
    /// The certificate and key files `tls` was read from, watched: when
    /// either changes, the pair is read again and, if it makes a TLS
    /// configuration (the key matching the certificate), serves the next
    /// handshakes.
    pub tls_files: (PathBuf, PathBuf),
    /// The master keys cookies are sealed under.
    pub keys: Arc<ArcSwap<KeySet>>,
    /// NTPv4 server and port records to send.
    pub hint: NtpServerHint,
    /// Connections served at once, at most.
    pub max_connections: usize,
    /// Total time a connection may take (handshake, request, response).
    pub timeout: Duration,
    /// Counters (the `nts_ke_*` fields; updated with atomic adds, as several
    /// connection threads share them).
    pub stats: Arc<WorkerStats>,
    /// The access list; `None` admits everyone.
    pub admit: Option<Admit>,
}

/// Why an NTS-KE session did not hand out cookies (counted by reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeFailure {
    /// The TLS handshake or record layer failed.
    Tls,
    /// The client did not negotiate ALPN `ntske/1`.
    Alpn,
    /// The deadline passed, or a read or write timed out.
    Timeout,
    /// The client closed the connection or the socket failed.
    Io,
    /// The request was bad: an Error record was sent.
    BadRequest,
    /// No protocol or AEAD in common: an empty Next Protocol or AEAD record was sent.
    NoAlgorithm,
    /// Refused at accept: the connection limit was reached.
    Busy,
    /// Refused at accept: the access list said no.
    Denied,
}

/// Load a PEM certificate chain and private key into a TLS 1.3-only server
/// configuration offering ALPN `ntske/1`.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the NTS certificate and key do not make a TLS configuration")?;
    cfg.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    Ok(Arc::new(cfg))
}

/// Bind a listening TCP socket (IPv6 sockets are v6-only, so `0.0.0.0:P` and
/// `[::]:P` can both be bound).
fn bind_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .with_context(|| format!("binding NTS-KE socket {addr}"))?;
    listen(&fd, Backlog::new(128)?)?;
    let l = TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Add to a counter several threads share.
fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn count_failure(stats: &WorkerStats, f: KeFailure) {
    count(match f {
        KeFailure::Tls => &stats.nts_ke_fail_tls,
        KeFailure::Alpn => &stats.nts_ke_fail_alpn,
        KeFailure::Timeout => &stats.nts_ke_fail_timeout,
        KeFailure::Io => &stats.nts_ke_fail_io,
        KeFailure::BadRequest => &stats.nts_ke_fail_bad_request,
        KeFailure::NoAlgorithm => &stats.nts_ke_fail_no_algorithm,
        KeFailure::Busy => &stats.nts_ke_fail_busy,
        KeFailure::Denied => &stats.nts_ke_fail_denied,
    });
}

impl KeServer {
    /// Bind every address and start the accept thread. Fails if an address
    /// cannot be bound.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
        let listeners = self
            .listen
            .iter()
            .map(|a| bind_listener(*a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tracing::info!(listen = ?self.listen, "NTS-KE server listening (TLS 1.3, ALPN ntske/1)");
        let shared = Arc::new(self);
        Ok(std::thread::Builder::new()
            .name("hwntpd-ntske".into())
            .spawn(move || accept_loop(&listeners, &shared, &stop))?)
    }
}

/// The stamps ([`super::file_stamp`]) of the certificate and key files.
fn files_stamp(files: &(PathBuf, PathBuf)) -> [Option<(std::time::SystemTime, u64)>; 2] {
    [&files.0, &files.1].map(|p| super::file_stamp(p))
}

/// Follows the certificate and key files (a certificate renewed in place,
/// e.g. by an ACME client, is served without a restart).
struct TlsWatch {
    seen: [Option<(std::time::SystemTime, u64)>; 2],
    checked: std::time::Instant,
}

impl TlsWatch {
    /// At most once a second: if a file changed, build a new configuration
    /// and store it; a pair that does not make one (a key not yet written,
    /// a mismatch) is logged and the running configuration kept.
    fn check(&mut self, server: &KeServer) {
        let files = &server.tls_files;
        if self.checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.checked = std::time::Instant::now();
        let now = files_stamp(files);
        if now == self.seen {
            return;
        }
        self.seen = now;
        match tls_config(&files.0, &files.1) {
            Ok(cfg) => {
                server.tls.store(cfg);
                count(&server.stats.nts_ke_tls_reloads);
                tracing::info!(cert = %files.0.display(), "NTS-KE certificate reloaded (the files changed)");
            }
            Err(e) => tracing::warn!(
                cert = %files.0.display(),
                "NTS-KE certificate files changed but do not make a TLS configuration; keeping the running one: {e:#}"
            ),
        }
    }
}

fn accept_loop(listeners: &[TcpListener], server: &Arc<KeServer>, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let active = Arc::new(AtomicUsize::new(0));
    let mut watch = TlsWatch {
        seen: files_stamp(&server.tls_files),
        checked: std::time::Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        watch.check(server);
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::from(250u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("NTS-KE poll failed: {e}");
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        }
        for l in listeners {
            while let Ok((tcp, peer)) = l.accept() {
                admit_connection(tcp, peer, server, &active);
            }
        }
    }
}

fn admit_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    server: &Arc<KeServer>,
    active: &Arc<AtomicUsize>,
) {
    let stats = &server.stats;
    if let Some(admit) = &server.admit {
        if !admit(peer.ip()) {
            count_failure(stats, KeFailure::Denied);
            return;
        }
    }
    if active.fetch_add(1, Ordering::AcqRel) >= server.max_connections {
        active.fetch_sub(1, Ordering::AcqRel);
        count_failure(stats, KeFailure::Busy);
        return;
    }
    let (server2, active2) = (server.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("hwntpd-ntske-c".into())
        .spawn(move || {
            let result = serve_connection(tcp, &server2);
            match result {
                Ok(()) => count(&server2.stats.nts_ke_sessions),
                Err(f) => {
                    tracing::debug!(%peer, "NTS-KE session failed: {f:?}");
                    count_failure(&server2.stats, f);
                }
            }
            active2.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        active.fetch_sub(1, Ordering::AcqRel);
        count_failure(stats, KeFailure::Busy);
    }
}

fn io_failure(e: &std::io::Error) -> KeFailure {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => KeFailure::Timeout,
        std::io::ErrorKind::InvalidData => KeFailure::Tls,
        _ => KeFailure::Io,
    }
}

/// Flush what rustls wants to send.
fn flush(
    conn: &mut ServerConnection,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> Result<(), KeFailure> {
    while conn.wants_write() {
        if Instant::now() > deadline {
            return Err(KeFailure::Timeout);
        }
        conn.write_tls(tcp).map_err(|e| io_failure(&e))?;
    }
    Ok(())
}

/// One NTS-KE session: handshake, request, response, close.
fn serve_connection(mut tcp: TcpStream, server: &KeServer) -> Result<(), KeFailure> {
    let deadline = Instant::now() + server.timeout;
    let step = server.timeout.min(Duration::from_secs(2));
    tcp.set_nonblocking(false).map_err(|_| KeFailure::Io)?;
    tcp.set_nodelay(true).map_err(|_| KeFailure::Io)?;
    tcp.set_read_timeout(Some(step))
        .map_err(|_| KeFailure::Io)?;
    tcp.set_write_timeout(Some(step))
        .map_err(|_| KeFailure::Io)?;
    let mut conn = ServerConnection::new(server.tls.load_full()).map_err(|_| KeFailure::Tls)?;
    let mut request = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let mut alpn_checked = false;
    let decision = loop {
        flush(&mut conn, &mut tcp, deadline)?;
        if !alpn_checked && !conn.is_handshaking() {
            if conn.alpn_protocol() != Some(ALPN_NTSKE) {
                return Err(KeFailure::Alpn);
            }
            alpn_checked = true;
        }
        match conn.reader().read(&mut buf) {
            Ok(0) => return Err(KeFailure::Io),
            Ok(n) => {
                request.extend_from_slice(&buf[..n]);
                if let Some(d) = read_request(&request) {
                    break d;
                }
                if request.len() > MAX_REQUEST_LEN {
                    break KeDecision::Error(super::ke_records::error_code::BAD_REQUEST);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(KeFailure::Io),
        }
        if Instant::now() > deadline {
            return Err(KeFailure::Timeout);
        }
        match conn.read_tls(&mut tcp) {
            Ok(0) => return Err(KeFailure::Io),
            Ok(_) => {}
            Err(e) => return Err(io_failure(&e)),
        }
        if conn.process_new_packets().is_err() {
            // Send the alert rustls queued, then give up.
            let _ = flush(&mut conn, &mut tcp, deadline);
            return Err(KeFailure::Tls);
        }
    };
    let mut cookies = [[0u8; MAX_COOKIE_LEN]; KE_COOKIES];
    let mut n_cookies = 0;
    let mut cookie_len = 0;
    if let KeDecision::Accept(aead) = decision {
        let keys = export_keys(&conn, aead).map_err(|_| KeFailure::Tls)?;
        let mut masters = cookie::MasterCiphers::new(&server.keys.load());
        let mut rng = rand::rngs::StdRng::from_os_rng();
        for c in &mut cookies {
            cookie_len = cookie::encode(&keys, &mut masters, &mut rng, c).ok_or(KeFailure::Tls)?;
        }
        n_cookies = KE_COOKIES;
    }
    let refs: Vec<&[u8]> = cookies[..n_cookies]
        .iter()
        .map(|c| &c[..cookie_len])
        .collect();
    let response = write_response(decision, &server.hint, &refs);
    conn.writer()
        .write_all(&response)
        .map_err(|_| KeFailure::Io)?;
    conn.send_close_notify();
    flush(&mut conn, &mut tcp, deadline)?;
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    match decision {
        KeDecision::Accept(_) => Ok(()),
        KeDecision::Error(_) => Err(KeFailure::BadRequest),
        KeDecision::NoAead | KeDecision::NoProtocol => Err(KeFailure::NoAlgorithm),
    }
}

/// The C2S and S2C keys for `aead` from the TLS exporter (RFC 8915 section 5.1).
pub fn export_keys(
    conn: &rustls::ConnectionCommon<impl Sized>,
    aead: Aead,
) -> Result<ClientKeys, rustls::Error> {
    let id = aead.id().to_be_bytes();
    let len = aead.key_len();
    let mut keys = ClientKeys {
        aead,
        c2s: [0; MAX_KEY_LEN],
        s2c: [0; MAX_KEY_LEN],
    };
    let context = |dir: u8| [0u8, 0, id[0], id[1], dir];
    conn.export_keying_material(&mut keys.c2s[..len], EXPORTER_LABEL, Some(&context(0)))?;
    conn.export_keying_material(&mut keys.s2c[..len], EXPORTER_LABEL, Some(&context(1)))?;
    Ok(keys)
}
