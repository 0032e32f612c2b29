//! Staged CA rotation as a pure state machine (DESIGN §4). The state is persisted in the
//! authority's status before it takes effect; `step` is a function of that state and what the
//! operator observes, and `signer`/`bundle` say what each state means. Nothing here touches
//! Kubernetes or a clock.
//!
//! | phase       | signer | bundle | leaves when                                                |
//! |-------------|--------|--------|------------------------------------------------------------|
//! | Stable      | A      | {A}    | a new trigger, auto-rotation due, or a new supplied CA      |
//! | Preparing   | A      | {A,B}  | every ConfigMap and identity Secret holds {A,B}             |
//! | Propagating | A      | {A,B}  | propagationDelay since that was observed                    |
//! | Reissuing   | B      | {A,B}  | every identity has a leaf signed by B                       |
//! | Draining    | B      | {A,B}  | propagationDelay since that was observed                    |
//! | Retiring    | B      | {B}    | every ConfigMap and identity Secret holds {B}               |
//!
//! Rollback swaps the roles of A and B and resumes at the phase that keeps the invariant: from
//! Preparing, Propagating, Reissuing or Draining (B not yet alone anywhere) it re-issues with A;
//! from Retiring (some workloads may hold {B} only) it first re-adds A to every bundle.

use std::time::Duration;

use jiff::Timestamp;

pub use crate::api::{Phase, RotationState};

/// What the operator sees when it looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub now: Timestamp,
    pub propagation_delay: Duration,
    /// `spec.rotation.trigger`.
    pub trigger: Option<String>,
    /// `spec.rotation.action == Rollback`.
    pub rollback: bool,
    /// The signing CA has less than `autoRotateBefore` left.
    pub auto_due: bool,
    /// A supplied CA Secret now holds a CA this authority has not used yet.
    pub supplied_changed: bool,
    /// The generation a new rotation would rotate to (its Secret already exists).
    pub next_generation: u32,
    /// Every target ConfigMap and identity Secret holds this state's bundle.
    pub bundle_complete: bool,
    /// Every identity's leaf is signed by this state's signer.
    pub all_signed: bool,
}

/// A change of phase, for Events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub why: String,
}

impl RotationState {
    pub fn stable(generation: u32) -> Self {
        RotationState { from: generation, ..Default::default() }
    }

    /// The CA that signs new leaves.
    pub fn signer(&self) -> u32 {
        match (self.phase, self.to) {
            (Phase::Reissuing | Phase::Draining | Phase::Retiring, Some(to)) => to,
            _ => self.from,
        }
    }

    /// The CAs every bundle holds, in a stable order.
    pub fn bundle(&self) -> Vec<u32> {
        match (self.phase, self.to) {
            (Phase::Stable, _) | (_, None) => vec![self.from],
            (Phase::Retiring, Some(to)) => vec![to],
            (_, Some(to)) => vec![self.from, to],
        }
    }

    /// Whether a start condition is met (the caller then makes sure `next_generation` exists).
    pub fn wants_to_start(&self, o: &Observed) -> bool {
        self.phase == Phase::Stable && self.start_cause(o).is_some()
    }

    fn start_cause(&self, o: &Observed) -> Option<String> {
        match &o.trigger {
            // A new trigger starts a rotation, unless a rollback request is still set: the user
            // must clear `action` first, so a stale Rollback cannot undo the new rotation.
            Some(t) if o.trigger != self.observed_trigger && !o.rollback => Some(t.clone()),
            _ if o.supplied_changed => Some("supplied-ca".into()),
            _ if o.auto_due => Some("auto".into()),
            _ => None,
        }
    }

    /// One step of the machine. Returns the next state and the transition, if any.
    pub fn step(&self, o: &Observed) -> (RotationState, Option<Transition>) {
        let now = o.now.as_second();
        let waited = |since: i64| now.saturating_sub(since) >= o.propagation_delay.as_secs() as i64;
        let mut next = self.clone();
        let go = |next: &mut RotationState, phase: Phase, why: String| {
            let t = Transition { from: self.phase, to: phase, why };
            next.phase = phase;
            next.phase_since = now;
            Some(t)
        };
        if self.phase != Phase::Stable && o.rollback && !self.rolled_back && self.to.is_some() {
            let to = self.to.expect("checked");
            next.to = Some(self.from);
            next.from = to;
            next.rolled_back = true;
            let phase = if self.phase == Phase::Retiring { Phase::Preparing } else { Phase::Reissuing };
            let t = go(&mut next, phase, format!("rollback: returning to CA generation {}", self.from));
            return (next, t);
        }
        let t = match self.phase {
            Phase::Stable => match self.start_cause(o) {
                Some(cause) if o.next_generation != self.from => {
                    if o.trigger.is_some() && o.trigger != self.observed_trigger && !o.rollback {
                        next.observed_trigger = o.trigger.clone();
                    }
                    next.to = Some(o.next_generation);
                    next.rolled_back = false;
                    next.cause = Some(cause.clone());
                    go(
                        &mut next,
                        Phase::Preparing,
                        format!("rotation to CA generation {} started ({cause})", o.next_generation),
                    )
                }
                _ => None,
            },
            Phase::Preparing if o.bundle_complete => {
                go(&mut next, Phase::Propagating, "every ConfigMap and identity Secret holds both CAs".into())
            }
            Phase::Propagating if waited(self.phase_since) => {
                go(&mut next, Phase::Reissuing, "propagation delay passed: signing with the new CA".into())
            }
            Phase::Reissuing if o.all_signed => {
                go(&mut next, Phase::Draining, "every identity holds a leaf signed by the new CA".into())
            }
            Phase::Draining if waited(self.phase_since) => {
                go(&mut next, Phase::Retiring, "propagation delay passed: removing the old CA from bundles".into())
            }
            Phase::Retiring if o.bundle_complete => {
                next.from = self.to.unwrap_or(self.from);
                next.to = None;
                go(&mut next, Phase::Stable, "every ConfigMap and identity Secret holds only the new CA".into())
            }
            _ => None,
        };
        (next, t)
    }
}

#[cfg(test)]
mod tests {
    //! The invariant, checked over thousands of random schedules: at every instant, every leaf a
    //! workload may still present is signed by a CA in every bundle a workload may still hold,
    //! where "may still hold" means anything written within the last propagation delay, plus the
    //! last thing written before that.
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// What was written to one object over time: (time, value).
    #[derive(Clone, Default)]
    struct History<T: Clone>(Vec<(i64, T)>);

    impl<T: Clone> History<T> {
        fn write(&mut self, t: i64, v: T) {
            self.0.push((t, v));
        }
        fn current(&self) -> Option<&T> {
            self.0.last().map(|(_, v)| v)
        }
        /// Every value a workload may still see at `now` when delivery takes up to `delay`.
        fn possibly_held(&self, now: i64, delay: i64) -> Vec<&T> {
            let mut out: Vec<&T> = self.0.iter().filter(|(t, _)| *t > now - delay).map(|(_, v)| v).collect();
            if let Some((_, v)) = self.0.iter().rev().find(|(t, _)| *t <= now - delay) {
                out.push(v);
            }
            out
        }
    }

    struct Identity {
        leaf: History<u32>,
        bundle: History<Vec<u32>>,
    }

    struct World {
        delay: i64,
        identities: Vec<Option<Identity>>,
        configmaps: Vec<History<Vec<u32>>>,
    }

    impl World {
        fn check(&self, now: i64) -> Result<(), String> {
            let mut leaves = vec![];
            let mut bundles: Vec<&Vec<u32>> = vec![];
            for id in self.identities.iter().flatten() {
                leaves.extend(id.leaf.possibly_held(now, self.delay));
                bundles.extend(id.bundle.possibly_held(now, self.delay));
            }
            for cm in &self.configmaps {
                bundles.extend(cm.possibly_held(now, self.delay));
            }
            for leaf in &leaves {
                for b in &bundles {
                    if !b.contains(leaf) {
                        return Err(format!("at t={now} a leaf signed by CA {leaf} meets a bundle {b:?}"));
                    }
                }
            }
            Ok(())
        }
    }

    /// Runs one random schedule; returns the number of completed rotations.
    fn run(seed: u64) -> Result<u32, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let delay = rng.random_range(2..20i64);
        let mut world =
            World { delay, identities: vec![], configmaps: vec![History::default(); rng.random_range(1..4)] };
        let mut persisted = RotationState::stable(1);
        let mut next_gen = 2;
        let mut trigger: Option<String> = None;
        let mut rollback = false;
        let mut completed = 0;
        // Initial identities.
        for _ in 0..rng.random_range(1..6) {
            let mut id = Identity { leaf: History::default(), bundle: History::default() };
            id.leaf.write(0, 1);
            id.bundle.write(0, vec![1]);
            world.identities.push(Some(id));
        }
        for cm in &mut world.configmaps {
            cm.write(0, vec![1]);
        }
        let steps = 400;
        for now in 1..steps {
            // The user: triggers rotations, sometimes asks for a rollback, clears it later.
            if persisted.phase == Phase::Stable && rng.random_bool(0.05) {
                rollback = false;
                trigger = Some(format!("t{now}"));
            }
            if persisted.phase != Phase::Stable && !persisted.rolled_back && rng.random_bool(0.01) {
                rollback = true;
            }
            // Identities come and go.
            if rng.random_bool(0.02) {
                let mut id = Identity { leaf: History::default(), bundle: History::default() };
                id.leaf.write(now, persisted.signer());
                id.bundle.write(now, persisted.bundle());
                world.identities.push(Some(id));
            }
            if rng.random_bool(0.01) && !world.identities.is_empty() {
                let i = rng.random_range(0..world.identities.len());
                world.identities[i] = None;
            }

            // The operator: observe, decide, persist, then act. It may crash at any point.
            let want_bundle = persisted.bundle();
            let signer = persisted.signer();
            let bundle_complete = world.configmaps.iter().all(|c| c.current() == Some(&want_bundle))
                && world.identities.iter().flatten().all(|i| i.bundle.current() == Some(&want_bundle));
            let all_signed = world.identities.iter().flatten().all(|i| i.leaf.current() == Some(&signer));
            let obs = Observed {
                now: Timestamp::from_second(now).unwrap(),
                propagation_delay: Duration::from_secs(delay as u64),
                trigger: trigger.clone(),
                rollback,
                auto_due: false,
                supplied_changed: false,
                next_generation: next_gen,
                bundle_complete,
                all_signed,
            };
            if rng.random_bool(0.1) {
                continue; // crashed before persisting anything
            }
            // (The real operator mints the next CA, create-only, before persisting a start.)
            let (next, t) = persisted.step(&obs);
            if let Some(t) = &t {
                if t.to == Phase::Stable {
                    completed += 1;
                    next_gen += 1;
                }
            }
            persisted = next;
            if rng.random_bool(0.1) {
                continue; // crashed after persisting, before acting
            }
            // Act on the persisted state, with partial progress (API latency, rate limits).
            let want_bundle = persisted.bundle();
            let signer = persisted.signer();
            for cm in &mut world.configmaps {
                if cm.current() != Some(&want_bundle) && rng.random_bool(0.5) {
                    cm.write(now, want_bundle.clone());
                }
            }
            for id in world.identities.iter_mut().flatten() {
                if id.bundle.current() != Some(&want_bundle) && rng.random_bool(0.5) {
                    id.bundle.write(now, want_bundle.clone());
                }
                // Re-issue (at a limited rate) only once the bundle is in place.
                if id.leaf.current() != Some(&signer)
                    && id.bundle.current() == Some(&want_bundle)
                    && rng.random_bool(0.3)
                {
                    id.leaf.write(now, signer);
                }
            }
            world.check(now)?;
        }
        Ok(completed)
    }

    #[test]
    fn invariant_holds_over_thousands_of_random_schedules() {
        let mut completed = 0;
        for seed in 0..3000 {
            completed += run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        // The schedules really rotate (and the check is not vacuous).
        assert!(completed > 3000, "only {completed} rotations completed");
    }

    #[test]
    fn the_check_sees_a_violation_when_the_delay_is_ignored() {
        // A naive operator that switches signer and bundle at once breaks the invariant.
        let mut w = World { delay: 5, identities: vec![], configmaps: vec![History::default()] };
        let mut a = Identity { leaf: History::default(), bundle: History::default() };
        a.leaf.write(0, 1);
        a.bundle.write(0, vec![1]);
        w.identities.push(Some(a));
        w.configmaps[0].write(0, vec![1]);
        let id = w.identities[0].as_mut().unwrap();
        id.leaf.write(10, 2);
        id.bundle.write(10, vec![2]);
        assert!(w.check(11).is_err());
    }

    fn obs(now: i64) -> Observed {
        Observed {
            now: Timestamp::from_second(now).unwrap(),
            propagation_delay: Duration::from_secs(60),
            trigger: None,
            rollback: false,
            auto_due: false,
            supplied_changed: false,
            next_generation: 2,
            bundle_complete: false,
            all_signed: false,
        }
    }

    #[test]
    fn runs_the_phases_of_the_design_in_order() {
        let s = RotationState::stable(1);
        let (s, t) = s.step(&Observed { trigger: Some("go".into()), ..obs(0) });
        assert_eq!((s.phase, s.signer(), s.bundle()), (Phase::Preparing, 1, vec![1, 2]));
        assert_eq!(t.unwrap().to, Phase::Preparing);
        assert_eq!(s.step(&Observed { trigger: Some("go".into()), ..obs(5) }).0, s, "waits for the bundle");
        let (s, _) = s.step(&Observed { trigger: Some("go".into()), bundle_complete: true, ..obs(10) });
        assert_eq!(s.phase, Phase::Propagating);
        assert_eq!(s.step(&Observed { bundle_complete: true, ..obs(69) }).0.phase, Phase::Propagating);
        let (s, _) = s.step(&Observed { trigger: Some("go".into()), ..obs(70) });
        assert_eq!((s.phase, s.signer(), s.bundle()), (Phase::Reissuing, 2, vec![1, 2]));
        let (s, _) = s.step(&Observed { trigger: Some("go".into()), all_signed: true, ..obs(80) });
        assert_eq!(s.phase, Phase::Draining);
        let (s, _) = s.step(&Observed { trigger: Some("go".into()), ..obs(140) });
        assert_eq!((s.phase, s.signer(), s.bundle()), (Phase::Retiring, 2, vec![2]));
        let (s, _) = s.step(&Observed { trigger: Some("go".into()), bundle_complete: true, ..obs(150) });
        assert_eq!((s.phase, s.signer(), s.bundle(), s.to), (Phase::Stable, 2, vec![2], None));
        // The same trigger does not start another rotation; a new one does.
        assert_eq!(
            s.step(&Observed { trigger: Some("go".into()), next_generation: 3, ..obs(160) }).0.phase,
            Phase::Stable
        );
        let (s2, _) = s.step(&Observed { trigger: Some("again".into()), next_generation: 3, ..obs(160) });
        assert_eq!((s2.phase, s2.to), (Phase::Preparing, Some(3)));
    }

    #[test]
    fn auto_rotation_and_a_new_supplied_ca_start_a_rotation() {
        let s = RotationState::stable(4);
        let (a, _) = s.step(&Observed { auto_due: true, next_generation: 5, ..obs(0) });
        assert_eq!((a.phase, a.to, a.cause.as_deref()), (Phase::Preparing, Some(5), Some("auto")));
        let (b, _) = s.step(&Observed { supplied_changed: true, next_generation: 5, ..obs(0) });
        assert_eq!((b.phase, b.cause.as_deref()), (Phase::Preparing, Some("supplied-ca")));
        // Neither interrupts a rotation in flight.
        let (c, t) = a.step(&Observed { auto_due: true, supplied_changed: true, next_generation: 6, ..obs(1) });
        assert_eq!((c.to, t), (Some(5), None));
    }

    #[test]
    fn rollback_from_each_phase_keeps_the_old_ca_trusted() {
        let start = RotationState::stable(1).step(&Observed { trigger: Some("go".into()), ..obs(0) }).0;
        for phase in [Phase::Preparing, Phase::Propagating, Phase::Reissuing, Phase::Draining, Phase::Retiring] {
            let s = RotationState { phase, ..start.clone() };
            let (r, t) = s.step(&Observed { rollback: true, ..obs(100) });
            assert!(t.is_some());
            assert!(r.rolled_back);
            assert_eq!(r.to, Some(1), "{phase:?}: rolls back towards CA 1");
            // Both CAs stay in the bundle until CA 1 signs every leaf again.
            assert_eq!(r.bundle().len(), 2, "{phase:?}");
            assert_eq!(r.signer(), if phase == Phase::Retiring { 2 } else { 1 }, "{phase:?}");
            // A second rollback request does nothing more.
            assert_eq!(r.step(&Observed { rollback: true, ..obs(101) }).0.rolled_back, true);
        }
        // A stale rollback request does not let a new trigger start a rotation.
        let s = RotationState::stable(1);
        assert_eq!(s.step(&Observed { trigger: Some("x".into()), rollback: true, ..obs(0) }).0.phase, Phase::Stable);
    }
}
