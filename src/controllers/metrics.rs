//! Prometheus metrics. Label sets are bounded: authority names, reasons, phases and identity
//! names (one series per identity for its expiry) — never a serial number or a pod name.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    pub authority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuanceLabels {
    pub authority: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotReadyLabels {
    pub namespace: String,
    pub name: String,
    pub authority: String,
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub up: Gauge,
    pub issuances: Family<IssuanceLabels, Counter>,
    pub issuance_seconds: Histogram,
    pub identity_expiry: Family<IdentityLabels, Gauge>,
    pub identity_renewal: Family<IdentityLabels, Gauge>,
    pub identity_failures: Family<IdentityLabels, Gauge>,
    pub identity_last_failure: Family<IdentityLabels, Gauge>,
    /// 1 per identity that is not Ready, labelled with the reason; only those have a series.
    pub identity_not_ready: Family<NotReadyLabels, Gauge>,
    /// The reason each not-Ready identity's series carries (to remove it when the reason changes).
    not_ready_reasons: std::sync::Mutex<std::collections::HashMap<IdentityLabels, NotReadyLabels>>,
    pub leader: Gauge,
    pub phase_start: Family<AuthorityLabels, Gauge>,
    pub auto_rotate_at: Family<AuthorityLabels, Gauge>,
    pub ca_expiry: Family<AuthorityLabels, Gauge>,
    pub bundle_version: Family<AuthorityLabels, Gauge>,
    pub bundle_namespaces: Family<RolloutLabels, Gauge>,
    pub bundle_secrets: Family<RolloutLabels, Gauge>,
    pub bundle_writes: Family<AuthorityLabels, Counter>,
    pub phase: Family<PhaseLabels, Gauge>,
    pub transitions: Family<PhaseLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub authority: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub authority: String,
    /// `current` (holding the current version) or `total`.
    pub state: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mtls_operator");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            up: Gauge::default(),
            issuances: Family::default(),
            issuance_seconds: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            identity_expiry: Family::default(),
            identity_renewal: Family::default(),
            identity_failures: Family::default(),
            identity_last_failure: Family::default(),
            identity_not_ready: Family::default(),
            not_ready_reasons: Default::default(),
            leader: Gauge::default(),
            phase_start: Family::default(),
            auto_rotate_at: Family::default(),
            ca_expiry: Family::default(),
            bundle_version: Family::default(),
            bundle_namespaces: Family::default(),
            bundle_secrets: Family::default(),
            bundle_writes: Family::default(),
            phase: Family::default(),
            transitions: Family::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciliations run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations and not-ready results, by reason",
            m.reconcile_errors.clone(),
        );
        registry.register("up", "1 while the operator is connected and its caches are synced", m.up.clone());
        registry.register(
            "issuances",
            "Certificates issued, by authority and kind (initial, renewal, reissue, repair)",
            m.issuances.clone(),
        );
        registry.register(
            "issuance_duration_seconds",
            "Time to generate a key and sign a leaf",
            m.issuance_seconds.clone(),
        );
        registry.register(
            "identity_expiry_timestamp_seconds",
            "notAfter of each identity's current certificate (Unix time)",
            m.identity_expiry.clone(),
        );
        registry.register(
            "identity_renewal_timestamp_seconds",
            "When each identity's certificate will be renewed (Unix time)",
            m.identity_renewal.clone(),
        );
        registry.register(
            "identity_consecutive_failures",
            "Consecutive failed reconciles of each identity that has failed (0 once it succeeds again)",
            m.identity_failures.clone(),
        );
        registry.register(
            "identity_last_failure_timestamp_seconds",
            "When each identity last failed (Unix time)",
            m.identity_last_failure.clone(),
        );
        registry.register(
            "ca_expiry_timestamp_seconds",
            "notAfter of each authority's signing CA (Unix time)",
            m.ca_expiry.clone(),
        );
        registry.register(
            "identity_not_ready",
            "1 for each identity that is not Ready, with its authority and the Ready condition's reason (no series while Ready)",
            m.identity_not_ready.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica runs the controllers (holds the leader-election Lease, or runs without election)",
            m.leader.clone(),
        );
        registry.register(
            "authority_phase_start_timestamp_seconds",
            "When each authority entered its current rotation phase (Unix seconds)",
            m.phase_start.clone(),
        );
        registry.register(
            "ca_auto_rotate_timestamp_seconds",
            "When each authority's active CA is due for rotation: its expiry minus rotation.autoRotateBefore (Unix seconds)",
            m.auto_rotate_at.clone(),
        );
        registry.register("bundle_version", "Current trust bundle version of each authority", m.bundle_version.clone());
        registry.register(
            "bundle_namespaces",
            "Target namespaces of each authority's bundle ConfigMap: state=current holds the current version, state=total",
            m.bundle_namespaces.clone(),
        );
        registry.register(
            "bundle_secrets",
            "Identity Secrets of each authority: state=current carries the current bundle version, state=total",
            m.bundle_secrets.clone(),
        );
        registry.register(
            "bundle_writes",
            "API writes made to publish trust bundles (ConfigMaps created, updated, deleted)",
            m.bundle_writes.clone(),
        );
        registry.register(
            "authority_phase",
            "1 for each authority's current rotation phase, 0 for the others",
            m.phase.clone(),
        );
        registry.register(
            "rotation_transitions",
            "Rotation phase transitions, by authority and phase entered",
            m.transitions.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn reconcile_error(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    pub fn observe_issuance(&self, authority: &str, kind: &str, took: Duration) {
        self.issuances.get_or_create(&IssuanceLabels { authority: authority.into(), kind: kind.into() }).inc();
        self.issuance_seconds.observe(took.as_secs_f64());
    }

    pub fn set_identity(&self, namespace: &str, name: &str, not_after: i64, renewal: i64) {
        let l = IdentityLabels { namespace: namespace.into(), name: name.into() };
        self.identity_expiry.get_or_create(&l).set(not_after);
        self.identity_renewal.get_or_create(&l).set(renewal);
        // Only identities that have failed have a failure series (reset to 0 here); at 10,000
        // healthy identities a series of zeros each would be memory and scrape size for nothing.
        if let Some(g) = self.identity_failures.get(&l) {
            g.set(0);
        }
        self.identity_ready(&l);
    }

    /// The identity is not Ready, for `reason`: its one not-Ready series says so.
    pub fn identity_not_ready(&self, namespace: &str, name: &str, authority: &str, reason: &str) {
        let l = IdentityLabels { namespace: namespace.into(), name: name.into() };
        let want = NotReadyLabels {
            namespace: namespace.into(),
            name: name.into(),
            authority: authority.into(),
            reason: reason.into(),
        };
        let mut reasons = self.not_ready_reasons.lock().expect("not-ready map lock poisoned");
        if let Some(old) = reasons.insert(l, want.clone()).filter(|old| *old != want) {
            self.identity_not_ready.remove(&old);
        }
        self.identity_not_ready.get_or_create(&want).set(1);
    }

    fn identity_ready(&self, l: &IdentityLabels) {
        if let Some(old) = self.not_ready_reasons.lock().expect("not-ready map lock poisoned").remove(l) {
            self.identity_not_ready.remove(&old);
        }
    }

    pub fn identity_failed(&self, namespace: &str, name: &str, consecutive: u32, at: i64) {
        let l = IdentityLabels { namespace: namespace.into(), name: name.into() };
        self.identity_failures.get_or_create(&l).set(i64::from(consecutive));
        self.identity_last_failure.get_or_create(&l).set(at);
    }

    pub fn forget_identity(&self, namespace: &str, name: &str) {
        let l = IdentityLabels { namespace: namespace.into(), name: name.into() };
        self.identity_expiry.remove(&l);
        self.identity_renewal.remove(&l);
        self.identity_failures.remove(&l);
        self.identity_last_failure.remove(&l);
        self.identity_ready(&l);
    }

    pub fn set_bundle_rollout(&self, authority: &str, r: &crate::core::bundle::Rollout) {
        let l = |state: &str| RolloutLabels { authority: authority.into(), state: state.into() };
        self.bundle_namespaces.get_or_create(&l("current")).set(i64::from(r.namespaces_up_to_date));
        self.bundle_namespaces.get_or_create(&l("total")).set(i64::from(r.namespaces_total));
        self.bundle_secrets.get_or_create(&l("current")).set(i64::from(r.secrets_up_to_date));
        self.bundle_secrets.get_or_create(&l("total")).set(i64::from(r.secrets_total));
        self.bundle_writes.get_or_create(&AuthorityLabels { authority: authority.into() }).inc_by(u64::from(r.writes));
    }

    /// Sets the phase gauges: which phase, since when (Unix seconds); a change of phase also
    /// counts a transition.
    pub fn phase_changed(&self, authority: &str, current: &str, since: i64) {
        self.phase_start.get_or_create(&AuthorityLabels { authority: authority.into() }).set(since);
        for p in crate::api::Phase::ALL {
            let l = PhaseLabels { authority: authority.into(), phase: p.as_str().into() };
            let was = self.phase.get_or_create(&l).get();
            let now = i64::from(p.as_str() == current);
            if now == 1 && was == 0 && p != crate::api::Phase::Stable {
                self.transitions.get_or_create(&l).inc();
            }
            self.phase.get_or_create(&l).set(now);
        }
    }

    /// A deleted authority's gauges go (a CA-expiry series left behind would alert on a CA that
    /// no longer exists); its counters stay, as counters do.
    pub fn forget_authority(&self, authority: &str) {
        let l = AuthorityLabels { authority: authority.into() };
        self.ca_expiry.remove(&l);
        self.bundle_version.remove(&l);
        self.phase_start.remove(&l);
        self.auto_rotate_at.remove(&l);
        for state in ["current", "total"] {
            let r = RolloutLabels { authority: authority.into(), state: state.into() };
            self.bundle_namespaces.remove(&r);
            self.bundle_secrets.remove(&r);
        }
        for p in crate::api::Phase::ALL {
            self.phase.remove(&PhaseLabels { authority: authority.into(), phase: p.as_str().into() });
        }
    }

    pub fn set_authority(&self, authority: &str, ca_not_after: i64, auto_rotate_at: i64, bundle_version: i64) {
        let l = AuthorityLabels { authority: authority.into() };
        self.ca_expiry.get_or_create(&l).set(ca_not_after);
        self.auto_rotate_at.get_or_create(&l).set(auto_rotate_at);
        self.bundle_version.get_or_create(&l).set(bundle_version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(m: &Metrics, name: &str) -> Vec<String> {
        m.render().lines().filter(|l| l.starts_with(name)).map(String::from).collect()
    }

    #[test]
    fn a_not_ready_identity_has_one_series_with_its_current_reason() {
        let m = Metrics::default();
        assert!(series(&m, "mtls_operator_identity_not_ready").is_empty(), "no series while nothing is wrong");
        m.identity_not_ready("shop", "web", "corp", "PolicyViolation");
        m.identity_not_ready("shop", "web", "corp", "PolicyViolation");
        m.identity_not_ready("shop", "web", "corp", "SecretConflict");
        m.identity_not_ready("shop", "db", "corp", "PolicyViolation");
        let s = series(&m, "mtls_operator_identity_not_ready");
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(
            s.iter()
                .any(|l| l.contains("name=\"web\"") && l.contains("reason=\"SecretConflict\"") && l.ends_with(" 1")),
            "{s:?}"
        );
        m.set_identity("shop", "web", 100, 50);
        m.forget_identity("shop", "db");
        assert!(series(&m, "mtls_operator_identity_not_ready").is_empty());
    }

    #[test]
    fn phase_start_and_auto_rotation_due_are_exported_and_forgotten() {
        let m = Metrics::default();
        m.set_authority("corp", 1000, 700, 3);
        m.phase_changed("corp", "Reissuing", 42);
        let text = m.render();
        for line in [
            "mtls_operator_ca_auto_rotate_timestamp_seconds{authority=\"corp\"} 700",
            "mtls_operator_authority_phase_start_timestamp_seconds{authority=\"corp\"} 42",
            "mtls_operator_authority_phase{authority=\"corp\",phase=\"Reissuing\"} 1",
            "mtls_operator_leader 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.forget_authority("corp");
        assert!(
            series(&m, "mtls_operator_ca_auto_rotate").is_empty()
                && series(&m, "mtls_operator_authority_phase_start").is_empty()
        );
    }
}
