//! IPMI collector: sensors, the System Event Log (incrementally), FRU inventory, BMC firmware
//! and chassis power, from the local BMC (`/dev/ipmi0`) or a remote one over RMCP+ (IPMI 2.0).
//!
//! The transport and session come from `ipmi-rs`; everything above it (SDR walk, sensor
//! conversion, SEL and FRU decoding) is done here with raw requests in small chunks, because
//! many BMCs (and `ipmi_sim`) cap response sizes below what the library asks for.
//!
//! Every request waits at most `timeout` for its answer, and a collection makes at most one
//! reconnect, so a BMC that stops answering costs a couple of timeouts, never a hang. The API
//! is blocking: call [`IpmiCollector::collect`] from `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use ipmi_rs::connection::{
    IpmiConnection, LogicalUnit, Message, Request, RequestTargetAddress, Response,
};
use ipmi_rs::rmcp::{
    ActivationError, Rmcp, RmcpIpmiError, RmcpIpmiReceiveError, RmcpIpmiSendError,
    V2_0ActivationError,
};
use muster::pb;

/// Where the BMC is.
#[derive(Clone, PartialEq, Eq)]
pub enum BmcEndpoint {
    /// The host's own BMC through the kernel's IPMI device (e.g. `/dev/ipmi0`).
    Local(PathBuf),
    /// A BMC on the network, reached over RMCP+ (UDP).
    Rmcp {
        host: String,
        port: u16,
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for BmcEndpoint {
    // Hand-written so that the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => f.debug_tuple("Local").field(p).finish(),
            Self::Rmcp {
                host, port, user, ..
            } => f
                .debug_struct("Rmcp")
                .field("host", host)
                .field("port", port)
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Display for BmcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Rmcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Rmcp { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

/// The IPMI-over-LAN port when a spec names none.
pub const DEFAULT_RMCP_PORT: u16 = 623;

impl BmcEndpoint {
    /// "local" (= /dev/ipmi0), "local:/dev/ipmiN", or "rmcp://user@host:port" (port default
    /// 623; IPv6 as [::1]); the password comes separately (from a file in the agent's config),
    /// so it never sits in a command line or a spec that gets logged.
    pub fn parse(spec: &str, password: Option<String>) -> Result<Self, IpmiError> {
        let bad = |why: &str| IpmiError::InvalidEndpoint {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let spec_t = spec.trim();
        if spec_t == "local" {
            return Ok(Self::Local(PathBuf::from("/dev/ipmi0")));
        }
        if let Some(path) = spec_t.strip_prefix("local:") {
            if path.is_empty() {
                return Err(bad("no device path after \"local:\""));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        let Some(rest) = spec_t.strip_prefix("rmcp://") else {
            return Err(bad(
                "expected \"local\", \"local:/dev/ipmiN\" or \"rmcp://user@host[:port]\"",
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some((user, hostport)) = rest.rsplit_once('@') else {
            return Err(bad("no user: write rmcp://USER@HOST[:PORT]"));
        };
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        if user.contains(':') {
            return Err(bad(
                "the password does not belong in the spec; give it separately (password file)",
            ));
        }
        if user.len() > 16 {
            return Err(bad("IPMI user names are at most 16 bytes"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(bad("unclosed '[' in IPv6 address"));
            };
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
                ),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            None => DEFAULT_RMCP_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(bad("port must be a number from 1 to 65535")),
            },
        };
        let Some(password) = password else {
            return Err(bad("no password given for the RMCP+ user"));
        };
        Ok(Self::Rmcp {
            host: host.to_string(),
            port,
            user: user.to_string(),
            password,
        })
    }
}

/// Why a collection failed; each message says which BMC and what to check.
#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    #[error("invalid BMC endpoint {spec:?}: {why}")]
    InvalidEndpoint { spec: String, why: String },
    #[error("BMC {bmc} did not answer within {timeout:?}")]
    Timeout { bmc: String, timeout: Duration },
    #[error("BMC {bmc} refused the connection (nothing listening on that UDP port?)")]
    Refused { bmc: String },
    #[error("authentication failed for user {user} at BMC {bmc} ({detail})")]
    AuthFailed {
        bmc: String,
        user: String,
        detail: String,
    },
    #[error("cannot resolve BMC address {bmc}: {source}")]
    Resolve { bmc: String, source: std::io::Error },
    #[error(
        "cannot open IPMI device {path}: {source} (is the ipmi_devintf kernel module loaded, and does the agent run as root?)"
    )]
    Device {
        path: String,
        source: std::io::Error,
    },
    #[error("could not open an RMCP+ session with BMC {bmc}: {detail}")]
    Session { bmc: String, detail: String },
    #[error("BMC {bmc}: {what} failed with completion code 0x{cc:02x} ({meaning})")]
    Command {
        bmc: String,
        what: &'static str,
        cc: u8,
        meaning: &'static str,
    },
    #[error("BMC {bmc}: {what}: {detail}")]
    Protocol {
        bmc: String,
        what: &'static str,
        detail: String,
    },
    #[error("I/O error talking to BMC {bmc}: {source}")]
    Io { bmc: String, source: std::io::Error },
}

impl IpmiError {
    /// Whether the error is about the link or session (drop it) rather than one command.
    fn is_link(&self) -> bool {
        !matches!(self, Self::Command { .. })
    }
}

/// One collection's result.
#[derive(Debug, Clone, Default)]
pub struct IpmiSnapshot {
    /// BMC firmware revision from Get Device ID, e.g. "1.02".
    pub firmware: Option<String>,
    pub sensors: Vec<pb::Sensor>,
    /// Entries after the cursor, oldest first (first call: the whole SEL).
    pub new_sel: Vec<pb::SelEntry>,
    /// The SEL was cleared (the cursor's record is gone / ids restarted): `new_sel` is then the
    /// whole current SEL.
    pub sel_reset: bool,
    pub fru: Option<pb::Fru>,
    pub power: pb::PowerState,
}

/// Keeps the session and the SEL cursor between collections.
pub struct IpmiCollector {
    endpoint: BmcEndpoint,
    timeout: Duration,
    conn: Option<Conn>,
    sdr: Option<Vec<SdrSensor>>,
    sel_cursor: Option<u16>,
    /// "Most recent erase" time from Get SEL Info when the cursor was taken: a change means the
    /// SEL was cleared even if record ids happen to be reused.
    sel_erase_ts: Option<u32>,
}

impl std::fmt::Debug for IpmiCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiCollector")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .field("connected", &self.conn.is_some())
            .field("sel_cursor", &self.sel_cursor)
            .finish()
    }
}

/// Upper bounds for the walks, so a BMC with a broken linked list cannot loop us forever.
const MAX_SDR_RECORDS: usize = 1024;
const MAX_SEL_RECORDS: usize = 8192;
/// Bytes per Get SDR / Read FRU Data request: small enough for every BMC we know of.
const CHUNK: u8 = 16;

impl IpmiCollector {
    /// A collector that connects lazily on the first `collect`.
    pub fn new(endpoint: BmcEndpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            conn: None,
            sdr: None,
            sel_cursor: None,
            sel_erase_ts: None,
        }
    }

    /// Blocking (call it from spawn_blocking). Every network wait is bounded by `timeout`, so a
    /// BMC that never answers makes this return an error within a few multiples of it, never
    /// hang. On error the session is dropped and re-established next call.
    pub fn collect(&mut self) -> Result<IpmiSnapshot, IpmiError> {
        // ipmi-rs 0.6 has a few `unwrap`s on network paths (e.g. a failed UDP send); a panic
        // there must not take the agent down, so it becomes an error and a fresh session.
        let bmc = self.endpoint.to_string();
        let result = catch_unwind(AssertUnwindSafe(|| self.collect_inner()));
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(IpmiError::Protocol {
                    bmc,
                    what: "IPMI library",
                    detail: format!("panicked: {detail}"),
                })
            }
        };
        if result.is_err() {
            self.conn = None;
            self.sdr = None;
        }
        result
    }

    /// The SEL cursor (last record id seen), so an agent can persist it across restarts.
    pub fn sel_cursor(&self) -> Option<u16> {
        self.sel_cursor
    }

    /// Restores a persisted SEL cursor (None: the next collection returns the whole SEL).
    pub fn set_sel_cursor(&mut self, c: Option<u16>) {
        self.sel_cursor = c;
        self.sel_erase_ts = None;
    }

    fn collect_inner(&mut self) -> Result<IpmiSnapshot, IpmiError> {
        let reused = self.conn.is_some();
        if !reused {
            self.conn = Some(Conn::open(&self.endpoint, self.timeout)?);
        }
        // A kept session may have expired on the BMC (idle timeout): retry once with a new one.
        let device_id = match self.raw(0x06, 0x01, &[], "Get Device ID") {
            Ok(d) => d,
            Err(e) if reused && e.is_link() => {
                tracing::debug!(error = %e, "IPMI session seems stale; reconnecting");
                self.conn = None;
                self.sdr = None;
                self.conn = Some(Conn::open(&self.endpoint, self.timeout)?);
                self.raw(0x06, 0x01, &[], "Get Device ID")?
            }
            Err(e) => return Err(e),
        };
        let firmware = firmware_from_device_id(&device_id);

        if self.sdr.is_none() {
            self.sdr = Some(self.read_sdrs()?);
        }
        let sdrs = self.sdr.take().unwrap_or_default();
        let sensors = self.read_sensors(&sdrs);
        let sel = self.read_sel(&sdrs);
        self.sdr = Some(sdrs);
        let sensors = sensors?;
        let (new_sel, sel_reset) = sel?;
        let fru = self.read_fru()?;
        let power = self.read_power()?;
        Ok(IpmiSnapshot {
            firmware,
            sensors,
            new_sel,
            sel_reset,
            fru,
            power,
        })
    }

    /// Sends one request and returns the response data after the completion code.
    fn raw(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, IpmiError> {
        let bmc = self.endpoint.to_string();
        let conn = self.conn.as_mut().ok_or_else(|| IpmiError::Protocol {
            bmc: bmc.clone(),
            what,
            detail: "no session".into(),
        })?;
        let resp = conn.request(netfn, cmd, data, &self.endpoint, self.timeout, what)?;
        match resp.first() {
            None => Err(IpmiError::Protocol {
                bmc,
                what,
                detail: "empty response".into(),
            }),
            Some(0) => Ok(resp[1..].to_vec()),
            Some(&cc) => Err(IpmiError::Command {
                bmc,
                what,
                cc,
                meaning: completion_code_meaning(cc),
            }),
        }
    }

    // ---------------------------------------------------------------- SDR repository

    /// Walks the SDR repository with Reserve SDR Repository + Get SDR in 16-byte pieces.
    fn read_sdrs(&mut self) -> Result<Vec<SdrSensor>, IpmiError> {
        let mut out = Vec::new();
        let mut reservation = self.reserve_sdr()?;
        let mut id: u16 = 0x0000;
        let mut seen = HashSet::new();
        for _ in 0..MAX_SDR_RECORDS {
            if id == 0xFFFF || !seen.insert(id) {
                break;
            }
            let mut attempt = 0;
            let (next, record) = loop {
                match self.read_sdr_record(reservation, id) {
                    Ok(r) => break r,
                    // Reservation cancelled (the repository changed under us): reserve again.
                    Err(IpmiError::Command { cc: 0xC5, .. }) if attempt < 3 => {
                        attempt += 1;
                        reservation = self.reserve_sdr()?;
                    }
                    Err(e) => return Err(e),
                }
            };
            if let Some(s) = parse_sdr(&record) {
                out.push(s);
            }
            id = next;
        }
        Ok(out)
    }

    fn reserve_sdr(&mut self) -> Result<u16, IpmiError> {
        match self.raw(0x0a, 0x22, &[], "Reserve SDR Repository") {
            Ok(d) if d.len() >= 2 => Ok(u16::from_le_bytes([d[0], d[1]])),
            Ok(_) => Err(self.short("Reserve SDR Repository")),
            // Reservation unsupported: 0 is accepted for reads then.
            Err(IpmiError::Command { cc: 0xC1, .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// One SDR record (header + body): returns the next record id and the bytes.
    fn read_sdr_record(&mut self, reservation: u16, id: u16) -> Result<(u16, Vec<u8>), IpmiError> {
        let what = "Get SDR";
        let [r0, r1] = reservation.to_le_bytes();
        let [i0, i1] = id.to_le_bytes();
        let head = self.raw(0x0a, 0x23, &[r0, r1, i0, i1, 0, 5], what)?;
        if head.len() < 7 {
            return Err(self.short(what));
        }
        let next = u16::from_le_bytes([head[0], head[1]]);
        let mut record = head[2..7].to_vec();
        let total = 5 + usize::from(record[4]);
        // Ask by the record's own id from here on (id 0 means "first", which need not be 0).
        let [i0, i1] = [record[0], record[1]];
        while record.len() < total {
            let offset = record.len();
            let want = (total - offset).min(usize::from(CHUNK));
            let (Ok(off8), Ok(want8)) = (u8::try_from(offset), u8::try_from(want)) else {
                return Err(IpmiError::Protocol {
                    bmc: self.endpoint.to_string(),
                    what,
                    detail: format!("record {id:#06x} is longer than 255 bytes"),
                });
            };
            let part = self.raw(0x0a, 0x23, &[r0, r1, i0, i1, off8, want8], what)?;
            if part.len() <= 2 {
                return Err(self.short(what));
            }
            record.extend_from_slice(&part[2..]);
        }
        record.truncate(total);
        Ok((next, record))
    }

    fn short(&self, what: &'static str) -> IpmiError {
        IpmiError::Protocol {
            bmc: self.endpoint.to_string(),
            what,
            detail: "response too short".into(),
        }
    }

    // ---------------------------------------------------------------- sensors

    fn read_sensors(&mut self, sdrs: &[SdrSensor]) -> Result<Vec<pb::Sensor>, IpmiError> {
        let mut out = Vec::new();
        for s in sdrs {
            // Sensors owned by another controller (or system software) would need bridging:
            // only the BMC's own (IPMB address 0x20).
            if s.owner != 0x20 {
                continue;
            }
            let reading = match self.raw(0x04, 0x2d, &[s.number], "Get Sensor Reading") {
                Ok(r) => r,
                Err(e) if !e.is_link() => {
                    tracing::debug!(sensor = %s.name, error = %e, "sensor skipped");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if reading.len() < 2 {
                continue;
            }
            // Bit 5: reading/state unavailable (absent device, not yet scanned).
            if reading[1] & 0x20 != 0 {
                continue;
            }
            let state1 = reading.get(2).copied().unwrap_or(0);
            let state2 = reading.get(3).copied().unwrap_or(0);
            if s.reading_type == 0x01 {
                let thresholds = self.thresholds(s)?;
                out.push(threshold_sensor(s, reading[0], state1, &thresholds));
            } else {
                out.push(discrete_sensor(s, state1, state2));
            }
        }
        Ok(out)
    }

    /// Current thresholds from Get Sensor Thresholds, else the SDR's initial ones.
    fn thresholds(&mut self, s: &SdrSensor) -> Result<Thresholds, IpmiError> {
        match self.raw(0x04, 0x27, &[s.number], "Get Sensor Thresholds") {
            Ok(d) if d.len() >= 7 => Ok(Thresholds {
                readable: d[0],
                raw: [d[1], d[2], d[3], d[4], d[5], d[6]],
            }),
            Ok(_) => Ok(s.sdr_thresholds.clone()),
            Err(e) if !e.is_link() => Ok(s.sdr_thresholds.clone()),
            Err(e) => Err(e),
        }
    }

    // ---------------------------------------------------------------- SEL

    fn read_sel(&mut self, sdrs: &[SdrSensor]) -> Result<(Vec<pb::SelEntry>, bool), IpmiError> {
        let info = self.raw(0x0a, 0x40, &[], "Get SEL Info")?;
        if info.len() < 13 {
            return Err(self.short("Get SEL Info"));
        }
        let entries = u16::from_le_bytes([info[1], info[2]]);
        let erase_ts = u32::from_le_bytes([info[9], info[10], info[11], info[12]]);
        let erased_since = matches!(self.sel_erase_ts, Some(prev) if prev != erase_ts);
        self.sel_erase_ts = Some(erase_ts);

        if entries == 0 {
            let reset = self.sel_cursor.is_some() || erased_since;
            self.sel_cursor = None;
            return Ok((Vec::new(), reset));
        }
        let reservation = match self.raw(0x0a, 0x42, &[], "Reserve SEL") {
            Ok(d) if d.len() >= 2 => u16::from_le_bytes([d[0], d[1]]),
            Ok(_) => 0,
            Err(e) if !e.is_link() => 0,
            Err(e) => return Err(e),
        };

        let mut reset = erased_since;
        let mut start = 0x0000;
        if let (Some(cursor), false) = (self.sel_cursor, erased_since) {
            match self.get_sel_entry(reservation, cursor) {
                Ok((next, _)) => {
                    if next == 0xFFFF {
                        return Ok((Vec::new(), false));
                    }
                    start = next;
                }
                // The cursor's record is gone: the SEL was cleared (or wrapped).
                Err(e) if !e.is_link() => reset = true,
                Err(e) => return Err(e),
            }
        }

        let names = SensorNames::new(sdrs);
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut id = start;
        for _ in 0..MAX_SEL_RECORDS {
            if id == 0xFFFF || !seen.insert(id) {
                break;
            }
            let (next, rec) = match self.get_sel_entry(reservation, id) {
                Ok(r) => r,
                // Deleted between Get SEL Info and here, or a broken chain: stop, keep what we have.
                Err(e) if !e.is_link() && !out.is_empty() => {
                    tracing::debug!(error = %e, "SEL walk stopped");
                    break;
                }
                Err(e) => return Err(e),
            };
            let record_id = u16::from_le_bytes([rec[0], rec[1]]);
            out.push(decode_sel(&rec, &names));
            self.sel_cursor = Some(record_id);
            id = next;
        }
        Ok((out, reset))
    }

    fn get_sel_entry(&mut self, reservation: u16, id: u16) -> Result<(u16, [u8; 16]), IpmiError> {
        let [r0, r1] = reservation.to_le_bytes();
        let [i0, i1] = id.to_le_bytes();
        let d = self.raw(0x0a, 0x43, &[r0, r1, i0, i1, 0, 0xFF], "Get SEL Entry")?;
        if d.len() < 18 {
            return Err(self.short("Get SEL Entry"));
        }
        let mut rec = [0u8; 16];
        rec.copy_from_slice(&d[2..18]);
        Ok((u16::from_le_bytes([d[0], d[1]]), rec))
    }

    // ---------------------------------------------------------------- FRU

    /// FRU device 0 (the board the BMC sits on). A missing or malformed FRU is `None`, not an
    /// error: inventory fields are nice to have, sensors and SEL are not to be lost for them.
    fn read_fru(&mut self) -> Result<Option<pb::Fru>, IpmiError> {
        let info = match self.raw(0x0a, 0x10, &[0], "Get FRU Inventory Area Info") {
            Ok(d) if d.len() >= 3 => d,
            Ok(_) => return Ok(None),
            Err(e) if !e.is_link() => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = usize::from(u16::from_le_bytes([info[0], info[1]]));
        let by_words = info[2] & 1 == 1;
        let header = match self.read_fru_bytes(0, 8, size, by_words)? {
            Some(h) => h,
            None => return Ok(None),
        };
        if header.len() < 8 || header[0] & 0x0F != 1 || checksum(&header[..8]) != 0 {
            tracing::debug!("FRU common header invalid");
            return Ok(None);
        }
        let mut board = None;
        let mut product = None;
        for (idx, slot) in [(3usize, &mut board), (4usize, &mut product)] {
            let off = usize::from(header[idx]) * 8;
            if off == 0 {
                continue;
            }
            let Some(h) = self.read_fru_bytes(off, 2, size, by_words)? else {
                continue;
            };
            let len = usize::from(h[1]) * 8;
            if len < 2 {
                continue;
            }
            if let Some(area) = self.read_fru_bytes(off, len, size, by_words)? {
                *slot = Some(area);
            }
        }
        Ok(fru_from_areas(board.as_deref(), product.as_deref()))
    }

    /// Reads `len` FRU bytes at `offset` in small pieces; `None` when the BMC refuses.
    fn read_fru_bytes(
        &mut self,
        offset: usize,
        len: usize,
        size: usize,
        by_words: bool,
    ) -> Result<Option<Vec<u8>>, IpmiError> {
        if offset + len > size {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(len);
        let mut chunk = usize::from(CHUNK);
        let mut guard = 0;
        while out.len() < len {
            guard += 1;
            if guard > 4096 {
                return Ok(None);
            }
            let at = offset + out.len();
            let want = (len - out.len()).min(chunk);
            let (addr, count) = if by_words {
                (at / 2, want.div_ceil(2))
            } else {
                (at, want)
            };
            let (Ok(addr), Ok(count)) = (u16::try_from(addr), u8::try_from(count)) else {
                return Ok(None);
            };
            let [a0, a1] = addr.to_le_bytes();
            match self.raw(0x0a, 0x11, &[0, a0, a1, count], "Read FRU Data") {
                Ok(d) if d.len() > 1 => {
                    let n = usize::from(d[0]).min(d.len() - 1);
                    let n = if by_words { n * 2 } else { n };
                    let got = &d[1..];
                    let take = n.min(got.len()).min(len - out.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    out.extend_from_slice(&got[..take]);
                }
                Ok(_) => return Ok(None),
                // "Cannot return that many bytes": ask for less.
                Err(IpmiError::Command { cc: 0xCA, .. }) if chunk > 1 => chunk /= 2,
                Err(e) if !e.is_link() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(out))
    }

    // ---------------------------------------------------------------- chassis

    fn read_power(&mut self) -> Result<pb::PowerState, IpmiError> {
        match self.raw(0x00, 0x01, &[], "Get Chassis Status") {
            Ok(d) if !d.is_empty() => Ok(if d[0] & 1 == 1 {
                pb::PowerState::PowerOn
            } else {
                pb::PowerState::PowerOff
            }),
            Ok(_) => Ok(pb::PowerState::Unspecified),
            Err(e) if !e.is_link() => Ok(pb::PowerState::Unspecified),
            Err(e) => Err(e),
        }
    }
}

// -------------------------------------------------------------------- transport

/// An open connection: a kernel device or an activated RMCP+ session.
enum Conn {
    Local(ipmi_rs::File),
    // Boxed: the session holds a 1 KiB receive buffer.
    Lan(Box<Rmcp>),
}

impl Conn {
    fn open(endpoint: &BmcEndpoint, timeout: Duration) -> Result<Self, IpmiError> {
        match endpoint {
            BmcEndpoint::Local(path) => {
                ipmi_rs::File::new(path, timeout)
                    .map(Conn::Local)
                    .map_err(|source| IpmiError::Device {
                        path: path.display().to_string(),
                        source,
                    })
            }
            BmcEndpoint::Rmcp {
                host,
                port,
                user,
                password,
            } => {
                let bmc = endpoint.to_string();
                let mut rmcp = Rmcp::new((host.as_str(), *port), timeout).map_err(|source| {
                    IpmiError::Resolve {
                        bmc: bmc.clone(),
                        source,
                    }
                })?;
                rmcp.activate(true, Some(user), Some(password.as_bytes()))
                    .map_err(|e| activation_error(e, &bmc, user, timeout))?;
                Ok(Conn::Lan(Box::new(rmcp)))
            }
        }
    }

    /// Sends a request and returns the raw response (completion code first). Responses to an
    /// earlier, timed-out request are skipped (a few at most), so they cannot be mistaken for
    /// this one's.
    fn request(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        endpoint: &BmcEndpoint,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Vec<u8>, IpmiError> {
        let bmc = || endpoint.to_string();
        let mut req = Request::new(
            Message::new_raw(netfn, cmd, data.to_vec()),
            RequestTargetAddress::Bmc(LogicalUnit::Zero),
        );
        let matches = |r: &Response| r.netfn_raw() == (netfn | 1) && r.cmd() == cmd;
        match self {
            Conn::Local(f) => {
                let map = |source: std::io::Error| match source.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        IpmiError::Timeout {
                            bmc: bmc(),
                            timeout,
                        }
                    }
                    _ => IpmiError::Io { bmc: bmc(), source },
                };
                f.send(&mut req).map_err(map)?;
                for _ in 0..4 {
                    let r = f.recv().map_err(map)?;
                    if matches(&r) {
                        return Ok(with_cc(&r));
                    }
                }
            }
            Conn::Lan(rmcp) => {
                rmcp.send(&mut req)
                    .map_err(|e| link_error(e, &bmc(), timeout))?;
                for _ in 0..4 {
                    let r = rmcp.recv().map_err(|e| link_error(e, &bmc(), timeout))?;
                    if matches(&r) {
                        return Ok(with_cc(&r));
                    }
                }
            }
        }
        Err(IpmiError::Protocol {
            bmc: bmc(),
            what,
            detail: "responses did not match the request".into(),
        })
    }
}

fn with_cc(r: &Response) -> Vec<u8> {
    let mut v = Vec::with_capacity(r.data().len() + 1);
    v.push(r.cc());
    v.extend_from_slice(r.data());
    v
}

fn io_error(e: std::io::Error, bmc: &str, timeout: Duration) -> IpmiError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => IpmiError::Timeout {
            bmc: bmc.to_string(),
            timeout,
        },
        std::io::ErrorKind::ConnectionRefused => IpmiError::Refused {
            bmc: bmc.to_string(),
        },
        _ => IpmiError::Io {
            bmc: bmc.to_string(),
            source: e,
        },
    }
}

fn receive_error(e: RmcpIpmiReceiveError, bmc: &str, timeout: Duration) -> IpmiError {
    match e {
        RmcpIpmiReceiveError::Io(io) => io_error(io, bmc, timeout),
        other => IpmiError::Protocol {
            bmc: bmc.to_string(),
            what: "RMCP+ receive",
            detail: format!("{other:?}"),
        },
    }
}

fn link_error(e: RmcpIpmiError, bmc: &str, timeout: Duration) -> IpmiError {
    match e {
        RmcpIpmiError::Receive(r) => receive_error(r, bmc, timeout),
        RmcpIpmiError::Send(RmcpIpmiSendError::V2_0(ipmi_rs::rmcp::V2_0WriteError::Io(io))) => {
            io_error(io, bmc, timeout)
        }
        other => IpmiError::Protocol {
            bmc: bmc.to_string(),
            what: "RMCP+ send",
            detail: format!("{other:?}"),
        },
    }
}

fn activation_error(e: ActivationError, bmc: &str, user: &str, timeout: Duration) -> IpmiError {
    let auth = |detail: &str| IpmiError::AuthFailed {
        bmc: bmc.to_string(),
        user: user.to_string(),
        detail: detail.to_string(),
    };
    let session = |detail: String| IpmiError::Session {
        bmc: bmc.to_string(),
        detail,
    };
    match e {
        ActivationError::PingSend(io)
        | ActivationError::PongReceive(io)
        | ActivationError::BindSocket(io) => io_error(io, bmc, timeout),
        ActivationError::GetChannelAuthenticationCapabilities(ipmi_rs::IpmiError::Connection(
            c,
        )) => link_error(c, bmc, timeout),
        ActivationError::V2_0(v2) => match v2 {
            V2_0ActivationError::Io(io) => io_error(io, bmc, timeout),
            V2_0ActivationError::OpenSessionResponseReceive(r)
            | V2_0ActivationError::RakpMessage2Receive(r)
            | V2_0ActivationError::RakpMessage4Receive(r) => receive_error(r, bmc, timeout),
            V2_0ActivationError::ServerAuthenticationFailed
            | V2_0ActivationError::RakpMessage4InvalidIntegrityCheckValue => {
                auth("wrong password?")
            }
            V2_0ActivationError::RakpMessage2Parse(p) => {
                auth(&format!("BMC refused the user: {p:?}"))
            }
            V2_0ActivationError::RakpMessage4Parse(p) => {
                auth(&format!("BMC refused the login: {p:?}"))
            }
            other => session(format!("{other:?}")),
        },
        ActivationError::IpmiNotSupported => session("the host does not speak IPMI".into()),
        ActivationError::NoSupportedIpmiLANVersions => {
            session("the BMC offers neither IPMI 2.0 (RMCP+) nor 1.5 sessions".into())
        }
        ActivationError::V1_5(v) => session(format!(
            "the BMC offers only IPMI 1.5 sessions, which failed: {v:?}"
        )),
        other => session(format!("{other:?}")),
    }
}

fn completion_code_meaning(cc: u8) -> &'static str {
    match cc {
        0xC0 => "node busy",
        0xC1 => "invalid or unsupported command",
        0xC2 => "invalid for this LUN",
        0xC3 => "timeout while processing",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for this sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "not supported in present state",
        0xD6 => "sub-function disabled",
        0xFF => "unspecified error",
        _ => "device-specific or unknown",
    }
}

// -------------------------------------------------------------------- device id

/// "MAJOR.MINOR" as ipmitool prints it (minor is BCD, two digits).
fn firmware_from_device_id(d: &[u8]) -> Option<String> {
    if d.len() < 4 {
        return None;
    }
    Some(format!("{}.{:02x}", d[2] & 0x7F, d[3]))
}

// -------------------------------------------------------------------- SDR parsing

/// Raw thresholds in Get Sensor Thresholds order: lnc, lc, lnr, unc, uc, unr; `readable` has
/// one bit per threshold in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
struct Thresholds {
    readable: u8,
    raw: [u8; 6],
}

/// What we keep of a full or compact sensor record.
#[derive(Debug, Clone, PartialEq)]
struct SdrSensor {
    owner: u8,
    number: u8,
    sensor_type: u8,
    reading_type: u8,
    name: String,
    /// Analog conversion (full records of threshold sensors only).
    analog: Option<Analog>,
    unit: String,
    sdr_thresholds: Thresholds,
}

#[derive(Debug, Clone, PartialEq)]
struct Analog {
    /// 0 unsigned, 1 one's complement, 2 two's complement.
    format: u8,
    linearization: u8,
    m: i32,
    b: i32,
    r_exp: i32,
    b_exp: i32,
}

impl Analog {
    fn convert(&self, raw: u8) -> f64 {
        let x = match self.format {
            1 => {
                let v = raw as i8;
                if v < 0 {
                    f64::from(v) + 1.0
                } else {
                    f64::from(v)
                }
            }
            2 => f64::from(raw as i8),
            _ => f64::from(raw),
        };
        let y = (f64::from(self.m) * x + f64::from(self.b) * 10f64.powi(self.b_exp))
            * 10f64.powi(self.r_exp);
        let y = match self.linearization {
            1 => y.ln(),
            2 => y.log10(),
            3 => y.log2(),
            4 => y.exp(),
            5 => 10f64.powf(y),
            6 => y.exp2(),
            7 => 1.0 / y,
            8 => y * y,
            9 => y * y * y,
            10 => y.sqrt(),
            11 => y.cbrt(),
            _ => y,
        };
        // Trim float noise (0.06 * 200 = 12.000000000000002).
        (y * 1e6).round() / 1e6
    }
}

fn sign_extend(v: u32, bits: u32) -> i32 {
    let shift = 32 - bits;
    ((v << shift) as i32) >> shift
}

/// Parses a full (type 1) or compact (type 2) sensor record; other records are skipped.
fn parse_sdr(r: &[u8]) -> Option<SdrSensor> {
    let rtype = *r.get(3)?;
    let (id_at, full) = match rtype {
        0x01 => (47usize, true),
        0x02 => (31usize, false),
        _ => return None,
    };
    if r.len() < id_at + 1 {
        return None;
    }
    let owner = r[5];
    let number = r[7];
    let sensor_type = r[12];
    let reading_type = r[13];
    let units1 = r[20];
    let percentage = units1 & 1 == 1;
    let unit = unit_name(r[21], percentage);
    let name = decode_type_length(r[id_at], &r[id_at + 1..]).unwrap_or_default();
    let name = if name.is_empty() {
        format!("sensor {number:#04x}")
    } else {
        name
    };
    let format = units1 >> 6;
    let analog = (full && format != 3).then(|| Analog {
        format,
        linearization: r[23] & 0x7F,
        m: sign_extend(u32::from(r[24]) | (u32::from(r[25] >> 6) << 8), 10),
        b: sign_extend(u32::from(r[26]) | (u32::from(r[27] >> 6) << 8), 10),
        r_exp: sign_extend(u32::from(r[29] >> 4), 4),
        b_exp: sign_extend(u32::from(r[29] & 0x0F), 4),
    });
    let sdr_thresholds = if full && reading_type == 0x01 {
        // Readable-threshold mask is byte 18 (bits 0-5: lnc lc lnr unc uc unr); values 36..41
        // are stored unr uc unc lnr lc lnc.
        Thresholds {
            readable: r[18] & 0x3F,
            raw: [r[41], r[40], r[39], r[38], r[37], r[36]],
        }
    } else {
        Thresholds::default()
    };
    Some(SdrSensor {
        owner,
        number,
        sensor_type,
        reading_type,
        name,
        analog,
        unit,
        sdr_thresholds,
    })
}

/// Decodes an IPMI type/length field (SDR id strings, FRU fields).
fn decode_type_length(tl: u8, data: &[u8]) -> Option<String> {
    let len = usize::from(tl & 0x3F);
    let bytes = data.get(..len)?;
    let s = match tl >> 6 {
        // Binary: show as hex.
        0 => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        // BCD plus.
        1 => bytes
            .iter()
            .flat_map(|b| [b & 0x0F, b >> 4])
            .map(|n| match n {
                0..=9 => char::from(b'0' + n),
                0xA => ' ',
                0xB => '-',
                0xC => '.',
                _ => '?',
            })
            .collect(),
        // 6-bit packed ASCII: four characters in three bytes, least significant bits first.
        2 => {
            let mut out = String::new();
            for group in bytes.chunks(3) {
                let mut v: u32 = 0;
                for (i, b) in group.iter().enumerate() {
                    v |= u32::from(*b) << (8 * i);
                }
                let chars = group.len() * 8 / 6;
                for i in 0..chars {
                    let c = ((v >> (6 * i)) & 0x3F) as u8;
                    out.push(char::from(c + 0x20));
                }
            }
            out
        }
        // 8-bit (Latin-1 / ASCII).
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    Some(s.trim_end_matches(['\0', ' ']).trim().to_string())
}

fn unit_name(code: u8, percentage: bool) -> String {
    let u = match code {
        0 => "",
        1 => "C",
        2 => "F",
        3 => "K",
        4 => "V",
        5 => "A",
        6 => "W",
        7 => "J",
        8 => "C (coulomb)",
        9 => "VA",
        10 => "nits",
        11 => "lm",
        12 => "lx",
        13 => "cd",
        14 => "kPa",
        15 => "PSI",
        16 => "N",
        17 => "CFM",
        18 => "RPM",
        19 => "Hz",
        20 => "us",
        21 => "ms",
        22 => "s",
        23 => "min",
        24 => "h",
        25 => "d",
        26 => "week",
        27 => "mil",
        28 => "in",
        29 => "ft",
        30 => "cu in",
        31 => "cu ft",
        32 => "mm",
        33 => "cm",
        34 => "m",
        35 => "cu cm",
        36 => "cu m",
        37 => "l",
        38 => "fl oz",
        39 => "rad",
        40 => "sr",
        41 => "revolutions",
        42 => "cycles",
        43 => "g",
        44 => "oz",
        45 => "lb",
        46 => "ft-lb",
        47 => "oz-in",
        48 => "gauss",
        49 => "gilberts",
        50 => "H",
        51 => "mH",
        52 => "F (farad)",
        53 => "uF",
        54 => "ohm",
        55 => "S",
        56 => "mol",
        57 => "Bq",
        58 => "ppm",
        60 => "dB",
        61 => "dBA",
        62 => "dBC",
        63 => "Gy",
        64 => "Sv",
        65 => "K (color)",
        66 => "bit",
        67 => "kbit",
        68 => "Mbit",
        69 => "Gbit",
        70 => "B",
        71 => "kB",
        72 => "MB",
        73 => "GB",
        74 => "word",
        75 => "dword",
        76 => "qword",
        77 => "line",
        78 => "hit",
        79 => "miss",
        80 => "retry",
        81 => "reset",
        82 => "overrun",
        83 => "underrun",
        84 => "collision",
        85 => "packets",
        86 => "messages",
        87 => "characters",
        88 => "errors",
        89 => "correctable errors",
        90 => "uncorrectable errors",
        91 => "fatal errors",
        92 => "grams",
        _ => "",
    };
    if percentage {
        if u.is_empty() {
            "%".into()
        } else {
            format!("% {u}")
        }
    } else {
        u.to_string()
    }
}

// -------------------------------------------------------------------- sensor state

fn threshold_sensor(s: &SdrSensor, raw: u8, status: u8, t: &Thresholds) -> pb::Sensor {
    let conv = |r: u8| s.analog.as_ref().map(|a| a.convert(r));
    let value = conv(raw).unwrap_or(f64::from(raw));
    let get = |bit: usize| -> Option<f64> {
        if t.readable & (1 << bit) != 0 {
            conv(t.raw[bit])
        } else {
            None
        }
    };
    let (lnc, lc, lnr, unc, uc, unr) = (get(0), get(1), get(2), get(3), get(4), get(5));
    // The BMC's own verdict first: bits 0..5 of the status byte are lnc lc lnr unc uc unr.
    let mut level = if status & 0b11_0110 != 0 {
        2
    } else if status & 0b00_1001 != 0 {
        1
    } else {
        0
    };
    // And our own comparison, for BMCs that do not set the bits.
    let above = |t: Option<f64>| t.is_some_and(|t| value > t + 1e-9);
    let below = |t: Option<f64>| t.is_some_and(|t| value < t - 1e-9);
    if above(uc) || above(unr) || below(lc) || below(lnr) {
        level = 2;
    } else if level == 0 && (above(unc) || below(lnc)) {
        level = 1;
    }
    pb::Sensor {
        name: s.name.clone(),
        r#type: sensor_type_name(s.sensor_type).to_string(),
        value,
        unit: s.unit.clone(),
        state: ["ok", "warning", "critical"][level].to_string(),
        lower_critical: lc,
        lower_non_critical: lnc,
        upper_non_critical: unc,
        upper_critical: uc,
        asserted: Vec::new(),
    }
}

fn discrete_sensor(s: &SdrSensor, state1: u8, state2: u8) -> pb::Sensor {
    let bits = u16::from(state1) | (u16::from(state2 & 0x7F) << 8);
    let mut asserted = Vec::new();
    let mut level = Severity::Info;
    for offset in 0..15u8 {
        if bits & (1 << offset) == 0 {
            continue;
        }
        let (name, sev) = discrete_offset(s.reading_type, s.sensor_type, offset);
        asserted.push(name);
        level = level.max(sev);
    }
    pb::Sensor {
        name: s.name.clone(),
        r#type: sensor_type_name(s.sensor_type).to_string(),
        value: f64::from(bits),
        unit: String::new(),
        state: match level {
            Severity::Info => "ok",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
        .to_string(),
        asserted,
        ..Default::default()
    }
}

/// How bad an asserted state or event is; `severity` on SEL entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// IPMI sensor type codes as lowercase words (IPMI 2.0 table 42-3).
fn sensor_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "temperature",
        0x02 => "voltage",
        0x03 => "current",
        0x04 => "fan",
        0x05 => "physical_security",
        0x06 => "platform_security",
        0x07 => "processor",
        0x08 => "power_supply",
        0x09 => "power_unit",
        0x0a => "cooling_device",
        0x0b => "other_units",
        0x0c => "memory",
        0x0d => "drive_slot",
        0x0e => "post_memory_resize",
        0x0f => "system_firmware_progress",
        0x10 => "event_logging_disabled",
        0x11 => "watchdog1",
        0x12 => "system_event",
        0x13 => "critical_interrupt",
        0x14 => "button_switch",
        0x15 => "module_board",
        0x16 => "microcontroller",
        0x17 => "add_in_card",
        0x18 => "chassis",
        0x19 => "chip_set",
        0x1a => "other_fru",
        0x1b => "cable_interconnect",
        0x1c => "terminator",
        0x1d => "system_boot_initiated",
        0x1e => "boot_error",
        0x1f => "os_boot",
        0x20 => "os_critical_stop",
        0x21 => "slot_connector",
        0x22 => "system_acpi_power_state",
        0x23 => "watchdog2",
        0x24 => "platform_alert",
        0x25 => "entity_presence",
        0x26 => "monitor_asic",
        0x27 => "lan",
        0x28 => "management_subsystem_health",
        0x29 => "battery",
        0x2a => "session_audit",
        0x2b => "version_change",
        0x2c => "fru_state",
        0xc0..=0xff => "oem",
        _ => "unknown",
    }
}

/// Name and severity of a discrete state offset: sensor-specific (reading type 0x6f) tables for
/// the types health rules care about, the generic tables (0x02..0x0c) otherwise.
fn discrete_offset(reading_type: u8, sensor_type: u8, offset: u8) -> (String, Severity) {
    use Severity::{Critical as C, Info as I, Warning as W};
    let hit: Option<(&str, Severity)> = if reading_type == 0x6f {
        match (sensor_type, offset) {
            (0x05, 0) => Some(("general chassis intrusion", W)),
            (0x05, 1) => Some(("drive bay intrusion", W)),
            (0x05, 2) => Some(("I/O card area intrusion", W)),
            (0x05, 3) => Some(("processor area intrusion", W)),
            (0x05, 4) => Some(("LAN leash lost", W)),
            (0x05, 5) => Some(("unauthorized dock", W)),
            (0x05, 6) => Some(("fan area intrusion", W)),
            (0x07, 0) => Some(("IERR", C)),
            (0x07, 1) => Some(("thermal trip", C)),
            (0x07, 2) => Some(("FRB1/BIST failure", C)),
            (0x07, 3) => Some(("FRB2/hang in POST failure", C)),
            (0x07, 4) => Some(("FRB3/processor startup failure", C)),
            (0x07, 5) => Some(("configuration error", W)),
            (0x07, 6) => Some(("uncorrectable CPU-complex error", C)),
            (0x07, 7) => Some(("presence detected", I)),
            (0x07, 8) => Some(("processor disabled", W)),
            (0x07, 9) => Some(("terminator presence detected", I)),
            (0x07, 10) => Some(("processor throttled", W)),
            (0x07, 11) => Some(("machine check exception", C)),
            (0x07, 12) => Some(("correctable machine check error", W)),
            (0x08, 0) => Some(("presence detected", I)),
            (0x08, 1) => Some(("failure detected", C)),
            (0x08, 2) => Some(("predictive failure", W)),
            (0x08, 3) => Some(("input lost", C)),
            (0x08, 4) => Some(("input lost or out of range", C)),
            (0x08, 5) => Some(("input out of range", W)),
            (0x08, 6) => Some(("configuration error", W)),
            (0x08, 7) => Some(("inactive", I)),
            (0x09, 0) => Some(("power off", I)),
            (0x09, 1) => Some(("power cycle", I)),
            (0x09, 2) => Some(("240VA power down", W)),
            (0x09, 3) => Some(("interlock power down", W)),
            (0x09, 4) => Some(("AC lost", C)),
            (0x09, 5) => Some(("soft power control failure", C)),
            (0x09, 6) => Some(("power unit failure", C)),
            (0x09, 7) => Some(("predictive failure", W)),
            (0x0c, 0) => Some(("correctable ECC", W)),
            (0x0c, 1) => Some(("uncorrectable ECC", C)),
            (0x0c, 2) => Some(("parity error", C)),
            (0x0c, 3) => Some(("memory scrub failed", W)),
            (0x0c, 4) => Some(("memory device disabled", W)),
            (0x0c, 5) => Some(("correctable ECC logging limit reached", W)),
            (0x0c, 6) => Some(("presence detected", I)),
            (0x0c, 7) => Some(("configuration error", W)),
            (0x0c, 8) => Some(("spare", I)),
            (0x0c, 9) => Some(("memory throttled", W)),
            (0x0c, 10) => Some(("critical overtemperature", C)),
            (0x0d, 0) => Some(("drive present", I)),
            (0x0d, 1) => Some(("drive fault", C)),
            (0x0d, 2) => Some(("predictive failure", W)),
            (0x0d, 3) => Some(("hot spare", I)),
            (0x0d, 4) => Some(("consistency check in progress", I)),
            (0x0d, 5) => Some(("in critical array", W)),
            (0x0d, 6) => Some(("in failed array", C)),
            (0x0d, 7) => Some(("rebuild in progress", I)),
            (0x0d, 8) => Some(("rebuild aborted", W)),
            (0x10, 0) => Some(("correctable memory error logging disabled", W)),
            (0x10, 1) => Some(("event type logging disabled", W)),
            (0x10, 2) => Some(("log area cleared", I)),
            (0x10, 3) => Some(("all event logging disabled", W)),
            (0x10, 4) => Some(("SEL full", W)),
            (0x10, 5) => Some(("SEL almost full", W)),
            (0x12, 0) => Some(("system reconfigured", I)),
            (0x12, 1) => Some(("OEM system boot event", I)),
            (0x12, 2) => Some(("undetermined system hardware failure", C)),
            (0x12, 3) => Some(("entry added to auxiliary log", I)),
            (0x12, 4) => Some(("PEF action", I)),
            (0x12, 5) => Some(("timestamp clock sync", I)),
            (0x13, 0) => Some(("front panel NMI", W)),
            (0x13, 1) => Some(("bus timeout", W)),
            (0x13, 2) => Some(("I/O channel check NMI", C)),
            (0x13, 3) => Some(("software NMI", W)),
            (0x13, 4) => Some(("PCI PERR", C)),
            (0x13, 5) => Some(("PCI SERR", C)),
            (0x13, 7) => Some(("bus correctable error", W)),
            (0x13, 8) => Some(("bus uncorrectable error", C)),
            (0x13, 9) => Some(("fatal NMI", C)),
            (0x13, 10) => Some(("bus fatal error", C)),
            (0x13, 11) => Some(("bus degraded", W)),
            (0x23, 0) => Some(("timer expired", W)),
            (0x23, 1) => Some(("hard reset", W)),
            (0x23, 2) => Some(("power down", W)),
            (0x23, 3) => Some(("power cycle", W)),
            (0x23, 8) => Some(("timer interrupt", I)),
            (0x25, 0) => Some(("entity present", I)),
            (0x25, 1) => Some(("entity absent", W)),
            (0x25, 2) => Some(("entity disabled", W)),
            (0x29, 0) => Some(("battery low", W)),
            (0x29, 1) => Some(("battery failed", C)),
            (0x29, 2) => Some(("battery presence detected", I)),
            _ => None,
        }
    } else {
        match (reading_type, offset) {
            (0x02, 0) => Some(("transition to idle", I)),
            (0x02, 1) => Some(("transition to active", I)),
            (0x02, 2) => Some(("transition to busy", I)),
            (0x03, 0) => Some(("state deasserted", I)),
            (0x03, 1) => Some(("state asserted", I)),
            (0x04, 0) => Some(("predictive failure deasserted", I)),
            (0x04, 1) => Some(("predictive failure asserted", W)),
            (0x05, 0) => Some(("limit not exceeded", I)),
            (0x05, 1) => Some(("limit exceeded", W)),
            (0x06, 0) => Some(("performance met", I)),
            (0x06, 1) => Some(("performance lags", W)),
            (0x07, 0) => Some(("transition to OK", I)),
            (0x07, 1) => Some(("transition to non-critical from OK", W)),
            (0x07, 2) => Some(("transition to critical from less severe", C)),
            (0x07, 3) => Some(("transition to non-recoverable from less severe", C)),
            (0x07, 4) => Some(("transition to non-critical from more severe", W)),
            (0x07, 5) => Some(("transition to critical from non-recoverable", C)),
            (0x07, 6) => Some(("transition to non-recoverable", C)),
            (0x07, 7) => Some(("monitor", I)),
            (0x07, 8) => Some(("informational", I)),
            (0x08, 0) => Some(("device absent", I)),
            (0x08, 1) => Some(("device present", I)),
            (0x09, 0) => Some(("device disabled", I)),
            (0x09, 1) => Some(("device enabled", I)),
            (0x0a, 0) => Some(("transition to running", I)),
            (0x0a, 1) => Some(("transition to in test", I)),
            (0x0a, 2) => Some(("transition to power off", I)),
            (0x0a, 3) => Some(("transition to on line", I)),
            (0x0a, 4) => Some(("transition to off line", W)),
            (0x0a, 5) => Some(("transition to off duty", I)),
            (0x0a, 6) => Some(("transition to degraded", W)),
            (0x0a, 7) => Some(("transition to power save", I)),
            (0x0a, 8) => Some(("install error", W)),
            (0x0b, 0) => Some(("fully redundant", I)),
            (0x0b, 1) => Some(("redundancy lost", C)),
            (0x0b, 2) => Some(("redundancy degraded", W)),
            (0x0b, 3) => Some(("non-redundant: sufficient resources from redundant", W)),
            (0x0b, 4) => Some(("non-redundant: sufficient resources from insufficient", W)),
            (0x0b, 5) => Some(("non-redundant: insufficient resources", C)),
            (0x0b, 6) => Some(("redundancy degraded from fully redundant", W)),
            (0x0b, 7) => Some(("redundancy degraded from non-redundant", W)),
            (0x0c, 0) => Some(("D0 power state", I)),
            (0x0c, 1) => Some(("D1 power state", I)),
            (0x0c, 2) => Some(("D2 power state", I)),
            (0x0c, 3) => Some(("D3 power state", I)),
            _ => None,
        }
    };
    match hit {
        Some((name, sev)) => (name.to_string(), sev),
        None => (format!("state {offset}"), I),
    }
}

/// Threshold event offsets (reading type 0x01) in IPMI order.
fn threshold_event(offset: u8) -> Option<(&'static str, Severity)> {
    use Severity::{Critical as C, Warning as W};
    Some(match offset {
        0 => ("lower non-critical going low", W),
        1 => ("lower non-critical going high", W),
        2 => ("lower critical going low", C),
        3 => ("lower critical going high", C),
        4 => ("lower non-recoverable going low", C),
        5 => ("lower non-recoverable going high", C),
        6 => ("upper non-critical going low", W),
        7 => ("upper non-critical going high", W),
        8 => ("upper critical going low", C),
        9 => ("upper critical going high", C),
        10 => ("upper non-recoverable going low", C),
        11 => ("upper non-recoverable going high", C),
        _ => return None,
    })
}

// -------------------------------------------------------------------- SEL decoding

/// Sensor names from the SDRs, by (owner, number) and by number alone.
struct SensorNames<'a> {
    by_owner: HashMap<(u8, u8), &'a str>,
    by_number: HashMap<u8, Option<&'a str>>,
}

impl<'a> SensorNames<'a> {
    fn new(sdrs: &'a [SdrSensor]) -> Self {
        let mut by_owner = HashMap::new();
        let mut by_number: HashMap<u8, Option<&'a str>> = HashMap::new();
        for s in sdrs {
            by_owner.insert((s.owner, s.number), s.name.as_str());
            by_number
                .entry(s.number)
                .and_modify(|e| *e = None)
                .or_insert(Some(s.name.as_str()));
        }
        Self {
            by_owner,
            by_number,
        }
    }

    fn get(&self, generator: u8, number: u8) -> Option<&'a str> {
        self.by_owner
            .get(&(generator, number))
            .copied()
            .or_else(|| self.by_number.get(&number).copied().flatten())
    }
}

/// IPMI timestamps at or below this are seconds since BMC start, not since 1970.
const PRE_INIT_TS_MAX: u32 = 0x2000_0000;

/// Decodes one 16-byte SEL record. Time is set only for real (post-init) timestamps.
fn decode_sel(rec: &[u8; 16], names: &SensorNames<'_>) -> pb::SelEntry {
    let record_id = u32::from(u16::from_le_bytes([rec[0], rec[1]]));
    let record_type = rec[2];
    let ts = u32::from_le_bytes([rec[3], rec[4], rec[5], rec[6]]);
    let time = (record_type < 0xE0 && ts > PRE_INIT_TS_MAX && ts != u32::MAX).then_some(
        pbjson_types::Timestamp {
            seconds: i64::from(ts),
            nanos: 0,
        },
    );
    if record_type != 0x02 {
        return pb::SelEntry {
            record_id,
            time,
            sensor_type: "oem".into(),
            event: format!("OEM record type {record_type:#04x}"),
            asserted: true,
            severity: Severity::Info.as_str().into(),
            ..Default::default()
        };
    }
    let generator = rec[7];
    let sensor_type = rec[10];
    let number = rec[11];
    let deassertion = rec[12] & 0x80 != 0;
    let reading_type = rec[12] & 0x7F;
    let offset = rec[13] & 0x0F;
    let (event, sev) = if reading_type == 0x01 {
        threshold_event(offset)
            .map(|(n, s)| (n.to_string(), s))
            .unwrap_or_else(|| (format!("threshold offset {offset}"), Severity::Info))
    } else {
        let (name, sev) = discrete_offset(reading_type, sensor_type, offset);
        // "failure detected" alone reads oddly in a log: say what failed.
        let name = match sensor_type {
            0x08 => format!("power supply {name}"),
            _ => name,
        };
        (name, sev)
    };
    // A deassertion is the condition going away: worth logging, not worth an alarm.
    let severity = if deassertion { Severity::Info } else { sev };
    pb::SelEntry {
        record_id,
        time,
        sensor_type: sensor_type_name(sensor_type).into(),
        sensor: names
            .get(generator, number)
            .map(str::to_string)
            .unwrap_or_else(|| format!("sensor {number:#04x}")),
        event,
        asserted: !deassertion,
        severity: severity.as_str().into(),
    }
}

// -------------------------------------------------------------------- FRU decoding

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The type/length fields of a board (skip 6 bytes) or product (skip 3 bytes) area, in order,
/// up to the end marker. A bad checksum yields nothing.
fn area_fields(area: &[u8], skip: usize) -> Vec<String> {
    let mut out = Vec::new();
    if area.len() < skip || checksum(area) != 0 {
        return out;
    }
    let mut i = skip;
    while i < area.len() && out.len() < 32 {
        let tl = area[i];
        if tl == 0xC1 {
            break;
        }
        let len = usize::from(tl & 0x3F);
        match decode_type_length(tl, &area[i + 1..]) {
            Some(s) => out.push(s),
            None => break,
        }
        i += 1 + len;
    }
    out
}

fn fru_from_areas(board: Option<&[u8]>, product: Option<&[u8]>) -> Option<pb::Fru> {
    // Board: manufacturer, product name, serial, part number. Product: manufacturer, name,
    // part/model number, version, serial, asset tag.
    let b = board.map(|a| area_fields(a, 6)).unwrap_or_default();
    let p = product.map(|a| area_fields(a, 3)).unwrap_or_default();
    if b.is_empty() && p.is_empty() {
        return None;
    }
    let pick = |v: &Vec<String>, i: usize| v.get(i).filter(|s| !s.is_empty()).cloned();
    Some(pb::Fru {
        manufacturer: pick(&p, 0).or_else(|| pick(&b, 0)).unwrap_or_default(),
        product: pick(&p, 1).or_else(|| pick(&b, 1)).unwrap_or_default(),
        serial: pick(&p, 4).or_else(|| pick(&b, 2)).unwrap_or_default(),
        part_number: pick(&p, 2).or_else(|| pick(&b, 3)).unwrap_or_default(),
        board_serial: pick(&b, 2).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            BmcEndpoint::parse("local", None).ok(),
            Some(BmcEndpoint::Local("/dev/ipmi0".into()))
        );
        assert_eq!(
            BmcEndpoint::parse("local:/dev/ipmi1", None).ok(),
            Some(BmcEndpoint::Local("/dev/ipmi1".into()))
        );
        let e = BmcEndpoint::parse("rmcp://admin@10.0.0.5", Some("pw".into())).ok();
        assert_eq!(
            e,
            Some(BmcEndpoint::Rmcp {
                host: "10.0.0.5".into(),
                port: 623,
                user: "admin".into(),
                password: "pw".into()
            })
        );
        let e = BmcEndpoint::parse("rmcp://root@[::1]:6230", Some("pw".into())).ok();
        assert!(matches!(&e, Some(BmcEndpoint::Rmcp { host, port: 6230, .. }) if host == "::1"));
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("[::1]:6230"));
        for bad in [
            "rmcp://host",
            "rmcp://a:b@host",
            "rmcp://a@host:0",
            "rmcp://a@host:x",
            "rmcp://a@[::1",
            "ipmi://a@h",
            "local:",
        ] {
            assert!(BmcEndpoint::parse(bad, Some("p".into())).is_err(), "{bad}");
        }
        assert!(BmcEndpoint::parse("rmcp://a@h", None).is_err());
        let dbg = format!(
            "{:?}",
            BmcEndpoint::parse("rmcp://a@h", Some("hunter2".into()))
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn converts_analog_values() {
        let a = Analog {
            format: 0,
            linearization: 0,
            m: 6,
            b: 0,
            r_exp: -2,
            b_exp: 0,
        };
        assert_eq!(a.convert(200), 12.0);
        assert_eq!(a.convert(180), 10.8);
        assert_eq!(sign_extend(0b1111, 4), -1);
        assert_eq!(sign_extend(0x3FF, 10), -1);
        assert_eq!(sign_extend(0x1FF, 10), 511);
    }

    #[test]
    fn decodes_type_length() {
        assert_eq!(decode_type_length(0xC3, b"abc").as_deref(), Some("abc"));
        // 6-bit packed "IPMI" = 0x29 0x30 0x2D 0x29.
        let v: u32 = 0x29 | (0x30 << 6) | (0x2D << 12) | (0x29 << 18);
        let b = v.to_le_bytes();
        assert_eq!(decode_type_length(0x83, &b[..3]).as_deref(), Some("IPMI"));
        assert_eq!(
            decode_type_length(0x42, &[0x21, 0xC3]).as_deref(),
            Some("123.")
        );
        assert_eq!(decode_type_length(0xC5, b"ab"), None);
    }

    #[test]
    fn threshold_state_from_values() {
        let s = SdrSensor {
            owner: 0x20,
            number: 2,
            sensor_type: 4,
            reading_type: 1,
            name: "Fan1".into(),
            analog: Some(Analog {
                format: 0,
                linearization: 0,
                m: 50,
                b: 0,
                r_exp: 0,
                b_exp: 0,
            }),
            unit: "RPM".into(),
            sdr_thresholds: Thresholds::default(),
        };
        let t = Thresholds {
            readable: 0b11,
            raw: [20, 10, 0, 0, 0, 0],
        };
        let ok = threshold_sensor(&s, 96, 0, &t);
        assert_eq!((ok.value, ok.state.as_str()), (4800.0, "ok"));
        assert_eq!(ok.lower_critical, Some(500.0));
        assert_eq!(ok.lower_non_critical, Some(1000.0));
        assert_eq!(ok.upper_critical, None);
        assert_eq!(threshold_sensor(&s, 15, 0, &t).state, "warning");
        assert_eq!(threshold_sensor(&s, 5, 0, &t).state, "critical");
        // The BMC's status bits count even when the value looks fine.
        assert_eq!(threshold_sensor(&s, 96, 0b10, &t).state, "critical");
    }
}
