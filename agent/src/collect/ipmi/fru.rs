//! Decoding of FRU inventory (Platform Management FRU Information Storage Definition v1.0):
//! the area info answer, the common header, and the board and product info areas, into a
//! `pb::Fru`. Pure: the collector reads the bytes, this says what they mean.

use muster::pb;

use super::sdr::decode_type_length;

/// What Get FRU Inventory Area Info says: the size, and whether reads count words or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AreaInfo {
    pub(super) size: usize,
    pub(super) by_words: bool,
}

impl AreaInfo {
    /// `None` when the answer is short (no FRU to read).
    pub(super) fn parse(d: &[u8]) -> Option<Self> {
        (d.len() >= 3).then(|| Self {
            size: usize::from(u16::from_le_bytes([d[0], d[1]])),
            by_words: d[2] & 1 == 1,
        })
    }
}

/// Byte offsets of the board and product areas from the 8-byte common header (0: absent);
/// `None` when the header is not a version-1 header with a good checksum.
pub(super) fn area_offsets(header: &[u8]) -> Option<[usize; 2]> {
    let h = header.get(..8)?;
    if h[0] & 0x0F != 1 || checksum(h) != 0 {
        return None;
    }
    Some([usize::from(h[3]) * 8, usize::from(h[4]) * 8])
}

/// An area's length in bytes from its first two bytes (version, length in 8-byte units);
/// `None` when it is too small to hold anything.
pub(super) fn area_len(first: &[u8]) -> Option<usize> {
    let len = usize::from(*first.get(1)?) * 8;
    (len >= 2).then_some(len)
}

pub(super) fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The type/length fields of a board (skip 6 bytes) or product (skip 3 bytes) area, in order,
/// up to the end marker. A bad checksum yields nothing.
pub(super) fn area_fields(area: &[u8], skip: usize) -> Vec<String> {
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

pub(super) fn fru_from_areas(board: Option<&[u8]>, product: Option<&[u8]>) -> Option<pb::Fru> {
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
    use super::super::fixtures::sim;
    use super::*;

    /// Board and product areas cut out of a whole image the way the collector reads them.
    fn areas(image: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
        let Some(offsets) = area_offsets(image) else {
            return (None, None);
        };
        let cut = |off: usize| {
            if off == 0 {
                return None;
            }
            let len = area_len(image.get(off..)?)?;
            image.get(off..off + len)
        };
        (cut(offsets[0]), cut(offsets[1]))
    }

    #[test]
    fn the_simulators_fru() {
        assert_eq!(
            AreaInfo::parse(sim::FRU_AREA_INFO),
            Some(AreaInfo {
                size: 256,
                by_words: false
            })
        );
        assert_eq!(area_offsets(sim::FRU_IMAGE), Some([40, 112]));
        let (board, product) = areas(sim::FRU_IMAGE);
        assert_eq!(board.map(<[u8]>::len), Some(72));
        // The e2e fixture's FRU_* values (tests/src/ipmi.rs): product area first, board serial
        // from the board area.
        assert_eq!(
            fru_from_areas(board, product),
            Some(pb::Fru {
                manufacturer: "ACME Corp".into(),
                product: "ACME Server X100".into(),
                serial: "SIM-SN-0001".into(),
                part_number: "X100-1U".into(),
                board_serial: "MB-SIM-SN-0001".into(),
            })
        );
        assert_eq!(
            area_fields(board.unwrap_or_default(), 6),
            [
                "ACME Boards",
                "ACME X100 Mainboard",
                "MB-SIM-SN-0001",
                "MB-PN-42",
                ""
            ]
        );
    }

    #[test]
    fn board_alone_fills_what_it_can() {
        let (board, _) = areas(sim::FRU_IMAGE);
        let fru = fru_from_areas(board, None).unwrap_or_default();
        assert_eq!(fru.manufacturer, "ACME Boards");
        assert_eq!(fru.product, "ACME X100 Mainboard");
        assert_eq!(
            (fru.serial.as_str(), fru.part_number.as_str()),
            ("MB-SIM-SN-0001", "MB-PN-42")
        );
    }

    #[test]
    fn bad_checksums_and_headers_yield_nothing() {
        let mut image = sim::FRU_IMAGE.to_vec();
        image[50] ^= 0x01; // inside the board area
        let (board, product) = areas(&image);
        assert!(area_fields(board.unwrap_or_default(), 6).is_empty());
        // The product area still counts.
        assert_eq!(
            fru_from_areas(board, product).map(|f| f.board_serial),
            Some(String::new())
        );
        let mut header = sim::FRU_IMAGE[..8].to_vec();
        header[7] ^= 0x01;
        assert_eq!(area_offsets(&header), None);
        header[7] ^= 0x01;
        header[0] = 0x02; // version 2 does not exist (checksum kept right)
        header[7] = header[7].wrapping_sub(1);
        assert_eq!(area_offsets(&header), None);
        assert_eq!(area_offsets(&sim::FRU_IMAGE[..7]), None);
        assert_eq!(fru_from_areas(None, None), None);
        assert_eq!(area_len(&[0x01, 0x00]), None);
        assert_eq!(AreaInfo::parse(&[0x00, 0x01]), None);
    }
}
