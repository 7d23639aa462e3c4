//! reqwest is built with `rustls-no-provider` and panics when it builds a client without a
//! rustls crypto provider installed. This test binary installs none, on purpose: making a
//! client must still work, because `OpenAiChat::new` installs ring itself when needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nightshift_model::{OpenAiChat, ProviderConfig};

#[test]
fn a_client_can_be_made_without_installing_a_crypto_provider() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    let client = OpenAiChat::new(
        "openai:gpt-test".parse().unwrap(),
        &ProviderConfig::default(),
    );
    assert!(client.is_ok());
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}
