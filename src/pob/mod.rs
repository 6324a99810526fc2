//! The POB snapshot (Pattern-Oriented Blob): the recipe, the deterministic banks, the
//! manifest with the bank map, and memory-mapped loading.
//!
//! A snapshot directory holds `snapshot.bin` (the bytes) and `snapshot.manifest.json` (format
//! version, BLAKE3 id, recipe, bank map, corpus files). The id is the BLAKE3 of
//! `snapshot.bin`: two hosts with the same id hold the same bytes. The minimizer index holds
//! 40-bit positions, so a snapshot may grow to 1 TiB (corpus banks: a directory of releases);
//! the segment engine's k-gram indexes hold 32-bit positions and refuse snapshots of 4 GiB or
//! more.

pub mod banks;
pub mod prng;
pub mod recipe;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use recipe::{BankKind, Recipe};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// File names inside a snapshot directory.
pub const SNAPSHOT_BIN: &str = "snapshot.bin";
pub const MANIFEST_JSON: &str = "snapshot.manifest.json";
/// The stamp of the last content check: `snapshot.bin`'s identity (device, inode, size,
/// mtime, ctime) when its bytes last hashed to the id (see [`Snapshot::check_integrity`]).
pub const VERIFIED_STAMP: &str = "snapshot.verified";
/// A snapshot must not be larger than this: 2^40 - 1, the largest position the minimizer
/// index's slots hold (`index::minimizer::MAX_POS` is checked against it at compile time).
pub const MAX_SNAPSHOT_BYTES: u64 = (1 << 40) - 1;

/// One region of the bank map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankEntry {
    pub bank_id: u32,
    pub kind: BankKind,
    pub offset: u64,
    pub len: u64,
    /// `synthetic` for generated banks, the relative path for corpus banks.
    pub source: String,
}

/// A corpus file recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusFile {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub bank_id: u32,
}

/// `snapshot.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: String,
    pub size: u64,
    pub recipe: Recipe,
    pub banks: Vec<BankEntry>,
    pub corpus: Vec<CorpusFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum PobError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Recipe(#[from] recipe::RecipeError),
    #[error("{path}: not a valid manifest: {msg}")]
    Manifest { path: PathBuf, msg: String },
    #[error("snapshot would be {0} bytes; the limit is {MAX_SNAPSHOT_BYTES} (1 TiB - 1)")]
    TooLarge(u64),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PobError + '_ {
    move |source| PobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub seconds: f64,
}

/// Collect corpus files from `--add` paths: files as themselves, directories recursively
/// (sorted by relative path; symlinks are not followed). Returns (absolute, relative) pairs.
pub fn collect_corpus(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, PobError> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(PathBuf, String)>) -> Result<(), PobError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let ft = e.file_type().map_err(io_err(&p))?;
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            if ft.is_dir() {
                walk(&p, &name, out)?;
            } else if ft.is_file() {
                out.push((p, name));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p).map_err(io_err(p))?;
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        if md.is_dir() {
            walk(p, &base, &mut out)?;
        } else {
            out.push((p.clone(), base));
        }
    }
    Ok(out)
}

/// Build a snapshot into `out_dir` from `recipe` and corpus files, streaming `snapshot.bin`
/// through BLAKE3. Files are written under temporary names and renamed at the end.
pub fn build(
    recipe: &Recipe,
    corpus: &[(PathBuf, String)],
    out_dir: &Path,
    progress: Progress,
) -> Result<BuildReport, PobError> {
    recipe.validate()?;
    let t0 = std::time::Instant::now();
    let lens = recipe.bank_lengths();
    let mut corpus_sizes = Vec::with_capacity(corpus.len());
    for (p, _) in corpus {
        corpus_sizes.push(std::fs::metadata(p).map_err(io_err(p))?.len());
    }
    let total: u64 = lens.iter().sum::<u64>() + corpus_sizes.iter().sum::<u64>();
    if total > MAX_SNAPSHOT_BYTES {
        return Err(PobError::TooLarge(total));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let bin_path = out_dir.join(SNAPSHOT_BIN);
    let mut out = crate::util::AtomicFile::create(&bin_path).map_err(io_err(&bin_path))?;
    let mut hasher = blake3::Hasher::new();
    let mut banks = Vec::new();
    let mut files = Vec::new();
    let mut offset = 0u64;
    let mut done = 0u64;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        // Synthetic banks: generated on a second thread one bank ahead of the writer.
        let specs: Vec<(u32, BankKind, u64)> = recipe
            .banks
            .iter()
            .zip(&lens)
            .enumerate()
            .map(|(i, (b, l))| (i as u32, b.kind, *l))
            .collect();
        let seed = recipe.seed;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let gen_specs = specs.clone();
        let gen = std::thread::spawn(move || {
            for (i, kind, len) in gen_specs {
                let mut buf = vec![0u8; len as usize];
                banks::generate(kind, &mut prng::SplitMix64::for_bank(seed, i), &mut buf);
                if tx.send(buf).is_err() {
                    return;
                }
            }
        });
        for (i, kind, len) in &specs {
            let buf = rx
                .recv()
                .map_err(|_| PobError::Invalid("bank generator stopped".into()))?;
            debug_assert_eq!(buf.len() as u64, *len);
            hasher.update(&buf);
            w.write_all(&buf).map_err(io_err(&bin_path))?;
            banks.push(BankEntry {
                bank_id: *i,
                kind: *kind,
                offset,
                len: *len,
                source: "synthetic".into(),
            });
            offset += len;
            done += len;
            progress(done, total);
        }
        let _ = gen.join();
        // Corpus banks: one per file, streamed.
        let mut buf = vec![0u8; 1 << 20];
        for ((path, rel), size) in corpus.iter().zip(&corpus_sizes) {
            let bank_id = banks.len() as u32;
            let mut f = std::fs::File::open(path).map_err(io_err(path))?;
            let mut fh = blake3::Hasher::new();
            let mut n = 0u64;
            loop {
                let r = f.read(&mut buf).map_err(io_err(path))?;
                if r == 0 {
                    break;
                }
                n += r as u64;
                if n > *size {
                    return Err(PobError::Invalid(format!(
                        "{}: file grew while being read",
                        path.display()
                    )));
                }
                fh.update(&buf[..r]);
                hasher.update(&buf[..r]);
                w.write_all(&buf[..r]).map_err(io_err(&bin_path))?;
                done += r as u64;
                progress(done, total);
            }
            if n != *size {
                return Err(PobError::Invalid(format!(
                    "{}: file changed size while being read",
                    path.display()
                )));
            }
            banks.push(BankEntry {
                bank_id,
                kind: BankKind::Corpus,
                offset,
                len: n,
                source: rel.clone(),
            });
            files.push(CorpusFile {
                path: rel.clone(),
                size: n,
                blake3: crate::util::hex(fh.finalize().as_bytes()),
                bank_id,
            });
            offset += n;
        }
        w.flush().map_err(io_err(&bin_path))?;
    }
    let manifest = Manifest {
        format_version: SNAPSHOT_FORMAT,
        snapshot_id: crate::util::hex(hasher.finalize().as_bytes()),
        size: offset,
        recipe: recipe.clone(),
        banks,
        corpus: files,
    };
    out.commit().map_err(io_err(&bin_path))?;
    let mpath = out_dir.join(MANIFEST_JSON);
    let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    crate::util::write_atomic(&mpath, &text).map_err(io_err(&mpath))?;
    // hashed while written: the first load needs no check
    let _ = write_stamp(out_dir, &manifest.snapshot_id);
    Ok(BuildReport {
        manifest,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// How the snapshot's bytes are held in memory (`--hugepages`, `hugepages`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HugePolicy {
    /// Hugepages when enough are reserved, else an anonymous copy with transparent hugepages
    /// requested (MADV_HUGEPAGE), else a plain file mapping.
    Auto,
    /// Require hugepages.
    On,
    /// Map the file with normal pages.
    Off,
}

enum Backing {
    File(memmap2::Mmap),
    Huge(memmap2::MmapMut),
    Thp(memmap2::MmapMut),
    Empty,
}

/// A loaded snapshot: its manifest and its bytes.
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub id: [u8; 32],
    backing: Backing,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("dir", &self.dir)
            .field("id", &self.manifest.snapshot_id)
            .field("size", &self.manifest.size)
            .field("backing", &self.backing_name())
            .finish()
    }
}

impl Snapshot {
    /// Read the manifest only.
    pub fn read_manifest(dir: &Path) -> Result<Manifest, PobError> {
        let mpath = dir.join(MANIFEST_JSON);
        let text = std::fs::read(&mpath).map_err(io_err(&mpath))?;
        Self::parse_manifest(&text, &mpath)
    }

    /// Parse and check a manifest's bytes (`mpath` names it in errors): the format version,
    /// the id, and banks that follow each other and add up to the size. No I/O.
    pub fn parse_manifest(text: &[u8], mpath: &Path) -> Result<Manifest, PobError> {
        let mpath = mpath.to_path_buf();
        let m: Manifest = serde_json::from_slice(text).map_err(|e| PobError::Manifest {
            path: mpath.clone(),
            msg: e.to_string(),
        })?;
        if m.format_version != SNAPSHOT_FORMAT {
            return Err(PobError::Manifest {
                path: mpath,
                msg: format!(
                    "format_version {} is not supported (this pfs reads {SNAPSHOT_FORMAT})",
                    m.format_version
                ),
            });
        }
        if crate::util::parse_hex32(&m.snapshot_id).is_none() {
            return Err(PobError::Manifest {
                path: mpath,
                msg: "snapshot_id is not 64 hex digits".into(),
            });
        }
        let mut end = 0u64;
        for b in &m.banks {
            if b.offset != end || b.len == 0 && b.kind != BankKind::Corpus {
                return Err(PobError::Manifest {
                    path: mpath,
                    msg: format!("bank {} does not follow the previous bank", b.bank_id),
                });
            }
            end = b.offset.saturating_add(b.len);
        }
        if end != m.size {
            return Err(PobError::Manifest {
                path: mpath,
                msg: "banks do not add up to size".into(),
            });
        }
        Ok(m)
    }

    /// Load a snapshot directory: read the manifest, map `snapshot.bin` and check its size.
    /// The content hash is checked by [`Snapshot::verify`], not on every load.
    pub fn open(dir: &Path, huge: HugePolicy) -> Result<Snapshot, PobError> {
        let manifest = Self::read_manifest(dir)?;
        let id = crate::util::parse_hex32(&manifest.snapshot_id).expect("checked in read_manifest");
        let bin = dir.join(SNAPSHOT_BIN);
        let f = std::fs::File::open(&bin).map_err(io_err(&bin))?;
        let len = f.metadata().map_err(io_err(&bin))?.len();
        if len != manifest.size {
            return Err(PobError::Invalid(format!(
                "{}: {len} bytes, but the manifest says {}",
                bin.display(),
                manifest.size
            )));
        }
        let backing = if len == 0 {
            Backing::Empty
        } else {
            match huge {
                HugePolicy::Off => Backing::File(map_file(&f, &bin)?),
                HugePolicy::Auto | HugePolicy::On => match load_huge(&f, len) {
                    Ok(m) => Backing::Huge(m),
                    Err(_) if huge == HugePolicy::Auto => match load_thp(&f, len) {
                        Ok(m) => Backing::Thp(m),
                        Err(_) => Backing::File(map_file(&f, &bin)?),
                    },
                    Err(e) if huge == HugePolicy::On => {
                        return Err(PobError::Invalid(format!(
                            "hugepages requested but not available ({e}); reserve them with \
                             `echo {} > /proc/sys/vm/nr_hugepages` or use --hugepages off",
                            len.div_ceil(2 << 20) + 1
                        )))
                    }
                    Err(_) => Backing::File(map_file(&f, &bin)?),
                },
            }
        };
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
            id,
            backing,
        })
    }

    /// The snapshot's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::File(m) => m,
            Backing::Huge(m) | Backing::Thp(m) => m,
            Backing::Empty => &[],
        }
    }

    /// `hugetlb (2 MiB pages)` or `file mmap (4 KiB pages)`.
    pub fn backing_name(&self) -> &'static str {
        match self.backing {
            Backing::File(_) => "file mmap (4 KiB pages)",
            Backing::Huge(_) => "hugetlb copy (2 MiB pages)",
            Backing::Thp(_) => "anonymous copy (transparent hugepages requested)",
            Backing::Empty => "empty",
        }
    }

    /// Recompute the BLAKE3 of the bytes and of each corpus bank and compare with the manifest.
    pub fn verify(&self) -> Result<(), PobError> {
        let got = crate::util::parallel_blake3(self.bytes(), crate::util::hash_depth());
        if got != self.id {
            return Err(PobError::Invalid(format!(
                "snapshot.bin hashes to {}, the manifest says {}",
                crate::util::hex(&got),
                self.manifest.snapshot_id
            )));
        }
        for c in &self.manifest.corpus {
            let b = self.manifest.banks.get(c.bank_id as usize).ok_or_else(|| {
                PobError::Invalid(format!("corpus file {} names a missing bank", c.path))
            })?;
            let h = blake3::hash(&self.bytes()[b.offset as usize..(b.offset + b.len) as usize]);
            if h.to_hex().as_str() != c.blake3 {
                return Err(PobError::Invalid(format!(
                    "corpus bank {} does not match its BLAKE3",
                    c.path
                )));
            }
        }
        Ok(())
    }

    /// Check, cheaply, that `snapshot.bin` still holds the bytes its id names, so that a
    /// snapshot altered or replaced after it was built is refused by name at start-up instead
    /// of rebuilding wrong files: when the file's identity (device, inode, size, mtime,
    /// ctime; any write or copy changes the ctime) equals the stamp of the last check
    /// ([`VERIFIED_STAMP`], beside it or, when that directory is read-only, in the temporary
    /// directory), nothing is hashed; otherwise the bytes are hashed on every core
    /// ([`Snapshot::verify`]) and the stamp rewritten.
    pub fn check_integrity(&self) -> Result<Integrity, PobError> {
        if let Ok(now) = stamp_text(&self.dir, &self.manifest.snapshot_id) {
            if stamps(&self.dir).any(|s| s == now) {
                return Ok(Integrity::Stamped);
            }
        }
        let t0 = std::time::Instant::now();
        self.verify().map_err(|e| {
            PobError::Invalid(format!(
                "{}: {e}: the snapshot changed after it was built (altered, truncated or \
                 replaced); rebuild it with `pfs snapshot build` or copy it again from a host \
                 that has it",
                self.dir.display()
            ))
        })?;
        let _ = write_stamp(&self.dir, &self.manifest.snapshot_id);
        Ok(Integrity::Verified {
            bytes: self.manifest.size,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The bank containing snapshot offset `off`.
    pub fn bank_at(&self, off: u64) -> Option<&BankEntry> {
        let banks = &self.manifest.banks;
        let i = banks.partition_point(|b| b.offset + b.len <= off);
        banks.get(i).filter(|b| b.offset <= off)
    }
}

/// What [`Snapshot::check_integrity`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Integrity {
    /// The file is the one checked last time: nothing hashed.
    Stamped,
    /// The file changed identity since its last check (copied, touched, first load on this
    /// host): its bytes were hashed and matched.
    Verified { bytes: u64, seconds: f64 },
}

/// The stamp's text for the snapshot in `dir` as its `snapshot.bin` is now.
fn stamp_text(dir: &Path, id: &str) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join(SNAPSHOT_BIN))?;
    Ok(format!(
        "pfs snapshot verified v1\nid {id}\nfile {} {} {} {}.{:09} {}.{:09}\n",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Where the stamp of `dir` lives when `dir` itself is read-only.
fn fallback_stamp(dir: &Path) -> PathBuf {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let h = blake3::hash(canon.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("pfs-snapshot-verified-{}", &h.to_hex()[..16]))
}

/// The stamps found for `dir` (beside it, then in the temporary directory).
fn stamps(dir: &Path) -> impl Iterator<Item = String> {
    [dir.join(VERIFIED_STAMP), fallback_stamp(dir)]
        .into_iter()
        .filter_map(|p| {
            let f = std::fs::File::open(p).ok()?;
            let mut s = String::new();
            // a stamp is three short lines: anything longer is not ours
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut s).ok()?;
            Some(s)
        })
}

fn write_stamp(dir: &Path, id: &str) -> std::io::Result<()> {
    let text = stamp_text(dir, id)?;
    crate::util::write_atomic(&dir.join(VERIFIED_STAMP), text.as_bytes())
        .or_else(|_| crate::util::write_atomic(&fallback_stamp(dir), text.as_bytes()))
}

fn map_file(f: &std::fs::File, path: &Path) -> Result<memmap2::Mmap, PobError> {
    // Safety: the snapshot is opened read-only; concurrent truncation by another process is
    // outside our contract (snapshots are immutable once built; `verify` checks them).
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::MmapOptions::new().map(f) }.map_err(io_err(path))?;
    let _ = m.advise(memmap2::Advice::WillNeed);
    Ok(m)
}

/// An anonymous copy with MADV_HUGEPAGE: reconstruction reads it at memory speed (a shared
/// file mapping measured about 3x slower on the same blueprint; see benches/plan.rs).
fn load_thp(f: &std::fs::File, len: u64) -> std::io::Result<memmap2::MmapMut> {
    let mut m = memmap2::MmapOptions::new().len(len as usize).map_anon()?;
    let _ = m.advise(memmap2::Advice::HugePage);
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    r.read_exact(&mut m[..])?;
    Ok(m)
}

fn load_huge(f: &std::fs::File, len: u64) -> std::io::Result<memmap2::MmapMut> {
    let rounded = len.div_ceil(2 << 20) * (2 << 20);
    let mut m = memmap2::MmapOptions::new()
        .len(rounded as usize)
        .huge(Some(21))
        .map_anon()?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    r.read_exact(&mut m[..len as usize])?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn small(dir: &Path) {
        let mut r = Recipe::default_recipe();
        r.size_mb = 1;
        build(&r, &[], dir, &mut |_, _| {}).unwrap();
    }

    #[test]
    fn integrity_is_stamped_after_build_and_an_altered_byte_is_refused() {
        let t = tempfile::tempdir().unwrap();
        small(t.path());
        let s = Snapshot::open(t.path(), HugePolicy::Off).unwrap();
        assert_eq!(s.check_integrity().unwrap(), Integrity::Stamped);
        drop(s);
        // alter one byte in place (same size): the ctime moves, the bytes no longer hash
        // (file times tick with the kernel's coarse clock: let one tick pass first)
        std::thread::sleep(std::time::Duration::from_millis(30));
        let bin = t.path().join(SNAPSHOT_BIN);
        let f = std::fs::OpenOptions::new().write(true).open(&bin).unwrap();
        let mut b = [0u8; 1];
        std::fs::File::open(&bin)
            .unwrap()
            .read_exact_at(&mut b, 777)
            .unwrap();
        f.write_all_at(&[b[0] ^ 0x40], 777).unwrap();
        let s = Snapshot::open(t.path(), HugePolicy::Off).unwrap();
        let e = s.check_integrity().unwrap_err().to_string();
        assert!(e.contains("changed after it was built"), "{e}");
        drop(s);
        // restored: hashed once, then stamped again
        std::thread::sleep(std::time::Duration::from_millis(30));
        f.write_all_at(&b, 777).unwrap();
        let s = Snapshot::open(t.path(), HugePolicy::Off).unwrap();
        assert!(matches!(
            s.check_integrity().unwrap(),
            Integrity::Verified { .. }
        ));
        assert_eq!(s.check_integrity().unwrap(), Integrity::Stamped);
    }

    #[test]
    fn a_copied_snapshot_is_hashed_once_and_a_truncated_one_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        small(&a);
        std::fs::create_dir(&b).unwrap();
        for n in [SNAPSHOT_BIN, MANIFEST_JSON, VERIFIED_STAMP] {
            std::fs::copy(a.join(n), b.join(n)).unwrap();
        }
        let s = Snapshot::open(&b, HugePolicy::Off).unwrap();
        assert!(matches!(
            s.check_integrity().unwrap(),
            Integrity::Verified { .. }
        ));
        assert_eq!(s.check_integrity().unwrap(), Integrity::Stamped);
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(b.join(SNAPSHOT_BIN))
            .unwrap();
        f.set_len(4096).unwrap();
        let e = Snapshot::open(&b, HugePolicy::Off).unwrap_err().to_string();
        assert!(e.contains("but the manifest says"), "{e}");
    }
}
