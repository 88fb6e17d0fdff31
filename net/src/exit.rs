//! How a binary ends on an error: one line on stderr, `error: ` and the error's chain of
//! context, each message once.
//!
//! An error type may both print its source in its own message (`"parsing {path}: {0}"`)
//! and return it as its `source()`; anyhow's `{:#}` then prints that text twice, and its
//! `Debug` (what `main` returning `Result` prints) lists it again under "Caused by", with a
//! backtrace when `RUST_BACKTRACE` is set. [`error_chain`] drops a cause whose text its
//! parent's message already holds.

/// `error`'s messages joined by `": "`, outermost first, leaving out a cause whose text the
/// message before it already contains (compared with its immediate parent, so that a cause
/// left out is still checked against its own source).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut parent: Option<String> = None;
    for cause in error.chain() {
        let message = cause.to_string();
        let repeated = parent.as_deref().is_some_and(|parent| parent.contains(message.trim()));
        if !repeated && !message.trim().is_empty() {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        parent = Some(message);
    }
    text
}

/// Prints `error: ` and [`error_chain`] on stderr.
pub fn print_error(error: &anyhow::Error) {
    eprintln!("error: {}", error_chain(error));
}

/// The process exit status of a command's result, printing its error first
/// ([`print_error`]).
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            print_error(&error);
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("line 1: bad value")]
        Bad,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("parsing config.toml: {0}")]
        Parse(#[from] Inner),
        #[error("parsing config.toml")]
        Quiet(#[source] Inner),
    }

    #[test]
    fn a_cause_that_its_parent_already_prints_is_printed_once() {
        let error = Err::<(), _>(Outer::Parse(Inner::Bad)).context("configuration").unwrap_err();
        assert_eq!(format!("{error:#}"), "configuration: parsing config.toml: line 1: bad value: line 1: bad value");
        assert_eq!(error_chain(&error), "configuration: parsing config.toml: line 1: bad value");
    }

    #[test]
    fn a_cause_that_its_parent_does_not_print_is_kept() {
        let error = Err::<(), _>(Outer::Quiet(Inner::Bad)).context("configuration").unwrap_err();
        assert_eq!(error_chain(&error), "configuration: parsing config.toml: line 1: bad value");
        let error = anyhow::anyhow!("bad value").context("line 1").context("reading data.csv");
        assert_eq!(error_chain(&error), "reading data.csv: line 1: bad value");
    }

    #[test]
    fn each_cause_is_compared_with_its_own_parent() {
        // The middle cause is left out (the outer message holds it); its own source is not in
        // it, so it stays.
        let inner = anyhow::anyhow!("disk full").context("writing x");
        let error = inner.context("saving: writing x");
        assert_eq!(error_chain(&error), "saving: writing x: disk full");
    }
}
