//! A devcontainer feature given as a tarball's URL (`https://host/devcontainer-feature-NAME.tgz`),
//! fetched on the host for a task that builds.
//!
//! The URL is the repository's, so untrusted, and this host may reach what the sandbox may
//! not: HTTPS only, plain HTTP only to the hosts the host configuration lists (as for
//! registries); no private destination (loopback, link-local, RFC 1918 and the like) unless
//! the host configuration lists it; each redirect checked the same way, the address checked
//! being the one connected to; at most a bound of bytes. The payload is an [`Artifact`], so it
//! unpacks as an OCI feature does.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::Artifact;

/// The most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// Fetches the tarball at `url`: its bytes (at most `max_bytes`) and their sha256 digest.
/// Only the `host:port` entries of `plain_http` (`[images] plain_http` of the host
/// configuration) are reached over plain HTTP, and only those and `private`'s at a private
/// address.
pub async fn fetch_tarball(
    url: &str,
    plain_http: &[String],
    private: &[String],
    max_bytes: u64,
) -> Result<Artifact, String> {
    let mut at = Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    for _ in 0..=MAX_REDIRECTS {
        let (host, address) = destination(&at, plain_http, private).await?;
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
async fn destination(
    url: &Url,
    plain_http: &[String],
    private: &[String],
) -> Result<(String, SocketAddr), String> {
    let host = url
        .host_str()
        .ok_or_else(|| format!("{url} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} names no port"))?;
    let is_plain = crate::address::is_listed(plain_http, &host, port);
    let may_be_private = is_plain || crate::address::is_listed(private, &host, port);
    match url.scheme() {
        "https" => {}
        "http" if is_plain => {}
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
    if let Some(private) = crate::address::first_private(&addresses).filter(|_| !may_be_private) {
        return Err(format!(
            "{host} resolves to a private address ({private}); only hosts listed in `[images] allow_private` or `[images] plain_http` of config.toml may be"
        ));
    }
    Ok((host, address))
}
