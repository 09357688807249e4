//! The bytes a link signature covers, and the TLS exporter inside them that
//! ties a signature to one TLS session.

use super::{EXPORTER_LABEL, EXPORTER_LEN, MESSAGE_PREFIX};

/// The bytes a link signature covers:
///
/// `wsp-link-1` `|` origin `|` destination `|` exporter
///
/// — the ASCII text up to and including the third `|`, then the 32 raw
/// exporter bytes, no terminator. The domains are lowercased here (they are
/// LDH names, so `|` cannot occur in them).
pub fn link_message(origin: &str, destination: &str, exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        MESSAGE_PREFIX.len() + 3 + origin.len() + destination.len() + EXPORTER_LEN,
    );
    m.extend_from_slice(MESSAGE_PREFIX);
    m.push(b'|');
    m.extend(origin.bytes().map(|b| b.to_ascii_lowercase()));
    m.push(b'|');
    m.extend(destination.bytes().map(|b| b.to_ascii_lowercase()));
    m.push(b'|');
    m.extend_from_slice(exporter);
    m
}

/// The link exporter of a TLS connection (client or server side): the
/// keying material for [`EXPORTER_LABEL`], no context, 32 bytes. `None`
/// while the handshake is still running or if the export fails.
///
/// Both ends of one connection get the same value; two connections never
/// do.
pub fn exporter<Data>(conn: &rustls::ConnectionCommon<Data>) -> Option<[u8; EXPORTER_LEN]> {
    if conn.is_handshaking() {
        return None;
    }
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .ok()
}

/// [`exporter`] for the opening side of a link.
pub fn client_exporter(conn: &rustls::ClientConnection) -> Option<[u8; EXPORTER_LEN]> {
    exporter(conn)
}

/// [`exporter`] for the receiving side of a link.
pub fn server_exporter(conn: &rustls::ServerConnection) -> Option<[u8; EXPORTER_LEN]> {
    exporter(conn)
}
