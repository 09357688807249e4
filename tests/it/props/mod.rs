//! Property tests (proptest) of the pure parts of wspd, one module per
//! subject: the frame codec (`wspd::frame`), the call state machine
//! (`wspd::call`) and durations in the config (`wspd::config`).
//!
//! They run in the normal `cargo test` in a few seconds: 256 cases each.
//! A failing case is shrunk and its seed saved next to the module that
//! found it (`frame.proptest-regressions`, `call.proptest-regressions`, ...),
//! which is meant to be committed so that the case is run first from then
//! on. `PROPTEST_CASES=10000 cargo test --release --test it props::` runs
//! more.
//!
//! docs/fuzzing.md describes these properties and the fuzz targets that
//! complement them.

mod call;
mod durations;
mod frame;

use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=10000 runs more.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        // `<module>.proptest-regressions` beside each module's source: the
        // default place, next to src/lib.rs, is not found from an
        // integration test.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}
