//! Helpers both benchmarks share: scaling, percentiles, and starting the release `musterd`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The error type of the benchmarks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `n` multiplied by `BENCH_SCALE` (default 1), at least 1.
pub fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * s).max(1.0) as usize
}

/// The `p` quantile (0..=1) of `v`, which it sorts.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Starts the release `musterd` on an ephemeral loopback port; returns it and its address.
/// (Not every benchmark starts a server.)
#[allow(dead_code)]
pub fn spawn_musterd(data_dir: &Path, extra: &[String]) -> Result<(Child, String), BoxError> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_musterd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("MUSTER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("grpc="))
        .ok_or_else(|| format!("musterd did not start: {line:?}"))?
        .to_string();
    Ok((child, addr))
}
