//! A tree of coordinators on loopback (`--topology AxB`): a root, `A` edge aggregators
//! (`flotilla-coordinator --parent`) and `B` clients behind each.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// `A` aggregators with `B` clients each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Edge aggregators under the root.
    pub aggregators: usize,
    /// Clients behind each aggregator.
    pub per_aggregator: usize,
}

impl Topology {
    /// Clients in all.
    pub fn clients(&self) -> usize {
        self.aggregators * self.per_aggregator
    }

    /// The aggregator client `index` (of all) joins.
    pub fn aggregator_of(&self, index: usize) -> usize {
        index / self.per_aggregator.max(1)
    }

    /// Writes the root's `--aggregator-tokens-file` and one `--parent-token-file` per
    /// aggregator (one token each: a second session with a token replaces the first) into
    /// `dir`; returns the root's file and the aggregators'.
    pub fn write_tokens(&self, dir: &Path) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |path: &Path, text: &str| -> anyhow::Result<()> {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", path.display()))
        };
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tokens: Vec<String> =
            (0..self.aggregators).map(|a| format!("aggregator-{a}-{:x}", seed ^ (a as u128 * 0x9e37_79b9))).collect();
        let root = dir.join("aggregators.tokens");
        write(&root, &(tokens.join("\n") + "\n"))?;
        let edges = tokens
            .iter()
            .enumerate()
            .map(|(a, token)| {
                let path = dir.join(format!("aggregator-{a}.token"));
                write(&path, &format!("{token}\n")).map(|()| path)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((root, edges))
    }
}

impl std::str::FromStr for Topology {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let Some((a, b)) = text.split_once(['x', 'X']) else {
            bail!("--topology {text:?}: expected AGGREGATORSxCLIENTS, e.g. 4x25");
        };
        let number = |part: &str| -> anyhow::Result<usize> {
            part.trim().parse::<usize>().ok().filter(|n| *n > 0).with_context(|| {
                format!("--topology {text:?}: {part:?} is not a positive number (AGGREGATORSxCLIENTS, e.g. 4x25)")
            })
        };
        Ok(Self { aggregators: number(a)?, per_aggregator: number(b)? })
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.aggregators, self.per_aggregator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_places_clients() {
        let topology: Topology = "4x25".parse().unwrap();
        assert_eq!(topology, Topology { aggregators: 4, per_aggregator: 25 });
        assert_eq!(topology.clients(), 100);
        assert_eq!((topology.aggregator_of(0), topology.aggregator_of(24), topology.aggregator_of(25)), (0, 0, 1));
        for bad in ["4", "0x3", "ax2", "3x", "-1x2"] {
            assert!(bad.parse::<Topology>().is_err(), "{bad}");
        }
    }
}
