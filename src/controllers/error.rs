//! The operator's error type. Each variant maps to a bounded metric label; messages carry
//! context (which object, which API call) and never key material.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Kube {
        context: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("certificate error: {0}")]
    Pki(#[from] crate::core::pki::PkiError),
    #[error("truststore error: {0}")]
    Keystore(#[from] crate::core::keystore::KeystoreError),
}

impl Error {
    /// `map_err` helper that names the API call that failed.
    pub fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { context, source }
    }

    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { source: kube::Error::Api(ae), .. } if ae.code == 409 => "Conflict",
            Error::Kube { source: kube::Error::Api(_), .. } => "ApiError",
            Error::Kube { .. } => "ApiUnreachable",
            Error::Pki(_) => "IssuanceFailed",
            Error::Keystore(_) => "TruststoreFailed",
        }
    }

    /// Whether the API itself is failing (unreachable, 5xx), not this request.
    pub fn is_outage(&self) -> bool {
        matches!(self, Error::Kube { source, .. } if is_outage(source))
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(ae), .. } if ae.code == 409)
    }
}

/// Whether an error from a Kubernetes call means the API itself is failing (unreachable, timing
/// out, or answering 5xx), rather than this request being wrong.
pub fn is_outage(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(ae) => ae.code >= 500,
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::HttpError(_)
        | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}
