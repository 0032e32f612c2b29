//! Issuance benchmark (not a test): creates N `MtlsIdentity` objects on a real local control plane
//! and measures how long each takes from its create call to the first watch event that shows it
//! `Ready=True`, plus the overall throughput.
//!
//! Run it with `e2e/bench.sh [--identities N] [--namespaces M] [--concurrency C] [--rate R]`,
//! which brings up a private control plane, or against a running one with
//! `MTLS_E2E_KUBECONFIG=<kubeconfig> cargo bench --bench issuance -- <args>`. By default the
//! creates are one burst (C in flight); `--rate R` paces them at R per second instead, to measure
//! latency below saturation.
//!
//! Besides throughput and latency it reports where the time went: CPU used by each control-plane
//! process, the operator and this benchmark during the run, and the API server's request counts
//! and mean latencies by verb and resource.
//!
//! The scale mode adds, each behind a flag: `--unrelated-secrets U` (U unrelated Secrets in the
//! cluster before the operator starts, reused if present), `--idle S` (S seconds of nothing after
//! all are Ready: the operator's CPU and API requests), `--rotation` (a full CA rotation of all N,
//! timed to Stable), `--ceiling` (a plain client creating N Secrets of the same size at the same
//! concurrency, operator stopped: the ratio of the operator's time to it is the headline) and
//! `--chart PATH` (a PNG of throughput, latency and the operator's memory and CPU; one is always
//! written under `target/bench-logs/`). The operator's RSS and CPU are sampled from `/proc` for
//! the whole run and reported per phase.
//!
//! The operator under test is the real binary of this build profile, started here and tied to
//! this process through its stdin. Its own settings can be changed through its environment
//! variables (e.g. `MTLS_CONCURRENCY`, `MTLS_ISSUANCE_RATE`, `MTLS_ISSUANCE_BURST`), which it
//! inherits.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

mod ceiling;
mod chart;
mod floor;
mod procstat;
mod rotation;
mod unrelated;

use procstat::{PhaseStart, PhaseUse, Sampler, mib, process_cpu_seconds};

const OPERATOR_NAMESPACE: &str = "mtls-system";
const NAMESPACE_PREFIX: &str = "bench";
const BENCH_LABEL: &str = "mtls-bench";
const USAGE: &str = "usage: cargo bench --bench issuance -- [--identities N] [--namespaces M] [--concurrency C] \
                     [--rate PER_SECOND] [--timeout SECONDS] [--authority NAME] \
                     [--unrelated-secrets U] [--unrelated-namespaces K] [--unrelated-concurrency C] \
                     [--idle SECONDS] [--rotation] [--propagation-delay 5s] [--reissue-rate R] \
                     [--ceiling] [--floor] [--floor-concurrency C] [--chart PATH.png]";
/// Name of the trust bundle ConfigMap the benchmark's authority publishes to its namespaces.
const BUNDLE_CONFIGMAP: &str = "bench-bundle";

struct Args {
    identities: usize,
    namespaces: usize,
    concurrency: usize,
    /// Creates started per second at most; None: as fast as `concurrency` allows (a burst).
    rate: Option<f64>,
    timeout: Duration,
    authority: String,
    /// Unrelated Secrets present in the cluster before the operator starts (0: none).
    unrelated_secrets: usize,
    unrelated_namespaces: usize,
    unrelated_concurrency: usize,
    /// Seconds of nothing after all are Ready, measured (None: skipped).
    idle: Option<Duration>,
    rotation: bool,
    propagation_delay: String,
    reissue_rate: u32,
    ceiling: bool,
    /// The contract floor (see floor.rs), operator stopped.
    floor: bool,
    /// Objects in flight in the floor's steps (default 4 x concurrency).
    floor_concurrency: Option<usize>,
    /// Where to copy the chart (it is always written under target/bench-logs/).
    chart: Option<PathBuf>,
}

impl Args {
    /// Objects in flight in the floor's steps: enough to saturate the API server.
    fn floor_concurrency(&self) -> usize {
        self.floor_concurrency.unwrap_or(4 * self.concurrency)
    }

    fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            identities: 1000,
            namespaces: 10,
            concurrency: 32,
            rate: None,
            timeout: Duration::from_secs(600),
            authority: "bench".into(),
            unrelated_secrets: 0,
            unrelated_namespaces: 100,
            unrelated_concurrency: 64,
            idle: None,
            rotation: false,
            propagation_delay: "5s".into(),
            reissue_rate: 1000,
            ceiling: false,
            floor: false,
            floor_concurrency: None,
            chart: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> anyhow::Result<String> {
                inline.clone().or_else(|| it.next()).ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
            };
            let number = |name: &str, v: String| -> anyhow::Result<usize> {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("{name} must be a positive integer, not {v:?}\n{USAGE}"))
            };
            match flag.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--identities" => a.identities = number(&flag, value(&flag)?)?,
                "--namespaces" => a.namespaces = number(&flag, value(&flag)?)?,
                "--concurrency" => a.concurrency = number(&flag, value(&flag)?)?,
                "--rate" => {
                    let v = value(&flag)?;
                    let r = v.parse::<f64>().ok().filter(|r| *r > 0.0 && r.is_finite());
                    a.rate = Some(r.ok_or_else(|| anyhow!("--rate must be a positive number, not {v:?}\n{USAGE}"))?);
                }
                "--timeout" => a.timeout = Duration::from_secs(number(&flag, value(&flag)?)? as u64),
                "--authority" => a.authority = value(&flag)?,
                "--unrelated-secrets" => a.unrelated_secrets = number(&flag, value(&flag)?)?,
                "--unrelated-namespaces" => a.unrelated_namespaces = number(&flag, value(&flag)?)?,
                "--unrelated-concurrency" => a.unrelated_concurrency = number(&flag, value(&flag)?)?,
                "--idle" => a.idle = Some(Duration::from_secs(number(&flag, value(&flag)?)? as u64)),
                "--rotation" => a.rotation = true,
                "--propagation-delay" => a.propagation_delay = value(&flag)?,
                "--reissue-rate" => a.reissue_rate = number(&flag, value(&flag)?)? as u32,
                "--ceiling" => a.ceiling = true,
                "--floor" => a.floor = true,
                "--floor-concurrency" => a.floor_concurrency = Some(number(&flag, value(&flag)?)?),
                "--chart" => a.chart = Some(PathBuf::from(value(&flag)?)),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(a)
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Which operator source was measured: the commit, and whether `src/` had uncommitted changes.
fn source_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match (git(&["rev-parse", "--short=12", "HEAD"]), git(&["status", "--porcelain", "--", "src", "Cargo.toml"])) {
        (Some(commit), Some(dirty)) if dirty.is_empty() => format!("commit {commit}, src/ clean"),
        (Some(commit), Some(dirty)) => {
            format!("commit {commit} + uncommitted changes in {} file(s) under src/", dirty.lines().count())
        }
        _ => "unknown (no git)".into(),
    }
}

fn kubeconfig_path() -> PathBuf {
    std::env::var_os("MTLS_E2E_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench-cluster/kubeconfig"))
}

fn main() {
    // `cargo test --all-targets` (e2e/test.sh) also runs bench targets, without `--bench` and with
    // the test filters as arguments: a thousand identities have no place in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("issuance benchmark: skipped (not run by `cargo bench`); run it with e2e/bench.sh");
        return;
    }
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("\nbenchmark FAILED: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Machine and cluster set-up
// ---------------------------------------------------------------------------------------------

struct Machine {
    cores: usize,
    cpu: String,
    memory_gib: f64,
    load: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            load,
        }
    }
}

async fn connect() -> anyhow::Result<Client> {
    let path = kubeconfig_path();
    let hint = "bring one up with `e2e/bench.sh` (which runs this benchmark), or point MTLS_E2E_KUBECONFIG \
                at the kubeconfig of a running control plane (`e2e/cluster.sh up`)";
    let kc = Kubeconfig::read_from(&path)
        .map_err(|e| anyhow!("no control plane: cannot read kubeconfig {} ({e}); {hint}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {} is not usable", path.display()))?;
    let client = Client::try_from(config).context("building a client from the kubeconfig")?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| anyhow!("the control plane of {} does not answer: {e}; {hint}", path.display()))?;
    println!("control plane: {} (Kubernetes {})", path.display(), version.git_version);
    Ok(client)
}

/// Polls `f` every 100 ms until it returns Some, or gives up after `timeout`.
async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
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

/// Server-side applies `crds/*.yaml` and waits until every CRD is Established.
async fn install_crds(client: &Client) -> anyhow::Result<()> {
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
        api.patch(&name, &PatchParams::apply("mtls-bench").force(), &Patch::Apply(&crd))
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

fn namespace_object(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
        .expect("a valid Namespace")
}

/// Creates the namespace with these labels unless it exists.
async fn ensure_namespace(client: &Client, name: &str, labels: &serde_json::Value) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace_object(name, labels.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Deletes the namespaces a previous (interrupted) run left behind and waits until they are gone,
/// so that their identities cannot be counted or issued during this run.
async fn remove_leftover_namespaces(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=true"));
    let leftovers = api.list_metadata(&lp).await.context("listing namespaces")?;
    if leftovers.items.is_empty() {
        return Ok(());
    }
    println!("removing {} namespace(s) left by an earlier run ...", leftovers.items.len());
    for ns in &leftovers.items {
        let _ = api.delete(&ns.name_any(), &DeleteParams::background()).await;
    }
    wait_for(Duration::from_secs(300), || {
        let (api, lp) = (api.clone(), lp.clone());
        async move { api.list_metadata(&lp).await.ok().filter(|l| l.items.is_empty()).map(|_| ()) }
    })
    .await
    .ok_or_else(|| anyhow!("namespaces labelled {BENCH_LABEL}=true were not deleted within 5 minutes"))
}

// ---------------------------------------------------------------------------------------------
// The operator process
// ---------------------------------------------------------------------------------------------

struct Operator {
    child: Child,
    /// The operator's own process (not a wrapper's).
    pid: u32,
    url: String,
    log: PathBuf,
    /// When the process was started.
    started: Instant,
    /// Its RSS and CPU, read every 250 ms from the moment it was started.
    sampler: Sampler,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Operator {
    /// Starts the operator binary of this build profile and waits for its `/readyz`.
    async fn start() -> anyhow::Result<Operator> {
        let port = free_port()?;
        let dir = repo_root().join("target/bench-logs");
        std::fs::create_dir_all(&dir)?;
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        let log = dir.join(format!("operator-{stamp}-{port}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // MTLS_BENCH_WRAPPER runs the operator under another program, e.g. a heap profiler:
        // `MTLS_BENCH_WRAPPER="heaptrack -o target/bench-logs/heap"`. RSS and CPU are still
        // those of the operator's own process, found among the wrapper's descendants.
        let wrapper: Vec<String> =
            std::env::var("MTLS_BENCH_WRAPPER").unwrap_or_default().split_whitespace().map(String::from).collect();
        let operator_bin = env!("CARGO_BIN_EXE_mtls-operator");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(operator_bin);
                c
            }
            None => Command::new(operator_bin),
        };
        let child = command
            .args([
                "run",
                "--namespace",
                OPERATOR_NAMESPACE,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--exit-on-stdin-close",
            ])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", std::env::var("MTLS_E2E_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the operator binary")?;
        let pid = if wrapper.is_empty() {
            child.id()
        } else {
            procstat::find_process(child.id(), Path::new(operator_bin), Duration::from_secs(10))
                .context("the operator process did not appear under MTLS_BENCH_WRAPPER")?
        };
        let sampler = Sampler::start(pid, Duration::from_millis(250));
        let mut op =
            Operator { child, pid, url: format!("http://127.0.0.1:{port}"), log, started: Instant::now(), sampler };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&format!("{}/readyz", op.url)).await {
                return Ok(op);
            }
            if let Some(status) = op.child.try_wait()? {
                bail!("the operator exited ({status}) before it was ready:\n{}", tail(&op.log, 20));
            }
            if Instant::now() >= deadline {
                bail!("the operator was not ready within 60 s:\n{}", tail(&op.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> anyhow::Result<Metrics> {
        let (code, body) = http_get(&format!("{}/metrics", self.url)).await.context("scraping /metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(Metrics::parse(&body))
    }

    /// Closes its stdin (it then shuts down gracefully) and waits for it to exit.
    fn stop(&mut self) {
        self.sampler.stop();
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("the operator did not stop within 10 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Minimal HTTP/1.0 GET for the operator's probes and metrics.
async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
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

/// The few operator metrics the report uses, summed over their label sets.
#[derive(Default, Clone)]
struct Metrics {
    /// `mtls_operator_issuances_total` by `kind`.
    issuances: BTreeMap<String, f64>,
    reconciles: f64,
    /// `mtls_operator_reconcile_errors_total` by `reason`.
    errors: BTreeMap<String, f64>,
    issuance_seconds_sum: f64,
    issuance_seconds_count: f64,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| {
                labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim_end_matches('}').trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            match name {
                "mtls_operator_issuances_total" => *m.issuances.entry(label("kind")).or_default() += value,
                "mtls_operator_reconciles_total" => m.reconciles += value,
                "mtls_operator_reconcile_errors_total" => *m.errors.entry(label("reason")).or_default() += value,
                "mtls_operator_issuance_duration_seconds_sum" => m.issuance_seconds_sum += value,
                "mtls_operator_issuance_duration_seconds_count" => m.issuance_seconds_count += value,
                _ => {}
            }
        }
        m
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &Metrics) -> Metrics {
        let diff = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        };
        Metrics {
            issuances: diff(&self.issuances, &before.issuances),
            reconciles: self.reconciles - before.reconciles,
            errors: diff(&self.errors, &before.errors),
            issuance_seconds_sum: self.issuance_seconds_sum - before.issuance_seconds_sum,
            issuance_seconds_count: self.issuance_seconds_count - before.issuance_seconds_count,
        }
    }

    fn total_issuances(&self) -> f64 {
        self.issuances.values().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------------------------

fn is_ready(id: &MtlsIdentity) -> bool {
    id.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn ready_reason(id: &MtlsIdentity) -> String {
    id.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| format!("Ready={} {}", c.status, c.reason))
        .unwrap_or_else(|| "no Ready condition yet".into())
}

/// What the watch saw, stamped with the local time the event arrived.
enum Seen {
    Synced,
    First(String, Instant),
    Ready(String, Instant),
}

/// Watches every `MtlsIdentity` and reports, once per object, when it first appears and when it
/// is first Ready.
fn spawn_watch(client: &Client) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let api: Api<MtlsIdentity> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let (mut seen, mut ready) = (HashSet::new(), HashSet::new());
        let mut synced = false;
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let obj = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    if !synced {
                        synced = true;
                        let _ = tx.send(Seen::Synced);
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("watch error (retrying): {e}");
                    continue;
                }
            };
            let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
            if seen.insert(key.clone()) && tx.send(Seen::First(key.clone(), now)).is_err() {
                return;
            }
            if is_ready(&obj) && ready.insert(key.clone()) && tx.send(Seen::Ready(key, now)).is_err() {
                return;
            }
        }
    });
    rx
}

fn identity_name(i: usize) -> String {
    format!("id-{i}")
}

fn namespace_name(i: usize) -> String {
    format!("{NAMESPACE_PREFIX}-{i}")
}

#[derive(Clone, Copy, Default)]
struct Timing {
    create_start: Option<Instant>,
    create_done: Option<Instant>,
    first_seen: Option<Instant>,
    ready: Option<Instant>,
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{:.2} s", d.as_secs_f64()) } else { format!("{} ms", d.as_millis()) }
}

fn distribution(mut ds: Vec<Duration>) -> String {
    ds.sort();
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&ds, 0.50)),
        ms(percentile(&ds, 0.90)),
        ms(percentile(&ds, 0.99)),
        ms(ds.last().copied().unwrap_or_default())
    )
}

/// Everything the phases measured, for the summary and the chart.
#[derive(Default)]
struct Outcome {
    issuance: Option<Issuance>,
    idle: Option<Idle>,
    rotation: Option<(rotation::Rotation, ApiDelta)>,
    /// One of the operator's identity Secrets, the model for the ceiling's.
    template: Option<Secret>,
    /// Its identity, whose status the floor writes.
    identity_template: Option<MtlsIdentity>,
    phases: Vec<PhaseUse>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let machine = Machine::read();
    let client = connect().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE, &serde_json::json!({})).await?;
    remove_leftover_namespaces(&client).await?;
    let unrelated = if args.unrelated_secrets > 0 {
        let u =
            unrelated::ensure(&client, args.unrelated_secrets, args.unrelated_namespaces, args.unrelated_concurrency)
                .await
                .context("creating the unrelated Secrets")?;
        println!(
            "unrelated Secrets: {} in {} namespaces ({} already there, {} created in {:.1} s{})",
            args.unrelated_secrets,
            args.unrelated_namespaces,
            u.present,
            u.created,
            u.took.as_secs_f64(),
            if u.created > 0 {
                format!(
                    ", {:.0}/s, mean {} bytes of data",
                    u.created as f64 / u.took.as_secs_f64(),
                    u.bytes / u.created
                )
            } else {
                String::new()
            }
        );
        Some(u)
    } else {
        None
    };

    let mut operator = Operator::start().await?;
    println!("operator: ready at {} (log: {})", operator.url, operator.log.display());
    let mut outcome = Outcome {
        phases: vec![PhaseStart::since_process_start("start-up", operator.started).finish(&operator.sampler)],
        ..Default::default()
    };
    let result = phases(&client, &args, &machine, &operator, &mut outcome).await;
    let samples = operator.sampler.samples();
    operator.stop();
    let log = operator.log.clone();
    report_operator_log(&log);
    // What the control plane does by itself over the idle window, to tell the operator's requests
    // from its own.
    if let (Ok(()), Some(idle)) = (&result, outcome.idle.as_mut()) {
        println!();
        println!("baseline: {} s with the operator stopped ...", idle.window.as_secs());
        let before = ApiRequests::scrape(&client).await;
        tokio::time::sleep(idle.window).await;
        if let (Some(a), Some(b)) = (before, ApiRequests::scrape(&client).await) {
            let base = b.since(&a);
            println!("  API server requests: {}", base.busiest(6).join("; "));
            idle.baseline = Some(base);
        }
    }
    // The ceiling, with the operator stopped: a plain client against the same API server.
    let ceiling = match (&result, &outcome.template) {
        (Ok(()), Some(template)) if args.ceiling => {
            let m = args.namespaces.min(args.identities);
            println!();
            println!(
                "ceiling: a plain client creates {} Secrets like the operator's in {m} namespaces, {} in flight (operator stopped) ...",
                args.identities, args.concurrency
            );
            let api_before = ApiRequests::scrape(&client).await;
            let c = ceiling::run(
                &client,
                template,
                |i| format!("{}-mtls", identity_name(i)),
                args.identities,
                m,
                args.concurrency,
                serde_json::json!({BENCH_LABEL: "true"}),
            )
            .await;
            if let (Ok(c), Some(before), Some(after)) = (&c, api_before, ApiRequests::scrape(&client).await) {
                println!(
                    "ceiling:          {} Secrets ({} bytes of data each) in {:.2} s ({:.0}/s); create call {}",
                    c.n,
                    c.bytes,
                    c.wall.as_secs_f64(),
                    c.n as f64 / c.wall.as_secs_f64(),
                    distribution(c.calls.clone())
                );
                println!("  API server requests: {}", after.since(&before).busiest(4).join("; "));
                println!("  CPU:              {}", c.cpu);
            }
            Some(c)
        }
        _ => None,
    };
    // The contract floor, operator still stopped: the requests an issuance needs, by a plain client.
    let floor = match (&result, &outcome.template, &outcome.identity_template) {
        (Ok(()), Some(secret), Some(identity)) if args.floor => {
            let m = args.namespaces.min(args.identities);
            println!();
            let c = args.floor_concurrency();
            println!(
                "floor: a plain client makes the requests of {} issuances, {c} in flight, in cumulative steps (operator stopped) ...",
                args.identities
            );
            Some(
                floor::run(
                    &client,
                    identity,
                    secret,
                    &args.authority,
                    args.identities,
                    m,
                    c,
                    serde_json::json!({BENCH_LABEL: "true"}),
                )
                .await,
            )
        }
        _ => None,
    };
    let cleaned = cleanup(&client, &args).await;
    result?;
    let ceiling = ceiling.transpose().context("the ceiling run")?;
    let floor = floor.transpose().context("the floor run")?;
    summary(&args, &machine, unrelated.as_ref(), &outcome, ceiling.as_ref(), floor.as_deref());
    if let Some(issuance) = &outcome.issuance {
        let path = repo_root()
            .join("target/bench-logs")
            .join(format!("chart-{}.png", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")));
        let data =
            chart_data(&args, &outcome, issuance, ceiling.as_ref(), floor.as_deref(), &samples, operator.started);
        match chart::draw(&path, &data) {
            Ok(()) => {
                println!("chart:            {}", path.display());
                if let Some(copy) = &args.chart {
                    std::fs::copy(&path, copy).with_context(|| format!("copying the chart to {}", copy.display()))?;
                    println!("chart copied to:  {}", copy.display());
                }
            }
            Err(e) => eprintln!("could not draw the chart: {e:#}"),
        }
    }
    cleaned
}

/// The phases run with the operator up: issuance, then (if asked) idle and rotation.
async fn phases(
    client: &Client,
    args: &Args,
    machine: &Machine,
    operator: &Operator,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let issuance = measure(client, args, machine, operator).await?;
    out.phases.extend(issuance.setup.clone());
    out.phases.push(issuance.phase.clone());
    out.issuance = Some(issuance);
    if let Some(window) = args.idle {
        println!();
        println!("idle: {} s with no changes ...", window.as_secs());
        let procs = watched_processes(operator.pid);
        let api_before = ApiRequests::scrape(client).await;
        let cpu_before = CpuSample::take(&procs);
        let start = PhaseStart::begin(&operator.sampler, "idle");
        let before = operator.metrics().await?;
        tokio::time::sleep(window).await;
        let ops = operator.metrics().await?.since(&before);
        let phase = start.finish(&operator.sampler);
        let cpu = CpuSample::take(&procs).describe_since(&cpu_before);
        let api = match (api_before, ApiRequests::scrape(client).await) {
            (Some(a), Some(b)) => b.since(&a),
            _ => ApiDelta::default(),
        };
        let requests: Vec<String> = api.operator().iter().map(|((v, r), n)| format!("{v} {r} {n}")).collect::<Vec<_>>();
        println!(
            "idle:             operator CPU {:.2} s in {:.0} s ({:.2}% of one core), {} reconciles, {} API requests by the operator{}",
            phase.cpu_s,
            window.as_secs_f64(),
            100.0 * phase.cpu_s / window.as_secs_f64(),
            ops.reconciles,
            api.operator_total(),
            if requests.is_empty() { String::new() } else { format!(" ({})", requests.join(", ")) }
        );
        println!("  CPU:            {cpu}");
        out.phases.push(phase.clone());
        out.idle = Some(Idle { window, phase, api, reconciles: ops.reconciles, baseline: None });
    }
    if args.rotation {
        println!();
        println!(
            "rotation: a full CA rotation of {} identities (propagationDelay {}, reissueRate {}) ...",
            args.identities, args.propagation_delay, args.reissue_rate
        );
        let procs = watched_processes(operator.pid);
        let api_before = ApiRequests::scrape(client).await;
        let cpu_before = CpuSample::take(&procs);
        let start = PhaseStart::begin(&operator.sampler, "rotation");
        let before = operator.metrics().await?;
        let r = rotation::run(client, &args.authority, args.timeout).await?;
        let phase = start.finish(&operator.sampler);
        let cpu = CpuSample::take(&procs).describe_since(&cpu_before);
        let api = match (api_before, ApiRequests::scrape(client).await) {
            (Some(a), Some(b)) => b.since(&a),
            _ => ApiDelta::default(),
        };
        let ops = operator.metrics().await?.since(&before);
        let n = args.identities;
        let (writes, by_kind) = api.operator_writes();
        println!(
            "rotation:         {:.1} s from the trigger to Stable on the new CA; phases: {}",
            r.took.as_secs_f64(),
            r.phases.iter().map(|(p, t)| format!("{p} {t:.1} s")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "  identities:     {} of {} identity Secrets hold a leaf of the new CA {}",
            r.on_new_ca,
            r.secrets,
            if r.on_new_ca == n && r.secrets == n { "= N, OK".to_string() } else { format!("(N = {n}): MISMATCH") }
        );
        println!(
            "  issuances:      {:?}; reconciles {}; operator CPU {:.2} s, peak RSS {:.1} MiB",
            ops.issuances,
            ops.reconciles,
            phase.cpu_s,
            mib(phase.peak_rss_kib)
        );
        println!("  writes:         {} per identity ({})", per(writes, n), describe_per_identity(&by_kind, n));
        println!("  CPU:            {cpu}");
        out.phases.push(phase);
        if r.on_new_ca != n || r.secrets != n {
            bail!("after the rotation {} of {} identity Secrets are on the new CA (N = {n})", r.on_new_ca, r.secrets);
        }
        out.rotation = Some((r, api));
    }
    if args.ceiling || args.floor {
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace_name(0));
        let name = format!("{}-mtls", identity_name(0));
        out.template = Some(api.get(&name).await.with_context(|| format!("reading {name}, the ceiling's model"))?);
        let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), &namespace_name(0));
        let name = identity_name(0);
        out.identity_template =
            Some(api.get(&name).await.with_context(|| format!("reading {name}, the floor's model"))?);
    }
    Ok(())
}

struct Issuance {
    timings: Vec<Timing>,
    api: ApiDelta,
    /// CPU of everything but the control plane, operator and benchmark, % of one core.
    others: f64,
    /// Authority and namespaces, before the first create.
    setup: Vec<PhaseUse>,
    phase: PhaseUse,
}

struct Idle {
    window: Duration,
    phase: PhaseUse,
    api: ApiDelta,
    reconciles: f64,
    /// The same window with the operator stopped: what the control plane does by itself.
    baseline: Option<ApiDelta>,
}

async fn measure(client: &Client, args: &Args, machine: &Machine, operator: &Operator) -> anyhow::Result<Issuance> {
    let (n, m, c) = (args.identities, args.namespaces.min(args.identities), args.concurrency);
    let setup = PhaseStart::begin(&operator.sampler, "set-up");

    // The authority: a generated CA, its trust bundle published to the benchmark's namespaces.
    let authorities: Api<MtlsAuthority> = Api::all(client.clone());
    let auth: MtlsAuthority = serde_json::from_value(serde_json::json!({
        "metadata": {"name": args.authority},
        "spec": {
            "rotation": {"propagationDelay": args.propagation_delay, "reissueRate": args.reissue_rate},
            "trustBundle": {"configMapName": BUNDLE_CONFIGMAP, "namespaceSelector": {"matchLabels": {BENCH_LABEL: "true"}}},
        },
    }))?;
    let started = Instant::now();
    match authorities.create(&PostParams::default(), &auth).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            println!("authority {} already exists; reusing it", args.authority)
        }
        Err(e) => return Err(e).context("creating the MtlsAuthority"),
    }
    let create_call = started.elapsed();
    wait_for(Duration::from_secs(60), || {
        let authorities = authorities.clone();
        async move {
            let a = authorities.get(&args.authority).await.ok()?;
            a.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        }
    })
    .await
    .ok_or_else(|| anyhow!("MtlsAuthority {} did not become Ready within 60 s", args.authority))?;
    println!(
        "authority {}: Ready {} after its create call (which took {})",
        args.authority,
        ms(started.elapsed() - create_call),
        ms(create_call)
    );

    // The namespaces, given a moment to reach the operator's namespace cache.
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for j in 0..m {
        let ns = namespace_object(&namespace_name(j), serde_json::json!({BENCH_LABEL: "true"}));
        nsapi.create(&PostParams::default(), &ns).await.with_context(|| format!("creating {}", namespace_name(j)))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The trust bundle reaches every namespace before the clock starts.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::all(client.clone());
    let published = wait_for(Duration::from_secs(120), || {
        let configmaps = configmaps.clone();
        let lp = ListParams::default().fields(&format!("metadata.name={BUNDLE_CONFIGMAP}"));
        async move {
            let list = configmaps.list_metadata(&lp).await.ok()?;
            let count =
                list.items.iter().filter(|c| c.namespace().is_some_and(|ns| ns.starts_with(NAMESPACE_PREFIX))).count();
            (count >= m).then_some(())
        }
    })
    .await;
    if published.is_none() {
        eprintln!("warning: the trust bundle did not reach all {m} namespaces within 120 s");
    }

    // The watch, established before the first create.
    let mut events = spawn_watch(client);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Seen::Synced)) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("the MtlsIdentity watch did not sync within 30 s"),
        }
    }
    let before = operator.metrics().await?;
    let procs = watched_processes(operator.pid);
    let api_before = ApiRequests::scrape(client).await;
    let cpu_before = CpuSample::take(&procs);
    let setup = setup.finish(&operator.sampler);
    let phase = PhaseStart::begin(&operator.sampler, "issuance");

    println!();
    let pace = args.rate.map(|r| format!(", paced at {r}/s")).unwrap_or_default();
    println!("creating {n} identities in {m} namespaces, {c} creates in flight{pace} ...");
    let index: HashMap<String, usize> =
        (0..n).map(|i| (format!("{}/{}", namespace_name(i % m), identity_name(i)), i)).collect();
    let mut timings = vec![Timing::default(); n];
    let created = Arc::new(AtomicUsize::new(0));
    let apis: Vec<Api<MtlsIdentity>> = (0..m).map(|j| Api::namespaced(client.clone(), &namespace_name(j))).collect();
    let authority = args.authority.clone();
    let counter = created.clone();
    let rate = args.rate;
    let mut creates = tokio::spawn(async move {
        let paced_from = tokio::time::Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let api = apis[i % m].clone();
                let obj: MtlsIdentity = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": identity_name(i)},
                    "spec": {"authorityRef": authority, "serviceNames": [format!("svc-{i}")]},
                }))
                .expect("a valid MtlsIdentity");
                let counter = counter.clone();
                async move {
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(paced_from + Duration::from_secs_f64(i as f64 / rate)).await;
                    }
                    let start = Instant::now();
                    let r = api.create(&PostParams::default(), &obj).await.map(|_| ());
                    let done = Instant::now();
                    counter.fetch_add(1, Ordering::Relaxed);
                    (i, start, done, r)
                }
            })
            .buffer_unordered(c)
            .collect::<Vec<_>>()
            .await
    });

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let t0 = Instant::now();
    let (mut ready, mut creates_done) = (0usize, false);
    while !(creates_done && ready == n) {
        tokio::select! {
            seen = events.recv() => match seen {
                Some(Seen::First(key, at)) => if let Some(&i) = index.get(&key) {
                    timings[i].first_seen = Some(at);
                },
                Some(Seen::Ready(key, at)) => if let Some(&i) = index.get(&key) {
                    timings[i].ready = Some(at);
                    ready += 1;
                },
                Some(Seen::Synced) => {}
                None => bail!("the MtlsIdentity watch ended"),
            },
            results = &mut creates, if !creates_done => {
                creates_done = true;
                let mut failed = vec![];
                for (i, start, done, r) in results.context("the create task panicked")? {
                    timings[i].create_start = Some(start);
                    timings[i].create_done = Some(done);
                    if let Err(e) = r {
                        failed.push(format!("{}: {e}", identity_name(i)));
                    }
                }
                if !failed.is_empty() {
                    bail!("{} of {n} creates failed, e.g. {}", failed.len(), failed[0]);
                }
            },
            _ = progress.tick() => {
                eprintln!(
                    "  {:>5.1} s: {:>5} created, {:>5} Ready",
                    t0.elapsed().as_secs_f64(),
                    created.load(Ordering::Relaxed),
                    ready
                );
            },
            _ = tokio::time::sleep_until(deadline) => {
                let not_ready = describe_not_ready(client, m).await;
                bail!(
                    "only {ready} of {n} identities were Ready after {} s ({} created); not Ready: {not_ready}",
                    args.timeout.as_secs(),
                    created.load(Ordering::Relaxed)
                );
            },
        }
    }
    let cpu_after = CpuSample::take(&procs);
    let cpu = cpu_after.describe_since(&cpu_before);
    let others = cpu_after.others_since(&cpu_before);

    // Let anything that would happen after Ready (a second issuance, say) happen before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api = match (api_before, ApiRequests::scrape(client).await) {
        (Some(a), Some(b)) => b.since(&a),
        _ => ApiDelta::default(),
    };
    let phase = phase.finish(&operator.sampler);
    let after = operator.metrics().await?;
    report(args, machine, &timings, &after.since(&before));
    match write_timings(&timings, m) {
        Ok(path) => println!("per-identity timings: {}", path.display()),
        Err(e) => eprintln!("could not write the per-identity timings: {e}"),
    }
    let noisy = if others > NOISY_OTHERS {
        format!("  NOISY: other processes used {others:.0}% of one core")
    } else {
        String::new()
    };
    println!("CPU (run):        {cpu}{noisy}");
    println!(
        "operator process: {:.2} CPU s ({:.2} ms per identity), peak RSS {:.1} MiB (VmHWM so far {:.1} MiB)",
        phase.cpu_s,
        1000.0 * phase.cpu_s / n as f64,
        mib(phase.peak_rss_kib),
        mib(phase.hwm_kib)
    );
    println!("API server requests during the run and 2 s after (not WATCH), busiest first:");
    for line in api.busiest(10) {
        println!("  {line}");
    }
    let by_verb: Vec<(String, f64)> = api.operator_by_verb().into_iter().collect();
    println!("API requests per identity by the operator, by verb: {}", describe_per_identity(&by_verb, n));
    let (writes, by_kind) = api.operator_writes();
    println!("writes per issuance: {} ({})", per(writes, n), describe_per_identity(&by_kind, n));
    Ok(Issuance { timings, api, others, setup: vec![setup], phase })
}

/// Writes one CSV line per identity (milliseconds since the first create) for closer analysis.
fn write_timings(timings: &[Timing], namespaces: usize) -> std::io::Result<PathBuf> {
    let dir = repo_root().join("target/bench-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("timings-{}.csv", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")));
    let t0 = timings.iter().filter_map(|t| t.create_start).min().unwrap_or_else(Instant::now);
    let at = |t: Option<Instant>| t.map(|t| format!("{:.1}", (t - t0).as_secs_f64() * 1000.0)).unwrap_or_default();
    let mut out = String::from("namespace,name,create_start_ms,create_done_ms,first_seen_ms,ready_ms\n");
    for (i, t) in timings.iter().enumerate() {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            namespace_name(i % namespaces),
            identity_name(i),
            at(t.create_start),
            at(t.create_done),
            at(t.first_seen),
            at(t.ready)
        ));
    }
    std::fs::write(&path, out)?;
    Ok(path)
}

/// Counts the identities that are not Ready by their Ready reason.
async fn describe_not_ready(client: &Client, namespaces: usize) -> String {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for j in 0..namespaces {
        let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), &namespace_name(j));
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for id in list.items.iter().filter(|i| !is_ready(i)) {
                    *reasons.entry(ready_reason(id)).or_default() += 1;
                }
            }
            Err(e) => return format!("(cannot list identities: {e})"),
        }
    }
    format!("{reasons:?}")
}

fn report(args: &Args, machine: &Machine, timings: &[Timing], ops: &Metrics) {
    let n = timings.len();
    let first_create = timings.iter().filter_map(|t| t.create_start).min().expect("at least one create");
    let last_create = timings.iter().filter_map(|t| t.create_done).max().expect("at least one create");
    let last_ready = timings.iter().filter_map(|t| t.ready).max().expect("at least one Ready");
    let wall = last_ready - first_create;
    let creates = last_create - first_create;
    let latency: Vec<Duration> = timings.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
    let create_call: Vec<Duration> = timings.iter().map(|t| t.create_done.unwrap() - t.create_start.unwrap()).collect();
    let to_seen: Vec<Duration> =
        timings.iter().filter_map(|t| Some(t.first_seen?.saturating_duration_since(t.create_start.unwrap()))).collect();
    let seen_to_ready: Vec<Duration> =
        timings.iter().filter_map(|t| Some(t.ready.unwrap().saturating_duration_since(t.first_seen?))).collect();
    let throughput = n as f64 / wall.as_secs_f64();
    let mut sorted = latency.clone();
    sorted.sort();
    let p99 = percentile(&sorted, 0.99);

    println!();
    println!("=== mtls-operator issuance benchmark ===");
    println!(
        "machine:          {} cores, {}, {:.1} GiB RAM (load average at start: {})",
        machine.cores, machine.cpu, machine.memory_gib, machine.load
    );
    println!("operator source:  {}", source_state());
    let env: Vec<String> = ["MTLS_CONCURRENCY", "MTLS_ISSUANCE_RATE", "MTLS_ISSUANCE_BURST"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    println!("operator flags:   {}", if env.is_empty() { "default settings".to_string() } else { env.join(" ") });
    println!(
        "workload:         {n} identities in {} namespaces, {} creates in flight, {}",
        args.namespaces.min(n),
        args.concurrency,
        args.rate.map(|r| format!("paced at {r} creates/s")).unwrap_or_else(|| "unpaced (one burst)".into())
    );
    println!(
        "creates:          {n} in {:.2} s ({:.0}/s); create call {}",
        creates.as_secs_f64(),
        n as f64 / creates.as_secs_f64(),
        distribution(create_call)
    );
    println!("total wall time:  {:.2} s (first create -> last Ready)", wall.as_secs_f64());
    let bounded = if args.rate.is_some() { " (bounded by the pacing)" } else { "" };
    println!("throughput:       {throughput:.1} identities/s{bounded}");
    println!("latency:          {}   (create call -> first watch event with Ready=True)", distribution(latency));
    println!("  create -> seen: {}   (object first seen by the watch)", distribution(to_seen));
    println!("  seen -> Ready:  {}", distribution(seen_to_ready));
    // Served in creation order? Median latency of each tenth of the identities, in creation order.
    let mut by_start: Vec<&Timing> = timings.iter().collect();
    by_start.sort_by_key(|t| t.create_start);
    let tenth = n.div_ceil(10);
    let deciles: Vec<String> = by_start
        .chunks(tenth)
        .map(|chunk| {
            let mut l: Vec<Duration> = chunk.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
            l.sort();
            format!("{:.1}", percentile(&l, 0.5).as_secs_f64())
        })
        .collect();
    println!("  by creation order (median s per tenth, first to last): {}", deciles.join(" "));
    let issued = ops.total_issuances();
    let kinds: Vec<String> = ops.issuances.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "issuances:        {issued} (mtls_operator_issuances_total during the run: {}) {}",
        if kinds.is_empty() { "none".into() } else { kinds.join(", ") },
        if issued == n as f64 { "= N, OK".to_string() } else { format!("!= N = {n}: MISMATCH") }
    );
    if ops.issuance_seconds_count > 0.0 {
        println!(
            "operator:         {} reconciles, mean key+sign time {:.2} ms, reconcile errors: {}",
            ops.reconciles,
            1000.0 * ops.issuance_seconds_sum / ops.issuance_seconds_count,
            if ops.errors.is_empty() { "none".into() } else { format!("{:?}", ops.errors) }
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets:          p99 < 1 s: {} ({}); throughput >= 100/s: {} ({throughput:.1}/s)",
        verdict(p99 < Duration::from_secs(1)),
        ms(p99),
        verdict(throughput >= 100.0)
    );
}

/// Prints how many warnings and errors the operator logged, with a few distinct examples.
fn report_operator_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let problems: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    println!("operator log:     {} ({} warning/error lines)", log.display(), problems.len());
    let mut shown = HashSet::new();
    for line in problems {
        // Group by the message, not by the identity or the timestamp.
        let message: String =
            line.split_whitespace().skip(2).filter(|w| !w.contains('=')).collect::<Vec<_>>().join(" ");
        if shown.insert(message) && shown.len() <= 5 {
            println!("  {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: where the time went
// ---------------------------------------------------------------------------------------------

/// CPU time used so far by the processes that matter, and by the whole machine.
struct CpuSample {
    at: Instant,
    /// (name, CPU seconds) of each process found.
    procs: Vec<(String, f64)>,
    /// Busy and total CPU seconds of the machine (all cores).
    busy: f64,
    total: f64,
}

/// The processes to account for: the control plane (its pid files sit next to the kubeconfig
/// that `e2e/cluster.sh` writes), the operator and this benchmark.
fn watched_processes(operator_pid: u32) -> Vec<(String, u32)> {
    let mut procs = vec![];
    if let Some(dir) = kubeconfig_path().parent() {
        for name in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            if let Some(pid) =
                std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok().and_then(|p| p.trim().parse().ok())
            {
                procs.push((name.to_string(), pid));
            }
        }
    }
    procs.push(("operator".into(), operator_pid));
    procs.push(("benchmark".into(), std::process::id()));
    procs
}

impl CpuSample {
    fn take(procs: &[(String, u32)]) -> CpuSample {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
                let v: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal ...
                let total: f64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
                Some(((total - idle) / procstat::CLOCK_TICKS, total / procstat::CLOCK_TICKS))
            })
            .unwrap_or((0.0, 0.0));
        CpuSample {
            at: Instant::now(),
            procs: procs.iter().filter_map(|(n, pid)| Some((n.clone(), process_cpu_seconds(*pid)?))).collect(),
            busy,
            total,
        }
    }

    /// Average CPU use between `before` and `self`, in percent of one core.
    fn describe_since(&self, before: &CpuSample) -> String {
        let wall = (self.at - before.at).as_secs_f64().max(1e-9);
        let mut parts = vec![];
        let mut accounted = 0.0;
        for (name, secs) in &self.procs {
            if let Some((_, was)) = before.procs.iter().find(|(n, _)| n == name) {
                accounted += secs - was;
                parts.push(format!("{name} {:.0}%", 100.0 * (secs - was) / wall));
            }
        }
        let busy = self.busy - before.busy;
        let cores = (self.total - before.total) / wall;
        parts.push(format!("everything else {:.0}%", (100.0 * (busy - accounted) / wall).max(0.0)));
        format!("machine {:.0}% busy of {:.0}% ({})", 100.0 * busy / wall, 100.0 * cores.round(), parts.join(", "))
    }

    /// CPU used by everything but the watched processes, in percent of one core.
    fn others_since(&self, before: &CpuSample) -> f64 {
        let wall = (self.at - before.at).as_secs_f64().max(1e-9);
        let accounted: f64 = self
            .procs
            .iter()
            .filter_map(|(name, secs)| Some(secs - before.procs.iter().find(|(n, _)| n == name)?.1))
            .sum();
        (100.0 * (self.busy - before.busy - accounted) / wall).max(0.0)
    }
}

/// Past this share of the machine (percent of one core) used by other processes, a run is noisy.
const NOISY_OTHERS: f64 = 25.0;

/// API server request counts and mean latencies by verb and resource (from its /metrics).
#[derive(Default)]
struct ApiRequests {
    /// (verb, resource[/subresource]) -> (count, latency sum in seconds)
    by_kind: BTreeMap<(String, String), (f64, f64)>,
}

impl ApiRequests {
    async fn scrape(client: &Client) -> Option<ApiRequests> {
        let req = kube::core::Request::new("").get("metrics", &kube::api::GetParams::default()).ok()?;
        let text = client.request_text(req).await.ok()?;
        let mut out = ApiRequests::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let Some((name, labels)) = series.split_once('{') else { continue };
            let field = match name {
                "apiserver_request_duration_seconds_count" => 0,
                "apiserver_request_duration_seconds_sum" => 1,
                _ => continue,
            };
            let label = |key: &str| {
                labels
                    .trim_end_matches('}')
                    .split("\",")
                    .filter_map(|kv| kv.split_once("=\""))
                    .find(|(k, _)| k.trim_start_matches(',') == key)
                    .map(|(_, v)| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let verb = label("verb");
            if verb == "WATCH" || verb == "CONNECT" {
                continue;
            }
            let mut resource = label("resource");
            let sub = label("subresource");
            if !sub.is_empty() {
                resource = format!("{resource}/{sub}");
            }
            let e = out.by_kind.entry((verb, resource)).or_default();
            if field == 0 {
                e.0 += value;
            } else {
                e.1 += value;
            }
        }
        Some(out)
    }

    fn since(&self, before: &ApiRequests) -> ApiDelta {
        ApiDelta {
            rows: self
                .by_kind
                .iter()
                .filter_map(|(k, (count, sum))| {
                    let (c0, s0) = before.by_kind.get(k).copied().unwrap_or_default();
                    let n = count - c0;
                    (n >= 1.0).then(|| (k.clone(), (n, (sum - s0) / n)))
                })
                .collect(),
        }
    }
}

/// API requests (not WATCH) made in a window: (verb, resource) -> (count, mean latency in seconds).
#[derive(Default)]
struct ApiDelta {
    rows: BTreeMap<(String, String), (f64, f64)>,
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "DELETE" | "DELETECOLLECTION" | "APPLY")
}

/// Requests the operator does not make: the benchmark's own (its creates, its reads of the
/// authority and its rotation trigger, /metrics and /version), the controller manager's (service
/// accounts of new namespaces) and the API server's own controllers (the `kubernetes` Service's
/// endpoints, its identity Leases, its periodic Service IP repair; the operator runs without
/// leader election here and never reads Services).
fn not_by_operator(verb: &str, resource: &str) -> bool {
    resource.is_empty()
        || resource.starts_with('/')
        || (verb == "POST" && resource == "mtlsidentities")
        || resource == "mtlsauthorities"
        || resource.starts_with("serviceaccounts")
        || resource.starts_with("namespaces")
        || resource.starts_with("endpoints")
        || resource == "services"
        || resource == "leases"
}

impl ApiDelta {
    fn busiest(&self, k: usize) -> Vec<String> {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        rows.into_iter()
            .take(k)
            .map(|((verb, res), (n, mean))| format!("{verb} {res}: {n} (mean {:.1} ms)", 1000.0 * mean))
            .collect()
    }

    /// The operator's requests: (verb, resource) -> count.
    fn operator(&self) -> BTreeMap<(String, String), f64> {
        self.rows.iter().filter(|((v, r), _)| !not_by_operator(v, r)).map(|(k, (n, _))| (k.clone(), *n)).collect()
    }

    /// The operator's requests by verb.
    fn operator_by_verb(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((verb, _), n) in self.operator() {
            *out.entry(verb).or_default() += n;
        }
        out
    }

    /// The operator's writes, and them by verb and resource.
    fn operator_writes(&self) -> (f64, Vec<(String, f64)>) {
        let rows: Vec<(String, f64)> = self
            .operator()
            .into_iter()
            .filter(|((v, _), _)| is_write(v))
            .map(|((v, r), n)| (format!("{v} {r}"), n))
            .collect();
        (rows.iter().map(|(_, n)| n).fold(0.0, |a, b| a + b), rows)
    }

    fn operator_total(&self) -> f64 {
        self.operator().values().fold(0.0, |a, b| a + b)
    }

    /// What this window has more of than `baseline`: (verb, resource) -> count, operator's only.
    fn operator_minus(&self, baseline: &ApiDelta) -> BTreeMap<(String, String), f64> {
        let base = baseline.operator();
        self.operator()
            .into_iter()
            .map(|(k, n)| {
                let b = base.get(&k).copied().unwrap_or(0.0);
                (k, (n - b).max(0.0))
            })
            .filter(|(_, n)| *n > 0.0)
            .collect()
    }
}

/// `x / n` for per-identity figures, two decimals.
fn per(x: f64, n: usize) -> String {
    format!("{:.2}", x / n.max(1) as f64)
}

fn describe_per_identity(counts: &[(String, f64)], n: usize) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(k, c)| format!("{k} {}", per(*c, n))).collect::<Vec<_>>().join(", ")
}

/// Deletes what the run created: the bench namespaces (and with them the identities and their
/// Secrets), the authority and its CA Secrets.
async fn cleanup(client: &Client, args: &Args) -> anyhow::Result<()> {
    if std::env::var_os("MTLS_E2E_KEEP").is_some() {
        println!("MTLS_E2E_KEEP is set: leaving the namespaces and the authority in place");
        return Ok(());
    }
    let nsapi: Api<Namespace> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=true"));
    for ns in nsapi.list_metadata(&lp).await.context("listing bench namespaces")?.items {
        nsapi.delete(&ns.name_any(), &DeleteParams::background()).await.context("deleting a bench namespace")?;
    }
    match Api::<MtlsAuthority>::all(client.clone()).delete(&args.authority, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e).context("deleting the authority"),
    }
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("mtls.io/authority={}", args.authority)),
        )
        .await
        .context("deleting the authority's CA Secrets")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The scale summary and the chart
// ---------------------------------------------------------------------------------------------

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Idle counts as "near zero" below this share of one core, with no LIST by the operator and at
/// most one request per 10 s.
const IDLE_CPU_TARGET_PCT: f64 = 1.0;

fn summary(
    args: &Args,
    machine: &Machine,
    unrelated: Option<&unrelated::Created>,
    o: &Outcome,
    ceiling: Option<&ceiling::Ceiling>,
    floor: Option<&[floor::Step]>,
) {
    let Some(iss) = &o.issuance else { return };
    let n = args.identities;
    let m = args.namespaces.min(n);
    let first = iss.timings.iter().filter_map(|t| t.create_start).min().expect("a create");
    let last = iss.timings.iter().filter_map(|t| t.ready).max().expect("a Ready");
    let wall = (last - first).as_secs_f64();
    let mut latency: Vec<Duration> = iss.timings.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
    latency.sort();
    let p99 = percentile(&latency, 0.99);
    let hwm = o.phases.iter().map(|p| p.hwm_kib).max().unwrap_or(0);
    let noisy = iss.others > NOISY_OTHERS;

    println!();
    println!("=== scale summary ===");
    println!(
        "machine:          {} cores, {}, {:.1} GiB RAM; load average at start {}, at end {}{}",
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.load,
        Machine::read().load,
        if noisy {
            format!("; NOISY (others used {:.0}% of one core during issuance)", iss.others)
        } else {
            String::new()
        }
    );
    println!("operator source:  {}", source_state());
    println!(
        "workload:         {n} identities in {m} namespaces, {} creates in flight; {} unrelated Secrets in {} namespaces{}",
        args.concurrency,
        if unrelated.is_some() { args.unrelated_secrets } else { 0 },
        if unrelated.is_some() { args.unrelated_namespaces } else { 0 },
        unrelated.map(|u| if u.created == 0 { " (reused)" } else { "" }).unwrap_or("")
    );
    println!("all Ready:        {wall:.2} s from the first create ({:.1} identities/s)", n as f64 / wall);
    let ratio = ceiling.map(|c| wall / c.wall.as_secs_f64());
    if let (Some(c), Some(r)) = (ceiling, ratio) {
        println!(
            "ceiling:          {:.2} s for a plain client to create {n} Secrets of {} bytes, {} in flight ({:.0}/s)",
            c.wall.as_secs_f64(),
            c.bytes,
            args.concurrency,
            c.n as f64 / c.wall.as_secs_f64()
        );
        println!("ratio:            {r:.2} x the ceiling (operator time / ceiling time)");
    }
    if let Some(steps) = floor {
        println!(
            "contract floor:   a plain client making the requests of {n} issuances, {} in flight:",
            args.floor_concurrency()
        );
        for s in steps {
            let vs_ceiling =
                ceiling.map(|c| format!(", {:.2} x the ceiling", s.wall.as_secs_f64() / c.wall.as_secs_f64()));
            println!(
                "  {:<22} {:>7.2} s ({:.0}/s{})",
                floor::STEPS[s.requests - 1],
                s.wall.as_secs_f64(),
                n as f64 / s.wall.as_secs_f64(),
                vs_ceiling.unwrap_or_default()
            );
        }
        if let Some(all) = steps.last() {
            println!(
                "  operator:              {wall:>7.2} s = {:.2} x the floor (all an issuance needs)",
                wall / all.wall.as_secs_f64()
            );
        }
    }
    println!("latency:          {}", distribution(latency.clone()));
    let phase_list = |f: &dyn Fn(&PhaseUse) -> String| o.phases.iter().map(f).collect::<Vec<_>>().join(", ");
    println!(
        "operator RSS:     peak (VmHWM) {:.1} MiB; peak VmRSS by phase: {}; VmRSS at the end of the last phase {:.1} MiB",
        mib(hwm),
        phase_list(&|p| format!("{} {:.1}", p.name, mib(p.peak_rss_kib))),
        o.phases.last().map(|p| mib(p.end_rss_kib)).unwrap_or(0.0)
    );
    println!("operator CPU:     {} (seconds by phase)", phase_list(&|p| format!("{} {:.2}", p.name, p.cpu_s)));
    let by_verb: Vec<(String, f64)> = iss.api.operator_by_verb().into_iter().collect();
    println!("API per identity: {} (operator's requests during issuance, by verb)", describe_per_identity(&by_verb, n));
    let (writes, by_kind) = iss.api.operator_writes();
    let writes_per = writes / n as f64;
    println!("writes/issuance:  {writes_per:.2} ({})", describe_per_identity(&by_kind, n));
    let idle_ok = o.idle.as_ref().map(|i| {
        let pct = 100.0 * i.phase.cpu_s / i.window.as_secs_f64();
        let requests = match &i.baseline {
            Some(b) => i.api.operator_minus(b),
            None => i.api.operator(),
        };
        let total = requests.values().fold(0.0, |a, b| a + b);
        let lists = requests.iter().filter(|((v, _), _)| v == "LIST").fold(0.0, |a, (_, c)| a + c);
        println!(
            "idle:             {:.2} CPU s in {:.0} s ({pct:.2}% of one core), {} reconciles; API requests {}: {total}{}",
            i.phase.cpu_s,
            i.window.as_secs_f64(),
            i.reconciles,
            if i.baseline.is_some() {
                "beyond the control plane's own (the same window with the operator stopped)"
            } else {
                "on the operator's resources"
            },
            if requests.is_empty() {
                String::new()
            } else {
                format!(" ({})", requests.iter().map(|((v, r), n)| format!("{v} {r} {n}")).collect::<Vec<_>>().join(", "))
            }
        );
        (pct, pct < IDLE_CPU_TARGET_PCT && lists == 0.0 && total <= i.window.as_secs_f64() / 10.0)
    });
    if let Some((r, api)) = &o.rotation {
        let (w, by_kind) = api.operator_writes();
        println!(
            "rotation:         {:.1} s trigger -> Stable ({}); {} writes per identity ({})",
            r.took.as_secs_f64(),
            r.phases.iter().map(|(p, t)| format!("{p} {t:.1}")).collect::<Vec<_>>().join(", "),
            per(w, n),
            describe_per_identity(&by_kind, n)
        );
    }
    println!("targets (stated for: ratio and RSS at 10,000 identities with 50,000 unrelated Secrets; p99 at 1,000):");
    if let Some(r) = ratio {
        println!("  Ready within 2x the ceiling:       {} ({r:.2}x)", verdict(r <= 2.0));
    } else {
        println!("  Ready within 2x the ceiling:       not measured (--ceiling)");
    }
    println!("  p99 create -> Ready under 1 s:     {} ({})", verdict(p99 < Duration::from_secs(1)), ms(p99));
    println!("  operator peak RSS under 64 MiB:    {} ({:.1} MiB)", verdict(hwm < 64 * 1024), mib(hwm));
    match idle_ok {
        Some((pct, ok)) => println!("  idle CPU near zero:                {} ({pct:.2}% of one core)", verdict(ok)),
        None => println!("  idle CPU near zero:                not measured (--idle SECONDS)"),
    }
    println!("  at most 3 API writes per issuance: {} ({writes_per:.2})", verdict(writes_per <= 3.0));
}

fn chart_data(
    args: &Args,
    o: &Outcome,
    iss: &Issuance,
    ceiling: Option<&ceiling::Ceiling>,
    floor: Option<&[floor::Step]>,
    samples: &[(Instant, procstat::ProcStat)],
    started: Instant,
) -> chart::ChartData {
    let first = iss.timings.iter().filter_map(|t| t.create_start).min().expect("a create");
    let mut identities: Vec<(f64, f64)> = iss
        .timings
        .iter()
        .map(|t| ((t.create_start.unwrap() - first).as_secs_f64(), (t.ready.unwrap() - first).as_secs_f64()))
        .collect();
    identities.sort_by(|a, b| a.0.total_cmp(&b.0));
    let wall = identities.iter().map(|i| i.1).fold(0.0, f64::max);
    let mut lat: Vec<f64> = identities.iter().map(|(c, r)| r - c).collect();
    lat.sort_by(f64::total_cmp);
    let q = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    // CPU % over about a second between samples, RSS as sampled.
    let mut operator = vec![];
    let mut j = 0;
    for (i, (at, p)) in samples.iter().enumerate() {
        while j < i && (*at - samples[j].0) > Duration::from_millis(1000) {
            j += 1;
        }
        let (t0, p0) = samples[j.min(i)];
        let dt = (*at - t0).as_secs_f64();
        let cpu = if dt > 0.0 { 100.0 * (p.cpu_s - p0.cpu_s) / dt } else { 0.0 };
        operator.push(((*at - started).as_secs_f64(), mib(p.rss_kib), cpu));
    }
    let hwm = o.phases.iter().map(|p| p.hwm_kib).max().unwrap_or(0);
    let ratio = ceiling
        .map(|c| format!(" = {:.2}x the ceiling ({:.1} s)", wall / c.wall.as_secs_f64(), c.wall.as_secs_f64()))
        .unwrap_or_default();
    let vs_floor = floor
        .and_then(|steps| steps.last())
        .map(|f| format!(", {:.2}x the contract floor ({:.1} s)", wall / f.wall.as_secs_f64(), f.wall.as_secs_f64()))
        .unwrap_or_default();
    let ratio = ratio + &vs_floor;
    let machine = Machine::read();
    chart::ChartData {
        title: format!("mtls-operator: {} identities Ready in {wall:.1} s{ratio}", identities.len()),
        subtitle: format!(
            "{} namespaces, {} creates in flight, {} unrelated Secrets; latency p50 {:.2} s, p99 {:.2} s; operator peak RSS {:.1} MiB",
            args.namespaces.min(args.identities),
            args.concurrency,
            if args.unrelated_secrets > 0 { args.unrelated_secrets } else { 0 },
            q(0.5),
            q(0.99),
            mib(hwm),
        ),
        machine: format!(
            "{} cores ({}), load average {} at the end{}; operator {}",
            machine.cores,
            machine.cpu,
            machine.load,
            if iss.others > NOISY_OTHERS {
                format!("; NOISY: others used {:.0}% of one core", iss.others)
            } else {
                String::new()
            },
            source_state()
        ),
        identities,
        ceiling_done_s: ceiling.map(|c| c.done_s.clone()),
        floor_done_s: floor.and_then(|steps| steps.last()).map(|s| s.done_s.clone()),
        operator,
        phases: o
            .phases
            .iter()
            .map(|p| (p.name.clone(), (p.start - started).as_secs_f64(), (p.end.max(p.start) - started).as_secs_f64()))
            .collect(),
    }
}
