//! Bad input end to end: a table of malformed and hostile objects. Each one is either refused at
//! admission with a message that says what to fix, or is accepted and ends in `Ready=False` with
//! a precise reason, exactly one Warning Event, and stays there (no flapping, no retry storm).
//! A valid identity created after the whole table is still issued promptly.

use std::{path::Path, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{core::v1::Secret, events::v1::Event},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    fixtures::{TestAuthority, get_secret, openssl, wait_authority_ready},
    harness::{self, OPERATOR_NAMESPACE, TestNamespace},
};

/// The data of a Secret: key, value.
type SecretData = Vec<(&'static str, String)>;

/// What a case creates.
enum Object {
    /// An `MtlsIdentity` in the test namespace; `authorityRef` defaults to the table's authority.
    Identity(Value),
    /// An `MtlsAuthority` with this spec.
    Authority(Value),
    /// An `MtlsAuthority` whose `spec.ca.secretRef` names a Secret in the operator's namespace
    /// holding this data; `None`: the Secret does not exist.
    SuppliedCa(Option<SecretData>),
}

/// What must become of it.
enum Expect {
    /// Refused by the API server; the message contains this (the part that says what to fix).
    Refused(&'static str),
    /// Accepted, then `Ready=False` with this reason and a message containing the string.
    NotReady(&'static str, String),
}

struct Case {
    name: &'static str,
    object: Object,
    expect: Expect,
}

fn refused(name: &'static str, object: Object, says: &'static str) -> Case {
    Case { name, object, expect: Expect::Refused(says) }
}

fn not_ready(name: &'static str, object: Object, reason: &'static str, says: impl Into<String>) -> Case {
    Case { name, object, expect: Expect::NotReady(reason, says.into()) }
}

fn id(spec: Value) -> Object {
    Object::Identity(spec)
}

fn api(client: &Client, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("mtls.io", "v1alpha1", kind), plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Creates an object the way `kubectl apply --server-side` does (strict field validation, so an
/// unknown field is an error rather than silently dropped). Returns the refusal message, if any.
async fn apply(api: &Api<DynamicObject>, kind: &str, name: &str, spec: &Value) -> Result<DynamicObject, String> {
    let obj = json!({"apiVersion": "mtls.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec});
    let pp = PatchParams::apply("mtls-e2e-bad-input").validation_strict();
    match api.patch(name, &pp, &Patch::Apply(&obj)).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(ae)) => {
            // 422 Invalid; an unknown field under server-side apply comes back as a 500 "failed to
            // create typed patch object" (as kubectl shows it), still a refusal naming the field.
            let typed_patch = ae.code == 500 && ae.message.contains("failed to create typed patch object");
            assert!(matches!(ae.code, 400 | 422) || typed_patch, "{kind} {name}: expected a refusal, got {ae:?}");
            Err(ae.message)
        }
        Err(e) => panic!("{kind} {name}: unexpected error {e}"),
    }
}

fn ready_condition(o: &DynamicObject) -> Option<(String, String, String, String)> {
    let c = o.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message"), s("lastTransitionTime")))
}

/// Warning Events about the object with this uid: (reason, how many times it was reported).
async fn warnings(client: &Client, ns: &str, uid: &str) -> Vec<(String, i32)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
        .collect()
}

/// Supplied CAs that must be refused: (case name, the reason the authority reports, a part of the
/// message, the Secret's data). Made by OpenSSL, so the operator's own certificate code does not
/// judge its own output, except where OpenSSL 3.0 cannot (a validity period in the past or the
/// future).
fn unusable_cas(d: &Path) -> Vec<(&'static str, &'static str, &'static str, SecretData)> {
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let gen_ca = |name: &str, algo: &[&str], extra: &[&str]| {
        let (k, c) = (p(&format!("{name}.key")), p(&format!("{name}.crt")));
        let subject = extra.iter().find_map(|a| a.strip_prefix("subject=")).unwrap_or("/CN=test");
        let extra: Vec<&str> = extra.iter().copied().filter(|a| !a.starts_with("subject=")).collect();
        let mut args = vec!["req", "-x509", "-nodes", "-keyout", &k, "-out", &c, "-subj", subject, "-days", "10"];
        args.extend_from_slice(algo);
        args.extend_from_slice(&extra);
        let (ok, out) = openssl(&args);
        assert!(ok, "{out}");
        (std::fs::read_to_string(&c).unwrap(), std::fs::read_to_string(&k).unwrap())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let (good, good_key) = gen_ca("good", &ec, &[]);
    let (other, other_key) = gen_ca("other", &ec, &[]);
    let (leaf, leaf_key) = gen_ca("leaf", &ec, &["-addext", "basicConstraints=critical,CA:FALSE"]);
    let (weak, weak_key) = gen_ca("weak", &["-newkey", "rsa:1024"], &[]);
    let (nosign, nosign_key) = gen_ca("nosign", &ec, &["-addext", "keyUsage=critical,digitalSignature"]);
    // An Active Directory style name: the leaves' issuer name would lose one DC and not chain.
    let (dc, dc_key) = gen_ca("dc", &ec, &["subject=/DC=example/DC=com/CN=Issuing CA"]);
    let (multi, multi_key) = gen_ca("multi", &ec, &["subject=/O=Acme/CN=Issuing CA+OU=Ops", "-multivalue-rdn"]);
    let own = |at: &str| {
        let (c, k) = mtls_operator::core::pki::generate_ca(
            "dated",
            &[],
            mtls_operator::api::KeyAlgorithm::EcdsaP256,
            at.parse().unwrap(),
            Duration::from_secs(86400),
        )
        .unwrap();
        (c, k.expose().to_string())
    };
    let (expired, expired_key) = own("2020-01-01T00:00:00Z");
    let (future, future_key) = own("2100-01-01T00:00:00Z");
    let pair = |crt: &str, key: &str| vec![("tls.crt", crt.to_string()), ("tls.key", key.to_string())];
    vec![
        ("ca-not-a-ca", "CaNotACa", "not a CA", pair(&leaf, &leaf_key)),
        ("ca-key-mismatch", "CaKeyMismatch", "does not match", pair(&good, &other_key)),
        ("ca-expired", "CaExpired", "expired at", pair(&expired, &expired_key)),
        ("ca-not-yet-valid", "CaNotYetValid", "not valid before", pair(&future, &future_key)),
        ("ca-rsa-1024", "CaWeakKey", "RSA-1024", pair(&weak, &weak_key)),
        ("ca-cannot-sign", "CaCannotSign", "keyCertSign", pair(&nosign, &nosign_key)),
        ("ca-truncated-pem", "CaInvalidPem", "tls.crt", pair(&good[..good.len() / 2], &good_key)),
        ("ca-garbage", "CaInvalidPem", "tls.crt", pair("not a certificate", &good_key)),
        ("ca-key-in-tls-crt", "CaInvalidPem", "no certificate", pair(&good_key, &good_key)),
        ("ca-key-garbage", "CaInvalidKey", "private key", pair(&good, "garbage")),
        ("ca-key-truncated", "CaInvalidKey", "private key", pair(&good, &good_key[..good_key.len() / 2])),
        ("ca-key-missing", "CaInvalidKey", "private key", vec![("tls.crt", good.clone())]),
        ("ca-broken-chain", "CaBrokenChain", "not signed by the next", pair(&format!("{good}{other}"), &good_key)),
        ("ca-repeated-dc", "CaUnsupportedSubject", "DC=example", pair(&dc, &dc_key)),
        ("ca-multi-valued-rdn", "CaUnsupportedSubject", "cannot be copied exactly", pair(&multi, &multi_key)),
    ]
}

#[tokio::test]
async fn bad_input_is_refused_or_reported_and_never_stalls_issuance() {
    harness::operator().await;
    let client = harness::client().await;
    let run = format!("bi-{:06x}", harness::rand_u32() & 0xffffff);
    // The authority every identity case uses: a policy that allows something beyond the default,
    // so that the cases can probe its edges, and a 48h maximum.
    let auth = TestAuthority::create(
        &client,
        "bad-input",
        json!({"policy": {"allowedDnsNames": ["*.corp.example"], "allowedIpRanges": ["10.1.0.0/16"]},
               "leaf": {"maxDuration": "48h"}}),
    )
    .await;
    let closed = TestAuthority::create(
        &client,
        "bad-input-closed",
        json!({"policy": {"namespaceSelector": {"matchLabels": {"mtls-e2e/never": "true"}}}}),
    )
    .await;
    wait_authority_ready(&client, &auth.name).await;
    wait_authority_ready(&client, &closed.name).await;
    let ns = TestNamespace::new(&client, "bad-input").await;
    let victim = TestNamespace::new(&client, "victim").await;
    let (n, v) = (ns.name.as_str(), victim.name.as_str());
    // A Secret someone else owns, which an identity then names as its secretName.
    let foreign = Api::<Secret>::namespaced(client.clone(), n)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "taken"}, "stringData": {"password": "hunter2"}}))
                .unwrap(),
        )
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let many = |k: usize, f: &dyn Fn(usize) -> String| (0..k).map(f).collect::<Vec<_>>();
    let long_label = "a".repeat(64);
    let long_name = format!("{}.corp.example", vec!["b".repeat(60); 4].join("."));
    let not_ready_authority = format!("{run}-ca-secret-missing");

    let mut cases = vec![
        // ---- DNS names: malformed (admission) ----
        refused("dns-wildcard", id(json!({"dnsNames": ["*.corp.example"]})), "must not contain wildcards"),
        refused("dns-inner-wildcard", id(json!({"dnsNames": ["a.*.corp.example"]})), "must not contain wildcards"),
        refused("dns-upper-case", id(json!({"dnsNames": ["API.corp.example"]})), "lower-case DNS names"),
        refused("dns-underscore", id(json!({"dnsNames": ["a_b.corp.example"]})), "lower-case DNS names"),
        refused("dns-empty", id(json!({"dnsNames": [""]})), "at least 1 chars long"),
        refused("dns-empty-label", id(json!({"dnsNames": ["a..corp.example"]})), "lower-case DNS names"),
        refused("dns-trailing-dot", id(json!({"dnsNames": ["api.corp.example."]})), "lower-case DNS names"),
        refused(
            "dns-label-too-long",
            id(json!({"dnsNames": [format!("{long_label}.corp.example")]})),
            "at most 63 characters",
        ),
        refused("dns-name-too-long", id(json!({"dnsNames": [long_name]})), "may not be more than 253"),
        refused(
            "dns-too-many",
            id(json!({"dnsNames": many(65, &|i| format!("h{i}.corp.example"))})),
            "must have at most 64 items",
        ),
        // ---- DNS names: well-formed but not this namespace's to claim (run time) ----
        not_ready(
            "dns-other-namespace",
            id(json!({"dnsNames": [format!("payments.{v}")]})),
            "PolicyViolation",
            format!("payments.{v}"),
        ),
        not_ready(
            "dns-other-namespace-svc",
            id(json!({"dnsNames": [format!("payments.{v}.svc")]})),
            "PolicyViolation",
            format!("payments.{v}.svc"),
        ),
        not_ready(
            "dns-other-namespace-fqdn",
            id(json!({"dnsNames": [format!("payments.{v}.svc.cluster.local")]})),
            "PolicyViolation",
            format!("payments.{v}.svc.cluster.local"),
        ),
        not_ready(
            "dns-kubernetes-api",
            id(json!({"dnsNames": ["kubernetes.default.svc"]})),
            "PolicyViolation",
            "kubernetes.default.svc",
        ),
        not_ready(
            "dns-own-service-foreign-domain",
            id(json!({"dnsNames": [format!("web.{n}.svc.evil.example")]})),
            "PolicyViolation",
            "evil.example",
        ),
        not_ready(
            "dns-nested-service",
            id(json!({"dnsNames": [format!("a.web.{n}.svc")]})),
            "PolicyViolation",
            format!("a.web.{n}.svc"),
        ),
        not_ready("dns-external", id(json!({"dnsNames": ["example.com"]})), "PolicyViolation", "allowedDnsNames"),
        not_ready("dns-pattern-apex", id(json!({"dnsNames": ["corp.example"]})), "PolicyViolation", "corp.example"),
        not_ready("dns-ip-literal", id(json!({"dnsNames": ["10.1.2.3"]})), "PolicyViolation", "10.1.2.3"),
        // ---- Service names: only this namespace's Services, as one label ----
        refused(
            "service-other-namespace",
            id(json!({"serviceNames": [format!("payments.{v}")]})),
            "create the MtlsIdentity in that namespace",
        ),
        refused("service-fqdn", id(json!({"serviceNames": ["payments.svc.cluster.local"]})), "one DNS label"),
        refused("service-too-long", id(json!({"serviceNames": [long_label]})), "may not be more than 63"),
        refused(
            "service-too-many",
            id(json!({"serviceNames": many(33, &|i| format!("s{i}"))})),
            "must have at most 32 items",
        ),
        // ---- IP addresses ----
        refused("ip-not-an-ip", id(json!({"ipAddresses": ["not-an-ip"]})), "ipAddresses must be"),
        refused("ip-octet-overflow", id(json!({"ipAddresses": ["10.1.2.300"]})), "ipAddresses must be"),
        refused("ip-cidr", id(json!({"ipAddresses": ["10.1.0.0/16"]})), "not ranges"),
        refused("ip-zone", id(json!({"ipAddresses": ["fe80::1%eth0"]})), "ipAddresses must be"),
        refused(
            "ip-too-many",
            id(json!({"ipAddresses": many(17, &|i| format!("10.1.0.{i}"))})),
            "must have at most 16 items",
        ),
        not_ready("ip-outside-policy", id(json!({"ipAddresses": ["10.2.0.1"]})), "PolicyViolation", "10.2.0.1"),
        not_ready("ip-v6-outside-policy", id(json!({"ipAddresses": ["::1"]})), "PolicyViolation", "::1"),
        // ---- Durations ----
        refused("duration-zero", id(json!({"duration": "0s"})), "positive Go duration"),
        refused("duration-negative", id(json!({"duration": "-1h"})), "positive Go duration"),
        refused("duration-below-a-nanosecond", id(json!({"duration": "0.1ns"})), "positive Go duration"),
        refused("duration-overflow", id(json!({"duration": "99999999999999h"})), "at most 2562047h"),
        refused("duration-days", id(json!({"duration": "1d"})), "units ns, us, ms, s, m, h"),
        refused("duration-no-unit", id(json!({"duration": "3600"})), "units ns, us, ms, s, m, h"),
        refused("renew-before-zero", id(json!({"duration": "1h", "renewBefore": "0s"})), "positive Go duration"),
        refused(
            "renew-before-not-shorter",
            id(json!({"duration": "1h", "renewBefore": "1h"})),
            "renewBefore must be shorter than duration",
        ),
        refused("renew-before-overflow", id(json!({"renewBefore": "99999999999999h"})), "at most 2562047h"),
        not_ready(
            "renew-before-default-duration",
            id(json!({"renewBefore": "30h"})),
            "InvalidDuration",
            "renewBefore 30h must be shorter than duration 24h",
        ),
        not_ready("duration-below-min", id(json!({"duration": "1m"})), "DurationOutOfBounds", "10m..48h"),
        not_ready("duration-above-max", id(json!({"duration": "100h"})), "DurationOutOfBounds", "10m..48h"),
        not_ready("duration-max-go", id(json!({"duration": "2562047h"})), "DurationOutOfBounds", "10m..48h"),
        // ---- Algorithms and usages ----
        refused("algorithm-rsa-1024", id(json!({"privateKey": {"algorithm": "RSA-1024"}})), "supported values"),
        refused("algorithm-lower-case", id(json!({"privateKey": {"algorithm": "ecdsa-p256"}})), "supported values"),
        refused("algorithm-empty", id(json!({"privateKey": {"algorithm": ""}})), "supported values"),
        refused("usage-unknown", id(json!({"usages": ["CodeSigning"]})), "supported values"),
        refused("usage-none", id(json!({"usages": []})), "should have at least 1 items"),
        refused("usage-repeated", id(json!({"usages": ["ClientAuth", "ClientAuth"]})), "usages must not repeat"),
        // ---- Keystores and extra files ----
        refused(
            "output-format-repeated",
            id(json!({"additionalOutputFormats": [{"type": "DER"}, {"type": "DER"}]})),
            "must not list a type twice",
        ),
        refused("output-format-unknown", id(json!({"additionalOutputFormats": [{"type": "PEM"}]})), "supported values"),
        refused(
            "keystore-profile-unknown",
            id(json!({"keystores": {"pkcs12": {"create": true, "profile": "Modern2019",
                "passwordSecretRef": {"name": "pw", "key": "password"}}}})),
            "supported values",
        ),
        refused(
            "keystore-no-password-ref",
            id(json!({"keystores": {"jks": {"create": true}}})),
            "passwordSecretRef: Required value",
        ),
        // ---- Identity, authority and Secret names ----
        refused(
            "spiffe-id-injected",
            id(json!({"spiffeId": "spiffe://cluster.local/ns/kube-system/sa/admin"})),
            "spiffeId: field not declared in schema",
        ),
        refused(
            "service-account-path",
            id(json!({"serviceAccountName": "x/ns/kube-system/sa/admin"})),
            "name of a ServiceAccount in this namespace",
        ),
        refused(
            "service-account-qualified",
            id(json!({"serviceAccountName": "system:serviceaccount:kube-system:default"})),
            "name of a ServiceAccount in this namespace",
        ),
        refused("authority-empty", id(json!({"authorityRef": ""})), "spec.authorityRef"),
        not_ready(
            "authority-missing",
            id(json!({"authorityRef": format!("{run}-does-not-exist")})),
            "AuthorityNotFound",
            "does not exist",
        ),
        not_ready(
            "authority-not-ready",
            id(json!({"authorityRef": not_ready_authority})),
            "AuthorityNotReady",
            "not ready",
        ),
        not_ready(
            "namespace-not-allowed",
            id(json!({"authorityRef": closed.name})),
            "NamespaceNotAllowed",
            "policy.namespaceSelector",
        ),
        refused("secret-name-invalid", id(json!({"secretName": "Bad_Name"})), "spec.secretName"),
        not_ready("secret-not-ours", id(json!({"secretName": "taken"})), "SecretConflict", "not owned"),
        // ---- Authorities ----
        refused(
            "authority-no-ca",
            Object::Authority(json!({"ca": {}})),
            "set exactly one of ca.generate or ca.secretRef",
        ),
        refused(
            "authority-two-cas",
            Object::Authority(json!({"ca": {"generate": {}, "secretRef": {"name": "x"}}})),
            "set exactly one of ca.generate or ca.secretRef",
        ),
        refused(
            "authority-rsa-1024",
            Object::Authority(json!({"ca": {"generate": {"algorithm": "RSA-1024"}}})),
            "supported values",
        ),
        refused(
            "authority-lifetime-short",
            Object::Authority(json!({"ca": {"generate": {"lifetime": "30m"}}})),
            "at least 1h",
        ),
        refused(
            "authority-lifetime-overflow",
            Object::Authority(json!({"ca": {"generate": {"lifetime": "99999999999999h"}}})),
            "at most 2562047h",
        ),
        refused(
            "authority-leaf-bounds",
            Object::Authority(json!({"leaf": {"minDuration": "2h", "defaultDuration": "1h"}})),
            "minDuration <= defaultDuration <= maxDuration",
        ),
        refused(
            "authority-trust-domain-path",
            Object::Authority(json!({"trustDomain": "cluster.local/ns/kube-system"})),
            "trustDomain must be a lower-case DNS name",
        ),
        refused(
            "authority-max-duration-overflow",
            Object::Authority(json!({"leaf": {"maxDuration": "99999999999999h"}})),
            "leaf.maxDuration must be a positive Go duration",
        ),
        refused(
            "authority-propagation-delay-zero",
            Object::Authority(json!({"rotation": {"propagationDelay": "0s"}})),
            "rotation.propagationDelay must be a positive Go duration",
        ),
        refused(
            "authority-ip-range-invalid",
            Object::Authority(json!({"policy": {"allowedIpRanges": ["10.1.0.0/33"]}})),
            "CIDR ranges such as 10.0.0.0/8",
        ),
        refused(
            "authority-allowed-dns-bare-wildcard",
            Object::Authority(json!({"policy": {"allowedDnsNames": ["*"]}})),
            "or *.example.com",
        ),
        refused(
            "authority-reissue-rate-zero",
            Object::Authority(json!({"rotation": {"reissueRate": 0}})),
            "spec.rotation.reissueRate",
        ),
        refused(
            "authority-truststore-key-ca-crt",
            Object::Authority(json!({"trustBundle": {"additionalFormats": {"pkcs12": {"key": "ca.crt"}}}})),
            "must not be ca.crt or version",
        ),
        not_ready(
            "authority-bad-selector",
            Object::Authority(json!({"policy": {"namespaceSelector": {"matchExpressions": [
                {"key": "team", "operator": "Bogus", "values": ["a"]}]}}})),
            "InvalidSpec",
            "policy.namespaceSelector",
        ),
        not_ready("ca-secret-missing", Object::SuppliedCa(None), "CaSecretNotFound", "does not exist"),
    ];
    for (name, reason, says, data) in unusable_cas(tmp.path()) {
        cases.push(not_ready(name, Object::SuppliedCa(Some(data)), reason, says));
    }
    let names: std::collections::BTreeSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.len() >= 30);

    let started = std::time::Instant::now();
    let ids = api(&client, "MtlsIdentity", "mtlsidentities", Some(n));
    let auths = api(&client, "MtlsAuthority", "mtlsauthorities", None);
    let ca_secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let mut guards = vec![];
    let mut failures = vec![];
    // Authorities first, so that the identity naming one of them finds it.
    cases.sort_by_key(|c| matches!(c.object, Object::Identity(_)));
    // (case, kind, object name, namespace of its Events, uid)
    let mut accepted = vec![];
    for case in &cases {
        let (kind, name, result) = match &case.object {
            Object::Identity(spec) => {
                let mut spec = spec.clone();
                if spec.get("authorityRef").is_none() {
                    spec["authorityRef"] = auth.name.clone().into();
                }
                ("MtlsIdentity", case.name.to_string(), apply(&ids, "MtlsIdentity", case.name, &spec).await)
            }
            Object::Authority(_) | Object::SuppliedCa(_) => {
                let name = format!("{run}-{}", case.name);
                let mut spec = match &case.object {
                    Object::Authority(spec) => spec.clone(),
                    _ => json!({"ca": {"secretRef": {"name": name}}}),
                };
                if let Object::SuppliedCa(Some(data)) = &case.object {
                    let secret = Secret {
                        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
                        data: Some(
                            data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect(),
                        ),
                        ..Default::default()
                    };
                    ca_secrets.create(&PostParams::default(), &secret).await.unwrap();
                }
                // Its bundle only where this test looks (the case's other bundle fields kept).
                spec["trustBundle"]["configMapName"] = format!("{name}-bundle").into();
                spec["trustBundle"]["namespaceSelector"] = json!({"matchLabels": {"mtls-e2e/bundle": name}});
                let r = apply(&auths, "MtlsAuthority", &name, &spec).await;
                if r.is_ok() {
                    guards.push(TestAuthority { name: name.clone() });
                }
                ("MtlsAuthority", name, r)
            }
        };
        match (&case.expect, result) {
            (Expect::Refused(says), Err(msg)) => {
                if !msg.contains(says) {
                    failures.push(format!("{}: refusal should say {says:?}; it says: {msg}", case.name));
                }
            }
            (Expect::Refused(_), Ok(_)) => failures.push(format!("{}: accepted, but must be refused", case.name)),
            (Expect::NotReady(..), Err(msg)) => failures.push(format!("{}: refused ({msg}), but is valid", case.name)),
            (Expect::NotReady(..), Ok(o)) => {
                let events_ns = if kind == "MtlsIdentity" { n.to_string() } else { "default".to_string() };
                accepted.push((case, kind, name, events_ns, o.uid().unwrap()));
            }
        }
    }
    let refused_count = cases.len() - accepted.len();

    // Every accepted case reaches its reason, with its message, and exactly one Warning Event.
    let mut settled = vec![];
    for (case, kind, name, events_ns, uid) in &accepted {
        let Expect::NotReady(reason, says) = &case.expect else { unreachable!() };
        let objects = if *kind == "MtlsIdentity" { &ids } else { &auths };
        let seen = harness::wait_for(Duration::from_secs(30), || async {
            let o = objects.get(name).await.ok()?;
            let c = ready_condition(&o)?;
            let w = warnings(&client, events_ns, uid).await;
            (c.0 == "False" && c.1 == *reason && !w.is_empty()).then_some((o, c))
        })
        .await;
        let Some((o, cond)) = seen else {
            let o = objects.get(name).await.ok();
            failures.push(format!(
                "{}: never reached Ready=False/{reason} with a Warning Event; condition {:?}, warnings {:?}",
                case.name,
                o.as_ref().and_then(ready_condition),
                warnings(&client, events_ns, uid).await
            ));
            continue;
        };
        if !cond.2.contains(says.as_str()) {
            failures.push(format!("{}: message should say {says:?}; it says: {}", case.name, cond.2));
        }
        if matches!(case.object, Object::SuppliedCa(_)) && !cond.2.contains(name.as_str()) {
            failures.push(format!("{}: message should name the Secret {name}: {}", case.name, cond.2));
        }
        if cond.2.contains("PRIVATE KEY") {
            failures.push(format!("{}: key material in the message", case.name));
        }
        settled.push((case, kind, name, events_ns, uid, o.resource_version(), cond));
    }

    // One bad object never stalls the others: a valid identity, created after all of them, is
    // issued promptly.
    let t0 = std::time::Instant::now();
    let valid = json!({"authorityRef": auth.name, "serviceNames": ["web"], "dnsNames": ["api.corp.example"],
        "ipAddresses": ["10.1.2.3"]});
    apply(&ids, "MtlsIdentity", "valid", &valid).await.expect("the valid identity is accepted");
    let ready = harness::wait_for(Duration::from_secs(10), || async {
        let o = ids.get("valid").await.ok()?;
        (ready_condition(&o)?.0 == "True").then_some(o)
    })
    .await;
    let issued_in = t0.elapsed();
    let o = ready.unwrap_or_else(|| panic!("a valid identity created after the bad ones was not Ready within 10 s"));
    assert_eq!(
        o.data.pointer("/status/spiffeId").and_then(Value::as_str),
        Some(format!("spiffe://cluster.local/ns/{n}/sa/valid").as_str())
    );
    let s = get_secret(&client, n, "valid-mtls").await;
    let leaf = mtls_operator::core::pki::inspect_leaf(&crate::fixtures::data(&s, "tls.crt"), "").unwrap();
    assert!(leaf.dns_names.contains(&"api.corp.example".to_string()), "{:?}", leaf.dns_names);

    // Nothing flaps: give the operator a few seconds to misbehave, then every bad object still
    // has the same condition, has not been written again, and has exactly one Warning Event.
    let quiet = Duration::from_secs(3).saturating_sub(issued_in);
    tokio::time::sleep(quiet).await;
    for (case, kind, name, events_ns, uid, rv, cond) in &settled {
        let objects = if **kind == "MtlsIdentity" { &ids } else { &auths };
        let now = objects.get(name).await.unwrap();
        if ready_condition(&now).as_ref() != Some(cond) {
            failures.push(format!("{}: condition changed from {cond:?} to {:?}", case.name, ready_condition(&now)));
        }
        if now.resource_version() != *rv {
            failures.push(format!("{}: written again while nothing changed ({:?})", case.name, now.data["status"]));
        }
        let w = warnings(&client, events_ns, uid).await;
        let Expect::NotReady(reason, _) = &case.expect else { unreachable!() };
        if w != [(reason.to_string(), 1)] {
            failures.push(format!("{}: expected exactly one Warning {reason}, got {w:?}", case.name));
        }
        if **kind == "MtlsIdentity" {
            let secret_name = if case.name == "secret-not-ours" { "taken".to_string() } else { format!("{name}-mtls") };
            let s = Api::<Secret>::namespaced(client.clone(), n).get_opt(&secret_name).await.unwrap();
            if case.name == "secret-not-ours" {
                if s.map(|s| s.resource_version()) != Some(foreign.resource_version()) {
                    failures.push(format!("{}: the foreign Secret was written", case.name));
                }
            } else if s.is_some() {
                failures.push(format!("{}: a Secret was issued", case.name));
            }
        }
    }
    println!(
        "bad input: {} cases ({refused_count} refused at admission, {} Ready=False), settled in {:.1} s; \
         the valid identity after them was Ready in {:.1} s",
        cases.len(),
        accepted.len(),
        (t0 - started).as_secs_f64(),
        issued_in.as_secs_f64()
    );
    for case in &cases {
        if matches!(case.object, Object::SuppliedCa(Some(_))) {
            let _ = ca_secrets.delete(&format!("{run}-{}", case.name), &DeleteParams::default()).await;
        }
    }
    drop(guards);
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// An identity created before its authority keeps an accurate reason as the authority appears
/// unusable and is then fixed: AuthorityNotFound, AuthorityNotReady, then issued.
#[tokio::test]
async fn an_authority_that_appears_later_is_reported_accurately() {
    harness::operator().await;
    let client = harness::client().await;
    let ns = TestNamespace::new(&client, "late-authority").await;
    let name = format!("late-{:06x}", harness::rand_u32() & 0xffffff);
    crate::fixtures::create_identity(&client, &ns.name, "app", &name, json!({})).await;
    crate::fixtures::wait_identity_reason(&client, &ns.name, "app", "AuthorityNotFound").await;

    // The authority appears, but its CA Secret does not exist yet.
    let secret_name = format!("{name}-supplied");
    let obj = json!({"metadata": {"name": name}, "spec": {"ca": {"secretRef": {"name": secret_name}},
        "trustBundle": {"configMapName": format!("{name}-bundle"),
                        "namespaceSelector": {"matchLabels": {"mtls-e2e/bundle": name}}}}});
    Api::<mtls_operator::api::MtlsAuthority>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
        .await
        .unwrap();
    let _guard = TestAuthority { name: name.clone() };
    crate::fixtures::wait_authority_reason(&client, &name, "CaSecretNotFound").await;
    let id = crate::fixtures::wait_identity_reason(&client, &ns.name, "app", "AuthorityNotReady").await;
    assert!(id.status.unwrap().conditions[0].message.contains(&name));

    // The Secret arrives: the authority becomes Ready and the identity is issued.
    let (crt, key) = mtls_operator::core::pki::generate_ca(
        "late",
        &[],
        mtls_operator::api::KeyAlgorithm::EcdsaP256,
        jiff::Timestamp::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": secret_name},
        "stringData": {"tls.crt": crt, "tls.key": key.expose()}}))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let id = crate::fixtures::wait_identity_ready(&client, &ns.name, "app").await;
    let w = warnings(&client, &ns.name, &id.uid().unwrap()).await;
    assert_eq!(w, [("AuthorityNotFound".to_string(), 1), ("AuthorityNotReady".to_string(), 1)], "one Warning each");
    let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
}
