//! Reference prediction for x86-64 ELF files (after Zucchini and Courgette): addresses that
//! move between releases are predicted from the snapshot bytes and the covers, so a
//! correctly predicted reference costs nothing in the difference stream.
//!
//! The blueprint's snapshot segments map old positions to new ones: snapshot position `p`
//! inside a segment that starts at snapshot offset `o` and file offset `q` maps to file
//! position `p + (q - o)`. With the old image's load segments (where the old ELF lies in the
//! snapshot and its virtual addresses) and the new image's, an old virtual address maps to a
//! new one. A [`RefModel`] (carried in the `.pbb` v3 `refs` stream) names the new file's
//! regions that hold references and of which kind:
//!
//! - [`RegionKind::Code`]: x86-64 machine code. `call`/`jmp rel32` (E8, E9), `jcc rel32`
//!   (0F 80..8F) and RIP-relative operands of common opcodes (ModRM `00 reg 101`) are found
//!   by scanning the *old* bytes of each cover left to right; a candidate whose old target
//!   maps is predicted as `new target - new end of instruction`, and the scan skips its
//!   displacement.
//! - [`RegionKind::Words`]: a table of 64-bit addresses with a stride and a mask of which
//!   8-byte fields are addresses (`.data.rel.ro`, `.got`: every word; `.dynamic`: the
//!   values).
//! - [`RegionKind::LineAddr`]: DWARF line programs: the address of `DW_LNE_set_address`
//!   (`00 09 02` + 8 bytes).
//! - [`RegionKind::DebugInfo`]: `.debug_info`: the reference fields of the *old* section,
//!   found by walking its units ([`super::dwarf`]): addresses moved, offsets into the other
//!   debug sections and unit-relative DIE references as the new positions of their targets.
//! - [`RegionKind::Table`]: a relocation table (`.rela.dyn`, `.rela.plt`), a symbol table
//!   (`.symtab`, `.dynsym`) or the range lists (`.debug_ranges`) read in step with the old
//!   image's: once an entry (rebuilt) has an old entry's moved key (a relocation's addend, a
//!   symbol's value, a range's begin), the next entry is predicted as the next old one: its
//!   offset (or name) as the rebuilt one plus the old step between the two, its addend
//!   (value, begin) moved, a range's end as the moved begin plus the old length, its other
//!   fields as the old entry's. The covers alone do not pair the entries: a table's entries
//!   look alike, so a cover over it often lies on a diagonal a few entries off, and where
//!   slots hold zeros until relocated (`.data.rel.ro` of a position-independent image) the
//!   slots' own covers cannot place them either.
//!
//! Predictions are computed from the snapshot, the segments and the model, and for a
//! table read in step from the entries of the same cover before the one predicted (the
//! decoder has rebuilt those when it gets there: it walks a cover's entries in order), so
//! the encoder subtracts them from the differences and the decoder adds the same values
//! back. Only covers are predicted (exact segments have no differences); nothing carries
//! from one cover to the next, so the covers can be predicted on any number of threads.

use super::dwarf::{self, Target};
use super::varint::{put_u64, Reader};
use super::{Segment, Source};

/// One PT_LOAD segment: file bytes `[off, off + size)` are mapped at `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub off: u64,
    pub vaddr: u64,
    pub size: u64,
}

/// What references a region of the new file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// x86-64 code: rel32 branches and RIP-relative operands.
    Code,
    /// 64-bit addresses at fields `mask` (bit k = the 8 bytes at `8k`) of `stride`-byte
    /// entries laid from the region start.
    Words { stride: u32, mask: u32 },
    /// DWARF line programs (`DW_LNE_set_address`).
    LineAddr,
    /// A table of `of` entries, predicted in step with the old image's table at
    /// `[old_start, old_start + old_len)` of the old image.
    Table {
        of: Entries,
        old_start: u64,
        old_len: u64,
    },
    /// A `.debug_info` section: the old one's reference fields ([`super::dwarf`]) moved;
    /// the sections are in [`RefModel::dwarf`].
    DebugInfo,
}

/// A range of the new file and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub len: u64,
    pub kind: RegionKind,
}

/// Which regions an encoder predicts (the ablation switches, one per feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PredictOptions {
    /// rel32 branches and RIP-relative operands in `.text`, `.plt`, `.init`, `.fini`.
    pub code: bool,
    /// Address words in `.data.rel.ro`, `.got`, `.got.plt`, `.init_array`, `.fini_array`.
    pub data: bool,
    /// Offset and addend of `.rela.dyn` / `.rela.plt` entries (in step with the old tables),
    /// values of `.dynamic`.
    pub rela: bool,
    /// `.symtab` / `.dynsym` entries (in step with the old tables).
    pub symbols: bool,
    /// `.debug_ranges` lists, in step with the old image's (`.debug_aranges` as address
    /// words moved some pairs' bytes by a few hundred either way: left out).
    pub debug_ranges: bool,
    /// `DW_LNE_set_address` in `.debug_line`.
    pub line: bool,
    /// The reference fields of `.debug_info`: addresses, offsets into `.debug_str` and the
    /// other debug sections, references to DIEs ([`super::dwarf`]).
    #[serde(default)]
    pub dwarf: bool,
}

impl PredictOptions {
    pub const ALL: PredictOptions = PredictOptions {
        code: true,
        data: true,
        rela: true,
        symbols: true,
        debug_ranges: true,
        line: true,
        dwarf: true,
    };
    pub const NONE: PredictOptions = PredictOptions {
        code: false,
        data: false,
        rela: false,
        symbols: false,
        debug_ranges: false,
        line: false,
        dwarf: false,
    };
    /// What pays on the release pairs (`PFS_CODEC_ONLY=predict cargo bench --bench codec`):
    /// rel32 in code, DWARF line addresses, `.debug_info`'s references, and the relocation
    /// and symbol tables and `.debug_ranges` lists read in step with the old ones. The
    /// address words of `.data.rel.ro` and `.got` did not: in a shared object they hold
    /// zeros until relocated. (The tables and range lists as word tables, before they were
    /// read in step, changed as many bytes for the worse as for the better: a cover over
    /// entries that look alike sits a few entries off.)
    pub const DEFAULT: PredictOptions = PredictOptions {
        code: true,
        line: true,
        rela: true,
        symbols: true,
        dwarf: true,
        debug_ranges: true,
        ..PredictOptions::NONE
    };
    /// What `pfs send --level fast` predicts window by window ([`Causal`]): [`Self::DEFAULT`]
    /// without the rel32 scan of code, which on the libstd release pair saved 9,487 bytes of
    /// 801,638 (0.08 ms at 1 Gbit/s) for 2.6 ms more of the receiver's decode (and as much
    /// of the sender's encoding): decode 15.1 instead of 17.7 ms, 7.4 ms without predictions
    /// (`PFS_PRODUCER_PREDICT=... cargo bench --bench producer`, 2026-12-08). Range lists
    /// saved 76 KB there, `.debug_info` 35 KB, symbols 12 KB, relocations and line
    /// addresses 3 KB each.
    pub const STREAM_FAST: PredictOptions = PredictOptions {
        code: false,
        ..PredictOptions::DEFAULT
    };
    /// Each feature alone, by name (the ablation rows).
    pub fn each() -> [(&'static str, PredictOptions); 7] {
        let n = PredictOptions::NONE;
        [
            ("code", PredictOptions { code: true, ..n }),
            ("data", PredictOptions { data: true, ..n }),
            ("rela", PredictOptions { rela: true, ..n }),
            ("symbols", PredictOptions { symbols: true, ..n }),
            (
                "debug_ranges",
                PredictOptions {
                    debug_ranges: true,
                    ..n
                },
            ),
            ("line", PredictOptions { line: true, ..n }),
            ("dwarf", PredictOptions { dwarf: true, ..n }),
        ]
    }
    pub fn any(self) -> bool {
        self.code
            || self.data
            || self.rela
            || self.symbols
            || self.debug_ranges
            || self.line
            || self.dwarf
    }
}

/// The model of old and new image carried in the `refs` stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefModel {
    /// Snapshot offset of the old image's byte 0.
    pub old_base: u64,
    pub old_loads: Vec<Load>,
    pub new_loads: Vec<Load>,
    pub regions: Vec<Region>,
    /// Where the old image's `.debug_info` and `.debug_abbrev` lie and the sections their
    /// offsets point into, for a [`RegionKind::DebugInfo`] region.
    pub dwarf: Option<DwarfModel>,
}

/// The debug sections a [`RegionKind::DebugInfo`] region needs: the old image's
/// `.debug_info` and `.debug_abbrev` (offset in the old image, length) and, for each section
/// the offsets point into, its offset in the old image and in the new file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DwarfModel {
    pub old_info: (u64, u64),
    pub old_abbrev: (u64, u64),
    pub targets: Vec<(Target, u64, u64)>,
}

/// Limits a decoder enforces on a model.
pub const MAX_LOADS: u64 = 64;
pub const MAX_REGIONS: u64 = 4096;
/// Largest old `.debug_info` a model may name (a decoder walks it).
pub const MAX_DWARF_BYTES: u64 = 1 << 30;
/// Largest old table a model may name, and most bytes of old tables in all (a decoder reads
/// and indexes them).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// `R_X86_64_RELATIVE`: the addend is an address of the image.
const R_X86_64_RELATIVE: u32 = 8;

/// Why a `refs` stream does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reference model: {0}")]
pub struct ModelError(pub String);

impl RefModel {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Bytes of the old tables the regions read in step name, in all.
    fn table_bytes(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| match r.kind {
                RegionKind::Table { old_len, .. } => old_len,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// The `refs` stream (empty for an empty model).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        if self.is_empty() {
            return o;
        }
        put_u64(&mut o, self.old_base);
        for loads in [&self.old_loads, &self.new_loads] {
            put_u64(&mut o, loads.len() as u64);
            for l in loads {
                put_u64(&mut o, l.off);
                put_u64(&mut o, l.vaddr);
                put_u64(&mut o, l.size);
            }
        }
        put_u64(&mut o, self.regions.len() as u64);
        let mut prev = 0u64;
        for r in &self.regions {
            put_u64(&mut o, r.start - prev);
            put_u64(&mut o, r.len);
            match r.kind {
                RegionKind::Code => o.push(0),
                RegionKind::Words { stride, mask } => {
                    o.push(1);
                    put_u64(&mut o, stride as u64);
                    put_u64(&mut o, mask as u64);
                }
                RegionKind::LineAddr => o.push(2),
                RegionKind::Table {
                    of,
                    old_start,
                    old_len,
                } => {
                    o.push(of.code());
                    put_u64(&mut o, old_start);
                    put_u64(&mut o, old_len);
                }
                RegionKind::DebugInfo => o.push(5),
            }
            prev = r.start + r.len;
        }
        // the debug sections, after the regions (absent: none)
        if let Some(d) = &self.dwarf {
            for v in [d.old_info.0, d.old_info.1, d.old_abbrev.0, d.old_abbrev.1] {
                put_u64(&mut o, v);
            }
            put_u64(&mut o, d.targets.len() as u64);
            for &(t, old, new) in &d.targets {
                o.push(t as u8);
                put_u64(&mut o, old);
                put_u64(&mut o, new);
            }
        }
        o
    }

    /// Parse a `refs` stream for a file of `file_len` bytes. Regions must be in order, not
    /// overlap and lie inside the file; counts are bounded.
    pub fn decode(b: &[u8], file_len: u64) -> Result<RefModel, ModelError> {
        let bad = |m: &str| ModelError(m.to_string());
        let mut m = RefModel::default();
        if b.is_empty() {
            return Ok(m);
        }
        let mut r = Reader::new(b);
        fn rd(r: &mut Reader<'_>) -> Result<u64, ModelError> {
            r.u64().map_err(|_| ModelError("truncated".into()))
        }
        m.old_base = rd(&mut r)?;
        for which in 0..2 {
            let n = rd(&mut r)?;
            if n > MAX_LOADS {
                return Err(bad("too many load segments"));
            }
            for _ in 0..n {
                let l = Load {
                    off: rd(&mut r)?,
                    vaddr: rd(&mut r)?,
                    size: rd(&mut r)?,
                };
                if l.off.checked_add(l.size).is_none() || l.vaddr.checked_add(l.size).is_none() {
                    return Err(bad("load segment overflows"));
                }
                if which == 0 {
                    m.old_loads.push(l)
                } else {
                    m.new_loads.push(l)
                }
            }
        }
        let n = rd(&mut r)?;
        if n > MAX_REGIONS {
            return Err(bad("too many regions"));
        }
        let mut prev = 0u64;
        for _ in 0..n {
            let gap = rd(&mut r)?;
            let len = rd(&mut r)?;
            let start = prev
                .checked_add(gap)
                .ok_or_else(|| bad("region overflows"))?;
            let end = start
                .checked_add(len)
                .filter(|e| *e <= file_len)
                .ok_or_else(|| bad("region outside the file"))?;
            let kind = match r.u8().map_err(|_| bad("truncated"))? {
                0 => RegionKind::Code,
                1 => {
                    let stride = r.u64().map_err(|_| bad("truncated"))?;
                    let mask = r.u64().map_err(|_| bad("truncated"))?;
                    if stride == 0
                        || stride > 256
                        || stride % 8 != 0
                        || mask == 0
                        || mask >> (stride / 8) != 0
                    {
                        return Err(bad("bad word table stride or mask"));
                    }
                    RegionKind::Words {
                        stride: stride as u32,
                        mask: mask as u32,
                    }
                }
                2 => RegionKind::LineAddr,
                k @ (3 | 4 | 6) => {
                    let of = Entries::from_code(k).expect("3, 4 or 6");
                    let old_start = r.u64().map_err(|_| bad("truncated"))?;
                    let old_len = r.u64().map_err(|_| bad("truncated"))?;
                    if old_len == 0
                        || old_len % of.len() != 0
                        || old_len > MAX_TABLE_BYTES
                        || old_start.checked_add(old_len).is_none()
                    {
                        return Err(bad("bad old table"));
                    }
                    RegionKind::Table {
                        of,
                        old_start,
                        old_len,
                    }
                }
                5 => RegionKind::DebugInfo,
                k => return Err(ModelError(format!("unknown region kind {k}"))),
            };
            m.regions.push(Region { start, len, kind });
            prev = end;
        }
        let debug_info = m.regions.iter().any(|r| r.kind == RegionKind::DebugInfo);
        if r.remaining() != 0 {
            let mut d = DwarfModel {
                old_info: (rd(&mut r)?, rd(&mut r)?),
                old_abbrev: (rd(&mut r)?, rd(&mut r)?),
                targets: Vec::new(),
            };
            for (off, len, max) in [
                (d.old_info.0, d.old_info.1, MAX_DWARF_BYTES),
                (d.old_abbrev.0, d.old_abbrev.1, MAX_DWARF_BYTES),
            ] {
                if len > max || off.checked_add(len).is_none() {
                    return Err(bad("bad debug section"));
                }
            }
            let n = rd(&mut r)?;
            if n > Target::ALL.len() as u64 {
                return Err(bad("too many debug sections"));
            }
            for _ in 0..n {
                let t = Target::from_code(r.u8().map_err(|_| bad("truncated"))?)
                    .ok_or_else(|| bad("unknown debug section"))?;
                if d.targets.iter().any(|x| x.0 == t) {
                    return Err(bad("debug section named twice"));
                }
                d.targets.push((t, rd(&mut r)?, rd(&mut r)?));
            }
            m.dwarf = Some(d);
        }
        if debug_info != m.dwarf.is_some() {
            return Err(bad("debug info region and debug sections disagree"));
        }
        if m.table_bytes() > MAX_TABLE_BYTES {
            return Err(bad("old tables above the limit in all"));
        }
        if r.remaining() != 0 {
            return Err(bad("trailing bytes"));
        }
        Ok(m)
    }

    /// Build the model for an x86-64 ELF `file` planned as `segments` (which start at file
    /// offset `base`: a streamed file's first window planned) against `snap`: the old
    /// image is located through the snapshot segments near the file start: on the diagonal
    /// most of them share where an ELF header sits, else the header near it whose image holds
    /// the most of those segments (it must be in the snapshot). `None` when either side is
    /// not an x86-64 ELF image.
    pub fn for_elf(
        file: &[u8],
        snap: &[u8],
        segments: &[Segment],
        base: u64,
        o: PredictOptions,
    ) -> Option<RefModel> {
        use object::{Object, ObjectSection, ObjectSegment};
        if !o.any() || !is_x86_64_elf(file) {
            return None;
        }
        let new = object::File::parse(file).ok()?;
        // the old image: a snapshot offset where an x86-64 ELF header sits, found from the
        // first snapshot segments (most votes)
        let mut votes: Vec<(u64, u32)> = Vec::new();
        let mut offs: Vec<u64> = Vec::new();
        let mut q = base;
        for s in segments.iter().take(4096) {
            if let Source::Snap { off, .. } | Source::Cover { off } = s.src {
                offs.push(off);
                if let Some(b) = off.checked_sub(q) {
                    match votes.iter_mut().find(|v| v.0 == b) {
                        Some(v) => v.1 += 1,
                        None => votes.push((b, 1)),
                    }
                }
            }
            q += s.len as u64;
        }
        // only bases where an x86-64 ELF header sits; the most votes, the first seen on a tie
        votes.sort_by_key(|v| std::cmp::Reverse(v.1));
        let parse = |b: u64| Some((b, object::File::parse(snap.get(b as usize..)?).ok()?));
        let (old_base, old) = votes
            .iter()
            .filter(|v| snap.get(v.0 as usize..).is_some_and(is_x86_64_elf))
            .take(8)
            .find_map(|&(b, _)| parse(b))
            // no segment on the old image's own diagonal (the code before the first
            // segments moved): the ELF header near the most-voted diagonal whose image holds
            // the most of those segments
            .or_else(|| {
                let b = votes.first()?.0;
                old_header_near(snap, b, &offs).and_then(parse)
            })?;
        let loads = |f: &object::File| -> Vec<Load> {
            f.segments()
                .map(|s| {
                    let (off, size) = s.file_range();
                    Load {
                        off,
                        vaddr: s.address(),
                        size,
                    }
                })
                .filter(|l| l.size > 0)
                .take(MAX_LOADS as usize)
                .collect()
        };
        // the old image's table of a name, read in step (an image without one gets no
        // predictions there)
        let old_table = |name: &str, of: Entries| {
            old.section_by_name(name)
                .and_then(|s| s.file_range())
                .filter(|&(_, l)| l > 0 && l % of.len() == 0 && l <= MAX_TABLE_BYTES)
                .map(|(old_start, old_len)| RegionKind::Table {
                    of,
                    old_start,
                    old_len,
                })
        };
        let mut regions = Vec::new();
        for s in new.sections() {
            let Some((start, len)) = s.file_range() else {
                continue;
            };
            if len == 0 || start.checked_add(len).is_none_or(|e| e > file.len() as u64) {
                continue;
            }
            let name = s.name().unwrap_or("");
            let kind = match name {
                ".text" | ".init" | ".fini" | ".plt" | ".plt.got" | ".plt.sec" if o.code => {
                    RegionKind::Code
                }
                ".data.rel.ro" | ".got" | ".got.plt" | ".init_array" | ".fini_array" if o.data => {
                    RegionKind::Words { stride: 8, mask: 1 }
                }
                // range lists in step with the old image's (their begin addresses moved)
                ".debug_ranges" if o.debug_ranges => {
                    let Some(k) = old_table(name, Entries::Ranges) else {
                        continue;
                    };
                    k
                }
                ".rela.dyn" | ".rela.plt" if o.rela => {
                    let Some(k) = old_table(name, Entries::Rela) else {
                        continue;
                    };
                    k
                }
                ".symtab" | ".dynsym" if o.symbols => {
                    let Some(k) = old_table(name, Entries::Sym) else {
                        continue;
                    };
                    k
                }
                ".dynamic" if o.rela => RegionKind::Words {
                    stride: 16,
                    mask: 0b10,
                },
                ".debug_line" if o.line => RegionKind::LineAddr,
                ".debug_info" if o.dwarf => RegionKind::DebugInfo,
                _ => continue,
            };
            regions.push(Region { start, len, kind });
        }
        regions.sort_by_key(|r| r.start);
        // drop overlaps (keep the first)
        let mut end = 0u64;
        regions.retain(|r| {
            let keep = r.start >= end;
            if keep {
                end = r.start + r.len;
            }
            keep
        });
        regions.truncate(MAX_REGIONS as usize);
        // the old tables within their limit in all (the first ones kept)
        let mut tables = 0u64;
        regions.retain(|r| match r.kind {
            RegionKind::Table { old_len, .. } => {
                tables += old_len;
                tables <= MAX_TABLE_BYTES
            }
            _ => true,
        });
        // the old image's .debug_info and .debug_abbrev, and the sections both images have
        // that the fields point into; without them no .debug_info region
        let range = |f: &object::File, n: &str| {
            f.section_by_name(n)
                .and_then(|s| s.file_range())
                .filter(|r| r.1 > 0)
        };
        let dwarf = match (range(&old, ".debug_info"), range(&old, ".debug_abbrev")) {
            (Some(info), Some(abbrev))
                if info.1 <= MAX_DWARF_BYTES
                    && abbrev.1 <= MAX_DWARF_BYTES
                    && regions.iter().any(|r| r.kind == RegionKind::DebugInfo) =>
            {
                let targets = Target::ALL
                    .iter()
                    .filter_map(|&t| {
                        Some((t, range(&old, t.section())?.0, range(&new, t.section())?.0))
                    })
                    .collect();
                Some(DwarfModel {
                    old_info: info,
                    old_abbrev: abbrev,
                    targets,
                })
            }
            _ => None,
        };
        if dwarf.is_none() {
            regions.retain(|r| r.kind != RegionKind::DebugInfo);
        }
        let m = RefModel {
            old_base,
            old_loads: loads(&old),
            new_loads: loads(&new),
            regions,
            dwarf,
        };
        (!m.is_empty()).then_some(m)
    }
}

/// How far from a diagonal [`old_header_near`] looks for the old image's ELF header.
const HEADER_REACH: u64 = 4 << 20;

/// The snapshot offset of the x86-64 ELF header within [`HEADER_REACH`] of `diag` whose
/// image (up to the end of its section or program header table, whichever is later) holds
/// the most of the snapshot offsets `offs`; of equals, the one nearest `diag` (the earlier on
/// a tie). A small image next to the old one (a directory of files as a corpus bank) may
/// have its header nearer the diagonal, but it holds none of the old image's segments.
fn old_header_near(snap: &[u8], diag: u64, offs: &[u64]) -> Option<u64> {
    let lo = diag.saturating_sub(HEADER_REACH).min(snap.len() as u64) as usize;
    let hi = diag.saturating_add(HEADER_REACH).min(snap.len() as u64) as usize;
    memchr::memmem::find_iter(&snap[lo..hi], b"\x7fELF\x02\x01")
        .map(|i| (lo + i) as u64)
        .filter(|&p| is_x86_64_elf(&snap[p as usize..]))
        .map(|p| {
            let end = p.saturating_add(elf_extent(&snap[p as usize..]));
            let held = offs.iter().filter(|&&o| o >= p && o < end).count();
            (p, held)
        })
        // most held first, then nearest, then earliest
        .min_by_key(|&(p, held)| (std::cmp::Reverse(held), p.abs_diff(diag), p))
        .map(|(p, _)| p)
}

/// Bytes an x86-64 ELF image at the start of `b` spans by its header: the later end of its
/// section and program header tables (the section table sits at the end of a linked file).
fn elf_extent(b: &[u8]) -> u64 {
    let u16_at = |at: usize| {
        b.get(at..at + 2)
            .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]) as u64)
    };
    let u64_at = |at: usize| {
        b.get(at..at + 8)
            .map_or(0, |x| u64::from_le_bytes(x.try_into().expect("8 bytes")))
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3A), u16_at(0x3C));
    let ph = phoff.saturating_add(phentsize * phnum);
    let sh = shoff.saturating_add(shentsize * shnum);
    ph.max(sh).max(64)
}

/// Whether `b` starts with an x86-64 ELF header (64-bit, little-endian, machine 62).
pub fn is_x86_64_elf(b: &[u8]) -> bool {
    b.len() > 64
        && b[..4] == *b"\x7fELF"
        && b[4] == 2
        && b[5] == 1
        && u16::from_le_bytes([b[18], b[19]]) == 62
}

/// Apply the prediction `pred` of the file bytes at `i` to the differences `d` of a cover
/// whose snapshot bytes are `old` (encoding: `d -= pred - old`; decoding: `d += pred - old`);
/// bytes past the cover's end are left out.
fn adjust(d: &mut [u8], old: &[u8], i: usize, pred: &[u8], decode: bool) {
    for (k, &pb) in pred.iter().enumerate() {
        if i + k >= d.len() {
            break;
        }
        let adj = pb.wrapping_sub(old[i + k]);
        d[i + k] = if decode {
            d[i + k].wrapping_add(adj)
        } else {
            d[i + k].wrapping_sub(adj)
        };
    }
}

/// Snapshot segments sorted by snapshot offset: the old-to-new position map.
pub struct AddressMap {
    /// (snapshot offset, length, file offset)
    spans: std::sync::Arc<Vec<(u64, u64, u64)>>,
    /// The first span's start, and `1 << shift` bytes per entry of `hint`...
    lo: u64,
    shift: u32,
    /// ...where `hint[k]` counts the spans that start at or before `lo + (k << shift)`
    /// (with one entry past the last span's start): a lookup searches only between two
    /// neighbouring entries (the predictions look up every reference they move).
    hint: Vec<u32>,
}

/// Most entries of [`AddressMap::hint`] (4 MiB).
const HINT_MAX: u64 = 1 << 20;

impl AddressMap {
    /// From segments that start at file offset `base`.
    pub fn new(segments: &[Segment], base: u64) -> Self {
        let mut spans = Vec::with_capacity(segments.len());
        push_spans(&mut spans, segments, base);
        spans.sort_unstable();
        Self::from_sorted(std::sync::Arc::new(spans))
    }

    /// From spans `(snapshot offset, length, file offset)` sorted.
    fn from_sorted(spans: std::sync::Arc<Vec<(u64, u64, u64)>>) -> Self {
        let (lo, hi) = match (spans.first(), spans.last()) {
            (Some(f), Some(l)) => (f.0, l.0 + 1),
            _ => (0, 0),
        };
        // 4 KiB per entry, or more where the spans lie further apart than 4 GiB
        let mut shift = 12;
        while (hi - lo) >> shift > HINT_MAX {
            shift += 1;
        }
        let n = ((hi - lo) >> shift) as usize + 2;
        let mut hint = Vec::with_capacity(n);
        let mut i = 0usize;
        for k in 0..n as u64 {
            let at = lo.saturating_add(k << shift);
            while i < spans.len() && spans[i].0 <= at {
                i += 1;
            }
            hint.push(i as u32);
        }
        AddressMap {
            spans,
            lo,
            shift,
            hint,
        }
    }

    /// The new file position of snapshot position `p`: the segment with the largest start at
    /// or before `p` that holds it (looking back at most 8 segments).
    pub fn map(&self, p: u64) -> Option<u64> {
        let k = (p.checked_sub(self.lo)? >> self.shift) as usize;
        let i = match (self.hint.get(k), self.hint.get(k + 1)) {
            (Some(&a), Some(&b)) => {
                let (a, b) = (a as usize, b as usize);
                a + self.spans[a..b].partition_point(|s| s.0 <= p)
            }
            _ => self.spans.len(),
        };
        for k in (i.saturating_sub(8)..i).rev() {
            let (o, l, q) = self.spans[k];
            if p < o + l {
                return Some(q + (p - o));
            }
        }
        None
    }
}

/// The old image's bytes at `(offset in the old image, length)` of `model`, where they lie
/// in `snap`.
fn old_bytes<'a>(model: &RefModel, snap: &'a [u8], (off, len): (u64, u64)) -> Option<&'a [u8]> {
    let s = model.old_base.checked_add(off)?;
    snap.get(s as usize..s.checked_add(len)? as usize)
}

/// The reference fields of the old `.debug_info` (none without a model of the sections).
fn old_dwarf(model: &RefModel, snap: &[u8]) -> Vec<dwarf::Field> {
    let Some(d) = &model.dwarf else {
        return Vec::new();
    };
    match (
        old_bytes(model, snap, d.old_info),
        old_bytes(model, snap, d.old_abbrev),
    ) {
        (Some(info), Some(abbrev)) => dwarf::fields(info, abbrev),
        _ => Vec::new(),
    }
}

/// The snapshot spans `(snapshot offset, length, file offset)` of `segments` (starting at
/// file offset `base`), pushed to `spans` in segment order.
fn push_spans(spans: &mut Vec<(u64, u64, u64)>, segments: &[Segment], base: u64) {
    let mut q = base;
    for s in segments {
        if let Source::Snap { off, .. } | Source::Cover { off } = s.src {
            spans.push((off, s.len as u64, q));
        }
        q += s.len as u64;
    }
}

/// Predictions for a file that travels block by block in file order (the streamed
/// sender's windows; the receiver decodes each block as its bytes complete): the model
/// comes with the first block predicted (the file's first, unless that window went raw),
/// and each block's covers are predicted with the map of the snapshot segments of every
/// block from that one up to and including it, which both ends hold at that point. A reference into a part of the file not yet sent is not predicted (its target
/// does not map yet). A file that is one block is predicted as a `.pbb` is (the map of
/// all its segments).
#[derive(Clone)]
pub struct Causal {
    model: RefModel,
    /// The old `.debug_info`'s reference fields, walked once for all blocks.
    dwarf: Vec<dwarf::Field>,
    /// The snapshot spans of the blocks so far, sorted (shared with the maps made from them
    /// while those live)...
    spans: std::sync::Arc<Vec<(u64, u64, u64)>>,
    /// ...but those of the blocks since the last one predicted, in file order (merged in
    /// when a block needs the map).
    pending: Vec<(u64, u64, u64)>,
    /// The file offset of the block that carries the model (the first one predicted).
    start: u64,
    /// File bytes the blocks so far cover (the next block starts there).
    next: u64,
    /// Where the spans would have passed [`MAX_CAUSAL_SPANS`]: no more predictions for
    /// this file from there on.
    full_at: Option<u64>,
    /// Per region, the old table read in step ([`RegionKind::Table`]), read with the map of
    /// the first block whose covers meet the region (at that block's file offset) and kept
    /// for the file's later blocks (a `.pbb` sent whole, one block, reads them with the map
    /// of all its segments as `pfs unplan` does).
    tables: Vec<Option<(u64, std::sync::Arc<OldTable>)>>,
    no_table: std::sync::Arc<OldTable>,
}

/// Most snapshot spans (segments that read the snapshot) of one file a [`Causal`] predicts
/// with: 262,144 (6 MiB, which each predicted block's map reads to build its hint table).
/// The libstd release pair has 43,847.
pub const MAX_CAUSAL_SPANS: usize = 1 << 18;

/// Most units of map work ([`Causal::map_work`]: a span read or a hint entry written, about
/// a nanosecond each; decoding a block costs about that per byte) per file byte of a block
/// that is predicted. On the libstd release pair (43,847 spans) blocks of about 15 KB and
/// more are predicted; the streamed sender's are 256 KiB of spill.
pub const MAP_UNITS_PER_BYTE: u64 = 4;

/// A block that does not start where the file's blocks so far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfOrder;

impl Causal {
    /// The state before the block at file offset `start` that carries the model `model` of
    /// its file (the first block predicted), against `snap`.
    pub fn new(model: RefModel, snap: &[u8], start: u64) -> Self {
        let dwarf = old_dwarf(&model, snap);
        Causal {
            spans: Default::default(),
            pending: Vec::new(),
            start,
            next: start,
            full_at: None,
            tables: vec![None; model.regions.len()],
            no_table: Default::default(),
            model,
            dwarf,
        }
    }

    pub fn model(&self) -> &RefModel {
        &self.model
    }

    /// The file offset of the block that carries the model.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Take in the next block's segments (`len` file bytes starting at `base`, where the
    /// blocks so far end); the map to predict it with ([`Causal::predictor`]), or `None`
    /// where there is nothing to predict (no covers in the block, or none inside the
    /// model's regions), where the block is too short for its map
    /// ([`MAP_UNITS_PER_BYTE`]), and once the file's blocks hold more than
    /// [`MAX_CAUSAL_SPANS`] snapshot spans (the rest of the file is not predicted). Err
    /// where the block does not start at the end of the last one.
    pub fn extend(
        &mut self,
        snap: &[u8],
        segments: &[Segment],
        base: u64,
        len: u64,
    ) -> Result<Option<AddressMap>, OutOfOrder> {
        if base != self.next {
            return Err(OutOfOrder);
        }
        let end = base.checked_add(len).ok_or(OutOfOrder)?;
        self.next = end;
        if self.full_at.is_some() {
            return Ok(None);
        }
        let before = self.pending.len();
        push_spans(&mut self.pending, segments, base);
        if self.spans.len() + self.pending.len() > MAX_CAUSAL_SPANS {
            self.full_at = Some(base);
            self.pending.truncate(before);
            return Ok(None);
        }
        // no covers here, or none where the model has a region: nothing to predict (the
        // spans wait in `pending` for a block that needs the map)
        let regions = &self.model.regions;
        let k = regions.partition_point(|r| r.start + r.len <= base);
        if self.pending.len() == before || regions.get(k).is_none_or(|r| r.start >= end) {
            return Ok(None);
        }
        // a map costs work in proportion to all the spans (and its hint table), whatever
        // the block's size: a block shorter than that work / MAP_UNITS_PER_BYTE is not
        // predicted, so a stream of tiny blocks cannot make each cost a whole map
        if len.saturating_mul(MAP_UNITS_PER_BYTE) < self.map_work() {
            return Ok(None);
        }
        let mut new = std::mem::take(&mut self.pending);
        new.sort_unstable();
        // the old image's spans mostly come in file order: only the tail after the first
        // new span is merged (a copy only where a map of the last block still holds them)
        let spans = std::sync::Arc::make_mut(&mut self.spans);
        let p = spans.partition_point(|s| *s < new[0]);
        let tail = spans.split_off(p);
        let (mut i, mut j) = (0, 0);
        while i < tail.len() && j < new.len() {
            if tail[i] <= new[j] {
                spans.push(tail[i]);
                i += 1;
            } else {
                spans.push(new[j]);
                j += 1;
            }
        }
        spans.extend_from_slice(&tail[i..]);
        spans.extend_from_slice(&new[j..]);
        let mut map = AddressMap::from_sorted(self.spans.clone());
        // the old tables this block meets first, their keys moved with its map
        let meets = |r: &Region| {
            r.start < end && base < r.start + r.len && matches!(r.kind, RegionKind::Table { .. })
        };
        let regions = &self.model.regions;
        if (0..regions.len()).any(|k| self.tables[k].is_none() && meets(&regions[k])) {
            let t = Predictor::with_parts(&self.model, snap, map, &[], Vec::new());
            for (k, r) in regions.iter().enumerate() {
                if self.tables[k].is_none() && meets(r) {
                    self.tables[k] = Some((base, std::sync::Arc::new(t.old_table(r))));
                }
            }
            map = t.map;
        }
        Ok(Some(map))
    }

    /// The work of a map of the spans so far and those pending: one unit per span and per
    /// entry of its hint table ([`AddressMap::from_sorted`]).
    fn map_work(&self) -> u64 {
        // the spans are sorted: their ends bound them; the pending ones are looked at
        let ends = self.spans.first().into_iter().chain(self.spans.last());
        let (lo, hi) = ends
            .chain(self.pending.iter())
            .fold((u64::MAX, 0u64), |(lo, hi), s| (lo.min(s.0), hi.max(s.0)));
        let hint = if lo <= hi {
            ((hi - lo) >> 12).min(HINT_MAX) + 2
        } else {
            0
        };
        (self.spans.len() + self.pending.len()) as u64 + hint
    }

    /// Forget the blocks from file offset `base` on (the sender sends that part another
    /// way, e.g. raw blocks): the state as it was when the blocks so far ended there.
    pub fn rollback(&mut self, base: u64) {
        if base >= self.next {
            return;
        }
        std::sync::Arc::make_mut(&mut self.spans).retain(|s| s.2 < base);
        self.pending.retain(|s| s.2 < base);
        // tables read with the map of a block forgotten are read again by the block that
        // meets them next (the receiver never saw that map)
        for t in &mut self.tables {
            if t.as_ref().is_some_and(|(at, _)| *at >= base) {
                *t = None;
            }
        }
        self.next = base;
        if self.full_at.is_some_and(|f| f >= base) {
            self.full_at = None;
        }
    }

    /// The predictor of the block [`Causal::extend`] returned `map` for.
    pub fn predictor<'a>(&'a self, snap: &'a [u8], map: AddressMap) -> Predictor<'a> {
        let tables = self
            .tables
            .iter()
            .map(|t| {
                t.as_ref()
                    .map_or_else(|| self.no_table.clone(), |(_, t)| t.clone())
            })
            .collect();
        Predictor::with_parts(&self.model, snap, map, &self.dwarf, tables)
    }
}

/// 1 for the bytes that may open a reference [`Predictor::code`] predicts (the first bytes
/// of its match's arms), 0 for the others.
const OPENS: [u8; 256] = {
    let mut t = [0u8; 256];
    let opens = [
        0xE8u8, 0xE9, 0x0F, 0x8B, 0x89, 0x8D, 0x3B, 0x39, 0x03, 0x2B, 0x33, 0x0B, 0x23, 0x85, 0x87,
        0x63, 0xFF,
    ];
    let mut k = 0;
    while k < opens.len() {
        t[opens[k] as usize] = 1;
        k += 1;
    }
    t
};

/// Fewest difference bytes that [`Predictor::apply`] spreads over threads.
const PAR_MIN: usize = 1 << 20;

/// The difference bytes of `segments` (their covers' lengths).
fn at_end(segments: &[Segment]) -> usize {
    segments
        .iter()
        .filter(|s| matches!(s.src, Source::Cover { .. }))
        .map(|s| s.len as usize)
        .sum()
}

fn find(loads: &[Load], x: u64, by_addr: bool) -> Option<&Load> {
    loads.iter().find(|l| {
        let s = if by_addr { l.vaddr } else { l.off };
        x >= s && x - s < l.size
    })
}

/// Everything a prediction needs.
pub struct Predictor<'a> {
    pub model: &'a RefModel,
    pub snap: &'a [u8],
    pub map: AddressMap,
    /// Per region of the model: the old table of a [`RegionKind::Table`] (empty for the
    /// other kinds, and where the table does not lie inside the snapshot).
    tables: Vec<std::sync::Arc<OldTable>>,
    /// The old `.debug_info`'s reference fields (for a [`RegionKind::DebugInfo`] region).
    dwarf: std::borrow::Cow<'a, [dwarf::Field]>,
}

/// The entries of a table read in step ([`RegionKind::Table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Entries {
    /// `Elf64_Rela`: offset, info, addend; keyed by the addend.
    #[default]
    Rela,
    /// `Elf64_Sym`: name u32, info u8, other u8, section index u16, value, size; keyed by
    /// the value.
    Sym,
    /// A `.debug_ranges` entry: begin, end (addresses: a Rust unit's base is 0); keyed by
    /// the begin address (0 is a list's end, which no lookup finds).
    Ranges,
}

impl Entries {
    /// The region kind's code in the `refs` stream.
    fn code(self) -> u8 {
        match self {
            Entries::Rela => 3,
            Entries::Sym => 4,
            Entries::Ranges => 6,
        }
    }
    fn from_code(k: u8) -> Option<Entries> {
        [Entries::Rela, Entries::Sym, Entries::Ranges]
            .into_iter()
            .find(|e| e.code() == k)
    }
    /// Bytes of an entry.
    fn len(self) -> u64 {
        match self {
            Entries::Rela | Entries::Sym => 24,
            Entries::Ranges => 16,
        }
    }
    /// The 8-byte field that is the key.
    fn key_field(self) -> usize {
        match self {
            Entries::Rela => 2,
            Entries::Sym => 1,
            Entries::Ranges => 0,
        }
    }
}

/// An old table read in step: where its entries lie in the snapshot, each entry's key moved
/// to the new image (`None` where the address does not map), and the first entry of each
/// moved key.
#[derive(Default)]
struct OldTable {
    entries: Entries,
    at: usize,
    keys: Vec<Option<u64>>,
    by_key: std::collections::HashMap<u64, u32>,
}

/// Field `k` (8 bytes at `8k`) of an entry.
fn word(e: &[u8], k: usize) -> u64 {
    u64::from_le_bytes(e[8 * k..8 * k + 8].try_into().expect("8"))
}

impl<'a> Predictor<'a> {
    /// The predictor of `model` against `snap`, the segments' positions in `map`.
    pub fn new(model: &'a RefModel, snap: &'a [u8], map: AddressMap) -> Self {
        let mut p = Predictor {
            model,
            snap,
            map,
            tables: Vec::new(),
            dwarf: std::borrow::Cow::Borrowed(&[]),
        };
        p.tables = model
            .regions
            .iter()
            .map(|r| std::sync::Arc::new(p.old_table(r)))
            .collect();
        p.dwarf = std::borrow::Cow::Owned(old_dwarf(model, snap));
        p
    }

    /// The predictor of `model` with the old tables read already (one per region) and the
    /// old `.debug_info`'s fields walked once before ([`Causal`]).
    fn with_parts(
        model: &'a RefModel,
        snap: &'a [u8],
        map: AddressMap,
        dwarf: &'a [dwarf::Field],
        tables: Vec<std::sync::Arc<OldTable>>,
    ) -> Self {
        Predictor {
            model,
            snap,
            map,
            tables,
            dwarf: std::borrow::Cow::Borrowed(dwarf),
        }
    }

    /// The new value of the old `.debug_info` field `x` whose old bytes are `old`; `unit`
    /// caches the last unit's new start (fields come in order, many to a unit).
    fn dwarf_field(
        &self,
        d: &DwarfModel,
        x: &dwarf::Field,
        old: &[u8],
        unit: &mut Option<(u32, Option<u64>)>,
    ) -> Option<u64> {
        // the new file position of old-image offset `o`
        let new_pos = |o: u64| self.map.map(self.model.old_base.checked_add(o)?);
        match x.kind {
            dwarf::Kind::Addr => {
                let v = u64::from_le_bytes(old.try_into().ok()?);
                // 0 stands for "no address" (a unit's base): kept
                (v != 0).then(|| self.move_va(v)).flatten()
            }
            dwarf::Kind::Offset(t) => {
                let v = u32::from_le_bytes(old.try_into().ok()?) as u64;
                let &(_, old_sec, new_sec) = d.targets.iter().find(|e| e.0 == t)?;
                new_pos(old_sec.checked_add(v)?)?.checked_sub(new_sec)
            }
            dwarf::Kind::UnitRef => {
                let v = u32::from_le_bytes(old.try_into().ok()?) as u64;
                let start = d.old_info.0.checked_add(x.unit as u64)?;
                let new_start = match *unit {
                    Some((u, s)) if u == x.unit => s,
                    _ => {
                        let s = new_pos(start);
                        *unit = Some((x.unit, s));
                        s
                    }
                }?;
                new_pos(start.checked_add(v)?)?.checked_sub(new_start)
            }
        }
        .filter(|&n| x.size() == 8 || n <= u32::MAX as u64)
    }

    /// The old table of a region read in step.
    fn old_table(&self, r: &Region) -> OldTable {
        let RegionKind::Table {
            of: entries,
            old_start,
            old_len,
        } = r.kind
        else {
            return OldTable::default();
        };
        let Some((at, b)) = self
            .model
            .old_base
            .checked_add(old_start)
            .and_then(|s| Some((s as usize, s.checked_add(old_len)? as usize)))
            .and_then(|(s, e)| Some((s, self.snap.get(s..e)?)))
        else {
            return OldTable::default();
        };
        let n = b.len() / entries.len() as usize;
        let mut t = OldTable {
            entries,
            at,
            keys: Vec::with_capacity(n),
            by_key: std::collections::HashMap::with_capacity(n),
        };
        for (j, e) in b.chunks_exact(entries.len() as usize).enumerate() {
            let key = match entries {
                // a relative relocation's addend is an address; others' are kept
                Entries::Rela if word(e, 1) as u32 == R_X86_64_RELATIVE => self.move_va(word(e, 2)),
                Entries::Rela => Some(word(e, 2)),
                // a symbol defined in a section has an address; undefined (0), absolute and
                // common (0xff00 and up) values are kept
                Entries::Sym => match u16::from_le_bytes([e[6], e[7]]) {
                    0 | 0xff00.. => Some(word(e, 1)),
                    _ => self.move_va(word(e, 1)),
                },
                // a list's end (0, 0) stays; an address moves
                Entries::Ranges => match word(e, 0) {
                    0 => Some(0),
                    b => self.move_va(b),
                },
            };
            t.keys.push(key);
            if let Some(m) = key.filter(|&m| !(entries == Entries::Ranges && m == 0)) {
                t.by_key.entry(m).or_insert(j as u32);
            }
        }
        t
    }

    /// The entry after old entry `j` of `t` as predicted in step: `prev` is the rebuilt
    /// entry found to be old entry `j`; `(field offset, bytes)` for each predicted field.
    fn in_step(&self, t: &OldTable, j: usize, prev: &[u8; 24]) -> [(usize, [u8; 8], usize); 3] {
        let n = t.entries.len() as usize;
        let o = &self.snap[t.at + n * j..t.at + n * (j + 2)];
        let (o0, o1) = o.split_at(n);
        let key = t.keys[j + 1];
        match t.entries {
            // offset: the rebuilt offset plus the old step; info as the old entry's; the
            // addend moved
            Entries::Rela => {
                let off = word(prev, 0).wrapping_add(word(o1, 0).wrapping_sub(word(o0, 0)));
                [
                    (0, off.to_le_bytes(), 8),
                    (8, word(o1, 1).to_le_bytes(), 8),
                    (
                        16,
                        key.unwrap_or(0).to_le_bytes(),
                        if key.is_some() { 8 } else { 0 },
                    ),
                ]
            }
            // name: the rebuilt name plus the old step (the string table follows the
            // symbols' order); info, other, section index and size as the old entry's; the
            // value moved
            Entries::Sym => {
                let name = |e: &[u8]| u32::from_le_bytes(e[..4].try_into().expect("4"));
                let nm = name(prev).wrapping_add(name(o1).wrapping_sub(name(o0)));
                let mut head = [0u8; 8];
                head[..4].copy_from_slice(&nm.to_le_bytes());
                head[4..].copy_from_slice(&o1[4..8]);
                [
                    (0, head, 8),
                    (
                        8,
                        key.unwrap_or(0).to_le_bytes(),
                        if key.is_some() { 8 } else { 0 },
                    ),
                    (16, word(o1, 2).to_le_bytes(), 8),
                ]
            }
            // begin moved, end = the moved begin + the old length (a list's end stays 0, 0)
            Entries::Ranges => {
                let (b, e) = (word(o1, 0), word(o1, 1));
                let end = key.map(|k| {
                    if b == 0 && e == 0 {
                        0
                    } else {
                        k.wrapping_add(e.wrapping_sub(b))
                    }
                });
                let n = |v: Option<u64>| if v.is_some() { 8 } else { 0 };
                [
                    (0, key.unwrap_or(0).to_le_bytes(), n(key)),
                    (8, end.unwrap_or(0).to_le_bytes(), n(end)),
                    (0, [0; 8], 0),
                ]
            }
        }
    }

    /// Old virtual address of snapshot position `p`.
    fn old_va(&self, p: u64) -> Option<u64> {
        let off = p.checked_sub(self.model.old_base)?;
        let l = find(&self.model.old_loads, off, false)?;
        Some(l.vaddr + (off - l.off))
    }
    /// New virtual address of file position `q`.
    fn new_va(&self, q: u64) -> Option<u64> {
        let l = find(&self.model.new_loads, q, false)?;
        Some(l.vaddr + (q - l.off))
    }
    /// New virtual address of old virtual address `va`.
    fn move_va(&self, va: u64) -> Option<u64> {
        let l = find(&self.model.old_loads, va, true)?;
        let p = self.model.old_base.checked_add(l.off + (va - l.vaddr))?;
        self.new_va(self.map.map(p)?)
    }

    /// Call `f(i, bytes)` for every predicted reference of the cover at file offset `q0`,
    /// snapshot offset `p0`, `len` bytes (which must lie inside the snapshot): `i` is the
    /// offset in the cover, `bytes` the predicted file bytes there (4 or 8).
    pub fn cover(&self, q0: u64, p0: u64, len: u64, mut f: impl FnMut(usize, &[u8])) {
        let regions = &self.model.regions;
        let mut k = regions.partition_point(|r| r.start + r.len <= q0);
        while k < regions.len() && regions[k].start < q0 + len {
            let r = regions[k];
            let from = r.start.max(q0);
            let to = (r.start + r.len).min(q0 + len);
            let old = &self.snap[(p0 + (from - q0)) as usize..(p0 + (to - q0)) as usize];
            let at = (from - q0) as usize;
            match r.kind {
                RegionKind::Code => self.code(old, p0 + (from - q0), from, |i, b| f(at + i, b)),
                RegionKind::Words { stride, mask } => {
                    let stride = stride as u64;
                    // first entry starting at or after `from`
                    let mut e = r.start + (from - r.start).div_ceil(stride) * stride;
                    while e < to {
                        for w in 0..(stride / 8) {
                            if mask >> w & 1 == 0 {
                                continue;
                            }
                            let x = e + 8 * w;
                            if x + 8 > to {
                                break;
                            }
                            let i = (x - from) as usize;
                            let v = u64::from_le_bytes(old[i..i + 8].try_into().expect("8"));
                            if let Some(n) = self.move_va(v) {
                                if n != v {
                                    f(at + i, &n.to_le_bytes());
                                }
                            }
                        }
                        e += stride;
                    }
                }
                // predicted from rebuilt bytes: [`Predictor::table_cover`]
                RegionKind::Table { .. } => {}
                // the old .debug_info's fields that lie in this part of the cover
                RegionKind::DebugInfo => {
                    let Some(d) = &self.model.dwarf else {
                        k += 1;
                        continue;
                    };
                    // old .debug_info offsets of the part: [lo, hi)
                    let info_at = self.model.old_base.saturating_add(d.old_info.0);
                    let p_from = p0 + (from - q0);
                    let (lo, hi) = (
                        p_from.saturating_sub(info_at),
                        (p_from + (to - from)).saturating_sub(info_at),
                    );
                    let first = self.dwarf.partition_point(|x| (x.at as u64) < lo);
                    let mut unit = None;
                    for x in self.dwarf[first..]
                        .iter()
                        .take_while(|x| (x.at as u64) < hi)
                    {
                        let n = x.size();
                        let Some(i) = (info_at + x.at as u64)
                            .checked_sub(p_from)
                            .map(|i| i as usize)
                            .filter(|&i| i + n <= old.len())
                        else {
                            continue;
                        };
                        if let Some(v) = self.dwarf_field(d, x, &old[i..i + n], &mut unit) {
                            let b = v.to_le_bytes();
                            if b[..n] != old[i..i + n] {
                                f(at + i, &b[..n]);
                            }
                        }
                    }
                }
                RegionKind::LineAddr => {
                    // each `00 09 02` (memchr's search, not a test per byte) with 8 bytes
                    // after it; a mapped address is skipped over, another match is not
                    let mut i = 0usize;
                    while i + 11 <= old.len() {
                        let Some(j) = memchr::memmem::find(&old[i..old.len() - 8], &[0, 9, 2])
                        else {
                            break;
                        };
                        i += j;
                        let v = u64::from_le_bytes(old[i + 3..i + 11].try_into().expect("8"));
                        match self.move_va(v) {
                            Some(n) => {
                                if n != v {
                                    f(at + i + 3, &n.to_le_bytes());
                                }
                                i += 11;
                            }
                            None => i += 1,
                        }
                    }
                }
            }
            k += 1;
        }
    }

    /// rel32 references in old code bytes `old` (snapshot offset `p`, new file offset `q`).
    fn code(&self, old: &[u8], p: u64, q: u64, mut f: impl FnMut(usize, &[u8])) {
        let n = old.len();
        let mut i = 0usize;
        while i < n {
            // skip 8 bytes at a time while none of them can start a reference (most bytes:
            // a table lookup each instead of the match's jump)
            while i + 8 <= n && old[i..i + 8].iter().fold(0, |a, &b| a | OPENS[b as usize]) == 0 {
                i += 8;
            }
            let Some(&b) = old.get(i) else { break };
            if OPENS[b as usize] == 0 {
                i += 1;
                continue;
            }
            // where the disp32 starts, relative to i; the instruction ends right after it
            let d = match b {
                0xE8 | 0xE9 => 1,
                0x0F if i + 1 < n && (0x80..=0x8F).contains(&old[i + 1]) => 2,
                // opcode + ModRM 00 reg 101 (RIP-relative), no immediate
                0x8B | 0x89 | 0x8D | 0x3B | 0x39 | 0x03 | 0x2B | 0x33 | 0x0B | 0x23 | 0x85
                | 0x87 | 0x63 | 0xFF
                    if i + 1 < n && old[i + 1] & 0xC7 == 0x05 =>
                {
                    2
                }
                0x0F if i + 2 < n
                    && matches!(
                        old[i + 1],
                        0x10 | 0x11 | 0x28 | 0x29 | 0x2E | 0x2F | 0xB6 | 0xB7 | 0xBE | 0xBF
                    )
                    && old[i + 2] & 0xC7 == 0x05 =>
                {
                    3
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            if i + d + 4 > n {
                break;
            }
            let disp = i32::from_le_bytes(old[i + d..i + d + 4].try_into().expect("4"));
            let end = (i + d + 4) as u64;
            let pred = (|| {
                let old_end = self.old_va(p + end)?;
                let target = old_end.checked_add_signed(disp as i64)?;
                let new_target = self.move_va(target)?;
                let new_end = self.new_va(q + end)?;
                i32::try_from(new_target as i64 - new_end as i64).ok()
            })();
            match pred {
                Some(v) => {
                    if v != disp {
                        f(i + d, &v.to_le_bytes());
                    }
                    i += d + 4;
                }
                None => i += 1,
            }
        }
    }

    /// The predictions of the tables read in step in the cover at file offset `q0`,
    /// snapshot offset `p0`, whose differences are `d` (encoding: subtracted, decoding: added
    /// back), entry by entry: an entry's prediction needs the rebuilt entry before it in the
    /// same cover, which is `snapshot + d` before the encoder changes `d` and after the
    /// decoder has.
    fn table_cover(&self, q0: u64, p0: u64, d: &mut [u8], decode: bool) {
        let regions = &self.model.regions;
        let len = d.len() as u64;
        let old = &self.snap[p0 as usize..(p0 + len) as usize];
        let mut k = regions.partition_point(|r| r.start + r.len <= q0);
        while k < regions.len() && regions[k].start < q0 + len {
            let r = regions[k];
            let t = &self.tables[k];
            k += 1;
            if t.keys.is_empty() {
                continue;
            }
            let to = (r.start + r.len).min(q0 + len);
            let entry = t.entries.len();
            let n = entry as usize;
            let mut e = r.start + (r.start.max(q0) - r.start).div_ceil(entry) * entry;
            // the old entry the previous entry was found to be, and that entry rebuilt
            let mut step: Option<(usize, [u8; 24])> = None;
            let rebuilt = |d: &[u8], i: usize| {
                let mut v = [0u8; 24];
                for (b, (s, x)) in v.iter_mut().zip(old[i..i + n].iter().zip(&d[i..i + n])) {
                    *b = s.wrapping_add(*x);
                }
                v
            };
            let key_field = t.entries.key_field();
            while e + entry <= to {
                let i = (e - q0) as usize;
                let before = (!decode).then(|| rebuilt(d, i));
                if let Some((j, prev)) = step.filter(|s| s.0 + 1 < t.keys.len()) {
                    for (at, bytes, n) in self.in_step(t, j, &prev) {
                        adjust(d, old, i + at, &bytes[..n], decode);
                    }
                }
                let now = before.unwrap_or_else(|| rebuilt(d, i));
                let key = word(&now, key_field);
                // in step where the next old entry has this key (relocations against symbols
                // share addend 0, a target may fill several slots), else the first old entry
                // that has it
                let next = step
                    .map(|s| s.0 + 1)
                    .filter(|&j| t.keys.get(j) == Some(&Some(key)));
                step = next
                    .or_else(|| t.by_key.get(&key).map(|&j| j as usize))
                    .map(|j| (j, now));
                e += entry;
            }
        }
    }

    /// Subtract (`sign = -1`, encoding) or add back (`sign = 1`, decoding) the predictions of
    /// every cover in `segments` (starting at file offset `base`) to the difference bytes
    /// `diffs` (the covers' differences, concatenated in order). The segments must have been
    /// validated against this snapshot.
    ///
    /// A cover's predictions change only its own difference bytes, so the segments are cut
    /// into runs of about equal cover bytes, four per core, which the cores take in turn
    /// (from [`PAR_MIN`] difference bytes on; the same bytes as one pass).
    pub fn apply(&self, segments: &[Segment], base: u64, diffs: &mut [u8], decode: bool) {
        let cores = crate::util::cores();
        let parts = if diffs.len() < PAR_MIN {
            1
        } else {
            (4 * cores).min(diffs.len() / (PAR_MIN / 8))
        };
        self.apply_split(segments, base, diffs, decode, parts, cores)
    }

    /// [`Predictor::apply`] in at most `parts` runs, on `threads` threads.
    fn apply_split(
        &self,
        segments: &[Segment],
        base: u64,
        diffs: &mut [u8],
        decode: bool,
        parts: usize,
        threads: usize,
    ) {
        if parts < 2 || threads < 2 {
            return self.apply_run(segments, base, diffs, decode);
        }
        // cut points: (segment index, file offset, difference offset) at each run's start
        let per = diffs.len().div_ceil(parts);
        let mut cuts = vec![(0usize, base, 0usize)];
        let (mut q, mut at) = (base, 0usize);
        for (k, s) in segments.iter().enumerate() {
            if at >= per * cuts.len() && cuts.len() < parts {
                cuts.push((k, q, at));
            }
            if let Source::Cover { .. } = s.src {
                at += s.len as usize;
            }
            q += s.len as u64;
        }
        // the runs, taken in turn by `threads` threads (where the references lie varies along
        // a file: more runs than threads even out the load)
        let mut runs = Vec::with_capacity(cuts.len());
        let mut rest = &mut diffs[..];
        let mut taken = 0usize;
        for (w, &(k, q, _)) in cuts.iter().enumerate() {
            let (end_k, end_at) = cuts
                .get(w + 1)
                .map_or((segments.len(), at_end(segments)), |c| (c.0, c.2));
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(end_at - taken);
            rest = tail;
            taken = end_at;
            runs.push((&segments[k..end_k], q, mine));
        }
        let runs = std::sync::Mutex::new(runs);
        let work = || loop {
            let run = runs.lock().map(|mut r| r.pop()).unwrap_or(None);
            match run {
                Some((segs, q, mine)) => self.apply_run(segs, q, mine, decode),
                None => break,
            }
        };
        std::thread::scope(|sc| {
            for _ in 1..threads {
                sc.spawn(work);
            }
            work();
        });
    }

    /// [`Predictor::apply`] on this thread.
    fn apply_run(&self, segments: &[Segment], base: u64, diffs: &mut [u8], decode: bool) {
        let mut q = base;
        let mut at = 0usize;
        for s in segments {
            if let Source::Cover { off } = s.src {
                let d = &mut diffs[at..at + s.len as usize];
                let snap = self.snap;
                self.cover(q, off, s.len as u64, |i, pred| {
                    adjust(d, &snap[off as usize..], i, pred, decode)
                });
                self.table_cover(q, off, d, decode);
                at += s.len as usize;
            }
            q += s.len as u64;
        }
    }
}

/// A model of one image of `n` bytes of code at file offset 0, loaded at `old_va` in the
/// old image (at snapshot offset 0) and `new_va` in the new (tests).
#[cfg(test)]
pub(crate) fn code_model(n: u64, old_va: u64, new_va: u64) -> RefModel {
    let load = |vaddr| {
        vec![Load {
            off: 0,
            vaddr,
            size: n,
        }]
    };
    RefModel {
        old_base: 0,
        old_loads: load(old_va),
        new_loads: load(new_va),
        regions: vec![Region {
            start: 0,
            len: n,
            kind: RegionKind::Code,
        }],
        dwarf: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block whose map would cost more than [`MAP_UNITS_PER_BYTE`] per byte of it is not
    /// predicted (its spans still count for the next block); one long enough is; a block
    /// out of order is refused.
    #[test]
    fn a_block_too_short_for_its_map_is_not_predicted() {
        let n = 1u64 << 20;
        let snap = vec![0x90u8; n as usize];
        let mut c = Causal::new(code_model(n, 0x10000, 0x10000), &snap, 0);
        let cover = |off: u64, len: u32| Segment {
            len,
            src: Source::Cover { off },
        };
        // 4,096 covers of 64 bytes spread over the snapshot: 4,096 spans, 258 hint entries
        let many: Vec<Segment> = (0..4096u64).map(|k| cover(k * 256, 64)).collect();
        assert!(c.extend(&snap, &many, 0, 4096 * 64).unwrap().is_some());
        let work = c.map_work();
        let short = (work + 1) / MAP_UNITS_PER_BYTE - 1;
        let at = 4096 * 64;
        assert!(c
            .extend(&snap, &[cover(0, short as u32)], at, short)
            .unwrap()
            .is_none());
        let long = work.div_ceil(MAP_UNITS_PER_BYTE) + 8;
        let at = at + short;
        assert!(c
            .extend(&snap, &[cover(8, long as u32)], at, long)
            .unwrap()
            .is_some());
        assert_eq!(c.spans.len(), 4096 + 2, "the short block's span was kept");
        assert!(
            c.extend(&snap, &[cover(0, 1)], at, 1).is_err(),
            "out of order"
        );
    }

    /// A table read with the map of a block that is then rolled back (the sender sent that
    /// window raw instead) is read again by the next block that meets it, as by a receiver
    /// that never saw the block; one read by a block before the rollback point is kept.
    #[test]
    fn a_rollback_forgets_the_tables_read_with_the_forgotten_map() {
        let n = 1u64 << 16;
        let snap = vec![0u8; n as usize];
        let mut model = code_model(n, 0x10000, 0x10000);
        model.regions = vec![
            Region {
                start: 0,
                len: 2400,
                kind: RegionKind::Table {
                    of: Entries::Rela,
                    old_start: 0,
                    old_len: 2400,
                },
            },
            Region {
                start: 40_000,
                len: 2400,
                kind: RegionKind::Table {
                    of: Entries::Rela,
                    old_start: 40_000,
                    old_len: 2400,
                },
            },
        ];
        let cover = |off: u64, len: u32| Segment {
            len,
            src: Source::Cover { off },
        };
        let mut c = Causal::new(model, &snap, 0);
        assert!(c
            .extend(&snap, &[cover(0, 20_000)], 0, 20_000)
            .unwrap()
            .is_some());
        assert!(c
            .extend(&snap, &[cover(20_000, 30_000)], 20_000, 30_000)
            .unwrap()
            .is_some());
        assert_eq!(
            c.tables
                .iter()
                .map(|t| t.as_ref().map(|t| t.0))
                .collect::<Vec<_>>(),
            vec![Some(0), Some(20_000)]
        );
        c.rollback(20_000);
        assert_eq!(
            c.tables
                .iter()
                .map(|t| t.as_ref().map(|t| t.0))
                .collect::<Vec<_>>(),
            vec![Some(0), None]
        );
        assert!(c.extend(&snap, &[], 20_000, 10_000).unwrap().is_none());
        assert!(c
            .extend(&snap, &[cover(30_000, 20_000)], 30_000, 20_000)
            .unwrap()
            .is_some());
        assert_eq!(c.tables[1].as_ref().map(|t| t.0), Some(30_000));
    }

    /// Applied in runs side by side, the predictions change the same bytes as in one pass
    /// (covers of random lengths over code full of call instructions, cut anywhere).
    #[test]
    fn predictions_applied_in_parallel_runs_equal_one_pass() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let n = 3 << 20;
        // calls every 16 bytes, whose targets move by 64 bytes in the new file
        let mut snap = vec![0x90u8; n];
        for i in (0..n - 5).step_by(16) {
            snap[i] = 0xE8;
            let disp = (next() % 4096) as i32 - 2048;
            snap[i + 1..i + 5].copy_from_slice(&disp.to_le_bytes());
        }
        let m = code_model(n as u64, 0x10000, 0x10040);
        // covers of 1..64 KiB at shifted snapshot offsets, with raw runs between them
        let mut segs = Vec::new();
        let mut q = 0usize;
        while q < n {
            let len = (1 + next() as usize % 65536).min(n - q);
            let src = if next() % 5 == 0 {
                Source::Raw
            } else {
                Source::Cover {
                    off: (q as u64).saturating_sub(next() % 64),
                }
            };
            segs.push(Segment {
                len: len as u32,
                src,
            });
            q += len;
        }
        let p = Predictor::new(&m, &snap, AddressMap::new(&segs, 0));
        let covered = at_end(&segs);
        let orig: Vec<u8> = (0..covered).map(|_| next() as u8).collect();
        let mut one = orig.clone();
        p.apply_run(&segs, 0, &mut one, false);
        assert_ne!(one, orig, "nothing was predicted");
        for parts in [2, 3, 7] {
            let mut par = orig.clone();
            p.apply_split(&segs, 0, &mut par, false, parts, 2);
            assert!(par == one, "{parts} runs differ from one pass");
            p.apply_split(&segs, 0, &mut par, true, parts, 3);
            assert!(par == orig, "{parts} runs do not decode back");
        }
    }

    /// The hinted lookup finds what a binary search over the sorted spans finds: random
    /// spans (overlapping, adjacent, far apart: past 4 GiB the hint's entries grow) probed
    /// at their edges and between them.
    #[test]
    fn address_map_lookups_equal_a_plain_search() {
        let mut rng = crate::pob::prng::SplitMix64::new(41);
        let mut next = move || rng.next_u64();
        for spread in [1u64 << 16, 1 << 24, 1 << 40] {
            let mut segs = Vec::new();
            for _ in 0..300 {
                let len = 1 + next() % 5000;
                let src = if next() % 4 == 0 {
                    Source::Raw
                } else {
                    Source::Cover {
                        off: next() % spread,
                    }
                };
                segs.push(Segment {
                    len: len as u32,
                    src,
                });
            }
            let m = AddressMap::new(&segs, 7);
            let plain = |p: u64| {
                let i = m.spans.partition_point(|s| s.0 <= p);
                (i.saturating_sub(8)..i)
                    .rev()
                    .map(|k| m.spans[k])
                    .find(|&(o, l, _)| p < o + l)
                    .map(|(o, _, q)| q + (p - o))
            };
            let mut probes: Vec<u64> = vec![0, u64::MAX, spread];
            for &(o, l, _) in m.spans.iter() {
                probes.extend([o.saturating_sub(1), o, o + l - 1, o + l, o + l / 2]);
            }
            probes.extend((0..2000).map(|_| next() % (spread + 10_000)));
            for p in probes {
                assert_eq!(m.map(p), plain(p), "spread {spread}, position {p}");
            }
        }
    }

    /// Code with no byte that opens a reference, or with one only at its very end, in every
    /// length up to 40: nothing is predicted and the scan stays inside the bytes.
    #[test]
    fn a_code_scan_ends_inside_its_bytes() {
        let m = RefModel {
            old_base: 0,
            old_loads: vec![],
            new_loads: vec![],
            regions: vec![],
            dwarf: None,
        };
        let p = Predictor::new(&m, &[], AddressMap::new(&[], 0));
        for len in 0..40 {
            for last in [0x90u8, 0xE8, 0x0F] {
                let mut old = vec![0x90u8; len];
                if let Some(b) = old.last_mut() {
                    *b = last;
                }
                let mut calls = 0;
                p.code(&old, 0, 0, |_, _| calls += 1);
                assert_eq!(calls, 0, "{len} bytes ending in {last:#x}");
            }
        }
    }

    #[test]
    fn model_round_trips_and_bad_models_are_refused() {
        let m = RefModel {
            old_base: 1000,
            old_loads: vec![Load {
                off: 0,
                vaddr: 0,
                size: 500,
            }],
            new_loads: vec![Load {
                off: 0,
                vaddr: 0x1000,
                size: 600,
            }],
            regions: vec![
                Region {
                    start: 10,
                    len: 100,
                    kind: RegionKind::Code,
                },
                Region {
                    start: 200,
                    len: 48,
                    kind: RegionKind::Words {
                        stride: 24,
                        mask: 0b101,
                    },
                },
                Region {
                    start: 300,
                    len: 10,
                    kind: RegionKind::LineAddr,
                },
                Region {
                    start: 320,
                    len: 72,
                    kind: RegionKind::Table {
                        of: Entries::Rela,
                        old_start: 40,
                        old_len: 48,
                    },
                },
                Region {
                    start: 400,
                    len: 48,
                    kind: RegionKind::Table {
                        of: Entries::Sym,
                        old_start: 100,
                        old_len: 24,
                    },
                },
                Region {
                    start: 460,
                    len: 32,
                    kind: RegionKind::Table {
                        of: Entries::Ranges,
                        old_start: 200,
                        old_len: 32,
                    },
                },
            ],
            dwarf: None,
        };
        let b = m.encode();
        assert_eq!(RefModel::decode(&b, 600).unwrap(), m);
        // an old relocation table of no whole entries, empty, or above the limit
        for old_len in [0, 25, MAX_TABLE_BYTES + 24] {
            let mut w = m.clone();
            w.regions[3].kind = RegionKind::Table {
                of: Entries::Rela,
                old_start: 40,
                old_len,
            };
            assert!(
                RefModel::decode(&w.encode(), 600).is_err(),
                "old_len {old_len}"
            );
        }
        assert!(
            RefModel::decode(&b, 309).is_err(),
            "region past the file end"
        );
        for cut in 0..b.len() {
            assert!(RefModel::decode(&b[..cut], 600).is_err() || cut == 0);
        }
        // old tables within the limit each, above it in all
        let mut many = m.clone();
        many.regions = (0..3u64)
            .map(|k| Region {
                start: 100 * k,
                len: 48,
                kind: RegionKind::Table {
                    of: Entries::Rela,
                    old_start: 0,
                    old_len: MAX_TABLE_BYTES / 24 / 2 * 24,
                },
            })
            .collect();
        many.dwarf = None;
        assert!(
            RefModel::decode(&many.encode(), 600).is_err(),
            "tables in all"
        );
        many.regions.pop();
        assert!(RefModel::decode(&many.encode(), 600).is_ok());
        // a range list of no whole 16-byte entries
        let mut w = m.clone();
        w.regions[5].kind = RegionKind::Table {
            of: Entries::Ranges,
            old_start: 200,
            old_len: 24,
        };
        assert!(
            RefModel::decode(&w.encode(), 600).is_err(),
            "ranges of 24 bytes"
        );
        let mut bad = m.clone();
        bad.regions.truncate(3);
        let mut bad = bad.encode();
        let n = bad.len();
        bad[n - 1] = 7; // unknown kind
        assert!(RefModel::decode(&bad, 600).is_err());
    }

    /// A table whose entries all moved by the same distance, with one entry inserted in the
    /// new table, under one cover on the old table's diagonal (so after the insertion the
    /// cover pairs each new entry with the old entry after its own). Predicted in step with
    /// the old table, every entry costs nothing except the first (nothing read yet), the
    /// inserted one, and the one after it (the inserted key is no old entry's, so the step is
    /// found again one entry later). Decoding adds back exactly what encoding took, in one
    /// pass or in runs side by side. For relocations (offsets 16 apart, addends into moved
    /// code), symbols (names 20 apart in a string table that grew, values in moved code) and
    /// range lists (begin and end in moved code).
    #[test]
    fn tables_are_predicted_in_step_with_the_old_table() {
        for entries in [Entries::Rela, Entries::Sym, Entries::Ranges] {
            in_step_case(entries);
        }
    }

    fn in_step_case(entries: Entries) {
        const N: u64 = 12;
        const SHIFT: u64 = 64;
        const INSERT_AFTER: u64 = 5;
        // an entry: its first field (offset, name), its address (addend, value) and, for a
        // symbol, its size
        let entry = |first: u64, addr: u64, size: u64| {
            let mut e = Vec::with_capacity(24);
            match entries {
                Entries::Rela => {
                    e.extend_from_slice(&first.to_le_bytes());
                    e.extend_from_slice(&(R_X86_64_RELATIVE as u64).to_le_bytes());
                    e.extend_from_slice(&addr.to_le_bytes());
                }
                Entries::Sym => {
                    e.extend_from_slice(&(first as u32).to_le_bytes());
                    e.extend_from_slice(&[0x12, 0, 14, 0]); // FUNC GLOBAL, section 14
                    e.extend_from_slice(&addr.to_le_bytes());
                    e.extend_from_slice(&size.to_le_bytes());
                }
                Entries::Ranges => {
                    e.extend_from_slice(&addr.to_le_bytes());
                    e.extend_from_slice(&(addr + size).to_le_bytes());
                }
            }
            e
        };
        let (first0, gap, first_shift) = match entries {
            Entries::Rela => (0x3000u64, 16u64, SHIFT),
            Entries::Sym => (100, 20, 7),
            Entries::Ranges => (0, 2, 0), // no first field
        };
        // old image: 256 header bytes, the table, zeros to 2048, 2048 bytes of targets
        let mut old = vec![0x5Au8; 256];
        for k in 0..N {
            old.extend(entry(first0 + gap * k, 2048 + 100 * k + 7, 32 + k % 5));
        }
        old.resize(2048, 0);
        old.extend((0..2048u32).map(|i| (i * 7 + 3) as u8));
        // new image: the same with the targets SHIFT later and one entry more
        let mut new = old[..256].to_vec();
        for k in 0..N {
            let first = first0 + first_shift + gap * k;
            new.extend(entry(first, 2048 + SHIFT + 100 * k + 7, 32 + k % 5));
            if k == INSERT_AFTER {
                new.extend(entry(first + gap / 2, 2048 + SHIFT + 50, 9));
            }
        }
        let table_end = new.len() as u64;
        new.resize((2048 + SHIFT) as usize, 0);
        new.extend_from_slice(&old[2048..]);
        let base = 1000u64;
        let mut snap = vec![0u8; base as usize];
        snap.extend_from_slice(&old);
        let id = crate::blueprint::Transform::Id;
        let segs = vec![
            Segment {
                len: 256,
                src: Source::Snap {
                    op: id,
                    off: base,
                    imm: 0,
                },
            },
            Segment {
                len: (table_end - 256) as u32,
                src: Source::Cover { off: base + 256 },
            },
            Segment {
                len: (2048 + SHIFT - table_end) as u32,
                src: Source::Raw,
            },
            Segment {
                len: 2048,
                src: Source::Snap {
                    op: id,
                    off: base + 2048,
                    imm: 0,
                },
            },
        ];
        let (old_start, old_len) = (256, entries.len() * N);
        let m = RefModel {
            old_base: base,
            old_loads: vec![Load {
                off: 0,
                vaddr: 0,
                size: old.len() as u64,
            }],
            new_loads: vec![Load {
                off: 0,
                vaddr: 0,
                size: new.len() as u64,
            }],
            regions: vec![Region {
                start: 256,
                len: table_end - 256,
                kind: RegionKind::Table {
                    of: entries,
                    old_start,
                    old_len,
                },
            }],
            dwarf: None,
        };
        let p = Predictor::new(&m, &snap, AddressMap::new(&segs, 0));
        let cover = (base + 256) as usize..(base + table_end) as usize;
        let orig: Vec<u8> = new[256..table_end as usize]
            .iter()
            .zip(&snap[cover])
            .map(|(f, s)| f.wrapping_sub(*s))
            .collect();
        // the entries with a difference left
        let n = entries.len() as usize;
        let costly = |d: &[u8]| -> Vec<usize> {
            (0..d.len() / n)
                .filter(|&e| d[n * e..n * e + n].iter().any(|&b| b != 0))
                .collect()
        };
        assert_eq!(
            costly(&orig).len(),
            N as usize + 1,
            "{entries:?}: every entry moved"
        );
        let mut d = orig.clone();
        p.apply(&segs, 0, &mut d, false);
        let k = INSERT_AFTER as usize;
        assert_eq!(costly(&d), vec![0, k + 1, k + 2], "{entries:?}");
        let mut back = d.clone();
        p.apply(&segs, 0, &mut back, true);
        assert_eq!(back, orig, "{entries:?}");
        for parts in [2, 3] {
            let mut par = orig.clone();
            p.apply_split(&segs, 0, &mut par, false, parts, 2);
            assert_eq!(par, d, "{entries:?}: {parts} runs differ from one pass");
        }
    }

    /// Old code: `call` to a function 100 bytes later; in the new file a 16-byte insertion
    /// between call and callee moves the callee. The prediction equals the new displacement.
    #[test]
    fn a_moved_call_target_is_predicted() {
        let mut old = vec![0x90u8; 400];
        old[50] = 0xE8;
        old[51..55].copy_from_slice(&(100i32 - 55).to_le_bytes()); // target 100
        let mut new = old[..80].to_vec();
        new.extend_from_slice(&[0xCC; 16]);
        new.extend_from_slice(&old[80..]);
        new[51..55].copy_from_slice(&(116i32 - 55).to_le_bytes());
        // snapshot = 1000 bytes of padding + the old image
        let mut snap = vec![0u8; 1000];
        snap.extend_from_slice(&old);
        let segs = vec![
            Segment {
                len: 80,
                src: Source::Cover { off: 1000 },
            },
            Segment {
                len: 16,
                src: Source::Raw,
            },
            Segment {
                len: 320,
                src: Source::Snap {
                    op: crate::blueprint::Transform::Id,
                    off: 1080,
                    imm: 0,
                },
            },
        ];
        let m = RefModel {
            old_base: 1000,
            old_loads: vec![Load {
                off: 0,
                vaddr: 0x4000,
                size: 400,
            }],
            new_loads: vec![Load {
                off: 0,
                vaddr: 0x4000,
                size: 416,
            }],
            regions: vec![Region {
                start: 0,
                len: 416,
                kind: RegionKind::Code,
            }],
            dwarf: None,
        };
        let p = Predictor::new(&m, &snap, AddressMap::new(&segs, 0));
        let mut diffs: Vec<u8> = new[..80]
            .iter()
            .zip(&old[..80])
            .map(|(f, s)| f.wrapping_sub(*s))
            .collect();
        assert!(diffs.iter().any(|&d| d != 0));
        let orig = diffs.clone();
        p.apply(&segs, 0, &mut diffs, false);
        assert!(diffs.iter().all(|&d| d == 0), "{diffs:?}");
        p.apply(&segs, 0, &mut diffs, true);
        assert_eq!(diffs, orig);
    }

    /// A `.debug_info` whose strings moved (16 bytes inserted at the start of `.debug_str`),
    /// whose code moved (64 bytes), and with a DIE inserted before the one a `DW_FORM_ref4`
    /// points to, covered on two diagonals around the insertion: the string offset, the
    /// address and the unit reference are predicted, so only the unit's length is left in
    /// the differences; decoding adds back what encoding took.
    #[test]
    fn debug_info_references_follow_their_targets() {
        // abbrev 1: compile_unit, children, name/strp, low_pc/addr; 2: variable, name/strp,
        // type/ref4; 3: base_type, name/string
        let abbrev: Vec<u8> = vec![
            1, 0x11, 1, 0x03, 0x0e, 0x11, 0x01, 0, 0, 2, 0x34, 0, 0x03, 0x0e, 0x49, 0x13, 0, 0, 3,
            0x24, 0, 0x03, 0x08, 0, 0, 0,
        ];
        // a unit: the DIEs with the string offsets moved by `str_shift`, the address by
        // `code_shift`, and `pad` extra base types before the referenced one
        let unit = |str_shift: u32, code_shift: u64, pad: bool| {
            let mut b = vec![1u8];
            b.extend((7 + str_shift).to_le_bytes());
            b.extend((2048 + code_shift + 100).to_le_bytes());
            b.push(2);
            b.extend((20 + str_shift).to_le_bytes());
            let ref_at = b.len();
            b.extend([0u8; 4]);
            let split = b.len() + 11; // the insertion point, from the unit's start
            if pad {
                b.extend([3, b'p', b'a', b'd', 0]);
            }
            let target = b.len() + 11;
            b.extend([3, b'i', b'n', b't', 0, 0]);
            b[ref_at..ref_at + 4].copy_from_slice(&(target as u32).to_le_bytes());
            let mut u = ((b.len() + 7) as u32).to_le_bytes().to_vec();
            u.extend(4u16.to_le_bytes());
            u.extend(0u32.to_le_bytes());
            u.push(8);
            u.extend(b);
            (u, split)
        };
        let strs: Vec<u8> = (0..256u32).map(|i| (i * 5 + 1) as u8).collect();
        let code: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
        let (old_unit, split) = unit(0, 0, false);
        let (new_unit, _) = unit(16, 64, true);
        // old: header 256 | .debug_str 256 | .debug_abbrev at 512 | .debug_info at 1024 |
        // code at 2048; new: header | 16 new bytes + .debug_str | .debug_abbrev at 528 |
        // .debug_info at 1040 | code at 2112
        let mut old = vec![0x5Au8; 256];
        old.extend(&strs);
        old.extend(&abbrev);
        old.resize(1024, 0);
        old.extend(&old_unit);
        old.resize(2048, 0);
        old.extend(&code);
        let mut new = old[..256].to_vec();
        new.extend([0xEEu8; 16]);
        new.extend(&strs);
        new.extend(&abbrev);
        new.resize(1040, 0);
        new.extend(&new_unit);
        let info_end = new.len();
        new.resize(2112, 0);
        new.extend(&code);
        let base = 1000u64;
        let mut snap = vec![0u8; base as usize];
        snap.extend_from_slice(&old);
        let id = crate::blueprint::Transform::Id;
        let snap_seg = |len: usize, off: u64| Segment {
            len: len as u32,
            src: Source::Snap {
                op: id,
                off: base + off,
                imm: 0,
            },
        };
        let raw = |len: usize| Segment {
            len: len as u32,
            src: Source::Raw,
        };
        let segs = vec![
            snap_seg(256, 0),
            raw(16),
            snap_seg(256, 256),
            snap_seg(1040 - 528, 512),
            Segment {
                len: split as u32,
                src: Source::Cover { off: base + 1024 },
            },
            raw(5),
            Segment {
                len: (old_unit.len() - split) as u32,
                src: Source::Cover {
                    off: base + 1024 + split as u64,
                },
            },
            raw(2112 - info_end),
            snap_seg(2048, 2048),
        ];
        let load = |size: usize| Load {
            off: 0,
            vaddr: 0,
            size: size as u64,
        };
        let m = RefModel {
            old_base: base,
            old_loads: vec![load(old.len())],
            new_loads: vec![load(new.len())],
            regions: vec![Region {
                start: 1040,
                len: new_unit.len() as u64,
                kind: RegionKind::DebugInfo,
            }],
            dwarf: Some(DwarfModel {
                old_info: (1024, old_unit.len() as u64),
                old_abbrev: (512, abbrev.len() as u64),
                targets: vec![(Target::Str, 256, 256)],
            }),
        };
        assert_eq!(RefModel::decode(&m.encode(), new.len() as u64).unwrap(), m);
        let p = Predictor::new(&m, &snap, AddressMap::new(&segs, 0));
        // the covers' differences: [the unit up to the insertion, the unit after it]
        let mut orig: Vec<u8> = Vec::new();
        let mut places = Vec::new(); // new unit offset of each difference byte
        for (q, o, n) in [(0, 0, split), (split + 5, split, old_unit.len() - split)] {
            for k in 0..n {
                orig.push(new_unit[q + k].wrapping_sub(old_unit[o + k]));
                places.push(q + k);
            }
        }
        let nonzero = |d: &[u8]| -> Vec<usize> {
            d.iter()
                .zip(&places)
                .filter(|(b, _)| **b != 0)
                .map(|(_, &p)| p)
                .collect()
        };
        assert!(
            nonzero(&orig).len() > 4,
            "the references differ before prediction"
        );
        let mut d = orig.clone();
        p.apply(&segs, 0, &mut d, false);
        assert_eq!(
            nonzero(&d),
            vec![0],
            "only the unit length's low byte is left"
        );
        p.apply(&segs, 0, &mut d, true);
        assert_eq!(d, orig);
    }

    /// The old image's ELF header is found when no segment lies on its own diagonal (the
    /// new file's start changed, so every cover near it is shifted): the header within reach
    /// whose image holds the covers, not another ELF image further away nor a small one's
    /// header nearer the diagonal.
    #[test]
    fn the_old_header_is_found_off_the_segments_diagonals() {
        let Ok(exe) = std::fs::read("/proc/self/exe") else {
            eprintln!("skipped: /proc/self/exe unreadable");
            return;
        };
        if !is_x86_64_elf(&exe) {
            eprintln!("skipped: this test binary is not x86-64 ELF");
            return;
        }
        // snapshot: another ELF header 5 MiB before the old image, which sits at `base`
        let base = 6usize << 20;
        let mut snap = vec![0u8; base];
        snap[1 << 20..(1 << 20) + 64].copy_from_slice(&exe[..64]);
        snap.extend_from_slice(&exe);
        // covers of 4 KiB shifted 96 bytes from the old image's diagonal, after a raw start
        let shift = 96u64;
        let mut segs = vec![Segment {
            len: 4096,
            src: Source::Raw,
        }];
        let mut q = 4096u64;
        while q + 4096 <= exe.len() as u64 && segs.len() < 64 {
            segs.push(Segment {
                len: 4096,
                src: Source::Cover {
                    off: base as u64 + q + shift,
                },
            });
            q += 4096;
        }
        let m = RefModel::for_elf(&exe, &snap, &segs, 0, PredictOptions::ALL)
            .expect("a model for the shifted covers");
        assert_eq!(m.old_base, base as u64);
        // a small image's header nearer the diagonal than the old one's, inside the old
        // image's bytes: it holds none of the covers, so it is passed over
        let mut tiny = exe[..64].to_vec();
        tiny[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        tiny[0x28..0x30].copy_from_slice(&0u64.to_le_bytes()); // e_shoff
        tiny[0x38..0x3A].copy_from_slice(&0u16.to_le_bytes()); // e_phnum
        tiny[0x3C..0x3E].copy_from_slice(&0u16.to_le_bytes()); // e_shnum
        let at = base + shift as usize + 40;
        snap[at..at + 64].copy_from_slice(&tiny);
        let offs: Vec<u64> = segs
            .iter()
            .filter_map(|s| match s.src {
                Source::Cover { off } => Some(off),
                _ => None,
            })
            .collect();
        assert_eq!(
            old_header_near(&snap, base as u64 + shift, &offs),
            Some(base as u64)
        );
        let m = RefModel::for_elf(&exe, &snap, &segs, 0, PredictOptions::ALL)
            .expect("a model past the small image");
        assert_eq!(m.old_base, base as u64);
        // nothing within reach: no header
        assert_eq!(
            old_header_near(&snap[..base], (base as u64) + (HEADER_REACH << 1), &offs),
            None
        );
    }
}
