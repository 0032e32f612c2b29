//! One global token bucket for issuance, so that a burst (thousands of identities created or
//! due at once) is spread out instead of hitting the API server at once.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter { rate: rate.max(0.001), burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits for one token.
    pub async fn acquire(&self) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *s;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst) - 1.0;
            *s = (tokens, now);
            if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.rate) }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spreads_a_burst_at_the_configured_rate() {
        let limiter = std::sync::Arc::new(RateLimiter::new(10.0, 5));
        let start = Instant::now();
        let mut handles = vec![];
        for _ in 0..25 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire().await;
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
}
