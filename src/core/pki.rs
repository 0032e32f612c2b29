//! Certificates, pure: CA generation, loading and vetting a supplied CA, issuing leaves and
//! inspecting what a Secret holds. No Kubernetes I/O and no clock of its own: callers pass `now`.

use std::{fmt, net::IpAddr};

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
    public_key::PublicKey,
};

use crate::api::{KeyAlgorithm, Usage};

/// Backdating of `notBefore`, so that a peer whose clock is a little behind still accepts a
/// certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// PEM private key material. Its `Debug` and `Display` print nothing, so it cannot end up in a
/// log line, an Event or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    pub fn new(pem: String) -> Self {
        SecretPem(pem)
    }
    /// The PEM text, for writing into a Secret and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

impl fmt::Display for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a certificate or key could not be used. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: not valid PEM ({detail})")]
    BadPem { what: &'static str, detail: String },
    #[error("{what}: no certificate found")]
    NoCertificate { what: &'static str },
    #[error("{what}: certificate cannot be parsed ({detail})")]
    BadCertificate { what: &'static str, detail: String },
    #[error("the private key cannot be parsed (expected PKCS#8, PKCS#1 or SEC1 PEM)")]
    BadKey,
    #[error("the certificate is not a CA (basicConstraints cA is not true)")]
    NotACa,
    #[error("the CA certificate's key usage does not allow certificate signing (keyCertSign)")]
    NoCertSign,
    #[error("the private key does not match the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error("the CA certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
    #[error("weak CA key: {0} (use RSA of at least 2048 bits, ECDSA P-256/P-384 or Ed25519)")]
    WeakKey(String),
    #[error("the chain in tls.crt is broken: certificate {index} is not signed by the next one")]
    BrokenChain { index: usize },
    #[error(
        "the CA certificate's subject ({subject}) cannot be copied exactly into the leaves it would sign, so they would not chain to it: repeated attribute types (two DC or OU), multi-valued or empty RDNs and unusual string types are not supported"
    )]
    UnsupportedSubject { subject: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// Facts about one certificate, as shown in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub fingerprint: String,
    pub serial: String,
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// A CA ready to sign: the signing certificate, the intermediates above it (never the root),
/// the roots that identity Secrets should trust, and the key.
#[derive(Clone)]
pub struct SigningCa {
    pub cert_pem: String,
    cert_der: Vec<u8>,
    /// Certificates sent after the leaf: the signing certificate when it is an intermediate,
    /// then the intermediates above it, in order, PEM. Never a root.
    pub chain_pem: Vec<String>,
    /// Roots that anchor this CA, PEM (for a generated or self-signed CA: the CA itself).
    pub roots_pem: Vec<String>,
    /// No self-signed root was supplied: `roots_pem` holds the topmost intermediate instead. Go,
    /// rustls and curl accept such an anchor; OpenSSL's default verification (nginx,
    /// `openssl s_server`/`s_client`) does not, so the authority refuses it unless told to.
    pub intermediate_anchor: Option<String>,
    pub facts: CertFacts,
    key: SecretPem,
}

impl fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCa").field("facts", &self.facts).field("key", &self.key).finish()
    }
}

/// A freshly issued leaf: `cert_chain_pem` is the leaf followed by intermediates.
pub struct IssuedLeaf {
    pub cert_chain_pem: String,
    pub key: SecretPem,
    pub facts: CertFacts,
}

/// What a leaf must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    pub common_name: String,
    pub spiffe_id: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usages: Vec<Usage>,
    pub algorithm: KeyAlgorithm,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn to_offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn from_asn1(t: x509_parser::time::ASN1Time) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Generates a key pair for `alg`.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, PkiError> {
    let r = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    r.map_err(|e| PkiError::Generate(format!("{} key generation: {e}", alg.as_str())))
}

/// The PKCS#8 PEM of a generated key, in the most widely readable form. Ed25519 keys come out of
/// the crypto library as PKCS#8 v2 (with the public key attached), which OpenSSL 3.0 cannot read;
/// they are rewritten as the plain v1 structure of RFC 8410.
pub fn private_key_pem(key: &KeyPair) -> SecretPem {
    const V2_PREFIX: [u8; 16] =
        [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    const V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let der = key.serialized_der();
    if der.len() >= 48 && der[..16] == V2_PREFIX {
        let mut v1 = V1_PREFIX.to_vec();
        v1.extend_from_slice(&der[16..48]);
        let pem = pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", v1),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        return SecretPem(pem);
    }
    SecretPem(key.serialize_pem())
}

/// A positive serial of 128 bits, at least 126 of them random (RFC 5280 asks for ≤ 20 octets,
/// CA/B asks for ≥ 64 random bits).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and a fixed length of 16 octets
    SerialNumber::from_slice(&bytes)
}

/// Generates a self-signed CA. Returns the certificate PEM and its key.
pub fn generate_ca(
    common_name: &str,
    organization: &[String],
    alg: KeyAlgorithm,
    now: Timestamp,
    lifetime: std::time::Duration,
) -> Result<(String, SecretPem), PkiError> {
    let key = generate_key(alg)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(now - CLOCK_SKEW_ALLOWANCE);
    params.not_after = to_offset(now + lifetime);
    let cert = params.self_signed(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok((cert.pem(), private_key_pem(&key)))
}

/// An intermediate CA signed by `root` (tests only): certificate PEM and key.
#[cfg(test)]
pub(crate) fn test_intermediate(root: &str, root_key: &str, common_name: &str, now: Timestamp) -> (String, SecretPem) {
    let root_der = parse_pem_certs("root", root).unwrap().remove(0);
    let issuer = Issuer::from_ca_cert_der(&root_der.into(), KeyPair::from_pem(root_key).unwrap()).unwrap();
    let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(now - CLOCK_SKEW_ALLOWANCE);
    params.not_after = to_offset(now + std::time::Duration::from_secs(86400));
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), private_key_pem(&key))
}

/// What is wrong with PEM text, in words that never quote it: the `pem` crate's own messages
/// quote an offending line (or label) verbatim, and that line may be a private key pasted into
/// a certificate field.
fn pem_error_detail(e: &pem::PemError) -> String {
    match e {
        pem::PemError::InvalidHeader(_) => "a line inside a PEM block is not base64 (a stray blank line?)".into(),
        pem::PemError::MismatchedTags(..) => "BEGIN and END labels differ".into(),
        pem::PemError::InvalidData(_) => "the body of a PEM block is not valid base64".into(),
        other => other.to_string(),
    }
}

/// Splits PEM text into DER certificates, refusing anything that is not a clean PEM bundle.
pub fn parse_pem_certs(what: &'static str, text: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let blocks = pem::parse_many(text).map_err(|e| PkiError::BadPem { what, detail: pem_error_detail(&e) })?;
    let certs: Vec<Vec<u8>> =
        blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(|b| b.into_contents()).collect();
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { what });
    }
    for der in &certs {
        X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate { what, detail: e.to_string() })?;
    }
    Ok(certs)
}

pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

pub fn facts_of(der: &[u8]) -> Result<CertFacts, PkiError> {
    let (_, c) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate { what: "certificate", detail: e.to_string() })?;
    Ok(CertFacts {
        fingerprint: fingerprint(der),
        serial: hex::encode(c.raw_serial()),
        subject: c.subject().to_string(),
        not_before: from_asn1(c.validity().not_before),
        not_after: from_asn1(c.validity().not_after),
    })
}

fn key_strength(c: &X509Certificate<'_>) -> Result<(), PkiError> {
    match c.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < 2048 { Err(PkiError::WeakKey(format!("RSA-{bits}"))) } else { Ok(()) }
        }
        Ok(PublicKey::EC(ec)) => {
            let bits = ec.key_size();
            if bits < 256 { Err(PkiError::WeakKey(format!("EC-{bits}"))) } else { Ok(()) }
        }
        Ok(PublicKey::Unknown(_)) | Ok(_) => {
            // Ed25519 is reported as Unknown by x509-parser; allow it by OID.
            let oid = c.public_key().algorithm.algorithm.to_id_string();
            if oid == "1.3.101.112" { Ok(()) } else { Err(PkiError::WeakKey(format!("unsupported key type {oid}"))) }
        }
        Err(_) => Err(PkiError::WeakKey("unreadable public key".into())),
    }
}

fn is_self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

/// Loads and vets a CA: `tls_crt` holds the signing certificate first, then its chain; `ca_crt`
/// optionally holds the root(s). Refuses anything that could not safely sign leaves at `now`.
pub fn load_ca(tls_crt: &str, tls_key: &str, ca_crt: Option<&str>, now: Timestamp) -> Result<SigningCa, PkiError> {
    let chain = parse_pem_certs("tls.crt", tls_crt)?;
    let roots_extra = match ca_crt {
        Some(t) if !t.trim().is_empty() => parse_pem_certs("ca.crt", t)?,
        _ => vec![],
    };
    let (_, signing) = X509Certificate::from_der(&chain[0])
        .map_err(|e| PkiError::BadCertificate { what: "tls.crt", detail: e.to_string() })?;
    if !signing.is_ca() {
        return Err(PkiError::NotACa);
    }
    if let Ok(Some(ku)) = signing.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(PkiError::NoCertSign);
        }
    }
    key_strength(&signing)?;
    let validity = signing.validity();
    let (nb, na) = (from_asn1(validity.not_before), from_asn1(validity.not_after));
    if na <= now {
        return Err(PkiError::Expired { not_after: na.to_string() });
    }
    if nb > now + CLOCK_SKEW_ALLOWANCE {
        return Err(PkiError::NotYetValid { not_before: nb.to_string() });
    }
    let key = KeyPair::from_pem(tls_key).map_err(|_| PkiError::BadKey)?;
    if key.subject_public_key_info() != signing.public_key().raw {
        return Err(PkiError::KeyMismatch);
    }
    // Each certificate in tls.crt must be signed by the next.
    for i in 0..chain.len() - 1 {
        let (_, child) = X509Certificate::from_der(&chain[i])
            .map_err(|e| PkiError::BadCertificate { what: "tls.crt", detail: e.to_string() })?;
        let (_, parent) = X509Certificate::from_der(&chain[i + 1])
            .map_err(|e| PkiError::BadCertificate { what: "tls.crt", detail: e.to_string() })?;
        if child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(PkiError::BrokenChain { index: i });
        }
    }
    // Leaves are sent with every certificate of tls.crt except self-signed roots: the signing
    // certificate itself (when it is an intermediate) and the intermediates above it.
    let mut intermediates: Vec<Vec<u8>> = vec![];
    let mut roots: Vec<Vec<u8>> = roots_extra;
    for der in &chain {
        let (_, c) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::BadCertificate { what: "tls.crt", detail: e.to_string() })?;
        if is_self_signed(&c) {
            if !roots.contains(der) {
                roots.push(der.clone());
            }
        } else {
            intermediates.push(der.clone());
        }
    }
    let mut intermediate_anchor = None;
    if roots.is_empty() {
        // An intermediate without its root: the topmost certificate we have is the only possible
        // anchor (whether that is acceptable is the authority's decision, see the field).
        let top = chain.last().cloned().expect("chain is not empty");
        intermediate_anchor = Some(facts_of(&top)?.subject);
        roots.push(top);
    }
    let facts = facts_of(&chain[0])?;
    let ca = SigningCa {
        cert_pem: der_to_pem(&chain[0]),
        cert_der: chain[0].clone(),
        chain_pem: intermediates.iter().map(|d| der_to_pem(d)).collect(),
        roots_pem: roots.iter().map(|d| der_to_pem(d)).collect(),
        intermediate_anchor,
        facts,
        key: SecretPem(tls_key.to_string()),
    };
    ca.check_signs(&signing, now)?;
    Ok(ca)
}

impl SigningCa {
    pub fn der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Signs a throwaway leaf and checks that it chains to this CA. A leaf's issuer name is
    /// rebuilt from the CA's subject, and not every subject survives that (two DC components, as
    /// Active Directory CAs have, come out as one): such a CA would sign leaves that no verifier
    /// can chain, so it is refused up front instead.
    fn check_signs(&self, signing: &X509Certificate<'_>, now: Timestamp) -> Result<(), PkiError> {
        let unsupported = || PkiError::UnsupportedSubject { subject: signing.subject().to_string() };
        // The certificate library cannot rebuild (and panics on) RDNs with other than one attribute.
        if signing.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(unsupported());
        }
        // ... nor (it panics) attribute types whose OID has no canonical encoding.
        if signing.subject().iter().flat_map(|rdn| rdn.iter()).any(|atv| !encodable_oid(atv.attr_type())) {
            return Err(unsupported());
        }
        let leaf = self
            .issue(&LeafRequest {
                common_name: "mtls-operator self-test".into(),
                spiffe_id: "spiffe://self-test.invalid/".into(),
                dns_names: vec![],
                ip_addresses: vec![],
                usages: vec![Usage::ServerAuth],
                algorithm: KeyAlgorithm::EcdsaP256,
                not_before: now - CLOCK_SKEW_ALLOWANCE,
                not_after: now + std::time::Duration::from_secs(60),
            })
            .map_err(|_| unsupported())?;
        let der = parse_pem_certs("self-test leaf", &leaf.cert_chain_pem)?.remove(0);
        let (_, leaf) = X509Certificate::from_der(&der)
            .map_err(|e| PkiError::BadCertificate { what: "self-test leaf", detail: e.to_string() })?;
        if leaf.issuer().as_raw() != signing.subject().as_raw()
            || leaf.verify_signature(Some(signing.public_key())).is_err()
        {
            return Err(unsupported());
        }
        Ok(())
    }

    /// Issues a leaf with a fresh key. `not_after` is clamped to the CA's own expiry.
    pub fn issue(&self, req: &LeafRequest) -> Result<IssuedLeaf, PkiError> {
        // The certificate library panics instead of failing on some encodings it cannot write;
        // whatever slips past `check_signs` must become an error, never a crashed operator.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.issue_unchecked(req))).unwrap_or_else(|_| {
            Err(PkiError::Generate("the certificate could not be encoded (see the CA certificate's subject)".into()))
        })
    }

    fn issue_unchecked(&self, req: &LeafRequest) -> Result<IssuedLeaf, PkiError> {
        let ca_key = KeyPair::from_pem(self.key.expose()).map_err(|_| PkiError::BadKey)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), ca_key)
            .map_err(|e| PkiError::Generate(format!("reading the CA certificate: {e}")))?;
        let key = generate_key(req.algorithm)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = to_offset(req.not_before);
        params.not_after = to_offset(req.not_after.min(self.facts.not_after));
        let mut ku = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(req.algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096) {
            ku.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.key_usages = ku;
        params.extended_key_usages = req
            .usages
            .iter()
            .map(|u| match u {
                Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        let mut sans = vec![SanType::URI(
            req.spiffe_id.as_str().try_into().map_err(|e| PkiError::Generate(format!("SPIFFE ID: {e}")))?,
        )];
        for d in &req.dns_names {
            sans.push(SanType::DnsName(
                d.as_str().try_into().map_err(|e| PkiError::Generate(format!("DNS name {d:?}: {e}")))?,
            ));
        }
        sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &issuer).map_err(|e| PkiError::Generate(e.to_string()))?;
        let mut chain = cert.pem();
        for pem in &self.chain_pem {
            chain.push_str(pem);
        }
        Ok(IssuedLeaf { facts: facts_of(cert.der())?, cert_chain_pem: chain, key: private_key_pem(&key) })
    }
}

/// Whether an OID can be written canonically (first arc 0–2, second below 40 unless the first is 2).
fn encodable_oid(oid: &x509_parser::oid_registry::Oid<'_>) -> bool {
    let Some(mut arcs) = oid.iter() else { return false };
    match (arcs.next(), arcs.next()) {
        (Some(a), Some(b)) => a < 3 && (a == 2 || b < 40) && b < u64::MAX - 80,
        _ => false,
    }
}

/// What an existing identity Secret holds, for deciding whether it must be re-issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub facts: CertFacts,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usages: Vec<Usage>,
    pub algorithm: Option<KeyAlgorithm>,
    /// The private key matches the certificate.
    pub key_matches: bool,
    /// The DER of the intermediates that follow the leaf in tls.crt.
    pub chain_der: Vec<Vec<u8>>,
    leaf_der: Vec<u8>,
}

impl LeafFacts {
    /// Whether `ca` signed this leaf.
    pub fn signed_by(&self, ca: &SigningCa) -> bool {
        let Ok((_, leaf)) = X509Certificate::from_der(&self.leaf_der) else { return false };
        let Ok((_, ca_cert)) = X509Certificate::from_der(ca.der()) else { return false };
        leaf.issuer().as_raw() == ca_cert.subject().as_raw()
            && leaf.verify_signature(Some(ca_cert.public_key())).is_ok()
    }
}

fn algorithm_of(c: &X509Certificate<'_>) -> Option<KeyAlgorithm> {
    match c.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Some(KeyAlgorithm::Rsa2048),
            3072 => Some(KeyAlgorithm::Rsa3072),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        },
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => Some(KeyAlgorithm::EcdsaP256),
            384 => Some(KeyAlgorithm::EcdsaP384),
            _ => None,
        },
        _ if c.public_key().algorithm.algorithm.to_id_string() == "1.3.101.112" => Some(KeyAlgorithm::Ed25519),
        _ => None,
    }
}

/// Reads a Secret's `tls.crt` and `tls.key`.
pub fn inspect_leaf(tls_crt: &str, tls_key: &str) -> Result<LeafFacts, PkiError> {
    let certs = parse_pem_certs("tls.crt", tls_crt)?;
    let (_, leaf) = X509Certificate::from_der(&certs[0])
        .map_err(|e| PkiError::BadCertificate { what: "tls.crt", detail: e.to_string() })?;
    let mut uris = vec![];
    let mut dns_names = vec![];
    let mut ip_addresses = vec![];
    let mut usages = vec![];
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => ip_addresses.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("length checked"))),
                            16 => ip_addresses.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("length checked"))),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                if eku.server_auth {
                    usages.push(Usage::ServerAuth);
                }
                if eku.client_auth {
                    usages.push(Usage::ClientAuth);
                }
            }
            _ => {}
        }
    }
    let key_matches = KeyPair::from_pem(tls_key).is_ok_and(|k| k.subject_public_key_info() == leaf.public_key().raw);
    Ok(LeafFacts {
        facts: facts_of(&certs[0])?,
        uris,
        dns_names,
        ip_addresses,
        usages,
        algorithm: algorithm_of(&leaf),
        key_matches,
        chain_der: certs[1..].to_vec(),
        leaf_der: certs[0].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn ca(alg: KeyAlgorithm) -> SigningCa {
        let (cert, key) = generate_ca("test CA", &[], alg, now(), std::time::Duration::from_secs(86400 * 365)).unwrap();
        load_ca(&cert, key.expose(), None, now()).unwrap()
    }

    fn request(alg: KeyAlgorithm) -> LeafRequest {
        LeafRequest {
            common_name: "web.ns1".into(),
            spiffe_id: "spiffe://cluster.local/ns/ns1/sa/web".into(),
            dns_names: vec!["web".into(), "web.ns1".into()],
            ip_addresses: vec!["10.0.0.7".parse().unwrap()],
            usages: vec![Usage::ServerAuth, Usage::ClientAuth],
            algorithm: alg,
            not_before: now() - CLOCK_SKEW_ALLOWANCE,
            not_after: now() + std::time::Duration::from_secs(86400),
        }
    }

    #[test]
    fn issues_every_algorithm_with_requested_fields() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        for alg in KeyAlgorithm::ALL {
            let leaf = ca.issue(&request(alg)).unwrap();
            let facts = inspect_leaf(&leaf.cert_chain_pem, leaf.key.expose()).unwrap();
            assert_eq!(facts.algorithm, Some(alg), "{alg:?}");
            assert!(facts.key_matches);
            assert_eq!(facts.uris, vec!["spiffe://cluster.local/ns/ns1/sa/web".to_string()]);
            assert_eq!(facts.dns_names, vec!["web".to_string(), "web.ns1".to_string()]);
            assert_eq!(facts.ip_addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
            assert_eq!(facts.usages, vec![Usage::ServerAuth, Usage::ClientAuth]);
            assert!(facts.signed_by(&ca));
            assert!(leaf.key.expose().starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 for {alg:?}");
            // Serial: 16 octets, positive.
            assert_eq!(facts.facts.serial.len(), 32);
            assert!(u8::from_str_radix(&facts.facts.serial[..2], 16).unwrap() < 0x80);
        }
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let (cert, key) =
            generate_ca("short CA", &[], KeyAlgorithm::EcdsaP256, now(), std::time::Duration::from_secs(3600)).unwrap();
        let ca = load_ca(&cert, key.expose(), None, now()).unwrap();
        let leaf = ca.issue(&request(KeyAlgorithm::EcdsaP256)).unwrap();
        assert_eq!(leaf.facts.not_after, ca.facts.not_after);
    }

    #[test]
    fn secret_pem_never_prints() {
        let (_, key) =
            generate_ca("x", &[], KeyAlgorithm::EcdsaP256, now(), std::time::Duration::from_secs(3600)).unwrap();
        assert!(!format!("{key:?} {key}").contains("PRIVATE"));
        let ca = ca(KeyAlgorithm::Ed25519);
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_unusable_cas() {
        let good = ca(KeyAlgorithm::EcdsaP256);
        let other = ca(KeyAlgorithm::EcdsaP256);
        // key does not match
        assert_eq!(load_ca(&good.cert_pem, other.key.expose(), None, now()).unwrap_err(), PkiError::KeyMismatch);
        // expired
        let later = now() + std::time::Duration::from_secs(86400 * 400);
        assert!(matches!(load_ca(&good.cert_pem, good.key.expose(), None, later), Err(PkiError::Expired { .. })));
        // not a CA: a leaf with its own key
        let leaf = good.issue(&request(KeyAlgorithm::EcdsaP256)).unwrap();
        assert_eq!(load_ca(&leaf.cert_chain_pem, leaf.key.expose(), None, now()).unwrap_err(), PkiError::NotACa);
        // garbage and truncated PEM
        assert!(load_ca("hello", good.key.expose(), None, now()).is_err());
        let truncated = &good.cert_pem[..good.cert_pem.len() / 2];
        assert!(load_ca(truncated, good.key.expose(), None, now()).is_err());
        assert_eq!(load_ca(&good.cert_pem, "garbage", None, now()).unwrap_err(), PkiError::BadKey);
    }

    #[test]
    fn refuses_a_ca_whose_subject_its_leaves_cannot_name() {
        // Made by OpenSSL with -subj /DC=example/DC=com/CN=Int: the second DC would be lost from
        // every leaf's issuer name. Kept in the fuzz corpus (tls.crt, separator, tls.key).
        let input = include_str!("../../fuzz/corpus/ca/openssl-repeated-dc");
        let mut parts = input.split(crate::fuzzing::PART_SEPARATOR);
        let (crt, key) = (parts.next().unwrap(), parts.next().unwrap());
        let e = load_ca(crt, key, None, crate::fuzzing::now()).unwrap_err();
        assert!(matches!(e, PkiError::UnsupportedSubject { .. }), "{e}");
        assert!(e.to_string().contains("DC=example"), "{e}");
        // The same shape with distinct attribute types is fine.
        let input = include_str!("../../fuzz/corpus/ca/openssl-printable-country");
        let mut parts = input.split(crate::fuzzing::PART_SEPARATOR);
        load_ca(parts.next().unwrap(), parts.next().unwrap(), None, crate::fuzzing::now()).unwrap();
    }

    #[test]
    fn errors_never_quote_a_key_pasted_into_a_certificate_field() {
        let good = ca(KeyAlgorithm::EcdsaP256);
        let key = good.key.expose();
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        // A stray blank line makes the lines before it look like PEM headers; a wrong END label.
        let mut with_blank: Vec<&str> = key.lines().collect();
        with_blank.insert(2, "");
        let mismatched = key.replace("END PRIVATE KEY", &format!("END {}", body[0]));
        for text in [with_blank.join("\n"), mismatched, key.replace(&body[0][10..20], "!!!!!!!!!!")] {
            let e = load_ca(&text, key, None, now()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, PkiError::BadPem { .. }), "{msg}");
            for line in &body {
                for w in line.as_bytes().windows(16) {
                    assert!(!msg.contains(std::str::from_utf8(w).unwrap()), "key material in {msg:?}");
                }
            }
        }
    }
}
