//! The reference fields of a `.debug_info` section: where each address, string offset,
//! section offset and unit-relative DIE reference lies, found by walking the units' DIEs with
//! their abbreviation tables. [`super::predict`] moves these fields of the old image's
//! `.debug_info` to the new image (after Zucchini's DWARF references).
//!
//! The walk reads DWARF 2 to 5 units in the 32-bit format (a 64-bit unit, an unknown unit
//! type, form or abbreviation code ends the walk of that unit; a broken unit length ends the
//! walk). It never panics and allocates at most in proportion to its input: it reads bytes
//! from the snapshot, and a `.pbb` from the wire only says where they are.

use std::collections::HashMap;

/// What a field refers to, and so how it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A virtual address (`DW_FORM_addr`, 8 bytes).
    Addr,
    /// An offset into another section (4 bytes): which one.
    Offset(Target),
    /// A reference to a DIE of the same unit (`DW_FORM_ref4`), relative to the unit's start.
    UnitRef,
}

/// The sections a 4-byte offset field points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Target {
    /// `.debug_str` (`DW_FORM_strp`).
    Str = 0,
    /// `.debug_line_str` (`DW_FORM_line_strp`).
    LineStr = 1,
    /// `.debug_info` itself (`DW_FORM_ref_addr`).
    Info = 2,
    /// `.debug_line` (`DW_AT_stmt_list`).
    Line = 3,
    /// `.debug_ranges` (`DW_AT_ranges` before DWARF 5).
    Ranges = 4,
    /// `.debug_rnglists` (`DW_AT_ranges`, DWARF 5).
    RngLists = 5,
    /// `.debug_loc` (`DW_AT_location`, `DW_AT_frame_base` before DWARF 5).
    Loc = 6,
    /// `.debug_loclists` (the same, DWARF 5).
    LocLists = 7,
}

impl Target {
    pub const ALL: [Target; 8] = [
        Target::Str,
        Target::LineStr,
        Target::Info,
        Target::Line,
        Target::Ranges,
        Target::RngLists,
        Target::Loc,
        Target::LocLists,
    ];

    /// The section's name.
    pub fn section(self) -> &'static str {
        match self {
            Target::Str => ".debug_str",
            Target::LineStr => ".debug_line_str",
            Target::Info => ".debug_info",
            Target::Line => ".debug_line",
            Target::Ranges => ".debug_ranges",
            Target::RngLists => ".debug_rnglists",
            Target::Loc => ".debug_loc",
            Target::LocLists => ".debug_loclists",
        }
    }

    pub fn from_code(c: u8) -> Option<Target> {
        Target::ALL.get(c as usize).copied()
    }
}

/// One reference field: its offset in `.debug_info`, its unit's offset and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub at: u32,
    pub unit: u32,
    pub kind: Kind,
}

impl Field {
    /// Bytes of the field.
    pub fn size(&self) -> usize {
        kind_size(self.kind)
    }
}

/// A little-endian reader that fails instead of panicking.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4")))
    }
    fn uleb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn sleb(&mut self) -> Option<()> {
        self.uleb().map(|_| ())
    }
}

/// One abbreviation: its attributes' (name, form) pairs (whether its DIE has children
/// does not matter to the walk, which reads DIEs in order).
type Abbrev = Vec<(u64, u64)>;

/// An abbreviation table by code: small codes (the usual 1..n) in a vector, others hashed.
struct Abbrevs<T = Abbrev> {
    dense: Vec<Option<T>>,
    sparse: HashMap<u64, T>,
}

impl<T> Default for Abbrevs<T> {
    fn default() -> Self {
        Abbrevs {
            dense: Vec::new(),
            sparse: HashMap::new(),
        }
    }
}

/// A table's abbreviations compiled for one version and address size.
type Compiled = Abbrevs<Vec<Step>>;

/// One step of a compiled abbreviation ([`compile`]): what the walk does with the next bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Attributes of fixed sizes that are no reference field: skip this many bytes.
    Skip(usize),
    /// A reference field (its size is the kind's).
    Field(Kind),
    /// An attribute whose size is in its bytes ([`skip`]).
    Var(u64),
}

/// The walk of one abbreviation in a unit of `version` with `addr`-byte addresses: fixed
/// attributes that are no field merged into one skip.
fn compile(attrs: &Abbrev, version: u16, addr: u8) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(attrs.len());
    for &(name, form) in attrs {
        let step = match (
            kind_of(name, form, version, addr),
            fixed_size(form, version, addr),
        ) {
            (Some(k), _) => Step::Field(k),
            (None, Some(n)) => Step::Skip(n),
            (None, None) => Step::Var(form),
        };
        match (out.last_mut(), step) {
            (Some(Step::Skip(a)), Step::Skip(b)) => *a += b,
            _ => out.push(step),
        }
    }
    out
}

/// The size of `form` where it does not depend on the value's bytes.
fn fixed_size(form: u64, version: u16, addr: u8) -> Option<usize> {
    Some(match form {
        DW_FORM_ADDR => addr as usize,
        0x05 => 2,
        DW_FORM_DATA4 => 4,
        0x07 => 8,
        0x0b | 0x0c | 0x11 => 1,
        DW_FORM_STRP | DW_FORM_LINE_STRP | DW_FORM_SEC_OFFSET | DW_FORM_REF4 => 4,
        DW_FORM_REF_ADDR if version <= 2 => addr as usize,
        DW_FORM_REF_ADDR => 4,
        0x12 => 2,
        0x14 | 0x20 | 0x24 => 8,
        0x19 | DW_FORM_IMPLICIT_CONST => 0,
        0x1c | 0x1d => 4,
        0x1e => 16,
        0x25 | 0x29 => 1,
        0x26 | 0x2a => 2,
        0x27 | 0x2b => 3,
        0x28 | 0x2c => 4,
        0x1f20 | 0x1f21 => 4,
        _ => return None,
    })
}

/// Codes below this go in [`Abbrevs::dense`].
const DENSE: u64 = 1 << 14;

impl<T: Clone> Abbrevs<T> {
    fn get(&self, code: u64) -> Option<&T> {
        if code < DENSE {
            self.dense.get(code as usize)?.as_ref()
        } else {
            self.sparse.get(&code)
        }
    }
    fn insert(&mut self, code: u64, a: T) {
        if code < DENSE {
            if self.dense.len() <= code as usize {
                self.dense.resize(code as usize + 1, None);
            }
            self.dense[code as usize] = Some(a);
        } else {
            self.sparse.insert(code, a);
        }
    }
}

/// The abbreviation tables a walk parsed, by offset, and the bytes they took; and each
/// compiled for the units that use it (offset, version, address size).
#[derive(Default)]
struct Tables {
    by_off: HashMap<u32, Option<Abbrevs>>,
    parsed: usize,
    compiled: HashMap<(u32, u16, u8), Option<Compiled>>,
    /// Steps compiled in all.
    compiled_steps: usize,
}

/// The abbreviation table at `off` of `abbrev`, by code (`None`: it does not parse), and
/// the bytes read.
fn abbrevs(abbrev: &[u8], off: usize) -> (Option<Abbrevs>, usize) {
    let mut c = Cur { b: abbrev, i: off };
    let t = abbrev_table(&mut c);
    (t, c.i.saturating_sub(off))
}

fn abbrev_table(c: &mut Cur<'_>) -> Option<Abbrevs> {
    let mut t = Abbrevs::default();
    loop {
        let code = c.uleb()?;
        if code == 0 {
            return Some(t);
        }
        let _tag = c.uleb()?;
        let _children = c.u8()?;
        let mut attrs = Vec::new();
        loop {
            let (name, form) = (c.uleb()?, c.uleb()?);
            if name == 0 && form == 0 {
                break;
            }
            if form == DW_FORM_IMPLICIT_CONST {
                c.sleb()?;
            }
            attrs.push((name, form));
        }
        t.insert(code, attrs);
    }
}

const DW_FORM_ADDR: u64 = 0x01;
const DW_FORM_DATA4: u64 = 0x06;
const DW_FORM_STRP: u64 = 0x0e;
const DW_FORM_REF_ADDR: u64 = 0x10;
const DW_FORM_REF4: u64 = 0x13;
const DW_FORM_INDIRECT: u64 = 0x16;
const DW_FORM_SEC_OFFSET: u64 = 0x17;
const DW_FORM_LINE_STRP: u64 = 0x1f;
const DW_FORM_IMPLICIT_CONST: u64 = 0x21;

const DW_AT_LOCATION: u64 = 0x02;
const DW_AT_STMT_LIST: u64 = 0x10;
const DW_AT_FRAME_BASE: u64 = 0x40;
const DW_AT_RANGES: u64 = 0x55;

/// Skip the value of `form` (unit `version`, `addr` bytes per address); `None` for a form
/// the walk does not know.
fn skip(c: &mut Cur<'_>, form: u64, version: u16, addr: u8) -> Option<()> {
    let n = match form {
        DW_FORM_ADDR => addr as usize,
        0x03 => c.u16()? as usize, // block2
        0x04 => c.u32()? as usize, // block4
        0x05 => 2,                 // data2
        DW_FORM_DATA4 => 4,        // data4
        0x07 => 8,                 // data8
        0x08 => {
            // string: up to and with its NUL
            let rest = c.b.get(c.i..)?;
            rest.iter().position(|&b| b == 0)? + 1
        }
        0x09 | 0x18 => c.uleb()? as usize, // block, exprloc
        0x0a => c.u8()? as usize,          // block1
        0x0b | 0x0c | 0x11 => 1,           // data1, flag, ref1
        0x0d => return c.sleb(),           // sdata
        DW_FORM_STRP | DW_FORM_LINE_STRP | DW_FORM_SEC_OFFSET | DW_FORM_REF4 => 4,
        0x0f | 0x15 | 0x1a | 0x1b | 0x22 | 0x23 => return c.uleb().map(|_| ()), // udata, ref_udata, strx, addrx, loclistx, rnglistx
        DW_FORM_REF_ADDR => {
            if version <= 2 {
                addr as usize
            } else {
                4
            }
        }
        0x12 => 2,               // ref2
        0x14 | 0x20 | 0x24 => 8, // ref8, ref_sig8, ref_sup8
        DW_FORM_INDIRECT => {
            let f = c.uleb()?;
            if f == DW_FORM_INDIRECT {
                return None;
            }
            return skip(c, f, version, addr);
        }
        0x19 | DW_FORM_IMPLICIT_CONST => 0, // flag_present, implicit_const
        0x1c | 0x1d => 4,                   // ref_sup4, strp_sup
        0x1e => 16,                         // data16
        0x25 | 0x29 => 1,                   // strx1, addrx1
        0x26 | 0x2a => 2,                   // strx2, addrx2
        0x27 | 0x2b => 3,                   // strx3, addrx3
        0x28 | 0x2c => 4,                   // strx4, addrx4
        0x1f01 | 0x1f02 => return c.uleb().map(|_| ()), // GNU addr/str index
        0x1f20 | 0x1f21 => 4,               // GNU ref_alt, strp_alt
        _ => return None,
    };
    c.take(n).map(|_| ())
}

/// What field, if any, attribute `name` in form `form` of a unit of `version` is.
fn kind_of(name: u64, form: u64, version: u16, addr: u8) -> Option<Kind> {
    // DWARF 2 and 3 give section offsets as data4
    let sec = form == DW_FORM_SEC_OFFSET || (form == DW_FORM_DATA4 && version <= 3);
    Some(match form {
        DW_FORM_ADDR if addr == 8 => Kind::Addr,
        DW_FORM_STRP => Kind::Offset(Target::Str),
        DW_FORM_LINE_STRP => Kind::Offset(Target::LineStr),
        DW_FORM_REF_ADDR if version > 2 => Kind::Offset(Target::Info),
        DW_FORM_REF4 => Kind::UnitRef,
        _ if sec => match name {
            DW_AT_STMT_LIST => Kind::Offset(Target::Line),
            DW_AT_RANGES if version >= 5 => Kind::Offset(Target::RngLists),
            DW_AT_RANGES => Kind::Offset(Target::Ranges),
            DW_AT_LOCATION | DW_AT_FRAME_BASE if version >= 5 => Kind::Offset(Target::LocLists),
            DW_AT_LOCATION | DW_AT_FRAME_BASE => Kind::Offset(Target::Loc),
            _ => return None,
        },
        _ => return None,
    })
}

/// Most distinct abbreviation tables one walk parses, and most bytes of them in all (a
/// release's units share a few tables; bytes that are no DWARF must not make a walk parse
/// one table per unit over a large section).
const MAX_TABLES: usize = 1 << 16;
/// Most steps of compiled abbreviations one walk makes ([`compile`]; about 100 MiB).
const MAX_COMPILED_STEPS: usize = 1 << 22;
const MAX_TABLE_BYTES: usize = 64 << 20;

/// Every reference field of `info` (a `.debug_info` section) whose abbreviations are in
/// `abbrev`, in section order (up to where a limit above stops the walk).
pub fn fields(info: &[u8], abbrev: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut tables = Tables::default();
    let mut unit = 0usize;
    // offsets are u32: a section of 4 GiB or more is walked up to there
    while unit + 11 <= info.len() && unit < u32::MAX as usize {
        let mut c = Cur { b: info, i: unit };
        let Some(len) = c.u32() else { break };
        if len >= 0xffff_fff0 {
            break; // 64-bit DWARF or reserved
        }
        let Some(end) = (c.i).checked_add(len as usize).filter(|&e| e <= info.len()) else {
            break;
        };
        walk_unit(&mut c, end, unit as u32, abbrev, &mut tables, &mut out);
        unit = end;
    }
    out
}

/// A unit's header after its length: version, abbreviation table offset, address size
/// (`None` for a version or unit type the walk leaves alone).
fn unit_header(c: &mut Cur<'_>) -> Option<(u16, u32, u8)> {
    let version = c.u16()?;
    let (abbrev_off, addr) = match version {
        2..=4 => (c.u32()?, c.u8()?),
        5 => {
            let unit_type = c.u8()?;
            let addr = c.u8()?;
            let off = c.u32()?;
            match unit_type {
                1 | 3 => {}                      // compile, partial
                4 | 5 => c.take(8).map(|_| ())?, // skeleton, split compile: dwo id
                _ => return None,                // type units: left alone
            }
            (off, addr)
        }
        _ => return None,
    };
    Some((version, abbrev_off, addr))
}

/// The fields of the unit at `unit` (the cursor just past its length), up to `end`.
fn walk_unit(
    c: &mut Cur<'_>,
    end: usize,
    unit: u32,
    abbrev: &[u8],
    tables: &mut Tables,
    out: &mut Vec<Field>,
) -> Option<()> {
    let (version, abbrev_off, addr) = unit_header(c)?;
    if !tables.by_off.contains_key(&abbrev_off) {
        if tables.by_off.len() >= MAX_TABLES || tables.parsed > MAX_TABLE_BYTES {
            return None;
        }
        let (t, n) = abbrevs(abbrev, abbrev_off as usize);
        tables.parsed += n;
        tables.by_off.insert(abbrev_off, t);
    }
    let key = (abbrev_off, version, addr);
    if !tables.compiled.contains_key(&key) {
        // bounded like the tables themselves: units that vary version and address size
        // over one table must not make a walk compile it again and again
        if tables.compiled.len() >= MAX_TABLES || tables.compiled_steps > MAX_COMPILED_STEPS {
            return None;
        }
        let mut steps = 0usize;
        let t = tables.by_off[&abbrev_off].as_ref().map(|t| {
            let mut c = Abbrevs::default();
            let mut put = |code: u64, a: &Abbrev| {
                let w = compile(a, version, addr);
                steps += w.len() + 1;
                c.insert(code, w);
            };
            for (code, a) in t.dense.iter().enumerate() {
                if let Some(a) = a {
                    put(code as u64, a);
                }
            }
            for (&code, a) in &t.sparse {
                put(code, a);
            }
            c
        });
        tables.compiled_steps += steps;
        tables.compiled.insert(key, t);
    }
    let table = tables.compiled[&key].as_ref()?;
    let c = &mut Cur {
        b: &c.b[..end],
        i: c.i,
    };
    while c.i < end {
        let code = c.uleb()?;
        if code == 0 {
            continue;
        }
        for &step in table.get(code)? {
            match step {
                Step::Skip(n) => {
                    c.take(n)?;
                }
                Step::Field(kind) => {
                    out.push(Field {
                        at: c.i as u32,
                        unit,
                        kind,
                    });
                    c.take(kind_size(kind))?;
                }
                Step::Var(form) => skip(c, form, version, addr)?,
            }
        }
    }
    Some(())
}

/// Bytes of a field of `kind` (32-bit DWARF, 8-byte addresses).
fn kind_size(kind: Kind) -> usize {
    match kind {
        Kind::Addr => 8,
        Kind::Offset(_) | Kind::UnitRef => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made DWARF 4 unit: a compile unit DIE (strp name, addr low_pc, data4
    /// high_pc, sec_offset stmt_list and ranges) with a child (string name, ref4 type,
    /// exprloc location), a null, and a unit after it. Every field is found at its offset.
    #[test]
    fn fields_of_a_hand_made_unit_are_found_at_their_offsets() {
        // abbrev 1: compile_unit, children, name/strp, low_pc/addr, high_pc/data4,
        // stmt_list/sec_offset, ranges/sec_offset; abbrev 2: variable, no children,
        // name/string, type/ref4, location/exprloc
        let abbrev = [
            1, 0x11, 1, 0x03, 0x0e, 0x11, 0x01, 0x12, 0x06, 0x10, 0x17, 0x55, 0x17, 0, 0, 2, 0x34,
            0, 0x03, 0x08, 0x49, 0x13, 0x02, 0x18, 0, 0, 0,
        ];
        let mut body = vec![1u8];
        body.extend(7u32.to_le_bytes()); // name (strp) @ 12
        body.extend(0x1000u64.to_le_bytes()); // low_pc @ 16
        body.extend(0x20u32.to_le_bytes()); // high_pc (data4: a length) @ 24
        body.extend(0u32.to_le_bytes()); // stmt_list @ 28
        body.extend(0x40u32.to_le_bytes()); // ranges @ 32
        body.push(2);
        body.extend(b"x\0"); // name (string)
        body.extend(0x2bu32.to_le_bytes()); // type (ref4) @ 39
        body.extend([2, 0x91, 0x10]); // location: exprloc of 2 bytes
        body.push(0); // end of children
        let unit = |body: &[u8]| {
            let mut u = ((body.len() + 7) as u32).to_le_bytes().to_vec();
            u.extend(4u16.to_le_bytes());
            u.extend(0u32.to_le_bytes());
            u.push(8);
            u.extend_from_slice(body);
            u
        };
        let mut info = unit(&body);
        let second = info.len() as u32;
        info.extend(unit(&body));
        let f = fields(&info, &abbrev);
        let want = |base: u32| {
            vec![
                (base + 12, Kind::Offset(Target::Str)),
                (base + 16, Kind::Addr),
                (base + 28, Kind::Offset(Target::Line)),
                (base + 32, Kind::Offset(Target::Ranges)),
                (base + 39, Kind::UnitRef),
            ]
        };
        let got: Vec<(u32, Kind)> = f.iter().map(|x| (x.at, x.kind)).collect();
        let mut all = want(0);
        all.extend(want(second));
        assert_eq!(got, all);
        assert!(f[..5].iter().all(|x| x.unit == 0) && f[5..].iter().all(|x| x.unit == second));
        // cut anywhere, or with the second unit's abbreviation code unknown: no panic, and
        // what is found is a prefix of the whole
        for cut in 0..info.len() {
            let part = fields(&info[..cut], &abbrev);
            assert!(f.starts_with(&part), "cut at {cut}");
        }
        let mut bad = info.clone();
        bad[second as usize + 11] = 9;
        assert_eq!(fields(&bad, &abbrev), f[..5].to_vec());
    }

    /// Bytes that are no DWARF (noise; units of 11 bytes each naming another abbreviation
    /// offset into a long run of attribute pairs) end the walk quickly, without a panic:
    /// the tables it parses are bounded.
    #[test]
    fn noise_and_many_tables_end_the_walk() {
        let mut rng = crate::pob::prng::SplitMix64::new(17);
        let mut noise = |n: usize| -> Vec<u8> {
            let mut v = vec![0u8; n];
            rng.fill(&mut v);
            v
        };
        for _ in 0..20 {
            let (info, abbrev) = (noise(1 << 16), noise(1 << 12));
            let _ = fields(&info, &abbrev);
        }
        // 200,000 units of a version 4 header alone, each with its own abbreviation offset
        // into 1 MiB of a table that never ends (one code, then attribute pairs)
        let mut abbrev = vec![1u8, 0x11, 0];
        abbrev.extend(std::iter::repeat_n([0x03u8, 0x08], 1 << 19).flatten());
        let mut info = Vec::new();
        for k in 0..200_000u32 {
            info.extend(7u32.to_le_bytes());
            info.extend(4u16.to_le_bytes());
            info.extend((k % (1 << 20)).to_le_bytes());
            info.push(8);
        }
        // (without the bound on the tables' bytes this parses about 100 GB)
        assert!(fields(&info, &abbrev).is_empty());
    }

    /// This test binary's own `.debug_info` (when it has one): the walk reads every unit to
    /// its end, finds string offsets inside `.debug_str`, and unit references inside their
    /// unit.
    #[test]
    fn this_binary_s_debug_info_walks_to_the_end_of_every_unit() {
        use object::{Object, ObjectSection};
        let Ok(exe) = std::fs::read("/proc/self/exe") else {
            eprintln!("skipped: /proc/self/exe unreadable");
            return;
        };
        let Ok(obj) = object::File::parse(&*exe) else {
            eprintln!("skipped: this test binary does not parse");
            return;
        };
        let sec = |n: &str| obj.section_by_name(n).and_then(|s| s.data().ok());
        let (Some(info), Some(abbrev), Some(strs)) =
            (sec(".debug_info"), sec(".debug_abbrev"), sec(".debug_str"))
        else {
            eprintln!("skipped: no .debug_info/.debug_abbrev/.debug_str in this test binary");
            return;
        };
        let f = fields(info, abbrev);
        assert!(!f.is_empty());
        let word = |x: &Field| u32::from_le_bytes(info[x.at as usize..][..4].try_into().unwrap());
        let unit_len = |u: u32| u32::from_le_bytes(info[u as usize..][..4].try_into().unwrap());
        for x in &f {
            match x.kind {
                Kind::Offset(Target::Str) => assert!((word(x) as usize) < strs.len()),
                Kind::UnitRef => assert!(word(x) < unit_len(x.unit) + 4),
                _ => {}
            }
        }
        assert!(f.windows(2).all(|w| w[0].at < w[1].at));
        assert!(
            f == fields_attr_by_attr(info, abbrev),
            "the compiled walk finds the same fields"
        );
    }

    /// The walk before abbreviations were compiled: each attribute's kind and size looked up
    /// as it is read (the reference the compiled walk must equal).
    fn fields_attr_by_attr(info: &[u8], abbrev: &[u8]) -> Vec<Field> {
        let mut out = Vec::new();
        let mut unit = 0usize;
        while unit + 11 <= info.len() {
            let mut c = Cur { b: info, i: unit };
            let Some(len) = c.u32().filter(|&l| l < 0xffff_fff0) else {
                break;
            };
            let Some(end) = c.i.checked_add(len as usize).filter(|&e| e <= info.len()) else {
                break;
            };
            let _ = (|| -> Option<()> {
                let (version, off, addr) = unit_header(&mut c)?;
                let table = abbrevs(abbrev, off as usize).0?;
                let c = &mut Cur {
                    b: &c.b[..end],
                    i: c.i,
                };
                while c.i < end {
                    let code = c.uleb()?;
                    if code == 0 {
                        continue;
                    }
                    for &(name, form) in table.get(code)? {
                        if let Some(kind) = kind_of(name, form, version, addr) {
                            out.push(Field {
                                at: c.i as u32,
                                unit: unit as u32,
                                kind,
                            });
                        }
                        skip(c, form, version, addr)?;
                    }
                }
                Some(())
            })();
            unit = end;
        }
        out
    }
}
