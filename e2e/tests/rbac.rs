//! The chart's RBAC is enough, and only what is used: the operator runs as the chart's
//! ServiceAccount (the admin impersonates it) and issues, renews, publishes bundles and rotates a
//! CA without a single Forbidden in its log; the Role/ClusterRole grant nothing it does not use.

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

const SA: &str = "system:serviceaccount:mtls-system:mtls-operator";

/// Applies the ServiceAccount and RBAC objects of `manifests/install.yaml` (rendered from the chart).
async fn apply_chart_rbac(client: &Client) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(harness::repo_root().join("manifests/install.yaml")).expect("manifests/install.yaml");
    let mut rules = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if !["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&kind.as_str()) {
            continue;
        }
        if kind.ends_with("Role") {
            rules.extend(v["rules"].as_array().cloned().unwrap_or_default());
        }
        let (group, version) = match v["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), v["apiVersion"].as_str().unwrap().to_string()),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
        let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
        let api: Api<DynamicObject> = match obj.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), &ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(&obj.name_any(), &PatchParams::apply("mtls-e2e").force(), &Patch::Apply(&obj)).await.unwrap();
    }
    rules
}

/// A kubeconfig that authenticates as the admin but acts as the chart's ServiceAccount.
fn impersonating_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(harness::kubeconfig_path()).unwrap()).unwrap();
    let user = &mut kc["users"][0]["user"];
    user["as"] = SA.into();
    user["as-groups"] =
        serde_yaml::to_value(["system:serviceaccounts", "system:serviceaccounts:mtls-system", "system:authenticated"])
            .unwrap();
    let path = dir.join("impersonating.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

async fn wait<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    harness::wait_for(Duration::from_secs(90), f).await.unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn the_operator_works_as_the_charts_service_account() {
    let client = harness::client().await;
    harness::install_crds_and_operator_namespace(&client).await;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let rules = apply_chart_rbac(&client).await;
    // Least privilege: no wildcards, no delete on Secrets, no access to anything else.
    for r in &rules {
        let text = r.to_string();
        assert!(!text.contains("\"*\""), "wildcard in rule {text}");
        if r["resources"].as_array().unwrap().iter().any(|x| x == "secrets") {
            assert!(!r["verbs"].as_array().unwrap().iter().any(|v| v == "delete" || v == "deletecollection"), "{text}");
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = impersonating_kubeconfig(tmp.path());
    let log_path = tmp.path().join("operator.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtls-operator"))
        .args([
            "run",
            "--namespace",
            "mtls-system",
            "--leader-elect",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--exit-on-stdin-close",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let name = format!("rbac-{:06x}", harness::rand_u32() & 0xffffff);
    let auth: MtlsAuthority = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "leaf": {"minDuration": "1m"},
            "rotation": {"propagationDelay": "2s"},
            "trustBundle": {"configMapName": format!("{name}-bundle"), "namespaceSelector": {"matchLabels": {"mtls-e2e/rbac": name}}}
        }
    }))
    .unwrap();
    let auths: Api<MtlsAuthority> = Api::all(client.clone());
    auths.create(&PostParams::default(), &auth).await.unwrap();
    let ns = format!("{name}-ns");
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns, "labels": {"mtls-e2e/rbac": name}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns);
    let id: MtlsIdentity = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"}, "spec": {"authorityRef": name, "duration": "2m", "renewBefore": "1m"}
    }))
    .unwrap();
    ids.create(&PostParams::default(), &id).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // Issuance.
    let first = wait("issuance", || async {
        secrets.get_opt("app-mtls").await.ok()?.and_then(|s| s.annotations().get("mtls.io/serial").cloned())
    })
    .await;
    // Trust bundle ConfigMap.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    wait("bundle ConfigMap", || async { cms.get_opt(&format!("{name}-bundle")).await.ok()?.map(|_| ()) }).await;
    // Renewal (2m certificates renew within about a minute).
    wait("renewal", || async {
        let s = secrets.get("app-mtls").await.ok()?;
        (s.annotations().get("mtls.io/serial") != Some(&first)).then_some(())
    })
    .await;
    // Rotation.
    auths
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"rotation": {"trigger": "rbac"}}})),
        )
        .await
        .unwrap();
    wait("rotation", || async {
        let r = auths.get(&name).await.ok()?.status?.rotation?;
        (r.phase == mtls_operator::api::Phase::Stable && r.from == 2).then_some(())
    })
    .await;

    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "the operator hit RBAC denials:\n{log}");
    let _ = auths.delete(&name, &DeleteParams::default()).await;
    let _ = ns_api.delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
async fn the_rendered_install_manifest_is_accepted_by_the_api_server() {
    let client = harness::client().await;
    harness::install_crds_and_operator_namespace(&client).await;
    let out = Command::new("kubectl")
        .args(["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f"])
        .arg(harness::repo_root().join("manifests/install.yaml"))
        .env("KUBECONFIG", harness::kubeconfig_path())
        .output()
        .expect("kubectl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "server-side dry run refused manifests/install.yaml:\n{text}");
    for kind in [
        "deployment.apps/mtls-operator",
        "clusterrole.rbac.authorization.k8s.io/mtls-operator",
        "mtlsauthority.mtls.io/default",
    ] {
        assert!(text.contains(kind), "{kind} missing from the dry run:\n{text}");
    }
}
