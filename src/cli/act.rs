//! `kubectl mtls renew`, `rotate` and `rollback`: requests the operator acts on, never work done
//! in its place. Renewal is the `mtls.io/renew-requested` annotation on the identity (the
//! operator re-issues through its global rate limit); rotation and rollback are the authority's
//! `spec.rotation.trigger` and `spec.rotation.action`, exactly what a user would edit by hand.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use futures::StreamExt;
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};

use super::{RenewArgs, Session, SteerArgs, explain, short};
use crate::{
    api::{MtlsAuthority, MtlsIdentity, Phase},
    controllers::ANN_RENEW_REQUESTED,
};

const POLL: Duration = Duration::from_millis(500);

fn ready(id: &MtlsIdentity) -> Option<(String, String, String)> {
    let c = id.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn serial(id: &MtlsIdentity) -> Option<String> {
    id.status.as_ref()?.serial_number.clone()
}

pub async fn renew(s: &Session, a: &RenewArgs) -> anyhow::Result<i32> {
    let mut targets: Vec<(String, String)> = vec![];
    if a.all || a.selector.is_some() {
        let ns = s.namespace.as_str();
        let api: Api<MtlsIdentity> = Api::namespaced(s.client.clone(), ns);
        let lp = a.selector.as_deref().map(|l| ListParams::default().labels(l)).unwrap_or_default();
        let found = api.list(&lp).await.map_err(|e| explain(e, "list", "mtlsidentities.mtls.io", Some(ns)))?;
        if found.items.is_empty() {
            bail!(
                "no MtlsIdentity in namespace {ns}{}",
                a.selector.as_deref().map(|l| format!(" matches {l:?}")).unwrap_or_default()
            );
        }
        targets.extend(found.items.iter().map(|i| (ns.to_string(), i.name_any())));
    } else if a.identities.is_empty() {
        bail!("name the identities to renew (NS/NAME or NAME), or use -n NS --all, or -l SELECTOR");
    } else {
        for t in &a.identities {
            let (ns, name) = s.split(t)?;
            targets.push((ns.to_string(), name.to_string()));
        }
    }
    let request = Timestamp::now().to_string();
    let mut before: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    for (ns, name) in &targets {
        let api: Api<MtlsIdentity> = Api::namespaced(s.client.clone(), ns);
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| explain(e, "get", "mtlsidentities.mtls.io", Some(ns)))?
            .ok_or_else(|| anyhow!("no MtlsIdentity {ns}/{name}"))?;
        let patch = serde_json::json!({"metadata": {"annotations": {ANN_RENEW_REQUESTED: request}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| explain(e, "patch", "mtlsidentities.mtls.io", Some(ns)))?;
        println!("{ns}/{name}: renewal requested (serial {})", serial(&current).unwrap_or_else(|| "none yet".into()));
        before.insert((ns.clone(), name.clone()), serial(&current));
    }
    let op = s.operator().await;
    if op.running == Some(false) {
        eprintln!("warning: the operator is {}: the request is recorded and acted on when it runs", op.detail);
    }
    if !a.wait {
        return Ok(0);
    }
    let deadline = Instant::now() + a.timeout;
    let mut pending = before;
    loop {
        let mut still = BTreeMap::new();
        for ((ns, name), old) in pending {
            let api: Api<MtlsIdentity> = Api::namespaced(s.client.clone(), &ns);
            let id = api.get(&name).await.map_err(|e| explain(e, "get", "mtlsidentities.mtls.io", Some(&ns)))?;
            let renewed = serial(&id).is_some() && serial(&id) != old;
            match ready(&id) {
                Some((st, _, _)) if renewed && st == "True" => {
                    println!("{ns}/{name}: renewed, serial {}", serial(&id).unwrap_or_default())
                }
                _ => {
                    still.insert((ns, name), old);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(0);
        }
        if Instant::now() >= deadline {
            let mut msg = format!("timed out after {}s; not renewed yet:", a.timeout.as_secs());
            for (ns, name) in pending.keys() {
                let id = Api::<MtlsIdentity>::namespaced(s.client.clone(), ns).get(name).await.ok();
                let why =
                    id.as_ref().and_then(ready).map(|(st, r, m)| format!("Ready={st} {r}: {m}")).unwrap_or_default();
                msg += &format!("\n  {ns}/{name}: {why}");
            }
            msg += &format!("\noperator: {}", s.operator().await.detail);
            bail!(msg);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn phase_of(a: &MtlsAuthority) -> Phase {
    a.status.as_ref().and_then(|s| s.rotation.as_ref()).map(|r| r.phase).unwrap_or_default()
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question}\nrefusing without --yes: stdin is not a terminal to confirm on");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") { Ok(()) } else { bail!("cancelled") }
}

async fn patch_rotation(s: &Session, name: &str, rotation: serde_json::Value) -> anyhow::Result<()> {
    Api::<MtlsAuthority>::all(s.client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"rotation": rotation}})))
        .await
        .map_err(|e| explain(e, "patch", "mtlsauthorities.mtls.io", None))?;
    Ok(())
}

pub async fn rotate(s: &Session, a: &SteerArgs) -> anyhow::Result<i32> {
    let auth = s.authority(&a.authority).await?;
    let phase = phase_of(&auth);
    if phase != Phase::Stable {
        bail!(
            "authority {} is already rotating ({}): follow it with `kubectl mtls status --authority {0}`, or reverse it with `kubectl mtls rollback {0}`",
            a.authority,
            phase.as_str()
        );
    }
    let st = auth.status.clone().unwrap_or_default();
    let active = st.active_ca.as_ref().map(|c| short(&c.fingerprint).to_string()).unwrap_or_else(|| "none yet".into());
    confirm(
        &format!(
            "Rotate the CA of authority {} (active CA {active}): a new CA is added to every bundle, {} identities are re-issued at {}/s, then the old CA is removed.",
            a.authority,
            st.identities.unwrap_or(0),
            auth.spec.rotation.reissue_rate
        ),
        a.yes,
    )?;
    let trigger = format!("kubectl-mtls-{}", Timestamp::now().as_second());
    // A Rollback left from an earlier rotation would hold the new one: cleared in the same patch.
    patch_rotation(s, &a.authority, serde_json::json!({"trigger": trigger, "action": null})).await?;
    println!("authority {}: rotation requested (trigger {trigger})", a.authority);
    let op = s.operator().await;
    if op.running == Some(false) {
        eprintln!("warning: the operator is {}", op.detail);
    }
    if !a.wait {
        println!("follow it with: kubectl mtls status --authority {}", a.authority);
        return Ok(0);
    }
    follow(s, &a.authority, a.timeout, |auth| {
        auth.status.as_ref().and_then(|s| s.rotation.as_ref()).and_then(|r| r.observed_trigger.as_deref())
            == Some(trigger.as_str())
    })
    .await
}

pub async fn rollback(s: &Session, a: &SteerArgs) -> anyhow::Result<i32> {
    let auth = s.authority(&a.authority).await?;
    let phase = phase_of(&auth);
    let rot = auth.status.as_ref().and_then(|s| s.rotation.clone()).unwrap_or_default();
    if phase == Phase::Stable {
        bail!("nothing to roll back: authority {} is Stable (no rotation in flight)", a.authority);
    }
    if rot.rolled_back {
        bail!(
            "authority {} is already rolling back ({}): it returns to its previous CA; follow it with `kubectl mtls status --authority {0}`",
            a.authority,
            phase.as_str()
        );
    }
    confirm(
        &format!(
            "Roll back the rotation of authority {} (now {}): leaves are re-issued with the previous CA.",
            a.authority,
            phase.as_str()
        ),
        a.yes,
    )?;
    patch_rotation(s, &a.authority, serde_json::json!({"action": "Rollback"})).await?;
    println!("authority {}: rollback requested (was {})", a.authority, phase.as_str());
    if !a.wait {
        println!("follow it with: kubectl mtls status --authority {}", a.authority);
        return Ok(0);
    }
    follow(s, &a.authority, a.timeout, |auth| {
        auth.status
            .as_ref()
            .and_then(|s| s.rotation.as_ref())
            .is_some_and(|r| r.rolled_back || r.phase == Phase::Stable)
    })
    .await
}

/// Prints each phase as the operator moves through it, until Stable after `started` was seen.
/// Watches the authority, so that a phase that lasts a moment (each is written to status before
/// it takes effect) is seen too.
async fn follow(
    s: &Session,
    name: &str,
    timeout: Duration,
    started: impl Fn(&MtlsAuthority) -> bool,
) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    let api: Api<MtlsAuthority> = Api::all(s.client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut seen_start = false;
    let mut last = String::new();
    let mut warned = false;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        if t0.elapsed() > timeout {
            let phase = s.authority(name).await.map(|a| phase_of(&a).as_str()).unwrap_or("unknown");
            bail!(
                "timed out after {}s in phase {phase}; `kubectl mtls status --authority {name}` says what holds it",
                timeout.as_secs()
            );
        }
        let auth = match next {
            Err(_) => {
                if !seen_start && !warned && t0.elapsed() > Duration::from_secs(30) {
                    eprintln!(
                        "warning: the operator has not acted on the request after 30s; operator: {}",
                        s.operator().await.detail
                    );
                    warned = true;
                }
                continue;
            }
            Ok(None) => bail!("the watch on authority {name} ended"),
            Ok(Some(Err(e))) => {
                eprintln!("warning: watching authority {name}: {e} (retrying)");
                continue;
            }
            Ok(Some(Ok(a))) => a,
        };
        seen_start |= started(&auth);
        if !seen_start {
            continue;
        }
        let st = auth.status.clone().unwrap_or_default();
        let phase = phase_of(&auth);
        let progress = st
            .rotation_progress
            .as_ref()
            .filter(|_| matches!(phase, Phase::Reissuing | Phase::Draining))
            .map(|p| format!(", re-issued {}/{}", p.reissued, p.total))
            .unwrap_or_default();
        let bundle = st
            .bundle
            .as_ref()
            .map(|b| {
                format!(
                    ", bundle v{} in {}/{} namespaces, {}/{} Secrets",
                    b.version,
                    b.namespaces_up_to_date.unwrap_or(0),
                    b.namespaces_total.unwrap_or(0),
                    b.secrets_up_to_date.unwrap_or(0),
                    b.secrets_total.unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let back = if st.rotation.as_ref().is_some_and(|r| r.rolled_back) && phase != Phase::Stable {
            " (rolling back)"
        } else {
            ""
        };
        let line = format!("{}{back}{progress}{bundle}", phase.as_str());
        if line != last {
            println!("{:>5}s  {line}", t0.elapsed().as_secs());
            last = line;
        }
        if phase == Phase::Stable {
            let active = st.active_ca.as_ref().map(|c| short(&c.fingerprint).to_string()).unwrap_or_default();
            println!("authority {name}: Stable, active CA {active}");
            return Ok(0);
        }
    }
}
