//! Reconciles an `MtlsAuthority`: obtains its signing CA (generated create-only, or supplied and
//! vetted), computes its trust bundle, publishes both to the identity controller, and reports
//! status.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};

use super::{
    ANN_FINGERPRINT, AuthorityState, Context, LABEL_AUTHORITY, LABEL_CA_GENERATION, LABEL_MANAGED_BY, MANAGER,
    condition, rfc3339,
};
use crate::{
    bundle,
    controller::publish::{self, Caches},
    crd::{BundleHistoryEntry, BundleStatus, CaInfo, MtlsAuthority, MtlsAuthorityStatus},
    duration,
    error::Error,
    pki::{self, PkiError, SigningCa},
};

/// Why an authority is not ready, as a condition reason.
fn pki_reason(e: &PkiError) -> &'static str {
    match e {
        PkiError::BadPem { .. } | PkiError::NoCertificate { .. } | PkiError::BadCertificate { .. } => "CaInvalidPem",
        PkiError::BadKey => "CaInvalidKey",
        PkiError::NotACa => "CaNotACa",
        PkiError::NoCertSign => "CaCannotSign",
        PkiError::KeyMismatch => "CaKeyMismatch",
        PkiError::Expired { .. } => "CaExpired",
        PkiError::NotYetValid { .. } => "CaNotYetValid",
        PkiError::WeakKey(_) => "CaWeakKey",
        PkiError::BrokenChain { .. } => "CaBrokenChain",
        PkiError::Generate(_) => "CaGenerationFailed",
    }
}

/// A problem that makes the authority not ready until something changes.
struct NotReady {
    reason: &'static str,
    message: String,
}

fn secret_str<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.data.as_ref()?.get(key).and_then(|b| std::str::from_utf8(&b.0).ok())
}

pub fn ca_secret_name(authority: &str, generation: u32) -> String {
    format!("{authority}-ca-{generation}")
}

fn ca_info(ca: &SigningCa, secret_name: &str) -> CaInfo {
    CaInfo {
        fingerprint: ca.facts.fingerprint.clone(),
        not_before: rfc3339(ca.facts.not_before),
        not_after: rfc3339(ca.facts.not_after),
        subject: Some(ca.facts.subject.clone()),
        secret_name: Some(secret_name.to_string()),
    }
}

fn load_from_secret(s: &Secret, now: Timestamp) -> Result<SigningCa, PkiError> {
    let crt = secret_str(s, "tls.crt").unwrap_or_default();
    let key = secret_str(s, "tls.key").ok_or(PkiError::BadKey)?;
    pki::load_ca(crt, key, secret_str(s, "ca.crt"), now)
}

/// Loads the CA generation `gen` of a generated authority, minting it if it does not exist yet.
/// The Secret is written create-only: if another process won the race, its CA is used.
async fn ensure_generated_ca(
    ctx: &Context,
    auth: &MtlsAuthority,
    generation: u32,
    now: Timestamp,
) -> Result<Result<(SigningCa, String), NotReady>, Error> {
    let name = auth.name_any();
    let secret_name = ca_secret_name(&name, generation);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let existing = api.get_opt(&secret_name).await.map_err(Error::kube("reading CA Secret"))?;
    let secret = match existing {
        Some(s) => s,
        None => {
            let generate = auth.spec.ca.generate.clone().unwrap_or_default();
            let lifetime = match duration::parse(&generate.lifetime) {
                Ok(d) => d,
                Err(e) => return Ok(Err(NotReady { reason: "InvalidSpec", message: e.to_string() })),
            };
            let subject = generate.subject.unwrap_or_default();
            let cn = subject.common_name.unwrap_or_else(|| format!("{name} mtls-operator CA {generation}"));
            let (cert, key) = match pki::generate_ca(&cn, &subject.organization, generate.algorithm, now, lifetime) {
                Ok(v) => v,
                Err(e) => return Ok(Err(NotReady { reason: pki_reason(&e), message: e.to_string() })),
            };
            let fp = pki::parse_pem_certs("generated CA", &cert).map(|d| pki::fingerprint(&d[0])).unwrap_or_default();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.clone()),
                    namespace: Some(ctx.namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                        (LABEL_AUTHORITY.to_string(), name.clone()),
                        (LABEL_CA_GENERATION.to_string(), generation.to_string()),
                    ])),
                    annotations: Some(BTreeMap::from([(ANN_FINGERPRINT.to_string(), fp)])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(BTreeMap::from([
                    ("tls.crt".to_string(), ByteString(cert.clone().into_bytes())),
                    ("tls.key".to_string(), ByteString(key.expose().as_bytes().to_vec())),
                    ("ca.crt".to_string(), ByteString(cert.into_bytes())),
                ])),
                ..Default::default()
            };
            match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &secret).await {
                Ok(created) => {
                    tracing::info!(authority = %name, secret = %secret_name, "generated CA");
                    ctx.event(
                        &auth.object_ref(&()),
                        false,
                        "CaGenerated",
                        format!("generated CA in Secret {}/{secret_name}", ctx.namespace),
                    )
                    .await;
                    created
                }
                // Someone else (another replica) created it first: use theirs, never mint a second.
                Err(kube::Error::Api(ae)) if ae.code == 409 => {
                    api.get(&secret_name).await.map_err(Error::kube("re-reading CA Secret after a create race"))?
                }
                Err(e) => return Err(Error::kube("creating CA Secret")(e)),
            }
        }
    };
    Ok(load_from_secret(&secret, now).map(|ca| (ca, secret_name.clone())).map_err(|e| NotReady {
        reason: pki_reason(&e),
        message: format!("CA Secret {}/{secret_name}: {e}", ctx.namespace),
    }))
}

async fn load_supplied_ca(
    ctx: &Context,
    secret_name: &str,
    now: Timestamp,
) -> Result<Result<(SigningCa, String), NotReady>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(secret) = api.get_opt(secret_name).await.map_err(Error::kube("reading supplied CA Secret"))? else {
        return Ok(Err(NotReady {
            reason: "CaSecretNotFound",
            message: format!("Secret {}/{secret_name} named in spec.ca.secretRef does not exist", ctx.namespace),
        }));
    };
    Ok(load_from_secret(&secret, now).map(|ca| (ca, secret_name.to_string())).map_err(|e| NotReady {
        reason: pki_reason(&e),
        message: format!("supplied CA Secret {}/{secret_name}: {e}", ctx.namespace),
    }))
}

/// Reads the PEM of every `trustBundle.additionalCAs` source. Missing sources are reported
/// (as the second element) and left out of the bundle.
async fn additional_cas(ctx: &Context, auth: &MtlsAuthority) -> Result<(Vec<String>, Vec<String>), Error> {
    let (mut pems, mut missing) = (vec![], vec![]);
    for src in &auth.spec.trust_bundle.additional_cas {
        let (kind, r) = match (&src.config_map, &src.secret) {
            (Some(r), _) => ("ConfigMap", r),
            (None, Some(r)) => ("Secret", r),
            (None, None) => continue,
        };
        let text = if kind == "ConfigMap" {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.namespace)
                .get_opt(&r.name)
                .await
                .map_err(Error::kube("reading additionalCAs ConfigMap"))?
                .and_then(|c| c.data.and_then(|d| d.get(&r.key).cloned()))
        } else {
            Api::<Secret>::namespaced(ctx.client.clone(), &ctx.namespace)
                .get_opt(&r.name)
                .await
                .map_err(Error::kube("reading additionalCAs Secret"))?
                .and_then(|s| secret_str(&s, &r.key).map(str::to_string))
        };
        match text {
            Some(t) if pki::parse_pem_certs("additional CA", &t).is_ok() => pems.push(t),
            _ => missing.push(format!("{kind} {}/{} key {}", ctx.namespace, r.name, r.key)),
        }
    }
    Ok((pems, missing))
}

pub async fn reconcile(auth: Arc<MtlsAuthority>, ctx: Arc<Context>, caches: &Caches) -> Result<Action, Error> {
    let name = auth.name_any();
    let now = Timestamp::now();
    let status = auth.status.clone().unwrap_or_default();
    ctx.metrics.reconciles.inc();

    let loaded = match (&auth.spec.ca.generate, &auth.spec.ca.secret_ref) {
        (_, Some(r)) => load_supplied_ca(&ctx, &r.name, now).await?,
        (_, None) => {
            // The active generation is recorded in status; a fresh authority starts at 1.
            let generation = status
                .active_ca
                .as_ref()
                .and_then(|c| c.secret_name.as_deref())
                .and_then(|s| s.rsplit('-').next())
                .and_then(|g| g.parse().ok())
                .unwrap_or(1);
            ensure_generated_ca(&ctx, &auth, generation, now).await?
        }
    };

    let mut new_status = status.clone();
    new_status.observed_generation = auth.metadata.generation;
    let (signer, secret_name) = match loaded {
        Ok(v) => v,
        Err(nr) => {
            ctx.publish_authority(&name, None);
            write_status(&ctx, &auth, &status, new_status, false, nr.reason, nr.message, now).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };

    let (extra, missing) = additional_cas(&ctx, &auth).await?;
    let bundle = bundle::assemble(&signer.roots_pem, &extra, now, status.bundle.as_ref());
    let new_version = status.bundle.as_ref().is_none_or(|b| b.version != bundle.version);
    new_status.phase = Some("Stable".into());
    new_status.active_ca = Some(ca_info(&signer, &secret_name));
    ctx.metrics.set_authority(&name, signer.facts.not_after.as_second(), bundle.version);
    let ca_expiry = signer.facts.not_after;
    let signer_fp = signer.facts.fingerprint.clone();
    // Identities learn of the new signer or bundle before anything else is written.
    ctx.publish_authority(
        &name,
        Some(AuthorityState {
            generation: auth.metadata.generation,
            spec: auth.spec.clone(),
            signer,
            bundle: bundle.clone(),
        }),
    );
    let report = publish::publish(&ctx, &auth, &bundle, caches).await?;
    new_status.bundle = Some(BundleStatus {
        version: bundle.version,
        sha256: bundle.sha256.clone(),
        members: bundle.members.clone(),
        namespaces_up_to_date: Some(report.namespaces_up_to_date),
        namespaces_total: Some(report.namespaces_total),
        secrets_up_to_date: Some(report.secrets_up_to_date),
        secrets_total: Some(report.secrets_total),
    });
    new_status.identities = Some(report.secrets_total);
    if new_version {
        new_status.history.insert(
            0,
            BundleHistoryEntry {
                version: bundle.version,
                sha256: bundle.sha256.clone(),
                members: bundle.members.clone(),
                published_at: rfc3339(now),
            },
        );
        new_status.history.truncate(publish::HISTORY_KEPT);
    }
    let mut message = format!(
        "signing with CA {} valid until {}; trust bundle version {} in {}/{} namespaces and {}/{} identity Secrets",
        &signer_fp[..16],
        rfc3339(ca_expiry),
        bundle.version,
        report.namespaces_up_to_date,
        report.namespaces_total,
        report.secrets_up_to_date,
        report.secrets_total,
    );
    if !report.conflicts.is_empty() {
        message += &format!(
            "; a ConfigMap named {} that this authority does not own blocks the bundle in: {}",
            auth.spec.trust_bundle.config_map_name,
            report.conflicts.join(", ")
        );
    }
    if !missing.is_empty() {
        message += &format!("; additionalCAs not found or not PEM: {}", missing.join(", "));
    }
    write_status(&ctx, &auth, &status, new_status, true, "CaReady", message, now).await?;
    if new_version {
        let note = format!("trust bundle version {} ({} certificates) published", bundle.version, bundle.members.len());
        ctx.event(&auth.object_ref(&()), false, "BundlePublished", note).await;
    }
    if !missing.is_empty()
        && ctx.note_problem(&format!("authority/{name}/additional"), "AdditionalCaUnavailable", &missing.join(", "))
    {
        let note = format!("left out of the trust bundle: {}", missing.join(", "));
        ctx.event(&auth.object_ref(&()), true, "AdditionalCaUnavailable", note).await;
    }
    // While the rollout is incomplete, look again shortly: the counts come from caches that
    // other controllers are updating. Once complete, nothing happens until a watch fires or
    // the CA nears expiry.
    let requeue = if report.complete() && report.conflicts.is_empty() {
        ca_expiry.duration_since(now).unsigned_abs().max(Duration::from_secs(1))
    } else {
        Duration::from_secs(2)
    };
    Ok(Action::requeue(requeue))
}

/// Writes status when it changed, with one Event when the Ready condition changes.
#[allow(clippy::too_many_arguments)]
async fn write_status(
    ctx: &Context,
    auth: &MtlsAuthority,
    status: &MtlsAuthorityStatus,
    mut new_status: MtlsAuthorityStatus,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<(), Error> {
    let name = auth.name_any();
    new_status.conditions =
        vec![condition(&status.conditions, "Ready", ok, reason, message.clone(), auth.metadata.generation, now)];
    if new_status == *status {
        return Ok(());
    }
    let api: Api<MtlsAuthority> = Api::all(ctx.client.clone());
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": new_status })))
        .await
        .map_err(Error::kube("writing authority status"))?;
    // One Event per change of readiness or reason, not per reconcile.
    let key = format!("authority/{name}");
    let status_word = if ok { "True" } else { "False" };
    let prev = status.conditions.iter().find(|c| c.type_ == "Ready");
    let same_as_status = prev.is_some_and(|c| c.reason == reason && c.status == status_word);
    if ctx.note_problem(&key, reason, status_word) && !same_as_status {
        if !ok {
            ctx.metrics.reconcile_error(reason);
        }
        ctx.event(&auth.object_ref(&()), !ok, reason, message).await;
    }
    Ok(())
}

pub fn error_policy(auth: Arc<MtlsAuthority>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("authority/{}", auth.name_any());
    let n = ctx.note_failure(&key);
    ctx.metrics.reconcile_error(err.reason());
    tracing::warn!(authority = %auth.name_any(), error = %err, failures = n, "authority reconcile failed");
    Action::requeue(super::retry_backoff(n, None))
}
