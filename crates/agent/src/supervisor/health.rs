//! Health checks as a pure state machine: probe results in, health and the next delay out.
//!
//! Semantics follow Docker's: a container with a check starts `starting`; one passing probe makes
//! it `healthy`; `retries` consecutive failures make it `unhealthy`. Failures during
//! `start_period` do not count while it is still `starting`, and probes then run every
//! `start_interval` instead of `interval`. A zero duration in the spec means Docker's default.
//! Running the probe (inside the container, via the runtime's `exec`) is the supervisor's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::Healthcheck;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRIES: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// A healthcheck with defaults applied and its test turned into an argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u64,
    pub start_period: Duration,
    pub start_interval: Duration,
}

impl Probe {
    /// `None` for no check (`NONE`, an empty test); `Err` for a test form we do not know.
    pub fn from_spec(hc: &Healthcheck) -> Result<Option<Probe>, String> {
        let argv = match hc.test.split_first() {
            None => return Ok(None),
            Some((kind, _)) if kind == "NONE" => return Ok(None),
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            Some((kind, _)) => {
                return Err(format!(
                    "healthcheck test must start with CMD, CMD-SHELL or NONE and have a command, got {kind:?}"
                ))
            }
        };
        let or = |ms: u64, d: Duration| {
            if ms == 0 {
                d
            } else {
                Duration::from_millis(ms)
            }
        };
        Ok(Some(Probe {
            argv,
            interval: or(hc.interval_ms, DEFAULT_INTERVAL),
            timeout: or(hc.timeout_ms, DEFAULT_TIMEOUT),
            retries: if hc.retries == 0 {
                DEFAULT_RETRIES
            } else {
                hc.retries
            },
            start_period: Duration::from_millis(hc.start_period_ms),
            start_interval: or(hc.start_interval_ms, DEFAULT_START_INTERVAL),
        }))
    }
}

/// The health of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: HealthStatus::Starting,
            failing_streak: 0,
        }
    }
}

impl Health {
    /// Records one probe result; `since_start` is the time since the container started.
    pub fn on_probe(&mut self, probe: &Probe, passed: bool, since_start: Duration) {
        if passed {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
            return;
        }
        let in_start_period = since_start < probe.start_period;
        if in_start_period && self.status == HealthStatus::Starting {
            return;
        }
        self.failing_streak += 1;
        if self.failing_streak >= probe.retries {
            self.status = HealthStatus::Unhealthy;
        }
    }

    /// The delay before the next probe.
    pub fn next_delay(&self, probe: &Probe, since_start: Duration) -> Duration {
        if self.status == HealthStatus::Starting && since_start < probe.start_period {
            probe.start_interval
        } else {
            probe.interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str], retries: u64, start_period_ms: u64) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ms: 1000,
            timeout_ms: 500,
            retries,
            start_period_ms,
            start_interval_ms: 100,
        }
    }

    fn probe(retries: u64, start_period_ms: u64) -> Probe {
        Probe::from_spec(&hc(&["CMD", "true"], retries, start_period_ms))
            .expect("valid")
            .expect("some")
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn test_forms_become_argv() {
        let p = Probe::from_spec(&hc(&["CMD-SHELL", "curl -f localhost"], 1, 0))
            .expect("valid")
            .expect("some");
        assert_eq!(p.argv, ["/bin/sh", "-c", "curl -f localhost"]);
        let p = Probe::from_spec(&hc(&["CMD", "pg_isready", "-q"], 1, 0))
            .expect("valid")
            .expect("some");
        assert_eq!(p.argv, ["pg_isready", "-q"]);
        assert_eq!(Probe::from_spec(&hc(&["NONE"], 1, 0)), Ok(None));
        assert_eq!(Probe::from_spec(&hc(&[], 1, 0)), Ok(None));
        assert!(Probe::from_spec(&hc(&["SHELL", "x"], 1, 0)).is_err());
        assert!(Probe::from_spec(&hc(&["CMD"], 1, 0)).is_err());
    }

    #[test]
    fn zero_durations_mean_docker_defaults() {
        let mut h = hc(&["CMD", "true"], 0, 0);
        h.interval_ms = 0;
        h.timeout_ms = 0;
        h.start_interval_ms = 0;
        let p = Probe::from_spec(&h).expect("valid").expect("some");
        assert_eq!(
            (p.interval, p.timeout, p.retries, p.start_interval),
            (
                DEFAULT_INTERVAL,
                DEFAULT_TIMEOUT,
                DEFAULT_RETRIES,
                DEFAULT_START_INTERVAL
            )
        );
    }

    #[test]
    fn starting_then_healthy_on_first_pass() {
        let p = probe(3, 0);
        let mut h = Health::default();
        assert_eq!(h.status, HealthStatus::Starting);
        h.on_probe(&p, true, S);
        assert_eq!(h.status, HealthStatus::Healthy);
    }

    #[test]
    fn unhealthy_after_retries_consecutive_failures() {
        let p = probe(3, 0);
        let mut h = Health::default();
        h.on_probe(&p, true, S);
        h.on_probe(&p, false, S);
        h.on_probe(&p, false, S);
        assert_eq!(h.status, HealthStatus::Healthy);
        h.on_probe(&p, false, S);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        h.on_probe(&p, true, S);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
    }

    #[test]
    fn a_pass_resets_the_streak() {
        let p = probe(2, 0);
        let mut h = Health::default();
        h.on_probe(&p, false, S);
        h.on_probe(&p, true, S);
        h.on_probe(&p, false, S);
        assert_eq!(h.status, HealthStatus::Healthy);
    }

    #[test]
    fn failures_in_start_period_do_not_count_while_starting() {
        let p = probe(1, 5000);
        let mut h = Health::default();
        h.on_probe(&p, false, S);
        h.on_probe(&p, false, S * 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        h.on_probe(&p, false, S * 6);
        assert_eq!(h.status, HealthStatus::Unhealthy);
    }

    #[test]
    fn failures_in_start_period_count_once_healthy() {
        let p = probe(1, 5000);
        let mut h = Health::default();
        h.on_probe(&p, true, S);
        h.on_probe(&p, false, S * 2);
        assert_eq!(h.status, HealthStatus::Unhealthy);
    }

    #[test]
    fn start_interval_applies_only_in_start_period_while_starting() {
        let p = probe(3, 5000);
        let mut h = Health::default();
        assert_eq!(h.next_delay(&p, S), Duration::from_millis(100));
        assert_eq!(h.next_delay(&p, S * 6), Duration::from_millis(1000));
        h.on_probe(&p, true, S);
        assert_eq!(h.next_delay(&p, S), Duration::from_millis(1000));
    }
}
