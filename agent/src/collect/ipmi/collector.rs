//! The walks over one BMC connection: Get Device ID, the SDR repository (cached while the
//! session lasts), sensor readings and thresholds, the SEL from a cursor, FRU device 0 and
//! chassis status. Every answer's bytes go to the pure decoders beside this file; this file
//! decides only what to ask next and which failures to tolerate.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use muster::pb;

use super::conn::Conn;
use super::device::{firmware_from_device_id, power_from_chassis_status};
use super::error::completion_code_meaning;
use super::fru::{AreaInfo, area_len, area_offsets, fru_from_areas};
use super::sdr::{SdrSensor, Thresholds, parse_sdr};
use super::sel::{SelInfo, SensorNames, decode_sel, parse_sel_entry};
use super::sensor::{Reading, discrete_sensor, threshold_sensor, thresholds_from_response};
use super::{BmcEndpoint, IpmiError};

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
            // Too short, or the reading is unavailable (absent device, not yet scanned).
            let Some(r) = Reading::parse(&reading) else {
                continue;
            };
            if s.reading_type == 0x01 {
                let thresholds = self.thresholds(s)?;
                out.push(threshold_sensor(s, r.raw, r.state1, &thresholds));
            } else {
                out.push(discrete_sensor(s, r.state1, r.state2));
            }
        }
        Ok(out)
    }

    /// Current thresholds from Get Sensor Thresholds, else the SDR's initial ones.
    fn thresholds(&mut self, s: &SdrSensor) -> Result<Thresholds, IpmiError> {
        match self.raw(0x04, 0x27, &[s.number], "Get Sensor Thresholds") {
            Ok(d) => Ok(thresholds_from_response(&d).unwrap_or_else(|| s.sdr_thresholds.clone())),
            Err(e) if !e.is_link() => Ok(s.sdr_thresholds.clone()),
            Err(e) => Err(e),
        }
    }

    // ---------------------------------------------------------------- SEL

    fn read_sel(&mut self, sdrs: &[SdrSensor]) -> Result<(Vec<pb::SelEntry>, bool), IpmiError> {
        let info = self.raw(0x0a, 0x40, &[], "Get SEL Info")?;
        let SelInfo { entries, erase_ts } =
            SelInfo::parse(&info).ok_or_else(|| self.short("Get SEL Info"))?;
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
        parse_sel_entry(&d).ok_or_else(|| self.short("Get SEL Entry"))
    }

    // ---------------------------------------------------------------- FRU

    /// FRU device 0 (the board the BMC sits on). A missing or malformed FRU is `None`, not an
    /// error: inventory fields are nice to have, sensors and SEL are not to be lost for them.
    fn read_fru(&mut self) -> Result<Option<pb::Fru>, IpmiError> {
        let info = match self.raw(0x0a, 0x10, &[0], "Get FRU Inventory Area Info") {
            Ok(d) => match AreaInfo::parse(&d) {
                Some(info) => info,
                None => return Ok(None),
            },
            Err(e) if !e.is_link() => return Ok(None),
            Err(e) => return Err(e),
        };
        let AreaInfo { size, by_words } = info;
        let header = match self.read_fru_bytes(0, 8, size, by_words)? {
            Some(h) => h,
            None => return Ok(None),
        };
        let Some(offsets) = area_offsets(&header) else {
            tracing::debug!("FRU common header invalid");
            return Ok(None);
        };
        let mut board = None;
        let mut product = None;
        for (off, slot) in [(offsets[0], &mut board), (offsets[1], &mut product)] {
            if off == 0 {
                continue;
            }
            let Some(h) = self.read_fru_bytes(off, 2, size, by_words)? else {
                continue;
            };
            let Some(len) = area_len(&h) else {
                continue;
            };
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
            Ok(d) => Ok(power_from_chassis_status(&d)),
            Err(e) if !e.is_link() => Ok(pb::PowerState::Unspecified),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_collection_keeps_the_cursor_and_drops_the_session() {
        let ep = BmcEndpoint::Local("/nonexistent/ipmi0".into());
        let mut c = IpmiCollector::new(ep, Duration::from_millis(100));
        c.set_sel_cursor(Some(41));
        let err = c.collect().err();
        assert!(matches!(err, Some(IpmiError::Device { .. })), "{err:?}");
        // The next collection starts from the same place: no event is skipped.
        assert_eq!(c.sel_cursor(), Some(41));
        let dbg = format!("{c:?}");
        assert!(dbg.contains("connected: false"), "{dbg}");
    }

    /// Nothing listens on the port (loopback only): an error naming the BMC, not a hang.
    #[test]
    fn no_bmc_on_the_port_is_an_error_naming_it() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap();
        let ep = BmcEndpoint::parse(
            &format!("rmcp://admin@127.0.0.1:{port}"),
            Some("secret".into()),
        )
        .unwrap();
        let mut c = IpmiCollector::new(ep, Duration::from_millis(200));
        let err = c.collect().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
