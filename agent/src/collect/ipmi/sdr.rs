//! Decoding of Sensor Data Records (IPMI 2.0 section 43): full (type 1) and compact (type 2)
//! sensor records, the analog conversion of full records, type/length strings (shared with the
//! FRU decoder) and unit names. Pure: record bytes in, values out.

/// Raw thresholds in Get Sensor Thresholds order: lnc, lc, lnr, unc, uc, unr; `readable` has
/// one bit per threshold in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Thresholds {
    pub(super) readable: u8,
    pub(super) raw: [u8; 6],
}

/// What we keep of a full or compact sensor record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SdrSensor {
    pub(super) owner: u8,
    pub(super) number: u8,
    pub(super) sensor_type: u8,
    pub(super) reading_type: u8,
    pub(super) name: String,
    /// Analog conversion (full records of threshold sensors only).
    pub(super) analog: Option<Analog>,
    pub(super) unit: String,
    pub(super) sdr_thresholds: Thresholds,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Analog {
    /// 0 unsigned, 1 one's complement, 2 two's complement.
    pub(super) format: u8,
    pub(super) linearization: u8,
    pub(super) m: i32,
    pub(super) b: i32,
    pub(super) r_exp: i32,
    pub(super) b_exp: i32,
}

impl Analog {
    pub(super) fn convert(&self, raw: u8) -> f64 {
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

pub(super) fn sign_extend(v: u32, bits: u32) -> i32 {
    let shift = 32 - bits;
    ((v << shift) as i32) >> shift
}

/// Parses a full (type 1) or compact (type 2) sensor record; other records are skipped.
pub(super) fn parse_sdr(r: &[u8]) -> Option<SdrSensor> {
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
pub(super) fn decode_type_length(tl: u8, data: &[u8]) -> Option<String> {
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

pub(super) fn unit_name(code: u8, percentage: bool) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::sim;
    use super::*;

    fn parsed(r: &[u8]) -> SdrSensor {
        parse_sdr(r).unwrap_or_else(|| panic!("not a sensor record: {r:02x?}"))
    }

    #[test]
    fn full_records_of_the_simulator() {
        let cpu = parsed(sim::SDR_CPU_TEMP);
        assert_eq!(
            (cpu.owner, cpu.number, cpu.sensor_type, cpu.reading_type),
            (0x20, 1, 0x01, 0x01)
        );
        assert_eq!((cpu.name.as_str(), cpu.unit.as_str()), ("CPU Temp", "C"));
        assert_eq!(cpu.analog.as_ref().map(|a| a.convert(45)), Some(45.0));
        // unc, uc, unr readable (bits 3..5), in Get Sensor Thresholds order.
        assert_eq!(
            cpu.sdr_thresholds,
            Thresholds {
                readable: 0b11_1000,
                raw: [0, 0, 0, 75, 85, 95],
            }
        );

        let fan = parsed(sim::SDR_FAN1);
        assert_eq!((fan.name.as_str(), fan.unit.as_str()), ("Fan1", "RPM"));
        assert_eq!(fan.analog.as_ref().map(|a| a.convert(96)), Some(4800.0));
        assert_eq!(fan.sdr_thresholds.readable, 0b00_0011);
        assert_eq!(fan.sdr_thresholds.raw[..2], [20, 10]);

        let vin = parsed(sim::SDR_PSU1_VIN);
        assert_eq!(
            (vin.name.as_str(), vin.unit.as_str()),
            ("PSU1 Vin 12v", "V")
        );
        let a = vin.analog.as_ref().map(|a| (a.m, a.r_exp, a.convert(200)));
        assert_eq!(a, Some((6, -2, 12.0)));
    }

    #[test]
    fn compact_records_have_no_conversion() {
        let psu = parsed(sim::SDR_PSU1_STATUS);
        assert_eq!(
            (psu.number, psu.sensor_type, psu.reading_type),
            (4, 0x08, 0x6f)
        );
        assert_eq!(psu.name, "PSU1 Status");
        assert_eq!(psu.analog, None);
        assert_eq!(psu.sdr_thresholds, Thresholds::default());
        assert_eq!(parsed(sim::SDR_DIMM_A1_ECC).name, "DIMM A1 ecc");
    }

    #[test]
    fn other_and_truncated_records_are_skipped() {
        // Management controller locator (type 0x12): not a sensor.
        assert_eq!(parse_sdr(sim::SDR_MC_LOCATOR), None);
        // Cut before the id string: nothing, rather than a panic on a short answer.
        assert_eq!(parse_sdr(&sim::SDR_CPU_TEMP[..47]), None);
        assert_eq!(parse_sdr(&sim::SDR_PSU1_STATUS[..31]), None);
        assert_eq!(parse_sdr(&[0x01, 0x00, 0x51]), None);
    }

    #[test]
    fn unnamed_sensor_gets_its_number() {
        let mut r = sim::SDR_PSU1_STATUS.to_vec();
        r.truncate(32);
        r[31] = 0xC0; // 8-bit string of length 0
        assert_eq!(parsed(&r).name, "sensor 0x04");
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
        // Two's complement: 0xF6 is -10.
        let signed = Analog {
            format: 2,
            m: 1,
            r_exp: 0,
            ..a.clone()
        };
        assert_eq!(signed.convert(0xF6), -10.0);
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
        assert_eq!(
            decode_type_length(0x02, &[0xAB, 0x01]).as_deref(),
            Some("ab01")
        );
        assert_eq!(decode_type_length(0xC5, b"ab"), None);
    }

    #[test]
    fn unit_names_and_percentages() {
        assert_eq!(unit_name(18, false), "RPM");
        assert_eq!(unit_name(4, true), "% V");
        assert_eq!(unit_name(0, true), "%");
        assert_eq!(unit_name(200, false), "");
    }
}
