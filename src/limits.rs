//! Rate and count limits shared by sockets, links and the listener.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up. A
/// burst lets a call's setup (invite, SDP, a dozen candidates) through at
/// once; the rate bounds a flood.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts open connections per client address, IPv6 addresses grouped by
/// their /64 (see [`address_group`]).
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    open: DashMap<IpAddr, u32>,
}

/// One connection counted against its address; uncounted when dropped.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    owner: Arc<PerIp>,
}

impl PerIp {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(PerIp {
            max,
            open: DashMap::new(),
        })
    }

    /// Counts a connection from `ip`, or `None` when its group has `max`
    /// already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = address_group(ip);
        let mut n = self.open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            owner: self.clone(),
        })
    }
}

/// The group an address is counted in: an IPv4 address alone (also when
/// it arrives IPv4-mapped, `::ffff:a.b.c.d`, on a dual-stack listener); an
/// IPv6 address with its /64, the smallest block one subscriber is usually
/// given, so that one client cannot open `max` connections from each of
/// its 2^64 addresses.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.owner.open.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // 100 ms at 10/s buys one more.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Saving up stops at the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..5).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn per_ip_counts_and_forgets() {
        let p = PerIp::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = p.acquire(ip).unwrap();
        let b = p.acquire(ip).unwrap();
        assert!(p.acquire(ip).is_none());
        assert!(p.acquire("::1".parse().unwrap()).is_some());
        drop(a);
        let c = p.acquire(ip).unwrap();
        drop((b, c));
        assert!(
            p.open.get(&ip).is_none(),
            "no entry left for an address with nothing open"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = PerIp::new(2);
        let _a = p.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = p.acquire(ip("2001:db8:1:2:ffff:ffff:ffff:fffe")).unwrap();
        // A third address of the same /64 is the same client.
        assert!(p.acquire(ip("2001:db8:1:2:abcd::9")).is_none());
        // The next /64 is another.
        let _c = p.acquire(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(
            address_group(ip("2001:db8:1:2:abcd::9")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_group(ip("::1")), ip("::"));
    }

    #[test]
    fn ipv4_counts_per_address_also_when_mapped() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = PerIp::new(1);
        let a = p.acquire(ip("192.0.2.1")).unwrap();
        // Its mapped form on a dual-stack listener is the same address.
        assert!(p.acquire(ip("::ffff:192.0.2.1")).is_none());
        // Its neighbour is not grouped with it.
        let _b = p.acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(address_group(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        drop(a);
        let _m = p.acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert!(p.acquire(ip("192.0.2.1")).is_none());
    }
}
