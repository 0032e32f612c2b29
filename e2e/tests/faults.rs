//! Reliability end to end, with real operator processes and a real control plane: the operator
//! killed with SIGKILL at random moments while 500 identities are issued and while CA rotations
//! run; kube-apiserver and etcd stopped and restarted under a running operator; Secrets edited by
//! someone else while the operator writes them. Afterwards everything has converged: nothing lost,
//! nothing doubled, one CA per generation, bundles that match the phase.
//!
//! The tests stop the shared API server and kill operators, so they run one at a time, in their
//! own test binary (cargo runs test binaries one after another).

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity, Phase};
use rand::Rng;

use harness::{OPERATOR_NAMESPACE, OperatorProcess};

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: they stop the API server and kill operators.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An authority, the namespaces its identities live in (all selected for its bundle), and a log
/// file for the operator processes. Deleted on drop.
struct Setup {
    client: Client,
    authority: String,
    namespaces: Vec<String>,
    log: PathBuf,
}

impl Setup {
    async fn new(prefix: &str, namespaces: usize, rotation: serde_json::Value) -> Self {
        let client = harness::client().await;
        harness::install_crds_and_operator_namespace(&client).await;
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let authority = format!("{prefix}-{:06x}", harness::rand_u32() & 0xffffff);
        let auth: MtlsAuthority = serde_json::from_value(serde_json::json!({
            "metadata": {"name": authority},
            "spec": {
                "rotation": rotation,
                "trustBundle": {
                    "configMapName": format!("{authority}-bundle"),
                    "namespaceSelector": {"matchLabels": {"mtls-e2e/faults": authority}}
                }
            }
        }))
        .unwrap();
        Api::<MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &auth).await.unwrap();
        let mut names = vec![];
        for i in 0..namespaces {
            let name = format!("{authority}-{i}");
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"mtls-e2e": "true", "mtls-e2e/faults": authority}}
            }))
            .unwrap();
            ns_api.create(&PostParams::default(), &ns).await.unwrap();
            names.push(name);
        }
        let log = harness::kubeconfig_path().parent().unwrap().join(format!("operator-{authority}.log"));
        eprintln!("operator log: {}", log.display());
        Setup { client, authority, namespaces: names, log }
    }

    fn operator(&self) -> OperatorProcess {
        OperatorProcess::start(&["--namespace", OPERATOR_NAMESPACE], &self.log, &[])
    }

    /// Creates identities `from..to`, spread over the namespaces, 16 at a time.
    async fn create_identities(&self, from: usize, to: usize) {
        let n = self.namespaces.len();
        futures::stream::iter(from..to)
            .for_each_concurrent(16, |i| {
                let api: Api<MtlsIdentity> = Api::namespaced(self.client.clone(), &self.namespaces[i % n]);
                let id: MtlsIdentity = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("id-{i}")},
                    "spec": {"authorityRef": self.authority, "serviceNames": [format!("svc-{i}")]}
                }))
                .unwrap();
                async move {
                    api.create(&PostParams::default(), &id).await.unwrap();
                }
            })
            .await;
    }

    async fn authority(&self) -> MtlsAuthority {
        Api::<MtlsAuthority>::all(self.client.clone()).get(&self.authority).await.unwrap()
    }

    /// Waits until everything has converged for `expected` identities, or fails with what is wrong.
    async fn wait_converged(&self, expected: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let problem = match self.converged(expected).await {
                Ok(()) => return,
                Err(p) => p,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "not converged after {timeout:?}: {problem}\noperator log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Everything the operator is responsible for, checked from the API: `Err` says what is not
    /// (yet) right.
    async fn converged(&self, expected: usize) -> Result<(), String> {
        let c = &self.client;
        let auth = self.authority().await;
        let st = auth.status.clone().unwrap_or_default();
        let rot = st.rotation.clone().ok_or("authority has no rotation state yet")?;
        if rot.phase != Phase::Stable || rot.to.is_some() {
            return Err(format!("authority is in phase {:?}", rot.phase));
        }
        let generation = rot.from;

        // Exactly one CA Secret per generation 1..=G, all different.
        let ca_secrets = Api::<Secret>::namespaced(c.clone(), OPERATOR_NAMESPACE)
            .list(&ListParams::default().labels(&format!("mtls.io/authority={}", self.authority)))
            .await
            .map_err(|e| e.to_string())?;
        let mut cas: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for s in ca_secrets.items.iter().filter(|s| s.labels().contains_key("mtls.io/ca-generation")) {
            let der =
                first_cert(&data(s, "tls.crt")).ok_or(format!("CA Secret {} holds no certificate", s.name_any()))?;
            if cas.values().any(|d| *d == der) {
                return Err(format!("CA Secret {} duplicates another generation's CA", s.name_any()));
            }
            cas.insert(s.name_any(), der);
        }
        let want: BTreeSet<String> = (1..=generation).map(|g| format!("{}-ca-{g}", self.authority)).collect();
        if cas.keys().cloned().collect::<BTreeSet<_>>() != want {
            return Err(format!("CA Secrets {:?}, expected exactly {want:?}", cas.keys().collect::<Vec<_>>()));
        }
        let active = cas[&format!("{}-ca-{generation}", self.authority)].clone();

        // Bundle history: unique versions, no more than kept.
        let history = Api::<ConfigMap>::namespaced(c.clone(), OPERATOR_NAMESPACE)
            .list(
                &ListParams::default().labels(&format!("mtls.io/authority={},mtls.io/bundle-history", self.authority)),
            )
            .await
            .map_err(|e| e.to_string())?;
        if history.items.len() > mtls_operator::controllers::publish::HISTORY_KEPT {
            return Err(format!("{} bundle history ConfigMaps kept", history.items.len()));
        }

        let mut identities = 0;
        for ns in &self.namespaces {
            // The bundle: exactly one ConfigMap, holding exactly the active CA (Stable).
            let cms = Api::<ConfigMap>::namespaced(c.clone(), ns)
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=mtls-operator"))
                .await
                .map_err(|e| e.to_string())?;
            let [cm] = cms.items.as_slice() else {
                return Err(format!("{ns}: {} managed ConfigMaps, expected 1", cms.items.len()));
            };
            let bundle = cm.data.clone().unwrap_or_default().get("ca.crt").cloned().unwrap_or_default();
            if certs(bundle.as_bytes()) != vec![active.clone()] {
                return Err(format!("{ns}: bundle does not hold exactly the active CA (generation {generation})"));
            }
            let ids = Api::<MtlsIdentity>::namespaced(c.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let secrets = Api::<Secret>::namespaced(c.clone(), ns)
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=mtls-operator"))
                .await
                .map_err(|e| e.to_string())?;
            if secrets.items.len() != ids.items.len() {
                return Err(format!(
                    "{ns}: {} managed Secrets for {} identities",
                    secrets.items.len(),
                    ids.items.len()
                ));
            }
            for id in &ids.items {
                let name = id.name_any();
                let st = id.status.clone().unwrap_or_default();
                let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                if !ready || st.observed_generation != id.metadata.generation {
                    return Err(format!("{ns}/{name} is not Ready: {:?}", st.conditions));
                }
                let owned: Vec<&Secret> = secrets
                    .items
                    .iter()
                    .filter(|s| s.owner_references().iter().any(|o| Some(&o.uid) == id.metadata.uid.as_ref()))
                    .collect();
                let [secret] = owned.as_slice() else {
                    return Err(format!("{ns}/{name} owns {} Secrets", owned.len()));
                };
                if secret.annotations().get("mtls.io/serial") != st.serial_number.as_ref() {
                    return Err(format!("{ns}/{name}: status serial differs from the Secret's"));
                }
                if data(secret, "ca.crt") != bundle.as_bytes() {
                    return Err(format!("{ns}/{name}: ca.crt differs from the published bundle"));
                }
                let leaf = first_cert(&data(secret, "tls.crt")).ok_or(format!("{ns}/{name}: no certificate"))?;
                signed_by_and_valid(&leaf, &active).map_err(|e| format!("{ns}/{name}: {e}"))?;
                identities += 1;
            }
        }
        if identities != expected {
            return Err(format!("{identities} identities found, expected {expected}"));
        }
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::env::var_os("MTLS_E2E_KEEP").is_some() {
            return;
        }
        let (name, namespaces) = (self.authority.clone(), self.namespaces.clone());
        harness::cleanup(move |client| async move {
            for ns in namespaces {
                let _ = Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::background()).await;
            }
            let _ = Api::<MtlsAuthority>::all(client.clone()).delete(&name, &DeleteParams::default()).await;
            let sel = ListParams::default().labels(&format!("mtls.io/authority={name}"));
            let _ = Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
                .delete_collection(&DeleteParams::default(), &sel)
                .await;
            let _ = Api::<ConfigMap>::namespaced(client, OPERATOR_NAMESPACE)
                .delete_collection(&DeleteParams::default(), &sel)
                .await;
        });
    }
}

fn data(s: &Secret, key: &str) -> Vec<u8> {
    s.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()).unwrap_or_default()
}

fn certs(pem_bytes: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(pem_bytes)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect()
}

fn first_cert(pem_bytes: &[u8]) -> Option<Vec<u8>> {
    certs(pem_bytes).into_iter().next()
}

/// The leaf's signature verifies with the CA's key, and it is valid now.
fn signed_by_and_valid(leaf: &[u8], ca: &[u8]) -> Result<(), String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca).map_err(|e| e.to_string())?;
    leaf.verify_signature(Some(ca.public_key())).map_err(|_| "leaf is not signed by the active CA".to_string())?;
    if !leaf.validity().is_valid() {
        return Err("leaf is not valid now".into());
    }
    Ok(())
}

/// Runs `e2e/cluster.sh <cmd>` for the cluster the tests use.
fn cluster(cmd: &str) {
    let dir = harness::kubeconfig_path().parent().unwrap().to_path_buf();
    let out = Command::new(harness::repo_root().join("e2e/cluster.sh"))
        .arg(cmd)
        .env("MTLS_E2E_DIR", &dir)
        .output()
        .expect("run e2e/cluster.sh");
    assert!(out.status.success(), "e2e/cluster.sh {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn no_panic(log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "the operator panicked; see {}", log.display());
}

async fn random_pause(min_ms: u64, max_ms: u64) {
    let ms = rand::rng().random_range(min_ms..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn sigkill_at_random_moments_during_issuance_and_rotation_loses_nothing() {
    let _serial = serial();
    let s = Setup::new("crash", 5, serde_json::json!({"propagationDelay": "3s", "reissueRate": 500})).await;
    let total = 500;
    let mut op = s.operator();
    let mut kills = 0;

    // While 500 identities are created and issued: 10 kills.
    let creating = s.create_identities(0, total);
    let killing = async {
        for _ in 0..10 {
            random_pause(200, 1200).await;
            op.kill9();
            kills += 1;
            op = s.operator();
        }
    };
    futures::join!(creating, killing);

    // While CA rotations run: 10 more kills, each at a moment the authority is mid-rotation.
    let auths: Api<MtlsAuthority> = Api::all(s.client.clone());
    let (mut rotations, mut in_rotation) = (0, 0);
    let mid_rotation = |a: &MtlsAuthority| {
        a.status.as_ref().and_then(|s| s.rotation.as_ref()).is_some_and(|r| r.phase != Phase::Stable || r.to.is_some())
    };
    let mut phases_killed = BTreeSet::new();
    while in_rotation < 10 {
        let a = s.authority().await;
        if !mid_rotation(&a) {
            rotations += 1;
            let trigger = format!("crash-{rotations}");
            let patch = serde_json::json!({"spec": {"rotation": {"trigger": trigger}}});
            auths.patch(&s.authority, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
            harness::wait_for(Duration::from_secs(60), || async {
                let r = s.authority().await.status?.rotation?;
                (r.observed_trigger.as_deref() == Some(trigger.as_str())).then_some(())
            })
            .await
            .expect("the operator takes up the rotation trigger");
            continue;
        }
        random_pause(300, 1500).await;
        let a = s.authority().await;
        if mid_rotation(&a) {
            phases_killed.insert(format!("{:?}", a.status.and_then(|s| s.rotation).map(|r| r.phase)));
            op.kill9();
            kills += 1;
            in_rotation += 1;
            op = s.operator();
        }
    }
    eprintln!("{kills} SIGKILLs ({in_rotation} mid-rotation, in phases {phases_killed:?}); {rotations} rotations");
    assert!(kills >= 20);

    // The last operator finishes the rotation and everything converges.
    s.wait_converged(total, Duration::from_secs(240)).await;
    assert!(op.alive(), "the last operator process is still running");
    no_panic(&s.log);
}

/// After the API server or etcd comes back, the operator is ready again and has caught up within
/// this long of the API serving again — whatever the outage's length: its watches relist at once
/// when the API answers (within the 2 s between its health checks), and the catch-up is the
/// issuance of what happened meanwhile. "Serving again" is when the test's own writes right after
/// the API server's `/readyz` said ok have completed: after a long etcd outage the API server's
/// etcd connections reconnect one by one on their own backoff, and writes can wait many seconds
/// past its `/readyz` (measured up to 15 s after 120 s outages). README, "Failures and recovery".
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// Waits until the API server's `/readyz` answers ok; returns that instant.
async fn api_server_ready(client: &Client) -> tokio::time::Instant {
    harness::wait_for(Duration::from_secs(120), || async move {
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        match tokio::time::timeout(Duration::from_secs(1), client.request_text(req)).await {
            Ok(Ok(body)) if body.trim() == "ok" => Some(tokio::time::Instant::now()),
            _ => None,
        }
    })
    .await
    .expect("the API server did not become ready again")
}

/// Asserts that the operator is ready and has converged on `expected` identities within
/// [`RECOVERY_BOUND`] of `served` (the API served the test's writes); prints how long it took,
/// and how long after the API server's `/readyz` (`api_back`) the writes completed.
async fn recovered_within_bound(
    s: &Setup,
    op: &OperatorProcess,
    expected: usize,
    api_back: tokio::time::Instant,
    served: tokio::time::Instant,
    what: &str,
) {
    let left = RECOVERY_BOUND.saturating_sub(served.elapsed());
    assert!(op.wait_readyz(200, left).await, "{what}: not ready {RECOVERY_BOUND:?} after the API served again");
    let left = RECOVERY_BOUND.saturating_sub(served.elapsed());
    s.wait_converged(expected, left).await;
    eprintln!(
        "{what}: ready and converged {:?} after the API served the writes ({:?} after its /readyz)",
        served.elapsed(),
        served - api_back
    );
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn api_server_and_etcd_outages_are_ridden_out_without_a_restart() {
    let _serial = serial();
    let s = Setup::new("outage", 2, serde_json::json!({"propagationDelay": "2s"})).await;
    let mut op = s.operator();
    assert!(op.wait_readyz(200, Duration::from_secs(30)).await, "operator ready");
    s.create_identities(0, 100).await;
    s.wait_converged(100, Duration::from_secs(90)).await;

    // The API server and etcd go away while 100 more identities are being issued.
    s.create_identities(100, 200).await;
    cluster("stop-apiserver");
    assert!(op.wait_readyz(503, Duration::from_secs(30)).await, "the operator reports not-ready while the API is down");
    assert_eq!(op.metric("mtls_operator_up").await, Some(0.0));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(op.alive(), "the operator keeps running while the API is down");
    cluster("start-apiserver");
    let back = api_server_ready(&s.client).await;
    // What happens right after it is back is seen too: new identities, a deleted Secret.
    s.create_identities(200, 210).await;
    Api::<Secret>::namespaced(s.client.clone(), &s.namespaces[0])
        .delete("id-0-mtls", &DeleteParams::default())
        .await
        .unwrap();
    let served = tokio::time::Instant::now();
    recovered_within_bound(&s, &op, 210, back, served, "API server and etcd restarted").await;

    // etcd alone: the API server answers but cannot store anything.
    cluster("stop-etcd");
    assert!(op.wait_readyz(503, Duration::from_secs(30)).await, "not-ready while etcd is down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster("start-etcd");
    let back = api_server_ready(&s.client).await;

    // It catches up with what happens afterwards: new identities, deleted Secrets.
    s.create_identities(210, 230).await;
    for i in 0..5 {
        let ns = &s.namespaces[i % s.namespaces.len()];
        Api::<Secret>::namespaced(s.client.clone(), ns)
            .delete(&format!("id-{i}-mtls"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let served = tokio::time::Instant::now();
    recovered_within_bound(&s, &op, 230, back, served, "etcd restarted").await;
    assert!(op.alive(), "the same operator process served throughout");
    no_panic(&s.log);
}

#[tokio::test]
#[allow(clippy::await_holding_lock)]
async fn update_conflicts_are_retried_until_the_secret_is_right() {
    let _serial = serial();
    let s = Setup::new("conflict", 1, serde_json::json!({})).await;
    let op = s.operator();
    assert!(op.wait_readyz(200, Duration::from_secs(30)).await, "operator ready");
    let n = 20;
    s.create_identities(0, n).await;
    s.wait_converged(n, Duration::from_secs(60)).await;

    // Damage each Secret (the operator reads it and writes it back, with its resourceVersion)
    // while another client keeps changing its labels: some of the operator's writes conflict.
    let ns = s.namespaces[0].clone();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &ns);
    let conflicts = "mtls_operator_reconcile_errors_total{reason=\"Conflict\"}";
    let mut touch = 0;
    let seen = harness::wait_for(Duration::from_secs(90), || {
        touch += 1;
        let (secrets, touch) = (secrets.clone(), touch);
        let op = &op;
        async move {
            futures::stream::iter(0..n)
                .for_each_concurrent(n, |i| {
                    let secrets = secrets.clone();
                    async move {
                        let name = format!("id-{i}-mtls");
                        let damage = serde_json::json!({"data": {"ca.crt": "dGFtcGVyZWQ="}});
                        let _ = secrets.patch(&name, &PatchParams::default(), &Patch::Merge(damage)).await;
                        for k in 0..4 {
                            let label =
                                serde_json::json!({"metadata": {"labels": {"e2e/touch": format!("{touch}-{k}")}}});
                            let _ = secrets.patch(&name, &PatchParams::default(), &Patch::Merge(label)).await;
                        }
                    }
                })
                .await;
            op.metric(conflicts).await.filter(|c| *c > 0.0)
        }
    })
    .await;
    let seen = seen.expect("no update conflict happened in 90 s of concurrent edits");
    eprintln!("{seen} update conflicts after {touch} rounds of concurrent edits");

    // Every Secret is repaired, and the other client's label survives the operator's writes.
    s.wait_converged(n, Duration::from_secs(60)).await;
    for i in 0..n {
        let secret = secrets.get(&format!("id-{i}-mtls")).await.unwrap();
        assert!(secret.labels().contains_key("e2e/touch"), "the operator dropped another writer's label");
    }
    no_panic(&s.log);
}
