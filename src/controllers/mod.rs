//! The controllers: the code that talks to the Kubernetes API. One module per controller
//! (`authority`, `identity`, and `publish` for the bundle ConfigMaps), the context they share,
//! the identity work queue, the Secret cache, API health and watches, errors, metrics and the
//! issuance rate limiter. Each reconcile observes (reads), decides by calling the pure core
//! (`crate::core`: `pki`, `policy`, `schedule`, `bundle`, `rotation`) and acts (writes); nothing
//! here decides what a certificate should contain. Uses `api` and `core`, never `process`.

pub mod apihealth;
pub mod authority;
pub mod error;
pub mod identity;
pub mod metrics;
pub mod outputs;
pub mod publish;
pub mod queue;
pub mod ratelimit;
pub mod secrets;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use jiff::{Timestamp, Unit};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use self::{metrics::Metrics, ratelimit::RateLimiter};
pub use crate::core::bundle::Bundle;
use crate::{api::MtlsAuthoritySpec, core::pki::SigningCa};

pub const MANAGER: &str = "mtls-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_AUTHORITY: &str = "mtls.io/authority";
pub const LABEL_IDENTITY: &str = "mtls.io/identity";
pub const LABEL_CA_GENERATION: &str = "mtls.io/ca-generation";
pub const ANN_SPIFFE_ID: &str = "mtls.io/spiffe-id";
pub const ANN_SERIAL: &str = "mtls.io/serial";
pub const ANN_NOT_AFTER: &str = "mtls.io/not-after";
pub const ANN_RENEWAL_TIME: &str = "mtls.io/renewal-time";
pub const ANN_ISSUER: &str = "mtls.io/issuer-fingerprint";
pub const ANN_BUNDLE_VERSION: &str = "mtls.io/bundle-version";
pub const ANN_BUNDLE_SHA256: &str = "mtls.io/bundle-sha256";
pub const ANN_SPEC_HASH: &str = "mtls.io/spec-hash";
pub const ANN_FINGERPRINT: &str = "mtls.io/fingerprint";
/// On an `MtlsIdentity`: a request to re-issue now with a fresh key (any new value; `kubectl mtls
/// renew` writes the time). On its Secret: the request the certificate in it answers.
pub const ANN_RENEW_REQUESTED: &str = "mtls.io/renew-requested";

/// Label selector for every object this operator writes.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// What the identity controller needs to know about a ready authority. Published by the
/// authority controller before it writes the authority's status, so that an identity woken by
/// that status change always finds it.
pub struct AuthorityState {
    pub generation: Option<i64>,
    pub spec: MtlsAuthoritySpec,
    pub signer: SigningCa,
    pub bundle: Bundle,
}

pub struct Context {
    pub client: Client,
    /// Readiness: synced caches and a reachable API.
    pub api: Arc<crate::controllers::apihealth::ApiHealth>,
    /// The operator's namespace: CA Secrets live here.
    pub namespace: String,
    /// Publishes Warning Events: one recorder for the process, so that a problem repeated within
    /// minutes folds into one Event series. Normal Events (one per real change, each with its own
    /// message) each get a fresh recorder instead: a recorder keeps every Event it sent for six
    /// minutes (~2 KiB each), which in a burst of 10,000 issuances was a large part of the
    /// operator's memory and never folded anything.
    pub recorder: Recorder,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    /// Identity reconciles doing API work at once (`--concurrency`). The semaphore is fair, so
    /// the few more that the work queue hands out wait in the order they were handed out.
    pub reconcile_slots: tokio::sync::Semaphore,
    /// Every reason to reconcile an identity, first in, first out, and its next renewal or retry
    /// (see `queue`): the identity controller's only trigger.
    pub queue: Arc<queue::WorkQueue>,
    pub authorities: RwLock<HashMap<String, Arc<AuthorityState>>>,
    /// Names of authorities whose signer, bundle or spec changed: their identities must be
    /// reconciled again.
    pub authority_changed: tokio::sync::mpsc::UnboundedSender<String>,
    /// Consecutive failures per object, for backoff.
    pub failures: RwLock<HashMap<String, u32>>,
    /// The last problem reported per object (reason, message): a reconcile that starts from a
    /// cached object whose status lags behind must not report the same problem twice.
    pub reported: RwLock<HashMap<String, (String, String)>>,
    /// Hash of the status last written per object (by uid): a reconcile that starts from a cached
    /// object whose status lags behind our own write does not write the same status again.
    pub written_status: RwLock<HashMap<String, u64>>,
    /// The identity Secrets this process is writing or has just written: the watch event echoing
    /// our own write does not need another reconcile (and its read).
    pub written_secrets: OwnWrites,
    /// Per-authority limiters for re-issues (`spec.rotation.reissueRate`), by authority name.
    pub reissue_limiters: RwLock<HashMap<String, (u32, Arc<RateLimiter>)>>,
    /// The truststore files of each authority's bundle ConfigMaps, by authority name, with the
    /// inputs they were built from (`publish::truststores`): every namespace gets the same bytes.
    pub bundle_truststores: std::sync::Mutex<HashMap<String, publish::Truststores>>,
}

impl Context {
    pub fn authority(&self, name: &str) -> Option<Arc<AuthorityState>> {
        self.authorities.read().expect("authority map lock poisoned").get(name).cloned()
    }

    /// Publishes what identities need of an authority (None: not usable) and wakes the
    /// authority's identities when that changed.
    pub fn publish_authority(&self, name: &str, state: Option<AuthorityState>) {
        let changed = {
            let mut map = self.authorities.write().expect("authority map lock poisoned");
            let before =
                map.get(name).map(|s| (s.signer.facts.fingerprint.clone(), s.bundle.sha256.clone(), s.spec.clone()));
            let after =
                state.as_ref().map(|s| (s.signer.facts.fingerprint.clone(), s.bundle.sha256.clone(), s.spec.clone()));
            match state {
                Some(s) => map.insert(name.to_string(), Arc::new(s)),
                None => map.remove(name),
            };
            before != after
        };
        if changed {
            let _ = self.authority_changed.send(name.to_string());
        }
    }

    /// Whether `status` must be written for `uid` (and remembers it if so): it differs from what
    /// this process last wrote or, before any write, from `cached`. The cache lags our own
    /// writes, so after one it is no guide: a status equal to the stale cached one may still
    /// differ from what is stored (e.g. Ready again after a NotReady just written).
    /// A condition's `lastTransitionTime` does not count: a reconcile that starts from a cache
    /// without our last write would stamp the same condition with a later time.
    pub fn status_is_new<T: serde::Serialize + PartialEq>(&self, uid: &str, cached: &T, status: &T) -> bool {
        use std::hash::{Hash, Hasher};
        let mut value = serde_json::to_value(status).unwrap_or_default();
        if let Some(conditions) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in conditions.iter_mut().filter_map(|c| c.as_object_mut()) {
                c.remove("lastTransitionTime");
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.to_string().hash(&mut h);
        let digest = h.finish();
        let mut w = self.written_status.write().expect("status map lock poisoned");
        match w.get(uid) {
            Some(d) if *d == digest => return false,
            None if cached == status => return false,
            _ => {}
        }
        w.insert(uid.to_string(), digest);
        true
    }

    /// The re-issue limiter of an authority, rebuilt when its rate changes.
    pub fn reissue_limiter(&self, authority: &str, rate: u32) -> Arc<RateLimiter> {
        if let Some((r, l)) = self.reissue_limiters.read().expect("limiter map lock poisoned").get(authority) {
            if *r == rate {
                return l.clone();
            }
        }
        let l = Arc::new(RateLimiter::new(f64::from(rate), rate.max(1)));
        self.reissue_limiters
            .write()
            .expect("limiter map lock poisoned")
            .insert(authority.to_string(), (rate, l.clone()));
        l
    }

    /// Drops everything kept about a deleted identity: its metric series and bookkeeping.
    pub fn forget_identity(&self, id: &crate::api::MtlsIdentity) {
        use kube::ResourceExt;
        let (ns, name) = (id.namespace().unwrap_or_default(), id.name_any());
        self.metrics.forget_identity(&ns, &name);
        self.queue.forget(&ns, &name);
        self.written_secrets.forget(&ns, &identity::secret_name(id));
        self.written_status.write().expect("status map lock poisoned").remove(&id.uid().unwrap_or_default());
        let key = format!("identity/{ns}/{name}");
        self.failures.write().expect("failure map lock poisoned").remove(&key);
        self.reported.write().expect("report map lock poisoned").remove(&key);
    }

    /// Drops everything kept about a deleted authority: it is no longer published to identities
    /// (they become `AuthorityNotFound`, and are woken to say so), its gauges, its failure and
    /// problem bookkeeping, and its re-issue limiter. A new authority of the same name starts
    /// from nothing.
    pub fn forget_authority(&self, name: &str) {
        self.publish_authority(name, None);
        // Wake its identities even if it was never published (it never became Ready).
        let _ = self.authority_changed.send(name.to_string());
        self.metrics.forget_authority(name);
        let (key, sub) = (format!("authority/{name}"), format!("authority/{name}/"));
        let ours = |k: &String| *k == key || k.starts_with(&sub);
        self.failures.write().expect("failure map lock poisoned").retain(|k, _| !ours(k));
        self.reported.write().expect("report map lock poisoned").retain(|k, _| !ours(k));
        self.reissue_limiters.write().expect("limiter map lock poisoned").remove(name);
    }

    /// Records one more failure for `key`; returns the consecutive count.
    pub fn note_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.write().expect("failure map lock poisoned");
        let n = f.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// The objects (keys after `prefix`) that have failed since their last success.
    pub fn failed_since(&self, prefix: &str) -> Vec<String> {
        let f = self.failures.read().expect("failure map lock poisoned");
        f.keys().filter_map(|k| k.strip_prefix(prefix)).map(str::to_string).collect()
    }

    /// Resets the consecutive-failure count only (the backoff), keeping the last reported problem.
    pub fn reset_failure_count(&self, key: &str) {
        self.failures.write().expect("failure map lock poisoned").remove(key);
    }

    /// The object is healthy again: no failure count, no reported problem.
    pub fn clear_failures(&self, key: &str) {
        self.failures.write().expect("failure map lock poisoned").remove(key);
        self.reported.write().expect("report map lock poisoned").remove(key);
    }

    /// Remembers that `key` now has this problem; true when it did not have it already.
    pub fn note_problem(&self, key: &str, reason: &str, message: &str) -> bool {
        let mut r = self.reported.write().expect("report map lock poisoned");
        let new = (reason.to_string(), message.to_string());
        if r.get(key) == Some(&new) {
            return false;
        }
        r.insert(key.to_string(), new);
        true
    }

    pub async fn event(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        // The recorder folds Events with the same (reason, action) into one series that keeps the
        // first message; deriving the action from the message keeps each distinct change
        // visible while identical repeats still fold together.
        let digest = hex::encode(
            &sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), note.as_bytes()))[..4],
        );
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: format!("{reason}-{digest}"),
            secondary: None,
        };
        let fresh;
        let recorder = if warning {
            &self.recorder
        } else {
            fresh = Recorder::new(self.client.clone(), self.reporter.clone());
            &fresh
        };
        if let Err(e) = recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "could not publish Event");
        }
    }
}

/// Tells the watch event that echoes one of our own Secret writes from any other change. The echo
/// can arrive before the write's response (which carries the resourceVersion to compare with):
/// events seen while a write is in flight are kept and judged when it returns. A record is used
/// up by its echo, so nothing is kept per Secret once the round trip is over.
#[derive(Default)]
pub struct OwnWrites(std::sync::Mutex<HashMap<String, Write>>);

enum Write {
    /// Sent, no response yet; the watch showed nothing of it meanwhile.
    Sent,
    /// Sent, no response yet; the watch showed this one version meanwhile (ours, or not).
    SentSeen(String),
    /// Sent, no response yet; the watch showed more than one version meanwhile, which our single
    /// write cannot all be.
    SentSeenSeveral,
    /// Answered with this resourceVersion; its echo has not been seen yet.
    Done(String),
}

impl OwnWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Write>> {
        self.0.lock().expect("own-writes lock poisoned")
    }

    /// Call right before writing the Secret.
    pub fn begin(&self, ns: &str, name: &str) {
        self.lock().insert(format!("{ns}/{name}"), Write::Sent);
    }

    /// Call when the write returned, with the resourceVersion it wrote (None: it failed). True when
    /// the watch showed a version other than ours meanwhile: the identity needs another look.
    pub fn end(&self, ns: &str, name: &str, written: Option<String>) -> bool {
        let key = format!("{ns}/{name}");
        let mut w = self.lock();
        match (w.remove(&key), written) {
            (Some(Write::SentSeen(seen)), Some(rv)) => seen != rv,
            (Some(Write::SentSeen(_) | Write::SentSeenSeveral), _) => true,
            (_, Some(rv)) => {
                w.insert(key, Write::Done(rv));
                false
            }
            (_, None) => false,
        }
    }

    /// Whether a watch event showing this version of the Secret needs no reconcile: it is the echo
    /// of our write, or it arrived while a write is in flight (then `end` decides).
    pub fn is_own(&self, ns: &str, name: &str, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version else { return false };
        let key = format!("{ns}/{name}");
        let mut w = self.lock();
        let Some(state) = w.get_mut(&key) else { return false };
        match state {
            Write::Sent => *state = Write::SentSeen(rv.to_string()),
            Write::SentSeen(_) => *state = Write::SentSeenSeveral,
            Write::SentSeenSeveral => {}
            Write::Done(ours) if ours == rv => {
                w.remove(&key);
            }
            Write::Done(_) => return false,
        }
        true
    }

    pub fn forget(&self, ns: &str, name: &str) {
        self.lock().remove(&format!("{ns}/{name}"));
    }
}

/// A JSON merge patch (RFC 7386) that turns `old` into `new`: fields `new` lacks are sent as
/// `null`, so that a cleared optional field is really removed from the stored status.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    match (old, new) {
        (serde_json::Value::Object(o), serde_json::Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                out.insert(k.clone(), o.get(k).map_or_else(|| nv.clone(), |ov| merge_patch(ov, nv)));
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), serde_json::Value::Null);
                }
            }
            serde_json::Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// A status patch from `old` to `new`.
pub fn status_patch<T: serde::Serialize>(old: &T, new: &T) -> serde_json::Value {
    let (o, n) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    serde_json::json!({ "status": merge_patch(&o, &n) })
}

/// RFC 3339 at second precision, the format used in status and annotations.
pub fn rfc3339(t: Timestamp) -> String {
    t.round(Unit::Second).unwrap_or(t).to_string()
}

pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// Builds a condition, keeping `lastTransitionTime` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now.round(Unit::Second).unwrap_or(now)));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// Retry delay after `failures` consecutive failures: exponential from 1 s, capped at 5 min and
/// at a tenth of the time left on the current certificate (so a 1 h certificate gets many tries
/// before it expires).
pub fn retry_backoff(failures: u32, remaining: Option<Duration>) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.saturating_sub(1).min(16));
    let mut cap = Duration::from_secs(300);
    if let Some(r) = remaining {
        cap = cap.min((r / 10).max(Duration::from_secs(1)));
    }
    exp.min(cap)
}

pub fn merge_labels(
    ours: &BTreeMap<String, String>,
    extra: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = extra.cloned().unwrap_or_default();
    out.extend(ours.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_tell_their_echo_from_other_changes() {
        let w = OwnWrites::default();
        // The echo after the response: used up by it.
        w.begin("ns", "a");
        assert!(!w.end("ns", "a", Some("10".into())));
        assert!(w.is_own("ns", "a", Some("10")));
        assert!(!w.is_own("ns", "a", Some("10")), "a record is used up by its echo");
        // The echo before the response.
        w.begin("ns", "b");
        assert!(w.is_own("ns", "b", Some("11")));
        assert!(!w.end("ns", "b", Some("11".into())), "only our own version was seen");
        assert!(!w.is_own("ns", "b", Some("12")), "nothing is kept after the round trip");
        // Someone else's change while ours was in flight: the identity gets another look.
        w.begin("ns", "c");
        assert!(w.is_own("ns", "c", Some("13")));
        assert!(w.end("ns", "c", Some("14".into())));
        // A failed write after a change was seen: another look too; without one, nothing.
        w.begin("ns", "d");
        assert!(w.is_own("ns", "d", Some("15")));
        assert!(w.end("ns", "d", None));
        w.begin("ns", "e");
        assert!(!w.end("ns", "e", None));
        // Events for Secrets we are not writing are never ours.
        assert!(!w.is_own("ns", "other", Some("16")));
        w.begin("ns", "f");
        w.forget("ns", "f");
        assert!(!w.is_own("ns", "f", Some("17")));
    }

    #[test]
    fn merge_patch_removes_cleared_fields() {
        let old = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        let new = serde_json::json!({"a": 1, "b": {"c": 2}});
        assert_eq!(merge_patch(&old, &new), serde_json::json!({"a": 1, "b": {"c": 2, "d": null}, "e": null}));
    }

    #[test]
    fn backoff_grows_from_seconds_and_respects_remaining_lifetime() {
        assert_eq!(retry_backoff(1, None), Duration::from_secs(1));
        assert_eq!(retry_backoff(2, None), Duration::from_secs(2));
        assert_eq!(retry_backoff(5, None), Duration::from_secs(16));
        assert_eq!(retry_backoff(30, None), Duration::from_secs(300));
        // A 1 h certificate with 20 min left retries at least every 2 min.
        assert_eq!(retry_backoff(30, Some(Duration::from_secs(1200))), Duration::from_secs(120));
    }

    #[test]
    fn condition_keeps_transition_time_while_status_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let c0 = condition(&[], "Ready", true, "Issued", "a".into(), Some(1), t0);
        let c1 = condition(&[c0.clone()], "Ready", true, "Issued", "b".into(), Some(2), t1);
        assert_eq!(c1.last_transition_time, c0.last_transition_time);
        let c2 = condition(&[c1], "Ready", false, "PolicyViolation", "c".into(), Some(2), t1);
        assert_eq!(c2.last_transition_time.0, t1);
    }
}
