//! Signed bearer tokens (JWT, HS256 only), for people, service accounts and agents.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
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
}

/// A freshly signed token; shown to its holder once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    session_ttl: Duration,
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
        Self {
            encoding: EncodingKey::from_secret(config.jwt_secret.0.as_bytes()),
            decoding: DecodingKey::from_secret(config.jwt_secret.0.as_bytes()),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            session_ttl: Duration::minutes(config.session_ttl_minutes),
        }
    }

    /// A login session for a user.
    pub fn issue_session(&self, user: Uuid) -> anyhow::Result<IssuedToken> {
        let expires_at = Utc::now() + self.session_ttl;
        let token = self.sign(user, Uuid::new_v4(), TokenKind::User, expires_at)?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The bearer form of an `api_tokens` row.
    pub fn issue_api_token(&self, id: Uuid, kind: TokenKind, expires_at: DateTime<Utc>) -> anyhow::Result<IssuedToken> {
        let token = self.sign(id, id, kind, expires_at)?;
        Ok(IssuedToken { token, expires_at })
    }

    fn sign(&self, sub: Uuid, jti: Uuid, typ: TokenKind, expires_at: DateTime<Utc>) -> anyhow::Result<String> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub,
            iat: Utc::now().timestamp(),
            exp: expires_at.timestamp(),
            jti,
            typ,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// Checks signature, algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(
            |error| {
                let why = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "the token was not issued for this server",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                ApiError::unauthenticated(why)
            },
        )
    }
}
