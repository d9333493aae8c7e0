//! Registry credentials from the inventory (`registries: { HOST: { username, password_env |
//! password_file | password } }`), which win for their registry, else from the user's docker
//! config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): `auths` entries (`auth` =
//! base64 of `user:password`, or `username` and `password`), and credential helpers
//! (`credHelpers` per registry, `credsStore` for the rest) run as `docker-credential-NAME get`
//! with the server on stdin, as docker runs them.
//!
//! The credentials travel only inside the protocol (`registry_auth` of `ApplyPods` and `Pull`),
//! never in argv, never printed: [`RegistryAuth`]'s `Debug` redacts the password, and errors
//! here name the registry and the helper, never what they returned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

use crate::inventory::{Password, Registry};
use crate::proto::RegistryAuth;

/// The registry of an image reference as docker reads it: the first path component when it has a
/// `.` or a `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize(first)
        }
        _ => "docker.io".to_string(),
    }
}

/// A config key (`https://index.docker.io/v1/`, `registry:5000`, `https://r.example/`) as the
/// registry host the agent looks credentials up by.
fn normalize(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

/// How docker names a registry to a credential helper.
fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Runs a credential helper: `(helper, server)` → `(username, secret)`.
pub type Helper<'a> = &'a dyn Fn(&str, &str) -> Result<(String, String), String>;

/// The credentials for `registries` from a docker config's text; what could not be had is a
/// warning (naming the registry, never a secret).
pub fn from_config(
    config: &str,
    registries: &BTreeSet<String>,
    helper: Helper<'_>,
) -> (BTreeMap<String, RegistryAuth>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut warnings = Vec::new();
    let Ok(json) = serde_json::from_str::<Value>(config) else {
        warnings.push("the docker config is not JSON; no registry credentials are sent".into());
        return (out, warnings);
    };
    let auths: BTreeMap<String, &Value> = json
        .get("auths")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (normalize(k), v)).collect())
        .unwrap_or_default();
    let helpers: BTreeMap<String, String> = json
        .get("credHelpers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((normalize(k), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let store = json.get("credsStore").and_then(Value::as_str);
    for registry in registries {
        // docker's order: a helper for this registry, the store, then a stored `auth`.
        let helper_name = helpers.get(registry).map(String::as_str).or(store);
        if let Some(name) = helper_name {
            match helper(name, &helper_server(registry)) {
                Ok((username, _)) if username == "<token>" => warnings.push(format!(
                    "registry `{registry}`: credential helper `{name}` gave an identity token, which compose-fleet cannot use yet; pulls from it go without credentials"
                )),
                Ok((username, password)) => {
                    out.insert(registry.clone(), RegistryAuth { username, password });
                    continue;
                }
                // "credentials not found" for a registry the helper does not know is normal.
                Err(why) if why.contains("not found") => {}
                Err(why) => warnings.push(format!(
                    "registry `{registry}`: credential helper `docker-credential-{name}` failed: {why}"
                )),
            }
        }
        let Some(entry) = auths.get(registry) else {
            continue;
        };
        let pair = if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                })
        } else {
            match (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
                _ => None,
            }
        };
        match pair {
            Some((username, password)) => {
                out.insert(registry.clone(), RegistryAuth { username, password });
            }
            // An entry with neither (docker writes `{}` when a helper holds the secret).
            None if entry.as_object().is_some_and(|o| o.is_empty()) => {}
            None => warnings.push(format!(
                "registry `{registry}`: its `auths` entry in the docker config is not `user:password` in base64; pulls from it go without credentials"
            )),
        }
    }
    (out, warnings)
}

/// The docker config's path: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Runs `docker-credential-NAME get` with `server` on stdin; its JSON's `Username` and `Secret`.
fn run_helper(name: &str, server: &str) -> Result<(String, String), String> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!("`{name}` is not a helper name"));
    }
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" on stdout or stderr.
        let said = String::from_utf8_lossy(if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        })
        .trim()
        .chars()
        .take(200)
        .collect::<String>();
        return Err(said);
    }
    let json: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| format!("{program} did not print JSON"))?;
    match (
        json.get("Username").and_then(Value::as_str),
        json.get("Secret").and_then(Value::as_str),
    ) {
        (Some(u), Some(s)) => Ok((u.to_string(), s.to_string())),
        _ => Err(format!("{program} printed no Username and Secret")),
    }
}

/// The inventory's credentials for the registries in `wanted`: `env` reads an environment
/// variable, `read` a file. A password that cannot be had is an error naming the registry and
/// where the password was to come from (never the password).
pub fn from_inventory(
    registries: &BTreeMap<String, Registry>,
    wanted: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<BTreeMap<String, RegistryAuth>, String> {
    let mut out = BTreeMap::new();
    for (key, reg) in registries {
        let registry = normalize(key);
        if !wanted.contains(&registry) {
            continue;
        }
        let (Some(username), Some(password)) = (&reg.username, &reg.password) else {
            continue;
        };
        let password = match password {
            Password::Inline(p) => p.clone(),
            Password::Env(name) => env(name).filter(|p| !p.is_empty()).ok_or_else(|| {
                format!(
                    "registry `{key}`: its password is to come from the environment variable `{name}` (`password_env` in the inventory), which is not set\nhint: export {name}, or remove the registry's credentials from the inventory"
                )
            })?,
            Password::File(path) => {
                let path = expand_home(path);
                let text = read(&path).map_err(|e| {
                    format!(
                        "registry `{key}`: cannot read its password from {} (`password_file` in the inventory): {e}",
                        path.display()
                    )
                })?;
                // One line, as `docker login --password-stdin` takes it.
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.is_empty() {
                    return Err(format!(
                        "registry `{key}`: {} (`password_file` in the inventory) is empty",
                        path.display()
                    ));
                }
                text.to_string()
            }
        };
        out.insert(
            registry,
            RegistryAuth {
                username: username.clone(),
                password,
            },
        );
    }
    Ok(out)
}

/// `~/x` as the user means it.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// The credentials for the registries of `images`: the inventory's for the registries it gives
/// credentials for, the user's docker config's for the others (none, without a warning, when
/// there is no config). Returns them with warnings; an inventory password that cannot be read is
/// an error.
pub fn for_images<'a>(
    images: impl Iterator<Item = &'a str>,
    inventory: &BTreeMap<String, Registry>,
) -> Result<(BTreeMap<String, RegistryAuth>, Vec<String>), String> {
    let registries: BTreeSet<String> = images.map(registry_of).collect();
    for_registries(&registries, inventory)
}

/// [`for_images`] for registries named directly (`HOST[:PORT]`).
pub fn for_registries(
    registries: &BTreeSet<String>,
    inventory: &BTreeMap<String, Registry>,
) -> Result<(BTreeMap<String, RegistryAuth>, Vec<String>), String> {
    let registries: BTreeSet<String> = registries.iter().map(|r| normalize(r)).collect();
    let mut auth = from_inventory(
        inventory,
        &registries,
        &|name| std::env::var(name).ok(),
        &|p| std::fs::read_to_string(p),
    )?;
    let rest: BTreeSet<String> = registries
        .into_iter()
        .filter(|r| !auth.contains_key(r))
        .collect();
    if rest.is_empty() {
        return Ok((auth, Vec::new()));
    }
    let Some(text) = config_path().and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok((auth, Vec::new()));
    };
    let (docker, warnings) = from_config(&text, &rest, &run_helper);
    auth.extend(docker);
    Ok((auth, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn images_name_their_registry_as_docker_does() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(
            registry_of("10.250.0.1:5000/lab/httpd:latest"),
            "10.250.0.1:5000"
        );
        assert_eq!(registry_of("ghcr.io/o/i@sha256:ab"), "ghcr.io");
        assert_eq!(registry_of("localhost/i"), "localhost");
    }

    #[test]
    fn auths_helpers_and_the_store_give_credentials_in_docker_order() {
        // `dXNlcjpodW50ZXIy` is `user:hunter2`.
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpodW50ZXIy"},
                "r.example:5000": {"username": "u2", "password": "p2"},
                "ghcr.io": {},
                "bad.example": {"auth": "%%%"}
            },
            "credHelpers": {"ghcr.io": "gh"},
            "credsStore": "desktop"
        }"#;
        let helper = |name: &str, server: &str| -> Result<(String, String), String> {
            match (name, server) {
                ("gh", "ghcr.io") => Ok(("gh-user".into(), "gh-secret".into())),
                ("desktop", _) => Err("credentials not found in native keychain".into()),
                _ => Err("unexpected".into()),
            }
        };
        let (auths, warnings) = from_config(
            config,
            &set(&[
                "docker.io",
                "r.example:5000",
                "ghcr.io",
                "bad.example",
                "none.example",
            ]),
            &helper,
        );
        assert_eq!(auths["docker.io"].username, "user");
        assert_eq!(auths["docker.io"].password, "hunter2");
        assert_eq!(auths["r.example:5000"].password, "p2");
        assert_eq!(auths["ghcr.io"].password, "gh-secret");
        assert!(!auths.contains_key("bad.example") && !auths.contains_key("none.example"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("bad.example"), "{warnings:?}");
        // Nothing secret in what may be printed.
        let printed = format!("{auths:?} {warnings:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("gh-secret"),
            "{printed}"
        );
    }

    #[test]
    fn inventory_credentials_come_from_the_environment_a_file_or_the_text() {
        let reg = |user: &str, password: Password| Registry {
            insecure: false,
            username: Some(user.into()),
            password: Some(password),
        };
        let inventory: BTreeMap<String, Registry> = [
            (
                "r.example:5000".to_string(),
                reg("env-user", Password::Env("REG_PW".into())),
            ),
            (
                "https://files.example/".to_string(),
                reg("file-user", Password::File("/secrets/pw".into())),
            ),
            (
                "inline.example".to_string(),
                reg("inline-user", Password::Inline("in-line".into())),
            ),
            (
                "unused.example".to_string(),
                reg("u", Password::Env("UNSET".into())),
            ),
        ]
        .into();
        let env = |name: &str| (name == "REG_PW").then(|| "from-env".to_string());
        let read = |p: &Path| {
            if p == Path::new("/secrets/pw") {
                Ok("from-file\n".to_string())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        };
        let wanted = set(&[
            "r.example:5000",
            "files.example",
            "inline.example",
            "docker.io",
        ]);
        let auth = from_inventory(&inventory, &wanted, &env, &read).expect("credentials");
        assert_eq!(auth["r.example:5000"].password, "from-env");
        assert_eq!(auth["files.example"].username, "file-user");
        assert_eq!(
            auth["files.example"].password, "from-file",
            "the newline is dropped"
        );
        assert_eq!(auth["inline.example"].password, "in-line");
        assert!(!auth.contains_key("unused.example"), "not needed, not read");
        // A needed password that is not there names the variable, and no secret is printed.
        let err =
            from_inventory(&inventory, &set(&["unused.example"]), &env, &read).expect_err("unset");
        assert!(
            err.contains("`UNSET`") && err.contains("`unused.example`"),
            "{err}"
        );
        let printed = format!("{auth:?} {inventory:?}");
        assert!(
            !printed.contains("from-env")
                && !printed.contains("from-file")
                && !printed.contains("in-line"),
            "{printed}"
        );
    }

    #[test]
    fn a_failing_helper_is_a_warning_without_its_output_secret() {
        let helper =
            |_: &str, _: &str| -> Result<(String, String), String> { Err("exit status 1".into()) };
        let (auths, warnings) =
            from_config(r#"{"credsStore": "pass"}"#, &set(&["docker.io"]), &helper);
        assert!(auths.is_empty());
        assert!(
            warnings[0].contains("docker-credential-pass"),
            "{warnings:?}"
        );
    }
}
