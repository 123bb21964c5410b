//! Reading transmit timestamps from a socket's error queue with
//! `recvmsg(MSG_ERRQUEUE)`: the fallback for kernels without io_uring's
//! `SOCKET_URING_OP_TX_TIMESTAMP` (Linux < 6.15).
//!
//! The kernel signals a non-empty error queue as `POLLERR` (also in io_uring
//! poll results). Each message carries one stamp; with
//! `SOF_TIMESTAMPING_OPT_TSONLY` its payload is empty, otherwise it is the
//! sent packet with its headers, which we do not need (it is truncated away).

use std::io;
use std::os::fd::BorrowedFd;

use super::cmsg::{parse_errqueue_control, CmsgBuffer, TxTimestamp};
use super::socket::recv_with_control;

/// At most this many messages are read per call, so one call stays bounded
/// even if the queue refills as fast as it drains.
pub const MAX_PER_CALL: usize = 256;

/// Drains (up to [`MAX_PER_CALL`] messages of) the error queue of `fd`
/// without blocking, passes each transmit timestamp to `out`, and returns how
/// many it passed. Messages that are not timestamp reports (or carry no
/// stamp) are consumed and skipped. No allocation.
pub fn read_tx_timestamps(
    fd: BorrowedFd<'_>,
    out: &mut impl FnMut(TxTimestamp),
) -> io::Result<usize> {
    drain_tx_timestamps(fd, out, MAX_PER_CALL).map(|d| d.delivered)
}

/// What [`drain_tx_timestamps`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Transmit timestamps passed on.
    pub delivered: usize,
    /// `recvmsg` calls made (messages read, plus the one that found the
    /// queue empty).
    pub syscalls: usize,
}

/// Like [`read_tx_timestamps`], but reads until the error queue is empty or
/// `max_messages` messages were read. Entries left behind would hold the
/// socket's receive memory until the next transmit timestamp wakes a reader,
/// so a reader that waits for wake-ups should empty the queue.
pub fn drain_tx_timestamps(
    fd: BorrowedFd<'_>,
    out: &mut impl FnMut(TxTimestamp),
    max_messages: usize,
) -> io::Result<Drained> {
    // SCM_TIMESTAMPING (64) + IP(V6)_RECVERR with the offender address (64)
    // + room for IP_PKTINFO / OPT_STATS should OPT_CMSG ever be enabled.
    let mut control = CmsgBuffer::<512>::new();
    let mut data = [0u8; 64];
    let mut d = Drained::default();
    for _ in 0..max_messages {
        d.syscalls += 1;
        let r = match recv_with_control(
            fd,
            &mut data,
            &mut control.0,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        ) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        if let Some(ts) = parse_errqueue_control(&control.0[..r.control_len]) {
            out(ts);
            d.delivered += 1;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::socket::bind_udp;
    use std::os::fd::AsFd;

    #[test]
    fn empty_queue_returns_zero_without_blocking() {
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let mut n = 0;
        assert_eq!(read_tx_timestamps(fd.as_fd(), &mut |_| n += 1).unwrap(), 0);
        assert_eq!(n, 0);
    }

    /// More stamps than one [`read_tx_timestamps`] call takes: the drain
    /// empties the queue, and counts its system calls.
    #[test]
    fn drain_empties_a_queue_longer_than_one_call() {
        use crate::net::cmsg::{build_reply_control, TxTsRequest, REPLY_CONTROL_SPACE};
        use crate::net::socket::{
            enable_timestamping, send_with_control, set_recv_buffer, TimestampingConfig,
        };
        let fd = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        // Error-queue entries count against the receive buffer: room for all.
        let rcvbuf = set_recv_buffer(fd.as_fd(), 4 << 20).unwrap();
        assert!(rcvbuf >= 1 << 20, "receive buffer {rcvbuf}");
        enable_timestamping(
            fd.as_fd(),
            &TimestampingConfig {
                tx_software: true,
                tsonly: true,
                ..TimestampingConfig::default()
            },
        )
        .unwrap();
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let mut control = [0u8; REPLY_CONTROL_SPACE];
        let req = TxTsRequest {
            software: true,
            hardware: false,
            opt_id: None,
        };
        let n = build_reply_control(&mut control, None, Some(req));
        let sent = MAX_PER_CALL + 44;
        for _ in 0..sent {
            send_with_control(fd.as_fd(), b"x", to, &control[..n]).unwrap();
        }
        let mut got = 0;
        let d = drain_tx_timestamps(fd.as_fd(), &mut |_| got += 1, 64 * MAX_PER_CALL).unwrap();
        assert_eq!((d.delivered, got), (sent, sent));
        assert_eq!(
            d.syscalls,
            sent + 1,
            "one per message, one that found it empty"
        );
        assert_eq!(read_tx_timestamps(fd.as_fd(), &mut |_| ()).unwrap(), 0);
    }
}
