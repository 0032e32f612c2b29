//! The cache of the identity Secrets the operator manages, reduced to the few facts it reads:
//! that each exists, which authority and CA bundle version it carries and which CA signed its
//! leaf. A Secret's data is never cached (it is read from the API when its identity is
//! reconciled); owner and resourceVersion are read from the watch event itself.
//!
//! A reflector store of `PartialObjectMeta<Secret>` held the same facts in ~2 KiB per Secret
//! (two `BTreeMap`s of labels and annotations and an `ObjectMeta` each); at 10,000 identities
//! that was the largest thing the operator kept. An entry here is ~150 bytes: authority names
//! and issuer fingerprints, shared by thousands of Secrets, are interned.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{ResourceExt, core::PartialObjectMeta, runtime::watcher};

use super::{ANN_BUNDLE_VERSION, ANN_ISSUER, LABEL_AUTHORITY, LABEL_CA_GENERATION};

/// What is known about one managed Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFacts {
    pub authority: Option<Arc<str>>,
    /// A CA Secret (labelled with its generation), not an identity's.
    pub ca: bool,
    pub bundle_version: Option<i64>,
    pub issuer: Option<Arc<str>>,
}

/// How far an authority's identity Secrets have caught up with its bundle and signer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    pub total: u32,
    /// Carrying the given bundle version.
    pub up_to_date: u32,
    /// Holding a leaf issued by the given signer.
    pub signed: u32,
}

#[derive(Default)]
struct State {
    /// Keyed by `namespace/name`.
    secrets: HashMap<Box<str>, SecretFacts>,
    /// A (re)list in progress: replaces `secrets` when it is complete.
    relisting: Option<HashMap<Box<str>, SecretFacts>>,
    ready: bool,
}

/// Fed by one watch of the managed Secrets (metadata only); read by both controllers.
#[derive(Default)]
pub struct SecretCache {
    state: RwLock<State>,
    interned: Mutex<HashSet<Arc<str>>>,
    synced: tokio::sync::Notify,
}

fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

impl SecretCache {
    /// Applies one watch event. A relist is staged and swapped in whole at `InitDone`, so a
    /// reader never sees a half-listed cache (as with kube-runtime's reflector).
    pub fn apply(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let mut st = self.state.write().expect("secret cache lock poisoned");
        match event {
            watcher::Event::Init => st.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                let (k, f) = (key(&s.namespace().unwrap_or_default(), &s.name_any()), self.facts(s));
                match st.relisting.as_mut() {
                    Some(staged) => staged.insert(k, f),
                    None => st.secrets.insert(k, f),
                };
            }
            watcher::Event::InitDone => {
                if let Some(staged) = st.relisting.take() {
                    st.secrets = staged;
                }
                if !st.ready {
                    st.ready = true;
                    self.synced.notify_waiters();
                }
            }
            watcher::Event::Apply(s) => {
                let (k, f) = (key(&s.namespace().unwrap_or_default(), &s.name_any()), self.facts(s));
                st.secrets.insert(k, f);
            }
            watcher::Event::Delete(s) => {
                st.secrets.remove(&key(&s.namespace().unwrap_or_default(), &s.name_any()));
            }
        }
    }

    fn facts(&self, s: &PartialObjectMeta<Secret>) -> SecretFacts {
        SecretFacts {
            authority: s.labels().get(LABEL_AUTHORITY).map(|a| self.intern(a)),
            ca: s.labels().contains_key(LABEL_CA_GENERATION),
            bundle_version: s.annotations().get(ANN_BUNDLE_VERSION).and_then(|v| v.parse().ok()),
            issuer: s.annotations().get(ANN_ISSUER).map(|i| self.intern(i)),
        }
    }

    /// One shared copy of a string that thousands of Secrets carry. The set only grows with
    /// authority names and CA generations, a handful in practice.
    fn intern(&self, s: &str) -> Arc<str> {
        let mut set = self.interned.lock().expect("intern set lock poisoned");
        if let Some(found) = set.get(s) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(s);
        set.insert(new.clone());
        new
    }

    #[cfg(test)]
    fn get(&self, namespace: &str, name: &str) -> Option<SecretFacts> {
        self.state.read().expect("secret cache lock poisoned").secrets.get(&key(namespace, name)).cloned()
    }

    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.state.read().expect("secret cache lock poisoned").secrets.contains_key(&key(namespace, name))
    }

    /// The identity Secrets of `authority` (CA Secrets excluded), counted against a bundle version
    /// and a signer fingerprint.
    pub fn rollout(&self, authority: &str, bundle_version: i64, signer_fingerprint: &str) -> Rollout {
        let st = self.state.read().expect("secret cache lock poisoned");
        let mut r = Rollout::default();
        for f in st.secrets.values().filter(|f| !f.ca && f.authority.as_deref() == Some(authority)) {
            r.total += 1;
            r.up_to_date += u32::from(f.bundle_version == Some(bundle_version));
            r.signed += u32::from(f.issuer.as_deref() == Some(signer_fingerprint));
        }
        r
    }

    /// Resolves once the first full list has been applied.
    pub async fn wait_until_ready(&self) {
        loop {
            let notified = self.synced.notified();
            if self.state.read().expect("secret cache lock poisoned").ready {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use kube::core::PartialObjectMetaExt;

    use super::*;

    fn secret(ns: &str, name: &str, authority: &str, version: i64, issuer: &str) -> PartialObjectMeta<Secret> {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            resource_version: Some("7".into()),
            labels: Some([(LABEL_AUTHORITY.to_string(), authority.to_string())].into()),
            annotations: Some(
                [(ANN_BUNDLE_VERSION.to_string(), version.to_string()), (ANN_ISSUER.to_string(), issuer.to_string())]
                    .into(),
            ),
            owner_references: Some(vec![
                OwnerReference { kind: "Deployment".into(), name: "not-this".into(), ..Default::default() },
                OwnerReference {
                    kind: "MtlsIdentity".into(),
                    name: format!("{name}-id"),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
        .into_response_partial()
    }

    #[test]
    fn keeps_the_facts_and_counts_a_rollout() {
        let c = SecretCache::default();
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(secret("a", "one", "corp", 2, "fp-new")));
        c.apply(&watcher::Event::InitApply(secret("a", "two", "corp", 1, "fp-old")));
        // Staged until the list is complete.
        assert!(!c.contains("a", "one"));
        c.apply(&watcher::Event::InitDone);
        c.apply(&watcher::Event::Apply(secret("b", "three", "other", 2, "fp-new")));
        let mut ca = secret("ops", "corp-ca-1", "corp", 2, "fp-new");
        ca.metadata.labels.as_mut().unwrap().insert(LABEL_CA_GENERATION.into(), "1".into());
        c.apply(&watcher::Event::Apply(ca));

        let one = c.get("a", "one").expect("cached");
        assert_eq!((one.authority.as_deref(), one.bundle_version, one.ca), (Some("corp"), Some(2), false));
        assert_eq!(c.rollout("corp", 2, "fp-new"), Rollout { total: 2, up_to_date: 1, signed: 1 });
        assert_eq!(c.rollout("other", 2, "fp-new"), Rollout { total: 1, up_to_date: 1, signed: 1 });
        // Interned: one copy of each authority name however many Secrets carry it.
        let two = c.get("a", "two").expect("cached");
        assert!(Arc::ptr_eq(one.authority.as_ref().unwrap(), two.authority.as_ref().unwrap()));

        c.apply(&watcher::Event::Delete(secret("a", "two", "corp", 1, "fp-old")));
        assert!(!c.contains("a", "two"));
        assert_eq!(c.rollout("corp", 2, "fp-new"), Rollout { total: 1, up_to_date: 1, signed: 1 });
    }

    #[test]
    fn a_relist_replaces_everything_at_once() {
        let c = SecretCache::default();
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(secret("a", "gone", "corp", 1, "fp")));
        c.apply(&watcher::Event::InitDone);
        // The watch broke; a Secret was deleted meanwhile: the new list does not have it.
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(secret("a", "kept", "corp", 1, "fp")));
        assert!(c.contains("a", "gone"), "the old contents stay visible until the list is complete");
        c.apply(&watcher::Event::InitDone);
        assert!(!c.contains("a", "gone"));
        assert!(c.contains("a", "kept"));
    }

    #[tokio::test]
    async fn ready_after_the_first_list() {
        let c = Arc::new(SecretCache::default());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.wait_until_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("ready").expect("task");
    }
}
