//! Objects deleted and created again under the same name — `kubectl replace --force`, a GitOps
//! tool replacing an object, a namespace re-created by a pipeline — are served like new ones: the
//! new object (new uid) is never lost behind what the operator kept about the old one.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

use crate::{
    fixtures::{TestAuthority, create_identity, get_secret, wait_authority_ready, wait_identity_reason},
    harness::{self, TestNamespace},
};

/// How long a re-created identity may take to be Ready: the normal issuance latency with room
/// for a loaded machine (before the fix it was never issued).
const REISSUE_WAIT: Duration = Duration::from_secs(20);

/// Waits until the object is gone from the API (as `kubectl delete --wait` does).
async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    harness::wait_for(Duration::from_secs(60), || async move {
        api.get_opt(name).await.ok().and_then(|o| o.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|| panic!("{name} was not deleted"));
}

/// Waits until the identity *with this uid* is Ready and its Secret is owned by it; returns how
/// long that took and the Secret.
async fn wait_issued_to(client: &Client, ns: &str, name: &str, uid: &str) -> (Duration, Secret) {
    let started = Instant::now();
    let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = harness::wait_for(REISSUE_WAIT, || {
        let (api, secrets) = (api.clone(), secrets.clone());
        async move {
            let id = api.get(name).await.ok()?;
            let ready = id.status.as_ref()?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready || id.uid().as_deref() != Some(uid) {
                return None;
            }
            let s = secrets.get(&format!("{name}-mtls")).await.ok()?;
            s.owner_references().iter().any(|o| o.uid == uid).then_some(s)
        }
    })
    .await;
    match found {
        Some(s) => (started.elapsed(), s),
        None => panic!(
            "re-created identity {ns}/{name} was not issued within {REISSUE_WAIT:?}; status: {:?}",
            api.get(name).await.ok().and_then(|i| i.status)
        ),
    }
}

async fn create(client: &Client, ns: &str, name: &str, authority: &str) -> String {
    create_identity(client, ns, name, authority, serde_json::json!({})).await;
    Api::<MtlsIdentity>::namespaced(client.clone(), ns).get(name).await.unwrap().uid().unwrap()
}

fn serial(s: &Secret) -> String {
    s.annotations().get("mtls.io/serial").cloned().unwrap_or_default()
}

#[tokio::test]
async fn identities_deleted_and_created_again_are_issued_again() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "recreate", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "recreate").await;
    let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);

    // Deleted (and gone) then created again after 0, 1, 5 and 9 s: all within the 10 s in which
    // the old object's bookkeeping used to swallow the new one. Each pause runs in parallel.
    let runs = [0u64, 1, 5, 9].map(|pause| {
        let (client, api, ns, auth) = (client.clone(), api.clone(), ns.name.clone(), auth.name.clone());
        async move {
            let name = format!("after-{pause}s");
            let uid = create(&client, &ns, &name, &auth).await;
            let (_, first) = wait_issued_to(&client, &ns, &name, &uid).await;
            api.delete(&name, &DeleteParams::default()).await.unwrap();
            wait_gone(&api, &name).await;
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let uid2 = create(&client, &ns, &name, &auth).await;
            assert_ne!(uid, uid2);
            let (took, second) = wait_issued_to(&client, &ns, &name, &uid2).await;
            assert_ne!(serial(&first), serial(&second), "{name}: the new identity has a certificate of its own");
            eprintln!("{name}: issued {took:?} after it was created again");
        }
    });
    futures::future::join_all(runs).await;

    // `kubectl replace --force`: delete and create in one command.
    let uid = create(&client, &ns.name, "replaced", &auth.name).await;
    wait_issued_to(&client, &ns.name, "replaced", &uid).await;
    let manifest = serde_json::json!({
        "apiVersion": "mtls.io/v1alpha1", "kind": "MtlsIdentity",
        "metadata": {"name": "replaced", "namespace": ns.name},
        "spec": {"authorityRef": auth.name, "serviceNames": ["replaced"]}
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replaced.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = harness::kubectl(&["replace", "--force", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "kubectl replace --force: {}", String::from_utf8_lossy(&out.stderr));
    let uid2 = api.get("replaced").await.unwrap().uid().unwrap();
    assert_ne!(uid, uid2, "replace --force made a new object");
    let (took, s) = wait_issued_to(&client, &ns.name, "replaced", &uid2).await;
    let dns = s.annotations().get("mtls.io/spiffe-id").cloned().unwrap_or_default();
    assert!(dns.ends_with(&format!("/ns/{}/sa/replaced", ns.name)), "{dns}");
    eprintln!("replace --force: issued {took:?} after the replacement");
}

#[tokio::test]
async fn a_namespace_deleted_and_created_again_gets_its_identities_issued() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "recreate-ns", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let name = format!("recreate-ns-{:06x}", harness::rand_u32() & 0xffffff);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let make_ns = || {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"mtls-e2e": "true"}}
        }))
        .unwrap();
        let namespaces = namespaces.clone();
        async move { namespaces.create(&PostParams::default(), &ns).await.expect("create namespace") }
    };
    let ids = ["a", "b", "c"];
    for round in 0..2 {
        make_ns().await;
        let mut uids = vec![];
        for id in ids {
            uids.push(create(&client, &name, id, &auth.name).await);
        }
        for (id, uid) in ids.iter().zip(&uids) {
            let (took, _) = wait_issued_to(&client, &name, id, uid).await;
            eprintln!("round {round}: {name}/{id} issued after {took:?}");
        }
        namespaces.delete(&name, &DeleteParams::background()).await.unwrap();
        wait_gone(&namespaces, &name).await;
    }
}

#[tokio::test]
async fn an_authority_deleted_and_created_again_serves_its_identities_again() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "recreate-ca", serde_json::json!({})).await;
    let before = wait_authority_ready(&client, &auth.name).await;
    let fingerprint = before.status.unwrap().active_ca.unwrap().fingerprint;
    let ns = TestNamespace::new(&client, "recreate-ca").await;
    let uid = create(&client, &ns.name, "web", &auth.name).await;
    let (_, first) = wait_issued_to(&client, &ns.name, "web", &uid).await;

    // Deleted: its identities say so (they used to keep being served by the deleted authority).
    let authorities: Api<MtlsAuthority> = Api::all(client.clone());
    let spec = serde_json::to_value(&authorities.get(&auth.name).await.unwrap().spec).unwrap();
    authorities.delete(&auth.name, &DeleteParams::default()).await.unwrap();
    wait_gone(&authorities, &auth.name).await;
    wait_identity_reason(&client, &ns.name, "web", "AuthorityNotFound").await;

    // Created again at once under the same name: it takes up the CA it left behind, and the
    // identity is Ready again with a certificate that its peers' bundles still trust.
    let obj: MtlsAuthority =
        serde_json::from_value(serde_json::json!({"metadata": {"name": auth.name}, "spec": spec})).unwrap();
    let started = Instant::now();
    authorities.create(&PostParams::default(), &obj).await.unwrap();
    let after = wait_authority_ready(&client, &auth.name).await;
    assert_eq!(after.status.unwrap().active_ca.unwrap().fingerprint, fingerprint, "the same CA was taken up");
    let (_, s) = wait_issued_to(&client, &ns.name, "web", &uid).await;
    assert_eq!(
        s.annotations().get("mtls.io/issuer-fingerprint"),
        first.annotations().get("mtls.io/issuer-fingerprint")
    );
    eprintln!("authority re-created: identity Ready again after {:?}", started.elapsed());
    assert!(get_secret(&client, &ns.name, "web-mtls").await.data.unwrap().contains_key("tls.key"));
}
