//! `kubectl mtls status`: what each authority is doing and, when a rotation is held up, what holds
//! it. What it reads is gathered first (each list that RBAC refuses becomes a warning, not a
//! failure); `report` turns it into the report, purely, so that it is tested without a cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;

use super::{OperatorHealth, Output, Session, StatusArgs, explain, print_structured, relative, short};
use crate::{
    api::{CaInfo, MtlsAuthority, MtlsIdentity, Phase},
    controllers::{ANN_BUNDLE_VERSION, LABEL_AUTHORITY},
    core::{duration, policy},
};

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub operator: Option<OperatorHealth>,
    pub authorities: Vec<AuthorityReport>,
    /// Identities not Ready, grouped by the Ready condition's reason.
    pub not_ready: Vec<ReasonGroup>,
    pub expiring_soonest: Vec<Expiring>,
    /// What could not be read (RBAC), and so is missing from the report.
    pub warnings: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityReport {
    pub name: String,
    pub phase: String,
    pub ready: Option<String>,
    pub message: Option<String>,
    pub active_ca: Option<CaInfo>,
    pub incoming_ca: Option<CaInfo>,
    pub retiring_ca: Option<CaInfo>,
    pub bundle_version: Option<i64>,
    pub namespaces: Option<Count>,
    pub secrets: Option<Count>,
    pub identities: usize,
    pub rotation: Option<RotationReport>,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Count {
    pub up_to_date: u32,
    pub total: u32,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationReport {
    pub cause: Option<String>,
    pub rolled_back: bool,
    pub phase_started_at: Option<String>,
    pub reissued: Option<Count>,
    /// What the phase waits for before the next one.
    pub waiting_for: String,
    /// The identities and namespaces that hold the phase, and why (at most `HOLDERS_LISTED`).
    pub held_by: Vec<Holder>,
    /// How many hold it in all.
    pub held_by_total: usize,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// `identity` or `namespace`.
    pub kind: &'static str,
    pub name: String,
    pub why: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReasonGroup {
    pub reason: String,
    pub count: usize,
    /// NS/NAME of the first few.
    pub identities: Vec<String>,
    /// The first one's message.
    pub message: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Expiring {
    pub identity: String,
    pub not_after: String,
    pub renewal_time: Option<String>,
}

const HOLDERS_LISTED: usize = 20;
const GROUP_LISTED: usize = 5;

/// Everything `status` reads; `None` where it could not be read.
pub struct Observed {
    pub now: Timestamp,
    pub authorities: Vec<MtlsAuthority>,
    pub identities: Option<Vec<MtlsIdentity>>,
    pub config_maps: Option<Vec<ConfigMap>>,
    pub namespaces: Option<Vec<Namespace>>,
    pub operator: Option<OperatorHealth>,
    pub warnings: Vec<String>,
}

fn ready_of(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == "Ready")
}

fn key(id: &MtlsIdentity) -> String {
    format!("{}/{}", id.namespace().unwrap_or_default(), id.name_any())
}

/// The report, from what was read.
pub fn report(o: &Observed, top: usize) -> Report {
    let names: BTreeSet<String> = o.authorities.iter().map(|a| a.name_any()).collect();
    let ids: Vec<&MtlsIdentity> =
        o.identities.iter().flatten().filter(|i| names.contains(&i.spec.authority_ref)).collect();
    let authorities = o.authorities.iter().map(|a| authority_report(o, a, &ids)).collect();

    let mut groups: BTreeMap<String, Vec<(&MtlsIdentity, String)>> = BTreeMap::new();
    for id in &ids {
        let cond = id.status.as_ref().and_then(|s| ready_of(&s.conditions));
        match cond {
            Some(c) if c.status == "True" => {}
            Some(c) => groups.entry(c.reason.clone()).or_default().push((id, c.message.clone())),
            None => {
                groups.entry("Pending".into()).or_default().push((id, "the operator has not reported on it yet".into()))
            }
        }
    }
    let mut not_ready: Vec<ReasonGroup> = groups
        .into_iter()
        .map(|(reason, members)| ReasonGroup {
            reason,
            count: members.len(),
            identities: members.iter().take(GROUP_LISTED).map(|(i, _)| key(i)).collect(),
            message: members[0].1.clone(),
        })
        .collect();
    not_ready.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));

    let mut expiring: Vec<(Timestamp, &MtlsIdentity)> = ids
        .iter()
        .filter_map(|i| Some((i.status.as_ref()?.not_after.as_ref()?.parse::<Timestamp>().ok()?, *i)))
        .collect();
    expiring.sort_by_key(|(t, i)| (*t, key(i)));
    let expiring_soonest = expiring
        .into_iter()
        .take(top)
        .map(|(t, i)| Expiring {
            identity: key(i),
            not_after: t.to_string(),
            renewal_time: i.status.as_ref().and_then(|s| s.renewal_time.clone()),
        })
        .collect();
    Report { operator: o.operator.clone(), authorities, not_ready, expiring_soonest, warnings: o.warnings.clone() }
}

fn authority_report(o: &Observed, a: &MtlsAuthority, all_ids: &[&MtlsIdentity]) -> AuthorityReport {
    let name = a.name_any();
    let st = a.status.clone().unwrap_or_default();
    let ids: Vec<&MtlsIdentity> = all_ids.iter().copied().filter(|i| i.spec.authority_ref == name).collect();
    let phase = st.rotation.as_ref().map(|r| r.phase).unwrap_or_default();
    let version = st.bundle.as_ref().map(|b| b.version);
    let count = |u: Option<u32>, t: Option<u32>| Some(Count { up_to_date: u?, total: t? });
    let ready = ready_of(&st.conditions);
    let rotation = (phase != Phase::Stable).then(|| {
        let rot = st.rotation.clone().unwrap_or_default();
        let mut held = vec![];
        let waiting_for = match phase {
            Phase::Preparing | Phase::Retiring => {
                let v = version.unwrap_or_default();
                held.extend(bundle_holders(o, a, &ids, v));
                format!("every bundle ConfigMap and identity Secret to hold bundle v{v}")
            }
            Phase::Propagating | Phase::Draining => {
                let delay = duration::parse(&a.spec.rotation.propagation_delay).unwrap_or(Duration::from_secs(180));
                let since = st.phase_started_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
                match since {
                    Some(t) => {
                        let until = t + delay;
                        format!(
                            "propagationDelay ({}) for kubelet to deliver bundle v{} into pods: until {until} ({})",
                            a.spec.rotation.propagation_delay,
                            version.unwrap_or_default(),
                            relative(until, o.now)
                        )
                    }
                    None => format!("propagationDelay ({})", a.spec.rotation.propagation_delay),
                }
            }
            Phase::Reissuing => {
                let signer = st.active_ca.as_ref().map(|c| c.fingerprint.clone()).unwrap_or_default();
                for id in &ids {
                    let s = id.status.clone().unwrap_or_default();
                    if s.issuer_fingerprint.as_deref() != Some(signer.as_str()) {
                        let why = match ready_of(&s.conditions) {
                            Some(c) if c.status != "True" => format!("not re-issued: {} ({})", c.reason, c.message),
                            _ => format!(
                                "its leaf is still signed by {} (queued at reissueRate {}/s)",
                                s.issuer_fingerprint.as_deref().map(short).unwrap_or("nothing"),
                                a.spec.rotation.reissue_rate
                            ),
                        };
                        held.push(Holder { kind: "identity", name: key(id), why });
                    }
                }
                format!("every identity to hold a leaf signed by the new CA {}", short(&signer))
            }
            Phase::Stable => unreachable!("only in flight"),
        };
        if o.identities.is_none() && matches!(phase, Phase::Preparing | Phase::Retiring | Phase::Reissuing) {
            held.push(Holder {
                kind: "identity",
                name: "?".into(),
                why: "identities cannot be listed (RBAC): holders unknown".into(),
            });
        }
        let total = held.len();
        held.truncate(HOLDERS_LISTED);
        RotationReport {
            cause: rot.cause,
            rolled_back: rot.rolled_back,
            phase_started_at: st.phase_started_at.clone(),
            reissued: st.rotation_progress.as_ref().map(|p| Count { up_to_date: p.reissued, total: p.total }),
            waiting_for,
            held_by: held,
            held_by_total: total,
        }
    });
    AuthorityReport {
        name: name.clone(),
        phase: phase.as_str().into(),
        ready: ready.map(|c| if c.status == "True" { "True".to_string() } else { format!("False ({})", c.reason) }),
        message: ready.filter(|c| c.status != "True").map(|c| c.message.clone()),
        active_ca: st.active_ca,
        incoming_ca: st.incoming_ca,
        retiring_ca: st.retiring_ca,
        bundle_version: version,
        namespaces: st.bundle.as_ref().and_then(|b| count(b.namespaces_up_to_date, b.namespaces_total)),
        secrets: st.bundle.as_ref().and_then(|b| count(b.secrets_up_to_date, b.secrets_total)),
        identities: ids.len(),
        rotation,
    }
}

/// Identities whose Secret and namespaces whose ConfigMap do not hold bundle version `v` yet.
fn bundle_holders(o: &Observed, a: &MtlsAuthority, ids: &[&MtlsIdentity], v: i64) -> Vec<Holder> {
    let name = a.name_any();
    let mut held = vec![];
    for id in ids {
        let s = id.status.clone().unwrap_or_default();
        if s.bundle_version != Some(v) {
            let have = s.bundle_version.map(|b| format!("v{b}")).unwrap_or_else(|| "no bundle".into());
            let why = match ready_of(&s.conditions) {
                Some(c) if c.status != "True" => format!("its Secret holds {have}: {} ({})", c.reason, c.message),
                _ => format!("its Secret holds {have}"),
            };
            held.push(Holder { kind: "identity", name: key(id), why });
        }
    }
    let cm_name = &a.spec.trust_bundle.config_map_name;
    let cms: BTreeMap<String, &ConfigMap> = o
        .config_maps
        .iter()
        .flatten()
        .filter(|c| &c.name_any() == cm_name)
        .map(|c| (c.namespace().unwrap_or_default(), c))
        .collect();
    let targets: Option<BTreeSet<String>> = o.namespaces.as_ref().map(|nss| {
        nss.iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .filter(|n| {
                policy::selector_matches(
                    "namespaceSelector",
                    a.spec.trust_bundle.namespace_selector.as_ref(),
                    n.labels(),
                )
                .unwrap_or(false)
            })
            .map(|n| n.name_any())
            .collect()
    });
    let candidates: BTreeSet<String> = match &targets {
        Some(t) => t.clone(),
        None => {
            cms.iter().filter(|(_, c)| c.labels().get(LABEL_AUTHORITY) == Some(&name)).map(|(n, _)| n.clone()).collect()
        }
    };
    for ns in candidates {
        let why = match cms.get(&ns) {
            None => format!("no ConfigMap {cm_name} yet"),
            Some(c) if c.labels().get(LABEL_AUTHORITY) != Some(&name) => {
                format!("a ConfigMap {cm_name} the operator did not write is in the way (delete or rename it)")
            }
            Some(c) => match c.annotations().get(ANN_BUNDLE_VERSION) {
                Some(have) if have == &v.to_string() => continue,
                Some(have) => format!("ConfigMap {cm_name} holds v{have}"),
                None => format!("ConfigMap {cm_name} has no bundle version"),
            },
        };
        held.push(Holder { kind: "namespace", name: ns, why });
    }
    held
}

fn ca_line(out: &mut String, label: &str, ca: &Option<CaInfo>, now: Timestamp) {
    if let Some(c) = ca {
        let until = c.not_after.parse::<Timestamp>().map(|t| format!(" ({})", relative(t, now))).unwrap_or_default();
        let _ = writeln!(out, "  {label:<13}{}  expires {}{until}", short(&c.fingerprint), c.not_after);
    }
}

/// The report as a person reads it.
pub fn render(r: &Report, now: Timestamp) -> String {
    let mut out = String::new();
    if let Some(op) = &r.operator {
        let _ = writeln!(out, "Operator: {}", op.detail);
    }
    if r.authorities.is_empty() {
        let _ = writeln!(out, "No MtlsAuthority objects.");
    }
    for a in &r.authorities {
        let _ = writeln!(
            out,
            "\nAuthority {}: {}{}",
            a.name,
            a.phase,
            a.ready.as_deref().map(|r| format!(", Ready={r}")).unwrap_or_default()
        );
        if let Some(m) = &a.message {
            let _ = writeln!(out, "  {m}");
        }
        ca_line(&mut out, "active CA", &a.active_ca, now);
        ca_line(&mut out, "incoming CA", &a.incoming_ca, now);
        ca_line(&mut out, "retiring CA", &a.retiring_ca, now);
        if let Some(v) = a.bundle_version {
            let c = |c: Option<Count>| c.map(|c| format!("{}/{}", c.up_to_date, c.total)).unwrap_or_else(|| "?".into());
            let _ = writeln!(
                out,
                "  {:<13}v{v}: namespaces {}, Secrets {} up to date",
                "bundle",
                c(a.namespaces),
                c(a.secrets)
            );
        }
        let _ = writeln!(out, "  {:<13}{}", "identities", a.identities);
        if let Some(rot) = &a.rotation {
            let cause = rot.cause.as_deref().map(|c| format!(" (cause: {c})")).unwrap_or_default();
            let back = if rot.rolled_back { ", rolled back" } else { "" };
            let _ = writeln!(
                out,
                "  {:<13}in {} since {}{cause}{back}",
                "rotation",
                a.phase,
                rot.phase_started_at.as_deref().unwrap_or("?")
            );
            if let Some(p) = rot.reissued {
                let _ = writeln!(
                    out,
                    "  {:<13}{}/{} identity Secrets signed by the current signer",
                    "progress", p.up_to_date, p.total
                );
            }
            let _ = writeln!(out, "  {:<13}{}", "waiting for", rot.waiting_for);
            if rot.held_by_total > 0 {
                let _ = writeln!(out, "  held by {}:", rot.held_by_total);
                for h in &rot.held_by {
                    let _ = writeln!(out, "    {} {}: {}", h.kind, h.name, h.why);
                }
                if rot.held_by_total > rot.held_by.len() {
                    let _ = writeln!(
                        out,
                        "    ... and {} more (-o json lists the first {HOLDERS_LISTED})",
                        rot.held_by_total - rot.held_by.len()
                    );
                }
            }
        }
    }
    if !r.not_ready.is_empty() {
        let _ = writeln!(out, "\nIdentities not Ready:");
        for g in &r.not_ready {
            let more = if g.count > g.identities.len() {
                format!(", ... {} more", g.count - g.identities.len())
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {} ({}): {}{more}", g.reason, g.count, g.identities.join(", "));
            let _ = writeln!(out, "    {}", g.message);
        }
    }
    if !r.expiring_soonest.is_empty() {
        let _ = writeln!(out, "\nExpiring soonest:");
        for e in &r.expiring_soonest {
            let when = e.not_after.parse::<Timestamp>().map(|t| relative(t, now)).unwrap_or_default();
            let renews = e
                .renewal_time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| format!(", renews {}", relative(t, now)))
                .unwrap_or_default();
            let _ = writeln!(out, "  {:<40} expires {} ({when}{renews})", e.identity, e.not_after);
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "\nwarning: {w}");
    }
    out
}

/// A list RBAC refused becomes a warning (and a part of the report left out), not a failure.
fn soft<T>(warnings: &mut Vec<String>, r: Result<Vec<T>, kube::Error>, what: &str) -> Option<Vec<T>> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(format!("{:#} ({what} are left out)", explain(e, "list", what, None)));
            None
        }
    }
}

pub async fn run(s: &Session, a: &StatusArgs) -> anyhow::Result<i32> {
    let client = &s.client;
    let auth_api: Api<MtlsAuthority> = Api::all(client.clone());
    let authorities = match &a.authority {
        Some(name) => vec![s.authority(name).await?],
        None => {
            auth_api
                .list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "list", "mtlsauthorities.mtls.io", None))?
                .items
        }
    };
    let mut warnings = vec![];
    let lp = ListParams::default();
    let identities = soft(
        &mut warnings,
        Api::<MtlsIdentity>::all(client.clone()).list(&lp).await.map(|l| l.items),
        "mtlsidentities.mtls.io",
    );
    // The bundle ConfigMaps by name (not by label: one in the way that the operator did not
    // write is a reason a rotation is held).
    let mut cms = Ok(vec![]);
    for cm_name in authorities.iter().map(|a| a.spec.trust_bundle.config_map_name.clone()).collect::<BTreeSet<_>>() {
        let lp = ListParams::default().fields(&format!("metadata.name={cm_name}"));
        match Api::<ConfigMap>::all(client.clone()).list_metadata(&lp).await {
            Ok(l) => {
                if let Ok(v) = cms.as_mut() {
                    v.extend(l.items.into_iter().map(|m| ConfigMap { metadata: m.metadata, ..Default::default() }));
                }
            }
            Err(e) => {
                cms = Err(e);
                break;
            }
        }
    }
    let config_maps = soft(&mut warnings, cms, "configmaps");
    let namespaces =
        soft(&mut warnings, Api::<Namespace>::all(client.clone()).list(&lp).await.map(|l| l.items), "namespaces");
    let operator = Some(s.operator().await);
    let o = Observed { now: Timestamp::now(), authorities, identities, config_maps, namespaces, operator, warnings };
    let r = report(&o, a.top);
    match a.output {
        Output::Text => print!("{}", render(&r, o.now)),
        other => print_structured(&r, other)?,
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn authority(phase: &str, status: serde_json::Value) -> MtlsAuthority {
        let mut st = status;
        st["rotation"]["phase"] = phase.into();
        st["phase"] = phase.into();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "corp"},
            "spec": {"ca": {"generate": {}}, "trustBundle": {"configMapName": "corp-bundle", "namespaceSelector": {"matchLabels": {"team": "a"}}}, "rotation": {"propagationDelay": "3m"}},
            "status": st,
        }))
        .unwrap()
    }

    fn identity(ns: &str, name: &str, status: serde_json::Value) -> MtlsIdentity {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}, "spec": {"authorityRef": "corp"}, "status": status})).unwrap()
    }

    fn ready(t: bool, reason: &str, msg: &str) -> serde_json::Value {
        serde_json::json!([{"type": "Ready", "status": if t {"True"} else {"False"}, "reason": reason, "message": msg, "lastTransitionTime": "2026-03-01T00:00:00Z"}])
    }

    fn ns(name: &str, team: &str) -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"team": team}}})).unwrap()
    }

    fn cm(ns: &str, version: &str, ours: bool) -> ConfigMap {
        let labels = if ours { serde_json::json!({"mtls.io/authority": "corp"}) } else { serde_json::json!({}) };
        serde_json::from_value(serde_json::json!({"metadata": {"name": "corp-bundle", "namespace": ns, "labels": labels, "annotations": {"mtls.io/bundle-version": version}}})).unwrap()
    }

    fn observed(a: MtlsAuthority, ids: Vec<MtlsIdentity>) -> Observed {
        Observed {
            now: now(),
            authorities: vec![a],
            identities: Some(ids),
            config_maps: Some(vec![cm("a1", "4", true), cm("a2", "3", true), cm("a3", "4", false)]),
            namespaces: Some(vec![ns("a1", "a"), ns("a2", "a"), ns("a3", "a"), ns("a4", "a"), ns("b1", "b")]),
            operator: None,
            warnings: vec![],
        }
    }

    #[test]
    fn preparing_names_the_identities_and_namespaces_that_hold_it() {
        let a = authority(
            "Preparing",
            serde_json::json!({"bundle": {"version": 4, "sha256": "x", "namespacesUpToDate": 1, "namespacesTotal": 4}, "phaseStartedAt": "2026-03-01T11:58:00Z"}),
        );
        let ids = vec![
            identity("a1", "web", serde_json::json!({"bundleVersion": 4, "conditions": ready(true, "Issued", "")})),
            identity(
                "a2",
                "db",
                serde_json::json!({"bundleVersion": 3, "conditions": ready(false, "PolicyDenied", "dnsNames x not allowed")}),
            ),
        ];
        let r = report(&observed(a, ids), 5);
        let rot = r.authorities[0].rotation.clone().unwrap();
        assert!(rot.waiting_for.contains("bundle v4"), "{}", rot.waiting_for);
        let held: Vec<(&str, &str)> = rot.held_by.iter().map(|h| (h.kind, h.name.as_str())).collect();
        assert_eq!(held, [("identity", "a2/db"), ("namespace", "a2"), ("namespace", "a3"), ("namespace", "a4")]);
        assert!(rot.held_by[0].why.contains("v3") && rot.held_by[0].why.contains("PolicyDenied"));
        assert!(rot.held_by[1].why.contains("v3"));
        assert!(rot.held_by[2].why.contains("did not write"), "{}", rot.held_by[2].why);
        assert!(rot.held_by[3].why.contains("no ConfigMap"));
        assert_eq!(r.not_ready.len(), 1);
        assert_eq!((r.not_ready[0].reason.as_str(), r.not_ready[0].count), ("PolicyDenied", 1));
        let text = render(&r, now());
        assert!(text.contains("held by 4:") && text.contains("namespace a4: no ConfigMap corp-bundle yet"), "{text}");
    }

    #[test]
    fn reissuing_names_identities_still_on_the_old_ca_and_propagating_says_until_when() {
        let st = serde_json::json!({"activeCa": {"fingerprint": "bbbb", "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2027-01-01T00:00:00Z"}, "rotationProgress": {"reissued": 1, "total": 2}, "bundle": {"version": 5, "sha256": "x"}, "phaseStartedAt": "2026-03-01T11:59:00Z"});
        let ids = vec![
            identity(
                "a1",
                "web",
                serde_json::json!({"issuerFingerprint": "bbbb", "notAfter": "2026-03-01T13:00:00Z", "conditions": ready(true, "Issued", "")}),
            ),
            identity(
                "a1",
                "db",
                serde_json::json!({"issuerFingerprint": "aaaa", "notAfter": "2026-03-01T12:30:00Z", "conditions": ready(true, "Issued", "")}),
            ),
        ];
        let r = report(&observed(authority("Reissuing", st.clone()), ids.clone()), 1);
        let rot = r.authorities[0].rotation.clone().unwrap();
        assert_eq!(rot.held_by.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["a1/db"]);
        assert_eq!(rot.reissued, Some(Count { up_to_date: 1, total: 2 }));
        assert_eq!(r.expiring_soonest.iter().map(|e| e.identity.as_str()).collect::<Vec<_>>(), ["a1/db"]);
        let r = report(&observed(authority("Draining", st), ids), 5);
        let rot = r.authorities[0].rotation.clone().unwrap();
        assert!(rot.waiting_for.contains("until 2026-03-01T12:02:00Z (in 2m)"), "{}", rot.waiting_for);
        assert!(rot.held_by.is_empty());
    }

    #[test]
    fn stable_has_no_rotation_and_missing_lists_are_said() {
        let mut o = observed(authority("Stable", serde_json::json!({"bundle": {"version": 1, "sha256": "x"}})), vec![]);
        o.identities = None;
        o.warnings.push("no access".into());
        let r = report(&o, 5);
        assert!(r.authorities[0].rotation.is_none());
        assert!(render(&r, now()).contains("warning: no access"));
    }
}
