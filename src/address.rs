//! User addresses (`user@domain`) and call ids: the two identifiers of the
//! protocol, validated once at the edge so the rest of the server can trust
//! them.

use std::fmt;
use std::sync::Arc;

/// A validated, normalised user address: `user@domain`, both parts
/// lowercase. Cheap to clone (one reference count).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    full: Arc<str>,
    at: usize,
}

/// Why a string is not an address. The text is shown to clients in bye 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("an address is user@domain")]
    NoAt,
    #[error("the user part must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")]
    BadUser,
    #[error("the domain part is not a valid domain name")]
    BadDomain,
}

impl Address {
    /// Parses and normalises `user@domain`.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let (user, domain) = s.rsplit_once('@').ok_or(AddressError::NoAt)?;
        if user.is_empty()
            || user.len() > 64
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(AddressError::BadUser);
        }
        let domain = normalize_domain(domain).ok_or(AddressError::BadDomain)?;
        let mut full = String::with_capacity(user.len() + 1 + domain.len());
        full.push_str(&user.to_ascii_lowercase());
        full.push('@');
        full.push_str(&domain);
        Ok(Address {
            at: user.len(),
            full: full.into(),
        })
    }

    pub fn user(&self) -> &str {
        &self.full[..self.at]
    }

    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.full)
    }
}

/// Lowercases and checks a DNS domain name (LDH labels, 1-63 characters each,
/// at most 253 in all, no trailing dot). Returns `None` when it is not one.
pub fn normalize_domain(domain: &str) -> Option<String> {
    if domain.is_empty() || domain.len() > 253 {
        return None;
    }
    let ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    ok.then(|| domain.to_ascii_lowercase())
}

/// A call id: 8-64 characters of `[A-Za-z0-9_-]`. Case matters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CallId(Arc<str>);

impl CallId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (8..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| CallId(s.into()))
    }

    /// A fresh id of 128 random bits, as 32 hex digits.
    pub fn random() -> Self {
        let bits: u128 = rand::random();
        CallId(format!("{bits:032x}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        let a = Address::parse("Alice@A.Example").unwrap();
        assert_eq!(a.as_str(), "alice@a.example");
        assert_eq!(a.user(), "alice");
        assert_eq!(a.domain(), "a.example");
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert_eq!(Address::parse("alice"), Err(AddressError::NoAt));
        assert_eq!(Address::parse("@a.test"), Err(AddressError::BadUser));
        assert_eq!(Address::parse("al ice@a.test"), Err(AddressError::BadUser));
        assert_eq!(
            Address::parse(&format!("{}@a.test", "x".repeat(65))),
            Err(AddressError::BadUser)
        );
        assert_eq!(Address::parse("alice@"), Err(AddressError::BadDomain));
        assert_eq!(
            Address::parse("alice@a..test"),
            Err(AddressError::BadDomain)
        );
        assert_eq!(
            Address::parse("alice@-a.test"),
            Err(AddressError::BadDomain)
        );
        assert_eq!(Address::parse("a@b@c.test"), Err(AddressError::BadUser));
    }

    #[test]
    fn call_ids() {
        assert!(CallId::parse("abcdefgh").is_some());
        assert!(CallId::parse("abcdefg").is_none());
        assert!(CallId::parse(&"a".repeat(65)).is_none());
        assert!(CallId::parse("abcd efgh").is_none());
        let r = CallId::random();
        assert_eq!(r.as_str().len(), 32);
        assert!(CallId::parse(r.as_str()).is_some());
    }
}
