//! Calls between domains: discovery, link authentication, links.

pub mod discovery;
pub mod keys;
pub mod link;
