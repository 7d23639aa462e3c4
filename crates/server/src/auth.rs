//! API tokens: making them, and checking the `Authorization: Bearer` of each request.
//!
//! A token is `ns_` followed by 64 hex digits (256 random bits). The store keeps only the
//! SHA-256 of the whole token, so a leaked database leaks no usable token, and a lookup by hash
//! needs no constant-time comparison of secrets. Handlers state the scope they need in their
//! signature (`Auth<Submit>`), so the rule for a route is where the route is.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jiff::Timestamp;
use nightshift_protocol::{ApiToken, TokenScope};
use nightshift_store::{Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{ApiError, ServerState};

/// What every token starts with, so that secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "ns_";

/// Random bytes in a token's secret.
const SECRET_BYTES: usize = 32;

/// The hex SHA-256 of a token: what the store keeps and looks up.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Why no token was made.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error(
        "no repository is registered as `{0}` (`nightshift repo ls` lists them); no token was made"
    )]
    UnknownRepo(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Makes a new token called `name` with `scope` and stores its hash; limited to the registered
/// repositories `repos` (by name) unless that is empty. Returns the token and its secret; the
/// secret is not stored anywhere and cannot be shown again.
pub async fn create_token(
    store: &dyn Store,
    name: &str,
    scope: TokenScope,
    repos: &[String],
) -> Result<(ApiToken, String), CreateTokenError> {
    if !repos.is_empty() {
        let registered = store.repos().await?;
        if let Some(unknown) = repos
            .iter()
            .find(|name| !registered.iter().any(|repo| &repo.name == *name))
        {
            return Err(CreateTokenError::UnknownRepo(unknown.clone()));
        }
    }
    let mut repos = repos.to_vec();
    repos.sort();
    repos.dedup();
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let token = ApiToken {
        id: format!(
            "tok_{}",
            ulid::Ulid::generate().to_string().to_ascii_lowercase()
        ),
        name: name.to_string(),
        scope,
        created_at: Timestamp::now(),
        last_used_at: None,
        revoked_at: None,
        repos,
    };
    store.create_token(&token, &hash_secret(&secret)).await?;
    Ok((token, secret))
}

/// Recently verified tokens by hash. Without it every request (and every SSE reconnect) would
/// be a write to the store, since looking a token up records its use.
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (ApiToken, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        TokenCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &str) -> Option<ApiToken> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (token, at) = entries.get(hash)?;
        (at.elapsed() < self.ttl).then(|| token.clone())
    }

    fn put(&self, hash: String, token: ApiToken) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the number of live tokens; expired entries go when the map grows.
        if entries.len() > 1024 {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        entries.insert(hash, (token, Instant::now()));
    }

    /// Forgets a revoked token at once.
    pub(crate) fn forget(&self, token_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (token, _)| token.id != token_id);
    }
}

/// The token whose secret hashes to `hash`, from the cache or the store: how both the API's
/// bearer tokens and the web UI's sessions are checked on every request.
pub(crate) async fn token_by_hash(state: &ServerState, hash: &str) -> Result<ApiToken, ApiError> {
    if let Some(token) = state.tokens().get(hash) {
        return Ok(token);
    }
    let found = state
        .store()
        .token_by_hash(hash)
        .await
        .map_err(|e| ApiError::store("checking an API token", e))?;
    let token =
        found.ok_or_else(|| ApiError::unauthorized("the API token is unknown or revoked"))?;
    state.tokens().put(hash.to_string(), token.clone());
    Ok(token)
}

/// A 403 unless `token` allows `needed`.
pub(crate) fn check_scope(token: &ApiToken, needed: TokenScope) -> Result<(), ApiError> {
    if token.scope.allows(needed) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "the token `{}` has scope {}, this needs {}",
        token.name, token.scope, needed
    ))
    .with_hint(format!(
        "use a token made with `nightshift token create --scope {needed}`"
    )))
}

/// The scope a route needs, as a type, so that it shows in the handler's signature.
pub(crate) trait NeededScope: Send + Sync + 'static {
    const SCOPE: TokenScope;
}

pub(crate) struct Read;
pub(crate) struct Submit;
pub(crate) struct Admin;

impl NeededScope for Read {
    const SCOPE: TokenScope = TokenScope::Read;
}
impl NeededScope for Submit {
    const SCOPE: TokenScope = TokenScope::Submit;
}
impl NeededScope for Admin {
    const SCOPE: TokenScope = TokenScope::Admin;
}

/// The caller's token, checked to allow at least `S`'s scope.
pub(crate) struct Auth<S: NeededScope> {
    pub token: ApiToken,
    _scope: PhantomData<S>,
}

impl<S: NeededScope> FromRequestParts<ServerState> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized("this endpoint needs an API token"));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| s.starts_with(TOKEN_PREFIX))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer ns_...`")
            })?;
        let token = token_by_hash(state, &hash_secret(secret)).await?;
        check_scope(&token, S::SCOPE)?;
        Ok(Auth {
            token,
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cache_expires_and_forgets() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let token = ApiToken {
            id: "tok_1".into(),
            name: "ci".into(),
            scope: TokenScope::Read,
            created_at: Timestamp::UNIX_EPOCH,
            last_used_at: None,
            revoked_at: None,
            repos: Vec::new(),
        };
        cache.put("h".into(), token.clone());
        assert_eq!(cache.get("h"), Some(token));
        cache.forget("tok_1");
        assert_eq!(cache.get("h"), None);
    }
}
