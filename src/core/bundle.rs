//! Trust bundles, pure: which certificates an authority's workloads trust, in a stable order,
//! and the version that goes with that set. The version is strictly increasing and changes only
//! when the set of members changes.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::pki;
use crate::api::BundleStatus;

/// A trust bundle: member certificates (PEM) in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub version: i64,
    pub pem: String,
    pub sha256: String,
    /// SHA-256 fingerprints of the members, in bundle order.
    pub members: Vec<String>,
}

/// Assembles a bundle: the authority's own CAs first, in the order given (active, incoming,
/// retiring), then extra roots sorted by fingerprint. Duplicates are dropped, and so are extra
/// roots that have expired at `now` (the authority's own CAs are never silently dropped).
pub fn assemble(own: &[String], extra: &[String], now: Timestamp, previous: Option<&BundleStatus>) -> Bundle {
    let mut members: Vec<(String, String)> = vec![];
    let push = |der: Vec<u8>, members: &mut Vec<(String, String)>| {
        let fp = pki::fingerprint(&der);
        if !members.iter().any(|(f, _)| *f == fp) {
            members.push((fp, pki::der_to_pem(&der)));
        }
    };
    for pem in own {
        for der in pki::parse_pem_certs("bundle", pem).unwrap_or_default() {
            push(der, &mut members);
        }
    }
    let mut extras: Vec<Vec<u8>> = extra
        .iter()
        .flat_map(|pem| pki::parse_pem_certs("additional CA", pem).unwrap_or_default())
        .filter(|der| pki::facts_of(der).is_ok_and(|f| f.not_after > now))
        .collect();
    extras.sort_by_key(|der| pki::fingerprint(der));
    for der in extras {
        push(der, &mut members);
    }
    let pem: String = members.iter().map(|(_, p)| p.as_str()).collect();
    let fps: Vec<String> = members.into_iter().map(|(f, _)| f).collect();
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    let version = match previous {
        Some(p) if set(&p.members) == set(&fps) => p.version,
        Some(p) => p.version + 1,
        None => 1,
    };
    Bundle { version, sha256: pki::sha256_hex(pem.as_bytes()), pem, members: fps }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
/// How far a bundle has reached: the target ConfigMaps and identity Secrets holding it, and the
/// writes it took.
pub struct Rollout {
    pub namespaces_total: u32,
    pub namespaces_up_to_date: u32,
    pub secrets_total: u32,
    pub secrets_up_to_date: u32,
    /// Identity Secrets whose leaf was issued by the current signer.
    pub secrets_signed: u32,
    pub writes: u32,
    /// Namespaces where a ConfigMap of that name exists and is not this authority's.
    pub conflicts: Vec<String>,
}

impl Rollout {
    pub fn complete(&self) -> bool {
        self.namespaces_up_to_date == self.namespaces_total && self.secrets_up_to_date == self.secrets_total
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::KeyAlgorithm;

    fn ca(name: &str, now: Timestamp, life: u64) -> String {
        pki::generate_ca(name, &[], KeyAlgorithm::EcdsaP256, now, Duration::from_secs(life)).unwrap().0
    }

    fn status(b: &Bundle) -> BundleStatus {
        BundleStatus { version: b.version, sha256: b.sha256.clone(), members: b.members.clone(), ..Default::default() }
    }

    #[test]
    fn version_bumps_only_when_the_member_set_changes() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (a, b, x) = (ca("A", now, 86400 * 365), ca("B", now, 86400 * 365), ca("X", now, 86400 * 365));
        let v1 = assemble(std::slice::from_ref(&a), &[], now, None);
        assert_eq!(v1.version, 1);
        // Same members (even given twice, or the extra repeating an own CA): same version and bytes.
        let same = assemble(&[a.clone(), a.clone()], std::slice::from_ref(&a), now, Some(&status(&v1)));
        assert_eq!((same.version, &same.sha256), (1, &v1.sha256));
        let v2 = assemble(&[a.clone(), b.clone()], std::slice::from_ref(&x), now, Some(&status(&v1)));
        assert_eq!((v2.version, v2.members.len()), (2, 3));
        // The same set in another order is the same version.
        let reordered = assemble(&[b.clone(), a.clone()], std::slice::from_ref(&x), now, Some(&status(&v2)));
        assert_eq!(reordered.version, 2);
        let v3 = assemble(std::slice::from_ref(&b), &[], now, Some(&status(&v2)));
        assert_eq!(v3.version, 3);
    }

    #[test]
    fn expired_extra_roots_are_dropped_and_extras_are_sorted() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let a = ca("A", now, 86400);
        let old = ca("old", now - Duration::from_secs(86400 * 10), 86400);
        let (x, y) = (ca("X", now, 86400), ca("Y", now, 86400));
        let b1 = assemble(std::slice::from_ref(&a), &[old, y.clone(), x.clone()], now, None);
        assert_eq!(b1.members.len(), 3, "expired extra root dropped");
        let b2 = assemble(std::slice::from_ref(&a), &[x, y], now, None);
        assert_eq!(b1.pem, b2.pem, "stable order whatever the input order");
        assert_eq!(b1.members[0], pki::fingerprint(&pki::parse_pem_certs("a", &a).unwrap()[0]), "own CA first");
    }
}
