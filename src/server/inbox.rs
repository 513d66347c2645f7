//! The agent inbox over HTTP: a conversation's transcript, an agent's reply during a handoff
//! and the release that gives the conversation back to its steps. `{id}` is the run id the
//! `conversation.handoff` event carries.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::engine::inbox::InboxError;

fn refused(e: InboxError) -> ApiError {
    match e {
        InboxError::NotFound(m) => ApiError::not_found(m),
        InboxError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "not_handed_off", m),
        InboxError::Invalid(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_reply", m)
        }
        InboxError::Engine(e) => ApiError::engine(e),
    }
}

pub async fn messages(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .engine
        .transcript(&id)
        .await
        .map(Json)
        .map_err(refused)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyBody {
    text: String,
    /// Who answers, for the record (an agent's name or id).
    #[serde(default)]
    by: Option<String>,
    /// The client's id for this reply: a request sent again with it sends one message.
    #[serde(default)]
    id: Option<String>,
}

pub async fn reply(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<ReplyBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text()))?;
    let out = state
        .engine
        .agent_reply(&id, &body.text, body.by.as_deref(), body.id.as_deref())
        .await
        .map_err(refused)?;
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    #[serde(default)]
    by: Option<String>,
}

pub async fn release(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Option<Json<ReleaseBody>>,
) -> Result<Json<Value>, ApiError> {
    let by = body.and_then(|Json(b)| b.by);
    state
        .engine
        .release_conversation(&id, by.as_deref())
        .await
        .map(Json)
        .map_err(refused)
}
