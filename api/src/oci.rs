//! Modules from OCI registries: how a manifest names one
//! (`module = "oci://REGISTRY/REPOSITORY:TAG"` or `...@sha256:DIGEST`) and
//! the format of a WebAssembly artifact in a registry (what `wkg oci push`
//! and the `oci-wasm` crate write: an OCI image manifest whose config has
//! the media type [`CONFIG_MEDIA_TYPE`] and whose one layer is the module,
//! [`LAYER_MEDIA_TYPE`]). No I/O: the control plane pulls, `shoal push`
//! pushes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a module that comes from a registry starts with.
pub const SCHEME: &str = "oci://";
/// The media type of the layer that is the module.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The media type of a wasm artifact's config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of the image manifest that holds them.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The tag a reference without one means.
pub const DEFAULT_TAG: &str = "latest";

/// Whether a manifest's `module` names a module in a registry.
pub fn is_oci(module: &str) -> bool {
    module.starts_with(SCHEME)
}

/// A module in a registry: `oci://REGISTRY/REPOSITORY[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRef {
    /// `host` or `host:port`.
    pub registry: String,
    /// `name` or `path/to/name`, lowercase.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:HEX` of the image manifest, when the reference pins one.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{reference:?} is not a module reference ({reason}); write oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST"
)]
pub struct BadReference {
    pub reference: String,
    pub reason: String,
}

impl ModuleRef {
    pub fn parse(s: &str) -> Result<Self, BadReference> {
        let bad = |reason: &str| BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with oci://"))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (rest, None),
        };
        if let Some(d) = digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("the digest must be sha256:HEX"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("a sha256 digest is 64 lowercase hex digits"));
            }
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no repository after the registry"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad(
                "the registry must be a host name or address, with an optional port",
            ));
        }
        // A tag follows the last `:` after the last `/`.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (path, None),
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            })
        {
            return Err(bad(
                "a repository is lowercase letters, digits, '.', '_' and '-', in parts separated by '/'",
            ));
        }
        if let Some(t) = tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                || matches!(t.as_bytes()[0], b'.' | b'-'))
        {
            return Err(bad("a tag is up to 128 letters, digits, '_', '.' and '-'"));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// The tag to resolve when the reference pins no digest.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The same reference pinned to the image manifest `digest`
    /// (`sha256:HEX`), its tag kept for people to read.
    pub fn pinned(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_string()),
            tag: Some(self.tag_or_default().to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The config of a wasm artifact (`application/vnd.wasm.config.v0+json`),
/// as the CNCF wasm OCI artifact layout describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When the artifact was made, RFC 3339.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip1` for a core module, `wasip2` for a component.
    pub os: String,
    /// The digests of the manifest's layers, in order.
    pub layer_digests: Vec<String>,
    /// What a component imports and exports (components only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

/// The interfaces a component imports and exports, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// Where a manifest's app finds its registry credentials: a secret of its
/// namespace with the keys `username` and `password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthRef {
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_and_print_as_written() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (s, registry, repository, tag, pinned) in [
            (
                "oci://ghcr.io/acme/web:v1",
                "ghcr.io",
                "acme/web",
                Some("v1"),
                false,
            ),
            (
                "oci://127.0.0.1:5000/web",
                "127.0.0.1:5000",
                "web",
                None,
                false,
            ),
            (
                "oci://localhost:5000/a/b/c:1.0-rc_1",
                "localhost:5000",
                "a/b/c",
                Some("1.0-rc_1"),
                false,
            ),
            (
                &format!("oci://r.example/web@{digest}"),
                "r.example",
                "web",
                None,
                true,
            ),
            (
                &format!("oci://r.example:443/web:v2@{digest}"),
                "r.example:443",
                "web",
                Some("v2"),
                true,
            ),
        ] {
            let r = ModuleRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.registry, registry, "{s}");
            assert_eq!(r.repository, repository, "{s}");
            assert_eq!(r.tag.as_deref(), tag, "{s}");
            assert_eq!(r.digest.is_some(), pinned, "{s}");
            assert_eq!(r.to_string(), s);
        }
        let r = ModuleRef::parse("oci://127.0.0.1:5000/web").unwrap();
        assert_eq!(r.tag_or_default(), "latest");
        assert_eq!(
            r.pinned(&digest).to_string(),
            format!("oci://127.0.0.1:5000/web:latest@{digest}")
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (s, says) in [
            ("ghcr.io/acme/web:v1", "oci://"),
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/Acme/web", "lowercase"),
            ("oci://ghcr.io/acme//web", "lowercase"),
            ("oci://ghcr.io/web:", "tag"),
            ("oci://ghcr.io/web:-x", "tag"),
            ("oci://ghcr.io/web@md5:00", "sha256:HEX"),
            ("oci://ghcr.io/web@sha256:00", "64"),
            ("oci:///web", "registry"),
            ("oci://user@host/web", "sha256"),
        ] {
            let e = ModuleRef::parse(s).unwrap_err();
            assert!(e.to_string().contains(says), "{s}: {e}");
        }
    }
}
