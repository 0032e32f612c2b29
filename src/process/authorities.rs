//! Wiring of the authority controller: what it watches and what each change wakes. The
//! reconciler itself is `controllers::authority`.

use std::sync::Arc;

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, predicates,
        reflector::{self, ObjectRef, Store},
        utils::PredicateConfig,
    },
};

use super::{
    Started, Wiring,
    watches::{departures, failed_since_outage, namespaces, slim, watch, watch_config},
};
use crate::{
    api::MtlsAuthority,
    controllers::{LABEL_AUTHORITY, authority, managed_selector, publish, secrets::SecretCache},
};

/// Authorities: their spec, the CA Secrets in the operator's namespace, their bundle ConfigMaps
/// (tampering is repaired), namespaces (new ones get the bundle) and the sources of
/// additionalCAs; after an outage, those that failed meanwhile. `secrets` is the identity
/// Secret cache, which the identity wiring feeds (the publisher reads it).
pub(super) fn start(
    w: &Wiring,
    namespace: &str,
    secrets: Arc<SecretCache>,
    recovered: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Started {
    let (client, health, ctx) = (&w.client, &w.api_health, &w.ctx);
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (ns_store, bundle_namespaces) = namespaces(health, client, "namespaces (bundles)");
    let caches = Arc::new(publish::Caches { namespaces: ns_store.clone(), configmaps: cm_store.clone(), secrets });

    let (auth_store, auth_writer) = reflector::store::<MtlsAuthority>();
    let auth_stream = reflector::reflector(
        auth_writer,
        watch(health, "authorities", Api::<MtlsAuthority>::all(client.clone()), watch_config(), slim),
    )
    .inspect(departures(auth_store.clone(), {
        let ctx = ctx.clone();
        move |a: &MtlsAuthority| ctx.forget_authority(&a.name_any())
    }))
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let ca_secrets = watch(
        health,
        "CA Secrets",
        Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), namespace),
        watch_config(),
        slim,
    )
    .touched_objects();
    let bundle_configmaps = reflector::reflector(
        cm_writer,
        watch(
            health,
            "bundle ConfigMaps",
            Api::<ConfigMap>::all(client.clone()),
            watch_config().labels(&managed_selector()),
            slim,
        ),
    )
    .touched_objects();
    // Sources of additionalCAs are plain ConfigMaps in the operator's namespace.
    let source_configmaps = watch(
        health,
        "additionalCAs ConfigMaps",
        Api::<PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), namespace),
        watch_config(),
        slim,
    )
    .touched_objects();

    let (by_secret, by_source, all) = (auth_store.clone(), auth_store.clone(), auth_store.clone());
    let run = Controller::for_stream(auth_stream, auth_store.clone())
        .watches_stream(ca_secrets, move |s| using_secret(&by_secret, &s))
        .watches_stream(bundle_configmaps, |cm: ConfigMap| {
            cm.labels().get(LABEL_AUTHORITY).map(|a| ObjectRef::<MtlsAuthority>::new(a))
        })
        .watches_stream(source_configmaps, move |cm: PartialObjectMeta<ConfigMap>| {
            using_configmap(&by_source, &cm.name_any())
        })
        .watches_stream(bundle_namespaces, move |_ns: PartialObjectMeta<Namespace>| {
            all.state().into_iter().map(|a| ObjectRef::from_obj(&*a)).collect::<Vec<_>>()
        })
        .reconcile_on(failed_since_outage(recovered, ctx.clone(), "authority/", |key| Some(ObjectRef::new(key))))
        .graceful_shutdown_on(w.stop.requested())
        .run(
            move |auth, ctx| {
                let caches = caches.clone();
                async move { authority::reconcile(auth, ctx, &caches).await }
            },
            authority::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
        .boxed();
    let synced = async move {
        auth_store.wait_until_ready().await.is_ok()
            && cm_store.wait_until_ready().await.is_ok()
            && ns_store.wait_until_ready().await.is_ok()
    }
    .boxed();
    Started { run, synced }
}

/// The authorities a Secret in the operator's namespace concerns: its CA generations (by label),
/// a supplied CA, or a source of additionalCAs.
fn using_secret(authorities: &Store<MtlsAuthority>, s: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<MtlsAuthority>> {
    let secret = s.name_any();
    let labelled = s.labels().get(LABEL_AUTHORITY).cloned();
    authorities
        .state()
        .into_iter()
        .filter(|a| {
            Some(a.name_any()) == labelled
                || a.spec.ca.secret_ref.as_ref().is_some_and(|r| r.name == secret)
                || a.spec
                    .trust_bundle
                    .additional_cas
                    .iter()
                    .any(|c| c.secret.as_ref().is_some_and(|r| r.name == secret))
        })
        .map(|a| ObjectRef::from_obj(&*a))
        .collect()
}

/// The authorities taking additionalCAs from the ConfigMap `name` in the operator's namespace.
fn using_configmap(authorities: &Store<MtlsAuthority>, name: &str) -> Vec<ObjectRef<MtlsAuthority>> {
    authorities
        .state()
        .into_iter()
        .filter(|a| {
            a.spec.trust_bundle.additional_cas.iter().any(|c| c.config_map.as_ref().is_some_and(|r| r.name == name))
        })
        .map(|a| ObjectRef::from_obj(&*a))
        .collect()
}
