//! Health that fails closed, with hysteresis: the one notion of "healthy" that
//! `/healthz`, the metrics and (with `--on-unsync drop`) the workers follow, and
//! that an anycast node's BGP announcement hangs on (README, "Running a fleet").
//!
//! A node is healthy when, at each check (once a second):
//! - the reference is usable (the served state is synchronised);
//! - every worker is alive: its heartbeat advanced since the last check;
//! - where hardware timestamps were asked for (`--timestamping hardware`), the
//!   PHC tracking is healthy and the promised timestamps arrive
//!   ([`crate::server::tscheck`]).
//!
//! It starts unhealthy ("starting"), turns unhealthy at the first bad check
//! (fail fast: a route must go within seconds), and healthy again only after
//! [`RISE_CHECKS`] good checks in a row, so a flapping input does not flap the
//! route. The decision is pure: [`first_problem`] names what is wrong with one
//! check's inputs, [`Hysteresis::update`] turns the sequence into the state.

/// Good checks in a row needed to become healthy.
pub const RISE_CHECKS: u32 = 3;

/// What one check saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthInputs {
    /// The reference is usable (the served state is synchronised).
    pub reference_usable: bool,
    /// Workers whose heartbeat did not advance since the last check (by id).
    pub dead_workers: Vec<usize>,
    /// `Some(healthy)` when hardware timestamps were asked for and a PHC
    /// converts them; `None` when the PHC does not matter.
    pub phc_healthy: Option<bool>,
    /// When hardware timestamps were asked for: the promised ones that do not
    /// arrive ([`crate::server::tscheck::TimestampCheck::reason`]), "" if none.
    pub timestamps_missing: String,
}

/// The first thing wrong with one check's inputs, as one line; `None` if all is well.
pub fn first_problem(i: &HealthInputs) -> Option<String> {
    if !i.reference_usable {
        return Some("reference unusable (unsynchronised: serving LI 3 or nothing)".into());
    }
    if !i.dead_workers.is_empty() {
        let ids: Vec<String> = i.dead_workers.iter().map(|w| w.to_string()).collect();
        return Some(format!(
            "worker{} {} not alive (no heartbeat since the last check)",
            if ids.len() > 1 { "s" } else { "" },
            ids.join(",")
        ));
    }
    if i.phc_healthy == Some(false) {
        return Some("PHC tracking unhealthy: hardware timestamps cannot be converted".into());
    }
    if !i.timestamps_missing.is_empty() {
        return Some(i.timestamps_missing.clone());
    }
    None
}

/// A change of the health state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthChange {
    /// Became healthy.
    Healthy,
    /// Became unhealthy, for this reason.
    Unhealthy(String),
}

/// The health state across checks.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    rise: u32,
    healthy: bool,
    good_streak: u32,
    reason: String,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self::new(RISE_CHECKS)
    }
}

impl Hysteresis {
    /// Unhealthy ("starting") until `rise` good checks in a row.
    pub fn new(rise: u32) -> Self {
        Hysteresis {
            rise: rise.max(1),
            healthy: false,
            good_streak: 0,
            reason: "starting".into(),
        }
    }

    /// Feed one check's result (`None`: all well, `Some(reason)`: a problem).
    /// Returns the change, if the state changed.
    pub fn update(&mut self, problem: Option<String>) -> Option<HealthChange> {
        match problem {
            Some(reason) => {
                self.good_streak = 0;
                let was = std::mem::replace(&mut self.healthy, false);
                let changed = was || reason != self.reason;
                self.reason = reason;
                // A new reason while unhealthy is reported too (the log says why).
                changed.then(|| HealthChange::Unhealthy(self.reason.clone()))
            }
            None if self.healthy => None,
            None => {
                self.good_streak += 1;
                if self.good_streak >= self.rise {
                    self.healthy = true;
                    self.reason.clear();
                    Some(HealthChange::Healthy)
                } else {
                    None
                }
            }
        }
    }

    /// Healthy now.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// One line for `/healthz`: "ok", or why not (with the recovery progress).
    pub fn line(&self) -> String {
        if self.healthy {
            "ok".into()
        } else if self.good_streak > 0 {
            format!(
                "recovering ({} of {} good checks); last problem: {}",
                self.good_streak, self.rise, self.reason
            )
        } else {
            self.reason.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HealthInputs {
        HealthInputs {
            reference_usable: true,
            ..HealthInputs::default()
        }
    }

    #[test]
    fn starts_unhealthy_and_rises_after_n_good_checks() {
        let mut h = Hysteresis::new(3);
        assert!(!h.healthy());
        assert_eq!(h.line(), "starting");
        assert_eq!(h.update(first_problem(&good())), None);
        assert_eq!(h.update(first_problem(&good())), None);
        assert!(!h.healthy(), "two good checks are not enough");
        assert!(h.line().starts_with("recovering (2 of 3"), "{}", h.line());
        assert_eq!(
            h.update(first_problem(&good())),
            Some(HealthChange::Healthy)
        );
        assert!(h.healthy());
        assert_eq!(h.line(), "ok");
        assert_eq!(h.update(None), None, "no change reported twice");
    }

    #[test]
    fn fails_fast_and_a_bad_check_restarts_the_rise() {
        let mut h = Hysteresis::new(3);
        for _ in 0..3 {
            h.update(None);
        }
        assert!(h.healthy());
        let bad = HealthInputs {
            reference_usable: false,
            ..good()
        };
        let change = h.update(first_problem(&bad));
        assert!(
            matches!(&change, Some(HealthChange::Unhealthy(r)) if r.starts_with("reference unusable")),
            "{change:?}"
        );
        assert!(!h.healthy(), "one bad check is enough");
        // Flapping input: good, good, bad, good, good: never healthy.
        h.update(None);
        h.update(None);
        assert_eq!(
            h.update(first_problem(&bad)),
            None,
            "same reason: no new change"
        );
        h.update(None);
        h.update(None);
        assert!(!h.healthy());
        assert_eq!(h.update(None), Some(HealthChange::Healthy));
    }

    #[test]
    fn each_input_is_a_reason() {
        let dead = HealthInputs {
            dead_workers: vec![0, 2],
            ..good()
        };
        assert_eq!(
            first_problem(&dead).unwrap(),
            "workers 0,2 not alive (no heartbeat since the last check)"
        );
        let phc = HealthInputs {
            phc_healthy: Some(false),
            ..good()
        };
        assert!(first_problem(&phc)
            .unwrap()
            .starts_with("PHC tracking unhealthy"));
        let ts = HealthInputs {
            timestamps_missing: "hardware receive timestamps promised by eth0 are not arriving"
                .into(),
            ..good()
        };
        assert_eq!(
            first_problem(&ts).unwrap(),
            "hardware receive timestamps promised by eth0 are not arriving"
        );
        assert_eq!(
            first_problem(&HealthInputs {
                phc_healthy: Some(true),
                ..good()
            }),
            None
        );
        // The reference comes first.
        let all_bad = HealthInputs {
            reference_usable: false,
            ..dead
        };
        assert!(first_problem(&all_bad).unwrap().starts_with("reference"));
    }

    #[test]
    fn a_new_reason_while_unhealthy_is_reported() {
        let mut h = Hysteresis::new(2);
        assert_eq!(
            h.update(Some("a".into())),
            Some(HealthChange::Unhealthy("a".into()))
        );
        assert_eq!(h.update(Some("a".into())), None);
        assert_eq!(
            h.update(Some("b".into())),
            Some(HealthChange::Unhealthy("b".into()))
        );
        assert_eq!(h.line(), "b");
    }
}
