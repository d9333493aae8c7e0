//! Image references (`busybox`, `ghcr.io/o/app:1.2`, `x@sha256:…`) and this host's platform.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

use super::error::ImageError;

/// A normalized image reference: Docker Hub as the default registry, `library/` for official
/// images, `latest` when neither tag nor digest is given. Two spellings of one image compare equal.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ImageError> {
        let trimmed = reference.trim();
        let inner: Reference =
            trimmed
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })?;
        if let Some(digest) = inner.digest() {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: "only sha256 digests are supported".into(),
                })?;
            if !is_sha256_hex(hex) {
                return Err(ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: "a sha256 digest is 64 lowercase hex digits".into(),
                });
            }
        }
        Ok(ImageRef { inner })
    }

    /// The canonical spelling, e.g. `docker.io/library/busybox:latest`: the key of the index.
    pub fn canonical(&self) -> String {
        self.inner.whole()
    }

    /// The registry host as users write it (`docker.io`, `127.0.0.1:5000`): the key of
    /// `ApplyRequest.registry_auth` and of `insecure_registries`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// `sha256:…` when the reference pins a digest.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }

    pub(crate) fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.inner.registry().to_string(),
            self.inner.repository().to_string(),
            digest.to_string(),
        )
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({})", self.canonical())
    }
}

pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An OCI platform: what a manifest list entry is chosen by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this agent runs on: linux and the OCI (GOARCH) name of the CPU.
    pub fn host() -> Platform {
        Platform::for_arch(std::env::consts::ARCH)
    }

    /// Maps Rust's `std::env::consts::ARCH` names to OCI/GOARCH names (and variants).
    pub fn for_arch(arch: &str) -> Platform {
        let (architecture, variant) = match arch {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            // Rust's `arm` covers v6 and v7; v7 is what servers running 32-bit arm have.
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry's platform runs here. A missing variant matches (most indexes omit
    /// `v8` for arm64); a different variant does not.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && architecture == self.architecture
            && match (variant, self.variant.as_deref()) {
                (None, _) => true,
                (Some(v), Some(mine)) => v == mine,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_normalize_to_docker_hub_library_latest() {
        let r = ImageRef::parse("busybox").expect("valid");
        assert_eq!(r.canonical(), "docker.io/library/busybox:latest");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(
            r,
            ImageRef::parse("docker.io/library/busybox:latest").expect("valid")
        );
        let r = ImageRef::parse("127.0.0.1:5000/test/app:1").expect("valid");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "test/app");
        assert_eq!(r.tag(), Some("1"));
    }

    #[test]
    fn digests_must_be_sha256() {
        let hex = "a".repeat(64);
        let r = ImageRef::parse(&format!("ghcr.io/o/app@sha256:{hex}")).expect("valid");
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        assert!(ImageRef::parse(&format!("app@sha512:{}", "a".repeat(128))).is_err());
        assert!(ImageRef::parse("app@sha256:abc").is_err());
        assert!(ImageRef::parse("bad ref!").is_err());
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn rust_arch_names_map_to_oci_names() {
        assert_eq!(Platform::for_arch("x86_64").architecture, "amd64");
        let arm = Platform::for_arch("aarch64");
        assert_eq!(arm.to_string(), "linux/arm64/v8");
        assert!(arm.matches("linux", "arm64", None));
        assert!(arm.matches("linux", "arm64", Some("v8")));
        assert!(!arm.matches("linux", "arm", Some("v7")));
        assert!(!Platform::for_arch("x86_64").matches("windows", "amd64", None));
        assert!(!Platform::for_arch("x86_64").matches("unknown", "unknown", None));
    }
}
