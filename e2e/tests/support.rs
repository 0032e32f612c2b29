//! Helpers shared by the end-to-end tests (through `harness`) and the benchmark
//! (`e2e/bench/issuance.rs`): they return errors, and the test harness turns them into panics.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, anyhow};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A client for the control plane of the kubeconfig at `path`, checked to answer; `hint` says how
/// to get one when there is none.
pub async fn connect(path: &std::path::Path, hint: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| anyhow!("no local control plane: cannot read {} ({e}).\n{hint}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {} is not usable", path.display()))?;
    let client = Client::try_from(config).context("building a client from the kubeconfig")?;
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow!("the local control plane in {} does not answer: {e}.\n{hint}", path.display()))?;
    Ok(client)
}

/// Polls `f` every 100 ms until it returns Some, or gives up after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Server-side applies the checked-in `crds/*.yaml` (what a user applies) as `manager` and waits
/// until every CRD is Established.
pub async fn install_crds(client: &Client, manager: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = vec![];
    for entry in std::fs::read_dir(repo_root().join("crds")).context("reading crds/")? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying {}", path.display()))?;
        names.push(name);
    }
    for name in names {
        wait_for(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let conds = api.get(&name).await.ok()?.status?.conditions?;
                conds.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            }
        })
        .await
        .ok_or_else(|| anyhow!("CRD {name} did not become Established within 30 s"))?;
    }
    Ok(())
}

/// Minimal HTTP/1.0 GET for the operator's probes and metrics.
pub async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// `mtls-operator run` as the tests and the benchmark run it: managing `namespace`, probes and
/// metrics on 127.0.0.1:`port`, the control plane of `kubeconfig`, logging at `MTLS_E2E_LOG`
/// (default `info,kube=warn`), and stopping when its stdin closes (when the test process ends).
pub fn operator_args<'a>(
    command: &'a mut Command,
    namespace: &str,
    port: u16,
    kubeconfig: &std::path::Path,
) -> &'a mut Command {
    command
        .args(["run", "--namespace", namespace, "--listen", &format!("127.0.0.1:{port}"), "--exit-on-stdin-close"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", std::env::var("MTLS_E2E_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
}
