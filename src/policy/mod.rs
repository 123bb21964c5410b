//! Who gets served, and how often: the access list and the rate limiter.
//!
//! Pure data structures, no I/O, no clock reads (time is an argument), no
//! `unsafe`. Workers consult them for every well-formed request, in the order
//! SERVER-SPEC gives: access list first (a refused source makes no state),
//! then the rate limit; the result goes to the protocol core as
//! [`crate::protocol::server::Admission`].
//!
//! The parts that may change while running (access list, deny action, rate
//! limit settings) are one [`Policy`] behind an [`ArcSwap`] in [`Shared`]:
//! a reload builds a new `Policy` and [`Shared::store`]s it; workers see it at
//! their next packet. The client table's size is fixed at start.
#![forbid(unsafe_code)]

pub mod acl;
pub mod ratelimit;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::protocol::server::{Admission, KissCode};
use acl::AccessList;
use ratelimit::{
    Aggregation, ClientKey, ClientTable, DenyKodLimiter, KeyedHash, Outcome, RateLimit, Verdict,
};

/// What a refused source gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DenyAction {
    /// A DENY KoD, at most one per source per few seconds; silence otherwise.
    #[default]
    Kod,
    /// Silence.
    Ignore,
}

/// The interleaved-mode entry allowance of a source while rate limiting is
/// off: 128 entries a second on average, bursts of 64 (chronyd's fastest
/// interleaved polling is 64 a second). A flood from one source gets basic
/// replies past that and cannot push other clients' entries out.
pub const INTERLEAVE_ALLOWANCE: RateLimit = RateLimit {
    interval: -7,
    burst: 64,
    leak: ratelimit::MAX_LEAK,
    kod: false,
};

/// The live-changeable settings.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The access list (empty: everyone).
    pub acl: AccessList,
    /// What refused sources get.
    pub deny_action: DenyAction,
    /// The rate limit (`None`: off).
    pub rate_limit: Option<RateLimit>,
    /// How client addresses are grouped for the rate limit.
    pub aggregation: Aggregation,
}

/// A worker's cached view of the current [`Policy`].
pub type PolicyCache = arc_swap::Cache<Arc<ArcSwap<Policy>>, Arc<Policy>>;

/// The verdict on one request, for the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the protocol core is told.
    pub admission: Admission,
    /// Whether a reply may create an interleaved-mode entry (the source is
    /// within its limit). `None`: not decided yet (rate limiting off); ask
    /// [`Shared::interleave_allowed`] when the reply wants an entry.
    pub interleave: Option<bool>,
    /// What happened to the client table.
    pub table: Outcome,
    /// The request was over the limit and answered anyway.
    pub leaked: bool,
}

/// Everything the workers share: the current [`Policy`], the client table and
/// the DENY KoD limiter.
pub struct Shared {
    policy: Arc<ArcSwap<Policy>>,
    /// Per-client records.
    pub clients: ClientTable,
    deny_kods: DenyKodLimiter,
}

impl Shared {
    /// With a client table of at least `table_entries` records.
    pub fn new(policy: Policy, table_entries: usize) -> Self {
        let hash = KeyedHash::random();
        Shared {
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            clients: ClientTable::new(table_entries, hash),
            deny_kods: DenyKodLimiter::new(KeyedHash::random()),
        }
    }

    /// The swap cell (workers keep a [`PolicyCache`] of it).
    pub fn cell(&self) -> Arc<ArcSwap<Policy>> {
        self.policy.clone()
    }

    /// A worker's cache of the current policy: a load is one atomic read and
    /// a compare while the policy is unchanged.
    pub fn cache(&self) -> PolicyCache {
        arc_swap::Cache::new(self.cell())
    }

    /// The current policy (allocation-free, lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Replace the policy (a reload).
    pub fn store(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Decide on a well-formed request from `source` at tick `now`
    /// (see [`ratelimit::ticks_from_ntp`]); `random` drives the leak.
    #[inline]
    pub fn admit(&self, policy: &Policy, source: IpAddr, now: u32, random: u32) -> Decision {
        let mut d = Decision {
            admission: Admission::Allow,
            interleave: None,
            table: Outcome::default(),
            leaked: false,
        };
        if !policy.acl.allows(source) {
            d.admission = match policy.deny_action {
                DenyAction::Kod if self.deny_kods.allow(source, now) => {
                    Admission::Kod(KissCode::Deny)
                }
                _ => Admission::Ignore,
            };
            d.interleave = Some(false);
            return d;
        }
        let Some(limit) = &policy.rate_limit else {
            return d;
        };
        let (verdict, table) = self.clients.check(
            ClientKey::new(source, policy.aggregation),
            now,
            limit,
            random,
        );
        d.table = table;
        d.interleave = Some(verdict == Verdict::Within);
        d.admission = match verdict {
            Verdict::Within => Admission::Allow,
            Verdict::Leak => {
                d.leaked = true;
                Admission::Allow
            }
            Verdict::Kod => Admission::Kod(KissCode::Rate),
            Verdict::Drop => Admission::RateLimited,
        };
        d
    }

    /// With rate limiting off: whether `source` may create an interleaved-mode
    /// entry now (within [`INTERLEAVE_ALLOWANCE`]), charging its record.
    #[inline]
    pub fn interleave_allowed(&self, policy: &Policy, source: IpAddr, now: u32) -> (bool, Outcome) {
        let (v, o) = self.clients.check(
            ClientKey::new(source, policy.aggregation),
            now,
            &INTERLEAVE_ALLOWANCE,
            u32::MAX,
        );
        (v == Verdict::Within, o)
    }

    /// Whether any per-packet work is needed (an access list or a rate limit).
    pub fn active(policy: &Policy) -> bool {
        !policy.acl.is_empty() || policy.rate_limit.is_some()
    }
}

/// The xorshift32 step: the worker's cheap randomness for leaks.
#[inline]
pub fn xorshift32(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratelimit::TICKS_PER_SEC as S;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn access_list_before_rate_limit() {
        let policy = Policy {
            acl: AccessList::from_strings(&["10.0.0.0/8"], &["10.0.0.66"]).unwrap(),
            rate_limit: Some(RateLimit::default()),
            ..Policy::default()
        };
        let sh = Shared::new(policy.clone(), 1024);
        let d = sh.admit(&policy, ip("10.0.0.66"), 100 * S, 1);
        assert_eq!(d.admission, Admission::Kod(KissCode::Deny));
        // the DENY KoD is itself limited
        let d = sh.admit(&policy, ip("10.0.0.66"), 100 * S + 1, 1);
        assert_eq!(d.admission, Admission::Ignore);
        assert_eq!(sh.clients.used(), 0, "refused sources make no state");
        let d = sh.admit(&policy, ip("192.0.2.1"), 100 * S, 1);
        assert_eq!(d.admission, Admission::Kod(KissCode::Deny));
        // allowed: the burst, then silence or a RATE KoD
        for _ in 0..8 {
            let d = sh.admit(&policy, ip("10.1.1.1"), 100 * S, 1);
            assert_eq!(d.admission, Admission::Allow);
            assert_eq!(d.interleave, Some(true));
        }
        let d = sh.admit(&policy, ip("10.1.1.1"), 100 * S, 1);
        assert_eq!(d.admission, Admission::Kod(KissCode::Rate));
        let d = sh.admit(&policy, ip("10.1.1.1"), 100 * S, 1);
        assert_eq!(d.admission, Admission::RateLimited);
        let d = sh.admit(&policy, ip("10.1.1.1"), 100 * S, 0);
        assert_eq!(d.admission, Admission::Allow, "leaked");
        assert!(d.leaked);
        assert_eq!(d.interleave, Some(false), "no interleaved entry for a leak");
        assert_eq!(sh.clients.used(), 1);

        let ignore = Policy {
            deny_action: DenyAction::Ignore,
            ..policy
        };
        sh.store(ignore.clone());
        assert_eq!(
            sh.admit(&sh.load(), ip("10.0.0.66"), 900 * S, 1).admission,
            Admission::Ignore
        );
    }

    #[test]
    fn off_by_default_and_interleave_allowance() {
        let policy = Policy::default();
        assert!(!Shared::active(&policy));
        let sh = Shared::new(policy.clone(), 1024);
        let d = sh.admit(&policy, ip("192.0.2.1"), S, 1);
        assert_eq!(d.admission, Admission::Allow);
        assert_eq!(d.interleave, None);
        // a flood from one source: 64 entries, then 128/s
        let allowed = (0..50_000u32)
            .filter(|i| {
                sh.interleave_allowed(&policy, ip("192.0.2.9"), S + i * S / 50_000)
                    .0
            })
            .count();
        assert!((64 + 127..=64 + 129).contains(&allowed), "{allowed}");
        assert!(sh.interleave_allowed(&policy, ip("192.0.2.10"), S).0);
    }
}
