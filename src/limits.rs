//! Every bound on input, stated in one place: how many bytes are read from a file, how many
//! replicas and hosts a project and a fleet may have, how deep YAML may nest, how long names are.
//!
//! Each limit has a default with about 100× headroom over the largest real project we know of,
//! and can be raised by an environment variable (`COMPOSE_FLEET_MAX_*`) or the global flag
//! `--limit NAME=VALUE`. Limits are checked before memory is spent: going over one is a user
//! error that names the file and location, the limit and how to raise it — never an abort.
//!
//! Pure: [`Limits::from_lookup`] takes a lookup function, so the CLI passes the process
//! environment and tests pass a map.

use std::fmt;

/// One bound: its name (as `--limit NAME=…` spells it), its environment variable, a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// Bytes read from any one input file (compose file, env file, inventory, secret, config).
    FileBytes,
    /// Replicas of one service (`deploy.replicas`, `scale`).
    ReplicasPerService,
    /// Replicas of all services of a project together.
    ReplicasTotal,
    /// Hosts in one inventory (after range expansion).
    Hosts,
    /// Nesting depth of YAML collections.
    Depth,
    /// YAML events replayed through aliases (the alias-bomb guard).
    AliasEvents,
    /// Length of a name: service, network, volume, secret, config, host, group, label key.
    NameLength,
    /// Length of an image reference.
    ImageRefLength,
}

impl Limit {
    /// Every limit, in the order the README documents them.
    pub const ALL: [Limit; 8] = [
        Limit::FileBytes,
        Limit::ReplicasPerService,
        Limit::ReplicasTotal,
        Limit::Hosts,
        Limit::Depth,
        Limit::AliasEvents,
        Limit::NameLength,
        Limit::ImageRefLength,
    ];

    /// The name used by `--limit NAME=VALUE`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::FileBytes => "file-bytes",
            Limit::ReplicasPerService => "replicas-per-service",
            Limit::ReplicasTotal => "replicas-total",
            Limit::Hosts => "hosts",
            Limit::Depth => "depth",
            Limit::AliasEvents => "alias-events",
            Limit::NameLength => "name-length",
            Limit::ImageRefLength => "image-ref-length",
        }
    }

    /// The environment variable that raises it.
    pub fn env_var(self) -> &'static str {
        match self {
            Limit::FileBytes => "COMPOSE_FLEET_MAX_FILE_BYTES",
            Limit::ReplicasPerService => "COMPOSE_FLEET_MAX_REPLICAS_PER_SERVICE",
            Limit::ReplicasTotal => "COMPOSE_FLEET_MAX_REPLICAS_TOTAL",
            Limit::Hosts => "COMPOSE_FLEET_MAX_HOSTS",
            Limit::Depth => "COMPOSE_FLEET_MAX_DEPTH",
            Limit::AliasEvents => "COMPOSE_FLEET_MAX_ALIAS_EVENTS",
            Limit::NameLength => "COMPOSE_FLEET_MAX_NAME_LENGTH",
            Limit::ImageRefLength => "COMPOSE_FLEET_MAX_IMAGE_REF_LENGTH",
        }
    }

    /// The default value.
    pub fn default_value(self) -> u64 {
        match self {
            // The largest real compose file we know is ~60 KB; inventories of 100k hosts ~10 MB.
            Limit::FileBytes => 64 << 20,
            Limit::ReplicasPerService => 10_000,
            Limit::ReplicasTotal => 100_000,
            Limit::Hosts => 100_000,
            Limit::Depth => 32,
            Limit::AliasEvents => 1_000_000,
            Limit::NameLength => 255,
            Limit::ImageRefLength => 4096,
        }
    }

    /// What it bounds, for messages and `--help`.
    pub fn what(self) -> &'static str {
        match self {
            Limit::FileBytes => "bytes read from one file",
            Limit::ReplicasPerService => "replicas of one service",
            Limit::ReplicasTotal => "replicas in one project",
            Limit::Hosts => "hosts in one inventory",
            Limit::Depth => "levels of YAML nesting",
            Limit::AliasEvents => "YAML events expanded through aliases",
            Limit::NameLength => "characters in a name",
            Limit::ImageRefLength => "characters in an image reference",
        }
    }

    /// The sentence that tells the user how to raise it, for a `hint:`.
    pub fn hint(self, value: u64) -> String {
        format!(
            "compose-fleet allows at most {value} {}; raise the limit with `--limit {}=N` or {}=N",
            self.what(),
            self.name(),
            self.env_var()
        )
    }

    /// Looks a limit up by its `--limit` name.
    pub fn by_name(name: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.name() == name)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limits in force for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    values: [u64; Limit::ALL.len()],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            values: Limit::ALL.map(Limit::default_value),
        }
    }
}

impl Limits {
    /// The value in force for `limit`.
    pub fn get(&self, limit: Limit) -> u64 {
        self.values[limit as usize]
    }

    /// The value as a `usize` (saturating on 32-bit targets).
    pub fn get_usize(&self, limit: Limit) -> usize {
        usize::try_from(self.get(limit)).unwrap_or(usize::MAX)
    }

    /// Sets one limit.
    pub fn set(&mut self, limit: Limit, value: u64) {
        self.values[limit as usize] = value;
    }

    /// The defaults, overridden by the `COMPOSE_FLEET_MAX_*` variables `lookup` returns.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
        let mut limits = Limits::default();
        for limit in Limit::ALL {
            if let Some(raw) = lookup(limit.env_var()) {
                let value = parse_value(&raw).map_err(|e| format!("{}: {e}", limit.env_var()))?;
                limits.set(limit, value);
            }
        }
        Ok(limits)
    }

    /// The limits for one command: the defaults, then the `COMPOSE_FLEET_MAX_*` variables `lookup`
    /// returns, then the `--limit NAME=VALUE` arguments (the command line wins).
    pub fn resolve(
        args: &[String],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Limits, String> {
        let mut limits = Limits::from_lookup(lookup)?;
        for arg in args {
            limits.apply_arg(arg)?;
        }
        Ok(limits)
    }

    /// Applies one `--limit NAME=VALUE` argument.
    pub fn apply_arg(&mut self, arg: &str) -> Result<(), String> {
        let Some((name, raw)) = arg.split_once('=') else {
            return Err(format!("`--limit {arg}`: expected NAME=VALUE"));
        };
        let Some(limit) = Limit::by_name(name.trim()) else {
            let names: Vec<&str> = Limit::ALL.iter().map(|l| l.name()).collect();
            return Err(format!(
                "`--limit {arg}`: no limit named `{name}`; the limits are {}",
                names.join(", ")
            ));
        };
        let value = parse_value(raw).map_err(|e| format!("`--limit {arg}`: {e}"))?;
        self.set(limit, value);
        Ok(())
    }
}

/// A positive integer, with `_` allowed as a separator (`1_000_000`).
fn parse_value(raw: &str) -> Result<u64, String> {
    let digits: String = raw.trim().chars().filter(|c| *c != '_').collect();
    match digits.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("`{raw}` is not a positive whole number")),
        Ok(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_a_distinct_name_and_variable() {
        let mut names: Vec<_> = Limit::ALL.iter().map(|l| l.name()).collect();
        let mut vars: Vec<_> = Limit::ALL.iter().map(|l| l.env_var()).collect();
        names.sort();
        names.dedup();
        vars.sort();
        vars.dedup();
        assert_eq!(names.len(), Limit::ALL.len());
        assert_eq!(vars.len(), Limit::ALL.len());
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn the_environment_and_flags_raise_limits() {
        let limits = Limits::from_lookup(|k| {
            (k == "COMPOSE_FLEET_MAX_HOSTS").then(|| "200_000".to_string())
        })
        .unwrap();
        assert_eq!(limits.get(Limit::Hosts), 200_000);
        assert_eq!(limits.get(Limit::Depth), 32);
        let mut limits = limits;
        limits.apply_arg("replicas-per-service=5").unwrap();
        assert_eq!(limits.get(Limit::ReplicasPerService), 5);
    }

    #[test]
    fn flags_win_over_the_environment() {
        let limits = Limits::resolve(&["file-bytes=1_024".to_string()], |k| {
            (k == "COMPOSE_FLEET_MAX_FILE_BYTES").then(|| "10".to_string())
        })
        .unwrap();
        assert_eq!(limits.get(Limit::FileBytes), 1024);
    }

    #[test]
    fn bad_values_and_names_are_refused_with_the_choices() {
        assert!(Limits::from_lookup(|_| Some("lots".into())).is_err());
        let mut limits = Limits::default();
        let err = limits.apply_arg("replica=5").unwrap_err();
        assert!(err.contains("replicas-per-service"), "{err}");
        assert!(limits.apply_arg("hosts=0").is_err());
        assert!(limits.apply_arg("hosts").is_err());
    }
}
