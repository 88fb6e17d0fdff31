//! The local stream, read on its own thread: a CSV file (optionally followed like
//! `tail -f`) or stdin, parsed row by row and handed to the learner through a bounded channel.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use flotilla_learner::data::{CsvStream, DataError, Sample};
use tokio_util::sync::CancellationToken;

/// How often a followed file is polled for appended rows.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// What the reader thread sends.
pub enum Row {
    /// A parsed sample.
    Sample(Sample),
    /// The source ended (not followed) — no more rows will come.
    End,
    /// The source is malformed or unreadable; the daemon stops with this error.
    Failed(DataError),
}

/// A file reader that never reports end-of-file: at the end it waits for appended bytes,
/// until `stop` is cancelled (then it reports end-of-file).
struct Follow {
    file: File,
    stop: CancellationToken,
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || self.stop.is_cancelled() {
                return Ok(n);
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// Opens `path` (`-` for stdin) and starts the reader thread; rows come out of the receiver.
/// The first `skip` rows are passed over (a resumed daemon already learnt from them).
pub fn spawn(
    path: &Path,
    follow: bool,
    skip: u64,
    stop: CancellationToken,
) -> anyhow::Result<(Receiver<Row>, JoinHandle<()>)> {
    let source: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        if follow { Box::new(Follow { file, stop: stop.clone() }) } else { Box::new(file) }
    };
    let (sender, receiver) = sync_channel(1024);
    let handle = std::thread::Builder::new()
        .name("flotilla-source".into())
        .spawn(move || read_rows(BufReader::new(source), skip, &sender, &stop))
        .context("starting the source thread")?;
    Ok((receiver, handle))
}

fn read_rows(source: impl Read, skip: u64, sender: &SyncSender<Row>, stop: &CancellationToken) {
    let mut stream = match CsvStream::new(source, None) {
        Ok(stream) => stream,
        Err(error) => {
            let _ = sender.send(Row::Failed(error));
            return;
        }
    };
    let mut skipped = 0;
    while !stop.is_cancelled() {
        let row = match stream.next_sample() {
            Ok(Some(_)) if skipped < skip => {
                skipped += 1;
                continue;
            }
            Ok(Some(sample)) => Row::Sample(sample),
            Ok(None) => Row::End,
            Err(error) => Row::Failed(error),
        };
        let last = !matches!(row, Row::Sample(_));
        if sender.send(row).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn next_sample(rows: &Receiver<Row>) -> Sample {
        match rows.recv_timeout(Duration::from_secs(5)) {
            Ok(Row::Sample(sample)) => sample,
            Ok(Row::End) => panic!("the stream ended"),
            Ok(Row::Failed(error)) => panic!("{error}"),
            Err(error) => panic!("no row: {error}"),
        }
    }

    #[test]
    fn a_followed_file_yields_appended_rows_and_skips_learnt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.csv");
        std::fs::write(&path, "a,b,label\n1,2,0\n3,4,1\n5,6,0\n").unwrap();
        let stop = CancellationToken::new();
        let (rows, handle) = spawn(&path, true, 1, stop.clone()).unwrap();
        assert_eq!(next_sample(&rows).features, vec![3.0, 4.0]);
        assert_eq!(next_sample(&rows).line, 4);
        assert!(rows.recv_timeout(Duration::from_millis(300)).is_err(), "nothing new yet");
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"7,8,1\n").unwrap();
        assert_eq!(next_sample(&rows).features, vec![7.0, 8.0]);
        stop.cancel();
        handle.join().unwrap();
    }

    #[test]
    fn a_plain_file_ends_and_a_bad_row_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.csv");
        std::fs::write(&path, "a,label\n1,0\n2,x\n").unwrap();
        let (rows, _) = spawn(&path, false, 0, CancellationToken::new()).unwrap();
        assert_eq!(next_sample(&rows).label, 0);
        assert!(matches!(
            rows.recv_timeout(Duration::from_secs(5)),
            Ok(Row::Failed(DataError::BadLabel { line: 3, .. }))
        ));
        std::fs::write(&path, "a,label\n1,0\n").unwrap();
        let (rows, _) = spawn(&path, false, 0, CancellationToken::new()).unwrap();
        next_sample(&rows);
        assert!(matches!(rows.recv_timeout(Duration::from_secs(5)), Ok(Row::End)));
    }
}
