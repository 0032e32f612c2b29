//! Keystores and combined PEM (issue 23) read by their real consumers: keytool lists every
//! keystore and truststore with its password, Java JSSE handshakes (client certificate required,
//! hostname verified) with nothing but the PKCS#12 or the JKS files, also across a CA rotation
//! with the truststores following it, OpenSSL reads `tls-combined.pem` and `key.der`; unchanged
//! inputs rewrite nothing; a missing password Secret is a precise reason and loses nothing.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};
use serde_json::json;

use crate::{
    fixtures::{
        TestAuthority, create_identity, get_secret, openssl, patch_rotation, stable_at, wait_authority_ready,
        wait_identity_ready, wait_identity_reason,
    },
    harness::{self, TestNamespace},
};

const PASSWORD: &str = "k3ystore-pass";

/// The handshake program (e2e/java/JsseHandshake.java), compiled once per test run.
fn java_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mtls-e2e-java-{}", std::process::id()));
        let src = harness::repo_root().join("e2e/java/JsseHandshake.java");
        let out = Command::new("javac").arg("-d").arg(&dir).arg(&src).output().expect("javac (a JDK) is installed");
        assert!(out.status.success(), "javac failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// One handshake: server and client stores as `path:password`, and the name the client verifies.
struct Handshake {
    server: [String; 2],
    client: [String; 2],
    host: String,
}

/// Runs every handshake in one JVM; one result line each (`ok server=.. client=..` or `fail ..`).
fn jsse(handshakes: &[Handshake]) -> Vec<String> {
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(java_classes()).arg("JsseHandshake");
    for h in handshakes {
        cmd.args(&h.server).args(&h.client).arg(&h.host);
    }
    let out = cmd.output().expect("java is installed");
    assert!(out.status.success(), "JsseHandshake: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), handshakes.len(), "one result per handshake: {lines:?}");
    lines
}

/// `keytool -list` of a store: (private key entries, trusted certificate entries), or the error.
fn keytool_list(path: &Path, password: &str) -> Result<(usize, usize), String> {
    let kind = if path.extension().is_some_and(|e| e == "jks") { "JKS" } else { "PKCS12" };
    let out = Command::new("keytool")
        .args(["-list", "-storetype", kind, "-storepass", password, "-keystore"])
        .arg(path)
        .output()
        .expect("keytool (a JDK) is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(text);
    }
    Ok((text.matches("PrivateKeyEntry").count(), text.matches("trustedCertEntry").count()))
}

fn bytes<'a>(data: &'a Option<BTreeMap<String, ByteString>>, key: &str) -> &'a [u8] {
    &data.as_ref().and_then(|d| d.get(key)).unwrap_or_else(|| panic!("no {key}")).0
}

/// Writes the Secret's data, every key, into `dir`.
fn write_all(dir: &Path, s: &Secret) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (k, v) in s.data.iter().flatten() {
        std::fs::write(dir.join(k), &v.0).unwrap();
    }
    dir.to_path_buf()
}

fn store(dir: &Path, file: &str, password: &str) -> String {
    format!("{}:{password}", dir.join(file).display())
}

fn keystores(alias: Option<&str>, profile: &str) -> serde_json::Value {
    let r = json!({"name": "keystore-password", "key": "password"});
    let mut jks = json!({"create": true, "passwordSecretRef": r});
    if let Some(a) = alias {
        jks["alias"] = a.into();
    }
    json!({"pkcs12": {"create": true, "passwordSecretRef": r, "profile": profile}, "jks": jks})
}

async fn password_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.unwrap();
}

/// An authority whose bundle goes to namespaces labelled `mtls-e2e/ks=<label>`, with both
/// truststore formats in its ConfigMaps.
async fn authority(client: &Client, label: &str, rotation: serde_json::Value) -> TestAuthority {
    let auth = TestAuthority::create(
        client,
        "ks",
        json!({
            "trustBundle": {
                "configMapName": format!("ks-{label}-bundle"),
                "namespaceSelector": {"matchLabels": {"mtls-e2e/ks": label}},
                "additionalFormats": {"jks": {}, "pkcs12": {"key": "bundle.p12", "password": "bundle-pass"}}
            },
            "rotation": rotation
        }),
    )
    .await;
    wait_authority_ready(client, &auth.name).await;
    auth
}

/// The shared operator, an authority as `authority` makes it, and a namespace its bundle reaches.
async fn setup(prefix: &str, rotation: serde_json::Value) -> (Client, TestAuthority, TestNamespace, String) {
    harness::operator().await;
    let client = harness::client().await;
    let label = format!("{:06x}", harness::rand_u32() & 0xffffff);
    let auth = authority(&client, &label, rotation).await;
    let ns = TestNamespace::new(&client, prefix).await;
    harness::label_namespace(&client, &ns.name, "mtls-e2e/ks", Some(&label)).await;
    (client, auth, ns, label)
}

#[tokio::test]
async fn keystores_are_read_by_keytool_jsse_and_openssl_and_unchanged_inputs_rewrite_nothing() {
    let (client, auth, ns, label) = setup("keystores", json!({})).await;
    password_secret(&client, &ns.name, "keystore-password", "password", PASSWORD).await;
    let formats = json!([{"type": "CombinedPEM"}, {"type": "DER"}]);
    create_identity(
        &client,
        &ns.name,
        "web",
        &auth.name,
        json!({"serviceNames": ["web"], "keystores": keystores(None, "Modern2023"), "additionalOutputFormats": formats}),
    )
    .await;
    create_identity(
        &client,
        &ns.name,
        "client",
        &auth.name,
        json!({"keystores": keystores(Some("client"), "LegacyDES")}),
    )
    .await;
    create_identity(&client, &ns.name, "legacy", &auth.name, json!({"keystores": keystores(None, "LegacyRC2")})).await;
    for id in ["web", "client", "legacy"] {
        wait_identity_ready(&client, &ns.name, id).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let web = get_secret(&client, &ns.name, "web-mtls").await;
    let w = write_all(&tmp.path().join("web"), &web);
    let c = write_all(&tmp.path().join("client"), &get_secret(&client, &ns.name, "client-mtls").await);
    let l = write_all(&tmp.path().join("legacy"), &get_secret(&client, &ns.name, "legacy-mtls").await);

    // keytool reads every store with its password (and no store with a wrong one).
    for dir in [&w, &c, &l] {
        for (file, want) in
            [("keystore.p12", (1, 0)), ("keystore.jks", (1, 0)), ("truststore.p12", (0, 1)), ("truststore.jks", (0, 1))]
        {
            let path = dir.join(file);
            assert_eq!(keytool_list(&path, PASSWORD), Ok(want), "keytool -list {}", path.display());
            assert!(keytool_list(&path, "wrong-password").is_err(), "{} opens with a wrong password", path.display());
        }
    }
    // The bundle ConfigMap's truststores, with the passwords the authority names.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns.name).get(&format!("ks-{label}-bundle")).await.unwrap();
    std::fs::write(tmp.path().join("bundle.jks"), bytes(&cm.binary_data, "truststore.jks")).unwrap();
    std::fs::write(tmp.path().join("bundle.p12"), bytes(&cm.binary_data, "bundle.p12")).unwrap();
    assert_eq!(keytool_list(&tmp.path().join("bundle.jks"), "changeit"), Ok((0, 1)));
    assert_eq!(keytool_list(&tmp.path().join("bundle.p12"), "bundle-pass"), Ok((0, 1)));

    // OpenSSL: key.der and tls-combined.pem hold the key of tls.crt; the combined file is the key
    // then the chain, exactly.
    let pubkey = |args: &[&str]| {
        let (ok, out) = openssl(args);
        assert!(ok, "openssl {args:?}: {out}");
        out
    };
    let (crt, der, combined) = (w.join("tls.crt"), w.join("key.der"), w.join("tls-combined.pem"));
    let of_cert = pubkey(&["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()]);
    assert_eq!(pubkey(&["pkey", "-inform", "DER", "-pubout", "-in", der.to_str().unwrap()]), of_cert);
    assert_eq!(pubkey(&["pkey", "-pubout", "-in", combined.to_str().unwrap()]), of_cert);
    let text = |f: &str| std::fs::read_to_string(w.join(f)).unwrap();
    assert_eq!(text("tls-combined.pem"), format!("{}{}", text("tls.key"), text("tls.crt")));
    assert!(!l.join("tls-combined.pem").exists() && !c.join("key.der").exists(), "only what was asked for");

    // JSSE: each pair handshakes with only its PKCS#12 files, only its JKS files, the bundle
    // ConfigMap's truststores, and legacy profiles; the server's name is verified.
    let host = format!("web.{}.svc", ns.name);
    let hs = |server: [String; 2], client: [String; 2], host: &str| Handshake { server, client, host: host.into() };
    let p12 = |d: &Path| [store(d, "keystore.p12", PASSWORD), store(d, "truststore.p12", PASSWORD)];
    let jks = |d: &Path| [store(d, "keystore.jks", PASSWORD), store(d, "truststore.jks", PASSWORD)];
    let with_bundle = [store(&c, "keystore.jks", PASSWORD), store(tmp.path(), "bundle.jks", "changeit")];
    let results = jsse(&[
        hs(p12(&w), p12(&c), &host),
        hs(jks(&w), jks(&c), &host),
        hs(p12(&w), with_bundle.clone(), &host),
        hs(jks(&w), p12(&l), &host),
        hs([store(&w, "keystore.p12", PASSWORD), store(tmp.path(), "bundle.p12", "bundle-pass")], jks(&c), &host),
        // Controls: a name the server's certificate does not carry; a client key in a store of
        // another identity is still trusted (same authority), so the SPIFFE ID tells them apart.
        hs(p12(&w), p12(&c), &format!("api.{}.svc", ns.name)),
    ]);
    let web_id = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let id_of = |sa: &str| format!("spiffe://cluster.local/ns/{}/sa/{sa}", ns.name);
    let want = |client: &str| format!("ok server={web_id} client={}", id_of(client));
    assert_eq!(results[..5], [want("client"), want("client"), want("client"), want("legacy"), want("client")]);
    eprintln!("JSSE: {results:#?}");
    assert!(results[5].starts_with("fail") && results[5].contains("No subject alternative DNS name"), "{}", results[5]);

    // Unchanged inputs rewrite nothing: a change to the identity's metadata reconciles it (and the
    // Secret's template label makes the Secret itself rewritten) — its keystores stay byte for byte.
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);
    let patch = json!({"spec": {"secretTemplate": {"labels": {"touched": "yes"}}}});
    ids.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let relabelled = harness::wait_for(Duration::from_secs(30), || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { Some(get_secret(&client, &ns, "web-mtls").await).filter(|s| s.labels().contains_key("touched")) }
    })
    .await
    .expect("the Secret takes the template label");
    assert_eq!(relabelled.annotations().get("mtls.io/serial"), web.annotations().get("mtls.io/serial"));
    for k in ["keystore.p12", "truststore.p12", "keystore.jks", "truststore.jks", "tls-combined.pem", "key.der"] {
        assert_eq!(
            bytes(&relabelled.data, k),
            bytes(&web.data, k),
            "{k} was rewritten though nothing it holds changed"
        );
    }
    let cm_after = Api::<ConfigMap>::namespaced(client.clone(), &ns.name).get(&cm.name_any()).await.unwrap();
    assert_eq!(cm_after.resource_version(), cm.resource_version(), "the bundle ConfigMap was rewritten");

    // A new password (picked up on the next reconcile, here a change to the identity): the stores
    // are written again under it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let pw = json!({"stringData": {"password": "n3w-password"}});
    secrets.patch("keystore-password", &PatchParams::default(), &Patch::Merge(&pw)).await.unwrap();
    let patch = json!({"spec": {"secretTemplate": {"labels": {"touched": "again"}}}});
    ids.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let rekeyed = harness::wait_for(Duration::from_secs(30), || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { Some(get_secret(&client, &ns, "web-mtls").await).filter(|s| s.labels()["touched"] == "again") }
    })
    .await
    .expect("the Secret takes the new label");
    let r = write_all(&tmp.path().join("rekeyed"), &rekeyed);
    for f in ["keystore.p12", "truststore.p12", "keystore.jks", "truststore.jks"] {
        assert!(keytool_list(&r.join(f), "n3w-password").is_ok(), "{f} is not under the new password");
        assert!(keytool_list(&r.join(f), PASSWORD).is_err(), "{f} still opens with the old password");
    }

    // The authority stops asking for truststores: they leave every bundle ConfigMap (even those
    // it created rather than applied), and then nothing is written again and again.
    let auths: Api<MtlsAuthority> = Api::all(client.clone());
    let off = json!({"spec": {"trustBundle": {"additionalFormats": null}}});
    auths.patch(&auth.name, &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let plain = harness::wait_for(Duration::from_secs(30), || {
        let cms = cms.clone();
        let name = cm.name_any();
        async move { cms.get(&name).await.ok().filter(|c| c.binary_data.as_ref().is_none_or(|b| b.is_empty())) }
    })
    .await
    .expect("the truststores left the bundle ConfigMap");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = cms.get(&cm.name_any()).await.unwrap();
    assert_eq!(later.resource_version(), plain.resource_version(), "the bundle ConfigMap keeps being rewritten");
}

#[tokio::test]
async fn truststores_follow_a_ca_rotation_and_jsse_keeps_handshaking() {
    let (client, auth, ns, label) = setup("ks-rotation", json!({"propagationDelay": "2s", "reissueRate": 50})).await;
    password_secret(&client, &ns.name, "keystore-password", "password", PASSWORD).await;
    for (id, spec) in [("web", json!({"serviceNames": ["web"]})), ("client", json!({}))] {
        let mut spec = spec;
        spec["keystores"] = keystores(None, "Modern2023");
        create_identity(&client, &ns.name, id, &auth.name, spec).await;
    }
    for id in ["web", "client"] {
        wait_identity_ready(&client, &ns.name, id).await;
    }

    // Every distinct state of the two Secrets while the rotation runs (polled).
    patch_rotation(&client, &auth.name, json!({"trigger": "keystores"})).await;
    let mut states: Vec<(Secret, Secret)> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let web = get_secret(&client, &ns.name, "web-mtls").await;
        let cl = get_secret(&client, &ns.name, "client-mtls").await;
        let changed = states.last().is_none_or(|(w, c)| {
            w.resource_version() != web.resource_version() || c.resource_version() != cl.resource_version()
        });
        if changed {
            states.push((web, cl));
        }
        if stable_at(2)(&crate::fixtures::authority(&client, &auth.name).await) && !changed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rotation did not finish ({} states)", states.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(states.len() >= 3, "the rotation changed the Secrets in too few steps: {}", states.len());

    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<(PathBuf, PathBuf)> = states
        .iter()
        .enumerate()
        .map(|(i, (w, c))| {
            (write_all(&tmp.path().join(format!("{i}/web")), w), write_all(&tmp.path().join(format!("{i}/client")), c))
        })
        .collect();
    let host = format!("web.{}.svc", ns.name);
    let p12 = |d: &Path| [store(d, "keystore.p12", PASSWORD), store(d, "truststore.p12", PASSWORD)];
    let jks = |d: &Path| [store(d, "keystore.jks", PASSWORD), store(d, "truststore.jks", PASSWORD)];
    // Each state against itself and against the one before, both ways round (a pod holds the
    // previous files until kubelet swaps them), in both formats.
    let mut handshakes = vec![];
    let mut labels = vec![];
    for i in 0..dirs.len() {
        let prev = i.saturating_sub(1);
        for (s, c) in [(i, i), (i, prev), (prev, i)] {
            handshakes.push(Handshake { server: p12(&dirs[s].0), client: p12(&dirs[c].1), host: host.clone() });
            handshakes.push(Handshake { server: jks(&dirs[s].0), client: jks(&dirs[c].1), host: host.clone() });
            labels.push(format!("server state {s}, client state {c}, PKCS#12"));
            labels.push(format!("server state {s}, client state {c}, JKS"));
        }
    }
    // Control: the client's truststore from before the rotation against the server's final
    // keystore: only A against a leaf of B — refused, so the stores above did follow the bundle.
    let last = dirs.len() - 1;
    handshakes.push(Handshake { server: jks(&dirs[last].0), client: jks(&dirs[0].1), host: host.clone() });
    let results = jsse(&handshakes);
    for (label, r) in labels.iter().zip(&results) {
        assert!(r.starts_with("ok "), "{label}: {r}");
    }
    eprintln!(
        "rotation: {} states of the two Secrets, {} JSSE handshakes across them (PKCS#12 and JKS) all ok",
        states.len(),
        labels.len()
    );
    let control = results.last().unwrap();
    assert!(
        control.starts_with("fail") && control.contains("PKIX"),
        "the pre-rotation truststore trusted B: {control}"
    );

    // Afterwards the truststores and the bundle ConfigMap's hold exactly the new CA, as ca.crt does.
    let (web_dir, _) = &dirs[last];
    assert_eq!(keytool_list(&web_dir.join("truststore.p12"), PASSWORD), Ok((0, 1)));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns.name).get(&format!("ks-{label}-bundle")).await.unwrap();
    let ca = cm.data.as_ref().unwrap()["ca.crt"].clone();
    assert_eq!(ca.matches("BEGIN CERTIFICATE").count(), 1);
    std::fs::write(tmp.path().join("bundle.jks"), bytes(&cm.binary_data, "truststore.jks")).unwrap();
    let out = Command::new("keytool")
        .args(["-exportcert", "-rfc", "-storepass", "changeit", "-storetype", "JKS", "-keystore"])
        .arg(tmp.path().join("bundle.jks"))
        .args(["-alias", &keytool_alias(&tmp.path().join("bundle.jks"))])
        .output()
        .unwrap();
    let exported = String::from_utf8_lossy(&out.stdout).to_string();
    let norm = |s: &str| s.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    assert_eq!(norm(&exported), norm(&ca), "the ConfigMap's truststore.jks is not the new ca.crt");
}

/// The one alias in a store (keytool -list prints `alias, date, entryType,`).
fn keytool_alias(path: &Path) -> String {
    let out = Command::new("keytool")
        .args(["-list", "-storepass", "changeit", "-storetype", "JKS", "-keystore"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| l.contains("trustedCertEntry")).and_then(|l| l.split(',').next()).unwrap().to_string()
}

#[tokio::test]
async fn a_missing_password_secret_or_key_is_a_precise_reason_and_loses_nothing() {
    let (client, auth, ns, _) = setup("ks-password", json!({})).await;
    create_identity(&client, &ns.name, "web", &auth.name, json!({"keystores": keystores(None, "Modern2023")})).await;
    let id = wait_identity_reason(&client, &ns.name, "web", "PasswordSecretNotFound").await;
    let msg = &id.status.unwrap().conditions[0].message;
    assert!(msg.contains("keystore-password") && msg.contains("key password"), "{msg}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    assert!(secrets.get_opt("web-mtls").await.unwrap().is_none(), "a Secret was written without its keystores");

    // The Secret appears without the key: seen on the next retry (the password Secret is not watched).
    password_secret(&client, &ns.name, "keystore-password", "other", PASSWORD).await;
    let id = wait_identity_reason(&client, &ns.name, "web", "PasswordSecretKeyMissing").await;
    let msg = &id.status.unwrap().conditions[0].message;
    assert!(msg.contains("has no key password"), "{msg}");
    let pw = json!({"stringData": {"password": PASSWORD}});
    secrets.patch("keystore-password", &PatchParams::default(), &Patch::Merge(&pw)).await.unwrap();
    wait_identity_ready(&client, &ns.name, "web").await;
    let issued = get_secret(&client, &ns.name, "web-mtls").await;
    let serial = issued.annotations()["mtls.io/serial"].clone();

    // Issued, then the password Secret goes away: Ready=False, the Secret and its stores are kept.
    secrets.delete("keystore-password", &Default::default()).await.unwrap();
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);
    // (A change to the spec reconciles it at once; otherwise the periodic password check would.)
    let patch = json!({"spec": {"secretTemplate": {"annotations": {"nudge": "1"}}}});
    ids.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_identity_reason(&client, &ns.name, "web", "PasswordSecretNotFound").await;
    let kept = get_secret(&client, &ns.name, "web-mtls").await;
    assert_eq!(kept.annotations()["mtls.io/serial"], serial);
    assert_eq!(bytes(&kept.data, "keystore.p12"), bytes(&issued.data, "keystore.p12"));
    // No password in any Event about it.
    let events = harness::kubectl(&["get", "events", "-n", &ns.name, "-o", "json"]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("PasswordSecretNotFound"), "no Event for the missing password Secret");
    assert!(!events.contains(PASSWORD), "the password appears in an Event");
}
