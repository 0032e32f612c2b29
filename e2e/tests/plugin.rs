//! `kubectl mtls` (the `kubectl-mtls` binary) against the real control plane and the real
//! operator: every command, its exit code and what it prints, including for a user whose RBAC
//! allows only reading, and with an operator whose Lease has gone stale.

use std::{path::Path, process::Command, time::Duration};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    fixtures::{
        TestAuthority, authority, create_identity, get_secret, wait_authority_ready, wait_identity_ready,
        wait_identity_reason,
    },
    harness::{self, TestNamespace},
};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the plugin as kubectl would, with `kubeconfig`; stdin is not a terminal.
fn mtls_with(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-mtls"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kubectl-mtls");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains("PRIVATE KEY"), "key material printed by {args:?}: {run:?}");
    }
    run
}

async fn mtls(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mtls_with(&harness::kubeconfig_path(), &args)
    })
    .await
    .unwrap()
}

fn json_of(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

async fn labelled_namespace(client: &Client, prefix: &str, auth: &str) -> TestNamespace {
    let ns = TestNamespace::new(client, prefix).await;
    harness::label_namespace(client, &ns.name, "mtls-e2e/bundle", Some(auth)).await;
    ns
}

#[tokio::test]
async fn status_inspect_check_and_renew() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "plugin", json!({})).await;
    let shop = labelled_namespace(&client, "plugin-shop", &auth.name).await;
    let other = labelled_namespace(&client, "plugin-other", &auth.name).await;
    for (name, spec) in [("web", json!({"serviceNames": ["web"]})), ("db", json!({"serviceNames": ["db"]}))] {
        create_identity(&client, &shop.name, name, &auth.name, spec).await;
        kubectl_label(&shop.name, name, "app=shop");
    }
    create_identity(&client, &other.name, "long", &auth.name, json!({"duration": "10000h"})).await;
    let web = wait_identity_ready(&client, &shop.name, "web").await;
    wait_identity_ready(&client, &shop.name, "db").await;
    wait_identity_reason(&client, &other.name, "long", "DurationOutOfBounds").await;
    let a = wait_authority_ready(&client, &auth.name).await;
    let active = a.status.as_ref().unwrap().active_ca.clone().unwrap().fingerprint;
    let version = a.status.as_ref().unwrap().bundle.as_ref().unwrap().version;

    // status: the authority, its identities, the one not Ready grouped by reason, soonest expiry.
    let r = mtls(&["status", "--authority", &auth.name, "-o", "json"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let s = json_of(&r);
    let a0 = &s["authorities"][0];
    assert_eq!((a0["name"].as_str(), a0["phase"].as_str()), (Some(auth.name.as_str()), Some("Stable")), "{s:#}");
    assert_eq!(a0["activeCa"]["fingerprint"], active.as_str());
    assert_eq!(a0["bundleVersion"], version);
    assert_eq!(a0["identities"], 3);
    assert!(a0["rotation"].is_null());
    assert_eq!(s["notReady"][0]["reason"], "DurationOutOfBounds", "{s:#}");
    assert_eq!(s["notReady"][0]["identities"][0], format!("{}/long", other.name));
    let soonest: Vec<&str> =
        s["expiringSoonest"].as_array().unwrap().iter().map(|e| e["identity"].as_str().unwrap()).collect();
    assert_eq!(soonest.len(), 2, "{s:#}");
    let r = mtls(&["status", "--authority", &auth.name, "-o", "yaml"]).await;
    assert!(r.code == 0 && r.stdout.contains("phase: Stable"), "{r:?}");
    let r = mtls(&["status", "--authority", &auth.name]).await;
    assert!(r.stdout.contains(&format!("Authority {}: Stable, Ready=True", auth.name)), "{r:?}");
    assert!(r.stdout.contains("DurationOutOfBounds (1)"), "{r:?}");
    let r = mtls(&["status"]).await;
    assert!(r.code == 0 && r.stdout.contains(&format!("Authority {}:", auth.name)), "{r:?}");

    // inspect: the decoded chain, issuer and the bundle versions holding it; the key checked, not shown.
    let secret = format!("{}/web-mtls", shop.name);
    let r = mtls(&["inspect", "secret", &secret, "-o", "json"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let i = json_of(&r);
    assert_eq!(i["spiffeIds"][0], format!("spiffe://cluster.local/ns/{}/sa/web", shop.name));
    assert!(i["dnsNames"].as_array().unwrap().contains(&json!(format!("web.{}.svc", shop.name))), "{i:#}");
    assert_eq!(i["keyMatchesLeaf"], true);
    assert_eq!(i["issuerFingerprint"], active.as_str());
    assert!(i["issuerInBundleVersions"].as_array().unwrap().contains(&json!(version)), "{i:#}");
    assert_eq!(i["chain"][0]["serial"], web.status.as_ref().unwrap().serial_number.clone().unwrap().as_str());
    assert!(i["problem"].is_null(), "{i:#}");
    let r = mtls(&["-n", &shop.name, "inspect", "identity", "web"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("Ready          True") && r.stdout.contains("tls.key matches the leaf"),
        "{r:?}"
    );
    let r = mtls(&["inspect", "identity", &format!("{}/nope", shop.name)]).await;
    assert!(r.code == 1 && r.stderr.contains("no MtlsIdentity"), "{r:?}");

    // check: both directions verified with each side's own bundle.
    let (w, d) = (format!("{}/web", shop.name), format!("{}/db", shop.name));
    let r = mtls(&["check", &w, &d]).await;
    assert!(r.code == 0 && r.stdout.contains("would succeed"), "{r:?}");
    let r = mtls(&["check", &w, &d, "--server-name", "cache.example.com"]).await;
    assert!(r.code == 1 && r.stdout.contains("name mismatch"), "{r:?}");
    // An identity of another authority: unknown CA, both ways.
    let foreign = TestAuthority::create(&client, "plugin-foreign", json!({})).await;
    create_identity(&client, &shop.name, "alien", &foreign.name, json!({"serviceNames": ["alien"]})).await;
    wait_identity_ready(&client, &shop.name, "alien").await;
    let r = mtls(&["check", &w, &format!("{}/alien", shop.name), "-o", "json"]).await;
    let c = json_of(&r);
    assert!(r.code == 1 && c["ok"] == false, "{r:?}");
    for side in c["sides"].as_array().unwrap() {
        assert!(side["problem"].as_str().unwrap().starts_with("unknown CA"), "{c:#}");
    }

    // renew: one identity through the operator; the other keeps its certificate.
    let db_serial = |id: &mtls_operator::api::MtlsIdentity| id.status.as_ref().unwrap().serial_number.clone();
    let db_before = db_serial(&wait_identity_ready(&client, &shop.name, "db").await);
    let r = mtls(&["renew", &w, "--wait", "--timeout", "60s"]).await;
    assert!(r.code == 0 && r.stdout.contains("renewed, serial"), "{r:?}");
    let web_after = wait_identity_ready(&client, &shop.name, "web").await;
    assert_ne!(web_after.status.as_ref().unwrap().serial_number, web.status.as_ref().unwrap().serial_number);
    let requested = web_after.annotations().get("mtls.io/renew-requested").cloned();
    let sec = get_secret(&client, &shop.name, "web-mtls").await;
    assert_eq!(
        sec.annotations().get("mtls.io/renew-requested").cloned(),
        requested,
        "the Secret records the request it answers"
    );
    assert_eq!(db_serial(&wait_identity_ready(&client, &shop.name, "db").await), db_before);
    // By selector and --all; the request is answered once (no renewal loop afterwards).
    let r = mtls(&["renew", "-n", &shop.name, "-l", "app=shop", "--wait", "--timeout", "60s"]).await;
    assert!(r.code == 0 && r.stdout.matches("renewed, serial").count() == 2, "{r:?}");
    let r = mtls(&["renew", "-n", &shop.name, "--all"]).await;
    assert!(r.code == 0 && r.stdout.matches("renewal requested").count() == 3, "{r:?}");
    let answered = || async {
        let id = wait_identity_ready(&client, &shop.name, "web").await;
        let sec = get_secret(&client, &shop.name, "web-mtls").await;
        let answered =
            sec.annotations().get("mtls.io/renew-requested") == id.annotations().get("mtls.io/renew-requested");
        // ... and the status reports the certificate that answered it.
        let reported = sec.annotations().get("mtls.io/serial") == id.status.as_ref().unwrap().serial_number.as_ref();
        (answered && reported).then_some(id)
    };
    let settled = harness::wait_for(Duration::from_secs(30), answered).await.expect("the --all request is answered");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = wait_identity_ready(&client, &shop.name, "web").await;
    assert_eq!(
        settled.status.unwrap().serial_number,
        still.status.unwrap().serial_number,
        "renewed again without a new request"
    );
    let r = mtls(&["renew", "-n", &shop.name]).await;
    assert!(r.code == 1 && r.stderr.contains("--all"), "{r:?}");

    // Errors a person can act on.
    let r = mtls(&["status", "--authority", "no-such-authority"]).await;
    assert!(r.code == 1 && r.stderr.contains("no MtlsAuthority named \"no-such-authority\"; there are:"), "{r:?}");
    let r = mtls(&["rotate", "no-such-authority", "--yes"]).await;
    assert!(r.code == 1 && r.stderr.contains("no MtlsAuthority named"), "{r:?}");
    let r = mtls(&["completion", "bash"]).await;
    assert!(r.code == 0 && r.stdout.contains("kubectl-mtls") && r.stdout.contains("rollback"), "{r:?}");
    let r = mtls(&["check", "--help"]).await;
    assert!(r.code == 0 && r.stdout.contains("Examples:"), "{r:?}");
}

fn kubectl_label(ns: &str, name: &str, label: &str) {
    let out = harness::kubectl(&["label", "-n", ns, "mtlsidentity", name, label]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The operator's Lease says whether it runs: a Lease not renewed for minutes means it does not.
#[tokio::test]
async fn says_when_the_operator_is_not_running() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "plugin-lease").await;
    let stale = jiff::Timestamp::now() - Duration::from_secs(600);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "mtls-operator"},
        "spec": {"holderIdentity": "mtls-operator-7d9c-x", "leaseDurationSeconds": 15, "renewTime": stale.to_string()}
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &lease).await.unwrap();
    let r = mtls(&["status", "--operator-namespace", &ns.name]).await;
    assert!(
        r.code == 0
            && r.stdout.contains(&format!("Operator: not running: Lease {}/mtls-operator was last renewed", ns.name)),
        "{r:?}"
    );
    assert!(r.stdout.contains("by mtls-operator-7d9c-x"), "{r:?}");
    let empty = TestNamespace::new(&client, "plugin-nolease").await;
    let r = mtls(&["status", "--operator-namespace", &empty.name]).await;
    assert!(r.code == 0 && r.stdout.contains("Operator: unknown: no Lease"), "{r:?}");
}

async fn phase(client: &Client, name: &str) -> String {
    authority(client, name).await.status.and_then(|s| s.phase).unwrap_or_default()
}

#[tokio::test]
async fn rotate_and_rollback_follow_the_phases() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "plugin-rot", json!({"rotation": {"propagationDelay": "2s"}})).await;
    let ns = labelled_namespace(&client, "plugin-rot", &auth.name).await;
    // Not a target yet: it becomes one once a ConfigMap the operator did not write is in it.
    let blocked = TestNamespace::new(&client, "plugin-rot-held").await;
    create_identity(&client, &ns.name, "api", &auth.name, json!({"serviceNames": ["api"]})).await;
    wait_identity_ready(&client, &ns.name, "api").await;
    let first = wait_authority_ready(&client, &auth.name).await.status.unwrap().active_ca.unwrap().fingerprint;

    // Without --yes and without a terminal to ask on: refused, nothing changed.
    let r = mtls(&["rotate", &auth.name]).await;
    assert!(r.code == 1 && r.stderr.contains("refusing without --yes"), "{r:?}");
    assert_eq!(phase(&client, &auth.name).await, "Stable");
    let r = mtls(&["rollback", &auth.name, "--yes"]).await;
    assert!(r.code == 1 && r.stderr.contains("nothing to roll back"), "{r:?}");

    // A full rotation, followed live.
    let r = mtls(&["rotate", &auth.name, "--yes", "--wait", "--timeout", "3m"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    for p in ["Preparing", "Propagating", "Reissuing", "Draining", "Retiring"] {
        assert!(r.stdout.contains(p), "phase {p} not shown: {r:?}");
    }
    assert!(r.stdout.contains("Stable, active CA"), "{r:?}");
    let second = authority(&client, &auth.name).await.status.unwrap().active_ca.unwrap().fingerprint;
    assert_ne!(first, second);
    let r = mtls(&["check", &format!("{}/api", ns.name), &format!("{}/api", ns.name)]).await;
    assert_eq!(r.code, 0, "{r:?}");

    // A rotation held by a ConfigMap the operator did not write: status names the namespace.
    let cm_name = format!("{}-bundle", auth.name);
    let squatter: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": cm_name}, "data": {"ca.crt": "mine"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &blocked.name)
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    harness::label_namespace(&client, &blocked.name, "mtls-e2e/bundle", Some(&auth.name)).await;
    let r = mtls(&["rotate", &auth.name, "--yes"]).await;
    assert!(r.code == 0 && r.stdout.contains("rotation requested"), "{r:?}");
    let held = harness::wait_for(Duration::from_secs(30), || async {
        let s = json_of(&mtls(&["status", "--authority", &auth.name, "-o", "json"]).await);
        let rot = s["authorities"][0]["rotation"].clone();
        (s["authorities"][0]["phase"] == "Preparing" && rot["heldBy"].as_array().is_some_and(|h| !h.is_empty()))
            .then_some(rot)
    })
    .await
    .expect("status shows the rotation held in Preparing");
    let holders = held["heldBy"].as_array().unwrap();
    assert!(
        holders.iter().any(|h| h["kind"] == "namespace"
            && h["name"] == blocked.name.as_str()
            && h["why"].as_str().unwrap().contains("did not write")),
        "{held:#}"
    );
    let r = mtls(&["status", "--authority", &auth.name]).await;
    assert!(
        r.stdout.contains(&format!("namespace {}: a ConfigMap {cm_name} the operator did not write", blocked.name)),
        "{r:?}"
    );
    let r = mtls(&["rotate", &auth.name, "--yes"]).await;
    assert!(r.code == 1 && r.stderr.contains("already rotating (Preparing)"), "{r:?}");

    // Reversed while held; once the squatter is gone the rollback completes back to the second CA.
    let r = mtls(&["rollback", &auth.name, "--yes"]).await;
    assert!(r.code == 0 && r.stdout.contains("rollback requested (was Preparing)"), "{r:?}");
    let r = mtls(&["rollback", &auth.name, "--yes"]).await;
    assert!(r.code == 1 && r.stderr.contains("already rolling back"), "{r:?}");
    Api::<ConfigMap>::namespaced(client.clone(), &blocked.name)
        .delete(&cm_name, &DeleteParams::default())
        .await
        .unwrap();
    harness::wait_for(Duration::from_secs(90), || async {
        (phase(&client, &auth.name).await == "Stable").then_some(())
    })
    .await
    .expect("the rollback completes");
    assert_eq!(authority(&client, &auth.name).await.status.unwrap().active_ca.unwrap().fingerprint, second);
    // A new rotation after a rollback: the Rollback action is cleared by `rotate`.
    let r = mtls(&["rotate", &auth.name, "--yes", "--wait", "--timeout", "3m"]).await;
    assert!(r.code == 0 && r.stdout.contains("Stable, active CA"), "{r:?}");
    assert!(authority(&client, &auth.name).await.spec.rotation.action.is_none());
}

/// A user who may only read mtls objects, namespaces, ConfigMaps and Leases (no Secrets, no
/// writes), through impersonation: status and inspect work (inspect without the Secret), the
/// commands that change something are refused with what is missing.
#[tokio::test]
async fn read_only_rbac() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "plugin-ro", json!({})).await;
    let ns = labelled_namespace(&client, "plugin-ro", &auth.name).await;
    create_identity(&client, &ns.name, "api", &auth.name, json!({"serviceNames": ["api"]})).await;
    wait_identity_ready(&client, &ns.name, "api").await;

    let user = format!("reader-{}", auth.name);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": user},
        "rules": [
            {"apiGroups": ["mtls.io"], "resources": ["mtlsauthorities", "mtlsidentities"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]}
        ]
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &role).await.unwrap();
    Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &binding).await.unwrap();
    let _cleanup = RbacCleanup(user.clone());

    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(harness::kubeconfig_path()).unwrap()).unwrap();
    kc["users"][0]["user"]["as"] = user.clone().into();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("reader.kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let run = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                mtls_with(&kubeconfig, &args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap()
        }
    };
    let id = format!("{}/api", ns.name);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // RBAC takes a moment to reach the authorizer's cache.
    let r = harness::wait_for(Duration::from_secs(10), || {
        let r = run(s(&["status", "--authority", &auth.name, "-o", "json"]));
        async move { Some(r.await).filter(|r| r.code == 0) }
    })
    .await
    .expect("status works for a reader");
    assert_eq!(json_of(&r)["authorities"][0]["identities"], 1, "{r:?}");
    let r = run(s(&["inspect", "identity", &id])).await;
    assert!(r.code == 0 && r.stdout.contains("Ready          True"), "{r:?}");
    assert!(r.stdout.contains("no access: you may not get secrets") && r.stdout.contains("status only"), "{r:?}");
    let r = run(s(&["check", &id, &id])).await;
    assert!(r.code == 1 && r.stderr.contains("no access: you may not get secrets"), "{r:?}");
    let r = run(s(&["renew", &id])).await;
    assert!(r.code == 1 && r.stderr.contains("no access: you may not patch mtlsidentities.mtls.io"), "{r:?}");
    let r = run(s(&["rotate", &auth.name, "--yes"])).await;
    assert!(r.code == 1 && r.stderr.contains("no access: you may not patch mtlsauthorities.mtls.io"), "{r:?}");
    assert_eq!(phase(&client, &auth.name).await, "Stable", "nothing changed");
    let r = run(s(&["inspect", "secret", &format!("{}/api-mtls", ns.name)])).await;
    assert!(r.code == 1 && r.stderr.contains("no access"), "{r:?}");
    // Secrets untouched by the reader: the identity's Secret still answers no renewal request.
    let sec: Secret = Api::namespaced(client.clone(), &ns.name).get("api-mtls").await.unwrap();
    assert!(sec.annotations().get("mtls.io/renew-requested").is_none());
    let _ = Api::<Namespace>::all(client.clone());
}

struct RbacCleanup(String);

impl Drop for RbacCleanup {
    fn drop(&mut self) {
        let name = self.0.clone();
        harness::cleanup(move |client| async move {
            let _ = Api::<ClusterRoleBinding>::all(client.clone()).delete(&name, &DeleteParams::default()).await;
            let _ = Api::<ClusterRole>::all(client).delete(&name, &DeleteParams::default()).await;
        });
    }
}
