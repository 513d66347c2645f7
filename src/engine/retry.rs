//! Backoff between attempts.

use std::time::Duration;

use rand::Rng;

use crate::definitions::model::common::{Backoff, RetryPolicy};

/// The delay before attempt `attempt + 1`, after `attempt` failed attempts (1-based).
pub fn delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = policy.delay.as_std();
    let max = policy.max_delay.as_std().max(base);
    let d = match policy.backoff {
        Backoff::Fixed => base,
        Backoff::Exponential => {
            let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
            base.saturating_mul(factor).min(max)
        }
    };
    if policy.jitter && !d.is_zero() {
        // "Equal jitter": at least half the delay, so retries never bunch at zero, and up to
        // the full delay, so failures that happened together do not retry together.
        let half = d / 2;
        let extra = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(extra)
    } else {
        d
    }
}

/// The outbox's policy when a `send` step names none: a dozen attempts over about a day.
pub(crate) fn outbox_default() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 12,
        backoff: Backoff::Exponential,
        delay: crate::definitions::model::Duration::from_secs(10),
        max_delay: crate::definitions::model::Duration::from_secs(3 * 3600),
        jitter: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::model::Duration as D;

    fn policy(backoff: Backoff, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff,
            delay: D::from_secs(1),
            max_delay: D::from_secs(5),
            jitter,
        }
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let p = policy(Backoff::Exponential, false);
        let secs: Vec<u64> = (1..=5).map(|a| delay(&p, a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 5, 5]);
        assert_eq!(delay(&policy(Backoff::Fixed, false), 4).as_secs(), 1);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = policy(Backoff::Exponential, true);
        for _ in 0..200 {
            let d = delay(&p, 3).as_millis();
            assert!((2000..=4000).contains(&d), "{d}");
        }
    }
}
