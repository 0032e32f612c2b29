//! One global token bucket for issuance, so that a burst (thousands of identities created or
//! due at once) is spread out instead of hitting the API server at once. Waiters are served most
//! urgent first (smallest urgency value: an expired certificate before one that merely expires
//! soon), so after downtime the operator repairs what is broken before what is merely due.

use std::{collections::BTreeSet, sync::Mutex, time::Duration};

use tokio::{sync::Notify, time::Instant};

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    tokens: f64,
    last: Instant,
    waiting: BTreeSet<(i64, u64)>,
    seq: u64,
}

/// Removes a waiter that gave up (its reconcile was cancelled) so it never blocks the queue.
struct Ticket<'a> {
    limiter: &'a RateLimiter,
    key: (i64, u64),
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.state.lock().expect("limiter lock poisoned").waiting.remove(&self.key);
            self.limiter.notify.notify_waiters();
        }
    }
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: rate.max(0.001),
            burst,
            state: Mutex::new(State { tokens: burst, last: Instant::now(), waiting: BTreeSet::new(), seq: 0 }),
            notify: Notify::new(),
        }
    }

    /// Waits for one token. Among waiters, the smallest `urgency` goes first (then arrival order).
    pub async fn acquire(&self, urgency: i64) {
        let key = {
            let mut s = self.state.lock().expect("limiter lock poisoned");
            s.seq += 1;
            let key = (urgency, s.seq);
            s.waiting.insert(key);
            key
        };
        let mut ticket = Ticket { limiter: self, key, done: false };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut s = self.state.lock().expect("limiter lock poisoned");
                let now = Instant::now();
                let elapsed = now.duration_since(s.last).as_secs_f64();
                s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
                s.last = now;
                if s.waiting.first() == Some(&key) {
                    if s.tokens >= 1.0 {
                        s.tokens -= 1.0;
                        s.waiting.remove(&key);
                        ticket.done = true;
                        drop(s);
                        self.notify.notify_waiters();
                        return;
                    }
                    Some(Duration::from_secs_f64((1.0 - s.tokens) / self.rate))
                } else {
                    None
                }
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {},
                        _ = &mut notified => {},
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spreads_a_burst_at_the_configured_rate() {
        let limiter = Arc::new(RateLimiter::new(10.0, 5));
        let start = Instant::now();
        let mut handles = vec![];
        for _ in 0..25 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire(0).await;
                Instant::now()
            }));
        }
        let mut times = vec![];
        for h in handles {
            times.push(h.await.unwrap().duration_since(start));
        }
        times.sort();
        // 5 at once (the burst), then 20 more at 10/s: the last one at ~2 s.
        assert_eq!(times.iter().filter(|t| t.is_zero()).count(), 5);
        let last = times.last().unwrap().as_secs_f64();
        assert!((1.9..2.1).contains(&last), "last token at {last}s");
    }

    #[tokio::test(start_paused = true)]
    async fn most_urgent_waiter_goes_first() {
        let limiter = Arc::new(RateLimiter::new(10.0, 1));
        limiter.acquire(0).await; // empty the bucket
        let order = Arc::new(Mutex::new(vec![]));
        let mut handles = vec![];
        for urgency in [50, 10, 40, 20, 30] {
            let (l, o) = (limiter.clone(), order.clone());
            handles.push(tokio::spawn(async move {
                l.acquire(urgency).await;
                o.lock().unwrap().push(urgency);
            }));
            tokio::task::yield_now().await;
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![10, 20, 30, 40, 50]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_does_not_block_others() {
        let limiter = Arc::new(RateLimiter::new(1.0, 1));
        limiter.acquire(0).await;
        let l = limiter.clone();
        let first = tokio::spawn(async move { l.acquire(1).await });
        tokio::task::yield_now().await;
        first.abort();
        let start = Instant::now();
        limiter.acquire(2).await;
        assert!(start.elapsed() <= Duration::from_millis(1100));
    }
}
