//! Attempt counters for what an attacker may try again and again (password
//! guesses): at most `max` attempts per key (a client address, an account)
//! in a fixed window, with the time until the key may try again. The map
//! is bounded: past [`MAX_KEYS`] keys, expired ones are dropped, and if
//! none is, new keys are refused until some expire.

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// The most keys remembered at once.
pub const MAX_KEYS: usize = 100_000;

pub struct Attempts<K> {
    max: u32,
    window: Duration,
    /// Attempts in the current window, and when it ends.
    map: DashMap<K, (u32, Instant)>,
}

impl<K: Hash + Eq + Clone> Attempts<K> {
    pub fn new(max: u32, window: Duration) -> Self {
        Attempts {
            max,
            window,
            map: DashMap::new(),
        }
    }

    /// Counts one attempt for `key`; `Err` with the time until it may try
    /// again when it has used its attempts.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.map.len() >= MAX_KEYS && !self.map.contains_key(key) {
            self.map.retain(|_, (_, end)| now < *end);
            if self.map.len() >= MAX_KEYS {
                return Err(self.window);
            }
        }
        let mut e = self
            .map
            .entry(key.clone())
            .or_insert((0, now + self.window));
        let (n, end) = &mut *e;
        if now >= *end {
            *n = 0;
            *end = now + self.window;
        }
        if *n >= self.max {
            return Err(*end - now);
        }
        *n += 1;
        Ok(())
    }

    /// Gives back an attempt that turned out well (a right password).
    pub fn refund(&self, key: &K) {
        if let Some(mut e) = self.map.get_mut(key) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_per_window_then_again() {
        let a = Attempts::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert!(a.take(&"x", t).is_ok());
        assert!(a.take(&"x", t).is_ok());
        assert_eq!(
            a.take(&"x", t + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(a.take(&"y", t).is_ok(), "another key is not slowed");
        a.refund(&"x");
        assert!(a.take(&"x", t).is_ok(), "a refunded attempt");
        assert!(
            a.take(&"x", t + Duration::from_secs(60)).is_ok(),
            "a new window"
        );
    }
}
