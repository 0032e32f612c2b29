//! Renewal end to end: short-lived certificates are renewed before they expire, with new serials
//! and new keys, while a server and a client that reload their files keep completing mutual-TLS
//! handshakes (rustls continuously, OpenSSL periodically).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::{
    fixtures::{
        TestAuthority, create_identity, data, openssl_mtls_handshake, wait_authority_ready, wait_identity_ready,
    },
    harness::{self, TestNamespace},
};

/// Writes `files` into `dir` the way kubelet does: a fresh directory, then an atomic swap of
/// the `..data` symlink.
pub fn project_files(dir: &Path, stamp: &str, files: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let target = dir.join(format!("..{stamp}"));
    std::fs::create_dir_all(&target).unwrap();
    for (k, v) in files {
        std::fs::write(target.join(k), v).unwrap();
    }
    let tmp = dir.join(format!("..data_tmp{stamp}"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// Projects an identity Secret into `dir`, with `tls.crt` etc. linking through `..data`.
pub fn project(dir: &Path, s: &Secret) {
    let rv = s.resource_version().unwrap_or_default();
    if dir.join(format!("..{rv}")).exists() {
        return;
    }
    let files = ["tls.crt", "tls.key", "ca.crt"].map(|k| (k, data(s, k).into_bytes()));
    project_files(dir, &rv, &files);
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(k);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(k), &link).unwrap();
        }
    }
}

/// The directory `..data` points at right now: reading every file from it gives one consistent
/// snapshot, which is how a careful workload reloads a projected Secret.
pub fn snapshot(dir: &Path) -> PathBuf {
    dir.join(std::fs::read_link(dir.join("..data")).unwrap())
}

fn secret_from_dir(d: &Path) -> Secret {
    let mut data = std::collections::BTreeMap::new();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        data.insert(k.to_string(), k8s_openapi::ByteString(std::fs::read(d.join(k)).unwrap()));
    }
    Secret { data: Some(data), ..Default::default() }
}

/// Emulated kubelet: polls the Secrets and projects every change after `delay`.
fn spawn_kubelet(client: Client, ns: String, secrets: Vec<(String, PathBuf)>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let api: Api<Secret> = Api::namespaced(client, &ns);
        while !stop.load(Ordering::Relaxed) {
            for (name, dir) in &secrets {
                if let Ok(s) = api.get(name).await {
                    project(dir, &s);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[tokio::test]
async fn short_lived_certificates_renew_before_expiry_while_mtls_keeps_working() {
    harness::operator().await;
    let client = harness::client().await;
    let auth = TestAuthority::create(&client, "renew", serde_json::json!({"leaf": {"minDuration": "1m"}})).await;
    wait_authority_ready(&client, &auth.name).await;
    let ns = TestNamespace::new(&client, "renew").await;
    let spec = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"duration": "2m", "renewBefore": "1m"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    create_identity(&client, &ns.name, "api", &auth.name, spec(serde_json::json!({"serviceNames": ["api"]}))).await;
    create_identity(&client, &ns.name, "caller", &auth.name, spec(serde_json::json!({"usages": ["ClientAuth"]}))).await;
    wait_identity_ready(&client, &ns.name, "api").await;
    wait_identity_ready(&client, &ns.name, "caller").await;

    let tmp = tempfile::tempdir().unwrap();
    let (sdir, cdir) = (tmp.path().join("api"), tmp.path().join("caller"));
    let stop = Arc::new(AtomicBool::new(false));
    spawn_kubelet(
        client.clone(),
        ns.name.clone(),
        vec![("api-mtls".into(), sdir.clone()), ("caller-mtls".into(), cdir.clone())],
        stop.clone(),
    );
    harness::wait_for(Duration::from_secs(10), || {
        let (s, c) = (sdir.clone(), cdir.clone());
        async move { (s.join("..data").exists() && c.join("..data").exists()).then_some(()) }
    })
    .await
    .expect("files projected");

    let (ok, failed, openssl_ok) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let server_name = format!("api.{}.svc", ns.name);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    // Per identity, every certificate seen: (serial, when first seen, public key, notAfter).
    let mut serials: HashMap<&'static str, Vec<(String, jiff::Timestamp, Vec<u8>, jiff::Timestamp)>> = HashMap::new();
    let mut round = 0u64;
    loop {
        round += 1;
        let (s_snap, c_snap) = (snapshot(&sdir), snapshot(&cdir));
        let (server, caller) = (secret_from_dir(&s_snap), secret_from_dir(&c_snap));
        for (who, sec) in [("api", &server), ("caller", &caller)] {
            let f = mtls_operator::core::pki::inspect_leaf(&data(sec, "tls.crt"), &data(sec, "tls.key")).unwrap();
            let list = serials.entry(who).or_default();
            if list.last().map(|(s, ..)| s) != Some(&f.facts.serial) {
                let spki = x509_spki(&data(sec, "tls.crt"));
                list.push((f.facts.serial.clone(), jiff::Timestamp::now(), spki, f.facts.not_after));
            }
        }
        match crate::fixtures::rustls_mtls_handshake(&server, &caller, &server_name) {
            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                failures.lock().unwrap().push(format!("rustls: {e}"));
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        if round % 20 == 0 {
            let name = server_name.clone();
            let r = tokio::task::spawn_blocking(move || openssl_mtls_handshake(&s_snap, &c_snap, &name)).await.unwrap();
            match r {
                Ok(_) => openssl_ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    failures.lock().unwrap().push(format!("openssl: {e}"));
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        let renewals = |who| serials.get(who).map_or(0, |l: &Vec<_>| l.len().saturating_sub(1));
        if renewals("api") >= 2 && renewals("caller") >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not enough renewals in time: {serials:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);

    eprintln!(
        "renewals observed: api {}, caller {}; handshakes: {} rustls, {} openssl, {} failed",
        serials["api"].len() - 1,
        serials["caller"].len() - 1,
        ok.load(Ordering::Relaxed),
        openssl_ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed handshakes: {:?}", failures.lock().unwrap());
    assert!(ok.load(Ordering::Relaxed) > 100, "rustls handshakes: {}", ok.load(Ordering::Relaxed));
    assert!(openssl_ok.load(Ordering::Relaxed) > 5, "openssl handshakes: {}", openssl_ok.load(Ordering::Relaxed));
    for (who, list) in &serials {
        for pair in list.windows(2) {
            let ((s1, _, k1, not_after1), (s2, seen2, k2, _)) = (&pair[0], &pair[1]);
            assert_ne!(s1, s2);
            assert_ne!(k1, k2, "{who}: renewal must use a new key");
            assert!(
                seen2 < not_after1,
                "{who}: certificate {s2} arrived at {seen2}, after {s1} expired at {not_after1}"
            );
        }
    }
}

fn x509_spki(pem_text: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = &mtls_operator::core::pki::parse_pem_certs("t", pem_text).unwrap()[0];
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    c.public_key().raw.to_vec()
}
