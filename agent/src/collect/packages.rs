//! Installed packages, from `dpkg-query` (Debian family) or, where dpkg is absent, `rpm`.
//!
//! Versions follow each distribution's own convention: the epoch appears only when it is not
//! zero (`1:2.3-4`), exactly as `dpkg-query` prints Debian versions; RPM's `0:` is dropped to
//! match. Names are the plain package name (dpkg's `:arch` qualifier removed) with the
//! architecture in its own field, so `libc6:amd64` and `libc6:i386` are two entries named
//! `libc6`. The list is sorted by (name, arch).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use muster::pb;
use muster::version::PackageFormat;
use tokio::process::Command;

/// dpkg-query format: one tab-separated line per package, the status abbreviation last.
const DPKG_FORMAT: &str = "${binary:Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n";
/// rpm query format; `%{EPOCHNUM}` prints 0 when the package has no epoch.
const RPM_FORMAT: &str = "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n";

/// Why the package list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    /// Neither package manager's query tool exists on this host.
    #[error(
        "no package database found: neither dpkg-query nor rpm is on PATH (install one, or disable the packages collector)"
    )]
    NoPackageManager,
    /// The tool exists but could not be started (permissions, exec format...).
    #[error("cannot run {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    /// The tool ran and reported a failure.
    #[error("{} exited with {status}: {stderr}", program.display())]
    Failed {
        program: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// A line of output did not have the requested fields.
    #[error("unexpected line {line} from {tool}: {text:?}")]
    Parse {
        tool: &'static str,
        line: usize,
        text: String,
    },
}

/// Lists installed packages using the tools found on PATH.
pub async fn collect() -> Result<Vec<pb::InstalledPackage>, PackagesError> {
    collect_with(Path::new("dpkg-query"), Path::new("rpm")).await
}

/// Lists installed packages with explicit tool paths: dpkg-query first, rpm when dpkg-query
/// does not exist. Children are killed if the caller drops the future (its deadline passed).
pub async fn collect_with(
    dpkg_query: &Path,
    rpm: &Path,
) -> Result<Vec<pb::InstalledPackage>, PackagesError> {
    Ok(collect_listing(dpkg_query, rpm).await?.1)
}

/// [`collect_with`], also saying which package manager answered: that decides how the versions
/// compare (`OsFacts.package_format`).
pub async fn collect_listing(
    dpkg_query: &Path,
    rpm: &Path,
) -> Result<(PackageFormat, Vec<pb::InstalledPackage>), PackagesError> {
    let (format, mut list) = match run(dpkg_query, &["-W", "-f", DPKG_FORMAT]).await? {
        Some(out) => (PackageFormat::Deb, parse_dpkg(&out)?),
        None => match run(rpm, &["-qa", "--qf", RPM_FORMAT]).await? {
            Some(out) => (PackageFormat::Rpm, parse_rpm(&out)?),
            None => return Err(PackagesError::NoPackageManager),
        },
    };
    list.sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
    Ok((format, list))
}

/// Runs a query tool; `Ok(None)` when the program does not exist.
async fn run(program: &Path, args: &[&str]) -> Result<Option<String>, PackagesError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PackagesError::Spawn {
                program: program.to_path_buf(),
                source,
            });
        }
    };
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| PackagesError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(PackagesError::Failed {
            program: program.to_path_buf(),
            status: out.status,
            stderr: short(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The first line of a tool's complaint, bounded, for an error message.
fn short(stderr: &str) -> String {
    let line = stderr.trim().lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// Parses dpkg-query output in [`DPKG_FORMAT`], keeping installed packages only: the second
/// letter of the status abbreviation is `i` ("ii" installed, "hi" installed and held, "ri"
/// marked for removal but still installed); config-files-only ("rc") and half-installed entries
/// are not installed software.
pub fn parse_dpkg(text: &str) -> Result<Vec<pb::InstalledPackage>, PackagesError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || PackagesError::Parse {
            tool: "dpkg-query",
            line: i + 1,
            text: line.chars().take(200).collect(),
        };
        let mut fields = line.split('\t');
        let (Some(name), Some(version), Some(arch), Some(status)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        if name.is_empty() {
            return Err(bad());
        }
        if status.chars().nth(1) != Some('i') {
            continue;
        }
        let name = name
            .strip_suffix(arch)
            .and_then(|n| n.strip_suffix(':'))
            .unwrap_or(name);
        out.push(pb::InstalledPackage {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
        });
    }
    Ok(out)
}

/// Parses rpm output in [`RPM_FORMAT`]; a zero epoch is dropped (`0:1.2-3` → `1.2-3`) and
/// rpm's `(none)` architecture (e.g. `gpg-pubkey` entries) becomes empty.
pub fn parse_rpm(text: &str) -> Result<Vec<pb::InstalledPackage>, PackagesError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(name), Some(version), Some(arch), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(PackagesError::Parse {
                tool: "rpm",
                line: i + 1,
                text: line.chars().take(200).collect(),
            });
        };
        let version = version.strip_prefix("0:").unwrap_or(version);
        let arch = if arch == "(none)" { "" } else { arch };
        out.push(pb::InstalledPackage {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, arch: &str) -> pb::InstalledPackage {
        pb::InstalledPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
        }
    }

    #[test]
    fn dpkg_keeps_installed_and_strips_arch_qualifier() {
        let text = "bash\t5.2.15-2+b7\tamd64\tii \n\
                    libc6:amd64\t2.36-9+deb12u4\tamd64\tii \n\
                    libc6:i386\t2.36-9+deb12u4\ti386\thi \n\
                    old-thing\t1.0-1\tamd64\trc \n\
                    half\t1.0-1\tamd64\tiU \n\
                    tzdata\t2024a-0+deb12u1\tall\tii \n\
                    perl\t1:5.36.0-7\tamd64\tri \n";
        let got = parse_dpkg(text).unwrap();
        assert_eq!(
            got,
            vec![
                pkg("bash", "5.2.15-2+b7", "amd64"),
                pkg("libc6", "2.36-9+deb12u4", "amd64"),
                pkg("libc6", "2.36-9+deb12u4", "i386"),
                pkg("tzdata", "2024a-0+deb12u1", "all"),
                pkg("perl", "1:5.36.0-7", "amd64"),
            ]
        );
    }

    #[test]
    fn dpkg_rejects_truncated_lines() {
        let err = parse_dpkg("bash\t5.2\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn rpm_drops_zero_epoch_keeps_others() {
        let text = "bash\t0:5.1.8-9.el9\tx86_64\n\
                    openssl-libs\t1:3.0.7-27.el9\tx86_64\n\
                    gpg-pubkey\t0:fd431d51-4ae0493b\t(none)\n";
        let got = parse_rpm(text).unwrap();
        assert_eq!(
            got,
            vec![
                pkg("bash", "5.1.8-9.el9", "x86_64"),
                pkg("openssl-libs", "1:3.0.7-27.el9", "x86_64"),
                pkg("gpg-pubkey", "fd431d51-4ae0493b", ""),
            ]
        );
        assert!(parse_rpm("a\tb\n").is_err());
    }

    #[tokio::test]
    async fn neither_tool_present() {
        let err = collect_with(
            Path::new("/nonexistent/dpkg-query"),
            Path::new("/nonexistent/rpm"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PackagesError::NoPackageManager), "{err}");
    }

    #[tokio::test]
    async fn falls_back_to_rpm_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let rpm = dir.path().join("rpm");
        std::fs::write(
            &rpm,
            "#!/bin/sh\nprintf 'zlib\\t0:1.2.11-40.el9\\tx86_64\\nbash\\t0:5.1.8-9.el9\\tx86_64\\nzlib\\t0:1.2.11-40.el9\\ti686\\n'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rpm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (format, got) = collect_listing(Path::new("/nonexistent/dpkg-query"), &rpm)
            .await
            .unwrap();
        assert_eq!(format, PackageFormat::Rpm);
        assert_eq!(
            got,
            vec![
                pkg("bash", "5.1.8-9.el9", "x86_64"),
                pkg("zlib", "1.2.11-40.el9", "i686"),
                pkg("zlib", "1.2.11-40.el9", "x86_64"),
            ]
        );
    }

    #[tokio::test]
    async fn failing_tool_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("dpkg-query");
        std::fs::write(&tool, "#!/bin/sh\necho 'database locked' >&2\nexit 2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = collect_with(&tool, Path::new("/nonexistent/rpm"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("database locked"), "{msg}");
    }
}
