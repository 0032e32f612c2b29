//! The process: the `run` subcommand's start-up, in order — connect and serve the probes, check
//! the CRDs, watch the API's health, stop on a signal, stand by for leadership, start both
//! controllers with their caches, become ready when the caches are synced, keep the Lease, and
//! shut down within a grace period. Each step is a function below or a module of its own.

mod authorities;
pub mod http;
mod identities;
pub mod leader;
pub mod shutdown;
mod watches;

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use self::{http::Health, shutdown::Stop};
use crate::{
    api::{MtlsAuthority, MtlsIdentity},
    controllers::{Context, MANAGER, apihealth::ApiHealth, metrics::Metrics, queue::WorkQueue, ratelimit::RateLimiter},
};

/// How long in-flight reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

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
    let api_health = Arc::new(ApiHealth::new(ready.clone(), metrics.clone()));
    let stop = Stop::default();
    let server = http::serve(config.listen, Health { ready, metrics: metrics.clone() }, stop.requested()).await?;
    check_crds(&client).await?;
    let recovered = monitor_api(&api_health, &client, &stop);
    shutdown::stop_on_signal(&stop, config.exit_on_stdin_close);

    let leader = leader_config(&config);
    if let Some(cfg) = &leader
        && !stand_by(&client, cfg, &api_health, &stop).await
    {
        let _ = server.await;
        return Ok(());
    }

    let (ctx, authority_changed) = context(&client, &api_health, &metrics, &config);
    let w = Wiring { client: client.clone(), api_health: api_health.clone(), ctx, stop: stop.clone() };
    let secrets = Arc::default();
    let authorities = authorities::start(&w, &config.namespace, Arc::clone(&secrets), recovered.authorities);
    let identities = identities::start(&w, secrets, authority_changed, recovered.identities);
    let synced = ready_when_synced(api_health.clone(), [authorities.synced, identities.synced]);

    tracing::info!(namespace = %config.namespace, "starting controllers");
    metrics.leader.set(1);
    let lost = Arc::new(AtomicBool::new(false));
    let leadership = keep_leading(client.clone(), leader.clone(), lost.clone(), stop.clone());
    run_until_stopped(
        async {
            tokio::join!(authorities.run, identities.run, synced, leadership);
        },
        &stop,
    )
    .await;

    api_health.set_synced(false);
    metrics.leader.set(0);
    if let (Some(cfg), false) = (&leader, lost.load(Ordering::Relaxed)) {
        let _ = tokio::time::timeout(Duration::from_secs(5), leader::release(&client, cfg)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("lost leadership of Lease {}/{}", config.namespace, config.leader_election.unwrap_or_default());
    }
    tracing::info!("stopped");
    Ok(())
}

/// What both controllers' wiring needs.
struct Wiring {
    client: Client,
    api_health: Arc<ApiHealth>,
    ctx: Arc<Context>,
    stop: Stop,
}

/// A controller with its watches, ready to run, and a future that resolves once its caches hold
/// their first full list (false if a cache was dropped first).
struct Started {
    run: BoxFuture<'static, ()>,
    synced: BoxFuture<'static, bool>,
}

/// One signal per controller each time the API answers again after an outage.
struct Recovered {
    identities: UnboundedReceiver<()>,
    authorities: UnboundedReceiver<()>,
}

/// Watches the API's own readiness (`ApiHealth::monitor`) until the process stops; after an
/// outage, everything that failed meanwhile is retried at once.
fn monitor_api(api_health: &Arc<ApiHealth>, client: &Client, stop: &Stop) -> Recovered {
    let (ids_tx, identities) = unbounded_channel();
    let (auths_tx, authorities) = unbounded_channel();
    let (api_health, client, stopped) = (api_health.clone(), client.clone(), stop.requested());
    tokio::spawn(async move {
        let recovered = move || {
            let _ = ids_tx.send(());
            let _ = auths_tx.send(());
        };
        tokio::select! {
            _ = api_health.monitor(client, recovered) => {}
            _ = stopped => {}
        }
    });
    Recovered { identities, authorities }
}

/// The Lease to hold, if leader election is on; this replica is named after its pod.
fn leader_config(config: &Config) -> Option<leader::LeaderConfig> {
    config.leader_election.as_ref().map(|lease| {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "mtls-operator".into()), std::process::id())
        });
        leader::LeaderConfig::new(&config.namespace, lease, identity)
    })
}

/// With leader election, stands by (healthy and ready) until this replica holds the Lease.
/// False when asked to stop first.
async fn stand_by(client: &Client, cfg: &leader::LeaderConfig, api_health: &ApiHealth, stop: &Stop) -> bool {
    api_health.set_synced(true);
    let leading = tokio::select! {
        _ = leader::acquire(client, cfg) => true,
        _ = stop.requested() => false,
    };
    api_health.set_synced(false);
    leading
}

/// The work queue lets the controller hold this many identity reconciles per reconcile slot
/// (`--concurrency`): enough that a slot never waits for the queue, few enough that the controller
/// keeps little and a backlog stays in the queue's order.
const IN_CONTROLLER_PER_SLOT: usize = 2;

/// The controllers' shared context; also returns where authority changes are announced (the
/// identity wiring wakes that authority's identities).
fn context(
    client: &Client,
    api_health: &Arc<ApiHealth>,
    metrics: &Arc<Metrics>,
    config: &Config,
) -> (Arc<Context>, UnboundedReceiver<String>) {
    let (changed_tx, changed_rx) = unbounded_channel::<String>();
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let slots = usize::from(config.concurrency.max(1));
    let ctx = Arc::new(Context {
        client: client.clone(),
        api: api_health.clone(),
        namespace: config.namespace.clone(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        metrics: metrics.clone(),
        limiter: RateLimiter::new(config.issuance_rate, config.issuance_burst),
        reconcile_slots: tokio::sync::Semaphore::new(slots),
        queue: WorkQueue::new(IN_CONTROLLER_PER_SLOT * slots),
        authorities: RwLock::default(),
        authority_changed: changed_tx,
        failures: RwLock::default(),
        reported: RwLock::default(),
        reissue_limiters: RwLock::default(),
        bundle_truststores: Default::default(),
        written_status: RwLock::default(),
        written_secrets: Default::default(),
    });
    (ctx, changed_rx)
}

/// Ready once every cache has its first full list.
async fn ready_when_synced(api_health: Arc<ApiHealth>, synced: [BoxFuture<'static, bool>; 2]) {
    let [a, b] = synced;
    if a.await && b.await {
        api_health.set_synced(true);
        tracing::info!("caches synced; ready");
    }
}

/// Leading: keeps the Lease; losing it stops the controllers (the process then exits with an
/// error and restarts as a standby).
async fn keep_leading(client: Client, leader: Option<leader::LeaderConfig>, lost: Arc<AtomicBool>, stop: Stop) {
    let Some(cfg) = leader else { return };
    tokio::select! {
        _ = leader::hold(&client, &cfg) => {
            lost.store(true, Ordering::Relaxed);
            stop.request();
        }
        _ = stop.requested() => {}
    }
}

/// Runs `controllers` until they end; once a stop is asked for, in-flight reconciles get
/// `SHUTDOWN_GRACE` to finish, and then the process goes on stopping regardless (well inside the
/// default 30 s termination grace period).
async fn run_until_stopped(controllers: impl std::future::Future<Output = ()>, stop: &Stop) {
    let deadline = {
        let stopped = stop.requested();
        async move {
            stopped.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!("in-flight reconciles did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    };
    tokio::select! {
        _ = controllers => {}
        _ = deadline => {}
    }
}
