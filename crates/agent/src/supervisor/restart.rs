//! Restart policies and their backoff, as a pure state machine (no clocks read, no I/O).
//!
//! Semantics follow Docker's: `no` never restarts; `always` and `unless-stopped` restart after any
//! exit the user did not ask for; `on-failure[:N]` restarts after a non-zero exit (or a death by
//! signal) at most N times in total. Compose's `deploy.restart_policy` is mapped onto these by the
//! CLI (`condition: none|on-failure|any`, `max_attempts`). The delay before a restart starts at
//! 100 ms and doubles for every consecutive restart, up to [`MAX_BACKOFF`]; a run that lasted at
//! least [`RESET_AFTER`] resets it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::RestartPolicy;

pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exit {
    Code { code: i32 },
    Signal { signal: i32 },
}

impl Exit {
    pub fn success(self) -> bool {
        matches!(self, Exit::Code { code: 0 })
    }

    /// The exit code as a shell reports it (128 + signal for a signal).
    pub fn code(self) -> i32 {
        match self {
            Exit::Code { code } => code,
            Exit::Signal { signal } => 128 + signal,
        }
    }
}

/// The restart bookkeeping of one container, persisted in `observed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    /// Restarts done so far (what `Status` reports).
    pub restarts: u32,
    /// The delay to wait before the next restart.
    #[serde(with = "millis")]
    pub backoff: Duration,
}

impl Default for RestartState {
    fn default() -> Self {
        RestartState {
            restarts: 0,
            backoff: INITIAL_BACKOFF,
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start the container again after this delay.
    RestartAfter(Duration),
    /// Leave it exited.
    Stay,
}

impl RestartState {
    /// Decides what follows an exit and advances the state. `ran_for` is how long the process ran;
    /// `stopped_by_user` is set when the agent itself stopped it (Remove, replace, down).
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        exit: Exit,
        ran_for: Duration,
        stopped_by_user: bool,
    ) -> Decision {
        if ran_for >= RESET_AFTER {
            self.backoff = INITIAL_BACKOFF;
        }
        let restart = !stopped_by_user
            && match policy {
                RestartPolicy::No => false,
                RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
                RestartPolicy::OnFailure { max_retries } => {
                    !exit.success() && max_retries.is_none_or(|max| self.restarts < max)
                }
            };
        if !restart {
            return Decision::Stay;
        }
        let delay = self.backoff;
        self.restarts += 1;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Decision::RestartAfter(delay)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Exit = Exit::Code { code: 1 };
    const OK: Exit = Exit::Code { code: 0 };
    const KILLED: Exit = Exit::Signal { signal: 9 };
    const SHORT: Duration = Duration::from_millis(5);

    fn run(policy: RestartPolicy, exits: &[Exit]) -> Vec<Decision> {
        let mut s = RestartState::default();
        exits
            .iter()
            .map(|e| s.on_exit(&policy, *e, SHORT, false))
            .collect()
    }

    fn ms(n: u64) -> Decision {
        Decision::RestartAfter(Duration::from_millis(n))
    }

    #[test]
    fn no_never_restarts() {
        assert_eq!(
            run(RestartPolicy::No, &[FAIL, OK, KILLED]),
            [Decision::Stay; 3]
        );
    }

    #[test]
    fn always_restarts_on_any_exit_with_doubling_backoff() {
        assert_eq!(
            run(RestartPolicy::Always, &[OK, FAIL, KILLED, OK]),
            [ms(100), ms(200), ms(400), ms(800)]
        );
    }

    #[test]
    fn unless_stopped_restarts_like_always() {
        assert_eq!(
            run(RestartPolicy::UnlessStopped, &[OK, FAIL]),
            [ms(100), ms(200)]
        );
    }

    #[test]
    fn on_failure_with_limit_restarts_exactly_n_times() {
        let p = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        assert_eq!(
            run(p, &[FAIL, FAIL, FAIL, FAIL]),
            [ms(100), ms(200), Decision::Stay, Decision::Stay]
        );
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit() {
        let p = RestartPolicy::OnFailure { max_retries: None };
        assert_eq!(run(p, &[OK]), [Decision::Stay]);
    }

    #[test]
    fn on_failure_counts_a_signal_as_failure() {
        let p = RestartPolicy::OnFailure { max_retries: None };
        assert_eq!(run(p, &[KILLED]), [ms(100)]);
    }

    #[test]
    fn on_failure_zero_retries_never_restarts() {
        let p = RestartPolicy::OnFailure {
            max_retries: Some(0),
        };
        assert_eq!(run(p, &[FAIL]), [Decision::Stay]);
    }

    #[test]
    fn stop_by_user_never_restarts() {
        let mut s = RestartState::default();
        assert_eq!(
            s.on_exit(&RestartPolicy::Always, KILLED, SHORT, true),
            Decision::Stay
        );
        assert_eq!(s.restarts, 0);
    }

    #[test]
    fn backoff_is_capped() {
        let mut s = RestartState::default();
        let mut last = Decision::Stay;
        for _ in 0..20 {
            last = s.on_exit(&RestartPolicy::Always, FAIL, SHORT, false);
        }
        assert_eq!(last, Decision::RestartAfter(MAX_BACKOFF));
    }

    #[test]
    fn a_long_run_resets_backoff_but_not_the_count() {
        let mut s = RestartState::default();
        for _ in 0..4 {
            s.on_exit(&RestartPolicy::Always, FAIL, SHORT, false);
        }
        assert_eq!(
            s.on_exit(&RestartPolicy::Always, FAIL, RESET_AFTER, false),
            ms(100)
        );
        assert_eq!(s.restarts, 5);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(KILLED.code(), 137);
        assert_eq!(FAIL.code(), 1);
        assert!(OK.success() && !KILLED.success());
    }
}
