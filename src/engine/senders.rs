//! One sender at a time: the messages of one address on one channel are recorded and routed in
//! the order they arrived, never two at once, so a reply cannot overtake the message before it
//! (a STOP sent right after a question stays after it). Per process: a provider posts to one
//! URL, and behind a load balancer the store's keys still keep each message once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Debug, Default)]
pub(crate) struct SenderLocks(Mutex<HashMap<String, Slot>>);

/// Held while one sender's message is handled; the next waits for it (tokio's mutex is fair,
/// so they go in arrival order).
pub(crate) struct Turn<'a> {
    locks: &'a SenderLocks,
    key: String,
    slot: Slot,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SenderLocks {
    pub(crate) async fn turn(&self, channel: &str, from: &str) -> Turn<'_> {
        let key = format!("{channel}\u{0}{from}");
        let slot = crate::sync::lock(&self.0)
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = slot.clone().lock_owned().await;
        Turn {
            locks: self,
            key,
            slot,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        crate::sync::lock(&self.0).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        // Senders who went quiet are forgotten: the map holds one slot, this turn another;
        // anyone else waiting holds a third.
        let mut map = crate::sync::lock(&self.locks.0);
        if Arc::strong_count(&self.slot) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_senders_messages_take_turns_in_arrival_order_and_are_forgotten() {
        let locks = Arc::new(SenderLocks::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = locks.turn("sms", "+1").await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (locks, order) = (locks.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _t = locks.turn("sms", "+1").await;
                order.lock().unwrap().push(i);
            }));
            // Each is queued before the next arrives.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another sender is not held up.
        drop(locks.turn("sms", "+2").await);
        assert!(order.lock().unwrap().is_empty(), "all wait for the first");
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(locks.len(), 0);
    }
}
