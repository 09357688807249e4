//! Properties of durations in the config (`wspd::config`): accepted
//! exactly when usable without overflow, and the huge ones that used to
//! overflow.

use proptest::prelude::*;

use super::config;

/// How a duration may be written in the config, and what it means.
fn conf_duration() -> impl Strategy<Value = (String, Option<std::time::Duration>)> {
    use std::time::Duration;
    let n = prop_oneof![
        3 => 0u64..100_000,
        1 => 0u64..=u64::MAX,
        1 => proptest::sample::select(vec![
            315_360_000u64,
            315_360_001,
            87_600,
            87_601,
            5_256_000,
            5_256_001,
            u64::MAX / 1000,
            u64::MAX / 3600,
            u64::MAX,
        ]),
    ];
    (n, 0usize..5).prop_map(|(n, unit)| match unit {
        0 => (n.to_string(), Some(Duration::from_secs(n))),
        1 => (format!("\"{n}ms\""), Some(Duration::from_millis(n))),
        2 => (format!("\"{n}s\""), Some(Duration::from_secs(n))),
        3 => (
            format!("\"{n}m\""),
            n.checked_mul(60).map(Duration::from_secs),
        ),
        _ => (
            format!("\"{n}h\""),
            n.checked_mul(3600).map(Duration::from_secs),
        ),
    })
}

proptest! {
    #![proptest_config(config())]

    /// A duration in the config is accepted exactly when it is more than
    /// zero and at most 10 years, and an accepted one can be added to now
    /// and to the Unix time: the ring deadline and token expiries cannot
    /// overflow (fuzz/fuzz_targets/config_parse.rs found that they could).
    #[test]
    fn config_durations_are_bounded((text, d) in conf_duration(), key in 0usize..2) {
        use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
        let (section, name) = [("limits", "ring_timeout"), ("auth", "token_ttl")][key];
        let mut toml = String::from(
            "domain = \"example.com\"\nlisten = \"127.0.0.1:0\"\n\
             [auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
        );
        if section == "auth" {
            toml.push_str(&format!("{name} = {text}\n"));
        } else {
            toml.push_str(&format!("[{section}]\n{name} = {text}\n"));
        }
        let max = Duration::from_secs(87600 * 3600);
        let valid = d.is_some_and(|d| !d.is_zero() && d <= max);
        match wspd::config::Config::parse(&toml, std::path::Path::new(".")) {
            Ok(c) => {
                prop_assert!(valid, "{} = {} accepted", name, text);
                let got = if key == 0 { c.limits.ring_timeout } else { c.auth.token_ttl };
                prop_assert_eq!(Some(got), d);
                prop_assert!(Instant::now().checked_add(got).is_some());
                let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
                prop_assert!(unix.checked_add(got.as_secs()).is_some());
            }
            Err(e) => {
                prop_assert!(!valid, "{} = {} refused: {}", name, text, e);
                prop_assert!(e.to_string().contains(name), "{}", e);
            }
        }
    }
}

/// The durations that used to be accepted and then overflowed at use: an
/// invite panicked on `now + ring_timeout`.
#[test]
fn huge_durations_are_refused() {
    for text in [
        "18446744073709551615",
        "\"5124095576030431h\"",
        "\"87601h\"",
    ] {
        let toml = format!(
            "domain = \"example.com\"\nlisten = \"127.0.0.1:0\"\n\
             [auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             [limits]\nring_timeout = {text}\n"
        );
        let e = wspd::config::Config::parse(&toml, std::path::Path::new("."))
            .expect_err(text)
            .to_string();
        assert!(e.contains("ring_timeout") && e.contains("10 years"), "{e}");
    }
}
