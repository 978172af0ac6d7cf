//! Facter-style external facts: executables in a directory, each printing one JSON object.
//!
//! Every executable regular file in the directory runs (dotfiles, directories and files without
//! an execute bit are skipped, so a README or a disabled script can sit beside the facts). The
//! files run concurrently, at most [`MAX_PARALLEL`] at a time, each in its own process group
//! with its own timeout; on a timeout the whole group is killed, so a script's children do not
//! outlive it. Results are merged in file-name order: on a duplicate key the later file wins,
//! and the override is noted in `errors` because two scripts claiming one fact is usually a
//! mistake the operator wants to see. One failing file (bad JSON, non-zero exit, timeout, too
//! much output) is an error naming it; the other files still count.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Most stdout one fact file may print; more is an error (and the process is killed).
pub const MAX_STDOUT: usize = 1 << 20;
/// How much of a failing file's stderr goes into its error message.
const STDERR_EXCERPT: usize = 512;
/// Fact files running at once: enough that one slow file does not hold the others back,
/// few enough not to load the host.
pub const MAX_PARALLEL: usize = 4;

/// The merged facts and one message per problem; an empty `errors` means every file worked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalFacts {
    pub facts: Map<String, Value>,
    pub errors: Vec<String>,
}

/// Runs the fact executables in `dir`, each bounded by `timeout_each`. A missing directory
/// means no external facts (not an error): most hosts have none.
pub async fn collect(dir: &Path, timeout_each: Duration) -> ExternalFacts {
    let mut result = ExternalFacts::default();
    let files = match list_executables(dir).await {
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return result,
        Err(e) => {
            result
                .errors
                .push(format!("cannot list fact directory {}: {e}", dir.display()));
            return result;
        }
    };

    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, path) in files.iter().cloned().enumerate() {
        let limit = Arc::clone(&limit);
        let dir = dir.to_path_buf();
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = limit.acquire_owned().await;
            (index, run_one(&dir, &path, timeout_each).await)
        });
    }
    let mut outcomes = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => {
                outcomes.insert(index, outcome);
            }
            Err(e) => result.errors.push(format!("fact task failed: {e}")),
        }
    }

    // Merge in name order so "later file wins" means the same thing on every run.
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (index, outcome) in outcomes {
        let file = display_name(&files[index]);
        match outcome {
            Ok(map) => {
                for (key, value) in map {
                    if let Some(prev) = owner.insert(key.clone(), index) {
                        result.errors.push(format!(
                            "{file}: fact {key:?} overrides the value from {}",
                            display_name(&files[prev])
                        ));
                    }
                    result.facts.insert(key, value);
                }
            }
            Err(reason) => result.errors.push(format!("{file}: {reason}")),
        }
    }
    result
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Executable regular files (symlinks followed) in `dir`, sorted by name.
async fn list_executables(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // A dangling symlink or a file removed meanwhile is simply not a fact file.
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs one fact file and parses its output; the error says what went wrong, without the name.
async fn run_one(dir: &Path, path: &Path, timeout: Duration) -> Result<Map<String, Value>, String> {
    let mut child = spawn(dir, path).map_err(|e| format!("cannot run: {e}"))?;
    let pgid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let work = async {
        tokio::join!(
            read_bounded(stdout, MAX_STDOUT),
            read_bounded(stderr, STDERR_EXCERPT),
            async {
                let status = child.wait().await;
                // Children the script left behind would keep its pipes open (and the reads
                // waiting): they go with it.
                kill_group(pgid);
                status
            }
        )
    };
    let finished = tokio::time::timeout(timeout, work).await;
    let Ok((out, err, status)) = finished else {
        kill_group(pgid);
        let _ = child.kill().await;
        return Err(format!("timed out after {timeout:?}; killed"));
    };

    let status = status.map_err(|e| format!("cannot wait for it: {e}"))?;
    let (out, out_truncated) = out.map_err(|e| format!("cannot read its output: {e}"))?;
    let stderr_text = match err {
        Ok((bytes, _)) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let with_stderr = |msg: String| {
        if stderr_text.is_empty() {
            msg
        } else {
            format!("{msg} (stderr: {stderr_text})")
        }
    };
    if !status.success() {
        return Err(with_stderr(format!("exited with {status}")));
    }
    if out_truncated {
        return Err(format!("printed more than {MAX_STDOUT} bytes"));
    }
    parse_output(&out).map_err(with_stderr)
}

fn spawn(dir: &Path, path: &Path) -> io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        let result = Command::new(path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        match result {
            // The file is being rewritten at this instant (config management): try again.
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Kills the process group a fact file ran in (it leads its own group: `process_group(0)`).
fn kill_group(pgid: Option<u32>) {
    let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // ESRCH (the group is already gone) is the normal case.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Reads up to `limit` bytes, then keeps draining (so the writer never blocks on a full pipe)
/// and reports whether anything was dropped.
async fn read_bounded<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let Some(mut reader) = reader else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// One JSON object, nothing else (surrounding whitespace allowed).
pub fn parse_output(out: &[u8]) -> Result<Map<String, Value>, String> {
    if out.iter().all(u8::is_ascii_whitespace) {
        return Err("printed nothing; expected one JSON object".into());
    }
    match serde_json::from_slice::<Value>(out) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "printed JSON {}, expected an object",
            kind_of(&other)
        )),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Canonical JSON of a fact map: keys sorted at every level, no whitespace, serde_json's
/// escaping and number formatting. Equal facts give equal text whatever order the scripts
/// printed them in, so a hash of it is a stable content hash.
pub fn canonical_json(map: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_object(&mut out, map);
    out
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        if let Some(v) = map.get(key) {
            write_value(out, v);
        }
    }
    out.push('}');
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn canonical_sorts_every_level() {
        let a =
            obj(json!({"b": {"z": 1, "a": [ {"y": true, "x": null} ]}, "a": "é\"\n", "c": 1.5}));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":"é\"\n","b":{"a":[{"x":null,"y":true}],"z":1},"c":1.5}"#
        );
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"c":1.5,"b":{"a":[{"x":null,"y":true}],"z":1},"a":"é\"\n"}"#)
                .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&Map::new()), "{}");
    }

    #[test]
    fn output_must_be_one_object() {
        assert_eq!(parse_output(b" {\"a\": 1}\n").unwrap()["a"], json!(1));
        assert!(parse_output(b"").unwrap_err().contains("nothing"));
        assert!(parse_output(b"[1]").unwrap_err().contains("array"));
        assert!(
            parse_output(b"{\"a\":1}{\"b\":2}")
                .unwrap_err()
                .contains("invalid JSON")
        );
        assert!(parse_output(b"a=1").unwrap_err().contains("invalid JSON"));
    }

    #[tokio::test]
    async fn missing_dir_is_empty() {
        let got = collect(Path::new("/nonexistent/facts.d"), Duration::from_secs(1)).await;
        assert_eq!(got, ExternalFacts::default());
    }

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[tokio::test]
    async fn merges_in_name_order_and_notes_overrides() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "10-a", r#"echo '{"role":"web","a":1}'"#, 0o755);
        script(dir.path(), "20-b", r#"echo '{"role":"db","b":2}'"#, 0o755);
        script(dir.path(), "30-fail", "echo oops >&2; exit 3", 0o755);
        script(
            dir.path(),
            "40-big",
            "head -c 2000000 /dev/zero | tr '\\0' ' '",
            0o755,
        );
        script(dir.path(), ".hidden", r#"echo '{"hidden":1}'"#, 0o755);
        let got = collect(dir.path(), Duration::from_secs(10)).await;
        assert_eq!(got.facts, obj(json!({"role": "db", "a": 1, "b": 2})));
        assert_eq!(got.errors.len(), 3, "{:?}", got.errors);
        assert!(got.errors[0].starts_with("20-b: fact \"role\" overrides the value from 10-a"));
        assert!(got.errors[1].starts_with("30-fail: exited with exit status: 3"));
        assert!(got.errors[1].contains("oops"));
        assert!(got.errors[2].starts_with("40-big: printed more than"));
    }
}
