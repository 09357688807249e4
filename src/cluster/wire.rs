//! What the nodes of a cluster say to each other over Redis pub/sub, and
//! how a receiver sees that something was lost.
//!
//! Every message starts with a header line, `NODE EPOCH SEQ`: the sender's
//! name, a number that changes when the sender starts again (or, for
//! presence, announces itself again), and the message's number in that
//! epoch for this channel. Redis pub/sub delivers at most once: a message
//! published while a subscriber reconnects is gone, and only the numbers
//! show it ([`Sequence`]).
//!
//! - On a node's own channel: the header, then one WSP frame, exactly as
//!   the router encoded it for the peer (`[kw, content, {"call": ID}]`).
//! - On the presence channel: the header, then one line per change,
//!   `+USER@DOMAIN` (the sender holds a socket of the user) or `-...` (its
//!   last one left); an empty body starts an epoch.

use std::fmt::Write as _;

use crate::config::valid_node_name;

/// One message, parsed; borrows the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub node: &'a str,
    pub epoch: u64,
    pub seq: u64,
    pub body: &'a str,
}

/// Writes a message: the header line, then `body`.
pub fn encode(node: &str, epoch: u64, seq: u64, body: &str) -> String {
    let mut m = String::with_capacity(node.len() + 40 + body.len());
    // Writing into a String cannot fail.
    let _ = writeln!(m, "{node} {epoch:x} {seq}");
    m.push_str(body);
    m
}

/// Reads a message; `None` when it is not one (it is counted and dropped).
pub fn decode(raw: &[u8]) -> Option<Message<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let (header, body) = text.split_once('\n')?;
    let mut parts = header.split(' ');
    // What another node sends goes into logs and maps: a name as
    // `[cluster] node` allows it, or nothing.
    let node = parts.next().filter(|n| valid_node_name(n))?;
    let epoch = u64::from_str_radix(parts.next()?, 16).ok()?;
    let seq = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Message {
        node,
        epoch,
        seq,
        body,
    })
}

/// Where a sender's numbering stands, as a receiver tracks it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sequence {
    epoch: Option<u64>,
    next: u64,
}

/// What a received number means.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next one: nothing was lost.
    InOrder,
    /// The sender started again (a new epoch): what the receiver knew of
    /// the old one is stale. `first` when this is the first message of the
    /// epoch (nothing of it was missed).
    NewEpoch { first: bool },
    /// Messages of this epoch were lost in between.
    Gap,
}

impl Sequence {
    /// Takes one message's numbers into account.
    pub fn see(&mut self, epoch: u64, seq: u64) -> Seen {
        let seen = match self.epoch {
            Some(e) if e == epoch && seq == self.next => Seen::InOrder,
            Some(e) if e == epoch => Seen::Gap,
            _ => Seen::NewEpoch { first: seq == 0 },
        };
        self.epoch = Some(epoch);
        self.next = seq.wrapping_add(1);
        seen
    }
}

/// A presence change of the body of a presence message.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Here(&'a str),
    Gone(&'a str),
}

/// The changes of a presence body; lines that are neither are skipped.
pub fn changes(body: &str) -> impl Iterator<Item = Change<'_>> {
    body.lines().filter_map(|l| {
        if let Some(u) = l.strip_prefix('+') {
            Some(Change::Here(u))
        } else {
            l.strip_prefix('-').map(Change::Gone)
        }
    })
}

/// Appends one presence change to a body.
pub fn push_change(body: &mut String, user: &str, here: bool) {
    body.push(if here { '+' } else { '-' });
    body.push_str(user);
    body.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_as_written() {
        let frame = r#"["offer",{"sdp":"a\nb"},{"call":"c1234567"}]"#;
        let m = encode("n-1", 0xdead_beef, 42, frame);
        assert_eq!(
            decode(m.as_bytes()),
            Some(Message {
                node: "n-1",
                epoch: 0xdead_beef,
                seq: 42,
                body: frame
            })
        );
        for bad in [
            "",
            "n 1 2",
            "n x 2\n",
            "n 1 y\n",
            " 1 2\n",
            "n 1 2 3\n",
            "n\u{1b}[31m 1 2\n",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(decode(&[0xff, b'\n']), None);
    }

    #[test]
    fn numbers_show_gaps_and_new_epochs() {
        let mut s = Sequence::default();
        assert_eq!(s.see(7, 0), Seen::NewEpoch { first: true });
        assert_eq!(s.see(7, 1), Seen::InOrder);
        assert_eq!(s.see(7, 3), Seen::Gap, "2 was lost");
        assert_eq!(s.see(7, 4), Seen::InOrder, "counting goes on after a gap");
        assert_eq!(s.see(7, 4), Seen::Gap, "a repeat is not in order");
        assert_eq!(s.see(8, 5), Seen::NewEpoch { first: false });
        assert_eq!(s.see(9, 0), Seen::NewEpoch { first: true });
        let mut fresh = Sequence::default();
        assert_eq!(fresh.see(1, 9), Seen::NewEpoch { first: false });
    }

    #[test]
    fn presence_bodies() {
        let mut body = String::new();
        push_change(&mut body, "alice@a.test", true);
        push_change(&mut body, "bob@a.test", false);
        let got: Vec<_> = changes(&body).collect();
        assert_eq!(
            got,
            [Change::Here("alice@a.test"), Change::Gone("bob@a.test")]
        );
        assert_eq!(changes("").count(), 0);
    }
}
