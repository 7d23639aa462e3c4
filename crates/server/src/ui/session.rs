//! Web UI sessions: an API token, checked once at sign-in, exchanged for a random session id
//! in an HttpOnly, SameSite=Strict cookie, with a per-session CSRF token for every form.
//!
//! The server keeps the token's hash, not the token: each request looks the token up again
//! through the same cache the API uses, so revoking a token ends its sessions too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use nightshift_protocol::{ApiToken, TokenScope};
use rand::RngCore;

use crate::ServerState;
use crate::auth::{check_scope, token_by_hash};

/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "nightshift_session";
/// How long a session lives after sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Most live sessions; beyond it the expired ones go, then the oldest.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
struct Entry {
    token_hash: String,
    csrf: String,
    expires: Instant,
}

/// The live sessions of this server process. A restart signs everyone out.
#[derive(Default)]
pub(crate) struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// A new session for the token whose hash is `token_hash`; returns its id.
    pub(crate) fn open(&self, token_hash: String) -> String {
        let id = random_hex();
        let entry = Entry {
            token_hash,
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_SESSIONS {
            let now = Instant::now();
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_SESSIONS
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(id.clone(), entry);
        id
    }

    fn get(&self, id: &str) -> Option<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(id)?.clone();
        if entry.expires <= Instant::now() {
            entries.remove(id);
            return None;
        }
        Some(entry)
    }

    pub(crate) fn close(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(id);
    }
}

/// The session id from the request's cookies, if any.
pub(crate) fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that stores session `id`.
pub(crate) fn set_cookie(id: &str, headers: &HeaderMap) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub(crate) fn clear_cookie(headers: &HeaderMap) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// A signed-in reviewer: the session and its token, checked on this request.
pub(crate) struct UiSession {
    pub id: String,
    pub token: ApiToken,
    pub csrf: String,
}

impl UiSession {
    /// Whether this session may submit, cancel and message.
    pub(crate) fn can_submit(&self) -> bool {
        self.token.scope.allows(TokenScope::Submit)
    }

    /// Why the controls that change tasks are off, for a `read` token.
    pub(crate) fn why_read_only(&self) -> Option<String> {
        check_scope(&self.token, TokenScope::Submit)
            .err()
            .map(|e| e.message().to_string())
    }

    /// Whether `sent` is this session's CSRF token.
    pub(crate) fn csrf_matches(&self, sent: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), sent.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl FromRequestParts<ServerState> for UiSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ServerState,
    ) -> Result<Self, Self::Rejection> {
        let signed_out = || Redirect::to("/signin").into_response();
        let id = cookie_value(&parts.headers).ok_or_else(signed_out)?;
        let entry = state.sessions().get(&id).ok_or_else(signed_out)?;
        let token = match token_by_hash(state, &entry.token_hash).await {
            Ok(token) => token,
            Err(error) if error.status().as_u16() == 401 => {
                state.sessions().close(&id);
                return Err(signed_out());
            }
            Err(error) => return Err(super::UiError(error).into_response()),
        };
        Ok(UiSession {
            id,
            token,
            csrf: entry.csrf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_and_close() {
        let sessions = Sessions::default();
        let id = sessions.open("h".into());
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.get(&id).map(|e| e.token_hash), Some("h".into()));
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        let id = "a".repeat(64);
        headers.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={id}; y=2")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(cookie_value(&headers), Some(id));
        headers.insert(
            header::COOKIE,
            format!("{COOKIE}=<script>")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(cookie_value(&headers), None);
    }
}
