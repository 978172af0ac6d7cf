//! Reading files under the collector's root: the required ones (an error naming the path),
//! optional ones, sysfs attributes and directory listings.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::OsError;

pub(super) fn read_required(root: &Path, rel: &str) -> Result<String, OsError> {
    let path = root.join(rel);
    std::fs::read_to_string(&path).map_err(|source| OsError::Read { path, source })
}

pub(super) fn read_optional(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

/// A sysfs attribute, trimmed; `None` when absent, unreadable (EINVAL on virtual NICs) or empty.
pub(super) fn read_attr(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

pub(super) fn parse_error(root: &Path, rel: &str, reason: &str) -> OsError {
    OsError::Parse {
        path: root.join(rel),
        reason: reason.to_string(),
    }
}

/// Regular files in `dir` whose name ends in `suffix`, sorted by name (the order chrony and
/// systemd read drop-ins in); none when the directory does not exist.
pub(super) fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut names: Vec<String> = list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

pub(super) fn dedup(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Entry names of a directory, sorted; a missing directory is an empty list (a container may
/// lack /sys/block), any other failure is an error.
pub(super) fn list_dir(dir: &Path) -> Result<Vec<String>, OsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(OsError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| OsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_is_empty_and_listings_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_dir(&dir.path().join("absent")).unwrap().is_empty());
        for name in ["b.conf", "a.conf", ".hidden.conf", "README"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(
            list_dir(dir.path()).unwrap(),
            [".hidden.conf", "README", "a.conf", "b.conf"]
        );
        assert_eq!(
            files_with_suffix(dir.path(), ".conf"),
            [dir.path().join("a.conf"), dir.path().join("b.conf")]
        );
        // A file where a directory is expected is an error naming it, not an empty list.
        let err = list_dir(&dir.path().join("README"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("README"), "{err}");
    }

    #[test]
    fn attributes_are_trimmed_and_empty_ones_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("speed"), "1000\n").unwrap();
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        assert_eq!(
            read_attr(&dir.path().join("speed")).as_deref(),
            Some("1000")
        );
        assert_eq!(read_attr(&dir.path().join("empty")), None);
        assert_eq!(read_attr(&dir.path().join("absent")), None);
        let err = read_required(dir.path(), "proc/stat")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proc/stat"), "{err}");
        assert_eq!(dedup(["a".into(), "b".into(), "a".into()]), ["a", "b"]);
    }
}
