//! Unit tests of link authentication, one file per part, and the helpers
//! they share.

mod document;
mod exporter;
mod header;
mod key_file;
mod message;
mod signing;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::federation::keys::{KeyError, LinkAuth, LinkKey, PublishedKeys};

pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wspd-keys-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) const EXP: [u8; 32] = [7u8; 32];

pub(super) fn signed(key: &LinkKey, exporter: &[u8; 32]) -> LinkAuth {
    key.authorize("a.test", "b.test", exporter)
}

pub(super) fn published(key: &LinkKey, domain: &str) -> PublishedKeys {
    PublishedKeys::parse(key.document(domain).as_bytes(), domain).unwrap()
}

pub(super) fn header_err(h: &str) -> String {
    match LinkAuth::parse(h) {
        Err(e @ KeyError::Header(_)) => e.to_string(),
        other => panic!("{h:?}: expected a header error, got {other:?}"),
    }
}
