//! Where the host may connect on a repository's behalf. An image reference or a feature URL
//! may come from the repository, and this host reaches what its tasks may not (its loopback
//! services, its network's hosts, a cloud's metadata address): such a destination is refused
//! unless the host configuration lists it.

use std::net::{IpAddr, SocketAddr};

use crate::error::ImageError;
use crate::{PullOptions, Reference};

/// Whether `host:port` is one of the entries the host configuration lists: `host:port`, or
/// `host` for its ports 443 and 80 (as `[network] allow_private` reads them).
pub(crate) fn is_listed(listed: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    listed.iter().any(|entry| {
        let entry = entry.trim();
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        entry == format!("{host}:{port}")
            || entry == format!("[{host}]:{port}")
            || (bare == host && matches!(port, 443 | 80))
    })
}

/// The first of `addresses` that is private ([`is_private`]).
pub(crate) fn first_private(addresses: &[SocketAddr]) -> Option<IpAddr> {
    addresses
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| is_private(*ip))
}

/// Whether `ip` is an address this host's own network (or the host itself) answers at rather
/// than the internet: loopback, private, link-local, shared, unspecified, multicast, broadcast,
/// unique-local, and IPv4 ones written as IPv6.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., hi, lo] = segments;
                let v4 = std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
                return is_private(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Refuses a registry whose name resolves to a private address that the host configuration
/// does not list, before anything is asked of it. A name that does not resolve is left to the
/// pull, which says so.
///
/// This checks the registry the reference names; where its answers send the client next (a
/// token service, a redirect for a blob) and a name that resolves differently a moment later
/// are the HTTP client's, which takes no resolver from here.
pub(crate) async fn refuse_private(
    registry: &str,
    reference: &Reference,
    options: &PullOptions,
) -> Result<(), ImageError> {
    let listed: Vec<String> = options
        .plain_http
        .iter()
        .chain(&options.allow_private)
        .cloned()
        .collect();
    let (host, port) = endpoint(registry, &options.plain_http);
    if listed.iter().any(|entry| entry.trim() == registry) || is_listed(&listed, &host, port) {
        return Ok(());
    }
    let Ok(addresses) = tokio::net::lookup_host((host.as_str(), port)).await else {
        return Ok(());
    };
    match first_private(&addresses.collect::<Vec<_>>()) {
        Some(address) => Err(ImageError::PrivateAddress {
            registry: registry.to_string(),
            reference: reference.to_string(),
            address: address.to_string(),
        }),
        None => Ok(()),
    }
}

/// The host and port a registry named `registry` is reached at (Docker Hub's is
/// `registry-1.docker.io`; a registry spoken to over plain HTTP defaults to port 80).
fn endpoint(registry: &str, plain_http: &[String]) -> (String, u16) {
    if matches!(registry, "docker.io" | "index.docker.io") {
        return ("registry-1.docker.io".to_string(), 443);
    }
    let default_port = match plain_http.iter().any(|entry| entry.trim() == registry) {
        true => 80,
        false => 443,
    };
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (rest, None),
        },
        None => match registry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (registry, None),
        },
    };
    let port = port.and_then(|p| p.parse().ok()).unwrap_or(default_port);
    (host.to_string(), port)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listed_hosts_match_by_host_and_port() {
        let listed = [
            "registry.corp:5000".to_string(),
            "[::1]:443".to_string(),
            "10.0.0.5".to_string(),
        ];
        assert!(is_listed(&listed, "registry.corp", 5000));
        assert!(!is_listed(&listed, "registry.corp", 443));
        assert!(is_listed(&listed, "10.0.0.5", 443));
        assert!(is_listed(&listed, "10.0.0.5", 80));
        assert!(!is_listed(&listed, "10.0.0.5", 5000));
        assert!(is_listed(&listed, "::1", 443));
        assert!(is_listed(&listed, "[::1]", 443));
        assert!(!is_listed(&listed, "corp", 5000));
    }

    #[test]
    fn private_addresses_are_told_apart() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn registries_are_reached_at_their_host_and_port() {
        for (registry, plain, expected) in [
            ("docker.io", &[][..], ("registry-1.docker.io", 443)),
            ("ghcr.io", &[][..], ("ghcr.io", 443)),
            ("registry.corp:5000", &[][..], ("registry.corp", 5000)),
            (
                "localhost",
                &["localhost".to_string()][..],
                ("localhost", 80),
            ),
            ("[::1]:5000", &[][..], ("::1", 5000)),
        ] {
            assert_eq!(
                endpoint(registry, plain),
                (expected.0.to_string(), expected.1),
                "{registry}"
            );
        }
    }

    #[tokio::test]
    async fn a_registry_at_a_private_address_is_refused_unless_listed() {
        let options = PullOptions::default();
        for registry in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "10.0.0.1"] {
            let reference = Reference::parse(&format!("{registry}/app:1")).unwrap();
            let err = refuse_private(registry, &reference, &options)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ImageError::PrivateAddress { .. }),
                "{registry}: {err}"
            );
            assert!(err.to_string().contains("[images] allow_private"), "{err}");
        }
        let reference = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        for options in [
            PullOptions {
                allow_private: vec!["127.0.0.1:5000".into()],
                ..PullOptions::default()
            },
            PullOptions {
                plain_http: vec!["127.0.0.1:5000".into()],
                ..PullOptions::default()
            },
        ] {
            refuse_private("127.0.0.1:5000", &reference, &options)
                .await
                .unwrap();
        }
    }
}
