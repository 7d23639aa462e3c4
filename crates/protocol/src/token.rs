//! API tokens: who may do what through the HTTP API. Only a hash of the secret is ever stored.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a token allows. Each scope includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Read tasks, events, diffs and artifacts.
    Read,
    /// Also create tasks, send them messages and cancel them.
    Submit,
    /// Also manage tokens.
    Admin,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Submit => "submit",
            TokenScope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` guards.
    pub fn allows(self, needed: TokenScope) -> bool {
        self >= needed
    }
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a token scope.
#[derive(Debug, thiserror::Error)]
#[error("unknown token scope `{0}` (expected read, submit or admin)")]
pub struct UnknownTokenScope(pub String);

impl FromStr for TokenScope {
    type Err = UnknownTokenScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(TokenScope::Read),
            "submit" => Ok(TokenScope::Submit),
            "admin" => Ok(TokenScope::Admin),
            other => Err(UnknownTokenScope(other.to_string())),
        }
    }
}

/// A token as stored and listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// A public identifier, shown in listings and used to revoke it.
    pub id: String,
    /// What the person called it.
    pub name: String,
    pub scope: TokenScope,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    /// The registered repositories (by name) the token may act on; empty: every repository
    /// the server serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<String>,
}

impl ApiToken {
    /// Whether the token may act on the registered repository `name`.
    pub fn may_use_repo(&self, name: &str) -> bool {
        self.repos.is_empty() || self.repos.iter().any(|allowed| allowed == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert!(TokenScope::Admin.allows(TokenScope::Submit));
        assert!(TokenScope::Submit.allows(TokenScope::Read));
        assert!(!TokenScope::Read.allows(TokenScope::Submit));
        assert!(!TokenScope::Submit.allows(TokenScope::Admin));
        for scope in [TokenScope::Read, TokenScope::Submit, TokenScope::Admin] {
            assert_eq!(scope.as_str().parse::<TokenScope>().unwrap(), scope);
        }
        assert!("root".parse::<TokenScope>().is_err());
    }
}
