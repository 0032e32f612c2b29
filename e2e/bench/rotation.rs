//! A full CA rotation of every identity: sets a new `spec.rotation.trigger` on the authority and
//! times it, phase by phase, until the authority is Stable on the new CA; then checks that every
//! identity Secret holds a leaf of the new CA.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use mtls_operator::api::{MtlsAuthority, Phase};

pub struct Rotation {
    /// Each phase entered and when, seconds after the trigger.
    pub phases: Vec<(String, f64)>,
    pub took: Duration,
    /// Identity Secrets holding a leaf of the new CA, and all of them.
    pub on_new_ca: usize,
    pub secrets: usize,
}

fn generation(a: &MtlsAuthority) -> Option<(Phase, u32, Option<u32>)> {
    let r = a.status.as_ref()?.rotation.as_ref()?;
    Some((r.phase, r.from, r.to))
}

/// Triggers the rotation and waits until the authority is Stable on a newer CA.
pub async fn run(client: &Client, authority: &str, timeout: Duration) -> anyhow::Result<Rotation> {
    let api: Api<MtlsAuthority> = Api::all(client.clone());
    let before = api.get(authority).await.context("reading the authority")?;
    let (_, from, _) = generation(&before).ok_or_else(|| anyhow!("the authority has no rotation state yet"))?;
    let mut stream = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={authority}")))
        .default_backoff()
        .applied_objects()
        .boxed();
    // The watch's first event is the current state: from then on, every change is seen.
    stream.next().await.ok_or_else(|| anyhow!("the authority watch ended"))??;

    let trigger = format!("bench-{}", jiff::Timestamp::now().as_second());
    let t0 = Instant::now();
    api.patch(
        authority,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"rotation": {"trigger": trigger}}})),
    )
    .await
    .context("setting spec.rotation.trigger")?;
    let mut phases: Vec<(String, f64)> = vec![];
    let mut progress: Option<(u32, u32)> = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_print = Instant::now();
    let active_fp = loop {
        let a = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(a)) => a?,
            Ok(None) => bail!("the authority watch ended"),
            Err(_) => bail!("the rotation did not finish within {} s; phases: {phases:?}", timeout.as_secs()),
        };
        let at = t0.elapsed().as_secs_f64();
        let st = a.status.clone().unwrap_or_default();
        if let Some(p) = st.phase.clone()
            && phases.last().map(|(l, _)| l) != Some(&p)
        {
            eprintln!("  {at:>6.1} s: rotation phase {p}");
            phases.push((p, at));
        }
        if let Some(p) = &st.rotation_progress
            && progress != Some((p.reissued, p.total))
        {
            progress = Some((p.reissued, p.total));
            if last_print.elapsed() >= Duration::from_secs(2) {
                eprintln!("  {at:>6.1} s: {} of {} identity Secrets on the new CA", p.reissued, p.total);
                last_print = Instant::now();
            }
        }
        if let Some((Phase::Stable, now_from, None)) = generation(&a)
            && now_from > from
        {
            break st.active_ca.map(|c| c.fingerprint).unwrap_or_default();
        }
    };
    let took = t0.elapsed();

    // Every identity Secret of the authority must now hold a leaf of the new CA.
    let secrets = Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default().labels(&format!("mtls.io/authority={authority},mtls.io/identity")))
        .await
        .context("listing identity Secrets")?;
    let on_new_ca =
        secrets.items.iter().filter(|s| s.annotations().get("mtls.io/issuer-fingerprint") == Some(&active_fp)).count();
    Ok(Rotation { phases, took, on_new_ca, secrets: secrets.items.len() })
}
