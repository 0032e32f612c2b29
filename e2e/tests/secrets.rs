//! Secrets stay secret (DESIGN §5): a full run of the real operator with every crate at trace
//! level — first with text logs, then with JSON logs — leaves no private key material in its
//! log, in any Event (events.k8s.io/v1 and core/v1), in any MtlsIdentity or MtlsAuthority (status
//! included, every version seen), in the bundle ConfigMaps, in the public fields of identity
//! Secrets, or in /metrics.
//!
//! The run covers generated CAs (RSA, Ed25519, ECDSA), a supplied intermediate with its chain,
//! identities of all six key algorithms, a tampered Secret and its repair, renewals, a staged CA
//! rotation, and supplied CAs that are wrong in ways that make the operator talk about keys
//! (a mismatched key, a truncated key, a key pasted into `tls.crt`). Every private key that
//! exists at any point (watched as it is written, before anything is deleted) is then searched
//! for in every encoding a careless log line could use; a planted key proves the search works.

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace, Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};
use serde_json::{Value, json};

const NS: &str = harness::OPERATOR_NAMESPACE;
const WAIT: Duration = Duration::from_secs(60);
/// Every crate at trace, named explicitly so that nothing is left at a default level.
const TRACE_EVERYTHING: &str = "trace,mtls_operator=trace,kube=trace,kube_client=trace,kube_runtime=trace,\
hyper=trace,hyper_util=trace,h2=trace,tower=trace,tower_http=trace,rustls=trace,tokio_rustls=trace,hyper_rustls=trace";

#[path = "key_scan.rs"]
mod scan;

/// Everything the run wrote that must not hold a key, and every key that existed.
#[derive(Default)]
struct Seen {
    /// Secret value -> where it was seen (every version of every Secret holding a private key).
    keys: BTreeMap<String, String>,
    /// Source name -> serialized objects (every version seen).
    corpus: BTreeMap<&'static str, Vec<String>>,
    versions: HashSet<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn note_keys(seen: &Shared, s: &Secret) {
    let mut g = seen.lock().unwrap();
    for (k, v) in s.data.iter().flatten() {
        let text = String::from_utf8_lossy(&v.0);
        if text.contains("PRIVATE KEY") && !g.keys.contains_key(text.as_ref()) {
            let label = format!("Secret {}/{} [{k}]", s.namespace().unwrap_or_default(), s.name_any());
            g.keys.insert(text.into_owned(), label);
        }
    }
}

fn note_object<K: Resource + serde::Serialize>(seen: &Shared, source: &'static str, obj: &K) {
    let version = format!(
        "{source}/{}/{}",
        obj.meta().uid.clone().unwrap_or_default(),
        obj.resource_version().unwrap_or_default()
    );
    let mut g = seen.lock().unwrap();
    if g.versions.insert(version) {
        g.corpus.entry(source).or_default().push(serde_json::to_string(obj).unwrap());
    }
}

/// Watches every Secret (for keys) and everything that must stay clean, cluster-wide, for the
/// whole run: a key that is replaced a second later (renewal, rotation, repair) is still caught.
fn watch_all(client: &Client, seen: &Shared) {
    fn spawn<K, F>(client: &Client, f: F)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default,
        F: Fn(&K) + Send + 'static,
    {
        let stream =
            watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff().applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Ok(obj) = item {
                    f(&obj);
                }
            }
        });
    }
    let s = seen.clone();
    spawn::<Secret, _>(client, move |x| note_keys(&s, x));
    let s = seen.clone();
    spawn::<MtlsIdentity, _>(client, move |x| note_object(&s, "MtlsIdentity objects", x));
    let s = seen.clone();
    spawn::<MtlsAuthority, _>(client, move |x| note_object(&s, "MtlsAuthority objects", x));
    let s = seen.clone();
    spawn::<k8s_openapi::api::events::v1::Event, _>(client, move |x| note_object(&s, "Events (events.k8s.io/v1)", x));
    let s = seen.clone();
    spawn::<k8s_openapi::api::core::v1::Event, _>(client, move |x| note_object(&s, "Events (core/v1)", x));
    let s = seen.clone();
    spawn::<ConfigMap, _>(client, move |x| note_object(&s, "ConfigMaps", x));
}

/// The operator binary at trace level, its stdout and stderr in one file.
struct Operator {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Operator {
    async fn start(format: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = harness::kubeconfig_path().parent().map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let log = dir.join(format!("operator-secrets-{format}-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mtls-operator"))
            .args(["run", "--namespace", NS, "--log-format", format, "--exit-on-stdin-close"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", harness::kubeconfig_path())
            .env("RUST_LOG", TRACE_EVERYTHING)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the operator binary");
        let op = Operator { child, url: format!("http://127.0.0.1:{port}"), log };
        let ready = format!("{}/readyz", op.url);
        harness::wait_for(Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { harness::http_get(&ready).await.ok().filter(|(c, _)| *c == 200).map(|_| ()) }
        })
        .await
        .unwrap_or_else(|| panic!("operator ({format} logs) did not become ready; log: {}", op.log.display()));
        op
    }

    async fn metrics(&self) -> String {
        let (code, body) = harness::http_get(&format!("{}/metrics", self.url)).await.expect("GET /metrics");
        assert_eq!(code, 200);
        assert!(body.contains("mtls_operator_"), "no operator metrics:\n{body}");
        body
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the operator did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes what the test created (authorities with their CA Secrets, Secrets, namespaces).
#[derive(Default)]
struct Cleanup {
    authorities: Vec<String>,
    secrets: Vec<String>,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("MTLS_E2E_KEEP").is_some() {
            return;
        }
        let (auths, secrets, namespaces) = (
            std::mem::take(&mut self.authorities),
            std::mem::take(&mut self.secrets),
            std::mem::take(&mut self.namespaces),
        );
        harness::cleanup(move |client| async move {
            let api: Api<Secret> = Api::namespaced(client.clone(), NS);
            for a in &auths {
                let _ = Api::<MtlsAuthority>::all(client.clone()).delete(a, &DeleteParams::default()).await;
                let lp = ListParams::default().labels(&format!("mtls.io/authority={a}"));
                let _ = api.delete_collection(&DeleteParams::default(), &lp).await;
            }
            for s in &secrets {
                let _ = api.delete(s, &DeleteParams::default()).await;
            }
            for n in &namespaces {
                let _ = Api::<Namespace>::all(client.clone()).delete(n, &DeleteParams::background()).await;
            }
        });
    }
}

/// An authority that publishes its bundle only into this run's namespace.
async fn create_authority(client: &Client, cleanup: &mut Cleanup, run: &str, suffix: &str, mut spec: Value) -> String {
    let name = format!("sec-{run}-{suffix}");
    let selector = json!({"matchLabels": {"mtls-e2e/secrets": run}});
    spec["trustBundle"] = json!({"configMapName": format!("{name}-bundle"), "namespaceSelector": selector});
    let obj: MtlsAuthority = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &obj).await.unwrap();
    cleanup.authorities.push(name.clone());
    name
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

fn ready(obj: &Value) -> Option<(String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

async fn authority_json(client: &Client, name: &str) -> Value {
    serde_json::to_value(Api::<MtlsAuthority>::all(client.clone()).get(name).await.unwrap()).unwrap()
}

async fn wait_authority(client: &Client, name: &str, status: &str, reason: &str) {
    let ok = harness::wait_for(WAIT, || async move {
        let a = authority_json(client, name).await;
        (ready(&a) == Some((status.into(), reason.into()))).then_some(())
    })
    .await;
    if ok.is_none() {
        panic!(
            "authority {name} never reported Ready={status}/{reason}: {}",
            authority_json(client, name).await["status"]
        );
    }
}

async fn wait_identity_ready(client: &Client, ns: &str, name: &str) -> Value {
    let api = &Api::<MtlsIdentity>::namespaced(client.clone(), ns);
    let found = harness::wait_for(WAIT, || async move {
        let i = serde_json::to_value(api.get(name).await.ok()?).unwrap();
        (ready(&i)?.0 == "True" && i["status"]["observedGeneration"] == i["metadata"]["generation"]).then_some(i)
    })
    .await;
    match found {
        Some(i) => i,
        None => panic!("identity {ns}/{name} did not become Ready: {:?}", api.get(name).await.map(|i| i.status)),
    }
}

async fn serial(client: &Client, ns: &str, secret: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(secret).await.ok()??;
    s.annotations().get("mtls.io/serial").cloned()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

#[tokio::test]
async fn no_private_key_material_in_logs_events_status_or_metrics() {
    let began = Instant::now();
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ =
        nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap()).await;
    let seen: Shared = Arc::default();
    watch_all(&client, &seen);
    let mut cleanup = Cleanup::default();
    let run = format!("{:06x}", harness::rand_u32() & 0xffffff);
    let ns = format!("secrets-{run}");
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"mtls-e2e/secrets": run}}})).unwrap(),
    )
    .await
    .unwrap();
    cleanup.namespaces.push(ns.clone());
    let auths: Api<MtlsAuthority> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let c = &mut cleanup;

    // ---- Part 1: text logs ----
    let mut op = Operator::start("text").await;
    let rsa = create_authority(&client, c, &run, "rsa", json!({"ca": {"generate": {"algorithm": "RSA-2048"}}})).await;
    let ed = create_authority(&client, c, &run, "ed", json!({"ca": {"generate": {"algorithm": "Ed25519"}}})).await;
    let p384 = create_authority(
        &client,
        c,
        &run,
        "p384",
        json!({"ca": {"generate": {"algorithm": "ECDSA-P384"}}, "leaf": {"minDuration": "1m"},
               "rotation": {"propagationDelay": "1s", "reissueRate": 50}}),
    )
    .await;

    // A supplied intermediate (SEC1 key) under an offline root, with its chain.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ca.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        .unwrap();
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root.key"]);
    openssl(d, &["req", "-x509", "-key", "root.key", "-out", "root.crt", "-days", "30", "-subj", "/CN=Secrets Root"]);
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "int.key"]);
    openssl(d, &["req", "-new", "-key", "int.key", "-out", "int.csr", "-subj", "/CN=Secrets Intermediate"]);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ca.ext",
            "-out",
            "int.crt",
        ],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "stray-rsa.key", "2048"]);
    let (root, int, int_key, stray_rsa) =
        (read(d, "root.crt"), read(d, "int.crt"), read(d, "int.key"), read(d, "stray-rsa.key"));
    assert!(int_key.contains("BEGIN EC PRIVATE KEY") && stray_rsa.contains("BEGIN RSA PRIVATE KEY"));
    let supplied = format!("sec-{run}-supplied");
    secrets
        .create(
            &PostParams::default(),
            &secret(&supplied, &[("tls.crt", &format!("{int}{root}")), ("tls.key", &int_key), ("ca.crt", &root)]),
        )
        .await
        .unwrap();
    c.secrets.push(supplied.clone());
    let sup = create_authority(&client, c, &run, "sup", json!({"ca": {"secretRef": {"name": supplied}}})).await;
    for a in [&rsa, &ed, &p384, &sup] {
        wait_authority(&client, a, "True", "CaReady").await;
    }

    // Identities of all six key algorithms, over all four CAs.
    let algs = ["ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-2048", "RSA-3072", "RSA-4096"];
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns);
    for (i, (alg, auth)) in algs.iter().zip([&rsa, &ed, &sup, &p384, &rsa, &ed]).enumerate() {
        let obj: MtlsIdentity = serde_json::from_value(json!({"metadata": {"name": format!("id{i}")},
            "spec": {"authorityRef": auth, "serviceNames": [format!("id{i}")], "privateKey": {"algorithm": alg}}}))
        .unwrap();
        ids.create(&PostParams::default(), &obj).await.unwrap();
    }
    for i in 0..algs.len() {
        wait_identity_ready(&client, &ns, &format!("id{i}")).await;
    }
    // Keystores and the extra files (issue 23): the key in more encodings, under a password that
    // must not appear anywhere either. On the authority that rotates in part 2.
    let ks_password = format!("pw-{run}-Zq9vT3kW");
    let pw_secret = secret("ks-password", &[("password", &ks_password)]);
    Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &pw_secret).await.unwrap();
    let pw_ref = json!({"name": "ks-password", "key": "password"});
    for (name, alg, profile) in [("ks0", "RSA-2048", "Modern2023"), ("ks1", "Ed25519", "LegacyDES")] {
        let obj: MtlsIdentity = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"authorityRef": p384, "privateKey": {"algorithm": alg},
                     "keystores": {"pkcs12": {"create": true, "passwordSecretRef": pw_ref, "profile": profile},
                                   "jks": {"create": true, "passwordSecretRef": pw_ref}},
                     "additionalOutputFormats": [{"type": "CombinedPEM"}, {"type": "DER"}]}}))
        .unwrap();
        ids.create(&PostParams::default(), &obj).await.unwrap();
    }
    for name in ["ks0", "ks1"] {
        wait_identity_ready(&client, &ns, name).await;
    }

    // Supplied CAs that are wrong in ways that make the operator talk about keys.
    let (good_crt, good_key) = mtls_operator::core::pki::generate_ca(
        "bad inputs",
        &[],
        mtls_operator::api::KeyAlgorithm::EcdsaP256,
        jiff::Timestamp::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let good_key = good_key.expose().to_string();
    let mut lines: Vec<&str> = good_key.lines().collect();
    lines.insert(2, ""); // a stray blank line, as copy and paste leaves them
    let key_with_blank_line = lines.join("\n") + "\n";
    let bad = [
        ("mismatch", vec![("tls.crt", good_crt.as_str()), ("tls.key", stray_rsa.as_str())], "CaKeyMismatch"),
        (
            "truncated",
            vec![("tls.crt", good_crt.as_str()), ("tls.key", &good_key[..good_key.len() / 2])],
            "CaInvalidKey",
        ),
        ("keyincrt", vec![("tls.crt", good_key.as_str()), ("tls.key", good_key.as_str())], "CaInvalidPem"),
        ("keyincrt2", vec![("tls.crt", key_with_blank_line.as_str()), ("tls.key", good_key.as_str())], "CaInvalidPem"),
    ];
    let mut bad_authorities = vec![];
    for (suffix, data, reason) in &bad {
        let name = format!("sec-{run}-{suffix}-src");
        secrets.create(&PostParams::default(), &secret(&name, data)).await.unwrap();
        c.secrets.push(name.clone());
        let a = create_authority(&client, c, &run, suffix, json!({"ca": {"secretRef": {"name": name}}})).await;
        bad_authorities.push((a, *reason));
    }
    // The whole key is planted by us too: a fragment of it is as bad as the key.
    seen.lock().unwrap().keys.insert(good_key.clone(), "the bad-input CA key (whole)".into());
    for (a, reason) in &bad_authorities {
        wait_authority(&client, a, "False", reason).await;
    }

    // Tampering: a foreign key in tls.key and the identity's own key pasted into tls.crt
    // (re-issued), then a removed ca.crt (repaired).
    let id_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let before = serial(&client, &ns, "id0-mtls").await.unwrap();
    let own_key =
        String::from_utf8(id_secrets.get("id0-mtls").await.unwrap().data.unwrap()["tls.key"].0.clone()).unwrap();
    let (foreign, own) = (ByteString(stray_rsa.clone().into_bytes()), ByteString(own_key.into_bytes()));
    let patch = json!({"data": {"tls.key": foreign, "tls.crt": own}});
    id_secrets.patch("id0-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let (cl, nsr, ids_r, before_r) = (&client, &ns, &id_secrets, &before);
    harness::wait_for(WAIT, || async move {
        let now = serial(cl, nsr, "id0-mtls").await?;
        let s = ids_r.get("id0-mtls").await.ok()?;
        let crt = String::from_utf8(s.data.as_ref()?.get("tls.crt")?.0.clone()).ok()?;
        (&now != before_r && crt.contains("BEGIN CERTIFICATE")).then_some(())
    })
    .await
    .expect("tampered Secret re-issued");
    let patch = json!({"data": {"ca.crt": null}});
    id_secrets.patch("id1-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    harness::wait_for(
        WAIT,
        || async move { ids_r.get("id1-mtls").await.ok()?.data?.contains_key("ca.crt").then_some(()) },
    )
    .await
    .expect("Secret without ca.crt repaired");
    let mut metrics = vec![op.metrics().await];
    op.stop();
    let text_log = op.log.clone();
    eprintln!("part 1 (text logs) done after {:.0?}", began.elapsed());

    // ---- Part 2: JSON logs; the restart resyncs everything, then renewals and a rotation ----
    let mut op = Operator::start("json").await;
    for (i, alg) in ["ECDSA-P256", "Ed25519"].iter().enumerate() {
        let obj: MtlsIdentity = serde_json::from_value(json!({"metadata": {"name": format!("renew{i}")},
            "spec": {"authorityRef": p384, "duration": "1m", "renewBefore": "50s", "privateKey": {"algorithm": alg}}}))
        .unwrap();
        ids.create(&PostParams::default(), &obj).await.unwrap();
    }
    let mut serials: Vec<Vec<String>> = vec![vec![]; 2];
    for i in 0..2 {
        wait_identity_ready(&client, &ns, &format!("renew{i}")).await;
    }
    auths
        .patch(&p384, &PatchParams::default(), &Patch::Merge(json!({"spec": {"rotation": {"trigger": "secrets"}}})))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (i, list) in serials.iter_mut().enumerate() {
            if let Some(s) = serial(&client, &ns, &format!("renew{i}-mtls")).await
                && list.last() != Some(&s)
            {
                list.push(s);
            }
        }
        let a = authority_json(&client, &p384).await;
        let rotated = a["status"]["rotation"]["phase"] == "Stable" && a["status"]["rotation"]["from"] == 2;
        if rotated && serials.iter().all(|l| l.len() >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation or renewals in time: serials {serials:?}, status {}",
            a["status"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..algs.len() {
        wait_identity_ready(&client, &ns, &format!("id{i}")).await;
    }
    metrics.push(op.metrics().await);
    op.stop();
    let json_log = op.log.clone();
    eprintln!("part 2 (JSON logs, renewals, rotation) done after {:.0?}", began.elapsed());

    // ---- Collect every key and everything that must not hold one ----
    for s in Api::<Secret>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_keys(&seen, &s);
    }
    for a in auths.list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "MtlsAuthority objects", &a);
    }
    for i in Api::<MtlsIdentity>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "MtlsIdentity objects", &i);
    }
    for e in Api::<k8s_openapi::api::events::v1::Event>::all(client.clone()).list(&ListParams::default()).await.unwrap()
    {
        note_object(&seen, "Events (events.k8s.io/v1)", &e);
    }
    for e in Api::<k8s_openapi::api::core::v1::Event>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "Events (core/v1)", &e);
    }
    let mut sources: Vec<(String, Vec<u8>)> = vec![
        (format!("operator log, text ({})", text_log.display()), std::fs::read(&text_log).unwrap()),
        (format!("operator log, JSON ({})", json_log.display()), std::fs::read(&json_log).unwrap()),
        ("/metrics".into(), metrics.join("\n").into_bytes()),
    ];
    // Identity Secrets as workloads see them, minus the files that are the key (tls.key,
    // tls-combined.pem, key.der): tls.crt, ca.crt, the encrypted keystores, metadata. The
    // keystores are also searched as the binary files they are; key.der proves that search.
    let mut public = vec![];
    let (mut binaries, mut der_files) = (vec![], vec![]);
    for s in Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap() {
        let mut s = s;
        s.metadata.managed_fields = None;
        let secret_name = s.name_any();
        if let Some(data) = s.data.as_mut() {
            for k in ["tls.key", "tls-combined.pem"] {
                data.remove(k);
            }
            if let Some(der) = data.remove("key.der") {
                der_files.push((format!("{secret_name}/key.der"), der.0));
            }
            for k in ["keystore.p12", "truststore.p12", "keystore.jks", "truststore.jks"] {
                if let Some(b) = data.get(k) {
                    binaries.push((format!("{secret_name} [{k}]"), b.0.clone()));
                }
            }
        }
        public.push(serde_json::to_string(&s).unwrap());
        for k in ["tls.crt", "ca.crt"] {
            public.push(
                String::from_utf8_lossy(
                    &s.data.as_ref().and_then(|d| d.get(k)).map(|b| b.0.clone()).unwrap_or_default(),
                )
                .into_owned(),
            );
        }
    }
    sources.push(("identity Secrets without tls.key".into(), public.join("\n").into_bytes()));
    let (keys, corpus) = {
        let g = seen.lock().unwrap();
        (g.keys.clone(), g.corpus.clone())
    };
    for (name, objs) in corpus {
        sources.push((name.to_string(), objs.join("\n").into_bytes()));
    }
    let keys: Vec<scan::Key> = keys.iter().flat_map(|(text, label)| scan::keys_in(label, text)).collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &keys {
        *kinds.entry(k.kind).or_default() += 1;
    }
    eprintln!("{} private keys collected by kind {kinds:?}", keys.len());
    // 5 CA keys (3 generated, the rotated-in one, the supplied intermediate), 4 bad-input keys,
    // 8 identities' current keys, and the keys they replaced (tamper, rotation, renewals).
    assert!(keys.len() >= 20, "too few keys collected: {}", keys.len());
    for kind in ["EC", "Ed25519", "RSA"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) >= 2, "no {kind} keys parsed: {kinds:?}");
    }
    let index = scan::Index::new(keys);
    eprintln!("{} needles of {} characters", index.needles, scan::WINDOW);
    assert_eq!(binaries.len(), 8, "the keystore identities' four stores each: {binaries:?}");
    assert_eq!(der_files.len(), 2);
    // Self-check of the binary search: each key.der holds its key.
    for (name, der) in &der_files {
        assert!(!index.scan_binary(name, der).is_empty(), "self-check: the binary search missed the key in {name}");
    }

    // ---- Self-check: the search finds a key planted in a copy of the log, in several forms ----
    let plant_keys: Vec<&scan::Key> =
        ["EC", "Ed25519", "RSA"].iter().map(|k| index.keys.iter().find(|x| x.kind == *k).unwrap()).collect();
    let (ec, edk, rsak) = (plant_keys[0], plant_keys[1], plant_keys[2]);
    let body_line = |k: &scan::Key| -> String {
        // A line from the middle: the first lines of an RSA key are its public modulus.
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", k.der.clone()));
        let lines: Vec<&str> = pem.lines().collect();
        lines[lines.len() / 2].to_string()
    };
    let plants = [
        // One line of a PEM body in a text log.
        format!("2026-01-01T00:00:00Z DEBUG reconcile: writing key={}\n", body_line(rsak)),
        // A Debug-printed PEM in a JSON log (escaped newlines, escaped again).
        format!(
            "{{\"fields\":{{\"secret\":\"{}\"}}}}\n",
            pem::encode(&pem::Pem::new("X", ec.der.clone())).lines().skip(1).collect::<Vec<_>>().join("\\\\n")
        ),
        // The 32-byte Ed25519 seed alone, hex-encoded.
        format!("seed {}\n", hex::encode(&edk.der[edk.secrets[0].0..edk.secrets[0].1])),
        // A Secret's JSON body: the PEM text base64-encoded, without the BEGIN line.
        format!("body {{\"data\":{{\"k\":\"{}\"}}}}\n", scan::base64(&ec.pem.as_bytes()[ec.body_start / 3 * 3 + 3..])),
        // Markers alone: a PEM header, and a Secret value's base64 that starts with one.
        "-----BEGIN EC PRIVATE KEY-----\n".to_string(),
        format!("{{\"tls.key\":\"{}\"}}\n", scan::base64(b"-----BEGIN RSA PRIVATE KEY-----\nMIIE")),
    ];
    let mut log_copy = std::fs::read(&text_log).unwrap();
    if !log_copy.ends_with(b"\n") {
        log_copy.push(b'\n');
    }
    let planted_from = log_copy.iter().filter(|c| **c == b'\n').count() + 1;
    for p in &plants {
        log_copy.extend_from_slice(p.as_bytes());
    }
    let scratch = tmp.path().join("planted.log");
    std::fs::write(&scratch, &log_copy).unwrap();
    let found = index.scan("planted copy", &std::fs::read(&scratch).unwrap());
    let planted: Vec<&scan::Finding> = found.iter().filter(|f| f.line >= planted_from).collect();
    for (i, k) in [rsak, ec, edk, ec].iter().enumerate() {
        assert!(
            planted.iter().any(|f| f.line == planted_from + i && f.key == k.label),
            "self-check: the search missed planted form {i} of {}; found {planted:#?}",
            k.label
        );
    }
    for (line, marker) in [(4, "marker \"PRIVATE KEY\""), (5, "marker base64(\"-----BEGIN RSA PRIVATE KEY\")")] {
        assert!(
            found.iter().any(|f| f.line == planted_from + line && f.encoding == marker),
            "self-check: the search missed the planted {marker}; found {planted:#?}"
        );
    }
    // And a key (its seed hex) that differs in one bit is not reported.
    let mut flipped = edk.der[edk.secrets[0].0..edk.secrets[0].1].to_vec();
    flipped[10] ^= 1;
    let near_miss = index.scan("near miss", format!("seed {}\n", hex::encode(&flipped[..20])).as_bytes());
    assert!(near_miss.is_empty(), "self-check: a 20-byte fragment with a flipped bit matched: {near_miss:?}");

    // ... a key's DER inside a larger blob at each offset, base64-encoded as a Secret's JSON has it...
    for pad in 0..3 {
        let mut blob = vec![7u8; pad + 5];
        blob.extend_from_slice(&ec.der);
        let found = index.scan("blob", scan::base64(&blob).as_bytes());
        assert!(found.iter().any(|f| f.key == ec.label), "self-check: missed the DER at offset {} of a blob", pad + 5);
    }
    // ... and the keystore password, also inside a JSON-escaped log line.
    let password_in = |text: &[u8]| {
        let (norm, _) = scan::normalize(text);
        String::from_utf8_lossy(&norm).contains(&ks_password)
    };
    let planted = format!("{{\"fields\":{{\"args\":\"--password\\n{ks_password}\"}}}}\n");
    assert!(password_in(planted.as_bytes()), "self-check: the password search missed {planted}");

    // ---- The search ----
    let mut leaks = vec![];
    for (name, text) in &sources {
        eprintln!("searching {name}: {} bytes", text.len());
        assert!(!text.is_empty(), "{name} is empty: nothing was searched");
        leaks.extend(index.scan(name, text));
        if password_in(text) {
            leaks.push(scan::Finding {
                source: name.clone(),
                line: 0,
                key: "the keystore password".into(),
                encoding: "plain".into(),
            });
        }
    }
    for (name, data) in &binaries {
        leaks.extend(index.scan_binary(name, data));
    }
    eprintln!("searched {} keystores as binary files too", binaries.len());
    // The logs really are at trace level, from the operator's dependencies too.
    for (name, log) in &sources[..2] {
        let log = String::from_utf8_lossy(log);
        for target in ["TRACE", "mtls_operator", "kube_client", "kube_runtime", "hyper_util", "rustls"] {
            assert!(log.contains(target), "no {target} in the {name}: not everything logs at trace");
        }
    }
    eprintln!("searched in {:.0?} in all", began.elapsed());
    assert!(
        leaks.is_empty(),
        "private key material found ({} places):\n{}",
        leaks.len(),
        leaks
            .iter()
            .map(|f| format!("  {} line {}: {} as {}", f.source, f.line, f.key, f.encoding))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
