//! The host's distribution package mirrors, read from its apt sources, for `@registries`: setup
//! runs as root over a writable copy of the system, so `apt-get install` in it needs them.

use std::path::Path;

/// The hosts (with `:port` when the URI names one) of the `http` and `https` package sources
/// configured under `etc_apt` (`/etc/apt`): `sources.list`, and `sources.list.d/*.list` (one
/// line per source) and `*.sources` (deb822 stanzas). Unreadable files count as none.
pub fn apt_source_hosts(etc_apt: &Path) -> Vec<String> {
    let mut hosts = Vec::new();
    let mut read = |path: &Path, deb822: bool| {
        // A sources file is small; a huge one is no sources file. A link is not followed: the
        // directory may be an image's, whose links lead somewhere only inside its root.
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !meta.is_file() || meta.len() > 1 << 20 {
            return;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for uri in source_uris(&text, deb822) {
            if let Some(host) = uri_host(uri)
                && !hosts.contains(&host)
            {
                hosts.push(host);
            }
        }
    };
    read(&etc_apt.join("sources.list"), false);
    let parts = etc_apt.join("sources.list.d");
    let is_dir = std::fs::symlink_metadata(&parts).is_ok_and(|meta| meta.is_dir());
    if let Ok(entries) = std::fs::read_dir(&parts)
        .map_err(drop)
        .and_then(|entries| if is_dir { Ok(entries) } else { Err(()) })
    {
        let mut paths: Vec<_> = entries.flatten().map(|entry| entry.path()).collect();
        paths.sort();
        for path in paths {
            match path.extension().and_then(|e| e.to_str()) {
                Some("list") => read(&path, false),
                Some("sources") => read(&path, true),
                _ => {}
            }
        }
    }
    hosts
}

/// The URIs of enabled sources in a file of either format.
fn source_uris(text: &str, deb822: bool) -> Vec<&str> {
    let mut uris = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let enabled = !stanza.lines().any(|line| {
                line.split_once(':').is_some_and(|(key, value)| {
                    key.trim().eq_ignore_ascii_case("enabled") && value.trim() == "no"
                })
            });
            for line in stanza.lines().filter(|_| enabled) {
                if let Some((key, value)) = line.split_once(':')
                    && key.trim().eq_ignore_ascii_case("uris")
                {
                    uris.extend(value.split_whitespace());
                }
            }
        }
    } else {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if !matches!(words.next(), Some("deb" | "deb-src")) {
                continue;
            }
            // Options in brackets, possibly with spaces: `[arch=amd64 signed-by=...]`.
            let mut word = words.next();
            if word.is_some_and(|w| w.starts_with('[')) {
                while let Some(w) = word {
                    word = words.next();
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            uris.extend(word);
        }
    }
    uris
}

/// `host` or `host:port` of an http(s) URI.
fn uri_host(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_give_their_hosts_once() {
        let dir = tempfile::tempdir().unwrap();
        let apt = dir.path();
        std::fs::write(
            apt.join("sources.list"),
            "# comment\ndeb http://deb.debian.org/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] https://user@mirror.example.org:8080/debian bookworm main\n\
             deb cdrom:[Debian]/ bookworm main\n",
        )
        .unwrap();
        std::fs::create_dir(apt.join("sources.list.d")).unwrap();
        std::fs::write(
            apt.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://deb.debian.org/debian http://security.debian.org/debian-security\nSuites: bookworm\n\n\
             Types: deb\nURIs: https://off.example.org/apt\nEnabled: no\n",
        )
        .unwrap();
        std::fs::write(
            apt.join("sources.list.d/other.list.disabled"),
            "deb http://disabled.example.org/ x main\n",
        )
        .unwrap();
        assert_eq!(
            apt_source_hosts(apt),
            [
                "deb.debian.org",
                "mirror.example.org:8080",
                "security.debian.org"
            ]
        );
        assert!(apt_source_hosts(&apt.join("missing")).is_empty());
    }
}
