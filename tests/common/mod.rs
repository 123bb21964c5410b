//! Shared helpers for integration tests: start the built `hwntpd`, talk NTP to it,
//! read its statistics, and build network namespaces.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hwntpd::protocol::packet::Header;
use hwntpd::protocol::NtpTimestamp;

/// A running hwntpd, stopped with SIGTERM on drop.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

/// A UDP port that was free a moment ago on both 127.0.0.1 and ::1.
pub fn free_port() -> u16 {
    let free = |port| {
        UdpSocket::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("::1", port)).is_ok()
    };
    port_below_ephemeral(free).unwrap_or_else(|| loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if free(port) {
            return port;
        }
    })
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    let listen = |port| std::net::TcpListener::bind(("127.0.0.1", port));
    port_below_ephemeral(|port| listen(port).is_ok())
        .unwrap_or_else(|| listen(0).unwrap().local_addr().unwrap().port())
}

/// A port for which `free` holds, taken below the kernel's ephemeral range
/// (`ip_local_port_range`), so the sockets the tests bind to port 0 can never
/// be handed it between this check and the server's bind (a CI run once lost
/// a test that way); a per-process counter keeps the tests of one binary
/// (threads) off each other's ports. `None` when the ephemeral range leaves
/// no room below it: then the caller takes a kernel-assigned port.
fn port_below_ephemeral(free: impl Fn(u16) -> bool) -> Option<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .min(65536);
    if low < FIRST + 1_000 {
        eprintln!("ip_local_port_range starts at {low}: test ports come from the kernel");
        return None;
    }
    let span = low - FIRST;
    let start = std::process::id().wrapping_mul(7919) % span;
    (0..span).find_map(|_| {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % span) as u16;
        free(port).then_some(port)
    })
}

pub fn tempdir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let d = std::env::temp_dir().join(format!("hwntpd-test-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Server {
    /// Start on a free loopback port (v4 and v6) with `--reference local` and
    /// the given extra arguments; waits until it answers.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let dir = tempdir(name);
        let v4 = format!("127.0.0.1:{port}");
        let v6 = format!("[::1]:{port}");
        let mut args = vec!["--listen", &v4, "--listen", &v6];
        if !extra.contains(&"--workers") {
            args.extend_from_slice(&["--workers", "1"]);
        }
        if !extra.contains(&"--reference") {
            args.extend_from_slice(&["--reference", "local"]);
        }
        args.extend_from_slice(extra);
        let s = Self::spawn(&args, &dir, format!("127.0.0.1:{port}").parse().unwrap());
        s.wait_ready();
        s
    }

    /// Spawn with exactly these arguments (plus the stats file), without waiting.
    pub fn spawn(args: &[&str], dir: &std::path::Path, addr: SocketAddr) -> Server {
        Self::spawn_in(None, args, dir, addr)
    }

    /// Like [`Server::spawn`], inside network namespace `ns` when given.
    pub fn spawn_in(
        ns: Option<&str>,
        args: &[&str],
        dir: &std::path::Path,
        addr: SocketAddr,
    ) -> Server {
        let stats = dir.join("stats.prom");
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = hwntpd_cmd(ns)
            .args(args)
            .args([
                "--stats-file",
                stats.to_str().unwrap(),
                "--stats-interval",
                "1",
                "--log-level",
                "debug",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hwntpd");
        Server {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
        }
    }

    pub fn wait_ready(&self) {
        let answered = retry(Duration::from_secs(10), || {
            query(self.addr, 4, 3, Duration::from_millis(100))
        });
        if answered.is_none() {
            panic!("hwntpd did not answer within 10 s; log:\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The latest statistics file as metric -> value.
    pub fn stats(&self) -> HashMap<String, u64> {
        let text = std::fs::read_to_string(self.dir.join("stats.prom")).unwrap_or_default();
        hwntpd::server::stats::parse_prometheus(&text)
            .into_iter()
            .collect()
    }

    /// Wait (up to 5 s) until the statistics satisfy `cond`; returns them.
    pub fn wait_stats(
        &self,
        what: &str,
        cond: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> HashMap<String, u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "statistics never showed {what}: {s:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hwntpd did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The built hwntpd as a command (inside network namespace `ns` when given),
/// with no arguments yet.
pub fn hwntpd_cmd(ns: Option<&str>) -> Command {
    let bin = env!("CARGO_BIN_EXE_hwntpd");
    match ns {
        Some(ns) => NetnsPair::cmd(ns, bin),
        None => Command::new(bin),
    }
}

/// Run `cmd` (hwntpd, perhaps behind a wrapper) to the end: it must refuse to
/// start, that is exit unsuccessfully. Returns what it wrote to stderr.
pub fn refusal(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Call `attempt` again and again until it returns `Some` (which is returned)
/// or `within` has passed (`None`).
pub fn retry<T>(within: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = attempt() {
            return Some(v);
        }
    }
    None
}

pub fn stat(s: &HashMap<String, u64>, key: &str) -> u64 {
    s.get(key).copied().unwrap_or(0)
}

/// The sum of every labelled series of metric `name` (e.g. all drop reasons).
pub fn stat_sum(s: &HashMap<String, u64>, name: &str) -> u64 {
    let prefix = format!("{name}{{");
    s.iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

pub fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    NtpTimestamp::from_unix(d.as_secs() as i64, d.subsec_nanos())
}

/// A client request with a random-looking transmit timestamp.
pub fn request(version: u8, mode: u8, transmit: u64) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0] = (version << 3) | mode;
    r[2] = 6;
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    r
}

/// Send raw bytes and wait for one reply.
pub fn exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let bind = if addr.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(bytes, addr).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(
                from, addr,
                "reply must come from the address the request was sent to"
            );
            Some(buf[..n].to_vec())
        }
        Err(_) => None,
    }
}

/// Send a client request; return the decoded reply.
pub fn query(addr: SocketAddr, version: u8, mode: u8, timeout: Duration) -> Option<Header> {
    let tx = 0x0123_4567_89ab_cdef_u64 ^ now_ntp().to_bits();
    let reply = exchange(addr, &request(version, mode, tx), timeout)?;
    Header::parse(&reply)
}

/// Whether this process is root (namespaces, port 123, chronyd need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Print a SKIP line the test output shows and return true when `cond` fails.
/// In CI (`CI=true`) a skip is a failure: CI has root and installs the tools.
pub fn skip_unless(cond: bool, why: &str) -> bool {
    if cond {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("cannot run in CI: {why}");
    }
    eprintln!("SKIP: {why}");
    true
}

/// Two network namespaces joined by a veth pair: the server side gets
/// 10.213.X.1/24, the client side 10.213.X.2/24 (and fd00:213:X::1/2).
pub struct NetnsPair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_v4: String,
    pub client_v4: String,
    pub server_v6: String,
    pub devs: (String, String),
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl NetnsPair {
    pub fn new(tag: &str) -> NetnsPair {
        let id = std::process::id() % 200 + 10;
        let n = format!("{tag}{id}");
        let server_ns = format!("hwts-{n}");
        let client_ns = format!("hwtc-{n}");
        for ns in [&server_ns, &client_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
        }
        let (vs, vc) = (format!("vs{id}{tag}"), format!("vc{id}{tag}"));
        let (vs, vc) = (&vs[..vs.len().min(15)], &vc[..vc.len().min(15)]);
        ip(&[
            "link", "add", vs, "netns", &server_ns, "type", "veth", "peer", "name", vc, "netns",
            &client_ns,
        ]);
        let sub = id % 250;
        let server_v4 = format!("10.213.{sub}.1");
        let client_v4 = format!("10.213.{sub}.2");
        let server_v6 = format!("fd00:213:{sub}::1");
        for (ns, dev, v4, v6) in [
            (&server_ns, vs, &server_v4, &server_v6),
            (&client_ns, vc, &client_v4, &format!("fd00:213:{sub}::2")),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let devs = (vs.to_string(), vc.to_string());
        NetnsPair {
            server_ns,
            client_ns,
            server_v4,
            client_v4,
            server_v6,
            devs,
        }
    }

    /// The server side's veth device.
    pub fn server_dev(&self) -> String {
        self.devs.0.clone()
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn cmd(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Run `f` on a thread that has entered network namespace `ns` (sockets it
/// creates live in that namespace).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Like [`exchange`] but from a socket bound to `bind`.
pub fn exchange_from(
    bind: &str,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Option<Vec<u8>> {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(bytes, addr).unwrap();
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}
