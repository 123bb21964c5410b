//! io_uring plumbing for a UDP worker: the ring, a provided-buffer ring for
//! multishot `recvmsg`, and fixed send slots whose `msghdr`s stay valid while the
//! kernel uses them. The `unsafe` of the data path lives here; the event loop in
//! `server::worker` only calls the safe methods.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::addr::{write_sockaddr, SOCKADDR_MAX};
use super::cmsg::{KernelTime, TxTimestamp};

/// `MSG_PROBE` (linux/socket.h): do not send, only probe the path (the libc
/// crate does not export it).
const MSG_PROBE: libc::c_int = 0x10;

/// A `sendmsg(2)` return value as a send completion carries it: the octets
/// sent, or a negative errno (read right after the call).
fn completion_result(r: isize) -> i32 {
    if r < 0 {
        -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        i32::try_from(r).unwrap_or(i32::MAX)
    }
}

/// `SOCKET_URING_OP_TX_TIMESTAMP` (include/uapi/linux/io_uring.h, Linux 6.15).
pub const SOCKET_URING_OP_TX_TIMESTAMP: u32 = 4;
/// `IORING_TIMESTAMP_HW_SHIFT`: bit of `cqe.flags` set for a hardware timestamp.
pub const IORING_TIMESTAMP_HW_SHIFT: u32 = 16;
/// `IORING_TIMESTAMP_TYPE_SHIFT`: the timestamp type (`SCM_TSTAMP_*`) starts here.
pub const IORING_TIMESTAMP_TYPE_SHIFT: u32 = IORING_TIMESTAMP_HW_SHIFT + 1;
/// `IORING_CQE_F_TSTAMP_HW`.
pub const IORING_CQE_F_TSTAMP_HW: u32 = 1 << IORING_TIMESTAMP_HW_SHIFT;

/// Space reserved for control data in each receive buffer: `SCM_TIMESTAMPING`
/// (three timespecs), `IP(V6)_PKTINFO`, `SCM_TIMESTAMPING_PKTINFO`, with room to spare.
pub const RECV_CONTROL_SPACE: usize = 256;

/// Control space of a send slot: `IP(V6)_PKTINFO` plus a per-message
/// `SO_TIMESTAMPING` request and its `SCM_TS_OPT_ID` key.
pub const REPLY_CONTROL_SPACE: usize = 128;

/// Largest payload a send slot holds (a reply is never longer than its
/// request). Plain replies are 48 octets; an NTS reply carries the request's
/// Unique Identifier and as many new cookies as the request had cookies and
/// placeholders: chrony's largest request (eight 104-octet cookie fields) is
/// under 1000 octets. A reply that would not fit carries fewer cookies.
pub const SEND_PAYLOAD_MAX: usize = 1024;

/// A completion, copied out of the ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct Completion {
    /// The `user_data` of the submission.
    pub user_data: u64,
    /// The result (negative errno on error).
    pub result: i32,
    /// `IORING_CQE_F_*` flags.
    pub flags: u32,
    /// The second half of a 32-octet CQE (a TX timestamp's `io_timespec`).
    pub extra: [u64; 2],
}

impl Completion {
    /// Whether a multishot request stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion consumed, if any.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// The transmit timestamp a `SOCKET_URING_OP_TX_TIMESTAMP` completion
    /// carries (`result` is its key, the second half of the CQE its
    /// `io_timespec`, `flags` the hardware bit and the `SCM_TSTAMP_*` type);
    /// `None` for an error completion. Pure.
    pub fn tx_timestamp(&self) -> Option<TxTimestamp> {
        (self.result >= 0).then(|| TxTimestamp {
            key: self.result as u32,
            time: KernelTime {
                sec: self.extra[0] as i64,
                nsec: self.extra[1] as u32,
            },
            hardware: self.flags & IORING_CQE_F_TSTAMP_HW != 0,
            tstype: self.flags >> IORING_TIMESTAMP_TYPE_SHIFT,
        })
    }
}

/// Sizes of one worker's ring and buffers.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub recv_buffers: u16,
    /// Size of each receive buffer, including the `io_uring_recvmsg_out` header,
    /// name and control space.
    pub recv_buffer_size: usize,
    /// Send slots (replies in flight at once).
    pub send_slots: u16,
    /// 0: wake for every completion. Otherwise wait up to this many
    /// microseconds for [`BATCH_WANT`] completions before handling them (fewer
    /// system calls per reply under load, at most this much added turnaround;
    /// needs Linux 6.13+ for the minimum wait).
    pub batch_wait_us: u32,
}

/// Completions a batched wait (`RingConfig::batch_wait_us`) waits for.
pub const BATCH_WANT: usize = 16;

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            sq_entries: 1024,
            cq_entries: 4096,
            recv_buffers: 1024,
            recv_buffer_size: 2048,
            send_slots: 1024,
            batch_wait_us: 0,
        }
    }
}

/// A completion entry type this module can copy out: the 16-octet
/// [`cqueue::Entry`] of the data-path ring, or the 32-octet [`cqueue::Entry32`]
/// that transmit-timestamp commands need.
pub trait CompletionEntry: cqueue::EntryMarker {
    /// The entry as a [`Completion`].
    fn copy_out(&self) -> Completion;
}

impl CompletionEntry for cqueue::Entry {
    fn copy_out(&self) -> Completion {
        Completion {
            user_data: self.user_data(),
            result: self.result(),
            flags: self.flags(),
            extra: [0; 2],
        }
    }
}

impl CompletionEntry for cqueue::Entry32 {
    fn copy_out(&self) -> Completion {
        Completion {
            user_data: self.user_data(),
            result: self.result(),
            flags: self.flags(),
            extra: *self.big_cqe(),
        }
    }
}

/// An io_uring. The data path uses 16-octet completions ([`Ring`]); transmit
/// timestamps, which need 32-octet completions, get a ring of their own
/// ([`TxRing`]).
///
/// Why two rings: on Linux 6.18 a 32-octet completion posted by a multishot
/// socket command (`io_uring_cmd_post_mshot_cqe32`) when the ring's tail is on
/// its last slot advances the tail past that slot without writing it, so the
/// application reads the previous lap's completion there again. On a ring that
/// carries only transmit timestamps such a replay is harmless (its key was
/// already matched and is ignored); on the data-path ring it would replay a
/// send or receive completion.
pub struct UringOf<C: CompletionEntry> {
    ring: IoUring<squeue::Entry, C>,
    batch_wait_us: u32,
    /// `io_uring_enter` calls made, for statistics.
    pub enters: u64,
    /// Test builds only: errors and completions to fake (see [`faults`]).
    #[cfg(test)]
    faults: Option<faults::Injector>,
}

/// The data-path ring: receives, sends, polls.
pub type Ring = UringOf<cqueue::Entry>;
/// The ring of transmit-timestamp commands.
pub type TxRing = UringOf<cqueue::Entry32>;

fn ring_error(e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (Linux 5.1+ needed, 6.0+ for this server)"
        }
        Some(libc::EPERM) => {
            "io_uring is disabled (sysctl kernel.io_uring_disabled, or a seccomp/container policy)"
        }
        Some(libc::EINVAL) => {
            "the kernel's io_uring lacks a needed feature (this server needs Linux 6.0+)"
        }
        Some(libc::ENOMEM) => "not enough locked memory for the ring (raise RLIMIT_MEMLOCK)",
        _ => "io_uring setup failed",
    };
    io::Error::new(e.kind(), format!("{hint}: {e}"))
}

impl<C: CompletionEntry> UringOf<C> {
    /// Create a ring.
    pub fn new(cfg: &RingConfig) -> io::Result<Self> {
        let mut builder = IoUring::<squeue::Entry, C>::builder();
        builder.setup_cqsize(cfg.cq_entries).setup_single_issuer();
        if cfg.batch_wait_us > 0 {
            // Task work (the receives) runs only when the worker asks for
            // completions: arrivals during the batched wait do not interrupt it.
            builder.setup_defer_taskrun();
        } else {
            builder.setup_coop_taskrun();
        }
        let ring = builder
            .build(cfg.sq_entries)
            .or_else(|_| {
                IoUring::<squeue::Entry, C>::builder()
                    .setup_cqsize(cfg.cq_entries)
                    .build(cfg.sq_entries)
            })
            .map_err(ring_error)?;
        let batch_wait_us = if cfg.batch_wait_us > 0 && !ring.params().is_feature_min_timeout() {
            tracing::warn!("--batch-wait-us needs Linux 6.13+ (IORING_FEAT_MIN_TIMEOUT): waking for every completion");
            0
        } else {
            cfg.batch_wait_us
        };
        Ok(UringOf {
            ring,
            batch_wait_us,
            enters: 0,
            #[cfg(test)]
            faults: faults::installed(),
        })
    }

    /// Test builds only: the fault to fake at this `io_uring_enter`, if one is queued.
    #[cfg(test)]
    fn injected_enter_error(&mut self) -> Option<io::Error> {
        let errno = self.faults.as_ref()?.take_enter_error()?;
        Some(io::Error::from_raw_os_error(errno))
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn injected_enter_error(&mut self) -> Option<io::Error> {
        None
    }

    /// Queue `entry`. When the submission queue is full, what is queued is
    /// submitted first; if the kernel takes none of it (the submit failed, e.g.
    /// with `EBUSY` or `EAGAIN`), the entry is not queued and the error is
    /// [`io::ErrorKind::WouldBlock`] ("submission queue full"): the caller
    /// drops or retries that one request, the ring stays usable.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.as_ref().is_some_and(|f| f.take_push_failure()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "submission queue full",
            ));
        }
        // SAFETY: every entry built by this module points only into memory owned by
        // a `BufRing`, `RecvTemplate` or `SendSlots` that outlives the request (the
        // worker keeps them until the ring is dropped and frees a send slot only on
        // its completion).
        let pushed = unsafe { self.ring.submission().push(entry) };
        if pushed.is_err() {
            // Queue full: hand what is queued to the kernel and try once more.
            let _ = self.submit();
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::new(io::ErrorKind::WouldBlock, "submission queue full"))?;
        }
        Ok(())
    }

    /// Submit what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.enters += 1;
        if let Some(e) = self.injected_enter_error() {
            return Err(e);
        }
        self.ring.submit()
    }

    /// Submit what is queued and wait up to `timeout` for at least one
    /// completion. A timeout is success; every other error of
    /// `io_uring_enter` (`EINTR`, `EAGAIN`, `EBUSY`, ...) is returned for the
    /// caller to count and handle. Entries the kernel did not take stay queued.
    pub fn enter(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let mut args = types::SubmitArgs::new().timespec(&ts);
        let mut want = 1;
        if self.batch_wait_us > 0 {
            args = args.min_wait_usec(self.batch_wait_us);
            want = BATCH_WANT;
        }
        self.enters += 1;
        if let Some(e) = self.injected_enter_error() {
            return Err(e);
        }
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`UringOf::enter`], with the transient errors (`EINTR`, `EBUSY`,
    /// `EAGAIN`) also taken as success: for callers that only poll.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        match self.enter(timeout) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// The completion queue's overflow state: whether the kernel holds
    /// completions back because the queue was full (`IORING_SQ_CQ_OVERFLOW`;
    /// they come once the queue has room), and how many completions it dropped
    /// for good since the ring was made (`cq.overflow`).
    pub fn cq_overflow(&mut self) -> (bool, u32) {
        #[cfg(test)]
        if let Some(f) = self.faults.as_ref().and_then(|f| f.take_overflow()) {
            return f;
        }
        let held = self.ring.submission().cq_overflow();
        (held, self.ring.completion().overflow())
    }

    /// Copy up to `out.len()` completions out of the ring; returns how many.
    pub fn reap(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        #[cfg(test)]
        if let Some(f) = &self.faults {
            while n < out.len() {
                let Some(c) = f.take_completion() else { break };
                out[n] = c;
                n += 1;
            }
        }
        let mut cq = self.ring.completion();
        while n < out.len() {
            let Some(cqe) = cq.next() else { break };
            out[n] = cqe.copy_out();
            #[cfg(test)]
            if let Some(f) = &self.faults {
                f.apply_rewrite(&mut out[n]);
            }
            n += 1;
        }
        n
    }

    /// Arm a multishot `recvmsg` on `fd` into the provided buffers of `bufs`.
    pub fn arm_recv(
        &mut self,
        fd: RawFd,
        template: &RecvTemplate,
        bufs: &BufRing,
        user_data: u64,
    ) -> io::Result<()> {
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*template.hdr, bufs.bgid)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Arm io_uring's multishot socket command that posts each transmit timestamp
    /// from `fd`'s error queue as a completion (Linux 6.15+).
    pub fn arm_tx_timestamps(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::UringCmd16::new(types::Fd(fd), SOCKET_URING_OP_TX_TIMESTAMP)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Arm a multishot poll for `POLLERR` on `fd` (the error-queue fallback).
    pub fn arm_poll_err(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLERR as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Queue a cancellation of the request whose user data is `target` (its
    /// completion carries `user_data`: 0, or `-ENOENT` when no such request
    /// was in flight).
    pub fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Queue the send prepared in slot `id` of `slots` on `fd`.
    pub fn push_send(
        &mut self,
        fd: RawFd,
        slots: &mut SendSlots,
        id: u16,
        user_data: u64,
    ) -> io::Result<()> {
        let hdr = slots.finalize(id);
        let e = opcode::SendMsg::new(types::Fd(fd), hdr)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Register `bufs` with the kernel as buffer group `bufs.bgid`.
    pub fn register(&mut self, bufs: &BufRing) -> io::Result<()> {
        // SAFETY: `bufs.entries` is page-aligned memory of `bufs.count` entries that
        // lives until `unregister` (the worker calls it before dropping `bufs`).
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                bufs.count,
                bufs.bgid,
                0,
            )
        }
        .map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EINVAL) {
                "provided buffer rings need Linux 5.19+ (multishot recvmsg 6.0+)"
            } else {
                "registering the receive buffer ring failed"
            };
            io::Error::new(e.kind(), format!("{hint}: {e}"))
        })
    }

    /// Unregister a buffer group.
    pub fn unregister(&mut self, bufs: &BufRing) {
        let _ = self.ring.submitter().unregister_buf_ring(bufs.bgid);
    }
}

/// A provided-buffer ring: `count` receive buffers the kernel picks from.
pub struct BufRing {
    entries: *mut types::BufRingEntry,
    map_len: usize,
    data: Box<[u8]>,
    count: u16,
    buf_size: usize,
    tail: u16,
    /// The buffer group id.
    pub bgid: u16,
}

// SAFETY: the raw pointer is to an anonymous mapping owned exclusively by this
// value; moving it to another thread moves that ownership.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocate `count` (a power of two) buffers of `buf_size` octets.
    pub fn new(count: u16, buf_size: usize, bgid: u16) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two <= 32768",
            ));
        }
        let map_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Touch every page of the pool now (a fill the compiler cannot drop), so
        // resident memory is what it will be under load from the start.
        let mut data = vec![0u8; usize::from(count) * buf_size].into_boxed_slice();
        data.fill(0xa5);
        let mut ring = BufRing {
            entries: p.cast(),
            map_len,
            data,
            count,
            buf_size,
            tail: 0,
            bgid,
        };
        for bid in 0..count {
            ring.push_buffer(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn push_buffer(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count - 1));
        let addr = self.data[usize::from(bid) * self.buf_size..].as_ptr() as u64;
        // SAFETY: idx < count, so the entry is inside the mapping; the kernel only
        // reads entries between its head and the published tail, and this one is
        // beyond the published tail until `publish`.
        let entry = unsafe { &mut *self.entries.add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make buffers given back since the last call visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: `entries` is the ring base; the tail field overlays entry 0's
        // reserved field, and the kernel reads it with acquire semantics.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// Give buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push_buffer(bid);
        }
    }

    /// The contents of buffer `bid` (the whole buffer; parse with [`RecvTemplate`]).
    pub fn buffer(&self, bid: u16) -> Option<&[u8]> {
        let start = usize::from(bid).checked_mul(self.buf_size)?;
        self.data.get(start..start + self.buf_size)
    }

    /// Memory held by the buffers and the ring, in octets.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.map_len
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`, once.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}

/// The `msghdr` a multishot `recvmsg` uses as its template (only the name and
/// control lengths matter), and the parser of what it produces.
pub struct RecvTemplate {
    hdr: Box<libc::msghdr>,
}

// SAFETY: the msghdr holds no pointers (null name, control and iov).
unsafe impl Send for RecvTemplate {}

/// One received datagram, borrowed from its buffer.
pub struct Received<'a> {
    /// The source address bytes (`sockaddr_in` / `sockaddr_in6`).
    pub name: &'a [u8],
    /// The control messages.
    pub control: &'a [u8],
    /// The payload (possibly truncated: see `truncated`).
    pub payload: &'a [u8],
    /// The payload did not fit the buffer.
    pub truncated: bool,
    /// The control data did not fit.
    pub control_truncated: bool,
}

impl RecvTemplate {
    /// A template reserving room for an IPv6 address and [`RECV_CONTROL_SPACE`].
    pub fn new() -> Self {
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = SOCKADDR_MAX as u32;
        hdr.msg_controllen = RECV_CONTROL_SPACE;
        RecvTemplate { hdr }
    }

    /// Split a filled buffer into name, control and payload. The buffer starts
    /// with `struct io_uring_recvmsg_out` (four native-endian u32: name length,
    /// control length, payload length, flags), then the reserved name and control
    /// space, then the payload.
    pub fn parse<'a>(&self, buffer: &'a [u8]) -> Option<Received<'a>> {
        parse_recvmsg_out(
            buffer,
            self.hdr.msg_namelen as usize,
            self.hdr.msg_controllen,
        )
    }
}

/// Parse a multishot `recvmsg` buffer laid out for `name_space` and
/// `control_space` reserved octets. Pure; `None` if the buffer is too short.
pub fn parse_recvmsg_out(
    buffer: &[u8],
    name_space: usize,
    control_space: usize,
) -> Option<Received<'_>> {
    let word = |i: usize| -> Option<usize> {
        let b = buffer.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (namelen, controllen, payloadlen, flags) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let name_start = 16;
    let control_start = name_start + name_space;
    let payload_start = control_start + control_space;
    let rest = buffer.get(payload_start..)?;
    Some(Received {
        name: &buffer[name_start..name_start + namelen.min(name_space)],
        control: &buffer[control_start..control_start + controllen.min(control_space)],
        payload: &rest[..payloadlen.min(rest.len())],
        truncated: flags & libc::MSG_TRUNC as usize != 0 || payloadlen > rest.len(),
        control_truncated: flags & libc::MSG_CTRUNC as usize != 0 || controllen > control_space,
    })
}

impl Default for RecvTemplate {
    fn default() -> Self {
        Self::new()
    }
}

/// Control-data storage with the alignment `cmsghdr` needs.
#[repr(C, align(8))]
struct AlignedControl([u8; REPLY_CONTROL_SPACE]);

/// One reply being built or in flight.
#[repr(C)]
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: [u8; SOCKADDR_MAX],
    control: AlignedControl,
    payload: [u8; SEND_PAYLOAD_MAX],
    name_len: u32,
    control_len: usize,
    payload_len: usize,
}

/// Fixed send slots. A slot is taken with [`SendSlots::alloc`], filled, queued
/// with [`Ring::push_send`] and given back with [`SendSlots::release`] when its
/// completion arrives; its memory never moves.
pub struct SendSlots {
    slots: Box<[SendSlot]>,
    free: Vec<u16>,
    busy: Vec<bool>,
}

// SAFETY: the raw pointers in each slot's msghdr point into the same boxed slice,
// which moves with it.
unsafe impl Send for SendSlots {}

impl SendSlots {
    /// `n` slots.
    pub fn new(n: u16) -> Self {
        let slots = (0..n)
            .map(|_| SendSlot {
                // SAFETY: msghdr and iovec are plain data; zero is a valid value.
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                name: [0; SOCKADDR_MAX],
                control: AlignedControl([0; REPLY_CONTROL_SPACE]),
                payload: [0; SEND_PAYLOAD_MAX],
                name_len: 0,
                control_len: 0,
                payload_len: 0,
            })
            .collect();
        SendSlots {
            slots,
            free: (0..n).rev().collect(),
            busy: vec![false; usize::from(n)],
        }
    }

    /// Take a free slot.
    pub fn alloc(&mut self) -> Option<u16> {
        let id = self.free.pop()?;
        self.busy[usize::from(id)] = true;
        Some(id)
    }

    /// Give a slot back (on its send completion). Returns `false`, doing
    /// nothing, for an id out of range or a slot that is not in flight (a
    /// completion seen twice must never hand one slot to two replies).
    pub fn release(&mut self, id: u16) -> bool {
        match self.busy.get_mut(usize::from(id)) {
            Some(busy) if *busy => {
                *busy = false;
                self.free.push(id);
                true
            }
            _ => false,
        }
    }

    /// Slots currently in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The payload buffer of slot `id`.
    pub fn payload_mut(&mut self, id: u16) -> &mut [u8; SEND_PAYLOAD_MAX] {
        &mut self.slots[usize::from(id)].payload
    }

    /// The control buffer of slot `id`.
    pub fn control_mut(&mut self, id: u16) -> &mut [u8; REPLY_CONTROL_SPACE] {
        &mut self.slots[usize::from(id)].control.0
    }

    /// Set the destination and the lengths of payload and control data of slot `id`.
    pub fn set(
        &mut self,
        id: u16,
        dest: &std::net::SocketAddr,
        payload_len: usize,
        control_len: usize,
    ) {
        let s = &mut self.slots[usize::from(id)];
        s.name_len = write_sockaddr(dest, &mut s.name) as u32;
        s.payload_len = payload_len.min(SEND_PAYLOAD_MAX);
        s.control_len = control_len.min(REPLY_CONTROL_SPACE);
    }

    /// Send slot `id` on `fd` at once with `sendmsg(2)` from the calling
    /// thread instead of through the ring (a lone reply of a quiet worker:
    /// the shortest, steadiest path from the clock reading to the wire).
    /// Returns what a send completion would carry: the octets sent or a
    /// negative errno. The slot stays taken; the caller releases it.
    pub fn send_now(&mut self, fd: RawFd, id: u16) -> i32 {
        #[cfg(test)]
        if let Some(r) = faults::take_send_now() {
            return r;
        }
        let hdr = self.finalize(id);
        // SAFETY: `hdr` and the name, iovec, payload and control buffers it
        // points to all live in this slot's boxed memory, which is neither
        // moved nor freed during the call; the kernel only reads them, and
        // MSG_DONTWAIT keeps the call from blocking.
        let r = unsafe { libc::sendmsg(fd, hdr, libc::MSG_DONTWAIT) };
        completion_result(r)
    }

    /// Resolve the way to slot `id`'s destination on `fd` without sending
    /// anything: a zero-length `sendmsg(2)` with `MSG_PROBE`, which runs the
    /// socket's send path up to the route lookup and returns. Made just before
    /// the transmit-time reading of a reply sent after the worker was idle, it
    /// brings that path back into the caches, so the real send that follows
    /// the reading is shorter and steadier (see `--warm-send-path`). Returns 0
    /// (no data) or a negative errno; nothing reaches the wire either way.
    pub fn probe_route(&mut self, fd: RawFd, id: u16) -> i32 {
        let s = &mut self.slots[usize::from(id)];
        // SAFETY: an all-zero msghdr is valid (no name, no data, no control).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = s.name.as_mut_ptr().cast();
        hdr.msg_namelen = s.name_len;
        // SAFETY: `hdr` points only at this slot's name buffer, which lives
        // through the call and which the kernel only reads; no data, no
        // control; MSG_PROBE sends nothing and MSG_DONTWAIT never blocks.
        let r = unsafe { libc::sendmsg(fd, &hdr, MSG_PROBE | libc::MSG_DONTWAIT) };
        completion_result(r)
    }

    fn finalize(&mut self, id: u16) -> *const libc::msghdr {
        let s = &mut self.slots[usize::from(id)];
        s.iov.iov_base = s.payload.as_mut_ptr().cast();
        s.iov.iov_len = s.payload_len;
        s.hdr.msg_name = s.name.as_mut_ptr().cast();
        s.hdr.msg_namelen = s.name_len;
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = if s.control_len > 0 {
            s.control.0.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        s.hdr.msg_controllen = s.control_len;
        s.hdr.msg_flags = 0;
        &s.hdr
    }
}

/// Fault injection for tests (compiled into test builds only): a ring made on
/// a thread where an [`faults::Injector`] is installed fakes the errors and
/// completions queued in it, so tests can show that the worker survives each
/// run-time error of io_uring.
#[cfg(test)]
pub mod faults {
    use super::Completion;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Queued {
        enter_errors: VecDeque<i32>,
        completions: VecDeque<Completion>,
        overflow: VecDeque<(bool, u32)>,
        rewrites: VecDeque<(u64, u64, i32)>,
        push_failures: usize,
        send_now_errors: VecDeque<i32>,
    }

    /// A queue of faults, shared by the test and the rings that use it.
    #[derive(Clone, Default)]
    pub struct Injector(Arc<Mutex<Queued>>);

    impl Injector {
        /// The next `io_uring_enter` (`submit`, `enter`) fails with `errno`
        /// without reaching the kernel.
        pub fn fail_enter(&self, errno: i32) {
            self.0.lock().unwrap().enter_errors.push_back(errno);
        }

        /// The next `reap` returns this completion first.
        pub fn complete(&self, c: Completion) {
            self.0.lock().unwrap().completions.push_back(c);
        }

        /// The next `cq_overflow` reports this state.
        pub fn overflow(&self, held: bool, dropped: u32) {
            self.0.lock().unwrap().overflow.push_back((held, dropped));
        }

        /// The next real completion whose `user_data & mask == value` gets
        /// `result` instead of its own (flags and buffer kept).
        pub fn rewrite(&self, mask: u64, value: u64, result: i32) {
            self.0
                .lock()
                .unwrap()
                .rewrites
                .push_back((mask, value, result));
        }

        /// The next request queued finds the submission queue full and the
        /// kernel taking nothing.
        pub fn fail_push(&self) {
            self.0.lock().unwrap().push_failures += 1;
        }

        /// The next direct send ([`super::SendSlots::send_now`]) fails with
        /// `errno` without reaching the kernel.
        pub fn fail_send_now(&self, errno: i32) {
            self.0.lock().unwrap().send_now_errors.push_back(errno);
        }

        /// Whether every queued fault has been used.
        pub fn used_up(&self) -> bool {
            let q = self.0.lock().unwrap();
            q.enter_errors.is_empty()
                && q.completions.is_empty()
                && q.overflow.is_empty()
                && q.rewrites.is_empty()
                && q.push_failures == 0
                && q.send_now_errors.is_empty()
        }

        pub(super) fn take_push_failure(&self) -> bool {
            let mut q = self.0.lock().unwrap();
            let fail = q.push_failures > 0;
            q.push_failures = q.push_failures.saturating_sub(1);
            fail
        }

        pub(super) fn apply_rewrite(&self, c: &mut Completion) {
            let mut q = self.0.lock().unwrap();
            if let Some(i) = q
                .rewrites
                .iter()
                .position(|&(mask, value, _)| c.user_data & mask == value)
            {
                c.result = q.rewrites.remove(i).unwrap().2;
            }
        }

        pub(super) fn take_enter_error(&self) -> Option<i32> {
            self.0.lock().unwrap().enter_errors.pop_front()
        }

        pub(super) fn take_completion(&self) -> Option<Completion> {
            self.0.lock().unwrap().completions.pop_front()
        }

        pub(super) fn take_overflow(&self) -> Option<(bool, u32)> {
            self.0.lock().unwrap().overflow.pop_front()
        }
    }

    thread_local! {
        static INSTALLED: RefCell<Option<Injector>> = const { RefCell::new(None) };
    }

    /// Every ring made on this thread from now on (rebuilt ones too) takes
    /// its faults from `injector`.
    pub fn install(injector: &Injector) {
        INSTALLED.with(|i| *i.borrow_mut() = Some(injector.clone()));
    }

    pub(super) fn installed() -> Option<Injector> {
        INSTALLED.with(|i| i.borrow().clone())
    }

    /// A queued direct-send fault of this thread's injector, as a negative errno.
    pub(super) fn take_send_now() -> Option<i32> {
        let i = installed()?;
        let e = i.0.lock().unwrap().send_now_errors.pop_front()?;
        Some(-e)
    }
}

/// Whether this kernel's io_uring has the socket TX-timestamp command
/// (`SOCKET_URING_OP_TX_TIMESTAMP`, Linux 6.15+): arm it on a throwaway socket
/// and see whether it is refused at once.
pub fn probe_tx_timestamp_command() -> bool {
    // On a thread of its own: tearing the ring down may queue task work to the
    // thread that created it, which would interrupt that thread's next
    // blocking system call (EINTR) if it were the caller's.
    std::thread::spawn(probe_on_this_thread)
        .join()
        .unwrap_or(false)
}

fn probe_on_this_thread() -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let Ok(mut ring) = TxRing::new(&RingConfig {
        sq_entries: 4,
        cq_entries: 8,
        ..RingConfig::default()
    }) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    if ring.arm_tx_timestamps(sock.as_raw_fd(), 1).is_err() {
        return false;
    }
    if ring.submit_and_wait(Duration::from_millis(50)).is_err() {
        return false;
    }
    let mut c = [Completion::default(); 4];
    let n = ring.reap(&mut c);
    // Still armed (no completion), or a completion that keeps it armed: supported.
    n == 0 || c[..n].iter().all(|c| c.result >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn send_slots_refuse_a_double_release() {
        let mut slots = SendSlots::new(2);
        let a = slots.alloc().unwrap();
        assert!(!slots.release(1 - a), "never allocated");
        assert!(slots.release(a));
        assert!(!slots.release(a), "released twice");
        assert!(!slots.release(7), "out of range");
        let (x, y) = (slots.alloc().unwrap(), slots.alloc().unwrap());
        assert_ne!(x, y, "a slot is never handed out twice");
        assert_eq!(slots.alloc(), None);
        assert_eq!(slots.in_flight(), 2);
    }

    #[test]
    fn tx_timestamp_completion() {
        let c = Completion {
            user_data: 0,
            result: 77,
            flags: IORING_CQE_F_TSTAMP_HW | (2 << IORING_TIMESTAMP_TYPE_SHIFT),
            extra: [1_700_000_000, 999_999_999],
        };
        let ts = c.tx_timestamp().unwrap();
        assert_eq!((ts.key, ts.hardware, ts.tstype), (77, true, 2));
        assert_eq!((ts.time.sec, ts.time.nsec), (1_700_000_000, 999_999_999));
        let sw = Completion { flags: 0, ..c };
        assert!(!sw.tx_timestamp().unwrap().hardware);
        let err = Completion {
            result: -libc::EAGAIN,
            ..c
        };
        assert_eq!(err.tx_timestamp(), None);
    }

    #[test]
    fn recvmsg_out_fixture() {
        let mut b = vec![0u8; 16 + 28 + 256 + 48];
        for (i, v) in [16u32, 24, 48, 0].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[16] = 2; // AF_INET
        b[16 + 28] = 0xcc;
        b[16 + 28 + 256] = 0x23;
        let r = parse_recvmsg_out(&b, 28, 256).unwrap();
        assert_eq!(
            (r.name.len(), r.control.len(), r.payload.len()),
            (16, 24, 48)
        );
        assert_eq!((r.name[0], r.control[0], r.payload[0]), (2, 0xcc, 0x23));
        assert!(!r.truncated && !r.control_truncated);
        // a payload longer than the buffer, MSG_CTRUNC, garbage lengths
        b[8..12].copy_from_slice(&5000u32.to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::MSG_CTRUNC as u32).to_ne_bytes());
        let r = parse_recvmsg_out(&b, 28, 256).unwrap();
        assert!(r.truncated && r.control_truncated);
        assert_eq!(r.payload.len(), 48);
        b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse_recvmsg_out(&b, 28, 256).unwrap().name.len(), 28);
        assert!(parse_recvmsg_out(&b[..100], 28, 256).is_none());
        assert!(parse_recvmsg_out(&[], 28, 256).is_none());
    }

    #[test]
    fn multishot_recv_and_send_on_loopback() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let cfg = RingConfig {
            recv_buffers: 8,
            recv_buffer_size: 1024,
            send_slots: 4,
            ..RingConfig::default()
        };
        let mut ring = Ring::new(&cfg).unwrap();
        let mut bufs = BufRing::new(cfg.recv_buffers, cfg.recv_buffer_size, 7).unwrap();
        ring.register(&bufs).unwrap();
        let tmpl = RecvTemplate::new();
        ring.arm_recv(server.as_raw_fd(), &tmpl, &bufs, 11).unwrap();
        ring.submit().unwrap();
        for i in 0..20u8 {
            client
                .send_to(&[i; 48], server.local_addr().unwrap())
                .unwrap();
            let mut got = None;
            for _ in 0..100 {
                ring.submit_and_wait(Duration::from_millis(20)).unwrap();
                let mut c = [Completion::default(); 8];
                let n = ring.reap(&mut c);
                // skip the previous iteration's send completion (user_data 99)
                if let Some(r) = c[..n].iter().find(|c| c.user_data == 11) {
                    got = Some(*r);
                    break;
                }
            }
            let c = got.expect("completion");
            assert_eq!(c.user_data, 11);
            assert!(c.result > 0, "{}", c.result);
            assert!(c.more(), "multishot stays armed");
            let bid = c.buffer_id().unwrap();
            let r = tmpl.parse(bufs.buffer(bid).unwrap()).unwrap();
            assert_eq!(r.payload, &[i; 48]);
            assert_eq!(
                crate::net::addr::parse_sockaddr(r.name),
                Some(client.local_addr().unwrap())
            );
            // Reply from a send slot.
            let mut slots = SendSlots::new(4);
            let id = slots.alloc().unwrap();
            slots.payload_mut(id)[..4].copy_from_slice(b"pong");
            slots.set(id, &client.local_addr().unwrap(), 4, 0);
            bufs.recycle(bid); // 20 datagrams through 8 buffers: recycling must work
            bufs.publish();
            ring.push_send(server.as_raw_fd(), &mut slots, id, 99)
                .unwrap();
            ring.submit().unwrap();
            let mut b = [0u8; 16];
            let (n, _) = client.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], b"pong");
        }
        ring.unregister(&bufs);
    }
}
