//! A devcontainer feature given as a tarball's URL (`https://host/devcontainer-feature-NAME.tgz`),
//! fetched on the host for a task that builds.
//!
//! The URL is the repository's, so untrusted, and this host may reach what the sandbox may
//! not: HTTPS only, plain HTTP only to the hosts the host configuration lists (as for
//! registries); no private destination (loopback, link-local, RFC 1918 and the like) unless
//! the host configuration lists it; each redirect checked the same way, the address checked
//! being the one connected to; at most a bound of bytes. The payload is an [`Artifact`], so it
//! unpacks as an OCI feature does.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::Artifact;

/// The most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// Fetches the tarball at `url`: its bytes (at most `max_bytes`) and their sha256 digest.
/// `listed` are the `host:port` entries the host configuration trusts (`[images] plain_http`):
/// only those may be reached over plain HTTP or at a private address.
pub async fn fetch_tarball(
    url: &str,
    listed: &[String],
    max_bytes: u64,
) -> Result<Artifact, String> {
    let mut at = Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    for _ in 0..=MAX_REDIRECTS {
        let (host, address) = destination(&at, listed).await?;
        crate::registry::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, address)
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("making the HTTP client: {err}"))?;
        let response =
            client.get(at.clone()).send().await.map_err(|err| {
                format!("fetching {at}: {}", crate::registry::describe_reqwest(&err))
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| format!("{at} answered {status} with no usable Location"))?;
            at = at
                .join(location)
                .map_err(|err| format!("{at} redirects to `{location}`: {err}"))?;
            continue;
        }
        if !status.is_success() {
            return Err(format!("{at} answered {status}"));
        }
        if response.content_length().is_some_and(|len| len > max_bytes) {
            return Err(format!("{at} is larger than {max_bytes} bytes"));
        }
        let mut layer = Vec::new();
        let mut hash = Sha256::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| {
                format!("fetching {at}: {}", crate::registry::describe_reqwest(&err))
            })?;
            if layer.len() as u64 + chunk.len() as u64 > max_bytes {
                return Err(format!("{at} is larger than {max_bytes} bytes"));
            }
            hash.update(&chunk);
            layer.extend_from_slice(&chunk);
        }
        return Ok(Artifact {
            digest: format!("sha256:{}", hex::encode(hash.finalize())),
            layer,
        });
    }
    Err(format!("{url} redirects more than {MAX_REDIRECTS} times"))
}

/// The host of `url` and the address to connect to for it, when it may be reached.
async fn destination(url: &Url, listed: &[String]) -> Result<(String, SocketAddr), String> {
    let host = url
        .host_str()
        .ok_or_else(|| format!("{url} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} names no port"))?;
    let is_listed = listed
        .iter()
        .any(|entry| *entry == format!("{host}:{port}"));
    match url.scheme() {
        "https" => {}
        "http" if is_listed => {}
        "http" => {
            return Err(format!(
                "{url} is plain HTTP; only HTTPS is fetched, or hosts listed in `[images] plain_http` of config.toml"
            ));
        }
        other => return Err(format!("{url}: `{other}` URLs are not fetched")),
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| format!("resolving {host}: {err}"))?
        .collect();
    let address = *addresses
        .first()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    if !is_listed && addresses.iter().any(|address| is_private(address.ip())) {
        return Err(format!(
            "{host} resolves to a private address ({}); only hosts listed in `[images] plain_http` of config.toml may be",
            address.ip()
        ));
    }
    Ok((host, address))
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
mod tests {
    use super::*;

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
