//! The ceiling: how fast a plain client creates N Secrets of the size the operator writes, at the
//! benchmark's concurrency, against the same API server, with the operator stopped. No operator
//! that writes one Secret per identity can be faster than this on the same machine.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

pub fn namespace_name(j: usize) -> String {
    format!("bench-ceiling-{j}")
}

/// A copy of one of the operator's identity Secrets that no controller recognises: the same type,
/// data, and labels and annotations of the same size, with `mtls.io/` renamed to `bnch.io/`.
pub fn from_template(template: &Secret) -> Secret {
    let rename = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref().map(|m| m.iter().map(|(k, v)| (k.replace("mtls.io/", "bnch.io/"), v.clone())).collect())
    };
    Secret {
        metadata: ObjectMeta {
            labels: rename(&template.metadata.labels),
            annotations: rename(&template.metadata.annotations),
            ..Default::default()
        },
        type_: template.type_.clone(),
        data: template.data.clone(),
        ..Default::default()
    }
}

pub struct Ceiling {
    pub n: usize,
    /// First create call started -> last create call answered.
    pub wall: Duration,
    /// When each create was answered, seconds after the first started, sorted.
    pub done_s: Vec<f64>,
    /// Each create call's duration.
    pub calls: Vec<Duration>,
    /// Bytes of data in each Secret.
    pub bytes: usize,
    /// CPU used while the creates ran, by process.
    pub cpu: String,
}

/// Creates `n` Secrets like `template` named `<name(i)>` in `namespaces` namespaces, `concurrency`
/// at a time, and times it. The namespaces are created (and given a moment) before the clock starts.
pub async fn run(
    client: &Client,
    template: &Secret,
    name: impl Fn(usize) -> String,
    n: usize,
    namespaces: usize,
    concurrency: usize,
    labels: serde_json::Value,
) -> anyhow::Result<Ceiling> {
    for j in 0..namespaces {
        super::ensure_namespace(client, &namespace_name(j), &labels).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = from_template(template);
    let bytes = base.data.as_ref().map(|d| d.values().map(|v| v.0.len()).sum()).unwrap_or(0);
    let apis: Vec<Api<Secret>> = (0..namespaces).map(|j| Api::namespaced(client.clone(), &namespace_name(j))).collect();
    let procs = super::watched_processes(0);
    let cpu_before = super::CpuSample::take(&procs);
    let t0 = Instant::now();
    let results: Vec<(Instant, Instant, kube::Result<Secret>)> = futures::stream::iter(0..n)
        .map(|i| {
            let api = apis[i % namespaces].clone();
            let mut s = base.clone();
            s.metadata.name = Some(name(i));
            async move {
                let start = Instant::now();
                let r = api.create(&PostParams::default(), &s).await;
                (start, Instant::now(), r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let cpu = super::CpuSample::take(&procs).describe_since(&cpu_before);
    let failed: Vec<String> = results.iter().filter_map(|(_, _, r)| r.as_ref().err().map(|e| e.to_string())).collect();
    if !failed.is_empty() {
        bail!("{} of {n} ceiling creates failed, e.g. {}", failed.len(), failed[0]);
    }
    let last = results.iter().map(|(_, d, _)| *d).max().unwrap_or(t0);
    let mut done_s: Vec<f64> = results.iter().map(|(_, d, _)| (*d - t0).as_secs_f64()).collect();
    done_s.sort_by(f64::total_cmp);
    Ok(Ceiling { n, wall: last - t0, done_s, calls: results.iter().map(|(s, d, _)| *d - *s).collect(), bytes, cpu })
}
