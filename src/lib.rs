//! wspd: a federated WebRTC signalling server speaking WSP 1.0.
//!
//! Module map, top to bottom: each module imports only from those below it
//! (docs/ARCHITECTURE.md draws the layers and says what each keeps true).
//! - [`server`]: [`Server`] (bind, build, run, spawn) and its one
//!   [`Drain`] handle; the listener, TLS, HTTP routes, authenticated
//!   upgrades;
//! - [`app`]: [`App`], what every connection shares, built from the
//!   config; the drain and the SIGHUP reload;
//! - [`session`]: the client socket's handler;
//! - [`federation`]: links to other domains (their handler, opening,
//!   authentication, discovery, keys, `wspd check`);
//! - [`cluster`]: one domain on several nodes: presence, liveness and
//!   the node-to-node path through Redis; another node is one more peer;
//! - [`socket`]: the WebSocket pump shared by client sockets and links;
//! - [`acme`]: the server's own certificate from an ACME CA (obtained,
//!   served by a swappable resolver, renewed; TLS-ALPN-01 answers);
//! - [`router`]: who is where; drives the call machines; reaches other
//!   domains through [`router::Remote`];
//! - [`telemetry`]: spans of calls and links, exported over OTLP/HTTP
//!   from a bounded queue (`[tracing]`);
//! - [`peer`]: what every kind of peer shares (handle, outbox);
//! - [`call`]: the call state machine, sans-IO;
//! - [`frame`]: the wire: frames, JSON, typed bye and close codes;
//! - [`auth`]: access tokens and the users file;
//! - [`config`], [`address`], [`limits`], [`throttle`], [`logging`],
//!   [`trace`] (W3C trace context), [`devcerts`]: the leaves.

pub mod acme;
pub mod address;
pub mod app;
pub mod auth;
pub mod call;
pub mod cluster;
pub mod config;
pub mod devcerts;
pub mod federation;
pub mod frame;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod router;
pub mod server;
pub mod session;
pub mod socket;
pub mod telemetry;
pub mod throttle;
pub mod trace;

pub use app::{App, StartError};
pub use server::{Drain, Running, Server};
