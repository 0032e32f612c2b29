//! The extra files an identity Secret carries when its spec asks (DESIGN §3): `keystore.p12` +
//! `truststore.p12`, `keystore.jks` + `truststore.jks` (password from a Secret in the identity's
//! namespace), `tls-combined.pem` and `key.der`. They are derived from `tls.key`, `tls.crt` and
//! `ca.crt` and change exactly when those do: an existing keystore that opens with the current
//! password to exactly the key, chain and bundle it should carry is kept byte for byte.

use std::{collections::BTreeMap, time::SystemTime};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::{Context, error::Error, identity::Problem};
use crate::{
    api::{MtlsIdentity, OutputFormatType, Pkcs12Profile, SecretKeySelector},
    core::keystore::{self, Contents},
};

pub const KEYSTORE_P12: &str = "keystore.p12";
pub const TRUSTSTORE_P12: &str = "truststore.p12";
pub const KEYSTORE_JKS: &str = "keystore.jks";
pub const TRUSTSTORE_JKS: &str = "truststore.jks";
pub const COMBINED_PEM: &str = "tls-combined.pem";
pub const KEY_DER: &str = "key.der";
/// The files that follow the trust bundle (a bundle change rewrites them, nothing else).
pub const TRUSTSTORES: [&str; 2] = [TRUSTSTORE_P12, TRUSTSTORE_JKS];
/// Records how the keystores were asked for (profile, alias; never a password): a change
/// rewrites them even when the old files still open.
pub const ANN_OUTPUTS: &str = "mtls.io/keystore-config";
const DEFAULT_JKS_ALIAS: &str = "certificate";
/// How often an identity with keystores reads its password Secret again.
pub const PASSWORD_RECHECK: std::time::Duration = std::time::Duration::from_secs(600);

/// What the identity asks for, with the passwords read.
#[derive(Default)]
pub struct Outputs {
    pkcs12: Option<(String, Pkcs12Profile)>,
    jks: Option<(String, String)>,
    combined_pem: bool,
    der: bool,
}

impl Outputs {
    pub fn has_keystores(&self) -> bool {
        self.pkcs12.is_some() || self.jks.is_some()
    }

    pub fn any(&self) -> bool {
        self.has_keystores() || self.combined_pem || self.der
    }

    /// The annotation recording the keystore configuration, if any keystore is asked for.
    pub fn config(&self) -> Option<String> {
        if !self.has_keystores() {
            return None;
        }
        let p12 = self.pkcs12.as_ref().map(|(_, p)| format!("pkcs12={p:?}")).unwrap_or_default();
        let jks = self.jks.as_ref().map(|(_, a)| format!("jks={a}")).unwrap_or_default();
        Some(hex::encode(&Sha256::digest(format!("{p12};{jks}"))[..8]))
    }
}

/// Reads the passwords the identity's keystores reference. A password Secret that is missing,
/// lacks the key, holds an empty value or may not be read is a problem the user can fix; the
/// message names the Secret and the key, never the value.
pub async fn resolve(ctx: &Context, id: &MtlsIdentity) -> Result<Result<Outputs, Problem>, Error> {
    let mut out = Outputs::default();
    for f in &id.spec.additional_output_formats {
        match f.type_ {
            OutputFormatType::CombinedPem => out.combined_pem = true,
            OutputFormatType::Der => out.der = true,
        }
    }
    let Some(ks) = &id.spec.keystores else { return Ok(Ok(out)) };
    let ns = id.namespace().unwrap_or_default();
    // Both stores usually name the same password Secret: it is read once.
    let mut read: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    if let Some(p) = ks.pkcs12.as_ref().filter(|p| p.create) {
        let r = &p.password_secret_ref;
        match password(ctx, &mut read, &ns, "spec.keystores.pkcs12.passwordSecretRef", r).await? {
            Ok(pw) => out.pkcs12 = Some((pw, p.profile)),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    if let Some(j) = ks.jks.as_ref().filter(|j| j.create) {
        match password(ctx, &mut read, &ns, "spec.keystores.jks.passwordSecretRef", &j.password_secret_ref).await? {
            Ok(pw) => out.jks = Some((pw, j.alias.clone().unwrap_or_else(|| DEFAULT_JKS_ALIAS.into()))),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    Ok(Ok(out))
}

async fn password(
    ctx: &Context,
    read: &mut BTreeMap<String, Option<Secret>>,
    ns: &str,
    field: &str,
    r: &SecretKeySelector,
) -> Result<Result<String, Problem>, Error> {
    let (name, key) = (&r.name, &r.key);
    let fetched = match read.get(name) {
        Some(s) => Ok(s.clone()),
        None => Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(name).await,
    };
    let secret = match fetched {
        Ok(s) => {
            read.insert(name.clone(), s.clone());
            s
        }
        Err(kube::Error::Api(ae)) if ae.code == 403 => {
            return Ok(Err(Problem {
                reason: "PasswordSecretForbidden",
                message: format!(
                    "the operator may not read Secret {ns}/{name} ({field}): {}; grant it get on Secrets in {ns}",
                    ae.message
                ),
            }));
        }
        Err(e) => return Err(Error::kube("reading keystore password Secret")(e)),
    };
    let Some(secret) = secret else {
        return Ok(Err(Problem {
            reason: "PasswordSecretNotFound",
            message: format!(
                "Secret {ns}/{name} ({field}) does not exist; create it with the keystore password under key {key}"
            ),
        }));
    };
    let value = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice());
    match value.map(std::str::from_utf8) {
        Some(Ok(pw)) if !pw.is_empty() => Ok(Ok(pw.to_string())),
        Some(Ok(_)) => Ok(Err(Problem {
            reason: "PasswordSecretKeyMissing",
            message: format!("key {key} of Secret {ns}/{name} ({field}) is empty; put the keystore password there"),
        })),
        Some(Err(_)) => Ok(Err(Problem {
            reason: "PasswordSecretInvalid",
            message: format!("key {key} of Secret {ns}/{name} ({field}) is not UTF-8 text; a password must be"),
        })),
        None => Ok(Err(Problem {
            reason: "PasswordSecretKeyMissing",
            message: format!("Secret {ns}/{name} ({field}) has no key {key}; put the keystore password there"),
        })),
    }
}

/// The extra files for the key `tls_key` (PKCS#8 PEM), the chain `tls_crt` and the bundle
/// `ca_crt`. Keystores in `existing` that already hold exactly this are reused as they are.
pub fn files(
    outputs: &Outputs,
    tls_key: &str,
    tls_crt: &str,
    ca_crt: &str,
    existing: Option<&Secret>,
) -> Result<BTreeMap<String, ByteString>, Problem> {
    let mut files = BTreeMap::new();
    if !outputs.any() {
        return Ok(files);
    }
    let bad = |m: String| Problem { reason: "KeystoreFailed", message: m };
    let key = pem::parse(tls_key).map_err(|e| bad(format!("the private key cannot be re-encoded: {e}")))?;
    let key = key.contents().to_vec();
    let chain = crate::core::pki::parse_pem_certs("tls.crt", tls_crt).map_err(|e| bad(e.to_string()))?;
    let roots = crate::core::pki::parse_pem_certs("ca.crt", ca_crt).map_err(|e| bad(e.to_string()))?;
    if outputs.combined_pem {
        files.insert(COMBINED_PEM.into(), ByteString(format!("{}{tls_crt}", ensure_newline(tls_key)).into_bytes()));
    }
    if outputs.der {
        files.insert(KEY_DER.into(), ByteString(key.clone()));
    }
    let keyed = Contents::Key { key, chain };
    let trusted = keystore::trust(&roots);
    let same_config = existing.and_then(|s| s.annotations().get(ANN_OUTPUTS)) == outputs.config().as_ref();
    let old =
        |name: &str| existing.filter(|_| same_config).and_then(|s| s.data.as_ref()?.get(name)).map(|b| b.0.as_slice());
    let fail = |e: keystore::KeystoreError| bad(e.to_string());
    if let Some((pw, profile)) = &outputs.pkcs12 {
        for (name, want) in [(KEYSTORE_P12, &keyed), (TRUSTSTORE_P12, &trusted)] {
            let bytes = match old(name) {
                Some(b) if keystore::pkcs12_holds(b, pw, want) => b.to_vec(),
                _ => keystore::pkcs12(want, pw, *profile).map_err(fail)?,
            };
            files.insert(name.into(), ByteString(bytes));
        }
    }
    if let Some((pw, alias)) = &outputs.jks {
        for (name, want) in [(KEYSTORE_JKS, &keyed), (TRUSTSTORE_JKS, &trusted)] {
            let bytes = match old(name) {
                Some(b) if keystore::jks_holds(b, pw, alias, want) => b.to_vec(),
                _ => keystore::jks(want, pw, alias, SystemTime::now()).map_err(fail)?,
            };
            files.insert(name.into(), ByteString(bytes));
        }
    }
    Ok(files)
}

/// Every file this module may add to a Secret.
pub const ALL: [&str; 6] = [KEYSTORE_P12, TRUSTSTORE_P12, KEYSTORE_JKS, TRUSTSTORE_JKS, COMBINED_PEM, KEY_DER];

/// How a Secret rewritten without a new certificate differs only in its extra files.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The spec asks for other files, or for them differently (names the files now carried).
    Asked(String),
    /// The same files, written again: a new password, or files someone altered.
    Rewritten,
}

/// `Some` when `want` differs from `have` in the extra files and their annotation only.
pub fn change(have: Option<&Secret>, want: &Secret) -> Option<Change> {
    let have = have?;
    let strip = |s: &Secret| {
        let mut s = s.clone();
        for f in ALL {
            s.data.get_or_insert_default().remove(f);
        }
        s.metadata.annotations.get_or_insert_default().remove(ANN_OUTPUTS);
        (s.data, s.metadata.annotations, s.metadata.labels)
    };
    if strip(have) != strip(want) {
        return None;
    }
    let files = |s: &Secret| -> Vec<&str> {
        ALL.into_iter().filter(|f| s.data.as_ref().is_some_and(|d| d.contains_key(*f))).collect()
    };
    let config = |s: &Secret| s.annotations().get(ANN_OUTPUTS).cloned();
    if files(have) != files(want) || config(have) != config(want) {
        let now = files(want);
        Some(Change::Asked(if now.is_empty() { "no extra files".into() } else { now.join(", ") }))
    } else {
        Some(Change::Rewritten)
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(files: &[(&str, &[u8])], config: Option<&str>) -> Secret {
        let mut s = Secret::default();
        let mut data: BTreeMap<String, ByteString> = [("tls.crt", b"crt".as_slice()), ("tls.key", b"key")]
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect();
        data.extend(files.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))));
        s.data = Some(data);
        if let Some(c) = config {
            s.metadata.annotations = Some([(ANN_OUTPUTS.to_string(), c.to_string())].into());
        }
        s
    }

    #[test]
    fn tells_a_spec_change_from_a_rewrite_from_a_repair() {
        let plain = secret(&[], None);
        let with = secret(&[(KEYSTORE_P12, b"a"), (TRUSTSTORE_P12, b"b")], Some("c1"));
        assert_eq!(change(Some(&plain), &with), Some(Change::Asked("keystore.p12, truststore.p12".into())));
        assert_eq!(change(Some(&with), &plain), Some(Change::Asked("no extra files".into())));
        let reprofiled = secret(&[(KEYSTORE_P12, b"a"), (TRUSTSTORE_P12, b"b")], Some("c2"));
        assert!(matches!(change(Some(&with), &reprofiled), Some(Change::Asked(_))));
        let rewritten = secret(&[(KEYSTORE_P12, b"x"), (TRUSTSTORE_P12, b"y")], Some("c1"));
        assert_eq!(change(Some(&with), &rewritten), Some(Change::Rewritten));
        let mut tampered = with.clone();
        tampered.data.as_mut().unwrap().insert("tls.key".into(), ByteString(b"other".to_vec()));
        assert_eq!(change(Some(&tampered), &with), None, "a changed tls.key is a repair");
        assert_eq!(change(None, &with), None);
    }
}
