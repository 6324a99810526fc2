//! Section hints: which part of a file is code, read-only data, writable data, relocations or
//! strings. Read natively from ELF section headers (the `object` crate), or from a JSON file
//! `{"sections":[{"name":".text","kind":"text","offset":4096,"size":1000}]}` for other files.

use serde::{Deserialize, Serialize};

use crate::pob::BankKind;

/// The kind of a file region, as far as bank choice is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    Text,
    Rodata,
    Data,
    Reloc,
    Strings,
    Other,
}

impl SectionKind {
    /// Bank kinds to search first for this section kind, best first. Corpus banks always
    /// come first: a real file that both hosts hold beats any synthetic motif.
    pub fn preferred_banks(self) -> &'static [BankKind] {
        use BankKind::*;
        match self {
            SectionKind::Text => &[Corpus, ElfText, PltGotReloc, ConstRuns, Debruijn, Stripes],
            SectionKind::Rodata => &[
                Corpus,
                AsciiTables,
                SectionStrings,
                NumericTables,
                DataMotifs,
                ConstRuns,
            ],
            SectionKind::Data => &[
                Corpus,
                DataMotifs,
                NumericTables,
                PltGotReloc,
                ConstRuns,
                Stripes,
            ],
            SectionKind::Reloc => &[Corpus, PltGotReloc, NumericTables, DataMotifs, ConstRuns],
            SectionKind::Strings => &[Corpus, SectionStrings, AsciiTables, ConstRuns],
            SectionKind::Other => &[
                Corpus,
                ConstRuns,
                Debruijn,
                Stripes,
                NumericTables,
                AsciiTables,
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Text => "text",
            SectionKind::Rodata => "rodata",
            SectionKind::Data => "data",
            SectionKind::Reloc => "reloc",
            SectionKind::Strings => "strings",
            SectionKind::Other => "other",
        }
    }
}

/// One section of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub name: String,
    pub kind: SectionKind,
    pub offset: u64,
    pub size: u64,
}

/// A file's sections, as hints for the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hints {
    pub sections: Vec<Section>,
}

#[derive(Debug, thiserror::Error)]
pub enum HintsError {
    #[error("hints file {path}: {msg}")]
    Bad { path: String, msg: String },
}

impl Hints {
    /// Parse a JSON hints file's text.
    pub fn from_json(path: &str, text: &[u8]) -> Result<Hints, HintsError> {
        let mut h: Hints = serde_json::from_slice(text).map_err(|e| HintsError::Bad {
            path: path.into(),
            msg: e.to_string(),
        })?;
        h.normalise();
        Ok(h)
    }

    /// Section headers of an ELF file, or `None` when `bytes` is not an ELF object.
    pub fn from_elf(bytes: &[u8]) -> Option<Hints> {
        use object::read::elf::{ElfFile32, ElfFile64};
        use object::{Object, ObjectSection, SectionFlags, SectionKind as OK};
        fn collect<'d>(obj: &impl Object<'d>) -> Hints {
            let mut out = Vec::new();
            for s in obj.sections() {
                let Some((offset, size)) = s.file_range() else {
                    continue;
                };
                if size == 0 {
                    continue;
                }
                let name = s.name().unwrap_or("").to_string();
                let exec =
                    matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & 0x4 != 0);
                let kind = if exec || s.kind() == OK::Text {
                    SectionKind::Text
                } else if name.starts_with(".rela")
                    || name.starts_with(".rel.")
                    || name == ".got"
                    || name == ".got.plt"
                    || name == ".dynamic"
                    || s.kind() == OK::Elf(4)
                    || s.kind() == OK::Elf(9)
                {
                    SectionKind::Reloc
                } else if name.contains("str") || s.kind() == OK::OtherString {
                    SectionKind::Strings
                } else if matches!(s.kind(), OK::Data | OK::Tls) {
                    SectionKind::Data
                } else if matches!(
                    s.kind(),
                    OK::ReadOnlyData | OK::ReadOnlyString | OK::ReadOnlyDataWithRel
                ) {
                    SectionKind::Rodata
                } else {
                    SectionKind::Other
                };
                out.push(Section {
                    name,
                    kind,
                    offset,
                    size,
                });
            }
            let mut h = Hints { sections: out };
            h.normalise();
            h
        }
        if bytes.len() < 5 || &bytes[..4] != b"\x7fELF" {
            return None;
        }
        match bytes[4] {
            2 => ElfFile64::<object::Endianness>::parse(bytes)
                .ok()
                .map(|f| collect(&f)),
            1 => ElfFile32::<object::Endianness>::parse(bytes)
                .ok()
                .map(|f| collect(&f)),
            _ => None,
        }
    }

    /// Sort by offset and drop overlaps, so a cursor can walk them in one pass.
    fn normalise(&mut self) {
        self.sections.sort_by_key(|s| (s.offset, s.size));
        let mut end = 0u64;
        self.sections.retain(|s| {
            if s.offset < end || s.size == 0 {
                return false;
            }
            end = s.offset.saturating_add(s.size);
            true
        });
    }

    /// A cursor answering "which kind is offset i" for increasing `i`.
    pub fn cursor(&self) -> HintCursor<'_> {
        HintCursor {
            secs: &self.sections,
            i: 0,
        }
    }
}

/// Walks sections for increasing offsets.
#[derive(Debug, Clone)]
pub struct HintCursor<'a> {
    secs: &'a [Section],
    i: usize,
}

impl HintCursor<'_> {
    /// The section kind at `off`; `Other` outside every section.
    #[inline]
    pub fn kind_at(&mut self, off: u64) -> SectionKind {
        while self.i < self.secs.len() && self.secs[self.i].offset + self.secs[self.i].size <= off {
            self.i += 1;
        }
        match self.secs.get(self.i) {
            Some(s) if s.offset <= off => s.kind,
            _ => SectionKind::Other,
        }
    }

    /// Restart at `off` (binary search), for a planner worker starting mid-file.
    pub fn seek(&mut self, off: u64) {
        self.i = self.secs.partition_point(|s| s.offset + s.size <= off);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_hints_parse_and_cursor_walks() {
        let j = br#"{"sections":[{"name":"b","kind":"rodata","offset":100,"size":50},
                                 {"name":"a","kind":"text","offset":0,"size":100}]}"#;
        let h = Hints::from_json("x", j).unwrap();
        let mut c = h.cursor();
        assert_eq!(c.kind_at(0), SectionKind::Text);
        assert_eq!(c.kind_at(99), SectionKind::Text);
        assert_eq!(c.kind_at(100), SectionKind::Rodata);
        assert_eq!(c.kind_at(150), SectionKind::Other);
        assert!(Hints::from_json(
            "x",
            br#"{"sections":[{"name":"a","kind":"code","offset":0,"size":1}]}"#
        )
        .is_err());
        assert!(Hints::from_json("x", br#"{"sections":[], "extra": 1}"#).is_err());
    }

    #[test]
    fn elf_sections_are_read_natively() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let h = Hints::from_elf(&exe).expect("the test binary is an ELF file");
        let text = h
            .sections
            .iter()
            .find(|s| s.name == ".text")
            .expect(".text");
        assert_eq!(text.kind, SectionKind::Text);
        assert!(h.sections.iter().any(|s| s.kind == SectionKind::Rodata));
        assert!(Hints::from_elf(b"not an elf").is_none());
        assert!(Hints::from_elf(b"\x7fELF\x02garbage").is_none());
    }
}
