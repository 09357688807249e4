//! Calls between domains: discovery, link authentication, links, and
//! `wspd check`, which walks a link's opening step by step.

pub mod check;
pub mod discovery;
pub mod keys;
pub mod link;
