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
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};

mod accounting;
mod ceiling;
mod chart;
mod floor;
mod font;
mod measure;
mod procstat;
mod report;
mod rotation;
mod unrelated;

use accounting::*;
use measure::*;
use report::*;
#[path = "../tests/support.rs"]
mod support;

use support::{http_get, repo_root, wait_for};

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
    let client = support::connect(&path, hint).await?;
    let version = client.apiserver_version().await?;
    println!("control plane: {} (Kubernetes {})", path.display(), version.git_version);
    Ok(client)
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    support::install_crds(client, "mtls-bench").await
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
        let child = support::operator_args(&mut command, OPERATOR_NAMESPACE, port, &kubeconfig_path())
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
