//! The parts of OCI and Docker manifests, indexes and image configurations this crate reads.
//!
//! Docker's schema 2 and OCI's formats have the same shape under different media types, so one
//! set of lenient structures reads both; fields nightshift does not use are ignored rather than
//! rejected, because registries and build tools add their own.

use serde::Deserialize;

use crate::ImageConfig;

/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A pointer to a blob: its media type, digest and size.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The platform an index entry is built for.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    fn describe(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A manifest or an index, told apart by media type or, when that is absent, by shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnyManifest {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// What a manifest document turned out to be.
pub(crate) enum Parsed {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

/// An image manifest: its configuration blob and layers, lowest first.
#[derive(Debug, Clone)]
pub(crate) struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Reads a manifest or index; the error text names what is wrong with it.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Parsed, String> {
    let any: AnyManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON: {e}"))?;
    if any.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported".to_string());
    }
    let is_index = match any.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) if any.manifests.is_none() && any.layers.is_none() => {
            return Err(format!("media type {other} is not an image manifest"));
        }
        _ => any.manifests.is_some(),
    };
    if is_index {
        return Ok(Parsed::Index(any.manifests.unwrap_or_default()));
    }
    match (any.config, any.layers) {
        (Some(config), Some(layers)) => Ok(Parsed::Image(ImageManifest { config, layers })),
        _ => Err("it has no config or no layers".to_string()),
    }
}

/// This machine's platform in OCI's words (Rust names `x86_64` what OCI names `amd64`).
pub(crate) fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    };
    ("linux", arch)
}

/// The platform as it reads in messages.
pub(crate) fn host_platform_text() -> String {
    let (os, arch) = host_platform();
    format!("{os}/{arch}")
}

/// Picks the index entry for this machine. `Err` lists what the index offers instead.
pub(crate) fn select_platform(entries: &[Descriptor]) -> Result<&Descriptor, Vec<String>> {
    let (os, arch) = host_platform();
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    // On arm64 prefer the plain or v8 variant; elsewhere the first match is the one.
    let preferred = candidates.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("v8")))
    });
    match preferred.or(candidates.first()) {
        Some(found) => Ok(found),
        None => {
            let mut available: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                // Attestation manifests ride in indexes as unknown/unknown.
                .filter(|p| p.os != "unknown")
                .map(Platform::describe)
                .collect();
            available.dedup();
            Err(available)
        }
    }
}

/// The image configuration blob: the platform, the runtime settings and the layers' diff ids.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigBlob {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    pub rootfs: RootFs,
}

/// `config` inside the configuration blob.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RuntimeConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// `rootfs` inside the configuration blob.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigBlob {
    /// Reads a configuration blob; the error text names what is wrong with it.
    pub(crate) fn parse(bytes: &[u8]) -> Result<ConfigBlob, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("it is not an image configuration: {e}"))
    }

    /// Whether the image runs on this machine; when not, the platform it was built for.
    pub(crate) fn check_platform(&self) -> Result<(), String> {
        let (os, arch) = host_platform();
        if self.os == os && self.architecture == arch {
            Ok(())
        } else {
            Err(match &self.variant {
                Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
                None => format!("{}/{}", self.os, self.architecture),
            })
        }
    }

    /// The settings the sandbox applies: environment, working directory, user, platform.
    pub(crate) fn image_config(&self) -> ImageConfig {
        let runtime = self.config.clone().unwrap_or_default();
        let env = runtime
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (entry, String::new()),
            })
            .collect();
        ImageConfig {
            env,
            working_dir: runtime.working_dir.filter(|w| !w.is_empty()),
            user: runtime.user.filter(|u| !u.is_empty()),
            architecture: self.architecture.clone(),
            os: self.os.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_offers_its_platforms_when_ours_is_missing() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
          "manifests":[
            {"digest":"sha256:1","size":1,"platform":{"architecture":"s390x","os":"linux"}},
            {"digest":"sha256:2","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v7"}},
            {"digest":"sha256:3","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        let Ok(Parsed::Index(entries)) = parse_manifest(index) else {
            panic!("not an index")
        };
        if host_platform().1 == "amd64" {
            assert_eq!(
                select_platform(&entries).unwrap_err(),
                vec!["linux/s390x".to_string(), "linux/arm/v7".to_string()]
            );
        }
    }

    #[test]
    fn docker_and_oci_manifests_read_alike() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"x","digest":"sha256:c","size":2},
          "layers":[{"mediaType":"y","digest":"sha256:l","size":3}]}"#;
        let Ok(Parsed::Image(manifest)) = parse_manifest(docker) else {
            panic!("not a manifest")
        };
        assert_eq!(manifest.layers.len(), 1);
        assert!(parse_manifest(br#"{"schemaVersion":1}"#).is_err());
    }
}
