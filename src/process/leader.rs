//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas can run and only
//! one writes. A replica becomes leader when the Lease is free or its holder stopped renewing for
//! longer than the lease duration; the leader renews every `retry` and gives up (the process
//! stops, to restart as a standby) if it cannot renew within `renew_deadline`. On shutdown the
//! leader releases the Lease so that a standby takes over at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, lease_name: &str, identity: String) -> Self {
        LeaderConfig {
            namespace: namespace.to_string(),
            lease_name: lease_name.to_string(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Whether a Lease can be taken by `me` at `now`, pure.
pub fn can_take(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => {
            let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            spec.renew_time.as_ref().is_none_or(|t| t.0 + duration < now)
        }
    }
}

fn desired(cfg: &LeaderConfig, current: Option<&Lease>, now: Timestamp) -> Lease {
    let spec = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.lease_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version: current.and_then(|l| l.resource_version()),
            ..current.map(|l| l.metadata.clone()).unwrap_or_default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
            acquire_time: if ours { spec.acquire_time.clone() } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours && current.is_some())),
            ..Default::default()
        }),
    }
}

/// One attempt to take or renew the Lease. `Ok(true)`: we hold it now.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&cfg.lease_name).await? {
        None => match api.create(&PostParams::default(), &desired(cfg, None, now)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
            Err(e) => Err(e),
        },
        Some(lease) if can_take(&lease, &cfg.identity, now) => {
            match api.replace(&cfg.lease_name, &PostParams::default(), &desired(cfg, Some(&lease), now)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(_) => Ok(false),
    }
}

/// Waits until this process leads.
pub async fn acquire(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut logged = false;
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "acquired leadership");
                return;
            }
            Ok(false) if !logged => {
                tracing::info!(lease = %cfg.lease_name, "another replica leads; standing by");
                logged = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the Lease"),
        }
        tokio::time::sleep(cfg.retry).await;
    }
}

/// Renews the Lease until it cannot for `renew_deadline` (returns: leadership lost).
pub async fn hold(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry).await;
        match try_acquire(&api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.lease_name, "another replica took the Lease");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "leader election: renewing the Lease failed"),
        }
        if last_ok.elapsed() > cfg.renew_deadline {
            tracing::error!(lease = %cfg.lease_name, "could not renew the Lease in time");
            return;
        }
    }
}

/// Gives the Lease up (on graceful shutdown), so a standby takes over without waiting.
pub async fn release(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.lease_name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let name = cfg.lease_name.clone();
                match api.replace(&name, &PostParams::default(), &lease).await {
                    Ok(_) => tracing::info!(lease = %name, "released leadership"),
                    Err(e) => tracing::warn!(error = %e, "could not release the Lease"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: &str, secs: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert!(can_take(&lease(None, "2026-01-01T00:00:29Z", 15), "me", now));
        assert!(can_take(&lease(Some("me"), "2026-01-01T00:00:29Z", 15), "me", now));
        assert!(!can_take(&lease(Some("other"), "2026-01-01T00:00:20Z", 15), "me", now), "held and fresh");
        assert!(can_take(&lease(Some("other"), "2026-01-01T00:00:10Z", 15), "me", now), "expired");
    }
}
