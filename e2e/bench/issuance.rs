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
use mtls_operator::crd::{MtlsAuthority, MtlsIdentity};

const OPERATOR_NAMESPACE: &str = "mtls-system";
const NAMESPACE_PREFIX: &str = "bench";
const BENCH_LABEL: &str = "mtls-bench";
const USAGE: &str = "usage: cargo bench --bench issuance -- [--identities N] [--namespaces M] [--concurrency C] \
                     [--rate PER_SECOND] [--timeout SECONDS] [--authority NAME]";

struct Args {
    identities: usize,
    namespaces: usize,
    concurrency: usize,
    /// Creates started per second at most; None: as fast as `concurrency` allows (a burst).
    rate: Option<f64>,
    timeout: Duration,
    authority: String,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            identities: 1000,
            namespaces: 10,
            concurrency: 32,
            rate: None,
            timeout: Duration::from_secs(600),
            authority: "bench".into(),
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

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace_object(name, serde_json::json!({})))
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
    url: String,
    log: PathBuf,
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
        let child = Command::new(env!("CARGO_BIN_EXE_mtls-operator"))
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
        let mut op = Operator { child, url: format!("http://127.0.0.1:{port}"), log };
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
    fn stop(mut self) {
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

async fn run(args: Args) -> anyhow::Result<()> {
    let machine = Machine::read();
    let client = connect().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    remove_leftover_namespaces(&client).await?;

    let operator = Operator::start().await?;
    println!("operator: ready at {} (log: {})", operator.url, operator.log.display());
    let result = measure(&client, &args, &machine, &operator).await;
    let cleaned = cleanup(&client, &args).await;
    let log = operator.log.clone();
    operator.stop();
    report_operator_log(&log);
    result?;
    cleaned
}

async fn measure(client: &Client, args: &Args, machine: &Machine, operator: &Operator) -> anyhow::Result<()> {
    let (n, m, c) = (args.identities, args.namespaces.min(args.identities), args.concurrency);

    // The authority.
    let authorities: Api<MtlsAuthority> = Api::all(client.clone());
    let auth: MtlsAuthority =
        serde_json::from_value(serde_json::json!({"metadata": {"name": args.authority}, "spec": {}}))?;
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
    let procs = watched_processes(operator.child.id());
    let api_before = ApiRequests::scrape(client).await;
    let cpu_before = CpuSample::take(&procs);

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
    let cpu = CpuSample::take(&procs).describe_since(&cpu_before);
    let api = match (api_before, ApiRequests::scrape(client).await) {
        (Some(a), Some(b)) => b.describe_since(&a),
        _ => vec!["(API server /metrics not readable)".into()],
    };

    // Let anything that would happen after Ready (a second issuance, say) happen before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = operator.metrics().await?;
    report(args, machine, &timings, &after.since(&before));
    match write_timings(&timings, m) {
        Ok(path) => println!("per-identity timings: {}", path.display()),
        Err(e) => eprintln!("could not write the per-identity timings: {e}"),
    }
    println!("CPU (run):        {cpu}");
    println!("API server requests during the run (not WATCH), busiest first:");
    for line in api {
        println!("  {line}");
    }
    Ok(())
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

/// Clock ticks per second of /proc (USER_HZ), 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
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
                Some(((total - idle) / CLOCK_TICKS, total / CLOCK_TICKS))
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
}

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

    /// The requests made between `before` and `self`, busiest first.
    fn describe_since(&self, before: &ApiRequests) -> Vec<String> {
        let mut rows: Vec<(String, f64, f64)> = self
            .by_kind
            .iter()
            .filter_map(|(k, (count, sum))| {
                let (c0, s0) = before.by_kind.get(k).copied().unwrap_or_default();
                let n = count - c0;
                (n >= 1.0).then(|| (format!("{} {}", k.0, k.1), n, (sum - s0) / n))
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows.into_iter().take(10).map(|(k, n, mean)| format!("{k}: {n} (mean {:.1} ms)", 1000.0 * mean)).collect()
    }
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
