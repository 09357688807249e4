//! Client authentication: access tokens (JWT, HS256) and the users file
//! (argon2 password hashes) behind `POST /token`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::address::Address;

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Why a token was refused; each is a 401 with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no access token: send Authorization: Bearer <token> or ?access_token=<token>")]
    Missing,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid (bad signature or format)")]
    Invalid,
    #[error("the access token's subject is not a valid user address")]
    BadSubject,
    #[error("the access token is for another domain")]
    WrongDomain,
    #[error("the access token's user is not in this server's users file")]
    UnknownUser,
}

impl TokenError {
    /// The machine-readable id in the 401 body.
    pub fn id(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing-token",
            TokenError::Expired => "token-expired",
            TokenError::Invalid => "invalid-token",
            TokenError::BadSubject => "invalid-token",
            TokenError::WrongDomain => "wrong-domain",
            TokenError::UnknownUser => "unknown-user",
        }
    }
}

/// Mints and checks tokens with one domain's secret.
pub struct Tokens {
    domain: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tokens {
    pub fn new(domain: &str, secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The server mints its own tokens: little clock skew to allow for.
        validation.leeway = 5;
        validation.validate_aud = false;
        Tokens {
            domain: domain.to_string(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user`, valid for `ttl`; returns it and its expiry (Unix
    /// seconds).
    pub fn mint(&self, user: &Address, ttl: Duration) -> (String, u64) {
        let iat = unix_now();
        let exp = iat + ttl.as_secs().max(1);
        let claims = Claims {
            sub: user.to_string(),
            exp,
            iat,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            // Encoding HS256 claims of plain strings and integers cannot fail.
            .expect("HS256 encoding of plain claims");
        (token, exp)
    }

    /// Checks a token and returns the user it names.
    pub fn verify(&self, token: &str) -> Result<Address, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let user = Address::parse(&data.claims.sub).map_err(|_| TokenError::BadSubject)?;
        if user.domain() != self.domain {
            return Err(TokenError::WrongDomain);
        }
        Ok(user)
    }
}

/// One RTCIceServer entry with time-limited TURN credentials, in coturn's
/// shared-secret scheme (`use-auth-secret`): the username is
/// `<expiry unix seconds>:<user address>` and the credential is
/// base64(HMAC-SHA1(secret, username)).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

pub fn turn_credentials(turn: &crate::config::Turn, user: &Address) -> IceServer {
    turn_credentials_until(turn, user, unix_now() + turn.ttl.as_secs())
}

fn turn_credentials_until(turn: &crate::config::Turn, user: &Address, expiry: u64) -> IceServer {
    use base64::Engine;
    let username = format!("{expiry}:{user}");
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        turn.secret.as_bytes(),
    );
    let tag = ring::hmac::sign(&key, username.as_bytes());
    IceServer {
        urls: turn.urls.clone(),
        username,
        credential: base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
    }
}

/// The users file: `[users]` maps a user name to its argon2 PHC hash.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("users file {0}: {1}")]
    Parse(String, String),
    #[error("cannot write users file {0}: {1}")]
    Write(String, std::io::Error),
    #[error("user name {0:?} is not valid: 1-64 characters of a-z 0-9 . _ -")]
    BadName(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A hash of a random password, made once with the same parameters as the
/// users' hashes, checked for unknown users.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use argon2::password_hash::PasswordHasher;
        let password: [u8; 16] = rand::random();
        argon2::Argon2::default()
            .hash_password(&password)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl UsersFile {
    /// Reads the file; a file that does not exist yet is empty.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| UsersError::Parse(shown, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(UsersError::Read(shown, e)),
        }
    }

    /// Adds or replaces a user, hashing the password with argon2id.
    pub fn set(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        use argon2::password_hash::PasswordHasher;
        let name = name.to_ascii_lowercase();
        if Address::parse(&format!("{name}@localhost")).is_err() {
            return Err(UsersError::BadName(name));
        }
        let hash = argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| UsersError::Hash(e.to_string()))?
            .to_string();
        self.users.insert(name, hash);
        Ok(())
    }

    /// Writes the file atomically (temporary file, then rename), readable
    /// by its owner only: it holds password hashes, which can be guessed
    /// at offline.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let shown = path.display().to_string();
        let text =
            toml::to_string(self).map_err(|e| UsersError::Parse(shown.clone(), e.to_string()))?;
        let tmp = path.with_extension("tmp");
        write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| UsersError::Write(shown, e))
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks a password. Slow on purpose (argon2): call it off the async
    /// threads.
    /// An unknown user costs the same as a wrong password (a hash is
    /// checked either way), so the time taken does not tell which accounts
    /// exist.
    pub fn check(&self, user: &str, password: &str) -> bool {
        use argon2::password_hash::PasswordVerifier;
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (unknown_user_hash(), false),
        };
        let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(hash) else {
            return false;
        };
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

/// Writes `bytes` to a new file `tmp` with mode 0600. A temporary file
/// left by an earlier run is removed first: reusing it would keep its mode.
fn write_private(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refusals() {
        let t = Tokens::new("a.test", "0123456789abcdef0123456789abcdef");
        let alice = Address::parse("alice@a.test").unwrap();
        let (tok, exp) = t.mint(&alice, Duration::from_secs(60));
        assert!(exp > unix_now());
        assert_eq!(t.verify(&tok).unwrap(), alice);

        let other = Tokens::new("a.test", "another-secret-another-secret-xx");
        assert_eq!(other.verify(&tok), Err(TokenError::Invalid));
        assert_eq!(t.verify("garbage"), Err(TokenError::Invalid));

        let b = Tokens::new("b.test", "0123456789abcdef0123456789abcdef");
        assert_eq!(b.verify(&tok), Err(TokenError::WrongDomain));

        let claims = Claims {
            sub: "alice@a.test".into(),
            exp: unix_now() - 100,
            iat: unix_now() - 200,
        };
        let old =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &t.encoding).unwrap();
        assert_eq!(t.verify(&old), Err(TokenError::Expired));
    }

    #[test]
    fn turn_credentials_follow_coturn() {
        let turn = crate::config::Turn {
            urls: vec!["turn:turn.test:3478".into()],
            secret: "coturn-shared-secret".into(),
            ttl: Duration::from_secs(600),
        };
        let alice = Address::parse("alice@a.test").unwrap();
        let ice = turn_credentials(&turn, &alice);
        let (expiry, user) = ice.username.split_once(':').unwrap();
        assert_eq!(user, "alice@a.test");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry >= unix_now() + 599 && expiry <= unix_now() + 600);
        // The same computation as coturn's: HMAC-SHA1 keyed by the secret.
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            b"coturn-shared-secret",
        );
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&ice.credential)
            .unwrap();
        assert!(ring::hmac::verify(&key, ice.username.as_bytes(), &raw).is_ok());
        assert_eq!(raw.len(), 20);
        // A known answer, computed independently (Python's hmac module).
        let known = turn_credentials_until(&turn, &alice, 1_700_000_000);
        assert_eq!(known.username, "1700000000:alice@a.test");
        assert_eq!(known.credential, "t+kPUW+I8iKIwQHFpahH4VnO2OQ=");
    }

    #[test]
    fn users_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("wspd-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        let mut f = UsersFile::load(&path).unwrap();
        f.set("Alice", "correct horse").unwrap();
        f.save(&path).unwrap();
        let f = UsersFile::load(&path).unwrap();
        assert!(f.contains("alice"));
        assert!(f.check("alice", "correct horse"));
        assert!(!f.check("alice", "wrong"));
        assert!(!f.check("bob", "correct horse"));
        assert!(UsersFile::default().set("bad name", "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
