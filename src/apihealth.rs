//! Whether the operator can do its job right now: its caches are synced and the Kubernetes API
//! (and the etcd behind it) answers. `/readyz` and the `up` metric follow this; when the API comes
//! back after an outage, everything that failed meanwhile is retried at once instead of waiting
//! out its backoff.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kube::Client;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// How often the API is checked while it answers (one cheap `GET /readyz`), and while it does not.
const CHECK_HEALTHY: Duration = Duration::from_secs(10);
const CHECK_OUTAGE: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ApiHealth {
    reachable: AtomicBool,
    synced: AtomicBool,
    /// What `/readyz` serves.
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    wake: Notify,
}

impl ApiHealth {
    pub fn new(ready: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Self {
        ApiHealth {
            reachable: AtomicBool::new(true),
            synced: AtomicBool::new(false),
            ready,
            metrics,
            wake: Notify::new(),
        }
    }

    /// Caches synced (true), or not yet / no longer (false).
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
        self.publish();
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// A watch or a request failed in a way that suggests the API (or etcd) is down: report
    /// not-ready and check the API now.
    pub fn suspect(&self, what: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(cause = what, "Kubernetes API unreachable or failing; not ready until it answers again");
            self.publish();
        }
        self.wake.notify_one();
    }

    fn publish(&self) {
        let ready = self.reachable.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed);
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics.up.set(i64::from(ready));
    }

    /// Checks the API every few seconds (more often during an outage, and at once when something
    /// looks wrong); calls `recovered` each time it answers again after an outage.
    pub async fn monitor(&self, client: Client, recovered: impl Fn()) {
        loop {
            let ok = check(&client).await;
            match (ok, self.reachable.swap(ok, Ordering::Relaxed)) {
                (true, false) => {
                    tracing::info!("Kubernetes API answers again; retrying what failed meanwhile");
                    self.publish();
                    recovered();
                }
                (false, true) => {
                    tracing::warn!("Kubernetes API readiness check failed; not ready until it answers again");
                    self.publish();
                }
                _ => {}
            }
            let wait = if ok { CHECK_HEALTHY } else { CHECK_OUTAGE };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// `GET /readyz` of the API server: fails when the server is down, shutting down, or cannot reach
/// etcd. Allowed to every client by the default `system:public-info-viewer` role.
async fn check(client: &Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else { return false };
    matches!(tokio::time::timeout(CHECK_TIMEOUT, client.request_text(req)).await, Ok(Ok(body)) if body.trim() == "ok")
}

/// Whether an error from a Kubernetes call means the API itself is failing (unreachable, timing
/// out, or answering 5xx), rather than this request being wrong.
pub fn is_outage(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(ae) => ae.code >= 500,
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::HttpError(_)
        | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_synced_caches_and_a_reachable_api() {
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::default());
        let h = ApiHealth::new(ready.clone(), metrics.clone());
        assert!(!ready.load(Ordering::Relaxed), "not ready before the caches are synced");
        h.set_synced(true);
        assert!(ready.load(Ordering::Relaxed));
        assert_eq!(metrics.up.get(), 1);
        h.suspect("watch failed");
        assert!(!ready.load(Ordering::Relaxed), "a failing API makes the operator not ready");
        assert_eq!(metrics.up.get(), 0);
        assert!(!h.is_reachable());
    }

    #[test]
    fn only_server_side_and_transport_failures_are_outages() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: String::new(),
                reason: String::new(),
                ..Default::default()
            }))
        };
        assert!(is_outage(&api(500)));
        assert!(is_outage(&api(503)));
        assert!(!is_outage(&api(409)));
        assert!(!is_outage(&api(422)));
        assert!(!is_outage(&api(404)));
    }
}
