//! The API: `MtlsAuthority` (cluster-scoped) and `MtlsIdentity` (namespaced), group `mtls.io`,
//! version `v1alpha1`. The CRD YAML in `crds/` is generated from these types (`mtls-operator crd`),
//! so every doc comment here is what `kubectl explain` shows, and every `x_kube` rule is enforced
//! by the API server at admission.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, json_schema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "mtls.io";

/// Go-style duration as accepted by CEL's `duration()` and Go's `time.ParseDuration`.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";
/// RFC 1123 DNS label (a Service or ServiceAccount name).
const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 subdomain, lower case, no wildcards (a Kubernetes object name).
const DNS_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A host name for a certificate: lower-case RFC 1123 labels of at most 63 characters, no wildcards.
const HOST_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// An entry of `policy.allowedDnsNames`: a host name, or `*.` and a host name.
const ALLOWED_DNS_PATTERN: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// The longest Go duration (an int64 of nanoseconds), in the unit users write.
const MAX_DURATION_HINT: &str = "at most 2562047h";

/// Key algorithm of a generated private key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
    #[serde(rename = "Ed25519")]
    Ed25519,
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    #[serde(rename = "RSA-3072")]
    Rsa3072,
    #[serde(rename = "RSA-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
            KeyAlgorithm::EcdsaP384 => "ECDSA-P384",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Rsa2048 => "RSA-2048",
            KeyAlgorithm::Rsa3072 => "RSA-3072",
            KeyAlgorithm::Rsa4096 => "RSA-4096",
        }
    }
}

/// Extended key usage requested for a leaf certificate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Usage {
    /// TLS server authentication (id-kp-serverAuth).
    ServerAuth,
    /// TLS client authentication (id-kp-clientAuth).
    ClientAuth,
}

// ---------------------------------------------------------------------------------------------
// MtlsAuthority
// ---------------------------------------------------------------------------------------------

/// One CA hierarchy and its trust bundle. Identities name it in `spec.authorityRef`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mtls.io",
    version = "v1alpha1",
    kind = "MtlsAuthority",
    plural = "mtlsauthorities",
    shortname = "mtlsca",
    status = "MtlsAuthorityStatus",
    category = "mtls",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bundle","type":"integer","jsonPath":".status.bundle.version","description":"Trust bundle version"}"#,
    printcolumn = r#"{"name":"CA Expires","type":"string","jsonPath":".status.activeCa.notAfter","description":"Expiry of the CA that signs new leaves"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rotation) || !has(self.rotation.autoRotateBefore) || !has(self.ca) || !has(self.ca.generate) || duration(self.rotation.autoRotateBefore) < duration(self.ca.generate.lifetime)").message("rotation.autoRotateBefore must be shorter than ca.generate.lifetime, or every new CA would rotate at once"))]
pub struct MtlsAuthoritySpec {
    /// SPIFFE trust domain: identities get `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default = "default_cluster_local")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_NAME_PATTERN))]
    #[x_kube(validation = Rule::new(format!("self.matches(r'{HOST_NAME_PATTERN}')")).message("trustDomain must be a lower-case DNS name such as cluster.local: no scheme, path, port or wildcard"))]
    pub trust_domain: String,

    /// Cluster DNS domain used to expand `serviceNames` (`<svc>.<ns>.svc.<clusterDomain>`).
    #[serde(default = "default_cluster_local")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub cluster_domain: String,

    /// Where the CA comes from: exactly one of `generate` (the operator creates and keeps it) or
    /// `secretRef` (you bring it).
    #[serde(default)]
    pub ca: CaSource,

    /// Bounds and defaults for leaf certificates issued by this authority.
    #[serde(default)]
    pub leaf: LeafPolicy,

    /// Who may use this authority and which names they may claim.
    #[serde(default)]
    pub policy: IssuancePolicy,

    /// Where the trust bundle is published.
    #[serde(default)]
    pub trust_bundle: TrustBundleSpec,

    /// How the CA itself is rotated.
    #[serde(default)]
    pub rotation: RotationSpec,
}

/// Exactly one of `generate` or `secretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.generate) != has(self.secretRef)").message("set exactly one of ca.generate or ca.secretRef"))]
pub struct CaSource {
    /// The operator generates the CA and keeps its key in a Secret in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<GenerateCa>,
    /// A CA you supply: a Secret in the operator's namespace with `tls.crt` (the signing
    /// certificate first, then its chain), `tls.key`, and optionally `ca.crt` (the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Publish a supplied intermediate CA as the trust anchor when its Secret holds no root
    /// (no self-signed certificate in `tls.crt` or `ca.crt`). Off by default, and the authority
    /// is then not Ready (`CaRootMissing`): OpenSSL-based verifiers (nginx `ssl_verify_client`,
    /// `openssl s_server`/`s_client`) reject every peer whose chain ends at an intermediate, while
    /// Go, rustls and curl accept it. When on, the `IntermediateTrustAnchor` condition says so for
    /// as long as it applies. Adding the root as `ca.crt` is the fix.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_intermediate_trust_anchor: bool,
}

impl Default for CaSource {
    fn default() -> Self {
        CaSource { generate: Some(GenerateCa::default()), secret_ref: None, allow_intermediate_trust_anchor: false }
    }
}

/// Parameters of a CA generated by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerateCa {
    /// Key algorithm of the CA key.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Lifetime of each CA generation (Go duration, e.g. `8760h`).
    #[serde(default = "default_ca_lifetime")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message(format!("ca.generate.lifetime must be a Go duration of at least 1h and {MAX_DURATION_HINT}, such as 8760h").as_str()))]
    pub lifetime: String,
    /// Subject of the CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<CaSubject>,
}

impl Default for GenerateCa {
    fn default() -> Self {
        GenerateCa { algorithm: KeyAlgorithm::default(), lifetime: default_ca_lifetime(), subject: None }
    }
}

/// Distinguished name fields of a generated CA.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSubject {
    /// Common name; defaults to `<authority> mtls-operator CA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub common_name: Option<String>,
    /// Organization names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub organization: Vec<String>,
}

/// Reference to a Secret in the operator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub name: String,
}

/// Bounds and defaults for leaf certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.minDuration) <= duration(self.defaultDuration) && duration(self.defaultDuration) <= duration(self.maxDuration)").message("leaf durations must satisfy minDuration <= defaultDuration <= maxDuration"))]
#[x_kube(validation = Rule::new("!has(self.defaultRenewBefore) || duration(self.defaultRenewBefore) < duration(self.minDuration)").message("leaf.defaultRenewBefore must be shorter than leaf.minDuration"))]
pub struct LeafPolicy {
    /// Lifetime of a leaf whose identity does not set `duration`.
    #[serde(default = "default_leaf_duration")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("leaf.defaultDuration must be a positive Go duration, {MAX_DURATION_HINT}, such as 24h").as_str()))]
    pub default_duration: String,
    /// Shortest `duration` an identity may ask for.
    #[serde(default = "default_leaf_min")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message(format!("leaf.minDuration must be a Go duration of at least 1m and {MAX_DURATION_HINT}, such as 10m").as_str()))]
    pub min_duration: String,
    /// Longest `duration` an identity may ask for.
    #[serde(default = "default_leaf_max")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("leaf.maxDuration must be a positive Go duration, {MAX_DURATION_HINT}, such as 720h").as_str()))]
    pub max_duration: String,
    /// How long before expiry a leaf is renewed when its identity does not set `renewBefore`.
    /// Unset means one third of the leaf's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("leaf.defaultRenewBefore must be a positive Go duration, {MAX_DURATION_HINT}, such as 8h").as_str()))]
    pub default_renew_before: Option<String>,
}

impl Default for LeafPolicy {
    fn default() -> Self {
        LeafPolicy {
            default_duration: default_leaf_duration(),
            min_duration: default_leaf_min(),
            max_duration: default_leaf_max(),
            default_renew_before: None,
        }
    }
}

/// Issuance policy. By default an identity in namespace `ns` may claim, for each of its
/// `serviceNames`, exactly `<svc>`, `<svc>.ns`, `<svc>.ns.svc` and `<svc>.ns.svc.<clusterDomain>`,
/// and nothing else.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuancePolicy {
    /// Namespaces whose identities may use this authority. Unset means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Extra DNS names identities may put in `dnsNames`: exact names, or `*.example.com` to allow
    /// any name under `example.com` (the certificate still carries the exact name, never a wildcard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new(format!("self.all(p, p.matches(r'{ALLOWED_DNS_PATTERN}'))")).message("policy.allowedDnsNames entries must be lower-case DNS names such as api.example.com, or *.example.com for every name under example.com"))]
    pub allowed_dns_names: Vec<String>,
    /// CIDR ranges identities may claim in `ipAddresses`. Empty means no IP SANs are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 49)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))").message("policy.allowedIpRanges entries must be CIDR ranges such as 10.0.0.0/8 or fd00::/64"))]
    pub allowed_ip_ranges: Vec<String>,
}

/// Where and how the trust bundle is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleSpec {
    /// Name of the ConfigMap written in every selected namespace.
    #[serde(default = "default_bundle_name")]
    #[schemars(length(min = 1, max = 240), regex(pattern = DNS_NAME_PATTERN))]
    pub config_map_name: String,
    /// Namespaces that receive the bundle ConfigMap. Unset means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Extra trusted roots (other clusters, federation), read from ConfigMaps or Secrets in the
    /// operator's namespace.
    #[serde(default, rename = "additionalCAs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub additional_cas: Vec<AdditionalCa>,
    /// Truststores written into the bundle ConfigMaps' `binaryData` beside `ca.crt` (the shape of
    /// trust-manager's `target.additionalFormats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_formats: Option<BundleFormats>,
}

impl Default for TrustBundleSpec {
    fn default() -> Self {
        TrustBundleSpec {
            config_map_name: default_bundle_name(),
            namespace_selector: None,
            additional_cas: vec![],
            additional_formats: None,
        }
    }
}

/// Truststore files in the bundle ConfigMaps. Their passwords protect integrity only (a bundle
/// is public), so they are given here, not in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleFormats {
    /// A JKS truststore (default key `truststore.jks`, password `changeit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jks: Option<BundleFormat>,
    /// A PKCS#12 truststore (default key `truststore.p12`, password `changeit`), modern encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<BundleFormat>,
}

/// One truststore file in the bundle ConfigMaps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.key) || (self.key != 'ca.crt' && self.key != 'version')").message("the truststore's key must not be ca.crt or version: those hold the PEM bundle and its version"))]
pub struct BundleFormat {
    /// Key in the ConfigMap's `binaryData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
    /// Password of the truststore. Defaults to `changeit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub password: Option<String>,
}

/// A PEM bundle of extra roots held in a ConfigMap or a Secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("set exactly one of configMap or secret"))]
pub struct AdditionalCa {
    /// A key of a ConfigMap in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyReference>,
    /// A key of a Secret in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeyReference>,
}

/// A key of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// CA rotation settings. Change `trigger` to any new value to start a staged rotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// Upper bound on how long kubelet takes to deliver an updated Secret or ConfigMap into pods.
    /// Each rotation phase that changes what workloads trust waits this long.
    #[serde(default = "default_propagation_delay")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("rotation.propagationDelay must be a positive Go duration, {MAX_DURATION_HINT}, such as 3m").as_str()))]
    pub propagation_delay: String,
    /// Start a rotation automatically when the active CA has less than this left.
    /// Unset means one third of the CA lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("rotation.autoRotateBefore must be a positive Go duration, {MAX_DURATION_HINT}, such as 720h").as_str()))]
    pub auto_rotate_before: Option<String>,
    /// Maximum leaf re-issues per second during the `Reissuing` phase.
    #[serde(default = "default_reissue_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub reissue_rate: u32,
    /// Any new value starts a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub trigger: Option<String>,
    /// `Rollback` reverses a rotation in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RotationAction>,
}

impl Default for RotationSpec {
    fn default() -> Self {
        RotationSpec {
            propagation_delay: default_propagation_delay(),
            auto_rotate_before: None,
            reissue_rate: default_reissue_rate(),
            trigger: None,
            action: None,
        }
    }
}

/// Operator action on a rotation in flight.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RotationAction {
    /// Reverse the rotation in flight, safely, back to the previous CA.
    Rollback,
}

/// Observed state of an authority.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsAuthorityStatus {
    /// Rotation phase: Stable, Preparing, Propagating, Reissuing, Draining or Retiring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The CA that signs new leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_ca: Option<CaInfo>,
    /// The CA being rotated in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_ca: Option<CaInfo>,
    /// The CA being rotated out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_ca: Option<CaInfo>,
    /// The current trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleStatus>,
    /// Recent bundle versions, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<BundleHistoryEntry>,
    /// Number of identities that use this authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<u32>,
    /// When the current phase started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_at: Option<String>,
    /// The rotation state machine, persisted before each transition takes effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationState>,
    /// Rotation progress: identity Secrets whose leaf the current signer issued, out of all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_progress: Option<RotationProgress>,
    /// `Ready` and `Rotating`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Rotation progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationProgress {
    /// Identity Secrets holding a leaf signed by the current signer.
    pub reissued: u32,
    /// Identity Secrets in all.
    pub total: u32,
}

/// A CA certificate as reported in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaInfo {
    /// SHA-256 fingerprint of the DER certificate, hex.
    pub fingerprint: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Subject of the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Secret in the operator's namespace holding this CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// The trust bundle currently published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// Strictly increasing version, bumped when the set of trusted certificates changes.
    pub version: i64,
    /// SHA-256 of the PEM bundle, hex.
    pub sha256: String,
    /// SHA-256 fingerprints of the member certificates, in bundle order.
    #[serde(default)]
    pub members: Vec<String>,
    /// Target namespaces whose ConfigMap holds the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces_up_to_date: Option<u32>,
    /// Target namespaces in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces_total: Option<u32>,
    /// Identity Secrets whose `ca.crt` holds the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_up_to_date: Option<u32>,
    /// Identity Secrets in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_total: Option<u32>,
}

/// One past bundle version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleHistoryEntry {
    /// Bundle version.
    pub version: i64,
    /// SHA-256 of the PEM bundle, hex.
    pub sha256: String,
    /// Member fingerprints.
    #[serde(default)]
    pub members: Vec<String>,
    /// When this version was published (RFC 3339).
    pub published_at: String,
}

// ---------------------------------------------------------------------------------------------
// MtlsIdentity
// ---------------------------------------------------------------------------------------------

/// A workload identity: the operator keeps a `kubernetes.io/tls` Secret with a short-lived
/// certificate for `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccountName>`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mtls.io",
    version = "v1alpha1",
    kind = "MtlsIdentity",
    plural = "mtlsidentities",
    shortname = "mtlsid",
    namespaced,
    status = "MtlsIdentityStatus",
    category = "mtls",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renews","type":"string","jsonPath":".status.renewalTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.duration) || !has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration"))]
#[x_kube(validation = Rule::new("has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)").message("secretName is immutable; create a new MtlsIdentity for a new Secret"))]
pub struct MtlsIdentitySpec {
    /// ServiceAccount whose SPIFFE ID the certificate carries:
    /// `spiffe://<trustDomain>/ns/<this namespace>/sa/<serviceAccountName>`. Defaults to the
    /// object's name. The namespace part is always the identity's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new(format!("self.matches(r'{DNS_NAME_PATTERN}')")).message("serviceAccountName must be the name of a ServiceAccount in this namespace, such as web (the namespace is always the identity's own)"))]
    pub service_account_name: Option<String>,

    /// Name of the `MtlsAuthority` that issues this identity.
    #[serde(default = "default_authority")]
    #[schemars(length(min = 1, max = 253))]
    pub authority_ref: String,

    /// Secret the operator writes (type `kubernetes.io/tls`). Defaults to `<name>-mtls`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub secret_name: Option<String>,

    /// Services in this namespace the workload serves. Each `svc` becomes the DNS names `svc`,
    /// `svc.<ns>`, `svc.<ns>.svc` and `svc.<ns>.svc.<clusterDomain>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN)))]
    #[x_kube(validation = Rule::new(format!("self.all(s, s.matches(r'{DNS_LABEL_PATTERN}'))")).message("serviceNames are Services of this namespace, each one DNS label such as web; for a Service in another namespace, create the MtlsIdentity in that namespace"))]
    pub service_names: Vec<String>,

    /// Other DNS names, allowed only when the authority's policy lists them. Lower-case, no wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), regex(pattern = HOST_NAME_PATTERN)))]
    #[x_kube(validation = Rule::new("self.all(n, !n.contains('*'))").message("dnsNames must not contain wildcards: list each exact name (an authority's policy.allowedDnsNames can allow a whole domain)"))]
    #[x_kube(validation = Rule::new(format!("self.all(n, n.matches(r'{HOST_NAME_PATTERN}'))")).message("dnsNames must be lower-case DNS names such as api.example.com: letters, digits and '-', labels of at most 63 characters, no trailing dot"))]
    pub dns_names: Vec<String>,

    /// IP address SANs, allowed only inside the authority's `policy.allowedIpRanges`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 2, max = 45)))]
    #[x_kube(validation = Rule::new("self.all(ip, isIP(ip))").message("ipAddresses must be IPv4 or IPv6 addresses such as 10.0.0.7 or fd00::7: single addresses, not ranges, host names or zones"))]
    pub ip_addresses: Vec<String>,

    /// Extended key usages.
    #[serde(default = "default_usages")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(v, v == u))").message("usages must not repeat"))]
    pub usages: Vec<Usage>,

    /// Certificate lifetime (Go duration such as `24h` or `90m`), within the authority's
    /// `leaf.minDuration`..`leaf.maxDuration`. Defaults to the authority's `leaf.defaultDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("duration must be a positive Go duration such as 90m or 24h (units ns, us, ms, s, m, h; {MAX_DURATION_HINT})").as_str()))]
    pub duration: Option<String>,

    /// Renew this long before expiry (Go duration). Defaults to the authority's
    /// `leaf.defaultRenewBefore`, or one third of the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(format!("renewBefore must be a positive Go duration such as 30m or 8h (units ns, us, ms, s, m, h; {MAX_DURATION_HINT})").as_str()))]
    pub renew_before: Option<String>,

    /// The private key.
    #[serde(default)]
    pub private_key: PrivateKeySpec,

    /// Labels and annotations copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// Java keystores and truststores written into the Secret beside the PEM files (the shape of
    /// cert-manager's `Certificate.spec.keystores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<Keystores>,

    /// More files in the Secret: `CombinedPEM` (`tls-combined.pem`, the key then the chain, one
    /// atomic read) and `DER` (`key.der`, the PKCS#8 key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g.type == f.type))").message("additionalOutputFormats must not list a type twice"))]
    pub additional_output_formats: Vec<OutputFormat>,
}

/// Keystores written into the identity Secret, each protected by a password from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Keystores {
    /// `keystore.p12` (the key and chain) and `truststore.p12` (the trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12Keystore>,
    /// `keystore.jks` (the key and chain) and `truststore.jks` (the trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jks: Option<JksKeystore>,
}

/// A PKCS#12 keystore and truststore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs12Keystore {
    /// Write the files (false: leave them out).
    pub create: bool,
    /// The password, from a key of a Secret in the identity's namespace.
    pub password_secret_ref: SecretKeySelector,
    /// Encryption: `Modern2023` (default: AES-256-CBC with PBKDF2-HMAC-SHA256, HMAC-SHA256 MAC),
    /// or for old Java readers `LegacyDES` (3DES, SHA-1 MAC) or `LegacyRC2` (40-bit RC2 for the
    /// certificates, 3DES for the key, SHA-1 MAC).
    #[serde(default)]
    pub profile: Pkcs12Profile,
}

/// How a PKCS#12 file is encrypted (cert-manager's profile names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Pkcs12Profile {
    #[default]
    Modern2023,
    #[serde(rename = "LegacyDES")]
    LegacyDes,
    #[serde(rename = "LegacyRC2")]
    LegacyRc2,
}

/// A JKS keystore and truststore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JksKeystore {
    /// Write the files (false: leave them out).
    pub create: bool,
    /// The password of the store and of its key entry, from a key of a Secret in the
    /// identity's namespace.
    pub password_secret_ref: SecretKeySelector,
    /// Alias of the key entry in `keystore.jks`. Defaults to `certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub alias: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One more file in the identity Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputFormat {
    /// `CombinedPEM` (`tls-combined.pem`) or `DER` (`key.der`).
    #[serde(rename = "type")]
    pub type_: OutputFormatType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum OutputFormatType {
    #[serde(rename = "CombinedPEM")]
    CombinedPem,
    #[serde(rename = "DER")]
    Der,
}

/// Private key parameters. A new key is generated at every issuance and renewal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    /// One of ECDSA-P256 (default), ECDSA-P384, Ed25519, RSA-2048, RSA-3072, RSA-4096.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
}

/// Metadata copied onto the generated Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of an identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsIdentityStatus {
    /// `Ready`, with a reason that says exactly what is wrong when it is False.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The SPIFFE ID in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Serial number of the current certificate, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Start of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// End of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator will renew the certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// SHA-256 fingerprint of the CA certificate that signed the leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_fingerprint: Option<String>,
    /// Trust bundle version in the Secret's `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<i64>,
    /// The Secret holding the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Consecutive failed issuance attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_count: Option<u32>,
    /// Time of the last failed attempt (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
}

fn conditions_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "description": "Conditions, one per type.",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Condition type."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "True, False or Unknown."},
                "reason": {"type": "string", "description": "Machine-readable CamelCase reason."},
                "message": {"type": "string", "description": "What happened, for a person."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When status last changed."},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "Generation the condition describes."}
            }
        }
    })
}

fn default_cluster_local() -> String {
    "cluster.local".into()
}
fn default_ca_lifetime() -> String {
    "8760h".into()
}
fn default_leaf_duration() -> String {
    "24h".into()
}
fn default_leaf_min() -> String {
    "10m".into()
}
fn default_leaf_max() -> String {
    "720h".into()
}
fn default_bundle_name() -> String {
    "mtls-trust-bundle".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_propagation_delay() -> String {
    "3m".into()
}
fn default_reissue_rate() -> u32 {
    50
}
fn default_authority() -> String {
    "default".into()
}
fn default_usages() -> Vec<Usage> {
    vec![Usage::ServerAuth, Usage::ClientAuth]
}

/// The phases of a CA rotation (the state machine is `core::rotation`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum Phase {
    #[default]
    Stable,
    Preparing,
    Propagating,
    Reissuing,
    Draining,
    Retiring,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Stable, Phase::Preparing, Phase::Propagating, Phase::Reissuing, Phase::Draining, Phase::Retiring];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "Stable",
            Phase::Preparing => "Preparing",
            Phase::Propagating => "Propagating",
            Phase::Reissuing => "Reissuing",
            Phase::Draining => "Draining",
            Phase::Retiring => "Retiring",
        }
    }
}

/// The persisted rotation state. CAs are named by generation number (their Secret is
/// `<authority>-ca-<generation>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationState {
    /// Current phase.
    #[serde(default)]
    pub phase: Phase,
    /// Generation of the CA being rotated away from (the only CA when Stable).
    #[serde(default)]
    pub from: u32,
    /// Generation of the CA being rotated to, while a rotation is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// When the current phase started (Unix seconds).
    #[serde(default)]
    pub phase_since: i64,
    /// What started the rotation in flight (or the last one): a trigger value, `auto` or `supplied-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The last `spec.rotation.trigger` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_trigger: Option<String>,
    /// Whether the rotation in flight has been rolled back.
    #[serde(default)]
    pub rolled_back: bool,
}
