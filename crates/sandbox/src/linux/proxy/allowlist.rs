//! Host patterns, as a session's network allowlist, a credential's hosts and the host's
//! `allow_private` list write them: `example.com`, `*.example.com` (subdomains only), an IP
//! literal (`127.0.0.1`, `::1`, `[::1]`), each optionally `:port`. A pattern without a port
//! means the usual port of the request: 443 for a tunnel (HTTPS), 80 for plain HTTP. Every
//! other port must be named, so that listing a web site does not open every service on it.

/// How a request reaches its host: it decides what a pattern without a port allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `CONNECT host:port`: HTTPS, or anything else inside a tunnel.
    Tunnel,
    /// An absolute `http://` request.
    PlainHttp,
}

impl Via {
    /// The port a pattern without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Via::Tunnel => 443,
            Via::PlainHttp => 80,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Allowlist {
    rules: Vec<(String, Option<u16>)>,
}

impl Allowlist {
    pub fn new(patterns: &[String]) -> Self {
        let rules = patterns
            .iter()
            .map(|p| {
                let p = p.trim().to_ascii_lowercase();
                match p.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                        match port.parse() {
                            Ok(port) => (host.trim_matches(['[', ']']).to_string(), Some(port)),
                            Err(_) => (p.clone(), None),
                        }
                    }
                    _ => (p.trim_matches(['[', ']']).to_string(), None),
                }
            })
            .collect();
        Allowlist { rules }
    }

    /// The matching rule's host pattern if `host:port`, reached `via`, is allowed.
    pub fn allows(&self, host: &str, port: u16, via: Via) -> Option<&str> {
        self.matching(host)
            .find(|(_, rule_port)| rule_port.unwrap_or(via.default_port()) == port)
            .map(|(pattern, _)| pattern.as_str())
    }

    /// Whether a rule names `host` at all, whatever its port: a refusal can then say that
    /// another port is allowed.
    pub fn names(&self, host: &str) -> bool {
        self.matching(host).next().is_some()
    }

    fn matching(&self, host: &str) -> impl Iterator<Item = &(String, Option<u16>)> {
        let host = host
            .trim_end_matches('.')
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        self.rules
            .iter()
            .filter(move |(pattern, _)| match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
                }
                None => host == *pattern,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_hosts_subdomains_and_ports() {
        let allow = Allowlist::new(&[
            "crates.io".into(),
            "*.crates.io".into(),
            "example.com:8080".into(),
            "127.0.0.1:3000".into(),
            "[::1]:3000".into(),
        ]);
        let tunnel = |host, port| allow.allows(host, port, Via::Tunnel);
        assert!(tunnel("crates.io", 443).is_some());
        assert!(tunnel("static.crates.io", 443).is_some());
        assert!(tunnel("STATIC.Crates.IO.", 443).is_some());
        assert!(tunnel("evilcrates.io", 443).is_none());
        assert!(tunnel("crates.io.evil.com", 443).is_none());
        assert!(tunnel("example.com", 8080).is_some());
        assert!(tunnel("example.com", 443).is_none());
        assert!(tunnel("127.0.0.1", 3000).is_some());
        assert!(tunnel("127.0.0.1", 3001).is_none());
        assert!(tunnel("::1", 3000).is_some());
        assert!(tunnel("[::1]", 3000).is_some());
    }

    #[test]
    fn a_pattern_without_a_port_means_the_usual_port_of_the_request() {
        let allow = Allowlist::new(&["example.com".into(), "*.example.org".into()]);
        assert!(allow.allows("example.com", 443, Via::Tunnel).is_some());
        assert!(allow.allows("example.com", 80, Via::PlainHttp).is_some());
        assert!(allow.allows("a.example.org", 443, Via::Tunnel).is_some());
        // Not any other port, nor the other kind's port.
        for port in [8080, 8443, 22, 6379] {
            assert!(allow.allows("example.com", port, Via::Tunnel).is_none());
            assert!(allow.allows("example.com", port, Via::PlainHttp).is_none());
            assert!(allow.allows("a.example.org", port, Via::Tunnel).is_none());
        }
        assert!(allow.allows("example.com", 80, Via::Tunnel).is_none());
        assert!(allow.allows("example.com", 443, Via::PlainHttp).is_none());
        assert!(allow.names("example.com"));
        assert!(!allow.names("example.net"));
    }
}
