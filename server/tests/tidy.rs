//! The architecture's invariants, checked against the source tree (in the manner of
//! rust-analyzer's tidy tests): each rule names the files it reads, what must not appear in
//! them, and why. A rule that fails prints every offending line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The source folders of the workspace's crates (not their tests or benches).
const CRATE_SOURCES: [&str; 5] = [
    "server/src",
    "agent/src",
    "cli/src",
    "ansible-bridge/src",
    "proto/src",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir` (relative to the workspace), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![workspace().join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn relative(p: &Path) -> String {
    p.strip_prefix(workspace())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Code lines of a file: comment lines (`//`, `//!`, `///`) and the text after `//` dropped,
/// so a doc comment that *names* sled or `Status` does not count.
fn code_lines(p: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(p).unwrap();
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim_start();
            if t.starts_with("//") {
                return None;
            }
            let code = match l.find("// ") {
                Some(at) if !l[..at].contains('"') => &l[..at],
                _ => l,
            };
            Some((i + 1, code.to_string()))
        })
        .collect()
}

/// Fails listing every line of `files` (minus `allowed`) that contains one of `needles`.
fn forbid(rule: &str, files: &[PathBuf], allowed: &[&str], needles: &[&str]) {
    let mut hits = Vec::new();
    for f in files {
        let rel = relative(f);
        if allowed.iter().any(|a| rel == *a || rel.starts_with(a)) {
            continue;
        }
        for (n, line) in code_lines(f) {
            if needles.iter().any(|needle| line.contains(needle)) {
                hits.push(format!("{rel}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "{rule}:\n{}", hits.join("\n"));
}

#[test]
fn status_is_built_only_in_the_one_mapping() {
    // Domain and handler code return `ApiError`; `grpc/status.rs` maps it, exhaustively, and
    // the refusal is audited on the way. A `Status` built elsewhere skips both.
    forbid(
        "tonic::Status built outside server/src/grpc/status.rs",
        &rust_files("server/src"),
        &["server/src/grpc/status.rs"],
        &[
            "Status::new(",
            "Status::invalid_argument(",
            "Status::not_found(",
            "Status::internal(",
            "Status::unavailable(",
            "Status::permission_denied(",
            "Status::unauthenticated(",
            "Status::resource_exhausted(",
            "Status::failed_precondition(",
            "Status::aborted(",
            "Status::already_exists(",
            "Status::deadline_exceeded(",
            "Status::unimplemented(",
            "Status::out_of_range(",
            "Status::data_loss(",
            "Status::unknown(",
            "Status::cancelled(",
        ],
    );
}

#[test]
fn sled_is_named_only_in_the_store() {
    // Everything above `store/` talks to the `Store` trait, so another backend (etcd, for the
    // replicated musterd to come) can implement it.
    forbid(
        "sled used outside server/src/store/",
        &rust_files("server/src"),
        &["server/src/store/"],
        &["sled::"],
    );
}

#[test]
fn model_is_pure() {
    // The domain rules do no I/O and know nothing of the store (ARCHITECTURE.md, invariants).
    forbid(
        "I/O or the store layer in server/src/model/",
        &rust_files("server/src/model"),
        &[],
        &[
            "std::fs",
            "tokio::fs",
            "File::",
            "std::net",
            "tokio::net",
            "crate::store",
            "sled",
            "tonic::",
        ],
    );
}

#[test]
fn time_is_read_only_through_the_clock() {
    // clippy.toml bans the calls (clippy runs in CI); this checks the ban is still configured,
    // and that nothing outside the clock module, benchmarks and tests opted out of it.
    let clippy = std::fs::read_to_string(workspace().join("clippy.toml")).unwrap();
    for banned in [
        "std::time::SystemTime::now",
        "std::time::Instant::now",
        "chrono::Utc::now",
    ] {
        assert!(
            clippy.contains(banned),
            "clippy.toml no longer bans {banned}"
        );
    }
    let mut files = Vec::new();
    for dir in CRATE_SOURCES {
        files.extend(rust_files(dir));
    }
    let mut opted_out = Vec::new();
    for f in &files {
        let rel = relative(f);
        let text = std::fs::read_to_string(f).unwrap();
        // Test modules may opt out (they measure or wait on real time); the opt-out must sit
        // inside a `mod tests`, i.e. after a `#[cfg(test)]`.
        let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
        if before_tests.contains("allow(clippy::disallowed_methods)") {
            opted_out.push(rel);
        }
    }
    // Where reading time directly is the point: the clock itself, and the transport timers
    // that run on tokio's (pausable) clock.
    let expected = [
        "proto/src/clock.rs",
        "server/src/idle.rs",
        "server/src/ssh/pool.rs",
        "server/src/ssh/readloop.rs",
        "server/src/ssh/session.rs",
        // The blob sync compares with file mtimes the kernel wrote.
        "server/src/store/sled_store/flush.rs",
    ];
    opted_out.retain(|f| !expected.contains(&f.as_str()));
    assert!(
        opted_out.is_empty(),
        "files opting out of the clock ban outside tests: {opted_out:?}"
    );
}

#[test]
fn e2e_tests_do_not_open_the_store() {
    // The e2e suite tests the binaries through their public interfaces; reaching into the
    // store would test (and freeze) its layout instead.
    forbid(
        "e2e opens the store directly",
        &rust_files("tests"),
        &[],
        &["sled::"],
    );
}

#[test]
fn no_source_file_is_over_650_lines() {
    // Folders by job and small files (ARCHITECTURE.md): a file this long does more than one job
    // and wants splitting into a folder of modules. Test files (`tests.rs`, anything under a
    // `tests/` folder) and tables of test cases are exempt; nothing else is.
    const MAX_LINES: usize = 650;
    let mut long = Vec::new();
    for dir in CRATE_SOURCES.iter().chain(&["tests/src"]) {
        for f in rust_files(dir) {
            let rel = relative(&f);
            if rel.ends_with("/tests.rs") || rel.contains("/tests/") {
                continue;
            }
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            if lines > MAX_LINES {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (split them by job):\n{}",
        long.join("\n")
    );
}
