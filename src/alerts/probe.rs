//! An alert's `probe` source: one HTTP check of a service per evaluation, judged on its status,
//! its latency and values in its JSON body. The result is kept with the alert's state, so
//! `/health` can show each service as the last check found it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definitions::model::alert::{ProbeMethod, ProbeSource, ProbeValue};
use crate::definitions::model::trigger::HttpMethod;
use crate::engine::{Engine, StubRequest};
use crate::store::Millis;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub up: bool,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Milliseconds to the answer, when there was one.
    pub latency_ms: Option<f64>,
    /// Why the check failed, in words.
    pub error: Option<String>,
    pub at: Millis,
}

impl ProbeResult {
    /// What the alert's condition reads.
    pub fn value(&self, what: ProbeValue) -> Option<f64> {
        match what {
            ProbeValue::Up => Some(if self.up { 1.0 } else { 0.0 }),
            ProbeValue::LatencyMs => self.latency_ms,
        }
    }

    fn failed(at: Millis, status: Option<u16>, latency_ms: Option<f64>, error: String) -> Self {
        ProbeResult {
            up: false,
            status,
            latency_ms,
            error: Some(error),
            at,
        }
    }
}

/// Makes the check. `${env:...}` in the URL and headers is resolved here, so a rotated token
/// is used at the next check.
pub async fn check(engine: &Engine, source: &ProbeSource, now: Millis) -> ProbeResult {
    let resolve = |t: &str| engine.env.resolve(t);
    let url = match resolve(&source.url) {
        Ok(u) => u,
        Err(e) => return ProbeResult::failed(now, None, None, e),
    };
    let mut headers = Vec::new();
    for (k, v) in &source.headers {
        match resolve(v) {
            Ok(v) => headers.push((k.clone(), v)),
            Err(e) => return ProbeResult::failed(now, None, None, e),
        }
    }
    let (client, stub) = engine.http();
    let started = Instant::now();
    let (status, body) = match stub {
        // Under `herald test`, the case's canned answers stand in for the service.
        Some(stub) => match stub.answer(&StubRequest {
            method: match source.method {
                ProbeMethod::Get => HttpMethod::Get,
                ProbeMethod::Head => HttpMethod::Get,
            },
            url: url.clone(),
            headers: headers.clone(),
            body: None,
        }) {
            Ok(a) => (a.status, a.body),
            Err(e) => return ProbeResult::failed(now, None, None, e),
        },
        None => {
            let method = match source.method {
                ProbeMethod::Get => reqwest::Method::GET,
                ProbeMethod::Head => reqwest::Method::HEAD,
            };
            // A fresh connection each time, as a blackbox probe makes: one kept from the
            // last check would hide a service that stopped accepting connections, and leave
            // the connect out of the latency.
            let mut req = client
                .request(method, &url)
                .header(reqwest::header::CONNECTION, "close")
                .timeout(source.timeout.as_std());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // The body only matters for `json`; a health page is small, and a huge
                    // one is cut rather than read whole.
                    let body = if source.json.is_empty() {
                        Vec::new()
                    } else {
                        resp.bytes()
                            .await
                            .map(|b| b.slice(..b.len().min(1 << 20)).to_vec())
                            .unwrap_or_default()
                    };
                    (status, body)
                }
                Err(e) => {
                    let why = if e.is_timeout() {
                        format!("no answer within {}", source.timeout)
                    } else if e.is_connect() {
                        "the connection failed".to_owned()
                    } else {
                        "the request failed".to_owned()
                    };
                    let detail = crate::channels::error_chain(&e);
                    return ProbeResult::failed(now, None, None, format!("{why}: {detail}"));
                }
            }
        }
    };
    let latency = started.elapsed();
    judge(source, status, &body, latency, now)
}

/// Judges an answer: the status, then the latency, then the JSON values.
pub fn judge(
    source: &ProbeSource,
    status: u16,
    body: &[u8],
    latency: Duration,
    now: Millis,
) -> ProbeResult {
    let ms = latency.as_secs_f64() * 1000.0;
    let fail = |e: String| ProbeResult::failed(now, Some(status), Some(ms), e);
    let status_ok = if source.status.is_empty() {
        (200..300).contains(&status)
    } else {
        source.status.contains(&status)
    };
    if !status_ok {
        let want = if source.status.is_empty() {
            "2xx".to_owned()
        } else {
            source
                .status
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        return fail(format!("status {status}, expected {want}"));
    }
    if let Some(max) = source.max_latency
        && latency > max.as_std()
    {
        return fail(format!(
            "answered in {ms:.0} ms, more than max_latency {max}"
        ));
    }
    if !source.json.is_empty() {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return fail("the body is not JSON".to_owned());
        };
        for (path, want) in &source.json {
            let got = path.split('.').try_fold(&doc, |v, p| match v {
                Value::Object(m) => m.get(p),
                Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            });
            let same = match (got, want) {
                (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (Some(g), w) => g == w,
                (None, _) => false,
            };
            if !same {
                let got = got.map_or("missing".to_owned(), Value::to_string);
                return fail(format!("`{path}` is {got}, expected {want}"));
            }
        }
    }
    ProbeResult {
        up: true,
        status: Some(status),
        latency_ms: Some(ms),
        error: None,
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: Value) -> ProbeSource {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn an_answer_is_judged_on_status_latency_and_json() {
        let s = source(serde_json::json!({
            "url": "http://x/health",
            "max_latency": "2s",
            "json": { "status": "ok", "checks.db": "up", "workers": 3 }
        }));
        let good = br#"{"status":"ok","checks":{"db":"up"},"workers":3.0}"#;
        let r = judge(&s, 200, good, Duration::from_millis(120), 7);
        assert!(r.up, "{r:?}");
        assert_eq!(r.value(ProbeValue::Up), Some(1.0));
        assert_eq!(r.value(ProbeValue::LatencyMs), Some(120.0));
        let r = judge(&s, 503, good, Duration::from_millis(5), 7);
        assert_eq!(r.error.as_deref(), Some("status 503, expected 2xx"));
        assert_eq!(r.value(ProbeValue::Up), Some(0.0));
        let r = judge(&s, 200, good, Duration::from_millis(2500), 7);
        assert!(r.error.unwrap().contains("more than max_latency 2s"));
        let r = judge(
            &s,
            200,
            br#"{"status":"ok","checks":{"db":"down"},"workers":3}"#,
            Duration::ZERO,
            7,
        );
        assert_eq!(
            r.error.as_deref(),
            Some("`checks.db` is \"down\", expected \"up\"")
        );
        let r = judge(&s, 200, b"<html>", Duration::ZERO, 7);
        assert_eq!(r.error.as_deref(), Some("the body is not JSON"));
        let only_204 = source(serde_json::json!({ "url": "http://x", "status": [204] }));
        assert!(!judge(&only_204, 200, b"", Duration::ZERO, 7).up);
        assert!(judge(&only_204, 204, b"", Duration::ZERO, 7).up);
    }
}
