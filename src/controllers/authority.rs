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
use super::{
    error::Error,
    publish::{self, Caches},
};
use crate::{
    api::{
        BundleHistoryEntry, BundleStatus, CaInfo, MtlsAuthority, MtlsAuthorityStatus, RotationAction, RotationProgress,
    },
    core::{
        bundle, duration,
        pki::{self, PkiError, SigningCa},
        rotation::{Observed, Phase, RotationState, Transition},
    },
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
        PkiError::UnsupportedSubject { .. } => "CaUnsupportedSubject",
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

/// A CA whose Secret holds no self-signed root can only be published as its own trust anchor;
/// OpenSSL's default verification rejects a chain that ends at an intermediate, so that is
/// refused unless the authority opts in (`spec.ca.allowIntermediateTrustAnchor`).
fn vet_anchor(auth: &MtlsAuthority, ca: &SigningCa, secret: &str) -> Result<(), NotReady> {
    match &ca.intermediate_anchor {
        Some(subject) if !auth.spec.ca.allow_intermediate_trust_anchor => Err(NotReady {
            reason: "CaRootMissing",
            message: format!(
                "CA Secret {secret} holds the intermediate CA {subject} but not the self-signed root it chains to \
                 (neither in tls.crt nor as ca.crt); published alone as the trust anchor it would be rejected by \
                 OpenSSL-based peers (nginx: \"unable to get issuer certificate\"). Add the root certificate to the \
                 Secret as ca.crt, or set spec.ca.allowIntermediateTrustAnchor: true to publish the intermediate anyway"
            ),
        }),
        _ => Ok(()),
    }
}

/// The condition shown while an authority publishes an intermediate as its trust anchor (opted in).
fn intermediate_anchor_condition(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    subjects: &[String],
    generation: Option<i64>,
    now: Timestamp,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    if subjects.is_empty() {
        return None;
    }
    let message = format!(
        "the trust bundle anchors at the intermediate CA {} (spec.ca.allowIntermediateTrustAnchor): Go, rustls and \
         curl verify against it, but OpenSSL-based verifiers without partial-chain mode (nginx ssl_verify_client, \
         openssl s_server/s_client) reject every peer with \"unable to get issuer certificate\"; add the root as \
         ca.crt to the CA Secret to end this",
        subjects.join(", ")
    );
    Some(condition(previous, "IntermediateTrustAnchor", true, "RootMissing", message, generation, now))
}

/// Where the key material of a CA generation that does not exist yet comes from.
enum Mint {
    /// Generate a new CA (`spec.ca.generate`).
    Generate,
    /// Copy the CA the user supplied, so that it stays available (to sign, or to roll back to)
    /// after the user replaces their Secret.
    Copy(Secret),
}

/// Loads CA generation `generation`, creating its Secret from `mint` if it does not exist and
/// minting is allowed. The Secret is written create-only: if another process won the race, its
/// CA is used, so two operator processes never produce two CAs for one generation.
async fn ensure_generation(
    ctx: &Context,
    auth: &MtlsAuthority,
    generation: u32,
    mint: Option<Mint>,
    supplied: Option<&(Secret, SigningCa)>,
    now: Timestamp,
) -> Result<Result<SigningCa, NotReady>, Error> {
    let name = auth.name_any();
    let secret_name = ca_secret_name(&name, generation);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let existing = api.get_opt(&secret_name).await.map_err(Error::kube("reading CA Secret"))?;
    let secret = match (existing, mint) {
        (Some(s), _) => s,
        (None, None) => {
            return Ok(Err(NotReady {
                reason: "CaSecretMissing",
                message: format!(
                    "CA generation {generation} (Secret {}/{secret_name}) has been deleted",
                    ctx.namespace
                ),
            }));
        }
        (None, Some(mint)) => {
            let (crt, key, root) = match mint {
                Mint::Generate => {
                    let generate = auth.spec.ca.generate.clone().unwrap_or_default();
                    let lifetime = match duration::parse(&generate.lifetime) {
                        Ok(d) => d,
                        Err(e) => return Ok(Err(NotReady { reason: "InvalidSpec", message: e.to_string() })),
                    };
                    let subject = generate.subject.unwrap_or_default();
                    let cn = subject.common_name.unwrap_or_else(|| format!("{name} mtls-operator CA {generation}"));
                    match pki::generate_ca(&cn, &subject.organization, generate.algorithm, now, lifetime) {
                        Ok((cert, key)) => (cert.clone(), key.expose().to_string(), cert),
                        Err(e) => return Ok(Err(NotReady { reason: pki_reason(&e), message: e.to_string() })),
                    }
                }
                Mint::Copy(src) => (
                    secret_str(&src, "tls.crt").unwrap_or_default().to_string(),
                    secret_str(&src, "tls.key").unwrap_or_default().to_string(),
                    secret_str(&src, "ca.crt").unwrap_or_default().to_string(),
                ),
            };
            let fp = pki::parse_pem_certs("CA", &crt).map(|d| pki::fingerprint(&d[0])).unwrap_or_default();
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
                    ("tls.crt".to_string(), ByteString(crt.into_bytes())),
                    ("tls.key".to_string(), ByteString(key.into_bytes())),
                    ("ca.crt".to_string(), ByteString(root.into_bytes())),
                ])),
                ..Default::default()
            };
            match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &secret).await {
                Ok(created) => {
                    tracing::info!(authority = %name, secret = %secret_name, "stored CA generation {generation}");
                    let note = format!("CA generation {generation} stored in Secret {}/{secret_name}", ctx.namespace);
                    ctx.event(&auth.object_ref(&()), false, "CaGenerated", note).await;
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
    let mut ca = match load_from_secret(&secret, now) {
        Ok(ca) => ca,
        Err(e) => {
            let message = format!("CA Secret {}/{secret_name}: {e}", ctx.namespace);
            return Ok(Err(NotReady { reason: pki_reason(&e), message }));
        }
    };
    // The root of a supplied intermediate, added to the user's Secret after this generation was
    // copied from it, is taken up: the bundle then anchors at the root. Safe at any moment, since
    // leaves carry the intermediate in their chain and so verify against either anchor.
    if let Some((src, sup)) = supplied.filter(|(_, sup)| {
        ca.intermediate_anchor.is_some()
            && sup.intermediate_anchor.is_none()
            && sup.facts.fingerprint == ca.facts.fingerprint
    }) {
        let root = secret_str(src, "ca.crt").unwrap_or_default();
        let patch = serde_json::json!({"stringData": {"ca.crt": root}});
        api.patch(&secret_name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube("adding the root to a CA Secret"))?;
        tracing::info!(authority = %name, secret = %secret_name, "took up the root now supplied as ca.crt");
        ca = sup.clone();
    }
    Ok(vet_anchor(auth, &ca, &format!("{}/{secret_name}", ctx.namespace)).map(|()| ca))
}

/// Reads and vets the CA the user supplies. Returns the Secret (to copy) and the loaded CA.
async fn load_supplied_ca(
    ctx: &Context,
    auth: &MtlsAuthority,
    secret_name: &str,
    now: Timestamp,
) -> Result<Result<(Secret, SigningCa), NotReady>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(secret) = api.get_opt(secret_name).await.map_err(Error::kube("reading supplied CA Secret"))? else {
        return Ok(Err(NotReady {
            reason: "CaSecretNotFound",
            message: format!("Secret {}/{secret_name} named in spec.ca.secretRef does not exist", ctx.namespace),
        }));
    };
    let ca = match load_from_secret(&secret, now) {
        Ok(ca) => ca,
        Err(e) => {
            let message = format!("supplied CA Secret {}/{secret_name}: {e}", ctx.namespace);
            return Ok(Err(NotReady { reason: pki_reason(&e), message }));
        }
    };
    Ok(vet_anchor(auth, &ca, &format!("{}/{secret_name}", ctx.namespace)).map(|()| (secret, ca)))
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

/// The CA generation a new authority starts from. An authority of the same name that was
/// deleted left its CA Secrets behind (deleting an authority never destroys a CA key): the newest
/// generation that was not retired is taken up again, so its identities and every bundle keep
/// trusting the same CA. Only retired generations: the next one, minted fresh. None: 1.
async fn generation_to_adopt(ctx: &Context, authority: &str) -> Result<u32, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = kube::api::ListParams::default().labels(&format!("{LABEL_AUTHORITY}={authority}"));
    let list = api.list_metadata(&lp).await.map_err(Error::kube("listing CA Secrets"))?;
    let prefix = format!("{authority}-ca-");
    let generations = list.items.iter().filter_map(|s| {
        let g: u32 = s.name_any().strip_prefix(&prefix)?.parse().ok()?;
        Some((g, s.labels().get(LABEL_CA_STATE).is_some_and(|v| v == "retired")))
    });
    Ok(adoptable_generation(generations))
}

/// See [`generation_to_adopt`]: (generation, retired) of each CA Secret found.
fn adoptable_generation(found: impl Iterator<Item = (u32, bool)>) -> u32 {
    let (mut live, mut any) = (None, 0);
    for (g, retired) in found {
        any = any.max(g);
        if !retired {
            live = live.max(Some(g));
        }
    }
    live.unwrap_or(any + 1)
}

/// The generation recorded by an older status (before rotation state existed), if any.
fn legacy_generation(status: &MtlsAuthorityStatus) -> Option<u32> {
    status.active_ca.as_ref()?.secret_name.as_deref()?.rsplit('-').next()?.parse().ok()
}

pub async fn reconcile(auth: Arc<MtlsAuthority>, ctx: Arc<Context>, caches: &Caches) -> Result<Action, Error> {
    let key = format!("authority/{}", auth.name_any());
    let result = reconcile_authority(auth, ctx.clone(), caches).await;
    if result.is_ok() {
        // Backoff counts consecutive failures only. The last reported problem is kept: an
        // authority that is Ready=False still reconciles "successfully", and forgetting what it
        // reported let a second reconcile, starting from a cache that did not show the new status
        // yet, publish the same Warning again (seen once in the bad-input test). Readiness
        // changes are tracked by `note_problem` in `write_status_with`.
        ctx.reset_failure_count(&key);
    }
    result
}

async fn reconcile_authority(auth: Arc<MtlsAuthority>, ctx: Arc<Context>, caches: &Caches) -> Result<Action, Error> {
    let name = auth.name_any();
    let now = Timestamp::now();
    let status = auth.status.clone().unwrap_or_default();
    ctx.metrics.reconciles.inc();
    let fresh = status.rotation.is_none() && status.active_ca.is_none();
    let state = match (status.rotation.clone(), fresh) {
        (Some(s), _) => s,
        // New, or deleted and created again: the CA Secrets of the earlier one are still here.
        (None, true) => RotationState::stable(generation_to_adopt(&ctx, &name).await?),
        (None, false) => RotationState::stable(legacy_generation(&status).unwrap_or(1)),
    };
    let mut new_status = status.clone();
    new_status.observed_generation = auth.metadata.generation;

    macro_rules! not_ready {
        ($nr:expr) => {{
            let nr: NotReady = $nr;
            ctx.publish_authority(&name, None);
            let reason_changed =
                status.conditions.iter().find(|c| c.type_ == "Ready").is_none_or(|c| c.reason != nr.reason);
            write_status(&ctx, &auth, &status, new_status, false, nr.reason, nr.message, now).await?;
            if reason_changed {
                // Identities that found no authority at all, or another problem, learn of this one.
                let _ = ctx.authority_changed.send(name.clone());
            }
            return Ok(Action::requeue(Duration::from_secs(300)));
        }};
    }

    // What the API server cannot check: label selectors (a bad one would silently match nothing).
    if let Err(e) = crate::core::policy::check_selectors(&auth.spec) {
        not_ready!(NotReady { reason: "InvalidSpec", message: e.to_string() });
    }

    // The CA the user supplies, when there is one: vetted on every look.
    let supplied = match &auth.spec.ca.secret_ref {
        Some(r) => match load_supplied_ca(&ctx, &auth, &r.name, now).await? {
            Ok(v) => Some(v),
            Err(nr) => not_ready!(nr),
        },
        None => None,
    };
    let mint = || match &supplied {
        Some((secret, _)) => Mint::Copy(secret.clone()),
        None => Mint::Generate,
    };

    // The CA generations the persisted state uses. Only a brand-new authority mints here; a
    // rotation's new CA is minted just before the rotation is persisted (below).
    let mut cas: BTreeMap<u32, SigningCa> = BTreeMap::new();
    for generation in std::iter::once(state.from).chain(state.to) {
        let allowed = fresh && generation == state.from;
        match ensure_generation(&ctx, &auth, generation, allowed.then(mint), supplied.as_ref(), now).await? {
            Ok(ca) => cas.insert(generation, ca),
            Err(nr) => not_ready!(nr),
        };
    }
    let signer = cas[&state.signer()].clone();
    let own_roots: Vec<String> = state.bundle().iter().flat_map(|g| cas[g].roots_pem.clone()).collect();
    let (extra, missing) = additional_cas(&ctx, &auth).await?;
    let bundle = bundle::assemble(&own_roots, &extra, now, status.bundle.as_ref());
    let new_version = status.bundle.as_ref().is_none_or(|b| b.version != bundle.version);
    let auto_at = signer.facts.not_after.as_second() - auto_rotate_before(&auth, &signer).as_secs() as i64;
    ctx.metrics.set_authority(&name, signer.facts.not_after.as_second(), auto_at, bundle.version);

    // Identities learn of the signer and bundle of the persisted state before anything else.
    ctx.publish_authority(
        &name,
        Some(AuthorityState {
            generation: auth.metadata.generation,
            spec: auth.spec.clone(),
            signer: signer.clone(),
            bundle: bundle.clone(),
        }),
    );
    let report = publish::publish(&ctx, &auth, &bundle, &signer.facts.fingerprint, caches).await?;

    // Observe and step the rotation machine.
    let (obs, auto_before) = observe(&auth, &state, &signer, &cas, supplied.as_ref(), &report, now);
    if state.wants_to_start(&obs) {
        // Mint (create-only) before persisting the start: a crash in between finds this same
        // generation again next time instead of minting another.
        match ensure_generation(&ctx, &auth, obs.next_generation, Some(mint()), supplied.as_ref(), now).await? {
            Ok(ca) => cas.insert(obs.next_generation, ca),
            Err(nr) => not_ready!(nr),
        };
    }
    let (next, transition) = state.step(&obs);

    // Status describes the state being persisted.
    describe(&mut new_status, &name, &next, &cas, &bundle, &report, new_version, now);
    let message = ready_message(&auth, &state, &obs, &signer, &bundle, &report, &missing);
    let rotating_cond = rotating_condition(&status.conditions, &next, auth.metadata.generation, now);
    let anchors: Vec<String> = state.bundle().iter().filter_map(|g| cas[g].intermediate_anchor.clone()).collect();
    let anchor_cond = intermediate_anchor_condition(&status.conditions, &anchors, auth.metadata.generation, now);
    if let Some(c) = &anchor_cond {
        if ctx.note_problem(&format!("authority/{name}/anchor"), &c.reason, &c.message) {
            ctx.event(&auth.object_ref(&()), true, "IntermediateTrustAnchor", c.message.clone()).await;
        }
    } else {
        ctx.clear_failures(&format!("authority/{name}/anchor"));
    }
    let extra = std::iter::once(rotating_cond).chain(anchor_cond).collect();
    write_status_with(&ctx, &auth, &status, new_status, true, "CaReady", message, now, extra).await?;

    announce(&ctx, &auth, transition.as_ref(), &next, state.from, new_version.then_some(&bundle), &missing).await;

    let requeue = next_look(transition.is_some(), &next, &report, &signer, auto_before, obs.propagation_delay, now);
    Ok(Action::requeue(requeue))
}

/// What the rotation machine sees (pure): the spec's trigger and action, whether the CA is due
/// for auto-rotation or the supplied one changed, and how far the bundle and the re-issue have
/// got. Also returns `autoRotateBefore` (default: a third of the CA's lifetime).
/// `rotation.autoRotateBefore`, or a third of the signing CA's lifetime.
fn auto_rotate_before(auth: &MtlsAuthority, signer: &SigningCa) -> Duration {
    let lifetime = signer.facts.not_after.duration_since(signer.facts.not_before).unsigned_abs();
    auth.spec.rotation.auto_rotate_before.as_deref().and_then(|d| duration::parse(d).ok()).unwrap_or(lifetime / 3)
}

fn observe(
    auth: &MtlsAuthority,
    state: &RotationState,
    signer: &SigningCa,
    cas: &BTreeMap<u32, SigningCa>,
    supplied: Option<&(Secret, SigningCa)>,
    report: &bundle::Rollout,
    now: Timestamp,
) -> (Observed, Duration) {
    let propagation_delay = duration::parse(&auth.spec.rotation.propagation_delay).unwrap_or(Duration::from_secs(180));
    let auto_before = auto_rotate_before(auth, signer);
    let known: Vec<&str> = cas.values().map(|c| c.facts.fingerprint.as_str()).collect();
    let obs = Observed {
        now,
        propagation_delay,
        trigger: auth.spec.rotation.trigger.clone(),
        rollback: auth.spec.rotation.action == Some(RotationAction::Rollback),
        // Only a generated CA can be replaced without the user.
        auto_due: supplied.is_none() && now + auto_before >= signer.facts.not_after,
        supplied_changed: supplied.is_some_and(|(_, ca)| !known.contains(&ca.facts.fingerprint.as_str())),
        next_generation: state.from.max(state.to.unwrap_or(0)) + 1,
        bundle_complete: report.complete() && report.conflicts.is_empty(),
        all_signed: report.secrets_signed == report.secrets_total,
    };
    (obs, auto_before)
}

/// Fills in the status fields that describe the state `next` being persisted (pure).
#[allow(clippy::too_many_arguments)]
fn describe(
    new_status: &mut MtlsAuthorityStatus,
    name: &str,
    next: &RotationState,
    cas: &BTreeMap<u32, SigningCa>,
    bundle: &bundle::Bundle,
    report: &bundle::Rollout,
    new_version: bool,
    now: Timestamp,
) {
    let info = |g: u32| ca_info(&cas[&g], &ca_secret_name(name, g));
    new_status.phase = Some(next.phase.as_str().to_string());
    new_status.active_ca = Some(info(next.signer()));
    let other = if next.signer() == next.from { next.to } else { Some(next.from) };
    let incoming = matches!(next.phase, Phase::Preparing | Phase::Propagating);
    new_status.incoming_ca = other.filter(|_| incoming && next.to.is_some()).map(info);
    new_status.retiring_ca = other.filter(|_| !incoming && next.to.is_some()).map(info);
    new_status.phase_started_at =
        Some(rfc3339(Timestamp::from_second(next.phase_since).unwrap_or(now))).filter(|_| next.phase_since > 0);
    new_status.rotation_progress =
        next.to.map(|_| RotationProgress { reissued: report.secrets_signed, total: report.secrets_total });
    new_status.rotation = Some(next.clone());
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
}

/// The Ready condition's message (pure): the signer, the bundle's reach, and whatever blocks it.
fn ready_message(
    auth: &MtlsAuthority,
    state: &RotationState,
    obs: &Observed,
    signer: &SigningCa,
    bundle: &bundle::Bundle,
    report: &bundle::Rollout,
    missing: &[String],
) -> String {
    let mut message = format!(
        "signing with CA {} valid until {}; trust bundle version {} in {}/{} namespaces and {}/{} identity Secrets",
        &signer.facts.fingerprint[..16],
        rfc3339(signer.facts.not_after),
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
    if state.phase == Phase::Stable && obs.trigger.is_some() && obs.trigger != state.observed_trigger && obs.rollback {
        message += "; a new spec.rotation.trigger waits until spec.rotation.action (Rollback) is cleared";
    }
    message
}

/// The `Rotating` condition for the state `next` (pure).
fn rotating_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    next: &RotationState,
    generation: Option<i64>,
    now: Timestamp,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let rotating = next.phase != Phase::Stable;
    let message = match next.to {
        Some(to) => format!(
            "{} from CA generation {} to {} ({})",
            next.phase.as_str(),
            next.from,
            to,
            next.cause.clone().unwrap_or_default()
        ),
        None => "no rotation in flight".to_string(),
    };
    condition(
        conditions,
        "Rotating",
        rotating,
        if rotating { next.phase.as_str() } else { "Stable" },
        message,
        generation,
        now,
    )
}

/// Metrics and Events for what this reconcile changed: a rotation phase entered (and a CA
/// archived when one ends), a bundle version published, additional CAs left out.
async fn announce(
    ctx: &Context,
    auth: &MtlsAuthority,
    transition: Option<&Transition>,
    next: &RotationState,
    rotated_from: u32,
    published: Option<&bundle::Bundle>,
    missing: &[String],
) {
    let name = auth.name_any();
    if let Some(t) = transition {
        ctx.metrics.phase_changed(&name, t.to.as_str(), next.phase_since);
        let note = format!("{} -> {}: {}", t.from.as_str(), t.to.as_str(), t.why);
        tracing::info!(authority = %name, "{note}");
        ctx.event(&auth.object_ref(&()), false, "RotationPhase", note).await;
        if t.to == Phase::Stable {
            // The CA that left every bundle is archived: its key is kept (never deleted), marked.
            mark_retired(ctx, &name, rotated_from).await;
        }
    } else {
        ctx.metrics.phase_changed(&name, next.phase.as_str(), next.phase_since);
    }
    if let Some(bundle) = published {
        let note = format!("trust bundle version {} ({} certificates) published", bundle.version, bundle.members.len());
        ctx.event(&auth.object_ref(&()), false, "BundlePublished", note).await;
    }
    if !missing.is_empty()
        && ctx.note_problem(&format!("authority/{name}/additional"), "AdditionalCaUnavailable", &missing.join(", "))
    {
        let note = format!("left out of the trust bundle: {}", missing.join(", "));
        ctx.event(&auth.object_ref(&()), true, "AdditionalCaUnavailable", note).await;
    }
}

/// When to look again (pure): right away after a transition (to apply the new state), at the end
/// of a propagation wait, shortly while a rollout is converging, else when the CA needs rotating.
fn next_look(
    transitioned: bool,
    next: &RotationState,
    report: &bundle::Rollout,
    signer: &SigningCa,
    auto_before: Duration,
    propagation_delay: Duration,
    now: Timestamp,
) -> Duration {
    if transitioned {
        return Duration::from_millis(100);
    }
    match next.phase {
        Phase::Propagating | Phase::Draining => {
            let due = Timestamp::from_second(next.phase_since).unwrap_or(now) + propagation_delay;
            due.duration_since(now).unsigned_abs().max(Duration::from_millis(100))
        }
        Phase::Preparing | Phase::Reissuing | Phase::Retiring => Duration::from_secs(1),
        Phase::Stable if !(report.complete() && report.conflicts.is_empty()) => Duration::from_secs(2),
        Phase::Stable => {
            let due = signer.facts.not_after - auto_before;
            due.duration_since(now).unsigned_abs().max(Duration::from_secs(1))
        }
    }
}

/// Labels an archived CA generation's Secret `mtls.io/ca-state=retired`.
async fn mark_retired(ctx: &Context, authority: &str, generation: u32) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let patch = serde_json::json!({"metadata": {"labels": {LABEL_CA_STATE: "retired"}}});
    if let Err(e) =
        api.patch(&ca_secret_name(authority, generation), &PatchParams::default(), &Patch::Merge(patch)).await
    {
        tracing::warn!(authority, generation, error = %e, "could not mark the retired CA");
    }
}

const LABEL_CA_STATE: &str = "mtls.io/ca-state";

/// Writes status when it changed, with one Event when the Ready condition changes.
#[allow(clippy::too_many_arguments)]
async fn write_status(
    ctx: &Context,
    auth: &MtlsAuthority,
    status: &MtlsAuthorityStatus,
    new_status: MtlsAuthorityStatus,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<(), Error> {
    let keep = status.conditions.iter().filter(|c| c.type_ == "Rotating").cloned().collect();
    write_status_with(ctx, auth, status, new_status, ok, reason, message, now, keep).await
}

#[allow(clippy::too_many_arguments)]
async fn write_status_with(
    ctx: &Context,
    auth: &MtlsAuthority,
    status: &MtlsAuthorityStatus,
    mut new_status: MtlsAuthorityStatus,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
    extra: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> Result<(), Error> {
    let name = auth.name_any();
    new_status.conditions =
        vec![condition(&status.conditions, "Ready", ok, reason, message.clone(), auth.metadata.generation, now)];
    new_status.conditions.extend(extra);
    if new_status == *status {
        return Ok(());
    }
    let api: Api<MtlsAuthority> = Api::all(ctx.client.clone());
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(super::status_patch(status, &new_status)))
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
    if err.is_outage() {
        ctx.api.suspect("authority reconcile");
    }
    ctx.metrics.reconcile_error(err.reason());
    tracing::warn!(authority = %auth.name_any(), error = %err, failures = n, "authority reconcile failed");
    Action::requeue(super::retry_backoff(n, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreated_authority_takes_up_the_newest_live_ca_generation() {
        assert_eq!(adoptable_generation(std::iter::empty()), 1, "nothing left behind: generation 1");
        assert_eq!(adoptable_generation([(1, false)].into_iter()), 1);
        assert_eq!(adoptable_generation([(1, true), (2, false)].into_iter()), 2, "rotated once: the active one");
        // Deleted in the middle of a rotation, both are live: the newer one (DESIGN: a rotation
        // cut short by deleting its authority is not resumed).
        assert_eq!(adoptable_generation([(2, false), (1, false)].into_iter()), 2);
        assert_eq!(adoptable_generation([(1, true), (2, true)].into_iter()), 3, "only retired CAs: a new one");
    }

    #[test]
    fn an_intermediate_without_its_root_is_refused_unless_allowed() {
        let now = Timestamp::now();
        let (root, root_key) =
            pki::generate_ca("Offline Root", &[], crate::api::KeyAlgorithm::EcdsaP256, now, Duration::from_secs(86400))
                .unwrap();
        let (int, int_key) = pki::test_intermediate(&root, root_key.expose(), "Cluster Intermediate", now);
        let ca = pki::load_ca(&int, int_key.expose(), None, now).unwrap();
        assert_eq!(ca.intermediate_anchor.as_deref().map(|s| s.contains("Cluster Intermediate")), Some(true));
        let mut auth: MtlsAuthority =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}, "spec": {}})).unwrap();
        let e = vet_anchor(&auth, &ca, "ns/int").unwrap_err();
        assert_eq!(e.reason, "CaRootMissing");
        assert!(e.message.contains("as ca.crt") && e.message.contains("allowIntermediateTrustAnchor"), "{}", e.message);
        auth.spec.ca.allow_intermediate_trust_anchor = true;
        assert!(vet_anchor(&auth, &ca, "ns/int").is_ok());
        let c = intermediate_anchor_condition(&[], &[ca.intermediate_anchor.clone().unwrap()], Some(1), now).unwrap();
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("IntermediateTrustAnchor", "True"));
        assert!(c.message.contains("OpenSSL"), "{}", c.message);
        // With the root as ca.crt, or a self-signed CA, there is nothing to refuse or show.
        let ca = pki::load_ca(&int, int_key.expose(), Some(&root), now).unwrap();
        assert_eq!(ca.intermediate_anchor, None);
        assert_eq!(ca.roots_pem.len(), 1);
        auth.spec.ca.allow_intermediate_trust_anchor = false;
        assert!(vet_anchor(&auth, &ca, "ns/int").is_ok());
        assert!(intermediate_anchor_condition(&[], &[], Some(1), now).is_none());
        let ca = pki::load_ca(&root, root_key.expose(), None, now).unwrap();
        assert_eq!(ca.intermediate_anchor, None);
    }

    fn signer(now: Timestamp) -> SigningCa {
        let (crt, key) =
            pki::generate_ca("Test CA", &[], crate::api::KeyAlgorithm::EcdsaP256, now, Duration::from_secs(90 * 86400))
                .unwrap();
        pki::load_ca(&crt, key.expose(), None, now).unwrap()
    }

    /// The decide step of the authority reconcile, with a fixed clock: what the rotation machine
    /// is told, and when to look again.
    #[test]
    fn observes_auto_rotation_and_rollout_and_looks_again_when_something_is_due() {
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        let ca = signer(now);
        let auth: MtlsAuthority = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"rotation": {"propagationDelay": "90s"}}}),
        )
        .unwrap();
        let state = RotationState::stable(1);
        let cas = BTreeMap::from([(1, ca.clone())]);
        let done = bundle::Rollout {
            namespaces_total: 3,
            namespaces_up_to_date: 3,
            secrets_total: 2,
            secrets_up_to_date: 2,
            secrets_signed: 2,
            ..Default::default()
        };
        let (obs, auto_before) = observe(&auth, &state, &ca, &cas, None, &done, now);
        let lifetime = ca.facts.not_after.duration_since(ca.facts.not_before).unsigned_abs();
        assert_eq!(auto_before, lifetime / 3, "default: a third of the CA's lifetime");
        assert_eq!(obs.propagation_delay, Duration::from_secs(90));
        assert!(!obs.auto_due && obs.bundle_complete && obs.all_signed && obs.next_generation == 2);
        // Stable and complete: next look when the CA is due for rotation.
        let wait = next_look(false, &state, &done, &ca, auto_before, obs.propagation_delay, now);
        assert_eq!(wait, ca.facts.not_after.duration_since(now).unsigned_abs() - auto_before);
        // Past that point the CA is due.
        let later = ca.facts.not_after - auto_before;
        assert!(observe(&auth, &state, &ca, &cas, None, &done, later).0.auto_due);
        // A rollout still converging: look again shortly; a transition: at once.
        let partial = bundle::Rollout { namespaces_up_to_date: 2, ..done.clone() };
        assert!(!observe(&auth, &state, &ca, &cas, None, &partial, now).0.bundle_complete);
        assert_eq!(
            next_look(false, &state, &partial, &ca, auto_before, obs.propagation_delay, now),
            Duration::from_secs(2)
        );
        assert_eq!(
            next_look(true, &state, &done, &ca, auto_before, obs.propagation_delay, now),
            Duration::from_millis(100)
        );
        // Propagating: at the end of the propagation delay.
        let waiting = RotationState {
            phase: Phase::Propagating,
            to: Some(2),
            phase_since: now.as_second() - 30,
            ..state.clone()
        };
        assert_eq!(
            next_look(false, &waiting, &done, &ca, auto_before, obs.propagation_delay, now),
            Duration::from_secs(60)
        );
        let msg = ready_message(
            &auth,
            &state,
            &obs,
            &ca,
            &bundle::assemble(&ca.roots_pem, &[], now, None),
            &partial,
            &["x/y".into()],
        );
        assert!(msg.contains("in 2/3 namespaces") && msg.contains("additionalCAs not found or not PEM: x/y"), "{msg}");
    }
}
