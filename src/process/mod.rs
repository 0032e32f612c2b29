//! The `run` subcommand: connects, checks the CRDs, starts the authority and identity
//! controllers and serves probes and metrics until SIGTERM/SIGINT.

pub mod http;
pub mod leader;

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use futures::{StreamExt, future};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        predicates,
        reflector::{self, ObjectRef},
        utils::PredicateConfig,
        watcher,
    },
};
use tokio_stream::wrappers::UnboundedReceiverStream;

use self::http::Health;
use crate::{
    api::{MtlsAuthority, MtlsIdentity},
    controllers::{
        Context, LABEL_AUTHORITY, MANAGER, apihealth::ApiHealth, authority, identity, managed_selector,
        metrics::Metrics, publish, ratelimit::RateLimiter, secrets::SecretCache,
    },
};

/// How long in-flight reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace holding CA Secrets and bundle history (the operator's own).
    pub namespace: String,
    pub listen: SocketAddr,
    /// Global issuance rate (certificates per second) and burst.
    pub issuance_rate: f64,
    pub issuance_burst: u32,
    /// Identities reconciled in parallel.
    pub concurrency: u16,
    /// Also stop when stdin reaches end of file.
    pub exit_on_stdin_close: bool,
    /// Run the controllers only while holding this Lease (in `namespace`).
    pub leader_election: Option<String>,
}

/// Fails with an actionable message unless both CRDs exist and are Established.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [MtlsAuthority::crd(), MtlsIdentity::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let found = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading CustomResourceDefinition {name}"))?
            .with_context(|| {
                format!("CustomResourceDefinition {name} is not installed: apply crds/ (kubectl apply -f crds/)")
            })?;
        let established = found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        anyhow::ensure!(established, "CustomResourceDefinition {name} is installed but not Established yet");
    }
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health { ready: ready.clone(), metrics: metrics.clone() };
    let api_health = Arc::new(ApiHealth::new(ready.clone(), metrics.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let server = http::serve(config.listen, health, stopped()).await?;

    check_crds(&client).await?;

    // Watches the API's own readiness; after an outage, everything that failed meanwhile is
    // retried at once (one signal per controller).
    let (recovered_ids_tx, recovered_ids) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (recovered_auths_tx, recovered_auths) = tokio::sync::mpsc::unbounded_channel::<()>();
    {
        let (api_health, client, mut stop) = (api_health.clone(), client.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let recovered = move || {
                let _ = recovered_ids_tx.send(());
                let _ = recovered_auths_tx.send(());
            };
            tokio::select! {
                _ = api_health.monitor(client, recovered) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    // SIGTERM/SIGINT (or, for test harnesses, stdin closing) stops everything gracefully.
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        let exit_on_stdin_close = config.exit_on_stdin_close;
        tokio::spawn(async move {
            let stdin_closed = async {
                if exit_on_stdin_close {
                    // A plain thread: a blocked read must not hold up the runtime's shutdown.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                        let _ = tx.send(());
                    });
                    let _ = rx.await;
                } else {
                    future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = shutdown_signal() => {},
                _ = stdin_closed => {},
            }
            tracing::info!("signal received; shutting down");
            let _ = stop_tx.send(true);
        });
    }

    // With leader election, stand by (healthy and ready) until this replica holds the Lease.
    let leader = config.leader_election.as_ref().map(|lease| {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "mtls-operator".into()), std::process::id())
        });
        leader::LeaderConfig::new(&config.namespace, lease, identity)
    });
    if let Some(cfg) = &leader {
        api_health.set_synced(true);
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = leader::acquire(&client, cfg) => {}
            _ = stop.wait_for(|s| *s) => {
                let _ = server.await;
                return Ok(());
            }
        }
        api_health.set_synced(false);
    }

    let (changed_tx, changed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        api: api_health.clone(),
        namespace: config.namespace.clone(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        metrics: metrics.clone(),
        limiter: RateLimiter::new(config.issuance_rate, config.issuance_burst),
        reconcile_slots: tokio::sync::Semaphore::new(usize::from(config.concurrency.max(1))),
        queue: crate::controllers::queue::WorkQueue::new(
            IN_CONTROLLER_PER_SLOT * usize::from(config.concurrency.max(1)),
        ),
        authorities: RwLock::default(),
        authority_changed: changed_tx,
        failures: RwLock::default(),
        reported: RwLock::default(),
        reissue_limiters: RwLock::default(),
        written_status: RwLock::default(),
        written_secrets: Default::default(),
    });

    // Caches shared by both controllers: managed Secrets (metadata only), managed ConfigMaps,
    // namespaces. Each is fed by exactly one of the streams below.
    let secret_cache = Arc::new(SecretCache::default());
    let (cm_store, cm_writer) = reflector::store::<ConfigMap>();
    let (bundle_ns_store, bundle_ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let caches = Arc::new(publish::Caches {
        namespaces: bundle_ns_store.clone(),
        configmaps: cm_store.clone(),
        secrets: secret_cache.clone(),
    });

    // Authorities: their spec, the CA Secrets in the operator's namespace, their bundle
    // ConfigMaps (tampering is repaired) and namespaces (new ones get the bundle).
    let (auth_store, auth_writer) = reflector::store::<MtlsAuthority>();
    let auth_stream = reflector::reflector(
        auth_writer,
        watch(&api_health, "authorities", Api::<MtlsAuthority>::all(client.clone()), watch_config(), slim),
    )
    .inspect(departures(auth_store.clone(), {
        let ctx = ctx.clone();
        move |a: &MtlsAuthority| ctx.forget_authority(&a.name_any())
    }))
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let ca_secrets = watch(
        &api_health,
        "CA Secrets",
        Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &config.namespace),
        watch_config(),
        slim,
    )
    .touched_objects();
    let bundle_configmaps = reflector::reflector(
        cm_writer,
        watch(
            &api_health,
            "bundle ConfigMaps",
            Api::<ConfigMap>::all(client.clone()),
            watch_config().labels(&managed_selector()),
            slim,
        ),
    )
    .touched_objects();
    let bundle_namespaces = reflector::reflector(
        bundle_ns_writer,
        watch(
            &api_health,
            "namespaces (bundles)",
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watch_config(),
            slim,
        ),
    )
    .touched_objects()
    .predicate_filter(predicates::labels, PredicateConfig::default());
    // Sources of additionalCAs are plain ConfigMaps in the operator's namespace.
    let source_configmaps = watch(
        &api_health,
        "additionalCAs ConfigMaps",
        Api::<PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), &config.namespace),
        watch_config(),
        slim,
    )
    .touched_objects();
    let auth_lookup = auth_store.clone();
    let source_lookup = auth_store.clone();
    let all_authorities = auth_store.clone();
    let authority_controller = Controller::for_stream(auth_stream, auth_store.clone())
        .watches_stream(ca_secrets, move |s| {
            let secret = s.name_any();
            let labelled = s.labels().get(LABEL_AUTHORITY).cloned();
            auth_lookup
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
                .collect::<Vec<_>>()
        })
        .watches_stream(bundle_configmaps, |cm: ConfigMap| {
            cm.labels().get(LABEL_AUTHORITY).map(|a| ObjectRef::<MtlsAuthority>::new(a))
        })
        .watches_stream(source_configmaps, move |cm: PartialObjectMeta<ConfigMap>| {
            let name = cm.name_any();
            source_lookup
                .state()
                .into_iter()
                .filter(|a| {
                    a.spec
                        .trust_bundle
                        .additional_cas
                        .iter()
                        .any(|c| c.config_map.as_ref().is_some_and(|r| r.name == name))
                })
                .map(|a| ObjectRef::from_obj(&*a))
                .collect::<Vec<_>>()
        })
        .watches_stream(bundle_namespaces, move |_ns: PartialObjectMeta<Namespace>| {
            all_authorities.state().into_iter().map(|a| ObjectRef::from_obj(&*a)).collect::<Vec<_>>()
        })
        .reconcile_on(failed_since_outage(recovered_auths, ctx.clone(), "authority/", |key| Some(ObjectRef::new(key))))
        .graceful_shutdown_on(stopped())
        .run(
            move |auth, ctx| {
                let caches = caches.clone();
                async move { authority::reconcile(auth, ctx, &caches).await }
            },
            authority::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    // Identities: their own spec, the Secrets they own (metadata only, label-filtered), namespace
    // labels (for policy), changes of their authority (signer, bundle, policy), relists and
    // recovery after an outage. Every one of these only queues the identity (`ctx.queue`, first
    // in, first out, with the renewal and retry timers); the controller's one trigger is the
    // queue, which hands it no more than a bounded number at a time.
    let queue = ctx.queue.clone();
    let (id_store, id_writer) = reflector::store::<MtlsIdentity>();
    let id_stream = urgent_first(
        ctx.clone(),
        reflector::reflector(
            id_writer,
            watch(&api_health, "identities", Api::<MtlsIdentity>::all(client.clone()), watch_config(), slim_identity),
        )
        .inspect(departures(id_store.clone(), {
            let ctx = ctx.clone();
            move |id: &MtlsIdentity| ctx.forget_identity(id)
        })),
    )
    .predicate_filter(predicates::generation, PredicateConfig::default())
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
    // Each (re)list of our Secrets: a Secret deleted while the watch was down shows up only as
    // missing from the new list, so identities whose Secret is missing are queued then.
    let (relisted_tx, mut relisted_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let owned_secrets = watch(
        &api_health,
        "identity Secrets",
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watch_config().labels(&managed_selector()),
        slim,
    )
    .inspect({
        let cache = secret_cache.clone();
        move |event| {
            if let Ok(event) = event {
                cache.apply(event);
                if matches!(event, watcher::Event::InitDone) {
                    let _ = relisted_tx.send(());
                }
            }
        }
    })
    .touched_objects();
    let (ns_store, ns_writer) = reflector::store();
    let namespaces = reflector::reflector(
        ns_writer,
        watch(
            &api_health,
            "namespaces (policy)",
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watch_config(),
            slim,
        ),
    )
    .touched_objects()
    .predicate_filter(predicates::labels, PredicateConfig::default());
    // Bulk wake-ups walk the identity cache and queue what they name; nothing is collected.
    let wake = {
        let (ids, queue) = (id_store.clone(), queue.clone());
        move |which: &dyn Fn(&MtlsIdentity) -> bool| {
            for i in ids.state().iter().filter(|i| which(i)) {
                queue.push(&i.namespace().unwrap_or_default(), &i.name_any());
            }
        }
    };
    let bulk_wakeups = {
        let (wake, secrets, ctx, mut stop) = (wake.clone(), secret_cache.clone(), ctx.clone(), stop_rx.clone());
        let mut changed_rx = changed_rx;
        let mut recovered_ids = recovered_ids;
        async move {
            loop {
                tokio::select! {
                    Some(auth_name) = changed_rx.recv() => wake(&|i| i.spec.authority_ref == auth_name),
                    Some(()) = relisted_rx.recv() => wake(&|i| {
                        !secrets.contains(&i.namespace().unwrap_or_default(), &identity::secret_name(i))
                    }),
                    Some(()) = recovered_ids.recv() => {
                        for key in ctx.failed_since("identity/") {
                            if let Some((ns, name)) = key.split_once('/') {
                                ctx.queue.push(ns, name);
                            }
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                    else => break,
                }
            }
        }
    };
    let timers = {
        let (queue, mut stop) = (queue.clone(), stop_rx.clone());
        async move {
            tokio::select! {
                _ = queue.run_timers() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    };
    let stores = Arc::new(identity::Stores { namespaces: ns_store.clone(), secrets: secret_cache.clone() });
    let identity_controller = Controller::for_stream(id_stream, id_store.clone())
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
        .watches_stream(namespaces, move |ns: PartialObjectMeta<Namespace>| {
            let ns = ns.name_any();
            wake(&|i| i.namespace().as_deref() == Some(ns.as_str()));
            None::<ObjectRef<MtlsIdentity>>
        })
        .reconcile_on(queue.clone().handed_out({
            let ids = id_store.clone();
            move |r| ids.get(r).is_some()
        }))
        // The queue bounds what the controller holds; `ctx.reconcile_slots` bounds API work.
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .graceful_shutdown_on(stopped())
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

    // Ready once every cache has its first full list.
    let readiness = {
        let api_health = api_health.clone();
        let (a, i, n) = (auth_store.clone(), id_store.clone(), ns_store.clone());
        let (s, c, b) = (secret_cache.clone(), cm_store.clone(), bundle_ns_store.clone());
        async move {
            s.wait_until_ready().await;
            if a.wait_until_ready().await.is_ok()
                && i.wait_until_ready().await.is_ok()
                && n.wait_until_ready().await.is_ok()
                && c.wait_until_ready().await.is_ok()
                && b.wait_until_ready().await.is_ok()
            {
                api_health.set_synced(true);
                tracing::info!("caches synced; ready");
            }
        }
    };

    tracing::info!(namespace = %config.namespace, "starting controllers");
    // Leading: keep the Lease; losing it stops the controllers (the process then exits with an
    // error and restarts as a standby).
    let lost = Arc::new(AtomicBool::new(false));
    let leadership = {
        let (lost, stop_tx, client) = (lost.clone(), stop_tx.clone(), client.clone());
        let leader = leader.clone();
        let mut stop = stop_rx.clone();
        async move {
            let Some(cfg) = leader else { return };
            tokio::select! {
                _ = leader::hold(&client, &cfg) => {
                    lost.store(true, Ordering::Relaxed);
                    let _ = stop_tx.send(true);
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    };
    // Once asked to stop, in-flight reconciles get a few seconds to finish; then the process
    // exits regardless (well inside the default 30 s termination grace period).
    let controllers =
        async { tokio::join!(authority_controller, identity_controller, bulk_wakeups, timers, readiness, leadership) };
    let deadline = {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!("in-flight reconciles did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    };
    tokio::select! {
        _ = controllers => {}
        _ = deadline => {}
    }
    api_health.set_synced(false);
    if let (Some(cfg), false) = (&leader, lost.load(Ordering::Relaxed)) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), leader::release(&client, cfg)).await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("lost leadership of Lease {}/{}", config.namespace, config.leader_election.unwrap_or_default());
    }
    tracing::info!("stopped");
    Ok(())
}

/// Drops what the operator never reads from cached objects: managed fields and kubectl's
/// last-applied copy can be most of an object's size.
fn slim<K: kube::Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The identity cache keeps what the identity controller reads: spec, status, and of the metadata
/// name, namespace, uid, generation, resourceVersion and deletionTimestamp. Labels, annotations,
/// owner references and timestamps set by users or their tools are not kept (the Secret's labels
/// and annotations come from `spec.secretTemplate`).
fn slim_identity(id: &mut MtlsIdentity) {
    let m = &mut id.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.annotations = None;
    m.owner_references = None;
    m.creation_timestamp = None;
    m.generate_name = None;
    m.self_link = None;
}

/// The work queue lets the controller hold this many identity reconciles per reconcile slot
/// (`--concurrency`): enough that a slot never waits for the queue, few enough that the controller
/// keeps little and a backlog stays in the queue's order.
const IN_CONTROLLER_PER_SLOT: usize = 2;

/// Every watch: ended by the API server after a bounded lifetime and resumed (see
/// `apihealth::WATCH_LIFETIME_SECS`), with bookmarks.
fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(crate::controllers::apihealth::WATCH_LIFETIME_SECS)
}

/// A watch that relists by itself after a failure and holds readiness until it has (see
/// `ApiHealth::resilient`), its objects passed through `slim` before they are cached.
fn watch<K>(
    health: &Arc<ApiHealth>,
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
) -> impl futures::Stream<Item = crate::controllers::apihealth::WatchItem<K>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    health.resilient(name, move || watcher(api.clone(), config.clone()).modify(slim))
}

/// On each recovery signal, the objects (of the given key prefix) that have failed since their
/// last success: they are retried now rather than after their backoff.
fn failed_since_outage<K>(
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
fn urgent_first(
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
fn departures<K>(
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

/// Resolves on SIGTERM (what kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
