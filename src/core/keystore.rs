//! Keystores and truststores for readers that do not take PEM: PKCS#12 (p12-keystore, pure Rust,
//! writes PBES2/AES-256 with an HMAC-SHA256 MAC and the legacy PBES1 ciphers old Java readers
//! need) and JKS (jks, pure Rust, the only maintained JKS writer). Both put random salts into
//! every file they write, so a file cannot be compared with a fresh one byte for byte: `holds`
//! opens an existing file with its password and says whether it carries exactly what it should,
//! and the caller keeps it when it does (nothing is rewritten when nothing changed).

use std::time::SystemTime;

use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStoreEntry, LocalKeyId, MacAlgorithm, PrivateKey};
use sha2::{Digest, Sha256};

use crate::api::Pkcs12Profile;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("cannot build the PKCS#12 file: {0}")]
    Pkcs12(String),
    #[error("cannot build the JKS file: {0}")]
    Jks(String),
}

/// Iterations of the PKCS#12 key derivation and MAC (OpenSSL 3 and keytool write 2048/10000;
/// NIST SP 800-132 asks for at least 1000).
const ITERATIONS: u32 = 10_000;

/// What a store carries: the private key (PKCS#8 DER) with its chain, leaf first, or the
/// trusted certificates (DER, in bundle order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Key { key: Vec<u8>, chain: Vec<Vec<u8>> },
    Trust(Vec<Vec<u8>>),
}

/// A stable alias for a trusted certificate: its SHA-256 fingerprint, shortened (aliases are
/// case-insensitive in JKS, so lower-case hex).
fn trust_alias(der: &[u8]) -> String {
    format!("ca-{}", &hex::encode(Sha256::digest(der))[..16])
}

fn algorithm(profile: Pkcs12Profile) -> (EncryptionAlgorithm, MacAlgorithm) {
    match profile {
        Pkcs12Profile::Modern2023 => (EncryptionAlgorithm::PbeWithHmacSha256AndAes256, MacAlgorithm::HmacSha256),
        Pkcs12Profile::LegacyDes => (EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc, MacAlgorithm::HmacSha1),
        Pkcs12Profile::LegacyRc2 => (EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc, MacAlgorithm::HmacSha1),
    }
}

/// A PKCS#12 file with `contents`, encrypted and MAC'd with `password` as `profile` says.
pub fn pkcs12(contents: &Contents, password: &str, profile: Pkcs12Profile) -> Result<Vec<u8>, KeystoreError> {
    let err = |e: p12_keystore::error::Error| KeystoreError::Pkcs12(e.to_string());
    let mut store = p12_keystore::KeyStore::new();
    match contents {
        Contents::Key { key, chain } => {
            let certs = chain.iter().map(|c| Certificate::from_der(c)).collect::<Result<Vec<_>, _>>().map_err(err)?;
            let key = PrivateKey::from_der(key).map_err(err)?;
            // The local key id ties the key to its certificate; the leaf's fingerprint, as
            // OpenSSL and keytool use a digest of the certificate.
            let id = LocalKeyId(Sha256::digest(&chain[0]).to_vec());
            store.add_entry(
                "certificate",
                KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(id, key, certs)),
            );
        }
        Contents::Trust(roots) => {
            for der in roots {
                store
                    .add_entry(&trust_alias(der), KeyStoreEntry::Certificate(Certificate::from_der(der).map_err(err)?));
            }
        }
    }
    let (enc, mac) = algorithm(profile);
    store
        .writer(password)
        .encryption_algorithm(enc)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(mac)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(err)
}

/// What a PKCS#12 file carries, if `password` opens it (MAC verified, every bag decrypted).
pub fn open_pkcs12(data: &[u8], password: &str) -> Option<Contents> {
    let store = p12_keystore::KeyStore::from_pkcs12(data, password, p12_keystore::Pkcs12ImportPolicy::Strict).ok()?;
    if let Some((_, chain)) = store.private_key_chain() {
        if store.entries_len() != 1 {
            return None;
        }
        return Some(Contents::Key {
            key: chain.key().as_der().to_vec(),
            chain: chain.certs().iter().map(|c| c.as_der().to_vec()).collect(),
        });
    }
    let mut trusted: Vec<(String, Vec<u8>)> = store
        .entries()
        .map(|(alias, e)| match e {
            KeyStoreEntry::Certificate(c) => Some((alias.clone(), c.as_der().to_vec())),
            _ => None,
        })
        .collect::<Option<_>>()?;
    trusted.sort();
    Some(Contents::Trust(trusted.into_iter().map(|(_, der)| der).collect()))
}

/// Java's password bytes: the UTF-16BE of its characters (jks's default widens each byte,
/// which differs from keytool for anything past ASCII).
fn java_password(p: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(p).encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn jks_options() -> jks::KeyStoreOptions {
    jks::KeyStoreOptions {
        ordered_aliases: true,
        case_exact_aliases: false,
        min_password_len: 1,
        password_bytes: java_password,
        ..Default::default()
    }
}

/// A JKS file with `contents`; a key entry is stored under `alias`, protected (like the store)
/// by `password`.
pub fn jks(contents: &Contents, password: &str, alias: &str, created: SystemTime) -> Result<Vec<u8>, KeystoreError> {
    let err = |e: jks::KeyStoreError| KeystoreError::Jks(e.to_string());
    let x509 = |der: &Vec<u8>| jks::Certificate { cert_type: "X.509".into(), content: der.clone() };
    let mut store = jks::KeyStore::with_options(jks_options());
    match contents {
        Contents::Key { key, chain } => {
            let entry = jks::PrivateKeyEntry {
                creation_time: created,
                private_key: key.clone(),
                certificate_chain: chain.iter().map(x509).collect(),
            };
            store.set_private_key_entry(alias, entry, password.as_bytes()).map_err(err)?;
        }
        Contents::Trust(roots) => {
            for der in roots {
                let entry = jks::TrustedCertificateEntry { creation_time: created, certificate: x509(der) };
                store.set_trusted_certificate_entry(&trust_alias(der), entry).map_err(err)?;
            }
        }
    }
    let mut out = Vec::new();
    store.store(&mut out, password.as_bytes()).map_err(err)?;
    Ok(out)
}

/// What a JKS file carries, if `password` opens it (integrity digest verified, key decrypted).
pub fn open_jks(data: &[u8], password: &str) -> Option<Contents> {
    let mut store = jks::KeyStore::with_options(jks_options());
    store.load(data, password.as_bytes()).ok()?;
    let aliases = store.aliases();
    if let [alias] = aliases.as_slice()
        && store.is_private_key_entry(alias)
    {
        let e = store.get_private_key_entry(alias, password.as_bytes()).ok()?;
        return Some(Contents::Key {
            key: e.private_key,
            chain: e.certificate_chain.into_iter().map(|c| c.content).collect(),
        });
    }
    let mut trusted = Vec::new();
    for alias in &aliases {
        trusted.push((alias.clone(), store.get_trusted_certificate_entry(alias).ok()?.certificate.content));
    }
    trusted.sort();
    Some(Contents::Trust(trusted.into_iter().map(|(_, der)| der).collect()))
}

/// Trusted certificates in the order both readers return them (by alias).
pub fn trust(roots: &[Vec<u8>]) -> Contents {
    let mut sorted: Vec<(String, Vec<u8>)> = roots.iter().map(|d| (trust_alias(d), d.clone())).collect();
    sorted.sort();
    sorted.dedup();
    Contents::Trust(sorted.into_iter().map(|(_, d)| d).collect())
}

/// Whether the PKCS#12 `data` opens with `password` to exactly `want`.
pub fn pkcs12_holds(data: &[u8], password: &str, want: &Contents) -> bool {
    open_pkcs12(data, password).as_ref() == Some(want)
}

/// Whether the JKS `data` opens with `password` to exactly `want` (a key entry under `alias`).
pub fn jks_holds(data: &[u8], password: &str, alias: &str, want: &Contents) -> bool {
    if matches!(want, Contents::Key { .. }) {
        let mut store = jks::KeyStore::with_options(jks_options());
        if store.load(data, password.as_bytes()).is_err() || store.aliases() != [alias.to_lowercase()] {
            return false;
        }
    }
    open_jks(data, password).as_ref() == Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (key.serialize_der(), cert.der().to_vec())
    }

    /// The secret scalar of a P-256 PKCS#8 key (the public point also appears in the certificate).
    fn scalar(pkcs8: &[u8]) -> &[u8] {
        let at = pkcs8.windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).expect("an ECPrivateKey") + 5;
        &pkcs8[at..at + 32]
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A leaf signed by an intermediate signed by a root: (leaf key, [leaf, intermediate], root).
    fn chain() -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
        let ca = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        };
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root = ca("root").self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(ca("root"), root_key);
        let int_key = rcgen::KeyPair::generate().unwrap();
        let int = ca("intermediate").signed_by(&int_key, &root_issuer).unwrap();
        let int_issuer = rcgen::Issuer::new(ca("intermediate"), int_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["web.example".into()])
            .unwrap()
            .signed_by(&leaf_key, &int_issuer)
            .unwrap();
        (leaf_key.serialize_der(), vec![leaf.der().to_vec(), int.der().to_vec()], root.der().to_vec())
    }

    #[test]
    fn pkcs12_round_trips_every_profile_and_refuses_a_wrong_password() {
        let (key, chain, ca) = chain();
        let want = Contents::Key { key, chain };
        for profile in [Pkcs12Profile::Modern2023, Pkcs12Profile::LegacyDes, Pkcs12Profile::LegacyRc2] {
            let p12 = pkcs12(&want, "s3cret-pass", profile).unwrap();
            assert!(pkcs12_holds(&p12, "s3cret-pass", &want), "{profile:?}");
            assert!(!pkcs12_holds(&p12, "other-pass", &want), "{profile:?}: a wrong password opens nothing");
            // Encrypted: the key's DER is not in the file.
            let Contents::Key { key, .. } = &want else { unreachable!() };
            assert!(!contains(&p12, scalar(key)), "{profile:?}: the key is in the clear");
        }
        let t = trust(&[ca.clone()]);
        let p12 = pkcs12(&t, "changeit", Pkcs12Profile::Modern2023).unwrap();
        assert!(pkcs12_holds(&p12, "changeit", &t));
        assert!(!pkcs12_holds(&p12, "changeit", &trust(&[ca, cert("other").1])), "a different member set");
    }

    #[test]
    fn jks_round_trips_keys_and_trust_and_refuses_a_wrong_password() {
        let (key, chain, ca) = chain();
        let leaf = chain[0].clone();
        let want = Contents::Key { key: key.clone(), chain };
        let file = jks(
            &want,
            "pässword",
            "certificate",
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        )
        .unwrap();
        assert!(jks_holds(&file, "pässword", "certificate", &want));
        assert!(!jks_holds(&file, "pässword", "other", &want), "another alias is asked for");
        assert!(!jks_holds(&file, "password", "certificate", &want));
        assert!(!contains(&file, scalar(&key)), "the key is in the clear");

        let (_, ca2) = cert("ca2");
        let t = trust(&[ca2.clone(), ca.clone()]);
        let file =
            jks(&t, "changeit", "unused", SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000))
                .unwrap();
        assert!(jks_holds(&file, "changeit", "unused", &t));
        assert_eq!(open_jks(&file, "changeit"), Some(trust(&[ca, ca2])), "order does not matter");
        let stale = trust(&[leaf]);
        assert!(!jks_holds(&file, "changeit", "unused", &stale));
    }

    #[test]
    fn garbage_opens_to_nothing() {
        for data in [&b""[..], b"not a keystore", &[0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2, 0, 0, 0, 9]] {
            assert_eq!(open_pkcs12(data, "x"), None);
            assert_eq!(open_jks(data, "x"), None);
        }
    }
}
