//! Reconciles an `MtlsIdentity` into its `kubernetes.io/tls` Secret: issues when missing, due,
//! changed or tampered with; repairs metadata and `ca.crt` without re-issuing; never touches a
//! Secret it does not own; writes nothing when nothing changed.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use sha2::{Digest, Sha256};

use super::error::Error;
use super::outputs;
use super::{
    ANN_BUNDLE_VERSION, ANN_ISSUER, ANN_NOT_AFTER, ANN_RENEW_REQUESTED, ANN_RENEWAL_TIME, ANN_SERIAL, ANN_SPEC_HASH,
    ANN_SPIFFE_ID, AuthorityState, Context, LABEL_AUTHORITY, LABEL_IDENTITY, LABEL_MANAGED_BY, MANAGER, condition,
    parse_rfc3339, rfc3339,
};
use crate::{
    api::{KeyAlgorithm, MtlsIdentity, MtlsIdentityStatus, Usage},
    core::{
        duration,
        pki::{self, CLOCK_SKEW_ALLOWANCE, LeafRequest},
        policy::{self, Subject},
        schedule,
    },
};

/// Why the identity is not Ready; each becomes the condition reason and one Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Why a new certificate is being issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    /// No Secret yet.
    Initial,
    /// The renewal time has come.
    Renewal,
    /// The spec or the signer changed.
    Reissue,
    /// The Secret's certificate or key was damaged or does not match what it should be.
    Repair,
    /// Asked for with the `mtls.io/renew-requested` annotation (`kubectl mtls renew`).
    Requested,
}

impl IssueKind {
    fn event_reason(self) -> &'static str {
        match self {
            IssueKind::Initial => "Issued",
            IssueKind::Renewal => "Renewed",
            IssueKind::Reissue => "Reissued",
            IssueKind::Repair => "Repaired",
            IssueKind::Requested => "RenewedOnRequest",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            IssueKind::Initial => "initial",
            IssueKind::Renewal => "renewal",
            IssueKind::Reissue => "reissue",
            IssueKind::Repair => "repair",
            IssueKind::Requested => "requested",
        }
    }
}

/// Everything the certificate must satisfy, resolved from the identity and its authority.
#[derive(Debug, Clone)]
pub struct Desired {
    pub subject: Subject,
    pub usages: Vec<Usage>,
    pub algorithm: KeyAlgorithm,
    pub duration: Duration,
    pub renew_before: Duration,
    /// Hash of everything above plus the signer: a change means re-issue.
    pub spec_hash: String,
    /// The identity's `mtls.io/renew-requested` value: a Secret that does not answer it is renewed.
    pub renew_request: Option<String>,
}

impl Desired {
    /// The certificate to issue at `now` for an identity in namespace `ns`.
    pub fn leaf_request(&self, ns: &str, now: Timestamp) -> LeafRequest {
        LeafRequest {
            common_name: format!("{}.{ns}", self.subject.service_account),
            spiffe_id: self.subject.spiffe_id.clone(),
            dns_names: self.subject.dns_names.clone(),
            ip_addresses: self.subject.ip_addresses.clone(),
            usages: self.usages.clone(),
            algorithm: self.algorithm,
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + self.duration,
        }
    }
}

pub fn secret_name(id: &MtlsIdentity) -> String {
    id.spec.secret_name.clone().unwrap_or_else(|| format!("{}-mtls", id.name_any()))
}

/// Resolves what the leaf must contain, or the problem that prevents issuing it.
pub fn desired(
    id: &MtlsIdentity,
    auth_name: &str,
    auth: &AuthorityState,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Desired, Problem> {
    let ns = id.namespace().unwrap_or_default();
    let name = id.name_any();
    let subject =
        policy::resolve(auth_name, &auth.spec, &ns, namespace_labels, &name, &id.spec).map_err(|e| Problem {
            reason: match e {
                policy::PolicyError::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
                _ => "PolicyViolation",
            },
            message: e.to_string(),
        })?;
    let leaf = &auth.spec.leaf;
    let bad = |m: String| Problem { reason: "InvalidDuration", message: m };
    let min = duration::parse(&leaf.min_duration).map_err(|e| bad(format!("authority leaf.minDuration: {e}")))?;
    let max = duration::parse(&leaf.max_duration).map_err(|e| bad(format!("authority leaf.maxDuration: {e}")))?;
    let dur = match &id.spec.duration {
        Some(d) => duration::parse(d).map_err(|e| bad(format!("spec.duration: {e}")))?,
        None => {
            duration::parse(&leaf.default_duration).map_err(|e| bad(format!("authority leaf.defaultDuration: {e}")))?
        }
    };
    if dur < min || dur > max {
        return Err(Problem {
            reason: "DurationOutOfBounds",
            message: format!(
                "duration {} is outside authority {auth_name}'s bounds {}..{} (leaf.minDuration..leaf.maxDuration)",
                duration::format(dur),
                leaf.min_duration,
                leaf.max_duration
            ),
        });
    }
    let renew_before = match (&id.spec.renew_before, &leaf.default_renew_before) {
        (Some(r), _) => duration::parse(r).map_err(|e| bad(format!("spec.renewBefore: {e}")))?,
        (None, Some(r)) => duration::parse(r).map_err(|e| bad(format!("authority leaf.defaultRenewBefore: {e}")))?,
        (None, None) => schedule::default_renew_before(dur),
    };
    if renew_before >= dur {
        return Err(Problem {
            reason: "InvalidDuration",
            message: format!(
                "renewBefore {} must be shorter than duration {}",
                duration::format(renew_before),
                duration::format(dur)
            ),
        });
    }
    let mut usages = id.spec.usages.clone();
    usages.sort();
    usages.dedup();
    let algorithm = id.spec.private_key.algorithm;
    let mut h = Sha256::new();
    h.update(format!(
        "{}|{:?}|{:?}|{:?}|{}|{}|{}|{}",
        subject.spiffe_id,
        subject.dns_names,
        subject.ip_addresses,
        usages,
        algorithm.as_str(),
        dur.as_secs(),
        renew_before.as_secs(),
        auth.signer.facts.fingerprint
    ));
    let spec_hash = hex::encode(&h.finalize()[..16]);
    let renew_request = id.annotations().get(ANN_RENEW_REQUESTED).filter(|v| !v.is_empty()).cloned();
    Ok(Desired { subject, usages, algorithm, duration: dur, renew_before, spec_hash, renew_request })
}

fn data_str<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.data.as_ref()?.get(key).and_then(|b| std::str::from_utf8(&b.0).ok())
}

/// What the existing Secret's certificate says, if it can be kept.
pub struct Current {
    pub tls_crt: String,
    pub tls_key: String,
    pub facts: pki::CertFacts,
    pub renewal_time: Timestamp,
}

fn conflict(ns: &str, secret: &str) -> Problem {
    Problem {
        reason: "SecretConflict",
        message: format!(
            "Secret {ns}/{secret} exists and is not owned by this MtlsIdentity; delete it or set spec.secretName"
        ),
    }
}

/// When a leaf we issued is renewed (its notBefore is backdated from the issuance instant).
fn renewal_of(facts: &pki::CertFacts, renew_before: Duration) -> Timestamp {
    schedule::renewal_time(facts.not_before + CLOCK_SKEW_ALLOWANCE, facts.not_after, renew_before, &facts.serial)
}

/// Decides whether the certificate in `secret` can be kept at `now`, and if not, why.
pub fn assess(
    secret: Option<&Secret>,
    want: &Desired,
    auth: &AuthorityState,
    now: Timestamp,
) -> Result<Current, IssueKind> {
    let Some(secret) = secret else { return Err(IssueKind::Initial) };
    let (Some(crt), Some(key)) = (data_str(secret, "tls.crt"), data_str(secret, "tls.key")) else {
        return Err(IssueKind::Repair);
    };
    let Ok(leaf) = pki::inspect_leaf(crt, key) else { return Err(IssueKind::Repair) };
    if !leaf.key_matches {
        return Err(IssueKind::Repair);
    }
    // The certificate must say exactly what it should.
    let mut usages = leaf.usages.clone();
    usages.sort();
    if leaf.uris != [want.subject.spiffe_id.clone()]
        || leaf.dns_names != want.subject.dns_names
        || leaf.ip_addresses != want.subject.ip_addresses
        || usages != want.usages
        || leaf.algorithm != Some(want.algorithm)
    {
        return Err(IssueKind::Reissue);
    }
    let hash = secret.annotations().get(ANN_SPEC_HASH);
    if !leaf.signed_by(&auth.signer) || hash != Some(&want.spec_hash) {
        return Err(IssueKind::Reissue);
    }
    // Intermediates must be the signer's chain.
    let want_chain: Vec<Vec<u8>> =
        auth.signer.chain_pem.iter().filter_map(|p| pki::parse_pem_certs("chain", p).ok()).flatten().collect();
    if leaf.chain_der != want_chain {
        return Err(IssueKind::Repair);
    }
    if want.renew_request.is_some() && secret.annotations().get(ANN_RENEW_REQUESTED) != want.renew_request.as_ref() {
        return Err(IssueKind::Requested);
    }
    let renewal = renewal_of(&leaf.facts, want.renew_before);
    if now >= renewal || now >= leaf.facts.not_after {
        return Err(IssueKind::Renewal);
    }
    Ok(Current { tls_crt: crt.to_string(), tls_key: key.to_string(), facts: leaf.facts, renewal_time: renewal })
}

fn owner_reference(id: &MtlsIdentity) -> OwnerReference {
    OwnerReference {
        api_version: MtlsIdentity::api_version(&()).into_owned(),
        kind: MtlsIdentity::kind(&()).into_owned(),
        name: id.name_any(),
        uid: id.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn owned_by(secret: &Secret, id: &MtlsIdentity) -> bool {
    let uid = id.uid().unwrap_or_default();
    secret.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))
}

/// Whether `secret` is the one this operator wrote for an earlier `MtlsIdentity` of the same name
/// (deleted and created again, e.g. `kubectl replace --force`), which the garbage collector has
/// not removed yet. The new identity takes it over with a new certificate instead of reporting a
/// conflict with its own predecessor.
pub fn left_by_predecessor(secret: &Secret, id: &MtlsIdentity) -> bool {
    let uid = id.uid().unwrap_or_default();
    secret.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER)
        && secret
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "MtlsIdentity" && o.name == id.name_any() && o.uid != uid)
}

/// The Secret as it should be, given the certificate it should hold and the extra files
/// (`outputs::files`) it carries. Labels and annotations that others added are kept; ours are
/// enforced.
#[allow(clippy::too_many_arguments)]
pub fn build_secret(
    id: &MtlsIdentity,
    auth_name: &str,
    want: &Desired,
    cur: &Current,
    bundle: &super::Bundle,
    issuer_fingerprint: &str,
    existing: Option<&Secret>,
    extra: Extra,
) -> Secret {
    let template = id.spec.secret_template.clone().unwrap_or_default();
    let mut labels = existing.map(|s| s.labels().clone()).unwrap_or_default();
    labels.extend(template.labels);
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels.insert(LABEL_AUTHORITY.into(), auth_name.into());
    labels.insert(LABEL_IDENTITY.into(), id.name_any());
    let mut annotations = existing.map(|s| s.annotations().clone()).unwrap_or_default();
    annotations.extend(template.annotations);
    for (k, v) in [
        (ANN_SPIFFE_ID, want.subject.spiffe_id.clone()),
        (ANN_SERIAL, cur.facts.serial.clone()),
        (ANN_NOT_AFTER, rfc3339(cur.facts.not_after)),
        (ANN_RENEWAL_TIME, rfc3339(cur.renewal_time)),
        (ANN_ISSUER, issuer_fingerprint.to_string()),
        (ANN_BUNDLE_VERSION, bundle.version.to_string()),
        (ANN_SPEC_HASH, want.spec_hash.clone()),
    ] {
        annotations.insert(k.into(), v);
    }
    if let Some(r) = &want.renew_request {
        annotations.insert(ANN_RENEW_REQUESTED.into(), r.clone());
    }
    match extra.config {
        Some(c) => annotations.insert(outputs::ANN_OUTPUTS.into(), c),
        None => annotations.remove(outputs::ANN_OUTPUTS),
    };
    let mut data = BTreeMap::from([
        ("tls.crt".to_string(), ByteString(cur.tls_crt.clone().into_bytes())),
        ("tls.key".to_string(), ByteString(cur.tls_key.clone().into_bytes())),
        ("ca.crt".to_string(), ByteString(bundle.pem.clone().into_bytes())),
    ]);
    data.extend(extra.files);
    let mut owners: Vec<OwnerReference> = existing
        .map(|s| s.owner_references().to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.controller != Some(true))
        .collect();
    owners.push(owner_reference(id));
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(id)),
            namespace: id.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(owners),
            resource_version: existing.and_then(|s| s.resource_version()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The extra files of an identity Secret and the annotation recording their configuration.
#[derive(Default)]
pub struct Extra {
    pub files: BTreeMap<String, ByteString>,
    pub config: Option<String>,
}

/// Whether `want` differs from `have` only by a newer trust bundle (`ca.crt` and its version);
/// a `ca.crt` edited behind our back (same version) is a repair, not a bundle update.
fn only_bundle_changed(have: Option<&Secret>, want: &Secret) -> bool {
    let Some(have) = have else { return false };
    if have.annotations().get(ANN_BUNDLE_VERSION) == want.annotations().get(ANN_BUNDLE_VERSION) {
        return false;
    }
    let strip = |s: &Secret| {
        let mut s = s.clone();
        if let Some(d) = s.data.as_mut() {
            d.remove("ca.crt");
            for t in outputs::TRUSTSTORES {
                d.remove(t);
            }
        }
        if let Some(a) = s.metadata.annotations.as_mut() {
            a.remove(ANN_BUNDLE_VERSION);
        }
        s
    };
    !secret_differs(&strip(have), &strip(want))
}

/// Whether writing `want` over `have` would change anything.
pub fn secret_differs(have: &Secret, want: &Secret) -> bool {
    have.type_ != want.type_
        || have.data != want.data
        || have.metadata.labels != want.metadata.labels
        || have.metadata.annotations != want.metadata.annotations
        || have.metadata.owner_references != want.metadata.owner_references
}

fn key_of(id: &MtlsIdentity) -> String {
    format!("identity/{}/{}", id.namespace().unwrap_or_default(), id.name_any())
}

pub struct Stores {
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Secrets this operator manages (a few facts each).
    pub secrets: Arc<super::secrets::SecretCache>,
}

pub async fn reconcile(id: Arc<MtlsIdentity>, ctx: Arc<Context>, stores: &Stores) -> Result<Action, Error> {
    if id.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Wait for a slot (in arrival order); closed only if the process is going away. In a burst
    // thousands of reconciles wait here at once, so the waiting future is kept small: the work
    // itself (a future of several KiB) is allocated only once the slot is taken.
    let Ok(_slot) = ctx.reconcile_slots.acquire().await else { return Ok(Action::await_change()) };
    Box::pin(reconcile_now(id, ctx.clone(), stores)).await
}

/// One identity, observe → decide → act: read its authority, namespace labels and Secret; decide
/// what the certificate must be (`desired`, pure) and whether the one it has still does
/// (`assess`, pure); issue if not, write the Secret if it differs, report the status and Events,
/// and schedule the renewal.
async fn reconcile_now(id: Arc<MtlsIdentity>, ctx: Arc<Context>, stores: &Stores) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let ns = id.namespace().unwrap_or_default();
    let name = id.name_any();
    let now = Timestamp::now();
    let auth_name = id.spec.authority_ref.clone();
    let status = id.status.clone().unwrap_or_default();

    // Observe.
    let Some(auth) = ctx.authority(&auth_name) else {
        let p = authority_problem(&ctx, &auth_name).await?;
        return not_ready(&id, &ctx, &status, p, now).await;
    };
    let ns_labels = namespace_labels(&ctx, stores, &ns).await?;
    // Decide what the certificate must be.
    let want = match desired(&id, &auth_name, &auth, &ns_labels) {
        Ok(w) => w,
        Err(p) => return not_ready(&id, &ctx, &status, p, now).await,
    };
    let outputs = match outputs::resolve(&ctx, &id).await? {
        Ok(o) => o,
        Err(p) => return not_ready(&id, &ctx, &status, p, now).await,
    };
    let sname = secret_name(&id);
    let existing = match read_secret(&ctx, stores, &id, &sname, &status).await? {
        Ok(existing) => existing,
        Err(p) => return not_ready(&id, &ctx, &status, p, now).await,
    };
    // Decide whether the certificate it has will do; a predecessor's is not this identity's.
    let inherited = existing.as_ref().is_some_and(|s| left_by_predecessor(s, &id));
    let assessed = existing.as_ref().filter(|_| !inherited);
    // Act: issue, write the Secret, report.
    let (current, issued) = match assess(assessed, &want, &auth, now) {
        Ok(cur) => (cur, None),
        Err(kind) => {
            // A Secret deleted after it was issued is a repair, not a first issuance.
            let kind =
                if kind == IssueKind::Initial && status.serial_number.is_some() { IssueKind::Repair } else { kind };
            (issue(&ctx, &ns, &auth_name, &auth, &want, kind, existing.as_ref(), now).await?, Some(kind))
        }
    };
    let kept = existing.as_ref().filter(|_| !inherited);
    let extra = match outputs::files(&outputs, &current.tls_key, &current.tls_crt, &auth.bundle.pem, kept) {
        Ok(files) => Extra { files, config: outputs.config() },
        Err(p) => return not_ready(&id, &ctx, &status, p, now).await,
    };
    let desired_secret = build_secret(
        &id,
        &auth_name,
        &want,
        &current,
        &auth.bundle,
        &auth.signer.facts.fingerprint,
        existing.as_ref(),
        extra,
    );
    let secret_written = match write_secret(&ctx, &id, &sname, existing.as_ref(), &desired_secret).await? {
        Written::Yes => true,
        Written::Unchanged => false,
        Written::Conflict => return not_ready(&id, &ctx, &status, conflict(&ns, &sname), now).await,
        Written::LookAgain => {
            ctx.queue.schedule(&ns, &name, Duration::from_millis(100));
            return Ok(Action::await_change());
        }
    };

    let message = format!(
        "certificate {} valid until {}, renews at {}",
        &current.facts.serial[..16.min(current.facts.serial.len())],
        rfc3339(current.facts.not_after),
        rfc3339(current.renewal_time)
    );
    let new_status = issued_status(&id, &status, &want, &current, &auth, &sname, message.clone(), now);
    if ctx.status_is_new(&id.uid().unwrap_or_default(), &status, &new_status) {
        patch_status(&ctx, &id, &status, &new_status).await?;
    }
    ctx.clear_failures(&key_of(&id));
    ctx.metrics.set_identity(&ns, &name, current.facts.not_after.as_second(), current.renewal_time.as_second());
    match issued {
        Some(kind) => {
            let note = format!("{} certificate {}: {message}", kind.event_reason(), &current.facts.serial);
            ctx.event(&id.object_ref(&()), false, kind.event_reason(), note).await;
        }
        // A new trust bundle reaching the Secret is the authority's change (it emits
        // BundlePublished once); anything else we had to put back is a repair worth an Event.
        None if secret_written && !only_bundle_changed(existing.as_ref(), &desired_secret) => {
            let (reason, note) = match outputs::change(existing.as_ref(), &desired_secret) {
                Some(outputs::Change::Asked(files)) => (
                    "SecretUpdated",
                    format!(
                        "Secret {sname} now carries what spec.keystores and spec.additionalOutputFormats ask for: {files}"
                    ),
                ),
                Some(outputs::Change::Rewritten) => (
                    "KeystoresRewritten",
                    format!(
                        "rewrote the keystores in Secret {sname}: their password changed, or they had been altered"
                    ),
                ),
                None => ("SecretRepaired", format!("restored Secret {sname} (its data or metadata had been changed)")),
            };
            ctx.event(&id.object_ref(&()), false, reason, note).await;
        }
        None => {}
    }
    // Wake exactly at the renewal time; nothing polls. The work queue keeps the timer (see
    // `queue`), so every identity reconcile is started from there.
    let wait = current.renewal_time.duration_since(Timestamp::now());
    let mut wait = if wait.is_positive() { wait.unsigned_abs() } else { Duration::ZERO };
    if outputs.has_keystores() {
        // A changed keystore password (its Secret is not watched) is taken up within this.
        wait = wait.min(outputs::PASSWORD_RECHECK);
    }
    ctx.queue.schedule(&ns, &name, wait.max(Duration::from_millis(100)));
    Ok(Action::await_change())
}

/// Why an identity whose authority is not published cannot be issued: the authority is not
/// ready, or does not exist.
async fn authority_problem(ctx: &Context, auth_name: &str) -> Result<Problem, Error> {
    let exists = Api::<crate::api::MtlsAuthority>::all(ctx.client.clone())
        .get_opt(auth_name)
        .await
        .map_err(Error::kube("reading MtlsAuthority"))?
        .is_some();
    Ok(if exists {
        Problem {
            reason: "AuthorityNotReady",
            message: format!("MtlsAuthority {auth_name} is not ready; see its status"),
        }
    } else {
        Problem {
            reason: "AuthorityNotFound",
            message: format!("MtlsAuthority {auth_name} (spec.authorityRef) does not exist"),
        }
    })
}

/// The labels of namespace `ns` (for policy). The namespace cache may not have caught up with a
/// brand-new namespace: the API is asked then.
async fn namespace_labels(ctx: &Context, stores: &Stores, ns: &str) -> Result<BTreeMap<String, String>, Error> {
    Ok(match stores.namespaces.get(&ObjectRef::new(ns)) {
        Some(n) => n.labels().clone(),
        None => Api::<Namespace>::all(ctx.client.clone())
            .get_metadata_opt(ns)
            .await
            .map_err(Error::kube("reading Namespace"))?
            .map(|n| n.labels().clone())
            .unwrap_or_default(),
    })
}

/// The identity's Secret, if it has one: `Err(problem)` when a Secret of that name belongs to
/// someone else. A never-issued identity whose Secret is not in our cache is not read (its Secret
/// is created without a read first; a foreign Secret of that name makes the create fail, and is
/// then read).
async fn read_secret(
    ctx: &Context,
    stores: &Stores,
    id: &MtlsIdentity,
    sname: &str,
    status: &MtlsIdentityStatus,
) -> Result<Result<Option<Secret>, Problem>, Error> {
    let ns = id.namespace().unwrap_or_default();
    let cached = stores.secrets.contains(&ns, sname);
    if !cached && status.serial_number.is_none() {
        return Ok(Ok(None));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(sname).await.map_err(Error::kube("reading identity Secret"))?;
    match &existing {
        Some(s) if !owned_by(s, id) && !left_by_predecessor(s, id) => Ok(Err(conflict(&ns, sname))),
        _ => Ok(Ok(existing)),
    }
}

/// Issues the certificate `want` describes, paced by the global issuance rate (and, for a
/// re-issue, the authority's reissueRate), most urgent first.
#[allow(clippy::too_many_arguments)]
async fn issue(
    ctx: &Context,
    ns: &str,
    auth_name: &str,
    auth: &AuthorityState,
    want: &Desired,
    kind: IssueKind,
    existing: Option<&Secret>,
    now: Timestamp,
) -> Result<Current, Error> {
    // Most urgent first: no certificate or an expired one before one merely due.
    let urgency = existing
        .and_then(|s| s.annotations().get(ANN_NOT_AFTER).and_then(|t| parse_rfc3339(t)))
        .map_or(0, |t| t.as_second());
    if kind == IssueKind::Reissue {
        // Re-issues (a CA rotation, a policy change) go at the authority's reissueRate.
        ctx.reissue_limiter(auth_name, auth.spec.rotation.reissue_rate).acquire(urgency).await;
    }
    ctx.limiter.acquire(urgency).await;
    let started = std::time::Instant::now();
    let req = want.leaf_request(ns, now);
    let signer = auth.signer.clone();
    let leaf = tokio::task::spawn_blocking(move || signer.issue(&req))
        .await
        .map_err(|e| Error::Pki(pki::PkiError::Generate(format!("issuing task failed: {e}"))))??;
    let renewal = renewal_of(&leaf.facts, want.renew_before);
    ctx.metrics.observe_issuance(auth_name, kind.label(), started.elapsed());
    Ok(Current {
        tls_crt: leaf.cert_chain_pem,
        tls_key: leaf.key.expose().to_string(),
        facts: leaf.facts,
        renewal_time: renewal,
    })
}

/// What writing the identity's Secret came to.
enum Written {
    Yes,
    /// It already held what it should.
    Unchanged,
    /// The create found a Secret of that name that is someone else's.
    Conflict,
    /// The create found our own Secret (the cache lagged): look again shortly.
    LookAgain,
}

/// Creates the Secret, or replaces it if it differs from `desired`. Our write's echo in the
/// Secret watch must not start another reconcile; anyone else's change seen meanwhile must.
async fn write_secret(
    ctx: &Context,
    id: &MtlsIdentity,
    sname: &str,
    existing: Option<&Secret>,
    desired: &Secret,
) -> Result<Written, Error> {
    let (ns, name) = (id.namespace().unwrap_or_default(), id.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let wrote = |result: Option<&Secret>| {
        if ctx.written_secrets.end(&ns, sname, result.and_then(|s| s.resource_version())) {
            ctx.queue.push(&ns, &name);
        }
    };
    match existing {
        None => {
            ctx.written_secrets.begin(&ns, sname);
            let r = secrets.create(&pp, desired).await;
            wrote(r.as_ref().ok());
            match r {
                Ok(_) => Ok(Written::Yes),
                Err(kube::Error::Api(ae)) if ae.code == 409 => {
                    let have = secrets.get_opt(sname).await.map_err(Error::kube("reading identity Secret"))?;
                    if have.as_ref().is_some_and(|h| !owned_by(h, id) && !left_by_predecessor(h, id)) {
                        Ok(Written::Conflict)
                    } else {
                        Ok(Written::LookAgain)
                    }
                }
                Err(e) => Err(Error::kube("creating identity Secret")(e)),
            }
        }
        Some(have) if secret_differs(have, desired) => {
            ctx.written_secrets.begin(&ns, sname);
            let r = secrets.replace(sname, &pp, desired).await;
            wrote(r.as_ref().ok());
            r.map_err(Error::kube("updating identity Secret"))?;
            Ok(Written::Yes)
        }
        Some(_) => Ok(Written::Unchanged),
    }
}

/// The status of an identity holding `current`.
#[allow(clippy::too_many_arguments)]
fn issued_status(
    id: &MtlsIdentity,
    status: &MtlsIdentityStatus,
    want: &Desired,
    current: &Current,
    auth: &AuthorityState,
    sname: &str,
    message: String,
    now: Timestamp,
) -> MtlsIdentityStatus {
    MtlsIdentityStatus {
        conditions: vec![condition(&status.conditions, "Ready", true, "Issued", message, id.metadata.generation, now)],
        spiffe_id: Some(want.subject.spiffe_id.clone()),
        serial_number: Some(current.facts.serial.clone()),
        not_before: Some(rfc3339(current.facts.not_before)),
        not_after: Some(rfc3339(current.facts.not_after)),
        renewal_time: Some(rfc3339(current.renewal_time)),
        issuer_fingerprint: Some(auth.signer.facts.fingerprint.clone()),
        bundle_version: Some(auth.bundle.version),
        secret_name: Some(sname.to_string()),
        observed_generation: id.metadata.generation,
        // Success clears the failure count but keeps when the last failure was.
        failure_count: None,
        last_failure_time: status.last_failure_time.clone(),
    }
}

async fn patch_status(
    ctx: &Context,
    id: &MtlsIdentity,
    old: &MtlsIdentityStatus,
    status: &MtlsIdentityStatus,
) -> Result<(), Error> {
    let api: Api<MtlsIdentity> = Api::namespaced(ctx.client.clone(), &id.namespace().unwrap_or_default());
    let r = api
        .patch_status(&id.name_any(), &PatchParams::default(), &Patch::Merge(super::status_patch(old, status)))
        .await;
    if r.is_err() {
        // Not written after all: the next attempt must not be skipped as a repeat.
        ctx.written_status.write().expect("status map lock poisoned").remove(&id.uid().unwrap_or_default());
    }
    r.map_err(Error::kube("writing identity status"))?;
    Ok(())
}

/// Records a problem: `Ready=False` with its reason, and one Warning Event when it is new.
async fn not_ready(
    id: &MtlsIdentity,
    ctx: &Context,
    status: &MtlsIdentityStatus,
    p: Problem,
    now: Timestamp,
) -> Result<Action, Error> {
    let prev = status.conditions.iter().find(|c| c.type_ == "Ready");
    let in_status = prev.is_some_and(|c| c.status == "False" && c.reason == p.reason && c.message == p.message);
    let is_new = ctx.note_problem(&key_of(id), p.reason, &p.message) && !in_status;
    ctx.metrics.identity_not_ready(
        &id.namespace().unwrap_or_default(),
        &id.name_any(),
        &id.spec.authority_ref,
        p.reason,
    );
    let mut new_status = status.clone();
    new_status.conditions =
        vec![condition(&status.conditions, "Ready", false, p.reason, p.message.clone(), id.metadata.generation, now)];
    new_status.observed_generation = id.metadata.generation;
    if ctx.status_is_new(&id.uid().unwrap_or_default(), status, &new_status) {
        patch_status(ctx, id, status, &new_status).await?;
    }
    if is_new {
        ctx.metrics.reconcile_error(p.reason);
        ctx.event(&id.object_ref(&()), true, p.reason, p.message).await;
    }
    // A password Secret is not watched (it is any Secret of the user's): look again, backing off.
    if p.reason.starts_with("PasswordSecret") {
        let wait = super::retry_backoff(ctx.note_failure(&key_of(id)), None);
        ctx.queue.schedule(&id.namespace().unwrap_or_default(), &id.name_any(), wait);
    }
    // Anything else is fixed by a change to this object, its authority or its namespace: all are
    // watched.
    Ok(Action::await_change())
}

pub fn error_policy(id: Arc<MtlsIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&id);
    let n = ctx.note_failure(&key);
    if err.is_outage() {
        ctx.api.suspect("identity reconcile");
    }
    ctx.metrics.reconcile_error(err.reason());
    ctx.metrics.identity_failed(&id.namespace().unwrap_or_default(), &id.name_any(), n, Timestamp::now().as_second());
    let remaining = id
        .status
        .as_ref()
        .and_then(|s| s.not_after.as_deref())
        .and_then(parse_rfc3339)
        .map(|t| t.duration_since(Timestamp::now()))
        .filter(|d| d.is_positive())
        .map(|d| d.unsigned_abs());
    let delay = if err.is_conflict() { Duration::from_millis(200) } else { super::retry_backoff(n, remaining) };
    tracing::warn!(identity = %key, error = %err, failures = n, retry_in = ?delay, "identity reconcile failed");
    ctx.queue.schedule(&id.namespace().unwrap_or_default(), &id.name_any(), delay);
    // Record the failure in status where the API lets us (it may be the API that is failing).
    if !err.is_conflict() && ctx.api.is_reachable() {
        let api: Api<MtlsIdentity> = Api::namespaced(ctx.client.clone(), &id.namespace().unwrap_or_default());
        let patch =
            serde_json::json!({ "status": { "failureCount": n, "lastFailureTime": rfc3339(Timestamp::now()) } });
        let name = id.name_any();
        tokio::spawn(async move {
            let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await;
        });
    }
    Action::await_change()
}

#[cfg(test)]
mod tests {
    //! The decide step of the identity reconcile, with a fixed clock: what the certificate must be
    //! (`desired`) and whether the Secret's still is (`assess`).
    use super::*;
    use crate::core::bundle;

    fn authority(now: Timestamp, name: &str) -> AuthorityState {
        let (crt, key) = pki::generate_ca(name, &[], KeyAlgorithm::EcdsaP256, now, Duration::from_secs(30 * 86400))
            .expect("a test CA");
        let signer = pki::load_ca(&crt, key.expose(), None, now).expect("the test CA loads");
        let spec = serde_json::from_value(serde_json::json!({})).expect("an empty authority spec is valid");
        let bundle = bundle::assemble(&signer.roots_pem, &[], now, None);
        AuthorityState { generation: Some(1), spec, signer, bundle }
    }

    fn identity() -> MtlsIdentity {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": {"authorityRef": "a"},
        }))
        .expect("a valid identity")
    }

    /// What the reconcile would write for `want`, issued by `auth` at `now`.
    fn issued_secret(id: &MtlsIdentity, auth: &AuthorityState, want: &Desired, now: Timestamp) -> Secret {
        let leaf = auth.signer.issue(&want.leaf_request("shop", now)).expect("the test CA issues");
        let renewal_time = renewal_of(&leaf.facts, want.renew_before);
        let cur = Current {
            tls_crt: leaf.cert_chain_pem,
            tls_key: leaf.key.expose().to_string(),
            facts: leaf.facts,
            renewal_time,
        };
        build_secret(id, "a", want, &cur, &auth.bundle, &auth.signer.facts.fingerprint, None, Extra::default())
    }

    #[test]
    fn a_secret_is_kept_until_renewal_and_replaced_for_the_right_reason() {
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        let (id, auth) = (identity(), authority(now, "Test CA"));
        let want = desired(&id, "a", &auth, &BTreeMap::new()).expect("allowed by the default policy");
        assert_eq!(want.subject.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(assess(None, &want, &auth, now).err(), Some(IssueKind::Initial), "no Secret: issue");

        let secret = issued_secret(&id, &auth, &want, now);
        let kept = assess(Some(&secret), &want, &auth, now).expect("a fresh certificate is kept");
        assert!(kept.renewal_time > now && kept.renewal_time < kept.facts.not_after);

        // Renewal once its renewal time has come.
        assert_eq!(assess(Some(&secret), &want, &auth, kept.renewal_time).err(), Some(IssueKind::Renewal));
        // Another signer (a CA rotation): re-issue.
        let other = authority(now, "Other CA");
        let want_other = desired(&id, "a", &other, &BTreeMap::new()).unwrap();
        assert_eq!(assess(Some(&secret), &want_other, &other, now).err(), Some(IssueKind::Reissue));
        // A spec change that alters the certificate (another name): re-issue.
        let mut renamed = id.clone();
        renamed.spec.dns_names = vec!["extra".into()];
        let want_renamed = desired(&renamed, "a", &auth, &BTreeMap::new()).unwrap();
        assert_eq!(assess(Some(&secret), &want_renamed, &auth, now).err(), Some(IssueKind::Reissue));
        // Tampered data: repair.
        let mut broken = secret.clone();
        broken.data.as_mut().unwrap().insert("tls.key".into(), k8s_openapi::ByteString(b"not a key".to_vec()));
        assert_eq!(assess(Some(&broken), &want, &auth, now).err(), Some(IssueKind::Repair));
        let mut emptied = secret.clone();
        emptied.data.as_mut().unwrap().remove("tls.crt");
        assert_eq!(assess(Some(&emptied), &want, &auth, now).err(), Some(IssueKind::Repair));
        // A renewal request: renewed once, then the Secret answers it and is kept.
        let mut asked = id.clone();
        asked.annotations_mut().insert(ANN_RENEW_REQUESTED.into(), "2030-03-17T00:00:00Z".into());
        let want_asked = desired(&asked, "a", &auth, &BTreeMap::new()).unwrap();
        assert_eq!(assess(Some(&secret), &want_asked, &auth, now).err(), Some(IssueKind::Requested));
        let answered = issued_secret(&asked, &auth, &want_asked, now);
        assert!(assess(Some(&answered), &want_asked, &auth, now).is_ok(), "the request is answered once");
        let mut again = asked.clone();
        again.annotations_mut().insert(ANN_RENEW_REQUESTED.into(), "2030-03-17T00:05:00Z".into());
        let want_again = desired(&again, "a", &auth, &BTreeMap::new()).unwrap();
        assert_eq!(assess(Some(&answered), &want_again, &auth, now).err(), Some(IssueKind::Requested));
        // Removing the annotation asks for nothing.
        assert!(assess(Some(&answered), &want, &auth, now).is_ok());
    }

    #[test]
    fn policy_problems_are_reported_not_issued() {
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        let mut id = identity();
        id.spec.dns_names = vec!["web.other-namespace.svc".into()];
        let p = desired(&id, "a", &authority(now, "Test CA"), &BTreeMap::new()).err().expect("refused");
        assert_eq!(p.reason, "PolicyViolation", "{}", p.message);
    }
}
