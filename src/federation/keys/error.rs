//! The one error type of link authentication and of the key file, with the
//! short reason each failure is counted under in metrics.

use std::io;
use std::path::PathBuf;

/// Why link authentication (or the key file) failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The `Authorization: WSP-Link` header is malformed; the text says
    /// which parameter.
    #[error("bad WSP-Link authorization header: {0}")]
    Header(String),
    /// The origin publishes no key with this id.
    #[error("{domain} publishes no link key with id {key_id:?}")]
    UnknownKey { domain: String, key_id: String },
    /// The keys were fetched for one domain, the link claims another origin.
    #[error("the link claims origin {origin} but the keys checked are {domain}'s")]
    WrongOrigin { origin: String, domain: String },
    /// The signature is malformed or does not verify.
    #[error("the link signature {0}")]
    Signature(&'static str),
    /// The keys document names another domain than the one asked for.
    #[error("the keys document is for {found:?}, not for {expected}")]
    OtherDomain { expected: String, found: String },
    /// The keys document is malformed.
    #[error("bad keys document: {0}")]
    Document(String),
    /// The key file could not be read or written.
    #[error("link key file {}: {source}", path.display())]
    FileIo { path: PathBuf, source: io::Error },
    /// The key file exists but does not hold a usable key. It is never
    /// overwritten: the operator fixes or removes it.
    #[error("link key file {}: {why}", path.display())]
    BadKeyFile { path: PathBuf, why: String },
}

impl KeyError {
    /// A short label for metrics: `header`, `unknown_key`, `signature`,
    /// `document` or `file`.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::Header(_) => "header",
            KeyError::UnknownKey { .. } | KeyError::WrongOrigin { .. } => "unknown_key",
            KeyError::Signature(_) => "signature",
            KeyError::OtherDomain { .. } | KeyError::Document(_) => "document",
            KeyError::FileIo { .. } | KeyError::BadKeyFile { .. } => "file",
        }
    }
}
