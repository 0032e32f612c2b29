//! The contract floor: with the operator stopped, a plain client makes, per identity, exactly the
//! requests that the design contract asks of one issuance: the user's create of the
//! `MtlsIdentity`, then the operator's create of its Secret, the `Ready` status write and the
//! `Issued` Event. It runs as cumulative steps (the create alone, then with the Secret, then with
//! the status, then with the Event), each with N fresh objects and with a watch of `MtlsIdentity`
//! open, as the benchmark's own is during the operator's run.
//!
//! The steps run with more objects in flight than the ceiling (`--floor-concurrency`, default 4x
//! `--concurrency`) so that the API server's CPU, not the client's round trips, sets their time
//! (each step prints the CPU it used): then no operator that keeps the contract can issue N
//! identities much faster than the last step on the same API server, and the steps show which
//! part of the ratio to the ceiling is the contract's and which the operator's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use mtls_operator::api::MtlsIdentity;

/// What each step adds to the one before.
pub const STEPS: [&str; 4] = ["create MtlsIdentity", "+ create Secret", "+ write status", "+ create Event"];

pub fn namespace_name(step: usize, j: usize) -> String {
    format!("bench-floor{step}-{j}")
}

pub struct Step {
    /// 1..=4: how many of [`STEPS`] each object gets.
    pub requests: usize,
    /// First create started -> last request of the last object answered.
    pub wall: Duration,
    /// When each object's last request was answered, seconds after the first create started, sorted.
    pub done_s: Vec<f64>,
}

/// Runs every step in turn. `identity` is one of the operator's identities (its status is the one
/// written), `secret` one of its Secrets (copied as the ceiling copies it).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: &Client,
    identity: &MtlsIdentity,
    secret: &Secret,
    authority: &str,
    n: usize,
    namespaces: usize,
    concurrency: usize,
    labels: serde_json::Value,
) -> anyhow::Result<Vec<Step>> {
    let status = serde_json::to_value(identity.status.as_ref().context("the model identity has no status")?)?;
    let base_secret = super::ceiling::from_template(secret);
    let reporter = Reporter { controller: "mtls-operator".into(), instance: None };
    let note = format!(
        "Issued certificate {}: certificate {} valid until {}, renews at {}",
        "0".repeat(32),
        "0".repeat(16),
        "2026-12-02T00:00:00Z",
        "2026-12-01T16:00:00Z"
    );
    let mut steps = vec![];
    for requests in 1..=STEPS.len() {
        for j in 0..namespaces {
            super::ensure_namespace(client, &namespace_name(requests, j), &labels).await?;
        }
        // The benchmark's watch of identities, as during the operator's run (events drained).
        let watch = tokio::spawn({
            let api: Api<MtlsIdentity> = Api::all(client.clone());
            async move {
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                while events.next().await.is_some() {}
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let procs = super::watched_processes(0);
        let cpu_before = super::CpuSample::take(&procs);
        let t0 = Instant::now();
        let results: Vec<anyhow::Result<Instant>> = futures::stream::iter(0..n)
            .map(|i| {
                let ns = namespace_name(requests, i % namespaces);
                let (client, status, reporter) = (client.clone(), status.clone(), reporter.clone());
                let mut secret = base_secret.clone();
                let note = note.clone();
                let name = format!("floor-{i:05}");
                let obj: MtlsIdentity = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"authorityRef": authority, "serviceNames": [format!("svc-{i}")]},
                }))
                .expect("a valid MtlsIdentity");
                async move {
                    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns);
                    let created = ids.create(&PostParams::default(), &obj).await.context("create MtlsIdentity")?;
                    if requests >= 2 {
                        secret.metadata.name = Some(format!("{name}-mtls"));
                        secret.metadata.owner_references = Some(vec![OwnerReference {
                            api_version: "mtls.io/v1alpha1".into(),
                            kind: "MtlsIdentity".into(),
                            name: name.clone(),
                            uid: created.uid().unwrap_or_default(),
                            controller: Some(true),
                            block_owner_deletion: Some(true),
                        }]);
                        Api::<Secret>::namespaced(client.clone(), &ns)
                            .create(&PostParams::default(), &secret)
                            .await
                            .context("create Secret")?;
                    }
                    if requests >= 3 {
                        let patch = serde_json::json!({ "status": status });
                        ids.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .context("write status")?;
                    }
                    if requests >= 4 {
                        let ev = Event {
                            type_: EventType::Normal,
                            reason: "Issued".into(),
                            note: Some(note),
                            action: "Issued-00000000".into(),
                            secondary: None,
                        };
                        Recorder::new(client.clone(), reporter)
                            .publish(&ev, &created.object_ref(&()))
                            .await
                            .context("create Event")?;
                    }
                    Ok(Instant::now())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let wall = t0.elapsed();
        let cpu = super::CpuSample::take(&procs).describe_since(&cpu_before);
        watch.abort();
        let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}"))).collect();
        if !failed.is_empty() {
            bail!("{} of {n} objects failed in floor step {requests}, e.g. {}", failed.len(), failed[0]);
        }
        println!(
            "floor step {requests}: {:<22} {n} in {:.2} s ({:.0}/s); CPU: {cpu}",
            STEPS[requests - 1],
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64()
        );
        let mut done_s: Vec<f64> =
            results.iter().filter_map(|r| r.as_ref().ok()).map(|d| (*d - t0).as_secs_f64()).collect();
        done_s.sort_by(f64::total_cmp);
        steps.push(Step { requests, wall, done_s });
    }
    Ok(steps)
}
