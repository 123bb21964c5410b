//! The Linux layer of the benchmark tool: batched datagram I/O (`recvmmsg` /
//! `sendmmsg`), epoll with a nanosecond timeout, socket buffer sizes, and reading
//! another process's CPU time. All `unsafe` of the tool lives in this file.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Size of each datagram buffer: an NTP header plus room for a few extension
/// fields; longer datagrams are truncated (and counted as such by the callers).
pub const BUF_LEN: usize = 256;

/// A fixed set of datagram buffers with their `mmsghdr` array, allocated once
/// and reused for every `recvmmsg` / `sendmmsg` call.
///
/// The headers hold raw pointers into the boxed buffers, iovecs and address
/// slots; boxes never move their heap contents, so the pointers stay valid for
/// the life of the value. The type is neither `Send` nor `Sync` (raw pointers).
pub struct Batch {
    bufs: Box<[[u8; BUF_LEN]]>,
    iov: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
    with_names: bool,
}

impl Batch {
    /// `n` buffers (at least 1). With `with_names`, received source addresses are
    /// kept and used as destinations by [`Batch::send`] (an unconnected server
    /// socket); without, the socket must be connected.
    pub fn new(n: usize, with_names: bool) -> Batch {
        let n = n.max(1);
        let mut b = Batch {
            bufs: vec![[0u8; BUF_LEN]; n].into_boxed_slice(),
            // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs for
            // which all-zero bytes are a valid value (null pointers, zero lengths).
            iov: (0..n)
                .map(|_| unsafe { std::mem::zeroed::<libc::iovec>() })
                .collect(),
            // SAFETY: as above.
            names: (0..n)
                .map(|_| unsafe { std::mem::zeroed::<libc::sockaddr_storage>() })
                .collect(),
            // SAFETY: as above.
            hdrs: (0..n)
                .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                .collect(),
            with_names,
        };
        for i in 0..n {
            b.iov[i].iov_base = b.bufs[i].as_mut_ptr().cast();
            b.iov[i].iov_len = BUF_LEN;
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_iov = &mut b.iov[i];
            h.msg_iovlen = 1;
            if with_names {
                h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
        }
        b
    }

    /// Number of buffers.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Buffer `i`, to fill before a send (panics if `i >= capacity`; callers
    /// index below [`Batch::capacity`]).
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8; BUF_LEN] {
        &mut self.bufs[i]
    }

    /// Set how many octets of buffer `i` the next send transmits.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.iov[i].iov_len = len.min(BUF_LEN);
    }

    /// The datagram received into slot `i` by the last [`Batch::recv`], and
    /// whether it was truncated.
    pub fn packet(&self, i: usize) -> (&[u8], bool) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(BUF_LEN);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (&self.bufs[i][..len], truncated)
    }

    /// Receive up to [`Batch::capacity`] datagrams with one `recvmmsg` call.
    /// `flags` is e.g. `MSG_DONTWAIT` (non-blocking) or `MSG_WAITFORONE` (block
    /// for the first datagram only). Returns how many arrived.
    pub fn recv(&mut self, fd: RawFd, flags: i32) -> io::Result<usize> {
        let namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..self.hdrs.len() {
            self.iov[i].iov_len = BUF_LEN;
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_flags = 0;
            if self.with_names {
                h.msg_hdr.msg_namelen = namelen;
            }
        }
        // SAFETY: every header points at its own live iovec and (optionally)
        // address slot owned by `self`, with the lengths set just above; the
        // count passed is the array's length; a null timeout is allowed.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Send the datagrams in slots `start..start + count` (lengths from
    /// [`Batch::set_len`]; destinations from the last receive when the batch keeps
    /// names) with one `sendmmsg` call. Returns how many were sent.
    pub fn send(&mut self, fd: RawFd, start: usize, count: usize, flags: i32) -> io::Result<usize> {
        let end = start.saturating_add(count).min(self.hdrs.len());
        if start >= end {
            return Ok(0);
        }
        // SAFETY: the headers in start..end are within the array and point at
        // live buffers owned by `self`; the kernel only reads them (and writes
        // msg_len).
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr().add(start),
                (end - start) as libc::c_uint,
                flags,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// Set a socket's receive and send buffer sizes, trying the root-only `*FORCE`
/// options first (they ignore `net.core.rmem_max`). Errors are returned, so a
/// caller can decide whether they matter.
pub fn set_buffers(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: `v` is a live c_int and its size is passed; the fd is open
            // for as long as `sock` is borrowed.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
            if opt == plain {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A level-triggered epoll set whose events carry a `u64` token.
pub struct Epoll {
    fd: std::os::fd::OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll instance able to report up to `max_events` per wait.
    pub fn new(max_events: usize) -> io::Result<Epoll> {
        // SAFETY: plain system call with a valid flag.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)],
        })
    }

    /// Watch `fd` for readability, reporting `token`.
    pub fn add_readable(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `ev` is a live, initialised struct.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` (zero: poll) and return the tokens of the ready
    /// descriptors. An interrupted wait returns no tokens.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<impl Iterator<Item = u64> + '_> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: the events array is live and its length is passed; `ts` is a
        // valid timespec; a null signal mask means "unchanged".
        let r = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &ts,
                std::ptr::null(),
            )
        };
        let n = if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            r as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

/// Total on-CPU time of all threads of process `pid` in nanoseconds, from
/// `/proc/PID/task/*/schedstat` (first field). Threads that exited are not
/// counted, so sample only long-lived servers.
pub fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read: skip it.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += parse_schedstat(&text).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The on-CPU nanoseconds (first field) of a `schedstat` line.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn schedstat_fixture() {
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123456));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let a = process_cpu_ns(std::process::id()).unwrap();
        // Spin for 50 ms of wall time: the kernel updates a running task's
        // runtime at scheduler ticks, so a shorter spin may not show.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let b = process_cpu_ns(std::process::id()).unwrap();
        assert!(b > a, "{a} {b}");
    }

    #[test]
    fn batch_round_trip_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut tx = Batch::new(4, false);
        for i in 0..3 {
            tx.buf_mut(i)[..3].copy_from_slice(&[i as u8, 1, 2]);
            tx.set_len(i, 3 + i);
        }
        assert_eq!(tx.send(client.as_raw_fd(), 0, 3, 0).unwrap(), 3);
        let mut rx = Batch::new(8, true);
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = rx.recv(server.as_raw_fd(), libc::MSG_WAITFORONE).unwrap();
            for i in 0..n {
                got.push(rx.packet(i).0.to_vec());
            }
        }
        assert_eq!(got[0], vec![0, 1, 2]);
        assert_eq!(got[2].len(), 5);
        assert_eq!(got[2][0], 2);
        // reply to the recorded source address
        for i in 0..3 {
            rx.set_len(i, 1);
        }
        assert_eq!(rx.send(server.as_raw_fd(), 0, 3, 0).unwrap(), 3);
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut one = [0u8; 8];
        assert_eq!(client.recv(&mut one).unwrap(), 1);
    }

    #[test]
    fn epoll_reports_ready_socket() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ep = Epoll::new(4).unwrap();
        ep.add_readable(a.as_raw_fd(), 7).unwrap();
        assert_eq!(ep.wait(Duration::ZERO).unwrap().count(), 0);
        b.send_to(b"x", a.local_addr().unwrap()).unwrap();
        let ready: Vec<u64> = ep.wait(Duration::from_secs(2)).unwrap().collect();
        assert_eq!(ready, vec![7]);
    }
}
