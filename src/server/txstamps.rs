//! Replies waiting for their transmit timestamp, matched by the `OPT_ID` key.
//!
//! When a reply that asked for a transmit timestamp is queued, its key and the
//! receive timestamp it served are registered here, and the interleaved-mode
//! table gets the pre-send transmit reading (marked inexact). When the kernel or
//! NIC reports the timestamp, [`PendingTx::complete`] finds the reply so the
//! table can be updated with the exact time. A timestamp that comes more than
//! [`TX_TIMESTAMP_DEADLINE`] late is ignored, and one that never comes is counted
//! as missed by [`PendingTx::sweep`]; in both cases the pre-send reading stays.

use std::time::{Duration, Instant};

use crate::protocol::NtpTimestamp;
use crate::server::sendlatency::Situation;

/// Transmit timestamps that arrive later than this are ignored.
pub const TX_TIMESTAMP_DEADLINE: Duration = Duration::from_secs(1);

/// What is remembered of a reply that asked for its transmit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The receive timestamp it served (the interleaved-mode key).
    pub served_receive: NtpTimestamp,
    /// The clock reading taken just before the send.
    pub pre_send: NtpTimestamp,
    /// Where the reply stood in its batch of sends (0: first to go out).
    pub position: u16,
    /// Its place class and the idle time before the batch.
    pub situation: Situation,
    /// The transmit time the reply carried, or would have carried as a basic
    /// reply: the reading plus the estimated send latency.
    pub estimate: NtpTimestamp,
    /// Whether the exact time goes into the interleaved-mode table (else the
    /// timestamp only calibrates the send latency).
    pub interleave: bool,
    /// Whether the reply carried a transmit time of its own (basic: the
    /// estimate, or the egress program's value); an interleaved reply carries
    /// an earlier reply's exact time.
    pub basic: bool,
    /// The origin timestamp's octets under which the reply's egress slot was
    /// armed (`--egress-stamp`), or zeros.
    pub egress_origin: [u8; 8],
    /// The correction left in that slot, nanoseconds.
    pub egress_corr: i64,
}

#[derive(Clone, Copy)]
struct Entry {
    key: u32,
    waiting: bool,
    sent: Sent,
    sent_at: Instant,
}

/// What became of a reported transmit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// On time: this is the reply it belongs to.
    OnTime(Sent),
    /// Later than the deadline: ignored.
    Late,
    /// No reply waits for this key (already completed, overwritten, or unknown).
    Unmatched,
}

/// A fixed ring of replies waiting for transmit timestamps, indexed by key.
pub struct PendingTx {
    entries: Box<[Option<Entry>]>,
}

impl PendingTx {
    /// Room for `n` replies in flight (keys are taken modulo `n`).
    pub fn new(n: usize) -> Self {
        PendingTx {
            entries: vec![None; n.max(1)].into_boxed_slice(),
        }
    }

    fn slot(&mut self, key: u32) -> &mut Option<Entry> {
        let n = self.entries.len();
        &mut self.entries[key as usize % n]
    }

    /// Register a reply sent at `now` under `key`. Returns `true` if this
    /// evicted a reply still waiting (its timestamp is then counted as missed).
    pub fn register(&mut self, key: u32, sent: Sent, now: Instant) -> bool {
        let slot = self.slot(key);
        let evicted = slot.is_some_and(|e| e.waiting);
        *slot = Some(Entry {
            key,
            waiting: true,
            sent,
            sent_at: now,
        });
        evicted
    }

    /// A transmit timestamp with `key` arrived at `now`.
    pub fn complete(&mut self, key: u32, now: Instant) -> Completion {
        let slot = self.slot(key);
        match slot {
            Some(e) if e.waiting && e.key == key => {
                e.waiting = false;
                if now.saturating_duration_since(e.sent_at) > TX_TIMESTAMP_DEADLINE {
                    Completion::Late
                } else {
                    Completion::OnTime(e.sent)
                }
            }
            _ => Completion::Unmatched,
        }
    }

    /// Give up on replies whose timestamp is past the deadline; returns how many.
    pub fn sweep(&mut self, now: Instant) -> u64 {
        let mut missed = 0;
        for e in self.entries.iter_mut().flatten() {
            if e.waiting && now.saturating_duration_since(e.sent_at) > TX_TIMESTAMP_DEADLINE {
                e.waiting = false;
                missed += 1;
            }
        }
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::Header;
    use crate::protocol::server::{respond, Admission, Decision, ReplyKind, RequestContext};
    use crate::protocol::{NtpShort, ServerState};
    use crate::server::interleave::InterleaveTable;

    fn sent(k: u64) -> Sent {
        Sent {
            served_receive: NtpTimestamp(k),
            pre_send: NtpTimestamp(k << 8),
            position: 0,
            situation: Situation::default(),
            estimate: NtpTimestamp(k << 8),
            interleave: true,
            basic: false,
            egress_origin: [0; 8],
            egress_corr: 0,
        }
    }

    #[test]
    fn on_time_late_unmatched_missed() {
        let t0 = Instant::now();
        let mut p = PendingTx::new(4);
        assert!(!p.register(1, sent(0x11), t0));
        assert_eq!(
            p.complete(1, t0 + Duration::from_millis(1)),
            Completion::OnTime(sent(0x11))
        );
        assert_eq!(p.complete(1, t0), Completion::Unmatched, "only once");
        assert_eq!(p.complete(9, t0), Completion::Unmatched, "unknown key");
        p.register(2, sent(0x21), t0);
        assert_eq!(
            p.complete(2, t0 + Duration::from_millis(1500)),
            Completion::Late
        );
        p.register(3, sent(0x31), t0);
        assert_eq!(p.sweep(t0 + Duration::from_millis(500)), 0);
        assert_eq!(
            p.sweep(t0 + Duration::from_secs(2)),
            1,
            "never arrived: missed"
        );
        assert_eq!(
            p.complete(3, t0 + Duration::from_secs(3)),
            Completion::Unmatched
        );
        // key 15 lands on key 11's slot: a reply still waiting there is evicted
        p.register(11, sent(0x41), t0);
        assert!(p.register(15, sent(0x51), t0));
    }

    fn state() -> ServerState {
        ServerState::local_stratum1(-20, NtpShort(1), NtpTimestamp(1 << 40))
    }

    /// The path a worker takes, without sockets: reply 1 asks for a TX
    /// timestamp that never comes; the follow-up is interleaved and serves the
    /// pre-send reading (marked inexact); with a timestamp, the exact one.
    #[test]
    fn missing_timestamp_leaves_pre_send_time_in_place() {
        for arrives in [false, true] {
            let table = InterleaveTable::new(16);
            let mut pending = PendingTx::new(16);
            let t0 = Instant::now();
            let ctx = |rx: u64, tx: u64| RequestContext {
                receive_time: NtpTimestamp(rx),
                transmit_time: NtpTimestamp(tx),
                source: "192.0.2.9:123".parse().unwrap(),
                admission: Admission::Allow,
                interleave: true,
            };
            // request 1: an xleave client's follow-up (odd origin that matches nothing)
            let mut req = [0u8; 48];
            req[0] = 0x23;
            req[24..32].copy_from_slice(&0x0000_0001_0000_0001u64.to_be_bytes());
            req[32..40].copy_from_slice(&5u64.to_be_bytes());
            req[40..48].copy_from_slice(&6u64.to_be_bytes());
            let mut out = [0u8; 48];
            let Decision::Reply(r1) = respond(
                &req,
                &ctx(0x1000_0000, 0x1000_1000),
                &state(),
                &table,
                &mut out,
            ) else {
                panic!()
            };
            assert!(r1.want_tx_timestamp);
            let pre_send = NtpTimestamp(0x1000_2000);
            table.insert(r1.served_receive, NtpTimestamp(pre_send.0 | 1), 0, 1 << 20);
            pending.register(
                0,
                Sent {
                    served_receive: r1.served_receive,
                    pre_send,
                    position: 0,
                    situation: Situation::default(),
                    estimate: pre_send,
                    interleave: true,
                    basic: true,
                    egress_origin: [0; 8],
                    egress_corr: 0,
                },
                t0,
            );
            let exact = NtpTimestamp(0x1000_2222 & !1);
            if arrives {
                let Completion::OnTime(Sent {
                    served_receive: k, ..
                }) = pending.complete(0, t0 + Duration::from_micros(30))
                else {
                    panic!()
                };
                assert!(table.update(k, exact));
            } else {
                assert_eq!(pending.sweep(t0 + Duration::from_secs(2)), 1);
            }
            // request 2: origin = the receive timestamp served in reply 1
            req[24..32].copy_from_slice(&r1.served_receive.0.to_be_bytes());
            let Decision::Reply(r2) = respond(
                &req,
                &ctx(0x2000_0000, 0x2000_1000),
                &state(),
                &table,
                &mut out,
            ) else {
                panic!()
            };
            assert_eq!(r2.kind, ReplyKind::Interleaved { exact: arrives });
            let h = Header::parse(&out).unwrap();
            assert_eq!(h.transmit, if arrives { exact } else { pre_send });
            assert_eq!(
                h.origin,
                NtpTimestamp(5),
                "origin = the request's receive field"
            );
        }
    }
}
