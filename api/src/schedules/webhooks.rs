//! Webhook delivery: queued events go out as CloudEvents 1.0 (structured JSON mode), signed
//! as the Standard Webhooks specification describes (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), so receivers can use
//! any Standard Webhooks library to verify them. Each subscriber has at most one delivery in
//! flight at a time (across workers and replicas) and gets its events in order, though a
//! retried delivery can arrive after later ones. Failures are retried with exponential backoff
//! and jitter; nothing is lost across a restart because the queue is a table.

use std::sync::OnceLock;
use std::time::Duration as StdDuration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{Duration, Utc};
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use crate::db::events::{self, DueDelivery};
use crate::domain::EventType;
use crate::domain::events::cloudevents_type;
use crate::state::AppState;

/// Deliveries claimed (and sent concurrently) at a time, and the most one run sends.
const BATCH: i64 = 16;
const MAX_PER_RUN: usize = 1_000;

#[derive(Debug, Default, Serialize)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub failed: usize,
    pub abandoned: usize,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .user_agent(concat!("fleetyard-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the webhook HTTP client")
    })
}

/// Sends every delivery that is due now: one at a time per subscriber, subscribers side by
/// side, each result recorded as soon as its send ends.
pub async fn deliver_due(state: &AppState) -> anyhow::Result<DeliveryReport> {
    let timeout = StdDuration::from_secs(state.config.webhook_timeout_secs);
    // Long enough for one send and its recording, whatever the subscriber does.
    let lease = Duration::seconds(state.config.webhook_timeout_secs as i64 * 2 + 5);
    let max_attempts = state.config.webhook_max_attempts;
    let mut report = DeliveryReport::default();
    while report.delivered + report.failed + report.abandoned < MAX_PER_RUN {
        let due = {
            let mut conn = state.pool.get().await?;
            events::claim_due(&mut conn, BATCH, lease).await?
        };
        if due.is_empty() {
            break;
        }
        let outcomes = join_all(due.iter().map(|delivery| async move {
            let outcome = match state.data_keys.open_or_plain(&delivery.secret) {
                Ok(secret) => send(delivery, &secret, timeout).await,
                Err(e) => Err((None, format!("the subscription's secret cannot be opened: {e:#}"))),
            };
            let mut conn = state.pool.get().await?;
            let counted = match outcome {
                Ok(status) => {
                    events::mark_delivered(&mut conn, delivery.id, delivery.attempts, status).await?;
                    Counted::Delivered
                }
                Err((status, error)) if delivery.attempts >= max_attempts => {
                    events::mark_failed(&mut conn, delivery.id, delivery.attempts, status, &error, None).await?;
                    tracing::warn!(
                        delivery = delivery.id,
                        subscription = %delivery.subscription_id,
                        "abandoned after {} attempts: {error}",
                        delivery.attempts
                    );
                    Counted::Abandoned
                }
                Err((status, error)) => {
                    let retry_at = Utc::now() + backoff(delivery.attempts);
                    events::mark_failed(&mut conn, delivery.id, delivery.attempts, status, &error, Some(retry_at))
                        .await?;
                    Counted::Failed
                }
            };
            anyhow::Ok(counted)
        }))
        .await;
        for outcome in outcomes {
            match outcome? {
                Counted::Delivered => report.delivered += 1,
                Counted::Failed => report.failed += 1,
                Counted::Abandoned => report.abandoned += 1,
            }
        }
    }
    Ok(report)
}

enum Counted {
    Delivered,
    Failed,
    Abandoned,
}

/// Time before attempt `attempts + 1`: 5 s doubling to at most an hour, plus up to 20 %.
pub fn backoff(attempts: i32) -> Duration {
    let base = Duration::seconds(5 * 2_i64.pow(attempts.clamp(1, 20) as u32 - 1)).min(Duration::hours(1));
    let jitter = rand::rng().random_range(0.0..0.2);
    base + Duration::milliseconds((base.num_milliseconds() as f64 * jitter) as i64)
}

/// The CloudEvents 1.0 envelope of an event.
pub fn cloudevent(delivery: &DueDelivery) -> serde_json::Value {
    let event_type =
        delivery.event_type.parse::<EventType>().map(cloudevents_type).unwrap_or(delivery.event_type.clone());
    json!({
        "specversion": "1.0",
        "id": delivery.event_id,
        "source": "/fleetyard",
        "type": event_type,
        "subject": delivery.subject,
        "time": delivery.time,
        "datacontenttype": "application/json",
        "data": delivery.data,
    })
}

/// The Standard Webhooks signature of `body`: `v1,<base64 HMAC-SHA256>` over
/// `"{id}.{timestamp}.{body}"`, keyed with the secret's bytes (after its `whsec_` prefix).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

async fn send(delivery: &DueDelivery, secret: &str, timeout: StdDuration) -> Result<i32, (Option<i32>, String)> {
    let body = serde_json::to_vec(&cloudevent(delivery)).map_err(|e| (None, e.to_string()))?;
    let id = delivery.event_id.to_string();
    let timestamp = Utc::now().timestamp();
    let response = client()
        .post(&delivery.url)
        .timeout(timeout)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(secret, &id, timestamp, &body))
        .body(body)
        .send()
        .await
        // The URL may carry a secret: keep it out of what is stored and shown.
        .map_err(|e| (None, format!("{:#}", e.without_url())))?;
    let status = i32::from(response.status().as_u16());
    if response.status().is_success() { Ok(status) } else { Err((Some(status), format!("HTTP {status}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert!(backoff(1) >= Duration::seconds(5) && backoff(1) < Duration::seconds(6));
        assert!(backoff(3) >= Duration::seconds(20));
        assert!(backoff(30) <= Duration::minutes(72));
    }
}
