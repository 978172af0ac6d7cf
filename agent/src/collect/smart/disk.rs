//! Which disks to read: the config's forms ("/dev/sda", "/dev/sda:sat", "replay:PATH"), and
//! the label a disk is reported under.

use std::fmt;
use std::path::PathBuf;

use super::SmartError;

/// A disk to query, from the agent's config or from `smartctl --scan-open -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    /// A device smartctl opens itself; `dev_type` is its `-d TYPE` (e.g. "sat", "megaraid,3"),
    /// needed behind RAID controllers and USB bridges where smartctl cannot guess.
    Device {
        /// Device path as smartctl takes it, e.g. "/dev/sda".
        name: String,
        /// `-d` argument; `None` lets smartctl detect the type.
        dev_type: Option<String>,
    },
    /// Replays a recorded ATA transcript through the real smartctl (`smartctl -a -j -`); for
    /// tests and demos on machines without SMART-capable disks.
    Replay(PathBuf),
}

impl DiskRef {
    /// Parses the config form: "/dev/sda", "/dev/sda:sat" (`-d` type after the last colon), or
    /// "replay:/path/to/disk.ioctl".
    ///
    /// Device paths may contain colons themselves (`/dev/disk/by-path/pci-0000:00:17.0-ata-1`), so
    /// the part after the last colon is a type only if it looks like one: it starts with a
    /// lowercase letter and holds only lowercase letters, digits and `,+/-`.
    pub fn parse(s: &str) -> Result<Self, SmartError> {
        let invalid = |reason: &'static str| SmartError::InvalidDiskRef {
            input: s.to_owned(),
            reason,
        };
        let s_trimmed = s.trim();
        if let Some(path) = s_trimmed.strip_prefix("replay:") {
            if path.is_empty() {
                return Err(invalid("the replay transcript path is empty"));
            }
            return Ok(DiskRef::Replay(PathBuf::from(path)));
        }
        if s_trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !s_trimmed.starts_with('/') {
            return Err(invalid("a device must be an absolute path"));
        }
        if let Some((name, dev_type)) = s_trimmed.rsplit_once(':') {
            if dev_type.is_empty() {
                return Err(invalid("the device type after ':' is empty"));
            }
            if looks_like_dev_type(dev_type) {
                return Ok(DiskRef::Device {
                    name: name.to_owned(),
                    dev_type: Some(dev_type.to_owned()),
                });
            }
        }
        Ok(DiskRef::Device {
            name: s_trimmed.to_owned(),
            dev_type: None,
        })
    }

    /// The name a collected disk is reported under when smartctl does not know it: the device
    /// path, or "replay:FILE_NAME" for a transcript (smartctl calls stdin "-").
    pub fn label(&self) -> String {
        match self {
            DiskRef::Device { name, .. } => name.clone(),
            DiskRef::Replay(path) => {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string());
                format!("replay:{file}")
            }
        }
    }
}

/// The config form, so that `DiskRef::parse(&d.to_string()) == d`.
impl fmt::Display for DiskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskRef::Device {
                name,
                dev_type: None,
            } => write!(f, "{name}"),
            DiskRef::Device {
                name,
                dev_type: Some(t),
            } => write!(f, "{name}:{t}"),
            DiskRef::Replay(path) => write!(f, "replay:{}", path.display()),
        }
    }
}

pub(super) fn looks_like_dev_type(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ",+/-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ref_forms() {
        assert_eq!(
            DiskRef::parse("/dev/sda").unwrap(),
            DiskRef::Device {
                name: "/dev/sda".into(),
                dev_type: None
            }
        );
        assert_eq!(
            DiskRef::parse("/dev/bus/0:megaraid,3").unwrap(),
            DiskRef::Device {
                name: "/dev/bus/0".into(),
                dev_type: Some("megaraid,3".into())
            }
        );
        let by_path = "/dev/disk/by-path/pci-0000:00:17.0-ata-1";
        assert_eq!(
            DiskRef::parse(by_path).unwrap(),
            DiskRef::Device {
                name: by_path.into(),
                dev_type: None
            }
        );
        assert_eq!(
            DiskRef::parse(&format!("{by_path}:sat")).unwrap(),
            DiskRef::Device {
                name: by_path.into(),
                dev_type: Some("sat".into())
            }
        );
        assert_eq!(
            DiskRef::parse("/dev/sda:sat").unwrap(),
            DiskRef::Device {
                name: "/dev/sda".into(),
                dev_type: Some("sat".into())
            }
        );
        assert_eq!(
            DiskRef::parse("replay:/path/to/disk.ioctl").unwrap(),
            DiskRef::Replay("/path/to/disk.ioctl".into())
        );
        let err = DiskRef::parse("sda").unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
        for s in ["/dev/sda", "/dev/sdb:sat,12", "replay:/tmp/x.ioctl"] {
            assert_eq!(DiskRef::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "sda", "/dev/sda:", "replay:"] {
            assert!(
                matches!(DiskRef::parse(bad), Err(SmartError::InvalidDiskRef { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replay_label_is_the_file_name() {
        let disk = DiskRef::parse("replay:/some/where/disk-healthy.ioctl").unwrap();
        assert_eq!(disk.label(), "replay:disk-healthy.ioctl");
    }
}
