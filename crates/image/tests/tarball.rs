//! Features given as tarball URLs, fetched from a server the test starts on loopback: plain
//! HTTP and private addresses only for hosts the host configuration lists, redirects checked
//! hop by hop, a bound on the bytes, and the payload's digest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;

use nightshift_image::fetch_tarball;
use sha2::{Digest, Sha256};

/// A server answering every request with `status` (and `location`, if any) and `body`.
fn serve(status: &'static str, location: Option<String>, body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(location) = &location {
                head.push_str(&format!("Location: {location}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

#[tokio::test]
async fn a_listed_host_is_fetched_with_its_digest() {
    let body = b"pretend this is a tgz".to_vec();
    let port = serve("200 OK", None, body.clone());
    let listed = vec![format!("127.0.0.1:{port}")];
    let url = format!("http://127.0.0.1:{port}/devcontainer-feature-x.tgz");
    let artifact = fetch_tarball(&url, &listed, &[], 1 << 20).await.unwrap();
    assert_eq!(artifact.layer, body);
    assert_eq!(
        artifact.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&body)))
    );
    let err = fetch_tarball(&url, &listed, &[], 4).await.unwrap_err();
    assert!(err.contains("larger than 4 bytes"), "{err}");
}

#[tokio::test]
async fn plain_http_and_private_addresses_need_the_host_configuration() {
    let port = serve("200 OK", None, b"x".to_vec());
    let err = fetch_tarball(&format!("http://127.0.0.1:{port}/f.tgz"), &[], &[], 1 << 20)
        .await
        .unwrap_err();
    assert!(err.contains("plain HTTP"), "{err}");
    // HTTPS to a private address is refused before anything is sent.
    let err = fetch_tarball(
        &format!("https://127.0.0.1:{port}/f.tgz"),
        &[],
        &[],
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(err.contains("private address"), "{err}");
    // Listed as private, it is asked (and this server speaks no TLS); being private does not
    // make plain HTTP allowed.
    let private = [format!("127.0.0.1:{port}")];
    let err = fetch_tarball(
        &format!("https://127.0.0.1:{port}/f.tgz"),
        &[],
        &private,
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(!err.contains("private address"), "{err}");
    let err = fetch_tarball(
        &format!("http://127.0.0.1:{port}/f.tgz"),
        &[],
        &private,
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(err.contains("plain HTTP"), "{err}");
    let err = fetch_tarball("ftp://example.com/f.tgz", &[], &[], 1 << 20)
        .await
        .unwrap_err();
    assert!(err.contains("`ftp` URLs are not fetched"), "{err}");
}

#[tokio::test]
async fn each_redirect_is_checked_like_the_first_url() {
    let target = serve("200 OK", None, b"secret of an internal service".to_vec());
    let redirect = serve(
        "302 Found",
        Some(format!("http://127.0.0.1:{target}/internal")),
        Vec::new(),
    );
    // The first host is listed, the one it redirects to is not.
    let listed = vec![format!("127.0.0.1:{redirect}")];
    let err = fetch_tarball(
        &format!("http://127.0.0.1:{redirect}/f.tgz"),
        &listed,
        &[],
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(err.contains("plain HTTP"), "{err}");
    // Both listed: the redirect is followed.
    let listed = vec![
        format!("127.0.0.1:{redirect}"),
        format!("127.0.0.1:{target}"),
    ];
    let artifact = fetch_tarball(
        &format!("http://127.0.0.1:{redirect}/f.tgz"),
        &listed,
        &[],
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(artifact.layer, b"secret of an internal service");
    let missing = serve("404 Not Found", None, Vec::new());
    let err = fetch_tarball(
        &format!("http://127.0.0.1:{missing}/f.tgz"),
        &[format!("127.0.0.1:{missing}")],
        &[],
        1 << 20,
    )
    .await
    .unwrap_err();
    assert!(err.contains("404"), "{err}");
}
