//! What the sandbox and the proxy trust when the proxy ends TLS for a credential: the
//! session's certificate authority (and the bundle the sandbox gets with it), and the host's
//! roots the proxy verifies real servers against.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Where the session's CA bundle (the host's roots and the session CA) appears inside.
pub const CA_BUNDLE: &str = "/run/nightshift/ca-bundle.pem";

/// The bundle's name in the session's state directory, where the host writes it.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// System bundle paths the session's bundle covers inside the sandbox (where one is a link, the
/// file it leads to inside the root), so that programs that read the usual place trust the
/// session CA too.
pub const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Variables that point TLS clients at the bundle, for those that do not read the system's.
pub(crate) fn ca_env() -> Vec<(String, String)> {
    [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
        "NODE_EXTRA_CA_CERTS",
        "CARGO_HTTP_CAINFO",
        "GIT_SSL_CAINFO",
        "DENO_CERT",
    ]
    .into_iter()
    .map(|key| (key.to_string(), CA_BUNDLE.to_string()))
    .collect()
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's trusted roots (its system store, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set),
/// read once per process.
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "reading the host's trusted roots");
        }
        found.certs
    })
}

pub(crate) fn upstream_config(extra: &[PathBuf]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(native_roots().iter().cloned());
    for path in extra {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("reading trusted roots from {}: {e}", path.display()))?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(format!(
            "this host has no trusted root certificates to verify servers with ({added} read from its store)"
        ));
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate authority that lives as long as its session, and the server configurations
/// it made, one per host.
pub(crate) struct SessionCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    servers: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl SessionCa {
    pub fn new() -> Result<Self, String> {
        let failed = |e: rcgen::Error| format!("making the session's certificate authority: {e}");
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "nightshift sandbox session CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(SessionCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            servers: Mutex::new(HashMap::new()),
        })
    }

    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = servers.get(host) {
            return Ok(config.clone());
        }
        let failed = |e: rcgen::Error| format!("making a certificate for {host}: {e}");
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| format!("the key for {host}: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS server configuration: {e}"))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(|e| format!("TLS server configuration for {host}: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        servers.insert(host.to_string(), config.clone());
        Ok(config)
    }
}

/// Writes the bundle the sandbox trusts: the host's system bundle (the first of
/// [`SYSTEM_BUNDLES`] that exists) followed by the session CA.
pub(crate) fn write_bundle(path: &Path, ca_pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bundle = SYSTEM_BUNDLES
        .iter()
        .find_map(|system| std::fs::read(system).ok())
        .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(ca_pem.as_bytes());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(&bundle)
}
