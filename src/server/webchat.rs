//! The browser side of a `webchat` channel, beside its inbound route
//! `{routes.inbound}/{channel}` (where a visitor's message goes, verified and recorded like any
//! provider's):
//!
//! - `POST …/session`: a signed session token for a new visitor, or the same visitor again
//!   when the request carries a token that is still good;
//! - `GET …/events`: Server-Sent Events, the replies for the token's visitor;
//! - `GET …/widget.js`: the embeddable script;
//! - CORS for all of them: a page on one of `allowed_origins` may call them, and a preflight
//!   from any other site is refused.
//!
//! A reply stream never depends on being connected when the reply was sent. The outbox row is
//! the reply; a stream first replays what the visitor was sent since the last event their
//! browser saw (`Last-Event-ID`, which `EventSource` sends when it reconnects), then takes
//! what `deliver` pushes in this process, and a task per channel reads the store every second
//! for what another Herald process sent to the visitors connected here. The same reply may
//! arrive twice on those paths; each stream drops what it has sent, by outbox id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::channels::webchat::WebchatChannel;
use crate::channels::webchat::hub::{Hub, Reply, Subscription};
use crate::engine::Engine;
use crate::engine::clock::rfc3339;
use crate::store::{Millis, OutboxRecord, SentMessages};

/// How often the store is read for replies another process sent, and how often a stream
/// looks at its session and the configuration.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How far back a read of the store reaches before the newest reply already seen. Two
/// processes' replies are committed in an order their `sent_at` need not follow (each
/// process stamps its own, a little before committing); a reply stamped up to this much
/// before one already sent is still found. Anything found twice is dropped by id.
const OVERLAP_MS: i64 = 3_000;

/// Replies sent when a stream starts without a last event (a new page): the newest ones.
const HISTORY: i64 = 50;

/// The most replies one catch-up reads; a browser gone longer gets the newest of them.
const CATCH_UP_MAX: usize = 1_000;

/// Rows read at once, and visitors asked about in one query.
const PAGE: i64 = 200;
const VISITORS_PER_QUERY: usize = 200;

/// The ids a stream remembers having sent, to drop the same reply arriving by another path.
const REMEMBERED: usize = 512;

const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id";

/// The web chat channel named in the path, or the 404 that says why there is none.
fn chat_of<'r>(
    registry: &'r crate::engine::registry::Registry,
    channel: &str,
) -> Result<&'r WebchatChannel, ApiError> {
    let found = registry
        .channels
        .get(channel)
        .ok_or_else(|| ApiError::not_found(format!("no channel `{channel}` in herald.yaml")))?;
    found.webchat().ok_or_else(|| {
        ApiError::not_found(format!(
            "channel `{channel}` ({}) is not a web chat",
            found.provider()
        ))
    })
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("(not text)"))
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", message)
}

fn no_session(message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "no_session", message)
}

/// Lets a page on an allowed site read the answers of a web chat's routes: adds
/// `Access-Control-Allow-Origin` for it. Other channels' routes pass untouched.
pub async fn cross_origin(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = {
        let registry = state.engine.registry();
        match registry.channels.get(&channel).and_then(|c| c.webchat()) {
            None => return next.run(request).await,
            Some(chat) => origin(request.headers())
                .filter(|o| chat.allows_origin(o))
                .and_then(|o| HeaderValue::from_str(o).ok()),
        }
    };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // The answer depends on the asking site: a shared cache must not give one site's to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

/// A browser's preflight before a cross-site POST or a request with `Authorization`: allowed
/// for the channel's sites, refused for others (the browser then sends nothing).
pub async fn preflight(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let registry = state.engine.registry();
    let chat = match chat_of(&registry, &channel) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    match origin(&headers) {
        Some(o) if chat.allows_origin(o) => {}
        Some(o) => {
            return forbidden(format!(
                "the page's site, {o}, is not in channel `{channel}`'s allowed_origins in herald.yaml"
            ))
            .into_response();
        }
        None => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_a_preflight",
                "an OPTIONS request here is a browser's CORS preflight, which names the page's site in Origin",
            )
            .into_response();
        }
    }
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// `POST …/session`: a token for a new visitor, or a renewed one for the visitor a good
/// token in `Authorization` names. Nothing is stored.
pub async fn session(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let registry = state.engine.registry();
    let chat = chat_of(&registry, &channel)?;
    chat.check_origin(origin(&headers)).map_err(forbidden)?;
    let previous = crate::channels::webchat::bearer(&headers);
    let now = state.engine.now();
    let renewed = previous.is_some_and(|t| chat.session(Some(t), now).is_ok());
    let (token, session) = chat.open_session(previous, now);
    metrics::counter!("herald_webchat_sessions_total", "channel" => channel.clone(), "kind" => if renewed { "renewed" } else { "new" })
        .increment(1);
    let body = json!({
        "token": token,
        "visitor": session.visitor,
        "expires_at": rfc3339(session.expires_at),
        "expires_in": (session.expires_at - now) / 1000,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

/// `GET …/widget.js`: the script a page adds with one `<script>` tag. Public, like any
/// script: it holds nothing but code, and the routes it calls check the page's site.
pub async fn widget(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    chat_of(&state.engine.registry(), &channel)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Short, so a new version reaches pages within minutes.
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "cross-origin",
            ),
        ],
        crate::channels::webchat::WIDGET_JS,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// The session token: `EventSource` cannot send headers.
    token: Option<String>,
    /// The last reply the page has, when it opens a new stream itself (after a reload of the
    /// page, or a renewed session); `EventSource` sends `Last-Event-ID` on its own reconnects.
    after: Option<String>,
}

/// `GET …/events?token=…`: the visitor's replies as Server-Sent Events (`event: message`,
/// `id:` the outbox id, `data: {"id", "text", "from"}`), after one `event: ready`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let registry = state.engine.registry();
    let chat = chat_of(&registry, &channel)?;
    chat.check_origin(origin(&headers)).map_err(forbidden)?;
    let token = query
        .token
        .or_else(|| crate::channels::webchat::bearer(&headers).map(str::to_owned))
        .unwrap_or_default();
    let engine = state.engine.clone();
    let session = chat
        .session(Some(&token), engine.now())
        .map_err(no_session)?;
    let subscription = subscribe(&engine, chat, &session.visitor)?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after)
        .filter(|id| !id.is_empty() && id.len() <= 100);
    let mut stream = ReplyStream {
        engine,
        channel: channel.clone(),
        visitor: session.visitor.clone(),
        token,
        expires_at: session.expires_at,
        subscription,
        queue: VecDeque::new(),
        sent: Remembered::default(),
        floor: Millis::MIN,
        last_seen: last_seen.clone(),
        tick: tokio::time::interval(POLL_EVERY),
        _open: OpenStream::new(&channel),
    };
    let missed = stream
        .missed_since(last_seen.as_deref())
        .await
        .map_err(ApiError::unavailable)?;
    stream.queue.push_back(
        Event::default()
            .event("ready")
            .retry(Duration::from_secs(2))
            .data(
                json!({
                    "visitor": session.visitor,
                    "expires_at": rfc3339(session.expires_at),
                })
                .to_string(),
            ),
    );
    for m in missed {
        stream.enqueue(reply_of(&m));
    }
    stream
        .tick
        .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // nginx and its kind buffer responses unless told not to; an event stream must not wait.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Opens a stream on the chat's hub, starting the task that reads the store for it when none
/// runs.
fn subscribe(
    engine: &Arc<Engine>,
    chat: &WebchatChannel,
    visitor: &str,
) -> Result<Subscription, ApiError> {
    let (subscription, start_poller) = chat
        .hub()
        .subscribe(visitor, chat.max_streams())
        .map_err(|e| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this visitor already has {} reply streams open (max_streams_per_visitor); close a tab",
                    e.0
                ),
            )
        })?;
    if start_poller {
        tokio::spawn(poll(
            engine.clone(),
            chat.name().to_owned(),
            chat.hub().clone(),
        ));
    }
    Ok(subscription)
}

fn reply_of(m: &OutboxRecord) -> Arc<Reply> {
    Arc::new(Reply {
        id: m.id.clone(),
        text: m.body.clone(),
        from: m.sender.clone(),
        sent_at: m.sent_at,
    })
}

/// One browser's stream of replies.
struct ReplyStream {
    engine: Arc<Engine>,
    channel: String,
    visitor: String,
    /// Checked again after a reload, which may have changed the secret.
    token: String,
    expires_at: Millis,
    subscription: Subscription,
    queue: VecDeque<Event>,
    sent: Remembered,
    /// Replies read from the store that were sent before this had the browser's (see
    /// [`ReplyStream::missed_since`]), and so are not sent again.
    floor: Millis,
    /// The last reply sent on this stream (or that the browser said it had).
    last_seen: Option<String>,
    tick: tokio::time::Interval,
    _open: OpenStream,
}

impl ReplyStream {
    /// The next event, or `None` to end the stream: the session ran out, the channel is gone,
    /// the store failed mid-stream (the browser reconnects and catches up), or Herald is
    /// shutting down (the browser reconnects to another process).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            tokio::select! {
                pushed = self.subscription.recv() => match pushed {
                    Ok(reply) => self.enqueue(reply),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(channel = %self.channel, skipped, "a reply stream fell behind; catching up from the store");
                        self.catch_up().await?;
                    }
                    // Only a hub that let go of the visitor closes it: wait for the tick,
                    // which finds where to listen now or ends the stream.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        self.tick.tick().await;
                        self.look_around().await?;
                    }
                },
                _ = self.tick.tick() => self.look_around().await?,
            }
        }
    }

    fn enqueue(&mut self, reply: Arc<Reply>) {
        if reply.sent_at.is_some_and(|at| at < self.floor) || !self.sent.insert(&reply.id) {
            return;
        }
        self.last_seen = Some(reply.id.clone());
        let data = json!({ "id": reply.id, "text": reply.text, "from": reply.from });
        self.queue.push_back(
            Event::default()
                .id(reply.id.as_str())
                .event("message")
                .data(data.to_string()),
        );
    }

    /// Once a second: whether the stream should go on, and on which hub.
    async fn look_around(&mut self) -> Option<()> {
        if self.engine.is_draining() {
            return None;
        }
        let now = self.engine.now();
        if now >= self.expires_at {
            return None;
        }
        let registry = self.engine.registry();
        let chat = registry.channels.get(&self.channel)?.webchat()?;
        if self.subscription.is_on(chat.hub()) {
            return Some(());
        }
        // A reload made the channel anew: follow it, if the session is still good there.
        chat.session(Some(&self.token), now).ok()?;
        self.subscription = subscribe(&self.engine, chat, &self.visitor).ok()?;
        drop(registry);
        self.catch_up().await
    }

    async fn catch_up(&mut self) -> Option<()> {
        let last = self.last_seen.clone();
        match self.missed_since(last.as_deref()).await {
            Ok(missed) => {
                for m in missed {
                    self.enqueue(reply_of(&m));
                }
                Some(())
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "a reply stream cannot read the store; the browser will reconnect");
                None
            }
        }
    }

    /// What the visitor was sent after the reply `last` (from a little before it, see
    /// [`OVERLAP_MS`]), or, with no usable `last`, their most recent replies. The browser has
    /// `last` and what was sent before the overlap: neither is sent again, whichever way it
    /// comes later.
    async fn missed_since(
        &mut self,
        last: Option<&str>,
    ) -> crate::store::Result<Vec<OutboxRecord>> {
        let store = &self.engine.store;
        let from = match last {
            Some(id) => store.message(id).await?.filter(|m| {
                m.channel == self.channel && m.recipient == self.visitor && m.sent_at.is_some()
            }),
            None => None,
        };
        let mut query = SentMessages {
            channel: self.channel.clone(),
            recipients: vec![self.visitor.clone()],
            after: (0, String::new()),
            limit: PAGE,
            newest: false,
        };
        let Some(from) = from else {
            query.limit = HISTORY;
            query.newest = true;
            return store.sent_messages(&query).await;
        };
        query.after = (from.sent_at.unwrap_or_default() - OVERLAP_MS, String::new());
        self.floor = self.floor.max(query.after.0);
        self.sent.insert(&from.id);
        let mut found = Vec::new();
        loop {
            let page = store.sent_messages(&query).await?;
            let full = page.len() as i64 == PAGE;
            if let Some(m) = page.last() {
                query.after = (m.sent_at.unwrap_or_default(), m.id.clone());
            }
            found.extend(page.into_iter().filter(|m| m.id != from.id));
            if !full || found.len() >= CATCH_UP_MAX {
                break;
            }
        }
        Ok(found)
    }
}

/// Ids recently sent, the oldest forgotten first.
#[derive(Default)]
struct Remembered {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Remembered {
    /// False when `id` was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

/// Counts a stream in `herald_webchat_streams` while it is open.
struct OpenStream(String);

impl OpenStream {
    fn new(channel: &str) -> OpenStream {
        metrics::gauge!("herald_webchat_streams", "channel" => channel.to_owned()).increment(1);
        OpenStream(channel.to_owned())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("herald_webchat_streams", "channel" => self.0.clone()).decrement(1);
    }
}

/// Reads the store every [`POLL_EVERY`] for replies to the visitors with a stream open on
/// `hub`, and hands them to the hub: the replies another process delivered (this process's
/// own were pushed already, and are dropped by the streams). Stops once nobody listens.
async fn poll(engine: Arc<Engine>, channel: String, hub: Arc<Hub>) {
    let mut newest = engine.now();
    let mut published: HashMap<String, Millis> = HashMap::new();
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        if !hub.keep_polling() {
            return;
        }
        let mut seen_up_to = newest;
        for visitors in hub.visitors().chunks(VISITORS_PER_QUERY) {
            let mut query = SentMessages {
                channel: channel.clone(),
                recipients: visitors.to_vec(),
                after: (newest - OVERLAP_MS, String::new()),
                limit: PAGE,
                newest: false,
            };
            loop {
                let page = match engine.store.sent_messages(&query).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "cannot read the web chat's replies from the store; trying again in a second");
                        break;
                    }
                };
                for m in &page {
                    let at = m.sent_at.unwrap_or_default();
                    seen_up_to = seen_up_to.max(at);
                    if published.insert(m.id.clone(), at).is_none() {
                        hub.publish(&m.recipient, reply_of(m));
                    }
                }
                match page.last() {
                    Some(m) if page.len() as i64 == PAGE => {
                        query.after = (m.sent_at.unwrap_or_default(), m.id.clone());
                    }
                    _ => break,
                }
            }
        }
        newest = seen_up_to;
        published.retain(|_, at| *at >= newest - OVERLAP_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_remembers_what_it_sent_within_bounds() {
        let mut r = Remembered::default();
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        for i in 0..REMEMBERED {
            r.insert(&i.to_string());
        }
        assert!(r.insert("a"), "the oldest is forgotten first");
        assert_eq!(r.ids.len(), REMEMBERED);
    }

    #[test]
    fn methods_and_headers_cover_what_the_widget_sends() {
        for h in ["authorization", "content-type", "last-event-id"] {
            assert!(ALLOWED_HEADERS.contains(h));
        }
        assert!(ALLOWED_METHODS.contains(axum::http::Method::POST.as_str()));
    }
}
