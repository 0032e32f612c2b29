//! Wiring of the identity controller: what it watches and what each change queues. The
//! reconciler itself is `controllers::identity`; its one trigger is the work queue
//! (`controllers::queue`).

use std::{future::Future, sync::Arc};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        utils::PredicateConfig,
        watcher,
    },
};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    Started, Wiring,
    shutdown::Stop,
    watches::{departures, slim, slim_identity, urgent_first, watch, watch_config},
};
use crate::{
    api::MtlsIdentity,
    controllers::{Context, identity, managed_selector, secrets::SecretCache},
};

/// Identities: their own spec, the Secrets they own (metadata only, label-filtered), namespace
/// labels (for policy), changes of their authority (signer, bundle, policy: `authority_changed`
/// names it), relists and recovery after an outage. Every one of these only queues the identity
/// (`ctx.queue`, first in, first out, with the renewal and retry timers); the controller's one
/// trigger is the queue, which hands it no more than a bounded number at a time. Feeds `secrets`.
pub(super) fn start(
    w: &Wiring,
    secrets: Arc<SecretCache>,
    authority_changed: UnboundedReceiver<String>,
    recovered: UnboundedReceiver<()>,
) -> Started {
    let (client, health, ctx) = (&w.client, &w.api_health, &w.ctx);
    let queue = ctx.queue.clone();
    let (id_store, id_writer) = reflector::store::<MtlsIdentity>();
    let id_stream = urgent_first(
        ctx.clone(),
        reflector::reflector(
            id_writer,
            watch(health, "identities", Api::<MtlsIdentity>::all(client.clone()), watch_config(), slim_identity),
        )
        .inspect(departures(id_store.clone(), {
            let ctx = ctx.clone();
            move |id: &MtlsIdentity| ctx.forget_identity(id)
        })),
    )
    .predicate_filter(spec_or_renew_request, PredicateConfig::default())
    .filter_map({
        let queue = queue.clone();
        move |event| {
            future::ready(match event {
                Ok(id) => {
                    queue.push(&id.namespace().unwrap_or_default(), &id.name_any());
                    None
                }
                Err(e) => Some(Err(e)),
            })
        }
    });
    let (relisted_tx, relisted) = tokio::sync::mpsc::unbounded_channel::<()>();
    let owned_secrets = owned_secrets(w, secrets.clone(), relisted_tx);
    let (ns_store, namespaces) = super::watches::namespaces(health, client, "namespaces (policy)");

    let wake = waker(id_store.clone(), ctx.clone());
    let stores = Arc::new(identity::Stores { namespaces: ns_store.clone(), secrets: secrets.clone() });
    let controller = Controller::for_stream(id_stream, id_store.clone())
        // Our own Secrets queue their identity, except for the echo of the operator's own write.
        .watches_stream(owned_secrets, {
            let ctx = ctx.clone();
            move |s: PartialObjectMeta<Secret>| {
                let ns = s.namespace().unwrap_or_default();
                if ctx.written_secrets.is_own(&ns, &s.name_any(), s.resource_version().as_deref()) {
                    return None::<ObjectRef<MtlsIdentity>>;
                }
                let owner =
                    s.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "MtlsIdentity")?;
                ctx.queue.push(&ns, &owner.name);
                None
            }
        })
        .watches_stream(namespaces, {
            let wake = wake.clone();
            move |ns: PartialObjectMeta<Namespace>| {
                let ns = ns.name_any();
                wake(&|i| i.namespace().as_deref() == Some(ns.as_str()));
                None::<ObjectRef<MtlsIdentity>>
            }
        })
        .reconcile_on(queue.clone().handed_out({
            let ids = id_store.clone();
            move |r| ids.get(r).is_some()
        }))
        // The queue bounds what the controller holds; `ctx.reconcile_slots` bounds API work.
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .graceful_shutdown_on(w.stop.requested())
        .run(
            move |id, ctx| {
                let stores = stores.clone();
                let running = ctx.queue.started(&id.namespace().unwrap_or_default(), &id.name_any());
                async move {
                    let result = identity::reconcile(id, ctx, &stores).await;
                    drop(running);
                    result
                }
            },
            identity::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));
    let wakeups =
        bulk_wakeups(wake, secrets.clone(), ctx.clone(), authority_changed, relisted, recovered, w.stop.clone());
    let timers = {
        let stopped = w.stop.requested();
        async move {
            tokio::select! {
                _ = queue.run_timers() => {}
                _ = stopped => {}
            }
        }
    };
    let run = async move {
        tokio::join!(controller, wakeups, timers);
    }
    .boxed();
    let synced = async move {
        secrets.wait_until_ready().await;
        id_store.wait_until_ready().await.is_ok() && ns_store.wait_until_ready().await.is_ok()
    }
    .boxed();
    Started { run, synced }
}

/// The Secrets this operator manages (metadata only, label-filtered), fed into `cache`. Each
/// (re)list is announced on `relisted`: a Secret deleted while the watch was down shows up only as
/// missing from the new list, so identities whose Secret is missing are queued then.
/// What queues an identity when its own object changes: its generation (the spec) and its renewal
/// request (`mtls.io/renew-requested`, an annotation, which does not bump the generation).
fn spec_or_renew_request(id: &MtlsIdentity) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.metadata.generation.hash(&mut h);
    id.annotations().get(crate::controllers::ANN_RENEW_REQUESTED).hash(&mut h);
    Some(h.finish())
}

fn owned_secrets(
    w: &Wiring,
    cache: Arc<SecretCache>,
    relisted: tokio::sync::mpsc::UnboundedSender<()>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    watch(
        &w.api_health,
        "identity Secrets",
        Api::<PartialObjectMeta<Secret>>::all(w.client.clone()),
        watch_config().labels(&managed_selector()),
        slim,
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            cache.apply(event);
            if matches!(event, watcher::Event::InitDone) {
                let _ = relisted.send(());
            }
        }
    })
    .touched_objects()
}

/// Queues every cached identity that `which` selects.
type Wake = Arc<dyn Fn(&dyn Fn(&MtlsIdentity) -> bool) + Send + Sync>;

/// Bulk wake-ups walk the identity cache and queue what they name; nothing is collected.
fn waker(ids: Store<MtlsIdentity>, ctx: Arc<Context>) -> Wake {
    Arc::new(move |which: &dyn Fn(&MtlsIdentity) -> bool| {
        for i in ids.state().iter().filter(|i| which(i)) {
            ctx.queue.push(&i.namespace().unwrap_or_default(), &i.name_any());
        }
    })
}

/// Wakes the identities of an authority that changed, those whose Secret a relist of the Secret
/// watch did not show, and, after an outage, those that failed meanwhile.
fn bulk_wakeups(
    wake: Wake,
    secrets: Arc<SecretCache>,
    ctx: Arc<Context>,
    mut authority_changed: UnboundedReceiver<String>,
    mut relisted: UnboundedReceiver<()>,
    mut recovered: UnboundedReceiver<()>,
    stop: Stop,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let stopped = stop.requested();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                Some(auth_name) = authority_changed.recv() => wake(&|i| i.spec.authority_ref == auth_name),
                Some(()) = relisted.recv() => wake(&|i| {
                    !secrets.contains(&i.namespace().unwrap_or_default(), &identity::secret_name(i))
                }),
                Some(()) = recovered.recv() => {
                    for key in ctx.failed_since("identity/") {
                        if let Some((ns, name)) = key.split_once('/') {
                            ctx.queue.push(ns, name);
                        }
                    }
                }
                _ = &mut stopped => break,
                else => break,
            }
        }
    }
}
