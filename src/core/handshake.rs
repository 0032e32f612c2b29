//! Would a mutual-TLS handshake succeed? The checks a TLS peer makes on the certificate chain it
//! is shown, done with rustls' own verifier (webpki): the chain leads to a CA in the verifier's
//! trust bundle, each certificate is valid at `now`, the leaf carries the extended key usage for
//! its role and, for a server, the name the client dials. Pure: the caller passes the time and the
//! PEM it read. `kubectl mtls check` is built on this.

use std::fmt;

use jiff::Timestamp;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::pki::{PkiError, parse_pem_certs};

/// Which side of the handshake presents the certificate being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Presented by the server, verified by the client (EKU serverAuth, the dialled name).
    Server,
    /// Presented by the client, verified by the server (EKU clientAuth).
    Client,
}

impl Role {
    fn eku(self) -> &'static str {
        match self {
            Role::Server => "serverAuth",
            Role::Client => "clientAuth",
        }
    }
}

/// Why a peer would reject the certificate: the usual mTLS troubleshooting table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The chain does not lead to any CA in the verifier's bundle.
    UnknownCa,
    /// The server certificate is not valid for the name the client dials.
    NameMismatch { name: String },
    /// A certificate of the chain expired.
    Expired { not_after: Timestamp },
    /// A certificate of the chain is not valid yet (clock skew, or issued for later).
    NotYetValid { not_before: Timestamp },
    /// The leaf's extended key usage does not allow this role.
    WrongUsage { role: Role },
    /// The certificates or the bundle cannot be read.
    Unreadable(String),
    /// Anything else webpki refuses (named as webpki names it).
    Other(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownCa => write!(
                f,
                "unknown CA: the chain does not lead to any CA in the peer's trust bundle (the bundle is older than the issuer, or the two use different authorities)"
            ),
            Problem::NameMismatch { name } => {
                write!(
                    f,
                    "name mismatch: the certificate is not valid for {name} (add it to the identity's serviceNames or dnsNames)"
                )
            }
            Problem::Expired { not_after } => write!(f, "expired: a certificate of the chain expired at {not_after}"),
            Problem::NotYetValid { not_before } => write!(
                f,
                "not yet valid: a certificate of the chain is valid only from {not_before} (is a clock wrong?)"
            ),
            Problem::WrongUsage { role } => write!(
                f,
                "wrong usage: the certificate's extended key usage lacks {} (add it to the identity's usages)",
                role.eku()
            ),
            Problem::Unreadable(detail) => write!(f, "unreadable: {detail}"),
            Problem::Other(detail) => write!(f, "refused: {detail}"),
        }
    }
}

fn from_unix(t: UnixTime) -> Timestamp {
    Timestamp::from_second(t.as_secs() as i64).unwrap_or(Timestamp::MAX)
}

/// Verifies `chain_pem` (leaf first, then any intermediates, as in `tls.crt`) the way a peer
/// holding `trust_pem` (a `ca.crt` bundle) would at `now`, for `role`; for a server, also against
/// `server_name` (a DNS name or an IP address) when the client dials by name.
pub fn verify_peer(
    chain_pem: &str,
    trust_pem: &str,
    role: Role,
    server_name: Option<&str>,
    now: Timestamp,
) -> Result<(), Problem> {
    let unreadable = |e: PkiError| Problem::Unreadable(e.to_string());
    let chain: Vec<CertificateDer<'static>> =
        parse_pem_certs("tls.crt", chain_pem).map_err(unreadable)?.into_iter().map(CertificateDer::from).collect();
    let roots: Vec<CertificateDer<'static>> =
        parse_pem_certs("ca.crt", trust_pem).map_err(unreadable)?.into_iter().map(CertificateDer::from).collect();
    let anchors = roots
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::Unreadable(format!("ca.crt: {e}")))?;
    let leaf = EndEntityCert::try_from(&chain[0]).map_err(|e| Problem::Unreadable(format!("tls.crt: {e}")))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_second().max(0) as u64));
    let usage = match role {
        Role::Server => KeyUsage::server_auth(),
        Role::Client => KeyUsage::client_auth(),
    };
    leaf.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &chain[1..], time, usage, None, None)
        .map_err(|e| problem_of(e, role, ""))?;
    if let Some(name) = server_name {
        let parsed = ServerName::try_from(name)
            .map_err(|_| Problem::Unreadable(format!("{name:?} is not a DNS name or an IP address")))?;
        leaf.verify_is_valid_for_subject_name(&parsed).map_err(|e| problem_of(e, role, name))?;
    }
    Ok(())
}

fn problem_of(e: webpki::Error, role: Role, name: &str) -> Problem {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => Problem::UnknownCa,
        E::CertNotValidForName(_) => Problem::NameMismatch { name: name.to_string() },
        E::CertExpired { not_after, .. } => Problem::Expired { not_after: from_unix(not_after) },
        E::CertNotValidYet { not_before, .. } => Problem::NotYetValid { not_before: from_unix(not_before) },
        E::RequiredEkuNotFoundContext(_) => Problem::WrongUsage { role },
        #[allow(deprecated)]
        E::RequiredEkuNotFound => Problem::WrongUsage { role },
        other => Problem::Other(format!("{other:?}")),
    }
}

/// Which of `candidates` (DER) signed the certificate `der`: its index, if any.
pub fn issuer_among(der: &[u8], candidates: &[Vec<u8>]) -> Option<usize> {
    use x509_parser::{certificate::X509Certificate, prelude::FromDer};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    candidates.iter().position(|c| {
        X509Certificate::from_der(c).is_ok_and(|(_, ca)| {
            cert.issuer().as_raw() == ca.subject().as_raw() && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        api::{KeyAlgorithm, Usage},
        core::pki::{LeafRequest, SigningCa, generate_ca, load_ca},
    };

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn ca(name: &str) -> SigningCa {
        let (cert, key) = generate_ca(
            name,
            &[],
            KeyAlgorithm::EcdsaP256,
            now() - Duration::from_secs(3600),
            Duration::from_secs(86400 * 30),
        )
        .unwrap();
        load_ca(&cert, key.expose(), None, now()).unwrap()
    }

    fn leaf(ca: &SigningCa, usages: Vec<Usage>, hours: (i64, i64)) -> String {
        let h = |n: i64| now() + jiff::SignedDuration::from_hours(n);
        ca.issue(&LeafRequest {
            common_name: "web".into(),
            spiffe_id: "spiffe://cluster.local/ns/a/sa/web".into(),
            dns_names: vec!["web.a.svc".into()],
            ip_addresses: vec![],
            usages,
            algorithm: KeyAlgorithm::EcdsaP256,
            not_before: h(hours.0),
            not_after: h(hours.1),
        })
        .unwrap()
        .cert_chain_pem
    }

    #[test]
    fn each_row_of_the_troubleshooting_table() {
        let (a, b) = (ca("A"), ca("B"));
        let both = vec![Usage::ServerAuth, Usage::ClientAuth];
        let good = leaf(&a, both.clone(), (-1, 1));
        let trust_a = a.cert_pem.clone();
        assert_eq!(verify_peer(&good, &trust_a, Role::Server, Some("web.a.svc"), now()), Ok(()));
        assert_eq!(verify_peer(&good, &trust_a, Role::Client, None, now()), Ok(()));
        // A bundle with both CAs (mid-rotation) verifies it too; one with only B does not.
        let trust_ab = format!("{}{}", b.cert_pem, a.cert_pem);
        assert_eq!(verify_peer(&good, &trust_ab, Role::Server, None, now()), Ok(()));
        assert_eq!(verify_peer(&good, &b.cert_pem, Role::Server, None, now()), Err(Problem::UnknownCa));
        let mismatch = verify_peer(&good, &trust_a, Role::Server, Some("db.a.svc"), now()).unwrap_err();
        assert!(matches!(&mismatch, Problem::NameMismatch { name } if name.contains("db.a.svc")), "{mismatch:?}");
        let expired = verify_peer(&good, &trust_a, Role::Server, None, now() + jiff::SignedDuration::from_hours(2));
        assert!(matches!(expired, Err(Problem::Expired { .. })), "{expired:?}");
        let early = verify_peer(&leaf(&a, both, (1, 2)), &trust_a, Role::Server, None, now());
        assert!(matches!(early, Err(Problem::NotYetValid { .. })), "{early:?}");
        let server_only = leaf(&a, vec![Usage::ServerAuth], (-1, 1));
        assert_eq!(
            verify_peer(&server_only, &trust_a, Role::Client, None, now()),
            Err(Problem::WrongUsage { role: Role::Client })
        );
        assert_eq!(verify_peer(&server_only, &trust_a, Role::Server, None, now()), Ok(()));
        assert!(matches!(verify_peer("junk", &trust_a, Role::Server, None, now()), Err(Problem::Unreadable(_))));
        // Every message says what to do, not only what failed.
        assert!(Problem::WrongUsage { role: Role::Client }.to_string().contains("clientAuth"));
    }

    #[test]
    fn finds_the_issuer() {
        let (a, b) = (ca("A"), ca("B"));
        let good = leaf(&a, vec![Usage::ServerAuth], (-1, 1));
        let der = parse_pem_certs("t", &good).unwrap().remove(0);
        let cands = vec![b.der().to_vec(), a.der().to_vec()];
        assert_eq!(issuer_among(&der, &cands), Some(1));
        assert_eq!(issuer_among(&der, &cands[..1]), None);
    }
}
