//! Hysteresis for the health verdict ([`super::health`]): a node starts
//! unhealthy ("starting") and becomes healthy at its first good check; it turns
//! unhealthy at the first bad check (fail fast: a route must go within
//! seconds), and after that healthy again only after `rise` good checks in a
//! row, so a flapping input does not flap an anycast route.

/// A change of the health state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthChange {
    /// Became healthy.
    Healthy,
    /// Became unhealthy, or unhealthy for a new reason.
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

impl Hysteresis {
    /// Unhealthy ("starting") until the first good check; after a bad one,
    /// until `rise` good checks in a row (at least 1).
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
                changed.then(|| HealthChange::Unhealthy(self.reason.clone()))
            }
            None if self.healthy => None,
            None => {
                self.good_streak += 1;
                let starting = self.reason == "starting";
                if starting || self.good_streak >= self.rise {
                    self.healthy = true;
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

    /// Why not healthy (one line; "" when healthy). While the checks are good
    /// again but not yet for long enough, says so and names the last problem.
    pub fn reason(&self) -> String {
        if self.healthy {
            String::new()
        } else if self.good_streak > 0 {
            format!(
                "recovering ({} good checks in a row needed); last problem: {}",
                self.rise, self.reason
            )
        } else {
            self.reason.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_unhealthy_and_rises_after_n_good_checks() {
        let mut h = Hysteresis::new(3);
        assert!(!h.healthy());
        assert_eq!(h.reason(), "starting");
        // Bad from the start (e.g. the reference not yet answering).
        assert_eq!(
            h.update(Some("reference unusable".into())),
            Some(HealthChange::Unhealthy("reference unusable".into()))
        );
        assert_eq!(h.update(None), None);
        assert_eq!(h.update(None), None);
        assert!(!h.healthy(), "two good checks are not enough");
        assert_eq!(
            h.reason(),
            "recovering (3 good checks in a row needed); last problem: reference unusable"
        );
        assert_eq!(h.update(None), Some(HealthChange::Healthy));
        assert!(h.healthy());
        assert_eq!(h.reason(), "");
        assert_eq!(h.update(None), None, "no change reported twice");
    }

    #[test]
    fn fails_fast_and_a_bad_check_restarts_the_rise() {
        let mut h = Hysteresis::new(3);
        for _ in 0..3 {
            h.update(None);
        }
        assert!(h.healthy());
        let bad = || Some("reference unusable".to_string());
        assert_eq!(
            h.update(bad()),
            Some(HealthChange::Unhealthy("reference unusable".into()))
        );
        assert!(!h.healthy(), "one bad check is enough");
        // Flapping input: good, good, bad, good, good: never healthy.
        h.update(None);
        h.update(None);
        assert_eq!(h.update(bad()), None, "same reason: no new change");
        h.update(None);
        h.update(None);
        assert!(!h.healthy());
        assert!(h.reason().ends_with("last problem: reference unusable"));
        assert_eq!(h.update(None), Some(HealthChange::Healthy));
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
        assert_eq!(h.reason(), "b");
    }

    #[test]
    fn a_good_first_check_is_healthy_at_once() {
        let mut h = Hysteresis::new(30);
        assert!(!h.healthy(), "unhealthy before any check");
        assert_eq!(h.update(None), Some(HealthChange::Healthy));
    }

    #[test]
    fn rise_of_zero_means_one() {
        let mut h = Hysteresis::new(0);
        h.update(Some("x".into()));
        assert_eq!(h.update(None), Some(HealthChange::Healthy));
    }
}
