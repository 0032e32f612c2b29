//! Issuance end to end: authorities (generated and supplied), identity Secrets checked by OpenSSL
//! and by rustls/webpki, convergence, and policy.

use std::{path::Path, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Event, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

use crate::fixtures::*;
use crate::harness::{self, OPERATOR_NAMESPACE, TestNamespace};

#[tokio::test]
async fn generated_ca_issues_verifiable_identities() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "gen", serde_json::json!({"ca": {"generate": {}}})).await;
    let a = wait_authority_ready(&client, &auth.name).await;
    let st = a.status.unwrap();
    let active = st.active_ca.expect("activeCa in status");
    assert_eq!(active.fingerprint.len(), 64);
    assert_eq!(st.bundle.as_ref().unwrap().version, 1);
    assert_eq!(st.phase.as_deref(), Some("Stable"));

    let ns = TestNamespace::new(&client, "issue").await;
    create_identity(&client, &ns.name, "web", &auth.name, serde_json::json!({"serviceNames": ["web"]})).await;
    create_identity(
        &client,
        &ns.name,
        "client",
        &auth.name,
        serde_json::json!({"usages": ["ClientAuth"], "privateKey": {"algorithm": "RSA-2048"}, "duration": "2h",
            "secretTemplate": {"labels": {"team": "shop"}, "annotations": {"note": "hello"}}}),
    )
    .await;
    let web = wait_identity_ready(&client, &ns.name, "web").await;
    let wst = web.status.clone().unwrap();
    assert_eq!(wst.spiffe_id.as_deref(), Some(format!("spiffe://cluster.local/ns/{}/sa/web", ns.name).as_str()));
    assert_eq!(wst.secret_name.as_deref(), Some("web-mtls"));
    assert_eq!(wst.issuer_fingerprint.as_deref(), Some(active.fingerprint.as_str()));
    assert_eq!(wst.bundle_version, Some(1));
    assert!(wst.renewal_time.is_some() && wst.not_after.is_some() && wst.serial_number.is_some());
    let cl = wait_identity_ready(&client, &ns.name, "client").await;

    let s = get_secret(&client, &ns.name, "web-mtls").await;
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert!(data(&s, "tls.key").starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 key");
    assert_eq!(s.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("mtls-operator"));
    assert_eq!(s.labels().get("mtls.io/authority"), Some(&auth.name));
    assert_eq!(s.annotations().get("mtls.io/serial"), wst.serial_number.as_ref());
    assert_eq!(s.annotations().get("mtls.io/spiffe-id"), wst.spiffe_id.as_ref());
    assert_eq!(s.annotations().get("mtls.io/bundle-version").map(String::as_str), Some("1"));
    let owner = &s.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("MtlsIdentity", web.uid().unwrap().as_str(), Some(true))
    );
    let cs = get_secret(&client, &ns.name, "client-mtls").await;
    assert_eq!(cs.labels().get("team").map(String::as_str), Some("shop"));
    assert_eq!(cs.annotations().get("note").map(String::as_str), Some("hello"));
    assert_eq!(cl.status.unwrap().spiffe_id.unwrap(), format!("spiffe://cluster.local/ns/{}/sa/client", ns.name));

    // OpenSSL: strict RFC 5280 path validation, and the extensions it should carry.
    let tmp = tempfile::tempdir().unwrap();
    let (wd, cd) = (tmp.path().join("web"), tmp.path().join("client"));
    write_files(&wd, &s);
    write_files(&cd, &cs);
    let (ok, out) = openssl_verify(&wd, "sslserver");
    assert!(ok, "openssl verify (server): {out}");
    let (ok, out) = openssl_verify(&cd, "sslclient");
    assert!(ok, "openssl verify (client): {out}");
    let (ok, _) = openssl_verify(&cd, "sslserver");
    assert!(!ok, "a ClientAuth-only certificate must not verify for server use");
    let text = x509_text(&wd);
    for needle in [
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        &format!("URI:spiffe://cluster.local/ns/{}/sa/web", ns.name),
        &format!("DNS:web, DNS:web.{0}, DNS:web.{0}.svc, DNS:web.{0}.svc.cluster.local", ns.name),
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(needle), "leaf lacks {needle:?}:\n{text}");
    }
    // notBefore is backdated a few minutes for clock skew.
    let nb = mtls_operator::controllers::parse_rfc3339(wst.not_before.as_deref().unwrap()).unwrap();
    let created = web.metadata.creation_timestamp.clone().unwrap().0;
    let backdate = created.duration_since(nb).as_secs();
    assert!((200..=400).contains(&backdate), "notBefore backdated by {backdate}s");

    // A real mutual-TLS handshake with OpenSSL, and another with rustls/webpki.
    let out = openssl_mtls_handshake(&wd, &cd, &format!("web.{}.svc", ns.name))
        .unwrap_or_else(|e| panic!("openssl mTLS failed:\n{e}"));
    assert!(out.contains("Verification: OK"), "{out}");
    let uri = rustls_mtls_handshake(&s, &cs, &format!("web.{}.svc", ns.name)).unwrap();
    assert_eq!(uri, format!("spiffe://cluster.local/ns/{}/sa/client", ns.name));
    // Webpki refuses a server name the certificate does not carry.
    assert!(rustls_mtls_handshake(&s, &cs, "web.other.svc").is_err());
}

#[tokio::test]
async fn every_key_algorithm_is_issued_and_verified() {
    harness::operator().await;
    let client = harness::client().await;
    let auth =
        TestAuthority::create(&client, "algs", serde_json::json!({"ca": {"generate": {"algorithm": "ECDSA-P384"}}}))
            .await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "algs").await;
    let algs = ["ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-2048", "RSA-3072", "RSA-4096"];
    for (i, alg) in algs.iter().enumerate() {
        create_identity(
            &client,
            &ns.name,
            &format!("id{i}"),
            &auth.name,
            serde_json::json!({"serviceNames": [format!("svc{i}")], "privateKey": {"algorithm": alg}}),
        )
        .await;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (i, alg) in algs.iter().enumerate() {
        wait_identity_ready(&client, &ns.name, &format!("id{i}")).await;
        let s = get_secret(&client, &ns.name, &format!("id{i}-mtls")).await;
        let d = tmp.path().join(alg);
        write_files(&d, &s);
        let (ok, out) = openssl_verify(&d, "sslserver");
        assert!(ok, "{alg}: {out}");
        let text = x509_text(&d);
        let expect = match *alg {
            "ECDSA-P256" => "prime256v1",
            "ECDSA-P384" => "secp384r1",
            "Ed25519" => "ED25519",
            "RSA-2048" => "(2048 bit)",
            "RSA-3072" => "(3072 bit)",
            _ => "(4096 bit)",
        };
        assert!(text.contains(expect), "{alg}: {text}");
        // The key is readable by OpenSSL and by rustls, and pairs with the certificate.
        let (ok, out) = openssl(&["pkey", "-in", d.join("tls.key").to_str().unwrap(), "-noout"]);
        assert!(ok, "{alg}: OpenSSL cannot read tls.key: {out}");
        rustls_mtls_handshake(&s, &s, &format!("svc{i}")).unwrap_or_else(|e| panic!("{alg}: {e}"));
    }
}

/// An offline root and an intermediate under it, made by OpenSSL in `d`: (root, intermediate,
/// intermediate key), PEM.
pub fn root_and_intermediate(d: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let (ok, out) = openssl(args);
        assert!(ok, "openssl {args:?}: {out}");
    };
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    std::fs::write(d.join("v3_ca.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("root.key"),
        "-out",
        &p("root.crt"),
        "-days",
        "30",
        "-subj",
        "/O=Offline/CN=Offline Root",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("int.key"),
        "-out",
        &p("int.csr"),
        "-subj",
        "/O=Cluster/CN=Cluster Intermediate",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("int.csr"),
        "-CA",
        &p("root.crt"),
        "-CAkey",
        &p("root.key"),
        "-CAcreateserial",
        "-days",
        "20",
        "-extfile",
        &p("v3_ca.ext"),
        "-out",
        &p("int.crt"),
    ]);
    let int = std::fs::read_to_string(d.join("int.crt")).unwrap();
    let root = std::fs::read_to_string(d.join("root.crt")).unwrap();
    let key = std::fs::read_to_string(d.join("int.key")).unwrap();
    (root, int, key)
}

/// A supplied CA: a `kubernetes.io/tls` Secret with these keys, in the operator's namespace.
async fn create_ca_secret(secrets: &Api<Secret>, name: &str, data: &[(&str, String)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test]
async fn supplied_intermediate_ca_with_chain() {
    harness::operator().await;
    let client = harness::client().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (root, int, key) = root_and_intermediate(d);
    let secret_name = format!("supplied-{:06x}", harness::rand_u32() & 0xffffff);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    create_ca_secret(
        &secrets,
        &secret_name,
        &[("tls.crt", format!("{int}{root}")), ("tls.key", key), ("ca.crt", root.clone())],
    )
    .await;
    let auth =
        TestAuthority::create(&client, "supplied", serde_json::json!({"ca": {"secretRef": {"name": secret_name}}}))
            .await;
    let a = wait_authority_ready(&client, &auth.name).await;
    assert!(a.status.unwrap().active_ca.unwrap().subject.unwrap().contains("Cluster Intermediate"));
    let ns = TestNamespace::new(&client, "supplied").await;
    create_identity(&client, &ns.name, "api", &auth.name, serde_json::json!({"serviceNames": ["api"]})).await;
    create_identity(&client, &ns.name, "caller", &auth.name, serde_json::json!({})).await;
    wait_identity_ready(&client, &ns.name, "api").await;
    wait_identity_ready(&client, &ns.name, "caller").await;
    let s = get_secret(&client, &ns.name, "api-mtls").await;
    let c = get_secret(&client, &ns.name, "caller-mtls").await;
    // tls.crt = leaf + intermediate (never the root); ca.crt = the root.
    let chain = pem::parse_many(data(&s, "tls.crt")).unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(pem::encode(&chain[1]).replace("\r\n", "\n").trim(), int.trim());
    assert_eq!(data(&s, "ca.crt").trim(), root.trim());
    let (sd, cd) = (d.join("api"), d.join("caller"));
    write_files(&sd, &s);
    write_files(&cd, &c);
    let (ok, out) = openssl_verify(&sd, "sslserver");
    assert!(ok, "{out}");
    openssl_mtls_handshake(&sd, &cd, &format!("api.{}.svc.cluster.local", ns.name)).unwrap_or_else(|e| panic!("{e}"));
    rustls_mtls_handshake(&s, &c, "api").unwrap();
    let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
}

/// A supplied intermediate whose Secret lacks its root (`ca.crt` absent). By default refused with
/// what to do; opted in, Ready with a condition that says which peers will reject it — and OpenSSL
/// as the server (as nginx does) really rejects it, while the root as `ca.crt` fixes both.
#[tokio::test]
async fn an_intermediate_without_its_root_is_refused_unless_allowed() {
    harness::operator().await;
    let client = harness::client().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (root, int, key) = root_and_intermediate(d);
    let secret_name = format!("int-only-{:06x}", harness::rand_u32() & 0xffffff);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    create_ca_secret(&secrets, &secret_name, &[("tls.crt", int.clone()), ("tls.key", key)]).await;
    let anchor_condition = |a: &MtlsAuthority| {
        a.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "IntermediateTrustAnchor").cloned())
    };

    // By default: not Ready, with the fix in the message, and one Warning Event.
    let refused =
        TestAuthority::create(&client, "int-only", serde_json::json!({"ca": {"secretRef": {"name": secret_name}}}))
            .await;
    let a = wait_authority_reason(&client, &refused.name, "CaRootMissing").await;
    let ready = a.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().clone();
    assert_eq!(ready.status, "False");
    for part in ["Cluster Intermediate", "as ca.crt", "allowIntermediateTrustAnchor", "OpenSSL"] {
        assert!(ready.message.contains(part), "{part:?} missing from: {}", ready.message);
    }
    let warned = harness::wait_for(WAIT, || {
        let client = client.clone();
        let name = refused.name.clone();
        async move {
            let events = Api::<Event>::all(client).list(&ListParams::default()).await.ok()?;
            events
                .items
                .iter()
                .any(|e| {
                    e.involved_object.name.as_deref() == Some(name.as_str())
                        && e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("CaRootMissing")
                })
                .then_some(())
        }
    })
    .await;
    assert!(warned.is_some(), "no CaRootMissing Warning Event");

    // Opted in: Ready, the bundle is the intermediate alone, and the condition says so.
    let allowed = TestAuthority::create(
        &client,
        "int-anchor",
        serde_json::json!({"ca": {"secretRef": {"name": secret_name}, "allowIntermediateTrustAnchor": true}}),
    )
    .await;
    let a = wait_authority_ready(&client, &allowed.name).await;
    let c = anchor_condition(&a).expect("the IntermediateTrustAnchor condition is shown");
    assert_eq!(c.status, "True");
    assert!(c.message.contains("nginx") && c.message.contains("OpenSSL"), "{}", c.message);
    let ns = TestNamespace::new(&client, "int-anchor").await;
    create_identity(&client, &ns.name, "api", &allowed.name, serde_json::json!({"serviceNames": ["api"]})).await;
    create_identity(&client, &ns.name, "caller", &allowed.name, serde_json::json!({})).await;
    wait_identity_ready(&client, &ns.name, "api").await;
    wait_identity_ready(&client, &ns.name, "caller").await;
    let s = get_secret(&client, &ns.name, "api-mtls").await;
    let c = get_secret(&client, &ns.name, "caller-mtls").await;
    assert_eq!(data(&s, "ca.crt").trim(), int.trim(), "the intermediate is the only anchor");
    let (sd, cd) = (d.join("api"), d.join("caller"));
    write_files(&sd, &s);
    write_files(&cd, &c);
    let host = format!("api.{}.svc.cluster.local", ns.name);
    // What the condition warns about: OpenSSL with -verify_return_error refuses the peer.
    let err = openssl_mtls_handshake(&sd, &cd, &host).expect_err("OpenSSL accepted a chain ending at an intermediate");
    assert!(err.contains("unable to get issuer certificate"), "{err}");
    // rustls (like Go and curl) accepts the intermediate as an anchor.
    rustls_mtls_handshake(&s, &c, "api").unwrap();

    // The fix both messages name: the root as ca.crt. The refused authority becomes Ready; the
    // opted-in one takes up the root (same CA) and its condition goes; OpenSSL then verifies.
    let patch = serde_json::json!({"stringData": {"ca.crt": root}});
    secrets.patch(&secret_name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_authority_ready(&client, &refused.name).await;
    let fixed = harness::wait_for(WAIT, || {
        let api = Api::<MtlsAuthority>::all(client.clone());
        let name = allowed.name.clone();
        async move { api.get(&name).await.ok().filter(|a| anchor_condition(a).is_none()) }
    })
    .await;
    assert!(fixed.is_some(), "the IntermediateTrustAnchor condition stayed after the root was added");
    let with_root = harness::wait_for(WAIT, || {
        let client = client.clone();
        let ns = ns.name.clone();
        let root = root.clone();
        async move {
            let s = get_secret(&client, &ns, "api-mtls").await;
            let c = get_secret(&client, &ns, "caller-mtls").await;
            (data(&s, "ca.crt").trim() == root.trim() && data(&c, "ca.crt").trim() == root.trim()).then_some((s, c))
        }
    })
    .await;
    let (s, c) = with_root.expect("the identity Secrets did not get the root as ca.crt");
    write_files(&sd, &s);
    write_files(&cd, &c);
    openssl_mtls_handshake(&sd, &cd, &host).unwrap_or_else(|e| panic!("with the root: {e}"));
    let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn racing_ca_creation_uses_the_winner() {
    harness::operator().await;
    let client = harness::client().await;
    // Another operator process "won": the generation-1 CA Secret exists before the authority.
    let name = format!("race-{:06x}", harness::rand_u32() & 0xffffff);
    let now = jiff::Timestamp::now();
    let (crt, key) = mtls_operator::core::pki::generate_ca(
        "winner",
        &[],
        mtls_operator::api::KeyAlgorithm::EcdsaP256,
        now,
        Duration::from_secs(86400),
    )
    .unwrap();
    let fp = mtls_operator::core::pki::fingerprint(&mtls_operator::core::pki::parse_pem_certs("t", &crt).unwrap()[0]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}-ca-1")),
            labels: Some([("mtls.io/authority".to_string(), name.clone())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [("tls.crt", crt.clone()), ("tls.key", key.expose().to_string()), ("ca.crt", crt)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let obj: MtlsAuthority =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {}})).unwrap();
    Api::<MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &obj).await.unwrap();
    let auth = TestAuthority { name: name.clone() };
    let a = wait_authority_ready(&client, &auth.name).await;
    assert_eq!(
        a.status.unwrap().active_ca.unwrap().fingerprint,
        fp,
        "the operator must adopt the existing CA, not mint another"
    );
    let n =
        secrets.list(&ListParams::default().labels(&format!("mtls.io/authority={name}"))).await.unwrap().items.len();
    assert_eq!(n, 1, "exactly one CA Secret");
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn secrets_converge_and_idle_objects_cause_no_writes() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "conv", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "converge").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    create_identity(&client, &ns.name, "svc", &auth.name, serde_json::json!({"serviceNames": ["svc"]})).await;
    let id = wait_identity_ready(&client, &ns.name, "svc").await;
    let first = get_secret(&client, &ns.name, "svc-mtls").await;
    let serial = id.status.as_ref().unwrap().serial_number.clone().unwrap();

    // Unchanged: no write to the Secret or the identity, and exactly one Event so far.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get_secret(&client, &ns.name, "svc-mtls").await.resource_version(), first.resource_version());
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(ids.get("svc").await.unwrap().resource_version(), id.resource_version());
    let evs = events_for(&client, &ns.name, "svc").await;
    assert_eq!(evs.iter().filter(|(r, _)| r == "Issued").count(), 1, "{evs:?}");

    // Edited ca.crt and a removed label: repaired without re-issuing.
    let patch = serde_json::json!({"metadata": {"labels": {"mtls.io/authority": null}}, "data": {"ca.crt": null}});
    secrets.patch("svc-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let repaired = harness::wait_for(WAIT, || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("svc-mtls").await.ok()?;
            (s.labels().contains_key("mtls.io/authority") && s.data.as_ref()?.contains_key("ca.crt")).then_some(s)
        }
    })
    .await
    .expect("Secret metadata and ca.crt repaired");
    assert_eq!(repaired.annotations().get("mtls.io/serial"), Some(&serial), "repair must not re-issue");

    // Tampered key: re-issued.
    let patch = serde_json::json!({"data": {"tls.key": ByteString(b"garbage".to_vec())}});
    secrets.patch("svc-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let reissued = harness::wait_for(WAIT, || {
        let secrets = secrets.clone();
        let serial = serial.clone();
        async move {
            let s = secrets.get("svc-mtls").await.ok()?;
            (s.annotations().get("mtls.io/serial") != Some(&serial) && data(&s, "tls.key").contains("PRIVATE KEY"))
                .then_some(s)
        }
    })
    .await
    .expect("tampered Secret re-issued");
    let serial2 = reissued.annotations().get("mtls.io/serial").cloned().unwrap();

    // Deleted: re-created.
    secrets.delete("svc-mtls", &DeleteParams::default()).await.unwrap();
    let recreated = harness::wait_for(WAIT, || {
        let secrets = secrets.clone();
        let first_uid = reissued.uid();
        async move { secrets.get_opt("svc-mtls").await.ok().flatten().filter(|s| s.uid() != first_uid) }
    })
    .await
    .expect("deleted Secret re-created");
    let serial3 = recreated.annotations().get("mtls.io/serial").cloned().unwrap();
    assert_ne!(serial3, serial2);

    // Spec change: re-issued with the new name.
    let patch = serde_json::json!({"spec": {"serviceNames": ["svc", "svc2"]}});
    ids.patch("svc", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let changed = harness::wait_for(WAIT, || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get("svc-mtls").await.ok()?;
            let f = mtls_operator::core::pki::inspect_leaf(&data(&s, "tls.crt"), &data(&s, "tls.key")).ok()?;
            f.dns_names.contains(&"svc2".to_string()).then_some(f)
        }
    })
    .await
    .expect("spec change re-issued");
    assert!(changed.key_matches);
    wait_identity_ready(&client, &ns.name, "svc").await;

    // One Event per real change.
    let evs = events_for(&client, &ns.name, "svc").await;
    let count = |r: &str| evs.iter().filter(|(x, _)| x == r).count();
    assert_eq!(count("Issued"), 1, "{evs:?}");
    assert!(count("SecretRepaired") >= 1, "{evs:?}");
    assert!(count("Repaired") + count("Issued") + count("Reissued") >= 3, "{evs:?}");
    assert!(!evs.iter().any(|(_, m)| m.contains("PRIVATE KEY")), "no key material in Events");

    // Deleting the identity garbage-collects its Secret.
    ids.delete("svc", &DeleteParams::background()).await.unwrap();
    let gone = harness::wait_for(WAIT, || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("svc-mtls").await.ok().and_then(|s| s.is_none().then_some(())) }
    })
    .await;
    assert!(gone.is_some(), "Secret of a deleted identity must be garbage-collected");
}

#[tokio::test]
async fn foreign_secrets_are_never_overwritten() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "conflict", serde_json::json!({})).await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "conflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let mine = Secret {
        metadata: kube::api::ObjectMeta { name: Some("db-mtls".into()), ..Default::default() },
        string_data: Some([("password".to_string(), "hunter2".to_string())].into()),
        ..Default::default()
    };
    let created = secrets.create(&PostParams::default(), &mine).await.unwrap();
    create_identity(&client, &ns.name, "db", &auth.name, serde_json::json!({})).await;
    let id = wait_identity_reason(&client, &ns.name, "db", "SecretConflict").await;
    let msg = &id.status.unwrap().conditions[0].message;
    assert!(msg.contains("not owned"), "{msg}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = secrets.get("db-mtls").await.unwrap();
    assert_eq!(after.resource_version(), created.resource_version(), "a foreign Secret must never be written");
    let evs = events_for(&client, &ns.name, "db").await;
    assert_eq!(evs.iter().filter(|(r, _)| r == "SecretConflict").count(), 1, "exactly one Warning Event: {evs:?}");
}

#[tokio::test]
async fn policy_prevents_impersonating_other_namespaces() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(
        &client,
        "policy",
        serde_json::json!({"policy": {"namespaceSelector": {"matchLabels": {"mtls-e2e": "true"}}}}),
    )
    .await;
    wait_authority_ready(&client, &auth.name).await;
    let victim = TestNamespace::new(&client, "victim").await;
    let attacker = TestNamespace::new(&client, "attacker").await;
    // Names of another namespace's service, in every spelling, and external names.
    let attempts = [
        format!("payments.{}", victim.name),
        format!("payments.{}.svc", victim.name),
        format!("payments.{}.svc.cluster.local", victim.name),
        "kubernetes.default.svc".to_string(),
        "example.com".to_string(),
    ];
    for (i, name) in attempts.iter().enumerate() {
        create_identity(
            &client,
            &attacker.name,
            &format!("evil{i}"),
            &auth.name,
            serde_json::json!({"dnsNames": [name]}),
        )
        .await;
    }
    for i in 0..attempts.len() {
        let id = wait_identity_reason(&client, &attacker.name, &format!("evil{i}"), "PolicyViolation").await;
        assert!(id.status.unwrap().conditions[0].message.contains(&attempts[i]));
        let s =
            Api::<Secret>::namespaced(client.clone(), &attacker.name).get_opt(&format!("evil{i}-mtls")).await.unwrap();
        assert!(s.is_none(), "no certificate may be issued for {}", attempts[i]);
    }
    // A serviceAccountName never escapes the identity's namespace.
    create_identity(&client, &attacker.name, "sa", &auth.name, serde_json::json!({"serviceAccountName": "payments"}))
        .await;
    let id = wait_identity_ready(&client, &attacker.name, "sa").await;
    assert_eq!(
        id.status.unwrap().spiffe_id.unwrap(),
        format!("spiffe://cluster.local/ns/{}/sa/payments", attacker.name)
    );

    // namespaceSelector: a namespace without the label cannot use the authority.
    let outsider = TestNamespace::new(&client, "outsider").await;
    harness::label_namespace(&client, &outsider.name, "mtls-e2e", None).await;
    create_identity(&client, &outsider.name, "x", &auth.name, serde_json::json!({})).await;
    wait_identity_reason(&client, &outsider.name, "x", "NamespaceNotAllowed").await;
    // Labelling the namespace lets it in.
    harness::label_namespace(&client, &outsider.name, "mtls-e2e", Some("true")).await;
    wait_identity_ready(&client, &outsider.name, "x").await;
}

#[tokio::test]
async fn missing_authority_and_out_of_bounds_durations() {
    harness::operator().await;
    let client = harness::client().await;
    let ns = TestNamespace::new(&client, "bounds").await;
    create_identity(&client, &ns.name, "orphan", "no-such-authority", serde_json::json!({})).await;
    wait_identity_reason(&client, &ns.name, "orphan", "AuthorityNotFound").await;
    let auth = TestAuthority::create(&client, "bounds", serde_json::json!({"leaf": {"maxDuration": "48h"}})).await;
    wait_authority_ready(&client, &auth.name).await;
    create_identity(&client, &ns.name, "long", &auth.name, serde_json::json!({"duration": "100h"})).await;
    let id = wait_identity_reason(&client, &ns.name, "long", "DurationOutOfBounds").await;
    assert!(id.status.unwrap().conditions[0].message.contains("48h"));
    create_identity(&client, &ns.name, "short", &auth.name, serde_json::json!({"duration": "1m"})).await;
    wait_identity_reason(&client, &ns.name, "short", "DurationOutOfBounds").await;
    // Fixing the spec makes it Ready; a later identity is not held up by the bad ones.
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);
    ids.patch("long", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"duration": "24h"}})))
        .await
        .unwrap();
    wait_identity_ready(&client, &ns.name, "long").await;
    create_identity(&client, &ns.name, "fine", &auth.name, serde_json::json!({})).await;
    wait_identity_ready(&client, &ns.name, "fine").await;
}
