//! Whether the operator can do its job right now: the Kubernetes API (and the etcd behind it)
//! answers, and every watch it depends on has listed since it last failed, so its caches can be
//! trusted. `/readyz` and the `up` metric follow this; when the API comes back after an outage,
//! every watch relists at once and everything that failed meanwhile is retried at once instead
//! of waiting out its backoff.
//!
//! Why the watches are not left to kube-runtime's own retry (`default_backoff`): a restarted API
//! server has an empty watch cache, so every watch resumed at its old resourceVersion is answered
//! `410 Gone` and must relist. kube-runtime backs off before each retry, 410 included, with a
//! delay that had grown to 30 s (plus jitter) during the outage and is reset only after 120 s
//! without an error: each watch waited up to a minute to try again, got its 410, and waited as
//! long again before relisting — minutes in which new objects went unseen while the API health
//! check, which only asks the API server, reported ready. Here a failed watch is relisted from
//! scratch after a short capped backoff (or at once when the API answers again), and the
//! operator is not ready until it has.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::{Client, runtime::watcher};
use tokio::sync::Notify;

use super::{error::is_outage, metrics::Metrics};

/// How often the API is checked while it answers (one cheap `GET /readyz`), and while it does not.
const CHECK_HEALTHY: Duration = Duration::from_secs(10);
const CHECK_OUTAGE: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a watch stays open before the API server ends it and it is resumed (`timeoutSeconds`).
/// kube-runtime also treats a watch that delivers nothing at all — no event and none of the
/// bookmarks the API server sends about once a minute — for this long (plus 5 s) as dead and
/// resumes it: no watch can stay open and silent for longer.
pub const WATCH_LIFETIME_SECS: u32 = 120;

/// Delay before a failed watch relists: from 250 ms, doubling, at most 4 s (and cut short when the
/// API answers again). Bounded so low that the time to recover after an outage does not grow with
/// the outage's length.
pub fn watch_retry_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(250) * 2u32.saturating_pow(failures.saturating_sub(1).min(8));
    base.min(Duration::from_secs(4))
}

/// One item of a kube-runtime watch stream.
pub type WatchItem<K> = Result<watcher::Event<K>, watcher::Error>;

pub struct ApiHealth {
    reachable: AtomicBool,
    synced: AtomicBool,
    /// Watches that have not completed a list since they started or last failed.
    unsynced: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Bumped each time the API answers again after an outage; failed watches wait on it.
    recoveries: tokio::sync::watch::Sender<u64>,
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
            unsynced: Default::default(),
            recoveries: tokio::sync::watch::Sender::new(0),
            ready,
            metrics,
            wake: Notify::new(),
        }
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<&'static str>> {
        self.unsynced.lock().expect("watch state lock poisoned")
    }

    /// The watches not synced yet (for logs and tests).
    pub fn unsynced_watches(&self) -> Vec<&'static str> {
        self.unsynced().iter().copied().collect()
    }

    fn watch_failed(&self, name: &'static str, err: &watcher::Error, failures: u32) {
        self.unsynced().insert(name);
        if failures == 1 {
            tracing::warn!(watch = name, error = %err, "watch failed; relisting, not ready until it has");
        } else {
            tracing::debug!(watch = name, error = %err, failures, "watch failed again");
        }
        // An error the API server sent (410 Gone, 429 while its cache initialises) is no outage.
        let outage = match err {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => is_outage(e),
            _ => false,
        };
        if outage {
            self.suspect("watch failed");
        }
        self.publish();
    }

    /// Keeps a watch going for ever and reports on it. `make` builds a fresh kube-runtime watcher;
    /// each time it fails, it is dropped and, after [`watch_retry_delay`] or as soon as the API
    /// answers again, replaced by a fresh one, which lists everything again: whatever happened
    /// while it was down (a delete included) reaches the cache, which is swapped whole when the
    /// list is complete. Until its first list, and from each failure until the next list is
    /// complete, the watch holds the operator not ready.
    ///
    /// Errors are handled here (logged once per failure streak, readiness, relist) and not passed
    /// on: fed into a kube-runtime controller's triggers, an error stalled that controller's
    /// trigger streams — after an API server restart, a failed watch's 250 ms retry started 7 to
    /// 35 s late, while the process sat idle. The watch also runs in a task of its own and hands
    /// its events over one at a time, so its retries keep their schedule whatever its consumer is
    /// busy with.
    pub fn resilient<K: Send + 'static, S: Stream<Item = WatchItem<K>> + Send + 'static>(
        self: &Arc<Self>,
        name: &'static str,
        make: impl Fn() -> S + Send + 'static,
    ) -> impl Stream<Item = WatchItem<K>> + Send + 'static {
        self.unsynced().insert(name);
        self.publish();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let events = keep_watching(self.clone(), name, make);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if tx.send(event).await.is_err() {
                    break; // the consumer is gone: the operator is stopping
                }
            }
        });
        // Synced once the consumer has the whole list (its cache is swapped at InitDone).
        let health = self.clone();
        tokio_stream::wrappers::ReceiverStream::new(rx).inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                health.unsynced().remove(name);
                health.publish();
            }
        })
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
        let ready =
            self.reachable.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed) && self.unsynced().is_empty();
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
                    let waiting = self.unsynced_watches();
                    if waiting.is_empty() {
                        tracing::info!("Kubernetes API answers again; retrying what failed meanwhile");
                    } else {
                        tracing::info!(
                            relisting = ?waiting,
                            "Kubernetes API answers again; retrying what failed meanwhile, ready once these watches have relisted"
                        );
                    }
                    self.publish();
                    self.recoveries.send_modify(|n| *n += 1);
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

/// The watch loop behind [`ApiHealth::resilient`]: a fresh watcher after each failure, errors
/// reported to `health` and not passed on.
fn keep_watching<K: Send + 'static, S: Stream<Item = WatchItem<K>> + Send + 'static>(
    health: Arc<ApiHealth>,
    name: &'static str,
    make: impl Fn() -> S + Send + 'static,
) -> impl Stream<Item = WatchItem<K>> + Send + 'static {
    struct Watch<S, F> {
        make: F,
        inner: Option<std::pin::Pin<Box<S>>>,
        failures: u32,
        health: Arc<ApiHealth>,
        recoveries: tokio::sync::watch::Receiver<u64>,
    }
    let st = Watch { make, inner: None, failures: 0, recoveries: health.recoveries.subscribe(), health };
    futures::stream::unfold(st, move |mut st| async move {
        loop {
            let inner = match st.inner.as_mut() {
                Some(inner) => inner,
                None => {
                    if st.failures > 0 {
                        let mut recoveries = st.recoveries.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(watch_retry_delay(st.failures)) => {}
                            _ = recoveries.changed() => {}
                        }
                    }
                    st.recoveries.mark_unchanged();
                    if st.failures > 0 {
                        tracing::debug!(watch = name, failures = st.failures, "relisting");
                    }
                    st.inner.insert(Box::pin((st.make)()))
                }
            };
            match inner.next().await {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) && st.failures > 0 {
                        tracing::info!(watch = name, "watch relisted; its cache is complete again");
                        st.failures = 0;
                    }
                    return Some((Ok(event), st));
                }
                // Handled here (logged, readiness, relist): a watch error passed on into a
                // kube-runtime controller's triggers stalled that controller's triggers for
                // tens of seconds (seen after an API server restart).
                Some(Err(e)) => {
                    st.failures += 1;
                    st.inner = None;
                    st.health.watch_failed(name, &e, st.failures);
                }
                // kube-runtime's watcher never ends; if one did, start another.
                None => st.inner = None,
            }
        }
    })
}

/// `GET /readyz` of the API server: fails when the server is down, shutting down, or cannot reach
/// etcd. Allowed to every client by the default `system:public-info-viewer` role.
async fn check(client: &Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else { return false };
    matches!(tokio::time::timeout(CHECK_TIMEOUT, client.request_text(req)).await, Ok(Ok(body)) if body.trim() == "ok")
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

    type Item = WatchItem<u32>;

    /// A fake watch driven by the test: each call of the factory starts the next of `n` watches,
    /// whose events the test sends through the returned senders.
    fn fake_watches(
        n: usize,
    ) -> (
        Vec<tokio::sync::mpsc::UnboundedSender<Item>>,
        impl Fn() -> futures::stream::BoxStream<'static, Item> + Send + 'static,
    ) {
        let (senders, receivers): (Vec<_>, std::collections::VecDeque<_>) =
            (0..n).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
        let receivers = std::sync::Mutex::new(receivers);
        let make = move || match receivers.lock().unwrap().pop_front() {
            Some(rx) => tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed(),
            None => futures::stream::pending().boxed(),
        };
        (senders, make)
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(kube::core::Status { code: 410, ..Default::default() }))
    }

    fn refused() -> watcher::Error {
        watcher::Error::WatchFailed(kube::Error::Api(Box::new(kube::core::Status { code: 503, ..Default::default() })))
    }

    fn health() -> (Arc<AtomicBool>, Arc<ApiHealth>) {
        let ready = Arc::new(AtomicBool::new(false));
        let h = Arc::new(ApiHealth::new(ready.clone(), Arc::new(Metrics::default())));
        h.set_synced(true);
        (ready, h)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_watch_relists_soon_and_holds_readiness_until_it_has() {
        use watcher::Event::{Apply, Init, InitApply, InitDone};
        let (ready, h) = health();
        let (tx, make) = fake_watches(3);
        let mut w = std::pin::pin!(h.resilient("test", make));
        assert!(!ready.load(Ordering::Relaxed), "not ready before the first list");
        for e in [Init, InitApply(1), InitDone, Apply(2)] {
            tx[0].send(Ok(e)).unwrap();
        }
        let mut seen = vec![];
        for _ in 0..4 {
            seen.push(w.next().await.unwrap().unwrap());
        }
        assert!(matches!(seen[..], [Init, InitApply(1), InitDone, Apply(2)]));
        assert!(ready.load(Ordering::Relaxed), "ready once listed");
        // A 410, then a failed retry: neither is passed on; the next item is the new list, after
        // the two short retry delays (250 ms, 500 ms), far below kube-runtime's 30 s.
        let start = tokio::time::Instant::now();
        tx[0].send(Err(gone())).unwrap();
        tx[1].send(Err(refused())).unwrap();
        for e in [Init, InitApply(2)] {
            tx[2].send(Ok(e)).unwrap();
        }
        assert!(matches!(w.next().await.unwrap().unwrap(), Init));
        assert!(start.elapsed() <= watch_retry_delay(1) + watch_retry_delay(2), "{:?}", start.elapsed());
        assert!(matches!(w.next().await.unwrap().unwrap(), InitApply(2)));
        assert!(!ready.load(Ordering::Relaxed), "not ready before the new list is complete");
        assert_eq!(h.unsynced_watches(), ["test"]);
        tx[2].send(Ok(InitDone)).unwrap();
        assert!(matches!(w.next().await.unwrap().unwrap(), InitDone));
        assert!(h.unsynced_watches().is_empty());
        assert!(!h.is_reachable(), "the 503 made the API suspect (the monitor then checks it)");
        assert!(!ready.load(Ordering::Relaxed), "and so not ready until the API answers");
    }

    #[tokio::test(start_paused = true)]
    async fn the_api_answering_again_ends_the_wait_at_once() {
        let (_, h) = health();
        // Every watch attempt fails at once while the API is down, and lists once it is back.
        let down = Arc::new(AtomicBool::new(true));
        let make = {
            let down = down.clone();
            move || -> futures::stream::BoxStream<'static, Item> {
                if down.load(Ordering::Relaxed) {
                    futures::stream::iter([Err(refused())]).chain(futures::stream::pending()).boxed()
                } else {
                    futures::stream::iter([Ok(watcher::Event::Init)]).chain(futures::stream::pending()).boxed()
                }
            }
        };
        let mut w = Box::pin(h.resilient("test", make));
        let relisted = tokio::spawn(async move {
            let _ = w.next().await;
            tokio::time::Instant::now()
        });
        // Long enough for the retry delay to reach its cap.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!relisted.is_finished());
        down.store(false, Ordering::Relaxed);
        let recovered_at = tokio::time::Instant::now();
        h.recoveries.send_modify(|n| *n += 1);
        let at = relisted.await.unwrap();
        assert!(
            at - recovered_at < Duration::from_millis(10),
            "relisted {:?} after the API answered",
            at - recovered_at
        );
        assert_eq!(watch_retry_delay(30), Duration::from_secs(4), "the retry delay is capped");
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
