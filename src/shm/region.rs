//! Nameless shared memory: a `memfd` mapped `MAP_SHARED`, backed by 2 MiB hugetlb pages when
//! they can be reserved, else by normal pages with `MADV_HUGEPAGE`.
//!
//! The memfd is closed right after mapping, so the memory has no name anywhere (nothing in
//! /dev/shm or a hugetlbfs mount): it lives exactly as long as some process maps it, and a
//! forked child shares it. Nothing can be left behind by a crash.

use std::ffi::CString;
use std::ptr::NonNull;

/// 2 MiB, the hugetlb page size used.
pub const HUGE_PAGE: usize = 2 << 20;

/// Which pages back a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// `MFD_HUGETLB | MFD_HUGE_2MB`: reserved 2 MiB hugetlb pages.
    HugeTlb,
    /// Normal shmem pages; `thp` says whether `MADV_HUGEPAGE` was set and the kernel's
    /// shmem THP policy lets it take effect.
    Normal { madvised: bool, thp: bool },
}

impl Backing {
    /// A short description for reports.
    pub fn describe(self) -> String {
        match self {
            Backing::HugeTlb => "hugetlb 2 MiB pages".into(),
            Backing::Normal { madvised, thp } => format!(
                "4 KiB pages{}",
                match (madvised, thp) {
                    (true, true) => " + MADV_HUGEPAGE (shmem THP on)",
                    (true, false) => " + MADV_HUGEPAGE (no effect: shmem THP is off)",
                    _ => "",
                }
            ),
        }
    }
}

/// Could not create or map a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{what} failed for a {len}-byte shared region: {err}")]
    Sys {
        what: &'static str,
        len: usize,
        err: std::io::Error,
    },
}

/// A shared mapping of a nameless memfd. Unmapped on drop.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    backing: Backing,
}

// Safety: the region is plain shared memory; the types built over it (rings, spans) carry the
// rules for who may touch which bytes. The pointer itself may move between threads.
unsafe impl Send for SharedRegion {}
// Safety: as above; `&SharedRegion` hands out only raw pointers.
unsafe impl Sync for SharedRegion {}

fn sys(what: &'static str, len: usize) -> RegionError {
    RegionError::Sys {
        what,
        len,
        err: std::io::Error::last_os_error(),
    }
}

impl SharedRegion {
    /// A region of `len` bytes on normal pages, zero-filled, with `MADV_HUGEPAGE` if `thp`.
    pub fn normal(name: &str, len: usize, thp: bool) -> Result<Self, RegionError> {
        let mut r = Self::map(name, len, len.max(1), libc::MFD_CLOEXEC)?;
        let mut madvised = false;
        if thp {
            // Safety: `ptr..ptr+map_len` is exactly the mapping created above.
            madvised = unsafe {
                libc::madvise(r.ptr.as_ptr().cast(), r.map_len, libc::MADV_HUGEPAGE) == 0
            };
        }
        // (Set in place: `SharedRegion { .., ..r }` would copy the fields and unmap `r`.)
        r.backing = Backing::Normal {
            madvised,
            thp: madvised && shmem_thp_enabled(),
        };
        Ok(r)
    }

    /// A region of `len` bytes (rounded up to 2 MiB) on reserved hugetlb pages. Fails when the
    /// pool has too few free pages (`/proc/sys/vm/nr_hugepages`).
    pub fn hugetlb(name: &str, len: usize) -> Result<Self, RegionError> {
        let map_len = len.max(1).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let mut r = Self::map(
            name,
            len,
            map_len,
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
        )?;
        r.backing = Backing::HugeTlb;
        Ok(r)
    }

    fn map(
        name: &str,
        len: usize,
        map_len: usize,
        flags: libc::c_uint,
    ) -> Result<Self, RegionError> {
        let cname = CString::new(name).unwrap_or_else(|_| c"pfs-shm".to_owned());
        // Safety: `cname` is a valid NUL-terminated string; flags are memfd flags.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd < 0 {
            return Err(sys("memfd_create", len));
        }
        // Safety: `fd` is the memfd just created and owned here.
        if unsafe { libc::ftruncate(fd, map_len as libc::off_t) } != 0 {
            let e = sys("ftruncate", len);
            // Safety: closing our own fd once.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // Safety: a fresh shared mapping of the whole memfd; the kernel chooses the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let err = (p == libc::MAP_FAILED).then(|| sys("mmap", len));
        // Safety: the mapping (if any) keeps the memory alive; the fd is no longer needed.
        unsafe { libc::close(fd) };
        if let Some(e) = err {
            return Err(e);
        }
        Ok(SharedRegion {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
            map_len,
            backing: Backing::Normal {
                madvised: false,
                thp: false,
            },
        })
    }

    /// The start of the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The usable length (as requested).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the usable length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages backing it.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The whole region as bytes. Only for when no other thread or process may write it
    /// (before consumers start, after they are reaped).
    ///
    /// # Safety
    /// No one else may write the region while the slice lives.
    pub unsafe fn bytes(&self) -> &[u8] {
        // Safety: in bounds of the mapping; the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole region, mutable. Needs `&mut self`, so only the owner in its own process
    /// while it is the only user (filling before the consumers are forked).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // Safety: in bounds; `&mut self` means no other reference from this process, and the
        // callers use it only while no other process is attached.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // Safety: unmapping exactly the mapping this value owns, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

/// Whether the kernel's shmem THP policy honours `MADV_HUGEPAGE`.
pub fn shmem_thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .is_some_and(|w| matches!(w, "[always]" | "[within_size]" | "[advise]" | "[force]"))
        })
        .unwrap_or(false)
}

/// A `/proc/meminfo` field in bytes (`kB` fields scaled; counts returned as-is).
pub fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    for line in s.lines() {
        let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let v: u64 = it.next()?.parse().ok()?;
        return Some(if it.next() == Some("kB") { v * 1024 } else { v });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_region_is_zeroed_and_writable() {
        let mut r = SharedRegion::normal("pfs-test", 3 * 4096 + 5, true).unwrap();
        assert_eq!(r.len(), 3 * 4096 + 5);
        assert!(r.bytes_mut().iter().all(|&b| b == 0));
        r.bytes_mut()[100] = 7;
        // Safety: single-threaded test, no other user.
        assert_eq!(unsafe { r.bytes() }[100], 7);
        assert!(matches!(r.backing(), Backing::Normal { .. }));
    }

    #[test]
    fn meminfo_reads_fields() {
        assert!(meminfo("MemTotal").unwrap() > 1 << 20);
        assert!(meminfo("HugePages_Total").is_some());
        assert!(meminfo("NoSuchField").is_none());
    }
}
