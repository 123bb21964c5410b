//! The floor responder: the least a kernel-socket NTP server can do. One socket,
//! a blocking `recvmmsg` / `sendmmsg` loop, a fixed 48-octet mode-4 reply that
//! echoes the request's transmit timestamp as origin, no timestamps, no checks
//! beyond "at least 48 octets". What it costs per reply is what the kernel costs.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::sys::{self, Batch};

/// Options of the `floor` subcommand.
#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Address and port to answer on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Datagrams per recvmmsg/sendmmsg call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write `floor_syscalls_total` and `floor_replies_total` (Prometheus text
    /// format) to this file every 200 ms (from a separate thread) and at exit.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Socket buffer size in bytes (0: the system default, as most servers run).
    #[arg(long, default_value_t = 0)]
    pub sockbuf: usize,
}

/// The fixed reply, written over the request in place: LI 0, the request's
/// version, mode 4, stratum 1, the request's poll, precision -20, zero root
/// delay and dispersion, refid "FLOR", origin = request transmit, all other
/// timestamps zero. `buf` must hold at least 48 octets.
pub fn make_reply(buf: &mut [u8]) {
    let version_bits = buf[0] & 0x38;
    let mut origin = [0u8; 8];
    origin.copy_from_slice(&buf[40..48]);
    buf[0] = version_bits | 4;
    buf[1] = 1;
    buf[3] = (-20i8) as u8;
    buf[4..12].fill(0);
    buf[12..16].copy_from_slice(b"FLOR");
    buf[16..24].fill(0);
    buf[24..32].copy_from_slice(&origin);
    buf[32..48].fill(0);
}

/// Prometheus text of the floor's counters.
pub fn stats_text(syscalls: u64, replies: u64) -> String {
    format!(
        "# TYPE floor_syscalls_total counter\nfloor_syscalls_total {syscalls}\n\
         # TYPE floor_replies_total counter\nfloor_replies_total {replies}\n"
    )
}

fn write_stats(path: &PathBuf, syscalls: u64, replies: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, stats_text(syscalls, replies))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Counters shared with the stats-writer thread.
#[derive(Default)]
struct Shared {
    syscalls: AtomicU64,
    replies: AtomicU64,
}

/// Write the stats file every 200 ms until `stop`, then once more. Runs on its
/// own thread so that file-system stalls never block the data path.
fn stats_writer(path: PathBuf, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    loop {
        let done = stop.load(Ordering::Relaxed);
        write_stats(
            &path,
            shared.syscalls.load(Ordering::Relaxed),
            shared.replies.load(Ordering::Relaxed),
        )?;
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run the floor responder until a signal or the duration ends.
pub fn run(args: &FloorArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let sock = UdpSocket::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    // The timeout only bounds how late a stop request is seen.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    if args.sockbuf > 0 {
        sys::set_buffers(&sock, args.sockbuf).context("setting socket buffers")?;
    }
    let fd = sock.as_raw_fd();
    let mut batch = Batch::new(args.batch.clamp(1, 1024), true);
    let start = Instant::now();
    let deadline = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let shared = Arc::new(Shared::default());
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer = args.stats_file.clone().map(|path| {
        let (shared, writer_stop) = (Arc::clone(&shared), Arc::clone(&writer_stop));
        std::thread::spawn(move || stats_writer(path, shared, writer_stop))
    });
    let (mut syscalls, mut replies, mut errors) = (0u64, 0u64, 0u64);
    eprintln!("floor: answering on {}", sock.local_addr()?);
    let result = loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        shared.syscalls.store(syscalls, Ordering::Relaxed);
        shared.replies.store(replies, Ordering::Relaxed);
        syscalls += 1;
        let n = match batch.recv(fd, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => break Err(anyhow::Error::new(e).context("recvmmsg")),
        };
        // Build replies in place; send contiguous runs of answerable datagrams.
        let mut run_start = 0usize;
        for i in 0..=n {
            let answerable = i < n && batch.packet(i).0.len() >= 48;
            if answerable {
                make_reply(batch.buf_mut(i));
                batch.set_len(i, 48);
                continue;
            }
            let mut at = run_start;
            while at < i {
                syscalls += 1;
                match batch.send(fd, at, i - at, 0) {
                    Ok(k) => {
                        replies += k as u64;
                        at += k.max(1);
                    }
                    Err(_) => {
                        // The first datagram of the run could not be sent: skip it.
                        errors += 1;
                        at += 1;
                    }
                }
            }
            run_start = i + 1;
        }
    };
    shared.syscalls.store(syscalls, Ordering::Relaxed);
    shared.replies.store(replies, Ordering::Relaxed);
    writer_stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        match w.join() {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("stats writer thread panicked"),
        }
    }
    eprintln!(
        "floor: {replies} replies, {syscalls} data-path syscalls ({:.3} per reply), {errors} send errors, {:.1} s",
        syscalls as f64 / replies.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_fixture() {
        let mut req = [0u8; 48];
        req[0] = 0x23; // LI 0, v4, mode 3
        req[2] = 6;
        req[24..32].copy_from_slice(&[9; 8]);
        req[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        make_reply(&mut req);
        assert_eq!(req[0], 0x24);
        assert_eq!(req[1], 1);
        assert_eq!(req[2], 6);
        assert_eq!(req[3], 0xec);
        assert_eq!(&req[12..16], b"FLOR");
        assert_eq!(&req[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&req[32..48], &[0; 16]);
        let h = hwntpd::protocol::packet::Header::parse(&req).unwrap();
        assert_eq!(h.mode, 4);
        assert_eq!(h.version, 4);
    }

    #[test]
    fn stats_parse_back() {
        let t = stats_text(10, 4);
        assert_eq!(
            crate::load::prom_sum(&t, "floor_syscalls_total"),
            Some(10.0)
        );
        assert_eq!(crate::load::prom_sum(&t, "floor_replies_total"), Some(4.0));
    }
}
