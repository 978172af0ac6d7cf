//! The offline spool: every report is written here (atomically, fsynced) before it is sent,
//! and removed only once the server acknowledged it. So a report the agent's disk accepted
//! survives agent restarts and server outages, and reports go out in sequence order.
//! Bounded: past `max` reports, the two oldest are coalesced into one (facts overlaid, every
//! SEL event kept).

use std::path::{Path, PathBuf};

use muster::pb;
use prost::Message;
use thiserror::Error;

use crate::identity::write_atomic;
use crate::report::coalesce;

/// Why the spool could not be read or written.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool file {0} is corrupt; it was moved aside to {0}.corrupt")]
    Corrupt(PathBuf),
    #[error("{0}")]
    Write(#[from] crate::identity::IdentityError),
}

/// A directory of `<seq>.report` files.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool directory.
    pub fn open(dir: &Path, max: usize) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max: max.max(2),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.report"))
    }

    /// Spooled sequence numbers, oldest first.
    pub fn sequences(&self) -> Result<Vec<u64>, SpoolError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".report")
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Number of spooled reports.
    pub fn len(&self) -> Result<usize, SpoolError> {
        Ok(self.sequences()?.len())
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }

    /// Reads one spooled report.
    pub fn read(&self, seq: u64) -> Result<pb::ReportRequest, SpoolError> {
        let p = self.path(seq);
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        pb::ReportRequest::decode(bytes.as_slice()).map_err(|_| {
            let _ = std::fs::rename(&p, p.with_extension("report.corrupt"));
            SpoolError::Corrupt(p)
        })
    }

    /// Adds a report durably, then keeps the spool within its bound.
    pub fn push(&self, r: &pb::ReportRequest) -> Result<(), SpoolError> {
        write_atomic(&self.path(r.seq), &r.encode_to_vec(), 0o600)?;
        loop {
            let seqs = self.sequences()?;
            if seqs.len() <= self.max {
                return Ok(());
            }
            let (a, b) = (seqs[0], seqs[1]);
            let merged = coalesce(self.read(a)?, self.read(b)?);
            // Write the merged report over the newer one, then drop the older: a crash in
            // between leaves both, which sends the older's events twice (the server skips
            // SEL records it has) but loses nothing.
            write_atomic(&self.path(b), &merged.encode_to_vec(), 0o600)?;
            self.remove(a)?;
        }
    }

    /// Removes an acknowledged report.
    pub fn remove(&self, seq: u64) -> Result<(), SpoolError> {
        let p = self.path(seq);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report(seq: u64, sel: u32) -> pb::ReportRequest {
        pb::ReportRequest {
            seq,
            sel: vec![pb::SelEntry {
                record_id: sel,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn bounded_without_losing_sel_events_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 3).unwrap();
        for i in 1..=6 {
            s.push(&report(i, i as u32 * 10)).unwrap();
        }
        let s = Spool::open(dir.path(), 3).unwrap();
        assert_eq!(s.sequences().unwrap(), [4, 5, 6]);
        let first = s.read(4).unwrap();
        assert_eq!(
            first.sel.iter().map(|e| e.record_id).collect::<Vec<_>>(),
            [10, 20, 30, 40]
        );
        s.remove(4).unwrap();
        s.remove(4).unwrap();
        assert_eq!(s.len().unwrap(), 2);
    }
}
