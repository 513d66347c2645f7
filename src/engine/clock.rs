//! Time, injected. Every wait, lease, retry and cron slot reads the engine's clock, so tests can
//! run days of waits on a virtual clock in milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::store::Millis;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix time in milliseconds.
    fn now(&self) -> Millis;
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
