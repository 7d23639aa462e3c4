//! Where the host may connect on a repository's behalf. An image reference or a feature URL
//! may come from the repository, and this host reaches what its tasks may not (its loopback
//! services, its network's hosts, a cloud's metadata address): such a destination is refused
//! unless the host configuration lists it.

use std::net::{IpAddr, SocketAddr};

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
}
