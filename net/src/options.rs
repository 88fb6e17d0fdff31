//! Layered options: a daemon's TOML file under its command-line flags, merged key by key.
//!
//! Both daemons keep every option in one struct that clap fills from flags and serde from
//! the file (each TOML key is the flag's name without the dashes). [`layer`] merges the two
//! without a list of fields: the flags are serialised to a TOML table, and each key the
//! command line set replaces the file's. A flag counts as set when it has a value: an
//! `Option` that is `Some`, a switch that is on, a repeatable flag given at least once.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why options could not be layered.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key or value these options do not take.
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's error (with line and column).
        source: toml::de::Error,
    },
    /// A flag's value has no TOML form (a number TOML cannot hold, a path that is not UTF-8).
    #[error("a command-line value cannot be merged with the config file: {0}")]
    Flags(#[from] toml::ser::Error),
    /// The merged options do not deserialise (a flag's value refused by the file's parser).
    #[error("merging the command line over config file {path}: {source}")]
    Merge {
        /// The file.
        path: String,
        /// The deserialiser's error.
        source: toml::de::Error,
    },
}

/// A `--flag HOST:PORT` option that names no address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not `HOST:PORT`, or the host does not resolve.
    #[error("{flag} {address:?} is not HOST:PORT")]
    NotHostPort {
        /// The option's flag.
        flag: String,
        /// What it was given.
        address: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The host resolves to no address.
    #[error("{flag} {address:?} resolves to no address")]
    NoAddress {
        /// The option's flag.
        flag: String,
        /// What it was given.
        address: String,
    },
}

/// The host of `HOST:PORT`, an IPv6 literal's brackets removed: the name a peer's certificate
/// is checked against unless another is given.
pub fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(['[', ']'])
}

/// The first address `address` (the value of `flag`, `HOST:PORT`) resolves to.
pub fn resolve(flag: &str, address: &str) -> Result<std::net::SocketAddr, AddressError> {
    use std::net::ToSocketAddrs;
    let named = || (flag.to_string(), address.to_string());
    let mut addresses = address.to_socket_addrs().map_err(|source| {
        let (flag, address) = named();
        AddressError::NotHostPort { flag, address, source }
    })?;
    addresses.next().ok_or_else(|| {
        let (flag, address) = named();
        AddressError::NoAddress { flag, address }
    })
}

/// `flags` over the options of the TOML file at `file` (if any): a flag set on the command line
/// wins, the file supplies the rest, and defaults are left to the caller's resolution.
pub fn layer<T: Serialize + DeserializeOwned>(flags: T, file: Option<&Path>) -> Result<T, OptionsError> {
    let Some(path) = file else { return Ok(flags) };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| OptionsError::Read { path: shown.clone(), source })?;
    // Parsed into the options first, so that an unknown key or a bad value is reported
    // with the file's line and column.
    toml::from_str::<T>(&text).map_err(|source| OptionsError::Parse { path: shown.clone(), source })?;
    let mut merged: toml::Table =
        toml::from_str(&text).map_err(|source| OptionsError::Parse { path: shown.clone(), source })?;
    let toml::Value::Table(given) = toml::Value::try_from(&flags)? else {
        return Ok(flags);
    };
    merged.extend(given.into_iter().filter(|(_, value)| is_set(value)));
    toml::Value::Table(merged).try_into().map_err(|source| OptionsError::Merge { path: shown, source })
}

/// Whether a flag's serialised value says it was given (switches are off and repeatable
/// flags empty unless given; an unset `Option` is not serialised at all).
fn is_set(value: &toml::Value) -> bool {
    match value {
        toml::Value::Boolean(on) => *on,
        toml::Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Example {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
        rounds: Option<u64>,
        rate: Option<f32>,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        names: Vec<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn flags_win_and_the_file_fills_the_rest() {
        let toml = file("listen = \"0.0.0.0:1\"\nrounds = 5\nfollow = true\nnames = [\"a\"]\nrate = 0.1\n");
        let flags = Example { rounds: Some(7), ..Example::default() };
        let merged = layer(flags, Some(toml.path())).unwrap();
        let expected = Example {
            listen: Some("0.0.0.0:1".into()),
            rounds: Some(7),
            rate: Some(0.1),
            follow: true,
            names: vec!["a".into()],
        };
        assert_eq!(merged, expected);
        let flags = Example { names: vec!["b".into()], rate: Some(2.5), ..Example::default() };
        let merged = layer(flags, Some(toml.path())).unwrap();
        assert_eq!((merged.names, merged.rate, merged.rounds), (vec!["b".to_string()], Some(2.5), Some(5)));
        let flags = Example { rounds: Some(3), ..Example::default() };
        assert_eq!(layer(flags, None).unwrap().rounds, Some(3));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_line() {
        let unknown = file("listen = \"x\"\nno-such-key = 1\n");
        let error = layer(Example::default(), Some(unknown.path())).unwrap_err().to_string();
        assert!(error.contains(&unknown.path().display().to_string()) && error.contains("no-such-key"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let wrong_type = file("rounds = \"many\"\n");
        assert!(layer(Example::default(), Some(wrong_type.path())).is_err());
        let missing = layer(Example::default(), Some(Path::new("/nonexistent/flotilla.toml"))).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/flotilla.toml"), "{missing}");
        let too_big = Example { rounds: Some(u64::MAX), ..Example::default() };
        assert!(matches!(layer(too_big, Some(unknown.path())), Err(OptionsError::Parse { .. })));
        let valid = file("rounds = 1\n");
        let too_big = Example { rounds: Some(u64::MAX), ..Example::default() };
        assert!(matches!(layer(too_big, Some(valid.path())), Err(OptionsError::Flags(_))));
    }
}
