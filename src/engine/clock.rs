//! Time, injected. Every wait, lease, retry and cron slot reads the engine's clock, so tests can
//! run days of waits on a virtual clock in milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::store::Millis;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix time in milliseconds.
    fn now(&self) -> Millis;

    /// How many clock milliseconds pass per real millisecond (1 except in scaled tests).
    fn speed(&self) -> f64 {
        1.0
    }

    /// The real time to sleep for `ms` of clock time to pass.
    fn real(&self, ms: Millis) -> std::time::Duration {
        std::time::Duration::from_micros(((ms.max(0) as f64 * 1000.0) / self.speed()) as u64)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        jiff::Timestamp::now().as_millisecond()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Arc<AtomicI64>,
}

impl VirtualClock {
    pub fn new(start: Millis) -> VirtualClock {
        VirtualClock {
            now: Arc::new(AtomicI64::new(start)),
        }
    }

    /// Starting at an RFC 3339 time, such as "2026-11-02T07:00:00Z".
    pub fn at(rfc3339: &str) -> VirtualClock {
        let ts: jiff::Timestamp = rfc3339.parse().expect("a valid RFC 3339 time");
        VirtualClock::new(ts.as_millisecond())
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Millis) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// Formats milliseconds as RFC 3339 (UTC), for contexts and logs.
pub fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// A clock that runs `speed` times faster than real time, anchored so that several processes
/// given the same settings agree on the time. For tests that run real `herald serve`
/// processes through hours of schedule in seconds (`HERALD_TEST_CLOCK`); never for production.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    /// Real unix milliseconds at which the clock reads `start`.
    pub origin: Millis,
    pub start: Millis,
    pub speed: f64,
}

impl ScaledClock {
    /// Parses `speed=60,origin=<real unix ms>,start=<RFC 3339>`.
    pub fn parse(spec: &str) -> Result<ScaledClock, String> {
        let (mut speed, mut origin, mut start) = (None, None, None);
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            match k.trim() {
                "speed" => {
                    speed = Some(v.trim().parse::<f64>().map_err(|e| format!("speed: {e}"))?)
                }
                "origin" => {
                    origin = Some(
                        v.trim()
                            .parse::<Millis>()
                            .map_err(|e| format!("origin: {e}"))?,
                    )
                }
                "start" => {
                    start = Some(
                        v.trim()
                            .parse::<jiff::Timestamp>()
                            .map_err(|e| format!("start: {e}"))?
                            .as_millisecond(),
                    )
                }
                other => return Err(format!("unknown setting `{other}`")),
            }
        }
        Ok(ScaledClock {
            speed: speed
                .filter(|s| *s > 0.0)
                .ok_or("speed must be a positive number")?,
            origin: origin.ok_or("origin is required")?,
            start: start.ok_or("start is required")?,
        })
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Millis {
        let real = SystemClock.now();
        self.start + ((real - self.origin) as f64 * self.speed) as Millis
    }

    fn speed(&self) -> f64 {
        self.speed
    }
}
