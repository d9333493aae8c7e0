//! Which files make up the project, and with which settings: the `docker compose` rules for `-f`,
//! `COMPOSE_FILE`, default file discovery, `--project-directory`, `--env-file`, `--profile`,
//! `COMPOSE_PROFILES` and the project name. Pure: the environment and the file system are passed in.

use std::path::{Path, PathBuf};

use super::dotenv;
use super::source::{absolute, Bounded, FileSource};
use super::Environment;
use crate::limits::{Limit, Limits};

/// The file names `docker compose` looks for, in order of preference.
pub const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// What the user asked for, as `docker compose` spells it on the command line (`-f`, `-p`,
/// `--project-directory`, `--env-file`, `--profile`). The CLI fills it from its flags; the loader
/// never sees the CLI's types.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Flags {
    /// `-f FILE`, in order; relative to the working directory.
    pub files: Vec<PathBuf>,
    /// `-p NAME`.
    pub project_name: Option<String>,
    /// `--project-directory DIR`.
    pub project_directory: Option<PathBuf>,
    /// `--env-file FILE`, in order.
    pub env_files: Vec<PathBuf>,
    /// `--profile NAME`, in order.
    pub profiles: Vec<String>,
    /// `--limit NAME=VALUE`, in order (over the `COMPOSE_FLEET_MAX_*` variables).
    pub limits: Vec<String>,
}

/// Everything [`super::load`] needs to know besides the environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Compose files, absolute, in merge order.
    pub files: Vec<PathBuf>,
    /// Base directory for relative paths.
    pub project_dir: PathBuf,
    /// Files with interpolation variables (the project's `.env`, or the `--env-file`s).
    pub env_files: Vec<PathBuf>,
    /// Whether a missing env file is an error (it is when the user named it).
    pub env_files_required: bool,
    /// Active profiles (`*` enables all).
    pub profiles: Vec<String>,
    /// `-p` or `COMPOSE_PROJECT_NAME`; otherwise the loader uses `name:` or the directory name.
    pub project_name: Option<String>,
    /// The input bounds in force (`--limit`, `COMPOSE_FLEET_MAX_*`); the loader enforces them.
    pub limits: Limits,
}

impl LoadOptions {
    /// Options for one file (tests, examples): its directory is the project directory.
    pub fn for_file(file: impl Into<PathBuf>) -> Self {
        let file = file.into();
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        LoadOptions {
            env_files: vec![dir.join(".env")],
            project_dir: dir,
            files: vec![file],
            ..LoadOptions::default()
        }
    }
}

/// Computes [`LoadOptions`] from the command-line flags, the process environment and the working
/// directory, as `docker compose` does. Variables in the project's `.env` also count as a source
/// of `COMPOSE_*` settings (the process environment wins).
pub fn resolve(
    flags: &Flags,
    env: &Environment,
    cwd: &Path,
    fs: &dyn FileSource,
) -> Result<LoadOptions, String> {
    // Resolved first: even reading `.env` is bounded by them.
    let limits = Limits::resolve(&flags.limits, |k| env.get(k).cloned())?;
    let bounded = Bounded::new(fs, limits.get(Limit::FileBytes));
    let fs: &dyn FileSource = &bounded;
    let explicit_dir = flags.project_directory.as_ref().map(|d| absolute(cwd, d));
    let env_files: Vec<PathBuf> = flags.env_files.iter().map(|f| absolute(cwd, f)).collect();
    let env_files_required = !env_files.is_empty();

    // `.env` is looked up before the files are known, in the project directory or working dir.
    let early_dir = explicit_dir.clone().unwrap_or_else(|| cwd.to_path_buf());
    let dotenv_files = if env_files.is_empty() {
        vec![early_dir.join(".env")]
    } else {
        env_files.clone()
    };
    let settings = settings_env(env, &dotenv_files, fs);
    let get = |k: &str| settings.get(k).filter(|v| !v.is_empty()).cloned();

    let files: Vec<PathBuf> = if !flags.files.is_empty() {
        flags.files.iter().map(|f| absolute(cwd, f)).collect()
    } else if let Some(list) = get("COMPOSE_FILE") {
        let sep = get("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|| ":".into());
        list.split(sep.as_str())
            .filter(|s| !s.is_empty())
            .map(|f| absolute(&early_dir, Path::new(f)))
            .collect()
    } else {
        discover(&early_dir, fs).ok_or_else(|| {
            format!(
                "no compose file found in {} or its parents (looked for {})",
                early_dir.display(),
                DEFAULT_FILES.join(", ")
            )
        })?
    };
    let project_dir = match explicit_dir {
        Some(d) => d,
        None => files
            .first()
            .and_then(|f| f.parent())
            .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf),
    };
    let env_files = if env_files.is_empty() {
        vec![project_dir.join(".env")]
    } else {
        env_files
    };
    // Once the project directory is known, its `.env` is the one that counts for the rest.
    let settings = if project_dir == early_dir {
        settings
    } else {
        settings_env(env, &env_files, fs)
    };
    let get = |k: &str| settings.get(k).filter(|v| !v.is_empty()).cloned();
    let mut profiles: Vec<String> = flags.profiles.clone();
    if profiles.is_empty() {
        if let Some(p) = get("COMPOSE_PROFILES") {
            profiles = p
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
    }
    let project_name = flags
        .project_name
        .clone()
        .or_else(|| get("COMPOSE_PROJECT_NAME"));
    Ok(LoadOptions {
        files,
        project_dir,
        env_files,
        env_files_required,
        profiles,
        project_name,
        limits,
    })
}

/// The process environment over the variables of the env files (ignoring unreadable ones: the
/// loader reports problems in them with their location).
fn settings_env(env: &Environment, files: &[PathBuf], fs: &dyn FileSource) -> Environment {
    let mut out = Environment::new();
    for f in files {
        let Ok(text) = fs.read(f) else { continue };
        let lookup = |k: &str| out.get(k).cloned().or_else(|| env.get(k).cloned());
        if let Ok(vars) = dotenv::parse(&text, &lookup) {
            for (k, v) in vars {
                if let Some(v) = v {
                    out.insert(k, v);
                }
            }
        }
    }
    for (k, v) in env {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Default discovery: the first of [`DEFAULT_FILES`] in `dir` or its nearest parent, plus its
/// `.override` file when one exists beside it.
pub fn discover(dir: &Path, fs: &dyn FileSource) -> Option<Vec<PathBuf>> {
    for d in dir.ancestors() {
        for name in DEFAULT_FILES {
            let path = d.join(name);
            if !fs.is_file(&path) {
                continue;
            }
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "yaml"));
            let mut files = vec![path];
            let other_ext = if ext == "yaml" { "yml" } else { "yaml" };
            for e in [ext, other_ext] {
                let o = d.join(format!("{stem}.override.{e}"));
                if fs.is_file(&o) {
                    files.push(o);
                    break;
                }
            }
            return Some(files);
        }
    }
    None
}

/// A project name as docker compose normalizes it: lowercase, only `[a-z0-9_-]`, starting with a
/// letter or digit.
pub fn normalize_project_name(name: &str) -> String {
    let lower: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lower.trim_start_matches(['_', '-']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::source::MemoryFs;

    fn env(pairs: &[(&str, &str)]) -> Environment {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn discovers_default_file_and_override_in_parents() {
        let fs = MemoryFs::new()
            .with("/p/compose.yaml", "")
            .with("/p/compose.override.yaml", "")
            .with("/p/docker-compose.yml", "");
        let o = resolve(&Flags::default(), &env(&[]), Path::new("/p/sub"), &fs).unwrap();
        assert_eq!(
            o.files,
            vec![
                PathBuf::from("/p/compose.yaml"),
                PathBuf::from("/p/compose.override.yaml")
            ]
        );
        assert_eq!(o.project_dir, PathBuf::from("/p"));
        assert_eq!(o.env_files, vec![PathBuf::from("/p/.env")]);
    }

    #[test]
    fn compose_file_and_profiles_from_env_and_dotenv() {
        let fs = MemoryFs::new().with(
            "/w/.env",
            "COMPOSE_FILE=a.yml;b.yml\nCOMPOSE_PATH_SEPARATOR=;\nCOMPOSE_PROFILES=x, y\nCOMPOSE_PROJECT_NAME=fromdotenv\n",
        );
        let o = resolve(
            &Flags::default(),
            &env(&[("COMPOSE_PROJECT_NAME", "fromenv")]),
            Path::new("/w"),
            &fs,
        )
        .unwrap();
        assert_eq!(
            o.files,
            vec![PathBuf::from("/w/a.yml"), PathBuf::from("/w/b.yml")]
        );
        assert_eq!(o.profiles, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(o.project_name.as_deref(), Some("fromenv"));
    }

    #[test]
    fn flags_win_over_env() {
        let g = Flags {
            files: vec!["x/one.yaml".into(), "/abs/two.yaml".into()],
            project_name: Some("P".into()),
            env_files: vec!["e.env".into()],
            profiles: vec!["debug".into()],
            ..Flags::default()
        };
        let o = resolve(
            &g,
            &env(&[("COMPOSE_FILE", "nope.yaml"), ("COMPOSE_PROFILES", "other")]),
            Path::new("/w"),
            &MemoryFs::new(),
        )
        .unwrap();
        assert_eq!(
            o.files,
            vec![
                PathBuf::from("/w/x/one.yaml"),
                PathBuf::from("/abs/two.yaml")
            ]
        );
        assert_eq!(o.project_dir, PathBuf::from("/w/x"));
        assert_eq!(o.env_files, vec![PathBuf::from("/w/e.env")]);
        assert!(o.env_files_required);
        assert_eq!(o.profiles, vec!["debug".to_string()]);
        assert_eq!(o.project_name.as_deref(), Some("P"));
    }

    #[test]
    fn the_project_directory_dotenv_sets_profiles_and_name() {
        let fs = MemoryFs::new().with("/w/sub/compose.yaml", "").with(
            "/w/sub/.env",
            "COMPOSE_PROFILES=debug\nCOMPOSE_PROJECT_NAME=sub\n",
        );
        let g = Flags {
            files: vec!["sub/compose.yaml".into()],
            ..Flags::default()
        };
        let o = resolve(&g, &env(&[]), Path::new("/w"), &fs).unwrap();
        assert_eq!(o.profiles, vec!["debug".to_string()]);
        assert_eq!(o.project_name.as_deref(), Some("sub"));
        assert_eq!(o.env_files, vec![PathBuf::from("/w/sub/.env")]);
    }

    #[test]
    fn no_file_is_a_clear_error() {
        let e = resolve(
            &Flags::default(),
            &env(&[]),
            Path::new("/w"),
            &MemoryFs::new(),
        )
        .unwrap_err();
        assert!(e.contains("no compose file found"), "{e}");
    }

    #[test]
    fn project_names_are_normalized() {
        assert_eq!(normalize_project_name("My App.v2"), "myappv2");
        assert_eq!(normalize_project_name("_x-Y_1"), "x-y_1");
    }
}
