//! `/api/silences`: list, add and expire silences, as `herald silence` does on the database.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::alerts::silence::{SilenceRequest, view};

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// `true` lists expired silences too.
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let now = state.engine.clock.now();
    let rows = state
        .engine
        .store
        .silences(if q.all { None } else { Some(now) })
        .await
        .map_err(ApiError::unavailable)?;
    let silences: Vec<Value> = rows.iter().map(|r| view(r, now)).collect();
    Ok(Json(json!({ "silences": silences })))
}

pub async fn add(
    State(state): State<Arc<AppState>>,
    body: Result<Json<SilenceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text()))?;
    let now = state.engine.clock.now();
    let row = body
        .build(now)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_silence", e))?;
    state
        .engine
        .store
        .add_silence(&row)
        .await
        .map_err(ApiError::unavailable)?;
    Ok((StatusCode::CREATED, Json(view(&row, now))).into_response())
}

pub async fn expire(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = state.engine.clock.now();
    if !state
        .engine
        .store
        .expire_silence(&id, now)
        .await
        .map_err(ApiError::unavailable)?
    {
        return Err(ApiError::not_found(format!(
            "no silence `{id}` is in force (it does not exist, or has expired)"
        )));
    }
    Ok(Json(json!({ "id": id, "state": "expired" })))
}
