//! The idempotency store: one Redis key per (client, event id or
//! Idempotency-Key), remembered for `gateway.idempotency_window`.
//!
//! Key: `<prefix>:gw:idem:<client id>:<key>`; value `pending` while the event
//! is being published (with a short TTL, so a crashed request does not block
//! retries for long), then the answer as JSON `{"status": 202, "body": {...}}`.
//! A failed publish deletes the key so a retry publishes again.

use std::time::Duration;

use axum::http::StatusCode;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tracing::warn;

use crate::config::{GatewaySettings, RedisSettings};

const PENDING: &str = "pending";

pub enum Claim {
    /// First time: publish, then settle.
    New,
    /// Published before: answer with this.
    Done { status: u16, body: Value },
    /// Another request with this key is publishing right now.
    InProgress,
}

pub struct Idempotency {
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Connected on first use (and re-connected by the manager after that),
    /// so a Redis that is down at start makes the gateway unready, not dead.
    redis: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    window: Duration,
    pending_ttl: Duration,
    timeout: Duration,
}

impl Idempotency {
    pub fn new(
        redis: &RedisSettings,
        gateway: &GatewaySettings,
    ) -> Result<Idempotency, redis::RedisError> {
        let client = redis::Client::open(redis.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(redis.command_timeout)
            .set_response_timeout(redis.command_timeout)
            .set_number_of_retries(1);
        Ok(Idempotency {
            client,
            config,
            redis: tokio::sync::OnceCell::new(),
            prefix: format!("{}:gw:idem", redis.key_prefix),
            window: gateway.idempotency_window,
            pending_ttl: gateway.publish_timeout + Duration::from_secs(5),
            timeout: redis.command_timeout,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let manager = self
            .redis
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            })
            .await?;
        Ok(manager.clone())
    }

    fn key(&self, client: &str, key: &str) -> String {
        format!("{}:{client}:{key}", self.prefix)
    }

    pub async fn ping(&self) -> bool {
        let ping = async {
            let mut c = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }

    /// Claims `key` for publishing, or returns what happened to it before.
    pub async fn claim(&self, client: &str, key: &str) -> Result<Claim, redis::RedisError> {
        let mut c = self.conn().await?;
        let rkey = self.key(client, key);
        let set: Option<String> = redis::cmd("SET")
            .arg(&rkey)
            .arg(PENDING)
            .arg("NX")
            .arg("PX")
            .arg(self.pending_ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        if set.is_some() {
            return Ok(Claim::New);
        }
        let stored: Option<String> = redis::cmd("GET").arg(&rkey).query_async(&mut c).await?;
        match stored.as_deref() {
            None => Ok(Claim::InProgress), // expired in between: let the client retry
            Some(PENDING) => Ok(Claim::InProgress),
            Some(text) => {
                let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                let status = v.get("status").and_then(Value::as_u64).unwrap_or(202) as u16;
                Ok(Claim::Done {
                    status,
                    body: v.get("body").cloned().unwrap_or(Value::Null),
                })
            }
        }
    }

    /// Records the answer of an accepted event for the window, or forgets
    /// the key when the event was not stored (so a retry publishes).
    pub async fn settle(&self, client: &str, key: &str, status: StatusCode, body: &Value) {
        let rkey = self.key(client, key);
        let result: Result<(), redis::RedisError> = if status == StatusCode::ACCEPTED {
            let value = json!({"status": status.as_u16(), "body": body}).to_string();
            match self.conn().await {
                Ok(mut c) => {
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(value)
                        .arg("PX")
                        .arg(self.window.as_millis() as u64)
                        .query_async(&mut c)
                        .await
                }
                Err(e) => Err(e),
            }
        } else {
            match self.conn().await {
                Ok(mut c) => redis::cmd("DEL").arg(&rkey).query_async(&mut c).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            // The pending marker expires after pending_ttl; a retry then
            // publishes again (a duplicate the processor recognises).
            warn!(error = %e, key = %rkey, "could not record the idempotent answer");
        }
    }
}
