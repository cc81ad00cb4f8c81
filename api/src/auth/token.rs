//! Signed bearer tokens (JWT, HS256 only), for people, service accounts and agents.
//!
//! Every token names the key that signed it (`kid`, a hash of the key), so the signing key can
//! be rotated without logging anyone out: the new key signs, the previous ones still verify
//! (`auth.previous_jwt_secrets`) until the tokens they signed have expired.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{Config, Secret};
use crate::error::ApiError;

/// What a token stands for. The database row it names is the authority on roles and
/// revocation; the token only says where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A login session; `sub` is the user id.
    User,
    /// A service account; `sub` and `jti` are the `api_tokens` row.
    Service,
    /// A machine credential; `sub` and `jti` are the `api_tokens` row.
    Agent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub typ: TokenKind,
    /// A session's generation: the user's `session_generation` when it was issued. Logging
    /// out, changing the password and being disabled move the user's on, ending the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
}

/// A freshly signed token; shown to its holder once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

struct VerifyingKey {
    kid: String,
    key: DecodingKey,
}

pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    /// The signing key's own first, then the previous ones.
    verifying: Vec<VerifyingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    session_ttl: Duration,
}

/// A key's public name: a hash of the key, so configuration need not name keys.
fn key_id(secret: &Secret) -> String {
    hex::encode(
        &Sha256::new().chain_update(b"fleetyard jwt key id\0").chain_update(secret.0.as_bytes()).finalize()[..8],
    )
}

impl TokenKeys {
    pub fn new(config: &Config) -> Self {
        // Pinned to HS256: a token naming any other algorithm (including `none`) is refused
        // before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let verifying = std::iter::once(&config.jwt_secret)
            .chain(&config.auth.previous_jwt_secrets)
            .map(|secret| VerifyingKey { kid: key_id(secret), key: DecodingKey::from_secret(secret.0.as_bytes()) })
            .collect();
        Self {
            kid: key_id(&config.jwt_secret),
            encoding: EncodingKey::from_secret(config.jwt_secret.0.as_bytes()),
            verifying,
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            session_ttl: Duration::minutes(config.session_ttl_minutes),
        }
    }

    /// A login session for a user, in the user's current session generation.
    pub fn issue_session(&self, user: Uuid, generation: i32) -> anyhow::Result<IssuedToken> {
        let expires_at = Utc::now() + self.session_ttl;
        let token = self.sign(user, Uuid::new_v4(), TokenKind::User, Some(generation), expires_at)?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The bearer form of an `api_tokens` row.
    pub fn issue_api_token(&self, id: Uuid, kind: TokenKind, expires_at: DateTime<Utc>) -> anyhow::Result<IssuedToken> {
        let token = self.sign(id, id, kind, None, expires_at)?;
        Ok(IssuedToken { token, expires_at })
    }

    fn sign(
        &self,
        sub: Uuid,
        jti: Uuid,
        typ: TokenKind,
        generation: Option<i32>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub,
            iat: Utc::now().timestamp(),
            exp: expires_at.timestamp(),
            jti,
            typ,
            generation,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Checks signature (with the key the token names), algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| ApiError::unauthenticated("the token is malformed"))?;
        // Tokens signed before keys were named carry no `kid`: the signing key checks them.
        let key = match header.kid.as_deref() {
            None => &self.verifying[0],
            Some(kid) => self.verifying.iter().find(|k| k.kid == kid).ok_or_else(|| {
                ApiError::unauthenticated("the token was signed with a key this server no longer accepts")
            })?,
        };
        jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation).map(|data| data.claims).map_err(|error| {
            let why = match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "the token was not issued for this server",
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                ErrorKind::InvalidSignature => "the token's signature is invalid",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "the token is malformed",
            };
            ApiError::unauthenticated(why)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, previous: &[&str]) -> Config {
        let mut config = Config { jwt_secret: Secret(secret.repeat(32)), ..Config::default() };
        config.auth.previous_jwt_secrets = previous.iter().map(|s| Secret(s.repeat(32))).collect();
        config
    }

    #[test]
    fn a_rotated_key_keeps_its_tokens_working_until_it_is_dropped() {
        let old = TokenKeys::new(&config("a", &[]));
        let token = old.issue_session(Uuid::new_v4(), 0).unwrap().token;
        let rotated = TokenKeys::new(&config("b", &["a"]));
        assert!(rotated.verify(&token).is_ok(), "a token of the previous key still works");
        let fresh = rotated.issue_session(Uuid::new_v4(), 0).unwrap().token;
        assert!(rotated.verify(&fresh).is_ok());
        assert!(old.verify(&fresh).is_err(), "the old key does not know the new one");
        let dropped = TokenKeys::new(&config("b", &[]));
        let refused = dropped.verify(&token).unwrap_err();
        assert!(refused.to_string().contains("no longer accepts"), "{refused}");
    }

    #[test]
    fn a_token_without_a_key_id_is_checked_with_the_signing_key() {
        let keys = TokenKeys::new(&config("a", &[]));
        let claims = Claims {
            iss: "fleetyard".into(),
            aud: "fleetyard-api".into(),
            sub: Uuid::new_v4(),
            iat: Utc::now().timestamp(),
            exp: (Utc::now() + Duration::minutes(5)).timestamp(),
            jti: Uuid::new_v4(),
            typ: TokenKind::User,
            generation: None,
        };
        let unnamed = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret("a".repeat(32).as_bytes()),
        )
        .unwrap();
        assert!(keys.verify(&unnamed).is_ok());
    }
}
