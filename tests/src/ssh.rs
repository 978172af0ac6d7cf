//! Throwaway OpenSSH servers on 127.0.0.1 as test "hosts": one `sshd` per host, each with its
//! own host key, port and pid file, accepting one client key for root (public key only, no
//! PAM). `SshFleet` owns the keys and a pinned `known_hosts`; every sshd stops on drop.
//!
//! sshd must run as root (it insists on its privilege-separation directory `/run/sshd` and
//! switches users): without root, or without `/usr/sbin/sshd`, `SshFleet::new` fails with a
//! message saying so, never a silent pass.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The sshd binary (Debian's `openssh-server`; tests/run-all.sh installs it).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Keys and known_hosts shared by the hosts of one test.
#[derive(Debug)]
pub struct SshFleet {
    pub dir: tempfile::TempDir,
    /// The private key clients log in with.
    pub client_key: PathBuf,
    /// `[127.0.0.1]:PORT KEY` for every started host.
    pub known_hosts: PathBuf,
    hosts: Vec<SshHost>,
}

/// One running sshd.
#[derive(Debug)]
pub struct SshHost {
    pub port: u16,
    child: Child,
}

impl Drop for SshHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key pair at `path` (and `path.pub`), without a passphrase.
pub fn keygen(path: &Path, comment: &str) -> anyhow::Result<()> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .context("running ssh-keygen (install openssh-client)")?;
    if !st.success() {
        bail!("ssh-keygen failed: {st}");
    }
    Ok(())
}

/// A port that was free a moment ago (sshd cannot take over a bound socket; a clash is
/// retried by `SshFleet::start_host`).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Fails with a message saying what is missing when sshd cannot run here (no sshd, not root).
pub fn require_sshd() -> anyhow::Result<()> {
    if !Path::new(SSHD).exists() {
        bail!("{SSHD} is missing: install openssh-server (tests/run-all.sh does)");
    }
    let uid = Command::new("id").arg("-u").output().context("id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "the sshd tests need root (sshd needs /run/sshd and to switch users); run them as root, as CI does"
        );
    }
    std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
    Ok(())
}

impl SshFleet {
    /// Keys and an empty known_hosts; fails clearly when sshd cannot run here.
    pub fn new() -> anyhow::Result<Self> {
        require_sshd()?;
        let dir = tempfile::tempdir()?;
        let client_key = dir.path().join("client_ed25519");
        keygen(&client_key, "muster-test-client")?;
        std::fs::create_dir_all(dir.path().join("authorized_keys"))?;
        std::fs::copy(
            dir.path().join("client_ed25519.pub"),
            dir.path().join("authorized_keys/root"),
        )?;
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, "")?;
        Ok(Self {
            dir,
            client_key,
            known_hosts,
            hosts: Vec::new(),
        })
    }

    /// Starts one more sshd and returns its port (pinned in known_hosts). `MaxStartups` is
    /// raised so that many concurrent handshakes (the SSH bench runs 50) are not dropped.
    pub fn start_host(&mut self) -> anyhow::Result<u16> {
        let n = self.hosts.len();
        let d = self.dir.path().join(format!("host{n}"));
        std::fs::create_dir_all(&d)?;
        let hostkey = d.join("hostkey_ed25519");
        keygen(&hostkey, &format!("muster-test-host{n}"))?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}/%u\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n\
                     PrintMotd no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n\
                     MaxStartups 256\n",
                    hk = hostkey.display(),
                    pid = d.join("sshd.pid").display(),
                    ak = self.dir.path().join("authorized_keys").display(),
                ),
            )?;
            let log = std::fs::File::create(d.join("sshd.log"))?;
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawning sshd")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break true;
                }
                if child.try_wait()?.is_some() || Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                let pubkey = std::fs::read_to_string(d.join("hostkey_ed25519.pub"))?;
                let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
                let mut kh = std::fs::read_to_string(&self.known_hosts)?;
                kh.push_str(&format!("[127.0.0.1]:{port} {}\n", key.join(" ")));
                std::fs::write(&self.known_hosts, kh)?;
                self.hosts.push(SshHost { port, child });
                return Ok(port);
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        }
        bail!("sshd did not start; its log:\n{last}")
    }

    /// The public key line (`ssh-ed25519 AAAA...`) the host on `port` was pinned with.
    pub fn host_public_key(&self, port: u16) -> anyhow::Result<String> {
        let prefix = format!("[127.0.0.1]:{port} ");
        std::fs::read_to_string(&self.known_hosts)?
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .with_context(|| format!("no known_hosts entry for port {port}"))
    }
}
