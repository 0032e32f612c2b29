//! Who may be issued what, pure. An identity can only ever carry its own namespace's SPIFFE ID,
//! and only DNS/IP SANs its authority's policy allows (DESIGN §5).

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_core::{Selector, SelectorExt};

use crate::api::{MtlsAuthoritySpec, MtlsIdentitySpec};

/// The resolved subject of a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub spiffe_id: String,
    pub service_account: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("namespace {namespace} is not allowed to use authority {authority} (policy.namespaceSelector)")]
    NamespaceNotAllowed { namespace: String, authority: String },
    #[error(
        "DNS name {name:?} is not allowed: identities in namespace {namespace} may claim only <service>, <service>.{namespace}, <service>.{namespace}.svc and <service>.{namespace}.svc.{cluster_domain}, plus the authority's policy.allowedDnsNames"
    )]
    DnsNameNotAllowed { name: String, namespace: String, cluster_domain: String },
    #[error("IP address {ip} is not inside the authority's policy.allowedIpRanges")]
    IpNotAllowed { ip: String },
    #[error("{0:?} is not a valid IP address")]
    BadIp(String),
    #[error("{field} {value:?} is not valid: {expected}")]
    BadName { field: &'static str, value: String, expected: &'static str },
    #[error(
        "invalid label selector in {field}: {detail} (matchExpressions operators are In and NotIn, with values, and Exists and DoesNotExist)"
    )]
    BadSelector { field: &'static str, detail: String },
}

pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// `svc` → `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<clusterDomain>`.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> [String; 4] {
    [
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 label: a Service name.
pub fn is_dns_label(s: &str) -> bool {
    is_label(s, 63)
}

/// A host name a certificate may carry: lower-case RFC 1123 labels of at most 63 characters, at
/// most 253 characters in all, no wildcard, no trailing dot.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Kubernetes object name (RFC 1123 subdomain): a ServiceAccount name. It never contains `/`,
/// so it cannot add segments to a SPIFFE ID path.
pub fn is_object_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_label(l, 253))
}

/// Checks the label selectors of an authority, which the API server cannot fully check.
pub fn check_selectors(authority: &MtlsAuthoritySpec) -> Result<(), PolicyError> {
    let empty = BTreeMap::new();
    selector_matches("policy.namespaceSelector", authority.policy.namespace_selector.as_ref(), &empty)?;
    selector_matches("trustBundle.namespaceSelector", authority.trust_bundle.namespace_selector.as_ref(), &empty)?;
    Ok(())
}

/// Whether `name` is one of the four in-namespace Service forms.
fn is_own_service_name(name: &str, namespace: &str, cluster_domain: &str) -> bool {
    let (svc, rest) = match name.split_once('.') {
        Some((svc, rest)) => (svc, Some(rest)),
        None => (name, None),
    };
    if !is_dns_label(svc) {
        return false;
    }
    match rest {
        None => true,
        Some(rest) => {
            rest == namespace
                || rest == format!("{namespace}.svc")
                || rest == format!("{namespace}.svc.{cluster_domain}")
        }
    }
}

fn allowed_by_pattern(name: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1 && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.')
        }
        None => name == pattern,
    }
}

pub fn selector_matches(
    field: &'static str,
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, PolicyError> {
    match selector {
        None => Ok(true),
        Some(sel) => {
            let s = Selector::try_from(sel.clone())
                .map_err(|e| PolicyError::BadSelector { field, detail: e.to_string() })?;
            Ok(s.matches(labels))
        }
    }
}

/// Resolves and checks the subject of an identity named `name` in `namespace`.
pub fn resolve(
    authority_name: &str,
    authority: &MtlsAuthoritySpec,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    name: &str,
    spec: &MtlsIdentitySpec,
) -> Result<Subject, PolicyError> {
    if !selector_matches("policy.namespaceSelector", authority.policy.namespace_selector.as_ref(), namespace_labels)? {
        return Err(PolicyError::NamespaceNotAllowed { namespace: namespace.into(), authority: authority_name.into() });
    }
    let cd = authority.cluster_domain.as_str();
    let mut dns_names: Vec<String> = vec![];
    let mut push = |n: String| {
        if !dns_names.contains(&n) {
            dns_names.push(n);
        }
    };
    // The API server checks every name below at admission; they are checked again here because
    // nothing else stands between a malformed name and a certificate (an older CRD, a bypass).
    for svc in &spec.service_names {
        if !is_dns_label(svc) {
            return Err(PolicyError::BadName {
                field: "spec.serviceNames",
                value: svc.clone(),
                expected: "a Service of this namespace, one lower-case DNS label such as web",
            });
        }
        for n in service_dns_names(svc, namespace, cd) {
            push(n);
        }
    }
    for n in &spec.dns_names {
        let n = n.to_ascii_lowercase();
        if !is_dns_name(&n) {
            return Err(PolicyError::BadName {
                field: "spec.dnsNames",
                value: n,
                expected: "a DNS name such as api.example.com: labels of at most 63 characters, no wildcards",
            });
        }
        let allowed = is_own_service_name(&n, namespace, cd)
            || authority.policy.allowed_dns_names.iter().any(|p| allowed_by_pattern(&n, p));
        if !allowed {
            return Err(PolicyError::DnsNameNotAllowed {
                name: n,
                namespace: namespace.into(),
                cluster_domain: cd.into(),
            });
        }
        push(n);
    }
    let mut ip_addresses = vec![];
    for raw in &spec.ip_addresses {
        let ip: IpAddr = raw.parse().map_err(|_| PolicyError::BadIp(raw.clone()))?;
        let allowed = authority
            .policy
            .allowed_ip_ranges
            .iter()
            .filter_map(|r| r.parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&ip));
        if !allowed {
            return Err(PolicyError::IpNotAllowed { ip: raw.clone() });
        }
        if !ip_addresses.contains(&ip) {
            ip_addresses.push(ip);
        }
    }
    let sa = spec.service_account_name.clone().unwrap_or_else(|| name.to_string());
    if !is_object_name(&sa) {
        return Err(PolicyError::BadName {
            field: "spec.serviceAccountName",
            value: sa,
            expected: "the name of a ServiceAccount in this namespace, such as web",
        });
    }
    Ok(Subject {
        spiffe_id: spiffe_id(&authority.trust_domain, namespace, &sa),
        service_account: sa,
        dns_names,
        ip_addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> MtlsAuthoritySpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn identity(v: serde_json::Value) -> MtlsIdentitySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expands_service_names_in_own_namespace_only() {
        let s = resolve(
            "default",
            &authority(),
            "shop",
            &BTreeMap::new(),
            "web",
            &identity(serde_json::json!({"serviceNames": ["web"]})),
        )
        .unwrap();
        assert_eq!(s.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(s.dns_names, vec!["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"]);
    }

    #[test]
    fn refuses_other_namespaces_and_external_names() {
        for bad in [
            "web.other",
            "web.other.svc",
            "web.other.svc.cluster.local",
            "example.com",
            "web.shop.svc.evil.com",
            "a.b.shop.svc",
        ] {
            let r = resolve(
                "default",
                &authority(),
                "shop",
                &BTreeMap::new(),
                "web",
                &identity(serde_json::json!({"dnsNames": [bad]})),
            );
            assert!(matches!(r, Err(PolicyError::DnsNameNotAllowed { .. })), "{bad} must be refused, got {r:?}");
        }
        for good in ["web", "web.shop", "api.shop.svc", "api.shop.svc.cluster.local"] {
            resolve(
                "default",
                &authority(),
                "shop",
                &BTreeMap::new(),
                "web",
                &identity(serde_json::json!({"dnsNames": [good]})),
            )
            .unwrap();
        }
    }

    #[test]
    fn spiffe_namespace_is_always_the_identitys_own() {
        let s = resolve(
            "default",
            &authority(),
            "shop",
            &BTreeMap::new(),
            "x",
            &identity(serde_json::json!({"serviceAccountName": "payments"})),
        )
        .unwrap();
        assert_eq!(s.spiffe_id, "spiffe://cluster.local/ns/shop/sa/payments");
    }

    #[test]
    fn policy_patterns_and_ip_ranges() {
        let mut a = authority();
        a.policy.allowed_dns_names = vec!["*.corp.example".into(), "exact.example".into()];
        a.policy.allowed_ip_ranges = vec!["10.1.0.0/16".into()];
        let ok =
            identity(serde_json::json!({"dnsNames": ["a.corp.example", "exact.example"], "ipAddresses": ["10.1.2.3"]}));
        resolve("default", &a, "ns", &BTreeMap::new(), "x", &ok).unwrap();
        for bad in [
            serde_json::json!({"dnsNames": ["corp.example"]}),
            serde_json::json!({"dnsNames": ["xcorp.example"]}),
            serde_json::json!({"dnsNames": ["sub.exact.example"]}),
            serde_json::json!({"ipAddresses": ["10.2.0.1"]}),
        ] {
            assert!(resolve("default", &a, "ns", &BTreeMap::new(), "x", &identity(bad.clone())).is_err(), "{bad}");
        }
        // Default policy: no IP SANs at all.
        assert!(
            resolve(
                "default",
                &authority(),
                "ns",
                &BTreeMap::new(),
                "x",
                &identity(serde_json::json!({"ipAddresses": ["10.1.2.3"]}))
            )
            .is_err()
        );
    }

    #[test]
    fn malformed_names_are_refused_even_past_admission() {
        let mut a = authority();
        a.policy.allowed_dns_names = vec!["*.corp.example".into()];
        let bad = [
            // A wildcard the `*.corp.example` pattern would otherwise match.
            serde_json::json!({"dnsNames": ["*.corp.example"]}),
            serde_json::json!({"dnsNames": [format!("{}.corp.example", "a".repeat(64))]}),
            serde_json::json!({"dnsNames": ["a..corp.example"]}),
            serde_json::json!({"dnsNames": ["api.corp.example."]}),
            serde_json::json!({"dnsNames": [""]}),
            // Another namespace's Service, smuggled in as a service name.
            serde_json::json!({"serviceNames": ["payments.other"]}),
            serde_json::json!({"serviceNames": [""]}),
            // Extra SPIFFE path segments.
            serde_json::json!({"serviceAccountName": "x/ns/kube-system/sa/admin"}),
            serde_json::json!({"serviceAccountName": ""}),
        ];
        for spec in bad {
            let r = resolve("default", &a, "shop", &BTreeMap::new(), "web", &identity(spec.clone()));
            assert!(matches!(r, Err(PolicyError::BadName { .. })), "{spec} must be refused, got {r:?}");
        }
        let ok = identity(serde_json::json!({"dnsNames": ["api.corp.example"], "serviceAccountName": "a.b"}));
        resolve("default", &a, "shop", &BTreeMap::new(), "web", &ok).unwrap();
    }

    #[test]
    fn bad_selectors_are_reported() {
        let mut a = authority();
        check_selectors(&a).unwrap();
        a.trust_bundle.namespace_selector = Some(
            serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "k", "operator": "Bogus"}]}))
                .unwrap(),
        );
        let e = check_selectors(&a).unwrap_err();
        assert!(e.to_string().contains("trustBundle.namespaceSelector"), "{e}");
        assert!(e.to_string().contains("Exists"), "says which operators exist: {e}");
    }

    #[test]
    fn namespace_selector_is_enforced() {
        let mut a = authority();
        a.policy.namespace_selector = Some(LabelSelector {
            match_labels: Some([("mtls".to_string(), "on".to_string())].into()),
            ..Default::default()
        });
        let spec = identity(serde_json::json!({}));
        assert!(matches!(
            resolve("default", &a, "ns", &BTreeMap::new(), "x", &spec),
            Err(PolicyError::NamespaceNotAllowed { .. })
        ));
        let labels = [("mtls".to_string(), "on".to_string())].into();
        resolve("default", &a, "ns", &labels, "x", &spec).unwrap();
    }
}
