//! `{routes.unsubscribe}/{token}`: where the links in marketing e-mail lead (RFC 8058).
//!
//! GET shows a page with one button and changes nothing: mail scanners and link previewers
//! fetch every link in a message, and must not unsubscribe anyone. POST unsubscribes: the
//! button's form, or a mail client's one-click request (`List-Unsubscribe=One-Click` in the
//! body, sent without cookies or a page). Both answer a page a person can read.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::engine::unsubscribe::Subject;

pub async fn page(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    let subject = match check(&state, &token) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    html(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop marketing e-mail to <strong>{}</strong>?</p>\
             <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>",
            escape(&subject.address)
        ),
    )
}

pub async fn confirm(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    body: String,
) -> Response {
    let subject = match check(&state, &token) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    // A mail client's one-click request says so in its body; anything else came from the
    // confirmation page (or a client that did not follow RFC 8058, which still means it).
    let one_click = form_urlencoded::parse(body.as_bytes())
        .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    let how = if one_click {
        "one-click unsubscribe"
    } else {
        "unsubscribe page"
    };
    match state.engine.unsubscribe(&subject, how).await {
        Ok(()) => {
            tracing::info!(channel = %subject.channel, message = %subject.message_id, how, "unsubscribed");
            html(
                StatusCode::OK,
                "Unsubscribed",
                &format!(
                    "<p><strong>{}</strong> will get no more marketing e-mail from us.</p>",
                    escape(&subject.address)
                ),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, channel = %subject.channel, "could not record an unsubscribe");
            let mut r = html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            r
        }
    }
}

/// Who the token unsubscribes, or the page to answer instead.
fn check(state: &AppState, token: &str) -> Result<Subject, Box<Response>> {
    let Some(unsubscribe) = state.engine.registry().unsubscribe.clone() else {
        return Err(Box::new(html(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>Unsubscribe links are not set up here.</p>",
        )));
    };
    unsubscribe.check(token).ok_or_else(|| {
        Box::new(html(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p>This unsubscribe link is not valid. Please use the link in the most recent e-mail you received from us.</p>",
        ))
    })
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
