//! Fuzzing entry points for the code that reads untrusted input: Go durations, identity policy,
//! and PEM certificates, keys and supplied CAs. Each target takes raw bytes, must not panic on
//! any input, and asserts the invariants the rest of the operator relies on: a broken invariant
//! panics, which is what a fuzzer reports.
//!
//! The same targets are driven three ways: by the cargo-fuzz crate in `fuzz/` (nightly,
//! coverage-guided), by the proptest properties below, and by replaying every file of the
//! checked-in corpus `fuzz/corpus/<target>/` on every `cargo test`.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use jiff::Timestamp;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::{
    api::{KeyAlgorithm, MtlsAuthoritySpec, MtlsIdentitySpec, Usage},
    core::{duration, pki, policy},
};

/// A fuzz target: raw input in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name: the name is its corpus directory and its cargo-fuzz target.
pub const TARGETS: [(&str, Target); 4] = [("duration", duration), ("policy", policy), ("pem", pem), ("ca", ca)];

/// The instant certificates are judged at, fixed so that a corpus entry means the same forever.
pub fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("a valid timestamp")
}

/// Separates the parts of a `pem` or `ca` input (tls.crt, tls.key, ca.crt).
pub const PART_SEPARATOR: &str = "\n%%\n";

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

const GO_MAX_NANOS: u128 = i64::MAX as u128;

/// What admission makes of `s`: None when the CRD pattern `^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
/// refuses it; otherwise the exact value in nanoseconds (fractions truncated, as Go does; None
/// inside when it overflows) and the number of components.
fn admitted_duration(s: &str) -> Option<(Option<u128>, u32)> {
    let b = s.as_bytes();
    let (mut i, mut total, mut parts) = (0, Some(0u128), 0);
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = &s[start..i];
        if int.is_empty() {
            return None;
        }
        let mut frac = "";
        if i < b.len() && b[i] == b'.' {
            let f = i + 1;
            i = f;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = &s[f..i];
            if frac.is_empty() {
                return None;
            }
        }
        let (unit, len): (u128, usize) = match (b.get(i), b.get(i + 1)) {
            (Some(b'n'), Some(b's')) => (1, 2),
            (Some(b'u'), Some(b's')) => (1_000, 2),
            (Some(b'm'), Some(b's')) => (1_000_000, 2),
            (Some(b's'), _) => (1_000_000_000, 1),
            (Some(b'm'), _) => (60_000_000_000, 1),
            (Some(b'h'), _) => (3_600_000_000_000, 1),
            _ => return None,
        };
        i += len;
        parts += 1;
        // 24 fraction digits keep the product inside u128 and lose far less than a nanosecond.
        let frac = &frac[..frac.len().min(24)];
        let f: u128 = if frac.is_empty() { 0 } else { frac.parse().expect("digits") };
        let frac_value = f * unit / 10u128.pow(frac.len() as u32);
        total = total
            .zip(int.parse::<u128>().ok())
            .and_then(|(t, n)| n.checked_mul(unit)?.checked_add(frac_value)?.checked_add(t));
    }
    Some((total, parts))
}

/// `duration::parse`: never panics; a value it accepts is positive and fits Go's int64 of
/// nanoseconds; it agrees with admission on every string the CRD pattern admits; `format` prints
/// something it reads back.
pub fn duration(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let parsed = duration::parse(s);
    match &parsed {
        Ok(d) => {
            assert!(!d.is_zero(), "{s:?} parsed as zero");
            assert!(d.as_nanos() <= GO_MAX_NANOS, "{s:?} parsed beyond Go's range");
            if d.as_secs() > 0 {
                let printed = duration::format(*d);
                assert_eq!(duration::parse(&printed), Ok(Duration::from_secs(d.as_secs())), "{s:?} -> {printed:?}");
            }
        }
        Err(e) => {
            // At most 64 characters of input, each escaped to at most 10 (`\u{10ffff}`).
            let msg = e.to_string();
            assert!(msg.chars().count() <= 64 * 10 + 200, "the error quotes at most 64 characters of input: {msg}");
        }
    }
    if let Some((value, parts)) = admitted_duration(s) {
        // Fraction truncation may differ by a nanosecond per component from Go's own arithmetic.
        let slack = u128::from(parts);
        match value {
            Some(v) if v > slack && v.saturating_add(slack) <= GO_MAX_NANOS => {
                let d = parsed.unwrap_or_else(|e| panic!("{s:?} passes admission but the operator refuses it: {e}"));
                assert!(d.as_nanos().abs_diff(v) <= slack, "{s:?}: operator {}ns, admission {v}ns", d.as_nanos());
            }
            Some(0) => assert!(parsed.is_err(), "{s:?} is zero, admission refuses it"),
            None => assert!(parsed.is_err(), "{s:?} overflows, admission refuses it"),
            Some(v) if v > GO_MAX_NANOS + slack => assert!(parsed.is_err(), "{s:?} overflows Go's range"),
            Some(_) => {} // within a nanosecond or two of a bound
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// A policy input as text, one item a line: the identity's namespace, then its name, then any of
/// `sa:`, `svc:`, `dns:`, `ip:` (the identity's spec), `allow:`, `range:`, `td:`, `cd:`,
/// `sel:key=value`, `expr:key|Operator|v1,v2` (the authority's policy) and `label:key=value`
/// (the namespace's labels).
#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub authority: MtlsAuthoritySpec,
    pub spec: MtlsIdentitySpec,
}

impl PolicyInput {
    pub fn parse(text: &str) -> PolicyInput {
        let mut authority: MtlsAuthoritySpec = serde_json::from_str("{}").expect("defaults");
        let mut spec: MtlsIdentitySpec = serde_json::from_str("{}").expect("defaults");
        let mut lines = text.lines();
        let namespace = lines.next().unwrap_or_default().to_string();
        let name = lines.next().unwrap_or_default().to_string();
        let mut labels = BTreeMap::new();
        let mut selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default();
        let pair = |v: &str| {
            let (k, v) = v.split_once('=').unwrap_or((v, ""));
            (k.to_string(), v.to_string())
        };
        for line in lines {
            let Some((key, v)) = line.split_once(':') else { continue };
            match key {
                "sa" => spec.service_account_name = Some(v.into()),
                "svc" => spec.service_names.push(v.into()),
                "dns" => spec.dns_names.push(v.into()),
                "ip" => spec.ip_addresses.push(v.into()),
                "allow" => authority.policy.allowed_dns_names.push(v.into()),
                "range" => authority.policy.allowed_ip_ranges.push(v.into()),
                "td" => authority.trust_domain = v.into(),
                "cd" => authority.cluster_domain = v.into(),
                "label" => {
                    let (k, v) = pair(v);
                    labels.insert(k, v);
                }
                "sel" => {
                    let (k, v) = pair(v);
                    selector.match_labels.get_or_insert_default().insert(k, v);
                }
                "expr" => {
                    let mut f = v.splitn(3, '|');
                    let (k, op, vals) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next());
                    selector.match_expressions.get_or_insert_default().push(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                            key: k.into(),
                            operator: op.into(),
                            values: vals.map(|v| v.split(',').map(str::to_string).collect()),
                        },
                    );
                }
                _ => {}
            }
        }
        if selector != Default::default() {
            authority.policy.namespace_selector = Some(selector);
        }
        PolicyInput { namespace, name, labels, authority, spec }
    }
}

fn label_ok(l: &str, max: usize) -> bool {
    (1..=max).contains(&l.len())
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn host_ok(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| label_ok(l, 63))
}

/// Whether the policy lets `name` be claimed, decided from the contract (DESIGN §5) rather than
/// from the code under test.
fn claimable(name: &str, ns: &str, cd: &str, allowed: &[String]) -> bool {
    let first = name.split('.').next().unwrap_or_default();
    let own =
        [first.to_string(), format!("{first}.{ns}"), format!("{first}.{ns}.svc"), format!("{first}.{ns}.svc.{cd}")];
    (label_ok(first, 63) && own.iter().any(|o| o == name))
        || allowed.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => name.strip_suffix(suffix).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => p == name,
        })
}

/// `policy::resolve`: never panics, and whatever it resolves carries only the identity's own
/// namespace's SPIFFE ID and only names and addresses the policy allows.
pub fn policy(data: &[u8]) {
    check_policy(&PolicyInput::parse(&String::from_utf8_lossy(data)));
}

pub fn check_policy(input: &PolicyInput) {
    let PolicyInput { namespace: ns, name, labels, authority, spec } = input;
    let result = policy::resolve("fuzz", authority, ns, labels, name, spec);
    let Ok(subject) = result else { return };
    // What the API server guarantees before the operator sees anything: a DNS-label namespace,
    // and DNS-name trust and cluster domains (CRD patterns). Beyond that, only "no panic".
    let (td, cd) = (&authority.trust_domain, &authority.cluster_domain);
    if !(label_ok(ns, 63) && host_ok(td) && host_ok(cd)) {
        return;
    }
    let sa = spec.service_account_name.clone().unwrap_or_else(|| name.clone());
    assert_eq!(subject.service_account, sa);
    assert!(!sa.is_empty() && !sa.contains('/') && !sa.contains('#') && !sa.contains('?'), "SPIFFE path from {sa:?}");
    assert_eq!(subject.spiffe_id, format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
    let rest = subject.spiffe_id.strip_prefix(&format!("spiffe://{td}/")).expect("own trust domain");
    let segments: Vec<&str> = rest.split('/').collect();
    assert_eq!(segments, ["ns", ns.as_str(), "sa", sa.as_str()], "exactly the identity's own namespace");
    let mut seen = std::collections::BTreeSet::new();
    for n in &subject.dns_names {
        assert!(seen.insert(n), "{n:?} twice");
        assert!(host_ok(n), "{n:?} is not a valid DNS name");
        assert!(!n.contains('*'), "wildcard {n:?}");
        assert!(claimable(n, ns, cd, &authority.policy.allowed_dns_names), "{n:?} is not {ns}'s to claim");
        let asked = spec.service_names.iter().any(|s| policy::service_dns_names(s, ns, cd).contains(n))
            || spec.dns_names.iter().any(|d| d.to_ascii_lowercase() == *n);
        assert!(asked, "{n:?} was never asked for");
    }
    for s in &spec.service_names {
        for form in policy::service_dns_names(s, ns, cd) {
            assert!(subject.dns_names.contains(&form), "{form:?} missing");
        }
    }
    let ranges: Vec<ipnet::IpNet> = authority.policy.allowed_ip_ranges.iter().filter_map(|r| r.parse().ok()).collect();
    for ip in &subject.ip_addresses {
        assert!(ranges.iter().any(|r| r.contains(ip)), "{ip} is outside every allowed range");
        assert!(spec.ip_addresses.iter().any(|a| a.parse::<IpAddr>().ok() == Some(*ip)), "{ip} was never asked for");
    }
    if let Some(sel) = &authority.policy.namespace_selector {
        for (k, v) in sel.match_labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "namespace {ns} lacks {k}={v} and still passed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PEM, leaves and supplied CAs
// ---------------------------------------------------------------------------------------------

fn parts(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data).split(PART_SEPARATOR).map(str::to_string).collect()
}

/// `parse_pem_certs` and `inspect_leaf`: never panic; what they accept parses and re-encodes to
/// the same DER.
pub fn pem(data: &[u8]) {
    let p = parts(data);
    let (crt, key) = (p[0].as_str(), p.get(1).map_or("", String::as_str));
    let certs = pki::parse_pem_certs("tls.crt", crt);
    if let Ok(ders) = &certs {
        assert!(!ders.is_empty());
        for der in ders {
            pki::facts_of(der).expect("an accepted certificate has facts");
            assert_eq!(pki::parse_pem_certs("again", &pki::der_to_pem(der)).as_deref(), Ok(&[der.clone()][..]));
        }
    }
    if let Ok(leaf) = pki::inspect_leaf(crt, key) {
        let ders = certs.expect("inspect_leaf accepted what parse_pem_certs refuses");
        assert_eq!(leaf.chain_der, ders[1..]);
        assert_eq!(leaf.facts, pki::facts_of(&ders[0]).unwrap());
        assert_eq!(leaf.facts.fingerprint, pki::fingerprint(&ders[0]));
    }
}

/// `load_ca`: never panics; errors carry no key material; a CA it accepts is unexpired at `now`,
/// really is a CA, and can sign a leaf that verifies against it and never outlives it.
pub fn ca(data: &[u8]) {
    let p = parts(data);
    let (crt, key, root) = (p[0].as_str(), p.get(1).map_or("", String::as_str), p.get(2).map(String::as_str));
    let now = now();
    let ca = match pki::load_ca(crt, key, root, now) {
        Ok(ca) => ca,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("PRIVATE KEY") && !msg.contains("-----"), "error quotes the input: {msg}");
            return;
        }
    };
    assert!(ca.facts.not_after > now && ca.facts.not_before <= now + pki::CLOCK_SKEW_ALLOWANCE);
    assert!(!ca.roots_pem.is_empty());
    assert!(!format!("{ca:?}").contains("PRIVATE"));
    let (_, cert) = X509Certificate::from_der(ca.der()).expect("the signing certificate parses");
    assert!(cert.is_ca());
    let req = pki::LeafRequest {
        common_name: "fuzz.ns".into(),
        spiffe_id: "spiffe://cluster.local/ns/ns/sa/fuzz".into(),
        dns_names: vec!["fuzz".into(), "fuzz.ns.svc".into()],
        ip_addresses: vec![],
        usages: vec![Usage::ServerAuth, Usage::ClientAuth],
        algorithm: KeyAlgorithm::EcdsaP256,
        not_before: now - pki::CLOCK_SKEW_ALLOWANCE,
        not_after: now + Duration::from_secs(3600),
    };
    let leaf = ca.issue(&req).unwrap_or_else(|e| panic!("a vetted CA cannot sign: {e}"));
    let facts = pki::inspect_leaf(&leaf.cert_chain_pem, leaf.key.expose()).expect("the issued leaf reads back");
    assert!(facts.key_matches && facts.signed_by(&ca));
    assert!(facts.facts.not_after <= ca.facts.not_after, "the leaf outlives its CA");
    assert_eq!(facts.uris, [req.spiffe_id]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn corpus_dir(target: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
    }

    /// Every input of the checked-in corpus, replayed through its target.
    #[test]
    fn corpus_replays_cleanly() {
        for (target, run) in TARGETS {
            let dir = corpus_dir(target);
            let entries: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(entries.len() >= 5, "{} holds only {} inputs", dir.display(), entries.len());
            for path in entries {
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    panic!("corpus input {} breaks target {target}", path.display());
                }
            }
        }
    }

    // ---- durations ----

    fn duration_like() -> impl Strategy<Value = String> {
        let component = ("[0-9]{0,20}", prop::option::of("\\.[0-9]{0,25}"), "(ns|us|µs|ms|s|m|h|d|x|)")
            .prop_map(|(n, f, u)| format!("{n}{}{u}", f.unwrap_or_default()));
        prop_oneof![
            prop::collection::vec(component, 1..4).prop_map(|v| v.concat()),
            "[-+]?[0-9]{1,3}(h|m|s)",
            "\\PC{0,30}",
        ]
    }

    proptest! {
        #[test]
        fn durations_agree_with_admission_and_never_panic(s in duration_like()) {
            duration(s.as_bytes());
        }

        /// Whole units that just fit in 128 bits of nanoseconds, tipped over by a fraction.
        #[test]
        fn durations_near_the_u128_limit(unit in prop::sample::select(vec![("ns", 1u128), ("us", 1_000), ("ms", 1_000_000),
            ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)]), frac in "[0-9]{1,20}") {
            duration(format!("{}.{frac}{}", u128::MAX / unit.1, unit.0).as_bytes());
        }

        #[test]
        fn durations_near_the_go_limit(h in 2_562_040u64..2_562_060, m in 0u64..60, extra in "[0-9]{0,3}(ns|us|ms|s)?") {
            duration(format!("{h}h{m}m{extra}").as_bytes());
        }
    }

    // ---- policy ----

    /// Labels an attacker would try: the identity's namespace, another one, `svc`, the cluster
    /// domain's parts, wildcards, upper case, empty, over-long, and the allowed domain.
    fn hostile_label() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("shop".to_string()),
            Just("victim".to_string()),
            Just("svc".to_string()),
            Just("cluster".to_string()),
            Just("local".to_string()),
            Just("corp".to_string()),
            Just("example".to_string()),
            Just("*".to_string()),
            Just("".to_string()),
            Just("WEB".to_string()),
            Just("-a".to_string()),
            Just("a".repeat(64)),
            "[a-z0-9-]{1,8}",
            "\\PC{1,4}",
        ]
    }

    fn hostile_name() -> impl Strategy<Value = String> {
        prop::collection::vec(hostile_label(), 1..6).prop_map(|l| l.join("."))
    }

    fn policy_text() -> impl Strategy<Value = String> {
        let item = prop_oneof![
            hostile_label().prop_map(|v| format!("svc:{v}")),
            hostile_name().prop_map(|v| format!("dns:{v}")),
            hostile_name().prop_map(|v| format!("sa:{v}")),
            prop_oneof![Just("10.1.2.3"), Just("10.2.0.1"), Just("::1"), Just("fd00::7"), Just("x")]
                .prop_map(|v| format!("ip:{v}")),
            prop_oneof![Just("*.corp.example"), Just("exact.example"), Just("*"), Just("*."), Just("*.shop.svc")]
                .prop_map(|v| format!("allow:{v}")),
            prop_oneof![Just("10.1.0.0/16"), Just("::/0"), Just("bogus"), Just("10.1.2.3/33")]
                .prop_map(|v| format!("range:{v}")),
            prop_oneof![Just("sel:mtls=on"), Just("label:mtls=on"), Just("expr:team|Bogus|a"), Just("expr:t|In|")]
                .prop_map(str::to_string),
            prop_oneof![Just("cd:cluster.local"), Just("cd:corp.example"), Just("td:example.org")]
                .prop_map(str::to_string),
        ];
        let ns = prop_oneof![Just("shop".to_string()), Just("victim".to_string()), "[a-z]{1,6}"];
        (ns, "[a-z][a-z0-9.-]{0,10}", prop::collection::vec(item, 0..8))
            .prop_map(|(ns, name, items)| format!("{ns}\n{name}\n{}", items.join("\n")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn resolved_subjects_stay_inside_policy(text in policy_text()) {
            policy(text.as_bytes());
        }

        #[test]
        fn policy_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
            policy(text.as_bytes());
        }
    }

    // ---- PEM and CAs ----

    /// A valid CA (crt, key) at [`now`], from the corpus, so that a failing mutation found
    /// here reproduces from `proptest-regressions/`.
    fn valid_ca() -> (String, String) {
        let text = std::fs::read_to_string(corpus_dir("ca").join("openssl-p256-ca")).unwrap();
        let mut parts = text.split(PART_SEPARATOR);
        (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
    }

    fn join(parts: &[&str]) -> Vec<u8> {
        parts.join(PART_SEPARATOR).into_bytes()
    }

    /// Edits of a byte string: flip, delete, insert, truncate.
    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Delete(usize),
        Insert(usize, u8),
        Truncate(usize),
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
                any::<usize>().prop_map(Edit::Delete),
                (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Insert(i, x)),
                any::<usize>().prop_map(Edit::Truncate),
            ],
            1..4,
        )
    }

    fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            if b.is_empty() {
                break;
            }
            let at = |i: usize| i % b.len();
            match *e {
                Edit::Flip(i, x) => {
                    let i = at(i);
                    b[i] ^= x;
                }
                Edit::Delete(i) => {
                    let i = at(i);
                    b.remove(i);
                }
                Edit::Insert(i, x) => {
                    let i = at(i);
                    b.insert(i, x);
                }
                Edit::Truncate(i) => {
                    let i = at(i);
                    b.truncate(i);
                }
            }
        }
        b
    }

    proptest! {
        #[test]
        fn pem_and_ca_never_panic_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
            pem(&data);
            ca(&data);
        }

        /// Mutations of the PEM text (framing, base64, separators).
        #[test]
        fn mutated_pem_text(edits in edits(), key_edits in prop::collection::vec(any::<bool>(), 1)) {
            let (crt, key) = valid_ca();
            let crt = apply(crt.into_bytes(), &edits);
            let key = if key_edits[0] { apply(key.into_bytes(), &edits) } else { key.into_bytes() };
            let data = [crt, PART_SEPARATOR.as_bytes().to_vec(), key].concat();
            pem(&data);
            ca(&data);
        }

        /// Mutations of the DER inside well-formed PEM: what x509 parsing and CA vetting see.
        #[test]
        fn mutated_der(edits in edits()) {
            let (crt, key) = valid_ca();
            let der = pki::parse_pem_certs("t", &crt).unwrap().remove(0);
            let crt = pki::der_to_pem(&apply(der, &edits));
            pem(&join(&[&crt, &key]));
            ca(&join(&[&crt, &key]));
        }

        /// Blocks shuffled, repeated or swapped between tls.crt, tls.key and ca.crt.
        #[test]
        fn shuffled_blocks(picks in prop::collection::vec((0usize..3, 0usize..3), 1..5)) {
            let (crt, key) = valid_ca();
            let blocks = [crt.as_str(), key.as_str(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"];
            let mut parts = [String::new(), String::new(), String::new()];
            for (part, block) in picks {
                parts[part].push_str(blocks[block]);
            }
            let data = join(&[&parts[0], &parts[1], &parts[2]]);
            pem(&data);
            ca(&data);
        }
    }

    #[test]
    fn the_valid_ca_passes_every_target() {
        let (crt, key) = valid_ca();
        pem(&join(&[&crt, &key]));
        ca(&join(&[&crt, &key]));
        assert!(pki::load_ca(&crt, &key, None, now()).is_ok());
    }
}
