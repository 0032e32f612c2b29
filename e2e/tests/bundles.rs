//! Trust bundles end to end: ConfigMaps in every selected namespace, selector changes,
//! additional CAs (version bumps that every ConfigMap and identity Secret follows without
//! re-issuing leaves), tampering repaired, history kept, and no writes on a resync.

use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use mtls_operator::api::MtlsAuthority;

use crate::{
    fixtures::{TestAuthority, create_identity, data, get_secret, wait_authority_ready, wait_identity_ready},
    harness::{self, OPERATOR_NAMESPACE, TestNamespace},
};

const WAIT: Duration = Duration::from_secs(60);

async fn bundle_namespace(client: &Client, prefix: &str, auth: &str) -> TestNamespace {
    let ns = TestNamespace::new(client, prefix).await;
    harness::label_namespace(client, &ns.name, "mtls-e2e/bundle", Some(auth)).await;
    ns
}

fn cert_count(pem_text: &str) -> usize {
    pem::parse_many(pem_text).map(|v| v.len()).unwrap_or(0)
}

/// Waits until the bundle ConfigMap in `ns` is at `version`; returns it.
async fn wait_configmap(client: &Client, ns: &str, name: &str, version: i64) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let found = harness::wait_for(WAIT, || {
        let api = api.clone();
        async move {
            let cm = api.get_opt(name).await.ok()??;
            (cm.data.as_ref()?.get("version")? == &version.to_string()).then_some(cm)
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("ConfigMap {ns}/{name} never reached version {version}"))
}

async fn wait_bundle_version(client: &Client, name: &str, version: i64) -> MtlsAuthority {
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    harness::wait_for(WAIT, || {
        let api = api.clone();
        async move {
            let a = api.get(name).await.ok()?;
            (a.status.as_ref()?.bundle.as_ref()?.version == version).then_some(a)
        }
    })
    .await
    .unwrap_or_else(|| panic!("authority {name} never published bundle version {version}"))
}

async fn wait_rollout_complete(client: &Client, name: &str, namespaces: u32) -> MtlsAuthority {
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    let found = harness::wait_for(WAIT, || {
        let api = api.clone();
        async move {
            let a = api.get(name).await.ok()?;
            let b = a.status.as_ref()?.bundle.clone()?;
            (b.namespaces_total == Some(namespaces)
                && b.namespaces_up_to_date == Some(namespaces)
                && b.secrets_up_to_date == b.secrets_total)
                .then_some(a)
        }
    })
    .await;
    match found {
        Some(a) => a,
        None => panic!("rollout of {name} incomplete: {:?}", api.get(name).await.ok().and_then(|a| a.status)),
    }
}

#[tokio::test]
async fn bundle_reaches_selected_namespaces_follows_the_selector_and_is_repaired() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "bundle", serde_json::json!({})).await;
    let a = wait_authority_ready(&client, &auth.name).await;
    let fp = a.status.unwrap().active_ca.unwrap().fingerprint;
    let cm_name = format!("{}-bundle", auth.name);
    let mut namespaces = vec![];
    for _ in 0..20 {
        namespaces.push(bundle_namespace(&client, "bundle", &auth.name).await);
    }
    for ns in &namespaces {
        let cm = wait_configmap(&client, &ns.name, &cm_name, 1).await;
        let pem_text = &cm.data.as_ref().unwrap()["ca.crt"];
        let ders = mtls_operator::core::pki::parse_pem_certs("t", pem_text).unwrap();
        assert_eq!(ders.len(), 1);
        assert_eq!(mtls_operator::core::pki::fingerprint(&ders[0]), fp);
        assert_eq!(cm.annotations().get("mtls.io/bundle-version").map(String::as_str), Some("1"));
        assert_eq!(
            cm.annotations().get("mtls.io/bundle-sha256"),
            Some(&mtls_operator::core::pki::sha256_hex(pem_text.as_bytes()))
        );
    }
    wait_rollout_complete(&client, &auth.name, 20).await;

    // A namespace that appears later gets it; one that stops matching loses it.
    let late = bundle_namespace(&client, "late", &auth.name).await;
    wait_configmap(&client, &late.name, &cm_name, 1).await;
    harness::label_namespace(&client, &namespaces[0].name, "mtls-e2e/bundle", None).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespaces[0].name);
    let removed = harness::wait_for(WAIT, || {
        let (cms, n) = (cms.clone(), cm_name.clone());
        async move { cms.get_opt(&n).await.ok().and_then(|c| c.is_none().then_some(())) }
    })
    .await;
    assert!(removed.is_some(), "ConfigMap must be removed from a namespace that no longer matches");
    wait_rollout_complete(&client, &auth.name, 20).await;

    // Tampering is repaired: edited data, then deletion.
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespaces[1].name);
    api.patch(&cm_name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"ca.crt": "evil"}})))
        .await
        .unwrap();
    let restored = harness::wait_for(WAIT, || {
        let (api, n) = (api.clone(), cm_name.clone());
        async move { api.get(&n).await.ok().filter(|c| c.data.as_ref().unwrap()["ca.crt"] != "evil") }
    })
    .await;
    assert!(restored.is_some(), "edited bundle ConfigMap restored");
    api.delete(&cm_name, &DeleteParams::default()).await.unwrap();
    wait_configmap(&client, &namespaces[1].name, &cm_name, 1).await;

    // The history copy is immutable.
    let h =
        Api::<ConfigMap>::namespaced(client.clone(), OPERATOR_NAMESPACE).get(&format!("{cm_name}-v1")).await.unwrap();
    assert_eq!(h.immutable, Some(true));
}

fn extra_root(name: &str, now: jiff::Timestamp, life: u64) -> String {
    mtls_operator::core::pki::generate_ca(
        name,
        &[],
        mtls_operator::api::KeyAlgorithm::EcdsaP256,
        now,
        Duration::from_secs(life),
    )
    .unwrap()
    .0
}

#[tokio::test]
async fn additional_cas_bump_the_version_and_every_configmap_and_secret_follows() {
    harness::operator().await;
    let client = harness::client().await;
    let now = jiff::Timestamp::now();
    let (x, y) = (extra_root("federated X", now, 86400), extra_root("federated Y", now, 86400));
    let expired = extra_root("expired", now - Duration::from_secs(86400 * 3), 86400);
    let source = format!("extra-roots-{:06x}", harness::rand_u32() & 0xffffff);
    let sources: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": source}, "data": {"roots.pem": format!("{x}{expired}")}
    }))
    .unwrap();
    sources.create(&PostParams::default(), &cm).await.unwrap();
    let name = format!("extra-{:06x}", harness::rand_u32() & 0xffffff);
    let auth = TestAuthority::create(
        &client,
        "extra",
        serde_json::json!({"trustBundle": {
            "configMapName": format!("{name}-bundle"),
            "namespaceSelector": {"matchLabels": {"mtls-e2e/extra": name}},
            "additionalCAs": [{"configMap": {"name": source, "key": "roots.pem"}}]
        }}),
    )
    .await;
    let a = wait_authority_ready(&client, &auth.name).await;
    let b = a.status.unwrap().bundle.unwrap();
    assert_eq!((b.version, b.members.len()), (1, 2), "own CA + X; the expired root is dropped");

    let mut namespaces = vec![];
    for _ in 0..3 {
        let ns = TestNamespace::new(&client, "extra").await;
        harness::label_namespace(&client, &ns.name, "mtls-e2e/extra", Some(&name)).await;
        create_identity(&client, &ns.name, "app", &auth.name, serde_json::json!({})).await;
        namespaces.push(ns);
    }
    let mut serials = vec![];
    for ns in &namespaces {
        let id = wait_identity_ready(&client, &ns.name, "app").await;
        serials.push(id.status.unwrap().serial_number.unwrap());
        assert_eq!(cert_count(&data(&get_secret(&client, &ns.name, "app-mtls").await, "ca.crt")), 2);
    }
    let bundle_cm = format!("{name}-bundle");

    // Adding a root: version 2 everywhere, leaves untouched.
    let patch = serde_json::json!({"data": {"roots.pem": format!("{x}{y}{expired}")}});
    sources.patch(&source, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_bundle_version(&client, &auth.name, 2).await;
    for (ns, serial) in namespaces.iter().zip(&serials) {
        assert_eq!(cert_count(&wait_configmap(&client, &ns.name, &bundle_cm, 2).await.data.unwrap()["ca.crt"]), 3);
        let s = harness::wait_for(WAIT, || {
            let (c, n) = (client.clone(), ns.name.clone());
            async move {
                let s = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c, &n).get("app-mtls").await.ok()?;
                (s.annotations().get("mtls.io/bundle-version")? == "2").then_some(s)
            }
        })
        .await
        .expect("identity Secret follows the bundle");
        assert_eq!(cert_count(&data(&s, "ca.crt")), 3);
        assert_eq!(
            s.annotations().get("mtls.io/serial"),
            Some(serial),
            "the leaf must not be re-issued for a bundle change"
        );
    }
    let done = wait_rollout_complete(&client, &auth.name, 3).await;
    let st = done.status.unwrap();
    assert_eq!(st.bundle.as_ref().unwrap().secrets_total, Some(3));

    // Removing the source from the spec: version 3, back to the own CA only.
    Api::<MtlsAuthority>::all(client.clone())
        .patch(
            &auth.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"trustBundle": {"additionalCAs": null}}})),
        )
        .await
        .unwrap();
    let a = wait_bundle_version(&client, &auth.name, 3).await;
    for ns in &namespaces {
        assert_eq!(cert_count(&wait_configmap(&client, &ns.name, &bundle_cm, 3).await.data.unwrap()["ca.crt"]), 1);
    }
    let st = a.status.unwrap();
    let versions: Vec<i64> = st.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, vec![3, 2, 1], "history, newest first");
    let history = Api::<ConfigMap>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    for v in 1..=3 {
        let h = history.get(&format!("{bundle_cm}-v{v}")).await.unwrap();
        assert_eq!(h.data.unwrap()["version"], v.to_string());
    }
    let _ = sources.delete(&source, &DeleteParams::default()).await;
}

fn metric(body: &str, name: &str, authority: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("authority=\"{authority}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn resync_of_200_namespaces_writes_nothing() {
    let op = harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "resync", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let namespaces: Vec<TestNamespace> = stream::iter(0..200)
        .map(|_| {
            let (client, name) = (client.clone(), auth.name.clone());
            async move { bundle_namespace(&client, "resync", &name).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    wait_rollout_complete(&client, &auth.name, 200).await;
    let versions = |client: Client, name: String| async move {
        let mut v: Vec<(String, String)> = Api::<ConfigMap>::all(client)
            .list(&ListParams::default().labels(&format!("mtls.io/authority={name}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| (format!("{}/{}", c.namespace().unwrap(), c.name_any()), c.resource_version().unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = versions(client.clone(), auth.name.clone()).await;
    assert_eq!(before.len(), 201, "200 namespaces + 1 history copy");
    let metrics_url = format!("{}/metrics", op.metrics_url);
    let writes_before =
        metric(&harness::http_get(&metrics_url).await.unwrap().1, "mtls_operator_bundle_writes_total", &auth.name)
            .expect("bundle writes metric");

    // A resync: a spec change that does not affect the bundle makes the authority reconcile.
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    let patched = api
        .patch(
            &auth.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"rotation": {"reissueRate": 51}}})),
        )
        .await
        .unwrap();
    let generation = patched.metadata.generation;
    harness::wait_for(WAIT, || {
        let api = api.clone();
        let name = auth.name.clone();
        async move { (api.get(&name).await.ok()?.status?.observed_generation == generation).then_some(()) }
    })
    .await
    .expect("resync observed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = versions(client.clone(), auth.name.clone()).await;
    assert_eq!(before, after, "a resync must not rewrite any bundle ConfigMap");
    let writes_after =
        metric(&harness::http_get(&metrics_url).await.unwrap().1, "mtls_operator_bundle_writes_total", &auth.name)
            .unwrap();
    assert_eq!(writes_before, writes_after, "a resync of 200 namespaces performs zero writes");
    drop(namespaces);
}
