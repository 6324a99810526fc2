//! The sender's inputs walked into manifest entries: `pfs send DIR... [FILE...]`.
//!
//! Each argument is sent under its base name (`pfs send dir` and `pfs send dir/` both send
//! `dir/...`; a file `a/b/f` is sent as `f`); a directory brings every entry beneath it
//! under its relative path. Arguments named on the command line are followed when they are
//! links; links met inside a directory are kept as links unless
//! [`TreeOptions::follow_symlinks`], which sends what they point at instead. Fifos, sockets
//! and devices are skipped, each with a [`Skipped`] note. The order is deterministic:
//! regular files by name (the stream order), then directories, then links.
//!
//! Names must be UTF-8 (the manifest's rule), at most [`MAX_NAME_LEN`] bytes and 32
//! levels; a link's target must be UTF-8, its name and target together at most
//! [`MAX_NAME_LEN`] bytes, else the link is skipped with a note. A file or directory that cannot be read is an error that names it.

use crate::proto::EntryMeta;
use crate::wire::payload::{Attrs, EntryKind, MAX_NAME_LEN, MAX_TARGET_LEN};
use std::collections::{BTreeMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How the inputs are walked.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeOptions {
    /// Send what links inside a tree point at (files' contents, directories' trees) instead
    /// of the links.
    pub follow_symlinks: bool,
}

/// A regular file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its name on the receiver (relative, `/`-separated).
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub attrs: Attrs,
    /// Named on the command line (not found inside a directory).
    pub top: bool,
}

/// A directory or a link to send (no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    pub name: String,
    pub meta: EntryMeta,
}

/// An entry left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: &'static str,
}

/// The walked inputs.
#[derive(Debug, Default)]
pub struct Tree {
    /// Regular files, by name.
    pub files: Vec<TreeFile>,
    /// Directories by name, then links by name.
    pub nodes: Vec<TreeNode>,
    pub skipped: Vec<Skipped>,
}

impl Tree {
    /// Every entry's metadata in manifest order: the files, then the nodes.
    pub fn meta(&self) -> Vec<EntryMeta> {
        self.files
            .iter()
            .map(|f| EntryMeta {
                kind: EntryKind::File,
                attrs: Some(f.attrs),
                target: String::new(),
            })
            .chain(self.nodes.iter().map(|n| n.meta.clone()))
            .collect()
    }

    /// Whether a directory (or a link) is among the entries.
    pub fn has_nodes(&self) -> bool {
        !self.nodes.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the name is not UTF-8 (manifest names are UTF-8)", .0.display())]
    NotUtf8(PathBuf),
    #[error("{}: `{name}` is longer than {MAX_NAME_LEN} bytes or 32 levels", path.display())]
    NameTooLong { path: PathBuf, name: String },
    #[error("{} has no base name to send it under", .0.display())]
    NoBaseName(PathBuf),
    #[error("two inputs would be sent as `{name}`: {} and {}", first.display(), second.display())]
    SameName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn attrs_of(m: &Metadata) -> Attrs {
    Attrs {
        perm: (m.mode() & 0o7777) as u16,
        mtime_s: m.mtime(),
        mtime_ns: m.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// What is walked: entries collected by name (sorted, and duplicates caught).
struct Walker {
    opts: TreeOptions,
    files: BTreeMap<String, TreeFile>,
    dirs: BTreeMap<String, TreeNode>,
    links: BTreeMap<String, TreeNode>,
    skipped: Vec<Skipped>,
    /// The directories on the current path (device, inode): a followed link back up is a
    /// loop.
    stack: HashSet<(u64, u64)>,
}

/// Walk `inputs` (files and directories) into the entries of one session.
pub fn walk(inputs: &[PathBuf], opts: TreeOptions) -> Result<Tree, TreeError> {
    let mut w = Walker {
        opts,
        files: BTreeMap::new(),
        dirs: BTreeMap::new(),
        links: BTreeMap::new(),
        skipped: Vec::new(),
        stack: HashSet::new(),
    };
    let mut tops: BTreeMap<String, PathBuf> = BTreeMap::new();
    for p in inputs {
        let base = match p.file_name() {
            Some(b) => PathBuf::from(b),
            // `.`, `..`, `dir/..`: the directory's own name
            None => p
                .canonicalize()
                .map_err(read_err(p))?
                .file_name()
                .map(PathBuf::from)
                .ok_or_else(|| TreeError::NoBaseName(p.clone()))?,
        };
        let name = base
            .to_str()
            .ok_or_else(|| TreeError::NotUtf8(p.clone()))?
            .to_owned();
        if let Some(first) = tops.insert(name.clone(), p.clone()) {
            return Err(TreeError::SameName {
                name,
                first,
                second: p.clone(),
            });
        }
        // Arguments are followed.
        let m = std::fs::metadata(p).map_err(read_err(p))?;
        w.entry(p, name, m, true)?;
    }
    Ok(Tree {
        files: w.files.into_values().collect(),
        nodes: w.dirs.into_values().chain(w.links.into_values()).collect(),
        skipped: w.skipped,
    })
}

impl Walker {
    fn skip(&mut self, path: &Path, why: &'static str) {
        self.skipped.push(Skipped {
            path: path.to_path_buf(),
            why,
        });
    }

    /// One entry at `path`, sent as `name`, whose metadata (followed or not) is `m`.
    fn entry(
        &mut self,
        path: &Path,
        name: String,
        m: Metadata,
        top: bool,
    ) -> Result<(), TreeError> {
        if name.len() > MAX_NAME_LEN || name.split('/').count() > 32 {
            return Err(TreeError::NameTooLong {
                path: path.to_path_buf(),
                name,
            });
        }
        let ft = m.file_type();
        if ft.is_file() {
            // Unreadable files are refused now, not half-way through the session.
            std::fs::File::open(path).map_err(read_err(path))?;
            self.files.insert(
                name.clone(),
                TreeFile {
                    name,
                    path: path.to_path_buf(),
                    size: m.len(),
                    attrs: attrs_of(&m),
                    top,
                },
            );
        } else if ft.is_dir() {
            let key = (m.dev(), m.ino());
            if !self.stack.insert(key) {
                self.skip(path, "a link back to a directory above it (a loop)");
                return Ok(());
            }
            self.dirs.insert(
                name.clone(),
                TreeNode {
                    name: name.clone(),
                    meta: EntryMeta {
                        kind: EntryKind::Dir,
                        attrs: Some(attrs_of(&m)),
                        target: String::new(),
                    },
                },
            );
            let mut children: Vec<(String, PathBuf)> = Vec::new();
            for e in std::fs::read_dir(path).map_err(read_err(path))? {
                let e = e.map_err(read_err(path))?;
                let child = e.path();
                let n = e
                    .file_name()
                    .into_string()
                    .map_err(|_| TreeError::NotUtf8(child.clone()))?;
                children.push((n, child));
            }
            children.sort();
            for (n, child) in children {
                let lm = std::fs::symlink_metadata(&child).map_err(read_err(&child))?;
                let cname = format!("{name}/{n}");
                if lm.file_type().is_symlink() {
                    self.link(&child, cname, &lm)?;
                } else {
                    self.entry(&child, cname, lm, false)?;
                }
            }
            self.stack.remove(&key);
        } else if ft.is_fifo() {
            self.skip(path, "a fifo");
        } else if ft.is_socket() {
            self.skip(path, "a socket");
        } else if ft.is_block_device() || ft.is_char_device() {
            self.skip(path, "a device");
        } else {
            self.skip(path, "not a regular file, directory or link");
        }
        Ok(())
    }

    /// A link inside a tree: kept, or followed with `follow_symlinks`.
    fn link(&mut self, path: &Path, name: String, lm: &Metadata) -> Result<(), TreeError> {
        if self.opts.follow_symlinks {
            return match std::fs::metadata(path) {
                Ok(m) => self.entry(path, name, m, false),
                Err(_) => {
                    self.skip(path, "a link whose target does not exist");
                    Ok(())
                }
            };
        }
        let target = std::fs::read_link(path).map_err(read_err(path))?;
        let Some(target) = target.to_str().map(str::to_owned) else {
            self.skip(path, "a link whose target is not UTF-8");
            return Ok(());
        };
        if target.is_empty()
            || target.len() > MAX_TARGET_LEN
            || name.len() + target.len() > MAX_NAME_LEN
        {
            self.skip(
                path,
                "a link whose target is longer than the manifest allows",
            );
            return Ok(());
        }
        if name.len() > MAX_NAME_LEN || name.split('/').count() > 32 {
            return Err(TreeError::NameTooLong {
                path: path.to_path_buf(),
                name,
            });
        }
        self.links.insert(
            name.clone(),
            TreeNode {
                name,
                meta: EntryMeta {
                    kind: EntryKind::Symlink,
                    attrs: Some(attrs_of(lm)),
                    target,
                },
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_tree_walks_in_name_order_with_links_kept_and_fifos_skipped() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("top");
        std::fs::create_dir_all(d.join("b/empty")).unwrap();
        std::fs::write(d.join("b/z"), b"z").unwrap();
        std::fs::write(d.join("a"), b"aa").unwrap();
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o751)).unwrap();
        symlink("a", d.join("l")).unwrap();
        nix::unistd::mkfifo(
            &d.join("f"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let tree = walk(std::slice::from_ref(&d), TreeOptions::default()).unwrap();
        let names: Vec<&str> = tree.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["top/a", "top/b/z"]);
        assert_eq!(tree.files[0].attrs.perm, 0o751);
        let nodes: Vec<(&str, EntryKind)> = tree
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.meta.kind))
            .collect();
        assert_eq!(
            nodes,
            [
                ("top", EntryKind::Dir),
                ("top/b", EntryKind::Dir),
                ("top/b/empty", EntryKind::Dir),
                ("top/l", EntryKind::Symlink)
            ]
        );
        assert_eq!(tree.nodes[3].meta.target, "a");
        assert_eq!(tree.skipped.len(), 1);
        assert_eq!(tree.skipped[0].why, "a fifo");
        // a trailing slash changes nothing; following turns the link into a file
        let mut slash = d.clone().into_os_string();
        slash.push("/");
        let again = walk(&[PathBuf::from(slash)], TreeOptions::default()).unwrap();
        assert_eq!(again.files, tree.files);
        let followed = walk(
            &[d],
            TreeOptions {
                follow_symlinks: true,
            },
        )
        .unwrap();
        assert!(followed
            .files
            .iter()
            .any(|f| f.name == "top/l" && f.size == 2));
        assert_eq!(tree.meta().len(), 6);
    }

    #[test]
    fn two_inputs_with_one_base_name_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for d in ["x", "y"] {
            std::fs::create_dir_all(t.path().join(d).join("f")).unwrap();
        }
        let e = walk(
            &[t.path().join("x/f"), t.path().join("y/f")],
            TreeOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, TreeError::SameName { .. }), "{e}");
    }
}
