//! How the process watches the API: every watch relists by itself after a failure and holds
//! readiness until it has, keeps only what the controllers read, and reports objects that leave
//! its cache; the identity watch queues its initial list most urgent first.

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt, predicates,
        reflector::{self, ObjectRef},
        utils::PredicateConfig,
        watcher,
    },
};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{
    api::MtlsIdentity,
    controllers::{
        Context,
        apihealth::{ApiHealth, WatchItem},
    },
};

/// Drops what the operator never reads from cached objects: managed fields and kubectl's
/// last-applied copy can be most of an object's size.
pub(super) fn slim<K: kube::Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The identity cache keeps what the identity controller reads: spec, status, and of the metadata
/// name, namespace, uid, generation, resourceVersion and deletionTimestamp. Labels, annotations,
/// owner references and timestamps set by users or their tools are not kept (the Secret's labels
/// and annotations come from `spec.secretTemplate`).
pub(super) fn slim_identity(id: &mut MtlsIdentity) {
    let m = &mut id.metadata;
    m.managed_fields = None;
    m.labels = None;
    // Only the renewal request is read from an identity's annotations (`kubectl mtls renew`).
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == crate::controllers::ANN_RENEW_REQUESTED);
    }
    if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        m.annotations = None;
    }
    m.owner_references = None;
    m.creation_timestamp = None;
    m.generate_name = None;
    m.self_link = None;
}

/// Every watch: ended by the API server after a bounded lifetime and resumed (see
/// `apihealth::WATCH_LIFETIME_SECS`), with bookmarks.
pub(super) fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(crate::controllers::apihealth::WATCH_LIFETIME_SECS)
}

/// A watch that relists by itself after a failure and holds readiness until it has (see
/// `ApiHealth::resilient`), its objects passed through `slim` before they are cached.
pub(super) fn watch<K>(
    health: &Arc<ApiHealth>,
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
) -> impl futures::Stream<Item = WatchItem<K>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    health.resilient(name, move || watcher(api.clone(), config.clone()).modify(slim))
}

/// On each recovery signal, the objects (of the given key prefix) that have failed since their
/// last success: they are retried now rather than after their backoff.
pub(super) fn failed_since_outage<K>(
    signals: tokio::sync::mpsc::UnboundedReceiver<()>,
    ctx: Arc<Context>,
    prefix: &'static str,
    parse: fn(&str) -> Option<ObjectRef<K>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + use<K>
where
    K: kube::Resource<DynamicType = ()> + Send + Sync + 'static,
{
    UnboundedReceiverStream::new(signals).flat_map(move |()| {
        let refs: Vec<ObjectRef<K>> = ctx.failed_since(prefix).iter().filter_map(|k| parse(k)).collect();
        futures::stream::iter(refs)
    })
}

/// Like `applied_objects`, but queues each initial list itself, sorted by urgency (no certificate,
/// expired, soonest to expire), so that after downtime the most urgent renewals happen first.
pub(super) fn urgent_first(
    ctx: Arc<Context>,
    events: impl futures::Stream<Item = Result<watcher::Event<MtlsIdentity>, watcher::Error>>,
) -> impl futures::Stream<Item = Result<MtlsIdentity, watcher::Error>> {
    events
        .scan(Vec::new(), move |initial: &mut Vec<MtlsIdentity>, event| {
            let out: Option<Result<MtlsIdentity, watcher::Error>> = match event {
                Ok(watcher::Event::Init) => {
                    initial.clear();
                    None
                }
                Ok(watcher::Event::InitApply(id)) => {
                    initial.push(id);
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    let mut ids = std::mem::take(initial);
                    ids.sort_by_key(|i| {
                        let not_after = i
                            .status
                            .as_ref()
                            .and_then(|s| s.not_after.as_deref())
                            .and_then(crate::controllers::parse_rfc3339);
                        crate::core::schedule::catch_up_order(not_after)
                    });
                    for id in &ids {
                        ctx.queue.push(&id.namespace().unwrap_or_default(), &id.name_any());
                    }
                    None
                }
                Ok(watcher::Event::Apply(id)) => Some(Ok(id)),
                Ok(watcher::Event::Delete(_)) => None,
                Err(e) => Some(Err(e)),
            };
            future::ready(Some(out))
        })
        .filter_map(future::ready)
}

/// Watches a reflector's events and calls `gone` once for every object that leaves its cache:
/// deleted, or, after the watch was down, missing from the relist or back under a new uid (a
/// delete and re-create that the watch did not see). Per-name bookkeeping is dropped there, so
/// that nothing of an old object is held against a new one of the same name.
pub(super) fn departures<K>(
    store: reflector::Store<K>,
    gone: impl Fn(&K),
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    // During a relist: what the cache held before it, and the uids the new list has shown so far.
    let mut relist: Option<(Vec<Arc<K>>, std::collections::HashSet<String>)> = None;
    move |event| match event {
        Ok(watcher::Event::Delete(obj)) => gone(obj),
        Ok(watcher::Event::Init) => relist = Some((store.state(), Default::default())),
        Ok(watcher::Event::InitApply(obj)) => {
            if let Some((_, seen)) = relist.as_mut() {
                seen.insert(obj.uid().unwrap_or_default());
            }
        }
        Ok(watcher::Event::InitDone) => {
            if let Some((before, seen)) = relist.take() {
                for old in before.iter().filter(|o| !seen.contains(&o.uid().unwrap_or_default())) {
                    gone(old);
                }
            }
        }
        _ => {}
    }
}

/// Namespaces (metadata only) into a cache of their own, passing on those whose labels changed
/// (policy and bundle targets select namespaces by label). Each controller has its own: a
/// kube-runtime watch stream feeds one consumer.
pub(super) fn namespaces(
    health: &Arc<ApiHealth>,
    client: &kube::Client,
    name: &'static str,
) -> (
    reflector::Store<PartialObjectMeta<Namespace>>,
    impl futures::Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watch(health, name, Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watch_config(), slim),
    )
    .touched_objects()
    .predicate_filter(predicates::labels, PredicateConfig::default());
    (store, stream)
}
