//! vm-probe: runs inside the QEMU guest of `scripts/vm-hwtest.sh` and checks what an
//! emulated NIC (igb) and its PTP hardware clock offer, one `CHECK name: PASS|FAIL detail`
//! line per check. Exit status 1 if any check failed, 2 on a usage error.
//!
//! Usage:
//!   vm-probe nic IFACE                      PHC ioctls + SIOCSHWTSTAMP on IFACE
//!   vm-probe send IFACE SRC_IP DST_IP PORT COUNT
//!                                           UDP datagrams with hardware TX timestamps
//!   vm-probe recv BIND_IP PORT COUNT TIMEOUT_MS
//!                                           receive datagrams, report RX timestamps
//!
//! Only libc; every `unsafe` block says why it is sound.

use std::ffi::CString;
use std::fmt::Display;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// SO_TIMESTAMPING (the "old", 64-bit-time_t value on x86_64).
const SO_TIMESTAMPING: libc::c_int = 37;
/// Control-message type of `struct scm_timestamping` (same as the option).
const SCM_TIMESTAMPING: libc::c_int = SO_TIMESTAMPING;
/// `CLOCKFD` from the kernel's posix-timers.h, used by `FD_TO_CLOCKID`.
const CLOCKFD: libc::clockid_t = 3;
/// Marker the receiver looks for.
const PAYLOAD_TAG: &[u8] = b"hwntpd-vm-probe ";

static FAILURES: AtomicUsize = AtomicUsize::new(0);

fn check(name: &str, ok: bool, detail: impl Display) {
    if !ok {
        FAILURES.fetch_add(1, Ordering::Relaxed);
    }
    println!(
        "CHECK {name}: {} {detail}",
        if ok { "PASS" } else { "FAIL" }
    );
}

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ERANGE) => "ERANGE",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ENOTTY) => "ENOTTY",
        _ => return e.to_string(),
    };
    format!("{name} ({e})")
}

fn ts_ns(sec: i64, nsec: i64) -> i128 {
    sec as i128 * 1_000_000_000 + nsec as i128
}

fn ptp_ns(t: &libc::ptp_clock_time) -> i128 {
    ts_ns(t.sec, t.nsec as i64)
}

fn clock_ns(id: libc::clockid_t) -> io::Result<i128> {
    // SAFETY: zeroed timespec is a valid value; clock_gettime writes into it.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is a valid, writable timespec for the whole call.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts_ns(ts.tv_sec, ts.tv_nsec))
}

fn fd_to_clockid(fd: libc::c_int) -> libc::clockid_t {
    ((!fd) << 3) | CLOCKFD
}

/// `/dev/ptpN` of an interface, from `/sys/class/net/IFACE/device/ptp/ptpN`.
fn phc_path(iface: &str) -> Option<String> {
    let dir = format!("/sys/class/net/{iface}/device/ptp");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ptp"))
        .collect();
    names.sort();
    names.first().map(|n| format!("/dev/{n}"))
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it exactly once.
        unsafe { libc::close(self.0) };
    }
}

fn open_phc(path: &str) -> io::Result<Fd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Fd(fd))
}

fn udp_socket() -> io::Result<Fd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Fd(fd))
}

/// ioctl with a pointer argument; returns the errno on failure.
///
/// # Safety
/// `arg` must point to a live object of the type the request expects.
unsafe fn ioctl_ptr<T>(fd: libc::c_int, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: forwarded from the caller's contract.
    if unsafe { libc::ioctl(fd, req as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------- nic mode

fn nic_checks(iface: &str) {
    let path = phc_path(iface);
    check(
        "phc-sysfs",
        path.is_some(),
        format!(
            "{iface} -> {}",
            path.as_deref().unwrap_or("no ptp device in sysfs")
        ),
    );
    let path = path.unwrap_or_else(|| "/dev/ptp0".to_string());
    match open_phc(&path) {
        Ok(fd) => {
            check("phc-open", true, &path);
            phc_checks(&fd);
        }
        Err(e) => check("phc-open", false, format!("{path}: {}", errno_name(&e))),
    }
    hwtstamp_checks(iface);
}

fn phc_checks(fd: &Fd) {
    // PTP_CLOCK_GETCAPS
    // SAFETY: all-zero is a valid ptp_clock_caps.
    let mut caps: libc::ptp_clock_caps = unsafe { zeroed() };
    // SAFETY: `caps` is the struct PTP_CLOCK_GETCAPS writes.
    match unsafe { ioctl_ptr(fd.0, libc::PTP_CLOCK_GETCAPS as _, &mut caps) } {
        Ok(()) => check(
            "ptp-getcaps",
            caps.max_adj > 0,
            format!(
                "max_adj={} n_alarm={} n_ext_ts={} n_per_out={} pps={} n_pins={} cross_timestamping={}",
                caps.max_adj,
                caps.n_alarm,
                caps.n_ext_ts,
                caps.n_per_out,
                caps.pps,
                caps.n_pins,
                caps.cross_timestamping
            ),
        ),
        Err(e) => check("ptp-getcaps", false, errno_name(&e)),
    }

    // clock_gettime on the dynamic clock id
    let cid = fd_to_clockid(fd.0);
    match (
        clock_ns(libc::CLOCK_REALTIME),
        clock_ns(cid),
        clock_ns(libc::CLOCK_REALTIME),
    ) {
        (Ok(a), Ok(p), Ok(b)) => {
            let off = p - (a + b) / 2;
            check(
                "phc-gettime",
                off.abs() < 10_000_000_000,
                format!("phc-sys={} ns read-window={} ns", off, b - a),
            )
        }
        (_, Err(e), _) => check("phc-gettime", false, errno_name(&e)),
        _ => check("phc-gettime", false, "CLOCK_REALTIME failed"),
    }

    // PTP_SYS_OFFSET_PRECISE: the emulated NIC has no cross-timestamping.
    // SAFETY: all-zero is a valid ptp_sys_offset_precise.
    let mut precise: libc::ptp_sys_offset_precise = unsafe { zeroed() };
    // SAFETY: `precise` is the struct PTP_SYS_OFFSET_PRECISE reads and writes.
    match unsafe { ioctl_ptr(fd.0, libc::PTP_SYS_OFFSET_PRECISE as _, &mut precise) } {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => check(
            "ptp-sys-offset-precise",
            true,
            "EOPNOTSUPP as expected (callers must fall back to EXTENDED)",
        ),
        Ok(()) => check(
            "ptp-sys-offset-precise",
            true,
            format!(
                "supported here: device-realtime={} ns",
                ptp_ns(&precise.device) - ptp_ns(&precise.sys_realtime)
            ),
        ),
        Err(e) => check("ptp-sys-offset-precise", false, errno_name(&e)),
    }

    // PTP_SYS_OFFSET_EXTENDED: sys-phc-sys triples.
    // SAFETY: all-zero is a valid ptp_sys_offset_extended (clockid 0 = CLOCK_REALTIME).
    let mut ext: libc::ptp_sys_offset_extended = unsafe { zeroed() };
    ext.n_samples = 7;
    // SAFETY: `ext` is the struct PTP_SYS_OFFSET_EXTENDED reads and writes.
    match unsafe { ioctl_ptr(fd.0, libc::PTP_SYS_OFFSET_EXTENDED as _, &mut ext) } {
        Ok(()) => {
            let n = (ext.n_samples as usize).min(ext.ts.len());
            let samples: Vec<(i128, i128)> = ext.ts[..n]
                .iter()
                .map(|t| {
                    let (s1, p, s2) = (ptp_ns(&t[0]), ptp_ns(&t[1]), ptp_ns(&t[2]));
                    (p - (s1 + s2) / 2, s2 - s1)
                })
                .collect();
            report_offsets("ptp-sys-offset-extended", &samples);
        }
        Err(e) => check("ptp-sys-offset-extended", false, errno_name(&e)),
    }

    // PTP_SYS_OFFSET: sys, phc, sys, phc, ..., sys.
    // SAFETY: all-zero is a valid ptp_sys_offset.
    let mut basic: libc::ptp_sys_offset = unsafe { zeroed() };
    basic.n_samples = 7;
    // SAFETY: `basic` is the struct PTP_SYS_OFFSET reads and writes.
    match unsafe { ioctl_ptr(fd.0, libc::PTP_SYS_OFFSET as _, &mut basic) } {
        Ok(()) => {
            let n = (basic.n_samples as usize).min((basic.ts.len() - 1) / 2);
            let samples: Vec<(i128, i128)> = (0..n)
                .map(|i| {
                    let s1 = ptp_ns(&basic.ts[2 * i]);
                    let p = ptp_ns(&basic.ts[2 * i + 1]);
                    let s2 = ptp_ns(&basic.ts[2 * i + 2]);
                    (p - (s1 + s2) / 2, s2 - s1)
                })
                .collect();
            report_offsets("ptp-sys-offset", &samples);
        }
        Err(e) => check("ptp-sys-offset", false, errno_name(&e)),
    }
}

/// PASS if there are samples, every window is positive and the PHC is within 10 s
/// of the system clock (the driver sets it from the system clock at probe).
fn report_offsets(name: &str, samples: &[(i128, i128)]) {
    let Some(best) = samples.iter().min_by_key(|s| s.1) else {
        check(name, false, "no samples returned");
        return;
    };
    let offs: Vec<String> = samples.iter().map(|s| format!("{}", s.0)).collect();
    let ok = samples
        .iter()
        .all(|s| s.1 > 0 && s.0.abs() < 10_000_000_000);
    check(
        name,
        ok,
        format!(
            "n={} phc-sys offsets ns [{}] best: offset={} ns window={} ns",
            samples.len(),
            offs.join(","),
            best.0,
            best.1
        ),
    );
}

fn ifreq_for(iface: &str) -> Option<libc::ifreq> {
    if iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    Some(ifr)
}

fn set_hwtstamp(
    sock: &Fd,
    iface: &str,
    tx: libc::c_uint,
    rx: libc::c_uint,
) -> io::Result<libc::hwtstamp_config> {
    let mut cfg = libc::hwtstamp_config {
        flags: 0,
        tx_type: tx as libc::c_int,
        rx_filter: rx as libc::c_int,
    };
    let mut ifr = ifreq_for(iface).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    ifr.ifr_ifru.ifru_data = (&mut cfg as *mut libc::hwtstamp_config).cast();
    // SAFETY: `ifr` carries a pointer to `cfg`, both live for the whole call.
    unsafe { ioctl_ptr(sock.0, libc::SIOCSHWTSTAMP, &mut ifr)? };
    Ok(cfg)
}

fn get_hwtstamp(sock: &Fd, iface: &str) -> io::Result<libc::hwtstamp_config> {
    // SAFETY: all-zero is a valid hwtstamp_config.
    let mut cfg: libc::hwtstamp_config = unsafe { zeroed() };
    let mut ifr = ifreq_for(iface).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    ifr.ifr_ifru.ifru_data = (&mut cfg as *mut libc::hwtstamp_config).cast();
    // SAFETY: `ifr` carries a pointer to `cfg`, both live for the whole call.
    unsafe { ioctl_ptr(sock.0, libc::SIOCGHWTSTAMP, &mut ifr)? };
    Ok(cfg)
}

fn hwtstamp_checks(iface: &str) {
    let sock = match udp_socket() {
        Ok(s) => s,
        Err(e) => return check("hwtstamp-socket", false, errno_name(&e)),
    };
    // Filters the emulated igb refuses (the server must then fall back).
    for (name, rx) in [
        ("hwtstamp-rx-ntp-all", libc::HWTSTAMP_FILTER_NTP_ALL),
        ("hwtstamp-rx-all", libc::HWTSTAMP_FILTER_ALL),
    ] {
        match set_hwtstamp(&sock, iface, libc::HWTSTAMP_TX_ON, rx) {
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                check(name, true, "ERANGE as expected on igb (filter refused)")
            }
            Ok(cfg) => check(
                name,
                true,
                format!(
                    "accepted here (rx_filter now {}), not ERANGE as on igb",
                    cfg.rx_filter
                ),
            ),
            Err(e) => check(name, false, errno_name(&e)),
        }
    }
    // What the server would settle for: PTP_V2_EVENT (or NONE) with TX on.
    let mut done = false;
    for (label, rx) in [
        ("PTP_V2_EVENT", libc::HWTSTAMP_FILTER_PTP_V2_EVENT),
        ("NONE", libc::HWTSTAMP_FILTER_NONE),
    ] {
        match set_hwtstamp(&sock, iface, libc::HWTSTAMP_TX_ON, rx) {
            Ok(cfg) => {
                let readback = match get_hwtstamp(&sock, iface) {
                    Ok(g) => format!(
                        "SIOCGHWTSTAMP tx_type={} rx_filter={}",
                        g.tx_type, g.rx_filter
                    ),
                    Err(e) => format!("SIOCGHWTSTAMP {}", errno_name(&e)),
                };
                check(
                    "hwtstamp-tx-on",
                    cfg.tx_type == libc::HWTSTAMP_TX_ON as libc::c_int,
                    format!(
                        "rx={label} accepted: tx_type={} rx_filter={}; {readback}",
                        cfg.tx_type, cfg.rx_filter
                    ),
                );
                done = true;
                break;
            }
            Err(e) => println!("INFO hwtstamp rx={label}: {}", errno_name(&e)),
        }
    }
    if !done {
        check(
            "hwtstamp-tx-on",
            false,
            "neither PTP_V2_EVENT nor NONE accepted with TX on",
        );
    }
}

// ---------------------------------------------------------------- send mode

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(ip).to_be();
    sa
}

fn bind_v4(sock: &Fd, ip: Ipv4Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(ip, port);
    // SAFETY: `sa` is a live sockaddr_in of the size passed.
    let r = unsafe {
        libc::bind(
            sock.0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as _,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt_u32(sock: &Fd, level: libc::c_int, opt: libc::c_int, val: u32) -> io::Result<()> {
    // SAFETY: `val` is a live u32 and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.0,
            level,
            opt,
            (&val as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn poll_fd(sock: &Fd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: sock.0,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.revents)
}

/// What one recvmsg brought: timestamps (software, hardware) and the error-queue info.
#[derive(Default)]
struct Recv {
    bytes: usize,
    data: Vec<u8>,
    sw_ns: Option<i128>,
    hw_ns: Option<i128>,
    ee: Option<(u32, u8, u32)>, // errno, origin, data (OPT_ID)
}

fn recv_msg(sock: &Fd, flags: libc::c_int) -> io::Result<Recv> {
    let mut buf = [0u8; 512];
    // u64 array keeps the control buffer aligned for cmsghdr.
    let mut ctrl = [0u64; 128];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers are filled below.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 128]>();
    // SAFETY: msg points to live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.0, &mut msg, flags | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Recv {
        bytes: n as usize,
        data: buf[..(n as usize).min(buf.len())].to_vec(),
        ..Default::default()
    };
    // SAFETY: msg was filled by recvmsg; CMSG_* walk within msg_controllen.
    let mut cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cm.is_null() {
        // SAFETY: `cm` is non-null and points inside the control buffer.
        let (level, ty) = unsafe { ((*cm).cmsg_level, (*cm).cmsg_type) };
        // SAFETY: as above; CMSG_DATA gives the payload start of this cmsg.
        let data = unsafe { libc::CMSG_DATA(cm) };
        if level == libc::SOL_SOCKET && ty == SCM_TIMESTAMPING {
            // SAFETY: SCM_TIMESTAMPING carries three timespecs; read unaligned.
            let ts: [libc::timespec; 3] = unsafe { std::ptr::read_unaligned(data.cast()) };
            if ts[0].tv_sec != 0 || ts[0].tv_nsec != 0 {
                out.sw_ns = Some(ts_ns(ts[0].tv_sec, ts[0].tv_nsec));
            }
            if ts[2].tv_sec != 0 || ts[2].tv_nsec != 0 {
                out.hw_ns = Some(ts_ns(ts[2].tv_sec, ts[2].tv_nsec));
            }
        } else if level == libc::SOL_IP && ty == libc::IP_RECVERR {
            // SAFETY: IP_RECVERR carries a sock_extended_err; read unaligned.
            let ee: libc::sock_extended_err = unsafe { std::ptr::read_unaligned(data.cast()) };
            out.ee = Some((ee.ee_errno, ee.ee_origin, ee.ee_data));
        }
        // SAFETY: walking the same control buffer recvmsg filled.
        cm = unsafe { libc::CMSG_NXTHDR(&msg, cm) };
    }
    Ok(out)
}

fn send_checks(iface: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16, count: u32) {
    // PHC of the interface, to place the hardware stamps.
    let phc = phc_path(iface).and_then(|p| open_phc(&p).ok());
    let sock = match udp_socket() {
        Ok(s) => s,
        Err(e) => {
            return check(
                "udp-tx-hw-timestamp",
                false,
                format!("socket: {}", errno_name(&e)),
            )
        }
    };
    // Make sure TX stamping is on in the NIC (the nic mode may not have run).
    if let Err(e) = set_hwtstamp(
        &sock,
        iface,
        libc::HWTSTAMP_TX_ON,
        libc::HWTSTAMP_FILTER_NONE,
    )
    .or_else(|_| {
        set_hwtstamp(
            &sock,
            iface,
            libc::HWTSTAMP_TX_ON,
            libc::HWTSTAMP_FILTER_PTP_V2_EVENT,
        )
    }) {
        return check(
            "udp-tx-hw-timestamp",
            false,
            format!("SIOCSHWTSTAMP: {}", errno_name(&e)),
        );
    }
    let flags = libc::SOF_TIMESTAMPING_TX_HARDWARE
        | libc::SOF_TIMESTAMPING_RAW_HARDWARE
        | libc::SOF_TIMESTAMPING_OPT_ID
        | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    if let Err(e) = setsockopt_u32(&sock, libc::SOL_SOCKET, SO_TIMESTAMPING, flags) {
        return check(
            "udp-tx-hw-timestamp",
            false,
            format!("SO_TIMESTAMPING: {}", errno_name(&e)),
        );
    }
    if let Err(e) = bind_v4(&sock, src, 0) {
        return check(
            "udp-tx-hw-timestamp",
            false,
            format!("bind {src}: {}", errno_name(&e)),
        );
    }
    let to = sockaddr(dst, port);
    let mut got = 0u32;
    let mut notes = Vec::new();
    for i in 0..count {
        let payload = format!("{}{i}", std::str::from_utf8(PAYLOAD_TAG).unwrap_or(""));
        let sys_before = clock_ns(libc::CLOCK_REALTIME).unwrap_or(0);
        // SAFETY: payload and `to` are live for the call, sizes passed.
        let r = unsafe {
            libc::sendto(
                sock.0,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as _,
            )
        };
        if r < 0 {
            notes.push(format!(
                "#{i} sendto {}",
                errno_name(&io::Error::last_os_error())
            ));
            continue;
        }
        // Wait for the stamp on the error queue (POLLERR), bounded: TCG is slow.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stamped = false;
        while Instant::now() < deadline && !stamped {
            let rev = match poll_fd(&sock, 0, deadline - Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("#{i} poll {}", errno_name(&e)));
                    break;
                }
            };
            if rev & libc::POLLERR == 0 {
                continue;
            }
            match recv_msg(&sock, libc::MSG_ERRQUEUE) {
                Ok(m) => {
                    let id_ok = matches!(m.ee, Some((e, o, d)) if e == libc::ENOMSG as u32
                        && o == libc::SO_EE_ORIGIN_TIMESTAMPING && d == i);
                    match m.hw_ns {
                        Some(hw) if id_ok => {
                            stamped = true;
                            got += 1;
                            let phc_now =
                                phc.as_ref().and_then(|f| clock_ns(fd_to_clockid(f.0)).ok());
                            let age = phc_now.map(|p| format!("{} us", (p - hw) / 1000));
                            notes.push(format!(
                                "#{i} hw={}.{:09} hw-sys(send)={} us phc-age={} len={}",
                                hw / 1_000_000_000,
                                hw % 1_000_000_000,
                                (hw - sys_before) / 1000,
                                age.unwrap_or_else(|| "?".into()),
                                m.bytes
                            ));
                        }
                        _ => notes.push(format!(
                            "#{i} unexpected errqueue msg ee={:?} hw={:?}",
                            m.ee, m.hw_ns
                        )),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    notes.push(format!("#{i} recvmsg {}", errno_name(&e)));
                    break;
                }
            }
        }
        if !stamped {
            notes.push(format!("#{i} no hardware TX timestamp within 5 s"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    check(
        "udp-tx-hw-timestamp",
        got == count,
        format!(
            "{got}/{count} datagrams {src} -> {dst}:{port} stamped; {}",
            notes.join("; ")
        ),
    );
}

// ---------------------------------------------------------------- recv mode

fn recv_checks(bind: Ipv4Addr, port: u16, count: u32, timeout: Duration) {
    let sock = match udp_socket() {
        Ok(s) => s,
        Err(e) => return check("udp-rx", false, format!("socket: {}", errno_name(&e))),
    };
    let flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_RX_HARDWARE
        | libc::SOF_TIMESTAMPING_RAW_HARDWARE;
    if let Err(e) = setsockopt_u32(&sock, libc::SOL_SOCKET, SO_TIMESTAMPING, flags) {
        return check(
            "udp-rx",
            false,
            format!("SO_TIMESTAMPING: {}", errno_name(&e)),
        );
    }
    if let Err(e) = bind_v4(&sock, bind, port) {
        return check(
            "udp-rx",
            false,
            format!("bind {bind}:{port}: {}", errno_name(&e)),
        );
    }
    println!("INFO recv: listening on {bind}:{port}");
    let deadline = Instant::now() + timeout;
    let (mut got, mut sw, mut hw) = (0u32, 0u32, 0u32);
    let mut notes = Vec::new();
    while got < count && Instant::now() < deadline {
        match poll_fd(&sock, libc::POLLIN, deadline - Instant::now()) {
            Ok(r) if r & libc::POLLIN != 0 => {}
            Ok(_) => continue,
            Err(e) => {
                notes.push(format!("poll {}", errno_name(&e)));
                break;
            }
        }
        let now = clock_ns(libc::CLOCK_REALTIME).unwrap_or(0);
        match recv_msg(&sock, 0) {
            Ok(m) if m.data.starts_with(PAYLOAD_TAG) => {
                got += 1;
                sw += m.sw_ns.is_some() as u32;
                hw += m.hw_ns.is_some() as u32;
                notes.push(format!(
                    "{:?} sw-rx-age={} hw-rx={}",
                    String::from_utf8_lossy(&m.data[PAYLOAD_TAG.len()..]),
                    m.sw_ns
                        .map(|s| format!("{} us", (now - s) / 1000))
                        .unwrap_or_else(|| "none".into()),
                    if m.hw_ns.is_some() { "yes" } else { "none" }
                ));
            }
            Ok(_) => notes.push("foreign datagram".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                notes.push(format!("recvmsg {}", errno_name(&e)));
                break;
            }
        }
    }
    check(
        "udp-rx",
        got > 0 && sw == got,
        format!("{got}/{count} received, {sw} with software RX stamp, {hw} with hardware RX stamp (none expected on igb for UDP); {}", notes.join("; ")),
    );
}

// ---------------------------------------------------------------- main

fn usage() -> ! {
    eprintln!(
        "usage: vm-probe nic IFACE\n       vm-probe send IFACE SRC_IP DST_IP PORT COUNT\n       vm-probe recv BIND_IP PORT COUNT TIMEOUT_MS"
    );
    std::process::exit(2);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("nic") => nic_checks(&arg::<String>(&args, 2)),
        Some("send") => send_checks(
            &arg::<String>(&args, 2),
            arg(&args, 3),
            arg(&args, 4),
            arg(&args, 5),
            arg(&args, 6),
        ),
        Some("recv") => recv_checks(
            arg(&args, 2),
            arg(&args, 3),
            arg(&args, 4),
            Duration::from_millis(arg(&args, 5)),
        ),
        _ => usage(),
    }
    std::process::exit(if FAILURES.load(Ordering::Relaxed) == 0 {
        0
    } else {
        1
    });
}
