//! Calls between domains. `links.rs` is how the router reaches other
//! domains (policy, one link per domain, backoff) and accepts their links;
//! `link.rs` is one link's handler; `dial.rs` opens connections to other
//! servers; `auth.rs` checks incoming links against the origin's keys;
//! `discovery.rs` finds a domain's server; `keys.rs` is the link key, the
//! signed header and the keys document; `check.rs` is `wspd check`, which
//! walks a link's opening step by step.

pub mod auth;
pub mod check;
pub mod dial;
pub mod discovery;
pub mod keys;
pub mod link;
pub mod links;
