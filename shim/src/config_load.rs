//! Finding, reading and merging Kata's `configuration.toml` and its
//! `config.d/` drop-ins, then validating the result
//! ([`crate::config_validate`]). Lookup order: `--config`,
//! `KATA_CONF_FILE`, then [`SYSTEM_CONFIG_PATHS`]. Kept apart from the
//! types of [`crate::config`] so that the modules depend one way:
//! config ← config_validate ← config_load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{
    ConfigError, Configuration, Flavour, LoadedConfig, CONF_ENV, SYSTEM_CONFIG_PATHS,
};

/// Chooses the configuration file: `explicit` (`--config`), then `env`
/// (`KATA_CONF_FILE`), then the first of `system` that exists. A file named
/// explicitly or by the environment must exist.
pub fn find_config(
    explicit: Option<&Path>,
    env: Option<&Path>,
    system: &[PathBuf],
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit.or(env) {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ConfigError::NotFound(p.display().to_string()))
        };
    }
    system.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = system.iter().map(|p| p.display().to_string()).collect();
        ConfigError::NotFound(tried.join(", "))
    })
}

/// Finds the file with the standard lookup order ([`CONF_ENV`],
/// [`SYSTEM_CONFIG_PATHS`]) and loads it.
pub fn load_default(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_default_select(explicit, None)
}

/// [`load_default`], choosing the `[hypervisor.SELECT]` section when given
/// (see [`load_select`]).
pub fn load_default_select(
    explicit: Option<&Path>,
    select: Option<Flavour>,
) -> Result<LoadedConfig, ConfigError> {
    let env = std::env::var_os(CONF_ENV).map(PathBuf::from);
    let system: Vec<PathBuf> = SYSTEM_CONFIG_PATHS.iter().map(PathBuf::from).collect();
    let file = find_config(explicit, env.as_deref(), &system)?;
    load_select(&file, select)
}

fn read_text(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

fn parse_toml(file: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        reason: e.to_string().trim().replace('\n', " "),
    })
}

/// Merges `over` into `base`, recording in `origin` which file set each leaf.
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in over {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &key, file, origin),
            (_, toml::Value::Table(o)) => {
                let mut t = toml::Table::new();
                merge(&mut t, o, &key, file, origin);
                base.insert(k, toml::Value::Table(t));
            }
            (_, v) => {
                origin.insert(key, file.to_path_buf());
                base.insert(k, v);
            }
        }
    }
}

/// The `config.d/*.toml` files beside `file`, in alphabetical order.
pub fn drop_ins(file: &Path) -> Vec<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new(".")).join("config.d");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads `file` and its drop-ins, then validates. The file must have
/// exactly one `[hypervisor.*]` section.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
    load_select(file, None)
}

/// Loads `file` and its drop-ins, then validates. With `select`, that
/// `[hypervisor.*]` section must exist and is the one used (others are
/// ignored, not validated); without it there must be exactly one.
pub fn load_select(file: &Path, select: Option<Flavour>) -> Result<LoadedConfig, ConfigError> {
    let main = read_text(file)?;
    let mut extra = Vec::new();
    for d in drop_ins(file) {
        let text = read_text(&d)?;
        extra.push((d, text));
    }
    load_texts(file, &main, &extra, select)
}

/// [`load_select`] on texts already read: `main` is the text of `file`,
/// `extra` the drop-ins (path and text) in the order they apply.
pub(crate) fn load_texts(
    file: &Path,
    main: &str,
    extra: &[(PathBuf, String)],
    select: Option<Flavour>,
) -> Result<LoadedConfig, ConfigError> {
    let mut origin = BTreeMap::new();
    let mut merged = toml::Table::new();
    merge(&mut merged, parse_toml(file, main)?, "", file, &mut origin);
    for (d, text) in extra {
        merge(&mut merged, parse_toml(d, text)?, "", d, &mut origin);
    }
    let extra: Vec<PathBuf> = extra.iter().map(|(d, _)| d.clone()).collect();
    let config: Configuration =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                file: extra.last().cloned().unwrap_or_else(|| file.to_path_buf()),
                reason: e.message().to_string(),
            })?;
    crate::config_validate::validate(file, extra, config, &origin, select)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
