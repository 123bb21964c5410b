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
    // SCM_TIMESTAMPING (64) + IP(V6)_RECVERR with the offender address (64)
    // + room for IP_PKTINFO / OPT_STATS should OPT_CMSG ever be enabled.
    let mut control = CmsgBuffer::<512>::new();
    let mut data = [0u8; 64];
    let mut delivered = 0;
    for _ in 0..MAX_PER_CALL {
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
            delivered += 1;
        }
    }
    Ok(delivered)
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
}
