//! A real BMC for the tests: OpenIPMI's `ipmi_sim`, configured from `tests/fixtures/ipmi/`,
//! listening for RMCP+ on a free loopback UDP port, with its console on a free TCP port for
//! fault injection at runtime.
//!
//! The fixture (see `sim.sdrs` and `sim.emu.in`):
//!
//! | # | name           | type                  | reading            | thresholds                     |
//! |---|----------------|-----------------------|--------------------|--------------------------------|
//! | 1 | `CPU Temp`     | temperature (0x01)    | 45 C (1 C/count)   | unc 75, uc 85, unr 95          |
//! | 2 | `Fan1`         | fan (0x04)            | 4800 RPM (50/count)| lnc 1000, lc 500               |
//! | 3 | `PSU1 Vin 12v` | voltage (0x02)        | 12.00 V (0.06/count)| lc 10.8, uc 13.2              |
//! | 4 | `PSU1 Status`  | power supply (0x08), discrete | presence detected | -                      |
//! | 5 | `DIMM A1 ecc`  | memory (0x0c), discrete | nothing asserted | -                             |
//!
//! The SEL starts with three records: CPU Temp upper critical going high, PSU1 Status failure
//! detected, DIMM A1 ecc correctable ECC. FRU 0 holds the `FRU_*` values below.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// RMCP+ user and password configured in `lan.conf.in`.
pub const USER: &str = "admin";
pub const PASSWORD: &str = "secret";

/// FRU contents written into the simulated BMC.
pub const FRU_MANUFACTURER: &str = "ACME Corp";
pub const FRU_PRODUCT: &str = "ACME Server X100";
pub const FRU_PART_NUMBER: &str = "X100-1U";
pub const FRU_SERIAL: &str = "SIM-SN-0001";
pub const FRU_BOARD_SERIAL: &str = "MB-SIM-SN-0001";
/// Firmware revision configured by `mc_add` (1, 0x02).
pub const FIRMWARE: &str = "1.02";

/// A running `ipmi_sim` with its own state directory; killed on drop.
#[derive(Debug)]
pub struct IpmiSim {
    dir: tempfile::TempDir,
    rmcp_port: u16,
    console_port: u16,
    child: Child,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ipmi")
}

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl IpmiSim {
    /// Builds the fixtures into a fresh temporary directory and starts `ipmi_sim` on free
    /// loopback ports; returns once it answers an RMCP ping. Fails (never skips) when OpenIPMI
    /// is not installed.
    pub fn start() -> anyhow::Result<Self> {
        for tool in ["ipmi_sim", "sdrcomp"] {
            if which(tool).is_none() {
                bail!(
                    "{tool} not found on PATH: install openipmi (Debian/Ubuntu: apt-get install openipmi)"
                );
            }
        }
        let mut last = None;
        // The free ports are picked then released: another process may take one meanwhile.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("ipmi_sim did not start")))
    }

    fn try_start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let w = dir.path();
        let rmcp_port = free_udp_port()?;
        let console_port = free_tcp_port()?;
        build_fixture(w, rmcp_port, console_port)?;
        let log = std::fs::File::create(w.join("ipmi_sim.log"))?;
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(w.join("lan.conf"))
            .arg("-f")
            .arg(w.join("sim.emu"))
            .arg("-s")
            .arg(w.join("state"))
            .arg("-n")
            .current_dir(w)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning ipmi_sim")?;
        let mut sim = Self {
            dir,
            rmcp_port,
            console_port,
            child,
        };
        sim.wait_ready(Duration::from_secs(10))?;
        Ok(sim)
    }

    /// Waits until the simulator answers an RMCP/ASF presence ping.
    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        sock.connect(("127.0.0.1", self.rmcp_port))?;
        // RMCP header (version 6, seq 0xff, class ASF) + ASF presence ping (IANA 4542).
        let ping = [
            0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00,
        ];
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("ipmi_sim exited with {status}; log:\n{}", self.log());
            }
            let _ = sock.send(&ping);
            if let Ok(n) = sock.recv(&mut buf) {
                // Pong: message type 0x40.
                if n >= 9 && buf[8] == 0x40 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "ipmi_sim did not answer within {within:?}; log:\n{}",
            self.log()
        )
    }

    /// The simulator's output so far (errors in the command file show up here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipmi_sim.log")).unwrap_or_default()
    }

    /// UDP port of the RMCP+ listener on 127.0.0.1.
    pub fn rmcp_port(&self) -> u16 {
        self.rmcp_port
    }

    /// TCP port of the emulator console on 127.0.0.1.
    pub fn console_port(&self) -> u16 {
        self.console_port
    }

    /// "rmcp://admin@127.0.0.1:PORT", as the agent's config would say it.
    pub fn endpoint(&self) -> String {
        format!("rmcp://{USER}@127.0.0.1:{}", self.rmcp_port)
    }

    /// The RMCP+ password.
    pub fn password(&self) -> String {
        PASSWORD.to_string()
    }

    /// Runs one emulator console command (see ipmi_sim_cmd(5)) and returns its output; fails
    /// when the console reports an error.
    pub fn inject(&self, cmd: &str) -> anyhow::Result<()> {
        self.console(cmd).map(|_| ())
    }

    fn console(&self, cmd: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.console_port))
            .context("connecting to the ipmi_sim console")?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        // Wait for the first prompt, then send the command and wait for the next prompt.
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, deadline, |t| t.contains("> "))?;
        let before = strip_telnet(&raw).len();
        s.write_all(cmd.as_bytes())?;
        s.write_all(b"\n")?;
        read_until(&mut s, &mut raw, deadline, |t| {
            t.get(before..)
                .is_some_and(|after| after.contains('\n') && after.trim_end().ends_with('>'))
        })?;
        let text = strip_telnet(&raw);
        let out = text.get(before..).unwrap_or_default().to_string();
        // Echoed command line first, then the command's own output.
        let body: String = out.lines().skip(1).collect::<Vec<_>>().join("\n");
        let body = body.trim_end().trim_end_matches('>').trim().to_string();
        // The console marks failures with "**" (e.g. "**Unknown command: ...").
        if body.lines().any(|l| l.trim_start().starts_with("**")) {
            bail!("ipmi_sim console rejected {cmd:?}: {body}");
        }
        Ok(body)
    }

    fn set_sensor_raw(&self, number: u8, raw: u8) -> anyhow::Result<()> {
        // sensor_set_value MC LUN NUM VALUE GEN-EVENT
        self.inject(&format!("sensor_set_value 0x20 0 {number} {raw} 1"))
    }

    fn set_sensor_bit(&self, number: u8, bit: u8, on: bool) -> anyhow::Result<()> {
        // sensor_set_bit MC LUN NUM BIT VALUE GEN-EVENT
        self.inject(&format!(
            "sensor_set_bit 0x20 0 {number} {bit} {} 1",
            u8::from(on)
        ))
    }

    /// Fan1 to 250 RPM, below its lower critical threshold (500): critical, logs SEL events.
    pub fn fan_fail(&self) -> anyhow::Result<()> {
        self.set_sensor_raw(2, 5)
    }

    /// Fan1 back to 4800 RPM.
    pub fn fan_ok(&self) -> anyhow::Result<()> {
        self.set_sensor_raw(2, 96)
    }

    /// CPU Temp to 90 C, above its upper critical threshold (85).
    pub fn cpu_hot(&self) -> anyhow::Result<()> {
        self.set_sensor_raw(1, 90)
    }

    /// CPU Temp back to 45 C.
    pub fn cpu_ok(&self) -> anyhow::Result<()> {
        self.set_sensor_raw(1, 45)
    }

    /// Asserts "failure detected" (offset 1) on PSU1 Status; logs a SEL event.
    pub fn psu_fail(&self) -> anyhow::Result<()> {
        self.set_sensor_bit(4, 1, true)
    }

    /// Deasserts the PSU failure.
    pub fn psu_ok(&self) -> anyhow::Result<()> {
        self.set_sensor_bit(4, 1, false)
    }

    /// Asserts "uncorrectable ECC" (offset 1) on the DIMM A1 ecc sensor itself.
    pub fn memory_fail(&self) -> anyhow::Result<()> {
        self.set_sensor_bit(5, 1, true)
    }

    /// Adds one SEL record: memory (0x0c) sensor 5, sensor-specific, uncorrectable ECC.
    pub fn add_ecc_event(&self) -> anyhow::Result<()> {
        // sel_add MC TYPE then 13 bytes: timestamp(4) generator(2) evm sensor-type sensor-num
        // event-dir/type data1 data2 data3.
        self.inject(
            "sel_add 0x20 0x02 0x00 0x00 0x00 0x00 0x20 0x00 0x04 0x0c 0x05 0x6f 0x01 0xff 0xff",
        )
    }

    /// Clears the SEL over the network with ipmitool (the console has no command for it).
    pub fn clear_sel(&self) -> anyhow::Result<()> {
        if which("ipmitool").is_none() {
            bail!("ipmitool not found on PATH: install ipmitool (apt-get install ipmitool)");
        }
        let port = self.rmcp_port.to_string();
        let out = Command::new("ipmitool")
            // -C 3: without a fixed cipher suite ipmitool stalls ~10 s per call here.
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &port])
            .args([
                "-U", USER, "-P", PASSWORD, "-N", "1", "-R", "3", "sel", "clear",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running ipmitool")?;
        if !out.status.success() {
            bail!(
                "ipmitool sel clear failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // ipmi_sim erases asynchronously ("please allow a few seconds"): wait until it is empty.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let info = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &port])
                .args(["-U", USER, "-P", PASSWORD, "raw", "0x0a", "0x40"])
                .stdin(Stdio::null())
                .output()?;
            let words: Vec<String> = String::from_utf8_lossy(&info.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if words.len() >= 3 && words[1] == "00" && words[2] == "00" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the SEL was not empty 5 s after sel clear")
    }

    /// Chassis power off (the chassis_control script reads its state from `power.state`).
    pub fn power_off(&self) -> anyhow::Result<()> {
        Ok(std::fs::write(self.dir.path().join("power.state"), "0\n")?)
    }

    /// Chassis power on.
    pub fn power_on(&self) -> anyhow::Result<()> {
        Ok(std::fs::write(self.dir.path().join("power.state"), "1\n")?)
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_until(
    s: &mut TcpStream,
    raw: &mut Vec<u8>,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        if done(&strip_telnet(raw)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "ipmi_sim console did not answer; got {:?}",
                strip_telnet(raw)
            );
        }
        match s.read(&mut buf) {
            Ok(0) => bail!("ipmi_sim console closed; got {:?}", strip_telnet(raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drops telnet negotiation (IAC + two bytes) from console output.
fn strip_telnet(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == 0xFF {
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes everything `ipmi_sim` needs into `w`: state dir, chassis script, FRU image, SDRs
/// compiled by `sdrcomp` and turned into `main_sdr_add` lines, and the two config files.
fn build_fixture(w: &Path, rmcp_port: u16, console_port: u16) -> anyhow::Result<()> {
    let src = fixtures();
    let dir = w
        .to_str()
        .context("temporary directory path is not UTF-8")?;
    std::fs::create_dir_all(w.join("state"))?;

    let chassis = w.join("chassis.sh");
    std::fs::copy(src.join("chassis.sh"), &chassis)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&chassis, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(w.join("power.state"), "1\n")?;
    std::fs::write(w.join("fru.bin"), fru_image())?;

    let out = Command::new("sdrcomp")
        .arg("-r")
        .arg(src.join("sim.sdrs"))
        .stderr(Stdio::piped())
        .output()
        .context("running sdrcomp")?;
    if !out.status.success() {
        bail!("sdrcomp failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(w.join("sdrs.emu"), sdr_add_lines(&out.stdout)?)?;

    let emu = std::fs::read_to_string(src.join("sim.emu.in"))?.replace("@DIR@", dir);
    std::fs::write(w.join("sim.emu"), emu)?;
    let lan = std::fs::read_to_string(src.join("lan.conf.in"))?
        .replace("@DIR@", dir)
        .replace("@PORT@", &rmcp_port.to_string())
        .replace("@CPORT@", &console_port.to_string());
    std::fs::write(w.join("lan.conf"), lan)?;
    Ok(())
}

/// Splits concatenated raw SDR records (5-byte header, byte 4 = body length) into
/// `main_sdr_add 0x20 ...` command lines.
fn sdr_add_lines(raw: &[u8]) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut i = 0;
    while i < raw.len() {
        let Some(&len) = raw.get(i + 4) else {
            bail!("truncated SDR header at byte {i}");
        };
        let end = i + 5 + usize::from(len);
        let Some(rec) = raw.get(i..end) else {
            bail!("truncated SDR record at byte {i}");
        };
        out.push_str("main_sdr_add 0x20");
        for b in rec {
            out.push_str(&format!(" 0x{b:02x}"));
        }
        out.push('\n');
        i = end;
    }
    Ok(out)
}

/// A FRU image per the Platform Management FRU Information Storage Definition v1.0: common
/// header, chassis, board and product info areas, padded to the 256 bytes that
/// `mc_add_fru_data` declares (ipmi_sim fails reads past the end of the file).
pub fn fru_image() -> Vec<u8> {
    fn field(s: &str) -> Vec<u8> {
        // 0xC0 | length: 8-bit ASCII.
        let mut v = vec![0xC0 | (s.len() as u8 & 0x3F)];
        v.extend_from_slice(s.as_bytes());
        v
    }
    fn area(body: Vec<u8>) -> Vec<u8> {
        let mut a = vec![0x01, 0x00];
        a.extend(body);
        a.push(0xC1);
        while (a.len() + 1) % 8 != 0 {
            a.push(0);
        }
        a[1] = ((a.len() + 1) / 8) as u8;
        let sum = a.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        a.push(sum.wrapping_neg());
        a
    }
    let mut chassis = vec![0x17]; // rack mount
    chassis.extend(field("CH-PN-100"));
    chassis.extend(field(&format!("CH-{FRU_SERIAL}")));
    let mut board = vec![0x19, 0, 0, 0]; // English, manufacturing date unspecified
    for f in [
        "ACME Boards",
        "ACME X100 Mainboard",
        FRU_BOARD_SERIAL,
        "MB-PN-42",
        "",
    ] {
        board.extend(field(f));
    }
    let mut product = vec![0x19];
    for f in [
        FRU_MANUFACTURER,
        FRU_PRODUCT,
        FRU_PART_NUMBER,
        "1.0",
        FRU_SERIAL,
        "ASSET-0001",
        "",
    ] {
        product.extend(field(f));
    }
    let (chassis, board, product) = (area(chassis), area(board), area(product));
    let c_off = 1u8;
    let b_off = c_off + (chassis.len() / 8) as u8;
    let p_off = b_off + (board.len() / 8) as u8;
    let mut img = vec![0x01, 0, c_off, b_off, p_off, 0, 0];
    let sum = img.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    img.push(sum.wrapping_neg());
    img.extend(chassis);
    img.extend(board);
    img.extend(product);
    img.resize(256, 0);
    img
}
