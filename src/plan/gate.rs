//! Section-aware gating: which snapshot banks a file region may draw candidates from.
//!
//! The manifest's bank map gives each bank's kind and range; a section kind (from ELF headers
//! or a hints file, [`super::hints`]) admits the bank kinds of
//! [`SectionKind::preferred_banks`] (or the planner config's `gate_banks` override).
//! A probe in a `.text` window then never verifies a candidate in, say, an ASCII table bank,
//! until `widen_after` probes in a row have missed: then every bank is admitted again until
//! the next hit. Regions outside any section (`other`) admit every bank.

use std::collections::HashMap;

use super::hints::SectionKind;
use crate::pob::{BankEntry, BankKind};

/// Section kinds in table order.
pub const SECTION_KINDS: [SectionKind; 6] = [
    SectionKind::Text,
    SectionKind::Rodata,
    SectionKind::Data,
    SectionKind::Reloc,
    SectionKind::Strings,
    SectionKind::Other,
];

fn slot(k: SectionKind) -> usize {
    SECTION_KINDS.iter().position(|x| *x == k).unwrap_or(5)
}

/// Bank eligibility per section kind, from a snapshot's bank map.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `[section kind][bank index]`: may the bank serve that kind of region.
    eligible: [Vec<bool>; 6],
    /// Snapshot byte ranges of the eligible banks, per section kind (adjacent banks merged).
    ranges: [Vec<(usize, usize)>; 6],
    widen_after: usize,
}

impl Gate {
    /// Build from the manifest's banks; `rules` overrides the bank kinds a section kind admits.
    pub fn new(
        banks: &[BankEntry],
        rules: &HashMap<SectionKind, Vec<BankKind>>,
        widen_after: usize,
    ) -> Gate {
        let mut eligible: [Vec<bool>; 6] = Default::default();
        let mut ranges: [Vec<(usize, usize)>; 6] = Default::default();
        for (si, &sk) in SECTION_KINDS.iter().enumerate() {
            let kinds: Option<&[BankKind]> = match rules.get(&sk) {
                Some(v) => Some(v),
                None if sk == SectionKind::Other => None,
                None => Some(sk.preferred_banks()),
            };
            for b in banks {
                let ok = kinds.is_none_or(|ks| ks.contains(&b.kind));
                eligible[si].push(ok);
                if ok {
                    let (a, e) = (b.offset as usize, (b.offset + b.len) as usize);
                    match ranges[si].last_mut() {
                        Some(last) if last.1 == a => last.1 = e,
                        _ => ranges[si].push((a, e)),
                    }
                }
            }
        }
        Gate {
            eligible,
            ranges,
            widen_after,
        }
    }

    /// Whether a candidate in bank `bank` may be verified for a probe in a `kind` region after
    /// `misses` probes in a row found nothing.
    #[inline]
    pub fn admits(&self, kind: SectionKind, bank: usize, misses: usize) -> bool {
        misses >= self.widen_after || self.eligible[slot(kind)].get(bank).copied().unwrap_or(true)
    }

    /// Whether the gate is currently narrowing (false once widened by misses).
    #[inline]
    pub fn narrowing(&self, misses: usize) -> bool {
        misses < self.widen_after
    }

    /// Snapshot ranges a `kind` region may draw from (all of `whole` once widened).
    pub fn ranges(&self, kind: SectionKind, misses: usize, whole: usize) -> Vec<(usize, usize)> {
        if self.narrowing(misses) {
            self.ranges[slot(kind)].clone()
        } else {
            vec![(0, whole)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank(id: u32, kind: BankKind, offset: u64, len: u64) -> BankEntry {
        BankEntry {
            bank_id: id,
            kind,
            offset,
            len,
            source: "synthetic".into(),
        }
    }

    #[test]
    fn text_windows_see_only_eligible_banks_until_the_miss_threshold() {
        let banks = vec![
            bank(0, BankKind::AsciiTables, 0, 100),
            bank(1, BankKind::ElfText, 100, 100),
            bank(2, BankKind::PltGotReloc, 200, 50),
            bank(3, BankKind::Corpus, 250, 10),
        ];
        let g = Gate::new(&banks, &HashMap::new(), 64);
        for misses in 0..64 {
            assert!(!g.admits(SectionKind::Text, 0, misses), "misses {misses}");
            assert!(g.admits(SectionKind::Text, 1, misses));
            assert!(g.admits(SectionKind::Text, 3, misses));
        }
        assert!(
            g.admits(SectionKind::Text, 0, 64),
            "widened after 64 misses"
        );
        assert_eq!(g.ranges(SectionKind::Text, 0, 260), vec![(100, 260)]);
        assert_eq!(g.ranges(SectionKind::Text, 64, 260), vec![(0, 260)]);
        // strings admit ASCII tables, not machine code
        assert!(g.admits(SectionKind::Strings, 0, 0));
        assert!(!g.admits(SectionKind::Strings, 1, 0));
        // outside every section: everything
        assert!((0..4).all(|b| g.admits(SectionKind::Other, b, 0)));
        // an override from the planner config
        let rules = HashMap::from([(SectionKind::Text, vec![BankKind::AsciiTables])]);
        let g = Gate::new(&banks, &rules, usize::MAX);
        assert!(g.admits(SectionKind::Text, 0, 1 << 40));
        assert!(!g.admits(SectionKind::Text, 1, 1 << 40));
        assert_eq!(g.ranges(SectionKind::Text, 0, 260), vec![(0, 100)]);
    }
}
