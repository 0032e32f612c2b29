//! Fixtures shared by the end-to-end test modules: test authorities, identities and their
//! waits, Secret contents, TLS checks with OpenSSL and rustls, and steering rotations.

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

use crate::harness::{self, OPERATOR_NAMESPACE};

pub const WAIT: Duration = Duration::from_secs(30);

/// A cluster-scoped authority owned by one test; deleted (with its CA Secrets) on drop.
pub struct TestAuthority {
    pub name: String,
}

impl TestAuthority {
    /// Unless the test says otherwise, the authority's bundle goes only to namespaces labelled
    /// `mtls-e2e/bundle=<name>`, under a ConfigMap name of its own, so that parallel tests do not
    /// publish into each other's namespaces.
    pub async fn create(client: &Client, prefix: &str, spec: serde_json::Value) -> Self {
        let name = format!("{prefix}-{:06x}", harness::rand_u32() & 0xffffff);
        let mut spec = spec;
        if spec.get("trustBundle").is_none() {
            spec["trustBundle"] = serde_json::json!({
                "configMapName": format!("{name}-bundle"),
                "namespaceSelector": {"matchLabels": {"mtls-e2e/bundle": name}}
            });
        }
        let obj: MtlsAuthority =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        Api::<MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &obj).await.unwrap();
        TestAuthority { name }
    }
}

impl Drop for TestAuthority {
    fn drop(&mut self) {
        if std::env::var_os("MTLS_E2E_KEEP").is_some() {
            return;
        }
        let name = self.name.clone();
        harness::cleanup(move |client| async move {
            let _ = Api::<MtlsAuthority>::all(client.clone()).delete(&name, &DeleteParams::default()).await;
            let secrets: Api<Secret> = Api::namespaced(client, OPERATOR_NAMESPACE);
            let _ = secrets
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&format!("mtls.io/authority={name}")),
                )
                .await;
        });
    }
}

fn ready_reason(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Option<(String, String)> {
    conds.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

pub async fn wait_authority_ready(client: &Client, name: &str) -> MtlsAuthority {
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    harness::wait_for(WAIT, || {
        let api = api.clone();
        async move {
            let a = api.get(name).await.ok()?;
            let st = a.status.as_ref()?;
            (ready_reason(&st.conditions)? == ("True".into(), "CaReady".into())).then_some(a)
        }
    })
    .await
    .unwrap_or_else(|| panic!("authority {name} did not become Ready"))
}

pub async fn wait_authority_reason(client: &Client, name: &str, reason: &str) -> MtlsAuthority {
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    let found = harness::wait_for(WAIT, || {
        let api = api.clone();
        async move {
            let a = api.get(name).await.ok()?;
            (ready_reason(&a.status.as_ref()?.conditions)?.1 == reason).then_some(a)
        }
    })
    .await;
    match found {
        Some(a) => a,
        None => panic!(
            "authority {name} never reported {reason}; status: {:?}",
            api.get(name).await.ok().and_then(|a| a.status)
        ),
    }
}

pub async fn create_identity(client: &Client, ns: &str, name: &str, authority: &str, spec: serde_json::Value) {
    let mut spec = spec;
    spec["authorityRef"] = authority.into();
    let obj: MtlsIdentity =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<MtlsIdentity>::namespaced(client.clone(), ns).create(&PostParams::default(), &obj).await.unwrap();
}

/// Waits until the identity is Ready and observed at its current generation.
pub async fn wait_identity_ready(client: &Client, ns: &str, name: &str) -> MtlsIdentity {
    wait_identity(client, ns, name, |id| {
        let st = id.status.as_ref();
        st.and_then(|s| ready_reason(&s.conditions)).is_some_and(|r| r.0 == "True")
            && st.and_then(|s| s.observed_generation) == id.metadata.generation
    })
    .await
}

pub async fn wait_identity_reason(client: &Client, ns: &str, name: &str, reason: &str) -> MtlsIdentity {
    wait_identity(client, ns, name, |id| {
        id.status.as_ref().and_then(|s| ready_reason(&s.conditions)).is_some_and(|r| r.0 == "False" && r.1 == reason)
    })
    .await
}

async fn wait_identity(client: &Client, ns: &str, name: &str, f: impl Fn(&MtlsIdentity) -> bool) -> MtlsIdentity {
    let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), ns);
    let f = Arc::new(f);
    let found = harness::wait_for(WAIT, || {
        let (api, f) = (api.clone(), f.clone());
        async move { api.get(name).await.ok().filter(|i| f(i)) }
    })
    .await;
    match found {
        Some(i) => i,
        None => panic!(
            "identity {ns}/{name} did not reach the expected state; status: {:?}",
            api.get(name).await.ok().and_then(|i| i.status)
        ),
    }
}

pub fn data(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap().get(key).unwrap_or_else(|| panic!("Secret lacks {key}")).0.clone())
        .unwrap()
}

pub async fn get_secret(client: &Client, ns: &str, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), ns).get(name).await.unwrap()
}

/// Writes a Secret's files the way a pod would see them.
pub fn write_files(dir: &Path, s: &Secret) {
    std::fs::create_dir_all(dir).unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.join(k), data(s, k)).unwrap();
    }
}

pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect("openssl is installed");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `openssl verify` of tls.crt (with its intermediates) against ca.crt for `purpose`.
pub fn openssl_verify(dir: &Path, purpose: &str) -> (bool, String) {
    let pems = pem::parse_many(std::fs::read_to_string(dir.join("tls.crt")).unwrap()).unwrap();
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, pem::encode(&pems[0])).unwrap();
    let untrusted = dir.join("untrusted.pem");
    std::fs::write(&untrusted, pems[1..].iter().map(pem::encode).collect::<String>()).unwrap();
    let mut args = vec!["verify", "-x509_strict", "-purpose", purpose, "-CAfile"];
    let ca = dir.join("ca.crt");
    args.push(ca.to_str().unwrap());
    if pems.len() > 1 {
        args.push("-untrusted");
        args.push(untrusted.to_str().unwrap());
    }
    args.push(leaf.to_str().unwrap());
    openssl(&args)
}

/// A real mutual-TLS handshake between two identities with `openssl s_server` / `s_client`: the
/// server demands and verifies a client certificate, the client verifies the server's chain and
/// host name.
pub fn openssl_mtls_handshake(server: &Path, client: &Path, server_name: &str) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = |d: &Path, f: &str| d.join(f).to_str().unwrap().to_string();
    let mut srv = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-Verify", "2", "-verify_return_error", "-quiet"])
        .args(["-cert", &p(server, "tls.crt"), "-key", &p(server, "tls.key"), "-CAfile", &p(server, "ca.crt")])
        .args(["-cert_chain", &p(server, "tls.crt")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            let _ = srv.kill();
            return Err("s_server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cli = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-verify_return_error",
            "-verify_hostname",
            server_name,
        ])
        .args(["-cert", &p(client, "tls.crt"), "-key", &p(client, "tls.key"), "-CAfile", &p(client, "ca.crt")])
        .args(["-cert_chain", &p(client, "tls.crt"), "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let _ = srv.kill();
    let srv_out = srv.wait_with_output().unwrap();
    let client_out = format!("{}{}", String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));
    let server_out =
        format!("{}{}", String::from_utf8_lossy(&srv_out.stdout), String::from_utf8_lossy(&srv_out.stderr));
    // The server printed its verification of the client certificate chain.
    let server_verified_client = server_out.contains("depth=0") && !server_out.contains("verify error");
    if cli.status.success() && client_out.contains("Verification: OK") && server_verified_client {
        Ok(client_out)
    } else {
        Err(format!("client:\n{client_out}\nserver:\n{server_out}"))
    }
}

/// One side of an in-memory mutual-TLS connection: its chain, key and the roots it trusts.
pub struct Side {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub roots: Arc<rustls::RootCertStore>,
}

pub fn roots_from_pem(pem_bytes: &[u8]) -> Arc<rustls::RootCertStore> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem_bytes).flatten() {
        let _ = r.add(c);
    }
    Arc::new(r)
}

/// A mutual-TLS handshake in memory with rustls + webpki (a stack independent of OpenSSL and of
/// the operator's own certificate code): the server requires and verifies a client certificate
/// against its roots, the client verifies the server's chain and `server_name` against its own.
/// Returns the leaf each side saw: (client's, as seen by the server; server's, as seen by the client).
pub fn mtls_in_memory(
    server: &Side,
    client: &Side,
    server_name: &str,
) -> Result<(rustls::pki_types::CertificateDer<'static>, rustls::pki_types::CertificateDer<'static>), String> {
    use rustls::{
        ClientConfig, ClientConnection, ServerConfig, ServerConnection, pki_types::ServerName,
        server::WebPkiClientVerifier,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(server.roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let scfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .map_err(|e| e.to_string())?;
    let ccfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(client.roots.clone())
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .map_err(|e| e.to_string())?;
    let mut sc = ServerConnection::new(Arc::new(scfg)).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let mut cc = ClientConnection::new(Arc::new(ccfg), name).map_err(|e| e.to_string())?;
    for _ in 0..10 {
        let mut buf = vec![];
        cc.write_tls(&mut buf).unwrap();
        sc.read_tls(&mut &buf[..]).unwrap();
        sc.process_new_packets().map_err(|e| format!("server rejected the client: {e}"))?;
        let mut buf = vec![];
        sc.write_tls(&mut buf).unwrap();
        cc.read_tls(&mut &buf[..]).unwrap();
        cc.process_new_packets().map_err(|e| format!("client rejected the server: {e}"))?;
        if !cc.is_handshaking() && !sc.is_handshaking() {
            let seen_client = sc.peer_certificates().ok_or("no client certificate")?[0].clone().into_owned();
            let seen_server = cc.peer_certificates().ok_or("no server certificate")?[0].clone().into_owned();
            return Ok((seen_client, seen_server));
        }
    }
    Err("handshake did not complete".into())
}

/// The SPIFFE URI(s) of a DER certificate, comma-separated.
pub fn spiffe_of(cert: &rustls::pki_types::CertificateDer<'_>) -> String {
    let pem_text = mtls_operator::core::pki::der_to_pem(cert);
    mtls_operator::core::pki::inspect_leaf(&pem_text, "").map(|f| f.uris.join(",")).unwrap_or_default()
}

/// [`mtls_in_memory`] between two identity Secrets, each trusting its own `ca.crt`. Returns the
/// SPIFFE URI of the client as seen by the server.
pub fn rustls_mtls_handshake(server: &Secret, client: &Secret, server_name: &str) -> Result<String, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let side = |s: &Secret| Side {
        chain: CertificateDer::pem_slice_iter(data(s, "tls.crt").as_bytes()).collect::<Result<Vec<_>, _>>().unwrap(),
        key: PrivateKeyDer::from_pem_slice(data(s, "tls.key").as_bytes()).unwrap(),
        roots: roots_from_pem(data(s, "ca.crt").as_bytes()),
    };
    let (seen_client, _) = mtls_in_memory(&side(server), &side(client), server_name)?;
    Ok(spiffe_of(&seen_client).split(',').next().unwrap_or_default().to_string())
}

pub fn x509_text(dir: &Path) -> String {
    openssl(&["x509", "-noout", "-text", "-in", dir.join("leaf.pem").to_str().unwrap()]).1
}

// Rotations: steer an authority's and follow its phases.

pub async fn authority(client: &Client, name: &str) -> MtlsAuthority {
    Api::<MtlsAuthority>::all(client.clone()).get(name).await.unwrap()
}

pub async fn patch_rotation(client: &Client, name: &str, rotation: serde_json::Value) {
    Api::<MtlsAuthority>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"rotation": rotation}})))
        .await
        .unwrap();
}

/// Polls the authority until `done`, recording every phase seen.
pub async fn watch_phases(
    client: &Client,
    name: &str,
    timeout: Duration,
    done: impl Fn(&MtlsAuthority) -> bool,
) -> Vec<String> {
    let mut phases: Vec<String> = vec![];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let a = authority(client, name).await;
        if let Some(p) = a.status.as_ref().and_then(|s| s.phase.clone()) {
            if phases.last() != Some(&p) {
                phases.push(p);
            }
        }
        if done(&a) {
            return phases;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation did not finish; phases so far {phases:?}; status {:?}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn stable_at(generation: u32) -> impl Fn(&MtlsAuthority) -> bool {
    move |a| {
        a.status
            .as_ref()
            .and_then(|s| s.rotation.as_ref())
            .is_some_and(|r| r.phase == mtls_operator::api::Phase::Stable && r.from == generation && r.to.is_none())
    }
}
