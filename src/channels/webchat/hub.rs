//! The reply streams open in this process, by visitor: what `deliver` pushes a reply into.
//!
//! A push reaches only the streams open here and now. It is a fast path, never the record:
//! the outbox row is, and a stream that opens later (or on another process) reads what it
//! missed from the store. So a push to a visitor with no stream open is not an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::sync::lock;

/// Replies a stream may fall behind by before it must catch up from the store.
const BACKLOG: usize = 64;

/// A reply for a visitor, as a stream sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The outbox row's id: the event's id, what a reconnecting browser names as the last
    /// one it saw, and what duplicates are recognised by.
    pub id: String,
    pub text: String,
    /// Who the reply is from, when the send step says (`from: Cathy`).
    pub from: Option<String>,
    /// When it was recorded as sent, for a reply read from the store; `None` for one pushed
    /// as it is delivered, which is new to every stream open.
    pub sent_at: Option<crate::store::Millis>,
}

#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    visitors: HashMap<String, broadcast::Sender<Arc<Reply>>>,
    /// Whether a task is reading the store for replies other processes sent (see
    /// `server::webchat`). It runs while anyone is listening.
    polling: bool,
}

/// Refused: the visitor has as many streams open as the channel allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyStreams(pub usize);

impl Hub {
    /// Opens a stream for `visitor`. The flag is true when no task is polling the store for
    /// this hub yet: the caller starts one (and it stops once nobody is listening).
    pub fn subscribe(
        self: &Arc<Self>,
        visitor: &str,
        max_streams: usize,
    ) -> Result<(Subscription, bool), TooManyStreams> {
        let mut state = lock(&self.state);
        let sender = state
            .visitors
            .entry(visitor.to_owned())
            .or_insert_with(|| broadcast::channel(BACKLOG).0);
        let open = sender.receiver_count();
        if open >= max_streams {
            return Err(TooManyStreams(open));
        }
        let receiver = sender.subscribe();
        let start_poller = !std::mem::replace(&mut state.polling, true);
        Ok((
            Subscription {
                hub: self.clone(),
                visitor: visitor.to_owned(),
                receiver: Some(receiver),
            },
            start_poller,
        ))
    }

    /// Hands `reply` to every stream `visitor` has open here; how many there were.
    pub fn publish(&self, visitor: &str, reply: Arc<Reply>) -> usize {
        let state = lock(&self.state);
        state
            .visitors
            .get(visitor)
            .and_then(|s| s.send(reply).ok())
            .unwrap_or(0)
    }

    /// The visitors with a stream open here.
    pub fn visitors(&self) -> Vec<String> {
        lock(&self.state).visitors.keys().cloned().collect()
    }

    /// Called by the polling task between rounds: false (and the task must stop) once nobody
    /// is listening. The next subscriber then starts a new one.
    pub fn keep_polling(&self) -> bool {
        let mut state = lock(&self.state);
        state.polling = !state.visitors.is_empty();
        state.polling
    }
}

/// An open stream's end of the hub. Dropping it closes the stream; the visitor is forgotten
/// when their last one closes.
pub struct Subscription {
    hub: Arc<Hub>,
    visitor: String,
    receiver: Option<broadcast::Receiver<Arc<Reply>>>,
}

impl Subscription {
    /// The next reply pushed for the visitor. `Err(Lagged)` when the stream fell so far
    /// behind that replies were dropped: read them from the store.
    pub async fn recv(&mut self) -> Result<Arc<Reply>, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(r) => r.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// Whether this subscription is to `hub` (a reload makes a new channel and a new hub).
    pub fn is_on(&self, hub: &Arc<Hub>) -> bool {
        Arc::ptr_eq(&self.hub, hub)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut state = lock(&self.hub.state);
        if state
            .visitors
            .get(&self.visitor)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            state.visitors.remove(&self.visitor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str) -> Arc<Reply> {
        Arc::new(Reply {
            id: id.into(),
            text: "hi".into(),
            from: None,
            sent_at: None,
        })
    }

    #[tokio::test]
    async fn a_reply_reaches_only_its_visitors_streams() {
        let hub = Arc::new(Hub::default());
        let (mut ann, start) = hub.subscribe("ann", 2).unwrap();
        assert!(start, "the first subscriber starts the poller");
        let (mut ann_too, start) = hub.subscribe("ann", 2).unwrap();
        assert!(!start);
        assert_eq!(hub.subscribe("ann", 2).err(), Some(TooManyStreams(2)));
        let (_bob, _) = hub.subscribe("bob", 2).unwrap();
        assert_eq!(hub.publish("ann", reply("m1")), 2);
        assert_eq!(ann.recv().await.unwrap().id, "m1");
        assert_eq!(ann_too.recv().await.unwrap().id, "m1");
        assert_eq!(hub.publish("carl", reply("m2")), 0, "nobody listening");
    }

    #[test]
    fn the_last_stream_closing_forgets_the_visitor_and_stops_polling() {
        let hub = Arc::new(Hub::default());
        let (first, _) = hub.subscribe("ann", 2).unwrap();
        let (second, _) = hub.subscribe("ann", 2).unwrap();
        drop(first);
        assert_eq!(hub.visitors(), ["ann"]);
        assert!(hub.keep_polling());
        drop(second);
        assert!(hub.visitors().is_empty());
        assert!(!hub.keep_polling());
        let (_again, start) = hub.subscribe("ann", 2).unwrap();
        assert!(start, "a new poller is started after the last one stopped");
    }
}
