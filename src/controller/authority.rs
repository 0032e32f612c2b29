//! Reconciles an `MtlsAuthority`: obtains its signing CA (generated create-only, or supplied and
//! vetted), computes its trust bundle, publishes both to the identity controller, and reports
//! status.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};

use super::{
    ANN_FINGERPRINT, AuthorityState, Bundle, Context, LABEL_AUTHORITY, LABEL_CA_GENERATION, LABEL_MANAGED_BY, MANAGER,
    condition, rfc3339,
};
use crate::{
    crd::{BundleStatus, CaInfo, MtlsAuthority},
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

/// The bundle for a set of trusted certificates (PEM), keeping the version when the member set
/// is unchanged and bumping it otherwise.
pub fn bundle_for(trusted_pem: &[String], previous: Option<&BundleStatus>) -> Bundle {
    let mut members: Vec<(String, String)> = vec![];
    for pem in trusted_pem {
        if let Ok(ders) = pki::parse_pem_certs("bundle", pem) {
            for der in ders {
                let fp = pki::fingerprint(&der);
                if !members.iter().any(|(f, _)| *f == fp) {
                    members.push((fp, pki::der_to_pem(&der)));
                }
            }
        }
    }
    let pem: String = members.iter().map(|(_, p)| p.as_str()).collect();
    let fps: Vec<String> = members.into_iter().map(|(f, _)| f).collect();
    let version = match previous {
        Some(p) if p.members == fps => p.version,
        Some(p) => p.version + 1,
        None => 1,
    };
    Bundle { version, sha256: pki::sha256_hex(pem.as_bytes()), pem, members: fps }
}

pub async fn reconcile(auth: Arc<MtlsAuthority>, ctx: Arc<Context>) -> Result<Action, Error> {
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
    let ready_msg;
    let requeue;
    match loaded {
        Ok((signer, secret_name)) => {
            let bundle = bundle_for(&signer.roots_pem, status.bundle.as_ref());
            new_status.phase = Some("Stable".into());
            new_status.active_ca = Some(ca_info(&signer, &secret_name));
            let prev_bundle = status.bundle.clone().unwrap_or_default();
            new_status.bundle = Some(BundleStatus {
                version: bundle.version,
                sha256: bundle.sha256.clone(),
                members: bundle.members.clone(),
                ..prev_bundle
            });
            ready_msg = (
                true,
                "CaReady",
                format!(
                    "signing with CA {} valid until {}; trust bundle version {}",
                    &signer.facts.fingerprint[..16],
                    rfc3339(signer.facts.not_after),
                    bundle.version
                ),
            );
            ctx.metrics.set_authority(&name, signer.facts.not_after.as_second(), bundle.version);
            requeue = signer.facts.not_after.duration_since(now).unsigned_abs().max(Duration::from_secs(1));
            ctx.publish_authority(
                &name,
                Some(AuthorityState { generation: auth.metadata.generation, spec: auth.spec.clone(), signer, bundle }),
            );
        }
        Err(nr) => {
            ctx.publish_authority(&name, None);
            ready_msg = (false, nr.reason, nr.message);
            requeue = Duration::from_secs(300);
        }
    }
    let (ok, reason, message) = ready_msg;
    let prev_ready = status.conditions.iter().find(|c| c.type_ == "Ready").cloned();
    new_status.conditions =
        vec![condition(&status.conditions, "Ready", ok, reason, message.clone(), auth.metadata.generation, now)];
    if new_status != status {
        let api: Api<MtlsAuthority> = Api::all(ctx.client.clone());
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": new_status })))
            .await
            .map_err(Error::kube("writing authority status"))?;
        let changed =
            prev_ready.as_ref().is_none_or(|c| c.reason != reason || c.status != if ok { "True" } else { "False" });
        if changed {
            if !ok {
                ctx.metrics.reconcile_error(reason);
            }
            ctx.event(&auth.object_ref(&()), !ok, reason, message).await;
        }
    }
    Ok(Action::requeue(requeue))
}

pub fn error_policy(auth: Arc<MtlsAuthority>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("authority/{}", auth.name_any());
    let n = ctx.note_failure(&key);
    ctx.metrics.reconcile_error(err.reason());
    tracing::warn!(authority = %auth.name_any(), error = %err, failures = n, "authority reconcile failed");
    Action::requeue(super::retry_backoff(n, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_version_bumps_only_when_members_change() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let year = Duration::from_secs(86400 * 365);
        let (a, _) = pki::generate_ca("A", &[], crate::crd::KeyAlgorithm::EcdsaP256, now, year).unwrap();
        let (b, _) = pki::generate_ca("B", &[], crate::crd::KeyAlgorithm::EcdsaP256, now, year).unwrap();
        let v1 = bundle_for(std::slice::from_ref(&a), None);
        assert_eq!(v1.version, 1);
        let status = |b: &Bundle| BundleStatus {
            version: b.version,
            sha256: b.sha256.clone(),
            members: b.members.clone(),
            ..Default::default()
        };
        // Same members (even given twice): same version.
        let same = bundle_for(&[a.clone(), a.clone()], Some(&status(&v1)));
        assert_eq!((same.version, &same.sha256), (1, &v1.sha256));
        let v2 = bundle_for(&[a.clone(), b.clone()], Some(&status(&v1)));
        assert_eq!(v2.version, 2);
        assert_eq!(v2.members.len(), 2);
        let v3 = bundle_for(&[b], Some(&status(&v2)));
        assert_eq!(v3.version, 3);
    }
}
