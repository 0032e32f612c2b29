//! Staged CA rotation end to end, with emulated workloads: a kubelet emulator projects every
//! identity Secret and bundle ConfigMap into directories (atomic `..data` swap) after a random
//! delay, and 20 workloads in 3 namespaces reload their files and complete mutual-TLS handshakes
//! with each other (rustls, every ordered pair, SPIFFE IDs checked) the whole time.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{
    fixtures::{
        Side, TestAuthority, authority, create_identity, mtls_in_memory, patch_rotation, roots_from_pem, spiffe_of,
        stable_at, wait_authority_ready, wait_identity_ready, watch_phases,
    },
    harness::{self, TestNamespace},
    renewal::project_files,
};

/// Reads a consistent snapshot of a projected directory.
fn read_projected(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let target = std::fs::read_link(dir.join("..data")).ok()?;
    std::fs::read(dir.join(target).join(key)).ok()
}

/// Emulated kubelet: watches the authority's identity Secrets and bundle ConfigMaps and projects
/// each change after a random delay up to `max_delay`, never replacing a newer projection with
/// an older one.
struct Kubelet {
    root: PathBuf,
    projected: Arc<Mutex<HashMap<String, u64>>>,
}

impl Kubelet {
    fn start(
        client: &Client,
        root: &Path,
        authority: &str,
        cm_name: &str,
        max_delay: Duration,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let projected: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let selector = format!("mtls.io/authority={authority}");
        let schedule = {
            let (projected, stop) = (projected.clone(), stop.clone());
            move |key: String, rv: u64, dir: PathBuf, files: Vec<(&'static str, Vec<u8>)>| {
                let (projected, stop) = (projected.clone(), stop.clone());
                let delay = Duration::from_millis(rand::rng().random_range(0..=max_delay.as_millis() as u64));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut p = projected.lock().unwrap();
                    if p.get(&key).is_some_and(|old| *old >= rv) {
                        return;
                    }
                    project_files(&dir, &rv.to_string(), &files);
                    p.insert(key, rv);
                });
            }
        };
        let secrets =
            watcher(Api::<Secret>::all(client.clone()), watcher::Config::default().labels(&selector)).applied_objects();
        let (root_s, sched_s, stop_s) = (root.to_path_buf(), schedule.clone(), stop.clone());
        tokio::spawn(async move {
            let mut secrets = std::pin::pin!(secrets);
            while let Some(Ok(s)) = secrets.next().await {
                if stop_s.load(Ordering::Relaxed) {
                    break;
                }
                let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
                if s.labels().contains_key("mtls.io/ca-generation") {
                    continue;
                }
                let rv: u64 = s.resource_version().unwrap_or_default().parse().unwrap_or(0);
                let data = s.data.unwrap_or_default();
                let files =
                    ["tls.crt", "tls.key", "ca.crt"].map(|k| (k, data.get(k).map(|b| b.0.clone()).unwrap_or_default()));
                sched_s(
                    format!("secret/{ns}/{name}"),
                    rv,
                    root_s.join("secrets").join(&ns).join(&name),
                    files.to_vec(),
                );
            }
        });
        let cms = watcher(Api::<ConfigMap>::all(client.clone()), watcher::Config::default().labels(&selector))
            .applied_objects();
        let (root_c, cm_name) = (root.to_path_buf(), cm_name.to_string());
        tokio::spawn(async move {
            let mut cms = std::pin::pin!(cms);
            while let Some(Ok(c)) = cms.next().await {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if c.name_any() != cm_name {
                    continue;
                }
                let ns = c.namespace().unwrap_or_default();
                let rv: u64 = c.resource_version().unwrap_or_default().parse().unwrap_or(0);
                let ca = c.data.unwrap_or_default().get("ca.crt").cloned().unwrap_or_default().into_bytes();
                schedule(format!("configmap/{ns}"), rv, root_c.join("configmaps").join(&ns), vec![("ca.crt", ca)]);
            }
        });
        Kubelet { root: root.to_path_buf(), projected }
    }

    fn secret_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join("secrets").join(ns).join(name)
    }

    fn configmap_dir(&self, ns: &str) -> PathBuf {
        self.root.join("configmaps").join(ns)
    }

    fn projected(&self) -> usize {
        self.projected.lock().unwrap().len()
    }
}

#[derive(Clone)]
struct Workload {
    ns: String,
    name: String,
    spiffe: String,
    server_name: String,
}

/// What one workload has on disk right now: as a server it trusts its namespace's bundle
/// ConfigMap, as a client its Secret's `ca.crt`.
struct Files {
    as_server: Side,
    as_client: Side,
}

fn load(k: &Kubelet, w: &Workload) -> Option<Files> {
    let dir = k.secret_dir(&w.ns, &format!("{}-mtls", w.name));
    let target = dir.join(std::fs::read_link(dir.join("..data")).ok()?);
    let crt = std::fs::read(target.join("tls.crt")).ok()?;
    let key = std::fs::read(target.join("tls.key")).ok()?;
    let side = |roots| -> Option<Side> {
        Some(Side {
            chain: CertificateDer::pem_slice_iter(&crt).collect::<Result<Vec<_>, _>>().ok()?,
            key: PrivateKeyDer::from_pem_slice(&key).ok()?,
            roots,
        })
    };
    Some(Files {
        as_server: side(roots_from_pem(&read_projected(&k.configmap_dir(&w.ns), "ca.crt")?))?,
        as_client: side(roots_from_pem(&std::fs::read(target.join("ca.crt")).ok()?))?,
    })
}

/// One mutual-TLS handshake between two workloads, each checking the other's SPIFFE ID.
fn handshake(server: &Files, client: &Files, s: &Workload, c: &Workload) -> Result<(), String> {
    let (seen_client, seen_server) = mtls_in_memory(&server.as_server, &client.as_client, &s.server_name)
        .map_err(|e| format!("{} <-> {}: {e}", s.spiffe, c.spiffe))?;
    let (seen_client, seen_server) = (spiffe_of(&seen_client), spiffe_of(&seen_server));
    if seen_client != c.spiffe || seen_server != s.spiffe {
        return Err(format!("SPIFFE mismatch: {seen_client} / {seen_server}"));
    }
    Ok(())
}

struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// Every workload handshakes with every other, round after round, until `stop`.
fn start_traffic(kubelet: Arc<Kubelet>, workloads: Vec<Workload>, stop: Arc<AtomicBool>) -> Traffic {
    let t = Traffic { ok: Arc::default(), failed: Arc::default(), errors: Arc::default() };
    let (ok, failed, errors) = (t.ok.clone(), t.failed.clone(), t.errors.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let files: Vec<Option<Files>> = workloads.iter().map(|w| load(&kubelet, w)).collect();
            for (i, s) in workloads.iter().enumerate() {
                for (j, c) in workloads.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let (Some(sf), Some(cf)) = (&files[i], &files[j]) else { continue };
                    match handshake(sf, cf, s, c) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut errs = errors.lock().unwrap();
                            if errs.len() < 20 {
                                errs.push(e);
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
        }
    });
    t
}

struct Scenario {
    client: Client,
    auth: TestAuthority,
    _namespaces: Vec<TestNamespace>,
    kubelet: Arc<Kubelet>,
    stop: Arc<AtomicBool>,
    traffic: Traffic,
    _dir: tempfile::TempDir,
}

async fn scenario(prefix: &str, propagation: &str, kubelet_max: Duration, identities: usize) -> Scenario {
    harness::operator().await;
    let client = harness::client().await;
    let name = format!("{prefix}-{:06x}", harness::rand_u32() & 0xffffff);
    let cm_name = format!("{name}-bundle");
    let auth = TestAuthority::create(
        &client,
        prefix,
        serde_json::json!({
            "rotation": {"propagationDelay": propagation, "reissueRate": 20},
            "trustBundle": {"configMapName": cm_name, "namespaceSelector": {"matchLabels": {"mtls-e2e/rotation": name}}}
        }),
    )
    .await;
    wait_authority_ready(&client, &auth.name).await;
    let mut namespaces = vec![];
    for _ in 0..3 {
        let ns = TestNamespace::new(&client, prefix).await;
        harness::label_namespace(&client, &ns.name, "mtls-e2e/rotation", Some(&name)).await;
        namespaces.push(ns);
    }
    let mut workloads = vec![];
    for i in 0..identities {
        let ns = &namespaces[i % 3].name;
        let w = format!("w{i}");
        create_identity(&client, ns, &w, &auth.name, serde_json::json!({"serviceNames": [w]})).await;
        workloads.push(Workload {
            ns: ns.clone(),
            name: w.clone(),
            spiffe: format!("spiffe://cluster.local/ns/{ns}/sa/{w}"),
            server_name: format!("{w}.{ns}.svc"),
        });
    }
    for w in &workloads {
        wait_identity_ready(&client, &w.ns, &w.name).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = Arc::new(Kubelet::start(&client, dir.path(), &auth.name, &cm_name, kubelet_max, stop.clone()));
    let expected = identities + 3;
    harness::wait_for(Duration::from_secs(60), || {
        let k = kubelet.clone();
        async move { (k.projected() >= expected).then_some(()) }
    })
    .await
    .expect("every Secret and ConfigMap projected");
    let traffic = start_traffic(kubelet.clone(), workloads, stop.clone());
    Scenario { client, auth, _namespaces: namespaces, kubelet, stop, traffic, _dir: dir }
}

fn ca_fingerprint(client: &Client, authority: &str, generation: u32) -> impl std::future::Future<Output = String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), harness::OPERATOR_NAMESPACE);
    let name = format!("{authority}-ca-{generation}");
    async move {
        let s = api.get(&name).await.unwrap();
        let crt = String::from_utf8(s.data.unwrap()["tls.crt"].0.clone()).unwrap();
        mtls_operator::core::pki::fingerprint(&mtls_operator::core::pki::parse_pem_certs("ca", &crt).unwrap()[0])
    }
}

fn fingerprints(pem_text: &[u8]) -> Vec<String> {
    mtls_operator::core::pki::parse_pem_certs("bundle", std::str::from_utf8(pem_text).unwrap())
        .unwrap_or_default()
        .iter()
        .map(|d| mtls_operator::core::pki::fingerprint(d))
        .collect()
}

#[tokio::test]
async fn full_rotation_then_a_rollback_fail_no_handshake() {
    // Kubelet delivers within 5 s; the operator assumes at most 8 s.
    let s = scenario("rot", "8s", Duration::from_secs(5), 20).await;
    let name = s.auth.name.clone();

    // A -> B.
    patch_rotation(&s.client, &name, serde_json::json!({"trigger": "first"})).await;
    let phases = watch_phases(&s.client, &name, Duration::from_secs(180), stable_at(2)).await;
    for p in ["Preparing", "Propagating", "Reissuing", "Draining", "Retiring", "Stable"] {
        assert!(phases.contains(&p.to_string()), "phase {p} never observed: {phases:?}");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;

    // B -> C, rolled back half-way through re-issuing.
    patch_rotation(&s.client, &name, serde_json::json!({"trigger": "second"})).await;
    watch_phases(&s.client, &name, Duration::from_secs(120), |a| {
        let st = a.status.as_ref();
        st.and_then(|s| s.phase.as_deref()) == Some("Reissuing")
            && st.and_then(|s| s.rotation_progress.as_ref()).is_some_and(|p| p.reissued * 2 >= p.total)
    })
    .await;
    patch_rotation(&s.client, &name, serde_json::json!({"action": "Rollback"})).await;
    let phases = watch_phases(&s.client, &name, Duration::from_secs(180), stable_at(2)).await;
    let a = authority(&s.client, &name).await;
    assert!(a.status.as_ref().unwrap().rotation.as_ref().unwrap().rolled_back, "{phases:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    s.stop.store(true, Ordering::Relaxed);

    let (ok, failed) = (s.traffic.ok.load(Ordering::Relaxed), s.traffic.failed.load(Ordering::Relaxed));
    eprintln!("rotation A->B and B->C rolled back: {ok} handshakes, {failed} failed");
    assert_eq!(failed, 0, "failed handshakes during rotation: {:?}", s.traffic.errors.lock().unwrap());
    assert!(ok > 5000, "too few handshakes to mean anything: {ok}");

    // Every leaf is signed by B; A and C are in no bundle.
    let (a_fp, b_fp, c_fp) = (
        ca_fingerprint(&s.client, &name, 1).await,
        ca_fingerprint(&s.client, &name, 2).await,
        ca_fingerprint(&s.client, &name, 3).await,
    );
    let secrets = Api::<Secret>::all(s.client.clone())
        .list(&kube::api::ListParams::default().labels(&format!("mtls.io/authority={name},mtls.io/identity")))
        .await
        .unwrap();
    assert_eq!(secrets.items.len(), 20);
    for sec in &secrets.items {
        assert_eq!(sec.annotations().get("mtls.io/issuer-fingerprint"), Some(&b_fp), "{}", sec.name_any());
        let bundle = fingerprints(&sec.data.as_ref().unwrap()["ca.crt"].0);
        assert_eq!(bundle, vec![b_fp.clone()], "{}: bundle must hold only B", sec.name_any());
    }
    let cms = Api::<ConfigMap>::all(s.client.clone())
        .list(&kube::api::ListParams::default().labels(&format!("mtls.io/authority={name}")))
        .await
        .unwrap();
    for cm in cms.items.iter().filter(|c| !c.labels().contains_key("mtls.io/bundle-history")) {
        let bundle = fingerprints(cm.data.as_ref().unwrap()["ca.crt"].as_bytes());
        assert!(!bundle.contains(&a_fp) && !bundle.contains(&c_fp) && bundle.contains(&b_fp), "{}", cm.name_any());
    }
    // The retired CA's key is archived, not deleted.
    let archived = Api::<Secret>::namespaced(s.client.clone(), harness::OPERATOR_NAMESPACE)
        .get(&format!("{name}-ca-1"))
        .await
        .unwrap();
    assert_eq!(archived.labels().get("mtls.io/ca-state").map(String::as_str), Some("retired"));
    let _ = s.kubelet;
}

#[tokio::test]
async fn a_propagation_delay_shorter_than_kubelet_breaks_handshakes() {
    // The control: the operator assumes 1 s, kubelet takes up to 6 s. The harness must see it.
    let s = scenario("rotbad", "1s", Duration::from_secs(6), 9).await;
    let name = s.auth.name.clone();
    patch_rotation(&s.client, &name, serde_json::json!({"trigger": "go"})).await;
    watch_phases(&s.client, &name, Duration::from_secs(120), stable_at(2)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    s.stop.store(true, Ordering::Relaxed);
    let (ok, failed) = (s.traffic.ok.load(Ordering::Relaxed), s.traffic.failed.load(Ordering::Relaxed));
    eprintln!("propagationDelay below the kubelet delay: {ok} handshakes, {failed} failed");
    assert!(failed > 0, "the harness must detect failures when propagationDelay is too short ({ok} handshakes)");
}

#[tokio::test]
async fn a_new_ca_in_the_supplied_secret_is_rotated_in() {
    harness::operator().await;
    let client = harness::client().await;
    let now = jiff::Timestamp::now();
    let gen_ca = |cn: &str| {
        let (c, k) = mtls_operator::core::pki::generate_ca(
            cn,
            &[],
            mtls_operator::api::KeyAlgorithm::EcdsaP256,
            now,
            Duration::from_secs(86400 * 30),
        )
        .unwrap();
        (c, k.expose().to_string())
    };
    let secret_of = |name: &str, (crt, key): (String, String)| Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        data: Some(
            [("tls.crt", crt), ("tls.key", key)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let secret_name = format!("byo-{:06x}", harness::rand_u32() & 0xffffff);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), harness::OPERATOR_NAMESPACE);
    secrets.create(&Default::default(), &secret_of(&secret_name, gen_ca("first supplied"))).await.unwrap();
    let auth = TestAuthority::create(
        &client,
        "byo",
        serde_json::json!({"ca": {"secretRef": {"name": secret_name}}, "rotation": {"propagationDelay": "2s"}}),
    )
    .await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "byo").await;
    create_identity(&client, &ns.name, "app", &auth.name, serde_json::json!({})).await;
    wait_identity_ready(&client, &ns.name, "app").await;

    // The user puts a new CA into their Secret: the operator rotates to it.
    let second = gen_ca("second supplied");
    let fp2 =
        mtls_operator::core::pki::fingerprint(&mtls_operator::core::pki::parse_pem_certs("c", &second.0).unwrap()[0]);
    secrets
        .replace(&secret_name, &Default::default(), &{
            let mut s = secret_of(&secret_name, second);
            s.metadata.resource_version = secrets.get(&secret_name).await.unwrap().resource_version();
            s
        })
        .await
        .unwrap();
    let phases = watch_phases(&client, &auth.name, Duration::from_secs(120), stable_at(2)).await;
    assert!(phases.contains(&"Reissuing".to_string()), "{phases:?}");
    let a = authority(&client, &auth.name).await;
    let st = a.status.unwrap();
    assert_eq!(st.active_ca.unwrap().fingerprint, fp2);
    assert_eq!(st.rotation.unwrap().cause.as_deref(), Some("supplied-ca"));
    let s = Api::<Secret>::namespaced(client.clone(), &ns.name).get("app-mtls").await.unwrap();
    assert_eq!(s.annotations().get("mtls.io/issuer-fingerprint"), Some(&fp2));
    let _ = secrets.delete(&secret_name, &Default::default()).await;
}
