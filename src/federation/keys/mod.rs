//! Link authentication: how a server proves, on a link it opens, which
//! domain it speaks for — with an ordinary server-only TLS certificate.
//!
//! Each server holds an ed25519 key pair ([`LinkKey`], kept in a PKCS#8 PEM
//! file, created on first start) and publishes its public half at
//! `GET /.well-known/wsp/keys` ([`LinkKey::document`], read back by
//! [`PublishedKeys::parse`]). The opening server signs [`link_message`] —
//! origin, destination and the TLS exporter of the link's own connection —
//! and sends the signature in the upgrade's `Authorization: WSP-Link ...`
//! header ([`LinkAuth`]). The receiving server fetches the origin's keys
//! over TLS verified for the origin domain and checks the signature
//! ([`PublishedKeys::verify`]); the exporter ties the signature to that one
//! TLS session, so it cannot be replayed on another.
//!
//! Everything here is sans-IO except [`LinkKey::load_or_create`].
//!
//! The parts: `key` (the key file and key ids), `message` (the signed
//! bytes and the TLS exporter they cover), `header` (the `WSP-Link`
//! header), `document` (the published keys document and verification) and
//! `error` (why any of it failed). They stay private and everything is
//! re-exported here, so callers keep naming `federation::keys::X` whichever
//! part `X` lives in.

mod document;
mod error;
mod header;
mod key;
mod message;

#[cfg(test)]
mod tests;

pub use document::{PublicKey, PublishedKeys};
pub use error::KeyError;
pub use header::LinkAuth;
pub use key::{LinkKey, key_id};
pub use message::{client_exporter, exporter, link_message, server_exporter};

/// The label of the TLS exporter (RFC 5705 / RFC 8446 section 7.5) that a
/// link signature covers; no context, [`EXPORTER_LEN`] bytes.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-wsp-link";

/// Length of the TLS exporter value, in bytes.
pub const EXPORTER_LEN: usize = 32;

/// First bytes of every signed link message (followed by `|`).
pub const MESSAGE_PREFIX: &[u8] = b"wsp-link-1";

/// The authentication scheme of the `Authorization` header.
pub const SCHEME: &str = "WSP-Link";

/// The only key algorithm, as it appears in key ids and keys documents.
pub const ALG: &str = "ed25519";

/// Longest value of one `Authorization: WSP-Link` parameter, in bytes.
pub const MAX_PARAM_LEN: usize = 256;

/// Largest keys document accepted, in bytes.
pub const MAX_DOCUMENT_LEN: usize = 16 * 1024;

/// Most keys (of any algorithm) in one keys document.
pub const MAX_KEYS: usize = 16;
