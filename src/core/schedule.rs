//! When to renew, pure. Renewal happens at `notAfter - renewBefore`, minus a jitter of up to 10%
//! of the lifetime, so identities issued in the same second do not all renew in the same second.
//! The jitter is derived from the certificate's serial: stable across operator restarts without
//! storing anything, yet uniformly spread.

use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// Fraction of the lifetime over which renewals are spread.
pub const JITTER_FRACTION: f64 = 0.10;

/// A number in [0, 1) derived from `seed`.
pub fn unit_jitter(seed: &str) -> f64 {
    let h = Sha256::digest(seed.as_bytes());
    let v = u64::from_be_bytes(h[..8].try_into().expect("sha256 has 32 bytes"));
    (v >> 11) as f64 / (1u64 << 53) as f64
}

/// Default `renewBefore`: one third of the duration.
pub fn default_renew_before(duration: Duration) -> Duration {
    duration / 3
}

/// The instant to renew a leaf issued at `issued_at` that expires at `not_after`. The jitter is
/// at most 10% of the lifetime and at most half of the time between issuance and
/// `not_after - renew_before`, so a renewal is never scheduled at (or before) the issuance it
/// follows, whatever `renew_before` is: no re-issue loop.
pub fn renewal_time(issued_at: Timestamp, not_after: Timestamp, renew_before: Duration, serial: &str) -> Timestamp {
    let lifetime = not_after.duration_since(issued_at).unsigned_abs();
    let renew_before = renew_before.min(lifetime);
    let window = lifetime - renew_before;
    let jitter = lifetime.mul_f64(JITTER_FRACTION).min(window / 2).mul_f64(unit_jitter(serial));
    (not_after - renew_before - jitter).max(issued_at + Duration::from_secs(1))
}

/// Order in which to look at identities after the operator has been down: those without a
/// certificate first, then by expiry (already expired, then soonest to expire).
pub fn catch_up_order(not_after: Option<Timestamp>) -> i64 {
    not_after.map_or(i64::MIN, |t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn renews_before_renew_before_minus_jitter() {
        let nb = t("2026-01-01T00:00:00Z");
        let na = nb + Duration::from_secs(24 * 3600);
        let rb = Duration::from_secs(8 * 3600);
        let r = renewal_time(nb, na, rb, "abcd");
        assert!(r <= na - rb);
        assert!(r >= na - rb - Duration::from_secs(24 * 360));
        // Deterministic per certificate.
        assert_eq!(r, renewal_time(nb, na, rb, "abcd"));
    }

    #[test]
    fn identities_issued_together_are_spread_across_the_window() {
        // 5,000 identities issued in the same second, each with its own random serial.
        let nb = t("2026-01-01T00:00:00Z");
        let na = nb + Duration::from_secs(24 * 3600);
        let rb = Duration::from_secs(8 * 3600);
        let window = Duration::from_secs(24 * 360);
        let mut buckets = [0u32; 10];
        let mut per_second = std::collections::BTreeMap::<i64, u32>::new();
        for i in 0..5000 {
            let serial = format!("{:032x}", (i as u128).wrapping_mul(0x9e3779b97f4a7c15f39cc0605cedc835));
            let r = renewal_time(nb, na, rb, &serial);
            let offset = (na - rb).duration_since(r).as_secs_f64();
            assert!((0.0..window.as_secs_f64()).contains(&offset));
            buckets[(offset / window.as_secs_f64() * 10.0) as usize] += 1;
            *per_second.entry(r.as_second()).or_default() += 1;
        }
        // Every tenth of the window gets roughly a tenth of the renewals.
        for b in buckets {
            assert!((400..600).contains(&b), "uneven spread: {buckets:?}");
        }
        // And no second sees more than a handful (without jitter all 5,000 would share one).
        let busiest = per_second.values().max().copied().unwrap_or(0);
        assert!(busiest <= 6, "{busiest} renewals in the busiest second");
    }

    #[test]
    fn catch_up_puts_missing_and_expired_first() {
        let now = t("2026-06-01T00:00:00Z");
        let mut ids = vec![
            ("later", Some(now + Duration::from_secs(7200))),
            ("none", None),
            ("soon", Some(now + Duration::from_secs(60))),
            ("expired", Some(now - Duration::from_secs(60))),
        ];
        ids.sort_by_key(|(_, na)| catch_up_order(*na));
        let names: Vec<_> = ids.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["none", "expired", "soon", "later"]);
    }

    #[test]
    fn a_renewal_never_falls_on_its_own_issuance() {
        let issued = t("2026-01-01T00:00:00Z");
        let na = issued + Duration::from_secs(600);
        // renewBefore (almost) as long as the lifetime: still strictly after issuance.
        for rb in [590, 599, 600, 3600] {
            for i in 0..200 {
                let r = renewal_time(issued, na, Duration::from_secs(rb), &format!("{i:x}"));
                assert!(r > issued, "renewBefore {rb}s: renewal at issuance");
            }
        }
        // With room to spare, the jitter stays within half of the window before renewBefore.
        for i in 0..200 {
            let r = renewal_time(issued, na, Duration::from_secs(540), &format!("{i:x}"));
            assert!(r >= issued + Duration::from_secs(30) && r <= issued + Duration::from_secs(60));
        }
    }
}
