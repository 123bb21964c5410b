//! NTS (RFC 8915) end to end: chronyd as an NTS client of hwntpd (basic and
//! interleaved mode), and hand-made NTS-KE sessions and NTS requests (the
//! client side from `hwntpd::nts`): a tampered request is not answered, a
//! cookie from before a key rotation is still accepted and one whose key is
//! gone gets an NTS NAK, hosts sharing a key file accept each other's cookies,
//! and NTS-KE refusals follow RFC 8915 section 4.
//!
//! Certificates are made with the `openssl` command; chronyd tests need root
//! (chronyd refuses to run otherwise) and the Debian package chrony. Everything
//! runs on loopback.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hwntpd::nts::aead::Aead;
use hwntpd::nts::cookie::{self, ClientKeys};
use hwntpd::nts::ke_client::{client_config, exchange as ke_exchange, KeOutcome};
use hwntpd::nts::ke_records::{append_record, client_request, error_code, rtype};
use hwntpd::nts::keys::KeySet;
use hwntpd::nts::ntp::client::{check_reply, request as nts_request, ReplyCheck};
use hwntpd::nts::ALPN_NTSKE;
use hwntpd::protocol::packet::Header;
use rand::{Rng as _, SeedableRng as _};

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::from_os_rng()
}

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1 (and localhost), made with
/// the openssl command; `None` (after a SKIP line) without it.
fn make_certs(dir: &Path) -> Option<Certs> {
    if skip_unless(
        have("openssl"),
        "openssl is not installed (apt-get install openssl)",
    ) {
        return None;
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hwntpd test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Some(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

/// hwntpd on loopback with NTS-KE on 127.0.0.1:`ke` and these extra arguments.
fn start_nts(name: &str, certs: &Certs, ke: u16, extra: &[&str]) -> Server {
    let ke_listen = format!("127.0.0.1:{ke}");
    let mut args = vec![
        "--nts-cert",
        certs.cert.to_str().unwrap(),
        "--nts-key",
        certs.key.to_str().unwrap(),
        "--nts-ke-listen",
        &ke_listen,
    ];
    args.extend_from_slice(extra);
    Server::start(name, &args)
}

fn ke(certs: &Certs, ke_port: u16, request: &[u8]) -> anyhow::Result<KeOutcome> {
    ke_exchange(
        client_config(&certs.ca, &[ALPN_NTSKE]).unwrap(),
        SocketAddr::from(([127, 0, 0, 1], ke_port)),
        "127.0.0.1",
        request,
        Duration::from_secs(5),
    )
}

/// One NTS request with `cookie`; the reply (if any) and the unique identifier.
fn ask(
    server: SocketAddr,
    cookie: &[u8],
    keys: &ClientKeys,
    tamper: bool,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut r = rng();
    let uid: Vec<u8> = (0..32).map(|_| r.random::<u8>()).collect();
    let nonce: Vec<u8> = (0..keys.aead.nonce_len())
        .map(|_| r.random::<u8>())
        .collect();
    let mut req = nts_request(&request(4, 3, now_ntp().0), &uid, cookie, 0, keys, &nonce);
    if tamper {
        req[44] ^= 0x01; // the transmit timestamp, covered by the Authenticator
    }
    (exchange(server, &req, Duration::from_millis(500)), uid)
}

#[test]
fn chronyd_nts_client_basic() {
    chronyd_nts(false);
}

#[test]
fn chronyd_nts_client_xleave() {
    chronyd_nts(true);
}

/// chronyd (`server ... nts`, trusting the test's CA) against hwntpd: NTS
/// with cookies and no NAKs, the source selected; with `xleave`, interleaved
/// replies too.
fn chronyd_nts(xleave: bool) {
    if skip_unless(is_root(), "chronyd runs only as root")
        || skip_unless(
            have("chronyd") && have("chronyc"),
            "chronyd/chronyc are not installed (apt-get install chrony)",
        )
    {
        return;
    }
    let dir = tempdir(if xleave {
        "nts-chrony-xl"
    } else {
        "nts-chrony"
    });
    let Some(certs) = make_certs(&dir) else {
        return;
    };
    let ke_port = free_tcp_port();
    let server = start_nts("nts-chronyd", &certs, ke_port, &[]);
    let cdir = dir.join("chrony");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::set_permissions(&cdir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let conf = cdir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "server 127.0.0.1 port {port} nts ntsport {ke_port} iburst minpoll -6 maxpoll -6{xl}\n\
             ntstrustedcerts {ca}\npidfile {d}/chronyd.pid\nbindcmdaddress {d}/chronyd.sock\n\
             cmdport 0\nport 0\nlogdir {d}\nlog measurements\n",
            port = server.addr.port(),
            xl = if xleave { " xleave" } else { "" },
            ca = certs.ca.display(),
            d = cdir.display()
        ),
    )
    .unwrap();
    let mut chronyd = Command::new("chronyd")
        .args(["-x", "-d", "-u", "root", "-f", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(cdir.join("chronyd.log")).unwrap())
        .spawn()
        .unwrap();
    let sock = cdir.join("chronyd.sock");
    let chronyc = |args: &[&str]| {
        let out = Command::new("chronyc")
            .args(["-h", sock.to_str().unwrap(), "-n"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // authdata: Name Mode KeyID Type KLen Last Atmp NAK Cook CLen
    let nts_ok = |authdata: &str| {
        authdata.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 10
                && w[0] == "127.0.0.1"
                && w[1] == "NTS"
                && w[7] == "0"
                && w[8].parse::<u32>().is_ok_and(|c| c > 0)
        })
    };
    let selected = |sources: &str| {
        sources
            .lines()
            .any(|l| l.starts_with("^*") && l.contains("127.0.0.1"))
    };
    let interleaved = |ntpdata: &str| {
        ntpdata
            .lines()
            .any(|l| l.starts_with("Interleaved") && l.contains("Yes"))
    };
    let (mut authdata, mut sources, mut ntpdata) = (String::new(), String::new(), String::new());
    let done = retry(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        authdata = chronyc(&["authdata"]);
        sources = chronyc(&["sources"]);
        ntpdata = chronyc(&["ntpdata"]);
        (nts_ok(&authdata) && selected(&sources) && (!xleave || interleaved(&ntpdata)))
            .then_some(())
    });
    let _ = chronyd.kill();
    let _ = chronyd.wait();
    eprintln!("chronyc -N authdata:\n{authdata}\nchronyc sources:\n{sources}\nchronyc ntpdata:\n{ntpdata}");
    assert!(
        done.is_some(),
        "chronyd log:\n{}\nhwntpd log:\n{}",
        std::fs::read_to_string(cdir.join("chronyd.log")).unwrap_or_default(),
        server.log()
    );
    assert!(
        ntpdata
            .lines()
            .any(|l| l.starts_with("Authenticated") && l.contains("Yes")),
        "{ntpdata}"
    );
    let s = server.wait_stats("NTS requests answered", |s| {
        stat(s, "hwntpd_nts_requests_total") > 3
    });
    assert_eq!(stat(&s, "hwntpd_nts_naks_total"), 0, "{s:?}");
    assert_eq!(stat(&s, "hwntpd_nts_auth_failures_total"), 0, "{s:?}");
    assert!(stat(&s, "hwntpd_nts_ke_sessions_total") >= 1, "{s:?}");
    if xleave {
        assert!(
            stat(&s, "hwntpd_replies_total{mode=\"interleaved\"}") > 0,
            "{s:?}"
        );
    }
}

/// The NTS-KE response for a good request, an authenticated reply for a
/// good NTS request, silence for a tampered one, and cookies that outlive a
/// key rotation (and a NAK once their key is gone).
#[test]
fn tampered_requests_and_key_rotation() {
    let dir = tempdir("nts-rotation");
    let Some(certs) = make_certs(&dir) else {
        return;
    };
    let ke_port = free_tcp_port();
    let key_file = dir.join("nts-keys");
    let server = start_nts(
        "nts-rotation",
        &certs,
        ke_port,
        &[
            "--nts-key-file",
            key_file.to_str().unwrap(),
            "--nts-key-rotation",
            "2",
        ],
    );
    let out = ke(&certs, ke_port, &client_request(&[30, 15])).unwrap();
    let r = &out.response;
    assert_eq!(r.next_protocol, Some(vec![0]));
    assert_eq!(r.aead, Some(vec![30]), "the client's first choice");
    assert!(r.errors.is_empty());
    assert_eq!(r.cookies.len(), 8);
    assert!(r
        .cookies
        .iter()
        .all(|c| c.len() == cookie::cookie_len(Aead::AesGcmSiv128)));
    assert_eq!(
        r.hint.port,
        Some(server.addr.port()),
        "NTP is not on port 123: a port record"
    );
    let keys = out.keys.unwrap();

    let (reply, uid) = ask(server.addr, &r.cookies[0], &keys, false);
    let reply = reply.expect("an answer to a good NTS request");
    match check_reply(&reply, &uid, &keys) {
        ReplyCheck::Ok(new) => assert_eq!(new.len(), 1),
        other => panic!("{other:?}"),
    }
    let h = Header::parse(&reply).unwrap();
    assert_eq!((h.mode, h.stratum), (4, 1));

    let (reply, _) = ask(server.addr, &r.cookies[1], &keys, true);
    assert!(reply.is_none(), "a tampered request is not answered");
    server.wait_stats("the authentication failure", |s| {
        stat(s, "hwntpd_nts_auth_failures_total") == 1
    });

    // The key the cookies were sealed under, as the key file names it.
    let id = format!(
        "{:08x}",
        u32::from_be_bytes(r.cookies[2][..4].try_into().unwrap())
    );
    let rotated = || {
        std::fs::read_to_string(&key_file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("rotated ").map(str::to_string))
    };
    let first = rotated().expect("the key file is written at start");
    let after = retry(Duration::from_secs(8), || {
        std::thread::sleep(Duration::from_millis(100));
        rotated().filter(|r| *r != first)
    });
    assert!(after.is_some(), "the keys rotated within 8 s");
    let (reply, uid) = ask(server.addr, &r.cookies[2], &keys, false);
    assert!(
        matches!(
            check_reply(&reply.expect("answered after a rotation"), &uid, &keys),
            ReplyCheck::Ok(_)
        ),
        "a cookie from before the rotation is still accepted"
    );
    // Once the cookie's key has left the file, a NAK echoing the identifier.
    let gone = retry(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&key_file).unwrap_or_default();
        (!text.is_empty() && !text.contains(&id)).then_some(())
    });
    assert!(gone.is_some(), "key {id} rotated out within 15 s");
    std::thread::sleep(Duration::from_millis(200));
    let (reply, uid) = ask(server.addr, &r.cookies[3], &keys, false);
    let reply = reply.expect("a NAK");
    assert_eq!(check_reply(&reply, &uid, &keys), ReplyCheck::Nak);
    assert_eq!(&reply[12..16], b"NTSN");
    server.wait_stats("the NAK", |s| stat(s, "hwntpd_nts_naks_total") == 1);
}

/// NTS-KE refusals: only an unknown AEAD offered, an unknown critical record,
/// no ALPN.
#[test]
fn ke_refusals() {
    let dir = tempdir("nts-ke-refusals");
    let Some(certs) = make_certs(&dir) else {
        return;
    };
    let ke_port = free_tcp_port();
    let server = start_nts("nts-ke-refusals", &certs, ke_port, &[]);

    // RFC 8915 section 4.1.5: an AEAD record that "is empty if the server
    // supports none of the algorithms offered", the error record (Bad
    // Request), and no cookies.
    let out = ke(&certs, ke_port, &client_request(&[0x7fff])).unwrap();
    assert_eq!(out.response.next_protocol, Some(vec![0]));
    assert_eq!(out.response.aead, Some(vec![]));
    assert_eq!(out.response.errors, vec![error_code::BAD_REQUEST]);
    assert!(out.response.cookies.is_empty());
    assert!(out.keys.is_none());

    let mut req = Vec::new();
    append_record(&mut req, true, rtype::NEXT_PROTOCOL, &[0, 0]);
    append_record(&mut req, true, rtype::AEAD, &[0, 15]);
    append_record(&mut req, true, 0x4321, b"?");
    append_record(&mut req, true, rtype::END_OF_MESSAGE, &[]);
    let out = ke(&certs, ke_port, &req).unwrap();
    assert_eq!(
        out.response.errors,
        vec![error_code::UNRECOGNIZED_CRITICAL_RECORD]
    );
    assert!(out.response.cookies.is_empty());

    let mut req = Vec::new();
    append_record(&mut req, true, rtype::AEAD, &[0, 15]);
    append_record(&mut req, true, rtype::END_OF_MESSAGE, &[]);
    let out = ke(&certs, ke_port, &req).unwrap();
    assert_eq!(out.response.errors, vec![error_code::BAD_REQUEST]);

    let no_alpn = ke_exchange(
        client_config(&certs.ca, &[]).unwrap(),
        SocketAddr::from(([127, 0, 0, 1], ke_port)),
        "127.0.0.1",
        &client_request(&[15]),
        Duration::from_secs(5),
    );
    assert!(no_alpn.is_err(), "{no_alpn:?}");
    let s = server.wait_stats("the refusals counted", |s| {
        stat(s, "hwntpd_nts_ke_failures_total{reason=\"no_algorithm\"}") == 1
            && stat(s, "hwntpd_nts_ke_failures_total{reason=\"bad_request\"}") == 2
            && stat(s, "hwntpd_nts_ke_failures_total{reason=\"alpn\"}") == 1
    });
    assert_eq!(stat(&s, "hwntpd_nts_ke_sessions_total"), 0);
}

/// An NTP-only host (no certificate) with `--nts-key-file` accepts cookies
/// sealed under the file's keys, follows the file when it changes, and with
/// `--nts-require` refuses plain requests with a DENY KoD.
#[test]
fn shared_key_file_and_require() {
    let dir = tempdir("nts-shared");
    let key_file = dir.join("nts-keys");
    let mut rng = rng();
    let set = KeySet::generate(&mut rng, 1_800_000_000);
    set.save(&key_file).unwrap();
    let server = Server::start(
        "nts-shared",
        &[
            "--nts-key-file",
            key_file.to_str().unwrap(),
            "--nts-key-rotation",
            "0",
            "--nts-require",
        ],
    );
    let keys = ClientKeys {
        aead: Aead::AesSivCmac256,
        c2s: rng.random(),
        s2c: rng.random(),
    };
    let seal = |set: &KeySet| {
        let mut buf = [0u8; cookie::MAX_COOKIE_LEN];
        let n = cookie::encode(
            &keys,
            &mut cookie::MasterCiphers::new(set),
            &mut self::rng(),
            &mut buf,
        )
        .unwrap();
        buf[..n].to_vec()
    };
    let (reply, uid) = ask(server.addr, &seal(&set), &keys, false);
    assert!(matches!(
        check_reply(&reply.unwrap(), &uid, &keys),
        ReplyCheck::Ok(_)
    ));

    let plain = query(server.addr, 4, 3, Duration::from_millis(500)).expect("a KoD");
    assert_eq!((plain.stratum, &plain.refid), (0, b"DENY"));

    // Another host rotates the shared file twice: the first keys are gone.
    let newer = set
        .rotated(&mut rng, 1_800_000_100)
        .rotated(&mut rng, 1_800_000_200)
        .rotated(&mut rng, 1_800_000_300);
    assert!(newer.find(set.current().id).is_none());
    newer.save(&key_file).unwrap();
    let start = Instant::now();
    let followed = retry(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        let (reply, uid) = ask(server.addr, &seal(&newer), &keys, false);
        matches!(check_reply(&reply?, &uid, &keys), ReplyCheck::Ok(_)).then_some(())
    });
    assert!(
        followed.is_some(),
        "the new key file was not followed within 5 s"
    );
    eprintln!("key file followed after {:?}", start.elapsed());
    let (reply, uid) = ask(server.addr, &seal(&set), &keys, false);
    assert_eq!(check_reply(&reply.unwrap(), &uid, &keys), ReplyCheck::Nak);
    // The statistics file is written once a second: wait for the count.
    server.wait_stats("the plain request refused", |s| {
        stat(s, "hwntpd_nts_unauthenticated_refused_total") >= 1
    });
}

/// A client that connects and sends nothing is cut off at --nts-ke-timeout and
/// holds its slot only that long; past --nts-ke-connections, connections are
/// closed at once; a good client is served once the slot is free.
#[test]
fn ke_limits_slow_clients() {
    use std::io::Read as _;
    let dir = tempdir("nts-ke-limits");
    let Some(certs) = make_certs(&dir) else {
        return;
    };
    let ke_port = free_tcp_port();
    let server = start_nts(
        "nts-ke-limits",
        &certs,
        ke_port,
        &["--nts-ke-connections", "1", "--nts-ke-timeout", "1"],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ke_port));
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The only slot is taken: the next connection is closed without a handshake.
    let busy = ke(&certs, ke_port, &client_request(&[15]));
    assert!(busy.is_err(), "{busy:?}");
    // The silent client is dropped after about a second.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let held = start.elapsed();
    assert_eq!(n, 0, "closed, not answered");
    assert!(held < Duration::from_secs(3), "held for {held:?}");
    let ok = retry(Duration::from_secs(3), || {
        ke(&certs, ke_port, &client_request(&[15])).ok()
    });
    assert_eq!(
        ok.expect("served once the slot is free")
            .response
            .cookies
            .len(),
        8
    );
    let s = server.wait_stats("the timeout and the refusal", |s| {
        stat(s, "hwntpd_nts_ke_failures_total{reason=\"timeout\"}") >= 1
            && stat(s, "hwntpd_nts_ke_failures_total{reason=\"busy\"}") >= 1
    });
    assert!(stat(&s, "hwntpd_nts_ke_sessions_total") >= 1);
}

/// A certificate renewed in place (new files at the same paths, as an ACME
/// client writes them) serves the next handshakes without a restart; a pair
/// that does not match (the certificate written, the key not yet) keeps the
/// running one.
#[test]
fn certificate_renewed_in_place() {
    let dir = tempdir("nts-renew");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (Some(a), Some(b)) = (make_certs(&dir_a), make_certs(&dir_b)) else {
        return;
    };
    let live = Certs {
        ca: a.ca.clone(),
        cert: dir.join("live.pem"),
        key: dir.join("live.key"),
    };
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let ke_port = free_tcp_port();
    let server = start_nts("nts-renew", &live, ke_port, &[]);
    let with_ca = |ca: &Path| Certs {
        ca: ca.to_path_buf(),
        cert: live.cert.clone(),
        key: live.key.clone(),
    };
    let (trust_a, trust_b) = (with_ca(&a.ca), with_ca(&b.ca));
    let handshake = |trust: &Certs| ke(trust, ke_port, &client_request(&[15]));
    let keys_with = |trust: &Certs| handshake(trust).unwrap().keys.is_some();
    assert!(keys_with(&trust_a));

    // Half renewed: B's certificate with A's key. Kept: A still serves.
    std::fs::copy(&b.cert, &live.cert).unwrap();
    let warned = retry(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        server
            .log()
            .contains("do not make a TLS configuration")
            .then_some(())
    });
    assert!(warned.is_some(), "{}", server.log());
    assert!(keys_with(&trust_a));

    // The key follows: B serves, A no longer verifies.
    std::fs::copy(&b.key, &live.key).unwrap();
    let renewed = retry(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        let ok = handshake(&trust_b).ok()?;
        ok.keys.is_some().then_some(())
    });
    assert!(renewed.is_some(), "{}", server.log());
    assert!(handshake(&trust_a).is_err());
    let s = server.wait_stats("the reload counted", |s| {
        stat(s, "hwntpd_nts_ke_certificate_reloads_total") == 1
    });
    assert!(stat(&s, "hwntpd_nts_ke_sessions_total") >= 3);
    assert!(server.log().contains("NTS-KE certificate reloaded"));
}
