//! UDP socket set-up: binding, `SO_TIMESTAMPING`, and `sendmsg`/`recvmsg`
//! with control data (no allocation) for the paths that do not go through io_uring.
//!
//! Timestamping policy: the socket gets the *reporting* flags
//! (`SOF_TIMESTAMPING_SOFTWARE`, `_RAW_HARDWARE`), the *receive generation*
//! flags, and the options (`OPT_ID`, `OPT_TSONLY`, `OPT_PKTINFO`). Transmit
//! timestamps are *generated* only for the replies that ask for them, with a
//! per-message `SO_TIMESTAMPING` control message
//! ([`crate::net::cmsg::build_reply_control`]): basic replies pay nothing.
//! `Documentation/networking/timestamping.rst` (1.3.4): "applications must
//! still enable timestamp reporting via setsockopt to receive timestamps";
//! and `SCM_TS_OPT_ID` is refused (EINVAL) unless `SOF_TIMESTAMPING_OPT_ID` is on
//! the socket (`net/core/sock.c`, `__sock_cmsg_send`).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    self, setsockopt, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use super::addr::{parse_sockaddr, write_sockaddr, SOCKADDR_MAX};
use super::cmsg::{self, CmsgBuffer};

// ---------------------------------------------------------------------------
// Binding.

/// Why [`bind_udp`] failed; `Display` gives one line an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// `EADDRINUSE`: another socket holds the port (without `SO_REUSEPORT` on both).
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// `EACCES`/`EPERM`: a privileged port without the capability, or a security policy.
    PermissionDenied {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// `EADDRNOTAVAIL`: no local interface has this address.
    AddrNotAvailable {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// `EAFNOSUPPORT`: the address family (usually IPv6) is disabled on this host.
    FamilyNotSupported {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Any other failure of a step (socket, setsockopt, bind).
    Other {
        /// The address asked for.
        addr: SocketAddr,
        /// The step that failed, e.g. `"setsockopt(SO_REUSEPORT)"`.
        op: &'static str,
        /// The error.
        errno: Errno,
    },
}

impl BindError {
    fn from_errno(addr: SocketAddr, op: &'static str, errno: Errno) -> BindError {
        match errno {
            Errno::EADDRINUSE => BindError::AddrInUse { addr },
            Errno::EACCES | Errno::EPERM => BindError::PermissionDenied { addr },
            Errno::EADDRNOTAVAIL => BindError::AddrNotAvailable { addr },
            Errno::EAFNOSUPPORT => BindError::FamilyNotSupported { addr },
            _ => BindError::Other { addr, op, errno },
        }
    }

    /// The underlying errno.
    pub fn errno(&self) -> Errno {
        match self {
            BindError::AddrInUse { .. } => Errno::EADDRINUSE,
            BindError::PermissionDenied { .. } => Errno::EACCES,
            BindError::AddrNotAvailable { .. } => Errno::EADDRNOTAVAIL,
            BindError::FamilyNotSupported { .. } => Errno::EAFNOSUPPORT,
            BindError::Other { errno, .. } => *errno,
        }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::AddrInUse { addr } => write!(
                f,
                "UDP port {} on {} is already in use (another NTP server running?)",
                addr.port(),
                addr.ip()
            ),
            BindError::PermissionDenied { addr } if addr.port() < 1024 => write!(
                f,
                "binding port {} needs root or CAP_NET_BIND_SERVICE: run as root or grant it with setcap",
                addr.port()
            ),
            BindError::PermissionDenied { addr } => write!(
                f,
                "binding UDP {addr} was refused (permission denied by a security policy?)"
            ),
            BindError::AddrNotAvailable { addr } => write!(
                f,
                "cannot bind UDP {addr}: no interface of this host has address {} (bind to {} to listen on all)",
                addr.ip(),
                if addr.is_ipv4() { "0.0.0.0" } else { "::" }
            ),
            BindError::FamilyNotSupported { addr } => write!(
                f,
                "cannot bind UDP {addr}: {} is disabled on this host",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            BindError::Other { addr, op, errno } => {
                write!(f, "UDP {addr}: {op} failed: {}", errno.desc())
            }
        }
    }
}

impl std::error::Error for BindError {}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        io::Error::new(io::Error::from(e.errno()).kind(), e.to_string())
    }
}

/// Set the socket's receive buffer to `bytes` (`SO_RCVBUFFORCE` when allowed,
/// which root is, else `SO_RCVBUF`, which the kernel caps at
/// `net.core.rmem_max`). Returns the size the kernel reports afterwards (it
/// doubles the value asked, for its bookkeeping).
pub fn set_recv_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(&fd, sockopt::RcvBufForce, &bytes).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &bytes).map_err(io::Error::from)?;
    }
    getsockopt(&fd, sockopt::RcvBuf).map_err(io::Error::from)
}

/// A non-blocking, close-on-exec UDP socket of `addr`'s family, not yet
/// bound; `IPV6_V6ONLY` for IPv6 (the v4 wildcard is a separate socket).
fn udp_socket(addr: SocketAddr) -> Result<OwnedFd, BindError> {
    let err = |op: &'static str| move |e: Errno| BindError::from_errno(addr, op, e);
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err("setsockopt(IPV6_V6ONLY)"))?;
    }
    Ok(fd)
}

/// Creates a non-blocking, close-on-exec UDP socket bound to `addr`:
/// `IPV6_V6ONLY` for IPv6 (the v4 wildcard is a separate socket),
/// `SO_REUSEPORT` when `reuseport` (one socket per worker on the same port),
/// and `IP_PKTINFO` / `IPV6_RECVPKTINFO` on, so each request tells the local
/// address it was sent to (the reply's source).
pub fn bind_udp(addr: SocketAddr, reuseport: bool) -> Result<OwnedFd, BindError> {
    let err = |op: &'static str| move |e: Errno| BindError::from_errno(addr, op, e);
    let fd = udp_socket(addr)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)
            .map_err(err("setsockopt(IPV6_RECVPKTINFO)"))?;
    } else {
        setsockopt(&fd, sockopt::Ipv4PacketInfo, &true).map_err(err("setsockopt(IP_PKTINFO)"))?;
    }
    if reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(err("setsockopt(SO_REUSEPORT)"))?;
    }
    // Each datagram then tells how many the socket dropped for a full buffer.
    setsockopt(&fd, sockopt::RxqOvfl, &1).map_err(err("setsockopt(SO_RXQ_OVFL)"))?;
    let sa = SockaddrStorage::from(addr);
    socket::bind(fd.as_raw_fd(), &sa).map_err(err("bind"))?;
    Ok(fd)
}

/// Send-only twins of the receiving sockets `group` (all bound to one address
/// and port, e.g. one per worker through `SO_REUSEPORT`): one per member, in
/// order, bound to the same address and port, so replies sent from them carry
/// the server's port, but connected to a peer that never sends to the server,
/// so the kernel never hands them a request.
///
/// Why: transmit timestamps are queued on the *sending* socket's error queue,
/// inside the driver's transmit and before the packet reaches the wire (or a
/// veth peer). Queueing one wakes every waiter on that socket, and a
/// receiving socket always has one: the io_uring multishot receive's poll
/// entry. That wake-up (the ring's task work) ran between the stamp and the
/// packet's departure, so replies left later than their stamps said. A twin
/// has no waiter: the stamp is followed at once by the packet.
///
/// How they stay send-only: a connected UDP socket scores -1 in the kernel's
/// lookup for every datagram not from its peer (`compute_score` in
/// `net/ipv4/udp.c`), and the peer is the bound address itself (loopback for
/// a wildcard bind) at port [`DISCARD_PORT`], which no client sends from.
/// Twins are not in the `SO_REUSEPORT` group (connected members would skew
/// the group's hash), so the group and the twins carry `SO_REUSEADDR` just for
/// the twins' `bind` and lose it again after: a later bind by anyone else is
/// refused as before. A `sendmsg` with a destination address is allowed on a
/// connected UDP socket and goes to that destination.
pub fn bind_send_twins(group: &[BorrowedFd<'_>]) -> Result<Vec<OwnedFd>, BindError> {
    let Some(first) = group.first() else {
        return Ok(Vec::new());
    };
    let addr = local_addr(*first).map_err(|e| BindError::Other {
        addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        op: "getsockname",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    let err = |op: &'static str| move |e: Errno| BindError::from_errno(addr, op, e);
    let mut twins = Vec::with_capacity(group.len());
    for _ in group {
        let fd = udp_socket(addr)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err("setsockopt(SO_REUSEADDR)"))?;
        twins.push(fd);
    }
    let set_group = |on: bool| {
        group
            .iter()
            .try_for_each(|fd| setsockopt(fd, sockopt::ReuseAddr, &on))
            .map_err(err("setsockopt(SO_REUSEADDR)"))
    };
    let bound = set_group(true).and_then(|()| {
        twins
            .iter()
            .try_for_each(|t| socket::bind(t.as_raw_fd(), &SockaddrStorage::from(addr)))
            .map_err(err("bind"))
    });
    // Whatever the binds did: no socket lets another bind share the port.
    let cleared = set_group(false).and_then(|()| {
        twins
            .iter()
            .try_for_each(|t| setsockopt(t, sockopt::ReuseAddr, &false))
            .map_err(err("setsockopt(SO_REUSEADDR)"))
    });
    bound?;
    cleared?;
    let peer_ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let peer = SockaddrStorage::from(SocketAddr::new(peer_ip, DISCARD_PORT));
    for t in &twins {
        socket::connect(t.as_raw_fd(), &peer).map_err(err("connect"))?;
    }
    Ok(twins)
}

/// The port a send twin is connected to ([`bind_send_twins`]): discard, which
/// no NTP client sends from.
pub const DISCARD_PORT: u16 = 9;

/// The address a socket is bound to (`getsockname`), e.g. to learn an ephemeral port.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let sa: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = sa.as_sockaddr_in() {
        Ok(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else if let Some(v6) = sa.as_sockaddr_in6() {
        Ok(SocketAddr::V6(SocketAddrV6::from(*v6)))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "getsockname: not an IP socket",
        ))
    }
}

/// What a socket holds for its reader right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A datagram is waiting.
    pub data: bool,
    /// The error queue is not empty (transmit timestamps, errors).
    pub error_queue: bool,
}

/// What the socket holds now (`poll` with no wait; an error reads as nothing).
/// Used by the worker's watchdog.
pub fn readiness(fd: BorrowedFd<'_>) -> Readiness {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => {
            let r = fds[0].revents().unwrap_or(PollFlags::empty());
            Readiness {
                data: r.contains(PollFlags::POLLIN),
                error_queue: r.contains(PollFlags::POLLERR),
            }
        }
        _ => Readiness::default(),
    }
}

// ---------------------------------------------------------------------------
// SO_TIMESTAMPING.

/// `SOF_TIMESTAMPING_*` flags (`include/uapi/linux/net_tstamp.h`), libc's
/// under short names.
pub mod sof {
    /// Generate hardware transmit stamps (we request it per message, not here).
    pub const TX_HARDWARE: u32 = libc::SOF_TIMESTAMPING_TX_HARDWARE;
    /// Generate software transmit stamps (we request it per message, not here).
    pub const TX_SOFTWARE: u32 = libc::SOF_TIMESTAMPING_TX_SOFTWARE;
    /// Generate hardware receive stamps.
    pub const RX_HARDWARE: u32 = libc::SOF_TIMESTAMPING_RX_HARDWARE;
    /// Generate software receive stamps.
    pub const RX_SOFTWARE: u32 = libc::SOF_TIMESTAMPING_RX_SOFTWARE;
    /// Report software stamps (slot 0).
    pub const SOFTWARE: u32 = libc::SOF_TIMESTAMPING_SOFTWARE;
    /// Report raw hardware stamps (slot 2).
    pub const RAW_HARDWARE: u32 = libc::SOF_TIMESTAMPING_RAW_HARDWARE;
    /// Tag transmit stamps with a key (`ee_data`); needed for `SCM_TS_OPT_ID`.
    pub const OPT_ID: u32 = libc::SOF_TIMESTAMPING_OPT_ID;
    /// Loop back transmit stamps without the packet.
    pub const OPT_TSONLY: u32 = libc::SOF_TIMESTAMPING_OPT_TSONLY;
    /// `SCM_TIMESTAMPING_PKTINFO` with hardware receive stamps.
    pub const OPT_PKTINFO: u32 = libc::SOF_TIMESTAMPING_OPT_PKTINFO;
    /// Bind hardware stamps to a PHC virtual clock (`struct so_timestamping`).
    pub const BIND_PHC: u32 = libc::SOF_TIMESTAMPING_BIND_PHC;
}

/// What timestamping to enable on a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimestampingConfig {
    /// Kernel software receive stamps.
    pub rx_software: bool,
    /// NIC hardware receive stamps (the NIC must also be configured: `SIOCSHWTSTAMP`).
    pub rx_hardware: bool,
    /// Report software transmit stamps (generation is requested per message).
    pub tx_software: bool,
    /// Report hardware transmit stamps (generation is requested per message).
    pub tx_hardware: bool,
    /// `SOF_TIMESTAMPING_OPT_ID`: keys in transmit reports; required for `SCM_TS_OPT_ID`.
    pub opt_id: bool,
    /// `SOF_TIMESTAMPING_OPT_TSONLY`: transmit reports without the packet
    /// (less receive-buffer use; works whatever `net.core.tstamp_allow_data` says).
    pub tsonly: bool,
    /// `SOF_TIMESTAMPING_OPT_PKTINFO`: interface and frame length with hardware receive stamps.
    pub pktinfo: bool,
    /// `SOF_TIMESTAMPING_BIND_PHC` with this PHC virtual clock index (the socket
    /// must be bound to a device with `SO_BINDTODEVICE`, and the index must be
    /// one of that device's vclocks, or the kernel refuses).
    pub bind_phc: Option<i32>,
}

impl TimestampingConfig {
    /// The `SO_TIMESTAMPING` flags this configuration sets on the socket.
    pub const fn flags(&self) -> u32 {
        let mut f = 0;
        if self.rx_software {
            f |= sof::RX_SOFTWARE | sof::SOFTWARE;
        }
        if self.tx_software {
            f |= sof::SOFTWARE;
        }
        if self.rx_hardware {
            f |= sof::RX_HARDWARE | sof::RAW_HARDWARE;
        }
        if self.tx_hardware {
            f |= sof::RAW_HARDWARE;
        }
        if self.opt_id {
            f |= sof::OPT_ID;
        }
        if self.tsonly {
            f |= sof::OPT_TSONLY;
        }
        if self.pktinfo {
            f |= sof::OPT_PKTINFO;
        }
        if self.bind_phc.is_some() {
            f |= sof::BIND_PHC;
        }
        f
    }
}

/// Sets `SO_TIMESTAMPING` on `fd` as `cfg` says and returns the flags set.
/// No transmit *generation* flag is set: ask per reply with
/// [`crate::net::cmsg::TxTsRequest`].
pub fn enable_timestamping(fd: BorrowedFd<'_>, cfg: &TimestampingConfig) -> io::Result<u32> {
    let flags = cfg.flags();
    /// `struct so_timestamping { int flags; int bind_phc; }` (Linux 5.14+).
    #[repr(C)]
    struct SoTimestamping {
        flags: libc::c_int,
        bind_phc: libc::c_int,
    }
    let with_phc = SoTimestamping {
        flags: flags as libc::c_int,
        bind_phc: cfg.bind_phc.unwrap_or(0),
    };
    let plain: u32 = flags;
    let (ptr, len) = if cfg.bind_phc.is_some() {
        (
            (&with_phc as *const SoTimestamping).cast::<libc::c_void>(),
            std::mem::size_of::<SoTimestamping>(),
        )
    } else {
        (
            (&plain as *const u32).cast::<libc::c_void>(),
            std::mem::size_of::<u32>(),
        )
    };
    // SAFETY: `ptr` points at a live value of `len` bytes for the duration of
    // the call; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            ptr,
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setsockopt(SO_TIMESTAMPING, {flags:#x}) failed: {e}"),
        ));
    }
    Ok(flags)
}

/// Whether the kernel accepts `SCM_TS_OPT_ID` (Linux 6.13+): sends one byte
/// with it from a throw-away loopback socket to itself. `Ok(false)` when
/// `sendmsg` says EINVAL (an unknown `SOL_SOCKET` control message); `Err` when
/// the probe itself could not run (e.g. loopback down).
pub fn probe_scm_ts_opt_id() -> io::Result<bool> {
    let fd = bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false)?;
    let cfg = TimestampingConfig {
        tx_software: true,
        opt_id: true,
        tsonly: true,
        ..Default::default()
    };
    enable_timestamping(fd.as_fd(), &cfg)?;
    let me = local_addr(fd.as_fd())?;
    let mut control = CmsgBuffer::<{ cmsg::REPLY_CONTROL_SPACE }>::new();
    // No generation flag: nothing is stamped, only the key cmsg is parsed.
    let req = cmsg::TxTsRequest {
        opt_id: Some(1),
        ..Default::default()
    };
    let n = cmsg::build_reply_control(&mut control.0, None, Some(req));
    match send_with_control(fd.as_fd(), &[0], me, &control.0[..n]) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// sendmsg / recvmsg with control data.

/// `sendmsg` of one datagram to `dest` with `control` as ancillary data
/// (e.g. from [`crate::net::cmsg::build_reply_control`]; may be empty).
/// Retries on EINTR; a non-blocking socket gives `WouldBlock` when full.
pub fn send_with_control(
    fd: BorrowedFd<'_>,
    data: &[u8],
    dest: SocketAddr,
    control: &[u8],
) -> io::Result<usize> {
    let mut name = [0u8; SOCKADDR_MAX];
    let name_len = write_sockaddr(&dest, &mut name);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = name_len as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        // The kernel only reads the control data on send.
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
    }
    loop {
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated
        // length (name, one iovec over `data`, `control`) for the whole call;
        // sendmsg does not write through them.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What [`recv_with_control`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes of payload stored in the buffer.
    pub len: usize,
    /// The sender (`None` for error-queue messages without one, or unknown families).
    pub src: Option<SocketAddr>,
    /// Bytes of control data stored (parse `control[..control_len]`).
    pub control_len: usize,
    /// `MSG_TRUNC`: the datagram was longer than the buffer.
    pub truncated: bool,
    /// `MSG_CTRUNC`: the control data did not fit; some messages are lost.
    pub control_truncated: bool,
}

/// `recvmsg` of one datagram with its control data; `flags` as for recvmsg
/// (`0`, `libc::MSG_ERRQUEUE`, `libc::MSG_DONTWAIT`...). Retries on EINTR.
pub fn recv_with_control(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Received> {
    // Room for a sockaddr_in6; the kernel truncates anything longer (and
    // says so in msg_namelen), which parse_sockaddr then refuses.
    let mut name = [0u8; SOCKADDR_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = name.as_mut_ptr().cast();
        msg.msg_namelen = SOCKADDR_MAX as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !control.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
        }
        // SAFETY: every pointer in `msg` refers to a live, exclusively borrowed
        // buffer of the stated length; the kernel writes at most that much.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            return Ok(Received {
                len: (n as usize).min(buf.len()),
                src: parse_sockaddr(&name[..(msg.msg_namelen as usize).min(SOCKADDR_MAX)]),
                control_len: (msg.msg_controllen as usize).min(control.len()),
                truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
                control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod recv_buffer_tests {
    use super::*;

    #[test]
    fn receive_buffer_is_set() {
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let before = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::RcvBuf).unwrap();
        let got = set_recv_buffer(fd.as_fd(), 4 << 20).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(got >= 4 << 20, "root forces the size: {got}");
        } else {
            assert!(got >= before, "{got} < {before}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::cmsg::{parse_rx_control, TxTimestamp, TxTsRequest, REPLY_CONTROL_SPACE};
    use crate::net::errqueue::read_tx_timestamps;
    use std::net::UdpSocket;
    use std::net::{IpAddr, Ipv6Addr};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn now_nanos() -> i128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
    }

    /// Waits (at most `ms`) until `fd` has `events` (`libc::POLLIN`, `libc::POLLERR`).
    fn wait_ms(fd: BorrowedFd<'_>, events: libc::c_short, ms: libc::c_int) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n > 0 && p.revents & events != 0
    }

    fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short) -> bool {
        wait_ms(fd, events, 2000)
    }

    #[test]
    fn bind_v4_and_v6_loopback_ephemeral() {
        let v4 = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let a = local_addr(v4.as_fd()).unwrap();
        assert_eq!(a.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(a.port(), 0);
        match bind_udp("[::1]:0".parse().unwrap(), false) {
            Ok(v6) => {
                let a = local_addr(v6.as_fd()).unwrap();
                assert_eq!(a.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
                assert!(socket::getsockopt(&v6, sockopt::Ipv6V6Only).unwrap());
            }
            Err(
                e @ (BindError::AddrNotAvailable { .. } | BindError::FamilyNotSupported { .. }),
            ) => {
                println!("SKIP: no IPv6 loopback here: {e}")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn reuseport_twice_works_without_gives_addr_in_use() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = local_addr(a.as_fd()).unwrap();
        let b = bind_udp(addr, true).unwrap();
        assert_eq!(local_addr(b.as_fd()).unwrap(), addr);

        let plain = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let paddr = local_addr(plain.as_fd()).unwrap();
        let e = bind_udp(paddr, false).unwrap_err();
        assert_eq!(e, BindError::AddrInUse { addr: paddr });
        assert_eq!(
            e.to_string(),
            format!(
                "UDP port {} on 127.0.0.1 is already in use (another NTP server running?)",
                paddr.port()
            )
        );
        // reuseport on one side only is still a conflict.
        assert!(matches!(
            bind_udp(paddr, true),
            Err(BindError::AddrInUse { .. })
        ));
    }

    /// A send twin shares the port of its receiving socket(s) but is never
    /// handed a request; what it sends carries the port; nobody else can bind
    /// the port afterwards. IPv4 and IPv6, specific and wildcard binds, and a
    /// reuseport group of two (the group still shares the requests).
    #[test]
    fn send_twin_shares_the_port_and_receives_nothing() {
        for (bind, client_ip) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("0.0.0.0:0", "127.0.0.1"),
            ("[::1]:0", "::1"),
            ("[::]:0", "::1"),
        ] {
            let first = match bind_udp(bind.parse().unwrap(), true) {
                Ok(fd) => fd,
                Err(
                    e @ (BindError::AddrNotAvailable { .. } | BindError::FamilyNotSupported { .. }),
                ) => {
                    println!("SKIP {bind}: no IPv6 loopback here: {e}");
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let addr = local_addr(first.as_fd()).unwrap();
            let second = bind_udp(addr, true).unwrap();
            let twins = bind_send_twins(&[first.as_fd(), second.as_fd()]).unwrap();
            assert_eq!(twins.len(), 2);
            for t in &twins {
                assert_eq!(local_addr(t.as_fd()).unwrap().port(), addr.port(), "{bind}");
            }
            // Nobody else gets the port, with or without SO_REUSEADDR.
            assert!(
                matches!(bind_udp(addr, false), Err(BindError::AddrInUse { .. })),
                "{bind}"
            );
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let other =
                socket::socket(family, SockType::Datagram, SockFlag::empty(), None).unwrap();
            setsockopt(&other, sockopt::ReuseAddr, &true).unwrap();
            if addr.is_ipv6() {
                setsockopt(&other, sockopt::Ipv6V6Only, &true).unwrap();
            }
            assert_eq!(
                socket::bind(other.as_raw_fd(), &SockaddrStorage::from(addr)),
                Err(Errno::EADDRINUSE),
                "{bind}"
            );

            // 64 clients (64 source ports): every request reaches a receiving
            // socket, both of them get some, the twins none.
            let dst = SocketAddr::new(client_ip.parse().unwrap(), addr.port());
            let clients: Vec<_> = (0..64)
                .map(|_| std::net::UdpSocket::bind((client_ip, 0)).unwrap())
                .collect();
            for c in &clients {
                c.send_to(b"request", dst).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let count = |fd: &OwnedFd| {
                let s = std::net::UdpSocket::from(fd.try_clone().unwrap());
                let mut buf = [0u8; 16];
                std::iter::from_fn(|| s.recv_from(&mut buf).ok()).count()
            };
            let (a, b) = (count(&first), count(&second));
            assert_eq!(a + b, 64, "{bind}: {a} + {b}");
            assert!(
                a > 0 && b > 0,
                "{bind}: the group shares the requests: {a} + {b}"
            );
            for t in &twins {
                assert_eq!(count(t), 0, "{bind}: a twin was handed a request");
            }

            // A reply from a twin reaches the client from the server's port
            // (and from the request's address, given as the source).
            let twin = std::net::UdpSocket::from(twins[0].try_clone().unwrap());
            let to = clients[0].local_addr().unwrap();
            let mut control = CmsgBuffer::<{ cmsg::REPLY_CONTROL_SPACE }>::new();
            let n = cmsg::build_reply_control(&mut control.0, Some((dst.ip(), 0)), None);
            send_with_control(twin.as_fd(), b"reply", to, &control.0[..n]).unwrap();
            clients[0]
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 16];
            let (len, from) = clients[0].recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..len], from), (&b"reply"[..], dst), "{bind}");
        }
    }

    #[test]
    fn bind_error_messages() {
        let a: SocketAddr = "0.0.0.0:123".parse().unwrap();
        assert_eq!(
            BindError::AddrInUse { addr: a }.to_string(),
            "UDP port 123 on 0.0.0.0 is already in use (another NTP server running?)"
        );
        assert_eq!(
            BindError::from_errno(a, "bind", Errno::EACCES).to_string(),
            "binding port 123 needs root or CAP_NET_BIND_SERVICE: run as root or grant it with setcap"
        );
        let e = BindError::from_errno(a, "bind", Errno::ENOBUFS);
        assert_eq!(
            e.to_string(),
            "UDP 0.0.0.0:123: bind failed: No buffer space available"
        );
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), None);
        assert!(io.to_string().contains("No buffer space"));
    }

    #[test]
    fn bind_unavailable_address() {
        // 192.0.2.1 (TEST-NET-1) is on no interface here.
        let a: SocketAddr = "192.0.2.1:0".parse().unwrap();
        let e = bind_udp(a, false).unwrap_err();
        assert_eq!(e, BindError::AddrNotAvailable { addr: a });
        assert!(e
            .to_string()
            .contains("no interface of this host has address 192.0.2.1"));
    }

    #[test]
    fn timestamping_flags_have_no_tx_generation() {
        let cfg = TimestampingConfig {
            rx_software: true,
            rx_hardware: true,
            tx_software: true,
            tx_hardware: true,
            opt_id: true,
            tsonly: true,
            pktinfo: true,
            bind_phc: None,
        };
        let f = cfg.flags();
        assert_eq!(f & (sof::TX_HARDWARE | sof::TX_SOFTWARE), 0);
        assert_eq!(
            f,
            sof::RX_SOFTWARE
                | sof::SOFTWARE
                | sof::RX_HARDWARE
                | sof::RAW_HARDWARE
                | sof::OPT_ID
                | sof::OPT_TSONLY
                | sof::OPT_PKTINFO
        );
    }

    #[test]
    fn enable_timestamping_reads_back() {
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let cfg = SOFTWARE_RX_TX;
        let set = enable_timestamping(fd.as_fd(), &cfg).unwrap();
        let mut got = [0u32; 2];
        let mut len = std::mem::size_of_val(&got) as libc::socklen_t;
        // SAFETY: `got` is 8 writable bytes and `len` says so.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPING,
                got.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(got[0], set);
    }

    #[test]
    fn bind_phc_without_bound_device_is_an_error() {
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let cfg = TimestampingConfig {
            rx_hardware: true,
            bind_phc: Some(0),
            ..Default::default()
        };
        let e = enable_timestamping(fd.as_fd(), &cfg).unwrap_err();
        assert!(e.to_string().contains("SO_TIMESTAMPING"), "{e}");
    }

    #[test]
    fn probe_opt_id_runs() {
        let supported = probe_scm_ts_opt_id().unwrap();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!(
            "SCM_TS_OPT_ID supported: {supported} (kernel {})",
            release.trim()
        );
        // 6.13 introduced it: check the probe agrees with the version.
        let mut it = release.trim().split(['.', '-']);
        let major: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let minor: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if major > 0 {
            assert_eq!(supported, (major, minor) >= (6, 13), "kernel {release}");
        }
    }

    /// Software receive stamps, and keyed transmit reports without the packet.
    const SOFTWARE_RX_TX: TimestampingConfig = TimestampingConfig {
        rx_software: true,
        rx_hardware: false,
        tx_software: true,
        tx_hardware: false,
        opt_id: true,
        tsonly: true,
        pktinfo: false,
        bind_phc: None,
    };

    /// Enabling timestamps turns on a kernel static key from a work queue, so
    /// on a busy machine the first datagrams after `enable_timestamping` can
    /// come unstamped. Send warm-ups until one is stamped (at most 2 s).
    fn wait_until_stamped(server: &OwnedFd, client: &UdpSocket, to: SocketAddr) {
        let mut buf = [0u8; 64];
        let mut control = CmsgBuffer::<256>::new();
        for _ in 0..200 {
            client.send_to(b"warm-up", to).unwrap();
            assert!(
                wait_for(server.as_fd(), libc::POLLIN),
                "no warm-up datagram"
            );
            let r = recv_with_control(server.as_fd(), &mut buf, &mut control.0, 0).unwrap();
            if parse_rx_control(&control.0[..r.control_len])
                .software
                .is_some()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no receive timestamp within 2 s of enabling them");
    }

    /// Full loopback round trip: RX software stamp and PKTINFO, a reply with a
    /// per-message TX request, then the TX stamp from the error queue.
    fn round_trip(server_addr: SocketAddr, client_bind: &str) {
        let server = bind_udp(server_addr, false).unwrap();
        enable_timestamping(server.as_fd(), &SOFTWARE_RX_TX).unwrap();
        let server_addr = local_addr(server.as_fd()).unwrap();
        let client = UdpSocket::bind(client_bind).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        wait_until_stamped(&server, &client, server_addr);

        let before = now_nanos();
        client.send_to(b"request-48-bytes", server_addr).unwrap();
        assert!(wait_for(server.as_fd(), libc::POLLIN), "no request");
        let waiting = Readiness {
            data: true,
            error_queue: false,
        };
        assert_eq!(readiness(server.as_fd()), waiting);
        let mut buf = [0u8; 64];
        let mut control = CmsgBuffer::<256>::new();
        let r = recv_with_control(server.as_fd(), &mut buf, &mut control.0, 0).unwrap();
        assert_eq!(&buf[..r.len], b"request-48-bytes");
        assert_eq!(r.src, Some(client.local_addr().unwrap()));
        assert!(!r.control_truncated);
        let meta = parse_rx_control(&control.0[..r.control_len]);
        let rx = meta.software.expect("software RX stamp");
        let after = now_nanos();
        assert!(rx.as_nanos() >= before - 1_000_000_000 && rx.as_nanos() <= after + 1_000_000_000);
        assert!(rx.as_nanos() <= after, "stamp after recv returned");
        assert_eq!(meta.local_addr, Some(server_addr.ip()));
        assert_eq!(meta.hardware, None);
        assert_ne!(meta.ifindex, 0, "loopback ifindex");

        // Reply with PKTINFO source, software TX stamp, key via SCM_TS_OPT_ID if supported.
        let key_supported = probe_scm_ts_opt_id().unwrap();
        let key = 0xabcd_1234;
        let req = TxTsRequest {
            software: true,
            hardware: false,
            opt_id: key_supported.then_some(key),
        };
        let mut reply_control = CmsgBuffer::<REPLY_CONTROL_SPACE>::new();
        let n = cmsg::build_reply_control(
            &mut reply_control.0,
            Some((meta.local_addr.unwrap(), meta.ifindex)),
            Some(req),
        );
        let sent_at = now_nanos();
        let sent = send_with_control(
            server.as_fd(),
            b"reply",
            r.src.unwrap(),
            &reply_control.0[..n],
        )
        .unwrap();
        assert_eq!(sent, 5);
        let mut cbuf = [0u8; 16];
        let (m, from) = client.recv_from(&mut cbuf).unwrap();
        assert_eq!(&cbuf[..m], b"reply");
        assert_eq!(from, server_addr);

        // TX stamp: POLLERR signals the error queue.
        assert!(wait_for(server.as_fd(), libc::POLLERR), "no TX stamp");
        assert!(readiness(server.as_fd()).error_queue);
        let mut got: Vec<TxTimestamp> = Vec::new();
        let count = read_tx_timestamps(server.as_fd(), &mut |t| got.push(t)).unwrap();
        assert_eq!(count, 1);
        assert_eq!(got.len(), 1);
        let t = got[0];
        assert_eq!(t.key, if key_supported { key } else { 0 });
        assert!(!t.hardware);
        assert_eq!(t.tstype, cmsg::SCM_TSTAMP_SND);
        assert!(t.time.as_nanos() >= rx.as_nanos());
        assert!((t.time.as_nanos() - sent_at).abs() < 1_000_000_000);
        // Nothing else queued.
        assert_eq!(read_tx_timestamps(server.as_fd(), &mut |_| ()).unwrap(), 0);
        assert_eq!(readiness(server.as_fd()), Readiness::default());

        // A basic reply without a request generates no TX stamp.
        let n = cmsg::build_reply_control(
            &mut reply_control.0,
            Some((meta.local_addr.unwrap(), meta.ifindex)),
            None,
        );
        send_with_control(
            server.as_fd(),
            b"basic",
            r.src.unwrap(),
            &reply_control.0[..n],
        )
        .unwrap();
        let (m, _) = client.recv_from(&mut cbuf).unwrap();
        assert_eq!(&cbuf[..m], b"basic");
        assert!(!wait_ms(server.as_fd(), libc::POLLERR, 100));
        assert_eq!(read_tx_timestamps(server.as_fd(), &mut |_| ()).unwrap(), 0);
    }

    fn set_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
        // SAFETY: `v` is a live c_int and the length says so.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt {level}/{name}: {}",
            io::Error::last_os_error()
        );
    }

    /// `sin6_flowinfo` is big-endian in the kernel (`__be32`): with
    /// `IPV6_FLOWINFO_SEND` on, the flow label written by
    /// [`send_with_control`] (through `addr::write_sockaddr`) goes into the
    /// packet's header, where the receiver's `IPV6_FLOWINFO` control message
    /// shows it. Byte-swapped, another label would arrive.
    #[test]
    fn flowinfo_reaches_the_kernel_in_its_byte_order() {
        let Ok(rx) = bind_udp("[::1]:0".parse().unwrap(), false) else {
            println!("SKIP: no IPv6 loopback");
            return;
        };
        let tx = bind_udp("[::1]:0".parse().unwrap(), false).unwrap();
        set_int(tx.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_FLOWINFO_SEND, 1);
        set_int(rx.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_FLOWINFO, 1);
        let to = match local_addr(rx.as_fd()).unwrap() {
            SocketAddr::V6(a) => a,
            _ => unreachable!(),
        };
        let with_flow =
            |flowinfo| SocketAddr::V6(SocketAddrV6::new(*to.ip(), to.port(), flowinfo, 0));
        let label = 0x1_2345;
        send_with_control(tx.as_fd(), b"fl", with_flow(label), &[]).unwrap();
        assert!(wait_for(rx.as_fd(), libc::POLLIN));
        let mut buf = [0u8; 8];
        let mut control = CmsgBuffer::<128>::new();
        let r = recv_with_control(rx.as_fd(), &mut buf, &mut control.0, 0).unwrap();
        assert_eq!(&buf[..r.len], b"fl");
        let got = cmsg::cmsgs(&control.0[..r.control_len])
            .find(|c| c.level == libc::IPPROTO_IPV6 && c.kind == libc::IPV6_FLOWINFO)
            .map(|c| u32::from_be_bytes(c.data[..4].try_into().unwrap()) & 0xf_ffff);
        assert_eq!(got, Some(label), "the flow label in the packet");
    }

    /// The scope id travels both ways: a request from a link-local address
    /// arrives with the receiving interface's index as its scope, and a reply
    /// sent to that address (scope included) reaches the client.
    #[test]
    fn scope_id_round_trip_on_link_local_veth() {
        use crate::net::ethtool::{ifindex, testns::with_veth};
        let r = with_veth(|a, b| {
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            ip(&["addr", "add", "fe80::1/64", "dev", a, "nodad"]);
            ip(&["addr", "add", "fe80::2/64", "dev", b, "nodad"]);
            ip(&["link", "set", a, "up"]);
            ip(&["link", "set", b, "up"]);
            let (ia, ib) = (ifindex(a).unwrap(), ifindex(b).unwrap());
            let server_at = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 0, 0, ia));
            let server = bind_udp(server_at, false).unwrap();
            let server_at = local_addr(server.as_fd()).unwrap();
            let client =
                UdpSocket::bind(SocketAddrV6::new("fe80::2".parse().unwrap(), 0, 0, ib)).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            // To the server's address, out of the client's own interface.
            let SocketAddr::V6(s6) = server_at else {
                unreachable!()
            };
            client
                .send_to(b"ping", SocketAddrV6::new(*s6.ip(), s6.port(), 0, ib))
                .unwrap();
            assert!(wait_for(server.as_fd(), libc::POLLIN));
            let mut buf = [0u8; 8];
            let r = recv_with_control(server.as_fd(), &mut buf, &mut [], 0).unwrap();
            let src = r.src.unwrap();
            send_with_control(server.as_fd(), b"pong", src, &[]).unwrap();
            let mut got = [0u8; 8];
            let (n, from) = client.recv_from(&mut got).unwrap();
            (
                src,
                ia,
                client.local_addr().unwrap(),
                got[..n].to_vec(),
                from,
                server_at,
            )
        });
        if let Some((src, ia, client, reply, from, server_at)) = r {
            let SocketAddr::V6(src6) = src else {
                panic!("{src}")
            };
            assert_eq!(src6.scope_id(), ia, "scope: the interface it arrived on");
            assert_eq!((src.ip(), src.port()), (client.ip(), client.port()));
            assert_eq!(reply, b"pong");
            assert_eq!(from.ip(), server_at.ip());
        }
    }

    /// `bind_udp` turns `SO_RXQ_OVFL` on: after the kernel dropped datagrams
    /// for a full receive buffer, the next datagram queued carries the count.
    #[test]
    fn socket_drops_reported_after_overflow() {
        let server = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        // The smallest buffer the kernel allows: a few datagrams fit.
        setsockopt(&server, sockopt::RcvBuf, &0).unwrap();
        let to = local_addr(server.as_fd()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            client.send_to(&[0u8; 48], to).unwrap();
        }
        let mut buf = [0u8; 64];
        let mut control = CmsgBuffer::<128>::new();
        let mut queued = 0;
        while let Ok(r) =
            recv_with_control(server.as_fd(), &mut buf, &mut control.0, libc::MSG_DONTWAIT)
        {
            // Queued before the first drop: no count yet.
            let meta = cmsg::parse_rx_control(&control.0[..r.control_len]);
            assert_eq!(meta.socket_drops, None);
            queued += 1;
        }
        assert!(queued < 200, "the buffer held all {queued}");
        client.send_to(&[0u8; 48], to).unwrap();
        assert!(wait_for(server.as_fd(), libc::POLLIN));
        let r = recv_with_control(server.as_fd(), &mut buf, &mut control.0, 0).unwrap();
        let meta = cmsg::parse_rx_control(&control.0[..r.control_len]);
        assert_eq!(meta.socket_drops, Some(200 - queued), "queued {queued}");
    }

    #[test]
    fn loopback_round_trip_v4() {
        round_trip("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0");
    }

    #[test]
    fn loopback_round_trip_v6() {
        if UdpSocket::bind("[::1]:0").is_err() {
            println!("SKIP: no IPv6 loopback");
            return;
        }
        round_trip("[::1]:0".parse().unwrap(), "[::1]:0");
    }
}
