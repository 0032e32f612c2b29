//! What the benchmark accounts for beside the timings: CPU time of the processes that matter,
//! and the API server's request counts and latencies, split into the operator's and everyone else's.

use super::*;

/// CPU time used so far by the processes that matter, and by the whole machine.
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    /// (name, CPU seconds) of each process found.
    pub(crate) procs: Vec<(String, f64)>,
    /// Busy and total CPU seconds of the machine (all cores).
    pub(crate) busy: f64,
    pub(crate) total: f64,
}

/// The processes to account for: the control plane (its pid files sit next to the kubeconfig
/// that `e2e/cluster.sh` writes), the operator and this benchmark.
pub(crate) fn watched_processes(operator_pid: u32) -> Vec<(String, u32)> {
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
    pub(crate) fn take(procs: &[(String, u32)]) -> CpuSample {
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
    pub(crate) fn describe_since(&self, before: &CpuSample) -> String {
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
    pub(crate) fn others_since(&self, before: &CpuSample) -> f64 {
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
pub(crate) const NOISY_OTHERS: f64 = 25.0;

/// API server request counts and mean latencies by verb and resource (from its /metrics).
#[derive(Default)]
pub(crate) struct ApiRequests {
    /// (verb, resource[/subresource]) -> (count, latency sum in seconds)
    pub(crate) by_kind: BTreeMap<(String, String), (f64, f64)>,
}

impl ApiRequests {
    pub(crate) async fn scrape(client: &Client) -> Option<ApiRequests> {
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

    pub(crate) fn since(&self, before: &ApiRequests) -> ApiDelta {
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
pub(crate) struct ApiDelta {
    pub(crate) rows: BTreeMap<(String, String), (f64, f64)>,
}

pub(crate) fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "DELETE" | "DELETECOLLECTION" | "APPLY")
}

/// Requests the operator does not make: the benchmark's own (its creates, its reads of the
/// authority and its rotation trigger, /metrics and /version), the controller manager's (service
/// accounts of new namespaces) and the API server's own controllers (the `kubernetes` Service's
/// endpoints, its identity Leases, its periodic Service IP repair; the operator runs without
/// leader election here and never reads Services).
pub(crate) fn not_by_operator(verb: &str, resource: &str) -> bool {
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
    pub(crate) fn busiest(&self, k: usize) -> Vec<String> {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        rows.into_iter()
            .take(k)
            .map(|((verb, res), (n, mean))| format!("{verb} {res}: {n} (mean {:.1} ms)", 1000.0 * mean))
            .collect()
    }

    /// The operator's requests: (verb, resource) -> count.
    pub(crate) fn operator(&self) -> BTreeMap<(String, String), f64> {
        self.rows.iter().filter(|((v, r), _)| !not_by_operator(v, r)).map(|(k, (n, _))| (k.clone(), *n)).collect()
    }

    /// The operator's requests by verb.
    pub(crate) fn operator_by_verb(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((verb, _), n) in self.operator() {
            *out.entry(verb).or_default() += n;
        }
        out
    }

    /// The operator's writes, and them by verb and resource.
    pub(crate) fn operator_writes(&self) -> (f64, Vec<(String, f64)>) {
        let rows: Vec<(String, f64)> = self
            .operator()
            .into_iter()
            .filter(|((v, _), _)| is_write(v))
            .map(|((v, r), n)| (format!("{v} {r}"), n))
            .collect();
        (rows.iter().map(|(_, n)| n).fold(0.0, |a, b| a + b), rows)
    }

    pub(crate) fn operator_total(&self) -> f64 {
        self.operator().values().fold(0.0, |a, b| a + b)
    }

    /// What this window has more of than `baseline`: (verb, resource) -> count, operator's only.
    pub(crate) fn operator_minus(&self, baseline: &ApiDelta) -> BTreeMap<(String, String), f64> {
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
pub(crate) fn per(x: f64, n: usize) -> String {
    format!("{:.2}", x / n.max(1) as f64)
}

pub(crate) fn describe_per_identity(counts: &[(String, f64)], n: usize) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(k, c)| format!("{k} {}", per(*c, n))).collect::<Vec<_>>().join(", ")
}
