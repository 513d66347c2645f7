//! The admin API's campaigns: list, show (state and counts per step), pause, resume, cancel.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::engine::campaign::{self, CampaignError};

fn api_error(e: CampaignError) -> ApiError {
    match e {
        CampaignError::NotFound(_) => ApiError::not_found(e.to_string()),
        CampaignError::Refused(m) => ApiError::new(StatusCode::CONFLICT, "campaign_state", m),
        CampaignError::Engine(e) => ApiError::engine(e),
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let all = campaign::list(&state.engine).await.map_err(api_error)?;
    Ok(Json(json!({ "campaigns": all })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = campaign::show(&state.engine, &id)
        .await
        .map_err(api_error)?;
    Ok(Json(json!(c)))
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    campaign::pause(&state.engine, &id)
        .await
        .map_err(api_error)?;
    show(State(state), Path(id)).await
}

pub async fn resume(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    campaign::resume(&state.engine, &id)
        .await
        .map_err(api_error)?;
    show(State(state), Path(id)).await
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cancelled = campaign::cancel(&state.engine, &id)
        .await
        .map_err(api_error)?;
    let Json(mut shown) = show(State(state), Path(id)).await?;
    shown["cancelled_runs"] = json!(cancelled);
    Ok(Json(shown))
}
