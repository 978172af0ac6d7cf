//! Sections of `muster.v1.Facts`: the unit of delta reporting. The agent hashes each section
//! to decide what to resend; the server stores each one as its own record; the drift engine
//! is told which ones changed. All of them must cut the facts the same way and agree on the
//! numbers, so the cut and the numbers (`Section`) live here, once.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

/// One section of `Facts`. The discriminant is the section's wire number: the `Facts` field
/// number, which is also what section hashes, storage keys (`f06`) and change masks (bit N)
/// are built from. Never renumber: stored keys and agents' delta chains carry these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Section {
    Os = 1,
    Cpu = 2,
    Memory = 3,
    Nics = 4,
    Disks = 5,
    Packages = 6,
    Firmware = 7,
    Power = 8,
    Sensors = 9,
    Fru = 10,
    Smart = 11,
    External = 12,
    Vms = 13,
}

impl Section {
    /// Every section, in wire-number order.
    pub const ALL: [Section; 13] = [
        Section::Os,
        Section::Cpu,
        Section::Memory,
        Section::Nics,
        Section::Disks,
        Section::Packages,
        Section::Firmware,
        Section::Power,
        Section::Sensors,
        Section::Fru,
        Section::Smart,
        Section::External,
        Section::Vms,
    ];

    /// The wire number (the `Facts` field number).
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The section with wire number `n`, if there is one.
    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.number() == n)
    }

    /// The section's bit in a change mask (bit N: section N).
    pub const fn bit(self) -> u32 {
        1 << self as u8
    }

    /// The change mask of `sections`.
    pub fn mask(sections: impl IntoIterator<Item = Section>) -> u32 {
        sections.into_iter().fold(0, |m, s| m | s.bit())
    }

    /// Large and rarely changing (packages, external facts, VMs): stored apart from the small
    /// sections every delta rewrites, and what an agent leaves out to fit a size limit.
    pub const fn bulky(self) -> bool {
        matches!(self, Section::Packages | Section::External | Section::Vms)
    }

    /// The `Facts` field name, for messages and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Section::Os => "os",
            Section::Cpu => "cpu",
            Section::Memory => "memory_bytes",
            Section::Nics => "nics",
            Section::Disks => "disks",
            Section::Packages => "packages",
            Section::Firmware => "firmware",
            Section::Power => "power",
            Section::Sensors => "sensors",
            Section::Fru => "fru",
            Section::Smart => "smart",
            Section::External => "external_json",
            Section::Vms => "vms",
        }
    }

    /// Removes this section from `f`.
    pub fn clear(self, f: &mut pb::Facts) {
        match self {
            Section::Os => f.os = None,
            Section::Cpu => f.cpu = None,
            Section::Memory => f.memory_bytes = None,
            Section::Nics => f.nics = None,
            Section::Disks => f.disks = None,
            Section::Packages => f.packages = None,
            Section::Firmware => f.firmware = None,
            Section::Power => f.power = None,
            Section::Sensors => f.sensors = None,
            Section::Fru => f.fru = None,
            Section::Smart => f.smart = None,
            Section::External => f.external_json = None,
            Section::Vms => f.vms = None,
        }
    }
}

/// Splits facts into their sections: (section, the encoding of a `Facts` holding only that
/// field). Encodes each field in place (no copy of the 1,500-package list per report).
pub fn split(f: &pb::Facts) -> Vec<(Section, Vec<u8>)> {
    use prost::encoding;
    let mut out = Vec::new();
    fn msg<M: Message>(out: &mut Vec<(Section, Vec<u8>)>, s: Section, m: &Option<M>) {
        if let Some(m) = m {
            let mut b = Vec::new();
            encoding::message::encode(u32::from(s.number()), m, &mut b);
            out.push((s, b));
        }
    }
    msg(&mut out, Section::Os, &f.os);
    msg(&mut out, Section::Cpu, &f.cpu);
    if let Some(v) = f.memory_bytes {
        let mut b = Vec::new();
        encoding::uint64::encode(u32::from(Section::Memory.number()), &v, &mut b);
        out.push((Section::Memory, b));
    }
    msg(&mut out, Section::Nics, &f.nics);
    msg(&mut out, Section::Disks, &f.disks);
    msg(&mut out, Section::Packages, &f.packages);
    msg(&mut out, Section::Firmware, &f.firmware);
    if let Some(v) = f.power {
        let mut b = Vec::new();
        encoding::int32::encode(u32::from(Section::Power.number()), &v, &mut b);
        out.push((Section::Power, b));
    }
    msg(&mut out, Section::Sensors, &f.sensors);
    msg(&mut out, Section::Fru, &f.fru);
    msg(&mut out, Section::Smart, &f.smart);
    if let Some(v) = &f.external_json {
        let mut b = Vec::new();
        encoding::string::encode(u32::from(Section::External.number()), v, &mut b);
        out.push((Section::External, b));
    }
    msg(&mut out, Section::Vms, &f.vms);
    out
}

/// Hex SHA-256 of a set of (section, section hash) pairs: the facts hash a delta builds on.
pub fn facts_hash<'a>(sections: impl IntoIterator<Item = (Section, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (s, hash) in sections {
        h.update([s.number()]);
        h.update(hash.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Hex SHA-256 of one encoded section.
pub fn section_hash(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pb;

    #[test]
    fn each_section_encodes_as_a_facts_holding_only_it() {
        let f = pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "h".into(),
                ..Default::default()
            }),
            memory_bytes: Some(0),
            power: Some(1),
            external_json: Some("{}".into()),
            packages: Some(pb::PackageList::default()),
            ..Default::default()
        };
        let parts = split(&f);
        assert_eq!(
            parts.iter().map(|p| p.0.number()).collect::<Vec<_>>(),
            [1, 3, 6, 8, 12]
        );
        let mut back = pb::Facts::default();
        for (n, b) in &parts {
            let one = pb::Facts::decode(b.as_slice()).unwrap();
            assert_eq!(split(&one), vec![(*n, b.clone())]);
            back.merge(b.as_slice()).unwrap();
        }
        assert_eq!(back, f);
    }

    /// Every field of `Facts` set, so every section is present.
    fn every_section() -> pb::Facts {
        pb::Facts {
            os: Some(pb::OsFacts::default()),
            cpu: Some(pb::CpuFacts::default()),
            memory_bytes: Some(1),
            nics: Some(pb::NicList::default()),
            disks: Some(pb::BlockDeviceList::default()),
            packages: Some(pb::PackageList::default()),
            firmware: Some(pb::Firmware::default()),
            power: Some(1),
            sensors: Some(pb::SensorList::default()),
            fru: Some(pb::Fru::default()),
            smart: Some(pb::SmartList::default()),
            external_json: Some("{}".into()),
            vms: Some(pb::VirtualMachineList::default()),
        }
    }

    /// The wire numbers are stored (keys `f06`, agents' chains, change masks): this table is
    /// the contract, and changing a number must fail here first.
    #[test]
    fn section_numbers_are_unique_and_stable() {
        let expected = [
            (Section::Os, 1, "os"),
            (Section::Cpu, 2, "cpu"),
            (Section::Memory, 3, "memory_bytes"),
            (Section::Nics, 4, "nics"),
            (Section::Disks, 5, "disks"),
            (Section::Packages, 6, "packages"),
            (Section::Firmware, 7, "firmware"),
            (Section::Power, 8, "power"),
            (Section::Sensors, 9, "sensors"),
            (Section::Fru, 10, "fru"),
            (Section::Smart, 11, "smart"),
            (Section::External, 12, "external_json"),
            (Section::Vms, 13, "vms"),
        ];
        assert_eq!(Section::ALL.len(), expected.len());
        for ((s, n, name), listed) in expected.into_iter().zip(Section::ALL) {
            assert_eq!(s, listed, "ALL is in wire-number order");
            assert_eq!(s.number(), n, "{s:?}");
            assert_eq!(s.name(), name);
            assert_eq!(Section::from_number(n), Some(s));
            assert_eq!(s.bit(), 1u32 << n);
        }
        let mut numbers: Vec<u8> = Section::ALL.iter().map(|s| s.number()).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), Section::ALL.len(), "numbers are unique");
        assert_eq!(Section::from_number(0), None);
        assert_eq!(Section::from_number(14), None);
        assert_eq!(
            Section::ALL
                .iter()
                .filter(|s| s.bulky())
                .copied()
                .collect::<Vec<_>>(),
            [Section::Packages, Section::External, Section::Vms]
        );
        assert_eq!(
            Section::mask([Section::Os, Section::Packages]),
            (1 << 1) | (1 << 6)
        );
    }

    /// Each section's number is its `Facts` field number as the generated code decodes it:
    /// the part split out for a section decodes to a `Facts` with exactly that field set.
    #[test]
    fn section_numbers_are_the_facts_field_numbers() {
        let parts = split(&every_section());
        assert_eq!(
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            Section::ALL,
            "every section present, in order"
        );
        for (s, bytes) in parts {
            let mut one = pb::Facts::decode(bytes.as_slice()).unwrap();
            assert_ne!(one, pb::Facts::default(), "{s:?} decodes to a set field");
            s.clear(&mut one);
            assert_eq!(one, pb::Facts::default(), "{s:?} is the field it clears");
        }
    }
}
