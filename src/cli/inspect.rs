//! `kubectl mtls inspect` and `kubectl mtls check`: what an identity's Secret holds, decoded, and
//! whether two identities would complete a handshake now. Key material is read only to check that
//! it matches the leaf (locally); it is never printed.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::{CheckArgs, InspectArgs, Output, Session, explain, print_structured, relative, short};
use crate::{
    api::{MtlsAuthority, MtlsIdentity, MtlsIdentityStatus},
    controllers::{ANN_BUNDLE_VERSION, ANN_RENEW_REQUESTED, LABEL_AUTHORITY, LABEL_IDENTITY},
    core::{
        handshake::{self, Role},
        pki,
    },
};

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct CertReport {
    pub subject: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_before: String,
    pub not_after: String,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SecretReport {
    pub secret: String,
    pub identity: Option<String>,
    pub authority: Option<String>,
    /// `tls.crt`, leaf first.
    pub chain: Vec<CertReport>,
    pub spiffe_ids: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub usages: Vec<String>,
    pub key_type: Option<String>,
    /// `tls.key` holds the private key of the leaf (checked here; the key is never shown).
    pub key_matches_leaf: bool,
    /// SHA-256 of the CA certificate that signed the leaf (found in `tls.crt` or `ca.crt`).
    pub issuer_fingerprint: Option<String>,
    /// The authority's bundle versions (current and history) that contain that issuer.
    pub issuer_in_bundle_versions: Vec<i64>,
    /// The bundle version in the Secret's `ca.crt`.
    pub ca_bundle_version: Option<String>,
    /// CAs in `ca.crt`: subject and fingerprint.
    pub ca_bundle: Vec<CertReport>,
    /// Verifying the leaf against the Secret's own `ca.crt` now: None if it verifies.
    pub problem: Option<String>,
    pub renew_request_answered: Option<String>,
}

fn data<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.data.as_ref()?.get(key).and_then(|b| std::str::from_utf8(&b.0).ok())
}

fn cert_report(der: &[u8]) -> Option<CertReport> {
    let f = pki::facts_of(der).ok()?;
    Some(CertReport {
        subject: f.subject,
        serial: f.serial,
        fingerprint: f.fingerprint,
        not_before: f.not_before.to_string(),
        not_after: f.not_after.to_string(),
    })
}

/// Decodes an identity Secret. `authority` (when readable) says which bundle versions hold the issuer.
pub fn secret_report(s: &Secret, authority: Option<&MtlsAuthority>, now: Timestamp) -> anyhow::Result<SecretReport> {
    let name = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
    let crt = data(s, "tls.crt")
        .ok_or_else(|| anyhow::anyhow!("Secret {name} has no tls.crt: not an identity Secret (yet)"))?;
    let key = data(s, "tls.key").unwrap_or("");
    let leaf = pki::inspect_leaf(crt, key).map_err(|e| anyhow::anyhow!("Secret {name}: {e}"))?;
    let chain_der = pki::parse_pem_certs("tls.crt", crt).map_err(|e| anyhow::anyhow!("Secret {name}: {e}"))?;
    let ca_pem = data(s, "ca.crt");
    let ca_der = ca_pem.and_then(|p| pki::parse_pem_certs("ca.crt", p).ok()).unwrap_or_default();
    let candidates: Vec<Vec<u8>> = chain_der[1..].iter().chain(ca_der.iter()).cloned().collect();
    let issuer = handshake::issuer_among(&chain_der[0], &candidates).map(|i| pki::fingerprint(&candidates[i]));
    let mut versions = vec![];
    if let (Some(fp), Some(st)) = (&issuer, authority.and_then(|a| a.status.as_ref())) {
        if let Some(b) = st.bundle.as_ref().filter(|b| b.members.contains(fp)) {
            versions.push(b.version);
        }
        for h in &st.history {
            if h.members.contains(fp) && !versions.contains(&h.version) {
                versions.push(h.version);
            }
        }
        versions.sort_unstable_by(|a, b| b.cmp(a));
    }
    let problem = match ca_pem {
        None => Some("the Secret has no ca.crt".to_string()),
        Some(ca) => handshake::verify_peer(crt, ca, Role::Client, None, now)
            .or_else(|_| handshake::verify_peer(crt, ca, Role::Server, None, now))
            .err()
            .map(|p| p.to_string()),
    };
    let usage_name = |u: &crate::api::Usage| {
        serde_json::to_value(u).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    };
    Ok(SecretReport {
        secret: name,
        identity: s.labels().get(LABEL_IDENTITY).cloned(),
        authority: s.labels().get(LABEL_AUTHORITY).cloned(),
        chain: chain_der.iter().filter_map(|d| cert_report(d)).collect(),
        spiffe_ids: leaf.uris.iter().filter(|u| u.starts_with("spiffe://")).cloned().collect(),
        dns_names: leaf.dns_names.clone(),
        ip_addresses: leaf.ip_addresses.iter().map(|i| i.to_string()).collect(),
        usages: leaf.usages.iter().map(usage_name).collect(),
        key_type: leaf.algorithm.and_then(|a| serde_json::to_value(a).ok()).and_then(|v| v.as_str().map(String::from)),
        key_matches_leaf: leaf.key_matches,
        issuer_fingerprint: issuer,
        issuer_in_bundle_versions: versions,
        ca_bundle_version: s.annotations().get(ANN_BUNDLE_VERSION).cloned(),
        ca_bundle: ca_der.iter().filter_map(|d| cert_report(d)).collect(),
        problem,
        renew_request_answered: s.annotations().get(ANN_RENEW_REQUESTED).cloned(),
    })
}

fn render_secret(out: &mut String, r: &SecretReport, now: Timestamp) {
    let _ = writeln!(
        out,
        "Secret {}{}",
        r.secret,
        r.authority.as_deref().map(|a| format!(" (authority {a})")).unwrap_or_default()
    );
    let validity = |c: &CertReport| {
        let left = c.not_after.parse::<Timestamp>().map(|t| relative(t, now)).unwrap_or_default();
        format!("{} .. {} (expires {left})", c.not_before, c.not_after)
    };
    if let Some(leaf) = r.chain.first() {
        let _ = writeln!(out, "  Leaf");
        let _ = writeln!(out, "    subject      {}", leaf.subject);
        let _ = writeln!(
            out,
            "    SPIFFE ID    {}",
            if r.spiffe_ids.is_empty() { "(none)".into() } else { r.spiffe_ids.join(", ") }
        );
        let _ = writeln!(
            out,
            "    DNS names    {}",
            if r.dns_names.is_empty() { "(none)".into() } else { r.dns_names.join(", ") }
        );
        if !r.ip_addresses.is_empty() {
            let _ = writeln!(out, "    IP addresses {}", r.ip_addresses.join(", "));
        }
        let _ = writeln!(out, "    usages       {}", r.usages.join(", "));
        let _ = writeln!(
            out,
            "    key          {}, {}",
            r.key_type.as_deref().unwrap_or("unknown type"),
            if r.key_matches_leaf { "tls.key matches the leaf" } else { "tls.key does NOT match the leaf" }
        );
        let _ = writeln!(out, "    serial       {}", leaf.serial);
        let _ = writeln!(out, "    validity     {}", validity(leaf));
        let _ = writeln!(out, "    fingerprint  {}", leaf.fingerprint);
    }
    for c in r.chain.iter().skip(1) {
        let _ = writeln!(out, "  Intermediate {}  {}", short(&c.fingerprint), c.subject);
    }
    let issuer = r.issuer_fingerprint.as_deref().map(short).unwrap_or("not found in tls.crt or ca.crt");
    let versions = if r.issuer_in_bundle_versions.is_empty() {
        String::new()
    } else {
        format!(
            ", in bundle versions {}",
            r.issuer_in_bundle_versions.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", ")
        )
    };
    let _ = writeln!(out, "  Issuer         {issuer}{versions}");
    let _ = writeln!(
        out,
        "  ca.crt         bundle {}: {}",
        r.ca_bundle_version.as_deref().map(|v| format!("v{v}")).unwrap_or_else(|| "(unversioned)".into()),
        r.ca_bundle.iter().map(|c| format!("{} ({})", short(&c.fingerprint), c.subject)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        out,
        "  Verifies       {}",
        r.problem
            .as_deref()
            .map(|p| format!("NO against its own ca.crt: {p}"))
            .unwrap_or_else(|| "yes, against its own ca.crt".into())
    );
}

async fn get_secret(s: &Session, ns: &str, name: &str) -> anyhow::Result<Secret> {
    Api::<Secret>::namespaced(s.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| explain(e, "get", "secrets", Some(ns)))?
        .ok_or_else(|| anyhow::anyhow!("no Secret {ns}/{name}"))
}

async fn get_identity(s: &Session, ns: &str, name: &str) -> anyhow::Result<MtlsIdentity> {
    Api::<MtlsIdentity>::namespaced(s.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| explain(e, "get", "mtlsidentities.mtls.io", Some(ns)))?
        .ok_or_else(|| anyhow::anyhow!("no MtlsIdentity {ns}/{name} (kubectl get mtlsidentities -n {ns} lists them)"))
}

async fn authority_of(s: &Session, name: Option<&str>) -> Option<MtlsAuthority> {
    Api::<MtlsAuthority>::all(s.client.clone()).get_opt(name?).await.ok().flatten()
}

fn secret_name_of(id: &MtlsIdentity) -> String {
    id.status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .or_else(|| id.spec.secret_name.clone())
        .unwrap_or_else(|| format!("{}-mtls", id.name_any()))
}

pub async fn secret(s: &Session, a: &InspectArgs) -> anyhow::Result<i32> {
    let (ns, name) = s.split(&a.target)?;
    let secret = get_secret(s, ns, name).await?;
    let auth = authority_of(s, secret.labels().get(LABEL_AUTHORITY).map(String::as_str)).await;
    let now = Timestamp::now();
    let r = secret_report(&secret, auth.as_ref(), now)?;
    match a.output {
        Output::Text => {
            let mut out = String::new();
            render_secret(&mut out, &r, now);
            print!("{out}");
        }
        other => print_structured(&r, other)?,
    }
    Ok(0)
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct IdentityReport {
    identity: String,
    authority: String,
    ready: Option<String>,
    message: Option<String>,
    status: Option<MtlsIdentityStatus>,
    secret: Option<SecretReport>,
    /// Why the Secret is not shown, when it is not.
    secret_unavailable: Option<String>,
}

pub async fn identity(s: &Session, a: &InspectArgs) -> anyhow::Result<i32> {
    let (ns, name) = s.split(&a.target)?;
    let id = get_identity(s, ns, name).await?;
    let now = Timestamp::now();
    let auth = authority_of(s, Some(&id.spec.authority_ref)).await;
    let secret_name = secret_name_of(&id);
    let (secret, unavailable) = match get_secret(s, ns, &secret_name).await {
        Ok(sec) => match secret_report(&sec, auth.as_ref(), now) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
        Err(e) => (None, Some(format!("{e:#}: showing the identity's status only"))),
    };
    let cond = id.status.as_ref().and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"));
    let r = IdentityReport {
        identity: format!("{ns}/{name}"),
        authority: id.spec.authority_ref.clone(),
        ready: cond.map(|c| format!("{} ({})", c.status, c.reason)),
        message: cond.map(|c| c.message.clone()),
        status: id.status.clone(),
        secret,
        secret_unavailable: unavailable,
    };
    match a.output {
        Output::Text => {
            let mut out = String::new();
            let _ = writeln!(out, "MtlsIdentity {} (authority {})", r.identity, r.authority);
            let _ = writeln!(out, "  Ready          {}", r.ready.as_deref().unwrap_or("not reported yet"));
            if let Some(m) = r.message.as_deref().filter(|m| !m.is_empty()) {
                let _ = writeln!(out, "  message        {m}");
            }
            if let Some(st) = &r.status {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let _ = writeln!(out, "  SPIFFE ID      {}", opt(&st.spiffe_id));
                let _ = writeln!(out, "  serial         {}", opt(&st.serial_number));
                let _ = writeln!(out, "  expires        {}", opt(&st.not_after));
                let _ = writeln!(out, "  renews         {}", opt(&st.renewal_time));
                let _ =
                    writeln!(out, "  issuer         {}", st.issuer_fingerprint.as_deref().map(short).unwrap_or("-"));
                let _ = writeln!(
                    out,
                    "  bundle         {}",
                    st.bundle_version.map(|v| format!("v{v}")).unwrap_or_else(|| "-".into())
                );
                if let Some(n) = st.failure_count.filter(|n| *n > 0) {
                    let _ = writeln!(out, "  failures       {n} in a row, last at {}", opt(&st.last_failure_time));
                }
            }
            match (&r.secret, &r.secret_unavailable) {
                (Some(sec), _) => {
                    out.push('\n');
                    render_secret(&mut out, sec, now);
                }
                (None, Some(why)) => {
                    let _ = writeln!(out, "\n  Secret {secret_name}: {why}");
                }
                (None, None) => {}
            }
            print!("{out}");
        }
        other => print_structured(&r, other)?,
    }
    Ok(0)
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Whose certificate is verified.
    pub presenter: String,
    /// Who verifies it (with the trust bundle in their Secret's `ca.crt`).
    pub verifier: String,
    pub role: &'static str,
    pub server_name: Option<String>,
    pub spiffe_id: Option<String>,
    /// None: accepted.
    pub problem: Option<String>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub ok: bool,
    pub sides: Vec<Side>,
}

/// Would `from` (client) and `to` (server) complete a mutual-TLS handshake at `now`, each with the
/// trust bundle in its own Secret? `server_name` defaults to `to`'s first DNS name.
pub fn check_secrets(
    from: (&str, &Secret),
    to: (&str, &Secret),
    server_name: Option<&str>,
    now: Timestamp,
) -> anyhow::Result<CheckReport> {
    let need = |(n, s): (&str, &Secret), key: &str| {
        data(s, key).map(String::from).ok_or_else(|| anyhow::anyhow!("{n}: its Secret has no {key} (not issued yet?)"))
    };
    let (from_crt, from_ca) = (need(from, "tls.crt")?, need(from, "ca.crt")?);
    let (to_crt, to_ca) = (need(to, "tls.crt")?, need(to, "ca.crt")?);
    let to_leaf = pki::inspect_leaf(&to_crt, "").map_err(|e| anyhow::anyhow!("{}: {e}", to.0))?;
    let from_leaf = pki::inspect_leaf(&from_crt, "").map_err(|e| anyhow::anyhow!("{}: {e}", from.0))?;
    let server_name = server_name.map(String::from).or_else(|| to_leaf.dns_names.first().cloned());
    let spiffe = |l: &pki::LeafFacts| l.uris.iter().find(|u| u.starts_with("spiffe://")).cloned();
    let side = |presenter: &str,
                verifier: &str,
                role: Role,
                crt: &str,
                ca: &str,
                name: Option<&str>,
                leaf: &pki::LeafFacts| {
        let mut problem = handshake::verify_peer(crt, ca, role, name, now).err().map(|p| p.to_string());
        if problem.is_none() && spiffe(leaf).is_none() {
            problem = Some("no SPIFFE ID: the leaf has no spiffe:// URI SAN, so a SPIFFE-aware peer refuses it".into());
        }
        Side {
            presenter: presenter.into(),
            verifier: verifier.into(),
            role: match role {
                Role::Server => "server",
                Role::Client => "client",
            },
            server_name: name.map(String::from),
            spiffe_id: spiffe(leaf),
            problem,
        }
    };
    let sides = vec![
        side(to.0, from.0, Role::Server, &to_crt, &from_ca, server_name.as_deref(), &to_leaf),
        side(from.0, to.0, Role::Client, &from_crt, &to_ca, None, &from_leaf),
    ];
    Ok(CheckReport { ok: sides.iter().all(|s| s.problem.is_none()), sides })
}

pub async fn check(s: &Session, a: &CheckArgs) -> anyhow::Result<i32> {
    let (fns, fname) = s.split(&a.from)?;
    let (tns, tname) = s.split(&a.to)?;
    let (fid, tid) = (get_identity(s, fns, fname).await?, get_identity(s, tns, tname).await?);
    let fsec = get_secret(s, fns, &secret_name_of(&fid)).await?;
    let tsec = get_secret(s, tns, &secret_name_of(&tid)).await?;
    let (fkey, tkey) = (format!("{fns}/{fname}"), format!("{tns}/{tname}"));
    let r = check_secrets((&fkey, &fsec), (&tkey, &tsec), a.server_name.as_deref(), Timestamp::now())?;
    match a.output {
        Output::Text => {
            for side in &r.sides {
                let what = match side.role {
                    "server" => format!(
                        "{} verifies {}'s server certificate{}",
                        side.verifier,
                        side.presenter,
                        side.server_name
                            .as_deref()
                            .map(|n| format!(" for {n}"))
                            .unwrap_or_else(|| " (no DNS name: by SPIFFE ID only)".into())
                    ),
                    _ => format!("{} verifies {}'s client certificate", side.verifier, side.presenter),
                };
                match &side.problem {
                    None => println!("ok    {what}: {}", side.spiffe_id.as_deref().unwrap_or("")),
                    Some(p) => println!("FAIL  {what}: {p}"),
                }
            }
            println!(
                "{}",
                if r.ok {
                    format!("handshake {fkey} -> {tkey} would succeed")
                } else {
                    format!("handshake {fkey} -> {tkey} would fail")
                }
            );
        }
        other => print_structured(&r, other)?,
    }
    Ok(if r.ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::{
        api::{KeyAlgorithm, Usage},
        core::pki::{LeafRequest, SigningCa, generate_ca, load_ca},
    };

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn ca(name: &str) -> SigningCa {
        let (c, k) = generate_ca(
            name,
            &[],
            KeyAlgorithm::EcdsaP256,
            now() - Duration::from_secs(60),
            Duration::from_secs(86400),
        )
        .unwrap();
        load_ca(&c, k.expose(), None, now()).unwrap()
    }

    fn secret(ns: &str, ca: &SigningCa, trust: &str, dns: &[&str], usages: Vec<Usage>) -> Secret {
        let leaf = ca
            .issue(&LeafRequest {
                common_name: "x".into(),
                spiffe_id: format!("spiffe://cluster.local/ns/{ns}/sa/x"),
                dns_names: dns.iter().map(|d| d.to_string()).collect(),
                ip_addresses: vec![],
                usages,
                algorithm: KeyAlgorithm::EcdsaP256,
                not_before: now() - Duration::from_secs(60),
                not_after: now() + Duration::from_secs(3600),
            })
            .unwrap();
        let mut s = Secret::default();
        s.metadata.name = Some("x-mtls".into());
        s.metadata.namespace = Some(ns.into());
        s.data = Some(
            [
                ("tls.crt".to_string(), ByteString(leaf.cert_chain_pem.into_bytes())),
                ("tls.key".to_string(), ByteString(leaf.key.expose().as_bytes().to_vec())),
                ("ca.crt".to_string(), ByteString(trust.as_bytes().to_vec())),
            ]
            .into(),
        );
        s
    }

    #[test]
    fn check_names_the_side_that_fails_and_why() {
        let (a, b) = (ca("A"), ca("B"));
        let both = vec![Usage::ServerAuth, Usage::ClientAuth];
        let web = secret("shop", &a, &a.cert_pem, &["web.shop.svc"], both.clone());
        let db = secret("shop", &a, &a.cert_pem, &["db.shop.svc"], both.clone());
        let r = check_secrets(("shop/web", &web), ("shop/db", &db), None, now()).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.sides[0].server_name.as_deref(), Some("db.shop.svc"));
        assert_eq!(r.sides[0].spiffe_id.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/x"));
        let r = check_secrets(("shop/web", &web), ("shop/db", &db), Some("cache.shop.svc"), now()).unwrap();
        assert!(!r.ok && r.sides[0].problem.as_deref().unwrap().starts_with("name mismatch"), "{r:?}");
        // db signed by B, which web does not trust; db trusts A, so web's client certificate is fine.
        let other = secret("shop", &b, &a.cert_pem, &["db.shop.svc"], both.clone());
        let r = check_secrets(("shop/web", &web), ("shop/db", &other), None, now()).unwrap();
        assert!(r.sides[0].problem.as_deref().unwrap().starts_with("unknown CA"), "{r:?}");
        assert_eq!(r.sides[1].problem, None);
        let server_only = secret("shop", &a, &a.cert_pem, &["web.shop.svc"], vec![Usage::ServerAuth]);
        let r = check_secrets(("shop/web", &server_only), ("shop/db", &db), None, now()).unwrap();
        assert!(r.sides[1].problem.as_deref().unwrap().starts_with("wrong usage"), "{r:?}");
        let r = check_secrets(("shop/web", &web), ("shop/db", &db), None, now() + Duration::from_secs(7200)).unwrap();
        assert!(r.sides.iter().all(|s| s.problem.as_deref().unwrap().starts_with("expired")), "{r:?}");
    }

    #[test]
    fn inspect_decodes_without_key_material() {
        let a = ca("A");
        let s = secret("shop", &a, &a.cert_pem, &["web.shop.svc"], vec![Usage::ServerAuth, Usage::ClientAuth]);
        let r = secret_report(&s, None, now()).unwrap();
        assert!(r.key_matches_leaf);
        assert_eq!(r.issuer_fingerprint.as_deref(), Some(a.facts.fingerprint.as_str()));
        assert_eq!(r.dns_names, ["web.shop.svc"]);
        assert_eq!(r.problem, None);
        let mut text = String::new();
        render_secret(&mut text, &r, now());
        let json = serde_json::to_string(&r).unwrap();
        for shown in [&text, &json] {
            assert!(!shown.contains("PRIVATE KEY") && !shown.contains("BEGIN"), "{shown}");
        }
        assert!(
            text.contains("tls.key matches the leaf") && text.contains("spiffe://cluster.local/ns/shop/sa/x"),
            "{text}"
        );
        // Another key: said, not shown.
        let other = secret("shop", &a, &a.cert_pem, &["web.shop.svc"], vec![Usage::ServerAuth]);
        let mut mixed = s.clone();
        mixed.data.as_mut().unwrap().insert("tls.key".into(), other.data.as_ref().unwrap()["tls.key"].clone());
        assert!(!secret_report(&mixed, None, now()).unwrap().key_matches_leaf);
    }
}
