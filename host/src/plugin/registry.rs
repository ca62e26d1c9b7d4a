//! Finding plugins on disk: a plugin named `NAME` is the file `NAME.wasm` in the plugins folder.

use std::path::{Path, PathBuf};

use super::error::{Cause, PluginError};

/// Checks a plugin name: lowercase ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit, at most 64 bytes. This rules out path traversal (`../x`), absolute paths and
/// hidden files by construction.
pub fn validate_plugin_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 64 || !first_ok || !name.chars().all(valid_char) {
        return Err(format!(
            "invalid plugin name {name:?}: use lowercase letters, digits, '-' and '_' (e.g. `dedupe`), at most 64 characters"
        ));
    }
    Ok(())
}

/// The path of plugin `name` in `dir`, after validating the name.
pub fn plugin_path(dir: &Path, name: &str) -> Result<PathBuf, PluginError> {
    validate_plugin_name(name).map_err(|m| PluginError {
        plugin: name.to_owned(),
        stage: None,
        cause: Cause::Load(m),
    })?;
    Ok(dir.join(format!("{name}.wasm")))
}

/// The plugins folder when none is given: `$PIPEHOST_PLUGINS_DIR`, else `plugins/dist` in the
/// current directory if it exists, else the `plugins/dist` of the source tree this binary was
/// built from (where `scripts/build-plugins.sh` puts them).
pub fn default_plugins_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIPEHOST_PLUGINS_DIR") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("plugins/dist");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_plugins_folder() {
        for bad in ["../etc/passwd", "..", "/abs", "a/b", ".hidden", "", "Dedupe", "a b", "x.wasm"] {
            assert!(validate_plugin_name(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["dedupe", "tone-zh", "my_plugin2", "9lives"] {
            assert!(validate_plugin_name(good).is_ok(), "{good:?} should be accepted");
        }
        let err = plugin_path(Path::new("/p"), "../x").unwrap_err();
        assert!(err.to_string().contains("invalid plugin name"), "{err}");
    }
}
