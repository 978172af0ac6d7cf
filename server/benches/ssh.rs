//! SSH executor benchmark (issue 13): 50 concurrent sessions to loopback sshd, each one a full
//! campaign-step round trip (TCP, handshake, pinned host key, key auth, exec `true`, exit
//! status, close), russh executor against the OpenSSH `ssh` client with connection sharing off
//! (`ControlMaster=no`, `ControlPath=none`, `BatchMode`, the same pinned known_hosts), rounds
//! alternating between the two in the same run. Target: russh/ssh throughput ratio >= 1.0.
//!
//! Needs root and `/usr/sbin/sshd` (the test kit's `SshFleet`). Run:
//! `cargo bench -p muster-server --bench ssh` (BENCH_SCALE=0.3 for a quick run).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{BoxError, ms, pct, scale};
use muster_server::ssh::{ExitOutcome, HostKeyPin, RunDir, SshExecutor, SshSettings, SshTarget};
use muster_tests::ssh::SshFleet;

/// Sessions in flight at once.
const CONCURRENCY: usize = 50;
/// Time bound per side; rounds stop early once it is spent.
const TIME_BOUND: Duration = Duration::from_secs(90);

fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let rounds = scale(10);
    let mut fleet = SshFleet::new()?;
    let port = fleet.start_host()?;
    let pin = HostKeyPin::parse(&fleet.host_public_key(port)?)?;
    let key = std::fs::read(&fleet.client_key)?;
    let target = SshTarget::new("127.0.0.1", port, "root", &key, pin)?;
    let ex = SshExecutor::new(SshSettings::default(), RunDir::default(), CONCURRENCY)?;

    // Warm-up: one of each, and a check that both paths really run the command.
    let r = ex.exec(&target, "true", Duration::from_secs(30)).await?;
    assert_eq!(r.outcome, ExitOutcome::Exited(0));
    openssh_one(&fleet, port).await?;

    let (mut russh_n, mut russh_t) = (0usize, Duration::ZERO);
    let (mut ssh_n, mut ssh_t) = (0usize, Duration::ZERO);
    // Wall time of each round of 50 sessions.
    let (mut russh_rounds, mut ssh_rounds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if russh_t < TIME_BOUND {
            let t0 = Instant::now();
            let runs = (0..CONCURRENCY).map(|_| ex.exec(&target, "true", Duration::from_secs(60)));
            for r in futures::future::join_all(runs).await {
                if r?.outcome != ExitOutcome::Exited(0) {
                    return Err("russh: `true` did not exit 0".into());
                }
            }
            russh_t += t0.elapsed();
            russh_rounds.push(t0.elapsed());
            russh_n += CONCURRENCY;
        }
        if ssh_t < TIME_BOUND {
            let t0 = Instant::now();
            let runs = (0..CONCURRENCY).map(|_| openssh_one(&fleet, port));
            for r in futures::future::join_all(runs).await {
                r?;
            }
            ssh_t += t0.elapsed();
            ssh_rounds.push(t0.elapsed());
            ssh_n += CONCURRENCY;
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let russh_rate = russh_n as f64 / russh_t.as_secs_f64();
    let ssh_rate = ssh_n as f64 / ssh_t.as_secs_f64();
    println!("{CONCURRENCY} concurrent sessions to loopback sshd, `true`, {rounds} rounds each");
    println!(
        "russh executor: {russh_n} sessions in {:.2} s = {russh_rate:.1} sessions/s",
        russh_t.as_secs_f64()
    );
    println!(
        "OpenSSH ssh (ControlMaster=no): {ssh_n} sessions in {:.2} s = {ssh_rate:.1} sessions/s",
        ssh_t.as_secs_f64()
    );
    println!(
        "round of {CONCURRENCY}, p50: russh {} / ssh {}",
        ms(pct(&mut russh_rounds, 0.5)),
        ms(pct(&mut ssh_rounds, 0.5))
    );
    println!(
        "ratio russh/ssh = {:.2} (target >= 1.0)",
        russh_rate / ssh_rate
    );
    Ok(())
}

/// One `ssh ... true` with no connection sharing and the pinned known_hosts only.
async fn openssh_one(fleet: &SshFleet, port: u16) -> Result<(), BoxError> {
    let st = tokio::process::Command::new("ssh")
        .args([
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "BatchMode=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            fleet.known_hosts.display()
        ))
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-F", "/dev/null"])
        .arg("-i")
        .arg(&fleet.client_key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await?;
    if !st.status.success() {
        return Err(format!(
            "ssh failed ({}): {}",
            st.status,
            String::from_utf8_lossy(&st.stderr)
        )
        .into());
    }
    Ok(())
}
