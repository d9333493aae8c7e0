//! `compose-fleet push`: built images from the local store to a registry over the OCI
//! distribution API (`oci-client`), blob by blob — only those the registry lacks, each streamed
//! from its file (never a whole layer in memory) — then the manifest's exact bytes, so the image
//! keeps its digest and hosts can pull it by that digest.

use std::io::Read as _;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::store::LocalStore;

/// Bytes read from a blob file per piece of the upload stream.
const PIECE: usize = 1 << 20;

/// Where a service's image goes: `--registry HOST[:PORT]/prefix` (the image's own name, or
/// `<project>-<service>`, under it, tagged like `image:` or `latest`), or else `image:` itself,
/// which must then name a registry. Pure.
pub fn target(
    registry: Option<&str>,
    project: &str,
    service: &str,
    image: Option<&str>,
) -> Result<String, String> {
    let (name, tag) = image.map_or(("", None), super::name_and_tag);
    let tag = tag.unwrap_or("latest");
    match registry {
        Some(registry) => {
            let registry = registry.trim_end_matches('/');
            if registry.is_empty() {
                return Err("--registry is empty; write HOST[:PORT] or HOST[:PORT]/prefix".into());
            }
            let base = match name.rsplit('/').next() {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => format!("{project}-{service}"),
            };
            Ok(format!("{registry}/{base}:{tag}"))
        }
        None => {
            let first = name.split('/').next().unwrap_or("");
            let names_registry = name.contains('/')
                && (first.contains('.') || first.contains(':') || first == "localhost");
            if !names_registry {
                return Err(format!(
                    "service `{service}` has no `image:` naming a registry to push to\nhint: \
                     pass --registry HOST[:PORT]/prefix, or set `image: registry.example.org/{project}/{service}:TAG`"
                ));
            }
            Ok(format!("{name}:{tag}"))
        }
    }
}

/// Every name a service's image is pushed under: [`target`] of its `image:`, then of each of
/// its `build.tags` (those that name no registry are skipped when there is no `--registry`),
/// without repeats. Pure.
pub fn targets(
    registry: Option<&str>,
    project: &str,
    service: &str,
    image: Option<&str>,
    tags: &[String],
) -> Result<Vec<String>, String> {
    let mut all = vec![target(registry, project, service, image)?];
    for tag in tags {
        if let Ok(t) = target(registry, project, service, Some(tag)) {
            if !all.contains(&t) {
                all.push(t);
            }
        }
    }
    Ok(all)
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `HOST/name@sha256:…`: what a host pulls.
    pub reference: String,
    pub blobs_pushed: usize,
    pub bytes_pushed: u64,
    pub blobs_present: usize,
}

/// What `up` did with one built image under `push: registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub service: String,
    /// The registry name it went to, `HOST/name:tag`.
    pub target: String,
    /// What was pushed; `None`: the registry had the manifest already (one request asked it).
    pub pushed: Option<Pushed>,
}

/// The credentials to push to `registry` (`HOST[:PORT]`) with: the inventory's, else the docker
/// config's (basic auth, or an identity token exchanged at the registry's token endpoint for a
/// push token: `scope` is the repository's). Returns them with warnings to print. With
/// `hosts_pull` (the hosts are to pull what is pushed), an identity token is refused before it
/// is exchanged: the hosts pull with a user name and password only.
pub async fn auth_for(
    registry: &str,
    repository: &str,
    insecure: bool,
    inventory: &std::collections::BTreeMap<String, crate::inventory::Registry>,
    hosts_pull: bool,
) -> Result<(RegistryAuth, Vec<String>), String> {
    let (creds, warnings) = crate::deploy::auth::for_push(registry, inventory)?;
    if hosts_pull && matches!(creds, crate::deploy::auth::PushAuth::IdentityToken(_)) {
        // Pushing would work, but no host could pull what was pushed.
        return Err(format!(
            "registry `{registry}`: the docker config holds only an identity token for it (an OAuth2 refresh token); `push: registry` would push there, but the hosts pull with a user name and password only\nhint: give its credentials in the inventory: `registries: {{ \"{registry}\": {{ username: NAME, password_env: VARIABLE }} }}`, or set `build: {{ push: direct }}`"
        ));
    }
    let auth = match creds {
        crate::deploy::auth::PushAuth::Anonymous => RegistryAuth::Anonymous,
        crate::deploy::auth::PushAuth::Basic(c) => RegistryAuth::Basic(c.username, c.password),
        crate::deploy::auth::PushAuth::IdentityToken(token) => RegistryAuth::Bearer(
            crate::deploy::auth::exchange_identity_token(registry, repository, insecure, &token)
                .await?,
        ),
    };
    Ok((auth, warnings))
}

/// Pushes the built images the desired pods run to the registries their `push_to` names, for
/// `up` under `push: registry`: an image whose manifest the registry holds already (asked by
/// digest, one request) is not pushed again; otherwise only the blobs it lacks go. Warnings
/// (credentials that could not be had) are printed by `warn`.
pub async fn publish(
    desired: &crate::deploy::desired::Desired,
    images: &[super::LocalImage],
    store: &LocalStore,
    registries: &std::collections::BTreeMap<String, crate::inventory::Registry>,
    warn: &dyn Fn(&str),
) -> Result<Vec<Published>, String> {
    let mut out = Vec::new();
    for image in images {
        let Some(target) = &image.push_to else {
            continue;
        };
        if !desired.pods().any(|p| p.images.contains(&image.reference)) {
            continue;
        }
        let reference: Reference = target
            .parse()
            .map_err(|e| format!("`{target}` is not an image reference: {e}"))?;
        let host = reference.resolve_registry().to_string();
        let insecure = registries
            .iter()
            .any(|(name, r)| r.insecure && name.trim_end_matches('/') == host);
        let client = client(&host, insecure);
        let (auth, warnings) =
            auth_for(&host, reference.repository(), insecure, registries, true).await?;
        for w in &warnings {
            warn(w);
        }
        let by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            image.built.manifest.clone(),
        );
        // Asked first: a run that changes other services pushes nothing for this one.
        let present = matches!(
            client.fetch_manifest_digest(&by_digest, &auth).await,
            Ok(d) if d == image.built.manifest
        );
        let pushed = if present {
            None
        } else {
            Some(push(&client, store, &image.built.manifest, target, &auth).await?)
        };
        out.push(Published {
            service: image.service.clone(),
            target: target.clone(),
            pushed,
        });
    }
    Ok(out)
}

/// A client for `registry` (`HOST[:PORT]`): plain http only when `insecure` (the inventory says
/// so), anonymous.
pub fn client(registry: &str, insecure: bool) -> Client {
    let protocol = if insecure {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
}

/// Pushes the image whose manifest is `manifest_digest` to `target` (`HOST/name:tag`), with
/// `auth` (anonymous, or the credentials for the registry). A multi-platform build (an OCI
/// index) goes as each platform's image, by digest, then the index under the tag.
pub async fn push(
    client: &Client,
    store: &LocalStore,
    manifest_digest: &str,
    target: &str,
    auth: &RegistryAuth,
) -> Result<Pushed, String> {
    let reference: Reference = target
        .parse()
        .map_err(|e| format!("`{target}` is not an image reference: {e}"))?;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("pushing to {target}: {what}: {e}");
    client
        .store_auth_if_needed(reference.resolve_registry(), auth)
        .await;
    let body = store
        .read_blob(manifest_digest)
        .map_err(|e| fail("reading the local image", &e))?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| super::store::OCI_MANIFEST.to_string());
    let mut out = Pushed {
        reference: format!(
            "{}/{}@{manifest_digest}",
            reference.resolve_registry(),
            reference.repository()
        ),
        blobs_pushed: 0,
        bytes_pushed: 0,
        blobs_present: 0,
    };
    let by_digest = |digest: &str| {
        Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        )
    };
    if media_type == super::store::OCI_INDEX {
        let index: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail("reading the local index", &e))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        for entry in entries {
            let digest = entry["digest"].as_str().unwrap_or_default().to_string();
            push_image(client, store, &by_digest(&digest), &digest, &mut out)
                .await
                .map_err(|e| fail(&format!("the image {digest} of the index"), &e))?;
        }
    } else {
        upload_blobs(client, store, &reference, manifest_digest, &mut out)
            .await
            .map_err(|e| fail("a blob", &e))?;
    }
    let content_type = media_type
        .parse()
        .map_err(|e| fail("the manifest's media type", &e))?;
    client
        .push_manifest_raw(&reference, body.clone(), content_type)
        .await
        .map_err(|e| fail("uploading the manifest", &e))?;
    // The registry names what it stored by digest: it must be ours.
    let (_, stored) = client
        .pull_manifest_raw(&by_digest(manifest_digest), auth, &[media_type.as_str()])
        .await
        .map_err(|e| fail("reading the manifest back by digest", &e))?;
    if stored != manifest_digest {
        return Err(fail(
            "verifying",
            &format!("the registry stored digest {stored}, not {manifest_digest}"),
        ));
    }
    Ok(out)
}

/// Pushes one platform's image (its blobs, then its manifest) to `reference` (by digest).
async fn push_image(
    client: &Client,
    store: &LocalStore,
    reference: &Reference,
    manifest_digest: &str,
    out: &mut Pushed,
) -> Result<(), String> {
    upload_blobs(client, store, reference, manifest_digest, out).await?;
    let (body, manifest) = store.manifest(manifest_digest).map_err(|e| e.to_string())?;
    let media_type = if manifest.media_type.is_empty() {
        super::store::OCI_MANIFEST
    } else {
        manifest.media_type.as_str()
    };
    let content_type = media_type.parse().map_err(|e| format!("{e}"))?;
    client
        .push_manifest_raw(reference, body, content_type)
        .await
        .map_err(|e| format!("uploading the manifest: {e}"))?;
    Ok(())
}

/// Uploads the blobs of one image the registry lacks, each streamed from its file.
async fn upload_blobs(
    client: &Client,
    store: &LocalStore,
    reference: &Reference,
    manifest_digest: &str,
    out: &mut Pushed,
) -> Result<(), String> {
    let (_, manifest) = store
        .manifest(manifest_digest)
        .map_err(|e| format!("reading the local image: {e}"))?;
    for desc in manifest.blobs() {
        if client
            .blob_exists(reference, &desc.digest)
            .await
            .map_err(|e| format!("asking for {}: {e}", desc.digest))?
        {
            out.blobs_present += 1;
            continue;
        }
        let path = store
            .blob_path(&desc.digest)
            .ok_or_else(|| format!("bad digest {}", desc.digest))?;
        let file =
            std::fs::File::open(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        client
            .push_blob_stream(reference, file_stream(file), &desc.digest, Some(desc.size))
            .await
            .map_err(|e| format!("uploading blob {}: {e}", desc.digest))?;
        out.blobs_pushed += 1;
        out.bytes_pushed += desc.size;
    }
    Ok(())
}

/// A blob file as a stream of pieces: `B` is whatever byte buffer the client takes.
fn file_stream<B, E>(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<B, E>> + Send + 'static
where
    B: From<Vec<u8>> + Send + 'static,
    E: From<std::io::Error> + Send + 'static,
{
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; PIECE];
        let mut n = 0;
        while n < PIECE {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(r) => n += r,
                Err(e) => return Some((Err(E::from(e)), None)),
            }
        }
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some((Ok(B::from(buf)), Some(file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_targets_follow_the_registry_flag_or_the_image_name() {
        let t = |reg: Option<&str>, image: Option<&str>| target(reg, "shop", "web", image);
        assert_eq!(
            t(Some("10.250.0.1:5000/team"), None),
            Ok("10.250.0.1:5000/team/shop-web:latest".into())
        );
        assert_eq!(
            t(
                Some("10.250.0.1:5000/team/"),
                Some("example.org/acme/app:2@sha256:ab")
            ),
            Ok("10.250.0.1:5000/team/app:2".into())
        );
        assert_eq!(
            t(None, Some("registry.example.org:5000/acme/app")),
            Ok("registry.example.org:5000/acme/app:latest".into())
        );
        let err = t(None, Some("app:1")).expect_err("no registry");
        assert!(err.contains("--registry"), "{err}");
        assert!(t(None, None).is_err());
    }

    #[test]
    fn build_tags_are_pushed_too() {
        let tags = vec![
            "example.org/acme/app:2".to_string(),
            "app:edge".to_string(),
            "example.org/acme/app:1".to_string(),
        ];
        assert_eq!(
            targets(None, "shop", "web", Some("example.org/acme/app:1"), &tags),
            Ok(vec![
                "example.org/acme/app:1".to_string(),
                "example.org/acme/app:2".to_string(),
            ]),
            "`app:edge` names no registry; `:1` is not repeated"
        );
        assert_eq!(
            targets(Some("10.250.0.1:5000/t"), "shop", "web", None, &tags),
            Ok(vec![
                "10.250.0.1:5000/t/shop-web:latest".to_string(),
                "10.250.0.1:5000/t/app:2".to_string(),
                "10.250.0.1:5000/t/app:edge".to_string(),
                "10.250.0.1:5000/t/app:1".to_string(),
            ])
        );
    }
}
