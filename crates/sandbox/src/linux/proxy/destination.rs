//! Where the proxy will not connect on a repository's word: the host itself and the networks
//! around it. A session's allowlist comes from the repository (untrusted input), so a name it
//! lists may resolve to 127.0.0.1, to a cloud metadata address or to an office network; only
//! the host's own configuration (`allow_private`) opens those. A name is resolved once, every
//! answer is checked, and the checked addresses are the ones connected to: a second, different
//! DNS answer (rebinding) is never asked for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::allowlist::{Allowlist, Via};

/// Why an address is not a public destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Private {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16 (cloud metadata services live there), fe80::/10.
    LinkLocal,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16.
    Rfc1918,
    /// 100.64.0.0/10, carrier-grade NAT and some cloud networks.
    SharedAddressSpace,
    /// 198.18.0.0/15, for benchmarking network devices: labs and some appliances answer there.
    Benchmarking,
    /// 192.0.0.0/24, the IETF's protocol assignments (DS-Lite's and NAT64's own addresses among
    /// them): they belong to the network the host sits in.
    ProtocolAssignments,
    /// 64:ff9b:1::/48, NAT64 prefixes for a local network's own use (RFC 8215): where such a
    /// prefix leads is the local network's choice, its private addresses included.
    LocalNat64,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10, deprecated but still routed by some networks.
    SiteLocal,
    /// 0.0.0.0/8 and :: (which reach the host itself on Linux).
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 240.0.0.0/4, 255.255.255.255 included.
    BroadcastOrReserved,
    /// An address of one of the host's own interfaces.
    ThisHost,
}

impl fmt::Display for Private {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Private::Loopback => "a loopback address",
            Private::LinkLocal => "a link-local address",
            Private::Rfc1918 => "a private (RFC 1918) address",
            Private::SharedAddressSpace => "a carrier-grade NAT (100.64.0.0/10) address",
            Private::Benchmarking => "a benchmarking (198.18.0.0/15) address",
            Private::ProtocolAssignments => "an IETF protocol assignment (192.0.0.0/24) address",
            Private::LocalNat64 => "a local-use NAT64 (64:ff9b:1::/48) address",
            Private::UniqueLocal => "a unique-local IPv6 address",
            Private::SiteLocal => "a site-local IPv6 address",
            Private::Unspecified => "an unspecified address",
            Private::Multicast => "a multicast address",
            Private::BroadcastOrReserved => "a broadcast or reserved address",
            Private::ThisHost => "an address of this host",
        })
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) forms all reach `a.b.c.d`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let embedded = match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => true,
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => true,
        // `::` and `::1` are IPv6's own.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => false,
        [0, 0, 0, 0, 0, 0, _, _] => true,
        _ => false,
    };
    embedded.then_some(v4)
}

/// The address a connection to `ip` reaches, as far as the address says.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The non-public range `ip` is in, by its form alone (see [`this_host`] for the host's own
/// addresses).
pub(crate) fn classify(ip: IpAddr) -> Option<Private> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if a == 0 {
                Some(Private::Unspecified)
            } else if v4.is_loopback() {
                Some(Private::Loopback)
            } else if v4.is_link_local() {
                Some(Private::LinkLocal)
            } else if v4.is_private() {
                Some(Private::Rfc1918)
            } else if a == 100 && (b & 0xc0) == 64 {
                Some(Private::SharedAddressSpace)
            } else if a == 198 && (b & 0xfe) == 18 {
                Some(Private::Benchmarking)
            } else if (a, b, c) == (192, 0, 0) {
                Some(Private::ProtocolAssignments)
            } else if v4.is_multicast() {
                Some(Private::Multicast)
            } else if a >= 240 {
                Some(Private::BroadcastOrReserved)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            if v6.is_unspecified() {
                Some(Private::Unspecified)
            } else if v6.is_loopback() {
                Some(Private::Loopback)
            } else if (first & 0xffc0) == 0xfe80 {
                Some(Private::LinkLocal)
            } else if (first & 0xffc0) == 0xfec0 {
                Some(Private::SiteLocal)
            } else if (first & 0xfe00) == 0xfc00 {
                Some(Private::UniqueLocal)
            } else if segments[..3] == [0x64, 0xff9b, 1] {
                Some(Private::LocalNat64)
            } else if v6.is_multicast() {
                Some(Private::Multicast)
            } else {
                None
            }
        }
    }
}

/// The addresses of the host's own interfaces (a public one included: a service listening on
/// all addresses answers there too).
pub(crate) fn this_host() -> Result<Vec<IpAddr>, String> {
    let interfaces =
        nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list the host's addresses: {e}"))?;
    Ok(interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address
                    .as_sockaddr_in6()
                    .map(|v6| canonical(IpAddr::V6(v6.ip())))
            }
        })
        .collect())
}

/// Resolves `host` once and returns the addresses the proxy may connect to for `host:port`:
/// every answer must be a public address of another machine, unless the host's configuration
/// (`allow_private`) names `host` or that address. One refused answer refuses them all, with
/// a reason that says which and why.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    via: Via,
    allow_private: &Allowlist,
) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    check(host, port, via, &addrs, allow_private, this_host)?;
    Ok(addrs)
}

/// The check of [`resolve`], with the host's own addresses from `this_host` (asked at most
/// once, and only when an answer is not private by its form).
fn check(
    host: &str,
    port: u16,
    via: Via,
    addrs: &[SocketAddr],
    allow_private: &Allowlist,
    this_host: impl FnOnce() -> Result<Vec<IpAddr>, String>,
) -> Result<(), String> {
    if allow_private.allows(host, port, via).is_some() {
        return Ok(());
    }
    let mut this_host = Some(this_host);
    let mut own: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        let ip = addr.ip();
        let reached = canonical(ip);
        let kind = match classify(ip) {
            Some(kind) => kind,
            None => {
                if let Some(list) = this_host.take() {
                    own = list()?;
                }
                if !own.contains(&reached) {
                    continue;
                }
                Private::ThisHost
            }
        };
        let allowed = [ip, reached]
            .iter()
            .any(|ip| allow_private.allows(&ip.to_string(), port, via).is_some());
        if allowed {
            continue;
        }
        let address = if reached == ip {
            ip.to_string()
        } else {
            format!("{ip} (that is {reached})")
        };
        let what = if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            format!("{address} is {kind}")
        } else {
            format!("{host} resolves to {address}, {kind}")
        };
        return Err(format!(
            "{what}: a private destination is reached only when the host's nightshift \
             configuration allows it (allow_private), not on the repository's allowlist alone"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<Private> {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn private_ranges_are_classified() {
        use Private::*;
        for (ip, expected) in [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("10.0.0.1", Some(Rfc1918)),
            ("172.16.0.1", Some(Rfc1918)),
            ("172.31.255.255", Some(Rfc1918)),
            ("192.168.1.1", Some(Rfc1918)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(BroadcastOrReserved)),
            ("240.0.0.1", Some(BroadcastOrReserved)),
            // IPv4 inside IPv6: mapped, translated, compatible, NAT64.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:7f00:1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Rfc1918)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:0:192.168.0.1", Some(Rfc1918)),
            ("::127.0.0.1", Some(Loopback)),
            ("::10.1.2.3", Some(Rfc1918)),
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a00:1", Some(Rfc1918)),
            ("64:ff9b::192.168.1.1", Some(Rfc1918)),
            ("64:ff9b::100.64.0.1", Some(SharedAddressSpace)),
            ("64:ff9b::198.18.0.1", Some(Benchmarking)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("192.0.0.1", Some(ProtocolAssignments)),
            ("192.0.0.170", Some(ProtocolAssignments)),
            ("::ffff:192.0.0.8", Some(ProtocolAssignments)),
            ("64:ff9b:1::1", Some(LocalNat64)),
            ("64:ff9b:1:ffff::a00:1", Some(LocalNat64)),
            ("64:ff9b:1::8.8.8.8", Some(LocalNat64)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            // Public.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.169.0.1", None),
            ("223.255.255.255", None),
            ("2606:4700::1111", None),
            ("2001:db8::1", None),
            ("::ffff:1.1.1.1", None),
            ("64:ff9b::808:808", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("192.0.1.1", None),
            ("64:ff9b:2::1", None),
        ] {
            assert_eq!(kind(ip), expected, "{ip}");
        }
    }

    #[test]
    fn embedded_addresses_are_seen_through() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(canonical(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("64:ff9b::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    fn sockets(ips: &[&str], port: u16) -> Vec<SocketAddr> {
        ips.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), port))
            .collect()
    }

    #[test]
    fn private_answers_are_refused_unless_the_host_allows_them() {
        let none = Allowlist::default();
        let no_own = || Ok(Vec::new());
        let refused = |host: &str, ips: &[&str], allow: &Allowlist| {
            check(host, 8080, Via::Tunnel, &sockets(ips, 8080), allow, no_own).err()
        };
        let reason = refused("localhost", &["::1", "127.0.0.1"], &none).unwrap();
        assert!(reason.starts_with("localhost resolves to ::1, a loopback address"));
        assert!(reason.contains("allow_private"));
        let reason = refused("127.0.0.1", &["127.0.0.1"], &none).unwrap();
        assert!(
            reason.starts_with("127.0.0.1 is a loopback address"),
            "{reason}"
        );
        let reason = refused("::ffff:10.0.0.1", &["::ffff:10.0.0.1"], &none).unwrap();
        assert!(reason.starts_with("::ffff:10.0.0.1 (that is 10.0.0.1) is a private (RFC 1918)"));
        // Rebinding's usual answer: a public address and a private one.
        assert!(refused("rebind.example", &["1.2.3.4", "169.254.169.254"], &none).is_some());
        assert!(refused("example.com", &["1.2.3.4", "2606:4700::1"], &none).is_none());

        // The host's configuration, by name or by address, port included.
        let by_name = Allowlist::new(&["localhost:8080".into()]);
        assert!(refused("localhost", &["::1", "127.0.0.1"], &by_name).is_none());
        let by_address = Allowlist::new(&["127.0.0.1:8080".into(), "[::1]:8080".into()]);
        assert!(refused("localhost", &["::1", "127.0.0.1"], &by_address).is_none());
        assert!(refused("::ffff:127.0.0.1", &["::ffff:127.0.0.1"], &by_address).is_none());
        let other_port = Allowlist::new(&["127.0.0.1:9090".into()]);
        assert!(refused("127.0.0.1", &["127.0.0.1"], &other_port).is_some());
        let half = Allowlist::new(&["127.0.0.1:8080".into()]);
        assert!(refused("localhost", &["::1", "127.0.0.1"], &half).is_some());
        // Without a port, the usual one of the request.
        let no_port = Allowlist::new(&["10.0.0.1".into()]);
        assert!(
            check(
                "10.0.0.1",
                443,
                Via::Tunnel,
                &sockets(&["10.0.0.1"], 443),
                &no_port,
                no_own
            )
            .is_ok()
        );
        assert!(refused("10.0.0.1", &["10.0.0.1"], &no_port).is_some());
    }

    #[test]
    fn the_hosts_own_addresses_are_private() {
        let own = || Ok(vec!["203.0.113.7".parse().unwrap()]);
        let none = Allowlist::default();
        let reason = check(
            "me.example",
            443,
            Via::Tunnel,
            &sockets(&["::ffff:203.0.113.7"], 443),
            &none,
            own,
        )
        .unwrap_err();
        assert!(reason.contains("an address of this host"), "{reason}");
        assert!(
            check(
                "other.example",
                443,
                Via::Tunnel,
                &sockets(&["203.0.113.8"], 443),
                &none,
                own
            )
            .is_ok()
        );
        // The real list: every address of this machine is refused, public or not.
        for ip in this_host().unwrap() {
            let addrs = [SocketAddr::new(ip, 443)];
            assert!(
                check("x", 443, Via::Tunnel, &addrs, &none, this_host).is_err(),
                "{ip}"
            );
        }
    }
}
