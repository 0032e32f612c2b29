//! Publishes an authority's trust bundle as a ConfigMap in every namespace its bundle selector
//! matches, removes it where the selector stops matching, keeps immutable history copies in the
//! operator's namespace, and counts who holds the current version. Reads come from watch caches;
//! an unchanged bundle causes no write at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{StreamExt, stream};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};

use super::error::Error;
use super::{ANN_BUNDLE_SHA256, ANN_BUNDLE_VERSION, Context, LABEL_AUTHORITY, LABEL_MANAGED_BY, MANAGER};
use crate::{
    api::MtlsAuthority,
    core::{
        bundle::{Bundle, Rollout},
        keystore, policy,
    },
};

/// Marks the history copies kept in the operator's namespace.
pub const LABEL_HISTORY: &str = "mtls.io/bundle-history";
/// How many past bundle versions are kept as immutable ConfigMaps.
pub const HISTORY_KEPT: usize = 5;
const PARALLEL_WRITES: usize = 16;

/// Caches the publisher reads instead of the API.
#[derive(Clone)]
pub struct Caches {
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ConfigMaps labelled as managed by this operator.
    pub configmaps: Store<ConfigMap>,
    /// Secrets labelled as managed by this operator (a few facts each).
    pub secrets: Arc<super::secrets::SecretCache>,
}

fn owner(auth: &MtlsAuthority) -> OwnerReference {
    OwnerReference {
        api_version: MtlsAuthority::api_version(&()).into_owned(),
        kind: MtlsAuthority::kind(&()).into_owned(),
        name: auth.name_any(),
        uid: auth.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The truststore files (`spec.trustBundle.additionalFormats`) of one bundle version, and what
/// they were built from.
#[derive(Clone, Default)]
pub struct Truststores {
    /// Bundle SHA-256 and the formats asked for (keys, passwords: a bundle's are not secret).
    inputs: String,
    pub files: BTreeMap<String, ByteString>,
}

/// The (key, password, is JKS) of each truststore format the authority asks for.
fn formats(auth: &MtlsAuthority) -> Vec<(String, String, bool)> {
    let mut out = vec![];
    if let Some(f) = &auth.spec.trust_bundle.additional_formats {
        for (spec, default_key, jks) in [(&f.jks, "truststore.jks", true), (&f.pkcs12, "truststore.p12", false)] {
            if let Some(spec) = spec {
                let key = spec.key.clone().unwrap_or_else(|| default_key.into());
                out.push((key, spec.password.clone().unwrap_or_else(|| "changeit".into()), jks));
            }
        }
    }
    out
}

/// The truststore files for `bundle`: the ones already built in this process, else the ones a
/// ConfigMap of ours already carries if they hold exactly this bundle (after a restart; PKCS#12
/// files are salted, so a fresh one would differ byte for byte and rewrite every namespace),
/// else new ones.
pub fn truststores(
    ctx: &Context,
    auth: &MtlsAuthority,
    bundle: &Bundle,
    caches: &Caches,
) -> Result<Truststores, Error> {
    let formats = formats(auth);
    if formats.is_empty() {
        return Ok(Truststores::default());
    }
    let inputs = format!("{}|{formats:?}", bundle.sha256);
    let name = auth.name_any();
    if let Some(t) = ctx.bundle_truststores.lock().expect("truststore cache lock poisoned").get(&name)
        && t.inputs == inputs
    {
        return Ok(t.clone());
    }
    let roots = crate::core::pki::parse_pem_certs("trust bundle", &bundle.pem)?;
    let want = keystore::trust(&roots);
    let holds = |cm: &ConfigMap| {
        formats.iter().all(|(key, pw, jks)| {
            cm.binary_data.as_ref().and_then(|d| d.get(key)).is_some_and(|b| {
                if *jks { keystore::jks_holds(&b.0, pw, "", &want) } else { keystore::pkcs12_holds(&b.0, pw, &want) }
            })
        })
    };
    let ours = caches.configmaps.state();
    let adopted = ours
        .iter()
        .filter(|c| c.labels().get(LABEL_AUTHORITY) == Some(&name))
        .filter(|c| c.annotations().get(ANN_BUNDLE_SHA256) == Some(&bundle.sha256))
        .take(2)
        .find(|c| holds(c));
    let files = match adopted {
        Some(cm) => {
            let data = cm.binary_data.clone().unwrap_or_default();
            formats.iter().filter_map(|(k, _, _)| Some((k.clone(), data.get(k)?.clone()))).collect()
        }
        None => {
            let mut files = BTreeMap::new();
            for (key, pw, jks) in &formats {
                let bytes = if *jks {
                    keystore::jks(&want, pw, "", std::time::SystemTime::now())
                } else {
                    keystore::pkcs12(&want, pw, crate::api::Pkcs12Profile::Modern2023)
                }?;
                files.insert(key.clone(), ByteString(bytes));
            }
            files
        }
    };
    let t = Truststores { inputs, files };
    ctx.bundle_truststores.lock().expect("truststore cache lock poisoned").insert(name, t.clone());
    Ok(t)
}

/// The ConfigMap as it should be in `namespace`.
pub fn desired_configmap(
    auth: &MtlsAuthority,
    bundle: &Bundle,
    truststores: &Truststores,
    namespace: &str,
    name: &str,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
                (LABEL_AUTHORITY.to_string(), auth.name_any()),
            ])),
            annotations: Some(BTreeMap::from([
                (ANN_BUNDLE_VERSION.to_string(), bundle.version.to_string()),
                (ANN_BUNDLE_SHA256.to_string(), bundle.sha256.clone()),
            ])),
            owner_references: Some(vec![owner(auth)]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bundle.pem.clone()),
            ("version".to_string(), bundle.version.to_string()),
        ])),
        binary_data: Some(truststores.files.clone()).filter(|f| !f.is_empty()),
        ..Default::default()
    }
}

/// Whether `have` already says everything `want` says (others may add labels or annotations).
fn satisfies(have: &ConfigMap, want: &ConfigMap) -> bool {
    let contains =
        |h: &BTreeMap<String, String>, w: &BTreeMap<String, String>| w.iter().all(|(k, v)| h.get(k) == Some(v));
    have.data == want.data
        && have.binary_data.as_ref().filter(|b| !b.is_empty()) == want.binary_data.as_ref()
        && contains(have.labels(), want.labels())
        && contains(have.annotations(), want.annotations())
        && want.owner_references().iter().all(|o| have.owner_references().iter().any(|h| h.uid == o.uid))
}

fn history_name(base: &str, version: i64) -> String {
    format!("{base}-v{version}")
}

pub async fn publish(
    ctx: &Context,
    auth: &MtlsAuthority,
    bundle: &Bundle,
    signer_fingerprint: &str,
    caches: &Caches,
) -> Result<Rollout, Error> {
    let name = auth.name_any();
    let spec = &auth.spec.trust_bundle;
    let cm_name = spec.config_map_name.as_str();
    let mut report = Rollout::default();

    let mut targets = BTreeSet::new();
    for ns in caches.namespaces.state() {
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let matches =
            policy::selector_matches("trustBundle.namespaceSelector", spec.namespace_selector.as_ref(), ns.labels())
                .unwrap_or(false);
        if matches {
            targets.insert(ns.name_any());
        }
    }
    report.namespaces_total = targets.len() as u32;

    // Writes, in parallel, only where something differs.
    let truststores = truststores(ctx, auth, bundle, caches)?;
    let mut work = vec![];
    for ns in &targets {
        let want = desired_configmap(auth, bundle, &truststores, ns, cm_name);
        match caches.configmaps.get(&ObjectRef::new(cm_name).within(ns)) {
            Some(have) if have.labels().get(LABEL_AUTHORITY) != Some(&name) => report.conflicts.push(ns.clone()),
            Some(have) if satisfies(&have, &want) => report.namespaces_up_to_date += 1,
            have => {
                // binaryData keys the bundle no longer carries (truststore formats turned off or
                // renamed): an apply leaves keys that a create wrote, so they are removed by name.
                let stale: Vec<String> = have
                    .as_ref()
                    .and_then(|h| h.binary_data.as_ref())
                    .into_iter()
                    .flat_map(|b| b.keys())
                    .filter(|k| want.binary_data.as_ref().is_none_or(|w| !w.contains_key(*k)))
                    .cloned()
                    .collect();
                work.push((ns.clone(), want, have.is_some(), stale))
            }
        }
    }
    let results: Vec<(String, Result<(), kube::Error>)> = stream::iter(work)
        .map(|(ns, want, exists, stale)| {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            async move {
                let r = if exists {
                    let applied = api
                        .patch(cm_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&want))
                        .await
                        .map(|_| ());
                    match applied {
                        Ok(()) if !stale.is_empty() => {
                            let gone: serde_json::Map<String, serde_json::Value> =
                                stale.into_iter().map(|k| (k, serde_json::Value::Null)).collect();
                            let patch = serde_json::json!({"binaryData": gone});
                            api.patch(cm_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
                        }
                        r => r,
                    }
                } else {
                    api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &want)
                        .await
                        .map(|_| ())
                };
                (ns, r)
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .collect()
        .await;
    for (ns, r) in results {
        report.writes += 1;
        match r {
            Ok(()) => report.namespaces_up_to_date += 1,
            // A ConfigMap of that name that is not ours (the cache only holds ours).
            Err(kube::Error::Api(ae)) if ae.code == 409 => report.conflicts.push(ns),
            // The namespace is going away.
            Err(kube::Error::Api(ae)) if ae.code == 403 || ae.code == 404 => report.namespaces_total -= 1,
            Err(e) => return Err(Error::kube("writing trust bundle ConfigMap")(e)),
        }
    }

    // Remove ours where the selector no longer matches (or the name changed).
    let stale: Vec<(String, String)> = caches
        .configmaps
        .state()
        .iter()
        .filter(|c| c.labels().get(LABEL_AUTHORITY) == Some(&name) && !c.labels().contains_key(LABEL_HISTORY))
        .filter(|c| !(c.name_any() == cm_name && targets.contains(&c.namespace().unwrap_or_default())))
        .map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    for (ns, n) in stale {
        report.writes += 1;
        match Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).delete(&n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(ae)) if ae.code == 404 => {}
            Err(e) => return Err(Error::kube("removing trust bundle ConfigMap")(e)),
        }
    }

    // History: an immutable copy per version in the operator's namespace, the last few kept.
    let history: Vec<ConfigMap> = caches
        .configmaps
        .state()
        .iter()
        .filter(|c| c.labels().get(LABEL_AUTHORITY) == Some(&name) && c.labels().contains_key(LABEL_HISTORY))
        .map(|c| (**c).clone())
        .collect();
    let hname = history_name(cm_name, bundle.version);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if !history.iter().any(|c| c.name_any() == hname) {
        let mut cm = desired_configmap(auth, bundle, &truststores, &ctx.namespace, &hname);
        cm.metadata.labels.get_or_insert_default().insert(LABEL_HISTORY.into(), "true".into());
        cm.immutable = Some(true);
        report.writes += 1;
        match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &cm).await {
            Ok(_) => {}
            Err(kube::Error::Api(ae)) if ae.code == 409 => {}
            Err(e) => return Err(Error::kube("writing trust bundle history")(e)),
        }
    }
    let version_of =
        |c: &ConfigMap| c.annotations().get(ANN_BUNDLE_VERSION).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let mut versions: Vec<(i64, String)> = history.iter().map(|c| (version_of(c), c.name_any())).collect();
    versions.sort();
    let keep_from = bundle.version - HISTORY_KEPT as i64 + 1;
    for (v, n) in versions {
        if v < keep_from {
            report.writes += 1;
            let _ = api.delete(&n, &DeleteParams::default()).await;
        }
    }

    // Identity Secrets of this authority (CA Secrets excluded) and the bundle they carry.
    let rollout = caches.secrets.rollout(&name, bundle.version, signer_fingerprint);
    report.secrets_total = rollout.total;
    report.secrets_up_to_date = rollout.up_to_date;
    report.secrets_signed = rollout.signed;
    ctx.metrics.set_bundle_rollout(&name, &report);
    Ok(report)
}
