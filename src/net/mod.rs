//! The Linux layer: sockets, `SO_TIMESTAMPING`, control messages, NIC ioctls
//! and the io_uring plumbing. All `unsafe` of the project lives here.
//!
//! * [`addr`]: socket addresses to and from the kernel's byte layout.
//! * [`cmsg`]: pure parsing/building of control-message bytes (receive
//!   timestamps, PKTINFO, error-queue transmit stamps, reply control data).
//! * [`socket`]: binding UDP sockets, `SO_TIMESTAMPING`, `sendmsg`/`recvmsg`
//!   with control data.
//! * [`errqueue`]: reading transmit timestamps with `MSG_ERRQUEUE`.
//! * [`hwtstamp`]: NIC hardware timestamping configuration (`SIOCSHWTSTAMP`).
//! * [`ethtool`]: interface capabilities (`ETHTOOL_GET_TS_INFO`), link speed, ifindex.
//! * [`ifaces`]: the host's subnet-broadcast addresses (`getifaddrs`).
//! * [`uring`]: the io_uring ring, provided buffers and send slots.

pub mod addr;
pub mod cmsg;
pub mod egress;
pub mod errqueue;
pub mod ethtool;
pub mod hwtstamp;
pub mod ifaces;
pub mod socket;
pub mod uring;
