//! The numbers of the wire, as types: bye codes (docs/protocol.md §5), the
//! byes this server sends with their descriptions, what each code means for
//! a call's outcome, and the WebSocket close codes (§6).
//!
//! Nothing else in the server writes a bye or close code as a number: a
//! code is one of the named values here, so the code -> outcome mapping
//! exists once ([`ByeCode::outcome`]) and every description the server
//! sends can be read in one place.

use std::borrow::Cow;
use std::fmt;

use crate::address::AddressError;

/// The code of a `bye` (100-699), sent by a client or by a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByeCode(u16);

impl ByeCode {
    /// Signalling continues on the data channel.
    pub const TRANSFERRED: ByeCode = ByeCode(101);
    /// A normal hang-up; "answered elsewhere" to the other devices.
    pub const OK: ByeCode = ByeCode(200);
    pub const BAD_REQUEST: ByeCode = ByeCode(400);
    pub const FORBIDDEN: ByeCode = ByeCode(403);
    pub const NOT_FOUND: ByeCode = ByeCode(404);
    /// No answer before the ring timeout.
    pub const TIMEOUT: ByeCode = ByeCode(408);
    /// The peer's socket or the link went away.
    pub const GONE: ByeCode = ByeCode(410);
    /// User offline, or no device answered.
    pub const UNAVAILABLE: ByeCode = ByeCode(480);
    pub const NO_SUCH_CALL: ByeCode = ByeCode(481);
    pub const BUSY: ByeCode = ByeCode(486);
    /// The caller hung up before an answer.
    pub const CANCELLED: ByeCode = ByeCode(487);
    /// The callee's server answered wrongly.
    pub const BAD_GATEWAY: ByeCode = ByeCode(502);
    /// Too many calls; the server is shutting down.
    pub const OVERLOADED: ByeCode = ByeCode(503);
    /// The callee's server could not be reached in time.
    pub const GATEWAY_TIMEOUT: ByeCode = ByeCode(504);
    pub const DECLINED: ByeCode = ByeCode(603);
    /// The callee's domain has no WSP service.
    pub const NO_SERVICE: ByeCode = ByeCode(604);

    /// A code read from the wire; `None` outside 100-699.
    pub const fn new(code: u16) -> Option<ByeCode> {
        if code >= 100 && code <= 699 {
            Some(ByeCode(code))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// How a call ends when this code is its answer before anyone
    /// answered: the one mapping from code to outcome.
    pub fn outcome(self) -> Outcome {
        match self.0 {
            101 => Outcome::Transferred,
            400 | 481 => Outcome::BadRequest,
            403 => Outcome::Forbidden,
            404 => Outcome::NotFound,
            408 => Outcome::Timeout,
            410 => Outcome::Gone,
            480 => Outcome::Offline,
            486 => Outcome::Busy,
            487 => Outcome::Cancelled,
            502 | 504 | 604 => Outcome::Unreachable,
            503 => Outcome::Unavailable,
            603 => Outcome::Declined,
            _ => Outcome::Unanswered,
        }
    }
}

impl fmt::Display for ByeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A bye the server itself sends: a code and its description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerBye {
    pub code: ByeCode,
    pub description: &'static str,
}

const fn bye(code: ByeCode, description: &'static str) -> ServerBye {
    ServerBye { code, description }
}

/// Every bye the server sends, by who decides it.
impl ServerBye {
    // The call's rules (call.rs).
    pub const NO_ANSWER: ServerBye = bye(ByeCode::TIMEOUT, "No answer");
    pub const SHUTTING_DOWN: ServerBye = bye(ByeCode::OVERLOADED, "Server shutting down");
    pub const NO_SUCH_CALL: ServerBye = bye(ByeCode::NO_SUCH_CALL, "No such call");
    pub const EARLY_TRANSFER: ServerBye =
        bye(ByeCode::BAD_REQUEST, "Cannot transfer before an answer");
    pub const NOT_BEFORE_ANSWER: ServerBye =
        bye(ByeCode::BAD_REQUEST, "Not allowed before an answer");
    pub const CALLER_ANSWERS_FIRST: ServerBye =
        bye(ByeCode::BAD_REQUEST, "The caller answers first");
    pub const CANCELLED: ServerBye = bye(ByeCode::CANCELLED, "Cancelled");
    pub const ANSWERED_ELSEWHERE: ServerBye = bye(ByeCode::OK, "Answered elsewhere");
    pub const DECLINED_ELSEWHERE: ServerBye = bye(ByeCode::DECLINED, "Declined elsewhere");
    pub const CALLER_GONE: ServerBye = bye(ByeCode::GONE, "Caller went away");
    pub const PEER_GONE: ServerBye = bye(ByeCode::GONE, "Peer went away");
    pub const BUSY: ServerBye = bye(ByeCode::BUSY, "Busy");
    pub const UNANSWERED: ServerBye = bye(ByeCode::UNAVAILABLE, "No device answered");

    // Invites refused before a call exists (router.rs).
    pub const CALL_ID_IN_USE: ServerBye = bye(ByeCode::BAD_REQUEST, "Call id already in use");
    pub const SPOOFED_CALLER: ServerBye = bye(
        ByeCode::FORBIDDEN,
        "caller.uri is not the user of this socket",
    );
    pub const NO_FEDERATION: ServerBye = bye(
        ByeCode::FORBIDDEN,
        "This server does not federate with other domains",
    );
    pub const POLICY: ServerBye = bye(
        ByeCode::FORBIDDEN,
        "Federation with this domain is refused by policy",
    );
    pub const NO_SUCH_USER: ServerBye = bye(ByeCode::NOT_FOUND, "No such user");
    pub const OFFLINE: ServerBye = bye(ByeCode::UNAVAILABLE, "User offline");
    pub const TOO_MANY_RINGING: ServerBye =
        bye(ByeCode::BUSY, "Busy: too many calls ringing for this user");
    pub const TOO_MANY_CALLS_ON_SOCKET: ServerBye =
        bye(ByeCode::OVERLOADED, "Too many calls on this socket");
    pub const WRONG_DIRECTION: ServerBye = bye(
        ByeCode::BAD_REQUEST,
        "Invites are not accepted in this direction of the link",
    );
    pub const LINK_INVITE_RATE: ServerBye = bye(
        ByeCode::OVERLOADED,
        "Too many invites from this domain: slow down",
    );
    pub const TOO_MANY_CALLS_ON_LINK: ServerBye = bye(
        ByeCode::OVERLOADED,
        "Too many calls in flight from this domain",
    );
    pub const BAD_LINK_ADDRESS: ServerBye = bye(ByeCode::BAD_REQUEST, "Bad address in invite");
    pub const MISROUTED: ServerBye = bye(
        ByeCode::FORBIDDEN,
        "An invite on a link must be from the link's origin to the receiving domain",
    );

    // The nodes of a cluster (cluster/).
    pub const CLUSTER_UNREACHABLE: ServerBye = bye(
        ByeCode::OVERLOADED,
        "This domain's servers cannot reach each other",
    );
    pub const CLUSTER_GAP: ServerBye = bye(
        ByeCode::OVERLOADED,
        "Messages between this domain's servers were lost",
    );

    // Frames that name no call (session.rs, federation/link.rs).
    pub const CALL_REQUIRED: ServerBye = bye(
        ByeCode::BAD_REQUEST,
        "options.call is required while this socket has several calls",
    );
    pub const LINK_CALL_REQUIRED: ServerBye = bye(
        ByeCode::BAD_REQUEST,
        "Frames on a link must carry options.call",
    );

    // A link that could not be had (federation/dial.rs).
    pub const LINK_SHUTDOWN: ServerBye = bye(ByeCode::OVERLOADED, "This server is shutting down");
    pub const DOMAIN_NO_SERVICE: ServerBye = bye(
        ByeCode::NO_SERVICE,
        "The callee's domain has no WSP service",
    );
    pub const DOMAIN_DNS_TIMEOUT: ServerBye = bye(
        ByeCode::GATEWAY_TIMEOUT,
        "The callee's domain could not be resolved in time",
    );
    pub const DOMAIN_INVALID: ServerBye = bye(
        ByeCode::NO_SERVICE,
        "The callee's domain is not a valid name",
    );
    pub const SERVER_TIMEOUT: ServerBye = bye(
        ByeCode::GATEWAY_TIMEOUT,
        "The callee's server could not be reached in time",
    );
    pub const SERVER_UNREACHABLE: ServerBye = bye(
        ByeCode::GATEWAY_TIMEOUT,
        "The callee's server could not be reached",
    );
    pub const SERVER_BAD_CERTIFICATE: ServerBye = bye(
        ByeCode::BAD_GATEWAY,
        "The callee's server has no valid certificate for its domain",
    );
    pub const SERVER_ANSWERED_WRONGLY: ServerBye =
        bye(ByeCode::BAD_GATEWAY, "The callee's server answered wrongly");
    pub const SERVER_REFUSES: ServerBye = bye(
        ByeCode::FORBIDDEN,
        "The callee's server refuses federation with this domain",
    );
    pub const SERVER_REFUSED_LINK: ServerBye = bye(
        ByeCode::BAD_GATEWAY,
        "The callee's server did not accept this server's link",
    );

    /// An invite whose `callee.uri` is not an address: the description says
    /// which part is wrong.
    pub const fn bad_callee(e: AddressError) -> ServerBye {
        bye(
            ByeCode::BAD_REQUEST,
            match e {
                AddressError::NoAt => "callee.uri: an address is user@domain",
                AddressError::BadUser => {
                    "callee.uri: the user part must be 1-64 characters of a-z, 0-9, '.', '_' or '-'"
                }
                AddressError::BadDomain => "callee.uri: the domain part is not a valid domain name",
            },
        )
    }

    /// How a call refused with this bye is counted.
    pub fn outcome(self) -> Outcome {
        self.code.outcome()
    }
}

/// How a call ended; the label of `wspd_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Both sides sent bye 101.
    Transferred,
    /// A side hung up after the call was answered.
    HungUp,
    /// The caller hung up before an answer (487 to the devices).
    Cancelled,
    /// Nobody answered before the ring timeout (408).
    Timeout,
    /// A device declined (603).
    Declined,
    /// Every device was busy (486).
    Busy,
    /// Every device left without answering (480).
    Unanswered,
    /// A party's socket or link went away (410).
    Gone,
    /// The callee has no socket open (480), decided before a call exists.
    Offline,
    /// No such user (404).
    NotFound,
    /// Refused: spoofed caller or policy (403).
    Forbidden,
    /// Bad address or call id (400).
    BadRequest,
    /// The server is shutting down or overloaded (503).
    Unavailable,
    /// The callee's domain or server could not be reached or answered
    /// wrongly (502, 504, 604).
    Unreachable,
}

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Outcome::Transferred,
        Outcome::HungUp,
        Outcome::Cancelled,
        Outcome::Timeout,
        Outcome::Declined,
        Outcome::Busy,
        Outcome::Unanswered,
        Outcome::Gone,
        Outcome::Offline,
        Outcome::NotFound,
        Outcome::Forbidden,
        Outcome::BadRequest,
        Outcome::Unavailable,
        Outcome::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Transferred => "transferred",
            Outcome::HungUp => "hung_up",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
            Outcome::Declined => "declined",
            Outcome::Busy => "busy",
            Outcome::Unanswered => "unanswered",
            Outcome::Gone => "gone",
            Outcome::Offline => "offline",
            Outcome::NotFound => "not_found",
            Outcome::Forbidden => "forbidden",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::Unreachable => "unreachable",
        }
    }
}

/// The WebSocket close codes the server sends (docs/protocol.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// A link closed because it was idle.
    Normal,
    /// The server is shutting down.
    GoingAway,
    /// JSON that is not a frame, or a WebSocket protocol violation.
    Protocol,
    /// A binary message.
    Unsupported,
    /// Text that is not JSON, or not UTF-8.
    NotJson,
    /// A flood, or a reader too slow for its outbox.
    Policy,
    /// A message over `limits.max_frame_bytes`.
    TooBig,
}

impl CloseCode {
    pub const fn get(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::NotJson => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
        }
    }
}

/// Why the server closes a socket: the close frame it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: Cow<'static, str>,
}

impl Close {
    pub fn new(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_from_the_wire_are_bounded() {
        assert_eq!(ByeCode::new(99), None);
        assert_eq!(ByeCode::new(700), None);
        assert_eq!(ByeCode::new(101), Some(ByeCode::TRANSFERRED));
        assert_eq!(ByeCode::new(699).map(ByeCode::get), Some(699));
    }

    #[test]
    fn every_server_bye_is_counted_as_its_code_says() {
        assert_eq!(ServerBye::OFFLINE.outcome(), Outcome::Offline);
        assert_eq!(ServerBye::POLICY.outcome(), Outcome::Forbidden);
        assert_eq!(ServerBye::LINK_SHUTDOWN.outcome(), Outcome::Unavailable);
        assert_eq!(ServerBye::DOMAIN_NO_SERVICE.outcome(), Outcome::Unreachable);
        assert_eq!(ByeCode::new(499).unwrap().outcome(), Outcome::Unanswered);
    }

    #[test]
    fn bad_callee_descriptions_match_the_address_errors() {
        for e in [
            AddressError::NoAt,
            AddressError::BadUser,
            AddressError::BadDomain,
        ] {
            assert_eq!(
                ServerBye::bad_callee(e).description,
                format!("callee.uri: {e}")
            );
        }
    }
}
