//! Token files, read the same way by the coordinator (the tokens it accepts) and the clients
//! (the token they present): one token per line, surrounding blanks trimmed, blank lines and
//! lines starting with `#` skipped. Each token is one identity: the coordinator keeps
//! `--sessions-per-identity` live sessions per token, so a fleet of virtual clients takes
//! one line per client (client `i` presents line `i mod n`).

use std::path::Path;

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("token file {0} holds no token")]
    Empty(String),
}

/// The tokens of the file at `path`, in order; at least one.
pub fn read_token_file(path: &Path) -> Result<Vec<String>, TokenFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TokenFileError::Read { path: path.display().to_string(), source })?;
    let tokens = token_lines(&text);
    if tokens.is_empty() {
        return Err(TokenFileError::Empty(path.display().to_string()));
    }
    Ok(tokens)
}

/// The tokens of a token file's text, in order.
pub fn token_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(String::from).collect()
}

/// The token of virtual client `index` among `tokens`: line `index mod n`.
pub fn token_for(tokens: &[String], index: u64) -> Option<String> {
    let n = u64::try_from(tokens.len()).ok().filter(|n| *n > 0)?;
    usize::try_from(index % n).ok().and_then(|i| tokens.get(i)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_comments_skipped_and_clients_take_turns() {
        let tokens = token_lines("# fleet\n alpha \n\nbeta\n#gamma\n");
        assert_eq!(tokens, vec!["alpha".to_string(), "beta".to_string()]);
        assert_eq!(token_for(&tokens, 0).as_deref(), Some("alpha"));
        assert_eq!(token_for(&tokens, 3).as_deref(), Some("beta"));
        assert_eq!(token_for(&[], 3), None);
    }
}
