//! Shared end-to-end harness: a client for the local control plane started by
//! `e2e/cluster.sh up`, one operator process for the whole test binary, and a namespace per test.
//! There is no fallback: without a control plane every test fails with instructions.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

pub const OPERATOR_NAMESPACE: &str = "mtls-system";

#[path = "support.rs"]
mod support;
pub use support::{http_get, repo_root, wait_for};

pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("MTLS_E2E_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/e2e-cluster/kubeconfig"))
}

pub async fn client() -> Client {
    let hint = "Start it with `e2e/cluster.sh up`, or run the whole suite with `e2e/test.sh`.";
    support::connect(&kubeconfig_path(), hint).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A namespace owned by one test, deleted when the guard drops.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{:06x}", rand_u32() & 0xffffff);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"mtls-e2e": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create test namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("MTLS_E2E_KEEP").is_some() {
            return;
        }
        let name = self.name.clone();
        cleanup(move |client| async move {
            let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Runs `f` to completion from a destructor. The test's own runtime is single-threaded and busy
/// dropping us, so this uses a fresh thread, runtime and client (a client is tied to the runtime
/// that created it).
pub fn cleanup<F, Fut>(f: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move { f(client().await).await });
    })
    .join();
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u32
}

/// Applies the checked-in CRDs (what a user applies) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    support::install_crds(client, "mtls-e2e").await.unwrap_or_else(|e| panic!("{e:#}"));
}

/// What every operator process needs before it starts: the CRDs and its own namespace.
pub async fn install_crds_and_operator_namespace(client: &Client) {
    install_crds(client).await;
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": OPERATOR_NAMESPACE}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await;
}

pub struct Operator {
    pub metrics_url: String,
    pub log: PathBuf,
    _child: Child,
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts (once per test binary) the real operator binary against the local control plane,
/// after installing the CRDs and the operator namespace. The operator exits when this test
/// process does (its stdin closes).
pub async fn operator() -> &'static Operator {
    if let Some(op) = OPERATOR.get() {
        return op;
    }
    install_crds_and_operator_namespace(&client().await).await;
    let op = OPERATOR.get_or_init(|| {
        let port = free_port();
        let dir = kubeconfig_path().parent().map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let log = dir.join(format!("operator-e2e-{port}.log"));
        let out = std::fs::File::create(&log).expect("operator log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mtls-operator"));
        let child = support::operator_args(&mut command, OPERATOR_NAMESPACE, port, &kubeconfig_path())
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the operator binary");
        Operator { metrics_url: format!("http://127.0.0.1:{port}"), log, _child: child }
    });
    let ready = format!("{}/readyz", op.metrics_url);
    wait_for(Duration::from_secs(30), || {
        let ready = ready.clone();
        async move { http_get(&ready).await.ok().filter(|(code, _)| *code == 200).map(|_| ()) }
    })
    .await
    .unwrap_or_else(|| panic!("operator did not become ready; log: {}", op.log.display()));
    op
}

/// Sets (Some) or removes (None) one label of a namespace.
pub async fn label_namespace(client: &Client, ns: &str, key: &str, value: Option<&str>) {
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {key: value}}})))
        .await
        .unwrap();
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig_path()).output().expect("kubectl is installed")
}

/// An operator process a test starts, kills and restarts itself (crash, fault and leader tests).
#[allow(dead_code)] // used by the separate test binaries, not by `e2e`
/// Its output is appended to `log`; it also exits when the test process does (stdin closes).
pub struct OperatorProcess {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

#[allow(dead_code)]
impl OperatorProcess {
    pub fn start(args: &[&str], log: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mtls-operator"))
            .arg("run")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--exit-on-stdin-close"])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the operator binary");
        OperatorProcess { child, url: format!("http://127.0.0.1:{port}"), log: log.to_path_buf() }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The HTTP status of `/readyz` (None: no answer).
    pub async fn readyz(&self) -> Option<u16> {
        http_get(&format!("{}/readyz", self.url)).await.ok().map(|(code, _)| code)
    }

    /// Waits until `/readyz` answers `code`.
    pub async fn wait_readyz(&self, code: u16, timeout: Duration) -> bool {
        wait_for(timeout, || async { (self.readyz().await == Some(code)).then_some(()) }).await.is_some()
    }

    /// A sample's value from `/metrics`: `series` is the name with its labels, as exposed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.url)).await.ok()?;
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
