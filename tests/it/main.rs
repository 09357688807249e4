//! The integration tests, in one test binary so that they are linked once:
//! black-box tests of wspd over real sockets against servers on
//! `127.0.0.1:0` (and the real binary where the process matters), the
//! property tests of its pure parts, and the client library's and real
//! browser's tests run from `cargo test`. One module per subject; `common`
//! is the harness they share.
//!
//! `cargo test --test it MODULE::` runs one subject, e.g.
//! `cargo test --test it input::frames::`.

mod common;

mod acme;
mod attacks_federation;
mod attacks_http;
mod attacks_login;
mod attacks_metrics;
mod attacks_readers;
mod browser;
mod calls;
mod check;
mod cli;
mod cluster;
mod cluster_gaps;
mod discovery;
mod faults;
mod federation;
mod input;
mod limits;
mod otlp;
mod props;
mod reload;
mod session_info;
mod shutdown;
mod soak;
mod tls;
mod web;
