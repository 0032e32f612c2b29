//! The identity work queue. Every reason to reconcile an identity — its own change, its Secret,
//! its namespace, its authority, a relist, its renewal time, a retry — becomes an entry here, and
//! identities are handed to the controller from here first in, first out, each at most once at a
//! time, and only while fewer than `limit` are in the controller's hands.
//!
//! Why the controller's own queue is not used for this: kube-runtime's controller starts every
//! request that is due at once and keeps the future of each started reconcile in a hash table
//! that grows to fit them all and never shrinks. An authority change wakes every identity of the
//! authority, so at 10,000 identities that table reached 16,384 entries of ~750 bytes (12 MB, kept
//! for the life of the process); and its scheduler hands a backlog out in no particular order.
//! Here a waiting identity costs a shared key in a FIFO and a set (~100 bytes), and a renewal or
//! retry timer a key and an instant in two ordered maps; the controller only ever holds `limit`
//! reconciles.
//!
//! Only identities that exist are handed out: the controller silently drops a request for an
//! object missing from its cache, so an entry handed out for a deleted identity would otherwise
//! hold its name until a timeout, and swallow the creation of a new identity of the same name
//! meanwhile (a `kubectl replace --force` or a re-created namespace was never issued). And no
//! trigger is ever swallowed: one that arrives while its identity is handed out is remembered
//! until the controller has started it.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::reflector::ObjectRef;
use tokio::{sync::Notify, time::Instant};

use crate::api::MtlsIdentity;

/// `namespace/name`, shared by every structure that holds the identity.
type Key = Arc<str>;

/// Whether the controller's cache holds the identity.
pub type Exists = dyn Fn(&ObjectRef<MtlsIdentity>) -> bool + Send + Sync;

/// Handed to the controller but not started after this long: the controller dropped it (the
/// identity was deleted between the hand-out and the controller's look-up, a race the check at
/// hand-out leaves open), so it no longer counts against the limit.
const HANDED_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    /// Waiting, oldest first. May hold keys that were forgotten since (skipped when popped).
    fifo: VecDeque<Key>,
    /// What `fifo` really holds.
    queued: HashSet<Key>,
    /// Handed to the controller, not started yet: since when, and whether it was queued again
    /// meanwhile (then it is queued again if the controller drops it).
    handed: HashMap<Key, (Instant, bool)>,
    /// Reconciles started and not finished.
    running: usize,
    /// One timer per identity at most: when it is due, the identity is queued.
    timers: BTreeSet<(Instant, Key)>,
    due: HashMap<Key, Instant>,
    /// Interned keys, so that the fifo, the sets and the timers share one allocation per identity.
    keys: HashSet<Key>,
}

impl State {
    fn key(&mut self, namespace: &str, name: &str) -> Key {
        let k = format!("{namespace}/{name}");
        if let Some(found) = self.keys.get(k.as_str()) {
            return found.clone();
        }
        let new: Key = Arc::from(k);
        self.keys.insert(new.clone());
        new
    }

    /// Drops the interned key once nothing holds it any more.
    fn release(&mut self, key: &Key) {
        if !self.queued.contains(key) && !self.handed.contains_key(key) && !self.due.contains_key(key) {
            self.keys.remove(key);
        }
    }

    fn enqueue(&mut self, key: Key) -> bool {
        if let Some((_, again)) = self.handed.get_mut(&key) {
            // The controller reads the object when it starts the reconcile: nothing to add unless
            // it never starts it.
            *again = true;
            return false;
        }
        if self.queued.contains(&key) {
            return false;
        }
        self.queued.insert(key.clone());
        self.fifo.push_back(key);
        true
    }
}

pub struct WorkQueue {
    state: Mutex<State>,
    /// Something was queued, or a reconcile finished (room to hand out more).
    changed: Notify,
    /// A timer earlier than all others was set.
    timers_changed: Notify,
    limit: usize,
}

/// One reconcile of an identity in progress (see [`WorkQueue::started`]).
pub struct Running {
    queue: Arc<WorkQueue>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.queue.lock().running -= 1;
        self.queue.changed.notify_one();
    }
}

impl WorkQueue {
    /// A queue that lets at most `limit` identities be handed out or running at once.
    pub fn new(limit: usize) -> Arc<WorkQueue> {
        Arc::new(WorkQueue {
            state: Mutex::default(),
            changed: Notify::new(),
            timers_changed: Notify::new(),
            limit: limit.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("work queue lock poisoned")
    }

    /// Queues the identity now (nothing happens if it is already waiting).
    pub fn push(&self, namespace: &str, name: &str) {
        let queued = {
            let mut st = self.lock();
            let key = st.key(namespace, name);
            st.enqueue(key)
        };
        if queued {
            self.changed.notify_one();
        }
    }

    pub fn push_ref(&self, r: &ObjectRef<MtlsIdentity>) {
        self.push(r.namespace.as_deref().unwrap_or_default(), &r.name);
    }

    /// Queues the identity `after` from now, replacing its previous timer: the outcome of its last
    /// reconcile decides when it is looked at next (its renewal time, or a retry).
    pub fn schedule(&self, namespace: &str, name: &str, after: Duration) {
        let at = Instant::now() + after;
        let earliest = {
            let mut st = self.lock();
            let key = st.key(namespace, name);
            if let Some(old) = st.due.insert(key.clone(), at) {
                st.timers.remove(&(old, key.clone()));
            }
            st.timers.insert((at, key));
            st.timers.first().is_some_and(|(first, _)| *first == at)
        };
        if earliest {
            self.timers_changed.notify_one();
        }
    }

    /// The identity is gone: it is neither queued nor timed any more.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut st = self.lock();
        let Some(key) = st.keys.get(format!("{namespace}/{name}").as_str()).cloned() else { return };
        st.queued.remove(&key);
        st.handed.remove(&key);
        if let Some(at) = st.due.remove(&key) {
            st.timers.remove(&(at, key.clone()));
        }
        st.release(&key);
    }

    /// Marks the start of a reconcile of this identity (called by the controller's reconciler);
    /// the returned guard marks its end.
    pub fn started(self: &Arc<Self>, namespace: &str, name: &str) -> Running {
        {
            let mut st = self.lock();
            if let Some(key) = st.keys.get(format!("{namespace}/{name}").as_str()).cloned() {
                st.handed.remove(&key);
                st.release(&key);
            }
            st.running += 1;
        }
        Running { queue: self.clone() }
    }

    /// The next identity to hand to the controller, if there is one and there is room. Entries
    /// for identities that do not `exist` (deleted, or not in the cache yet: their own watch
    /// event queues them again) are dropped.
    fn pop(&self, exists: &Exists) -> Option<ObjectRef<MtlsIdentity>> {
        let mut st = self.lock();
        let now = Instant::now();
        let expired: Vec<(Key, bool)> = st
            .handed
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) >= HANDED_TIMEOUT)
            .map(|(k, (_, again))| (k.clone(), *again))
            .collect();
        for (key, again) in expired {
            st.handed.remove(&key);
            if again {
                st.enqueue(key.clone());
            }
            st.release(&key);
        }
        while st.running + st.handed.len() < self.limit {
            let key = st.fifo.pop_front()?;
            if !st.queued.remove(&key) {
                continue; // forgotten while it waited
            }
            let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
            let r = ObjectRef::new(name).within(namespace);
            if !exists(&r) {
                st.release(&key);
                continue;
            }
            st.handed.insert(key.clone(), (now, false));
            return Some(r);
        }
        None
    }

    /// Identities handed out first in, first out, as room allows. Runs forever.
    pub async fn next(&self, exists: &Exists) -> ObjectRef<MtlsIdentity> {
        loop {
            let notified = self.changed.notified();
            if let Some(r) = self.pop(exists) {
                return r;
            }
            // While waiting, a handed-out entry that is never started must not block for ever.
            let _ = tokio::time::timeout(HANDED_TIMEOUT, notified).await;
        }
    }

    /// The stream the controller is given: [`WorkQueue::next`], over and over. `exists` tells
    /// whether the controller's cache holds the identity (the controller looks it up there).
    pub fn handed_out(
        self: Arc<Self>,
        exists: impl Fn(&ObjectRef<MtlsIdentity>) -> bool + Send + Sync + 'static,
    ) -> impl futures::Stream<Item = ObjectRef<MtlsIdentity>> + Send + 'static {
        let exists: Arc<Exists> = Arc::new(exists);
        futures::stream::unfold((self, exists), |(q, exists)| async move {
            let r = q.next(&*exists).await;
            Some((r, (q, exists)))
        })
    }

    /// Moves identities whose timer is due into the queue. Runs forever.
    pub async fn run_timers(&self) {
        loop {
            let notified = self.timers_changed.notified();
            let (moved, next) = {
                let mut st = self.lock();
                let now = Instant::now();
                let mut moved = false;
                while let Some((at, key)) = st.timers.first().cloned() {
                    if at > now {
                        break;
                    }
                    st.timers.pop_first();
                    st.due.remove(&key);
                    moved |= st.enqueue(key.clone());
                    st.release(&key);
                }
                (moved, st.timers.first().map(|(at, _)| *at))
            };
            if moved {
                self.changed.notify_one();
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Identities waiting, handed out, running, and timers set.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize, usize) {
        let st = self.lock();
        (st.queued.len(), st.handed.len(), st.running, st.due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every identity exists.
    static ALL: fn(&ObjectRef<MtlsIdentity>) -> bool = |_| true;

    fn name(r: &ObjectRef<MtlsIdentity>) -> String {
        format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
    }

    #[tokio::test]
    async fn first_in_first_out_once_each_within_the_limit() {
        let q = WorkQueue::new(2);
        for n in ["a", "b", "a", "c", "d"] {
            q.push("ns", n);
        }
        let first = q.next(&ALL).await;
        let second = q.next(&ALL).await;
        assert_eq!((name(&first), name(&second)), ("ns/a".into(), "ns/b".into()));
        // Two handed out: no room until one starts and finishes.
        assert!(q.pop(&ALL).is_none());
        let a = q.started("ns", "a");
        assert!(q.pop(&ALL).is_none(), "a running reconcile still counts");
        // Queued again while running: it must run again afterwards (its reconcile may have read
        // the old state), but once only.
        q.push("ns", "a");
        q.push("ns", "a");
        drop(a);
        assert_eq!(name(&q.next(&ALL).await), "ns/c");
        let _b = q.started("ns", "b");
        let _c = q.started("ns", "c");
        assert_eq!(q.counts(), (2, 0, 2, 0));
        drop(_b);
        assert_eq!(name(&q.next(&ALL).await), "ns/d");
        drop(_c);
        assert_eq!(name(&q.next(&ALL).await), "ns/a");
        assert!(q.pop(&ALL).is_none());
    }

    #[tokio::test]
    async fn handed_out_but_not_started_is_not_queued_twice() {
        let q = WorkQueue::new(10);
        q.push("ns", "a");
        assert_eq!(name(&q.next(&ALL).await), "ns/a");
        // The controller will read the latest object when it starts it: no second entry.
        q.push("ns", "a");
        assert!(q.pop(&ALL).is_none());
        let _a = q.started("ns", "a");
        q.push("ns", "a");
        assert_eq!(name(&q.next(&ALL).await), "ns/a");
    }

    #[tokio::test]
    async fn forgotten_identities_are_skipped_and_release_their_keys() {
        let q = WorkQueue::new(10);
        q.push("ns", "gone");
        q.push("ns", "kept");
        q.schedule("ns", "gone", Duration::from_secs(60));
        q.forget("ns", "gone");
        assert_eq!(name(&q.next(&ALL).await), "ns/kept");
        assert!(q.pop(&ALL).is_none());
        drop(q.started("ns", "kept"));
        assert_eq!(q.counts(), (0, 0, 0, 0));
        assert!(q.lock().keys.is_empty(), "no key is kept for identities nothing refers to");
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_order_and_a_new_one_replaces_the_old() {
        let q = WorkQueue::new(10);
        let timers = tokio::spawn({
            let q = q.clone();
            async move { q.run_timers().await }
        });
        q.schedule("ns", "late", Duration::from_secs(30));
        q.schedule("ns", "early", Duration::from_secs(10));
        q.schedule("ns", "moved", Duration::from_secs(5));
        // The last reconcile decides: "moved" is now due after "late".
        q.schedule("ns", "moved", Duration::from_secs(40));
        assert_eq!(q.counts().3, 3);
        let start = Instant::now();
        let mut order = vec![];
        for _ in 0..3 {
            let r = q.next(&ALL).await;
            order.push((name(&r), (Instant::now() - start).as_secs()));
            drop(q.started(r.namespace.as_deref().unwrap(), &r.name));
        }
        assert_eq!(order, [("ns/early".into(), 10), ("ns/late".into(), 30), ("ns/moved".into(), 40)]);
        assert_eq!(q.counts(), (0, 0, 0, 0));
        timers.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_the_controller_never_starts_stops_counting() {
        let q = WorkQueue::new(1);
        q.push("ns", "deleted-meanwhile");
        q.push("ns", "next");
        assert_eq!(name(&q.next(&ALL).await), "ns/deleted-meanwhile");
        // Never started: after the timeout the next one is handed out anyway.
        let next = tokio::time::timeout(HANDED_TIMEOUT * 2, q.next(&ALL)).await.expect("not blocked for ever");
        assert_eq!(name(&next), "ns/next");
    }

    #[tokio::test]
    async fn identities_that_do_not_exist_are_not_handed_out_and_hold_nothing() {
        let q = WorkQueue::new(1);
        let deleted = |r: &ObjectRef<MtlsIdentity>| r.name != "gone";
        // A trigger for a deleted identity (its Secret's deletion by the garbage collector).
        q.push("ns", "gone");
        q.push("ns", "kept");
        assert_eq!(name(&q.next(&deleted).await), "ns/kept");
        drop(q.started("ns", "kept"));
        assert_eq!(q.counts(), (0, 0, 0, 0));
        // Re-created under the same name: handed out at once, not after a timeout.
        q.push("ns", "gone");
        assert_eq!(name(&q.pop(&ALL).expect("the new identity is handed out at once")), "ns/gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_seen_while_handed_out_is_kept_if_the_controller_drops_the_entry() {
        let q = WorkQueue::new(10);
        q.push("ns", "a");
        assert_eq!(name(&q.next(&ALL).await), "ns/a");
        // The identity is deleted and created again before the controller looked it up.
        q.push("ns", "a");
        assert!(q.pop(&ALL).is_none(), "not handed out twice at once");
        let again = tokio::time::timeout(HANDED_TIMEOUT * 2, q.next(&ALL)).await.expect("the trigger was kept");
        assert_eq!(name(&again), "ns/a");
        // Started: a trigger that arrived before the start needs nothing more.
        q.push("ns", "a");
        drop(q.started("ns", "a"));
        assert!(tokio::time::timeout(HANDED_TIMEOUT * 2, q.next(&ALL)).await.is_err());
        assert_eq!(q.counts(), (0, 0, 0, 0));
    }
}
