//! Container log files: JSON lines written by the shim, size-rotated, read back by `Logs`.
//!
//! One record per line: `{"time_ms":…,"stream":"stdout","line":"…"}`. The current file is
//! `container.log`; when a record would take it past the size limit it becomes `container.log.1`
//! (older ones shift up) and the oldest beyond the file count is deleted. A line longer than
//! [`MAX_LINE`] is split into several records so the shim's buffer stays bounded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proto::Stream;

pub const LOG_FILE: &str = "container.log";
pub const MAX_LINE: usize = 16 * 1024;
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub time_ms: u64,
    pub stream: Stream,
    pub line: String,
}

/// The path of rotated file `n` (0 is the current file).
pub fn log_path(dir: &Path, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(LOG_FILE)
    } else {
        dir.join(format!("{LOG_FILE}.{n}"))
    }
}

/// The shim's writer.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl LogWriter {
    pub fn open(dir: &Path, max_bytes: u64, max_files: u32) -> io::Result<LogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(dir, 0))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1),
            max_files: max_files.max(1),
        })
    }

    pub fn write(&mut self, time_ms: u64, stream: Stream, line: &[u8]) -> io::Result<()> {
        let record = Record {
            time_ms,
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
        };
        let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let _ = fs::remove_file(log_path(&self.dir, self.max_files - 1));
        for n in (0..self.max_files - 1).rev() {
            let from = log_path(&self.dir, n);
            if from.exists() {
                fs::rename(&from, log_path(&self.dir, n + 1))?;
            }
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.dir, 0))?;
        self.size = 0;
        Ok(())
    }
}

/// Splits a pipe's bytes into lines, holding a partial line until its newline arrives.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `bytes`, calling `emit` for each complete line (without its newline).
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                emit(&rest[..i]);
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                emit(&self.partial);
                self.partial.clear();
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE {
            let tail = self.partial.split_off(MAX_LINE);
            emit(&self.partial);
            self.partial = tail;
        }
    }

    /// At end of stream: the last line if it had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// Every record of a container, oldest first (rotated files first). Unparsable lines (a torn
/// last line after a crash) are skipped.
pub fn read_all(dir: &Path, max_files: u32) -> Vec<Record> {
    let mut out = Vec::new();
    for n in (0..max_files.max(1)).rev() {
        if let Ok(f) = File::open(log_path(dir, n)) {
            read_records(BufReader::new(f), &mut out);
        }
    }
    out
}

pub fn read_records(reader: impl BufRead, out: &mut Vec<Record>) {
    for line in reader.lines().map_while(Result::ok) {
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_holds_partial_lines_and_bounds_long_ones() {
        let mut s = LineSplitter::default();
        let mut got: Vec<String> = Vec::new();
        s.feed(b"a\nb", |l| got.push(String::from_utf8_lossy(l).into()));
        s.feed(b"c\n\nd", |l| got.push(String::from_utf8_lossy(l).into()));
        s.finish(|l| got.push(String::from_utf8_lossy(l).into()));
        assert_eq!(got, ["a", "bc", "", "d"]);
        let mut n = 0;
        s.feed(&vec![b'x'; MAX_LINE * 2 + 3], |l| {
            assert_eq!(l.len(), MAX_LINE);
            n += 1
        });
        assert_eq!(n, 2);
    }

    #[test]
    fn rotation_keeps_max_files_and_reads_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::open(dir.path(), 200, 3).expect("open");
        for i in 0..40u64 {
            w.write(i, Stream::Stdout, format!("line {i}").as_bytes())
                .expect("write");
        }
        assert!(log_path(dir.path(), 2).exists());
        assert!(!log_path(dir.path(), 3).exists());
        for n in 0..3 {
            let size = fs::metadata(log_path(dir.path(), n)).expect("meta").len();
            assert!(size <= 200, "file {n} has {size} bytes");
        }
        let recs = read_all(dir.path(), 3);
        assert!(recs.len() < 40, "old records were rotated away");
        assert_eq!(recs.last().map(|r| r.line.as_str()), Some("line 39"));
        assert!(recs.windows(2).all(|w| w[0].time_ms + 1 == w[1].time_ms));
    }
}
