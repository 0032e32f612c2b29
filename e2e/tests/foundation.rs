//! The foundation: CRDs are structural, Established, explainable and validate at admission;
//! garbage collection works; the operator serves its probes.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::ConfigMap, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};

use crate::harness::{self, TestNamespace};

#[tokio::test]
async fn crds_are_established_and_structural() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in ["mtlsauthorities.mtls.io", "mtlsidentities.mtls.io"] {
        let crd = api.get(name).await.unwrap();
        let conds = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"), "{name}: {conds:?}");
        assert!(
            !conds.iter().any(|c| c.type_ == "NonStructuralSchema" && c.status == "True"),
            "{name} has a non-structural schema: {conds:?}"
        );
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_descriptions() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    // Discovery may lag a moment behind Established.
    let out = harness::wait_for(Duration::from_secs(20), || async {
        let o = harness::kubectl(&["explain", "mtlsidentity.spec"]);
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).to_string())
    })
    .await
    .expect("kubectl explain mtlsidentity.spec succeeds");
    assert!(out.contains("serviceAccountName"), "{out}");
    assert!(out.contains("SPIFFE"), "description of serviceAccountName missing:\n{out}");
    assert!(out.contains("renewBefore"), "{out}");
    let o = harness::kubectl(&["explain", "mtlsauthority.spec.rotation"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("propagationDelay") && out.contains("kubelet"), "{out}");
}

fn identity_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mtls.io", "v1alpha1", "MtlsIdentity"),
        "mtlsidentities",
    );
    Api::namespaced_with(client, ns, &ar)
}

fn authority_api(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mtls.io", "v1alpha1", "MtlsAuthority"),
        "mtlsauthorities",
    );
    Api::all_with(client, &ar)
}

/// Creates a raw object and returns the API server's refusal message, or None if it was accepted.
async fn refusal(api: &Api<DynamicObject>, name: &str, kind: &str, spec: serde_json::Value) -> Option<String> {
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "mtls.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    match api.create(&PostParams { dry_run: true, ..Default::default() }, &obj).await {
        Ok(_) => None,
        Err(kube::Error::Api(ae)) => {
            assert_eq!(ae.code, 422, "expected 422 Invalid, got {ae:?}");
            Some(ae.message)
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn invalid_objects_are_refused_with_a_useful_message() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-validation").await;
    let ids = identity_api(client.clone(), &ns.name);
    let cases = [
        (serde_json::json!({"duration": "1h", "renewBefore": "2h"}), "renewBefore must be shorter than duration"),
        (serde_json::json!({"privateKey": {"algorithm": "DSA-1024"}}), "supported values"),
        (serde_json::json!({"duration": "1d"}), "spec.duration"),
        (serde_json::json!({"duration": "-1h"}), "spec.duration"),
        (serde_json::json!({"dnsNames": ["*.example.com"]}), "spec.dnsNames"),
        (serde_json::json!({"dnsNames": ["UPPER.example.com"]}), "spec.dnsNames"),
        (serde_json::json!({"serviceNames": ["a.b"]}), "spec.serviceNames"),
        (serde_json::json!({"ipAddresses": ["999.1.1.1"]}), "ipAddresses must be IPv4 or IPv6"),
        (serde_json::json!({"usages": []}), "spec.usages"),
        (serde_json::json!({"usages": ["ServerAuth", "ServerAuth"]}), "usages must not repeat"),
        (serde_json::json!({"usages": ["CodeSigning"]}), "supported values"),
    ];
    for (i, (spec, expect)) in cases.iter().enumerate() {
        let msg = refusal(&ids, &format!("bad-{i}"), "MtlsIdentity", spec.clone())
            .await
            .unwrap_or_else(|| panic!("{spec} was accepted but must be refused"));
        assert!(msg.contains(expect), "refusal of {spec} should mention {expect:?}; got: {msg}");
    }
    // A valid one is accepted (dry run).
    assert_eq!(
        refusal(&ids, "good", "MtlsIdentity", serde_json::json!({"serviceNames": ["web"], "duration": "1h"})).await,
        None
    );

    let auths = authority_api(client.clone());
    let bad_authorities = [
        (serde_json::json!({"ca": {}}), "set exactly one of ca.generate or ca.secretRef"),
        (
            serde_json::json!({"ca": {"generate": {}, "secretRef": {"name": "x"}}}),
            "set exactly one of ca.generate or ca.secretRef",
        ),
        (serde_json::json!({"ca": {"generate": {"algorithm": "RSA-1024"}}}), "supported values"),
        (
            serde_json::json!({"leaf": {"minDuration": "2h", "defaultDuration": "1h"}}),
            "minDuration <= defaultDuration <= maxDuration",
        ),
    ];
    for (i, (spec, expect)) in bad_authorities.iter().enumerate() {
        let msg = refusal(&auths, &format!("bad-authority-{i}"), "MtlsAuthority", spec.clone())
            .await
            .unwrap_or_else(|| panic!("{spec} was accepted but must be refused"));
        assert!(msg.contains(expect), "refusal of {spec} should mention {expect:?}; got: {msg}");
    }
}

#[tokio::test]
async fn secret_name_is_immutable() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "crd-immutable").await;
    let ids = identity_api(client.clone(), &ns.name);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "mtls.io/v1alpha1", "kind": "MtlsIdentity", "metadata": {"name": "x"},
        "spec": {"secretName": "one", "authorityRef": "does-not-exist"}
    }))
    .unwrap();
    ids.create(&PostParams::default(), &obj).await.unwrap();
    let patch = serde_json::json!({"spec": {"secretName": "two"}});
    let err = ids.patch("x", &Default::default(), &kube::api::Patch::Merge(patch)).await.unwrap_err();
    assert!(err.to_string().contains("secretName is immutable"), "{err}");
}

#[tokio::test]
async fn garbage_collection_deletes_owned_objects() {
    let client = harness::client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let owned: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()
        }]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &owned).await.unwrap();
    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    let gone = harness::wait_for(Duration::from_secs(30), || {
        let cms = cms.clone();
        async move { cms.get_opt("owned").await.ok().and_then(|o| o.is_none().then_some(())) }
    })
    .await;
    assert!(gone.is_some(), "kube-controller-manager did not garbage-collect the owned ConfigMap");
}

#[tokio::test]
async fn operator_serves_probes_and_metrics() {
    let op = harness::operator().await;
    let (code, body) = harness::http_get(&format!("{}/healthz", op.metrics_url)).await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = harness::http_get(&format!("{}/readyz", op.metrics_url)).await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = harness::http_get(&format!("{}/metrics", op.metrics_url)).await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("mtls_operator_up 1"), "{body}");
}

#[tokio::test]
async fn metrics_report_each_identitys_expiry() {
    use crate::fixtures::{TestAuthority, create_identity, wait_authority_ready, wait_identity_ready};
    let op = harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "metrics", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "metrics").await;
    create_identity(&client, &ns.name, "app", &auth.name, serde_json::json!({})).await;
    let id = wait_identity_ready(&client, &ns.name, "app").await;
    let s =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name).get("app-mtls").await.unwrap();
    let crt = String::from_utf8(s.data.unwrap()["tls.crt"].0.clone()).unwrap();
    let not_after = mtls_operator::core::pki::inspect_leaf(&crt, "").unwrap().facts.not_after.as_second();
    assert_eq!(
        mtls_operator::controllers::parse_rfc3339(id.status.unwrap().not_after.as_deref().unwrap())
            .unwrap()
            .as_second(),
        not_after
    );
    let (_, body) = harness::http_get(&format!("{}/metrics", op.metrics_url)).await.unwrap();
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("mtls_operator_identity_expiry_timestamp_seconds")
                && l.contains(&format!("namespace=\"{}\"", ns.name))
        })
        .unwrap_or_else(|| panic!("no expiry metric for {}:\n{body}", ns.name));
    let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, not_after, "{line}");
    for needle in [
        "mtls_operator_issuances_total",
        "mtls_operator_bundle_version",
        "mtls_operator_authority_phase",
        "mtls_operator_ca_expiry_timestamp_seconds",
    ] {
        assert!(body.contains(needle), "{needle} missing");
    }

    // A deleted identity's series go away with it.
    Api::<mtls_operator::api::MtlsIdentity>::namespaced(client.clone(), &ns.name)
        .delete("app", &Default::default())
        .await
        .unwrap();
    let series = format!("namespace=\"{}\"", ns.name);
    harness::wait_for(std::time::Duration::from_secs(30), || async {
        let (_, body) = harness::http_get(&format!("{}/metrics", op.metrics_url)).await.ok()?;
        (!body.lines().any(|l| l.starts_with("mtls_operator_identity_") && l.contains(&series))).then_some(())
    })
    .await
    .expect("the deleted identity's metric series are removed");
}
