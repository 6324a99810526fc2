//! A coverage picture of a blueprint (`pfs plan --map OUT.svg`): the file drawn as a strip of
//! wrapped rows, one pixel per `bytes_per_px` bytes, coloured by segment kind (lightness) and
//! source bank (hue, one per bank of the manifest), with a legend and the totals.
//!
//! The size is bounded whatever the blueprint: at most `width * max_rows` pixels, a pixel takes
//! the class covering most of its bytes, and neighbouring pixels of one class are merged into
//! one rectangle (so sub-pixel segments never become rectangles of their own).

use std::fmt::Write;

use crate::blueprint::{Blueprint, Source, Transform};
use crate::pob::BankEntry;

/// What a stretch of the file is made of. `SelfRef` draws self-copy segments; `Soft` is a
/// colour slot only: a soft match is held as `id` runs plus raw patch bytes, so it draws as those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    Id,
    Xor,
    Add,
    Raw,
    Soft,
    SelfRef,
}

impl MapKind {
    pub const ALL: [MapKind; 6] = [
        MapKind::Id,
        MapKind::Xor,
        MapKind::Add,
        MapKind::Raw,
        MapKind::Soft,
        MapKind::SelfRef,
    ];
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Id => "id",
            MapKind::Xor => "xor",
            MapKind::Add => "add",
            MapKind::Raw => "raw",
            MapKind::Soft => "soft",
            MapKind::SelfRef => "self",
        }
    }
    fn slot(self) -> usize {
        self as usize
    }
}

/// Picture geometry.
#[derive(Debug, Clone, Copy)]
pub struct MapOptions {
    /// Pixels per row of the strip.
    pub width: u32,
    /// Height of one row in pixels.
    pub row_height: u32,
    /// Most rows; larger files get more bytes per pixel.
    pub max_rows: u32,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            width: 1024,
            row_height: 12,
            max_rows: 96,
        }
    }
}

/// The colour of a (kind, bank) class.
pub fn colour(kind: MapKind, bank: Option<usize>) -> String {
    let hue = bank.map_or(0.0, |b| (b as f64 * 137.508) % 360.0);
    match kind {
        MapKind::Raw => "#d4d4d4".into(),
        MapKind::SelfRef => "#3a3a3a".into(),
        MapKind::Id => format!("hsl({hue:.0},70%,42%)"),
        MapKind::Xor => format!("hsl({hue:.0},70%,64%)"),
        MapKind::Add => format!("hsl({hue:.0},45%,28%)"),
        MapKind::Soft => format!("hsl({hue:.0},95%,82%)"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type Class = (MapKind, Option<usize>);

/// Render `bp` (planned against a snapshot with bank map `banks`) as an SVG document.
/// Segment rectangles carry `class="seg"`, legend swatches `class="key"`.
pub fn render_svg(bp: &Blueprint, banks: &[BankEntry], opts: &MapOptions) -> String {
    let width = opts.width.max(16) as u64;
    let rowh = opts.row_height.max(2) as u64;
    let max_rows = opts.max_rows.max(1) as u64;
    let len = bp.file_len;
    let bpp = len.div_ceil(width * max_rows).max(1);
    let pixels = len.div_ceil(bpp);
    let rows = pixels.div_ceil(width).max(1);
    let bank_of = |off: u64| banks.partition_point(|b| b.offset <= off).checked_sub(1);

    // segments as (start, end, class), and totals per kind and per bank
    let mut kind_bytes = [0u64; 6];
    let mut bank_bytes = vec![0u64; banks.len()];
    let mut segs: Vec<(u64, u64, Class)> = Vec::with_capacity(bp.segments.len());
    let mut pos = 0u64;
    for s in &bp.segments {
        let class = match s.src {
            Source::Raw => (MapKind::Raw, None),
            Source::SelfCopy { .. } => (MapKind::SelfRef, None),
            Source::Snap { off, .. } | Source::Cover { off } => {
                let k = match s.src {
                    Source::Snap {
                        op: Transform::Xor, ..
                    } => MapKind::Xor,
                    Source::Snap {
                        op: Transform::Add, ..
                    } => MapKind::Add,
                    _ => MapKind::Id,
                };
                let b = bank_of(off);
                if let Some(b) = b {
                    bank_bytes[b] += s.len as u64;
                }
                (k, b)
            }
        };
        kind_bytes[class.0.slot()] += s.len as u64;
        segs.push((pos, pos + s.len as u64, class));
        pos += s.len as u64;
    }

    // the class of each pixel (most bytes wins), run-length merged, cut at row ends
    let mut runs: Vec<(u64, u64, Class)> = Vec::new(); // (first pixel, pixels, class)
    let mut si = 0usize;
    let mut acc: Vec<(Class, u64)> = Vec::with_capacity(4);
    for px in 0..pixels {
        let (pa, pe) = (px * bpp, ((px + 1) * bpp).min(len));
        acc.clear();
        while si < segs.len() && segs[si].1 <= pa {
            si += 1;
        }
        let mut j = si;
        while j < segs.len() && segs[j].0 < pe {
            let n = segs[j].1.min(pe) - segs[j].0.max(pa);
            match acc.iter_mut().find(|(c, _)| *c == segs[j].2) {
                Some(e) => e.1 += n,
                None => acc.push((segs[j].2, n)),
            }
            j += 1;
        }
        let Some(&(class, _)) = acc.iter().max_by_key(|(_, n)| *n) else {
            continue;
        };
        match runs.last_mut() {
            Some(r) if r.2 == class && r.0 + r.1 == px && px % width != 0 => r.1 += 1,
            _ => runs.push((px, 1, class)),
        }
    }

    let gap = 2u64;
    let strip_h = rows * (rowh + gap);
    let legend_rows = MapKind::ALL.len() as u64 + banks.len() as u64 + 2;
    let total_h = 30 + strip_h + 10 + legend_rows * 16 + 10;
    let total_w = width + 20;
    let mut o = String::with_capacity(256 + runs.len() * 80);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(
        o,
        r#"<text x="10" y="18">{} bytes, {} segments, {} bytes per pixel, {} pixels per row</text>"#,
        len,
        bp.segments.len(),
        bpp,
        width
    );
    let _ = writeln!(o, r#"<g transform="translate(10,26)">"#);
    for (px, n, (kind, bank)) in &runs {
        let (x, y) = (px % width, (px / width) * (rowh + gap));
        let _ = writeln!(
            o,
            r#"<rect class="seg" x="{x}" y="{y}" width="{n}" height="{rowh}" fill="{}"/>"#,
            colour(*kind, *bank)
        );
    }
    let _ = writeln!(o, "</g>");
    // legend: kinds (neutral hue) with their totals, then banks with their hue and bytes
    let mut y = 30 + strip_h + 14;
    let pct = |b: u64| {
        if len == 0 {
            0.0
        } else {
            100.0 * b as f64 / len as f64
        }
    };
    for k in MapKind::ALL {
        let _ = writeln!(
            o,
            r#"<rect class="key" x="10" y="{}" width="12" height="12" fill="{}"/><text x="28" y="{}">{:<5} {:>12} bytes {:>6.2}%</text>"#,
            y - 10,
            colour(k, None),
            y,
            k.name(),
            kind_bytes[k.slot()],
            pct(kind_bytes[k.slot()])
        );
        y += 16;
    }
    let _ = writeln!(
        o,
        r#"<text x="10" y="{y}">source banks (hue; id lightness shown; xor lighter, add darker):</text>"#
    );
    y += 16;
    for (i, b) in banks.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<rect class="key" x="10" y="{}" width="12" height="12" fill="{}"/><text x="28" y="{}">bank {:<3} {:<16} {:>12} bytes {:>6.2}%  {}</text>"#,
            y - 10,
            colour(MapKind::Id, Some(i)),
            y,
            b.bank_id,
            b.kind.name(),
            bank_bytes[i],
            pct(bank_bytes[i]),
            esc(&b.source)
        );
        y += 16;
    }
    let covered: u64 = len - kind_bytes[MapKind::Raw.slot()];
    let _ = writeln!(
        o,
        r#"<text x="10" y="{y}">total: {covered} of {len} bytes from the snapshot ({:.2}%), raw {:.2}%</text>"#,
        pct(covered),
        pct(kind_bytes[MapKind::Raw.slot()])
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::Segment;
    use crate::pob::BankKind;

    fn banks() -> Vec<BankEntry> {
        (0..3)
            .map(|i| BankEntry {
                bank_id: i,
                kind: [BankKind::ElfText, BankKind::AsciiTables, BankKind::Corpus][i as usize],
                offset: i as u64 * 1000,
                len: 1000,
                source: if i == 2 {
                    "a<b>&\"c\"".into()
                } else {
                    "synthetic".into()
                },
            })
            .collect()
    }

    fn bp(segments: Vec<Segment>) -> Blueprint {
        let file_len = segments.iter().map(|s| s.len as u64).sum();
        Blueprint {
            snapshot_id: [0; 32],
            file_len,
            file_hash: [0; 32],
            segments,
            spill: Vec::new(),
        }
    }

    fn snap(op: Transform, off: u64, len: u32) -> Segment {
        Segment {
            len,
            src: Source::Snap { op, off, imm: 1 },
        }
    }

    fn count(svg: &str, what: &str) -> usize {
        svg.matches(what).count()
    }

    /// A minimal well-formedness check: balanced tags, one root, no stray `<`/`&`.
    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(a) = rest.find('<') {
            let text = &rest[..a];
            assert!(!text.contains('>'), "stray > in {text:?}");
            for (i, _) in text.match_indices('&') {
                let t = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| t.starts_with(e)),
                    "bare & in {text:?}"
                );
            }
            let e = rest[a..].find('>').expect("unclosed tag") + a;
            let tag = &rest[a + 1..e];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[e + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn small_blueprint_one_rect_per_segment_and_legend() {
        let b = bp(vec![
            snap(Transform::Id, 10, 100),
            Segment {
                len: 50,
                src: Source::Raw,
            },
            snap(Transform::Xor, 1500, 200),
            snap(Transform::Add, 2100, 30),
        ]);
        let svg = render_svg(&b, &banks(), &MapOptions::default());
        well_formed(&svg);
        assert_eq!(count(&svg, r#"class="seg""#), 4);
        assert_eq!(count(&svg, r#"class="key""#), MapKind::ALL.len() + 3);
        // bank hues: bank 0 id, bank 1 xor, bank 2 add
        assert!(svg.contains(&colour(MapKind::Id, Some(0))));
        assert!(svg.contains(&colour(MapKind::Xor, Some(1))));
        assert!(svg.contains(&colour(MapKind::Add, Some(2))));
        assert!(svg.contains("380 bytes, 4 segments"));
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&quot;"));
        assert!(svg.contains("total: 330 of 380 bytes"));
    }

    #[test]
    fn rows_wrap_and_split_rects() {
        // 300 bytes of one class on a 100-pixel-wide strip: three rows, three rects
        let b = bp(vec![snap(Transform::Id, 0, 300)]);
        let o = MapOptions {
            width: 100,
            row_height: 4,
            max_rows: 10,
        };
        let svg = render_svg(&b, &banks(), &o);
        well_formed(&svg);
        assert_eq!(count(&svg, r#"class="seg""#), 3);
        assert!(svg.contains(r#"x="0" y="12" width="100""#));
    }

    #[test]
    fn huge_blueprints_stay_bounded() {
        // 200,000 alternating 3-byte segments: sub-pixel, merged into at most one rect per
        // pixel of a 64 x 8 strip (and far fewer: the majority class wins per pixel)
        let segs: Vec<Segment> = (0..200_000u64)
            .map(|i| {
                if i % 2 == 0 {
                    snap(Transform::Id, i % 900, 3)
                } else {
                    Segment {
                        len: 3,
                        src: Source::Raw,
                    }
                }
            })
            .collect();
        let b = bp(segs);
        let o = MapOptions {
            width: 64,
            row_height: 4,
            max_rows: 8,
        };
        let svg = render_svg(&b, &banks(), &o);
        well_formed(&svg);
        let n = count(&svg, r#"class="seg""#);
        assert!((1..=64 * 8).contains(&n), "{n} rects");
        assert!(svg.len() < 100_000, "{} bytes", svg.len());
        // the empty file draws an empty strip
        let svg = render_svg(&bp(vec![]), &banks(), &o);
        well_formed(&svg);
        assert_eq!(count(&svg, r#"class="seg""#), 0);
    }
}
