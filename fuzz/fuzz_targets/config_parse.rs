//! `wspd::config::Config::parse` on arbitrary text (bytes that are not UTF-8
//! are decoded lossily).
//!
//! What must hold:
//! - parse never panics, and every error's Display is non-empty;
//! - an accepted config keeps the rules docs/operating.md states: the domain
//!   is a lowercase DNS name, the secret has at least 32 bytes (and the
//!   development secret only on loopback), the limits are in their ranges,
//!   relative paths are joined to the base folder;
//! - every duration can be used: added to now (the ring deadline, the
//!   discovery failure cache) and, in whole seconds, to the Unix time
//!   (token and TURN credential expiries) without overflow.

#![no_main]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use wspd::address::normalize_domain;
use wspd::config::{Config, DEV_SECRET};

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
});

fn usable(what: &str, d: Duration) {
    assert!(
        Instant::now().checked_add(d).is_some(),
        "{what} = {d:?} overflows an Instant"
    );
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        unix.checked_add(d.as_secs())
            .is_some_and(|t| t < i64::MAX as u64),
        "{what} = {d:?} overflows a Unix time"
    );
}

fn check(text: &str) {
    let base = Path::new("/etc/wspd");
    let c = match Config::parse(text, base) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "empty error {e:?}");
            return;
        }
    };
    assert_eq!(normalize_domain(&c.domain).as_deref(), Some(&*c.domain));
    assert!(c.auth.secret.len() >= 32);
    assert!(c.auth.secret != DEV_SECRET || c.listen.ip().is_loopback());
    assert!(!c.auth.token_ttl.is_zero());
    usable("auth.token_ttl", c.auth.token_ttl);
    if let Some(u) = &c.auth.users {
        assert!(u.starts_with(base));
    }
    if let Some(t) = &c.tls {
        assert!(t.cert.starts_with(base) && t.key.starts_with(base));
    }

    let l = &c.limits;
    assert!((1024..=16 * 1024 * 1024).contains(&l.max_frame_bytes));
    assert!(l.max_connections >= 1 && l.calls_per_socket >= 1 && l.outbox_frames >= 1);
    assert!(!l.ring_timeout.is_zero() && !l.handshake_timeout.is_zero());
    assert!(!l.keepalive_ping.is_zero() && l.keepalive_timeout > l.keepalive_ping);
    for (what, d) in [
        ("limits.ring_timeout", l.ring_timeout),
        ("limits.handshake_timeout", l.handshake_timeout),
        ("limits.keepalive_ping", l.keepalive_ping),
        ("limits.keepalive_timeout", l.keepalive_timeout),
        ("limits.login_failure_delay", l.login_failure_delay),
    ] {
        usable(what, d);
    }

    if let Some(f) = &c.federation {
        assert!(c.tls.is_some(), "federation needs [tls]");
        assert!(f.key.starts_with(base));
        for d in f.peers.keys().chain(&f.allow).chain(&f.deny) {
            assert_eq!(normalize_domain(d).as_deref(), Some(d.as_str()));
        }
        for (what, d) in [
            ("federation.lookup_timeout", f.lookup_timeout),
            ("federation.connect_timeout", f.connect_timeout),
            ("federation.link_idle_timeout", f.link_idle_timeout),
            ("federation.failure_cache", f.failure_cache),
            ("federation.backoff_max", f.backoff_max),
        ] {
            usable(what, d);
        }
        assert!(f.backoff_max <= Duration::from_secs(300));
    }
    if let Some(t) = &c.turn {
        assert!(!t.urls.is_empty() && t.secret.len() >= 16 && !t.ttl.is_zero());
        usable("turn.ttl", t.ttl);
    }
}
